//! The desired state of the router, built from the sources: the address directory (kubelet-safe watch), the
//! flavor file and the brokers file. Each input keeps its LAST GOOD value: bad input is reported (log once per
//! change, metric, `/readyz` detail) and never deletes anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeSet;

use maas_model::{
    Address, AddressKind, Brokers, Config, DigestSet, DigestSetBuilder, Entity, EntityOptions,
    EntityType, MeshInputs, RouterPod, entity_digest,
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredInputs {
    pub config: Arc<Config>,
    pub brokers: Brokers,
    pub options: EntityOptions,
    /// The connectors to other router pods (a handful: held, not generated).
    pub mesh: Vec<Entity>,
    /// `--topic-handover`: the broker pods as topics and subscriptions see them
    /// ([`maas_model::placement::topic_route_view`]: a draining pod not yet released keeps its topics). None: the
    /// same as `brokers`.
    pub topic_brokers: Option<Brokers>,
}

impl DesiredInputs {
    /// The broker pods the entities of address `a` are made from: with a topic hand-over, topics and subscriptions
    /// see [`Self::topic_brokers`]; everything else (queues, connectors) the pods as they are.
    fn brokers_for(&self, a: &Address) -> &Brokers {
        match (&self.topic_brokers, a.kind) {
            (Some(view), AddressKind::Topic | AddressKind::Subscription) => view,
            _ => &self.brokers,
        }
    }

    /// Every desired entity, one at a time (mesh connectors first; then what
    /// [`maas_model::for_each_desired_entity`] makes, each address with [`Self::brokers_for`]).
    pub fn for_each(&self, mut f: impl FnMut(Entity)) {
        for e in &self.mesh {
            f(e.clone());
        }
        for e in maas_model::entity::option_entities(&self.options) {
            f(e);
        }
        for e in maas_model::connector_entities(
            &self.config.addresses,
            &self.config.flavors,
            &self.brokers,
            &self.options,
        ) {
            f(e);
        }
        for a in self.config.addresses.iter() {
            maas_model::for_each_entity_of_address(
                a,
                &self.config.flavors,
                self.brokers_for(a),
                &mut f,
            );
        }
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
            maas_model::for_each_entity_of_address(
                a,
                &self.config.flavors,
                self.brokers_for(a),
                |e| {
                    if wanted(&k2, &e) {
                        out.push(e);
                    }
                },
            );
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
                self.brokers_for(a),
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
    spawn_file_sources_with(src, Handover::default(), metrics)
}

/// [`spawn_file_sources`] with a topic hand-over ([`Handover`]).
pub fn spawn_file_sources_with(
    src: FileSources,
    handover: Handover,
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
    Ok(spawn_desired_with(
        config_rx,
        Inputs {
            brokers,
            routers,
            entity_options: src.entity_options,
            mesh: src.mesh,
        },
        handover,
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

/// `--topic-handover` (docs/architecture.md §5): a draining broker pod keeps the linkRoutes of its topics and of
/// their subscriptions until subscription-service RELEASES it (it has moved every durable subscription of those
/// topics to their new pods), or until the pod is gone from the pod list
/// ([`maas_model::placement::topic_route_pod`]). Released pods: the `maas.io/topics-released=true` annotation
/// of broker pods that come from the Kubernetes API or config-service `podsense`, and the pods named by
/// `--handover-file`. Off (the default): a topic's links leave its pod as soon as the pod drains.
#[derive(Default)]
pub struct Handover {
    /// On with `--topic-handover`.
    pub enabled: bool,
    /// `--handover-file`, re-read on change (the last good content stays in force).
    pub file: Option<HandoverFile>,
}

/// The `--handover-file` subscription-service writes (`{"released": ["broker-0"]}`), watched.
pub struct HandoverFile {
    pub path: PathBuf,
    pub rx: watch::Receiver<Arc<FileSnapshot>>,
}

impl Handover {
    /// The hand-over the flags ask for. `brokers_from_file`: the broker pods come from `--brokers-file`, which
    /// carries no release annotation: without `--handover-file` no release could ever reach this agent, so the
    /// hand-over stays off (a warning says so) rather than keep draining pods' topics forever (e.g. the file-mode
    /// overlay of manifests/ keeps the base's TOPIC_HANDOVER). A missing handover file is created empty
    /// (subscription-service replaces it atomically when it releases a pod). One line naming the flag at fault
    /// otherwise.
    pub fn from_args(
        args: &crate::args::HandoverArgs,
        brokers_from_file: bool,
        watch_opts: maas_source::WatchOptions,
    ) -> Result<Handover, String> {
        if !args.topic_handover {
            return Ok(Handover::default());
        }
        let Some(path) = &args.handover_file else {
            if brokers_from_file {
                warn!(
                    "--topic-handover with --brokers-file and no --handover-file: no release of a draining broker \
                     pod can reach this agent, so the topic hand-over is OFF (a topic's links leave its pod as soon \
                     as the pod drains); give --handover-file (the file subscription-service --handover-file \
                     writes) to turn it on"
                );
                return Ok(Handover::default());
            }
            return Ok(Handover {
                enabled: true,
                file: None,
            });
        };
        if !path.exists() {
            // create_new: never truncate a file subscription-service wrote meanwhile.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("--handover-file {}: {e}", path.display())),
            }
        }
        let rx = maas_source::watch_file(path.clone(), watch_opts)
            .map_err(|e| format!("--handover-file: {e}"))?;
        Ok(Handover {
            enabled: true,
            file: Some(HandoverFile {
                path: path.clone(),
                rx,
            }),
        })
    }

    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match &mut self.file {
            Some(f) => f.rx.changed().await,
            None => std::future::pending().await,
        }
    }
}

/// Combine a configuration source (any kind) with the broker and router pods into the desired router state.
pub fn spawn_desired(
    config_rx: watch::Receiver<Arc<ConfigState>>,
    inputs: Inputs,
    metrics: Metrics,
) -> watch::Receiver<Arc<Desired>> {
    spawn_desired_with(config_rx, inputs, Handover::default(), metrics)
}

/// [`spawn_desired`] with a topic hand-over ([`Handover`]).
pub fn spawn_desired_with(
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    inputs: Inputs,
    mut handover: Handover,
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
        topic_handover: handover.enabled,
        ..DesiredState::default()
    };
    let first = state.recompute(&config_rx, &brokers, &routers, &handover, &metrics);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = config_rx.changed() => if r.is_err() { break },
                r = brokers.changed() => if r.is_err() { break },
                r = routers.changed() => if r.is_err() { break },
                r = handover.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
            }
            let prev = tx.borrow().clone();
            let next = state.recompute(&config_rx, &brokers, &routers, &handover, &metrics);
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
    /// `--topic-handover` is on.
    topic_handover: bool,
    /// Broker pods annotated `maas.io/topics-released=true` (pods from the API or `podsense`).
    released_pods: BTreeSet<String>,
    /// The `--handover-file`'s last good content.
    released_file: LastGood<BTreeSet<String>>,
    /// Draining pods that keep their topics (logged when this changes).
    held: BTreeSet<String>,
    config_error_events: u64,
    generation: u64,
    last_hash: String,
    /// The last desired digests, to make the next ones from when only addresses changed (a config-service delta,
    /// or a file edit): only the touched addresses' entities are generated and digested again.
    incremental: crate::incremental::Incremental,
}

impl DesiredState {
    /// With `--topic-handover`: the broker pods as topics see them (draining pods not yet released keep their
    /// topics); None when that is the pods as they are.
    fn topic_view(&mut self, brokers: &Brokers) -> Option<Brokers> {
        if !self.topic_handover {
            return None;
        }
        let mut released = self.released_pods.clone();
        if let Some(file) = self.released_file.good() {
            released.extend(file.iter().cloned());
        }
        let held: BTreeSet<String> = brokers
            .clusters
            .values()
            .flatten()
            .filter(|p| p.draining && !released.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();
        if held != self.held {
            for pod in held.difference(&self.held) {
                info!(%pod, "draining broker pod keeps its topics' links until subscription-service releases it");
            }
            for pod in self.held.difference(&held) {
                info!(%pod, "broker pod released (or gone): its topics' links follow the topics");
            }
            self.held = held.clone();
        }
        (!held.is_empty()).then(|| maas_model::placement::topic_route_view(brokers, &released))
    }

    fn recompute(
        &mut self,
        config_rx: &watch::Receiver<Arc<ConfigState>>,
        brokers_in: &BrokersInput,
        routers_in: &RoutersInput,
        handover: &Handover,
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
                self.released_pods = maas_model::pods::released_from_pods(&pods.pods);
                let key = format!("{b:?}");
                self.brokers.offer(&key, Ok(b));
            }
        }
        if let Some(f) = &handover.file {
            let snap = f.rx.borrow().clone();
            let parsed =
                maas_model::placement::parse_handover(&f.path.display().to_string(), &snap.content)
                    .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>());
            let offer = self.released_file.offer(&snap.hash, parsed);
            if offer.new_errors {
                metrics.config_errors.inc();
                for e in self.released_file.errors() {
                    warn!(error = %e, "invalid handover file; the last good one stays in force");
                }
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
        errors.extend(self.released_file.errors().iter().cloned());
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
        let topic_brokers = self.topic_view(&brokers);
        let inputs = DesiredInputs {
            config: config.clone(),
            brokers,
            options: self.entity_options.clone(),
            mesh,
            topic_brokers,
        };
        let digests = self.incremental.digests(&inputs);
        let inputs = Arc::new(inputs);
        self.incremental.keep(&inputs, &digests);
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
            digests,
            inputs,
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
            topic_brokers: None,
        }
    }

    fn all(i: &DesiredInputs) -> Vec<Entity> {
        let mut out = Vec::new();
        i.for_each(|e| out.push(e));
        out
    }

    #[tokio::test]
    async fn the_handover_flags() {
        let args = |on: bool, file: Option<PathBuf>| crate::args::HandoverArgs {
            topic_handover: on,
            handover_file: file,
        };
        let w = maas_source::WatchOptions::default();
        assert!(
            !Handover::from_args(&args(false, None), true, w)
                .unwrap()
                .enabled
        );
        // Pods from the API or podsense: the annotation is enough.
        let h = Handover::from_args(&args(true, None), false, w).unwrap();
        assert!(h.enabled && h.file.is_none());
        // A brokers file without a handover file: no release could arrive, the hand-over stays off.
        assert!(
            !Handover::from_args(&args(true, None), true, w)
                .unwrap()
                .enabled
        );
        // A missing handover file is created empty (no release yet), one that exists is left as it is.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.json");
        let h = Handover::from_args(&args(true, Some(path.clone())), true, w).unwrap();
        assert!(h.enabled);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::write(&path, r#"{"released": ["b-0"]}"#).unwrap();
        let h = Handover::from_args(&args(true, Some(path.clone())), true, w).unwrap();
        assert_eq!(
            h.file.unwrap().rx.borrow().content,
            r#"{"released": ["b-0"]}"#
        );
        let e = Handover::from_args(
            &args(true, Some(dir.path().join("no/such/h.json"))),
            true,
            w,
        )
        .err()
        .unwrap();
        assert!(e.starts_with("--handover-file"), "{e}");
    }

    /// `--topic-handover`: a draining pod keeps its topics' (and their subscriptions') linkRoutes until released;
    /// queues see it draining all the same.
    #[test]
    fn a_draining_pod_keeps_its_topics_links_until_it_is_released() {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"q": {"store_and_forward": true, "multicast": false, "flavor": "shared"},
                    "t": {"store_and_forward": true, "multicast": true, "flavor": "shared"},
                    "s": {"subscription": true, "topic": "t"}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"shared": {"type": "queue", "shared": true}}"#.to_string(),
            ),
        ]
        .into();
        let config = Arc::new(maas_model::parse_config("test", &files, None).unwrap());
        let brokers = |draining: Option<&str>| {
            let pod = |n: &str, port: u16| serde_json::json!({"name": n, "host": "127.0.0.1", "port": port, "draining": draining == Some(n)});
            let text = serde_json::json!({"shared": [pod("b-0", 1), pod("b-1", 2)]}).to_string();
            maas_model::placement::parse_brokers("b", &text).unwrap()
        };
        let home = maas_model::topic_pod("t", brokers(None).pods("shared"))
            .unwrap()
            .name
            .clone();
        let other = if home == "b-0" { "b-1" } else { "b-0" };
        let drained = brokers(Some(&home));
        let inputs = |topic_brokers: Option<Brokers>| DesiredInputs {
            config: config.clone(),
            brokers: drained.clone(),
            options: EntityOptions::default(),
            mesh: Vec::new(),
            topic_brokers,
        };
        let routes = |i: &DesiredInputs| -> Vec<String> {
            all(i)
                .into_iter()
                .filter(|e| e.entity_type == EntityType::LinkRoute)
                .map(|e| e.name)
                .collect()
        };
        let links = |i: &DesiredInputs| -> Vec<String> {
            all(i)
                .into_iter()
                .filter(|e| e.entity_type == EntityType::AutoLink)
                .map(|e| e.name)
                .collect()
        };
        // Without a hand-over the links leave at once.
        let off = inputs(None);
        assert_eq!(
            routes(&off),
            [
                format!("maas-linkroute/s/{other}/out"),
                format!("maas-linkroute/t/{other}/in"),
                format!("maas-linkroute/t/{other}/out"),
            ]
        );
        // With it, the draining pod not released keeps them (both directions); the queue's links are the same.
        let mut state = DesiredState {
            topic_handover: true,
            ..DesiredState::default()
        };
        let view = state.topic_view(&drained);
        assert!(view.is_some());
        let held = inputs(view);
        assert_eq!(
            routes(&held),
            [
                format!("maas-linkroute/s/{home}/out"),
                format!("maas-linkroute/t/{home}/in"),
                format!("maas-linkroute/t/{home}/out"),
            ]
        );
        assert_eq!(links(&held), links(&off));
        assert!(links(&held).contains(&format!("maas-autolink/q/{home}/in")));
        assert!(!links(&held).contains(&format!("maas-autolink/q/{home}/out")));
        // The lookups by key agree with the full walk under the view.
        let every = all(&held);
        for e in &every {
            let keys = [(e.entity_type, e.name.clone())].into_iter().collect();
            assert_eq!(
                held.entities(Some(keys)).collect::<Vec<_>>(),
                vec![e.clone()]
            );
        }
        assert_eq!(held.entities(None).count(), every.len());
        // Released (annotation or handover file): the links follow the topic.
        state.released_pods = [home.clone()].into();
        assert!(state.topic_view(&drained).is_none());
        state.released_pods.clear();
        state
            .released_file
            .offer("h", Ok([home.clone()].into_iter().collect()));
        assert!(state.topic_view(&drained).is_none());
        // Nothing draining: no view.
        let mut fresh = DesiredState {
            topic_handover: true,
            ..DesiredState::default()
        };
        assert!(fresh.topic_view(&brokers(None)).is_none());
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
