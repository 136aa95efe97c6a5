//! Who may log in through the PostgreSQL door, and with which SCRAM verifier.
//!
//! - The user of `PGWAY_DATABASE_URL`, with its password: pgway makes a verifier of its own
//!   for checking the client, and logs in to the server with the password.
//! - `PGWAY_PG_AUTH_FILE`: users with the server's own verifiers (PgBouncer's userlist.txt),
//!   read at each login so edits apply without a restart.
//! - `PGWAY_PG_AUTH_QUERY`: verifiers looked up at login by a query the URL's user runs.
//!
//! For the last two the client's key recovered from its proof logs in upstream (pass-through):
//! pgway stores no password.

use std::path::PathBuf;

use tracing::warn;

use super::scram::{Credential, Verifier};
use super::userlist::UserList;
use crate::core::pool::Pool;

/// Where a user's verifier came from.
#[derive(Debug, Clone)]
pub enum Found {
    /// The URL's user: logs in upstream with the password.
    UrlUser {
        verifier: Verifier,
        password: String,
    },
    /// A stored verifier: logs in upstream with the recovered key.
    Stored(Verifier),
}

impl Found {
    pub fn verifier(&self) -> &Verifier {
        match self {
            Found::UrlUser { verifier, .. } | Found::Stored(verifier) => verifier,
        }
    }

    /// What the server login uses, once the client proved itself with `client_key`.
    pub fn credential(&self, client_key: [u8; 32]) -> Credential {
        match self {
            Found::UrlUser { password, .. } => Credential::Password(password.clone()),
            Found::Stored(verifier) => Credential::ClientKey {
                client_key,
                verifier: verifier.clone(),
            },
        }
    }
}

/// The door's users.
#[derive(Debug)]
pub struct Users {
    url_user: String,
    url: Option<(Verifier, String)>,
    file: Option<PathBuf>,
    query: Option<String>,
    /// The gRPC door's pool (the URL's user), for the auth query.
    pool: Pool,
    /// Auth queries running at once: a flood of logins with made-up names waits here (within
    /// its login timeout) instead of taking the pool from the gRPC door's callers.
    lookups: tokio::sync::Semaphore,
}

/// A URL without a password (the server trusts pgway, or peer authentication over a Unix
/// socket): the door has nothing to check the URL's user's clients against, so it says at
/// start-up what will and won't log in, instead of every login failing as a wrong password.
fn say_what_a_passwordless_url_allows(url_user: &str, file: bool, query: bool) {
    let others = match (file, query) {
        (false, false) => {
            "no client can log in through the PostgreSQL door: set PGWAY_PG_AUTH_FILE or \
             PGWAY_PG_AUTH_QUERY, or put the password in the URL"
        }
        _ => {
            "only users of PGWAY_PG_AUTH_FILE / PGWAY_PG_AUTH_QUERY can log in through the \
             PostgreSQL door"
        }
    };
    warn!(
        user = url_user,
        door = "postgres",
        "PGWAY_DATABASE_URL has no password, so the door has no password to check its \
         user's clients against (refused with 28P01 unless PGWAY_PG_AUTH_FILE or \
         PGWAY_PG_AUTH_QUERY has them); {others}"
    );
}

/// Most auth queries running at once.
pub const CONCURRENT_LOOKUPS: usize = 4;

impl Users {
    pub fn new(
        url_user: String,
        url_password: Option<String>,
        file: Option<PathBuf>,
        query: Option<String>,
        pool: Pool,
    ) -> Users {
        if url_password.is_none() {
            say_what_a_passwordless_url_allows(&url_user, file.is_some(), query.is_some());
        }
        let url = url_password.map(|password| {
            let salt: [u8; 16] = rand::random();
            (Verifier::from_password(&password, &salt, 4096), password)
        });
        Users {
            url_user,
            url,
            file,
            query,
            pool,
            lookups: tokio::sync::Semaphore::new(CONCURRENT_LOOKUPS),
        }
    }

    /// The URL's user and what it logs in upstream with, when the URL has a password.
    pub fn url_login(&self) -> Option<(String, Credential)> {
        let (_, password) = self.url.as_ref()?;
        Some((
            self.url_user.clone(),
            Credential::Password(password.clone()),
        ))
    }

    /// The pool of the URL's user (the gRPC door's), which the auth query runs on.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The verifier `user` logs in with, if any.
    pub async fn find(&self, user: &str) -> Option<Found> {
        if user == self.url_user
            && let Some((verifier, password)) = &self.url
        {
            return Some(Found::UrlUser {
                verifier: verifier.clone(),
                password: password.clone(),
            });
        }
        if let Some(path) = &self.file {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => match UserList::parse(&text) {
                    Ok(list) => {
                        if let Some(verifier) = list.get(user) {
                            return Some(Found::Stored(verifier.clone()));
                        }
                    }
                    Err(error) => {
                        warn!(path = %path.display(), %error, "PGWAY_PG_AUTH_FILE unreadable; its users can't log in")
                    }
                },
                Err(error) => {
                    warn!(path = %path.display(), %error, "PGWAY_PG_AUTH_FILE unreadable; its users can't log in")
                }
            }
        }
        if let Some(query) = &self.query {
            match self.look_up(query, user).await {
                Ok(found) => return found.map(Found::Stored),
                Err(error) => warn!(%error, "PGWAY_PG_AUTH_QUERY failed"),
            }
        }
        None
    }

    async fn look_up(&self, query: &str, user: &str) -> Result<Option<Verifier>, String> {
        let _turn = self.lookups.acquire().await.map_err(|e| e.to_string())?;
        let conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let row = conn
            .client()
            .query_opt(query, &[&user])
            .await
            .map_err(|e| e.to_string())?;
        let Some(row) = row else { return Ok(None) };
        // PgBouncer's shape: (usename, passwd); the last column is the secret.
        let secret: Option<String> = row
            .try_get(row.len().saturating_sub(1))
            .map_err(|e| e.to_string())?;
        Ok(secret.and_then(|s| Verifier::parse(&s).ok()))
    }
}
