//! TLS between the gateway and PostgreSQL: `sslmode` and `sslrootcert` (and an optional client
//! certificate, `sslcert` / `sslkey`) from the connection string, with libpq's meanings, over
//! rustls.
//!
//! tokio-postgres only knows `sslmode` disable / prefer / require and refuses keys it doesn't
//! know, so [`parse`] takes these keys out of the string (URL or key=value form) before handing
//! the rest to tokio-postgres. The rustls configuration is built once, at start-up: a missing or
//! broken CA file stops the gateway with a message instead of failing every connect later.
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `prefer` (default) | if the server offers it | checked only if `sslrootcert` is given | no |
//! | `require` | always | checked only if `sslrootcert` is given | no |
//! | `verify-ca` | always | against `sslrootcert` | no |
//! | `verify-full` | always | against `sslrootcert` | yes (IP SANs for IP hosts) |
//!
//! Where pgway differs from libpq, and why:
//! - `verify-ca` / `verify-full` without `sslrootcert` is a start-up error; libpq would read
//!   `~/.postgresql/root.crt`, a file a container rarely has, and fail on the first connect.
//! - `prefer` does not fall back to plaintext after a failed handshake: a certificate that
//!   doesn't verify against the given CA is refused, not silently bypassed.
//! - `sslrootcert=system` means the public web roots bundled with pgway (webpki-roots), not the
//!   OS store; as in libpq it implies `verify-full`, and a weaker `sslmode` with it is an error
//!   (any public CA would vouch for anyone's certificate without the host name check).
//! - `PGSSLMODE` and the other libpq environment variables are not read.
//!
//! The parts:
//! - `connection_string`: [`parse`], which takes the TLS keys out of the string.
//! - `connector`: [`DatabaseTls`], the rustls configuration the keys ask for.
//! - [`guard`]: what the database may ask of a login (`PGWAY_DATABASE_REQUIRE_AUTH`, in
//!   [`require_auth`]), enforced on the connection's stream.
//! - `verifier`: the certificate check of `verify-ca` and weaker modes, and [`failure`], what
//!   a failed handshake tells the caller.

mod connection_string;
mod connector;
pub mod guard;
pub mod require_auth;
mod verifier;

pub use connection_string::parse;
pub use connector::DatabaseTls;
pub use verifier::{TlsFailure, failure};

use std::fmt;
use std::path::PathBuf;

/// The `sslmode` of the connection string, libpq's five values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, TlsSettingError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq also has allow; it is prefer with the order reversed, which no one needs.
            other => {
                return Err(TlsSettingError::Setting(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                )));
            }
        })
    }

    /// The value as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres does at the wire level: whether to ask for TLS and whether to insist.
    fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the connection is encrypted but the server is not authenticated.
    None,
    /// The chain up to a trusted CA, not the host name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    /// `sslrootcert=system`: the webpki-roots bundle.
    System,
}

/// Why the TLS part of the database connection string can't be used. Never holds the
/// connection string itself (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum TlsSettingError {
    /// tokio-postgres refused the rest of the string.
    #[error("not a valid connection string: {0}")]
    ConnectionString(tokio_postgres::Error),
    /// A TLS key has a bad value, or a file it names can't be used.
    #[error("{0}")]
    Setting(String),
}

/// The TLS keys taken out of a connection string; the last occurrence of a key wins, as in
/// libpq.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsParams {
    /// Keeps `value` if `key` is one of ours; false if it is tokio-postgres' business.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

fn setting(message: impl Into<String>) -> TlsSettingError {
    TlsSettingError::Setting(message.into())
}
