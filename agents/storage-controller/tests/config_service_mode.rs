//! `--config-service-url` mode: addresses and flavors from a config-service subscription
//! (`maas_source::spawn_config_subscription`) against a tiny in-test snapshot server on `maas_amqp::server`
//! (`v1/addresses` and `v1/flavors`, each a full JSON snapshot as an AMQP-value string, re-sent on change), brokers
//! from a brokers file, provisioning against a broker emulator. Then the binary itself with
//! `--config-service-url ... --once`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use maas_amqp::options::{Backoff, ConnectOptions, SaslOptions, Secret};
use maas_amqp::server::{IncomingLink, LinkHandler, Server, ServerOptions};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_model::{Address, AddressKind, AddressSet, Flavor, FlavorSet};
use maas_ops::Health;
use maas_source::{ConfigSubscription, WatchOptions, spawn_config_subscription, watch_file};
use serde_json::json;
use storage_controller::artemis::ArtemisConnector;
use storage_controller::broker::Provisioner;
use storage_controller::controller::{BrokerSource, LoopConfig, Outcome, run_loop};
use storage_controller::metrics::Metrics;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Serves the current `(addresses, flavors)` snapshots; every link gets the current one, then each newer one.
struct Snapshots(watch::Receiver<(String, String)>);

impl LinkHandler for Snapshots {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let which = match link.source_address().as_deref() {
            Some("v1/addresses") => 0,
            Some("v1/flavors") => 1,
            _ => return, // dropped: refused
        };
        let mut rx = self.0.clone();
        let mut accepted = link.accept_sender().await.unwrap();
        let tracker = accepted.tracker.clone();
        tracker.spawn(async move {
            let scope = accepted.scope.clone();
            loop {
                let body = {
                    let v = rx.borrow_and_update();
                    if which == 0 { v.0.clone() } else { v.1.clone() }
                };
                tokio::select! {
                    () = scope.cancelled() => return,
                    r = accepted.sender.send(body) => if r.is_err() { return },
                }
                tokio::select! {
                    () = scope.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
    }
}

fn snapshot(addrs: &[(&str, AddressKind)]) -> (String, String) {
    let mut flavors = FlavorSet::default();
    flavors.insert(Flavor {
        name: "small".into(),
        kind: None,
        description: None,
        template_name: None,
        template_parameters: BTreeMap::new(),
        shared: true,
        extra: BTreeMap::new(),
    });
    let mut addresses = AddressSet::default();
    for (a, k) in addrs {
        addresses.insert(Address {
            address: a.to_string(),
            kind: *k,
            flavor: Some("small".into()),
            topic: None,
        });
    }
    (addresses.to_address_list_json(), flavors.to_json())
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_service_snapshots_drive_provisioning() {
    let broker = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let (snap_tx, snap_rx) = watch::channel(snapshot(&[("orders", AddressKind::Queue)]));
    let server = Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ServerOptions::new("test-config-service"),
        Snapshots(snap_rx),
    )
    .await
    .unwrap();
    let port = server.local_addr().port();
    let server_stop = CancellationToken::new();
    let s = server_stop.clone();
    let serving = tokio::spawn(server.serve(async move { s.cancelled().await }));

    let dir = tempfile::tempdir().unwrap();
    let brokers_path = dir.path().join("brokers.json");
    // The shared flavor's cluster is named after the flavor.
    std::fs::write(
        &brokers_path,
        json!({"small": [{"name": "small-0", "host": "127.0.0.1", "port": broker.addr().port()}]})
            .to_string(),
    )
    .unwrap();

    let token = CancellationToken::new();
    let (config_rx, pods) = spawn_config_subscription(
        ConfigSubscription {
            connect: ConnectOptions::new("127.0.0.1", port),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            },
            pods_selector: None,
        },
        token.clone(),
    );
    assert!(pods.is_none());
    let brokers = BrokerSource::File {
        path: brokers_path.display().to_string(),
        rx: watch_file(
            brokers_path.clone(),
            WatchOptions {
                debounce: Duration::from_millis(50),
                resync: Duration::from_secs(30),
            },
        )
        .unwrap(),
    };
    let mut template = ConnectOptions::new("127.0.0.1", 5672);
    template.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    let (metrics, _registry) = Metrics::new();
    let health = Health::new();
    let task = tokio::spawn(run_loop(
        config_rx,
        brokers,
        Provisioner::new(
            ArtemisConnector {
                template,
                // A short reply timeout: a lost first reply on a fresh management connection (seen rarely under load)
                // is retried by the next pass after 2 s instead of 10 s.
                client: maas_amqp::artemis::ClientConfig {
                    request_timeout: Duration::from_secs(2),
                    ..maas_amqp::artemis::ClientConfig::default()
                },
            },
            metrics,
            10,
        ),
        None,
        health.clone(),
        LoopConfig {
            resync: Duration::from_millis(200),
            retry: Duration::from_millis(100),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
            once: false,
            drain_grace: Duration::ZERO,
        },
        token.clone(),
    ));

    // The first snapshot: the queue is created.
    wait_until("orders provisioned", || {
        health.is_ready() && broker.queues().contains_key("orders")
    })
    .await;
    // A new snapshot adds a topic and removes the queue: the topic's address comes, the (empty) queue goes.
    snap_tx
        .send(snapshot(&[("news", AddressKind::Topic)]))
        .unwrap();
    wait_until("news created, orders removed", || {
        broker.addresses().contains_key("news") && !broker.queues().contains_key("orders")
    })
    .await;
    wait_until("ready", || health.is_ready()).await;
    assert!(
        health.detail().contains("generation 2"),
        "{}",
        health.detail()
    );

    token.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped);

    // The binary with --config-service-url and --once: converges on the current snapshot, exits 0.
    snap_tx
        .send(snapshot(&[
            ("news", AddressKind::Topic),
            ("invoices", AddressKind::Queue),
        ]))
        .unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "admin").unwrap();
    let url = format!("amqp://127.0.0.1:{port}");
    let bf = brokers_path.display().to_string();
    let pwf = pw.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_storage-controller"))
            .args([
                "run",
                "--once",
                "--config-service-url",
                &url,
                "--brokers-file",
                &bf,
                "--broker-username",
                "admin",
                "--broker-password-file",
                &pwf,
                "--http-addr",
                "127.0.0.1:0",
            ])
            .env_remove("ADDRESSES_DIR")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(broker.queues().contains_key("invoices"));

    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    broker.stop().await;
}
