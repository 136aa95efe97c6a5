//! The PostgreSQL door's server connections: one idle list per (user, database), all drawing
//! on the gateway's one connection budget.
//!
//! A client is given a connection at the first message of a transaction and gives it back
//! when the transaction is over. Idle connections of one user are closed to make room when
//! another user, or the gRPC door, finds the budget spent.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::counter;
use tracing::{debug, info, warn};

use super::roster::{NewServer, Roster, ServerGuard};
use super::scram::Credential;
use super::server::{self, LoginError, Pooled, ServerConn, Target};
use crate::core::budget::{Budget, Place, Share};
use crate::core::pool::CloseReason;
use crate::core::telemetry as names;
use crate::core::tunable::Tunable;

mod wait;

use wait::{Line, Lines};

/// Who a server connection is logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    /// A digest of the two names, made once: the key is hashed at every acquire and release
    /// (three times a transaction), and hashing the names each time was 2% of the door's
    /// instructions (callgrind). First, so that unequal keys compare unequal at once.
    digest: u64,
    pub user: String,
    pub database: String,
}

impl PoolKey {
    pub fn new(user: String, database: String) -> PoolKey {
        use std::hash::BuildHasher;
        // Fixed seeds: only logged-in users' names are hashed (no stranger can pick keys
        // that collide), and the maps still mix this digest with their own random state.
        let digest = foldhash::fast::FixedState::default().hash_one((&user, &database));
        PoolKey {
            digest,
            user,
            database,
        }
    }
}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// How the door's pools behave.
#[derive(Debug)]
pub struct PoolSettings {
    pub acquire_timeout: Tunable<Duration>,
    pub idle_timeout: Tunable<Duration>,
    pub max_lifetime: Tunable<Duration>,
    pub max_waiting: Tunable<usize>,
    pub prepared_statements: NonZeroUsize,
}

/// Why no server connection was given.
#[derive(Debug, Clone)]
pub enum AcquireError {
    /// Too many clients already waiting (53300).
    Overloaded { waiting: usize },
    /// None free within the acquire timeout (53300 too: the client may try again).
    Timeout { last: Option<LoginError> },
    /// The server refused the login for a reason waiting won't cure.
    Login(LoginError),
    /// The gateway is shutting down (57P01).
    Closing,
}

/// How often the console's averages (`SHOW STATS_AVERAGES`) are taken, as PgBouncer's
/// default `stats_period`.
const STATS_PERIOD_SECONDS: u64 = 60;

/// Hashes pool keys (logged-in users' names, never a stranger's) on every acquire and
/// release: SipHash was about 1% of the door's CPU (measured), foldhash a fraction of it.
type Hasher = foldhash::fast::RandomState;

/// The door's pools. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    target: Target,
    /// This door's share of the budget both doors draw on.
    share: Share,
    settings: PoolSettings,
    idle: Mutex<HashMap<Arc<PoolKey>, Vec<Pooled>, Hasher>>,
    /// Clients waiting for a connection of that key, longest-waiting first: a connection
    /// given back goes straight to the first, so no newcomer can take it ahead of them.
    waiters: Arc<Lines>,
    /// Whether [`Pools::sweep_lines`] runs; changed under the `waiters` lock.
    sweeping: AtomicBool,
    waiting: AtomicUsize,
    open: Arc<AtomicUsize>,
    /// Open connections per (user, database), for sharing the places fairly between them.
    open_of: Mutex<HashMap<Arc<PoolKey>, Arc<AtomicUsize>, Hasher>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// `pgway_pool_wait_seconds{door="postgres"}`, looked up once.
    wait_seconds: metrics::Histogram,
    roster: Arc<Roster>,
    /// RECONNECTs: (database or all, ids below which connections close once free).
    retire: Mutex<Vec<(Option<String>, u64)>>,
    /// Whether there was any: the one load on every release's path.
    retiring: AtomicBool,
    /// The key kept warm, and how many of its connections (see [`Pools::keep_warm`]).
    warm: Mutex<Option<(Arc<PoolKey>, usize)>>,
    /// How many it started with (`PGWAY_POOL_MIN`; 0 when it doesn't run).
    warm_start: AtomicUsize,
    /// Since when the door has been short of connections, in milliseconds after `epoch` plus
    /// one (0: not short): set when a client joins a line, cleared when a client takes an idle
    /// connection and leaves another idle. The door asks the other door for a place once it
    /// has been short for `ASK_AFTER`, however quickly each client is served: ten clients
    /// taking turns on one connection never wait that long one by one, yet are short of
    /// connections all the same.
    queued_since: AtomicU64,
    epoch: Instant,
}

/// One open server connection of the door, counted while its [`ServerConn`] lives: the
/// count falls when the connection is dropped, on every path (closed, lost in a hand-off,
/// dropped with a login that timed out), so `pgway_pool_connections` can't drift.
/// It is listed in the door's [`Roster`] (`SHOW SERVERS`) for as long, too.
#[derive(Debug)]
pub struct OpenCount {
    open: Arc<AtomicUsize>,
    /// Counts it among its (user, database)'s connections.
    _of_key: KeyCount,
    pub listed: ServerGuard,
    /// The door's lines: a client waiting alone is nudged when this closes (its place, dropped
    /// just before, is free).
    lines: Arc<Lines>,
}

impl OpenCount {
    fn new(inner: &Inner, of_key: KeyCount, listed: ServerGuard) -> OpenCount {
        inner.open.fetch_add(1, Ordering::Relaxed);
        OpenCount {
            open: Arc::clone(&inner.open),
            _of_key: of_key,
            listed,
            lines: Arc::clone(&inner.waiters),
        }
    }

    /// How many connections its (user, database) has, logging in ones included.
    fn of_key(&self) -> usize {
        self._of_key.0.load(Ordering::Relaxed)
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        // A connection's place is dropped before this (its field comes first).
        wait::nudge(&self.lines);
    }
}

/// Counts a connection of one (user, database) from the moment its place is taken (a login
/// in progress counts, or another key would see this one as holding none and close for it
/// every connection coming back meanwhile) until it is dropped.
#[derive(Debug)]
struct KeyCount(Arc<AtomicUsize>);

impl KeyCount {
    fn new(count: Arc<AtomicUsize>) -> KeyCount {
        count.fetch_add(1, Ordering::Relaxed);
        KeyCount(count)
    }
}

impl Drop for KeyCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a caller as waiting while it is in [`Pools::acquire`].
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pools {
    pub fn new(target: Target, budget: Budget, settings: PoolSettings) -> Pools {
        Pools {
            inner: Arc::new(Inner {
                target,
                share: budget.share(),
                settings,
                idle: Mutex::new(HashMap::default()),
                waiters: Arc::default(),
                sweeping: AtomicBool::new(false),
                waiting: AtomicUsize::new(0),
                open: Arc::new(AtomicUsize::new(0)),
                open_of: Mutex::new(HashMap::default()),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                wait_seconds: metrics::histogram!(names::POOL_WAIT_SECONDS, "door" => "postgres"),
                roster: Arc::default(),
                retire: Mutex::new(Vec::new()),
                retiring: AtomicBool::new(false),
                warm: Mutex::new(None),
                warm_start: AtomicUsize::new(0),
                queued_since: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// The budget both doors share (`PGWAY_POOL_MAX`).
    pub fn budget(&self) -> &Budget {
        self.inner.share.budget()
    }

    /// The door's live lists and figures.
    pub fn roster(&self) -> &Arc<Roster> {
        &self.inner.roster
    }

    /// How `SHOW SERVERS` lists a new connection.
    fn describe(&self, key: &PoolKey, conn: &ServerConn) -> NewServer {
        let (addr, port) = self.inner.target.address.host_port();
        NewServer {
            id: conn.id,
            user: key.user.clone(),
            database: key.database.clone(),
            addr,
            port,
            pid: conn.pid,
        }
    }

    /// The console's RECONNECT (and KILL): every server connection of `database` (or of all)
    /// open now is closed once it is free, the idle ones at once; new ones are made as
    /// needed. Returns the first id not affected (for WAIT_CLOSE).
    pub fn reconnect(&self, database: Option<&str>) -> u64 {
        let inner = &self.inner;
        let below = inner.next_id.load(Ordering::SeqCst);
        if let Ok(mut retire) = inner.retire.lock() {
            retire.push((database.map(str::to_owned), below));
        }
        inner.retiring.store(true, Ordering::SeqCst);
        let ours = |key: &PoolKey| database.is_none_or(|d| d == key.database);
        let idle: Vec<Pooled> = match inner.idle.lock() {
            Ok(mut idle) => idle
                .iter_mut()
                .filter(|(key, _)| ours(key))
                .flat_map(|(_, list)| std::mem::take(list))
                .collect(),
            Err(_) => Vec::new(),
        };
        for conn in idle {
            self.close(conn, CloseReason::Reconnect);
        }
        below
    }

    /// The id below which RECONNECTs and KILLs retired `database`'s connections (or all
    /// databases'); 0 when none did.
    pub fn retired_below(&self, database: Option<&str>) -> u64 {
        let Ok(retire) = self.inner.retire.lock() else {
            return 0;
        };
        retire
            .iter()
            .filter(|(retired, _)| match (retired, database) {
                (None, _) => true,
                (Some(retired), Some(database)) => retired == database,
                (Some(_), None) => true,
            })
            .map(|(_, below)| *below)
            .max()
            .unwrap_or(0)
    }

    /// Whether a RECONNECT retired connection `id` of `key`.
    fn retired(&self, key: &PoolKey, id: u64) -> bool {
        if !self.inner.retiring.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(retire) = self.inner.retire.lock() else {
            return false;
        };
        retire.iter().any(|(database, below)| {
            id < *below && database.as_deref().is_none_or(|d| d == key.database)
        })
    }

    /// Idle server connections of each key, for `SHOW POOLS`.
    pub fn idle_by_key(&self) -> Vec<(Arc<PoolKey>, usize)> {
        match self.inner.idle.lock() {
            Ok(idle) => idle
                .iter()
                .map(|(k, list)| (Arc::clone(k), list.len()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Clients waiting for a server connection now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Open server connections of this door, and how many of them are idle.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self
            .inner
            .idle
            .lock()
            .map(|idle| idle.values().map(Vec::len).sum())
            .unwrap_or(0);
        (self.inner.open.load(Ordering::Relaxed), idle)
    }

    /// Opens a server connection of `key` in `place`, counted and listed once logged in.
    async fn open(
        &self,
        key: &Arc<PoolKey>,
        credential: &Credential,
        place: Place,
    ) -> Result<Pooled, LoginError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let of_key = KeyCount::new(self.open_of(key));
        info!(server_conn = id, user = %key.user, database = %key.database, door = "postgres", "connecting");
        let opened = server::connect(
            &inner.target,
            &key.user,
            &key.database,
            credential,
            id,
            inner.settings.prepared_statements,
            place,
        )
        .await;
        match opened {
            Ok(mut conn) => {
                let listed = inner.roster.server(self.describe(key, &conn));
                conn._open = Some(OpenCount::new(inner, of_key, listed));
                counter!(names::CONNECTIONS_OPENED).increment(1);
                info!(
                    server_conn = id,
                    backend_pid = conn.pid,
                    door = "postgres",
                    "connected"
                );
                Ok(conn)
            }
            Err(error) => {
                warn!(server_conn = id, %error, door = "postgres", "connect failed");
                Err(error)
            }
        }
    }

    /// Keeps `min` connections of `key` (the URL's user and database) ready, counting
    /// `others_idle` (the gRPC door's idle ones) among them, so an idle gateway doesn't make
    /// the first burst pay for connecting. Only a free place is used: warming never takes one
    /// from a door that needs it, so it can't churn with the other door's connections. Runs
    /// until `stopping`.
    pub async fn keep_warm(
        self,
        key: Arc<PoolKey>,
        credential: Credential,
        min: usize,
        others_idle: impl Fn() -> usize + Send,
        stopping: tokio_util::sync::CancellationToken,
    ) {
        if let Ok(mut warm) = self.inner.warm.lock() {
            *warm = Some((Arc::clone(&key), min));
        }
        self.inner.warm_start.store(min, Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stopping.cancelled() => return,
                _ = tick.tick() => {}
            }
            let idle = self.idle_of(&key);
            let min = self.warm_min();
            if self.inner.closed.load(Ordering::Relaxed) || idle + others_idle() >= min {
                continue;
            }
            let Some(place) = self.inner.share.try_take() else {
                continue;
            };
            if let Ok(conn) = self.open(&key, &credential, place).await {
                debug!(server_conn = conn.id, "kept warm");
                self.release(&key, conn);
            }
        }
    }

    /// How many connections [`Pools::keep_warm`] keeps ready (0 when it doesn't run).
    pub fn warm_min(&self) -> usize {
        self.inner
            .warm
            .lock()
            .map(|warm| warm.as_ref().map_or(0, |(_, min)| *min))
            .unwrap_or(0)
    }

    /// How many connections [`Pools::keep_warm`] started to keep ready (`PGWAY_POOL_MIN`).
    pub fn warm_start(&self) -> usize {
        self.inner.warm_start.load(Ordering::Relaxed)
    }

    /// Changes how many connections [`Pools::keep_warm`] keeps ready (the console's `SET`);
    /// `false` when it doesn't run.
    pub fn set_warm_min(&self, min: usize) -> bool {
        match self.inner.warm.lock().as_deref_mut() {
            Ok(Some((_, warm))) => {
                *warm = min;
                true
            }
            _ => false,
        }
    }

    /// Idle connections of `key` now.
    fn idle_of(&self, key: &PoolKey) -> usize {
        self.inner
            .idle
            .lock()
            .map(|idle| idle.get(key).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Gives a connection back: pooled if it can be vouched for, closed otherwise.
    pub fn release(&self, key: &Arc<PoolKey>, conn: Pooled) {
        self.release_at(key, conn, Instant::now());
    }

    /// [`Pools::release`] at `now` (the caller's reading of the clock, for the lifetime and
    /// the idle time).
    pub fn release_at(&self, key: &Arc<PoolKey>, conn: Pooled, now: Instant) {
        let inner = &self.inner;
        if conn.broken
            || inner.closed.load(Ordering::Relaxed)
            || now.saturating_duration_since(conn.opened) >= inner.settings.max_lifetime.get()
        {
            let reason = if conn.broken {
                CloseReason::Broken
            } else {
                CloseReason::Lifetime
            };
            self.close(conn, reason);
            return;
        }
        if self.retired(key, conn.id) {
            self.close(conn, CloseReason::Reconnect);
            return;
        }
        if conn.give_place_if_asked() {
            // The other door waits for a place (and this one should give): a connection in
            // steady use is never idle for its holder to close, so it goes here.
            self.close(conn, CloseReason::Reclaimed);
            return;
        }
        // Straight to the longest-waiting client of the same key, if any still waits, unless
        // another key's client waits for its place.
        let mut conn = conn;
        if let Ok(mut waiters) = inner.waiters.lock() {
            if waiters.len() > 1 && self.owed_to_another_key(&mut waiters, key, &conn) {
                drop(waiters);
                self.close(conn, CloseReason::Reclaimed);
                return;
            }
            if let Some(line) = waiters.get_mut(key) {
                while let Some(waiter) = line.pop_front() {
                    match waiter.handoff.send(conn) {
                        Ok(()) => return,
                        Err(back) => conn = back,
                    }
                }
            }
            // Parked under the lines' lock: a client that joins a line looks at the idle list
            // after, so it either finds this one there or was in line before and handed it.
            // Parked after unlocking, a client could join in between, find nothing, and wait
            // while this sat idle.
            return self.park(key, conn, now);
        }
        self.park(key, conn, now);
    }

    /// Puts a connection given back on its key's idle list.
    fn park(&self, key: &Arc<PoolKey>, mut conn: Pooled, now: Instant) {
        conn.idle_since = now;
        if let Ok(mut idle) = self.inner.idle.lock() {
            idle.entry(Arc::clone(key)).or_default().push(conn);
        }
    }

    /// The one `Arc` of `key` its clients share: the idle lists and lines hold it too, so
    /// finding a key there compares pointers, not names (four string compares a transaction
    /// when each client had a key of its own).
    pub fn key(&self, user: String, database: String) -> Arc<PoolKey> {
        let key = PoolKey::new(user, database);
        let Ok(mut counts) = self.inner.open_of.lock() else {
            return Arc::new(key);
        };
        if let Some((shared, _)) = counts.get_key_value(&key) {
            return Arc::clone(shared);
        }
        let key = Arc::new(key);
        counts.insert(Arc::clone(&key), Arc::default());
        key
    }

    /// The open-connection count of `key`.
    fn open_of(&self, key: &Arc<PoolKey>) -> Arc<AtomicUsize> {
        match self.inner.open_of.lock() {
            Ok(mut counts) => Arc::clone(counts.entry(Arc::clone(key)).or_default()),
            Err(_) => Arc::default(),
        }
    }

    /// Whether a connection of `key` given back should close to make room for a client of
    /// another key that waits for a place: when `key` holds at least two more connections
    /// than that key (or that key holds none), so that two busy users settle on an even split
    /// of the budget, as the doors do, instead of trading places at every transaction. Without
    /// it, a user whose clients always queue keeps every connection it has, handing each on
    /// to its own line, and another user's client waits out its timeout.
    fn owed_to_another_key(
        &self,
        waiters: &mut HashMap<Arc<PoolKey>, Line, Hasher>,
        key: &Arc<PoolKey>,
        conn: &ServerConn,
    ) -> bool {
        // Lines of clients that left go, so that a key that once waited costs nothing later.
        waiters.retain(|k, line| {
            if k != key {
                line.retain(|waiter| !waiter.handoff.is_closed());
            }
            k == key || !line.is_empty()
        });
        let mut others = waiters.iter().filter(|(k, _)| *k != key).peekable();
        if others.peek().is_none() {
            return false;
        }
        let Ok(counts) = self.inner.open_of.lock() else {
            return false;
        };
        let count = |k: &Arc<PoolKey>| counts.get(k).map_or(0, |c| c.load(Ordering::Relaxed));
        let Some(fewest) = others.map(|(k, _)| count(k)).min() else {
            return false;
        };
        let mine = conn._open.as_ref().map_or(0, OpenCount::of_key);
        mine >= fewest + 2 || (fewest == 0 && mine >= 1)
    }

    /// Closes a connection that can't go back (counted and logged).
    pub fn close(&self, conn: Pooled, reason: CloseReason) {
        let reason = reason.label();
        counter!(names::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
        info!(
            server_conn = conn.id,
            backend_pid = conn.pid,
            reason,
            door = "postgres",
            "closed"
        );
        drop(conn);
    }

    /// An idle connection of `key`, as of `now` (for its lifetime).
    fn take_idle(&self, key: &Arc<PoolKey>, now: Instant) -> Option<Pooled> {
        loop {
            // The most recently used first: a light load keeps reusing a few warm connections.
            let conn = {
                let mut idle = self.inner.idle.lock().ok()?;
                let list = idle.get_mut(key)?;
                let conn = list.pop()?;
                if !list.is_empty() {
                    // A connection to spare: the door is not short (see `queued_since`).
                    self.inner.queued_since.store(0, Ordering::Relaxed);
                }
                conn
            };
            let mut conn = conn;
            if conn.closed_while_idle() {
                self.close(conn, CloseReason::Broken);
                continue;
            }
            if now.saturating_duration_since(conn.opened) >= self.inner.settings.max_lifetime.get()
            {
                self.close(conn, CloseReason::Lifetime);
                continue;
            }
            debug!(server_conn = conn.id, "checked out");
            return Some(conn);
        }
    }

    /// Closes the longest-idle connection of any key but `except` (to give its place to
    /// that key, or with `give` to the other door, which asked for it); false if there is
    /// none.
    fn close_longest_idle(&self, except: Option<&Arc<PoolKey>>, give: bool) -> bool {
        let victim = self.inner.idle.lock().ok().and_then(|mut idle| {
            let (_, list) = idle
                .iter_mut()
                .filter(|(k, list)| Some(*k) != except && !list.is_empty())
                .min_by_key(|(_, list)| list.first().map(|c| c.idle_since))?;
            Some(list.remove(0))
        });
        match victim {
            Some(conn) => {
                if give {
                    conn.give_place_on_close();
                }
                self.close(conn, CloseReason::Reclaimed);
                true
            }
            None => false,
        }
    }

    /// Closes idle connections past the idle timeout, and gives places back to the other
    /// door when it asks; runs until `stopping`.
    pub async fn maintain(self, stopping: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = stopping.cancelled() => break,
                _ = self.inner.share.reclaim_requested() => {
                    self.close_longest_idle(None, true);
                }
                _ = tick.tick() => {
                    self.close_expired();
                    ticks += 1;
                    // PgBouncer's stats_period: the console's averages are of the last minute.
                    if ticks % STATS_PERIOD_SECONDS == 0 {
                        self.inner.roster.end_period(STATS_PERIOD_SECONDS as f64);
                    }
                }
            }
        }
    }

    /// Closes idle connections past the idle timeout, and those the server ended while they
    /// sat idle (a restart): they would hold places in the budget and show as idle.
    fn close_expired(&self) {
        let timeout = self.inner.settings.idle_timeout.get();
        let warm = self.inner.warm.lock().map(|w| w.clone()).unwrap_or(None);
        let mut ended = Vec::new();
        if let Ok(mut idle) = self.inner.idle.lock() {
            for (key, list) in idle.iter_mut() {
                // The connections kept warm stay past the idle timeout (the oldest first
                // in the list are the ones beyond them).
                let mut may_expire = match &warm {
                    Some((warm, min)) if warm == key => list.len().saturating_sub(*min),
                    _ => usize::MAX,
                };
                for mut conn in std::mem::take(list) {
                    if may_expire > 0 && conn.idle_since.elapsed() >= timeout {
                        may_expire -= 1;
                        ended.push((conn, CloseReason::Idle));
                    } else if conn.closed_while_idle() {
                        ended.push((conn, CloseReason::Broken));
                    } else {
                        list.push(conn);
                    }
                }
            }
        }
        for (conn, reason) in ended {
            self.close(conn, reason);
        }
    }

    /// Stops giving connections out and closes the idle ones; connections in use close when
    /// they come back.
    pub fn shut(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let all: Vec<Pooled> = match self.inner.idle.lock() {
            Ok(mut idle) => idle.drain().flat_map(|(_, list)| list).collect(),
            Err(_) => Vec::new(),
        };
        for conn in all {
            self.close(conn, CloseReason::Shutdown);
        }
        if let Ok(mut waiters) = self.inner.waiters.lock() {
            waiters.clear();
        }
    }
}
