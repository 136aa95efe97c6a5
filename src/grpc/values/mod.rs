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
//!
//! - `params`: protobuf values to statement parameters, checked against the inferred types.
//! - `rows`: result rows to protobuf rows, the binary values the gateway decodes itself.
//! - `text`: the text output of values: the gateway's own (uuid, numeric, char(n)) and the
//!   `value::text` round trip to the server for the rest.

mod params;
mod rows;
mod text;

pub use params::{Param, params_from_proto};
pub use rows::{RowDecoder, row_wire_size};
pub use text::TextSource;

use std::error::Error as StdError;

use tokio_postgres::types::{Kind, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

/// The type of an OID found inside a binary value. A type postgres-types doesn't know gets a
/// stand-in: only its OID is used, to have the server format the value.
fn type_of_oid(oid: u32) -> Type {
    Type::from_oid(oid)
        .unwrap_or_else(|| Type::new(String::new(), oid, Kind::Simple, String::new()))
}
