//! Named prepared statements in transaction mode.
//!
//! A client's named statement may be bound on any server connection, so the door gives each
//! distinct (query text, parameter types) one global name (`pgway_<random>_<n>`, the random
//! part new each time the gateway starts, so no client can guess a name another client's Binds
//! will use) and prepares it on a
//! server connection the first time that connection needs it. Each connection tracks what it
//! has, with a bound (least recently used closed first); each client maps its own names to the
//! global ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::core::sql::{SessionEffect, session_effect};

/// One global statement: what to send in its Parse.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub name: Bytes,
    pub query: Bytes,
    pub types: Bytes,
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
}

/// The gateway-wide registry of global statements. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// `pgway_<random>_`: what every global name starts with.
    prefix: Arc<str>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            inner: Arc::default(),
            prefix: format!("pgway_{:016x}_", rand::random::<u64>()).into(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_text: HashMap<(Bytes, Bytes), Arc<Statement>>,
    next: u64,
    /// Bumped by every CREATE, ALTER or DROP the door sees complete.
    epoch: u64,
}

impl Registry {
    /// The global statement for this text and these types, made on first use.
    pub fn statement(&self, query: &[u8], types: &[u8]) -> Arc<Statement> {
        let Ok(mut inner) = self.inner.lock() else {
            // Poisoned only by a panic elsewhere; a private statement still works.
            return Arc::new(self.make(u64::MAX, query, types));
        };
        let key = (Bytes::copy_from_slice(query), Bytes::copy_from_slice(types));
        if let Some(found) = inner.by_text.get(&key) {
            if found.epoch == inner.epoch {
                return Arc::clone(found);
            }
            // DDL ran since it was made. Directly, a Parse now is analysed against the catalog
            // as it is now (a parameter's type is fixed at Parse and may name a type that is
            // gone: "cache lookup failed for type" at Bind), so the text gets a new global
            // name, Parsed anew on each server connection. Clients that already name the old
            // one keep it, as their statement would stay prepared directly.
        }
        inner.next += 1;
        let mut made = self.make(inner.next, query, types);
        made.epoch = inner.epoch;
        let statement = Arc::new(made);
        inner.by_text.insert(key, Arc::clone(&statement));
        statement
    }

    /// Retires a statement whose plan went stale (0A000 after DDL): the next Parse of the same
    /// text gets a fresh global name, prepared anew everywhere.
    pub fn retire(&self, id: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.by_text.retain(|_, s| {
                if s.id == id {
                    s.retired.store(true, Ordering::Relaxed);
                }
                s.id != id
            });
        }
    }

    /// A statement that changes the catalog (CREATE, ALTER, DROP) completed: statements made
    /// before it are not reused for a new Parse of their text.
    pub fn catalog_changed(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.epoch += 1;
        }
    }

    /// The global name of statement `id`.
    pub fn name(&self, id: u64) -> String {
        format!("{}{id}", self.prefix)
    }

    fn make(&self, id: u64, query: &[u8], types: &[u8]) -> Statement {
        Statement {
            id,
            name: Bytes::from(self.name(id)),
            query: Bytes::copy_from_slice(query),
            types: Bytes::copy_from_slice(types),
            effect: session_effect(query, true),
            epoch: 0,
            retired: AtomicBool::new(false),
        }
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
        let a = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let b = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let c = registry.statement(b"SELECT $1", &[0, 0]);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        registry.retire(a.id);
        assert!(a.is_retired() && !c.is_retired());
        assert_ne!(
            registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23]).id,
            a.id
        );
        let before = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        registry.catalog_changed();
        let after = registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        // After DDL a Parse of the same text gets a new name; clients naming the old one
        // keep it.
        assert_ne!(after.id, before.id);
        assert!(!before.is_retired());
        assert_eq!(
            registry.statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23]).id,
            after.id
        );
        // Another gateway (or the same one restarted) names its statements otherwise.
        assert_ne!(
            a.name,
            Registry::default()
                .statement(b"SELECT $1", &[0, 1, 0, 0, 0, 23])
                .name
        );
    }
}
