//! Helpers shared by the integration tests of this crate (included with `mod common;`).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use maas_source::WatchOptions;
use tokio::sync::watch::Receiver;

/// Builds a key -> content map.
pub fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Short debounce, resync effectively off: events alone must drive the watch.
pub fn fast() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(50),
        resync: Duration::from_secs(3600),
    }
}

/// Waits (up to `timeout`) until the receiver's current value satisfies `pred`, and returns it.
pub async fn wait_for<T: Debug>(
    rx: &mut Receiver<Arc<T>>,
    timeout: Duration,
    pred: impl Fn(&T) -> bool,
) -> Arc<T> {
    let found = tokio::time::timeout(timeout, async {
        loop {
            let value = rx.borrow_and_update().clone();
            if pred(&value) {
                return value;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match found {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?}; last value: {:?}", rx.borrow()),
    }
}

/// Counts the values a receiver observes from now on (each publish of a debounced watch is far apart, so the
/// count equals the number of publishes).
pub fn count_changes<T: Send + Sync + 'static>(mut rx: Receiver<Arc<T>>) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    rx.mark_unchanged();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    count
}
