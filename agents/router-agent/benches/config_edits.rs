//! Bench: router-agent fed by config-service, full snapshots vs incremental mode (docs/architecture.md §3
//! "Incremental mode"), side by side in ONE run so the comparison survives a noisy shared machine.
//!
//! One config-service (release binary, file mode, kubelet-style writer) holds 10,000 addresses (4,000 anycast,
//! 2,000 broadcast, 3,000 queue, 1,000 topic; queues and topics on one shared cluster of 2 broker pods: ~25,000
//! router entities). Two router-agent processes subscribe to it, each reconciling its own router emulator:
//! `--config-delta false` (a full snapshot per change, parsed whole) and `--config-delta true` (deltas). Then 50
//! one-address edits (edit k turns anycast-k into a broadcast address, the earlier edits stay). Reported per agent:
//! RSS and peak RSS after the initial converge and after the 50 edits, and edit -> applied latency p50/p99.
//!
//! Run with `scripts/bench edits` (it builds the config-service binary next to this bench first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maas_e2e::router::{EmulatorConfig, RouterEmulator};
use maas_e2e::support::{free_port, http_get, rss_kb};
use maas_source::kubelet::KubeletWriter;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_router-agent");
const EDITS: usize = 50;

/// The config-service binary `scripts/bench edits` builds next to this bench (target/release).
fn config_service_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("config-service");
    bin.exists().then_some(bin)
}

fn ready_generation(port: u16) -> Option<u64> {
    let (code, body) = http_get(port, "/readyz")?;
    if code != 200 {
        return None;
    }
    let rest = body.split("router holds generation ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits until every agent is ready with `generation` (or a later one); the time each one took from `started`.
fn wait_all_ready(
    agents: &[Agent],
    generation: u64,
    started: Instant,
    timeout: Duration,
) -> Vec<Duration> {
    let mut took: Vec<Option<Duration>> = vec![None; agents.len()];
    while took.iter().any(Option::is_none) {
        for (a, t) in agents.iter().zip(took.iter_mut()) {
            if t.is_none() && ready_generation(a.http).is_some_and(|g| g >= generation) {
                *t = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < timeout,
            "generation {generation} not ready on every agent within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    took.into_iter().flatten().collect()
}

/// The `maas_config_service_*` delta and snapshot counters of the config-service's /metrics.
fn config_service_counters(http: u16) -> Vec<String> {
    let Some((200, body)) = http_get(http, "/metrics") else {
        return Vec::new();
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("source=\"v1/addresses\""))
        .filter(|l| {
            l.contains("deltas_sent") || l.contains("snapshots_sent") || l.contains("delta_resyncs")
        })
        .map(str::to_string)
        .collect()
}

struct Agent {
    label: &'static str,
    child: Child,
    http: u16,
    latencies: Vec<Duration>,
}

fn spawn_agent(
    label: &'static str,
    delta: bool,
    router_url: &str,
    config_url: &str,
    brokers: &Path,
) -> Agent {
    let http = free_port();
    let child = Command::new(BIN)
        .args(["run", "--router-url", router_url])
        .args(["--config-service-url", config_url])
        .args(["--config-delta", if delta { "true" } else { "false" }])
        .args(["--brokers-file", brokers.to_str().unwrap_or_default()])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--drift-check-interval", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn router-agent");
    Agent {
        label,
        child,
        http,
        latencies: Vec::new(),
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    maas_amqp::options::install_crypto_provider();
    let Some(config_service) = config_service_bin() else {
        println!(
            "SKIPPED: the config-service release binary is not next to this bench; run `scripts/bench edits` \
             (it runs `cargo build --release -p config-service --bin config-service` first)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(config_service));
}

async fn bench(config_service: PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("addresses");
    let brokers = tmp.path().join("brokers.json");
    std::fs::write(&brokers, common::brokers_json()).expect("brokers file");
    let writer = KubeletWriter::new(&dir).expect("writer");
    writer
        .write(&common::address_set(|_| false))
        .expect("write addresses");

    let amqp = free_port();
    let cs_http = free_port();
    let cs = Command::new(config_service)
        .args(["--addresses-dir", dir.to_str().unwrap_or_default()])
        .args(["--listen", &format!("127.0.0.1:{amqp}")])
        .args(["--http-addr", &format!("127.0.0.1:{cs_http}")])
        .args(["--debounce", "50ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn config-service");
    let config_url = format!("amqp://127.0.0.1:{amqp}");
    let started = Instant::now();
    while !matches!(http_get(cs_http, "/readyz"), Some((200, _))) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "config-service not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let full_router = RouterEmulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let delta_router = RouterEmulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let started = Instant::now();
    let mut agents = [
        spawn_agent(
            "full snapshots (--config-delta false)",
            false,
            &full_router.url(),
            &config_url,
            &brokers,
        ),
        spawn_agent(
            "incremental    (--config-delta true) ",
            true,
            &delta_router.url(),
            &config_url,
            &brokers,
        ),
    ];
    let took = wait_all_ready(&agents, 1, started, Duration::from_secs(180));
    for (a, t) in agents.iter().zip(took) {
        println!(
            "{}: converged on 10,000 addresses in {:.2} s (both at once, each on its own router emulator)",
            a.label,
            t.as_secs_f64()
        );
    }
    let initial: Vec<(u64, u64)> = agents.iter().map(|a| rss_kb(a.child.id())).collect();

    // 50 one-address edits; each is applied by both agents before the next one is written.
    for k in 1..=EDITS {
        let started = Instant::now();
        writer.write(&common::address_set(|i| i < k)).expect("edit");
        let took = wait_all_ready(&agents, 1 + k as u64, started, Duration::from_secs(60));
        for (a, t) in agents.iter_mut().zip(took) {
            a.latencies.push(t);
        }
    }
    // Let the allocators settle, then read both.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "router-agent via config-service, 10,000 addresses (~25,000 entities), {EDITS} one-address edits:"
    );
    let mut after = Vec::new();
    for (a, (rss0, _)) in agents.iter_mut().zip(&initial) {
        let (rss, peak) = rss_kb(a.child.id());
        a.latencies.sort();
        println!(
            "  {}: RSS {:.1} MB after converge, {:.1} MB after the edits (peak {:.1} MB); edit -> applied p50 {:.0} ms, p99 {:.0} ms",
            a.label,
            mb(*rss0),
            mb(rss),
            mb(peak),
            common::percentile(&a.latencies, 0.5).as_secs_f64() * 1e3,
            common::percentile(&a.latencies, 0.99).as_secs_f64() * 1e3,
        );
        after.push((rss, peak));
    }
    if let [(full, full_peak), (delta, delta_peak)] = after[..] {
        println!(
            "  incremental / full: RSS after the edits {:.2}, peak {:.2} ({:.1} MB less)",
            delta as f64 / full.max(1) as f64,
            delta_peak as f64 / full_peak.max(1) as f64,
            mb(full.saturating_sub(delta)),
        );
    }
    for line in config_service_counters(cs_http) {
        println!("  config-service: {line}");
    }
    let (cs_rss, cs_peak) = rss_kb(cs.id());
    println!(
        "  config-service RSS {:.1} MB (peak {:.1} MB)",
        mb(cs_rss),
        mb(cs_peak)
    );
    for a in agents {
        common::stop(a.child);
    }
    common::stop(cs);
    full_router.stop().await;
    delta_router.stop().await;
}
