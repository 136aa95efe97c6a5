//! Both doors busy at once on one small budget: server connections are reused, not churned.
//! A door gives an idle connection back to the other only when a client there really waits for
//! a place, never so that a spare connection (`--pool-min`) can be opened, and while its own
//! clients wait too only above an even split; the place given goes to the door that asked.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use support::door::Door;
use support::*;
use tokio::sync::Mutex;

/// The metrics recorder is the process's: one gateway at a time in this binary, so that the
/// counters read are the gateway's under test.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Statements per caller: a few seconds of load for six callers.
const EACH: u64 = 3000;

const RECLAIMED: &str = "pgway_connections_closed_total{reason=\"reclaimed\"}";

/// A door, once the spare connections both doors keep ready (`--pool-min`, here the
/// whole budget of four) fill the budget.
async fn spares_ready(settings: &[&str]) -> Door {
    let door = Door::start(settings).await;
    eventually(
        std::time::Duration::from_secs(10),
        "spare connections filling the budget",
        || async {
            let grpc = door
                .gw
                .metric("pgway_pool_connections{door=\"grpc\",state=\"idle\"}")
                .await;
            let pg = door
                .gw
                .metric("pgway_pool_connections{door=\"postgres\",state=\"idle\"}")
                .await;
            grpc + pg == 4.0
        },
    )
    .await;
    door
}

/// What a run of [`mixed_load`] did.
struct Load {
    operations: u64,
    failures: u64,
    first_failure: Option<String>,
    reclaimed: f64,
    opened: f64,
}

impl Load {
    /// No failure, and at most `reclaims` connections closed to give their places away.
    fn assert_clean(&self, reclaims: f64) {
        assert_eq!(self.failures, 0, "first: {:?}", self.first_failure);
        assert!(
            self.reclaimed <= reclaims,
            "{} connections reclaimed for {} operations",
            self.reclaimed,
            self.operations
        );
    }
}

/// `grpc_callers` gRPC callers and `door_clients` door clients, each running `SELECT 1`
/// `each` times as fast as it can, all at once; what the budget's reclaims were meanwhile.
async fn mixed_load(door: &Door, grpc_callers: usize, door_clients: usize, each: u64) -> Load {
    let reclaimed = door.gw.metric(RECLAIMED).await;
    let opened = door.gw.metric("pgway_connections_opened_total").await;
    let failures = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let fail = {
        let failures = Arc::clone(&failures);
        let first_failure = Arc::clone(&first_failure);
        move |what: String| {
            failures.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = first_failure.lock() {
                first.get_or_insert(what);
            }
        }
    };
    let mut work = tokio::task::JoinSet::new();
    for caller in 0..grpc_callers {
        let mut client = door.gw.client().await;
        let fail = fail.clone();
        work.spawn(async move {
            for _ in 0..each {
                if let Err(status) = client.query(query("SELECT 1", vec![])).await {
                    fail(format!("gRPC caller {caller}: {status:?}"));
                }
            }
        });
    }
    for client_no in 0..door_clients {
        let (client, _connection) = door.connect().await;
        let fail = fail.clone();
        work.spawn(async move {
            for _ in 0..each {
                if let Err(error) = client.simple_query("SELECT 1").await {
                    fail(format!("door client {client_no}: {error}"));
                }
            }
        });
    }
    let started = Instant::now();
    while let Some(done) = work.join_next().await {
        done.expect("a load task panicked");
    }
    let load = Load {
        operations: each * (grpc_callers + door_clients) as u64,
        failures: failures.load(Ordering::Relaxed),
        first_failure: first_failure.lock().ok().and_then(|f| f.clone()),
        reclaimed: door.gw.metric(RECLAIMED).await - reclaimed,
        opened: door.gw.metric("pgway_connections_opened_total").await - opened,
    };
    eprintln!(
        "{grpc_callers} gRPC callers + {door_clients} door clients, {} operations in {:?}: \
         {} reclaimed, {} opened, {} failed",
        load.operations,
        started.elapsed(),
        load.reclaimed,
        load.opened,
        load.failures
    );
    load
}

/// Two gRPC callers and two door clients on a budget of four, no spare connections kept
/// ready: the demand fits, so no connection is ever closed to make room for another.
#[tokio::test]
async fn no_reclaims_when_both_doors_fit_the_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = Door::start(&["--pool-max", "4", "--pool-min", "0"]).await;
    let load = mixed_load(&door, 2, 2, EACH).await;
    assert_eq!(load.failures, 0, "first: {:?}", load.first_failure);
    assert_eq!(
        load.reclaimed, 0.0,
        "reclaims though both doors fit the budget"
    );
    // Each caller holds one connection at a time: four in all, each opened once.
    assert!(load.opened <= 4.0, "{} connections opened", load.opened);
}

/// The same demand, with four spare connections wanted (the default minimum, capped at the
/// budget): the doors' spares fill the budget before the load comes, split between them in
/// no set way, so a caller whose door got fewer spares than it has callers may have to win
/// its first connection from the other door's: at most one reclaim per caller, four in all
/// (the split between the doors can change while the load starts, so either may be short).
/// No more after that: a spare is only ever opened in a free place, never by reclaiming one.
/// (Before this rule, the same load saw over a hundred.)
#[tokio::test]
async fn spare_connections_take_only_free_places() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = spares_ready(&["--pool-max", "4", "--pool-min", "4"]).await;
    let load = mixed_load(&door, 2, 2, EACH).await;
    load.assert_clean(4.0);
}

/// Three gRPC callers and three door clients on a budget of four, with four spare connections
/// wanted: more demand than places. As above, each caller may have to win its first
/// connection from the other door's spares: at most six reclaims, where the two doors used to
/// hand places back and forth dozens of times a second (over a hundred in this test). After
/// that each door keeps what it holds and its callers take turns on it, since a wait for a
/// connection of the caller's own door is a round trip (a place is asked of the other door
/// only after `budget::ASK_AFTER`), while a reclaim costs a login.
#[tokio::test]
async fn few_reclaims_when_both_doors_want_more_than_the_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = spares_ready(&["--pool-max", "4", "--pool-min", "4"]).await;
    let load = mixed_load(&door, 3, 3, EACH).await;
    load.assert_clean(6.0);
}

/// Sixteen gRPC callers and sixteen door clients on a budget of eight, none kept spare: both
/// doors want twice the budget for the whole run. Each settles on about half and its callers
/// take turns on it. Reclaims come only where one door really needs a place: while the first
/// split, however uneven, evens out (a door short itself gives only while it holds two more
/// than the asker; the budget at most, as places given and not yet taken count for neither)
/// and when one door's clients finish first and the other takes over its idle places (at
/// most the budget again): sixteen at most, 7 to 10 measured. Before
/// the even-split rule and the place going to the door that asked (rather than to the giving
/// door's own connect, queued earlier), the same load saw 272 in under eight seconds.
#[tokio::test]
async fn busy_doors_settle_instead_of_trading_places() {
    let _one = ONE_AT_A_TIME.lock().await;
    let door = Door::start(&["--pool-max", "8", "--pool-min", "0"]).await;
    let load = mixed_load(&door, 16, 16, 1500).await;
    load.assert_clean(16.0);
}
