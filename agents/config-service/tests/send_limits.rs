//! The bound on snapshot sends in progress (`--max-concurrent-sends`) and the send timeout (`--send-timeout`),
//! with fe2o3 clients on 127.0.0.1: a subscriber that grants no credit is closed with `amqp:link:detach-forced`
//! after the timeout while the others go on, a slow subscriber still ends on the latest snapshot, and 50
//! subscribers never have more sends in progress than the limit.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{CreditMode, LinkStateError, RecvError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{ErrorCondition, LinkError};
use fe2o3_amqp::{Connection, Receiver, Session};

mod common;
use common::Svc;

type Conn = ConnectionHandle<()>;
type Sess = SessionHandle<()>;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The address directory with `n` addresses named `{prefix}-{i}`.
fn address_files(prefix: &str, n: usize) -> BTreeMap<String, String> {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#""{prefix}-{i}": {{"store_and_forward": false, "multicast": false}}"#))
        .collect();
    let mut files = BTreeMap::new();
    files.insert("json".to_string(), format!("{{{}}}", items.join(",")));
    files
}

impl Svc {
    async fn start(max_concurrent_sends: usize, send_timeout: Duration, addresses: usize) -> Svc {
        Svc::start_in(&address_files("a0", addresses), |args, _| {
            args.max_concurrent_sends = max_concurrent_sends;
            args.send_timeout = send_timeout;
            args.debounce = Duration::from_millis(20);
        })
        .await
    }

    fn edit(&self, prefix: &str, addresses: usize) {
        self.writer
            .write(&address_files(prefix, addresses))
            .unwrap();
    }
}

async fn subscribe(url: &str, name: &str, credit: CreditMode) -> (Conn, Sess, Receiver) {
    let mut c = tokio::time::timeout(
        TIMEOUT,
        Connection::builder()
            .container_id(name.to_string())
            .sasl_profile(SaslProfile::Anonymous)
            .open(url),
    )
    .await
    .unwrap()
    .unwrap();
    let mut s = tokio::time::timeout(TIMEOUT, Session::begin(&mut c))
        .await
        .unwrap()
        .unwrap();
    let r = tokio::time::timeout(
        TIMEOUT,
        Receiver::builder()
            .name(name.to_string())
            .source("v1/addresses")
            .credit_mode(credit)
            .auto_accept(true)
            .attach(&mut s),
    )
    .await
    .unwrap()
    .unwrap();
    (c, s, r)
}

/// The body of the next snapshot, or `None` if none came within `within`.
async fn next_within(r: &mut Receiver, within: Duration) -> Option<String> {
    let d = tokio::time::timeout(within, r.recv::<String>())
        .await
        .ok()?
        .unwrap();
    Some(d.body().clone())
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_granting_no_credit_is_closed_after_the_send_timeout_and_the_others_go_on() {
    let send_timeout = Duration::from_secs(1);
    let svc = Svc::start(16, send_timeout, 3).await;
    let attached = Instant::now();
    let (mut c1, _s1, mut stuck) = subscribe(&svc.url(), "stuck", CreditMode::Manual).await;
    let (mut c2, _s2, mut fast) = subscribe(&svc.url(), "fast", CreditMode::Auto(10)).await;
    assert!(
        next_within(&mut fast, TIMEOUT)
            .await
            .unwrap()
            .contains("a0-2")
    );

    // While the stuck one holds its send, an edit reaches the other subscriber at once.
    let edited = Instant::now();
    svc.edit("a1", 3);
    let body = next_within(&mut fast, TIMEOUT).await.unwrap();
    assert!(body.contains("a1-2"), "{body}");
    assert!(
        edited.elapsed() < send_timeout,
        "the other subscriber waited {:?}",
        edited.elapsed()
    );

    // The stuck one is closed with the error, after the timeout and not much later.
    let err = tokio::time::timeout(TIMEOUT, stuck.recv::<String>())
        .await
        .expect("the stuck link was not closed in time")
        .expect_err("the stuck link got a message without credit");
    let waited = attached.elapsed();
    assert!(
        waited >= send_timeout && waited < send_timeout * 4,
        "closed after {waited:?}"
    );
    match err {
        RecvError::LinkStateError(LinkStateError::RemoteClosedWithError(e)) => {
            assert_eq!(
                e.condition,
                ErrorCondition::LinkError(LinkError::DetachForced)
            );
            assert_eq!(
                e.description.as_deref(),
                Some("no credit for 1 s; re-attach to resume")
            );
        }
        other => panic!("expected a close with amqp:link:detach-forced, got {other:?}"),
    }
    let metrics = svc.r().metrics.clone();
    assert_eq!(metrics.subscribers_detached("v1/addresses"), 1);
    let text = scrape(svc.r().http_addr).await;
    assert!(
        text.contains(r#"maas_config_service_subscribers_detached_total{source="v1/addresses"} 1"#),
        "{text}"
    );
    // The delta counters of the incremental sources are there from the start, at 0.
    for source in ["v1/addresses", "maas"] {
        for counter in ["deltas_sent_total", "delta_resyncs_total"] {
            let series = format!("maas_config_service_{counter}{{source=\"{source}\"}} 0");
            assert!(text.contains(&series), "{series} missing in {text}");
        }
    }
    // Its permit came back and nothing is in flight.
    assert_eq!(metrics.sends_in_flight(), 0);

    // The other one is unaffected and still follows edits; a re-attach resumes with the latest.
    svc.edit("a2", 3);
    assert!(
        next_within(&mut fast, TIMEOUT)
            .await
            .unwrap()
            .contains("a2-2")
    );
    let (mut c3, _s3, mut again) = subscribe(&svc.url(), "again", CreditMode::Auto(10)).await;
    assert!(
        next_within(&mut again, TIMEOUT)
            .await
            .unwrap()
            .contains("a2-2")
    );
    assert_eq!(metrics.subscribers("v1/addresses"), 2);
    let _ = c1.close().await;
    let _ = c2.close().await;
    let _ = c3.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_skips_intermediate_snapshots_and_ends_on_the_latest() {
    let svc = Svc::start(2, Duration::from_secs(3), 200).await;
    let (mut c, _s, mut slow) = subscribe(&svc.url(), "slow", CreditMode::Manual).await;
    let (mut c2, _s2, mut fast) = subscribe(&svc.url(), "fast", CreditMode::Auto(10)).await;
    assert!(next_within(&mut fast, TIMEOUT).await.is_some());
    // Ten edits while the slow one grants one credit every 300 ms (well within the timeout).
    for i in 1..=10 {
        svc.edit(&format!("e{i}"), 200);
        let body = next_within(&mut fast, TIMEOUT).await.unwrap();
        assert!(body.contains(&format!("e{i}-199")), "{body}");
    }
    let mut got = Vec::new();
    loop {
        slow.set_credit(1).await.unwrap();
        match next_within(&mut slow, Duration::from_millis(1500)).await {
            Some(body) => got.push(body),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last = got.last().expect("the slow subscriber got nothing");
    assert!(last.contains("e10-199"), "ended on {:.80}", last);
    assert!(
        got.len() < 11,
        "the slow subscriber got every intermediate snapshot ({})",
        got.len()
    );
    let metrics = &svc.r().metrics;
    assert_eq!(metrics.subscribers_detached("v1/addresses"), 0);
    assert_eq!(metrics.subscribers("v1/addresses"), 2);
    let _ = c.close().await;
    let _ = c2.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_subscribers_never_have_more_sends_in_flight_than_the_limit() {
    const LIMIT: usize = 4;
    const SUBSCRIBERS: usize = 50;
    // ~100 KB snapshots: each send spans two frames and yields while the session takes them.
    let svc = Svc::start(LIMIT, Duration::from_secs(5), 2000).await;
    let url = svc.url();
    let mut attaching = tokio::task::JoinSet::new();
    for i in 0..SUBSCRIBERS {
        let url = url.clone();
        attaching
            .spawn(async move { subscribe(&url, &format!("sub-{i}"), CreditMode::Auto(4)).await });
    }
    let mut subs = Vec::new();
    while let Some(r) = attaching.join_next().await {
        subs.push(r.unwrap());
    }
    let wait_all = |subs: &mut Vec<(Conn, Sess, Receiver)>, want: String| {
        let mut set = tokio::task::JoinSet::new();
        for (c, s, mut r) in subs.drain(..) {
            let want = want.clone();
            set.spawn(async move {
                let deadline = Instant::now() + TIMEOUT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let body = next_within(&mut r, left)
                        .await
                        .unwrap_or_else(|| panic!("no snapshot with {want} in time"));
                    if body.contains(&want) {
                        return (c, s, r);
                    }
                }
            });
        }
        set
    };
    let mut set = wait_all(&mut subs, "\"a0-1999\"".to_string());
    while let Some(r) = set.join_next().await {
        subs.push(r.unwrap());
    }
    for i in 1..=3 {
        svc.edit(&format!("e{i}"), 2000);
        let mut set = wait_all(&mut subs, format!("\"e{i}-1999\""));
        while let Some(r) = set.join_next().await {
            subs.push(r.unwrap());
        }
    }
    let metrics = &svc.r().metrics;
    let peak = metrics.sends_in_flight_max();
    assert!(
        peak <= LIMIT as i64,
        "{peak} sends in flight at once with --max-concurrent-sends {LIMIT}"
    );
    assert!(
        peak >= 2,
        "sends never overlapped (peak {peak}): the test does not exercise the limit"
    );
    assert_eq!(metrics.sends_in_flight(), 0);
    assert!(metrics.snapshots_sent("v1/addresses") >= 4 * SUBSCRIBERS as u64);
    let text = scrape(svc.r().http_addr).await;
    assert!(
        text.contains(&format!("maas_config_service_sends_in_flight_max {peak}")),
        "{text}"
    );
    for (mut c, _, _) in subs {
        let _ = c.close().await;
    }
    svc.stop().await;
}
