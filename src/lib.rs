//! pgway: a gateway for PostgreSQL.
//!
//! Services call pgway over gRPC (`pgway.v1.Database`), or keep their PostgreSQL driver and
//! connect to its PostgreSQL door, instead of opening their own database connections; pgway
//! keeps one small, healthy pool of real connections for all of them.
//!
//! # Layout
//! One core, doors over it, and one composition root that wires them:
//! - [`core`]: what every door shares and nothing door-specific: the pool, database TLS,
//!   readiness, what a statement's text says, retries, the protocol-neutral error, metric
//!   names, authentication, server TLS, signals. It imports nothing above it.
//! - [`grpc`]: front door 1, the gRPC API: routing, the observer layer, the interceptor,
//!   codec, deadlines, drain, health, the handlers, values, and the mapping of errors to
//!   `tonic::Status`. It imports only the core.
//! - [`pgwire`]: front door 2, the PostgreSQL protocol in transaction mode: startup and SCRAM,
//!   the relay and session state, prepared statements across server connections, its pools
//!   under the shared budget, cancel. It imports only the core.
//! - [`admin`]: the `/metrics` endpoint, `pgway stats` and `pgway probe`.
//! - [`app`]: the composition root and the settings (command line and environment, typed and
//!   validated at start-up); the only module that sees everything.
//! - [`devdb`]: a throwaway PostgreSQL cluster for `pgway dev` and the test suite.
//! - [`logging`]: tracing subscriber set-up (JSON or text).
//!
//! `.ci/layers` fails the build when a file under `src/core/` names tonic, the generated
//! protocol types or a module above it, or a file under a door (`src/grpc/`, `src/pgwire/`)
//! names `app`, `admin` or the other door.

// No unwrap on a server path: an `expect` says why it can't fail. Tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod app;
pub mod core;
pub mod devdb;
pub mod grpc;
pub mod logging;
pub mod pgwire;

/// Code generated from `proto/pgway/v1/pgway.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("pgway.v1");

    /// The encoded descriptor set of pgway's protos, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pgway_descriptor.bin"));
}
