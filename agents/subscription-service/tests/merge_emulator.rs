//! The `subscription-service` binary merging the durable subscription queues one client made through two routers
//! (`router-0.sub1@c1`, `router-1.sub1@c1`) on the topic's pod, against two Artemis broker emulators: what the
//! broker holds afterwards, `--once`'s exit code, `/readyz` and `/metrics`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use maas_amqp::artemis::RoutingType;
use maas_e2e::broker::BrokerEmulator;
use maas_e2e::support::http_get;

/// The routers file: router ids `router-0` and `router-1` (names only, as edge routers may be listed).
fn routers_file(dir: &Path) -> String {
    let path = dir.join("routers.json");
    std::fs::write(
        &path,
        r#"[{"name": "router-0"}, {"name": "router-1", "host": "10.0.0.2", "port": 55672}]"#,
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// On `b` (the topic's pod): `router-0.sub1@c1` (made first, 50 messages 0..50), `router-1.sub1@c1` (made second,
/// 10 messages 50..60), and `unknown-router.sub1@c1` (made through a router that is not known, 5 messages).
async fn two_queues_of_one_client(b: &BrokerEmulator) {
    let client = |name: &'static str| async move {
        create_queue(b, name, TOPIC, RoutingType::Multicast, Some("maas")).await;
    };
    client("router-0.sub1@c1").await;
    client("router-1.sub1@c1").await;
    client("unknown-router.sub1@c1").await;
    publish(b, "news::router-0.sub1@c1", 0..50).await;
    publish(b, "news::router-1.sub1@c1", 50..60).await;
    publish(b, "news::unknown-router.sub1@c1", 100..105).await;
}

/// Two broker pods (keep both alive: the brokers file lists them), b-0 draining (so the topic's pod is b-1), with
/// [`two_queues_of_one_client`] on b-1, and the brokers file.
async fn merge_setup() -> (
    BrokerEmulator,
    BrokerEmulator,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let (b0, b1) = two_brokers().await;
    let dir = workdir();
    let brokers = dir.path().join("brokers.json");
    brokers_file(&brokers, &b0, &b1, Some("b-0"));
    two_queues_of_one_client(&b1).await;
    (b0, b1, dir, brokers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_merges_a_clients_queue_made_through_another_router_into_the_newer_one() {
    let (b0, b1, dir, brokers) = merge_setup().await;
    let routers = routers_file(dir.path());

    let out = output(command(
        dir.path(),
        &brokers,
        &["--once", "--routers-file", &routers],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    let q1 = b1.queues();
    assert!(
        !q1.contains_key("router-0.sub1@c1"),
        "the emptied source queue is deleted: {:?}",
        q1.keys()
    );
    let target = &q1["router-1.sub1@c1"];
    assert_eq!(
        (
            target.address.as_str(),
            target.durable,
            target.user.as_deref()
        ),
        (TOPIC, true, Some("maas")),
        "the target is the client's queue, untouched but for its messages"
    );
    let held = b1.messages("router-1.sub1@c1").unwrap();
    let got: Vec<u64> = held.iter().map(seq_of).collect();
    assert_eq!(got.len(), 60, "{got:?}");
    assert_eq!(
        got,
        (50..60).chain(0..50).collect::<Vec<_>>(),
        "its own 10 first, then the 50 of the other queue, once each, in order"
    );
    assert!(
        held[10..]
            .iter()
            .all(|m| moved_from(m).as_deref() == Some("b-1/router-0.sub1@c1")),
        "merged messages say where they came from"
    );
    assert!(held[..10].iter().all(|m| moved_from(m).is_none()));
    // A queue made through a router that is not known is never merged (its prefix cannot be told from its link).
    assert_eq!(
        seqs(&b1, "unknown-router.sub1@c1"),
        (100..105).collect::<Vec<_>>()
    );
    assert_eq!(
        topic_queues(&b0),
        Vec::<String>::new(),
        "nothing on the draining pod"
    );
    assert_eq!(
        topic_queues(&b1),
        ["router-1.sub1@c1", "unknown-router.sub1@c1"]
    );

    // Again: nothing to merge, nothing written.
    b0.reset_counters();
    b1.reset_counters();
    let out = output(command(
        dir.path(),
        &brokers,
        &["--once", "--routers-file", &routers],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!((b0.counters().writes, b1.counters().writes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_the_client_is_attached_to_takes_the_other_even_when_older() {
    let (_b0, b1, dir, brokers) = merge_setup().await;
    // The client is back through router-0 (listQueues shows a consumer on its queue).
    assert!(b1.set_consumers("router-0.sub1@c1", 1));
    let routers = routers_file(dir.path());
    let out = output(command(
        dir.path(),
        &brokers,
        &["--once", "--routers-file", &routers],
    ))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        topic_queues(&b1),
        ["router-0.sub1@c1", "unknown-router.sub1@c1"]
    );
    assert_eq!(seqs(&b1, "router-0.sub1@c1"), (0..60).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_router_ids_nothing_is_merged() {
    let (_b0, b1, dir, brokers) = merge_setup().await;
    // No --routers-file, no --kube, no config-service: no router id is known.
    let out = output(command(dir.path(), &brokers, &["--once"])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seqs(&b1, "router-0.sub1@c1").len(), 50);
    assert_eq!(seqs(&b1, "router-1.sub1@c1").len(), 10);
    assert_eq!(topic_queues(&b1).len(), 3);
}

/// The names of the queues bound to the topic on `b`.
fn topic_queues(b: &BrokerEmulator) -> Vec<String> {
    b.queues()
        .into_iter()
        .filter(|(_, q)| q.address == TOPIC)
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_report_the_merge() {
    let (_b0, b1, dir, brokers) = merge_setup().await;
    let routers = routers_file(dir.path());
    let mut c = command(
        dir.path(),
        &brokers,
        &["--interval", "2s", "--routers-file", &routers],
    );
    c.env("RUST_LOG", "info");
    let (mut child, port) = spawn_with_http_port(c);
    let started = Instant::now();
    let body = loop {
        if let Some((200, body)) = http_get(port, "/readyz")
            && body.contains("merged")
        {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no merge reported: {:?}",
            http_get(port, "/readyz")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        body.contains(
            "2 durable subscription(s) on their topics' pods; merged 1 client subscription queue(s) into the queue of the same subscription, with 50 message(s), in the last pass"
        ),
        "{body}"
    );
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    let want: BTreeMap<&str, &str> = BTreeMap::from([
        ("maas_subscription_service_merges_total{result=\"ok\"}", "1"),
        ("maas_subscription_service_router_ids", "2"),
        ("maas_subscription_service_messages_moved_total", "50"),
        (
            "maas_subscription_service_unmerged_subscriptions{reason=\"consumers\"}",
            "0",
        ),
        (
            "maas_subscription_service_broker_operations_total{operation=\"destroyQueue\",result=\"ok\"}",
            "1",
        ),
    ]);
    for (name, value) in want {
        assert!(
            metrics.contains(&format!("{name} {value}\n")),
            "{name} {value} missing:\n{metrics}"
        );
    }
    assert_eq!(seqs(&b1, "router-1.sub1@c1").len(), 60);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
