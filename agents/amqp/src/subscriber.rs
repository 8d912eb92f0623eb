//! A subscriber of snapshot sources (config-service, docs/architecture.md §3): one connection, one receiving link per
//! source address (optionally with a filter map, e.g. a label selector for `podsense`), every message handed over
//! as it arrives. On any failure — connect, attach refused, connection lost, idle timeout — it reconnects with
//! capped exponential backoff and jitter, and re-attaches everything; each attach brings a fresh FULL snapshot, so
//! the consumer simply takes the latest message of each source as the truth.
//!
//! Incremental mode (docs/architecture.md §3 "Incremental mode"): a link made from [`Subscription::incremental`]
//! carries the source capability [`DELTA_CAPABILITY`]. The source then sends a full snapshot on attach, tagged with
//! its generation ([`GENERATION_PROPERTY`]), and after that one delta per change, tagged with the generation it
//! produces and the one it follows ([`FOLLOWS_PROPERTY`]). The subscriber checks the chain itself: a delta whose
//! `follows` is not the generation last received on that link means one was missed, and the link is re-attached
//! (which brings a full snapshot). So the consumer of a delta link sees a clean chain: a full snapshot, then deltas
//! that each follow the previous message, then possibly a full snapshot again (after a resync or a reconnect).
//! A consumer that cannot apply a delta asks for a full snapshot with [`SubscriberHandle::resync`].
//!
//! Memory: a plain link keeps only the LATEST snapshot of its source while the consumer is busy (a newer one
//! replaces an older one not yet handed over); each link grants a credit of 1, and the event channel holds one
//! event. With 10,000 addresses a snapshot is ~1.4 MB: a slow consumer costs about one snapshot per source, not a
//! queue of them. A delta link cannot skip messages, so it keeps every undelivered delta of its source, up to
//! [`MAX_PENDING_DELTAS`] of them or [`MAX_PENDING_DELTA_BYTES`] of bodies; beyond that they are dropped and the
//! link is re-attached: a full snapshot then replaces them all.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, Properties, Source,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use fe2o3_amqp::{Receiver, Session};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connect::open_connection_with_max_frame;
use crate::options::{Backoff, ConnectOptions};

/// Source capability asking for incremental mode (the same symbol as `maas_model::delta::DELTA_CAPABILITY`).
pub const DELTA_CAPABILITY: &str = "maas:delta";
/// Application property: the generation a message brings the subscriber to (`maas_model::delta`).
pub const GENERATION_PROPERTY: &str = "maas:generation";
/// Application property of a delta: the generation it applies to (`maas_model::delta`).
pub const FOLLOWS_PROPERTY: &str = "maas:follows";
/// Undelivered deltas of one source beyond which they are dropped and the link re-attached.
pub const MAX_PENDING_DELTAS: usize = 1_000;
/// Total body bytes of the undelivered deltas of one source beyond which they are dropped and the link
/// re-attached (a full snapshot of 10,000 addresses is ~1.4 MB).
pub const MAX_PENDING_DELTA_BYTES: usize = 4 * 1024 * 1024;

/// The largest frame a subscriber lets a snapshot source send it (announced in its `open`). A server keeps, per
/// connection, a write buffer as large as the largest frame it wrote there: with fe2o3's default (256 KiB) that
/// is ~256 KiB per subscriber once a big snapshot went out, with 8 KiB frames config-service held 182 MB instead of
/// 401 MB for 1,000 subscribers of 10,000 addresses (`scripts/bench fanout`). A snapshot of 1.4 MB is then ~175
/// frames, which costs the subscriber nothing measurable.
pub const SUBSCRIBER_MAX_FRAME_SIZE: u32 = 8 * 1024;

/// One source to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The source address, e.g. `v1/addresses`.
    pub address: String,
    /// The source's filter map (string keys and values), e.g. a label selector for `podsense`.
    pub filter: BTreeMap<String, String>,
}

impl Subscription {
    pub fn new(address: impl Into<String>) -> Self {
        Subscription {
            address: address.into(),
            filter: BTreeMap::new(),
        }
    }

    /// This source in incremental mode: a full snapshot on attach, then deltas (see the module doc).
    pub fn incremental(self) -> SourceLink {
        SourceLink {
            subscription: self,
            delta: true,
        }
    }
}

/// One link of the subscriber: a source, and whether it asks for incremental mode. A plain [`Subscription`]
/// converts into one without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLink {
    pub subscription: Subscription,
    /// Ask for incremental mode (source capability [`DELTA_CAPABILITY`]).
    pub delta: bool,
}

impl From<Subscription> for SourceLink {
    fn from(subscription: Subscription) -> Self {
        SourceLink {
            subscription,
            delta: false,
        }
    }
}

/// One message of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMessage {
    pub subject: Option<String>,
    pub content_type: Option<String>,
    /// The AMQP-value string body (JSON text). A non-string body is reported as an error event instead.
    pub body: String,
    /// Application property [`GENERATION_PROPERTY`]: the generation this message brings the consumer to (sources
    /// in incremental mode set it on full snapshots and deltas).
    pub generation: Option<u64>,
    /// Application property [`FOLLOWS_PROPERTY`]: set on a delta only, the generation it applies to.
    pub follows: Option<u64>,
}

impl SnapshotMessage {
    /// True for a delta (it carries [`FOLLOWS_PROPERTY`]); false for a full snapshot.
    pub fn is_delta(&self) -> bool {
        self.follows.is_some()
    }
}

/// What the subscriber reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent {
    /// Connected and every source attached.
    Connected,
    /// A message arrived on source `index` (position in the subscription list).
    Message {
        index: usize,
        message: SnapshotMessage,
    },
    /// The connection is gone or could not be made; reconnecting after the backoff.
    Disconnected { reason: String },
}

/// Lets the consumer ask for a full snapshot of a source again.
#[derive(Clone)]
pub struct SubscriberHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SubscriberHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberHandle")
            .field("resyncs", &self.resyncs())
            .finish()
    }
}

impl SubscriberHandle {
    /// Re-attach the link of source `index`: its undelivered messages are dropped and the next one it hands over
    /// is a full snapshot (for a consumer that could not apply a delta). Nothing happens while disconnected (the
    /// reconnect re-attaches every link anyway).
    pub fn resync(&self, index: usize) {
        if let Ok(mut state) = self.shared.state.lock()
            && let Some(slot) = state.slots.get_mut(index)
        {
            slot.clear();
            state.resync.insert(index);
        }
        self.shared.changed.notify_one();
    }

    /// How many times a link was re-attached to get a full snapshot again (a missed delta, too many undelivered
    /// deltas, or [`Self::resync`]); reconnects are not counted.
    pub fn resyncs(&self) -> u64 {
        self.shared.resyncs.load(Ordering::Relaxed)
    }
}

/// Start the subscriber task. Events arrive on the returned channel (one at a time; while the consumer is busy
/// only the latest snapshot of each plain source is kept, and the deltas of an incremental one). The task ends
/// when `shutdown` is cancelled or the receiver of events is dropped.
pub fn spawn_subscriber<S: Into<SourceLink>>(
    opts: ConnectOptions,
    subscriptions: Vec<S>,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> mpsc::Receiver<SubscriberEvent> {
    spawn_subscriber_with_handle(opts, subscriptions, backoff, shutdown).0
}

/// [`spawn_subscriber`], with a handle to ask for resyncs.
pub fn spawn_subscriber_with_handle<S: Into<SourceLink>>(
    opts: ConnectOptions,
    subscriptions: Vec<S>,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<SubscriberEvent>, SubscriberHandle) {
    let links: Vec<SourceLink> = subscriptions.into_iter().map(Into::into).collect();
    let (tx, rx) = mpsc::channel(1);
    let shared = Arc::new(Shared::default());
    let handle = SubscriberHandle {
        shared: shared.clone(),
    };
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                r = session_loop(&opts, &links, &shared, &tx, &mut attempt) => r,
            };
            let reason = match result {
                Ok(()) => return,
                Err(reason) => reason,
            };
            let delay = backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            warn!(peer = %opts, %reason, retry_in = ?delay, "config subscription lost; reconnecting");
            if tx
                .send(SubscriberEvent::Disconnected { reason })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    });
    (rx, handle)
}

/// What the link tasks, the consumer's handle and the session loop share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Notify,
    resyncs: AtomicU64,
}

/// The undelivered messages per source and the requests for the session loop. Reset for every connection.
#[derive(Default)]
struct State {
    /// Bumped per connection: a link task of an earlier one changes nothing.
    session: u64,
    slots: Vec<Slot>,
    /// The first fatal error of this connection.
    fatal: Option<String>,
    /// Sources the consumer asked to resync: their link is closed, then re-attached.
    resync: BTreeSet<usize>,
    /// Sources whose link was closed to get a full snapshot: to be re-attached.
    reattach: BTreeSet<usize>,
    /// Where the next search for an undelivered message starts (sources take turns).
    next: usize,
}

/// The undelivered messages of one source, oldest first: for a plain link at most one (the latest snapshot); for a
/// delta link possibly a full snapshot, then the deltas that follow it.
#[derive(Default)]
struct Slot {
    pending: VecDeque<SnapshotMessage>,
    deltas: usize,
    delta_bytes: usize,
}

impl Slot {
    fn clear(&mut self) {
        self.pending.clear();
        self.deltas = 0;
        self.delta_bytes = 0;
    }
}

impl Shared {
    /// A new connection: nothing pending, no request; returns its session number.
    fn reset(&self, sources: usize) -> u64 {
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        let session = state.session.wrapping_add(1);
        *state = State {
            session,
            slots: (0..sources).map(|_| Slot::default()).collect(),
            ..State::default()
        };
        session
    }

    /// Runs `f` on the slot of source `index` of `session` (nothing for a stale session), then wakes the loop.
    fn with_slot<T>(
        &self,
        session: u64,
        index: usize,
        f: impl FnOnce(&mut Slot) -> T,
    ) -> Option<T> {
        let r = match self.state.lock() {
            Ok(mut state) if state.session == session => state.slots.get_mut(index).map(f),
            _ => None,
        };
        self.changed.notify_one();
        r
    }

    /// A full snapshot (or any message of a plain link): it replaces whatever was not handed over yet.
    fn put_snapshot(&self, session: u64, index: usize, message: SnapshotMessage) {
        self.with_slot(session, index, |slot| {
            if !slot.pending.is_empty() {
                debug!(
                    index,
                    "a newer snapshot replaces what was not handed over yet"
                );
            }
            slot.clear();
            slot.pending.push_back(message);
        });
    }

    /// A delta that follows the last message of the link. False when the bound of undelivered deltas was
    /// exceeded: they were all dropped (the link must be re-attached for a full snapshot).
    fn push_delta(&self, session: u64, index: usize, message: SnapshotMessage) -> bool {
        self.with_slot(session, index, |slot| {
            let bytes = slot.delta_bytes.saturating_add(message.body.len());
            if slot.deltas >= MAX_PENDING_DELTAS || bytes > MAX_PENDING_DELTA_BYTES {
                slot.clear();
                return false;
            }
            slot.deltas += 1;
            slot.delta_bytes = bytes;
            slot.pending.push_back(message);
            true
        })
        .unwrap_or(true)
    }

    /// The link of source `index` was closed: re-attach it.
    fn request_reattach(&self, session: u64, index: usize) {
        if let Ok(mut state) = self.state.lock()
            && state.session == session
        {
            state.reattach.insert(index);
            self.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.changed.notify_one();
    }

    fn fail(&self, session: u64, reason: String) {
        if let Ok(mut state) = self.state.lock()
            && state.session == session
        {
            state.fatal.get_or_insert(reason);
        }
        self.changed.notify_one();
    }

    /// The fatal error, and the resync and re-attach requests (taken).
    fn requests(&self) -> (Option<String>, BTreeSet<usize>, BTreeSet<usize>) {
        match self.state.lock() {
            Ok(mut state) => (
                state.fatal.clone(),
                std::mem::take(&mut state.resync),
                std::mem::take(&mut state.reattach),
            ),
            Err(_) => (
                Some("subscriber state poisoned".into()),
                BTreeSet::new(),
                BTreeSet::new(),
            ),
        }
    }

    fn has_pending(&self) -> bool {
        self.state
            .lock()
            .is_ok_and(|s| s.slots.iter().any(|slot| !slot.pending.is_empty()))
    }

    /// The oldest undelivered message of the next source that has one (sources take turns).
    fn take(&self) -> Option<(usize, SnapshotMessage)> {
        let mut state = self.state.lock().ok()?;
        let n = state.slots.len();
        let start = state.next;
        for i in (0..n).map(|k| (start + k) % n) {
            let Some(slot) = state.slots.get_mut(i) else {
                continue;
            };
            if let Some(m) = slot.pending.pop_front() {
                if m.is_delta() {
                    slot.deltas = slot.deltas.saturating_sub(1);
                    slot.delta_bytes = slot.delta_bytes.saturating_sub(m.body.len());
                }
                state.next = (i + 1) % n;
                return Some((i, m));
            }
        }
        None
    }
}

/// A running link task.
struct LinkTask {
    /// Cancelled to close the link and have it re-attached (a resync asked by the consumer).
    close: CancellationToken,
    task: JoinHandle<()>,
}

/// Attach the link of source `index` (`serial`: how many times it was attached before on this connection).
async fn attach(
    session: &mut SessionHandle<()>,
    opts: &ConnectOptions,
    link: &SourceLink,
    index: usize,
    serial: u64,
) -> Result<Receiver, String> {
    let sub = &link.subscription;
    let mut source = Source::builder().address(sub.address.clone());
    if !sub.filter.is_empty() {
        let mut set = fe2o3_amqp::types::messaging::FilterSet::new();
        for (k, v) in &sub.filter {
            set.insert(Symbol::from(k.as_str()), Value::String(v.clone()));
        }
        source = source.filter(set);
    }
    if link.delta {
        source = source.capabilities(vec![Symbol::from(DELTA_CAPABILITY)]);
    }
    let name = if serial == 0 {
        format!("maas-subscriber-{}-{index}", sub.address)
    } else {
        format!("maas-subscriber-{}-{index}.{serial}", sub.address)
    };
    let attach = Receiver::builder()
        .name(name)
        .source(source.build())
        // One message in flight per link: the next one waits at the sender (which skips to its latest).
        .credit_mode(CreditMode::Auto(1))
        .auto_accept(true)
        .attach(session);
    tokio::time::timeout(opts.connect_timeout, attach)
        .await
        .map_err(|_| {
            format!(
                "attach to {:?} not answered within {:?}",
                sub.address, opts.connect_timeout
            )
        })?
        .map_err(|e| format!("attach to {:?} refused: {e}", sub.address))
}

/// The message a snapshot source sends (the other end of this module, for sources and tests): `body` as an
/// AMQP-value string, `subject`, and in incremental mode the application properties [`GENERATION_PROPERTY`] and,
/// on a delta, [`FOLLOWS_PROPERTY`] as `ulong`.
pub fn source_message(
    subject: &str,
    body: String,
    generation: Option<u64>,
    follows: Option<u64>,
) -> Message<AmqpValue<Value>> {
    let mut props = ApplicationProperties::builder();
    if let Some(g) = generation {
        props = props.insert(GENERATION_PROPERTY, SimpleValue::Ulong(g));
    }
    if let Some(f) = follows {
        props = props.insert(FOLLOWS_PROPERTY, SimpleValue::Ulong(f));
    }
    Message::builder()
        .properties(Properties::builder().subject(subject).build())
        .application_properties(props.build())
        .body(AmqpValue(Value::String(body)))
        .build()
}

/// True when an incoming link's source asks for incremental mode (capability [`DELTA_CAPABILITY`]).
pub fn asks_for_delta(link: &crate::server::IncomingLink<'_>) -> bool {
    lists_delta(&link.source_capabilities())
}

/// True when a source's `capabilities` list [`DELTA_CAPABILITY`].
pub fn lists_delta(capabilities: &[String]) -> bool {
    capabilities.iter().any(|c| c == DELTA_CAPABILITY)
}

/// A `u64` application property (any unsigned or non-negative integer encoding, or a decimal string).
fn u64_property(props: Option<&ApplicationProperties>, key: &str) -> Option<u64> {
    match props?.0.get(key)? {
        SimpleValue::Ulong(v) => Some(*v),
        SimpleValue::Uint(v) => Some(u64::from(*v)),
        SimpleValue::Ushort(v) => Some(u64::from(*v)),
        SimpleValue::Ubyte(v) => Some(u64::from(*v)),
        SimpleValue::Long(v) => u64::try_from(*v).ok(),
        SimpleValue::Int(v) => u64::try_from(*v).ok(),
        SimpleValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Follow one attached link until it fails (fatal for the connection) or is closed for a full snapshot.
async fn follow(
    mut receiver: Receiver,
    shared: Arc<Shared>,
    session: u64,
    index: usize,
    link: SourceLink,
    close: CancellationToken,
) {
    let address = link.subscription.address;
    // The generation of the last message on this link (delta links).
    let mut last: Option<u64> = None;
    let reattach = |receiver: Receiver, why: String| {
        let shared = shared.clone();
        async move {
            debug!(%why, "re-attaching for a full snapshot");
            let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
            shared.request_reattach(session, index);
        }
    };
    loop {
        let r = tokio::select! {
            () = close.cancelled() => {
                reattach(receiver, format!("source {address:?}: resync asked")).await;
                return;
            }
            r = receiver.recv::<Body<Value>>() => r,
        };
        let message = match r {
            Ok(delivery) => {
                let message = delivery.message();
                let props = message.properties.as_ref();
                let subject = props.and_then(|p| p.subject.clone());
                let content_type = props.and_then(|p| p.content_type.as_ref().map(|s| s.0.clone()));
                let app = message.application_properties.as_ref();
                let generation = u64_property(app, GENERATION_PROPERTY);
                let follows = u64_property(app, FOLLOWS_PROPERTY);
                match delivery.into_body() {
                    Body::Value(v) => match v.0 {
                        Value::String(body) => Ok(SnapshotMessage {
                            subject,
                            content_type,
                            body,
                            generation,
                            follows,
                        }),
                        other => Err(format!(
                            "source {address:?}: body is not a string but {other:?}"
                        )),
                    },
                    _ => Err(format!("source {address:?}: body is not an AMQP value")),
                }
            }
            Err(e) => Err(format!("source {address:?}: link ended: {e}")),
        };
        let message = match message {
            Ok(m) => m,
            Err(reason) => {
                shared.fail(session, reason);
                let _ = tokio::time::timeout(Duration::from_secs(1), receiver.close()).await;
                return;
            }
        };
        let Some(follows) = message.follows.filter(|_| link.delta) else {
            last = message.generation;
            shared.put_snapshot(session, index, message);
            continue;
        };
        if last.is_none() {
            // A source in incremental mode sends a full snapshot on attach: re-attaching would not help.
            shared.fail(
                session,
                format!("source {address:?}: a delta (follows {follows}) before any full snapshot"),
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), receiver.close()).await;
            return;
        }
        if last != Some(follows) || message.generation.is_none() {
            let why = format!(
                "source {address:?}: delta follows generation {follows}, the last one received is {}",
                last.map_or_else(|| "none".to_string(), |g| g.to_string())
            );
            reattach(receiver, why).await;
            return;
        }
        last = message.generation;
        if !shared.push_delta(session, index, message) {
            let why = format!(
                "source {address:?}: more than {MAX_PENDING_DELTAS} deltas or {MAX_PENDING_DELTA_BYTES} bytes \
                 not handed over yet; dropped"
            );
            reattach(receiver, why).await;
            return;
        }
    }
}

/// One connection's life: attach every source, forward messages until something fails. `Ok` only when the
/// consumer went away.
async fn session_loop(
    opts: &ConnectOptions,
    links: &[SourceLink],
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<SubscriberEvent>,
    attempt: &mut u32,
) -> Result<(), String> {
    let opened = open_connection_with_max_frame(opts, SUBSCRIBER_MAX_FRAME_SIZE)
        .await
        .map_err(|e| e.to_string())?;
    let mut connection = opened.connection;
    let mut session = tokio::time::timeout(opts.connect_timeout, Session::begin(&mut connection))
        .await
        .map_err(|_| format!("session not begun within {:?}", opts.connect_timeout))?
        .map_err(|e| format!("begin session: {e}"))?;
    let session_id = shared.reset(links.len());
    let mut tasks: Vec<Option<LinkTask>> = Vec::with_capacity(links.len());
    let mut serials = vec![0u64; links.len()];
    let spawn = |receiver: Receiver, index: usize, link: &SourceLink| {
        let close = CancellationToken::new();
        let task = tokio::spawn(follow(
            receiver,
            shared.clone(),
            session_id,
            index,
            link.clone(),
            close.clone(),
        ));
        LinkTask { close, task }
    };
    let result = async {
        for (index, link) in links.iter().enumerate() {
            let receiver = attach(&mut session, opts, link, index, 0).await?;
            tasks.push(Some(spawn(receiver, index, link)));
        }
        info!(peer = %opts, sources = links.len(), "subscribed to the config service");
        *attempt = 0;
        if tx.send(SubscriberEvent::Connected).await.is_err() {
            return Ok(());
        }
        loop {
            let (fatal, resync, reattach) = shared.requests();
            if let Some(reason) = fatal {
                return Err(reason);
            }
            for index in resync {
                if let Some(Some(t)) = tasks.get(index) {
                    t.close.cancel();
                }
            }
            for index in reattach {
                let (Some(link), Some(serial)) = (links.get(index), serials.get_mut(index)) else {
                    continue;
                };
                *serial += 1;
                let receiver = attach(&mut session, opts, link, index, *serial).await?;
                info!(source = %link.subscription.address, "re-attached for a full snapshot");
                if let Some(slot) = tasks.get_mut(index) {
                    *slot = Some(spawn(receiver, index, link));
                }
            }
            // Room for one event, then the oldest undelivered message of the next source that has one; while the
            // consumer is busy, a newer snapshot replaces the one waiting (deltas queue up to their bound).
            if shared.has_pending() {
                tokio::select! {
                    permit = tx.reserve() => {
                        let Ok(permit) = permit else { return Ok(()) };
                        if let Some((index, message)) = shared.take() {
                            debug!(index, bytes = message.body.len(), delta = message.is_delta(), "message received");
                            permit.send(SubscriberEvent::Message { index, message });
                        }
                    }
                    () = shared.changed.notified() => {}
                }
            } else {
                tokio::select! {
                    () = shared.changed.notified() => {}
                    () = tx.closed() => return Ok(()),
                }
            }
        }
    }
    .await;
    for t in tasks.into_iter().flatten() {
        t.task.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), session.end()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
    result
}
