//! Readiness: a background monitor that checks the database on its own connection (not one
//! from the pool, so a busy pool doesn't look like a dead database) and publishes whether it
//! answers on a watch channel, which each door reports in its own way.
//!
//! Liveness never depends on the database: a database outage must not make Kubernetes restart
//! every gateway, so nothing here speaks of it.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::dbtls::DatabaseTls;

/// How long one check may take before the database counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A new readiness channel: not ready until the monitor's first check passes.
pub fn readiness() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Checks the database every `interval` until `shutdown`, and publishes readiness on `ready`.
/// The check connection uses the pool's TLS, so a certificate the pool rejects makes the
/// gateway not ready.
pub async fn monitor(
    database: tokio_postgres::Config,
    tls: DatabaseTls,
    ready_tx: watch::Sender<bool>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut conn: Option<Client> = None;
    let mut ready = false;
    loop {
        let ok = tokio::select! {
            ok = check(&database, &tls, &mut conn) => ok,
            () = shutdown.cancelled() => return,
        };
        ::metrics::gauge!(crate::core::telemetry::DATABASE_UP).set(if ok { 1.0 } else { 0.0 });
        if ok != ready {
            ready = ok;
            if ready {
                info!("database reachable: ready");
            } else {
                warn!("database unreachable: not ready");
            }
            // Shutdown owns the statuses once it started.
            if shutdown.is_cancelled() {
                return;
            }
            ready_tx.send_replace(ready);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One check on the monitor's own connection, opened (without the pool's backoff, so a
/// database that came back is seen at once) when there is none.
async fn check(
    database: &tokio_postgres::Config,
    tls: &DatabaseTls,
    conn: &mut Option<Client>,
) -> bool {
    let attempt = async {
        if conn.as_ref().is_none_or(Client::is_closed) {
            // Named apart from the pool's connections, so they can be told apart on the server.
            let mut database = database.clone();
            database.application_name("pgway-health");
            let (client, connection) = tls.connect(&database).await.ok()?;
            tokio::spawn(connection);
            *conn = Some(client);
        }
        conn.as_ref()?.simple_query("SELECT 1").await.ok()
    };
    let ok = matches!(
        tokio::time::timeout(CHECK_TIMEOUT, attempt).await,
        Ok(Some(_))
    );
    if !ok {
        // Whatever state the check connection is in, start afresh next time.
        *conn = None;
    }
    ok
}
