//! The admin console: PgBouncer's, on the door's port. A client that names the database
//! `pgway` (or `pgbouncer`, so existing tools work unchanged) and logs in as a user of
//! `PGWAY_PG_ADMIN_USERS` (every command) or `PGWAY_PG_STATS_USERS` (`SHOW` only) talks to
//! pgway itself, over the simple query protocol, as PgBouncer's console does; anyone else is
//! refused as PostgreSQL refuses a database it doesn't have.

mod show;
mod table;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::frame;
use super::roster::ClientGuard;
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
            match stream.read_buf(&mut buf).await {
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
                run(&door, &who, &query, &mut out);
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

/// Runs one command, its answer (or error) and ReadyForQuery into `out`.
fn run(door: &Door, who: &Admin, query: &str, out: &mut BytesMut) {
    let command = query.trim().trim_end_matches(';').trim();
    let mut words = command.split_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_lowercase();
    let arg = words.next();
    let extra = words.next();
    let done = match (verb.as_str(), arg, extra) {
        ("", None, _) => {
            frame::write_empty_query(out);
            frame::write_ready(out, b'I');
            return;
        }
        ("show", Some(what), None) if what.eq_ignore_ascii_case("help") => {
            help(out);
            true
        }
        ("show", Some(what), None) => show::show(door, what, out),
        _ if who.role != Role::Admin => {
            return error(out, "42501", "admin access needed");
        }
        _ => false,
    };
    if !done {
        warn!(user = %who.user, command, door = "postgres", "console command refused");
        error(
            out,
            "08P01",
            &format!("invalid command '{command}', use SHOW HELP;"),
        );
    }
}

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
         \tSHOW STATS|STATS_TOTALS|STATS_AVERAGES",
    );
    frame::write_command_complete(out, "SHOW");
    frame::write_ready(out, b'I');
}
