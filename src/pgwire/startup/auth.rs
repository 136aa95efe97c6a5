//! The client's SCRAM-SHA-256 login.
//!
//! An unknown user goes through the same exchange as a known one, with a verifier no password
//! matches, and gets the same message as a wrong password: neither the answer nor its timing
//! tells the two apart. Nothing here derives a key from a password (PBKDF2): checking a proof
//! takes a few hashes, so a flood of logins can't keep the runtime's workers busy.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use super::{Refusal, read_message};
use crate::pgwire::Door;
use crate::pgwire::frame;
use crate::pgwire::scram::{ServerExchange, Verifier};
use crate::pgwire::server::Stream;
use crate::pgwire::users::Found;

/// Runs the exchange; the user's entry and the key its proof recovered when it is right.
pub async fn authenticate(
    door: &Door,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    mut out: BytesMut,
) -> Result<(Found, [u8; 32]), Refusal> {
    let found = door.users.find(user).await;
    let verifier = match &found {
        Some(found) => found.verifier().clone(),
        None => mock_verifier(&door.mock_secret, user),
    };
    frame::write_auth(&mut out, 10, b"SCRAM-SHA-256\0\0");
    stream.write_all(&out).await.map_err(|_| Refusal::gone())?;
    out.clear();
    let mut exchange = ServerExchange::new(verifier);
    let msg = read_message(stream, buf).await.ok_or_else(Refusal::gone)?;
    if msg[0] != b'p' {
        return Err(Refusal::bad_login(user, "expected SASLInitialResponse"));
    }
    let mut b = frame::body(&msg);
    let mechanism = frame::take_cstr(&mut b)
        .filter(|_| b.len() >= 4)
        .ok_or_else(|| Refusal::bad_login(user, "malformed SASLInitialResponse"))?;
    let len = b.get_i32();
    let data = if len < 0 { &[][..] } else { b };
    let mechanism = String::from_utf8_lossy(mechanism).into_owned();
    let first = exchange
        .client_first(&mechanism, data)
        .map_err(|e| Refusal::bad_login(user, &e.to_string()))?;
    frame::write_auth(&mut out, 11, &first);
    stream.write_all(&out).await.map_err(|_| Refusal::gone())?;
    out.clear();
    let msg = read_message(stream, buf).await.ok_or_else(Refusal::gone)?;
    if msg[0] != b'p' {
        return Err(Refusal::bad_login(user, "expected SASLResponse"));
    }
    let proven = exchange.client_final(frame::body(&msg));
    match (found, proven) {
        (Some(found), Ok((last, key))) => {
            frame::write_auth(&mut out, 12, &last);
            stream.write_all(&out).await.map_err(|_| Refusal::gone())?;
            Ok((found, key))
        }
        (None, _) => Err(Refusal::bad_login(user, "unknown user").reason("unknown_user")),
        (Some(_), Err(error)) => {
            Err(Refusal::bad_login(user, &error.to_string()).reason("wrong_password"))
        }
    }
}

/// A verifier no password matches, the same for a name every time (so an unknown user can't
/// be told from a known one by its salt), made from two keyed hashes instead of PBKDF2.
fn mock_verifier(secret: &[u8; 32], user: &str) -> Verifier {
    use hmac::{Hmac, KeyInit, Mac};
    let keyed = |label: &[u8]| -> [u8; 32] {
        match Hmac::<sha2::Sha256>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(label);
                mac.update(user.as_bytes());
                mac.finalize().into_bytes().into()
            }
            // HMAC takes a key of any length, so this doesn't happen; a random key would do.
            Err(_) => rand::random(),
        }
    };
    let salt = keyed(b"salt");
    Verifier {
        iterations: 4096,
        salt: salt[..16].to_vec(),
        // Random: no ClientKey hashes to it, so no proof matches.
        stored_key: rand::random(),
        server_key: keyed(b"server"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_users_salt_is_stable_and_its_own() {
        let secret = [7u8; 32];
        let a = mock_verifier(&secret, "alice");
        assert_eq!(a.salt, mock_verifier(&secret, "alice").salt);
        assert_ne!(a.salt, mock_verifier(&secret, "bob").salt);
        assert_ne!(a.salt, mock_verifier(&[8u8; 32], "alice").salt);
        assert_eq!(
            a.iterations, 4096,
            "PostgreSQL's default count, like a real verifier"
        );
    }
}
