//! The AMQP 1.0 side of the emulator: accepts connections on 127.0.0.1 like qdrouterd's `normal` listener,
//! opens them with the router's container-id and properties (frames.txt:9), hands out dynamic reply addresses
//! `amqp:/_topo/0/<id>/temp.<random>`, reads requests from links to `$management` with a limited window, and
//! sends the management thread's replies pre-settled on the link owning the reply-to address.
//!
//! The optional client listener (a second port) applies the recorded `clients` vhost policy (policy.rs): a link
//! the policy refuses is answered and at once closed with `amqp:unauthorized-access` `link disallowed by local
//! policy`, before any reply route or request reader exists for it.
//!
//! A link's reply route is registered BEFORE its attach is answered: the client sends its first request as
//! soon as it sees the attach, and the management thread may answer it before any later step of this side
//! runs (qdrouterd never drops a reply to an attached dynamic address).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fe2o3_amqp::Sendable;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SaslAcceptor, SessionAcceptor,
};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::{AmqpError, Error, Fields, Role};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Header, Message, MessageId, Properties, Source, Target,
    TargetArchetype,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Array, SimpleValue, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use super::core::{CoreMsg, Outgoing, Shared};
use super::model::Request;
use super::policy::{GroupPolicy, LINK_DISALLOWED};

/// Everything a connection task needs.
#[derive(Clone)]
pub struct Ctx {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Requests to the management thread.
    pub core_tx: std::sync::mpsc::Sender<CoreMsg>,
    /// Router id (container-id, dynamic addresses).
    pub router_id: String,
    /// Credit granted on `$management` links.
    pub credit: u32,
    /// Process shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Connection ids for the open frame's `qd.conn-id`.
    pub conn_ids: Arc<AtomicU64>,
    /// The vhost policy of this listener: `None` on the management (agent) port, the recorded `clients` group on
    /// the client port.
    pub policy: Option<Arc<GroupPolicy>>,
    /// The users of an authenticating listener (SASL PLAIN only); `None`: any credentials ([`AnyAuth`]).
    pub users: Option<Arc<maas_amqp::server::Users>>,
}

/// SASL ANONYMOUS or PLAIN with any credentials (a listener with `authenticatePeer: no`).
#[derive(Debug, Clone)]
// GUESS (e2e/GUESSES.md #4): ANONYMOUS and PLAIN offered, any credentials accepted
struct AnyAuth;

impl SaslAcceptor for AnyAuth {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("ANONYMOUS"), Symbol::from("PLAIN")])
    }
    fn on_init(&mut self, _init: SaslInit) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }
    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }
}

/// SASL PLAIN only, checked against users (a listener with `authenticatePeer: true`, `saslMechanisms: PLAIN`).
// GUESS (e2e/GUESSES.md #52): only PLAIN offered; anything else, or a wrong login, gets outcome `auth`
#[derive(Debug, Clone)]
struct PlainAuth(Arc<maas_amqp::server::Users>);

impl SaslAcceptor for PlainAuth {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from(super::policy::PLAIN)])
    }
    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let ok = init.mechanism.0 == super::policy::PLAIN
            && init
                .initial_response
                .is_some_and(|r| super::policy::plain_login_ok(&self.0, &r));
        SaslServerFrame::Outcome(SaslOutcome {
            code: if ok { SaslCode::Ok } else { SaslCode::Auth },
            additional_data: None,
        })
    }
    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Auth,
            additional_data: None,
        })
    }
}

/// Accepts connections until shutdown.
pub async fn accept_loop(listener: TcpListener, ctx: Ctx) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Nagle + delayed ACK otherwise caps request/response at ~4,000/s (fe2o3-amqp-notes.txt).
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "connection accepted");
                    tokio::spawn(connection(stream, ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn open_properties(ctx: &Ctx) -> Fields {
    let conn_id = ctx.conn_ids.fetch_add(1, Ordering::Relaxed);
    let mut props = Fields::new();
    props.insert(
        Symbol::from("product"),
        Value::String("qpid-dispatch-router".into()),
    );
    props.insert(Symbol::from("version"), Value::String("1.19.0".into()));
    // GUESS (e2e/GUESSES.md #3): ulong here; real router sends an int
    props.insert(Symbol::from("qd.conn-id"), Value::Ulong(conn_id));
    props
}

/// The router's open frame (frames.txt:9): container-id = router id, idle-time-out 8 s, capabilities, properties.
macro_rules! router_acceptor {
    ($ctx:expr) => {
        ConnectionAcceptor::builder()
            .container_id($ctx.router_id.clone())
            .max_frame_size(16384u32)
            .channel_max(0x7fffu16)
            .idle_time_out(8000u32)
            .add_offered_capabilities("ANONYMOUS-RELAY")
            .add_offered_capabilities("qd.streaming-links")
            .add_desired_capabilities("ANONYMOUS-RELAY")
            .add_desired_capabilities("qd.streaming-links")
            .properties(open_properties($ctx))
    };
}

async fn open(stream: TcpStream, ctx: &Ctx) -> Option<ListenerConnectionHandle> {
    // The 5th byte of the protocol header says whether the client starts with SASL (3) or plain AMQP (0).
    let mut hdr = [0u8; 8];
    let peeked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.peek(&mut hdr).await {
                Ok(n) if n >= 5 => return Some(hdr[4]),
                Ok(0) | Err(_) => return None,
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await
    .ok()
    .flatten()?;
    // An authenticating listener refuses a client that skips SASL (proton: `pn_transport_require_auth`).
    // GUESS (e2e/GUESSES.md #52): the connection is dropped without an open frame
    if ctx.users.is_some() && peeked != 3 {
        tracing::debug!("client skipped SASL on an authenticating listener: refused");
        return None;
    }
    // Replies leave as the real router writes them, correlation-ids included (echo.rs).
    let stream = super::echo::RawIdWriter::new(stream);
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        if let Some(users) = &ctx.users {
            router_acceptor!(ctx)
                .sasl_acceptor(PlainAuth(users.clone()))
                .build()
                .accept(stream)
                .await
        } else if peeked == 3 {
            router_acceptor!(ctx)
                .sasl_acceptor(AnyAuth)
                .build()
                .accept(stream)
                .await
        } else {
            router_acceptor!(ctx).build().accept(stream).await
        }
    })
    .await;
    match result {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::debug!(error = ?e, "open failed");
            None
        }
        Err(_) => None,
    }
}

async fn connection(stream: TcpStream, ctx: Ctx) {
    let mut epoch_rx = ctx.shared.epoch.subscribe();
    let epoch = *epoch_rx.borrow_and_update();
    let Some(mut conn) = open(stream, &ctx).await else {
        return;
    };
    ctx.shared.open.fetch_add(1, Ordering::Relaxed);
    let mut shutdown = ctx.shutdown.clone();
    // Signals the connection's sessions and links to stop when the connection goes.
    let (gone_tx, gone_rx) = watch::channel(false);
    loop {
        tokio::select! {
            incoming = conn.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                match SessionAcceptor::new().accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => { tokio::spawn(session_task(session, ctx.clone(), epoch, gone_rx.clone())); }
                    Err(e) => { tracing::debug!(error = ?e, "begin failed"); }
                }
            }
            _ = epoch_rx.changed() => break,
            _ = shutdown.changed() => break,
        }
    }
    let _ = gone_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
    ctx.shared.open.fetch_sub(1, Ordering::Relaxed);
}

// GUESS (e2e/GUESSES.md #5): address forms other than $management and the topo form
fn is_management(address: Option<&str>, router_id: &str) -> bool {
    match address {
        Some(a) => {
            a == "$management"
                || a == "/$management"
                || a == "_local/$management"
                || a == format!("amqp:/_topo/0/{router_id}/$management")
        }
        None => false,
    }
}

async fn session_task(
    mut session: ListenerSessionHandle,
    ctx: Ctx,
    epoch: u64,
    mut gone: watch::Receiver<bool>,
) {
    loop {
        let attach: Attach = tokio::select! {
            a = session.next_incoming_attach() => match a { Some(a) => a, None => break },
            _ = gone.changed() => break,
        };
        let target = match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone(),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        if let Some(policy) = &ctx.policy {
            let allowed = match attach.role {
                // The client sends: its target must be in `targets` (or anonymous senders allowed).
                Role::Sender => policy.allows_sender(target.as_deref()),
                Role::Receiver => {
                    let source = attach.source.as_deref();
                    policy.allows_receiver(
                        source.is_some_and(|s| s.dynamic),
                        source.and_then(|s| s.address.as_deref()),
                    )
                }
            };
            if !allowed {
                refuse(attach, &mut session).await;
                continue;
            }
        }
        // The client receives on this link: its address (ours to pick when dynamic) gets a reply route now,
        // before the attach goes out. Replies routed before the link's task runs wait in the channel.
        let route = if matches!(attach.role, Role::Receiver) {
            let source = attach.source.as_deref();
            let address = if source.is_some_and(|s| s.dynamic) {
                Some(dynamic_address(&ctx.router_id))
            } else {
                source.and_then(|s| s.address.clone())
            };
            address.map(|address| {
                let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
                ctx.shared.routes().insert(address.clone(), tx.clone());
                (address, tx, rx)
            })
        } else {
            None
        };
        let dynamic = route.as_ref().map(|(a, _, _)| a.clone());
        let acceptor = LinkAcceptor::builder()
            .on_dynamic_source(move |mut source: Source| {
                source.address = dynamic.clone();
                Some(source)
            })
            .build();
        match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(LinkEndpoint::Receiver(receiver)) => {
                let mgmt = is_management(target.as_deref(), &ctx.router_id);
                tokio::spawn(request_reader(
                    receiver,
                    ctx.clone(),
                    epoch,
                    mgmt,
                    gone.clone(),
                ));
            }
            Ok(LinkEndpoint::Sender(sender)) => match route {
                Some(route) => {
                    tokio::spawn(reply_sender(sender, route, ctx.clone(), gone.clone()));
                }
                None => {
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(500), sender.close()).await;
                    });
                }
            },
            Err(e) => {
                if let Some((address, tx, _)) = &route {
                    remove_route(&ctx, address, tx);
                }
                tracing::debug!(error = ?e, "attach refused");
            }
        }
    }
    // Keep the handle alive until here: dropping it ends the session.
    let _ = tokio::time::timeout(Duration::from_millis(500), session.end()).await;
}

/// Answers an attach the policy refuses and closes the link with the recorded error.
///
/// Real router (src/container.c, src/policy.c, proton-c transport.c; read, not run): the link is never opened,
/// `pn_link_close` with the condition set, so proton sends an attach whose source and target are empty terminus
/// (address null), then a closing detach carrying the error.
// GUESS (e2e/GUESSES.md #26c): the frames of a refusal beyond the recorded condition and description
async fn refuse(mut attach: Attach, session: &mut ListenerSessionHandle) {
    let address = match (
        &attach.role,
        attach.target.as_deref(),
        attach.source.as_deref(),
    ) {
        (Role::Sender, Some(TargetArchetype::Target(t)), _) => t.address.clone(),
        (Role::Receiver, _, Some(s)) => s.address.clone(),
        _ => None,
    };
    tracing::info!(
        role = ?attach.role,
        address = address.as_deref().unwrap_or(""),
        "POLICY DENY AMQP Attach: {LINK_DISALLOWED}"
    );
    // Our side of the link holds the terminus the client asked for: answer with an empty one, as proton does
    // for a link the router never opened. (The other terminus is echoed: fe2o3 takes it from the attach.)
    match attach.role {
        Role::Sender => {
            attach.target = Some(Box::new(TargetArchetype::Target(Target::builder().build())));
        }
        Role::Receiver => attach.source = Some(Box::new(Source::builder().build())),
    }
    // `amqp:unauthorized-access` (policy::UNAUTHORIZED_ACCESS) with the recorded description.
    let error = || {
        Error::new(
            AmqpError::UnauthorizedAccess,
            Some(LINK_DISALLOWED.to_string()),
            None,
        )
    };
    match LinkAcceptor::new()
        .accept_incoming_attach(attach, session)
        .await
    {
        // The link's own task: closing waits for the client's detach, the session keeps serving meanwhile.
        Ok(LinkEndpoint::Receiver(receiver)) => {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    receiver.close_with_error(error()),
                )
                .await;
            });
        }
        Ok(LinkEndpoint::Sender(sender)) => {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    sender.close_with_error(error()),
                )
                .await;
            });
        }
        Err(e) => tracing::debug!(error = ?e, "refused attach failed"),
    }
}

/// Reads management requests; at most `credit` of them are in flight per link (qdrouterd's link capacity 250:
/// it stops taking requests while replies cannot be delivered, performance.txt:16-18).
async fn request_reader(
    mut receiver: Receiver,
    ctx: Ctx,
    epoch: u64,
    management: bool,
    mut gone: watch::Receiver<bool>,
) {
    // GUESS (e2e/GUESSES.md #7): credit tied to replies written
    let window = Arc::new(Semaphore::new(ctx.credit as usize));
    if receiver.set_credit(ctx.credit).await.is_err() {
        return;
    }
    loop {
        let permit = tokio::select! {
            p = window.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = gone.changed() => break,
        };
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => match d { Ok(d) => d, Err(e) => {
                tracing::debug!(error = ?e, "request link ended");
                break;
            }},
            _ = gone.changed() => break,
        };
        let _ = receiver.accept(&delivery).await;
        let message = delivery.into_message();
        let to = message.properties.as_ref().and_then(|p| p.to.clone());
        // On the client port only the link's target counts: a message there never reaches `$management` by its
        // `to` (the policy already refused anonymous senders and `$` targets).
        // GUESS (e2e/GUESSES.md #26b): (d) `to` ignored on the client port
        if !management && (ctx.policy.is_some() || !is_management(to.as_deref(), &ctx.router_id)) {
            // GUESS (e2e/GUESSES.md #5): accepted and dropped (real: released, no route)
            // Not for the management node: a real router would route it; nobody consumes it here.
            continue;
        }
        let (req, reply_to, correlation_id) = decode(message);
        let msg = CoreMsg::Request {
            req: Box::new(req),
            reply_to,
            correlation_id,
            permit: Some(permit),
            epoch,
        };
        if ctx.core_tx.send(msg).is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), receiver.close()).await;
}

fn simple_string(v: &SimpleValue) -> Option<String> {
    match v {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

fn simple_u64(v: &SimpleValue) -> Option<u64> {
    match v {
        SimpleValue::Ubyte(i) => Some(u64::from(*i)),
        SimpleValue::Ushort(i) => Some(u64::from(*i)),
        SimpleValue::Uint(i) => Some(u64::from(*i)),
        SimpleValue::Ulong(i) => Some(*i),
        SimpleValue::Byte(i) => u64::try_from(*i).ok(),
        SimpleValue::Short(i) => u64::try_from(*i).ok(),
        SimpleValue::Int(i) => u64::try_from(*i).ok(),
        SimpleValue::Long(i) => u64::try_from(*i).ok(),
        SimpleValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn decode(message: Message<Body<Value>>) -> (Request, Option<String>, Option<MessageId>) {
    let props = message
        .application_properties
        .map(|a| a.0)
        .unwrap_or_default();
    let get = |k: &str| props.get(k).and_then(simple_string);
    let req = Request {
        operation: get("operation").unwrap_or_default(),
        type_: get("type"),
        name: get("name"),
        identity: get("identity"),
        entity_type: get("entityType"),
        offset: props.get("offset").and_then(simple_u64),
        count: props.get("count").and_then(simple_u64),
        body: match message.body {
            Body::Value(v) => v.0,
            _ => Value::Null,
        },
    };
    let (reply_to, correlation_id) = match message.properties {
        Some(p) => (p.reply_to, p.correlation_id),
        None => (None, None),
    };
    (req, reply_to, correlation_id)
}

fn encode(out: &Outgoing) -> Message<Body<Value>> {
    // GUESS (e2e/GUESSES.md #8): Python-agent replies put statusCode first
    // frames.txt:82: statusDescription then statusCode (int32); header durable=false; to + correlation-id.
    let app = ApplicationProperties::builder()
        .insert(
            "statusDescription",
            SimpleValue::String(out.reply.description.clone()),
        )
        .insert("statusCode", SimpleValue::Int(out.reply.code))
        .build();
    let properties = Properties {
        to: Some(out.reply_to.clone()),
        correlation_id: out.correlation_id.clone(),
        ..Default::default()
    };
    Message::builder()
        .header(Header::default())
        .properties(properties)
        .application_properties(app)
        .body(Body::Value(AmqpValue(out.reply.body.clone())))
        .build()
}

/// A dynamic reply address as qdrouterd hands them out: `amqp:/_topo/0/<router id>/temp.<15 random>`.
// GUESS (e2e/GUESSES.md #6): alphanumerics only (real: a-zA-Z0-9+_)
fn dynamic_address(router_id: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(15)
        .map(char::from)
        .collect();
    format!("amqp:/_topo/0/{router_id}/temp.{suffix}")
}

/// Removes `address`'s route if it is still the one `tx` feeds (not a newer link's).
fn remove_route(ctx: &Ctx, address: &str, tx: &mpsc::UnboundedSender<Outgoing>) {
    let mut routes = ctx.shared.routes();
    if routes.get(address).is_some_and(|t| t.same_channel(tx)) {
        routes.remove(address);
    }
}

/// A link's reply route: its address, the sending half registered in the route table, the receiving half.
type Route = (
    String,
    mpsc::UnboundedSender<Outgoing>,
    mpsc::UnboundedReceiver<Outgoing>,
);

/// Owns a link the client receives on (its reply route registered before the attach was answered): sends
/// the replies routed to it pre-settled, and removes the route when the link or connection goes.
async fn reply_sender(
    mut sender: Sender,
    (address, tx, mut rx): Route,
    ctx: Ctx,
    mut gone: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    'outer: loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => if n == 0 { break },
            _ = gone.changed() => break,
        }
        for out in batch.drain(..) {
            let message = encode(&out);
            let sendable = Sendable::builder().message(message).settled(true).build();
            let sent = tokio::select! {
                r = sender.send_batchable(sendable) => r,
                _ = gone.changed() => break 'outer,
            };
            if let Err(e) = sent {
                tracing::debug!(error = ?e, "reply link ended");
                break 'outer;
            }
            drop(out.permit);
        }
    }
    remove_route(&ctx, &address, &tx);
    drop(tx);
    rx.close();
    let mut lost = 0usize;
    while rx.try_recv().is_ok() {
        lost += 1;
    }
    if lost > 0 {
        tracing::warn!(reply_to = %address, lost, "reply link gone with management replies not sent");
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), sender.close()).await;
}
