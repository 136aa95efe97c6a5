//! The gateway's protocol-neutral error type: what went wrong while serving a request, whose
//! fault it was, and whether it may be retried. Each door turns it into its own language
//! (the gRPC door in its status mapping).
//!
//! Errors come in two families. PostgreSQL's answers to the caller's own SQL are the caller's
//! business and keep all of PostgreSQL's fields; the gateway's own failures (no connection, a
//! result too large, a bug) have variants of their own.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::{DbError, SqlState};

/// Why a connection to the database could not be opened.
#[derive(Debug, Clone, Default, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// What went wrong, without the connection string or password.
    pub message: String,
    /// The SQLSTATE when PostgreSQL itself refused (wrong password, no such database, ...).
    pub sqlstate: Option<SqlState>,
    /// TLS failed for a reason of configuration: the server's certificate doesn't verify, the
    /// server offers no TLS though sslmode requires it, it refused our client certificate.
    pub tls_rejected: bool,
}

impl ConnectError {
    /// A refusal that retrying will not cure: bad credentials, a missing database or role.
    /// Callers are told at once instead of waiting for the acquire timeout.
    pub fn is_permanent(&self) -> bool {
        self.tls_rejected
            || self.sqlstate.as_ref().is_some_and(|state| {
                let code = state.code();
                code.starts_with("28") // invalid_authorization_specification, invalid_password
                || *state == SqlState::INVALID_CATALOG_NAME
                || *state == SqlState::INSUFFICIENT_PRIVILEGE
            })
    }
}

impl ConnectError {
    /// A closed set of kinds, for the `pgway_connection_errors_total{kind}` metric.
    pub fn kind(&self) -> &'static str {
        match &self.sqlstate {
            _ if self.tls_rejected => "tls",
            Some(state) if state.code().starts_with("28") => "auth",
            Some(state) if *state == SqlState::INVALID_CATALOG_NAME => "database_missing",
            Some(state) if *state == SqlState::TOO_MANY_CONNECTIONS => "too_many_connections",
            Some(state) if *state == SqlState::CANNOT_CONNECT_NOW => "starting_up",
            Some(_) => "refused",
            None if self.message.contains("timed out") || self.message.contains("timeout") => {
                "timeout"
            }
            None => "network",
        }
    }
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(error: tokio_postgres::Error) -> Self {
        // Refused before anything was sent: the server asked for a way of logging in that
        // PGWAY_DATABASE_REQUIRE_AUTH doesn't allow. Permanent, like a wrong password.
        if let Some(message) = crate::core::dbtls::guard::refused(&error) {
            return ConnectError {
                message,
                sqlstate: Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
                tls_rejected: false,
            };
        }
        match error.as_db_error() {
            Some(db) => ConnectError {
                message: db.message().to_owned(),
                sqlstate: Some(db.code().clone()),
                tls_rejected: false,
            },
            // tokio-postgres' TLS error says only "error performing TLS handshake": the cause
            // (a rejected certificate, ...) is in its source.
            None => match crate::core::dbtls::failure(&error) {
                Some(failure) => ConnectError {
                    message: failure.message,
                    sqlstate: None,
                    tls_rejected: failure.permanent,
                },
                // tokio-postgres' own messages (I/O, timeout) name neither user nor password.
                None => ConnectError {
                    message: error.to_string(),
                    ..ConnectError::default()
                },
            },
        }
    }
}

/// Whether a statement may have reached the server when its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// It can't have: nothing was applied.
    No,
    /// It may have: a write may or may not have been applied.
    Maybe,
}

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// PostgreSQL rejected the caller's statement.
    #[error("{}", .0.message())]
    Postgres(Box<DbError>),

    /// A statement of a Transaction failed; `index` is its position in the request.
    #[error("statement {index}: {error}")]
    InStatement {
        index: usize,
        error: Box<GatewayError>,
    },

    /// The request itself is malformed (bad parameter, wrong count, empty SQL, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// The request is well formed but breaks the protocol of the RPC (for example a statement
    /// before `begin` in an interactive transaction).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The result is over the row or byte cap of a unary reply.
    #[error("{0}")]
    ResultTooLarge(String),

    /// Too many callers are already waiting for a connection: shed at once.
    #[error("the gateway is overloaded: {waiting} calls already wait for a database connection")]
    Overloaded {
        waiting: usize,
        retry_after: Duration,
    },

    /// No connection became free within the acquire timeout.
    #[error("no database connection became free within {waited:?}{}", cause_suffix(.last_connect_error))]
    PoolTimeout {
        waited: Duration,
        last_connect_error: Option<Arc<ConnectError>>,
    },

    /// The database refused a new connection for a reason retrying won't fix.
    #[error("cannot connect to the database: {0}")]
    ConnectFailed(Arc<ConnectError>),

    /// The connection broke before the statement reached PostgreSQL: nothing was applied.
    #[error("the database connection was lost before the statement was sent: {0}")]
    ConnectionLost(String),

    /// The connection broke after a write or COMMIT was sent and before its answer arrived:
    /// it may or may not have been applied.
    #[error(
        "the database connection was lost after the statement was sent; it may have been applied: {0}"
    )]
    OutcomeUnknown(String),

    /// The call ran past its deadline; its statement was cancelled.
    #[error("deadline exceeded after {0:?}; the statement was cancelled")]
    DeadlineExceeded(Duration),

    /// A transaction kept failing with serialization failures or deadlocks; `last` is the
    /// last attempt's error.
    #[error("transaction aborted after {attempts} attempt(s): {last}")]
    RetriesExhausted {
        attempts: u32,
        last: Box<GatewayError>,
    },

    /// An interactive transaction sat idle or ran too long and was rolled back.
    #[error("{0}")]
    TransactionTimeout(String),

    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,

    /// The call carries no valid credentials.
    #[error("{0}")]
    Unauthenticated(String),

    /// The caller may not do this (a role off the allow list, a statement that would change
    /// the identity it runs as).
    #[error("{0}")]
    PermissionDenied(String),

    /// The request is over one of the gateway's size caps (SQL length, parameters, statements).
    #[error("{0}")]
    RequestTooLarge(String),

    /// The caller already holds as much as one caller may.
    #[error("{0}")]
    CallerLimit(String),

    /// A statement a single pooled statement must not run (see [`crate::core::sql`]).
    #[error("{0}")]
    Refused(#[from] crate::core::sql::Refusal),

    /// A bug or an unexpected failure inside the gateway.
    #[error("internal error: {0}")]
    Internal(String),
}

fn cause_suffix(cause: &Option<Arc<ConnectError>>) -> String {
    cause
        .as_ref()
        .map(|c| format!(" (last connection attempt: {c})"))
        .unwrap_or_default()
}

impl GatewayError {
    /// Classifies an error from tokio-postgres raised while a statement was running.
    /// `sent` tells whether the statement may have reached the server: a broken connection
    /// before that is harmless, after it the outcome of a write is unknown.
    pub fn from_postgres(error: tokio_postgres::Error, sent: Sent) -> Self {
        if let Some(db) = error.as_db_error() {
            return GatewayError::Postgres(Box::new(db.clone()));
        }
        if error.is_closed() || is_io(&error) {
            return if sent == Sent::Maybe {
                GatewayError::OutcomeUnknown(error.to_string())
            } else {
                GatewayError::ConnectionLost(error.to_string())
            };
        }
        GatewayError::Internal(error.to_string())
    }

    /// The SQLSTATE of an error PostgreSQL reported, if this is one.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            GatewayError::Postgres(db) => Some(db.code()),
            GatewayError::InStatement { error, .. } => error.sqlstate(),
            _ => None,
        }
    }

    /// Whether running the whole transaction again may succeed: serialization failures and
    /// deadlocks (PostgreSQL docs §13.5).
    pub fn is_transaction_conflict(&self) -> bool {
        self.sqlstate().is_some_and(|s| {
            *s == SqlState::T_R_SERIALIZATION_FAILURE || *s == SqlState::T_R_DEADLOCK_DETECTED
        })
    }

    /// Whether the connection that produced this error can no longer be trusted.
    pub fn breaks_connection(&self) -> bool {
        match self {
            GatewayError::ConnectionLost(_)
            | GatewayError::OutcomeUnknown(_)
            | GatewayError::DeadlineExceeded(_)
            | GatewayError::Internal(_) => true,
            GatewayError::InStatement { error, .. } => error.breaks_connection(),
            GatewayError::Postgres(db) => means_server_restart(db.code()),
            _ => false,
        }
    }
}

/// Whether PostgreSQL said it is going away or not there yet: an administrator's or a crash
/// shutdown (57P01, 57P02), still starting up (57P03), or a connection failure (class 08).
/// The connection that heard it is done for, and what it refused can run again elsewhere.
pub fn means_server_restart(state: &SqlState) -> bool {
    *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
        || state.code().starts_with("08")
}

fn is_io(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_connect_errors() {
        let refused = ConnectError {
            message: "password authentication failed".into(),
            sqlstate: Some(SqlState::INVALID_PASSWORD),
            tls_rejected: false,
        };
        assert!(refused.is_permanent());
        let missing = ConnectError {
            message: "database does not exist".into(),
            sqlstate: Some(SqlState::INVALID_CATALOG_NAME),
            tls_rejected: false,
        };
        assert!(missing.is_permanent());
        let starting = ConnectError {
            message: "the database system is starting up".into(),
            sqlstate: Some(SqlState::CANNOT_CONNECT_NOW),
            tls_rejected: false,
        };
        assert!(!starting.is_permanent());
        let io = ConnectError {
            message: "connection refused".into(),
            sqlstate: None,
            tls_rejected: false,
        };
        assert!(!io.is_permanent());
        let certificate = ConnectError {
            message: "the database server's TLS certificate was rejected".into(),
            sqlstate: None,
            tls_rejected: true,
        };
        assert!(certificate.is_permanent());
        assert_eq!(certificate.kind(), "tls");
    }
}
