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
/// Annotation subscription-service sets (`"true"`) on a DRAINING broker pod once every durable subscription of the
/// topics leaving it sits on the topics' new pods: router-agents with `--topic-handover` then move those topics'
/// linkRoutes off it ([`crate::placement::topic_route_pod`], docs/architecture.md §5). Removed when the pod stops
/// draining. Forwarded like every `maas.io/` annotation (config-service `podsense`, the pod watch).
pub const TOPICS_RELEASED_ANNOTATION: &str = "maas.io/topics-released";
/// Annotation storage-controller sets on a broker pod once it holds everything it should: the
/// [`provisioned_hash`] of [`pod_holdings`].
pub const PROVISIONED_ANNOTATION: &str = "maas.io/provisioned";

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
        // Not-ready pods stay listed (ready false): readiness must not move a topic.
        if p.labels.get(COMPONENT_LABEL).map(String::as_str) != Some(BROKER_COMPONENT)
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
                // Checked against what the pod should hold by resolve_provisioning.
                provisioned: Some(
                    p.annotations
                        .get(PROVISIONED_ANNOTATION)
                        .cloned()
                        .unwrap_or_default(),
                ),
                ready: p.ready,
            });
    }
    for pods in clusters.values_mut() {
        pods.sort();
    }
    Brokers { clusters }
}

/// The broker pods annotated [`TOPICS_RELEASED_ANNOTATION`]`=true` (whatever their draining state: a pod released
/// and no longer draining is released by nobody's count, see [`crate::placement::topic_route_pod`]).
pub fn released_from_pods(pods: &[PodInfo]) -> std::collections::BTreeSet<String> {
    pods.iter()
        .filter(|p| p.labels.get(COMPONENT_LABEL).map(String::as_str) == Some(BROKER_COMPONENT))
        .filter(|p| {
            p.annotations
                .get(TOPICS_RELEASED_ANNOTATION)
                .map(String::as_str)
                == Some("true")
        })
        .map(|p| p.name.clone())
        .collect()
}

/// What broker pod `pod` of `cluster` (whose pods are `pods`) should hold: every queue, topic and subscription of
/// the cluster, a subscription only on its topic's pod. (name, kind, topic), in name order.
pub fn pod_holdings(
    addresses: &crate::AddressSet,
    flavors: &crate::FlavorSet,
    cluster: &str,
    pod: &str,
    pods: &[BrokerPod],
) -> Vec<(String, crate::AddressKind, Option<String>)> {
    addresses
        .iter()
        .filter(|a| crate::cluster_for(a, flavors).as_deref() == Some(cluster))
        .filter(|a| match (a.kind, &a.topic) {
            (crate::AddressKind::Subscription, Some(t)) => {
                crate::placement::topic_pod(t, pods).is_some_and(|p| p.name == pod)
            }
            (crate::AddressKind::Subscription, None) => false,
            _ => true,
        })
        .map(|a| (a.address.clone(), a.kind, a.topic.clone()))
        .collect()
}

/// The value of [`PROVISIONED_ANNOTATION`] for a pod holding `holdings` (name order): the first 16 hex characters
/// of the SHA-256 of one line `<name> TAB <kind> TAB <topic or empty> LF` per address. Shared by storage-controller
/// (which sets it) and router-agent (which compares it).
pub fn provisioned_hash<'a>(
    holdings: impl IntoIterator<Item = (&'a str, crate::AddressKind, Option<&'a str>)>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, kind, topic) in holdings {
        h.update(name.as_bytes());
        h.update(b"\t");
        h.update(kind.as_str().as_bytes());
        h.update(b"\t");
        h.update(topic.unwrap_or_default().as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Marks every broker pod that storage-controller has reported provisioned (a non-empty
/// [`PROVISIONED_ANNOTATION`]) as such (`provisioned` None); a pod never annotated keeps `Some("")` and gets no
/// queue links. Pods whose provisioning is not tracked (a brokers file) stay as they are.
///
/// The check is per pod, as the annotation is: a pod provisioned once keeps its queue links while storage-controller
/// provisions a later change (its annotation then names the previous set), so a queue ADDED to a pod that already
/// serves others can be reached up to one provisioning pass (about a second) before it exists there. Comparing the
/// value with [`provisioned_hash`] of [`pod_holdings`] would close that gap but take every queue link of the pod
/// down during each change.
pub fn resolve_provisioning(brokers: &mut Brokers) {
    for pods in brokers.clusters.values_mut() {
        for p in pods.iter_mut() {
            if p.provisioned.as_deref().is_some_and(|v| !v.is_empty()) {
                p.provisioned = None;
            }
        }
    }
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
    fn broker_pods_grouped_by_cluster_with_their_readiness() {
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
        // A pod that is not Ready stays listed (it keeps its topics), marked.
        assert_eq!(q.len(), 3);
        assert_eq!(
            (q[0].name.as_str(), q[0].port, q[0].draining, q[0].ready),
            ("q-0", 5672, false, true)
        );
        assert!(q[1].draining);
        assert!(!q[2].ready);
    }

    #[test]
    fn released_pods_are_the_broker_pods_annotated_so() {
        let mut released = pod("q-1", Some("q"), true);
        released
            .annotations
            .insert(DRAINING_ANNOTATION.into(), "true".into());
        released
            .annotations
            .insert(TOPICS_RELEASED_ANNOTATION.into(), "true".into());
        let mut other = pod("q-2", Some("q"), true);
        other
            .annotations
            .insert(TOPICS_RELEASED_ANNOTATION.into(), "false".into());
        let mut not_broker = pod("r-0", None, true);
        not_broker
            .labels
            .insert(COMPONENT_LABEL.into(), "router".into());
        not_broker
            .annotations
            .insert(TOPICS_RELEASED_ANNOTATION.into(), "true".into());
        let got = released_from_pods(&[pod("q-0", Some("q"), true), released, other, not_broker]);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["q-1"]);
    }

    #[test]
    fn podsense_body_shape() {
        let v = serde_json::to_value(pod("b-0", Some("c"), true)).unwrap_or_default();
        assert_eq!(v["ports"]["broker"]["amqp"], 5672);
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["ready"], true);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod provisioning_tests {
    use super::*;
    use crate::{EntityOptions, EntityType, desired_entities};

    #[test]
    fn queues_get_links_only_to_pods_provisioned_for_the_current_set() {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"orders": {"store_and_forward": true, "flavor": "s"}}"#.to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"s": {"type": "queue", "shared": true}}"#.to_string(),
            ),
        ]
        .into();
        let config = crate::parse_config("cm", &files, None).unwrap();
        let pod = |name: &str, annotation: Option<&str>| PodInfo {
            name: name.into(),
            host: "10.0.0.1".into(),
            phase: "Running".into(),
            ready: true,
            ports: [("broker".to_string(), [("amqp".to_string(), 5672)].into())].into(),
            labels: [
                (COMPONENT_LABEL.to_string(), BROKER_COMPONENT.to_string()),
                (CLUSTER_LABEL.to_string(), "s".to_string()),
            ]
            .into(),
            annotations: annotation
                .map(|a| [(PROVISIONED_ANNOTATION.to_string(), a.to_string())].into())
                .unwrap_or_default(),
        };
        let pods = brokers_from_pods(&[pod("s-0", None), pod("s-1", None)]);
        let right = provisioned_hash(
            pod_holdings(
                &config.addresses,
                &config.flavors,
                "s",
                "s-0",
                pods.pods("s"),
            )
            .iter()
            .map(|(n, k, t)| (n.as_str(), *k, t.as_deref())),
        );
        // s-0 provisioned for this set, s-1 not annotated yet, s-2 annotated for an older set (still serving).
        let mut brokers = brokers_from_pods(&[
            pod("s-0", Some(&right)),
            pod("s-1", None),
            pod("s-2", Some("0123456789abcdef")),
        ]);
        resolve_provisioning(&mut brokers);
        let set = desired_entities(
            &config.addresses,
            &config.flavors,
            &brokers,
            &EntityOptions::default(),
        );
        let links: Vec<&str> = set
            .of_type(EntityType::AutoLink)
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            links,
            [
                "maas-autolink/orders/s-0/in",
                "maas-autolink/orders/s-0/out",
                "maas-autolink/orders/s-2/in",
                "maas-autolink/orders/s-2/out"
            ]
        );
        // Connectors to every pod all the same (the router is ready to use them once provisioned).
        assert_eq!(set.of_type(EntityType::Connector).count(), 3);
        // A brokers file does not track provisioning: every pod gets the queue's links.
        let file = crate::parse_brokers(
            "f",
            r#"{"s": [{"name": "s-0", "host": "h", "port": 1}, {"name": "s-1", "host": "h", "port": 2}]}"#,
        )
        .unwrap();
        let set = desired_entities(
            &config.addresses,
            &config.flavors,
            &file,
            &EntityOptions::default(),
        );
        assert_eq!(set.of_type(EntityType::AutoLink).count(), 4);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod readiness_tests {
    use super::*;
    use crate::{EntityOptions, EntityType, desired_entities};

    /// A broker pod that is not Ready (restarting) keeps its topics and its connector; only the queues' links to it
    /// wait. Readiness does not move a topic (docs/architecture.md §4).
    #[test]
    fn a_restarting_pod_keeps_its_topics() {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"orders": {"store_and_forward": true, "flavor": "s"},
                    "news": {"store_and_forward": true, "multicast": true, "flavor": "s"}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"s": {"type": "queue", "shared": true}}"#.to_string(),
            ),
        ]
        .into();
        let config = crate::parse_config("cm", &files, None).unwrap();
        let pod = |name: &str, ready: bool| PodInfo {
            name: name.into(),
            host: "10.0.0.1".into(),
            phase: "Running".into(),
            ready,
            ports: [("broker".to_string(), [("amqp".to_string(), 5672)].into())].into(),
            labels: [
                (COMPONENT_LABEL.to_string(), BROKER_COMPONENT.to_string()),
                (CLUSTER_LABEL.to_string(), "s".to_string()),
            ]
            .into(),
            annotations: [(PROVISIONED_ANNOTATION.to_string(), "x".to_string())].into(),
        };
        let set = |pods: &[PodInfo]| {
            let mut b = brokers_from_pods(pods);
            resolve_provisioning(&mut b);
            desired_entities(
                &config.addresses,
                &config.flavors,
                &b,
                &EntityOptions::default(),
            )
        };
        let all_ready = set(&[pod("s-0", true), pod("s-1", true)]);
        let home = all_ready
            .of_type(EntityType::LinkRoute)
            .next()
            .unwrap()
            .attributes["connection"]
            .clone();
        let home_pod = home
            .as_str()
            .unwrap()
            .strip_prefix("maas-broker-")
            .unwrap()
            .to_string();
        let restarting: Vec<PodInfo> = ["s-0", "s-1"]
            .iter()
            .map(|n| pod(n, *n != home_pod))
            .collect();
        let during = set(&restarting);
        // The topic's links stay on the restarting pod; its connector stays; the queue's links to it wait.
        let routes: Vec<_> = during.of_type(EntityType::LinkRoute).collect();
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().all(|e| e.attributes["connection"] == home));
        assert_eq!(during.of_type(EntityType::Connector).count(), 2);
        assert_eq!(
            during.of_type(EntityType::AutoLink).count(),
            2,
            "only the ready pod's"
        );
        assert!(
            during
                .of_type(EntityType::AutoLink)
                .all(|e| !e.name.contains(&format!("/{home_pod}/")))
        );
    }
}
