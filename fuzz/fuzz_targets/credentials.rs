//! Bearer credentials and the files they are checked against: tokens files, JWTs, JWKS.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pgway::core::auth::jwt::{self, JwtRules, KeySet, Secret};
use pgway::core::auth::tokens::TokenSet;

fuzz_target!(|data: &[u8]| {
    let _ = TokenSet::parse(data);
    let _ = KeySet::parse(data);
    let token = String::from_utf8_lossy(data);
    let secret = Secret::parse(b"a-fuzzing-secret-of-at-least-32-bytes!!").ok();
    let rules = JwtRules {
        audience: Some("aud".into()),
        issuer: None,
        role_claim: "role".into(),
        allowed_roles: HashSet::from(["anon".to_owned()]),
        leeway: Duration::from_secs(1),
    };
    let _ = jwt::verify(&token, secret.as_ref(), None, &rules);
});
