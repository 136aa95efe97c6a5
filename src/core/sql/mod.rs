//! What a statement's text says about it, read before it runs: whether it may leave session
//! state behind (so its connection must be reset before the next caller gets it), and whether it
//! is something a single pooled statement must not do (open or end a transaction, COPY over the
//! protocol).
//!
//! The reading is deliberately generous: a false "may change the session" costs one reset round
//! trip, a miss would leak one caller's session into another's.

mod effect;
pub mod lexer;

pub use effect::{PinReason, Resets, SessionEffect, looks_like_custom_name, session_effect};

/// A statement a single pooled statement must not run. Each door says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It opens or ends a transaction (`BEGIN`, `COMMIT`, `SAVEPOINT`, …); the command, in
    /// upper case.
    #[error("{0} is not allowed here: each call manages its own transaction")]
    TransactionControl(String),
    /// COPY over the protocol (`FROM STDIN`, `TO STDOUT`).
    #[error("COPY FROM STDIN / TO STDOUT is not supported")]
    CopyOverProtocol,
}

/// Words that, anywhere in a statement, mean it may leave state in the session: temp tables,
/// session-level settings and roles, advisory locks, cursors WITH HOLD, LISTEN, PREPARE.
const SESSION_WORDS: &[&str] = &[
    "set_config",
    "temp",
    "temporary",
    "session",
    "role",
    "authorization",
    "hold",
    "listen",
    "prepare",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Statement kinds (first word) that change the session or may run arbitrary code that does.
const SESSION_COMMANDS: &[&str] = &[
    "set",
    "reset",
    "do",
    "call",
    "load",
    "discard",
    "deallocate",
    "close",
    "declare",
    "listen",
    "prepare",
];

/// Statement kinds that control the transaction: on a pooled connection in autocommit they
/// would leave a transaction open for the next caller, or end one pgway opened.
const TRANSACTION_COMMANDS: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
];

/// What pgway needs to know about a statement before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatementTraits {
    /// It may leave session state behind: reset the connection after it.
    pub changes_session: bool,
}

fn words(sql: &str) -> impl Iterator<Item = String> + '_ {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
}

/// Reads a statement; refuses the ones a pooled statement must not run.
pub fn classify(sql: &str) -> Result<StatementTraits, Refusal> {
    let first = words(sql).find(|w| !w.chars().all(|c| c.is_ascii_digit()));
    let first = first.as_deref().unwrap_or("");
    if TRANSACTION_COMMANDS.contains(&first) {
        return Err(Refusal::TransactionControl(first.to_ascii_uppercase()));
    }
    if first == "copy" && words(sql).any(|w| w == "stdin" || w == "stdout") {
        return Err(Refusal::CopyOverProtocol);
    }
    let changes_session = SESSION_COMMANDS.contains(&first)
        || words(sql).any(|w| SESSION_WORDS.contains(&w.as_str()));
    Ok(StatementTraits { changes_session })
}

/// Functions that change settings (the role, the JWT claims) or run SQL given as text, which
/// would let a statement change them out of sight.
const IDENTITY_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_settings",
    "ts_stat",
    "ts_rewrite",
    "dblink",
    "dblink_exec",
    "dblink_send_query",
];

/// Whether a JWT caller's statement may change the role or the claims it runs with: `SET` /
/// `RESET` of the role, session authorization, `ALL` or `request.*`; `set_config`; anything
/// naming `request.jwt`; `DO` blocks and the functions that run SQL given as text (`*_to_xml`,
/// `ts_stat`, `dblink`); Unicode-escaped identifiers (`U&"…"`), which could spell any of these.
///
/// Generous on purpose, like [`classify`]: a refusal costs the caller a clear
/// PERMISSION_DENIED, a miss would let one user read as another. It is not the only guard:
/// after every statement the gateway also checks that role and claims are unchanged.
pub fn changes_identity(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    if lower.contains("u&\"") || lower.contains("u&'") {
        return true;
    }
    let words: Vec<String> = words(sql).collect();
    let first = words
        .iter()
        .find(|w| !w.chars().all(|c| c.is_ascii_digit()))
        .map(String::as_str)
        .unwrap_or("");
    if first == "do" {
        return true;
    }
    if (first == "set" || first == "reset")
        && words
            .iter()
            .any(|w| matches!(w.as_str(), "role" | "authorization" | "all" | "request"))
    {
        return true;
    }
    words.iter().any(|w| {
        IDENTITY_FUNCTIONS.contains(&w.as_str()) || w.contains("to_xml") || w.ends_with("xmlschema")
    }) || words
        .windows(2)
        .any(|pair| pair[0] == "request" && pair[1] == "jwt")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(sql: &str) -> bool {
        classify(sql).unwrap().changes_session
    }

    #[test]
    fn plain_statements_need_no_reset() {
        assert!(!changes("SELECT * FROM accounts WHERE id = $1"));
        assert!(!changes(
            "UPDATE accounts SET balance = balance + 1 WHERE id = $1"
        ));
        assert!(!changes("INSERT INTO t (a) VALUES ($1) RETURNING id"));
    }

    #[test]
    fn session_changes_are_seen() {
        for sql in [
            "SET search_path = x",
            "set local statement_timeout = 5",
            "SELECT set_config('a.b', 'c', false)",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t (a int)",
            "SET SESSION AUTHORIZATION alice",
            "SELECT pg_advisory_lock(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "LISTEN channel",
            "PREPARE p AS SELECT 1",
            "DO $$ BEGIN PERFORM 1; END $$",
            "SELECT 1 INTO TEMP t",
        ] {
            assert!(changes(sql), "{sql}");
        }
    }

    #[test]
    fn identity_changes_are_seen() {
        for sql in [
            "SET ROLE service_role",
            "set local role postgres",
            "SET \"role\" TO postgres",
            "RESET ROLE",
            "reset all",
            "SET SESSION AUTHORIZATION postgres",
            "SELECT set_config('role', 'postgres', true)",
            "SELECT pg_catalog.\"set_config\"('request.jwt.claims', '{}', true)",
            "SET request.jwt.claims = '{}'",
            "SET \"request\".\"jwt.claims\" = '{}'",
            "SELECT current_setting('request . jwt.claims')",
            "UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'",
            "DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$",
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT * FROM ts_stat('select 1')",
            "SELECT U&\"set\\005fconfig\"('role', 'x', true)",
        ] {
            assert!(changes_identity(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM notes WHERE owner = auth.uid()",
            "UPDATE profiles SET role = $1 WHERE id = $2",
            "INSERT INTO notes (body) VALUES ($1) RETURNING id",
            "SET LOCAL statement_timeout = '5s'",
        ] {
            assert!(!changes_identity(sql), "{sql}");
        }
    }

    #[test]
    fn transaction_control_is_refused() {
        for sql in [
            "BEGIN",
            "  commit",
            "ROLLBACK",
            "start transaction",
            "SAVEPOINT a",
            "END",
        ] {
            assert!(
                matches!(classify(sql), Err(Refusal::TransactionControl(_))),
                "{sql}"
            );
        }
        assert!(matches!(
            classify("COPY t FROM STDIN"),
            Err(Refusal::CopyOverProtocol)
        ));
        assert!(classify("SELECT 'begin'").is_ok());
    }
}
