//! Transactions: opening one with the requested options (and, where it is safe, in the same
//! round trip as its first statement), its statements, COMMIT and ROLLBACK.

use crate::core::auth::jwt::Verified;
use crate::core::error::{GatewayError, Sent};
use crate::core::pool::PgConn;
use crate::proto::{self, IsolationLevel};

use super::fetch::fetch;
use super::identity::{begin_as_sql, fetch_checked};
use super::{ResultBounds, is_stale_plan, prepare};

/// The SQL that opens a transaction with the requested options.
pub fn begin_sql(isolation: IsolationLevel, read_only: bool, deferrable: bool) -> String {
    let mut sql = String::from("BEGIN");
    match isolation {
        IsolationLevel::Unspecified => {}
        IsolationLevel::ReadCommitted => sql.push_str(" ISOLATION LEVEL READ COMMITTED"),
        IsolationLevel::RepeatableRead => sql.push_str(" ISOLATION LEVEL REPEATABLE READ"),
        IsolationLevel::Serializable => sql.push_str(" ISOLATION LEVEL SERIALIZABLE"),
    }
    if read_only {
        sql.push_str(" READ ONLY");
    }
    if deferrable {
        sql.push_str(" DEFERRABLE");
    }
    sql
}

/// The isolation level of a request, refusing numbers the proto doesn't define.
pub fn isolation_level(value: i32) -> Result<IsolationLevel, GatewayError> {
    IsolationLevel::try_from(value)
        .map_err(|_| GatewayError::InvalidArgument(format!("unknown isolation_level {value}")))
}

/// Runs all statements of a Transaction request once, in one transaction. On error the
/// transaction is rolled back (when the connection still works) and the error names the
/// statement.
pub async fn transaction_once(
    conn: &mut PgConn,
    request: &proto::TransactionRequest,
    caps: ResultBounds,
    identity: Option<&Verified>,
) -> Result<Vec<proto::QueryResponse>, GatewayError> {
    let isolation = isolation_level(request.isolation_level)?;
    let begin = begin_as_sql(
        begin_sql(isolation, request.read_only, request.deferrable),
        identity,
    );
    let statement_request = |statement: &proto::Statement| proto::QueryRequest {
        sql: statement.sql.clone(),
        params: statement.params.clone(),
        ..Default::default()
    };
    let mut results = Vec::with_capacity(request.statements.len());
    let mut statements = request.statements.iter().enumerate();
    match statements.next() {
        Some((index, first)) => {
            let first = statement_request(first);
            match begin_with_first(conn, &begin, &first, caps, identity, isolation).await {
                Ok(result) => results.push(result),
                Err(FirstFailed::Begin(error)) => {
                    rollback(conn, &error).await;
                    return Err(error);
                }
                Err(FirstFailed::Statement(error)) => {
                    return Err(in_statement(conn, index, error).await);
                }
            }
        }
        None => open_transaction(conn, &begin).await?,
    }
    for (index, statement) in statements {
        match statement_in_transaction(conn, &statement_request(statement), caps, identity).await {
            Ok(result) => results.push(result),
            Err(error) => return Err(in_statement(conn, index, error).await),
        }
    }
    commit(conn).await?;
    Ok(results)
}

/// Rolls the transaction back after statement `index` failed, and names it in the error.
async fn in_statement(conn: &mut PgConn, index: usize, error: GatewayError) -> GatewayError {
    rollback(conn, &error).await;
    GatewayError::InStatement {
        index,
        error: Box::new(error),
    }
}

/// `BEGIN` and the transaction's first statement; sent together, in one write, where that is
/// safe: a transaction of one statement then costs two round trips (this one and COMMIT)
/// instead of three.
///
/// It is safe only where BEGIN can't be refused while the connection stays up: a refused
/// BEGIN leaves no transaction block, so a statement sent behind it would run on its own, in
/// autocommit. So these wait for BEGIN's answer first, as before:
/// - SERIALIZABLE, which a hot standby refuses (0A000);
/// - a JWT caller's batch: were its BEGIN ever refused, the statement would run as pgway's own
///   role, without the caller's role and claims.
///
/// For a plain BEGIN of another level no refusal is expected (a stray cancel would be the one
/// way). Should one come all the same, the statement ran alone, and the call says so:
/// OUTCOME_UNKNOWN, never retried. The statement is prepared first, outside the transaction,
/// which changes nothing for these: preparing runs nothing, and the statement cache usually
/// answers without the server.
pub(super) async fn begin_with_first(
    conn: &mut PgConn,
    begin: &str,
    first: &proto::QueryRequest,
    caps: ResultBounds,
    identity: Option<&Verified>,
    isolation: IsolationLevel,
) -> Result<proto::QueryResponse, FirstFailed> {
    if identity.is_some() || isolation == IsolationLevel::Serializable {
        open_transaction(conn, begin)
            .await
            .map_err(FirstFailed::Begin)?;
        return statement_in_transaction(conn, first, caps, identity)
            .await
            .map_err(FirstFailed::Statement);
    }
    let (prepared, params) = prepare(conn, &first.sql, &first.params, None)
        .await
        .map_err(|error| FirstFailed::Statement(in_transaction_error(conn, &first.sql, error)))?;
    conn.mark_busy();
    let (began, fetched) = {
        let conn = &*conn;
        // `join!` polls BEGIN first, so it is sent first (see `read_only_query`); its answer
        // comes before the statement's, so waiting for both never waits longer than for the
        // statement.
        futures::join!(
            conn.client().batch_execute(begin),
            fetch(conn, &prepared, &params, caps)
        )
    };
    began_ahead(began, begin).map_err(FirstFailed::Begin)?;
    fetched.map_err(|error| FirstFailed::Statement(in_transaction_error(conn, &first.sql, error)))
}

/// Which of [`begin_with_first`]'s two failed: a failed BEGIN names no statement.
pub(super) enum FirstFailed {
    Begin(GatewayError),
    Statement(GatewayError),
}

/// Runs one statement inside an open transaction. A connection lost here means the
/// transaction is rolled back by the server: nothing was applied.
pub async fn statement_in_transaction(
    conn: &mut PgConn,
    request: &proto::QueryRequest,
    caps: ResultBounds,
    identity: Option<&Verified>,
) -> Result<proto::QueryResponse, GatewayError> {
    let outcome = match prepare(conn, &request.sql, &request.params, identity).await {
        Ok((prepared, params)) => match identity {
            Some(identity) => fetch_checked(conn, &prepared, &params, caps, identity).await,
            None => fetch(conn, &prepared, &params, caps).await,
        },
        Err(error) => Err(error),
    };
    outcome.map_err(|error| in_transaction_error(conn, &request.sql, error))
}

/// What a statement's failure inside a transaction means: a stale plan is forgotten, so the
/// transaction's next attempt prepares afresh; a lost connection took the open transaction
/// with it, so nothing was applied.
fn in_transaction_error(conn: &mut PgConn, sql: &str, error: GatewayError) -> GatewayError {
    if is_stale_plan(&error) {
        conn.forget_statement(sql);
    }
    match error {
        GatewayError::OutcomeUnknown(message) => GatewayError::ConnectionLost(message),
        other => other,
    }
}

/// Commits the open transaction. If the connection breaks after COMMIT was sent, nobody
/// knows whether it committed: that is OUTCOME_UNKNOWN, never OK and never "retry".
pub async fn commit(conn: &mut PgConn) -> Result<(), GatewayError> {
    match conn.client().batch_execute("COMMIT").await {
        Ok(()) => {
            conn.mark_idle();
            Ok(())
        }
        // The server answered (a serialization failure at commit, a deferred constraint):
        // the transaction is over and the connection idle.
        Err(error) if error.as_db_error().is_some() => {
            conn.mark_idle();
            Err(GatewayError::from_postgres(error, Sent::Maybe))
        }
        Err(error) => Err(GatewayError::from_postgres(error, Sent::Maybe)),
    }
}

/// Opens an interactive transaction (as the caller's identity, for a JWT caller).
pub async fn begin(
    conn: &mut PgConn,
    isolation: IsolationLevel,
    read_only: bool,
    deferrable: bool,
    identity: Option<&Verified>,
) -> Result<(), GatewayError> {
    let sql = begin_as_sql(begin_sql(isolation, read_only, deferrable), identity);
    open_transaction(conn, &sql).await
}

/// Sends `begin` and waits for its answer before anything else goes out.
async fn open_transaction(conn: &mut PgConn, begin: &str) -> Result<(), GatewayError> {
    conn.mark_busy();
    conn.client()
        .batch_execute(begin)
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::No))
}

/// The answer to `begin` sent in the same write as the statement behind it. A refusal opened
/// no transaction block, so that statement ran on its own: nobody knows what it did.
pub(super) fn began_ahead(
    answer: Result<(), tokio_postgres::Error>,
    begin: &str,
) -> Result<(), GatewayError> {
    answer.map_err(|error| {
        if error.as_db_error().is_some() {
            GatewayError::OutcomeUnknown(format!(
                "the server refused {begin} ({error}) after the statement behind it was sent: \
                 that statement may have run outside the transaction"
            ))
        } else {
            GatewayError::from_postgres(error, Sent::No)
        }
    })
}

/// Ends a failed transaction so the connection can be reused; leaves it busy (discarded) when
/// the connection itself is the problem.
pub(super) async fn rollback(conn: &mut PgConn, error: &GatewayError) {
    if error.breaks_connection() || matches!(error, GatewayError::ResultTooLarge(_)) {
        return;
    }
    // A failed ROLLBACK leaves the connection busy: it is discarded.
    let _ = conn.roll_back().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_says_what_was_asked() {
        assert_eq!(
            begin_sql(IsolationLevel::Unspecified, false, false),
            "BEGIN"
        );
        assert_eq!(
            begin_sql(IsolationLevel::Serializable, true, true),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
        );
    }
}
