//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, for pass-through authentication.
//!
//! The pooler plays the server to its client and the client to the real server, like PgBouncer:
//! it checks the client's proof against the verifier PostgreSQL stores (`pg_authid.rolpassword`),
//! recovers the ClientKey from that proof (ClientProof XOR ClientSignature), and then logs in to
//! the real server as that user with the ClientKey alone, never knowing the password.
//!
//! Hand-written rather than borrowed: postgres-protocol has only the client side, and only with
//! a password; the pgwire crate's server side is tied to its own framework. The references are
//! PostgreSQL's `src/backend/libpq/auth-scram.c` and `src/interfaces/libpq/fe-auth-scram.c`, and
//! PgBouncer's `src/scram.c`.
//!
//! Every parser here takes untrusted bytes and is total: malformed input is an `Err`, never a
//! panic. No error message carries a key, a proof or a password.
//!
//! The pieces, by concern: `verifier` reads and derives what PostgreSQL stores ([`Verifier`]),
//! `server` is the exchange with a client ([`ServerExchange`]), `client` the login to the real
//! server with a recovered ClientKey ([`KeyClient`]); `grammar` and `crypto` hold what they
//! share.

mod binding;
mod client;
mod crypto;
mod grammar;
mod server;
mod verifier;

pub use binding::{Binding, tls_server_end_point};
pub use client::KeyClient;
pub use server::ServerExchange;
pub use verifier::Verifier;

use std::fmt;

/// The one mechanism offered. `-PLUS` (channel binding) is never advertised, so a client asking
/// for it is refused.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Raw nonce length, before base64: PostgreSQL's `SCRAM_RAW_NONCE_LEN`.
const RAW_NONCE_LEN: usize = 18;

/// What pgway logs in to the server with, for one user.
#[derive(Clone)]
pub enum Credential {
    /// The plaintext password (only for the user of `PGWAY_DATABASE_URL`); the server-side login
    /// uses postgres-protocol's `ScramSha256` client, not this module.
    Password(String),
    /// The ClientKey recovered from the client's own SCRAM exchange, plus the verifier it was
    /// checked against (its ServerKey verifies the server; its salt and iterations must match the
    /// server's).
    ClientKey {
        /// HMAC(SaltedPassword, "Client Key"), recovered from the client's proof.
        client_key: [u8; 32],
        /// The verifier the client's proof was checked against.
        verifier: Verifier,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(..)"),
            Credential::ClientKey { verifier, .. } => f
                .debug_struct("ClientKey")
                .field("verifier", verifier)
                .finish_non_exhaustive(),
        }
    }
}

/// Why a SCRAM exchange or a verifier was refused. No message includes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// A SCRAM message was not UTF-8.
    #[error("malformed SCRAM message: not UTF-8")]
    NotUtf8,
    /// A SCRAM message did not follow the grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for a mechanism other than SCRAM-SHA-256.
    #[error("unsupported SASL mechanism {0:?}: only SCRAM-SHA-256 is offered")]
    UnsupportedMechanism(String),
    /// The client asked for channel binding (`p=`), which is never advertised.
    #[error("SCRAM channel binding was requested, but it is not offered")]
    ChannelBindingUnsupported,
    /// The client-final-message's channel binding (`c=`) differs from the client-first-message's.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client sent an authorization identity (`a=`).
    #[error("SCRAM authorization identities are not supported")]
    AuthzidUnsupported,
    /// The nonce did not continue the exchange.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof was wrong: a wrong password.
    #[error("SCRAM authentication failed: invalid proof")]
    InvalidProof,
    /// The server's salt or iteration count differs from the stored verifier's.
    #[error(
        "the stored SCRAM verifier does not match the server's (different salt or iteration \
         count): was the password changed?"
    )]
    VerifierMismatch,
    /// The server's signature (`v=`) was wrong: the server does not know the verifier.
    #[error("the server's SCRAM signature is invalid")]
    InvalidServerSignature,
    /// The server ended the exchange with an error (`e=`).
    #[error("the server refused SCRAM authentication: {0}")]
    Server(String),
    /// A stored verifier's text was not a SCRAM-SHA-256 verifier.
    #[error("invalid SCRAM-SHA-256 verifier: {0}")]
    InvalidVerifier(&'static str),
    /// A step was called out of order, or after the exchange ended.
    #[error("SCRAM exchange step out of order")]
    OutOfOrder,
}

#[cfg(test)]
mod tests;
