//! Front door 1: the gRPC API (`pgway.v1.Database`, health, reflection) over the core.
//!
//! - [`server`]: assembles the door and serves it until shutdown; the routing and the tower
//!   stack every call passes through.
//! - [`observe`]: the layer that gives every call a request id, a span, a log line, metrics.
//! - [`auth`]: the interceptor that reads a call's credentials for the core's authenticator.
//! - [`codec`]: prost's codec, with undecodable requests answered as INVALID_ARGUMENT.
//! - [`deadline`]: the effective deadline of a call (`grpc-timeout` against the server's cap).
//! - [`drain`]: health watches and reflection streams end when shutdown starts.
//! - [`health`]: liveness and readiness over `grpc.health.v1`.
//! - [`service`]: the `pgway.v1.Database` handlers; [`execute`] runs their statements.
//! - [`values`]: protobuf `Value`s to PostgreSQL parameters, and result rows back.
//! - [`status`]: the one place where errors become `tonic::Status`.

pub mod auth;
pub mod codec;
pub mod deadline;
pub mod drain;
pub mod execute;
pub mod health;
pub mod observe;
pub mod server;
pub mod service;
pub mod status;
pub mod values;

use std::sync::Arc;
use std::time::Duration;

use crate::core::auth::Authenticator;
use crate::core::auth::limits::CallerQuota;
use crate::core::tls::TlsConfig;

/// What the gRPC door needs of the settings (the composition root builds it).
#[derive(Debug, Clone)]
pub struct Settings {
    pub calls: CallSettings,
    /// The loaded credentials (token and key files), shared by every call.
    pub authenticator: Arc<Authenticator>,
    /// Whether health answers without credentials.
    pub public_health: bool,
    /// Whether reflection answers without credentials.
    pub public_reflection: bool,
    /// TLS on the gRPC port; `None` serves plaintext.
    pub tls: Option<TlsConfig>,
    /// How long calls in flight get to finish after the signal.
    pub shutdown_grace: Duration,
}

/// What the Database service's handlers need of the settings.
#[derive(Debug, Clone, Copy)]
pub struct CallSettings {
    pub limits: CallBounds,
    pub request_timeout: Duration,
    /// The server-side `statement_timeout` of every connection.
    pub statement_timeout: Duration,
    pub tx: TxConfig,
    pub caller_quota: CallerQuota,
}

/// What one call may send and get back: the sizes of its request and of its result.
#[derive(Debug, Clone, Copy)]
pub struct CallBounds {
    pub max_rows: u32,
    pub max_response_bytes: usize,
    pub stream_batch_rows: u32,
    pub stream_batch_bytes: usize,
    pub max_request_bytes: usize,
    pub max_sql_bytes: usize,
    pub max_params: usize,
    pub max_statements: usize,
}

/// Transaction settings.
#[derive(Debug, Clone, Copy)]
pub struct TxConfig {
    pub max_attempts: u32,
    pub idle_timeout: Duration,
    pub max_duration: Duration,
}
