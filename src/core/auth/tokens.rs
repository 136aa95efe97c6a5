//! Static bearer tokens from `PGWAY_AUTH_TOKENS_FILE`.
//!
//! Only SHA-256 digests of the tokens are kept in memory, and a presented token is compared
//! with every one of them without stopping early, so neither the comparison time nor a memory
//! dump gives a token away.

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// Shorter tokens are refused when the file is read: they can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The accepted tokens.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

/// The SHA-256 digest of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl TokenSet {
    /// Parses the file: one token per line; blank lines and lines starting with `#` are
    /// skipped, surrounding spaces trimmed. Errors name the line, never its content.
    pub fn parse(text: &[u8]) -> Result<TokenSet, String> {
        let text = std::str::from_utf8(text).map_err(|_| "the file is not UTF-8".to_owned())?;
        let mut digests = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {}: a token must be at least {MIN_TOKEN_LEN} characters",
                    number + 1
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {}: a token must be printable ASCII without spaces (it travels in a header)",
                    number + 1
                ));
            }
            digests.push(sha256(token.as_bytes()));
        }
        if digests.is_empty() {
            return Err("the file holds no token".into());
        }
        Ok(TokenSet { digests })
    }

    /// The fingerprint of the token whose SHA-256 is `presented`, if it is one of the set:
    /// the first 8 hex digits of the digest, which names the token in logs and limits without
    /// revealing it. (The caller hashes the credential once, for this and the JWT cache.)
    pub fn check(&self, presented: &[u8; 32]) -> Option<String> {
        let mut found = subtle::Choice::from(0);
        for known in &self.digests {
            found |= known.ct_eq(presented);
        }
        bool::from(found).then(|| fingerprint(presented))
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

fn fingerprint(digest: &[u8; 32]) -> String {
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_whole() {
        let set =
            TokenSet::parse(b"# services\nalpha-0123456789abcdef\n\n  beta-0123456789abcdef  \n")
                .unwrap();
        assert_eq!(set.len(), 2);
        let check = |token: &str| set.check(&sha256(token.as_bytes()));
        assert!(check("alpha-0123456789abcdef").is_some());
        assert!(check("beta-0123456789abcdef").is_some());
        assert!(check("alpha-0123456789abcde").is_none());
        assert!(check("").is_none());
        assert_ne!(
            check("alpha-0123456789abcdef"),
            check("beta-0123456789abcdef")
        );
    }

    #[test]
    fn weak_or_empty_files_are_refused() {
        let err = TokenSet::parse(b"short\n").unwrap_err();
        assert!(err.contains("line 1") && !err.contains("short"), "{err}");
        assert!(TokenSet::parse(b"# nothing\n").is_err());
        assert!(TokenSet::parse(b"has space in the token 123\n").is_err());
    }
}
