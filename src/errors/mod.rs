//! The gateway's error type and the one place where errors become `tonic::Status`.
//!
//! Errors come in two families. PostgreSQL's answers to the caller's own SQL are the caller's
//! business: their SQLSTATE, message and fields go back as they are, in a `google.rpc.ErrorInfo`
//! with domain `postgresql`. The gateway's own failures (no connection, a result too large, a bug)
//! get domain `pgway` and a reason of their own; internal details are logged, not sent.

mod sqlstate_names;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::{DbError, SqlState};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of ErrorInfo for errors PostgreSQL reported.
pub const POSTGRES_DOMAIN: &str = "postgresql";
/// Domain of ErrorInfo for errors of the gateway itself.
pub const GATEWAY_DOMAIN: &str = "pgway";

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
        match error.as_db_error() {
            Some(db) => ConnectError {
                message: db.message().to_owned(),
                sqlstate: Some(db.code().clone()),
                tls_rejected: false,
            },
            // tokio-postgres' TLS error says only "error performing TLS handshake": the cause
            // (a rejected certificate, ...) is in its source.
            None => match crate::dbtls::failure(&error) {
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
    pub fn from_postgres(error: tokio_postgres::Error, sent: bool) -> Self {
        if let Some(db) = error.as_db_error() {
            return GatewayError::Postgres(Box::new(db.clone()));
        }
        if error.is_closed() || is_io(&error) {
            return if sent {
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
            GatewayError::Postgres(db) => {
                let code = db.code();
                code.code().starts_with("08")
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
            }
            _ => false,
        }
    }
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

/// PostgreSQL's condition name for a SQLSTATE, in UPPER_SNAKE_CASE (`UNIQUE_VIOLATION`).
pub fn condition_name(state: &SqlState) -> &'static str {
    sqlstate_names::CONDITION_NAMES
        .iter()
        .find(|(known, _)| known == state)
        .map_or("UNKNOWN_SQLSTATE", |(_, name)| name)
}

/// The gRPC code for a SQLSTATE.
pub fn code_for_sqlstate(state: &SqlState) -> Code {
    let code = state.code();
    let class = &code[..2.min(code.len())];
    if *state == SqlState::INSUFFICIENT_PRIVILEGE {
        Code::PermissionDenied
    } else if *state == SqlState::UNIQUE_VIOLATION {
        Code::AlreadyExists
    } else if *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
    {
        Code::Aborted
    } else if *state == SqlState::QUERY_CANCELED {
        Code::Cancelled
    } else if *state == SqlState::READ_ONLY_SQL_TRANSACTION {
        Code::FailedPrecondition
    } else if *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
    {
        Code::Unavailable
    } else {
        match class {
            "42" | "22" => Code::InvalidArgument,
            "23" => Code::FailedPrecondition,
            "08" => Code::Unavailable,
            "53" => Code::ResourceExhausted,
            // Feature not supported, invalid transaction state, ...: the request can't run as is.
            "0A" | "25" | "2B" | "2D" | "3B" | "55" => Code::FailedPrecondition,
            // Data errors raised by functions and PL/pgSQL RAISE default to the caller's input.
            "P0" | "2F" | "38" | "39" | "44" | "21" | "26" | "34" | "3D" | "3F" | "24" => {
                Code::InvalidArgument
            }
            "40" => Code::Aborted,
            "54" => Code::ResourceExhausted,
            "57" => Code::Unavailable,
            "58" | "XX" | "F0" | "HV" => Code::Internal,
            _ => Code::Unknown,
        }
    }
}

fn gateway_status(
    code: Code,
    reason: &str,
    message: String,
    metadata: HashMap<String, String>,
    retry_after: Option<Duration>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, GATEWAY_DOMAIN, metadata);
    if let Some(delay) = retry_after {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code, message, details)
}

fn postgres_status(db: &DbError, mut metadata: HashMap<String, String>) -> Status {
    let state = db.code();
    metadata.insert("sqlstate".into(), state.code().to_owned());
    let fields = [
        ("constraint", db.constraint()),
        ("table", db.table()),
        ("column", db.column()),
        ("schema", db.schema()),
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("datatype", db.datatype()),
        // Says which parameter a bad value was ("unnamed portal parameter $1 = '...'").
        ("where", db.where_()),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            metadata.insert(key.into(), value.to_owned());
        }
    }
    if let Some(tokio_postgres::error::ErrorPosition::Original(position)) = db.position() {
        metadata.insert("position".into(), position.to_string());
    }
    let details = ErrorDetails::with_error_info(condition_name(state), POSTGRES_DOMAIN, metadata);
    let message = format!("{} (SQLSTATE {})", db.message(), state.code());
    Status::with_error_details(code_for_sqlstate(state), message, details)
}

/// `status`'s error details under another code and message.
///
/// The details are encoded again, not copied: the `google.rpc.Status` they travel in carries a
/// code and a message of its own, and clients compare them with the call's (grpcio-status'
/// `rpc_status.from_call` raises `ValueError` when they differ).
fn restated(status: &Status, code: Code, message: String) -> Status {
    Status::with_error_details(code, message, status.get_error_details())
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Status {
        to_status(error, HashMap::new())
    }
}

fn to_status(error: GatewayError, mut metadata: HashMap<String, String>) -> Status {
    let message = error.to_string();
    match error {
        GatewayError::Postgres(db) => postgres_status(&db, metadata),
        GatewayError::InStatement { index, error } => {
            metadata.insert("statement_index".into(), index.to_string());
            let status = to_status(*error, metadata);
            let message = format!("statement {index}: {}", status.message());
            restated(&status, status.code(), message)
        }
        GatewayError::InvalidArgument(_) => gateway_status(
            Code::InvalidArgument,
            "INVALID_REQUEST",
            message,
            metadata,
            None,
        ),
        GatewayError::FailedPrecondition(_) => gateway_status(
            Code::FailedPrecondition,
            "PROTOCOL_VIOLATION",
            message,
            metadata,
            None,
        ),
        GatewayError::ResultTooLarge(_) => gateway_status(
            Code::ResourceExhausted,
            "RESULT_TOO_LARGE",
            message,
            metadata,
            None,
        ),
        GatewayError::Overloaded { retry_after, .. } => gateway_status(
            Code::Unavailable,
            "OVERLOADED",
            message,
            metadata,
            Some(retry_after),
        ),
        GatewayError::PoolTimeout { .. } => gateway_status(
            Code::Unavailable,
            "POOL_TIMEOUT",
            message,
            metadata,
            Some(Duration::from_millis(100)),
        ),
        GatewayError::ConnectFailed(cause) => {
            if let Some(state) = &cause.sqlstate {
                metadata.insert("sqlstate".into(), state.code().to_owned());
            }
            gateway_status(Code::Unavailable, "CONNECT_FAILED", message, metadata, None)
        }
        GatewayError::ConnectionLost(_) => gateway_status(
            Code::Unavailable,
            "CONNECTION_LOST",
            message,
            metadata,
            Some(Duration::from_millis(50)),
        ),
        GatewayError::OutcomeUnknown(_) => {
            gateway_status(Code::Unknown, "OUTCOME_UNKNOWN", message, metadata, None)
        }
        GatewayError::DeadlineExceeded(_) => gateway_status(
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            message,
            metadata,
            None,
        ),
        GatewayError::RetriesExhausted { attempts, last } => {
            metadata.insert("attempts".into(), attempts.to_string());
            let status = to_status(*last, metadata);
            restated(&status, Code::Aborted, message)
        }
        GatewayError::TransactionTimeout(_) => gateway_status(
            Code::Aborted,
            "TRANSACTION_TIMEOUT",
            message,
            metadata,
            None,
        ),
        GatewayError::Unauthenticated(_) => gateway_status(
            Code::Unauthenticated,
            "UNAUTHENTICATED",
            message,
            metadata,
            None,
        ),
        GatewayError::PermissionDenied(_) => gateway_status(
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            message,
            metadata,
            None,
        ),
        GatewayError::RequestTooLarge(_) => gateway_status(
            Code::InvalidArgument,
            "REQUEST_TOO_LARGE",
            message,
            metadata,
            None,
        ),
        GatewayError::CallerLimit(_) => gateway_status(
            Code::ResourceExhausted,
            "CALLER_LIMIT",
            message,
            metadata,
            Some(Duration::from_millis(200)),
        ),
        GatewayError::ShuttingDown => gateway_status(
            Code::Unavailable,
            "SHUTTING_DOWN",
            message,
            metadata,
            Some(Duration::from_millis(100)),
        ),
        GatewayError::Internal(detail) => {
            // Ours, not the caller's: the detail goes to the log, the caller gets a generic line.
            tracing::error!(error = %detail, "internal error");
            gateway_status(
                Code::Internal,
                "INTERNAL",
                "internal error in the gateway; see its logs".into(),
                metadata,
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_table() {
        let cases = [
            (SqlState::INSUFFICIENT_PRIVILEGE, Code::PermissionDenied),
            (SqlState::UNDEFINED_TABLE, Code::InvalidArgument),
            (SqlState::SYNTAX_ERROR, Code::InvalidArgument),
            (SqlState::DIVISION_BY_ZERO, Code::InvalidArgument),
            (SqlState::UNIQUE_VIOLATION, Code::AlreadyExists),
            (SqlState::FOREIGN_KEY_VIOLATION, Code::FailedPrecondition),
            (SqlState::NOT_NULL_VIOLATION, Code::FailedPrecondition),
            (SqlState::T_R_SERIALIZATION_FAILURE, Code::Aborted),
            (SqlState::T_R_DEADLOCK_DETECTED, Code::Aborted),
            (SqlState::QUERY_CANCELED, Code::Cancelled),
            (SqlState::CONNECTION_FAILURE, Code::Unavailable),
            (SqlState::ADMIN_SHUTDOWN, Code::Unavailable),
            (SqlState::CANNOT_CONNECT_NOW, Code::Unavailable),
            (SqlState::TOO_MANY_CONNECTIONS, Code::ResourceExhausted),
            (SqlState::OUT_OF_MEMORY, Code::ResourceExhausted),
            (
                SqlState::READ_ONLY_SQL_TRANSACTION,
                Code::FailedPrecondition,
            ),
            (SqlState::INTERNAL_ERROR, Code::Internal),
        ];
        for (state, code) in cases {
            assert_eq!(code_for_sqlstate(&state), code, "{}", state.code());
        }
    }

    #[test]
    fn condition_names_are_postgres_names() {
        assert_eq!(
            condition_name(&SqlState::UNIQUE_VIOLATION),
            "UNIQUE_VIOLATION"
        );
        assert_eq!(
            condition_name(&SqlState::T_R_SERIALIZATION_FAILURE),
            "SERIALIZATION_FAILURE"
        );
        assert_eq!(
            condition_name(&SqlState::T_R_DEADLOCK_DETECTED),
            "DEADLOCK_DETECTED"
        );
        assert_eq!(
            condition_name(&SqlState::from_code("ZZ999")),
            "UNKNOWN_SQLSTATE"
        );
    }

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

    #[test]
    fn gateway_errors_carry_reasons() {
        let status = Status::from(GatewayError::ResultTooLarge("too many rows".into()));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "RESULT_TOO_LARGE");
        assert_eq!(info.domain, GATEWAY_DOMAIN);

        let status = Status::from(GatewayError::Internal("secret detail".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    /// The `google.rpc.Status` in the details says what the call says: clients check.
    #[test]
    fn details_carry_the_calls_code_and_message() {
        use prost::Message as _;
        let inner = || GatewayError::DeadlineExceeded(Duration::from_secs(3));
        let cases = [
            inner(),
            GatewayError::InStatement {
                index: 2,
                error: Box::new(inner()),
            },
            GatewayError::RetriesExhausted {
                attempts: 5,
                last: Box::new(GatewayError::InStatement {
                    index: 1,
                    error: Box::new(GatewayError::ConnectionLost("reset".into())),
                }),
            },
            GatewayError::Internal("secret".into()),
        ];
        for error in cases {
            let status = Status::from(error);
            let details = tonic_types::pb::Status::decode(status.details()).unwrap();
            assert_eq!(details.code, status.code() as i32, "{status:?}");
            assert_eq!(details.message, status.message(), "{status:?}");
            assert!(status.get_details_error_info().is_some(), "{status:?}");
        }
    }
}
