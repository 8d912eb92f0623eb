//! Broker clusters and placement (docs/architecture.md §4): which broker cluster holds a queue/topic, and the broker pods
//! of each cluster. One function shared by router-agent, storage-controller and subscription-service. Also the
//! DNS-1123 names of clusters and the `--brokers-file` format.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::flavor::json_type_name;
use crate::{Address, AddressSet, ConfigError, FlavorSet};

/// Longest DNS-1123 label.
pub const MAX_LABEL_LEN: usize = 63;
/// Hex characters of the SHA-256 suffix appended to a changed or shortened name.
const HASH_SUFFIX_LEN: usize = 8;

/// One broker pod the router connects to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BrokerPod {
    /// Pod name; unique across all clusters (the connector is `maas-broker-<name>`).
    pub name: String,
    /// Host or IP the router's connector dials.
    pub host: String,
    /// AMQP port of the broker.
    pub port: u16,
    /// A draining pod gets only the `in` autoLink (consumers empty it, no new messages go there).
    #[serde(default)]
    pub draining: bool,
    /// Not yet provisioned: `Some("")` for a pod storage-controller has not annotated `maas.io/provisioned` yet
    /// (see [`crate::pods::resolve_provisioning`]); None once it has, or when provisioning is not tracked (a brokers
    /// file). Queues get autoLinks only to provisioned pods: a link
    /// to a queue that does not exist yet makes Artemis auto-create it with the wrong semantics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<String>,
    /// The pod is Ready (always, for a brokers file). A pod that is not keeps its topics ([`topic_pod`] ignores
    /// readiness: a restarting pod must not move them) and its connector, but queues get no link to it and nothing
    /// is provisioned or moved on it until it is Ready again.
    #[serde(default = "ready_by_default", skip_serializing_if = "is_ready")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}

fn is_ready(ready: &bool) -> bool {
    *ready
}

/// Broker pods by cluster name; the `--brokers-file` format:
/// `{"<cluster>": [{"name": "broker-0", "host": "127.0.0.1", "port": 5674}]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Brokers {
    /// Cluster name -> its pods, in file order.
    pub clusters: BTreeMap<String, Vec<BrokerPod>>,
}

impl Brokers {
    /// The pods of `cluster` (empty when the cluster is unknown).
    pub fn pods(&self, cluster: &str) -> &[BrokerPod] {
        self.clusters.get(cluster).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The `--brokers-file` format as compact JSON text (`draining` only when true).
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        for (cluster, pods) in &self.clusters {
            let pods: Vec<Value> = pods
                .iter()
                .map(|p| {
                    let mut o = serde_json::Map::new();
                    o.insert("name".into(), Value::String(p.name.clone()));
                    o.insert("host".into(), Value::String(p.host.clone()));
                    o.insert("port".into(), Value::from(p.port));
                    if p.draining {
                        o.insert("draining".into(), Value::Bool(true));
                    }
                    Value::Object(o)
                })
                .collect();
            map.insert(cluster.clone(), Value::Array(pods));
        }
        Value::Object(map).to_string()
    }
}

/// The broker cluster of a queue/topic address, None for anycast/broadcast.
///
/// The cluster is named after the address (the 2016 default), or after its flavor when that flavor exists in
/// `flavors` and is marked `"shared": true`. A flavor missing from `flavors` counts as not shared. The name is a
/// DNS-1123 label, see [`dns1123_label`].
pub fn cluster_for(address: &Address, flavors: &FlavorSet) -> Option<String> {
    // A subscription lives on its topic's cluster (its flavor is the topic's, set when the set was validated).
    let owner = match (address.kind, &address.topic) {
        (crate::AddressKind::Subscription, Some(topic)) => topic.as_str(),
        (crate::AddressKind::Subscription, None) => return None,
        _ if !address.kind.needs_broker() => return None,
        _ => address.address.as_str(),
    };
    let shared_flavor = address
        .flavor
        .as_deref()
        .and_then(|f| flavors.get(f))
        .filter(|f| f.shared);
    Some(match shared_flavor {
        Some(f) => dns1123_label(&f.name),
        None => dns1123_label(owner),
    })
}

/// The ONE pod of its cluster a topic lives on: a rendezvous hash of the topic name over the names of the
/// cluster's pods that are not draining (docs/architecture.md §4 "Topics live on ONE pod"). Readiness does not
/// move a topic (a restarting pod keeps its topics); draining does. Adding or draining a pod moves only about 1/N
/// of the topics. None when every pod drains (or there is none). Shared by router-agent (linkRoutes),
/// storage-controller (the topic's address) and subscription-service (where subscriptions must be).
pub fn topic_pod<'a>(topic: &str, pods: &'a [BrokerPod]) -> Option<&'a BrokerPod> {
    rendezvous(
        topic,
        pods.iter()
            .filter(|p| !p.draining)
            .map(|p| (p.name.as_str(), p)),
    )
}

/// The pod a topic's LINKS point at while its pod hands over (docs/architecture.md §5): a rendezvous hash of the
/// topic name over the cluster's pods that are not (draining AND released). A draining pod keeps the linkRoutes of
/// its topics (and of their subscriptions) until subscription-service has moved every durable subscription of
/// those topics to their new pods and RELEASED it (`released`: pod names, from the
/// [`crate::pods::TOPICS_RELEASED_ANNOTATION`] or a handover file, [`parse_handover`]).
///
/// Rendezvous over a superset picks the subset's winner whenever that winner is in the subset, so this is
/// [`topic_pod`] (the target) for every topic whose target did not change, and for every topic once its old pod is
/// released; otherwise it is the draining pod the topic still lives on. Used by router-agent with
/// `--topic-handover`; storage-controller and subscription-service use the target, [`topic_pod`].
pub fn topic_route_pod<'a>(
    topic: &str,
    pods: &'a [BrokerPod],
    released: &BTreeSet<String>,
) -> Option<&'a BrokerPod> {
    rendezvous(
        topic,
        pods.iter()
            .filter(|p| !p.draining || !released.contains(&p.name))
            .map(|p| (p.name.as_str(), p)),
    )
}

/// The broker pods as a topic's links see them during hand-overs: every draining pod that is not `released` counts
/// as not draining (it keeps its topics, both linkRoutes). [`topic_pod`] over this view is [`topic_route_pod`]
/// over the real pods. Only for topic and subscription entities: queues keep seeing the pods as they are.
pub fn topic_route_view(brokers: &Brokers, released: &BTreeSet<String>) -> Brokers {
    let mut view = brokers.clone();
    for pods in view.clusters.values_mut() {
        for p in pods.iter_mut() {
            if p.draining && !released.contains(&p.name) {
                p.draining = false;
            }
        }
    }
    view
}

/// Parse a handover file: `{"released": ["broker-0", ...]}`, the broker pods subscription-service has released
/// (written by `subscription-service --handover-file`, read by `router-agent --handover-file`). Empty text (a file
/// just created) means none. `origin` (the file path) names it in errors.
pub fn parse_handover(origin: &str, text: &str) -> Result<BTreeSet<String>, Vec<ConfigError>> {
    let err = |msg: String| vec![ConfigError::new(origin, None, None, msg)];
    if text.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| err(format!("invalid JSON in handover file: {e}")))?;
    let shape = || {
        format!(
            "a handover file must be {{\"released\": [\"<pod>\", ...]}}, found {}",
            json_type_name(&value)
        )
    };
    let Value::Object(map) = &value else {
        return Err(err(shape()));
    };
    match map.get("released") {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::Array(items)) => {
            let mut out = BTreeSet::new();
            let mut problems = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if !s.is_empty() => {
                        out.insert(s.clone());
                    }
                    other => problems.push(ConfigError::new(
                        origin,
                        None,
                        None,
                        format!(
                            "\"released\"[{i}] must be a pod name, found {}",
                            json_type_name(other)
                        ),
                    )),
                }
            }
            if problems.is_empty() {
                Ok(out)
            } else {
                Err(problems)
            }
        }
        Some(other) => Err(err(format!(
            "\"released\" must be a list of pod names, found {}",
            json_type_name(other)
        ))),
    }
}

/// The handover file text for `released` (names in order, one line).
pub fn render_handover(released: &BTreeSet<String>) -> String {
    let mut text = serde_json::json!({ "released": released }).to_string();
    text.push('\n');
    text
}

/// Every cluster name the queue/topic addresses of `addresses` use (for the storage controller).
pub fn clusters_in_use(addresses: &AddressSet, flavors: &FlavorSet) -> BTreeSet<String> {
    addresses
        .iter()
        .filter_map(|a| cluster_for(a, flavors))
        .collect()
}

/// A DNS-1123 label derived deterministically from `name`: lower-cased, characters outside `[a-z0-9-]` replaced
/// by `-`, trimmed to start and end alphanumeric, at most 63 characters. When anything was changed or the name was
/// too long, `-` and the first 8 hex characters of the SHA-256 of the ORIGINAL name are appended (total still
/// <= 63), so names differing only in case or punctuation still get distinct labels.
pub fn dns1123_label(name: &str) -> String {
    let replaced: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = replaced.trim_matches('-');
    if !trimmed.is_empty() && trimmed == name && trimmed.len() <= MAX_LABEL_LEN {
        return trimmed.to_string();
    }
    let hash = hex(&Sha256::digest(name.as_bytes()));
    let suffix = &hash[..HASH_SUFFIX_LEN];
    // Only ASCII remains in `trimmed`, so byte slicing is on char boundaries.
    let keep = MAX_LABEL_LEN - HASH_SUFFIX_LEN - 1;
    let base = trimmed[..trimmed.len().min(keep)].trim_end_matches('-');
    if base.is_empty() {
        suffix.to_string()
    } else {
        format!("{base}-{suffix}")
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse a `--brokers-file`: `{"<cluster>": [{"name": "broker-0", "host": "127.0.0.1", "port": 5674,
/// "draining": false}]}`. `origin` (the file path) names it in errors. Pod names must be unique across the whole
/// file (each pod gets one connector `maas-broker-<pod>`) and must not contain `/`, whitespace or control
/// characters. Unknown pod fields are ignored. Every problem is returned.
pub fn parse_brokers(origin: &str, text: &str) -> Result<Brokers, Vec<ConfigError>> {
    let err = |msg: String| ConfigError::new(origin, None, None, msg);
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(vec![err(format!("invalid JSON in brokers file: {e}"))]),
    };
    let Value::Object(map) = value else {
        return Err(vec![err(format!(
            "a brokers file must be a JSON object from cluster name to a list of pods, found {}",
            json_type_name(&value)
        ))]);
    };
    let mut errors = Vec::new();
    let mut brokers = Brokers::default();
    let mut seen_pods: BTreeMap<String, String> = BTreeMap::new();
    for (cluster, pods) in map {
        if cluster.is_empty() {
            errors.push(err("cluster name must not be empty".into()));
            continue;
        }
        let Value::Array(pods) = pods else {
            errors.push(err(format!(
                "cluster {cluster:?} must be a list of pods, found {}",
                json_type_name(&pods)
            )));
            continue;
        };
        let mut list = Vec::with_capacity(pods.len());
        for (i, pod) in pods.iter().enumerate() {
            match parse_pod(pod) {
                Ok(p) => {
                    if let Some(other) = seen_pods.get(&p.name) {
                        errors.push(err(format!(
                            "cluster {cluster:?} pod {i}: pod name {:?} is already used in cluster {other:?}; \
                             pod names must be unique",
                            p.name
                        )));
                        continue;
                    }
                    seen_pods.insert(p.name.clone(), cluster.clone());
                    list.push(p);
                }
                Err(problems) => {
                    for m in problems {
                        errors.push(err(format!("cluster {cluster:?} pod {i}: {m}")));
                    }
                }
            }
        }
        brokers.clusters.insert(cluster, list);
    }
    if errors.is_empty() {
        Ok(brokers)
    } else {
        Err(errors)
    }
}

/// A required, non-empty string field of a pod object, or the problem with it.
pub(crate) fn pod_text_field(
    o: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<String, String> {
    match o.get(field) {
        None | Some(Value::Null) => Err(format!("missing \"{field}\"")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("\"{field}\" must not be empty")),
        Some(Value::String(s)) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(
            format!("\"{field}\" {s:?} must not contain whitespace or control characters"),
        ),
        Some(Value::String(s)) if field == "name" && s.contains('/') => {
            Err(format!("\"name\" {s:?} must not contain '/'"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "\"{field}\" must be a string, found {}",
            json_type_name(v)
        )),
    }
}

/// An optional port-number field of a pod object (`Ok(None)` when absent), or the problem with it.
pub(crate) fn pod_port_field(
    o: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<u16>, String> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) if p >= 1 => Ok(Some(p)),
            _ => Err(format!("\"{field}\" {n} is not a port number (1..=65535)")),
        },
        Some(v) => Err(format!(
            "\"{field}\" must be a number, found {}",
            json_type_name(v)
        )),
    }
}

/// Rendezvous (highest-random-weight) hashing: the candidate whose name scores highest for `key`, where the score
/// is the first 8 bytes of SHA-256(key NUL name). Every caller on every machine picks the same one; adding a
/// candidate moves only the keys it now wins (about 1/N), removing one moves only the keys it held.
pub fn rendezvous<'a, T>(
    key: &str,
    candidates: impl IntoIterator<Item = (&'a str, T)>,
) -> Option<T> {
    candidates
        .into_iter()
        .map(|(name, item)| {
            let mut h = Sha256::new();
            h.update(key.as_bytes());
            h.update([0u8]);
            h.update(name.as_bytes());
            let d = h.finalize();
            let score = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            (score, name, item)
        })
        // Ties (never seen in practice) go to the lower name, so the choice stays deterministic.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, _, item)| item)
}

/// One pod object of a brokers file, or every problem with it.
fn parse_pod(pod: &Value) -> Result<BrokerPod, Vec<String>> {
    let Value::Object(o) = pod else {
        return Err(vec![format!(
            "must be an object like {{\"name\": \"broker-0\", \"host\": \"127.0.0.1\", \"port\": 5674}}, found {}",
            json_type_name(pod)
        )]);
    };
    let mut problems = Vec::new();
    let name = pod_text_field(o, "name").map_err(|e| problems.push(e)).ok();
    let host = pod_text_field(o, "host").map_err(|e| problems.push(e)).ok();
    let port = match pod_port_field(o, "port") {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            problems.push("missing \"port\"".to_string());
            None
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let draining = match o.get("draining") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            problems.push(format!(
                "\"draining\" must be true or false, found {}",
                json_type_name(v)
            ));
            false
        }
    };
    match (name, host, port) {
        (Some(name), Some(host), Some(port)) if problems.is_empty() => Ok(BrokerPod {
            name,
            host,
            port,
            draining,
            provisioned: None,
            ready: true,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{AddressKind, Flavor};

    fn addr(a: &str, kind: AddressKind, flavor: Option<&str>) -> Address {
        Address {
            address: a.into(),
            kind,
            flavor: flavor.map(str::to_string),
            topic: None,
        }
    }

    fn flavors() -> FlavorSet {
        let mut set = FlavorSet::default();
        for (name, shared) in [("vanilla-queue", false), ("Shared.Small", true)] {
            set.insert(Flavor {
                name: name.into(),
                kind: None,
                description: None,
                template_name: None,
                template_parameters: BTreeMap::new(),
                shared,
                extra: BTreeMap::new(),
            });
        }
        set
    }

    fn sha8(s: &str) -> String {
        hex(&Sha256::digest(s.as_bytes()))[..8].to_string()
    }

    #[test]
    fn dns_labels() {
        let long = "a".repeat(70);
        let cases: Vec<(&str, String)> = vec![
            ("orders", "orders".into()),
            ("orders-2", "orders-2".into()),
            ("0abc", "0abc".into()),
            ("Orders", format!("orders-{}", sha8("Orders"))),
            (
                "news/sport.eu",
                format!("news-sport-eu-{}", sha8("news/sport.eu")),
            ),
            ("-x-", format!("x-{}", sha8("-x-"))),
            ("ünï", format!("n-{}", sha8("ünï"))),
            ("...", sha8("...")),
            ("", sha8("")),
            (&long, format!("{}-{}", "a".repeat(54), sha8(&long))),
            (&long[..63], "a".repeat(63)),
        ];
        for (name, want) in cases {
            let got = dns1123_label(name);
            assert_eq!(got, want, "name {name:?}");
            assert!(got.len() <= MAX_LABEL_LEN);
            assert!(
                got.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(!got.starts_with('-') && !got.ends_with('-'));
        }
        // The truncated base never ends in '-' before the suffix.
        let tricky = format!("{}-b{}", "a".repeat(53), "c".repeat(20));
        assert_eq!(
            dns1123_label(&tricky),
            format!("{}-{}", "a".repeat(53), sha8(&tricky))
        );
        // Names that differ only in case get different labels; the result is stable.
        assert_ne!(dns1123_label("Orders"), dns1123_label("orders"));
        assert_eq!(dns1123_label("Orders"), dns1123_label("Orders"));
    }

    #[test]
    fn placement_by_kind_and_flavor() {
        let f = flavors();
        let shared = format!("shared-small-{}", sha8("Shared.Small"));
        let cases = [
            (addr("chat", AddressKind::Anycast, None), None),
            (
                addr("bc", AddressKind::Broadcast, Some("vanilla-queue")),
                None,
            ),
            (
                addr("orders", AddressKind::Queue, Some("vanilla-queue")),
                Some("orders".to_string()),
            ),
            (
                addr("news", AddressKind::Topic, Some("vanilla-queue")),
                Some("news".to_string()),
            ),
            (
                addr("q1", AddressKind::Queue, Some("Shared.Small")),
                Some(shared.clone()),
            ),
            (
                addr("t1", AddressKind::Topic, Some("Shared.Small")),
                Some(shared.clone()),
            ),
            (
                addr("q2", AddressKind::Queue, Some("missing")),
                Some("q2".to_string()),
            ),
            (
                addr("Q3", AddressKind::Queue, None),
                Some(format!("q3-{}", sha8("Q3"))),
            ),
        ];
        let mut set = AddressSet::default();
        for (a, want) in cases {
            assert_eq!(cluster_for(&a, &f), want, "address {a:?}");
            set.insert(a);
        }
        let in_use: Vec<String> = clusters_in_use(&set, &f).into_iter().collect();
        assert_eq!(in_use.len(), 5, "{in_use:?}");
        assert!(in_use.contains(&shared));
    }

    #[test]
    fn brokers_file_parses() {
        let text = r#"{"orders": [{"name": "orders-0", "host": "127.0.0.1", "port": 5674},
                                 {"name": "orders-1", "host": "127.0.0.1", "port": 5675, "draining": true}],
                       "empty": []}"#;
        let b = parse_brokers("brokers.json", text).unwrap();
        assert_eq!(b.pods("orders").len(), 2);
        assert!(b.pods("orders")[1].draining);
        assert!(!b.pods("orders")[0].draining);
        assert_eq!(b.pods("orders")[1].port, 5675);
        assert!(b.pods("empty").is_empty());
        assert!(b.pods("nope").is_empty());
        assert_eq!(parse_brokers("again", &b.to_json()).unwrap(), b);
    }

    #[test]
    fn brokers_file_errors_are_all_reported() {
        let cases: &[(&str, &[&str])] = &[
            (
                "",
                &[
                    "b.json: invalid JSON in brokers file: EOF while parsing a value at line 1 column 0",
                ],
            ),
            (
                "[1]",
                &[
                    "b.json: a brokers file must be a JSON object from cluster name to a list of pods, found a list",
                ],
            ),
            (
                r#"{"c": {}, "": []}"#,
                &[
                    "b.json: cluster name must not be empty",
                    r#"b.json: cluster "c" must be a list of pods, found an object"#,
                ],
            ),
            (
                r#"{"a": [{"name": "p", "host": "h", "port": 1}, 7, {"host": "", "port": 70000},
                          {"name": "x y", "host": 3, "port": "5674", "draining": "no"}],
                    "b": [{"name": "p", "host": "h", "port": 2}, {"name": "a/b", "host": "h", "port": 0}]}"#,
                &[
                    r#"b.json: cluster "a" pod 1: must be an object like {"name": "broker-0", "host": "127.0.0.1", "port": 5674}, found a number"#,
                    r#"b.json: cluster "a" pod 2: missing "name""#,
                    r#"b.json: cluster "a" pod 2: "host" must not be empty"#,
                    r#"b.json: cluster "a" pod 2: "port" 70000 is not a port number (1..=65535)"#,
                    r#"b.json: cluster "a" pod 3: "name" "x y" must not contain whitespace or control characters"#,
                    r#"b.json: cluster "a" pod 3: "host" must be a string, found a number"#,
                    r#"b.json: cluster "a" pod 3: "port" must be a number, found a string"#,
                    r#"b.json: cluster "a" pod 3: "draining" must be true or false, found a string"#,
                    r#"b.json: cluster "b" pod 0: pod name "p" is already used in cluster "a"; pod names must be unique"#,
                    r#"b.json: cluster "b" pod 1: "name" "a/b" must not contain '/'"#,
                    r#"b.json: cluster "b" pod 1: "port" 0 is not a port number (1..=65535)"#,
                ],
            ),
        ];
        for (text, want) in cases {
            let got: Vec<String> = parse_brokers("b.json", text)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(&got, want, "input {text}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod topic_placement_tests {
    use super::*;

    fn pods(n: usize) -> Vec<BrokerPod> {
        (0..n)
            .map(|i| BrokerPod {
                name: format!("broker-{i}"),
                host: format!("10.0.0.{i}"),
                port: 5672,
                draining: false,
                provisioned: None,
                ready: true,
            })
            .collect()
    }

    fn placement(topics: &[String], pods: &[BrokerPod]) -> BTreeMap<String, String> {
        topics
            .iter()
            .map(|t| (t.clone(), topic_pod(t, pods).unwrap().name.clone()))
            .collect()
    }

    #[test]
    fn adding_or_draining_a_pod_moves_about_one_nth_of_the_topics() {
        let topics: Vec<String> = (0..3000).map(|i| format!("topic-{i}")).collect();
        let three = pods(3);
        let before = placement(&topics, &three);
        // Evenly spread.
        for p in &three {
            let n = before.values().filter(|v| **v == p.name).count();
            assert!((850..=1150).contains(&n), "{}: {n}", p.name);
        }
        // A fourth pod: only topics it now wins move, about 1/4 of them, and all to it.
        let four = pods(4);
        let after = placement(&topics, &four);
        let moved: Vec<&String> = topics.iter().filter(|t| before[*t] != after[*t]).collect();
        assert!(moved.iter().all(|t| after[*t] == "broker-3"));
        let share = moved.len() as f64 / topics.len() as f64;
        assert!((0.20..=0.30).contains(&share), "moved {share}");
        // Draining broker-1: only its topics move, spread over the others; readiness plays no part.
        let mut draining = three.clone();
        draining[1].draining = true;
        let drained = placement(&topics, &draining);
        for t in &topics {
            if before[t] == "broker-1" {
                assert_ne!(drained[t], "broker-1");
            } else {
                assert_eq!(drained[t], before[t], "{t} moved although its pod stays");
            }
        }
        // Every pod draining: nowhere to live.
        let all: Vec<BrokerPod> = three
            .iter()
            .cloned()
            .map(|mut p| {
                p.draining = true;
                p
            })
            .collect();
        assert!(topic_pod("t", &all).is_none());
        assert!(topic_pod("t", &[]).is_none());
    }

    #[test]
    fn a_draining_pod_keeps_its_topics_links_until_released() {
        let all = pods(4);
        let topics: Vec<String> = (0..400).map(|i| format!("t{i}")).collect();
        let mut draining = all.clone();
        draining[1].draining = true;
        let none = BTreeSet::new();
        let released = BTreeSet::from(["broker-1".to_string()]);
        let mut moved = 0;
        for t in &topics {
            let before = topic_pod(t, &all).unwrap().name.clone();
            let target = topic_pod(t, &draining).unwrap().name.clone();
            // Not released: the links stay where the topic was (the draining pod included).
            assert_eq!(topic_route_pod(t, &draining, &none).unwrap().name, before);
            // Released: the links follow the target.
            assert_eq!(
                topic_route_pod(t, &draining, &released).unwrap().name,
                target
            );
            // A release of a pod that does not drain changes nothing.
            assert_eq!(
                topic_route_pod(t, &all, &released).unwrap().name,
                before,
                "released without draining"
            );
            // The view: topic_pod over it is topic_route_pod over the real pods.
            for r in [&none, &released] {
                let view = topic_route_view(
                    &Brokers {
                        clusters: [("c".to_string(), draining.clone())].into(),
                    },
                    r,
                );
                assert_eq!(
                    topic_pod(t, view.pods("c")).unwrap().name,
                    topic_route_pod(t, &draining, r).unwrap().name
                );
            }
            if before != target {
                moved += 1;
                assert_eq!(before, "broker-1", "only the draining pod's topics move");
            }
        }
        assert!(moved > 50 && moved < 150, "{moved}");
        // Every pod draining and released: nowhere to route.
        let mut gone = all.clone();
        for p in &mut gone {
            p.draining = true;
        }
        let every: BTreeSet<String> = all.iter().map(|p| p.name.clone()).collect();
        assert!(topic_route_pod("t0", &gone, &every).is_none());
        assert!(topic_route_pod("t0", &gone, &none).is_some());
    }

    #[test]
    fn handover_file_round_trip_and_errors() {
        let set = BTreeSet::from(["b-1".to_string(), "a-0".to_string()]);
        let text = render_handover(&set);
        assert_eq!(text, "{\"released\":[\"a-0\",\"b-1\"]}\n");
        assert_eq!(parse_handover("h", &text).unwrap(), set);
        assert!(parse_handover("h", "").unwrap().is_empty());
        assert!(parse_handover("h", "{}").unwrap().is_empty());
        let e = parse_handover("h", "[]").unwrap_err();
        assert!(
            e[0].to_string().contains("must be {\"released\""),
            "{}",
            e[0]
        );
        let e = parse_handover("h", r#"{"released": ["a", 3, ""]}"#).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(parse_handover("h", "{").is_err());
        assert!(parse_handover("h", r#"{"released": "a"}"#).is_err());
    }

    #[test]
    fn a_subscription_lives_on_its_topics_cluster() {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "small"},
                    "news-sub": {"subscription": true, "topic": "news"}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"small": {"type": "topic"}}"#.to_string(),
            ),
        ]
        .into();
        let config = crate::parse_config("cm", &files, None).unwrap();
        let sub = config.addresses.get("news-sub").unwrap();
        assert_eq!(sub.kind, crate::AddressKind::Subscription);
        assert_eq!(sub.flavor.as_deref(), Some("small"));
        assert_eq!(
            cluster_for(sub, &config.flavors),
            cluster_for(config.addresses.get("news").unwrap(), &config.flavors)
        );
    }
}
