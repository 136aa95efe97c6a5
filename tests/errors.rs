//! Every error mapping: PostgreSQL's errors keep their SQLSTATE and fields in a
//! `google.rpc.ErrorInfo` (domain `postgresql`), the gateway's own get domain `pgway`.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tonic::Code;

/// Runs `sql` and returns the error status, failing if it succeeded.
async fn fails(gw: &Gateway, sql: &str, params: Vec<pgway::proto::Value>) -> tonic::Status {
    let mut client = gw.client().await;
    match client.query(query(sql, params)).await {
        Ok(response) => panic!("{sql} succeeded: {:?}", response.into_inner()),
        Err(status) => status,
    }
}

async fn setup(gw: &Gateway) {
    // Roles are cluster-wide: each test's role is named after its database.
    let sql = "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id),
                                 qty int NOT NULL CHECK (qty > 0));
             INSERT INTO parent VALUES (1);
             CREATE ROLE nobody_special;
             CREATE TABLE secret (x int);
             REVOKE ALL ON secret FROM PUBLIC;"
        .replace("nobody_special", &format!("nobody_{}", gw.database));
    gw.direct().await.batch_execute(&sql).await.expect("setup");
}

/// PostgreSQL errors and what the gateway answers for each: (sql, code, reason, sqlstate).
const POSTGRES_ERROR_CASES: &[(&str, Code, &str, &str)] = &[
    (
        "INSERT INTO parent VALUES (1)",
        Code::AlreadyExists,
        "UNIQUE_VIOLATION",
        "23505",
    ),
    (
        "INSERT INTO child VALUES (1, 99, 1)",
        Code::FailedPrecondition,
        "FOREIGN_KEY_VIOLATION",
        "23503",
    ),
    (
        "INSERT INTO child VALUES (1, 1, NULL)",
        Code::FailedPrecondition,
        "NOT_NULL_VIOLATION",
        "23502",
    ),
    (
        "INSERT INTO child VALUES (1, 1, -5)",
        Code::FailedPrecondition,
        "CHECK_VIOLATION",
        "23514",
    ),
    (
        "SELECT * FROM no_such_table",
        Code::InvalidArgument,
        "UNDEFINED_TABLE",
        "42P01",
    ),
    ("SELEC 1", Code::InvalidArgument, "SYNTAX_ERROR", "42601"),
    (
        "SELECT 1/0",
        Code::InvalidArgument,
        "DIVISION_BY_ZERO",
        "22012",
    ),
    (
        "SELECT 'x'::int",
        Code::InvalidArgument,
        "INVALID_TEXT_REPRESENTATION",
        "22P02",
    ),
    (
        "SELECT no_such_column FROM parent",
        Code::InvalidArgument,
        "UNDEFINED_COLUMN",
        "42703",
    ),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = '40001'; END $$",
        Code::Aborted,
        "SERIALIZATION_FAILURE",
        "40001",
    ),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = '40P01'; END $$",
        Code::Aborted,
        "DEADLOCK_DETECTED",
        "40P01",
    ),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = '53300'; END $$",
        Code::ResourceExhausted,
        "TOO_MANY_CONNECTIONS",
        "53300",
    ),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = '57P01'; END $$",
        Code::Unavailable,
        "ADMIN_SHUTDOWN",
        "57P01",
    ),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = '08006'; END $$",
        Code::Unavailable,
        "CONNECTION_FAILURE",
        "08006",
    ),
    (
        "DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = 'XX000'; END $$",
        Code::Internal,
        "INTERNAL_ERROR",
        "XX000",
    ),
];

#[tokio::test]
async fn postgres_errors_map_to_codes_with_error_info() {
    let gw = Gateway::start().await;
    setup(&gw).await;
    for &(sql, code, reason, sqlstate) in POSTGRES_ERROR_CASES {
        let status = fails(&gw, sql, vec![]).await;
        assert_eq!(status.code(), code, "{sql}: {status:?}");
        let info = error_info(&status);
        assert_eq!(info.domain, "postgresql", "{sql}");
        assert_eq!(info.reason, reason, "{sql}");
        assert_eq!(
            info.metadata.get("sqlstate").map(String::as_str),
            Some(sqlstate),
            "{sql}"
        );
        assert!(
            status.message().contains(sqlstate),
            "{sql}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn constraint_fields_are_passed_on() {
    let gw = Gateway::start().await;
    setup(&gw).await;
    let status = fails(&gw, "INSERT INTO child VALUES (1, 99, 1)", vec![]).await;
    let info = error_info(&status);
    assert_eq!(
        info.metadata.get("constraint").map(String::as_str),
        Some("child_parent_id_fkey")
    );
    assert_eq!(
        info.metadata.get("table").map(String::as_str),
        Some("child")
    );
    assert_eq!(
        info.metadata.get("schema").map(String::as_str),
        Some("public")
    );
    assert!(
        info.metadata
            .get("detail")
            .is_some_and(|d| d.contains("99")),
        "{info:?}"
    );

    let status = fails(&gw, "INSERT INTO child VALUES (2, 1, NULL)", vec![]).await;
    let info = error_info(&status);
    assert_eq!(info.metadata.get("column").map(String::as_str), Some("qty"));

    let status = fails(&gw, "SELECT * FROM no_such_table", vec![]).await;
    assert!(error_info(&status).metadata.contains_key("position"));
}

#[tokio::test]
async fn permission_denied_and_read_only() {
    let gw = Gateway::start().await;
    setup(&gw).await;
    gw.direct()
        .await
        .batch_execute(&format!("GRANT ALL ON parent TO nobody_{}", gw.database))
        .await
        .unwrap();
    // SET ROLE is session state: the connection is reset before anyone else gets it.
    let mut client = gw.client().await;
    let response = client
        .transaction(pgway::proto::TransactionRequest {
            statements: vec![
                pgway::proto::Statement {
                    sql: format!("SET LOCAL ROLE nobody_{}", gw.database),
                    params: vec![],
                },
                pgway::proto::Statement {
                    sql: "SELECT * FROM secret".into(),
                    params: vec![],
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(response.code(), Code::PermissionDenied);
    let info = error_info(&response);
    assert_eq!(info.reason, "INSUFFICIENT_PRIVILEGE");
    assert_eq!(
        info.metadata.get("statement_index").map(String::as_str),
        Some("1")
    );

    let mut request = query("INSERT INTO parent VALUES (2)", vec![]);
    request.read_only = true;
    let status = client.query(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).reason, "READ_ONLY_SQL_TRANSACTION");
    // Nothing was written.
    let count: i64 = gw
        .direct()
        .await
        .query_one("SELECT count(*) FROM parent", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);

    let mut request = query("SELECT count(*) FROM parent", vec![]);
    request.read_only = true;
    let response = client.query(request).await.unwrap().into_inner();
    assert_eq!(
        scalar(&response),
        Some(pgway::proto::value::Kind::IntValue(1))
    );
}

#[tokio::test]
async fn gateway_errors_have_their_own_reasons() {
    let gw = Gateway::with_settings(&["--max-rows", "10", "--max-response-bytes", "64KiB"]).await;
    let status = fails(&gw, "SELECT g FROM generate_series(1, 11) g", vec![]).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    let info = error_info(&status);
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("pgway", "RESULT_TOO_LARGE")
    );
    assert!(status.message().contains("QueryStream"));

    let status = fails(&gw, "SELECT repeat('x', 100000)", vec![]).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "RESULT_TOO_LARGE");

    let status = fails(&gw, "", vec![]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).reason, "INVALID_REQUEST");

    let status = fails(&gw, "SELECT $1::int", vec![]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("1 parameter"),
        "{}",
        status.message()
    );

    let status = fails(&gw, "BEGIN", vec![]).await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = fails(&gw, "SELECT 1; SELECT 2", vec![]).await;
    assert_eq!(status.code(), Code::InvalidArgument);

    // Up to the cap is fine, and the gateway still works after all of the above.
    let mut client = gw.client().await;
    let response = run(
        &mut client,
        "SELECT g FROM generate_series(1, 10) g",
        vec![],
    )
    .await;
    assert_eq!(response.rows.len(), 10);
}

#[tokio::test]
async fn a_missing_database_is_reported_at_once() {
    let pg = postgres().await;
    let gw = Gateway::serving(
        &pg.url("no_such_database"),
        "none".into(),
        &["--acquire-timeout", "20s"],
    )
    .await;
    let mut client = gw.client().await;
    let started = Instant::now();
    let status = client.query(query("SELECT 1", vec![])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let info = error_info(&status);
    assert_eq!(info.reason, "CONNECT_FAILED");
    assert_eq!(
        info.metadata.get("sqlstate").map(String::as_str),
        Some("3D000")
    );
    assert!(
        status.message().contains("no_such_database"),
        "{}",
        status.message()
    );
    // Well before the 20 s acquire timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unknown_role_is_reported_and_no_password_leaks() {
    let pg = postgres().await;
    let url = format!(
        "postgres://ghost:hunter2secret@127.0.0.1:{}/postgres",
        pg.port()
    );
    let gw = Gateway::serving(&url, "none".into(), &["--acquire-timeout", "20s"]).await;
    let mut client = gw.client().await;
    let status = client.query(query("SELECT 1", vec![])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        error_info(&status)
            .metadata
            .get("sqlstate")
            .map(String::as_str),
        Some("28000")
    );
    assert!(!status.message().contains("hunter2secret"));
    assert!(!format!("{status:?}").contains("hunter2secret"));
}

/// The deadline counts from when the call's headers arrived, not from when its message was
/// complete: tonic's own timer for `grpc-timeout` starts with the headers and would answer
/// CANCELLED. Here the message follows its headers 100 ms later, as a delayed ACK can make it
/// from a client with Nagle's algorithm on.
#[tokio::test]
async fn a_deadline_counts_from_the_headers_of_a_late_message() {
    use http_body_util::BodyExt;
    use prost::Message;

    let gw = Gateway::with_settings(&[]).await;
    let message = query("SELECT pg_sleep(10)", vec![]).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    let late = futures::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(framed)))
    });
    let request = http::Request::post(format!("http://{}/pgway.v1.Database/Query", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            late,
        )))
        .unwrap();
    let response = plain_http2().request(request).await.unwrap();
    let headers = response.headers().clone();
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned()
        .unwrap_or_default();
    let status = headers
        .get("grpc-status")
        .or_else(|| trailers.get("grpc-status"))
        .map(|code| Code::from_bytes(code.as_bytes()));
    assert_eq!(
        status,
        Some(Code::DeadlineExceeded),
        "{headers:?} {trailers:?}"
    );
    let direct = gw.direct().await;
    statements_end(
        &direct,
        "SELECT pg_sleep%",
        Duration::from_secs(5),
        "the cancelled statement is gone",
    )
    .await;
}

#[tokio::test]
async fn a_deadline_cancels_the_statement() {
    let gw = Gateway::with_settings(&["--pool-max", "1", "--pool-min", "1"]).await;
    let mut client = gw.client().await;
    // The deadline as a caller's grpc-timeout header, sent by a client that leaves enforcing it
    // to the gateway.
    let mut request = tonic::Request::new(query("SELECT pg_sleep(10)", vec![]));
    request
        .metadata_mut()
        .insert("grpc-timeout", "500m".parse().unwrap());
    let started = Instant::now();
    let status = gw
        .client_without_local_deadline()
        .query(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The backend stops sleeping: no pg_sleep left running.
    let direct = gw.direct().await;
    statements_end(
        &direct,
        "SELECT pg_sleep%",
        Duration::from_secs(5),
        "the cancelled statement is gone",
    )
    .await;
    // The pool of one serves the next call.
    let response = run(&mut client, "SELECT 1", vec![]).await;
    assert_eq!(response.rows.len(), 1);

    // The server's own cap applies when the caller sets none.
    let gw = Gateway::with_settings(&["--request-timeout", "300ms"]).await;
    let mut client = gw.client().await;
    let status = client
        .query(query("SELECT pg_sleep(5)", vec![]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

/// A method the Database service doesn't have, and a service the gateway doesn't serve, are
/// UNIMPLEMENTED: the Database service's calls skip the general router, the rest go through it.
#[tokio::test]
async fn unknown_methods_and_services_are_unimplemented() {
    let gw = Gateway::start().await;
    let mut grpc = tonic::client::Grpc::new(gw.channel().await);
    for path in [
        "/pgway.v1.Database/Nope",
        "/pgway.v1.Nope/Query",
        "/pgway.v1.DatabaseX/Query",
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, pgway::proto::QueryResponse, _>(
                tonic::Request::new(query("SELECT 1", vec![])),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    // The service itself still answers next to them.
    let mut client = gw.client().await;
    let response = run(&mut client, "SELECT 1", vec![]).await;
    assert_eq!(response.rows.len(), 1);
}
