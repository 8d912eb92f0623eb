//! Prometheus metrics of the agent (prefix `maas_router_agent_`), served on `/metrics`.

use std::sync::Arc;

use maas_amqp::request::ReplyStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// CREATE, DELETE, READ, QUERY.
    pub operation: &'static str,
    /// Entity type short name (address, autoLink, linkRoute, connector).
    pub r#type: &'static str,
    /// ok, or the error's metric label (bad_request, timeout, disconnected, ...).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every metric the agent exports. Cheap to clone (all handles are Arc inside).
#[derive(Clone)]
pub struct Metrics {
    pub operations: Family<OpLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub addresses: Family<KindLabels, Gauge>,
    pub desired_entities: Gauge,
    pub router_connected: Gauge,
    pub config_errors: Counter,
    pub config_error_active: Gauge,
    pub desired_generation: Gauge,
    pub applied_generation: Gauge,
    pub reconcile_failures: Counter,
    pub drift_repairs: Counter,
    /// 1 while the router holds the latest desired generation (readiness only needs it configured once).
    pub converged: Gauge,
    /// Replies of the router the management client could not use (shared by every connection).
    pub replies: ReplyStats,
}

/// Exports [`ReplyStats`] at scrape time.
#[derive(Debug)]
struct ReplyCollector(ReplyStats);

impl Collector for ReplyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "management_replies_undecodable",
                "Router replies that could not be decoded (their request fails at once when the reply's \
                 correlation-id can still be read; else it is logged with a summary of its bytes)",
                self.0.undecodable(),
            ),
            (
                "management_replies_unmatched",
                "Router replies that matched no waiting request (no or unknown correlation-id, or the request \
                 had timed out)",
                self.0.unmatched(),
            ),
            (
                "management_timeouts",
                "Management requests that got no reply within their timeout",
                self.0.timeouts(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Create the metrics and the registry that serves them.
    pub fn new() -> (Metrics, Arc<Registry>) {
        let m = Metrics {
            operations: Family::default(),
            reconcile_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            addresses: Family::default(),
            desired_entities: Gauge::default(),
            router_connected: Gauge::default(),
            config_errors: Counter::default(),
            config_error_active: Gauge::default(),
            desired_generation: Gauge::default(),
            applied_generation: Gauge::default(),
            reconcile_failures: Counter::default(),
            drift_repairs: Counter::default(),
            converged: Gauge::default(),
            replies: ReplyStats::default(),
        };
        let mut r = Registry::with_prefix("maas_router_agent");
        r.register(
            "management_operations",
            "Management operations sent to the router, by operation, entity type and result",
            m.operations.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time to bring the router to a new desired generation (diff, operations, verification)",
            m.reconcile_duration.clone(),
        );
        r.register(
            "addresses",
            "Addresses in the desired set, by kind",
            m.addresses.clone(),
        );
        r.register(
            "desired_entities",
            "Router entities the desired set maps to",
            m.desired_entities.clone(),
        );
        r.register(
            "router_connected",
            "1 while the management connection to the router is up",
            m.router_connected.clone(),
        );
        r.register(
            "config_errors",
            "Invalid address/flavor/broker configurations seen (once per change); the last good set stays in force",
            m.config_errors.clone(),
        );
        r.register(
            "config_error_active",
            "1 while the current configuration has errors (the last good set is in force)",
            m.config_error_active.clone(),
        );
        r.register(
            "desired_generation",
            "Generation of the latest valid desired set",
            m.desired_generation.clone(),
        );
        r.register(
            "applied_generation",
            "Generation the router is known to hold",
            m.applied_generation.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconcile attempts that did not reach the desired state (retried with backoff)",
            m.reconcile_failures.clone(),
        );
        r.register(
            "drift_repairs",
            "Background drift checks that found and repaired differences",
            m.drift_repairs.clone(),
        );
        r.register(
            "converged",
            "1 while the router holds the latest desired generation; 0 while a newer one is not applied (the \
             router stays ready once configured with a valid generation)",
            m.converged.clone(),
        );
        r.register_collector(Box::new(ReplyCollector(m.replies.clone())));
        (m, Arc::new(r))
    }

    pub fn op(&self, operation: &'static str, type_: &'static str, result: &'static str) {
        self.operations
            .get_or_create(&OpLabels {
                operation,
                r#type: type_,
                result,
            })
            .inc();
    }
}
