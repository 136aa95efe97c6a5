//! The admin console: PgBouncer's, on the door's port. A client that names the database
//! `pgway` (or `pgbouncer`, so existing tools work unchanged) and logs in as a user of
//! `PGWAY_PG_ADMIN_USERS` (every command) or `PGWAY_PG_STATS_USERS` (`SHOW` only) talks to
//! pgway itself, over the simple query protocol, as PgBouncer's console does; anyone else is
//! refused as PostgreSQL refuses a database it doesn't have.

mod config;
mod show;
mod table;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::frame;
use super::roster::{ClientGuard, ClientState};
use super::server::Stream;
use super::{Door, Settings};

/// The databases that mean the console.
pub const NAMES: [&str; 2] = ["pgway", "pgbouncer"];

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Stats,
}

/// `Some` when `database` is the console's: the user's role there, if it has one.
pub fn role(settings: &Settings, database: &str, user: &str) -> Option<Option<Role>> {
    if !NAMES.contains(&database) {
        return None;
    }
    let listed = |users: &[String]| users.iter().any(|u| u == user);
    Some(if listed(&settings.admin_users) {
        Some(Role::Admin)
    } else if listed(&settings.stats_users) {
        Some(Role::Stats)
    } else {
        None
    })
}

/// A logged-in console user.
#[derive(Debug)]
pub struct Admin {
    pub role: Role,
    pub user: String,
    pub peer: std::net::SocketAddr,
    pub listed: ClientGuard,
}

/// The parameters a console client is told at login (drivers check `client_encoding`).
const PARAMETERS: [(&str, &str); 6] = [
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
];

/// Serves a console session from its login (`out` holds AuthenticationOk) to its end.
pub async fn serve(
    door: Arc<Door>,
    mut stream: Stream,
    mut buf: BytesMut,
    mut out: BytesMut,
    who: Admin,
) {
    let version = format!("{}/pgway", env!("CARGO_PKG_VERSION"));
    frame::write_parameter_status(&mut out, "server_version", &version);
    for (name, value) in PARAMETERS {
        frame::write_parameter_status(&mut out, name, value);
    }
    frame::write_backend_key_data(&mut out, rand::random(), rand::random());
    frame::write_ready(&mut out, b'I');
    info!(peer = %who.peer, user = %who.user, role = ?who.role, door = "postgres", "console opened");
    loop {
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        let msg = loop {
            match frame::split_message(&mut buf, door.settings.max_message) {
                Ok(Some(msg)) => break msg,
                Ok(None) => {}
                Err(_) => return,
            }
            // A console session ends when the door stops (a SHUTDOWN it ran, say): it holds
            // nothing, and a stop must not wait for it.
            let read = tokio::select! {
                read = stream.read_buf(&mut buf) => read,
                () = door.stopped() => {
                    frame::write_error(
                        &mut out,
                        "FATAL",
                        "57P01",
                        "terminating connection due to administrator command",
                        None,
                    );
                    let _ = stream.write_all(&out).await;
                    return;
                }
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        match msg[0] {
            b'Q' => {
                let Ok(query) = frame::read_query(&msg) else {
                    return;
                };
                let query = String::from_utf8_lossy(query);
                match run(&door, &who, &query, &mut out) {
                    Then::Answered => {}
                    Then::Drain(database) => {
                        // As PgBouncer's PAUSE: answered once everything in flight has ended.
                        while in_flight(&door, database.as_deref()) > 0 {
                            tokio::time::sleep(DRAIN_POLL).await;
                        }
                        info!(user = %who.user, database = database.as_deref(), door = "postgres", "pause complete: nothing in flight");
                        complete(&mut out, "PAUSE");
                    }
                    Then::WaitClose(database) => {
                        while closing(&door, database.as_deref()) > 0 {
                            tokio::time::sleep(DRAIN_POLL).await;
                        }
                        complete(&mut out, "WAIT_CLOSE");
                    }
                }
            }
            b'X' => return,
            _ => {
                // As PgBouncer's console: the extended protocol isn't spoken here.
                frame::write_error(
                    &mut out,
                    "FATAL",
                    "08P01",
                    "the admin console speaks only the simple query protocol",
                    None,
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        }
    }
}

/// What a command left to do once its answer is written (or before it is).
enum Then {
    Answered,
    /// PAUSE: answered once nothing is in flight any more.
    Drain(Option<String>),
    /// WAIT_CLOSE: answered once the connections RECONNECT or KILL retired are closed.
    WaitClose(Option<String>),
}

/// Runs one command, its answer (or error) and ReadyForQuery into `out`.
fn run(door: &Door, who: &Admin, query: &str, out: &mut BytesMut) -> Then {
    let command = query.trim().trim_end_matches(';').trim();
    let mut words = command.split_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_lowercase();
    let arg = words.next();
    let extra = words.next();
    if verb.is_empty() {
        frame::write_empty_query(out);
        frame::write_ready(out, b'I');
        return Then::Answered;
    }
    let known = match (verb.as_str(), arg, extra) {
        ("show", Some(what), None) if what.eq_ignore_ascii_case("help") => {
            help(out);
            true
        }
        ("show", Some(what), None) => show::show(door, what, out),
        _ if who.role != Role::Admin => {
            warn!(user = %who.user, peer = %who.peer, command, door = "postgres", "console command refused: admin access needed");
            error(out, "42501", "admin access needed");
            return Then::Answered;
        }
        ("pause", arg, None) => {
            door.pause.pause(arg);
            info!(user = %who.user, peer = %who.peer, database = arg, door = "postgres", "paused");
            count("pause");
            return Then::Drain(arg.map(str::to_owned));
        }
        (verb @ ("kill" | "kill_client" | "reconnect" | "reload" | "shutdown" | "set"), ..) => {
            return admin(door, who, verb, arg, command, out);
        }
        ("wait_close", arg, None) => return Then::WaitClose(arg.map(str::to_owned)),
        ("resume", arg, None) => {
            match door.pause.resume(arg) {
                Ok(()) => {
                    info!(user = %who.user, peer = %who.peer, database = arg, door = "postgres", "resumed");
                    count("resume");
                    complete(out, "RESUME");
                }
                Err(refused) => error(out, "08P01", &refused.to_string()),
            }
            return Then::Answered;
        }
        _ => false,
    };
    if !known {
        warn!(user = %who.user, command, door = "postgres", "console command refused");
        error(
            out,
            "08P01",
            &format!("invalid command '{command}', use SHOW HELP;"),
        );
    }
    Then::Answered
}

/// The admin commands beyond PAUSE / RESUME, answered into `out`.
fn admin(
    door: &Door,
    who: &Admin,
    verb: &str,
    arg: Option<&str>,
    command: &str,
    out: &mut BytesMut,
) -> Then {
    let roster = door.pools.roster();
    let ours = |database: &str| arg.is_none_or(|d| d == database) && !NAMES.contains(&database);
    let tag = match (verb, arg) {
        ("kill_client", Some(id)) => {
            let found = id.parse::<u64>().ok().and_then(|id| {
                roster
                    .clients()
                    .into_iter()
                    .find(|c| c.id == id && !NAMES.contains(&c.database.as_str()))
            });
            let Some(client) = found else {
                error(out, "08P01", &format!("no such client: {id}"));
                return Then::Answered;
            };
            client.kill();
            "KILL_CLIENT"
        }
        ("kill", _) => {
            // As PgBouncer's KILL: new work for the database waits until RESUME.
            door.pause.pause(arg);
            for client in roster.clients().iter().filter(|c| ours(&c.database)) {
                client.kill();
            }
            door.pools.reconnect(arg);
            "KILL"
        }
        ("reconnect", _) => {
            door.pools.reconnect(arg);
            "RECONNECT"
        }
        ("reload", None) => {
            crate::core::reload::request();
            "RELOAD"
        }
        ("shutdown", None) => {
            door.shutdown.cancel();
            "SHUTDOWN"
        }
        ("set", _) => {
            config::set(door, who, command, out);
            return Then::Answered;
        }
        _ => {
            error(
                out,
                "08P01",
                &format!("invalid command '{command}', use SHOW HELP;"),
            );
            return Then::Answered;
        }
    };
    info!(user = %who.user, peer = %who.peer, command, door = "postgres", "console command");
    count(match tag {
        "KILL_CLIENT" => "kill_client",
        "KILL" => "kill",
        "RECONNECT" => "reconnect",
        "RELOAD" => "reload",
        _ => "shutdown",
    });
    complete(out, tag);
    Then::Answered
}

/// Server connections of `database` (or all) that a RECONNECT or KILL retired and that are
/// still open: what WAIT_CLOSE waits for.
fn closing(door: &Door, database: Option<&str>) -> usize {
    let below = door.pools.retired_below(database);
    door.pools
        .roster()
        .servers()
        .iter()
        .filter(|s| s.id < below && database.is_none_or(|d| d == s.database))
        .count()
}

/// Counts a console command that changed something.
fn count(command: &'static str) {
    metrics::counter!(crate::core::telemetry::PG_CONSOLE_COMMANDS, "command" => command)
        .increment(1);
}

fn complete(out: &mut BytesMut, tag: &str) {
    frame::write_command_complete(out, tag);
    frame::write_ready(out, b'I');
}

/// Work in flight that PAUSE waits for: the door's transactions (clients linked to a server
/// connection, but not pinned ones sitting between transactions) and the gRPC door's calls
/// holding a connection, of `database` or of all.
fn in_flight(door: &Door, database: Option<&str>) -> usize {
    let ours = |name: &str| database.is_none_or(|d| d == name);
    let clients = door
        .pools
        .roster()
        .clients()
        .iter()
        .filter(|c| ours(&c.database) && c.state() == ClientState::Active && c.pinned().is_none())
        .count();
    let grpc = door.users.pool();
    let calls = if ours(grpc.database()) {
        let state = grpc.state();
        state.open.saturating_sub(state.idle) as usize
    } else {
        0
    };
    clients + calls
}

/// How often PAUSE looks whether what was in flight has ended.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

fn error(out: &mut BytesMut, code: &str, message: &str) {
    frame::write_error(out, "ERROR", code, message, None);
    frame::write_ready(out, b'I');
}

/// `SHOW HELP`: the commands, as a notice.
fn help(out: &mut BytesMut) {
    frame::write_notice(
        out,
        "Console usage",
        "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
         \tSHOW LISTS|STATE\n\
         \tSHOW STATS|STATS_TOTALS|STATS_AVERAGES\n\
         \tSHOW BUDGET\n\
         \tPAUSE [<db>]\n\
         \tRESUME [<db>]\n\
         \tRECONNECT [<db>]\n\
         \tKILL [<db>]\n\
         \tKILL_CLIENT <client_id>\n\
         \tWAIT_CLOSE [<db>]\n\
         \tSET <key> = <value>\n\
         \tRELOAD\n\
         \tSHUTDOWN",
    );
    frame::write_command_complete(out, "SHOW");
    frame::write_ready(out, b'I');
}
