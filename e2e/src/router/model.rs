//! The management model of the emulated qdrouterd 1.19.0: entity tables, validation, and the exact replies
//! (status codes, statusDescription texts, body shapes) recorded from the real router in
//! `docs/reference/qdrouterd-1.19.0/` (`mgmt-transcript.txt`, `mgmt-raw-errors.txt`, `mgmt-node-ops.txt`,
//! `observed-shapes.txt`). Pure: no I/O, no clock. The cost of each request is returned as [`Work`] so the
//! management core can turn it into virtual time.
//!
//! Two agents live inside the real router and answer differently:
//! - the C "core" agent owns `router.config.address|linkRoute|autoLink`: 400 errors carry a `null` body, unknown
//!   attributes are silently ignored, integers are int32;
//! - the Python agent owns `connector` and `listener` (and unknown operations): 400 errors carry `{}`, unknown
//!   attributes are rejected, integers are encoded as long (Python `int`; a guess, e2e/GUESSES.md #2).

use std::collections::{BTreeMap, HashMap};

use fe2o3_amqp::types::primitives::{OrderedMap, Value};

/// Full type name of a configured address.
pub const ADDRESS: &str = "org.apache.qpid.dispatch.router.config.address";
/// Full type name of a configured link route.
pub const LINK_ROUTE: &str = "org.apache.qpid.dispatch.router.config.linkRoute";
/// Full type name of a configured auto link.
pub const AUTO_LINK: &str = "org.apache.qpid.dispatch.router.config.autoLink";
/// Full type name of a connector.
pub const CONNECTOR: &str = "org.apache.qpid.dispatch.connector";
/// Full type name of a listener.
pub const LISTENER: &str = "org.apache.qpid.dispatch.listener";
/// Type listed by GET-TYPES/GET-OPERATIONS in the recording, not otherwise emulated.
const CONNECTION_LINK_ROUTE: &str = "org.apache.qpid.dispatch.router.connection.linkRoute";

/// Core-agent columns, in the order the real router returns them (mgmt-transcript.txt:1-72, observed-shapes.txt:4).
const ADDRESS_COLS: &[&str] = &[
    "name",
    "identity",
    "type",
    "prefix",
    "distribution",
    "waypoint",
    "ingressPhase",
    "egressPhase",
    "pattern",
    "priority",
    "fallback",
];
const LINK_ROUTE_COLS: &[&str] = &[
    "name",
    "identity",
    "type",
    "prefix",
    "distribution",
    "connection",
    "containerId",
    "direction",
    "dir",
    "operStatus",
    "pattern",
    "addExternalPrefix",
    "delExternalPrefix",
];
const AUTO_LINK_COLS: &[&str] = &[
    "name",
    "identity",
    "type",
    "address",
    "addr",
    "direction",
    "dir",
    "phase",
    "connection",
    "containerId",
    "externalAddress",
    "externalAddr",
    "linkRef",
    "operStatus",
    "lastError",
    "fallback",
];

/// Attribute types of the Python-agent schema (qdrouter.json).
#[derive(Clone, Copy)]
enum AttrType {
    Str,
    Int,
    Bool,
    Enum(&'static [&'static str]),
    Any,
}

const ROLES: &[&str] = &["normal", "inter-router", "route-container", "edge"];
const STRIP: &[&str] = &["in", "out", "both", "no"];
const FAMILY: &[&str] = &["IPv4", "IPv6"];

/// (attribute, type, default) in qdrouter.json schema order.
type SchemaAttr = (&'static str, AttrType, Option<DefaultValue>);

#[derive(Clone, Copy)]
enum DefaultValue {
    S(&'static str),
    I(i64),
    B(bool),
}

impl DefaultValue {
    fn value(self) -> Value {
        match self {
            DefaultValue::S(s) => Value::String(s.to_string()),
            // GUESS (e2e/GUESSES.md #2): Python-agent integers as long, likely int32 on a real router
            DefaultValue::I(i) => Value::Long(i),
            DefaultValue::B(b) => Value::Bool(b),
        }
    }
}

const CONNECTOR_SCHEMA: &[SchemaAttr] = &[
    ("host", AttrType::Str, Some(DefaultValue::S("127.0.0.1"))),
    ("port", AttrType::Str, Some(DefaultValue::S("amqp"))),
    ("protocolFamily", AttrType::Enum(FAMILY), None),
    (
        "role",
        AttrType::Enum(ROLES),
        Some(DefaultValue::S("normal")),
    ),
    ("cost", AttrType::Int, Some(DefaultValue::I(1))),
    ("sslProfile", AttrType::Str, None),
    ("saslMechanisms", AttrType::Str, None),
    ("allowRedirect", AttrType::Bool, Some(DefaultValue::B(true))),
    ("maxFrameSize", AttrType::Int, Some(DefaultValue::I(16384))),
    ("maxSessions", AttrType::Int, Some(DefaultValue::I(32768))),
    ("maxSessionFrames", AttrType::Int, None),
    (
        "idleTimeoutSeconds",
        AttrType::Int,
        Some(DefaultValue::I(16)),
    ),
    (
        "stripAnnotations",
        AttrType::Enum(STRIP),
        Some(DefaultValue::S("both")),
    ),
    ("linkCapacity", AttrType::Int, None),
    (
        "verifyHostname",
        AttrType::Bool,
        Some(DefaultValue::B(true)),
    ),
    ("saslUsername", AttrType::Str, None),
    ("saslPassword", AttrType::Str, None),
    (
        "messageLoggingComponents",
        AttrType::Str,
        Some(DefaultValue::S("none")),
    ),
    ("failoverUrls", AttrType::Str, None),
    ("connectionStatus", AttrType::Str, None),
    ("connectionMsg", AttrType::Str, None),
    ("policyVhost", AttrType::Str, None),
    ("openProperties", AttrType::Any, None),
];

const LISTENER_SCHEMA: &[SchemaAttr] = &[
    ("host", AttrType::Str, Some(DefaultValue::S(""))),
    ("port", AttrType::Str, Some(DefaultValue::S("amqp"))),
    ("socketAddressFamily", AttrType::Enum(FAMILY), None),
    (
        "role",
        AttrType::Enum(ROLES),
        Some(DefaultValue::S("normal")),
    ),
    ("cost", AttrType::Int, Some(DefaultValue::I(1))),
    ("sslProfile", AttrType::Str, None),
    ("saslMechanisms", AttrType::Str, None),
    (
        "authenticatePeer",
        AttrType::Bool,
        Some(DefaultValue::B(false)),
    ),
    ("saslPlugin", AttrType::Str, None),
    (
        "requireEncryption",
        AttrType::Bool,
        Some(DefaultValue::B(false)),
    ),
    ("requireSsl", AttrType::Bool, Some(DefaultValue::B(false))),
    ("trustedCertsFile", AttrType::Str, None),
    ("maxFrameSize", AttrType::Int, Some(DefaultValue::I(16384))),
    ("maxSessions", AttrType::Int, Some(DefaultValue::I(32768))),
    ("maxSessionFrames", AttrType::Int, None),
    (
        "idleTimeoutSeconds",
        AttrType::Int,
        Some(DefaultValue::I(16)),
    ),
    (
        "initialHandshakeTimeoutSeconds",
        AttrType::Int,
        Some(DefaultValue::I(0)),
    ),
    (
        "stripAnnotations",
        AttrType::Enum(STRIP),
        Some(DefaultValue::S("both")),
    ),
    ("linkCapacity", AttrType::Int, None),
    ("multiTenant", AttrType::Bool, Some(DefaultValue::B(false))),
    ("failoverUrls", AttrType::Str, None),
    ("healthz", AttrType::Bool, Some(DefaultValue::B(true))),
    ("metrics", AttrType::Bool, Some(DefaultValue::B(true))),
    ("websockets", AttrType::Bool, Some(DefaultValue::B(true))),
    ("http", AttrType::Bool, Some(DefaultValue::B(false))),
    ("httpRootDir", AttrType::Str, None),
    (
        "messageLoggingComponents",
        AttrType::Str,
        Some(DefaultValue::S("none")),
    ),
    ("policyVhost", AttrType::Str, None),
    ("openProperties", AttrType::Any, None),
];

/// Core schema attributes (GET-ATTRIBUTES, mgmt-node-ops.txt:4).
const ADDRESS_SCHEMA: &[&str] = &[
    "prefix",
    "pattern",
    "distribution",
    "waypoint",
    "ingressPhase",
    "egressPhase",
    "priority",
    "enableFallback",
];
const LINK_ROUTE_SCHEMA: &[&str] = &[
    "prefix",
    "pattern",
    "addExternalPrefix",
    "delExternalPrefix",
    "containerId",
    "connection",
    "distribution",
    "direction",
    "operStatus",
];
const AUTO_LINK_SCHEMA: &[&str] = &[
    "address",
    "direction",
    "phase",
    "containerId",
    "connection",
    "externalAddress",
    "fallback",
    "linkRef",
    "operStatus",
    "lastError",
];

/// The five emulated entity types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Kind {
    /// `router.config.address`
    Address,
    /// `router.config.linkRoute`
    LinkRoute,
    /// `router.config.autoLink`
    AutoLink,
    /// `connector`
    Connector,
    /// `listener`
    Listener,
}

impl Kind {
    /// All kinds, in the order GET-TYPES lists them.
    pub const ALL: [Kind; 5] = [
        Kind::Listener,
        Kind::Connector,
        Kind::Address,
        Kind::LinkRoute,
        Kind::AutoLink,
    ];

    /// The kind for a FULL type name; short names (`address`) are not types (mgmt-raw-errors.txt:44).
    pub fn from_full(s: &str) -> Option<Kind> {
        match s {
            ADDRESS => Some(Kind::Address),
            LINK_ROUTE => Some(Kind::LinkRoute),
            AUTO_LINK => Some(Kind::AutoLink),
            CONNECTOR => Some(Kind::Connector),
            LISTENER => Some(Kind::Listener),
            _ => None,
        }
    }

    /// The full type name.
    pub fn full(self) -> &'static str {
        match self {
            Kind::Address => ADDRESS,
            Kind::LinkRoute => LINK_ROUTE,
            Kind::AutoLink => AUTO_LINK,
            Kind::Connector => CONNECTOR,
            Kind::Listener => LISTENER,
        }
    }

    /// Whether the C core agent (rather than the Python agent) owns this type.
    fn is_core(self) -> bool {
        matches!(self, Kind::Address | Kind::LinkRoute | Kind::AutoLink)
    }

    fn core_cols(self) -> &'static [&'static str] {
        match self {
            Kind::Address => ADDRESS_COLS,
            Kind::LinkRoute => LINK_ROUTE_COLS,
            Kind::AutoLink => AUTO_LINK_COLS,
            Kind::Connector | Kind::Listener => &[],
        }
    }

    fn py_schema(self) -> &'static [SchemaAttr] {
        match self {
            Kind::Connector => CONNECTOR_SCHEMA,
            Kind::Listener => LISTENER_SCHEMA,
            _ => &[],
        }
    }

    /// Attribute names for a QUERY with empty attributeNames.
    fn all_columns(self) -> Vec<String> {
        if self.is_core() {
            self.core_cols().iter().map(|s| s.to_string()).collect()
        } else {
            let mut v: Vec<String> = self.py_schema().iter().map(|a| a.0.to_string()).collect();
            v.extend(["name", "identity", "type"].iter().map(|s| s.to_string()));
            v
        }
    }

    /// Attribute names GET-ATTRIBUTES reports: schema order, then the entity base attributes.
    fn schema_attributes(self) -> Vec<String> {
        let mut v: Vec<String> = match self {
            Kind::Address => ADDRESS_SCHEMA.iter().map(|s| s.to_string()).collect(),
            Kind::LinkRoute => LINK_ROUTE_SCHEMA.iter().map(|s| s.to_string()).collect(),
            Kind::AutoLink => AUTO_LINK_SCHEMA.iter().map(|s| s.to_string()).collect(),
            _ => self.py_schema().iter().map(|a| a.0.to_string()).collect(),
        };
        v.extend(["name", "identity", "type"].iter().map(|s| s.to_string()));
        v
    }
}

/// One management request, as decoded from the AMQP message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `operation` application property.
    pub operation: String,
    /// `type` application property.
    pub type_: Option<String>,
    /// `name` application property (absent: the entity is created with name None, mgmt-raw-errors.txt:148).
    pub name: Option<String>,
    /// `identity` application property.
    pub identity: Option<String>,
    /// `entityType` (QUERY, GET-ATTRIBUTES).
    pub entity_type: Option<String>,
    /// `offset` (QUERY).
    pub offset: Option<u64>,
    /// `count` (QUERY).
    pub count: Option<u64>,
    /// The amqp-value body (a map, or null).
    pub body: Value,
}

/// A management reply: statusCode (int32), statusDescription, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// statusCode.
    pub code: i32,
    /// statusDescription.
    pub description: String,
    /// amqp-value body.
    pub body: Value,
}

impl Reply {
    pub(crate) fn new(code: i32, description: impl Into<String>, body: Value) -> Self {
        Reply {
            code,
            description: description.into(),
            body,
        }
    }
    /// Core-agent 400: body null (mgmt-raw-errors.txt:5).
    fn core_bad(description: impl Into<String>) -> Self {
        Reply::new(400, description, Value::Null)
    }
    /// Python-agent error: body {} (mgmt-raw-errors.txt:41).
    fn py_err(code: i32, description: impl Into<String>) -> Self {
        Reply::new(code, description, empty_map())
    }
}

/// What a request cost the router's management thread, in model units; the core turns it into time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A CREATE against a table holding `table_len` entities of that type.
    Create {
        /// Entities of the type before the CREATE.
        table_len: usize,
    },
    /// READ/DELETE: the table was walked over `walked` entities to find (or miss) the one asked.
    Lookup {
        /// Entities walked.
        walked: usize,
    },
    /// QUERY: a page of `rows` rows starting at `offset` of a table of `table_len`.
    Query {
        /// Asked offset.
        offset: usize,
        /// Rows returned.
        rows: usize,
        /// Entities of the type.
        table_len: usize,
    },
    /// Anything else (GET-*, errors before any table work).
    Other,
}

/// The counted operation class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// CREATE
    Create,
    /// DELETE
    Delete,
    /// READ
    Read,
    /// QUERY
    Query,
    /// UPDATE
    Update,
    /// any other operation
    Other,
}

impl OpClass {
    /// Class of an operation name.
    pub fn of(op: &str) -> OpClass {
        match op {
            "CREATE" => OpClass::Create,
            "DELETE" => OpClass::Delete,
            "READ" => OpClass::Read,
            "QUERY" => OpClass::Query,
            "UPDATE" => OpClass::Update,
            _ => OpClass::Other,
        }
    }
}

/// The outcome of one request: the reply (None: the real router never answers, e.g. UPDATE) and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// Reply to send, if any.
    pub reply: Option<Reply>,
    /// Work done.
    pub work: Work,
    /// Operation class, for counters.
    pub class: OpClass,
}

#[derive(Debug, Clone)]
struct Entity {
    name: Option<String>,
    identity: String,
    /// Uniqueness key (address prefix/pattern).
    key: Option<String>,
    attrs: Vec<(String, Value)>,
    is_static: bool,
}

impl Entity {
    fn get(&self, attr: &str) -> Value {
        self.attrs
            .iter()
            .find(|(k, _)| k == attr)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    }
    fn as_map(&self) -> Value {
        Value::Map(
            self.attrs
                .iter()
                .map(|(k, v)| (Value::String(k.clone()), v.clone()))
                .collect(),
        )
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Insertion order (the real router keeps a linked list it walks from the head).
    entries: BTreeMap<u64, Entity>,
    by_name: HashMap<String, u64>,
    by_identity: HashMap<String, u64>,
    by_key: HashMap<String, u64>,
}

impl Table {
    fn insert(&mut self, seq: u64, e: Entity) {
        if let Some(n) = &e.name {
            self.by_name.insert(n.clone(), seq);
        }
        self.by_identity.insert(e.identity.clone(), seq);
        if let Some(k) = &e.key {
            self.by_key.insert(k.clone(), seq);
        }
        self.entries.insert(seq, e);
    }
    fn remove(&mut self, seq: u64) -> Option<Entity> {
        let e = self.entries.remove(&seq)?;
        if let Some(n) = &e.name {
            self.by_name.remove(n);
        }
        self.by_identity.remove(&e.identity);
        if let Some(k) = &e.key {
            self.by_key.remove(k);
        }
        Some(e)
    }
    /// Find by identity (preferred) or name; returns (seq, position in walk order).
    fn find(&self, name: Option<&str>, identity: Option<&str>) -> Option<(u64, usize)> {
        let seq = match (identity, name) {
            (Some(id), _) => *self.by_identity.get(id)?,
            (None, Some(n)) => *self.by_name.get(n)?,
            // GUESS (e2e/GUESSES.md #17): no name and no identity: 404 here, 400 in the C agent source
            (None, None) => return None,
        };
        Some((seq, self.entries.range(..seq).count()))
    }
}

/// Per (operation, type) and total operation counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpCounters {
    /// CREATE requests.
    pub create: u64,
    /// DELETE requests.
    pub delete: u64,
    /// READ requests.
    pub read: u64,
    /// QUERY requests.
    pub query: u64,
    /// UPDATE requests (never answered).
    pub update: u64,
    /// Anything else (GET-*, unknown operations).
    pub other: u64,
    /// Counts by (operation, full type) — for QUERY the type is the `entityType`.
    pub by_type: BTreeMap<(String, String), u64>,
    /// The latest writes in the order the management thread ran them: (operation, entity name), at most
    /// [`WRITE_LOG_LEN`] (tests check the order of a change, e.g. that a replaced entity's DELETE and CREATE are
    /// adjacent).
    pub writes_in_order: std::collections::VecDeque<(String, String)>,
}

/// Writes kept in [`OpCounters::writes_in_order`].
pub const WRITE_LOG_LEN: usize = 10_000;

impl OpCounters {
    /// Write operations: CREATE + DELETE + UPDATE.
    pub fn writes(&self) -> u64 {
        self.create + self.delete + self.update
    }
    /// All operations.
    pub fn total(&self) -> u64 {
        self.create + self.delete + self.read + self.query + self.update + self.other
    }
    /// Count of one operation on one full type.
    pub fn count(&self, operation: &str, full_type: &str) -> u64 {
        self.by_type
            .get(&(operation.to_string(), full_type.to_string()))
            .copied()
            .unwrap_or(0)
    }
    fn record(&mut self, class: OpClass, operation: &str, ty: &str) {
        match class {
            OpClass::Create => self.create += 1,
            OpClass::Delete => self.delete += 1,
            OpClass::Read => self.read += 1,
            OpClass::Query => self.query += 1,
            OpClass::Update => self.update += 1,
            OpClass::Other => self.other += 1,
        }
        *self
            .by_type
            .entry((operation.to_string(), ty.to_string()))
            .or_insert(0) += 1;
    }
}

/// The router's management state.
#[derive(Debug)]
pub struct Model {
    router_id: String,
    tables: HashMap<Kind, Table>,
    /// Identities only grow, never reused, also across restarts.
    next_identity: u64,
    next_seq: u64,
    /// Connection ids used in connector failure messages (`[C8]`).
    next_conn_id: u64,
    /// Operation counters.
    pub counters: OpCounters,
}

fn empty_map() -> Value {
    Value::Map(OrderedMap::new())
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn body_entries(body: &Value) -> Vec<(String, Value)> {
    match body {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| match k {
                Value::String(k) => Some((k.clone(), v.clone())),
                Value::Symbol(k) => Some((k.0.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn body_get(body: &[(String, Value)], key: &str) -> Option<Value> {
    body.iter()
        .find(|(k, v)| k == key && !matches!(v, Value::Null))
        .map(|(_, v)| v.clone())
}

/// Renders a value as a string the way the router's parsers read scalar strings.
fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        other => as_i64(other).map(|i| i.to_string()),
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Ubyte(i) => Some(i64::from(*i)),
        Value::Ushort(i) => Some(i64::from(*i)),
        Value::Uint(i) => Some(i64::from(*i)),
        Value::Ulong(i) => i64::try_from(*i).ok(),
        Value::Byte(i) => Some(i64::from(*i)),
        Value::Short(i) => Some(i64::from(*i)),
        Value::Int(i) => Some(i64::from(*i)),
        Value::Long(i) => Some(*i),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// GUESS (e2e/GUESSES.md #18): yes/on/1 string forms accepted
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        },
        other => as_i64(other).map(|i| i != 0),
    }
}

/// The router stores a prefix as a pattern `prefix/#` and strips trailing separators: `queue.` reads back as
/// `queue` (mgmt-transcript.txt:17-22).
// GUESS (e2e/GUESSES.md #18): only trailing separators stripped, only for prefixes
fn normalize_prefix(p: &str) -> String {
    p.trim_end_matches(['.', '/']).to_string()
}

/// Python `str()` of a value, for the duplicate-name message.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => as_string(other).unwrap_or_else(|| format!("{other:?}")),
    }
}

// GUESS (e2e/GUESSES.md #25): saslPassword not masked as *******
fn py_entity_text(class: &str, attrs: &[(String, Value)]) -> String {
    let mut kv: Vec<(&String, &Value)> = attrs
        .iter()
        .filter(|(_, v)| !matches!(v, Value::Null))
        .map(|(k, v)| (k, v))
        .collect();
    kv.sort_by(|a, b| a.0.cmp(b.0));
    let inner: Vec<String> = kv
        .iter()
        .map(|(k, v)| format!("{k}={}", py_repr(v)))
        .collect();
    format!("{class}({})", inner.join(", "))
}

/// Converts an AMQP value to JSON (snapshots for tests).
pub fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::String(s) => J::String(s.clone()),
        Value::Symbol(s) => J::String(s.0.clone()),
        Value::Float(f) => serde_json::Number::from_f64(f64::from(f.0))
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Double(f) => serde_json::Number::from_f64(f.0)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::List(l) => J::Array(l.iter().map(value_to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    (
                        as_string(k).unwrap_or_else(|| format!("{k:?}")),
                        value_to_json(v),
                    )
                })
                .collect(),
        ),
        Value::Ulong(u) => J::from(*u),
        other => match as_i64(other) {
            Some(i) => J::from(i),
            None => J::String(format!("{other:?}")),
        },
    }
}

/// Converts JSON to an AMQP value; integers become int32 where they fit.
pub fn json_to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => i32::try_from(i).map(Value::Int).unwrap_or(Value::Long(i)),
            None => Value::Double(n.as_f64().unwrap_or(0.0).into()),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(a) => Value::List(a.iter().map(json_to_value).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::String(k.clone()), json_to_value(v)))
                .collect(),
        ),
    }
}

impl Model {
    /// An empty router with the given id.
    pub fn new(router_id: impl Into<String>) -> Self {
        Model {
            router_id: router_id.into(),
            tables: HashMap::new(),
            // The real router's counter is already past its static objects when management starts.
            next_identity: 1,
            next_seq: 1,
            next_conn_id: 1,
            counters: OpCounters::default(),
        }
    }

    fn table(&mut self, kind: Kind) -> &mut Table {
        self.tables.entry(kind).or_default()
    }

    /// Number of entities of a kind.
    pub fn len(&self, kind: Kind) -> usize {
        self.tables.get(&kind).map_or(0, |t| t.entries.len())
    }

    /// Number of entities of all kinds.
    pub fn total(&self) -> usize {
        self.tables.values().map(|t| t.entries.len()).sum()
    }

    /// Attribute maps of all entities of a kind, in table order.
    pub fn snapshot(&self, kind: Kind) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let Some(t) = self.tables.get(&kind) else {
            return Vec::new();
        };
        t.entries
            .values()
            .map(|e| {
                e.attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), value_to_json(v)))
                    .collect()
            })
            .collect()
    }

    /// Drops everything created over management (a router restart); static entities stay.
    // GUESS (e2e/GUESSES.md #22): identities and connection numbers keep growing across restarts
    pub fn restart(&mut self) {
        for t in self.tables.values_mut() {
            let gone: Vec<u64> = t
                .entries
                .iter()
                .filter(|(_, e)| !e.is_static)
                .map(|(s, _)| *s)
                .collect();
            for seq in gone {
                t.remove(seq);
            }
        }
    }

    /// Removes an entity by name without a management request (drift). Returns whether it existed.
    pub fn delete_by_hand(&mut self, kind: Kind, name: &str) -> bool {
        let t = self.table(kind);
        match t.by_name.get(name).copied() {
            Some(seq) => t.remove(seq).is_some(),
            None => false,
        }
    }

    /// Inserts a static entity (as if from qdrouterd.conf): it survives restarts. Runs the CREATE logic for
    /// defaults; if that rejects the attributes, they are stored as given.
    // GUESS (e2e/GUESSES.md #12): static entities take their place when added, not first
    pub fn insert_static(
        &mut self,
        kind: Kind,
        name: &str,
        attrs: &serde_json::Map<String, serde_json::Value>,
    ) {
        let body = Value::Map(
            attrs
                .iter()
                .map(|(k, v)| (Value::String(k.clone()), json_to_value(v)))
                .collect(),
        );
        let req = Request {
            operation: "CREATE".into(),
            type_: Some(kind.full().into()),
            name: Some(name.into()),
            identity: None,
            entity_type: None,
            offset: None,
            count: None,
            body,
        };
        let reply = self.create(kind, &req, true);
        if reply.code != 201 {
            tracing::warn!(name, code = reply.code, desc = %reply.description, "static entity stored as given");
            let identity = self.alloc_identity();
            let mut list = vec![
                ("name".to_string(), s(name)),
                ("identity".into(), s(&identity)),
            ];
            list.push(("type".into(), s(kind.full())));
            list.extend(attrs.iter().map(|(k, v)| (k.clone(), json_to_value(v))));
            let seq = self.alloc_seq();
            self.table(kind).insert(
                seq,
                Entity {
                    name: Some(name.into()),
                    identity,
                    key: None,
                    attrs: list,
                    is_static: true,
                },
            );
        }
    }

    // GUESS (e2e/GUESSES.md #21): identities step by 1 (real: shared core counter, steps of 3 seen)
    fn alloc_identity(&mut self) -> String {
        let id = self.next_identity;
        self.next_identity += 1;
        id.to_string()
    }

    fn alloc_seq(&mut self) -> u64 {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    /// Counts a QUERY answered outside the model (router.node, connection: mesh.rs) and hands its reply back.
    pub fn handle_computed(&mut self, req: &Request, reply: Reply) -> Handled {
        let class = OpClass::of(&req.operation);
        let ty = req.entity_type.clone().unwrap_or_default();
        self.counters.record(class, &req.operation, &ty);
        Handled {
            reply: Some(reply),
            work: Work::Other,
            class,
        }
    }

    /// Handles one request and counts it.
    pub fn handle(&mut self, req: &Request) -> Handled {
        let class = OpClass::of(&req.operation);
        let counted_type = match class {
            OpClass::Query => req.entity_type.clone().or_else(|| req.type_.clone()),
            _ => req.type_.clone(),
        };
        self.counters
            .record(class, &req.operation, counted_type.as_deref().unwrap_or(""));
        if matches!(class, OpClass::Create | OpClass::Delete | OpClass::Update) {
            let log = &mut self.counters.writes_in_order;
            if log.len() >= WRITE_LOG_LEN {
                log.pop_front();
            }
            log.push_back((req.operation.clone(), req.name.clone().unwrap_or_default()));
        }
        let (reply, work) = self.dispatch(req, class);
        Handled { reply, work, class }
    }

    fn dispatch(&mut self, req: &Request, class: OpClass) -> (Option<Reply>, Work) {
        match req.operation.as_str() {
            "GET-OPERATIONS" => return (Some(self.get_operations()), Work::Other),
            "GET-TYPES" => return (Some(self.get_types()), Work::Other),
            "GET-MGMT-NODES" => {
                let node = format!("amqp:/_topo/0/{}/$management", self.router_id);
                return (
                    Some(Reply::new(200, "OK", Value::List(vec![s(&node)]))),
                    Work::Other,
                );
            }
            "GET-ATTRIBUTES" => return (Some(self.get_attributes(req)), Work::Other),
            // mgmt-raw-errors.txt:67-68: the router never answers UPDATE.
            // GUESS (e2e/GUESSES.md #16): UPDATE of connector/listener unanswered (source: 501)
            "UPDATE" => return (None, Work::Other),
            _ => {}
        }
        if class == OpClass::Query {
            let ty = req.entity_type.clone().unwrap_or_default();
            // GUESS (e2e/GUESSES.md #14): QUERY without or with a non-emulated entityType is 400
            let Some(kind) = Kind::from_full(&ty) else {
                return (
                    Some(Reply::py_err(400, format!("No such entity type '{ty}'"))),
                    Work::Other,
                );
            };
            let (reply, work) = self.query(kind, req);
            return (Some(reply), work);
        }
        let ty = req.type_.clone().unwrap_or_default();
        let Some(kind) = Kind::from_full(&ty) else {
            // mgmt-raw-errors.txt:37-47
            return (
                Some(Reply::py_err(400, format!("No such entity type '{ty}'"))),
                Work::Other,
            );
        };
        match class {
            OpClass::Create => {
                let table_len = self.len(kind);
                (
                    Some(self.create(kind, req, false)),
                    Work::Create { table_len },
                )
            }
            OpClass::Read | OpClass::Delete => {
                let (reply, walked) = self.read_or_delete(kind, req, class == OpClass::Delete);
                (Some(reply), Work::Lookup { walked })
            }
            _ => (Some(self.unknown_operation(kind, req)), Work::Other),
        }
    }

    /// Operations the router does not know go to the Python agent, which looks the entity up among ITS
    /// entities only: `No entity with name=addr1` (mgmt-raw-errors.txt:82-86) even when addr1 exists in the core.
    // GUESS (e2e/GUESSES.md #15): Python-agent lookup errors and unknown-operation texts
    fn unknown_operation(&mut self, kind: Kind, req: &Request) -> Reply {
        let ids = match (&req.name, &req.identity) {
            (Some(n), Some(i)) => format!("name={n}, identity={i}"),
            (Some(n), None) => format!("name={n}"),
            (None, Some(i)) => format!("identity={i}"),
            (None, None) => return Reply::py_err(400, "No name or identity provided"),
        };
        if !kind.is_core()
            && self
                .table(kind)
                .find(req.name.as_deref(), req.identity.as_deref())
                .is_some()
        {
            return Reply::py_err(
                400,
                format!("Bad operation {} for type {}", req.operation, kind.full()),
            );
        }
        Reply::py_err(404, format!("No entity with {ids}"))
    }

    fn read_or_delete(&mut self, kind: Kind, req: &Request, delete: bool) -> (Reply, usize) {
        let table_len = self.len(kind);
        let t = self.table(kind);
        let Some((seq, pos)) = t.find(req.name.as_deref(), req.identity.as_deref()) else {
            // mgmt-raw-errors.txt:70-80 (core); the Python agent words it as for unknown operations.
            // GUESS (e2e/GUESSES.md #15): Python-agent 404 text; neither id is 404 here (source: 400)
            let reply = if kind.is_core() {
                Reply::new(404, "Not Found", empty_map())
            } else {
                let id = req
                    .name
                    .as_ref()
                    .map(|n| format!("name={n}"))
                    .or_else(|| req.identity.as_ref().map(|i| format!("identity={i}")));
                Reply::py_err(404, format!("No entity with {}", id.unwrap_or_default()))
            };
            return (reply, table_len);
        };
        if delete {
            t.remove(seq);
            // frames.txt:37
            (Reply::new(204, "No Content", empty_map()), pos)
        } else {
            let body = t
                .entries
                .get(&seq)
                .map(Entity::as_map)
                .unwrap_or_else(empty_map);
            (Reply::new(200, "OK", body), pos)
        }
    }

    fn query(&mut self, kind: Kind, req: &Request) -> (Reply, Work) {
        let body = body_entries(&req.body);
        let asked: Vec<String> = match body_get(&body, "attributeNames") {
            Some(Value::List(l)) => l.iter().filter_map(as_string).collect(),
            Some(Value::Array(a)) => a.0.iter().filter_map(as_string).collect(),
            _ => Vec::new(),
        };
        let names = if asked.is_empty() {
            kind.all_columns()
        } else {
            asked
        };
        let offset = req.offset.unwrap_or(0) as usize;
        // GUESS (e2e/GUESSES.md #10): no count returns every row (real: 21,843 of 60,000 recorded)
        let count = req.count.map_or(usize::MAX, |c| c as usize);
        let t = self.table(kind);
        let table_len = t.entries.len();
        let results: Vec<Value> = t
            .entries
            .values()
            .skip(offset)
            .take(count)
            // GUESS (e2e/GUESSES.md #13): unknown attributeNames give null, all-null rows kept
            .map(|e| Value::List(names.iter().map(|n| e.get(n)).collect()))
            .collect();
        let rows = results.len();
        let body = Value::Map(
            [
                (
                    s("attributeNames"),
                    Value::List(names.iter().map(|n| s(n)).collect()),
                ),
                (s("results"), Value::List(results)),
            ]
            .into_iter()
            .collect(),
        );
        (
            Reply::new(200, "OK", body),
            Work::Query {
                offset,
                rows,
                table_len,
            },
        )
    }

    fn create(&mut self, kind: Kind, req: &Request, is_static: bool) -> Reply {
        let body = body_entries(&req.body);
        let result = match kind {
            Kind::Address => self.create_address(req, &body),
            Kind::LinkRoute => self.create_link_route(req, &body),
            Kind::AutoLink => self.create_auto_link(req, &body),
            Kind::Connector | Kind::Listener => self.create_py(kind, req, &body),
        };
        match result {
            Ok((name, key, attrs)) => {
                let identity = match attrs.iter().find(|(k, _)| k == "identity") {
                    Some((_, v)) => as_string(v).unwrap_or_default(),
                    None => String::new(),
                };
                let mut stored = attrs.clone();
                if kind == Kind::Connector {
                    // GUESS (e2e/GUESSES.md #23): connectors never connect; [Cn] counts connectors
                    // The connection attempt fails at once in the emulator (mgmt-transcript.txt:176).
                    let conn = self.next_conn_id;
                    self.next_conn_id += 1;
                    let hp = format!(
                        "{}:{}",
                        attrs
                            .iter()
                            .find(|(k, _)| k == "host")
                            .and_then(|(_, v)| as_string(v))
                            .unwrap_or_default(),
                        attrs
                            .iter()
                            .find(|(k, _)| k == "port")
                            .and_then(|(_, v)| as_string(v))
                            .unwrap_or_default()
                    );
                    for (k, v) in stored.iter_mut() {
                        if k == "connectionMsg" {
                            *v = s(&format!(
                                "[C{conn}] Connection to {hp} failed: proton:io Connection refused - disconnected {hp}"
                            ));
                        }
                    }
                }
                let seq = self.alloc_seq();
                self.table(kind).insert(
                    seq,
                    Entity {
                        name,
                        identity,
                        key,
                        attrs: stored,
                        is_static,
                    },
                );
                Reply::new(
                    201,
                    "Created",
                    Value::Map(
                        attrs
                            .into_iter()
                            .map(|(k, v)| (Value::String(k), v))
                            .collect(),
                    ),
                )
            }
            Err(reply) => reply,
        }
    }

    fn name_conflict(&mut self, kind: Kind, req: &Request) -> bool {
        match &req.name {
            Some(n) => self.table(kind).by_name.contains_key(n),
            None => false,
        }
    }

    /// Prefix/pattern checks shared by address and linkRoute (mgmt-transcript.txt:248-254).
    // GUESS (e2e/GUESSES.md #18): non-string or empty prefix/pattern not rejected
    fn prefix_pattern(body: &[(String, Value)]) -> Result<(Option<String>, Option<String>), Reply> {
        let prefix = body_get(body, "prefix").and_then(|v| as_string(&v));
        let pattern = body_get(body, "pattern").and_then(|v| as_string(&v));
        match (&prefix, &pattern) {
            (None, None) => Err(Reply::core_bad(
                "Either a 'prefix' or 'pattern' attribute must be provided",
            )),
            (Some(_), Some(_)) => Err(Reply::core_bad(
                "Cannot specify both a 'prefix' and a 'pattern' attribute",
            )),
            _ => Ok((prefix.map(|p| normalize_prefix(&p)), pattern)),
        }
    }

    fn create_address(
        &mut self,
        req: &Request,
        body: &[(String, Value)],
    ) -> Result<Created, Reply> {
        if self.name_conflict(Kind::Address, req) {
            return Err(Reply::core_bad("Name conflicts with an existing entity"));
        }
        let (prefix, pattern) = Self::prefix_pattern(body)?;
        let key = match (&prefix, &pattern) {
            (Some(p), _) => format!("{p}.#"),
            // GUESS (e2e/GUESSES.md #18): prefix p and pattern p.# or p/# collide
            (None, Some(p)) => p.replace('/', "."),
            (None, None) => String::new(),
        };
        if self.table(Kind::Address).by_key.contains_key(&key) {
            // mgmt-raw-errors.txt:94-98
            return Err(Reply::core_bad("Already exists"));
        }
        // Any unknown distribution is stored as balanced (mgmt-raw-errors.txt:25-29).
        let distribution = match body_get(body, "distribution")
            .and_then(|v| as_string(&v))
            .as_deref()
        {
            // GUESS (e2e/GUESSES.md #18): unavailable reported as given (source: null)
            Some(d @ ("multicast" | "closest" | "balanced" | "unavailable")) => d.to_string(),
            _ => "balanced".to_string(),
        };
        let waypoint = body_get(body, "waypoint")
            .and_then(|v| as_bool(&v))
            .unwrap_or(false);
        let phase = |k: &str, default: i32| {
            body_get(body, k)
                .and_then(|v| as_i64(&v))
                .and_then(|i| i32::try_from(i).ok())
                .unwrap_or(default)
        };
        // GUESS (e2e/GUESSES.md #18): phases default one by one, no 0..9/priority/fallback checks
        let ingress = phase("ingressPhase", 0);
        let egress = phase("egressPhase", if waypoint { 1 } else { 0 });
        let priority = phase("priority", -1);
        let fallback = body_get(body, "fallback")
            .and_then(|v| as_bool(&v))
            .unwrap_or(false);
        let identity = self.alloc_identity();
        let opt = |o: &Option<String>| o.as_deref().map(s).unwrap_or(Value::Null);
        let attrs = vec![
            ("name".to_string(), opt(&req.name)),
            ("identity".into(), s(&identity)),
            ("type".into(), s(ADDRESS)),
            ("prefix".into(), opt(&prefix)),
            ("distribution".into(), s(&distribution)),
            ("waypoint".into(), Value::Bool(waypoint)),
            ("ingressPhase".into(), Value::Int(ingress)),
            ("egressPhase".into(), Value::Int(egress)),
            ("pattern".into(), opt(&pattern)),
            ("priority".into(), Value::Int(priority)),
            ("fallback".into(), Value::Bool(fallback)),
        ];
        Ok((req.name.clone(), Some(key), attrs))
    }

    fn direction(body: &[(String, Value)], missing: &str) -> Result<String, Reply> {
        let dir = body_get(body, "direction")
            .or_else(|| body_get(body, "dir"))
            .and_then(|v| as_string(&v));
        match dir.as_deref() {
            None => Err(Reply::core_bad(missing)),
            Some(d @ ("in" | "out")) => Ok(d.to_string()),
            // mgmt-raw-errors.txt:31-35
            Some(_) => Err(Reply::core_bad("Invalid value for 'direction'")),
        }
    }

    fn create_link_route(
        &mut self,
        req: &Request,
        body: &[(String, Value)],
    ) -> Result<Created, Reply> {
        if self.name_conflict(Kind::LinkRoute, req) {
            return Err(Reply::core_bad("Name conflicts with an existing entity"));
        }
        let (prefix, pattern) = Self::prefix_pattern(body)?;
        // mgmt-raw-errors.txt:13-17; `dir` is accepted as the old name (mgmt-raw-errors.txt:124-128).
        // GUESS (e2e/GUESSES.md #19): direction checked after prefix/pattern (source: before)
        let dir = Self::direction(body, "No 'direction' attribute provided - it is mandatory")?;
        let get = |k: &str| {
            body_get(body, k)
                .and_then(|v| as_string(&v))
                .map(|v| s(&v))
                .unwrap_or(Value::Null)
        };
        let identity = self.alloc_identity();
        let opt = |o: &Option<String>| o.as_deref().map(s).unwrap_or(Value::Null);
        let attrs = vec![
            ("name".to_string(), opt(&req.name)),
            ("identity".into(), s(&identity)),
            ("type".into(), s(LINK_ROUTE)),
            ("prefix".into(), opt(&prefix)),
            // GUESS (e2e/GUESSES.md #19): distribution ignored; connection+containerId accepted
            ("distribution".into(), s("linkBalanced")),
            ("connection".into(), get("connection")),
            ("containerId".into(), get("containerId")),
            ("direction".into(), s(&dir)),
            ("dir".into(), s(&dir)),
            // GUESS (e2e/GUESSES.md #23): link routes never go active
            ("operStatus".into(), s("inactive")),
            ("pattern".into(), opt(&pattern)),
            ("addExternalPrefix".into(), get("addExternalPrefix")),
            ("delExternalPrefix".into(), get("delExternalPrefix")),
        ];
        Ok((req.name.clone(), None, attrs))
    }

    fn create_auto_link(
        &mut self,
        req: &Request,
        body: &[(String, Value)],
    ) -> Result<Created, Reply> {
        if self.name_conflict(Kind::AutoLink, req) {
            return Err(Reply::core_bad("Name conflicts with an existing entity"));
        }
        const MANDATORY: &str = "address and direction fields are mandatory";
        let address = body_get(body, "address")
            .or_else(|| body_get(body, "addr"))
            .and_then(|v| as_string(&v));
        let Some(address) = address else {
            return Err(Reply::core_bad(MANDATORY));
        };
        let dir = Self::direction(body, MANDATORY)?;
        let phase = body_get(body, "phase")
            .and_then(|v| as_i64(&v))
            .and_then(|i| i32::try_from(i).ok())
            // GUESS (e2e/GUESSES.md #20): fallback does not force phase 0; no 0..9 check
            .unwrap_or(if dir == "in" { 1 } else { 0 });
        let get = |k: &str| {
            body_get(body, k)
                .and_then(|v| as_string(&v))
                .map(|v| s(&v))
                .unwrap_or(Value::Null)
        };
        let ext = body_get(body, "externalAddress")
            .or_else(|| body_get(body, "externalAddr"))
            .and_then(|v| as_string(&v))
            .map(|v| s(&v))
            .unwrap_or(Value::Null);
        let fallback = body_get(body, "fallback")
            .and_then(|v| as_bool(&v))
            .unwrap_or(false);
        let identity = self.alloc_identity();
        let opt = |o: &Option<String>| o.as_deref().map(s).unwrap_or(Value::Null);
        let attrs = vec![
            ("name".to_string(), opt(&req.name)),
            ("identity".into(), s(&identity)),
            ("type".into(), s(AUTO_LINK)),
            ("address".into(), s(&address)),
            ("addr".into(), s(&address)),
            ("direction".into(), s(&dir)),
            ("dir".into(), s(&dir)),
            ("phase".into(), Value::Int(phase)),
            ("connection".into(), get("connection")),
            ("containerId".into(), get("containerId")),
            ("externalAddress".into(), ext.clone()),
            ("externalAddr".into(), ext),
            // GUESS (e2e/GUESSES.md #23): auto links never attach
            ("linkRef".into(), Value::Null),
            ("operStatus".into(), s("inactive")),
            ("lastError".into(), Value::Null),
            ("fallback".into(), Value::Bool(fallback)),
        ];
        Ok((req.name.clone(), None, attrs))
    }

    /// Python-agent CREATE of a connector or listener (mgmt-transcript.txt:74-95, 184-208;
    /// mgmt-raw-errors.txt:49-65, 136-146).
    fn create_py(
        &mut self,
        kind: Kind,
        req: &Request,
        body: &[(String, Value)],
    ) -> Result<Created, Reply> {
        let schema = kind.py_schema();
        let full = kind.full();
        let mut attrs: Vec<(String, Value)> = Vec::new();
        for (k, v) in body {
            let ty = match k.as_str() {
                "name" | "identity" | "type" => AttrType::Str,
                _ => match schema.iter().find(|a| a.0 == k) {
                    Some(a) => a.1,
                    None => {
                        return Err(Reply::py_err(
                            400,
                            format!("Unknown attribute '{k}' for '{full}'"),
                        ));
                    }
                },
            };
            let coerced = match (ty, v) {
                // GUESS (e2e/GUESSES.md #25): nulls kept; non-creatable attributes and identity accepted
                (_, Value::Null) => Value::Null,
                (AttrType::Str, v) => as_string(v).map(|x| s(&x)).unwrap_or_else(|| v.clone()),
                (AttrType::Int, v) => match as_i64(v) {
                    // GUESS (e2e/GUESSES.md #2): Python-agent integers as long, likely int32 on a real router
                    Some(i) => Value::Long(i),
                    None => {
                        return Err(Reply::py_err(
                            400,
                            // GUESS (e2e/GUESSES.md #25): integer error text not recorded
                            format!("{full}: Invalid value for integer: '{}'", py_repr(v)),
                        ));
                    }
                },
                (AttrType::Bool, v) => match as_bool(v) {
                    Some(b) => Value::Bool(b),
                    None => {
                        return Err(Reply::py_err(
                            400,
                            // GUESS (e2e/GUESSES.md #25): boolean error text not recorded
                            format!("{full}: Invalid value for boolean: '{}'", py_repr(v)),
                        ));
                    }
                },
                (AttrType::Enum(values), v) => {
                    let text = as_string(v).unwrap_or_default();
                    let by_index = as_i64(v)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| values.get(i));
                    if values.contains(&text.as_str()) {
                        s(&text)
                    } else if let (Some(x), false) = (by_index, matches!(v, Value::String(_))) {
                        s(x)
                    } else {
                        let list: Vec<String> = values.iter().map(|x| format!("'{x}'")).collect();
                        return Err(Reply::py_err(
                            400,
                            format!(
                                "{full}: Invalid value for enum[{}]: '{}'",
                                list.join(", "),
                                py_repr(v)
                            ),
                        ));
                    }
                }
                (AttrType::Any, v) => v.clone(),
            };
            attrs.push((k.clone(), coerced));
        }
        let set = |attrs: &mut Vec<(String, Value)>, k: &str, v: Value| match attrs
            .iter_mut()
            .find(|(n, _)| n == k)
        {
            Some(slot) => slot.1 = v,
            None => attrs.push((k.to_string(), v)),
        };
        set(&mut attrs, "type", s(full));
        // GUESS (e2e/GUESSES.md #24): no name property: body name used (source: no name, identity h:p)
        let name = match &req.name {
            Some(n) => Some(n.clone()),
            None => attrs
                .iter()
                .find(|(k, _)| k == "name")
                .and_then(|(_, v)| as_string(v)),
        };
        set(
            &mut attrs,
            "name",
            name.as_deref().map(s).unwrap_or(Value::Null),
        );
        for key in ["host", "port"] {
            if !attrs
                .iter()
                .any(|(k, v)| k == key && !matches!(v, Value::Null))
                && let Some((_, _, Some(d))) = schema.iter().find(|a| a.0 == key)
            {
                set(&mut attrs, key, d.value());
            }
        }
        let get = |attrs: &Vec<(String, Value)>, k: &str| {
            attrs
                .iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| as_string(v))
                .unwrap_or_default()
        };
        let (host, port) = (get(&attrs, "host"), get(&attrs, "port"));
        let prefix = if kind == Kind::Connector {
            "connector"
        } else {
            "listener"
        };
        let identity = format!(
            "{prefix}/{host}:{port}:{}",
            name.clone().unwrap_or_default()
        );
        set(&mut attrs, "identity", s(&identity));
        for (k, _, d) in schema {
            if let Some(d) = d
                && !attrs.iter().any(|(n, _)| n == k)
            {
                attrs.push((k.to_string(), d.value()));
            }
        }
        // Duplicate name: checked when the validated entity is added (mgmt-raw-errors.txt:55-59).
        if let Some(n) = &name {
            let t = self.table(kind);
            if let Some(existing) = t.by_name.get(n).and_then(|seq| t.entries.get(seq)) {
                let class = if kind == Kind::Connector {
                    "ConnectorEntity"
                } else {
                    "ListenerEntity"
                };
                return Err(Reply::py_err(
                    400,
                    format!(
                        "adding {} duplicates unique attribute 'name' from existing {}",
                        py_entity_text(class, &attrs),
                        py_entity_text(class, &existing.attrs)
                    ),
                ));
            }
        }
        if kind == Kind::Connector {
            attrs.push(("failoverUrls".into(), s(&format!("amqp://{host}:{port}"))));
            attrs.push(("connectionStatus".into(), s("CONNECTING")));
            attrs.push(("connectionMsg".into(), s("")));
        }
        Ok((name, None, attrs))
    }

    // GUESS (e2e/GUESSES.md #26): entityType ignored by GET-OPERATIONS/GET-TYPES
    fn get_operations(&self) -> Reply {
        let ops = || Value::List(vec![s("CREATE"), s("DELETE"), s("READ")]);
        let mut m = OrderedMap::new();
        for k in Kind::ALL {
            m.insert(s(k.full()), ops());
        }
        m.insert(s(CONNECTION_LINK_ROUTE), ops());
        Reply::new(200, "OK", Value::Map(m))
    }

    fn get_types(&self) -> Reply {
        let bases = || {
            Value::List(vec![
                s("org.apache.qpid.dispatch.configurationEntity"),
                s("org.apache.qpid.dispatch.entity"),
            ])
        };
        let mut m = OrderedMap::new();
        for k in Kind::ALL {
            m.insert(s(k.full()), bases());
        }
        m.insert(s(CONNECTION_LINK_ROUTE), bases());
        Reply::new(200, "OK", Value::Map(m))
    }

    // GUESS (e2e/GUESSES.md #26): attribute lists of types other than linkRoute
    fn get_attributes(&self, req: &Request) -> Reply {
        let mut m = OrderedMap::new();
        match req.entity_type.as_deref() {
            Some(t) => match Kind::from_full(t) {
                Some(k) => {
                    m.insert(
                        s(k.full()),
                        Value::List(k.schema_attributes().iter().map(|a| s(a)).collect()),
                    );
                }
                None => return Reply::py_err(400, format!("No such entity type '{t}'")),
            },
            None => {
                for k in Kind::ALL {
                    m.insert(
                        s(k.full()),
                        Value::List(k.schema_attributes().iter().map(|a| s(a)).collect()),
                    );
                }
            }
        }
        Reply::new(200, "OK", Value::Map(m))
    }
}

/// (name, uniqueness key, attributes in reply order)
type Created = (Option<String>, Option<String>, Vec<(String, Value)>);

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: &str, ty: &str, name: Option<&str>, body: &[(&str, Value)]) -> Request {
        Request {
            operation: op.into(),
            type_: Some(ty.into()),
            name: name.map(Into::into),
            identity: None,
            entity_type: None,
            offset: None,
            count: None,
            body: Value::Map(body.iter().map(|(k, v)| (s(k), v.clone())).collect()),
        }
    }

    fn reply(m: &mut Model, r: &Request) -> Reply {
        m.handle(r).reply.expect("a reply")
    }

    fn keys(v: &Value) -> Vec<String> {
        body_entries(v).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn address_create_shape_matches_transcript() {
        // mgmt-transcript.txt:1-14
        let mut m = Model::new("Router.A");
        let r = reply(
            &mut m,
            &req(
                "CREATE",
                ADDRESS,
                Some("addr1"),
                &[("prefix", s("foo")), ("distribution", s("balanced"))],
            ),
        );
        assert_eq!((r.code, r.description.as_str()), (201, "Created"));
        assert_eq!(keys(&r.body), ADDRESS_COLS);
        let b = body_entries(&r.body);
        assert_eq!(body_get(&b, "egressPhase"), Some(Value::Int(0)));
        assert_eq!(body_get(&b, "priority"), Some(Value::Int(-1)));
        assert!(matches!(body_get(&b, "identity"), Some(Value::String(_))));
    }

    #[test]
    fn link_route_prefix_trailing_dot_is_stripped() {
        // mgmt-transcript.txt:17-22
        let mut m = Model::new("Router.A");
        let r = reply(
            &mut m,
            &req(
                "CREATE",
                LINK_ROUTE,
                Some("lr-in"),
                &[("prefix", s("queue.")), ("direction", s("in"))],
            ),
        );
        assert_eq!(body_get(&body_entries(&r.body), "prefix"), Some(s("queue")));
        assert_eq!(keys(&r.body), LINK_ROUTE_COLS);
    }

    #[test]
    fn connector_duplicate_name_message() {
        // mgmt-raw-errors.txt:55-59
        let mut m = Model::new("Router.A");
        let body = [
            ("role", s("route-container")),
            ("host", s("127.0.0.1")),
            ("port", Value::Int(5673)),
        ];
        assert_eq!(
            reply(&mut m, &req("CREATE", CONNECTOR, Some("broker"), &body)).code,
            201
        );
        let r = reply(
            &mut m,
            &req(
                "CREATE",
                CONNECTOR,
                Some("broker"),
                &[
                    ("role", s("normal")),
                    ("host", s("127.0.0.1")),
                    ("port", Value::Int(5676)),
                ],
            ),
        );
        assert_eq!(r.code, 400);
        assert!(r.description.starts_with("adding ConnectorEntity(allowRedirect=True, cost=1, host=127.0.0.1, identity=connector/127.0.0.1:5676:broker, idleTimeoutSeconds=16, maxFrameSize=16384, maxSessions=32768, messageLoggingComponents=none, name=broker, port=5676, role=normal, stripAnnotations=both, type=org.apache.qpid.dispatch.connector, verifyHostname=True) duplicates unique attribute 'name' from existing ConnectorEntity(allowRedirect=True, connectionMsg=[C1] Connection to 127.0.0.1:5673 failed"), "{}", r.description);
        assert_eq!(r.body, empty_map());
    }

    #[test]
    fn query_pages_and_restart_keeps_static() {
        let mut m = Model::new("Router.A");
        m.insert_static(
            Kind::Address,
            "override-x",
            &serde_json::Map::from_iter([("prefix".to_string(), serde_json::json!("x"))]),
        );
        for i in 0..10 {
            let name = format!("a{i}");
            let p = format!("p{i}");
            reply(
                &mut m,
                &req("CREATE", ADDRESS, Some(&name), &[("prefix", s(&p))]),
            );
        }
        let mut q = req(
            "QUERY",
            "org.amqp.management",
            Some("self"),
            &[("attributeNames", Value::List(vec![s("name")]))],
        );
        q.entity_type = Some(ADDRESS.into());
        q.offset = Some(9);
        q.count = Some(5);
        let h = m.handle(&q);
        assert_eq!(
            h.work,
            Work::Query {
                offset: 9,
                rows: 2,
                table_len: 11
            }
        );
        m.restart();
        assert_eq!(m.len(Kind::Address), 1);
    }
}
