//! Waiting for a connection: the line of each key, and the budget's places.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::counter;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{AcquireError, Hasher, PoolKey, Pooled, Pools, Waiting};
use crate::core::budget::{ASK_AFTER, Place};
use crate::core::retry::Backoff;
use crate::core::telemetry as names;
use crate::pgwire::scram::Credential;

/// The clients waiting for a connection of each key.
pub(super) type Lines = Mutex<HashMap<Arc<PoolKey>, Line, Hasher>>;

/// The clients waiting for a connection of one key, longest-waiting first.
pub(super) type Line = VecDeque<Waiter>;

/// A client in a line.
#[derive(Debug)]
pub(super) struct Waiter {
    /// Where a connection given back is handed over; dropped to make the client look again.
    pub(super) handoff: oneshot::Sender<Pooled>,
    /// Its deadline, when it waits on `handoff` alone (see [`Pools::join_line`]): the
    /// sweep drops `handoff` then.
    alone_until: Option<Instant>,
}

/// How often the lines are swept while a client waits alone: its wait ends within this of its
/// deadline, and a place freed without a nudge (a login that failed, the console's `SET
/// pool_size`, the other door taking a place) is seen within it.
const SWEEP: Duration = Duration::from_millis(10);

/// How a wait in line ended.
enum Waited {
    Conn(Pooled),
    Place(Place),
    /// Let go (the pool shut, a place freed, the deadline passed): the client looks again.
    Again,
    TimedOut,
}

/// Lets the first client waiting alone look again, by dropping its channel: a place has just
/// freed. Never blocks: a connection may close anywhere, and a busy lock means the sweep
/// will see the place instead.
pub(super) fn nudge(lines: &Lines) {
    let Ok(mut lines) = lines.try_lock() else {
        return;
    };
    for line in lines.values_mut() {
        while let Some(at) = line.iter().position(|w| w.alone_until.is_some()) {
            let gone = line.remove(at).is_some_and(|w| w.handoff.is_closed());
            if !gone {
                return;
            }
        }
    }
}

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
        self.acquire_at(key, credential, std::time::Instant::now())
            .await
    }

    /// [`Pools::acquire`] from `now` (the caller's reading of the clock).
    pub async fn acquire_at(
        &self,
        key: &Arc<PoolKey>,
        credential: &Credential,
        now: std::time::Instant,
    ) -> Result<Pooled, AcquireError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(AcquireError::Closing);
        }
        if let Some(conn) = self.take_idle(key, now) {
            inner.wait_seconds.record(0.0);
            return Ok(conn);
        }
        let started = Instant::from_std(now);
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
        started: Instant,
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
        // Let go from its line once: it keeps its turn when it joins again.
        let mut again = false;
        loop {
            if inner.closed.load(Ordering::Relaxed) {
                return Err(AcquireError::Closing);
            }
            if now >= deadline {
                return Err(AcquireError::Timeout { last });
            }
            if !std::mem::take(&mut first)
                && let Some(conn) = self.take_idle(key, now.into_std())
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
                None => match self.wait_in_line(key, now, deadline, again).await {
                    Waited::Conn(conn) => return Ok(conn),
                    Waited::Place(place) => place,
                    Waited::Again => {
                        now = Instant::now();
                        again = true;
                        continue;
                    }
                    Waited::TimedOut => return Err(AcquireError::Timeout { last }),
                },
            };
            match self.open(key, credential, place).await {
                Ok(conn) => return Ok(conn),
                Err(error) if error.is_permanent() => return Err(AcquireError::Login(error)),
                Err(error) => {
                    counter!(names::CONNECTION_ERRORS, "kind" => "network").increment(1);
                    last = Some(error);
                    failures += 1;
                    let wait = Backoff::CONNECT.delay(failures);
                    if Instant::now() + wait >= deadline {
                        return Err(AcquireError::Timeout { last });
                    }
                    tokio::time::sleep(wait).await;
                    now = Instant::now();
                }
            }
        }
    }

    /// In line for the next connection of this key given back, first come first served; or
    /// for a place in the budget, whichever comes first.
    async fn wait_in_line(
        &self,
        key: &Arc<PoolKey>,
        now: Instant,
        deadline: Instant,
        again: bool,
    ) -> Waited {
        let share = &self.inner.share;
        share.short_as_of(now);
        let (handoff, mut received) = oneshot::channel();
        let ask_after = self.join_line(key, handoff, now, deadline, again);
        // One may have come back between the look and joining the line.
        if let Some(conn) = self.take_idle(key, now.into_std()) {
            return Waited::Conn(conn);
        }
        let Some(ask_after) = ask_after else {
            return match received.await {
                Ok(conn) => Waited::Conn(conn),
                Err(_) => Waited::Again,
            };
        };
        let place = tokio::select! {
            given = &mut received => match given {
                Ok(conn) => return Waited::Conn(conn),
                // The pool shut: its waiters' lines were dropped.
                Err(_) => return Waited::Again,
            },
            place = share.take_until(now, deadline, ask_after) => place,
        };
        // A connection may have been handed over in the same instant: it is taken rather
        // than dropped with the line (a new login saved).
        if let Ok(conn) = received.try_recv() {
            return Waited::Conn(conn);
        }
        match place {
            Some(place) => Waited::Place(place),
            None => Waited::TimedOut,
        }
    }

    /// Puts a client in the line of `key`: at its end, or at its head `again` (a client let go
    /// to look again, whose place a newcomer or another key took, keeps its turn). Returns how
    /// much longer it waits before asking the other door for a place (see `queued_since`), or
    /// `None` when it waits alone.
    ///
    /// Alone: the door holds every place of the budget and no other key waits, so only a
    /// connection of its own can help, given back (handed over on the line) or closed (its
    /// place freed, and the client nudged). Then the client waits on its line and nothing
    /// else, its deadline kept by [`Pools::sweep_lines`]: no place in the budget's queue and
    /// no timer of its own, which at 100 clients on a pool of 20 (where nearly every
    /// transaction waits) cost about 2,000 instructions a transaction (callgrind).
    fn join_line(
        &self,
        key: &Arc<PoolKey>,
        handoff: oneshot::Sender<Pooled>,
        now: Instant,
        deadline: Instant,
        again: bool,
    ) -> Option<Duration> {
        let inner = &self.inner;
        let now = now
            .into_std()
            .saturating_duration_since(inner.epoch)
            .as_millis() as u64
            + 1;
        // Poisoned only by a panic elsewhere; the lines are still whole. Giving up here would
        // drop `handoff`, and the client, let go at once, would come straight back: a spin.
        let mut waiters = inner
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let alone =
            inner.share.holds_all() && waiters.iter().all(|(k, line)| k == key || line.is_empty());
        let line = waiters.entry(Arc::clone(key)).or_default();
        let waiter = Waiter {
            handoff,
            alone_until: alone.then_some(deadline),
        };
        if again {
            line.push_front(waiter);
        } else {
            line.push_back(waiter);
        }
        if alone && !inner.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(self.clone().sweep_lines());
        }
        let since =
            match inner
                .queued_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        drop(waiters);
        (!alone).then(|| ASK_AFTER.saturating_sub(Duration::from_millis(now - since.min(now))))
    }

    /// Every [`SWEEP`] while any client waits alone: lets go those past their deadline, and
    /// all of them once the door no longer holds every place (one is free, or another side
    /// holds one to ask for), so that they take a place or wait in the budget's queue.
    async fn sweep_lines(self) {
        loop {
            tokio::time::sleep(SWEEP).await;
            let now = Instant::now();
            // Poisoned only by a panic elsewhere: the lines are still whole, and a sweep that
            // stopped would leave the clients waiting alone with no deadline.
            let mut lines = self
                .inner
                .waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let holds_all = self.inner.share.holds_all();
            let mut alone = false;
            for line in lines.values_mut() {
                line.retain(|waiter| {
                    let Some(until) = waiter.alone_until else {
                        return true;
                    };
                    let stays = holds_all && now < until && !waiter.handoff.is_closed();
                    alone |= stays;
                    stays
                });
            }
            if !alone {
                // Under the lock: a client joining alone after this starts a sweep again.
                self.inner.sweeping.store(false, Ordering::Relaxed);
                return;
            }
        }
    }
}
