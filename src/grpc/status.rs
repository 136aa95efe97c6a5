//! The one place where errors become `tonic::Status`, with a `google.rpc.ErrorInfo` in the
//! details: domain `postgresql` for PostgreSQL's answers (SQLSTATE, message and fields as they
//! are), domain `pgway` and a reason of its own for the gateway's failures (internal details
//! are logged, not sent).

mod sqlstate_names;

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::error::{DbError, SqlState};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::error::GatewayError;
use crate::core::sql::Refusal;

/// Domain of ErrorInfo for errors PostgreSQL reported.
pub const POSTGRES_DOMAIN: &str = "postgresql";
/// Domain of ErrorInfo for errors of the gateway itself.
pub const GATEWAY_DOMAIN: &str = "pgway";

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
    } else if crate::core::error::means_server_restart(state) {
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
        GatewayError::RetriesExhausted { attempts, last } => {
            metadata.insert("attempts".into(), attempts.to_string());
            let status = to_status(*last, metadata);
            restated(&status, Code::Aborted, message)
        }
        GatewayError::Refused(refusal) => {
            // What the caller can do instead is this door's to say.
            let (code, reason, message) = match &refusal {
                Refusal::TransactionControl(_) => (
                    Code::FailedPrecondition,
                    "PROTOCOL_VIOLATION",
                    format!("{refusal}; use Transaction or InteractiveTransaction"),
                ),
                Refusal::CopyOverProtocol => (
                    Code::InvalidArgument,
                    "INVALID_REQUEST",
                    format!("{refusal}; use INSERT or QueryStream"),
                ),
            };
            gateway_status(code, reason, message, metadata, None)
        }
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
        error => {
            if let GatewayError::ConnectFailed(cause) = &error
                && let Some(state) = &cause.sqlstate
            {
                metadata.insert("sqlstate".into(), state.code().to_owned());
            }
            let (code, reason, retry_after) = answer(&error);
            gateway_status(code, reason, message, metadata, retry_after)
        }
    }
}

/// How each of the gateway's own errors answers: its code, its ErrorInfo reason, and the delay
/// its RetryInfo suggests. (PostgreSQL's errors, a Transaction's statement and retries
/// exhausted carry the answer of the error inside them; see [`to_status`].)
fn answer(error: &GatewayError) -> (Code, &'static str, Option<Duration>) {
    let ms = Duration::from_millis;
    match error {
        GatewayError::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_REQUEST", None),
        GatewayError::FailedPrecondition(_) => {
            (Code::FailedPrecondition, "PROTOCOL_VIOLATION", None)
        }
        GatewayError::ResultTooLarge(_) => (Code::ResourceExhausted, "RESULT_TOO_LARGE", None),
        GatewayError::Overloaded { retry_after, .. } => {
            (Code::Unavailable, "OVERLOADED", Some(*retry_after))
        }
        GatewayError::PoolTimeout { .. } => (Code::Unavailable, "POOL_TIMEOUT", Some(ms(100))),
        GatewayError::ConnectFailed(_) => (Code::Unavailable, "CONNECT_FAILED", None),
        GatewayError::ConnectionLost(_) => (Code::Unavailable, "CONNECTION_LOST", Some(ms(50))),
        GatewayError::OutcomeUnknown(_) => (Code::Unknown, "OUTCOME_UNKNOWN", None),
        GatewayError::DeadlineExceeded(_) => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", None),
        GatewayError::TransactionTimeout(_) => (Code::Aborted, "TRANSACTION_TIMEOUT", None),
        GatewayError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED", None),
        GatewayError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED", None),
        GatewayError::RequestTooLarge(_) => (Code::InvalidArgument, "REQUEST_TOO_LARGE", None),
        GatewayError::CallerLimit(_) => (Code::ResourceExhausted, "CALLER_LIMIT", Some(ms(200))),
        GatewayError::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", Some(ms(100))),
        GatewayError::Postgres(_)
        | GatewayError::Refused(_)
        | GatewayError::InStatement { .. }
        | GatewayError::RetriesExhausted { .. }
        | GatewayError::Internal(_) => (Code::Internal, "INTERNAL", None),
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

    /// The README's table of the gateway's reasons, row by row.
    #[test]
    fn gateway_errors_answer_as_documented() {
        let text = || "x".to_owned();
        let cases = [
            (
                GatewayError::InvalidArgument(text()),
                Code::InvalidArgument,
                "INVALID_REQUEST",
            ),
            (
                GatewayError::FailedPrecondition(text()),
                Code::FailedPrecondition,
                "PROTOCOL_VIOLATION",
            ),
            (
                GatewayError::ResultTooLarge(text()),
                Code::ResourceExhausted,
                "RESULT_TOO_LARGE",
            ),
            (
                GatewayError::Overloaded {
                    waiting: 1,
                    retry_after: Duration::from_millis(7),
                },
                Code::Unavailable,
                "OVERLOADED",
            ),
            (
                GatewayError::PoolTimeout {
                    waited: Duration::from_secs(1),
                    last_connect_error: None,
                },
                Code::Unavailable,
                "POOL_TIMEOUT",
            ),
            (
                GatewayError::ConnectionLost(text()),
                Code::Unavailable,
                "CONNECTION_LOST",
            ),
            (
                GatewayError::OutcomeUnknown(text()),
                Code::Unknown,
                "OUTCOME_UNKNOWN",
            ),
            (
                GatewayError::DeadlineExceeded(Duration::from_secs(1)),
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
            ),
            (
                GatewayError::TransactionTimeout(text()),
                Code::Aborted,
                "TRANSACTION_TIMEOUT",
            ),
            (
                GatewayError::Unauthenticated(text()),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                GatewayError::PermissionDenied(text()),
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (
                GatewayError::RequestTooLarge(text()),
                Code::InvalidArgument,
                "REQUEST_TOO_LARGE",
            ),
            (
                GatewayError::CallerLimit(text()),
                Code::ResourceExhausted,
                "CALLER_LIMIT",
            ),
            (
                GatewayError::ShuttingDown,
                Code::Unavailable,
                "SHUTTING_DOWN",
            ),
            (GatewayError::Internal(text()), Code::Internal, "INTERNAL"),
        ];
        for (error, code, reason) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.get_details_error_info().unwrap().reason, reason);
        }
        let overloaded = Status::from(GatewayError::Overloaded {
            waiting: 1,
            retry_after: Duration::from_millis(7),
        });
        assert_eq!(
            overloaded.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(7))
        );
    }

    /// A refused statement reads as it always has on this door: the code, the reason and what
    /// to use instead.
    #[test]
    fn refused_statements_say_what_to_use_instead() {
        let status = Status::from(GatewayError::from(
            crate::core::sql::classify("BEGIN").unwrap_err(),
        ));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "PROTOCOL_VIOLATION"
        );
        assert_eq!(
            status.message(),
            "BEGIN is not allowed here: each call manages its own transaction; use Transaction \
             or InteractiveTransaction"
        );
        let status = Status::from(GatewayError::from(
            crate::core::sql::classify("COPY t FROM STDIN").unwrap_err(),
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "INVALID_REQUEST"
        );
        assert_eq!(
            status.message(),
            "COPY FROM STDIN / TO STDOUT is not supported; use INSERT or QueryStream"
        );
    }
}
