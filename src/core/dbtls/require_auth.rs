//! Which ways of logging in the door accepts from the database, in libpq's `require_auth`
//! vocabulary: a server (or whoever sits between) that asks for a cleartext password or an
//! MD5 hash would otherwise get the password, or something as good as it, for the asking.

use std::fmt;

/// A way the server can ask the door to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Scram,
    Md5,
    Password,
    /// No authentication at all (`trust`): nothing of the password is sent.
    None,
}

impl Method {
    const ALL: [Method; 4] = [Method::Scram, Method::Md5, Method::Password, Method::None];

    /// libpq's name of it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Scram => "scram-sha-256",
            Method::Md5 => "md5",
            Method::Password => "password",
            Method::None => "none",
        }
    }

    /// What the server asked for, in words.
    pub fn asked(self) -> &'static str {
        match self {
            Method::Scram => "SCRAM-SHA-256 authentication",
            Method::Md5 => "the password as an MD5 hash",
            Method::Password => "the password in cleartext",
            Method::None => "no authentication",
        }
    }
}

/// The methods allowed. Default: SCRAM-SHA-256, or none at all (a server that trusts the
/// connection learns nothing of the password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    allowed: [bool; 4],
}

impl RequireAuth {
    pub const DEFAULT: &'static str = "scram-sha-256,none";

    /// Parses a comma-separated list of methods, or of methods each prefixed by `!` (all
    /// but those), as libpq reads `require_auth`.
    pub fn parse(text: &str) -> Result<RequireAuth, String> {
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        let negated = items.first().is_some_and(|i| i.starts_with('!'));
        let mut allowed = [negated; 4];
        for item in items {
            if item.starts_with('!') != negated {
                return Err("negated and plain methods can't be mixed".into());
            }
            let name = item.trim_start_matches('!');
            let Some(index) = Method::ALL.iter().position(|m| m.name() == name) else {
                return Err(format!(
                    "{name:?} is not a method (write scram-sha-256, md5, password or none, \
                     or !method for all but it)"
                ));
            };
            allowed[index] = !negated;
        }
        if allowed == [false; 4] {
            return Err("allows no method".into());
        }
        Ok(RequireAuth { allowed })
    }

    /// Checks the AuthenticationRequest `code` the server sent (`asked`: it asked for a
    /// password or SASL before): the message to refuse it with, if it isn't allowed.
    pub fn check(&self, code: i32, asked: bool) -> Result<(), String> {
        let method = match code {
            0 if !asked => Method::None,
            3 => Method::Password,
            5 => Method::Md5,
            10 => Method::Scram,
            _ => return Ok(()),
        };
        if self.allows(method) {
            return Ok(());
        }
        Err(format!(
            "the database asked for {}, which PGWAY_DATABASE_REQUIRE_AUTH ({self}) does not allow",
            method.asked()
        ))
    }

    /// Every way is allowed: nothing to watch.
    pub fn allows_all(&self) -> bool {
        self.allowed == [true; 4]
    }

    pub fn allows(&self, method: Method) -> bool {
        Method::ALL
            .iter()
            .position(|&m| m == method)
            .is_some_and(|i| self.allowed[i])
    }
}

impl Default for RequireAuth {
    fn default() -> RequireAuth {
        RequireAuth {
            allowed: [true, false, false, true],
        }
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = (Method::ALL.iter())
            .filter(|m| self.allows(**m))
            .map(|m| m.name())
            .collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libpq_lists() {
        let default = RequireAuth::parse(RequireAuth::DEFAULT).unwrap();
        assert_eq!(default, RequireAuth::default());
        assert!(default.allows(Method::Scram) && default.allows(Method::None));
        assert!(!default.allows(Method::Md5) && !default.allows(Method::Password));
        let all_but = RequireAuth::parse("!password").unwrap();
        assert!(all_but.allows(Method::Md5) && !all_but.allows(Method::Password));
        assert_eq!(all_but.to_string(), "scram-sha-256,md5,none");
        assert!(RequireAuth::parse("md5,!password").is_err());
        assert!(RequireAuth::parse("kerberos").is_err());
        assert!(RequireAuth::parse("!scram-sha-256,!md5,!password,!none").is_err());
    }
}
