//! The one connection budget both doors draw from: `PGWAY_POOL_MAX` server connections in all.
//!
//! Each door draws through a [`Share`] of its own, and every server connection, whichever door
//! opens it, holds one [`Place`] for as long as it is open. A door whose client waits for a
//! place it can't find asks the others to give back an idle connection
//! ([`Share::reclaim_requested`]): the PostgreSQL door keeps idle connections per user and
//! database, and one user's idle connections must not starve another user, or the gRPC door.
//!
//! A reclaim costs the side that gives up the connection a new login when it needs one again,
//! and when both doors are busy that is a place handed back and forth for nothing. So:
//! - a place is asked for only by a taker someone waits on ([`Share::take_while`]), only once
//!   its side has been short for [`ASK_AFTER`] (a busy side's own connections come back within
//!   a round trip);
//! - a side that is itself short gives a place only while it holds at least two more than the
//!   side asking, so two busy doors settle on an even split instead of trading places;
//! - a place given back goes to the side that asked ([`Place::give_on_drop`]), not to the first
//!   taker in the semaphore's line, which is often the giving side's own connect, queued
//!   earlier: the place would go straight back, and be asked for again (measured: 272 reclaims
//!   in 7.6 s with 16 callers on each door and a budget of 8).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a side is short before it asks the holders for a place. A connection of its own
/// side given back usually comes within a statement's round trip; one taken from the other
/// side costs that side a login later, so it is asked for only by a wait longer than that.
/// A side short within this long counts as busy when asked to give.
pub const ASK_AFTER: Duration = Duration::from_millis(100);

/// How often a taker that still waits asks again: a holder with nothing idle, or with clients
/// of its own waiting, when first asked may have an idle connection to spare now.
pub const ASK_AGAIN: Duration = Duration::from_millis(250);

/// How long a shrink's collector waits for a place before it looks again.
const COLLECT_PATIENCE: Duration = Duration::from_secs(60);

/// The shared budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    permits: Arc<Semaphore>,
    /// Woken when someone asks for a place: a holder of idle connections may close one.
    reclaim: Notify,
    /// Woken when a place is given back to the askers.
    given: Notify,
    /// Takers asking now, on every side: read on each release's path without the lock.
    askers: AtomicUsize,
    /// Places marked to be given whose connections have not closed yet (a socket closes
    /// after its connection is let go): they count as given, or every connection coming back
    /// before the first closed would be given for the same asker.
    promised: AtomicUsize,
    /// The sides, who asks and the places given back for them, under one lock so that a place
    /// is never given to nobody.
    table: Mutex<Table>,
    total: AtomicU32,
    /// The total it started with (`PGWAY_POOL_MAX`).
    start: u32,
    /// Places a shrink ([`Budget::resize`]) still has to take back as they free.
    shrink: Shrink,
    /// The shrink's collector takes places as a side of its own.
    collector: Arc<Side>,
    /// What the sides' `short_at` count from.
    epoch: std::time::Instant,
}

#[derive(Debug, Default)]
struct Table {
    sides: Vec<Arc<Side>>,
    /// Places given back, with the side that gave each: for any other side that asks.
    gifts: Vec<(usize, OwnedSemaphorePermit)>,
}

impl Table {
    /// Whether a side other than `from` asks for a place now.
    fn someone_asks_but(&self, from: usize) -> bool {
        self.sides
            .iter()
            .any(|side| side.id != from && side.asking.load(Ordering::Relaxed) > 0)
    }
}

/// One door's part of the budget.
#[derive(Debug)]
struct Side {
    id: usize,
    /// Places held now.
    held: AtomicU32,
    /// Takers of this side asking for a place now; changed under the table's lock.
    asking: AtomicUsize,
    /// When a client of this side last had to wait for a connection, in milliseconds from
    /// the budget's epoch, plus one (0: never).
    short_at: AtomicU64,
}

/// What a shrink still owes: places to forget as connections give them back.
#[derive(Debug, Default)]
struct Shrink {
    /// Read by the collector's taker without the lock.
    owed: AtomicU32,
    /// Whether a collector runs; changed with `owed` under this lock.
    collecting: Mutex<bool>,
}

/// A door's handle on the budget: the places it takes count as its own. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Share {
    budget: Budget,
    side: Arc<Side>,
}

/// Held by an open server connection; dropping it frees its place.
#[derive(Debug)]
pub struct Place {
    permit: Option<OwnedSemaphorePermit>,
    side: Arc<Side>,
    budget: Budget,
    /// [`LIVE`], [`PROMISED`] when the connection was closed to give its place to another
    /// side that asked, [`DROPPED`] once it dropped.
    give: Arc<AtomicU8>,
}

/// A place's `give`: held, not promised.
const LIVE: u8 = 0;
/// To be given to an asker when it drops (counted in `promised` until then).
const PROMISED: u8 = 1;
/// Dropped: a promise made now (the connection's socket ended first) counts for nothing.
const DROPPED: u8 = 2;

/// Marks a [`Place`] held elsewhere (by a connection's task) as given back when it drops.
#[derive(Debug, Clone)]
pub struct Giver {
    give: Arc<AtomicU8>,
    side: Arc<Side>,
    budget: Budget,
}

impl Giver {
    /// The place goes to the side that asked, when the connection holding it closes.
    pub fn give_on_drop(&self) {
        self.budget.promise(&self.give);
    }

    /// [`Place::give_if_asked`], for the place this stands for.
    pub fn give_if_asked(&self) -> bool {
        self.budget.give_if_asked(&self.side, &self.give)
    }
}

impl Place {
    /// The place goes to the side that asked when it drops, not back to the line.
    pub fn give_on_drop(&self) {
        self.budget.promise(&self.give);
    }

    /// For a connection coming back to its pool: whether another side asks for a place and
    /// this one should give it (above an even split, as in [`Share::reclaim_requested`]); if
    /// so the place is marked to be given when it drops, and the connection should be closed,
    /// not handed on.
    pub fn give_if_asked(&self) -> bool {
        self.budget.give_if_asked(&self.side, &self.give)
    }

    /// A handle that can [`Giver::give_on_drop`] this place from wherever it is.
    pub fn giver(&self) -> Giver {
        Giver {
            give: Arc::clone(&self.give),
            side: Arc::clone(&self.side),
            budget: self.budget.clone(),
        }
    }

    /// Takes the place out of the budget for good (a shrink).
    fn forget(mut self) {
        if let Some(permit) = self.permit.take() {
            permit.forget();
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.side.held.fetch_sub(1, Ordering::Relaxed);
        if self.give.swap(DROPPED, Ordering::Relaxed) != PROMISED {
            return;
        }
        self.budget.shared.promised.fetch_sub(1, Ordering::Relaxed);
        if let Some(permit) = self.permit.take() {
            self.budget.give(self.side.id, permit);
        }
    }
}

/// Counts a taker as asking for as long as it lives.
struct Asking {
    budget: Budget,
    side: Arc<Side>,
}

impl Asking {
    fn new(budget: &Budget, side: &Arc<Side>) -> Asking {
        let _table = budget.table();
        side.asking.fetch_add(1, Ordering::Relaxed);
        budget.shared.askers.fetch_add(1, Ordering::Relaxed);
        Asking {
            budget: budget.clone(),
            side: Arc::clone(side),
        }
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        // Places given back for nobody now return to the line (dropped after the lock).
        let mut orphans = Vec::new();
        let mut table = self.budget.table();
        self.side.asking.fetch_sub(1, Ordering::Relaxed);
        self.budget.shared.askers.fetch_sub(1, Ordering::Relaxed);
        let mut i = 0;
        while i < table.gifts.len() {
            if table.someone_asks_but(table.gifts[i].0) {
                i += 1;
            } else {
                orphans.push(table.gifts.swap_remove(i));
            }
        }
        let left = !table.gifts.is_empty();
        drop(table);
        drop(orphans);
        // Places a shrink's collector kept from the doors' askers are theirs once it stops.
        if left && self.side.id == self.budget.shared.collector.id {
            self.budget.shared.given.notify_waiters();
        }
    }
}

impl Budget {
    pub fn new(total: u32) -> Budget {
        let collector = Arc::new(Side::new(0));
        Budget {
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(total as usize)),
                reclaim: Notify::new(),
                given: Notify::new(),
                askers: AtomicUsize::new(0),
                promised: AtomicUsize::new(0),
                table: Mutex::new(Table {
                    sides: vec![Arc::clone(&collector)],
                    gifts: Vec::new(),
                }),
                total: AtomicU32::new(total),
                start: total,
                shrink: Shrink::default(),
                collector,
                epoch: std::time::Instant::now(),
            }),
        }
    }

    /// A new side of the budget, for one door.
    pub fn share(&self) -> Share {
        let mut table = self.table();
        let side = Arc::new(Side::new(table.sides.len()));
        table.sides.push(Arc::clone(&side));
        Share {
            budget: self.clone(),
            side,
        }
    }

    /// The table; its data stays whole whatever panicked while holding it (counters and a
    /// list, each changed in one step), so a poisoned lock is taken as it is.
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.shared
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many connections may be open at once.
    pub fn total(&self) -> u32 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// The total it started with (`PGWAY_POOL_MAX`).
    pub fn start(&self) -> u32 {
        self.shared.start
    }

    /// How many are open now (more than [`Budget::total`] for a while after a shrink).
    pub fn in_use(&self) -> u32 {
        let capacity = self.total() + self.shared.shrink.owed.load(Ordering::Relaxed);
        capacity.saturating_sub(self.shared.permits.available_permits() as u32)
    }

    /// Changes how many connections may be open at once (the console's `SET`). More places
    /// are free at once; fewer are taken back as connections give theirs back, the holders
    /// of idle ones asked to, so no connection in use is closed. Needs the runtime when it
    /// shrinks below what is in use.
    pub fn resize(&self, total: u32) {
        let shrink = &self.shared.shrink;
        // Poisoned only by a panic while holding it, which nothing here can do.
        let Ok(mut collecting) = shrink.collecting.lock() else {
            return;
        };
        let old = self.shared.total.swap(total, Ordering::Relaxed);
        let owed = shrink.owed.load(Ordering::Relaxed);
        if total >= old {
            // What a shrink still owes is cancelled first: those places are in use.
            let grow = total - old;
            let repaid = grow.min(owed);
            shrink.owed.store(owed - repaid, Ordering::Relaxed);
            self.shared.permits.add_permits((grow - repaid) as usize);
            return;
        }
        let cut = old - total;
        let forgotten = self.shared.permits.forget_permits(cut as usize) as u32;
        let rest = cut - forgotten;
        if rest == 0 {
            return;
        }
        shrink.owed.store(owed + rest, Ordering::Relaxed);
        if !*collecting {
            *collecting = true;
            let collector = Share {
                budget: self.clone(),
                side: Arc::clone(&self.shared.collector),
            };
            tokio::spawn(collector.collect());
        }
    }

    /// Marks a place as given when it drops (once, and only while it is held). Counted
    /// before it is marked, so that a drop in between never takes `promised` below zero.
    fn promise(&self, give: &AtomicU8) {
        self.shared.promised.fetch_add(1, Ordering::Relaxed);
        if give
            .compare_exchange(LIVE, PROMISED, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.shared.promised.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Marks `give` if [`Budget::asked_to_give`] says `side` should give its place.
    fn give_if_asked(&self, side: &Side, give: &AtomicU8) -> bool {
        let asked = self.asked_to_give(side);
        if asked {
            self.promise(give);
        }
        asked
    }

    /// Whether another side asks for a place now and `side` should give one: for a holder
    /// about to hand a connection given back to a client of its own, which closes it instead.
    /// A connection in use counts its side as busy, so this gives only above an even split
    /// (see [`Share::reclaim_requested`]): measured, a side that gave every connection coming
    /// back while the other asked gave all 19 of its connections in the same millisecond, and
    /// then asked for half of them back. Costs two atomic loads while nobody else asks.
    fn asked_to_give(&self, side: &Side) -> bool {
        let askers = self.shared.askers.load(Ordering::Relaxed);
        askers > side.asking.load(Ordering::Relaxed) && self.should_give(side, true)
    }

    /// Whether `side` should give a place to a side that asks; `busy`: whether clients of
    /// `side` wait for connections too.
    fn should_give(&self, side: &Side, busy: bool) -> bool {
        let table = self.table();
        // Places given and not taken yet count as the askers': several connections coming
        // back at once must not all go for one asker (the rest would return to the line, and
        // be asked for again).
        let given = table.gifts.len() + self.shared.promised.load(Ordering::Relaxed);
        // A shrink takes places from whoever has one to spare (it is not a side to split
        // with), as many as it still owes.
        if self.shrinking() {
            return given < self.shared.shrink.owed.load(Ordering::Relaxed) as usize;
        }
        // Of the other sides that ask: how many takers, and the fewest places one holds.
        let (askers, fewest) = table
            .sides
            .iter()
            .filter(|other| other.id != side.id)
            .map(|other| {
                (
                    other.asking.load(Ordering::Relaxed),
                    other.held.load(Ordering::Relaxed),
                )
            })
            .filter(|&(asking, _)| asking > 0)
            .fold(
                (0, None),
                |(askers, fewest): (usize, Option<u32>), (asking, held)| {
                    (
                        askers + asking,
                        Some(fewest.map_or(held, |fewest| fewest.min(held))),
                    )
                },
            );
        drop(table);
        // The taker that asked may have got a place before this holder woke.
        let Some(fewest) = fewest.filter(|_| given < askers) else {
            return false;
        };
        let fewest = fewest + given as u32;
        let held = side.held.load(Ordering::Relaxed);
        // A side with no place at all is served even by a busy holder of one: its clients
        // would otherwise wait out their timeouts (a budget of one is shared in turns).
        !busy || held >= fewest + 2 || (fewest == 0 && held >= 1)
    }

    /// Whether a shrink's collector asks for places now.
    fn shrinking(&self) -> bool {
        self.shared.collector.asking.load(Ordering::Relaxed) > 0
    }

    /// A place given back by side `from`: to the other sides' askers, or to the line if none
    /// asks any more.
    fn give(&self, from: usize, permit: OwnedSemaphorePermit) {
        let mut table = self.table();
        if table.someone_asks_but(from) {
            table.gifts.push((from, permit));
            drop(table);
            self.shared.given.notify_waiters();
        } else {
            drop(table);
            drop(permit);
        }
    }
}

impl Side {
    fn new(id: usize) -> Side {
        Side {
            id,
            held: AtomicU32::new(0),
            asking: AtomicUsize::new(0),
            short_at: AtomicU64::new(0),
        }
    }
}

impl Share {
    /// The budget this is a share of.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// How many places this side holds now.
    #[cfg(test)]
    fn held(&self) -> u32 {
        self.side.held.load(Ordering::Relaxed)
    }

    /// Notes that a client of this side waits for a connection: the side is busy, and a
    /// holder asked for a place gives one only above an even split (see [`Share::reclaim_requested`]).
    pub fn short(&self) {
        self.side.short_at.store(self.now(), Ordering::Relaxed);
    }

    /// [`Share::short`] as of `now`, for a caller that has just read the clock (one read
    /// fewer on the path of every wait).
    pub fn short_as_of(&self, now: tokio::time::Instant) {
        self.side
            .short_at
            .store(self.millis_at(now.into_std()), Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.millis_at(std::time::Instant::now())
    }

    /// `at` as the sides' `short_at` count it.
    fn millis_at(&self, at: std::time::Instant) -> u64 {
        at.saturating_duration_since(self.budget.shared.epoch)
            .as_millis() as u64
            + 1
    }

    /// Whether a client of this side waited for a connection within [`ASK_AFTER`].
    fn short_lately(&self) -> bool {
        let at = self.side.short_at.load(Ordering::Relaxed);
        at != 0 && self.now().saturating_sub(at) < ASK_AFTER.as_millis() as u64
    }

    fn place(&self, permit: OwnedSemaphorePermit) -> Place {
        self.side.held.fetch_add(1, Ordering::Relaxed);
        Place {
            permit: Some(permit),
            side: Arc::clone(&self.side),
            budget: self.budget.clone(),
            give: Arc::default(),
        }
    }

    /// Whether this side holds every place there is: none is free, none given back, none
    /// held by another side or a shrink. Then a place can only come of one of this side's own
    /// connections closing, and a taker has nobody to ask.
    pub fn holds_all(&self) -> bool {
        self.budget.shared.permits.available_permits() == 0
            && self.budget.in_use() <= self.side.held.load(Ordering::Relaxed)
    }

    /// A place now, if one is free.
    pub fn try_take(&self) -> Option<Place> {
        let permit = self
            .budget
            .shared
            .permits
            .clone()
            .try_acquire_owned()
            .ok()?;
        Some(self.place(permit))
    }

    /// A place for a client that waits for it, from `now` (the caller's own reading of the
    /// clock, one fewer on the path of every wait) until `deadline`, asking the holders for
    /// one after `ask_after` (see [`Share::take_while`], which asks after [`ASK_AFTER`]): a
    /// taker whose side has already been short for a while asks sooner.
    pub async fn take_until(
        &self,
        now: tokio::time::Instant,
        deadline: tokio::time::Instant,
        ask_after: Duration,
    ) -> Option<Place> {
        self.take_inner(now, deadline, ask_after, || true).await
    }

    /// [`Share::take_until`] `patience` from now.
    #[cfg(test)]
    async fn take(&self, patience: Duration, ask_after: Duration) -> Option<Place> {
        let now = tokio::time::Instant::now();
        self.take_until(now, now + patience, ask_after).await
    }

    /// A place, waiting up to `patience` for as long as `needed` says someone waits for it.
    /// Free places are handed out in the order takers came. After [`ASK_AFTER`] without one,
    /// and every [`ASK_AGAIN`] after that, the holders are asked to give back an idle
    /// connection, whose place comes to the askers; a taker no longer `needed` stops (`None`)
    /// instead of asking.
    pub async fn take_while(&self, patience: Duration, needed: impl Fn() -> bool) -> Option<Place> {
        let now = tokio::time::Instant::now();
        self.take_inner(now, now + patience, ASK_AFTER, needed)
            .await
    }

    async fn take_inner(
        &self,
        mut now: tokio::time::Instant,
        deadline: tokio::time::Instant,
        ask_after: Duration,
        needed: impl Fn() -> bool,
    ) -> Option<Place> {
        if let Some(place) = self.try_take() {
            return Some(place);
        }
        let shared = &self.budget.shared;
        let acquire = shared.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        let mut ask_at = now + ask_after;
        let mut asking = None;
        loop {
            if ask_at <= now {
                if !needed() {
                    return None;
                }
                self.ask(&mut asking);
                ask_at = now + ASK_AGAIN;
            }
            let slice = ask_at.min(deadline);
            let given = shared.given.notified();
            tokio::pin!(given);
            if asking.is_some() {
                // Registered before looking, so a place given after the look wakes it.
                given.as_mut().enable();
                if let Some(place) = self.take_given() {
                    return Some(place);
                }
            }
            tokio::select! {
                biased;
                // The semaphore is never closed.
                permit = &mut acquire => return permit.ok().map(|permit| self.place(permit)),
                () = &mut given, if asking.is_some() => {}
                () = tokio::time::sleep_until(slice) => {
                    if slice >= deadline {
                        return None;
                    }
                }
            }
            now = tokio::time::Instant::now();
        }
    }

    /// Asks the holders for a place, counting the taker as asking from now on, when another
    /// side holds one (in use, idle or given back) that could come of it. When this side holds
    /// every place in use, nobody can give: a door short of connections for a while would
    /// otherwise ask at every wait, the holders' tasks woken each time to find nothing to give
    /// (measured, `pgbench -S -M extended -c 100` on a pool of 20: the door asked in 67,209 of
    /// 68,453 transactions and woke both doors' holder tasks each time; without it, 12,169
    /// instructions a transaction instead of 15,735, and 5.3 µs of user time instead of 7.0).
    /// A side that takes a place later is asked at the next [`ASK_AGAIN`], and until then
    /// gives when asked as its own connections come back.
    fn ask(&self, asking: &mut Option<Asking>) {
        let mine = self.side.held.load(Ordering::Relaxed);
        if asking.is_none() && self.budget.in_use() <= mine {
            return;
        }
        asking.get_or_insert_with(|| Asking::new(&self.budget, &self.side));
        self.budget.shared.reclaim.notify_waiters();
    }

    /// A place another side gave back for this side's askers, if there is one. While a
    /// shrink asks, the places given back are all its own: a door taking one would only be
    /// asked for it again.
    fn take_given(&self) -> Option<Place> {
        if self.side.id != self.budget.shared.collector.id && self.budget.shrinking() {
            return None;
        }
        let mut table = self.budget.table();
        let at = table
            .gifts
            .iter()
            .position(|(from, _)| *from != self.side.id)?;
        let (_, permit) = table.gifts.swap_remove(at);
        drop(table);
        Some(self.place(permit))
    }

    /// Resolves when another side asks for a place and this side should give one: if it has
    /// an idle connection, it closes it with [`Place::give_on_drop`]. A side none of whose
    /// clients waited within [`ASK_AFTER`] gives; a busy one only while it holds at least two
    /// more places than the side asking, so that giving one never leaves it with fewer.
    pub async fn reclaim_requested(&self) {
        loop {
            self.budget.shared.reclaim.notified().await;
            if self.budget.should_give(&self.side, self.short_lately()) {
                return;
            }
        }
    }

    /// Takes back, one by one as they free, the places a shrink owes.
    async fn collect(self) {
        let shrink = &self.budget.shared.shrink;
        let owed = || shrink.owed.load(Ordering::Relaxed) > 0;
        loop {
            let place = self.take_while(COLLECT_PATIENCE, owed).await;
            let Ok(mut collecting) = shrink.collecting.lock() else {
                return;
            };
            let still = shrink.owed.load(Ordering::Relaxed);
            if let Some(place) = place.filter(|_| still > 0) {
                place.forget();
                shrink.owed.store(still - 1, Ordering::Relaxed);
            }
            if shrink.owed.load(Ordering::Relaxed) == 0 {
                *collecting = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
