//! Running statements on a checked-out connection.
//!
//! Every function here marks the connection busy before it sends anything and idle only when
//! the answer was read to the end and no transaction is left open. If the future is dropped in
//! between (deadline, caller gone) the connection comes back busy and the pool discards it,
//! sending a cancel for whatever still runs on it: a connection in an unknown state is never
//! handed to the next caller.
//!
//! By concern: `query` runs a unary Query (reading its result whole in `fetch`), `transaction`
//! a Transaction and the statements of an interactive one, `stream` a QueryStream, and
//! `identity` makes a JWT caller's statements run as it; what they share is here.

mod fetch;
mod identity;
mod query;
mod stream;
mod transaction;

pub use query::query;
pub use stream::{StreamSink, query_stream};
pub use transaction::{
    begin, begin_sql, commit, isolation_level, statement_in_transaction, transaction_once,
};

use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;

use crate::core::auth::jwt::Verified;
use crate::core::error::GatewayError;
use crate::core::pool::PgConn;
use crate::grpc::CallBounds;
use crate::grpc::values::{Param, params_from_proto};
use crate::proto;

/// The caps that apply to one unary result.
#[derive(Debug, Clone, Copy)]
pub struct ResultBounds {
    pub max_rows: usize,
    pub max_bytes: usize,
}

impl ResultBounds {
    /// The caps for a request: its own `max_rows` may lower the server's, never raise it.
    pub fn for_request(requested_rows: u32, limits: &CallBounds) -> Self {
        let max_rows = match requested_rows {
            0 => limits.max_rows,
            n => n.min(limits.max_rows),
        };
        ResultBounds {
            max_rows: max_rows as usize,
            max_bytes: limits.max_response_bytes,
        }
    }
}

/// Whether an error is PostgreSQL saying a cached plan went stale after a schema change
/// ("cached plan must not change result type"): preparing the statement again cures it.
pub fn is_stale_plan(error: &GatewayError) -> bool {
    error
        .sqlstate()
        .is_some_and(|s| *s == SqlState::FEATURE_NOT_SUPPORTED)
        && error.to_string().contains("cached plan")
}

/// Refuses a statement over the request caps before anything else happens to it.
pub fn check_size(sql: &str, params: usize, limits: &CallBounds) -> Result<(), GatewayError> {
    if sql.len() > limits.max_sql_bytes {
        return Err(GatewayError::RequestTooLarge(format!(
            "the SQL text is {} bytes, more than PGWAY_MAX_SQL_BYTES ({})",
            sql.len(),
            limits.max_sql_bytes
        )));
    }
    if params > limits.max_params {
        return Err(GatewayError::RequestTooLarge(format!(
            "{params} parameters, more than PGWAY_MAX_PARAMS ({})",
            limits.max_params
        )));
    }
    Ok(())
}

/// Prepares `sql` on the connection (cached) and converts the parameters to its types.
async fn prepare(
    conn: &mut PgConn,
    sql: &str,
    values: &[proto::Value],
    identity: Option<&Verified>,
) -> Result<(Statement, Vec<Param>), GatewayError> {
    if sql.trim().is_empty() {
        return Err(GatewayError::InvalidArgument("sql is empty".into()));
    }
    if identity.is_some() && crate::core::sql::changes_identity(sql) {
        return Err(GatewayError::PermissionDenied(
            "a caller with a JWT may not change its role or claims (SET ROLE, set_config, \
             request.jwt.*, DO blocks, *_to_xml, ...)"
                .into(),
        ));
    }
    let (statement, traits) = conn.prepare_classified(sql).await?;
    if traits.changes_session {
        conn.mark_dirty();
    }
    let params = params_from_proto(values, statement.params())?;
    Ok((statement, params))
}

/// Marks the connection idle when the error left it in a known state.
fn settle(conn: &mut PgConn, result: &Result<impl Sized, GatewayError>) {
    match result {
        Ok(_) => conn.mark_idle(),
        Err(GatewayError::ResultTooLarge(_)) => {}
        Err(error) if error.breaks_connection() => {}
        Err(_) => conn.mark_idle(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn request_rows_never_raise_the_cap() {
        let limits = CallBounds {
            max_rows: 100,
            max_response_bytes: 1 << 20,
            stream_batch_rows: 10,
            stream_batch_bytes: 1 << 16,
            max_request_bytes: 1 << 20,
            max_sql_bytes: 1 << 20,
            max_params: 100,
            max_statements: 10,
        };
        assert_eq!(ResultBounds::for_request(0, &limits).max_rows, 100);
        assert_eq!(ResultBounds::for_request(5, &limits).max_rows, 5);
        assert_eq!(ResultBounds::for_request(500, &limits).max_rows, 100);
    }

    #[test]
    fn conflict_backoff_is_bounded() {
        for attempt in 0..30 {
            assert!(crate::core::retry::Backoff::CONFLICT.delay(attempt) <= Duration::from_secs(1));
        }
    }
}
