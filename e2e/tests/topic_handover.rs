//! The topic hand-over (docs/architecture.md §5, issue 10): "A durable subscriber detaches, 100 messages are
//! published, and the topic's pod is drained. The subscription and its 100 messages must be on the new pod before
//! the old pod's links are removed. The subscriber reattaches and gets all 100 exactly once, in order."
//!
//! Real processes: the `router-agent` binary (file mode, `--topic-handover --handover-file`) configuring a router
//! emulator, and the `subscription-service` binary (`--handover-file`, the same file) moving the subscription,
//! over three Artemis broker emulators. Both read the same address directory (topic `news`, the configured
//! subscription `sub1` on it) and the same brokers file; the test only edits the brokers file (the drain) and
//! watches. The queue `sub1` is made on the topic's pod through the broker's management, as storage-controller
//! would (storage-controller itself is not run).
//!
//! The router emulator speaks management only (no data path). Where a client would reach a broker through the
//! router, the test goes to the broker the router's linkRoutes name at that moment (read from the router
//! emulator), as e2e/tests/topic_fanout.rs does: the publishers, and at the end the subscriber, which attaches
//! straight to the new pod's fully qualified queue `news::sub1` (the broker name the router's linkRoute for `sub1`
//! leads to, with its `addExternalPrefix` `news::`).
//!
//! While the hand-over runs, a second publisher keeps sending (one message every ~20 ms, to whichever pod the
//! router routes `news` to at that moment): what reaches the old pod after the copy and before the links move must
//! be swept to the new pod, not lost with the old queue.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{ArtemisClient, ClientConfig, QueueConfig, RoutingType};
use maas_amqp::messaging::Messaging;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use maas_e2e::router::{EmulatorConfig, LINK_ROUTE, RouterEmulator};
use maas_model::BrokerPod;
use serde_json::json;

const TOPIC: &str = "news";
const SUB: &str = "sub1";
const BACKLOG: u64 = 100;
const LIMIT: Duration = Duration::from_secs(60);

/// The path of workspace binary `name` of package `package`, built (or brought up to date) with the profile and
/// target directory of this test: `cargo test -p maas-e2e` builds only this package's own binaries.
fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = profile_dir.join(name);
    let mut built = BUILT
        .get_or_init(|| Mutex::new(BTreeSet::new()))
        .lock()
        .unwrap();
    if built.insert(name.to_string()) {
        let profile = profile_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .args(["build", "--quiet", "-p", package, "--bin", name])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        match profile.as_str() {
            "debug" => {}
            "release" => {
                c.arg("--release");
            }
            other => {
                c.args(["--profile", other]);
            }
        }
        let status = c.status().unwrap();
        assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        );
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A child process killed (by its id) when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn opts(b: &BrokerEmulator) -> ConnectOptions {
    ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap()
}

fn message(seq: u64) -> Message<Body<Value>> {
    Message::builder()
        .application_properties(
            ApplicationProperties::builder()
                .insert("seq", SimpleValue::Ulong(seq))
                .build(),
        )
        .body(Body::Value(AmqpValue(Value::String(format!("m{seq}")))))
        .build()
}

fn seq_of(m: &Message<Body<Value>>) -> u64 {
    match m
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get("seq"))
    {
        Some(SimpleValue::Ulong(n)) => *n,
        other => panic!("no seq property: {other:?}"),
    }
}

/// Publish `seqs` to the topic on `b`, each accepted before the call returns.
async fn publish(b: &BrokerEmulator, seqs: std::ops::Range<u64>) {
    let mut m = Messaging::open(&opts(b), Duration::from_secs(5))
        .await
        .unwrap();
    let mut sender = m.sender("publisher", TOPIC).await.unwrap();
    for seq in seqs {
        sender.send(message(seq)).await.unwrap();
    }
    let _ = sender.close().await;
    m.close(Duration::from_secs(1)).await;
}

/// The pods the router's linkRoutes with `prefix` lead to (one per linkRoute).
fn routed(router: &RouterEmulator, prefix: &str) -> Vec<String> {
    router
        .entities(LINK_ROUTE)
        .into_iter()
        .filter(|r| r["prefix"] == json!(prefix))
        .filter_map(|r| {
            r["connection"]
                .as_str()?
                .strip_prefix("maas-broker-")
                .map(str::to_string)
        })
        .collect()
}

fn brokers_file(path: &Path, brokers: &BTreeMap<String, BrokerEmulator>, draining: Option<&str>) {
    let pods: Vec<serde_json::Value> = brokers
        .iter()
        .map(|(name, b)| {
            json!({"name": name, "host": "127.0.0.1", "port": b.addr().port(),
                   "draining": draining == Some(name.as_str())})
        })
        .collect();
    // Written whole through a rename, as an operator's tooling would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({ TOPIC: pods }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One sample of the hand-over.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    /// The router still holds a linkRoute of the topic or of the subscription to the old pod.
    old_links: bool,
    /// Messages of the backlog (seq < BACKLOG) in the new pod's queue `sub1`.
    backlog_on_new: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_topic_pods_subscription_and_its_messages_reach_the_new_pod_before_its_links_go()
{
    let router_agent = binary("router-agent", "router-agent");
    let subscription_service = binary("subscription-service", "subscription-service");

    let mut brokers = BTreeMap::new();
    for i in 0..3 {
        let name = format!("b-{i}");
        let b = BrokerEmulator::start(BrokerConfig {
            cost_model: CostModel::none(),
            name: name.clone(),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        brokers.insert(name, b);
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
    let old = maas_model::topic_pod(TOPIC, &pods).unwrap().name.clone();
    let mut drained = pods.clone();
    for p in &mut drained {
        p.draining = p.name == old;
    }
    let new = maas_model::topic_pod(TOPIC, &drained).unwrap().name.clone();
    println!("topic {TOPIC}: {old} drains, {new} takes it over");

    // The topic's address on every pod, the configured subscription's queue on the topic's pod (what
    // storage-controller makes).
    for (name, b) in &brokers {
        let c = ArtemisClient::connect(&opts(b), ClientConfig::default())
            .await
            .unwrap();
        c.create_address(TOPIC, RoutingType::Multicast)
            .await
            .unwrap();
        if *name == old {
            let q = QueueConfig {
                name: SUB.into(),
                address: TOPIC.into(),
                routing_type: RoutingType::Multicast,
                durable: true,
            };
            c.create_queue_with(&q, Some("maas-storage-controller"))
                .await
                .unwrap();
        }
        c.close().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let addresses = dir.path().join("addresses");
    std::fs::create_dir(&addresses).unwrap();
    std::fs::write(
        addresses.join("json"),
        r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"},
            "sub1": {"subscription": true, "topic": "news"}}"#,
    )
    .unwrap();
    std::fs::write(addresses.join("flavor.json"), r#"{"t": {"type": "topic"}}"#).unwrap();
    let brokers_path = dir.path().join("brokers.json");
    brokers_file(&brokers_path, &brokers, None);
    let handover = dir.path().join("handover.json");
    let password = dir.path().join("broker-password");
    std::fs::write(&password, "admin\n").unwrap();

    let router = RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let _agent = Proc(
        Command::new(&router_agent)
            .args(["run", "--router-url", &router.url()])
            .args(["--addresses-dir", addresses.to_str().unwrap()])
            .args(["--brokers-file", brokers_path.to_str().unwrap()])
            .arg("--topic-handover")
            .args(["--handover-file", handover.to_str().unwrap()])
            .args(["--http-addr", "127.0.0.1:0", "--debounce", "50ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        maas_e2e::support::wait_until(LIMIT, || {
            routed(&router, TOPIC) == [old.clone(), old.clone()]
                && routed(&router, SUB) == [old.clone()]
        })
        .await,
        "router-agent did not route {TOPIC} and {SUB} to {old}: {:?} {:?}",
        routed(&router, TOPIC),
        routed(&router, SUB)
    );

    // The subscriber attaches to its subscription, then detaches; 100 messages are published while it is away.
    {
        let mut m = Messaging::open(&opts(&brokers[&old]), Duration::from_secs(5))
            .await
            .unwrap();
        let r = m
            .receiver("subscriber", &format!("{TOPIC}::{SUB}"), 10)
            .await
            .unwrap();
        let _ = r.close().await;
        m.close(Duration::from_secs(1)).await;
    }
    publish(&brokers[&old], 0..BACKLOG).await;
    assert_eq!(brokers[&old].queues()[SUB].messages, BACKLOG);

    let _service = Proc(
        Command::new(&subscription_service)
            .args(["run", "--brokers-file", brokers_path.to_str().unwrap()])
            .args(["--addresses-dir", addresses.to_str().unwrap()])
            .args(["--broker-username", "admin"])
            .args(["--broker-password-file", password.to_str().unwrap()])
            .args(["--handover-file", handover.to_str().unwrap()])
            .args([
                "--handover-grace",
                "2s",
                "--interval",
                "1s",
                "--debounce",
                "50ms",
            ])
            .args(["--http-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // A publisher that keeps sending during the hand-over, each message to the pod the router routes the topic to.
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let trickle = {
        let stop = stop.clone();
        let sent = sent.clone();
        let router_links = {
            let r = router.clone();
            move || routed(&r, TOPIC)
        };
        let brokers = brokers.clone();
        tokio::spawn(async move {
            let mut senders: BTreeMap<String, (Messaging, fe2o3_amqp::Sender)> = BTreeMap::new();
            let mut seq = BACKLOG;
            while !stop.load(Ordering::Relaxed) {
                let Some(pod) = router_links().first().cloned() else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if !senders.contains_key(&pod) {
                    let mut m = Messaging::open(&opts(&brokers[&pod]), Duration::from_secs(5))
                        .await
                        .unwrap();
                    let s = m.sender("trickle", TOPIC).await.unwrap();
                    senders.insert(pod.clone(), (m, s));
                }
                let (_, s) = senders.get_mut(&pod).unwrap();
                s.send(message(seq)).await.unwrap();
                sent.lock().unwrap().push((seq, pod));
                seq += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for (_, (m, s)) in senders {
                let _ = s.close().await;
                m.close(Duration::from_secs(1)).await;
            }
        })
    };

    // The topic's pod drains. Sample (old links still there?, backlog on the new pod) every ~10 ms until the old
    // links are gone and the old queue has been swept away.
    let started = Instant::now();
    brokers_file(&brokers_path, &brokers, Some(&old));
    let mut samples = Vec::new();
    loop {
        let old_links = routed(&router, TOPIC)
            .iter()
            .chain(&routed(&router, SUB))
            .any(|p| *p == old);
        let backlog_on_new = brokers[&new]
            .messages(SUB)
            .unwrap_or_default()
            .iter()
            .filter(|m| seq_of(m) < BACKLOG)
            .count();
        samples.push(Sample {
            at: started.elapsed(),
            old_links,
            backlog_on_new,
        });
        if !old_links && !brokers[&old].queues().contains_key(SUB) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the hand-over did not finish: old links {old_links}, {backlog_on_new} of the backlog on {new}, \
             queues on {old}: {:?}",
            brokers[&old].queues().keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    trickle.await.unwrap();

    // Never were the old links gone while the new pod lacked part of the backlog.
    let bad: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.old_links && s.backlog_on_new < BACKLOG as usize)
        .collect();
    assert!(
        bad.is_empty(),
        "links gone before the backlog moved: {bad:?}"
    );
    let links_gone = samples.iter().find(|s| !s.old_links).unwrap();
    let all_moved = samples
        .iter()
        .find(|s| s.backlog_on_new == BACKLOG as usize)
        .unwrap();
    let with_old_links_and_backlog = samples
        .iter()
        .filter(|s| s.old_links && s.backlog_on_new == BACKLOG as usize)
        .count();
    println!(
        "{} samples; backlog on {new} after {:?}; old links gone after {:?} ({with_old_links_and_backlog} samples \
         with both); old queue swept after {:?}",
        samples.len(),
        all_moved.at,
        links_gone.at,
        started.elapsed()
    );
    // The links followed the topic (both the topic's pair and the subscription's route).
    assert_eq!(routed(&router, TOPIC), [new.clone(), new.clone()]);
    assert_eq!(routed(&router, SUB), std::slice::from_ref(&new));
    assert_eq!(
        std::fs::read_to_string(&handover).unwrap().trim(),
        format!("{{\"released\":[\"{old}\"]}}")
    );

    // The subscriber comes back (on the new pod, where the router now routes `sub1`): every backlog message once,
    // in order, then every message published during the hand-over, once each.
    let sent = sent.lock().unwrap().clone();
    let to_old = sent.iter().filter(|(_, p)| *p == old).count();
    let to_new = sent.iter().filter(|(_, p)| *p == new).count();
    println!(
        "during the hand-over {} message(s) published: {to_old} through the old pod, {to_new} through the new one",
        sent.len()
    );
    assert!(
        to_old > 0 && to_new > 0,
        "publishers crossed the hand-over: {to_old} {to_new}"
    );
    let mut m = Messaging::open(&opts(&brokers[&new]), Duration::from_secs(5))
        .await
        .unwrap();
    let mut r = m
        .receiver("subscriber", &format!("{TOPIC}::{SUB}"), 50)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Ok(d)) =
        tokio::time::timeout(Duration::from_millis(500), r.recv::<Body<Value>>()).await
    {
        r.accept(&d).await.unwrap();
        got.push(seq_of(d.message()));
    }
    let _ = r.close().await;
    m.close(Duration::from_secs(1)).await;
    assert_eq!(
        got.iter()
            .take(BACKLOG as usize)
            .copied()
            .collect::<Vec<_>>(),
        (0..BACKLOG).collect::<Vec<_>>(),
        "the backlog first, every message once, in order"
    );
    let rest: Vec<u64> = got[BACKLOG as usize..].to_vec();
    let rest_set: BTreeSet<u64> = rest.iter().copied().collect();
    assert_eq!(rest.len(), rest_set.len(), "no duplicates: {rest:?}");
    assert_eq!(
        rest_set,
        sent.iter().map(|(s, _)| *s).collect::<BTreeSet<_>>(),
        "every message published during the hand-over, none lost with the old queue"
    );
    assert!(!brokers[&old].queues().contains_key(SUB));
}
