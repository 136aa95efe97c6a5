//! Running statements on a checked-out connection.
//!
//! Every function here marks the connection busy before it sends anything and idle only when
//! the answer was read to the end and no transaction is left open. If the future is dropped in
//! between (deadline, caller gone) the connection comes back busy and the pool discards it,
//! sending a cancel for whatever still runs on it: a connection in an unknown state is never
//! handed to the next caller.

use futures::TryStreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use tonic::Status;

use crate::core::auth::jwt::Verified;
use crate::core::error::{GatewayError, Sent};
use crate::core::pool::{PgConn, PooledConn};
use crate::grpc::CallBounds;
use crate::grpc::values::{Param, RowDecoder, params_from_proto, row_wire_size};
use crate::proto::{self, IsolationLevel};

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

/// The statements that make an open transaction run as a JWT caller: its role until the
/// transaction ends, and its claims where row-level security policies read them
/// (`current_setting('request.jwt.claims')`, as Supabase and PostgREST do). Both are `LOCAL`:
/// nothing outlives the transaction.
fn identity_sql(identity: &Verified) -> String {
    format!(
        "SET LOCAL ROLE {}; SELECT pg_catalog.set_config('request.jwt.claims', {}, true)",
        quote_ident(&identity.role),
        quote_literal(&identity.claims)
    )
}

/// `BEGIN …` followed, for a JWT caller, by [`identity_sql`]: one round trip.
fn begin_as_sql(begin: String, identity: Option<&Verified>) -> String {
    match identity {
        None => begin,
        Some(identity) => format!("{begin}; {}", identity_sql(identity)),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An escape-string literal, right whatever `standard_conforming_strings` says.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Reads who the transaction runs as after a JWT caller's statement.
const IDENTITY_CHECK: &str =
    "SELECT current_user, pg_catalog.current_setting('request.jwt.claims', true)";

/// After each statement of a JWT caller, before any of its result leaves: the role and the
/// claims must still be the ones the gateway set. A statement that changed them (past the
/// words [`crate::core::sql::changes_identity`] refuses) fails, and its transaction is rolled
/// back by the caller of this function.
fn identity_intact(row: &tokio_postgres::Row, identity: &Verified) -> Result<(), GatewayError> {
    let role: Option<String> = row.try_get(0).ok();
    let claims: Option<String> = row.try_get(1).ok().flatten();
    if role.as_deref() == Some(identity.role.as_str())
        && claims.as_deref() == Some(identity.claims.as_str())
    {
        Ok(())
    } else {
        Err(GatewayError::PermissionDenied(
            "the statement changed the role or the JWT claims it runs with; its transaction \
             was rolled back"
                .into(),
        ))
    }
}

/// A JWT caller's statement with the identity check sent right behind it. PostgreSQL runs
/// them in order, so the check sees what the statement did, and the two cost one round trip
/// instead of two. A failed statement ends the wait at once: the check is dropped and its
/// answer discarded, and the transaction is rolled back by the caller of this function.
async fn fetch_checked(
    conn: &mut PgConn,
    statement: &Statement,
    params: &[Param],
    caps: ResultBounds,
    identity: &Verified,
) -> Result<proto::QueryResponse, GatewayError> {
    let check = conn
        .prepare_cached(IDENTITY_CHECK)
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::No))?;
    let conn = &*conn;
    // Polled after the statement's future has sent the statement: the check goes second.
    let checked = async {
        conn.client()
            .query_one(&check, &[])
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::No))
    };
    let (response, row) =
        futures::future::try_join(fetch(conn, statement, params, caps), checked).await?;
    identity_intact(&row, identity)?;
    Ok(response)
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

/// Runs a prepared statement and reads its whole result within `caps`; the connection must be
/// idle again afterwards unless an error says otherwise.
async fn fetch(
    conn: &PgConn,
    statement: &Statement,
    params: &[Param],
    caps: ResultBounds,
) -> Result<proto::QueryResponse, GatewayError> {
    // A connection that died while pooled fails here, known unsent, rather than after the
    // send where a lost connection would leave the outcome unknown.
    if conn.client().is_closed() {
        return Err(GatewayError::ConnectionLost(
            "the connection was closed".into(),
        ));
    }
    let stream = conn
        .client()
        .query_raw(statement, params.iter())
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe))?;
    futures::pin_mut!(stream);
    let decoder = RowDecoder::new(statement.columns());
    // Most results are decoded row by row as they arrive, their exact encoded size counted on
    // the way. Values only the server can format wait until the result is complete and the
    // connection is free to ask for them: those rows are kept, their size estimated.
    let mut collected = if decoder.needs_server() {
        Collected::Raw(Vec::new())
    } else {
        Collected::Decoded(Vec::new())
    };
    let mut bytes = 0usize;
    // A row that doesn't decode fails the call only once the rest of the result is read, so
    // that the connection goes back in a known state.
    let mut failed = None;
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe))?
    {
        // Stop reading as soon as the cap is passed: the rest is never buffered. The
        // connection stays busy, so it is discarded and the statement cancelled.
        if collected.len() == caps.max_rows {
            return Err(GatewayError::ResultTooLarge(format!(
                "the result has more than {} rows, the most a unary Query returns; use QueryStream",
                caps.max_rows
            )));
        }
        match &mut collected {
            Collected::Raw(kept) => {
                bytes += row_wire_size(&row);
                kept.push(row);
            }
            Collected::Decoded(rows) if failed.is_none() => match decoder.decode_local(&row) {
                Ok(row) => {
                    bytes += prost::encoding::message::encoded_len(ROWS_TAG, &row);
                    rows.push(row);
                }
                Err(error) => failed = Some(error),
            },
            Collected::Decoded(_) => {}
        }
        if bytes > caps.max_bytes {
            return Err(too_many_bytes(caps.max_bytes));
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    let rows_affected = stream.rows_affected().unwrap_or(collected.len() as u64);
    let mut response = proto::QueryResponse {
        columns: RowDecoder::columns_to_proto(statement.columns()),
        rows: Vec::new(),
        rows_affected,
    };
    match collected {
        Collected::Decoded(rows) => {
            // `bytes` is exact for the rows: add the rest of the message.
            if bytes + response.encoded_len() > caps.max_bytes {
                return Err(too_many_bytes(caps.max_bytes));
            }
            response.rows = rows;
        }
        Collected::Raw(kept) => {
            response.rows = decoder.decode(&kept, conn.client()).await?;
            // The binary size was an estimate (some types are longer as text): check the
            // real one.
            if response.encoded_len() > caps.max_bytes {
                return Err(too_many_bytes(caps.max_bytes));
            }
        }
    }
    Ok(response)
}

/// The rows of a unary result read so far.
enum Collected {
    /// Decoded as they arrived.
    Decoded(Vec<proto::Row>),
    /// Kept as PostgreSQL sent them, for values only the server can format, which are asked
    /// for once the result is complete.
    Raw(Vec<tokio_postgres::Row>),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Collected::Decoded(rows) => rows.len(),
            Collected::Raw(rows) => rows.len(),
        }
    }
}

/// The field number of `QueryResponse.rows` in `proto/pgway/v1/pgway.proto`.
const ROWS_TAG: u32 = 2;

fn too_many_bytes(max_bytes: usize) -> GatewayError {
    GatewayError::ResultTooLarge(format!(
        "the result is larger than {max_bytes} bytes, the most a unary Query returns; use QueryStream"
    ))
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
async fn query_as(
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
async fn read_only_query(
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
async fn begin_with_first(
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
enum FirstFailed {
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
fn began_ahead(answer: Result<(), tokio_postgres::Error>, begin: &str) -> Result<(), GatewayError> {
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
async fn rollback(conn: &mut PgConn, error: &GatewayError) {
    if error.breaks_connection() || matches!(error, GatewayError::ResultTooLarge(_)) {
        return;
    }
    // A failed ROLLBACK leaves the connection busy: it is discarded.
    let _ = conn.roll_back().await;
}

/// Where a QueryStream's messages go, and whether one has gone yet: once one has, the
/// statement can't be run again for a retry (the caller would see its first rows twice).
#[derive(Debug)]
pub struct StreamSink<'a> {
    sender: &'a mpsc::Sender<Result<proto::QueryStreamResponse, Status>>,
    sent: bool,
}

impl<'a> StreamSink<'a> {
    pub fn new(sender: &'a mpsc::Sender<Result<proto::QueryStreamResponse, Status>>) -> Self {
        StreamSink {
            sender,
            sent: false,
        }
    }

    /// Whether a message has gone (or was on its way when the caller left).
    pub fn has_sent(&self) -> bool {
        self.sent
    }

    /// Sends `message`; `false` when the caller is gone.
    async fn send(&mut self, message: proto::QueryStreamResponse) -> bool {
        self.sent = true;
        self.sender.send(Ok(message)).await.is_ok()
    }
}

/// Streams a statement's result in batches into `sink`. The statement runs through a portal
/// inside a transaction, fetched a batch at a time: PostgreSQL produces the next rows only when
/// the caller has taken the previous ones, and the gateway holds one batch at a time.
pub async fn query_stream(
    conn: &mut PooledConn,
    request: &proto::QueryRequest,
    limits: CallBounds,
    sink: &mut StreamSink<'_>,
    identity: Option<&Verified>,
) -> Result<(), GatewayError> {
    let (statement, params) = prepare(conn, &request.sql, &request.params, identity).await?;
    conn.mark_busy();
    if statement.columns().is_empty() {
        let rows_affected =
            run_command(conn, request, &statement, &params, &limits, identity).await?;
        // Nothing to stream: the one message says how many rows the command touched.
        sink.send(proto::QueryStreamResponse {
            rows_affected,
            ..Default::default()
        })
        .await;
        return Ok(());
    }
    stream_rows(conn, request, &statement, &params, limits, sink, identity).await
}

/// Runs a statement that returns no rows (a plain command) and says how many it touched.
async fn run_command(
    conn: &mut PooledConn,
    request: &proto::QueryRequest,
    statement: &Statement,
    params: &[Param],
    limits: &CallBounds,
    identity: Option<&Verified>,
) -> Result<u64, GatewayError> {
    let rows_affected = if let Some(identity) = identity {
        let caps = ResultBounds {
            max_rows: 0,
            max_bytes: limits.max_response_bytes,
        };
        query_as(conn, request, caps, identity).await?.rows_affected
    } else if request.read_only {
        let response = read_only_query(
            conn,
            statement,
            params,
            ResultBounds {
                max_rows: 0,
                max_bytes: limits.max_response_bytes,
            },
        )
        .await;
        settle(conn, &response);
        response?.rows_affected
    } else {
        let result = conn
            .client()
            .execute_raw(statement, params.iter())
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe));
        settle(conn, &result);
        result?
    };
    Ok(rows_affected)
}

/// Streams the rows of `statement` through a portal, a batch at a time (see [`query_stream`]).
async fn stream_rows(
    conn: &mut PooledConn,
    request: &proto::QueryRequest,
    statement: &Statement,
    params: &[Param],
    limits: CallBounds,
    sink: &mut StreamSink<'_>,
    identity: Option<&Verified>,
) -> Result<(), GatewayError> {
    let max_rows = match request.max_rows {
        0 => u64::MAX,
        n => u64::from(n),
    };
    let decoder = RowDecoder::new(statement.columns());
    let mut columns = RowDecoder::columns_to_proto(statement.columns());
    let check = match identity {
        Some(_) => Some(
            conn.prepare_cached(IDENTITY_CHECK)
                .await
                .map_err(|e| GatewayError::from_postgres(e, Sent::No))?,
        ),
        None => None,
    };
    let transaction = conn
        .client_mut()
        .build_transaction()
        .read_only(request.read_only)
        .start()
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::No))?;
    if let Some(identity) = identity {
        transaction
            .batch_execute(&identity_sql(identity))
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::No))?;
    }
    let portal = transaction
        .bind_raw(statement, params.iter())
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe))?;

    let batch_rows = u64::from(limits.stream_batch_rows);
    // Start small, then size fetches so one batch is about stream_batch_bytes.
    let mut fetch_rows = batch_rows.min(64);
    let mut sent_rows = 0u64;
    let (last_rows, truncated) = loop {
        let remaining = max_rows - sent_rows;
        // One row past the cap tells whether the result was cut short.
        let want = fetch_rows.min(remaining.saturating_add(1));
        let mut rows: Vec<tokio_postgres::Row> = transaction
            .query_portal_raw(&portal, i32::try_from(want).unwrap_or(i32::MAX))
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe))?
            .try_collect()
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe))?;
        // No row of a batch leaves before the identity it was read under is confirmed.
        if let (Some(check), Some(identity)) = (&check, identity) {
            let row = transaction
                .query_one(check, &[])
                .await
                .map_err(|e| GatewayError::from_postgres(e, Sent::No))?;
            identity_intact(&row, identity)?;
        }
        let fetched = rows.len() as u64;
        let truncated = fetched > remaining;
        if truncated {
            rows.truncate(remaining as usize);
        }
        let wire: usize = rows.iter().map(row_wire_size).sum();
        if let Some(per_row) = (wire as u64).checked_div(fetched) {
            fetch_rows = (limits.stream_batch_bytes as u64 / per_row.max(1)).clamp(1, batch_rows);
        }
        let decoded = decoder.decode(&rows, &transaction).await?;
        sent_rows += rows.len() as u64;
        drop(rows);
        if truncated || fetched < want {
            break (decoded, truncated);
        }
        for message in split_batches(std::mem::take(&mut columns), decoded, &limits)? {
            if !sink.send(message).await {
                // The caller is gone: the open transaction leaves the connection busy, so it
                // is discarded with its portal (and a cancel is sent).
                return Ok(());
            }
        }
    };
    // Commit before the last rows go out, so a failing COMMIT (a deferred constraint of an
    // INSERT ... RETURNING) is reported instead of a result that didn't happen.
    transaction
        .commit()
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::Maybe))?;
    conn.mark_idle();
    let mut messages = split_batches(columns, last_rows, &limits)?;
    match messages.last_mut() {
        Some(last) => {
            last.rows_affected = sent_rows;
            last.truncated = truncated;
        }
        None => messages.push(proto::QueryStreamResponse {
            rows_affected: sent_rows,
            truncated,
            ..Default::default()
        }),
    }
    for message in messages {
        if !sink.send(message).await {
            break;
        }
    }
    Ok(())
}

/// Cuts decoded rows into messages of at most `stream_batch_bytes` (a single larger row goes
/// alone, if it fits in `max_response_bytes`). The first message carries the columns.
fn split_batches(
    mut columns: Vec<proto::Column>,
    rows: Vec<proto::Row>,
    limits: &CallBounds,
) -> Result<Vec<proto::QueryStreamResponse>, GatewayError> {
    let mut messages = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    for row in rows {
        let len = row.encoded_len();
        if len > limits.max_response_bytes {
            return Err(GatewayError::ResultTooLarge(format!(
                "a single row is {len} bytes, more than the {} a message may carry",
                limits.max_response_bytes
            )));
        }
        if !current.is_empty() && size + len > limits.stream_batch_bytes {
            messages.push(proto::QueryStreamResponse {
                columns: std::mem::take(&mut columns),
                rows: std::mem::take(&mut current),
                ..Default::default()
            });
            size = 0;
        }
        size += len + 4;
        current.push(row);
    }
    if !current.is_empty() || !columns.is_empty() {
        messages.push(proto::QueryStreamResponse {
            columns,
            rows: current,
            ..Default::default()
        });
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn identity_is_quoted() {
        let identity = Verified {
            role: "we\"ird".into(),
            claims: r#"{"sub":"o'brien \\ x"}"#.into(),
            subject: None,
            expires_at: 0,
        };
        assert_eq!(
            identity_sql(&identity),
            r#"SET LOCAL ROLE "we""ird"; SELECT pg_catalog.set_config('request.jwt.claims', E'{"sub":"o''brien \\\\ x"}', true)"#
        );
    }

    #[test]
    fn rows_counted_one_by_one_make_the_whole_size() {
        use proto::value::Kind as V;
        let row = |text: &str| proto::Row {
            values: vec![
                proto::Value {
                    kind: Some(V::StringValue(text.into())),
                },
                proto::Value {
                    kind: Some(V::IntValue(-7)),
                },
            ],
        };
        let rows = vec![row(""), row("a longer text value"), row(&"x".repeat(300))];
        let counted: usize = rows
            .iter()
            .map(|row| prost::encoding::message::encoded_len(ROWS_TAG, row))
            .sum();
        let mut response = proto::QueryResponse {
            columns: vec![proto::Column {
                name: "name".into(),
                type_oid: 25,
                type_name: "text".into(),
            }],
            rows: Vec::new(),
            rows_affected: 3,
        };
        let rest = response.encoded_len();
        response.rows = rows;
        assert_eq!(counted + rest, response.encoded_len());
    }

    #[test]
    fn rows_tag_is_the_field_number_of_rows() {
        // The size of a field's key depends on its number only past 15, so the test above
        // can't tell a wrong tag: the key prost writes for `rows` must be ROWS_TAG's.
        let response = proto::QueryResponse {
            rows: vec![proto::Row::default()],
            ..Default::default()
        };
        let length_delimited = 2;
        assert_eq!(
            response.encode_to_vec().first().copied(),
            Some(((ROWS_TAG << 3) | length_delimited) as u8)
        );
    }

    #[test]
    fn conflict_backoff_is_bounded() {
        for attempt in 0..30 {
            assert!(crate::core::retry::Backoff::CONFLICT.delay(attempt) <= Duration::from_secs(1));
        }
    }
}
