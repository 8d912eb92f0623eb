//! config-service in-process with fe2o3 clients on 127.0.0.1: snapshots per source, kubelet-style edits, unchanged
//! content, unknown sources, podsense selectors, a stuck subscriber, connect/disconnect cycles, SASL, limits and
//! shutdown.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use config_service::Args;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{FilterSet, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Session};

type Conn = ConnectionHandle<()>;
type Sess = SessionHandle<()>;
mod common;
use common::Svc;

const TIMEOUT: Duration = Duration::from_secs(5);

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const FLAVORS: &str = r#"{"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"}}"#;

impl Svc {
    async fn start_with(edit: impl FnOnce(&mut Args, &Path)) -> Svc {
        let initial = files(&[
            (
                "json",
                r#"{"q1": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"}}"#,
            ),
            ("flavor.json", FLAVORS),
        ]);
        Svc::start_in(&initial, edit).await
    }

    async fn start() -> Svc {
        Self::start_with(|_, _| {}).await
    }
}

async fn connect(url: &str) -> (Conn, Sess) {
    connect_as(url, SaslProfile::Anonymous).await.unwrap()
}

async fn connect_as(url: &str, sasl: SaslProfile) -> Result<(Conn, Sess), String> {
    let mut c = tokio::time::timeout(
        TIMEOUT,
        Connection::builder()
            .container_id("test-client")
            .sasl_profile(sasl)
            .open(url),
    )
    .await
    .map_err(|_| "open timed out".to_string())?
    .map_err(|e| format!("{e:?}"))?;
    let s = tokio::time::timeout(TIMEOUT, Session::begin(&mut c))
        .await
        .map_err(|_| "begin timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    Ok((c, s))
}

async fn subscribe(
    session: &mut Sess,
    address: &str,
    filter: &[(&str, &str)],
    credit: CreditMode,
) -> Result<Receiver, String> {
    let mut source = Source::builder().address(address.to_string());
    if !filter.is_empty() {
        let mut set = FilterSet::new();
        for (k, v) in filter {
            set.insert(Symbol::from(*k), Value::String(v.to_string()));
        }
        source = source.filter(set);
    }
    tokio::time::timeout(
        TIMEOUT,
        Receiver::builder()
            .name(format!("test-{address}-{}", rand_suffix()))
            .source(source.build())
            .credit_mode(credit)
            .auto_accept(true)
            .attach(session),
    )
    .await
    .map_err(|_| "attach timed out".to_string())?
    .map_err(|e| format!("{e:?}"))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// (subject, content type, body) of the next message.
async fn next(r: &mut Receiver) -> (String, String, String) {
    next_within(r, TIMEOUT).await.expect("no snapshot in time")
}

async fn next_within(r: &mut Receiver, within: Duration) -> Option<(String, String, String)> {
    let d = tokio::time::timeout(within, r.recv::<String>())
        .await
        .ok()?
        .unwrap();
    let props = d.message().properties.clone().unwrap();
    Some((
        props.subject.unwrap_or_default(),
        props.content_type.map(|s| s.0).unwrap_or_default(),
        d.body().clone(),
    ))
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[tokio::test]
async fn initial_snapshots_per_source_with_subject_content_type_and_body() {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;

    let mut r = subscribe(&mut s, "v1/addresses", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let (subject, ct, body) = next(&mut r).await;
    assert_eq!(subject, "enmasse.io/v1/AddressList");
    assert_eq!(ct, "application/json");
    let v = json(&body);
    assert_eq!(v["apiVersion"], "enmasse.io/v1");
    assert_eq!(v["kind"], "AddressList");
    assert_eq!(v["items"][0]["spec"]["address"], "q1");
    assert_eq!(v["items"][0]["spec"]["type"], "queue");
    assert_eq!(v["items"][0]["spec"]["flavor"], "vanilla-queue");

    let mut r2 = subscribe(&mut s, "maas", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let (subject, ct, body) = next(&mut r2).await;
    assert_eq!(subject, "maas.io/v1/AddressConfig");
    assert_eq!(ct, "application/json");
    assert_eq!(
        json(&body),
        serde_json::json!({"q1": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"}})
    );

    let mut r3 = subscribe(&mut s, "v1/flavors", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let (_, ct, body) = next(&mut r3).await;
    assert_eq!(ct, "application/json");
    assert_eq!(json(&body)["vanilla-queue"]["type"], "queue");

    assert!(svc.r().health.is_ready());
    assert_eq!(svc.r().metrics.subscribers("v1/addresses"), 1);
    drop((r, r2, r3));
    let _ = s.end().await;
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test]
async fn kubelet_edit_sends_a_new_full_snapshot_and_unchanged_content_sends_none() {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut r = subscribe(&mut s, "v1/addresses", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let _ = next(&mut r).await;

    svc.writer
        .write(&files(&[
            (
                "json",
                r#"{"q1": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"},
                    "b1": {"store_and_forward": false, "multicast": true}}"#,
            ),
            ("flavor.json", FLAVORS),
        ]))
        .unwrap();
    let (_, _, body) = next(&mut r).await;
    let v = json(&body);
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["address"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{body}");
    assert!(names.contains(&"b1") && names.contains(&"q1"), "{body}");

    // Same content rewritten the kubelet way (new timestamped dir, ..data swapped): nothing is sent.
    let sent = svc.r().metrics.snapshots_sent("v1/addresses");
    svc.writer
        .write(&files(&[
            (
                "json",
                r#"{"q1": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"},
                    "b1": {"store_and_forward": false, "multicast": true}}"#,
            ),
            ("flavor.json", FLAVORS),
        ]))
        .unwrap();
    assert!(
        next_within(&mut r, Duration::from_millis(1200))
            .await
            .is_none()
    );
    assert_eq!(svc.r().metrics.snapshots_sent("v1/addresses"), sent);

    // A bad edit keeps the last good set: nothing is sent either.
    svc.writer
        .write(&files(&[("json", "{not json"), ("flavor.json", FLAVORS)]))
        .unwrap();
    assert!(
        next_within(&mut r, Duration::from_millis(1200))
            .await
            .is_none()
    );
    drop(r);
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test]
async fn unknown_source_is_closed_with_not_found_naming_it() {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let err = match subscribe(&mut s, "no/such/source", &[], CreditMode::Auto(10)).await {
        Err(e) => e,
        Ok(mut r) => format!(
            "{:?}",
            tokio::time::timeout(TIMEOUT, r.recv::<String>())
                .await
                .unwrap()
                .unwrap_err()
        ),
    };
    assert!(err.contains("NotFound"), "{err}");
    assert!(err.contains("no/such/source"), "{err}");
    // The connection keeps working (a new session: fe2o3's client may still hold the refused link's handle).
    let mut s2 = Session::begin(&mut c).await.unwrap();
    let mut r = subscribe(&mut s2, "maas", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let _ = next(&mut r).await;
    let _ = c.close().await;
    svc.stop().await;
}

fn pod(name: &str, app: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "host": "10.0.0.1", "phase": "Running", "ready": true,
        "ports": {"broker": {"amqp": 5672}}, "labels": {"app": app}})
}

#[tokio::test]
async fn podsense_filters_by_label_selector_and_sends_only_when_the_selection_changes() {
    let svc = Svc::start_with(|args, dir| {
        let p = dir.join("pods");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("pods.json"),
            serde_json::json!([pod("b-0", "broker"), pod("r-0", "router")]).to_string(),
        )
        .unwrap();
        args.pods_file = Some(p.join("pods.json"));
    })
    .await;
    let pods_file = svc.dir().join("pods/pods.json");
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut brokers = subscribe(
        &mut s,
        "podsense",
        &[("app", "broker")],
        CreditMode::Auto(10),
    )
    .await
    .unwrap();
    let mut all = subscribe(&mut s, "podsense", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let (subject, ct, body) = next(&mut brokers).await;
    assert_eq!(
        (subject.as_str(), ct.as_str()),
        ("maas.io/v1/PodList", "application/json")
    );
    let v = json(&body);
    assert_eq!(v.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v[0]["name"], "b-0");
    assert_eq!(v[0]["host"], "10.0.0.1");
    assert_eq!(v[0]["phase"], "Running");
    assert_eq!(v[0]["ready"], true);
    assert_eq!(v[0]["ports"]["broker"]["amqp"], 5672);
    assert_eq!(json(&next(&mut all).await.2).as_array().unwrap().len(), 2);

    // A router pod changes: the broker selector's view is unchanged (nothing sent), the full view changes.
    std::fs::write(
        &pods_file,
        serde_json::json!([pod("b-0", "broker"), pod("r-1", "router")]).to_string(),
    )
    .unwrap();
    let (_, _, body) = next(&mut all).await;
    assert!(body.contains("r-1"), "{body}");
    assert!(
        next_within(&mut brokers, Duration::from_millis(800))
            .await
            .is_none()
    );
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test]
async fn a_stuck_subscriber_does_not_delay_the_others_and_ends_on_the_latest() {
    let svc = Svc::start().await;
    let (mut c1, mut s1) = connect(&svc.url()).await;
    let mut stuck = subscribe(&mut s1, "v1/addresses", &[], CreditMode::Manual)
        .await
        .unwrap();
    let (mut c2, mut s2) = connect(&svc.url()).await;
    let mut fast = subscribe(&mut s2, "v1/addresses", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let _ = next(&mut fast).await;
    for i in 0..5 {
        let started = Instant::now();
        svc.writer
            .write(&files(&[
                (
                    "json",
                    &format!(r#"{{"a{i}": {{"store_and_forward": false, "multicast": false}}}}"#),
                ),
                ("flavor.json", FLAVORS),
            ]))
            .unwrap();
        let (_, _, body) = next(&mut fast).await;
        assert!(body.contains(&format!("a{i}")), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "slow: {:?}",
            started.elapsed()
        );
    }
    // The stuck one got nothing; once it grants credit it gets a snapshot and ends on the latest (a4).
    assert!(
        next_within(&mut stuck, Duration::from_millis(200))
            .await
            .is_none()
    );
    stuck.set_credit(10).await.unwrap();
    let mut last = next(&mut stuck).await.2;
    while let Some((_, _, b)) = next_within(&mut stuck, Duration::from_millis(500)).await {
        last = b;
    }
    assert!(last.contains("a4"), "{last}");
    let _ = c1.close().await;
    let _ = c2.close().await;
    svc.stop().await;
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_cycles_do_not_leak_subscribers() {
    let svc = Svc::start().await;
    for i in 0..200 {
        let (mut c, mut s) = connect(&svc.url()).await;
        let mut r = subscribe(&mut s, "v1/addresses", &[], CreditMode::Auto(10))
            .await
            .unwrap();
        let _ = next(&mut r).await;
        if i % 2 == 0 {
            // Polite: close the connection.
            let _ = c.close().await;
        } else {
            // Abrupt: drop everything (TCP goes away).
            drop((r, s, c));
        }
    }
    wait_for("subscribers gauge back to 0", || {
        svc.r().metrics.subscribers("v1/addresses") == 0
    })
    .await;
    let metrics = scrape(svc.r().http_addr).await;
    assert!(
        metrics.contains("maas_config_service_connections 0"),
        "{metrics}"
    );
    svc.stop().await;
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut deadline = 50;
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        // The connection gauge may lag the close by a moment.
        if out.contains("maas_config_service_connections 0") || deadline == 0 {
            return out;
        }
        deadline -= 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sasl_plain_accepts_right_credentials_and_rejects_wrong_ones_and_anonymous() {
    let svc = Svc::start_with(|args, dir| {
        let users = dir.join("users");
        std::fs::write(&users, "# test users\nalice:wonder land\n").unwrap();
        args.users_file = Some(users);
        args.sasl_mechanisms = vec!["PLAIN".into()];
    })
    .await;
    let plain = |u: &str, p: &str| SaslProfile::Plain {
        username: u.into(),
        password: p.into(),
    };
    let (mut c, mut s) = connect_as(&svc.url(), plain("alice", "wonder land"))
        .await
        .unwrap();
    let mut r = subscribe(&mut s, "v1/addresses", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let _ = next(&mut r).await;
    let err = connect_as(&svc.url(), plain("alice", "wrong"))
        .await
        .unwrap_err();
    assert!(err.contains("Auth") || err.contains("auth"), "{err}");
    let err = connect_as(&svc.url(), SaslProfile::Anonymous)
        .await
        .unwrap_err();
    // Only PLAIN is offered, so the client cannot even pick ANONYMOUS.
    assert!(err.contains("ANONYMOUS"), "{err}");
    // Still serving after the failures.
    let (mut c2, _s2) = connect_as(&svc.url(), plain("alice", "wonder land"))
        .await
        .unwrap();
    let _ = c2.close().await;
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test]
async fn limits_are_refused_with_resource_limit_exceeded() {
    let svc = Svc::start_with(|args, _| {
        args.max_connections = 1;
        args.max_links_per_connection = 1;
    })
    .await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut r = subscribe(&mut s, "v1/addresses", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let _ = next(&mut r).await;
    // Second link on the same connection.
    let err = match subscribe(&mut s, "maas", &[], CreditMode::Auto(10)).await {
        Err(e) => e,
        Ok(mut r2) => format!(
            "{:?}",
            tokio::time::timeout(TIMEOUT, r2.recv::<String>())
                .await
                .unwrap()
                .unwrap_err()
        ),
    };
    assert!(err.contains("ResourceLimitExceeded"), "{err}");
    assert!(err.contains("link limit"), "{err}");
    // Second connection.
    let err = match connect_as(&svc.url(), SaslProfile::Anonymous).await {
        Err(e) => e,
        Ok((mut c2, mut s2)) => {
            let attached = subscribe(&mut s2, "maas", &[], CreditMode::Auto(10)).await;
            let closed = tokio::time::timeout(TIMEOUT, c2.on_close()).await;
            format!("{attached:?} {closed:?}")
        }
    };
    assert!(err.contains("ResourceLimitExceeded"), "{err}");
    assert!(err.contains("connection limit"), "{err}");
    let _ = c.close().await;
    svc.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_returns_quickly() {
    let svc = Svc::start().await;
    let (mut c, mut s) = connect(&svc.url()).await;
    let mut r = subscribe(&mut s, "v1/addresses", &[], CreditMode::Auto(10))
        .await
        .unwrap();
    let _ = next(&mut r).await;
    let mut stuck = subscribe(&mut s, "maas", &[], CreditMode::Manual)
        .await
        .unwrap();
    let took = svc.stop().await;
    assert!(took < Duration::from_secs(4), "{took:?}");
    // The client sees its connection end.
    assert!(
        tokio::time::timeout(TIMEOUT, r.recv::<String>())
            .await
            .unwrap()
            .is_err()
    );
    let _ = stuck.set_credit(1).await;
    let _ = c.close().await;
}

#[tokio::test]
async fn invalid_configuration_is_one_clear_line() {
    let err = config_service::run(Args::for_dir("/nonexistent/maas-cfg"), async {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent/maas-cfg"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    let mut args = Args::for_dir("/tmp");
    args.sasl_mechanisms = vec!["PLAIN".into()];
    let text = config_service::run(args, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("users file"), "{text}");
    // --kube without any cluster configuration (no in-cluster service account, no kubeconfig): one line saying so.
    // Skipped where this machine does have a cluster configuration.
    let home_config =
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"));
    let has_cluster = std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || home_config.is_some_and(|p| p.exists());
    if !has_cluster {
        let mut args = Args::for_dir("/tmp");
        args.addresses_dir = None;
        args.kube = true;
        args.namespace = Some("ns".into());
        let text = config_service::run(args, async {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("--kube") && text.contains("KUBECONFIG"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }
}
