//! A caller's parameters, from raw protobuf bytes to PostgreSQL's wire format, against the
//! parameter types a statement may have: never a panic, only values or clean errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_postgres::types::{ToSql, Type};

const TYPES: &[Type] = &[
    Type::BOOL, Type::INT2, Type::INT4, Type::INT8, Type::FLOAT4, Type::FLOAT8, Type::NUMERIC,
    Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::BYTEA, Type::UUID, Type::JSON, Type::JSONB,
    Type::DATE, Type::TIME, Type::TIMESTAMP, Type::TIMESTAMPTZ, Type::INTERVAL, Type::INET,
    Type::OID, Type::CHAR, Type::MONEY, Type::BOOL_ARRAY, Type::INT2_ARRAY, Type::INT4_ARRAY,
    Type::INT8_ARRAY, Type::FLOAT8_ARRAY, Type::NUMERIC_ARRAY, Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY, Type::UUID_ARRAY, Type::JSONB_ARRAY, Type::TIMESTAMPTZ_ARRAY,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else { return };
    let Ok(request) = pgway::proto::QueryRequest::decode(message) else { return };
    let types: Vec<Type> = (0..request.params.len())
        .map(|i| TYPES[(usize::from(selector) + i * 7) % TYPES.len()].clone())
        .collect();
    if let Ok(params) = pgway::grpc::values::params_from_proto(&request.params, &types) {
        for (param, ty) in params.iter().zip(&types) {
            let mut buf = bytes::BytesMut::new();
            let _ = param.to_sql_checked(ty, &mut buf);
        }
    }
});
