//! PAUSE and RESUME, for planned database restarts: while a database is paused, new work for
//! it waits (a transaction at its first statement, a call for a connection) instead of
//! failing, and goes on once it is resumed. Both doors wait on the same state.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::core::telemetry;

/// What is paused: everything, or some databases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    pub all: bool,
    pub databases: BTreeSet<String>,
}

impl Paused {
    pub fn covers(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }

    /// Whether anything is paused.
    pub fn any(&self) -> bool {
        self.all || !self.databases.is_empty()
    }
}

/// Why a RESUME was refused (PgBouncer's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("pooler is not paused/suspended")]
    NotPaused,
    #[error("database {0} is not paused")]
    DatabaseNotPaused(String),
}

/// The pause state both doors read.
#[derive(Debug)]
pub struct Pause {
    state: watch::Sender<Paused>,
    /// Whether anything is paused: the one load on every transaction's path.
    any: AtomicBool,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: watch::Sender::new(Paused::default()),
            any: AtomicBool::new(false),
        }
    }
}

impl Pause {
    /// Each change of what is paused, from now on.
    pub fn subscribe(&self) -> watch::Receiver<Paused> {
        self.state.subscribe()
    }

    /// Pauses `database`, or everything.
    pub fn pause(&self, database: Option<&str>) {
        self.state.send_modify(|paused| match database {
            Some(name) => {
                paused.databases.insert(name.to_owned());
            }
            None => paused.all = true,
        });
        self.any.store(true, Ordering::SeqCst);
        metrics::gauge!(telemetry::PAUSED).set(1.0);
    }

    /// Resumes `database`, or everything.
    pub fn resume(&self, database: Option<&str>) -> Result<(), ResumeError> {
        let mut refused = None;
        self.state.send_if_modified(|paused| match database {
            None if !paused.any() => {
                refused = Some(ResumeError::NotPaused);
                false
            }
            None => {
                *paused = Paused::default();
                true
            }
            Some(name) if paused.databases.remove(name) => true,
            Some(name) => {
                refused = Some(ResumeError::DatabaseNotPaused(name.to_owned()));
                false
            }
        });
        let any = self.state.borrow().any();
        self.any.store(any, Ordering::SeqCst);
        metrics::gauge!(telemetry::PAUSED).set(if any { 1.0 } else { 0.0 });
        refused.map_or(Ok(()), Err)
    }

    /// What is paused now.
    pub fn paused(&self) -> Paused {
        self.state.borrow().clone()
    }

    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub fn covers(&self, database: &str) -> bool {
        self.any() && self.state.borrow().covers(database)
    }

    /// Returns once `database` isn't paused (at once when it isn't).
    pub async fn until_resumed(&self, database: &str) {
        if !self.any() {
            return;
        }
        let mut state = self.state.subscribe();
        // Err only when the sender is gone, which it isn't while `self` lives.
        let _ = state.wait_for(|paused| !paused.covers(database)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_only_while_its_database_is_paused() {
        let pause = std::sync::Arc::new(Pause::default());
        pause.until_resumed("app").await;
        pause.pause(Some("app"));
        assert!(pause.covers("app") && !pause.covers("other"));
        pause.until_resumed("other").await;
        let waiting = tokio::spawn({
            let pause = std::sync::Arc::clone(&pause);
            async move { pause.until_resumed("app").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(
            pause.resume(Some("other")),
            Err(ResumeError::DatabaseNotPaused("other".into()))
        );
        pause.resume(Some("app")).unwrap();
        waiting.await.unwrap();
        assert_eq!(pause.resume(None), Err(ResumeError::NotPaused));
        pause.pause(None);
        assert!(pause.covers("anything"));
        pause.resume(None).unwrap();
        assert!(!pause.any());
    }
}
