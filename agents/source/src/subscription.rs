//! Address configurations from a config-service subscription (docs/architecture.md §3): `v1/addresses` and `v1/flavors`
//! make the [`ConfigState`], and optionally `podsense` (with a label selector) the pods. Every message is a FULL
//! snapshot; after a reconnect the first snapshots simply replace what was held, so an unchanged configuration
//! changes nothing downstream. While the config-service is away the last good state stays published.

use std::collections::BTreeMap;
use std::sync::Arc;

use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::subscriber::{SnapshotMessage, SubscriberEvent, Subscription, spawn_subscriber};
use maas_model::{AddressSet, Config, FlavorSet, PodInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::kube::PodsState;
use crate::{ConfigState, LastGood};

/// Source address of the typed address list.
pub const ADDRESSES_SOURCE: &str = "v1/addresses";
/// Source address of the flavor set.
pub const FLAVORS_SOURCE: &str = "v1/flavors";
/// Source address of the pod lists.
pub const PODSENSE_SOURCE: &str = "podsense";

/// What to subscribe to.
#[derive(Debug, Clone)]
pub struct ConfigSubscription {
    pub connect: ConnectOptions,
    pub backoff: Backoff,
    /// Also subscribe to `podsense` with this label selector (e.g. broker pods).
    pub pods_selector: Option<BTreeMap<String, String>>,
}

/// Start subscribing. The configuration receiver, and the pods receiver when a selector was given.
pub fn spawn_config_subscription(
    sub: ConfigSubscription,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Arc<ConfigState>>,
    Option<watch::Receiver<Arc<PodsState>>>,
) {
    let mut subscriptions = vec![
        Subscription::new(ADDRESSES_SOURCE),
        Subscription::new(FLAVORS_SOURCE),
    ];
    if let Some(selector) = &sub.pods_selector {
        subscriptions.push(Subscription {
            address: PODSENSE_SOURCE.into(),
            filter: selector.clone(),
        });
    }
    let origin = format!("config-service {}", sub.connect);
    let mut events = spawn_subscriber(sub.connect, subscriptions, sub.backoff, shutdown);
    let (config_tx, config_rx) = watch::channel(Arc::new(ConfigState::default()));
    let (pods_tx, pods_rx) = watch::channel(Arc::new(PodsState::default()));
    let with_pods = sub.pods_selector.is_some();
    tokio::spawn(async move {
        let mut state = SubscriptionState::new(origin);
        while let Some(event) = events.recv().await {
            match event {
                SubscriberEvent::Message { index: 0, message } => state.addresses = Some(message),
                SubscriberEvent::Message { index: 1, message } => state.flavors = Some(message),
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
            if let Some(next) = state.recompute()
                && **config_tx.borrow() != next
            {
                let _ = config_tx.send(Arc::new(next));
            }
        }
    });
    (config_rx, with_pods.then_some(pods_rx))
}

struct SubscriptionState {
    origin: String,
    addresses: Option<SnapshotMessage>,
    flavors: Option<SnapshotMessage>,
    config: LastGood<Config>,
    error_events: u64,
}

impl SubscriptionState {
    fn new(origin: String) -> Self {
        SubscriptionState {
            origin,
            addresses: None,
            flavors: None,
            config: LastGood::new(),
            error_events: 0,
        }
    }

    /// The state once both an address list and a flavor set have arrived.
    fn recompute(&mut self) -> Option<ConfigState> {
        let (Some(a), Some(f)) = (&self.addresses, &self.flavors) else {
            return None;
        };
        let key = crate::snapshot::hex_sha256(format!("{}\u{0}{}", a.body, f.body).as_bytes());
        let mut errors = Vec::new();
        let addresses = AddressSet::from_address_list_json(
            &format!("{} {ADDRESSES_SOURCE}", self.origin),
            &a.body,
        )
        .map_err(|e| errors.extend(e.iter().map(ToString::to_string)))
        .ok();
        let flavors = FlavorSet::from_json(&format!("{} {FLAVORS_SOURCE}", self.origin), &f.body)
            .map_err(|e| errors.extend(e.iter().map(ToString::to_string)))
            .ok();
        let parsed = match (addresses, flavors) {
            (Some(addresses), Some(flavors)) if errors.is_empty() => {
                Ok(Config { addresses, flavors })
            }
            _ => Err(errors),
        };
        let offer = self.config.offer(&key, parsed);
        if offer.new_errors {
            self.error_events += 1;
            for e in self.config.errors() {
                warn!(error = %e, "invalid snapshot from the config service; the last good one stays in force");
            }
        }
        Some(ConfigState {
            config: self.config.good().cloned(),
            errors: self.config.errors().to_vec(),
            generation: self.config.generation(),
            error_events: self.error_events,
            synced: true,
            inputs_valid: usize::from(self.config.errors().is_empty()),
            inputs_invalid: usize::from(!self.config.errors().is_empty()),
        })
    }
}
