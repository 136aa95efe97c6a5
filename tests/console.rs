//! The admin console, PgBouncer's, on the door's port: who may open it, and what its `SHOW`
//! lists say, read as PgBouncer's exporters and psql read them, against a real PostgreSQL
//! with real clients going through the door at the same time.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::door::{APP_PASSWORD, Door, POSTGRES_PASSWORD};
use support::*;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// A door whose console lets `postgres` run everything and `app` (found by the auth query,
/// as PgBouncer's users often are) read.
async fn door() -> Door {
    Door::start(&[
        "--pg-admin-users",
        "postgres",
        "--pg-stats-users",
        "app",
        "--pg-auth-query",
        "SELECT usename, passwd FROM pgway_auth.lookup($1)",
    ])
    .await
}

fn console_dsn(door: &Door, user: &str, password: &str, database: &str) -> String {
    format!(
        "postgresql://{user}:{password}@127.0.0.1:{}/{database}?sslmode=disable&application_name=ops",
        door.addr.port()
    )
}

async fn console(door: &Door, user: &str, password: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&console_dsn(door, user, password, "pgbouncer"), NoTls)
            .await
            .unwrap_or_else(|e| panic!("console login as {user}: {e:?}"));
    tokio::spawn(connection);
    client
}

/// A `SHOW` list: its column names, and its rows by column name.
async fn show(
    client: &tokio_postgres::Client,
    what: &str,
) -> (Vec<String>, Vec<HashMap<String, Option<String>>>) {
    let messages = client
        .simple_query(&format!("SHOW {what};"))
        .await
        .unwrap_or_else(|e| panic!("SHOW {what}: {e:?}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(described) => {
                columns = described.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                let mut by_name = HashMap::new();
                for (i, column) in row.columns().iter().enumerate() {
                    by_name.insert(column.name().to_owned(), row.get(i).map(str::to_owned));
                }
                rows.push(by_name);
            }
            _ => {}
        }
    }
    (columns, rows)
}

type Row = HashMap<String, Option<String>>;

/// The row of a `SHOW` list whose `column` is `value`.
fn row<'a>(rows: &'a [Row], column: &str, value: &str) -> &'a Row {
    rows.iter()
        .find(|row| row[column].as_deref() == Some(value))
        .unwrap_or_else(|| panic!("{column} = {value} in {rows:?}"))
}

fn int(row: &HashMap<String, Option<String>>, column: &str) -> i64 {
    row.get(column)
        .and_then(|v| v.as_deref())
        .unwrap_or_else(|| panic!("no {column} in {row:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{column} in {row:?}: {e}"))
}

fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    error.as_db_error().map(|e| e.code().code().to_owned())
}

/// PgBouncer's own columns (its admin.c and stats.c, 1.25), in its order: what
/// prometheus-community/pgbouncer_exporter and Datadog's check read by name.
const POOLS: [&str; 17] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
];
const SOCKETS: [&str; 21] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];
const DATABASES: [&str; 17] = [
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "server_lifetime",
    "pool_mode",
    "load_balance_hosts",
    "max_connections",
    "current_connections",
    "max_client_connections",
    "current_client_connections",
    "paused",
    "disabled",
];
const STATS_TOTALS: [&str; 13] = [
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

/// Admin and stats users get in; anyone else is told the database doesn't exist, as
/// PostgreSQL tells them, after proving who they are.
#[tokio::test]
async fn only_console_users_get_in() {
    let door = door().await;
    for (user, password) in [("postgres", POSTGRES_PASSWORD), ("app", APP_PASSWORD)] {
        for database in ["pgbouncer", "pgway"] {
            let (client, connection) =
                tokio_postgres::connect(&console_dsn(&door, user, password, database), NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("{user} on {database}: {e:?}"));
            tokio::spawn(connection);
            let (columns, rows) = show(&client, "VERSION").await;
            assert_eq!(columns, ["version"]);
            assert!(rows[0]["version"].as_deref().unwrap().starts_with("pgway "));
        }
    }
    let plain = Door::start(&[]).await;
    let error = tokio_postgres::connect(
        &console_dsn(&plain, "postgres", POSTGRES_PASSWORD, "pgbouncer"),
        NoTls,
    )
    .await
    .err()
    .expect("not a console user");
    assert_eq!(sqlstate(&error).as_deref(), Some("3D000"), "{error:?}");
    let error =
        tokio_postgres::connect(&console_dsn(&door, "postgres", "wrong", "pgbouncer"), NoTls)
            .await
            .err()
            .expect("a wrong password");
    assert_eq!(sqlstate(&error).as_deref(), Some("28P01"), "{error:?}");

    // A stats user reads; commands beyond SHOW need an admin.
    let stats = console(&door, "app", APP_PASSWORD).await;
    let error = stats
        .simple_query("RELOAD")
        .await
        .expect_err("not an admin");
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error:?}");
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    let error = admin
        .simple_query("SHOW NOTHING")
        .await
        .expect_err("no such list");
    assert!(
        error.as_db_error().unwrap().message().contains("SHOW HELP"),
        "{error:?}"
    );
    // The session goes on after an error, as PgBouncer's does.
    show(&admin, "STATE").await;
    // The extended protocol isn't spoken (as PgBouncer's console): told so, not hung.
    let error = admin
        .query("SHOW POOLS", &[])
        .await
        .expect_err("extended protocol");
    assert_eq!(sqlstate(&error).as_deref(), Some("08P01"), "{error:?}");
}

/// With one client in a transaction through the door and another idle, the lists say so:
/// the pool's active client and server, the client's address and application name, the
/// server's backend pid, and the transactions counted.
#[tokio::test]
async fn the_lists_show_what_the_door_is_doing() {
    let door = door().await;
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    the_lists_have_pgbouncers_columns(&admin).await;

    let (busy, busy_conn) = tokio_postgres::connect(
        &format!("{}&application_name=busy-worker", door.dsn()),
        NoTls,
    )
    .await
    .expect("a client");
    tokio::spawn(busy_conn);
    let idle = door.client().await;
    idle.simple_query("SELECT 1")
        .await
        .expect("idle client's query");
    busy.batch_execute("BEGIN").await.expect("BEGIN");
    let pid: i32 = busy
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);

    let worker = pools_clients_and_servers_show_the_busy_client(&door, &admin, pid).await;
    let _pinning = the_pinned_column_says_why(&door, &admin, &worker).await;

    busy.batch_execute("COMMIT").await.expect("COMMIT");
    transactions_are_counted(&door, &admin, &idle).await;
}

/// SHOW POOLS, CLIENTS, SERVERS, DATABASES and STATS_TOTALS start with PgBouncer's columns,
/// in its order.
async fn the_lists_have_pgbouncers_columns(admin: &tokio_postgres::Client) {
    for (what, expected) in [
        ("POOLS", &POOLS[..]),
        ("CLIENTS", &SOCKETS[..]),
        ("SERVERS", &SOCKETS[..]),
        ("DATABASES", &DATABASES[..]),
        ("STATS_TOTALS", &STATS_TOTALS[..]),
    ] {
        let (columns, _) = show(admin, what).await;
        assert_eq!(
            &columns[..expected.len()],
            expected,
            "SHOW {what}: PgBouncer's columns, in its order"
        );
    }
}

/// With the busy client (backend `pid`) in a transaction and the idle one not: POOLS counts
/// an active client and server, CLIENTS lists both (the busy one by name and address) and
/// the console's own client, and SERVERS links `pid`'s connection to the busy client.
/// Returns the busy client's row of CLIENTS.
async fn pools_clients_and_servers_show_the_busy_client(
    door: &Door,
    admin: &tokio_postgres::Client,
    pid: i32,
) -> Row {
    let (_, pools) = show(admin, "POOLS").await;
    let pool = row(&pools, "database", &door.database);
    assert_eq!(pool["user"].as_deref(), Some("postgres"));
    assert_eq!(int(pool, "cl_active"), 1, "{pool:?}");
    assert_eq!(int(pool, "sv_active"), 1, "{pool:?}");
    assert_eq!(pool["pool_mode"].as_deref(), Some("transaction"));

    let (_, clients) = show(admin, "CLIENTS").await;
    let mine: Vec<_> = clients
        .iter()
        .filter(|c| c["database"].as_deref() == Some(door.database.as_str()))
        .collect();
    assert_eq!(mine.len(), 2, "{clients:?}");
    let worker = mine
        .iter()
        .find(|c| c["application_name"].as_deref() == Some("busy-worker"))
        .unwrap_or_else(|| panic!("the busy client in {mine:?}"));
    assert_eq!(worker["state"].as_deref(), Some("active"));
    assert_eq!(worker["addr"].as_deref(), Some("127.0.0.1"));
    let other = mine.iter().find(|c| c["state"].as_deref() == Some("idle"));
    assert!(other.is_some(), "the idle client: {mine:?}");
    assert!(
        clients
            .iter()
            .any(|c| c["database"].as_deref() == Some("pgbouncer")
                && c["application_name"].as_deref() == Some("ops")),
        "the console's own client is listed: {clients:?}"
    );

    let (_, servers) = show(admin, "SERVERS").await;
    let linked = servers
        .iter()
        .find(|s| int(s, "remote_pid") == i64::from(pid))
        .unwrap_or_else(|| panic!("backend {pid} in {servers:?}"));
    assert_eq!(linked["state"].as_deref(), Some("active"));
    assert_eq!(linked["link"], worker["ptr"], "linked to the busy client");

    (*worker).clone()
}

/// SHOW CLIENTS' `pinned` says `temp_table` for a client with a temp table, and nothing for
/// `worker`. Returns the pinned client, to keep it connected.
async fn the_pinned_column_says_why(
    door: &Door,
    admin: &tokio_postgres::Client,
    worker: &Row,
) -> tokio_postgres::Client {
    // pgway's own column: why a client is pinned to its server connection.
    let pinning = named_client(door, "pinning").await;
    pinning
        .batch_execute("CREATE TEMP TABLE mine (a int)")
        .await
        .expect("temp table");
    let (_, clients) = show(admin, "CLIENTS").await;
    let pinned = row(&clients, "application_name", "pinning");
    assert_eq!(
        pinned["pinned"].as_deref(),
        Some("temp_table"),
        "{pinned:?}"
    );
    assert_eq!(worker["pinned"], None);

    pinning
}

/// Five queries of `idle` count as five transactions in STATS_TOTALS.
async fn transactions_are_counted(
    door: &Door,
    admin: &tokio_postgres::Client,
    idle: &tokio_postgres::Client,
) {
    let xacts = |rows: &[HashMap<String, Option<String>>]| {
        rows.iter()
            .find(|r| r["database"].as_deref() == Some(door.database.as_str()))
            .map_or(0, |r| int(r, "xact_count"))
    };
    let before = xacts(&show(admin, "STATS_TOTALS").await.1);
    for _ in 0..5 {
        idle.simple_query("SELECT 1").await.expect("query");
    }
    eventually(
        Duration::from_secs(10),
        "five transactions counted",
        || async { xacts(&show(admin, "STATS_TOTALS").await.1) >= before + 5 },
    )
    .await;
}

/// psql, as an operator runs it: `SHOW HELP` prints the usage, a list prints as a table.
#[tokio::test]
async fn psql_reads_the_console() {
    let door = door().await;
    let dsn = console_dsn(&door, "postgres", POSTGRES_PASSWORD, "pgbouncer");
    let out = run_program(
        "psql",
        &["-X", "-d", &dsn, "-c", "SHOW HELP", "-c", "SHOW POOLS"],
        &[],
        "psql comes with postgresql-client",
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("SHOW HELP|CONFIG|DATABASES"), "{stderr}");
    assert!(stdout.contains("cl_active"), "{stdout}");
}

/// psycopg2, as Datadog's PgBouncer check connects (autocommit, the simple protocol):
/// every list it and the Prometheus exporter read comes back with PgBouncer's columns.
#[tokio::test]
async fn psycopg2_reads_what_the_exporters_read() {
    let door = door().await;
    let dsn = console_dsn(&door, "postgres", POSTGRES_PASSWORD, "pgbouncer");
    let script = r#"
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
cur = conn.cursor()
for what in ["VERSION", "CONFIG", "LISTS", "DATABASES", "USERS", "POOLS", "CLIENTS",
             "SERVERS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "STATE"]:
    cur.execute("SHOW " + what + ";")
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    print(what, ",".join(names), len(rows))
"#;
    let out = run_program(
        "python3",
        &["-c", script, &dsn],
        &[],
        "pip install -r tests/python/requirements.txt",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let columns = |what: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what} in {stdout}"));
        line.split(' ')
            .nth(1)
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(&columns("POOLS")[..POOLS.len()], POOLS);
    assert_eq!(&columns("STATS_TOTALS")[..STATS_TOTALS.len()], STATS_TOTALS);
    assert_eq!(columns("STATS")[1], "total_server_assignment_count");
    assert_eq!(columns("STATS")[13], "avg_server_assignment_count");
    assert_eq!(columns("CONFIG"), ["key", "value", "default", "changeable"]);
    assert_eq!(columns("LISTS"), ["list", "items"]);
    assert_eq!(columns("STATE"), ["key", "value"]);
}

/// PAUSE of one database holds that database's new transactions only, RESUME lets them go,
/// and RESUME of what isn't paused says so, in PgBouncer's words; SHOW DATABASES tells which
/// database is paused.
#[tokio::test]
async fn pause_holds_one_database_and_resume_lets_it_go() {
    let door = door().await;
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    let error = admin.simple_query("RESUME").await.expect_err("not paused");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("pooler is not paused/suspended")
    );
    let client = door.client().await;
    admin
        .simple_query(&format!("PAUSE {}", door.database))
        .await
        .expect("PAUSE");
    let (_, databases) = show(&admin, "DATABASES").await;
    let mine = row(&databases, "name", &door.database);
    assert_eq!(int(mine, "paused"), 1);
    let held = tokio::spawn(async move { client.query_one("SELECT 41 + 1", &[]).await });
    eventually(Duration::from_secs(10), "the client waits", || async {
        let (_, pools) = show(&admin, "POOLS").await;
        pools.iter().any(|p| {
            p["database"].as_deref() == Some(door.database.as_str()) && int(p, "cl_waiting") == 1
        })
    })
    .await;
    assert!(!held.is_finished(), "held while paused");
    let error = admin
        .simple_query("RESUME other_db")
        .await
        .expect_err("not paused");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("database other_db is not paused")
    );
    admin
        .simple_query(&format!("RESUME {}", door.database))
        .await
        .expect("RESUME");
    let row = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("served after RESUME")
        .expect("task")
        .expect("the query");
    assert_eq!(row.get::<_, i32>(0), 42);
    // A stats user may not pause.
    let stats = console(&door, "app", APP_PASSWORD).await;
    let error = stats.simple_query("PAUSE").await.expect_err("not an admin");
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error:?}");
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// The id SHOW CLIENTS gives the door's client named `application_name`.
async fn client_id(admin: &tokio_postgres::Client, application_name: &str) -> String {
    let (_, clients) = show(admin, "CLIENTS").await;
    row(&clients, "application_name", application_name)["id"]
        .clone()
        .expect("an id")
}

async fn named_client(door: &Door, application_name: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("{}&application_name={application_name}", door.dsn()),
        NoTls,
    )
    .await
    .expect("a client");
    tokio::spawn(connection);
    client
}

/// KILL_CLIENT ends one client, rolling back its transaction; RECONNECT replaces the server
/// connections once free and WAIT_CLOSE returns when the old ones are gone; RELOAD answers; SHUTDOWN stops the gateway as SIGTERM does.
#[tokio::test]
async fn admin_commands_do_what_pgbouncers_do() {
    let door = door().await;
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    let direct = door.direct().await;
    direct
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .expect("table");

    kill_client_ends_one_client_and_rolls_back(&door, &admin, &direct).await;
    let client = reconnect_replaces_the_server_connections(&door, &admin, &direct).await;
    kill_ends_every_client_and_holds_new_work(&door, &admin, &client).await;

    admin.simple_query("RELOAD").await.expect("RELOAD");
    let _ = admin.simple_query("SHUTDOWN").await;
    eventually(
        Duration::from_secs(30),
        "the door stops accepting",
        || async { tokio::net::TcpStream::connect(door.addr).await.is_err() },
    )
    .await;
}

/// KILL_CLIENT ends the client in a transaction, which can't commit, and its transaction is
/// rolled back; KILL_CLIENT of an id no client has is an error.
async fn kill_client_ends_one_client_and_rolls_back(
    door: &Door,
    admin: &tokio_postgres::Client,
    direct: &tokio_postgres::Client,
) {
    let victim = named_client(door, "victim").await;
    victim
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("in a transaction");
    let id = client_id(admin, "victim").await;
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .expect("KILL_CLIENT");
    let error = tokio::time::timeout(Duration::from_secs(10), victim.batch_execute("COMMIT"))
        .await
        .expect("answered")
        .expect_err("the killed client can't commit");
    assert!(victim.is_closed(), "{error:?}");
    eventually(
        Duration::from_secs(10),
        "its transaction rolled back",
        || async {
            let n: i64 = direct
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .expect("count")
                .get(0);
            let locks: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
                    &[],
                )
                .await
                .expect("activity")
                .get(0);
            n == 0 && locks == 0
        },
    )
    .await;
    let error = admin
        .simple_query("KILL_CLIENT 999999")
        .await
        .expect_err("no such client");
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("no such client")
    );
}

/// After RECONNECT and WAIT_CLOSE a client's next transaction runs on a new server connection
/// and the old backend is gone. Returns that client.
async fn reconnect_replaces_the_server_connections(
    door: &Door,
    admin: &tokio_postgres::Client,
    direct: &tokio_postgres::Client,
) -> tokio_postgres::Client {
    let client = named_client(door, "steady").await;
    let before = backend_pid(&client).await;
    admin.simple_query("RECONNECT").await.expect("RECONNECT");
    admin.simple_query("WAIT_CLOSE").await.expect("WAIT_CLOSE");
    let after = backend_pid(&client).await;
    assert_ne!(before, after, "a new server connection after RECONNECT");
    eventually(Duration::from_secs(10), "the old backend gone", || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&before],
            )
            .await
            .expect("activity")
            .get(0);
        n == 0
    })
    .await;
    client
}

/// KILL of the database ends `client`, and a new client's query is held until RESUME, then
/// served.
async fn kill_ends_every_client_and_holds_new_work(
    door: &Door,
    admin: &tokio_postgres::Client,
    client: &tokio_postgres::Client,
) {
    // KILL: every client of the database ended, its new work held until RESUME.
    admin
        .simple_query(&format!("KILL {}", door.database))
        .await
        .expect("KILL");
    let _ = tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1")).await;
    assert!(client.is_closed(), "killed");
    let fresh = door.client().await;
    let held = tokio::spawn(async move { fresh.simple_query("SELECT 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "held after KILL until RESUME");
    admin
        .simple_query(&format!("RESUME {}", door.database))
        .await
        .expect("RESUME");
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("served after RESUME")
        .expect("task")
        .expect("query");
}

/// A `SHOW CONFIG` row by key: (value, default, changeable).
async fn config(admin: &tokio_postgres::Client, key: &str) -> (String, String, String) {
    let (_, rows) = show(admin, "CONFIG").await;
    let found = row(&rows, "key", key);
    let cell = |column: &str| found[column].clone().unwrap_or_default();
    (cell("value"), cell("default"), cell("changeable"))
}

/// Backends of pgway's pools on the server now, as PostgreSQL counts them (the health check's
/// own connection is outside the pool).
async fn backends(direct: &tokio_postgres::Client, database: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
             AND application_name <> 'pgway-health'",
            &[&database],
        )
        .await
        .expect("activity")
        .get(0)
}

/// SET changes what PgBouncer lets change while running (client limits, pool size, timeouts),
/// with effect on the next client, and is refused, with PostgreSQL's SQLSTATEs, for what
/// can't change, for an unknown name, a bad value, or a user who may only read.
#[tokio::test]
async fn set_changes_what_can_change_while_running() {
    let door = door().await;
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    let direct = door.direct().await;
    assert_eq!(
        config(&admin, "max_client_conn").await.2,
        "yes",
        "changeable"
    );
    assert_eq!(config(&admin, "pool_mode").await.2, "no");

    // Client limits: the next client is refused as PostgreSQL refuses one too many.
    let first = door.client().await;
    admin
        .simple_query("SET max_client_conn = 1")
        .await
        .expect("SET max_client_conn");
    let (value, default, _) = config(&admin, "max_client_conn").await;
    assert_eq!(value, "1");
    assert_ne!(default, "1", "the start value is kept as the default");
    let Err(refused) = tokio_postgres::connect(&door.dsn(), NoTls).await else {
        panic!("one client too many was let in");
    };
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"), "{refused:?}");
    admin
        .simple_query(&format!("SET max_client_conn TO '{default}'"))
        .await
        .expect("SET back");
    let second = door.client().await;

    // The pool size (the budget both doors share) and the wait for a connection: with one
    // server connection, held by a transaction, the next transaction waits and is refused
    // after the new, shorter wait; the extra connections are closed as they free.
    admin
        .simple_query("SET default_pool_size = 1")
        .await
        .expect("SET default_pool_size");
    admin
        .simple_query("SET query_wait_timeout = '300ms'")
        .await
        .expect("SET query_wait_timeout");
    assert_eq!(config(&admin, "query_wait_timeout").await.0, "0.3");
    assert_eq!(config(&admin, "max_db_connections").await.0, "1");
    eventually(
        Duration::from_secs(10),
        "one server connection left",
        || async { backends(&direct, &door.database).await <= 1 },
    )
    .await;
    first.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    let waited = tokio::time::timeout(Duration::from_secs(10), second.simple_query("SELECT 1"))
        .await
        .expect("answered within the new wait")
        .expect_err("no connection for the second transaction");
    assert_eq!(sqlstate(&waited).as_deref(), Some("53300"), "{waited:?}");
    assert!(backends(&direct, &door.database).await <= 1);
    first.batch_execute("COMMIT").await.expect("COMMIT");
    admin
        .simple_query("SET default_pool_size = 3")
        .await
        .expect("grow back");
    first.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    second
        .simple_query("SELECT 1")
        .await
        .expect("a second connection once the pool grew");
    first.batch_execute("COMMIT").await.expect("COMMIT");

    for (command, code) in [
        ("SET pool_mode = session", "55P02"),
        ("SET no_such_setting = 1", "42704"),
        ("SET max_client_conn = -3", "22023"),
        ("SET query_wait_timeout = 0", "22023"),
        ("SET default_pool_size = 0", "22023"),
        ("SET max_client_conn", "42601"),
    ] {
        let error = admin.simple_query(command).await.expect_err(command);
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some(code),
            "{command}: {error:?}"
        );
    }
    let reader = console(&door, "app", APP_PASSWORD).await;
    let error = reader
        .simple_query("SET max_client_conn = 5")
        .await
        .expect_err("read-only");
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error:?}");
    assert_eq!(config(&admin, "max_client_conn").await.0, default);
}

/// `SHOW BUDGET` (pgway's own) shows what each door holds of the budget both share: a door
/// client in a transaction and a gRPC call running a statement each hold one connection.
#[tokio::test]
async fn the_budget_shows_both_doors() {
    let door = door().await;
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    let client = door.client().await;
    client.batch_execute("BEGIN").await.expect("BEGIN");
    client.simple_query("SELECT 1").await.expect("linked");
    let mut grpc = door.gw.client().await;
    let call = tokio::spawn(async move {
        run(&mut grpc, "SELECT pg_sleep(1.5)", vec![]).await;
    });
    eventually(
        Duration::from_secs(10),
        "both doors' connections in use",
        || async {
            let (_, rows) = show(&admin, "BUDGET").await;
            let of = |which: &str| row(&rows, "door", which);
            int(of("postgres"), "sv_active") == 1
                && int(of("grpc"), "sv_active") == 1
                && int(of("total"), "sv_active") == 2
                && int(of("total"), "max_connections") == 3
        },
    )
    .await;
    call.await.expect("the call");
    client.batch_execute("COMMIT").await.expect("COMMIT");
    eventually(Duration::from_secs(10), "nothing in use", || async {
        let (_, rows) = show(&admin, "BUDGET").await;
        int(row(&rows, "door", "total"), "sv_active") == 0
    })
    .await;
}

/// While PAUSE holds new work, gRPC health says so on `pgway.v1.Database.Admission`, and
/// readiness stays SERVING, so the paused gateway keeps the traffic that waits on it.
#[tokio::test]
async fn health_says_when_paused() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let door = door().await;
    let admin = console(&door, "postgres", POSTGRES_PASSWORD).await;
    let health = HealthClient::new(door.gw.channel().await);
    let status = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health")
                .into_inner()
                .status
        }
    };
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    let admission = "pgway.v1.Database.Admission";
    eventually(
        Duration::from_secs(10),
        "ready, admission serving",
        || async {
            status("pgway.v1.Database").await == SERVING && status(admission).await == SERVING
        },
    )
    .await;
    admin.simple_query("PAUSE").await.expect("PAUSE");
    eventually(Duration::from_secs(10), "admission held", || async {
        status(admission).await == NOT_SERVING
    })
    .await;
    assert_eq!(status("pgway.v1.Database").await, SERVING, "still ready");
    admin.simple_query("RESUME").await.expect("RESUME");
    eventually(
        Duration::from_secs(10),
        "admission serving again",
        || async { status(admission).await == SERVING },
    )
    .await;
}
