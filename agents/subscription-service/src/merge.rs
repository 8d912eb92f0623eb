//! Merging the subscription queues ONE client made through different routers (docs/architecture.md §5), pure: no
//! I/O.
//!
//! Through a router, Artemis names a durable subscription's queue `<router-id>.<link-name>@<client-container-id>`
//! (docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §1). The subscription's identity is
//! `<link-name>@<client-container-id>`; the router id is that of the router the client came through. A client that
//! comes back through ANOTHER router gets a second, empty queue of the same topic, its backlog stranded in the
//! first. With the shipped manifests a router's id is its pod name (manifests/README.md "Stable router ids"), so
//! the router part of a name can be told from the identity by knowing the router pod names: ids may contain `.`
//! (`Router.A`), so a name is split only where a KNOWN router id ends ([`split`]).
//!
//! [`merges`]: among the durable subscription queues of topic T on T's pod, the client-made ones (not
//! `maas-storage-controller`'s) whose name is `<known router id>.<identity>` are grouped by identity. A group of two
//! or more queues is merged into ONE target:
//! - the queue with consumers, when exactly one has (the client is attached there); several with consumers: not
//!   merged ([`Unmerged::Consumers`]);
//! - none with consumers: the newest, by the `listQueues` row `id` (higher = created later; the row has it,
//!   durable-subscriptions-and-topics.txt §5); a row without an id: not merged ([`Unmerged::NoIds`]).
//!
//! Every other queue of the group is a SOURCE: a [`Move`] from T's pod to T's pod, into the target queue, run as a
//! sweep (the mover: at least once, settled on the source only after the target accepted; the source deleted once
//! it counts 0). Never merged: a name that no known router id fits, or that SEVERAL do (`Router` and `Router.A`
//! both fit `Router.A.sub1@c`: [`Unmerged::Ambiguous`]), configured subscriptions, queues of another topic or on
//! another pod, and a group one of whose queues is still being moved to T's pod (it is merged once it arrived).
//!
//! Duplicates: while both queues exist, every message published to T is put in both, so the messages published
//! between the second queue's creation and the merge reach the client twice (counted by the moved messages'
//! `x-opt-maas-moved-from` annotation).

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::{Move, Observed, ObservedQueue, TopicPods};

/// The `user` of the queues storage-controller makes for configured subscriptions: never merged.
pub const CONFIGURED_OWNER: &str = "maas-storage-controller";

/// How a queue name reads against the known router ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split<'a> {
    /// `<router>.<identity>`: exactly one known router id fits, and the rest is `<link-name>@<container-id>`.
    Client { router: &'a str, identity: &'a str },
    /// No known router id fits: not a queue made through a known router (never merged).
    Unknown,
    /// Several known router ids fit (e.g. `Router` and `Router.A` for `Router.A.sub1@c`): which part is the router
    /// id cannot be told, so the queue is never merged. Shortest first.
    Ambiguous(Vec<&'a str>),
}

/// `<link-name>@<client-container-id>`: an `@` with something before and after it.
fn is_identity(s: &str) -> bool {
    match (s.find('@'), s.rfind('@')) {
        (Some(first), Some(last)) => first > 0 && last + 1 < s.len(),
        _ => false,
    }
}

/// Splits a queue name at the end of a known router id (see [`Split`]).
pub fn split<'a>(name: &'a str, routers: &'a BTreeSet<String>) -> Split<'a> {
    let fits: Vec<(&'a str, &'a str)> = name
        .match_indices('.')
        .filter_map(|(i, _)| {
            let rest = &name[i + 1..];
            let router = routers.get(&name[..i])?;
            is_identity(rest).then_some((router.as_str(), rest))
        })
        .collect();
    match fits.as_slice() {
        [] => Split::Unknown,
        [(router, identity)] => Split::Client { router, identity },
        _ => Split::Ambiguous(fits.iter().map(|(r, _)| *r).collect()),
    }
}

/// A group of one client's queues not merged in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmerged {
    /// Several of the queues have consumers (the client is attached through several routers): which one it keeps
    /// is not known; merged once only one has.
    Consumers {
        topic: String,
        pod: String,
        identity: String,
        queues: Vec<String>,
    },
    /// No queue has a consumer and the broker gave no queue ids: which one is newest is not known.
    NoIds {
        topic: String,
        pod: String,
        identity: String,
        queues: Vec<String>,
    },
    /// A queue name that several known router ids fit.
    Ambiguous {
        topic: String,
        pod: String,
        queue: String,
        routers: Vec<String>,
    },
}

impl Unmerged {
    /// A short reason, the metric label: `consumers`, `no-ids`, `ambiguous`.
    pub fn reason(&self) -> &'static str {
        match self {
            Unmerged::Consumers { .. } => "consumers",
            Unmerged::NoIds { .. } => "no-ids",
            Unmerged::Ambiguous { .. } => "ambiguous",
        }
    }

    /// For logs and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            Unmerged::Consumers {
                topic,
                pod,
                identity,
                queues,
            } => format!(
                "subscription {identity} of topic {topic} on {pod}: queues {} all have consumers, not merged",
                queues.join(", ")
            ),
            Unmerged::NoIds {
                topic,
                pod,
                identity,
                queues,
            } => format!(
                "subscription {identity} of topic {topic} on {pod}: queues {} have no consumer and the broker gives no queue ids (which is newest?), not merged",
                queues.join(", ")
            ),
            Unmerged::Ambiguous {
                topic,
                pod,
                queue,
                routers,
            } => format!(
                "queue {queue} of topic {topic} on {pod}: router ids {} all fit its name, not merged",
                routers.join(", ")
            ),
        }
    }
}

/// The merges on each topic's pod (see the module documentation): one [`Move`] per source queue (`from == to` =
/// the topic's pod, `to_queue` the target), in (topic, target, source) order, and the groups not merged. `routers`:
/// the known router ids; `moves`: the moves of this pass (a group with a queue among them waits).
pub fn merges(
    topics: &[TopicPods],
    observed: &Observed,
    routers: &BTreeSet<String>,
    moves: &[Move],
) -> (Vec<Move>, Vec<Unmerged>) {
    let mut out = Vec::new();
    let mut unmerged = Vec::new();
    if routers.is_empty() {
        return (out, unmerged);
    }
    for t in topics {
        let Some(home) = t.home().filter(|h| h.ready) else {
            continue;
        };
        let Some(queues) = observed.get(&home.name).and_then(|q| q.get(&t.topic)) else {
            continue;
        };
        let moving: BTreeSet<&str> = moves
            .iter()
            .filter(|m| m.topic == t.topic)
            .map(|m| m.queue.as_str())
            .collect();
        let mut groups: BTreeMap<&str, Vec<&ObservedQueue>> = BTreeMap::new();
        for q in queues.iter().filter(|q| {
            q.is_subscription_of(&t.topic) && q.user.as_deref() != Some(CONFIGURED_OWNER)
        }) {
            match split(&q.name, routers) {
                Split::Client { identity, .. } => groups.entry(identity).or_default().push(q),
                Split::Unknown => {}
                Split::Ambiguous(fits) => unmerged.push(Unmerged::Ambiguous {
                    topic: t.topic.clone(),
                    pod: home.name.clone(),
                    queue: q.name.clone(),
                    routers: fits.iter().map(|r| r.to_string()).collect(),
                }),
            }
        }
        for (identity, mut group) in groups {
            if group.len() < 2 || group.iter().any(|q| moving.contains(q.name.as_str())) {
                continue;
            }
            group.sort_by(|a, b| a.name.cmp(&b.name));
            let names = || group.iter().map(|q| q.name.clone()).collect::<Vec<_>>();
            let attached: Vec<&&ObservedQueue> = group.iter().filter(|q| q.consumers > 0).collect();
            let target = match attached.as_slice() {
                [one] => one.name.clone(),
                [] => {
                    let ids: Option<Vec<u64>> = group.iter().map(|q| q.id).collect();
                    let newest = ids.and_then(|ids| {
                        let max = ids.iter().copied().max()?;
                        // Equal ids tell nothing.
                        (ids.iter().filter(|i| **i == max).count() == 1)
                            .then(|| group.iter().find(|q| q.id == Some(max)))
                            .flatten()
                    });
                    match newest {
                        Some(q) => q.name.clone(),
                        None => {
                            unmerged.push(Unmerged::NoIds {
                                topic: t.topic.clone(),
                                pod: home.name.clone(),
                                identity: identity.to_string(),
                                queues: names(),
                            });
                            continue;
                        }
                    }
                }
                _ => {
                    unmerged.push(Unmerged::Consumers {
                        topic: t.topic.clone(),
                        pod: home.name.clone(),
                        identity: identity.to_string(),
                        queues: names(),
                    });
                    continue;
                }
            };
            for q in group.iter().filter(|q| q.name != target) {
                out.push(Move {
                    topic: t.topic.clone(),
                    queue: q.name.clone(),
                    to_queue: target.clone(),
                    from: home.clone(),
                    to: home.clone(),
                    user: q.user.clone(),
                    messages: q.messages,
                    consumers: q.consumers,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.topic, &a.to_queue, &a.queue).cmp(&(&b.topic, &b.to_queue, &b.queue)));
    (out, unmerged)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use maas_model::BrokerPod;

    fn ids(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

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

    fn sub(name: &str, messages: u64, consumers: u64, id: Option<u64>) -> ObservedQueue {
        ObservedQueue {
            name: name.into(),
            address: "news".into(),
            multicast: true,
            durable: true,
            temporary: false,
            messages,
            consumers,
            user: Some("maas".into()),
            id,
        }
    }

    /// `news` on b-0 (draining: its home is b-1) and b-1 holding `queues`.
    fn on_home(queues: Vec<ObservedQueue>) -> (Vec<TopicPods>, Observed) {
        let topics = vec![TopicPods {
            topic: "news".into(),
            cluster: "c".into(),
            pods: vec![pod("b-0", true), pod("b-1", false)],
        }];
        let observed: Observed = BTreeMap::from([
            ("b-0".to_string(), BTreeMap::new()),
            (
                "b-1".to_string(),
                BTreeMap::from([("news".to_string(), queues)]),
            ),
        ]);
        (topics, observed)
    }

    fn merged(m: &[Move]) -> Vec<(&str, &str)> {
        m.iter()
            .map(|m| (m.queue.as_str(), m.to_queue.as_str()))
            .collect()
    }

    #[test]
    fn a_name_splits_only_where_a_known_router_id_ends() {
        let routers = ids(&["router-0", "Router.A", "maas-router-1"]);
        assert_eq!(
            split("router-0.sub1@c1", &routers),
            Split::Client {
                router: "router-0",
                identity: "sub1@c1"
            }
        );
        // An id with a dot (the recorded router was `Router.Check`).
        assert_eq!(
            split("Router.A.sub1@check-client", &routers),
            Split::Client {
                router: "Router.A",
                identity: "sub1@check-client"
            }
        );
        // Dots and `@` in the link name and the container id stay in the identity.
        assert_eq!(
            split("maas-router-1.a.b@host@x.y", &routers),
            Split::Client {
                router: "maas-router-1",
                identity: "a.b@host@x.y"
            }
        );
        for unknown in [
            "unknown-router.sub1@c1",
            "Router.sub1@c1",    // `Router` is not a known id (only `Router.A` is)
            "router-0",          // nothing after the id
            "router-0.sub1",     // straight to the broker: `<container>.<link>`, no `@`
            "router-0.@c1",      // no link name
            "router-0.sub1@",    // no container id
            "router-00.sub1@c1", // a prefix of a known id is not that id
            "xrouter-0.sub1@c1", // nor is a name ending with one
            "news",              // a configured subscription's plain name
        ] {
            assert_eq!(split(unknown, &routers), Split::Unknown, "{unknown}");
        }
        assert_eq!(split("router-0.sub1@c1", &BTreeSet::new()), Split::Unknown);
    }

    #[test]
    fn a_name_that_two_known_ids_fit_is_ambiguous_and_never_merged() {
        // `Router` + link `A.sub1`, or `Router.A` + link `sub1`: cannot be told, so neither is guessed.
        let routers = ids(&["Router", "Router.A", "Router.B"]);
        assert_eq!(
            split("Router.A.sub1@c1", &routers),
            Split::Ambiguous(vec!["Router", "Router.A"])
        );
        assert_eq!(
            split("Router.sub1@c1", &routers),
            Split::Client {
                router: "Router",
                identity: "sub1@c1"
            },
            "only one id fits: `Router.sub1@c1` cannot be read with `Router.A` or `Router.B`"
        );
        let (topics, observed) = on_home(vec![
            sub("Router.A.sub1@c1", 5, 0, Some(10)),
            sub("Router.B.sub1@c1", 0, 0, Some(20)),
        ]);
        let (m, unmerged) = merges(&topics, &observed, &routers, &[]);
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(unmerged.len(), 2, "both names: {unmerged:?}");
        assert!(unmerged.iter().all(|u| u.reason() == "ambiguous"));
        assert_eq!(
            unmerged[0].describe(),
            "queue Router.A.sub1@c1 of topic news on b-1: router ids Router, Router.A all fit its name, not merged"
        );
        // Without `Router` among the ids both split, and merge.
        let (m, unmerged) = merges(&topics, &observed, &ids(&["Router.A", "Router.B"]), &[]);
        assert_eq!(merged(&m), [("Router.A.sub1@c1", "Router.B.sub1@c1")]);
        assert!(unmerged.is_empty());
    }

    #[test]
    fn the_queue_with_the_consumer_takes_the_others() {
        let routers = ids(&["router-0", "router-1", "router-2"]);
        let (topics, observed) = on_home(vec![
            sub("router-0.sub1@c1", 50, 0, Some(30)),
            sub("router-1.sub1@c1", 10, 1, Some(12)),
            sub("router-2.sub1@c1", 3, 0, Some(40)),
            // Another subscription of the same client, and the same link of another client: groups of their own.
            sub("router-0.sub2@c1", 7, 0, Some(31)),
            sub("router-0.sub1@c2", 7, 0, Some(32)),
        ]);
        let (m, unmerged) = merges(&topics, &observed, &routers, &[]);
        assert!(unmerged.is_empty());
        assert_eq!(
            merged(&m),
            [
                ("router-0.sub1@c1", "router-1.sub1@c1"),
                ("router-2.sub1@c1", "router-1.sub1@c1"),
            ],
            "the attached queue wins even though it is the oldest"
        );
        let first = &m[0];
        assert!(first.is_merge());
        assert_eq!(
            (first.from.name.as_str(), first.to.name.as_str()),
            ("b-1", "b-1")
        );
        assert_eq!((first.messages, first.user.as_deref()), (50, Some("maas")));
        assert_eq!(first.fqqn(), "news::router-0.sub1@c1");
        assert_eq!(first.to_fqqn(), "news::router-1.sub1@c1");
        assert_eq!(
            first.describe(),
            "queue router-0.sub1@c1 of topic news on b-1 into router-1.sub1@c1"
        );
    }

    #[test]
    fn without_consumers_the_newest_queue_takes_the_others() {
        let routers = ids(&["router-0", "router-1"]);
        let (topics, observed) = on_home(vec![
            sub("router-0.sub1@c1", 50, 0, Some(1800)),
            sub("router-1.sub1@c1", 10, 0, Some(1733)),
        ]);
        let (m, _) = merges(&topics, &observed, &routers, &[]);
        assert_eq!(
            merged(&m),
            [("router-1.sub1@c1", "router-0.sub1@c1")],
            "higher id = created later"
        );
    }

    #[test]
    fn groups_that_cannot_be_decided_are_left_alone() {
        let routers = ids(&["router-0", "router-1"]);
        // Attached through both routers.
        let (topics, observed) = on_home(vec![
            sub("router-0.sub1@c1", 1, 1, Some(1)),
            sub("router-1.sub1@c1", 1, 1, Some(2)),
        ]);
        let (m, unmerged) = merges(&topics, &observed, &routers, &[]);
        assert!(m.is_empty());
        assert_eq!(
            unmerged,
            [Unmerged::Consumers {
                topic: "news".into(),
                pod: "b-1".into(),
                identity: "sub1@c1".into(),
                queues: vec!["router-0.sub1@c1".into(), "router-1.sub1@c1".into()],
            }]
        );
        // No consumer and no ids (or equal ones): which is newest is unknown.
        for (a, b) in [(None, Some(2)), (Some(2), Some(2))] {
            let (topics, observed) = on_home(vec![
                sub("router-0.sub1@c1", 1, 0, a),
                sub("router-1.sub1@c1", 1, 0, b),
            ]);
            let (m, unmerged) = merges(&topics, &observed, &routers, &[]);
            assert!(m.is_empty());
            assert_eq!(unmerged.len(), 1);
            assert_eq!(unmerged[0].reason(), "no-ids");
        }
    }

    #[test]
    fn only_client_queues_of_the_topic_on_its_pod_with_a_known_router_merge() {
        let routers = ids(&["router-0", "router-1"]);
        let mut configured = sub("router-0.sub1@c1", 5, 0, Some(1));
        configured.user = Some(CONFIGURED_OWNER.into());
        let mut temporary = sub("router-0.sub9@c1", 5, 0, Some(2));
        temporary.temporary = true;
        temporary.durable = false;
        let mut anycast = sub("router-0.sub8@c1", 5, 0, Some(3));
        anycast.multicast = false;
        let mut temporary2 = temporary.clone();
        temporary2.name = "router-1.sub9@c1".into();
        let mut anycast2 = anycast.clone();
        anycast2.name = "router-1.sub8@c1".into();
        let mut other_topic = sub("router-0.sub7@c1", 5, 0, Some(4));
        other_topic.address = "sports".into();
        let mut other_topic2 = other_topic.clone();
        other_topic2.name = "router-1.sub7@c1".into();
        let (topics, observed) = on_home(vec![
            configured,
            sub("router-1.sub1@c1", 5, 0, Some(5)),
            temporary,
            temporary2,
            anycast,
            anycast2,
            other_topic,
            other_topic2,
            sub("unknown-router.sub1@c1", 5, 0, Some(6)),
        ]);
        let (m, unmerged) = merges(&topics, &observed, &routers, &[]);
        assert!(m.is_empty(), "{m:?}");
        assert!(unmerged.is_empty());

        // The queues on a pod that is not the topic's are moved (plan::plan), not merged there.
        let topics = vec![TopicPods {
            topic: "news".into(),
            cluster: "c".into(),
            pods: vec![pod("b-0", true), pod("b-1", false)],
        }];
        let observed: Observed = BTreeMap::from([
            (
                "b-0".to_string(),
                BTreeMap::from([(
                    "news".to_string(),
                    vec![
                        sub("router-0.sub1@c1", 5, 0, Some(1)),
                        sub("router-1.sub1@c1", 5, 0, Some(2)),
                    ],
                )]),
            ),
            ("b-1".to_string(), BTreeMap::new()),
        ]);
        let (m, _) = merges(&topics, &observed, &routers, &[]);
        assert!(m.is_empty());
    }

    #[test]
    fn a_group_waits_while_one_of_its_queues_is_still_moved_to_the_topics_pod() {
        let routers = ids(&["router-0", "router-1"]);
        let (topics, mut observed) = on_home(vec![
            sub("router-0.sub1@c1", 5, 0, Some(1)),
            sub("router-1.sub1@c1", 5, 0, Some(2)),
        ]);
        // router-0's queue is on the old pod too (copied, not swept yet).
        observed.insert(
            "b-0".to_string(),
            BTreeMap::from([(
                "news".to_string(),
                vec![sub("router-0.sub1@c1", 2, 0, Some(7))],
            )]),
        );
        let p = crate::plan::plan(&topics, &observed);
        assert_eq!(p.moves.len(), 1);
        let (m, unmerged) = merges(&topics, &observed, &routers, &p.moves);
        assert!(m.is_empty() && unmerged.is_empty(), "{m:?}");
        // Swept: merged on the next pass.
        observed.insert("b-0".to_string(), BTreeMap::new());
        let p = crate::plan::plan(&topics, &observed);
        let (m, _) = merges(&topics, &observed, &routers, &p.moves);
        assert_eq!(merged(&m), [("router-0.sub1@c1", "router-1.sub1@c1")]);
    }

    #[test]
    fn no_known_router_ids_no_merges() {
        let (topics, observed) = on_home(vec![
            sub("router-0.sub1@c1", 5, 0, Some(1)),
            sub("router-1.sub1@c1", 5, 0, Some(2)),
        ]);
        let (m, unmerged) = merges(&topics, &observed, &BTreeSet::new(), &[]);
        assert!(m.is_empty() && unmerged.is_empty());
    }
}
