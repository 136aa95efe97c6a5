//! The arithmetic of SCRAM-SHA-256: HMAC, XOR, PBKDF2 (RFC 5802's Hi()) and SASLprep.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub(super) fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = *a;
    for (o, b) in out.iter_mut().zip(b) {
        *o ^= b;
    }
    out
}

pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA-256 takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: RFC 5802's Hi().
pub(super) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut previous = hmac(password, &[salt, &[0, 0, 0, 1]]);
    let mut result = previous;
    for _ in 1..iterations {
        previous = hmac(password, &[&previous]);
        result = xor(&result, &previous);
    }
    result
}

/// SASLprep, as PostgreSQL applies it to passwords: a password SASLprep refuses is used as is.
pub(super) fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}
