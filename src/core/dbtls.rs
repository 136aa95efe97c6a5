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

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslNegotiation;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

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

/// The connector every database connection of the gateway goes through (pool, cancel
/// requests, readiness checks). Cheap to clone: the rustls configuration is shared.
#[derive(Clone)]
pub struct DatabaseTls {
    mode: SslMode,
    verification: Verification,
    roots: Option<Roots>,
    client_certificate: bool,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for DatabaseTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseTls")
            .field("mode", &self.mode)
            .field("verification", &self.verification)
            .field("roots", &self.roots)
            .field("client_certificate", &self.client_certificate)
            .finish_non_exhaustive()
    }
}

impl DatabaseTls {
    /// The effective `sslmode` (the default filled in).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// How much of the server's certificate is checked.
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// Plaintext only, for code that builds a [`tokio_postgres::Config`] by hand.
    pub fn disabled() -> DatabaseTls {
        DatabaseTls {
            mode: SslMode::Disable,
            verification: Verification::None,
            roots: None,
            client_certificate: false,
            // Never used: tokio-postgres doesn't call the connector with sslmode=disable.
            connector: MakeRustlsConnect::new(unverified_config()),
        }
    }
}

impl<S> MakeTlsConnect<S> for DatabaseTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        MakeTlsConnect::<S>::make_tls_connect(&mut self.connector, hostname)
    }
}

/// Parses a database connection string (URL or key=value form): the tokio-postgres settings
/// with the TLS mode applied, and the TLS connector, its CA and client certificate files read
/// now. Blocking (it reads files): call it at start-up.
pub fn parse(
    connection_string: &str,
) -> Result<(tokio_postgres::Config, DatabaseTls), TlsSettingError> {
    let (rest, params) = split(connection_string)?;
    let mut database: tokio_postgres::Config =
        rest.parse().map_err(TlsSettingError::ConnectionString)?;
    let tls = build(&params, database.get_ssl_negotiation())?;
    database.ssl_mode(tls.mode.wire());
    Ok((database, tls))
}

fn setting(message: impl Into<String>) -> TlsSettingError {
    TlsSettingError::Setting(message.into())
}

/// Decides the mode and verification from the keys, and builds the rustls configuration.
fn build(params: &TlsParams, negotiation: SslNegotiation) -> Result<DatabaseTls, TlsSettingError> {
    let roots = params.sslrootcert.as_deref().map(|value| match value {
        "system" => Roots::System,
        path => Roots::File(PathBuf::from(path)),
    });
    let explicit = params.sslmode.as_deref().map(SslMode::parse).transpose()?;
    let mode = match (explicit, &roots) {
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
        (Some(mode), Some(Roots::System)) if mode != SslMode::VerifyFull => {
            return Err(setting(format!(
                "sslrootcert=system trusts every public CA, so it needs sslmode=verify-full \
                 (not {mode})"
            )));
        }
        (Some(mode), _) => mode,
    };
    if mode == SslMode::Disable {
        // As in libpq, the certificate keys mean nothing without TLS.
        return Ok(DatabaseTls::disabled());
    }
    let verification = match (mode, &roots) {
        (SslMode::VerifyFull, Some(_)) => Verification::Full,
        (SslMode::VerifyCa, Some(_)) => Verification::Chain,
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(setting(format!(
                "sslmode={mode} needs sslrootcert: the CA certificate file (PEM) that signed the \
                 server's certificate, or `system` for the public web CAs"
            )));
        }
        // libpq checks the chain whenever a CA file is given, whatever the weaker mode says.
        (_, Some(_)) => Verification::Chain,
        (_, None) => Verification::None,
    };
    let client_cert = match (&params.sslcert, &params.sslkey) {
        (Some(cert), Some(key)) => Some(load_client_cert(Path::new(cert), Path::new(key))?),
        (None, None) => None,
        _ => {
            return Err(setting(
                "sslcert and sslkey go together: give both (client certificate and its key) or \
                 neither",
            ));
        }
    };
    let store = match &roots {
        Some(Roots::File(path)) => Some(load_roots(path)?),
        Some(Roots::System) => Some(webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect()),
        None => None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| setting(format!("TLS set-up: {e}")))?;
    let builder =
        match (verification, store) {
            (Verification::Full, Some(store)) => builder.with_root_certificates(store),
            (Verification::Chain, Some(store)) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainVerifier {
                    roots: Some(Arc::new(store)),
                    algorithms,
                })),
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainVerifier {
                    roots: None,
                    algorithms,
                })),
        };
    let mut config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            setting(format!(
                "sslcert / sslkey: the key doesn't fit the certificate or can't be used: {e}"
            ))
        })?,
        None => builder.with_no_client_auth(),
    };
    if negotiation == SslNegotiation::Direct {
        // PostgreSQL 17 refuses a direct TLS handshake without this ALPN protocol. It is not
        // sent otherwise: some proxies in front of older servers refuse unknown ALPN.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Ok(DatabaseTls {
        mode,
        verification,
        roots,
        client_certificate: params.sslcert.is_some(),
        connector: MakeRustlsConnect::new(config),
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsSettingError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| setting(format!("sslrootcert {shown}: {e}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setting(format!("sslrootcert {shown}: not a PEM file ({e})")))?;
    if certificates.is_empty() {
        return Err(setting(format!(
            "sslrootcert {shown}: holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
        )));
    }
    let mut store = RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        store.add(certificate).map_err(|e| {
            setting(format!(
                "sslrootcert {shown}: certificate {} can't be used as a CA: {e}",
                index + 1
            ))
        })?;
    }
    Ok(store)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn load_client_cert(cert: &Path, key: &Path) -> Result<ClientCert, TlsSettingError> {
    let pem =
        std::fs::read(cert).map_err(|e| setting(format!("sslcert {}: {e}", cert.display())))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setting(format!("sslcert {}: not a PEM file ({e})", cert.display())))?;
    if chain.is_empty() {
        return Err(setting(format!(
            "sslcert {}: holds no certificate",
            cert.display()
        )));
    }
    // The key's contents never reach a message: only the file name.
    let pem = std::fs::read(key).map_err(|e| setting(format!("sslkey {}: {e}", key.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        setting(format!(
            "sslkey {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        ))
    })?;
    Ok((chain, key))
}

/// A rustls configuration that encrypts without checking the server's certificate.
fn unverified_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider);
    // The ring provider supports TLS 1.2 and 1.3; this can only fail for a provider without
    // any cipher suite of a default version.
    let builder = builder
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions");
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainVerifier {
            roots: None,
            algorithms,
        }))
        .with_no_client_auth()
}

/// `verify-ca`: the chain up to a CA of `sslrootcert` (and validity dates), but not the host
/// name; rustls' own verifier always checks the name, hence this one. Without roots it is
/// `prefer` / `require` without a CA: like libpq, any certificate is accepted. The handshake
/// signatures are checked either way, so the connection is at least bound to the
/// certificate's key.
#[derive(Debug)]
struct ChainVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let certificate = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &certificate,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS failure of a connect attempt, described for the caller (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub message: String,
    /// A configuration problem retrying won't fix: a certificate that doesn't verify, a server
    /// without TLS when TLS is required, the server refusing our client certificate.
    pub permanent: bool,
}

/// What went wrong in TLS, if a connect error is a TLS one.
pub fn failure(error: &tokio_postgres::Error) -> Option<TlsFailure> {
    let mut source = error.source();
    while let Some(current) = source {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        // tokio-rustls wraps rustls' error in an io::Error, whose `source` skips it.
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(describe(tls));
        }
        // tokio-postgres reports this one as a bare string; its text is all there is to match.
        if current.to_string() == "server does not support TLS" {
            return Some(TlsFailure {
                message: "the database server does not offer TLS, and sslmode requires it".into(),
                permanent: true,
            });
        }
        source = current.source();
    }
    None
}

fn describe(error: &rustls::Error) -> TlsFailure {
    use rustls::AlertDescription as Alert;
    match error {
        rustls::Error::InvalidCertificate(certificate) => {
            let why = match certificate {
                CertificateError::UnknownIssuer => {
                    "it is not signed by a CA of sslrootcert (unknown CA)".to_owned()
                }
                // A CA of sslrootcert with the issuer's name but another key.
                CertificateError::BadSignature => {
                    "its signature doesn't verify against the CA of sslrootcert with the \
                     issuer's name (unknown CA)"
                        .to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("it is not valid for the host name (name mismatch: {certificate})")
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => {
                    format!("it is outside its validity period ({certificate})")
                }
                other => other.to_string(),
            };
            TlsFailure {
                message: format!("the database server's TLS certificate was rejected: {why}"),
                permanent: true,
            }
        }
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateRequired
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate),
        ) => TlsFailure {
            message: format!(
                "the database server refused the TLS handshake ({alert:?}): check sslcert and \
                 sslkey"
            ),
            permanent: true,
        },
        other => TlsFailure {
            message: format!("TLS handshake with the database failed: {other}"),
            permanent: false,
        },
    }
}

/// Takes the TLS keys out of a connection string; the rest goes to tokio-postgres as it was
/// written.
fn split(connection_string: &str) -> Result<(String, TlsParams), TlsSettingError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|prefix| connection_string.starts_with(*prefix))
    {
        Some(prefix) => Ok(split_url(connection_string, prefix.len())),
        None => split_key_values(connection_string),
    }
}

/// URL form. The query starts at the first `?` after the credentials, which end at the first
/// `@`: the same places tokio-postgres' parser finds them, so a `?` in a password is no query.
fn split_url(url: &str, prefix_len: usize) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let rest = &url[prefix_len..];
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    let Some(question) = rest[host_start..].find('?') else {
        return (url.to_owned(), params);
    };
    let query_start = prefix_len + host_start + question + 1;
    let (head, query) = url.split_at(query_start);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let ours = pair.split_once('=').is_some_and(|(key, value)| {
            match (percent_decode(key), percent_decode(value)) {
                (Some(key), Some(value)) => params.take(&key, value),
                // Left for tokio-postgres to report.
                _ => false,
            }
        });
        if !ours && !pair.is_empty() {
            kept.push(pair);
        }
    }
    let rebuilt = if kept.is_empty() {
        head[..head.len() - 1].to_owned()
    } else {
        format!("{head}{}", kept.join("&"))
    };
    (rebuilt, params)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// key=value form, tokenised with libpq's (and tokio-postgres') rules: values are bare words
/// or single-quoted, with backslash escapes. The other parameters are kept verbatim.
fn split_key_values(text: &str) -> Result<(String, TlsParams), TlsSettingError> {
    let mut params = TlsParams::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key_end = start;
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key_end = i + c.len_utf8();
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let well_formed = key_end > start && chars.next_if(|(_, c)| *c == '=').is_some();
        let value = if well_formed {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            read_value(&mut chars)
        } else {
            None
        };
        let Some(value) = value else {
            // Malformed: let tokio-postgres say how, in its words (they don't echo values).
            return Err(match text.parse::<tokio_postgres::Config>() {
                Err(e) => TlsSettingError::ConnectionString(e),
                Ok(_) => setting("not a valid connection string"),
            });
        };
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        if !params.take(&text[start..key_end], value) {
            kept.push(&text[start..end]);
        }
    }
    Ok((kept.join(" "), params))
}

fn read_value(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<String> {
    let mut value = String::new();
    if chars.next_if(|(_, c)| *c == '\'').is_some() {
        loop {
            match chars.next()? {
                (_, '\'') => return Some(value),
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        }
    }
    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
        if c == '\\' {
            if let Some((_, escaped)) = chars.next() {
                value.push(escaped);
            }
        } else {
            value.push(c);
        }
    }
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(sslmode: Option<&str>, sslrootcert: Option<&str>) -> TlsParams {
        TlsParams {
            sslmode: sslmode.map(str::to_owned),
            sslrootcert: sslrootcert.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn url_keys_are_taken_out() {
        let (rest, found) = split(
            "postgres://u:p%3Fw@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example:5432/app?application_name=x"
        );
        assert_eq!(found, params(Some("verify-full"), Some("/etc/ca.pem")));

        let (rest, found) = split("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(found, params(Some("require"), None));

        // A `?` inside the credentials is no query string.
        let (rest, found) = split("postgres://u:a?b@h/db").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(found, TlsParams::default());
    }

    #[test]
    fn key_value_keys_are_taken_out() {
        let (rest, found) = split(
            "host=h  sslmode = verify-ca password='a b\\'c' sslrootcert='/my certs/ca.pem' dbname=x",
        )
        .unwrap();
        assert_eq!(rest, "host=h password='a b\\'c' dbname=x");
        assert_eq!(found, params(Some("verify-ca"), Some("/my certs/ca.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn malformed_strings_do_not_echo() {
        let error = split("host=h password=hunter2 sslmode").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error = parse("host=h password=hunter2 sslmode=verify-everything").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(error.to_string().contains("verify-everything"), "{error}");
    }

    #[test]
    fn modes_and_defaults() {
        let (database, tls) = parse("postgres://u@h/db").unwrap();
        assert_eq!(tls.mode(), SslMode::Prefer);
        assert_eq!(tls.verification(), Verification::None);
        assert_eq!(
            database.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );

        let (database, tls) = parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(tls.mode(), SslMode::Disable);
        assert_eq!(
            database.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );

        let (database, tls) = parse("host=h sslrootcert=system").unwrap();
        assert_eq!(tls.mode(), SslMode::VerifyFull);
        assert_eq!(tls.verification(), Verification::Full);
        assert_eq!(
            database.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );

        assert!(parse("host=h sslmode=require sslrootcert=system").is_err());
        let error = parse("host=h sslmode=verify-full").unwrap_err();
        assert!(error.to_string().contains("needs sslrootcert"), "{error}");
        let error = parse("host=h sslmode=require sslcert=/c.pem").unwrap_err();
        assert!(error.to_string().contains("go together"), "{error}");
    }

    #[test]
    fn ca_file_problems_are_named() {
        let error = parse("host=h sslmode=verify-ca sslrootcert=/no/such/ca.pem").unwrap_err();
        assert!(error.to_string().contains("/no/such/ca.pem"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let error = parse(&format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            junk.display()
        ))
        .unwrap_err();
        assert!(
            error.to_string().contains("holds no certificate"),
            "{error}"
        );
    }

    struct Pki {
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        server: CertificateDer<'static>,
    }

    fn pki(ca_name: &str, names: &[&str]) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Pki {
            ca,
            server: server.der().clone(),
        }
    }

    fn chain_only(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> ChainVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        ChainVerifier {
            roots: Some(Arc::new(roots)),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    #[test]
    fn verify_ca_checks_the_chain_but_not_the_name() {
        let good = pki("good CA", &["db.example"]);
        let other = pki("other CA", &["db.example"]);
        let verifier = chain_only(&good.ca);
        let elsewhere = ServerName::try_from("elsewhere.example").unwrap();
        verifier
            .verify_server_cert(&good.server, &[], &elsewhere, &[], UnixTime::now())
            .unwrap();
        let error = verifier
            .verify_server_cert(&other.server, &[], &elsewhere, &[], UnixTime::now())
            .unwrap_err();
        assert_eq!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        let failure = describe(&error);
        assert!(failure.permanent);
        assert!(
            failure.message.contains("unknown CA"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn other_handshake_failures_are_not_permanent() {
        let failure = describe(&rustls::Error::HandshakeNotComplete);
        assert!(!failure.permanent);
    }
}
