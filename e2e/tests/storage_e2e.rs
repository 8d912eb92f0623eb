//! Queues and topics end to end, in one process: an address directory (written the way the kubelet writes a
//! mounted ConfigMap) with a queue and a topic -> storage-controller (brokers-file mode) provisions two Artemis
//! broker emulators, router-agent binds the router emulator to them (connectors, autoLinks, linkRoutes). Then the
//! queue is removed while its broker holds messages: the router loses its autoLinks, but nothing is destroyed on
//! the broker until the queue is empty.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use maas_amqp::artemis::{ClientConfig, RoutingType};
use maas_amqp::options::{Backoff, ConnectOptions, SaslOptions, Secret};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_e2e::router::{EmulatorConfig, RouterEmulator};
use maas_model::EntityOptions;
use maas_ops::Health;
use maas_source::WatchOptions;
use maas_source::kubelet::KubeletWriter;
use router_agent::agent::{AgentConfig, run_agent};
use router_agent::desired::{FileSources, spawn_file_sources};
use storage_controller::artemis::ArtemisConnector;
use storage_controller::broker::Provisioner;
use storage_controller::controller::{LoopConfig, file_inputs, run_loop};
use tokio_util::sync::CancellationToken;

const AUTOLINK: &str = "org.apache.qpid.dispatch.router.config.autoLink";
const LINKROUTE: &str = "org.apache.qpid.dispatch.router.config.linkRoute";
const CONNECTOR: &str = "org.apache.qpid.dispatch.connector";

const FLAVORS: &str = r#"{"vanilla-queue": {"type": "queue"}, "vanilla-topic": {"type": "topic"}}"#;

fn files(json: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("json".to_string(), json.to_string()),
        ("flavor.json".to_string(), FLAVORS.to_string()),
    ])
}

const BOTH: &str = r#"{"orders": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"},
                      "news": {"store_and_forward": true, "multicast": true, "flavor": "vanilla-topic"}}"#;
const TOPIC_ONLY: &str =
    r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "vanilla-topic"}}"#;

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(emu: &RouterEmulator, t: &str) -> Vec<String> {
    let mut v: Vec<String> = emu
        .entities(t)
        .iter()
        .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .filter(|n| n.starts_with("maas-"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_topic_converge_and_a_full_queue_is_kept_until_empty() {
    let orders_broker = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let news_broker = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let router = RouterEmulator::start(EmulatorConfig::default())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
    std::fs::create_dir(&addrs).unwrap();
    let writer = KubeletWriter::new(&addrs).unwrap();
    writer.write(&files(BOTH)).unwrap();
    let brokers_file = dir.path().join("brokers.json");
    std::fs::write(
        &brokers_file,
        serde_json::json!({
            "orders": [{"name": "orders-0", "host": "127.0.0.1", "port": orders_broker.addr().port()}],
            "news": [{"name": "news-0", "host": "127.0.0.1", "port": news_broker.addr().port()}],
        })
        .to_string(),
    )
    .unwrap();
    let watch = WatchOptions {
        debounce: Duration::from_millis(50),
        resync: Duration::from_secs(30),
    };
    let token = CancellationToken::new();

    // storage-controller, brokers-file mode, in-process.
    let (config_rx, brokers) = file_inputs(&addrs, None, &brokers_file, watch).unwrap();
    let mut template = ConnectOptions::new("127.0.0.1", 5672);
    template.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    let (sc_metrics, _registry) = storage_controller::metrics::Metrics::new();
    let metrics = sc_metrics.clone();
    let prov = Provisioner::new(
        ArtemisConnector {
            template,
            client: ClientConfig::default(),
        },
        sc_metrics,
        100,
    );
    let sc_health = Health::new();
    let sc = tokio::spawn(run_loop(
        config_rx,
        brokers,
        prov,
        None,
        sc_health.clone(),
        LoopConfig {
            resync: Duration::from_secs(30),
            retry: Duration::from_millis(100),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(300),
            },
            once: false,
            drain_grace: Duration::from_secs(5),
        },
        token.clone(),
    ));

    // router-agent, in-process.
    let (ra_metrics, _) = router_agent::metrics::Metrics::new();
    let desired_rx = spawn_file_sources(
        FileSources {
            addresses_dir: addrs.clone(),
            flavors_file: None,
            brokers_file: Some(brokers_file.clone()),
            routers_file: None,
            entity_options: EntityOptions::default(),
            mesh: Default::default(),
            watch,
        },
        ra_metrics.clone(),
    )
    .unwrap();
    let ra_health = Health::new();
    let ra = tokio::spawn(run_agent(
        AgentConfig {
            router: ConnectOptions::from_url(&router.url()).unwrap(),
            client: ClientConfig::default(),
            drift_check_interval: Duration::ZERO,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(300),
            },
        },
        desired_rx,
        ra_metrics,
        ra_health.clone(),
        false,
        token.clone(),
    ));

    // Converge: brokers provisioned, router bound to them.
    wait_until("storage-controller ready", Duration::from_secs(10), || {
        sc_health.is_ready()
    })
    .await;
    wait_until("router-agent ready", Duration::from_secs(10), || {
        ra_health.is_ready()
    })
    .await;
    let q = &orders_broker.queues()["orders"];
    assert_eq!((q.routing_type, q.durable), (RoutingType::Anycast, true));
    assert!(
        news_broker.addresses()["news"]
            .routing_types
            .contains(&RoutingType::Multicast)
    );
    assert!(
        !news_broker.addresses().contains_key("orders"),
        "each address on its own cluster only"
    );
    assert_eq!(
        names(&router, CONNECTOR),
        vec!["maas-broker-news-0", "maas-broker-orders-0"]
    );
    let autolinks = router.entities(AUTOLINK);
    let bound: Vec<(String, String)> = autolinks
        .iter()
        .filter(|r| r.get("address").and_then(|v| v.as_str()) == Some("orders"))
        .map(|r| {
            (
                r.get("direction")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
                r.get("connection")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(bound.len(), 2, "{autolinks:?}");
    assert!(
        bound.iter().all(|(_, c)| c == "maas-broker-orders-0"),
        "{bound:?}"
    );
    assert_eq!(
        names(&router, LINKROUTE).len(),
        2,
        "topic: linkRoute in and out"
    );

    // The queue is removed while its broker holds 7 messages.
    assert!(orders_broker.set_message_count("orders", 7));
    let writes_before = orders_broker.counters().writes;
    writer.write(&files(TOPIC_ONLY)).unwrap();
    wait_until(
        "router loses the queue's autoLinks",
        Duration::from_secs(10),
        || {
            router
                .entities(AUTOLINK)
                .iter()
                .all(|r| r.get("address").and_then(|v| v.as_str()) != Some("orders"))
        },
    )
    .await;
    wait_until(
        "controller reports the held queue",
        Duration::from_secs(10),
        || {
            sc_health
                .detail()
                .contains("queue orders on orders-0 holds 7 message(s)")
        },
    )
    .await;
    // Several retries later: still there, nothing written to that broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(orders_broker.queues()["orders"].messages, 7);
    assert!(orders_broker.addresses().contains_key("orders"));
    assert_eq!(
        orders_broker.counters().writes,
        writes_before,
        "nothing destroyed while it holds messages"
    );
    let holding = metrics
        .queues
        .get_or_create(&storage_controller::metrics::StateLabels {
            state: "holding-messages".into(),
        })
        .get();
    assert_eq!(holding, 1, "the queues{{state=holding-messages}} gauge");

    // Consumers empty it: then the queue and its address go, and the controller is ready again.
    orders_broker.set_message_count("orders", 0);
    wait_until(
        "queue destroyed once empty",
        Duration::from_secs(10),
        || {
            !orders_broker.queues().contains_key("orders")
                && !orders_broker.addresses().contains_key("orders")
        },
    )
    .await;
    wait_until(
        "storage-controller ready again",
        Duration::from_secs(10),
        || sc_health.is_ready(),
    )
    .await;
    assert!(
        news_broker.addresses().contains_key("news"),
        "the topic is untouched"
    );

    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), sc)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), ra)
        .await
        .unwrap()
        .unwrap();
    orders_broker.stop().await;
    news_broker.stop().await;
    router.stop().await;
}
