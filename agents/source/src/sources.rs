//! A binary's sources chosen from its flags, the same way in every binary: the address configuration (exactly one
//! of a mounted directory, a config-service subscription, the Kubernetes API) and the broker pods (a brokers file,
//! or the pods of the namespace from the API).
//!
//! A config-service subscription made here is in incremental mode ([`spawn_incremental_config_subscription`],
//! docs/architecture.md §3 "Incremental mode"): `v1/addresses` sends a full snapshot on attach, then only what
//! changed; each change is parsed on its own and applied to the set held, instead of a whole snapshot parsed per
//! change. A config-service without incremental mode ignores the capability and sends full snapshots, which are
//! taken as such.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::Client;
use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::subscriber::{
    SnapshotMessage, SubscriberEvent, Subscription, spawn_subscriber_with_handle,
};
use maas_model::delta::{AddressDelta, DeltaFormat};
use maas_model::{AddressSet, Config, FlavorSet, PodInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::subscription::{ADDRESSES_SOURCE, FLAVORS_SOURCE, PODSENSE_SOURCE};
use crate::{
    ConfigState, ConfigSubscription, FileConfig, FileSnapshot, KubeConfigOptions, LastGood,
    PodsState, WatchOptions,
};

/// Where the address configuration comes from.
#[derive(Clone)]
pub enum AddressSource {
    /// `--addresses-dir` (a mounted ConfigMap), with `--flavors-file` or the directory's `flavor.json`.
    Dir {
        dir: PathBuf,
        flavors_file: Option<PathBuf>,
    },
    /// `--config-service-url`.
    ConfigService(ConnectOptions),
    /// `--kube`: the ConfigMaps of `namespace`; `reporter` names the binary in Events.
    Kube {
        client: Client,
        namespace: String,
        reporter: String,
    },
}

impl AddressSource {
    /// The source the flags name: `--addresses-dir` (with `--flavors-file`), else `--config-service-url`, else
    /// the API when a client is given (`--kube`); one line naming the flag at fault otherwise.
    pub fn from_flags(
        addresses_dir: Option<&Path>,
        flavors_file: Option<&Path>,
        config_service_url: Option<&str>,
        client: Option<&Client>,
        namespace: &str,
        reporter: &str,
    ) -> Result<AddressSource, String> {
        if let Some(dir) = addresses_dir {
            Ok(AddressSource::Dir {
                dir: dir.to_path_buf(),
                flavors_file: flavors_file.map(Path::to_path_buf),
            })
        } else if let Some(url) = config_service_url {
            ConnectOptions::from_url(url)
                .map(AddressSource::ConfigService)
                .map_err(|e| format!("--config-service-url {url:?}: {e}"))
        } else if let Some(client) = client {
            Ok(AddressSource::Kube {
                client: client.clone(),
                namespace: namespace.to_string(),
                reporter: reporter.to_string(),
            })
        } else {
            Err(
                "no address source: give --addresses-dir DIR, --config-service-url URL or --kube"
                    .into(),
            )
        }
    }
}

/// Starts watching the address configuration; one line naming the flag at fault otherwise.
pub fn spawn_address_source(
    src: AddressSource,
    watch_opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<ConfigState>>, String> {
    match src {
        AddressSource::Dir { dir, flavors_file } => {
            if !dir.is_dir() {
                return Err(format!(
                    "--addresses-dir {}: not a directory",
                    dir.display()
                ));
            }
            crate::spawn_file_config(FileConfig {
                addresses_dir: dir,
                flavors_file,
                watch: watch_opts,
            })
            .map_err(|e| e.to_string())
        }
        AddressSource::ConfigService(connect) => Ok(spawn_incremental_config_subscription(
            ConfigSubscription {
                connect,
                backoff: Backoff::default(),
                pods_selector: None,
            },
            shutdown,
        )
        .0),
        AddressSource::Kube {
            client,
            namespace,
            reporter,
        } => Ok(crate::spawn_kube_config(
            client,
            KubeConfigOptions::new(namespace, reporter),
        )),
    }
}

/// Where the broker pods come from.
pub enum BrokerSource {
    /// `--brokers-file`, re-read on change (the last good content stays in force).
    File {
        path: String,
        rx: watch::Receiver<Arc<FileSnapshot>>,
    },
    /// Pods from the Kubernetes API.
    Pods(watch::Receiver<Arc<PodsState>>),
}

impl BrokerSource {
    /// `--brokers-file` if given, else the pods of `namespace` from the API; one line naming what is missing
    /// otherwise.
    pub fn spawn(
        brokers_file: Option<&Path>,
        client: Option<&Client>,
        namespace: &str,
        watch_opts: WatchOptions,
    ) -> Result<BrokerSource, String> {
        match (brokers_file, client) {
            (Some(path), _) => Ok(BrokerSource::File {
                path: path.display().to_string(),
                rx: crate::watch_file(path.to_path_buf(), watch_opts)
                    .map_err(|e| format!("--brokers-file: {e}"))?,
            }),
            (None, Some(client)) => Ok(BrokerSource::Pods(crate::spawn_kube_pods(
                client.clone(),
                namespace.to_string(),
            ))),
            (None, None) => Err("no broker source: give --brokers-file FILE or --kube".into()),
        }
    }

    /// Resolves when the source changed (Err once it is gone).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            BrokerSource::File { rx, .. } => rx.changed().await,
            BrokerSource::Pods(rx) => rx.changed().await,
        }
    }
}

/// The source flags every controller binary takes (storage-controller, subscription-service).
#[derive(Debug, Clone, Copy)]
pub struct SourceFlags<'a> {
    /// `--kube`: use the Kubernetes API (in-cluster configuration or KUBECONFIG).
    pub kube: bool,
    pub addresses_dir: Option<&'a Path>,
    pub flavors_file: Option<&'a Path>,
    pub config_service_url: Option<&'a str>,
    pub brokers_file: Option<&'a Path>,
    pub namespace: &'a str,
    /// The binary's name in Events.
    pub reporter: &'a str,
}

/// What [`spawn_sources`] started.
pub struct Sources {
    /// The API client, with `--kube`.
    pub client: Option<Client>,
    pub config: watch::Receiver<Arc<ConfigState>>,
    pub brokers: BrokerSource,
}

/// Connects to the API (with `--kube`) and starts watching the address configuration and the broker pods the
/// flags name; one line naming the flag at fault otherwise.
pub async fn spawn_sources(
    flags: SourceFlags<'_>,
    watch_opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<Sources, String> {
    let client = if flags.kube {
        Some(Client::try_default().await.map_err(|e| {
            format!("--kube: no usable Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
        })?)
    } else {
        None
    };
    let source = AddressSource::from_flags(
        flags.addresses_dir,
        flags.flavors_file,
        flags.config_service_url,
        client.as_ref(),
        flags.namespace,
        flags.reporter,
    )?;
    let config = spawn_address_source(source, watch_opts, shutdown)?;
    let brokers = BrokerSource::spawn(
        flags.brokers_file,
        client.as_ref(),
        flags.namespace,
        watch_opts,
    )?;
    Ok(Sources {
        client,
        config,
        brokers,
    })
}

/// Like [`crate::spawn_config_subscription`] (the same receivers, the same [`ConfigState`]), with `v1/addresses` in
/// incremental mode: a full snapshot on attach, then one delta per change, parsed alone and applied to the set held
/// ([`IncrementalConfig`]). A delta that cannot be applied asks the subscriber for a full snapshot again.
pub fn spawn_incremental_config_subscription(
    sub: ConfigSubscription,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Arc<ConfigState>>,
    Option<watch::Receiver<Arc<PodsState>>>,
) {
    spawn_config_subscription_in(sub, true, shutdown)
}

/// A config-service subscription, `v1/addresses` in incremental mode or not (full snapshots only: what
/// [`crate::spawn_config_subscription`] asks for). Either way the messages go through [`IncrementalConfig`], which
/// takes a message without a `follows` property as a full snapshot.
pub(crate) fn spawn_config_subscription_in(
    sub: ConfigSubscription,
    incremental: bool,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Arc<ConfigState>>,
    Option<watch::Receiver<Arc<PodsState>>>,
) {
    let addresses = Subscription::new(ADDRESSES_SOURCE);
    let mut subscriptions = vec![
        if incremental {
            addresses.incremental()
        } else {
            addresses.into()
        },
        Subscription::new(FLAVORS_SOURCE).into(),
    ];
    if let Some(selector) = &sub.pods_selector {
        subscriptions.push(
            Subscription {
                address: PODSENSE_SOURCE.into(),
                filter: selector.clone(),
            }
            .into(),
        );
    }
    let origin = format!("config-service {}", sub.connect);
    let (mut events, handle) =
        spawn_subscriber_with_handle(sub.connect, subscriptions, sub.backoff, shutdown);
    let (config_tx, config_rx) = watch::channel(Arc::new(ConfigState::default()));
    let (pods_tx, pods_rx) = watch::channel(Arc::new(PodsState::default()));
    let with_pods = sub.pods_selector.is_some();
    tokio::spawn(async move {
        let mut state = IncrementalConfig::new(origin);
        while let Some(event) = events.recv().await {
            match event {
                SubscriberEvent::Message { index: 0, message } => {
                    if state.addresses_message(&message) == Step::Resync {
                        handle.resync(0);
                    }
                }
                SubscriberEvent::Message { index: 1, message } => state.flavors_message(&message),
                SubscriberEvent::Message { message, .. } => {
                    match serde_json::from_str::<Vec<PodInfo>>(&message.body) {
                        Ok(mut pods) => {
                            pods.sort();
                            let next = PodsState { pods, synced: true };
                            if **pods_tx.borrow() != next {
                                let _ = pods_tx.send(Arc::new(next));
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "podsense snapshot is not a pod list; keeping the last one")
                        }
                    }
                    continue;
                }
                SubscriberEvent::Connected | SubscriberEvent::Disconnected { .. } => continue,
            }
            if let Some(next) = state.state()
                && **config_tx.borrow() != next
            {
                let _ = config_tx.send(Arc::new(next));
            }
        }
    });
    (config_rx, with_pods.then_some(pods_rx))
}

/// What the subscriber should do after a message of `v1/addresses` was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the message was applied (or reported as bad, the last good set staying in force).
    Continue,
    /// Ask for a full snapshot: a delta does not apply to the set held.
    Resync,
}

/// The address configuration of an incremental config-service subscription, without any I/O: full snapshots and
/// deltas of `v1/addresses`, full snapshots of `v1/flavors`, and the [`ConfigState`] they make. Bad input never
/// replaces the good set in force; each distinct bad input is counted once (as in [`crate::LastGood`]).
#[derive(Debug)]
pub struct IncrementalConfig {
    origin: String,
    /// The configuration in force. Its addresses are the last good full snapshot with the deltas applied since.
    current: Arc<Config>,
    /// A valid address set was taken in once.
    addresses_good: bool,
    /// A message of each source arrived (until both did, nothing is published).
    seen_addresses: bool,
    seen_flavors: bool,
    flavors: LastGood<FlavorSet>,
    /// The wire generation `current.addresses` is at; None when the last address input was not taken in (or the
    /// source does not number its snapshots): a delta then cannot apply.
    wire_generation: Option<u64>,
    /// A full snapshot was asked for and has not arrived: deltas are ignored until it does.
    awaiting_snapshot: bool,
    /// Problems of the latest address input (the good set in force meanwhile), and the hash of that input.
    address_errors: Vec<String>,
    address_errors_key: Option<String>,
    generation: u64,
    error_events: u64,
    /// Full snapshots and deltas of `v1/addresses` taken in, and resyncs asked (for tests and logs).
    pub snapshots: u64,
    pub deltas: u64,
    pub resyncs: u64,
}

impl IncrementalConfig {
    /// Nothing received yet; `origin` names the subscription in error messages.
    pub fn new(origin: String) -> Self {
        IncrementalConfig {
            origin,
            current: Arc::new(Config::default()),
            addresses_good: false,
            seen_addresses: false,
            seen_flavors: false,
            flavors: LastGood::new(),
            wire_generation: None,
            awaiting_snapshot: false,
            address_errors: Vec::new(),
            address_errors_key: None,
            generation: 0,
            error_events: 0,
            snapshots: 0,
            deltas: 0,
            resyncs: 0,
        }
    }

    fn addresses_origin(&self) -> String {
        format!("{} {ADDRESSES_SOURCE}", self.origin)
    }

    /// Takes in a message of `v1/addresses`: a full snapshot replaces the set held; a delta that follows the
    /// generation held is parsed alone and applied. [`Step::Resync`] when a delta cannot be applied (it does not
    /// follow, it is invalid, or the set held did not come from a valid snapshot).
    pub fn addresses_message(&mut self, m: &SnapshotMessage) -> Step {
        self.seen_addresses = true;
        let Some(follows) = m.follows else {
            self.snapshots += 1;
            self.awaiting_snapshot = false;
            match AddressSet::from_address_list_json(&self.addresses_origin(), &m.body) {
                Ok(set) => {
                    self.clear_address_errors();
                    self.wire_generation = m.generation;
                    if !self.addresses_good || set != self.current.addresses {
                        self.replace_addresses(set);
                    }
                }
                Err(errors) => {
                    self.wire_generation = None;
                    self.address_errors(&m.body, errors.iter().map(ToString::to_string).collect());
                }
            }
            return Step::Continue;
        };
        if self.awaiting_snapshot {
            return Step::Continue;
        }
        if self.wire_generation != Some(follows) || !self.addresses_good {
            debug!(
                follows,
                held = ?self.wire_generation,
                "address delta does not apply to the set held; asking for a full snapshot"
            );
            return self.resync();
        }
        let delta = AddressDelta::from_json(&self.addresses_origin(), DeltaFormat::Typed, &m.body)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())
            .and_then(|d| {
                if Some(d.generation) == m.generation && d.follows == follows {
                    Ok(d)
                } else {
                    Err(vec![format!(
                        "{}: delta body says generation {} follows {}, its properties {:?} follows {follows}",
                        self.addresses_origin(),
                        d.generation,
                        d.follows,
                        m.generation
                    )])
                }
            });
        match delta {
            Ok(delta) => {
                self.deltas += 1;
                self.clear_address_errors();
                self.wire_generation = Some(delta.generation);
                let changes = delta
                    .upserted
                    .iter()
                    .any(|a| self.current.addresses.get(&a.address) != Some(a))
                    || delta
                        .removed
                        .iter()
                        .any(|name| self.current.addresses.get(name).is_some());
                if changes {
                    let mut next = Config::clone(&self.current);
                    delta.apply(&mut next.addresses);
                    self.current = Arc::new(next);
                    self.bump();
                }
                Step::Continue
            }
            Err(errors) => {
                // Whatever this delta was meant to change is unknown: the set held no longer matches the source.
                self.wire_generation = None;
                self.address_errors(&m.body, errors);
                self.resync()
            }
        }
    }

    /// Takes in a full snapshot of `v1/flavors`.
    pub fn flavors_message(&mut self, m: &SnapshotMessage) {
        self.seen_flavors = true;
        let key = crate::snapshot::hex_sha256(m.body.as_bytes());
        let parsed = FlavorSet::from_json(&format!("{} {FLAVORS_SOURCE}", self.origin), &m.body)
            .map_err(|e| e.iter().map(ToString::to_string).collect());
        let offer = self.flavors.offer(&key, parsed);
        if offer.new_errors {
            self.error_events += 1;
            for e in self.flavors.errors() {
                warn!(error = %e, "invalid flavor snapshot from the config service; the last good one stays in force");
            }
        }
        if let Some(f) = self.flavors.good()
            && **f != self.current.flavors
        {
            self.current = Arc::new(Config {
                addresses: self.current.addresses.clone(),
                flavors: f.as_ref().clone(),
            });
            self.bump();
        }
    }

    /// The state to publish once both sources have sent something.
    pub fn state(&self) -> Option<ConfigState> {
        if !(self.seen_addresses && self.seen_flavors) {
            return None;
        }
        let mut errors = self.flavors.errors().to_vec();
        errors.extend(self.address_errors.iter().cloned());
        let good = self.addresses_good && self.flavors.good().is_some();
        Some(ConfigState {
            config: good.then(|| self.current.clone()),
            inputs_valid: usize::from(errors.is_empty()),
            inputs_invalid: usize::from(!errors.is_empty()),
            errors,
            generation: self.generation,
            error_events: self.error_events,
            synced: true,
        })
    }

    fn replace_addresses(&mut self, set: AddressSet) {
        let first = !self.addresses_good;
        self.current = Arc::new(Config {
            addresses: set,
            flavors: self.current.flavors.clone(),
        });
        self.addresses_good = true;
        self.bump();
        if first {
            info!(
                addresses = self.current.addresses.len(),
                "address configuration loaded from the config service (incremental mode)"
            );
        }
    }

    /// A new configuration is in force: the generation counts configurations published with both an address set
    /// and a flavor set (the first one is generation 1, as with full snapshots).
    fn bump(&mut self) {
        if self.addresses_good && self.flavors.good().is_some() {
            self.generation += 1;
        }
    }

    fn resync(&mut self) -> Step {
        self.awaiting_snapshot = true;
        self.resyncs += 1;
        Step::Resync
    }

    fn clear_address_errors(&mut self) {
        self.address_errors.clear();
        self.address_errors_key = None;
    }

    /// Records the problems of an address input (`body`); logged and counted once per distinct input.
    fn address_errors(&mut self, body: &str, errors: Vec<String>) {
        let key = crate::snapshot::hex_sha256(body.as_bytes());
        if self.address_errors_key.as_deref() != Some(key.as_str()) {
            self.error_events += 1;
            for e in &errors {
                warn!(error = %e, "invalid address input from the config service; the last good set stays in force");
            }
        }
        self.address_errors = errors;
        self.address_errors_key = Some(key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use maas_model::{Address, AddressKind, Flavor};
    use std::collections::BTreeMap;

    fn address(name: &str, kind: AddressKind) -> Address {
        Address {
            address: name.into(),
            kind,
            flavor: kind.needs_broker().then(|| "small".to_string()),
            topic: None,
        }
    }

    fn set(items: &[(&str, AddressKind)]) -> AddressSet {
        let mut s = AddressSet::default();
        for (n, k) in items {
            s.insert(address(n, *k));
        }
        s
    }

    fn flavors() -> SnapshotMessage {
        let mut f = FlavorSet::default();
        f.insert(Flavor {
            name: "small".into(),
            kind: None,
            description: None,
            template_name: None,
            template_parameters: BTreeMap::new(),
            shared: true,
            extra: BTreeMap::new(),
        });
        message(f.to_json(), None, None)
    }

    fn message(body: String, generation: Option<u64>, follows: Option<u64>) -> SnapshotMessage {
        SnapshotMessage {
            subject: None,
            content_type: None,
            body,
            generation,
            follows,
        }
    }

    fn snapshot(s: &AddressSet, generation: u64) -> SnapshotMessage {
        message(s.to_address_list_json(), Some(generation), None)
    }

    fn delta(old: &AddressSet, new: &AddressSet, follows: u64, generation: u64) -> SnapshotMessage {
        let d = AddressDelta::between(old, new, follows, generation);
        message(
            d.to_json(DeltaFormat::Typed),
            Some(generation),
            Some(follows),
        )
    }

    fn held(c: &IncrementalConfig) -> AddressSet {
        c.state().unwrap().config.unwrap().addresses.clone()
    }

    #[test]
    fn deltas_applied_to_a_snapshot_give_the_set_a_full_snapshot_gives() {
        let mut c = IncrementalConfig::new("test".into());
        let s1 = set(&[("a", AddressKind::Anycast), ("q", AddressKind::Queue)]);
        assert_eq!(c.addresses_message(&snapshot(&s1, 1)), Step::Continue);
        assert!(c.state().is_none(), "nothing before the flavors");
        c.flavors_message(&flavors());
        let first = c.state().unwrap();
        assert_eq!(first.config.as_ref().unwrap().addresses, s1);
        let s2 = set(&[
            ("a", AddressKind::Broadcast),
            ("q", AddressKind::Queue),
            ("t", AddressKind::Topic),
        ]);
        let s3 = set(&[("a", AddressKind::Broadcast), ("t", AddressKind::Topic)]);
        assert_eq!(c.addresses_message(&delta(&s1, &s2, 1, 2)), Step::Continue);
        assert_eq!(held(&c), s2);
        assert_eq!(c.addresses_message(&delta(&s2, &s3, 2, 3)), Step::Continue);
        assert_eq!(held(&c), s3);
        let after = c.state().unwrap();
        assert!(after.generation > first.generation);
        assert!(after.errors.is_empty());
        assert_eq!((c.snapshots, c.deltas, c.resyncs), (1, 2, 0));
        // The same set as a full snapshot (a resync): nothing changes downstream.
        assert_eq!(c.addresses_message(&snapshot(&s3, 3)), Step::Continue);
        assert_eq!(c.state().unwrap(), after);
        // An empty delta moves the wire generation only.
        assert_eq!(c.addresses_message(&delta(&s3, &s3, 3, 4)), Step::Continue);
        assert_eq!(c.state().unwrap(), after);
        assert_eq!(c.addresses_message(&delta(&s3, &s1, 4, 5)), Step::Continue);
        assert_eq!(held(&c), s1);
    }

    #[test]
    fn a_delta_that_does_not_follow_asks_for_a_snapshot_once() {
        let mut c = IncrementalConfig::new("test".into());
        c.flavors_message(&flavors());
        let s1 = set(&[("a", AddressKind::Anycast)]);
        let s2 = set(&[("b", AddressKind::Anycast)]);
        c.addresses_message(&snapshot(&s1, 1));
        assert_eq!(c.addresses_message(&delta(&s1, &s2, 5, 6)), Step::Resync);
        // Until the snapshot arrives, later deltas are ignored (no second resync).
        assert_eq!(c.addresses_message(&delta(&s2, &s1, 6, 7)), Step::Continue);
        assert_eq!(held(&c), s1);
        assert_eq!(c.addresses_message(&snapshot(&s2, 7)), Step::Continue);
        assert_eq!(held(&c), s2);
        assert_eq!(c.addresses_message(&delta(&s2, &s1, 7, 8)), Step::Continue);
        assert_eq!(held(&c), s1);
        assert_eq!(c.resyncs, 1);
    }

    #[test]
    fn a_bad_delta_keeps_the_last_good_set_reports_once_and_asks_for_a_snapshot() {
        let mut c = IncrementalConfig::new("test".into());
        c.flavors_message(&flavors());
        let s1 = set(&[("a", AddressKind::Anycast)]);
        c.addresses_message(&snapshot(&s1, 1));
        let bad = message(
            r#"{"generation":2,"follows":1,"upserted":[{"spec":{"address":"x","type":"nonsense"}}],"removed":[]}"#
                .into(),
            Some(2),
            Some(1),
        );
        assert_eq!(c.addresses_message(&bad), Step::Resync);
        let st = c.state().unwrap();
        assert_eq!(st.config.unwrap().addresses, s1, "last good kept");
        assert!(st.errors[0].contains("nonsense"), "{:?}", st.errors);
        assert_eq!((st.error_events, st.inputs_invalid), (1, 1));
        // The snapshot that follows is good: the errors clear.
        let s2 = set(&[("b", AddressKind::Anycast)]);
        c.addresses_message(&snapshot(&s2, 2));
        let st = c.state().unwrap();
        assert!(st.errors.is_empty());
        assert_eq!(st.config.unwrap().addresses, s2);
        // A bad snapshot: last good kept, and the next delta asks for a snapshot again.
        let bad = message("{not json".into(), Some(3), None);
        assert_eq!(c.addresses_message(&bad), Step::Continue);
        assert_eq!(c.addresses_message(&bad), Step::Continue);
        let st = c.state().unwrap();
        assert_eq!(st.error_events, 2, "the same bad input counted once");
        assert_eq!(st.config.unwrap().addresses, s2);
        assert_eq!(c.addresses_message(&delta(&s2, &s1, 3, 4)), Step::Resync);
    }

    #[test]
    fn snapshots_without_generations_are_taken_as_full_snapshots() {
        // A config-service without incremental mode ignores the capability.
        let mut c = IncrementalConfig::new("test".into());
        c.flavors_message(&flavors());
        let s1 = set(&[("a", AddressKind::Anycast)]);
        let s2 = set(&[("b", AddressKind::Queue)]);
        c.addresses_message(&message(s1.to_address_list_json(), None, None));
        assert_eq!(held(&c), s1);
        c.addresses_message(&message(s2.to_address_list_json(), None, None));
        assert_eq!(held(&c), s2);
    }
}
