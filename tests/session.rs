//! No session state from one caller ever reaches the next: each kind of state is left behind
//! many times over a pool of one connection (every call reuses it) and a pool of several.

mod support;

use pgway::proto::value::Kind;
use support::*;

/// (what the first caller leaves behind, what the next caller runs, the answer a clean session gives)
fn leaks(role: &str) -> Vec<(String, String, Kind)> {
    vec![
        (
            "SET search_path = leaked, public".into(),
            "SHOW search_path".into(),
            Kind::StringValue("\"$user\", public".into()),
        ),
        (
            "SET statement_timeout = '1234ms'".into(),
            "SHOW statement_timeout".into(),
            // The gateway's own setting (PGWAY_STATEMENT_TIMEOUT, from the request timeout).
            Kind::StringValue("30s".into()),
        ),
        (
            "SELECT set_config('app.tenant', 'acme', false)".into(),
            "SELECT coalesce(current_setting('app.tenant', true), '')".into(),
            Kind::StringValue(String::new()),
        ),
        (
            format!("SET ROLE {role}"),
            "SELECT current_user::text".into(),
            Kind::StringValue("postgres".into()),
        ),
        (
            format!("SET SESSION AUTHORIZATION {role}"),
            "SELECT session_user::text".into(),
            Kind::StringValue("postgres".into()),
        ),
        (
            "CREATE TEMP TABLE leaked_temp (a int)".into(),
            "SELECT (to_regclass('leaked_temp') IS NOT NULL)::int::int8".into(),
            Kind::IntValue(0),
        ),
        (
            "PREPARE leaked_plan AS SELECT 1".into(),
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaked_plan'".into(),
            Kind::IntValue(0),
        ),
        (
            "LISTEN leaked_channel".into(),
            "SELECT count(*) FROM pg_listening_channels()".into(),
            Kind::IntValue(0),
        ),
        (
            "SELECT pg_advisory_lock(42)".into(),
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                .into(),
            Kind::IntValue(0),
        ),
        (
            "DECLARE leaked_cursor CURSOR WITH HOLD FOR SELECT 1".into(),
            "SELECT count(*) FROM pg_cursors WHERE name = 'leaked_cursor'".into(),
            Kind::IntValue(0),
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE".into(),
            "SHOW transaction_isolation".into(),
            Kind::StringValue("read committed".into()),
        ),
        (
            "SET default_transaction_read_only = on".into(),
            "SHOW transaction_read_only".into(),
            Kind::StringValue("off".into()),
        ),
    ]
}

async fn nothing_leaks(settings: &[&str], rounds: usize) {
    let gw = Gateway::with_settings(settings).await;
    let role = format!("leaker_{}", gw.database);
    gw.direct()
        .await
        .batch_execute(&format!("CREATE ROLE {role}; CREATE SCHEMA leaked;"))
        .await
        .unwrap();
    let mut client = gw.client().await;
    for round in 0..rounds {
        for (leave, check, clean) in leaks(&role) {
            run(&mut client, &leave, vec![]).await;
            // Several checks, so with a pool of many at least some land on the same connection.
            for _ in 0..3 {
                let response = run(&mut client, &check, vec![]).await;
                assert_eq!(
                    scalar(&response),
                    Some(clean.clone()),
                    "round {round}: after `{leave}`, `{check}`"
                );
            }
        }
    }
}

#[tokio::test]
async fn nothing_leaks_over_a_pool_of_one() {
    nothing_leaks(&["--pool-max", "1", "--pool-min", "1"], 5).await;
}

#[tokio::test]
async fn nothing_leaks_over_a_pool_of_many() {
    nothing_leaks(&["--pool-max", "4", "--pool-min", "4"], 5).await;
}

#[tokio::test]
async fn session_state_inside_transactions_does_not_leak_either() {
    let gw = Gateway::with_settings(&["--pool-max", "1", "--pool-min", "1"]).await;
    let mut client = gw.client().await;
    for _ in 0..5 {
        client
            .transaction(pgway::proto::TransactionRequest {
                statements: vec![
                    pgway::proto::Statement {
                        sql: "SET search_path = pg_catalog".into(),
                        params: vec![],
                    },
                    pgway::proto::Statement {
                        sql: "CREATE TEMP TABLE tx_temp (a int)".into(),
                        params: vec![],
                    },
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        let response = run(&mut client, "SELECT current_setting('search_path') || ' ' || (SELECT count(*) FROM pg_class WHERE relname = 'tx_temp')", vec![]).await;
        assert_eq!(
            scalar(&response),
            Some(Kind::StringValue("\"$user\", public 0".into()))
        );
    }
}

/// A plain SELECT changes nothing, so the connection goes back without a reset round trip:
/// its cached prepared statements survive from call to call.
#[tokio::test]
async fn plain_statements_skip_the_reset() {
    let gw = Gateway::with_settings(&["--pool-max", "1", "--pool-min", "1"]).await;
    let mut client = gw.client().await;
    run(&mut client, "SELECT 1 AS a", vec![]).await;
    run(&mut client, "SELECT 2 AS b", vec![]).await;
    let response = run(
        &mut client,
        "SELECT count(*) FROM pg_prepared_statements",
        vec![],
    )
    .await;
    let Some(Kind::IntValue(cached)) = scalar(&response) else {
        panic!()
    };
    assert!(
        cached >= 3,
        "statements were dropped between plain calls: {cached}"
    );

    // After a session change the reset runs and drops them.
    run(&mut client, "SET work_mem = '8MB'", vec![]).await;
    let response = run(
        &mut client,
        "SELECT count(*) FROM pg_prepared_statements",
        vec![],
    )
    .await;
    assert_eq!(scalar(&response), Some(Kind::IntValue(1)));
}
