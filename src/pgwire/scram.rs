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

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The one mechanism offered. `-PLUS` (channel binding) is never advertised, so a client asking
/// for it is refused.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The prefix of a SCRAM-SHA-256 secret in `pg_authid.rolpassword`.
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

/// Raw nonce length, before base64: PostgreSQL's `SCRAM_RAW_NONCE_LEN`.
const RAW_NONCE_LEN: usize = 18;

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

/// Server side of one SCRAM exchange with a client (the pooler acting as the server).
///
/// One attempt only: after `client_final`, success or not, the exchange is over.
pub struct ServerExchange {
    verifier: Verifier,
    state: ServerState,
}

enum ServerState {
    First,
    Final {
        /// The gs2 header ("n,," or "y,,") the client's `c=` must repeat.
        gs2_header: String,
        /// client nonce + server nonce.
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

impl ServerState {
    fn name(&self) -> &'static str {
        match self {
            ServerState::First => "awaiting client-first-message",
            ServerState::Final { .. } => "awaiting client-final-message",
            ServerState::Done => "done",
        }
    }
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl ServerExchange {
    /// An exchange that checks the client against `verifier`.
    pub fn new(verifier: Verifier) -> ServerExchange {
        ServerExchange {
            verifier,
            state: ServerState::First,
        }
    }

    /// The SASLInitialResponse's mechanism and data (the client-first-message): returns the
    /// server-first-message bytes, for AuthenticationSASLContinue.
    ///
    /// The gs2 header must be `n,,` or `y,,`: `p=` (channel binding) is refused, as `-PLUS` is
    /// never advertised, and so is an authorization identity. The user name in `n=` is ignored,
    /// as PostgreSQL ignores it: the startup packet's user is the one that counts.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::First) {
            return Err(ScramError::OutOfOrder);
        }
        // Whatever happens next, this exchange cannot start again.
        self.state = ServerState::Done;
        if mechanism != SCRAM_SHA_256 {
            return Err(ScramError::UnsupportedMechanism(truncate(mechanism)));
        }
        let message = std::str::from_utf8(data).map_err(|_| ScramError::NotUtf8)?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (cbind_flag, rest) = message
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match cbind_flag {
            "n" | "y" => {}
            flag if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("truncated gs2 header"))?;
        if authzid.starts_with("a=") {
            return Err(ScramError::AuthzidUnsupported);
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("bad authorization identity"));
        }

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        attribute(first, 'n').ok_or(ScramError::Malformed("no user name attribute"))?;
        let client_nonce = attrs
            .next()
            .and_then(|a| attribute(a, 'r'))
            .ok_or(ScramError::Malformed("no nonce attribute"))?;
        if client_nonce.is_empty() || !is_printable(client_nonce) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        check_extensions(attrs)?;

        let server_nonce = STANDARD.encode(rand::random::<[u8; RAW_NONCE_LEN]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::Final {
            gs2_header: format!("{cbind_flag},,"),
            nonce,
            client_first_bare: bare.to_owned(),
            server_first,
        };
        Ok(reply)
    }

    /// The SASLResponse data (the client-final-message): checks the channel binding `c=` is the
    /// base64 of the gs2 header, the nonce, and the proof (in constant time). On success returns
    /// the server-final-message (`v=...`) bytes, for AuthenticationSASLFinal, and the recovered
    /// ClientKey.
    pub fn client_final(&mut self, data: &[u8]) -> Result<(Vec<u8>, [u8; 32]), ScramError> {
        let ServerState::Final {
            gs2_header,
            nonce,
            client_first_bare,
            server_first,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = std::str::from_utf8(data).map_err(|_| ScramError::NotUtf8)?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof attribute"))?;
        if proof.contains(',') {
            return Err(ScramError::Malformed("garbage after the proof"));
        }
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| attribute(a, 'c'))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let cbind = STANDARD
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel binding is not valid base64"))?;
        if cbind != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let final_nonce = attrs
            .next()
            .and_then(|a| attribute(a, 'r'))
            .ok_or(ScramError::Malformed("no nonce attribute"))?;
        if final_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        check_extensions(attrs)?;
        let proof = decode_key(proof).ok_or(ScramError::Malformed("bad proof"))?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &client_signature);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored_key.ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        let reply = format!("v={}", STANDARD.encode(server_signature)).into_bytes();
        Ok((reply, client_key))
    }
}

/// Client side of SCRAM with a recovered ClientKey (no password): for logging in to the real
/// server as the client's user.
///
/// The proof only needs ClientKey and StoredKey, and the server's signature only ServerKey, so
/// no password (and no PBKDF2) is needed, provided the server still holds the same verifier:
/// hence the salt and iteration check in [`KeyClient::server_first`].
pub struct KeyClient {
    client_key: [u8; 32],
    verifier: Verifier,
    state: ClientState,
}

enum ClientState {
    First,
    ServerFirst { client_nonce: String },
    ServerFinal { auth_message: String },
    Done,
}

impl ClientState {
    fn name(&self) -> &'static str {
        match self {
            ClientState::First => "not started",
            ClientState::ServerFirst { .. } => "awaiting server-first-message",
            ClientState::ServerFinal { .. } => "awaiting server-final-message",
            ClientState::Done => "done",
        }
    }
}

impl fmt::Debug for KeyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyClient")
            .field("verifier", &self.verifier)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl KeyClient {
    /// A client that proves itself with `client_key`, expecting the server to hold `verifier`.
    pub fn new(client_key: [u8; 32], verifier: Verifier) -> KeyClient {
        KeyClient {
            client_key,
            verifier,
            state: ClientState::First,
        }
    }

    /// The client-first-message bytes (`n,,n=,r=<nonce>`), to send in SASLInitialResponse with
    /// mechanism [`SCRAM_SHA_256`]. The user name is left empty, as libpq does: the server takes
    /// the startup packet's. Calling it again starts over with a new nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_nonce = STANDARD.encode(rand::random::<[u8; RAW_NONCE_LEN]>());
        let message = format!("n,,n=,r={client_nonce}").into_bytes();
        self.state = ClientState::ServerFirst { client_nonce };
        message
    }

    /// From the server-first-message: checks the server's salt and iterations equal the
    /// verifier's (else [`ScramError::VerifierMismatch`]: the password was probably changed) and
    /// that the nonce extends ours; returns the client-final-message bytes
    /// (proof = ClientKey XOR HMAC(StoredKey, AuthMessage)).
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientState::ServerFirst { client_nonce } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = std::str::from_utf8(data).map_err(|_| ScramError::NotUtf8)?;

        // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count
        //                        ["," extensions]
        let mut attrs = message.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let nonce = attribute(first, 'r').ok_or(ScramError::Malformed("no nonce attribute"))?;
        let salt = attrs
            .next()
            .and_then(|a| attribute(a, 's'))
            .ok_or(ScramError::Malformed("no salt attribute"))?;
        let iterations = attrs
            .next()
            .and_then(|a| attribute(a, 'i'))
            .ok_or(ScramError::Malformed("no iteration count attribute"))?;
        check_extensions(attrs)?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| ScramError::Malformed("the salt is not valid base64"))?;
        let iterations =
            parse_iterations(iterations).ok_or(ScramError::Malformed("bad iteration count"))?;
        // The server must add its own part to the nonce.
        if nonce.len() <= client_nonce.len()
            || !nonce.starts_with(&client_nonce)
            || !is_printable(nonce)
        {
            return Err(ScramError::NonceMismatch);
        }
        if salt != self.verifier.salt || iterations != self.verifier.iterations {
            return Err(ScramError::VerifierMismatch);
        }

        // "biws" is base64 of the gs2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n=,r={client_nonce},{message},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let proof = xor(&self.client_key, &client_signature);
        let reply = format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes();
        self.state = ClientState::ServerFinal { auth_message };
        Ok(reply)
    }

    /// Verifies the server's signature (`v=`) with the ServerKey; a server error (`e=`) is
    /// reported as [`ScramError::Server`].
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), ScramError> {
        let ClientState::ServerFinal { auth_message } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = std::str::from_utf8(data).map_err(|_| ScramError::NotUtf8)?;
        if let Some(error) = attribute(message, 'e') {
            return Err(ScramError::Server(truncate(error)));
        }
        let signature =
            attribute(message, 'v').ok_or(ScramError::Malformed("no verifier attribute"))?;
        // Like libpq: nothing may follow the signature.
        let signature =
            decode_key(signature).ok_or(ScramError::Malformed("bad server signature"))?;
        let expected = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        if bool::from(signature.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

/// The value of `<name>=<value>`, or None.
fn attribute(part: &str, name: char) -> Option<&str> {
    part.strip_prefix(name)?.strip_prefix('=')
}

/// Optional extensions: each must at least look like an attribute (`<letter>=...`); their
/// meaning is ignored, as PostgreSQL ignores them.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for attr in attrs {
        let mut chars = attr.chars();
        let well_formed =
            chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.next() == Some('=');
        if !well_formed {
            return Err(ScramError::Malformed("bad attribute"));
        }
    }
    Ok(())
}

/// RFC 5802's `printable`: ASCII 0x21..=0x7E except ','.
fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A positive decimal iteration count, digits only.
fn parse_iterations(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&i| i > 0)
}

/// Exactly 32 bytes of base64 (a key, a proof, a signature).
fn decode_key(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// Untrusted text put into an error message, bounded in length.
fn truncate(text: &str) -> String {
    text.chars().take(100).collect()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = *a;
    for (o, b) in out.iter_mut().zip(b) {
        *o ^= b;
    }
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA-256 takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: RFC 5802's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut previous = hmac(password, &[salt, &[0, 0, 0, 1]]);
    let mut result = previous;
    for _ in 1..iterations {
        previous = hmac(password, &[&previous]);
        result = xor(&result, &previous);
    }
    result
}

/// SASLprep, as PostgreSQL applies it to passwords: a password SASLprep refuses is used as is.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Produced by PostgreSQL 15 for the password "secret"
    /// (`SET password_encryption = 'scram-sha-256'; CREATE ROLE x LOGIN PASSWORD 'secret'`).
    const PG15_SECRET: &str = "SCRAM-SHA-256$4096:R97VKp+8HDJX4BV8hUfz3w==$\
        yGamRchyeMEp3E2iEtsuyB55AfuVWvndMSICuWwS664=:4T9aH1M+/lF7g/2qvhyBh8ZrPmxeBE/PoD84dqmlLSU=";

    /// A server-first-message made for the client's nonce.
    type ServerFirstFor<'a> = dyn Fn(&str) -> String + 'a;
    /// A client-final-message made from a good one and the exchange's nonce.
    type Tamper<'a> = dyn Fn(&str, &str) -> Vec<u8> + 'a;

    fn random_salt() -> Vec<u8> {
        rand::random::<[u8; 16]>().to_vec()
    }

    /// HMAC(SaltedPassword, "Client Key"), computed with ring rather than this module.
    fn independent_client_key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).unwrap(),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
        ring::hmac::sign(&key, b"Client Key")
            .as_ref()
            .try_into()
            .unwrap()
    }

    /// A real client (postgres-protocol's, as tokio-postgres uses) against the exchange.
    fn real_client(
        verifier: &Verifier,
        password: &str,
        binding: ChannelBinding,
    ) -> Result<[u8; 32], String> {
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let mut server = ServerExchange::new(verifier.clone());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .map_err(|e| e.to_string())?;
        client.update(&first).map_err(|e| e.to_string())?;
        let (last, key) = server
            .client_final(client.message())
            .map_err(|e| e.to_string())?;
        client.finish(&last).map_err(|e| e.to_string())?;
        Ok(key)
    }

    #[test]
    fn postgres_protocol_client_round_trip() {
        let salt = random_salt();
        let verifier = Verifier::from_password("pencil", &salt, 4096);
        let expected = independent_client_key("pencil", &salt, 4096);
        for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            assert_eq!(real_client(&verifier, "pencil", binding).unwrap(), expected);
        }
        let err = real_client(&verifier, "pencils", ChannelBinding::unsupported()).unwrap_err();
        assert!(err.contains("invalid proof"), "{err}");
    }

    #[test]
    fn saslprep_applies_to_passwords() {
        // U+00AA normalises to "a" under NFKC; postgres-protocol prepares the same way.
        let salt = random_salt();
        let verifier = Verifier::from_password("p\u{aa}ss", &salt, 16);
        assert_eq!(verifier, Verifier::from_password("pass", &salt, 16));
        real_client(&verifier, "p\u{aa}ss", ChannelBinding::unsupported()).unwrap();
    }

    /// pgway on both sides: the client's exchange yields a ClientKey that logs in as the user.
    fn key_client_against_server(
        key: [u8; 32],
        client_verifier: Verifier,
        server_verifier: &Verifier,
    ) -> Result<(), ScramError> {
        let mut client = KeyClient::new(key, client_verifier);
        let mut server = ServerExchange::new(server_verifier.clone());
        let first = server.client_first(SCRAM_SHA_256, &client.client_first())?;
        let last = client.server_first(&first)?;
        let (reply, recovered) = server.client_final(&last)?;
        assert_eq!(recovered, key);
        client.server_final(&reply)
    }

    #[test]
    fn key_client_logs_in_with_the_recovered_key() {
        let salt = random_salt();
        let verifier = Verifier::from_password("hunter2", &salt, 4096);
        let key = real_client(&verifier, "hunter2", ChannelBinding::unsupported()).unwrap();
        key_client_against_server(key, verifier.clone(), &verifier).unwrap();

        // The server's verifier has another salt (the password was set again).
        let other = Verifier::from_password("hunter2", &random_salt(), 4096);
        let err = key_client_against_server(key, verifier.clone(), &other).unwrap_err();
        assert!(matches!(err, ScramError::VerifierMismatch), "{err}");
        // Or other iterations.
        let other = Verifier::from_password("hunter2", &salt, 4097);
        let err = key_client_against_server(key, verifier.clone(), &other).unwrap_err();
        assert!(matches!(err, ScramError::VerifierMismatch), "{err}");

        // A wrong key is refused by the server.
        let mut wrong = key;
        wrong[0] ^= 1;
        let err = key_client_against_server(wrong, verifier.clone(), &verifier).unwrap_err();
        assert!(matches!(err, ScramError::InvalidProof), "{err}");
    }

    #[test]
    fn key_client_checks_the_server() {
        let verifier = Verifier::from_password("hunter2", &random_salt(), 4096);
        let key = independent_client_key("hunter2", &verifier.salt, 4096);
        let run = |reply: &dyn Fn(&[u8]) -> Vec<u8>| {
            let mut client = KeyClient::new(key, verifier.clone());
            let mut server = ServerExchange::new(verifier.clone());
            let first = server
                .client_first(SCRAM_SHA_256, &client.client_first())
                .unwrap();
            let last = client.server_first(&first).unwrap();
            let (good, _) = server.client_final(&last).unwrap();
            client.server_final(&reply(&good))
        };
        run(&|good| good.to_vec()).unwrap();
        let mut forged = [0u8; 32];
        forged[5] = 7;
        let err = run(&|_| format!("v={}", STANDARD.encode(forged)).into_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::InvalidServerSignature), "{err}");
        let err = run(&|_| b"e=invalid-proof".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server refused SCRAM authentication: invalid-proof"
        );
        for bad in [&b"v="[..], b"v=AAAA", b"x=1", b"", b"\xff", b"v=!!!"] {
            assert!(run(&|_| bad.to_vec()).is_err());
        }
        let err = run(&|good| [good, b",x=1"].concat()).unwrap_err();
        assert!(matches!(err, ScramError::Malformed(_)), "{err}");
    }

    #[test]
    fn key_client_refuses_bad_server_first() {
        let verifier = Verifier::from_password("x", b"salt", 4096);
        let salt = STANDARD.encode(b"salt");
        let try_first = |make: &dyn Fn(&str) -> String| {
            let mut client = KeyClient::new([0; 32], verifier.clone());
            let first = String::from_utf8(client.client_first()).unwrap();
            let nonce = first.strip_prefix("n,,n=,r=").unwrap().to_owned();
            client.server_first(make(&nonce).as_bytes())
        };
        try_first(&|n| format!("r={n}abc,s={salt},i=4096")).unwrap();
        try_first(&|n| format!("r={n}abc,s={salt},i=4096,x=ext")).unwrap();
        let cases: Vec<Box<ServerFirstFor<'_>>> = vec![
            Box::new(|n| format!("r={n},s={salt},i=4096")),
            Box::new(|n| format!("r=X{n}abc,s={salt},i=4096")),
            Box::new(|n| format!("r={n}abc,s=***,i=4096")),
            Box::new(|n| format!("r={n}abc,s={salt},i=")),
            Box::new(|n| format!("r={n}abc,s={salt},i=-1")),
            Box::new(|n| format!("r={n}abc,s={salt},i=0")),
            Box::new(|n| format!("r={n}abc,s={salt},i=99999999999")),
            Box::new(|n| format!("r={n}abc,s={salt}")),
            Box::new(|n| format!("r={n}abc")),
            Box::new(|n| format!("m=x,r={n}abc,s={salt},i=4096")),
            Box::new(|n| format!("r={n}abc,s={salt},i=4096,")),
            Box::new(|_| String::new()),
        ];
        for case in &cases {
            assert!(try_first(case.as_ref()).is_err(), "{}", case("N"));
        }
        let mut client = KeyClient::new([0; 32], verifier.clone());
        client.client_first();
        assert!(matches!(
            client.server_first(b"r=\xff"),
            Err(ScramError::NotUtf8)
        ));
        // Out of order.
        let mut client = KeyClient::new([0; 32], verifier);
        assert!(matches!(
            client.server_first(b"r=a"),
            Err(ScramError::OutOfOrder)
        ));
        assert!(matches!(
            client.server_final(b"v=a"),
            Err(ScramError::OutOfOrder)
        ));
    }

    #[test]
    fn verifier_parse_and_encode() {
        let parsed = Verifier::parse(PG15_SECRET).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        assert_eq!(
            Verifier::from_password("secret", &parsed.salt, parsed.iterations),
            parsed
        );
        assert_eq!(parsed.encode(), PG15_SECRET);
        let made = Verifier::from_password("other", &random_salt(), 1000);
        assert_eq!(Verifier::parse(&made.encode()).unwrap(), made);
        // Debug shows no key.
        assert_eq!(format!("{parsed:?}"), "Verifier { iterations: 4096, .. }");
        let credential = Credential::ClientKey {
            client_key: [1; 32],
            verifier: parsed,
        };
        assert_eq!(
            format!("{credential:?}"),
            "ClientKey { verifier: Verifier { iterations: 4096, .. }, .. }"
        );
        assert_eq!(
            format!("{:?}", Credential::Password("pw".into())),
            "Password(..)"
        );
    }

    #[test]
    fn verifier_parse_refuses_malformed() {
        let good = Verifier::parse(PG15_SECRET).unwrap().encode();
        let key = STANDARD.encode([0u8; 32]);
        let cases = [
            String::new(),
            "SCRAM-SHA-256$".into(),
            "md5abcdef".into(),
            "secret".into(),
            good.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
            good.replace("4096", "0"),
            good.replace("4096", "-4096"),
            good.replace("4096", "+4096"),
            good.replace("4096", ""),
            good.replace("4096", "99999999999"),
            good.replacen(':', ";", 1),
            good.replacen('$', "#", 2),
            format!("SCRAM-SHA-256$4096:$${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:AAAA"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}x"),
            format!("SCRAM-SHA-256$4096:c2FsdA=${key}:{key}"),
            format!("SCRAM-SHA-256$4096:***${key}:{key}"),
            format!(" {good}"),
            format!("{good}\n"),
            good[..good.len() - 1].to_owned(),
        ];
        for case in &cases {
            let err = Verifier::parse(case).unwrap_err();
            assert!(
                matches!(err, ScramError::InvalidVerifier(_)),
                "{case}: {err}"
            );
        }
        Verifier::parse(&format!("SCRAM-SHA-256$1:c2FsdA==${key}:{key}")).unwrap();
    }

    /// Runs a server exchange's first step, returning its server-first-message.
    fn server_first(server: &mut ServerExchange, data: &str) -> Result<String, ScramError> {
        server
            .client_first(SCRAM_SHA_256, data.as_bytes())
            .map(|m| String::from_utf8(m).unwrap())
    }

    #[test]
    fn server_refuses_bad_client_first() {
        let verifier = Verifier::from_password("x", b"salt", 4096);
        let mut server = ServerExchange::new(verifier.clone());
        let first = server_first(&mut server, "n,,n=ignored,r=abc").unwrap();
        let nonce = first.strip_prefix("r=abc").unwrap();
        let (nonce, rest) = nonce.split_once(',').unwrap();
        assert_eq!(nonce.len(), 24);
        assert_eq!(rest, "s=c2FsdA==,i=4096");
        // Out of order, and only once.
        assert!(matches!(
            server_first(&mut server, "n,,n=,r=abc"),
            Err(ScramError::OutOfOrder)
        ));

        let refused = |mechanism: &str, data: &[u8]| {
            ServerExchange::new(verifier.clone())
                .client_first(mechanism, data)
                .unwrap_err()
        };
        assert!(matches!(
            refused("SCRAM-SHA-256-PLUS", b"n,,n=,r=abc"),
            ScramError::UnsupportedMechanism(_)
        ));
        assert!(matches!(
            refused(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"),
            ScramError::ChannelBindingUnsupported
        ));
        assert!(matches!(
            refused(SCRAM_SHA_256, b"n,a=bob,n=,r=abc"),
            ScramError::AuthzidUnsupported
        ));
        assert!(matches!(
            refused(SCRAM_SHA_256, b"n,,n=,r=a\xffb"),
            ScramError::NotUtf8
        ));
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"n,,n=",
            b"n,,n=,",
            b"n,,n=,r=",
            b"n,,r=abc",
            b"n,,n=,r=a b",
            b"n,,n=,r=abc,",
            b"n,,n=,r=abc,1=x",
            b"n,,m=x,n=,r=abc",
            b"x,,n=,r=abc",
            b"n,x,n=,r=abc",
            b"y,,n=,x=abc",
        ] {
            let err = refused(SCRAM_SHA_256, bad);
            assert!(
                matches!(err, ScramError::Malformed(_)),
                "{}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
        // Extensions are ignored.
        server_first(&mut ServerExchange::new(verifier), "y,,n=u,r=abc,x=1").unwrap();
    }

    #[test]
    fn server_refuses_bad_client_final() {
        let password = "pw";
        let verifier = Verifier::from_password(password, &random_salt(), 4096);
        // A correct client-final-message for a fresh exchange, then a tampered one.
        let attempt = |tamper: &dyn Fn(&str, &str) -> Vec<u8>| {
            let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let mut server = ServerExchange::new(verifier.clone());
            let first = server
                .client_first(SCRAM_SHA_256, client.message())
                .unwrap();
            client.update(&first).unwrap();
            let good = std::str::from_utf8(client.message()).unwrap().to_owned();
            let nonce = std::str::from_utf8(&first).unwrap()[2..]
                .split(',')
                .next()
                .unwrap()
                .to_owned();
            let result = server.client_final(&tamper(&good, &nonce));
            // One attempt only.
            assert!(matches!(
                server.client_final(good.as_bytes()),
                Err(ScramError::OutOfOrder)
            ));
            result
        };
        attempt(&|good, _| good.as_bytes().to_vec()).unwrap();
        let proof = |good: &str| good.rsplit_once(",p=").unwrap().1.to_owned();
        let err = attempt(&|good, _| good.replace("c=biws", "c=eSws").into_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::ChannelBindingMismatch), "{err}");
        let err = attempt(&|good, n| good.replace(n, &format!("{n}x")).into_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::NonceMismatch), "{err}");
        let err = attempt(&|good, n| good.replace(n, &n[1..]).into_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::NonceMismatch), "{err}");
        let err = attempt(&|good, _| {
            let mut raw = STANDARD.decode(proof(good)).unwrap();
            raw[31] ^= 0x80;
            good.replace(&proof(good), &STANDARD.encode(raw))
                .into_bytes()
        })
        .unwrap_err();
        assert!(matches!(err, ScramError::InvalidProof), "{err}");
        let malformed: Vec<Box<Tamper<'_>>> = vec![
            Box::new(|_, _| Vec::new()),
            Box::new(|good, _| good.as_bytes()[..good.len() / 2].to_vec()),
            Box::new(|good, _| good.as_bytes()[..good.len() - 1].to_vec()),
            Box::new(|good, _| good.replace(",p=", ",q=").into_bytes()),
            Box::new(|good, _| good.replace("c=biws", "c=bi*s").into_bytes()),
            Box::new(|good, _| good.replace("c=biws,", "").into_bytes()),
            Box::new(|good, n| good.replace(&format!("r={n},"), "").into_bytes()),
            Box::new(|good, n| {
                good.replace(&format!("r={n}"), &format!("x={n}"))
                    .into_bytes()
            }),
            Box::new(|good, _| good.replace(&proof(good), "AAAA").into_bytes()),
            Box::new(|good, _| format!("{good},x=1").into_bytes()),
            Box::new(|good, _| good.replace(",p=", ",,p=").into_bytes()),
        ];
        for tamper in &malformed {
            let err = attempt(tamper.as_ref()).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{err}");
        }
        let err = attempt(&|good, _| [good.as_bytes(), b"\xff"].concat()).unwrap_err();
        assert!(matches!(err, ScramError::NotUtf8), "{err}");
        // An extension before the proof is ignored, but it is part of the signed message, so
        // the real client's proof no longer matches.
        let err = attempt(&|good, _| good.replace(",p=", ",x=1,p=").into_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::InvalidProof), "{err}");
        // Out of order.
        let mut server = ServerExchange::new(verifier);
        assert!(matches!(
            server.client_final(b"c=biws,r=a,p=b"),
            Err(ScramError::OutOfOrder)
        ));
    }

    #[test]
    fn errors_carry_no_secrets() {
        let verifier = Verifier::parse(PG15_SECRET).unwrap();
        let texts = [
            ScramError::InvalidProof.to_string(),
            ScramError::VerifierMismatch.to_string(),
            Verifier::parse(&PG15_SECRET.replace("4096", "x"))
                .unwrap_err()
                .to_string(),
        ];
        let secrets = [
            STANDARD.encode(verifier.stored_key),
            STANDARD.encode(verifier.server_key),
        ];
        for text in &texts {
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{text}");
            }
        }
    }
}
