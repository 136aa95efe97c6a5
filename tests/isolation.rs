//! Session isolation of the PostgreSQL door, tested differentially: tests/python/differential.py
//! runs the same scripted multi-client scenarios (session settings, search_path, temp tables,
//! advisory locks, DO blocks and functions, startup options and RESET ALL, asyncpg's pool,
//! bound parameters, pipelines, SQL PREPARE and PREPARE TRANSACTION, role switches, and seeded
//! random interleavings of them) once with every client connected straight to PostgreSQL and
//! once with every client connected to a door whose pool has two server connections, so three
//! clients really share them. Every client must see through the door exactly what it sees
//! directly; the script reports the first step of each scenario where it does not.
//!
//! The cluster is this binary's own: SCRAM for TCP logins as the door's users expect, and
//! `max_prepared_transactions` above 0 so the two-phase commit part of the script runs.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use pgway::devdb::{ClusterSetup, TempPostgres};
use support::Gateway;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

const POSTGRES_PASSWORD: &str = "pw-postgres-isolation";

static CLUSTER: OnceCell<TempPostgres> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The binary's PostgreSQL: SCRAM for every TCP login, trust on its Unix socket (where the
/// test's own superuser connections go), two-phase commit on.
async fn cluster() -> &'static TempPostgres {
    CLUSTER
        .get_or_init(|| async {
            let pg = tokio::task::spawn_blocking(|| {
                TempPostgres::start_with(
                    None,
                    &ClusterSetup {
                        files: vec![],
                        conf: vec![
                            "password_encryption = 'scram-sha-256'".into(),
                            "max_prepared_transactions = 4".into(),
                        ],
                        hba: vec![
                            "host all all 127.0.0.1/32 scram-sha-256".into(),
                            "host all all ::1/128 scram-sha-256".into(),
                        ],
                    },
                )
                .unwrap_or_else(|e| panic!("{e}"))
            })
            .await
            .expect("starting PostgreSQL panicked");
            superuser_at(&pg, "postgres")
                .await
                .batch_execute(&format!(
                    "ALTER ROLE postgres PASSWORD '{POSTGRES_PASSWORD}'"
                ))
                .await
                .expect("the superuser's password");
            pg
        })
        .await
}

/// A superuser connection over the cluster's Unix socket (trust), bypassing the door.
async fn superuser_at(pg: &TempPostgres, database: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(pg.dir())
        .port(pg.port())
        .user("postgres")
        .dbname(database);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("superuser connection to {database}: {e}"));
    tokio::spawn(connection);
    client
}

/// A new, empty database of the cluster, named `prefix` and a number unique to this process.
async fn fresh_database(pg: &TempPostgres, prefix: &str) -> String {
    let database = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    superuser_at(pg, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("CREATE DATABASE");
    database
}

/// A libpq URL straight to `database` on the cluster, as the superuser over TCP (SCRAM).
fn direct_dsn(pg: &TempPostgres, database: &str) -> String {
    format!(
        "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
        pg.port()
    )
}

/// A gateway whose PostgreSQL door serves a fresh database of its own.
struct Door {
    /// Kept for as long as the door is used: dropping it stops the gateway.
    _gw: Gateway,
    addr: std::net::SocketAddr,
    database: String,
}

impl Door {
    async fn start(settings: &[&str]) -> Door {
        let pg = cluster().await;
        let database = fresh_database(pg, "door").await;
        let url = format!(
            "postgres://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}",
            pg.port()
        );
        let mut argv = vec!["--pg-addr", "127.0.0.1:0", "--pool-min", "0"];
        argv.extend_from_slice(settings);
        let gw = Gateway::serving(&url, database.clone(), &argv).await;
        let addr = gw.pg_addr.expect("the door is on");
        Door {
            _gw: gw,
            addr,
            database,
        }
    }

    /// A libpq URL to the door, as the superuser the gateway's URL names.
    fn dsn(&self) -> String {
        format!(
            "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{}?sslmode=disable",
            self.addr.port(),
            self.database
        )
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs tests/python/differential.py with `direct` and `other` as its two DSNs.
async fn differential(direct: &str, other: &str, extra: &[&str]) -> Output {
    let path = Path::new("tests/python").join("differential.py");
    let mut args = vec![path.to_str().expect("utf-8 path"), direct, other];
    args.extend_from_slice(extra);
    support::run_program(
        "python3",
        &args,
        &[],
        "the Python drivers come with `pip install -r tests/python/requirements.txt`",
    )
    .await
}

/// Every scenario, every client, every step: the same observations through the door as
/// directly.
#[tokio::test]
async fn every_client_sees_through_the_door_what_it_sees_directly() {
    let pg = cluster().await;
    let direct = direct_dsn(pg, &fresh_database(pg, "direct").await);
    let door = Door::start(&["--pool-max", "2"]).await;
    // The one difference no pooler can take away: a custom setting some client once set on a
    // server connection stays defined there, empty, after RESET ALL, so another client reads
    // '' where a fresh session reads NULL (PostgreSQL can't drop a placeholder). The script
    // compares custom settings as nullif(…, ''): a value, leaked or lost, still differs.
    let out = differential(&direct, &door.dsn(), &["--lenient-placeholders"]).await;
    assert!(
        out.status.success(),
        "clients saw through the door what they do not see directly ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The script itself: two direct runs of every scenario (two databases, no door) must agree,
/// so a difference the test above reports is the door's doing and never the script's.
#[tokio::test]
async fn the_script_sees_no_difference_between_two_direct_runs() {
    let pg = cluster().await;
    let first = direct_dsn(pg, &fresh_database(pg, "direct").await);
    let second = direct_dsn(pg, &fresh_database(pg, "direct").await);
    let out = differential(&first, &second, &[]).await;
    assert!(
        out.status.success(),
        "differential.py differs from itself without a door ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
