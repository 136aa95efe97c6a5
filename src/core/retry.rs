//! When a failed call is run again, and how often.
//!
//! A call is retried when it never reached PostgreSQL (no statement sent, or the server
//! answered with an error that rolled it back during a restart), and also after it was sent
//! when that is safe: `read_only`, `idempotent`, or a `Transaction` whose connection broke
//! before COMMIT. A write whose connection broke after it was sent is never retried: its
//! caller gets UNKNOWN with reason OUTCOME_UNKNOWN.
//!
//! Retries wait with exponential backoff and full jitter, and draw on a budget (tower's
//! `TpsBudget`): at most 20% of recent calls (plus a floor of 10 per second) may be retries,
//! so a database outage is not multiplied by the retries of every caller.

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use crate::core::error::GatewayError;

/// Most times one call runs for connection-level failures.
pub const MAX_ATTEMPTS: u32 = 4;

/// The gateway-wide retry budget.
#[derive(Debug)]
pub struct RetryBudget(TpsBudget);

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
    }
}

impl RetryBudget {
    /// Every call adds to the budget once.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }

    /// The one retry policy for failures below the statement (a lost connection, a server
    /// restarting): after attempt number `attempt` failed with `error`, whether to run it
    /// again, and if so why (the `pgway_retries_total{reason}` label, counted here) and how
    /// long to wait first. `safe` is whether running the statement twice is harmless. Takes a
    /// retry from the budget only when everything else allows one.
    pub fn next_retry(
        &self,
        error: &GatewayError,
        safe: bool,
        attempt: u32,
    ) -> Option<(&'static str, Duration)> {
        let reason = reason(error, safe)?;
        if attempt >= MAX_ATTEMPTS || !self.withdraw() {
            return None;
        }
        ::metrics::counter!(crate::core::telemetry::RETRIES, "reason" => reason).increment(1);
        Some((reason, Backoff::STATEMENT.delay(attempt)))
    }
}

/// Why `error` may be retried (a label for `pgway_retries_total{reason}`), or `None` when it
/// must go back to the caller. `safe` is whether running the statement twice is harmless.
pub fn reason(error: &GatewayError, safe: bool) -> Option<&'static str> {
    match error {
        GatewayError::ConnectionLost(_) => Some("connection_lost"),
        GatewayError::OutcomeUnknown(_) if safe => Some("connection_lost"),
        GatewayError::InStatement { error, .. } => reason(error, safe),
        GatewayError::Postgres(db) => {
            // The server answered with an error, so the statement (and its transaction) was
            // rolled back: running it again can't apply it twice.
            crate::core::error::means_server_restart(db.code()).then_some("server_restart")
        }
        _ => None,
    }
}

/// An exponential backoff with full jitter, pgway's one: retry `n` waits a random time below
/// `base · 2ⁿ`, at most `cap`, so callers that failed together don't come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Before running a statement again after a lost connection or a server restart.
    pub const STATEMENT: Backoff = Backoff::new(20, 1_000);
    /// Before running a transaction again after a serialization failure or a deadlock.
    pub const CONFLICT: Backoff = Backoff::new(10, 1_000);
    /// Before opening a connection again after failed connects in a row.
    pub const CONNECT: Backoff = Backoff::new(50, 1_000);

    const fn new(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
        }
    }

    /// The longest wait before retry `n`.
    pub fn ceiling(self, n: u32) -> Duration {
        self.base.saturating_mul(1 << n.min(10)).min(self.cap)
    }

    /// The wait before retry `n` for a `fraction` (in `[0, 1)`) of its ceiling.
    pub fn at(self, n: u32, fraction: f64) -> Duration {
        self.ceiling(n).mul_f64(fraction.clamp(0.0, 1.0))
    }

    /// A random wait before retry `n`.
    pub fn delay(self, n: u32) -> Duration {
        self.at(n, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_retry_only_when_safe_or_unsent() {
        let unsent = GatewayError::ConnectionLost("eof".into());
        let sent = GatewayError::OutcomeUnknown("eof".into());
        assert_eq!(reason(&unsent, false), Some("connection_lost"));
        assert_eq!(reason(&sent, true), Some("connection_lost"));
        assert_eq!(reason(&sent, false), None);
    }

    #[test]
    fn caller_errors_are_never_retried() {
        for error in [
            GatewayError::InvalidArgument("bad".into()),
            GatewayError::ResultTooLarge("big".into()),
            GatewayError::PoolTimeout {
                waited: Duration::from_secs(1),
                last_connect_error: None,
            },
            GatewayError::Overloaded {
                waiting: 9,
                retry_after: Duration::from_millis(5),
            },
            GatewayError::DeadlineExceeded(Duration::from_secs(1)),
        ] {
            assert_eq!(reason(&error, true), None, "{error}");
        }
    }

    #[test]
    fn the_budget_runs_out() {
        let budget = RetryBudget(TpsBudget::new(Duration::from_secs(10), 1, 0.0));
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert!(granted < 100);
    }

    #[test]
    fn backoff_is_bounded() {
        for retry in 1..40 {
            assert!(Backoff::STATEMENT.delay(retry) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn backoff_grows_from_its_base_to_its_cap() {
        let backoff = Backoff::STATEMENT;
        assert_eq!(backoff.ceiling(0), Duration::from_millis(20));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(40));
        assert_eq!(backoff.ceiling(5), Duration::from_millis(640));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
        assert_eq!(backoff.at(3, 0.5), Duration::from_millis(80));
        assert_eq!(backoff.at(3, 0.0), Duration::ZERO);
        assert_eq!(Backoff::CONFLICT.ceiling(2), Duration::from_millis(40));
        assert_eq!(Backoff::CONNECT.ceiling(1), Duration::from_millis(100));
    }

    #[test]
    fn the_policy_retries_only_what_is_safe_and_within_bounds() {
        let budget = RetryBudget::default();
        let lost = GatewayError::ConnectionLost("reset".into());
        let (reason, wait) = budget.next_retry(&lost, false, 1).unwrap();
        assert_eq!(reason, "connection_lost");
        assert!(wait <= Backoff::STATEMENT.ceiling(1));
        assert!(budget.next_retry(&lost, false, MAX_ATTEMPTS).is_none());
        let unknown = GatewayError::OutcomeUnknown("cut".into());
        assert!(budget.next_retry(&unknown, false, 1).is_none());
        assert!(budget.next_retry(&unknown, true, 1).is_some());
        let bad = GatewayError::InvalidArgument("bad".into());
        assert!(budget.next_retry(&bad, true, 1).is_none());
    }
}
