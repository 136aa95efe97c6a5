//! What the server sends, relayed or swallowed as the queue of expected answers says.

use super::*;

impl Session {
    /// Relays what the server sent, as the queue says.
    pub(super) fn server_messages(&mut self, to_client: &mut BytesMut) -> Result<(), Ended> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        // The buffer is held here while its messages are read in place, each then advanced
        // past: splitting every message off as its own reference-counted piece was about 5%
        // of the door's instructions per transaction (callgrind, pgbench -S). Nothing below
        // reads from the server or gives the connection up, so it goes back as it was left.
        let mut buf = std::mem::take(&mut server.buf);
        let relayed = self.relay_server_messages(&mut buf, to_client);
        if let Some(server) = self.server.as_mut() {
            server.buf = buf;
        }
        relayed
    }

    fn relay_server_messages(
        &mut self,
        buf: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        loop {
            match self.pass_to_client(buf, to_client) {
                Some(true) => return Ok(()),
                Some(false) => continue,
                None => {}
            }
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let total = match frame::message_len(buf, 1 << 30) {
                Ok(Some(total)) => total,
                Ok(None) => return Ok(()),
                Err(_) => {
                    server.broken = true;
                    return Ok(());
                }
            };
            self.server_message(&buf[..total], to_client);
            buf.advance(total);
        }
    }

    /// Relays, swallows or answers one whole message from the server.
    fn server_message(&mut self, msg: &[u8], to_client: &mut BytesMut) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let tag = msg[0];
        let own = matches!(self.expect.front(), Some(Expect::Own(_)));
        match tag {
            b'S' => {
                // Told the client before its ReadyForQuery (see `report_changes`).
                server.note_parameter(msg);
                return;
            }
            b'N' | b'A' => {
                // A notification is the session's, whichever query it arrives behind
                // (PostgreSQL sends it as a transaction ends, the door's own too); a
                // notice belongs to the statement that raised it.
                if !own || tag == b'A' {
                    to_client.extend_from_slice(msg);
                }
                return;
            }
            _ => {}
        }
        match self.expect.front_mut() {
            None => {
                // Unasked for: a FATAL as the server ends the connection.
                if tag == b'E' {
                    server.broken = true;
                }
                to_client.extend_from_slice(msg);
            }
            Some(Expect::Own(kind)) => {
                let kind = *kind;
                self.own_message(kind, msg);
            }
            Some(Expect::Answer {
                end,
                swallow,
                parse,
                bind,
                copy_ends,
            }) => {
                let (end, swallow, parse, bind) = (*end, *swallow, *parse, *bind);
                let copy_ended = *copy_ends != self.copy_ends;
                if tag == b'E' {
                    self.answer_error(msg, end, swallow, parse, bind, to_client);
                } else {
                    if !swallow {
                        if tag == b'Z'
                            && (server.params_digest != self.told_digest
                                || !self.restoring.is_empty())
                        {
                            own::report_changes(
                                &server.params,
                                &self.startup,
                                &self.restoring,
                                &mut self.told,
                                to_client,
                            );
                            self.told_digest = super::super::server::digest(&self.told);
                        }
                        to_client.extend_from_slice(msg);
                    }
                    match tag {
                        b'Z' => {
                            self.status = msg.get(5).copied().unwrap_or(b'I');
                            // PgBouncer's counting: each ReadyForQuery ends a query, an
                            // idle one a transaction.
                            DbStats::add(&self.stats.queries, 1);
                            if self.status == b'I' {
                                DbStats::add(&self.stats.xacts, 1);
                            }
                        }
                        b'G' => self.copy_in = !copy_ended,
                        b'C' => self.completed(msg),
                        _ => {}
                    }
                    if end.by(tag) {
                        self.expect.pop_front();
                    }
                    if tag == b'Z' && (self.retry.is_some() || self.retrying) {
                        self.ready_seen(to_client);
                    }
                }
            }
            Some(Expect::Reply(_) | Expect::Undo(_)) => {}
        }
        self.now_due(to_client);
    }

    /// Replies of the door's own now at the head of the queue go out in their place; the
    /// undoing of messages now answered is dropped.
    fn now_due(&mut self, to_client: &mut BytesMut) {
        loop {
            match self.expect.front() {
                Some(Expect::Reply(_)) => {
                    if let Some(Expect::Reply(bytes)) = self.expect.pop_front() {
                        to_client.extend_from_slice(&bytes);
                    }
                }
                Some(Expect::Undo(_)) => {
                    self.expect.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Passes a large row or CopyData the client asked for on in pieces as it arrives (a
    /// value can be hundreds of megabytes), never holding it whole: `Some(true)` when the
    /// server's buffer is spent, `Some(false)` when more follows the message; `None` when
    /// there is no such message to pass.
    fn pass_to_client(&mut self, buf: &mut BytesMut, to_client: &mut BytesMut) -> Option<bool> {
        self.server.as_ref()?;
        if self.to_client_passing == 0 {
            let total =
                super::large_message(buf, b'D').or_else(|| super::large_message(buf, b'd'))?;
            let relayed = matches!(
                self.expect.front(),
                Some(Expect::Answer { swallow: false, .. })
            );
            if total > 1 << 30 || !relayed {
                return None;
            }
            self.to_client_passing = total;
            buf.reserve(super::PASS_CHUNK);
        }
        let n = self.to_client_passing.min(buf.len());
        to_client.extend_from_slice(&buf[..n]);
        buf.advance(n);
        self.to_client_passing -= n;
        Some(buf.is_empty())
    }

    /// A message answering one of the door's own queries: swallowed, what it says kept.
    fn own_message(&mut self, kind: Own, msg: &[u8]) {
        let tag = msg[0];
        match tag {
            b'D' if kind == Own::Read => {
                if let [Some(name), Some(value)] = &own::texts(msg)[..] {
                    self.captured.insert(name.clone(), value.clone());
                }
            }
            b'D' if kind == Own::Check => self.checked = Some(own::texts(msg)),
            b'E' => {
                let fields = frame::read_error(msg);
                if fields.severity == "FATAL"
                    && let Some(server) = self.server.as_mut()
                {
                    server.broken = true;
                }
                self.own_error = Some(format!("{}: {}", fields.code, fields.message));
            }
            b'Z' => {
                self.expect.pop_front();
                let failed = self.own_error.take();
                self.own_answered(kind, failed);
            }
            _ => {}
        }
    }

    /// An error answering the client's message: relayed; the server now skips to the next
    /// Sync, so what the door expected up to it is dropped.
    fn answer_error(
        &mut self,
        msg: &[u8],
        end: End,
        swallow: bool,
        parse: Option<u64>,
        bind: Option<u64>,
        to_client: &mut BytesMut,
    ) {
        if self.server.is_none() {
            return;
        }
        let fields = frame::read_error(msg);
        let again = self.retry.is_some() && self.retry_on(&fields.code, bind, msg);
        if !again {
            to_client.extend_from_slice(msg);
        }
        let failed_parse = end == End::ParseComplete && !swallow;
        let Some(server) = self.server.as_mut() else {
            return;
        };
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
            self.skip_to_sync(failed_parse, again);
        }
    }

    /// After an error answering the message at the head of the queue (not a Query): the
    /// server skips everything up to the next Sync, so what was expected up to it is dropped,
    /// and what those messages did to the client's statements undone. The Parses among them
    /// never happened.
    fn skip_to_sync(&mut self, failed_parse: bool, again: bool) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        self.expect.pop_front();
        let mut own_undo = None;
        if failed_parse && let Some(Expect::Undo(_)) = self.expect.front() {
            // The failed Parse's own: its statement never came to be.
            if let Some(Expect::Undo(undo)) = self.expect.pop_front() {
                own_undo = Some(undo);
            }
        }
        let mut undos = Vec::new();
        while let Some(next) = self.expect.front() {
            if next.ends_at_ready() {
                break;
            }
            match self.expect.pop_front() {
                Some(Expect::Answer {
                    parse: Some(id), ..
                }) => {
                    server.prepared.pop(&id);
                }
                Some(Expect::Answer {
                    end: End::ParseComplete | End::CloseComplete,
                    ..
                }) => {
                    // A Parse or Close of the unnamed statement (the client's, or the
                    // door's making it the client's) that never happened: what the
                    // server holds as its unnamed statement isn't known.
                    self.unnamed_here = false;
                }
                Some(Expect::Undo(undo)) => undos.push(undo),
                _ => {}
            }
        }
        if self.expect.is_empty() {
            self.skipping = true;
        }
        if again
            && let Some(Expect::Answer {
                end: End::Ready,
                swallow,
                ..
            }) = self.expect.front_mut()
        {
            // Its ReadyForQuery is the door's to swallow too: the messages run again
            // behind it (`ready_seen`).
            *swallow = true;
        }
        // The latest first, so that each puts back what its message found.
        for undo in undos.into_iter().rev() {
            self.undo(*undo);
        }
        match own_undo.map(|undo| *undo) {
            // A failed Parse of a name leaves the name as it was: a Bind of it gets 26000
            // on any server connection, not the Parse's error again.
            Some(undo @ Undo::Name(..)) => self.undo(undo),
            // A failed Parse of "" (sent as the unnamed statement or kept: a named Parse
            // is always followed by its undo) leaves no unnamed statement: directly, the
            // next Bind of "" gets 26000. Forgotten, it is closed on whatever server that
            // Bind goes to, instead of the failing text being parsed there again with its
            // error.
            _ if failed_parse => self.forget_unnamed(),
            _ => {}
        }
    }

    /// A CommandComplete: what its tag says about the catalog and the statements prepared.
    fn completed(&mut self, msg: &[u8]) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let tag = frame::read_command_tag(msg);
        // The catalog changed: a new Parse of a known text must not
        // reuse a statement prepared before (see Registry::statement).
        if tag.starts_with(b"CREATE ") || tag.starts_with(b"ALTER ") || tag.starts_with(b"DROP ") {
            self.door.statements.catalog_changed();
        }
        if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
            server.prepared.clear();
        }
        if tag == b"DISCARD ALL" {
            // The client's session lost its statements too (a
            // DEALLOCATE ALL's were forgotten when it was sent, so
            // that names Parsed after it stay).
            self.names.clear();
            self.door_statements.clear();
            self.door_portals.clear();
        }
    }
}
