//! A client connection's first moments: SSLRequest / GSSENCRequest / CancelRequest, the
//! startup packet, SCRAM-SHA-256, and the parameters a client expects before it may send
//! queries. Refusals read as PostgreSQL's own, since drivers match on them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use metrics::counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::Door;
use super::cancel::CancelKey;
use super::frame::{self, Startup};
use super::pool::PoolKey;
use super::scram::ServerExchange;
use super::server::Stream;
use super::session::{Ended, LoggedIn, Session, replay};
use crate::core::telemetry as names;

/// How long a client has to finish logging in (PostgreSQL's `authentication_timeout`).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failed login waits before it is told: guessing passwords is slow.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);

/// Serves one client connection from accept to close.
pub async fn serve_client(door: Arc<Door>, tcp: TcpStream, peer: std::net::SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let _client = door.clients.connected();
    let started = tokio::time::timeout(LOGIN_TIMEOUT, start(&door, tcp)).await;
    let Ok(Some(login)) = started else {
        return;
    };
    let Login {
        stream,
        buf,
        key,
        credential,
        startup,
        cancel_key,
        slot,
    } = login;
    info!(%peer, user = %key.user, database = %key.database, door = "postgres", "client logged in");
    let session = Session::new(
        Arc::clone(&door),
        stream,
        buf,
        Arc::clone(&key),
        credential,
        startup,
        slot,
    );
    let ended = session.run().await;
    door.cancels.forget(cancel_key);
    let why = match ended {
        Ended::Client => "client",
        Ended::Door(why) => why,
    };
    info!(%peer, user = %key.user, reason = why, door = "postgres", "client closed");
}

struct Login {
    stream: Stream,
    buf: BytesMut,
    key: Arc<PoolKey>,
    credential: super::scram::Credential,
    startup: LoggedIn,
    cancel_key: CancelKey,
    slot: Arc<super::cancel::Slot>,
}

async fn fatal(stream: &mut Stream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    frame::write_error(&mut out, "FATAL", code, message, None);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

async fn read_startup(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Option<Result<BytesMut, frame::FrameError>> {
    loop {
        match frame::split_startup(buf) {
            Ok(Some(packet)) => return Some(Ok(packet)),
            Ok(None) => {}
            Err(error) => return Some(Err(error)),
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn read_message(stream: &mut Stream, buf: &mut BytesMut) -> Option<BytesMut> {
    loop {
        match frame::split_message(buf, 1 << 16) {
            Ok(Some(msg)) => return Some(msg),
            Ok(None) => {}
            Err(_) => return None,
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn start(door: &Arc<Door>, tcp: TcpStream) -> Option<Login> {
    let mut stream: Stream = Box::new(tcp);
    let mut buf = BytesMut::with_capacity(1024);
    let mut encrypted = false;
    let (minor, params) = loop {
        let packet = match read_startup(&mut stream, &mut buf).await? {
            Ok(packet) => packet,
            Err(error) => {
                fatal(
                    &mut stream,
                    "08P01",
                    &format!("invalid startup packet: {error}"),
                )
                .await;
                return None;
            }
        };
        match frame::parse_startup(&packet) {
            Ok(Startup::Ssl) if !encrypted => {
                if !buf.is_empty() {
                    // Bytes sent after SSLRequest, before the handshake, would be read as
                    // if encrypted (CVE-2021-3935).
                    fatal(
                        &mut stream,
                        "08P01",
                        "received unencrypted data after SSL request",
                    )
                    .await;
                    return None;
                }
                match door.tls.as_ref() {
                    Some(tls) => {
                        stream.write_all(b"S").await.ok()?;
                        // The gRPC port's certificate, without its HTTP/2 ALPN: libpq offers
                        // "postgresql", and a server insisting on "h2" would fail the handshake.
                        let mut config = (*tls.get()).clone();
                        config.alpn_protocols = vec![b"postgresql".to_vec()];
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                        match acceptor.accept(stream).await {
                            Ok(tls) => stream = Box::new(tls),
                            Err(error) => {
                                counter!(names::TLS_HANDSHAKE_FAILURES, "reason" => "error")
                                    .increment(1);
                                warn!(%error, door = "postgres", "TLS handshake failed");
                                return None;
                            }
                        }
                        encrypted = true;
                    }
                    None => stream.write_all(b"N").await.ok()?,
                }
            }
            Ok(Startup::GssEnc) if !encrypted => stream.write_all(b"N").await.ok()?,
            Ok(Startup::Cancel { pid, key }) => {
                if let Ok(key) = <[u8; 4]>::try_from(&key[..]) {
                    let target = door.pools.target().clone();
                    door.cancels
                        .cancel(&target, (pid, i32::from_be_bytes(key)))
                        .await;
                }
                return None;
            }
            Ok(Startup::Start {
                major: 3,
                minor,
                params,
            }) => break (minor, params),
            Ok(Startup::Start { major, minor, .. }) => {
                fatal(
                    &mut stream,
                    "0A000",
                    &format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                    ),
                )
                .await;
                return None;
            }
            Ok(_) | Err(_) => {
                fatal(&mut stream, "08P01", "invalid startup packet").await;
                return None;
            }
        }
    };
    if door.settings.require_tls && !encrypted {
        fatal(
            &mut stream,
            "28000",
            "pgway requires SSL on this port (PGWAY_PG_REQUIRE_TLS)",
        )
        .await;
        return None;
    }
    let mut out = BytesMut::new();
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name.starts_with("_pq_."))
        .map(|(name, _)| name.as_str())
        .collect();
    if minor > 0 || !unknown.is_empty() {
        frame::write_negotiate(&mut out, 0, &unknown);
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        fatal(
            &mut stream,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return None;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off" && r != "no") {
        fatal(
            &mut stream,
            "08P01",
            "pgway does not serve replication connections: connect to the database directly",
        )
        .await;
        return None;
    }
    if door.clients.count() > door.settings.max_clients {
        fatal(&mut stream, "53300", "sorry, too many clients already").await;
        return None;
    }
    let mut wanted = BTreeMap::new();
    for (name, value) in &params {
        match name.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                for (name, value) in options(value) {
                    wanted.insert(name, value);
                }
            }
            name if name.starts_with("_pq_.") => {}
            name => {
                wanted.insert(name.to_owned(), value.clone());
            }
        }
    }

    // SCRAM-SHA-256. An unknown user goes through the same exchange with a verifier that
    // can't match, and gets the same message as a wrong password.
    let found = door.users.find(&user).await;
    let verifier = match &found {
        Some(found) => found.verifier().clone(),
        None => door.mock_verifier(&user),
    };
    frame::write_auth(&mut out, 10, b"SCRAM-SHA-256\0\0");
    stream.write_all(&out).await.ok()?;
    out.clear();
    let mut exchange = ServerExchange::new(verifier);
    let failed = |why: String| why;
    let proven: Result<[u8; 32], String> = async {
        let msg = read_message(&mut stream, &mut buf)
            .await
            .ok_or_else(|| failed("gone".into()))?;
        if msg[0] != b'p' {
            return Err("expected SASLInitialResponse".into());
        }
        let mut b = frame::body(&msg);
        let mechanism = frame::take_cstr(&mut b).ok_or("malformed SASLInitialResponse")?;
        if b.len() < 4 {
            return Err("malformed SASLInitialResponse".into());
        }
        let len = b.get_i32();
        let data = if len < 0 { &[][..] } else { b };
        let mechanism = String::from_utf8_lossy(mechanism).into_owned();
        let first = exchange
            .client_first(&mechanism, data)
            .map_err(|e| e.to_string())?;
        frame::write_auth(&mut out, 11, &first);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        let msg = read_message(&mut stream, &mut buf).await.ok_or("gone")?;
        if msg[0] != b'p' {
            return Err("expected SASLResponse".into());
        }
        let (last, key) = exchange
            .client_final(frame::body(&msg))
            .map_err(|e| e.to_string())?;
        frame::write_auth(&mut out, 12, &last);
        Ok(key)
    }
    .await;
    let (found, client_key) = match (found, proven) {
        (Some(found), Ok(key)) => (found, key),
        (_, result) => {
            counter!(names::PG_AUTH_FAILURES).increment(1);
            warn!(user = %user, reason = result.err().unwrap_or_else(|| "unknown user".into()), door = "postgres", "login failed");
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            fatal(
                &mut stream,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
            return None;
        }
    };
    frame::write_auth(&mut out, 0, &[]);
    if database != door.settings.database {
        stream.write_all(&out).await.ok()?;
        fatal(
            &mut stream,
            "3D000",
            &format!("database \"{database}\" does not exist"),
        )
        .await;
        return None;
    }
    let key = Arc::new(PoolKey {
        user: user.clone(),
        database,
    });
    let credential = found.credential(client_key);

    // The server's own parameters, with the client's startup values applied: read from a
    // server connection the client's settings were applied to (which also proves the
    // credential works upstream), then given back.
    let mut server = match door.pools.acquire(&key, &credential).await {
        Ok(server) => server,
        Err(super::pool::AcquireError::Login(error)) => {
            stream.write_all(&out).await.ok()?;
            match error.response {
                Some(response) => {
                    let _ = stream.write_all(&response).await;
                }
                None => fatal(&mut stream, &error.code, &error.message).await,
            }
            return None;
        }
        Err(_) => {
            stream.write_all(&out).await.ok()?;
            fatal(
                &mut stream,
                "53300",
                "no server connection became free within PGWAY_ACQUIRE_TIMEOUT",
            )
            .await;
            return None;
        }
    };
    let applied = if server.applied != wanted || server.reset_needed {
        let sql = replay(&wanted);
        let mut q = BytesMut::new();
        frame::write_query(&mut q, &sql);
        let sent = server.stream.write_all(&q).await;
        let mut error = None;
        let mut ok = sent.is_ok();
        while ok {
            match super::server::read_message(&mut server.stream, &mut server.buf).await {
                Ok(msg) => match msg[0] {
                    b'S' => server.note_parameter(&msg),
                    b'E' => error = Some(msg),
                    b'Z' => break,
                    _ => {}
                },
                Err(_) => ok = false,
            }
        }
        if !ok {
            server.broken = true;
        }
        if let Some(msg) = error {
            // An invalid startup parameter is FATAL, as PostgreSQL makes it.
            let fields = frame::read_error(&msg);
            door.pools.release(&key, server);
            stream.write_all(&out).await.ok()?;
            fatal(&mut stream, &fields.code, &fields.message).await;
            return None;
        }
        ok
    } else {
        true
    };
    if applied {
        server.applied = wanted.clone();
        server.reset_needed = false;
    }
    // What the connection reports now, with the client's settings applied (kept up to date
    // from every ParameterStatus it sent, since PostgreSQL reports only what changes).
    for (name, value) in &server.params {
        frame::write_parameter_status(&mut out, name, value);
    }
    let reported = server.params.clone();
    door.pools.release(&key, server);
    let (cancel_key, slot) = door.cancels.register();
    frame::write_backend_key_data(&mut out, cancel_key.0, cancel_key.1);
    frame::write_ready(&mut out, b'I');
    stream.write_all(&out).await.ok()?;
    Some(Login {
        stream,
        buf,
        key,
        credential,
        startup: LoggedIn {
            settings: wanted,
            reported,
        },
        cancel_key,
        slot,
    })
}

/// The `-c name=value` (and `--name=value`) settings in a startup packet's `options`;
/// backslash escapes a space.
fn options(value: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let setting = if word == "-c" {
            iter.next()
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest.to_owned())
        } else {
            word.strip_prefix("--").map(str::to_owned)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_settings() {
        assert_eq!(
            options("-c search_path=app\\ x -c statement_timeout=5s --DateStyle=ISO"),
            vec![
                ("search_path".to_owned(), "app x".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("DateStyle".to_owned(), "ISO".to_owned())
            ]
        );
    }
}
