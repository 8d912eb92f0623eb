//! The `subscription-service` binary moving durable subscription queues between two Artemis broker emulators
//! (pods b-0 and b-1 of topic `news`'s cluster), as an operator would check it: what each broker holds
//! afterwards, the exit code of `--once`, `/readyz` and `/metrics`, and a SIGKILL in the middle of a move.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use maas_amqp::artemis::RoutingType;
use maas_e2e::support::http_get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_moves_a_subscription_and_its_100_messages_to_the_topics_new_pod_in_order() {
    let (b0, b1) = two_brokers().await;
    let dir = workdir();
    let brokers = dir.path().join("brokers.json");
    // b-0 drains: the topic's pod is b-1.
    brokers_file(&brokers, &b0, &b1, Some("b-0"));
    create_subscription(&b0, "sub1").await;
    publish(&b0, "news::sub1", 0..100).await;
    // A client-made durable subscription with nothing in it, and a queue that is no subscription: the first
    // moves (and leaves b-0), the second stays.
    create_queue(&b0, "client-1.sub2", TOPIC, RoutingType::Multicast, None).await;
    create_queue(&b0, "orders", "orders", RoutingType::Anycast, None).await;
    publish(&b0, "orders", 0..3).await;
    assert_eq!(seqs(&b0, "sub1").len(), 100);

    let out = output(command(dir.path(), &brokers, &["--once"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    let q0 = b0.queues();
    assert!(!q0.contains_key("sub1"), "gone from b-0");
    assert!(!q0.contains_key("client-1.sub2"), "gone from b-0");
    assert_eq!(
        q0["orders"].messages, 3,
        "a queue is no subscription: untouched"
    );
    let q1 = b1.queues();
    let s = &q1["sub1"];
    assert_eq!(
        (s.address.as_str(), s.durable, s.user.as_deref()),
        (TOPIC, true, Some(OWNER))
    );
    assert_eq!(q1["client-1.sub2"].user, None);
    let moved = b1.messages("sub1").unwrap();
    assert_eq!(
        moved.iter().map(seq_of).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>(),
        "every message, once, in order"
    );
    assert!(
        moved
            .iter()
            .all(|m| moved_from(m).as_deref() == Some("b-0/sub1")),
        "moved messages say where they came from"
    );

    // Again: nothing to move, exit 0, nothing written.
    b0.reset_counters();
    b1.reset_counters();
    let out = output(command(dir.path(), &brokers, &["--once"])).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!((b0.counters().writes, b1.counters().writes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_fails_with_one_line_naming_the_broker_it_cannot_reach() {
    let (b0, b1) = two_brokers().await;
    let dir = workdir();
    let brokers = dir.path().join("brokers.json");
    brokers_file(&brokers, &b0, &b1, Some("b-0"));
    b0.stop().await;
    let out = output(command(
        dir.path(),
        &brokers,
        &["--once", "--broker-request-timeout", "2s"],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.starts_with("subscription-service: not every durable subscription is on its topic's pod: broker b-0:"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_midway_loses_nothing_and_the_restart_finishes_it() {
    const N: u64 = 5000;
    let (b0, b1) = two_brokers().await;
    let dir = workdir();
    let brokers = dir.path().join("brokers.json");
    brokers_file(&brokers, &b0, &b1, Some("b-0"));
    create_subscription(&b0, "sub1").await;
    publish(&b0, "news::sub1", 0..N).await;

    let mut c = command(
        dir.path(),
        &brokers,
        &["--move-window", "50", "--interval", "1s"],
    );
    c.stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    // Kill it with SIGKILL once part of the queue is on b-1.
    let started = Instant::now();
    let (on_b1, left_on_b0) = loop {
        let n1 = b1.messages("sub1").map_or(0, |m| m.len());
        if n1 >= 200 {
            child.kill().unwrap();
            let n0 = b0.messages("sub1").map_or(0, |m| m.len());
            break (n1, n0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the move did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.wait();
    assert!(
        left_on_b0 > 0,
        "killed in the middle of the move: {on_b1} on b-1, {left_on_b0} still on b-0"
    );
    // The killed process's connections drop: what it had not settled goes back to b-0's queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now_b0 = seqs(&b0, "sub1");
    let now_b1 = seqs(&b1, "sub1");
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for s in now_b0.iter().chain(&now_b1) {
        *seen.entry(*s).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, N, "no message lost at the kill");

    // Restarted: it finishes the move.
    let out = output(command(dir.path(), &brokers, &["--once"])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!b0.queues().contains_key("sub1"));
    let all = seqs(&b1, "sub1");
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &all {
        *count.entry(*s).or_default() += 1;
    }
    assert_eq!(
        count.keys().copied().collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>(),
        "every message on the new pod at least once"
    );
    let duplicates = all.len() as u64 - N;
    println!(
        "killed with {on_b1} of {N} on b-1 and {left_on_b0} on b-0; after the restart {} messages on b-1, {duplicates} duplicate(s)",
        all.len()
    );
    // Only messages in flight at the kill (accepted by b-1, not yet settled on b-0) can come twice.
    assert!(
        duplicates <= 100,
        "{duplicates} duplicates for a window of 50"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_report_the_move_and_sigterm_stops_it_quickly() {
    let (b0, b1) = two_brokers().await;
    let dir = workdir();
    let brokers = dir.path().join("brokers.json");
    // Both pods up: the subscription sits on the topic's pod, wherever that is.
    brokers_file(&brokers, &b0, &b1, None);
    let home = home_of_news(&b0, &b1);
    let (home_b, other_b) = if home == "b-0" {
        (&b0, &b1)
    } else {
        (&b1, &b0)
    };
    create_subscription(home_b, "sub1").await;
    publish(home_b, "news::sub1", 0..20).await;

    let mut c = command(dir.path(), &brokers, &["--interval", "200ms"]);
    c.env("RUST_LOG", "info");
    let (mut child, port) = spawn_with_http_port(c);
    let ready = |want: &str| {
        let want = want.to_string();
        async move {
            let started = Instant::now();
            loop {
                if let Some((200, body)) = http_get(port, "/readyz")
                    && body.contains(&want)
                {
                    return body;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "not ready with {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    ready("1 durable subscription(s) on their topics' pods").await;
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);

    // The topic's pod drains: the next pass copies the subscription to the other pod and releases the pod; the old
    // queue stays for the grace (the router may still route there), then is swept.
    brokers_file(&brokers, &b0, &b1, Some(home));
    let started = Instant::now();
    let waiting = loop {
        if let Some((503, body)) = http_get(port, "/readyz")
            && body.contains(&format!(
                "released {home}: 1 old subscription queue(s) kept there"
            ))
        {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the release was not reported"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(waiting.contains("swept in"), "{waiting}");
    let body = ready(&format!(
        "1 durable subscription(s) on their topics' pods; moved 1 queue(s) with 0 message(s) in the last pass; released {home}"
    ))
    .await;
    assert!(body.starts_with("ready"), "{body}");
    assert_eq!(seqs(other_b, "sub1"), (0..20).collect::<Vec<_>>());
    assert!(!home_b.queues().contains_key("sub1"));
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for line in [
        "maas_subscription_service_moves_total{result=\"ok\"} 1",
        "maas_subscription_service_sweeps_total{result=\"ok\"} 1",
        "maas_subscription_service_messages_moved_total 20",
        "maas_subscription_service_subscriptions{state=\"in-place\"} 1",
        "maas_subscription_service_subscriptions{state=\"waiting\"} 0",
        "maas_subscription_service_move_duration_seconds_count 1",
        "maas_subscription_service_releases_total 1",
        "maas_subscription_service_released_pods 1",
        "maas_subscription_service_broker_operations_total{operation=\"destroyQueue\",result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // SIGTERM: exit 0 within a few seconds.
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_move_exits_quickly_and_loses_nothing() {
    const N: u64 = 5000;
    let (b0, b1) = two_brokers().await;
    let dir = workdir();
    let brokers = dir.path().join("brokers.json");
    brokers_file(&brokers, &b0, &b1, Some("b-0"));
    create_subscription(&b0, "sub1").await;
    publish(&b0, "news::sub1", 0..N).await;
    let mut c = command(dir.path(), &brokers, &["--move-window", "50"]);
    c.stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let started = Instant::now();
    while b1.messages("sub1").map_or(0, |m| m.len()) < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the move did not start"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stopping = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    let on_b0 = seqs(&b0, "sub1");
    let on_b1 = seqs(&b1, "sub1");
    assert!(
        !on_b0.is_empty(),
        "abandoned in the middle: the old queue stays"
    );
    let mut all: Vec<u64> = on_b0.iter().chain(&on_b1).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "nothing lost");
    assert_eq!(
        b0.queues()["sub1"].delivering,
        0,
        "nothing left unsettled on the old pod"
    );
}
