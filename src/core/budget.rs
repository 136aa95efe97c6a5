//! The one connection budget both doors draw from: `PGWAY_POOL_MAX` server connections in all.
//!
//! Every server connection, whichever door opens it, holds one [`Permit`] for as long as it is
//! open. A door that finds the budget spent asks the others to give back an idle connection
//! ([`Budget::reclaim_requested`]): the PostgreSQL door keeps idle connections per user and database, and
//! one user's idle connections must not starve another user, or the gRPC door.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Held by an open server connection; dropping it frees its place.
pub type Permit = OwnedSemaphorePermit;

/// The shared budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    /// Woken when someone waits for a permit: a holder of idle connections closes one.
    reclaim: Arc<Notify>,
    total: u32,
}

impl Budget {
    pub fn new(total: u32) -> Budget {
        Budget {
            permits: Arc::new(Semaphore::new(total as usize)),
            reclaim: Arc::new(Notify::new()),
            total,
        }
    }

    /// How many connections may be open at once.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// How many are open now.
    pub fn in_use(&self) -> u32 {
        self.total
            .saturating_sub(self.permits.available_permits() as u32)
    }

    /// A place now, if one is free.
    pub fn try_take(&self) -> Option<Permit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A place, waiting up to `patience` while asking idle holders to give one back.
    pub async fn take(&self, patience: Duration) -> Option<Permit> {
        if let Some(permit) = self.try_take() {
            return Some(permit);
        }
        let deadline = tokio::time::Instant::now() + patience;
        let acquire = self.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            // Asked again now and then: a holder busy when first asked may have one idle now.
            self.reclaim.notify_waiters();
            let slice = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            match tokio::time::timeout_at(slice, &mut acquire).await {
                // The semaphore is never closed.
                Ok(permit) => return permit.ok(),
                Err(_) if slice >= deadline => return None,
                Err(_) => {}
            }
        }
    }

    /// Resolves when someone waits for a place; a holder should close an idle connection if
    /// it has one.
    pub async fn reclaim_requested(&self) {
        self.reclaim.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_the_place_an_idle_holder_gives_back() {
        let budget = Budget::new(1);
        let held = budget.try_take();
        assert!(held.is_some());
        assert_eq!(budget.in_use(), 1);
        assert!(budget.try_take().is_none());
        let holder = {
            let budget = budget.clone();
            tokio::spawn(async move {
                budget.reclaim_requested().await;
                drop(held);
            })
        };
        let got = budget.take(Duration::from_secs(5)).await;
        assert!(got.is_some());
        holder.await.unwrap();
        assert!(budget.take(Duration::from_millis(10)).await.is_none());
    }
}
