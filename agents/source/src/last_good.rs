//! "Bad input keeps the last good value": the bookkeeping shared by every input of every binary.
//!
//! A ConfigMap (or file, or config-service snapshot) that does not parse must not delete anything: the last
//! successfully parsed value stays in force, the errors are recorded for status, and they are logged and
//! counted once per change of the input — not once per resync of the same bad content.

use std::sync::Arc;

/// The last successfully parsed value of one input and the errors of its current content.
#[derive(Debug)]
pub struct LastGood<T> {
    /// The value in force, if any input ever parsed.
    good: Option<Arc<T>>,
    /// Content hash of the input that produced `good`.
    good_hash: Option<String>,
    /// Errors of the latest input (empty when it parsed).
    errors: Vec<String>,
    /// Content hash of the input `errors` belong to, so the same bad content is reported only once.
    errors_hash: Option<String>,
    /// Bumped each time `good` changes.
    generation: u64,
}

/// What one [`LastGood::offer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offer {
    /// The good value changed (a new content parsed); the generation was bumped.
    pub changed: bool,
    /// The input was bad and these errors were not already reported for this same content: log and count them.
    pub new_errors: bool,
    /// The input parsed while errors were recorded before: they are now cleared.
    pub recovered: bool,
}

impl<T> Default for LastGood<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> LastGood<T> {
    /// Nothing good yet, no errors, generation 0.
    pub fn new() -> Self {
        LastGood {
            good: None,
            good_hash: None,
            errors: Vec::new(),
            errors_hash: None,
            generation: 0,
        }
    }

    /// Offers a new input identified by its content hash.
    ///
    /// `Ok(v)`: `v` becomes the good value (unless the good value already came from this same hash), errors are
    /// cleared. `Err(errs)`: the good value is KEPT and `errs` recorded; they are "new" unless the previous
    /// offer was this same bad content.
    pub fn offer(&mut self, hash: &str, parsed: Result<T, Vec<String>>) -> Offer {
        match parsed {
            Ok(value) => {
                let recovered = !self.errors.is_empty() || self.errors_hash.is_some();
                self.errors.clear();
                self.errors_hash = None;
                let changed = self.good_hash.as_deref() != Some(hash);
                if changed {
                    self.good = Some(Arc::new(value));
                    self.good_hash = Some(hash.to_owned());
                    self.generation += 1;
                }
                Offer {
                    changed,
                    new_errors: false,
                    recovered,
                }
            }
            Err(errors) => {
                let new_errors = self.errors_hash.as_deref() != Some(hash);
                self.errors = errors;
                self.errors_hash = Some(hash.to_owned());
                Offer {
                    changed: false,
                    new_errors,
                    recovered: false,
                }
            }
        }
    }

    /// The value in force, if any input ever parsed.
    pub fn good(&self) -> Option<&Arc<T>> {
        self.good.as_ref()
    }

    /// Content hash of the input the good value came from.
    pub fn good_hash(&self) -> Option<&str> {
        self.good_hash.as_deref()
    }

    /// Errors of the latest input; empty when it parsed.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Number of times the good value changed; 0 before the first good input.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}
