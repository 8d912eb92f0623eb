//! The pure planner (docs/architecture.md §4 "Topics live on ONE pod", §5): which durable subscription queues sit
//! on a pod other than their topic's, and where each must go. No I/O.
//!
//! Input: the topics of the address set with the broker pods of their cluster ([`topics`]), and per pod the
//! queues bound to each topic as Artemis reports them ([`ObservedQueue`], from `listQueues`). Output
//! ([`plan`]): one [`Move`] per (queue q of topic T, pod P) where P holds q and P is not
//! H = [`maas_model::topic_pod`]`(T, pods)`.
//!
//! A durable subscription queue is any DURABLE, non-temporary MULTICAST queue bound to T: the ones
//! storage-controller makes for `subscription` addresses (`user` `maas-storage-controller`) and the ones AMQP
//! clients make with a durable receiver (`<container-id>.<link-name>`, through a router
//! `<router-id>.<link-name>@<client-container-id>`) move alike. Non-durable subscriptions (temporary UUID queues)
//! and ANYCAST queues never move.

use std::collections::{BTreeMap, BTreeSet};

use maas_model::{AddressKind, BrokerPod, Brokers, Config, cluster_for, topic_pod};

/// A queue as a broker reports it (one `listQueues` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedQueue {
    /// Queue name.
    pub name: String,
    /// The address it is bound to.
    pub address: String,
    /// MULTICAST routing (a subscription of its address); false for ANYCAST.
    pub multicast: bool,
    /// Survives a broker restart.
    pub durable: bool,
    /// A temporary queue (non-durable subscriptions, management reply queues).
    pub temporary: bool,
    /// Messages it holds (including those being delivered).
    pub messages: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// The user it was created with (`maas-storage-controller` for configured subscriptions).
    pub user: Option<String>,
    /// The `listQueues` row's `id` (higher = created later on this broker); None when the row has none.
    pub id: Option<u64>,
}

impl ObservedQueue {
    /// True for a durable subscription of `topic`: durable, not temporary, MULTICAST, bound to `topic`.
    pub fn is_subscription_of(&self, topic: &str) -> bool {
        self.address == topic && self.multicast && self.durable && !self.temporary
    }
}

/// One topic and the broker pods of its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPods {
    /// The topic address.
    pub topic: String,
    /// Its broker cluster.
    pub cluster: String,
    /// The cluster's pods (draining ones included: they may still hold subscriptions).
    pub pods: Vec<BrokerPod>,
}

impl TopicPods {
    /// The pod the topic lives on; None when every pod drains (or there is none).
    pub fn home(&self) -> Option<&BrokerPod> {
        topic_pod(&self.topic, &self.pods)
    }
}

/// The topics of `config` with their cluster's pods from `brokers`, in topic order.
pub fn topics(config: &Config, brokers: &Brokers) -> Vec<TopicPods> {
    config
        .addresses
        .iter()
        .filter(|a| a.kind == AddressKind::Topic)
        .filter_map(|a| {
            let cluster = cluster_for(a, &config.flavors)?;
            Some(TopicPods {
                topic: a.address.clone(),
                pods: brokers.pods(&cluster).to_vec(),
                cluster,
            })
        })
        .collect()
}

/// Which topics each pod must be asked about: pod name -> (the pod, its topics). Every pod of a topic's cluster
/// is asked about that topic.
pub fn listings(topics: &[TopicPods]) -> BTreeMap<String, (BrokerPod, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (BrokerPod, BTreeSet<String>)> = BTreeMap::new();
    for t in topics {
        // A pod that is not Ready cannot be asked (and keeps what it holds until it is back).
        for p in t.pods.iter().filter(|p| p.ready) {
            out.entry(p.name.clone())
                .or_insert_with(|| (p.clone(), BTreeSet::new()))
                .1
                .insert(t.topic.clone());
        }
    }
    out
}

/// What each pod reported: pod name -> topic -> the queues bound to it. A pod missing here could not be listed.
pub type Observed = BTreeMap<String, BTreeMap<String, Vec<ObservedQueue>>>;

/// One queue to move: queue `queue` of topic `topic` from pod `from` to queue `to_queue` on pod `to`. A move to
/// the topic's pod keeps the name (`to_queue == queue`); a MERGE ([`crate::merge`]) empties one of a client's
/// subscription queues into another one on the same pod (`from == to`, `to_queue != queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The topic (the queue's address on both pods).
    pub topic: String,
    /// The queue name on `from`.
    pub queue: String,
    /// The queue the messages go to on `to` (`queue` but for a merge).
    pub to_queue: String,
    /// The pod holding it now.
    pub from: BrokerPod,
    /// The topic's pod.
    pub to: BrokerPod,
    /// The user it was created with, copied to the new queue.
    pub user: Option<String>,
    /// Messages it held when listed.
    pub messages: u64,
    /// Consumers it had when listed (a consumer on the old pod may hold the move up: Artemis' durable
    /// subscription queues take one consumer).
    pub consumers: u64,
}

impl Move {
    /// `<topic>::<queue>`, the fully qualified queue name the link on the old pod uses.
    pub fn fqqn(&self) -> String {
        format!("{}::{}", self.topic, self.queue)
    }

    /// `<topic>::<to_queue>`, the fully qualified queue name the link on the new pod uses.
    pub fn to_fqqn(&self) -> String {
        format!("{}::{}", self.topic, self.to_queue)
    }

    /// True for a merge of two queues of one client subscription (same pod, another queue).
    pub fn is_merge(&self) -> bool {
        self.queue != self.to_queue
    }

    /// `queue <q> of topic <t> <from> -> <to>` (a merge: `queue <q> of topic <t> on <pod> into <to_queue>`), for
    /// logs and `/readyz`.
    pub fn describe(&self) -> String {
        if self.is_merge() {
            format!(
                "queue {} of topic {} on {} into {}",
                self.queue, self.topic, self.from.name, self.to_queue
            )
        } else {
            format!(
                "queue {} of topic {} {} -> {}",
                self.queue, self.topic, self.from.name, self.to.name
            )
        }
    }
}

/// A subscription that cannot move: its topic has no pod that is not draining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub topic: String,
    pub queue: String,
    pub pod: String,
    pub messages: u64,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Queues to move, in (topic, queue, from) order.
    pub moves: Vec<Move>,
    /// Subscription queues already on their topic's pod: (topic, queue).
    pub in_place: BTreeSet<(String, String)>,
    /// Subscription queues whose topic has nowhere to go.
    pub stranded: Vec<Stranded>,
    /// Topics whose pods could not all be listed: topic -> the pods that were not (nothing is known there).
    pub unknown: BTreeMap<String, Vec<String>>,
    /// Merges of a client's subscription queues made through different routers, on the topic's pod
    /// ([`crate::merge::merges`]; empty until the caller adds them).
    pub merges: Vec<Move>,
    /// Groups of such queues not merged now, and why.
    pub unmerged: Vec<crate::merge::Unmerged>,
}

impl Plan {
    /// True when every subscription seen is on its topic's pod and every pod was seen.
    pub fn settled(&self) -> bool {
        self.moves.is_empty() && self.stranded.is_empty() && self.unknown.is_empty()
    }
}

/// Decide the moves: for every topic T with home pod H and every other pod P of its cluster, each durable
/// subscription queue of T on P moves to H. Moves are found even when some pods could not be listed (those are
/// reported in [`Plan::unknown`]); a queue on H and on P moves from P (the copy on H stays, the messages join it).
pub fn plan(topics: &[TopicPods], observed: &Observed) -> Plan {
    let mut out = Plan::default();
    for t in topics {
        let home = t.home();
        for p in &t.pods {
            let Some(by_topic) = observed.get(&p.name) else {
                out.unknown
                    .entry(t.topic.clone())
                    .or_default()
                    .push(p.name.clone());
                continue;
            };
            let queues = by_topic.get(&t.topic).map(Vec::as_slice).unwrap_or(&[]);
            for q in queues.iter().filter(|q| q.is_subscription_of(&t.topic)) {
                match home {
                    Some(h) if h.name == p.name => {
                        out.in_place.insert((t.topic.clone(), q.name.clone()));
                    }
                    // The topic's pod is restarting: its subscriptions wait for it (readiness does not move a
                    // topic), nothing moves now.
                    Some(h) if !h.ready => {
                        out.unknown
                            .entry(t.topic.clone())
                            .or_default()
                            .push(h.name.clone());
                    }
                    Some(h) => out.moves.push(Move {
                        topic: t.topic.clone(),
                        queue: q.name.clone(),
                        to_queue: q.name.clone(),
                        from: p.clone(),
                        to: h.clone(),
                        user: q.user.clone(),
                        messages: q.messages,
                        consumers: q.consumers,
                    }),
                    None => out.stranded.push(Stranded {
                        topic: t.topic.clone(),
                        queue: q.name.clone(),
                        pod: p.name.clone(),
                        messages: q.messages,
                    }),
                }
            }
        }
    }
    // A queue that is also (being) moved is not "in place" yet.
    for m in &out.moves {
        out.in_place.remove(&(m.topic.clone(), m.queue.clone()));
    }
    out.moves.sort_by(|a, b| {
        (&a.topic, &a.queue, &a.from.name).cmp(&(&b.topic, &b.queue, &b.from.name))
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(name: &str, draining: bool) -> BrokerPod {
        BrokerPod {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5672,
            draining,
            provisioned: None,
            ready: true,
        }
    }

    fn sub(name: &str, topic: &str, messages: u64) -> ObservedQueue {
        ObservedQueue {
            name: name.into(),
            address: topic.into(),
            multicast: true,
            durable: true,
            temporary: false,
            messages,
            consumers: 0,
            user: None,
            id: None,
        }
    }

    fn config(text: &str) -> Config {
        let files = BTreeMap::from([
            ("json".to_string(), text.to_string()),
            (
                "flavor.json".to_string(),
                r#"{"own": {"type": "topic"}}"#.to_string(),
            ),
        ]);
        maas_model::parse_config("test", &files, None).unwrap()
    }

    const TWO_TOPICS: &str = r#"{
        "news": {"store_and_forward": true, "multicast": true, "flavor": "shared"},
        "sports": {"store_and_forward": true, "multicast": true, "flavor": "shared"},
        "orders": {"store_and_forward": true, "multicast": false, "flavor": "shared"},
        "chat": {"store_and_forward": false, "multicast": true}
    }"#;

    fn shared_config() -> Config {
        let files = BTreeMap::from([
            ("json".to_string(), TWO_TOPICS.to_string()),
            (
                "flavor.json".to_string(),
                r#"{"shared": {"type": "topic", "shared": true}}"#.to_string(),
            ),
        ]);
        maas_model::parse_config("test", &files, None).unwrap()
    }

    fn brokers(pods: Vec<BrokerPod>) -> Brokers {
        Brokers {
            clusters: BTreeMap::from([("shared".to_string(), pods)]),
        }
    }

    fn one_topic(topic: &str, pods: Vec<BrokerPod>) -> Vec<TopicPods> {
        vec![TopicPods {
            topic: topic.into(),
            cluster: "c".into(),
            pods,
        }]
    }

    /// Two pods; the pod `news` hashes to when both are up, and the other one.
    fn home_and_other() -> (String, String) {
        let pods = [pod("b-0", false), pod("b-1", false)];
        let home = topic_pod("news", &pods).unwrap().name.clone();
        let other = if home == "b-0" { "b-1" } else { "b-0" };
        (home, other.to_string())
    }

    #[test]
    fn topics_are_the_topic_addresses_with_their_cluster_pods() {
        let c = shared_config();
        let b = brokers(vec![pod("b-0", false), pod("b-1", true)]);
        let t = topics(&c, &b);
        let names: Vec<&str> = t.iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(
            names,
            ["news", "sports"],
            "queues and router-only addresses are no topics"
        );
        assert!(t.iter().all(|t| t.cluster == "shared" && t.pods.len() == 2));
        // Every pod of the cluster is asked about every topic of it, draining ones too.
        let l = listings(&t);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l["b-1"].1.iter().map(String::as_str).collect::<Vec<_>>(),
            ["news", "sports"]
        );
        // A topic of its own (unshared) lives on the cluster named after it; without pods it has none.
        let own = config(
            r#"{"alerts": {"store_and_forward": true, "multicast": true, "flavor": "own"}}"#,
        );
        let t = topics(&own, &b);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].cluster, "alerts");
        assert!(t[0].pods.is_empty());
        assert!(t[0].home().is_none());
    }

    #[test]
    fn a_subscription_on_the_wrong_pod_moves_to_the_topics_pod() {
        let (home, other) = home_and_other();
        let t = one_topic("news", vec![pod("b-0", false), pod("b-1", false)]);
        let mut q = sub("sub1", "news", 100);
        q.user = Some("maas-storage-controller".into());
        q.consumers = 1;
        let observed: Observed = BTreeMap::from([
            (
                other.clone(),
                BTreeMap::from([("news".to_string(), vec![q])]),
            ),
            (home.clone(), BTreeMap::new()),
        ]);
        let p = plan(&t, &observed);
        assert_eq!(p.moves.len(), 1);
        let m = &p.moves[0];
        assert_eq!(
            (m.queue.as_str(), m.from.name.as_str(), m.to.name.as_str()),
            ("sub1", other.as_str(), home.as_str())
        );
        assert_eq!(m.user.as_deref(), Some("maas-storage-controller"));
        assert_eq!((m.messages, m.consumers), (100, 1));
        assert_eq!(m.fqqn(), "news::sub1");
        assert!(p.in_place.is_empty() && p.stranded.is_empty() && p.unknown.is_empty());
        assert!(!p.settled());
        assert_eq!(
            m.describe(),
            format!("queue sub1 of topic news {other} -> {home}")
        );
    }

    #[test]
    fn subscriptions_on_their_topics_pod_stay() {
        let (home, other) = home_and_other();
        let t = one_topic("news", vec![pod("b-0", false), pod("b-1", false)]);
        let observed: Observed = BTreeMap::from([
            (
                home.clone(),
                BTreeMap::from([(
                    "news".to_string(),
                    vec![sub("a", "news", 3), sub("b", "news", 0)],
                )]),
            ),
            (other, BTreeMap::new()),
        ]);
        let p = plan(&t, &observed);
        assert!(p.moves.is_empty());
        assert_eq!(p.in_place.len(), 2);
        assert!(p.settled());
    }

    #[test]
    fn draining_moves_the_topic_and_every_subscription_of_it() {
        // b-0 drains: the topic lives on b-1 whatever the hash said before.
        let t = one_topic("news", vec![pod("b-0", true), pod("b-1", false)]);
        let client = sub("Router.A.sub1@client-1", "news", 5);
        let observed: Observed = BTreeMap::from([
            (
                "b-0".to_string(),
                BTreeMap::from([(
                    "news".to_string(),
                    vec![
                        sub("configured", "news", 100),
                        client,
                        sub("empty", "news", 0),
                    ],
                )]),
            ),
            ("b-1".to_string(), BTreeMap::new()),
        ]);
        let p = plan(&t, &observed);
        let moved: Vec<(&str, &str, &str)> = p
            .moves
            .iter()
            .map(|m| (m.queue.as_str(), m.from.name.as_str(), m.to.name.as_str()))
            .collect();
        assert_eq!(
            moved,
            [
                ("Router.A.sub1@client-1", "b-0", "b-1"),
                ("configured", "b-0", "b-1"),
                ("empty", "b-0", "b-1"),
            ],
            "configured and client-made subscriptions move alike; an empty one too (its queue must go)"
        );
    }

    #[test]
    fn only_durable_non_temporary_multicast_queues_of_the_topic_move() {
        let t = one_topic("news", vec![pod("b-0", true), pod("b-1", false)]);
        let mut temporary = sub("6f1c2a3b-0000-4000-8000-000000000001", "news", 4);
        temporary.temporary = true;
        temporary.durable = false;
        let mut non_durable = sub("nd", "news", 1);
        non_durable.durable = false;
        let mut anycast = sub("news", "news", 7);
        anycast.multicast = false;
        let other_address = sub("elsewhere", "sports", 2);
        let observed: Observed = BTreeMap::from([
            (
                "b-0".to_string(),
                BTreeMap::from([(
                    "news".to_string(),
                    vec![
                        temporary,
                        non_durable,
                        anycast,
                        other_address,
                        sub("keep", "news", 1),
                    ],
                )]),
            ),
            ("b-1".to_string(), BTreeMap::new()),
        ]);
        let p = plan(&t, &observed);
        assert_eq!(
            p.moves.iter().map(|m| m.queue.as_str()).collect::<Vec<_>>(),
            ["keep"]
        );
    }

    #[test]
    fn every_pod_draining_strands_the_subscriptions_and_unlisted_pods_are_unknown() {
        let t = one_topic("news", vec![pod("b-0", true), pod("b-1", true)]);
        let observed: Observed = BTreeMap::from([(
            "b-0".to_string(),
            BTreeMap::from([("news".to_string(), vec![sub("s", "news", 9)])]),
        )]);
        let p = plan(&t, &observed);
        assert!(p.moves.is_empty());
        assert_eq!(
            p.stranded,
            [Stranded {
                topic: "news".into(),
                queue: "s".into(),
                pod: "b-0".into(),
                messages: 9
            }]
        );
        assert_eq!(p.unknown["news"], ["b-1"]);
        assert!(!p.settled());
    }

    #[test]
    fn a_queue_on_both_pods_moves_from_the_old_one_and_is_not_in_place_yet() {
        let t = one_topic("news", vec![pod("b-0", true), pod("b-1", false)]);
        let both = BTreeMap::from([("news".to_string(), vec![sub("s", "news", 3)])]);
        let observed: Observed =
            BTreeMap::from([("b-0".to_string(), both.clone()), ("b-1".to_string(), both)]);
        let p = plan(&t, &observed);
        assert_eq!(p.moves.len(), 1);
        assert_eq!(p.moves[0].from.name, "b-0");
        assert!(p.in_place.is_empty());
    }

    #[test]
    fn adding_a_pod_moves_only_the_topics_that_hash_to_it() {
        // Rendezvous placement: with a third pod, only the topics whose home becomes b-2 move, and only to b-2.
        let two = vec![pod("b-0", false), pod("b-1", false)];
        let three = vec![pod("b-0", false), pod("b-1", false), pod("b-2", false)];
        let mut topics3 = Vec::new();
        let mut observed: Observed = BTreeMap::new();
        for i in 0..60 {
            let topic = format!("t{i}");
            let home2 = topic_pod(&topic, &two).unwrap().name.clone();
            observed
                .entry(home2)
                .or_default()
                .insert(topic.clone(), vec![sub(&format!("s{i}"), &topic, 1)]);
            topics3.push(TopicPods {
                topic,
                cluster: "c".into(),
                pods: three.clone(),
            });
        }
        observed.entry("b-2".into()).or_default();
        observed.entry("b-0".into()).or_default();
        observed.entry("b-1".into()).or_default();
        let p = plan(&topics3, &observed);
        assert!(
            !p.moves.is_empty() && p.moves.len() < 40,
            "{}",
            p.moves.len()
        );
        assert!(p.moves.iter().all(|m| m.to.name == "b-2"));
        assert_eq!(p.moves.len() + p.in_place.len(), 60);
    }
}
