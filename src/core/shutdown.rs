//! Waiting for signals: SIGTERM / SIGINT stop the gateway, SIGHUP reloads its files. As PID 1
//! in a container nothing else handles SIGTERM, so the gateway must.

use tokio::signal::unix::{Signal, SignalKind, signal as listen};
use tracing::info;

/// The stop signals, listened for from the moment [`Signals::install`] returns.
///
/// tokio installs a signal's handler when its listener is created, not when it is first
/// awaited: a future that created them on its first poll left a window after start-up in
/// which SIGTERM or SIGINT still had their default action (or, once tokio's handler existed
/// but no listener, were dropped). Installing them before any port opens closes it: a signal
/// that arrives once the gateway listens is never lost.
#[derive(Debug)]
pub struct Signals {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
    /// Held so SIGHUP never has its default action (ending the process) before the file
    /// watchers create their own listeners.
    _hangup: Option<Signal>,
}

impl Signals {
    /// Installs the SIGTERM, SIGINT and SIGHUP handlers now.
    pub fn install() -> Signals {
        let install = |kind: SignalKind, name: &str| {
            listen(kind)
                // Without a handler that signal can't stop the gateway; say so and go on.
                .inspect_err(|error| tracing::warn!(%error, "cannot listen for {name}"))
                .ok()
        };
        Signals {
            terminate: install(SignalKind::terminate(), "SIGTERM"),
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
            _hangup: install(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Resolves on SIGTERM or SIGINT (Ctrl-C).
    pub async fn stopped(mut self) {
        tokio::select! {
            () = next(&mut self.terminate) => info!(signal = "SIGTERM", "shutting down"),
            () = next(&mut self.interrupt) => info!(signal = "SIGINT", "shutting down"),
        }
    }
}

/// A SIGHUP listener (reload files now), if the process can have one.
pub fn hangup() -> Option<Signal> {
    listen(SignalKind::hangup())
        .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP"))
        .ok()
}

/// The next delivery of `listener`'s signal (SIGHUP: reload files now); never, without a
/// listener.
pub async fn next(listener: &mut Option<Signal>) {
    let received = match listener {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        // The listener is gone (or never was): no more of that signal.
        *listener = None;
        std::future::pending::<()>().await;
    }
}
