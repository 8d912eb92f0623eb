//! What the subscription-service tests share: two Artemis broker emulators as pods `b-0` and `b-1` of the
//! cluster of topic `news`, an address directory, a brokers file, publishing with a `seq` application property,
//! and reading what a queue holds.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{ArtemisClient, ClientConfig, QueueConfig, RoutingType};
use maas_amqp::messaging::Messaging;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use serde_json::json;

pub const BIN: &str = env!("CARGO_BIN_EXE_subscription-service");
pub const TOPIC: &str = "news";
pub const OWNER: &str = "maas-storage-controller";

/// The address directory: topic `news` (flavor `t`, its own cluster `news`) and a queue.
pub fn address_dir(dir: &Path) {
    std::fs::write(
        dir.join("json"),
        r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"},
            "orders": {"store_and_forward": true, "multicast": false, "flavor": "t"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("flavor.json"), r#"{"t": {"type": "topic"}}"#).unwrap();
}

/// Two broker emulators (SASL PLAIN admin/admin), no management cost.
pub async fn two_brokers() -> (BrokerEmulator, BrokerEmulator) {
    let start = || {
        BrokerEmulator::start(BrokerConfig {
            cost_model: CostModel::none(),
            ..BrokerConfig::default()
        })
    };
    (start().await.unwrap(), start().await.unwrap())
}

/// The brokers file: cluster `news` = b-0 and b-1, the pod named `draining` (if any) draining.
pub fn brokers_file(path: &Path, b0: &BrokerEmulator, b1: &BrokerEmulator, draining: Option<&str>) {
    let text = json!({"news": [
        {"name": "b-0", "host": "127.0.0.1", "port": b0.addr().port(), "draining": draining == Some("b-0")},
        {"name": "b-1", "host": "127.0.0.1", "port": b1.addr().port(), "draining": draining == Some("b-1")},
    ]});
    std::fs::write(path, text.to_string()).unwrap();
}

/// The pod topic `news` lives on while both pods are up.
pub fn home_of_news(b0: &BrokerEmulator, b1: &BrokerEmulator) -> &'static str {
    let pod = |name: &str, b: &BrokerEmulator| maas_model::BrokerPod {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: b.addr().port(),
        draining: false,
        provisioned: None,
        ready: true,
    };
    let pods = [pod("b-0", b0), pod("b-1", b1)];
    if maas_model::topic_pod(TOPIC, &pods).unwrap().name == "b-0" {
        "b-0"
    } else {
        "b-1"
    }
}

/// The password file of user admin.
pub fn password_file(dir: &Path) -> PathBuf {
    let p = dir.join("broker-password");
    std::fs::write(&p, "admin\n").unwrap();
    p
}

pub fn opts(b: &BrokerEmulator) -> ConnectOptions {
    ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap()
}

/// A durable MULTICAST queue `queue` on topic `news`, owned by the storage-controller (a configured subscription).
pub async fn create_subscription(b: &BrokerEmulator, queue: &str) {
    create_queue(b, queue, TOPIC, RoutingType::Multicast, Some(OWNER)).await;
}

/// A durable queue `name` on `address`.
pub async fn create_queue(
    b: &BrokerEmulator,
    name: &str,
    address: &str,
    routing_type: RoutingType,
    user: Option<&str>,
) {
    let c = ArtemisClient::connect(&opts(b), ClientConfig::default())
        .await
        .unwrap();
    let q = QueueConfig {
        name: name.into(),
        address: address.into(),
        routing_type,
        durable: true,
    };
    c.create_queue_with(&q, user).await.unwrap();
    c.close().await;
}

/// A message with body `m<seq>` and the application property `seq`.
pub fn message(seq: u64) -> Message<Body<Value>> {
    Message::builder()
        .properties(
            Properties::builder()
                .message_id(format!("id-{seq}"))
                .build(),
        )
        .application_properties(
            ApplicationProperties::builder()
                .insert("seq", SimpleValue::Ulong(seq))
                .build(),
        )
        .body(Body::Value(AmqpValue(Value::String(format!("m{seq}")))))
        .build()
}

/// Publish messages `seqs` to `address` on `b`, each accepted before the next goes (pipelined 100 at a time).
pub async fn publish(b: &BrokerEmulator, address: &str, seqs: std::ops::Range<u64>) {
    let mut m = Messaging::open(&opts(b), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let mut sender = m.sender("publisher", address).await.unwrap();
    let mut pending = Vec::new();
    for seq in seqs {
        pending.push(sender.send_batchable(message(seq)).await.unwrap());
        if pending.len() >= 100 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    let _ = sender.close().await;
    m.close(std::time::Duration::from_secs(1)).await;
}

/// The `seq` property of a message.
pub fn seq_of(m: &Message<Body<Value>>) -> u64 {
    match m
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get("seq"))
    {
        Some(SimpleValue::Ulong(n)) => *n,
        other => panic!("no seq property: {other:?}"),
    }
}

/// The `x-opt-maas-moved-from` annotation of a message.
pub fn moved_from(m: &Message<Body<Value>>) -> Option<String> {
    match m
        .message_annotations
        .as_ref()?
        .0
        .get(&OwnedKey::Symbol(Symbol::from("x-opt-maas-moved-from")))
    {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The `seq`s a queue holds, in queue order (empty when there is no such queue).
pub fn seqs(b: &BrokerEmulator, queue: &str) -> Vec<u64> {
    b.messages(queue)
        .unwrap_or_default()
        .iter()
        .map(seq_of)
        .collect()
}

/// `subscription-service run --brokers-file F --addresses-dir D` with the admin credentials, a hand-over grace of
/// 300 ms and `extra` flags.
pub fn command(dir: &Path, brokers: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["run", "--brokers-file", brokers.to_str().unwrap()])
        .args(["--addresses-dir", dir.join("addresses").to_str().unwrap()])
        .args(["--broker-username", "admin"])
        .args([
            "--broker-password-file",
            password_file(dir).to_str().unwrap(),
        ])
        .args(["--http-addr", "127.0.0.1:0"])
        // No router-agent here: the old queues are swept soon after the release.
        .args(["--handover-grace", "300ms"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs `c` to completion off the async runtime (the emulators keep serving meanwhile).
pub async fn output(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// A test directory with `addresses/` filled.
pub fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("addresses")).unwrap();
    address_dir(&d.path().join("addresses"));
    d
}

/// Starts the service (`c` with stderr piped, as [`command`] makes it) and returns it with the HTTP port it logged
/// ("serving /healthz /readyz /metrics" addr=127.0.0.1:PORT); stderr keeps being drained.
pub fn spawn_with_http_port(mut c: Command) -> (std::process::Child, u16) {
    use std::io::{BufRead, BufReader};
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent
                && line.contains("/healthz")
                && let Some(p) = http_port_from(&line)
            {
                let _ = port_tx.send(p);
                sent = true;
            }
        }
    });
    let port = port_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    (child, port)
}

/// Reads the HTTP port the service logged ("serving /healthz /readyz /metrics" addr=...).
fn http_port_from(line: &str) -> Option<u16> {
    let at = line.find("127.0.0.1:")?;
    line[at + 10..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
