//! The PostgreSQL door under hostile clients: sockets that connect and say nothing, floods of
//! logins with made-up names, refused logins and what they cost. Hostile clients come from
//! other loopback addresses (127.0.0.2 and up); the real client from 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use support::door::{Door, POSTGRES_PASSWORD};
use support::raw::{connect_from, scram_login};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

/// Thousands of sockets that connect and send nothing, from one address and from many,
/// don't keep a real client out: they take no place among the logged-in clients, one
/// address gets only its share of logins in progress, and the oldest silent ones make room.
#[tokio::test]
async fn silent_sockets_dont_keep_real_clients_out() {
    let door = Door::start(&[
        "--pg-max-clients",
        "20",
        "--pg-max-logins",
        "100",
        "--pg-max-logins-per-address",
        "30",
    ])
    .await;
    let mut silent = Vec::new();
    // From one address: far more than its share.
    for _ in 0..2000 {
        if let Ok(socket) = connect_from("127.0.0.2", door.addr).await {
            silent.push(socket);
        }
    }
    // From many: more than the door's share of logins in progress in all.
    for host in 3..13 {
        for _ in 0..25 {
            if let Ok(socket) = connect_from(&format!("127.0.0.{host}"), door.addr).await {
                silent.push(socket);
            }
        }
    }
    assert!(silent.len() >= 2200, "only {} sockets opened", silent.len());
    eventually(
        Duration::from_secs(20),
        "the address's extra sockets are refused",
        || {
            let gw = &door.gw;
            async move {
                gw.metric("pgway_pg_auth_failures_total{reason=\"too_many_logins\"}")
                    .await
                    >= 1900.0
            }
        },
    )
    .await;
    let mut logins = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let (client, connection) = tokio_postgres::connect(&door.dsn(), tokio_postgres::NoTls)
            .await
            .expect("a real client logs in while silent sockets are open");
        let handle = tokio::spawn(connection);
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        logins.push(started.elapsed());
        drop(client);
        let _ = handle.await;
    }
    logins.sort();
    let evicted = door
        .gw
        .metric("pgway_pg_auth_failures_total{reason=\"evicted\"}")
        .await;
    assert!(evicted >= 1.0, "no silent login was dropped to make room");
    println!(
        "{} silent sockets open; 30 real logins, median {:?}, slowest {:?}; {evicted} silent logins dropped",
        silent.len(),
        logins[15],
        logins[29]
    );
}

/// A flood of logins with made-up user names from one address: every attempt is told what a
/// wrong password is told, each later than the last (the address pays), while a logged-in
/// client's queries keep working and another address's failed login waits only the first
/// delay.
#[tokio::test]
async fn a_flood_of_unknown_users_costs_the_flooder_not_others() {
    let door = Door::start(&[]).await;
    let client = door.client().await;
    let flood_until = Instant::now() + Duration::from_secs(6);
    let mut flood = Vec::new();
    for task in 0..16 {
        let (addr, database) = (door.addr, door.database.clone());
        flood.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while Instant::now() < flood_until {
                let user = format!("nobody_{task}_{n}");
                n += 1;
                answers.push(scram_login("127.0.0.2", addr, &database, &user, "guess").await);
            }
            answers
        }));
    }
    let mut latencies = Vec::new();
    while Instant::now() < flood_until {
        let started = Instant::now();
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another address's first failure: the first delay, not the flooder's.
    let (code, other) =
        scram_login("127.0.0.3", door.addr, &door.database, "postgres", "wrong").await;
    assert_eq!(code, "28P01");
    let mut answers = Vec::new();
    for task in flood {
        answers.extend(task.await.unwrap());
    }
    for (code, took) in &answers {
        assert!(
            code == "28P01" || code == "53300",
            "an attempt ended with {code:?}"
        );
        if code == "28P01" {
            assert!(
                *took >= Duration::from_millis(500),
                "answered after {took:?}"
            );
        }
    }
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest >= Duration::from_secs(2),
        "the flooder's delays didn't grow: slowest {slowest:?}"
    );
    assert!(
        other < slowest,
        "another address waited {other:?}, as long as the flooder's {slowest:?}"
    );
    latencies.sort();
    println!(
        "{} flood attempts in 6 s from 16 tasks (slowest answer {slowest:?}); the logged-in \
         client's SELECT 1: median {:?}, p99 {:?} over {} queries; another address's failure \
         answered after {other:?}",
        answers.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies.len()
    );
}

/// An unknown user, a wrong password and a database the door doesn't serve are each told
/// what PostgreSQL tells them (3D000 for the database), after the failed-login delay, and
/// counted by their real cause; an unknown user is told exactly what a wrong password is.
#[tokio::test]
async fn refused_logins_are_delayed_and_counted_by_cause() {
    let door = Door::start(&["--pg-databases", "postgres"]).await;
    let count = |reason: &str| {
        let sample = format!("pgway_pg_auth_failures_total{{reason=\"{reason}\"}}");
        let gw = &door.gw;
        async move { gw.metric(&sample).await }
    };
    let before = (
        count("unknown_user").await,
        count("wrong_password").await,
        count("unknown_database").await,
    );
    let (code, took) = scram_login("127.0.0.4", door.addr, &door.database, "nobody", "x").await;
    assert_eq!(code, "28P01");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let (code, took) =
        scram_login("127.0.0.5", door.addr, &door.database, "postgres", "wrong").await;
    assert_eq!(code, "28P01");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let (code, took) = scram_login(
        "127.0.0.6",
        door.addr,
        "elsewhere",
        "postgres",
        POSTGRES_PASSWORD,
    )
    .await;
    assert_eq!(code, "3D000");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let after = (
        count("unknown_user").await,
        count("wrong_password").await,
        count("unknown_database").await,
    );
    // At least: the other tests of this binary share the metrics.
    assert!(after.0 - before.0 >= 1.0, "unknown user not counted");
    assert!(after.1 - before.1 >= 1.0, "wrong password not counted");
    assert!(after.2 - before.2 >= 1.0, "unknown database not counted");

    // The messages themselves: psql shows the same words for an unknown user and a wrong
    // password.
    let message = |user: &str, password: &str| {
        let dsn = door.dsn_as(user, password);
        async move {
            tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .err()
                .and_then(|e| e.as_db_error().map(|e| e.message().to_owned()))
        }
    };
    assert_eq!(
        message("nobody", "x").await.unwrap(),
        "password authentication failed for user \"nobody\""
    );
    assert_eq!(
        message("postgres", "x").await.unwrap(),
        "password authentication failed for user \"postgres\""
    );
}

/// A login that never finishes is dropped at `PGWAY_PG_LOGIN_TIMEOUT`: the socket is closed.
#[tokio::test]
async fn a_login_that_never_finishes_is_dropped_at_the_timeout() {
    let door = Door::start(&["--pg-login-timeout", "1s"]).await;
    let mut stream = connect_from("127.0.0.7", door.addr).await.unwrap();
    // Half a startup packet, then nothing.
    stream.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the door closes the connection")
        .ok();
    assert!(rest.is_empty(), "told {rest:?}");
    eventually(Duration::from_secs(5), "the timeout is counted", || {
        let gw = &door.gw;
        async move {
            gw.metric("pgway_pg_auth_failures_total{reason=\"timeout\"}")
                .await
                >= 1.0
        }
    })
    .await;
}

/// The database asks the gateway's connections for the password in cleartext, or for its MD5
/// hash: refused before anything is sent (28000 through the PostgreSQL door, UNAVAILABLE
/// over gRPC, naming the setting), unless PGWAY_DATABASE_REQUIRE_AUTH allows it, as libpq's
/// require_auth would.
#[tokio::test]
async fn upstream_cleartext_and_md5_are_refused_unless_allowed() {
    let pg = support::door::cluster().await;
    let roles = [
        ("pgway_cleartext", support::door::CLEARTEXT_PASSWORD),
        ("pgway_md5", support::door::MD5_PASSWORD),
    ];
    for (role, password) in roles {
        for allow in [None, Some("scram-sha-256,md5,password")] {
            let database = support::door::fresh_database(pg, "upstream").await;
            let url = format!(
                "postgres://{role}:{password}@127.0.0.1:{}/{database}",
                pg.port()
            );
            let mut argv = vec!["--pg-addr", "127.0.0.1:0", "--pool-min", "0"];
            if let Some(allow) = allow {
                argv.extend_from_slice(&["--database-require-auth", allow]);
            }
            let gw = Gateway::serving(&url, database.clone(), &argv).await;
            let dsn = format!(
                "postgresql://{role}:{password}@{}/{database}?sslmode=disable",
                gw.pg_addr.unwrap()
            );
            let outcome = async {
                let (client, connection) = tokio_postgres::connect(&dsn, NoTls).await?;
                tokio::spawn(connection);
                let row = client.query_one("SELECT current_user::text", &[]).await?;
                Ok::<String, tokio_postgres::Error>(row.get(0))
            }
            .await;
            // The gRPC door's connections (tokio-postgres) obey the same rule.
            let grpc = gw
                .client()
                .await
                .query(query("SELECT current_user::text", vec![]))
                .await;
            match (allow, &grpc) {
                (None, Err(status)) => {
                    println!("{role}, by default, over gRPC: {}", status.message());
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(status.message().contains("PGWAY_DATABASE_REQUIRE_AUTH"));
                }
                (Some(_), Ok(_)) => {}
                _ => panic!("{role} with {allow:?} over gRPC: {grpc:?}"),
            }
            match (allow, outcome) {
                (None, Err(error)) => {
                    let db = error.as_db_error().expect("an error from the door");
                    println!(
                        "{role}, by default: {} ({})",
                        db.message(),
                        db.code().code()
                    );
                    assert_eq!(db.code().code(), "28000", "{role}");
                    assert!(db.message().contains("PGWAY_DATABASE_REQUIRE_AUTH"));
                }
                (Some(_), Ok(user)) => assert_eq!(user, role),
                (allow, outcome) => panic!("{role} with {allow:?}: {outcome:?}"),
            }
        }
    }
}

/// With PGWAY_PG_AUTH_QUERY, a flood of logins with made-up names runs at most
/// `CONCURRENT_LOOKUPS` auth queries at once on the database (the rest wait their turn within
/// the login timeout), so the gRPC door's callers keep the pool.
#[tokio::test]
async fn a_flood_of_unknown_users_runs_a_bounded_number_of_auth_queries() {
    // A pool larger than the bound, so the bound is what holds them back.
    let door = Door::start(&[
        "--pool-max",
        "10",
        "--pg-auth-query",
        "SELECT usename, passwd FROM pgway_auth.slow_lookup($1)",
    ])
    .await;
    let direct = door.direct().await;
    direct
        .batch_execute(
            "CREATE FUNCTION pgway_auth.slow_lookup(name text, OUT usename name, OUT passwd text)
               RETURNS SETOF record LANGUAGE plpgsql SECURITY DEFINER
               SET search_path = pg_catalog AS $$
               BEGIN
                 PERFORM pg_sleep(0.3);
                 RETURN QUERY SELECT rolname, rolpassword FROM pg_authid WHERE rolname = name;
               END $$",
        )
        .await
        .unwrap();
    let mut flood = Vec::new();
    for i in 0..24 {
        let (addr, database) = (door.addr, door.database.clone());
        flood.push(tokio::spawn(async move {
            let from = format!("127.0.0.{}", 10 + i % 8);
            scram_login(&from, addr, &database, &format!("ghost{i}"), "guess").await
        }));
    }
    let mut most = 0;
    while flood.iter().any(|task| !task.is_finished()) {
        let running: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%slow_lookup%' AND state = 'active' \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(running);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in flood {
        let (code, _) = task.await.unwrap();
        assert_eq!(code, "28P01");
    }
    println!("auth queries running at once during a flood of 24 unknown users: at most {most}");
    assert!(
        (1..=pgway::pgwire::users::CONCURRENT_LOOKUPS as i64).contains(&most),
        "{most} auth queries at once"
    );
}
