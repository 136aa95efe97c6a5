//! The text output of values: what PostgreSQL's output functions print for the types the
//! gateway formats itself (uuid, numeric, char(n)), and the `value::text` round trip that has
//! the server print every other type.

use std::fmt::Write as _;
use std::future::Future;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row, Transaction};

use super::{BoxError, type_of_oid};
use crate::core::error::GatewayError;

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

/// Asks the server for `value::text` of each pending value, in order.
pub(super) async fn server_texts<S: TextSource>(
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
            .map_err(|e| GatewayError::from_postgres(e, crate::core::error::Sent::No))?;
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

/// A `char(n)` value without its trailing spaces. On bytes, eight at a time: a space byte is
/// never part of a multi-byte UTF-8 character, and `str::trim_end_matches` walks characters
/// one by one (it was the costliest step of decoding a `char(84)` column).
pub(super) fn trim_padding(raw: &[u8]) -> &[u8] {
    let mut end = raw.len();
    while end >= 8 && raw[end - 8..end] == [b' '; 8] {
        end -= 8;
    }
    while end > 0 && raw[end - 1] == b' ' {
        end -= 1;
    }
    &raw[..end]
}

pub(super) fn uuid_text(raw: &[u8]) -> Result<String, String> {
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
pub(super) fn numeric_text(raw: &[u8]) -> Result<String, String> {
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
}
