//! Bench: the router network. 20 interior routers and 100 edge routers (router emulators with the real router's
//! cost model, all in this process so that they see each other's connectors), one router-agent each (in-process,
//! the same code as the binary), router pods from one shared pod list as config-service `podsense` or the
//! Kubernetes API would give them.
//!
//! (a) from empty to the full topology (every interior pair joined once, every edge attached), wall time from
//!     starting the agents (target: within 2 s)
//! (b) one interior pod joining the 20-router mesh: connector writes across all agents, edge routers included
//!     (target: at most 20); an edge stays on its interior while that one is there, so no edge moves.
//!
//! Run with `scripts/bench mesh` (or `cargo bench -p router-agent --bench mesh`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::router::ClientConfig;
use maas_e2e::router::{CONNECTOR, EmulatorConfig, Mode, RouterEmulator};
use maas_model::{MeshInputs, PodInfo, RouterMode};
use maas_ops::Health;
use maas_source::{ConfigState, PodsState};
use router_agent::agent::{AgentConfig, run_agent};
use router_agent::desired::{BrokersInput, Inputs, spawn_desired};
use router_agent::metrics::Metrics;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const INTERIOR: usize = 20;
const EDGES: usize = 100;

struct Pod {
    name: String,
    mode: Mode,
    emu: RouterEmulator,
    health: Health,
}

fn pod_info(p: &Pod) -> PodInfo {
    let port = p.emu.addr().port();
    let mut ports = BTreeMap::new();
    if p.mode == Mode::Interior {
        ports.insert("inter-router".to_string(), port);
        ports.insert("edge".to_string(), port);
    }
    ports.insert("amqp".to_string(), port);
    let mut labels = BTreeMap::from([(
        "app.kubernetes.io/component".to_string(),
        "router".to_string(),
    )]);
    if p.mode == Mode::Edge {
        labels.insert("maas.io/router-mode".into(), "edge".into());
    }
    PodInfo {
        name: p.name.clone(),
        host: "127.0.0.1".into(),
        phase: "Running".into(),
        ready: true,
        ports: BTreeMap::from([("router".to_string(), ports)]),
        labels,
        annotations: Default::default(),
    }
}

fn pods_state(pods: &[Pod]) -> Arc<PodsState> {
    Arc::new(PodsState {
        pods: pods.iter().map(pod_info).collect(),
        synced: true,
    })
}

async fn start_pod(name: String, mode: Mode) -> Pod {
    let emu = RouterEmulator::start(EmulatorConfig {
        router_id: format!("Router.{name}"),
        cost_model: true,
        mode,
        ..Default::default()
    })
    .await
    .expect("emulator");
    Pod {
        name,
        mode,
        emu,
        health: Health::new(),
    }
}

fn start_agent(
    p: &Pod,
    config_rx: &watch::Receiver<Arc<ConfigState>>,
    pods_rx: &watch::Receiver<Arc<PodsState>>,
    token: &CancellationToken,
) {
    let (metrics, _) = Metrics::new();
    let desired = spawn_desired(
        config_rx.clone(),
        Inputs {
            brokers: BrokersInput::None,
            routers: BrokersInput::Pods(pods_rx.clone()),
            entity_options: Default::default(),
            mesh: MeshInputs {
                own: Some(p.name.clone()),
                mode: if p.mode == Mode::Edge {
                    RouterMode::Edge
                } else {
                    RouterMode::Interior
                },
                ..Default::default()
            },
        },
        metrics.clone(),
    );
    tokio::spawn(run_agent(
        AgentConfig {
            router: ConnectOptions::from_url(&p.emu.url()).expect("url"),
            client: ClientConfig::default(),
            drift_check_interval: Duration::ZERO,
            backoff: Backoff::default(),
        },
        desired,
        metrics,
        p.health.clone(),
        false,
        token.clone(),
    ));
}

fn mesh_connectors(p: &Pod) -> Vec<String> {
    p.emu
        .entities(CONNECTOR)
        .into_iter()
        .filter_map(|r| r.get("name")?.as_str().map(str::to_string))
        .filter(|n| n.starts_with("maas-router-"))
        .collect()
}

fn full_topology(pods: &[Pod]) -> bool {
    let interiors: Vec<&Pod> = pods.iter().filter(|p| p.mode == Mode::Interior).collect();
    pods.iter().all(|p| {
        let n = mesh_connectors(p).len();
        let want = match p.mode {
            Mode::Interior => interiors.iter().filter(|o| o.name < p.name).count(),
            Mode::Edge => 1,
        };
        n == want && p.health.is_ready()
    })
}

fn connector_writes(p: &Pod) -> u64 {
    let c = p.emu.counters();
    ["CREATE", "DELETE"]
        .iter()
        .map(|op| {
            c.by_type
                .get(&(op.to_string(), CONNECTOR.to_string()))
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

async fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        if started.elapsed() > limit {
            panic!("{what}: not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let files: BTreeMap<String, String> = [(
        "json".to_string(),
        r#"{"orders": {}, "events": {"multicast": true}, "chat": {}}"#.to_string(),
    )]
    .into();
    let config = maas_model::parse_config("bench", &files, None).expect("addresses");
    let (_config_tx, config_rx) = watch::channel(Arc::new(ConfigState {
        config: Some(Arc::new(config)),
        synced: true,
        ..Default::default()
    }));
    let mut pods = Vec::new();
    for i in 0..INTERIOR {
        pods.push(start_pod(format!("router-{i:02}"), Mode::Interior).await);
    }
    for i in 0..EDGES {
        pods.push(start_pod(format!("edge-{i:03}"), Mode::Edge).await);
    }
    let (pods_tx, pods_rx) = watch::channel(pods_state(&pods));
    let token = CancellationToken::new();

    // (a) from empty.
    let started = Instant::now();
    for p in &pods {
        start_agent(p, &config_rx, &pods_rx, &token);
    }
    wait("full topology", Duration::from_secs(60), || {
        full_topology(&pods)
    })
    .await;
    let took = started.elapsed();
    let pairs: usize = pods.iter().map(|p| mesh_connectors(p).len()).sum();
    println!(
        "(a) {INTERIOR} interior + {EDGES} edge routers from empty to the full topology: {:.2} s \
         ({pairs} connectors: {} inter-router pairs + {EDGES} edge uplinks; target <= 2 s)",
        took.as_secs_f64(),
        INTERIOR * (INTERIOR - 1) / 2
    );

    // (b) one interior pod joins.
    for p in &pods {
        p.emu.reset_counters();
    }
    let before: Vec<Vec<String>> = pods.iter().map(mesh_connectors).collect();
    let joiner = start_pod(format!("router-{INTERIOR:02}"), Mode::Interior).await;
    pods.push(joiner);
    let started = Instant::now();
    if let Some(p) = pods.last() {
        start_agent(p, &config_rx, &pods_rx, &token);
    }
    pods_tx.send_replace(pods_state(&pods));
    wait("topology after the join", Duration::from_secs(60), || {
        full_topology(&pods)
    })
    .await;
    // Let any late write land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = started.elapsed();
    let interior_writes: u64 = pods
        .iter()
        .filter(|p| p.mode == Mode::Interior)
        .map(connector_writes)
        .sum();
    let edge_writes: u64 = pods
        .iter()
        .filter(|p| p.mode == Mode::Edge)
        .map(connector_writes)
        .sum();
    // Writes of anything but connectors on the routers that were already there (a rewritten generation marker or
    // address entity would show here; the new pod itself gets its whole configuration).
    let joiner_writes = pods
        .last()
        .map_or(0, |p| p.emu.counters().writes() - connector_writes(p));
    let other_writes: u64 = pods
        .iter()
        .map(|p| p.emu.counters().writes() - connector_writes(p))
        .sum::<u64>()
        - joiner_writes;
    let moved = pods
        .iter()
        .zip(before.iter())
        .filter(|(p, b)| p.mode == Mode::Edge && mesh_connectors(p) != **b)
        .count();
    println!(
        "(b) router-{INTERIOR:02} joins a {INTERIOR}-router mesh: {} connector writes across all agents (target \
         <= {INTERIOR}): {interior_writes} on interior routers, {edge_writes} on edge routers ({moved} of {EDGES} \
         edges moved); {other_writes} writes of other entities on the routers already there (address \
         entities, the generation marker; target 0); applied in {:.2} s",
        interior_writes + edge_writes,
        took.as_secs_f64()
    );
    token.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
}
