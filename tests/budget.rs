//! One connection budget for both doors: `PGWAY_POOL_MAX` server connections in all, whichever
//! door uses them, and neither door's idle connections starve the other.

mod support;

use std::time::Duration;

use support::door::{APP_PASSWORD, Door};
use support::*;

/// A gateway with both doors on whose URL carries a password (the harness server trusts
/// loopback, so only the door's own SCRAM check uses it), and the door's connection string.
async fn both_doors(settings: &[&str]) -> (Gateway, String) {
    let pg = postgres().await;
    let database = format!("budget_{}", std::process::id() ^ rand_suffix());
    let admin = connect(&pg.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("CREATE DATABASE");
    let url = pg
        .url(&database)
        .replace("postgres@", "postgres:door-password@");
    let mut all = vec!["--pg-addr", "127.0.0.1:0"];
    all.extend_from_slice(settings);
    let gw = Gateway::serving(&url, database.clone(), &all).await;
    let door = format!(
        "host=127.0.0.1 port={} user=postgres password=door-password dbname={database}",
        gw.pg_addr.expect("the PostgreSQL door is on").port()
    );
    (gw, door)
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) << 20
}

/// The gateway's server connections to `database` open now, as PostgreSQL counts them: the
/// direct connection asking and the health monitor's (outside the budget) excluded.
async fn backends(direct: &tokio_postgres::Client, database: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND application_name <> 'pgway-health'",
            &[&database],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// The gRPC door's idle connections fill the whole budget: a client of the PostgreSQL door
/// still gets a server connection, because an idle gRPC one is closed to make room, and the
/// total never goes over the budget.
#[tokio::test]
async fn idle_grpc_connections_make_room_for_the_postgres_door() {
    let (gw, door) = both_doors(&["--pool-max", "2", "--pool-min", "0"]).await;
    let direct = gw.direct().await;
    // Two calls at once leave two gRPC connections idle (the door keeps none warm here).
    let mut first = gw.client().await;
    let mut second = gw.client().await;
    tokio::join!(
        run(&mut first, "SELECT pg_sleep(0.3)", vec![]),
        run(&mut second, "SELECT pg_sleep(0.3)", vec![])
    );
    eventually(
        Duration::from_secs(10),
        "the gRPC door's minimum",
        || async {
            gw.metric("pgway_pool_connections{door=\"grpc\",state=\"idle\"}")
                .await
                == 2.0
        },
    )
    .await;
    let client = connect(&door).await;
    let row = client.query_one("SELECT 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert!(backends(&direct, &gw.database).await <= 2);
    assert!(
        gw.metric("pgway_connections_closed_total{reason=\"reclaimed\"}")
            .await
            >= 1.0
    );
    drop(gw);
}

/// Both doors under load at once on a budget of 3: every call and every statement succeeds,
/// and PostgreSQL never sees more than 3 of the gateway's connections.
#[tokio::test]
async fn both_doors_share_the_budget_under_load() {
    let (gw, door) = both_doors(&["--pool-max", "3"]).await;
    let direct = gw.direct().await;
    let mut work = tokio::task::JoinSet::new();
    for caller in 0..4 {
        let mut grpc = gw.client().await;
        work.spawn(async move {
            for i in 0..25 {
                let response = run(&mut grpc, "SELECT $1::int + 1", vec![int(i)]).await;
                assert_eq!(
                    scalar(&response),
                    Some(pgway::proto::value::Kind::IntValue(i + 1)),
                    "gRPC caller {caller}"
                );
            }
        });
    }
    for client_no in 0..4 {
        let door = door.clone();
        work.spawn(async move {
            let client = connect(&door).await;
            for i in 0..25i32 {
                let row = client
                    .query_one("SELECT $1::int + 1", &[&i])
                    .await
                    .unwrap_or_else(|e| panic!("door client {client_no}: {e}"));
                assert_eq!(row.get::<_, i32>(0), i + 1);
            }
        });
    }
    let watch = {
        let database = gw.database.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..200 {
                most = most.max(backends(&direct, &database).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    while let Some(done) = work.join_next().await {
        done.expect("a caller failed");
    }
    let most = watch.await.expect("watcher");
    assert!(
        most <= 3,
        "{most} server connections open, over the budget of 3"
    );
}

/// After the gRPC door has used the whole budget, the PostgreSQL door's clients still get
/// more than one connection: clients taking turns on one connection are each served within
/// a round trip, never waiting long one by one, yet the door is short all the same, and its
/// line asks the gRPC door for its idle connections.
#[tokio::test]
async fn door_clients_taking_turns_win_back_idle_grpc_connections() {
    let (gw, door) = both_doors(&["--pool-max", "4", "--pool-min", "0"]).await;
    let mut callers = Vec::new();
    for _ in 0..4 {
        callers.push(gw.client().await);
    }
    futures::future::join_all(
        callers
            .iter_mut()
            .map(|caller| run(caller, "SELECT pg_sleep(0.3)", vec![])),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the gRPC door holds the whole budget, idle",
        || async {
            gw.metric("pgway_pool_connections{door=\"grpc\",state=\"idle\"}")
                .await
                == 4.0
        },
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (door, stop) = (door.clone(), std::sync::Arc::clone(&stop));
        clients.spawn(async move {
            let client = connect(&door).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .query_one("SELECT pg_sleep(0.01)", &[])
                    .await
                    .expect("a door client's statement");
            }
        });
    }
    eventually(
        Duration::from_secs(15),
        "the door holds three or more server connections",
        || async {
            let idle = gw
                .metric("pgway_pool_connections{door=\"postgres\",state=\"idle\"}")
                .await;
            let busy = gw
                .metric("pgway_pool_connections{door=\"postgres\",state=\"in_use\"}")
                .await;
            idle + busy >= 3.0
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.expect("a door client failed");
    }
    drop(gw);
}

/// One user's clients keep every server connection of a budget of 2 busy, their line never
/// empty; meanwhile `app` logs in and runs one statement, which must be served within its
/// acquire timeout.
async fn assert_another_user_is_served_beside_a_busy_one(door: &Door) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut busy = Vec::new();
    for _ in 0..6 {
        let client = door.client().await;
        let stop = stop.clone();
        busy.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .batch_execute("SELECT pg_sleep(0.005)")
                    .await
                    .expect("the busy user's statement");
            }
        }));
    }
    // The busy user's clients have taken both connections and queue behind each other.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = async {
        let (app, connection) =
            tokio_postgres::connect(&door.dsn_as("app", APP_PASSWORD), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(connection);
        app.query_one("SELECT current_user::text", &[]).await
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in busy {
        task.await.expect("the busy user's client");
    }
    let user: String = served.expect("the other user is served").get(0);
    assert_eq!(user, "app");
}

/// A busy user does not lock another user out of the door: a connection given back while a
/// client of another user waits for a place is closed to make room (while the busy user holds
/// two more than the other), rather than handed on to the busy user's own line for ever.
#[tokio::test]
async fn a_busy_user_does_not_lock_another_user_out() {
    // The file must exist when the gateway starts: the verifier is written once known.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("userlist.txt");
    std::fs::write(&file, "").expect("write");
    let path = file.to_str().expect("utf-8");
    let door = Door::start(&[
        "--pool-max",
        "2",
        "--acquire-timeout",
        "3s",
        "--pg-auth-file",
        path,
    ])
    .await;
    let verifier: String = door
        .direct()
        .await
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await
        .expect("app's verifier")
        .get(0);
    std::fs::write(&file, format!("\"app\" \"{verifier}\"\n")).expect("write");
    assert_another_user_is_served_beside_a_busy_one(&door).await;
}

/// The same with `app` found by the auth query, which runs on a connection of the gRPC door's
/// pool: the busy door gives it a place (its connections never sit idle, so one is closed as
/// it comes back), or the login would fail for want of a connection.
#[tokio::test]
async fn an_auth_query_gets_a_place_from_a_busy_door() {
    let door = Door::start(&[
        "--pool-max",
        "2",
        "--acquire-timeout",
        "3s",
        "--pg-auth-query",
        "SELECT usename, passwd FROM pgway_auth.lookup($1)",
    ])
    .await;
    assert_another_user_is_served_beside_a_busy_one(&door).await;
}

/// A client waiting while the door holds the whole budget is served as soon as a place frees:
/// here the connection in use is lost (its backend terminated), and the waiter gets a new one,
/// long before its acquire timeout.
#[tokio::test]
async fn a_waiter_is_served_when_the_only_connection_is_lost() {
    let door = Door::start(&["--pool-max", "1", "--acquire-timeout", "60s"]).await;
    let (holder, waiter) = (door.client().await, door.client().await);
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the holder's backend")
        .get(0);
    let waiting = tokio::spawn(async move {
        let row = waiter.query_one("SELECT 41 + 1", &[]).await?;
        Ok::<i32, tokio_postgres::Error>(row.get(0))
    });
    eventually(
        Duration::from_secs(30),
        "the other client waits",
        || async { door.gw.metric("pgway_pg_clients{state=\"waiting\"}").await >= 1.0 },
    )
    .await;
    door.direct()
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminated");
    let served = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("served well within the acquire timeout")
        .expect("the waiting task");
    assert_eq!(served.expect("the waiter's query"), 42);
    holder
        .query_one("SELECT 1", &[])
        .await
        .expect_err("the holder's transaction was lost with its connection");
}
