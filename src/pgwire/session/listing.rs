//! What a session tells the door's roster: its state at each link and unlink, and the
//! figures of its database (`SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS`); and its wait
//! while its database is paused (the console's PAUSE).

use super::*;
use crate::pgwire::roster::{DbStats, now_us};

impl Session {
    /// About to wait for a server connection: returns when the wait began.
    pub(super) fn listed_waiting(&self) -> u64 {
        let now = now_us();
        self.listed.entry.waiting(now);
        now
    }

    /// Linked to `server` after waiting since `began`.
    pub(super) fn listed_linked(&self, server: &ServerConn, began: u64) {
        let now = now_us();
        DbStats::add(&self.stats.wait_us, now.saturating_sub(began));
        DbStats::add(&self.stats.server_assignments, 1);
        self.listed.entry.linked(server.id, now);
        if let Some(entry) = server.listed() {
            entry.linked(self.listed.entry.id, now);
        }
    }

    /// Not linked any more (waiting for nothing, or giving `server` back).
    pub(super) fn listed_unlinked(&self, server: Option<&ServerConn>) {
        let now = now_us();
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
