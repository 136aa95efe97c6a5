//! Security against greedy and hostile gRPC callers: limits that refuse early and spare other
//! callers, secrets kept out of logs and metrics, and hostile input answered with clean errors.
//! Who may call at all (tokens, JWTs, row-level security) is in security.rs.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgway::proto::{
    self, InteractiveTransactionRequest, TransactionRequest,
    interactive_transaction_request::Action, interactive_transaction_response::Event, value::Kind,
};
use support::callers::*;
use support::types::DbClient;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

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
    request_caps_refuse_before_anything_runs(&mut client).await;

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
    two_calls_in_flight_per_caller(&mut client, first, first_events, other).await;
}

/// Caps on SQL size and the number of parameters are REQUEST_TOO_LARGE, a request over the
/// byte cap is refused, and the statement timeout is the configured one.
async fn request_caps_refuse_before_anything_runs(client: &mut DbClient) {
    let long = format!("SELECT 1 /* {} */", "x".repeat(100));
    let status = query_as(client, SERVICE_TOKEN, &long).await.unwrap_err();
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
    let response = query_as(client, SERVICE_TOKEN, "SHOW statement_timeout")
        .await
        .unwrap();
    assert_eq!(texts(&response), ["7s"]);
}

/// With `first` (the service caller's open transaction) and an unread stream the service
/// caller is at its cap of two calls while the other caller is not; once the stream and the
/// transaction are dropped, its places come back. `other` (the other caller's transaction) is
/// dropped at the end.
async fn two_calls_in_flight_per_caller(
    client: &mut DbClient,
    first: mpsc::Sender<InteractiveTransactionRequest>,
    first_events: tonic::Streaming<proto::InteractiveTransactionResponse>,
    other: mpsc::Sender<InteractiveTransactionRequest>,
) {
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
    let status = query_as(client, SERVICE_TOKEN, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    query_as(client, OTHER_TOKEN, "SELECT 1").await.unwrap();
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
    let scraped = calls_carrying_every_secret(grpc, metrics, token, wrong, &jwt, param).await;

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
    calls_name_the_caller_without_its_secret(&logs, token);
}

/// As the token caller and as the JWT caller: a query with a parameter, one failing on it and
/// a transaction with it; then calls with a wrong token and a broken JWT. Returns `/metrics` as
/// scraped after.
async fn calls_carrying_every_secret(
    grpc: u16,
    metrics: u16,
    token: &str,
    wrong: &str,
    jwt: &str,
    param: &str,
) -> String {
    let channel = connect_when_up(&format!("127.0.0.1:{grpc}")).await;
    let mut client = proto::database_client::DatabaseClient::new(channel);
    for credential in [token, jwt] {
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
    scraped
}

/// The call lines name the token caller by the token's fingerprint and the JWT caller by its
/// role and subject.
fn calls_name_the_caller_without_its_secret(logs: &str, token: &str) {
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
