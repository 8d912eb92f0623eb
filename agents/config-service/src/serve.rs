//! The per-link decision, the subscriber tasks, and the bound on snapshot sends in progress.
//!
//! A receiving link on `v1/addresses`, `maas` or `v1/flavors` gets the current snapshot at once (as soon as the
//! source is synced), then every newer one; `podsense` does the same with the pods matching the link's filter
//! map, compared per subscriber so an unrelated pod change sends nothing. Anything else is attached and closed
//! with `amqp:not-found` naming the address.
//!
//! One task per subscriber, pre-settled sends. Waiting subscribers share the source's one `Arc` snapshot, but
//! fe2o3 0.18 encodes a message BEFORE it waits for the link's credit, so a send in progress holds its own
//! encoded copy — and a link that never grants credit would hold one forever. [`SendGate`] bounds that: a task
//! takes one of `--max-concurrent-sends` permits, then the LATEST snapshot (intermediate ones are skipped), and
//! gives the permit back when `send` returns. A send not done within `--send-timeout` (no credit granted, or the
//! peer does not read) is dropped — which fe2o3 allows: while it waits for credit it has consumed none and handed
//! nothing to the session, and a half-handed delivery dies with the link — and the link is closed with
//! `amqp:link:detach-forced` ("no credit for N s; re-attach to resume"), counted in `subscribers_detached_total`.
//!
//! A send counts as done only once its connection has WRITTEN the message to the socket: fe2o3's `send` returns
//! when the frames are queued inside the connection (queues `u16::MAX` frames deep), so the permit is held until
//! the connection's [`WriteProgress`](maas_amqp::server::WriteProgress) has grown by the body's length. Without
//! that, 1,000 subscribers got 1,000 encoded copies queued at once. Not bounded here: what fe2o3 keeps per
//! connection (its channels, and a write buffer as large as the PEER's max-frame-size once a large message went
//! out).
//!
//! Each task ends when its link is detached, its session or connection ends, or the server stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::types::definitions::{self, AmqpError, LinkError};
use maas_amqp::server::{AcceptedSender, IncomingLink, LinkHandler};
use maas_model::pods::PodInfo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info};

use crate::metrics::{Metrics, SendGuard};
use crate::snapshot::{Snapshot, Snapshots, Source, podsense_body};

/// Decides what each incoming link gets.
#[derive(Debug, Clone)]
pub struct SnapshotHandler {
    /// The latest snapshots.
    pub snapshots: Snapshots,
    /// Subscriber and sent counters.
    pub metrics: Metrics,
    /// The bound on sends in progress, and their timeout.
    pub sends: SendGate,
}

/// How long closing a stuck link may wait for the peer's detach before the link is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds the snapshot sends in progress (each holds one encoded copy of its message inside fe2o3) and how long
/// one may take; shared by every subscriber of the server.
#[derive(Debug, Clone)]
pub struct SendGate {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

impl SendGate {
    /// At most `max_concurrent` sends at once (at least one); a send not done within `timeout` closes its link.
    pub fn new(max_concurrent: usize, timeout: Duration) -> SendGate {
        let max = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        SendGate {
            permits: Arc::new(Semaphore::new(max)),
            max,
            timeout,
        }
    }

    /// The most sends in progress at once.
    pub fn max_concurrent(&self) -> usize {
        self.max
    }

    /// How long one send may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits for a permit; `None` only if the gate was closed (it never is).
    async fn acquire(&self, metrics: &Metrics) -> Option<InFlight> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        Some(InFlight {
            _counted: metrics.send_started(),
            _permit: permit,
        })
    }
}

/// One send in progress: its permit and its count in `sends_in_flight`, both given back on drop.
struct InFlight {
    _counted: SendGuard,
    _permit: OwnedSemaphorePermit,
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
                        self.sends.clone(),
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
                    tracker.spawn(serve_snapshots(
                        accepted,
                        rx,
                        source,
                        self.sends.clone(),
                        self.metrics.clone(),
                    ));
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

/// How a subscriber task's loop ended.
enum End {
    /// The link, session, connection or server ended, or a send failed: nothing more to do.
    Gone,
    /// A send did not complete in time: close the link with an error.
    Stuck,
}

/// What became of one bounded send.
enum Sent {
    /// Sent.
    Done,
    /// The link is gone (the send failed).
    Failed,
    /// Not done within the gate's timeout: the send (and its encoded copy) was dropped.
    TimedOut,
}

/// Sends one snapshot under `_in_flight`, within `timeout`.
async fn send(
    accepted: &mut AcceptedSender,
    snapshot: &Snapshot,
    timeout: Duration,
    _in_flight: InFlight,
) -> Sent {
    // Dropping this future on timeout is safe in fe2o3 0.18.4: while it waits for credit it has consumed none and
    // handed nothing to the session; if it stalls part-way through the transfer frames of a large message, the
    // link is closed right after, which discards the partial delivery at the peer.
    //
    // `send` returns once the frames are queued inside fe2o3; the permit is held until the connection has written
    // at least the body's length more to its socket, so the encoded copies in memory stay bounded by the permits.
    let written = Arc::clone(&accepted.written);
    let before = written.written();
    let sending = async {
        let queued = match accepted.sender.send_batchable_ref(&snapshot.sendable).await {
            // Pre-settled: the delivery future resolves at once; awaiting it just collects the result.
            Ok(delivery) => delivery.await.is_ok(),
            Err(error) => {
                debug!(%error, "snapshot send failed; ending the subscription");
                false
            }
        };
        if queued {
            written
                .wait_for(before.saturating_add(snapshot.body.len() as u64))
                .await;
        }
        queued
    };
    match tokio::time::timeout(timeout, sending).await {
        Ok(true) => Sent::Done,
        Ok(false) => Sent::Failed,
        Err(_) => Sent::TimedOut,
    }
}

/// `5 s`, `0.3 s`: a timeout as said in the detach description.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{s:.1} s")
    }
}

/// Closes a link whose send did not complete within `timeout` with `amqp:link:detach-forced`, and counts it.
async fn close_stuck(
    accepted: AcceptedSender,
    source: Source,
    timeout: Duration,
    metrics: &Metrics,
) {
    metrics.subscriber_detached(source.address());
    let description = format!("no credit for {}; re-attach to resume", seconds(timeout));
    info!(source = source.address(), %description, "closing a subscriber link that takes no snapshot");
    let AcceptedSender {
        sender,
        scope,
        guard,
        ..
    } = accepted;
    let error = definitions::Error::new(LinkError::DetachForced, description, None);
    tokio::select! {
        () = scope.cancelled() => {}
        r = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(error)) => match r {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, "closing the stuck link"),
            // The peer does not answer (or read): dropping the sender ends the link locally.
            Err(_) => debug!("the stuck link's peer did not answer the detach in time"),
        },
    }
    drop(guard);
}

/// Serves a static source: current snapshot, then each newer one.
async fn serve_snapshots(
    accepted: AcceptedSender,
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    source: Source,
    gate: SendGate,
    metrics: Metrics,
) {
    let mut last: Option<Arc<Snapshot>> = None;
    let next = move |snapshot: Arc<Snapshot>| {
        if last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &snapshot) || l.body == snapshot.body)
        {
            return None;
        }
        last = Some(Arc::clone(&snapshot));
        Some(snapshot)
    };
    serve_source(accepted, rx, source, gate, metrics, next).await;
}

/// Serves `podsense` for one label selector: each subscriber encodes its own view of the pods, and gets it only
/// when that view changed.
async fn serve_podsense(
    accepted: AcceptedSender,
    rx: watch::Receiver<Option<Arc<Vec<PodInfo>>>>,
    selector: BTreeMap<String, String>,
    gate: SendGate,
    metrics: Metrics,
) {
    let source = Source::Podsense;
    let build_metrics = metrics.clone();
    let mut last_body: Option<String> = None;
    let next = move |pods: Arc<Vec<PodInfo>>| {
        let started = Instant::now();
        let body = podsense_body(&pods, &selector);
        if last_body.as_deref() == Some(body.as_str()) {
            return None;
        }
        let snapshot = Snapshot::new(source, body.clone());
        build_metrics.build_time(source.address(), started.elapsed().as_secs_f64());
        last_body = Some(body);
        Some(Arc::new(snapshot))
    };
    serve_source(accepted, rx, source, gate, metrics, next).await;
}

/// The loop of one subscriber: on each change of `rx`, a send permit first, then `next` of the LATEST value (what
/// changed while waiting is skipped; `None`: nothing new for this subscriber), sent within the gate's timeout.
async fn serve_source<T>(
    mut accepted: AcceptedSender,
    mut rx: watch::Receiver<Option<Arc<T>>>,
    source: Source,
    gate: SendGate,
    metrics: Metrics,
    mut next: impl FnMut(Arc<T>) -> Option<Arc<Snapshot>>,
) {
    let _counted = metrics.subscriber(source.address());
    let scope = accepted.scope.clone();
    rx.mark_changed();
    let end = loop {
        tokio::select! {
            () = scope.cancelled() => break End::Gone,
            r = rx.changed() => if r.is_err() { break End::Gone },
            _ = accepted.sender.on_detach() => break End::Gone,
        }
        let in_flight = tokio::select! {
            () = scope.cancelled() => break End::Gone,
            _ = accepted.sender.on_detach() => break End::Gone,
            p = gate.acquire(&metrics) => match p {
                Some(p) => p,
                None => break End::Gone,
            },
        };
        let Some(value) = rx.borrow_and_update().clone() else {
            continue;
        };
        let Some(snapshot) = next(value) else {
            continue;
        };
        let sent = tokio::select! {
            () = scope.cancelled() => break End::Gone,
            sent = send(&mut accepted, &snapshot, gate.timeout, in_flight) => sent,
        };
        match sent {
            Sent::Done => {}
            Sent::Failed => break End::Gone,
            Sent::TimedOut => break End::Stuck,
        }
        metrics.snapshot_sent(source.address());
    };
    // What `next` keeps (the last snapshot sent) is not needed while a stuck link is closed.
    drop(next);
    if let End::Stuck = end {
        close_stuck(accepted, source, gate.timeout, &metrics).await;
    }
    debug!(source = source.address(), "subscriber ended");
}
