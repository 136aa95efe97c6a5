//! The console's `SHOW` commands, with PgBouncer's column names, order and types, so that
//! its exporters and dashboards read pgway unchanged. Where pgway has no such figure the
//! column is there with PgBouncer's neutral value (0, or NULL where PgBouncer shows NULL);
//! the README lists which.

use std::collections::{BTreeMap, BTreeSet};

use bytes::BytesMut;

use super::table::{Cell, Kind, Table, text, timestamp};
use crate::pgwire::Door;
use crate::pgwire::roster::{ClientEntry, ClientState, Period, ServerEntry, Totals, now_us};

use Kind::{Int4, Int8, Numeric, Text};

/// Answers `SHOW what`; false when there is no such list.
pub fn show(door: &Door, what: &str, out: &mut BytesMut) -> bool {
    match what.to_ascii_lowercase().as_str() {
        "version" => version(out),
        "state" => state(door, out),
        "config" => super::config::show(door, out),
        "lists" => lists(door, out),
        "databases" => databases(door, out),
        "users" => users(door, out),
        "pools" => pools(door, out),
        "clients" => clients(door, out),
        "servers" => servers(door, out),
        "stats" => stats(door, out, true, true),
        "stats_totals" => stats(door, out, true, false),
        "stats_averages" => stats(door, out, false, true),
        "budget" => budget(door, out),
        _ => return false,
    }
    true
}

fn version(out: &mut BytesMut) {
    let mut table = Table::new(out, &[("version", Text)]);
    table.row(vec![text(format!("pgway {}", env!("CARGO_PKG_VERSION")))]);
    table.done();
}

fn state(door: &Door, out: &mut BytesMut) {
    let paused = door.pause.paused().all;
    let yes = |on: bool| if on { "yes" } else { "no" };
    let mut table = Table::new(out, &[("key", Text), ("value", Text)]);
    for (key, value) in [
        ("active", yes(!paused)),
        ("paused", yes(paused)),
        ("suspended", "no"),
    ] {
        table.row(vec![text(key), text(value)]);
    }
    table.done();
}

/// What the door is serving now, by (database, user).
#[derive(Default)]
struct Pool {
    cl_active: u64,
    cl_waiting: u64,
    sv_active: u64,
    sv_idle: u64,
    sv_other: u64,
    oldest_wait: u64,
}

/// The live lists, grouped by (database, user).
struct Now {
    clients: Vec<std::sync::Arc<ClientEntry>>,
    servers: Vec<std::sync::Arc<ServerEntry>>,
    pools: BTreeMap<(String, String), Pool>,
}

fn now(door: &Door) -> Now {
    let roster = door.pools.roster();
    let (clients, servers) = (roster.clients(), roster.servers());
    let mut pools: BTreeMap<(String, String), Pool> = BTreeMap::new();
    let at = now_us();
    for c in &clients {
        let pool = pools
            .entry((c.database.clone(), c.user.clone()))
            .or_default();
        match c.state() {
            ClientState::Active => pool.cl_active += 1,
            ClientState::Waiting => {
                pool.cl_waiting += 1;
                pool.oldest_wait = pool.oldest_wait.max(at.saturating_sub(c.since()));
            }
            ClientState::Idle => {}
        }
    }
    for (key, idle) in door.pools.idle_by_key() {
        pools
            .entry((key.database.clone(), key.user.clone()))
            .or_default()
            .sv_idle += idle as u64;
    }
    for s in &servers {
        let pool = pools
            .entry((s.database.clone(), s.user.clone()))
            .or_default();
        if s.client() != 0 {
            pool.sv_active += 1;
        } else {
            pool.sv_other += 1;
        }
    }
    // Servers with no client are idle in their pool or between a client and the pool
    // (being reset): the latter show as `sv_tested`, as PgBouncer shows its resets.
    for pool in pools.values_mut() {
        pool.sv_other = pool.sv_other.saturating_sub(pool.sv_idle);
    }
    Now {
        clients,
        servers,
        pools,
    }
}

fn pools(door: &Door, out: &mut BytesMut) {
    let now = now(door);
    let columns = [
        ("database", Text),
        ("user", Text),
        ("cl_active", Int4),
        ("cl_waiting", Int4),
        ("cl_active_cancel_req", Int4),
        ("cl_waiting_cancel_req", Int4),
        ("sv_active", Int4),
        ("sv_active_cancel", Int4),
        ("sv_being_canceled", Int4),
        ("sv_idle", Int4),
        ("sv_used", Int4),
        ("sv_tested", Int4),
        ("sv_login", Int4),
        ("maxwait", Int4),
        ("maxwait_us", Int4),
        ("pool_mode", Text),
        ("load_balance_hosts", Text),
    ];
    let mut table = Table::new(out, &columns);
    for ((database, user), p) in &now.pools {
        table.row(vec![
            text(database),
            text(user),
            text(p.cl_active),
            text(p.cl_waiting),
            text(0),
            text(0),
            text(p.sv_active),
            text(0),
            text(0),
            text(p.sv_idle),
            text(0),
            text(p.sv_other),
            text(0),
            text(p.oldest_wait / 1_000_000),
            text(p.oldest_wait % 1_000_000),
            text("transaction"),
            None,
        ]);
    }
    table.done();
}

/// The columns of `SHOW CLIENTS` and `SHOW SERVERS` (PgBouncer's), then pgway's `pinned`.
const SOCKET_COLUMNS: [(&str, Kind); 22] = [
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int4),
    ("id", Int8),
    ("pinned", Text),
];

/// A client's or server's `ptr`/`link`: its id, as PgBouncer shows an address.
fn ptr(kind: char, id: u64) -> Cell {
    (id != 0).then(|| format!("{kind}{id:x}"))
}

fn clients(door: &Door, out: &mut BytesMut) {
    let now = now(door);
    let at = now_us();
    let mut table = Table::new(out, &SOCKET_COLUMNS);
    for c in &now.clients {
        let state = c.state();
        let wait = match state {
            ClientState::Waiting => at.saturating_sub(c.since()),
            _ => 0,
        };
        let state = match state {
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Idle => "idle",
        };
        let local = c.local;
        table.row(vec![
            text("C"),
            text(&c.user),
            text(&c.database),
            text("none"),
            text(state),
            text(c.peer.ip()),
            text(c.peer.port()),
            local.map(|l| l.ip().to_string()),
            text(local.map_or(0, |l| l.port())),
            timestamp(c.connected_at),
            timestamp(c.since()),
            text(wait / 1_000_000),
            text(wait % 1_000_000),
            text(0),
            ptr('c', c.id),
            ptr('s', c.server()).or_else(|| text("")),
            text(0),
            text(if c.tls { "TLS" } else { "" }),
            text(&c.application_name),
            text(0),
            text(c.id),
            c.pinned().map(str::to_owned),
        ]);
    }
    table.done();
}

fn servers(door: &Door, out: &mut BytesMut) {
    let now = now(door);
    let mut table = Table::new(out, &SOCKET_COLUMNS);
    for s in &now.servers {
        let client = s.client();
        let pinned = now
            .clients
            .iter()
            .find(|c| c.id == client && client != 0)
            .and_then(|c| c.pinned());
        table.row(vec![
            text("S"),
            text(&s.user),
            text(&s.database),
            text("none"),
            text(if client != 0 { "active" } else { "idle" }),
            text(&s.addr),
            text(s.port),
            None,
            text(0),
            timestamp(s.connected_at),
            timestamp(s.since()),
            text(0),
            text(0),
            text(0),
            ptr('s', s.id),
            ptr('c', client).or_else(|| text("")),
            text(s.pid),
            text(""),
            text(""),
            text(0),
            text(s.id),
            pinned.map(str::to_owned),
        ]);
    }
    table.done();
}

fn databases(door: &Door, out: &mut BytesMut) {
    let now = now(door);
    let budget = door.pools.budget().total();
    let target = door.pools.target();
    let (host, port) = target.address.host_port();
    let mut names: BTreeSet<String> = door
        .pools
        .roster()
        .all_stats()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.extend(now.pools.keys().map(|(database, _)| database.clone()));
    names.extend(door.settings.databases.iter().cloned());
    let columns = [
        ("name", Text),
        ("host", Text),
        ("port", Int4),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int4),
        ("min_pool_size", Int4),
        ("reserve_pool_size", Int4),
        ("server_lifetime", Int4),
        ("pool_mode", Text),
        ("load_balance_hosts", Text),
        ("max_connections", Int4),
        ("current_connections", Int4),
        ("max_client_connections", Int4),
        ("current_client_connections", Int4),
        ("paused", Int4),
        ("disabled", Int4),
    ];
    let mut table = Table::new(out, &columns);
    for name in names {
        let servers = now.servers.iter().filter(|s| s.database == name).count();
        let clients = now.clients.iter().filter(|c| c.database == name).count();
        table.row(vec![
            text(&name),
            text(&host),
            text(port),
            text(&name),
            None,
            text(budget),
            text(0),
            text(0),
            text(door.pools.settings().max_lifetime.get().as_secs()),
            text("transaction"),
            None,
            text(budget),
            text(servers),
            text(door.settings.max_clients.get()),
            text(clients),
            text(u8::from(door.pause.covers(&name))),
            text(0),
        ]);
    }
    table.done();
}

fn users(door: &Door, out: &mut BytesMut) {
    let now = now(door);
    let names: BTreeSet<&str> = now.pools.keys().map(|(_, user)| user.as_str()).collect();
    let columns = [
        ("name", Text),
        ("pool_size", Text),
        ("reserve_pool_size", Text),
        ("pool_mode", Text),
        ("max_user_connections", Int4),
        ("current_connections", Int4),
        ("max_user_client_connections", Int4),
        ("current_client_connections", Int4),
    ];
    let mut table = Table::new(out, &columns);
    for name in names {
        let servers = now.servers.iter().filter(|s| s.user == name).count();
        let clients = now.clients.iter().filter(|c| c.user == name).count();
        table.row(vec![
            text(name),
            text(""),
            text(""),
            None,
            text(0),
            text(servers),
            text(0),
            text(clients),
        ]);
    }
    table.done();
}

fn lists(door: &Door, out: &mut BytesMut) {
    let now = now(door);
    let databases: BTreeSet<&str> = now.pools.keys().map(|(d, _)| d.as_str()).collect();
    let users: BTreeSet<&str> = now.pools.keys().map(|(_, u)| u.as_str()).collect();
    let mut table = Table::new(out, &[("list", Text), ("items", Int4)]);
    for (list, items) in [
        ("databases", databases.len()),
        ("users", users.len()),
        ("peers", 0),
        ("pools", now.pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", now.clients.len()),
        ("login_clients", door.gate.in_progress()),
        ("free_servers", 0),
        ("used_servers", now.servers.len()),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        table.row(vec![text(list), text(items)]);
    }
    table.done();
}

/// `SHOW BUDGET`, pgway's own: the server connections of each door (the gRPC door's calls
/// holding one are its `sv_active`, those waiting for one its `cl_waiting`), then the budget
/// both share (`PGWAY_POOL_MAX`, or what `SET default_pool_size` made it).
fn budget(door: &Door, out: &mut BytesMut) {
    let budget = door.pools.budget();
    let (open, idle) = door.pools.counts();
    let waiting = door.pools.waiting();
    let grpc = door.users.pool();
    let state = grpc.state();
    let (grpc_open, grpc_idle) = (state.open as usize, state.idle as usize);
    let mut table = Table::new(
        out,
        &[
            ("door", Text),
            ("database", Text),
            ("sv_active", Int4),
            ("sv_idle", Int4),
            ("cl_waiting", Int4),
            ("max_connections", Int4),
        ],
    );
    let total = budget.total();
    table.row(vec![
        text("postgres"),
        None,
        text(open.saturating_sub(idle)),
        text(idle),
        text(waiting),
        text(total),
    ]);
    table.row(vec![
        text("grpc"),
        text(grpc.database()),
        text(grpc_open.saturating_sub(grpc_idle)),
        text(grpc_idle),
        text(state.waiting),
        text(total),
    ]);
    table.row(vec![
        text("total"),
        None,
        text((open + grpc_open).saturating_sub(idle + grpc_idle)),
        text(idle + grpc_idle),
        text(waiting + state.waiting),
        text(total),
    ]);
    table.done();
}

/// The figures' names, in `SHOW STATS`' order.
const FIGURES: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

/// `SHOW STATS_TOTALS` names two of them differently.
fn total_name(figure: &str) -> String {
    match figure {
        "received" => "bytes_received".into(),
        "sent" => "bytes_sent".into(),
        other => other.into(),
    }
}

/// `SHOW STATS`' and `SHOW STATS_AVERAGES`' names of the averages.
fn average_name(figure: &str, prefixed: bool) -> String {
    let name = match figure {
        "received" => "recv",
        other => other,
    };
    match (prefixed, figure) {
        (true, _) => format!("avg_{name}"),
        (false, "received") => "bytes_received".into(),
        (false, "sent") => "bytes_sent".into(),
        (false, f)
            if f.ends_with("parse_count") || f == "bind_count" || f == "client_login_count" =>
        {
            format!("avg_{f}")
        }
        (false, f) => f.into(),
    }
}

/// The averages of the last stats period: counts per second; times per transaction, per
/// query and per server assignment (µs), as PgBouncer computes them.
fn averages(period: Option<&Period>, database: &str) -> Totals {
    let Some(period) = period else {
        return [0; 12];
    };
    let end = period.end.get(database).copied().unwrap_or([0; 12]);
    let start = period.start.get(database).copied().unwrap_or([0; 12]);
    let mut delta = [0u64; 12];
    for i in 0..12 {
        delta[i] = end[i].saturating_sub(start[i]);
    }
    let per_second = |n: u64| (n as f64 / period.seconds.max(1.0)) as u64;
    let per = |n: u64, of: u64| n.checked_div(of).unwrap_or(0);
    let mut avg = delta.map(per_second);
    avg[5] = per(delta[5], delta[1]);
    avg[6] = per(delta[6], delta[2]);
    avg[7] = per(delta[7], delta[0]);
    avg
}

fn stats(door: &Door, out: &mut BytesMut, totals: bool, averaged: bool) {
    let roster = door.pools.roster();
    let all = roster.all_stats();
    let period = roster
        .period
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut columns: Vec<(String, Kind)> = vec![("database".into(), Text)];
    let both = totals && averaged;
    if totals {
        for figure in FIGURES {
            let name = if both {
                format!("total_{figure}")
            } else {
                total_name(figure)
            };
            columns.push((name, Numeric));
        }
    }
    if averaged {
        for figure in FIGURES {
            columns.push((average_name(figure, both), Numeric));
        }
    }
    let columns: Vec<(&str, Kind)> = columns.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    let mut table = Table::new(out, &columns);
    for (database, figures) in all {
        let mut row = vec![text(&database)];
        if totals {
            row.extend(figures.iter().map(text));
        }
        if averaged {
            row.extend(averages(period.as_ref(), &database).iter().map(text));
        }
        table.row(row);
    }
    table.done();
}
