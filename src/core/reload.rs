//! When to look at reloadable files again: on a timer, and at once on SIGHUP. One loop for
//! every owner of such files (the credential files, the server's TLS files).

use std::sync::LazyLock;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Reloads asked for from inside the process (the console's RELOAD), counted: each watcher
/// sees a change as it sees SIGHUP.
static REQUESTS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Asks every file watcher to look again now, as SIGHUP does.
pub fn request() {
    REQUESTS.send_modify(|n| *n += 1);
}

/// Wakes a file watcher: every `interval` (none when zero: SIGHUP only), on SIGHUP, and on
/// [`request`].
#[derive(Debug)]
pub struct Trigger {
    hangup: Option<Signal>,
    tick: Option<Interval>,
    requests: watch::Receiver<u64>,
}

impl Trigger {
    /// A trigger ticking every `interval` (zero: only on SIGHUP). Its first tick is at once.
    pub fn new(interval: Duration) -> Trigger {
        let tick = (!interval.is_zero()).then(|| {
            let mut tick = tokio::time::interval(interval);
            // A watcher that fell behind looks once, not once per missed tick.
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        });
        Trigger {
            hangup: crate::core::shutdown::hangup(),
            tick,
            requests: REQUESTS.subscribe(),
        }
    }

    /// Waits for the next reason to look at the files: `Some(true)` for SIGHUP (look even if
    /// nothing seems to have changed), `Some(false)` for the timer, `None` once `stopping` is
    /// cancelled.
    pub async fn next(&mut self, stopping: &CancellationToken) -> Option<bool> {
        let tick = async {
            match self.tick.as_mut() {
                Some(tick) => {
                    tick.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stopping.cancelled() => None,
            () = crate::core::shutdown::next(&mut self.hangup) => Some(true),
            Ok(()) = self.requests.changed() => Some(true),
            () = tick => Some(false),
        }
    }
}
