//! A server connection of the PostgreSQL door: a raw protocol stream to PostgreSQL, logged in
//! as one user to one database, whose bytes are relayed to and from the clients it serves.
//!
//! tokio-postgres can't carry a wire client's traffic (it owns the stream and always asks for
//! binary results), so this module opens the stream, speaks the startup and authentication
//! itself with postgres-protocol's frontend writers and SCRAM client, and then hands the stream
//! to the relay.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use lru::LruCache;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::ChannelBinding as ChannelBindingMode;

use super::frame;
use super::scram::{Binding, Credential, KeyClient, SCRAM_SHA_256, tls_server_end_point};
use crate::core::budget::Place;
use crate::core::dbtls::require_auth::RequireAuth;
use crate::core::dbtls::{DatabaseTls, SslMode};

/// A byte stream, plain or TLS, either side of the door.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// A server connection as the pool and the sessions hold it: boxed, because both move it at
/// every checkout and return, and by value those moves cost about 500 instructions a
/// transaction in copies (callgrind).
pub type Pooled = Box<ServerConn>;

/// Where server connections go, and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: Address,
    pub tls: DatabaseTls,
    pub connect_timeout: Duration,
    /// The ways of logging in the database may ask for (PGWAY_DATABASE_REQUIRE_AUTH).
    pub require_auth: RequireAuth,
    /// The URL's `channel_binding` (prefer by default, as in libpq).
    pub channel_binding: ChannelBindingMode,
}

/// Where the database listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket `.s.PGSQL.<port>` in a directory, as libpq and tokio-postgres name it
    /// (`host=/run/postgresql`): no TCP stack on either side, so each statement's send and
    /// receive costs the kernel less than over loopback TCP.
    Unix(PathBuf),
}

impl Address {
    /// As the console lists it: host and port, or the socket's directory and 0.
    pub fn host_port(&self) -> (String, u16) {
        match self {
            Address::Tcp { host, port } => (host.clone(), *port),
            Address::Unix(path) => (path.display().to_string(), 0),
        }
    }
}

impl Target {
    /// The host, port and TLS of the gateway's database URL.
    pub fn of(database: &tokio_postgres::Config, tls: DatabaseTls) -> Target {
        let require_auth = tls.require_auth();
        let port = database.get_ports().first().copied().unwrap_or(5432);
        let address = match database.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => Address::Tcp {
                host: host.clone(),
                port,
            },
            Some(tokio_postgres::config::Host::Unix(dir)) => {
                Address::Unix(dir.join(format!(".s.PGSQL.{port}")))
            }
            None => Address::Tcp {
                host: "localhost".into(),
                port,
            },
        };
        Target {
            address,
            tls,
            connect_timeout: database
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5)),
            require_auth,
            channel_binding: database.get_channel_binding(),
        }
    }
}

/// Why a server connection could not be opened.
#[derive(Debug, Clone)]
pub struct LoginError {
    /// The server's own ErrorResponse, to forward to the client as it is.
    pub response: Option<BytesMut>,
    pub code: String,
    pub message: String,
}

impl LoginError {
    fn io(error: impl std::fmt::Display) -> LoginError {
        LoginError {
            response: None,
            code: "08006".into(),
            message: format!("cannot reach the database: {error}"),
        }
    }

    fn protocol(message: impl Into<String>) -> LoginError {
        LoginError {
            response: None,
            code: "08P01".into(),
            message: message.into(),
        }
    }

    /// Waiting won't cure it: bad credentials, no such database or role, TLS refused.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.code.as_str(),
            "28P01" | "28000" | "3D000" | "42501" | "08P01"
        ) || self.code.starts_with("28")
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// Session settings (names and values) in one piece, each string length first: compared at
/// every link (does the connection have the client's settings?), where comparing the two maps
/// of strings cost about 270 instructions a transaction and a slice compares in a few
/// (callgrind, `pgbench -S`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(Box<[u8]>);

impl Settings {
    pub fn of(settings: &BTreeMap<String, String>) -> Settings {
        let mut all = Vec::new();
        for (name, value) in settings {
            for part in [name, value] {
                all.extend_from_slice(&(part.len() as u64).to_le_bytes());
                all.extend_from_slice(part.as_bytes());
            }
        }
        Settings(all.into_boxed_slice())
    }
}

/// One open, logged-in server connection.
pub struct ServerConn {
    pub id: u64,
    pub stream: Stream,
    /// Bytes read from the server not yet relayed.
    pub buf: BytesMut,
    pub pid: i32,
    pub secret: i32,
    /// The ParameterStatus values it reported last (at login, then as they changed).
    pub params: Vec<(String, String)>,
    /// [`digest`] of `params`, so a client compares its view of them only when they differ.
    pub params_digest: u64,
    /// The session settings applied on it now beyond its defaults (`source = 'session'`).
    pub applied: Settings,
    /// Something ran on it that may have changed settings the door can't list (custom ones,
    /// in a `DO` block or a function): the next link starts from `RESET ALL` whatever
    /// `applied` says.
    pub reset_needed: bool,
    /// The door's global statements prepared on it, least recently used first out.
    pub prepared: LruCache<u64, ()>,
    pub opened: Instant,
    pub idle_since: Instant,
    /// Set when what is on it can't be vouched for: it is closed, not pooled.
    pub broken: bool,
    /// Declared before `_open`, so that it is free by the time `_open` nudges a client waiting
    /// for one (fields drop in order).
    place: Place,
    /// Counts it among its pool's open connections for as long as it lives, whichever way it
    /// ends (a connection dropped on any path is one fewer, not a phantom "in use").
    pub(super) _open: Option<super::pool::OpenCount>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl ServerConn {
    /// Its place in the budget goes to the other door, which asked for it, when it closes.
    pub fn give_place_on_close(&self) {
        self.place.give_on_drop();
    }

    /// Whether the other door asks for its place and should have it (see
    /// [`crate::core::budget::Place::give_if_asked`]): then it goes to that door when this
    /// closes.
    pub fn give_place_if_asked(&self) -> bool {
        self.place.give_if_asked()
    }

    /// Its entry in the door's roster (`SHOW SERVERS`), once its pool has counted it.
    pub fn listed(&self) -> Option<&std::sync::Arc<super::roster::ServerEntry>> {
        self._open.as_ref().map(|open| &open.listed.entry)
    }

    /// Whether an idle connection has been closed under it (the database restarted, or ended
    /// it). Polled without waiting, so checking costs no round trip. What an idle backend may
    /// send unasked is read here, not left for the next client: a ParameterStatus (a reload
    /// changed a reported setting) updates [`ServerConn::params`] and a notice is dropped; a
    /// FATAL, the end of the stream, or a notification (a LISTEN no client owns any more) mean
    /// the connection can't be pooled.
    pub fn closed_while_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            // Read straight into the buffer's spare room: a zeroed scratch array was a
            // `memset` at every checkout (measured).
            self.buf.reserve(1024);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), &mut cx, &mut self.buf)
            {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
            }
        }
        loop {
            match super::frame::split_message(&mut self.buf, 1 << 20) {
                Ok(None) => return false,
                Ok(Some(msg)) => match msg[0] {
                    b'S' => self.note_parameter(&msg),
                    b'N' => {}
                    _ => return true,
                },
                Err(_) => return true,
            }
        }
    }

    /// Keeps what a ParameterStatus reports as the connection's current value.
    pub fn note_parameter(&mut self, msg: &[u8]) {
        if let Some((name, value)) = super::frame::read_parameter_status(msg) {
            match self.params.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.params.push((name, value)),
            }
            self.params_digest = digest(&self.params);
        }
    }
}

/// A digest of a set of parameters, whatever their order: equal sets, equal digests (a
/// collision would only skip a ParameterStatus the client already has the like of, with
/// odds of 2^-64).
pub fn digest(params: &[(String, String)]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    params
        .iter()
        .fold(0, |acc, pair| acc ^ hasher.hash_one(pair))
}

/// Opens a connection to `target` and logs in as `user` to `database`.
pub async fn connect(
    target: &Target,
    user: &str,
    database: &str,
    credential: &Credential,
    id: u64,
    prepared_cap: std::num::NonZeroUsize,
    place: Place,
) -> Result<Pooled, LoginError> {
    let work = async {
        let (stream, tls) = open_bound(target).await?;
        login(stream, user, database, credential, target, tls).await
    };
    let (stream, buf, pid, secret, params) = tokio::time::timeout(target.connect_timeout, work)
        .await
        .map_err(|_| LoginError::io("timed out"))??;
    let params_digest = digest(&params);
    let now = Instant::now();
    Ok(Box::new(ServerConn {
        id,
        stream,
        buf,
        pid,
        secret,
        params,
        applied: Settings::default(),
        reset_needed: false,
        params_digest,
        prepared: LruCache::new(prepared_cap),
        opened: now,
        idle_since: now,
        broken: false,
        place,
        _open: None,
    }))
}

/// TCP, then TLS as `sslmode` says; or a Unix socket, never with TLS (libpq, too, ignores
/// `sslmode` there: the kernel is the only one between the two ends).
pub async fn open(target: &Target) -> Result<Stream, LoginError> {
    Ok(open_bound(target).await?.0)
}

/// [`open`], and whether the stream is TLS: then `Some`, with the `tls-server-end-point`
/// data of the server's certificate if it has any.
async fn open_bound(target: &Target) -> Result<(Stream, Tls), LoginError> {
    let (host, tcp) = match &target.address {
        Address::Unix(path) => {
            let unix = UnixStream::connect(path)
                .await
                .map_err(|e| LoginError::io(format!("{}: {e}", path.display())))?;
            return Ok((Box::new(unix), None));
        }
        Address::Tcp { host, port } => {
            let tcp = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(LoginError::io)?;
            let _ = tcp.set_nodelay(true);
            (host, tcp)
        }
    };
    let mode = target.tls.mode();
    if mode == SslMode::Disable {
        return Ok((Box::new(tcp), None));
    }
    let mut tcp = tcp;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(LoginError::io)?;
    let answer = tcp.read_u8().await.map_err(LoginError::io)?;
    match answer {
        b'S' => {
            let tls_error = |e: &dyn std::fmt::Display| LoginError {
                response: None,
                code: "08006".into(),
                message: format!("TLS to the database: {e}"),
            };
            let name =
                rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| tls_error(&e))?;
            let stream =
                (target.tls.rustls().connect(name, tcp).await).map_err(|e| tls_error(&e))?;
            let end_point = (stream.get_ref().1.peer_certificates())
                .and_then(|certs| certs.first())
                .and_then(|cert| tls_server_end_point(cert));
            Ok((Box::new(stream), Some(end_point)))
        }
        b'N' if mode == SslMode::Prefer => Ok((Box::new(tcp), None)),
        b'N' => Err(LoginError {
            response: None,
            code: "08006".into(),
            message: format!("the database offers no TLS but sslmode={}", mode.as_str()),
        }),
        _ => Err(LoginError::protocol(
            "the database answered SSLRequest with neither S nor N",
        )),
    }
}

type Login = (Stream, BytesMut, i32, i32, Vec<(String, String)>);
/// `None` without TLS; with it, the certificate's `tls-server-end-point` data if it has any.
type Tls = Option<Option<Vec<u8>>>;

async fn login(
    mut stream: Stream,
    user: &str,
    database: &str,
    credential: &Credential,
    target: &Target,
    tls: Tls,
) -> Result<Login, LoginError> {
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", database)], &mut out)
        .map_err(LoginError::io)?;
    stream.write_all(&out).await.map_err(LoginError::io)?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut auth = Auth::default();
    let (mut pid, mut secret, mut params) = (0, 0, Vec::new());
    loop {
        let msg = read_message(&mut stream, &mut buf).await?;
        let body = frame::body(&msg);
        out.clear();
        match msg[0] {
            b'R' => {
                auth.step(body, user, credential, target, &tls, &mut out)?;
                if !out.is_empty() {
                    stream.write_all(&out).await.map_err(LoginError::io)?;
                }
            }
            b'S' => {
                if let Some(param) = frame::read_parameter_status(&msg) {
                    params.push(param);
                }
            }
            b'K' => {
                let mut b = body;
                if b.len() < 8 {
                    return Err(LoginError::protocol("short BackendKeyData"));
                }
                pid = b.get_i32();
                secret = b.get_i32();
            }
            b'Z' => return Ok((stream, buf, pid, secret, params)),
            b'E' => {
                let fields = frame::read_error(&msg);
                return Err(LoginError {
                    code: fields.code,
                    message: fields.message,
                    response: Some(msg),
                });
            }
            // NoticeResponse, NegotiateProtocolVersion: nothing to do.
            _ => {}
        }
    }
}

/// The authentication exchange with the database, one AuthenticationRequest at a time.
#[derive(Default)]
struct Auth {
    scram: Option<Scram>,
    /// A password was sent (cleartext or MD5): AuthenticationOk then isn't `trust`.
    answered: bool,
    /// The SCRAM exchange is bound to the TLS connection.
    bound: bool,
}

impl Auth {
    /// Answers the AuthenticationRequest `body` into `out` (nothing to send for some), or
    /// refuses what the door won't do.
    fn step(
        &mut self,
        body: &[u8],
        user: &str,
        credential: &Credential,
        target: &Target,
        tls: &Tls,
        out: &mut BytesMut,
    ) -> Result<(), LoginError> {
        let mut b = body;
        if b.len() < 4 {
            return Err(LoginError::protocol("short authentication message"));
        }
        let code = b.get_i32();
        let asked = self.scram.is_some() || self.answered;
        target.require_auth.check(code, asked).map_err(refused)?;
        if code == 0 && !self.bound && target.channel_binding == ChannelBindingMode::Require {
            return Err(refused(
                "the login was not bound to the TLS connection, and the URL's \
                     channel_binding=require asks that it be",
            ));
        }
        self.answered |= matches!(code, 3 | 5);
        match code {
            0 => {}
            10 => {
                let (mechanism, first, client) = start_scram(b, credential, target, tls)?;
                frontend::sasl_initial_response(mechanism, &first, out).map_err(LoginError::io)?;
                self.bound = mechanism != SCRAM_SHA_256;
                self.scram = Some(client);
            }
            11 => {
                let reply = match self.scram.as_mut() {
                    Some(Scram::Password(client)) => {
                        client.update(b).map_err(scram_failed)?;
                        client.message().to_vec()
                    }
                    Some(Scram::Key(client)) => client.server_first(b).map_err(scram_failed)?,
                    None => return Err(LoginError::protocol("SASL continue out of order")),
                };
                frontend::sasl_response(&reply, out).map_err(LoginError::io)?;
            }
            12 => match self.scram.as_mut() {
                Some(Scram::Password(client)) => client.finish(b).map_err(scram_failed)?,
                Some(Scram::Key(client)) => client.server_final(b).map_err(scram_failed)?,
                None => return Err(LoginError::protocol("SASL final out of order")),
            },
            3 | 5 => {
                let Credential::Password(password) = credential else {
                    return Err(LoginError::protocol(
                        "the database asks for a password, but pass-through \
                             authentication needs it to use SCRAM-SHA-256",
                    ));
                };
                if code == 3 {
                    frontend::password_message(password.as_bytes(), out)
                } else {
                    let salt =
                        <[u8; 4]>::try_from(b).map_err(|_| LoginError::protocol("bad md5 salt"))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), out)
                }
                .map_err(LoginError::io)?;
            }
            other => {
                return Err(LoginError::protocol(format!(
                    "unsupported authentication request {other}"
                )));
            }
        }
        Ok(())
    }
}

/// A login the door won't go on with (28000), before anything secret is sent.
fn refused(message: impl Into<String>) -> LoginError {
    LoginError {
        response: None,
        code: "28000".into(),
        message: message.into(),
    }
}

/// Starts SCRAM on the mechanisms the server offers (`mechanisms`): bound to the TLS
/// connection (SCRAM-SHA-256-PLUS) when there is one and the server offers it, as libpq's
/// `channel_binding=prefer` does. The mechanism, the client-first-message and the exchange.
fn start_scram(
    mechanisms: &[u8],
    credential: &Credential,
    target: &Target,
    tls: &Tls,
) -> Result<(&'static str, Vec<u8>, Scram), LoginError> {
    let offered = |name: &[u8]| mechanisms.split(|&c| c == 0).any(|m| m == name);
    if !offered(SCRAM_SHA_256.as_bytes()) {
        return Err(LoginError::protocol("the database offers no SCRAM-SHA-256"));
    }
    let binding = match (target.channel_binding, tls) {
        (ChannelBindingMode::Disable, _) | (_, None) => Binding::Unsupported,
        (_, Some(Some(end_point))) if offered(b"SCRAM-SHA-256-PLUS") => {
            Binding::EndPoint(end_point.clone())
        }
        _ => Binding::NotOffered,
    };
    if target.channel_binding == ChannelBindingMode::Require
        && !matches!(binding, Binding::EndPoint(_))
    {
        return Err(refused(
            "the URL's channel_binding=require needs TLS and SCRAM-SHA-256-PLUS, which this \
             connection to the database doesn't have",
        ));
    }
    let mechanism = binding.mechanism();
    let (first, client) = match credential {
        Credential::Password(password) => {
            let cb = match &binding {
                Binding::Unsupported => ChannelBinding::unsupported(),
                Binding::NotOffered => ChannelBinding::unrequested(),
                Binding::EndPoint(data) => ChannelBinding::tls_server_end_point(data.clone()),
            };
            let client = ScramSha256::new(password.as_bytes(), cb);
            (client.message().to_vec(), Scram::Password(client))
        }
        Credential::ClientKey {
            client_key,
            verifier,
        } => {
            let mut client = KeyClient::new(*client_key, verifier.clone(), binding);
            (client.client_first(), Scram::Key(client))
        }
    };
    Ok((mechanism, first, client))
}

enum Scram {
    Password(ScramSha256),
    Key(KeyClient),
}

fn scram_failed(error: impl std::fmt::Display) -> LoginError {
    LoginError {
        response: None,
        code: "28P01".into(),
        message: format!("SCRAM authentication with the database failed: {error}"),
    }
}

/// Reads one whole message from `stream`.
pub async fn read_message(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, LoginError> {
    loop {
        if let Some(msg) =
            frame::split_message(buf, 1 << 30).map_err(|e| LoginError::protocol(e.to_string()))?
        {
            return Ok(msg);
        }
        if stream.read_buf(buf).await.map_err(LoginError::io)? == 0 {
            return Err(LoginError::io("the database closed the connection"));
        }
    }
}

/// Sends a CancelRequest for the backend `pid` / `secret` on a connection of its own, and
/// waits until the server has acted on it (it closes the connection once it has signalled the
/// backend), so the caller can be sure the cancel can't hit a later statement.
pub async fn cancel(target: &Target, pid: i32, secret: i32) -> Result<(), LoginError> {
    let mut stream = open(target).await?;
    let mut out = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut out);
    stream.write_all(&out).await.map_err(LoginError::io)?;
    let mut rest = [0u8; 16];
    let _ = stream.read(&mut rest).await;
    Ok(())
}
