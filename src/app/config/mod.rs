//! Settings: every one is a command-line flag with an environment variable, typed, with its
//! default here and nowhere else, and validated before anything starts.
//!
//! By concern: `cli` declares the flags (clap), `parse` reads the command line and names a
//! refused value by its variable and flag, `values` parses durations and sizes, and `validate`
//! turns [`ServeArgs`] into the [`Config`] below.

mod cli;
mod parse;
mod validate;
mod values;

pub use cli::{
    AuthMode, Cli, Command, DEFAULT_GRPC_ADDR, DevArgs, LogFormat, ProbeCommand, ServeArgs,
    StatsArgs,
};
pub use parse::parse;
pub use validate::{DEFAULT_POOL_MIN, default_pool_max};
pub use values::{parse_bytes, parse_duration};

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::core::auth::limits::CallerQuota;
use crate::core::auth::{AuthConfig, Authenticator};
use crate::core::dbtls::DatabaseTls;
use crate::core::pool::PoolConfig;
use crate::grpc::{CallBounds, CallSettings, TxConfig};
use parse::{built_command, find_arg};

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
    pub keep_unnamed: crate::pgwire::KeepUnnamed,
    pub max_clients: usize,
    pub max_request_bytes: usize,
    pub require_tls: bool,
    pub client_certificates: bool,
    pub login_timeout: std::time::Duration,
    pub gate: crate::pgwire::gate::GateLimits,
    pub statement_cache: crate::pgwire::statements::Bound,
    pub client_statements: crate::pgwire::statements::Bound,
    pub client_idle_timeout: std::time::Duration,
    pub transaction_timeout: std::time::Duration,
    pub idle_in_transaction_timeout: std::time::Duration,
    pub client_write_timeout: std::time::Duration,
    /// The databases clients may name; empty: any the server allows.
    pub databases: Vec<String>,
    /// Connections of the URL's user and database kept ready (`PGWAY_POOL_MIN`).
    pub warm: u32,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
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

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}
