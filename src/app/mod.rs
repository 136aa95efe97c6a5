//! The composition root, the only module that sees everything: settings become components
//! (the pool, the health monitor, the credential watcher, the metrics endpoint), the doors are
//! started over them, and on shutdown drained and closed in order.

pub mod config;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin;
use crate::core::{health, pool::Pool, shutdown, telemetry};
use crate::grpc;
use config::Config;

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Grpc(#[from] grpc::server::ServeError),
}

/// Binds `config.grpc_addr` and serves until SIGTERM / SIGINT.
pub async fn run(config: Config) -> Result<(), ServeError> {
    // Before any port opens: a SIGTERM that follows the first "listening" line is never lost.
    let signals = shutdown::Signals::install();
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    info!(addr = %config.grpc_addr, "listening");
    let metrics = match config.metrics_addr {
        Some(addr) => {
            let listener = admin::metrics::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            info!(%addr, "metrics at /metrics");
            Some(listener)
        }
        None => None,
    };
    serve(config, listener, metrics, signals.stopped()).await
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
    if metrics_listener.is_some() {
        // Installed before anything records: the pool and the call layer keep handles from it.
        telemetry::recorder();
        grpc::observe::register_series();
    }
    let pool = Pool::new(
        config.database.clone(),
        config.database_tls.clone(),
        &config.pool,
    );
    let tasks = TaskTracker::new();
    let stopping = CancellationToken::new();
    let (ready_tx, ready) = health::readiness();
    tasks.spawn(health::monitor(
        config.database.clone(),
        config.database_tls.clone(),
        ready_tx,
        config.health_interval,
        stopping.clone(),
    ));
    tasks.spawn(config.authenticator.clone().watch_files(stopping.clone()));
    if let Some(listener) = metrics_listener {
        tasks.spawn(admin::metrics::serve(
            listener,
            pool.clone(),
            stopping.clone(),
        ));
    }

    let shared = grpc::server::Shared {
        pool: pool.clone(),
        ready,
        tasks: tasks.clone(),
        stopping: stopping.clone(),
        grace_over: CancellationToken::new(),
    };
    grpc::server::serve(config.grpc_settings(), &shared, listener, shutdown).await?;
    // Streams and interactive transactions still open are cancelled and rolled back now; they
    // get a moment for that (one round trip), not a second grace period.
    shared.grace_over.cancel();
    pool.close();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), async {
        tasks.wait().await;
        pool.resets_done().await;
    })
    .await
    .is_err()
    {
        warn!("tasks still running after the grace period");
    }
    let state = pool.state();
    drop(shared);
    drop(pool);
    info!(open_connections = state.open, "stopped");
    Ok(())
}
