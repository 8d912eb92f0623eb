//! Prometheus metrics of the subscription-service (prefix `maas_subscription_service_`), served on `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of broker management operations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// listQueues, createQueue, destroyQueue, getMessageCount, connect.
    pub operation: String,
    /// ok, unchanged (already there / already gone), or the error's label (timeout, failed, disconnected, ...).
    pub result: String,
}

/// Labels of the subscription gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// in-place, moving, failed, stranded (its topic has no pod that is not draining), waiting (copied to its
    /// topic's pod; the old queue kept until the router-agents moved the links, then swept).
    pub state: String,
}

/// Labels of moves and `$subctrl` requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok, failed, abandoned (shutdown during the move) for moves and sweeps.
    pub result: String,
}

/// Labels of the groups of client subscription queues not merged.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// consumers (several queues of the group have consumers), no-ids (no consumer and no queue ids: which is
    /// newest?), ambiguous (several known router ids fit the queue's name).
    pub reason: String,
}

/// Labels of `$subctrl` requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// subscribe, unsubscribe, list, close, unknown.
    pub request: String,
    /// accepted, or the rejection's condition (not-found, precondition-failed, internal-error).
    pub result: String,
}

/// Every metric the service exports. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub subscriptions: Family<StateLabels, Gauge>,
    pub moves: Family<ResultLabels, Counter>,
    pub messages_moved: Counter,
    pub move_duration: Histogram,
    pub broker_operations: Family<OpLabels, Counter>,
    pub brokers_unreachable: Gauge,
    pub config_errors: Counter,
    pub passes: Counter,
    pub subctrl_requests: Family<RequestLabels, Counter>,
    pub subctrl_connected: Gauge,
    pub sweeps: Family<ResultLabels, Counter>,
    pub releases: Counter,
    pub released_pods: Gauge,
    pub merges: Family<ResultLabels, Counter>,
    pub unmerged: Family<ReasonLabels, Gauge>,
    pub router_ids: Gauge,
}

impl Metrics {
    /// Create the metrics and the registry that serves them.
    pub fn new() -> (Metrics, Arc<Registry>) {
        let m = Metrics {
            subscriptions: Family::default(),
            moves: Family::default(),
            messages_moved: Counter::default(),
            move_duration: Histogram::new([
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
            broker_operations: Family::default(),
            brokers_unreachable: Gauge::default(),
            config_errors: Counter::default(),
            passes: Counter::default(),
            subctrl_requests: Family::default(),
            subctrl_connected: Gauge::default(),
            sweeps: Family::default(),
            releases: Counter::default(),
            released_pods: Gauge::default(),
            merges: Family::default(),
            unmerged: Family::default(),
            router_ids: Gauge::default(),
        };
        let mut r = Registry::with_prefix("maas_subscription_service");
        r.register(
            "subscriptions",
            "Durable subscription queues seen in the last pass, by state: in-place (on their topic's pod), moving, failed (a move did not finish), stranded (every pod of the topic's cluster drains), waiting (copied to the topic's pod; the old queue is kept until the router-agents moved the links, then swept)",
            m.subscriptions.clone(),
        );
        r.register(
            "moves",
            "Queue moves (copies: queue on the topic's pod, messages moved; the old queue kept), by result",
            m.moves.clone(),
        );
        r.register(
            "sweeps",
            "Sweeps of old subscription queues once the links moved (what arrived meanwhile moved, then the old queue deleted), by result",
            m.sweeps.clone(),
        );
        r.register(
            "merges",
            "Merges of a client's durable subscription queues made through different routers (one source queue emptied into the queue of the same subscription on the topic's pod, then deleted), by result",
            m.merges.clone(),
        );
        r.register(
            "unmerged_subscriptions",
            "Client subscription queues left unmerged in the last pass, by reason: consumers (several queues of one subscription have consumers), no-ids (none has and the broker gave no queue ids), ambiguous (several known router ids fit the queue name)",
            m.unmerged.clone(),
        );
        r.register(
            "router_ids",
            "Router ids (router pod names) known: the prefixes by which client subscription queues made through different routers are recognised and merged; 0 = no merges",
            m.router_ids.clone(),
        );
        r.register(
            "releases",
            "Draining broker pods released (every durable subscription of their topics on the topics' new pods)",
            m.releases.clone(),
        );
        r.register(
            "released_pods",
            "Draining broker pods released and still listed",
            m.released_pods.clone(),
        );
        r.register(
            "messages_moved",
            "Messages accepted by the new pod and then settled on the old one",
            m.messages_moved.clone(),
        );
        r.register(
            "move_duration_seconds",
            "Duration of one queue move (queue, messages, old queue deleted)",
            m.move_duration.clone(),
        );
        r.register(
            "broker_operations",
            "Artemis management operations, by operation and result",
            m.broker_operations.clone(),
        );
        r.register(
            "brokers_unreachable",
            "Broker pods whose queues could not be listed in the last pass",
            m.brokers_unreachable.clone(),
        );
        r.register(
            "config_errors",
            "Invalid configurations seen (once per change); the last good one stays in force",
            m.config_errors.clone(),
        );
        r.register("passes", "Passes run", m.passes.clone());
        r.register(
            "subctrl_requests",
            "$subctrl requests, by request and result",
            m.subctrl_requests.clone(),
        );
        r.register(
            "subctrl_connected",
            "1 while the $subctrl receiver is attached to the router",
            m.subctrl_connected.clone(),
        );
        (m, Arc::new(r))
    }

    /// Count one broker operation by its result label.
    pub fn broker_op(&self, operation: &str, result: &str) {
        self.broker_operations
            .get_or_create(&OpLabels {
                operation: operation.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Count one finished move.
    pub fn move_done(&self, result: &str, took: Duration) {
        self.moves
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.move_duration.observe(took.as_secs_f64());
    }

    /// Count one finished sweep.
    pub fn sweep_done(&self, result: &str) {
        self.sweeps
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Count one finished merge.
    pub fn merge_done(&self, result: &str) {
        self.merges
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Set the unmerged gauge from the reasons of this pass (every reason is set, 0 when absent).
    pub fn set_unmerged<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<&str, i64> =
            [("consumers", 0), ("no-ids", 0), ("ambiguous", 0)].into();
        for r in reasons {
            *counts.entry(r).or_default() += 1;
        }
        for (reason, n) in counts {
            self.unmerged
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .set(n);
        }
    }

    /// Count one `$subctrl` request.
    pub fn request(&self, request: &str, result: &str) {
        self.subctrl_requests
            .get_or_create(&RequestLabels {
                request: request.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Set the subscription gauges.
    pub fn set_subscriptions(
        &self,
        in_place: usize,
        moving: usize,
        failed: usize,
        stranded: usize,
        waiting: usize,
    ) {
        for (state, n) in [
            ("in-place", in_place),
            ("moving", moving),
            ("failed", failed),
            ("stranded", stranded),
            ("waiting", waiting),
        ] {
            self.subscriptions
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
