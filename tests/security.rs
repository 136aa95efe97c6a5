//! Security: who may call (tokens, JWTs), row-level security per JWT caller, limits, and
//! secrets kept out of logs and metrics.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgway::proto::{
    self, InteractiveTransactionRequest, TransactionRequest,
    interactive_transaction_request::Action, interactive_transaction_response::Event, value::Kind,
};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVICE_TOKEN: &str = "svc-token-0123456789abcdef";
const OTHER_TOKEN: &str = "other-token-0123456789abcdef";
const SECRET: &str = "a-test-jwt-secret-of-at-least-32-bytes!";

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `message` with `authorization: Bearer <credential>`.
fn bearer<T>(message: T, credential: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    request
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn user(role: &str, sub: &str) -> serde_json::Value {
    json!({"role": role, "sub": sub, "exp": now() + 600})
}

fn texts(response: &proto::QueryResponse) -> Vec<String> {
    response
        .rows
        .iter()
        .map(|row| match &row.values[0].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

async fn query_as(
    client: &mut proto::database_client::DatabaseClient<tonic::transport::Channel>,
    credential: &str,
    sql: &str,
) -> Result<proto::QueryResponse, tonic::Status> {
    client
        .query(bearer(query(sql, vec![]), credential))
        .await
        .map(|r| r.into_inner())
}

/// Refused calls are answered from memory: with the database down, a call without valid
/// credentials still gets UNAUTHENTICATED (not UNAVAILABLE), and health stays open to probes.
#[tokio::test]
async fn tokens_let_in_only_known_callers_without_a_database_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("# services\n{SERVICE_TOKEN}\n"),
    );
    let unreachable = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let gw = Gateway::serving(
        &unreachable,
        "postgres".into(),
        &[
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
            "--acquire-timeout",
            "300ms",
        ],
    )
    .await;
    let mut client = gw.client().await;

    let status = client.query(query("SELECT 1", vec![])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Bearer"), "{status:?}");
    for credential in [OTHER_TOKEN, "", "not.a.jwt"] {
        let status = query_as(&mut client, credential, "SELECT 1")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{credential:?}");
        assert!(!status.message().contains(OTHER_TOKEN));
    }
    let mut basic = Request::new(query("SELECT 1", vec![]));
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        client.query(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // The right token gets past authentication, to the (missing) database.
    let status = query_as(&mut client, SERVICE_TOKEN, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Liveness needs no credentials.
    let mut health = HealthClient::new(gw.channel().await);
    let reply = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, 1, "SERVING");
    assert!(
        gw.metric("pgway_auth_failures_total{reason=\"missing\"}")
            .await
            >= 1.0
    );
    assert!(
        gw.metric("pgway_auth_failures_total{reason=\"unknown_token\"}")
            .await
            >= 1.0
    );
}

/// Health can be closed to callers without credentials too.
#[tokio::test]
async fn health_can_require_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", SERVICE_TOKEN);
    let gw = Gateway::with_settings(&[
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--auth-public-health",
        "false",
    ])
    .await;
    let mut health = HealthClient::new(gw.channel().await);
    let request = || HealthCheckRequest {
        service: String::new(),
    };
    let status = health.check(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let reply = health
        .check(bearer(request(), SERVICE_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, 1);
}

/// A new tokens file takes effect without a restart; a broken one keeps the last good tokens.
#[tokio::test]
async fn tokens_reload_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", SERVICE_TOKEN);
    let gw = Gateway::with_settings(&[
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--auth-reload-interval",
        "100ms",
    ])
    .await;
    let mut client = gw.client().await;
    query_as(&mut client, SERVICE_TOKEN, "SELECT 1")
        .await
        .unwrap();

    std::fs::write(&tokens, format!("{OTHER_TOKEN}\n")).unwrap();
    eventually(Duration::from_secs(10), "the new token is accepted", || {
        let mut client = client.clone();
        async move { query_as(&mut client, OTHER_TOKEN, "SELECT 1").await.is_ok() }
    })
    .await;
    let status = query_as(&mut client, SERVICE_TOKEN, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let errors = "pgway_auth_reloads_total{setting=\"PGWAY_AUTH_TOKENS_FILE\",outcome=\"error\"}";
    let before = gw.metric(errors).await;
    std::fs::write(&tokens, "short\n").unwrap();
    eventually(
        Duration::from_secs(10),
        "the broken file is seen",
        || async { gw.metric(errors).await > before },
    )
    .await;
    query_as(&mut client, OTHER_TOKEN, "SELECT 1")
        .await
        .expect("the last good tokens stay in force");
}

/// The checks on a JWT: signature, expiry, not-before, audience, issuer, algorithm, role.
#[tokio::test]
async fn jwts_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret", &format!("{SECRET}\n"));
    let gw = Gateway::with_settings(&[
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-allowed-roles",
        "pg_read_all_data,pg_monitor",
        "--jwt-audience",
        "pgway-tests",
        "--jwt-issuer",
        "https://auth.example",
        "--jwt-leeway",
        "1s",
    ])
    .await;
    let mut client = gw.client().await;
    let claims = |extra: serde_json::Value| {
        let mut base = json!({
            "role": "pg_read_all_data", "sub": "u1", "aud": "pgway-tests",
            "iss": "https://auth.example", "exp": now() + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    };

    let good = hs256(SECRET, claims(json!({})));
    let response = query_as(&mut client, &good, "SELECT current_user::text")
        .await
        .unwrap();
    assert_eq!(texts(&response), ["pg_read_all_data"]);

    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let unauthenticated = [
        ("expired", hs256(SECRET, claims(json!({"exp": now() - 60})))),
        ("no exp", hs256(SECRET, claims(json!({"exp": null})))),
        (
            "not yet",
            hs256(SECRET, claims(json!({"nbf": now() + 600}))),
        ),
        (
            "other secret",
            hs256("another-secret-that-is-long-enough-1234", claims(json!({}))),
        ),
        (
            "audience",
            hs256(SECRET, claims(json!({"aud": "someone-else"}))),
        ),
        ("no audience", hs256(SECRET, claims(json!({"aud": null})))),
        (
            "issuer",
            hs256(SECRET, claims(json!({"iss": "https://evil.example"}))),
        ),
        ("alg none", none_alg),
        ("tampered", {
            let (head, rest) = good.split_once('.').unwrap();
            let (_, signature) = rest.split_once('.').unwrap();
            let payload = URL_SAFE_NO_PAD.encode(claims(json!({"role": "pg_monitor"})).to_string());
            format!("{head}.{payload}.{signature}")
        }),
    ];
    for (what, token) in unauthenticated {
        let status = query_as(&mut client, &token, "SELECT 1").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    for (what, token) in [
        (
            "role off the list",
            hs256(SECRET, claims(json!({"role": "postgres"}))),
        ),
        ("no role", hs256(SECRET, claims(json!({"role": null})))),
    ] {
        let status = query_as(&mut client, &token, "SELECT 1").await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    }
}

/// A JWT verified once is not checked again on every call, but only while the secret that
/// verified it is in force and the token hasn't expired: a rotated secret or an `exp` that
/// passed refuses it at once.
#[tokio::test]
async fn verified_jwts_are_kept_only_while_their_secret_and_expiry_hold() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret", SECRET);
    let gw = Gateway::with_settings(&[
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-allowed-roles",
        "pg_read_all_data",
        "--jwt-leeway",
        "0s",
        "--auth-reload-interval",
        "100ms",
    ])
    .await;
    let mut client = gw.client().await;
    let whoami = "SELECT current_user::text";

    // Expires in two seconds: accepted (twice, the second time as already verified), then
    // refused once the clock passes its exp.
    let short = hs256(
        SECRET,
        json!({"role": "pg_read_all_data", "sub": "u1", "exp": now() + 2}),
    );
    for _ in 0..2 {
        let response = query_as(&mut client, &short, whoami).await.unwrap();
        assert_eq!(texts(&response), ["pg_read_all_data"]);
    }
    eventually(Duration::from_secs(10), "the token expires", || {
        let mut client = client.clone();
        let short = short.clone();
        async move {
            query_as(&mut client, &short, whoami).await.is_err_and(|s| {
                s.code() == Code::Unauthenticated && s.message().contains("expired")
            })
        }
    })
    .await;

    // Rotating the secret: the token it verified is refused from then on.
    let token = hs256(SECRET, user("pg_read_all_data", "u2"));
    query_as(&mut client, &token, whoami).await.unwrap();
    std::fs::write(&secret, "another-secret-that-is-long-enough-1234").unwrap();
    eventually(
        Duration::from_secs(10),
        "the old secret's token is refused",
        || {
            let mut client = client.clone();
            let token = token.clone();
            async move {
                query_as(&mut client, &token, whoami).await.is_err_and(|s| {
                    s.code() == Code::Unauthenticated && s.message().contains("signature")
                })
            }
        },
    )
    .await;
}

/// ES256 keys from a JWKS file; an HS256 token "signed" with the public key is refused
/// (algorithm confusion), as is a token for a key that isn't in the set.
#[tokio::test]
async fn jwks_keys_decide_the_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    });
    let jwks = write(
        dir.path(),
        "jwks.json",
        &json!({"keys": [jwk.clone()]}).to_string(),
    );
    let gw = Gateway::with_settings(&[
        "--jwt-jwks-file",
        jwks.to_str().unwrap(),
        "--jwt-allowed-roles",
        "pg_read_all_data",
    ])
    .await;
    let mut client = gw.client().await;
    let es256 = |kid: &str, signer: &rcgen::KeyPair| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &user("pg_read_all_data", "u1"),
            &EncodingKey::from_ec_der(&signer.serialize_der()),
        )
        .unwrap()
    };
    let response = query_as(&mut client, &es256("k1", &key), "SELECT current_user::text")
        .await
        .unwrap();
    assert_eq!(texts(&response), ["pg_read_all_data"]);

    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let confused = [
        hs256(&jwk.to_string(), user("pg_read_all_data", "u1")),
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &user("pg_read_all_data", "u1"),
            &EncodingKey::from_secret(point),
        )
        .unwrap(),
        es256("k1", &stranger),
        es256("k2", &key),
    ];
    for token in confused {
        let status = query_as(&mut client, &token, "SELECT 1").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
}

/// RS256 keys from a JWKS file, picked by `kid`; a token signed by another RSA key is refused.
#[tokio::test]
async fn rs256_tokens_are_checked_against_the_jwks() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    let key = || {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = key.to_pkcs1_der().unwrap().as_bytes().to_vec();
        (key, der)
    };
    let (public, signer) = key();
    let (_, stranger) = key();
    let jwk = json!({
        "kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
    });
    let dir = tempfile::tempdir().unwrap();
    let jwks = write(dir.path(), "jwks.json", &json!({"keys": [jwk]}).to_string());
    let gw = Gateway::with_settings(&[
        "--jwt-jwks-file",
        jwks.to_str().unwrap(),
        "--jwt-allowed-roles",
        "pg_read_all_data",
    ])
    .await;
    let mut client = gw.client().await;
    let rs256 = |der: &[u8]| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("r1".into());
        jsonwebtoken::encode(
            &header,
            &user("pg_read_all_data", "u1"),
            &EncodingKey::from_rsa_der(der),
        )
        .unwrap()
    };
    let response = query_as(&mut client, &rs256(&signer), "SELECT current_user::text")
        .await
        .unwrap();
    assert_eq!(texts(&response), ["pg_read_all_data"]);
    let status = query_as(&mut client, &rs256(&stranger), "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// The Supabase recipe end to end: the gateway logs in as `authenticator`, each JWT caller
/// runs as its role with its claims, RLS policies keep alice and bob apart over every RPC, a
/// caller can't change who it is, and nothing of a caller's identity stays on the connection.
#[tokio::test]
async fn row_level_security_keeps_callers_apart() {
    let pg = postgres().await;
    let admin = connect(&pg.url("postgres")).await;
    let database = format!("rls_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    admin
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
                 CREATE ROLE authenticator LOGIN NOINHERIT;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
                 CREATE ROLE anon NOLOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
                 CREATE ROLE authenticated NOLOGIN;
               END IF;
               -- Allowed by the gateway, but not granted to authenticator.
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ungranted') THEN
                 CREATE ROLE ungranted NOLOGIN;
               END IF;
             END $$;
             GRANT anon, authenticated TO authenticator;",
        )
        .await
        .unwrap();
    let db = connect(&pg.url(&database)).await;
    db.batch_execute(
        "CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_notes ON notes FOR ALL TO authenticated
           USING (owner = current_setting('request.jwt.claims', true)::json ->> 'sub')
           WITH CHECK (owner = current_setting('request.jwt.claims', true)::json ->> 'sub');
         GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO authenticated;
         GRANT SELECT ON notes TO anon;
         GRANT USAGE ON SEQUENCE notes_id_seq TO authenticated;
         INSERT INTO notes (owner, body) VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1');
         -- A helper a DBA might write, which the statement filter can't see into.
         CREATE FUNCTION impersonate(sub text) RETURNS text LANGUAGE sql AS
           $f$ SELECT set_config('request.jwt.claims', json_build_object('sub', sub)::text, true) $f$;",
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "secret", SECRET);
    let tokens = write(dir.path(), "tokens", SERVICE_TOKEN);
    let url = pg.url(&database).replace("postgres@", "authenticator@");
    // One connection, so every caller below reuses the same session.
    let gw = Gateway::serving(
        &url,
        database.clone(),
        &[
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--jwt-allowed-roles",
            "anon,authenticated,ungranted",
            "--auth-tokens-file",
            tokens.to_str().unwrap(),
            "--pool-min",
            "1",
            "--pool-max",
            "1",
        ],
    )
    .await;
    let mut client = gw.client().await;
    let alice = hs256(SECRET, user("authenticated", "alice"));
    let bob = hs256(SECRET, user("authenticated", "bob"));
    let anon = hs256(SECRET, json!({"role": "anon", "exp": now() + 600}));
    let notes = "SELECT body FROM notes ORDER BY body";

    for _ in 0..3 {
        assert_eq!(
            texts(&query_as(&mut client, &alice, notes).await.unwrap()),
            ["a1", "a2"]
        );
        assert_eq!(
            texts(&query_as(&mut client, &bob, notes).await.unwrap()),
            ["b1"]
        );
        assert!(
            query_as(&mut client, &anon, notes)
                .await
                .unwrap()
                .rows
                .is_empty()
        );
    }

    // QueryStream.
    let mut stream = client
        .query_stream(bearer(query(notes, vec![]), &bob))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        for row in message.rows {
            if let Some(Kind::StringValue(s)) = &row.values[0].kind {
                streamed.push(s.clone());
            }
        }
    }
    assert_eq!(streamed, ["b1"]);

    // Transaction: alice writes her own note; bob may not write one in alice's name.
    let insert = |owner: &str, body: &str| proto::Statement {
        sql: "INSERT INTO notes (owner, body) VALUES ($1, $2)".into(),
        params: vec![text(owner), text(body)],
    };
    let count = proto::Statement {
        sql: "SELECT count(*)::text FROM notes".into(),
        params: vec![],
    };
    let reply = client
        .transaction(bearer(
            TransactionRequest {
                statements: vec![insert("alice", "a3"), count.clone()],
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(texts(&reply.results[1]), ["3"]);
    let status = client
        .transaction(bearer(
            TransactionRequest {
                statements: vec![insert("alice", "forged")],
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // InteractiveTransaction as bob.
    let (sender, receiver) = mpsc::channel(4);
    let mut events = client
        .interactive_transaction(bearer(ReceiverStream::new(receiver), &bob))
        .await
        .unwrap()
        .into_inner();
    let send = |action| InteractiveTransactionRequest {
        action: Some(action),
    };
    sender
        .send(send(Action::Begin(Default::default())))
        .await
        .unwrap();
    assert!(matches!(
        events.message().await.unwrap().unwrap().event,
        Some(Event::Begun(_))
    ));
    sender
        .send(send(Action::Statement(proto::Statement {
            sql: "SELECT current_user || ':' || count(*) FROM notes".into(),
            params: vec![],
        })))
        .await
        .unwrap();
    match events.message().await.unwrap().unwrap().event {
        Some(Event::Result(result)) => assert_eq!(texts(&result), ["authenticated:1"]),
        other => panic!("{other:?}"),
    }
    // Trying to become alice ends the transaction.
    sender
        .send(send(Action::Statement(proto::Statement {
            sql: "SELECT impersonate('alice')".into(),
            params: vec![],
        })))
        .await
        .unwrap();
    let status = events.message().await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A caller can't change who it is, whether the statement says so or hides it.
    for sql in [
        "SET ROLE authenticator",
        "RESET ROLE",
        "SELECT set_config('request.jwt.claims', '{\"sub\":\"alice\"}', true)",
        "SELECT set_config('role', 'anon', true)",
        "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
        "SELECT impersonate('alice'), (SELECT count(*) FROM notes)",
    ] {
        let status = query_as(&mut client, &bob, sql).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{sql}: {status:?}");
    }
    assert_eq!(
        texts(&query_as(&mut client, &bob, notes).await.unwrap()),
        ["b1"]
    );

    // A role the database won't let pgway become: its BEGIN batch fails, the statement never
    // runs, read or write, and the connection is fit for the next caller.
    let ungranted = hs256(SECRET, user("ungranted", "mallory"));
    for sql in [notes, "SELECT 1"] {
        let status = query_as(&mut client, &ungranted, sql).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{sql}: {status:?}");
    }
    let status = client
        .transaction(bearer(
            TransactionRequest {
                statements: vec![insert("mallory", "m1")],
                ..Default::default()
            },
            &ungranted,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        texts(&query_as(&mut client, &bob, notes).await.unwrap()),
        ["b1"]
    );

    // The token caller on the same connection runs as the gateway's own role, with no claims.
    let response = query_as(
        &mut client,
        SERVICE_TOKEN,
        "SELECT current_user || '|' || coalesce(current_setting('request.jwt.claims', true), '')",
    )
    .await
    .unwrap();
    assert_eq!(texts(&response), ["authenticator|"]);
    let total: i64 = db
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 4, "only alice's a3 was added");
    drop(gw);
}

/// Caps on what a request may carry and what one caller may hold.
#[tokio::test]
async fn limits_refuse_early_and_spare_other_callers() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("{SERVICE_TOKEN}\n{OTHER_TOKEN}\n"),
    );
    let gw = Gateway::with_settings(&[
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--max-sql-bytes",
        "64",
        "--max-params",
        "3",
        "--max-request-bytes",
        "2KiB",
        "--max-calls-per-caller",
        "2",
        "--max-transactions-per-caller",
        "1",
        "--statement-timeout",
        "7s",
    ])
    .await;
    let mut client = gw.client().await;

    let long = format!("SELECT 1 /* {} */", "x".repeat(100));
    let status = query_as(&mut client, SERVICE_TOKEN, &long)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "REQUEST_TOO_LARGE");
    let status = client
        .query(bearer(
            query(
                "SELECT $1, $2, $3, $4",
                vec![int(1), int(2), int(3), int(4)],
            ),
            SERVICE_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "REQUEST_TOO_LARGE", "{status:?}");
    let status = client
        .query(bearer(
            query("SELECT length($1)", vec![text(&"y".repeat(4096))]),
            SERVICE_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let response = query_as(&mut client, SERVICE_TOKEN, "SHOW statement_timeout")
        .await
        .unwrap();
    assert_eq!(texts(&response), ["7s"]);

    // One open interactive transaction per caller.
    let open = |credential: &str| {
        let (sender, receiver) = mpsc::channel(4);
        let request = bearer(ReceiverStream::new(receiver), credential);
        (sender, request)
    };
    let (first, request) = open(SERVICE_TOKEN);
    first
        .send(InteractiveTransactionRequest {
            action: Some(Action::Begin(Default::default())),
        })
        .await
        .unwrap();
    let mut first_events = client
        .interactive_transaction(request)
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        first_events.message().await.unwrap().unwrap().event,
        Some(Event::Begun(_))
    ));
    let (_second, request) = open(SERVICE_TOKEN);
    let status = client.interactive_transaction(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "CALLER_LIMIT");
    // Another caller is not affected.
    let (other, request) = open(OTHER_TOKEN);
    other
        .send(InteractiveTransactionRequest {
            action: Some(Action::Begin(Default::default())),
        })
        .await
        .unwrap();
    let mut other_events = client
        .interactive_transaction(request)
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        other_events.message().await.unwrap().unwrap().event,
        Some(Event::Begun(_))
    ));

    // Two calls in flight per caller: the open transaction and an unread stream.
    let stream = client
        .query_stream(bearer(
            query(
                "SELECT repeat('z', 1000) FROM generate_series(1, 100000)",
                vec![],
            ),
            SERVICE_TOKEN,
        ))
        .await
        .unwrap();
    let status = query_as(&mut client, SERVICE_TOKEN, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    query_as(&mut client, OTHER_TOKEN, "SELECT 1")
        .await
        .unwrap();
    drop(stream);
    drop(first);
    drop(first_events);
    eventually(
        Duration::from_secs(10),
        "the caller's places come back",
        || {
            let mut client = client.clone();
            async move {
                query_as(&mut client, SERVICE_TOKEN, "SELECT 1")
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    drop(other);
}

/// Database passwords, tokens, JWTs, secrets and parameter values appear in no log line (at
/// trace level) and no metric.
#[tokio::test]
async fn secrets_stay_out_of_logs_and_metrics() {
    let pg = postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "TOKENMARKER-0123456789abcdef";
    let wrong = "WRONGMARKER-0123456789abcdef";
    let secret = "SECRETMARKER-0123456789abcdef-0123456789";
    let password = "PASSWORDMARKER";
    let param = "PARAMMARKER";
    let tokens = write(dir.path(), "tokens", token);
    let secret_file = write(dir.path(), "secret", secret);
    let jwt = hs256(secret, user("pg_read_all_data", "someone"));
    let grpc = free_port();
    let metrics = free_port();
    let url = pg
        .url("postgres")
        .replace("postgres@", &format!("postgres:{password}@"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgway"))
        .env("PGWAY_DATABASE_URL", &url)
        .env("PGWAY_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("PGWAY_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
        .env("PGWAY_PG_ADDR", "")
        .env("PGWAY_AUTH_TOKENS_FILE", &tokens)
        .env("PGWAY_JWT_SECRET_FILE", &secret_file)
        .env("PGWAY_JWT_ALLOWED_ROLES", "pg_read_all_data")
        .env("PGWAY_LOG_FORMAT", "json")
        .env("PGWAY_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes: at trace level the log would fill the pipe and stall the gateway.
    let readers = [
        drain(child.stdout.take().unwrap()),
        drain(child.stderr.take().unwrap()),
    ];
    let channel = connect_when_up(&format!("127.0.0.1:{grpc}")).await;
    let mut client = proto::database_client::DatabaseClient::new(channel);
    for credential in [token, jwt.as_str()] {
        let reply = client
            .query(bearer(
                query("SELECT $1::text", vec![text(param)]),
                credential,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(scalar(&reply), Some(Kind::StringValue(param.into())));
        // A failing statement: the value is in PostgreSQL's answer to its caller only.
        let _ = client
            .query(bearer(
                query("SELECT $1::int", vec![text(param)]),
                credential,
            ))
            .await
            .unwrap_err();
        let _ = client
            .transaction(bearer(
                TransactionRequest {
                    statements: vec![proto::Statement {
                        sql: "SELECT $1::text".into(),
                        params: vec![text(param)],
                    }],
                    ..Default::default()
                },
                credential,
            ))
            .await
            .unwrap();
    }
    let _ = query_as(&mut client, wrong, "SELECT 1").await.unwrap_err();
    let _ = query_as(&mut client, &format!("{jwt}x"), "SELECT 1")
        .await
        .unwrap_err();
    let scraped = reqwest_free_get(metrics).await;
    assert!(scraped.contains("pgway_requests_total"));

    drop(client);
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success());
    let logs: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(logs.contains("call finished"), "the log was written");
    for marker in [token, wrong, secret, password, param, jwt.as_str()] {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(marker))
            .take(3)
            .collect();
        assert!(leaks.is_empty(), "{marker} is in the log: {leaks:#?}");
        assert!(!scraped.contains(marker), "{marker} is in the metrics");
    }
    // Not even the JWT's signature part.
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature));
    // What the call lines name instead: the token by its fingerprint (the first 8 hex digits of
    // its SHA-256), the JWT by its role and subject.
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let fingerprint: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let callers: Vec<String> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"] == "call finished")
        .filter_map(|e| e["span"]["caller"].as_str().map(str::to_owned))
        .collect();
    for expected in [
        format!("token:{fingerprint}"),
        "jwt:pg_read_all_data:someone".to_owned(),
    ] {
        assert!(callers.contains(&expected), "{expected} not in {callers:?}");
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        text
    })
}

/// GET /metrics over a plain TCP socket.
async fn reqwest_free_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).await.unwrap();
    body
}

/// Nasty input gets a clean error (never INTERNAL or UNKNOWN, never a crash), and the gateway
/// keeps serving.
#[tokio::test]
async fn hostile_input_gets_clean_errors() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    run(&mut client, "CREATE TABLE precious (a int)", vec![]).await;

    let mut nested = int(1);
    // Deeper than PostgreSQL's 6 dimensions, within protobuf's nesting limit.
    for _ in 0..20 {
        nested = array(vec![nested]);
    }
    let cases: Vec<(&str, Vec<proto::Value>)> = vec![
        ("SELECT 1; DROP TABLE precious", vec![]),
        ("SELECT $1::int[]", vec![nested]),
        ("SELECT $1::int", vec![boolean(true)]),
        ("SELECT $1::uuid", vec![bytes(b"not a uuid")]),
        ("SELECT $1::int", vec![array(vec![int(1)])]),
        ("SELECT $1::int[]", vec![int(1)]),
        ("SELECT $1::int2", vec![int(1 << 40)]),
        ("SELECT $1::text", vec![text("a\0b")]),
        ("SELECT $1, $2", vec![int(1)]),
        (
            "SELECT $1::int[]",
            vec![array(vec![int(1), array(vec![int(2)])])],
        ),
        ("SELECT $1::int", vec![proto::Value { kind: None }]),
    ];
    for (sql, params) in cases {
        let status = client.query(query(sql, params)).await.unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition
            ),
            "{sql}: {status:?}"
        );
    }
    // Past protobuf's nesting limit, and a string that isn't UTF-8: the message itself is bad.
    let mut deep = int(1);
    for _ in 0..200 {
        deep = array(vec![deep]);
    }
    let status = client
        .query(query("SELECT $1", vec![deep]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() < 1000);
    // QueryRequest { sql: "SELECT '\xff'" } by hand: field 1, length 10.
    let raw = b"\x0a\x0aSELECT '\xff'".to_vec();
    let status = raw_call(gw.channel().await, "/pgway.v1.Database/Query", raw)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The multi-statement string ran nothing.
    run(&mut client, "SELECT count(*) FROM precious", vec![]).await;

    // A large array is fine.
    let big = array((0..200_000).map(int).collect());
    let response = run(
        &mut client,
        "SELECT cardinality($1::int8[])::int8",
        vec![big],
    )
    .await;
    assert_eq!(scalar(&response), Some(Kind::IntValue(200_000)));
}

/// Sends `body` as the protobuf message of a unary call, byte for byte.
async fn raw_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    struct Raw;
    struct RawEncoder;
    struct RawDecoder;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }
    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for RawDecoder {
        type Item = ();
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Self::Error> {
            let remaining = buf.remaining();
            buf.advance(remaining);
            Ok(Some(()))
        }
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(drop)
}
