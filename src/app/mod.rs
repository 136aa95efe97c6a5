//! The composition root, the only module that sees everything: settings become components
//! (the pool, the health monitor, the credential watcher, the metrics endpoint), the doors are
//! started over them, and on shutdown drained and closed in order.

pub mod config;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin;
use crate::core::budget::Budget;
use crate::core::{health, pool::Pool, shutdown, telemetry, tls};
use crate::grpc;
use crate::pgwire;
use config::{Config, PgConfig};

/// Builds the PostgreSQL door over the shared pool budget and starts accepting on `listener`;
/// its clients run on the returned tracker.
fn start_pg_door(
    config: &Config,
    pg: &PgConfig,
    listener: TcpListener,
    pool: &Pool,
    budget: Budget,
    tasks: &TaskTracker,
    stopping: &CancellationToken,
) -> (Arc<pgwire::Door>, TaskTracker) {
    let target = pgwire::server::Target::of(&config.database, config.database_tls.clone());
    tasks.spawn(pool.clone().give_back_idle(stopping.clone()));
    let pools = pgwire::pool::Pools::new(
        target,
        budget,
        pgwire::pool::PoolSettings {
            acquire_timeout: config.pool.acquire_timeout.into(),
            idle_timeout: config.pool.idle_timeout.into(),
            max_lifetime: config.pool.max_lifetime.into(),
            max_waiting: config.pool.max_waiting.into(),
            prepared_statements: pg.prepared_statements,
        },
    );
    let url_user = config.database.get_user().unwrap_or("postgres").to_owned();
    let users = pgwire::users::Users::new(
        url_user,
        config
            .database
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        pg.auth_file.clone(),
        pg.auth_query.clone(),
        pool.clone(),
    );
    let client_tls = config.tls.as_ref().map(|files| {
        let current = tls::Current::new(files.initial.config.clone());
        tasks.spawn(tls::reload(
            files.clone(),
            current.clone(),
            stopping.clone(),
        ));
        current
    });
    let settings = pgwire::Settings {
        databases: pg.databases.clone(),
        admin_users: pg.admin_users.clone(),
        stats_users: pg.stats_users.clone(),
        max_message: pg.max_request_bytes,
        idle_in_transaction_timeout: pg.idle_in_transaction_timeout.into(),
        client_write_timeout: pg.client_write_timeout,
        session_state: pg.session_state,
        keep_unnamed: pg.keep_unnamed,
        max_pinned: pg.max_pinned.into(),
        max_clients: pg.max_clients.into(),
        require_tls: pg.require_tls,
        client_certificates: pg.client_certificates,
        login_timeout: pg.login_timeout.into(),
        gate: pg.gate,
        statement_cache: pg.statement_cache,
        client_statements: pg.client_statements,
        client_idle_timeout: pg.client_idle_timeout.into(),
        transaction_timeout: pg.transaction_timeout.into(),
    };
    let door = Arc::new(pgwire::Door::new(settings, pools, users, client_tls));
    let clients = TaskTracker::new();
    tasks.spawn(pgwire::serve(Arc::clone(&door), listener, clients.clone()));
    tasks.spawn(door.pools.clone().maintain(stopping.clone()));
    if let Some((user, credential)) = door.users.url_login().filter(|_| pg.warm > 0) {
        let database = config.database.get_dbname().unwrap_or(&user).to_owned();
        let key = door.pools.key(user, database);
        let grpc = pool.clone();
        tasks.spawn(door.pools.clone().keep_warm(
            key,
            credential,
            pg.warm as usize,
            move || grpc.state().idle as usize,
            stopping.clone(),
        ));
    }
    (door, clients)
}

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
    let pg = match &config.pg {
        Some(pg) => Some(
            TcpListener::bind(pg.addr)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: pg.addr,
                    source,
                })?,
        ),
        None => None,
    };
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
    serve(config, listener, pg, metrics, signals.stopped()).await
}

/// How the metrics endpoint reads the PostgreSQL door's pools (when it runs).
fn door_readers(
    door: Option<&(Arc<pgwire::Door>, TaskTracker)>,
) -> Vec<admin::metrics::DoorReader> {
    door.iter()
        .map(|(door, _)| {
            let door = Arc::clone(door);
            let read = move || {
                door.clients.publish();
                let pools = &door.pools;
                let (open, idle) = pools.counts();
                admin::metrics::DoorPools {
                    open,
                    idle,
                    waiting: pools.waiting(),
                    warm: pools.warm_min(),
                }
            };
            let read: Arc<dyn Fn() -> admin::metrics::DoorPools + Send + Sync> = Arc::new(read);
            ("postgres", read)
        })
        .collect()
}

/// Once `stop` fires: the PostgreSQL door stops taking clients, its clients get `grace` to
/// finish (then the grace is over for the rest, and a last moment), and its pools shut.
async fn drain_pg_door(
    door: &pgwire::Door,
    clients: &TaskTracker,
    stop: &CancellationToken,
    grace: Duration,
) {
    stop.cancelled().await;
    door.stop();
    clients.close();
    if tokio::time::timeout(grace, clients.wait()).await.is_err() {
        door.end_grace();
        let _ = tokio::time::timeout(Duration::from_secs(2), clients.wait()).await;
    }
    door.pools.shut();
}

/// After both doors stopped serving: what is still open is ended, the background tasks and
/// the pool's resets get a bounded moment, and the pool closes.
async fn finish(shared: grpc::server::Shared, pool: Pool, tasks: TaskTracker) {
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
}

/// Serves gRPC on `listener`, the PostgreSQL door on `pg_listener` (when `config.pg` is set)
/// and metrics on `metrics_listener` until `shutdown` resolves, then stops accepting calls and
/// clients, gives what is in flight `config.shutdown_grace` to finish, and closes the pools.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    pg_listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    info!(
        sslmode = %config.database_tls.mode(),
        verification = ?config.database_tls.verification(),
        "database TLS"
    );
    // Each client is a socket: a soft limit of 1,024 open files (many systems' default) would
    // refuse clients long before PGWAY_PG_MAX_CLIENTS. The hard limit is the system's word.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open files"),
        Err(error) => warn!(%error, "cannot raise the open-files limit"),
    }
    if metrics_listener.is_some() {
        // Installed before anything records: the pool and the call layer keep handles from it.
        telemetry::recorder();
        grpc::observe::register_series();
    }
    // One budget for both doors' server connections.
    let budget = Budget::new(config.pool.max);
    let pool = Pool::with_budget(
        config.database.clone(),
        config.database_tls.clone(),
        &config.pool,
        budget.clone(),
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

    let shared = grpc::server::Shared {
        pool: pool.clone(),
        ready,
        tasks: tasks.clone(),
        stopping: stopping.clone(),
        grace_over: CancellationToken::new(),
    };
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let door = match (pg_listener, &config.pg) {
        (Some(listener), Some(pg)) => Some(start_pg_door(
            &config, pg, listener, &pool, budget, &tasks, &stopping,
        )),
        _ => None,
    };
    if let Some((door, _)) = &door {
        // The console's SHUTDOWN stops the gateway as SIGTERM does.
        let (asked, stop) = (door.shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = asked.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
    }
    if let Some(listener) = metrics_listener {
        tasks.spawn(admin::metrics::serve(
            listener,
            pool.clone(),
            door_readers(door.as_ref()),
            stopping.clone(),
        ));
    }
    let pg_drained = async {
        if let Some((door, clients)) = &door {
            drain_pg_door(door, clients, &stop, config.shutdown_grace).await;
        }
    };
    let (served, ()) = tokio::join!(
        grpc::server::serve(
            config.grpc_settings(),
            &shared,
            listener,
            stop.clone().cancelled_owned()
        ),
        pg_drained
    );
    served?;
    finish(shared, pool, tasks).await;
    Ok(())
}
