//! The core, shared by every door and knowing nothing of any: it names neither the gRPC
//! stack, nor the generated protocol types, nor a door (`.ci/layers` checks that).
//!
//! - [`pool`]: the bb8 connection manager, pgway's own connection type (client, statement
//!   cache, state flags), admission and the checkout path that surfaces connect errors.
//! - [`budget`]: the one connection budget both doors' connections draw from.
//! - [`dbtls`]: TLS to the database: `sslmode` / `sslrootcert`, the rustls configuration, the
//!   connector every connection goes through.
//! - [`health`]: readiness, as a watch channel a background monitor keeps.
//! - [`pause`]: PAUSE / RESUME, which both doors' new work waits on.
//! - [`sql`]: what a statement's text says (session changes, forbidden commands).
//! - [`retry`]: which failures are retried, with backoff, inside a retry budget.
//! - [`error`]: the protocol-neutral error type.
//! - [`telemetry`]: metric names and the recorder (a leaf).
//! - [`auth`]: who may call (bearer tokens, JWTs) and as which role; per-caller limits.
//! - [`tls`]: the server side's TLS, with certificates reloaded without a restart.
//! - [`shutdown`]: the process's signals (stop, reload).
//! - [`reload`]: when reloadable files are looked at again (a timer and SIGHUP).
//! - [`tunable`]: a setting the admin console's `SET` may change while running.

pub mod auth;
pub mod budget;
pub mod dbtls;
pub mod error;
pub mod health;
pub mod pause;
pub mod pool;
pub mod reload;
pub mod retry;
pub mod shutdown;
pub mod sql;
pub mod telemetry;
pub mod tls;
pub mod tunable;
