//! One client's session after login: the relay in transaction mode.
//!
//! The client is linked to a server connection at the first message of a transaction and
//! unlinked when ReadyForQuery says idle, everything sent has been answered, no COPY is open
//! and nothing pins it. Bytes are relayed as they arrive; only what pooling needs is decoded
//! (see [`super::frame`]).
//!
//! Every message sent to the server pushes what its answer looks like onto `expect`, in order.
//! That queue is what lets the door answer some messages itself (a Parse the server already
//! has, a Close of a client's name) in exactly the place the server would have, swallow the
//! answers to messages it injected (a Parse before a Bind on a connection that lacks the
//! statement, the settings replayed at link), and know when the transaction is over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::cancel::Slot;
use super::frame::{self, FrameError};
use super::pool::{AcquireError, PoolKey};
use super::scram::Credential;
use super::server::{Pooled, ServerConn, Settings, Stream};
use super::statements::{Bounded, Statement};
use super::{Door, KeepUnnamed, Phase, SessionStateMode};
use crate::core::pool::CloseReason;
use crate::core::sql::{PinReason, SessionEffect, session_effect};
use crate::pgwire::roster::DbStats;

mod bounds;
mod client;
mod handover;
mod kept;
mod listing;
mod own;
mod prepared;
mod recent;
mod replies;
mod state;
mod undo;

pub use handover::{Connection, LoggedIn};
use own::Own;
use prepared::Deallocation;
pub use state::Wanted;
use state::{Noted, Unnamed};
pub use state::{literal, replay};
use undo::Undo;

/// How long the statements a client sent before its Terminate may take to finish.
const GOODBYE_BOUND: Duration = Duration::from_secs(60);

/// What the answer to one message sent to the server looks like.
#[derive(Debug)]
enum Expect {
    /// Relayed (or, for what the door injected, swallowed) until the message that ends it.
    Answer {
        end: End,
        swallow: bool,
        /// The global statement a Parse prepares: forgotten on that server if it fails.
        parse: Option<u64>,
        /// The global statement a Bind uses: retired if its plan went stale.
        bind: Option<u64>,
        /// How many COPYs the client had ended when it was sent: a CopyInResponse to it
        /// opens a COPY only if the client hasn't ended it since (asyncpg sends the data and
        /// CopyDone right behind the Query, before the server's answer).
        copy_ends: u32,
    },
    /// A reply of the door's own, sent once everything before it has been answered.
    Reply(Bytes),
    /// A query of the door's own, swallowed up to its ReadyForQuery (see [`own`]).
    Own(Own),
    /// How to undo what the client's message before it did, should the server skip it
    /// (see [`undo`]). Never at the head of the queue: dropped once it gets there.
    Undo(Box<undo::Undo>),
}

impl Expect {
    /// Whether it is answered up to a ReadyForQuery: the client's Sync or Query, relayed.
    fn ends_at_ready(&self) -> bool {
        matches!(
            self,
            Expect::Answer {
                end: End::Ready,
                ..
            }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ParseComplete,
    BindComplete,
    CloseComplete,
    Description,
    Execution,
    Ready,
}

impl End {
    fn by(self, tag: u8) -> bool {
        match self {
            End::ParseComplete => tag == b'1',
            End::BindComplete => tag == b'2',
            End::CloseComplete => tag == b'3',
            End::Description => tag == b'T' || tag == b'n',
            End::Execution => matches!(tag, b'C' | b'I' | b's'),
            End::Ready => tag == b'Z',
        }
    }
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    /// The client was silent for PGWAY_TX_IDLE_TIMEOUT while its server connection waited
    /// on it.
    IdleInTransaction,
    /// The client was idle for PGWAY_PG_CLIENT_IDLE_TIMEOUT.
    ClientIdle,
    /// The client has been linked for PGWAY_PG_TRANSACTION_TIMEOUT.
    TransactionTimeout,
    Stop,
}

/// The longest the cancel of what a departed client left running may take.
const CANCEL_BOUND: Duration = Duration::from_secs(5);

/// Messages at least this large (rows, CopyData) are relayed in pieces as they arrive.
const LARGE_MESSAGE: usize = 256 * 1024;
/// How much a buffer reads at a time while passing a large message.
const PASS_CHUNK: usize = 64 * 1024;
/// A buffer idle with more capacity than this is given back (replaced by a small one).
const KEEP_CAPACITY: usize = 1 << 20;

/// The whole length of the message at the head of `buf` when it is of type `tag` and at
/// least [`LARGE_MESSAGE`] long.
fn large_message(buf: &[u8], tag: u8) -> Option<usize> {
    let header = buf.get(..5)?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let total = usize::try_from(len).ok()? + 1;
    (header[0] == tag && total >= LARGE_MESSAGE).then_some(total)
}

/// Gives back a buffer's memory after a large message: the capacity is kept otherwise for
/// the life of the session (or of the server connection).
fn trim(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::with_capacity(8192);
    }
}

/// Sleeps for `duration` from when it is first polled.
async fn sleep_for(duration: Duration) {
    tokio::time::sleep(duration).await
}

/// Sleeps until `deadline`, or forever without one (the caller's `if` keeps that unpolled).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The client said goodbye or went away.
    Client,
    /// The door ended it, having told the client why.
    Door(&'static str),
}

/// One logged-in client.
pub struct Session {
    door: Arc<Door>,
    client: Stream,
    cbuf: BytesMut,
    peer: std::net::SocketAddr,
    /// Its entry in the door's roster, and its database's figures.
    listed: crate::pgwire::roster::ClientGuard,
    stats: Arc<crate::pgwire::roster::DbStats>,
    key: Arc<PoolKey>,
    credential: Credential,
    /// The settings this client's session has beyond the server's defaults: its startup
    /// values, then whatever it SET, as read back from the server.
    wanted: Wanted,
    /// Its startup values: what `RESET` returns to.
    startup: BTreeMap<String, String>,
    /// The parameters it has been told (ParameterStatus), as PostgreSQL tells them: just
    /// before ReadyForQuery, those that changed.
    told: Vec<(String, String)>,
    /// Startup values being put back: until that is answered, the client's view of them is
    /// the startup value, whatever the server reported in between.
    restoring: Vec<String>,
    /// The server connection and its count of ParameterStatus when the client was last told.
    told_digest: u64,
    /// The custom settings (`app.tenant_id`) it has named: read back by name, since the
    /// server can't list them.
    custom: std::collections::BTreeSet<String>,
    /// What the transaction in progress did to the session.
    noted: Noted,
    /// The client's unnamed statement, and whether the linked server has it.
    unnamed: Option<Unnamed>,
    unnamed_here: bool,
    /// The texts it parsed lately as its unnamed statement, read.
    recent: recent::Recent,
    /// The client's statement names → the global statements.
    names: Bounded<Bytes>,
    /// The client's statements (by name, `""` for the unnamed one) and portals that are a
    /// `DEALLOCATE` of its own names, sent by the extended protocol: answered by the door
    /// like [`Session::deallocate`] answers a simple Query (psycopg sends its cache's
    /// DEALLOCATEs this way in pipeline mode).
    // foldhash, not SipHash: every Parse and Bind looks names up here (measured).
    door_statements: HashMap<Bytes, Deallocation, foldhash::fast::RandomState>,
    door_portals: HashMap<Bytes, Deallocation, foldhash::fast::RandomState>,
    server: Option<Pooled>,
    expect: VecDeque<Expect>,
    /// The server is skipping messages up to the next Sync after an error.
    skipping: bool,
    /// The last ReadyForQuery status (`I`, `T`, `E`).
    status: u8,
    /// Extended-protocol messages went to the server since the last Sync: the server is in
    /// the middle of a pipeline (perhaps skipping to the Sync after an error), whatever the
    /// last ReadyForQuery said, so the connection can't be given to anyone else yet.
    unsynced: bool,
    /// The client's last extended-protocol message was a Flush: it waits for answers.
    flushed: bool,
    /// When a linked client's transaction must be over (PGWAY_PG_TRANSACTION_TIMEOUT).
    tx_deadline: Option<tokio::time::Instant>,
    copy_in: bool,
    /// CopyDone and CopyFail messages the client has sent.
    copy_ends: u32,
    pinned: Option<PinReason>,
    /// The link failed: the client's messages are dropped up to its next Sync.
    refusing: bool,
    /// A Bind or Execute (or a Query) went to the server since the last Sync: something may
    /// have run in the implicit transaction.
    batch_ran: bool,
    /// The client's messages kept to be run again if a kept statement's plan went stale
    /// (see [`kept`]), and whether they are being run again now.
    retry: Option<kept::Retry>,
    retry_msgs: BytesMut,
    retrying: bool,
    cancel: Arc<Slot>,
    /// Rows of the door's own settings query.
    captured: BTreeMap<String, String>,
    /// The row of the door's own check.
    checked: Option<Vec<Option<String>>>,
    /// How many of the door's statements the linked server had when the check was sent.
    prepared_at_check: usize,
    /// The error of the door's own query being answered.
    own_error: Option<String>,
    /// The door's own statements to send once the server has answered (queued while reading).
    pending: BytesMut,
    /// The session can't go on (its settings could not be restored, or it holds what can't
    /// be pinned): the client is told why and the session is discarded.
    ending: Option<String>,
    /// The client said goodbye: what it sent before runs to the end, as on a connection of
    /// its own.
    terminated: bool,
    /// Bytes of a large server message (a row, CopyData) still to pass to the client as they
    /// arrive: relayed in pieces, never held whole.
    to_client_passing: usize,
    /// Bytes of a large CopyData still to pass from the client to the server.
    to_server_passing: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.key.user)
            .field("linked", &self.server.as_ref().map(|s| s.id))
            .field("status", &char::from(self.status))
            .finish_non_exhaustive()
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        door: Arc<Door>,
        connection: Connection,
        key: Arc<PoolKey>,
        credential: Credential,
        startup: LoggedIn,
        cancel: Arc<Slot>,
    ) -> Session {
        let wanted = startup.wanted;
        let told_digest = super::server::digest(&startup.reported);
        let client_statements = door.settings.client_statements;
        let stats = door.pools.roster().stats(&key.database);
        Session {
            door,
            client: connection.stream,
            cbuf: connection.buf,
            peer: connection.peer,
            stats,
            listed: connection.listed,
            key,
            credential,
            custom: state::custom_names(wanted.values()),
            startup: wanted.values().clone(),
            told: startup.reported,
            restoring: Vec::new(),
            told_digest,
            wanted,
            noted: Noted::default(),
            unnamed: None,
            unnamed_here: false,
            recent: recent::Recent::default(),
            names: Bounded::new(client_statements, "client"),
            door_statements: HashMap::default(),
            door_portals: HashMap::default(),
            server: None,
            expect: VecDeque::new(),
            skipping: false,
            status: b'I',
            unsynced: false,
            flushed: false,
            tx_deadline: None,
            copy_in: false,
            copy_ends: 0,
            pinned: None,
            refusing: false,
            batch_ran: false,
            retry: None,
            retry_msgs: BytesMut::new(),
            retrying: false,
            cancel,
            captured: BTreeMap::new(),
            checked: None,
            own_error: None,
            prepared_at_check: 0,
            pending: BytesMut::new(),
            ending: None,
            terminated: false,
            to_client_passing: 0,
            to_server_passing: 0,
        }
    }

    /// Relays until the client leaves or the door ends the session.
    pub async fn run(mut self) -> Ended {
        let ended = self.relay().await;
        self.finish().await;
        ended
    }

    async fn relay(&mut self) -> Ended {
        let mut to_server = BytesMut::with_capacity(8192);
        let mut to_client = BytesMut::with_capacity(8192);
        loop {
            let only_ours = to_client.is_empty();
            // Whole client messages first: they may need a server.
            if let Err(ended) = self.client_messages(&mut to_server, &mut to_client).await {
                return ended;
            }
            if !self.pending.is_empty() {
                to_server.extend_from_slice(&self.pending.split());
            }
            // The door's own replies to what the client just sent (a kept statement's
            // ParseComplete) wait to go out with the server's answers, as PostgreSQL holds
            // its replies until a Sync or Flush: one write to the client a transaction, not
            // two (each a wake-up of the client before its answer is there). Only when the
            // server has been asked to answer (the client's Sync, Flush or Query went out),
            // and never with anything of the server's before them, which the client may be
            // waiting for.
            let asked = only_ours
                && !to_server.is_empty()
                && !self.expect.is_empty()
                && (!self.unsynced || self.flushed);
            if !to_server.is_empty() {
                let sent = match self.server.as_mut() {
                    Some(server) => server.stream.write_all(&to_server).await,
                    None => Ok(()),
                };
                to_server.clear();
                if sent.is_err() {
                    return self.server_lost(&mut to_client).await;
                }
            }
            if !to_client.is_empty() && !asked {
                if let Err(ended) = self.write_client(&to_client).await {
                    return ended;
                }
                to_client.clear();
            }
            self.maybe_unlink(&mut to_server);
            if !to_server.is_empty() {
                continue;
            }
            for buf in [&mut to_server, &mut to_client, &mut self.cbuf] {
                trim(buf);
            }
            if let Some(server) = self.server.as_mut() {
                trim(&mut server.buf);
            }
            let event = self.next_event().await;
            match event {
                Event::Client(Ok(0) | Err(_)) => return Ended::Client,
                Event::Client(Ok(n)) => DbStats::add(&self.stats.received, n as u64),
                Event::Server(Ok(0) | Err(_)) => return self.server_lost(&mut to_client).await,
                Event::Server(Ok(_)) => {
                    if let Err(ended) = self.server_messages(&mut to_client) {
                        return ended;
                    }
                    if let Some(why) = self.ending.clone() {
                        let _ = self.client.write_all(&to_client).await;
                        return self.terminate("0A000", &why).await;
                    }
                }
                bound => return self.bound_reached(bound).await,
            }
        }
    }

    /// Waits for the next bytes from either side, within the bounds on what the client may
    /// hold (each `sleep` starts afresh: they measure silence).
    async fn next_event(&mut self) -> Event {
        loop {
            if let Some(event) = self.next_event_once().await {
                return event;
            }
            if self.listed.entry.killed() {
                // The console's KILL_CLIENT / KILL: ended now, whatever it was doing.
                return Event::Stop;
            }
        }
    }

    /// One wait; `None` when the client's bell rang (the door's phase is read again).
    async fn next_event_once(&mut self) -> Option<Event> {
        let waits_on_client = self.server.is_some() && self.server_waits_on_client();
        // A pinned client holds its connection between transactions: at shutdown it is
        // idle, and told so, like an unlinked one.
        let idle_and_pinned =
            self.server.is_some() && self.expect.is_empty() && self.status == b'I' && !self.copy_in;
        let phase = self.door.phase();
        let stop = match self.server {
            None => phase >= Phase::Stopping,
            Some(_) => phase == Phase::GraceOver || (idle_and_pinned && phase >= Phase::Stopping),
        };
        if stop {
            return Some(Event::Stop);
        }
        let settings = &self.door.settings;
        let (tx_idle, client_idle) = (
            settings.idle_in_transaction_timeout.get(),
            settings.client_idle_timeout.get(),
        );
        let client_idle_on = !client_idle.is_zero();
        let tx_idle_on = waits_on_client && !tx_idle.is_zero();
        let tx_deadline = self.tx_deadline.filter(|_| self.pinned.is_none());
        let bell = &self.cancel.bell;
        // The sleeps are made only when their branch is on (`sleep_for` reads the clock when
        // first polled, and `select!` builds every branch's future, on or off).
        Some(match self.server.as_mut() {
            None => tokio::select! {
                read = self.client.read_buf(&mut self.cbuf) => Event::Client(read),
                _ = sleep_for(client_idle), if client_idle_on => Event::ClientIdle,
                () = bell.rung() => return None,
            },
            Some(server) => tokio::select! {
                read = self.client.read_buf(&mut self.cbuf) => Event::Client(read),
                read = server.stream.read_buf(&mut server.buf) => Event::Server(read),
                _ = sleep_for(tx_idle), if tx_idle_on => Event::IdleInTransaction,
                _ = sleep_for(client_idle), if idle_and_pinned && client_idle_on => Event::ClientIdle,
                _ = sleep_until(tx_deadline), if tx_deadline.is_some() => Event::TransactionTimeout,
                () = bell.rung() => return None,
            },
        })
    }

    /// Writes to the client. A client linked to a server connection that stops reading for
    /// PGWAY_PG_CLIENT_WRITE_TIMEOUT is ended: it would hold the connection (and the
    /// backend's locks) with no end. It can't be told: it isn't reading.
    async fn write_client(&mut self, out: &[u8]) -> Result<(), Ended> {
        DbStats::add(&self.stats.sent, out.len() as u64);
        if self.server.is_none() {
            return self.client.write_all(out).await.map_err(|_| Ended::Client);
        }
        let mut write = std::pin::pin!(self.client.write_all(out));
        // Nearly every write is taken at once: then no clock is read and no timer made.
        if let Some(written) = futures::FutureExt::now_or_never(&mut write) {
            return written.map_err(|_| Ended::Client);
        }
        let limit = self.door.settings.client_write_timeout;
        if limit.is_zero() {
            return write.await.map_err(|_| Ended::Client);
        }
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ended::Client),
            Err(_) => {
                self.door.timeouts.count("client_not_reading");
                Err(Ended::Door("client not reading"))
            }
        }
    }

    /// Handles every whole message the client has sent so far.
    async fn client_messages(
        &mut self,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        // Held here while its messages are read in place (as the server's are, see
        // `server_messages`); nothing below reads from the client.
        let mut cbuf = std::mem::take(&mut self.cbuf);
        let handled = self
            .each_client_message(&mut cbuf, to_server, to_client)
            .await;
        self.cbuf = cbuf;
        handled
    }

    async fn each_client_message(
        &mut self,
        cbuf: &mut BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        loop {
            if self.pass_to_server(cbuf, to_server) {
                return Ok(());
            }
            let total = match frame::message_len(cbuf, self.door.settings.max_message) {
                Ok(Some(total)) => total,
                Ok(None) => return Ok(()),
                Err(error) => return Err(self.violation(error).await),
            };
            let msg = &cbuf[..total];
            self.count_message(msg[0]);
            // A linked client's message needs no await before it is relayed, so no future is
            // made, polled and dropped for it: five a transaction in the extended protocol,
            // and 9,582 instructions a transaction down to 9,258 (callgrind, 10 clients).
            let relay = if self.server.is_some() && !self.refusing && msg[0] != b'X' {
                Ok(true)
            } else {
                self.ready_to_relay(msg, to_server, to_client).await
            };
            let handled = match relay {
                Ok(true) => match self.client_message(msg, to_server, to_client) {
                    Ok(()) => Ok(()),
                    Err(error) => Err(self.violation(error).await),
                },
                Ok(false) => Ok(()),
                Err(ended) => Err(ended),
            };
            cbuf.advance(total);
            handled?;
        }
    }

    /// What comes before a client's message can be relayed: its goodbye, the rest of a
    /// pipeline refused, an answer the door gives itself between transactions, or a link.
    /// Whether the message is to be relayed now.
    async fn ready_to_relay(
        &mut self,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<bool, Ended> {
        if msg[0] == b'X' {
            return Err(self.goodbye(to_server).await);
        }
        if self.refusing {
            if matches!(msg[0], b'S' | b'Q') {
                self.refusing = false;
                frame::write_ready(to_client, b'I');
            }
            return Ok(false);
        }
        if self.server.is_none() && self.answer_unlinked(msg, to_client) {
            return Ok(false);
        }
        if self.server.is_none() {
            self.link(to_server, to_client, msg[0]).await?;
        }
        Ok(self.server.is_some())
    }

    /// Gets a server connection for the transaction the client is starting, and brings its
    /// settings to what the client's session has.
    async fn link(
        &mut self,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
        first: u8,
    ) -> Result<(), Ended> {
        if self.door.phase() >= Phase::Stopping {
            return Err(self.shut_out().await);
        }
        let got = self.acquire_listed().await?;
        let (mut server, began, linked_at) = match got {
            Ok(linked) => linked,
            Err(error) => {
                self.listed_unlinked(None);
                let (code, message) = match &error {
                    AcquireError::Overloaded { waiting } => (
                        "53300",
                        format!(
                            "too many clients waiting for a server connection ({waiting} already waiting, PGWAY_MAX_WAITING)"
                        ),
                    ),
                    AcquireError::Timeout { last } => (
                        "53300",
                        match last {
                            Some(error) => format!(
                                "no server connection within PGWAY_ACQUIRE_TIMEOUT: {}",
                                error.message
                            ),
                            None => "no server connection became free within PGWAY_ACQUIRE_TIMEOUT"
                                .to_owned(),
                        },
                    ),
                    AcquireError::Login(error) => {
                        if let Some(response) = &error.response {
                            to_client.extend_from_slice(response);
                            return Err(self
                                .flush_and_end(to_client, "server refused login")
                                .await);
                        }
                        ("08006", error.message.clone())
                    }
                    AcquireError::Closing => {
                        return Err(self.shut_out().await);
                    }
                };
                warn!(
                    peer = %self.peer,
                    user = %self.key.user,
                    database = %self.key.database,
                    code,
                    %message,
                    door = "postgres",
                    "transaction refused: no server connection"
                );
                frame::write_error(to_client, "ERROR", code, &message, None);
                // Whatever the client sent up to its Sync is dropped; the Sync (or a simple
                // Query) gets the ReadyForQuery.
                if first == b'Q' {
                    frame::write_ready(to_client, b'I');
                } else if first != b'S' {
                    self.refusing = true;
                } else {
                    frame::write_ready(to_client, b'I');
                }
                return Ok(());
            }
        };
        self.door.clients.linked(1);
        self.listed_linked(&server, began, linked_at);
        let limit = self.door.settings.transaction_timeout.get();
        self.tx_deadline = (!limit.is_zero()).then(|| tokio::time::Instant::now() + limit);
        self.cancel.link(server.pid, server.secret);
        self.replay_settings(&mut server, to_server);
        self.skipping = false;
        self.unsynced = false;
        self.unnamed_here = false;
        self.server = Some(server);
        Ok(())
    }

    /// Gives the server connection back once the transaction is over.
    fn maybe_unlink(&mut self, to_server: &mut BytesMut) {
        if !(self.expect.is_empty()
            && self.status == b'I'
            && !self.unsynced
            && !self.copy_in
            && self.server.is_some())
        {
            return;
        }
        // Read back what the session has now, so the next link carries it, and check what
        // the reading couldn't vouch for; the connection goes back once that is answered.
        if self.settle(to_server) || self.pinned.is_some() {
            return;
        }
        if let Some(server) = self.server.take() {
            // The settings are read back: the path the next Parse is keyed by is known.
            self.noted.path = false;
            self.door.clients.linked(-1);
            let now = std::time::Instant::now();
            self.listed_unlinked_at(Some(&server), crate::pgwire::roster::us_at(now));
            self.tx_deadline = None;
            // The cancel slot is cleared before the connection goes to anyone else; a cancel
            // being sent right now is waited for (see cancel.rs), on a task of its own that
            // takes the handles it needs.
            if self.cancel.try_unlink() {
                self.door.pools.release_at(&self.key, server, now);
            } else {
                let cancel = Arc::clone(&self.cancel);
                let pools = self.door.pools.clone();
                let key = Arc::clone(&self.key);
                tokio::spawn(async move {
                    cancel.unlink().await;
                    pools.release(&key, server);
                });
            }
        }
    }

    /// The server connection failed under the client: it can't know what was applied.
    async fn server_lost(&mut self, to_client: &mut BytesMut) -> Ended {
        if let Some(mut server) = self.server.take() {
            server.broken = true;
            self.door.clients.linked(-1);
            self.listed_unlinked(Some(&server));
            self.cancel.unlink().await;
            self.door.pools.close(server, CloseReason::Broken);
        }
        if self.to_client_passing > 0 {
            // In the middle of a message to the client: it can only be cut off.
            return Ended::Door("server connection lost");
        }
        frame::write_error(
            to_client,
            "FATAL",
            "08006",
            "the server connection was lost; whether the transaction in progress was applied is unknown",
            None,
        );
        self.flush_and_end(to_client, "server connection lost")
            .await
    }

    async fn violation(&mut self, error: FrameError) -> Ended {
        let mut out = BytesMut::new();
        frame::write_error(
            &mut out,
            "FATAL",
            "08P01",
            &format!("invalid frontend message: {error}"),
            None,
        );
        self.flush_and_end(&mut out, "protocol violation").await
    }

    async fn terminate(&mut self, code: &str, message: &str) -> Ended {
        let mut out = BytesMut::new();
        // In the middle of a message to the client, an error would read as its rest.
        if self.to_client_passing == 0 {
            frame::write_error(&mut out, "FATAL", code, message, None);
        }
        let _ = self.client.write_all(&out).await;
        let _ = self.client.shutdown().await;
        Ended::Door(match code {
            "25P03" => "idle in transaction",
            "25P04" => "transaction timeout",
            "57P05" => "client idle",
            _ => "shutdown",
        })
    }

    async fn flush_and_end(&mut self, out: &mut BytesMut, why: &'static str) -> Ended {
        let _ = self.client.write_all(out).await;
        let _ = self.client.shutdown().await;
        Ended::Door(why)
    }

    /// The client's Terminate: what it sent before runs to its end and is answered, as on a
    /// connection of its own (PostgreSQL reads the Terminate only after it), within a bound.
    async fn goodbye(&mut self, to_server: &mut BytesMut) -> Ended {
        self.terminated = true;
        let Some(server) = self.server.as_mut() else {
            return Ended::Client;
        };
        if server.stream.write_all(to_server).await.is_err() {
            server.broken = true;
            return Ended::Client;
        }
        to_server.clear();
        let grace_over = self.door.grace_over.clone();
        let drain = async {
            let mut sink = BytesMut::new();
            while !self.expect.is_empty() {
                let Some(server) = self.server.as_mut() else {
                    return;
                };
                if !self.pending.is_empty() {
                    let pending = self.pending.split();
                    if server.stream.write_all(&pending).await.is_err() {
                        server.broken = true;
                        return;
                    }
                }
                match server.stream.read_buf(&mut server.buf).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        server.broken = true;
                        return;
                    }
                }
                if self.server_messages(&mut sink).is_err() {
                    return;
                }
                // The client may still read its answers; it is gone if it doesn't.
                if !sink.is_empty() {
                    let _ = self.client.write_all(&sink).await;
                    sink.clear();
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(GOODBYE_BOUND, drain) => {}
            _ = grace_over.cancelled() => {}
        }
        Ended::Client
    }

    /// After the client is gone or was ended: what it left on its server connection is
    /// cancelled, drained and rolled back; the connection is pooled again only if it is then
    /// confirmed idle, and a pinned one only after DISCARD ALL.
    async fn finish(&mut self) {
        let was_pinned = self.pinned.take().is_some();
        if was_pinned {
            self.door.clients.unpin();
        }
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.door.clients.linked(-1);
        self.listed_unlinked(Some(&server));
        let outstanding = !self.expect.is_empty() || self.copy_in || self.unsynced;
        if self.to_client_passing > 0 || self.to_server_passing > 0 {
            // Cut off in the middle of a message: the connection can't be read or written
            // in step any more.
            server.broken = true;
        }
        if self.noted.settings {
            // Changed, never read back: the next link starts from RESET ALL.
            server.reset_needed = true;
        }
        // What the session may hold that was never checked goes with DISCARD ALL.
        let unchecked = self.noted.check || self.noted.unknown_settings || self.ending.is_some();
        let needs_reset =
            matches!(self.status, b'T' | b'E') || outstanding || was_pinned || unchecked;
        if outstanding && !server.broken {
            // Bounded: during an outage the cancel's own connection may hang, and this task
            // still holds the server connection's place.
            let target = self.door.pools.target().clone();
            let cancel = super::server::cancel(&target, server.pid, server.secret);
            let _ = tokio::time::timeout(CANCEL_BOUND, cancel).await;
        }
        self.cancel.unlink().await;
        if server.broken {
            self.door.pools.close(server, CloseReason::Broken);
            return;
        }
        if !needs_reset {
            self.door.pools.release(&self.key, server);
            return;
        }
        // Every ReadyForQuery still owed, then those of the reset's Sync and two queries.
        let owed = self
            .expect
            .iter()
            .filter(|e| e.ends_at_ready() || matches!(e, Expect::Own(_)))
            .count()
            + 3;
        let resetting = reset(&mut server, owed, self.copy_in, self.unsynced);
        match tokio::time::timeout(Duration::from_secs(5), resetting).await {
            Ok(Some(())) => {
                server.applied = Settings::default();
                server.reset_needed = false;
                server.prepared.clear();
                self.door.pools.release(&self.key, server);
            }
            _ => self.door.pools.close(server, CloseReason::ResetFailed),
        }
    }
}

/// Puts a server connection its client left back to a fresh session: ends a COPY and an
/// unfinished pipeline, reads every ReadyForQuery still owed (`owed`, with those of the reset
/// itself), rolls back and discards everything. `Some` when it ended idle.
async fn reset(server: &mut ServerConn, owed: usize, copy_in: bool, unsynced: bool) -> Option<()> {
    let mut out = BytesMut::new();
    if copy_in {
        let reason = b"client disconnected\0";
        out.put_u8(b'f');
        out.put_i32((4 + reason.len()) as i32);
        out.put_slice(reason);
    }
    if unsynced {
        // A Sync commits the implicit transaction of a pipeline the client never
        // finished; PostgreSQL rolls it back when its client goes. A statement that
        // can't parse fails that transaction first, whatever names the client used.
        let sql = b"pgway: the client left before its Sync";
        frame::write_parse(&mut out, b"", sql, &0i16.to_be_bytes());
    }
    out.extend_from_slice(b"S\0\0\0\x04");
    frame::write_query(&mut out, "ROLLBACK");
    frame::write_query(&mut out, "DISCARD ALL");
    server.stream.write_all(&out).await.ok()?;
    let mut seen = 0;
    loop {
        let msg = super::server::read_message(&mut server.stream, &mut server.buf)
            .await
            .ok()?;
        if msg[0] == b'S' {
            server.note_parameter(&msg);
        }
        if msg[0] == b'Z' {
            seen += 1;
            if seen == owed {
                return (msg.get(5) == Some(&b'I')).then_some(());
            }
        }
    }
}
