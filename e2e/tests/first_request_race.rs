//! The first request on a fresh management connection must always get its reply, however the emulator's
//! tasks are scheduled: many connections open in parallel and send their first request the moment the
//! dynamic reply receiver is attached, while busy threads compete for the CPU. A real Artemis or qdrouterd
//! routes a reply to any attached dynamic address; an emulator that registers the reply route only after
//! the attach went out (or in a task spawned later) drops some of these replies and the request times out.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{ArtemisClient, ClientConfig};
use maas_amqp::router::RouterClient;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use maas_e2e::router::{EmulatorConfig, RouterEmulator};

/// Connections per round, rounds per test.
const CONNECTIONS: usize = 200;
const ROUNDS: usize = 3;

/// Short: a reply that is coming arrives in milliseconds; one that was dropped never does.
fn config() -> ClientConfig {
    ClientConfig {
        window: 16,
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

/// Spins one thread per core until dropped, so the emulator's tasks get preempted at any point.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> CpuLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Deterministic: the broker's session task is held up right after it answered the dynamic attach (where a
/// preempted thread would stop), so the first request is read and answered before that task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_artemis_request_gets_its_reply_while_the_attaching_task_is_held_up() {
    let broker = BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel::none(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    broker.pause_after_dynamic_attach(Duration::from_millis(1500));
    let opts = ConnectOptions::from_url(&broker.url_with("admin", "admin")).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let opts = opts.clone();
            tokio::spawn(async move {
                let client = ArtemisClient::connect(&opts, config()).await.unwrap();
                let names = client.get_address_names().await;
                let version = client.get_version().await;
                client.close().await;
                (names, version)
            })
        })
        .collect();
    for task in tasks {
        let (names, version) = task.await.unwrap();
        let names = names.unwrap();
        assert!(
            names.iter().any(|n| n == "activemq.management"),
            "{names:?}"
        );
        assert!(version.unwrap().starts_with("2.21"));
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_artemis_request_on_fresh_connections_always_gets_its_reply() {
    let broker = BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel::none(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let opts = ConnectOptions::from_url(&broker.url_with("admin", "admin")).unwrap();
    let _load = CpuLoad::start();
    let mut failures = Vec::new();
    for _ in 0..ROUNDS {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let opts = opts.clone();
                tokio::spawn(async move {
                    let client = ArtemisClient::connect(&opts, config())
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let names = client.get_address_names().await.map_err(|e| e.to_string());
                    client.close().await;
                    names
                })
            })
            .collect();
        for task in tasks {
            match task.await.unwrap() {
                Ok(names) => assert!(
                    names.iter().any(|n| n == "activemq.management"),
                    "{names:?}"
                ),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} first requests failed, e.g. {:?}",
        failures.len(),
        CONNECTIONS * ROUNDS,
        &failures[..failures.len().min(3)]
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_router_request_on_fresh_connections_always_gets_its_reply() {
    let router = RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let opts = ConnectOptions::from_url(&router.url()).unwrap();
    let _load = CpuLoad::start();
    let mut failures = Vec::new();
    for _ in 0..ROUNDS {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let opts = opts.clone();
                tokio::spawn(async move {
                    let client = RouterClient::connect(&opts, config())
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let nodes = client.get_mgmt_nodes().await.map_err(|e| e.to_string());
                    client.close().await;
                    nodes
                })
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await.unwrap() {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} first requests failed, e.g. {:?}",
        failures.len(),
        CONNECTIONS * ROUNDS,
        &failures[..failures.len().min(3)]
    );
    router.stop().await;
}
