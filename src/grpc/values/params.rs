//! Protobuf values to statement parameters, for the types PostgreSQL inferred: a
//! `string_value` goes in text format, the natural kinds are checked against the type.

use std::fmt::Write as _;

use bytes::BytesMut;
use postgres_protocol::types as wire;
use tokio_postgres::types::{Format, IsNull, Kind, ToSql, Type, to_sql_checked};

use super::BoxError;
use crate::core::error::GatewayError;
use crate::proto::{self, value::Kind as V};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(kind: V) -> proto::Value {
        proto::Value { kind: Some(kind) }
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
    fn floats_read_back_exactly() {
        assert_eq!(float_text(0.1), "0.1");
        assert_eq!(float_text(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(float_text(f64::NAN), "NaN");
    }
}
