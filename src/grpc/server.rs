//! Assembles the gRPC door (the Database service, health, reflection) and serves it until
//! shutdown, then drains within the grace period.

use std::future::Future;
use std::time::Duration;

use futures::future::Either;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

use super::Settings;
use super::auth::AuthInterceptor;
use super::drain::EndOnStop;
use super::health;
use super::observe::ObserveLayer;
use super::service::DatabaseService;
use crate::core::pool::Pool;
use crate::core::tls;
use crate::proto::{self, database_server::DatabaseServer};

/// Why the gRPC door could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What the door shares with the rest of the gateway.
#[derive(Debug)]
pub struct Shared {
    pub pool: Pool,
    /// Whether the database answers (the core's health monitor).
    pub ready: watch::Receiver<bool>,
    /// Owns the door's background tasks; the composition root waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown starts (after the door told its probes).
    pub stopping: CancellationToken,
    /// Cancelled when the grace period after the signal is over: what still runs is cut.
    pub grace_over: CancellationToken,
}

/// The middleware every call passes through, outermost first, with the Database service at
/// its heart.
///
/// Deadlines, admission (load shedding) and retries live with the code that knows the pool
/// and the statement (see [`super::deadline`], [`crate::core::pool::Pool::get`] and
/// [`super::service`]): a generic layer can't tell a request that waits for a connection from
/// one that runs, nor a safe retry from an unsafe one.
#[allow(clippy::type_complexity)]
fn middleware<D>(
    database: D,
) -> tower::ServiceBuilder<
    tower::layer::util::Stack<
        DatabaseRouteLayer<D>,
        tower::layer::util::Stack<ObserveLayer, tower::layer::util::Identity>,
    >,
> {
    tower::ServiceBuilder::new()
        // Outermost, so it sees every call and its final status, even the ones refused by
        // the layers inside: a request id (the caller's x-request-id, returned in the
        // response, or a new one for the logs), a span around the call, one log line, and
        // the call metrics.
        .layer(ObserveLayer::new())
        .layer(DatabaseRouteLayer(database))
}

/// Whether `path` (`/<service>/<method>`) names a method of the Database service.
fn is_database_call(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.strip_prefix(proto::database_server::SERVICE_NAME))
        .is_some_and(|method| method.starts_with('/'))
}

/// Hands the Database service's calls straight to it; everything else (health, reflection,
/// unknown paths) goes through tonic's router.
///
/// The router is a general path matcher that boxes every response body a second time; on a
/// point select it cost about 5% of the gateway's instructions per call (callgrind). The
/// Database service is the hot path and one prefix names it.
#[derive(Clone)]
struct DatabaseRouteLayer<D>(D);

impl<D: Clone, R> tower::Layer<R> for DatabaseRouteLayer<D> {
    type Service = DatabaseRoute<D, R>;

    fn layer(&self, routes: R) -> Self::Service {
        DatabaseRoute {
            database: self.0.clone(),
            routes,
        }
    }
}

/// See [`DatabaseRouteLayer`].
#[derive(Clone)]
struct DatabaseRoute<D, R> {
    database: D,
    routes: R,
}

/// The response body of a [`DatabaseRoute`]: either service's own, without boxing it again.
type RouteBody<DB, RB> = http_body_util::Either<DB, RB>;

impl<D, R, DB, RB> tower::Service<http::Request<tonic::body::Body>> for DatabaseRoute<D, R>
where
    D: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<DB>,
            Error = std::convert::Infallible,
        >,
    R: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<RB>,
            Error = std::convert::Infallible,
        >,
{
    type Response = http::Response<RouteBody<DB, RB>>;
    type Error = std::convert::Infallible;
    #[allow(clippy::type_complexity)]
    type Future = Either<
        futures::future::MapOk<D::Future, fn(http::Response<DB>) -> Self::Response>,
        futures::future::MapOk<R::Future, fn(http::Response<RB>) -> Self::Response>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Either may get the call: both must be ready. (Both always are: tonic's services and
        // router have no back-pressure of their own.)
        std::task::ready!(self.database.poll_ready(cx))?;
        self.routes.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        use futures::TryFutureExt;
        if is_database_call(request.uri().path()) {
            Either::Left(
                self.database
                    .call(request)
                    .map_ok(|response| response.map(RouteBody::Left)),
            )
        } else {
            Either::Right(
                self.routes
                    .call(request)
                    .map_ok(|response| response.map(RouteBody::Right)),
            )
        }
    }
}

/// Accepted plaintext connections with Nagle's algorithm off: tonic's `tcp_nodelay` only
/// applies to listeners it binds itself, and a small reply held back for a delayed ACK would
/// add up to 40 ms to a call.
fn plaintext(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot turn off Nagle's algorithm");
            }
        })
    })
}

/// A service as it is (when `public`) or behind the authentication interceptor: exactly one
/// of the two is `Some`.
#[allow(clippy::type_complexity)]
fn guard<S>(
    service: S,
    public: bool,
    interceptor: &AuthInterceptor,
) -> (Option<S>, Option<InterceptedService<S, AuthInterceptor>>) {
    if public {
        (Some(service), None)
    } else {
        (
            None,
            Some(InterceptedService::new(service, interceptor.clone())),
        )
    }
}

/// The health service, and the reporter through which the gateway's readiness, liveness and
/// PAUSE reach it (kept up to date by background tasks until `stopping`).
async fn start_health(
    shared: &Shared,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // tonic-health reports SERVING for a registered service at once: readiness starts
    // NOT_SERVING until the monitor has seen the database.
    reporter
        .set_service_status(health::READINESS, tonic_health::ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(health::LIVENESS, tonic_health::ServingStatus::Serving)
        .await;
    shared.tasks.spawn(health::report(
        shared.ready.clone(),
        reporter.clone(),
        shared.stopping.clone(),
    ));
    shared.tasks.spawn(health::report_pause(
        shared.pool.pause().subscribe(),
        reporter.clone(),
        shared.stopping.clone(),
    ));
    (reporter, health_service)
}

/// Serves gRPC on `listener` until `shutdown` resolves: then readiness and liveness go
/// NOT_SERVING, `shared.stopping` is cancelled, and the calls in flight get
/// `settings.shutdown_grace` to finish (after which it returns; the caller then cancels
/// `grace_over`).
pub async fn serve(
    settings: Settings,
    shared: &Shared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Shared {
        pool,
        ready: _,
        tasks,
        stopping,
        grace_over,
    } = shared;
    let (reporter, health_service) = start_health(shared).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So grpcurl can decode the google.rpc.ErrorInfo in error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    // Their streams would hold the drain open: they end when shutdown starts.
    let health_service = EndOnStop::new(health_service, stopping.clone());
    let reflection_v1 = EndOnStop::new(reflection().build_v1()?, stopping.clone());
    let reflection_v1alpha = EndOnStop::new(reflection().build_v1alpha()?, stopping.clone());
    // Credentials are checked before a request's message is decoded; health and reflection
    // stay open unless configured otherwise, so probes and tools keep working.
    let interceptor = AuthInterceptor(settings.authenticator.clone());
    let (health_open, health_guarded) = guard(health_service, settings.public_health, &interceptor);
    let (reflection_v1_open, reflection_v1_guarded) =
        guard(reflection_v1, settings.public_reflection, &interceptor);
    let (reflection_v1alpha_open, reflection_v1alpha_guarded) =
        guard(reflection_v1alpha, settings.public_reflection, &interceptor);
    let database = InterceptedService::new(
        DatabaseServer::new(DatabaseService::new(
            pool.clone(),
            &settings.calls,
            tasks.clone(),
            stopping.clone(),
            grace_over.clone(),
        ))
        .max_decoding_message_size(settings.calls.limits.max_request_bytes),
        interceptor.clone(),
    );

    let signal = {
        let stopping = stopping.clone();
        let reporter = reporter.clone();
        async move {
            shutdown.await;
            // Tell probes and load balancers first, then refuse new calls.
            health::set_all_not_serving(&reporter).await;
            stopping.cancel();
        }
    };

    let router = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(middleware(database))
        .add_optional_service(health_open)
        .add_optional_service(health_guarded)
        .add_optional_service(reflection_v1_open)
        .add_optional_service(reflection_v1_guarded)
        .add_optional_service(reflection_v1alpha_open)
        .add_optional_service(reflection_v1alpha_guarded);
    let mut accepting = None;
    let server = match &settings.tls {
        None => Either::Left(router.serve_with_incoming_shutdown(plaintext(listener), signal)),
        Some(tls_settings) => {
            info!(
                subject = %tls_settings.initial.subject,
                not_after = %tls_settings.initial.not_after,
                client_certificates = tls_settings.files.client_ca.is_some(),
                "serving TLS"
            );
            let current = tls::Current::new(tls_settings.initial.config.clone());
            tasks.spawn(tls::reload(
                tls_settings.clone(),
                current.clone(),
                stopping.clone(),
            ));
            // Accepting ends with the signal: tonic drops the stream when it stops.
            let (incoming, task) = tls::incoming(listener, current, stopping.clone());
            accepting = Some(task);
            Either::Right(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };

    until_drained(server, stopping, settings.shutdown_grace, accepting).await?;
    Ok(())
}

/// Runs `server` to its end, or until `grace` after `stopping` is cancelled: the server
/// waits for every connection to close after the signal, which a client that keeps its
/// connection open could stretch forever. Then closes the TLS listener's task, if any.
async fn until_drained<E>(
    server: impl Future<Output = Result<(), E>>,
    stopping: &CancellationToken,
    grace: Duration,
    accepting: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), E> {
    let drained = async {
        stopping.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        result = server => result,
        () = drained => {
            warn!(?grace, "grace period over with calls still open; closing them");
            Ok(())
        }
    };
    // The TLS listener lives in its own task: it is closed once that task has ended, and a
    // stopped gateway must refuse connections.
    if let Some(task) = accepting {
        task.abort();
        let _ = task.await;
    }
    served
}
