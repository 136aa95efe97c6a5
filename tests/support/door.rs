//! A PostgreSQL of the test binary's own that asks for SCRAM-SHA-256 over TCP (the door's users
//! expect it), and a gateway whose PostgreSQL door serves a fresh database of it.

use std::sync::atomic::{AtomicU32, Ordering};

use pgway::devdb::{ClusterSetup, TempPostgres};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use super::Gateway;

pub const POSTGRES_PASSWORD: &str = "pw-postgres-1";
pub const APP_PASSWORD: &str = "pw-app-2";
/// The password of `pgway_cleartext`, whose logins the server asks for in cleartext.
pub const CLEARTEXT_PASSWORD: &str = "pw-clear-3";
/// The password of `pgway_md5`, stored as MD5, whose logins the server asks for hashed.
pub const MD5_PASSWORD: &str = "pw-md5-4";

static CLUSTER: OnceCell<TempPostgres> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The binary's PostgreSQL: SCRAM for every TCP login, trust on its Unix socket (where the
/// tests' own superuser connections go).
pub async fn cluster() -> &'static TempPostgres {
    CLUSTER
        .get_or_init(|| async {
            let pg = tokio::task::spawn_blocking(|| {
                TempPostgres::start_with(
                    None,
                    &ClusterSetup {
                        files: vec![],
                        conf: vec![
                            "password_encryption = 'scram-sha-256'".into(),
                            // Two-phase commit, for the isolation tests' PREPARE TRANSACTION.
                            "max_prepared_transactions = 4".into(),
                        ],
                        hba: vec![
                            // Servers that ask for the password itself, or its MD5 hash.
                            "host all pgway_cleartext 127.0.0.1/32 password".into(),
                            "host all pgway_md5 127.0.0.1/32 md5".into(),
                            "host all all 127.0.0.1/32 scram-sha-256".into(),
                            "host all all ::1/128 scram-sha-256".into(),
                        ],
                    },
                )
                .unwrap_or_else(|e| panic!("{e}"))
            })
            .await
            .expect("starting PostgreSQL panicked");
            let admin = superuser_at(&pg, "postgres").await;
            admin
                .batch_execute(&format!(
                    "ALTER ROLE postgres PASSWORD '{POSTGRES_PASSWORD}';
                     CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';
                     CREATE ROLE pgway_cleartext LOGIN PASSWORD '{CLEARTEXT_PASSWORD}';
                     SET password_encryption = 'md5';
                     CREATE ROLE pgway_md5 LOGIN PASSWORD '{MD5_PASSWORD}';
                     RESET password_encryption;"
                ))
                .await
                .expect("roles");
            // In template1, so every test's database has it: the auth query's function,
            // schema-qualified and SECURITY DEFINER, as PgBouncer's docs advise.
            superuser_at(&pg, "template1")
                .await
                .batch_execute(
                    "CREATE SCHEMA pgway_auth;
                     CREATE FUNCTION pgway_auth.lookup(name text, OUT usename name, OUT passwd text)
                       RETURNS SETOF record LANGUAGE sql SECURITY DEFINER
                       SET search_path = pg_catalog AS
                       'SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = name';",
                )
                .await
                .expect("auth function");
            pg
        })
        .await
}

/// A superuser connection over the cluster's Unix socket (trust), bypassing the door.
pub async fn superuser_at(pg: &TempPostgres, database: &str) -> tokio_postgres::Client {
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

/// A gateway whose PostgreSQL door serves a fresh database, with `--pool-max 3` unless
/// `settings` say otherwise.
pub struct Door {
    pub gw: Gateway,
    pub addr: std::net::SocketAddr,
    pub database: String,
}

/// How the gateway reaches the cluster.
#[derive(Clone, Copy)]
pub enum Reach {
    /// TCP on loopback, logging in with SCRAM.
    Tcp,
    /// The cluster's Unix socket (`host=<directory>`), where it trusts.
    UnixSocket,
}

impl Door {
    pub async fn start(settings: &[&str]) -> Door {
        Door::start_reaching(Reach::Tcp, settings).await
    }

    pub async fn start_reaching(reach: Reach, settings: &[&str]) -> Door {
        let pg = cluster().await;
        let database = format!(
            "door_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        superuser_at(pg, "postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("CREATE DATABASE");
        let url = match reach {
            Reach::Tcp => format!(
                "postgres://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}",
                pg.port()
            ),
            Reach::UnixSocket => format!(
                "host={} port={} user=postgres password={POSTGRES_PASSWORD} dbname={database}",
                pg.dir().display(),
                pg.port()
            ),
        };
        let mut argv = vec!["--pg-addr", "127.0.0.1:0"];
        if !settings.contains(&"--pool-min") {
            argv.extend_from_slice(&["--pool-min", "0"]);
        }
        if !settings.contains(&"--pool-max") {
            argv.extend_from_slice(&["--pool-max", "3"]);
        }
        argv.extend_from_slice(settings);
        let gw = Gateway::serving(&url, database.clone(), &argv).await;
        let addr = gw.pg_addr.expect("the door is on");
        Door { gw, addr, database }
    }

    /// A libpq connection URL to the door.
    pub fn dsn_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{}?sslmode=disable",
            self.addr.port(),
            self.database
        )
    }

    pub fn dsn(&self) -> String {
        self.dsn_as("postgres", POSTGRES_PASSWORD)
    }

    /// A tokio-postgres client through the door, with its connection task.
    pub async fn connect(
        &self,
    ) -> (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ) {
        let (client, connection) = tokio_postgres::connect(&self.dsn(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting through the door: {e}"));
        (client, tokio::spawn(connection))
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.connect().await.0
    }

    /// A superuser connection to the door's database, bypassing the door.
    pub async fn direct(&self) -> tokio_postgres::Client {
        superuser_at(cluster().await, &self.database).await
    }
}

/// A new, empty database of the cluster, named `prefix` and a number unique to this process.
pub async fn fresh_database(pg: &TempPostgres, prefix: &str) -> String {
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
pub fn direct_dsn(pg: &TempPostgres, database: &str) -> String {
    format!(
        "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
        pg.port()
    )
}
