//! The unary Query: one statement in autocommit, in a READ ONLY transaction of its own, or as a
//! JWT caller's identity.

use tokio_postgres::Statement;

use crate::core::auth::jwt::Verified;
use crate::core::error::{GatewayError, Sent};
use crate::core::pool::PgConn;
use crate::grpc::values::Param;
use crate::proto::{self, IsolationLevel};

use super::fetch::fetch;
use super::identity::begin_as_sql;
use super::transaction::{FirstFailed, began_ahead, begin_sql, begin_with_first, commit, rollback};
use super::{ResultBounds, is_stale_plan, prepare, settle};

/// One statement in autocommit mode (or in a READ ONLY transaction when asked). A JWT
/// caller's statement always runs in a transaction of its own, as its role.
pub async fn query(
    conn: &mut PgConn,
    request: &proto::QueryRequest,
    caps: ResultBounds,
    identity: Option<&Verified>,
) -> Result<proto::QueryResponse, GatewayError> {
    if let Some(identity) = identity {
        return query_as(conn, request, caps, identity).await;
    }
    let (mut statement, mut params) = prepare(conn, &request.sql, &request.params, None).await?;
    conn.mark_busy();
    let read_only = request.read_only;
    let mut result = autocommit(conn, &statement, &params, caps, read_only).await;
    if result.as_ref().err().is_some_and(is_stale_plan) {
        // The failed Bind ran nothing (and a read-only transaction around it is over);
        // prepare afresh and run once more.
        conn.forget_statement(&request.sql);
        (statement, params) = prepare(conn, &request.sql, &request.params, None).await?;
        result = autocommit(conn, &statement, &params, caps, read_only).await;
    }
    settle(conn, &result);
    result
}

/// One statement on its own: in autocommit, or in a READ ONLY transaction of its own.
async fn autocommit(
    conn: &PgConn,
    statement: &Statement,
    params: &[Param],
    caps: ResultBounds,
    read_only: bool,
) -> Result<proto::QueryResponse, GatewayError> {
    if read_only {
        read_only_query(conn, statement, params, caps).await
    } else {
        fetch(conn, statement, params, caps).await
    }
}

/// One statement of a JWT caller: `BEGIN` as its identity, the statement, the identity
/// check, `COMMIT`.
pub(super) async fn query_as(
    conn: &mut PgConn,
    request: &proto::QueryRequest,
    caps: ResultBounds,
    identity: &Verified,
) -> Result<proto::QueryResponse, GatewayError> {
    let begin = begin_as_sql(
        begin_sql(IsolationLevel::Unspecified, request.read_only, false),
        Some(identity),
    );
    let first = begin_with_first(
        conn,
        &begin,
        request,
        caps,
        Some(identity),
        IsolationLevel::Unspecified,
    );
    match first.await {
        Ok(response) => {
            commit(conn).await?;
            Ok(response)
        }
        Err(FirstFailed::Begin(error) | FirstFailed::Statement(error)) => {
            rollback(conn, &error).await;
            Err(error)
        }
    }
}

/// A statement in a READ ONLY transaction, in one round trip: `BEGIN READ ONLY`, the
/// statement and `COMMIT` go out in one write. Before, each waited for the answer to the one
/// before it: three sends and three receives per call.
///
/// Sending `COMMIT` before the statement's outcome is known is safe here and only here: a
/// read-only transaction has nothing to apply, and when the statement fails PostgreSQL answers
/// the `COMMIT` of the aborted transaction by rolling it back (tag `ROLLBACK`, no error).
pub(super) async fn read_only_query(
    conn: &PgConn,
    statement: &Statement,
    params: &[Param],
    caps: ResultBounds,
) -> Result<proto::QueryResponse, GatewayError> {
    let client = conn.client();
    let simple = |sql: &'static str| async move {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::No))
    };
    // `try_join3` polls the three in order, and each sends its request on its first poll
    // (nothing in front of the send waits), so they reach the connection task in this order;
    // it writes all it has queued before it flushes. The first error ends the wait.
    // A refused BEGIN (none is expected but a stray cancel's) would leave the statement
    // behind it run on its own, read-write: see `began_ahead`.
    let begin = "BEGIN READ ONLY";
    let outcome = futures::future::try_join3(
        async { began_ahead(client.batch_execute(begin).await, begin) },
        fetch(conn, statement, params, caps),
        simple("COMMIT"),
    )
    .await;
    match outcome {
        Ok(((), response, ())) => Ok(response),
        Err(error) => {
            // The wait may have ended before the COMMIT went out (a statement that failed
            // before it was sent). ROLLBACK ends the transaction then, and is a no-op (a
            // warning) after the COMMIT; either way the connection is idle and outside any
            // transaction once it is answered. A ROLLBACK that fails fails the call with its
            // own error, which `settle` sees, so the connection is not reused.
            if !error.breaks_connection() && !matches!(error, GatewayError::ResultTooLarge(_)) {
                simple("ROLLBACK").await?;
            }
            Err(error)
        }
    }
}
