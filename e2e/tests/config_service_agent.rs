//! router-agent subscribed to config-service (docs/architecture.md §3, issue 3 §3): the router converges from the
//! snapshots (addresses, flavors, broker pods from `podsense`), and a config-service restart with an unchanged
//! configuration causes ZERO management writes at the router, while later edits still arrive.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::router::ClientConfig;
use maas_e2e::router::{EmulatorConfig, RouterEmulator};
use maas_e2e::support::wait_until;
use maas_model::{EntityOptions, EntityType, PodInfo, brokers_from_pods};
use maas_ops::Health;
use maas_source::kubelet::KubeletWriter;
use router_agent::agent::{AgentConfig, run_agent};
use router_agent::desired::{BrokersInput, spawn_desired};
use router_agent::metrics::Metrics;
use tokio_util::sync::CancellationToken;

fn broker_pod(name: &str, cluster: &str, port: u16) -> PodInfo {
    PodInfo {
        name: name.into(),
        host: "127.0.0.1".into(),
        phase: "Running".into(),
        ready: true,
        ports: BTreeMap::from([(
            "broker".to_string(),
            BTreeMap::from([("amqp".to_string(), port)]),
        )]),
        labels: BTreeMap::from([
            (
                maas_model::pods::COMPONENT_LABEL.to_string(),
                "broker".to_string(),
            ),
            (
                maas_model::pods::CLUSTER_LABEL.to_string(),
                cluster.to_string(),
            ),
        ]),
        // storage-controller has provisioned it: queues get their links (maas_model::pods::resolve_provisioning).
        annotations: BTreeMap::from([(
            maas_model::pods::PROVISIONED_ANNOTATION.to_string(),
            "provisioned".to_string(),
        )]),
    }
}

fn files(json: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("json".to_string(), json.to_string()),
        (
            "flavor.json".to_string(),
            r#"{"small": {"type": "queue"}}"#.to_string(),
        ),
    ])
}

async fn start_config_service(
    dir: &std::path::Path,
    pods: &std::path::Path,
    listen: std::net::SocketAddr,
) -> (config_service::Running, CancellationToken) {
    let mut args = config_service::Args::for_dir(dir);
    args.listen = listen;
    args.pods_file = Some(pods.to_path_buf());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let running = config_service::start(args, async move { s.cancelled().await })
        .await
        .expect("config-service starts");
    (running, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_follows_config_service_and_survives_its_restart_without_churn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("addresses");
    let writer = KubeletWriter::new(&dir).unwrap();
    writer
        .write(&files(
            r#"{"chat": {}, "news": {"multicast": true}, "jobs": {"store_and_forward": true, "flavor": "small"}}"#,
        ))
        .unwrap();
    let pods_file = tmp.path().join("pods.json");
    let pods = vec![
        broker_pod("jobs-0", "jobs", 5674),
        broker_pod("jobs-1", "jobs", 5675),
    ];
    std::fs::write(&pods_file, serde_json::to_string(&pods).unwrap()).unwrap();

    let (cs, cs_stop) =
        start_config_service(&dir, &pods_file, "127.0.0.1:0".parse().unwrap()).await;
    let cs_addr = cs.amqp_addr;
    let emu = RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();

    // The agent as `router-agent run --config-service-url amqp://...` wires it.
    let (metrics, _registry) = Metrics::new();
    let health = Health::new();
    let token = CancellationToken::new();
    let (config_rx, pods_rx) = maas_source::spawn_config_subscription(
        maas_source::ConfigSubscription {
            connect: ConnectOptions::from_url(&format!("amqp://{cs_addr}")).unwrap(),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
            pods_selector: Some(BTreeMap::from([(
                maas_model::pods::COMPONENT_LABEL.to_string(),
                "broker".to_string(),
            )])),
        },
        token.clone(),
    );
    let desired_rx = spawn_desired(
        config_rx,
        router_agent::desired::Inputs {
            brokers: BrokersInput::Pods(pods_rx.unwrap()),
            routers: BrokersInput::None,
            entity_options: EntityOptions::default(),
            mesh: Default::default(),
        },
        metrics.clone(),
    );
    let agent = tokio::spawn(run_agent(
        AgentConfig {
            router: ConnectOptions::from_url(&emu.url()).unwrap(),
            client: ClientConfig::default(),
            drift_check_interval: Duration::ZERO,
            backoff: Backoff::default(),
        },
        desired_rx,
        metrics,
        health.clone(),
        false,
        token.clone(),
    ));
    let ready = wait_until(Duration::from_secs(10), || health.is_ready()).await;
    assert!(ready, "{}", health.detail());

    // The router holds what the snapshots describe: 3 addresses, 2 connectors, 4 autoLinks for the queue on 2 pods.
    let (config, _) = router_agent::desired::load_once(&dir, None, None).unwrap();
    let mut brokers = brokers_from_pods(&pods);
    maas_model::pods::resolve_provisioning(&mut brokers);
    let desired = maas_model::desired_entities(
        &config.addresses,
        &config.flavors,
        &brokers,
        &EntityOptions::default(),
    );
    assert_eq!(desired.len(), 9);
    for e in desired.iter() {
        let rows = emu.entities(e.entity_type.full_name());
        let row = rows
            .iter()
            .find(|r| r.get("name").and_then(|v| v.as_str()) == Some(e.name.as_str()))
            .unwrap_or_else(|| panic!("{} missing on the router", e.name));
        assert!(e.matches_reported(row), "{} differs: {row:?}", e.name);
    }

    // Restart config-service (same port, same configuration): the agent reconnects and sends nothing.
    emu.reset_counters();
    cs_stop.cancel();
    cs.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cs, cs_stop) = start_config_service(&dir, &pods_file, cs_addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        emu.counters().writes(),
        0,
        "no churn across a config-service restart: {:?}",
        emu.counters()
    );
    assert!(health.is_ready(), "{}", health.detail());

    // And the new subscription is live: an edit arrives and is applied.
    writer
        .write(&files(
            r#"{"chat": {}, "news": {"multicast": true}, "jobs": {"store_and_forward": true, "flavor": "small"}, "late": {}}"#,
        ))
        .unwrap();
    let applied = wait_until(Duration::from_secs(10), || {
        emu.entities(EntityType::Address.full_name())
            .iter()
            .any(|r| r.get("name").and_then(|v| v.as_str()) == Some("maas-address/late"))
    })
    .await;
    assert!(applied, "edit after the config-service restart not applied");
    assert!(wait_until(Duration::from_secs(5), || health.is_ready()).await);

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    cs_stop.cancel();
    cs.wait().await.unwrap();
}
