//! What the database may ask of the gateway's logins (`PGWAY_DATABASE_REQUIRE_AUTH`), enforced
//! for tokio-postgres too, which would answer a request for a cleartext or MD5 password with
//! the URL's password and has no `require_auth` of its own.
//!
//! The connection's stream is watched: the messages the server sends before
//! AuthenticationOk are read as they pass (only their type and the authentication code), and a
//! request for a way of logging in that isn't allowed fails the read, so tokio-postgres never
//! sees it and never answers. Under TLS the watch moves inside the TLS stream: the socket's
//! own watch stops at the server's `S` to SSLRequest (or at a direct TLS handshake), and the
//! TLS stream tokio-postgres gets is watched from its start.
//!
//! Hand-written because no library offers this; the PostgreSQL door's own login
//! (`pgwire::server`) checks the same rules where it reads the messages itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::Config;
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use super::connector::BoxFuture;
use crate::core::error::ConnectError;

use super::require_auth::RequireAuth;

/// A socket to the database, TCP or Unix. (An enum, not a boxed trait object: with one,
/// the compiler can't prove tokio-postgres' connect futures `Send`.)
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens a socket to the first of `database`'s hosts that accepts (a Unix socket for a host
/// that is a directory), within its connect timeout; the host's name, for TLS.
pub fn open_socket(database: &Config) -> BoxFuture<Result<(Socket, String), ConnectError>> {
    // Owned, and boxed: a future holding borrows of the configuration can't be proven `Send`
    // where it is spawned.
    let bound = database
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(5));
    let hosts: Vec<Host> = database.get_hosts().to_vec();
    let ports: Vec<u16> = database.get_ports().to_vec();
    let addrs: Vec<std::net::IpAddr> = database.get_hostaddrs().to_vec();
    let keepalive = KeepAlive::of(database);
    Box::pin(open_first(hosts, ports, addrs, bound, keepalive))
}

async fn open_first(
    hosts: Vec<Host>,
    ports: Vec<u16>,
    addrs: Vec<std::net::IpAddr>,
    bound: Duration,
    keepalive: KeepAlive,
) -> Result<(Socket, String), ConnectError> {
    let mut last = String::from("no host in the database URL");
    for (i, host) in hosts.into_iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let opened: io::Result<(Socket, String)> = match host {
            Host::Tcp(name) => {
                let target = addrs.get(i).map_or_else(|| name.clone(), |a| a.to_string());
                match tokio::time::timeout(bound, TcpStream::connect((target, port))).await {
                    Ok(Ok(tcp)) => {
                        keepalive.apply(&tcp);
                        Ok((Socket::Tcp(tcp), name))
                    }
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
                }
            }
            Host::Unix(dir) => UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                .await
                .map(|unix| (Socket::Unix(unix), "localhost".to_owned())),
        };
        match opened {
            Ok(opened) => return Ok(opened),
            Err(error) => last = format!("cannot reach the database: {error}"),
        }
    }
    Err(ConnectError {
        message: last,
        ..ConnectError::default()
    })
}

/// The socket options tokio-postgres would set from the configuration: no Nagle delay,
/// keepalives and the TCP user timeout, so a dead host is noticed in seconds, not hours.
#[derive(Debug, Clone, Copy)]
struct KeepAlive {
    on: bool,
    idle: Duration,
    interval: Option<Duration>,
    retries: Option<u32>,
    user_timeout: Option<Duration>,
}

impl KeepAlive {
    fn of(database: &Config) -> KeepAlive {
        KeepAlive {
            on: database.get_keepalives(),
            idle: database.get_keepalives_idle(),
            interval: database.get_keepalives_interval(),
            retries: database.get_keepalives_retries(),
            user_timeout: database.get_tcp_user_timeout().copied(),
        }
    }

    fn apply(self, tcp: &TcpStream) {
        let _ = tcp.set_nodelay(true);
        let socket = socket2::SockRef::from(tcp);
        if self.on {
            let mut keepalive = socket2::TcpKeepalive::new().with_time(self.idle);
            if let Some(interval) = self.interval {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(retries) = self.retries {
                keepalive = keepalive.with_retries(retries);
            }
            let _ = socket.set_tcp_keepalive(&keepalive);
        }
        if let Some(timeout) = self.user_timeout {
            let _ = socket.set_tcp_user_timeout(Some(timeout));
        }
    }
}

/// The SSLRequest code (1234, 5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Why a login was refused before anything was sent: the error a watched read fails with.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The message of a [`Refused`] somewhere in `error`'s chain of sources.
pub fn refused(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused.0.clone());
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && let Some(refused) = io.get_ref().and_then(|e| e.downcast_ref::<Refused>())
        {
            return Some(refused.0.clone());
        }
        next = error.source();
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing written yet: an SSLRequest, a direct TLS handshake or the startup message.
    Start,
    /// SSLRequest written: the next byte read is the server's `S` or `N`.
    SslAnswer,
    /// Reading the server's messages up to AuthenticationOk.
    Messages,
    /// Nothing more to watch.
    Done,
}

/// A stream whose server messages are watched until the login is over.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    require: RequireAuth,
    state: State,
    /// The current message's header, as far as it has arrived (type and length), and the
    /// first four bytes of its body for an authentication request.
    head: Vec<u8>,
    /// Bytes of the current message's body still to pass unread.
    skip: usize,
    /// A password or SASL exchange was asked for: AuthenticationOk then isn't `trust`.
    asked: bool,
}

impl<S> Watched<S> {
    /// Watches a socket from its first byte.
    pub fn socket(inner: S, require: RequireAuth) -> Watched<S> {
        Watched::new(inner, require, State::Start)
    }

    /// Watches a TLS stream, whose first message is the startup's answer.
    fn tls(inner: S, require: RequireAuth) -> Watched<S> {
        Watched::new(inner, require, State::Messages)
    }

    fn new(inner: S, require: RequireAuth, state: State) -> Watched<S> {
        Watched {
            inner,
            require,
            state,
            head: Vec::with_capacity(9),
            skip: 0,
            asked: false,
        }
    }

    /// Reads the server's bytes as they pass; an error for a request that isn't allowed.
    fn watch(&mut self, mut bytes: &[u8]) -> Result<(), Refused> {
        while !bytes.is_empty() {
            match self.state {
                State::Start | State::Done => return Ok(()),
                State::SslAnswer => {
                    self.state = if bytes[0] == b'S' {
                        State::Done
                    } else {
                        State::Messages
                    };
                    bytes = &bytes[1..];
                }
                State::Messages if self.skip > 0 => {
                    let n = self.skip.min(bytes.len());
                    self.skip -= n;
                    bytes = &bytes[n..];
                }
                State::Messages => {
                    let want = if self.head.first() == Some(&b'R') {
                        9
                    } else {
                        5
                    };
                    let n = (want - self.head.len()).min(bytes.len());
                    self.head.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.head.len() == 5 && self.head[0] != b'R' || self.head.len() == 9 {
                        self.message()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header (and an authentication request's code) has arrived.
    fn message(&mut self) -> Result<(), Refused> {
        let len = i32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
        let body = usize::try_from(len).unwrap_or(0).saturating_sub(4);
        if self.head[0] != b'R' {
            // An ErrorResponse ends the login; anything else before AuthenticationOk is
            // tokio-postgres' to judge.
            if self.head[0] == b'E' {
                self.state = State::Done;
            }
            self.skip = body;
            self.head.clear();
            return Ok(());
        }
        let code = i32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
        self.require.check(code, self.asked).map_err(Refused)?;
        self.asked |= matches!(code, 3 | 5 | 10);
        if code == 0 {
            self.state = State::Done;
        }
        self.skip = body.saturating_sub(4);
        self.head.clear();
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && self.state != State::Done
        {
            let fresh = buf.filled()[before..].to_vec();
            if let Err(refused) = self.watch(&fresh) {
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    refused,
                )));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state == State::Start && !buf.is_empty() {
            self.state = if buf.starts_with(&SSL_REQUEST) {
                State::SslAnswer
            } else if buf[0] == 0x16 {
                // A direct TLS handshake: the watch is inside it.
                State::Done
            } else {
                State::Messages
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Watched<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose streams are watched from their start.
#[derive(Debug)]
pub struct WatchedTls<T> {
    pub inner: T,
    pub require: RequireAuth,
}

impl<S, T: TlsConnect<S>> TlsConnect<S> for WatchedTls<T> {
    type Stream = Watched<T::Stream>;
    type Error = T::Error;
    type Future = Handshake<T::Future>;

    fn connect(self, stream: S) -> Self::Future {
        Handshake {
            inner: Box::pin(self.inner.connect(stream)),
            require: self.require,
        }
    }
}

/// A TLS handshake whose stream comes out watched. (A future of its own, not a boxed async
/// block: bounds on the inner future would keep the compiler from proving connects `Send`.)
#[derive(Debug)]
pub struct Handshake<F> {
    inner: Pin<Box<F>>,
    require: RequireAuth,
}

impl<F, S, E> Future for Handshake<F>
where
    F: Future<Output = Result<S, E>>,
{
    type Output = Result<Watched<S>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let require = self.require;
        self.inner
            .as_mut()
            .poll(cx)
            .map(|done| done.map(|stream| Watched::tls(stream, require)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: i32) -> Vec<u8> {
        let mut m = vec![b'R', 0, 0, 0, 8];
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    fn watched(require: &str) -> Watched<()> {
        Watched::new((), RequireAuth::parse(require).unwrap(), State::Messages)
    }

    #[test]
    fn refuses_what_is_not_allowed_in_any_split() {
        let notice = [b'N', 0, 0, 0, 6, b'x', 0];
        for code in [3, 5] {
            let bytes = [&notice[..], &auth(code)].concat();
            for cut in 0..bytes.len() {
                let mut w = watched("scram-sha-256,none");
                let result = w.watch(&bytes[..cut]).and_then(|()| w.watch(&bytes[cut..]));
                assert!(result.is_err(), "code {code}, cut {cut}");
            }
            assert!(watched("md5,password").watch(&bytes).is_ok());
        }
        // SCRAM then AuthenticationOk: allowed, and the watch ends there.
        let mut w = watched("scram-sha-256");
        let mut sasl = vec![b'R', 0, 0, 0, 23];
        sasl.extend_from_slice(&10i32.to_be_bytes());
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert!(w.watch(&[&sasl[..], &auth(0)].concat()).is_ok());
        assert_eq!(w.state, State::Done);
        // `trust` when only SCRAM is allowed.
        assert!(watched("scram-sha-256").watch(&auth(0)).is_err());
        // SSLRequest answered N: the plaintext messages are watched.
        let mut w = Watched::new((), RequireAuth::default(), State::SslAnswer);
        assert!(w.watch(&[&b"N"[..], &auth(3)].concat()).is_err());
        let mut w = Watched::new((), RequireAuth::default(), State::SslAnswer);
        assert!(w.watch(&[&b"S"[..], &auth(3)].concat()).is_ok());
    }
}
