//! The client's session state: what a statement does to it, and the statements that carry its
//! settings from one server connection to the next.

use super::*;

impl Session {
    /// Reads a statement for its effect on the session: pins the client if it makes what
    /// only its backend can hold, or returns the statement to run instead when such
    /// statements are refused (`PGWAY_PG_SESSION_STATE=error`, or too many pinned clients).
    /// The refusal runs on the server, so the transaction fails there as the client sees it.
    pub(super) fn effect(&mut self, sql: &[u8]) -> Option<String> {
        let effect = session_effect(sql, true);
        if effect.settings {
            self.settings_changed = true;
        }
        let reason = effect.pins?;
        if self.pinned.is_some() {
            return None;
        }
        let refusal = match self.door.settings.session_state {
            SessionStateMode::Error => Some(format!(
                "{} keeps state in the server session, which transaction pooling can't carry \
                 between transactions",
                reason.statement()
            )),
            SessionStateMode::Pin if !self.door.clients.try_pin() => Some(format!(
                "{} needs a server connection of its own, and PGWAY_PG_MAX_PINNED clients \
                 already have one",
                reason.statement()
            )),
            SessionStateMode::Pin => None,
        };
        if let Some(message) = refusal {
            let hint = "connect to the database directly (or to a session pool) for this \
                        statement, or use its transaction-scoped form";
            return Some(format!(
                "DO $pgway$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}, HINT = {}; END$pgway$",
                literal(&message),
                literal(hint)
            ));
        }
        self.pinned = Some(reason);
        info!(user = %self.key.user, reason = reason.label(), "client pinned to its server connection");
        None
    }
}

/// The statement that brings a connection's settings to `wanted` (at link, and at login
/// for the client's startup parameters).
pub fn replay(wanted: &BTreeMap<String, String>) -> String {
    let mut sql = String::from("RESET ALL");
    if !wanted.is_empty() {
        sql.push_str("; SELECT ");
        for (i, (name, value)) in wanted.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("pg_catalog.set_config(");
            sql.push_str(&literal(name));
            sql.push_str(", ");
            sql.push_str(&literal(value));
            sql.push_str(", false)");
        }
    }
    sql
}

/// A string literal that reads the same whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The two text columns of a DataRow.
pub(super) fn two_texts(msg: &[u8]) -> Option<(String, String)> {
    let mut b = frame::body(msg);
    if b.len() < 2 || b.get_i16() != 2 {
        return None;
    }
    let mut column = || -> Option<String> {
        if b.len() < 4 {
            return None;
        }
        let len = b.get_i32();
        let len = usize::try_from(len).ok()?;
        let value = b.get(..len)?;
        let value = String::from_utf8_lossy(value).into_owned();
        b.advance(len);
        Some(value)
    };
    Some((column()?, column()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn replayed_settings_are_quoted() {
        let mut wanted = BTreeMap::new();
        wanted.insert("search_path".to_owned(), "a', b\\".to_owned());
        assert_eq!(
            replay(&wanted),
            "RESET ALL; SELECT pg_catalog.set_config(E'search_path', E'a'', b\\\\', false)"
        );
    }
}
