//! A topic on a 3-pod broker cluster: 3 subscribers attach one after another, then a publisher sends; every
//! subscriber must get every message (docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §2 shows
//! what went wrong on the real peers with a linkRoute pair per pod: each attach went to one of the brokers,
//! "balanced attach by attach", and receivers on the other broker got nothing).
//!
//! The router's data path is not emulated (the router emulator is management only), so this test routes each
//! attach the way §2 saw qdrouterd do it: to a connection picked at random among the linkRoutes the ROUTER HOLDS
//! for the address (read from the router emulator after router-agent configured it), then attaches straight to that
//! broker emulator. With router-agent's configuration (a topic's linkRoutes on ONE pod) every subscriber gets every
//! message whatever the random picks; the same procedure over a linkRoute pair per pod (the old configuration)
//! loses messages, which shows the test can fail.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{AmqpValue, Message};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Sender, Session};
use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{ArtemisClient, ClientConfig, RoutingType};
use maas_amqp::connect::open_connection;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use maas_e2e::router::{EmulatorConfig, LINK_ROUTE, RouterEmulator};
use maas_model::{BrokerPod, Brokers, EntityOptions};
use maas_ops::Health;
use maas_source::ConfigState;
use rand::Rng;
use router_agent::agent::{AgentConfig, run_agent};
use router_agent::desired::{BrokersInput, Inputs, spawn_desired};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 20;

async fn broker(name: &str) -> BrokerEmulator {
    BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel::none(),
        name: name.into(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

fn opts(b: &BrokerEmulator) -> ConnectOptions {
    ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap()
}

/// The broker pods the router's linkRoutes for `prefix` lead to, by connection name (one entry per linkRoute).
fn routed_pods(router: &RouterEmulator, prefix: &str) -> Vec<String> {
    router
        .entities(LINK_ROUTE)
        .into_iter()
        .filter(|r| r["prefix"] == serde_json::json!(prefix))
        .map(|r| {
            r["connection"]
                .as_str()
                .unwrap()
                .strip_prefix("maas-broker-")
                .unwrap()
                .to_string()
        })
        .collect()
}

/// 3 subscribers, then a publisher of MESSAGES; each attach goes to a pod picked at random among `routes`.
/// Returns how many messages each subscriber got.
async fn run_round(brokers: &BTreeMap<String, BrokerEmulator>, routes: &[String]) -> Vec<usize> {
    let pick = || routes[rand::rng().random_range(0..routes.len())].clone();
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let b = &brokers[&pick()];
        let mut opened = open_connection(&opts(b)).await.unwrap();
        let mut session = Session::begin(&mut opened.connection).await.unwrap();
        let receiver = Receiver::attach(&mut session, format!("sub-{i}"), "news")
            .await
            .unwrap();
        subscribers.push((opened, session, receiver));
    }
    let b = &brokers[&pick()];
    let mut opened = open_connection(&opts(b)).await.unwrap();
    let mut session = Session::begin(&mut opened.connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "publisher", "news")
        .await
        .unwrap();
    for n in 0..MESSAGES {
        let m = Message::builder()
            .body(AmqpValue(Value::String(format!("m{n}"))))
            .build();
        sender.send(m).await.unwrap();
    }
    let mut got = Vec::new();
    for (_, _, receiver) in &mut subscribers {
        let mut n = 0;
        while let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(300), receiver.recv::<Value>()).await
        {
            receiver.accept(&d).await.unwrap();
            n += 1;
        }
        got.push(n);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_of_a_topic_on_a_three_pod_cluster() {
    let mut brokers = BTreeMap::new();
    for i in 0..3 {
        let name = format!("shared-{i}");
        brokers.insert(name.clone(), broker(&name).await);
    }
    // The topic's MULTICAST address on every pod, as storage-controller makes it.
    for b in brokers.values() {
        let c = ArtemisClient::connect(&opts(b), ClientConfig::default())
            .await
            .unwrap();
        c.create_address("news", RoutingType::Multicast)
            .await
            .unwrap();
        c.close().await;
    }
    let pods: Vec<BrokerPod> = brokers
        .iter()
        .map(|(name, b)| BrokerPod {
            name: name.clone(),
            host: "127.0.0.1".into(),
            port: b.addr().port(),
            draining: false,
            provisioned: None,
            ready: true,
        })
        .collect();

    // router-agent configures a router emulator for the topic on the 3-pod shared cluster.
    let router = RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let files: BTreeMap<String, String> = [
        (
            "json".to_string(),
            r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "shared"}}"#
                .to_string(),
        ),
        (
            "flavor.json".to_string(),
            r#"{"shared": {"type": "topic", "shared": true}}"#.to_string(),
        ),
    ]
    .into();
    let config = maas_model::parse_config("test", &files, None).unwrap();
    let (_config_tx, config_rx) = watch::channel(Arc::new(ConfigState {
        config: Some(Arc::new(config)),
        synced: true,
        ..Default::default()
    }));
    let brokers_file = Brokers {
        clusters: [("shared".to_string(), pods.clone())].into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brokers.json");
    std::fs::write(&path, brokers_file.to_json()).unwrap();
    let (metrics, _) = router_agent::metrics::Metrics::new();
    let health = Health::new();
    let token = CancellationToken::new();
    let desired = spawn_desired(
        config_rx,
        Inputs {
            brokers: BrokersInput::File {
                path: path.clone(),
                rx: maas_source::watch_file(path.clone(), Default::default()).unwrap(),
            },
            routers: BrokersInput::None,
            entity_options: EntityOptions::default(),
            mesh: Default::default(),
        },
        metrics.clone(),
    );
    let agent = tokio::spawn(run_agent(
        AgentConfig {
            router: ConnectOptions::from_url(&router.url()).unwrap(),
            client: maas_amqp::router::ClientConfig::default(),
            drift_check_interval: Duration::ZERO,
            backoff: Default::default(),
        },
        desired,
        metrics,
        health.clone(),
        false,
        token.clone(),
    ));
    assert!(maas_e2e::support::wait_until(Duration::from_secs(10), || health.is_ready()).await);

    // The router holds the topic's linkRoutes to ONE pod: whatever the router picks, all attaches meet there.
    let routes = routed_pods(&router, "news");
    assert_eq!(routes.len(), 2, "an in/out pair: {routes:?}");
    assert_eq!(routes[0], routes[1]);
    for round in 0..5 {
        let got = run_round(&brokers, &routes).await;
        assert_eq!(
            got,
            vec![MESSAGES; 3],
            "round {round}: every subscriber gets every message"
        );
    }

    // The old configuration (a linkRoute pair per pod) under the same procedure: some subscriber misses messages
    // in most rounds (all four attaches land on one pod with probability 1/27 per round).
    let old: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    let mut lost = 0;
    for _ in 0..5 {
        let got = run_round(&brokers, &old).await;
        if got != vec![MESSAGES; 3] {
            lost += 1;
        }
    }
    assert!(lost >= 1, "a linkRoute pair per pod loses messages");

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
}
