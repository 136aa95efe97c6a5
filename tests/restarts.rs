//! Database restarts with both doors busy: PostgreSQL never sees more of the gateway's
//! connections than `PGWAY_POOL_MAX`, and once the load stops the pools' gauges say what
//! PostgreSQL sees. Errors during a restart are expected; the accounting is the point.
//!
//! The test restarts the binary's PostgreSQL, so it lives alone in its binary.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::door::{Door, cluster};
use support::*;
use tokio_util::sync::CancellationToken;

const POOL_MAX: usize = 4;

/// The test's own connections to the cluster are named so that the counts leave them out.
const PROBE: &str = "pgway-test-probe";

/// A backend goes away a moment after the gateway closes its socket (it has to notice, then
/// exit), and meanwhile the gateway may already have opened another in the freed place. Only a
/// backend still there this long after it was seen is counted as held at that moment: a
/// closed one is gone by then, while a place truly held beyond the budget still is.
const EXIT_LAG: Duration = Duration::from_millis(500);

/// How often the watcher looks at the backends.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// How the cluster is restarted each time: `fast` tells sessions with FATAL 57P01 first,
/// `immediate` drops them as a crash does (then recovers).
const RESTARTS: [&str; 3] = ["fast", "immediate", "fast"];

/// A superuser connection to `database` over the cluster's socket; `None` while it is down.
async fn probe(database: &str) -> Option<tokio_postgres::Client> {
    let pg = cluster().await;
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(pg.dir())
        .port(pg.port())
        .user("postgres")
        .dbname(database)
        .application_name(PROBE)
        .connect_timeout(Duration::from_secs(2));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// The gateway's backends on `database` (its health check, outside the budget, and the
/// test's own connections left out), each as pid and start time: a pid may be used again.
async fn backends(
    client: &tokio_postgres::Client,
    database: &str,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid::text || '@' || backend_start::text FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend' \
             AND application_name NOT IN ('pgway-health', $2)",
            &[&database, &PROBE],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// One look at the backends.
struct Sample {
    at: Instant,
    backends: HashSet<String>,
}

/// Looks at the backends every [`SAMPLE_EVERY`] until `stop`, reconnecting across restarts.
async fn watch(database: String, stop: CancellationToken) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut client = None;
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    while !stop.is_cancelled() {
        every.tick().await;
        if client.is_none() {
            client = probe(&database).await;
        }
        let Some(connected) = &client else { continue };
        match backends(connected, &database).await {
            Ok(backends) => samples.push(Sample {
                at: Instant::now(),
                backends,
            }),
            // The server went down under it: connect again at the next look.
            Err(_) => client = None,
        }
    }
    samples
}

/// The most backends held at once: at each look, those still there [`EXIT_LAG`] later.
fn most_held(samples: &[Sample]) -> (usize, Option<&Sample>) {
    let mut most = (0, None);
    for (i, sample) in samples.iter().enumerate() {
        let later = samples[i..]
            .iter()
            .find(|later| later.at >= sample.at + EXIT_LAG);
        if let Some(later) = later {
            let held = sample.backends.intersection(&later.backends).count();
            if held > most.0 {
                most = (held, Some(sample));
            }
        }
    }
    most
}

/// Statements that succeeded and failed at one door.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn count<T, E>(&self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Statements each door runs between restarts (a couple of seconds' worth): long enough for
/// the watcher to see the connections of each stretch for longer than [`EXIT_LAG`].
const PHASE: u64 = 800;

/// After a failure the load paces itself: during a restart every call fails at once.
const AFTER_FAILURE: Duration = Duration::from_millis(20);

/// A gRPC caller running short statements until `stop`.
async fn grpc_caller(door: &Door, tally: Arc<Tally>, stop: CancellationToken) {
    let mut client = door.gw.client().await;
    while !stop.is_cancelled() {
        let result = client.query(query("SELECT pg_sleep(0.002)", vec![])).await;
        tally.count(&result);
        if result.is_err() {
            tokio::time::sleep(AFTER_FAILURE).await;
        }
    }
}

/// A client of the PostgreSQL door running short statements and transactions until `stop`,
/// connecting again when the door closed its connection; it disconnects when it stops.
async fn door_client(dsn: String, tally: Arc<Tally>, stop: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut round = 0u64;
    while !stop.is_cancelled() {
        round += 1;
        let connected = match client.take() {
            Some(connected) if !connected.is_closed() => connected,
            _ => match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                Ok((connected, connection)) => {
                    tokio::spawn(connection);
                    connected
                }
                Err(error) => {
                    tally.count::<(), _>(&Err(error));
                    tokio::time::sleep(AFTER_FAILURE).await;
                    continue;
                }
            },
        };
        let sql = if round % 2 == 0 {
            "SELECT pg_sleep(0.002)"
        } else {
            "BEGIN; SELECT pg_sleep(0.002); COMMIT"
        };
        let result = connected.simple_query(sql).await;
        tally.count(&result);
        client = Some(connected);
        if result.is_err() {
            tokio::time::sleep(AFTER_FAILURE).await;
        }
    }
}

/// Waits (bounded) until both doors have run `more` statements beyond `from`.
async fn both_doors_serve(grpc: &Tally, pg: &Tally, from: (u64, u64), more: u64, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        grpc.ok.load(Ordering::Relaxed) >= from.0 + more
            && pg.ok.load(Ordering::Relaxed) >= from.1 + more
    })
    .await;
}

/// Three gRPC callers and three door clients on a budget of four, through three restarts of
/// the database; then, once they stop, no connection is counted in use, every backend the
/// gateway keeps is counted idle by one door or the other, and that holds after one more
/// restart with nothing running. At no moment did the gateway hold more backends than the
/// budget.
// Two workers, as the gateway itself would have on this machine: the watcher keeps looking
// while the load and the gateway run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_keep_the_budget_and_honest_gauges() {
    let door = Door::start(&["--pool-max", "4"]).await;
    let watching = CancellationToken::new();
    let watcher = tokio::spawn(watch(door.database.clone(), watching.clone()));
    let (grpc, pg) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let stop = CancellationToken::new();
    let door = Arc::new(door);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (caller_door, tally, caller_stop) =
            (Arc::clone(&door), Arc::clone(&grpc), stop.clone());
        load.spawn(async move { grpc_caller(&caller_door, tally, caller_stop).await });
        load.spawn(door_client(door.dsn(), Arc::clone(&pg), stop.clone()));
    }
    both_doors_serve(
        &grpc,
        &pg,
        (0, 0),
        PHASE,
        "both doors serve before the restarts",
    )
    .await;
    let cluster = cluster().await;
    for mode in RESTARTS {
        tokio::task::spawn_blocking(move || cluster.restart(mode))
            .await
            .expect("restart task")
            .unwrap_or_else(|e| panic!("restart ({mode}): {e}"));
        let from = (
            grpc.ok.load(Ordering::Relaxed),
            pg.ok.load(Ordering::Relaxed),
        );
        let what = format!("both doors serve after a {mode} restart");
        both_doors_serve(&grpc, &pg, from, PHASE, &what).await;
    }
    stop.cancel();
    while let Some(done) = load.join_next().await {
        done.expect("a load task panicked");
    }
    let loaded = settled_accounts(&door).await;
    // Once more with every connection idle: with no call to find them closed, the pools must
    // still notice and stop counting them.
    tokio::task::spawn_blocking(move || cluster.restart("fast"))
        .await
        .expect("restart task")
        .unwrap_or_else(|e| panic!("restart (fast, idle): {e}"));
    let idle = settled_accounts(&door).await;
    watching.cancel();
    let samples = watcher.await.expect("watcher");
    let (most, when) = most_held(&samples);
    let raw_most = samples.iter().map(|s| s.backends.len()).max().unwrap_or(0);
    eprintln!(
        "{} gRPC calls ({} failed), {} door statements ({} failed), {} looks at the backends: \
         at most {most} held at once ({raw_most} seen, counting the ones on their way out); \
         settled at {loaded}, then {idle} after a restart while idle",
        grpc.ok.load(Ordering::Relaxed),
        grpc.failed.load(Ordering::Relaxed),
        pg.ok.load(Ordering::Relaxed),
        pg.failed.load(Ordering::Relaxed),
        samples.len(),
    );
    assert!(
        most <= POOL_MAX,
        "{most} backends held at once, over PGWAY_POOL_MAX ({POOL_MAX}): {:?}",
        when.map(|s| &s.backends)
    );
}

/// Polls (bounded) until neither door counts a connection in use and the backends PostgreSQL
/// has for the gateway are exactly the idle ones the doors count; returns that number.
async fn settled_accounts(door: &Door) -> usize {
    const GRPC_IN_USE: &str = "pgway_pool_connections{door=\"grpc\",state=\"in_use\"}";
    const GRPC_IDLE: &str = "pgway_pool_connections{door=\"grpc\",state=\"idle\"}";
    const PG_IN_USE: &str = "pgway_pool_connections{door=\"postgres\",state=\"in_use\"}";
    const PG_IDLE: &str = "pgway_pool_connections{door=\"postgres\",state=\"idle\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let Some(client) = probe(&door.database).await else {
            panic!("the database is down after the restarts")
        };
        let backends = backends(&client, &door.database)
            .await
            .expect("pg_stat_activity")
            .len();
        let gw = &door.gw;
        let (grpc_in_use, grpc_idle) = (gw.metric(GRPC_IN_USE).await, gw.metric(GRPC_IDLE).await);
        let (pg_in_use, pg_idle) = (gw.metric(PG_IN_USE).await, gw.metric(PG_IDLE).await);
        if grpc_in_use == 0.0 && pg_in_use == 0.0 && backends as f64 == grpc_idle + pg_idle {
            return backends;
        }
        assert!(
            Instant::now() < deadline,
            "the accounts did not settle within 20 s: {backends} backends; gRPC door \
             {grpc_in_use} in use, {grpc_idle} idle; PostgreSQL door {pg_in_use} in use, \
             {pg_idle} idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
