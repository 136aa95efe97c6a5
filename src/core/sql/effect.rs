//! What a statement does to the session it runs in, read from its tokens as PostgreSQL reads
//! them: which settings it changes or resets, what it creates that only its own backend can
//! hold, and whether it does anything this reading can't vouch for (a `DO` block, a procedure,
//! a function that isn't PostgreSQL's own), which the door then checks on the server.

use std::sync::OnceLock;

use super::lexer::{Token, string_value, tokens};

/// Why a client's session can't be carried from one server connection to the next: what it
/// made lives in the server's backend itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    TempTable,
    AdvisoryLock,
    Listen,
    HoldCursor,
    SqlPrepare,
    SetRole,
    Load,
}

impl PinReason {
    /// The label in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            PinReason::TempTable => "temp_table",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::Listen => "listen",
            PinReason::HoldCursor => "cursor_with_hold",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::SetRole => "set_role",
            PinReason::Load => "load",
        }
    }

    /// The statement, as a refusal names it.
    pub fn statement(self) -> &'static str {
        match self {
            PinReason::TempTable => "CREATE TEMPORARY TABLE",
            PinReason::AdvisoryLock => "session-level advisory locks",
            PinReason::Listen => "LISTEN",
            PinReason::HoldCursor => "DECLARE ... WITH HOLD",
            PinReason::SqlPrepare => "PREPARE",
            PinReason::SetRole => "SET ROLE / SET SESSION AUTHORIZATION",
            PinReason::Load => "LOAD",
        }
    }
}

/// Settings a statement returns to the session's defaults (`RESET`, `SET … TO DEFAULT`,
/// `RESET ALL`, `DISCARD ALL`), in statement order: a later `SET` of a name takes it back out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resets {
    /// Every setting.
    pub all: bool,
    /// These settings (when not `all`).
    pub names: Vec<String>,
    /// Set again after an `all` reset in the same text: not returned to their defaults.
    pub kept: Vec<String>,
}

impl Resets {
    pub fn any(&self) -> bool {
        self.all || !self.names.is_empty()
    }

    /// Whether `name` ends the text at its default.
    pub fn covers(&self, name: &str) -> bool {
        if self.all {
            !self.kept.iter().any(|k| k == name)
        } else {
            self.names.iter().any(|n| n == name)
        }
    }

    /// Adds what a later statement reset.
    pub fn merge(&mut self, later: &Resets) {
        if later.all {
            *self = later.clone();
            return;
        }
        for name in &later.names {
            self.reset(name.clone());
        }
    }

    fn reset(&mut self, name: String) {
        self.kept.retain(|k| *k != name);
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }

    fn all(&mut self) {
        self.all = true;
        self.kept.clear();
        self.names.clear();
    }

    fn set(&mut self, name: &str) {
        self.names.retain(|n| n != name);
        if self.all && !self.kept.iter().any(|k| k == name) {
            self.kept.push(name.to_owned());
        }
    }
}

/// What a statement (or several, `;`-separated) may do to the session, beyond its transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEffect {
    /// It changes session settings: read them back after the transaction.
    pub settings: bool,
    /// Settings it returns to the session's defaults.
    pub resets: Resets,
    /// It creates state only its own backend can hold.
    pub pins: Option<PinReason>,
    /// It may release such state (`DISCARD`, `UNLISTEN`, `CLOSE`, `DEALLOCATE`,
    /// `pg_advisory_unlock`, `RESET ROLE`): a pinned client may be free again afterwards.
    pub releases: bool,
    /// It runs what this reading can't vouch for: check the session on the server afterwards.
    pub unverified: bool,
    /// The settings it names (so custom ones, which the server can't list, can be read back).
    pub names: Vec<String>,
    /// `set_config($n, …, false)`: the name is the value of parameter `n` (1-based).
    pub name_params: Vec<u32>,
    /// It may change the `search_path` for the rest of its transaction only (`SET LOCAL
    /// search_path`, `set_config('search_path', …, true)`): statements parsed after it there
    /// are analysed under another path than the session's.
    pub local_path: bool,
}

impl SessionEffect {
    /// Nothing beyond the transaction: the common case, which costs the door nothing.
    pub fn is_plain(&self) -> bool {
        *self == SessionEffect::default()
    }

    fn pin(&mut self, reason: PinReason) {
        self.pins = self.pins.or(Some(reason));
    }

    fn named(&mut self, name: String) {
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }
}

/// Reads `sql` for its effect on the session. `standard_strings` is the session's
/// `standard_conforming_strings` (it changes where strings end).
pub fn session_effect(sql: &[u8], standard_strings: bool) -> SessionEffect {
    let mut effect = SessionEffect::default();
    let all = tokens(sql, standard_strings);
    // `matches!`, not `==`: the derived comparison of two tokens costs several times a match
    // of one, and every token of every simple Query is looked at here and in `read_calls`.
    for statement in all.split(|t| matches!(t, Token::Punct(b';'))) {
        read_statement(statement, &mut effect);
    }
    effect
}

fn is(token: Option<&Token<'_>>, word: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(word.as_bytes()))
}

/// The word at `i` folded to lower case in `buf` (see [`lower_in`]: `""` for one no keyword
/// spells); `None` when it isn't a word. On the stack: `SET LOCAL` (a tenant's id at every
/// transaction of a row-level-security application) is read through here, and a `String` made
/// `SET LOCAL app.tenant_id = '42'` 1,685 instructions to read instead of 1,481 (callgrind).
fn word_at<'b>(t: &[Token<'_>], i: usize, buf: &'b mut [u8; 32]) -> Option<&'b str> {
    match t.get(i)? {
        Token::Word(w) => Some(lower_in(w, buf)),
        _ => None,
    }
}

/// Whether the words appear one after another anywhere in the statement.
fn has_words(t: &[Token<'_>], words: &[&str]) -> bool {
    t.windows(words.len())
        .any(|w| w.iter().zip(words).all(|(t, word)| is(Some(t), word)))
}

/// A setting's name at `t[i]`: a word or quoted identifier, dotted parts joined, unquoted
/// parts folded to lower case as PostgreSQL folds them. With the index after it.
fn setting_name(t: &[Token<'_>], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match t.get(i)? {
            Token::Word(w) => name.push_str(&String::from_utf8_lossy(w).to_ascii_lowercase()),
            Token::Quoted(q) => name.push_str(&String::from_utf8_lossy(q).replace("\"\"", "\"")),
            _ => return None,
        }
        i += 1;
        if t.get(i) != Some(&Token::Punct(b'.')) {
            return Some((name, i));
        }
        name.push('.');
        i += 1;
    }
}

fn read_statement(t: &[Token<'_>], effect: &mut SessionEffect) {
    let mut start = 0;
    while t.get(start) == Some(&Token::Punct(b'(')) {
        start += 1;
    }
    let t = &t[start..];
    if t.is_empty() {
        return;
    }
    let unverified = effect.unverified;
    effect.unverified = false;
    read_kind(t, effect);
    read_calls(t, effect);
    // What runs out of sight may set settings named in the text it was given (a DO block's
    // body, a string handed to a function that runs it) or that a function being created
    // will set when called: those names are read back too.
    if effect.unverified || is(t.first(), "create") {
        names_in_bodies(t, effect);
    }
    effect.unverified |= unverified;
}

/// Statement kinds that keep nothing in the session beyond their transaction (what they call
/// is read separately).
const PLAIN: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "values",
    "table",
    "with",
    "show",
    "copy",
    "alter",
    "drop",
    "truncate",
    "grant",
    "revoke",
    "comment",
    "analyze",
    "analyse",
    "vacuum",
    "cluster",
    "reindex",
    "lock",
    "notify",
    "checkpoint",
    "refresh",
    "security",
    "import",
    "fetch",
    "move",
    "reassign",
];

/// `word` folded to lower case in `buf`; `""` (which names no statement and no function of the
/// catalog) when it is longer than `buf` or not ASCII, as none of those is. Every simple
/// Query's first word and the name of every call in it are read so, and a `String` for each
/// was an allocation and a free (about 250 instructions each, callgrind, `pgbench -M simple`).
fn lower_in<'b, const N: usize>(word: &[u8], buf: &'b mut [u8; N]) -> &'b str {
    let Some(buf) = buf.get_mut(..word.len()) else {
        return "";
    };
    if !word.is_ascii() {
        return "";
    }
    for (to, from) in buf.iter_mut().zip(word) {
        *to = from.to_ascii_lowercase();
    }
    std::str::from_utf8(buf).unwrap_or("")
}

fn read_kind(t: &[Token<'_>], effect: &mut SessionEffect) {
    let Some(Token::Word(word)) = t.first() else {
        // Not a word first: nothing PostgreSQL runs starts so; let the server say.
        effect.unverified = true;
        return;
    };
    let mut buf = [0u8; 16];
    match lower_in(word, &mut buf) {
        "set" => read_set(&t[1..], effect),
        "reset" => read_reset(&t[1..], effect),
        "discard" => {
            effect.releases = true;
            if is(t.get(1), "all") {
                effect.settings = true;
                effect.resets.all();
            }
        }
        "listen" => effect.pin(PinReason::Listen),
        "unlisten" | "close" => effect.releases = true,
        "prepare" if !is(t.get(1), "transaction") => effect.pin(PinReason::SqlPrepare),
        "prepare" => {}
        "deallocate" => {
            effect.releases = true;
            effect.unverified = true;
        }
        "load" => effect.pin(PinReason::Load),
        "declare" => {
            if has_words(t, &["with", "hold"]) {
                effect.pin(PinReason::HoldCursor);
            }
        }
        "create" => {
            let mut buf = [0; 32];
            let mut i = 1;
            while matches!(
                word_at(t, i, &mut buf),
                Some("or" | "replace" | "global" | "local")
            ) {
                i += 1;
            }
            let temp = matches!(word_at(t, i, &mut buf), Some("temp" | "temporary"))
                || t.iter().any(|t| {
                    matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(b"pg_temp"))
                        || *t == Token::Quoted(b"pg_temp")
                });
            if temp && !has_words(t, &["on", "commit", "drop"]) {
                effect.pin(PinReason::TempTable);
            }
        }
        "select" | "with" => {
            // One pass for the three spellings (three passes were about 300 instructions a
            // point select).
            let into_temp = t.windows(2).any(|w| {
                is(w.first(), "into")
                    && (is(w.get(1), "temp")
                        || is(w.get(1), "temporary")
                        || is(w.get(1), "pg_temp"))
            });
            if into_temp {
                effect.pin(PinReason::TempTable);
            }
        }
        "explain" => {
            let mut i = 1;
            if t.get(1) == Some(&Token::Punct(b'(')) {
                i = t
                    .iter()
                    .position(|t| *t == Token::Punct(b')'))
                    .map_or(t.len(), |p| p + 1);
            }
            let mut buf = [0; 32];
            while matches!(
                word_at(t, i, &mut buf),
                Some("analyze" | "analyse" | "verbose")
            ) {
                i += 1;
            }
            read_kind(&t[i.min(t.len())..], effect);
        }
        "do" => effect.unverified = true,
        "call" | "execute" => effect.unverified = true,
        kind if PLAIN.contains(&kind) || super::TRANSACTION_COMMANDS.contains(&kind) => {}
        _ => effect.unverified = true,
    }
}

/// `SET …` (after the `SET`).
fn read_set(t: &[Token<'_>], effect: &mut SessionEffect) {
    let (mut first, mut second) = ([0; 32], [0; 32]);
    let Some(first) = word_at(t, 0, &mut first) else {
        return read_assignment(t, effect);
    };
    match first {
        "local" => {
            let mut name = [0; 32];
            effect.local_path = matches!(word_at(t, 1, &mut name), Some("search_path" | "schema"));
        }
        "transaction" | "constraints" => {}
        "session" => match word_at(t, 1, &mut second) {
            Some("characteristics") => effect.settings = true,
            Some("authorization") => set_authorization(&t[2..], effect),
            Some("role") => set_role(&t[2..], effect),
            _ => read_assignment(&t[1..], effect),
        },
        "role" => set_role(&t[1..], effect),
        "time" if is(t.get(1), "zone") => special(effect, "timezone", t.get(2)),
        "names" => special(effect, "client_encoding", t.get(1)),
        "schema" => special(effect, "search_path", t.get(1)),
        "xml" if is(t.get(1), "option") => special(effect, "xmloption", t.get(2)),
        _ => read_assignment(t, effect),
    }
}

fn special(effect: &mut SessionEffect, name: &str, value: Option<&Token<'_>>) {
    effect.settings = true;
    if is(value, "default") || is(value, "local") {
        effect.resets.reset(name.to_owned());
    } else {
        effect.resets.set(name);
    }
}

fn set_role(value: &[Token<'_>], effect: &mut SessionEffect) {
    effect.settings = true;
    if is(value.first(), "none") {
        effect.releases = true;
    } else {
        effect.pin(PinReason::SetRole);
    }
}

fn set_authorization(value: &[Token<'_>], effect: &mut SessionEffect) {
    effect.settings = true;
    if is(value.first(), "default") {
        effect.releases = true;
    } else {
        effect.pin(PinReason::SetRole);
    }
}

/// `name {TO | =} value`.
fn read_assignment(t: &[Token<'_>], effect: &mut SessionEffect) {
    effect.settings = true;
    let Some((name, next)) = setting_name(t, 0) else {
        // A form this reading doesn't know: let the server be asked.
        effect.unverified = true;
        return;
    };
    let value = t.get(next + 1);
    match name.as_str() {
        "role" => return set_role(&t[next + 1..], effect),
        "session_authorization" => return set_authorization(&t[next + 1..], effect),
        _ => {}
    }
    if is(value, "default") {
        effect.resets.reset(name.clone());
    } else {
        effect.resets.set(&name);
    }
    effect.named(name);
}

/// `RESET …` (after the `RESET`).
fn read_reset(t: &[Token<'_>], effect: &mut SessionEffect) {
    effect.settings = true;
    let mut buf = [0; 32];
    match word_at(t, 0, &mut buf) {
        Some("all") => effect.resets.all(),
        Some("role") => {
            effect.releases = true;
            effect.resets.reset("role".to_owned());
        }
        Some("session") if is(t.get(1), "authorization") => effect.releases = true,
        Some("time") if is(t.get(1), "zone") => effect.resets.reset("timezone".to_owned()),
        Some("transaction") => {}
        _ => match setting_name(t, 0) {
            Some((name, _)) => {
                effect.resets.reset(name.clone());
                effect.named(name);
            }
            None => effect.unverified = true,
        },
    }
}

/// The setting names the strings of a statement (a `DO` block's body, a function's) name in
/// `SET`, `RESET` or `set_config('…', …)`, so that what they set can be read back (what they
/// run is checked on the server all the same).
fn names_in_bodies(t: &[Token<'_>], effect: &mut SessionEffect) {
    names_in_strings(t, effect, 3);
}

/// [`names_in_bodies`], into strings within strings (`EXECUTE 'SET …'` in a body) up to
/// `depth` deep.
fn names_in_strings(t: &[Token<'_>], effect: &mut SessionEffect, depth: usize) {
    if depth == 0 {
        return;
    }
    for token in t {
        let Token::Str { text, .. } = token else {
            continue;
        };
        if looks_like_custom_name(text) {
            // `CALL set_tenant('app.tenant_id', …)`: a name handed to what sets it.
            effect.named(String::from_utf8_lossy(text).to_ascii_lowercase());
            continue;
        }
        let body = tokens(text, true);
        let mut inner = SessionEffect::default();
        read_calls(&body, &mut inner);
        for (i, token) in body.iter().enumerate() {
            if is(Some(token), "set") || is(Some(token), "reset") {
                if let Some((name, _)) = setting_name(&body, i + 1) {
                    inner.named(name);
                }
            }
        }
        names_in_strings(&body, &mut inner, depth - 1);
        for name in inner.names {
            effect.named(name);
        }
    }
}

/// `word.word[.word…]`: the shape of a custom setting's name.
pub fn looks_like_custom_name(text: &[u8]) -> bool {
    let mut parts = 0;
    for part in text.split(|&b| b == b'.') {
        let Some((&first, rest)) = part.split_first() else {
            return false;
        };
        if !(first.is_ascii_alphabetic() || first == b'_')
            || !rest
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// Words that may stand before `(` without calling a function: keywords, type names with a
/// modifier, and the special functions the grammar spells itself.
const NOT_CALLS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "by",
    "case",
    "cast",
    "check",
    "coalesce",
    "conflict",
    "cube",
    "current_time",
    "current_timestamp",
    "default",
    "distinct",
    "else",
    "except",
    "exists",
    "extract",
    "filter",
    "from",
    "greatest",
    "group",
    "grouping",
    "having",
    "in",
    "include",
    "intersect",
    "is",
    "join",
    "key",
    "lateral",
    "least",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "nullif",
    "of",
    "offset",
    "on",
    "or",
    "over",
    "overlay",
    "partition",
    "position",
    "primary",
    "returning",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "similar",
    "some",
    "substring",
    "then",
    "to",
    "treat",
    "trim",
    "union",
    "unique",
    "using",
    "values",
    "varying",
    "when",
    "where",
    "window",
    "with",
    "within",
    "character",
    "char",
    "dec",
    "decimal",
    "float",
    "national",
    "nchar",
    "precision",
    "returns",
    "table",
    "normalize",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
    "columns",
    "only",
    "return",
    "for",
    "do",
    "update",
    "into",
    "ordinality",
    "recursive",
    "materialized",
    "groups",
    "range",
    "unnest",
    "escape",
    "collate",
    "tablesample",
    "repeatable",
    "references",
    "explain",
    "vacuum",
    "analyze",
    "analyse",
    "cluster",
    "reindex",
    "copy",
    "lock",
    "grant",
    "revoke",
];

/// Words after which `name (` names a table or a type's columns rather than calling `name`.
const NAME_FOLLOWS: &[&str] = &[
    "into",
    "table",
    "exists",
    "copy",
    "references",
    "function",
    "procedure",
    "aggregate",
    "as",
    "type",
    "view",
    "trigger",
    "domain",
    "routine",
    "with",
    "recursive",
];

/// The names of the functions PostgreSQL's own catalog defines (`pg_proc` in `pg_catalog`, as
/// of PostgreSQL 15). A name missing from it only costs a check on the server.
fn builtins() -> &'static foldhash::HashSet<&'static str> {
    static BUILTINS: OnceLock<foldhash::HashSet<&'static str>> = OnceLock::new();
    BUILTINS.get_or_init(|| include_str!("builtins.txt").lines().collect())
}

/// [`NOT_CALLS`] as a set: looked up at every `(` that follows a word (`IN (`, `VALUES (`,
/// `count(`), where a scan of the list's 130 words was about 700 instructions a query of an
/// ORM's shape (callgrind).
fn not_calls() -> &'static foldhash::HashSet<&'static str> {
    static NOT: OnceLock<foldhash::HashSet<&'static str>> = OnceLock::new();
    NOT.get_or_init(|| NOT_CALLS.iter().copied().collect())
}

/// A name as PostgreSQL reads it: a word folded to lower case (in `buf`, see [`lower_in`]), a
/// quoted identifier as it is.
fn name_in<'a>(token: &Token<'a>, buf: &'a mut [u8; 64]) -> Option<std::borrow::Cow<'a, str>> {
    match token {
        Token::Word(w) => Some(std::borrow::Cow::Borrowed(lower_in(w, buf))),
        Token::Quoted(q) => Some(String::from_utf8_lossy(q)),
        _ => None,
    }
}

/// Every `name (` and `schema.name (` in the statement.
fn read_calls(t: &[Token<'_>], effect: &mut SessionEffect) {
    for (i, token) in t.iter().enumerate() {
        if !matches!(token, Token::Punct(b'(')) || i == 0 {
            continue;
        }
        if t[i - 1] == Token::UnicodeQuoted {
            effect.unverified = true;
            continue;
        }
        let mut name_buf = [0u8; 64];
        let Some(name) = name_in(&t[i - 1], &mut name_buf) else {
            continue;
        };
        let qualified = i >= 3 && matches!(t[i - 2], Token::Punct(b'.'));
        let mut schema_buf = [0u8; 64];
        let schema = qualified.then(|| name_in(&t[i - 3], &mut schema_buf).unwrap_or_default());
        let before = if qualified {
            i.checked_sub(4)
        } else {
            i.checked_sub(2)
        };
        if before.is_some_and(|b| NAME_FOLLOWS.iter().any(|word| is(t.get(b), word))) {
            continue;
        }
        read_call(schema.as_deref(), &name, &t[i + 1..], effect);
    }
}

fn read_call(schema: Option<&str>, name: &str, args: &[Token<'_>], effect: &mut SessionEffect) {
    match name {
        "set_config" => return read_set_config(args, effect),
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared" => return effect.pin(PinReason::AdvisoryLock),
        "pg_advisory_unlock" | "pg_advisory_unlock_shared" | "pg_advisory_unlock_all" => {
            effect.releases = true;
            return;
        }
        // They run SQL given as text.
        "query_to_xml"
        | "query_to_xmlschema"
        | "query_to_xml_and_xmlschema"
        | "cursor_to_xml"
        | "cursor_to_xmlschema"
        | "ts_stat"
        | "ts_rewrite" => {
            effect.unverified = true;
            return;
        }
        _ => {}
    }
    let own = match schema {
        Some("pg_catalog") => true,
        Some(_) => false,
        None => not_calls().contains(name) || builtins().contains(name),
    };
    if !own {
        effect.unverified = true;
    }
}

/// `set_config(name, value, is_local)`: a session-level change of `name`.
fn read_set_config(args: &[Token<'_>], effect: &mut SessionEffect) {
    // The third argument, at the depth of the call.
    let mut depth = 0usize;
    let mut commas = 0;
    let mut third = None;
    for (i, t) in args.iter().enumerate() {
        match t {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') if depth == 0 => break,
            Token::Punct(b')') => depth -= 1,
            Token::Punct(b',') if depth == 0 => {
                commas += 1;
                if commas == 2 {
                    third = args.get(i + 1);
                }
            }
            _ => {}
        }
    }
    let local = match third {
        Some(Token::Word(w)) => w.eq_ignore_ascii_case(b"true"),
        Some(Token::Str { text, .. }) => {
            let v = String::from_utf8_lossy(text).to_ascii_lowercase();
            matches!(v.as_str(), "t" | "true" | "on" | "yes" | "y" | "1")
        }
        _ => false,
    };
    if local {
        // Only the path matters beyond the transaction's own statements; a name that isn't a
        // literal may be it.
        effect.local_path = match args.first() {
            Some(Token::Str { text, escapes }) => string_value(text, *escapes)
                .is_none_or(|name| name.eq_ignore_ascii_case("search_path")),
            _ => true,
        };
        return;
    }
    effect.settings = true;
    match args.first() {
        Some(Token::Str { text, escapes }) => match string_value(text, *escapes) {
            Some(name) => {
                let name = name.to_ascii_lowercase();
                match name.as_str() {
                    "role" | "session_authorization" => effect.pin(PinReason::SetRole),
                    _ => {
                        effect.resets.set(&name);
                        effect.named(name);
                    }
                }
            }
            None => effect.unverified = true,
        },
        Some(Token::Param(n)) => effect.name_params.push(*n),
        _ => effect.unverified = true,
    }
}

#[cfg(test)]
mod tests;
