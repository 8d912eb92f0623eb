//! Broker provisioning plan, pure (docs/architecture.md §6): what one broker pod should hold for the addresses of its
//! cluster, compared with what it reports (`getAddressNames` / `getQueueNames`), as ordered operations.
//!
//! - queue address A: an ANYCAST address A and a durable ANYCAST queue A on it;
//! - topic address A: a MULTICAST address A;
//! - subscription S on topic T: a durable MULTICAST queue S bound to address T, on T's pod only
//!   ([`maas_model::topic_pod`]; docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §4). When T's pod
//!   changes, subscription-service moves the queue and its messages; the old (then empty) queue is removed here.
//!
//! **Which names are ours.** Artemis' own names are never touched ([`is_internal`]: `DLQ`, `ExpiryQueue`,
//! `activemq.*`, `$sys.*`, and the UUID-named temporary queues of management clients). Of the rest, only names that
//! are maas addresses now or WERE maas addresses of this cluster earlier in this process ([`Ownership`]) are
//! removed; anything else (auto-created by a client, made by an operator or another tool) is left alone. The
//! consequence, chosen on purpose: an address removed while the controller was not running stays on its broker
//! (nothing is ever destroyed on a guess); it is removed with its cluster, after the drain, when no address of the
//! cluster is left.
//!
//! Removing a queue is guarded: the executor destroys it only when `getMessageCount` is 0, else it is reported
//! (metric, log, status) and retried on the next pass; its address goes only after the queue is gone.

use std::collections::{BTreeMap, BTreeSet};

use maas_model::{AddressKind, Config, cluster_for};

/// Routing type of an Artemis address or queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Routing {
    /// Point to point (queue addresses).
    Anycast,
    /// Publish/subscribe (topic addresses).
    Multicast,
}

impl Routing {
    /// The spelling Artemis uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Anycast => "ANYCAST",
            Routing::Multicast => "MULTICAST",
        }
    }
}

/// What a broker should hold for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Queue, topic or subscription.
    pub kind: AddressKind,
    /// The topic of a subscription.
    pub topic: Option<String>,
}

impl From<AddressKind> for Want {
    fn from(kind: AddressKind) -> Self {
        Want { kind, topic: None }
    }
}

/// What a broker should hold: address (or subscription queue) name -> what it is.
pub type BrokerDesired = BTreeMap<String, Want>;

/// The addresses each cluster's brokers should hold, by cluster name (subscriptions for every pod: see
/// [`for_pod`]).
pub fn desired_per_cluster(config: &Config) -> BTreeMap<String, BrokerDesired> {
    let mut out: BTreeMap<String, BrokerDesired> = BTreeMap::new();
    for a in config.addresses.iter() {
        if let Some(cluster) = cluster_for(a, &config.flavors) {
            out.entry(cluster).or_default().insert(
                a.address.clone(),
                Want {
                    kind: a.kind,
                    topic: a.topic.clone(),
                },
            );
        }
    }
    out
}

/// What pod `pod` of a cluster with `pods` should hold: a subscription queue only on its topic's pod.
pub fn for_pod(
    desired: &BrokerDesired,
    pod: &str,
    pods: &[maas_model::BrokerPod],
) -> BrokerDesired {
    desired
        .iter()
        .filter(|(_, w)| match (&w.kind, &w.topic) {
            (AddressKind::Subscription, Some(t)) => {
                maas_model::topic_pod(t, pods).is_some_and(|p| p.name == pod)
            }
            (AddressKind::Subscription, None) => false,
            _ => true,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// True for Artemis' own addresses and queues and for temporary (UUID-named) ones: never ours.
pub fn is_internal(name: &str) -> bool {
    name == "DLQ"
        || name == "ExpiryQueue"
        || name.starts_with("activemq.")
        || name.starts_with("$sys.")
        || is_uuid(name)
}

/// `8-4-4-4-12` hex digits, the shape of Artemis' temporary queue and address names.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What a broker reports, internal names already left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub addresses: BTreeSet<String>,
    pub queues: BTreeSet<String>,
}

impl Actual {
    /// From the raw `getAddressNames` / `getQueueNames` answers.
    pub fn from_names(addresses: Vec<String>, queues: Vec<String>) -> Actual {
        Actual {
            addresses: addresses.into_iter().filter(|n| !is_internal(n)).collect(),
            queues: queues.into_iter().filter(|n| !is_internal(n)).collect(),
        }
    }
}

/// One broker management operation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `createAddress(name, routing)`.
    CreateAddress { name: String, routing: Routing },
    /// `createQueue({"name": name, "address": name, "routing-type": "ANYCAST", "durable": true})`.
    CreateQueue { name: String },
    /// `createQueue({"name": name, "address": topic, "routing-type": "MULTICAST", "durable": true})`: a durable
    /// subscription queue.
    CreateSubscription { name: String, topic: String },
    /// `destroyQueue(name)`, only once `getMessageCount(name)` is 0.
    DestroyQueue { name: String },
    /// `deleteAddress(name)`, only once the queue of the same name (if one was to be destroyed) is gone.
    DeleteAddress { name: String },
}

impl Op {
    /// The address/queue name the operation is about.
    pub fn name(&self) -> &str {
        match self {
            Op::CreateAddress { name, .. }
            | Op::CreateQueue { name }
            | Op::CreateSubscription { name, .. }
            | Op::DestroyQueue { name }
            | Op::DeleteAddress { name } => name,
        }
    }

    /// Metric label of the operation.
    pub fn label(&self) -> &'static str {
        match self {
            Op::CreateAddress { .. } => "createAddress",
            Op::CreateQueue { .. } | Op::CreateSubscription { .. } => "createQueue",
            Op::DestroyQueue { .. } => "destroyQueue",
            Op::DeleteAddress { .. } => "deleteAddress",
        }
    }
}

/// The operations for one broker. Removals run first (a kind change is remove then create); a held
/// `DestroyQueue` skips the `DeleteAddress` and the creates of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `DestroyQueue` then `DeleteAddress` per name, in name order.
    pub removals: Vec<Op>,
    /// `CreateAddress` ops (all before any `CreateQueue`), then `CreateQueue` ops.
    pub creates: Vec<Op>,
}

impl Plan {
    /// True when the broker already holds exactly what it should.
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.creates.is_empty()
    }
}

/// The names that are (or were, earlier in this process) maas addresses of one cluster, with the kind they were
/// last provisioned as. A name is forgotten only once its broker no longer holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    known: BTreeMap<String, AddressKind>,
}

impl Ownership {
    /// The kind `name` was last provisioned as, if it is ours.
    pub fn kind(&self, name: &str) -> Option<AddressKind> {
        self.known.get(name).copied()
    }

    /// Every name we own, with its kind.
    pub fn known(&self) -> &BTreeMap<String, AddressKind> {
        &self.known
    }

    /// After a pass: every desired name is ours with its desired kind once provisioned; a name no longer desired
    /// stays ours until `actual` shows it gone.
    pub fn update(&mut self, desired: &BrokerDesired, actual: &Actual) {
        self.known.retain(|name, _| {
            desired.contains_key(name)
                || actual.addresses.contains(name)
                || actual.queues.contains(name)
        });
        for (name, want) in desired {
            let kind = &want.kind;
            let present = match kind {
                AddressKind::Queue | AddressKind::Subscription => actual.queues.contains(name),
                _ => actual.addresses.contains(name),
            };
            // A pending kind change keeps the old kind until the new one is in place.
            if present || !self.known.contains_key(name) {
                self.known.insert(name.clone(), *kind);
            }
        }
    }
}

/// The plan that brings a broker from `actual` to `desired`. `owned` says which non-desired names are ours.
pub fn plan(desired: &BrokerDesired, actual: &Actual, owned: &Ownership) -> Plan {
    let mut removals = Vec::new();
    let mut create_addresses = Vec::new();
    let mut create_queues = Vec::new();
    let remove = |removals: &mut Vec<Op>, name: &str, queue: bool| {
        if queue && actual.queues.contains(name) {
            removals.push(Op::DestroyQueue { name: name.into() });
        }
        if actual.addresses.contains(name) {
            removals.push(Op::DeleteAddress { name: name.into() });
        }
    };
    for (name, want) in desired {
        let was = owned.kind(name);
        match &want.kind {
            AddressKind::Queue => {
                let mut has_address = actual.addresses.contains(name);
                if was == Some(AddressKind::Topic) && has_address {
                    // Topic -> queue: the MULTICAST address goes first.
                    remove(&mut removals, name, false);
                    has_address = false;
                }
                if !has_address {
                    create_addresses.push(Op::CreateAddress {
                        name: name.clone(),
                        routing: Routing::Anycast,
                    });
                }
                if !actual.queues.contains(name) {
                    create_queues.push(Op::CreateQueue { name: name.clone() });
                }
            }
            AddressKind::Topic => {
                let mut has_address = actual.addresses.contains(name);
                if was == Some(AddressKind::Queue) && (has_address || actual.queues.contains(name))
                {
                    // Queue -> topic: the queue (once empty) and its ANYCAST address go first.
                    remove(&mut removals, name, true);
                    has_address = false;
                }
                if !has_address {
                    create_addresses.push(Op::CreateAddress {
                        name: name.clone(),
                        routing: Routing::Multicast,
                    });
                }
            }
            AddressKind::Subscription => {
                if let Some(topic) = &want.topic
                    && !actual.queues.contains(name)
                {
                    create_queues.push(Op::CreateSubscription {
                        name: name.clone(),
                        topic: topic.clone(),
                    });
                }
            }
            // Not broker kinds; desired_per_cluster never yields them.
            AddressKind::Anycast | AddressKind::Broadcast => {}
        }
    }
    for (name, kind) in owned.known() {
        if !desired.contains_key(name) {
            let queue = matches!(kind, AddressKind::Queue | AddressKind::Subscription);
            remove(&mut removals, name, queue);
        }
    }
    create_addresses.extend(create_queues);
    Plan {
        removals,
        creates: create_addresses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressKind::{Queue, Topic};

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn desired(pairs: &[(&str, AddressKind)]) -> BrokerDesired {
        pairs
            .iter()
            .map(|(n, k)| (n.to_string(), (*k).into()))
            .collect()
    }

    fn kinds(pairs: &[(&str, AddressKind)]) -> BTreeMap<String, AddressKind> {
        pairs.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    }

    fn actual(addresses: &[&str], queues: &[&str]) -> Actual {
        Actual {
            addresses: set(addresses),
            queues: set(queues),
        }
    }

    fn owned(pairs: &[(&str, AddressKind)]) -> Ownership {
        Ownership {
            known: kinds(pairs),
        }
    }

    fn ca(n: &str, r: Routing) -> Op {
        Op::CreateAddress {
            name: n.into(),
            routing: r,
        }
    }
    fn cq(n: &str) -> Op {
        Op::CreateQueue { name: n.into() }
    }
    fn dq(n: &str) -> Op {
        Op::DestroyQueue { name: n.into() }
    }
    fn da(n: &str) -> Op {
        Op::DeleteAddress { name: n.into() }
    }

    #[test]
    fn internal_names() {
        for n in [
            "DLQ",
            "ExpiryQueue",
            "activemq.management",
            "activemq.notifications",
            "5805de55-5e16-4857-8ecc-a00657602fae",
            "$sys.mqtt.sessions",
        ] {
            assert!(is_internal(n), "{n}");
        }
        for n in [
            "orders",
            "dlq",
            "5805de55-5e16-4857-8ecc-a00657602fa",
            "a-b-c-d-e",
        ] {
            assert!(!is_internal(n), "{n}");
        }
        // The transcript's getAddressNames answer.
        let a = Actual::from_names(
            [
                "activemq.management",
                "addr.three",
                "5805de55-5e16-4857-8ecc-a00657602fae",
                "addr.one",
                "DLQ",
                "ExpiryQueue",
                "activemq.notifications",
            ]
            .map(String::from)
            .to_vec(),
            vec![],
        );
        assert_eq!(a.addresses, set(&["addr.one", "addr.three"]));
    }

    #[test]
    fn plans() {
        use Routing::*;
        struct Case {
            what: &'static str,
            desired: BrokerDesired,
            actual: Actual,
            owned: Ownership,
            removals: Vec<Op>,
            creates: Vec<Op>,
        }
        let cases = vec![
            Case {
                what: "empty broker gets addresses before queues",
                desired: desired(&[("q1", Queue), ("t1", Topic), ("q2", Queue)]),
                actual: actual(&[], &[]),
                owned: Ownership::default(),
                removals: vec![],
                creates: vec![
                    ca("q1", Anycast),
                    ca("q2", Anycast),
                    ca("t1", Multicast),
                    cq("q1"),
                    cq("q2"),
                ],
            },
            Case {
                what: "in place: nothing to do",
                desired: desired(&[("q1", Queue), ("t1", Topic)]),
                actual: actual(&["q1", "t1"], &["q1"]),
                owned: owned(&[("q1", Queue), ("t1", Topic)]),
                removals: vec![],
                creates: vec![],
            },
            Case {
                what: "queue lost its queue only",
                desired: desired(&[("q1", Queue)]),
                actual: actual(&["q1"], &[]),
                owned: owned(&[("q1", Queue)]),
                removals: vec![],
                creates: vec![cq("q1")],
            },
            Case {
                what: "removed queue and topic of ours; foreign names kept",
                desired: desired(&[]),
                actual: actual(&["q1", "t1", "foreign"], &["q1", "foreign", "sub1"]),
                owned: owned(&[("q1", Queue), ("t1", Topic)]),
                removals: vec![dq("q1"), da("q1"), da("t1")],
                creates: vec![],
            },
            Case {
                what: "never-owned names are left alone after a restart",
                desired: desired(&[("q1", Queue)]),
                actual: actual(&["q1", "old"], &["q1", "old"]),
                owned: Ownership::default(),
                removals: vec![],
                creates: vec![],
            },
            Case {
                what: "queue becomes topic: queue and address go, multicast address comes",
                desired: desired(&[("x", Topic)]),
                actual: actual(&["x"], &["x"]),
                owned: owned(&[("x", Queue)]),
                removals: vec![dq("x"), da("x")],
                creates: vec![ca("x", Multicast)],
            },
            Case {
                what: "topic becomes queue",
                desired: desired(&[("x", Queue)]),
                actual: actual(&["x"], &[]),
                owned: owned(&[("x", Topic)]),
                removals: vec![da("x")],
                creates: vec![ca("x", Anycast), cq("x")],
            },
            Case {
                what: "owned but already gone: nothing",
                desired: desired(&[]),
                actual: actual(&[], &[]),
                owned: owned(&[("gone", Queue)]),
                removals: vec![],
                creates: vec![],
            },
        ];
        for c in cases {
            let p = plan(&c.desired, &c.actual, &c.owned);
            assert_eq!(p.removals, c.removals, "{}", c.what);
            assert_eq!(p.creates, c.creates, "{}", c.what);
        }
    }

    #[test]
    fn ownership_is_kept_until_gone() {
        let mut o = Ownership::default();
        let d = desired(&[("q1", Queue), ("t1", Topic)]);
        o.update(&d, &actual(&["q1", "t1"], &["q1"]));
        assert_eq!(o.kind("q1"), Some(Queue));
        // q1 removed from the config but still on the broker (holding messages): still ours.
        let d2 = desired(&[("t1", Topic)]);
        o.update(&d2, &actual(&["q1", "t1"], &["q1"]));
        assert_eq!(o.kind("q1"), Some(Queue));
        // Gone from the broker: forgotten.
        o.update(&d2, &actual(&["t1"], &[]));
        assert_eq!(o.kind("q1"), None);
        // A pending kind change keeps the old kind until the new one is in place.
        let d3 = desired(&[("t1", Queue)]);
        o.update(&d3, &actual(&["t1"], &[]));
        assert_eq!(o.kind("t1"), Some(Topic));
        o.update(&d3, &actual(&["t1"], &["t1"]));
        assert_eq!(o.kind("t1"), Some(Queue));
    }
}
