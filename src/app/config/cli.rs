//! The command line: every subcommand and flag, with its environment variable and default
//! (clap's derive structs).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::values::{parse_bytes, parse_duration};

/// Where `pgway serve` listens for gRPC without `PGWAY_GRPC_ADDR` (and where `pgway probe`
/// looks without `-addr`).
pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";

/// pgway: a gRPC gateway for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgway", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings for `pgway` without a subcommand (the same as `pgway serve`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start-up: the size of the largest variant doesn't matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Check a gateway's health the way grpc_health_probe does, with its flags and exit codes
    /// (0 serving, 1 bad arguments, 2 connection failure, 3 RPC failure, 4 not serving):
    /// `pgway probe -addr=127.0.0.1:50051 -service=pgway.v1.Database`; `pgway probe -h` lists
    /// the flags.
    // Its own parser reads the flags the Go way and answers -h, -help and --help itself.
    #[command(disable_help_flag = true)]
    Probe(ProbeCommand),
    /// Print the pool's current state from a running gateway's metrics endpoint.
    Stats(StatsArgs),
    /// Start a private, throwaway PostgreSQL from the installed server binaries and serve the
    /// gateway against it on loopback. Ctrl-C stops both and removes the data directory.
    ///
    /// The gateway takes its other settings from the PGWAY_* environment variables, as `pgway
    /// serve` does (PGWAY_POOL_MAX, PGWAY_LOG_FORMAT, ...), except PGWAY_DATABASE_URL and
    /// PGWAY_AUTH: it serves its own database, without authentication. Its addresses must be on
    /// loopback and free: they are checked before initdb runs.
    ///
    /// The cluster lives in a new directory under $TMPDIR (or /tmp), logged at start as `dir`:
    /// data in `<dir>/data`, the server's log in `<dir>/postgres.log`, the server run as the
    /// postgres OS user when pgway dev runs as root. To see what a database restart does to the
    /// gateway, paste the pg_ctl command logged at start, such as `su - postgres -c
    /// '/usr/lib/postgresql/15/bin/pg_ctl restart -D <dir>/data -l <dir>/postgres.log -m fast'`
    /// (without `su` when not root).
    Dev(DevArgs),
}

/// `pgway probe`'s arguments, parsed the way grpc_health_probe parses them.
#[derive(Debug, Clone, Args)]
pub struct ProbeCommand {
    /// -addr=host:port [-service=name] [-connect-timeout=1s] [-rpc-timeout=1s] [-tls ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

/// `pgway stats`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The gateway's metrics address (its PGWAY_METRICS_ADDR, reachable from here).
    #[arg(long, env = "PGWAY_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Everything `pgway serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL connection URL or key=value string. Falls back to DATABASE_URL.
    #[arg(long, env = "PGWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The ways the database may ask the gateway's connections (both doors') to log in, in
    /// libpq's `require_auth` words (scram-sha-256, md5, password, none; or !method for all
    /// but it). A server asking for anything else is refused before any password is sent.
    #[arg(long, env = "PGWAY_DATABASE_REQUIRE_AUTH", default_value = crate::core::dbtls::require_auth::RequireAuth::DEFAULT)]
    pub database_require_auth: String,

    /// Address the gRPC server listens on.
    #[arg(long, env = "PGWAY_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,

    /// Connections kept open and ready even when idle, so the first burst finds them [default:
    /// 5, or PGWAY_POOL_MAX when that is lower].
    #[arg(long, env = "PGWAY_POOL_MIN")]
    pub pool_min: Option<u32>,

    /// Most connections the pool opens [default: 4 per CPU core, clamped to 5..=20].
    #[arg(long, env = "PGWAY_POOL_MAX")]
    pub pool_max: Option<u32>,

    /// How long a call may wait for a free connection before it fails with UNAVAILABLE
    /// (reason POOL_TIMEOUT).
    #[arg(long, env = "PGWAY_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub acquire_timeout: Duration,

    /// Most calls that may wait for a free connection; past that, calls are refused at once
    /// with UNAVAILABLE (reason OVERLOADED) and a retry delay.
    #[arg(long, env = "PGWAY_MAX_WAITING", default_value_t = 512)]
    pub max_waiting: usize,

    /// Most connections opened at the same time (no reconnect storm after a restart).
    #[arg(long, env = "PGWAY_MAX_CONCURRENT_CONNECTS", default_value_t = 4)]
    pub max_concurrent_connects: usize,

    /// Address of the Prometheus metrics endpoint (`/metrics`); empty turns it off.
    #[arg(long, env = "PGWAY_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: String,

    /// Address the PostgreSQL-protocol door listens on; empty turns it off.
    #[arg(long, env = "PGWAY_PG_ADDR", default_value = "0.0.0.0:6432")]
    pub pg_addr: String,

    /// More users for the PostgreSQL door, in PgBouncer's userlist.txt format, with SCRAM
    /// verifiers as stored in pg_authid (never passwords). Read at each login.
    #[arg(long, env = "PGWAY_PG_AUTH_FILE")]
    pub pg_auth_file: Option<PathBuf>,

    /// A query the URL's user runs at login to find a user's SCRAM verifier, given the user
    /// name as $1 (PgBouncer's auth_query); schema-qualify everything it names.
    #[arg(long, env = "PGWAY_PG_AUTH_QUERY")]
    pub pg_auth_query: Option<String>,

    /// Named prepared statements kept per server connection of the PostgreSQL door.
    #[arg(long, env = "PGWAY_PG_PREPARED_STATEMENTS", default_value_t = 200)]
    pub pg_prepared_statements: usize,

    /// Keep clients' unnamed statements prepared on each server connection, as named ones
    /// (PostgreSQL then parses and analyses a repeated text once per connection, not at
    /// every query): `autocommit` those run outside transaction blocks, `always` all of them
    /// (inside a block, DDL outside pgway then shows as 0A000). Off by default: PostgreSQL
    /// may choose generic plans for kept statements after five executions.
    #[arg(long, env = "PGWAY_PG_KEEP_UNNAMED", default_value = "off", value_parser = ["off", "autocommit", "always"])]
    pub pg_keep_unnamed: String,

    /// Most clients of the PostgreSQL door pinned to a server connection at once [default:
    /// PGWAY_POOL_MAX less a quarter of it (at least 2), so unpinned clients keep a share].
    #[arg(long, env = "PGWAY_PG_MAX_PINNED")]
    pub pg_max_pinned: Option<usize>,

    /// What statements that keep state in the server session do (temp tables, LISTEN,
    /// session advisory locks, WITH HOLD cursors, PREPARE, SET ROLE): pin the client to its
    /// server connection, or fail with 0A000.
    #[arg(long, env = "PGWAY_PG_SESSION_STATE", default_value = "pin", value_parser = ["pin", "error"])]
    pub pg_session_state: String,

    /// Most logged-in clients of the PostgreSQL door (clients still logging in don't count:
    /// see PGWAY_PG_MAX_LOGINS).
    #[arg(long, env = "PGWAY_PG_MAX_CLIENTS", default_value_t = 4000)]
    pub pg_max_clients: usize,

    /// Refuse PostgreSQL-door clients that don't use TLS (like pg_hba.conf's `hostssl`).
    /// Always on when PGWAY_TLS_CLIENT_CA is set, so no client gets in without a certificate.
    #[arg(long, env = "PGWAY_PG_REQUIRE_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub pg_require_tls: bool,

    /// How long a client of the PostgreSQL door has to log in (PostgreSQL's
    /// `authentication_timeout`).
    #[arg(long, env = "PGWAY_PG_LOGIN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub pg_login_timeout: Duration,

    /// Most clients of the PostgreSQL door logging in at once; when reached, the one that has
    /// been at it longest is dropped to make room.
    #[arg(long, env = "PGWAY_PG_MAX_LOGINS", default_value_t = 1000)]
    pub pg_max_logins: usize,

    /// Most clients from one address logging in at once; more are refused (53300).
    #[arg(long, env = "PGWAY_PG_MAX_LOGINS_PER_ADDRESS", default_value_t = 100)]
    pub pg_max_logins_per_address: usize,

    /// Most distinct statement texts the PostgreSQL door remembers for all clients (least
    /// recently used forgotten first; a forgotten text is only prepared again).
    #[arg(long, env = "PGWAY_PG_STATEMENT_CACHE", default_value_t = 10_000)]
    pub pg_statement_cache: usize,

    /// Most bytes of statement text the PostgreSQL door remembers for all clients.
    #[arg(long, env = "PGWAY_PG_STATEMENT_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub pg_statement_cache_bytes: usize,

    /// Most named prepared statements one client of the PostgreSQL door keeps; beyond it
    /// the least recently used is forgotten (a later Bind of it gets 26000).
    #[arg(long, env = "PGWAY_PG_MAX_CLIENT_STATEMENTS", default_value_t = 10_000)]
    pub pg_max_client_statements: usize,

    /// Most bytes of statement text one client of the PostgreSQL door keeps prepared.
    #[arg(long, env = "PGWAY_PG_MAX_CLIENT_STATEMENT_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub pg_max_client_statement_bytes: usize,

    /// How long a client of the PostgreSQL door may send nothing between transactions
    /// before it is ended with 57P05, like PostgreSQL's `idle_session_timeout` (0: never).
    #[arg(long, env = "PGWAY_PG_CLIENT_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub pg_client_idle_timeout: Duration,

    /// How long a client of the PostgreSQL door may keep a server connection for one
    /// transaction before it is ended with 25P04, like PostgreSQL 17's
    /// `transaction_timeout` (0: never).
    #[arg(long, env = "PGWAY_PG_TRANSACTION_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub pg_transaction_timeout: Duration,

    /// How long a client of the PostgreSQL door may sit idle inside a transaction (or in
    /// COPY FROM STDIN, or in a pipeline with no Sync) before it is ended with 25P03, like
    /// PostgreSQL's `idle_in_transaction_session_timeout` (0: never, as PostgreSQL's and
    /// PgBouncer's default).
    #[arg(long, env = "PGWAY_PG_IDLE_IN_TRANSACTION_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub pg_idle_in_transaction_timeout: Duration,

    /// How long a client of the PostgreSQL door holding a server connection may leave
    /// replies unread before it is ended (0: never). A client that stops reading holds its
    /// connection, and the backend's locks, for as long as it sleeps.
    #[arg(long, env = "PGWAY_PG_CLIENT_WRITE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub pg_client_write_timeout: Duration,

    /// The databases clients of the PostgreSQL door may name, comma-separated [default: any
    /// the server lets the client's user connect to].
    #[arg(long, env = "PGWAY_PG_DATABASES", value_delimiter = ',')]
    pub pg_databases: Vec<String>,

    /// Users who may open the PostgreSQL door's admin console (database `pgway` or
    /// `pgbouncer`) and run every command, comma-separated; they log in like any client.
    #[arg(long, env = "PGWAY_PG_ADMIN_USERS", value_delimiter = ',')]
    pub pg_admin_users: Vec<String>,

    /// Users who may open the admin console for its read-only `SHOW` commands.
    #[arg(long, env = "PGWAY_PG_STATS_USERS", value_delimiter = ',')]
    pub pg_stats_users: Vec<String>,

    /// How long opening one database connection may take.
    #[arg(long, env = "PGWAY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// The longest any call may run; a caller's shorter `grpc-timeout` wins.
    #[arg(long, env = "PGWAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Most rows a unary Query returns (and each statement of a Transaction); a request's
    /// `max_rows` may lower it, never raise it. QueryStream has no row cap unless the request
    /// sets `max_rows`.
    #[arg(long, env = "PGWAY_MAX_ROWS", default_value_t = 10_000)]
    pub max_rows: u32,

    /// Most bytes in one unary reply. gRPC clients refuse messages over 4 MiB by default, so
    /// the default leaves room below that.
    #[arg(long, env = "PGWAY_MAX_RESPONSE_BYTES", default_value = "3MiB", value_parser = parse_bytes)]
    pub max_response_bytes: usize,

    /// Rows per QueryStream message (a message also ends at 256 KiB).
    #[arg(long, env = "PGWAY_STREAM_BATCH_ROWS", default_value_t = 500)]
    pub stream_batch_rows: u32,

    /// Prepared statements cached per connection (least recently used are closed first).
    #[arg(long, env = "PGWAY_STATEMENT_CACHE_SIZE", default_value = "256")]
    pub statement_cache_size: NonZeroUsize,

    /// A connection is closed after this long (each gets up to 10% less, so they don't all
    /// reconnect at once).
    #[arg(long, env = "PGWAY_CONN_MAX_LIFETIME", default_value = "30m", value_parser = parse_duration)]
    pub conn_max_lifetime: Duration,

    /// An idle connection above PGWAY_POOL_MIN is closed after this long.
    #[arg(long, env = "PGWAY_CONN_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub conn_idle_timeout: Duration,

    /// How many times Transaction runs a transaction that hit a serialization failure or a
    /// deadlock before answering ABORTED.
    #[arg(long, env = "PGWAY_TX_MAX_ATTEMPTS", default_value_t = 5)]
    pub tx_max_attempts: u32,

    /// An interactive transaction with no message for this long is rolled back.
    #[arg(long, env = "PGWAY_TX_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tx_idle_timeout: Duration,

    /// An interactive transaction open for longer than this is rolled back.
    #[arg(long, env = "PGWAY_TX_MAX_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub tx_max_duration: Duration,

    /// How often the readiness monitor checks the database.
    #[arg(long, env = "PGWAY_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// On SIGTERM/SIGINT, how long calls in flight may take to finish.
    #[arg(long, env = "PGWAY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format [default: json when stdout is not a terminal, text otherwise].
    #[arg(long, env = "PGWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// `none` runs the gateway open, without credentials. Without it, the gateway refuses to
    /// start unless tokens or JWT keys are configured.
    #[arg(long, env = "PGWAY_AUTH")]
    pub auth: Option<AuthMode>,

    /// File of static bearer tokens, one per line (`#` comments); re-read when it changes.
    /// Token callers run as the gateway's own database role.
    #[arg(long, env = "PGWAY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// File holding the HS256 secret that signs callers' JWTs (Supabase's JWT secret).
    #[arg(long, env = "PGWAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// JWKS file with the RS256 / ES256 public keys that sign callers' JWTs.
    #[arg(long, env = "PGWAY_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// When set, a JWT's `aud` must include this.
    #[arg(long, env = "PGWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, a JWT's `iss` must be this.
    #[arg(long, env = "PGWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The JWT claim that names the database role the caller runs as.
    #[arg(long, env = "PGWAY_JWT_ROLE_CLAIM", default_value = "role")]
    pub jwt_role_claim: String,

    /// Roles a JWT may name (comma-separated), such as `anon,authenticated`.
    #[arg(long, env = "PGWAY_JWT_ALLOWED_ROLES", value_delimiter = ',')]
    pub jwt_allowed_roles: Vec<String>,

    /// Clock skew allowed when checking a JWT's `exp` and `nbf`.
    #[arg(long, env = "PGWAY_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// Whether the health service answers without credentials (so probes keep working).
    #[arg(long, env = "PGWAY_AUTH_PUBLIC_HEALTH", default_value_t = true, action = clap::ArgAction::Set)]
    pub auth_public_health: bool,

    /// Whether gRPC reflection answers without credentials.
    #[arg(long, env = "PGWAY_AUTH_PUBLIC_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub auth_public_reflection: bool,

    /// How often the token, secret and JWKS files are checked for changes (SIGHUP re-reads
    /// them at once).
    #[arg(long, env = "PGWAY_AUTH_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub auth_reload_interval: Duration,

    /// Largest request message the gateway accepts.
    #[arg(long, env = "PGWAY_MAX_REQUEST_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub max_request_bytes: usize,

    /// Longest SQL text of one statement.
    #[arg(long, env = "PGWAY_MAX_SQL_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_sql_bytes: usize,

    /// Most parameters of one statement (PostgreSQL's own limit is 65535).
    #[arg(long, env = "PGWAY_MAX_PARAMS", default_value_t = 10_000)]
    pub max_params: usize,

    /// Most statements in one Transaction request.
    #[arg(long, env = "PGWAY_MAX_STATEMENTS", default_value_t = 1_000)]
    pub max_statements: usize,

    /// The server-side `statement_timeout` of pgway's connections: no statement runs longer,
    /// even one in an interactive transaction [default: PGWAY_REQUEST_TIMEOUT]. A caller's
    /// deadline can shorten a call, never lengthen it.
    #[arg(long, env = "PGWAY_STATEMENT_TIMEOUT", value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,

    /// Most calls one caller (token or JWT subject) may have in flight; 0 = no cap.
    #[arg(long, env = "PGWAY_MAX_CALLS_PER_CALLER", default_value_t = 128)]
    pub max_calls_per_caller: usize,

    /// Most interactive transactions one caller may have open [default: half of
    /// PGWAY_POOL_MAX, at least 1]; 0 = no cap.
    #[arg(long, env = "PGWAY_MAX_TRANSACTIONS_PER_CALLER")]
    pub max_transactions_per_caller: Option<usize>,

    /// Certificate chain (PEM) the gRPC server presents; with PGWAY_TLS_KEY, turns TLS on.
    #[arg(long, env = "PGWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, RSA or SEC1) of PGWAY_TLS_CERT.
    #[arg(long, env = "PGWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM bundle): callers must present a certificate issued by one of them
    /// (mutual TLS). Needs PGWAY_TLS_CERT and PGWAY_TLS_KEY.
    #[arg(long, env = "PGWAY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes and reloaded (SIGHUP reloads at once);
    /// 0s checks only on SIGHUP.
    #[arg(long, env = "PGWAY_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

/// `PGWAY_AUTH`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No credentials needed: anyone who reaches the port may call.
    None,
}

/// Settings of `pgway dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Address the gRPC server listens on (loopback only).
    #[arg(long, env = "PGWAY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the Prometheus metrics endpoint; empty turns it off.
    #[arg(long, env = "PGWAY_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: String,

    /// Address of the PostgreSQL door (loopback only); empty turns it off.
    #[arg(long, env = "PGWAY_PG_ADDR", default_value = "127.0.0.1:6432")]
    pub pg_addr: String,

    /// Directory with the PostgreSQL server binaries (initdb, postgres, pg_ctl).
    #[arg(long, env = "PGWAY_PG_BIN")]
    pub pg_bin: Option<PathBuf>,

    /// Log format [default: json when stdout is not a terminal, text otherwise].
    #[arg(long, env = "PGWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}
