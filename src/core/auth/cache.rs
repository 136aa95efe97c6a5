//! JWTs verified recently. A service sends the same token on call after call until it
//! expires, and checking its signature every time (an ES256 or RS256 verification costs more
//! than the rest of what pgway does for a point select) repeats work already done.
//!
//! An entry holds only while the secret and keys that verified it are the ones in force (a
//! reload replaces them, and every entry with them) and while its token passes the `exp`
//! check. Entries are keyed by the token's SHA-256, so no token is kept in memory, and the
//! least recently used go first past the capacity. Refusals are not kept.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::jwt::{KeySet, Secret, Verified};

/// What verified a token: the secret and keys in force at the time.
pub type Keys = (Option<Arc<Secret>>, Option<Arc<KeySet>>);

/// See the module docs.
pub struct VerifiedCache {
    entries: Mutex<LruCache<[u8; 32], Entry>>,
}

/// Only the count: the claims are the callers' own business, never the logs'.
impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map_or(0, |entries| entries.len());
        f.debug_struct("VerifiedCache")
            .field("entries", &entries)
            .finish()
    }
}

struct Entry {
    verified: Arc<Verified>,
    keys: Keys,
}

impl VerifiedCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        VerifiedCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The token with this digest, if it was verified with `keys` and is still unexpired at
    /// `now` (Unix seconds).
    pub fn get(&self, digest: &[u8; 32], keys: &Keys, now: u64) -> Option<Arc<Verified>> {
        // A poisoned lock only means another caller panicked holding it; the map is whole.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(digest)?;
        if same(&entry.keys.0, &keys.0)
            && same(&entry.keys.1, &keys.1)
            && now <= entry.verified.expires_at
        {
            return Some(Arc::clone(&entry.verified));
        }
        entries.pop(digest);
        None
    }

    pub fn put(&self, digest: [u8; 32], verified: Arc<Verified>, keys: Keys) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(digest, Entry { verified, keys });
    }
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(expires_at: u64) -> Arc<Verified> {
        Arc::new(Verified {
            role: "authenticated".into(),
            claims: "{}".into(),
            subject: None,
            expires_at,
        })
    }

    fn secret() -> Option<Arc<Secret>> {
        Some(Arc::new(
            Secret::parse(b"a-secret-long-enough-for-hs256-0123456789").unwrap(),
        ))
    }

    #[test]
    fn a_token_holds_until_it_expires() {
        let cache = VerifiedCache::new(NonZeroUsize::new(8).unwrap());
        let keys = (secret(), None);
        cache.put([1; 32], verified(100), keys.clone());
        assert!(cache.get(&[1; 32], &keys, 100).is_some());
        assert!(cache.get(&[2; 32], &keys, 100).is_none());
        assert!(cache.get(&[1; 32], &keys, 101).is_none());
        // Gone for good once seen expired.
        assert!(cache.get(&[1; 32], &keys, 50).is_none());
    }

    #[test]
    fn new_keys_forget_what_the_old_ones_verified() {
        let cache = VerifiedCache::new(NonZeroUsize::new(8).unwrap());
        let old = (secret(), None);
        cache.put([1; 32], verified(100), old.clone());
        // The same contents read again are other keys: a reload always starts afresh.
        assert!(cache.get(&[1; 32], &(secret(), None), 10).is_none());
        assert!(cache.get(&[1; 32], &old, 10).is_none());
    }

    #[test]
    fn the_least_recently_used_go_first() {
        let cache = VerifiedCache::new(NonZeroUsize::new(2).unwrap());
        let keys = (secret(), None);
        cache.put([1; 32], verified(100), keys.clone());
        cache.put([2; 32], verified(100), keys.clone());
        assert!(cache.get(&[1; 32], &keys, 10).is_some());
        cache.put([3; 32], verified(100), keys.clone());
        assert!(cache.get(&[2; 32], &keys, 10).is_none());
        assert!(cache.get(&[1; 32], &keys, 10).is_some());
        assert!(cache.get(&[3; 32], &keys, 10).is_some());
    }
}
