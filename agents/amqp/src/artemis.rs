//! The ActiveMQ Artemis `activemq.management` client: typed broker operations (getVersion,
//! createAddress, deleteAddress, createQueue (optionally with an owning `user`), destroyQueue,
//! getAddressNames, getQueueNames, listQueues of an address, queue getMessageCount and getUser) and a
//! raw [`ArtemisClient::call`], pipelined over one connection.
//!
//! Wire shape (recorded from Artemis 2.21, `docs/reference/artemis-2.21/management-transcript.txt`
//! and the `A-` lines of `observed-shapes.txt`): a sender to `activemq.management`, a receiver with
//! a DYNAMIC source (Artemis makes it a temporary queue named by a UUID) whose address is every
//! request's `reply-to`; application properties `_AMQ_ResourceName` (`broker`, `queue.<name>`,
//! `address.<name>`) and `_AMQ_OperationName` (strings); body an amqp-value STRING holding a JSON
//! array of the arguments; a ulong `correlation-id`, echoed by Artemis. The reply carries
//! `_AMQ_OperationSucceeded` (boolean) and an amqp-value string holding a JSON array: the result
//! (e.g. `["2.21.0.redhat-00025"]`), or on failure the error text (`["AMQ229019: Queue q1 already
//! exists on address q1"]`); void operations answer with no body.
//!
//! Artemis picks an operation's overload by the NUMBER of arguments only, and among same-arity
//! overloads the first whose parameter types accept the values; this client only sends the shapes
//! the transcript proves: `createAddress(name, "ANYCAST"|"MULTICAST")` (one argument is
//! `AMQ229069: no operation createAddress/1`), and the one-argument JSON `createQueue(config)` (the
//! three-string overload takes `(address, name, routingType)`, so the natural-looking
//! `["addr","ANYCAST","q"]` fails with `No enum constant ...RoutingType.Q`).
//!
//! The request machinery (window, timeouts, Disconnected on connection loss, `closed()`) is
//! [`crate::request::RequestClient`]. Artemis needs SASL PLAIN (or TLS) with a user holding the
//! `manage` role; ANONYMOUS is refused with `amqp:unauthorized-access` (`AMQ229031`). The client
//! never reconnects by itself: callers wait for `closed()` and connect again with
//! [`crate::options::Backoff`].

use std::time::Duration;

use fe2o3_amqp::types::messaging::ApplicationProperties;
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use serde_json::Value as Json;

use crate::options::ConnectOptions;
pub use crate::request::{ClientConfig, CorrelationIds, ReplyStats};
use crate::request::{RequestClient, RequestError, Response};

/// Address of the Artemis management node.
pub const MANAGEMENT_ADDRESS: &str = "activemq.management";
/// Application property naming the managed resource (`broker`, `queue.<name>`, `address.<name>`).
pub const RESOURCE_NAME: &str = "_AMQ_ResourceName";
/// Application property naming the operation (`createQueue`, ...).
pub const OPERATION_NAME: &str = "_AMQ_OperationName";
/// Reply application property: did the operation succeed.
pub const OPERATION_SUCCEEDED: &str = "_AMQ_OperationSucceeded";
/// The resource name of broker-wide operations.
pub const BROKER: &str = "broker";

/// `AMQ229204: Address already exists: <name>`.
pub const ADDRESS_EXISTS: &str = "AMQ229204";
/// `AMQ229019: Queue <q> already exists on address <a>`.
pub const QUEUE_EXISTS: &str = "AMQ229019";
/// `AMQ229203: Address Does Not Exist: <name>`.
pub const ADDRESS_DOES_NOT_EXIST: &str = "AMQ229203";
/// `AMQ229017: Queue <name> does not exist`.
pub const QUEUE_DOES_NOT_EXIST: &str = "AMQ229017";
/// `AMQ229069: no operation <op>/<arity>`.
pub const NO_OPERATION: &str = "AMQ229069";
/// `AMQ229025: Cannot delete queue <q> on binding <q> - it has consumers = ...`.
pub const QUEUE_HAS_CONSUMERS: &str = "AMQ229025";
/// `AMQ229205: Address <name> has bindings`.
pub const ADDRESS_HAS_BINDINGS: &str = "AMQ229205";

/// How an Artemis address routes messages to its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutingType {
    /// Each message goes to one queue (point-to-point: maas `queue`).
    Anycast,
    /// Each message goes to every queue (publish/subscribe: maas `topic`).
    Multicast,
}

impl RoutingType {
    /// The wire name: `ANYCAST` or `MULTICAST`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingType::Anycast => "ANYCAST",
            RoutingType::Multicast => "MULTICAST",
        }
    }

    /// Parses the wire name (Artemis upper-cases before parsing, so does this).
    pub fn parse(text: &str) -> Option<RoutingType> {
        match text.trim().to_ascii_uppercase().as_str() {
            "ANYCAST" => Some(RoutingType::Anycast),
            "MULTICAST" => Some(RoutingType::Multicast),
            _ => None,
        }
    }
}

impl std::fmt::Display for RoutingType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`ArtemisClient::create_queue`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// The address it is bound to (auto-created by Artemis when missing).
    pub address: String,
    /// Routing type of the binding.
    pub routing_type: RoutingType,
    /// Survives a broker restart.
    pub durable: bool,
}

impl QueueConfig {
    /// The JSON queue configuration sent as createQueue's single argument, in the transcript's key
    /// order: `{"name","address","routing-type","durable"}`.
    pub fn to_json(&self) -> String {
        self.to_json_with(None)
    }

    /// [`QueueConfig::to_json`] with the queue's owning `user` after `durable`, as recorded
    /// (durable-subscriptions-and-topics.txt §4: `{"name":"s1","address":"t1","routing-type":
    /// "MULTICAST","durable":true,"user":"maas-storage-controller"}`); `None` leaves it out.
    pub fn to_json_with(&self, user: Option<&str>) -> String {
        // serde_json's Map keeps keys sorted; build the text in the recorded order instead.
        let user = user
            .map(|u| format!(",\"user\":{}", Json::String(u.to_string())))
            .unwrap_or_default();
        format!(
            "{{\"name\":{},\"address\":{},\"routing-type\":\"{}\",\"durable\":{}{user}}}",
            Json::String(self.name.clone()),
            Json::String(self.address.clone()),
            self.routing_type.as_str(),
            self.durable
        )
    }
}

/// One row of `broker.listQueues` (durable-subscriptions-and-topics.txt §5: every value is a STRING in
/// the reply, e.g. `"durable": "true"`, `"messageCount": "0"`; they are parsed here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// The address it is bound to.
    pub address: String,
    /// Routing type of the binding.
    pub routing_type: RoutingType,
    /// Survives a broker restart.
    pub durable: bool,
    /// The `user` the queue was created with (`None` when the row's `user` is empty).
    pub user: Option<String>,
    /// Messages in the queue, delivered-but-unacknowledged ones included.
    pub message_count: u64,
    /// Consumers attached.
    pub consumer_count: u64,
    /// A temporary queue (a dynamic reply queue, a non-durable subscription).
    pub temporary: bool,
}

impl QueueInfo {
    /// Parses one listQueues row; `None` when a key is missing or a value does not parse.
    pub fn from_row(row: &Json) -> Option<QueueInfo> {
        let text = |key: &str| row.get(key).and_then(Json::as_str);
        let flag = |key: &str| match text(key)? {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        let number = |key: &str| text(key)?.parse::<u64>().ok();
        Some(QueueInfo {
            name: text("name")?.to_string(),
            address: text("address")?.to_string(),
            routing_type: RoutingType::parse(text("routingType")?)?,
            durable: flag("durable")?,
            user: Some(text("user")?)
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            message_count: number("messageCount")?,
            consumer_count: number("consumerCount")?,
            temporary: flag("temporary")?,
        })
    }
}

/// Rows asked for per listQueues page.
const LIST_PAGE_SIZE: u64 = 100;

/// Result of an idempotent create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Created now.
    Done,
    /// It existed already (`AMQ229204` for an address, `AMQ229019` for a queue).
    AlreadyThere,
}

/// Result of an idempotent delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed now.
    Done,
    /// It did not exist (`AMQ229203` for an address, `AMQ229017` for a queue).
    AlreadyGone,
}

/// A failed Artemis management request or connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtemisError {
    /// Artemis answered `_AMQ_OperationSucceeded = false`.
    #[error("{resource}.{operation} failed: {message}")]
    Failed {
        /// `broker`, `queue.<name>`, `address.<name>`.
        resource: String,
        /// The operation name.
        operation: String,
        /// The `AMQnnnnnn` code the error text starts with, when it has one (`AMQ229019`).
        code: Option<String>,
        /// The whole error text as Artemis sent it.
        message: String,
    },
    /// No reply within the request timeout.
    #[error("{resource}.{operation}: no reply within {after:?}")]
    Timeout {
        /// Resource of the request.
        resource: String,
        /// Operation of the request.
        operation: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The connection went away before the reply came (or was already gone).
    #[error("Artemis management connection lost: {0}")]
    Disconnected(String),
    /// The connection (or the management links) could not be set up: unreachable broker, SASL
    /// failure, `AMQ229031` for a user Artemis cannot validate.
    #[error("cannot open Artemis management connection: {0}")]
    Connect(String),
    /// The broker sent something this client cannot interpret.
    #[error("Artemis management protocol error: {0}")]
    Protocol(String),
    /// The reply to this request could not be decoded (see [`crate::request`]).
    #[error("{resource}.{operation}: {reason}")]
    BadReply {
        /// Resource of the request.
        resource: String,
        /// Operation of the request.
        operation: String,
        /// What was wrong with the reply.
        reason: String,
    },
}

impl ArtemisError {
    /// A short, fixed label for metrics: `already_exists` (AMQ229204/AMQ229019), `not_found`
    /// (AMQ229203/AMQ229017), `no_operation` (AMQ229069), `in_use` (AMQ229025/AMQ229205),
    /// `failed` (other failures), `timeout`, `disconnected`, `connect`, `protocol`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ArtemisError::Failed { code, .. } => match code.as_deref() {
                Some(ADDRESS_EXISTS | QUEUE_EXISTS) => "already_exists",
                Some(ADDRESS_DOES_NOT_EXIST | QUEUE_DOES_NOT_EXIST) => "not_found",
                Some(NO_OPERATION) => "no_operation",
                Some(QUEUE_HAS_CONSUMERS | ADDRESS_HAS_BINDINGS) => "in_use",
                _ => "failed",
            },
            ArtemisError::Timeout { .. } => "timeout",
            ArtemisError::Disconnected(_) => "disconnected",
            ArtemisError::Connect(_) => "connect",
            ArtemisError::Protocol(_) => "protocol",
            ArtemisError::BadReply { .. } => "bad_reply",
        }
    }

    /// The `AMQnnnnnn` code of a [`ArtemisError::Failed`].
    pub fn code(&self) -> Option<&str> {
        match self {
            ArtemisError::Failed { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True when the connection is unusable and the caller should reconnect: `Disconnected` and
    /// `Connect`. A `Timeout` fails one request only (the client drops the connection itself after
    /// repeated timeouts, and then requests fail with `Disconnected`).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ArtemisError::Disconnected(_) | ArtemisError::Connect(_)
        )
    }
}

/// An Artemis `activemq.management` client over one AMQP connection. Cheap to clone; all clones
/// share the connection and the window.
#[derive(Clone)]
pub struct ArtemisClient {
    inner: RequestClient,
}

impl std::fmt::Debug for ArtemisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtemisClient")
            .field("reply_to", &self.inner.reply_to())
            .field("peer", &self.inner.peer_container_id())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ArtemisClient {
    /// Connects (TCP, TLS, SASL, open within `opts.connect_timeout`), attaches the
    /// `activemq.management` sender and the dynamic reply receiver, and starts the send/receive
    /// tasks. A broker refusing the user (e.g. ANONYMOUS: `amqp:unauthorized-access`) or a wrong
    /// password is `Connect`.
    pub async fn connect(
        opts: &ConnectOptions,
        cfg: ClientConfig,
    ) -> Result<ArtemisClient, ArtemisError> {
        Self::connect_with_stats(opts, cfg, ReplyStats::default()).await
    }

    /// [`Self::connect`], counting unusable replies and timeouts in `stats`.
    pub async fn connect_with_stats(
        opts: &ConnectOptions,
        cfg: ClientConfig,
        stats: ReplyStats,
    ) -> Result<ArtemisClient, ArtemisError> {
        let inner = RequestClient::connect_with_stats(opts, MANAGEMENT_ADDRESS, cfg, stats)
            .await
            .map_err(|e| match e {
                RequestError::Connect(reason) => ArtemisError::Connect(reason),
                other => ArtemisError::Connect(other.to_string()),
            })?;
        Ok(ArtemisClient { inner })
    }

    /// Invokes `operation` on `resource` (`broker`, `queue.<name>`, `address.<name>`) with these
    /// arguments; returns the decoded JSON reply body (an array; `Null` for void operations).
    pub async fn call(
        &self,
        resource: &str,
        operation: &str,
        args: Vec<Json>,
    ) -> Result<Json, ArtemisError> {
        let props = request_properties(resource, operation);
        let body = Value::String(Json::Array(args).to_string());
        let response = self.inner.request(props, body).await.map_err(|e| match e {
            RequestError::Timeout { after } => ArtemisError::Timeout {
                resource: resource.to_string(),
                operation: operation.to_string(),
                after,
            },
            RequestError::Disconnected(reason) => ArtemisError::Disconnected(reason),
            RequestError::Connect(reason) => ArtemisError::Connect(reason),
            RequestError::Protocol(reason) => ArtemisError::Protocol(reason),
            RequestError::BadReply(reason) => ArtemisError::BadReply {
                resource: resource.to_string(),
                operation: operation.to_string(),
                reason,
            },
        })?;
        parse_reply(resource, operation, response)
    }

    /// `broker.getVersion()`: e.g. `2.21.0.redhat-00025`.
    pub async fn get_version(&self) -> Result<String, ArtemisError> {
        let body = self.call(BROKER, "getVersion", vec![]).await?;
        single_string(&body).ok_or_else(|| protocol("getVersion", &body))
    }

    /// `broker.createAddress(name, "ANYCAST"|"MULTICAST")`; `AMQ229204` is `AlreadyThere`.
    pub async fn create_address(
        &self,
        name: &str,
        routing: RoutingType,
    ) -> Result<Outcome, ArtemisError> {
        let args = vec![Json::from(name), Json::from(routing.as_str())];
        created(
            self.call(BROKER, "createAddress", args).await,
            ADDRESS_EXISTS,
        )
    }

    /// `broker.deleteAddress(name)`; `AMQ229203` is `AlreadyGone`. An address that still has
    /// queues fails with `AMQ229205`.
    pub async fn delete_address(&self, name: &str) -> Result<Removal, ArtemisError> {
        removed(
            self.call(BROKER, "deleteAddress", vec![Json::from(name)])
                .await,
            ADDRESS_DOES_NOT_EXIST,
        )
    }

    /// `broker.createQueue(json)` (the one-argument JSON overload, the only proven shape);
    /// `AMQ229019` is `AlreadyThere`. Artemis auto-creates a missing address.
    pub async fn create_queue(&self, q: &QueueConfig) -> Result<Outcome, ArtemisError> {
        created(
            self.call(BROKER, "createQueue", vec![Json::from(q.to_json())])
                .await,
            QUEUE_EXISTS,
        )
    }

    /// `broker.createQueue(json)` like [`ArtemisClient::create_queue`], the configuration carrying the
    /// queue's owning `user` (stored by Artemis, read back with [`ArtemisClient::queue_user`] and in
    /// [`ArtemisClient::list_queues_of_address`]); `AMQ229019` is `AlreadyThere` (the existing queue's
    /// user is not changed: check it).
    pub async fn create_queue_with(
        &self,
        q: &QueueConfig,
        user: Option<&str>,
    ) -> Result<Outcome, ArtemisError> {
        created(
            self.call(
                BROKER,
                "createQueue",
                vec![Json::from(q.to_json_with(user))],
            )
            .await,
            QUEUE_EXISTS,
        )
    }

    /// `queue.<name>.getUser()`: the user the queue was created with (`None`: none). A queue that does
    /// not exist fails with `AMQ229067`.
    pub async fn queue_user(&self, name: &str) -> Result<Option<String>, ArtemisError> {
        let operation = "getUser";
        let body = self
            .call(&format!("queue.{name}"), operation, vec![])
            .await?;
        match &body {
            Json::Array(items) if items.len() == 1 => match &items[0] {
                Json::String(s) => Ok(Some(s.clone())),
                Json::Null => Ok(None),
                _ => Err(protocol(operation, &body)),
            },
            _ => Err(protocol(operation, &body)),
        }
    }

    /// Every queue bound to `address`: `broker.listQueues` with the filter
    /// `{"field":"address","operation":"EQUALS","value":address}` (as recorded), paged
    /// ([`LIST_PAGE_SIZE`] rows a page) until the reply's `count` rows are in. Queues that come or go
    /// between pages may be missed or seen once more; each name is returned once, in the broker's
    /// order (by name).
    pub async fn list_queues_of_address(
        &self,
        address: &str,
    ) -> Result<Vec<QueueInfo>, ArtemisError> {
        let operation = "listQueues";
        // serde_json sorts the keys: field, operation, value (the recorded order).
        let filter =
            serde_json::json!({"field": "address", "operation": "EQUALS", "value": address})
                .to_string();
        let mut out: Vec<QueueInfo> = Vec::new();
        let mut page = 1u64;
        loop {
            let args = vec![
                Json::from(filter.clone()),
                Json::from(page),
                Json::from(LIST_PAGE_SIZE),
            ];
            let body = self.call(BROKER, operation, args).await?;
            let listing: Json = single_string(&body)
                .and_then(|text| serde_json::from_str(&text).ok())
                .ok_or_else(|| protocol(operation, &body))?;
            let count = listing
                .get("count")
                .and_then(Json::as_u64)
                .ok_or_else(|| protocol(operation, &body))?;
            let rows = listing
                .get("data")
                .and_then(Json::as_array)
                .ok_or_else(|| protocol(operation, &body))?;
            for row in rows {
                let info = QueueInfo::from_row(row).ok_or_else(|| {
                    ArtemisError::Protocol(format!("unexpected {operation} row {row}"))
                })?;
                if !out.iter().any(|q| q.name == info.name) {
                    out.push(info);
                }
            }
            let seen = page.saturating_mul(LIST_PAGE_SIZE);
            if rows.is_empty() || seen >= count {
                return Ok(out);
            }
            page += 1;
        }
    }

    /// `broker.destroyQueue(name)`; `AMQ229017` is `AlreadyGone`. Fails (`AMQ229025`) while the
    /// queue has a consumer; Artemis destroys a queue that holds messages WITH its messages, so
    /// check [`ArtemisClient::get_message_count`] first.
    pub async fn destroy_queue(&self, name: &str) -> Result<Removal, ArtemisError> {
        removed(
            self.call(BROKER, "destroyQueue", vec![Json::from(name)])
                .await,
            QUEUE_DOES_NOT_EXIST,
        )
    }

    /// `broker.getAddressNames()` without this client's own temporary reply address.
    pub async fn get_address_names(&self) -> Result<Vec<String>, ArtemisError> {
        self.names("getAddressNames").await
    }

    /// `broker.getQueueNames()` without this client's own temporary reply queue.
    pub async fn get_queue_names(&self) -> Result<Vec<String>, ArtemisError> {
        self.names("getQueueNames").await
    }

    /// `queue.<name>.getMessageCount()`. A queue that does not exist fails with `AMQ229067`
    /// (cannot find resource).
    pub async fn get_message_count(&self, queue: &str) -> Result<u64, ArtemisError> {
        let operation = "getMessageCount";
        let body = self
            .call(&format!("queue.{queue}"), operation, vec![])
            .await?;
        match &body {
            Json::Array(items) if items.len() == 1 => items[0].as_u64(),
            _ => None,
        }
        .ok_or_else(|| protocol(operation, &body))
    }

    async fn names(&self, operation: &str) -> Result<Vec<String>, ArtemisError> {
        let body = self.call(BROKER, operation, vec![]).await?;
        let names = match &body {
            Json::Array(outer) if outer.len() == 1 => outer[0].as_array(),
            _ => None,
        }
        .ok_or_else(|| protocol(operation, &body))?;
        let own = self.temporary_queue();
        names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .filter(|n| n.as_deref() != Some(own))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| protocol(operation, &body))
    }

    /// The name of this client's temporary reply queue/address on the broker (the dynamic
    /// address Artemis assigned, a UUID), which getAddressNames/getQueueNames include.
    pub fn temporary_queue(&self) -> &str {
        let reply_to = self.inner.reply_to();
        reply_to.rsplit('/').next().unwrap_or(reply_to)
    }

    /// The dynamic address replies come to.
    pub fn reply_to(&self) -> &str {
        self.inner.reply_to()
    }

    /// The broker's container id.
    pub fn peer_container_id(&self) -> Option<&str> {
        self.inner.peer_container_id()
    }

    /// Requests sent and not yet answered (or timed out).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    /// True once the connection is gone; every further request fails with `Disconnected`.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Resolves once the connection is gone (broker closed, I/O error, idle timeout, `close`).
    pub async fn closed(&self) {
        self.inner.closed().await;
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.inner.close_reason()
    }

    /// Closes the connection cleanly (for every clone): pending requests fail with
    /// `Disconnected`; waits up to 2 s for the broker to confirm.
    pub async fn close(self) {
        self.inner.close().await;
    }
}

/// `_AMQ_ResourceName` and `_AMQ_OperationName`, as strings.
fn request_properties(resource: &str, operation: &str) -> ApplicationProperties {
    ApplicationProperties::builder()
        .insert(RESOURCE_NAME, SimpleValue::String(resource.to_string()))
        .insert(OPERATION_NAME, SimpleValue::String(operation.to_string()))
        .build()
}

fn protocol(operation: &str, body: &Json) -> ArtemisError {
    ArtemisError::Protocol(format!("unexpected {operation} reply body {body}"))
}

fn single_string(body: &Json) -> Option<String> {
    match body {
        Json::Array(items) if items.len() == 1 => items[0].as_str().map(str::to_string),
        _ => None,
    }
}

/// The `AMQnnnnnn` prefix of an Artemis error text.
fn error_code(message: &str) -> Option<String> {
    let code = message.split(':').next()?.trim();
    let digits = code.strip_prefix("AMQ")?;
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| code.to_string())
}

/// Checks `_AMQ_OperationSucceeded` and decodes the JSON-array body.
fn parse_reply(resource: &str, operation: &str, response: Response) -> Result<Json, ArtemisError> {
    let succeeded = match response.application_properties.0.get(OPERATION_SUCCEEDED) {
        Some(SimpleValue::Bool(b)) => *b,
        Some(SimpleValue::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(SimpleValue::String(s)) if s.eq_ignore_ascii_case("false") => false,
        other => {
            return Err(ArtemisError::Protocol(format!(
                "{resource}.{operation} reply has no boolean {OPERATION_SUCCEEDED} ({other:?})"
            )));
        }
    };
    let body = match response.body {
        Value::Null => Json::Null,
        Value::String(text) => serde_json::from_str(&text).map_err(|e| {
            ArtemisError::Protocol(format!(
                "{resource}.{operation} reply body is not JSON ({e}): {text:?}"
            ))
        })?,
        other => {
            return Err(ArtemisError::Protocol(format!(
                "{resource}.{operation} reply body is not a string: {other:?}"
            )));
        }
    };
    if succeeded {
        return Ok(body);
    }
    let message = match &body {
        Json::Array(items) if !items.is_empty() => match &items[0] {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        },
        Json::Null => String::new(),
        other => other.to_string(),
    };
    Err(ArtemisError::Failed {
        resource: resource.to_string(),
        operation: operation.to_string(),
        code: error_code(&message),
        message,
    })
}

fn created(result: Result<Json, ArtemisError>, exists: &str) -> Result<Outcome, ArtemisError> {
    match result {
        Ok(_) => Ok(Outcome::Done),
        Err(e) if e.code() == Some(exists) => Ok(Outcome::AlreadyThere),
        Err(e) => Err(e),
    }
}

fn removed(result: Result<Json, ArtemisError>, missing: &str) -> Result<Removal, ArtemisError> {
    match result {
        Ok(_) => Ok(Removal::Done),
        Err(e) if e.code() == Some(missing) => Ok(Removal::AlreadyGone),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(succeeded: Option<bool>, body: Value) -> Response {
        let mut props = ApplicationProperties::builder();
        if let Some(s) = succeeded {
            props = props.insert(OPERATION_SUCCEEDED, SimpleValue::Bool(s));
        }
        Response {
            application_properties: props.insert("JMSXDeliveryCount", SimpleValue::Null).build(),
            body,
        }
    }

    #[test]
    fn queue_config_json_is_the_recorded_shape() {
        // management-transcript.txt line 4: the createQueue argument that worked.
        let q = QueueConfig {
            name: "q.one".into(),
            address: "addr.one".into(),
            routing_type: RoutingType::Anycast,
            durable: true,
        };
        assert_eq!(
            q.to_json(),
            r#"{"name":"q.one","address":"addr.one","routing-type":"ANYCAST","durable":true}"#
        );
        assert_eq!(
            Json::Array(vec![Json::from(q.to_json())]).to_string(),
            r#"["{\"name\":\"q.one\",\"address\":\"addr.one\",\"routing-type\":\"ANYCAST\",\"durable\":true}"]"#
        );
    }

    #[test]
    fn queue_config_with_user_is_the_recorded_shape() {
        // durable-subscriptions-and-topics.txt §4: the createQueue argument with a user.
        let q = QueueConfig {
            name: "s1".into(),
            address: "t1".into(),
            routing_type: RoutingType::Multicast,
            durable: true,
        };
        assert_eq!(
            q.to_json_with(Some("maas-storage-controller")),
            r#"{"name":"s1","address":"t1","routing-type":"MULTICAST","durable":true,"user":"maas-storage-controller"}"#
        );
        assert_eq!(q.to_json_with(None), q.to_json());
    }

    #[test]
    fn list_queues_rows_parse_the_recorded_strings() {
        // durable-subscriptions-and-topics.txt §5, the recorded row verbatim.
        let row: Json = serde_json::from_str(r#"{"id": "1733", "name": "s1", "address": "t1", "filter": "", "durable": "true", "paused": "false", "temporary": "false", "purgeOnNoConsumers": "false", "consumerCount": "0", "maxConsumers": "-1", "autoCreated": "false", "user": "maas-storage-controller", "routingType": "MULTICAST", "messagesAdded": "5", "messageCount": "0", "messagesAcked": "5", "messagesExpired": "0", "deliveringCount": "0", "messagesKilled": "0", "directDeliver": "false", "exclusive": "false", "lastValue": "false", "lastValueKey": "", "scheduledCount": "0", "groupRebalance": "false", "groupRebalancePauseDispatch": "false", "groupBuckets": "-1", "groupFirstKey": "", "enabled": "true", "ringSize": "-1", "consumersBeforeDispatch": "0", "delayBeforeDispatch": "-1"}"#).unwrap();
        assert_eq!(
            QueueInfo::from_row(&row).unwrap(),
            QueueInfo {
                name: "s1".into(),
                address: "t1".into(),
                routing_type: RoutingType::Multicast,
                durable: true,
                user: Some("maas-storage-controller".into()),
                message_count: 0,
                consumer_count: 0,
                temporary: false,
            }
        );
        let mut no_user = row.clone();
        no_user["user"] = json!("");
        assert_eq!(QueueInfo::from_row(&no_user).unwrap().user, None);
        let mut typed = row;
        typed["durable"] = json!(true);
        assert_eq!(QueueInfo::from_row(&typed), None, "values are strings");
    }

    #[test]
    fn replies_decode_success_failure_and_void() {
        // transcript line 1
        let ok = parse_reply(
            "broker",
            "getVersion",
            reply(
                Some(true),
                Value::String(r#"["2.21.0.redhat-00025"]"#.into()),
            ),
        )
        .unwrap();
        assert_eq!(single_string(&ok).as_deref(), Some("2.21.0.redhat-00025"));
        // transcript line 14 (void: body None)
        assert_eq!(
            parse_reply("broker", "destroyQueue", reply(Some(true), Value::Null)).unwrap(),
            Json::Null
        );
        // transcript line 7
        let err = parse_reply(
            "broker",
            "createQueue",
            reply(
                Some(false),
                Value::String(
                    r#"["AMQ229019: Queue q.one already exists on address addr.one"]"#.into(),
                ),
            ),
        )
        .unwrap_err();
        assert_eq!(err.code(), Some(QUEUE_EXISTS));
        assert_eq!(err.metric_label(), "already_exists");
        assert_eq!(
            err.to_string(),
            "broker.createQueue failed: AMQ229019: Queue q.one already exists on address addr.one"
        );
        // transcript line 5: no code
        let err = parse_reply(
            "broker",
            "createQueue",
            reply(
                Some(false),
                Value::String(
                    r#"["No enum constant org.apache.activemq.artemis.api.core.RoutingType.Q.TWO"]"#
                        .into(),
                ),
            ),
        )
        .unwrap_err();
        assert_eq!(err.code(), None);
        assert_eq!(err.metric_label(), "failed");
        assert!(matches!(
            parse_reply("broker", "x", reply(None, Value::Null)),
            Err(ArtemisError::Protocol(_))
        ));
        assert!(matches!(
            parse_reply(
                "broker",
                "x",
                reply(Some(true), Value::String("not json".into()))
            ),
            Err(ArtemisError::Protocol(_))
        ));
    }

    #[test]
    fn idempotent_outcomes_by_code() {
        let failed = |code: &str| {
            Err(ArtemisError::Failed {
                resource: "broker".into(),
                operation: "op".into(),
                code: Some(code.into()),
                message: format!("{code}: x"),
            })
        };
        assert_eq!(
            created(Ok(json!(null)), ADDRESS_EXISTS).unwrap(),
            Outcome::Done
        );
        assert_eq!(
            created(failed(ADDRESS_EXISTS), ADDRESS_EXISTS).unwrap(),
            Outcome::AlreadyThere
        );
        assert!(created(failed(QUEUE_EXISTS), ADDRESS_EXISTS).is_err());
        assert_eq!(
            removed(failed(QUEUE_DOES_NOT_EXIST), QUEUE_DOES_NOT_EXIST).unwrap(),
            Removal::AlreadyGone
        );
        assert!(removed(failed(QUEUE_HAS_CONSUMERS), QUEUE_DOES_NOT_EXIST).is_err());
    }

    #[test]
    fn error_codes_and_classes() {
        assert_eq!(
            error_code("AMQ229069: no operation createAddress/1").as_deref(),
            Some("AMQ229069")
        );
        assert_eq!(error_code("No enum constant x"), None);
        assert_eq!(error_code("AMQ12: x"), None);
        assert!(ArtemisError::Disconnected("x".into()).is_connection_error());
        // One slow request is not a lost connection.
        assert!(
            !ArtemisError::Timeout {
                resource: "broker".into(),
                operation: "getVersion".into(),
                after: Duration::from_secs(1)
            }
            .is_connection_error()
        );
        assert!(!ArtemisError::Protocol("x".into()).is_connection_error());
        assert_eq!(RoutingType::parse("anycast"), Some(RoutingType::Anycast));
        assert_eq!(RoutingType::parse("q.two"), None);
    }
}
