//! The per-link decision, the subscriber tasks, and the bound on snapshot sends in progress.
//!
//! A receiving link on `v1/addresses`, `maas` or `v1/flavors` gets the current snapshot at once (as soon as the
//! source is synced), then every newer one; `podsense` does the same with the pods matching the link's filter
//! map, compared per subscriber so an unrelated pod change sends nothing. Anything else is attached and closed
//! with `amqp:not-found` naming the address.
//!
//! Incremental mode (docs/architecture.md §3): a link to `v1/addresses` or `maas` whose source lists the capability
//! `maas:delta` is answered with that capability in our source, gets the full snapshot tagged with its generation
//! (application property `maas:generation`), then per change the delta that follows what it holds
//! ([`Published::update_from`]: one delta, several merged, or the full snapshot again when it fell too far
//! behind). A link to `v1/flavors` or `podsense` asking for it is answered without the capability and served as
//! any other. Links without the capability get exactly the plain snapshots.
//!
//! One task per subscriber, pre-settled sends, over the lean server of [`maas_amqp::lean`]: every message is
//! encoded once ([`Outgoing`]) and each send writes slices of that one encoding, so waiting or sending subscribers
//! hold no copy of their own. [`SendGate`] still bounds the sends in progress (the work done at once, and what a
//! burst of full snapshots puts in flight): a task takes one of `--max-concurrent-sends` permits, then the LATEST
//! snapshot (intermediate ones are skipped), and gives the permit back when `send` returns — once the last frame is
//! queued for the socket (a connection queues at most [`maas_amqp::lean::WRITE_QUEUE`] frames). A send not done
//! within `--send-timeout` (no credit granted, or the peer does not read) is dropped — while it waits for credit
//! nothing was written, and a half-written delivery dies with the link — and the link is closed with
//! `amqp:link:detach-forced` ("no credit for N s; re-attach to resume"), counted in `subscribers_detached_total`.
//! A delta link chooses its message first (it must follow what the link holds) and takes a permit only for one
//! larger than [`SMALL_MESSAGE`] (its full snapshot, a large delta): a delta link waiting for credit for a small
//! delta holds no permit, so it cannot slow the others; it is closed after the same timeout.
//!
//! Each task ends when its link is detached, its session or connection ends, or the server stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::types::definitions::{self, AmqpError, LinkError};
use maas_amqp::lean::{AcceptedSender, IncomingAttach, SendHandler};
use maas_model::delta::DELTA_CAPABILITY;
use maas_model::pods::PodInfo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info};

use crate::metrics::{Metrics, SendGuard};
use crate::snapshot::{
    DeltaMessage, Latest, Outgoing, Published, Snapshot, Snapshots, Source, Update, podsense_body,
};

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

/// Bounds the snapshot sends in progress and how long one may take; shared by every subscriber of the server.
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

impl SendHandler for SnapshotHandler {
    async fn on_attach(&self, link: IncomingAttach) {
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
                let asks_delta = maas_amqp::subscriber::lists_delta(&link.source_capabilities());
                if asks_delta && source.delta_format().is_some() {
                    if let Some(accepted) =
                        accept_with(link, source, connection, &[DELTA_CAPABILITY]).await
                    {
                        let tracker = accepted.tracker.clone();
                        tracker.spawn(serve_deltas(
                            accepted,
                            rx,
                            source,
                            self.sends.clone(),
                            self.metrics.clone(),
                        ));
                    }
                } else if let Some(accepted) = accept(link, source, connection).await {
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
async fn accept(link: IncomingAttach, source: Source, connection: u64) -> Option<AcceptedSender> {
    accept_with(link, source, connection, &[]).await
}

/// Accepts `link` as our sender, granting `capabilities` (listed in the source of our attach).
async fn accept_with(
    link: IncomingAttach,
    source: Source,
    connection: u64,
    capabilities: &[&str],
) -> Option<AcceptedSender> {
    let accepted = if capabilities.is_empty() {
        link.accept_sender().await
    } else {
        link.accept_sender_with_capabilities(capabilities).await
    };
    match accepted {
        Ok(accepted) => {
            debug!(
                connection,
                source = source.address(),
                ?capabilities,
                "subscriber attached"
            );
            Some(accepted)
        }
        Err(error) => {
            debug!(connection, source = source.address(), %error, "subscriber attach failed");
            None
        }
    }
}

/// One message chosen for a subscriber; holds what it refers to until it is sent.
enum Pick {
    /// A plain snapshot.
    Snapshot(Arc<Snapshot>),
    /// The full snapshot of a state, tagged with its generation (a delta link); `resync`: not its first one.
    Tagged {
        /// The state.
        published: Arc<Published>,
        /// The link had a snapshot already (it fell behind the delta history).
        resync: bool,
    },
    /// A delta (one change, or several merged).
    Delta(Arc<DeltaMessage>),
}

impl Pick {
    fn sendable(&self) -> &Outgoing {
        match self {
            Pick::Snapshot(s) => &s.sendable,
            Pick::Tagged { published, .. } => published.tagged_full(),
            Pick::Delta(d) => &d.sendable,
        }
    }

    /// The body's length (what the connection writes at least).
    fn len(&self) -> usize {
        match self {
            Pick::Snapshot(s) => s.body.len(),
            Pick::Tagged { published, .. } => published.snapshot.body.len(),
            Pick::Delta(d) => d.body_len,
        }
    }

    fn count(&self, metrics: &Metrics, source: Source) {
        match self {
            Pick::Snapshot(_) => metrics.snapshot_sent(source.address()),
            Pick::Tagged { resync, .. } => {
                metrics.snapshot_sent(source.address());
                if *resync {
                    metrics.delta_resync(source.address());
                }
            }
            Pick::Delta(_) => metrics.delta_sent(source.address()),
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

/// Sends one message (under `_in_flight`, its permit if it took one), within `timeout`.
async fn send(
    accepted: &mut AcceptedSender,
    pick: &Pick,
    timeout: Duration,
    _in_flight: Option<InFlight>,
) -> Sent {
    // Dropping this future on timeout is safe: while it waits for credit nothing was written; if it stalls part-way
    // through the transfer frames of a large message, the link is closed right after, which discards the partial
    // delivery at the peer. `send` returns once the last frame is queued for the socket (the queue holds a few
    // frames, slices of the one encoded message), so a permit bounds the work in progress, not copies.
    match tokio::time::timeout(timeout, accepted.sender.send(&pick.sendable().encoded)).await {
        Ok(Ok(())) => Sent::Done,
        Ok(Err(error)) => {
            debug!(%error, "send failed; ending the subscription");
            Sent::Failed
        }
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
        r = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(error)) => if r.is_err() {
            // The peer does not answer (or read): dropping the sender ends the link locally.
            debug!("the stuck link's peer did not answer the detach in time");
        },
    }
    drop(guard);
}

/// Serves a static source to a plain link: current snapshot, then each newer one (exactly the messages of before
/// incremental mode: no generation, no delta).
async fn serve_snapshots(
    accepted: AcceptedSender,
    rx: Latest,
    source: Source,
    gate: SendGate,
    metrics: Metrics,
) {
    let _counted = metrics.subscriber(source.address());
    let mut last: Option<Arc<Snapshot>> = None;
    let next = move |published: Arc<Published>| {
        let snapshot = Arc::clone(&published.snapshot);
        if last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &snapshot) || l.body == snapshot.body)
        {
            return None;
        }
        last = Some(Arc::clone(&snapshot));
        Some(Pick::Snapshot(snapshot))
    };
    serve_source(accepted, rx, source, gate, metrics, Gating::First, next).await;
}

/// Serves `v1/addresses` or `maas` to a delta link: the full snapshot with its generation, then the delta that
/// follows what the link holds, at each change (the full snapshot again if it fell behind the history).
async fn serve_deltas(
    accepted: AcceptedSender,
    rx: Latest,
    source: Source,
    gate: SendGate,
    metrics: Metrics,
) {
    let _counted = metrics.subscriber(source.address());
    let _delta = metrics.delta_subscriber(source.address());
    // The generation the link holds (what the last message sent on it brought it to).
    let mut have: Option<u64> = None;
    let next = move |published: Arc<Published>| {
        let pick = match published.update_from(have)? {
            Update::Full => Pick::Tagged {
                resync: have.is_some(),
                published: Arc::clone(&published),
            },
            Update::Delta(delta) => Pick::Delta(delta),
        };
        have = Some(published.generation);
        Some(pick)
    };
    serve_source(accepted, rx, source, gate, metrics, Gating::Large, next).await;
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
    let _counted = metrics.subscriber(source.address());
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
        Some(Pick::Snapshot(Arc::new(snapshot)))
    };
    serve_source(accepted, rx, source, gate, metrics, Gating::First, next).await;
}

/// Messages up to this size (a delta of a few changes) are sent without a permit of the [`SendGate`]: their
/// encoded copy is small, and a link waiting for credit then holds no permit the others need.
pub const SMALL_MESSAGE: usize = 64 * 1024;

/// When a subscriber task takes a permit of the [`SendGate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gating {
    /// Before choosing what to send (plain links): whatever changed while it waited is skipped, the latest sent.
    First,
    /// After choosing (delta links, whose message must follow what the link holds): only for a message larger
    /// than [`SMALL_MESSAGE`] (a full snapshot, a large delta).
    Large,
}

/// The loop of one subscriber: on each change of `rx`, `next` of the LATEST value (what changed while waiting is
/// skipped; `None`: nothing new for this subscriber), sent within the gate's timeout under a send permit taken as
/// `gating` says.
async fn serve_source<T>(
    mut accepted: AcceptedSender,
    mut rx: watch::Receiver<Option<Arc<T>>>,
    source: Source,
    gate: SendGate,
    metrics: Metrics,
    gating: Gating,
    mut next: impl FnMut(Arc<T>) -> Option<Pick>,
) {
    let scope = accepted.scope.clone();
    rx.mark_changed();
    let end = loop {
        tokio::select! {
            () = scope.cancelled() => break End::Gone,
            r = rx.changed() => if r.is_err() { break End::Gone },
            _ = accepted.sender.on_detach() => break End::Gone,
        }
        let mut in_flight = None;
        if gating == Gating::First {
            in_flight = tokio::select! {
                () = scope.cancelled() => break End::Gone,
                _ = accepted.sender.on_detach() => break End::Gone,
                p = gate.acquire(&metrics) => match p {
                    Some(p) => Some(p),
                    None => break End::Gone,
                },
            };
        }
        let Some(value) = rx.borrow_and_update().clone() else {
            continue;
        };
        let Some(pick) = next(value) else {
            continue;
        };
        if in_flight.is_none() && pick.len() > SMALL_MESSAGE {
            in_flight = tokio::select! {
                () = scope.cancelled() => break End::Gone,
                _ = accepted.sender.on_detach() => break End::Gone,
                p = gate.acquire(&metrics) => match p {
                    Some(p) => Some(p),
                    None => break End::Gone,
                },
            };
        }
        let sent = tokio::select! {
            () = scope.cancelled() => break End::Gone,
            sent = send(&mut accepted, &pick, gate.timeout, in_flight) => sent,
        };
        match sent {
            Sent::Done => {}
            Sent::Failed => break End::Gone,
            Sent::TimedOut => break End::Stuck,
        }
        pick.count(&metrics, source);
    };
    // What `next` keeps (the last snapshot sent) is not needed while a stuck link is closed.
    drop(next);
    if let End::Stuck = end {
        close_stuck(accepted, source, gate.timeout, &metrics).await;
    }
    debug!(source = source.address(), "subscriber ended");
}
