//! The door's own queries on a client's server connection, their answers swallowed: the
//! settings replayed at link, the startup values put back after a reset, and before the
//! connection goes back to the pool, the settings read back and the session checked.
//!
//! Every name they use is schema-qualified and every comparison goes through a `pg_catalog`
//! function or `OPERATOR(pg_catalog.…)`: they run with the client's `search_path`, where an
//! unqualified `=` could be the client's own operator.

use std::collections::BTreeSet;

use crate::core::sql::Resets;

use super::state::{HIDDEN, RESET, custom_names, set_values};
use super::*;

/// Which of the door's queries an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Own {
    /// `RESET ALL`, then the client's settings, at link.
    Replay,
    /// The settings the session now has (`pg_settings` and the custom ones by name).
    Read,
    /// What the session holds that only its backend can (see [`check_sql`]).
    Check,
    /// The client's startup values put back after it reset them.
    Restore,
    /// The door's statements dropped after a client removed some of them.
    Deallocate,
}

/// The settings PostgreSQL keeps per transaction: `source = 'session'` after `SET
/// TRANSACTION`, yet never to be replayed.
const PER_TRANSACTION: &str =
    "'{transaction_isolation,transaction_read_only,transaction_deferrable}'::pg_catalog.text[]";

/// The settings the session has beyond the server's defaults, and the custom ones it named.
fn read_sql(custom: &BTreeSet<String>) -> String {
    let mut sql = format!(
        "SELECT name, setting FROM pg_catalog.pg_settings \
         WHERE pg_catalog.texteq(source, 'session') \
         AND NOT (name OPERATOR(pg_catalog.=) ANY ({PER_TRANSACTION}))"
    );
    if !custom.is_empty() {
        let names: Vec<String> = custom.iter().map(|n| literal(n)).collect();
        sql.push_str(&format!(
            " UNION ALL SELECT n, v FROM (SELECT n, pg_catalog.current_setting(n, true) AS v \
             FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS n) AS c WHERE v IS NOT NULL",
            names.join(", ")
        ));
    }
    sql
}

/// One row: temporary objects, channels listened to, advisory locks held, WITH HOLD cursors,
/// SQL-level prepared statements, protocol-level ones, the role, and the session user.
fn check_sql() -> String {
    "SELECT \
     (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class \
        WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()) \
     OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc \
        WHERE pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()), \
     (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels()), \
     (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks \
        WHERE pg_catalog.texteq(locktype, 'advisory') \
        AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()), \
     (SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable), \
     (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), \
     (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql), \
     pg_catalog.current_setting('role'), \
     SESSION_USER::pg_catalog.text"
        .to_owned()
}

/// Puts back the startup values of the settings `resets` returned to the server's defaults:
/// a known setting whose source is no longer the session, a custom one that reads empty (as
/// a reset leaves it). A setting the same text set again stays as it was set.
fn restore_sql(startup: &BTreeMap<String, String>, resets: &Resets) -> Option<String> {
    let rows: Vec<String> = startup
        .iter()
        .filter(|(name, _)| resets.covers(name))
        .map(|(name, value)| format!("({}, {})", literal(name), literal(value)))
        .collect();
    if rows.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT pg_catalog.set_config(s.n, s.v, false) FROM (VALUES {}) AS s(n, v) \
         WHERE CASE WHEN pg_catalog.strpos(s.n, '.') OPERATOR(pg_catalog.>) 0 \
         THEN pg_catalog.texteq(COALESCE(pg_catalog.current_setting(s.n, true), ''), '') \
         ELSE NOT pg_catalog.texteq(COALESCE((SELECT p.source FROM pg_catalog.pg_settings AS p \
           WHERE pg_catalog.texteq(p.name, s.n)), 'default'), 'session') END",
        rows.join(", ")
    ))
}

impl Session {
    fn own(&mut self, to_server: &mut BytesMut, sql: &str, kind: Own) {
        frame::write_query(to_server, sql);
        // A simple Query drops the server's unnamed statement: the client's is parsed there
        // again before its next use.
        self.unnamed_here = false;
        self.expect.push_back(Expect::Own(kind));
    }

    /// At link: brings the connection's settings to the client's.
    pub(super) fn replay_settings(&mut self, server: &mut ServerConn, to_server: &mut BytesMut) {
        if server.applied == *self.wanted.set() && !server.reset_needed {
            return;
        }
        // Two queries, so that a value the server refuses can't take the reset with it.
        self.own(to_server, RESET, Own::Replay);
        if let Some(sql) = set_values(self.wanted.values()) {
            self.own(to_server, &sql, Own::Replay);
        }
        server.applied = self.wanted.set().clone();
        server.reset_needed = false;
    }

    /// After a client's Query or Sync: the startup values its statements reset go back.
    pub(super) fn restore_startup(&mut self, to_server: &mut BytesMut) {
        if !self.noted.resets.any() {
            return;
        }
        let resets = std::mem::take(&mut self.noted.resets);
        if let Some(sql) = restore_sql(&self.startup, &resets) {
            self.own(to_server, &sql, Own::Restore);
            self.restoring = self
                .startup
                .keys()
                .filter(|name| resets.covers(name))
                .cloned()
                .collect();
        }
    }

    /// Before the connection goes back: reads the settings back and checks the session, as
    /// the transaction that ended calls for. Whether anything was sent.
    pub(super) fn settle(&mut self, to_server: &mut BytesMut) -> bool {
        let read = self.noted.settings || self.noted.unknown_settings;
        let check = self.noted.check;
        if !(read || check) {
            return false;
        }
        self.noted.settings = false;
        self.noted.check = false;
        if self.noted.unknown_settings {
            self.noted.unknown_settings = false;
            if let Some(server) = self.server.as_mut() {
                server.reset_needed = true;
            }
        }
        if read {
            self.captured.clear();
            let sql = read_sql(&self.custom);
            self.own(to_server, &sql, Own::Read);
        }
        if check {
            self.checked = None;
            // What the door has prepared there as the check sees it: the client's messages
            // may go out behind it, before its answer.
            self.prepared_at_check = self.server.as_ref().map_or(0, |s| s.prepared.len());
            self.own(to_server, &check_sql(), Own::Check);
        }
        true
    }

    /// One of the door's own queries has been answered; `failed` carries its error.
    pub(super) fn own_answered(&mut self, kind: Own, failed: Option<String>) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if let Some(message) = &failed {
            warn!(user = %self.key.user, query = ?kind, %message, "the door's own statement failed");
        }
        match kind {
            Own::Replay if failed.is_some() => {
                // The client's settings could not be restored here: it is told, rather than
                // served with someone else's, or the server's defaults.
                server.reset_needed = true;
                self.ending = Some(failed.unwrap_or_default());
            }
            Own::Read if failed.is_some() => server.reset_needed = true,
            Own::Read => {
                let mut now = std::mem::take(&mut self.captured);
                for name in HIDDEN {
                    if let Some(value) = self.startup.get(*name) {
                        now.entry((*name).to_owned())
                            .or_insert_with(|| value.clone());
                    }
                }
                self.custom.extend(custom_names(&now));
                self.wanted = Wanted::new(now);
                server.applied = self.wanted.set().clone();
            }
            Own::Check => self.judge(failed.is_some()),
            Own::Restore => self.restoring.clear(),
            Own::Replay | Own::Deallocate => {}
        }
    }

    /// What the check found: the client is pinned if its session holds what only this backend
    /// can, unpinned if it holds nothing of the kind any more.
    fn judge(&mut self, failed: bool) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let row = match (failed, self.checked.take()) {
            (false, Some(row)) => row,
            _ => {
                // What the session holds is unknown: the connection serves no one else.
                server.broken = true;
                return;
            }
        };
        let count = |i: usize| -> i64 {
            row.get(i)
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let role = row.get(6).cloned().flatten().unwrap_or_default();
        let user = row.get(7).cloned().flatten().unwrap_or_default();
        let expected_role = self.startup.get("role").map_or("none", String::as_str);
        let found = if count(0) > 0 {
            Some(PinReason::TempTable)
        } else if count(1) > 0 {
            Some(PinReason::Listen)
        } else if count(2) > 0 {
            Some(PinReason::AdvisoryLock)
        } else if count(3) > 0 {
            Some(PinReason::HoldCursor)
        } else if count(4) > 0 {
            Some(PinReason::SqlPrepare)
        } else if role != expected_role || user != self.key.user {
            Some(PinReason::SetRole)
        } else if self.pinned == Some(PinReason::Load) {
            // A loaded library can't be seen from SQL: it stays for the session.
            Some(PinReason::Load)
        } else {
            None
        };
        if usize::try_from(count(5)).ok() != Some(self.prepared_at_check) {
            // The client dropped or replaced statements of the door's (by name, from
            // pg_prepared_statements): start this connection's statements afresh.
            server.prepared.clear();
            if found.is_none() {
                frame::write_query(&mut self.pending, "DEALLOCATE ALL");
                self.expect.push_back(Expect::Own(Own::Deallocate));
                // A simple Query: the server's unnamed statement goes too.
                self.unnamed_here = false;
            } else {
                server.broken = true;
            }
        }
        match (found, self.pinned) {
            (Some(_), Some(_)) | (None, None) => {}
            (Some(reason), None) => match self.refusal(reason) {
                None => {
                    self.pinned = Some(reason);
                    self.listed.entry.set_pinned(Some(reason.label()));
                    info!(user = %self.key.user, reason = reason.label(), "client pinned to its server connection (found on the server)");
                }
                Some(message) => self.ending = Some(message),
            },
            (None, Some(_)) => self.unpin(),
        }
    }
}

/// Before a ReadyForQuery to the client: a ParameterStatus for each parameter the server
/// connection reports (`params`) whose value differs from what the client was told (`told`),
/// as PostgreSQL (14 and later) sends them. The server's own reports are never relayed as
/// they come: the door's own statements (a replay, startup values put back) change them too;
/// the startup values being put back (`restoring`) count as put back already.
pub(super) fn report_changes(
    params: &[(String, String)],
    startup: &BTreeMap<String, String>,
    restoring: &[String],
    told: &mut Vec<(String, String)>,
    to_client: &mut BytesMut,
) {
    for (name, value) in params {
        let value = match startup.get(name) {
            Some(startup) if restoring.iter().any(|r| r == name) => startup,
            _ => value,
        };
        match told.iter_mut().find(|(n, _)| n == name) {
            Some((_, told)) if told == value => {}
            Some((_, told)) => {
                frame::write_parameter_status(to_client, name, value);
                told.clone_from(value);
            }
            None => {
                frame::write_parameter_status(to_client, name, value);
                told.push((name.clone(), value.clone()));
            }
        }
    }
}

/// The text columns of a DataRow (`None` for NULL).
pub(super) fn texts(msg: &[u8]) -> Vec<Option<String>> {
    let mut b = frame::body(msg);
    if b.len() < 2 {
        return Vec::new();
    }
    let n = b.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            break;
        }
        let len = b.get_i32();
        let Ok(len) = usize::try_from(len) else {
            out.push(None);
            continue;
        };
        let Some(value) = b.get(..len) else { break };
        out.push(Some(String::from_utf8_lossy(value).into_owned()));
        b.advance(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_values_are_restored_only_where_reset() {
        let mut startup = BTreeMap::new();
        startup.insert("search_path".to_owned(), "app".to_owned());
        startup.insert("app.tenant".to_owned(), "7".to_owned());
        let mut resets = Resets::default();
        assert_eq!(restore_sql(&startup, &resets), None);
        resets.merge(&crate::core::sql::session_effect(b"RESET search_path", true).resets);
        let sql = restore_sql(&startup, &resets).unwrap_or_default();
        assert!(sql.contains("(E'search_path', E'app')"), "{sql}");
        assert!(!sql.contains("app.tenant"), "{sql}");
    }
}
