//! Address configurations from a config-service subscription (docs/architecture.md §3): `v1/addresses` and `v1/flavors`
//! make the [`ConfigState`], and optionally `podsense` (with a label selector) the pods. Here every message is a FULL
//! snapshot (incremental mode: [`crate::sources::spawn_incremental_config_subscription`]; both share one loop);
//! after a reconnect the first snapshots simply replace what was held, so an unchanged configuration changes
//! nothing downstream. While the config-service is away the last good state stays published.

use std::collections::BTreeMap;
use std::sync::Arc;

use maas_amqp::options::{Backoff, ConnectOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ConfigState;
use crate::kube::PodsState;

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

/// Start subscribing (full snapshots of `v1/addresses`; [`crate::sources::spawn_incremental_config_subscription`]
/// asks for incremental mode). The configuration receiver, and the pods receiver when a selector was given.
pub fn spawn_config_subscription(
    sub: ConfigSubscription,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Arc<ConfigState>>,
    Option<watch::Receiver<Arc<PodsState>>>,
) {
    crate::sources::spawn_config_subscription_in(sub, false, shutdown)
}
