//! A setting the admin console's `SET` may change while the gateway runs: read with one
//! relaxed atomic load where it is used (on a session's path, once per wait), and keeping the
//! value it started with, which `SHOW CONFIG` lists as the default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A value stored in 64 bits.
pub trait Stored: Copy {
    fn to_bits(self) -> u64;
    fn from_bits(bits: u64) -> Self;
}

impl Stored for Duration {
    /// In nanoseconds: about 584 years fit, and longer is stored as that.
    fn to_bits(self) -> u64 {
        u64::try_from(self.as_nanos()).unwrap_or(u64::MAX)
    }
    fn from_bits(bits: u64) -> Duration {
        Duration::from_nanos(bits)
    }
}

impl Stored for usize {
    fn to_bits(self) -> u64 {
        self as u64
    }
    fn from_bits(bits: u64) -> usize {
        usize::try_from(bits).unwrap_or(usize::MAX)
    }
}

/// A setting that may change while running.
#[derive(Debug)]
pub struct Tunable<T> {
    start: T,
    now: AtomicU64,
}

impl<T: Stored> Tunable<T> {
    pub fn new(start: T) -> Tunable<T> {
        Tunable {
            start,
            now: AtomicU64::new(start.to_bits()),
        }
    }

    /// The value now.
    pub fn get(&self) -> T {
        T::from_bits(self.now.load(Ordering::Relaxed))
    }

    pub fn set(&self, value: T) {
        self.now.store(value.to_bits(), Ordering::Relaxed);
    }

    /// The value it started with (its `PGWAY_*` variable's).
    pub fn start(&self) -> T {
        self.start
    }
}

impl<T: Stored> From<T> for Tunable<T> {
    fn from(start: T) -> Tunable<T> {
        Tunable::new(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_seen_and_the_start_kept() {
        let timeout = Tunable::new(Duration::from_millis(1500));
        timeout.set(Duration::from_secs(30));
        assert_eq!(
            (timeout.get(), timeout.start()),
            (Duration::from_secs(30), Duration::from_millis(1500))
        );
        let count: Tunable<usize> = 7.into();
        count.set(9);
        assert_eq!((count.get(), count.start()), (9, 7));
    }
}
