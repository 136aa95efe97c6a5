//! The PostgreSQL door with real clients: psql, pgbench, tokio-postgres, and Python drivers
//! (psycopg 3, psycopg2, asyncpg, SQLAlchemy) run as scripts from tests/python/pg_*.py, against
//! a PostgreSQL of this binary's own that asks for SCRAM-SHA-256 over TCP, through a door with a
//! small pool shared by more clients than it has server connections. What happens when things go
//! wrong (restarts, killed connections, limits, malformed input) is in pg_failures.rs.
//!
//! The gauges of /metrics are process-wide, and every door in this binary writes them: the
//! tests that read a gauge take [`EXCLUSIVE`] for writing, all others for reading. So does the
//! test that restarts the shared PostgreSQL.

mod support;

use std::time::Duration;

use support::clients::{psql, python, refused, run, sqlstate, text};
use support::door::{APP_PASSWORD, Door, POSTGRES_PASSWORD, Reach};
use support::eventually;
use tokio::sync::RwLock;
use tokio_postgres::NoTls;

static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

// --- Login ------------------------------------------------------------------------------------

#[tokio::test]
async fn logins_are_checked_like_postgresql_does() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&[]).await;
    let (ok, out, err) = psql(&door.dsn(), &["-c", "select current_user"], &[]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "postgres");

    let before = door.gw.metric_total("pgway_pg_auth_failures_total").await;
    let wrong = door.dsn_as("postgres", "not-the-password");
    let (ok, _, err) = psql(&wrong, &["-c", "select 1"], &[]).await;
    assert!(!ok);
    assert!(
        err.contains("password authentication failed for user \"postgres\""),
        "{err}"
    );
    let unknown = door.dsn_as("nobody", "whatever");
    let (ok, _, err) = psql(&unknown, &["-c", "select 1"], &[]).await;
    assert!(!ok);
    assert!(
        err.contains("password authentication failed for user \"nobody\""),
        "{err}"
    );
    // The SQLSTATEs, as a driver sees them.
    let error = refused(&wrong, "a wrong password").await;
    assert_eq!(sqlstate(&error).as_deref(), Some("28P01"), "{error:?}");
    let other_db = format!(
        "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/x?sslmode=disable",
        door.addr.port()
    );
    let error = refused(&other_db, "another database").await;
    assert_eq!(sqlstate(&error).as_deref(), Some("3D000"), "{error:?}");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("database \"x\" does not exist"),
        "{error:?}"
    );
    let after = door.gw.metric_total("pgway_pg_auth_failures_total").await;
    assert!(
        after >= before + 3.0,
        "failures counted: {before} → {after}"
    );
}

/// The app role's verifier as PostgreSQL stores it.
async fn app_verifier(door: &Door) -> String {
    door.direct()
        .await
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await
        .expect("pg_authid")
        .get(0)
}

/// `app` is itself upstream: its name, and its (lack of) privileges.
async fn assert_logs_in_as_app(door: &Door) {
    door.direct()
        .await
        .batch_execute(
            "CREATE TABLE secret (a int); CREATE TABLE open (a int); GRANT SELECT ON open TO app",
        )
        .await
        .expect("tables");
    let dsn = door.dsn_as("app", APP_PASSWORD);
    let (ok, out, err) = psql(
        &dsn,
        &[
            "-c",
            "select current_user",
            "-c",
            "select count(*) from open",
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["app", "0"]);
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .expect("app logs in");
    tokio::spawn(connection);
    let error = client
        .simple_query("select * from secret")
        .await
        .expect_err("denied");
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error:?}");
    let wrong = door.dsn_as("app", "nope");
    let error = refused(&wrong, "a wrong password").await;
    assert_eq!(sqlstate(&error).as_deref(), Some("28P01"), "{error:?}");
}

#[tokio::test]
async fn an_auth_file_user_logs_in_as_itself() {
    let _shared = EXCLUSIVE.read().await;
    // The file must exist when the gateway starts: write the real verifier once known.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("userlist.txt");
    std::fs::write(&file, "").expect("write");
    let door = Door::start(&["--pg-auth-file", file.to_str().expect("utf-8")]).await;
    std::fs::write(
        &file,
        format!("\"app\" \"{}\"\n", app_verifier(&door).await),
    )
    .expect("write");
    assert_logs_in_as_app(&door).await;
}

#[tokio::test]
async fn an_auth_query_user_logs_in_as_itself() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&[
        "--pg-auth-query",
        "SELECT usename, passwd FROM pgway_auth.lookup($1)",
    ])
    .await;
    assert_logs_in_as_app(&door).await;
}

#[tokio::test]
async fn ssl_prefer_falls_back_and_startup_settings_last() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "2"]).await;
    door.direct()
        .await
        .batch_execute("CREATE SCHEMA foo")
        .await
        .expect("schema");
    let dsn = door.dsn().replace("sslmode=disable", "sslmode=prefer");
    // Another client keeps the pool busy with default settings in between.
    let other = door.client().await;
    let mut args = Vec::new();
    for _ in 0..3 {
        args.extend_from_slice(&[
            "-c",
            "SHOW search_path",
            "-c",
            "select current_setting('application_name')",
        ]);
    }
    let env = [
        ("PGOPTIONS", "-c search_path=foo"),
        ("PGAPPNAME", "door-test"),
    ];
    let run_psql = psql(&dsn, &args, &env);
    let busy = async {
        for _ in 0..20 {
            other.simple_query("SELECT 1").await.expect("other client");
        }
    };
    let ((ok, out, err), ()) = tokio::join!(run_psql, busy);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["foo", "door-test", "foo", "door-test", "foo", "door-test"]
    );
    let row = other
        .query_one("SHOW search_path", &[])
        .await
        .expect("show");
    assert_eq!(row.get::<_, String>(0), "\"$user\", public");
}

// --- pgbench ----------------------------------------------------------------------------------

#[tokio::test]
async fn pgbench_runs_in_every_protocol_mode_and_the_books_balance() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&[]).await;
    let dsn = door.dsn();
    let env = [("PGPASSWORD", POSTGRES_PASSWORD)];
    let conn = format!(
        "host=127.0.0.1 port={} dbname={} user=postgres sslmode=disable",
        door.addr.port(),
        door.database
    );
    let _ = dsn;
    let out = run("pgbench", &["-i", "-s", "1", "-q", &conn], &env).await;
    assert!(out.status.success(), "pgbench -i: {}", text(&out.stderr));
    let direct = door.direct().await;
    let count: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 100_000, "pgbench -i loaded the accounts by COPY");
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &[][..]] {
            let mut args = vec!["-M", mode, "-c", "8", "-j", "2", "-t", "40", "-n"];
            args.extend_from_slice(script);
            args.push(&conn);
            let out = run("pgbench", &args, &env).await;
            let stdout = text(&out.stdout);
            assert!(
                out.status.success(),
                "pgbench {args:?}:\n{stdout}\n{}",
                text(&out.stderr)
            );
            assert!(
                stdout.contains("number of failed transactions: 0"),
                "pgbench {args:?}:\n{stdout}"
            );
            assert!(
                stdout.contains("number of transactions actually processed: 320/320"),
                "pgbench {args:?}:\n{stdout}"
            );
        }
    }
    // Every TPC-B transaction added its delta to one branch, teller and account and wrote one
    // history row: the totals agree.
    let row = direct
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_history),
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
                    (SELECT sum(bbalance) FROM pgbench_branches),
                    (SELECT sum(tbalance) FROM pgbench_tellers),
                    (SELECT sum(abalance) FROM pgbench_accounts)",
            &[],
        )
        .await
        .expect("sums");
    let (n, delta): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(n, 3 * 320, "one history row per TPC-B transaction");
    assert_eq!(row.get::<_, i64>(2), delta);
    assert_eq!(row.get::<_, i64>(3), delta);
    assert_eq!(row.get::<_, i64>(4), delta);
}

// --- Session state ----------------------------------------------------------------------------

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e:?}"))
        .get(0)
}

/// The settings a client sees, read in one transaction of its own.
async fn settings(client: &tokio_postgres::Client) -> [String; 3] {
    client.batch_execute("BEGIN").await.expect("BEGIN");
    let seen = [
        show(client, "search_path").await,
        show(client, "TimeZone").await,
        show(client, "statement_timeout").await,
    ];
    client.batch_execute("COMMIT").await.expect("COMMIT");
    seen
}

#[tokio::test]
async fn clients_keep_their_own_settings_over_one_server_connection() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "1"]).await;
    let (a, b) = (door.client().await, door.client().await);
    a.batch_execute("SET search_path = a_schema; SET TimeZone = 'Asia/Tokyo'")
        .await
        .expect("SET a");
    b.batch_execute(
        "SET search_path = b_schema; SET TimeZone = 'America/Lima'; SET statement_timeout = '22s'",
    )
    .await
    .expect("SET b");
    a.execute("SET statement_timeout = '11s'", &[])
        .await
        .expect("SET a, extended protocol");
    let fresh = door.client().await;
    let zone = show(&door.direct().await, "TimeZone").await;
    for _ in 0..4 {
        assert_eq!(settings(&a).await, ["a_schema", "Asia/Tokyo", "11s"]);
        assert_eq!(settings(&b).await, ["b_schema", "America/Lima", "22s"]);
        assert_eq!(
            settings(&fresh).await,
            ["\"$user\", public", zone.as_str(), "0"]
        );
    }
}

#[tokio::test]
async fn set_lasts_as_long_as_postgresql_says() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "2"]).await;
    let client = door.client().await;
    let other = door.client().await;
    let default_zone = show(&other, "TimeZone").await;
    // A committed SET stays; SET LOCAL ends with its transaction; a rolled back SET never was.
    client
        .batch_execute("BEGIN; SET search_path = kept; SET LOCAL statement_timeout = '7s'; COMMIT")
        .await
        .expect("committed");
    client
        .batch_execute("BEGIN; SET TimeZone = 'Asia/Tokyo'; ROLLBACK")
        .await
        .expect("rolled back");
    for _ in 0..3 {
        other
            .batch_execute("BEGIN; SELECT 1")
            .await
            .expect("hold a connection");
        assert_eq!(show(&client, "search_path").await, "kept");
        assert_eq!(show(&client, "statement_timeout").await, "0");
        assert_eq!(show(&client, "TimeZone").await, default_zone);
        other.batch_execute("COMMIT").await.expect("commit");
        assert_eq!(show(&other, "search_path").await, "\"$user\", public");
    }
    // RESET takes a setting back.
    client
        .batch_execute("RESET search_path")
        .await
        .expect("RESET");
    other.batch_execute("BEGIN; SELECT 1").await.expect("hold");
    assert_eq!(show(&client, "search_path").await, "\"$user\", public");
    other.batch_execute("COMMIT").await.expect("commit");
}

/// A notification through tokio-postgres: the connection is polled for messages.
async fn listener(
    door: &Door,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    use futures::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(&door.dsn(), NoTls)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
}

async fn pinned(door: &Door) -> f64 {
    door.gw.metric("pgway_pg_clients{state=\"pinned\"}").await
}

#[tokio::test]
async fn session_state_pins_the_client_and_is_reset_after() {
    let _exclusive = EXCLUSIVE.write().await;
    let door = Door::start(&["--pool-max", "2", "--pg-max-pinned", "1"]).await;
    let other = door.client().await;

    let pid = a_temp_table_pins_its_client(&door, &other).await;
    the_pinned_connection_is_reset_before_reuse(&door, pid).await;
    listen_pins_and_the_pin_cap_refuses_more(&door, &other).await;
    a_session_lock_stays_with_its_holder(&door, &other).await;
}

/// A client with a temp table is pinned, sees its table across transactions while `other`
/// can't, and is unpinned once gone. Returns its server connection's pid.
async fn a_temp_table_pins_its_client(door: &Door, other: &tokio_postgres::Client) -> i32 {
    // A temp table: the pinned client keeps it across transactions; nobody else sees it.
    let (client, connection) = door.connect().await;
    client
        .batch_execute("CREATE TEMP TABLE mine (a int); INSERT INTO mine VALUES (1)")
        .await
        .expect("temp table");
    eventually(Duration::from_secs(10), "pinned = 1", || async {
        pinned(door).await == 1.0
    })
    .await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    for _ in 0..3 {
        let n: i64 = client
            .query_one("SELECT count(*) FROM mine", &[])
            .await
            .expect("own temp table")
            .get(0);
        assert_eq!(n, 1);
        let error = other
            .query("SELECT * FROM mine", &[])
            .await
            .expect_err("not visible");
        assert_eq!(sqlstate(&error).as_deref(), Some("42P01"), "{error:?}");
    }
    drop(client);
    let _ = connection.await;
    eventually(Duration::from_secs(10), "pinned = 0", || async {
        pinned(door).await == 0.0
    })
    .await;
    pid
}

/// The pinned client's server connection (`pid`) is reused, without the temp table, by one of
/// two clients holding both server connections in transactions.
async fn the_pinned_connection_is_reset_before_reuse(door: &Door, pid: i32) {
    // The pinned connection was reset before anyone else got it: two clients in
    // transactions hold both server connections, one of them the pinned client's.
    let (first, second) = (door.client().await, door.client().await);
    let mut pids = Vec::new();
    for next in [&first, &second] {
        next.batch_execute("BEGIN").await.expect("BEGIN");
        let row = next
            .query_one(
                "SELECT pg_backend_pid(), to_regclass('mine') IS NULL, \
                 (SELECT count(*) FROM pg_class WHERE relname = 'mine')",
                &[],
            )
            .await
            .expect("look");
        assert!(row.get::<_, bool>(1), "the temp table outlived its client");
        assert_eq!(
            row.get::<_, i64>(2),
            0,
            "the temp table outlived its client"
        );
        pids.push(row.get::<_, i32>(0));
    }
    assert!(
        pids.contains(&pid),
        "the pinned client's server connection ({pid}) was not reused: {pids:?}"
    );
    for next in [first, second] {
        next.batch_execute("COMMIT").await.expect("COMMIT");
    }
}

/// A listener pinned by LISTEN gets what `other` NOTIFYs, and at the pin cap (1) `other`'s
/// pinning statement is refused with 0A000 and a hint.
async fn listen_pins_and_the_pin_cap_refuses_more(door: &Door, other: &tokio_postgres::Client) {
    // LISTEN: the listener gets what another client NOTIFYs.
    let (listening, mut notes) = listener(door).await;
    listening
        .batch_execute("LISTEN door_channel")
        .await
        .expect("LISTEN");
    other
        .batch_execute("NOTIFY door_channel, 'hello'")
        .await
        .expect("NOTIFY");
    let note = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("a notification within 10 s")
        .expect("a notification");
    assert_eq!((note.channel(), note.payload()), ("door_channel", "hello"));
    // Within the pin cap (1): another pinning statement is refused, with a hint.
    let error = other
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect_err("refused past the cap");
    let db = error.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "0A000", "{error:?}");
    assert!(db.hint().is_some(), "{error:?}");
    drop(listening);
}

/// A session advisory lock taken once nobody is pinned stays with its holder between
/// transactions: `other` can't take it, and the holder can unlock it.
async fn a_session_lock_stays_with_its_holder(door: &Door, other: &tokio_postgres::Client) {
    // A session advisory lock: its holder can unlock it in a later transaction; others
    // can't take it meanwhile.
    eventually(Duration::from_secs(10), "pinned = 0", || async {
        pinned(door).await == 0.0
    })
    .await;
    let holder = door.client().await;
    holder
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let taken: bool = other
        .query_one("SELECT pg_try_advisory_xact_lock(42)", &[])
        .await
        .expect("try")
        .get(0);
    assert!(!taken, "another client took a lock held by a pinned client");
    let released: bool = holder
        .query_one("SELECT pg_advisory_unlock(42)", &[])
        .await
        .expect("unlock")
        .get(0);
    assert!(
        released,
        "the lock holder lost its lock between transactions"
    );
}

#[tokio::test]
async fn session_state_can_be_refused() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pg-session-state", "error"]).await;
    let client = door.client().await;
    for attempt in ["simple", "extended"] {
        client.batch_execute("BEGIN").await.expect("BEGIN");
        let refused = if attempt == "simple" {
            client.batch_execute("CREATE TEMP TABLE t (a int)").await
        } else {
            client
                .execute("CREATE TEMP TABLE t (a int)", &[])
                .await
                .map(|_| ())
        };
        let error = refused.expect_err("refused");
        let db = error.as_db_error().expect("db error");
        assert_eq!(db.code().code(), "0A000", "{attempt}: {error:?}");
        assert!(db.hint().is_some(), "{attempt}: {error:?}");
        // The transaction failed, as PostgreSQL fails it.
        let error = client
            .simple_query("SELECT 1")
            .await
            .expect_err("failed tx");
        assert_eq!(sqlstate(&error).as_deref(), Some("25P02"), "{error:?}");
        client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    }
    let row = client.query_one("SELECT 1", &[]).await.expect("usable");
    assert_eq!(row.get::<_, i32>(0), 1);
}

// --- Reaching the database over a Unix socket --------------------------------------------------

/// `PGWAY_DATABASE_URL=host=/run/postgresql ...`: both doors' server connections, and the
/// door's cancels, go over the socket; clients still log in to the door with SCRAM.
#[tokio::test]
async fn a_unix_socket_database_url_serves_both_doors_and_their_cancels() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start_reaching(Reach::UnixSocket, &["--pool-max", "1"]).await;
    // inet_server_addr() is NULL on a Unix-socket connection only.
    let over_socket = "SELECT inet_server_addr() IS NULL, current_user";
    let (ok, out, err) = psql(&door.dsn(), &["-c", over_socket], &[]).await;
    assert!(ok, "psql through the door: {err}");
    assert_eq!(out.trim(), "t|postgres");
    let (ok, _, err) = psql(
        &door.dsn_as("postgres", "not-the-password"),
        &["-c", "SELECT 1"],
        &[],
    )
    .await;
    assert!(!ok, "a wrong password got in");
    assert!(err.contains("password authentication failed"), "{err}");

    let mut grpc = door.gw.client().await;
    let reply = grpc
        .query(support::query(over_socket, vec![]))
        .await
        .expect("the gRPC door over the socket")
        .into_inner();
    assert_eq!(reply.rows.len(), 1);
    assert_eq!(reply.rows[0].values[0], support::boolean(true));

    cancel_a_sleep(&door.direct().await, door.client().await).await;
}

// --- Cancel -----------------------------------------------------------------------------------

/// Runs `pg_sleep(30)` through `client`, cancels it with the client's own key once `direct`
/// sees it running, asserts that it ends well before its 30 s with 57014, and gives the client
/// back.
async fn cancel_a_sleep(
    direct: &tokio_postgres::Client,
    client: tokio_postgres::Client,
) -> tokio_postgres::Client {
    let token = client.cancel_token();
    let running = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await;
        (client, result)
    });
    support::eventually(Duration::from_secs(10), "pg_sleep running", || async {
        support::active_statements(direct, "SELECT pg_sleep(30)%").await == 1
    })
    .await;
    token.cancel_query(NoTls).await.expect("cancel sent");
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("cancelled well before 30 s")
        .expect("task");
    let error = result.expect_err("cancelled");
    assert_eq!(sqlstate(&error).as_deref(), Some("57014"), "{error:?}");
    client
}

#[tokio::test]
async fn a_cancel_stops_the_clients_statement_and_no_other() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "1"]).await;
    let direct = door.direct().await;
    let client = cancel_a_sleep(&direct, door.client().await).await;
    let token = client.cancel_token();
    let row = client
        .query_one("SELECT 2", &[])
        .await
        .expect("usable after");
    assert_eq!(row.get::<_, i32>(0), 2);

    // A late cancel: the client's statement is over and its server connection serves
    // another client now, at a gate.
    let second = std::sync::Arc::new(door.client().await);
    for _ in 0..3 {
        support::close_gate(&direct).await;
        let waiting = tokio::spawn({
            let second_query = format!("SELECT {}", support::WAIT_AT_GATE);
            let second = std::sync::Arc::clone(&second);
            async move { second.simple_query(&second_query).await.map(|_| ()) }
        });
        support::eventually(Duration::from_secs(10), "second at the gate", || async {
            support::active_statements(&direct, "SELECT pg_advisory_xact_lock_shared%").await == 1
        })
        .await;
        token.cancel_query(NoTls).await.expect("late cancel sent");
        support::open_gate(&direct).await;
        let result = waiting.await.expect("task");
        assert!(
            result.is_ok(),
            "a late cancel hit another client: {result:?}"
        );
    }
    // And racing: cancels for one client while its statements and another's share the
    // connection; only the first may ever be cancelled.
    let racer = std::sync::Arc::new(client);
    let stop = tokio_util::sync::CancellationToken::new();
    let canceller = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                let _ = token.cancel_query(NoTls).await;
            }
        }
    });
    let first = tokio::spawn({
        let racer = std::sync::Arc::clone(&racer);
        async move {
            for _ in 0..30 {
                match racer.simple_query("SELECT pg_sleep(0.01)").await {
                    Ok(_) => {}
                    Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e:?}"),
                }
            }
        }
    });
    for _ in 0..30 {
        second
            .simple_query("SELECT pg_sleep(0.01)")
            .await
            .expect("a cancel for another client hit this one");
    }
    first.await.expect("first client");
    stop.cancel();
    canceller.await.expect("canceller");
}

// --- Python drivers ---------------------------------------------------------------------------

#[tokio::test]
async fn psycopg_with_every_statement_prepared() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pg-prepared-statements", "2"]).await;
    python("pg_psycopg.py", &door.dsn(), &[]).await;
}

#[tokio::test]
async fn asyncpg_with_its_statement_cache_and_many_connections() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&[]).await;
    python("pg_asyncpg.py", &door.dsn(), &[]).await;
}

#[tokio::test]
async fn psycopg2_transactions_cursors_and_copy() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&[]).await;
    python("pg_psycopg2.py", &door.dsn(), &[]).await;
}

/// Statements right before a Terminate, the unnamed statement across transactions, asyncpg's
/// COPY, the startup encoding reported: one server connection, so a client that keeps it
/// when it shouldn't makes the next one fail.
#[tokio::test]
async fn protocol_edges_behave_as_on_a_direct_connection() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "1", "--acquire-timeout", "5s"]).await;
    print!("{}", python("pg_edges.py", &door.dsn(), &[]).await);
}

#[tokio::test]
async fn sqlalchemy_orm_over_the_door() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&[]).await;
    python("pg_sqlalchemy.py", &door.dsn(), &[]).await;
}
