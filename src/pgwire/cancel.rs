//! Cancel requests: each client gets a BackendKeyData of the door's own, and a cancel for it
//! reaches the server connection serving that client at that moment, and no other.
//!
//! A client's [`Slot`] holds its linked server's key while linked. A cancel holds the slot's
//! lock until PostgreSQL has acted on the cancel (it closes the cancel connection once it has
//! signalled the backend), and unlinking takes the same lock: so a cancel can never land on a
//! statement of the client the connection goes to next. Cancels open a connection of their
//! own and never wait for the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use metrics::counter;
use rand::Rng;
use tracing::debug;

use super::server::{self, Target};
use crate::core::telemetry as names;

/// A BackendKeyData: process id and secret.
pub type CancelKey = (i32, i32);

/// One client's cancel slot.
#[derive(Debug, Default)]
pub struct Slot {
    linked: tokio::sync::Mutex<Option<CancelKey>>,
    /// A cancel for this client is on its way: more are dropped, not queued behind it. Each
    /// queued cancel would hold the lock for a round trip to PostgreSQL while the client's
    /// server connection waits for it to be given back (a client repeating its cancel could
    /// keep its connection from others for as long as it kept sending).
    sending: AtomicBool,
}

/// Clears [`Slot::sending`] however the cancel ends.
struct Sending<'a>(&'a AtomicBool);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Slot {
    pub async fn link(&self, pid: i32, secret: i32) {
        *self.linked.lock().await = Some((pid, secret));
    }

    /// Unlinks unless a cancel is being sent right now.
    pub fn try_unlink(&self) -> bool {
        match self.linked.try_lock() {
            Ok(mut linked) => {
                *linked = None;
                true
            }
            Err(_) => false,
        }
    }

    /// Unlinks, after any cancel being sent has been acted on.
    pub async fn unlink(&self) {
        *self.linked.lock().await = None;
    }
}

/// The door's keys → slots.
#[derive(Debug, Clone, Default)]
pub struct Cancels {
    slots: Arc<Mutex<HashMap<CancelKey, Arc<Slot>>>>,
}

impl Cancels {
    /// A fresh key and slot for a client.
    pub fn register(&self) -> (CancelKey, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        let mut rng = rand::rng();
        loop {
            // Above any pid Linux hands out (2^22): a client calling pg_terminate_backend or
            // pg_cancel_backend on the pid the door gave it can't hit a real backend.
            let key = (rng.random_range(1 << 22..i32::MAX), rng.random::<i32>());
            let Ok(mut slots) = self.slots.lock() else {
                return (key, slot);
            };
            if let std::collections::hash_map::Entry::Vacant(entry) = slots.entry(key) {
                entry.insert(Arc::clone(&slot));
                return (key, slot);
            }
        }
    }

    pub fn forget(&self, key: CancelKey) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&key);
        }
    }

    /// Forwards a cancel for the client with `key`, if it is linked now. Unknown keys are
    /// ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, target: &Target, key: CancelKey) {
        let slot = self.slots.lock().ok().and_then(|s| s.get(&key).cloned());
        let Some(slot) = slot else {
            debug!("cancel request for an unknown key");
            return;
        };
        if slot.sending.swap(true, Ordering::AcqRel) {
            debug!("a cancel for this client is already on its way");
            return;
        }
        let _sending = Sending(&slot.sending);
        let linked = slot.linked.lock().await;
        if let Some((pid, secret)) = *linked {
            counter!(names::PG_CANCELS).increment(1);
            let sent = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                server::cancel(target, pid, secret),
            )
            .await;
            debug!(
                backend_pid = pid,
                ok = matches!(sent, Ok(Ok(()))),
                "cancel forwarded"
            );
        }
        drop(linked);
    }
}
