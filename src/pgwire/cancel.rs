//! Cancel requests: each client gets a BackendKeyData of the door's own, and a cancel for it
//! reaches the server connection serving that client at that moment, and no other.
//!
//! A client's [`Slot`] holds its linked server's key while linked. A cancel on its way keeps
//! the client from unlinking until PostgreSQL has acted on it (it closes the cancel connection
//! once it has signalled the backend): so a cancel can never land on a statement of the client
//! the connection goes to next. Cancels open a connection of their
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
    /// The linked server's key. A plain lock, held for no await: linking and unlinking take
    /// it once per transaction (an async mutex cost about 1% of the door's CPU, measured).
    linked: Mutex<Option<CancelKey>>,
    /// A cancel for this client is on its way. More are dropped, not queued behind it: each
    /// queued cancel would keep the client's server connection from being given back for a
    /// round trip to PostgreSQL (a client repeating its cancel could keep it from others for
    /// as long as it kept sending). Unlinking waits while it is set.
    sending: AtomicBool,
    /// Wakes an unlink waiting for the cancel on its way.
    sent: tokio::sync::Notify,
    /// Rung when the door's phase changes (stopping, grace over): the session waits on its
    /// own bell, not on the door's tokens, whose one shared lock every session's every wait
    /// would take (measured: about 2% of the door's CPU at 100 clients, and contended).
    pub bell: Bell,
}

/// A wake-up for the one task that waits on it (its session), kept until that task next
/// waits. `tokio::sync::Notify` did the same at about ten times the instructions: every wait
/// made, polled and dropped a `Notified`, taking its lock twice (measured under callgrind:
/// about 600 instructions per transaction, 5% of the door's own).
#[derive(Debug, Default)]
pub struct Bell {
    rung: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Bell {
    /// Rings: the waiting task wakes, or finds it rung when it next waits.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the bell has rung (at once if it rang since the last wait).
    pub async fn rung(&self) {
        std::future::poll_fn(|cx| {
            if self.rung.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A ring between the look and the registration is seen now.
            if self.rung.swap(false, Ordering::AcqRel) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Clears [`Slot::sending`] however the cancel ends, and wakes an unlink waiting for it.
struct Sending<'a>(&'a Slot);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.store(false, Ordering::SeqCst);
        self.0.sent.notify_waiters();
    }
}

// A cancel sets `sending` and then reads `linked`; an unlink clears `linked` and then reads
// `sending` (both sequentially consistent). So a cancel that read a key is seen by the unlink
// that follows it, which waits until PostgreSQL has acted on the cancel: a cancel can never
// land on a statement of the client the connection goes to next.
impl Slot {
    pub fn link(&self, pid: i32, secret: i32) {
        if let Ok(mut linked) = self.linked.lock() {
            *linked = Some((pid, secret));
        }
    }

    /// Unlinks; false if a cancel is being sent right now (then [`Slot::unlink`] waits).
    pub fn try_unlink(&self) -> bool {
        if let Ok(mut linked) = self.linked.lock() {
            *linked = None;
        }
        !self.sending.load(Ordering::SeqCst)
    }

    /// Unlinks, after any cancel being sent has been acted on.
    pub async fn unlink(&self) {
        if self.try_unlink() {
            return;
        }
        loop {
            let sent = self.sent.notified();
            if !self.sending.load(Ordering::SeqCst) {
                return;
            }
            sent.await;
        }
    }

    fn key(&self) -> Option<CancelKey> {
        self.linked.lock().ok().and_then(|linked| *linked)
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

    /// Rings every client's bell (a client that isn't waiting finds it rung when it next
    /// waits).
    pub fn ring_all(&self) {
        let slots: Vec<Arc<Slot>> = match self.slots.lock() {
            Ok(slots) => slots.values().cloned().collect(),
            Err(_) => return,
        };
        for slot in slots {
            slot.bell.ring();
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
        if slot.sending.swap(true, Ordering::SeqCst) {
            debug!("a cancel for this client is already on its way");
            return;
        }
        let _sending = Sending(&slot);
        if let Some((pid, secret)) = slot.key() {
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
    }
}
