//! Channel binding (RFC 5929's `tls-server-end-point`, as PostgreSQL implements it): the
//! client's proof covers a hash of the certificate the TLS connection was made with, so a
//! party in the middle with a certificate of its own can't relay the login.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::Decode;
use x509_cert::der::asn1::ObjectIdentifier;

/// What the client says of channel binding in its gs2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No TLS (or binding turned off): `n,,`.
    Unsupported,
    /// TLS, but the server offered no `-PLUS` mechanism: `y,,` (a server that does support
    /// it then knows the offer was stripped in the middle).
    NotOffered,
    /// `p=tls-server-end-point,,` with the hash of the server's certificate.
    EndPoint(Vec<u8>),
}

impl Binding {
    /// The SASL mechanism to name in SASLInitialResponse.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Binding::EndPoint(_) => "SCRAM-SHA-256-PLUS",
            _ => super::SCRAM_SHA_256,
        }
    }

    pub(super) fn gs2_header(&self) -> &'static str {
        match self {
            Binding::Unsupported => "n,,",
            Binding::NotOffered => "y,,",
            Binding::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The `c=` attribute's value: the gs2 header and the binding data, in base64.
    pub(super) fn c_attribute(&self) -> String {
        let mut bytes = self.gs2_header().as_bytes().to_vec();
        if let Binding::EndPoint(data) = self {
            bytes.extend_from_slice(data);
        }
        STANDARD.encode(bytes)
    }
}

const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");

/// The `tls-server-end-point` data of a server certificate (DER): its hash with the hash of
/// its signature algorithm, SHA-256 for MD5 and SHA-1 (RFC 5929 §4.1). `None` for an
/// algorithm without one (Ed25519), where PostgreSQL offers no binding either.
pub fn tls_server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    let parsed = x509_cert::Certificate::from_der(certificate).ok()?;
    let digest = match parsed.signature_algorithm.oid {
        SHA1_WITH_RSA | SHA256_WITH_RSA | ECDSA_WITH_SHA256 => Sha256::digest(certificate).to_vec(),
        SHA384_WITH_RSA | ECDSA_WITH_SHA384 => Sha384::digest(certificate).to_vec(),
        SHA512_WITH_RSA | ECDSA_WITH_SHA512 => Sha512::digest(certificate).to_vec(),
        _ => return None,
    };
    Some(digest)
}
