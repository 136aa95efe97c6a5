//! A client of the door written message by message, for what no driver does: logins with
//! made-up names, silence, pipelines without a Sync, results never read.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from `from`.
pub async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(addr).await
}

/// Reads one backend message: its type and body.
pub async fn read_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    loop {
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                let kind = buf[0];
                let mut msg = buf.split_to(len + 1);
                msg.advance(5);
                return Some((kind, msg));
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// A whole SCRAM login as `user` with `password` from `from`: the SQLSTATE it ended with
/// ("" when it got in) and how long the answer took.
pub async fn scram_login(
    from: &str,
    addr: SocketAddr,
    database: &str,
    user: &str,
    password: &str,
) -> (String, Duration) {
    let started = Instant::now();
    let code = match log_in(from, addr, database, user, password).await {
        Ok(_) => String::new(),
        Err(code) => code,
    };
    (code, started.elapsed())
}

/// A client logged in over SCRAM and ready for a query, or the SQLSTATE (or what went wrong)
/// that ended the login.
pub async fn log_in(
    from: &str,
    addr: SocketAddr,
    database: &str,
    user: &str,
    password: &str,
) -> Result<Raw, String> {
    let mut stream = connect_from(from, addr)
        .await
        .map_err(|_| "connect".to_string())?;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", database)], &mut out).unwrap();
    let mut buf = BytesMut::new();
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    stream
        .write_all(&out)
        .await
        .map_err(|_| "gone".to_string())?;
    while let Some((kind, body)) = read_message(&mut stream, &mut buf).await {
        out.clear();
        match kind {
            b'R' => match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                10 => frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                    .unwrap(),
                11 => {
                    scram.update(&body[4..]).map_err(|_| "scram".to_string())?;
                    frontend::sasl_response(scram.message(), &mut out).unwrap();
                }
                _ => {}
            },
            b'E' => return Err(sqlstate(&body)),
            b'Z' => return Ok(Raw { stream, buf }),
            _ => {}
        }
        if !out.is_empty() {
            stream
                .write_all(&out)
                .await
                .map_err(|_| "gone".to_string())?;
        }
    }
    Err("closed".into())
}

/// A logged-in client speaking the protocol message by message.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    /// Sends `out` as it is.
    pub async fn send(&mut self, out: &[u8]) {
        self.stream
            .write_all(out)
            .await
            .expect("writing to the door");
    }

    /// Reads messages until one of type `kind` (its body), or `None` at the end of the
    /// connection.
    pub async fn until(&mut self, kind: u8) -> Option<BytesMut> {
        loop {
            let (got, body) = read_message(&mut self.stream, &mut self.buf).await?;
            if got == kind {
                return Some(body);
            }
        }
    }

    /// Reads to the end of the connection: the SQLSTATE of the last error before it ("" if
    /// none).
    pub async fn last_error(&mut self) -> String {
        let mut code = String::new();
        while let Some((kind, body)) = read_message(&mut self.stream, &mut self.buf).await {
            if kind == b'E' {
                code = sqlstate(&body);
            }
        }
        code
    }
}

/// Bind (no parameters, text results) of `statement` to the unnamed portal, and Execute of it.
pub fn bind_execute(statement: &str, out: &mut BytesMut) {
    frontend::bind(
        "",
        statement,
        [],
        Vec::<()>::new(),
        |(), _| Ok(postgres_protocol::IsNull::No),
        [],
        out,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, out).unwrap();
}
