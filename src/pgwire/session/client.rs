//! What the door does with each message a client sends: relayed, answered itself, or turned
//! into what the server must see instead.

use super::*;

impl Session {
    /// Answers what needs no server between transactions: a named Parse (remembered, and
    /// prepared on whichever server connection first binds it), a Sync or a Flush with
    /// nothing before them. Drivers that prepare synchronously before they execute (pgbench
    /// `-M prepared`, one thread for many clients) would otherwise hold the thread waiting
    /// for a server connection that its other clients hold. The cost: a Parse's error (a
    /// syntax error) is reported at its first Bind or Describe, not at the Parse.
    pub(super) fn answer_unlinked(&mut self, msg: &[u8], to_client: &mut BytesMut) -> bool {
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
                // A name in use is refused by the server (`on_parse`).
                if parse.name.is_empty() || self.names.contains_key(parse.name) {
                    return false;
                }
                let statement = self.statement_for(parse.query, parse.types);
                if !self.statement_effect(&statement).is_plain() {
                    return false;
                }
                self.door_statements.remove(parse.name);
                self.names
                    .insert(Bytes::copy_from_slice(parse.name), statement);
                to_client.extend_from_slice(frame::PARSE_COMPLETE);
                true
            }
            b'Q' => {
                // A DEALLOCATE of the client's own names needs no server connection.
                let Ok(sql) = frame::read_query(msg) else {
                    return false;
                };
                let Some(reply) = self.deallocate(sql) else {
                    return false;
                };
                // A simple Query drops the unnamed statement.
                self.forget_unnamed();
                to_client.extend_from_slice(&reply);
                frame::write_ready(to_client, self.status);
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

    /// Counts a Parse or a Bind for `SHOW STATS`.
    pub(super) fn count_message(&self, tag: u8) {
        match tag {
            b'P' => DbStats::add(&self.stats.client_parses, 1),
            b'B' => DbStats::add(&self.stats.binds, 1),
            _ => {}
        }
    }

    /// Passes a large CopyData from the client to the server in pieces as it arrives (a
    /// bulk load's rows can be hundreds of megabytes). Whether the client's buffer is spent.
    pub(super) fn pass_to_server(&mut self, cbuf: &mut BytesMut, to_server: &mut BytesMut) -> bool {
        if self.to_server_passing == 0 {
            let max = self.door.settings.max_message;
            match large_message(cbuf, b'd') {
                Some(total) if self.server.is_some() && !self.refusing && total <= max => {
                    self.to_server_passing = total;
                    cbuf.reserve(PASS_CHUNK);
                }
                _ => return false,
            }
        }
        let n = self.to_server_passing.min(cbuf.len());
        to_server.extend_from_slice(&cbuf[..n]);
        cbuf.advance(n);
        self.to_server_passing -= n;
        cbuf.is_empty()
    }

    pub(super) fn client_message(
        &mut self,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let tag = msg[0];
        if matches!(tag, b'P' | b'B' | b'D' | b'C' | b'E' | b'H') {
            self.unsynced = true;
            self.flushed = tag == b'H';
        }
        if self.skipping && tag != b'S' {
            // The server ignores it; so does the door.
            to_server.extend_from_slice(msg);
            return Ok(());
        }
        match tag {
            b'Q' => {
                self.on_query(msg, to_server, to_client)?;
            }
            b'P' => {
                self.on_parse(msg, to_server, to_client)?;
            }
            b'B' => {
                self.on_bind(msg, to_server, to_client)?;
            }
            b'D' | b'C' => {
                self.on_target(tag, msg, to_server, to_client)?;
            }
            b'E' => {
                self.on_execute(msg, to_server, to_client)?;
            }
            b'S' => {
                to_server.extend_from_slice(msg);
                self.skipping = false;
                self.unsynced = false;
                self.expect_answer(End::Ready);
                self.restore_startup(to_server);
            }
            b'F' => {
                // A function call: what it does can't be read from the message.
                self.noted.check = true;
                self.noted.unknown_settings = true;
                self.noted.path = true;
                to_server.extend_from_slice(msg);
                self.expect_answer(End::Ready);
            }
            b'H' | b'd' => to_server.extend_from_slice(msg),
            b'c' | b'f' => {
                to_server.extend_from_slice(msg);
                self.copy_ends = self.copy_ends.wrapping_add(1);
                self.copy_in = false;
            }
            _ => {
                return Err(FrameError::Malformed("unexpected message type"));
            }
        }
        if self.retry.is_some() {
            self.record(tag, msg);
        }
        match tag {
            b'B' | b'E' | b'F' => self.batch_ran = true,
            b'S' | b'Q' => self.batch_ran = false,
            _ => {}
        }
        Ok(())
    }

    fn on_query(
        &mut self,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let sql = frame::read_query(msg)?;
        // A simple Query drops the unnamed statement, as PostgreSQL does at its start (the door
        // may answer this Query, or the server may be skipping to a Sync).
        self.forget_unnamed();
        if let Some(reply) = self.deallocate(sql) {
            self.reply(to_client, reply);
            let mut ready = BytesMut::new();
            frame::write_ready(&mut ready, self.status);
            self.reply(to_client, ready.freeze());
            return Ok(());
        }
        let effect = self.read(sql);
        if let Some(refusal) = self.admit(&effect) {
            frame::write_query(to_server, &refusal);
        } else {
            self.note(&effect, None);
            to_server.extend_from_slice(msg);
        }
        // The Query's ReadyForQuery also ends any extended messages before it.
        self.unsynced = false;
        self.expect_answer(End::Ready);
        self.restore_startup(to_server);
        Ok(())
    }

    fn on_parse(
        &mut self,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let parse = frame::read_parse(msg)?;
        // Nearly always empty: then the name isn't even hashed (every Parse comes here).
        if !self.door_statements.is_empty() {
            self.door_statements.remove(parse.name);
        }
        if let Some(deallocation) = self.door_deallocation(parse.query) {
            self.door_statements
                .insert(Bytes::copy_from_slice(parse.name), deallocation);
            self.reply(to_client, Bytes::from_static(frame::PARSE_COMPLETE));
            return Ok(());
        }
        if parse.name.is_empty() {
            // Drivers send the same text as the unnamed statement again and again (pgbench
            // `-M extended`, most ORMs): read only what is new.
            let standard_strings = self.wanted.standard_strings();
            let same = self.unnamed.as_ref().is_some_and(|u| {
                u.query == parse.query
                    && u.types == parse.types
                    && u.standard_strings == standard_strings
            });
            // What it replaces, should the server skip it.
            let mut replaced = None;
            if !same {
                let (query, effect) = self.recent.read(parse.query, standard_strings);
                replaced = Some(self.unnamed.replace(Unnamed {
                    query,
                    types: Bytes::copy_from_slice(parse.types),
                    effect,
                    standard_strings,
                    kept: None,
                }));
            }
            let effect = self.unnamed.as_ref().map(|u| Arc::clone(&u.effect));
            if let Some(refusal) = effect.and_then(|e| self.admit(&e)) {
                self.unnamed = None;
                self.refuse_parse(&refusal, to_server);
                return Ok(());
            }
            if self.keeps_unnamed() {
                self.parse_kept(to_server, to_client);
            } else {
                if let Some(unnamed) = self.unnamed.as_mut() {
                    unnamed.kept = None;
                }
                self.unnamed_here = true;
                to_server.extend_from_slice(msg);
                self.expect_answer(End::ParseComplete);
            }
            if let Some(replaced) = replaced {
                self.undoable(Undo::Unnamed(replaced));
            }
        } else {
            if self.names.contains_key(parse.name) {
                // Directly a name is parsed once until closed: 42P05, and the name keeps
                // its statement.
                self.refuse_parse(&state::duplicate_sql(parse.name), to_server);
                return Ok(());
            }
            let statement = self.statement_for(parse.query, parse.types);
            let effect = self.statement_effect(&statement);
            if let Some(refusal) = self.admit(&effect) {
                self.refuse_parse(&refusal, to_server);
                return Ok(());
            }
            let name = Bytes::copy_from_slice(parse.name);
            self.names.insert(name.clone(), Arc::clone(&statement));
            self.parse_global(&statement, to_server, to_client);
            // The name was free (checked above): undone, it names nothing again.
            self.undoable(Undo::Name(name, None));
        }
        Ok(())
    }

    fn on_bind(
        &mut self,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let (portal, name, rest) = frame::read_bind(msg)?;
        if !self.door_portals.is_empty() {
            self.door_portals.remove(portal);
        }
        if let Some(deallocation) = self.door_statements.get(name).cloned() {
            self.door_portals
                .insert(Bytes::copy_from_slice(portal), deallocation);
            self.reply(to_client, Bytes::from_static(frame::BIND_COMPLETE));
            return Ok(());
        }
        let kept_bound = name.is_empty();
        let statement = if kept_bound {
            let kept = self.kept().filter(|s| self.run_kept(s));
            if kept.is_none() {
                self.ensure_unnamed(to_server);
            }
            if let Some(unnamed) = &self.unnamed {
                let effect = Arc::clone(&unnamed.effect);
                self.note(&effect, Some(rest));
            }
            kept
        } else {
            let statement = self.current(name);
            if let Some(statement) = &statement {
                let effect = self.statement_effect(statement);
                self.note(&effect, Some(rest));
            }
            statement
        };
        match statement {
            Some(statement) => {
                self.ensure(&statement, to_server);
                frame::write_bind(to_server, portal, &statement.name, rest);
                self.expect.push_back(Expect::Answer {
                    end: End::BindComplete,
                    swallow: false,
                    parse: None,
                    bind: Some(statement.id),
                    copy_ends: self.copy_ends,
                });
            }
            _ => {
                to_server.extend_from_slice(msg);
                self.expect_answer(End::BindComplete);
            }
        }
        Ok(())
    }

    fn on_target(
        &mut self,
        tag: u8,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let (kind, name) = frame::read_target(msg)?;
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
        let mapped = match (kind, name.is_empty()) {
            (b'S', true) if tag == b'D' => self.kept().filter(|s| self.run_kept(s)),
            (b'S', true) => self.kept(),
            (b'S', false) => self.current(name),
            _ => None,
        };
        match (tag, mapped) {
            (b'D', Some(statement)) => {
                self.ensure(&statement, to_server);
                frame::write_target(to_server, b'D', b'S', &statement.name);
                // A Describe revalidates the plan as a Bind does: 0A000 retires it too.
                self.expect.push_back(Expect::Answer {
                    end,
                    swallow: false,
                    parse: None,
                    bind: Some(statement.id),
                    copy_ends: self.copy_ends,
                });
            }
            (_, Some(_)) => {
                // Close of a client's name: the global statement stays prepared for
                // others; only the client's name goes.
                let undo = if name.is_empty() {
                    let closed = self.unnamed.take();
                    self.forget_unnamed();
                    Undo::Unnamed(closed)
                } else {
                    Undo::Name(Bytes::copy_from_slice(name), self.names.remove(name))
                };
                self.reply(to_client, Bytes::from_static(frame::CLOSE_COMPLETE));
                self.undoable(undo);
            }
            _ => {
                let mut closed = None;
                if kind == b'S' && name.is_empty() {
                    self.ensure_unnamed(to_server);
                    if tag == b'C' {
                        // Closed on the server: gone for the client too (a later Bind of
                        // "" gets 26000, as directly).
                        closed = Some(self.unnamed.take());
                    }
                }
                to_server.extend_from_slice(msg);
                self.expect_answer(end);
                if let Some(closed) = closed {
                    self.undoable(Undo::Unnamed(closed));
                }
            }
        }
        Ok(())
    }

    fn on_execute(
        &mut self,
        msg: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let mut body = frame::body(msg);
        let portal = frame::take_cstr(&mut body).unwrap_or_default();
        if let Some(deallocation) = self.door_portals.get(portal).cloned() {
            let mut out = BytesMut::new();
            frame::write_command_complete(&mut out, self.deallocate_now(&deallocation));
            self.reply(to_client, out.freeze());
            return Ok(());
        }
        to_server.extend_from_slice(msg);
        self.expect_answer(End::Execution);
        Ok(())
    }

    pub(super) fn expect_answer(&mut self, end: End) {
        self.expect.push_back(Expect::Answer {
            end,
            swallow: false,
            parse: None,
            bind: None,
            copy_ends: self.copy_ends,
        });
    }

    /// An injected message's answer, swallowed.
    pub(super) fn expect_swallowed(&mut self, end: End) {
        self.expect.push_back(Expect::Answer {
            end,
            swallow: true,
            parse: None,
            bind: None,
            copy_ends: self.copy_ends,
        });
    }

    /// What running `statement` does to this session (read again if this session reads
    /// strings otherwise than the registry did).
    pub(super) fn statement_effect<'a>(
        &self,
        statement: &'a Statement,
    ) -> std::borrow::Cow<'a, SessionEffect> {
        if self.wanted.standard_strings() {
            std::borrow::Cow::Borrowed(&statement.effect)
        } else {
            std::borrow::Cow::Owned(self.read(&statement.query))
        }
    }

    /// The client's unnamed statement is gone (a later Bind of "" gets 26000); whether the
    /// linked server's is gone too isn't known, so it is closed there before the client's
    /// next use of "".
    pub(super) fn forget_unnamed(&mut self) {
        self.unnamed = None;
        self.unnamed_here = false;
    }

    /// Makes sure the linked server's unnamed statement is the client's: parsed there if it
    /// was parsed on another connection, closed there if the client has none (what the server
    /// has is another client's, or one the client's Query dropped: the client's Bind of "" must
    /// get 26000, as directly, never run that).
    fn ensure_unnamed(&mut self, to_server: &mut BytesMut) {
        if self.unnamed_here {
            return;
        }
        match &self.unnamed {
            Some(unnamed) => {
                frame::write_parse(to_server, b"", &unnamed.query, &unnamed.types);
                self.expect_swallowed(End::ParseComplete);
            }
            None => {
                frame::write_target(to_server, b'C', b'S', b"");
                self.expect_swallowed(End::CloseComplete);
            }
        }
        self.unnamed_here = true;
    }

    /// Answers a Parse with the refusal the server raises: the refusal is parsed, bound and
    /// run as the unnamed statement (never under the client's name, which other clients of
    /// the server connection could then run), and its error stands in for the Parse's answer.
    fn refuse_parse(&mut self, refusal: &str, to_server: &mut BytesMut) {
        frame::write_parse(to_server, b"", refusal.as_bytes(), &[0, 0]);
        to_server.extend_from_slice(frame::BIND_EXECUTE_UNNAMED);
        self.expect_swallowed(End::ParseComplete);
        self.expect_swallowed(End::BindComplete);
        self.expect_answer(End::Execution);
        self.unnamed_here = false;
    }

    /// A reply of the door's own: at once if nothing is outstanding, else in its place.
    pub(super) fn reply(&mut self, to_client: &mut BytesMut, bytes: Bytes) {
        if self.expect.is_empty() {
            to_client.extend_from_slice(&bytes);
        } else {
            self.expect.push_back(Expect::Reply(bytes));
        }
    }
}
