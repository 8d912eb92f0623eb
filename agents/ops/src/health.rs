//! The readiness flag behind `/readyz`.

use std::sync::{Arc, Mutex, PoisonError};

/// Shared readiness state; clones share it. Starts NOT ready with detail "starting".
///
/// A binary sets it ready once it did its job for the latest generation (e.g. "generation 3 applied") and
/// not ready with a reason when it cannot (e.g. "router unreachable").
#[derive(Debug, Clone)]
pub struct Health {
    /// (ready, human-readable detail shown by `/readyz`).
    state: Arc<Mutex<(bool, String)>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready, detail "starting".
    pub fn new() -> Self {
        Health {
            state: Arc::new(Mutex::new((false, "starting".to_owned()))),
        }
    }

    /// Marks ready, with what was achieved.
    pub fn set_ready(&self, detail: impl Into<String>) {
        self.set(true, detail.into());
    }

    /// Marks not ready, with why.
    pub fn set_not_ready(&self, detail: impl Into<String>) {
        self.set(false, detail.into());
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.lock().0
    }

    /// The current detail text.
    pub fn detail(&self) -> String {
        self.lock().1.clone()
    }

    /// Ready flag and detail read together.
    pub fn snapshot(&self) -> (bool, String) {
        self.lock().clone()
    }

    fn set(&self, ready: bool, detail: String) {
        *self.lock() = (ready, detail);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, String)> {
        // The data is a plain flag and string: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_flips() {
        let health = Health::new();
        assert!(!health.is_ready());
        assert_eq!(health.detail(), "starting");
        let shared = health.clone();
        shared.set_ready("generation 1 applied");
        assert!(health.is_ready());
        assert_eq!(health.detail(), "generation 1 applied");
        health.set_not_ready("router unreachable");
        assert_eq!(shared.snapshot(), (false, "router unreachable".to_owned()));
    }
}
