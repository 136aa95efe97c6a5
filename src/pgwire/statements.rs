//! Named prepared statements in transaction mode.
//!
//! A client's named statement may be bound on any server connection, so the door gives each
//! distinct (query text, parameter types, `search_path`) one global name (`pgway_<random>_<n>`, the random
//! part new each time the gateway starts, so no client can guess a name another client's Binds
//! will use) and prepares it on a
//! server connection the first time that connection needs it. Each connection tracks what it
//! has, with a bound (least recently used closed first); each client maps its own names to the
//! global ones.
//!
//! Both the registry and each client's map are bounded, by count and by bytes of text, least
//! recently used dropped first: applications that write literals into their SQL send a new
//! text every time, and a hostile client can send megabytes per statement. A text dropped
//! from the registry stays usable by the clients that name it (they hold it); the next Parse
//! of it only gets a new global name.
//!
//! The `search_path` is part of the key because PostgreSQL analyses a statement under the
//! path in force at its Parse, and analyses it again at a Bind under another one: a text
//! shared by clients of different paths (a schema per tenant) would otherwise be bound under
//! a path it wasn't prepared with, and fail with 0A000 ("cached plan must not change result
//! type") where each client's own statement directly runs.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use metrics::counter;

use crate::core::sql::{SessionEffect, session_effect};
use crate::core::telemetry as names;

/// How many statements, and how many bytes of their texts, a map may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub count: NonZeroUsize,
    pub bytes: usize,
}

/// One global statement: what to send in its Parse.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub name: Bytes,
    pub query: Bytes,
    pub types: Bytes,
    /// The `search_path` it is analysed under.
    pub path: Bytes,
    /// What running it does to the session (read once, for every Bind).
    pub effect: SessionEffect,
    /// The catalog epoch it was made in (see [`Registry::catalog_changed`]).
    epoch: u64,
    /// Its plan went stale: clients that still name it are moved to a fresh statement of the
    /// same text, never prepared anywhere (this name may still be prepared on some servers,
    /// with the stale plan, until their LRU closes it).
    retired: AtomicBool,
}

impl Statement {
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The bytes it holds, as its bounds count them.
    pub fn size(&self) -> usize {
        self.query.len() + self.types.len() + self.name.len() + self.path.len()
    }
}

/// Statements by key, least recently used dropped first beyond a [`Bound`].
#[derive(Debug)]
pub struct Bounded<K: std::hash::Hash + Eq> {
    map: LruCache<K, Arc<Statement>>,
    bytes: usize,
    bound: Bound,
    /// `pgway_pg_statements_dropped_total{place}`'s label.
    place: &'static str,
}

impl<K: std::hash::Hash + Eq> Bounded<K> {
    pub fn new(bound: Bound, place: &'static str) -> Bounded<K> {
        Bounded {
            map: LruCache::unbounded(),
            bytes: 0,
            bound,
            place,
        }
    }

    /// Adds (or replaces) `key`, then drops the least recently used beyond the bound (never
    /// the one just added).
    pub fn insert(&mut self, key: K, statement: Arc<Statement>) {
        self.bytes += statement.size();
        if let Some(old) = self.map.put(key, statement) {
            self.bytes -= old.size();
        }
        let mut dropped = 0;
        while self.map.len() > 1
            && (self.map.len() > self.bound.count.get() || self.bytes > self.bound.bytes)
        {
            let Some((_, old)) = self.map.pop_lru() else {
                break;
            };
            self.bytes -= old.size();
            dropped += 1;
        }
        if dropped > 0 {
            counter!(names::PG_STATEMENTS_DROPPED, "place" => self.place).increment(dropped);
        }
    }

    /// The statement of `key`, now the most recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&Arc<Statement>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.contains(key)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<Arc<Statement>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let removed = self.map.pop(key)?;
        self.bytes -= removed.size();
        Some(removed)
    }

    /// Drops every statement with `id`.
    fn remove_id(&mut self, id: u64)
    where
        K: Clone,
    {
        let keys: Vec<K> = (self.map.iter())
            .filter(|(_, s)| s.id == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes of text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The gateway-wide registry of global statements. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// `pgway_<random>_`: what every global name starts with.
    prefix: Arc<str>,
    /// Bumped by every CREATE, ALTER or DROP the door sees complete; outside the lock, since
    /// a kept unnamed statement is checked against it at every Parse.
    epoch: Arc<AtomicU64>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new(Bound {
            count: NonZeroUsize::MIN.saturating_add(9_999),
            bytes: 64 << 20,
        })
    }
}

#[derive(Debug)]
struct Inner {
    by_text: Bounded<(Bytes, Bytes, Bytes)>,
    next: u64,
}

impl Registry {
    /// A registry of at most `bound`'s statements.
    pub fn new(bound: Bound) -> Registry {
        Registry {
            inner: Arc::new(Mutex::new(Inner {
                by_text: Bounded::new(bound, "registry"),
                next: 0,
            })),
            prefix: format!("pgway_{:016x}_", rand::random::<u64>()).into(),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The global statement for this text and these types under `path` (the client's
    /// `search_path`), made on first use.
    pub fn statement(&self, query: &[u8], types: &[u8], path: &[u8]) -> Arc<Statement> {
        let Ok(mut inner) = self.inner.lock() else {
            // Poisoned only by a panic elsewhere; a private statement still works.
            return Arc::new(self.make(u64::MAX, query, types, path));
        };
        let key = (
            Bytes::copy_from_slice(query),
            Bytes::copy_from_slice(types),
            Bytes::copy_from_slice(path),
        );
        let epoch = self.epoch.load(Ordering::Relaxed);
        if let Some(found) = inner.by_text.get(&key) {
            if found.epoch == epoch {
                return Arc::clone(found);
            }
            // DDL ran since it was made. Directly, a Parse now is analysed against the catalog
            // as it is now (a parameter's type is fixed at Parse and may name a type that is
            // gone: "cache lookup failed for type" at Bind), so the text gets a new global
            // name, Parsed anew on each server connection. Clients that already name the old
            // one keep it, as their statement would stay prepared directly.
        }
        inner.next += 1;
        let mut made = self.make(inner.next, query, types, path);
        made.epoch = epoch;
        let statement = Arc::new(made);
        inner.by_text.insert(key, Arc::clone(&statement));
        statement
    }

    /// A statement of this text and these types that no other Parse gets: for a client whose
    /// `search_path` the door doesn't know (changed in the transaction in progress).
    pub fn private(&self, query: &[u8], types: &[u8]) -> Arc<Statement> {
        let id = match self.inner.lock() {
            Ok(mut inner) => {
                inner.next += 1;
                inner.next
            }
            Err(_) => u64::MAX,
        };
        Arc::new(self.make(id, query, types, b""))
    }

    /// Retires a statement whose plan went stale (0A000 after DDL): the next Parse of the same
    /// text gets a fresh global name, prepared anew everywhere.
    pub fn retire(&self, id: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some((_, s)) = inner.by_text.map.iter().find(|(_, s)| s.id == id) {
                s.retired.store(true, Ordering::Relaxed);
            }
            inner.by_text.remove_id(id);
        }
    }

    /// A statement that changes the catalog (CREATE, ALTER, DROP) completed: statements made
    /// before it are not reused for a new Parse of their text.
    pub fn catalog_changed(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a Parse of `statement`'s text now would still get `statement`, as far as can
    /// be told without the lock: not retired, and no DDL seen since it was made.
    pub fn is_current(&self, statement: &Statement) -> bool {
        !statement.is_retired() && statement.epoch == self.epoch.load(Ordering::Relaxed)
    }

    /// The global name of statement `id`.
    pub fn name(&self, id: u64) -> String {
        format!("{}{id}", self.prefix)
    }

    fn make(&self, id: u64, query: &[u8], types: &[u8], path: &[u8]) -> Statement {
        Statement {
            id,
            name: Bytes::from(self.name(id)),
            query: Bytes::copy_from_slice(query),
            types: Bytes::copy_from_slice(types),
            path: Bytes::copy_from_slice(path),
            effect: session_effect(query, true),
            epoch: 0,
            retired: AtomicBool::new(false),
        }
    }

    /// The bytes of text the registry holds.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map(|i| i.by_text.bytes()).unwrap_or(0)
    }

    /// How many distinct statements are known.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.by_text.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_per_text_and_types_until_retired() {
        let registry = Registry::default();
        let a = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"");
        let b = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"");
        let c = registry.statement(b"SELECT $1", &[0, 0], b"");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        // Another search_path, another statement: it is analysed under its own path.
        let d = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"tenant_b");
        assert_ne!(a.id, d.id);
        assert_eq!(
            registry
                .statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"tenant_b")
                .id,
            d.id
        );
        // A private one is no one else's.
        let e = registry.private(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        assert!(![a.id, c.id, d.id].contains(&e.id));
        assert_ne!(
            registry.private(b"SELECT $1", &[0, 1, 0, 0, 0, 23]).id,
            e.id
        );
        registry.retire(a.id);
        assert!(a.is_retired() && !c.is_retired());
        assert!(!registry.is_current(&a) && registry.is_current(&c));
        assert_ne!(
            registry
                .statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"")
                .id,
            a.id
        );
        let before = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"");
        assert!(registry.is_current(&before));
        registry.catalog_changed();
        assert!(!registry.is_current(&before));
        let after = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"");
        assert!(registry.is_current(&after));
        // After DDL a Parse of the same text gets a new name; clients naming the old one
        // keep it.
        assert_ne!(after.id, before.id);
        assert!(!before.is_retired());
        assert_eq!(
            registry
                .statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"")
                .id,
            after.id
        );
        // Another gateway (or the same one restarted) names its statements otherwise.
        assert_ne!(
            a.name,
            Registry::default()
                .statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23], b"")
                .name
        );
    }

    #[test]
    fn the_least_recently_used_are_dropped_beyond_the_bound() {
        let registry = Registry::new(Bound {
            count: NonZeroUsize::new(3).unwrap(),
            bytes: 1 << 20,
        });
        let first = registry.statement(b"SELECT 1", &[0, 0], b"");
        for n in 2..=3 {
            registry.statement(format!("SELECT {n}").as_bytes(), &[0, 0], b"");
        }
        // Used again: now the most recent.
        assert_eq!(registry.statement(b"SELECT 1", &[0, 0], b"").id, first.id);
        registry.statement(b"SELECT 4", &[0, 0], b"");
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.statement(b"SELECT 1", &[0, 0], b"").id, first.id);
        // SELECT 2 was the least recently used: dropped, so it gets a new name.
        let second = registry.statement(b"SELECT 2", &[0, 0], b"");
        assert!(second.id > 4);

        // By bytes: one statement larger than the bound is kept alone.
        let small = Registry::new(Bound {
            count: NonZeroUsize::new(100).unwrap(),
            bytes: 1000,
        });
        for n in 0..50 {
            small.statement(format!("SELECT {n:0>100}").as_bytes(), &[0, 0], b"");
        }
        assert!(small.bytes() <= 1000, "{}", small.bytes());
        small.statement(&[b'x'; 5000], &[0, 0], b"");
        assert_eq!(small.len(), 1);
    }
}
