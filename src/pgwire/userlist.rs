//! PgBouncer's `auth_file` (userlist.txt): who may log in through the PostgreSQL door, with the
//! SCRAM-SHA-256 verifier each is checked against.
//!
//! The format is PgBouncer's, so an existing file can be reused: one entry per line,
//! `"username" "secret"`, both quoted, a double quote inside written as two (`""`); blank lines
//! and lines starting with `;` or `#` are ignored, as is anything after the second quoted field.
//!
//! Unlike PgBouncer, only SCRAM verifiers are accepted as secrets: pass-through authentication
//! needs the StoredKey and ServerKey, which neither a plaintext password on disk (that is the
//! password itself, kept out of files on purpose) nor an md5 hash can give. A duplicate user is
//! an error naming both lines, rather than the last entry silently winning, since two entries for
//! one user are almost certainly a mistake.

use std::collections::HashMap;
use std::fmt;

use super::scram::{ScramError, Verifier};

/// The users of an `auth_file` and their verifiers. `Debug` shows the user names only.
#[derive(Clone, Default)]
pub struct UserList {
    users: HashMap<String, Verifier>,
}

impl fmt::Debug for UserList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("UserList").field("users", &names).finish()
    }
}

/// Why an `auth_file` was refused: always names the line (1-based) and, once known, the user;
/// never the secret.
#[derive(Debug, thiserror::Error)]
pub enum UserListError {
    /// The line does not follow `"username" "secret"`.
    #[error("line {line}: {reason} (expected \"username\" \"SCRAM-SHA-256$...\")")]
    Syntax {
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The secret is a plaintext password or an md5 hash.
    #[error(
        "line {line}: user {user:?}: only SCRAM-SHA-256 verifiers are accepted (as stored in \
         pg_authid), not passwords or md5 hashes"
    )]
    NotScram {
        /// The 1-based line number.
        line: usize,
        /// The user of that line.
        user: String,
    },
    /// The secret starts like a SCRAM verifier but is not a valid one.
    #[error("line {line}: user {user:?}: {source}")]
    BadVerifier {
        /// The 1-based line number.
        line: usize,
        /// The user of that line.
        user: String,
        /// What is wrong with the verifier.
        source: ScramError,
    },
    /// The user already has an entry.
    #[error("line {line}: user {user:?} is listed twice (first on line {first})")]
    Duplicate {
        /// The 1-based line number of the second entry.
        line: usize,
        /// The user.
        user: String,
        /// The line of the first entry.
        first: usize,
    },
}

impl UserList {
    /// Parses an `auth_file`'s text. See the module documentation for the format; a duplicate
    /// user is an error naming the line.
    pub fn parse(text: &str) -> Result<UserList, UserListError> {
        let mut users = HashMap::new();
        let mut lines_of: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim_start();
            if entry.is_empty() || entry.starts_with(';') || entry.starts_with('#') {
                continue;
            }
            let syntax = |reason| UserListError::Syntax { line, reason };
            let (user, rest) = quoted(entry).map_err(syntax)?;
            if user.is_empty() {
                return Err(syntax("empty user name"));
            }
            let rest = rest.trim_start_matches([' ', '\t']);
            if rest.is_empty() {
                return Err(syntax("the secret is missing"));
            }
            // What follows the secret is ignored, as PgBouncer ignores it.
            let (secret, _) = quoted(rest).map_err(syntax)?;
            if !secret.starts_with("SCRAM-SHA-256$") {
                return Err(UserListError::NotScram { line, user });
            }
            let verifier = match Verifier::parse(&secret) {
                Ok(verifier) => verifier,
                Err(source) => return Err(UserListError::BadVerifier { line, user, source }),
            };
            if let Some(&first) = lines_of.get(&user) {
                return Err(UserListError::Duplicate { line, user, first });
            }
            lines_of.insert(user.clone(), line);
            users.insert(user, verifier);
        }
        Ok(UserList { users })
    }

    /// The verifier of `user`, if listed.
    pub fn get(&self, user: &str) -> Option<&Verifier> {
        self.users.get(user)
    }

    /// How many users are listed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A field quoted with `"`, a `""` inside standing for one `"`: the unquoted field and what
/// follows the closing quote.
fn quoted(text: &str) -> Result<(String, &str), &'static str> {
    let body = text
        .strip_prefix('"')
        .ok_or("a field does not start with a double quote")?;
    let mut field = String::new();
    let mut rest = body;
    loop {
        let (before, after) = rest
            .split_once('"')
            .ok_or("a field has no closing double quote")?;
        field.push_str(before);
        match after.strip_prefix('"') {
            Some(after) => {
                field.push('"');
                rest = after;
            }
            None => return Ok((field, after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(password: &str) -> String {
        Verifier::from_password(password, b"0123456789abcdef", 4096).encode()
    }

    #[test]
    fn parses_entries_comments_and_escapes() {
        let (alice, bob) = (verifier("a"), verifier("b"));
        let text = format!(
            "; a PgBouncer comment\n\
             # another comment\n\
             \n   \n\
             \"alice\" \"{alice}\"\n\
             \t\"bo\"\"b\"\t\"{bob}\" anything after is ignored \"x\"\r\n\
             \"carol\"   \"{alice}\"   ; trailing\n"
        );
        let list = UserList::parse(&text).unwrap();
        assert_eq!(list.len(), 3);
        assert!(!list.is_empty());
        assert_eq!(list.get("alice").unwrap().encode(), alice);
        assert_eq!(list.get("bo\"b").unwrap().encode(), bob);
        assert_eq!(list.get("carol").unwrap().encode(), alice);
        assert!(list.get("dave").is_none());
        assert_eq!(
            format!("{list:?}"),
            r#"UserList { users: ["alice", "bo\"b", "carol"] }"#
        );
        assert!(UserList::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_passwords_and_md5_naming_the_line_and_user() {
        let text = format!(
            "\"alice\" \"{}\"\n; comment\n\"bob\" \"hunter2\"\n",
            verifier("a")
        );
        let err = UserList::parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: user \"bob\": only SCRAM-SHA-256 verifiers are accepted (as stored in \
             pg_authid), not passwords or md5 hashes"
        );
        let err = UserList::parse("\"eve\" \"md53175bce1d3201d16594cebf9d7eb3f9d\"").unwrap_err();
        assert!(
            matches!(err, UserListError::NotScram { line: 1, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("md53175"));
        let err = UserList::parse("\"eve\" \"\"").unwrap_err();
        assert!(
            matches!(err, UserListError::NotScram { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_verifiers_duplicates_and_syntax() {
        let good = verifier("a");
        let broken = &good[..good.len() - 2];
        let err = UserList::parse(&format!("\"ann\" \"{broken}\"")).unwrap_err();
        assert!(
            matches!(err, UserListError::BadVerifier { line: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("line 1: user \"ann\": invalid SCRAM")
        );
        assert!(!err.to_string().contains(broken));

        let err =
            UserList::parse(&format!("\"ann\" \"{good}\"\n\n\"ann\" \"{good}\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: user \"ann\" is listed twice (first on line 1)"
        );

        for (text, line) in [
            ("ann \"x\"", 1),
            ("\n\"ann\"", 2),
            ("\"ann\" x", 1),
            ("\"ann", 1),
            ("\"ann\" \"SCRAM-SHA-256$", 1),
            ("\"\" \"x\"", 1),
            ("\"ann\"\"", 1),
        ] {
            let err = UserList::parse(text).unwrap_err();
            assert!(
                matches!(err, UserListError::Syntax { line: l, .. } if l == line),
                "{text:?}: {err}"
            );
        }
    }
}
