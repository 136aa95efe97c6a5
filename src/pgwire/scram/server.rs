//! The server side of one SCRAM exchange: the pooler checking its client's proof against the
//! stored verifier and recovering the ClientKey from it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::crypto::{hmac, xor};
use super::grammar::{attribute, check_extensions, decode_key, is_printable, truncate};
use super::{RAW_NONCE_LEN, SCRAM_SHA_256, ScramError, Verifier};

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
