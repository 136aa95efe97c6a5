//! `SHOW CONFIG` and `SET`: pgway's settings under PgBouncer's names where they mean the
//! same, then pgway's own. Those marked changeable take effect at once for everything that
//! starts waiting after the `SET` (a client already waiting keeps the deadline it had); the
//! rest come from their `PGWAY_*` variables only. A change lasts until pgway restarts.

use std::time::Duration;

use bytes::BytesMut;
use tracing::info;

use super::table::{Kind, Table, text};
use super::{Admin, complete, count, error};
use crate::core::tunable::Tunable;
use crate::pgwire::Door;

/// A setting as the console sees it.
enum Knob<'a> {
    /// Not changeable while running.
    Fixed(String),
    /// A duration; 0 turns the bound off where `off` says it may.
    Time {
        value: &'a Tunable<Duration>,
        off: bool,
    },
    /// A count, at least `least`.
    Count {
        value: &'a Tunable<usize>,
        least: usize,
    },
    /// The budget both doors share (`PGWAY_POOL_MAX`).
    Budget,
    /// The connections kept ready (`PGWAY_POOL_MIN`).
    Warm,
}

/// Every setting the console shows, in `SHOW CONFIG`'s order.
fn knobs(door: &Door) -> Vec<(&'static str, Knob<'_>)> {
    let s = &door.settings;
    let pool = door.pools.settings();
    let time = |value, off| Knob::Time { value, off };
    let count = |value, least| Knob::Count { value, least };
    vec![
        ("pool_mode", Knob::Fixed("transaction".into())),
        ("max_client_conn", count(&s.max_clients, 1)),
        ("default_pool_size", Knob::Budget),
        ("max_db_connections", Knob::Budget),
        ("max_user_connections", Knob::Fixed("0".into())),
        ("min_pool_size", Knob::Warm),
        ("reserve_pool_size", Knob::Fixed("0".into())),
        (
            "max_prepared_statements",
            Knob::Fixed(pool.prepared_statements.to_string()),
        ),
        ("query_wait_timeout", time(&pool.acquire_timeout, false)),
        ("server_lifetime", time(&pool.max_lifetime, false)),
        ("server_idle_timeout", time(&pool.idle_timeout, false)),
        ("client_login_timeout", time(&s.login_timeout, false)),
        ("client_idle_timeout", time(&s.client_idle_timeout, true)),
        (
            "idle_transaction_timeout",
            time(&s.idle_in_transaction_timeout, true),
        ),
        ("transaction_timeout", time(&s.transaction_timeout, true)),
        ("admin_users", Knob::Fixed(s.admin_users.join(","))),
        ("stats_users", Knob::Fixed(s.stats_users.join(","))),
        ("max_pinned", count(&s.max_pinned, 0)),
        (
            "keep_unnamed",
            Knob::Fixed(
                match s.keep_unnamed {
                    crate::pgwire::KeepUnnamed::Off => "off",
                    crate::pgwire::KeepUnnamed::Autocommit => "autocommit",
                    crate::pgwire::KeepUnnamed::Always => "always",
                }
                .into(),
            ),
        ),
        ("max_waiting", count(&pool.max_waiting, 1)),
    ]
}

/// `SHOW CONFIG`: key, value now, value at start, changeable.
pub fn show(door: &Door, out: &mut BytesMut) {
    let budget = door.pools.budget();
    let mut table = Table::new(
        out,
        &[
            ("key", Kind::Text),
            ("value", Kind::Text),
            ("default", Kind::Text),
            ("changeable", Kind::Text),
        ],
    );
    for (key, knob) in knobs(door) {
        let (value, start) = match &knob {
            Knob::Fixed(value) => (value.clone(), value.clone()),
            Knob::Time { value, .. } => (seconds(value.get()), seconds(value.start())),
            Knob::Count { value, .. } => (value.get().to_string(), value.start().to_string()),
            Knob::Budget => (budget.total().to_string(), budget.start().to_string()),
            Knob::Warm => (
                door.pools.warm_min().to_string(),
                door.pools.warm_start().to_string(),
            ),
        };
        let changeable = if matches!(knob, Knob::Fixed(_)) {
            "no"
        } else {
            "yes"
        };
        table.row(vec![text(key), text(value), text(start), text(changeable)]);
    }
    table.done();
}

/// Seconds, as PgBouncer shows them, with the fraction a `SET` in milliseconds may leave.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

/// `SET key = value` (or `TO`; the value may be quoted): changes a changeable setting.
/// Errors are PostgreSQL's for its own `SET`: 42704 for an unknown name, 55P02 for one that
/// can't change while running, 22023 for a value out of range.
pub fn set(door: &Door, who: &Admin, command: &str, out: &mut BytesMut) {
    let Some((key, value)) = parse(command) else {
        error(out, "42601", "syntax error: use SET key = value");
        return;
    };
    let knobs = knobs(door);
    let Some((key, knob)) = knobs
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&key))
    else {
        error(
            out,
            "42704",
            &format!("unrecognized configuration parameter \"{key}\""),
        );
        return;
    };
    if let Err(why) = apply(door, knob, &value) {
        let (code, message) = match why {
            Refused::Fixed => (
                "55P02",
                format!(
                    "parameter \"{key}\" cannot be changed while pgway runs (set its PGWAY_* variable)"
                ),
            ),
            Refused::Invalid(why) => (
                "22023",
                format!("invalid value for parameter \"{key}\": \"{value}\": {why}"),
            ),
        };
        error(out, code, &message);
        return;
    }
    info!(user = %who.user, peer = %who.peer, key, value, door = "postgres", "console SET");
    count("set");
    complete(out, "SET");
}

enum Refused {
    Fixed,
    Invalid(String),
}

fn apply(door: &Door, knob: &Knob<'_>, value: &str) -> Result<(), Refused> {
    let invalid = |why: &str| Refused::Invalid(why.to_owned());
    match knob {
        Knob::Fixed(_) => return Err(Refused::Fixed),
        Knob::Time {
            value: tunable,
            off,
        } => {
            let d = duration(value).map_err(|why| invalid(&why))?;
            if d.is_zero() && !off {
                return Err(invalid("must be more than 0"));
            }
            tunable.set(d);
        }
        Knob::Count {
            value: tunable,
            least,
        } => {
            let n = number(value).map_err(|why| invalid(&why))?;
            if n < *least {
                return Err(invalid(&format!("must be at least {least}")));
            }
            tunable.set(n);
        }
        Knob::Budget => {
            let n = number(value).map_err(|why| invalid(&why))?;
            let n = u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_BUDGET).contains(n))
                .ok_or_else(|| invalid(&format!("must be between 1 and {MAX_BUDGET}")))?;
            door.pools.budget().resize(n);
        }
        Knob::Warm => {
            let n = number(value).map_err(|why| invalid(&why))?;
            let most = door.pools.budget().total() as usize;
            if n > most {
                return Err(invalid(&format!("must be at most the pool size, {most}")));
            }
            if !door.pools.set_warm_min(n) {
                return Err(invalid(
                    "no connections are kept ready (the URL's login is not known to the door)",
                ));
            }
        }
    }
    Ok(())
}

/// The most server connections a `SET` may allow: PostgreSQL's own `max_connections` limit.
const MAX_BUDGET: u32 = 262_143;

/// `key = value`, `key TO value`, the value perhaps single-quoted, from `SET ...`.
fn parse(command: &str) -> Option<(String, String)> {
    let rest = command.get(3..)?.trim_start();
    let (key, value) = match rest.split_once('=') {
        Some((key, value)) => (key.trim(), value.trim()),
        None => {
            let (key, value) = rest.split_once(char::is_whitespace)?;
            let value = value.trim_start();
            let value = value
                .get(..2)
                .filter(|to| to.eq_ignore_ascii_case("to"))
                .map(|_| value[2..].trim())?;
            (key.trim(), value)
        }
    };
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    (!key.is_empty() && !value.is_empty()).then(|| (key.to_owned(), value.to_owned()))
}

/// A whole number.
fn number(value: &str) -> Result<usize, String> {
    value.parse().map_err(|_| "not a whole number".to_owned())
}

/// A duration: a bare number is seconds, as in PgBouncer's configuration; else with units
/// (`250ms`, `5s`, `2m`).
fn duration(value: &str) -> Result<Duration, String> {
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| "not a duration".to_owned());
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("{e} (write seconds, or durations like 250ms, 5s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_commands_parse_as_pgbouncer_writes_them() {
        let pair = |k: &str, v: &str| Some((k.to_owned(), v.to_owned()));
        assert_eq!(
            parse("SET max_client_conn = 200"),
            pair("max_client_conn", "200")
        );
        assert_eq!(
            parse("set query_wait_timeout='30s'"),
            pair("query_wait_timeout", "30s")
        );
        assert_eq!(parse("SET min_pool_size TO 3"), pair("min_pool_size", "3"));
        assert_eq!(parse("SET max_client_conn"), None);
        assert_eq!(parse("SET = 3"), None);
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("-1").is_err());
        assert!(duration("soon").is_err());
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(seconds(Duration::from_secs(30)), "30");
    }
}
