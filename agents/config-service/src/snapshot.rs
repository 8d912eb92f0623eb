//! What subscribers get: the four sources, the encoded snapshot messages, and the publishers that turn source
//! states into the LATEST snapshot per source.
//!
//! Per source a `tokio::sync::watch` holds only the latest encoded snapshot (`Arc`): a slow subscriber skips
//! intermediate ones but always ends on the latest, and a stuck one holds at most one old `Arc`, so memory
//! never grows with the number of changes. A new snapshot is published only when its encoded body differs
//! from the previous one. `None` means "not synced yet": subscribers wait.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use fe2o3_amqp::Sendable;
use fe2o3_amqp::types::messaging::{AmqpValue, Message, Properties};
use fe2o3_amqp::types::primitives::Symbol;
use maas_model::Config;
use maas_model::pods::{PodInfo, selector_matches};
use maas_source::ConfigState;
use maas_source::watch::{WatchOptions, watch_file};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::metrics::Metrics;

/// Content type of every snapshot.
pub const CONTENT_TYPE: &str = "application/json";

/// A source address a subscriber can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `v1/addresses`: the typed `AddressList`.
    Addresses,
    /// `maas`: the same set in the 2016 format.
    Maas,
    /// `v1/flavors`: the flavor set.
    Flavors,
    /// `podsense`: pods matching the link's label selector.
    Podsense,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 4] = [
        Source::Addresses,
        Source::Maas,
        Source::Flavors,
        Source::Podsense,
    ];

    /// The link source address.
    pub fn address(self) -> &'static str {
        match self {
            Source::Addresses => "v1/addresses",
            Source::Maas => "maas",
            Source::Flavors => "v1/flavors",
            Source::Podsense => "podsense",
        }
    }

    /// The message subject of its snapshots.
    pub fn subject(self) -> &'static str {
        match self {
            Source::Addresses => "enmasse.io/v1/AddressList",
            Source::Maas => "maas.io/v1/AddressConfig",
            Source::Flavors => "maas.io/v1/FlavorSet",
            Source::Podsense => "maas.io/v1/PodList",
        }
    }

    /// The source named by a link's source address.
    pub fn from_address(address: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.address() == address)
    }
}

/// The latest snapshot of one source (`None` until synced).
pub type Latest = watch::Receiver<Option<Arc<Snapshot>>>;

/// One encoded snapshot, shared by every subscriber of its source.
#[derive(Debug)]
pub struct Snapshot {
    /// The JSON text (the AMQP-value string body).
    pub body: Arc<str>,
    /// The message, pre-settled, sent by reference to every subscriber.
    pub sendable: Sendable<AmqpValue<String>>,
}

impl Snapshot {
    /// Wraps `body` into the message of `source`.
    pub fn new(source: Source, body: String) -> Snapshot {
        let shared: Arc<str> = Arc::from(body.as_str());
        let message = Message::builder()
            .properties(
                Properties::builder()
                    .subject(source.subject())
                    .content_type(Symbol::from(CONTENT_TYPE))
                    .build(),
            )
            .value(body)
            .build();
        Snapshot {
            body: shared,
            sendable: Sendable::builder().message(message).settled(true).build(),
        }
    }
}

/// The latest snapshot of each source (`None` until synced).
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// `v1/addresses`.
    pub addresses: watch::Receiver<Option<Arc<Snapshot>>>,
    /// `maas`.
    pub maas: watch::Receiver<Option<Arc<Snapshot>>>,
    /// `v1/flavors`.
    pub flavors: watch::Receiver<Option<Arc<Snapshot>>>,
    /// `podsense` pods (each subscriber filters and encodes its own view); `None` without a pod source.
    pub pods: Option<watch::Receiver<Option<Arc<Vec<PodInfo>>>>>,
}

impl Snapshots {
    /// The latest snapshot channel of a static source (`podsense` has none).
    pub fn of(&self, source: Source) -> Option<&watch::Receiver<Option<Arc<Snapshot>>>> {
        match source {
            Source::Addresses => Some(&self.addresses),
            Source::Maas => Some(&self.maas),
            Source::Flavors => Some(&self.flavors),
            Source::Podsense => None,
        }
    }
}

pub use maas_source::PodsState;

/// The `podsense` body for a selector: the matching pods as a JSON list.
pub fn podsense_body(pods: &[PodInfo], selector: &BTreeMap<String, String>) -> String {
    let matching: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| selector_matches(selector, &p.labels))
        .collect();
    serde_json::to_string(&matching).unwrap_or_else(|_| "[]".to_string())
}

fn build(source: Source, config: &Config, metrics: &Metrics) -> Arc<Snapshot> {
    let started = Instant::now();
    let body = match source {
        Source::Addresses => config.addresses.to_address_list_json(),
        Source::Maas => config.addresses.to_2016_json(),
        Source::Flavors => config.flavors.to_json(),
        Source::Podsense => "[]".to_string(),
    };
    let snapshot = Arc::new(Snapshot::new(source, body));
    metrics.build_time(source.address(), started.elapsed().as_secs_f64());
    snapshot
}

/// Publishes the configuration snapshots: on every new [`ConfigState`] with a configuration, rebuilds the three
/// static sources and replaces those whose body changed. Also keeps the config metrics and reports readiness
/// through `on_synced`. Ends when `stop` fires or the source ends.
pub fn spawn_config_publisher(
    mut config: watch::Receiver<Arc<ConfigState>>,
    metrics: Metrics,
    stop: CancellationToken,
    on_state: impl Fn(&ConfigState) + Send + 'static,
) -> (Latest, Latest, Latest) {
    let (addresses_tx, addresses_rx) = watch::channel(None::<Arc<Snapshot>>);
    let (maas_tx, maas_rx) = watch::channel(None::<Arc<Snapshot>>);
    let (flavors_tx, flavors_rx) = watch::channel(None::<Arc<Snapshot>>);
    tokio::spawn(async move {
        let txs = [
            (Source::Addresses, addresses_tx),
            (Source::Maas, maas_tx),
            (Source::Flavors, flavors_tx),
        ];
        let mut seen_error_events = 0u64;
        loop {
            let state = config.borrow_and_update().clone();
            if state.error_events > seen_error_events {
                metrics.source_errors("config", state.error_events - seen_error_events);
                seen_error_events = state.error_events;
            }
            let addresses = state.config.as_ref().map_or(0, |c| c.addresses.len());
            metrics.config_state(state.errors.len(), addresses, state.generation);
            metrics.inputs(state.inputs_valid, state.inputs_invalid);
            if let Some(cfg) = &state.config {
                for (source, tx) in &txs {
                    let next = build(*source, cfg, &metrics);
                    tx.send_if_modified(|current| {
                        let same = current.as_ref().is_some_and(|c| c.body == next.body);
                        if !same {
                            *current = Some(Arc::clone(&next));
                        }
                        !same
                    });
                }
            }
            on_state(&state);
            tokio::select! {
                () = stop.cancelled() => break,
                r = config.changed() => if r.is_err() { break },
            }
        }
    });
    (addresses_rx, maas_rx, flavors_rx)
}

/// Publishes the pods of a [`PodsState`] channel once synced (an unchanged list is not republished).
pub fn spawn_pods_publisher(
    mut pods: watch::Receiver<Arc<PodsState>>,
    stop: CancellationToken,
) -> watch::Receiver<Option<Arc<Vec<PodInfo>>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let state = pods.borrow_and_update().clone();
            if state.synced {
                tx.send_if_modified(|current: &mut Option<Arc<Vec<PodInfo>>>| {
                    let same = current.as_deref() == Some(&state.pods);
                    if !same {
                        *current = Some(Arc::new(state.pods.clone()));
                    }
                    !same
                });
            }
            tokio::select! {
                () = stop.cancelled() => break,
                r = pods.changed() => if r.is_err() { break },
            }
        }
    });
    rx
}

/// File-mode pods: watches `path` (a JSON list of [`PodInfo`]) kubelet-safely. A file that does not parse keeps
/// the last good list (counted in `source_errors{source="pods"}` and logged once per distinct content).
pub fn spawn_pods_file(
    path: PathBuf,
    opts: WatchOptions,
    metrics: Metrics,
) -> Result<watch::Receiver<Arc<PodsState>>, Error> {
    let mut file = watch_file(path.clone(), opts).map_err(|e| Error::Source(e.to_string()))?;
    let parse = move |text: &str| -> Result<Vec<PodInfo>, String> {
        let mut pods: Vec<PodInfo> = serde_json::from_str(text)
            .map_err(|e| format!("{}: not a pod list: {e}", path.display()))?;
        pods.sort();
        Ok(pods)
    };
    let first = file.borrow_and_update().clone();
    let mut state = PodsState::default();
    match parse(&first.content) {
        Ok(pods) => {
            state = PodsState { pods, synced: true };
        }
        Err(e) => {
            metrics.source_errors("pods", 1);
            warn!(error = %e, "pods file is invalid; podsense waits for a valid one");
        }
    }
    let (tx, rx) = watch::channel(Arc::new(state));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => break,
                r = file.changed() => if r.is_err() { break },
            }
            let snap = file.borrow_and_update().clone();
            match parse(&snap.content) {
                Ok(pods) => {
                    let next = PodsState { pods, synced: true };
                    if **tx.borrow() != next {
                        info!(pods = next.pods.len(), "pods file loaded");
                        if tx.send(Arc::new(next)).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    // The watch publishes only changed content, so this is once per distinct bad input.
                    metrics.source_errors("pods", 1);
                    warn!(error = %e, "pods file is invalid; the last good pod list stays served");
                }
            }
        }
    });
    Ok(rx)
}
