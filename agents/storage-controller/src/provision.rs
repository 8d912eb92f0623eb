//! Broker provisioning plan, pure (docs/architecture.md §6): what one broker pod should hold for the addresses of its
//! cluster, compared with what it reports (`getAddressNames` / `getQueueNames`), as ordered operations.
//!
//! - queue address A: an ANYCAST address A and a durable ANYCAST queue A on it;
//! - topic address A: a MULTICAST address A;
//! - subscription S on topic T: a durable MULTICAST queue S bound to address T, on T's pod only
//!   ([`maas_model::topic_pod`]; docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §4). When T's pod
//!   changes, subscription-service moves the queue and its messages; the old (then empty) queue is removed here,
//!   or, with the topic hand-over (`--await-topic-release`), left to subscription-service, which deletes it after
//!   the router-agents moved T's links ([`handed_over`]).
//!
//! **Which names are ours.** Artemis' own names are never touched ([`is_internal`]: `DLQ`, `ExpiryQueue`,
//! `activemq.*`, `$sys.*`, and the UUID-named temporary queues of management clients). Ownership of a QUEUE is
//! recorded on the broker: every queue the controller creates carries `"user": "maas-storage-controller"`
//! ([`QUEUE_USER`]; durable-subscriptions-and-topics.txt §4-§5: stored, read back with `getUser`), so a queue
//! is ours exactly when the broker says so — also after a restart: a queue of ours whose address was removed
//! while the controller was down is removed (once empty), together with its same-named ANYCAST address. Queues made
//! by an operator or a client (another user, or none) are never touched, even when their name is (or was) a maas
//! address. The owner of a queue is looked up ([`owner_lookups`]: `getUser`, `getAddress`) only for queues that
//! are not desired as queues on that broker, once per queue per process ([`Ownership`] caches it).
//! Addresses carry no user: a TOPIC address (no queue of its own) is ours only when it was a maas address of this
//! cluster earlier in this process; one removed while the controller was down stays (it holds no message) until
//! its cluster is removed. Queues made by versions that did not record a user count as foreign.
//!
//! Removing a queue is guarded: the executor destroys it only when `getMessageCount` is 0, else it is reported
//! (metric, log, status) and retried on the next pass; its address goes only after the queue is gone.

use std::collections::{BTreeMap, BTreeSet};

use maas_model::{AddressKind, Config, cluster_for};

/// The `user` of every queue the controller creates (Artemis stores it; `getUser` / `listQueues` read it back):
/// the broker-side record that the queue is ours.
pub const QUEUE_USER: &str = "maas-storage-controller";

/// Who made a queue and where it is bound, as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOwner {
    /// The queue's `user` (None when it has none).
    pub user: Option<String>,
    /// The address it is bound to.
    pub address: String,
}

impl QueueOwner {
    /// A queue this controller created (`user` = [`QUEUE_USER`]) bound to `address`.
    pub fn ours(address: &str) -> QueueOwner {
        QueueOwner {
            user: Some(QUEUE_USER.to_string()),
            address: address.to_string(),
        }
    }

    /// True when the controller made the queue.
    pub fn is_ours(&self) -> bool {
        self.user.as_deref() == Some(QUEUE_USER)
    }
}

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

/// The subscription queues of a cluster (`cluster`: its [`BrokerDesired`]) that are not desired on one of its pods
/// (`for_pod`: what [`for_pod`] gives that pod): their topic lives on another pod. With the topic hand-over
/// (`--await-topic-release`: subscription-service runs), subscription-service moves such a queue to the topic's pod
/// and deletes it after its sweep, once the router-agents moved the links (docs/architecture.md §5); the controller
/// then leaves it alone on this pod ([`Plan::keeping`]) instead of destroying it once empty, which would drop what
/// publishers still routed to this pod send meanwhile.
pub fn handed_over(cluster: &BrokerDesired, for_pod: &BrokerDesired) -> BTreeSet<String> {
    cluster
        .iter()
        .filter(|(name, w)| w.kind == AddressKind::Subscription && !for_pod.contains_key(*name))
        .map(|(name, _)| name.clone())
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

    /// The plan without the removals of `names` (left to someone else: [`handed_over`]).
    pub fn keeping(mut self, names: &BTreeSet<String>) -> Plan {
        self.removals.retain(|op| !names.contains(op.name()));
        self
    }
}

/// What the controller knows is its own on one broker: the names that are (or were, earlier in this process) maas
/// addresses of its cluster, with the kind they were last provisioned as (a name is forgotten only once its broker
/// no longer holds it), and the owner of queues as the broker reported it (or as this process created them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    known: BTreeMap<String, AddressKind>,
    owners: BTreeMap<String, QueueOwner>,
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

    /// The owner of queue `name`, when looked up (or created by this process).
    pub fn owner(&self, name: &str) -> Option<&QueueOwner> {
        self.owners.get(name)
    }

    /// True when the broker says queue `name` is ours.
    pub fn is_our_queue(&self, name: &str) -> bool {
        self.owner(name).is_some_and(QueueOwner::is_ours)
    }

    /// Record the owner of queue `name` (looked up, or created now).
    pub fn set_owner(&mut self, name: &str, owner: QueueOwner) {
        self.owners.insert(name.to_string(), owner);
    }

    /// Forget the owners of queues the broker no longer lists (a new queue of the same name is looked up again).
    pub fn retain_owners(&mut self, actual: &Actual) {
        self.owners.retain(|q, _| actual.queues.contains(q));
    }

    /// After a pass: every desired name is ours with its desired kind once provisioned; a name no longer desired
    /// stays ours until `actual` shows it gone.
    pub fn update(&mut self, desired: &BrokerDesired, actual: &Actual) {
        self.known.retain(|name, _| {
            desired.contains_key(name)
                || actual.addresses.contains(name)
                || actual.queues.contains(name)
        });
        self.retain_owners(actual);
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

/// The queues on a broker whose owner must be asked for before planning: every queue not desired there as a
/// queue or subscription (a removal or kind-change candidate) whose owner is not known yet. Desired queues are
/// kept whoever made them, so a broker holding what it should needs no lookup at all (also after a restart).
pub fn owner_lookups(desired: &BrokerDesired, actual: &Actual, owned: &Ownership) -> Vec<String> {
    actual
        .queues
        .iter()
        .filter(|q| {
            !desired
                .get(*q)
                .is_some_and(|w| matches!(w.kind, AddressKind::Queue | AddressKind::Subscription))
                && owned.owner(q).is_none()
        })
        .cloned()
        .collect()
}

/// The short hash of what a broker pod should hold (its [`BrokerDesired`], as [`for_pod`] gives it): the first 16
/// hex characters of the SHA-256 of one line `<name> TAB <kind> TAB <topic or empty> LF` per address, in name
/// order. The value of the pod annotation [`crate::PROVISIONED_ANNOTATION`] once the pod holds all of it: a
/// changed set changes it, the same set (in any order, after any restart) gives the same value.
pub fn provisioned_hash(desired: &BrokerDesired) -> String {
    // The one definition router-agent compares with (maas_model::pods).
    maas_model::pods::provisioned_hash(
        desired
            .iter()
            .map(|(name, want)| (name.as_str(), want.kind, want.topic.as_deref())),
    )
}

/// The plan that brings a broker from `actual` to `desired`. `owned` says which queues the broker reports as ours
/// ([`Ownership::owner`], filled for every name [`owner_lookups`] asked for) and which addresses were ours in this
/// process.
///
/// Removals: a queue of ours not desired here (with its address when it is bound to the address of its own name);
/// a queue of ours whose name is now a topic (queue -> topic); an address of ours of this process no longer
/// desired (a topic's, or a queue's whose queue is already gone); our topic address whose name is now a queue.
/// Foreign queues and their addresses are never removed.
pub fn plan(desired: &BrokerDesired, actual: &Actual, owned: &Ownership) -> Plan {
    // name -> (destroy the queue, delete the address)
    let mut removals: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut create_addresses = Vec::new();
    let mut create_queues = Vec::new();
    let ours = |name: &str| owned.is_our_queue(name);
    for (name, want) in desired {
        let was = owned.kind(name);
        let queue_there = actual.queues.contains(name);
        let mut has_address = actual.addresses.contains(name);
        match &want.kind {
            AddressKind::Queue => {
                if was == Some(AddressKind::Topic) && has_address {
                    // Topic -> queue: our MULTICAST address goes first.
                    removals.entry(name.clone()).or_default().1 = true;
                    has_address = false;
                }
                if !has_address {
                    create_addresses.push(Op::CreateAddress {
                        name: name.clone(),
                        routing: Routing::Anycast,
                    });
                }
                if !queue_there {
                    create_queues.push(Op::CreateQueue { name: name.clone() });
                }
            }
            AddressKind::Topic => {
                let our_queue = queue_there && ours(name);
                let our_leftover = !queue_there && has_address && was == Some(AddressKind::Queue);
                if our_queue || our_leftover {
                    // Queue -> topic: our queue (once empty) and its ANYCAST address go first.
                    let r = removals.entry(name.clone()).or_default();
                    r.0 = our_queue;
                    r.1 = has_address;
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
                    && !queue_there
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
    // Our queues (the broker says so) that are not wanted here any more.
    for q in &actual.queues {
        if desired.contains_key(q) || !ours(q) {
            continue;
        }
        let own_address = owned.owner(q).is_some_and(|o| &o.address == q);
        let r = removals.entry(q.clone()).or_default();
        r.0 = true;
        r.1 |= own_address && actual.addresses.contains(q);
    }
    // Addresses of ours (this process) that are not wanted any more and have no queue of their name left that is
    // not ours.
    for (name, kind) in owned.known() {
        if desired.contains_key(name)
            || !actual.addresses.contains(name)
            || (actual.queues.contains(name) && !ours(name))
        {
            continue;
        }
        match kind {
            AddressKind::Topic => removals.entry(name.clone()).or_default().1 = true,
            AddressKind::Queue if !actual.queues.contains(name) => {
                removals.entry(name.clone()).or_default().1 = true;
            }
            _ => {}
        }
    }
    let mut ops = Vec::new();
    for (name, (queue, address)) in removals {
        if queue && actual.queues.contains(&name) {
            ops.push(Op::DestroyQueue { name: name.clone() });
        }
        if address && actual.addresses.contains(&name) {
            ops.push(Op::DeleteAddress { name });
        }
    }
    create_addresses.extend(create_queues);
    Plan {
        removals: ops,
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
            owners: BTreeMap::new(),
        }
    }

    /// `o` with queue owners as the broker reports them: (queue, user, address).
    fn with_owners(mut o: Ownership, owners: &[(&str, Option<&str>, &str)]) -> Ownership {
        for (q, user, address) in owners {
            o.set_owner(
                q,
                QueueOwner {
                    user: user.map(str::to_string),
                    address: address.to_string(),
                },
            );
        }
        o
    }

    const US: Option<&str> = Some(QUEUE_USER);

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
    fn moved_subscription_queues_are_left_to_the_handover() {
        let sub = |topic: &str| Want {
            kind: AddressKind::Subscription,
            topic: Some(topic.into()),
        };
        let cluster: BrokerDesired = BTreeMap::from([
            ("news".to_string(), Want::from(AddressKind::Topic)),
            ("s1".to_string(), sub("news")),
            ("s2".to_string(), sub("news")),
            ("q".to_string(), Want::from(AddressKind::Queue)),
        ]);
        // A pod that holds s2 only (the pod of s1's topic is another): s1 is handed over, nothing else.
        let mut here = cluster.clone();
        here.remove("s1");
        assert_eq!(
            handed_over(&cluster, &here),
            BTreeSet::from(["s1".to_string()])
        );
        assert!(handed_over(&cluster, &cluster).is_empty());
        // The plan keeps the old queue, and only its removals go.
        let plan = Plan {
            removals: vec![
                Op::DestroyQueue { name: "s1".into() },
                Op::DestroyQueue { name: "old".into() },
                Op::DeleteAddress { name: "old".into() },
            ],
            creates: vec![Op::CreateQueue { name: "q".into() }],
        };
        let kept = plan.keeping(&BTreeSet::from(["s1".to_string()]));
        assert_eq!(
            kept.removals,
            vec![
                Op::DestroyQueue { name: "old".into() },
                Op::DeleteAddress { name: "old".into() }
            ]
        );
        assert_eq!(kept.creates, vec![Op::CreateQueue { name: "q".into() }]);
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
                owned: with_owners(
                    owned(&[("q1", Queue), ("t1", Topic)]),
                    &[
                        ("q1", US, "q1"),
                        ("foreign", None, "foreign"),
                        ("sub1", Some("alice"), "t1"),
                    ],
                ),
                removals: vec![dq("q1"), da("q1"), da("t1")],
                creates: vec![],
            },
            Case {
                what: "after a restart (nothing known in process): a queue of ours no longer desired goes with its \
                       address; an operator's queue (no user) and a client's (another user) stay",
                desired: desired(&[("q1", Queue)]),
                actual: actual(&["q1", "old", "ops", "app"], &["q1", "old", "ops", "app"]),
                owned: with_owners(
                    Ownership::default(),
                    &[
                        ("old", US, "old"),
                        ("ops", None, "ops"),
                        ("app", Some("app-user"), "app"),
                    ],
                ),
                removals: vec![dq("old"), da("old")],
                creates: vec![],
            },
            Case {
                what: "owner not looked up: never removed on a guess",
                desired: desired(&[]),
                actual: actual(&["old"], &["old"]),
                owned: Ownership::default(),
                removals: vec![],
                creates: vec![],
            },
            Case {
                what: "an operator's queue whose name was a maas address of this process stays, with its address",
                desired: desired(&[]),
                actual: actual(&["ops"], &["ops"]),
                owned: with_owners(owned(&[("ops", Queue)]), &[("ops", None, "ops")]),
                removals: vec![],
                creates: vec![],
            },
            Case {
                what: "our subscription queue no longer here: the queue goes, not the address of its name",
                desired: desired(&[]),
                actual: actual(&["s1", "t1"], &["s1"]),
                owned: with_owners(Ownership::default(), &[("s1", US, "t1")]),
                removals: vec![dq("s1")],
                creates: vec![],
            },
            Case {
                what: "queue becomes topic: queue and address go, multicast address comes",
                desired: desired(&[("x", Topic)]),
                actual: actual(&["x"], &["x"]),
                owned: with_owners(owned(&[("x", Queue)]), &[("x", US, "x")]),
                removals: vec![dq("x"), da("x")],
                creates: vec![ca("x", Multicast)],
            },
            Case {
                what: "queue becomes topic after a restart: our queue is known from the broker",
                desired: desired(&[("x", Topic)]),
                actual: actual(&["x"], &["x"]),
                owned: with_owners(Ownership::default(), &[("x", US, "x")]),
                removals: vec![dq("x"), da("x")],
                creates: vec![ca("x", Multicast)],
            },
            Case {
                what: "an operator's queue named like a new topic is not removed",
                desired: desired(&[("x", Topic)]),
                actual: actual(&["x"], &["x"]),
                owned: with_owners(owned(&[("x", Queue)]), &[("x", None, "x")]),
                removals: vec![],
                creates: vec![],
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

    #[test]
    fn owner_lookups_only_for_queues_not_desired_as_queues() {
        let d = desired(&[("q1", Queue), ("t1", Topic)]);
        let a = actual(&["q1", "t1", "x"], &["q1", "t1", "x", "y"]);
        let mut o = Ownership::default();
        // q1 is desired as a queue: kept whoever made it, no lookup. t1 (a topic now) and x, y are candidates.
        assert_eq!(owner_lookups(&d, &a, &o), vec!["t1", "x", "y"]);
        o.set_owner("x", QueueOwner::ours("x"));
        o.set_owner(
            "y",
            QueueOwner {
                user: None,
                address: "y".into(),
            },
        );
        assert_eq!(owner_lookups(&d, &a, &o), vec!["t1"]);
        // Gone from the broker: forgotten, a new queue of that name is asked for again.
        o.retain_owners(&actual(&[], &["y"]));
        assert!(o.owner("x").is_none());
        assert!(!o.is_our_queue("y") && o.owner("y").is_some());
        // Everything desired and in place (e.g. right after a restart): nothing to ask.
        let a = actual(&["q1", "t1"], &["q1"]);
        assert!(owner_lookups(&d, &a, &Ownership::default()).is_empty());
    }

    #[test]
    fn provisioned_hash_is_stable_and_changes_with_the_set() {
        let d = desired(&[("q1", Queue), ("t1", Topic)]);
        let h = provisioned_hash(&d);
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        // Same set built in another order: same value.
        let mut d2 = BrokerDesired::new();
        d2.insert("t1".into(), Topic.into());
        d2.insert("q1".into(), Queue.into());
        assert_eq!(provisioned_hash(&d2), h);
        // The documented form.
        let full = maas_source::snapshot::hex_sha256(b"q1\tqueue\t\nt1\ttopic\t\n");
        assert_eq!(h, full[..16]);
        // Another set, another kind, another topic: another value.
        assert_ne!(provisioned_hash(&desired(&[("q1", Queue)])), h);
        assert_ne!(
            provisioned_hash(&desired(&[("q1", Topic), ("t1", Topic)])),
            h
        );
        let sub = |t: &str| -> BrokerDesired {
            BTreeMap::from([(
                "s".to_string(),
                Want {
                    kind: AddressKind::Subscription,
                    topic: Some(t.into()),
                },
            )])
        };
        assert_ne!(provisioned_hash(&sub("a")), provisioned_hash(&sub("b")));
        assert_eq!(provisioned_hash(&BrokerDesired::new()).len(), 16);
    }
}
