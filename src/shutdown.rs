//! Waiting for the signals that stop the gateway. As PID 1 in a container nothing else handles
//! SIGTERM, so the gateway must.

use tracing::info;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            // Without a SIGTERM handler only Ctrl-C stops the gateway; say so and go on.
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => info!(signal = "SIGTERM", "shutting down"),
        result = tokio::signal::ctrl_c() => {
            if let Err(error) = result {
                tracing::warn!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
            info!(signal = "SIGINT", "shutting down");
        }
    }
}
