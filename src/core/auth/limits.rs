//! What one caller may hold at once: calls in flight and open interactive transactions, so
//! that a single token or user can't take every connection from the others.
//!
//! Counts live in a map keyed by [`super::Caller::limit_key`]; an entry goes away with its
//! last permit, so the map holds only callers with something in flight and can't grow over
//! days of distinct users.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::metrics::counter;

use crate::core::error::GatewayError;
use crate::core::telemetry as metrics;

use super::Caller;

/// How much one caller may hold at once (0 = no cap): its quota, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct CallerQuota {
    pub max_calls: usize,
    pub max_transactions: usize,
}

/// What a permit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Call,
    InteractiveTransaction,
}

impl Kind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::InteractiveTransaction => "interactive_transaction",
        }
    }
}

/// What each caller holds now, checked against the [`CallerQuota`] (0 = no cap).
#[derive(Debug)]
pub struct QuotaLedger {
    max_calls: usize,
    max_transactions: usize,
    counts: Arc<Mutex<HashMap<(Kind, String), usize>>>,
}

/// Held while a call (or interactive transaction) runs; gives its place back when dropped.
#[derive(Debug)]
pub struct Permit {
    key: Option<(Kind, String)>,
    counts: Arc<Mutex<HashMap<(Kind, String), usize>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

impl QuotaLedger {
    pub fn new(max_calls: usize, max_transactions: usize) -> Self {
        QuotaLedger {
            max_calls,
            max_transactions,
            counts: Arc::default(),
        }
    }

    /// Takes a place for `caller`, or says why there is none. Callers that aren't told apart
    /// (`PGWAY_AUTH=none`) are not limited here.
    pub fn enter(&self, caller: &Caller, kind: Kind) -> Result<Permit, GatewayError> {
        let (max, setting, what) = match kind {
            Kind::Call => (
                self.max_calls,
                "PGWAY_MAX_CALLS_PER_CALLER",
                "calls in flight",
            ),
            Kind::InteractiveTransaction => (
                self.max_transactions,
                "PGWAY_MAX_TRANSACTIONS_PER_CALLER",
                "interactive transactions open",
            ),
        };
        let key = match caller.limit_key() {
            Some(key) if max > 0 => (kind, key),
            _ => {
                return Ok(Permit {
                    key: None,
                    counts: Arc::clone(&self.counts),
                });
            }
        };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= max {
            counter!(metrics::CALLER_LIMITED, "kind" => kind.label()).increment(1);
            return Err(GatewayError::CallerLimit(format!(
                "this caller already has {max} {what}, the most one caller may have ({setting})"
            )));
        }
        *count += 1;
        Ok(Permit {
            key: Some(key),
            counts: Arc::clone(&self.counts),
        })
    }

    /// Callers with something in flight (for tests: the map must empty out).
    pub fn tracked(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_capped_and_released() {
        let limits = QuotaLedger::new(2, 1);
        let alice = Caller::Token {
            fingerprint: "aaaa".into(),
        };
        let bob = Caller::Token {
            fingerprint: "bbbb".into(),
        };
        let first = limits.enter(&alice, Kind::Call).unwrap();
        let _second = limits.enter(&alice, Kind::Call).unwrap();
        assert!(matches!(
            limits.enter(&alice, Kind::Call),
            Err(GatewayError::CallerLimit(_))
        ));
        // Others are not affected, nor other kinds.
        let _bob = limits.enter(&bob, Kind::Call).unwrap();
        let _tx = limits.enter(&alice, Kind::InteractiveTransaction).unwrap();
        drop(first);
        let _third = limits.enter(&alice, Kind::Call).unwrap();
        // Open gateways don't count.
        for _ in 0..10 {
            std::mem::forget(limits.enter(&Caller::Open, Kind::Call).unwrap());
        }
    }

    #[test]
    fn entries_go_away_with_their_last_permit() {
        let limits = QuotaLedger::new(5, 5);
        let permits: Vec<_> = (0..100)
            .map(|i| {
                let caller = Caller::Token {
                    fingerprint: format!("{i:08x}").into(),
                };
                limits.enter(&caller, Kind::Call).unwrap()
            })
            .collect();
        assert_eq!(limits.tracked(), 100);
        drop(permits);
        assert_eq!(limits.tracked(), 0);
    }
}
