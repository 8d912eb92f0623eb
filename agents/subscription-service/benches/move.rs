//! Bench: move 100 durable subscriptions holding 100,000 messages in all (10 topics x 10 subscriptions x 1,000
//! messages) between two Artemis broker emulators (default cost model), side by side in ONE run:
//!
//! (a) the subscription-service binary (release build, its own process) with `--once`: b-0 drains, every queue
//!     moves to b-1 (wall time from start to exit, so it includes start-up, listing, queue creation, the moves
//!     and the deletes), and its resident memory sampled during the move (target <= 32 MB);
//! (b) a minimal receive-then-send client doing the same move back (b-1 drains): per queue, read the old queue's
//!     message count, receive batches of up to the same window, send each, wait for every outcome, accept the
//!     batch on the old pod, until that many moved and the count is 0; the same number of queues at a time; then
//!     delete the old queue. It runs on its own runtime (two threads) in this process.
//!
//! Target: rate (a) / rate (b) >= 0.8. Run: `cargo bench -p subscription-service --bench move` (or
//! `scripts/bench subscriptions`); exits non-zero when a target is missed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Outcome};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use futures_util::{StreamExt, stream};
use maas_amqp::artemis::{ArtemisClient, ClientConfig, QueueConfig, RoutingType};
use maas_amqp::messaging::Messaging;
use maas_amqp::options::{ConnectOptions, SaslOptions, Secret};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_e2e::support::rss_kb;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_subscription-service");
const TOPICS: usize = 10;
const SUBS_PER_TOPIC: usize = 10;
const MESSAGES_PER_TOPIC: u64 = 1_000;
const WINDOW: usize = 250;
const PARALLEL: usize = 4;
const TOTAL: u64 = (TOPICS * SUBS_PER_TOPIC) as u64 * MESSAGES_PER_TOPIC;

fn options(port: u16) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.sasl = SaslOptions::Plain {
        username: "admin".into(),
        password: Secret::new("admin"),
    };
    o
}

fn topic(t: usize) -> String {
    format!("topic-{t}")
}

fn queues() -> Vec<(String, String)> {
    (0..TOPICS)
        .flat_map(|t| (0..SUBS_PER_TOPIC).map(move |s| (topic(t), format!("sub-{t}-{s}"))))
        .collect()
}

/// 100 subscription queues on `b`, then 1,000 messages published to each topic (fan-out: 10 copies each).
async fn setup(b: &BrokerEmulator) {
    let o = options(b.addr().port());
    let mgmt = ArtemisClient::connect(&o, ClientConfig::default())
        .await
        .unwrap();
    for (t, q) in queues() {
        let cfg = QueueConfig {
            name: q,
            address: t,
            routing_type: RoutingType::Multicast,
            durable: true,
        };
        mgmt.create_queue_with(&cfg, Some("maas-storage-controller"))
            .await
            .unwrap();
    }
    mgmt.close().await;
    let mut m = Messaging::open(&o, Duration::from_secs(10)).await.unwrap();
    for t in 0..TOPICS {
        let mut sender = m.sender(&format!("pub-{t}"), &topic(t)).await.unwrap();
        let mut pending = Vec::new();
        for seq in 0..MESSAGES_PER_TOPIC {
            let msg = Message::builder()
                .application_properties(
                    ApplicationProperties::builder()
                        .insert("seq", SimpleValue::Ulong(seq))
                        .build(),
                )
                .body(Body::Value(AmqpValue(Value::String(format!(
                    "message {seq} of {}: a few dozen bytes of payload",
                    topic(t)
                )))))
                .build();
            pending.push(sender.send_batchable(msg).await.unwrap());
            if pending.len() >= 200 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap();
        }
        let _ = sender.close().await;
    }
    m.close(Duration::from_secs(1)).await;
}

/// Every queue on `b` with `MESSAGES_PER_TOPIC` messages (at least), and none on `other`.
fn check_moved(b: &BrokerEmulator, other: &BrokerEmulator) -> Result<(), String> {
    let on = b.queues();
    let off = other.queues();
    for (_, q) in queues() {
        let n = on.get(&q).map_or(0, |s| s.messages);
        if n < MESSAGES_PER_TOPIC {
            return Err(format!("queue {q}: {n} messages on the new pod"));
        }
        if off.contains_key(&q) {
            return Err(format!("queue {q} still on the old pod"));
        }
    }
    Ok(())
}

fn brokers_file(path: &Path, b0: &BrokerEmulator, b1: &BrokerEmulator, draining: &str) {
    let pods: Vec<serde_json::Value> = [("b-0", b0), ("b-1", b1)]
        .iter()
        .map(|(n, b)| json!({"name": n, "host": "127.0.0.1", "port": b.addr().port(), "draining": *n == draining}))
        .collect();
    let clusters: serde_json::Map<String, serde_json::Value> =
        std::iter::once(("shared".to_string(), serde_json::Value::Array(pods))).collect();
    std::fs::write(path, serde_json::Value::Object(clusters).to_string()).unwrap();
}

fn address_dir(dir: &Path) {
    let mut m = serde_json::Map::new();
    for t in 0..TOPICS {
        m.insert(
            topic(t),
            json!({"store_and_forward": true, "multicast": true, "flavor": "shared"}),
        );
    }
    std::fs::write(dir.join("json"), serde_json::Value::Object(m).to_string()).unwrap();
    std::fs::write(
        dir.join("flavor.json"),
        json!({"shared": {"type": "topic", "shared": true}}).to_string(),
    )
    .unwrap();
}

/// The minimal client: batches of up to `WINDOW`, each sent, awaited, then accepted on the old pod.
async fn raw_move(from: ConnectOptions, to: ConnectOptions) -> u64 {
    let from_mgmt = ArtemisClient::connect(&from, ClientConfig::default())
        .await
        .unwrap();
    let to_mgmt = ArtemisClient::connect(&to, ClientConfig::default())
        .await
        .unwrap();
    for (t, q) in queues() {
        let cfg = QueueConfig {
            name: q,
            address: t,
            routing_type: RoutingType::Multicast,
            durable: true,
        };
        to_mgmt
            .create_queue_with(&cfg, Some("maas-storage-controller"))
            .await
            .unwrap();
    }
    let moved: Vec<u64> = stream::iter(queues())
        .map(|(t, q)| {
            let (from, to, from_mgmt) = (from.clone(), to.clone(), from_mgmt.clone());
            async move {
                let address = format!("{t}::{q}");
                let mut src = Messaging::open(&from, Duration::from_secs(10))
                    .await
                    .unwrap();
                let mut dst = Messaging::open(&to, Duration::from_secs(10)).await.unwrap();
                let mut receiver = src.receiver("raw", &address, WINDOW as u32).await.unwrap();
                let mut sender = dst.sender("raw", &address).await.unwrap();
                let expected = from_mgmt.get_message_count(&q).await.unwrap();
                let mut n = 0u64;
                loop {
                    if n >= expected && from_mgmt.get_message_count(&q).await.unwrap() == 0 {
                        break;
                    }
                    let mut batch = Vec::new();
                    while batch.len() < WINDOW {
                        // Past the count read at the start, only what is already there.
                        let wait = if n + (batch.len() as u64) < expected {
                            Duration::from_millis(300)
                        } else {
                            Duration::from_millis(1)
                        };
                        match tokio::time::timeout(wait, receiver.recv::<Body<Value>>()).await {
                            Ok(d) => batch.push(d.unwrap()),
                            Err(_) => break,
                        }
                    }
                    if batch.is_empty() {
                        if from_mgmt.get_message_count(&q).await.unwrap() == 0 {
                            break;
                        }
                        continue;
                    }
                    let mut outcomes = Vec::new();
                    for d in &batch {
                        outcomes.push(sender.send_batchable(d.message().clone()).await.unwrap());
                    }
                    for (d, o) in batch.iter().zip(outcomes) {
                        assert!(matches!(o.await.unwrap(), Outcome::Accepted(_)));
                        receiver.accept(d).await.unwrap();
                        n += 1;
                    }
                }
                let _ = receiver.close().await;
                let _ = sender.close().await;
                src.close(Duration::from_secs(1)).await;
                dst.close(Duration::from_secs(1)).await;
                from_mgmt.destroy_queue(&q).await.unwrap();
                n
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    from_mgmt.close().await;
    to_mgmt.close().await;
    moved.iter().sum()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (b0, b1) = rt.block_on(async {
        (
            BrokerEmulator::start(BrokerConfig::default())
                .await
                .unwrap(),
            BrokerEmulator::start(BrokerConfig::default())
                .await
                .unwrap(),
        )
    });
    let started = Instant::now();
    rt.block_on(setup(&b0));
    println!(
        "setup: {} subscription queues on {TOPICS} topics, {TOTAL} messages on b-0 ({:.1} s)",
        TOPICS * SUBS_PER_TOPIC,
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let addresses = dir.path().join("addresses");
    std::fs::create_dir(&addresses).unwrap();
    address_dir(&addresses);
    let brokers = dir.path().join("brokers.json");
    brokers_file(&brokers, &b0, &b1, "b-0");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "admin").unwrap();

    // (a) the service, its own process.
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "--once", "--http-addr", "127.0.0.1:0"])
        .args(["--brokers-file", brokers.to_str().unwrap()])
        .args(["--addresses-dir", addresses.to_str().unwrap()])
        .args(["--broker-username", "admin"])
        .args(["--broker-password-file", pw.to_str().unwrap()])
        .args(["--move-window", &WINDOW.to_string()])
        .args(["--parallel-moves", &PARALLEL.to_string()])
        // No router-agent here: each old queue is swept right after its copy (the figure is copy + sweep).
        .args(["--handover-grace", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn subscription-service");
    let pid = child.id();
    let (mut peak_rss, mut hwm) = (0u64, 0u64);
    let status = loop {
        let (rss, h) = rss_kb(pid);
        peak_rss = peak_rss.max(rss);
        hwm = hwm.max(h);
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let service_time = started.elapsed();
    if !status.success() {
        eprintln!("subscription-service --once failed: {status}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = check_moved(&b1, &b0) {
        eprintln!("after the service: {e}");
        return ExitCode::FAILURE;
    }

    // (b) the minimal client, moving everything back.
    let (from, to) = (options(b1.addr().port()), options(b0.addr().port()));
    let started = Instant::now();
    let raw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw_moved = raw_rt.block_on(raw_move(from, to));
    let raw_time = started.elapsed();
    if let Err(e) = check_moved(&b0, &b1) {
        eprintln!("after the minimal client: {e}");
        return ExitCode::FAILURE;
    }

    let service_rate = TOTAL as f64 / service_time.as_secs_f64();
    let raw_rate = raw_moved as f64 / raw_time.as_secs_f64();
    let ratio = service_rate / raw_rate;
    println!(
        "(a) subscription-service --once: {TOTAL} messages in {} queues in {:.2} s = {service_rate:.0} msg/s (process start to exit)",
        TOPICS * SUBS_PER_TOPIC,
        service_time.as_secs_f64()
    );
    println!(
        "(b) minimal receive-then-send client: {raw_moved} messages in {:.2} s = {raw_rate:.0} msg/s",
        raw_time.as_secs_f64()
    );
    println!(
        "    ratio (a)/(b) = {ratio:.2} (target >= 0.8): {}",
        verdict(ratio >= 0.8)
    );
    println!(
        "    subscription-service RSS during the move: peak sampled {:.1} MB, VmHWM {:.1} MB (target <= 32 MB): {}",
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        verdict(hwm <= 32 * 1024)
    );
    drop(raw_rt);
    rt.block_on(async {
        b0.stop().await;
        b1.stop().await;
    });
    if ratio >= 0.8 && hwm <= 32 * 1024 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
