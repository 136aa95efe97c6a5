//! Reading a unary result whole, within its caps on rows and bytes.

use futures::TryStreamExt;
use prost::Message;
use tokio_postgres::Statement;

use crate::core::error::{GatewayError, Sent};
use crate::core::pool::PgConn;
use crate::grpc::values::{Param, RowDecoder, row_wire_size};
use crate::proto;

use super::ResultBounds;

/// Runs a prepared statement and reads its whole result within `caps`; the connection must be
/// idle again afterwards unless an error says otherwise.
pub(super) async fn fetch(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
