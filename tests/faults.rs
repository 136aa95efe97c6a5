//! Fault tests: database restarts, killed backends, a black hole, deadlines, overload and
//! SIGTERM, each against a real PostgreSQL of the test's own (so restarting it disturbs no
//! other test), some through a fault-injecting proxy.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgway::devdb::TempPostgres;
use pgway::proto::{self, value::Kind};
use support::proxy::FaultProxy;
use support::types::DbClient;
use support::*;
use tokio::sync::Mutex;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn private_postgres() -> Arc<TempPostgres> {
    let pg =
        tokio::task::spawn_blocking(|| TempPostgres::start(None).unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap();
    Arc::new(pg)
}

async fn restart(pg: &Arc<TempPostgres>, mode: &'static str) {
    let pg = Arc::clone(pg);
    tokio::task::spawn_blocking(move || pg.restart(mode))
        .await
        .unwrap()
        .unwrap();
}

/// A request with a caller deadline, as a real client would send it.
fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "grpc-timeout",
        format!("{}m", deadline.as_millis()).parse().unwrap(),
    );
    request
}

/// Backends of the gateway's pool on the server (the health monitor's is named apart).
async fn pool_backends(direct: &tokio_postgres::Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgway'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// A fast restart of PostgreSQL under load: no read-only or idempotent call with a 5 s
/// deadline fails, and calls succeed again once PostgreSQL is back.
#[tokio::test]
async fn a_restart_costs_safe_calls_nothing() {
    let pg = private_postgres().await;
    let gw = Gateway::serving(
        &pg.url("postgres"),
        "postgres".into(),
        &["--pool-max", "20"],
    )
    .await;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..40 {
        let mut client = gw.client().await;
        let (ok, errors, stop) = (ok.clone(), errors.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut request = query("SELECT count(*) FROM pg_class", vec![]);
                // Half the callers say read-only, half say idempotent.
                if worker % 2 == 0 {
                    request.read_only = true;
                } else {
                    request.idempotent = true;
                }
                match client
                    .query(with_deadline(request, Duration::from_secs(5)))
                    .await
                {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => errors.lock().await.push(status),
                }
            }
        }));
    }
    let count = |n: &Arc<AtomicU64>| n.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), "load is running", || async {
        count(&ok) > 200
    })
    .await;
    restart(&pg, "fast").await;
    let after_restart = count(&ok);
    eventually(
        Duration::from_secs(20),
        "calls succeed again after the restart",
        || async { count(&ok) > after_restart + 500 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let errors = errors.lock().await;
    assert!(
        errors.is_empty(),
        "{} safe calls failed, first: {:?}",
        errors.len(),
        errors.first()
    );
}

/// Writes in flight during a restart: each either succeeded (and is in the table once), or
/// failed with a status that says whether it may have been applied.
#[tokio::test]
async fn writes_in_flight_during_a_restart_are_never_lost_or_doubled() {
    let pg = private_postgres().await;
    let gw = Gateway::serving(
        &pg.url("postgres"),
        "postgres".into(),
        &["--pool-max", "20"],
    )
    .await;
    let direct = connect(&pg.url("postgres")).await;
    direct
        .batch_execute("CREATE TABLE w (id int8 PRIMARY KEY)")
        .await
        .unwrap();
    let outcomes = Arc::new(Mutex::new(HashMap::<i64, Result<(), tonic::Status>>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..20i64 {
        let mut client = gw.client().await;
        let (outcomes, stop, started) = (outcomes.clone(), stop.clone(), started.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = worker * 1_000_000 + i;
                i += 1;
                started.fetch_add(1, Ordering::Relaxed);
                let request = query(
                    "INSERT INTO w SELECT $1 FROM pg_sleep(0.002)",
                    vec![int(id)],
                );
                let result = client
                    .query(with_deadline(request, Duration::from_secs(5)))
                    .await
                    .map(drop);
                outcomes.lock().await.insert(id, result);
            }
        }));
    }
    eventually(Duration::from_secs(20), "writes are flowing", || async {
        started.load(Ordering::Relaxed) > 300
    })
    .await;
    restart(&pg, "fast").await;
    let mark = started.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), "writes flow again", || async {
        started.load(Ordering::Relaxed) > mark + 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let direct = connect(&pg.url("postgres")).await;
    let stored: std::collections::HashSet<i64> = direct
        .query("SELECT id FROM w", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let outcomes = outcomes.lock().await;
    let (mut applied, mut unknown, mut refused) = (0, 0, 0);
    for (id, outcome) in outcomes.iter() {
        match outcome {
            Ok(()) => {
                assert!(
                    stored.contains(id),
                    "write {id} answered OK but is not in the table"
                );
                applied += 1;
            }
            Err(status)
                if status.code() == Code::Unknown && reason(status) == "OUTCOME_UNKNOWN" =>
            {
                unknown += 1
            }
            Err(status) => {
                assert!(
                    !stored.contains(id),
                    "write {id} failed with {status:?} but was applied"
                );
                refused += 1;
            }
        }
    }
    assert!(
        stored.iter().all(|id| outcomes.contains_key(id)),
        "a row nobody wrote"
    );
    assert!(
        applied > 600,
        "applied {applied}, unknown {unknown}, refused {refused}"
    );
}

/// Every pooled backend killed with pg_terminate_backend: the next thousand calls see no error,
/// and the metrics count the broken connections.
#[tokio::test]
async fn killed_backends_cost_callers_nothing() {
    let pg = private_postgres().await;
    let gw = Gateway::serving(
        &pg.url("postgres"),
        "postgres".into(),
        &["--pool-max", "20", "--pool-min", "20"],
    )
    .await;
    let direct = connect(&pg.url("postgres")).await;
    eventually(Duration::from_secs(20), "the pool is full", || async {
        pool_backends(&direct).await == 20
    })
    .await;
    let broken_before = gw
        .metric("pgway_connections_closed_total{reason=\"broken\"}")
        .await;
    let killed: i64 = direct
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pgway'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 20);
    // Twenty callers at once, so every pooled connection is handed out.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut client = gw.client().await;
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..50 {
                if let Err(status) = client.query(query("SELECT 1", vec![])).await {
                    failures.push(status);
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 calls failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    eventually(
        Duration::from_secs(10),
        "the broken connections are counted",
        || async {
            gw.metric("pgway_connections_closed_total{reason=\"broken\"}")
                .await
                >= broken_before + 20.0
        },
    )
    .await;
}

/// The server's own cap (`PGWAY_REQUEST_TIMEOUT`, and with it the default
/// `PGWAY_STATEMENT_TIMEOUT`) answers DEADLINE_EXCEEDED every time, never CANCELLED, although
/// PostgreSQL's statement_timeout fires at the same instant as the gateway's timer.
#[tokio::test]
async fn the_servers_time_limit_is_always_deadline_exceeded() {
    let gw = Gateway::with_settings(&["--request-timeout", "300ms"]).await;
    let mut client = gw.client_without_local_deadline();
    let sleep = || query("SELECT pg_sleep(10)", vec![]);
    let mut codes = Vec::new();
    // A statement timeout set below the request timeout caps a Query's deadline too.
    let short_statements =
        Gateway::with_settings(&["--request-timeout", "30s", "--statement-timeout", "300ms"]).await;
    for _ in 0..5 {
        let status = short_statements
            .client_without_local_deadline()
            .query(with_deadline(sleep(), Duration::from_secs(20)))
            .await
            .unwrap_err();
        codes.push((
            "Query, statement timeout",
            status.code(),
            status.message().to_owned(),
        ));
    }
    for _ in 0..15 {
        let status = client
            .query(with_deadline(sleep(), Duration::from_secs(20)))
            .await
            .unwrap_err();
        codes.push(("Query", status.code(), status.message().to_owned()));
    }
    for _ in 0..5 {
        let transaction = proto::TransactionRequest {
            statements: vec![proto::Statement {
                sql: "SELECT pg_sleep(10)".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let status = client
            .transaction(with_deadline(transaction, Duration::from_secs(20)))
            .await
            .unwrap_err();
        codes.push(("Transaction", status.code(), status.message().to_owned()));
        let mut stream = client
            .query_stream(with_deadline(sleep(), Duration::from_secs(20)))
            .await
            .unwrap()
            .into_inner();
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => break status,
            }
        };
        codes.push(("QueryStream", status.code(), status.message().to_owned()));
    }
    let wrong: Vec<_> = codes
        .iter()
        .filter(|(_, code, _)| *code != Code::DeadlineExceeded)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {}: {wrong:?}",
        wrong.len(),
        codes.len()
    );
}

/// A statement running past its 1 s deadline: DEADLINE_EXCEEDED on time, the backend is idle
/// again at once, and the pool slot serves the next call.
#[tokio::test]
async fn a_deadline_frees_the_backend_and_the_slot() {
    let gw = Gateway::with_settings(&["--pool-max", "1", "--pool-min", "1"]).await;
    let direct = gw.direct().await;
    let mut client = gw.client().await;
    let started = Instant::now();
    let status = gw
        .client_without_local_deadline()
        .query(with_deadline(
            query("SELECT pg_sleep(10)", vec![]),
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // At the deadline, not when the statement would have ended (the margin is for a loaded
    // machine, not a target).
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    statements_end(
        &direct,
        "SELECT pg_sleep(10)",
        Duration::from_secs(5),
        "the sleeping backend stops",
    )
    .await;
    let response = run(&mut client, "SELECT 7", vec![]).await;
    assert_eq!(scalar(&response), Some(Kind::IntValue(7)));
}

/// Ten times more callers than connections: the excess is shed at once with OVERLOADED and a
/// retry delay, and every admitted call succeeds.
#[tokio::test]
async fn overload_is_shed_fast_and_admitted_calls_succeed() {
    let gw = Gateway::with_settings(&[
        "--pool-max",
        "4",
        "--max-waiting",
        "8",
        "--acquire-timeout",
        "30s",
    ])
    .await;
    let shed_before = gw.metric("pgway_shed_total{door=\"grpc\"}").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = gw.client().await;
        for _ in 0..10 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let result = client.query(query("SELECT pg_sleep(1)", vec![])).await;
                (result, started.elapsed())
            }));
        }
    }
    let (mut admitted, mut shed) = (0, 0);
    for task in tasks {
        let (result, elapsed) = task.await.unwrap();
        match result {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(reason(&status), "OVERLOADED");
                use tonic_types::StatusExt;
                assert!(
                    status.get_details_retry_info().is_some(),
                    "a retry delay is given"
                );
                // A call that waited for a slot would take at least one 1 s sleep.
                assert!(
                    elapsed < Duration::from_secs(1),
                    "shedding took {elapsed:?}"
                );
                shed += 1;
            }
        }
    }
    assert!(
        shed > 0 && admitted >= 12,
        "admitted {admitted}, shed {shed}"
    );
    assert_eq!(
        gw.metric("pgway_shed_total{door=\"grpc\"}").await - shed_before,
        f64::from(shed)
    );
}

/// The connection breaks after COMMIT was sent: the caller hears OUTCOME_UNKNOWN (and indeed
/// the transaction did commit), never OK and never a plain "retry".
#[tokio::test]
async fn a_connection_lost_after_commit_is_outcome_unknown() {
    let pg = postgres().await;
    let admin = connect(&pg.url("postgres")).await;
    let database = format!("commit_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let target = format!("127.0.0.1:{}", pg.port()).parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    let gw = Gateway::serving(&proxy.url(&database), database.clone(), &[]).await;
    let direct = connect(&pg.url(&database)).await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut client = gw.client().await;
    run(&mut client, "SELECT 1", vec![]).await;

    a_cut_after_commit_is_outcome_unknown(&proxy, &mut client, &direct).await;
    an_autocommit_write_cut_mid_flight(&proxy, &client, &direct).await;
}

/// A transaction whose connection is cut right after COMMIT is OUTCOME_UNKNOWN, and the
/// COMMIT did reach the server.
async fn a_cut_after_commit_is_outcome_unknown(
    proxy: &FaultProxy,
    client: &mut DbClient,
    direct: &tokio_postgres::Client,
) {
    proxy.cut_after_commit(true);
    let status = client
        .transaction(proto::TransactionRequest {
            statements: vec![proto::Statement {
                sql: "INSERT INTO t VALUES (1)".into(),
                params: vec![],
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(reason(&status), "OUTCOME_UNKNOWN");
    // The server reads the COMMIT before the cut, but may finish it a moment after the
    // gateway has answered: look for it with a bound.
    eventually(
        Duration::from_secs(10),
        "the COMMIT did reach the server",
        || async {
            let count: i64 = direct
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .unwrap()
                .get(0);
            count == 1
        },
    )
    .await;
    proxy.cut_after_commit(false);
}

/// An autocommit write cut mid-flight is OUTCOME_UNKNOWN; the same write marked idempotent is
/// retried and succeeds.
async fn an_autocommit_write_cut_mid_flight(
    proxy: &FaultProxy,
    client: &DbClient,
    direct: &tokio_postgres::Client,
) {
    // An autocommit write cut mid-flight: UNKNOWN unless the caller said it is idempotent,
    // in which case it is retried and succeeds. The write waits at a gate that `direct`
    // closes, so it is certainly still running when the connection is cut, and no answer can
    // have passed the proxy before the cut.
    let slow_write = || {
        query(
            &format!("INSERT INTO t SELECT 2 FROM {WAIT_AT_GATE} ON CONFLICT DO NOTHING"),
            vec![],
        )
    };
    let write_running = || async { waiting_at_gate(direct, "INSERT INTO t SELECT 2%").await };
    close_gate(direct).await;
    let call = tokio::spawn({
        let mut client = client.clone();
        let request = slow_write();
        async move { client.query(request).await }
    });
    eventually(Duration::from_secs(5), "the write is running", || async {
        write_running().await == 1
    })
    .await;
    proxy.cut_all();
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(reason(&status), "OUTCOME_UNKNOWN");
    open_gate(direct).await;
    // Whether the orphaned write commits is a race between the gate opening and the
    // cancel request the gateway sends for it: exactly why the caller hears UNKNOWN.
    statements_end(
        direct,
        "INSERT INTO t SELECT 2%",
        Duration::from_secs(5),
        "the orphaned write ends",
    )
    .await;

    close_gate(direct).await;
    let mut request = slow_write();
    request.idempotent = true;
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.query(request).await }
    });
    eventually(
        Duration::from_secs(5),
        "the idempotent write is running",
        || async { write_running().await == 1 },
    )
    .await;
    proxy.cut_all();
    open_gate(direct).await;
    call.await
        .unwrap()
        .expect("an idempotent write is retried after the cut");
}

/// A 30 s black hole between the gateway and PostgreSQL: every call ends within its deadline,
/// readiness goes NOT_SERVING, the pool never exceeds its maximum, and the gateway recovers
/// quickly once the network is back.
#[tokio::test]
async fn a_black_hole_is_survived() {
    let pg = postgres().await;
    let admin = connect(&pg.url("postgres")).await;
    let database = format!("blackhole_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let target = format!("127.0.0.1:{}", pg.port()).parse().unwrap();
    let proxy = FaultProxy::start(target).await;
    let gw = Gateway::serving(
        &proxy.url(&database),
        database.clone(),
        &["--pool-max", "5", "--health-interval", "200ms"],
    )
    .await;
    let direct = connect(&pg.url(&database)).await;
    let mut health = HealthClient::new(gw.channel().await);
    let readiness = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "pgway.v1.Database".into(),
                })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };
    eventually(Duration::from_secs(10), "ready", || {
        readiness(&mut health).then_is(1)
    })
    .await;
    let backends_on_server = || async {
        direct
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgway' AND datname = current_database()", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    proxy.blackhole(true);
    let hole_started = Instant::now();
    let calls = callers_through_the_hole(&gw, hole_started);
    eventually(
        Duration::from_secs(6),
        "not ready during the black hole",
        || readiness(&mut health).then_is(2),
    )
    .await;
    let mut max_backends = 0;
    while hole_started.elapsed() < Duration::from_secs(30) {
        max_backends = max_backends.max(backends_on_server().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for call in calls {
        let late = call.await.unwrap();
        assert!(late.is_empty(), "calls ran past their deadline: {late:?}");
    }
    proxy.blackhole(false);
    let back = Instant::now();
    let mut client = gw.client().await;
    calls_succeed_after_the_hole(&client).await;
    eventually(Duration::from_secs(5), "ready again", || {
        readiness(&mut health).then_is(1)
    })
    .await;
    println!("recovered {:?} after the black hole ended", back.elapsed());
    run(&mut client, "SELECT 1", vec![]).await;
    max_backends = max_backends.max(backends_on_server().await);
    assert!(
        max_backends <= 5,
        "{max_backends} pool backends on the server, pool max 5"
    );
}

/// The calls of one caller that ended late: how long each took, and how it ended.
type LateCalls = Vec<(Duration, Result<(), tonic::Status>)>;

/// The calls of a black hole begun at `hole_started`: five callers call with a 2 s deadline
/// until it has lasted 30 s, failing only with DEADLINE_EXCEEDED or UNAVAILABLE; each task
/// returns its calls that ended late.
fn callers_through_the_hole(
    gw: &Gateway,
    hole_started: Instant,
) -> Vec<tokio::task::JoinHandle<LateCalls>> {
    let deadline = Duration::from_secs(2);
    let mut calls = Vec::new();
    for _ in 0..5 {
        // Only the gateway enforces the deadline, so a call it lets run late shows as late.
        let mut client = gw.client_without_local_deadline();
        calls.push(tokio::spawn(async move {
            let mut late = Vec::new();
            while hole_started.elapsed() < Duration::from_secs(30) {
                let started = Instant::now();
                let result = client
                    .query(with_deadline(query("SELECT 1", vec![]), deadline))
                    .await;
                let elapsed = started.elapsed();
                // Late means past the deadline by more than a loaded machine's jitter; a
                // call the gateway did not end would hang for the whole 30 s hole.
                if elapsed > deadline + Duration::from_secs(1) {
                    late.push((elapsed, result.map(drop)));
                } else if let Err(status) = &result {
                    assert!(
                        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
                        "{status:?}"
                    );
                }
            }
            late
        }));
    }
    calls
}

/// Once the black hole is gone, a call with a 500 ms deadline succeeds within 5 s.
async fn calls_succeed_after_the_hole(client: &DbClient) {
    eventually(
        Duration::from_secs(5),
        "calls succeed after the black hole",
        || {
            let mut client = client.clone();
            async move {
                client
                    .query(with_deadline(
                        query("SELECT 1", vec![]),
                        Duration::from_millis(500),
                    ))
                    .await
                    .is_ok()
            }
        },
    )
    .await;
}

trait ThenIs {
    fn then_is(self, expected: i32) -> impl std::future::Future<Output = bool>;
}

impl<F: std::future::Future<Output = i32>> ThenIs for F {
    async fn then_is(self, expected: i32) -> bool {
        self.await == expected
    }
}

/// SIGTERM under load: calls in flight finish, new ones are refused, the process exits 0.
#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish() {
    let pg = postgres().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgway"))
        .env("PGWAY_DATABASE_URL", pg.url("postgres"))
        .env("PGWAY_AUTH", "none")
        .env("PGWAY_GRPC_ADDR", &addr)
        .env("PGWAY_METRICS_ADDR", "")
        .env("PGWAY_PG_ADDR", "")
        .env("PGWAY_SHUTDOWN_GRACE", "10s")
        .env("PGWAY_POOL_MAX", "12")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let channel = connect_when_up(&addr).await;
    let client = proto::database_client::DatabaseClient::new(channel);
    let mut in_flight = Vec::new();
    for i in 0..10 {
        let mut client = client.clone();
        in_flight.push(tokio::spawn(async move {
            client
                .query(query(&format!("SELECT {i} FROM pg_sleep(1.5)"), vec![]))
                .await
        }));
    }
    let direct = connect(&pg.url("postgres")).await;
    eventually(
        Duration::from_secs(10),
        "all ten calls are running",
        || async { active_statements(&direct, "SELECT % FROM pg_sleep(1.5)").await == 10 },
    )
    .await;
    signal(&child, "TERM");
    // New calls are refused while the old ones finish.
    let mut late = client.clone();
    eventually(Duration::from_secs(2), "new calls are refused", || {
        let mut late = late.clone();
        async move {
            late.query(query("SELECT 1", vec![]))
                .await
                .is_err_and(|s| s.code() == Code::Unavailable)
        }
    })
    .await;
    let _ = &mut late;
    for call in in_flight {
        call.await
            .unwrap()
            .expect("a call in flight at SIGTERM finishes");
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
