//! Bench: config-service fan-out of `v1/addresses` with 10,000 addresses, every figure measured in ONE run so the
//! ratios survive a noisy shared 2-core machine (issue 12; docs/architecture.md §3 "Incremental mode").
//!
//! 1. Snapshot build: the `v1/addresses` body (JSON) of 10,000 addresses (4,000 anycast, 2,000 broadcast, 3,000
//!    queue, 1,000 topic), wrapped in its message and AMQP-encoded once — median and max over 20 builds (target
//!    <= 20 ms). The server's whole per-change work (all three static sources) is printed for information.
//! 2. The floor of the machine: the encoded snapshot's bytes written to as many loopback TCP sockets as there are
//!    subscribers, with plain tokio writes, and read by minimal readers in this process (no AMQP, no encoding, no
//!    JSON); p50/p99 over 3 rounds, measured at the start AND at the end of the run (the mean of both p99s is the
//!    floor the service is compared with).
//! 3. Full snapshots: the `config-service` binary runs as a SEPARATE process in file mode on a directory written by
//!    [`KubeletWriter`], with `--debounce 20ms`; 1,000 plain fe2o3 subscribers (one AMQP connection each) attach in
//!    this process. Per edit (each flips one anycast address to broadcast) the latency is the time from the start
//!    of the kubelet-style write until a subscriber holds the new snapshot; p50/p99 over all (edit, subscriber)
//!    pairs. Blocks of edits alternate without / with one extra subscriber that got its first snapshot and never
//!    grants credit again (target: the no-credit subscriber changes the p99 by <= 10 %).
//!    3b. The same edits, on a fresh service, to 1,000 MINIMAL AMQP readers ([`raw_subscriber`]): SASL, open,
//!    begin, attach and one flow written by hand, then per frame only the transfer performative decoded and the
//!    payload counted — the floor's reader work plus AMQP framing. Target: p99 minus the debounce within 2x the
//!    floor. The ratio of part 3 (fe2o3 subscribers) is printed for information: on these 2 shared cores it
//!    includes fe2o3's client-side decoding of 1.39 GB per edit (~0.9 s of CPU), which in production runs in the
//!    subscribers' own pods, not next to config-service.
//! 4. Incremental mode: a FRESH config-service process, 1,000 fe2o3 subscribers asking for `maas:delta`; each gets
//!    the full snapshot on attach, then one delta per edit. The same one-address edits: p50/p99 edit -> every
//!    subscriber holds the new generation (target p99 <= 100 ms, debounce included); the same alternation with a
//!    no-credit delta subscriber (target <= 10 %); every delta is checked to chain (`maas:follows` = the generation
//!    held), and subscriber 0 checks each delta's content.
//! 5. RSS (VmRSS, /proc/<pid>/status) of the config-service process with 10,000 addresses and the 1,000 delta
//!    subscribers after the edits (target <= 128 MB); the peak (VmHWM) and the full-snapshot process's RSS are
//!    printed too.
//! 6. The same RSS with a third, fresh service whose 1,000 delta subscribers announce 8 KB frames
//!    (`FANOUT_SMALL_FRAME`): fe2o3 writes frames of the peer's max-frame-size and keeps each connection's write
//!    buffer at the largest frame it ever wrote (here the attach snapshot's), so this is the subscribers' lever.
//!
//! With the default `--send-timeout 5s` a no-credit subscriber is closed (`amqp:link:detach-forced`) once a send to
//! it waited 5 s; the bench reports which happened.
//!
//! Environment (for quick runs): `FANOUT_SUBSCRIBERS` (default 1000), `FANOUT_EDITS` (edits per block, default 10;
//! four blocks of full snapshots, two to minimal readers, sixteen of deltas), `FANOUT_DEBOUNCE_MS` (default 20),
//! `FANOUT_MAX_SENDS` (the service's `--max-concurrent-sends`; default: the service's default),
//! `FANOUT_CLIENT_FRAME` (the subscribers'
//! max-frame-size, default 262144 = fe2o3's default), `FANOUT_SCALE` (divides the address set, e.g. 100 for 100
//! addresses), `FANOUT_ONLY` (`full` or `delta`: run one of parts 3 and 4).
//! Run with `scripts/bench fanout` (or `cargo bench -p config-service --bench fanout`).
//!
//! Figures of 2026-12-05, config-service on the lean sender of `maas_amqp::lean` (2 shared cores; 1,000
//! subscribers, 10,000 addresses, a 1.39 MB encoded snapshot, fe2o3 clients with their default 256 KB frames; four
//! whole runs, the first without part 3b, the first three with 8 delta blocks instead of 16):
//!
//! | | run 1 | run 2 | run 3 | run 4 | target |
//! | --- | --- | --- | --- | --- | --- |
//! | loopback floor p99, mean of start and end | 237 ms | 258 ms | 235 ms | 221 ms | |
//! | full snapshots to minimal AMQP readers (3b): p99, ratio to the floor | | 303 ms, 1.1 x | 300 ms, 1.2 x | 267 ms, 1.1 x | <= 2 x |
//! | full snapshots to fe2o3 subscribers (3): p99, ratio (information) | 717 ms, 2.9 x | 837 ms, 3.2 x | 819 ms, 3.4 x | 747 ms, 3.3 x | |
//! | ... one no-credit subscriber | -4 % | -7 % | +0 % | +1 % | <= 10 % |
//! | deltas: p99 (p50) edit -> all, 20 ms debounce included | 75 (54) ms | 91 (60) ms | 68 (51) ms | 75 (53) ms | <= 100 ms |
//! | ... one no-credit subscriber | +2 % | +3 % | +27 % | +8 % | <= 10 % |
//! | RSS, 1,000 delta subscribers | 74.3 MB | 67.2 MB | 77.3 MB | 73.1 MB | <= 128 MB |
//! | ... subscribers announcing 8 KB frames (part 6) | 54.6 MB | 57.7 MB | 67.5 MB | 67.5 MB | |
//!
//! Run 5, after the delivery-id order fix of the lean sender (16 delta blocks): floor 213 ms; minimal readers 276 ms,
//! 1.2 x; fe2o3 subscribers 739 ms, 3.4 x; full no-credit -8 %; deltas p99 74 (52) ms, no-credit +2 %; RSS 84.0 MB,
//! 71.8 MB with 8 KB frames.
//!
//! The no-credit effect on deltas is measured on the pooled p99 of all (edit, subscriber) pairs, which one slow edit
//! moves: in run 3 the p50s were equal (51 / 51 ms) and one edit of 103 ms made the +27 %; a delta link waiting for
//! credit does no work per edit and holds no permit. Run 4 doubled the delta blocks (16) to steady it.
//!
//! Where the time goes. Full snapshots: config-service ~290–400 ms of CPU per edit (the kernel's copies into
//! 1,000 sockets and TCP; the message is encoded once and written as slices of one buffer), the minimal readers
//! ~230 ms, fe2o3 subscribers ~900–1,000 ms (their decoding: copies, UTF-8, allocation). Before the lean sender
//! (fe2o3's acceptor): ~700 ms of config-service CPU per edit (three user-space copies per send), 401 MB RSS with
//! 1,000 delta subscribers (fe2o3 kept ~95 KB per connection plus a write buffer as large as the largest frame),
//! 2.8–4.1 x the floor. Deltas: the first subscriber holds the change ~40 ms after the write (20 ms debounce,
//! ~15 ms reading and validating 10,000 addresses, ~5 ms building the snapshot and the delta); the other 999 follow
//! within ~20–50 ms.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use config_service::{Snapshot, Source};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Source as LinkSource;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol};
use fe2o3_amqp::{Connection, Receiver, Session};
use maas_model::Config;
use maas_model::delta::{
    AddressDelta, DELTA_CAPABILITY, DELTA_SUBJECT, DeltaFormat, FOLLOWS_PROPERTY,
    GENERATION_PROPERTY,
};
use maas_source::kubelet::KubeletWriter;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

const BIN: &str = env!("CARGO_BIN_EXE_config-service");
const ADDRESS: &str = "v1/addresses";
const BUILDS: usize = 20;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole bench stops adding edits past this (the full-snapshot part gets half of it).
const BUDGET: Duration = Duration::from_secs(240);
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

/// Minor page faults of `pid` so far (/proc/<pid>/stat, field 10).
fn minor_faults(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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

/// One subscriber's report: subscriber `id` holds the message identified by `key` since `at` (plain: the body's
/// length, which identifies the edit; delta: the generation).
struct Event {
    id: usize,
    key: u64,
    at: Instant,
}

/// The max-frame-size the subscribers announce (`FANOUT_CLIENT_FRAME`; part 6 sets a small one).
static CLIENT_FRAME: AtomicU32 = AtomicU32::new(256 * 1024);

/// Counters of the delta subscribers.
static CHAIN_BREAKS: AtomicUsize = AtomicUsize::new(0);
static DELTAS: AtomicUsize = AtomicUsize::new(0);
static FULLS: AtomicUsize = AtomicUsize::new(0);

async fn attach(
    url: &str,
    name: &str,
    credit: CreditMode,
    delta: bool,
) -> Result<(Conn, Sess, Receiver), String> {
    let mut c = tokio::time::timeout(
        STEP_TIMEOUT,
        Connection::builder()
            .container_id(name.to_string())
            .max_frame_size(CLIENT_FRAME.load(Ordering::Relaxed))
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
    let mut source = LinkSource::builder().address(ADDRESS);
    if delta {
        source = source.capabilities(vec![Symbol::from(DELTA_CAPABILITY)]);
    }
    let r = tokio::time::timeout(
        STEP_TIMEOUT,
        Receiver::builder()
            .name(name.to_string())
            .source(source.build())
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
    id: usize,
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
        let key = body.len() as u64;
        if events.send(Event { id, key, at }).is_err() {
            break;
        }
    }
}

fn ulong(d: &fe2o3_amqp::link::delivery::Delivery<String>, key: &str) -> Option<u64> {
    match d.message().application_properties.as_ref()?.0.get(key)? {
        SimpleValue::Ulong(v) => Some(*v),
        _ => None,
    }
}

/// A delta subscriber: receives the full snapshot, then deltas, checking that each delta chains (its `follows` is
/// the generation held); reports each generation. `check`: also parse each delta and check it flips one address.
async fn delta_loop(
    id: usize,
    mut receiver: Receiver,
    events: mpsc::UnboundedSender<Event>,
    check: bool,
) {
    let mut have: Option<u64> = None;
    loop {
        let delivery = match receiver.recv::<String>().await {
            Ok(d) => d,
            Err(e) => {
                if !DONE.load(Ordering::Relaxed) {
                    eprintln!("  a delta subscriber's link ended: {e:?}");
                }
                break;
            }
        };
        let at = Instant::now();
        let Some(generation) = ulong(&delivery, GENERATION_PROPERTY) else {
            panic!("a delta subscriber got a message without {GENERATION_PROPERTY}");
        };
        let subject = delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.subject.clone())
            .unwrap_or_default();
        if subject == DELTA_SUBJECT {
            DELTAS.fetch_add(1, Ordering::Relaxed);
            if ulong(&delivery, FOLLOWS_PROPERTY) != have {
                CHAIN_BREAKS.fetch_add(1, Ordering::Relaxed);
            }
            if check {
                let d = AddressDelta::from_json("bench", DeltaFormat::Typed, delivery.body())
                    .unwrap_or_else(|e| panic!("subscriber 0: a delta that does not parse: {e:?}"));
                assert!(
                    d.removed.is_empty()
                        && !d.upserted.is_empty()
                        && d.upserted.iter().all(|a| a.address.starts_with("anycast-")),
                    "subscriber 0: a delta that is no flip of anycast addresses: {}",
                    delivery.body()
                );
            }
        } else {
            FULLS.fetch_add(1, Ordering::Relaxed);
        }
        have = Some(generation);
        if events
            .send(Event {
                id,
                key: generation,
                at,
            })
            .is_err()
        {
            break;
        }
    }
}

/// Waits until each of the `n` subscribers reported a key that `wanted` accepts; their arrival instants (the
/// first accepted report of each), and how many reports were not accepted meanwhile.
async fn collect(
    events: &mut mpsc::UnboundedReceiver<Event>,
    wanted: impl Fn(u64) -> bool,
    n: usize,
    within: Duration,
) -> Result<(Vec<Instant>, usize), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut arrived: Vec<Option<Instant>> = vec![None; n];
    let mut count = 0;
    let mut stray = 0;
    while count < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if wanted(e.key) && e.id < n => {
                if arrived[e.id].is_none() {
                    arrived[e.id] = Some(e.at);
                    count += 1;
                }
            }
            Ok(Some(e)) => {
                if stray < 3 && e.id < n {
                    eprintln!(
                        "  subscriber {} reported {} (not the one waited for)",
                        e.id, e.key
                    );
                }
                stray += 1;
            }
            Ok(None) => return Err("every subscriber ended".into()),
            Err(_) => {
                return Err(format!(
                    "only {count} of {n} subscribers got it within {within:?} ({stray} other reports)"
                ));
            }
        }
    }
    Ok((arrived.into_iter().flatten().collect(), stray))
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
    server_faults: u64,
}

impl Block {
    fn absorb(&mut self, other: Block) {
        self.latencies.extend(other.latencies);
        self.firsts.extend(other.firsts);
        self.per_edit_max.extend(other.per_edit_max);
        self.stray += other.stray;
        self.server_cpu += other.server_cpu;
        self.bench_cpu += other.bench_cpu;
        self.server_faults += other.server_faults;
    }

    fn p99(&self) -> Duration {
        let mut lat = self.latencies.clone();
        lat.sort();
        percentile(&lat, 0.99)
    }

    fn p50(&self) -> Duration {
        let mut lat = self.latencies.clone();
        lat.sort();
        percentile(&lat, 0.5)
    }
}

/// What a subscriber reports after edit `flipped` (each flips one more address).
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// Plain: the snapshot's body length per number of flipped addresses.
    Length(&'a [usize]),
    /// Delta: the number of flipped addresses when the service started; after edit `flipped` the subscribers hold
    /// generation `1 + flipped - start` (the fresh service's first state is generation 1, each edit publishes one).
    Generation(usize),
}

struct Fanout<'a> {
    writer: &'a KubeletWriter,
    events: &'a mut mpsc::UnboundedReceiver<Event>,
    expect: Expect<'a>,
    subscribers: usize,
    flipped: usize,
    /// The bench stops adding edits at this instant.
    until: Instant,
    /// The config-service process.
    pid: String,
}

impl Fanout<'_> {
    /// `edits` edits, one at a time: each waits until every subscriber holds it.
    async fn run(&mut self, edits: usize) -> Block {
        let mut block = Block::default();
        let (server0, bench0) = (cpu_time(&self.pid), cpu_time("self"));
        let faults0 = minor_faults(&self.pid);
        for _ in 0..edits {
            let next = self.flipped + 1;
            let exhausted = match self.expect {
                Expect::Length(lengths) => next >= lengths.len(),
                Expect::Generation(_) => next >= 4000 / env_usize("FANOUT_SCALE", 1),
            };
            if Instant::now() > self.until || exhausted {
                println!("  (time budget reached: this block stops early)");
                break;
            }
            let files = address_set(next);
            // Let the subscribers' tasks settle between edits (the previous edit's last reports).
            tokio::time::sleep(Duration::from_millis(30)).await;
            let t0 = Instant::now();
            self.writer.write(&files).expect("kubelet-style write");
            let collected = match self.expect {
                Expect::Length(lengths) => {
                    let len = lengths[next] as u64;
                    collect(
                        self.events,
                        |k| k == len,
                        self.subscribers,
                        Duration::from_secs(60),
                    )
                    .await
                }
                Expect::Generation(start) => {
                    let generation = 1 + next.saturating_sub(start) as u64;
                    collect(
                        self.events,
                        |k| k >= generation,
                        self.subscribers,
                        Duration::from_secs(60),
                    )
                    .await
                }
            };
            let (arrivals, stray) = collected.unwrap_or_else(|e| panic!("edit {next}: {e}"));
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
        block.server_faults = minor_faults(&self.pid).saturating_sub(faults0);
        block
    }
}

/// A minimal AMQP subscriber for full snapshots, doing what the floor's readers do plus the AMQP framing: SASL
/// ANONYMOUS, open, begin, attach to `v1/addresses` with a credit it never needs to renew, then per frame only the
/// transfer performative is decoded (for `more` and the payload's length); a message's payload is counted, not
/// copied or decoded. Each complete message is reported with its length minus `overhead` (the encoded message's
/// bytes around the JSON body), i.e. the body length that identifies the edit. It measures the service's side of a
/// fan-out with the same per-byte reader cost as the floor; the fe2o3 subscribers of part 3 add fe2o3's decoding
/// (copies, UTF-8, allocation) on the same 2 cores.
async fn raw_subscriber(
    port: u16,
    id: usize,
    overhead: usize,
    events: mpsc::UnboundedSender<Event>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    use fe2o3_amqp::frames::sasl::Frame as SaslFrame;
    use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
    use fe2o3_amqp::types::performatives::{
        Attach, Begin, ChannelMax, Flow, MaxFrameSize, Open, Performative,
    };
    use fe2o3_amqp::types::sasl::SaslInit;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame<B: serde_amqp::serde::Serialize>(ftype: u8, body: &B) -> Vec<u8> {
        let mut buf = vec![0, 0, 0, 0, 2, ftype, 0, 0];
        buf.extend(serde_amqp::to_vec(body).expect("encode a frame"));
        let size = buf.len() as u32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        buf
    }
    async fn read_frame(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await?;
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        buf.resize(size.saturating_sub(8), 0);
        s.read_exact(buf).await?;
        Ok(())
    }
    fn e(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(e("connect"))?;
    s.set_nodelay(true).map_err(e("nodelay"))?;
    let mut buf = Vec::new();
    let mut header = [0u8; 8];
    s.write_all(b"AMQP\x03\x01\x00\x00")
        .await
        .map_err(e("sasl header"))?;
    s.read_exact(&mut header).await.map_err(e("sasl header"))?;
    read_frame(&mut s, &mut buf)
        .await
        .map_err(e("mechanisms"))?;
    let init = SaslFrame::Init(SaslInit {
        mechanism: Symbol::from("ANONYMOUS"),
        initial_response: None,
        hostname: None,
    });
    s.write_all(&frame(1, &init)).await.map_err(e("init"))?;
    read_frame(&mut s, &mut buf).await.map_err(e("outcome"))?;
    s.write_all(b"AMQP\x00\x01\x00\x00")
        .await
        .map_err(e("amqp header"))?;
    s.read_exact(&mut header).await.map_err(e("amqp header"))?;
    let open = Open {
        container_id: format!("raw-{id}"),
        hostname: None,
        max_frame_size: MaxFrameSize(CLIENT_FRAME.load(Ordering::Relaxed)),
        channel_max: ChannelMax(0),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: i32::MAX as u32,
        outgoing_window: i32::MAX as u32,
        handle_max: Handle(0),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let attach = Attach {
        name: format!("raw-{id}"),
        handle: Handle(0),
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Settled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(LinkSource::builder().address(ADDRESS).build())),
        target: None,
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let flow = Flow {
        next_incoming_id: None,
        incoming_window: i32::MAX as u32,
        next_outgoing_id: 0,
        outgoing_window: i32::MAX as u32,
        handle: Some(Handle(0)),
        delivery_count: Some(0),
        link_credit: Some(1_000_000),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    };
    let mut hello = frame(0, &open);
    hello.extend(frame(0, &begin));
    hello.extend(frame(0, &attach));
    hello.extend(frame(0, &flow));
    s.write_all(&hello).await.map_err(e("open"))?;
    drop(connecting);
    let mut message_len = 0usize;
    loop {
        read_frame(&mut s, &mut buf).await.map_err(e("read"))?;
        if buf.is_empty() {
            continue;
        }
        let mut cursor = std::io::Cursor::new(&buf[..]);
        let performative: Performative =
            serde_amqp::from_reader(&mut cursor).map_err(|err| format!("decode: {err}"))?;
        match performative {
            Performative::Transfer(t) => {
                message_len += buf.len() - cursor.position() as usize;
                if !t.more {
                    let key = message_len.saturating_sub(overhead) as u64;
                    message_len = 0;
                    let at = Instant::now();
                    if events.send(Event { id, key, at }).is_err() {
                        return Ok(());
                    }
                }
            }
            Performative::Detach(_) | Performative::End(_) | Performative::Close(_) => {
                return Err("the service ended the link".into());
            }
            _ => {}
        }
    }
}

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

/// A subscriber that takes the current snapshot with a credit of one and never grants more.
async fn attach_no_credit(url: &str, n: usize, delta: bool) -> (Conn, Sess, Receiver) {
    let (c, s, mut r) = attach(url, &format!("no-credit-{n}"), CreditMode::Manual, delta)
        .await
        .expect("no-credit subscriber attach");
    r.set_credit(1).await.expect("no-credit subscriber credit");
    tokio::time::timeout(STEP_TIMEOUT, r.recv::<String>())
        .await
        .expect("no-credit subscriber: first snapshot in time")
        .expect("no-credit subscriber: first snapshot");
    (c, s, r)
}

/// Whether the no-credit subscriber is still attached or was closed by the service; panics on anything else.
async fn no_credit_outcome(mut stuck: (Conn, Sess, Receiver), label: &str) {
    match tokio::time::timeout(Duration::from_millis(1), stuck.2.recv::<String>()).await {
        Err(_) => println!("  {label}: still attached, nothing received since its first message"),
        Ok(Err(e)) => {
            let text = format!("{e:?}");
            assert!(
                text.contains("DetachForced") && text.contains("no credit for"),
                "the no-credit subscriber's link ended otherwise: {text}"
            );
            println!("  {label}: closed by the service (detach-forced, no credit)");
        }
        Ok(Ok(_)) => panic!("the no-credit subscriber has no credit and must not get a message"),
    }
    let _ = stuck.1.end().await;
    let _ = stuck.0.close().await;
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
        "    CPU per edit: config-service {:.0} ms, subscribers (this process) {:.0} ms (2 cores shared); \
         config-service minor page faults per edit {:.0}",
        b.server_cpu.as_secs_f64() * 1e3 / edits,
        b.bench_cpu.as_secs_f64() * 1e3 / edits,
        b.server_faults as f64 / edits
    );
    if b.stray > 0 {
        println!(
            "    {} reports of another message than the one waited for",
            b.stray
        );
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

/// Attaches `n` subscribers (32 at a time), starts their loops, and waits until each reported its first message
/// accepted by `first`; returns the connection handles (dropping them ends the subscribers) and how long it took.
async fn attach_all(
    url: &str,
    n: usize,
    delta: bool,
    (tx, events, tasks): (
        &mpsc::UnboundedSender<Event>,
        &mut mpsc::UnboundedReceiver<Event>,
        &mut tokio::task::JoinSet<()>,
    ),
    check: Option<Arc<BTreeMap<usize, String>>>,
    first: impl Fn(u64) -> bool,
) -> (Vec<(Conn, Sess)>, Duration) {
    let t_attach = Instant::now();
    let gate = Arc::new(Semaphore::new(32));
    let mut attaching = tokio::task::JoinSet::new();
    for id in 0..n {
        let url = url.to_string();
        let gate = Arc::clone(&gate);
        attaching.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let kind = if delta { "delta" } else { "sub" };
            (
                id,
                attach(&url, &format!("{kind}-{id}"), CreditMode::Auto(8), delta).await,
            )
        });
    }
    let mut handles = Vec::with_capacity(n);
    while let Some(result) = attaching.join_next().await {
        let (id, attached) = result.expect("attach task");
        let (c, s, r) = attached.unwrap_or_else(|e| panic!("subscriber attach: {e}"));
        if delta {
            tasks.spawn(delta_loop(id, r, tx.clone(), id == 0));
        } else {
            tasks.spawn(subscriber_loop(
                id,
                r,
                tx.clone(),
                check.clone().filter(|_| id == 0),
            ));
        }
        handles.push((c, s));
    }
    let (initial, _) = collect(events, first, n, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("initial snapshot: {e}"));
    let all = initial
        .iter()
        .max()
        .map(|t| *t - t_attach)
        .unwrap_or_default();
    (handles, all)
}

/// Blocks of edits alternating without / with one no-credit subscriber (so drift of the machine hits both alike).
async fn alternate(
    fanout: &mut Fanout<'_>,
    url: &str,
    rounds: usize,
    edits: usize,
    delta: bool,
) -> (Block, Block) {
    let mut without = Block::default();
    let mut with = Block::default();
    for round in 0..rounds {
        without.absorb(fanout.run(edits).await);
        let stuck = attach_no_credit(url, round, delta).await;
        with.absorb(fanout.run(edits).await);
        no_credit_outcome(stuck, &format!("no-credit subscriber {round}")).await;
    }
    (without, with)
}

async fn bench() {
    let started = Instant::now();
    let until = started + BUDGET;
    let subscribers = env_usize("FANOUT_SUBSCRIBERS", 1000);
    let edits_per_block = env_usize("FANOUT_EDITS", 10);
    let debounce = Duration::from_millis(env_usize("FANOUT_DEBOUNCE_MS", 20) as u64);
    let only = std::env::var("FANOUT_ONLY").unwrap_or_default();
    let scale = env_usize("FANOUT_SCALE", 1);
    let client_frame = env_usize("FANOUT_CLIENT_FRAME", 256 * 1024) as u32;
    CLIENT_FRAME.store(client_frame, Ordering::Relaxed);
    let mut summary: Vec<String> = Vec::new();

    // 1. Snapshot build and encoding.
    let base = config_of(&address_set(0));
    assert_eq!(base.addresses.len(), 10_000 / scale);
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
    builds.sort();
    whole.sort();
    let (median, max) = (percentile(&builds, 0.5), builds[builds.len() - 1]);
    println!(
        "1. snapshot build: {} addresses -> v1/addresses JSON + message + AMQP encoding ({} bytes): median \
         {:.1} ms, max {:.1} ms over {BUILDS} (target <= 20 ms: {}); all three sources per change: median {:.1} ms",
        base.addresses.len(),
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

    // 2. The floor, first measurement.
    ensure_open_files(2 * (subscribers as u64) + 512);
    let floor_a = raw_floor(subscribers, encoded_len, 3).await;
    println!(
        "2. floor (start): {:.2} MB written to each of {subscribers} loopback TCP sockets: p50 {:.0} ms, p99 {:.0} ms",
        encoded_len as f64 / 1024.0 / 1024.0,
        ms(percentile(&floor_a, 0.5)),
        ms(percentile(&floor_a, 0.99)),
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("addresses");
    let writer = KubeletWriter::new(&dir).expect("address dir");
    writer.write(&address_set(0)).expect("initial write");
    let mut flipped = 0;
    let max_connections = subscribers + 64;

    // 3. Full snapshots.
    let mut full_p99 = None;
    let mut raw_p99: Option<(Duration, Duration)> = None;
    let mut full_rss = None;
    if only.is_empty() || only == "full" {
        // Expected bodies: the v1/addresses body length identifies the edit (each flip adds 2 bytes).
        // Parts 3 (four blocks) and 3b (two blocks).
        let max_flips = 6 * edits_per_block + 1;
        let mut lengths = Vec::with_capacity(max_flips + 1);
        let mut bodies = BTreeMap::new();
        for n in 0..=max_flips {
            let body = config_of(&address_set(n)).addresses.to_address_list_json();
            lengths.push(body.len());
            bodies.insert(body.len(), body);
        }
        assert_eq!(bodies.len(), lengths.len(), "every edit has its own length");
        let bodies = Arc::new(bodies);
        let service = Service::spawn(&dir, debounce.as_millis() as u64, max_connections);
        let (idle_rss, _) = rss_kb(service.pid());
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        let first = lengths[0] as u64;
        let (handles, took) = attach_all(
            &service.url,
            subscribers,
            false,
            (&tx, &mut events, &mut tasks),
            Some(Arc::clone(&bodies)),
            |k| k == first,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss_subscribed, _) = rss_kb(service.pid());
        println!(
            "3. full snapshots: {subscribers} plain subscribers on {ADDRESS} (one AMQP connection each) attached and \
             holding the initial snapshot after {:.1} s; config-service RSS idle {:.1} MB, with subscribers {:.1} MB",
            took.as_secs_f64(),
            idle_rss as f64 / 1024.0,
            rss_subscribed as f64 / 1024.0
        );
        let mut fanout = Fanout {
            writer: &writer,
            events: &mut events,
            expect: Expect::Length(&lengths),
            subscribers,
            flipped,
            until: started + BUDGET / 2,
            pid: service.pid().to_string(),
        };
        let (without, with) = alternate(&mut fanout, &service.url, 2, edits_per_block, false).await;
        flipped = fanout.flipped;
        let (rss, hwm) = rss_kb(service.pid());
        print_block("without the no-credit subscriber", &without, debounce);
        print_block("with one no-credit subscriber   ", &with, debounce);
        let (p99, p99_with) = (without.p99(), with.p99());
        let change = (ms(p99_with) / ms(p99).max(0.001) - 1.0) * 100.0;
        println!(
            "   p99 without {:.0} ms, with {:.0} ms: {change:+.0} % (target within 10 %: {}); RSS {:.1} MB (peak {:.1} \
             MB); sends in flight at most {}",
            ms(p99),
            ms(p99_with),
            verdict(change.abs() <= 10.0),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            service.metric("sends_in_flight_max").unwrap_or(-1.0),
        );
        summary.push(format!(
            "full snapshots: one no-credit subscriber  {change:>+6.0} %    ({:.0} / {:.0} ms)          target <= 10 %      {}",
            ms(p99_with),
            ms(p99),
            verdict(change.abs() <= 10.0)
        ));
        full_p99 = Some((p99, without.p50()));
        full_rss = Some(rss);
        DONE.store(true, Ordering::Relaxed);
        drop(handles);
        tasks.abort_all();
        drop(service);
        DONE.store(false, Ordering::Relaxed);

        // 3b. The same edits to minimal AMQP readers (the floor's reader cost plus AMQP framing), fresh service.
        let service = Service::spawn(&dir, debounce.as_millis() as u64, max_connections);
        let port: u16 = service
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("service port");
        let body0 = config_of(&address_set(0)).addresses.to_address_list_json();
        let overhead = Snapshot::new(Source::Addresses, body0.clone())
            .sendable
            .encoded
            .len()
            - body0.len();
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        let gate = Arc::new(Semaphore::new(32));
        for id in 0..subscribers {
            let tx = tx.clone();
            let gate = Arc::clone(&gate);
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await.expect("semaphore");
                let reading = raw_subscriber(port, id, overhead, tx, permit);
                if let Err(error) = reading.await
                    && !DONE.load(Ordering::Relaxed)
                {
                    eprintln!("  raw subscriber {id}: {error}");
                }
            });
        }
        let current = lengths[flipped] as u64;
        collect(
            &mut events,
            |k| k == current,
            subscribers,
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("raw readers' initial snapshot: {e}"));
        let mut fanout = Fanout {
            writer: &writer,
            events: &mut events,
            expect: Expect::Length(&lengths),
            subscribers,
            flipped,
            until: started + BUDGET * 3 / 4,
            pid: service.pid().to_string(),
        };
        let mut raw = fanout.run(edits_per_block).await;
        raw.absorb(fanout.run(edits_per_block).await);
        flipped = fanout.flipped;
        print_block(
            "3b. minimal AMQP readers (no fe2o3 on the reading side)",
            &raw,
            debounce,
        );
        raw_p99 = Some((raw.p99(), raw.p50()));
        DONE.store(true, Ordering::Relaxed);
        tasks.abort_all();
        drop(service);
        DONE.store(false, Ordering::Relaxed);
    }

    // 4. Incremental mode, on a fresh service.
    if only.is_empty() || only == "delta" {
        let service = Service::spawn(&dir, debounce.as_millis() as u64, max_connections);
        let (idle_rss, _) = rss_kb(service.pid());
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        let (handles, took) = attach_all(
            &service.url,
            subscribers,
            true,
            (&tx, &mut events, &mut tasks),
            None,
            |_| true,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss_subscribed, _) = rss_kb(service.pid());
        println!(
            "4. incremental mode: {subscribers} delta subscribers attached and holding the full snapshot after {:.1} s; \
             config-service RSS idle {:.1} MB, with subscribers {:.1} MB",
            took.as_secs_f64(),
            idle_rss as f64 / 1024.0,
            rss_subscribed as f64 / 1024.0
        );
        let mut fanout = Fanout {
            writer: &writer,
            events: &mut events,
            expect: Expect::Generation(flipped),
            subscribers,
            flipped,
            until,
            pid: service.pid().to_string(),
        };
        let (without, with) = alternate(&mut fanout, &service.url, 8, edits_per_block, true).await;
        flipped = fanout.flipped;
        let (rss, hwm) = rss_kb(service.pid());
        print_block("without the no-credit subscriber", &without, debounce);
        print_block("with one no-credit subscriber   ", &with, debounce);
        let (p99, p99_with) = (without.p99(), with.p99());
        let change = (ms(p99_with) / ms(p99).max(0.001) - 1.0) * 100.0;
        println!(
            "   p99 without {:.0} ms (target <= 100 ms: {}), with {:.0} ms: {change:+.0} % (target within 10 %: {})",
            ms(p99),
            verdict(p99 <= Duration::from_millis(100)),
            ms(p99_with),
            verdict(change.abs() <= 10.0),
        );
        println!(
            "   subscribers got {} deltas and {} full snapshots; {} deltas did not chain; service: deltas_sent {}, \
             delta_resyncs {}, sends in flight at most {}",
            DELTAS.load(Ordering::Relaxed),
            FULLS.load(Ordering::Relaxed),
            CHAIN_BREAKS.load(Ordering::Relaxed),
            service.metric("deltas_sent_total").unwrap_or(-1.0),
            service.metric("delta_resyncs_total").unwrap_or(-1.0),
            service.metric("sends_in_flight_max").unwrap_or(-1.0),
        );
        assert_eq!(
            CHAIN_BREAKS.load(Ordering::Relaxed),
            0,
            "deltas that do not chain"
        );
        let rss_mb = rss as f64 / 1024.0;
        println!(
            "5. config-service RSS with {} addresses and {subscribers} delta subscribers after the edits: {rss_mb:.1} \
             MB (peak VmHWM {:.1} MB) (target <= 128 MB: {})",
            base_len(scale),
            hwm as f64 / 1024.0,
            verdict(rss_mb <= 128.0)
        );
        summary.push(format!(
            "deltas: edit -> all {subscribers} hold it, p99  {:>6.0} ms  (p50 {:.0} ms, incl. {:.0} ms debounce)  \
             target <= 100 ms    {}",
            ms(p99),
            ms(without.p50()),
            ms(debounce),
            verdict(p99 <= Duration::from_millis(100))
        ));
        summary.push(format!(
            "deltas: one no-credit subscriber          {change:>+6.0} %    ({:.0} / {:.0} ms)            target <= 10 %      {}",
            ms(p99_with),
            ms(p99),
            verdict(change.abs() <= 10.0)
        ));
        summary.push(format!(
            "config-service RSS, {subscribers} delta subscribers {rss_mb:>6.1} MB  (peak {:.1} MB)            target <= 128 MB    {}",
            hwm as f64 / 1024.0,
            verdict(rss_mb <= 128.0)
        ));
        DONE.store(true, Ordering::Relaxed);
        drop(handles);
        tasks.abort_all();
        drop(service);
        DONE.store(false, Ordering::Relaxed);

        // 6. The same with subscribers announcing a small max-frame-size: fe2o3 sends frames of the PEER's size and
        // keeps each connection's write buffer at the largest frame it sent (the attach snapshot's), so this is what
        // the subscribers' choice costs or saves the service.
        let small = env_usize("FANOUT_SMALL_FRAME", 8192) as u32;
        CLIENT_FRAME.store(small, Ordering::Relaxed);
        let service = Service::spawn(&dir, debounce.as_millis() as u64, max_connections);
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        let (handles, _) = attach_all(
            &service.url,
            subscribers,
            true,
            (&tx, &mut events, &mut tasks),
            None,
            |_| true,
        )
        .await;
        let mut fanout = Fanout {
            writer: &writer,
            events: &mut events,
            expect: Expect::Generation(flipped),
            subscribers,
            flipped,
            until: Instant::now() + Duration::from_secs(30),
            pid: service.pid().to_string(),
        };
        let block = fanout.run(edits_per_block).await;
        flipped = fanout.flipped;
        let (rss_small, hwm_small) = rss_kb(service.pid());
        println!(
            "6. the same {subscribers} delta subscribers announcing {small}-byte frames (fe2o3 clients default to \
             {client_frame}): p99 {:.0} ms over {} edits; config-service RSS {:.1} MB (peak {:.1} MB)",
            ms(block.p99()),
            block.per_edit_max.len(),
            rss_small as f64 / 1024.0,
            hwm_small as f64 / 1024.0,
        );
        summary.push(format!(
            "  ... subscribers announcing {small} B frames {:>6.1} MB  (peak {:.1} MB)            target <= 128 MB    {}",
            rss_small as f64 / 1024.0,
            hwm_small as f64 / 1024.0,
            verdict(rss_small as f64 / 1024.0 <= 128.0)
        ));
        CLIENT_FRAME.store(client_frame, Ordering::Relaxed);
        DONE.store(true, Ordering::Relaxed);
        drop(handles);
        tasks.abort_all();
        drop(service);
    }
    let _ = flipped;

    // 2'. The floor again, and the full-snapshot p99 against the mean of both.
    let floor_b = raw_floor(subscribers, encoded_len, 3).await;
    let floor = (percentile(&floor_a, 0.99) + percentile(&floor_b, 0.99)) / 2;
    println!(
        "2'. floor (end): p50 {:.0} ms, p99 {:.0} ms; floor p99 of the run (mean of start and end) {:.0} ms",
        ms(percentile(&floor_b, 0.5)),
        ms(percentile(&floor_b, 0.99)),
        ms(floor),
    );
    summary.push(format!(
        "loopback TCP floor, same bytes, p99     {:>6.0} ms  (start {:.0} ms, end {:.0} ms)",
        ms(floor),
        ms(percentile(&floor_a, 0.99)),
        ms(percentile(&floor_b, 0.99)),
    ));
    if let Some((p99, p50)) = raw_p99 {
        let ratio = ms(p99.saturating_sub(debounce)) / ms(floor).max(0.001);
        println!(
            "   full snapshots to minimal AMQP readers: p99 {:.0} ms (p50 {:.0} ms); minus the debounce {:.0} ms = \
             {ratio:.1} x the floor (target <= 2: {})",
            ms(p99),
            ms(p50),
            ms(p99.saturating_sub(debounce)),
            verdict(ratio <= 2.0)
        );
        summary.push(format!(
            "full snapshots: edit -> all {subscribers}, p99    {:>6.0} ms  = {ratio:.1} x floor (minus debounce)     \
             target <= 2 x       {}",
            ms(p99),
            verdict(ratio <= 2.0)
        ));
    }
    if let Some((p99, p50)) = full_p99 {
        let ratio = ms(p99.saturating_sub(debounce)) / ms(floor).max(0.001);
        println!(
            "   full snapshots to fe2o3 subscribers: p99 {:.0} ms (p50 {:.0} ms); minus the debounce {:.0} ms = \
             {ratio:.1} x the floor (information: fe2o3's decoding on the same 2 cores)",
            ms(p99),
            ms(p50),
            ms(p99.saturating_sub(debounce)),
        );
        summary.push(format!(
            "  ... to fe2o3 subscribers, p99           {:>6.0} ms  = {ratio:.1} x floor (minus debounce)     \
             (information)",
            ms(p99),
        ));
    }
    if let Some(rss) = full_rss {
        summary.push(format!(
            "config-service RSS, {subscribers} plain subscribers {:>6.1} MB  (information)",
            rss as f64 / 1024.0
        ));
    }
    println!(
        "\nsummary ({subscribers} subscribers, {} addresses, {:.0} s):",
        base_len(scale),
        started.elapsed().as_secs_f64()
    );
    for line in summary {
        println!("  {line}");
    }
}

fn base_len(scale: usize) -> usize {
    10_000 / scale
}
