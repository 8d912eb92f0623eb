//! The snapshot subscriber (`maas_amqp::subscriber`) in incremental mode (docs/architecture.md §3 "Incremental
//! mode"), against a scripted source on `maas_amqp::server`: the link carries the capability `maas:delta`; every
//! delta reaches a busy consumer (none is skipped like a superseded snapshot); a missed delta, too many undelivered
//! ones, or the consumer asking re-attach the link for a full snapshot, so the consumer always sees a clean chain.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::server::{IncomingLink, LinkHandler, Server, ServerOptions};
use maas_amqp::subscriber::{
    MAX_PENDING_DELTA_BYTES, MAX_PENDING_DELTAS, SnapshotMessage, SourceLink, SubscriberEvent,
    SubscriberHandle, Subscription, asks_for_delta, source_message, spawn_subscriber_with_handle,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One scripted message: body, generation, follows (a delta when set).
#[derive(Debug, Clone)]
struct Msg {
    body: String,
    generation: Option<u64>,
    follows: Option<u64>,
}

fn snap(generation: u64) -> Msg {
    Msg {
        body: format!("snapshot {generation}"),
        generation: Some(generation),
        follows: None,
    }
}

fn delta(follows: u64, generation: u64) -> Msg {
    Msg {
        body: format!("delta {follows}->{generation}"),
        generation: Some(generation),
        follows: Some(follows),
    }
}

/// What one attach looked like.
#[derive(Debug, Clone)]
struct Attached {
    source: String,
    name: String,
    delta: bool,
}

/// Sends, on the k-th attach of a source, the k-th script of that source (the last one again beyond), then keeps
/// the link open until the peer detaches it.
#[derive(Clone)]
struct Scripted {
    scripts: Arc<Vec<(String, Vec<Vec<Msg>>)>>,
    attached: Arc<Mutex<Vec<Attached>>>,
}

impl Scripted {
    fn attaches(&self, source: &str) -> Vec<Attached> {
        self.attached
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.source == source)
            .cloned()
            .collect()
    }
}

impl LinkHandler for Scripted {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let source = link.source_address().unwrap_or_default();
        let delta = asks_for_delta(&link);
        let Some(scripts) = self
            .scripts
            .iter()
            .find(|(s, _)| *s == source)
            .map(|(_, v)| v.clone())
        else {
            return;
        };
        let nth = {
            let mut attached = self.attached.lock().unwrap();
            let nth = attached.iter().filter(|a| a.source == source).count();
            attached.push(Attached {
                source: source.clone(),
                name: link.name().to_string(),
                delta,
            });
            nth
        };
        let script = scripts
            .get(nth)
            .or(scripts.last())
            .cloned()
            .unwrap_or_default();
        let mut accepted = link.accept_sender().await.unwrap();
        let tracker = accepted.tracker.clone();
        tracker.spawn(async move {
            let scope = accepted.scope.clone();
            for m in script {
                let subject = if m.follows.is_some() {
                    "maas.io/v1/AddressDelta"
                } else {
                    "enmasse.io/v1/AddressList"
                };
                let message = source_message(subject, m.body, m.generation, m.follows);
                tokio::select! {
                    () = scope.cancelled() => return,
                    r = accepted.sender.send(message) => if r.is_err() { return },
                }
            }
            tokio::select! {
                () = scope.cancelled() => {}
                _ = accepted.sender.on_detach() => {}
            }
            let _ = accepted.sender.close().await;
        });
    }
}

struct Running {
    scripted: Scripted,
    events: mpsc::Receiver<SubscriberEvent>,
    handle: SubscriberHandle,
    shutdown: CancellationToken,
    stop: CancellationToken,
}

impl Running {
    async fn next(&mut self) -> SubscriberEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("an event within 10 s")
            .expect("subscriber running")
    }

    async fn message(&mut self) -> (usize, SnapshotMessage) {
        loop {
            match self.next().await {
                SubscriberEvent::Message { index, message } => return (index, message),
                SubscriberEvent::Connected => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Every message that arrives until none has for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<(usize, SnapshotMessage)> {
        let mut out = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(quiet, self.events.recv()).await {
            if let SubscriberEvent::Message { index, message } = e {
                out.push((index, message));
            }
        }
        out
    }

    fn stop(self) {
        self.shutdown.cancel();
        self.stop.cancel();
    }
}

async fn start(scripts: Vec<(&str, Vec<Vec<Msg>>)>, links: Vec<SourceLink>) -> Running {
    let scripted = Scripted {
        scripts: Arc::new(
            scripts
                .into_iter()
                .map(|(s, v)| (s.to_string(), v))
                .collect(),
        ),
        attached: Arc::default(),
    };
    let server = Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ServerOptions::new("scripted"),
        scripted.clone(),
    )
    .await
    .unwrap();
    let port = server.local_addr().port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(server.serve(async move { s.cancelled().await }));
    let shutdown = CancellationToken::new();
    let (events, handle) = spawn_subscriber_with_handle(
        ConnectOptions::new("127.0.0.1", port),
        links,
        Backoff::default(),
        shutdown.clone(),
    );
    let mut running = Running {
        scripted,
        events,
        handle,
        shutdown,
        stop,
    };
    assert_eq!(running.next().await, SubscriberEvent::Connected);
    running
}

/// Each delta follows the message before it, and the first message (and every one that does not follow) is a full
/// snapshot.
fn assert_clean_chain(got: &[SnapshotMessage]) {
    let mut last: Option<u64> = None;
    for m in got {
        match m.follows {
            None => assert!(m.generation.is_some(), "{m:?}"),
            Some(f) => assert_eq!(Some(f), last, "delta does not follow: {got:#?}"),
        }
        last = m.generation;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_consumer_gets_every_delta_in_order_and_plain_links_stay_latest_only() {
    let mut deltas = vec![snap(1)];
    deltas.extend((1..=200).map(|g| delta(g, g + 1)));
    let plain: Vec<Msg> = (1..=20)
        .map(|g| Msg {
            body: format!("plain {g}"),
            generation: None,
            follows: None,
        })
        .collect();
    let mut r = start(
        vec![("v1/addresses", vec![deltas]), ("v1/flavors", vec![plain])],
        vec![
            Subscription::new("v1/addresses").incremental(),
            Subscription::new("v1/flavors").into(),
        ],
    )
    .await;
    // The consumer is busy while everything is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = r.drain(Duration::from_millis(500)).await;
    let addresses: Vec<SnapshotMessage> = got
        .iter()
        .filter(|(i, _)| *i == 0)
        .map(|(_, m)| m.clone())
        .collect();
    let flavors: Vec<&SnapshotMessage> = got
        .iter()
        .filter(|(i, _)| *i == 1)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(addresses.len(), 201, "every delta kept: {addresses:#?}");
    assert_eq!(addresses[0].body, "snapshot 1");
    assert!(!addresses[0].is_delta());
    assert!(addresses[1].is_delta());
    assert_eq!(
        addresses[1].subject.as_deref(),
        Some("maas.io/v1/AddressDelta")
    );
    assert_eq!(addresses.last().unwrap().generation, Some(201));
    assert_clean_chain(&addresses);
    assert_eq!(
        flavors.last().unwrap().body,
        "plain 20",
        "ends on the latest"
    );
    assert!(
        flavors.len() <= 3,
        "plain link keeps only the latest: {flavors:?}"
    );
    assert_eq!(r.handle.resyncs(), 0);
    let a = r.scripted.attaches("v1/addresses");
    let f = r.scripted.attaches("v1/flavors");
    assert!(a.len() == 1 && a[0].delta, "{a:?}");
    assert!(f.len() == 1 && !f[0].delta, "{f:?}");
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_delta_reattaches_the_link_for_a_full_snapshot() {
    let mut r = start(
        vec![(
            "v1/addresses",
            vec![
                vec![snap(1), delta(1, 2), delta(3, 4)], // 2 -> 3 is missing
                vec![snap(4), delta(4, 5)],
            ],
        )],
        vec![Subscription::new("v1/addresses").incremental()],
    )
    .await;
    let mut got = Vec::new();
    while got
        .last()
        .is_none_or(|m: &SnapshotMessage| m.body != "delta 4->5")
    {
        got.push(r.message().await.1);
    }
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    // The new link's full snapshot replaces what the consumer had not taken yet of the old one (a consumer slower
    // than the re-attach sees less of it), never anything after it.
    let (old, new) = bodies.split_at(bodies.len() - 2);
    assert_eq!(new, ["snapshot 4", "delta 4->5"], "{bodies:?}");
    assert!(["snapshot 1", "delta 1->2"].starts_with(old), "{bodies:?}");
    assert_clean_chain(&got);
    assert_eq!(r.handle.resyncs(), 1);
    let a = r.scripted.attaches("v1/addresses");
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a.iter().all(|x| x.delta));
    assert_ne!(a[0].name, a[1].name, "a fresh link name per attach");
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_undelivered_deltas_are_dropped_for_a_full_snapshot() {
    // By count: more deltas than the bound while the consumer is busy.
    let n = MAX_PENDING_DELTAS as u64 + 200;
    let mut first = vec![snap(1)];
    first.extend((1..=n).map(|g| delta(g, g + 1)));
    let mut r = start(
        vec![("v1/addresses", vec![first, vec![snap(n + 1)]])],
        vec![Subscription::new("v1/addresses").incremental()],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got: Vec<SnapshotMessage> = r
        .drain(Duration::from_millis(500))
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_clean_chain(&got);
    assert!(
        got.len() < 10,
        "dropped, not queued: {} messages",
        got.len()
    );
    assert_eq!(got.last().unwrap().body, format!("snapshot {}", n + 1));
    assert!(r.handle.resyncs() >= 1);
    r.stop();

    // By bytes: a few large deltas exceed the byte bound.
    let big = 512 * 1024;
    let count = (MAX_PENDING_DELTA_BYTES / big) as u64 + 4;
    let mut first = vec![snap(1)];
    first.extend((1..=count).map(|g| Msg {
        body: format!("{g}:{}", "x".repeat(big)),
        generation: Some(g + 1),
        follows: Some(g),
    }));
    let mut r = start(
        vec![("v1/addresses", vec![first, vec![snap(count + 1)]])],
        vec![Subscription::new("v1/addresses").incremental()],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got: Vec<SnapshotMessage> = r
        .drain(Duration::from_millis(500))
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_clean_chain(&got);
    let held: usize = got.iter().map(|m| m.body.len()).sum();
    assert!(held <= MAX_PENDING_DELTA_BYTES + big, "held {held} bytes");
    assert_eq!(got.last().unwrap().body, format!("snapshot {}", count + 1));
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_can_ask_for_a_full_snapshot_again() {
    let mut r = start(
        vec![(
            "v1/addresses",
            vec![vec![snap(1), delta(1, 2)], vec![snap(7)]],
        )],
        vec![Subscription::new("v1/addresses").incremental()],
    )
    .await;
    assert_eq!(r.message().await.1.body, "snapshot 1");
    assert_eq!(r.message().await.1.body, "delta 1->2");
    r.handle.resync(0);
    let (index, m) = r.message().await;
    assert_eq!((index, m.body.as_str()), (0, "snapshot 7"));
    assert_eq!(r.handle.resyncs(), 1);
    assert_eq!(r.scripted.attaches("v1/addresses").len(), 2);
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_before_any_snapshot_drops_the_connection() {
    let mut r = start(
        vec![("v1/addresses", vec![vec![delta(1, 2)]])],
        vec![Subscription::new("v1/addresses").incremental()],
    )
    .await;
    match r.next().await {
        SubscriberEvent::Disconnected { reason } => {
            assert!(reason.contains("before any full snapshot"), "{reason}")
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    r.stop();
}
