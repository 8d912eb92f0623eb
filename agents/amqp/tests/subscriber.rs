//! The snapshot subscriber (`maas_amqp::subscriber`) keeps only the LATEST snapshot of each source while its
//! consumer is busy: a source that sends 200 snapshots of 100 KB to a consumer that reads nothing for a while
//! leaves it with the newest one, not a queue of them (memory stays bounded by about one snapshot per source).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{AmqpValue, Message};
use fe2o3_amqp::types::primitives::Value;
use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::server::{IncomingLink, LinkHandler, Server, ServerOptions};
use maas_amqp::subscriber::{SubscriberEvent, Subscription, spawn_subscriber};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const SNAPSHOTS: usize = 200;

/// Sends SNAPSHOTS snapshots `<n>:<100 KB>` on every attach, as fast as the credit allows.
struct Burst;

impl LinkHandler for Burst {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let mut accepted = link.accept_sender().await.unwrap();
        let tracker = accepted.tracker.clone();
        tracker.spawn(async move {
            let scope = accepted.scope.clone();
            let filler = "x".repeat(100_000);
            for n in 0..SNAPSHOTS {
                let m = Message::builder()
                    .body(AmqpValue(Value::String(format!("{n}:{filler}"))))
                    .build();
                tokio::select! {
                    () = scope.cancelled() => return,
                    r = accepted.sender.send(m) => if r.is_err() { return },
                }
            }
            scope.cancelled().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_consumer_gets_the_latest_snapshot_not_a_queue_of_them() {
    let server = Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ServerOptions::new("burst"),
        Burst,
    )
    .await
    .unwrap();
    let port = server.local_addr().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let shutdown = CancellationToken::new();
    let mut events = spawn_subscriber(
        ConnectOptions::new("127.0.0.1", port),
        vec![Subscription::new("snapshots")],
        Backoff::default(),
        shutdown.clone(),
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap(),
        Some(SubscriberEvent::Connected)
    );
    // The consumer is busy while every snapshot is sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = Vec::new();
    while let Ok(Some(SubscriberEvent::Message { message, .. })) =
        tokio::time::timeout(Duration::from_millis(500), events.recv()).await
    {
        let n: usize = message.body.split(':').next().unwrap().parse().unwrap();
        got.push(n);
    }
    assert_eq!(
        got.last(),
        Some(&(SNAPSHOTS - 1)),
        "ends on the latest: {got:?}"
    );
    assert!(
        got.len() <= 3,
        "only the latest was kept (one waiting in the event channel at most): {got:?}"
    );
    shutdown.cancel();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}
