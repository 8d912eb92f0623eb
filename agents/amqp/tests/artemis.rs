//! `maas_amqp::artemis::ArtemisClient` against the Artemis 2.21 broker emulator (`maas_e2e::broker`, which
//! reproduces docs/reference/artemis-2.21/management-transcript.txt): every typed operation, idempotent
//! create/delete outcomes, failures with their AMQ codes, the temporary reply queue filtered out, SASL and
//! TLS, timeouts, Disconnected on broker loss, restart, and 1,000 pipelined createQueue.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use maas_e2e::support::TestPki;
use std::time::{Duration, Instant};

use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{
    ArtemisClient, ArtemisError, ClientConfig, Outcome, QueueConfig, QueueInfo, Removal,
    RoutingType,
};
use maas_amqp::options::TlsOptions;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use serde_json::json;

async fn broker(cost: CostModel) -> BrokerEmulator {
    BrokerEmulator::start(BrokerConfig {
        cost_model: cost,
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

async fn client_with(b: &BrokerEmulator, cfg: ClientConfig) -> ArtemisClient {
    let opts = ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap();
    ArtemisClient::connect(&opts, cfg).await.unwrap()
}

async fn client(b: &BrokerEmulator) -> ArtemisClient {
    client_with(b, ClientConfig::default()).await
}

fn queue(name: &str) -> QueueConfig {
    QueueConfig {
        name: name.to_string(),
        address: name.to_string(),
        routing_type: RoutingType::Anycast,
        durable: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_operations_are_idempotent_and_report_codes() {
    let b = broker(CostModel::none()).await;
    let c = client(&b).await;
    assert_eq!(c.get_version().await.unwrap(), "2.21.0.redhat-00025");

    assert_eq!(
        c.create_address("orders", RoutingType::Anycast)
            .await
            .unwrap(),
        Outcome::Done
    );
    assert_eq!(
        c.create_address("orders", RoutingType::Anycast)
            .await
            .unwrap(),
        Outcome::AlreadyThere
    );
    assert_eq!(
        c.create_queue(&queue("orders")).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(
        c.create_queue(&queue("orders")).await.unwrap(),
        Outcome::AlreadyThere
    );
    assert_eq!(
        c.create_address("news", RoutingType::Multicast)
            .await
            .unwrap(),
        Outcome::Done
    );
    let q = &b.queues()["orders"];
    assert_eq!(
        (q.address.as_str(), q.routing_type, q.durable),
        ("orders", RoutingType::Anycast, true)
    );

    // The broker lists our temporary reply queue; the client filters it out.
    let temp = c.temporary_queue().to_string();
    assert_eq!(temp.len(), 36, "a UUID: {temp}");
    assert!(b.queues()[&temp].temporary);
    let addresses = c.get_address_names().await.unwrap();
    let queues = c.get_queue_names().await.unwrap();
    let mut sorted = addresses.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            "DLQ",
            "ExpiryQueue",
            "activemq.management",
            "activemq.notifications",
            "news",
            "orders"
        ]
    );
    let mut sorted = queues.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["DLQ", "ExpiryQueue", "orders"]);
    let raw = c.call("broker", "getQueueNames", vec![]).await.unwrap();
    assert!(raw[0].as_array().unwrap().contains(&json!(temp)));

    assert_eq!(c.get_message_count("orders").await.unwrap(), 0);
    assert!(b.set_message_count("orders", 7));
    assert_eq!(c.get_message_count("orders").await.unwrap(), 7);

    // A consumer blocks destroyQueue (observed-shapes "Also seen").
    assert!(b.set_consumers("orders", 1));
    let err = c.destroy_queue("orders").await.unwrap_err();
    assert_eq!(err.code(), Some("AMQ229025"), "{err}");
    assert_eq!(err.metric_label(), "in_use");
    assert!(!err.is_connection_error());
    // An address with a queue cannot be deleted.
    let err = c.delete_address("orders").await.unwrap_err();
    assert_eq!(err.code(), Some("AMQ229205"), "{err}");
    b.set_consumers("orders", 0);

    assert_eq!(c.destroy_queue("orders").await.unwrap(), Removal::Done);
    assert_eq!(
        c.destroy_queue("orders").await.unwrap(),
        Removal::AlreadyGone
    );
    assert_eq!(c.delete_address("orders").await.unwrap(), Removal::Done);
    assert_eq!(
        c.delete_address("orders").await.unwrap(),
        Removal::AlreadyGone
    );

    // Failures keep their AMQ code and full text.
    let err = c.get_message_count("orders").await.unwrap_err();
    assert_eq!(err.code(), Some("AMQ229067"), "{err}");
    match c
        .call("broker", "createAddress", vec![json!("x")])
        .await
        .unwrap_err()
    {
        ArtemisError::Failed {
            resource,
            operation,
            code,
            message,
        } => {
            assert_eq!(
                (resource.as_str(), operation.as_str()),
                ("broker", "createAddress")
            );
            assert_eq!(code.as_deref(), Some("AMQ229069"));
            assert_eq!(message, "AMQ229069: no operation createAddress/1");
        }
        other => panic!("{other:?}"),
    }
    let err = c
        .call(
            "broker",
            "createQueue",
            vec![json!("addr.two"), json!("ANYCAST"), json!("q.two")],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), None);
    assert_eq!(
        err.to_string(),
        "broker.createQueue failed: No enum constant org.apache.activemq.artemis.api.core.RoutingType.Q.TWO"
    );

    // Reads vs writes as the broker counted them.
    let counters = b.counters();
    assert_eq!(counters.of("createQueue"), 3);
    assert_eq!(counters.of("createAddress"), 4);
    assert_eq!(counters.writes, 3 + 4 + 3 + 3);
    c.close().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrong_password_are_refused() {
    let b = broker(CostModel::none()).await;
    let anonymous = ConnectOptions::from_url(&b.url()).unwrap();
    let err = ArtemisClient::connect(&anonymous, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ArtemisError::Connect(_)), "{err:?}");
    // Artemis closes the connection: amqp:unauthorized-access 'AMQ229031: Unable to validate user...'.
    assert!(err.to_string().contains("UnauthorizedAccess"), "{err}");
    assert!(
        err.to_string()
            .contains("AMQ229031: Unable to validate user"),
        "{err}"
    );
    assert_eq!(err.metric_label(), "connect");
    let wrong = ConnectOptions::from_url(&b.url_with("admin", "nope")).unwrap();
    let err = ArtemisClient::connect(&wrong, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ArtemisError::Connect(_)), "{err:?}");
    assert!(!err.to_string().contains("nope"), "{err}");
    assert!(err.to_string().contains("SASL"), "{err}");
    // The broker keeps serving good clients.
    let c = client(&b).await;
    assert_eq!(c.get_version().await.unwrap(), "2.21.0.redhat-00025");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_replies_time_out_and_a_stopped_broker_disconnects() {
    let b = broker(CostModel::none()).await;
    let c = client_with(
        &b,
        ClientConfig {
            window: 16,
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    b.withhold_replies(true);
    let err = c.get_version().await.unwrap_err();
    match &err {
        ArtemisError::Timeout {
            resource,
            operation,
            after,
        } => {
            assert_eq!(
                (resource.as_str(), operation.as_str()),
                ("broker", "getVersion")
            );
            assert_eq!(*after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    // One timeout fails that request only: the connection stays.
    assert!(!err.is_connection_error());
    assert!(!c.is_closed());
    assert_eq!(c.in_flight(), 0);

    // A request in flight when the broker goes away fails with Disconnected, and closed() resolves.
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.get_queue_names().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c2 = client_with(
        &b,
        ClientConfig {
            window: 16,
            request_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .await;
    let pending2 = tokio::spawn({
        let c2 = c2.clone();
        async move { c2.get_queue_names().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.stop().await;
    tokio::time::timeout(Duration::from_secs(5), c2.closed())
        .await
        .unwrap();
    assert!(c2.is_closed());
    let err = pending2.await.unwrap().unwrap_err();
    assert!(matches!(err, ArtemisError::Disconnected(_)), "{err:?}");
    let _ = pending.await.unwrap();
    let err = c2.get_version().await.unwrap_err();
    assert!(matches!(err, ArtemisError::Disconnected(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_durable_queues_and_drops_connections() {
    let b = broker(CostModel::none()).await;
    let c = client(&b).await;
    c.create_queue(&queue("keep")).await.unwrap();
    c.create_queue(&QueueConfig {
        durable: false,
        ..queue("scratch")
    })
    .await
    .unwrap();
    b.set_message_count("keep", 3);
    let old_temp = c.temporary_queue().to_string();
    b.restart().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .unwrap();
    let c = client(&b).await;
    let names = c.get_queue_names().await.unwrap();
    assert!(names.contains(&"keep".to_string()), "{names:?}");
    assert!(!names.contains(&"scratch".to_string()), "{names:?}");
    assert!(!b.queues().contains_key(&old_temp));
    assert_eq!(c.get_message_count("keep").await.unwrap(), 3);
    assert_eq!(
        c.create_queue(&queue("keep")).await.unwrap(),
        Outcome::AlreadyThere
    );
    c.close().await;
    // The temporary queue goes with its connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.queues().values().all(|q| !q.temporary));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_create_queues() {
    let b = broker(CostModel::default()).await;
    let c = client(&b).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.create_queue(&queue(&format!("q{i:04}"))).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Outcome::Done);
    }
    let elapsed = started.elapsed();
    let queues = b.queues();
    assert!((0..1000).all(|i| queues.contains_key(&format!("q{i:04}"))));
    assert_eq!(b.counters().of("createQueue"), 1000);
    // 1,000 x 100 µs of broker cost: at least 0.1 s, and pipelining keeps it near that.
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    eprintln!(
        "1000 pipelined createQueue: {elapsed:?} ({:.0}/s)",
        1000.0 / elapsed.as_secs_f64()
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    c.close().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_sasl_plain() {
    let Some(pki) = TestPki::create("artemis") else {
        return;
    };
    let b = BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel::none(),
        tls: Some((pki.0.join("server.crt"), pki.0.join("server.key"))),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let mut opts = ConnectOptions::from_url(&format!(
        "amqps://admin:admin@127.0.0.1:{}",
        b.addr().port()
    ))
    .unwrap();
    opts.tls = Some(TlsOptions {
        ca_file: Some(pki.0.join("ca.crt")),
        ..TlsOptions::default()
    });
    let c = ArtemisClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(c.get_version().await.unwrap(), "2.21.0.redhat-00025");
    c.close().await;
    b.stop().await;
}

/// docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §4-§5: createQueue with a `user`,
/// `queue.<name>.getUser`, and `listQueues` of an address (string-valued rows) through the typed client,
/// paging through more queues than one page holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_queues_are_listed_by_address_with_their_user() {
    let b = broker(CostModel::none()).await;
    let c = client(&b).await;
    assert_eq!(
        c.create_address("t1", RoutingType::Multicast)
            .await
            .unwrap(),
        Outcome::Done
    );
    let sub = |name: &str| QueueConfig {
        name: name.to_string(),
        address: "t1".to_string(),
        routing_type: RoutingType::Multicast,
        durable: true,
    };
    assert_eq!(
        c.create_queue_with(&sub("s1"), Some("maas-storage-controller"))
            .await
            .unwrap(),
        Outcome::Done
    );
    assert_eq!(
        c.create_queue_with(&sub("s1"), Some("someone-else"))
            .await
            .unwrap(),
        Outcome::AlreadyThere
    );
    // Recorded: getUser -> ["maas-storage-controller"].
    assert_eq!(
        c.queue_user("s1").await.unwrap().as_deref(),
        Some("maas-storage-controller")
    );
    // Without a user (the plain create_queue): none.
    c.create_queue(&sub("plain")).await.unwrap();
    assert_eq!(c.queue_user("plain").await.unwrap(), None);
    let err = c.queue_user("nope").await.unwrap_err();
    assert_eq!(err.code(), Some("AMQ229067"), "{err}");
    // A queue on another address is not listed.
    c.create_queue(&queue("elsewhere")).await.unwrap();
    assert!(b.set_message_count("s1", 3));

    let listed = c.list_queues_of_address("t1").await.unwrap();
    assert_eq!(
        listed,
        vec![
            QueueInfo {
                name: "plain".into(),
                address: "t1".into(),
                routing_type: RoutingType::Multicast,
                durable: true,
                user: None,
                message_count: 0,
                consumer_count: 0,
                temporary: false,
            },
            QueueInfo {
                name: "s1".into(),
                address: "t1".into(),
                routing_type: RoutingType::Multicast,
                durable: true,
                user: Some("maas-storage-controller".into()),
                message_count: 3,
                consumer_count: 0,
                temporary: false,
            },
        ]
    );
    assert!(
        c.list_queues_of_address("nothing")
            .await
            .unwrap()
            .is_empty()
    );

    // 250 queues on one address: three pages of 100, every queue once.
    for i in 0..248 {
        c.create_queue_with(&sub(&format!("bulk.{i:03}")), Some("bulk"))
            .await
            .unwrap();
    }
    b.reset_counters();
    let all = c.list_queues_of_address("t1").await.unwrap();
    assert_eq!(all.len(), 250);
    let mut names: Vec<&str> = all.iter().map(|q| q.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 250);
    assert_eq!(b.counters().of("listQueues"), 3);
    c.close().await;
    b.stop().await;
}
