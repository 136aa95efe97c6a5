//! JSON Web Tokens: HS256 with a shared secret (`PGWAY_JWT_SECRET_FILE`, Supabase's JWT
//! secret) and RS256/ES256 with public keys from a JWKS file (`PGWAY_JWT_JWKS_FILE`).
//!
//! The algorithm a token may use is decided by the key, never by the token: an HS256 token is
//! only checked against the secret, an RS256/ES256 token only against a JWKS key of that same
//! algorithm. So `alg: none` (not an algorithm jsonwebtoken knows) and algorithm confusion (an
//! HS256 token "signed" with a public RSA key as its secret) are refused.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::Refused;

/// Shorter HS256 secrets are refused: RFC 7518 asks for at least the hash size.
pub const MIN_SECRET_LEN: usize = 32;

/// What a token must say, besides being signed by a known key.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub role_claim: String,
    pub allowed_roles: HashSet<String>,
    pub leeway: Duration,
}

/// The HS256 secret.
#[derive(Clone)]
pub struct Secret(DecodingKey);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// The file's contents without a trailing newline are the secret, as Supabase shows it.
    pub fn parse(bytes: &[u8]) -> Result<Secret, String> {
        let secret = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret must be at least {MIN_SECRET_LEN} bytes"
            ));
        }
        Ok(Secret(DecodingKey::from_secret(secret)))
    }
}

/// The public keys of a JWKS file, each with the one algorithm it verifies.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeySet {
    /// Reads a JWKS document; keys other than RSA (RS256) and P-256 (ES256) are skipped.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a key is invalid: {e}"))?;
            keys.push((jwk.common.key_id.clone(), algorithm, key));
        }
        if keys.is_empty() {
            return Err("the JWKS holds no RS256 or ES256 key".into());
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token: the one its `kid` names, or, without a `kid`, the only key of
    /// its algorithm.
    fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&DecodingKey> {
        let mut candidates = self
            .keys
            .iter()
            .filter(|(_, alg, _)| *alg == algorithm)
            .filter(|(id, _, _)| kid.is_none() || id.as_deref() == kid);
        let first = candidates.next()?;
        if kid.is_none() && candidates.next().is_some() {
            return None;
        }
        Some(&first.2)
    }
}

/// A verified token: the role it runs as and its claims for `request.jwt.claims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub role: String,
    /// The claims as compact JSON.
    pub claims: String,
    pub subject: Option<String>,
    /// Until when (Unix seconds, leeway included) the token passes the `exp` check.
    pub expires_at: u64,
}

fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Refused {
    Refused::Unauthenticated {
        reason,
        message: message.into(),
    }
}

/// Checks `token` against the keys and the rules.
pub fn verify(
    token: &str,
    secret: Option<&Secret>,
    keys: Option<&KeySet>,
    rules: &JwtRules,
) -> Result<Verified, Refused> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| unauthenticated("malformed", "the bearer token is not a valid JWT"))?;
    let key = match header.alg {
        Algorithm::HS256 => secret.map(|s| &s.0).ok_or_else(|| {
            unauthenticated(
                "algorithm",
                "HS256 tokens are not accepted (no PGWAY_JWT_SECRET_FILE)",
            )
        })?,
        Algorithm::RS256 | Algorithm::ES256 => keys
            .and_then(|k| k.find(header.kid.as_deref(), header.alg))
            .ok_or_else(|| {
                unauthenticated(
                    "unknown_key",
                    format!(
                        "no key in PGWAY_JWT_JWKS_FILE verifies this {:?} token",
                        header.alg
                    ),
                )
            })?,
        other => {
            return Err(unauthenticated(
                "algorithm",
                format!("{other:?} tokens are not accepted; use HS256, RS256 or ES256"),
            ));
        }
    };
    let validation = validation(header.alg, rules);
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(refusal)?;
    let claims = data.claims;
    let role = match claims.get(&rules.role_claim) {
        Some(Value::String(role)) => role.clone(),
        _ => {
            return Err(Refused::PermissionDenied(format!(
                "the token has no {:?} claim naming a database role",
                rules.role_claim
            )));
        }
    };
    if !rules.allowed_roles.contains(&role) {
        return Err(Refused::PermissionDenied(format!(
            "the token's role {role:?} is not in PGWAY_JWT_ALLOWED_ROLES"
        )));
    }
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) => Some(sub.clone()),
        _ => None,
    };
    // `exp` is required and was checked, so it is a number; a fraction counts down.
    let expires_at = claims.get("exp").and_then(Value::as_f64).map_or(0, |exp| {
        (exp.max(0.0) as u64).saturating_add(rules.leeway.as_secs())
    });
    let claims = Value::Object(claims).to_string();
    Ok(Verified {
        role,
        claims,
        subject,
        expires_at,
    })
}

/// What a token of `algorithm` must satisfy under `rules`: expiry and not-before with the
/// leeway, and the audience and issuer when they are configured (then required).
fn validation(algorithm: Algorithm, rules: &JwtRules) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = rules.leeway.as_secs();
    validation.validate_nbf = true;
    match &rules.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &rules.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    validation
}

/// Why the token was refused, in the caller's terms.
fn refusal(e: jsonwebtoken::errors::Error) -> Refused {
    match e.kind() {
        ErrorKind::ExpiredSignature => unauthenticated("expired", "the token has expired"),
        ErrorKind::ImmatureSignature => {
            unauthenticated("not_yet_valid", "the token is not valid yet (nbf)")
        }
        ErrorKind::InvalidAudience => {
            unauthenticated("audience", "the token's audience (aud) is not accepted")
        }
        ErrorKind::InvalidIssuer => {
            unauthenticated("issuer", "the token's issuer (iss) is not accepted")
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            unauthenticated("missing_claim", format!("the token has no {claim:?} claim"))
        }
        ErrorKind::InvalidSignature => {
            unauthenticated("bad_signature", "the token's signature is not valid")
        }
        ErrorKind::InvalidAlgorithm => {
            unauthenticated("algorithm", "the token's algorithm does not match its key")
        }
        _ => unauthenticated("malformed", "the bearer token is not a valid JWT"),
    }
}
