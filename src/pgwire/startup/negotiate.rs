//! Before the login: SSLRequest / GSSENCRequest / CancelRequest, then the startup packet, and
//! what it asks for (user, database, settings).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use metrics::counter;
use tokio::io::AsyncWriteExt;
use tracing::warn;

use super::{Refusal, read_startup};
use crate::core::telemetry as names;
use crate::pgwire::Door;
use crate::pgwire::frame::{self, Startup};
use crate::pgwire::server::Stream;

/// What the startup packet asked for.
pub struct Hello {
    pub user: String,
    pub database: String,
    /// The settings the client asked for (parameters, and `options`' `-c`).
    pub wanted: BTreeMap<String, String>,
    /// NegotiateProtocolVersion, when the client asked for more than 3.0.
    pub negotiate: BytesMut,
    /// Whether the connection is TLS.
    pub encrypted: bool,
}

/// Reads the client's requests up to its startup packet: TLS if asked (and there), refusals
/// of what the door doesn't serve. `None` when the client left or only sent a cancel.
pub async fn hello(
    door: &Arc<Door>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<Hello>, Refusal> {
    let mut encrypted = false;
    let (minor, params) = loop {
        let packet = match read_startup(stream, buf).await {
            None => return Ok(None),
            Some(Ok(packet)) => packet,
            Some(Err(error)) => {
                return Err(Refusal::protocol(format!(
                    "invalid startup packet: {error}"
                )));
            }
        };
        match frame::parse_startup(&packet) {
            Ok(Startup::Ssl) if !encrypted => {
                if !buf.is_empty() {
                    // Bytes sent after SSLRequest, before the handshake, would be read as
                    // if encrypted (CVE-2021-3935).
                    return Err(Refusal::protocol(
                        "received unencrypted data after SSL request".into(),
                    ));
                }
                if !start_tls(door, stream).await {
                    return Ok(None);
                }
                encrypted = door.tls.is_some();
            }
            Ok(Startup::GssEnc) if !encrypted => {
                if stream.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            Ok(Startup::Cancel { pid, key }) => {
                if let Ok(key) = <[u8; 4]>::try_from(&key[..]) {
                    let target = door.pools.target().clone();
                    door.cancels
                        .cancel(&target, (pid, i32::from_be_bytes(key)))
                        .await;
                }
                return Ok(None);
            }
            Ok(Startup::Start {
                major: 3,
                minor,
                params,
            }) => break (minor, params),
            Ok(Startup::Start { major, minor, .. }) => {
                return Err(Refusal::fatal(
                    "protocol",
                    "0A000",
                    format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                    ),
                ));
            }
            Ok(_) | Err(_) => {
                return Err(Refusal::protocol("invalid startup packet".into()));
            }
        }
    };
    read_params(minor, params, encrypted).map(Some)
}

/// Answers SSLRequest: `S` and the handshake when the door has TLS, else `N`. False when
/// the connection is over.
async fn start_tls(door: &Door, stream: &mut Stream) -> bool {
    let Some(tls) = door.tls.as_ref() else {
        return stream.write_all(b"N").await.is_ok();
    };
    if stream.write_all(b"S").await.is_err() {
        return false;
    }
    // The gRPC port's certificate (and client-certificate requirement), without its HTTP/2
    // ALPN: libpq offers "postgresql", and a server insisting on "h2" would fail the handshake.
    let mut config = (*tls.get()).clone();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let plain = std::mem::replace(stream, Box::new(tokio::io::empty()));
    match acceptor.accept(plain).await {
        Ok(tls) => {
            *stream = Box::new(tls);
            true
        }
        Err(error) => {
            counter!(names::TLS_HANDSHAKE_FAILURES, "reason" => "error").increment(1);
            warn!(%error, door = "postgres", "TLS handshake failed");
            false
        }
    }
}

/// The user, database and settings of a v3 startup packet.
fn read_params(
    minor: u16,
    params: Vec<(String, String)>,
    encrypted: bool,
) -> Result<Hello, Refusal> {
    let mut negotiate = BytesMut::new();
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name.starts_with("_pq_."))
        .map(|(name, _)| name.as_str())
        .collect();
    if minor > 0 || !unknown.is_empty() {
        frame::write_negotiate(&mut negotiate, 0, &unknown);
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return Err(Refusal::fatal(
            "protocol",
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        ));
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off" && r != "no") {
        return Err(Refusal::fatal(
            "replication",
            "08P01",
            "pgway does not serve replication connections: connect to the database directly".into(),
        ));
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
    Ok(Hello {
        user,
        database,
        wanted,
        negotiate,
        encrypted,
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
