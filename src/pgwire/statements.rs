//! Named prepared statements in transaction mode.
//!
//! A client's named statement may be bound on any server connection, so the door gives each
//! distinct (query text, parameter types) one global name (`pgway_<n>`) and prepares it on a
//! server connection the first time that connection needs it. Each connection tracks what it
//! has, with a bound (least recently used closed first); each client maps its own names to the
//! global ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// One global statement: what to send in its Parse.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub name: Bytes,
    pub query: Bytes,
    pub types: Bytes,
    /// Running it may change session settings (read once, for every Bind).
    pub changes_settings: bool,
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
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_text: HashMap<(Bytes, Bytes), Arc<Statement>>,
    next: u64,
}

impl Registry {
    /// The global statement for this text and these types, made on first use.
    pub fn statement(&self, query: &[u8], types: &[u8]) -> Arc<Statement> {
        let Ok(mut inner) = self.inner.lock() else {
            // Poisoned only by a panic elsewhere; a private statement still works.
            return Arc::new(make(u64::MAX, query, types));
        };
        let key = (Bytes::copy_from_slice(query), Bytes::copy_from_slice(types));
        if let Some(found) = inner.by_text.get(&key) {
            return Arc::clone(found);
        }
        inner.next += 1;
        let statement = Arc::new(make(inner.next, query, types));
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

    /// How many distinct statements are known.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.by_text.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn make(id: u64, query: &[u8], types: &[u8]) -> Statement {
    Statement {
        id,
        name: Bytes::from(format!("pgway_{id}")),
        query: Bytes::copy_from_slice(query),
        types: Bytes::copy_from_slice(types),
        changes_settings: crate::core::sql::session_effect(query, true).settings,
        retired: AtomicBool::new(false),
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
    }
}
