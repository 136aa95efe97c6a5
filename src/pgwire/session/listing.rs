//! What a session tells the door's roster: its state at each link and unlink, and the
//! figures of its database (`SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS`); and its wait
//! while its database is paused (the console's PAUSE).

use super::*;
use crate::pgwire::pool::AcquireError;
use crate::pgwire::roster::{DbStats, now_us, us_at};

impl Session {
    /// About to wait (while its database is paused).
    pub(super) fn listed_waiting(&self) {
        self.listed.entry.waiting(now_us());
    }

    /// A server connection for the transaction the client starts: the connection, when the
    /// client began to wait for it and when it got it. Listed as waiting while it waits (and
    /// through a PAUSE); when a connection is at hand at once, as at light load nearly always,
    /// the clock is read once.
    pub(super) async fn acquire_listed(
        &mut self,
    ) -> Result<Result<(Pooled, u64, u64), AcquireError>, Ended> {
        loop {
            if self.door.pause.any() {
                self.wait_while_paused().await?;
            }
            let now = std::time::Instant::now();
            let began = us_at(now);
            let pools = &self.door.pools;
            let mut acquiring = std::pin::pin!(pools.acquire_at(&self.key, &self.credential, now));
            // Polled with the task's own waker from the first poll: a first poll with a no-op
            // waker (`now_or_never`) registered that waker in the line's channel, and the
            // second poll registered the real one over it (one more poll of the channel and
            // its atomics at every wait, about 90 instructions).
            let mut waited = false;
            let got = std::future::poll_fn(|cx| {
                let poll = acquiring.as_mut().poll(cx);
                if poll.is_pending() && !waited {
                    waited = true;
                    self.door.clients.waiting(1);
                    self.listed.entry.waiting(began);
                }
                poll
            })
            .await;
            let got = if waited {
                self.door.clients.waiting(-1);
                got.map(|server| (server, began, now_us()))
            } else {
                got.map(|server| (server, began, began))
            };
            match got {
                // PAUSE came while this client waited in line: the connection goes back and
                // the client waits with the others.
                Ok((server, ..)) if self.door.pause.covers(&self.key.database) => {
                    pools.release(&self.key, server);
                }
                got => return Ok(got),
            }
        }
    }

    /// Linked to `server` at `now`, after waiting since `began`.
    pub(super) fn listed_linked(&self, server: &ServerConn, began: u64, now: u64) {
        DbStats::add(&self.stats.wait_us, now.saturating_sub(began));
        DbStats::add(&self.stats.server_assignments, 1);
        self.listed.entry.linked(server.id, now);
        if let Some(entry) = server.listed() {
            entry.linked(self.listed.entry.id, now);
        }
    }

    /// Not linked any more (waiting for nothing, or giving `server` back).
    pub(super) fn listed_unlinked(&self, server: Option<&ServerConn>) {
        self.listed_unlinked_at(server, now_us());
    }

    /// [`Session::listed_unlinked`] at `now`.
    pub(super) fn listed_unlinked_at(&self, server: Option<&ServerConn>, now: u64) {
        if let Some(server) = server {
            let since = self.listed.entry.since();
            DbStats::add(&self.stats.xact_us, now.saturating_sub(since));
            if let Some(entry) = server.listed() {
                entry.unlinked(now);
            }
        }
        self.listed.entry.unlinked();
    }

    /// While its database is paused, a client starting a transaction waits (listed as
    /// waiting) until RESUME; a stop of the door meanwhile ends it as at any other wait.
    pub(super) async fn wait_while_paused(&mut self) -> Result<(), Ended> {
        let database = Arc::clone(&self.key);
        while self.door.pause.covers(&database.database) {
            if self.door.phase() >= Phase::Stopping || self.listed.entry.killed() {
                return Err(self.shut_out().await);
            }
            self.door.clients.waiting(1);
            self.listed_waiting();
            let resumed = tokio::select! {
                () = self.door.pause.until_resumed(&database.database) => true,
                () = self.cancel.bell.rung() => false,
            };
            self.door.clients.waiting(-1);
            self.listed_unlinked(None);
            if resumed {
                break;
            }
        }
        Ok(())
    }
}
