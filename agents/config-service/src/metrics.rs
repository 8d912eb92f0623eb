//! The `/metrics` of config-service (prefix `maas_config_service`): subscribers and snapshots by source, delta
//! subscribers, deltas and resyncs of incremental mode, subscribers detached for want of credit, snapshot sends in flight (now and peak), snapshot build time, source
//! errors, configuration state, and the AMQP server's connection counters
//! (read from [`ServerStats`] at scrape time).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use maas_amqp::server::ServerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Metric name prefix.
pub const PREFIX: &str = "maas_config_service";

/// A `source` label (`v1/addresses`, `maas`, `v1/flavors`, `podsense`, or for errors `config` / `pods`).
type SourceLabel = [(&'static str, &'static str); 1];

fn label(source: &'static str) -> SourceLabel {
    [("source", source)]
}

fn build_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The metric handles; clones share them.
#[derive(Debug, Clone)]
pub struct Metrics {
    subscribers: Family<SourceLabel, Gauge>,
    snapshots_sent: Family<SourceLabel, Counter>,
    delta_subscribers: Family<SourceLabel, Gauge>,
    deltas_sent: Family<SourceLabel, Counter>,
    delta_resyncs: Family<SourceLabel, Counter>,
    delta_build_seconds: Family<SourceLabel, Histogram, fn() -> Histogram>,
    build_seconds: Family<SourceLabel, Histogram, fn() -> Histogram>,
    source_errors: Family<SourceLabel, Counter>,
    config_errors_active: Gauge,
    addresses: Gauge,
    config_generation: Gauge,
    configmaps: Family<StateLabel, Gauge>,
    subscribers_detached: Family<SourceLabel, Counter>,
    sends_in_flight: Gauge,
    sends_in_flight_max: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them (and the server counters) under [`PREFIX`].
    pub fn register(registry: &mut Registry, server: Arc<ServerStats>) -> Metrics {
        let m = Metrics {
            subscribers: Family::default(),
            snapshots_sent: Family::default(),
            delta_subscribers: Family::default(),
            deltas_sent: Family::default(),
            delta_resyncs: Family::default(),
            delta_build_seconds: Family::new_with_constructor(build_histogram as fn() -> Histogram),
            build_seconds: Family::new_with_constructor(build_histogram as fn() -> Histogram),
            source_errors: Family::default(),
            config_errors_active: Gauge::default(),
            addresses: Gauge::default(),
            config_generation: Gauge::default(),
            configmaps: Family::default(),
            subscribers_detached: Family::default(),
            sends_in_flight: Gauge::default(),
            sends_in_flight_max: Gauge::default(),
        };
        // The delta counters of the sources with incremental mode exist from the start (0), not from their first
        // increment: a dashboard sees "no resync yet", not "no such series".
        for source in crate::snapshot::Source::ALL {
            if source.delta_format().is_some() {
                drop(m.deltas_sent.get_or_create(&label(source.address())));
                drop(m.delta_resyncs.get_or_create(&label(source.address())));
            }
        }
        registry.register(
            "subscribers",
            "Receiving links attached now, by source",
            m.subscribers.clone(),
        );
        registry.register(
            "snapshots_sent",
            "Full snapshots sent to subscribers (plain and delta links), by source",
            m.snapshots_sent.clone(),
        );
        registry.register(
            "delta_subscribers",
            "Receiving links attached now in incremental mode (source capability maas:delta), by source",
            m.delta_subscribers.clone(),
        );
        registry.register(
            "deltas_sent",
            "Delta messages (maas.io/v1/AddressDelta, one change or several merged) sent to delta links, by source",
            m.deltas_sent.clone(),
        );
        registry.register(
            "delta_resyncs",
            "Full snapshots sent to a delta link after its first one, because the delta history no longer reached \
             back to its generation (or a merged delta would have been larger), by source",
            m.delta_resyncs.clone(),
        );
        registry.register(
            "delta_build_seconds",
            "Time to compute and encode the delta of one change, by source",
            m.delta_build_seconds.clone(),
        );
        registry.register(
            "snapshot_build_seconds",
            "Time to build and encode one snapshot, by source",
            m.build_seconds.clone(),
        );
        registry.register(
            "source_errors",
            "Distinct bad inputs seen (the last good content stays served), by source",
            m.source_errors.clone(),
        );
        registry.register(
            "config_errors_active",
            "Problems in the current configuration input (0 = valid; the last good one is served otherwise)",
            m.config_errors_active.clone(),
        );
        registry.register(
            "addresses",
            "Addresses in the served configuration",
            m.addresses.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the served configuration (bumps on every change)",
            m.config_generation.clone(),
        );
        registry.register(
            "configmaps",
            "Address configuration inputs by state: ConfigMaps in --kube mode, the directory in file mode (an invalid \
             one keeps its last good content in force)",
            m.configmaps.clone(),
        );
        registry.register(
            "subscribers_detached",
            "Subscriber links closed with amqp:link:detach-forced because a snapshot send did not complete within \
             --send-timeout (no credit granted), by source",
            m.subscribers_detached.clone(),
        );
        registry.register(
            "sends_in_flight",
            "Snapshot sends in progress now (at most --max-concurrent-sends; they share the one encoded \
             message)",
            m.sends_in_flight.clone(),
        );
        registry.register(
            "sends_in_flight_max",
            "Most snapshot sends in progress at once since the start",
            m.sends_in_flight_max.clone(),
        );
        registry.register_collector(Box::new(ServerCollector(server)));
        m
    }

    /// Counts a subscriber until the returned guard is dropped.
    pub fn subscriber(&self, source: &'static str) -> SubscriberGuard {
        let gauge = self.subscribers.get_or_create(&label(source)).clone();
        gauge.inc();
        SubscriberGuard(gauge)
    }

    /// Subscribers attached now to `source`.
    pub fn subscribers(&self, source: &'static str) -> i64 {
        self.subscribers.get_or_create(&label(source)).get()
    }

    /// Counts one snapshot sent on `source`.
    pub fn snapshot_sent(&self, source: &'static str) {
        self.snapshots_sent.get_or_create(&label(source)).inc();
    }

    /// Snapshots sent on `source` so far.
    pub fn snapshots_sent(&self, source: &'static str) -> u64 {
        self.snapshots_sent.get_or_create(&label(source)).get()
    }

    /// Counts a delta subscriber of `source` until the returned guard is dropped.
    pub fn delta_subscriber(&self, source: &'static str) -> SubscriberGuard {
        let gauge = self.delta_subscribers.get_or_create(&label(source)).clone();
        gauge.inc();
        SubscriberGuard(gauge)
    }

    /// Delta subscribers attached now to `source`.
    pub fn delta_subscribers(&self, source: &'static str) -> i64 {
        self.delta_subscribers.get_or_create(&label(source)).get()
    }

    /// Counts one delta message sent on `source`.
    pub fn delta_sent(&self, source: &'static str) {
        self.deltas_sent.get_or_create(&label(source)).inc();
    }

    /// Delta messages sent on `source` so far.
    pub fn deltas_sent(&self, source: &'static str) -> u64 {
        self.deltas_sent.get_or_create(&label(source)).get()
    }

    /// Counts one full snapshot sent to a delta link that had one already.
    pub fn delta_resync(&self, source: &'static str) {
        self.delta_resyncs.get_or_create(&label(source)).inc();
    }

    /// Full snapshots sent to delta links that had one already, on `source`.
    pub fn delta_resyncs(&self, source: &'static str) -> u64 {
        self.delta_resyncs.get_or_create(&label(source)).get()
    }

    /// Records how long computing and encoding one delta of `source` took.
    pub fn delta_build_time(&self, source: &'static str, seconds: f64) {
        self.delta_build_seconds
            .get_or_create(&label(source))
            .observe(seconds);
    }

    /// Counts a snapshot send in progress until the returned guard is dropped (and records the peak).
    pub fn send_started(&self) -> SendGuard {
        let now = self.sends_in_flight.inc().saturating_add(1);
        self.sends_in_flight_max
            .inner()
            .fetch_max(now, Ordering::Relaxed);
        SendGuard(self.sends_in_flight.clone())
    }

    /// Snapshot sends in progress now.
    pub fn sends_in_flight(&self) -> i64 {
        self.sends_in_flight.get()
    }

    /// Most snapshot sends in progress at once since the start.
    pub fn sends_in_flight_max(&self) -> i64 {
        self.sends_in_flight_max.get()
    }

    /// Counts one subscriber of `source` detached because a send did not complete in time.
    pub fn subscriber_detached(&self, source: &'static str) {
        self.subscribers_detached
            .get_or_create(&label(source))
            .inc();
    }

    /// Subscribers of `source` detached so far because a send did not complete in time.
    pub fn subscribers_detached(&self, source: &'static str) -> u64 {
        self.subscribers_detached
            .get_or_create(&label(source))
            .get()
    }

    /// Records how long building one snapshot of `source` took.
    pub fn build_time(&self, source: &'static str, seconds: f64) {
        self.build_seconds
            .get_or_create(&label(source))
            .observe(seconds);
    }

    /// Adds `n` distinct bad inputs of `source` (`config` or `pods`).
    pub fn source_errors(&self, source: &'static str, n: u64) {
        self.source_errors.get_or_create(&label(source)).inc_by(n);
    }

    /// Sets the ConfigMaps-by-state gauge (in file mode: the directory).
    pub fn inputs(&self, valid: usize, invalid: usize) {
        for (state, n) in [("valid", valid), ("invalid", invalid)] {
            self.configmaps
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets the configuration state gauges.
    pub fn config_state(&self, errors_active: usize, addresses: usize, generation: u64) {
        self.config_errors_active
            .set(i64::try_from(errors_active).unwrap_or(i64::MAX));
        self.addresses
            .set(i64::try_from(addresses).unwrap_or(i64::MAX));
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }
}

/// Label of the ConfigMaps-by-state gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `valid` or `invalid`.
    pub state: &'static str,
}

/// Decrements the subscribers gauge of its source when dropped.
#[derive(Debug)]
pub struct SubscriberGuard(Gauge);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Decrements the sends-in-flight gauge when dropped.
#[derive(Debug)]
pub struct SendGuard(Gauge);

impl Drop for SendGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads the AMQP server's counters at scrape time.
#[derive(Debug)]
struct ServerCollector(Arc<ServerStats>);

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let gauges = [
            (
                "connections",
                "AMQP connections open now",
                s.open_connections.load(Ordering::Relaxed),
            ),
            (
                "links",
                "AMQP links open now",
                s.open_links.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let me = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(me)?;
        }
        let counters = [
            (
                "connections_accepted",
                "AMQP connections accepted",
                s.accepted_connections.load(Ordering::Relaxed),
            ),
            (
                "connections_refused",
                "AMQP connections refused by --max-connections",
                s.refused_connections.load(Ordering::Relaxed),
            ),
            (
                "links_refused",
                "AMQP links refused by --max-links-per-connection",
                s.refused_links.load(Ordering::Relaxed),
            ),
            (
                "sasl_failures",
                "AMQP connections that failed SASL authentication",
                s.sasl_failures.load(Ordering::Relaxed),
            ),
            (
                "handshake_failures",
                "AMQP connections whose TLS/AMQP handshake failed or timed out",
                s.handshake_failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            let me = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(me)?;
        }
        Ok(())
    }
}
