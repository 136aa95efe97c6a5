//! The PostgreSQL door's relay end to end: a client that has logged in sends arbitrary frames,
//! and a scripted server answers the door's server connection with arbitrary frames, whatever
//! state the session is in (idle, linked, in a transaction, in COPY, pinned, mid-pipeline,
//! mid-way through a large row). The door must not panic (the hook aborts the process, so a
//! panic on any of its tasks is a crash) and each session must end within its bounds.
//!
//! The input's first byte splits the rest in two, the client's bytes and the server's; the
//! second picks openings for both from a few valid ones (a transaction, a pipeline without
//! Sync, COPY, a pin, a large row), so every session state is a few bytes away.
#![no_main]

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgway::core::budget::Budget;
use pgway::core::dbtls::DatabaseTls;
use pgway::core::pool::{Pool, PoolConfig};
use pgway::pgwire::gate::GateLimits;
use pgway::pgwire::pool::{PoolSettings, Pools};
use pgway::pgwire::server::Target;
use pgway::pgwire::statements::Bound;
use pgway::pgwire::users::Users;
use pgway::pgwire::{Door, KeepUnnamed, SessionStateMode, Settings};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

const PASSWORD: &str = "fuzz-password";

struct Harness {
    runtime: tokio::runtime::Runtime,
    door: SocketAddr,
    /// What the next server connection answers with.
    script: Arc<Mutex<Vec<u8>>>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::abort();
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let script = Arc::new(Mutex::new(Vec::new()));
        let door = runtime.block_on(start(Arc::clone(&script)));
        Harness {
            runtime,
            door,
            script,
        }
    })
}

/// The scripted server and the door in front of it.
async fn start(script: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = server.accept().await {
            let bytes = std::mem::take(&mut *script.lock().expect("script"));
            tokio::spawn(scripted(stream, bytes));
        }
    });
    let mut database = tokio_postgres::Config::new();
    database
        .host("127.0.0.1")
        .port(server_addr.port())
        .user("fuzz")
        .password(PASSWORD)
        .dbname("fuzz")
        .connect_timeout(Duration::from_secs(1));
    let target = Target::of(&database, DatabaseTls::disabled());
    let budget = Budget::new(4);
    let pools = Pools::new(
        target,
        budget,
        PoolSettings {
            acquire_timeout: Duration::from_millis(500).into(),
            idle_timeout: Duration::from_secs(60).into(),
            max_lifetime: Duration::from_secs(600).into(),
            max_waiting: 64.into(),
            prepared_statements: NonZeroUsize::new(8).expect("8"),
        },
    );
    // The gRPC door's pool, which only an auth query would use: never here.
    let grpc_pool = Pool::new(
        database.clone(),
        DatabaseTls::disabled(),
        &PoolConfig {
            min: 0,
            max: 1,
            acquire_timeout: Duration::from_millis(100),
            max_lifetime: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            statement_cache_size: NonZeroUsize::new(8).expect("8"),
            max_waiting: 1,
            max_concurrent_connects: 1,
        },
    );
    let users = Users::new("fuzz".into(), Some(PASSWORD.into()), None, None, grpc_pool);
    let bound = |count| Bound {
        count: NonZeroUsize::new(count).expect("count"),
        bytes: 1 << 20,
    };
    let settings = Settings {
        databases: vec!["fuzz".into()],
        admin_users: vec![],
        stats_users: vec![],
        max_message: 1 << 20,
        idle_in_transaction_timeout: Duration::from_millis(200).into(),
        client_write_timeout: Duration::from_millis(200),
        session_state: SessionStateMode::Pin,
        // The mode with the most paths: kept statements, their retry, and plain ones in blocks.
        keep_unnamed: KeepUnnamed::Autocommit,
        max_pinned: 2.into(),
        max_clients: 100.into(),
        require_tls: false,
        client_certificates: false,
        login_timeout: Duration::from_secs(2).into(),
        gate: GateLimits {
            max_logins: 100,
            max_per_address: 100,
        },
        statement_cache: bound(16),
        client_statements: bound(8),
        client_idle_timeout: Duration::from_secs(2).into(),
        transaction_timeout: Duration::from_secs(2).into(),
    };
    let door = Arc::new(Door::new(settings, pools, users, None));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(pgway::pgwire::serve(door, listener, TaskTracker::new()));
    addr
}

/// A server connection: a login that needs no password, then `script` in answer to whatever
/// the door sends, then the end of the connection.
async fn scripted(mut stream: TcpStream, script: Vec<u8>) {
    let mut buf = BytesMut::new();
    let Some(len) = read_len(&mut stream, &mut buf).await else {
        return;
    };
    if len >= 8 && buf[4..8] == [0x04, 0xd2, 0x16, 0x2e] {
        return; // CancelRequest: the server acts and closes.
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(b"R\0\0\0\x08\0\0\0\0");
    for (name, value) in [
        ("server_version", "16.0"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
    ] {
        let body = [name.as_bytes(), b"\0", value.as_bytes(), b"\0"].concat();
        out.extend_from_slice(b"S");
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(b"K\0\0\0\x0c\0\0\0\x07\0\0\0\x09");
    out.extend_from_slice(b"Z\0\0\0\x05I");
    if stream.write_all(&out).await.is_err() {
        return;
    }
    // The script goes out once the door has said something (its first query or the
    // client's), and then the connection ends.
    let mut scratch = [0u8; 4096];
    let first = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut scratch)).await;
    if matches!(first, Ok(Ok(n)) if n > 0) {
        let _ = stream.write_all(&script).await;
    }
}

async fn read_len(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<usize> {
    while buf.len() < 4 {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    let len = (&buf[..4]).get_i32() as usize;
    while buf.len() < len.min(10_000) {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    Some(len)
}

/// Logs in as the URL's user over SCRAM.
async fn log_in(addr: SocketAddr) -> Option<(TcpStream, BytesMut)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "fuzz"), ("database", "fuzz")], &mut out).ok()?;
    stream.write_all(&out).await.ok()?;
    let mut scram = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let mut buf = BytesMut::new();
    loop {
        while buf.len() < 5 || buf.len() < 1 + (&buf[1..5]).get_i32() as usize {
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        let len = (&buf[1..5]).get_i32() as usize;
        let msg = buf.split_to(len + 1);
        out.clear();
        match msg[0] {
            b'R' => match (&msg[5..9]).get_i32() {
                10 => frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                    .ok()?,
                11 => {
                    scram.update(&msg[9..]).ok()?;
                    frontend::sasl_response(scram.message(), &mut out).ok()?;
                }
                _ => {}
            },
            b'Z' => return Some((stream, buf)),
            b'E' => return None,
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await.ok()?;
        }
    }
}

/// One session: the client's bytes in, everything the door says read until it closes or
/// falls silent.
async fn session(addr: SocketAddr, client: &[u8]) {
    let Some((mut stream, _)) = log_in(addr).await else {
        return; // refused (the door may be full of lingering sessions): nothing to relay
    };
    // A Terminate behind the client's bytes lets a well-framed session end without waiting
    // for the silence below.
    let bytes = [client, b"X\0\0\0\x04"].concat();
    if stream.write_all(&bytes).await.is_err() {
        return;
    }
    let mut scratch = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(20), stream.read(&mut scratch)).await
    {
        if n == 0 {
            break;
        }
    }
}

/// A frontend or backend message: its type, then its length and body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

/// Valid openings of the client's side.
fn client_opening(pick: u8) -> Vec<u8> {
    match pick % 8 {
        1 => query("BEGIN"),
        2 => [
            message(b'P', b"\0SELECT 1\0\0\0"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
        ]
        .concat(),
        3 => query("COPY t FROM STDIN"),
        4 => query("CREATE TEMP TABLE t (i int)"),
        5 => query("SET app.tenant = '1'"),
        6 => [message(b'P', b"s1\0SELECT 1\0\0\0"), message(b'S', b"")].concat(),
        7 => query("SELECT repeat('x', 300000)"),
        _ => Vec::new(),
    }
}

/// Valid openings of the server's side.
fn server_opening(pick: u8) -> Vec<u8> {
    let ready = |status: &[u8]| message(b'Z', status);
    match (pick / 8) % 6 {
        1 => [message(b'C', b"BEGIN\0"), ready(b"T")].concat(),
        2 => message(b'G', b"\0\0\x01\0\0"),
        3 => {
            // The head of a 300 kB row: relayed in pieces.
            let mut row = vec![b'D'];
            row.extend_from_slice(&300_011i32.to_be_bytes());
            row.extend_from_slice(&1i16.to_be_bytes());
            row.extend_from_slice(&300_000i32.to_be_bytes());
            row.extend_from_slice(&[b'x'; 4096]);
            row
        }
        4 => [
            message(
                b'T',
                b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
            ),
            message(b'D', b"\0\x01\0\0\0\x011"),
            message(b'C', b"SELECT 1\0"),
            ready(b"I"),
        ]
        .concat(),
        5 => message(b'E', b"SERROR\0C42601\0Msyntax error\0\0"),
        _ => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [split, pick, rest @ ..] = data else {
        return;
    };
    let cut = rest.len() * *split as usize / 256;
    let (client, server) = rest.split_at(cut);
    let client = [client_opening(*pick), client.to_vec()].concat();
    let server = [server_opening(*pick), server.to_vec()].concat();
    let harness = harness();
    *harness.script.lock().expect("script") = server;
    harness.runtime.block_on(session(harness.door, &client));
});
