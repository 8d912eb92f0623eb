//! Provisioning over real AMQP management against three Artemis broker emulators (one cluster of three pods):
//! ensure, an idempotent second pass with zero broker writes, removal, a queue holding messages not destroyed
//! until its count is 0, and a restarted controller with nothing changed making zero broker writes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use maas_amqp::artemis::{ClientConfig, RoutingType};
use maas_amqp::options::{ConnectOptions, SaslOptions, Secret};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_model::{AddressKind, BrokerPod, Brokers};
use storage_controller::artemis::ArtemisConnector;
use storage_controller::broker::Provisioner;
use storage_controller::metrics::Metrics;
use storage_controller::provision::BrokerDesired;

pub fn connector() -> ArtemisConnector {
    let mut template = ConnectOptions::new("127.0.0.1", 5672);
    template.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    ArtemisConnector {
        template,
        client: ClientConfig {
            window: 100,
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    }
}

async fn three() -> (Vec<BrokerEmulator>, Brokers) {
    let mut emus = Vec::new();
    let mut pods = Vec::new();
    for i in 0..3 {
        let e = BrokerEmulator::start(BrokerConfig::default())
            .await
            .unwrap();
        pods.push(BrokerPod {
            name: format!("c-{i}"),
            host: "127.0.0.1".into(),
            port: e.addr().port(),
            draining: false,
            provisioned: None,
            ready: true,
        });
        emus.push(e);
    }
    let brokers = Brokers {
        clusters: BTreeMap::from([("c".to_string(), pods)]),
    };
    (emus, brokers)
}

fn desired(pairs: &[(&str, AddressKind)]) -> BTreeMap<String, BrokerDesired> {
    BTreeMap::from([(
        "c".to_string(),
        pairs
            .iter()
            .map(|(n, k)| (n.to_string(), (*k).into()))
            .collect(),
    )])
}

fn writes(emus: &[BrokerEmulator]) -> u64 {
    emus.iter().map(|e| e.counters().writes).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_three_brokers_idempotently_and_removes_only_empty_queues() {
    let (emus, brokers) = three().await;
    let (metrics, registry) = Metrics::new();
    let mut prov = Provisioner::new(connector(), metrics.clone(), 100);
    let d = desired(&[("orders", AddressKind::Queue), ("news", AddressKind::Topic)]);

    let r = prov.pass(&d, &brokers).await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(r.writes, 9, "createAddress x2 + createQueue per broker");
    for e in &emus {
        let q = &e.queues()["orders"];
        assert_eq!(
            (q.address.as_str(), q.routing_type, q.durable),
            ("orders", RoutingType::Anycast, true)
        );
        let a = e.addresses();
        assert!(a["news"].routing_types.contains(&RoutingType::Multicast));
        assert!(a["orders"].routing_types.contains(&RoutingType::Anycast));
        assert!(
            !e.queues().contains_key("news"),
            "a topic gets no queue from us"
        );
    }

    // Second pass: zero writes on every broker.
    let before = writes(&emus);
    let r = prov.pass(&d, &brokers).await;
    assert!(r.converged());
    assert_eq!((r.writes, writes(&emus) - before), (0, 0));

    // A restarted controller (new provisioner, new connections), nothing changed: zero broker writes.
    let mut restarted = Provisioner::new(connector(), metrics.clone(), 100);
    let r = restarted.pass(&d, &brokers).await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(writes(&emus) - before, 0);

    // orders removed while broker 1 holds 4 messages: destroyed on 0 and 2, kept on 1.
    assert!(emus[1].set_message_count("orders", 4));
    let d2 = desired(&[("news", AddressKind::Topic)]);
    let r = prov.pass(&d2, &brokers).await;
    assert_eq!(
        r.holding.get(&("c-1".to_string(), "orders".to_string())),
        Some(&4),
        "{r:?}"
    );
    assert!(!emus[0].queues().contains_key("orders"));
    assert!(!emus[0].addresses().contains_key("orders"));
    assert!(emus[1].queues().contains_key("orders"));
    assert_eq!(emus[1].queues()["orders"].messages, 4);
    assert!(emus[1].addresses().contains_key("orders"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("maas_storage_controller_broker_operations_total{operation=\"destroyQueue\",result=\"ok\"} 2"), "{text}");

    // Retries keep it until its count is 0.
    for _ in 0..2 {
        let r = prov.pass(&d2, &brokers).await;
        assert_eq!(r.holding.len(), 1);
        assert!(emus[1].queues().contains_key("orders"));
    }
    emus[1].set_message_count("orders", 0);
    let r = prov.pass(&d2, &brokers).await;
    assert!(r.converged(), "{r:?}");
    for e in &emus {
        assert!(!e.queues().contains_key("orders"));
        assert!(!e.addresses().contains_key("orders"));
        assert!(e.addresses().contains_key("news"));
        // Artemis' own names untouched.
        assert!(e.queues().contains_key("DLQ") && e.addresses().contains_key("ExpiryQueue"));
    }
    for e in emus {
        e.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_and_outage_are_repaired() {
    let (emus, brokers) = three().await;
    let (metrics, _) = Metrics::new();
    let mut prov = Provisioner::new(connector(), metrics, 100);
    let d = desired(&[("orders", AddressKind::Queue), ("news", AddressKind::Topic)]);
    assert!(prov.pass(&d, &brokers).await.converged());
    // A broker restart keeps durable state: nothing to write after reconnecting.
    emus[0].restart().await.unwrap();
    let before = writes(&emus);
    let mut r = prov.pass(&d, &brokers).await;
    if !r.converged() {
        // The first pass may notice the dropped connection; the next one reconnects.
        r = prov.pass(&d, &brokers).await;
    }
    assert!(r.converged(), "{r:?}");
    assert_eq!(writes(&emus), before);
    // Pod 2 unreachable: reported, the others fine.
    let port = brokers.clusters["c"][2].port;
    let mut bad = brokers.clone();
    bad.clusters.get_mut("c").unwrap()[2].port = 1;
    let r = prov.pass(&d, &bad).await;
    assert!(r.pods_failed.contains_key("c-2"), "{r:?}");
    assert_eq!(r.pods_ok, 2);
    bad.clusters.get_mut("c").unwrap()[2].port = port;
    assert!(prov.pass(&d, &bad).await.converged());
    for e in emus {
        e.stop().await;
    }
}

/// Ownership survives a restart, against the Artemis emulator: every queue the controller creates carries
/// `user: maas-storage-controller` (stored, read back with getUser); a restarted controller removes a queue of
/// its own whose address was removed while it was down once the queue is empty, and leaves an operator's queue
/// (no user) and a client's (another user) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_knows_its_queues_from_the_broker() {
    let e = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let brokers = Brokers {
        clusters: BTreeMap::from([(
            "c".to_string(),
            vec![BrokerPod {
                name: "c-0".into(),
                host: "127.0.0.1".into(),
                port: e.addr().port(),
                draining: false,
                provisioned: None,
                ready: true,
            }],
        )]),
    };
    let (metrics, _) = Metrics::new();
    let mut before = Provisioner::new(connector(), metrics.clone(), 100);
    let d = desired(&[("keep", AddressKind::Queue), ("orphan", AddressKind::Queue)]);
    assert!(before.pass(&d, &brokers).await.converged());
    drop(before);
    assert_eq!(
        e.queues()["orphan"].user.as_deref(),
        Some("maas-storage-controller")
    );
    // While the controller is down: an operator and a client make queues; `orphan` leaves the configuration
    // holding 3 messages.
    let mut opts = ConnectOptions::new("127.0.0.1", e.addr().port());
    opts.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    let admin = maas_amqp::artemis::ArtemisClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap();
    for (name, user) in [("ops", None), ("app", Some("app-user"))] {
        let q = maas_amqp::artemis::QueueConfig {
            name: name.into(),
            address: name.into(),
            routing_type: RoutingType::Anycast,
            durable: true,
        };
        admin.create_queue_with(&q, user).await.unwrap();
    }
    admin.close().await;
    assert!(e.set_message_count("orphan", 3));
    let d2 = desired(&[("keep", AddressKind::Queue)]);

    let mut after = Provisioner::new(connector(), metrics, 100);
    let r = after.pass(&d2, &brokers).await;
    assert_eq!(
        r.holding.get(&("c-0".to_string(), "orphan".to_string())),
        Some(&3),
        "{r:?}"
    );
    assert_eq!(
        e.queues()["orphan"].messages,
        3,
        "not destroyed with messages"
    );
    e.set_message_count("orphan", 0);
    let r = after.pass(&d2, &brokers).await;
    assert!(r.converged(), "{r:?}");
    let (queues, addresses) = (e.queues(), e.addresses());
    assert!(!queues.contains_key("orphan") && !addresses.contains_key("orphan"));
    assert!(queues.contains_key("ops") && addresses.contains_key("ops"));
    assert!(queues.contains_key("app") && addresses.contains_key("app"));
    assert_eq!(
        queues["keep"].user.as_deref(),
        Some("maas-storage-controller")
    );
    e.stop().await;
}
