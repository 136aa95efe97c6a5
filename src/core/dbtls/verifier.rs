//! Certificate verification like libpq's: `verify-ca` checks the chain but not the host name,
//! weaker modes without a CA accept any certificate; and what a failed handshake means.

use std::error::Error as StdError;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// `verify-ca`: the chain up to a CA of `sslrootcert` (and validity dates), but not the host
/// name; rustls' own verifier always checks the name, hence this one. Without roots it is
/// `prefer` / `require` without a CA: like libpq, any certificate is accepted. The handshake
/// signatures are checked either way, so the connection is at least bound to the
/// certificate's key.
#[derive(Debug)]
pub(super) struct ChainVerifier {
    pub(super) roots: Option<Arc<RootCertStore>>,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
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

#[cfg(test)]
mod tests {
    use super::*;

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
