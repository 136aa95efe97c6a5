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
use tracing::{debug, info, warn};

use super::cancel::Slot;
use super::frame::{self, FrameError};
use super::pool::{AcquireError, PoolKey};
use super::scram::Credential;
use super::server::{ServerConn, Stream};
use super::statements::Statement;
use super::{Door, SessionStateMode};
use crate::core::pool::CloseReason;
use crate::core::sql::{PinReason, session_effect};

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
    },
    /// A reply of the door's own, sent once everything before it has been answered.
    Reply(Bytes),
    /// A query of the door's own, swallowed up to its ReadyForQuery; `read` collects the
    /// session's settings from its rows.
    Own { read: bool },
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
    IdleInTransaction,
    Stop,
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
    key: Arc<PoolKey>,
    credential: Credential,
    /// The settings this client's session has beyond the server's defaults: its startup
    /// values, then whatever it SET, as read back from the server.
    wanted: BTreeMap<String, String>,
    /// The client's statement names → the global statements.
    names: HashMap<Bytes, Arc<Statement>>,
    /// The client's statements (by name, `""` for the unnamed one) and portals that are a
    /// `DEALLOCATE` of its own names, sent by the extended protocol: answered by the door
    /// like [`Session::deallocate`] answers a simple Query (psycopg sends its cache's
    /// DEALLOCATEs this way in pipeline mode).
    door_statements: HashMap<Bytes, Deallocation>,
    door_portals: HashMap<Bytes, Deallocation>,
    server: Option<ServerConn>,
    expect: VecDeque<Expect>,
    /// The server is skipping messages up to the next Sync after an error.
    skipping: bool,
    /// The last ReadyForQuery status (`I`, `T`, `E`).
    status: u8,
    /// Extended-protocol messages went to the server since the last Sync: the server is in
    /// the middle of a pipeline (perhaps skipping to the Sync after an error), whatever the
    /// last ReadyForQuery said, so the connection can't be given to anyone else yet.
    unsynced: bool,
    copy_in: bool,
    /// A statement that may change settings ran since link: read them back before unlinking.
    settings_changed: bool,
    /// The unnamed statement may change settings: its Binds set `settings_changed` (a Parse
    /// only prepares; the change happens when the statement runs, possibly after the
    /// Parse's own Sync).
    unnamed_changes_settings: bool,
    pinned: Option<PinReason>,
    /// The link failed: the client's messages are dropped up to its next Sync.
    refusing: bool,
    cancel: Arc<Slot>,
    /// Rows of the door's own settings query.
    captured: BTreeMap<String, String>,
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
        client: Stream,
        cbuf: BytesMut,
        key: Arc<PoolKey>,
        credential: Credential,
        wanted: BTreeMap<String, String>,
        cancel: Arc<Slot>,
    ) -> Session {
        Session {
            door,
            client,
            cbuf,
            key,
            credential,
            wanted,
            names: HashMap::new(),
            door_statements: HashMap::new(),
            door_portals: HashMap::new(),
            server: None,
            expect: VecDeque::new(),
            skipping: false,
            status: b'I',
            unsynced: false,
            copy_in: false,
            settings_changed: false,
            unnamed_changes_settings: false,
            pinned: None,
            refusing: false,
            cancel,
            captured: BTreeMap::new(),
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
            // Whole client messages first: they may need a server.
            loop {
                let msg = match frame::split_message(&mut self.cbuf, self.door.settings.max_message)
                {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(error) => return self.violation(error).await,
                };
                if msg[0] == b'X' {
                    return Ended::Client;
                }
                if self.refusing {
                    if matches!(msg[0], b'S' | b'Q') {
                        self.refusing = false;
                        frame::write_ready(&mut to_client, b'I');
                    }
                    continue;
                }
                if self.server.is_none() && self.answer_unlinked(&msg, &mut to_client) {
                    continue;
                }
                if self.server.is_none() {
                    if let Err(ended) = self.link(&mut to_server, &mut to_client, msg[0]).await {
                        return ended;
                    }
                    if self.server.is_none() {
                        continue;
                    }
                }
                if let Err(ended) = self
                    .client_message(msg, &mut to_server, &mut to_client)
                    .await
                {
                    return ended;
                }
            }
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
            if !to_client.is_empty() {
                if self.client.write_all(&to_client).await.is_err() {
                    return Ended::Client;
                }
                to_client.clear();
            }
            self.maybe_unlink(&mut to_server);
            if !to_server.is_empty() {
                continue;
            }
            // Then wait for the next bytes from either side.
            let idle_in_tx = self.server.is_some()
                && self.expect.is_empty()
                && matches!(self.status, b'T' | b'E');
            // A pinned client holds its connection between transactions: at shutdown it is
            // idle, and told so, like an unlinked one.
            let idle_and_pinned = self.server.is_some()
                && self.expect.is_empty()
                && self.status == b'I'
                && !self.copy_in;
            let tx_idle = self.door.settings.tx_idle_timeout;
            let event = match self.server.as_mut() {
                None => tokio::select! {
                    read = self.client.read_buf(&mut self.cbuf) => Event::Client(read),
                    _ = self.door.stopping.cancelled() => Event::Stop,
                },
                Some(server) => tokio::select! {
                    read = self.client.read_buf(&mut self.cbuf) => Event::Client(read),
                    read = server.stream.read_buf(&mut server.buf) => Event::Server(read),
                    _ = tokio::time::sleep(tx_idle), if idle_in_tx => Event::IdleInTransaction,
                    _ = self.door.grace_over.cancelled() => Event::Stop,
                    _ = self.door.stopping.cancelled(), if idle_and_pinned => Event::Stop,
                },
            };
            match event {
                Event::Client(Ok(0) | Err(_)) => return Ended::Client,
                Event::Client(Ok(_)) => {}
                Event::Server(Ok(0) | Err(_)) => return self.server_lost(&mut to_client).await,
                Event::Server(Ok(_)) => {
                    if let Err(ended) = self.server_messages(&mut to_client) {
                        return ended;
                    }
                }
                Event::IdleInTransaction => {
                    return self
                        .terminate(
                            "25P03",
                            "terminating connection due to idle-in-transaction timeout",
                        )
                        .await;
                }
                Event::Stop => {
                    return self
                        .terminate(
                            "57P01",
                            "terminating connection due to administrator command",
                        )
                        .await;
                }
            }
        }
    }

    /// Answers what needs no server between transactions: a named Parse (remembered, and
    /// prepared on whichever server connection first binds it), a Sync or a Flush with
    /// nothing before them. Drivers that prepare synchronously before they execute (pgbench
    /// `-M prepared`, one thread for many clients) would otherwise hold the thread waiting
    /// for a server connection that its other clients hold. The cost: a Parse's error (a
    /// syntax error) is reported at its first Bind or Describe, not at the Parse.
    fn answer_unlinked(&mut self, msg: &[u8], to_client: &mut BytesMut) -> bool {
        match msg[0] {
            b'P' => {
                let Ok(parse) = frame::read_parse(msg) else {
                    return false;
                };
                if let Some(deallocation) = self.door_deallocation(parse.query) {
                    self.door_statements
                        .insert(Bytes::copy_from_slice(parse.name), deallocation);
                    to_client.extend_from_slice(frame::PARSE_COMPLETE);
                    return true;
                }
                if parse.name.is_empty() || session_effect(parse.query) != Default::default() {
                    return false;
                }
                self.door_statements.remove(parse.name);
                let statement = self.door.statements.statement(parse.query, parse.types);
                self.names
                    .insert(Bytes::copy_from_slice(parse.name), statement);
                to_client.extend_from_slice(frame::PARSE_COMPLETE);
                true
            }
            b'S' => {
                frame::write_ready(to_client, self.status);
                true
            }
            b'H' => true,
            _ => false,
        }
    }

    /// Gets a server connection for the transaction the client is starting, and brings its
    /// settings to what the client's session has.
    async fn link(
        &mut self,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
        first: u8,
    ) -> Result<(), Ended> {
        if self.door.stopping.is_cancelled() {
            return Err(self
                .terminate(
                    "57P01",
                    "terminating connection due to administrator command",
                )
                .await);
        }
        self.door.clients.waiting(1);
        let got = self.door.pools.acquire(&self.key, &self.credential).await;
        self.door.clients.waiting(-1);
        let mut server = match got {
            Ok(server) => server,
            Err(error) => {
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
                        return Err(self
                            .terminate(
                                "57P01",
                                "terminating connection due to administrator command",
                            )
                            .await);
                    }
                };
                debug!(code, %message, "no server connection");
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
        self.cancel.link(server.pid, server.secret).await;
        if server.applied != self.wanted {
            let sql = replay(&self.wanted);
            frame::write_query(to_server, &sql);
            self.expect.push_back(Expect::Own { read: false });
            server.applied = self.wanted.clone();
        }
        self.skipping = false;
        self.unsynced = false;
        self.server = Some(server);
        Ok(())
    }

    /// Gives the server connection back once the transaction is over.
    fn maybe_unlink(&mut self, to_server: &mut BytesMut) {
        if !(self.expect.is_empty()
            && self.status == b'I'
            && !self.unsynced
            && !self.copy_in
            && self.pinned.is_none()
            && self.server.is_some())
        {
            return;
        }
        if self.settings_changed {
            // Read back what the session has now, so the next link carries it.
            self.settings_changed = false;
            self.captured.clear();
            frame::write_query(
                to_server,
                "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'",
            );
            self.expect.push_back(Expect::Own { read: true });
            return;
        }
        if let Some(server) = self.server.take() {
            let cancel = Arc::clone(&self.cancel);
            let pools = self.door.pools.clone();
            let key = Arc::clone(&self.key);
            self.door.clients.linked(-1);
            // The cancel slot is cleared before the connection goes to anyone else; a cancel
            // being sent right now is waited for (see cancel.rs).
            if cancel.try_unlink() {
                pools.release(&key, server);
            } else {
                tokio::spawn(async move {
                    cancel.unlink().await;
                    pools.release(&key, server);
                });
            }
        }
    }

    async fn client_message(
        &mut self,
        msg: BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        let tag = msg[0];
        if matches!(tag, b'P' | b'B' | b'D' | b'C' | b'E' | b'H') {
            self.unsynced = true;
        }
        if self.skipping && tag != b'S' {
            // The server ignores it; so does the door.
            to_server.extend_from_slice(&msg);
            return Ok(());
        }
        match tag {
            b'Q' => {
                let sql = match frame::read_query(&msg) {
                    Ok(sql) => sql,
                    Err(error) => return Err(self.violation(error).await),
                };
                if let Some(reply) = self.deallocate(sql) {
                    self.reply(to_client, reply);
                    let mut ready = BytesMut::new();
                    frame::write_ready(&mut ready, self.status);
                    self.reply(to_client, ready.freeze());
                    return Ok(());
                }
                if let Some(refusal) = self.effect(sql) {
                    frame::write_query(to_server, &refusal);
                } else {
                    to_server.extend_from_slice(&msg);
                }
                self.expect_answer(End::Ready);
            }
            b'P' => {
                let parse = match frame::read_parse(&msg) {
                    Ok(parse) => parse,
                    Err(error) => return Err(self.violation(error).await),
                };
                self.door_statements.remove(parse.name);
                if let Some(deallocation) = self.door_deallocation(parse.query) {
                    self.door_statements
                        .insert(Bytes::copy_from_slice(parse.name), deallocation);
                    self.reply(to_client, Bytes::from_static(frame::PARSE_COMPLETE));
                    return Ok(());
                }
                let refusal = self.effect(parse.query);
                if let Some(refusal) = refusal {
                    frame::write_parse(to_server, parse.name, refusal.as_bytes(), &[0, 0]);
                    self.expect_answer(End::ParseComplete);
                } else if parse.name.is_empty() {
                    self.unnamed_changes_settings = session_effect(parse.query).settings;
                    to_server.extend_from_slice(&msg);
                    self.expect_answer(End::ParseComplete);
                } else {
                    let statement = self.door.statements.statement(parse.query, parse.types);
                    self.names
                        .insert(Bytes::copy_from_slice(parse.name), Arc::clone(&statement));
                    if self.has(&statement) {
                        self.door.prepared.hit.increment(1);
                        self.reply(to_client, Bytes::from_static(frame::PARSE_COMPLETE));
                    } else {
                        self.prepare(&statement, to_server, false);
                    }
                }
            }
            b'B' => {
                let (portal, name, rest) = match frame::read_bind(&msg) {
                    Ok(parts) => parts,
                    Err(error) => return Err(self.violation(error).await),
                };
                self.door_portals.remove(portal);
                if let Some(deallocation) = self.door_statements.get(name).cloned() {
                    self.door_portals
                        .insert(Bytes::copy_from_slice(portal), deallocation);
                    self.reply(to_client, Bytes::from_static(frame::BIND_COMPLETE));
                    return Ok(());
                }
                let statement = self.current(name);
                let changes_settings = match &statement {
                    _ if name.is_empty() => self.unnamed_changes_settings,
                    Some(statement) => statement.changes_settings,
                    None => false,
                };
                if changes_settings {
                    self.settings_changed = true;
                }
                match statement {
                    Some(statement) if !name.is_empty() => {
                        self.ensure(&statement, to_server);
                        frame::write_bind(to_server, portal, &statement.name, rest);
                        self.expect.push_back(Expect::Answer {
                            end: End::BindComplete,
                            swallow: false,
                            parse: None,
                            bind: Some(statement.id),
                        });
                    }
                    _ => {
                        to_server.extend_from_slice(&msg);
                        self.expect_answer(End::BindComplete);
                    }
                }
            }
            b'D' | b'C' => {
                let (kind, name) = match frame::read_target(&msg) {
                    Ok(target) => target,
                    Err(error) => return Err(self.violation(error).await),
                };
                let end = if tag == b'D' {
                    End::Description
                } else {
                    End::CloseComplete
                };
                let door_own = match kind {
                    b'S' => self.door_statements.contains_key(name),
                    _ => self.door_portals.contains_key(name),
                };
                if door_own {
                    let reply: &'static [u8] = match (tag, kind) {
                        (b'D', b'S') => frame::NO_PARAMETERS_NO_DATA,
                        (b'D', _) => frame::NO_DATA,
                        _ => {
                            if kind == b'S' {
                                self.door_statements.remove(name);
                            } else {
                                self.door_portals.remove(name);
                            }
                            frame::CLOSE_COMPLETE
                        }
                    };
                    self.reply(to_client, Bytes::from_static(reply));
                    return Ok(());
                }
                let mapped = (kind == b'S' && !name.is_empty())
                    .then(|| self.current(name))
                    .flatten();
                match (tag, mapped) {
                    (b'D', Some(statement)) => {
                        self.ensure(&statement, to_server);
                        frame::write_target(to_server, b'D', b'S', &statement.name);
                        self.expect_answer(end);
                    }
                    (_, Some(_)) => {
                        // Close of a client's name: the global statement stays prepared for
                        // others; only the client's name goes.
                        self.names.remove(name);
                        self.reply(to_client, Bytes::from_static(frame::CLOSE_COMPLETE));
                    }
                    _ => {
                        to_server.extend_from_slice(&msg);
                        self.expect_answer(end);
                    }
                }
            }
            b'E' => {
                let mut body = frame::body(&msg);
                let portal = frame::take_cstr(&mut body).unwrap_or_default();
                if let Some(deallocation) = self.door_portals.get(portal).cloned() {
                    let mut out = BytesMut::new();
                    frame::write_command_complete(&mut out, self.deallocate_now(&deallocation));
                    self.reply(to_client, out.freeze());
                    return Ok(());
                }
                to_server.extend_from_slice(&msg);
                self.expect_answer(End::Execution);
            }
            b'S' => {
                to_server.extend_from_slice(&msg);
                self.skipping = false;
                self.unsynced = false;
                self.expect_answer(End::Ready);
            }
            b'F' => {
                to_server.extend_from_slice(&msg);
                self.expect_answer(End::Ready);
            }
            b'H' | b'd' => to_server.extend_from_slice(&msg),
            b'c' | b'f' => {
                to_server.extend_from_slice(&msg);
                self.copy_in = false;
            }
            _ => {
                return Err(self
                    .violation(FrameError::Malformed("unexpected message type"))
                    .await);
            }
        }
        Ok(())
    }

    fn expect_answer(&mut self, end: End) {
        self.expect.push_back(Expect::Answer {
            end,
            swallow: false,
            parse: None,
            bind: None,
        });
    }

    /// A reply of the door's own: at once if nothing is outstanding, else in its place.
    fn reply(&mut self, to_client: &mut BytesMut, bytes: Bytes) {
        if self.expect.is_empty() {
            to_client.extend_from_slice(&bytes);
        } else {
            self.expect.push_back(Expect::Reply(bytes));
        }
    }

    fn has(&mut self, statement: &Statement) -> bool {
        self.server
            .as_mut()
            .is_some_and(|s| s.prepared.get(&statement.id).is_some())
    }

    /// Makes sure the linked server has `statement`, injecting its Parse if not.
    fn ensure(&mut self, statement: &Statement, to_server: &mut BytesMut) {
        if self.has(statement) {
            self.door.prepared.hit.increment(1);
        } else {
            self.prepare(statement, to_server, true);
        }
    }

    /// Sends the Parse of `statement` (the client's own, or injected and so swallowed),
    /// closing the least recently used statement first if the server is at its bound.
    fn prepare(&mut self, statement: &Statement, to_server: &mut BytesMut, swallow: bool) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if let Some((evicted, ())) = server.prepared.push(statement.id, ())
            && evicted != statement.id
        {
            frame::write_target(to_server, b'C', b'S', format!("pgway_{evicted}").as_bytes());
            self.expect.push_back(Expect::Answer {
                end: End::CloseComplete,
                swallow: true,
                parse: None,
                bind: None,
            });
            self.door.prepared.evicted.increment(1);
        }
        self.door.prepared.prepared.increment(1);
        frame::write_parse(
            to_server,
            &statement.name,
            &statement.query,
            &statement.types,
        );
        self.expect.push_back(Expect::Answer {
            end: End::ParseComplete,
            swallow,
            parse: Some(statement.id),
            bind: None,
        });
    }

    /// `DEALLOCATE name` / `DEALLOCATE ALL` of protocol-level statements is the door's to
    /// answer: the server never saw the client's names.
    fn deallocate(&mut self, sql: &[u8]) -> Option<Bytes> {
        let deallocation = match deallocation(sql)? {
            Deallocation::All if self.pinned.is_some() => {
                // SQL-level statements may exist on the server too.
                self.names.clear();
                return None;
            }
            other => other,
        };
        if !self.door_answers(&deallocation) {
            return None;
        }
        let mut out = BytesMut::new();
        frame::write_command_complete(&mut out, self.deallocate_now(&deallocation));
        Some(out.freeze())
    }

    /// A DEALLOCATE by the extended protocol the door answers itself.
    fn door_deallocation(&self, sql: &[u8]) -> Option<Deallocation> {
        deallocation(sql).filter(|d| self.door_answers(d))
    }

    /// Whether only the door knows what `deallocation` names: all of the client's names (and
    /// no SQL-level statements, which exist only for a pinned client), or one of its names.
    fn door_answers(&self, deallocation: &Deallocation) -> bool {
        match deallocation {
            Deallocation::All => self.pinned.is_none(),
            Deallocation::Name(name) => self.names.contains_key(name),
        }
    }

    /// Forgets what `deallocation` names; the command tag to answer.
    fn deallocate_now(&mut self, deallocation: &Deallocation) -> &'static str {
        match deallocation {
            Deallocation::All => {
                self.names.clear();
                "DEALLOCATE ALL"
            }
            Deallocation::Name(name) => {
                self.names.remove(name);
                "DEALLOCATE"
            }
        }
    }

    /// The statement a client's name maps to now: a statement whose plan went stale is
    /// replaced by a fresh one of the same text.
    fn current(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let statement = self.names.get(name)?;
        if !statement.is_retired() {
            return Some(Arc::clone(statement));
        }
        let fresh = self
            .door
            .statements
            .statement(&statement.query, &statement.types);
        self.names
            .insert(Bytes::copy_from_slice(name), Arc::clone(&fresh));
        Some(fresh)
    }

    /// Reads a statement for its effect on the session: pins the client if it makes what
    /// only its backend can hold, or returns the statement to run instead when such
    /// statements are refused (`PGWAY_PG_SESSION_STATE=error`, or too many pinned clients).
    /// The refusal runs on the server, so the transaction fails there as the client sees it.
    fn effect(&mut self, sql: &[u8]) -> Option<String> {
        let effect = session_effect(sql);
        if effect.settings {
            self.settings_changed = true;
        }
        let reason = effect.pins?;
        if self.pinned.is_some() {
            return None;
        }
        let refusal = match self.door.settings.session_state {
            SessionStateMode::Error => Some(format!(
                "{} keeps state in the server session, which transaction pooling can't carry \
                 between transactions",
                reason.statement()
            )),
            SessionStateMode::Pin if !self.door.clients.try_pin() => Some(format!(
                "{} needs a server connection of its own, and PGWAY_PG_MAX_PINNED clients \
                 already have one",
                reason.statement()
            )),
            SessionStateMode::Pin => None,
        };
        if let Some(message) = refusal {
            let hint = "connect to the database directly (or to a session pool) for this \
                        statement, or use its transaction-scoped form";
            return Some(format!(
                "DO $pgway$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}, HINT = {}; END$pgway$",
                literal(&message),
                literal(hint)
            ));
        }
        self.pinned = Some(reason);
        info!(user = %self.key.user, reason = reason.label(), "client pinned to its server connection");
        None
    }

    /// Relays what the server sent, as the queue says.
    fn server_messages(&mut self, to_client: &mut BytesMut) -> Result<(), Ended> {
        loop {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let msg = match frame::split_message(&mut server.buf, 1 << 30) {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(_) => {
                    server.broken = true;
                    return Ok(());
                }
            };
            let tag = msg[0];
            let own = matches!(self.expect.front(), Some(Expect::Own { .. }));
            match tag {
                b'N' | b'A' | b'S' => {
                    if !own {
                        to_client.extend_from_slice(&msg);
                    }
                    continue;
                }
                _ => {}
            }
            match self.expect.front_mut() {
                None => {
                    // Unasked for: a FATAL as the server ends the connection.
                    if tag == b'E' {
                        server.broken = true;
                    }
                    to_client.extend_from_slice(&msg);
                }
                Some(Expect::Own { read }) => {
                    let read = *read;
                    match tag {
                        b'D' if read => {
                            if let Some((name, value)) = two_texts(&msg) {
                                self.captured.insert(name, value);
                            }
                        }
                        b'E' => {
                            let fields = frame::read_error(&msg);
                            warn!(code = %fields.code, message = %fields.message, "the door's own statement failed");
                            if fields.severity == "FATAL" {
                                server.broken = true;
                            }
                        }
                        b'Z' => {
                            self.expect.pop_front();
                            if read {
                                let now = std::mem::take(&mut self.captured);
                                server.applied = now.clone();
                                self.wanted = now;
                            }
                        }
                        _ => {}
                    }
                }
                Some(Expect::Answer {
                    end,
                    swallow,
                    parse,
                    bind,
                }) => {
                    let (end, swallow, parse, bind) = (*end, *swallow, *parse, *bind);
                    if tag == b'E' {
                        let fields = frame::read_error(&msg);
                        to_client.extend_from_slice(&msg);
                        if fields.severity == "FATAL" || fields.severity == "PANIC" {
                            server.broken = true;
                        }
                        if let Some(id) = parse {
                            server.prepared.pop(&id);
                        }
                        if fields.code == "0A000"
                            && let Some(id) = bind
                        {
                            // "cached plan must not change result type": this name is stale
                            // everywhere. It stays prepared here (Parsing it again would
                            // fail: it exists) until the LRU closes it; clients move to a
                            // fresh name.
                            self.door.statements.retire(id);
                        }
                        if fields.code == "26000"
                            && let Some(id) = bind
                        {
                            // The server lacks a statement the door thought it had.
                            server.prepared.pop(&id);
                        }
                        if end != End::Ready {
                            // The server skips everything up to the next Sync: the Parses
                            // among those never happened.
                            self.expect.pop_front();
                            while let Some(next) = self.expect.front() {
                                if matches!(
                                    next,
                                    Expect::Answer {
                                        end: End::Ready,
                                        ..
                                    }
                                ) {
                                    break;
                                }
                                if let Some(Expect::Answer {
                                    parse: Some(id), ..
                                }) = self.expect.pop_front()
                                {
                                    server.prepared.pop(&id);
                                }
                            }
                            if self.expect.is_empty() {
                                self.skipping = true;
                            }
                        }
                    } else {
                        if !swallow {
                            to_client.extend_from_slice(&msg);
                        }
                        match tag {
                            b'Z' => self.status = msg.get(5).copied().unwrap_or(b'I'),
                            b'G' => self.copy_in = true,
                            b'C' => {
                                let tag = frame::read_command_tag(&msg);
                                if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
                                    server.prepared.clear();
                                    // The client's session lost its statements too.
                                    self.names.clear();
                                    self.door_statements.clear();
                                    self.door_portals.clear();
                                }
                            }
                            _ => {}
                        }
                        if end.by(tag) {
                            self.expect.pop_front();
                        }
                    }
                }
                Some(Expect::Reply(_)) => {}
            }
            // Replies of the door's own now at the head go out in their place.
            while let Some(Expect::Reply(_)) = self.expect.front() {
                if let Some(Expect::Reply(bytes)) = self.expect.pop_front() {
                    to_client.extend_from_slice(&bytes);
                }
            }
        }
    }

    /// The server connection failed under the client: it can't know what was applied.
    async fn server_lost(&mut self, to_client: &mut BytesMut) -> Ended {
        if let Some(mut server) = self.server.take() {
            server.broken = true;
            self.door.clients.linked(-1);
            self.cancel.unlink().await;
            self.door.pools.close(server, CloseReason::Broken);
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
        frame::write_error(&mut out, "FATAL", code, message, None);
        let _ = self.client.write_all(&out).await;
        let _ = self.client.shutdown().await;
        Ended::Door(if code == "25P03" {
            "idle in transaction"
        } else {
            "shutdown"
        })
    }

    async fn flush_and_end(&mut self, out: &mut BytesMut, why: &'static str) -> Ended {
        let _ = self.client.write_all(out).await;
        let _ = self.client.shutdown().await;
        Ended::Door(why)
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
        let outstanding = !self.expect.is_empty() || self.copy_in || self.unsynced;
        let needs_reset = matches!(self.status, b'T' | b'E') || outstanding || was_pinned;
        if outstanding && !server.broken {
            let target = self.door.pools.target().clone();
            let _ = super::server::cancel(&target, server.pid, server.secret).await;
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
            .filter(|e| {
                matches!(
                    e,
                    Expect::Answer {
                        end: End::Ready,
                        ..
                    } | Expect::Own { .. }
                )
            })
            .count()
            + 3;
        let copy_in = self.copy_in;
        let reset = async {
            let mut out = BytesMut::new();
            if copy_in {
                let reason = b"client disconnected\0";
                out.put_u8(b'f');
                out.put_i32((4 + reason.len()) as i32);
                out.put_slice(reason);
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
                if msg[0] == b'Z' {
                    seen += 1;
                    if seen == owed {
                        return (msg.get(5) == Some(&b'I')).then_some(());
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), reset).await {
            Ok(Some(())) => {
                server.applied.clear();
                server.prepared.clear();
                self.door.pools.release(&self.key, server);
            }
            _ => self.door.pools.close(server, CloseReason::ResetFailed),
        }
    }
}

/// What a `DEALLOCATE` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Deallocation {
    All,
    Name(Bytes),
}

/// Reads `DEALLOCATE [PREPARE] {name | ALL}`.
fn deallocation(sql: &[u8]) -> Option<Deallocation> {
    let text = std::str::from_utf8(sql)
        .ok()?
        .trim()
        .trim_end_matches(';')
        .trim();
    let mut words = text.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(Deallocation::All);
    }
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => name.to_ascii_lowercase(),
    };
    Some(Deallocation::Name(Bytes::from(name)))
}

/// The statement that brings a connection's settings to `wanted` (at link, and at login
/// for the client's startup parameters).
pub fn replay(wanted: &BTreeMap<String, String>) -> String {
    let mut sql = String::from("RESET ALL");
    if !wanted.is_empty() {
        sql.push_str("; SELECT ");
        for (i, (name, value)) in wanted.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("pg_catalog.set_config(");
            sql.push_str(&literal(name));
            sql.push_str(", ");
            sql.push_str(&literal(value));
            sql.push_str(", false)");
        }
    }
    sql
}

/// A string literal that reads the same whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The two text columns of a DataRow.
fn two_texts(msg: &[u8]) -> Option<(String, String)> {
    let mut b = frame::body(msg);
    if b.len() < 2 || b.get_i16() != 2 {
        return None;
    }
    let mut column = || -> Option<String> {
        if b.len() < 4 {
            return None;
        }
        let len = b.get_i32();
        let len = usize::try_from(len).ok()?;
        let value = b.get(..len)?;
        let value = String::from_utf8_lossy(value).into_owned();
        b.advance(len);
        Some(value)
    };
    Some((column()?, column()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_settings_are_quoted() {
        let mut wanted = BTreeMap::new();
        wanted.insert("search_path".to_owned(), "a', b\\".to_owned());
        assert_eq!(
            replay(&wanted),
            "RESET ALL; SELECT pg_catalog.set_config(E'search_path', E'a'', b\\\\', false)"
        );
    }
}
