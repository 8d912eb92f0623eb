//! Validated address configurations from a mounted ConfigMap directory (file mode), with the last good one kept.
//!
//! Every source kind (this directory watch; later the Kubernetes ConfigMap watch) publishes the same
//! [`ConfigState`]: the last good [`Config`], the current problems, and counters a consumer turns into metrics.
//! Bad input never replaces the last good configuration, so nothing is deleted because of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use maas_model::{Config, FlavorSet};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{DirSnapshot, FileSnapshot, LastGood, Result, WatchOptions, watch_dir, watch_file};

/// What a configuration source holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigState {
    /// The last good configuration; None until a valid one was read.
    pub config: Option<Arc<Config>>,
    /// Current problems, one line each naming origin, key and address (the last good configuration is in force).
    pub errors: Vec<String>,
    /// Bumps whenever `config` changes.
    pub generation: u64,
    /// Bumps once per distinct bad input (log and count once per change, not once per re-read).
    pub error_events: u64,
    /// True once the first full read (or list) is done.
    pub synced: bool,
    /// Inputs (ConfigMaps, directories, subscriptions) whose current content is valid.
    pub inputs_valid: usize,
    /// Inputs whose current content is invalid (their last good content is in force).
    pub inputs_invalid: usize,
}

/// Where a file-mode configuration comes from.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The mounted address ConfigMap (key `json`, `*.json`, `*.yaml`, optionally `flavor.json`).
    pub addresses_dir: PathBuf,
    /// Flavors from this file instead of the directory's `flavor.json`.
    pub flavors_file: Option<PathBuf>,
    pub watch: WatchOptions,
}

/// The name a directory has in error messages.
pub fn dir_origin(dir: &Path) -> String {
    format!("directory {}", dir.display())
}

/// Parse a flavor file; errors as lines.
pub fn parse_flavor_file(path: &Path, text: &str) -> std::result::Result<FlavorSet, Vec<String>> {
    maas_model::flavor::parse_flavors(&path.display().to_string(), None, text)
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

/// Read and validate once (for `validate`, `plan`, and tests). Errors as lines.
pub fn load_file_config(
    addresses_dir: &Path,
    flavors_file: Option<&Path>,
) -> std::result::Result<Config, Vec<String>> {
    let flavors = match flavors_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| vec![format!("{}: cannot read flavors file: {e}", p.display())])?;
            Some(parse_flavor_file(p, &text)?)
        }
        None => None,
    };
    let snap = crate::read_dir_snapshot(addresses_dir).map_err(|e| vec![e.to_string()])?;
    maas_model::parse_config(&dir_origin(addresses_dir), &snap.files, flavors.as_ref())
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

/// Watch a mounted address ConfigMap (and flavor file) and publish a [`ConfigState`] whenever the configuration
/// or its problems change. Must be called inside a tokio runtime.
pub fn spawn_file_config(src: FileConfig) -> Result<watch::Receiver<Arc<ConfigState>>> {
    let mut dir_rx = watch_dir(src.addresses_dir.clone(), src.watch)?;
    let mut flavors_rx = match &src.flavors_file {
        Some(p) => Some(watch_file(p.clone(), src.watch)?),
        None => None,
    };
    let mut state = FileConfigState::default();
    let first = state.recompute(&src, &dir_rx, flavors_rx.as_ref());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = dir_rx.changed() => if r.is_err() { break },
                r = changed(&mut flavors_rx) => if r.is_err() { break },
                _ = tx.closed() => break,
            }
            let next = state.recompute(&src, &dir_rx, flavors_rx.as_ref());
            let differs = **tx.borrow() != next;
            if differs {
                let _ = tx.send(Arc::new(next));
            }
        }
    });
    Ok(rx)
}

async fn changed<T>(
    rx: &mut Option<watch::Receiver<T>>,
) -> std::result::Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

#[derive(Default)]
struct FileConfigState {
    flavors: LastGood<FlavorSet>,
    config: LastGood<Config>,
    error_events: u64,
}

impl FileConfigState {
    fn recompute(
        &mut self,
        src: &FileConfig,
        dir_rx: &watch::Receiver<Arc<DirSnapshot>>,
        flavors_rx: Option<&watch::Receiver<Arc<FileSnapshot>>>,
    ) -> ConfigState {
        let mut new_errors = false;
        let mut flavors_hash = String::new();
        if let (Some(rx), Some(path)) = (flavors_rx, &src.flavors_file) {
            let snap = rx.borrow().clone();
            flavors_hash = snap.hash.clone();
            new_errors |= self
                .flavors
                .offer(&snap.hash, parse_flavor_file(path, &snap.content))
                .new_errors;
        }
        let snap = dir_rx.borrow().clone();
        let flavors = self.flavors.good().map(|f| f.as_ref().clone());
        // With a flavor file that never parsed, nothing can be validated: keep the last good addresses.
        if src.flavors_file.is_none() || flavors.is_some() {
            let key = format!("{}+{}", snap.hash, flavors_hash);
            let parsed = maas_model::parse_config(
                &dir_origin(&src.addresses_dir),
                &snap.files,
                flavors.as_ref(),
            )
            .map_err(|e| e.iter().map(ToString::to_string).collect());
            let offer = self.config.offer(&key, parsed);
            new_errors |= offer.new_errors;
            if offer.changed
                && let Some(c) = self.config.good()
            {
                info!(
                    dir = %src.addresses_dir.display(),
                    addresses = c.addresses.len(),
                    flavors = c.flavors.len(),
                    "address configuration loaded"
                );
            }
        }
        let mut errors: Vec<String> = self.flavors.errors().to_vec();
        errors.extend(self.config.errors().iter().cloned());
        if new_errors {
            self.error_events += 1;
            for e in &errors {
                warn!(error = %e, "invalid configuration; the last good configuration stays in force");
            }
        }
        ConfigState {
            config: self.config.good().cloned(),
            errors,
            generation: self.config.generation(),
            error_events: self.error_events,
            synced: true,
            inputs_valid: usize::from(
                self.config.errors().is_empty() && self.flavors.errors().is_empty(),
            ),
            inputs_invalid: usize::from(
                !(self.config.errors().is_empty() && self.flavors.errors().is_empty()),
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use maas_model::AddressKind;

    /// File mode reads the directory as ONE set: a subscription in `subscriptions.json` (what subscription-service
    /// writes) on a topic of another key (`json`, the application teams') is accepted, and takes the topic's
    /// flavor; one on a topic no key defines makes the directory invalid, naming directory, key and address.
    #[test]
    fn a_subscription_may_name_a_topic_of_another_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("json"),
            r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "small"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("flavor.json"),
            r#"{"small": {"type": "topic"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("subscriptions.json"),
            r#"[{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "c1"},
                 "spec": {"address": "c1", "type": "subscription", "topic": "news"}}]"#,
        )
        .unwrap();
        let config = load_file_config(dir.path(), None).unwrap();
        let c1 = config.addresses.get("c1").unwrap();
        assert_eq!(c1.kind, AddressKind::Subscription);
        assert_eq!(c1.topic.as_deref(), Some("news"));
        assert_eq!(c1.flavor.as_deref(), Some("small"));

        std::fs::write(
            dir.path().join("subscriptions.json"),
            r#"{"spec": {"address": "c2", "type": "subscription", "topic": "gone"}}"#,
        )
        .unwrap();
        let errors = load_file_config(dir.path(), None).unwrap_err();
        assert_eq!(
            errors,
            [format!(
                r#"{} key "subscriptions.json" address "c2": subscription on topic "gone", which is not defined"#,
                dir_origin(dir.path())
            )]
        );
    }
}
