//! The qdrouterd `$management` client: CREATE / READ / DELETE / QUERY (paged) / UPDATE and the
//! management-node operations, pipelined over one connection.
//!
//! Wire shape (see `shared/reference/qdrouterd-1.19.0/frames.txt`): a sender to `$management`, a
//! receiver with a DYNAMIC source whose router-assigned address is every request's `reply-to`;
//! application properties `operation`, `type`, `name` (strings; QUERY adds `entityType`,
//! `offset` as uint and `count` as ulong), an amqp-value map body, a unique ulong
//! `correlation-id` per request. Replies (pre-settled, `statusCode` int32, `statusDescription`)
//! are matched to requests by correlation-id.
//!
//! Concurrency: a semaphore bounds the requests in flight (the window); one task sends
//! (`send_batchable`), another receives, so neither waits on the other (one task doing both
//! deadlocks against the router at large windows). Each request has its own timeout.
//!
//! Failure: when the connection dies (peer closes, I/O error, idle timeout, a send or receive
//! fails) every pending request fails with [`MgmtError::Disconnected`], the client is marked
//! closed and [`RouterClient::closed`] resolves. The client never reconnects by itself: callers
//! wait for `closed()`, then connect again with [`crate::options::Backoff`] and replay what the
//! router lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::{CreditMode, RecvError};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties, Source, Target,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use serde_json::Value as Json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::connect::open_connection;
use crate::options::ConnectOptions;
use crate::value::{amqp_to_json, json_map_to_amqp};

/// Address of the router's management node.
pub const MANAGEMENT_ADDRESS: &str = "$management";
/// `type` of node-level requests (QUERY, GET-TYPES, ...).
pub const MANAGEMENT_TYPE: &str = "org.amqp.management";
/// `name` of node-level requests.
pub const MANAGEMENT_SELF: &str = "self";
/// Rows asked per QUERY page by [`RouterClient::query`] (what qdmanage asks).
pub const QUERY_PAGE_SIZE: u64 = 500;

/// Tuning of a [`RouterClient`].
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

/// A failed management request or connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MgmtError {
    /// The router answered with a non-2xx `statusCode`.
    #[error("{operation} {entity_type} {name:?} failed: {code} {description}")]
    Status {
        /// CREATE, READ, DELETE, QUERY, ...
        operation: String,
        /// Full entity type (for QUERY the queried `entityType`).
        entity_type: String,
        /// Entity name (`self` for node-level requests).
        name: String,
        /// The router's `statusCode`.
        code: i32,
        /// The router's `statusDescription`.
        description: String,
    },
    /// No reply within the request timeout.
    #[error("{operation} {entity_type} {name:?}: no reply within {after:?}")]
    Timeout {
        /// Operation of the request.
        operation: String,
        /// Entity type of the request.
        entity_type: String,
        /// Entity name of the request.
        name: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The connection went away before the reply came (or was already gone).
    #[error("management connection lost: {0}")]
    Disconnected(String),
    /// The connection (or the management links) could not be set up.
    #[error("cannot open management connection: {0}")]
    Connect(String),
    /// The peer sent something this client cannot interpret.
    #[error("management protocol error: {0}")]
    Protocol(String),
}

impl MgmtError {
    /// A short, fixed label for metrics: `bad_request` (400), `not_found` (404),
    /// `not_implemented` (501), `status` (other codes), `timeout`, `disconnected`, `connect`,
    /// `protocol`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            MgmtError::Status { code: 400, .. } => "bad_request",
            MgmtError::Status { code: 404, .. } => "not_found",
            MgmtError::Status { code: 501, .. } => "not_implemented",
            MgmtError::Status { .. } => "status",
            MgmtError::Timeout { .. } => "timeout",
            MgmtError::Disconnected(_) => "disconnected",
            MgmtError::Connect(_) => "connect",
            MgmtError::Protocol(_) => "protocol",
        }
    }

    /// The router's status code, for [`MgmtError::Status`].
    pub fn status_code(&self) -> Option<i32> {
        match self {
            MgmtError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the connection is (probably) unusable and the caller should reconnect:
    /// `Disconnected`, `Connect` and `Timeout` (a router that stops answering is treated like a
    /// lost one).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            MgmtError::Disconnected(_) | MgmtError::Connect(_) | MgmtError::Timeout { .. }
        )
    }
}

/// One page of a QUERY reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryPage {
    /// The attribute names the router returned (the columns of `rows`; all attributes when none
    /// were asked for).
    pub attribute_names: Vec<String>,
    /// One row per entity, values in `attribute_names` order.
    pub rows: Vec<Vec<Json>>,
}

/// A successful (2xx) management reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `statusCode` (200, 201, 204).
    pub status_code: i32,
    /// `statusDescription`.
    pub status_description: String,
    /// The amqp-value body as JSON (null when absent).
    pub body: Json,
}

/// A reply as it comes off the wire (any status).
struct RawReply {
    status_code: i32,
    status_description: String,
    body: Json,
}

/// What the send task needs for one request.
struct Outgoing {
    message: Message<AmqpValue<Value>>,
}

type PendingMap = HashMap<u64, oneshot::Sender<Result<RawReply, MgmtError>>>;

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
                    "management connection lost with requests in flight"
                );
            }
            for (_, tx) in map {
                let _ = tx.send(Err(MgmtError::Disconnected(reason.to_string())));
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

    fn complete(&self, id: u64, reply: RawReply) {
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&id)));
        match waiter {
            Some(tx) => {
                let _ = tx.send(Ok(reply));
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

/// Owned by the [`RouterClient`] handles only; when the last one is dropped the connection is
/// closed.
struct Handle {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
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

/// A qdrouterd `$management` client over one AMQP connection. Cheap to clone; all clones share
/// the connection and the window. See the module docs for the failure model (no reconnect inside).
#[derive(Clone)]
pub struct RouterClient {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for RouterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterClient")
            .field("reply_to", &self.handle.reply_to)
            .field("peer", &self.handle.peer_container_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl RouterClient {
    /// Connects (TCP, TLS, SASL, open within `opts.connect_timeout`), attaches the `$management`
    /// sender and the dynamic reply receiver, and starts the send/receive tasks.
    pub async fn connect(
        opts: &ConnectOptions,
        cfg: ClientConfig,
    ) -> Result<RouterClient, MgmtError> {
        if cfg.window == 0 {
            return Err(MgmtError::Connect("window must be at least 1".to_string()));
        }
        let opened = open_connection(opts)
            .await
            .map_err(|e| MgmtError::Connect(e.to_string()))?;
        let mut connection = opened.connection;
        let peer = opts.to_string();
        let setup = async {
            let mut session = Session::begin(&mut connection)
                .await
                .map_err(|e| format!("begin session: {e}"))?;
            let sender = Sender::builder()
                .name(format!("{}-$management", opts.container_id))
                .target(MANAGEMENT_ADDRESS)
                .attach(&mut session)
                .await
                .map_err(|e| format!("attach sender to {MANAGEMENT_ADDRESS}: {e}"))?;
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
                    return Err(MgmtError::Connect(format!("{peer}: {reason}")));
                }
                Err(_) => {
                    return Err(MgmtError::Connect(format!(
                        "{peer}: management links not attached within {:?}",
                        opts.connect_timeout
                    )));
                }
            };
        tracing::debug!(
            peer = %peer,
            router = opened.peer_container_id.as_deref().unwrap_or("?"),
            reply_to = %reply_to,
            window = cfg.window,
            "management connection open"
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

        Ok(RouterClient {
            handle: Arc::new(Handle {
                shared,
                tx,
                reply_to,
                next_id: AtomicU64::new(1),
                cfg,
                peer_properties: opened.peer_properties,
                peer_container_id: opened.peer_container_id,
                done: done_rx,
            }),
        })
    }

    /// CREATE an entity. `attributes` are sent as the body together with `name`; the reply body
    /// (the entity as the router stored it, status 201) is returned.
    pub async fn create(
        &self,
        entity_type: &str,
        name: &str,
        attributes: serde_json::Map<String, Json>,
    ) -> Result<serde_json::Map<String, Json>, MgmtError> {
        let mut body = attributes;
        body.insert("name".to_string(), Json::String(name.to_string()));
        let reply = self.call("CREATE", entity_type, name, &[], body).await?;
        Ok(into_map(reply.body))
    }

    /// READ an entity by name; `None` when the router answers 404.
    pub async fn read(
        &self,
        entity_type: &str,
        name: &str,
    ) -> Result<Option<serde_json::Map<String, Json>>, MgmtError> {
        match self
            .call("READ", entity_type, name, &[], serde_json::Map::new())
            .await
        {
            Ok(reply) => Ok(Some(into_map(reply.body))),
            Err(MgmtError::Status { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DELETE an entity by name (204). A missing entity is `Err(Status { code: 404 })`.
    pub async fn delete(&self, entity_type: &str, name: &str) -> Result<(), MgmtError> {
        self.call("DELETE", entity_type, name, &[], serde_json::Map::new())
            .await
            .map(|_| ())
    }

    /// UPDATE an entity. Note: qdrouterd 1.x never answers UPDATE of `router.config.*`
    /// entities, so against a real router this ends in [`MgmtError::Timeout`]; change entities
    /// with DELETE then CREATE instead.
    pub async fn update(
        &self,
        entity_type: &str,
        name: &str,
        attributes: serde_json::Map<String, Json>,
    ) -> Result<serde_json::Map<String, Json>, MgmtError> {
        let mut body = attributes;
        body.insert("name".to_string(), Json::String(name.to_string()));
        let reply = self.call("UPDATE", entity_type, name, &[], body).await?;
        Ok(into_map(reply.body))
    }

    /// One QUERY page: `count` entities of `entity_type` from `offset`, with the given attributes
    /// (all attributes when empty).
    pub async fn query_page(
        &self,
        entity_type: &str,
        attribute_names: &[&str],
        offset: u32,
        count: u64,
    ) -> Result<QueryPage, MgmtError> {
        let mut body = serde_json::Map::new();
        body.insert(
            "attributeNames".to_string(),
            Json::Array(
                attribute_names
                    .iter()
                    .map(|a| Json::String(a.to_string()))
                    .collect(),
            ),
        );
        let extra = [
            ("entityType", SimpleValue::String(entity_type.to_string())),
            ("offset", SimpleValue::Uint(offset)),
            ("count", SimpleValue::Ulong(count)),
        ];
        let reply = self
            .request(
                "QUERY",
                MANAGEMENT_TYPE,
                MANAGEMENT_SELF,
                entity_type,
                &extra,
                body,
            )
            .await?;
        parse_query_page(reply.body)
    }

    /// QUERY every entity of `entity_type`, in pages of [`QUERY_PAGE_SIZE`] until a page comes
    /// back short; each row is zipped with the attribute names the router returned.
    pub async fn query(
        &self,
        entity_type: &str,
        attribute_names: &[&str],
    ) -> Result<Vec<serde_json::Map<String, Json>>, MgmtError> {
        let mut out = Vec::new();
        let mut offset: u32 = 0;
        loop {
            let page = self
                .query_page(entity_type, attribute_names, offset, QUERY_PAGE_SIZE)
                .await?;
            let got = page.rows.len();
            for row in page.rows {
                out.push(page.attribute_names.iter().cloned().zip(row).collect());
            }
            if (got as u64) < QUERY_PAGE_SIZE {
                return Ok(out);
            }
            offset = u32::try_from(got)
                .ok()
                .and_then(|g| offset.checked_add(g))
                .ok_or_else(|| MgmtError::Protocol("QUERY offset overflow".to_string()))?;
        }
    }

    /// GET-OPERATIONS: entity type -> operations the router supports.
    pub async fn get_operations(&self) -> Result<Json, MgmtError> {
        self.node_call("GET-OPERATIONS").await
    }

    /// GET-TYPES: entity type -> its base types.
    pub async fn get_types(&self) -> Result<Json, MgmtError> {
        self.node_call("GET-TYPES").await
    }

    /// GET-MGMT-NODES: the management node addresses of the router network.
    pub async fn get_mgmt_nodes(&self) -> Result<Json, MgmtError> {
        self.node_call("GET-MGMT-NODES").await
    }

    async fn node_call(&self, operation: &str) -> Result<Json, MgmtError> {
        self.call(
            operation,
            MANAGEMENT_TYPE,
            MANAGEMENT_SELF,
            &[],
            serde_json::Map::new(),
        )
        .await
        .map(|r| r.body)
    }

    /// Sends any management request: application properties `operation`, `type`, `name` plus
    /// `extra_properties` (string values), body `body`. Non-2xx replies are `Err(Status)`.
    pub async fn call(
        &self,
        operation: &str,
        entity_type: &str,
        name: &str,
        extra_properties: &[(&str, &str)],
        body: serde_json::Map<String, Json>,
    ) -> Result<Reply, MgmtError> {
        let extra: Vec<(&str, SimpleValue)> = extra_properties
            .iter()
            .map(|(k, v)| (*k, SimpleValue::String(v.to_string())))
            .collect();
        self.request(operation, entity_type, name, entity_type, &extra, body)
            .await
    }

    /// The `properties` of the router's `open` frame (qdrouterd: `product`, `version`).
    pub fn peer_properties(&self) -> Option<serde_json::Map<String, Json>> {
        self.handle.peer_properties.clone()
    }

    /// The router's container id (its router id, e.g. `Router.A`).
    pub fn peer_container_id(&self) -> Option<&str> {
        self.handle.peer_container_id.as_deref()
    }

    /// The dynamic address replies come to.
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

    async fn request(
        &self,
        operation: &str,
        type_property: &str,
        name: &str,
        entity_type_for_errors: &str,
        extra: &[(&str, SimpleValue)],
        body: serde_json::Map<String, Json>,
    ) -> Result<Reply, MgmtError> {
        let h = &self.handle;
        let shared = &h.shared;
        let _permit = shared
            .window
            .acquire()
            .await
            .map_err(|_| MgmtError::Disconnected(shared.reason()))?;
        let id = h.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = shared
                .pending
                .lock()
                .map_err(|_| MgmtError::Disconnected("client state poisoned".to_string()))?;
            match pending.as_mut() {
                Some(map) => {
                    map.insert(id, reply_tx);
                }
                None => return Err(MgmtError::Disconnected(shared.reason())),
            }
        }
        let message = build_request(
            operation,
            type_property,
            name,
            extra,
            &body,
            &h.reply_to,
            id,
        );
        if h.tx.send(Outgoing { message }).await.is_err() {
            shared.forget(id);
            return Err(MgmtError::Disconnected(shared.reason()));
        }
        let raw = match tokio::time::timeout(h.cfg.request_timeout, reply_rx).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(MgmtError::Disconnected(shared.reason())),
            Err(_) => {
                shared.forget(id);
                return Err(MgmtError::Timeout {
                    operation: operation.to_string(),
                    entity_type: entity_type_for_errors.to_string(),
                    name: name.to_string(),
                    after: h.cfg.request_timeout,
                });
            }
        };
        if (200..300).contains(&raw.status_code) {
            Ok(Reply {
                status_code: raw.status_code,
                status_description: raw.status_description,
                body: raw.body,
            })
        } else {
            Err(MgmtError::Status {
                operation: operation.to_string(),
                entity_type: entity_type_for_errors.to_string(),
                name: name.to_string(),
                code: raw.status_code,
                description: raw.status_description,
            })
        }
    }
}

/// Builds one request message exactly as qdmanage does (frames.txt), but with a ulong
/// correlation-id.
fn build_request(
    operation: &str,
    type_property: &str,
    name: &str,
    extra: &[(&str, SimpleValue)],
    body: &serde_json::Map<String, Json>,
    reply_to: &str,
    id: u64,
) -> Message<AmqpValue<Value>> {
    let mut props = ApplicationProperties::builder()
        .insert("operation", SimpleValue::String(operation.to_string()))
        .insert("type", SimpleValue::String(type_property.to_string()))
        .insert("name", SimpleValue::String(name.to_string()));
    for (k, v) in extra {
        props = props.insert(*k, v.clone());
    }
    let properties = Properties::builder()
        .reply_to(reply_to.to_string())
        .correlation_id(MessageId::Ulong(id))
        .build();
    Message::builder()
        .properties(properties)
        .application_properties(props.build())
        .body(AmqpValue(Value::Map(json_map_to_amqp(body))))
        .build()
}

/// Sends queued requests without waiting for their settlement (the reply is the answer).
async fn send_task(mut sender: Sender, mut rx: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    loop {
        let outgoing = tokio::select! {
            _ = shared.gone.cancelled() => break,
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        // Waiting for link credit must not outlive the connection.
        let sent = tokio::select! {
            _ = shared.gone.cancelled() => break,
            r = sender.send_batchable(outgoing.message) => r,
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
                    Err(e) => tracing::warn!(error = %e, "ignoring a management reply"),
                }
            }
            Err(RecvError::MessageDecode(e)) => {
                tracing::warn!(error = %e, "ignoring an undecodable management reply");
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
            tracing::warn!(reason = %reason, "management connection lost");
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
            tracing::debug!("management connection closed");
        }
    }
    let _ = done.send(true);
}

fn parse_reply(message: Message<Body<Value>>) -> Result<(u64, RawReply), String> {
    let id = match message
        .properties
        .as_ref()
        .and_then(|p| p.correlation_id.as_ref())
    {
        Some(MessageId::Ulong(id)) => *id,
        Some(MessageId::String(s)) => s
            .parse()
            .map_err(|_| format!("correlation-id {s:?} is not ours"))?,
        Some(other) => return Err(format!("correlation-id {other:?} is not ours")),
        None => return Err("reply without correlation-id".to_string()),
    };
    let props = message
        .application_properties
        .as_ref()
        .ok_or("reply without application properties")?;
    let status_code = props
        .0
        .get("statusCode")
        .and_then(simple_to_i32)
        .ok_or("reply without an integer statusCode")?;
    let status_description = match props.0.get("statusDescription") {
        Some(SimpleValue::String(s)) => s.clone(),
        Some(SimpleValue::Symbol(s)) => s.0.clone(),
        _ => String::new(),
    };
    let body = match message.body {
        Body::Value(AmqpValue(v)) => amqp_to_json(v),
        Body::Empty => Json::Null,
        _ => return Err("reply body is not an amqp-value".to_string()),
    };
    Ok((
        id,
        RawReply {
            status_code,
            status_description,
            body,
        },
    ))
}

fn simple_to_i32(v: &SimpleValue) -> Option<i32> {
    match v {
        SimpleValue::Int(n) => Some(*n),
        SimpleValue::Byte(n) => Some((*n).into()),
        SimpleValue::Short(n) => Some((*n).into()),
        SimpleValue::Ubyte(n) => Some((*n).into()),
        SimpleValue::Ushort(n) => Some((*n).into()),
        SimpleValue::Uint(n) => i32::try_from(*n).ok(),
        SimpleValue::Long(n) => i32::try_from(*n).ok(),
        SimpleValue::Ulong(n) => i32::try_from(*n).ok(),
        _ => None,
    }
}

fn into_map(body: Json) -> serde_json::Map<String, Json> {
    match body {
        Json::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn parse_query_page(body: Json) -> Result<QueryPage, MgmtError> {
    let Json::Object(mut map) = body else {
        return Err(MgmtError::Protocol(
            "QUERY reply body is not a map".to_string(),
        ));
    };
    let attribute_names = match map.remove("attributeNames") {
        Some(Json::Array(names)) => names
            .into_iter()
            .map(|n| match n {
                Json::String(s) => Ok(s),
                other => Err(MgmtError::Protocol(format!(
                    "attribute name {other} is not a string"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(MgmtError::Protocol(
                "QUERY reply has no attributeNames list".to_string(),
            ));
        }
    };
    let rows = match map.remove("results") {
        Some(Json::Array(rows)) => rows
            .into_iter()
            .map(|r| match r {
                Json::Array(cells) => Ok(cells),
                other => Err(MgmtError::Protocol(format!(
                    "QUERY result row {other} is not a list"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Json::Null) => Vec::new(),
        Some(_) => {
            return Err(MgmtError::Protocol(
                "QUERY results is not a list".to_string(),
            ));
        }
    };
    Ok(QueryPage {
        attribute_names,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_shape_matches_qdmanage() {
        let mut body = serde_json::Map::new();
        body.insert("attributeNames".into(), json!(["name"]));
        let extra = [
            (
                "entityType",
                SimpleValue::String("org.apache.qpid.dispatch.router.config.address".into()),
            ),
            ("offset", SimpleValue::Uint(0)),
            ("count", SimpleValue::Ulong(500)),
        ];
        let m = build_request(
            "QUERY",
            MANAGEMENT_TYPE,
            "self",
            &extra,
            &body,
            "amqp:/_topo/0/R/temp.x",
            7,
        );
        let p = m.properties.as_ref().unwrap();
        assert_eq!(p.reply_to.as_deref(), Some("amqp:/_topo/0/R/temp.x"));
        assert_eq!(p.correlation_id, Some(MessageId::Ulong(7)));
        let ap = &m.application_properties.as_ref().unwrap().0;
        assert_eq!(
            ap.get("operation"),
            Some(&SimpleValue::String("QUERY".into()))
        );
        assert_eq!(
            ap.get("type"),
            Some(&SimpleValue::String("org.amqp.management".into()))
        );
        assert_eq!(ap.get("name"), Some(&SimpleValue::String("self".into())));
        assert_eq!(ap.get("offset"), Some(&SimpleValue::Uint(0)));
        assert_eq!(ap.get("count"), Some(&SimpleValue::Ulong(500)));
        assert_eq!(
            amqp_to_json(m.body.0.clone()),
            json!({"attributeNames": ["name"]})
        );
    }

    #[test]
    fn error_labels_and_classes() {
        let status = |code| MgmtError::Status {
            operation: "CREATE".into(),
            entity_type: "t".into(),
            name: "n".into(),
            code,
            description: "d".into(),
        };
        assert_eq!(status(400).metric_label(), "bad_request");
        assert_eq!(status(404).metric_label(), "not_found");
        assert_eq!(status(501).metric_label(), "not_implemented");
        assert_eq!(status(500).metric_label(), "status");
        assert_eq!(status(404).status_code(), Some(404));
        assert!(!status(400).is_connection_error());
        assert!(MgmtError::Disconnected("x".into()).is_connection_error());
        assert!(MgmtError::Connect("x".into()).is_connection_error());
        let t = MgmtError::Timeout {
            operation: "UPDATE".into(),
            entity_type: "t".into(),
            name: "n".into(),
            after: Duration::from_secs(1),
        };
        assert!(t.is_connection_error());
        assert_eq!(t.metric_label(), "timeout");
        assert!(!MgmtError::Protocol("x".into()).is_connection_error());
        assert_eq!(status(400).to_string(), "CREATE t \"n\" failed: 400 d");
    }

    #[test]
    fn query_page_parsing() {
        let page = parse_query_page(
            json!({"attributeNames": ["name", "prefix"], "results": [["a", "b"]]}),
        )
        .unwrap();
        assert_eq!(page.attribute_names, vec!["name", "prefix"]);
        assert_eq!(page.rows, vec![vec![json!("a"), json!("b")]]);
        assert!(parse_query_page(json!({"results": []})).is_err());
        assert!(parse_query_page(json!(null)).is_err());
    }
}
