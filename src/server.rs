//! Assembles the gRPC server (the Database service, health, reflection) and runs it until
//! shutdown, then drains within the grace period.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::config::Config;
use crate::health;
use crate::metrics::{self, ObserveLayer};
use crate::pool::Pool;
use crate::proto::{self, database_server::DatabaseServer};
use crate::service::DatabaseService;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The middleware every call passes through, outermost first.
///
/// Deadlines, admission (load shedding) and retries live with the code that knows the pool
/// and the statement (see [`crate::deadline`], [`crate::pool::Pool::get`] and
/// [`crate::service`]): a generic layer can't tell a request that waits for a connection from
/// one that runs, nor a safe retry from an unsafe one.
fn middleware()
-> tower::ServiceBuilder<tower::layer::util::Stack<ObserveLayer, tower::layer::util::Identity>> {
    tower::ServiceBuilder::new()
        // Outermost, so it sees every call and its final status, even the ones refused by
        // the layers inside: a request id (the caller's x-request-id or a new one, returned
        // in the response), a span around the call, one log line, and the call metrics.
        .layer(ObserveLayer)
}

/// Binds `config.grpc_addr` and serves until SIGTERM / SIGINT.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    info!(addr = %config.grpc_addr, "listening");
    let metrics = match config.metrics_addr {
        Some(addr) => {
            let listener = metrics::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            info!(%addr, "metrics at /metrics");
            Some(listener)
        }
        None => None,
    };
    serve(config, listener, metrics, crate::shutdown::signal()).await
}

/// Serves gRPC on `listener` (and metrics on `metrics_listener`) until `shutdown` resolves,
/// then stops accepting calls, gives the calls in flight `config.shutdown_grace` to finish,
/// and closes the pool.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    info!(
        sslmode = %config.database_tls.mode(),
        verification = ?config.database_tls.verification(),
        "database TLS"
    );
    let pool = Pool::new(
        config.database.clone(),
        config.database_tls.clone(),
        &config.pool,
    );
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // tonic-health reports SERVING for a registered service at once: readiness starts
    // NOT_SERVING until the monitor has seen the database.
    reporter
        .set_service_status(health::READINESS, tonic_health::ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(health::LIVENESS, tonic_health::ServingStatus::Serving)
        .await;

    let tasks = TaskTracker::new();
    let stopping = CancellationToken::new();
    tasks.spawn(health::monitor(
        config.database.clone(),
        config.database_tls.clone(),
        reporter.clone(),
        config.health_interval,
        stopping.clone(),
    ));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So grpcurl can decode the google.rpc.ErrorInfo in error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Cancelled when the grace period after the signal is over: what still runs is cut.
    let grace_over = CancellationToken::new();
    let database = DatabaseServer::new(DatabaseService::new(
        pool.clone(),
        &config,
        tasks.clone(),
        stopping.clone(),
        grace_over.clone(),
    ));

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
    if let Some(listener) = metrics_listener {
        tasks.spawn(metrics::serve(listener, pool.clone(), stopping.clone()));
    }

    let server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(middleware())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(database)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);

    // The server waits for every connection to close after the signal, which a client that
    // keeps its connection open could stretch forever: bound the drain by the grace period.
    let grace = config.shutdown_grace;
    let drained = async {
        stopping.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = drained => warn!(?grace, "grace period over with calls still open; closing them"),
    }
    // Streams and interactive transactions still open are cancelled and rolled back now; they
    // get a moment for that (one round trip), not a second grace period.
    grace_over.cancel();
    pool.close();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .is_err()
    {
        warn!("tasks still running after the grace period");
    }
    let state = pool.state();
    drop(pool);
    info!(open_connections = state.open, "stopped");
    Ok(())
}
