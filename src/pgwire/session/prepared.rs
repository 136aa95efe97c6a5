//! The client's named statements over the door's global ones, and the `DEALLOCATE`s the door
//! answers itself (the server never saw the client's names).

use super::*;

impl Session {
    pub(super) fn has(&mut self, statement: &Statement) -> bool {
        self.server
            .as_mut()
            .is_some_and(|s| s.prepared.get(&statement.id).is_some())
    }

    /// Makes sure the linked server has `statement`, injecting its Parse if not.
    pub(super) fn ensure(&mut self, statement: &Statement, to_server: &mut BytesMut) {
        if self.has(statement) {
            self.door.prepared.hit.increment(1);
        } else {
            self.prepare(statement, to_server, true);
        }
    }

    /// Sends the Parse of `statement` (the client's own, or injected and so swallowed),
    /// closing the least recently used statement first if the server is at its bound.
    pub(super) fn prepare(
        &mut self,
        statement: &Statement,
        to_server: &mut BytesMut,
        swallow: bool,
    ) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if let Some((evicted, ())) = server.prepared.push(statement.id, ())
            && evicted != statement.id
        {
            let name = self.door.statements.name(evicted);
            frame::write_target(to_server, b'C', b'S', name.as_bytes());
            self.expect.push_back(Expect::Answer {
                end: End::CloseComplete,
                swallow: true,
                parse: None,
                bind: None,
                copy_ends: self.copy_ends,
            });
            self.door.prepared.evicted.increment(1);
        }
        self.door.prepared.prepared.increment(1);
        crate::pgwire::roster::DbStats::add(&self.stats.server_parses, 1);
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
            copy_ends: self.copy_ends,
        });
    }

    /// `DEALLOCATE name` / `DEALLOCATE ALL` of protocol-level statements is the door's to
    /// answer: the server never saw the client's names.
    pub(super) fn deallocate(&mut self, sql: &[u8]) -> Option<Bytes> {
        let deallocation = match deallocation(sql)? {
            Deallocation::All if self.server.is_some() || self.pinned.is_some() => {
                // Linked: the server connection drops what it has too, as it would directly
                // (a pinned client's SQL-level statements, what pg_prepared_statements shows);
                // its CommandComplete clears the door's tracking of that connection.
                self.names.clear();
                self.door_statements.clear();
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
    pub(super) fn door_deallocation(&self, sql: &[u8]) -> Option<Deallocation> {
        deallocation(sql).filter(|d| self.door_answers(d))
    }

    /// Whether only the door knows what `deallocation` names: all of the client's names (and
    /// no SQL-level statements, which exist only for a pinned client), or one of its names.
    pub(super) fn door_answers(&self, deallocation: &Deallocation) -> bool {
        match deallocation {
            Deallocation::All => self.pinned.is_none(),
            Deallocation::Name(name) => self.names.contains_key(name),
        }
    }

    /// Forgets what `deallocation` names; the command tag to answer.
    pub(super) fn deallocate_now(&mut self, deallocation: &Deallocation) -> &'static str {
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

    /// The global statement a Parse of `query` gets: the one of its text, types and the
    /// client's `search_path`, or one of its own while that path is unknown to the door.
    pub(super) fn statement_for(&self, query: &[u8], types: &[u8]) -> Arc<Statement> {
        if self.noted.path {
            self.door.statements.private(query, types)
        } else {
            (self.door.statements).statement(query, types, self.wanted.search_path())
        }
    }

    /// Answers a client's Parse that maps to `statement`: at once if the linked server has it
    /// already, else with the server's answer to its Parse there.
    pub(super) fn parse_global(
        &mut self,
        statement: &Statement,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) {
        if self.has(statement) {
            self.door.prepared.hit.increment(1);
            self.reply(to_client, Bytes::from_static(frame::PARSE_COMPLETE));
        } else {
            self.prepare(statement, to_server, false);
        }
    }

    /// The statement a client's name maps to now: a statement whose plan went stale is
    /// replaced by a fresh one of the same text.
    pub(super) fn current(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let statement = self.names.get(name)?;
        if !statement.is_retired() {
            return Some(Arc::clone(statement));
        }
        let statement = Arc::clone(statement);
        let fresh = self.statement_for(&statement.query, &statement.types);
        self.names
            .insert(Bytes::copy_from_slice(name), Arc::clone(&fresh));
        Some(fresh)
    }
}

/// What a `DEALLOCATE` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Deallocation {
    All,
    Name(Bytes),
}

/// Reads `DEALLOCATE [PREPARE] {name | ALL}`.
fn deallocation(sql: &[u8]) -> Option<Deallocation> {
    // Every unnamed Parse comes here: most are turned away by their first byte, before the
    // text is checked as UTF-8 and split.
    let first = sql
        .iter()
        .find(|b| !(b.is_ascii_whitespace() || **b == 0x0b))?;
    if !first.eq_ignore_ascii_case(&b'd') {
        return None;
    }
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
