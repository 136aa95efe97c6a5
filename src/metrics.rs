//! Prometheus metrics: names, the recorder, the `/metrics` endpoint, and the tower layer that
//! gives every call a request id, a span, a log line and its metrics.
//!
//! Label values come only from closed sets (method names from the proto, gRPC code names,
//! fixed reasons), never from SQL or anything a caller sends, so cardinality stays bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};
use tracing::{Instrument, Span, info, info_span};

use crate::pool::Pool;

pub const POOL_CONNECTIONS: &str = "pgway_pool_connections";
pub const POOL_MAX: &str = "pgway_pool_max_connections";
pub const POOL_MIN: &str = "pgway_pool_min_connections";
pub const POOL_WAITING: &str = "pgway_pool_waiting";
pub const POOL_WAIT_SECONDS: &str = "pgway_pool_wait_seconds";
pub const POOL_ACQUIRE_TIMEOUTS: &str = "pgway_pool_acquire_timeouts_total";
pub const CONNECTIONS_OPENED: &str = "pgway_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "pgway_connections_closed_total";
pub const CONNECTION_ERRORS: &str = "pgway_connection_errors_total";
pub const REQUESTS: &str = "pgway_requests_total";
pub const REQUEST_DURATION: &str = "pgway_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "pgway_requests_in_flight";
pub const RETRIES: &str = "pgway_retries_total";
pub const SHED: &str = "pgway_shed_total";
pub const TRANSACTIONS: &str = "pgway_transactions_total";
pub const TRANSACTION_ATTEMPTS: &str = "pgway_transaction_attempts";
pub const DATABASE_UP: &str = "pgway_database_up";
pub const BUILD_INFO: &str = "pgway_build_info";
pub const AUTH_FAILURES: &str = "pgway_auth_failures_total";
pub const AUTH_RELOADS: &str = "pgway_auth_reloads_total";
pub const CALLER_LIMITED: &str = "pgway_caller_limited_total";
pub const TLS_RELOADS: &str = "pgway_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "pgway_tls_handshake_failures_total";

/// The request id header: a caller's is used in the logs and returned in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installs the process-wide recorder once and returns its handle. Several gateways in one
/// process (the tests) share it.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TRANSACTION_ATTEMPTS.into()),
                        &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0],
                    )
                });
            let handle = match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => handle,
                // Another recorder is installed (an embedding application's): keep ours
                // unregistered so /metrics still renders, empty rather than failing.
                _ => PrometheusBuilder::new().build_recorder().handle(),
            };
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_known_series();
            handle
        })
        .clone()
}

/// `pgway_connections_closed_total{reason}`'s values.
const CLOSE_REASONS: [&str; 6] = [
    "broken",
    "lifetime",
    "idle",
    "abandoned",
    "reset_failed",
    "shutdown",
];
/// `pgway_connection_errors_total{kind}`'s values ([`crate::errors::ConnectError::kind`]).
const CONNECT_ERROR_KINDS: [&str; 8] = [
    "auth",
    "database_missing",
    "too_many_connections",
    "starting_up",
    "refused",
    "tls",
    "timeout",
    "network",
];
/// `pgway_retries_total{reason}`'s values.
const RETRY_REASONS: [&str; 3] = ["connection_lost", "server_restart", "transaction_conflict"];
/// `pgway_transactions_total{outcome}`'s values.
const TRANSACTION_OUTCOMES: [&str; 4] = ["committed", "rolled_back", "aborted", "outcome_unknown"];
/// `pgway_auth_failures_total{reason}`'s values.
const AUTH_FAILURE_REASONS: [&str; 12] = [
    "missing",
    "malformed",
    "unknown_token",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "algorithm",
    "unknown_key",
    "missing_claim",
    "role",
];
/// `pgway_caller_limited_total{kind}`'s values.
const CALLER_LIMIT_KINDS: [&str; 2] = ["call", "interactive_transaction"];
/// `pgway_tls_reloads_total{outcome}`'s values.
const TLS_RELOAD_OUTCOMES: [&str; 2] = ["success", "failure"];
/// `pgway_tls_handshake_failures_total{reason}`'s values.
const TLS_HANDSHAKE_REASONS: [&str; 2] = ["error", "timeout"];

/// Describes every metric (its `# HELP`) and registers each series whose labels come from a
/// closed set at zero, before anything happens: an alert on `rate(pgway_shed_total[5m]) > 0`
/// or `pgway_database_up == 0` can only fire on a series that exists.
fn register_known_series() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    describe_gauge!(
        POOL_CONNECTIONS,
        "Open database connections, by state (idle, in_use)."
    );
    describe_gauge!(
        POOL_MAX,
        "Most connections the pool opens (PGWAY_POOL_MAX)."
    );
    describe_gauge!(
        POOL_MIN,
        "Connections kept open even when idle (PGWAY_POOL_MIN)."
    );
    describe_gauge!(POOL_WAITING, "Calls waiting for a free connection now.");
    describe_histogram!(POOL_WAIT_SECONDS, "Time a call waited for a connection.");
    describe_counter!(
        POOL_ACQUIRE_TIMEOUTS,
        "Calls that got no connection within PGWAY_ACQUIRE_TIMEOUT."
    );
    describe_counter!(CONNECTIONS_OPENED, "Database connections opened.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Database connections closed, by reason."
    );
    describe_counter!(
        CONNECTION_ERRORS,
        "Failed attempts to open a database connection, by kind."
    );
    describe_counter!(REQUESTS, "Finished calls, by gRPC method and status code.");
    describe_histogram!(REQUEST_DURATION, "Call duration, by gRPC method.");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Calls being served now.");
    describe_counter!(
        RETRIES,
        "Statements and transactions run again by the gateway, by reason."
    );
    describe_counter!(
        SHED,
        "Calls refused at once because too many already waited (OVERLOADED)."
    );
    describe_counter!(TRANSACTIONS, "Transactions ended, by outcome.");
    describe_histogram!(
        TRANSACTION_ATTEMPTS,
        "Attempts a committed Transaction took."
    );
    describe_gauge!(
        DATABASE_UP,
        "1 when the health monitor's last check of the database passed, else 0."
    );
    describe_gauge!(BUILD_INFO, "The running version (always 1).");
    describe_counter!(AUTH_FAILURES, "Calls refused by authentication, by reason.");
    describe_counter!(
        AUTH_RELOADS,
        "Reloads of the credential files, by setting and outcome."
    );
    describe_counter!(
        CALLER_LIMITED,
        "Calls refused by a per-caller limit, by kind."
    );
    describe_counter!(TLS_RELOADS, "Reloads of the gRPC TLS files, by outcome.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "Refused or timed-out TLS handshakes, by reason."
    );

    // Not ready until the monitor has seen the database.
    gauge!(DATABASE_UP).set(0.0);
    gauge!(REQUESTS_IN_FLIGHT).increment(0.0);
    for name in [CONNECTIONS_OPENED, POOL_ACQUIRE_TIMEOUTS, SHED] {
        counter!(name).increment(0);
    }
    let labelled: [(&'static str, &'static str, &[&'static str]); 8] = [
        (CONNECTIONS_CLOSED, "reason", &CLOSE_REASONS),
        (CONNECTION_ERRORS, "kind", &CONNECT_ERROR_KINDS),
        (RETRIES, "reason", &RETRY_REASONS),
        (TRANSACTIONS, "outcome", &TRANSACTION_OUTCOMES),
        (AUTH_FAILURES, "reason", &AUTH_FAILURE_REASONS),
        (CALLER_LIMITED, "kind", &CALLER_LIMIT_KINDS),
        (TLS_RELOADS, "outcome", &TLS_RELOAD_OUTCOMES),
        (TLS_HANDSHAKE_FAILURES, "reason", &TLS_HANDSHAKE_REASONS),
    ];
    for (name, label, values) in labelled {
        for &value in values {
            counter!(name, label => value).increment(0);
        }
    }
    for method in METHODS {
        // Registered (a histogram's handle records nothing until used), so it renders at 0.
        let _ = histogram!(REQUEST_DURATION, "method" => method);
        for code in 0..CODES {
            let code = code_label(tonic::Code::from(code as i32));
            counter!(REQUESTS, "method" => method, "code" => code).increment(0);
        }
    }
    let _ = histogram!(POOL_WAIT_SECONDS);
    let _ = histogram!(TRANSACTION_ATTEMPTS);
}

/// Publishes the pool's current state as gauges (done at each scrape, so it is never stale).
pub fn record_pool_state(pool: &Pool) {
    let state = pool.state();
    gauge!(POOL_CONNECTIONS, "state" => "idle").set(f64::from(state.idle));
    gauge!(POOL_CONNECTIONS, "state" => "in_use")
        .set(f64::from(state.open - state.idle.min(state.open)));
    gauge!(POOL_MAX).set(f64::from(state.max));
    gauge!(POOL_MIN).set(f64::from(state.min));
    gauge!(POOL_WAITING).set(state.waiting as f64);
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, pool: Pool, shutdown: CancellationToken) {
    let handle = recorder();
    let render = move || {
        let handle = handle.clone();
        let pool = pool.clone();
        async move {
            record_pool_state(&pool);
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
        }
    };
    // Histograms keep raw samples until upkeep drains them into buckets: without a regular
    // upkeep, memory grows between scrapes (about 10 MB/min at 4,000 calls/s, measured).
    let upkeep = {
        let handle = recorder();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    () = shutdown.cancelled() => return,
                }
            }
        })
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    upkeep.abort();
    if let Err(error) = served {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The gRPC methods pgway serves, as metric labels; anything else is "other" (the last).
const METHODS: [&str; 8] = [
    "Query",
    "QueryStream",
    "Transaction",
    "InteractiveTransaction",
    "Check",
    "Watch",
    "ServerReflectionInfo",
    "other",
];

/// The index in [`METHODS`] of the method a request path names.
fn method_index(path: &str) -> usize {
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|k| *k == name)
        .unwrap_or(METHODS.len() - 1)
}

#[cfg(test)]
fn method_label(path: &str) -> &'static str {
    METHODS[method_index(path)]
}

/// How many gRPC status codes there are (`tonic::Code` runs from 0 to 16).
const CODES: usize = 17;

/// The per-call metric handles, looked up in the recorder once rather than on every call
/// (building and hashing a labelled key costs more than the update itself). A series is
/// registered the first time it happens, as `counter!` would, so /metrics shows the same.
struct CallMetrics {
    in_flight: OnceLock<Gauge>,
    requests: [[OnceLock<Counter>; CODES]; METHODS.len()],
    durations: [OnceLock<Histogram>; METHODS.len()],
}

impl CallMetrics {
    fn new() -> Self {
        CallMetrics {
            in_flight: OnceLock::new(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            durations: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(|| gauge!(REQUESTS_IN_FLIGHT))
    }

    fn finished(&self, method: usize, code: tonic::Code, elapsed: f64) {
        let method_name = METHODS[method];
        let code_name = code_label(code);
        match self.requests[method].get(code as usize) {
            Some(cell) => cell
                .get_or_init(|| counter!(REQUESTS, "method" => method_name, "code" => code_name))
                .increment(1),
            // Not a code tonic knows today: looked up each time.
            None => counter!(REQUESTS, "method" => method_name, "code" => code_name).increment(1),
        }
        self.durations[method]
            .get_or_init(|| histogram!(REQUEST_DURATION, "method" => method_name))
            .record(elapsed);
    }
}

/// The name of a gRPC status code, for labels and logs.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// A request id a caller may choose: short and printable, so it is safe in logs and headers.
fn caller_request_id(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(REQUEST_ID_HEADER)?;
    let text = value.to_str().ok()?;
    (!text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.clone())
}

/// A new request id for the logs of a call that came without one: 32 hex digits.
fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    text
}

/// One call in flight: finished exactly once, when its status is known or its body dropped.
struct CallRecord {
    /// An index into [`METHODS`], from [`method_index`], so always in range.
    method: usize,
    metrics: Arc<CallMetrics>,
    started: Instant,
    span: Span,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        self.metrics.in_flight().decrement(1.0);
        self.metrics
            .finished(self.method, code, elapsed.as_secs_f64());
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let code = code_label(code);
        info!(parent: &self.span, code, duration_ms, "call finished");
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // The caller went away before a status was sent.
        self.finish(tonic::Code::Cancelled);
    }
}

/// The tower layer that observes every call (see the module docs).
///
/// Its metric handles come from the recorder installed when a call first needs them: build
/// it after [`recorder`] when metrics are served.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<CallMetrics>,
}

impl ObserveLayer {
    pub fn new() -> Self {
        ObserveLayer {
            metrics: Arc::new(CallMetrics::new()),
        }
    }
}

impl Default for ObserveLayer {
    fn default() -> Self {
        ObserveLayer::new()
    }
}

impl std::fmt::Debug for ObserveLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<CallMetrics>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Observe<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The start of the call's deadline: see `deadline::Arrival`.
        request
            .extensions_mut()
            .insert(crate::deadline::Arrival(tokio::time::Instant::now()));
        let method = method_index(request.uri().path());
        // Only a caller's own id goes back in the response: a new random value in every
        // response would be a new HPACK table entry each time, costing bytes and CPU for
        // nothing the caller asked for. A call without one still gets an id for its logs.
        let request_id = caller_request_id(request.headers());
        let generated;
        let log_id = match &request_id {
            Some(id) => id.to_str().unwrap_or_default(),
            None => {
                generated = new_request_id();
                // Hex digits are ASCII, so this is always valid UTF-8.
                std::str::from_utf8(&generated).unwrap_or_default()
            }
        };
        let span = info_span!(
            "call",
            method = METHODS[method],
            request_id = log_id,
            // Filled in once the caller is known (never a secret: see auth::Caller::log_name).
            caller = tracing::field::Empty,
        );
        self.metrics.in_flight().increment(1.0);
        let mut record = CallRecord {
            method,
            metrics: Arc::clone(&self.metrics),
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let mut response = future.await?;
                if let Some(request_id) = request_id {
                    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
                }
                // A trailers-only response (most errors) has its status in the headers.
                if let Some(code) = grpc_code(response.headers()) {
                    record.finish(code);
                }
                Ok(response.map(|body| ObservedBody {
                    inner: body,
                    record,
                }))
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's record when the trailers carry the status.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        record: CallRecord,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.record.finish(code);
                }
            }
            Some(Err(_)) => this.record.finish(tonic::Code::Internal),
            None => this.record.finish(tonic::Code::Ok),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for CallRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecord")
            .field("method", &METHODS[self.method])
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_a_closed_set() {
        assert_eq!(method_label("/pgway.v1.Database/Query"), "Query");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(method_label("/evil/' OR 1=1"), "other");
    }

    #[test]
    fn request_ids_are_checked() {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(caller_request_id(&headers).unwrap(), "abc-123");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert!(caller_request_id(&headers).is_none());
        let id = new_request_id();
        assert!(id.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(id, new_request_id());
    }
}
