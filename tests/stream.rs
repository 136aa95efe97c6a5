//! QueryStream: rows in batches as PostgreSQL produces them, with backpressure.

mod support;

use std::time::Duration;

use futures::StreamExt;
use pgway::proto::{QueryStreamResponse, value::Kind};
use support::*;
use tonic::Code;

async fn collect(
    client: &mut pgway::proto::database_client::DatabaseClient<tonic::transport::Channel>,
    request: pgway::proto::QueryRequest,
) -> Result<Vec<QueryStreamResponse>, tonic::Status> {
    let mut stream = client.query_stream(request).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.next().await {
        messages.push(message?);
    }
    Ok(messages)
}

#[tokio::test]
async fn rows_arrive_in_batches_with_columns_first_and_count_last() {
    let gw = Gateway::with_settings(&["--stream-batch-rows", "100"]).await;
    let mut client = gw.client().await;
    let messages = collect(
        &mut client,
        query(
            "SELECT g AS n, 'row ' || g AS label FROM generate_series(1, 1050) g",
            vec![],
        ),
    )
    .await
    .unwrap();
    assert!(messages.len() >= 11, "{} messages", messages.len());
    assert_eq!(messages[0].columns.len(), 2);
    assert_eq!(messages[0].columns[0].name, "n");
    assert!(
        messages[1..].iter().all(|m| m.columns.is_empty()),
        "columns only in the first message"
    );
    let last = messages.last().unwrap();
    assert_eq!(last.rows_affected, 1050);
    assert!(!last.truncated);
    assert!(
        messages[..messages.len() - 1]
            .iter()
            .all(|m| m.rows_affected == 0)
    );
    assert!(messages.iter().all(|m| m.rows.len() <= 100));
    // Every row, once, in order.
    let numbers: Vec<i64> = messages
        .iter()
        .flat_map(|m| &m.rows)
        .map(|r| match r.values[0].kind {
            Some(Kind::IntValue(n)) => n,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(numbers, (1..=1050).collect::<Vec<_>>());
}

#[tokio::test]
async fn max_rows_cuts_the_stream_and_says_so() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let mut request = query("SELECT g FROM generate_series(1, 1000) g", vec![]);
    request.max_rows = 250;
    let messages = collect(&mut client, request).await.unwrap();
    let rows: usize = messages.iter().map(|m| m.rows.len()).sum();
    assert_eq!(rows, 250);
    assert!(messages.last().unwrap().truncated);
    assert_eq!(messages.last().unwrap().rows_affected, 250);

    // Exactly at the cap is not truncated.
    let mut request = query("SELECT g FROM generate_series(1, 250) g", vec![]);
    request.max_rows = 250;
    let messages = collect(&mut client, request).await.unwrap();
    assert!(!messages.last().unwrap().truncated);
}

#[tokio::test]
async fn empty_results_commands_and_server_text_types() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let messages = collect(&mut client, query("SELECT 1 AS one WHERE false", vec![]))
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].columns[0].name, "one");
    assert_eq!(messages[0].rows_affected, 0);

    let messages = collect(
        &mut client,
        query("CREATE TABLE t (id int, at timestamptz)", vec![]),
    )
    .await
    .unwrap();
    assert_eq!(messages.len(), 1);
    let messages = collect(
        &mut client,
        query("INSERT INTO t SELECT g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 day' FROM generate_series(1, 3000) g", vec![]),
    )
    .await
    .unwrap();
    assert_eq!(messages.last().unwrap().rows_affected, 3000);

    // timestamptz gets its text from the server between batches.
    let messages = collect(
        &mut client,
        query("SELECT id, at, at::text FROM t ORDER BY id", vec![]),
    )
    .await
    .unwrap();
    let rows: Vec<_> = messages.iter().flat_map(|m| &m.rows).collect();
    assert_eq!(rows.len(), 3000);
    for row in rows {
        assert_eq!(row.values[1], row.values[2]);
    }
}

#[tokio::test]
async fn errors_before_the_first_row_are_the_call_status() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let status = collect(&mut client, query("SELECT * FROM missing", vec![]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).reason, "UNDEFINED_TABLE");

    // An error in the middle of the result ends the stream with that error.
    let status = collect(
        &mut client,
        query(
            "SELECT 1 / (g - 5000) FROM generate_series(1, 10000) g",
            vec![],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).reason, "DIVISION_BY_ZERO");

    // A read-only stream refuses writes.
    let mut request = query("INSERT INTO nowhere SELECT 1 RETURNING 1", vec![]);
    request.read_only = true;
    assert!(collect(&mut client, request).await.is_err());
}

#[tokio::test]
async fn a_caller_that_walks_away_frees_its_connection() {
    let gw = Gateway::with_settings(&[
        "--pool-max",
        "1",
        "--pool-min",
        "1",
        "--acquire-timeout",
        "10s",
    ])
    .await;
    let mut client = gw.client().await;
    let mut stream = client
        .query_stream(query(
            "SELECT g FROM generate_series(1, 10000000) g",
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.rows.is_empty());
    drop(stream);
    // The only connection comes back (or is replaced) and serves the next call.
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.query(query("SELECT 42", vec![])),
    )
    .await
    .expect("the pool's only connection was not released")
    .unwrap()
    .into_inner();
    assert_eq!(scalar(&response), Some(Kind::IntValue(42)));
    // And the huge query is not still running on the server.
    let direct = gw.direct().await;
    statements_end(
        &direct,
        "%generate_series(1, 10000000)%",
        Duration::from_secs(5),
        "the abandoned stream's query ended",
    )
    .await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// 400,000 rows of ~500 bytes (about 200 MB) stream through while the test process (gateway
/// and client together) grows by far less than the result.
#[tokio::test]
async fn a_result_larger_than_memory_streams_in_flat_memory() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let baseline = rss_bytes();
    let mut stream = client
        .query_stream(query(
            "SELECT g, repeat(md5(g::text), 15) AS payload FROM generate_series(1, 400000) g",
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    let (mut rows, mut bytes, mut peak) = (0u64, 0u64, baseline);
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        rows += message.rows.len() as u64;
        bytes += message
            .rows
            .iter()
            .map(|r| match &r.values[1].kind {
                Some(Kind::StringValue(s)) => s.len() as u64,
                _ => 0,
            })
            .sum::<u64>();
        peak = peak.max(rss_bytes());
    }
    assert_eq!(rows, 400_000);
    assert!(bytes > 190_000_000, "{bytes}");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 60 * 1024 * 1024,
        "memory grew by {} MiB while streaming {} MiB",
        growth >> 20,
        bytes >> 20
    );
}
