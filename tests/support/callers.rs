//! Callers of the gRPC door with credentials: bearer tokens, JWTs signed for the tests, and
//! what they read back.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgway::proto::{self, value::Kind};
use serde_json::json;
use tonic::Request;

use super::query;

pub const SERVICE_TOKEN: &str = "svc-token-0123456789abcdef";
pub const OTHER_TOKEN: &str = "other-token-0123456789abcdef";
pub const SECRET: &str = "a-test-jwt-secret-of-at-least-32-bytes!";

pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `message` with `authorization: Bearer <credential>`.
pub fn bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    request
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn user(role: &str, sub: &str) -> serde_json::Value {
    json!({"role": role, "sub": sub, "exp": now() + 600})
}

pub fn texts(response: &proto::QueryResponse) -> Vec<String> {
    response
        .rows
        .iter()
        .map(|row| match &row.values[0].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

pub async fn query_as(
    client: &mut proto::database_client::DatabaseClient<tonic::transport::Channel>,
    credential: &str,
    sql: &str,
) -> Result<proto::QueryResponse, tonic::Status> {
    client
        .query(bearer(query(sql, vec![]), credential))
        .await
        .map(|r| r.into_inner())
}
