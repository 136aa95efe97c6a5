//! The budget's unit tests.

use super::*;

#[tokio::test]
async fn a_waiter_gets_the_place_an_idle_holder_gives_back() {
    let budget = Budget::new(1);
    let (giver, taker) = (budget.share(), budget.share());
    let held = giver.try_take();
    assert!(held.is_some());
    assert_eq!(budget.in_use(), 1);
    assert!(taker.try_take().is_none());
    let started = tokio::time::Instant::now();
    let holder = {
        let giver = giver.clone();
        tokio::spawn(async move {
            giver.reclaim_requested().await;
            drop(held);
            started.elapsed()
        })
    };
    let got = taker.take(Duration::from_secs(5), ASK_AFTER).await;
    assert!(got.is_some());
    assert_eq!((giver.held(), taker.held()), (0, 1));
    // Asked only once the taker had waited for a place of its own side's to come back.
    assert!(holder.await.unwrap() >= ASK_AFTER);
    assert!(
        taker
            .take(Duration::from_millis(10), ASK_AFTER)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_resize_frees_places_at_once_and_takes_them_back_as_they_free() {
    let budget = Budget::new(2);
    let share = budget.share();
    let (a, b) = (share.try_take(), share.try_take());
    assert!(a.is_some() && b.is_some());
    budget.resize(3);
    let c = share.try_take();
    assert!(c.is_some(), "a grown budget has a free place at once");
    budget.resize(1);
    assert_eq!((budget.total(), budget.in_use()), (1, 3));
    drop(a);
    drop(c);
    // The collector takes the two places back as they free: none is free to a taker.
    let collected = async {
        while budget.shared.shrink.owed.load(Ordering::Relaxed) > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), collected)
        .await
        .expect("the places given back were taken back");
    assert!(share.try_take().is_none());
    drop(b);
    assert!(share.try_take().is_some(), "one place is left");
    // Growing while a shrink still owes cancels the debt first.
    let held = share.try_take().or_else(|| share.try_take());
    budget.resize(0);
    budget.resize(2);
    drop(held);
    let both = async {
        loop {
            if let (Some(_), Some(_)) = (share.try_take(), share.try_take()) {
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
    let (giver, taker) = (budget.share(), budget.share());
    let _held = giver.try_take();
    let holder = {
        let giver = giver.clone();
        tokio::spawn(async move { giver.reclaim_requested().await })
    };
    assert!(
        taker
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
    let (giver, taker) = (budget.share(), budget.share());
    let holder = {
        let giver = giver.clone();
        tokio::spawn(async move { giver.reclaim_requested().await })
    };
    tokio::task::yield_now().await;
    // A ring whose taker got its place before the holder woke, as the holder sees it.
    budget.shared.reclaim.notify_waiters();
    tokio::time::sleep(ASK_AGAIN).await;
    assert!(!holder.is_finished(), "woken with nobody asking");
    // While someone asks, the same ring wakes it.
    let _asking = Asking::new(&budget, &taker.side);
    budget.shared.reclaim.notify_waiters();
    tokio::time::timeout(ASK_AGAIN, holder)
        .await
        .expect("woken while someone asks")
        .unwrap();
}

#[tokio::test]
async fn a_side_holding_every_place_in_use_asks_nobody() {
    let budget = Budget::new(2);
    let (busy, other) = (budget.share(), budget.share());
    let (mine, _also_mine) = (busy.try_take(), busy.try_take());
    let rung = budget.shared.reclaim.notified();
    tokio::pin!(rung);
    rung.as_mut().enable();
    // Past the point where it would ask, with nobody else holding anything to give.
    let waited = busy.take(Duration::from_millis(20), Duration::ZERO).await;
    assert!(waited.is_none());
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut rung)
            .await
            .is_err(),
        "the holders were woken with nothing to give"
    );
    // Once another side holds a place, the same wait asks.
    drop(mine);
    let theirs = other.try_take();
    assert!(theirs.is_some());
    let waited = busy.take(Duration::from_millis(20), Duration::ZERO).await;
    assert!(waited.is_none());
    tokio::time::timeout(Duration::ZERO, &mut rung)
        .await
        .expect("the other side was asked");
}

#[tokio::test]
async fn a_place_given_back_goes_to_the_side_that_asked() {
    let budget = Budget::new(1);
    let (giver, taker) = (budget.share(), budget.share());
    let held = giver.try_take().expect("a free place");
    // The giver's own connect queued first: with the place dropped to the line it would
    // get it back, and the taker would ask again.
    let own = {
        let giver = giver.clone();
        tokio::spawn(async move { giver.take(Duration::from_secs(1), ASK_AFTER).await })
    };
    let asked = {
        let giver = giver.clone();
        tokio::spawn(async move { giver.reclaim_requested().await })
    };
    let took = {
        let taker = taker.clone();
        tokio::spawn(async move { taker.take(Duration::from_secs(5), ASK_AFTER).await })
    };
    tokio::time::timeout(Duration::from_secs(5), asked)
        .await
        .expect("the holder was asked")
        .unwrap();
    held.give_on_drop();
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(5), took)
        .await
        .expect("the asker was served")
        .unwrap();
    assert!(got.is_some(), "the place went to the side that asked");
    assert_eq!((giver.held(), taker.held()), (0, 1));
    assert!(
        own.await.unwrap().is_none(),
        "the giver's own taker got nothing"
    );
}

#[tokio::test]
async fn a_busy_side_at_an_even_split_keeps_its_places() {
    let budget = Budget::new(4);
    let (busy, asker) = (budget.share(), budget.share());
    let mine = [busy.try_take(), busy.try_take()];
    let theirs = [asker.try_take(), asker.try_take()];
    assert!(mine.iter().chain(&theirs).all(Option::is_some));
    let _asking = Asking::new(&budget, &asker.side);
    busy.short();
    assert!(
        !budget.should_give(&busy.side, busy.short_lately()),
        "a busy side at an even split gave a place"
    );
    assert!(busy.try_take().is_none(), "no place is free");
    drop(theirs);
    // Now 2 against 0: giving one still leaves it with more.
    assert!(
        budget.should_give(&busy.side, busy.short_lately()),
        "a busy side two ahead keeps all its places"
    );
}

#[tokio::test]
async fn a_side_with_no_place_is_served_even_by_a_busy_holder() {
    let budget = Budget::new(1);
    let (busy, asker) = (budget.share(), budget.share());
    let _only = busy.try_take().expect("a free place");
    busy.short();
    assert!(
        !budget.asked_to_give(&busy.side),
        "given with nobody asking"
    );
    let _asking = Asking::new(&budget, &asker.side);
    assert!(
        budget.asked_to_give(&busy.side),
        "a side with nothing was left to wait out its timeout"
    );
    assert!(
        !budget.asked_to_give(&asker.side),
        "a side asked to give by its own askers"
    );
}

#[tokio::test]
async fn a_shrink_takes_what_the_doors_give_back() {
    let budget = Budget::new(4);
    let (one, other) = (budget.share(), budget.share());
    let mine = [one.try_take(), one.try_take()];
    let theirs = [other.try_take(), other.try_take()];
    one.short();
    other.short();
    budget.resize(2);
    // The collector asks: even a busy side at an even split gives.
    let asked = async {
        while !budget.asked_to_give(&one.side) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), asked)
        .await
        .expect("a busy side was asked to give to a shrink");
    // A door asking too doesn't take the places given back while the shrink asks.
    let _asking = Asking::new(&budget, &other.side);
    for place in mine.into_iter().flatten() {
        place.give_on_drop();
    }
    let paid = async {
        while budget.shared.shrink.owed.load(Ordering::Relaxed) > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), paid)
        .await
        .expect("the shrink took both places");
    assert_eq!((other.held(), budget.total(), budget.in_use()), (2, 2, 2));
    drop(theirs);
}
