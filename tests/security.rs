//! Security: who may call (tokens, JWTs), row-level security per JWT caller, limits, and
//! secrets kept out of logs and metrics.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgway::proto::{
    self, InteractiveTransactionRequest, TransactionRequest,
    interactive_transaction_request::Action, interactive_transaction_response::Event, value::Kind,
};
use serde_json::json;
use support::callers::*;
use support::types::DbClient;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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
    let db = create_roles_and_notes(pg, &admin, &database).await;

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

    every_caller_reads_only_its_own_notes(&mut client, &alice, &bob, &anon, notes).await;
    transactions_write_only_in_the_callers_name(&mut client, &alice, &bob).await;
    an_interactive_transaction_cannot_become_another_caller(&mut client, &bob).await;
    a_caller_cannot_change_who_it_is(&mut client, &bob, notes).await;
    an_ungranted_role_is_refused_and_spares_the_connection(&mut client, &bob, notes).await;
    the_token_caller_runs_as_the_gateway_with_no_claims(&mut client, &db).await;
    drop(gw);
}

/// The RLS test's database `database`: the Supabase roles (and `ungranted`, which
/// authenticator may not become), and a `notes` table whose policy lets each JWT caller see and
/// write only its own notes. Returns a superuser connection to it.
async fn create_roles_and_notes(
    pg: &pgway::devdb::TempPostgres,
    admin: &tokio_postgres::Client,
    database: &str,
) -> tokio_postgres::Client {
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
    let db = connect(&pg.url(database)).await;
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
    db
}

/// A statement inserting a note of `owner` saying `body`.
fn insert(owner: &str, body: &str) -> proto::Statement {
    proto::Statement {
        sql: "INSERT INTO notes (owner, body) VALUES ($1, $2)".into(),
        params: vec![text(owner), text(body)],
    }
}

/// Over Query (three times, on the one session) alice sees only hers, bob only his and anon
/// none; over QueryStream bob sees only his.
async fn every_caller_reads_only_its_own_notes(
    client: &mut DbClient,
    alice: &str,
    bob: &str,
    anon: &str,
    notes: &str,
) {
    for _ in 0..3 {
        assert_eq!(
            texts(&query_as(client, alice, notes).await.unwrap()),
            ["a1", "a2"]
        );
        assert_eq!(texts(&query_as(client, bob, notes).await.unwrap()), ["b1"]);
        assert!(query_as(client, anon, notes).await.unwrap().rows.is_empty());
    }

    // QueryStream.
    let mut stream = client
        .query_stream(bearer(query(notes, vec![]), bob))
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
}

/// Transaction: alice's insert of her own note is counted; bob's in alice's name is
/// PERMISSION_DENIED.
async fn transactions_write_only_in_the_callers_name(
    client: &mut DbClient,
    alice: &str,
    bob: &str,
) {
    // Transaction: alice writes her own note; bob may not write one in alice's name.
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
            alice,
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
            bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// InteractiveTransaction as bob runs as `authenticated` and sees his one note; calling a
/// function that would make him alice ends the transaction with PERMISSION_DENIED.
async fn an_interactive_transaction_cannot_become_another_caller(client: &mut DbClient, bob: &str) {
    // InteractiveTransaction as bob.
    let (sender, receiver) = mpsc::channel(4);
    let mut events = client
        .interactive_transaction(bearer(ReceiverStream::new(receiver), bob))
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
}

/// Changing role or claims, said outright or hidden in a function or DO block, is
/// PERMISSION_DENIED, and bob still sees only his note after.
async fn a_caller_cannot_change_who_it_is(client: &mut DbClient, bob: &str, notes: &str) {
    // A caller can't change who it is, whether the statement says so or hides it.
    for sql in [
        "SET ROLE authenticator",
        "RESET ROLE",
        "SELECT set_config('request.jwt.claims', '{\"sub\":\"alice\"}', true)",
        "SELECT set_config('role', 'anon', true)",
        "DO $$ BEGIN EXECUTE 'RESET ROLE'; END $$",
        "SELECT impersonate('alice'), (SELECT count(*) FROM notes)",
    ] {
        let status = query_as(client, bob, sql).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{sql}: {status:?}");
    }
    assert_eq!(texts(&query_as(client, bob, notes).await.unwrap()), ["b1"]);
}

/// A role authenticator was not granted is PERMISSION_DENIED for reads, `SELECT 1` and
/// writes alike, and bob's next call on the connection works.
async fn an_ungranted_role_is_refused_and_spares_the_connection(
    client: &mut DbClient,
    bob: &str,
    notes: &str,
) {
    // A role the database won't let pgway become: its BEGIN batch fails, the statement never
    // runs, read or write, and the connection is fit for the next caller.
    let ungranted = hs256(SECRET, user("ungranted", "mallory"));
    for sql in [notes, "SELECT 1"] {
        let status = query_as(client, &ungranted, sql).await.unwrap_err();
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
    assert_eq!(texts(&query_as(client, bob, notes).await.unwrap()), ["b1"]);
}

/// The token caller runs as authenticator with no claims, and the table holds only the one
/// note added (alice's a3).
async fn the_token_caller_runs_as_the_gateway_with_no_claims(
    client: &mut DbClient,
    db: &tokio_postgres::Client,
) {
    // The token caller on the same connection runs as the gateway's own role, with no claims.
    let response = query_as(
        client,
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
}
