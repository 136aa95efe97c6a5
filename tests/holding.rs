//! Each way a client can hold a server connection without end is bounded: a pipeline left
//! without a Sync, COPY FROM STDIN that never sends data, results never read, a pinned client
//! that sits idle, a transaction that goes on and on. On a pool of one connection, another
//! client is served once the bound has passed; the holder is told with PostgreSQL's SQLSTATE
//! (when it still reads), nothing it half-sent is applied, and the event is counted.

mod support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::door::{Door, POSTGRES_PASSWORD};
use support::raw::{Raw, bind_execute, log_in};
use support::*;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;

/// Far longer than any bound in these tests: reaching it is a failure, not a wait.
const FENCE: Duration = Duration::from_secs(30);

async fn door_of_one(settings: &[&str]) -> Door {
    let mut argv = vec!["--pool-max", "1"];
    argv.extend_from_slice(settings);
    let door = Door::start(&argv).await;
    door.direct()
        .await
        .batch_execute("CREATE TABLE held (i int)")
        .await
        .unwrap();
    door
}

async fn holder(door: &Door) -> Raw {
    log_in(
        "127.0.0.1",
        door.addr,
        &door.database,
        "postgres",
        POSTGRES_PASSWORD,
    )
    .await
    .expect("the holder logs in")
}

/// Waits until a client holds the door's server connection.
async fn linked(door: &Door) {
    eventually(FENCE, "a client holds the server connection", || async {
        door.gw.metric("pgway_pg_clients{state=\"active\"}").await >= 1.0
    })
    .await;
}

/// Another client, served once the holder's bound has passed: how long that took, and the
/// rows of `held` it sees.
async fn served(door: &Door) -> (Duration, i64) {
    let started = Instant::now();
    let other = timeout(FENCE, door.client())
        .await
        .expect("other client logs in");
    let row = timeout(FENCE, other.query_one("SELECT count(*) FROM held", &[]))
        .await
        .expect("the other client is served within the fence")
        .expect("the other client's query");
    (started.elapsed(), row.get(0))
}

async fn timeouts(door: &Door, kind: &str) -> f64 {
    door.gw
        .metric(&format!("pgway_pg_timeouts_total{{kind=\"{kind}\"}}"))
        .await
}

/// Parse, Bind and Execute of an INSERT with no Sync behind them, then silence: the backend
/// waits on the client inside a transaction. PGWAY_PG_IDLE_IN_TRANSACTION_TIMEOUT ends it with
/// 25P03, as
/// PostgreSQL's idle_in_transaction_session_timeout would, and the INSERT is not applied.
#[tokio::test]
async fn a_pipeline_left_without_sync_is_ended_at_the_idle_transaction_timeout() {
    let door = door_of_one(&["--pg-idle-in-transaction-timeout", "1s"]).await;
    let before = timeouts(&door, "idle_transaction").await;
    let mut holder = holder(&door).await;
    let mut out = BytesMut::new();
    frontend::parse("", "INSERT INTO held VALUES (1)", [], &mut out).unwrap();
    bind_execute("", &mut out);
    holder.send(&out).await;
    linked(&door).await;

    let (took, rows) = served(&door).await;
    println!("another client served {took:?} after a pipeline without Sync went silent");
    assert_eq!(rows, 0, "the INSERT without its Sync was not applied");
    let code = timeout(FENCE, holder.last_error()).await.unwrap();
    assert_eq!(code, "25P03", "the holder is told why");
    assert!(timeouts(&door, "idle_transaction").await > before);
}

/// Parse and Describe with a Flush, answered, then silence (the backend still holds the
/// pipeline's implicit transaction): ended like an idle transaction, too.
#[tokio::test]
async fn a_flushed_pipeline_left_without_sync_is_ended_too() {
    let door = door_of_one(&["--pg-idle-in-transaction-timeout", "1s"]).await;
    let mut holder = holder(&door).await;
    let mut out = BytesMut::new();
    frontend::parse("", "SELECT count(*) FROM held", [], &mut out).unwrap();
    frontend::describe(b'S', "", &mut out).unwrap();
    frontend::flush(&mut out);
    holder.send(&out).await;
    timeout(FENCE, holder.until(b'T'))
        .await
        .unwrap()
        .expect("the Describe is answered");

    let (took, _) = served(&door).await;
    println!("another client served {took:?} after a flushed pipeline went silent");
    assert_eq!(timeout(FENCE, holder.last_error()).await.unwrap(), "25P03");
}

/// COPY FROM STDIN that never sends a byte of data: ended like an idle transaction.
#[tokio::test]
async fn a_copy_that_never_sends_data_is_ended_at_the_idle_transaction_timeout() {
    let door = door_of_one(&["--pg-idle-in-transaction-timeout", "1s"]).await;
    let mut holder = holder(&door).await;
    let mut out = BytesMut::new();
    frontend::query("COPY held FROM STDIN", &mut out).unwrap();
    holder.send(&out).await;
    timeout(FENCE, holder.until(b'G'))
        .await
        .unwrap()
        .expect("CopyInResponse");

    let (took, rows) = served(&door).await;
    println!("another client served {took:?} after a COPY went silent");
    assert_eq!(rows, 0);
    assert_eq!(timeout(FENCE, holder.last_error()).await.unwrap(), "25P03");
}

/// A client that asks for hundreds of megabytes and reads none of it: the door's write to it
/// stalls; after PGWAY_PG_CLIENT_WRITE_TIMEOUT the client is dropped (it can't be told: it doesn't
/// read) and the server connection is cancelled and given to the next client.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_query_cancelled() {
    let door = door_of_one(&["--pg-client-write-timeout", "1s"]).await;
    let before = timeouts(&door, "client_not_reading").await;
    let mut holder = holder(&door).await;
    let mut out = BytesMut::new();
    frontend::query(
        "SELECT repeat('x', 1000000) FROM generate_series(1, 2000)",
        &mut out,
    )
    .unwrap();
    holder.send(&out).await;
    linked(&door).await;

    let (took, _) = served(&door).await;
    println!("another client served {took:?} after a client stopped reading 2 GB");
    assert!(timeouts(&door, "client_not_reading").await > before);
    let direct = door.direct().await;
    eventually(FENCE, "the unread query is cancelled", || async {
        active_statements(&direct, "%generate_series(1, 2000)%").await == 0
    })
    .await;
    drop(holder);
}

/// With PGWAY_PG_CLIENT_IDLE_TIMEOUT, a pinned client that sits idle gives its server
/// connection back, and an idle unpinned one its place: both are told 57P05, as PostgreSQL's
/// idle_session_timeout tells them.
#[tokio::test]
async fn idle_clients_are_ended_at_the_client_idle_timeout() {
    let door = door_of_one(&["--pg-client-idle-timeout", "2s"]).await;
    let before = timeouts(&door, "client_idle").await;
    let (_idle, idle_connection) = door.connect().await;
    let (pinned, pinned_connection) = door.connect().await;
    pinned
        .batch_execute("CREATE TEMP TABLE mine (i int)")
        .await
        .unwrap();
    eventually(FENCE, "the temp table pins its client", || async {
        door.gw.metric("pgway_pg_clients{state=\"pinned\"}").await == 1.0
    })
    .await;

    let (took, _) = served(&door).await;
    println!("another client served {took:?} after a pinned client went idle");
    for connection in [pinned_connection, idle_connection] {
        let ended = timeout(FENCE, connection).await.unwrap().unwrap();
        let error = ended.expect_err("the idle client is ended");
        assert_eq!(error.code(), Some(&SqlState::IDLE_SESSION_TIMEOUT));
    }
    assert!(timeouts(&door, "client_idle").await >= before + 2.0);
}

/// With PGWAY_PG_TRANSACTION_TIMEOUT, a transaction that keeps going (never idle, so the idle
/// bounds don't apply) is ended with 25P04, as PostgreSQL 17's transaction_timeout ends it,
/// and none of it is applied.
#[tokio::test]
async fn a_transaction_that_goes_on_is_ended_at_the_transaction_timeout() {
    let door = door_of_one(&["--pg-transaction-timeout", "2s"]).await;
    let before = timeouts(&door, "transaction").await;
    let (client, _connection) = door.connect().await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO held VALUES (1)")
        .await
        .unwrap();
    let started = Instant::now();
    let error = loop {
        assert!(started.elapsed() < FENCE, "the transaction was never ended");
        if let Err(error) = client.batch_execute("SELECT pg_sleep(0.2)").await {
            break error;
        }
    };
    println!("transaction ended after {:?}", started.elapsed());
    assert_eq!(
        error.code(),
        Some(&SqlState::from_code("25P04")),
        "{error:?}"
    );
    let (_, rows) = served(&door).await;
    assert_eq!(rows, 0, "the ended transaction was rolled back");
    assert!(timeouts(&door, "transaction").await > before);
}
