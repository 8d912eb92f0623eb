//! The desired state of the router, built from the sources: the address directory (kubelet-safe watch), the
//! flavor file and the brokers file. Each input keeps its LAST GOOD value: bad input is reported (log once per
//! change, metric, `/readyz` detail) and never deletes anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maas_model::{AddressKind, Brokers, Config, EntityOptions, EntitySet, FlavorSet, desired_entities};
use maas_source::{LastGood, WatchOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{KindLabels, Metrics};

/// Where the desired state comes from in file mode.
#[derive(Debug, Clone)]
pub struct FileSources {
    pub addresses_dir: PathBuf,
    pub flavors_file: Option<PathBuf>,
    pub brokers_file: Option<PathBuf>,
    pub entity_options: EntityOptions,
    pub watch: WatchOptions,
}

/// One version of the desired state.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Bumps whenever the desired entity set changes.
    pub generation: u64,
    /// `EntitySet::generation_hash` of `entities` (carried by the router's marker entity once applied).
    pub hash: String,
    pub entities: Arc<EntitySet>,
    pub addresses_by_kind: BTreeMap<AddressKind, usize>,
    /// Current configuration problems (the last good input stays in force while there are any).
    pub errors: Vec<String>,
    /// False until a valid address configuration has been read once: nothing is reconciled before that.
    pub loaded: bool,
}

/// Parse everything once (for `plan`, `validate`, and the first load). Errors are one line each.
pub fn load_once(
    addresses_dir: &Path,
    flavors_file: Option<&Path>,
    brokers_file: Option<&Path>,
) -> Result<(Config, Brokers), Vec<String>> {
    let mut errors = Vec::new();
    let flavors = match flavors_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => match parse_flavors(p, &text) {
                Ok(f) => Some(f),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            Err(e) => {
                errors.push(format!("{}: cannot read flavors file: {e}", p.display()));
                None
            }
        },
        None => None,
    };
    let config = match maas_source::read_dir_snapshot(addresses_dir) {
        Ok(snap) => {
            match maas_model::parse_config(&origin(addresses_dir), &snap.files, flavors.as_ref()) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.extend(e.iter().map(ToString::to_string));
                    None
                }
            }
        }
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let brokers = match brokers_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => match parse_brokers(p, &text) {
                Ok(b) => b,
                Err(e) => {
                    errors.extend(e);
                    Brokers::default()
                }
            },
            Err(e) => {
                errors.push(format!("{}: cannot read brokers file: {e}", p.display()));
                Brokers::default()
            }
        },
        None => Brokers::default(),
    };
    match config {
        Some(c) if errors.is_empty() => Ok((c, brokers)),
        _ => Err(errors),
    }
}

fn origin(dir: &Path) -> String {
    format!("directory {}", dir.display())
}

fn parse_flavors(path: &Path, text: &str) -> Result<FlavorSet, Vec<String>> {
    maas_model::flavor::parse_flavors(&path.display().to_string(), None, text)
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

fn parse_brokers(path: &Path, text: &str) -> Result<Brokers, Vec<String>> {
    maas_model::placement::parse_brokers(&path.display().to_string(), text)
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

/// Start watching the file sources. The returned receiver always holds the latest desired state; it changes only
/// when the desired entities or the configuration errors change.
pub fn spawn_file_sources(
    src: FileSources,
    metrics: Metrics,
) -> Result<watch::Receiver<Arc<Desired>>, maas_source::SourceError> {
    let mut dir_rx = maas_source::watch_dir(src.addresses_dir.clone(), src.watch.clone())?;
    let mut flavors_rx = match &src.flavors_file {
        Some(p) => Some(maas_source::watch_file(p.clone(), src.watch.clone())?),
        None => None,
    };
    let mut brokers_rx = match &src.brokers_file {
        Some(p) => Some(maas_source::watch_file(p.clone(), src.watch.clone())?),
        None => None,
    };
    let mut state = SourceState::default();
    let first = state.recompute(&src, &dir_rx, flavors_rx.as_ref(), brokers_rx.as_ref(), &metrics);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = dir_rx.changed() => if r.is_err() { break },
                r = changed(&mut flavors_rx) => if r.is_err() { break },
                r = changed(&mut brokers_rx) => if r.is_err() { break },
                _ = tx.closed() => break,
            }
            let prev = tx.borrow().clone();
            let next = state.recompute(&src, &dir_rx, flavors_rx.as_ref(), brokers_rx.as_ref(), &metrics);
            if next.hash != prev.hash || next.errors != prev.errors || next.loaded != prev.loaded {
                let _ = tx.send(Arc::new(next));
            }
        }
    });
    Ok(rx)
}

async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Last good value of each input, and the generation counter.
#[derive(Default)]
struct SourceState {
    flavors: LastGood<FlavorSet>,
    config: LastGood<Config>,
    brokers: LastGood<Brokers>,
    generation: u64,
    last_hash: String,
}

impl SourceState {
    fn recompute(
        &mut self,
        src: &FileSources,
        dir_rx: &watch::Receiver<Arc<maas_source::DirSnapshot>>,
        flavors_rx: Option<&watch::Receiver<Arc<maas_source::FileSnapshot>>>,
        brokers_rx: Option<&watch::Receiver<Arc<maas_source::FileSnapshot>>>,
        metrics: &Metrics,
    ) -> Desired {
        let mut new_errors = false;
        let mut flavors_hash = String::new();
        if let (Some(rx), Some(path)) = (flavors_rx, &src.flavors_file) {
            let snap = rx.borrow().clone();
            flavors_hash = snap.hash.clone();
            let offer = self.flavors.offer(&snap.hash, parse_flavors(path, &snap.content));
            new_errors |= offer.new_errors;
        }
        {
            let snap = dir_rx.borrow().clone();
            let flavors = if src.flavors_file.is_some() {
                self.flavors.good().map(|f| f.as_ref().clone())
            } else {
                None
            };
            if src.flavors_file.is_some() && flavors.is_none() {
                // Without valid flavors nothing can be validated: keep the last good addresses.
            } else {
                let key = format!("{}+{}", snap.hash, flavors_hash);
                let parsed = maas_model::parse_config(&origin(&src.addresses_dir), &snap.files, flavors.as_ref())
                    .map_err(|e| e.iter().map(ToString::to_string).collect());
                new_errors |= self.config.offer(&key, parsed).new_errors;
            }
        }
        if let (Some(rx), Some(path)) = (brokers_rx, &src.brokers_file) {
            let snap = rx.borrow().clone();
            new_errors |= self.brokers.offer(&snap.hash, parse_brokers(path, &snap.content)).new_errors;
        }

        let mut errors: Vec<String> = Vec::new();
        errors.extend(self.flavors.errors().iter().cloned());
        errors.extend(self.config.errors().iter().cloned());
        errors.extend(self.brokers.errors().iter().cloned());
        if new_errors {
            metrics.config_errors.inc();
            for e in &errors {
                warn!(error = %e, "invalid configuration; the last good configuration stays in force");
            }
        }
        metrics.config_error_active.set(i64::from(!errors.is_empty()));

        let Some(config) = self.config.good().cloned() else {
            return Desired {
                errors,
                ..Desired::default()
            };
        };
        let brokers = self.brokers.good().map(|b| b.as_ref().clone()).unwrap_or_default();
        let entities = desired_entities(&config.addresses, &config.flavors, &brokers, &src.entity_options);
        let hash = entities.generation_hash();
        if hash != self.last_hash {
            self.generation += 1;
            self.last_hash = hash.clone();
            info!(
                generation = self.generation,
                addresses = config.addresses.len(),
                entities = entities.len(),
                %hash,
                "new desired state"
            );
        }
        let addresses_by_kind = config.addresses.count_by_kind();
        for kind in [AddressKind::Anycast, AddressKind::Broadcast, AddressKind::Queue, AddressKind::Topic] {
            let n = addresses_by_kind.get(&kind).copied().unwrap_or(0);
            metrics
                .addresses
                .get_or_create(&KindLabels {
                    kind: kind.as_str().to_string(),
                })
                .set(n as i64);
        }
        metrics.desired_entities.set(entities.len() as i64);
        metrics.desired_generation.set(self.generation as i64);
        Desired {
            generation: self.generation,
            hash,
            entities: Arc::new(entities),
            addresses_by_kind,
            errors,
            loaded: true,
        }
    }
}
