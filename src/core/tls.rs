//! TLS on the server side (the gRPC port today): loading the certificate, key and client CA,
//! the accept path that turns TCP connections into TLS streams, and reloading the files
//! without a restart.
//!
//! The gRPC library's own TLS settings are fixed for the server's life, so pgway runs the handshakes
//! itself: every new connection is accepted with the [`ServerConfig`] current at that moment,
//! and a reload only swaps which one that is. Connections already open keep the one they
//! were made with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::counter;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use x509_cert::der::Decode;

use crate::core::telemetry::{TLS_HANDSHAKE_FAILURES, TLS_RELOADS};

/// The settings that name each file, for error messages.
pub const CERT_SETTING: &str = "PGWAY_TLS_CERT";
pub const KEY_SETTING: &str = "PGWAY_TLS_KEY";
pub const CLIENT_CA_SETTING: &str = "PGWAY_TLS_CLIENT_CA";

/// How long a client has to finish its handshake. A client that connects and says nothing
/// only holds its own task; accepting others goes on.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, RSA or SEC1).
    pub key: PathBuf,
    /// CAs (PEM bundle) a caller's certificate must chain to; `None` asks for no certificate.
    pub client_ca: Option<PathBuf>,
}

/// TLS as the server runs it: the files, how often they are checked for changes, and the
/// configuration loaded from them at start-up.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub files: TlsFiles,
    /// How often the files are read for changes; zero checks only on SIGHUP.
    pub reload_interval: Duration,
    pub initial: Loaded,
}

/// A file that could not be used: which setting names it, its path, and why. Never any of
/// the file's contents (a key must not reach a log).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}", path = path.display())]
pub struct LoadError {
    pub setting: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// A server configuration built from the files, with what the logs say about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's subject, such as `CN=pgway`.
    pub subject: String,
    /// When the leaf certificate expires.
    pub not_after: String,
    /// The files' contents this was built from, so a poll can tell whether anything changed.
    contents: Contents,
}

/// The raw bytes of the files.
#[derive(Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds the private key: never printed.
        f.debug_struct("Contents").finish_non_exhaustive()
    }
}

fn load_error(setting: &'static str, path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError {
        setting,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

impl TlsFiles {
    /// Reads and checks the files, blocking: for start-up, before the runtime serves anything.
    pub fn load_blocking(&self) -> Result<Loaded, LoadError> {
        let read = |setting, path: &Path| {
            std::fs::read(path).map_err(|e| load_error(setting, path, format!("cannot read: {e}")))
        };
        let contents = Contents {
            cert: read(CERT_SETTING, &self.cert)?,
            key: read(KEY_SETTING, &self.key)?,
            client_ca: match &self.client_ca {
                Some(path) => Some(read(CLIENT_CA_SETTING, path)?),
                None => None,
            },
        };
        self.build(contents)
    }

    /// Reads the files without blocking the runtime.
    async fn read(&self) -> Result<Contents, LoadError> {
        async fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
            tokio::fs::read(path)
                .await
                .map_err(|e| load_error(setting, path, format!("cannot read: {e}")))
        }
        Ok(Contents {
            cert: read(CERT_SETTING, &self.cert).await?,
            key: read(KEY_SETTING, &self.key).await?,
            client_ca: match &self.client_ca {
                Some(path) => Some(read(CLIENT_CA_SETTING, path).await?),
                None => None,
            },
        })
    }

    /// Builds a server configuration (ALPN `h2`) from the files' contents.
    fn build(&self, contents: Contents) -> Result<Loaded, LoadError> {
        let cert_error = |reason: String| load_error(CERT_SETTING, &self.cert, reason);
        let certs = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = certs.first() else {
            return Err(cert_error("holds no certificate".into()));
        };
        let (subject, not_after) = describe(leaf);
        // The PEM parser's errors may quote the file, so for the key they are not passed on.
        let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|_| {
            load_error(
                KEY_SETTING,
                &self.key,
                "holds no PEM private key (PKCS#8, RSA or SEC1)",
            )
        })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_error(format!("no usable TLS version: {e}")))?;
        let builder = match (&self.client_ca, &contents.client_ca) {
            (Some(path), Some(pem)) => {
                let ca_error = |reason: String| load_error(CLIENT_CA_SETTING, path, reason);
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert =
                        cert.map_err(|e| ca_error(format!("not a PEM certificate bundle: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(ca_error("holds no certificate".into()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| ca_error(format!("cannot verify clients with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            // A mismatch between certificate and key, or a key type ring can't use.
            load_error(
                KEY_SETTING,
                &self.key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
        // gRPC is HTTP/2 only; without ALPN some clients (Go's grpc) refuse the connection.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            subject,
            not_after,
            contents,
        })
    }
}

/// The subject and expiry of a certificate, for the logs only: a certificate this stricter
/// parser can't read is still served (rustls checks it against the key when it is loaded).
fn describe(cert: &CertificateDer<'_>) -> (String, String) {
    match x509_cert::Certificate::from_der(cert) {
        Ok(cert) => {
            let tbs = &cert.tbs_certificate;
            (tbs.subject.to_string(), tbs.validity.not_after.to_string())
        }
        Err(_) => ("(unreadable)".into(), "(unreadable)".into()),
    }
}

/// The server configuration new handshakes use; swapped by a reload.
#[derive(Debug, Clone)]
pub struct Current(Arc<RwLock<Arc<ServerConfig>>>);

impl Current {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Current(Arc::new(RwLock::new(config)))
    }

    /// The configuration for a new connection.
    pub fn get(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a whole `Arc` (a swap can't be half done): use it.
        match self.0.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, config: Arc<ServerConfig>) {
        match self.0.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// Accepts connections on `listener` and yields them once their TLS handshake is done, each
/// handshake in a task of its own with a time limit. Accepting stops when the returned stream
/// is dropped (the server stops taking connections) or `stopping` is cancelled.
///
/// The task holding the listener is returned too: the caller awaits it before saying it has
/// stopped, since until that task runs again the port still completes TCP handshakes.
pub fn incoming(
    listener: TcpListener,
    current: Current,
    stopping: CancellationToken,
) -> (
    ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = mpsc::channel(64);
    let accepting = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = sender.closed() => return,
                () = stopping.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%peer, %error, "cannot set TCP_NODELAY");
            }
            let acceptor = TlsAcceptor::from(current.get());
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Some(stream) = handshake(acceptor, stream, peer).await {
                    // The server has stopped taking connections: this one just closes.
                    let _ = sender.send(Ok(stream)).await;
                }
            });
        }
    });
    (ReceiverStream::new(receiver), accepting)
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(error)) => {
            debug!(%peer, %error, "TLS handshake failed");
            "error"
        }
        Err(_) => {
            debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            "timeout"
        }
    };
    counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
    None
}

/// Reloads the files on SIGHUP and whenever their contents change (checked every
/// `config.reload_interval`), until `stopping`. A reload that fails keeps the configuration
/// in use and logs why; the same broken contents are not reported again at every check.
pub async fn reload(config: TlsConfig, current: Current, stopping: CancellationToken) {
    let files = config.files;
    let mut last_good = config.initial.contents;
    let mut last_failed: Option<Contents> = None;
    let mut unreadable = false;
    let mut trigger = crate::core::reload::Trigger::new(config.reload_interval);
    while let Some(forced) = trigger.next(&stopping).await {
        let contents = match files.read().await {
            Ok(contents) => contents,
            Err(error) => {
                // A file mid-replacement may be missing for a moment; the next check retries.
                if forced || !unreadable {
                    error!(setting = error.setting, %error, "TLS reload failed; keeping the current certificate");
                    counter!(TLS_RELOADS, "outcome" => "failure").increment(1);
                }
                unreadable = true;
                continue;
            }
        };
        unreadable = false;
        if !forced && (contents == last_good || last_failed.as_ref() == Some(&contents)) {
            continue;
        }
        let built = {
            let files = files.clone();
            let contents = contents.clone();
            tokio::task::spawn_blocking(move || files.build(contents)).await
        };
        match built {
            Ok(Ok(loaded)) => {
                current.set(loaded.config);
                info!(
                    subject = %loaded.subject,
                    not_after = %loaded.not_after,
                    "TLS certificate reloaded"
                );
                counter!(TLS_RELOADS, "outcome" => "success").increment(1);
                last_good = loaded.contents;
                last_failed = None;
            }
            Ok(Err(error)) => {
                error!(setting = error.setting, %error, "TLS reload failed; keeping the current certificate");
                counter!(TLS_RELOADS, "outcome" => "failure").increment(1);
                last_failed = Some(contents);
            }
            Err(error) => {
                error!(%error, "TLS reload failed; keeping the current certificate");
                counter!(TLS_RELOADS, "outcome" => "failure").increment(1);
            }
        }
    }
}
