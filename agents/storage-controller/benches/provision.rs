//! Bench: provision 1,000 queues over 3 Artemis broker emulators (default cost model), side by side with the
//! emulators' raw operation rate measured in the same run (the same operations sent straight through
//! `ArtemisClient` with the same window), so the ratio holds on a noisy shared machine. Target: ratio >= 0.8.
//! Then a restarted controller with nothing changed: zero broker writes, and zero server-side-apply PATCH requests
//! against a mocked Kubernetes API holding what the first controller applied (`tests/common/fake_api.rs`).
//!
//! Run: `cargo bench -p storage-controller --bench provision` (exits non-zero when a target is missed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use maas_amqp::artemis::{ArtemisClient, ClientConfig, QueueConfig, RoutingType};
use maas_amqp::options::{ConnectOptions, SaslOptions, Secret};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_model::{AddressKind, BrokerPod, Brokers};
use storage_controller::artemis::ArtemisConnector;
use storage_controller::broker::Provisioner;
use storage_controller::clusters::{ClusterOptions, desired_clusters};
use storage_controller::controller::{DrainClock, reconcile_clusters};
use storage_controller::kube::KubeCtx;
use storage_controller::metrics::Metrics;
use storage_controller::provision::BrokerDesired;

#[path = "../tests/common/fake_api.rs"]
mod fake_api;

const QUEUES: usize = 1_000;
const BROKERS: usize = 3;
const WINDOW: usize = 100;

fn options(port: u16) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    o
}

fn client_config() -> ClientConfig {
    ClientConfig {
        window: WINDOW,
        request_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

async fn start(n: usize) -> Vec<BrokerEmulator> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            BrokerEmulator::start(BrokerConfig::default())
                .await
                .expect("emulator"),
        );
    }
    v
}

fn writes(emus: &[BrokerEmulator]) -> u64 {
    emus.iter().map(|e| e.counters().writes).sum()
}

/// The raw rate: createAddress then createQueue for every queue, straight through the client, all brokers at once.
async fn raw(emus: &[BrokerEmulator], prefix: &str) -> (Duration, u64) {
    let mut clients = Vec::new();
    for e in emus {
        clients.push(
            ArtemisClient::connect(&options(e.addr().port()), client_config())
                .await
                .expect("connect"),
        );
    }
    let before = writes(emus);
    let start = Instant::now();
    futures_util::future::join_all(clients.iter().map(|c| async move {
        let names: Vec<String> = (0..QUEUES).map(|i| format!("{prefix}-{i}")).collect();
        stream::iter(names.iter())
            .map(|n| c.create_address(n, RoutingType::Anycast))
            .buffer_unordered(WINDOW)
            .for_each(|r| async move {
                r.expect("createAddress");
            })
            .await;
        stream::iter(names.iter())
            .map(|n| {
                let q = QueueConfig {
                    name: n.clone(),
                    address: n.clone(),
                    routing_type: RoutingType::Anycast,
                    durable: true,
                };
                async move { c.create_queue(&q).await }
            })
            .buffer_unordered(WINDOW)
            .for_each(|r| async move {
                r.expect("createQueue");
            })
            .await;
    }))
    .await;
    let took = start.elapsed();
    for c in clients {
        c.close().await;
    }
    (took, writes(emus) - before)
}

fn brokers(emus: &[BrokerEmulator]) -> Brokers {
    let pods = emus
        .iter()
        .enumerate()
        .map(|(i, e)| BrokerPod {
            name: format!("bench-{i}"),
            host: "127.0.0.1".into(),
            port: e.addr().port(),
            draining: false,
            provisioned: None,
            ready: true,
        })
        .collect();
    Brokers {
        clusters: BTreeMap::from([("bench".to_string(), pods)]),
    }
}

fn connector() -> ArtemisConnector {
    ArtemisConnector {
        template: options(5672),
        client: client_config(),
    }
}

/// The queue addresses of the bench on one shared flavor (cluster `bench`), as an address configuration.
fn bench_config() -> maas_model::Config {
    let mut flavors = maas_model::FlavorSet::default();
    flavors.insert(maas_model::Flavor {
        name: "bench".into(),
        kind: None,
        description: None,
        template_name: None,
        template_parameters: BTreeMap::new(),
        shared: true,
        extra: BTreeMap::from([("replicas".to_string(), serde_json::json!(BROKERS))]),
    });
    let mut addresses = maas_model::AddressSet::default();
    for i in 0..QUEUES {
        addresses.insert(maas_model::Address {
            address: format!("q-{i}"),
            kind: AddressKind::Queue,
            flavor: Some("bench".into()),
            topic: None,
        });
    }
    maas_model::Config { addresses, flavors }
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let raw_emus = start(BROKERS).await;
        let ctl_emus = start(BROKERS).await;
        let desired: BTreeMap<String, BrokerDesired> = BTreeMap::from([(
            "bench".to_string(),
            (0..QUEUES).map(|i| (format!("q-{i}"), AddressKind::Queue.into())).collect(),
        )]);
        let b = brokers(&ctl_emus);
        let (clusters, _) = desired_clusters(&bench_config());
        let (api, client, _pods) = fake_api::FakeApi::start("bench");
        let kube_ctx = |metrics: Metrics| {
            KubeCtx::new(
                client.clone(),
                ClusterOptions {
                    namespace: "bench".into(),
                    broker_secret: storage_controller::clusters::DEFAULT_BROKER_SECRET.into(),
                    owner: None,
                    ..ClusterOptions::default()
                },
                metrics,
            )
        };

        // Interleave raw and controller runs (warm-up included) so both see the same machine.
        let _ = raw(&raw_emus, "warm").await;
        let (raw_took, raw_ops) = raw(&raw_emus, "raw").await;
        let (metrics, _) = Metrics::new();
        let mut prov = Provisioner::new(connector(), metrics.clone(), WINDOW);
        let first = reconcile_clusters(
            &kube_ctx(metrics.clone()),
            &clusters,
            Some(&[]),
            &mut prov,
            &mut DrainClock::default(),
        )
        .await
        .expect("first cluster reconcile");
        let before = writes(&ctl_emus);
        let start = Instant::now();
        let report = prov.pass(&desired, &b).await;
        let ctl_took = start.elapsed();
        let ctl_ops = writes(&ctl_emus) - before;
        let (raw_took2, raw_ops2) = raw(&raw_emus, "raw2").await;

        let raw_rate = (raw_ops + raw_ops2) as f64 / (raw_took + raw_took2).as_secs_f64();
        let ctl_rate = ctl_ops as f64 / ctl_took.as_secs_f64();
        let ratio = ctl_rate / raw_rate;
        println!(
            "provision {QUEUES} queues x {BROKERS} brokers: {ctl_ops} writes in {:.3} s = {ctl_rate:.0} ops/s; \
             raw emulator rate {raw_rate:.0} ops/s; ratio {ratio:.2} (target >= 0.80); converged {}",
            ctl_took.as_secs_f64(),
            report.converged()
        );

        // Restart with nothing changed: a fresh provisioner and Kubernetes context, zero broker writes, and no
        // PATCH (or any other write) to the API: only the three lists.
        let mut restarted = Provisioner::new(connector(), metrics.clone(), WINDOW);
        let before = writes(&ctl_emus);
        let api_before = api.log().len();
        let start = Instant::now();
        let cr = reconcile_clusters(
            &kube_ctx(metrics),
            &clusters,
            Some(&[]),
            &mut restarted,
            &mut DrainClock::default(),
        )
        .await
        .expect("cluster reconcile after restart");
        let r2 = restarted.pass(&desired, &b).await;
        let restart_writes = writes(&ctl_emus) - before;
        let api_requests = api.since(api_before);
        let ssa_patches = api_requests.iter().filter(|r| r.verb == "apply").count();
        let api_writes = api_requests.iter().filter(|r| r.is_write()).count();
        println!(
            "first start: {} SSA patches; restart with nothing changed: {restart_writes} broker writes, {ssa_patches} SSA \
             patches, {api_writes} API writes, {} API requests (targets 0, 0, 0), pass {:.3} s, converged {}",
            first.patches,
            api_requests.len(),
            start.elapsed().as_secs_f64(),
            r2.converged()
        );
        for e in raw_emus.into_iter().chain(ctl_emus) {
            e.stop().await;
        }
        let ok = report.converged()
            && ctl_ops == (2 * QUEUES * BROKERS) as u64
            && ratio >= 0.8
            && restart_writes == 0
            && first.patches == 3
            && cr.patches == 0
            && ssa_patches == 0
            && api_writes == 0
            && r2.converged();
        if ok {
            ExitCode::SUCCESS
        } else {
            eprintln!("provision bench: a target was missed");
            ExitCode::from(1)
        }
    })
}
