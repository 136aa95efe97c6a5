//! Waiting for signals: SIGTERM / SIGINT stop the gateway, SIGHUP reloads its files. As PID 1
//! in a container nothing else handles SIGTERM, so the gateway must.

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

/// A SIGHUP listener (reload files now), if the process can have one.
pub fn hangup() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP"))
        .ok()
}

/// The next SIGHUP; never, without a listener.
pub async fn next(hangup: &mut Option<tokio::signal::unix::Signal>) {
    let received = match hangup {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        // The listener is gone (or never was): no more reloads by signal.
        *hangup = None;
        std::future::pending::<()>().await;
    }
}
