//! The SCRAM-SHA-256 verifier PostgreSQL stores in `pg_authid.rolpassword`: parsing it, deriving
//! it from a password, and its text form.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::ScramError;
use super::crypto::{hi, hmac, normalize};
use super::grammar::{decode_key, parse_iterations};

/// The prefix of a SCRAM-SHA-256 secret in `pg_authid.rolpassword`.
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
///
/// The keys are secrets (the StoredKey plus one overheard exchange yields the ClientKey; the
/// ServerKey lets one impersonate the server), so `Debug` shows only the iteration count and the
/// text form is only available through [`Verifier::encode`].
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt, decoded.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Parses the text PostgreSQL stores in `pg_authid.rolpassword` for a SCRAM-SHA-256 role.
    pub fn parse(text: &str) -> Result<Verifier, ScramError> {
        let bad = ScramError::InvalidVerifier;
        let rest = text
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(bad("it does not start with \"SCRAM-SHA-256$\""))?;
        let (iterations_salt, keys) = rest.split_once('$').ok_or(bad("the keys are missing"))?;
        let (iterations, salt) = iterations_salt
            .split_once(':')
            .ok_or(bad("the salt is missing"))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(bad("the ServerKey is missing"))?;
        let iterations = parse_iterations(iterations)
            .ok_or(bad("the iteration count is not a positive number"))?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| bad("the salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(bad("the salt is empty"));
        }
        let stored_key =
            decode_key(stored_key).ok_or(bad("the StoredKey is not 32 bytes of base64"))?;
        let server_key =
            decode_key(server_key).ok_or(bad("the ServerKey is not 32 bytes of base64"))?;
        Ok(Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives a verifier from a plaintext password (SASLprep'd), with the given salt and
    /// iterations, as PostgreSQL does for `CREATE ROLE ... PASSWORD`.
    ///
    /// Like PostgreSQL and postgres-protocol, a password SASLprep refuses is used as its raw
    /// bytes. An iteration count of 0 (meaningless in PBKDF2) is taken as 1.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let iterations = iterations.max(1);
        let salted = hi(&normalize(password), salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// The text form PostgreSQL stores (and [`Verifier::parse`] reads). It contains the keys:
    /// it is a secret, which is why this is not `Display`.
    pub fn encode(&self) -> String {
        format!(
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}
