//! The AMQP side of the broker emulator, on the shared server skeleton [`maas_amqp::server`]: SASL PLAIN
//! users (ANONYMOUS gets through SASL and is then refused with `amqp:unauthorized-access` `AMQ229031`, as
//! Artemis does), the `activemq.management` node (requests in, replies routed by `reply-to` to the
//! dynamic receiver owning that temporary queue), dynamic receivers as UUID temporary queues, and
//! ordinary links: senders' messages are counted into queues, receivers count as queue consumers.
//!
//! Reply routing: a dynamic receiver's route is registered BEFORE its attach is answered. The client may
//! send its first request the moment it sees the attach, and the management link is served by another
//! task; registering afterwards let that request's reply find no route (a real Artemis never drops a
//! reply to an attached temporary queue). A reply whose `reply-to` has no route is logged at `warn`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fe2o3_amqp::Sendable;
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use maas_amqp::artemis::{MANAGEMENT_ADDRESS, OPERATION_NAME, OPERATION_SUCCEEDED, RESOURCE_NAME};
use maas_amqp::server::{ANONYMOUS, ConnectionInfo, IncomingLink, LinkHandler};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::Model;

/// State shared by the emulator handle and every link task.
pub(crate) struct Shared {
    /// The broker.
    pub model: Mutex<Model>,
    /// Temporary reply address -> the task sending on the link that owns it.
    pub routes: Mutex<HashMap<String, mpsc::UnboundedSender<Message<Body<Value>>>>>,
    /// Busy time per management operation, in nanoseconds (the cost model).
    pub cost_ns: AtomicU64,
    /// While set, requests take effect but no reply is sent.
    pub withhold: AtomicBool,
    /// Auto-create an ANYCAST address + queue when a link attaches to an unknown address.
    pub auto_create: bool,
    /// Credit granted on `activemq.management` links.
    pub credit: u32,
    /// Fault injection, nanoseconds: how long a session's task pauses right after answering a dynamic
    /// receiver's attach (as if its thread were preempted there). 0: no pause.
    pub pause_after_dynamic_attach_ns: AtomicU64,
}

impl Shared {
    pub(crate) fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn routes(
        &self,
    ) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Message<Body<Value>>>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
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
            // Artemis lets SASL ANONYMOUS through, then cannot validate the (null) user.
            return Err((
                AmqpError::UnauthorizedAccess.into(),
                format!(
                    "AMQ229031: Unable to validate user from /{}. Username: null; SSL certificate subject DN: unavailable",
                    connection.peer
                ),
            ));
        }
        Ok(())
    }

    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let shared = Arc::clone(&self.shared);
        if link.peer_receives() {
            if link.source_dynamic() {
                let name = uuid();
                shared.model().create_temporary(&name);
                // The route must exist before the attach goes out: the client sends its first request
                // as soon as it sees the attach, and the management link's task may answer it before
                // this task runs again. Replies routed meanwhile wait in the channel.
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
                return;
            }
            let Some(address) = link.source_address() else {
                link.refuse(
                    AmqpError::InvalidField,
                    "a receiving link needs a source address".to_string(),
                )
                .await;
                return;
            };
            if shared.auto_create {
                // GUESS (e2e/GUESSES.md #38): auto-create on receiver attach
                shared.model().auto_create(&address);
            }
            let counted = shared.model().link_consumer(&address, true);
            match link.accept_sender().await {
                Ok(accepted) => {
                    accepted.tracker.spawn(consumer(
                        accepted.sender,
                        address,
                        counted,
                        shared,
                        accepted.scope,
                        accepted.guard,
                    ));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "consumer attach failed");
                    if counted {
                        shared.model().link_consumer(&address, false);
                    }
                }
            }
            return;
        }
        let target = link.target_address();
        let management = target.as_deref() == Some(MANAGEMENT_ADDRESS);
        if !management
            && shared.auto_create
            && let Some(address) = &target
        {
            shared.model().auto_create(address);
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
/// address, or its link just went away) the reply is stored like any message sent there, as Artemis
/// routes it, and a warning says so: no client will see it.
// GUESS (e2e/GUESSES.md #37): unrouted replies stored as messages
fn route_reply(shared: &Shared, reply_to: &str, operation: &str, message: Message<Body<Value>>) {
    let route = shared.routes().get(reply_to).cloned();
    let unsent = match route {
        Some(tx) => tx.send(message).is_err(),
        None => true,
    };
    if unsent {
        let stored = shared.model().deliver(reply_to);
        tracing::warn!(
            %reply_to,
            %operation,
            stored,
            "management reply for a reply-to address no attached link owns: no client gets it"
        );
    }
}

/// Removes `name`'s route if it is still the one `tx` feeds (not a newer link's).
fn remove_route(shared: &Shared, name: &str, tx: &mpsc::UnboundedSender<Message<Body<Value>>>) {
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
) -> Message<Body<Value>> {
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
    mut rx: mpsc::UnboundedReceiver<Message<Body<Value>>>,
    tx: mpsc::UnboundedSender<Message<Body<Value>>>,
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

/// A receiving link on a queue: counts as a consumer until it goes away (it is sent nothing).
async fn consumer<G: Send + 'static>(
    mut sender: Sender,
    address: String,
    counted: bool,
    shared: Arc<Shared>,
    scope: CancellationToken,
    _guard: G,
) {
    let detached = tokio::select! {
        () = scope.cancelled() => false,
        _ = sender.on_detach() => true,
    };
    if counted {
        shared.model().link_consumer(&address, false);
    }
    if detached {
        let _ = tokio::time::timeout(Duration::from_millis(500), sender.close()).await;
    }
}

/// A sending link to an ordinary address: every message is accepted and counted into the queues of its
/// address (the link's target, else the message's `to`).
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
        if receiver.accept(&delivery).await.is_err() {
            break;
        }
        let to = delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.to.clone());
        if let Some(address) = target.clone().or(to) {
            let mut model = shared.model();
            if shared.auto_create {
                model.auto_create(&address);
            }
            model.deliver(&address);
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
        let shared = Shared {
            model: Mutex::new(Model::new()),
            routes: Mutex::new(HashMap::new()),
            cost_ns: AtomicU64::new(0),
            withhold: AtomicBool::new(false),
            auto_create: true,
            credit: 10,
            pause_after_dynamic_attach_ns: AtomicU64::new(0),
        };
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
