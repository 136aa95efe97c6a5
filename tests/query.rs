//! The unary Query RPC against a real PostgreSQL.

mod support;

use pgway::proto::value::Kind;
use support::*;
use tonic::Code;

#[tokio::test]
async fn select_with_parameters() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let response = run(
        &mut client,
        "SELECT $1::int4 + 1 AS answer, $2::text AS greeting",
        vec![int(41), text("hi")],
    )
    .await;
    assert_eq!(response.columns.len(), 2);
    assert_eq!(response.columns[0].name, "answer");
    assert_eq!(response.columns[0].type_name, "int4");
    assert_eq!(response.columns[0].type_oid, 23);
    assert_eq!(response.rows[0].values[0].kind, Some(Kind::IntValue(42)));
    assert_eq!(
        response.rows[0].values[1].kind,
        Some(Kind::StringValue("hi".into()))
    );
    assert_eq!(response.rows_affected, 1);
}

#[tokio::test]
async fn writes_report_rows_affected_and_returning_rows() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let created = run(
        &mut client,
        "CREATE TABLE t (id serial PRIMARY KEY, v text)",
        vec![],
    )
    .await;
    assert!(created.columns.is_empty());
    let inserted = run(
        &mut client,
        "INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 3)",
        vec![],
    )
    .await;
    assert_eq!(inserted.rows_affected, 3);
    let returned = run(
        &mut client,
        "UPDATE t SET v = $1 WHERE id <= 2 RETURNING id",
        vec![text("y")],
    )
    .await;
    assert_eq!(returned.rows_affected, 2);
    assert_eq!(returned.rows.len(), 2);
    let deleted = run(&mut client, "DELETE FROM t", vec![]).await;
    assert_eq!(deleted.rows_affected, 3);
}

/// Each connection prepares a statement once and reuses it; a schema change that makes the
/// cached plan stale is handled by preparing again, not by failing the caller.
#[tokio::test]
async fn cached_statements_survive_schema_changes() {
    let gw = Gateway::with_settings(&["--pool-max", "1", "--pool-min", "1"]).await;
    let mut client = gw.client().await;
    run(&mut client, "CREATE TABLE s (a int)", vec![]).await;
    run(&mut client, "INSERT INTO s VALUES (1)", vec![]).await;
    for _ in 0..3 {
        run(&mut client, "SELECT * FROM s", vec![]).await;
    }
    let prepared = run(
        &mut client,
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT * FROM s'",
        vec![],
    )
    .await;
    assert_eq!(
        scalar(&prepared),
        Some(Kind::IntValue(1)),
        "prepared once, reused"
    );
    gw.direct()
        .await
        .batch_execute("ALTER TABLE s ADD COLUMN b text DEFAULT 'new'")
        .await
        .unwrap();
    let response = run(&mut client, "SELECT * FROM s", vec![]).await;
    assert_eq!(response.columns.len(), 2);
    assert_eq!(
        response.rows[0].values[1].kind,
        Some(Kind::StringValue("new".into()))
    );
    // A read-only Query of the same text, after one more change: the same.
    gw.direct()
        .await
        .batch_execute("ALTER TABLE s ADD COLUMN c int DEFAULT 3")
        .await
        .unwrap();
    let mut request = query("SELECT * FROM s", vec![]);
    request.read_only = true;
    let response = client
        .query(request)
        .await
        .expect("a read-only query after a schema change")
        .into_inner();
    assert_eq!(response.columns.len(), 3);
    assert_eq!(response.rows[0].values[2].kind, Some(Kind::IntValue(3)));
}

#[tokio::test]
async fn max_rows_lowers_the_cap_for_one_call() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let mut request = query("SELECT g FROM generate_series(1, 5) g", vec![]);
    request.max_rows = 5;
    assert_eq!(
        client
            .query(request.clone())
            .await
            .unwrap()
            .into_inner()
            .rows
            .len(),
        5
    );
    request.max_rows = 4;
    let status = client.query(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "RESULT_TOO_LARGE");
}
