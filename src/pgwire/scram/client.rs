//! The client side of SCRAM with a recovered ClientKey: the pooler logging in to the real server
//! as its client's user, without the password.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use super::crypto::{hmac, xor};
use super::grammar::{
    attribute, check_extensions, decode_key, is_printable, parse_iterations, truncate,
};
use super::{Binding, RAW_NONCE_LEN, ScramError, Verifier};

/// Client side of SCRAM with a recovered ClientKey (no password): for logging in to the real
/// server as the client's user.
///
/// The proof only needs ClientKey and StoredKey, and the server's signature only ServerKey, so
/// no password (and no PBKDF2) is needed, provided the server still holds the same verifier:
/// hence the salt and iteration check in [`KeyClient::server_first`].
pub struct KeyClient {
    client_key: [u8; 32],
    verifier: Verifier,
    binding: Binding,
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
    /// A client that proves itself with `client_key`, expecting the server to hold `verifier`,
    /// with `binding` to the TLS connection (see [`Binding::mechanism`] for what to name).
    pub fn new(client_key: [u8; 32], verifier: Verifier, binding: Binding) -> KeyClient {
        KeyClient {
            client_key,
            verifier,
            binding,
            state: ClientState::First,
        }
    }

    /// The client-first-message bytes (`n,,n=,r=<nonce>`, or another gs2 header as the
    /// binding says), to send in SASLInitialResponse with the binding's mechanism. The user name is left empty, as libpq
    /// does: the server takes the startup packet's. Calling it again starts over with a new
    /// nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_nonce = STANDARD.encode(rand::random::<[u8; RAW_NONCE_LEN]>());
        let header = self.binding.gs2_header();
        let message = format!("{header}n=,r={client_nonce}").into_bytes();
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

        // The gs2 header again, with the binding data (base64 of "n,," is "biws").
        let without_proof = format!("c={},r={nonce}", self.binding.c_attribute());
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
