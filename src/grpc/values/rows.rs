//! Result rows to protobuf rows: the binary values the gateway decodes itself, and the rest
//! given their text by the server, a batch at a time.

use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Kind, Type};

use super::text::{TextSource, numeric_text, server_texts, trim_padding, uuid_text};
use super::{BoxError, type_of_oid};
use crate::core::error::GatewayError;
use crate::proto::{self, value::Kind as V};

/// A result value's raw bytes, whatever its type.
struct RawValue<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawValue(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Turns result rows of one statement into protobuf rows.
#[derive(Debug, Clone)]
pub struct RowDecoder {
    types: Vec<Type>,
    /// Whether some column needs the server to make its text.
    needs_server: Vec<bool>,
}

impl RowDecoder {
    pub fn new(columns: &[tokio_postgres::Column]) -> Self {
        let types: Vec<Type> = columns.iter().map(|c| c.type_().clone()).collect();
        let needs_server = types.iter().map(needs_server_text).collect();
        RowDecoder {
            types,
            needs_server,
        }
    }

    /// The column descriptions sent to the caller.
    pub fn columns_to_proto(columns: &[tokio_postgres::Column]) -> Vec<proto::Column> {
        columns
            .iter()
            .map(|c| proto::Column {
                name: c.name().to_owned(),
                type_oid: c.type_().oid(),
                type_name: c.type_().name().to_owned(),
            })
            .collect()
    }

    /// Decodes a batch of rows, asking `source` (the connection the rows came from, now idle)
    /// for the text of the values only the server can format.
    pub async fn decode<S: TextSource>(
        &self,
        rows: &[Row],
        source: &S,
    ) -> Result<Vec<proto::Row>, GatewayError> {
        let mut texts = Vec::new();
        if self.needs_server() {
            let mut pending: Vec<(Type, &[u8])> = Vec::new();
            for row in rows {
                for (column, ty) in self.types.iter().enumerate() {
                    if self.needs_server[column] {
                        let raw = raw_value(row, column)?;
                        decode_value(ty, raw, &mut |ty, bytes| {
                            pending.push((ty.clone(), bytes));
                            Ok(String::new())
                        })
                        .map_err(GatewayError::Internal)?;
                    }
                }
            }
            texts = server_texts(source, &pending).await?;
        }
        let mut texts = texts.into_iter();
        let mut from_server = |_: &Type, _: &[u8]| {
            texts
                .next()
                .ok_or_else(|| "the server returned fewer texts than values".to_owned())
        };
        rows.iter()
            .map(|row| self.decode_row(row, &mut from_server))
            .collect()
    }

    /// Whether some column's values need the server to format them, so that rows can only be
    /// decoded once the whole result is in and the connection is free again.
    pub fn needs_server(&self) -> bool {
        self.needs_server.contains(&true)
    }

    /// Decodes one row on its own, as it arrives. Only for results where
    /// [`needs_server`](Self::needs_server) is false.
    pub fn decode_local(&self, row: &Row) -> Result<proto::Row, GatewayError> {
        self.decode_row(row, &mut |ty: &Type, _: &[u8]| {
            Err(format!("{} needs the server to format it", ty.name()))
        })
    }

    fn decode_row<'a>(
        &self,
        row: &'a Row,
        server_text: &mut ServerText<'a, '_>,
    ) -> Result<proto::Row, GatewayError> {
        let values = self
            .types
            .iter()
            .enumerate()
            .map(|(column, ty)| {
                let raw = raw_value(row, column)?;
                decode_value(ty, raw, server_text).map_err(GatewayError::Internal)
            })
            .collect::<Result<_, _>>()?;
        Ok(proto::Row { values })
    }
}

/// About how many bytes a row takes in a protobuf reply, from its binary size: used to stop
/// reading a result early and to size stream batches.
pub fn row_wire_size(row: &Row) -> usize {
    (0..row.len())
        .map(|column| match raw_value(row, column) {
            Ok(Some(raw)) => raw.len() + 4,
            _ => 2,
        })
        .sum()
}

fn raw_value(row: &Row, column: usize) -> Result<Option<&[u8]>, GatewayError> {
    row.try_get::<_, Option<RawValue>>(column)
        .map(|raw| raw.map(|r| r.0))
        .map_err(|e| GatewayError::Internal(format!("reading column {column}: {e}")))
}

/// Types decoded in the gateway; everything else gets its text from the server.
fn needs_server_text(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Array(element) => needs_server_text(element),
        Kind::Domain(base) => needs_server_text(base),
        Kind::Enum(_) => false,
        _ => ![
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::OID,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::BYTEA,
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
            Type::JSON,
            Type::JSONB,
            Type::UUID,
            Type::NUMERIC,
        ]
        .contains(ty),
    }
}

fn null() -> proto::Value {
    proto::Value {
        kind: Some(V::NullValue(0)),
    }
}

fn utf8(raw: &[u8]) -> Result<String, String> {
    String::from_utf8(raw.to_vec()).map_err(|e| format!("invalid UTF-8 from the server: {e}"))
}

/// Gives the text of a value the gateway can't format.
type ServerText<'a, 'f> = dyn FnMut(&Type, &'a [u8]) -> Result<String, String> + 'f;

/// Decodes one binary value. `server_text` gives the text of a value the gateway can't format.
fn decode_value<'a>(
    ty: &Type,
    raw: Option<&'a [u8]>,
    server_text: &mut ServerText<'a, '_>,
) -> Result<proto::Value, String> {
    let Some(raw) = raw else {
        return Ok(null());
    };
    let bad = |e: BoxError| format!("decoding {}: {e}", ty.name());
    let kind = match ty.kind() {
        Kind::Array(element) => return decode_array(element, raw, server_text),
        // postgres-types files record[] (`array_agg(ROW(...))`) as a pseudo-type, not an array.
        _ if *ty == Type::RECORD_ARRAY => return decode_array(&Type::RECORD, raw, server_text),
        // A column of pseudo-type anyarray (pg_stats.most_common_vals) can hold an array of any
        // type, and the server takes no anyarray parameter back: its binary form names the
        // element type, which decodes as usual.
        _ if *ty == Type::ANYARRAY => {
            let array = wire::array_from_sql(raw).map_err(|e| format!("decoding anyarray: {e}"))?;
            return decode_array(&type_of_oid(array.element_type()), raw, server_text);
        }
        Kind::Domain(base) => return decode_value(base, Some(raw), server_text),
        Kind::Enum(_) => V::StringValue(utf8(raw)?),
        _ if *ty == Type::BOOL => V::BoolValue(wire::bool_from_sql(raw).map_err(bad)?),
        _ if *ty == Type::INT2 => V::IntValue(wire::int2_from_sql(raw).map_err(bad)?.into()),
        _ if *ty == Type::INT4 => V::IntValue(wire::int4_from_sql(raw).map_err(bad)?.into()),
        _ if *ty == Type::INT8 => V::IntValue(wire::int8_from_sql(raw).map_err(bad)?),
        _ if *ty == Type::OID => V::IntValue(wire::oid_from_sql(raw).map_err(bad)?.into()),
        _ if *ty == Type::FLOAT4 => V::DoubleValue(wire::float4_from_sql(raw).map_err(bad)?.into()),
        _ if *ty == Type::FLOAT8 => V::DoubleValue(wire::float8_from_sql(raw).map_err(bad)?),
        _ if *ty == Type::BYTEA => V::BytesValue(raw.to_vec()),
        _ if *ty == Type::JSONB => match raw.split_first() {
            // jsonb's binary form is a version byte (1) and then its text.
            Some((1, text)) => V::StringValue(utf8(text)?),
            _ => V::StringValue(server_text(ty, raw)?),
        },
        _ if *ty == Type::UUID => V::StringValue(uuid_text(raw)?),
        _ if *ty == Type::NUMERIC => V::StringValue(numeric_text(raw)?),
        // Its binary form keeps a char(n)'s padding; `::text` of it (the cast is rtrim1) drops
        // the trailing spaces.
        _ if *ty == Type::BPCHAR => V::StringValue(utf8(trim_padding(raw))?),
        _ if !needs_server_text(ty) => V::StringValue(utf8(raw)?),
        _ => V::StringValue(server_text(ty, raw)?),
    };
    Ok(proto::Value { kind: Some(kind) })
}

fn decode_array<'a>(
    element: &Type,
    raw: &'a [u8],
    server_text: &mut ServerText<'a, '_>,
) -> Result<proto::Value, String> {
    let array = wire::array_from_sql(raw).map_err(|e| format!("decoding array: {e}"))?;
    let dimensions: Vec<usize> = array
        .dimensions()
        .map(|d| Ok(usize::try_from(d.len).unwrap_or(0)))
        .collect()
        .map_err(|e| format!("decoding array: {e}"))?;
    let mut flat = Vec::new();
    let mut values = array.values();
    while let Some(value) = values.next().map_err(|e| format!("decoding array: {e}"))? {
        flat.push(decode_value(element, value, server_text)?);
    }
    // A multi-dimensional array becomes arrays of arrays, outermost dimension first.
    let mut flat = flat.into_iter();
    Ok(nest(&dimensions, &mut flat))
}

fn nest(dimensions: &[usize], flat: &mut impl Iterator<Item = proto::Value>) -> proto::Value {
    let values = match dimensions.split_first() {
        None => Vec::new(),
        Some((&len, [])) => flat.take(len).collect(),
        Some((&len, inner)) => (0..len).map(|_| nest(inner, flat)).collect(),
    };
    proto::Value {
        kind: Some(V::ArrayValue(proto::ArrayValue { values })),
    }
}
