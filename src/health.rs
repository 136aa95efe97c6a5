//! Health over `grpc.health.v1`: service `""` is liveness, `pgway.v1.Database` is readiness.
//!
//! Liveness never depends on the database: a database outage must not make Kubernetes restart
//! every gateway. Readiness follows a background monitor that checks the database on its own
//! connection (not one from the pool, so a busy pool doesn't look like a dead database).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use tokio_postgres::Client;

use crate::dbtls::DatabaseTls;

/// The readiness service name: the Database service's own.
pub const READINESS: &str = crate::proto::database_server::SERVICE_NAME;
/// The liveness service name.
pub const LIVENESS: &str = "";

/// How long one check may take before the database counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets both services to NOT_SERVING (start-up before the first check, and shutdown).
pub async fn set_all_not_serving(reporter: &HealthReporter) {
    reporter
        .set_service_status(LIVENESS, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(READINESS, ServingStatus::NotServing)
        .await;
}

/// Checks the database every `interval` until `shutdown`, and reports readiness. The check
/// connection uses the pool's TLS, so a certificate the pool rejects makes the gateway not ready.
pub async fn monitor(
    database: tokio_postgres::Config,
    tls: DatabaseTls,
    reporter: HealthReporter,
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
        ::metrics::gauge!(crate::metrics::DATABASE_UP).set(if ok { 1.0 } else { 0.0 });
        if ok != ready {
            ready = ok;
            if ready {
                info!("database reachable: ready");
            } else {
                warn!("database unreachable: not ready");
            }
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            // Shutdown owns the statuses once it started.
            if shutdown.is_cancelled() {
                return;
            }
            reporter.set_service_status(READINESS, status).await;
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
            let (client, connection) = database.connect(tls.clone()).await.ok()?;
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
