//! The one connection budget both doors draw from: `PGWAY_POOL_MAX` server connections in all.
//!
//! Every server connection, whichever door opens it, holds one [`Permit`] for as long as it is
//! open. A door whose client waits for a place it can't find asks the others to give back an
//! idle connection ([`Budget::reclaim_requested`]): the PostgreSQL door keeps idle connections
//! per user and database, and one user's idle connections must not starve another user, or the
//! gRPC door.
//!
//! A reclaim costs the side that gives up the connection a new login when it needs one again,
//! and when both doors are busy that is a place handed back and forth for nothing. So a place
//! is asked for only by a taker someone waits on ([`Budget::take_while`]), only once it has
//! waited [`ASK_AFTER`] (a busy side's own connections come back within a round trip), and a
//! holder is woken only while someone still asks.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Held by an open server connection; dropping it frees its place.
pub type Permit = OwnedSemaphorePermit;

/// How long a taker waits for a place before asking the holders for one. A connection of its
/// own side given back usually comes within a statement's round trip; one taken from the other
/// side costs that side a login later, so it is asked for only by a wait longer than that.
pub const ASK_AFTER: Duration = Duration::from_millis(100);

/// How often a taker that still waits asks again: a holder with nothing idle, or with clients
/// of its own waiting, when first asked may have an idle connection to spare now.
pub const ASK_AGAIN: Duration = Duration::from_millis(250);

/// How long a shrink's collector waits for a place before it looks again.
const COLLECT_PATIENCE: Duration = Duration::from_secs(60);

/// The shared budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    /// Woken when someone asks for a place: a holder of idle connections closes one.
    reclaim: Arc<Notify>,
    /// Takers asking for a place now; a holder woken after they all got one does nothing.
    asking: Arc<AtomicUsize>,
    total: Arc<AtomicU32>,
    /// The total it started with (`PGWAY_POOL_MAX`).
    start: u32,
    /// Places a shrink ([`Budget::resize`]) still has to take back as they free.
    shrink: Arc<Shrink>,
}

/// What a shrink still owes: places to forget as connections give them back.
#[derive(Debug, Default)]
struct Shrink {
    /// Read by the collector's taker without the lock.
    owed: AtomicU32,
    /// Whether a collector runs; changed with `owed` under this lock.
    collecting: Mutex<bool>,
}

/// Counts a taker as asking for as long as it lives.
struct Asking(Arc<AtomicUsize>);

impl Asking {
    fn new(asking: &Arc<AtomicUsize>) -> Asking {
        asking.fetch_add(1, Ordering::Relaxed);
        Asking(Arc::clone(asking))
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Budget {
    pub fn new(total: u32) -> Budget {
        Budget {
            permits: Arc::new(Semaphore::new(total as usize)),
            reclaim: Arc::new(Notify::new()),
            asking: Arc::new(AtomicUsize::new(0)),
            total: Arc::new(AtomicU32::new(total)),
            start: total,
            shrink: Arc::default(),
        }
    }

    /// How many connections may be open at once.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// The total it started with (`PGWAY_POOL_MAX`).
    pub fn start(&self) -> u32 {
        self.start
    }

    /// How many are open now (more than [`Budget::total`] for a while after a shrink).
    pub fn in_use(&self) -> u32 {
        let capacity = self.total() + self.shrink.owed.load(Ordering::Relaxed);
        capacity.saturating_sub(self.permits.available_permits() as u32)
    }

    /// Changes how many connections may be open at once (the console's `SET`). More places
    /// are free at once; fewer are taken back as connections give theirs back, the holders
    /// of idle ones asked to, so no connection in use is closed. Needs the runtime when it
    /// shrinks below what is in use.
    pub fn resize(&self, total: u32) {
        // Poisoned only by a panic while holding it, which nothing here can do.
        let Ok(mut collecting) = self.shrink.collecting.lock() else {
            return;
        };
        let old = self.total.swap(total, Ordering::Relaxed);
        let owed = self.shrink.owed.load(Ordering::Relaxed);
        if total >= old {
            // What a shrink still owes is cancelled first: those places are in use.
            let grow = total - old;
            let repaid = grow.min(owed);
            self.shrink.owed.store(owed - repaid, Ordering::Relaxed);
            self.permits.add_permits((grow - repaid) as usize);
            return;
        }
        let cut = old - total;
        let forgotten = self.permits.forget_permits(cut as usize) as u32;
        let rest = cut - forgotten;
        if rest == 0 {
            return;
        }
        self.shrink.owed.store(owed + rest, Ordering::Relaxed);
        if !*collecting {
            *collecting = true;
            tokio::spawn(self.clone().collect());
        }
    }

    /// Takes back, one by one as they free, the places a shrink owes.
    async fn collect(self) {
        let owed = || self.shrink.owed.load(Ordering::Relaxed) > 0;
        loop {
            let place = self.take_while(COLLECT_PATIENCE, owed).await;
            let Ok(mut collecting) = self.shrink.collecting.lock() else {
                return;
            };
            let still = self.shrink.owed.load(Ordering::Relaxed);
            if let Some(place) = place.filter(|_| still > 0) {
                place.forget();
                self.shrink.owed.store(still - 1, Ordering::Relaxed);
            }
            if self.shrink.owed.load(Ordering::Relaxed) == 0 {
                *collecting = false;
                return;
            }
        }
    }

    /// A place now, if one is free.
    pub fn try_take(&self) -> Option<Permit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A place for a client that waits for it, waiting up to `patience` and asking the holders
    /// for one after `ask_after` (see [`Budget::take_while`], which asks after [`ASK_AFTER`]): a
    /// taker whose side has already been short for a while asks sooner.
    pub async fn take(&self, patience: Duration, ask_after: Duration) -> Option<Permit> {
        self.take_inner(patience, ask_after, || true).await
    }

    /// A place, waiting up to `patience` for as long as `needed` says someone waits for it.
    /// Places are handed out in the order takers came. After [`ASK_AFTER`] without one, and
    /// every [`ASK_AGAIN`] after that, the holders are asked to give back an idle connection;
    /// a taker no longer `needed` stops (`None`) instead of asking.
    pub async fn take_while(
        &self,
        patience: Duration,
        needed: impl Fn() -> bool,
    ) -> Option<Permit> {
        self.take_inner(patience, ASK_AFTER, needed).await
    }

    async fn take_inner(
        &self,
        patience: Duration,
        ask_after: Duration,
        needed: impl Fn() -> bool,
    ) -> Option<Permit> {
        if let Some(permit) = self.try_take() {
            return Some(permit);
        }
        let deadline = tokio::time::Instant::now() + patience;
        let acquire = self.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        let mut ask_at = tokio::time::Instant::now() + ask_after;
        let mut asking = None;
        loop {
            let slice = ask_at.min(deadline);
            match tokio::time::timeout_at(slice, &mut acquire).await {
                // The semaphore is never closed.
                Ok(permit) => return permit.ok(),
                Err(_) if slice >= deadline => return None,
                Err(_) => {}
            }
            if !needed() {
                return None;
            }
            asking.get_or_insert_with(|| Asking::new(&self.asking));
            self.reclaim.notify_waiters();
            ask_at = tokio::time::Instant::now() + ASK_AGAIN;
        }
    }

    /// Resolves when someone asks for a place; a holder should close an idle connection if
    /// it has one, unless its own clients wait for one.
    pub async fn reclaim_requested(&self) {
        loop {
            self.reclaim.notified().await;
            // The taker that asked may have got a place before this holder woke.
            if self.asking.load(Ordering::Relaxed) > 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_the_place_an_idle_holder_gives_back() {
        let budget = Budget::new(1);
        let held = budget.try_take();
        assert!(held.is_some());
        assert_eq!(budget.in_use(), 1);
        assert!(budget.try_take().is_none());
        let started = tokio::time::Instant::now();
        let holder = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget.reclaim_requested().await;
                drop(held);
                started.elapsed()
            })
        };
        let got = budget.take(Duration::from_secs(5), ASK_AFTER).await;
        assert!(got.is_some());
        // Asked only once the taker had waited for a place of its own side's to come back.
        assert!(holder.await.unwrap() >= ASK_AFTER);
        assert!(
            budget
                .take(Duration::from_millis(10), ASK_AFTER)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_resize_frees_places_at_once_and_takes_them_back_as_they_free() {
        let budget = Budget::new(2);
        let (a, b) = (budget.try_take(), budget.try_take());
        assert!(a.is_some() && b.is_some());
        budget.resize(3);
        let c = budget.try_take();
        assert!(c.is_some(), "a grown budget has a free place at once");
        budget.resize(1);
        assert_eq!((budget.total(), budget.in_use()), (1, 3));
        drop(a);
        drop(c);
        // The collector takes the two places back as they free: none is free to a taker.
        let collected = async {
            while budget.shrink.owed.load(Ordering::Relaxed) > 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), collected)
            .await
            .expect("the places given back were taken back");
        assert!(budget.try_take().is_none());
        drop(b);
        assert!(budget.try_take().is_some(), "one place is left");
        // Growing while a shrink still owes cancels the debt first.
        let held = budget.try_take().or_else(|| budget.try_take());
        budget.resize(0);
        budget.resize(2);
        drop(held);
        let both = async {
            loop {
                if let (Some(_), Some(_)) = (budget.try_take(), budget.try_take()) {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("two places after growing back to 2");
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_taker_nobody_waits_for_never_asks() {
        let budget = Budget::new(1);
        let _held = budget.try_take();
        let holder = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reclaim_requested().await })
        };
        assert!(
            budget
                .take_while(Duration::from_secs(5), || false)
                .await
                .is_none()
        );
        tokio::time::sleep(ASK_AGAIN).await;
        assert!(!holder.is_finished(), "a holder was asked for nobody");
        holder.abort();
    }

    #[tokio::test]
    async fn a_ring_nobody_asks_for_any_more_wakes_no_holder() {
        let budget = Budget::new(1);
        let holder = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reclaim_requested().await })
        };
        tokio::task::yield_now().await;
        // A ring whose taker got its place before the holder woke, as the holder sees it.
        budget.reclaim.notify_waiters();
        tokio::time::sleep(ASK_AGAIN).await;
        assert!(!holder.is_finished(), "woken with nobody asking");
        // While someone asks, the same ring wakes it.
        let _asking = Asking::new(&budget.asking);
        budget.reclaim.notify_waiters();
        tokio::time::timeout(ASK_AGAIN, holder)
            .await
            .expect("woken while someone asks")
            .unwrap();
    }
}
