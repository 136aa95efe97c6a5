//! The bounds on what a client may hold: reached, the session ends with PostgreSQL's
//! SQLSTATE for it, counted in `pgway_pg_timeouts_total{kind}`.

use super::*;

impl Session {
    /// Ends the session at a bound it reached (or at shutdown), telling the client why with
    /// PostgreSQL's SQLSTATE, and counting it.
    pub(super) async fn bound_reached(&mut self, event: Event) -> Ended {
        let (kind, code, message) = match event {
            Event::IdleInTransaction => (
                Some("idle_transaction"),
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            ),
            Event::ClientIdle => (
                Some("client_idle"),
                "57P05",
                "terminating connection due to idle-session timeout",
            ),
            Event::TransactionTimeout => (
                Some("transaction"),
                "25P04",
                "terminating connection due to transaction timeout",
            ),
            // Event::Stop (reads never come here).
            _ => (
                None,
                "57P01",
                "terminating connection due to administrator command",
            ),
        };
        if let Some(kind) = kind {
            self.door.timeouts.count(kind);
        }
        self.terminate(code, message).await
    }

    /// Whether the server connection waits on the client, not the other way round: idle in
    /// a transaction, in COPY FROM STDIN, or in the middle of a pipeline with no Sync: either
    /// with no Flush behind it (PostgreSQL answers nothing until one comes) or with everything
    /// it asked for answered (the backend still holds the pipeline's implicit transaction).
    pub(super) fn server_waits_on_client(&self) -> bool {
        let idle_in_tx = self.expect.is_empty() && matches!(self.status, b'T' | b'E');
        let pipeline = self.unsynced && (!self.flushed || self.expect.is_empty());
        idle_in_tx || self.copy_in || pipeline
    }

    /// Ends the session as the door stops (or an administrator ends it): 57P01, PostgreSQL's
    /// words for it.
    pub(super) async fn shut_out(&mut self) -> Ended {
        self.terminate(
            "57P01",
            "terminating connection due to administrator command",
        )
        .await
    }
}
