//! Who may be logging in at once, and what a failed login costs.
//!
//! A client that has not logged in yet has proved nothing, so it must not take a place a
//! logged-in client could use (`PGWAY_PG_MAX_CLIENTS` counts only those). Logins in progress
//! have bounds of their own instead: a time (`PGWAY_PG_LOGIN_TIMEOUT`), a number per client
//! address (`PGWAY_PG_MAX_LOGINS_PER_ADDRESS`) and a number in all
//! (`PGWAY_PG_MAX_LOGINS`). When the door-wide number is reached, the oldest login in
//! progress is dropped to make room: a real login takes milliseconds, so the oldest one is a
//! socket that sends nothing, and thousands of those from many addresses can't keep a real
//! client out.
//!
//! A failed login waits before it is told, longer for each recent failure from the same
//! address (up to [`MAX_FAILURE_DELAY`]), and keeps its place among that address's logins
//! while it waits: an address that guesses passwords or user names slows itself down, not
//! everyone.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The delay of a first failed login (PostgreSQL's own `auth_delay` users pick similar).
pub const FAILURE_DELAY: Duration = Duration::from_millis(500);
/// The longest a failed login waits.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);
/// Failures older than this no longer count against an address.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Addresses remembered at most (failures of the least recent are forgotten first), so an
/// attacker with many addresses can't grow the table without end.
const MAX_ADDRESSES: usize = 16_384;

/// The gate's bounds.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub max_logins: usize,
    pub max_per_address: usize,
}

/// Logins in progress and recent failures, by client address.
#[derive(Debug)]
pub struct Gate {
    limits: GateLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Logins in progress, oldest first.
    in_progress: BTreeMap<u64, CancellationToken>,
    addresses: HashMap<IpAddr, Address>,
}

#[derive(Debug)]
struct Address {
    logins: usize,
    failures: u32,
    last_failure: Instant,
}

/// Why a login was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `PGWAY_PG_MAX_LOGINS_PER_ADDRESS` logins from this address are in progress.
    Address,
}

/// A place among the logins in progress, given back when dropped.
#[derive(Debug)]
pub struct Ticket<'a> {
    gate: &'a Gate,
    id: u64,
    ip: IpAddr,
    /// Cancelled when the door needs this place for a newer login.
    pub dropped: CancellationToken,
}

impl Gate {
    pub fn new(limits: GateLimits) -> Gate {
        Gate {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only counters behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a login from `ip`: refused when the address has its share, and making room
    /// by dropping the oldest login in progress when the door has its share.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket<'_>, Full> {
        let mut inner = self.lock();
        let address = inner.addresses.get(&ip).map_or(0, |a| a.logins);
        if address >= self.limits.max_per_address {
            return Err(Full::Address);
        }
        while inner.in_progress.len() >= self.limits.max_logins {
            match inner.in_progress.pop_first() {
                // Its ticket gives back its address's place when its task ends.
                Some((_, oldest)) => oldest.cancel(),
                None => break,
            }
        }
        let id = inner.next;
        inner.next += 1;
        let dropped = CancellationToken::new();
        inner.in_progress.insert(id, dropped.clone());
        address_of(&mut inner.addresses, ip).logins += 1;
        Ok(Ticket {
            gate: self,
            id,
            ip,
            dropped,
        })
    }

    /// Records a failed login from `ip` and says how long it should wait before it is told.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let mut inner = self.lock();
        let now = Instant::now();
        let address = address_of(&mut inner.addresses, ip);
        if now.duration_since(address.last_failure) > FAILURE_MEMORY {
            address.failures = 0;
        }
        let delay = FAILURE_DELAY
            .saturating_mul(1 << address.failures.min(8))
            .min(MAX_FAILURE_DELAY);
        address.failures = address.failures.saturating_add(1);
        address.last_failure = now;
        delay
    }

    /// Logins in progress now (for tests and the console).
    pub fn in_progress(&self) -> usize {
        self.lock().in_progress.len()
    }
}

/// `ip`'s entry, made room for if the table is full.
fn address_of(addresses: &mut HashMap<IpAddr, Address>, ip: IpAddr) -> &mut Address {
    if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&ip) {
        forget_failures(addresses);
    }
    addresses.entry(ip).or_insert(Address {
        logins: 0,
        failures: 0,
        last_failure: Instant::now(),
    })
}

/// Forgets addresses with no login in progress whose failures are old, then, if the table is
/// still full, every address with no login in progress.
fn forget_failures(addresses: &mut HashMap<IpAddr, Address>) {
    let now = Instant::now();
    addresses.retain(|_, a| a.logins > 0 || now.duration_since(a.last_failure) <= FAILURE_MEMORY);
    if addresses.len() >= MAX_ADDRESSES {
        addresses.retain(|_, a| a.logins > 0);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut inner = self.gate.lock();
        inner.in_progress.remove(&self.id);
        let forget = match inner.addresses.get_mut(&self.ip) {
            Some(address) => {
                address.logins = address.logins.saturating_sub(1);
                address.logins == 0 && address.failures == 0
            }
            None => false,
        };
        if forget {
            inner.addresses.remove(&self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_logins: usize, max_per_address: usize) -> Gate {
        Gate::new(GateLimits {
            max_logins,
            max_per_address,
        })
    }

    #[test]
    fn an_address_gets_its_share_and_no_more() {
        let gate = gate(100, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Full::Address);
        assert!(gate.admit(b).is_ok(), "another address is not held back");
        drop(first);
        assert!(
            gate.admit(a).is_ok(),
            "a finished login gives its place back"
        );
    }

    #[test]
    fn the_oldest_login_makes_room_when_the_door_is_full() {
        let gate = gate(2, 10);
        let ip: IpAddr = "::1".parse().unwrap();
        let oldest = gate.admit(ip).unwrap();
        let next = gate.admit(ip).unwrap();
        let newest = gate.admit(ip).unwrap();
        assert!(oldest.dropped.is_cancelled());
        assert!(!next.dropped.is_cancelled());
        assert!(!newest.dropped.is_cancelled());
        assert_eq!(gate.in_progress(), 2);
    }

    #[test]
    fn failures_from_one_address_cost_more_each_time() {
        let gate = gate(10, 10);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let delays: Vec<Duration> = (0..6).map(|_| gate.failed(a)).collect();
        assert_eq!(delays[0], FAILURE_DELAY);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(delays[5], MAX_FAILURE_DELAY);
        assert_eq!(
            gate.failed(b),
            FAILURE_DELAY,
            "another address pays its own way"
        );
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let gate = gate(10, 10);
        for n in 0..(MAX_ADDRESSES as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(u128::from(n)));
            gate.failed(ip);
            drop(gate.admit(ip));
        }
        assert!(gate.lock().addresses.len() <= MAX_ADDRESSES);
    }
}
