//! The desired state of the router, built from the sources: the address directory (kubelet-safe watch), the
//! flavor file and the brokers file. Each input keeps its LAST GOOD value: bad input is reported (log once per
//! change, metric, `/readyz` detail) and never deletes anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeSet;

use maas_model::{
    AddressKind, Brokers, Config, DigestSet, DigestSetBuilder, Entity, EntityOptions, EntityType,
    MeshInputs, RouterPod, entity_digest, for_each_desired_entity,
};
use maas_source::{ConfigState, FileConfig, FileSnapshot, LastGood, PodsState, WatchOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{KindLabels, Metrics};

/// Where the desired state comes from in file mode.
#[derive(Debug, Clone)]
pub struct FileSources {
    pub addresses_dir: PathBuf,
    pub flavors_file: Option<PathBuf>,
    pub brokers_file: Option<PathBuf>,
    /// `--routers-file`: the interior router pods of the mesh.
    pub routers_file: Option<PathBuf>,
    pub entity_options: EntityOptions,
    /// This router in the mesh (pod name, mode, connector login); the router pods come from `routers_file`.
    pub mesh: MeshInputs,
    pub watch: WatchOptions,
}

/// One version of the desired state.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Bumps whenever the desired entity set changes.
    pub generation: u64,
    /// `EntitySet::generation_hash` of every desired entity: a new value is a new generation.
    pub hash: String,
    /// The same hash without the mesh connectors ([`maas_model::mesh::is_mesh_entity`]): what the router's marker
    /// entity carries once applied. A router pod joining or leaving changes only mesh connectors, so it never
    /// rewrites the marker (an address entity).
    pub marker: String,
    /// The desired entities in compact form (type, name -> digest).
    pub digests: Arc<DigestSet>,
    /// What the entities are generated from, to produce the few that must be created.
    pub inputs: Arc<DesiredInputs>,
    pub addresses_by_kind: BTreeMap<AddressKind, usize>,
    /// Current configuration problems (the last good input stays in force while there are any).
    pub errors: Vec<String>,
    /// False until a valid address configuration has been read once: nothing is reconciled before that.
    pub loaded: bool,
}

/// The inputs the desired entities are generated from. Entities are produced on demand ([`Self::for_each`],
/// [`Self::entities`]) instead of being held: ~25,000 entities with their attribute maps would cost tens of MB.
#[derive(Debug, Clone, Default)]
pub struct DesiredInputs {
    pub config: Arc<Config>,
    pub brokers: Brokers,
    pub options: EntityOptions,
    /// The connectors to other router pods (a handful: held, not generated).
    pub mesh: Vec<Entity>,
}

impl DesiredInputs {
    /// Every desired entity, one at a time (mesh connectors first).
    pub fn for_each(&self, mut f: impl FnMut(Entity)) {
        for e in &self.mesh {
            f(e.clone());
        }
        for_each_desired_entity(
            &self.config.addresses,
            &self.config.flavors,
            &self.brokers,
            &self.options,
            f,
        );
    }

    /// The digests of every desired entity.
    pub fn digests(&self) -> DigestSet {
        let n = self.config.addresses.len();
        let mut set = DigestSetBuilder::with_capacity(n * 3 + 16 + self.mesh.len(), n * 90);
        self.for_each(|e| set.push(e.entity_type, &e.name, entity_digest(&e)));
        set.build()
    }

    /// The desired entities with these keys, produced lazily (address by address), so that even creating
    /// everything on an empty router never holds more than a few entities at a time.
    /// With `keys` None: every desired entity (an empty router), without any lookup.
    pub fn entities(
        &self,
        keys: Option<BTreeSet<(EntityType, String)>>,
    ) -> Box<dyn Iterator<Item = Entity> + Send + '_> {
        if let Some(keys) = &keys
            && let Some(found) = self.entities_by_name(keys)
        {
            return Box::new(found.into_iter());
        }
        let connectors = maas_model::connector_entities(
            &self.config.addresses,
            &self.config.flavors,
            &self.brokers,
            &self.options,
        );
        let keys = Arc::new(keys.map(by_type));
        let k2 = keys.clone();
        let wanted = move |keys: &Option<ByType>, e: &Entity| {
            keys.as_ref().is_none_or(|k| {
                k.get(&e.entity_type)
                    .is_some_and(|names| names.contains(e.name.as_str()))
            })
        };
        let per_address = self.config.addresses.iter().flat_map(move |a| {
            let mut out = Vec::new();
            maas_model::for_each_entity_of_address(a, &self.config.flavors, &self.brokers, |e| {
                if wanted(&k2, &e) {
                    out.push(e);
                }
            });
            out
        });
        Box::new(
            self.mesh
                .iter()
                .cloned()
                .chain(maas_model::entity::option_entities(&self.options))
                .chain(connectors)
                .filter(move |e| wanted(&keys, e))
                .chain(per_address),
        )
    }

    /// The few entities of a small change, generated only for the addresses their names name (instead of walking
    /// every address). None when that does not account for every key: the caller then walks everything.
    fn entities_by_name(&self, keys: &BTreeSet<(EntityType, String)>) -> Option<Vec<Entity>> {
        const MOST: usize = 1_000;
        if keys.len() > MOST {
            return None;
        }
        let mut addresses = BTreeMap::new();
        let mut connectors = false;
        let options = maas_model::entity::option_entities(&self.options);
        for (t, name) in keys {
            if options
                .iter()
                .any(|e| e.entity_type == *t && e.name == *name)
            {
                continue;
            }
            let address = match t {
                EntityType::Connector => {
                    connectors = true;
                    continue;
                }
                EntityType::Address => name.strip_prefix("maas-address/"),
                // `<address>/<pod>/<direction>`: pod names and directions hold no '/', addresses may.
                EntityType::AutoLink => name
                    .strip_prefix("maas-autolink/")
                    .and_then(|rest| rest.rsplitn(3, '/').nth(2)),
                EntityType::LinkRoute => name
                    .strip_prefix("maas-linkroute/")
                    .and_then(|rest| rest.rsplitn(3, '/').nth(2)),
            };
            let a = self.config.addresses.get(address?)?;
            addresses.insert(a.address.as_str(), a);
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut keep = |e: Entity| {
            if keys.contains(&(e.entity_type, e.name.clone())) {
                out.push(e);
            }
        };
        options.into_iter().for_each(&mut keep);
        if connectors {
            self.mesh.iter().cloned().for_each(&mut keep);
            maas_model::connector_entities(
                &self.config.addresses,
                &self.config.flavors,
                &self.brokers,
                &self.options,
            )
            .into_iter()
            .for_each(&mut keep);
        }
        for a in addresses.into_values() {
            maas_model::for_each_entity_of_address(
                a,
                &self.config.flavors,
                &self.brokers,
                &mut keep,
            );
        }
        (out.len() == keys.len()).then_some(out)
    }
}

/// Keys grouped by type, so that a name can be looked up without allocating.
type ByType = BTreeMap<EntityType, BTreeSet<String>>;

fn by_type(keys: BTreeSet<(EntityType, String)>) -> ByType {
    let mut m = ByType::new();
    for (t, name) in keys {
        m.entry(t).or_default().insert(name);
    }
    m
}

/// Parse everything once (for `plan`, `validate`, and tests). Errors are one line each.
pub fn load_once(
    addresses_dir: &Path,
    flavors_file: Option<&Path>,
    brokers_file: Option<&Path>,
) -> Result<(Config, Brokers), Vec<String>> {
    let config = maas_source::load_file_config(addresses_dir, flavors_file);
    let brokers = match brokers_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => parse_brokers(p, &text),
            Err(e) => Err(vec![format!(
                "{}: cannot read brokers file: {e}",
                p.display()
            )]),
        },
        None => Ok(Brokers::default()),
    };
    match (config, brokers) {
        (Ok(c), Ok(b)) => Ok((c, b)),
        (c, b) => Err(c.err().into_iter().chain(b.err()).flatten().collect()),
    }
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
    let routers = match &src.routers_file {
        Some(p) => RoutersInput::File {
            path: p.clone(),
            rx: maas_source::watch_file(p.clone(), src.watch)?,
        },
        None => RoutersInput::None,
    };
    let config_rx = maas_source::spawn_file_config(FileConfig {
        addresses_dir: src.addresses_dir.clone(),
        flavors_file: src.flavors_file.clone(),
        watch: src.watch,
    })?;
    let brokers = match &src.brokers_file {
        Some(p) => BrokersInput::File {
            path: p.clone(),
            rx: maas_source::watch_file(p.clone(), src.watch)?,
        },
        None => BrokersInput::None,
    };
    Ok(spawn_desired(
        config_rx,
        Inputs {
            brokers,
            routers,
            entity_options: src.entity_options,
            mesh: src.mesh,
        },
        metrics,
    ))
}

/// Everything besides the address configuration that the desired state is built from.
pub struct Inputs {
    pub brokers: BrokersInput,
    pub routers: RoutersInput,
    pub entity_options: EntityOptions,
    /// This router's pod name, mode and mesh connector login (its `routers` field is ignored: the router pods
    /// come from `routers`).
    pub mesh: MeshInputs,
}

/// Where the broker pods come from.
pub enum BrokersInput {
    /// No brokers: queues get only their router address.
    None,
    /// `--brokers-file`, re-read on change, last good kept.
    File {
        path: PathBuf,
        rx: watch::Receiver<Arc<FileSnapshot>>,
    },
    /// Pods (Kubernetes API or config-service `podsense`): ready pods labelled as brokers of a cluster.
    Pods(watch::Receiver<Arc<PodsState>>),
}

impl BrokersInput {
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            BrokersInput::None => std::future::pending().await,
            BrokersInput::File { rx, .. } => rx.changed().await,
            BrokersInput::Pods(rx) => rx.changed().await,
        }
    }
}

/// Where the interior router pods of the mesh come from (same shapes as the broker pods).
pub type RoutersInput = BrokersInput;

/// Combine a configuration source (any kind) with the broker and router pods into the desired router state.
pub fn spawn_desired(
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    inputs: Inputs,
    metrics: Metrics,
) -> watch::Receiver<Arc<Desired>> {
    let Inputs {
        mut brokers,
        mut routers,
        entity_options,
        mesh,
    } = inputs;
    let mut state = DesiredState {
        entity_options,
        mesh,
        ..DesiredState::default()
    };
    let first = state.recompute(&config_rx, &brokers, &routers, &metrics);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = config_rx.changed() => if r.is_err() { break },
                r = brokers.changed() => if r.is_err() { break },
                r = routers.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
            }
            let prev = tx.borrow().clone();
            let next = state.recompute(&config_rx, &brokers, &routers, &metrics);
            if next.hash != prev.hash || next.errors != prev.errors || next.loaded != prev.loaded {
                let _ = tx.send(Arc::new(next));
            }
        }
    });
    rx
}

/// The brokers file's last good value, and the generation counter.
#[derive(Default)]
struct DesiredState {
    entity_options: EntityOptions,
    mesh: MeshInputs,
    brokers: LastGood<Brokers>,
    routers: LastGood<Vec<RouterPod>>,
    /// The interior pod this edge router is attached to (kept while it is there).
    uplink: Option<String>,
    config_error_events: u64,
    generation: u64,
    last_hash: String,
}

impl DesiredState {
    fn recompute(
        &mut self,
        config_rx: &watch::Receiver<Arc<ConfigState>>,
        brokers_in: &BrokersInput,
        routers_in: &RoutersInput,
        metrics: &Metrics,
    ) -> Desired {
        let cfg = config_rx.borrow().clone();
        if cfg.error_events > self.config_error_events {
            metrics
                .config_errors
                .inc_by(cfg.error_events - self.config_error_events);
            self.config_error_events = cfg.error_events;
        }
        // Without the broker pods known, a desired set would drop every broker link: wait for them.
        let mut brokers_synced = true;
        match brokers_in {
            BrokersInput::None => {}
            BrokersInput::File { path, rx } => {
                let snap = rx.borrow().clone();
                let offer = self
                    .brokers
                    .offer(&snap.hash, parse_brokers(path, &snap.content));
                if offer.new_errors {
                    metrics.config_errors.inc();
                    for e in self.brokers.errors() {
                        warn!(error = %e, "invalid brokers file; the last good one stays in force");
                    }
                }
            }
            BrokersInput::Pods(rx) => {
                let pods = rx.borrow().clone();
                brokers_synced = pods.synced;
                let b = maas_model::brokers_from_pods(&pods.pods);
                let key = format!("{b:?}");
                self.brokers.offer(&key, Ok(b));
            }
        }
        // The same for the router pods of the mesh.
        match routers_in {
            RoutersInput::None => {}
            RoutersInput::File { path, rx } => {
                let snap = rx.borrow().clone();
                let parsed =
                    maas_model::mesh::parse_routers(&path.display().to_string(), &snap.content)
                        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>());
                let offer = self.routers.offer(&snap.hash, parsed);
                if offer.new_errors {
                    metrics.config_errors.inc();
                    for e in self.routers.errors() {
                        warn!(error = %e, "invalid routers file; the last good one stays in force");
                    }
                }
            }
            RoutersInput::Pods(rx) => {
                let pods = rx.borrow().clone();
                brokers_synced &= pods.synced;
                let r = maas_model::mesh::routers_from_pods(&pods.pods);
                let key = format!("{r:?}");
                self.routers.offer(&key, Ok(r));
            }
        }
        let mut errors = cfg.errors.clone();
        errors.extend(self.brokers.errors().iter().cloned());
        errors.extend(self.routers.errors().iter().cloned());
        metrics
            .config_error_active
            .set(i64::from(!errors.is_empty()));

        let Some(config) = cfg.config.clone().filter(|_| brokers_synced && cfg.synced) else {
            return Desired {
                errors,
                ..Desired::default()
            };
        };
        let mut brokers = self
            .brokers
            .good()
            .map(|b| b.as_ref().clone())
            .unwrap_or_default();
        // Queues get autoLinks only to broker pods storage-controller has reported provisioned.
        maas_model::pods::resolve_provisioning(&mut brokers);
        let mesh = maas_model::mesh_entities(&MeshInputs {
            routers: self
                .routers
                .good()
                .map(|r| r.as_ref().clone())
                .unwrap_or_default(),
            current_uplink: self.uplink.clone(),
            ..self.mesh.clone()
        });
        // An edge stays on the interior it chose while that one is there.
        if self.mesh.mode == maas_model::RouterMode::Edge {
            self.uplink = mesh
                .first()
                .and_then(|e| e.name.strip_prefix("maas-router-"))
                .map(str::to_string);
        }
        let inputs = DesiredInputs {
            config: config.clone(),
            brokers,
            options: self.entity_options.clone(),
            mesh,
        };
        let digests = inputs.digests();
        let hash = digests.generation_hash();
        let marker = digests.generation_hash_where(|t, n| !maas_model::mesh::is_mesh_entity(t, n));
        if hash != self.last_hash {
            self.generation += 1;
            self.last_hash = hash.clone();
            info!(
                generation = self.generation,
                addresses = config.addresses.len(),
                entities = digests.len(),
                %hash,
                "new desired state"
            );
        }
        let addresses_by_kind = config.addresses.count_by_kind();
        for kind in AddressKind::ALL {
            let n = addresses_by_kind.get(&kind).copied().unwrap_or(0);
            metrics
                .addresses
                .get_or_create(&KindLabels {
                    kind: kind.as_str().to_string(),
                })
                .set(n as i64);
        }
        metrics.desired_entities.set(digests.len() as i64);
        metrics.desired_generation.set(self.generation as i64);
        Desired {
            generation: self.generation,
            hash,
            marker,
            digests: Arc::new(digests),
            inputs: Arc::new(inputs),
            addresses_by_kind,
            errors,
            loaded: true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn inputs() -> DesiredInputs {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"a/b": {"store_and_forward": true, "multicast": false, "flavor": "shared"},
                    "t": {"store_and_forward": true, "multicast": true, "flavor": "shared"},
                    "plain": {"store_and_forward": false, "multicast": false}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"shared": {"type": "queue", "shared": true, "templateName": "x"}}"#.to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let config = maas_model::parse_config("test", &files, None).unwrap();
        let brokers = maas_model::placement::parse_brokers(
            "brokers",
            r#"{"shared": [{"name": "b-0", "host": "127.0.0.1", "port": 5674}]}"#,
        )
        .unwrap();
        DesiredInputs {
            config: Arc::new(config),
            brokers,
            // Also the option-made `maas-address/$subctrl`.
            options: EntityOptions {
                subctrl: true,
                ..Default::default()
            },
            mesh: maas_model::mesh_entities(&MeshInputs {
                own: Some("r-1".into()),
                routers: vec![RouterPod {
                    name: "r-0".into(),
                    host: "10.0.0.1".into(),
                    port: 55672,
                    edge_port: None,
                }],
                ..MeshInputs::default()
            }),
        }
    }

    fn all(i: &DesiredInputs) -> Vec<Entity> {
        let mut out = Vec::new();
        i.for_each(|e| out.push(e));
        out
    }

    #[test]
    fn entities_by_key_are_exactly_the_desired_ones_with_those_keys() {
        let i = inputs();
        let every = all(&i);
        assert_eq!(i.entities(None).count(), every.len());
        // Every single key, and one key of each type together (an address with '/' in it included).
        for e in &every {
            let keys = [(e.entity_type, e.name.clone())].into_iter().collect();
            let got: Vec<Entity> = i.entities(Some(keys)).collect();
            assert_eq!(got, vec![e.clone()]);
        }
        let keys: BTreeSet<(EntityType, String)> = every
            .iter()
            .map(|e| (e.entity_type, e.name.clone()))
            .collect();
        let mut got: Vec<Entity> = i.entities(Some(keys)).collect();
        got.sort_by(|a, b| (a.entity_type, &a.name).cmp(&(b.entity_type, &b.name)));
        let mut want = every.clone();
        want.sort_by(|a, b| (a.entity_type, &a.name).cmp(&(b.entity_type, &b.name)));
        assert_eq!(got, want);
        // A key nothing desired has yields nothing (the full walk finds nothing either).
        let keys = [(
            EntityType::AutoLink,
            "maas-autolink/nope/b-0/in".to_string(),
        )]
        .into_iter()
        .collect();
        assert_eq!(i.entities(Some(keys)).count(), 0);
    }
}
