//! Metrics move as they should, every call has a request id, and the logs show what every
//! connection did.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgway::proto::database_client::DatabaseClient;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

#[tokio::test]
async fn metrics_follow_the_pool_and_the_calls() {
    let gw = Gateway::with_settings(&[
        "--pool-max",
        "1",
        "--pool-min",
        "1",
        "--acquire-timeout",
        "300ms",
    ])
    .await;
    let mut client = gw.client().await;
    run(&mut client, "SELECT 1", vec![]).await;
    the_settings_and_the_database_show(&gw).await;
    let ok_before = gw
        .metric("pgway_requests_total{method=\"Query\",code=\"OK\"}")
        .await;
    let timeouts_before = gw
        .metric("pgway_pool_acquire_timeouts_total{door=\"grpc\"}")
        .await;
    a_checkout_shows_and_the_next_caller_times_out(&gw, &mut client, timeouts_before).await;
    assert!(
        gw.metric("pgway_requests_total{method=\"Query\",code=\"OK\"}")
            .await
            >= ok_before + 1.0
    );
    calls_and_waits_are_timed_and_labels_carry_no_sql(&gw).await;
    transactions_are_counted_by_outcome(&gw, &mut client).await;
}

/// The pool's sizes and the build show as gauges, and the database is seen up.
async fn the_settings_and_the_database_show(gw: &Gateway) {
    assert_eq!(gw.metric("pgway_pool_max_connections").await, 1.0);
    assert_eq!(gw.metric("pgway_pool_min_connections").await, 1.0);
    assert_eq!(gw.metric("pgway_build_info{version=\"0.1.0\"}").await, 1.0);
    eventually(Duration::from_secs(5), "database_up", || async {
        gw.metric("pgway_database_up").await == 1.0
    })
    .await;
}

/// A call holding the only connection shows as in use; a second caller meanwhile times out
/// waiting for it (UNAVAILABLE, POOL_TIMEOUT, counted); once the first call ends, the
/// connection is idle again.
async fn a_checkout_shows_and_the_next_caller_times_out(
    gw: &Gateway,
    client: &mut DatabaseClient<Channel>,
    timeouts_before: f64,
) {
    // A checkout shows in in_use. The call waits at a gate closed here, so it keeps the only
    // connection for as long as the test needs it.
    let direct = gw.direct().await;
    close_gate(&direct).await;
    let busy = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .query(query(&format!("SELECT {WAIT_AT_GATE}"), vec![]))
                .await
        }
    });
    eventually(
        Duration::from_secs(5),
        "in_use shows the checkout",
        || async {
            gw.metric("pgway_pool_connections{door=\"grpc\",state=\"in_use\"}")
                .await
                == 1.0
        },
    )
    .await;
    // A caller that can't get the only connection in time: an acquire timeout.
    let status = client.query(query("SELECT 2", vec![])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).reason, "POOL_TIMEOUT");
    assert_eq!(
        gw.metric("pgway_pool_acquire_timeouts_total{door=\"grpc\"}")
            .await,
        timeouts_before + 1.0
    );
    assert!(
        gw.metric("pgway_requests_total{method=\"Query\",code=\"UNAVAILABLE\"}")
            .await
            >= 1.0
    );
    open_gate(&direct).await;
    busy.await.unwrap().unwrap();
    eventually(
        Duration::from_secs(5),
        "the connection is idle again",
        || async {
            gw.metric("pgway_pool_connections{door=\"grpc\",state=\"in_use\"}")
                .await
                == 0.0
                && gw
                    .metric("pgway_pool_connections{door=\"grpc\",state=\"idle\"}")
                    .await
                    == 1.0
        },
    )
    .await;
}

/// A committed transaction counts once under its outcome.
async fn transactions_are_counted_by_outcome(gw: &Gateway, client: &mut DatabaseClient<Channel>) {
    // Transactions are counted by outcome.
    let committed = gw
        .metric("pgway_transactions_total{outcome=\"committed\"}")
        .await;
    client
        .transaction(pgway::proto::TransactionRequest {
            statements: vec![pgway::proto::Statement {
                sql: "SELECT 1".into(),
                params: vec![],
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        gw.metric("pgway_transactions_total{outcome=\"committed\"}")
            .await,
        committed + 1.0
    );
}

#[tokio::test]
async fn request_ids_come_back() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let mut request = tonic::Request::new(query("SELECT 1", vec![]));
    request
        .metadata_mut()
        .insert("x-request-id", "order-4711".parse().unwrap());
    let response = client.query(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "order-4711"
    );

    // Errors carry it too.
    let mut request = tonic::Request::new(query("SELEC", vec![]));
    request
        .metadata_mut()
        .insert("x-request-id", "order-4712".parse().unwrap());
    let status = client.query(request).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "order-4712");

    // A call without one gets an id for the logs only: none is made up for the response.
    let response = client.query(query("SELECT 1", vec![])).await.unwrap();
    assert!(response.metadata().get("x-request-id").is_none());
}

/// The `pgway` binary serving the test server's `postgres` database openly, with gRPC and
/// metrics on the given loopback ports; the caller adds its own settings and spawns it.
async fn gateway_process(grpc: u16, metrics: u16) -> Command {
    let pg = postgres().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgway"));
    command
        .env("PGWAY_DATABASE_URL", pg.url("postgres"))
        .env("PGWAY_AUTH", "none")
        .env("PGWAY_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("PGWAY_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
        .env("PGWAY_PG_ADDR", "");
    command
}

/// The binary's JSON logs show each connection's life and each call; `pgway stats` prints
/// the pool.
#[tokio::test]
async fn logs_show_connections_and_calls_and_stats_prints_the_pool() {
    let (grpc, metrics) = (free_port(), free_port());
    let mut child = gateway_process(grpc, metrics)
        .await
        .env("PGWAY_POOL_MIN", "1")
        .env("PGWAY_LOG_FORMAT", "json")
        .env("PGWAY_LOG", "pgway=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let channel = connect_when_up(&format!("127.0.0.1:{grpc}")).await;
    let mut client = DatabaseClient::new(channel);
    let mut request = tonic::Request::new(query("SELECT 1", vec![]));
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-1".parse().unwrap());
    client.query(request).await.unwrap();

    let stats = Command::new(env!("CARGO_BIN_EXE_pgway"))
        .args(["stats", "--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .output()
        .unwrap();
    assert!(stats.status.success());
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("pool maximum"), "{stats}");
    assert!(stats.contains("connections idle"), "{stats}");

    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let events: Vec<serde_json::Value> = lines
        .join()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .filter(move |e| e["message"] == message)
            .collect::<Vec<_>>()
    };
    let connecting = find("connecting");
    assert!(
        !connecting.is_empty()
            && connecting[0]["attempt"].is_number()
            && connecting[0]["backoff_ms"].is_number(),
        "{events:?}"
    );
    let connected = find("connected");
    assert!(
        connected
            .iter()
            .all(|e| e["backend_pid"].as_i64().is_some_and(|p| p > 0) && e["conn_id"].is_number())
    );
    assert!(!find("checked out").is_empty(), "no checkout logged");
    let calls = find("call finished");
    let call = calls
        .iter()
        .find(|e| e["span"]["request_id"] == "trace-me-1")
        .unwrap_or_else(|| panic!("no call line with the request id: {calls:?}"));
    assert_eq!(call["code"], "OK");
    assert_eq!(call["span"]["method"], "Query");
    assert_eq!(call["span"]["caller"], "open");
    assert!(
        call["span"]["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "the caller's address: {call:?}"
    );
    assert!(call["duration_ms"].is_number());
    let closed = find("closed");
    assert!(
        closed.iter().any(|e| e["reason"] == "shutdown"),
        "{closed:?}"
    );
}

/// Right after start-up, before any call or connection event, `/metrics` already has every
/// series an alert may name, at zero, with its HELP text; `pgway_database_up` says whether the
/// database is reachable, and the pool keeps its default minimum of 5 connections ready.
#[tokio::test]
async fn every_series_exists_from_the_start() {
    let (grpc, metrics) = (free_port(), free_port());
    let mut child = gateway_process(grpc, metrics)
        .await
        .env("PGWAY_POOL_MAX", "8")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
    // Before the monitor's first check: the series exists, at 0. (Only a scrape that happens
    // before the check sees 0, so the first scrape is all this can look at.)
    let first = loop {
        if tokio::net::TcpStream::connect(metrics).await.is_ok() {
            break scrape(metrics).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let samples = |text: &str, name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .count()
    };
    for (name, kind, at_least) in [
        ("pgway_requests_total", "counter", 4 * 17),
        ("pgway_request_duration_seconds_count", "histogram", 4),
        ("pgway_requests_in_flight", "gauge", 1),
        ("pgway_connections_opened_total", "counter", 1),
        ("pgway_connections_closed_total", "counter", 6),
        ("pgway_connection_errors_total", "counter", 8),
        ("pgway_pool_acquire_timeouts_total", "counter", 1),
        ("pgway_retries_total", "counter", 3),
        ("pgway_shed_total", "counter", 1),
        ("pgway_transactions_total", "counter", 4),
        ("pgway_auth_failures_total", "counter", 12),
        ("pgway_caller_limited_total", "counter", 2),
        ("pgway_database_up", "gauge", 1),
    ] {
        assert!(
            samples(&first, name) >= at_least,
            "fewer than {at_least} samples of {name}:\n{first}"
        );
        let family = name.trim_end_matches("_count");
        assert!(
            first.contains(&format!("# TYPE {family} {kind}")),
            "no TYPE of {family}:\n{first}"
        );
        assert!(
            first.contains(&format!("# HELP {family} ")),
            "no HELP of {family}:\n{first}"
        );
    }
    for sample in [
        "pgway_shed_total{door=\"grpc\"} 0",
        "pgway_shed_total{door=\"postgres\"} 0",
        "pgway_pool_acquire_timeouts_total{door=\"postgres\"} 0",
        "pgway_pg_refusals_total{reason=\"pin_cap\"} 0",
        "pgway_requests_total{method=\"Query\",code=\"UNAVAILABLE\"} 0",
        "pgway_transactions_total{outcome=\"outcome_unknown\"} 0",
        "pgway_retries_total{reason=\"server_restart\"} 0",
    ] {
        assert!(first.contains(sample), "no {sample:?}:\n{first}");
    }
    let up = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("pgway_database_up "))
            .map(|v| v.trim().to_owned())
    };
    assert!(matches!(up(&first).as_deref(), Some("0" | "1")), "{first}");
    let idle = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("pgway_pool_connections{door=\"grpc\",state=\"idle\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually(
        Duration::from_secs(15),
        "database_up 1 and 5 idle connections ready",
        || async {
            let text = scrape(metrics).await;
            up(&text).as_deref() == Some("1") && idle(&text) >= 5.0
        },
    )
    .await;
    let text = scrape(metrics).await;
    assert!(text.contains("pgway_pool_min_connections 5"), "{text}");
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

/// The calls' durations and the pool's waits are histograms, and no label carries SQL.
async fn calls_and_waits_are_timed_and_labels_carry_no_sql(gw: &Gateway) {
    let text = gw.scrape().await;
    assert!(
        text.contains("pgway_request_duration_seconds_bucket{method=\"Query\""),
        "{text}"
    );
    assert!(text.contains("pgway_pool_wait_seconds_bucket"), "{text}");
    // Labels never carry SQL.
    assert!(!text.contains("advisory"));
}
