//! The attribute grammar both sides of an exchange parse (RFC 5802's `<name>=<value>` lists),
//! total over untrusted text.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::ScramError;

/// The value of `<name>=<value>`, or None.
pub(super) fn attribute(part: &str, name: char) -> Option<&str> {
    part.strip_prefix(name)?.strip_prefix('=')
}

/// Optional extensions: each must at least look like an attribute (`<letter>=...`); their
/// meaning is ignored, as PostgreSQL ignores them.
pub(super) fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
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
pub(super) fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A positive decimal iteration count, digits only.
pub(super) fn parse_iterations(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&i| i > 0)
}

/// Exactly 32 bytes of base64 (a key, a proof, a signature).
pub(super) fn decode_key(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// Untrusted text put into an error message, bounded in length.
pub(super) fn truncate(text: &str) -> String {
    text.chars().take(100).collect()
}
