//! The connector: the rustls configuration the TLS keys ask for, built once, and the
//! tokio-postgres connector every database connection goes through.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio_postgres::config::SslNegotiation;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::guard::{Socket, Watched, WatchedTls};
use super::require_auth::RequireAuth;
use super::verifier::ChainVerifier;
use crate::core::error::ConnectError;

/// A future that owns what it uses, `Send` for any task.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A connection's task, to be spawned.
pub type Connection =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send>>;
use super::{Roots, SslMode, TlsParams, TlsSettingError, Verification, setting};

/// The connector every database connection of the gateway goes through (pool, cancel
/// requests, readiness checks). Cheap to clone: the rustls configuration is shared.
#[derive(Clone)]
pub struct DatabaseTls {
    mode: SslMode,
    verification: Verification,
    roots: Option<Roots>,
    client_certificate: bool,
    connector: MakeRustlsConnect,
    /// The same configuration, for connections made with tokio-rustls directly (the
    /// PostgreSQL door's, which need the server's certificate for channel binding).
    config: Arc<ClientConfig>,
    /// What the database may ask of a login (`PGWAY_DATABASE_REQUIRE_AUTH`).
    require_auth: RequireAuth,
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
            config: Arc::new(unverified_config()),
            require_auth: RequireAuth::default(),
        }
    }

    /// The same, with `require` as what the database may ask of a login.
    pub fn with_require_auth(mut self, require: RequireAuth) -> DatabaseTls {
        self.require_auth = require;
        self
    }

    /// What the database may ask of a login.
    pub fn require_auth(&self) -> RequireAuth {
        self.require_auth
    }

    /// Opens a tokio-postgres connection to `database` through this connector, the server's
    /// authentication requests watched (see [`super::guard`]) unless every way is allowed.
    /// The connection's task is returned to be spawned. (A boxed future owning what it uses:
    /// the compiler can't prove the generic connect futures `Send` for callers otherwise.)
    pub fn connect(
        &self,
        database: &Config,
    ) -> BoxFuture<Result<(Client, Connection), ConnectError>> {
        let (mut connector, database) = (self.clone(), database.clone());
        Box::pin(async move {
            let require = connector.require_auth;
            if require.allows_all() {
                let (client, connection) = database.connect(connector).await?;
                return Ok((client, Box::pin(connection) as Connection));
            }
            let bound = database
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5));
            let work = async {
                let (socket, host) = super::guard::open_socket(&database).await?;
                let watched = Watched::socket(socket, require);
                let inner =
                    MakeTlsConnect::<Watched<Socket>>::make_tls_connect(&mut connector, &host)
                        .map_err(|e| ConnectError {
                            message: format!("TLS to the database: {e}"),
                            ..ConnectError::default()
                        })?;
                let tls = WatchedTls { inner, require };
                let (client, connection) = database.connect_raw(watched, tls).await?;
                Ok::<_, ConnectError>((client, Box::pin(connection) as Connection))
            };
            tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
                Err(ConnectError {
                    message: "timeout opening a connection to the database".into(),
                    ..ConnectError::default()
                })
            })
        })
    }

    /// Sends a cancel request for `token`'s backend over a connection of its own to
    /// `database` (a connection opened by [`DatabaseTls::connect`] may have no address of
    /// its own for tokio-postgres to send it to).
    pub fn cancel(&self, token: &CancelToken, database: &Config) -> BoxFuture<Result<(), String>> {
        let (mut connector, token, database) = (self.clone(), token.clone(), database.clone());
        Box::pin(async move {
            if connector.require_auth.allows_all() {
                return token
                    .cancel_query(connector)
                    .await
                    .map_err(|e| e.to_string());
            }
            let (socket, host) = super::guard::open_socket(&database)
                .await
                .map_err(|e| e.message)?;
            let tls = MakeTlsConnect::<Socket>::make_tls_connect(&mut connector, &host)
                .map_err(|e| e.to_string())?;
            token
                .cancel_query_raw(socket, tls)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// A tokio-rustls connector with the same configuration as the tokio-postgres one.
    pub fn rustls(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
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

/// Decides the mode and verification from the keys, and builds the rustls configuration.
pub(super) fn build(
    params: &TlsParams,
    negotiation: SslNegotiation,
) -> Result<DatabaseTls, TlsSettingError> {
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
        connector: MakeRustlsConnect::new(config.clone()),
        config: Arc::new(config),
        require_auth: RequireAuth::default(),
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

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

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
}
