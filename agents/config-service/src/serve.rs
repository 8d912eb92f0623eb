//! The per-link decision and the subscriber tasks.
//!
//! A receiving link on `v1/addresses`, `maas` or `v1/flavors` gets the current snapshot at once (as soon as the
//! source is synced), then every newer one; `podsense` does the same with the pods matching the link's filter
//! map, compared per subscriber so an unrelated pod change sends nothing. Anything else is attached and closed
//! with `amqp:not-found` naming the address.
//!
//! One task per subscriber, pre-settled sends: a subscriber without credit waits alone (holding one `Arc`), the
//! others are not delayed. Each task ends when its link is detached, its session or connection ends, or the
//! server stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use fe2o3_amqp::types::definitions::AmqpError;
use maas_amqp::server::{AcceptedSender, IncomingLink, LinkHandler};
use maas_model::pods::PodInfo;
use tokio::sync::watch;
use tracing::debug;

use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, Snapshots, Source, podsense_body};

/// Decides what each incoming link gets.
#[derive(Debug, Clone)]
pub struct SnapshotHandler {
    /// The latest snapshots.
    pub snapshots: Snapshots,
    /// Subscriber and sent counters.
    pub metrics: Metrics,
}

impl LinkHandler for SnapshotHandler {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let address = link.source_address().unwrap_or_default();
        if !link.peer_receives() {
            let target = link.target_address().unwrap_or_default();
            link.refuse(
                AmqpError::NotAllowed,
                format!(
                    "config-service only sends: attach a receiving link (target {target:?} refused)"
                ),
            )
            .await;
            return;
        }
        let Some(source) = Source::from_address(&address) else {
            let description = if link.source_dynamic() {
                "config-service has no dynamic sources; attach to v1/addresses, maas, v1/flavors or podsense"
                    .to_string()
            } else {
                format!(
                    "no source {address:?} here; config-service serves v1/addresses, maas, v1/flavors and podsense"
                )
            };
            link.refuse(AmqpError::NotFound, description).await;
            return;
        };
        let connection = link.connection().id;
        match source {
            Source::Podsense => {
                let Some(pods) = self.snapshots.pods.clone() else {
                    link.refuse(
                        AmqpError::NotFound,
                        "no source \"podsense\" here: this config-service has no pod source (--pods-file or --kube)"
                            .to_string(),
                    )
                    .await;
                    return;
                };
                let selector = match link.filter_strings() {
                    Ok(s) => s,
                    Err(key) => {
                        link.refuse(
                            AmqpError::InvalidField,
                            format!(
                                "podsense: the filter map is a label selector; the value of {key:?} is not a string"
                            ),
                        )
                        .await;
                        return;
                    }
                };
                if let Some(accepted) = accept(link, source, connection).await {
                    let tracker = accepted.tracker.clone();
                    tracker.spawn(serve_podsense(
                        accepted,
                        pods,
                        selector,
                        self.metrics.clone(),
                    ));
                }
            }
            _ => {
                let Some(rx) = self.snapshots.of(source).cloned() else {
                    return;
                };
                if let Some(accepted) = accept(link, source, connection).await {
                    let tracker = accepted.tracker.clone();
                    tracker.spawn(serve_snapshots(accepted, rx, source, self.metrics.clone()));
                }
            }
        }
    }
}

/// Accepts `link` as our sender.
async fn accept(link: IncomingLink<'_>, source: Source, connection: u64) -> Option<AcceptedSender> {
    match link.accept_sender().await {
        Ok(accepted) => {
            debug!(connection, source = source.address(), "subscriber attached");
            Some(accepted)
        }
        Err(error) => {
            debug!(connection, source = source.address(), %error, "subscriber attach failed");
            None
        }
    }
}

/// Sends one snapshot; false when the link is gone.
async fn send(accepted: &mut AcceptedSender, snapshot: &Snapshot) -> bool {
    match accepted.sender.send_batchable_ref(&snapshot.sendable).await {
        // Pre-settled: the delivery future resolves at once; awaiting it just collects the result.
        Ok(delivery) => delivery.await.is_ok(),
        Err(error) => {
            debug!(%error, "snapshot send failed; ending the subscription");
            false
        }
    }
}

/// Serves a static source: current snapshot, then each newer one.
async fn serve_snapshots(
    mut accepted: AcceptedSender,
    mut rx: watch::Receiver<Option<Arc<Snapshot>>>,
    source: Source,
    metrics: Metrics,
) {
    let _counted = metrics.subscriber(source.address());
    let scope = accepted.scope.clone();
    let mut last: Option<Arc<Snapshot>> = None;
    rx.mark_changed();
    loop {
        tokio::select! {
            () = scope.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
            _ = accepted.sender.on_detach() => break,
        }
        let Some(snapshot) = rx.borrow_and_update().clone() else {
            continue;
        };
        if last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &snapshot) || l.body == snapshot.body)
        {
            continue;
        }
        let sent = tokio::select! {
            () = scope.cancelled() => break,
            ok = send(&mut accepted, &snapshot) => ok,
        };
        if !sent {
            break;
        }
        metrics.snapshot_sent(source.address());
        last = Some(snapshot);
    }
    debug!(source = source.address(), "subscriber ended");
}

/// Serves `podsense` for one label selector.
async fn serve_podsense(
    mut accepted: AcceptedSender,
    mut rx: watch::Receiver<Option<Arc<Vec<PodInfo>>>>,
    selector: BTreeMap<String, String>,
    metrics: Metrics,
) {
    let source = Source::Podsense;
    let _counted = metrics.subscriber(source.address());
    let scope = accepted.scope.clone();
    let mut last_body: Option<String> = None;
    rx.mark_changed();
    loop {
        tokio::select! {
            () = scope.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
            _ = accepted.sender.on_detach() => break,
        }
        let Some(pods) = rx.borrow_and_update().clone() else {
            continue;
        };
        let started = Instant::now();
        let body = podsense_body(&pods, &selector);
        if last_body.as_deref() == Some(body.as_str()) {
            continue;
        }
        let snapshot = Snapshot::new(source, body.clone());
        metrics.build_time(source.address(), started.elapsed().as_secs_f64());
        let sent = tokio::select! {
            () = scope.cancelled() => break,
            ok = send(&mut accepted, &snapshot) => ok,
        };
        if !sent {
            break;
        }
        metrics.snapshot_sent(source.address());
        last_body = Some(body);
    }
    debug!(source = source.address(), "podsense subscriber ended");
}
