//! pgway: a gRPC gateway for PostgreSQL.
//!
//! Services call pgway over gRPC (`pgway.v1.Database`) instead of opening their own database
//! connections; pgway keeps one small, healthy pool of real connections for all of them.
//!
//! # Layout
//! - [`auth`]: who may call (bearer tokens, JWTs) and as which database role; per-caller limits.
//! - [`codec`]: prost's codec, with undecodable requests answered as INVALID_ARGUMENT.
//! - [`config`]: command line and environment settings, typed and validated at start-up.
//! - [`pool`]: the bb8 connection manager, pgway's own connection type (client, statement cache,
//!   state flags) and the checkout path that surfaces connect errors.
//! - [`dbtls`]: TLS to the database: `sslmode` / `sslrootcert` of the connection string, the
//!   rustls configuration built at start-up, and the connector every connection goes through.
//! - [`values`]: protobuf [`proto::Value`]s to PostgreSQL parameters, and result rows back.
//! - [`errors`]: the gateway's error type and the one place where errors become `tonic::Status`.
//! - [`execute`]: running statements on a pooled connection: unary, streamed, transactions.
//! - [`service`]: the `pgway.v1.Database` handlers.
//! - [`deadline`]: the effective deadline of a call (`grpc-timeout` against the server's cap).
//! - [`health`]: liveness and readiness over `grpc.health.v1`.
//! - [`probe`]: `pgway probe`, a grpc_health_probe work-alike for images without one.
//! - [`retry`]: which failures are retried, with backoff, inside a retry budget.
//! - [`server`]: assembles the gRPC server and runs it until shutdown.
//! - [`tls`]: TLS and mutual TLS on the gRPC side, with certificates reloaded without a restart.
//! - [`shutdown`]: waiting for SIGTERM / SIGINT.
//! - [`drain`]: health watches and reflection streams end when shutdown starts.
//! - [`stats`]: `pgway stats`, the pool's state read from a running gateway.
//! - [`statement`]: what a statement's text says (session changes, forbidden commands).
//! - [`devdb`]: a throwaway PostgreSQL cluster for `pgway dev` and the test suite.
//! - [`metrics`]: Prometheus metrics, `/metrics`, and the layer that observes every call.
//! - [`logging`]: tracing subscriber set-up (JSON or text).

// No unwrap on a server path: an `expect` says why it can't fail. Tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod auth;
pub mod codec;
pub mod config;
pub mod dbtls;
pub mod deadline;
pub mod devdb;
pub mod drain;
pub mod errors;
pub mod execute;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod retry;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod statement;
pub mod stats;
pub mod tls;
pub mod values;

/// Code generated from `proto/pgway/v1/pgway.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("pgway.v1");

    /// The encoded descriptor set of pgway's protos, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pgway_descriptor.bin"));
}
