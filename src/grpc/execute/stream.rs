//! QueryStream: a statement's result read through a portal and sent in batches.

use futures::TryStreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_postgres::Statement;
use tonic::Status;

use crate::core::auth::jwt::Verified;
use crate::core::error::{GatewayError, Sent};
use crate::core::pool::PooledConn;
use crate::grpc::CallBounds;
use crate::grpc::values::{Param, RowDecoder, row_wire_size};
use crate::proto;

use super::identity::{IDENTITY_CHECK, identity_intact, identity_sql};
use super::query::{query_as, read_only_query};
use super::{ResultBounds, prepare, settle};

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
    let (check, transaction, portal) =
        open_portal(conn, request, statement, params, identity).await?;

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
    send_last(columns, last_rows, sent_rows, truncated, &limits, sink).await
}

/// Opens the transaction (read-only if asked, the caller's identity set inside it) and binds
/// `statement` to a portal in it; the identity check to run before each batch, if any.
async fn open_portal<'c>(
    conn: &'c mut PooledConn,
    request: &proto::QueryRequest,
    statement: &Statement,
    params: &[Param],
    identity: Option<&Verified>,
) -> Result<
    (
        Option<Statement>,
        tokio_postgres::Transaction<'c>,
        tokio_postgres::Portal,
    ),
    GatewayError,
> {
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
    Ok((check, transaction, portal))
}

/// Sends the rows of the last batch, the last message saying how many rows there were in all
/// and whether the result was cut short (a message of its own if no rows are left).
async fn send_last(
    columns: Vec<proto::Column>,
    last_rows: Vec<proto::Row>,
    sent_rows: u64,
    truncated: bool,
    limits: &CallBounds,
    sink: &mut StreamSink<'_>,
) -> Result<(), GatewayError> {
    let mut messages = split_batches(columns, last_rows, limits)?;
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
