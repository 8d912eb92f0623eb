//! Incremental mode (docs/architecture.md §3 "Incremental mode") with fe2o3 clients on 127.0.0.1: a link whose
//! source lists `maas:delta` gets the full snapshot with `maas:generation`, then per edit only what changed, with
//! the generation it follows; plain links on the same service keep getting exactly the full snapshots of before;
//! a subscriber that was held back still gets a chain it can apply; re-attaching brings a full snapshot; `v1/flavors`
//! ignores the capability.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use config_service::Args;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Source;
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol};
use fe2o3_amqp::{Connection, Receiver, Session};
use maas_model::delta::{
    AddressDelta, DELTA_CAPABILITY, DELTA_SUBJECT, DeltaFormat, FOLLOWS_PROPERTY,
    GENERATION_PROPERTY,
};
use maas_model::{AddressKind, AddressSet};

mod common;
use common::Svc;

type Conn = ConnectionHandle<()>;
type Sess = SessionHandle<()>;

const TIMEOUT: Duration = Duration::from_secs(10);
const FLAVORS: &str = r#"{"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"}}"#;

/// The address directory: `json` holds the 2016-format entries given (name -> properties JSON).
fn files(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    let items: Vec<String> = entries
        .iter()
        .map(|(name, props)| format!("{name:?}: {props}"))
        .collect();
    BTreeMap::from([
        ("json".to_string(), format!("{{{}}}", items.join(","))),
        ("flavor.json".to_string(), FLAVORS.to_string()),
    ])
}

const QUEUE: &str = r#"{"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"}"#;
const ANYCAST: &str = r#"{"store_and_forward": false, "multicast": false}"#;
const BROADCAST: &str = r#"{"store_and_forward": false, "multicast": true}"#;

impl Svc {
    async fn start() -> Svc {
        Svc::start_with(|_| {}).await
    }

    async fn start_with(edit: impl FnOnce(&mut Args)) -> Svc {
        let initial = files(&[("q1", QUEUE), ("a1", ANYCAST)]);
        Svc::start_in(&initial, |args, _| {
            args.debounce = Duration::from_millis(20);
            edit(args);
        })
        .await
    }

    fn edit(&self, entries: &[(&str, &str)]) {
        self.writer.write(&files(entries)).unwrap();
    }
}

async fn connect(url: &str) -> (Conn, Sess) {
    let mut c = tokio::time::timeout(
        TIMEOUT,
        Connection::builder()
            .container_id("delta-test")
            .sasl_profile(SaslProfile::Anonymous)
            .open(url),
    )
    .await
    .unwrap()
    .unwrap();
    let s = tokio::time::timeout(TIMEOUT, Session::begin(&mut c))
        .await
        .unwrap()
        .unwrap();
    (c, s)
}

fn link_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("delta-test-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A receiver on `address`, asking for incremental mode when `delta`.
async fn subscribe(s: &mut Sess, address: &str, delta: bool, credit: CreditMode) -> Receiver {
    let mut source = Source::builder().address(address.to_string());
    if delta {
        source = source.capabilities(vec![Symbol::from(DELTA_CAPABILITY)]);
    }
    tokio::time::timeout(
        TIMEOUT,
        Receiver::builder()
            .name(link_name())
            .source(source.build())
            .credit_mode(credit)
            .auto_accept(true)
            .attach(s),
    )
    .await
    .unwrap()
    .unwrap()
}

/// The capabilities of the source in the service's attach.
fn granted(r: &Receiver) -> Vec<String> {
    r.source()
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| c.0.iter().map(|s| s.0.clone()).collect())
        .unwrap_or_default()
}

/// One received message.
#[derive(Debug, Clone)]
struct Msg {
    subject: String,
    content_type: String,
    /// `None`: the message has no application properties at all.
    properties: Option<BTreeMap<String, SimpleValue>>,
    body: String,
}

impl Msg {
    fn ulong(&self, key: &str) -> Option<u64> {
        match self.properties.as_ref()?.get(key)? {
            SimpleValue::Ulong(v) => Some(*v),
            _ => None,
        }
    }

    fn generation(&self) -> u64 {
        self.ulong(GENERATION_PROPERTY)
            .unwrap_or_else(|| panic!("no {GENERATION_PROPERTY}: {self:?}"))
    }

    fn is_delta(&self) -> bool {
        self.subject == DELTA_SUBJECT
    }
}

async fn next_within(r: &mut Receiver, within: Duration) -> Option<Msg> {
    let d = tokio::time::timeout(within, r.recv::<String>())
        .await
        .ok()?
        .unwrap();
    let m = d.message();
    let props = m.properties.clone().unwrap_or_default();
    Some(Msg {
        subject: props.subject.unwrap_or_default(),
        content_type: props.content_type.map(|s| s.0).unwrap_or_default(),
        properties: m
            .application_properties
            .as_ref()
            .map(|p| p.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        body: d.body().clone(),
    })
}

async fn next(r: &mut Receiver) -> Msg {
    next_within(r, TIMEOUT).await.expect("no message in time")
}

fn parse_full(format: DeltaFormat, body: &str) -> AddressSet {
    match format {
        DeltaFormat::Typed => AddressSet::from_address_list_json("test", body).unwrap(),
        DeltaFormat::Legacy => AddressSet::from_2016_json("test", body).unwrap(),
    }
}

fn parse_delta(format: DeltaFormat, m: &Msg) -> AddressDelta {
    assert!(m.is_delta(), "{m:?}");
    assert_eq!(m.content_type, "application/json");
    let d = AddressDelta::from_json("test", format, &m.body).unwrap();
    assert_eq!(d.generation, m.generation(), "{m:?}");
    assert_eq!(Some(d.follows), m.ulong(FOLLOWS_PROPERTY), "{m:?}");
    d
}

fn names(d: &AddressDelta) -> Vec<&str> {
    d.upserted.iter().map(|a| a.address.as_str()).collect()
}

async fn full_then_deltas_and_plain_unchanged(
    address: &'static str,
    format: DeltaFormat,
    subject: &str,
) {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut delta = subscribe(&mut s, address, true, CreditMode::Auto(10)).await;
    let mut plain = subscribe(&mut s, address, false, CreditMode::Auto(10)).await;
    assert_eq!(granted(&delta), [DELTA_CAPABILITY]);
    assert!(granted(&plain).is_empty(), "{:?}", granted(&plain));

    // Attach: the full snapshot, tagged with its generation; the plain link gets the same body, untagged.
    let full = next(&mut delta).await;
    assert_eq!(full.subject, subject);
    assert_eq!(full.content_type, "application/json");
    let g0 = full.generation();
    assert_eq!(full.properties.as_ref().map(BTreeMap::len), Some(1));
    let p0 = next(&mut plain).await;
    assert_eq!(p0.subject, subject);
    assert_eq!(p0.content_type, "application/json");
    assert!(p0.properties.is_none(), "{p0:?}");
    assert_eq!(p0.body, full.body);
    let mut set = parse_full(format, &full.body);
    assert_eq!(set.len(), 2);

    // One address added: a delta with exactly it, following the snapshot's generation.
    svc.edit(&[("q1", QUEUE), ("a1", ANYCAST), ("b1", BROADCAST)]);
    let m = next(&mut delta).await;
    let d = parse_delta(format, &m);
    assert_eq!((d.follows, d.generation), (g0, g0 + 1));
    assert_eq!(names(&d), ["b1"]);
    assert_eq!(d.upserted[0].kind, AddressKind::Broadcast);
    assert!(d.removed.is_empty(), "{d:?}");
    d.apply(&mut set);
    let p1 = next(&mut plain).await;
    assert!(p1.properties.is_none(), "{p1:?}");
    assert_eq!(parse_full(format, &p1.body), set);

    // One address changed and one removed.
    svc.edit(&[("q1", QUEUE), ("b1", ANYCAST)]);
    let d = parse_delta(format, &next(&mut delta).await);
    assert_eq!((d.follows, d.generation), (g0 + 1, g0 + 2));
    assert_eq!(names(&d), ["b1"]);
    assert_eq!(d.removed, ["a1"]);
    d.apply(&mut set);
    let p2 = next(&mut plain).await;
    assert_eq!(p2.subject, subject);
    assert!(p2.properties.is_none(), "{p2:?}");
    assert_eq!(parse_full(format, &p2.body), set);

    // Re-attach (the way to ask for a resync): the full snapshot of the latest generation.
    let _ = delta.close().await;
    let mut again = subscribe(&mut s, address, true, CreditMode::Auto(10)).await;
    let full = next(&mut again).await;
    assert_eq!(full.subject, subject);
    assert_eq!(full.generation(), g0 + 2);
    assert_eq!(parse_full(format, &full.body), set);

    let m = svc.r().metrics.clone();
    assert!(m.deltas_sent(address) >= 2);
    assert_eq!(m.delta_subscribers(address), 1);
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_addresses_delta_link_gets_full_then_only_changes_and_plain_links_stay_unchanged() {
    full_then_deltas_and_plain_unchanged(
        "v1/addresses",
        DeltaFormat::Typed,
        "enmasse.io/v1/AddressList",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maas_delta_link_gets_full_then_only_changes_in_the_2016_format() {
    full_then_deltas_and_plain_unchanged("maas", DeltaFormat::Legacy, "maas.io/v1/AddressConfig")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_subscriber_gets_messages_that_chain_and_ends_on_the_latest_set() {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut fast = subscribe(&mut s, "v1/addresses", true, CreditMode::Auto(10)).await;
    let mut slow = subscribe(&mut s, "v1/addresses", true, CreditMode::Manual).await;
    slow.set_credit(1).await.unwrap();
    let first = next(&mut slow).await;
    let mut set = parse_full(DeltaFormat::Typed, &first.body);
    let mut have = first.generation();
    let _ = next(&mut fast).await;

    // Five edits while the slow link grants no credit; each one is seen by the fast link. Forty more addresses make
    // the snapshot larger than the merged delta.
    let mut entries: Vec<(String, &str)> = vec![("q1".into(), QUEUE), ("a1".into(), ANYCAST)];
    entries.extend((0..40).map(|i| (format!("filler-{i}"), ANYCAST)));
    for i in 0..5 {
        entries.push((format!("n{i}"), BROADCAST));
        if i == 2 {
            entries.retain(|(n, _)| n != "a1");
        }
        let borrowed: Vec<(&str, &str)> = entries.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        svc.edit(&borrowed);
        let d = parse_delta(DeltaFormat::Typed, &next(&mut fast).await);
        assert_eq!(d.generation, first.generation() + i + 1);
    }
    let latest = first.generation() + 5;

    // Credit again: whatever comes (the delta it was waiting to send, then one merged delta or a full snapshot)
    // chains, and applying it gives the latest set.
    slow.set_credit(10).await.unwrap();
    let mut received = 0;
    let mut merged = 0;
    while have < latest {
        let m = next(&mut slow).await;
        received += 1;
        if m.is_delta() {
            let d = parse_delta(DeltaFormat::Typed, &m);
            assert_eq!(d.follows, have, "a delta that does not chain: {m:?}");
            if d.generation > d.follows + 1 {
                merged += 1;
            }
            d.apply(&mut set);
            have = d.generation;
        } else {
            set = parse_full(DeltaFormat::Typed, &m.body);
            have = m.generation();
        }
    }
    assert_eq!(have, latest);
    assert!(
        received < 5,
        "the held-back link got {received} messages, not a merged catch-up"
    );
    assert!(merged >= 1, "no merged delta among the {received} messages");
    let expected: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let mut got: Vec<&str> = set.iter().map(|a| a.address.as_str()).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, expected_sorted);
    assert!(
        next_within(&mut slow, Duration::from_millis(300))
            .await
            .is_none()
    );
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_link_waiting_for_credit_holds_no_send_permit() {
    // One permit in all, and a send timeout far beyond the test's: if the stuck delta link held the permit while it
    // waits for credit, the plain link would get nothing.
    let svc = Svc::start_with(|args| {
        args.max_concurrent_sends = 1;
        args.send_timeout = Duration::from_secs(600);
    })
    .await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut stuck = subscribe(&mut s, "v1/addresses", true, CreditMode::Manual).await;
    stuck.set_credit(1).await.unwrap();
    let g0 = next(&mut stuck).await.generation();
    let mut plain = subscribe(&mut s, "v1/addresses", false, CreditMode::Auto(10)).await;
    let _ = next(&mut plain).await;

    svc.edit(&[("q1", QUEUE), ("a1", ANYCAST), ("b1", BROADCAST)]);
    let p = next(&mut plain).await;
    assert!(p.body.contains("b1"), "{p:?}");
    svc.edit(&[("q1", QUEUE), ("b1", BROADCAST)]);
    let p = next(&mut plain).await;
    assert!(!p.body.contains("a1"), "{p:?}");
    // The plain link's send gives its permit back once its last frame is queued: at most a moment after the
    // subscriber has the message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while svc.r().metrics.sends_in_flight() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(svc.r().metrics.sends_in_flight(), 0);

    // Credit at last: the delta it was holding, then the rest, chained.
    stuck.set_credit(10).await.unwrap();
    let d = parse_delta(DeltaFormat::Typed, &next(&mut stuck).await);
    assert_eq!((d.follows, d.generation), (g0, g0 + 1));
    let d = parse_delta(DeltaFormat::Typed, &next(&mut stuck).await);
    assert_eq!((d.follows, d.generation), (g0 + 1, g0 + 2));
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flavors_ignore_the_delta_capability_and_send_plain_full_snapshots() {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut r = subscribe(&mut s, "v1/flavors", true, CreditMode::Auto(10)).await;
    assert!(granted(&r).is_empty(), "{:?}", granted(&r));
    let m = next(&mut r).await;
    assert_eq!(m.subject, "maas.io/v1/FlavorSet");
    assert!(m.properties.is_none(), "{m:?}");
    assert!(m.body.contains("vanilla-queue"), "{m:?}");
    assert_eq!(svc.r().metrics.delta_subscribers("v1/flavors"), 0);
    let _ = c.close().await;
    svc.stop().await;
}
