//! A planned database restart with the console's PAUSE and RESUME costs the applications
//! nothing: clients of both doors write a ledger without pause; PAUSE lets what is in flight
//! finish and holds what starts; the real PostgreSQL of this test restarts; RESUME lets the
//! held work go on. No client sees an error, and the ledger holds exactly what the clients
//! were told was committed: nothing lost, nothing applied twice.
//!
//! Its own binary: it restarts the binary's cluster.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgway::proto::{Statement, TransactionRequest};
use support::door::{Door, POSTGRES_PASSWORD, cluster};
use support::*;
use tokio_postgres::NoTls;

const DOOR_WRITERS: i64 = 50;
const GRPC_WRITERS: i64 = 50;

/// One door client's loop: a two-statement transaction per round, each committed one
/// counted; the first error ends it and is returned.
async fn door_writer(
    client: tokio_postgres::Client,
    id: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<u64, String> {
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        let work = async {
            client.batch_execute("BEGIN").await?;
            client
                .execute("INSERT INTO ledger (writer, amount) VALUES ($1, 1)", &[&id])
                .await?;
            client
                .execute("UPDATE totals SET n = n + 1 WHERE writer = $1", &[&id])
                .await?;
            client.batch_execute("COMMIT").await
        };
        work.await
            .map_err(|e| format!("door writer {id} after {committed}: {e:?}"))?;
        committed += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(committed)
}

/// One gRPC caller's loop: a Transaction of the same two statements per round.
async fn grpc_writer(
    gw_client: pgway::proto::database_client::DatabaseClient<tonic::transport::Channel>,
    id: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<u64, String> {
    let mut client = gw_client;
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        let request = TransactionRequest {
            statements: vec![
                Statement {
                    sql: "INSERT INTO ledger (writer, amount) VALUES ($1, 1)".into(),
                    params: vec![int(id)],
                },
                Statement {
                    sql: "UPDATE totals SET n = n + 1 WHERE writer = $1".into(),
                    params: vec![int(id)],
                },
            ],
            ..Default::default()
        };
        client
            .transaction(request)
            .await
            .map_err(|e| format!("gRPC writer {id} after {committed}: {e:?}"))?;
        committed += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(committed)
}

async fn console(door: &Door) -> tokio_postgres::Client {
    let dsn = format!(
        "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/pgway?sslmode=disable",
        door.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .expect("the console");
    tokio::spawn(connection);
    client
}

/// Waits until `done` has grown by `more`.
async fn progress(done: &AtomicU64, more: u64, what: &str) {
    let target = done.load(Ordering::Relaxed) + more;
    eventually(Duration::from_secs(60), what, || async {
        done.load(Ordering::Relaxed) >= target
    })
    .await;
}

#[tokio::test]
async fn pause_restart_resume_costs_the_clients_nothing() {
    let door = Door::start(&[
        "--pg-admin-users",
        "postgres",
        "--pool-max",
        "8",
        "--pg-max-clients",
        "1000",
    ])
    .await;
    let direct = door.direct().await;
    direct
        .batch_execute(&format!(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, writer bigint, amount int);
             CREATE TABLE totals (writer bigint PRIMARY KEY, n bigint);
             INSERT INTO totals SELECT g, 0 FROM generate_series(0, {}) g;",
            DOOR_WRITERS + GRPC_WRITERS
        ))
        .await
        .expect("ledger");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers = start_writers(&door, &stop, &done).await;
    progress(&done, 300, "writes before the restart").await;

    let admin = console(&door).await;
    let held = pause_holds_what_starts(&door, &admin, &done).await;
    let pg = cluster().await;
    tokio::task::spawn_blocking(move || pg.restart("fast"))
        .await
        .expect("restart task")
        .expect("PostgreSQL restarts");
    // While paused nothing committed: everything waited.
    assert_eq!(
        done.load(Ordering::Relaxed),
        held,
        "nothing ran while paused"
    );
    admin.simple_query("RESUME").await.expect("RESUME");
    progress(&done, 300, "writes after the restart").await;

    stop.store(true, Ordering::Relaxed);
    every_told_write_is_in_the_ledger_once(&door, writers).await;
}

/// Starts the writers: `DOOR_WRITERS` through the door and `GRPC_WRITERS` over gRPC, each on
/// a client of its own, writing until `stop` and counting commits in `done`.
async fn start_writers(
    door: &Door,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<u64, String>>> {
    let mut writers = Vec::new();
    for id in 0..DOOR_WRITERS {
        let client = door.client().await;
        writers.push(tokio::spawn(door_writer(
            client,
            id,
            Arc::clone(stop),
            Arc::clone(done),
        )));
    }
    for id in DOOR_WRITERS..DOOR_WRITERS + GRPC_WRITERS {
        let client = door.gw.client().await;
        writers.push(tokio::spawn(grpc_writer(
            client,
            id,
            Arc::clone(stop),
            Arc::clone(done),
        )));
    }
    writers
}

/// PAUSE: once what was in flight is counted nothing more commits, and SHOW STATE and the
/// `pgway_paused` gauge say paused. Returns the count of commits it holds at.
async fn pause_holds_what_starts(
    door: &Door,
    admin: &tokio_postgres::Client,
    done: &AtomicU64,
) -> u64 {
    admin.simple_query("PAUSE").await.expect("PAUSE");
    // PAUSE returns once the last transaction in flight has ended on the server; its
    // client may count it a moment later. Then nothing moves.
    let mut held = done.load(Ordering::Relaxed);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = done.load(Ordering::Relaxed);
        if now == held {
            break;
        }
        held = now;
    }
    let state = admin.simple_query("SHOW STATE").await.expect("SHOW STATE");
    let paused = state.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => {
            row.get(0) == Some("paused") && row.get(1) == Some("yes")
        }
        _ => false,
    });
    assert!(paused, "SHOW STATE says paused");
    assert_eq!(door.gw.metric("pgway_paused").await, 1.0);
    held
}

/// Once stopped, no writer saw an error, and the ledger and the totals hold exactly the writes
/// the writers were told committed.
async fn every_told_write_is_in_the_ledger_once(
    door: &Door,
    writers: Vec<tokio::task::JoinHandle<Result<u64, String>>>,
) {
    let mut told = 0;
    for writer in writers {
        told += writer
            .await
            .expect("writer task")
            .unwrap_or_else(|e| panic!("a client saw an error: {e}"));
    }
    let direct = door.direct().await;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .expect("ledger count")
        .get(0);
    let total: i64 = direct
        .query_one("SELECT sum(n)::bigint FROM totals", &[])
        .await
        .expect("totals")
        .get(0);
    assert_eq!(
        rows as u64, told,
        "every committed write is in the ledger, once"
    );
    assert_eq!(total as u64, told, "the totals agree with the ledger");
}
