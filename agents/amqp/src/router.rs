//! The qdrouterd `$management` client: CREATE / READ / DELETE / QUERY (paged) / UPDATE and the
//! management-node operations, pipelined over one connection.
//!
//! Wire shape (see `docs/reference/qdrouterd-1.19.0/frames.txt`): a sender to `$management`, a
//! receiver with a DYNAMIC source whose router-assigned address is every request's `reply-to`;
//! application properties `operation`, `type`, `name` (strings; QUERY adds `entityType`,
//! `offset` as uint and `count` as ulong), an amqp-value map body, a unique ulong
//! `correlation-id` per request. Replies (pre-settled, `statusCode` int32, `statusDescription`)
//! are matched to requests by correlation-id.
//!
//! The request/response machinery (window, separate send and receive tasks, per-request timeout,
//! correlation) is [`crate::request::RequestClient`]; this module is the typed qdrouterd layer
//! over it: it builds the application properties and turns `statusCode` into success or
//! [`MgmtError::Status`].
//!
//! Failure: when the connection dies every pending request fails with
//! [`MgmtError::Disconnected`], the client is marked closed and [`RouterClient::closed`]
//! resolves. The client never reconnects by itself: callers wait for `closed()`, then connect
//! again with [`crate::options::Backoff`] and replay what the router lost.

use std::time::Duration;

use fe2o3_amqp::types::messaging::ApplicationProperties;
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use serde_json::Value as Json;

use crate::options::ConnectOptions;
pub use crate::request::ClientConfig;
pub use crate::request::{CorrelationIds, ReplyStats};
use crate::request::{RequestClient, RequestError, Response};
use crate::value::{json_map_to_amqp, json_to_amqp};
use serde_amqp::primitives::OrderedMap;

/// Address of the router's management node.
pub const MANAGEMENT_ADDRESS: &str = "$management";
/// `type` of node-level requests (QUERY, GET-TYPES, ...).
pub const MANAGEMENT_TYPE: &str = "org.amqp.management";
/// `name` of node-level requests.
pub const MANAGEMENT_SELF: &str = "self";
/// Rows asked per QUERY page by [`RouterClient::query`] (what qdmanage asks).
pub const QUERY_PAGE_SIZE: u64 = 500;

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
    /// The reply to this request could not be decoded (e.g. the router changed the type of its
    /// correlation-id; see [`crate::request`]).
    #[error("{operation} {entity_type} {name:?}: {reason}")]
    BadReply {
        /// Operation of the request.
        operation: String,
        /// Entity type of the request.
        entity_type: String,
        /// Entity name of the request.
        name: String,
        /// What was wrong with the reply.
        reason: String,
    },
}

impl MgmtError {
    /// A short, fixed label for metrics: `bad_request` (400), `not_found` (404),
    /// `not_implemented` (501), `status` (other codes), `timeout`, `disconnected`, `connect`,
    /// `protocol`, `bad_reply`.
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
            MgmtError::BadReply { .. } => "bad_reply",
        }
    }

    /// The router's status code, for [`MgmtError::Status`].
    pub fn status_code(&self) -> Option<i32> {
        match self {
            MgmtError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the connection is unusable and the caller should reconnect: `Disconnected` and
    /// `Connect`. A `Timeout` fails one request only: a slow QUERY page on a large router is no
    /// reason to start over (the client drops the connection itself after repeated timeouts, and
    /// then requests fail with `Disconnected`).
    pub fn is_connection_error(&self) -> bool {
        matches!(self, MgmtError::Disconnected(_) | MgmtError::Connect(_))
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

/// A qdrouterd `$management` client over one AMQP connection. Cheap to clone; all clones share
/// the connection and the window. See the module docs for the failure model (no reconnect inside).
#[derive(Clone)]
pub struct RouterClient {
    inner: RequestClient,
}

impl std::fmt::Debug for RouterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterClient")
            .field("reply_to", &self.inner.reply_to())
            .field("peer", &self.inner.peer_container_id())
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
        Self::connect_with_stats(opts, cfg, ReplyStats::default()).await
    }

    /// [`Self::connect`], counting unusable replies and timeouts in `stats`.
    pub async fn connect_with_stats(
        opts: &ConnectOptions,
        cfg: ClientConfig,
        stats: ReplyStats,
    ) -> Result<RouterClient, MgmtError> {
        let inner = RequestClient::connect_with_stats(opts, MANAGEMENT_ADDRESS, cfg, stats)
            .await
            .map_err(|e| match e {
                RequestError::Connect(reason) => MgmtError::Connect(reason),
                other => MgmtError::Connect(other.to_string()),
            })?;
        Ok(RouterClient { inner })
    }

    /// CREATE an entity. `attributes` are sent as the body together with `name`; the reply body
    /// (the entity as the router stored it, status 201) is returned.
    pub async fn create(
        &self,
        entity_type: &str,
        name: &str,
        attributes: serde_json::Map<String, Json>,
    ) -> Result<serde_json::Map<String, Json>, MgmtError> {
        let reported = self
            .create_raw(entity_type, name, create_body(name, &attributes))
            .await?;
        Ok(into_map(crate::value::amqp_to_json(reported)))
    }

    /// CREATE with a ready body; the reply body (the entity as stored) as received.
    async fn create_raw(
        &self,
        entity_type: &str,
        name: &str,
        body: OrderedMap<Value, Value>,
    ) -> Result<Value, MgmtError> {
        let (_, _, reported) = self
            .request_raw("CREATE", entity_type, name, entity_type, &[], body)
            .await?;
        Ok(reported)
    }

    /// CREATE an entity and check the reply (the entity as the router stored it) against what was sent, without
    /// turning the whole reply into JSON: `Ok(None)` when every attribute in `attributes` came back with the same
    /// value, `Ok(Some(reported))` (the whole reply as JSON) when the router stored something else or left an
    /// attribute out. The request is the same as [`Self::create`]'s.
    pub async fn create_checked(
        &self,
        entity_type: &str,
        name: &str,
        attributes: &std::collections::BTreeMap<String, Json>,
    ) -> Result<Option<serde_json::Map<String, Json>>, MgmtError> {
        let reported = self
            .create_raw(entity_type, name, create_body(name, attributes))
            .await?;
        let mut matched = 0;
        if let Value::Map(map) = &reported {
            for (k, v) in map.iter() {
                let key = match k {
                    Value::String(s) => s.as_str(),
                    Value::Symbol(s) => s.0.as_str(),
                    _ => continue,
                };
                if let Some(want) = attributes.get(key).filter(|_| key != "name") {
                    if crate::value::amqp_to_json(v.clone()) != *want {
                        return Ok(Some(into_map(crate::value::amqp_to_json(reported))));
                    }
                    matched += 1;
                }
            }
        }
        let expected = attributes.len() - usize::from(attributes.contains_key("name"));
        if matched == expected {
            Ok(None)
        } else {
            Ok(Some(into_map(crate::value::amqp_to_json(reported))))
        }
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
        self.query_page_with_timeout(entity_type, attribute_names, offset, count, None)
            .await
    }

    /// [`Self::query_page`] with its own timeout instead of the client's (`None`: the client's).
    pub async fn query_page_with_timeout(
        &self,
        entity_type: &str,
        attribute_names: &[&str],
        offset: u32,
        count: u64,
        timeout: Option<Duration>,
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
        let props = request_properties("QUERY", MANAGEMENT_TYPE, MANAGEMENT_SELF, &extra);
        let timeout = timeout.unwrap_or(self.inner.config().request_timeout);
        let response = self
            .inner
            .request_with_timeout(props, Value::Map(json_map_to_amqp(&body)), timeout)
            .await
            .map_err(|e| request_error(e, "QUERY", entity_type, MANAGEMENT_SELF))?;
        let (_, _, body) = check_status(response, "QUERY", entity_type, MANAGEMENT_SELF)?;
        parse_query_page(crate::value::amqp_to_json(body))
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

    /// The configuration the client was opened with.
    pub fn config(&self) -> ClientConfig {
        self.inner.config()
    }

    /// The `properties` of the router's `open` frame (qdrouterd: `product`, `version`).
    pub fn peer_properties(&self) -> Option<serde_json::Map<String, Json>> {
        self.inner.peer_properties()
    }

    /// The router's container id (its router id, e.g. `Router.A`).
    pub fn peer_container_id(&self) -> Option<&str> {
        self.inner.peer_container_id()
    }

    /// The dynamic address replies come to.
    pub fn reply_to(&self) -> &str {
        self.inner.reply_to()
    }

    /// Requests sent and not yet answered (or timed out).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    /// True once the connection is gone; every further request fails with `Disconnected`.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Resolves once the connection is gone (peer closed, I/O error, idle timeout, or `close`).
    pub async fn closed(&self) {
        self.inner.closed().await;
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.inner.close_reason()
    }

    /// Closes the connection cleanly (for every clone): pending requests fail with
    /// `Disconnected`; waits up to 2 s for the peer to confirm.
    pub async fn close(self) {
        self.inner.close().await;
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
        let (status_code, status_description, body) = self
            .request_raw(
                operation,
                type_property,
                name,
                entity_type_for_errors,
                extra,
                json_map_to_amqp(&body),
            )
            .await?;
        Ok(Reply {
            status_code,
            status_description,
            body: crate::value::amqp_to_json(body),
        })
    }

    /// One request with an AMQP map body; a 2xx reply as (statusCode, statusDescription, AMQP body).
    async fn request_raw(
        &self,
        operation: &str,
        type_property: &str,
        name: &str,
        entity_type_for_errors: &str,
        extra: &[(&str, SimpleValue)],
        body: OrderedMap<Value, Value>,
    ) -> Result<(i32, String, Value), MgmtError> {
        let props = request_properties(operation, type_property, name, extra);
        let response = self
            .inner
            .request(props, Value::Map(body))
            .await
            .map_err(|e| request_error(e, operation, entity_type_for_errors, name))?;
        check_status(response, operation, entity_type_for_errors, name)
    }
}

/// A request's failure with what the request was about.
fn request_error(e: RequestError, operation: &str, entity_type: &str, name: &str) -> MgmtError {
    match e {
        RequestError::Timeout { after } => MgmtError::Timeout {
            operation: operation.to_string(),
            entity_type: entity_type.to_string(),
            name: name.to_string(),
            after,
        },
        RequestError::Disconnected(reason) => MgmtError::Disconnected(reason),
        RequestError::Connect(reason) => MgmtError::Connect(reason),
        RequestError::Protocol(reason) => MgmtError::Protocol(reason),
        RequestError::BadReply(reason) => MgmtError::BadReply {
            operation: operation.to_string(),
            entity_type: entity_type.to_string(),
            name: name.to_string(),
            reason,
        },
    }
}

/// A 2xx reply as (statusCode, statusDescription, AMQP body); any other as [`MgmtError::Status`].
fn check_status(
    response: Response,
    operation: &str,
    entity_type: &str,
    name: &str,
) -> Result<(i32, String, Value), MgmtError> {
    let raw = parse_status(&response)?;
    if (200..300).contains(&raw.0) {
        Ok((raw.0, raw.1, response.body))
    } else {
        Err(MgmtError::Status {
            operation: operation.to_string(),
            entity_type: entity_type.to_string(),
            name: name.to_string(),
            code: raw.0,
            description: raw.1,
        })
    }
}

/// The application properties of one request, exactly as qdmanage sends them (frames.txt).
fn request_properties(
    operation: &str,
    type_property: &str,
    name: &str,
    extra: &[(&str, SimpleValue)],
) -> ApplicationProperties {
    let mut props = ApplicationProperties::builder()
        .insert("operation", SimpleValue::String(operation.to_string()))
        .insert("type", SimpleValue::String(type_property.to_string()))
        .insert("name", SimpleValue::String(name.to_string()));
    for (k, v) in extra {
        props = props.insert(*k, v.clone());
    }
    props.build()
}

/// `statusCode` (any integer width) and `statusDescription` of a reply.
fn parse_status(response: &Response) -> Result<(i32, String), MgmtError> {
    let props = &response.application_properties.0;
    let status_code = props
        .get("statusCode")
        .and_then(simple_to_i32)
        .ok_or_else(|| MgmtError::Protocol("reply without an integer statusCode".to_string()))?;
    let status_description = match props.get("statusDescription") {
        Some(SimpleValue::String(s)) => s.clone(),
        Some(SimpleValue::Symbol(s)) => s.0.clone(),
        _ => String::new(),
    };
    Ok((status_code, status_description))
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

/// A CREATE body: the attributes and `name` (which wins over an attribute of that name), in key order.
fn create_body<'a>(
    name: &str,
    attributes: impl IntoIterator<Item = (&'a String, &'a Json)>,
) -> OrderedMap<Value, Value> {
    let mut body = OrderedMap::new();
    let mut name_sent = false;
    for (k, v) in attributes {
        if k == "name" {
            continue;
        }
        if !name_sent && k.as_str() > "name" {
            body.insert(
                Value::String("name".into()),
                Value::String(name.to_string()),
            );
            name_sent = true;
        }
        body.insert(Value::String(k.clone()), json_to_amqp(v));
    }
    if !name_sent {
        body.insert(
            Value::String("name".into()),
            Value::String(name.to_string()),
        );
    }
    body
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
        let props = request_properties("QUERY", MANAGEMENT_TYPE, "self", &extra);
        let m = crate::request::build_request(
            props,
            Value::Map(json_map_to_amqp(&body)),
            "amqp:/_topo/0/R/temp.x",
            crate::request::CorrelationIds::default().encode(7),
        );
        let p = m.properties.as_ref().unwrap();
        assert_eq!(p.reply_to.as_deref(), Some("amqp:/_topo/0/R/temp.x"));
        // qdmanage sends "1", "2", ...: strings come back unchanged from both management agents.
        assert_eq!(
            p.correlation_id,
            Some(fe2o3_amqp::types::messaging::MessageId::String("7".into()))
        );
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
            crate::value::amqp_to_json(m.body.0.clone()),
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
        // One slow request is not a lost connection.
        assert!(!t.is_connection_error());
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
