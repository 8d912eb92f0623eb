//! Prometheus metrics of the storage-controller (prefix `maas_storage_controller_`), served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::broker::{BrokerError, Done};

/// Labels of broker operations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// createAddress, createQueue, destroyQueue, deleteAddress, getMessageCount, connect.
    pub operation: String,
    /// ok (changed), unchanged (already there / already gone / read), or the error's metric label.
    pub result: String,
}

/// Labels of Kubernetes API calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// apply, delete, annotate, list, get.
    pub operation: String,
    /// StatefulSet, Service, Pod, ConfigMap.
    pub kind: String,
    /// ok, or the error's metric label.
    pub result: String,
}

/// Labels of per-cluster metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The cluster name.
    pub cluster: String,
}

/// Labels of the queue gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// ready, holding-messages, pending.
    pub state: String,
}

/// Labels of the drain-wait gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// What a drain waits for: one of [`crate::controller::DrainWait::LABELS`].
    pub reason: String,
}

/// Every metric the controller exports. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub broker_operations: Family<OpLabels, Counter>,
    pub api_operations: Family<ApiLabels, Counter>,
    pub queues: Family<StateLabels, Gauge>,
    pub clusters: Gauge,
    pub cluster_errors: Family<ClusterLabels, Counter>,
    pub clusters_failing: Gauge,
    pub pods_provisioned: Gauge,
    pub drains_in_progress: Gauge,
    pub drains_waiting: Family<ReasonLabels, Gauge>,
    pub brokers_unreachable: Gauge,
    pub config_errors: Counter,
    pub passes: Counter,
}

impl Metrics {
    /// Create the metrics and the registry that serves them.
    pub fn new() -> (Metrics, Arc<Registry>) {
        let m = Metrics {
            broker_operations: Family::default(),
            api_operations: Family::default(),
            queues: Family::default(),
            clusters: Gauge::default(),
            cluster_errors: Family::default(),
            clusters_failing: Gauge::default(),
            pods_provisioned: Gauge::default(),
            drains_in_progress: Gauge::default(),
            drains_waiting: Family::default(),
            brokers_unreachable: Gauge::default(),
            config_errors: Counter::default(),
            passes: Counter::default(),
        };
        let mut r = Registry::with_prefix("maas_storage_controller");
        r.register(
            "broker_operations",
            "Artemis management operations, by operation and result",
            m.broker_operations.clone(),
        );
        r.register(
            "api_operations",
            "Kubernetes API calls, by operation, kind and result",
            m.api_operations.clone(),
        );
        r.register(
            "queues",
            "Queue/topic addresses on broker pods by state: ready, holding-messages (to be removed, not empty), pending",
            m.queues.clone(),
        );
        r.register(
            "clusters",
            "Broker clusters the addresses need",
            m.clusters.clone(),
        );
        r.register(
            "cluster_errors",
            "Cluster passes that failed (a Kubernetes API error), by cluster; the other clusters go on, the failed one is retried",
            m.cluster_errors.clone(),
        );
        r.register(
            "clusters_failing",
            "Broker clusters whose last pass failed",
            m.clusters_failing.clone(),
        );
        r.register(
            "pods_provisioned",
            "Broker pods holding every address/queue they should (in Kubernetes mode annotated maas.io/provisioned)",
            m.pods_provisioned.clone(),
        );
        r.register(
            "drains_in_progress",
            "Broker pods being drained before a scale-down or cluster removal",
            m.drains_in_progress.clone(),
        );
        r.register(
            "drains_waiting",
            "Broker pods being drained, by what their drain waits for: not-listed, marking, not-ready, topic-release \
             (subscription-service has not released the pod: --await-topic-release), grace, messages, unreachable",
            m.drains_waiting.clone(),
        );
        r.register(
            "brokers_unreachable",
            "Broker pods that could not be provisioned in the last pass",
            m.brokers_unreachable.clone(),
        );
        r.register(
            "config_errors",
            "Invalid configurations seen (once per change); the last good one stays in force",
            m.config_errors.clone(),
        );
        r.register("passes", "Reconcile passes run", m.passes.clone());
        (m, Arc::new(r))
    }

    /// Count one broker operation by its outcome.
    pub fn broker_op(&self, operation: &str, result: &Result<Done, BrokerError>) {
        let result = match result {
            Ok(Done::Changed) => "ok",
            Ok(Done::Unchanged) => "unchanged",
            Err(e) => e.label,
        };
        self.broker_result(operation, result);
    }

    /// Count one broker operation by its result label.
    pub fn broker_result(&self, operation: &str, result: &str) {
        self.broker_operations
            .get_or_create(&OpLabels {
                operation: operation.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Count one Kubernetes API call.
    pub fn api_op(&self, operation: &str, kind: &str, result: &str) {
        self.api_operations
            .get_or_create(&ApiLabels {
                operation: operation.to_string(),
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Count one failed cluster pass.
    pub fn cluster_error(&self, cluster: &str) {
        self.cluster_errors
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    /// Set the drain-wait gauges from the reasons of the pods being drained (every reason is set, 0 when none).
    pub fn set_drain_waits<'a>(&self, reasons: impl Iterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<&str, i64> =
            crate::controller::DrainWait::LABELS
                .iter()
                .map(|l| (*l, 0))
                .collect();
        for r in reasons {
            *counts.entry(r).or_default() += 1;
        }
        for (reason, n) in counts {
            self.drains_waiting
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .set(n);
        }
    }

    /// Set the queue gauges.
    pub fn set_queues(&self, ready: usize, holding: usize, pending: usize) {
        for (state, n) in [
            ("ready", ready),
            ("holding-messages", holding),
            ("pending", pending),
        ] {
            self.queues
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
