//! Who is connected to the door right now, and what each database has carried: the figures
//! the console's `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW POOLS` and `SHOW STATS` read.
//!
//! A client or server connection registers once (a lock taken at login and at connect, not
//! per transaction) and then updates its own entry with relaxed atomics at each link and
//! unlink: what a reader sees is a consistent enough picture for an operator, never a lock on
//! the hot path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::cancel::Slot;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    us_at(Instant::now())
}

/// Microseconds since the Unix epoch at `at`: the wall clock is read once, and the times of
/// links and unlinks come from the monotonic clock the door reads for its pool anyway (one
/// reading of the clock a transaction instead of three).
pub fn us_at(at: Instant) -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (base, base_us) = *BASE.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH);
        (Instant::now(), wall.map_or(0, |d| d.as_micros() as u64))
    });
    base_us + at.saturating_duration_since(base).as_micros() as u64
}

/// A client's state, as `SHOW CLIENTS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Logged in, holding no server connection.
    Idle = 0,
    /// Waiting for a server connection.
    Waiting = 1,
    /// Linked to a server connection.
    Active = 2,
}

/// One logged-in client.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub application_name: String,
    pub tls: bool,
    pub connected_at: u64,
    state: AtomicU8,
    /// When it last started waiting or was linked (µs since the epoch).
    since: AtomicU64,
    /// The server connection it is linked to (0: none).
    server: AtomicU64,
    /// Why it is pinned to its server connection, if it is (rarely written: at pin and
    /// unpin).
    pinned: Mutex<Option<&'static str>>,
    /// Set by the console's `KILL_CLIENT` / `KILL`: the session ends at its next wait.
    killed: AtomicBool,
    /// Its session's bell, rung to wake it when it is killed (none for console clients).
    slot: Option<Arc<Slot>>,
}

impl ClientEntry {
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    /// Now waiting for a server connection.
    pub fn waiting(&self, now: u64) {
        self.since.store(now, Ordering::Relaxed);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
    }

    /// Linked to server connection `server`.
    pub fn linked(&self, server: u64, now: u64) {
        self.server.store(server, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
    }

    /// Holding no server connection.
    pub fn unlinked(&self) {
        self.server.store(0, Ordering::Relaxed);
        self.state.store(ClientState::Idle as u8, Ordering::Relaxed);
    }

    pub fn set_pinned(&self, reason: Option<&'static str>) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// Why it is pinned, if it is.
    pub fn pinned(&self) -> Option<&'static str> {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn since(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }

    /// Ends its session at its next wait (at once when it is waiting).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        if let Some(slot) = &self.slot {
            slot.bell.ring();
        }
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    pub fn server(&self) -> u64 {
        self.server.load(Ordering::Relaxed)
    }
}

/// One open server connection of the door.
#[derive(Debug)]
pub struct ServerEntry {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: String,
    pub port: u16,
    pub pid: i32,
    pub connected_at: u64,
    /// The client linked to it (0: idle in its pool).
    client: AtomicU64,
    since: AtomicU64,
}

impl ServerEntry {
    pub fn client(&self) -> u64 {
        self.client.load(Ordering::Relaxed)
    }

    pub fn since(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }

    pub fn linked(&self, client: u64, now: u64) {
        self.client.store(client, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
    }

    pub fn unlinked(&self, now: u64) {
        self.client.store(0, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
    }
}

/// What the door carried for one database since start, PgBouncer's `SHOW STATS` figures.
#[derive(Debug, Default)]
pub struct DbStats {
    pub server_assignments: AtomicU64,
    pub xacts: AtomicU64,
    pub queries: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Microseconds clients held a server connection.
    pub xact_us: AtomicU64,
    /// Microseconds clients waited for one.
    pub wait_us: AtomicU64,
    pub client_parses: AtomicU64,
    pub server_parses: AtomicU64,
    pub binds: AtomicU64,
    pub logins: AtomicU64,
}

/// A copy of [`DbStats`] at one moment, in `SHOW STATS`' column order.
pub type Totals = [u64; 12];

impl DbStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            read(&self.server_assignments),
            read(&self.xacts),
            read(&self.queries),
            read(&self.received),
            read(&self.sent),
            read(&self.xact_us),
            read(&self.xact_us),
            read(&self.wait_us),
            read(&self.client_parses),
            read(&self.server_parses),
            read(&self.binds),
            read(&self.logins),
        ]
    }
}

/// The door's live lists and per-database figures.
#[derive(Debug, Default)]
pub struct Roster {
    clients: List<ClientEntry>,
    servers: List<ServerEntry>,
    databases: Mutex<HashMap<String, Arc<DbStats>>>,
    next_client: AtomicU64,
    /// The figures of the last full stats period, for `SHOW STATS_AVERAGES`: (seconds,
    /// per-database totals at its start and end).
    pub period: Mutex<Option<Period>>,
}

/// Totals at the start and end of the last stats period.
#[derive(Debug, Clone)]
pub struct Period {
    pub seconds: f64,
    pub start: HashMap<String, Totals>,
    pub end: HashMap<String, Totals>,
}

/// A new client's description.
#[derive(Debug)]
pub struct NewClient {
    pub user: String,
    pub database: String,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub application_name: String,
    pub tls: bool,
    pub slot: Option<Arc<Slot>>,
}

/// A new server connection's description.
#[derive(Debug)]
pub struct NewServer {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: String,
    pub port: u16,
    pub pid: i32,
}

impl Roster {
    /// The figures of `database`, made on its first use.
    pub fn stats(&self, database: &str) -> Arc<DbStats> {
        let mut databases = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(databases.entry(database.to_owned()).or_default())
    }

    pub fn all_stats(&self) -> Vec<(String, Totals)> {
        let databases = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = databases
            .iter()
            .map(|(name, stats)| (name.clone(), stats.totals()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Registers a logged-in client; it is listed until the guard drops.
    pub fn client(self: &Arc<Self>, new: NewClient) -> ClientGuard {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_us();
        let entry = Arc::new(ClientEntry {
            id,
            user: new.user,
            database: new.database,
            peer: new.peer,
            local: new.local,
            application_name: new.application_name,
            tls: new.tls,
            connected_at: now,
            state: AtomicU8::new(ClientState::Idle as u8),
            since: AtomicU64::new(now),
            server: AtomicU64::new(0),
            pinned: Mutex::new(None),
            killed: AtomicBool::new(false),
            slot: new.slot,
        });
        self.list(|roster| &roster.clients, id, entry)
    }

    /// Registers an open server connection; it is listed until the guard drops.
    pub fn server(self: &Arc<Self>, new: NewServer) -> ServerGuard {
        let now = now_us();
        let entry = Arc::new(ServerEntry {
            id: new.id,
            user: new.user,
            database: new.database,
            addr: new.addr,
            port: new.port,
            pid: new.pid,
            connected_at: now,
            client: AtomicU64::new(0),
            since: AtomicU64::new(now),
        });
        self.list(|roster| &roster.servers, new.id, entry)
    }

    fn list<E>(
        self: &Arc<Self>,
        list: fn(&Roster) -> &List<E>,
        id: u64,
        entry: Arc<E>,
    ) -> Listed<E> {
        list(self)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&entry));
        Listed {
            roster: Arc::clone(self),
            list,
            id,
            entry,
        }
    }

    /// Every client, in login order.
    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = clients.values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Every server connection, in connect order.
    pub fn servers(&self) -> Vec<Arc<ServerEntry>> {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = servers.values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Closes the stats period that ended now, for the averages.
    pub fn end_period(&self, seconds: f64) {
        let end: HashMap<String, Totals> = self.all_stats().into_iter().collect();
        let mut period = self.period.lock().unwrap_or_else(|e| e.into_inner());
        let start = period.take().map(|p| p.end).unwrap_or_default();
        *period = Some(Period {
            seconds,
            start,
            end,
        });
    }
}

/// One of the roster's lists (clients, server connections), by id.
type List<E> = Mutex<HashMap<u64, Arc<E>>>;

/// Lists an entry in the roster while it lives.
#[derive(Debug)]
pub struct Listed<E> {
    roster: Arc<Roster>,
    list: fn(&Roster) -> &List<E>,
    id: u64,
    pub entry: Arc<E>,
}

impl<E> Drop for Listed<E> {
    fn drop(&mut self) {
        (self.list)(&self.roster)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Lists a client while it lives.
pub type ClientGuard = Listed<ClientEntry>;

/// Lists a server connection while it lives.
pub type ServerGuard = Listed<ServerEntry>;
