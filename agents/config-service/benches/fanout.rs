//! Bench: config-service fan-out of `v1/addresses` with 10,000 addresses, every figure measured in ONE run so the
//! ratios survive a noisy shared 2-core machine.
//!
//! 1. Snapshot build: the `v1/addresses` body (JSON) of 10,000 addresses (4,000 anycast, 2,000 broadcast, 3,000
//!    queue, 1,000 topic), wrapped in its message and AMQP-encoded once — median and max over 20 builds (target
//!    <= 20 ms). The server's whole per-change work (all three static sources) is printed for information.
//! 2. Fan-out: the `config-service` binary runs as a SEPARATE process in file mode on a directory written by
//!    [`KubeletWriter`], with `--debounce 20ms`; 1,000 fe2o3 subscribers (one AMQP connection each) attach in this
//!    process. Per edit (each flips one anycast address to broadcast) the latency is the time from the start of
//!    the kubelet-style write until a subscriber holds the new snapshot; p50/p99 over all (edit, subscriber)
//!    pairs and the per-edit max (target p99 <= 250 ms). The latency includes the watcher's debounce (quiet
//!    time); it is also printed without it.
//! 3. RSS (VmRSS, /proc/<pid>/status) of the config-service process holding 10,000 addresses and 1,000
//!    subscribers (target <= 64 MB); the peak (VmHWM) is printed too.
//! 4. Slow subscriber: blocks of edits alternate without / with one extra subscriber that got its first snapshot
//!    and never grants credit again; both p99s and their ratio (target: within noise, <= 1.25).
//!
//!    With the default `--send-timeout 5s` that subscriber is closed (`amqp:link:detach-forced`) once a send to it
//!    waited 5 s; the bench reports which happened.
//! 5. The floor of the machine: the same number of bytes written to as many loopback TCP sockets with plain tokio
//!    writes and read by minimal readers in this process (no AMQP, no encoding, no JSON); p50/p99 over 3 rounds
//!    and the service's p99 as a multiple of it.
//!
//! Environment (for quick runs): `FANOUT_SUBSCRIBERS` (default 1000), `FANOUT_EDITS` (edits per block, default
//! 10; four blocks), `FANOUT_DEBOUNCE_MS` (default 20), `FANOUT_MAX_SENDS` (the service's `--max-concurrent-sends`;
//! default: the service's default, 16; a large value such as 100000 gives the unbounded behaviour of before),
//! `FANOUT_CLIENT_FRAME` (the subscribers' max-frame-size, default 262144 = fe2o3's default), `FANOUT_SCALE`
//! (divides the address set, e.g. 100 for 100 addresses: shows fe2o3's fixed cost per connection).
//! Run with `cargo bench -p config-service --bench fanout`.
//!
//! Figures of 2026-11-28 (2 shared cores, other builds running; 1,000 subscribers, 1.39 MB encoded message,
//! a send holds its permit until the connection wrote the message):
//!
//! | | p99 edit -> all hold it | CPU per edit: service / subscribers | RSS after the edits (peak) |
//! | --- | --- | --- | --- |
//! | subscribers with fe2o3's default 256 KB frames, quiet machine | 946 ms | 696 / 860 ms | 409 MB (417) |
//! | the same, other builds running | 1,574–1,718 ms | 671 / 1,022 ms | 415–417 MB (423) |
//! | subscribers announcing 32 KB frames | 2,856 ms | 928 / 1,487 ms | 249 MB (253) |
//! | 100 addresses (14 KB snapshot), 256 KB frames | 64 ms | 35 / 38 ms | 108 MB (108) |
//! | plain loopback TCP, same bytes, no AMQP (5.) | 221 ms quiet, 287–593 ms under load | | |
//!
//! Run-to-run noise on p99 is ~±40 %. So: the loopback floor alone takes most of the 250 ms target (or more),
//! and fe2o3's fixed memory per connection (~100 KB with 100 addresses) is above 64 MB for 1,000 subscribers;
//! the 1,000 write buffers sized by the subscribers' max-frame-size make most of the rest. Before sends waited
//! for the socket, subscribers with 16 KB frames drove the service to 1.2 GB (frames of queued sends piled up).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use config_service::{Snapshot, Source};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::{Connection, Receiver, Session};
use maas_model::Config;
use maas_source::kubelet::KubeletWriter;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

const BIN: &str = env!("CARGO_BIN_EXE_config-service");
const ADDRESS: &str = "v1/addresses";
const BUILDS: usize = 20;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole bench stops adding edits past this (it must stay around two minutes).
const BUDGET: Duration = Duration::from_secs(110);
/// Extra subscribers attached at the end without any credit, to measure what each holds.
const NO_CREDIT_LINKS: usize = 50;
/// Set when the bench ends (links ending then are expected).
static DONE: AtomicBool = AtomicBool::new(false);

type Conn = ConnectionHandle<()>;
type Sess = SessionHandle<()>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The address directory's files with `anycast-1` .. `anycast-{flipped}` turned into broadcast addresses (each
/// flip is one edit of one address, and makes the `v1/addresses` body 2 bytes longer).
fn address_set(flipped: usize) -> BTreeMap<String, String> {
    let mut m = serde_json::Map::new();
    let mut put = |name: String, sf: bool, mc: bool, flavor: Option<&str>| {
        let mut v = json!({"store_and_forward": sf, "multicast": mc});
        if let Some(f) = flavor {
            v["flavor"] = Value::from(f);
        }
        m.insert(name, v);
    };
    let scale = env_usize("FANOUT_SCALE", 1);
    for i in 0..4000 / scale {
        put(
            format!("anycast-{i}"),
            false,
            (1..=flipped).contains(&i),
            None,
        );
    }
    for i in 0..2000 / scale {
        put(format!("broadcast-{i}"), false, true, None);
    }
    for i in 0..3000 / scale {
        put(format!("queue-{i}"), true, false, Some("shared"));
    }
    for i in 0..1000 / scale {
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

fn config_of(files: &BTreeMap<String, String>) -> Config {
    maas_model::parse_config("bench", files, None).expect("the bench's address set is valid")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) of `pid` (`self` for this process), from /proc/<pid>/stat at 100 ticks per second.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// `(soft, hard)` open-files limit of this process.
fn nofile_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line.split_whitespace().skip(3);
    let parse = |s: Option<&str>| match s? {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    };
    Some((parse(it.next())?, parse(it.next())?))
}

/// Makes sure this process (and the config-service child, which inherits the limit) may open `needed` files:
/// raises the soft limit up to the hard one with `prlimit` (no unsafe code), or exits with what to do.
fn ensure_open_files(needed: u64) {
    let Some((soft, hard)) = nofile_limits() else {
        println!("open files: cannot read /proc/self/limits; assuming the limit is high enough");
        return;
    };
    if soft >= needed {
        println!("open files: soft limit {soft} >= {needed} needed");
        return;
    }
    if hard < needed {
        eprintln!(
            "open files: the hard limit {hard} is below the {needed} this bench needs (one socket per subscriber \
             on each side); raise it (e.g. `ulimit -Hn {needed}` as root) and run again"
        );
        std::process::exit(2);
    }
    let target = if hard == u64::MAX {
        needed.to_string()
    } else {
        hard.to_string()
    };
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={target}:{target}")])
        .status()
        .is_ok_and(|s| s.success());
    match nofile_limits() {
        Some((now, _)) if ok && now >= needed => {
            println!("open files: raised the soft limit from {soft} to {now} (needs {needed})");
        }
        _ => {
            eprintln!(
                "open files: the soft limit {soft} is below the {needed} needed and `prlimit` could not raise it; \
                 run `ulimit -n {needed}` in the shell first"
            );
            std::process::exit(2);
        }
    }
}

/// The config-service child; terminated (SIGTERM, then waited for) when dropped.
struct Service {
    child: Child,
    url: String,
    http: u16,
}

impl Service {
    fn spawn(dir: &Path, debounce_ms: u64, max_connections: usize) -> Service {
        let amqp = free_port();
        let http = free_port();
        let mut command = Command::new(BIN);
        if let Ok(max) = std::env::var("FANOUT_MAX_SENDS") {
            command.args(["--max-concurrent-sends", &max]);
        }
        let child = command
            .args(["--addresses-dir", dir.to_str().unwrap_or_default()])
            .args(["--listen", &format!("127.0.0.1:{amqp}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--max-connections", &max_connections.to_string()])
            .args(["--debounce", &format!("{debounce_ms}ms")])
            .env(
                "RUST_LOG",
                std::env::var("FANOUT_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn config-service");
        let started = Instant::now();
        loop {
            if let Some((200, _)) = http_get(http, "/readyz") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "config-service not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Service {
            child,
            url: format!("amqp://127.0.0.1:{amqp}"),
            http,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of an unlabelled (or first labelled) sample of `/metrics`, e.g. `sends_in_flight_max`.
    fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = http_get(self.http, "/metrics")?;
        let full = format!("maas_config_service_{name}");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.strip_prefix(&full)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// One subscriber's report: it holds a snapshot of `len` bytes since `at`.
struct Event {
    len: usize,
    at: Instant,
}

async fn attach(
    url: &str,
    name: &str,
    credit: CreditMode,
) -> Result<(Conn, Sess, Receiver), String> {
    let mut c = tokio::time::timeout(
        STEP_TIMEOUT,
        Connection::builder()
            .container_id(name.to_string())
            .max_frame_size(env_usize("FANOUT_CLIENT_FRAME", 256 * 1024) as u32)
            .sasl_profile(SaslProfile::Anonymous)
            .open(url),
    )
    .await
    .map_err(|_| "open timed out".to_string())?
    .map_err(|e| format!("open: {e:?}"))?;
    let mut s = tokio::time::timeout(STEP_TIMEOUT, Session::begin(&mut c))
        .await
        .map_err(|_| "begin timed out".to_string())?
        .map_err(|e| format!("begin: {e:?}"))?;
    let r = tokio::time::timeout(
        STEP_TIMEOUT,
        Receiver::builder()
            .name(name.to_string())
            .source(ADDRESS)
            .credit_mode(credit)
            // Pre-settled snapshots: accepting sends nothing, but it is what refills auto credit in fe2o3.
            .auto_accept(true)
            .attach(&mut s),
    )
    .await
    .map_err(|_| "attach timed out".to_string())?
    .map_err(|e| format!("attach: {e:?}"))?;
    Ok((c, s, r))
}

/// Receives snapshots until the link ends, reporting each (and checking one subscriber's bodies in full).
async fn subscriber_loop(
    mut receiver: Receiver,
    events: mpsc::UnboundedSender<Event>,
    full_check: Option<Arc<BTreeMap<usize, String>>>,
) {
    loop {
        let delivery = match receiver.recv::<String>().await {
            Ok(d) => d,
            Err(e) => {
                if !DONE.load(Ordering::Relaxed) {
                    eprintln!("  a subscriber's link ended: {e:?}");
                }
                break;
            }
        };
        let at = Instant::now();
        let body = delivery.body();
        if let Some(expected) = &full_check {
            assert_eq!(
                expected.get(&body.len()).map(String::as_str),
                Some(body.as_str()),
                "subscriber 0 got a body that is no expected snapshot"
            );
        }
        if events
            .send(Event {
                len: body.len(),
                at,
            })
            .is_err()
        {
            break;
        }
    }
}

/// Waits until `n` subscribers reported a snapshot of `len` bytes; their arrival instants, and how many reports
/// of another length came meanwhile.
async fn collect(
    events: &mut mpsc::UnboundedReceiver<Event>,
    len: usize,
    n: usize,
    within: Duration,
) -> Result<(Vec<Instant>, usize), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut arrivals = Vec::with_capacity(n);
    let mut stray = 0;
    while arrivals.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if e.len == len => arrivals.push(e.at),
            Ok(Some(e)) => {
                if stray < 3 {
                    eprintln!(
                        "  waiting for {len} bytes, a subscriber reported {} bytes",
                        e.len
                    );
                }
                stray += 1;
            }
            Ok(None) => return Err("every subscriber ended".into()),
            Err(_) => {
                return Err(format!(
                    "only {} of {n} subscribers got the snapshot of {len} bytes within {within:?} ({stray} \
                     reports of another length)",
                    arrivals.len()
                ));
            }
        }
    }
    Ok((arrivals, stray))
}

/// Figures of one block of edits.
#[derive(Default)]
struct Block {
    latencies: Vec<Duration>,
    firsts: Vec<Duration>,
    per_edit_max: Vec<Duration>,
    stray: usize,
    server_cpu: Duration,
    bench_cpu: Duration,
}

impl Block {
    fn absorb(&mut self, other: Block) {
        self.latencies.extend(other.latencies);
        self.firsts.extend(other.firsts);
        self.per_edit_max.extend(other.per_edit_max);
        self.stray += other.stray;
        self.server_cpu += other.server_cpu;
        self.bench_cpu += other.bench_cpu;
    }
}

struct Fanout<'a> {
    writer: &'a KubeletWriter,
    events: &'a mut mpsc::UnboundedReceiver<Event>,
    /// Body length of the `v1/addresses` snapshot per number of flipped addresses.
    lengths: &'a [usize],
    subscribers: usize,
    flipped: usize,
    started: Instant,
    /// The config-service process.
    pid: String,
}

impl Fanout<'_> {
    /// `edits` edits, one at a time: each waits until every subscriber holds it.
    async fn run(&mut self, edits: usize) -> Block {
        let mut block = Block::default();
        let (server0, bench0) = (cpu_time(&self.pid), cpu_time("self"));
        for _ in 0..edits {
            if self.started.elapsed() > BUDGET || self.flipped + 1 >= self.lengths.len() {
                println!("  (time budget reached: this block stops early)");
                break;
            }
            let next = self.flipped + 1;
            let files = address_set(next);
            let t0 = Instant::now();
            self.writer.write(&files).expect("kubelet-style write");
            let (arrivals, stray) = collect(
                self.events,
                self.lengths[next],
                self.subscribers,
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("edit {next}: {e}"));
            self.flipped = next;
            let mut lat: Vec<Duration> = arrivals.iter().map(|a| *a - t0).collect();
            lat.sort();
            block.firsts.push(lat[0]);
            block.per_edit_max.push(lat[lat.len() - 1]);
            block.latencies.extend(lat);
            block.stray += stray;
        }
        block.server_cpu = cpu_time(&self.pid).saturating_sub(server0);
        block.bench_cpu = cpu_time("self").saturating_sub(bench0);
        block
    }
}

/// Attaches the slow subscriber: it takes the current snapshot with a credit of one and never grants more.
/// Writes `size` bytes to each of `n` loopback TCP connections at once and returns, over `rounds` rounds after a
/// warm-up, the time from the start of a round until each reader had read them all (sorted): what moving the
/// bytes of one fan-out costs this machine with no protocol at all.
async fn raw_floor(n: usize, size: usize, rounds: usize) -> Vec<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let payload: Arc<Vec<u8>> = Arc::new(vec![b'x'; size]);
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let r = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (w, _) = listener.accept().await.unwrap();
        r.set_nodelay(true).unwrap();
        w.set_nodelay(true).unwrap();
        readers.push(r);
        writers.push(w);
    }
    let mut all = Vec::with_capacity(n * rounds);
    for round in 0..=rounds {
        let start = Instant::now();
        let mut reading = tokio::task::JoinSet::new();
        for mut r in readers.drain(..) {
            reading.spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < size {
                    match tokio::time::timeout(STEP_TIMEOUT, r.read(&mut buf)).await {
                        Ok(Ok(k)) if k > 0 => got += k,
                        other => panic!("floor reader: {other:?}"),
                    }
                }
                (r, start.elapsed())
            });
        }
        let mut writing = tokio::task::JoinSet::new();
        for mut w in writers.drain(..) {
            let p = Arc::clone(&payload);
            writing.spawn(async move {
                w.write_all(&p).await.unwrap();
                w
            });
        }
        while let Some(w) = writing.join_next().await {
            writers.push(w.unwrap());
        }
        while let Some(r) = reading.join_next().await {
            let (r, took) = r.unwrap();
            readers.push(r);
            if round > 0 {
                all.push(took);
            }
        }
    }
    all.sort();
    all
}

async fn attach_slow(url: &str, n: usize) -> (Conn, Sess, Receiver) {
    let (c, s, mut r) = attach(url, &format!("slow-{n}"), CreditMode::Manual)
        .await
        .expect("slow subscriber attach");
    r.set_credit(1).await.expect("slow subscriber credit");
    tokio::time::timeout(STEP_TIMEOUT, r.recv::<String>())
        .await
        .expect("slow subscriber: first snapshot in time")
        .expect("slow subscriber: first snapshot");
    (c, s, r)
}

fn print_block(label: &str, b: &Block, debounce: Duration) {
    let mut lat = b.latencies.clone();
    lat.sort();
    let mut firsts = b.firsts.clone();
    firsts.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "  {label}: {} edits x {} pairs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; first subscriber p50 {:.0} ms; \
         p99 minus the {:.0} ms debounce {:.0} ms",
        b.per_edit_max.len(),
        lat.len() / b.per_edit_max.len().max(1),
        ms(percentile(&lat, 0.5)),
        ms(p99),
        ms(lat.last().copied().unwrap_or_default()),
        ms(percentile(&firsts, 0.5)),
        ms(debounce),
        ms(p99.saturating_sub(debounce)),
    );
    let maxes: Vec<String> = b
        .per_edit_max
        .iter()
        .map(|d| format!("{:.0}", ms(*d)))
        .collect();
    println!("    per-edit max (ms): {}", maxes.join(" "));
    let edits = b.per_edit_max.len().max(1) as f64;
    println!(
        "    CPU per edit: config-service {:.0} ms, subscribers (this process) {:.0} ms (2 cores shared)",
        b.server_cpu.as_secs_f64() * 1e3 / edits,
        b.bench_cpu.as_secs_f64() * 1e3 / edits
    );
    if b.stray > 0 {
        println!("    {} reports of an unexpected snapshot length", b.stray);
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let started = Instant::now();
    let subscribers = env_usize("FANOUT_SUBSCRIBERS", 1000);
    let edits_per_block = env_usize("FANOUT_EDITS", 10);
    let debounce = Duration::from_millis(env_usize("FANOUT_DEBOUNCE_MS", 20) as u64);
    let mut summary: Vec<String> = Vec::new();

    // 1. Snapshot build and encoding.
    let base = config_of(&address_set(0));
    assert_eq!(base.addresses.len(), 10_000 / env_usize("FANOUT_SCALE", 1));
    let mut builds = Vec::with_capacity(BUILDS);
    let mut whole = Vec::with_capacity(BUILDS);
    let mut encoded_len = 0;
    for _ in 0..BUILDS {
        let t = Instant::now();
        let snapshot = Snapshot::new(Source::Addresses, base.addresses.to_address_list_json());
        let encoded =
            serde_amqp::to_vec(&Serializable(&snapshot.sendable.message)).expect("encode");
        builds.push(t.elapsed());
        encoded_len = encoded.len();
        let t = Instant::now();
        let _maas = Snapshot::new(Source::Maas, base.addresses.to_2016_json());
        let _flavors = Snapshot::new(Source::Flavors, base.flavors.to_json());
        whole.push(builds[builds.len() - 1] + t.elapsed());
        drop((snapshot, encoded));
    }
    // Where the time goes (one more build, step by step).
    let t = Instant::now();
    let value = base.addresses.to_address_list_value();
    let t_value = t.elapsed();
    let t = Instant::now();
    let text = value.to_string();
    let t_text = t.elapsed();
    let t = Instant::now();
    let snapshot = Snapshot::new(Source::Addresses, text);
    let t_message = t.elapsed();
    let t = Instant::now();
    let encoded = serde_amqp::to_vec(&Serializable(&snapshot.sendable.message)).expect("encode");
    let t_encode = t.elapsed();
    println!(
        "   parts: JSON value {:.1} ms, to text {:.1} ms, message {:.1} ms, AMQP encoding {:.1} ms ({} bytes)",
        ms(t_value),
        ms(t_text),
        ms(t_message),
        ms(t_encode),
        encoded.len()
    );
    drop((value, snapshot, encoded));
    builds.sort();
    whole.sort();
    let (median, max) = (percentile(&builds, 0.5), builds[builds.len() - 1]);
    println!(
        "1. snapshot build: 10,000 addresses -> v1/addresses JSON + message + AMQP encoding ({} bytes): median \
         {:.1} ms, max {:.1} ms over {BUILDS} (target <= 20 ms: {}); all three sources per change: median {:.1} ms",
        encoded_len,
        ms(median),
        ms(max),
        verdict(median <= Duration::from_millis(20)),
        ms(percentile(&whole, 0.5)),
    );
    summary.push(format!(
        "snapshot build+encode, 10,000 addresses  median {:>6.1} ms  max {:>6.1} ms   target <= 20 ms     {}",
        ms(median),
        ms(max),
        verdict(median <= Duration::from_millis(20))
    ));

    // Expected bodies: the v1/addresses body length identifies the edit (each flip adds 2 bytes).
    let max_flips = 4 * edits_per_block + 1;
    let mut lengths = Vec::with_capacity(max_flips + 1);
    let mut bodies = BTreeMap::new();
    for flipped in 0..=max_flips {
        let body = config_of(&address_set(flipped))
            .addresses
            .to_address_list_json();
        lengths.push(body.len());
        bodies.insert(body.len(), body);
    }
    assert_eq!(bodies.len(), lengths.len(), "every edit has its own length");
    let bodies = Arc::new(bodies);

    // 2. The service as a separate process, and the subscribers.
    ensure_open_files((subscribers + NO_CREDIT_LINKS) as u64 + 256);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("addresses");
    let writer = KubeletWriter::new(&dir).expect("address dir");
    writer.write(&address_set(0)).expect("initial write");
    let service = Service::spawn(
        &dir,
        debounce.as_millis() as u64,
        subscribers + NO_CREDIT_LINKS + 16,
    );
    let (idle_rss, _) = rss_kb(service.pid());

    let (tx, mut events) = mpsc::unbounded_channel();
    let t_attach = Instant::now();
    let gate = Arc::new(Semaphore::new(32));
    let mut attaching = tokio::task::JoinSet::new();
    for id in 0..subscribers {
        let url = service.url.clone();
        let gate = Arc::clone(&gate);
        attaching.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            attach(&url, &format!("sub-{id}"), CreditMode::Auto(8)).await
        });
    }
    let mut handles = Vec::with_capacity(subscribers);
    let mut tasks = tokio::task::JoinSet::new();
    let mut id = 0usize;
    while let Some(result) = attaching.join_next().await {
        let (c, s, r) = result
            .expect("attach task")
            .unwrap_or_else(|e| panic!("subscriber attach: {e}"));
        let check = (id == 0).then(|| Arc::clone(&bodies));
        tasks.spawn(subscriber_loop(r, tx.clone(), check));
        handles.push((c, s));
        id += 1;
    }
    let (initial, _) = collect(
        &mut events,
        lengths[0],
        subscribers,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("initial snapshot: {e}"));
    let all_initial = initial
        .iter()
        .max()
        .map(|t| *t - t_attach)
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss_subscribed, _) = rss_kb(service.pid());
    println!(
        "2. fan-out: {subscribers} subscribers on {ADDRESS} (one AMQP connection each) attached and holding the \
         initial snapshot after {:.1} s; config-service RSS idle {:.1} MB, with subscribers {:.1} MB",
        all_initial.as_secs_f64(),
        idle_rss as f64 / 1024.0,
        rss_subscribed as f64 / 1024.0
    );

    // Blocks alternate without / with the slow subscriber, so drift of the machine hits both alike.
    let mut fanout = Fanout {
        writer: &writer,
        events: &mut events,
        lengths: &lengths,
        subscribers,
        flipped: 0,
        started,
        pid: service.pid().to_string(),
    };
    let mut without = Block::default();
    let mut with = Block::default();
    let mut rss_end = (0, 0);
    for round in 0..2 {
        without.absorb(fanout.run(edits_per_block).await);
        let mut slow = attach_slow(&service.url, round).await;
        with.absorb(fanout.run(edits_per_block).await);
        rss_end = rss_kb(service.pid());
        // The slow one got nothing since its first snapshot: either it still waits, or the service closed it
        // after --send-timeout.
        match tokio::time::timeout(Duration::from_millis(1), slow.2.recv::<String>()).await {
            Err(_) => {
                println!("  slow subscriber {round}: still attached, no snapshot since its first")
            }
            Ok(Err(e)) => {
                let text = format!("{e:?}");
                assert!(
                    text.contains("DetachForced") && text.contains("no credit for"),
                    "the slow subscriber's link ended otherwise: {text}"
                );
                println!(
                    "  slow subscriber {round}: closed by the service (detach-forced, no credit)"
                );
            }
            Ok(Ok(_)) => panic!("the slow subscriber has no credit and must not get a snapshot"),
        }
        let _ = slow.1.end().await;
        let _ = slow.0.close().await;
    }
    print_block("without the slow subscriber", &without, debounce);
    print_block("with one slow subscriber   ", &with, debounce);

    let mut lat_without = without.latencies.clone();
    lat_without.sort();
    let mut lat_with = with.latencies.clone();
    lat_with.sort();
    let p99 = percentile(&lat_without, 0.99);
    let p99_with = percentile(&lat_with, 0.99);
    summary.push(format!(
        "fan-out edit -> all {subscribers} hold it, p99   {:>6.0} ms  (p50 {:.0} ms, incl. {:.0} ms debounce)  \
         target <= 250 ms    {}",
        ms(p99),
        ms(percentile(&lat_without, 0.5)),
        ms(debounce),
        verdict(p99 <= Duration::from_millis(250))
    ));

    // 3. RSS in that state.
    let (rss, hwm) = rss_end;
    let rss_mb = rss as f64 / 1024.0;
    println!(
        "3. config-service RSS with 10,000 addresses and {} subscribers: {:.1} MB (peak VmHWM {:.1} MB) (target <= 64 \
         MB: {})",
        subscribers + 1,
        rss_mb,
        hwm as f64 / 1024.0,
        verdict(rss_mb <= 64.0)
    );
    summary.push(format!(
        "config-service RSS (VmRSS)              {:>6.1} MB  (peak {:.1} MB)            target <= 64 MB     {}",
        rss_mb,
        hwm as f64 / 1024.0,
        verdict(rss_mb <= 64.0)
    ));

    // 4. Slow subscriber.
    let ratio = ms(p99_with) / ms(p99).max(0.001);
    println!(
        "4. one slow subscriber: p99 without {:.0} ms, with {:.0} ms, ratio {:.2} (target within noise, <= 1.25: {})",
        ms(p99),
        ms(p99_with),
        ratio,
        verdict(ratio <= 1.25)
    );
    summary.push(format!(
        "slow subscriber: p99 with/without        {:>6.2}     ({:.0} / {:.0} ms)           target <= 1.25      {}",
        ratio,
        ms(p99_with),
        ms(p99),
        verdict(ratio <= 1.25)
    ));

    // Diagnostic: what a subscriber without credit holds in config-service (fe2o3 encodes a message before it
    // waits for credit, so each such link pins one encoded snapshot while it holds a send permit: at most
    // --max-concurrent-sends of them, each closed after --send-timeout).
    let (before, _) = rss_kb(service.pid());
    let mut idle_links = Vec::with_capacity(NO_CREDIT_LINKS);
    for n in 0..NO_CREDIT_LINKS {
        idle_links.push(
            attach(&service.url, &format!("no-credit-{n}"), CreditMode::Manual)
                .await
                .expect("no-credit attach"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, _) = rss_kb(service.pid());
    let in_flight = service.metric("sends_in_flight").unwrap_or(-1.0);
    println!(
        "   diagnostic: {NO_CREDIT_LINKS} more links attached with no credit: config-service RSS {:.1} -> {:.1} MB \
         ({:.2} MB per link; the snapshot message is {:.2} MB; {in_flight} sends in flight, bounded by \
         --max-concurrent-sends)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0 / NO_CREDIT_LINKS as f64,
        lengths[0] as f64 / 1024.0 / 1024.0
    );
    println!(
        "   sends in flight at most {} at once over the run; {} subscribers closed for want of credit so far",
        service.metric("sends_in_flight_max").unwrap_or(-1.0),
        service.metric("subscribers_detached_total").unwrap_or(0.0),
    );
    DONE.store(true, Ordering::Relaxed);
    drop(idle_links);
    drop(handles);
    tasks.abort_all();
    drop(service);

    // 5. The floor of this machine: the same bytes over plain loopback TCP, no AMQP, no encoding.
    let floor = raw_floor(subscribers, encoded_len, 3).await;
    let floor_p99 = percentile(&floor, 0.99);
    println!(
        "5. floor: {:.2} MB written to each of {subscribers} loopback TCP sockets (plain tokio writes, readers in \
         this process, 3 rounds after a warm-up): p50 {:.0} ms, p99 {:.0} ms; the service's p99 without the \
         debounce is {:.1} x that",
        encoded_len as f64 / 1024.0 / 1024.0,
        ms(percentile(&floor, 0.5)),
        ms(floor_p99),
        ms(p99.saturating_sub(debounce)) / ms(floor_p99).max(0.001)
    );
    summary.push(format!(
        "loopback TCP floor, same bytes, p99     {:>6.0} ms  (service / floor {:.1})",
        ms(floor_p99),
        ms(p99.saturating_sub(debounce)) / ms(floor_p99).max(0.001)
    ));
    println!(
        "\nsummary ({subscribers} subscribers, 10,000 addresses, {:.0} s):",
        started.elapsed().as_secs_f64()
    );
    for line in summary {
        println!("  {line}");
    }
}
