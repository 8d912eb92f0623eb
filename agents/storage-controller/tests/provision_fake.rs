//! The provisioner against in-memory brokers: the rules of a pass (ensure, idempotence, guarded removal, foreign
//! names, restart, unreachable pods) without AMQP.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::FakeConnector;
use maas_model::{AddressKind, BrokerPod, Brokers};
use storage_controller::broker::Provisioner;
use storage_controller::metrics::Metrics;
use storage_controller::provision::BrokerDesired;

fn brokers(pods: &[(&str, &str)]) -> Brokers {
    let mut b = Brokers::default();
    for (cluster, pod) in pods {
        b.clusters
            .entry(cluster.to_string())
            .or_default()
            .push(BrokerPod {
                name: pod.to_string(),
                host: "127.0.0.1".into(),
                port: 5672,
                draining: false,
                provisioned: None,
                ready: true,
            });
    }
    b
}

fn desired(cluster: &str, pairs: &[(&str, AddressKind)]) -> BTreeMap<String, BrokerDesired> {
    BTreeMap::from([(
        cluster.to_string(),
        pairs
            .iter()
            .map(|(n, k)| (n.to_string(), (*k).into()))
            .collect(),
    )])
}

#[tokio::test]
async fn ensure_idempotent_guarded_removal_and_restart() {
    let conn = FakeConnector::default();
    let (metrics, _) = Metrics::new();
    let mut prov = Provisioner::new(conn.clone(), metrics.clone(), 8);
    let b = brokers(&[("c", "c-0"), ("c", "c-1")]);
    let d = desired(
        "c",
        &[("q1", AddressKind::Queue), ("t1", AddressKind::Topic)],
    );
    conn.broker("c-0").add_foreign("someone-elses");

    let r = prov.pass(&d, &b).await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(r.writes, 6, "3 writes per pod");
    assert_eq!(
        conn.broker("c-0").writes(),
        vec![
            "createAddress q1 ANYCAST",
            "createAddress t1 MULTICAST",
            "createQueue q1"
        ]
    );

    // Second pass: zero writes.
    let r = prov.pass(&d, &b).await;
    assert_eq!((r.writes, r.ready), (0, 4));

    // A restarted controller (fresh provisioner) with nothing changed: zero writes.
    let mut restarted = Provisioner::new(conn.clone(), metrics.clone(), 8);
    let r = restarted.pass(&d, &b).await;
    assert_eq!(r.writes, 0);
    assert!(r.converged());

    // q1 removed while c-1 holds 2 messages: destroyed on c-0 only; kept (with its address) on c-1.
    conn.broker("c-1").set_count("q1", 2);
    let d2 = desired("c", &[("t1", AddressKind::Topic)]);
    let r = prov.pass(&d2, &b).await;
    assert_eq!(
        r.holding.get(&("c-1".to_string(), "q1".to_string())),
        Some(&2)
    );
    assert!(!r.converged());
    assert!(conn.broker("c-1").state().queues.contains_key("q1"));
    assert!(conn.broker("c-1").state().addresses.contains_key("q1"));
    assert!(!conn.broker("c-0").state().queues.contains_key("q1"));
    // The foreign name is never touched.
    assert!(
        conn.broker("c-0")
            .state()
            .queues
            .contains_key("someone-elses")
    );
    // Retried: still holding until the count is 0.
    let r = prov.pass(&d2, &b).await;
    assert_eq!(r.holding.len(), 1);
    conn.broker("c-1").set_count("q1", 0);
    let r = prov.pass(&d2, &b).await;
    assert!(r.converged(), "{r:?}");
    assert!(!conn.broker("c-1").state().addresses.contains_key("q1"));
    assert_eq!(
        conn.broker("c-1").writes()[3..],
        ["destroyQueue q1", "deleteAddress q1"]
    );
}

#[tokio::test]
async fn a_queue_with_a_consumer_is_retried_and_a_down_broker_reported() {
    let conn = FakeConnector::default();
    let (metrics, _) = Metrics::new();
    let mut prov = Provisioner::new(conn.clone(), metrics, 8);
    let b = brokers(&[("c", "c-0"), ("d", "d-0")]);
    let mut d = desired("c", &[("q", AddressKind::Queue)]);
    d.insert(
        "d".into(),
        [("x".to_string(), AddressKind::Topic.into())].into(),
    );
    assert!(prov.pass(&d, &b).await.converged());

    // The router's autoLink still consumes q: destroyQueue is refused, retried next pass.
    conn.broker("c-0").state().consumers.push("q".into());
    d.insert("c".into(), BrokerDesired::new());
    let r = prov.pass(&d, &b).await;
    assert_eq!(r.pods_failed.len(), 1, "{r:?}");
    assert!(r.pods_failed["c-0"].contains("AMQ229025"), "{r:?}");
    conn.broker("c-0").state().consumers.clear();

    // d-0 down: reported, the others still provisioned.
    conn.broker("d-0").state().down = true;
    let r = prov.pass(&d, &b).await;
    assert!(r.pods_failed.contains_key("d-0"));
    assert!(!r.pods_failed.contains_key("c-0"));
    assert!(!conn.broker("c-0").state().queues.contains_key("q"));
    // Back: fine again, with nothing to write.
    conn.broker("d-0").state().down = false;
    let r = prov.pass(&d, &b).await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(r.writes, 0);
}

#[tokio::test]
async fn kind_change_and_a_cluster_without_addresses() {
    let conn = FakeConnector::default();
    let (metrics, _) = Metrics::new();
    let mut prov = Provisioner::new(conn.clone(), metrics, 8);
    let b = brokers(&[("c", "c-0")]);
    prov.pass(&desired("c", &[("x", AddressKind::Queue)]), &b)
        .await;
    let r = prov
        .pass(&desired("c", &[("x", AddressKind::Topic)]), &b)
        .await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(
        conn.broker("c-0").writes(),
        vec![
            "createAddress x ANYCAST",
            "createQueue x",
            "destroyQueue x",
            "deleteAddress x",
            "createAddress x MULTICAST"
        ]
    );
    // The cluster is no longer in the desired map at all: our names go.
    let r = prov.pass(&BTreeMap::new(), &b).await;
    assert!(r.converged());
    assert!(conn.broker("c-0").state().addresses.is_empty());
}

/// Ownership survives a restart: it is recorded on the broker (`user` of every queue the controller creates).
/// A new provisioner (empty in-memory state) removes a queue of ours whose address was removed while it was down
/// — only once it is empty, with its address — and never touches an operator's or a client's queue.
#[tokio::test]
async fn a_restarted_controller_removes_its_orphaned_queues_once_empty_and_nothing_else() {
    let conn = FakeConnector::default();
    let (metrics, _) = Metrics::new();
    let b = brokers(&[("c", "c-0")]);
    let mut before = Provisioner::new(conn.clone(), metrics.clone(), 8);
    let d = desired(
        "c",
        &[("keep", AddressKind::Queue), ("orphan", AddressKind::Queue)],
    );
    assert!(before.pass(&d, &b).await.converged());
    drop(before);
    let broker = conn.broker("c-0");
    assert_eq!(
        broker.state().meta["orphan"],
        (
            Some("maas-storage-controller".to_string()),
            "orphan".to_string()
        ),
        "created with the controller's user"
    );
    // While the controller is down: `orphan` is removed from the configuration (and holds 2 messages); an
    // operator and a client made queues of their own (one named like a former maas address).
    broker.set_count("orphan", 2);
    broker.add_queue_by("ops", None, 0);
    broker.add_queue_by("app", Some("app-user"), 0);
    let d2 = desired("c", &[("keep", AddressKind::Queue)]);

    // Restart: a new provisioner knows nothing in memory.
    let mut after = Provisioner::new(conn.clone(), metrics.clone(), 8);
    let r = after.pass(&d2, &b).await;
    assert_eq!(
        r.holding.get(&("c-0".to_string(), "orphan".to_string())),
        Some(&2),
        "{r:?}"
    );
    assert!(broker.state().queues.contains_key("orphan"));
    // Owners are asked once per queue (not for `keep`, which is desired); a second pass asks nothing.
    assert_eq!(broker.state().owner_reads, 3);
    let r = after.pass(&d2, &b).await;
    assert_eq!(r.holding.len(), 1);
    assert_eq!(broker.state().owner_reads, 3);
    // Empty: removed with its address; the operator's and the client's queues stay.
    broker.set_count("orphan", 0);
    let r = after.pass(&d2, &b).await;
    assert!(r.converged(), "{r:?}");
    {
        let s = broker.state();
        assert!(!s.queues.contains_key("orphan") && !s.addresses.contains_key("orphan"));
        assert!(s.queues.contains_key("ops") && s.addresses.contains_key("ops"));
        assert!(s.queues.contains_key("app") && s.addresses.contains_key("app"));
        assert!(s.queues.contains_key("keep"));
        assert_eq!(
            s.writes[s.writes.len() - 2..],
            ["destroyQueue orphan", "deleteAddress orphan"]
        );
    }
    // Even when the operator's queue is named like an address that is then removed, it stays.
    let d3 = desired(
        "c",
        &[("keep", AddressKind::Queue), ("ops", AddressKind::Queue)],
    );
    assert!(after.pass(&d3, &b).await.converged());
    let r = after.pass(&d2, &b).await;
    assert!(r.converged(), "{r:?}");
    assert!(broker.state().queues.contains_key("ops"));
}

/// A subscription queue whose topic moved to another pod (its pod drains): without the hand-over the controller
/// destroys the (empty) old queue at once; with it (`--await-topic-release`) the old queue stays for
/// subscription-service, which moves and deletes it once the router-agents moved the links. The new pod gets the
/// queue either way.
#[tokio::test]
async fn a_moved_subscription_queue_is_left_to_subscription_service_with_the_handover() {
    for handover in [false, true] {
        let conn = FakeConnector::default();
        let (metrics, _) = Metrics::new();
        let mut prov = Provisioner::new(conn.clone(), metrics, 8).with_topic_handover(handover);
        let mut b = brokers(&[("c", "c-0"), ("c", "c-1")]);
        let mut d = desired("c", &[("news", AddressKind::Topic)]);
        d.get_mut("c").unwrap().insert(
            "s1".into(),
            storage_controller::provision::Want {
                kind: AddressKind::Subscription,
                topic: Some("news".into()),
            },
        );
        assert!(prov.pass(&d, &b).await.converged());
        let old = maas_model::topic_pod("news", b.pods("c"))
            .unwrap()
            .name
            .clone();
        assert!(conn.broker(&old).state().queues.contains_key("s1"));
        // The topic's pod drains: news (and s1) now belong on the other pod.
        for p in b.clusters.get_mut("c").unwrap() {
            p.draining = p.name == old;
        }
        let new = maas_model::topic_pod("news", b.pods("c"))
            .unwrap()
            .name
            .clone();
        assert_ne!(old, new);
        let r = prov.pass(&d, &b).await;
        assert!(r.converged(), "{r:?}");
        assert!(conn.broker(&new).state().queues.contains_key("s1"));
        assert_eq!(
            conn.broker(&old).state().queues.contains_key("s1"),
            handover,
            "handover {handover}: {:?}",
            conn.broker(&old).writes()
        );
        if handover {
            assert!(
                !conn
                    .broker(&old)
                    .writes()
                    .iter()
                    .any(|w| w.starts_with("destroyQueue")),
                "{:?}",
                conn.broker(&old).writes()
            );
            // Once the subscription is gone from the configuration, the queue is ours to remove again.
            d.get_mut("c").unwrap().remove("s1");
            let r = prov.pass(&d, &b).await;
            assert!(r.converged(), "{r:?}");
            assert!(!conn.broker(&old).state().queues.contains_key("s1"));
        }
    }
}
