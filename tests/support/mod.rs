//! The test harness: one throwaway PostgreSQL per test binary (started on first use), a fresh
//! database per test, and a gateway in-process on a free port with a ready client.
#![allow(dead_code)]

pub mod callers;
pub mod clients;
pub mod door;
pub mod proxy;
pub mod raw;
pub mod types;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use pgway::app::config::{Cli, Command};
use pgway::devdb::TempPostgres;
use pgway::proto::database_client::DatabaseClient;
use pgway::proto::{self, value::Kind};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Plain HTTP/2 without tonic's `Channel` (see [`Gateway::client_without_local_deadline`]).
pub type PlainHttp2 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

/// An HTTP/2 client with no gRPC layers of its own, for requests built by hand too.
pub fn plain_http2() -> PlainHttp2 {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

static POSTGRES: OnceLock<TempPostgres> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The binary's PostgreSQL server, started on first use.
pub async fn postgres() -> &'static TempPostgres {
    tokio::task::spawn_blocking(|| {
        POSTGRES.get_or_init(|| TempPostgres::start(None).unwrap_or_else(|e| panic!("{e}")))
    })
    .await
    .expect("starting PostgreSQL panicked")
}

/// A direct connection (no gateway) to `database` as the superuser.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A gateway serving a fresh database of its own.
pub struct Gateway {
    pub addr: std::net::SocketAddr,
    /// The PostgreSQL door's address, when the settings turn it on (`--pg-addr 127.0.0.1:0`).
    pub pg_addr: Option<std::net::SocketAddr>,
    pub metrics_addr: std::net::SocketAddr,
    pub database: String,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), pgway::app::ServeError>>>,
}

impl Gateway {
    /// A gateway with the default settings.
    pub async fn start() -> Gateway {
        Gateway::with_settings(&[]).await
    }

    /// A gateway with extra `pgway serve` flags, such as `["--pool-max", "3"]`.
    pub async fn with_settings(settings: &[&str]) -> Gateway {
        let pg = postgres().await;
        let database = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&pg.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("CREATE DATABASE");
        let url = pg.url(&database);
        Gateway::serving(&url, database, settings).await
    }

    /// A gateway in front of any database URL (which may be wrong on purpose).
    pub async fn serving(url: &str, database: String, settings: &[&str]) -> Gateway {
        let mut argv = vec![
            "pgway",
            "serve",
            "--database-url",
            url,
            "--grpc-addr",
            "127.0.0.1:0",
        ];
        // The PostgreSQL door only where a test asks for it.
        if !settings.iter().any(|s| s.starts_with("--pg-addr")) {
            argv.extend_from_slice(&["--pg-addr", ""]);
        }
        // Tests that don't set credentials up run the gateway open.
        if !settings
            .iter()
            .any(|s| s.starts_with("--auth") || s.starts_with("--jwt"))
        {
            argv.extend_from_slice(&["--auth", "none"]);
        }
        argv.extend_from_slice(settings);
        let cli = Cli::try_parse_from(argv).expect("settings parse");
        let Some(Command::Serve(args)) = cli.command else {
            panic!("not a serve command")
        };
        let config = args.validate().expect("settings validate");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics_addr = metrics.local_addr().expect("metrics addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let pg_listener = match &config.pg {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind pg")),
            None => None,
        };
        let pg_addr = pg_listener
            .as_ref()
            .map(|l| l.local_addr().expect("pg addr"));
        let server = tokio::spawn(pgway::app::serve(
            config,
            listener,
            pg_listener,
            Some(metrics),
            async move {
                let _ = stopped.await;
            },
        ));
        Gateway {
            addr,
            pg_addr,
            metrics_addr,
            database,
            url: url.to_owned(),
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// A gRPC client of the Database service.
    pub async fn client(&self) -> DatabaseClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the gateway");
        DatabaseClient::new(channel)
    }

    /// A client whose transport sends a call's `grpc-timeout` without enforcing it. tonic's
    /// `Channel` starts a timer of its own from that header and reports CANCELLED ("Timeout
    /// expired") locally, racing the gateway's DEADLINE_EXCEEDED; tests of what the gateway
    /// answers past a deadline use this client so only the gateway decides.
    pub fn client_without_local_deadline(&self) -> DatabaseClient<PlainHttp2> {
        let origin = format!("http://{}", self.addr).parse().expect("uri");
        DatabaseClient::with_origin(plain_http2(), origin)
    }

    /// A gRPC channel to the gateway (for health and other services).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the gateway")
    }

    /// A direct connection to the gateway's database, bypassing the gateway.
    pub async fn direct(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// The Prometheus text of the gateway's `/metrics`.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// The value of one sample in `/metrics`, such as
    /// `pgway_pool_connections{door="grpc",state="in_use"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.scrape().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|v| v.trim().parse().expect("a number"))
            .unwrap_or(0.0)
    }

    /// The sum of every series of `name` in `/metrics`, whatever their labels.
    pub async fn metric_total(&self, name: &str) -> f64 {
        let text = self.scrape().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix(name))
            .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
            .filter_map(|rest| rest.rsplit(' ').next())
            .map(|v| v.trim().parse::<f64>().expect("a number"))
            .sum()
    }

    /// Stops the gateway as SIGTERM would and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<(), pgway::app::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The Prometheus text of the `/metrics` served at `addr` (read as `pgway stats` reads it).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    pgway::admin::stats::fetch(addr)
        .await
        .unwrap_or_else(|error| panic!("GET /metrics: {error}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A channel to a gateway process that is starting at `addr`, once it accepts connections.
pub async fn connect_when_up(addr: &str) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri");
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} did not come up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal (`TERM`, `INT`) to a child process.
pub fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -s {name} failed");
}

/// How many statements whose text is LIKE `pattern` are running on the server now (the
/// asking connection excluded).
pub async fn active_statements(direct: &tokio_postgres::Client, pattern: &str) -> i64 {
    count_activity(direct, pattern, "").await
}

/// How many statements whose text is LIKE `pattern` wait at the gate of [`WAIT_AT_GATE`] now.
/// Stricter than [`active_statements`]: a statement being parsed (the extended protocol's
/// Parse, before it runs) shows as active too, and a connection cut then loses a statement
/// that was never sent to run.
pub async fn waiting_at_gate(direct: &tokio_postgres::Client, pattern: &str) -> i64 {
    count_activity(
        direct,
        pattern,
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )
    .await
}

/// Active statements LIKE `pattern` (the asking connection excluded) that also meet `also`,
/// SQL conditions starting with AND, or nothing.
async fn count_activity(direct: &tokio_postgres::Client, pattern: &str, also: &str) -> i64 {
    direct
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE $1 AND state = 'active' {also} AND pid <> pg_backend_pid()"
            ),
            &[&pattern],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// SQL that waits, as a running statement, while a gate is closed in the same database: a test
/// holds a call in flight for exactly as long as it needs, with no sleep to outlast.
pub const WAIT_AT_GATE: &str = "pg_advisory_xact_lock_shared(7)";

/// Closes the gate of [`WAIT_AT_GATE`] for as long as `holder`'s session holds it.
pub async fn close_gate(holder: &tokio_postgres::Client) {
    holder
        .execute("SELECT pg_advisory_lock(7)", &[])
        .await
        .expect("close the gate");
}

/// Opens the gate of [`WAIT_AT_GATE`]: the statements waiting at it go on.
pub async fn open_gate(holder: &tokio_postgres::Client) {
    holder
        .execute("SELECT pg_advisory_unlock(7)", &[])
        .await
        .expect("open the gate");
}

/// Polls until no statement matching `pattern` runs on the server, failing the test with
/// `what` after `limit`.
pub async fn statements_end(
    direct: &tokio_postgres::Client,
    pattern: &str,
    limit: Duration,
    what: &str,
) {
    eventually(limit, what, || async {
        active_statements(direct, pattern).await == 0
    })
    .await;
}

/// Polls `check` until it returns true, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Small constructors so tests read like the data they send.

pub fn null() -> proto::Value {
    proto::Value {
        kind: Some(Kind::NullValue(0)),
    }
}
pub fn int(v: i64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::IntValue(v)),
    }
}
pub fn double(v: f64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::DoubleValue(v)),
    }
}
pub fn text(v: &str) -> proto::Value {
    proto::Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}
pub fn boolean(v: bool) -> proto::Value {
    proto::Value {
        kind: Some(Kind::BoolValue(v)),
    }
}
pub fn bytes(v: &[u8]) -> proto::Value {
    proto::Value {
        kind: Some(Kind::BytesValue(v.to_vec())),
    }
}
pub fn array(values: Vec<proto::Value>) -> proto::Value {
    proto::Value {
        kind: Some(Kind::ArrayValue(proto::ArrayValue { values })),
    }
}

/// A QueryRequest for `sql` with `params`.
pub fn query(sql: &str, params: Vec<proto::Value>) -> proto::QueryRequest {
    proto::QueryRequest {
        sql: sql.to_owned(),
        params,
        ..Default::default()
    }
}

/// Runs `sql` through the gateway and returns the response, panicking on error.
pub async fn run(
    client: &mut DatabaseClient<Channel>,
    sql: &str,
    params: Vec<proto::Value>,
) -> proto::QueryResponse {
    client
        .query(query(sql, params))
        .await
        .unwrap_or_else(|status| panic!("{sql}: {status:?}"))
        .into_inner()
}

/// The single value of a one-row, one-column response.
pub fn scalar(response: &proto::QueryResponse) -> Option<Kind> {
    assert_eq!(response.rows.len(), 1, "expected one row: {response:?}");
    assert_eq!(
        response.rows[0].values.len(),
        1,
        "expected one column: {response:?}"
    );
    response.rows[0].values[0].kind.clone()
}

/// The google.rpc.ErrorInfo of a status.
pub fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

/// The longest one run of a client program (psql, pgbench, a Python or Node script) may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Fails the test with what a program printed unless it exited 0; `what` says what failed.
pub fn assert_passed(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program` with `args` and extra environment `env` from the crate root, within
/// [`TOOL_TIMEOUT`]. Fails the test, saying how to install the program (`hint`), when it is
/// missing.
pub async fn run_program(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    hint: &str,
) -> std::process::Output {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(TOOL_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{program} {args:?}` did not finish within {TOOL_TIMEOUT:?}"));
    match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed: {hint}")
        }
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}
