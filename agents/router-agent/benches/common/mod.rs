//! What the router-agent benches share: the 10,000-address set, the broker pods, stopping an agent process and
//! percentiles.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{Value, json};

/// The bench's address set (2016 format, key `json`, with `flavor.json`): 4,000 anycast, 2,000 broadcast, 3,000
/// queues and 1,000 topics on the shared cluster. Anycast address `i` is made broadcast where `broadcast(i)` (how the
/// benches edit it).
pub fn address_set(broadcast: impl Fn(usize) -> bool) -> BTreeMap<String, String> {
    let mut m = serde_json::Map::new();
    let mut put = |name: String, sf: bool, mc: bool, flavor: Option<&str>| {
        let mut v = json!({"store_and_forward": sf, "multicast": mc});
        if let Some(f) = flavor {
            v["flavor"] = Value::from(f);
        }
        m.insert(name, v);
    };
    for i in 0..4000 {
        put(format!("anycast-{i}"), false, broadcast(i), None);
    }
    for i in 0..2000 {
        put(format!("broadcast-{i}"), false, true, None);
    }
    for i in 0..3000 {
        put(format!("queue-{i}"), true, false, Some("shared"));
    }
    for i in 0..1000 {
        put(format!("topic-{i}"), true, true, Some("shared"));
    }
    let mut files = BTreeMap::new();
    files.insert("json".to_string(), Value::Object(m).to_string());
    files.insert(
        "flavor.json".to_string(),
        json!({"shared": {"type": "queue", "shared": true, "templateName": "queue-persisted"}})
            .to_string(),
    );
    files
}

/// The shared cluster's two broker pods (`--brokers-file`).
pub fn brokers_json() -> String {
    json!({"shared": [
        {"name": "broker-0", "host": "127.0.0.1", "port": 5674},
        {"name": "broker-1", "host": "127.0.0.1", "port": 5675}
    ]})
    .to_string()
}

/// SIGTERM, then wait for the process to end.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The `p` percentile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
