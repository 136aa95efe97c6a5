//! What an operator relies on at the PostgreSQL door, against a real PostgreSQL with real
//! clients: defaults a migrating application survives (idle in a transaction, the pin cap,
//! the server's other databases), refusals counted and logged with their door, and a start-up
//! that says what a URL without a password allows.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::door::{Door, POSTGRES_PASSWORD, cluster, fresh_database};
use support::*;
use tokio_postgres::NoTls;

fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    error.as_db_error().map(|e| e.code().code().to_owned())
}

fn dsn_of(door: &Door, database: &str) -> String {
    format!(
        "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
        door.addr.port()
    )
}

/// PGWAY_TX_IDLE_TIMEOUT bounds the gRPC door's interactive transactions only: a door client
/// idle in a transaction longer than it (an application doing I/O between statements) is not
/// ended, as PostgreSQL and PgBouncer don't by default, and commits.
#[tokio::test]
async fn idle_in_a_transaction_is_not_bounded_by_default() {
    let door = Door::start(&["--tx-idle-timeout", "1s"]).await;
    door.direct()
        .await
        .batch_execute("CREATE TABLE ledger (a int)")
        .await
        .expect("table");
    let (client, connection) = door.connect().await;
    client
        .batch_execute("BEGIN; INSERT INTO ledger VALUES (1)")
        .await
        .expect("BEGIN");
    // Past PGWAY_TX_IDLE_TIMEOUT, and then some: what is checked is that nothing happens.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .batch_execute("INSERT INTO ledger VALUES (2); COMMIT")
        .await
        .expect("the transaction goes on and commits");
    assert!(!connection.is_finished(), "the client was not ended");
    let rows: i64 = door
        .direct()
        .await
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2);
}

/// The door serves every database of the server that the user may connect to, each on
/// server connections of its own, as a direct connection would; a database the server lacks
/// is refused by the server's own words. PGWAY_PG_DATABASES narrows the list, refusing the
/// others with a message that says why.
#[tokio::test]
async fn the_servers_other_databases_are_served_unless_a_list_narrows_them() {
    let other = fresh_database(cluster().await, "other").await;
    let door = Door::start(&[]).await;
    for database in [&other, &door.database] {
        let (client, connection) = tokio_postgres::connect(&dsn_of(&door, database), NoTls)
            .await
            .unwrap_or_else(|e| panic!("logging in to {database}: {e:?}"));
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .expect("query");
        assert_eq!(&row.get::<_, String>(0), database);
    }
    let error = tokio_postgres::connect(&dsn_of(&door, "no_such_db"), NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(sqlstate(&error).as_deref(), Some("3D000"), "{error:?}");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("database \"no_such_db\" does not exist")
    );

    let narrowed = Door::start(&["--pg-databases", &other]).await;
    let (client, connection) = tokio_postgres::connect(&dsn_of(&narrowed, &other), NoTls)
        .await
        .expect("a listed database");
    tokio::spawn(connection);
    client.query_one("SELECT 1", &[]).await.expect("served");
    let error = tokio_postgres::connect(&dsn_of(&narrowed, &narrowed.database), NoTls)
        .await
        .err()
        .expect("an unlisted database is refused");
    assert_eq!(sqlstate(&error).as_deref(), Some("3D000"), "{error:?}");
    let message = error.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("PGWAY_PG_DATABASES")),
        "{message:?}"
    );
}

/// With the default pin cap, an application whose clients pin (temp tables, LISTEN) is not
/// refused at half the pool: on a pool of 8, six clients pin and the other two connections
/// stay for everyone else; the seventh is refused with 0A000, and the refusal counted.
#[tokio::test]
async fn the_default_pin_cap_keeps_a_share_for_unpinned_clients() {
    let door = Door::start(&["--pool-max", "8"]).await;
    let refusals = || {
        door.gw
            .metric("pgway_pg_refusals_total{reason=\"pin_cap\"}")
    };
    let before = refusals().await;
    let mut pinned = Vec::new();
    for i in 0..6 {
        let client = door.client().await;
        client
            .batch_execute(&format!("CREATE TEMP TABLE mine{i} (a int)"))
            .await
            .unwrap_or_else(|e| panic!("client {i} pins: {e:?}"));
        pinned.push(client);
    }
    let seventh = door.client().await;
    let error = seventh
        .batch_execute("CREATE TEMP TABLE mine7 (a int)")
        .await
        .expect_err("beyond the cap");
    assert_eq!(sqlstate(&error).as_deref(), Some("0A000"), "{error:?}");
    // Unpinned work still goes through, on the share kept for it.
    seventh.query_one("SELECT 1", &[]).await.expect("served");
    assert!(refusals().await > before, "the refusal is counted");
}

/// A transaction that gets no server connection within PGWAY_ACQUIRE_TIMEOUT is told 53300,
/// and counted where the gRPC door's are, with `door="postgres"`; the door's waits go to
/// `pgway_pool_wait_seconds` too.
#[tokio::test]
async fn the_doors_acquire_timeouts_are_counted_with_their_door() {
    let door = Door::start(&["--pool-max", "1", "--acquire-timeout", "1s"]).await;
    let timeouts = "pgway_pool_acquire_timeouts_total{door=\"postgres\"}";
    let waits = "pgway_pool_wait_seconds_count{door=\"postgres\"}";
    let (before, waits_before) = (door.gw.metric(timeouts).await, door.gw.metric(waits).await);
    // Both log in first (a login, too, needs a server connection for a moment).
    let (holder, other) = (door.client().await, door.client().await);
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let error = other
        .query_one("SELECT 1", &[])
        .await
        .expect_err("no connection within the timeout");
    assert_eq!(sqlstate(&error).as_deref(), Some("53300"), "{error:?}");
    eventually(
        Duration::from_secs(10),
        "the timeout is counted",
        || async {
            door.gw.metric(timeouts).await > before && door.gw.metric(waits).await > waits_before
        },
    )
    .await;
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    other
        .query_one("SELECT 1", &[])
        .await
        .expect("served after");
}

/// A URL without a password (the server trusts the gateway): the door can check no client
/// against it, and says so at start-up, naming what will and won't log in.
#[tokio::test]
async fn a_url_without_a_password_is_explained_at_start_up() {
    let pg = cluster().await;
    let url = format!(
        "host={} port={} user=postgres dbname=postgres",
        pg.dir().display(),
        pg.port()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgway"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-addr",
            "",
            "--log-format",
            "text",
            "--auth",
            "none",
        ])
        .env("PGWAY_DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgway serve");
    let log = child.stdout.take().expect("the log");
    let (lines, found) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let said = loop {
        match found.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("PGWAY_DATABASE_URL has no password") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let said = said.unwrap_or_else(|| panic!("not said; the log:\n{}", seen.join("\n")));
    assert!(said.contains("no client can log in"), "{said}");
    assert!(said.contains("PGWAY_PG_AUTH_FILE"), "{said}");
}

/// PGWAY_POOL_MIN connections of the URL's user and database are kept ready with the door
/// on: an idle gateway's first client is served on one of them, not on a new login.
#[tokio::test]
async fn an_idle_gateway_keeps_the_minimum_ready_for_the_first_client() {
    let door = Door::start(&["--pool-min", "2", "--pool-max", "4"]).await;
    let direct = door.direct().await;
    let warm = || async {
        let rows = direct
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND application_name <> 'pgway-health' \
                 AND backend_type = 'client backend'",
                &[],
            )
            .await
            .expect("activity");
        let mut pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        pids.sort_unstable();
        pids
    };
    eventually(
        Duration::from_secs(15),
        "two connections kept ready",
        || async { warm().await.len() == 2 },
    )
    .await;
    let ready = warm().await;
    let client = door.client().await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert!(
        ready.contains(&pid),
        "served on a warm connection: {pid} in {ready:?}"
    );
    // Given back, it is one of the two again: no third was opened.
    eventually(Duration::from_secs(10), "two ready again", || async {
        let idle = door
            .gw
            .metric("pgway_pool_connections{door=\"postgres\",state=\"idle\"}")
            .await;
        idle == 2.0 && warm().await == ready
    })
    .await;
}
