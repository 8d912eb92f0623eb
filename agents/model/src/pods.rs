//! Pods as config-service's `podsense` reports them (docs/architecture.md §3), label selectors, and the broker pods of each
//! cluster derived from them (docs/architecture.md §4: pods labelled `app.kubernetes.io/component=broker` and
//! `maas.io/cluster=<cluster>`, ready).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BrokerPod, Brokers};

/// Label of broker pods naming their component.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Value of [`COMPONENT_LABEL`] on broker pods.
pub const BROKER_COMPONENT: &str = "broker";
/// Label naming the broker cluster a pod belongs to.
pub const CLUSTER_LABEL: &str = "maas.io/cluster";
/// Annotation marking a broker pod as draining (only the `in` links stay).
pub const DRAINING_ANNOTATION: &str = "maas.io/draining";

/// One pod: the body of a `podsense` snapshot is a list of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    /// Pod IP (empty while not assigned).
    pub host: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// The pod's Ready condition.
    pub ready: bool,
    /// container name -> port name -> port number.
    #[serde(default)]
    pub ports: BTreeMap<String, BTreeMap<String, u16>>,
    /// Labels (used for selection; kept in snapshots so subscribers can group pods).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations maas reads (e.g. [`DRAINING_ANNOTATION`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// True when every `key=value` of the selector is among the labels (an empty selector matches everything).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Broker pods per cluster from a pod list: pods labelled as brokers with a cluster label, ready, with an IP and an
/// AMQP port (a port named `amqp`, else the first port of the first container that has one). Sorted by name.
pub fn brokers_from_pods(pods: &[PodInfo]) -> Brokers {
    let mut clusters: BTreeMap<String, Vec<BrokerPod>> = BTreeMap::new();
    for p in pods {
        if p.labels.get(COMPONENT_LABEL).map(String::as_str) != Some(BROKER_COMPONENT)
            || !p.ready
            || p.host.is_empty()
        {
            continue;
        }
        let Some(cluster) = p.labels.get(CLUSTER_LABEL) else {
            continue;
        };
        let named = p
            .ports
            .values()
            .find_map(|ports| ports.get("amqp").copied());
        let Some(port) = named.or_else(|| {
            p.ports
                .values()
                .find_map(|ports| ports.values().next().copied())
        }) else {
            continue;
        };
        clusters
            .entry(cluster.clone())
            .or_default()
            .push(BrokerPod {
                name: p.name.clone(),
                host: p.host.clone(),
                port,
                draining: p.annotations.get(DRAINING_ANNOTATION).map(String::as_str)
                    == Some("true"),
            });
    }
    for pods in clusters.values_mut() {
        pods.sort();
    }
    Brokers { clusters }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cluster: Option<&str>, ready: bool) -> PodInfo {
        let mut labels = BTreeMap::new();
        labels.insert(COMPONENT_LABEL.to_string(), BROKER_COMPONENT.to_string());
        if let Some(c) = cluster {
            labels.insert(CLUSTER_LABEL.to_string(), c.to_string());
        }
        let mut ports = BTreeMap::new();
        ports.insert(
            "broker".to_string(),
            BTreeMap::from([("amqp".to_string(), 5672u16)]),
        );
        PodInfo {
            name: name.into(),
            host: "10.0.0.1".into(),
            phase: "Running".into(),
            ready,
            ports,
            labels,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn selector() {
        let labels = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        assert!(selector_matches(&BTreeMap::new(), &labels));
        assert!(selector_matches(
            &BTreeMap::from([("a".to_string(), "1".to_string())]),
            &labels
        ));
        assert!(!selector_matches(
            &BTreeMap::from([("a".to_string(), "2".to_string())]),
            &labels
        ));
        assert!(!selector_matches(
            &BTreeMap::from([("c".to_string(), "1".to_string())]),
            &labels
        ));
    }

    #[test]
    fn broker_pods_grouped_by_cluster_only_ready_ones() {
        let mut draining = pod("q-1", Some("q"), true);
        draining
            .annotations
            .insert(DRAINING_ANNOTATION.into(), "true".into());
        let pods = vec![
            pod("q-0", Some("q"), true),
            draining,
            pod("q-2", Some("q"), false),
            pod("x", None, true),
        ];
        let b = brokers_from_pods(&pods);
        assert_eq!(b.clusters.len(), 1);
        let q = &b.clusters["q"];
        assert_eq!(q.len(), 2);
        assert_eq!(
            (q[0].name.as_str(), q[0].port, q[0].draining),
            ("q-0", 5672, false)
        );
        assert!(q[1].draining);
    }

    #[test]
    fn podsense_body_shape() {
        let v = serde_json::to_value(pod("b-0", Some("c"), true)).unwrap_or_default();
        assert_eq!(v["ports"]["broker"]["amqp"], 5672);
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["ready"], true);
    }
}
