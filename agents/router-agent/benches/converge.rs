//! Bench: the router-agent binary (release build) against the router emulator with the real router's cost model,
//! with every figure measured side by side in ONE run, so ratios survive a noisy shared machine.
//!
//! Address set: 10,000 addresses (4,000 anycast, 2,000 broadcast, 3,000 queue, 1,000 topic), queues and topics on
//! one shared flavor cluster of 2 broker pods: about 25,000 router entities.
//!
//! (a) converge on an empty router vs. a minimal pipelined client creating the same entities (target ratio >= 0.8)
//! (b) recover after a router restart (target <= 1.25 x raw + 1 s)
//! (c) agent restart, configuration unchanged: writes (target 0) and time to ready (target <= 1 s)
//! (d) one edit through the kubelet-style writer -> applied, p50/p99 over 50 edits (target p99 <= 500 ms)
//! (e) agent RSS holding 10,000 addresses (target <= 30 MB)
//!
//! Run with `scripts/bench` (or `cargo bench -p router-agent --bench converge`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use maas_amqp::options::ConnectOptions;
use maas_amqp::router::{ClientConfig, RouterClient};
use maas_e2e::router::{EmulatorConfig, RouterEmulator};
use maas_e2e::support::{free_port, http_get, rss_kb};
use maas_model::{EntityOptions, EntitySet};
use maas_source::kubelet::KubeletWriter;
use serde_json::{Value, json};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_router-agent");

fn wait_ready_generation(port: u16, generation: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    let probe = format!("router holds generation {generation} ");
    loop {
        if let Some((200, body)) = http_get(port, "/readyz")
            && body.contains(&probe)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "generation {generation} not ready within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_agent(url: &str, dir: &Path, brokers: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["run", "--router-url", url])
        .args(["--addresses-dir", dir.to_str().unwrap_or_default()])
        .args(["--brokers-file", brokers.to_str().unwrap_or_default()])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--drift-check-interval", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn router-agent")
}

/// The minimal pipelined client as its own process (`mgmt-load`, built by `scripts/bench` next to this bench), like
/// the agent it is compared with; in-process when that binary is not there.
fn raw_create_process(url: &str, entities_file: &Path, expected: usize) -> Option<Duration> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("mgmt-load");
    if !bin.exists() {
        return None;
    }
    let out = Command::new(bin)
        .args(["--router-url", url])
        .args(["--entities", entities_file.to_str().unwrap_or_default()])
        .output()
        .ok()?;
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    assert_eq!(report["failed"], 0, "raw client CREATE failures: {report}");
    assert_eq!(report["created"], expected as u64, "raw client: {report}");
    report["seconds"].as_f64().map(Duration::from_secs_f64)
}

fn write_entities(desired: &EntitySet, path: &Path) {
    let mut text = String::new();
    for e in desired.iter() {
        text.push_str(&json!([e.entity_type.full_name(), e.name, e.attributes]).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("entities file");
}

async fn raw_create(url: &str, desired: &EntitySet) -> Duration {
    let client = RouterClient::connect(
        &ConnectOptions::from_url(url).expect("url"),
        ClientConfig {
            window: 250,
            ..ClientConfig::default()
        },
    )
    .await
    .expect("connect");
    let started = Instant::now();
    let mut stream = futures_util::stream::iter(desired.iter())
        .map(|e| {
            let attrs = e
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let c = client.clone();
            async move { c.create(e.entity_type.full_name(), &e.name, attrs).await }
        })
        .buffer_unordered(250);
    let mut failed = 0;
    while let Some(r) = stream.next().await {
        if r.is_err() {
            failed += 1;
        }
    }
    let t = started.elapsed();
    assert_eq!(failed, 0, "raw client CREATE failures");
    drop(stream);
    client.close().await;
    t
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    maas_amqp::options::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let emu = RouterEmulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let url = emu.url();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("addresses");
    let brokers = tmp.path().join("brokers.json");
    std::fs::write(&brokers, common::brokers_json()).expect("brokers file");
    let writer = KubeletWriter::new(&dir).expect("writer");
    writer
        .write(&common::address_set(|_| false))
        .expect("write addresses");

    let (config, brokers_set) = router_agent::desired::load_once(&dir, None, Some(&brokers))
        .expect("valid bench configuration");
    let desired = maas_model::desired_entities(
        &config.addresses,
        &config.flavors,
        &brokers_set,
        &EntityOptions::default(),
    );
    println!(
        "set: {} addresses -> {} router entities; emulator with the real router's cost model",
        config.addresses.len(),
        desired.len()
    );

    // (a) raw pipelined client vs. agent on an empty router, alternating, 3 rounds each: the machine is shared
    // and a single pair of runs varies by tens of percent; the medians are compared.
    let port = free_port();
    let entities_file = tmp.path().join("entities.jsonl");
    write_entities(&desired, &entities_file);
    let mut raws = Vec::new();
    let mut agents = Vec::new();
    let mut agent = None;
    for round in 0..3 {
        if let Some(previous) = agent.take() {
            common::stop(previous);
        }
        emu.restart().await;
        let raw = match raw_create_process(&url, &entities_file, desired.len()) {
            Some(t) => t,
            None => {
                if round == 0 {
                    println!(
                        "(a) note: mgmt-load not built next to the bench; raw client runs in the bench process"
                    );
                }
                raw_create(&url, &desired).await
            }
        };
        raws.push(raw);
        emu.restart().await;
        let started = Instant::now();
        let child = spawn_agent(&url, &dir, &brokers, port);
        let _ = wait_ready_generation(port, 1, Duration::from_secs(120));
        let t_agent = started.elapsed();
        agents.push(t_agent);
        println!(
            "(a) round {}: raw pipelined client (own process, window 250) {} CREATEs in {:.3} s = {:.0}/s; agent (process start to /readyz 200) {:.3} s",
            round + 1,
            desired.len(),
            raw.as_secs_f64(),
            desired.len() as f64 / raw.as_secs_f64(),
            t_agent.as_secs_f64()
        );
        agent = Some(child);
    }
    let Some(agent) = agent else {
        panic!("no agent started");
    };
    raws.sort();
    agents.sort();
    let (raw, t_agent) = (raws[1], agents[1]);
    let ratio = raw.as_secs_f64() / t_agent.as_secs_f64();
    println!(
        "(a) converge on an empty router, medians of 3: raw {:.3} s, agent {:.3} s; raw/agent ratio {:.2} (target >= 0.8: {})",
        raw.as_secs_f64(),
        t_agent.as_secs_f64(),
        ratio,
        verdict(ratio >= 0.8)
    );

    // (b) router restart -> the agent notices, resyncs, and is ready again.
    let started = Instant::now();
    emu.restart().await;
    let mut t_recover = None;
    while started.elapsed() < Duration::from_secs(120) {
        if let Some((200, body)) = http_get(port, "/readyz")
            && body.contains("generation 1 ")
            && emu.entity_count() >= desired.len()
        {
            t_recover = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let t_recover = t_recover.expect("agent recovered after router restart");
    let limit = raw.as_secs_f64() * 1.25 + 1.0;
    println!(
        "(b) recover after router restart: {:.3} s (target <= 1.25 x raw + 1 s = {:.3} s: {})",
        t_recover.as_secs_f64(),
        limit,
        verdict(t_recover.as_secs_f64() <= limit)
    );

    // (c) agent restart, configuration unchanged.
    common::stop(agent);
    emu.reset_counters();
    let started = Instant::now();
    let agent = spawn_agent(&url, &dir, &brokers, port);
    let _ = wait_ready_generation(port, 1, Duration::from_secs(60));
    let t_restart = started.elapsed();
    let c = emu.counters();
    println!(
        "(c) agent restart, config unchanged: {} writes (target 0: {}), {} reads, {} queries, ready in {:.3} s (target <= 1 s: {})",
        c.writes(),
        verdict(c.writes() == 0),
        c.read,
        c.query,
        t_restart.as_secs_f64(),
        verdict(t_restart <= Duration::from_secs(1))
    );

    // (d) 50 edits through the kubelet-style writer.
    let mut lat = Vec::new();
    for k in 0..50u64 {
        let started = Instant::now();
        writer
            .write(&common::address_set(|i| i == k as usize))
            .expect("edit");
        let _ = wait_ready_generation(port, 2 + k, Duration::from_secs(30));
        lat.push(started.elapsed());
    }
    lat.sort();
    let (p50, p99) = (
        common::percentile(&lat, 0.5),
        common::percentile(&lat, 0.99),
    );
    println!(
        "(d) one edit -> applied, 50 edits with 10,000 addresses held: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= 500 ms: {})",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        verdict(p99 <= Duration::from_millis(500))
    );

    // (e) RSS.
    let (rss, _) = rss_kb(agent.id());
    println!(
        "(e) agent RSS holding 10,000 addresses: {:.1} MB (target <= 30 MB: {})",
        rss as f64 / 1024.0,
        verdict(rss <= 30 * 1024)
    );
    common::stop(agent);
    emu.stop().await;
}
