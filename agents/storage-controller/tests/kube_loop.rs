//! Kubernetes mode end to end, in process: `kube_context` (owner ConfigMap read through the API) and `run_loop`
//! against a stateful mocked API server ([`common::fake_api::FakeApi`]: StatefulSets, Services, ConfigMaps,
//! pods published as the pod watch would) and Artemis broker emulators (`maas_e2e::broker::BrokerEmulator`).
//!
//! What a user would check: clusters appear for the addresses; a cluster without pods is not ready; ready pods
//! get their addresses; nothing changed means no PATCH at all (also after a restart, and no broker write);
//! drift is repaired; a removed address's cluster is drained (mark, grace, 0 messages) before it is deleted.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use maas_amqp::options::{Backoff, ConnectOptions, SaslOptions, Secret};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_model::{Address, AddressKind, AddressSet, Config, Flavor, FlavorSet, PodInfo};
use maas_ops::Health;
use maas_source::{ConfigState, PodsState};
use serde_json::json;
use storage_controller::PROVISIONED_ANNOTATION;
use storage_controller::artemis::ArtemisConnector;
use storage_controller::broker::Provisioner;
use storage_controller::clusters::{ClusterOptions, desired_clusters, service, statefulset};
use storage_controller::commands::kube_context;
use storage_controller::controller::{BrokerSource, LoopConfig, Outcome, run_loop};
use storage_controller::kube::KubeCtx;
use storage_controller::metrics::Metrics;
use storage_controller::provision::provisioned_hash;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NS: &str = "maas";
const GRACE: Duration = Duration::from_millis(400);

fn config(addrs: &[(&str, AddressKind)]) -> Config {
    config_with(addrs, "vanilla", false)
}

/// Addresses of one flavor; a shared flavor puts them all on one cluster named after it.
fn config_with(addrs: &[(&str, AddressKind)], flavor: &str, shared: bool) -> Config {
    let mut flavors = FlavorSet::default();
    flavors.insert(Flavor {
        name: flavor.into(),
        kind: None,
        description: None,
        template_name: None,
        template_parameters: BTreeMap::new(),
        shared,
        extra: BTreeMap::from([("replicas".to_string(), json!(1))]),
    });
    let mut addresses = AddressSet::default();
    for (a, k) in addrs {
        addresses.insert(Address {
            address: a.to_string(),
            kind: *k,
            flavor: Some(flavor.into()),
            topic: None,
        });
    }
    Config { addresses, flavors }
}

fn state(cfg: Config, generation: u64) -> Arc<ConfigState> {
    Arc::new(ConfigState {
        config: Some(Arc::new(cfg)),
        generation,
        synced: true,
        inputs_valid: 1,
        ..ConfigState::default()
    })
}

fn pod(name: &str, cluster: &str, port: u16) -> PodInfo {
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
                "app.kubernetes.io/component".to_string(),
                "broker".to_string(),
            ),
            ("maas.io/cluster".to_string(), cluster.to_string()),
        ]),
        annotations: BTreeMap::new(),
    }
}

fn connector() -> ArtemisConnector {
    let mut template = ConnectOptions::new("127.0.0.1", 5672);
    template.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    ArtemisConnector {
        template,
        // A short reply timeout: a lost first reply on a fresh management connection (seen rarely under load)
        // is retried by the next pass after 2 s instead of 10 s.
        client: maas_amqp::artemis::ClientConfig {
            request_timeout: Duration::from_secs(2),
            ..maas_amqp::artemis::ClientConfig::default()
        },
    }
}

fn loop_config() -> LoopConfig {
    LoopConfig {
        resync: Duration::from_millis(150),
        retry: Duration::from_millis(100),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        once: false,
        drain_grace: GRACE,
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running controller loop.
struct Running {
    health: Health,
    metrics: Metrics,
    registry: Arc<prometheus_client::registry::Registry>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Running {
    fn metrics_text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }
    fn passes(&self) -> u64 {
        self.metrics.passes.get()
    }
    async fn wait_passes(&self, n: u64) {
        let target = self.passes() + n;
        wait_until("passes", 10, || self.passes() >= target).await;
    }
    async fn stop(self) {
        self.token.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome, Outcome::Stopped);
    }
}

/// `kube_context` (with the owner ConfigMap) + `run_loop` in Kubernetes mode.
async fn start_loop(
    client: kube::Client,
    config_rx: watch::Receiver<Arc<ConfigState>>,
    pods_rx: watch::Receiver<Arc<PodsState>>,
) -> (Running, KubeCtx) {
    start_loop_with(client, config_rx, pods_rx, false).await
}

/// [`start_loop`], with `--await-topic-release` when `await_topic_release`.
async fn start_loop_with(
    client: kube::Client,
    config_rx: watch::Receiver<Arc<ConfigState>>,
    pods_rx: watch::Receiver<Arc<PodsState>>,
    await_topic_release: bool,
) -> (Running, KubeCtx) {
    let (metrics, registry) = Metrics::new();
    let mut ctx = kube_context(
        client,
        ClusterOptions {
            namespace: NS.into(),
            broker_secret: "broker-creds".into(),
            owner: None,
            ..ClusterOptions::default()
        },
        Some("maas-addresses"),
        metrics.clone(),
    )
    .await
    .unwrap();
    ctx.await_topic_release = await_topic_release;
    let health = Health::new();
    let token = CancellationToken::new();
    let task = tokio::spawn(run_loop(
        config_rx,
        BrokerSource::Pods(pods_rx),
        Provisioner::new(connector(), metrics.clone(), 10),
        Some(ctx.clone()),
        health.clone(),
        loop_config(),
        token.clone(),
    ));
    (
        Running {
            health,
            metrics,
            registry,
            token,
            task,
        },
        ctx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_applies_provisions_and_drains_before_deleting() {
    let e_orders = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let e_news = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let (api, client, pods_rx) = FakeApi::start(NS);
    api.add_configmap("maas-addresses", "cm-uid-1");
    let cfg = config(&[("orders", AddressKind::Queue), ("news", AddressKind::Topic)]);
    let (config_tx, config_rx) = watch::channel(state(cfg.clone(), 1));
    let (run, ctx) = start_loop(client, config_rx, pods_rx).await;
    assert_eq!(ctx.opts.owner.as_ref().unwrap().uid, "cm-uid-1");
    let first = api.log();
    assert_eq!(
        (first[0].verb, first[0].kind, first[0].name.as_str()),
        ("get", "ConfigMap", "maas-addresses"),
        "the owner's uid is read first"
    );

    // 1. Initial configuration -> Service + StatefulSet per cluster, the exact bodies, owned by the ConfigMap.
    wait_until("both clusters applied", 10, || {
        api.statefulset("orders").is_some() && api.statefulset("news").is_some()
    })
    .await;
    wait_until("both services applied", 10, || {
        api.service("orders").is_some() && api.service("news").is_some()
    })
    .await;
    let (desired, _) = desired_clusters(&cfg);
    let applied = |kind: &str, name: &str| {
        api.log()
            .into_iter()
            .find(|r| r.verb == "apply" && r.kind == kind && r.name == name)
            .unwrap()
            .body
    };
    assert_eq!(
        applied("StatefulSet", "orders"),
        statefulset(&desired["orders"], &ctx.opts, 1)
    );
    assert_eq!(
        applied("Service", "news"),
        service(&desired["news"], &ctx.opts)
    );
    assert_eq!(
        applied("StatefulSet", "orders")["metadata"]["ownerReferences"][0]["uid"],
        "cm-uid-1"
    );

    // 2. No pods yet: not ready, both addresses pending (readyz detail and the queues-by-state metric).
    wait_until("not ready with the clusters named", 10, || {
        let (ready, detail) = run.health.snapshot();
        !ready
            && detail.contains("cluster news has no ready broker pod yet")
            && detail.contains("cluster orders has no ready broker pod yet")
    })
    .await;
    let m = run.metrics_text();
    assert!(
        m.contains("maas_storage_controller_queues{state=\"pending\"} 2"),
        "{m}"
    );

    // 3. Pods ready -> provisioned on the emulators -> ready.
    api.set_pods(vec![
        pod("orders-0", "orders", e_orders.addr().port()),
        pod("news-0", "news", e_news.addr().port()),
    ]);
    wait_until("ready", 15, || run.health.is_ready()).await;
    assert!(e_orders.queues().contains_key("orders"));
    assert!(e_news.addresses().contains_key("news"));
    // Each pod is annotated provisioned with the hash of what it holds.
    let hash = |pairs: &[(&str, AddressKind)]| {
        provisioned_hash(
            &pairs
                .iter()
                .map(|(n, k)| (n.to_string(), (*k).into()))
                .collect(),
        )
    };
    assert_eq!(
        api.pod("orders-0")
            .unwrap()
            .annotations
            .get(PROVISIONED_ANNOTATION),
        Some(&hash(&[("orders", AddressKind::Queue)]))
    );
    assert_eq!(
        api.pod("news-0")
            .unwrap()
            .annotations
            .get(PROVISIONED_ANNOTATION),
        Some(&hash(&[("news", AddressKind::Topic)]))
    );
    assert!(api.pdb("orders").is_some() && api.pdb("news").is_some());
    assert!(
        !e_news.queues().contains_key("orders"),
        "per-cluster placement"
    );
    let m = run.metrics_text();
    assert!(
        m.contains("maas_storage_controller_queues{state=\"pending\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("maas_storage_controller_queues{state=\"ready\"} 2"),
        "{m}"
    );

    // 4. Nothing changes: passes go on, the API sees only lists (no PATCH), the brokers no write.
    let mark = api.log().len();
    let writes = e_orders.counters().writes + e_news.counters().writes;
    run.wait_passes(3).await;
    let since = api.since(mark);
    assert!(since.iter().all(|r| r.verb == "list"), "{since:?}");
    assert!(
        since.len() >= 6,
        "each pass lists StatefulSets and Services"
    );
    assert_eq!(
        e_orders.counters().writes + e_news.counters().writes,
        writes
    );

    // 5. Address removed while its broker holds 4 messages: the pod is marked, nothing is deleted.
    assert!(e_orders.set_message_count("orders", 4));
    config_tx
        .send(state(config(&[("news", AddressKind::Topic)]), 2))
        .unwrap();
    wait_until("orders-0 marked draining", 10, || {
        api.pod("orders-0").is_some_and(|p| {
            p.annotations.get("maas.io/draining").map(String::as_str) == Some("true")
        })
    })
    .await;
    let marked_at = api
        .log()
        .into_iter()
        .find(|r| r.verb == "annotate" && r.name == "orders-0")
        .unwrap()
        .at;
    run.wait_passes(4).await;
    assert!(
        api.statefulset("orders").is_some(),
        "kept while it holds messages"
    );
    assert!(
        e_orders.queues().contains_key("orders"),
        "the queue is not destroyed"
    );
    let (ready, detail) = run.health.snapshot();
    assert!(!ready && detail.contains("draining"), "{detail}");
    let metrics = run.metrics_text();
    assert!(metrics.contains("maas_storage_controller_drains_in_progress 1"));
    assert!(
        metrics.contains(r#"maas_storage_controller_drains_waiting{reason="messages"} 1"#)
            && metrics
                .contains(r#"maas_storage_controller_drains_waiting{reason="topic-release"} 0"#),
        "{metrics}"
    );

    // 6. Consumers empty it -> after the grace the StatefulSet, then the Service, are deleted.
    assert!(e_orders.set_message_count("orders", 0));
    wait_until("orders deleted", 10, || {
        api.statefulset("orders").is_none() && api.service("orders").is_none()
    })
    .await;
    let log = api.log();
    let deleted = log
        .iter()
        .find(|r| r.verb == "delete" && r.kind == "StatefulSet" && r.name == "orders")
        .unwrap();
    assert!(
        deleted.at.duration_since(marked_at) >= GRACE,
        "deleted {:?} after the mark, grace {GRACE:?}",
        deleted.at.duration_since(marked_at)
    );
    let svc_deleted = log
        .iter()
        .position(|r| r.verb == "delete" && r.kind == "Service" && r.name == "orders")
        .unwrap();
    let sts_deleted = log
        .iter()
        .position(|r| r.verb == "delete" && r.kind == "StatefulSet" && r.name == "orders")
        .unwrap();
    assert!(sts_deleted < svc_deleted);
    assert!(
        api.pdb("orders").is_none(),
        "the budget goes with its cluster"
    );
    assert!(api.statefulset("news").is_some(), "the other cluster stays");
    wait_until("ready again", 10, || run.health.is_ready()).await;
    run.stop().await;
    e_orders.stop().await;
    e_news.stop().await;
}

/// Converge, stop, start a new controller on the same API and brokers: it sends no PATCH and makes no broker
/// write (only list/get requests and reads). Then drift on a field it owns is repaired by one apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_nothing_changed_sends_no_patch_and_drift_is_repaired() {
    let e = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let (api, client, pods_rx) = FakeApi::start(NS);
    api.add_configmap("maas-addresses", "cm-uid-1");
    api.set_pods(vec![pod("orders-0", "orders", e.addr().port())]);
    let cfg = config(&[("orders", AddressKind::Queue)]);
    let (_config_tx, config_rx) = watch::channel(state(cfg.clone(), 1));
    let (run, _) = start_loop(client.clone(), config_rx.clone(), pods_rx.clone()).await;
    wait_until("ready", 15, || run.health.is_ready()).await;
    run.stop().await;
    let writes: Vec<(&str, &str)> = api
        .log()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| (r.verb, r.kind))
        .collect();
    assert_eq!(
        writes,
        vec![
            ("apply", "Service"),
            ("apply", "StatefulSet"),
            ("apply", "PodDisruptionBudget"),
            ("annotate", "Pod")
        ],
        "the cluster's three objects, then the provisioned annotation"
    );

    // Restart.
    let mark = api.log().len();
    let writes = e.counters().writes;
    let (run, ctx) = start_loop(client, config_rx, pods_rx).await;
    wait_until("ready after restart", 15, || run.health.is_ready()).await;
    run.wait_passes(2).await;
    let since = api.since(mark);
    assert!(
        since.iter().all(|r| r.verb == "list" || r.verb == "get"),
        "restart with nothing changed: only list/get, got {:?}",
        since
            .iter()
            .map(|r| format!("{} {} {}", r.verb, r.kind, r.name))
            .collect::<Vec<_>>()
    );
    assert_eq!(e.counters().writes, writes, "no broker write after restart");

    // Drift: someone changes the image and drops a label we own -> exactly one re-apply, our body back. (A
    // replicas change is not plain drift: pods above the flavor's count are drained first, kube_mock.rs.)
    let mark = api.log().len();
    api.edit_statefulset("orders", |v| {
        v["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone-elses:1");
        v["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("maas.io/flavor");
    });
    wait_until("drift repaired", 10, || {
        api.statefulset("orders").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            == json!(storage_controller::clusters::DEFAULT_IMAGE)
    })
    .await;
    run.wait_passes(2).await;
    let writes: Vec<_> = api
        .since(mark)
        .into_iter()
        .filter(|r| r.is_write())
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].kind, writes[0].verb), ("StatefulSet", "apply"));
    let (desired, _) = desired_clusters(&cfg);
    assert_eq!(
        writes[0].body,
        statefulset(&desired["orders"], &ctx.opts, 1)
    );
    run.stop().await;
    e.stop().await;
}

/// Routers never reach a queue before it exists: a pod is annotated `maas.io/provisioned=<hash of its address
/// set>` only once it holds all of it. A new address on its (shared) cluster changes the hash; the annotation
/// follows only after the new queue exists on the broker. Nothing changed, nothing re-annotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_annotated_provisioned_only_once_they_hold_every_queue() {
    let e = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let (api, client, pods_rx) = FakeApi::start(NS);
    api.add_configmap("maas-addresses", "cm-uid-1");
    api.set_pods(vec![pod("shared-0", "shared", e.addr().port())]);
    let one = config_with(&[("q1", AddressKind::Queue)], "shared", true);
    let (config_tx, config_rx) = watch::channel(state(one, 1));
    let (run, _) = start_loop(client, config_rx, pods_rx).await;
    wait_until("ready", 15, || run.health.is_ready()).await;
    let set = |names: &[&str]| {
        provisioned_hash(
            &names
                .iter()
                .map(|n| (n.to_string(), AddressKind::Queue.into()))
                .collect(),
        )
    };
    let annotation = || {
        api.pod("shared-0")
            .and_then(|p| p.annotations.get(PROVISIONED_ANNOTATION).cloned())
    };
    assert_eq!(annotation(), Some(set(&["q1"])));
    assert!(
        run.metrics_text()
            .contains("maas_storage_controller_pods_provisioned 1")
    );
    // Steady state: no further annotation.
    let annotations = || {
        api.log()
            .iter()
            .filter(|r| r.verb == "annotate" && r.name == "shared-0")
            .count()
    };
    run.wait_passes(3).await;
    assert_eq!(annotations(), 1);

    // q2 joins the cluster: the annotation changes only once q2 exists on the broker.
    config_tx
        .send(state(
            config_with(
                &[("q1", AddressKind::Queue), ("q2", AddressKind::Queue)],
                "shared",
                true,
            ),
            2,
        ))
        .unwrap();
    wait_until("annotation follows the new set", 10, || {
        if annotation() == Some(set(&["q1", "q2"])) {
            assert!(
                e.queues().contains_key("q2"),
                "annotated before the queue existed"
            );
            return true;
        }
        false
    })
    .await;
    run.wait_passes(2).await;
    assert_eq!(annotations(), 2);
    let body = &api
        .log()
        .into_iter()
        .rfind(|r| r.verb == "annotate" && r.name == "shared-0")
        .unwrap()
        .body;
    assert_eq!(
        body,
        &json!({"metadata": {"annotations": {"maas.io/provisioned": set(&["q1", "q2"])}}}),
        "a JSON merge patch of the one annotation"
    );
    run.stop().await;
    e.stop().await;
}

/// One cluster the API refuses (every write to it fails) does not keep another from being created; its failure
/// is reported (`/readyz`, metric) and retried until it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_does_not_stop_another_from_being_created() {
    let (api, client, pods_rx) = FakeApi::start(NS);
    api.add_configmap("maas-addresses", "cm-uid-1");
    api.set_failing("alpha", true);
    let cfg = config(&[("alpha", AddressKind::Queue), ("beta", AddressKind::Queue)]);
    let (_config_tx, config_rx) = watch::channel(state(cfg, 1));
    let (run, _) = start_loop(client, config_rx, pods_rx).await;
    wait_until("beta created", 10, || {
        api.statefulset("beta").is_some()
            && api.service("beta").is_some()
            && api.pdb("beta").is_some()
    })
    .await;
    wait_until("alpha's failure reported", 10, || {
        let (ready, detail) = run.health.snapshot();
        !ready && detail.contains("cluster alpha: Kubernetes API: apply Service alpha")
    })
    .await;
    assert!(api.statefulset("alpha").is_none());
    let m = run.metrics_text();
    assert!(
        m.contains(r#"maas_storage_controller_cluster_errors_total{cluster="alpha"}"#),
        "{m}"
    );
    assert!(
        m.contains("maas_storage_controller_clusters_failing 1"),
        "{m}"
    );
    // The API accepts alpha again: created on a retry.
    api.set_failing("alpha", false);
    wait_until("alpha created", 10, || api.statefulset("alpha").is_some()).await;
    wait_until("no cluster failing", 10, || {
        run.metrics_text()
            .contains("maas_storage_controller_clusters_failing 0")
    })
    .await;
    run.stop().await;
}

/// Until the pod watch has synced, a cluster no address needs is neither marked nor deleted, however many passes
/// run (an empty or partial list proves nothing); once synced, it is drained and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynced_pod_list_never_removes_a_cluster() {
    let e = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let (api, client, pods_rx) = FakeApi::start(NS);
    api.add_configmap("maas-addresses", "cm-uid-1");
    api.set_pods(vec![pod("orders-0", "orders", e.addr().port())]);
    let (config_tx, config_rx) =
        watch::channel(state(config(&[("orders", AddressKind::Queue)]), 1));
    let (run, _) = start_loop(client, config_rx, pods_rx).await;
    wait_until("ready", 15, || run.health.is_ready()).await;
    // The pod watch restarts and has not listed everything yet; meanwhile the address is removed.
    api.set_pods_synced(false);
    config_tx.send(state(config(&[]), 2)).unwrap();
    run.wait_passes(6).await;
    assert!(api.statefulset("orders").is_some());
    assert!(
        api.log().iter().all(|r| !(r.verb == "delete"
            || (r.verb == "annotate" && r.body.to_string().contains("draining")))),
        "nothing marked or deleted on an unsynced pod list"
    );
    let (ready, detail) = run.health.snapshot();
    assert!(
        !ready && detail.contains("pod list not synced yet: scale-down/removal of orders waits"),
        "{detail}"
    );
    // Synced: marked, grace, empty -> deleted.
    api.set_pods_synced(true);
    wait_until("orders deleted", 10, || api.statefulset("orders").is_none()).await;
    run.stop().await;
    e.stop().await;
}

/// `--await-topic-release` end to end: a scale-down of a topic's cluster marks the pod going away, says in
/// `/readyz` and the metrics that it waits for subscription-service, keeps the replicas until the pod carries
/// `maas.io/topics-released=true`, and scales down a drain grace after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_clusters_scale_down_waits_for_subscription_service_to_release_the_pod() {
    let e0 = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let e1 = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let (api, client, pods_rx) = FakeApi::start(NS);
    api.add_configmap("maas-addresses", "cm-uid-1");
    let with_replicas = |n: i64| {
        let mut cfg = config(&[("news", AddressKind::Topic)]);
        let mut f = cfg.flavors.get("vanilla").unwrap().clone();
        f.extra.insert("replicas".into(), json!(n));
        cfg.flavors.insert(f);
        cfg
    };
    let (config_tx, config_rx) = watch::channel(state(with_replicas(2), 1));
    let (run, _ctx) = start_loop_with(client, config_rx, pods_rx, true).await;
    api.set_pods(vec![
        pod("news-0", "news", e0.addr().port()),
        pod("news-1", "news", e1.addr().port()),
    ]);
    let replicas = || {
        api.statefulset("news")
            .and_then(|s| s["spec"]["replicas"].as_i64())
    };
    wait_until("2 replicas applied, both pods provisioned", 10, || {
        replicas() == Some(2)
            && ["news-0", "news-1"].iter().all(|n| {
                api.pod(n)
                    .is_some_and(|p| p.annotations.contains_key(PROVISIONED_ANNOTATION))
            })
    })
    .await;

    // 2 -> 1: news-1 is marked and, empty, waits for its release well past the drain grace.
    config_tx.send(state(with_replicas(1), 2)).unwrap();
    wait_until("news-1 marked draining", 10, || {
        api.pod("news-1").is_some_and(|p| {
            p.annotations.get("maas.io/draining").map(String::as_str) == Some("true")
        })
    })
    .await;
    tokio::time::sleep(GRACE * 2).await;
    run.wait_passes(2).await;
    assert_eq!(replicas(), Some(2), "not scaled down before the release");
    let (ready, detail) = run.health.snapshot();
    assert!(
        !ready && detail.contains("waiting for subscription-service to release news-1 ("),
        "{detail}"
    );
    let metrics = run.metrics_text();
    assert!(
        metrics.contains(r#"maas_storage_controller_drains_waiting{reason="topic-release"} 1"#),
        "{metrics}"
    );

    // subscription-service releases it: scaled down, a drain grace after the release was seen.
    let mut p = api.pod("news-1").unwrap();
    p.annotations
        .insert("maas.io/topics-released".into(), "true".into());
    let released_at = Instant::now();
    api.set_pods(vec![p]);
    wait_until("scaled to 1", 10, || replicas() == Some(1)).await;
    assert!(
        released_at.elapsed() >= GRACE,
        "scaled down {:?} after the release, grace {GRACE:?}",
        released_at.elapsed()
    );
    run.stop().await;
    e0.stop().await;
    e1.stop().await;
}
