//! The AMQP side of the broker emulator, on the shared server skeleton [`maas_amqp::server`] behind the
//! [`super::front`] door: SASL PLAIN users (ANONYMOUS gets through SASL and is then refused with
//! `amqp:unauthorized-access` `AMQ229031`, as Artemis does), the `activemq.management` node (requests in,
//! replies routed by `reply-to` to the dynamic receiver owning that temporary queue), dynamic receivers as
//! UUID temporary queues, and messaging: sending links route messages into queues ([`Model::route`]),
//! receiving links consume a queue ([`Model::resolve_receiver`]: a queue, `address::queue`, a durable
//! subscription `<container-id>.<link-name>`, a temporary subscription) with at-least-once delivery.
//!
//! Reply routing: a dynamic receiver's route is registered BEFORE its attach is answered. The client may
//! send its first request the moment it sees the attach, and the management link is served by another
//! task; registering afterwards let that request's reply find no route (a real Artemis never drops a
//! reply to an attached temporary queue). A reply whose `reply-to` has no route is logged at `warn`.
//!
//! Consumers: a consumer task takes the queue's next message only when it can send (it waits inside
//! fe2o3's `send`, which waits for link credit), sends it UNSETTLED, and keeps the outcome futures; the
//! message leaves the queue when the outcome is `accepted` (or the link settles pre-settled), goes back to
//! its place for `released`/`modified`/no outcome, and to the DLQ for `rejected`. Every change that can
//! give a waiting consumer work (a message routed or released, a management operation) bumps
//! [`Shared::wake`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fe2o3_amqp::Sendable;
use fe2o3_amqp::link::{DetachError, LinkStateError, Receiver, SendError, Sender};
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorBody, ErrorCondition};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Outcome, Properties,
    TargetArchetype, TerminusDurability,
};
use fe2o3_amqp::types::primitives::{Array, SimpleValue, Symbol, Value};
use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use maas_amqp::artemis::{
    MANAGEMENT_ADDRESS, OPERATION_NAME, OPERATION_SUCCEEDED, RESOURCE_NAME, RoutingType,
};
use maas_amqp::server::{ANONYMOUS, ConnectionInfo, IncomingLink, LinkHandler};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::front::Peers;
use super::model::{
    Model, ReceiverPlan, ReceiverRequest, Refusal, RefusalKind, Settle, StoredMessage, Take,
};

/// State shared by the emulator handle and every link task.
pub(crate) struct Shared {
    /// The broker.
    pub model: Mutex<Model>,
    /// Temporary reply address -> the task sending on the link that owns it.
    pub routes: Mutex<HashMap<String, mpsc::UnboundedSender<StoredMessage>>>,
    /// Busy time per management operation, in nanoseconds (the cost model).
    pub cost_ns: AtomicU64,
    /// While set, requests take effect but no reply is sent.
    pub withhold: AtomicBool,
    /// Artemis' default auto-creation of addresses and queues when a link attaches.
    pub auto_create: bool,
    /// Credit granted on `activemq.management` links.
    pub credit: u32,
    /// Fault injection, nanoseconds: how long a session's task pauses right after answering a dynamic
    /// receiver's attach (as if its thread were preempted there). 0: no pause.
    pub pause_after_dynamic_attach_ns: AtomicU64,
    /// Forwarded connections (client address, container-id) by the peer address the server sees.
    pub peers: Arc<Peers>,
    /// Bumped whenever a consumer may have work: messages routed or released, queues changed.
    pub wake: watch::Sender<()>,
}

impl Shared {
    pub(crate) fn new(auto_create: bool, credit: u32, cost_ns: u64, peers: Arc<Peers>) -> Shared {
        Shared {
            model: Mutex::new(Model::new()),
            routes: Mutex::new(HashMap::new()),
            cost_ns: AtomicU64::new(cost_ns),
            withhold: AtomicBool::new(false),
            auto_create,
            credit,
            pause_after_dynamic_attach_ns: AtomicU64::new(0),
            peers,
            wake: watch::channel(()).0,
        }
    }

    pub(crate) fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every consumer waiting for messages.
    pub(crate) fn changed(&self) {
        self.wake.send_replace(());
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<StoredMessage>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client's own address and the container-id of its `open` frame, for a connection the AMQP
    /// server knows by `peer`.
    fn peer_of(&self, connection: &ConnectionInfo) -> (std::net::SocketAddr, Option<String>) {
        match self.peers.get(&connection.peer) {
            Some(p) => (p.addr, p.container_id),
            None => (connection.peer, None),
        }
    }
}

/// The per-link decisions.
pub(crate) struct Handler {
    pub shared: Arc<Shared>,
}

/// A random UUID (version 4), the way Artemis names temporary queues.
fn uuid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Burns `d` of CPU: one management operation's cost, on the one "core" the model lock stands for.
// GUESS (e2e/GUESSES.md #43): per-operation cost not recorded
fn spin(d: Duration) {
    if d.is_zero() {
        return;
    }
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

impl LinkHandler for Handler {
    // GUESS (e2e/GUESSES.md #42): every PLAIN user may manage; AMQ229031 arguments
    fn on_connection(&self, connection: &ConnectionInfo) -> Result<(), (ErrorCondition, String)> {
        if connection.mechanism == ANONYMOUS {
            let (peer, _) = self.shared.peer_of(connection);
            // Artemis lets SASL ANONYMOUS through, then cannot validate the (null) user.
            return Err((
                AmqpError::UnauthorizedAccess.into(),
                format!(
                    "AMQ229031: Unable to validate user from /{peer}. Username: null; SSL certificate subject DN: unavailable"
                ),
            ));
        }
        Ok(())
    }

    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let shared = Arc::clone(&self.shared);
        if link.peer_receives() {
            if link.source_dynamic() {
                attach_dynamic(link, shared).await;
            } else {
                attach_consumer(link, shared).await;
            }
            return;
        }
        let target = link.target_address();
        let management = target.as_deref() == Some(MANAGEMENT_ADDRESS);
        if !management && let Some(address) = &target {
            let capability = routing_capability(target_capabilities(&link));
            let resolved = shared
                .model()
                .resolve_sender(address, capability, shared.auto_create);
            if let Err(refusal) = resolved {
                refuse(link, refusal).await;
                return;
            }
        }
        // GUESS (e2e/GUESSES.md #42): link credits
        let credit = if management { shared.credit } else { 100 };
        match link.accept_receiver(credit).await {
            Ok(accepted) => {
                if management {
                    accepted.tracker.spawn(management_reader(
                        accepted.receiver,
                        shared,
                        accepted.scope,
                        accepted.guard,
                    ));
                } else {
                    accepted.tracker.spawn(sink(
                        accepted.receiver,
                        target,
                        shared,
                        accepted.scope,
                        accepted.guard,
                    ));
                }
            }
            Err(e) => tracing::debug!(error = %e, "sending link attach failed"),
        }
    }
}

/// A dynamic receiver: a temporary reply queue named by a UUID, fed by management replies.
async fn attach_dynamic(link: IncomingLink<'_>, shared: Arc<Shared>) {
    let name = uuid();
    shared.model().create_temporary(&name);
    // The route must exist before the attach goes out: the client sends its first request as soon as it
    // sees the attach, and the management link's task may answer it before this task runs again. Replies
    // routed meanwhile wait in the channel.
    let (tx, rx) = mpsc::unbounded_channel();
    shared.routes().insert(name.clone(), tx.clone());
    match link.accept_dynamic_sender(name.clone()).await {
        Ok(accepted) => {
            let pause = shared.pause_after_dynamic_attach_ns.load(Ordering::Relaxed);
            if pause > 0 {
                tokio::time::sleep(Duration::from_nanos(pause)).await;
            }
            accepted.tracker.spawn(reply_sender(
                accepted.sender,
                rx,
                tx,
                name,
                shared,
                accepted.scope,
                accepted.guard,
            ));
        }
        Err(e) => {
            tracing::debug!(error = %e, "dynamic receiver attach failed");
            remove_route(&shared, &name, &tx);
            shared.model().remove_temporary(&name);
        }
    }
}

/// The capabilities of a terminus as symbol names.
fn symbols(caps: Option<&Array<Symbol>>) -> Vec<String> {
    caps.map(|a| a.0.iter().map(|s| s.0.clone()).collect())
        .unwrap_or_default()
}

fn target_capabilities(link: &IncomingLink<'_>) -> Vec<String> {
    match link.attach().and_then(|a| a.target.as_deref()) {
        Some(TargetArchetype::Target(t)) => symbols(t.capabilities.as_ref()),
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

/// Artemis reads the routing type from the `topic` / `queue` capabilities (`topic` first).
fn routing_capability(caps: Vec<String>) -> Option<RoutingType> {
    if caps.iter().any(|c| c == "topic" || c == "temporary-topic") {
        Some(RoutingType::Multicast)
    } else if caps.iter().any(|c| c == "queue" || c == "temporary-queue") {
        Some(RoutingType::Anycast)
    } else {
        None
    }
}

async fn refuse(link: IncomingLink<'_>, refusal: Refusal) {
    let condition = match refusal.condition {
        RefusalKind::NotFound => AmqpError::NotFound,
        RefusalKind::IllegalState => AmqpError::IllegalState,
        RefusalKind::InternalError => AmqpError::InternalError,
    };
    link.refuse(condition, refusal.description).await;
}

/// A receiving link on an address or queue: resolved to the queue it consumes, then served by a
/// [`consumer`] task.
async fn attach_consumer(link: IncomingLink<'_>, shared: Arc<Shared>) {
    let Some(address) = link.source_address() else {
        link.refuse(
            AmqpError::InvalidField,
            "a receiving link needs a source address".to_string(),
        )
        .await;
        return;
    };
    let source = link.attach().and_then(|a| a.source.as_deref());
    let capability = routing_capability(symbols(source.and_then(|s| s.capabilities.as_ref())));
    // Artemis checks the durability only (ProtonServerSenderContext), not the expiry policy.
    let durable = source.is_some_and(|s| {
        matches!(
            s.durable,
            TerminusDurability::Configuration | TerminusDurability::UnsettledState
        )
    });
    let (_, container_id) = shared.peer_of(link.connection());
    let container_id = container_id.unwrap_or_else(|| {
        tracing::warn!(
            link = link.name(),
            "no container-id known for this connection"
        );
        String::new()
    });
    let temporary_name = uuid();
    let request = ReceiverRequest {
        address: &address,
        capability,
        durable,
        container_id: &container_id,
        link_name: link.name(),
        user: &link.connection().user,
        auto_create: shared.auto_create,
        temporary_name: &temporary_name,
    };
    let resolved = shared.model().resolve_receiver(&request);
    let plan = match resolved {
        Ok(plan) => plan,
        Err(refusal) => {
            tracing::debug!(%address, ?refusal, "refusing receiver");
            refuse(link, refusal).await;
            return;
        }
    };
    tracing::debug!(%address, queue = %plan.queue, ?plan.subscription, "consumer attached");
    match link.accept_sender().await {
        Ok(accepted) => {
            accepted.tracker.spawn(consumer(
                accepted.sender,
                plan,
                shared,
                accepted.scope,
                accepted.guard,
            ));
        }
        Err(e) => {
            tracing::debug!(error = %e, "consumer attach failed");
            shared
                .model()
                .detach_consumer(&plan.queue, plan.consumer, plan.subscription, false);
            shared.changed();
        }
    }
}

fn simple_string(v: Option<&SimpleValue>) -> String {
    match v {
        Some(SimpleValue::String(s)) => s.clone(),
        Some(SimpleValue::Symbol(s)) => s.0.clone(),
        _ => String::new(),
    }
}

/// Reads management requests, runs them on the model, and routes the replies.
async fn management_reader<G: Send + 'static>(
    mut receiver: Receiver,
    shared: Arc<Shared>,
    scope: CancellationToken,
    _guard: G,
) {
    loop {
        let delivery = tokio::select! {
            () = scope.cancelled() => break,
            d = receiver.recv::<Body<Value>>() => d,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "management link ended");
                break;
            }
        };
        if receiver.accept(&delivery).await.is_err() {
            break;
        }
        let message = delivery.into_message();
        let props = message
            .application_properties
            .map(|a| a.0)
            .unwrap_or_default();
        let resource = simple_string(props.get(RESOURCE_NAME));
        let operation = simple_string(props.get(OPERATION_NAME));
        let body = match message.body {
            Body::Value(AmqpValue(Value::String(s))) => Some(s),
            _ => None,
        };
        let (reply_to, correlation) = match message.properties {
            Some(p) => (p.reply_to, p.correlation_id.or(p.message_id)),
            None => (None, None),
        };
        let reply = {
            let mut model = shared.model();
            spin(Duration::from_nanos(shared.cost_ns.load(Ordering::Relaxed)));
            model.invoke(&resource, &operation, body.as_deref())
        };
        shared.changed();
        if shared.withhold.load(Ordering::Relaxed) {
            continue;
        }
        let Some(reply_to) = reply_to else {
            // GUESS (e2e/GUESSES.md #36): executed but not answered
            tracing::debug!(%operation, "management request without reply-to: no reply");
            continue;
        };
        let message = reply_message(&reply_to, correlation, reply.succeeded, reply.body);
        route_reply(&shared, &reply_to, &operation, message);
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), receiver.close()).await;
}

/// Hands a management reply to the link owning its `reply-to`. Without one (nobody attached to that
/// address, or its link just went away) the reply is routed like any message sent there, as Artemis
/// routes it, and a warning says so: no client will see it.
// GUESS (e2e/GUESSES.md #37): unrouted replies stored as messages
fn route_reply(shared: &Shared, reply_to: &str, operation: &str, message: StoredMessage) {
    let route = shared.routes().get(reply_to).cloned();
    let unsent = match route {
        Some(tx) => tx.send(message).err().map(|e| e.0),
        None => Some(message),
    };
    if let Some(message) = unsent {
        let stored = shared.model().route(reply_to, message);
        shared.changed();
        tracing::warn!(
            %reply_to,
            %operation,
            stored,
            "management reply for a reply-to address no attached link owns: no client gets it"
        );
    }
}

/// Removes `name`'s route if it is still the one `tx` feeds (not a newer link's).
fn remove_route(shared: &Shared, name: &str, tx: &mpsc::UnboundedSender<StoredMessage>) {
    let mut routes = shared.routes();
    if routes.get(name).is_some_and(|t| t.same_channel(tx)) {
        routes.remove(name);
    }
}

/// The reply as Artemis 2.21 sends it: `_AMQ_OperationSucceeded`, `JMSXDeliveryCount` (null), the
/// correlation-id echoed, body an amqp-value string (or null for void operations).
// GUESS (e2e/GUESSES.md #36): pre-settled, to set, no header
fn reply_message(
    reply_to: &str,
    correlation: Option<MessageId>,
    succeeded: bool,
    body: Option<String>,
) -> StoredMessage {
    let app = ApplicationProperties::builder()
        .insert(OPERATION_SUCCEEDED, SimpleValue::Bool(succeeded))
        .insert("JMSXDeliveryCount", SimpleValue::Null)
        .build();
    let properties = Properties {
        to: Some(reply_to.to_string()),
        correlation_id: correlation,
        ..Default::default()
    };
    Message::builder()
        .properties(properties)
        .application_properties(app)
        .body(Body::Value(AmqpValue(
            body.map_or(Value::Null, Value::String),
        )))
        .build()
}

/// Owns a dynamic receiver's link: sends the replies routed to its temporary queue, pre-settled.
async fn reply_sender<G: Send + 'static>(
    mut sender: Sender,
    mut rx: mpsc::UnboundedReceiver<StoredMessage>,
    tx: mpsc::UnboundedSender<StoredMessage>,
    name: String,
    shared: Arc<Shared>,
    scope: CancellationToken,
    _guard: G,
) {
    let mut batch = Vec::new();
    'outer: loop {
        tokio::select! {
            () = scope.cancelled() => break,
            n = rx.recv_many(&mut batch, 256) => if n == 0 { break },
        }
        for message in batch.drain(..) {
            let sendable = Sendable::builder().message(message).settled(true).build();
            let sent = tokio::select! {
                () = scope.cancelled() => break 'outer,
                r = sender.send_batchable(sendable) => r,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "reply link ended");
                break 'outer;
            }
        }
    }
    remove_route(&shared, &name, &tx);
    drop(tx);
    rx.close();
    let mut lost = 0usize;
    while rx.try_recv().is_ok() {
        lost += 1;
    }
    if lost > 0 {
        tracing::warn!(reply_to = %name, lost, "reply link gone with management replies not sent");
    }
    shared.model().remove_temporary(&name);
    if !scope.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_millis(500), sender.close()).await;
    }
}

/// How a consumer's link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer detached (`closed`: it closed the link, an unsubscribe for a durable subscription).
    Detached { closed: bool },
    /// The session or connection ended (or the server stops): the link just goes.
    Gone,
    /// The queue was destroyed under the link.
    Deleted,
}

impl End {
    fn of_detach(e: &DetachError) -> End {
        #[allow(deprecated)]
        match e {
            DetachError::ClosedByRemote | DetachError::RemoteClosedWithError(_) => {
                End::Detached { closed: true }
            }
            DetachError::DetachedByRemote | DetachError::RemoteDetachedWithError(_) => {
                End::Detached { closed: false }
            }
            _ => End::Gone,
        }
    }

    fn of_send(e: &SendError) -> End {
        match e {
            SendError::LinkStateError(
                LinkStateError::RemoteClosed | LinkStateError::RemoteClosedWithError(_),
            ) => End::Detached { closed: true },
            SendError::LinkStateError(
                LinkStateError::RemoteDetached | LinkStateError::RemoteDetachedWithError(_),
            ) => End::Detached { closed: false },
            SendError::Detached(d) => End::of_detach(d),
            _ => End::Gone,
        }
    }
}

/// How waiting to send a taken message ended.
enum Sent<T> {
    /// The transfer went out (or the link failed).
    Done(Result<T, SendError>),
    /// An earlier message came back to the queue: it goes first.
    Overtaken,
    /// The session or connection ended.
    Cancelled,
}

/// How the consumer's outcome settles the message in the queue.
fn settlement(outcome: Result<Outcome, SendError>) -> Settle {
    match outcome {
        Ok(Outcome::Accepted(_)) => Settle::Accept,
        Ok(Outcome::Rejected(_)) => Settle::Reject,
        // Released, modified, or no outcome at all (the link or session went away first).
        _ => Settle::Release,
    }
}

/// Serves a receiving link: delivers the queue's messages as credit allows, unsettled, and settles them
/// in the queue by the consumer's outcomes (see the module docs).
// GUESS (e2e/GUESSES.md #47): delivery and settlement details; a consumer waiting for credit holds one message
async fn consumer<G: Send + 'static>(
    mut sender: Sender,
    plan: ReceiverPlan,
    shared: Arc<Shared>,
    scope: CancellationToken,
    _guard: G,
) {
    let queue = plan.queue.clone();
    let settle = |seq: u64, how: Settle| {
        let released = how != Settle::Accept;
        shared.model().settle(&queue, seq, how);
        if released {
            shared.changed();
        }
    };
    let mut wake = shared.wake.subscribe();
    let mut pending: FuturesUnordered<BoxFuture<'static, (u64, Settle)>> = FuturesUnordered::new();
    let end = 'serve: loop {
        wake.borrow_and_update();
        while let Some(Some((seq, how))) = pending.next().now_or_never() {
            settle(seq, how);
        }
        let next = shared.model().take(&queue, plan.consumer);
        match next {
            Take::Gone => break End::Deleted,
            Take::Message(seq, message) => {
                let sendable = Sendable::builder().message(*message).settled(false).build();
                let send = sender.send_batchable(sendable);
                tokio::pin!(send);
                // Waits for credit (inside send) while outcomes of earlier deliveries keep settling. A
                // message released meanwhile (it sorts before the one held here) goes out first: the
                // held one goes back. Dropping a send that waits for credit is safe (fe2o3 takes the
                // credit and queues the transfer without waiting in between).
                // Biased: a peer's disposition is handled before the credit that follows it (as the
                // frames came), so a release followed by new credit sends the released message.
                let sent = loop {
                    tokio::select! {
                        biased;
                        () = scope.cancelled() => break Sent::Cancelled,
                        Some((s, how)) = pending.next(), if !pending.is_empty() => settle(s, how),
                        r = wake.changed() => {
                            if r.is_err() {
                                break Sent::Cancelled;
                            }
                            if shared.model().overtaken(&queue, seq) {
                                break Sent::Overtaken;
                            }
                        }
                        r = &mut send => break Sent::Done(r),
                    }
                };
                match sent {
                    Sent::Done(Ok(fut)) => {
                        shared.model().sent(&queue, seq);
                        pending.push(Box::pin(async move { (seq, settlement(fut.await)) }));
                    }
                    Sent::Done(Err(e)) => {
                        settle(seq, Settle::Release);
                        tracing::debug!(error = %e, %queue, "consumer link ended while sending");
                        break 'serve End::of_send(&e);
                    }
                    Sent::Overtaken => settle(seq, Settle::Release),
                    Sent::Cancelled => {
                        settle(seq, Settle::Release);
                        break 'serve End::Gone;
                    }
                }
            }
            Take::Empty => {
                tokio::select! {
                    () = scope.cancelled() => break 'serve End::Gone,
                    r = wake.changed() => if r.is_err() { break 'serve End::Gone },
                    Some((s, how)) = pending.next(), if !pending.is_empty() => settle(s, how),
                    e = sender.on_detach() => break 'serve End::of_detach(&e),
                }
            }
        }
    };
    // Outcomes that arrived before the detach still count (dispositions precede the peer's detach). When
    // the session or connection went, its last dispositions may still be on their way through fe2o3's
    // session task: wait for them a little.
    while let Some(Some((seq, how))) = pending.next().now_or_never() {
        settle(seq, how);
    }
    if end == End::Gone && !pending.is_empty() {
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            while let Some((seq, how)) = pending.next().await {
                settle(seq, how);
            }
        })
        .await;
    }
    drop(pending);
    let closed = end == End::Detached { closed: true };
    shared
        .model()
        .detach_consumer(&queue, plan.consumer, plan.subscription, closed);
    shared.changed();
    tracing::debug!(%queue, ?end, "consumer link ended");
    match end {
        End::Deleted => {
            // AMQPSessionCallback.disconnect: the consumer's link is closed with this error.
            let error = AmqpErrorBody::new(
                AmqpError::ResourceDeleted,
                Some(format!("Queue was deleted: {queue}")),
                None,
            );
            let _ =
                tokio::time::timeout(Duration::from_millis(500), sender.close_with_error(error))
                    .await;
        }
        End::Detached { .. } => {
            let _ = tokio::time::timeout(Duration::from_millis(500), sender.close()).await;
        }
        End::Gone => {}
    }
}

/// A sending link to an ordinary address (or an anonymous one: each message's `to`): every message is
/// routed into the queues of its address and then accepted.
async fn sink<G: Send + 'static>(
    mut receiver: Receiver,
    target: Option<String>,
    shared: Arc<Shared>,
    scope: CancellationToken,
    _guard: G,
) {
    loop {
        let delivery = tokio::select! {
            () = scope.cancelled() => break,
            d = receiver.recv::<Body<Value>>() => d,
        };
        let Ok(delivery) = delivery else { break };
        let message = delivery.message().clone();
        let address = match &target {
            Some(t) => Ok(t.clone()),
            None => message
                .properties
                .as_ref()
                .and_then(|p| p.to.clone())
                .ok_or_else(|| {
                    // AMQPSessionCallback.serverSend's text for an anonymous relay.
                    "Missing 'to' field for message sent to an anonymous producer".to_string()
                })
                .and_then(|to| {
                    shared
                        .model()
                        .resolve_sender(&to, None, shared.auto_create)
                        .map(|()| to)
                        .map_err(|r| r.description)
                }),
        };
        let disposed = match address {
            Ok(address) => {
                let taken = shared.model().route(&address, message);
                shared.changed();
                tracing::trace!(%address, taken, "message routed");
                receiver.accept(&delivery).await
            }
            Err(text) => {
                // GUESS (e2e/GUESSES.md #48): rejected with condition `failed`
                let error = AmqpErrorBody::new(
                    ErrorCondition::Custom(Symbol::from("failed")),
                    Some(text),
                    None,
                );
                receiver.reject(&delivery, error).await
            }
        };
        if disposed.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), receiver.close()).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    /// Collects formatted log output.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reply_nobody_owns_is_logged_as_a_warning_and_stored() {
        let shared = Shared::new(true, 10, 0, Arc::new(Peers::default()));
        shared.model().create_temporary("tmp-1");
        // A route whose link task is gone (its receiving half dropped) counts as no route.
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        drop(gone_rx);
        shared.routes().insert("tmp-2".to_string(), gone_tx);
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reply = || reply_message("x", Some(MessageId::Ulong(1)), true, None);
            route_reply(&shared, "tmp-1", "getAddressNames", reply());
            route_reply(&shared, "tmp-2", "getQueueNames", reply());
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{text}");
        assert!(
            warnings[0].contains("tmp-1") && warnings[0].contains("getAddressNames"),
            "{text}"
        );
        assert!(warnings[1].contains("tmp-2"), "{text}");
        assert_eq!(shared.model().queues()["tmp-1"].messages, 1);
    }

    #[test]
    fn uuids_look_like_artemis_temporary_queues() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        assert_eq!(&u[14..15], "4");
        assert_ne!(uuid(), u);
    }
}
