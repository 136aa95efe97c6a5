//! The client's session state: what each statement does to it, as read before it runs.
//!
//! Settings are carried: each statement that changes them is noted, and before the server
//! connection goes back to the pool the door reads what the session now holds (see
//! [`super::own`]). What only the backend can hold pins the client. What the reading can't
//! vouch for is checked on the server before anyone else gets the connection.

use std::collections::BTreeSet;

use metrics::counter;

use crate::core::sql::{Resets, SessionEffect};
use crate::core::telemetry as names;

use super::*;

/// Settings PostgreSQL hides from `pg_settings`, carried as the client gave them at startup.
pub(super) const HIDDEN: &[&str] = &["role", "session_authorization"];

/// What the transaction in progress did to the session, beyond its own end.
#[derive(Debug, Default)]
pub(super) struct Noted {
    /// Settings changed: read them back before unlinking.
    pub settings: bool,
    /// Something ran that the reading can't vouch for, or that creates or releases what pins:
    /// ask the server what the session holds before unlinking.
    pub check: bool,
    /// Something ran that may have changed settings the door can't name: the connection's
    /// next link starts from `RESET ALL`.
    pub unknown_settings: bool,
    /// Something ran since the link that may have changed the `search_path`: until it is
    /// read back (at the unlink), the client's named statements are its own (see
    /// [`crate::pgwire::statements`]).
    pub path: bool,
    /// Settings returned to their defaults, whose startup values must be put back (PostgreSQL
    /// resets to the startup values; the server connection's are pgway's).
    pub resets: Resets,
}

/// The client's unnamed statement: prepared again on whichever server connection runs it
/// (a driver may Parse it, Sync, and Bind it in a later transaction).
#[derive(Debug, Clone)]
pub(super) struct Unnamed {
    pub query: Bytes,
    pub types: Bytes,
    pub effect: Arc<SessionEffect>,
    /// The `standard_conforming_strings` it was read under.
    pub standard_strings: bool,
    /// The global statement it runs as, when kept (`PGWAY_PG_KEEP_UNNAMED`).
    pub kept: Option<Arc<Statement>>,
}

impl Session {
    /// What `sql` does to the session, read as this session's server reads it.
    pub(super) fn read(&self, sql: &[u8]) -> SessionEffect {
        session_effect(sql, self.wanted.standard_strings())
    }

    /// Notes what a statement about to run does. `params` is a Bind's parameters, for the
    /// settings a `set_config($n, …)` names.
    pub(super) fn note(&mut self, effect: &SessionEffect, params: Option<&[u8]>) {
        if effect.is_plain() {
            return;
        }
        let noted = &mut self.noted;
        noted.settings |= effect.settings;
        // Custom settings (`app.tenant_id`, the row-level security pattern) and named ones
        // other than the path don't touch how a statement is analysed.
        noted.path |= effect.unverified
            || effect.local_path
            || !effect.name_params.is_empty()
            || (effect.settings
                && (effect.names.is_empty() || effect.names.iter().any(|n| n == "search_path")));
        if effect.unverified {
            noted.check = true;
            noted.unknown_settings = true;
        }
        if effect.pins.is_some() || effect.releases {
            noted.check = true;
        }
        if effect.resets.any() {
            noted.resets.merge(&effect.resets);
        }
        for name in &effect.names {
            if name.contains('.') {
                self.custom.insert(name.clone());
            }
        }
        if effect.unverified {
            // A name handed to what runs out of sight as a parameter (`SELECT
            // set_tenant($1, $2)`) is read back too.
            for value in params.map(frame::bind_params).unwrap_or_default() {
                if crate::core::sql::looks_like_custom_name(value) {
                    self.custom
                        .insert(String::from_utf8_lossy(value).to_ascii_lowercase());
                }
            }
        }
        let noted = &mut self.noted;
        for &n in &effect.name_params {
            // The change is checked on the server too (the name could be the role).
            noted.check = true;
            match params.and_then(|p| frame::bind_param(p, n)) {
                Some(name) => {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    if name.contains('.') {
                        self.custom.insert(name);
                    }
                }
                None => noted.unknown_settings = true,
            }
        }
    }

    /// Decides, before it runs, about a statement that makes what only its backend can hold:
    /// pins the client, or returns the statement to run instead when such statements are
    /// refused (`PGWAY_PG_SESSION_STATE=error`, or too many pinned clients). The refusal runs
    /// on the server, so the transaction fails there as the client sees it.
    pub(super) fn admit(&mut self, effect: &SessionEffect) -> Option<String> {
        let reason = effect.pins?;
        if self.pinned.is_some() {
            return None;
        }
        if let Some(message) = self.refusal(reason) {
            return Some(refusal_sql(&message));
        }
        self.pinned = Some(reason);
        self.listed.entry.set_pinned(Some(reason.label()));
        info!(user = %self.key.user, reason = reason.label(), "client pinned to its server connection");
        None
    }

    /// Why `reason` can't pin this client, if it can't; a place among the pinned taken if it
    /// can.
    pub(super) fn refusal(&self, reason: PinReason) -> Option<String> {
        let (kind, message) = match self.door.settings.session_state {
            SessionStateMode::Error => (
                "session_state",
                format!(
                    "{} keeps state in the server session, which transaction pooling can't \
                     carry between transactions",
                    reason.statement()
                ),
            ),
            SessionStateMode::Pin
                if !self
                    .door
                    .clients
                    .try_pin(self.door.settings.max_pinned.get()) =>
            {
                (
                    "pin_cap",
                    format!(
                        "{} needs a server connection of its own, and PGWAY_PG_MAX_PINNED clients \
                     already have one",
                        reason.statement()
                    ),
                )
            }
            SessionStateMode::Pin => return None,
        };
        counter!(names::PG_REFUSALS, "reason" => kind).increment(1);
        warn!(
            peer = %self.peer,
            user = %self.key.user,
            reason = kind,
            %message,
            door = "postgres",
            "statement refused (0A000)"
        );
        Some(message)
    }

    /// The client is no longer pinned: what pinned it is gone.
    pub(super) fn unpin(&mut self) {
        if let Some(reason) = self.pinned.take() {
            self.door.clients.unpin();
            self.listed.entry.set_pinned(None);
            info!(user = %self.key.user, reason = reason.label(), "client unpinned: its session holds nothing of its own on the server connection any more");
        }
    }
}

/// Whether a session with `settings` reads strings as the standard says
/// (`standard_conforming_strings`, on unless the client turned it off).
fn standard_strings(settings: &BTreeMap<String, String>) -> bool {
    settings
        .get("standard_conforming_strings")
        .is_none_or(|v| !v.eq_ignore_ascii_case("off"))
}

/// The settings a client's session has beyond the server's defaults, with what is derived
/// from them made once, together, so that none of it can be left behind when they change:
/// the form a connection's `applied` is compared with at every link, and where the
/// session's strings end (`standard_conforming_strings`), which every reading of its SQL
/// needs.
#[derive(Debug)]
pub struct Wanted {
    values: BTreeMap<String, String>,
    set: Settings,
    standard_strings: bool,
    /// The `search_path`, as its statements are keyed (empty: the server's default).
    search_path: Bytes,
}

impl Wanted {
    pub fn new(values: BTreeMap<String, String>) -> Wanted {
        Wanted {
            set: Settings::of(&values),
            standard_strings: standard_strings(&values),
            // A startup packet may spell the name in any case, as PostgreSQL reads it.
            search_path: (values.iter())
                .find(|(name, _)| name.eq_ignore_ascii_case("search_path"))
                .map_or_else(Bytes::new, |(_, v)| Bytes::copy_from_slice(v.as_bytes())),
            values,
        }
    }

    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// The values as a connection's `applied` holds them.
    pub fn set(&self) -> &Settings {
        &self.set
    }

    pub(super) fn standard_strings(&self) -> bool {
        self.standard_strings
    }

    pub(super) fn search_path(&self) -> &[u8] {
        &self.search_path
    }
}

/// A statement that fails on the server with 0A000 and `message`.
pub(super) fn refusal_sql(message: &str) -> String {
    let hint = "connect to the database directly (or to a session pool) for this statement, \
                or use its transaction-scoped form";
    format!(
        "DO $pgway$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}, HINT = {}; END$pgway$",
        literal(message),
        literal(hint)
    )
}

/// A statement that fails on the server as a Parse of `name` fails directly when the session
/// has that name already: `42P05`, with PostgreSQL's message. (Raised by PL/pgSQL, so the
/// error carries its CONTEXT line too.)
pub(super) fn duplicate_sql(name: &[u8]) -> String {
    let message = format!(
        "prepared statement \"{}\" already exists",
        String::from_utf8_lossy(name)
    );
    format!(
        "DO $pgway$BEGIN RAISE EXCEPTION USING ERRCODE = '42P05', MESSAGE = {}; END$pgway$",
        literal(&message)
    )
}

/// The statement that brings a connection's settings to `wanted` at login (one Query: if a
/// startup value is refused, nothing of it stays, and the login fails as PostgreSQL's would).
pub fn replay(wanted: &BTreeMap<String, String>) -> String {
    let mut sql = String::from(RESET);
    if let Some(values) = set_values(wanted) {
        sql.push_str("; ");
        sql.push_str(&values);
    }
    sql
}

/// Back to the server's defaults. `RESET ALL` leaves the role alone (PostgreSQL marks it
/// `GUC_NO_RESET_ALL`): a role given at startup is undone by `RESET ROLE`.
pub(super) const RESET: &str = "RESET ALL; RESET ROLE";

/// `SELECT pg_catalog.set_config(…), …` for every setting of `wanted`.
pub(super) fn set_values(wanted: &BTreeMap<String, String>) -> Option<String> {
    if wanted.is_empty() {
        return None;
    }
    let mut sql = String::from("SELECT ");
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
    Some(sql)
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

/// The custom settings (`a.b`) among `names`.
pub(super) fn custom_names(names: &BTreeMap<String, String>) -> BTreeSet<String> {
    names.keys().filter(|n| n.contains('.')).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_settings_are_quoted() {
        let mut wanted = BTreeMap::new();
        wanted.insert("search_path".to_owned(), "a', b\\".to_owned());
        assert_eq!(
            replay(&wanted),
            "RESET ALL; RESET ROLE; SELECT pg_catalog.set_config(E'search_path', E'a'', b\\\\', false)"
        );
    }
}
