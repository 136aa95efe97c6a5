//! Health over `grpc.health.v1`: service `""` is liveness, `pgway.v1.Database` is readiness,
//! which follows the core's readiness channel ([`crate::core::health`]), and
//! `pgway.v1.Database.Admission` says whether new work is let through or held by the console's
//! PAUSE. A pause is not unreadiness: a gateway whose readiness fell during a planned restart
//! would be taken out of rotation, and the work waiting on it would fail.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The readiness service name: the Database service's own.
pub const READINESS: &str = crate::proto::database_server::SERVICE_NAME;
/// The liveness service name.
pub const LIVENESS: &str = "";
/// SERVING while new work goes on, NOT_SERVING while anything is paused.
pub const ADMISSION: &str = "pgway.v1.Database.Admission";

/// Sets both services to NOT_SERVING (start-up before the first check, and shutdown).
pub async fn set_all_not_serving(reporter: &HealthReporter) {
    reporter
        .set_service_status(LIVENESS, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(READINESS, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(ADMISSION, ServingStatus::NotServing)
        .await;
}

/// Reports whether anything is paused as the admission service's status, until `shutdown`.
pub async fn report_pause(
    mut paused: watch::Receiver<crate::core::pause::Paused>,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) {
    loop {
        let held = paused.borrow_and_update().any();
        if shutdown.is_cancelled() {
            return;
        }
        let status = if held {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        reporter.set_service_status(ADMISSION, status).await;
        tokio::select! {
            changed = paused.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// Reports each change of `ready` as the readiness service's status, until `shutdown` (which
/// owns the statuses from then on).
pub async fn report(
    mut ready: watch::Receiver<bool>,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if shutdown.is_cancelled() {
            return;
        }
        reporter.set_service_status(READINESS, status).await;
    }
}
