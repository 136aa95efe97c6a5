//! The connection pool: bb8 over pgway's own connection type.
//!
//! bb8-postgres' manager hands out a bare `Client`, spawns the connection task and drops its
//! error, and checks every checkout with a round trip. pgway needs more from a connection: an id
//! and backend PID for the logs, a statement cache, and a flag the code using it sets when it can
//! no longer vouch for it (a query abandoned mid-flight, a transaction left open). bb8 reads that
//! flag in `has_broken` when the connection comes back, and drops the connection instead of
//! pooling it. There is no round trip on checkout: a connection that turns out broken fails the
//! call before its statement was sent, which is safe to report as UNAVAILABLE.
//!
//! bb8 reports connect failures only to its error sink and lets waiters time out with a bare
//! "timed out". [`Pool::get`] listens to the manager's connect outcomes instead, so that a wrong
//! password or a missing database reaches the caller at once, as itself.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use bb8::RunError;
use futures::FutureExt;
use lru::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_postgres::{CancelToken, Client, Statement};
use tracing::{debug, info, warn};

use crate::core::budget::{Budget, Giver, Share};
use crate::core::dbtls::DatabaseTls;
use crate::core::error::{ConnectError, GatewayError, Sent};
use crate::core::pause::Pause;
use crate::core::sql::{StatementTraits, classify};
use crate::core::telemetry as metrics;

mod manager;

pub use manager::{ConnectOutcome, ConnectionManager};

/// How the pool makes, keeps and hands out connections.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub min: u32,
    pub max: u32,
    pub acquire_timeout: Duration,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    pub statement_cache_size: NonZeroUsize,
    pub max_waiting: usize,
    pub max_concurrent_connects: usize,
}

/// A connection checked out of the pool; it goes back when dropped, and its Drop decides how.
///
/// A connection whose last user may have left session state behind ([`PgConn::needs_reset`])
/// is reset in the background before it goes back (see `release`); one that can't be reset
/// (no runtime to run the reset on) is discarded; no path can forget either. It holds one of
/// the pool's admission permits (see [`Pool::get`]). The fields drop in order: the connection
/// goes back to bb8's idle queue (or is discarded) first, then the permit wakes the next caller
/// in line, who finds it there. Holding the permit here, rather than in the connection, means
/// every checkout gives its permit back exactly once, whether the connection is pooled again or
/// dropped.
pub struct PooledConn {
    /// `Some` until Drop hands it to the background reset.
    conn: Option<bb8::PooledConnection<'static, ConnectionManager>>,
    /// Travels with `conn`.
    permit: Option<OwnedSemaphorePermit>,
}

impl PooledConn {
    fn new(
        conn: bb8::PooledConnection<'static, ConnectionManager>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        PooledConn {
            conn: Some(conn),
            permit: Some(permit),
        }
    }
}

impl std::ops::Deref for PooledConn {
    type Target = PgConn;

    fn deref(&self) -> &PgConn {
        // `conn` is only taken in Drop, after which nothing can deref.
        #[allow(clippy::expect_used)]
        self.conn
            .as_ref()
            .expect("a pooled connection until dropped")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConn {
        // As in `deref`.
        #[allow(clippy::expect_used)]
        self.conn
            .as_mut()
            .expect("a pooled connection until dropped")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && conn.discard.is_none()
            && !conn.busy
            && conn.giver.give_if_asked()
        {
            // The other door waits for a place (and this pool should give): a connection in
            // steady use is never idle for `Pool::give_back_idle` to close, so it goes here.
            conn.mark_discard(CloseReason::Reclaimed);
            return;
        }
        if !self.conn.as_ref().is_some_and(|conn| conn.needs_reset()) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let resets = self.pool.resets.clone();
                let conn = PooledConn {
                    conn: self.conn.take(),
                    permit: self.permit.take(),
                };
                let _reset = resets.spawn_on(release(conn), &runtime);
            }
            // Nowhere to run the reset: the connection must not go back as it is.
            Err(_) => self.mark_discard(CloseReason::ResetFailed),
        }
    }
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// One PostgreSQL connection as the pool keeps it.
pub struct PgConn {
    id: u64,
    backend_pid: i32,
    client: Client,
    cancel_token: CancelToken,
    /// Where the cancel request goes.
    database: Arc<tokio_postgres::Config>,
    /// The cancel request opens a connection of its own, with the same TLS as this one.
    tls: DatabaseTls,
    statements: LruCache<String, CachedStatement>,
    /// When the pool should close this connection; jittered so they don't all go at once.
    retire_at: Instant,
    /// Set while a statement runs, cleared when its answer was read to the end. A connection
    /// that comes back with this set was abandoned mid-flight (deadline, caller gone): its
    /// state is unknown and it is discarded.
    busy: bool,
    /// Set (with why) by code that knows the connection can't be reused: a broken
    /// transaction, session state it could not reset.
    discard: Option<CloseReason>,
    /// A statement that may have left session state behind ran: reset before reuse.
    dirty: bool,
    pool: Arc<PoolShared>,
    /// Gives the connection's place (held by its socket's task) to the other door when it is
    /// closed for that door.
    giver: Giver,
}

/// A statement prepared on a connection, with what [`classify`] said about its text (`None`
/// until a caller that needs it asked).
#[derive(Debug)]
struct CachedStatement {
    statement: Statement,
    traits: Option<StatementTraits>,
}

impl PgConn {
    /// The tokio-postgres client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, mutably (to open a transaction).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Ends the transaction open on this connection (`ROLLBACK`); once the server confirmed
    /// it, the connection is idle again.
    pub async fn roll_back(&mut self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("ROLLBACK").await?;
        self.mark_idle();
        Ok(())
    }

    /// Marks the start of work whose interruption would leave the connection in an unknown
    /// state; [`PgConn::mark_idle`] ends it.
    pub fn mark_busy(&mut self) {
        self.busy = true;
    }

    /// The connection is idle again, with no statement in flight and no transaction open.
    pub fn mark_idle(&mut self) {
        self.busy = false;
    }

    /// Whether the connection must be reset before it goes back (see `release`); one that is
    /// busy or marked for discard won't be reused anyway.
    pub fn needs_reset(&self) -> bool {
        self.dirty && !self.busy && self.discard.is_none()
    }

    /// A statement that may leave session state behind ran on this connection.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Don't return this connection to the pool.
    pub fn mark_discard(&mut self, reason: CloseReason) {
        if self.discard.is_none() {
            info!(
                conn_id = self.id,
                backend_pid = self.backend_pid,
                reason = reason.label(),
                "discarded"
            );
            self.discard = Some(reason);
        }
    }

    /// A prepared statement for `sql`, from this connection's cache or prepared now (a round
    /// trip only on the first use of a text on this connection).
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(cached) = self.statements.get(sql) {
            return Ok(cached.statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.cache(sql, statement.clone(), None);
        Ok(statement)
    }

    /// Like [`PgConn::prepare_cached`], with what [`classify`] says about `sql`; the text is
    /// read once per connection, not on every call. A statement `classify` refuses is not
    /// prepared.
    pub async fn prepare_classified(
        &mut self,
        sql: &str,
    ) -> Result<(Statement, StatementTraits), GatewayError> {
        if let Some(cached) = self.statements.get_mut(sql) {
            let traits = match cached.traits {
                Some(traits) => traits,
                None => *cached.traits.insert(classify(sql)?),
            };
            return Ok((cached.statement.clone(), traits));
        }
        let traits = classify(sql)?;
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::No))?;
        self.cache(sql, statement.clone(), Some(traits));
        Ok((statement, traits))
    }

    fn cache(&mut self, sql: &str, statement: Statement, traits: Option<StatementTraits>) {
        // Pushing out the least recently used statement drops it, and tokio-postgres then
        // closes it on the server.
        self.statements
            .put(sql.to_owned(), CachedStatement { statement, traits });
    }

    /// Forgets a cached statement (its plan went stale after a schema change).
    pub fn forget_statement(&mut self, sql: &str) {
        self.statements.pop(sql);
    }

    /// Forgets every cached statement (after `DISCARD ALL` dropped them on the server).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
    }
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("id", &self.id)
            .field("backend_pid", &self.backend_pid)
            .field("busy", &self.busy)
            .field("discard", &self.discard)
            .finish_non_exhaustive()
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if self.busy {
            // A statement may still be running for a caller who is gone: ask the server to
            // stop it, so the backend doesn't keep working (and holding locks) for nobody.
            let token = self.cancel_token.clone();
            let tls = self.tls.clone();
            let database = Arc::clone(&self.database);
            let (id, pid) = (self.id, self.backend_pid);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(error) = tls.cancel(&token, &database).await {
                        debug!(conn_id = id, backend_pid = pid, %error, "cancel request failed");
                    }
                });
            }
        }
        let reason = self.close_reason().label();
        counter!(metrics::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
        info!(
            conn_id = self.id,
            backend_pid = self.backend_pid,
            reason,
            "closed"
        );
    }
}

/// Why a connection closed (the `reason` of `pgway_connections_closed_total` and of its
/// `closed` log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The connection failed or the server closed it.
    Broken,
    /// It reached `PGWAY_CONN_MAX_LIFETIME`.
    Lifetime,
    /// It sat idle past `PGWAY_CONN_IDLE_TIMEOUT`, above the pool's minimum.
    Idle,
    /// Its user went away with a statement in flight (deadline, caller gone).
    Abandoned,
    /// Its session could not be reset after a user that may have changed it.
    ResetFailed,
    /// The gateway is stopping.
    Shutdown,
    /// Idle, closed to give its place in the budget to another user or door.
    Reclaimed,
    /// Closed once free after the console's RECONNECT or KILL (a failover, say).
    Reconnect,
}

impl CloseReason {
    /// Every reason, in the order of [`crate::core::telemetry::CLOSE_REASONS`].
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Broken,
        CloseReason::Lifetime,
        CloseReason::Idle,
        CloseReason::Abandoned,
        CloseReason::ResetFailed,
        CloseReason::Shutdown,
        CloseReason::Reclaimed,
        CloseReason::Reconnect,
    ];

    /// The metric label and log value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Broken => "broken",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Idle => "idle",
            CloseReason::Abandoned => "abandoned",
            CloseReason::ResetFailed => "reset_failed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reclaimed => "reclaimed",
            CloseReason::Reconnect => "reconnect",
        }
    }
}

impl PgConn {
    fn close_reason(&self) -> CloseReason {
        // At shutdown an idle connection's task may end before the connection itself is
        // dropped, which would read as "broken": the reason it closes is the shutdown.
        let closing = self.pool.closing.load(Ordering::Relaxed);
        if closing && !self.busy && self.discard.is_none() {
            CloseReason::Shutdown
        } else if self.client.is_closed() {
            CloseReason::Broken
        } else if self.busy {
            CloseReason::Abandoned
        } else if let Some(reason) = self.discard {
            reason
        } else if closing {
            CloseReason::Shutdown
        } else if Instant::now() >= self.retire_at {
            CloseReason::Lifetime
        } else {
            CloseReason::Idle
        }
    }
}

/// The reset of a connection whose last user may have left session state behind: settings,
/// roles, temp tables, prepared statements, cursors, LISTEN, advisory locks, cached plans.
const RESET_SQL: &str = "DISCARD ALL";

/// Gives a connection back to the pool, first resetting its session if its last user may have
/// changed it. A connection that can't be reset is discarded. Plain statements skip the round
/// trip: most connections come back clean.
async fn release(mut conn: PooledConn) {
    if !conn.needs_reset() {
        return;
    }
    // In flight: a reset cut short (the runtime stopping) leaves the connection busy, so it is
    // cancelled and discarded instead of handed to another reset.
    conn.busy = true;
    let reset = conn.client.batch_execute(RESET_SQL).await;
    conn.busy = false;
    match reset {
        Ok(()) => {
            // DISCARD ALL dropped the server side of every cached statement too.
            conn.forget_statements();
            conn.dirty = false;
            debug!(
                conn_id = conn.id,
                backend_pid = conn.backend_pid,
                "connection reset"
            );
        }
        Err(error) => {
            warn!(conn_id = conn.id, backend_pid = conn.backend_pid, %error, "reset failed");
            conn.mark_discard(CloseReason::ResetFailed);
        }
    }
}

/// The gateway's pool: a bb8 pool plus the checkout rules described in the module docs.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: bb8::Pool<ConnectionManager>,
    /// One permit per connection the pool may open, taken before asking bb8 and held with the
    /// connection: callers get connections in the order they asked (bb8 alone lets a newcomer
    /// take a returned connection ahead of the waiter it woke, which then queues again at the
    /// back).
    admission: Arc<Semaphore>,
    outcomes: watch::Receiver<ConnectOutcome>,
    shared: Arc<PoolShared>,
    acquire_timeout: Duration,
    max_waiting: usize,
    min: u32,
    /// bb8's own bound: `PGWAY_POOL_MAX` as it started.
    max: u32,
    /// Its share of the budget its connections draw on (the console's `SET` may make the
    /// budget larger or smaller than `max`).
    share: Share,
    /// `pgway_pool_wait_seconds`, looked up once.
    wait_seconds: ::metrics::Histogram,
    /// PAUSE / RESUME, shared with the other door; calls for `database` wait while it is
    /// paused.
    pause: Arc<Pause>,
    database: Arc<str>,
}

/// State shared by the pool and its connections.
#[derive(Debug, Default)]
struct PoolShared {
    /// Callers inside [`Pool::get`] now.
    waiting: AtomicUsize,
    /// Callers with a place in line that wait for bb8 to hand them a connection (idle,
    /// coming back, or new). A connection opened while there are none is a spare one (bb8
    /// keeping `PGWAY_POOL_MIN` idle), which must not take a place from the other door.
    wanting: AtomicUsize,
    /// Set when the gateway shuts down, so connections closed from then on say why.
    closing: AtomicBool,
    /// The background resets of returned connections (see [`PooledConn`]'s Drop).
    resets: tokio_util::task::TaskTracker,
    /// A connection's socket closed since [`Pool::state`] last looked: one sitting idle may
    /// be among them (see `drop_ended_idle`).
    ended: AtomicBool,
}

/// A snapshot of the pool's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub open: u32,
    pub idle: u32,
    pub min: u32,
    pub max: u32,
    pub waiting: usize,
}

/// Counts a caller for as long as it lives (in [`Pool::get`] as `waiting`, in its second
/// step as `wanting`).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Builds the pool; connections are opened in the background (`PGWAY_POOL_MIN` of them
    /// kept ready), so the gateway starts even while the database is down.
    /// Connections use `tls` (see [`crate::core::dbtls`]).
    pub fn new(database: tokio_postgres::Config, tls: DatabaseTls, config: &PoolConfig) -> Pool {
        Pool::with_budget(database, tls, config, Budget::new(config.max))
    }

    /// [`Pool::new`], its connections drawing on a `budget` shared with the other door.
    pub fn with_budget(
        database: tokio_postgres::Config,
        tls: DatabaseTls,
        config: &PoolConfig,
        budget: Budget,
    ) -> Pool {
        let shared = Arc::new(PoolShared::default());
        let name: Arc<str> = database
            .get_dbname()
            .or(database.get_user())
            .unwrap_or("postgres")
            .into();
        let share = budget.share();
        let manager =
            ConnectionManager::new(database, tls, config, Arc::clone(&shared), share.clone());
        let outcomes = manager.outcomes.subscribe();
        let inner = bb8::Pool::builder()
            .max_size(config.max)
            .min_idle(Some(config.min))
            // The round trip per checkout is what pgway exists to avoid; broken connections
            // are caught by has_broken and by the statement failing before it was sent.
            .test_on_check_out(false)
            // Connect retries happen in Pool::get, with backoff and the real error in hand.
            .retry_connection(false)
            .connection_timeout(config.acquire_timeout)
            .idle_timeout(Some(config.idle_timeout))
            .max_lifetime(None)
            // The most recently returned connection first: a light load keeps reusing a few warm
            // connections, and the others stay idle long enough for the idle timeout to close them.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .error_sink(Box::new(SilentSink))
            .build_unchecked(manager);
        Pool {
            inner,
            admission: Arc::new(Semaphore::new(config.max as usize)),
            outcomes,
            shared,
            acquire_timeout: config.acquire_timeout,
            max_waiting: config.max_waiting,
            min: config.min,
            max: config.max,
            share,
            wait_seconds: histogram!(metrics::POOL_WAIT_SECONDS, "door" => "grpc"),
            pause: Arc::default(),
            database: name,
        }
    }

    /// The pause state its calls obey, to be shared with the other door.
    pub fn pause(&self) -> &Arc<Pause> {
        &self.pause
    }

    /// The database its connections serve.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Closes an idle connection whenever a client of the other door asks for a place in the
    /// budget this pool shares and this pool should give one (see
    /// [`Share::reclaim_requested`]), until `stopping`; its place goes to the side that asked.
    /// Used when another door draws on the same budget. Spare connections (`PGWAY_POOL_MIN`)
    /// are given back too, or they would starve the other door; they are not opened again at
    /// its expense (see `ConnectionManager::place`).
    pub async fn give_back_idle(self, stopping: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = self.share.reclaim_requested() => {}
            }
            if self.inner.state().idle_connections == 0 {
                continue;
            }
            if let Ok(Ok(mut conn)) =
                tokio::time::timeout(Duration::from_millis(1), self.inner.get()).await
            {
                conn.giver.give_on_drop();
                conn.mark_discard(CloseReason::Reclaimed);
            }
        }
    }

    /// Checks a connection out, waiting at most the acquire timeout.
    ///
    /// - More than `PGWAY_MAX_WAITING` callers already waiting: refused at once with
    ///   [`GatewayError::Overloaded`], instead of queueing until everyone times out.
    /// - The database refuses connections for a reason that waiting won't fix (wrong
    ///   password, no such database): [`GatewayError::ConnectFailed`] at once.
    /// - An idle connection that died while pooled (the database restarted) is dropped
    ///   without a round trip and the next one taken.
    pub async fn get(&self) -> Result<PooledConn, GatewayError> {
        loop {
            if self.pause.any() {
                // PAUSE: the call waits until RESUME (its deadline, outside, still ends it),
                // and isn't counted against PGWAY_MAX_WAITING meanwhile.
                self.pause.until_resumed(&self.database).await;
            }
            let conn = self.get_unpaused().await?;
            if !self.pause.covers(&self.database) {
                return Ok(conn);
            }
            // PAUSE came while this call waited in line: the connection goes back and the
            // call waits with the others (PAUSE waits only for work holding a connection).
            drop(conn);
        }
    }

    /// [`Pool::get`] once no PAUSE holds the call.
    async fn get_unpaused(&self) -> Result<PooledConn, GatewayError> {
        let waiting = self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.shared.waiting);
        // Callers that will get an idle connection, or one the pool may still open, don't
        // wait: only the ones beyond that count against PGWAY_MAX_WAITING. Fewer waiting than
        // that can't be too many, whatever is available, so bb8's state (a lock) is only read
        // when the line is long.
        if waiting >= self.max_waiting {
            let state = self.inner.state();
            let most = self.max.min(self.share.budget().total());
            let available = state.idle_connections + most.saturating_sub(state.connections);
            if waiting >= self.max_waiting + available as usize {
                counter!(metrics::SHED, "door" => "grpc").increment(1);
                return Err(GatewayError::Overloaded {
                    waiting,
                    retry_after: Duration::from_millis(50),
                });
            }
        }
        let started = tokio::time::Instant::now();
        let result = self.checkout(started + self.acquire_timeout).await;
        self.wait_seconds.record(started.elapsed().as_secs_f64());
        match &result {
            Ok(conn) => debug!(
                conn_id = conn.id,
                backend_pid = conn.backend_pid,
                "checked out"
            ),
            Err(GatewayError::PoolTimeout { .. }) => {
                counter!(metrics::POOL_ACQUIRE_TIMEOUTS, "door" => "grpc").increment(1);
            }
            Err(_) => {}
        }
        result
    }

    async fn checkout(&self, deadline: tokio::time::Instant) -> Result<PooledConn, GatewayError> {
        let mut outcomes = self.outcomes.clone();
        outcomes.mark_unchanged();
        let mut last_error = None;
        if self.admission.available_permits() == 0 {
            // Callers queue for a place in line: the pool is busy (see `Share::short`).
            self.share.short();
        }
        // First a place in line. The same acquire future is kept across connect outcomes, so
        // the caller never loses its place; a permanent connect error still ends the wait.
        let acquire = Arc::clone(&self.admission).acquire_owned();
        tokio::pin!(acquire);
        // Both selects are biased: the checkout itself is polled first, so when it is ready at
        // once (a place and an idle connection, the common case) the outcome watch is never
        // polled and registers no waiter, and no random branch order is drawn.
        let permit = loop {
            tokio::select! {
                biased;
                permit = tokio::time::timeout_at(deadline, &mut acquire) => match permit {
                    Ok(Ok(permit)) => break permit,
                    // Ok(Err(_)): closed, which this pool never does; treat it as the timeout.
                    Ok(Err(_)) | Err(_) => return Err(self.timed_out(last_error)),
                },
                Ok(()) = outcomes.changed() => {
                    last_error = Self::connect_outcome(&mut outcomes, last_error)?;
                }
            }
        };
        // Then a connection: with a permit in hand, one is idle, returning, or may be opened.
        // The caller counts as wanting one (what lets a connect ask the other door for a
        // place) only once bb8 had none idle for it, from the first poll that had to wait.
        let mut wanting = None;
        loop {
            let get = self.inner.get_owned();
            tokio::pin!(get);
            let get = std::future::poll_fn(|cx| {
                let poll = get.as_mut().poll(cx);
                if poll.is_pending() && wanting.is_none() {
                    self.share.short();
                    wanting = Some(Waiting::new(&self.shared.wanting));
                }
                poll
            });
            tokio::select! {
                biased;
                got = tokio::time::timeout_at(deadline, get) => {
                    match got {
                        Ok(Ok(mut conn)) => {
                            if !conn.client.is_closed() {
                                return Ok(PooledConn::new(conn, permit));
                            }
                            conn.mark_discard(CloseReason::Broken);
                        }
                        Ok(Err(RunError::User(error))) => {
                            return Err(GatewayError::ConnectFailed(Arc::new(error)));
                        }
                        Ok(Err(RunError::TimedOut)) | Err(_) => {
                            return Err(self.timed_out(last_error));
                        }
                    }
                }
                Ok(()) = outcomes.changed() => {
                    // bb8 won't try again for a waiter on its own: asking anew (the loop drops
                    // and restarts the checkout) starts another attempt, which the manager
                    // delays by its backoff.
                    last_error = Self::connect_outcome(&mut outcomes, last_error)?;
                }
            }
        }
    }

    /// Reads a new connect outcome for a waiting caller: a permanent error ends its wait, a
    /// passing one is kept to explain a timeout.
    fn connect_outcome(
        outcomes: &mut watch::Receiver<ConnectOutcome>,
        last_error: Option<Arc<ConnectError>>,
    ) -> Result<Option<Arc<ConnectError>>, GatewayError> {
        let outcome = outcomes.borrow_and_update().clone();
        match outcome.error {
            Some(error) if error.is_permanent() => Err(GatewayError::ConnectFailed(error)),
            Some(error) => Ok(Some(error)),
            None => Ok(last_error),
        }
    }

    fn timed_out(&self, last_connect_error: Option<Arc<ConnectError>>) -> GatewayError {
        GatewayError::PoolTimeout {
            waited: self.acquire_timeout,
            last_connect_error,
        }
    }

    /// How many connections are open, idle and waited for now. Idle connections the server
    /// closed are dropped first, so they are not counted.
    pub fn state(&self) -> PoolState {
        self.drop_ended_idle();
        let state = self.inner.state();
        PoolState {
            open: state.connections,
            idle: state.idle_connections,
            min: self.min,
            max: self.share.budget().total(),
            waiting: self.shared.waiting.load(Ordering::Relaxed),
        }
    }

    /// Drops the idle connections whose socket has closed (the server restarted, or ended
    /// them), when any connection ended since the last look. A checkout finds them out and
    /// takes the next one, but with no calls, bb8 would count them idle, and not open the
    /// spares it keeps, until its idle timeout.
    fn drop_ended_idle(&self) {
        // bb8's checkout needs the runtime's timer; every caller of `state` runs on it.
        if tokio::runtime::Handle::try_current().is_err()
            || !self.shared.ended.swap(false, Ordering::Relaxed)
        {
            return;
        }
        // Each idle connection comes out at the first poll of a checkout, without waiting; a
        // checkout that would wait (a caller took the last one meanwhile) is dropped at once.
        let mut taken = Vec::new();
        for _ in 0..self.inner.state().idle_connections {
            match self.inner.get().now_or_never() {
                Some(Ok(conn)) => taken.push(conn),
                _ => break,
            }
        }
        // Given back in reverse, so the most recently used is first in the idle queue again.
        while let Some(mut conn) = taken.pop() {
            if conn.client.is_closed() {
                conn.mark_discard(CloseReason::Broken);
            }
        }
    }

    /// From now on, connections that close were closed by the shutdown.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.resets.close();
    }

    /// Waits until the resets of connections given back have finished (after [`Pool::close`]:
    /// shutdown waits for them, bounded, like its other tasks).
    pub async fn resets_done(&self) {
        self.shared.resets.wait().await;
    }
}

/// Connect errors are logged by the manager itself, with the connection's id.
#[derive(Debug, Clone, Copy)]
struct SilentSink;

impl bb8::ErrorSink<ConnectError> for SilentSink {
    fn sink(&self, _error: ConnectError) {}

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<ConnectError>> {
        Box::new(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_the_registered_labels() {
        let labels = CloseReason::ALL.map(CloseReason::label);
        assert_eq!(labels, crate::core::telemetry::CLOSE_REASONS);
    }
}
