//! The Kubernetes API source (docs/architecture.md §2, §3): address ConfigMaps labelled `type=address-config`, the flavor
//! ConfigMap and the namespace's Pods, each followed by a kube-runtime watcher.
//!
//! [`spawn_kube_config`] publishes the same [`ConfigState`] as file mode: each address ConfigMap is parsed on its
//! own and keeps its last good content when a new one does not parse (errors in `errors`, a log line and a
//! Kubernetes Event `InvalidAddressConfig` on that ConfigMap, once per distinct bad content); all last good
//! address sets are merged into one `Config`. Watch expiry (410 Gone) and API outages are handled by the watcher
//! re-listing with backoff; a re-list replaces the index only when it is complete, and nothing is dropped while
//! the API server is away. [`spawn_kube_pods`] publishes the namespace's pods as [`PodsState`].
//!
//! - [`index`]: the kubert-style per-watcher index ([`Index`]).
//! - [`merge`]: from indexed ConfigMaps to a [`ConfigState`] ([`ConfigMerger`]), pure.
//! - [`pods`]: [`PodInfo`](maas_model::pods::PodInfo) from Pods, [`spawn_kube_pods`].

pub mod index;
pub mod merge;
pub mod pods;

use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Api, Client};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::ConfigState;

pub use index::Index;
pub use merge::{ConfigMerger, Notice, configmap_origin, event_note};
pub use pods::{PodsState, pod_info, spawn_kube_pods};

/// Label selector of address ConfigMaps by default.
pub const DEFAULT_LABEL_SELECTOR: &str = "type=address-config";
/// Name of the flavor ConfigMap by default.
pub const DEFAULT_FLAVOR_CONFIGMAP: &str = "flavor";
/// Reason of the Event posted on a ConfigMap that does not parse.
pub const INVALID_ADDRESS_CONFIG_REASON: &str = "InvalidAddressConfig";
/// Action of that Event.
pub const INVALID_ADDRESS_CONFIG_ACTION: &str = "LoadAddressConfig";
/// How long posting one Event may take before it is abandoned (and logged).
pub const EVENT_POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the Kubernetes API source reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfigOptions {
    /// Namespace of the ConfigMaps.
    pub namespace: String,
    /// Label selector of address ConfigMaps. Default "type=address-config".
    pub label_selector: String,
    /// Name of the flavor ConfigMap (keys `flavor.json` or `json`). Default "flavor".
    pub flavor_configmap: String,
    /// Reporter/controller name for Events, e.g. "maas-config-service".
    pub reporter: String,
}

impl KubeConfigOptions {
    /// The defaults for `namespace`, reporting Events as `reporter`.
    pub fn new(namespace: impl Into<String>, reporter: impl Into<String>) -> Self {
        KubeConfigOptions {
            namespace: namespace.into(),
            label_selector: DEFAULT_LABEL_SELECTOR.to_string(),
            flavor_configmap: DEFAULT_FLAVOR_CONFIGMAP.to_string(),
            reporter: reporter.into(),
        }
    }
}

/// Watch the address and flavor ConfigMaps of `opts.namespace` and publish a [`ConfigState`] whenever the merged
/// configuration or its problems change. The state is `synced` once both the address ConfigMaps and the flavor
/// ConfigMap (missing is fine: no flavors) were listed completely. Must be called inside a tokio runtime; the task
/// ends when every receiver is dropped.
pub fn spawn_kube_config(
    client: Client,
    opts: KubeConfigOptions,
) -> watch::Receiver<Arc<ConfigState>> {
    let (tx, rx) = watch::channel(Arc::new(ConfigState::default()));
    tokio::spawn(run_config(client, opts, tx));
    rx
}

/// Which watcher an event came from.
enum Source {
    Addresses,
    Flavor,
}

async fn run_config(client: Client, opts: KubeConfigOptions, tx: watch::Sender<Arc<ConfigState>>) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &opts.namespace);
    let mut addresses = watcher(
        api.clone(),
        watcher::Config::default().labels(&opts.label_selector),
    )
    .default_backoff()
    .boxed();
    let mut flavor = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={}", opts.flavor_configmap)),
    )
    .default_backoff()
    .boxed();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: opts.reporter.clone(),
            instance: None,
        },
    );
    let mut address_index: Index<ConfigMap> = Index::default();
    let mut flavor_index: Index<ConfigMap> = Index::default();
    let mut merger = ConfigMerger::new(&opts.namespace, &opts.flavor_configmap);
    loop {
        let (source, event) = tokio::select! {
            e = addresses.next() => (Source::Addresses, e),
            e = flavor.next() => (Source::Flavor, e),
            _ = tx.closed() => break,
        };
        let (index, what) = match source {
            Source::Addresses => (&mut address_index, "address ConfigMaps"),
            Source::Flavor => (&mut flavor_index, "flavor ConfigMap"),
        };
        match event {
            Some(Ok(ev)) => {
                if !index.apply(ev, |cm| cm) {
                    continue;
                }
            }
            Some(Err(e)) => {
                log_watch_error(&opts.namespace, what, &e);
                continue;
            }
            None => break,
        }
        if !(address_index.synced() && flavor_index.synced()) {
            continue;
        }
        let (next, notices) = merger.recompute(
            address_index.objects(),
            flavor_index.objects().get(&opts.flavor_configmap),
        );
        for notice in notices {
            post_event(recorder.clone(), notice);
        }
        if **tx.borrow() != next {
            debug!(
                namespace = %opts.namespace,
                generation = next.generation,
                errors = next.errors.len(),
                "configuration state changed"
            );
            tx.send_replace(Arc::new(next));
        }
    }
}

/// Log a watcher error: an expired watch (410 Gone) is routine and re-lists; anything else is the API server being
/// away or refusing, retried with backoff while the last published state stays in force.
pub(crate) fn log_watch_error(namespace: &str, what: &str, e: &watcher::Error) {
    match e {
        watcher::Error::WatchError(status) if status.code == 410 => {
            info!(
                namespace,
                watch = what,
                "watch expired (410 Gone); re-listing"
            )
        }
        _ => warn!(
            namespace, watch = what, error = %e,
            "Kubernetes API watch failed; the last published state stays in force, retrying with backoff"
        ),
    }
}

/// Post a Warning Event `InvalidAddressConfig` on a ConfigMap in the background; failures are logged, never fatal.
fn post_event(recorder: Recorder, notice: Notice) {
    tokio::spawn(async move {
        let event = Event {
            type_: EventType::Warning,
            reason: INVALID_ADDRESS_CONFIG_REASON.to_string(),
            note: Some(event_note(&notice.errors)),
            action: INVALID_ADDRESS_CONFIG_ACTION.to_string(),
            secondary: None,
        };
        let name = notice.regarding.name.clone().unwrap_or_default();
        match tokio::time::timeout(
            EVENT_POST_TIMEOUT,
            recorder.publish(&event, &notice.regarding),
        )
        .await
        {
            Ok(Ok(())) => debug!(configmap = %name, "posted InvalidAddressConfig event"),
            Ok(Err(e)) => {
                warn!(configmap = %name, error = %e, "could not post InvalidAddressConfig event")
            }
            Err(_) => warn!(
                configmap = %name,
                timeout_s = EVENT_POST_TIMEOUT.as_secs(),
                "posting InvalidAddressConfig event timed out"
            ),
        }
    });
}
