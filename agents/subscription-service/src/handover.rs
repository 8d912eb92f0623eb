//! The hand-over of a topic from its old pod to its new one (docs/architecture.md §5), pure: no I/O, the time is
//! passed in.
//!
//! The issue it solves: router-agent moves a topic's linkRoutes to the topic's new pod, this service moves the
//! topic's durable subscription queues; whatever the old pod receives between the last count of 0 and the deletion
//! of its queue would be lost, and a subscriber that comes back before its queue moved finds an empty one. So
//! every subscription queue q of topic T on pod P (P not T's pod) goes through:
//!
//! 1. **copy** ([`Step::Copy`]): q is made on T's pod and every message moves there (at least once, in order); the
//!    old queue STAYS, because the router may still route T's publishers to P. Again on later passes while P's q
//!    counts messages;
//! 2. **release** (draining P only): once every subscription queue on P has been copied, P is RELEASED
//!    ([`HandoverBook::releasable`]): the `maas.io/topics-released` annotation, or the `--handover-file`.
//!    router-agents with `--topic-handover` keep a draining pod's topic links until then
//!    (`maas_model::placement::topic_route_pod`), so the subscription and its messages are on the new pod
//!    BEFORE the old links go;
//! 3. **sweep** ([`Step::Sweep`]) once the links have been gone for `grace` (long enough for every router-agent to
//!    move them): what reached P's q meanwhile moves too, and only then q is deleted on P (after a count of 0).
//!
//! When the old links went is known this way: for a draining pod, its release (router-agents without
//! `--topic-handover` moved them earlier: waiting is then only longer than needed); for a pod that does not drain
//! (a pod was added and T now hashes there), the first pass that saw T's queues on the wrong pod (router-agents
//! react to the same pod change). With `grace` 0 a pod that does not drain is swept at once (copy and delete in
//! one move, the behaviour before the hand-over).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use maas_model::Brokers;

use crate::plan::{Move, Observed, Plan};

/// What a move does in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Make the queue on the new pod and move the messages; keep the old queue.
    Copy,
    /// Move what is left, then delete the old queue.
    Sweep,
    /// Nothing now: copied, the old queue is kept until `until` (None: until its draining pod is released).
    Wait { until: Option<Instant> },
}

/// A queue's identity for the hand-over: (the pod holding it, topic, queue).
pub type Key = (String, String, String);

fn key(m: &Move) -> Key {
    (m.from.name.clone(), m.topic.clone(), m.queue.clone())
}

/// What the hand-over remembers between passes (lost on a restart: a queue is then copied again, which finds it
/// empty or moves what arrived, and a released pod waits the grace again).
#[derive(Debug, Clone)]
pub struct HandoverBook {
    grace: Duration,
    /// Queues whose messages moved to the new pod (the old queue kept).
    copied: BTreeSet<Key>,
    /// (pod, topic): when a topic was first seen to have moved off a pod that does not drain.
    moved_off: BTreeMap<(String, String), Instant>,
    /// Draining pods released, and when.
    released: BTreeMap<String, Instant>,
}

impl HandoverBook {
    /// A book whose old queues are swept `grace` after their links went.
    pub fn new(grace: Duration) -> HandoverBook {
        HandoverBook {
            grace,
            copied: BTreeSet::new(),
            moved_off: BTreeMap::new(),
            released: BTreeMap::new(),
        }
    }

    /// Start of a pass over `brokers` and the `plan`: draining pods released by someone else (`external`: the pod
    /// annotation, or the handover file an earlier run wrote) count as released from `now`; releases of pods no
    /// longer draining (or gone) are forgotten, and so is every queue no longer to move.
    pub fn begin(
        &mut self,
        brokers: &Brokers,
        external: &BTreeSet<String>,
        plan: &Plan,
        now: Instant,
    ) {
        let draining: BTreeSet<&str> = brokers
            .clusters
            .values()
            .flatten()
            .filter(|p| p.draining)
            .map(|p| p.name.as_str())
            .collect();
        self.released.retain(|p, _| draining.contains(p.as_str()));
        for p in external {
            if draining.contains(p.as_str()) {
                self.released.entry(p.clone()).or_insert(now);
            }
        }
        let moving: BTreeSet<Key> = plan.moves.iter().map(key).collect();
        self.copied.retain(|k| moving.contains(k));
        let off: BTreeSet<(String, String)> = plan
            .moves
            .iter()
            .filter(|m| !m.from.draining)
            .map(|m| (m.from.name.clone(), m.topic.clone()))
            .collect();
        self.moved_off.retain(|k, _| off.contains(k));
        for k in off {
            self.moved_off.entry(k).or_insert(now);
        }
    }

    /// When the old queue of `m` may be swept: `grace` after its links went (None: its pod drains and is not
    /// released yet).
    pub fn sweep_at(&self, m: &Move) -> Option<Instant> {
        let gone = if m.from.draining {
            self.released.get(&m.from.name)
        } else {
            self.moved_off.get(&(m.from.name.clone(), m.topic.clone()))
        };
        gone.map(|t| *t + self.grace)
    }

    /// What `m` does in a pass at `now`.
    pub fn step(&self, m: &Move, now: Instant) -> Step {
        let until = self.sweep_at(m);
        if until.is_some_and(|t| now >= t) {
            Step::Sweep
        } else if !self.copied.contains(&key(m)) || m.messages > 0 {
            Step::Copy
        } else {
            Step::Wait { until }
        }
    }

    /// `m`'s copy finished (its old queue counted 0).
    pub fn copied(&mut self, m: &Move) {
        self.copied.insert(key(m));
    }

    /// Draining pods to release now: Ready, not released yet, listed in this pass (`observed`), and every durable
    /// subscription queue they hold has been copied to its topic's pod. A pod holding none is released at once
    /// (there is nothing to wait for); one holding a queue that could not move (every pod of its topic's cluster
    /// drains, the topic's pod is not Ready, the copy failed) is not.
    pub fn releasable(&self, brokers: &Brokers, observed: &Observed) -> Vec<String> {
        brokers
            .clusters
            .values()
            .flatten()
            .filter(|p| p.draining && p.ready && !self.released.contains_key(&p.name))
            .filter(|p| {
                observed.get(&p.name).is_some_and(|by_topic| {
                    by_topic.iter().all(|(topic, queues)| {
                        queues
                            .iter()
                            .filter(|q| q.is_subscription_of(topic))
                            .all(|q| {
                                self.copied.contains(&(
                                    p.name.clone(),
                                    topic.clone(),
                                    q.name.clone(),
                                ))
                            })
                    })
                })
            })
            .map(|p| p.name.clone())
            .collect()
    }

    /// `pod` was released at `now`.
    pub fn release(&mut self, pod: &str, now: Instant) {
        self.released.entry(pod.to_string()).or_insert(now);
    }

    /// The released draining pods.
    pub fn released(&self) -> BTreeSet<String> {
        self.released.keys().cloned().collect()
    }

    /// The earliest time a move of `plan` waits for (the next pass should run then).
    pub fn next_sweep(&self, plan: &Plan) -> Option<Instant> {
        plan.moves.iter().filter_map(|m| self.sweep_at(m)).min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::{ObservedQueue, TopicPods, plan};
    use maas_model::BrokerPod;

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

    fn sub(name: &str, messages: u64) -> ObservedQueue {
        ObservedQueue {
            name: name.into(),
            address: "news".into(),
            multicast: true,
            durable: true,
            temporary: false,
            messages,
            consumers: 0,
            user: None,
            id: None,
        }
    }

    /// `news` on b-0 (draining) and b-1; b-0 holds `queues`.
    fn setup(queues: Vec<ObservedQueue>) -> (Brokers, Observed, Plan) {
        let pods = vec![pod("b-0", true), pod("b-1", false)];
        let topics = vec![TopicPods {
            topic: "news".into(),
            cluster: "c".into(),
            pods: pods.clone(),
        }];
        let observed: Observed = BTreeMap::from([
            (
                "b-0".to_string(),
                BTreeMap::from([("news".to_string(), queues)]),
            ),
            ("b-1".to_string(), BTreeMap::new()),
        ]);
        let p = plan(&topics, &observed);
        let brokers = Brokers {
            clusters: BTreeMap::from([("c".to_string(), pods)]),
        };
        (brokers, observed, p)
    }

    #[test]
    fn a_draining_pod_is_released_once_every_subscription_on_it_is_copied_then_swept_after_the_grace()
     {
        let grace = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut book = HandoverBook::new(grace);
        let (brokers, observed, p) = setup(vec![sub("s1", 100), sub("s2", 0)]);
        book.begin(&brokers, &BTreeSet::new(), &p, t0);
        // Pass 1: both copied (the old queues stay); nothing released before that.
        assert!(p.moves.iter().all(|m| book.step(m, t0) == Step::Copy));
        assert!(book.releasable(&brokers, &observed).is_empty());
        book.copied(&p.moves[0]);
        assert!(
            book.releasable(&brokers, &observed).is_empty(),
            "one copied of two: not yet"
        );
        book.copied(&p.moves[1]);
        assert_eq!(book.releasable(&brokers, &observed), ["b-0"]);
        book.release("b-0", t0);
        assert!(book.releasable(&brokers, &observed).is_empty());
        assert_eq!(book.released().into_iter().collect::<Vec<_>>(), ["b-0"]);

        // Pass 2 within the grace: the empty old queue waits; one that received meanwhile is copied again.
        let t1 = t0 + Duration::from_secs(1);
        let (_, _, p2) = setup(vec![sub("s1", 3), sub("s2", 0)]);
        book.begin(&brokers, &BTreeSet::new(), &p2, t1);
        assert_eq!(book.step(&p2.moves[0], t1), Step::Copy);
        assert_eq!(
            book.step(&p2.moves[1], t1),
            Step::Wait {
                until: Some(t0 + grace)
            }
        );
        assert_eq!(book.next_sweep(&p2), Some(t0 + grace));

        // After the grace: swept (moved and deleted).
        let t2 = t0 + grace;
        book.begin(&brokers, &BTreeSet::new(), &p2, t2);
        assert!(p2.moves.iter().all(|m| book.step(m, t2) == Step::Sweep));

        // Swept: no longer in the plan, forgotten; the pod stays released while it drains.
        let (_, _, p3) = setup(vec![]);
        book.begin(&brokers, &BTreeSet::new(), &p3, t2);
        assert!(book.copied.is_empty());
        assert_eq!(book.released().len(), 1);
        // It stops draining: the release is forgotten.
        let up = Brokers {
            clusters: BTreeMap::from([(
                "c".to_string(),
                vec![pod("b-0", false), pod("b-1", false)],
            )]),
        };
        book.begin(&up, &BTreeSet::from(["b-0".to_string()]), &p3, t2);
        assert!(
            book.released().is_empty(),
            "an annotation on a pod that does not drain counts for nothing"
        );
    }

    #[test]
    fn a_pod_with_nothing_to_move_is_released_at_once_and_one_that_could_not_move_is_not() {
        let (brokers, observed, p) = setup(vec![]);
        let mut book = HandoverBook::new(Duration::from_secs(5));
        book.begin(&brokers, &BTreeSet::new(), &p, Instant::now());
        assert_eq!(book.releasable(&brokers, &observed), ["b-0"]);
        // A pod that was not listed is not released (nothing is known of it).
        let mut unlisted = observed.clone();
        unlisted.remove("b-0");
        assert!(book.releasable(&brokers, &unlisted).is_empty());
        // Not Ready: not released.
        let mut not_ready = brokers.clone();
        for p in not_ready.clusters.values_mut().flatten() {
            p.ready = p.name != "b-0";
        }
        assert!(book.releasable(&not_ready, &observed).is_empty());
        // Every pod draining: the subscription is stranded, never copied, the pod keeps its topics.
        let all = Brokers {
            clusters: BTreeMap::from([("c".to_string(), vec![pod("b-0", true), pod("b-1", true)])]),
        };
        let (_, observed, _) = setup(vec![sub("s1", 1)]);
        assert!(book.releasable(&all, &observed).iter().all(|p| p != "b-0"));
        // Queues that are no subscriptions do not hold a release.
        let mut q = sub("orders", 5);
        q.multicast = false;
        let (brokers, observed, p) = setup(vec![q]);
        book.begin(&brokers, &BTreeSet::new(), &p, Instant::now());
        assert_eq!(book.releasable(&brokers, &observed), ["b-0"]);
    }

    #[test]
    fn a_release_made_before_a_restart_counts_from_when_it_is_seen_again() {
        let (brokers, _, p) = setup(vec![sub("s1", 0)]);
        let t0 = Instant::now();
        let mut book = HandoverBook::new(Duration::from_secs(5));
        book.begin(&brokers, &BTreeSet::from(["b-0".to_string()]), &p, t0);
        // Released, but this run did not copy it: copy first (it may hold messages), sweep after the grace.
        assert_eq!(book.step(&p.moves[0], t0), Step::Copy);
        assert_eq!(
            book.sweep_at(&p.moves[0]),
            Some(t0 + Duration::from_secs(5))
        );
        // A later pass that sees the annotation again keeps the first time.
        book.begin(
            &brokers,
            &BTreeSet::from(["b-0".to_string()]),
            &p,
            t0 + Duration::from_secs(3),
        );
        assert_eq!(
            book.sweep_at(&p.moves[0]),
            Some(t0 + Duration::from_secs(5))
        );
    }

    #[test]
    fn a_topic_moving_off_a_pod_that_does_not_drain_is_swept_a_grace_after_it_was_first_seen() {
        // A pod added: `news` now hashes to the new pod; its old pod does not drain, so there is no release.
        let pods = vec![pod("b-0", false), pod("b-1", false)];
        let home = maas_model::topic_pod("news", &pods).unwrap().name.clone();
        let other = if home == "b-0" { "b-1" } else { "b-0" };
        let topics = vec![TopicPods {
            topic: "news".into(),
            cluster: "c".into(),
            pods: pods.clone(),
        }];
        let observed: Observed = BTreeMap::from([
            (
                other.to_string(),
                BTreeMap::from([("news".to_string(), vec![sub("s1", 4)])]),
            ),
            (home.clone(), BTreeMap::new()),
        ]);
        let p = plan(&topics, &observed);
        let brokers = Brokers {
            clusters: BTreeMap::from([("c".to_string(), pods)]),
        };
        let t0 = Instant::now();
        let mut book = HandoverBook::new(Duration::from_secs(2));
        book.begin(&brokers, &BTreeSet::new(), &p, t0);
        assert_eq!(book.step(&p.moves[0], t0), Step::Copy);
        assert!(
            book.releasable(&brokers, &observed).is_empty(),
            "nothing drains"
        );
        book.copied(&p.moves[0]);
        let mut emptied = p.clone();
        emptied.moves[0].messages = 0;
        let t1 = t0 + Duration::from_secs(1);
        book.begin(&brokers, &BTreeSet::new(), &emptied, t1);
        assert_eq!(
            book.step(&emptied.moves[0], t1),
            Step::Wait {
                until: Some(t0 + Duration::from_secs(2))
            }
        );
        assert_eq!(
            book.step(&emptied.moves[0], t0 + Duration::from_secs(2)),
            Step::Sweep
        );
        // Grace 0: swept at once, the behaviour without a hand-over.
        let mut now_book = HandoverBook::new(Duration::ZERO);
        now_book.begin(&brokers, &BTreeSet::new(), &p, t0);
        assert_eq!(now_book.step(&p.moves[0], t0), Step::Sweep);
    }
}
