//! Settings: every one is a command-line flag with an environment variable, typed, with its
//! default here and nowhere else, and validated before anything starts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::auth::jwt::JwtRules;
use crate::core::auth::limits::CallerQuota;
use crate::core::auth::{AuthConfig, Authenticator};
use crate::core::dbtls::{self, DatabaseTls, SslMode};
use crate::core::pool::PoolConfig;
use crate::grpc::{CallBounds, CallSettings, TxConfig};

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
    /// `pgway probe -addr=127.0.0.1:50051 -service=pgway.v1.Database`.
    #[command(disable_help_flag = true)]
    Probe(ProbeCommand),
    /// Print the pool's current state from a running gateway's metrics endpoint.
    Stats(StatsArgs),
    /// Start a private, throwaway PostgreSQL from the installed server binaries and serve the
    /// gateway against it on loopback. Ctrl-C stops both and removes the data directory.
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

    /// Most clients of the PostgreSQL door pinned to a server connection at once
    /// [default: half of PGWAY_POOL_MAX].
    #[arg(long, env = "PGWAY_PG_MAX_PINNED")]
    pub pg_max_pinned: Option<usize>,

    /// What statements that keep state in the server session do (temp tables, LISTEN,
    /// session advisory locks, WITH HOLD cursors, PREPARE, SET ROLE): pin the client to its
    /// server connection, or fail with 0A000.
    #[arg(long, env = "PGWAY_PG_SESSION_STATE", default_value = "pin", value_parser = ["pin", "error"])]
    pub pg_session_state: String,

    /// Most client connections of the PostgreSQL door.
    #[arg(long, env = "PGWAY_PG_MAX_CLIENTS", default_value_t = 4000)]
    pub pg_max_clients: usize,

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
}

/// The validated settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: tokio_postgres::Config,
    /// How connections to `database` use TLS: `sslmode` and friends of the connection string.
    pub database_tls: DatabaseTls,
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served; `None` when turned off.
    pub metrics_addr: Option<SocketAddr>,
    pub pool: PoolConfig,
    pub limits: CallBounds,
    pub request_timeout: Duration,
    /// The server-side `statement_timeout` of every connection.
    pub statement_timeout: Duration,
    pub tx: TxConfig,
    pub health_interval: Duration,
    pub shutdown_grace: Duration,
    pub auth: AuthConfig,
    /// The loaded credentials (token and key files), shared by every call.
    pub authenticator: Arc<Authenticator>,
    pub caller_quota: CallerQuota,
    /// TLS on the gRPC side; `None` serves plaintext.
    pub tls: Option<crate::core::tls::TlsConfig>,
    /// The PostgreSQL door; `None` when turned off.
    pub pg: Option<PgConfig>,
}

/// The PostgreSQL door's settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub addr: SocketAddr,
    pub auth_file: Option<PathBuf>,
    pub auth_query: Option<String>,
    pub prepared_statements: NonZeroUsize,
    pub max_pinned: usize,
    pub session_state: crate::pgwire::SessionStateMode,
    pub max_clients: usize,
    pub max_request_bytes: usize,
}

impl Config {
    /// What the gRPC door needs of the settings.
    pub fn grpc_settings(&self) -> crate::grpc::Settings {
        crate::grpc::Settings {
            calls: CallSettings {
                limits: self.limits,
                request_timeout: self.request_timeout,
                statement_timeout: self.statement_timeout,
                tx: self.tx,
                caller_quota: self.caller_quota,
            },
            authenticator: self.authenticator.clone(),
            public_health: self.auth.public_health,
            public_reflection: self.auth.public_reflection,
            tls: self.tls.clone(),
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// A setting that can't be used, named by its environment variable (and its flag).
#[derive(Debug, thiserror::Error)]
#[error("{setting}{}: {reason}", flag_suffix(.setting))]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

/// ` (--flag)` for the setting whose environment variable is `env`, or nothing.
fn flag_suffix(env: &str) -> String {
    find_arg(&built_command(), &|arg| {
        arg.get_env().is_some_and(|e| e == env)
    })
    .map(|(flag, _)| format!(" (--{flag})"))
    .unwrap_or_default()
}

/// The command with its subcommands, built (clap prints an argument only once it is).
fn built_command() -> clap::Command {
    use clap::CommandFactory;
    let mut command = Cli::command();
    command.build();
    command
}

/// The long flag and environment variable of the first argument of `command` or of its
/// subcommands that `wanted` accepts.
fn find_arg(
    command: &clap::Command,
    wanted: &dyn Fn(&clap::Arg) -> bool,
) -> Option<(String, Option<String>)> {
    command
        .get_arguments()
        .find(|arg| wanted(arg))
        .and_then(|arg| {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            arg.get_long().map(|flag| (flag.to_owned(), env))
        })
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, wanted))
        })
}

/// Parses the command line and the environment. A value the parser refuses is reported by
/// its environment variable as well as its flag (most settings come from the environment,
/// where the user never typed the flag), and the process exits with code 2; any other
/// parse outcome (`--help`, an unknown flag) is clap's own.
pub fn parse() -> Cli {
    use clap::Parser as _;
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => match invalid_value(&error) {
            Some(message) => {
                eprintln!("pgway: invalid setting {message}");
                std::process::exit(2)
            }
            None => error.exit(),
        },
    }
}

/// `PGWAY_X (--x): invalid value 'v': why` for an error about a value, else `None`.
fn invalid_value(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    // clap names the argument as it prints it: `--pool-max <POOL_MAX>`.
    let shown = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let (flag, env) = find_arg(&built_command(), &|arg| arg.to_string() == shown)?;
    let why = match (error.kind(), std::error::Error::source(error)) {
        (ErrorKind::ValueValidation, Some(source)) => source.to_string(),
        _ => match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
            _ => "not a valid value".to_owned(),
        },
    };
    let named = match env {
        Some(env) => format!("{env} (--{flag})"),
        None => format!("--{flag}"),
    };
    Some(format!("{named}: invalid value {value:?}: {why}"))
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// Connections kept ready without `PGWAY_POOL_MIN` (fewer only when `PGWAY_POOL_MAX` is
/// lower): the smallest pool the default maximum allows.
pub const DEFAULT_POOL_MIN: u32 = 5;

/// The default pool size: 4 connections per core, clamped to 5..=20. More connections than the
/// server has cores to run them only add contention; fewer than 5 starve bursts.
pub fn default_pool_max() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .clamp(5, 20)
}

impl ServeArgs {
    /// Checks every setting and builds the [`Config`] the gateway runs with.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        // In this order, so that of several bad settings the same one is reported as always.
        let (mut database, database_tls) = self.database()?;
        let pool = self.pool()?;
        self.check_counts_and_durations()?;
        let metrics_addr = self.metrics_addr()?;
        let limits = self.bounds()?;
        let statement_timeout = self.statement_timeout.unwrap_or(self.request_timeout);
        if statement_timeout.is_zero() {
            return Err(invalid("PGWAY_STATEMENT_TIMEOUT", "must be more than zero"));
        }
        // Enforced by the server too, so a statement stops even if the gateway can't cancel
        // it (a network cut); a caller's SET of its own is undone by the reset that follows.
        let mut options = database.get_options().unwrap_or_default().to_owned();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c statement_timeout={}",
            statement_timeout.as_millis()
        ));
        database.options(&options);
        let (auth, authenticator) = self.auth_config()?;
        let tls = self.tls()?;
        let pg = self.pg(&pool)?;

        Ok(Config {
            database,
            database_tls,
            grpc_addr: self.grpc_addr,
            caller_quota: CallerQuota {
                max_calls: self.max_calls_per_caller,
                max_transactions: self
                    .max_transactions_per_caller
                    .unwrap_or((pool.max as usize / 2).max(1)),
            },
            pool,
            metrics_addr,
            limits,
            request_timeout: self.request_timeout,
            statement_timeout,
            tx: TxConfig {
                max_attempts: self.tx_max_attempts,
                idle_timeout: self.tx_idle_timeout,
                max_duration: self.tx_max_duration,
            },
            health_interval: self.health_interval,
            shutdown_grace: self.shutdown_grace,
            auth,
            authenticator,
            tls,
            pg,
        })
    }

    /// The PostgreSQL door's settings, or `None` when `PGWAY_PG_ADDR` is empty.
    fn pg(&self, pool: &PoolConfig) -> Result<Option<PgConfig>, ConfigError> {
        let addr = match self.pg_addr.trim() {
            "" => return Ok(None),
            addr => addr
                .parse()
                .map_err(|e| invalid("PGWAY_PG_ADDR", format!("not an address ({e})")))?,
        };
        let prepared_statements = NonZeroUsize::new(self.pg_prepared_statements)
            .ok_or_else(|| invalid("PGWAY_PG_PREPARED_STATEMENTS", "must be at least 1"))?;
        if let Some(path) = &self.pg_auth_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("PGWAY_PG_AUTH_FILE", format!("{}: {e}", path.display())))?;
            crate::pgwire::userlist::UserList::parse(&text)
                .map_err(|e| invalid("PGWAY_PG_AUTH_FILE", format!("{}: {e}", path.display())))?;
        }
        if self
            .pg_auth_query
            .as_deref()
            .is_some_and(|q| !q.contains("$1"))
        {
            return Err(invalid(
                "PGWAY_PG_AUTH_QUERY",
                "must take the user name as $1",
            ));
        }
        if self.pg_max_clients == 0 {
            return Err(invalid("PGWAY_PG_MAX_CLIENTS", "must be at least 1"));
        }
        Ok(Some(PgConfig {
            addr,
            auth_file: self.pg_auth_file.clone(),
            auth_query: self.pg_auth_query.clone(),
            prepared_statements,
            max_pinned: self.pg_max_pinned.unwrap_or((pool.max as usize / 2).max(1)),
            session_state: if self.pg_session_state == "error" {
                crate::pgwire::SessionStateMode::Error
            } else {
                crate::pgwire::SessionStateMode::Pin
            },
            max_clients: self.pg_max_clients,
            max_request_bytes: self.max_request_bytes,
        }))
    }

    /// The database's connection settings and TLS, from the URL (or `DATABASE_URL`), with
    /// pgway's timeouts and keepalives.
    fn database(&self) -> Result<(tokio_postgres::Config, DatabaseTls), ConfigError> {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => std::env::var("DATABASE_URL").map_err(|_| {
                invalid(
                    "PGWAY_DATABASE_URL",
                    "not set (nor DATABASE_URL): say which database to serve",
                )
            })?,
        };
        // Neither tokio-postgres' parse error nor ours echoes the URL, so no password can leak
        // here. The CA and client certificate files are read now, once.
        let (mut database, database_tls) =
            dbtls::parse(&url).map_err(|e| invalid("PGWAY_DATABASE_URL", e.to_string()))?;
        if database.get_hosts().is_empty() {
            return Err(invalid("PGWAY_DATABASE_URL", "names no host"));
        }
        // PostgreSQL offers no TLS on its Unix socket: a mode that demands it could never
        // connect (the PostgreSQL door would skip it, as libpq does, and the gRPC door fail).
        let unix = database
            .get_hosts()
            .iter()
            .any(|host| matches!(host, tokio_postgres::config::Host::Unix(_)));
        if unix && !matches!(database_tls.mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(invalid(
                "PGWAY_DATABASE_URL",
                format!(
                    "sslmode={} with a Unix-socket host: PostgreSQL has no TLS there; use \
                     sslmode=disable or prefer",
                    database_tls.mode().as_str()
                ),
            ));
        }
        if database.get_application_name().is_none() {
            database.application_name("pgway");
        }
        // Without these a dead host hangs a connection for hours (keepalives idle 2 h by default).
        database
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        Ok((database, database_tls))
    }

    /// The pool's size and timings.
    fn pool(&self) -> Result<PoolConfig, ConfigError> {
        let max = self.pool_max.unwrap_or_else(default_pool_max);
        if max == 0 {
            return Err(invalid("PGWAY_POOL_MAX", "must be at least 1"));
        }
        let min = match self.pool_min {
            Some(min) if min > max => {
                return Err(invalid(
                    "PGWAY_POOL_MIN",
                    format!("{min} is above PGWAY_POOL_MAX ({max})"),
                ));
            }
            Some(min) => min,
            // With the PostgreSQL door on, the gRPC door keeps no idle connections of its own
            // unless told to: they would hold places in the budget both doors share.
            None if !self.pg_addr.trim().is_empty() => 0,
            None => DEFAULT_POOL_MIN.min(max),
        };
        Ok(PoolConfig {
            min,
            max,
            acquire_timeout: self.acquire_timeout,
            max_lifetime: self.conn_max_lifetime,
            idle_timeout: self.conn_idle_timeout,
            statement_cache_size: self.statement_cache_size,
            max_waiting: self.max_waiting,
            max_concurrent_connects: self.max_concurrent_connects,
        })
    }

    /// Durations that must be more than zero, counts that must be at least one.
    fn check_counts_and_durations(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("PGWAY_ACQUIRE_TIMEOUT", self.acquire_timeout),
            ("PGWAY_CONNECT_TIMEOUT", self.connect_timeout),
            ("PGWAY_REQUEST_TIMEOUT", self.request_timeout),
            ("PGWAY_CONN_MAX_LIFETIME", self.conn_max_lifetime),
            ("PGWAY_CONN_IDLE_TIMEOUT", self.conn_idle_timeout),
            ("PGWAY_TX_IDLE_TIMEOUT", self.tx_idle_timeout),
            ("PGWAY_TX_MAX_DURATION", self.tx_max_duration),
            ("PGWAY_HEALTH_INTERVAL", self.health_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be more than zero"));
            }
        }
        for (setting, value) in [
            ("PGWAY_MAX_ROWS", self.max_rows as usize),
            ("PGWAY_STREAM_BATCH_ROWS", self.stream_batch_rows as usize),
            ("PGWAY_TX_MAX_ATTEMPTS", self.tx_max_attempts as usize),
            (
                "PGWAY_MAX_CONCURRENT_CONNECTS",
                self.max_concurrent_connects,
            ),
        ] {
            if value == 0 {
                return Err(invalid(setting, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Where `/metrics` is served; `None` when the setting is empty.
    fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_addr.trim() {
            "" => Ok(None),
            addr => addr.parse::<SocketAddr>().map(Some).map_err(|e| {
                invalid(
                    "PGWAY_METRICS_ADDR",
                    format!("{addr:?} is not host:port ({e}); leave it empty to turn metrics off"),
                )
            }),
        }
    }

    /// What one call may send and get back.
    fn bounds(&self) -> Result<CallBounds, ConfigError> {
        if self.max_response_bytes < 1024 {
            return Err(invalid("PGWAY_MAX_RESPONSE_BYTES", "must be at least 1KiB"));
        }
        for (setting, value, least) in [
            ("PGWAY_MAX_REQUEST_BYTES", self.max_request_bytes, 1024),
            ("PGWAY_MAX_SQL_BYTES", self.max_sql_bytes, 16),
            ("PGWAY_MAX_STATEMENTS", self.max_statements, 1),
        ] {
            if value < least {
                return Err(invalid(setting, format!("must be at least {least}")));
            }
        }
        if self.max_params > 65_535 {
            return Err(invalid(
                "PGWAY_MAX_PARAMS",
                "PostgreSQL takes at most 65535 parameters",
            ));
        }
        Ok(CallBounds {
            max_rows: self.max_rows,
            max_response_bytes: self.max_response_bytes,
            stream_batch_rows: self.stream_batch_rows,
            stream_batch_bytes: (256 * 1024).min(self.max_response_bytes),
            max_request_bytes: self.max_request_bytes,
            max_sql_bytes: self.max_sql_bytes,
            max_params: self.max_params,
            max_statements: self.max_statements,
        })
    }

    /// The TLS settings, with the files read and checked now so a bad one stops start-up.
    fn tls(&self) -> Result<Option<crate::core::tls::TlsConfig>, ConfigError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) => {
                return match self.tls_client_ca {
                    Some(_) => Err(invalid(
                        "PGWAY_TLS_CLIENT_CA",
                        "needs PGWAY_TLS_CERT and PGWAY_TLS_KEY: client certificates are asked for only over TLS",
                    )),
                    None => Ok(None),
                };
            }
            (Some(_), None) => {
                return Err(invalid(
                    "PGWAY_TLS_KEY",
                    "not set, but PGWAY_TLS_CERT is: set both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "PGWAY_TLS_CERT",
                    "not set, but PGWAY_TLS_KEY is: set both or neither",
                ));
            }
        };
        let files = crate::core::tls::TlsFiles {
            cert,
            key,
            client_ca: self.tls_client_ca.clone(),
        };
        let initial = files
            .load_blocking()
            .map_err(|error| invalid(error.setting, error.to_string()))?;
        Ok(Some(crate::core::tls::TlsConfig {
            files,
            reload_interval: self.tls_reload_interval,
            initial,
        }))
    }
}

impl ServeArgs {
    /// The authentication settings, checked, and their files loaded.
    fn auth_config(&self) -> Result<(AuthConfig, Arc<Authenticator>), ConfigError> {
        let open = self.auth == Some(AuthMode::None);
        let jwt = self.jwt_secret_file.is_some() || self.jwt_jwks_file.is_some();
        let credentials = self.auth_tokens_file.is_some() || jwt;
        if open && credentials {
            return Err(invalid(
                "PGWAY_AUTH",
                "is none, but tokens or JWT keys are configured too: unset one or the other",
            ));
        }
        if !open && !credentials {
            return Err(invalid(
                "PGWAY_AUTH",
                "no credentials are configured: set PGWAY_AUTH_TOKENS_FILE and/or \
                 PGWAY_JWT_SECRET_FILE / PGWAY_JWT_JWKS_FILE, or PGWAY_AUTH=none to let anyone \
                 who reaches the port call",
            ));
        }
        let allowed_roles: HashSet<String> = self
            .jwt_allowed_roles
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        if jwt && allowed_roles.is_empty() {
            return Err(invalid(
                "PGWAY_JWT_ALLOWED_ROLES",
                "JWTs are accepted, so name the roles they may run as (such as anon,authenticated)",
            ));
        }
        if let Some(role) = allowed_roles
            .iter()
            .find(|r| r.len() > 63 || r.contains('\0'))
        {
            return Err(invalid(
                "PGWAY_JWT_ALLOWED_ROLES",
                format!("{role:?} is not a PostgreSQL role name"),
            ));
        }
        if self.auth_reload_interval.is_zero() {
            return Err(invalid(
                "PGWAY_AUTH_RELOAD_INTERVAL",
                "must be more than zero",
            ));
        }
        let config = AuthConfig {
            open,
            tokens_file: self.auth_tokens_file.clone(),
            jwt_secret_file: self.jwt_secret_file.clone(),
            jwt_jwks_file: self.jwt_jwks_file.clone(),
            jwt: JwtRules {
                audience: self.jwt_audience.clone(),
                issuer: self.jwt_issuer.clone(),
                role_claim: self.jwt_role_claim.clone(),
                allowed_roles,
                leeway: self.jwt_leeway,
            },
            public_health: self.auth_public_health,
            public_reflection: self.auth_public_reflection,
            reload_interval: self.auth_reload_interval,
        };
        let authenticator =
            Authenticator::load(&config).map_err(|(setting, reason)| invalid(setting, reason))?;
        Ok((config, Arc::new(authenticator)))
    }
}

/// Parses durations such as `250ms`, `5s`, `2m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 250ms, 5s, 2m)"))
}

/// Parses sizes such as `4096`, `512KiB`, `3MiB`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (write sizes like 4096, 512KiB, 3MiB)"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("3MiB"), Ok(3 * 1024 * 1024));
        assert_eq!(parse_bytes("512KiB"), Ok(512 * 1024));
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn default_pool_is_clamped() {
        let max = default_pool_max();
        assert!((5..=20).contains(&max));
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec![
            "pgway",
            "serve",
            "--database-url",
            "postgres://u@127.0.0.1/db",
            "--auth",
            "none",
        ];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            Some(Command::Serve(args)) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let err = args(&["--pool-min", "9", "--pool-max", "3"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_POOL_MIN");
        let err = args(&["--max-rows", "0"]).validate().unwrap_err();
        assert_eq!(err.setting, "PGWAY_MAX_ROWS");
        assert!(Cli::try_parse_from(["pgway", "--acquire-timeout", "soon"]).is_err());
    }

    #[test]
    fn the_pool_keeps_five_ready_unless_its_maximum_is_lower() {
        // With the gRPC door alone.
        let config = args(&["--pg-addr", ""]).validate().unwrap();
        assert_eq!(config.pool.min, 5);
        let config = args(&["--pg-addr", "", "--pool-max", "3"])
            .validate()
            .unwrap();
        assert_eq!((config.pool.min, config.pool.max), (3, 3));
        let config = args(&["--pg-addr", "", "--pool-min", "1"])
            .validate()
            .unwrap();
        assert_eq!(config.pool.min, 1);
    }

    #[test]
    fn with_the_postgres_door_the_grpc_door_keeps_none_idle_unless_told() {
        let config = args(&[]).validate().unwrap();
        assert_eq!(config.pool.min, 0);
        assert!(config.pg.is_some());
        let config = args(&["--pool-min", "2"]).validate().unwrap();
        assert_eq!(config.pool.min, 2);
    }

    #[test]
    fn settings_errors_name_the_variable_and_the_flag() {
        let err = args(&["--max-rows", "0"]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "PGWAY_MAX_ROWS (--max-rows): must be at least 1"
        );
        let refused = Cli::try_parse_from(["pgway", "serve", "--pool-max", "abc"]).unwrap_err();
        let message = invalid_value(&refused).unwrap();
        assert!(
            message.starts_with("PGWAY_POOL_MAX (--pool-max): invalid value \"abc\": "),
            "{message}"
        );
        let refused = Cli::try_parse_from(["pgway", "serve", "--log-format", "xml"]).unwrap_err();
        let message = invalid_value(&refused).unwrap();
        assert!(
            message.contains("PGWAY_LOG_FORMAT (--log-format)"),
            "{message}"
        );
        assert!(message.contains("json"), "{message}");
        let refused = Cli::try_parse_from(["pgway", "stats", "--metrics-addr", "x"]).unwrap_err();
        let message = invalid_value(&refused).unwrap();
        assert!(
            message.starts_with("PGWAY_METRICS_ADDR (--metrics-addr)"),
            "{message}"
        );
    }

    #[test]
    fn tls_settings_come_together() {
        let err = args(&["--tls-cert", "/c.pem"]).validate().unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_KEY");
        let err = args(&["--tls-key", "/k.pem"]).validate().unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_CERT");
        let err = args(&["--tls-client-ca", "/ca.pem"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_CLIENT_CA");
        let err = args(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/k.pem"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_CERT");
        assert!(err.reason.contains("/nonexistent/c.pem"), "{err}");
        assert!(args(&[]).validate().unwrap().tls.is_none());
    }

    #[test]
    fn good_settings_validate() {
        let config = args(&["--pool-max", "7"]).validate().unwrap();
        assert_eq!(config.pool.max, 7);
        assert_eq!(config.limits.max_rows, 10_000);
    }
}
