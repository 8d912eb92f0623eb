//! The generic AMQP request/response client both management clients are built on: a sender to one
//! node (qdrouterd `$management`, Artemis `activemq.management`), a receiver with a DYNAMIC source
//! whose peer-assigned address is every request's `reply-to`, a unique ulong `correlation-id` per
//! request, and replies matched back by correlation-id (both peers echo it).
//!
//! This module knows nothing of either management protocol: a request is application properties
//! plus an amqp-value body, a [`Response`] is the reply's application properties plus its body.
//! The typed layers ([`crate::router::RouterClient`], [`crate::artemis::ArtemisClient`]) build the
//! properties and interpret the replies.
//!
//! Concurrency: a semaphore bounds the requests in flight (the window; also the credit granted to
//! the reply receiver); one task sends (`send_batchable`), another receives, so neither waits on
//! the other (one task doing both deadlocks against qdrouterd at large windows). Each request has
//! its own timeout.
//!
//! Failure: when the connection dies (peer closes, I/O error, idle timeout, a send or receive
//! fails) every pending request fails with [`RequestError::Disconnected`], the client is marked
//! closed and [`RequestClient::closed`] resolves. The client never reconnects by itself: callers
//! wait for `closed()`, then connect again with [`crate::options::Backoff`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::{CreditMode, RecvError};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties, Source, Target,
};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Sender, Session};
use serde_json::Value as Json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::connect::open_connection;
use crate::options::ConnectOptions;

/// Tuning of a request client (shared by [`crate::router::RouterClient`] and
/// [`crate::artemis::ArtemisClient`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Most requests in flight at once; also the credit granted to the reply receiver. The router
    /// grants 250 credit on `$management`, so more than 250 only queues in our sender.
    pub window: usize,
    /// How long one request waits for its reply once sent (the real router never answers
    /// UPDATE, and a QUERY deep into a large table can take seconds).
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    /// Window 250, 10 s per request.
    fn default() -> Self {
        ClientConfig {
            window: 250,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request got no reply (the typed layers add what the request was about).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// No reply within the request timeout.
    #[error("no reply within {after:?}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The connection went away before the reply came (or was already gone).
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The connection (or the request/reply links) could not be set up.
    #[error("cannot open connection: {0}")]
    Connect(String),
    /// The reply matched a request but cannot be interpreted (e.g. a body that is not an
    /// amqp-value).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A reply as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The reply's application properties (empty when it had none).
    pub application_properties: ApplicationProperties,
    /// The amqp-value body; `Value::Null` when the reply had no body section.
    pub body: Value,
}

impl Response {
    /// The body as JSON (see [`crate::value::amqp_to_json`]).
    pub fn body_json(&self) -> Json {
        crate::value::amqp_to_json(self.body.clone())
    }
}

type Waiter = oneshot::Sender<Result<Response, RequestError>>;
type PendingMap = HashMap<u64, Waiter>;

/// State shared by the client handles and the connection tasks.
struct Shared {
    /// correlation-id -> waiting request; `None` once the connection is gone, so no request can
    /// be registered after the final sweep.
    pending: Mutex<Option<PendingMap>>,
    /// Why the connection ended (first reason wins).
    close_reason: Mutex<Option<String>>,
    /// Cancelled when the connection is gone; wakes `closed()` and stops the tasks.
    gone: CancellationToken,
    /// Cancelled when the caller asks for a clean close (or drops the last handle).
    close_requested: CancellationToken,
    /// Bounds the requests in flight.
    window: Arc<Semaphore>,
}

impl Shared {
    /// Marks the connection gone and fails every pending request with `Disconnected`.
    fn shut_down(&self, reason: &str) {
        if let Ok(mut r) = self.close_reason.lock()
            && r.is_none()
        {
            *r = Some(reason.to_string());
        }
        let drained = self.pending.lock().ok().and_then(|mut p| p.take());
        self.window.close();
        self.gone.cancel();
        if let Some(map) = drained {
            if !map.is_empty() {
                tracing::warn!(
                    pending = map.len(),
                    reason,
                    "request connection lost with requests in flight"
                );
            }
            for (_, tx) in map {
                let _ = tx.send(Err(RequestError::Disconnected(reason.to_string())));
            }
        }
    }

    fn reason(&self) -> String {
        self.close_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "connection closed".to_string())
    }

    fn complete(&self, id: u64, reply: Result<Response, RequestError>) {
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&id)));
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(
                correlation_id = id,
                "reply for no pending request (timed out?)"
            ),
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock()
            && let Some(m) = p.as_mut()
        {
            m.remove(&id);
        }
    }
}

/// Owned by the [`RequestClient`] handles only; when the last one is dropped the connection is
/// closed.
struct Handle {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message<AmqpValue<Value>>>,
    node: String,
    reply_to: String,
    next_id: AtomicU64,
    cfg: ClientConfig,
    peer_properties: Option<serde_json::Map<String, Json>>,
    peer_container_id: Option<String>,
    /// Finishes when the connection task has closed the connection.
    done: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close_requested.cancel();
    }
}

/// A pipelined request/response client to one node over one AMQP connection. Cheap to clone;
/// all clones share the connection and the window. See the module docs for the failure model.
#[derive(Clone)]
pub struct RequestClient {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for RequestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestClient")
            .field("node", &self.handle.node)
            .field("reply_to", &self.handle.reply_to)
            .field("peer", &self.handle.peer_container_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl RequestClient {
    /// Connects (TCP, TLS, SASL, open within `opts.connect_timeout`), attaches a sender to `node`
    /// and the dynamic reply receiver (both within `opts.connect_timeout` too), and starts the
    /// send/receive tasks. The reply receiver's attach is complete and its credit granted (the flow
    /// queued on the session ahead of any request) before this returns, so the first request can be
    /// sent at once; a peer must route replies to an address it handed out in an attach.
    pub async fn connect(
        opts: &ConnectOptions,
        node: &str,
        cfg: ClientConfig,
    ) -> Result<RequestClient, RequestError> {
        if cfg.window == 0 {
            return Err(RequestError::Connect(
                "window must be at least 1".to_string(),
            ));
        }
        let opened = open_connection(opts)
            .await
            .map_err(|e| RequestError::Connect(e.to_string()))?;
        let mut connection = opened.connection;
        let peer = opts.to_string();
        let setup = async {
            let mut session = Session::begin(&mut connection)
                .await
                .map_err(|e| format!("begin session: {e}"))?;
            let sender = Sender::builder()
                .name(format!("{}-{node}", opts.container_id))
                .target(node)
                .attach(&mut session)
                .await
                .map_err(|e| format!("attach sender to {node}: {e}"))?;
            let credit = u32::try_from(cfg.window).unwrap_or(u32::MAX);
            let receiver = Receiver::builder()
                .name(format!("{}-replies", opts.container_id))
                .source(Source::builder().dynamic(true).build())
                .target(Target::builder().build())
                .credit_mode(CreditMode::Auto(credit))
                .auto_accept(true)
                .attach(&mut session)
                .await
                .map_err(|e| format!("attach dynamic reply receiver: {e}"))?;
            let reply_to = receiver
                .source()
                .as_ref()
                .and_then(|s| s.address.clone())
                .ok_or("the peer assigned no address to the dynamic reply receiver")?;
            Ok::<_, String>((session, sender, receiver, reply_to))
        };
        let (session, sender, receiver, reply_to) =
            match tokio::time::timeout(opts.connect_timeout, setup).await {
                Ok(Ok(parts)) => parts,
                Ok(Err(reason)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
                    return Err(RequestError::Connect(format!("{peer}: {reason}")));
                }
                Err(_) => {
                    return Err(RequestError::Connect(format!(
                        "{peer}: links to {node} not attached within {:?}",
                        opts.connect_timeout
                    )));
                }
            };
        tracing::debug!(
            peer = %peer,
            container = opened.peer_container_id.as_deref().unwrap_or("?"),
            node,
            reply_to = %reply_to,
            window = cfg.window,
            "request connection open"
        );

        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            close_reason: Mutex::new(None),
            gone: CancellationToken::new(),
            close_requested: CancellationToken::new(),
            window: Arc::new(Semaphore::new(cfg.window)),
        });
        let (tx, rx) = mpsc::channel(cfg.window);
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(send_task(sender, rx, shared.clone()));
        tokio::spawn(recv_task(receiver, shared.clone()));
        tokio::spawn(connection_task(
            connection,
            session,
            shared.clone(),
            done_tx,
        ));

        Ok(RequestClient {
            handle: Arc::new(Handle {
                shared,
                tx,
                node: node.to_string(),
                reply_to,
                next_id: AtomicU64::new(1),
                cfg,
                peer_properties: opened.peer_properties,
                peer_container_id: opened.peer_container_id,
                done: done_rx,
            }),
        })
    }

    /// Sends one request (these application properties, an amqp-value `body`, our `reply-to`, a
    /// fresh ulong `correlation-id`) and waits for the reply carrying that correlation-id, at most
    /// [`ClientConfig::request_timeout`] once sent. Waits first for a window slot.
    pub async fn request(
        &self,
        application_properties: ApplicationProperties,
        body: Value,
    ) -> Result<Response, RequestError> {
        let h = &self.handle;
        let shared = &h.shared;
        let _permit = shared
            .window
            .acquire()
            .await
            .map_err(|_| RequestError::Disconnected(shared.reason()))?;
        let id = h.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = shared
                .pending
                .lock()
                .map_err(|_| RequestError::Disconnected("client state poisoned".to_string()))?;
            match pending.as_mut() {
                Some(map) => {
                    map.insert(id, reply_tx);
                }
                None => return Err(RequestError::Disconnected(shared.reason())),
            }
        }
        let message = build_request(application_properties, body, &h.reply_to, id);
        if h.tx.send(message).await.is_err() {
            shared.forget(id);
            return Err(RequestError::Disconnected(shared.reason()));
        }
        match tokio::time::timeout(h.cfg.request_timeout, reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RequestError::Disconnected(shared.reason())),
            Err(_) => {
                shared.forget(id);
                Err(RequestError::Timeout {
                    after: h.cfg.request_timeout,
                })
            }
        }
    }

    /// The node requests go to.
    pub fn node(&self) -> &str {
        &self.handle.node
    }

    /// The configuration the client was opened with.
    pub fn config(&self) -> ClientConfig {
        self.handle.cfg
    }

    /// The `properties` of the peer's `open` frame (qdrouterd: `product`, `version`).
    pub fn peer_properties(&self) -> Option<serde_json::Map<String, Json>> {
        self.handle.peer_properties.clone()
    }

    /// The peer's container id.
    pub fn peer_container_id(&self) -> Option<&str> {
        self.handle.peer_container_id.as_deref()
    }

    /// The dynamic address replies come to (as the peer assigned it).
    pub fn reply_to(&self) -> &str {
        &self.handle.reply_to
    }

    /// Requests sent and not yet answered (or timed out).
    pub fn in_flight(&self) -> usize {
        self.handle
            .shared
            .pending
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(HashMap::len))
            .unwrap_or(0)
    }

    /// True once the connection is gone; every further request fails with `Disconnected`.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.gone.is_cancelled()
    }

    /// Resolves once the connection is gone (peer closed, I/O error, idle timeout, or `close`).
    pub async fn closed(&self) {
        self.handle.shared.gone.cancelled().await;
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        if self.is_closed() {
            Some(self.handle.shared.reason())
        } else {
            None
        }
    }

    /// Closes the connection cleanly (for every clone): pending requests fail with
    /// `Disconnected`; waits up to 2 s for the peer to confirm.
    pub async fn close(self) {
        self.handle.shared.close_requested.cancel();
        let mut done = self.handle.done.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), done.wait_for(|d| *d)).await;
    }
}

/// Builds one request message: the caller's application properties and body, our reply-to and a
/// ulong correlation-id.
pub(crate) fn build_request(
    application_properties: ApplicationProperties,
    body: Value,
    reply_to: &str,
    id: u64,
) -> Message<AmqpValue<Value>> {
    let properties = Properties::builder()
        .reply_to(reply_to.to_string())
        .correlation_id(MessageId::Ulong(id))
        .build();
    Message::builder()
        .properties(properties)
        .application_properties(application_properties)
        .body(AmqpValue(body))
        .build()
}

/// Sends queued requests without waiting for their settlement (the reply is the answer).
async fn send_task(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Message<AmqpValue<Value>>>,
    shared: Arc<Shared>,
) {
    loop {
        let message = tokio::select! {
            _ = shared.gone.cancelled() => break,
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        // Waiting for link credit must not outlive the connection.
        let sent = tokio::select! {
            _ = shared.gone.cancelled() => break,
            r = sender.send_batchable(message) => r,
        };
        if let Err(e) = sent {
            shared.shut_down(&format!("sending a request failed: {e}"));
            break;
        }
    }
    if !shared.gone.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_secs(1), sender.close()).await;
    }
}

/// Receives replies and hands each to the request waiting for its correlation-id.
async fn recv_task(mut receiver: Receiver, shared: Arc<Shared>) {
    loop {
        let delivery = tokio::select! {
            _ = shared.gone.cancelled() => break,
            d = receiver.recv::<Body<Value>>() => d,
        };
        match delivery {
            Ok(delivery) => {
                let message = delivery.into_message();
                match parse_reply(message) {
                    Ok((id, reply)) => shared.complete(id, reply),
                    Err(e) => tracing::warn!(error = %e, "ignoring a reply"),
                }
            }
            Err(RecvError::MessageDecode(e)) => {
                tracing::warn!(error = %e, "ignoring an undecodable reply");
            }
            Err(e) => {
                shared.shut_down(&format!("reply link failed: {e}"));
                break;
            }
        }
    }
}

/// Owns the connection and session: notices when the connection ends, and closes it on request.
async fn connection_task(
    mut connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    mut session: fe2o3_amqp::session::SessionHandle<()>,
    shared: Arc<Shared>,
    done: tokio::sync::watch::Sender<bool>,
) {
    tokio::select! {
        result = connection.on_close() => {
            let reason = match result {
                Ok(()) => "peer closed the connection".to_string(),
                Err(e) => format!("connection ended: {e}"),
            };
            tracing::warn!(reason = %reason, "request connection lost");
            shared.shut_down(&reason);
        }
        _ = shared.gone.cancelled() => {
            // A link task failed: drop the connection too.
            let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
        }
        _ = shared.close_requested.cancelled() => {
            shared.shut_down("client closed");
            let _ = tokio::time::timeout(Duration::from_secs(1), session.end()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
            tracing::debug!("request connection closed");
        }
    }
    let _ = done.send(true);
}

/// Our correlation-ids are ulongs; accept them back as a ulong, as decimal text, or in Artemis'
/// `AMQP_ULONG:<n>` encoding of a ulong id carried through a core message.
fn correlation_id(id: &MessageId) -> Result<u64, String> {
    match id {
        MessageId::Ulong(id) => Ok(*id),
        MessageId::String(s) => s
            .strip_prefix("AMQP_ULONG:")
            .unwrap_or(s)
            .parse()
            .map_err(|_| format!("correlation-id {s:?} is not ours")),
        other => Err(format!("correlation-id {other:?} is not ours")),
    }
}

/// The correlation-id of a reply (`Err` when it cannot be ours, so nobody waits for it) and the
/// reply, or why its body cannot be used (delivered to the waiting request).
type ParsedReply = (u64, Result<Response, RequestError>);

fn parse_reply(message: Message<Body<Value>>) -> Result<ParsedReply, String> {
    let id = match message
        .properties
        .as_ref()
        .and_then(|p| p.correlation_id.as_ref())
    {
        Some(id) => correlation_id(id)?,
        None => return Err("reply without correlation-id".to_string()),
    };
    let application_properties = message.application_properties.unwrap_or_default();
    let body = match message.body {
        Body::Value(AmqpValue(v)) => Ok(v),
        Body::Empty => Ok(Value::Null),
        Body::Data(_) => Err("a data section"),
        Body::Sequence(_) => Err("an amqp-sequence section"),
        #[allow(unreachable_patterns)]
        _ => Err("not an amqp-value"),
    };
    let reply = match body {
        Ok(body) => Ok(Response {
            application_properties,
            body,
        }),
        Err(kind) => Err(RequestError::Protocol(format!(
            "reply body is {kind}, not an amqp-value"
        ))),
    };
    Ok((id, reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::primitives::SimpleValue;

    #[test]
    fn request_carries_reply_to_correlation_id_properties_and_body() {
        let props = ApplicationProperties::builder()
            .insert("operation", SimpleValue::String("QUERY".into()))
            .build();
        let m = build_request(props, Value::String("[]".into()), "temp.x", 7);
        let p = m.properties.as_ref().unwrap();
        assert_eq!(p.reply_to.as_deref(), Some("temp.x"));
        assert_eq!(p.correlation_id, Some(MessageId::Ulong(7)));
        assert_eq!(
            m.application_properties
                .as_ref()
                .unwrap()
                .0
                .get("operation"),
            Some(&SimpleValue::String("QUERY".into()))
        );
        assert_eq!(m.body.0, Value::String("[]".into()));
    }

    #[test]
    fn correlation_ids_in_every_echoed_form() {
        assert_eq!(correlation_id(&MessageId::Ulong(3)), Ok(3));
        assert_eq!(correlation_id(&MessageId::String("42".into())), Ok(42));
        assert_eq!(
            correlation_id(&MessageId::String("AMQP_ULONG:9".into())),
            Ok(9)
        );
        assert!(correlation_id(&MessageId::String("x".into())).is_err());
    }

    #[test]
    fn replies_without_usable_body_fail_the_request_not_the_link() {
        let reply = Message::builder()
            .properties(
                Properties::builder()
                    .correlation_id(MessageId::Ulong(5))
                    .build(),
            )
            .body(Body::<Value>::Sequence(vec![].into()))
            .build();
        let (id, reply) = parse_reply(reply).unwrap();
        assert_eq!(id, 5);
        assert!(matches!(reply, Err(RequestError::Protocol(_))));
        let empty: Message<Body<Value>> = Message::builder()
            .properties(
                Properties::builder()
                    .correlation_id(MessageId::Ulong(6))
                    .build(),
            )
            .body(Body::Empty)
            .build();
        let (_, reply) = parse_reply(empty).unwrap();
        assert_eq!(reply.unwrap().body, Value::Null);
    }
}
