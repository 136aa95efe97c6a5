//! The PostgreSQL door: a listener that speaks the PostgreSQL frontend/backend protocol (v3)
//! and pools in transaction mode, over the same core and connection budget as the gRPC door.
//!
//! - [`startup`]: SSL/GSS negotiation, the startup packet, SCRAM-SHA-256, the parameters.
//! - [`session`]: the relay, transaction boundaries, session state, pinning.
//! - [`statements`]: named prepared statements carried across server connections.
//! - [`pool`]: server connections per (user, database) under the shared budget.
//! - [`server`]: opening and logging in a server connection.
//! - [`cancel`]: cancel requests, routed to the right server connection only.
//! - [`frame`]: message framing and the few messages the door reads or writes.
//! - [`scram`], [`userlist`], [`users`]: who may log in, and how pgway logs them in upstream.

pub mod cancel;
pub mod console;
pub mod frame;
pub mod gate;
pub mod pool;
pub mod roster;
pub mod scram;
pub mod server;
pub mod session;
pub mod startup;
pub mod statements;
pub mod userlist;
pub mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::telemetry as names;
use crate::core::tls::Current;
use crate::core::tunable::Tunable;
use pool::Pools;
use statements::Registry;
use users::Users;

/// What a statement that keeps state in the server session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStateMode {
    /// The client keeps its server connection until it disconnects.
    Pin,
    /// The statement is refused (0A000, with a hint).
    Error,
}

/// Which of clients' unnamed statements are kept on server connections as global named ones
/// (`PGWAY_PG_KEEP_UNNAMED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepUnnamed {
    /// None: each is parsed where it runs, as directly.
    Off,
    /// Those run outside a transaction block, where a stale plan's failure can be run again
    /// unseen; inside a block the text is parsed as the unnamed statement, as with `Off`.
    Autocommit,
    /// All of them: inside a block a stale plan (DDL outside pgway) fails with 0A000.
    Always,
}

/// The door's settings.
#[derive(Debug)]
pub struct Settings {
    /// The databases clients may name (`PGWAY_PG_DATABASES`); empty: any the server lets
    /// the client's user connect to.
    pub databases: Vec<String>,
    /// Who may use the admin console: every command, or only `SHOW`.
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub max_message: usize,
    /// How long a client may sit idle in a transaction (0: no bound).
    pub idle_in_transaction_timeout: Tunable<Duration>,
    /// How long a linked client may leave replies unread (0: no bound).
    pub client_write_timeout: Duration,
    pub session_state: SessionStateMode,
    /// Clients' unnamed statements are kept prepared on server connections as global named
    /// ones (`PGWAY_PG_KEEP_UNNAMED`).
    pub keep_unnamed: KeepUnnamed,
    pub max_pinned: Tunable<usize>,
    pub max_clients: Tunable<usize>,
    /// Plaintext clients are refused (`PGWAY_PG_REQUIRE_TLS`, or a client CA set).
    pub require_tls: bool,
    /// TLS clients must show a certificate `PGWAY_TLS_CLIENT_CA` signed (the TLS
    /// configuration enforces it; this names it in refusals).
    pub client_certificates: bool,
    /// How long a client has to log in (PostgreSQL's `authentication_timeout`).
    pub login_timeout: Tunable<Duration>,
    pub gate: gate::GateLimits,
    /// The registry of statement texts shared by all clients.
    pub statement_cache: statements::Bound,
    /// Each client's named statements.
    pub client_statements: statements::Bound,
    /// How long a client may sit idle, even holding no server connection (0: no bound).
    pub client_idle_timeout: Tunable<Duration>,
    /// How long a client may keep a server connection for one transaction (0: no bound).
    pub transaction_timeout: Tunable<Duration>,
}

/// Counts of clients by state, kept as `pgway_pg_clients{state}`.
#[derive(Debug)]
pub struct Clients {
    total: AtomicI64,
    active: AtomicI64,
    waiting: AtomicI64,
    pinned: AtomicUsize,
    gauges: [Gauge; 4],
}

impl Clients {
    fn new() -> Clients {
        let g = |state: &'static str| gauge!(names::PG_CLIENTS, "state" => state);
        Clients {
            total: AtomicI64::new(0),
            active: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            pinned: AtomicUsize::new(0),
            gauges: [g("active"), g("idle"), g("waiting"), g("pinned")],
        }
    }

    /// Sets `pgway_pg_clients{state}` from the counts: done at each scrape, not at each
    /// change (a link and an unlink each changed two counts per transaction, and the gauges
    /// are shared by every worker: measured, four gauge writes per transaction were as much
    /// CPU as the relay's message handling).
    pub fn publish(&self) {
        let total = self.total.load(Ordering::Relaxed);
        let active = self.active.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed);
        self.gauges[0].set(active as f64);
        self.gauges[1].set((total - active - waiting).max(0) as f64);
        self.gauges[2].set(waiting as f64);
        self.gauges[3].set(self.pinned.load(Ordering::Relaxed) as f64);
    }

    /// Counts a client for as long as the guard lives.
    pub fn connected(&self) -> Connected<'_> {
        self.total.fetch_add(1, Ordering::Relaxed);
        Connected(self)
    }

    pub fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn waiting(&self, delta: i64) {
        self.waiting.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn linked(&self, delta: i64) {
        self.active.fetch_add(delta, Ordering::Relaxed);
    }

    /// A place among the pinned clients, if the cap allows: counts one more pinned client,
    /// unless `max` are pinned already.
    pub fn try_pin(&self, max: usize) -> bool {
        self.pinned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn unpin(&self) {
        self.pinned.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one connected client.
#[derive(Debug)]
pub struct Connected<'a>(&'a Clients);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything a client connection of the door uses.
#[derive(Debug)]
pub struct Door {
    pub settings: Settings,
    pub pools: Pools,
    pub statements: Registry,
    pub cancels: cancel::Cancels,
    pub clients: Clients,
    pub users: Users,
    /// TLS for clients that ask; `None` answers `N`.
    pub tls: Option<Current>,
    /// Stop: no new clients, idle ones are told 57P01; transactions may finish. Private, like
    /// `grace_over`: cancelled only by [`Door::stop`], which also rings the sessions' bells
    /// (sessions wait on those, not on the tokens).
    stopping: CancellationToken,
    /// The grace period is over: everyone still here is told 57P01 ([`Door::end_grace`]).
    grace_over: CancellationToken,
    /// `pgway_pg_prepared_statements_total`, looked up once: counted on every Bind.
    pub prepared: PreparedCounters,
    /// PAUSE / RESUME (the console's), shared with the gRPC door.
    pub pause: Arc<crate::core::pause::Pause>,
    /// Cancelled by the console's SHUTDOWN: the composition root stops the gateway as on
    /// SIGTERM.
    pub shutdown: CancellationToken,
    /// Logins in progress, and failures by address.
    pub gate: gate::Gate,
    /// `pgway_pg_timeouts_total{kind}`.
    pub timeouts: Timeouts,
    /// [`Phase`] as a number: read by every session at every wait, without a lock.
    phase: AtomicU8,
    /// Makes the mock verifiers of unknown users (stable per name, unknown to anyone).
    mock_secret: [u8; 32],
}

/// `pgway_pg_prepared_statements_total{outcome}`'s three series.
#[derive(Debug)]
pub struct PreparedCounters {
    pub hit: Counter,
    pub prepared: Counter,
    pub evicted: Counter,
}

impl PreparedCounters {
    fn new() -> PreparedCounters {
        PreparedCounters {
            hit: counter!(names::PG_PREPARED, "outcome" => "hit"),
            prepared: counter!(names::PG_PREPARED, "outcome" => "prepared"),
            evicted: counter!(names::PG_PREPARED, "outcome" => "evicted"),
        }
    }
}

/// `pgway_pg_timeouts_total{kind}`: clients ended for holding a server connection too long.
#[derive(Debug)]
pub struct Timeouts;

impl Timeouts {
    /// Counts one client ended by the bound `kind` (one of `PG_TIMEOUT_KINDS`).
    pub fn count(&self, kind: &'static str) {
        counter!(names::PG_TIMEOUTS, "kind" => kind).increment(1);
    }
}

impl Door {
    pub fn new(settings: Settings, pools: Pools, users: Users, tls: Option<Current>) -> Door {
        Door {
            // The gRPC door's pool carries the pause state: one PAUSE holds both doors.
            pause: Arc::clone(users.pool().pause()),
            clients: Clients::new(),
            gate: gate::Gate::new(settings.gate),
            statements: Registry::new(settings.statement_cache),
            timeouts: Timeouts,
            settings,
            pools,

            cancels: cancel::Cancels::default(),
            users,
            tls,
            stopping: CancellationToken::new(),
            grace_over: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            prepared: PreparedCounters::new(),
            mock_secret: rand::random(),
            phase: AtomicU8::new(Phase::Running as u8),
        }
    }

    /// Resolves once the door is stopping.
    pub async fn stopped(&self) {
        self.stopping.cancelled().await
    }

    /// Stops the door: no new clients; idle ones are told 57P01, transactions may finish.
    pub fn stop(&self) {
        self.enter(Phase::Stopping);
        self.stopping.cancel();
    }

    /// Ends the grace period: everyone still here is told 57P01.
    pub fn end_grace(&self) {
        self.enter(Phase::GraceOver);
        self.grace_over.cancel();
    }

    fn enter(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.cancels.ring_all();
    }

    /// Where the door is in its shutdown.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Stopping,
            _ => Phase::GraceOver,
        }
    }
}

/// Where the door is in its shutdown; only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running = 0,
    Stopping = 1,
    GraceOver = 2,
}

/// Accepts clients on `listener` until the door is told to stop; each client runs on a task
/// of `tasks`.
pub async fn serve(door: Arc<Door>, listener: TcpListener, tasks: TaskTracker) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, door = "postgres", "listening");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    tasks.spawn(startup::serve_client(Arc::clone(&door), tcp, peer));
                }
                Err(error) => {
                    warn!(%error, door = "postgres", "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = door.stopping.cancelled() => break,
        }
    }
    info!(door = "postgres", "stopped accepting");
}
