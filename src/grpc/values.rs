//! Values, both ways: protobuf [`Value`](crate::proto::Value)s to PostgreSQL parameters
//! ([`params_from_proto`]) and result rows back to protobuf ([`RowDecoder`]).
//!
//! Parameters take the types PostgreSQL inferred for the statement. A `string_value` is sent in
//! text format, so it means the type's own input syntax and works for every type; the natural
//! kinds (int, double, bool, bytes, arrays) are checked against the type and never truncated.
//!
//! Results arrive in binary format. The types with a natural protobuf kind, and the ones whose
//! binary form is their text (text, json, enums, ...), uuid and numeric are decoded here. Every
//! other type (timestamps, intervals, money, ranges, composites, extension types, ...) depends on
//! session settings or has a layout only the server knows, so its text comes from the server
//! itself: the binary values of a batch are sent back as typed parameters of one
//! `SELECT $1::text, ...` and the answer is exactly PostgreSQL's own `value::text`. (An anonymous
//! record, which the server can't take back, goes as `ROW(...)` of its fields.)

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use tokio_postgres::types::{Format, FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row, Transaction};

use crate::core::error::GatewayError;
use crate::proto::{self, value::Kind as V};

type BoxError = Box<dyn StdError + Sync + Send>;

/// One statement parameter, ready to send.
#[derive(Debug, Clone)]
pub enum Param {
    Null,
    /// Sent in text format: the type's own input syntax.
    Text(String),
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Oid(u32),
    Float4(f32),
    Float8(f64),
    Bytea(Vec<u8>),
}

impl ToSql for Param {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Param::Null => return Ok(IsNull::Yes),
            Param::Text(text) => out.extend_from_slice(text.as_bytes()),
            Param::Bool(v) => wire::bool_to_sql(*v, out),
            Param::Int2(v) => wire::int2_to_sql(*v, out),
            Param::Int4(v) => wire::int4_to_sql(*v, out),
            Param::Int8(v) => wire::int8_to_sql(*v, out),
            Param::Oid(v) => wire::oid_to_sql(*v, out),
            Param::Float4(v) => wire::float4_to_sql(*v, out),
            Param::Float8(v) => wire::float8_to_sql(*v, out),
            Param::Bytea(v) => wire::bytea_to_sql(v, out),
        }
        Ok(IsNull::No)
    }

    /// Every parameter was checked against its type in [`params_from_proto`].
    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Text(_) => Format::Text,
            _ => Format::Binary,
        }
    }

    to_sql_checked!();
}

/// Converts the request's values to parameters for a statement whose parameter types
/// PostgreSQL inferred as `types`. Errors name the parameter (`$1`) and its type.
pub fn params_from_proto(
    values: &[proto::Value],
    types: &[Type],
) -> Result<Vec<Param>, GatewayError> {
    if values.len() != types.len() {
        // Name the first parameter left without a value, as the other errors name theirs.
        let missing = types
            .get(values.len())
            .map(|ty| {
                format!(
                    " (no value for ${} of type {})",
                    values.len() + 1,
                    ty.name()
                )
            })
            .unwrap_or_default();
        return Err(GatewayError::InvalidArgument(format!(
            "the statement has {} parameter(s) but {} value(s) were given{missing}",
            types.len(),
            values.len()
        )));
    }
    values
        .iter()
        .zip(types)
        .enumerate()
        .map(|(index, (value, ty))| {
            param_from_proto(value, ty).map_err(|reason| {
                GatewayError::InvalidArgument(format!(
                    "parameter ${} (type {}): {reason}",
                    index + 1,
                    ty.name()
                ))
            })
        })
        .collect()
}

/// Domains take the values of their base type.
fn base_type(ty: &Type) -> &Type {
    match ty.kind() {
        Kind::Domain(base) => base_type(base),
        _ => ty,
    }
}

fn kind_name(kind: &V) -> &'static str {
    match kind {
        V::NullValue(_) => "null_value",
        V::BoolValue(_) => "bool_value",
        V::IntValue(_) => "int_value",
        V::DoubleValue(_) => "double_value",
        V::StringValue(_) => "string_value",
        V::BytesValue(_) => "bytes_value",
        V::ArrayValue(_) => "array_value",
    }
}

fn mismatch(kind: &V, ty: &Type) -> String {
    format!(
        "{} can't be used for type {}; send a string_value in the type's text syntax",
        kind_name(kind),
        ty.name()
    )
}

fn param_from_proto(value: &proto::Value, ty: &Type) -> Result<Param, String> {
    let kind = value
        .kind
        .as_ref()
        .ok_or("the Value has no field set (set exactly one of its kinds)")?;
    let base = base_type(ty);
    match kind {
        V::NullValue(_) => Ok(Param::Null),
        V::StringValue(text) => {
            check_no_nul(text)?;
            Ok(Param::Text(text.clone()))
        }
        V::BoolValue(v) if *base == Type::BOOL => Ok(Param::Bool(*v)),
        V::BytesValue(v) if *base == Type::BYTEA => Ok(Param::Bytea(v.clone())),
        V::IntValue(v) => int_param(*v, base).ok_or_else(|| int_error(*v, kind, base)),
        V::DoubleValue(v) => double_param(*v, base).ok_or_else(|| double_error(*v, kind, base)),
        V::ArrayValue(array) => match base.kind() {
            Kind::Array(element) => {
                let mut literal = String::new();
                array_literal(array, element, &mut literal, 1)?;
                Ok(Param::Text(literal))
            }
            _ => Err(mismatch(kind, base)),
        },
        V::BoolValue(_) | V::BytesValue(_) => Err(mismatch(kind, base)),
    }
}

/// PostgreSQL reads text parameters as C strings and refuses a NUL byte in any of them, with an
/// encoding error that can't say which parameter it was: refuse it here instead.
fn check_no_nul(text: &str) -> Result<(), String> {
    match text.find('\0') {
        Some(at) => Err(format!(
            "the string has a NUL byte at offset {at}, which no PostgreSQL text can hold"
        )),
        None => Ok(()),
    }
}

fn is_integer_type(ty: &Type) -> bool {
    [Type::INT2, Type::INT4, Type::INT8, Type::OID].contains(ty)
}

fn is_number_type(ty: &Type) -> bool {
    is_integer_type(ty) || [Type::NUMERIC, Type::FLOAT4, Type::FLOAT8].contains(ty)
}

/// An int for an integer, numeric or float type, or `None` when it doesn't fit exactly.
fn int_param(v: i64, ty: &Type) -> Option<Param> {
    if *ty == Type::INT2 {
        i16::try_from(v).ok().map(Param::Int2)
    } else if *ty == Type::INT4 {
        i32::try_from(v).ok().map(Param::Int4)
    } else if *ty == Type::INT8 {
        Some(Param::Int8(v))
    } else if *ty == Type::OID {
        u32::try_from(v).ok().map(Param::Oid)
    } else if *ty == Type::NUMERIC {
        Some(Param::Text(v.to_string()))
    } else if *ty == Type::FLOAT4 {
        // Only integers a float4 holds exactly (all up to 2^24, then fewer and fewer): anything
        // else would be silently rounded. Compared in i128 because `as i64` saturates: i64::MAX
        // rounds up to 2^63, which would come back as i64::MAX and pass.
        let f = v as f32;
        (f as i128 == i128::from(v)).then_some(Param::Float4(f))
    } else if *ty == Type::FLOAT8 {
        let f = v as f64;
        (f as i128 == i128::from(v)).then_some(Param::Float8(f))
    } else {
        None
    }
}

fn int_error(v: i64, kind: &V, ty: &Type) -> String {
    if is_number_type(ty) {
        format!(
            "{v} is out of range for {} (or not exactly representable)",
            ty.name()
        )
    } else {
        mismatch(kind, ty)
    }
}

/// A double for a float or numeric type; `None` when it is out of range.
fn double_param(v: f64, ty: &Type) -> Option<Param> {
    if *ty == Type::FLOAT8 {
        Some(Param::Float8(v))
    } else if *ty == Type::FLOAT4 {
        // A finite double beyond float4's range would become infinity, and a non-zero one below
        // its smallest subnormal would become 0: refuse both (float4in refuses them as text).
        let f = v as f32;
        let overflows = v.is_finite() && v.abs() > f64::from(f32::MAX);
        let underflows = v != 0.0 && f == 0.0;
        (!overflows && !underflows).then_some(Param::Float4(f))
    } else if *ty == Type::NUMERIC {
        Some(Param::Text(float_text(v)))
    } else {
        None
    }
}

fn double_error(v: f64, kind: &V, ty: &Type) -> String {
    if *ty == Type::FLOAT4 {
        format!("{v:e} is out of range for float4")
    } else {
        mismatch(kind, ty)
    }
}

/// A double in PostgreSQL's input syntax, exactly (Rust prints the shortest text that reads
/// back as the same double).
fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v}")
    }
}

/// PostgreSQL's MAXDIM: deeper arrays are refused before they are sent.
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Writes an array value in PostgreSQL's array input syntax (`{1,2,NULL}`, `{{"a"},{"b"}}`),
/// checking each element against the element type as a single parameter would be checked.
fn array_literal(
    array: &proto::ArrayValue,
    element: &Type,
    out: &mut String,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_ARRAY_DIMENSIONS {
        return Err(format!(
            "an array has at most {MAX_ARRAY_DIMENSIONS} dimensions (PostgreSQL's limit)"
        ));
    }
    let base = base_type(element);
    // Elements are separated by the element type's typdelim: ',' for every built-in type but
    // box, whose text has commas in it (the delimiter isn't settable for user-defined types).
    let delimiter = if *base == Type::BOX { ';' } else { ',' };
    out.push('{');
    for (i, value) in array.values.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        let kind = value
            .kind
            .as_ref()
            .ok_or_else(|| format!("array element {i} has no field set"))?;
        let in_element = |reason: String| format!("array element {i}: {reason}");
        match kind {
            V::NullValue(_) => out.push_str("NULL"),
            V::StringValue(text) => {
                check_no_nul(text).map_err(in_element)?;
                quote_element(text, out);
            }
            V::BoolValue(v) if *base == Type::BOOL => out.push(if *v { 't' } else { 'f' }),
            V::BytesValue(v) if *base == Type::BYTEA => {
                let mut hex = String::with_capacity(2 + v.len() * 2);
                hex.push_str("\\x");
                for byte in v {
                    // Writing to a String cannot fail.
                    let _ = write!(hex, "{byte:02x}");
                }
                quote_element(&hex, out);
            }
            V::IntValue(v) => {
                int_param(*v, base).ok_or_else(|| in_element(int_error(*v, kind, base)))?;
                let _ = write!(out, "{v}");
            }
            V::DoubleValue(v) => {
                double_param(*v, base).ok_or_else(|| in_element(double_error(*v, kind, base)))?;
                out.push_str(&float_text(*v));
            }
            // A nested array is the next dimension of the same array type.
            V::ArrayValue(inner) => {
                array_literal(inner, element, out, depth + 1).map_err(in_element)?
            }
            V::BoolValue(_) | V::BytesValue(_) => return Err(in_element(mismatch(kind, base))),
        }
    }
    out.push('}');
    Ok(())
}

fn quote_element(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

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

/// A binary value sent back to the server to have its text output made there.
#[derive(Debug)]
struct BinaryParam<'a>(Option<&'a [u8]>);

impl ToSql for BinaryParam<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self.0 {
            Some(raw) => out.extend_from_slice(raw),
            // A NULL field of a record.
            None => return Ok(IsNull::Yes),
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// What a statement can run the `value::text` round trip on: a client or a transaction.
pub trait TextSource: Sync {
    /// Runs a statement with explicitly typed parameters.
    fn query_typed_rows<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a;
}

impl TextSource for Client {
    fn query_typed_rows<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        self.query_typed(sql, params)
    }
}

impl TextSource for Transaction<'_> {
    fn query_typed_rows<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        self.query_typed(sql, params)
    }
}

/// Values per text round trip: well under the protocol's 65,535 parameters.
const SERVER_TEXT_CHUNK: usize = 1000;

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

/// Asks the server for `value::text` of each pending value, in order.
async fn server_texts<S: TextSource>(
    source: &S,
    pending: &[(Type, &[u8])],
) -> Result<Vec<String>, GatewayError> {
    let mut texts = Vec::with_capacity(pending.len());
    let mut rest = pending;
    while !rest.is_empty() {
        // One statement takes values until it has SERVER_TEXT_CHUNK of them or of parameters
        // (a record takes one per field).
        let mut sql = String::from("SELECT ");
        let mut values: Vec<(Type, Option<&[u8]>)> = Vec::new();
        let mut taken = 0;
        for (ty, raw) in rest {
            if taken == SERVER_TEXT_CHUNK || (taken > 0 && values.len() >= SERVER_TEXT_CHUNK) {
                break;
            }
            if taken > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            server_expr(ty, Some(raw), &mut sql, &mut values).map_err(GatewayError::Internal)?;
            sql.push_str(")::text");
            taken += 1;
        }
        if values.len() > usize::from(u16::MAX) {
            return Err(GatewayError::Internal(format!(
                "a record of {} values is too large to format",
                values.len()
            )));
        }
        let binary: Vec<BinaryParam> = values.iter().map(|(_, raw)| BinaryParam(*raw)).collect();
        let params: Vec<(&(dyn ToSql + Sync), Type)> = binary
            .iter()
            .zip(&values)
            .map(|(value, (ty, _))| (value as &(dyn ToSql + Sync), ty.clone()))
            .collect();
        let rows = source
            .query_typed_rows(&sql, &params)
            .await
            .map_err(|e| GatewayError::from_postgres(e, false))?;
        let row = rows
            .first()
            .ok_or_else(|| GatewayError::Internal("text conversion returned no row".into()))?;
        for column in 0..taken {
            let text: Option<String> = row
                .try_get(column)
                .map_err(|e| GatewayError::Internal(format!("text conversion: {e}")))?;
            texts.push(text.unwrap_or_default());
        }
        rest = &rest[taken..];
    }
    Ok(texts)
}

/// Writes the SQL for a binary value to be formatted by the server: a parameter of its type.
/// Except an anonymous record (`SELECT ROW(1, 'a')`, a whole row of a subquery), which the
/// server can't take as a parameter: record_recv needs a row type only a query defines. It
/// becomes `ROW(...)` of its fields, and an array of them `ARRAY[...]`: record_out prints that
/// exactly as it printed the original.
fn server_expr<'a>(
    ty: &Type,
    raw: Option<&'a [u8]>,
    sql: &mut String,
    values: &mut Vec<(Type, Option<&'a [u8]>)>,
) -> Result<(), String> {
    match raw {
        Some(raw) if *ty == Type::RECORD => {
            sql.push_str("ROW(");
            for (i, (oid, field)) in record_fields(raw)?.into_iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                // A literal's field (`ROW(1, 'a')`) is of type unknown, which a parameter can't
                // be: its binary form is its text, so it goes as text.
                let ty = match type_of_oid(oid) {
                    ty if ty == Type::UNKNOWN => Type::TEXT,
                    ty => ty,
                };
                server_expr(&ty, field, sql, values)?;
            }
            sql.push(')');
        }
        Some(raw) if *ty == Type::RECORD_ARRAY => {
            let bad = |e: BoxError| format!("decoding record[]: {e}");
            let array = wire::array_from_sql(raw).map_err(bad)?;
            let dimensions: Vec<wire::ArrayDimension> =
                array.dimensions().collect().map_err(bad)?;
            // An ARRAY[...] starts at 1; other bounds would print differently.
            if dimensions.iter().any(|d| d.lower_bound != 1) {
                return Err("an array of anonymous records not starting at 1".into());
            }
            let elements: Vec<Option<&[u8]>> = array.values().collect().map_err(bad)?;
            let mut elements = elements.into_iter();
            record_array_expr(&dimensions, &mut elements, sql, values)?;
        }
        _ => {
            values.push((ty.clone(), raw));
            let _ = write!(sql, "${}", values.len());
        }
    }
    Ok(())
}

fn record_array_expr<'a>(
    dimensions: &[wire::ArrayDimension],
    elements: &mut impl Iterator<Item = Option<&'a [u8]>>,
    sql: &mut String,
    values: &mut Vec<(Type, Option<&'a [u8]>)>,
) -> Result<(), String> {
    let Some((first, inner)) = dimensions.split_first() else {
        sql.push_str("ARRAY[]::record[]");
        return Ok(());
    };
    sql.push_str("ARRAY[");
    for i in 0..first.len {
        if i > 0 {
            sql.push_str(", ");
        }
        if inner.is_empty() {
            match elements.next().flatten() {
                Some(raw) => server_expr(&Type::RECORD, Some(raw), sql, values)?,
                None => sql.push_str("NULL::record"),
            }
        } else {
            record_array_expr(inner, elements, sql, values)?;
        }
    }
    sql.push(']');
    Ok(())
}

/// The type of an OID found inside a binary value. A type postgres-types doesn't know gets a
/// stand-in: only its OID is used, to have the server format the value.
fn type_of_oid(oid: u32) -> Type {
    Type::from_oid(oid)
        .unwrap_or_else(|| Type::new(String::new(), oid, Kind::Simple, String::new()))
}

/// A field of a record: its type's OID and its value (None for NULL).
type RecordField<'a> = (u32, Option<&'a [u8]>);

/// The fields of a record's binary form (record_send): their count, then for each its type's
/// OID and its value (length -1 for NULL).
fn record_fields(raw: &[u8]) -> Result<Vec<RecordField<'_>>, String> {
    let truncated = || "truncated record".to_owned();
    let word = |at: usize| -> Result<[u8; 4], String> {
        raw.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)
    };
    let count = i32::from_be_bytes(word(0)?);
    let mut at = 4;
    let mut fields = Vec::new();
    for _ in 0..count {
        let oid = u32::from_be_bytes(word(at)?);
        let len = i32::from_be_bytes(word(at + 4)?);
        at += 8;
        let value = match usize::try_from(len) {
            Ok(len) => {
                let value = raw.get(at..at + len).ok_or_else(truncated)?;
                at += len;
                Some(value)
            }
            Err(_) => None,
        };
        fields.push((oid, value));
    }
    Ok(fields)
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

/// A `char(n)` value without its trailing spaces. On bytes, eight at a time: a space byte is
/// never part of a multi-byte UTF-8 character, and `str::trim_end_matches` walks characters
/// one by one (it was the costliest step of decoding a `char(84)` column).
fn trim_padding(raw: &[u8]) -> &[u8] {
    let mut end = raw.len();
    while end >= 8 && raw[end - 8..end] == [b' '; 8] {
        end -= 8;
    }
    while end > 0 && raw[end - 1] == b' ' {
        end -= 1;
    }
    &raw[..end]
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

fn uuid_text(raw: &[u8]) -> Result<String, String> {
    if raw.len() != 16 {
        return Err(format!("uuid of {} bytes", raw.len()));
    }
    let mut text = String::with_capacity(36);
    for (i, byte) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        let _ = write!(text, "{byte:02x}");
    }
    Ok(text)
}

/// numeric's binary form: digit count, weight (of the first base-10000 digit), sign, display
/// scale, then base-10000 digits. The text is what numeric_out prints.
fn numeric_text(raw: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_owned())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = usize::from(word(6)?);
    let digits = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<u16>, _>>()?;
    let digit = |i: i64| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x4000 => text.push('-'),
        0x0000 => {}
        other => return Err(format!("numeric with sign {other:#x}")),
    }
    if weight < 0 {
        text.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(text, "{}", digit(i));
            } else {
                let _ = write!(text, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while fraction.len() < dscale {
            let _ = write!(fraction, "{:04}", digit(i));
            i += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(kind: V) -> proto::Value {
        proto::Value { kind: Some(kind) }
    }

    #[test]
    fn char_padding_is_trimmed_on_bytes() {
        for (raw, trimmed) in [
            ("", ""),
            ("        ", ""),
            ("ab", "ab"),
            ("a b   ", "a b"),
            ("é                 ", "é"),
            ("  lead, then 9 spaces         ", "  lead, then 9 spaces"),
        ] {
            assert_eq!(trim_padding(raw.as_bytes()), trimmed.as_bytes(), "{raw:?}");
        }
    }

    #[test]
    fn ints_are_range_checked() {
        assert!(matches!(
            param_from_proto(&value(V::IntValue(32767)), &Type::INT2),
            Ok(Param::Int2(32767))
        ));
        assert!(param_from_proto(&value(V::IntValue(32768)), &Type::INT2).is_err());
        assert!(param_from_proto(&value(V::IntValue(-1)), &Type::OID).is_err());
        assert!(param_from_proto(&value(V::IntValue((1 << 24) + 1)), &Type::FLOAT4).is_err());
        assert!(param_from_proto(&value(V::IntValue(5)), &Type::TEXT).is_err());
    }

    #[test]
    fn arrays_become_literals() {
        let array = proto::ArrayValue {
            values: vec![
                value(V::StringValue("a \"b\" \\c".into())),
                value(V::NullValue(0)),
            ],
        };
        let mut out = String::new();
        array_literal(&array, &Type::TEXT, &mut out, 1).expect("a text array");
        assert_eq!(out, r#"{"a \"b\" \\c",NULL}"#);
        let nested = proto::ArrayValue {
            values: vec![
                value(V::ArrayValue(proto::ArrayValue {
                    values: vec![value(V::IntValue(1))],
                })),
                value(V::ArrayValue(proto::ArrayValue {
                    values: vec![value(V::IntValue(2))],
                })),
            ],
        };
        let mut out = String::new();
        array_literal(&nested, &Type::INT4, &mut out, 1).expect("a 2-D int array");
        assert_eq!(out, "{{1},{2}}");
    }

    #[test]
    fn numerics_print_like_postgres() {
        // 12345.678: weight 1, digits [1, 2345, 6780], dscale 3.
        let mut raw = Vec::new();
        for word in [3u16, 1, 0, 3, 1, 2345, 6780] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(numeric_text(&raw).expect("12345.678"), "12345.678");
        // -0.00001: weight -2, digits [1000], dscale 5.
        let mut raw = Vec::new();
        for word in [1u16, (-2i16) as u16, 0x4000, 5, 1000] {
            raw.extend_from_slice(&word.to_be_bytes());
        }
        assert_eq!(numeric_text(&raw).expect("-0.00001"), "-0.00001");
    }

    #[test]
    fn floats_read_back_exactly() {
        assert_eq!(float_text(0.1), "0.1");
        assert_eq!(float_text(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(float_text(f64::NAN), "NaN");
    }
}
