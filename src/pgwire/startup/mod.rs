//! A client connection's first moments: SSLRequest / GSSENCRequest / CancelRequest, the
//! startup packet, SCRAM-SHA-256, and the parameters a client expects before it may send
//! queries. Refusals read as PostgreSQL's own, since drivers match on them; the log and
//! `pgway_pg_auth_failures_total{reason}` say the real cause, with the client's address.
//!
//! - `negotiate`: TLS and the startup packet.
//! - `auth`: the SCRAM exchange.
//! - this module: the bounds on logins in progress ([`super::gate`]), the refusals, and the
//!   settings the client asked for, applied on a server connection.

mod auth;
mod negotiate;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use metrics::counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::Door;
use super::cancel::CancelKey;
use super::console;
use super::frame;
use super::gate::Full;
use super::pool::PoolKey;
use super::roster::{DbStats, NewClient};
use super::server::Stream;
use super::session::{Connection, Ended, LoggedIn, Session, Wanted, replay};
use super::users::Found;
use crate::core::telemetry as names;
use negotiate::Hello;

/// Serves one client connection from accept to close.
pub async fn serve_client(door: Arc<Door>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let mut stream: Stream = Box::new(tcp);
    let login = match log_in(&door, &mut stream, peer).await {
        Some(Entry::Session(login)) => login,
        Some(Entry::Console(console)) => {
            let listed = door.pools.roster().client(NewClient {
                user: console.user.clone(),
                database: console.database,
                peer,
                local,
                application_name: console.application_name,
                tls: console.encrypted,
                slot: None,
            });
            let admin = console::Admin {
                role: console.role,
                user: console.user,
                peer,
                listed,
            };
            console::serve(Arc::clone(&door), stream, console.buf, console.out, admin).await;
            drop(console._client);
            return;
        }
        None => return,
    };
    let Login {
        buf,
        key,
        found,
        client_key,
        startup,
        cancel_key,
        slot,
        encrypted,
        _client,
    } = login;
    info!(%peer, user = %key.user, database = %key.database, door = "postgres", "client logged in");
    let roster = door.pools.roster();
    DbStats::add(&roster.stats(&key.database).logins, 1);
    let listed = roster.client(NewClient {
        user: key.user.clone(),
        database: key.database.clone(),
        peer,
        local,
        application_name: startup
            .wanted
            .values()
            .get("application_name")
            .cloned()
            .unwrap_or_default(),
        tls: encrypted,
        slot: Some(Arc::clone(&slot)),
    });
    let connection = Connection {
        stream,
        buf,
        peer,
        listed,
    };
    let session = Session::new(
        Arc::clone(&door),
        connection,
        Arc::clone(&key),
        found.credential(client_key),
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

/// A logged-in client, ready for its session.
struct Login<'a> {
    buf: BytesMut,
    key: Arc<PoolKey>,
    found: Found,
    client_key: [u8; 32],
    startup: LoggedIn,
    cancel_key: CancelKey,
    slot: Arc<super::cancel::Slot>,
    encrypted: bool,
    /// Counts the client under `PGWAY_PG_MAX_CLIENTS` while it lives.
    _client: super::Connected<'a>,
}

/// Where a login leads.
enum Entry<'a> {
    Session(Login<'a>),
    Console(ConsoleLogin<'a>),
}

/// A login to the admin console: AuthenticationOk in `out`, the rest is the console's.
struct ConsoleLogin<'a> {
    buf: BytesMut,
    out: BytesMut,
    role: console::Role,
    user: String,
    database: String,
    application_name: String,
    encrypted: bool,
    _client: super::Connected<'a>,
}

/// The whole login, its refusals answered, logged and counted. `None` when the client is
/// gone or was refused.
async fn log_in<'a>(
    door: &'a Arc<Door>,
    stream: &mut Stream,
    peer: SocketAddr,
) -> Option<Entry<'a>> {
    // Until it has proved who it is, the client holds a place among the logins in progress,
    // not among the clients.
    let ticket = match door.gate.admit(peer.ip()) {
        Ok(ticket) => ticket,
        Err(Full::Address) => {
            let refusal = Refusal::fatal(
                "too_many_logins",
                "53300",
                "sorry, too many clients from this address are logging in already".into(),
            );
            refuse(door, stream, peer, None, refusal.undelayed()).await;
            return None;
        }
    };
    let mut buf = BytesMut::with_capacity(1024);
    let proven = tokio::select! {
        proven = tokio::time::timeout(door.settings.login_timeout.get(), prove(door, stream, &mut buf)) => {
            proven.unwrap_or_else(|_| Err((None, Refusal::silent("timeout"))))
        }
        _ = ticket.dropped.cancelled() => Err((None, Refusal::silent("evicted"))),
    };
    let (hello, found, client_key, out) = match proven {
        Ok(Some(proven)) => proven,
        Ok(None) => return None,
        Err((user, refusal)) => {
            refuse(door, stream, peer, user.as_deref(), refusal).await;
            return None;
        }
    };
    drop(ticket);
    let client = door.clients.connected();
    if door.clients.count() > door.settings.max_clients.get() {
        let refusal = Refusal::fatal(
            "too_many_clients",
            "53300",
            "sorry, too many clients already".into(),
        );
        refuse(
            door,
            stream,
            peer,
            Some(&hello.user),
            refusal.undelayed().after(out),
        )
        .await;
        return None;
    }
    if let Some(Some(role)) = console::role(&door.settings, &hello.database, &hello.user) {
        return Some(Entry::Console(ConsoleLogin {
            buf,
            out,
            role,
            application_name: hello
                .wanted
                .get("application_name")
                .cloned()
                .unwrap_or_default(),
            user: hello.user,
            database: hello.database,
            encrypted: hello.encrypted,
            _client: client,
        }));
    }
    let key = door.pools.key(hello.user.clone(), hello.database.clone());
    let settled = tokio::time::timeout(
        door.settings.login_timeout.get(),
        settle(door, stream, &key, &hello, &found, client_key, out),
    )
    .await;
    match settled.unwrap_or_else(|_| Err(Refusal::silent("timeout"))) {
        Ok((startup, cancel_key, slot)) => Some(Entry::Session(Login {
            buf,
            key,
            found,
            client_key,
            startup,
            cancel_key,
            slot,
            encrypted: hello.encrypted,
            _client: client,
        })),
        Err(refusal) => {
            refuse(door, stream, peer, Some(&hello.user), refusal).await;
            None
        }
    }
}

type Proven = (Hello, Found, [u8; 32], BytesMut);

/// TLS, the startup packet, and the client's proof of who it is: the user it proved to be,
/// and AuthenticationOk (not sent yet). The error names the user when it is known.
async fn prove(
    door: &Arc<Door>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<Proven>, (Option<String>, Refusal)> {
    let hello = match negotiate::hello(door, stream, buf).await {
        Ok(Some(hello)) => hello,
        Ok(None) => return Ok(None),
        Err(refusal) => return Err((None, refusal)),
    };
    let user = Some(hello.user.clone());
    if door.settings.require_tls && !hello.encrypted {
        // As PostgreSQL answers a client that pg_hba.conf allows only `hostssl`.
        let message = format!(
            "pgway accepts only TLS connections on this port (PGWAY_PG_REQUIRE_TLS{}): user \"{}\", database \"{}\", no encryption",
            if door.settings.client_certificates {
                ", PGWAY_TLS_CLIENT_CA"
            } else {
                ""
            },
            hello.user,
            hello.database
        );
        return Err((user, Refusal::fatal("tls_required", "28000", message)));
    }
    let (found, client_key) =
        match auth::authenticate(door, stream, buf, &hello.user, hello.negotiate.clone()).await {
            Ok(proven) => proven,
            Err(refusal) => return Err((user, refusal)),
        };
    let mut out = BytesMut::new();
    frame::write_auth(&mut out, 0, &[]);
    match console::role(&door.settings, &hello.database, &hello.user) {
        // The console, for its users; for anyone else, a database that isn't there.
        Some(Some(_)) => return Ok(Some((hello, found, client_key, out))),
        Some(None) => {
            let message = format!("database \"{}\" does not exist", hello.database);
            let mut refusal = Refusal::fatal("unknown_database", "3D000", message).after(out);
            refusal.0.detail =
                Some("not a console user (PGWAY_PG_ADMIN_USERS, PGWAY_PG_STATS_USERS)".into());
            return Err((user, refusal));
        }
        None => {}
    }
    let databases = &door.settings.databases;
    if !databases.is_empty() && !databases.contains(&hello.database) {
        // PostgreSQL, too, says so only after the password was proven. (A database the
        // server doesn't have is the server's to refuse, at the first server login.)
        let message = format!(
            "database \"{}\" is not served by this pgway (PGWAY_PG_DATABASES)",
            hello.database
        );
        return Err((
            user,
            Refusal::fatal("unknown_database", "3D000", message).after(out),
        ));
    }
    Ok(Some((hello, found, client_key, out)))
}

/// Why a login ended before its session, and what the client is told (boxed: it travels in
/// every `Result` of the login).
#[derive(Debug)]
pub struct Refusal(Box<Refused>);

#[derive(Debug)]
struct Refused {
    /// `pgway_pg_auth_failures_total`'s `reason`, and the log's.
    reason: &'static str,
    /// What the log says of it beyond the client's message.
    detail: Option<String>,
    /// Bytes to send first (AuthenticationOk, when the refusal comes after it).
    before: BytesMut,
    answer: Answer,
    /// Whether it waits first, as a failed login does.
    delayed: bool,
}

#[derive(Debug)]
enum Answer {
    /// The connection is closed without a word (PostgreSQL's `authentication_timeout` too).
    Silent,
    Fatal {
        code: String,
        message: String,
    },
    /// The server's own ErrorResponse, relayed.
    Server(BytesMut),
}

impl Refusal {
    fn fatal(reason: &'static str, code: &str, message: String) -> Refusal {
        Refusal(Box::new(Refused {
            reason,
            detail: None,
            before: BytesMut::new(),
            answer: Answer::Fatal {
                code: code.to_owned(),
                message,
            },
            delayed: true,
        }))
    }

    fn protocol(message: String) -> Refusal {
        Refusal::fatal("protocol", "08P01", message)
    }

    fn silent(reason: &'static str) -> Refusal {
        Refusal(Box::new(Refused {
            reason,
            detail: None,
            before: BytesMut::new(),
            answer: Answer::Silent,
            delayed: false,
        }))
    }

    /// The client went away: nothing to tell, count or log.
    fn gone() -> Refusal {
        Refusal::silent("gone")
    }

    /// A failed SCRAM exchange: the client sees only PostgreSQL's message.
    fn bad_login(user: &str, detail: &str) -> Refusal {
        let message = format!("password authentication failed for user \"{user}\"");
        let mut refusal = Refusal::fatal("bad_exchange", "28P01", message);
        refusal.0.detail = Some(detail.to_owned());
        refusal
    }

    fn reason(mut self, reason: &'static str) -> Refusal {
        self.0.reason = reason;
        self
    }

    fn undelayed(mut self) -> Refusal {
        self.0.delayed = false;
        self
    }

    fn after(mut self, before: BytesMut) -> Refusal {
        self.0.before = before;
        self
    }
}

/// Counts and logs a refusal (with the client's address and the real cause), waits as long as
/// the address's failures say if it is a failed login, then tells the client.
async fn refuse(
    door: &Door,
    stream: &mut Stream,
    peer: SocketAddr,
    user: Option<&str>,
    refusal: Refusal,
) {
    let refusal = *refusal.0;
    if refusal.reason == "gone" {
        debug!(%peer, user, door = "postgres", "client left during login");
        return;
    }
    counter!(names::PG_AUTH_FAILURES, "reason" => refusal.reason).increment(1);
    let shown = match &refusal.answer {
        Answer::Fatal { message, .. } => message.as_str(),
        Answer::Server(_) | Answer::Silent => "",
    };
    warn!(
        %peer,
        user,
        reason = refusal.reason,
        detail = refusal.detail.as_deref().unwrap_or(shown),
        door = "postgres",
        "login refused"
    );
    if refusal.delayed {
        tokio::time::sleep(door.gate.failed(peer.ip())).await;
    }
    let mut out = refusal.before;
    match refusal.answer {
        Answer::Silent => {}
        Answer::Fatal { code, message } => {
            frame::write_error(&mut out, "FATAL", &code, &message, None)
        }
        Answer::Server(response) => out.extend_from_slice(&response),
    }
    // Bounded: a client that doesn't read its refusal must not keep the task.
    let told = async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), told).await;
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

/// What the server reports with the client's startup settings applied, read from a server
/// connection they were applied to (which also proves the credential works upstream), then
/// given back; and the client's cancel key. Sends AuthenticationOk (in `out`) and the rest.
async fn settle(
    door: &Door,
    stream: &mut Stream,
    key: &Arc<PoolKey>,
    hello: &Hello,
    found: &Found,
    client_key: [u8; 32],
    mut out: BytesMut,
) -> Result<(LoggedIn, CancelKey, Arc<super::cancel::Slot>), Refusal> {
    let credential = found.credential(client_key);
    let mut server = match door.pools.acquire(key, &credential).await {
        Ok(server) => server,
        Err(super::pool::AcquireError::Login(error)) => {
            let refusal = match error.response {
                Some(response) => {
                    let mut refusal = Refusal::silent("server");
                    refusal.0.detail = Some(error.message);
                    refusal.0.answer = Answer::Server(response);
                    refusal
                }
                None => Refusal::fatal("server", &error.code, error.message).undelayed(),
            };
            return Err(refusal.after(out));
        }
        Err(_) => {
            let message = "no server connection became free within PGWAY_ACQUIRE_TIMEOUT";
            return Err(Refusal::fatal("acquire_timeout", "53300", message.into())
                .undelayed()
                .after(out));
        }
    };
    // Made once here: the session goes on comparing connections with the same form.
    let wanted = Wanted::new(hello.wanted.clone());
    if server.applied != *wanted.set() || server.reset_needed {
        match apply(&mut server, wanted.values()).await {
            Ok(()) => {
                server.applied = wanted.set().clone();
                server.reset_needed = false;
            }
            Err(Some(msg)) => {
                // An invalid startup parameter is FATAL, as PostgreSQL makes it.
                let fields = frame::read_error(&msg);
                door.pools.release(key, server);
                return Err(Refusal::fatal("bad_setting", &fields.code, fields.message)
                    .undelayed()
                    .after(out));
            }
            Err(None) => server.broken = true,
        }
    }
    // What the connection reports now, with the client's settings applied (kept up to date
    // from every ParameterStatus it sent, since PostgreSQL reports only what changes).
    for (name, value) in &server.params {
        frame::write_parameter_status(&mut out, name, value);
    }
    let reported = server.params.clone();
    door.pools.release(key, server);
    let (cancel_key, slot) = door.cancels.register();
    frame::write_backend_key_data(&mut out, cancel_key.0, cancel_key.1);
    frame::write_ready(&mut out, b'I');
    if stream.write_all(&out).await.is_err() {
        door.cancels.forget(cancel_key);
        return Err(Refusal::gone());
    }
    let startup = LoggedIn { wanted, reported };
    Ok((startup, cancel_key, slot))
}

/// Replays `wanted` on `server`: `Err(Some(error))` when the server refused a setting,
/// `Err(None)` when the connection failed.
async fn apply(
    server: &mut super::server::ServerConn,
    wanted: &std::collections::BTreeMap<String, String>,
) -> Result<(), Option<BytesMut>> {
    let mut q = BytesMut::new();
    frame::write_query(&mut q, &replay(wanted));
    server.stream.write_all(&q).await.map_err(|_| None)?;
    let mut error = None;
    loop {
        let msg = super::server::read_message(&mut server.stream, &mut server.buf)
            .await
            .map_err(|_| None)?;
        match msg[0] {
            b'S' => server.note_parameter(&msg),
            b'E' => error = Some(msg),
            b'Z' => return error.map_or(Ok(()), |e| Err(Some(e))),
            _ => {}
        }
    }
}
