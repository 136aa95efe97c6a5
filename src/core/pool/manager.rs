//! Makes the pool's connections: a place in the budget shared with the other door, the
//! connection itself, and what waiting callers are told of each attempt.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::metrics::counter;
use bb8::ManageConnection;
use lru::LruCache;
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::{PgConn, PoolConfig, PoolShared};
use crate::core::budget::{Place, Share};
use crate::core::dbtls::DatabaseTls;
use crate::core::error::ConnectError;
use crate::core::telemetry as metrics;

/// Makes connections for bb8: one at a time per pool slot, with a jittered backoff after
/// failures, publishing each outcome for the callers waiting in [`super::Pool::get`].
#[derive(Debug)]
pub struct ConnectionManager {
    database: Arc<tokio_postgres::Config>,
    tls: DatabaseTls,
    statement_cache_size: NonZeroUsize,
    max_lifetime: Duration,
    next_id: AtomicU64,
    consecutive_failures: AtomicU32,
    /// At most this many connects at a time: a database that just came back is not met by a
    /// storm of simultaneous handshakes.
    connects: Semaphore,
    pub(super) outcomes: watch::Sender<ConnectOutcome>,
    pool: Arc<PoolShared>,
    /// This pool's share of the places shared with the other door; each connection holds one
    /// while open.
    share: Share,
    /// How long a connect waits for a place in the budget.
    budget_patience: Duration,
}

/// The latest connect attempt's outcome, as seen by waiting callers.
#[derive(Debug, Clone, Default)]
pub struct ConnectOutcome {
    /// `None` when the attempt succeeded.
    pub error: Option<Arc<ConnectError>>,
}

/// Backoff after `failures` failed connects in a row: exponential from 50 ms up to 1 s, with
/// full jitter, so a restart of the database doesn't meet a synchronised storm of reconnects.
fn connect_backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    crate::core::retry::Backoff::CONNECT.delay(failures)
}

impl ConnectionManager {
    pub(super) fn new(
        database: tokio_postgres::Config,
        tls: DatabaseTls,
        config: &PoolConfig,
        pool: Arc<PoolShared>,
        share: Share,
    ) -> Self {
        ConnectionManager {
            share,
            budget_patience: config.acquire_timeout,
            database: Arc::new(database),
            tls,
            statement_cache_size: config.statement_cache_size,
            max_lifetime: config.max_lifetime,
            next_id: AtomicU64::new(1),
            consecutive_failures: AtomicU32::new(0),
            connects: Semaphore::new(config.max_concurrent_connects),
            outcomes: watch::Sender::new(ConnectOutcome::default()),
            pool,
        }
    }

    fn publish(&self, error: Option<Arc<ConnectError>>) {
        // Sent even when it equals the last outcome: every attempt wakes the waiters.
        self.outcomes.send_modify(|outcome| outcome.error = error);
    }

    /// Counts and publishes a failed attempt, which the next one backs off from.
    fn failed(&self, error: ConnectError) -> ConnectError {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        counter!(metrics::CONNECTION_ERRORS, "kind" => error.kind()).increment(1);
        self.publish(Some(Arc::new(error.clone())));
        error
    }

    /// A spare connection not opened for want of a free place: no failure (nothing to back
    /// off from). bb8 reports it only to its error sink, and wakes nobody: a caller that came
    /// in meanwhile may be waiting on this very attempt, so the waiters are woken to ask bb8
    /// anew, which makes an attempt of their own.
    fn no_spare_place(&self) -> ConnectError {
        debug!("no free place for a spare connection");
        self.publish(None);
        ConnectError {
            message: "no free place in PGWAY_POOL_MAX for a spare connection".into(),
            ..ConnectError::default()
        }
    }

    /// A place in the budget for a new connection. One that a caller waits for waits for a
    /// place too, asking the other door for one; a spare one (bb8 keeping `PGWAY_POOL_MIN`
    /// idle) takes only a free place, or none (`Ok(None)`): taking one from the other door
    /// would close a connection its clients use, only for that door to ask for it back, and a
    /// spare is tried again at the next checkout or reaper run anyway.
    async fn place(&self) -> Result<Option<Place>, ConnectError> {
        if let Some(place) = self.share.try_take() {
            return Ok(Some(place));
        }
        let wanted = || self.pool.wanting.load(Ordering::Relaxed) > 0;
        if !wanted() {
            return Ok(None);
        }
        match self.share.take_while(self.budget_patience, wanted).await {
            Some(place) => Ok(Some(place)),
            // The callers it was for got connections that came back.
            None if !wanted() => Ok(None),
            None => Err(ConnectError {
                message: format!(
                    "all {} server connections of PGWAY_POOL_MAX are in use by the other door",
                    self.share.budget().total()
                ),
                ..ConnectError::default()
            }),
        }
    }

    async fn open(&self, id: u64, place: Place) -> Result<PgConn, ConnectError> {
        let (client, connection) = self.tls.connect(&self.database).await?;
        // The connection task is where a broken connection's reason lives: log it with the id.
        // It holds the connection's place in the budget, so the place is given back when the
        // socket closes, not when the pool lets go of the client: a connection dropped with a
        // query in flight keeps its backend until the answer (or the cancel) comes, and no
        // other connection may take its place meanwhile.
        let pool = Arc::clone(&self.pool);
        let giver = place.giver();
        tokio::spawn(async move {
            let _place = place;
            if let Err(error) = connection.await {
                warn!(conn_id = id, %error, "connection ended with an error");
            }
            pool.ended.store(true, Ordering::Relaxed);
        });
        let backend_pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let jitter = self
            .max_lifetime
            .mul_f64(rand::rng().random_range(0.0..0.1));
        Ok(PgConn {
            id,
            backend_pid,
            cancel_token: client.cancel_token(),
            database: Arc::clone(&self.database),
            tls: self.tls.clone(),
            client,
            statements: LruCache::new(self.statement_cache_size),
            retire_at: Instant::now() + self.max_lifetime - jitter,
            busy: false,
            discard: None,
            dirty: false,
            pool: Arc::clone(&self.pool),
            giver,
        })
    }
}

impl ManageConnection for ConnectionManager {
    // Boxed: bb8 moves a connection by value about ten times on every checkout and return, and
    // a `PgConn` is nearly 500 bytes where a box is one word. Counted under callgrind, that took
    // 2.6–2.8 k instructions (3%) off each point select.
    type Connection = Box<PgConn>;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Box<PgConn>, ConnectError> {
        // The semaphore lives as long as the manager and is never closed.
        let _permit = self.connects.acquire().await.map_err(|_| ConnectError {
            message: "the pool is shutting down".into(),
            ..ConnectError::default()
        })?;
        let failures = self.consecutive_failures.load(Ordering::Relaxed);
        let backoff = connect_backoff(failures);
        tokio::time::sleep(backoff).await;
        let place = match self.place().await {
            Ok(Some(place)) => place,
            Ok(None) => return Err(self.no_spare_place()),
            Err(error) => {
                warn!(%error, "connect failed");
                return Err(self.failed(error));
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        info!(
            conn_id = id,
            attempt = failures + 1,
            backoff_ms = backoff.as_millis() as u64,
            "connecting"
        );
        match self.open(id, place).await {
            Ok(conn) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                counter!(metrics::CONNECTIONS_OPENED).increment(1);
                info!(conn_id = id, backend_pid = conn.backend_pid, "connected");
                self.publish(None);
                Ok(Box::new(conn))
            }
            Err(error) => {
                warn!(conn_id = id, error = %error, sqlstate = error.sqlstate.as_ref().map(|s| s.code()), "connect failed");
                Err(self.failed(error))
            }
        }
    }

    async fn is_valid(&self, conn: &mut Box<PgConn>) -> Result<(), ConnectError> {
        // Only used if test_on_check_out is turned on, which pgway doesn't do.
        conn.client
            .simple_query("")
            .await
            .map(drop)
            .map_err(ConnectError::from)
    }

    fn has_broken(&self, conn: &mut Box<PgConn>) -> bool {
        // A dirty connection here was not reset (the guard's Drop resets before returning).
        conn.busy
            || conn.dirty
            || conn.discard.is_some()
            || conn.client.is_closed()
            || Instant::now() >= conn.retire_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(connect_backoff(0), Duration::ZERO);
        for failures in 1..40 {
            let cap = Duration::from_millis(50)
                .saturating_mul(1 << failures.min(10))
                .min(Duration::from_secs(1));
            assert!(connect_backoff(failures) <= cap);
        }
    }
}
