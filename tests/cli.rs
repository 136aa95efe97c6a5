//! The `pgway` binary: settings validated at start-up, `pgway dev`, health and SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use pgway::proto::database_client::DatabaseClient;
use pgway::proto::value::Kind;
use support::*;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PGWAY: &str = env!("CARGO_BIN_EXE_pgway");

fn pgway() -> Command {
    let mut command = Command::new(PGWAY);
    // Settings come only from what each test gives.
    for (key, _) in std::env::vars() {
        if key.starts_with("PGWAY_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    // The PostgreSQL door only where a test turns it on (`--pg-addr`): several gateways run
    // at once, and the default port is one.
    command.env("PGWAY_PG_ADDR", "");
    command
}

/// Fails unless `pgway` with `var=value` (on top of a valid URL and `PGWAY_AUTH=none`) exits
/// with code 2, saying `named`.
fn refused_start_names(var: &str, value: &str, named: &str) {
    let output = pgway()
        .env("PGWAY_DATABASE_URL", "postgres://u@127.0.0.1/db")
        .env("PGWAY_AUTH", "none")
        .env(var, value)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{var}={value}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(named), "{var}={value}: {stderr}");
}

#[test]
fn bad_settings_stop_start_up_with_their_name() {
    for (var, value, named) in [
        ("PGWAY_POOL_MAX", "lots", "pool-max"),
        ("PGWAY_ACQUIRE_TIMEOUT", "5", "acquire-timeout"),
        ("PGWAY_GRPC_ADDR", "nowhere", "grpc-addr"),
        ("PGWAY_MAX_ROWS", "0", "PGWAY_MAX_ROWS"),
        ("PGWAY_TLS_CERT", "/etc/pgway/tls.crt", "PGWAY_TLS_KEY"),
        (
            "PGWAY_DATABASE_URL",
            "postgres://u@h:notaport/db",
            "PGWAY_DATABASE_URL",
        ),
    ] {
        refused_start_names(var, value, named);
    }
    let output = pgway().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PGWAY_DATABASE_URL"));
}

/// A value set in the environment is reported by the variable the user set, with the flag
/// beside it, whether the parser or the validation refuses it.
#[test]
fn bad_settings_name_the_variable_and_the_flag() {
    for (var, value, named) in [
        (
            "PGWAY_POOL_MAX",
            "abc",
            "PGWAY_POOL_MAX (--pool-max): invalid value \"abc\"",
        ),
        (
            "PGWAY_ACQUIRE_TIMEOUT",
            "5",
            "PGWAY_ACQUIRE_TIMEOUT (--acquire-timeout)",
        ),
        ("PGWAY_LOG_FORMAT", "xml", "PGWAY_LOG_FORMAT (--log-format)"),
        (
            "PGWAY_MAX_ROWS",
            "0",
            "PGWAY_MAX_ROWS (--max-rows): must be at least 1",
        ),
        (
            "PGWAY_DATABASE_URL",
            "host=/run/postgresql user=u dbname=db sslmode=require",
            "PGWAY_DATABASE_URL (--database-url): sslmode=require with a Unix-socket host",
        ),
    ] {
        refused_start_names(var, value, named);
    }
}

/// Fails unless `pgway args` exits 0 with each of `named` in what it prints.
fn help_names(args: &[&str], named: &[&str]) {
    let output = pgway().args(args).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for named in named {
        assert!(
            help.contains(named),
            "{args:?}: {named} missing from\n{help}"
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    help_names(
        &["serve", "--help"],
        &[
            "PGWAY_DATABASE_URL",
            "PGWAY_GRPC_ADDR",
            "PGWAY_POOL_MIN",
            "PGWAY_POOL_MAX",
            "PGWAY_ACQUIRE_TIMEOUT",
            "PGWAY_MAX_ROWS",
            "PGWAY_TX_MAX_ATTEMPTS",
            "PGWAY_TLS_CERT",
            "PGWAY_TLS_CLIENT_CA",
        ],
    );
}

/// `pgway probe -h` (in each spelling grpc_health_probe answers) prints the flags and exits 0.
#[test]
fn probe_help_lists_its_flags() {
    let flags = [
        "-addr",
        "-service",
        "-connect-timeout",
        "-rpc-timeout",
        "-tls-ca-cert",
    ];
    for spelling in ["-h", "-help", "--help"] {
        help_names(&["probe", spelling], &flags);
    }
}

/// `pgway dev --help` says which settings it reads and how to restart its database.
#[test]
fn dev_help_names_its_settings_and_the_restart() {
    let named = [
        "PGWAY_*",
        "<dir>/data",
        "<dir>/postgres.log",
        "pg_ctl restart",
    ];
    help_names(&["dev", "--help"], &named);
}

/// A probe that cannot connect says why, not only "transport error", with grpc_health_probe's
/// exit code for it.
#[test]
fn probe_names_why_it_cannot_connect() {
    // Nothing listens there once the probe socket is closed.
    let addr = format!("-addr=127.0.0.1:{}", free_port());
    let output = pgway().args(["probe", &addr]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

/// A server directory whose `initdb` only leaves a mark: shows whether `pgway dev` got as far.
fn marking_pg_bin() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Open to the postgres OS user, as whom dev runs initdb when the tests run as root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    for (name, script) in [
        (
            "initdb",
            "#!/bin/sh\ntouch \"$(dirname \"$0\")/initdb-ran\"\nexit 1\n",
        ),
        ("pg_ctl", "#!/bin/sh\nexit 1\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// A second `pgway dev` (any of its addresses taken) stops before initdb, naming the address,
/// and leaves no directory behind.
#[test]
fn dev_refuses_addresses_in_use_before_initdb() {
    let bin = marking_pg_bin();
    let ran = bin.path().join("initdb-ran");
    let tmp = tempfile::tempdir().unwrap();
    let dev = |grpc: &str, pg: &str, metrics: &str| {
        pgway()
            .args([
                "dev",
                "--grpc-addr",
                grpc,
                "--pg-addr",
                pg,
                "--metrics-addr",
                metrics,
            ])
            .arg("--pg-bin")
            .arg(bin.path())
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap()
    };
    // With free addresses dev goes on to initdb (which fails here): the mark works.
    let free = format!("127.0.0.1:{}", free_port());
    let output = dev(&free, "", "");
    assert!(!output.status.success());
    assert!(ran.exists(), "{output:?}");
    std::fs::remove_file(&ran).unwrap();

    // Held to the end: a port another process listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listener.local_addr().unwrap().to_string();
    for (grpc, pg, metrics) in [
        (taken.as_str(), "", ""),
        (free.as_str(), taken.as_str(), ""),
        (free.as_str(), "", taken.as_str()),
    ] {
        let output = dev(grpc, pg, metrics);
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&taken) && stderr.contains("in use"),
            "{stderr}"
        );
        assert!(!ran.exists(), "initdb ran: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

async fn wait_ready(addr: &str) -> tonic::transport::Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
            if let Ok(channel) = endpoint.connect().await {
                let status = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: "pgway.v1.Database".into(),
                    })
                    .await;
                if status.is_ok_and(|s| s.into_inner().status == 1) {
                    return channel;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_exit(mut child: std::process::Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || {
        for _ in 0..600 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("pgway did not exit within 30 s");
    })
    .await
    .unwrap()
}

/// `pgway dev` brings up a private PostgreSQL and the gateway; Ctrl-C stops both and removes
/// the data directory.
#[tokio::test]
async fn dev_serves_a_throwaway_database_and_cleans_up() {
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics = metrics_addr.to_string();
    let pg_addr = format!("127.0.0.1:{}", free_port());
    let mut child = pgway()
        .args([
            "dev",
            "--grpc-addr",
            &addr,
            "--metrics-addr",
            &metrics,
            "--pg-addr",
            &pg_addr,
        ])
        .env("PGWAY_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The JSON log says where the cluster lives.
    let stdout = child.stdout.take().unwrap();
    let logs = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let channel = wait_ready(&addr).await;
    let mut client = DatabaseClient::new(channel);
    let response = run(
        &mut client,
        "SELECT current_setting('server_version_num')::int >= 140000",
        vec![],
    )
    .await;
    assert_eq!(scalar(&response), Some(Kind::BoolValue(true)));
    // Metrics are where --metrics-addr says, not on every address's 9090.
    let exposition = scrape(metrics_addr).await;
    assert!(
        exposition.contains("pgway_pool_connections"),
        "{exposition}"
    );
    // The quickstart's psql line: the PostgreSQL door, with the password dev gives its server.
    let psql = psql_binary();
    let url = format!(
        "postgres://postgres:{}@{pg_addr}/postgres?sslmode=disable",
        pgway::devdb::DEV_PASSWORD
    );
    let output = tokio::process::Command::new(&psql)
        .args([url.as_str(), "-X", "-At", "-c", "SELECT 40 + 2"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "42",
        "{output:?}"
    );
    signal(&child, "INT");
    let status = wait_exit(child).await;
    assert!(status.success(), "{status:?}");
    let logs = logs.join().unwrap();
    let dir = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|event| {
            event
                .get("dir")
                .and_then(|d| d.as_str())
                .map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| panic!("no data directory in the logs:\n{logs}"));
    assert!(dir.starts_with(std::env::temp_dir()), "{}", dir.display());
    assert!(!dir.exists(), "{} was left behind", dir.display());

    // dev refuses to listen beyond loopback: it has no authentication.
    let output = pgway()
        .args(["dev", "--grpc-addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let output = pgway()
        .args(["dev", "--metrics-addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("loopback only"),
        "{output:?}"
    );
}

/// The served binary: readiness follows the database, liveness doesn't, SIGTERM exits 0.
#[tokio::test]
async fn health_and_sigterm() {
    let pg = postgres().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let child = pgway()
        .env("PGWAY_DATABASE_URL", pg.url("postgres"))
        .env("PGWAY_AUTH", "none")
        .env("PGWAY_GRPC_ADDR", &addr)
        .env("PGWAY_SHUTDOWN_GRACE", "5s")
        .env("PGWAY_METRICS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let channel = wait_ready(&addr).await;
    let mut health = HealthClient::new(channel.clone());
    let live = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.status, 1, "liveness SERVING");
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let mut client = DatabaseClient::new(channel);
    run(&mut client, "SELECT 1", vec![]).await;
    // `pgway probe` without -addr, in the same environment (as an image's HEALTHCHECK runs),
    // finds the gateway; a gateway listening on every address is probed on loopback.
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let probe = tokio::task::spawn_blocking(move || {
        pgway()
            .env("PGWAY_GRPC_ADDR", format!("0.0.0.0:{port}"))
            .args(["probe", "-service=pgway.v1.Database", "-rpc-timeout=10s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(probe.status.code(), Some(0), "{probe:?}");
    signal(&child, "TERM");
    let status = wait_exit(child).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A SIGTERM sent the moment the gateway says it listens (as Kubernetes or Podman may, when a
/// pod is deleted while it starts) stops it cleanly: the handlers exist before any port opens.
#[tokio::test]
async fn a_signal_right_after_start_up_is_not_lost() {
    use std::io::BufRead as _;
    let pg = postgres().await;
    for round in 0..5 {
        let mut child = pgway()
            .env("PGWAY_DATABASE_URL", pg.url("postgres"))
            .env("PGWAY_AUTH", "none")
            .env("PGWAY_GRPC_ADDR", "127.0.0.1:0")
            .env("PGWAY_METRICS_ADDR", "127.0.0.1:0")
            .env("PGWAY_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (listening, heard) = std::sync::mpsc::channel();
        // Reads to the end, so the gateway never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                if line.contains(r#":"listening""#) {
                    let _ = listening.send(());
                }
            }
        });
        tokio::task::spawn_blocking(move || heard.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("the gateway says it listens");
        signal(&child, if round % 2 == 0 { "TERM" } else { "INT" });
        let status = wait_exit(child).await;
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
        reader.join().unwrap();
    }
}

#[tokio::test]
async fn readiness_waits_for_the_database() {
    let pg = postgres().await;
    // Nothing listens on this port: alive, but not ready.
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let gw = Gateway::serving(&url, "none".into(), &["--health-interval", "100ms"]).await;
    let mut health = HealthClient::new(gw.channel().await);
    let live = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.status, 1);
    for _ in 0..5 {
        let ready = health
            .check(HealthCheckRequest {
                service: "pgway.v1.Database".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ready.status, 2, "NOT_SERVING without a database");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gw);
    let gw = Gateway::serving(
        &pg.url("postgres"),
        "postgres".into(),
        &["--health-interval", "100ms"],
    )
    .await;
    let mut health = HealthClient::new(gw.channel().await);
    eventually(
        Duration::from_secs(5),
        "ready once the database answers",
        || {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: "pgway.v1.Database".into(),
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().status == 1)
            }
        },
    )
    .await;
    let _ = &mut health;
}

/// Streams with no end of their own (a health Watch, a reflection stream that grpcurl or a
/// watching load balancer keeps open) don't hold the shutdown for its whole grace period:
/// the watcher hears NOT_SERVING, then both end with UNAVAILABLE and the server stops.
#[tokio::test]
async fn watches_and_reflection_streams_end_at_shutdown() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };

    let gw = Gateway::with_settings(&["--shutdown-grace", "120s"]).await;
    let channel = gw.channel().await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "pgway.v1.Database".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Ready once the first health check of the database passed.
    tokio::time::timeout(Duration::from_secs(10), async {
        while watch.message().await.unwrap().map(|r| r.status) != Some(1) {}
    })
    .await
    .expect("SERVING");

    let (ask, asks) = tokio::sync::mpsc::channel(1);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    ask.send(list).await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(asks))
        .await
        .unwrap()
        .into_inner();
    assert!(reflection.message().await.unwrap().is_some());

    // `ask` stays open: the caller keeps its reflection stream, as tools do.
    let stopped = tokio::spawn(gw.shutdown());
    // Well inside the two-minute grace.
    tokio::time::timeout(Duration::from_secs(30), async {
        assert_eq!(watch.message().await.unwrap().map(|r| r.status), Some(2));
        assert_eq!(
            watch.message().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            reflection.message().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
        stopped.await.unwrap().unwrap();
    })
    .await
    .expect("the streams end and the server stops without waiting out the grace period");
    drop(ask);
}

/// psql from the PostgreSQL binaries the tests use (PGWAY_TEST_PG_BIN), or PostgreSQL 15's.
fn psql_binary() -> std::path::PathBuf {
    let dir = pgway::devdb::find_binaries(None).unwrap();
    let psql = dir.join("psql");
    if psql.exists() {
        psql
    } else {
        "/usr/lib/postgresql/15/bin/psql".into()
    }
}
