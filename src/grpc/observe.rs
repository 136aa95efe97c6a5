//! The tower layer that gives every call a request id, a span, a log line and its metrics.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tower::{Layer, Service};
use tracing::{Instrument, Span, info, info_span};

use crate::core::telemetry::{REQUEST_DURATION, REQUESTS, REQUESTS_IN_FLIGHT};

/// The request id header: a caller's is used in the logs and returned in the response.
// Header names as `HeaderName`s rather than `&str`: a lookup by `&str` parses and checks the
// name on every call. Counted under callgrind at 100 callers, the two here cost 370–1,080
// instructions per health `Check` and 440–590 per point select that way (about 1% of a call).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Registers every method × code series of the calls at zero (see
/// [`crate::core::telemetry::recorder`]), once per process.
pub fn register_series() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for method in METHODS {
            // Registered (a histogram's handle records nothing until used), so it renders at 0.
            let _ = histogram!(REQUEST_DURATION, "method" => method);
            for code in 0..CODES {
                let code = code_label(tonic::Code::from(code as i32));
                counter!(REQUESTS, "method" => method, "code" => code).increment(0);
            }
        }
    });
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
        .get(GRPC_STATUS)
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// The caller's address, as tonic's transport recorded it (plain TCP or TLS), for the logs of
/// its calls: a refusal is logged with who was refused.
fn peer<B>(request: &Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

/// `addr` as the logs write it (`127.0.0.1:50432`, `[::1]:50432`).
///
/// `core::fmt` writes an address a digit at a time: 1.9 k instructions, 2% of a point
/// select's call at `info` (callgrind, 100 callers). A caller's calls come from one address
/// for the life of its connection, so each thread keeps the text of the addresses it wrote
/// last, one per slot of a small table indexed by port. (A thread serving many more
/// connections than slots pays a miss, the formatting and one allocation, at most calls.)
fn peer_text(addr: SocketAddr) -> Rc<str> {
    const SLOTS: usize = 16;
    /// An address and its text.
    type Written = Option<(SocketAddr, Rc<str>)>;
    thread_local! {
        static WRITTEN: RefCell<[Written; SLOTS]> =
            const { RefCell::new([const { None }; SLOTS]) };
    }
    let kept = WRITTEN.try_with(|written| {
        let mut written = written.borrow_mut();
        let slot = &mut written[usize::from(addr.port()) % SLOTS];
        match slot {
            Some((at, text)) if *at == addr => Rc::clone(text),
            _ => {
                let text: Rc<str> = addr.to_string().into();
                *slot = Some((addr, Rc::clone(&text)));
                text
            }
        }
    });
    // Only while the thread's locals are torn down is the table gone.
    kept.unwrap_or_else(|_| addr.to_string().into())
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
/// it after [`crate::core::telemetry::recorder`] when metrics are served.
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
            .insert(crate::grpc::deadline::Arrival(tokio::time::Instant::now()));
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
            // As `Display`, as before: a text log writes a `&str` field quoted.
            peer = peer(&request)
                .map(peer_text)
                .as_deref()
                .map(tracing::field::display),
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
    fn peers_are_written_as_their_addresses() {
        // Several addresses for each slot (two of them with the same port), both families,
        // an IPv6 address with and without a scope, each written twice: a slot taken by
        // another address is written afresh, never read as it.
        let mut addrs: Vec<SocketAddr> = (0..40u16)
            .flat_map(|i| {
                [
                    SocketAddr::from(([127, 0, 0, 1], 50_000 + i)),
                    SocketAddr::from(([127, 0, 0, 2], 50_000 + i)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 50_016 + i)),
                ]
            })
            .collect();
        let link_local = "fe80::1".parse().unwrap();
        addrs.push(std::net::SocketAddrV6::new(link_local, 5432, 0, 3).into());
        addrs.push(std::net::SocketAddrV6::new(link_local, 5432, 0, 0).into());
        for _ in 0..2 {
            for addr in &addrs {
                assert_eq!(&*peer_text(*addr), addr.to_string());
            }
        }
        assert_eq!(&*peer_text("[::1]:5432".parse().unwrap()), "[::1]:5432");
    }

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
