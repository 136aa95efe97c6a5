//! The client's unnamed statement kept on server connections as a global named one
//! (`PGWAY_PG_KEEP_UNNAMED`), and the one case where that shows and can be hidden: a kept
//! statement whose plan went stale (DDL outside pgway changed what it returns) fails its Bind
//! with 0A000, where directly the client's Parse would have been analysed afresh. When the
//! Bind was the first thing of an implicit transaction (nothing had run, no transaction block
//! was open) the door swallows the error and the server's ReadyForQuery, and runs the
//! client's messages from that Bind to its Sync again, the statement prepared afresh: the
//! client sees what it would directly. Anywhere else the error stands (inside a block it
//! aborts the block, which can't be undone).

use super::*;

/// Most bytes of a client's messages kept to be run again (a Bind's parameters included).
const RETRY_BYTES: usize = 64 << 10;

/// A Bind of a kept statement that may be run again, with the client's messages from it to
/// its Sync (in `Session::retry_msgs`, a buffer kept across transactions: every such Bind is
/// recorded, so no allocation each time).
#[derive(Debug)]
pub(super) struct Retry {
    /// The statement the Bind named.
    id: u64,
    /// The Sync is in.
    complete: bool,
    /// The Bind failed: the messages run again once the server's ReadyForQuery is in.
    due: Option<Bytes>,
    /// The client sent more after the Sync: running the kept messages again would put their
    /// answers behind those.
    overtaken: bool,
}

impl Session {
    /// Answers the client's Parse of its unnamed statement (just read into `self.unnamed`)
    /// with a global statement kept on server connections (`PGWAY_PG_KEEP_UNNAMED`): PostgreSQL
    /// then parses and plans a text a client sends again and again once per connection, not
    /// at every query. The same text as the last Parse reuses its statement without the
    /// registry's lock while that is still what a Parse would get.
    pub(super) fn parse_kept(&mut self, to_server: &mut BytesMut, to_client: &mut BytesMut) {
        let Some(unnamed) = self.unnamed.as_ref() else {
            return;
        };
        let statement = match &unnamed.kept {
            Some(kept)
                if self.door.statements.is_current(kept)
                    && kept.path == self.wanted.search_path() =>
            {
                Arc::clone(kept)
            }
            _ => self.statement_for(&unnamed.query, &unnamed.types),
        };
        if let Some(unnamed) = self.unnamed.as_mut() {
            unnamed.kept = Some(Arc::clone(&statement));
        }
        // What the server holds as its unnamed statement is no longer the client's.
        self.unnamed_here = false;
        self.parse_global(&statement, to_server, to_client);
    }

    /// The global statement the client's unnamed one runs as, if kept; a retired one is
    /// replaced as [`Session::current`] replaces a named one.
    pub(super) fn kept(&mut self) -> Option<Arc<Statement>> {
        let kept = self.unnamed.as_ref()?.kept.as_ref()?;
        if !kept.is_retired() {
            return Some(Arc::clone(kept));
        }
        let kept = Arc::clone(kept);
        let fresh = self.statement_for(&kept.query, &kept.types);
        if let Some(unnamed) = self.unnamed.as_mut() {
            unnamed.kept = Some(Arc::clone(&fresh));
        }
        Some(fresh)
    }

    /// At a Bind or Describe of the kept `statement`: whether it runs by its name here (else
    /// its text is parsed as the server's unnamed statement, as without keeping). Prepared
    /// here now, it can't be stale; prepared before, it may fail with 0A000, which is run
    /// again unseen where it can be (`arm_retry`), and shown elsewhere only with `always`.
    pub(super) fn run_kept(&mut self, statement: &Statement) -> bool {
        !self.has(statement)
            || self.arm_retry(statement)
            || self.door.settings.keep_unnamed == KeepUnnamed::Always
    }

    /// Keeps the client's messages from here to its Sync if a failure of `statement` here
    /// could be run again unseen (see the module's comment). Whether they are kept.
    fn arm_retry(&mut self, statement: &Statement) -> bool {
        if let Some(retry) = &self.retry {
            // The Describe before this Bind armed it.
            return retry.id == statement.id && !retry.complete && retry.due.is_none();
        }
        let replayable = !self.retrying && self.nothing_ran();
        if replayable {
            self.retry_msgs.clear();
            self.retry = Some(Retry {
                id: statement.id,
                complete: false,
                due: None,
                overtaken: false,
            });
        }
        replayable
    }

    /// Whether the server is outside a transaction block with nothing run since the last
    /// Sync (every earlier Sync answered, so `status` is current): a failure now aborts
    /// nothing but what follows up to the next Sync.
    pub(super) fn nothing_ran(&self) -> bool {
        !self.batch_ran && self.status == b'I' && !self.expect.iter().any(Expect::ends_at_ready)
    }

    /// Whether the unnamed statement the client is parsing is kept: with `autocommit` only
    /// where its use can be run again unseen (in a transaction block the text is parsed as
    /// the unnamed statement, as without keeping, and no named one is prepared in vain).
    pub(super) fn keeps_unnamed(&self) -> bool {
        !self.noted.path
            && match self.door.settings.keep_unnamed {
                KeepUnnamed::Off => false,
                KeepUnnamed::Autocommit => self.nothing_ran(),
                KeepUnnamed::Always => true,
            }
    }

    /// Keeps a client message that is part of what would be run again.
    pub(super) fn record(&mut self, tag: u8, msg: &[u8]) {
        let Some(retry) = self.retry.as_mut() else {
            return;
        };
        if retry.complete {
            retry.overtaken = true;
            return;
        }
        // A Parse or Close of the unnamed statement after the Bind changes what a Bind of ""
        // would run again: not run again.
        // (Already read once as the client sent it, so well-formed here.)
        let unnamed_changed = match tag {
            b'P' => frame::read_parse(msg).map_or(true, |parse| parse.name.is_empty()),
            b'C' => {
                frame::read_target(msg).map_or(true, |(kind, name)| kind == b'S' && name.is_empty())
            }
            _ => false,
        };
        if unnamed_changed {
            self.retry = None;
            return;
        }
        match tag {
            b'P' | b'B' | b'D' | b'C' | b'E' | b'S'
                if self.retry_msgs.len() + msg.len() <= RETRY_BYTES =>
            {
                self.retry_msgs.extend_from_slice(msg);
                retry.complete = tag == b'S';
            }
            // A Flush (the client may wait for answers before its Sync), a Query, a function
            // call, COPY data, or too much: not run again.
            _ => self.retry = None,
        }
    }

    /// An error answered the Bind of `bind`: whether it is swallowed, to be run again.
    pub(super) fn retry_on(&mut self, code: &str, bind: Option<u64>, msg: &[u8]) -> bool {
        let Some(retry) = self.retry.as_mut() else {
            return false;
        };
        if code == "0A000"
            && retry.complete
            && !retry.overtaken
            && bind == Some(retry.id)
            && retry.due.is_none()
        {
            retry.due = Some(Bytes::copy_from_slice(msg));
            return true;
        }
        self.retry = None;
        false
    }

    /// The ReadyForQuery of a swallowed failure is in (and swallowed too): the client's
    /// messages run again.
    pub(super) fn ready_seen(&mut self, to_client: &mut BytesMut) {
        self.retrying = false;
        let Some(Retry {
            due: Some(error),
            overtaken,
            ..
        }) = self.retry.take()
        else {
            return;
        };
        if self.status != b'I' || overtaken || !self.expect.is_empty() {
            // Not what was armed for, or more is already on its way to the server behind
            // it: the client gets its error after all, in its place.
            to_client.extend_from_slice(&error);
            frame::write_ready(to_client, self.status);
            return;
        }
        info!(user = %self.key.user, "a kept statement's plan went stale: prepared again and run");
        self.retrying = true;
        let mut msgs = self.retry_msgs.split();
        let mut pending = std::mem::take(&mut self.pending);
        while let Ok(Some(total)) = frame::message_len(&mut msgs, RETRY_BYTES) {
            let msg = msgs.split_to(total);
            if self.client_message(&msg, &mut pending, to_client).is_err() {
                break;
            }
        }
        self.pending = pending;
    }
}
