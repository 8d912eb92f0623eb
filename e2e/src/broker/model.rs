//! The broker's state and its management operations, pure (no I/O): addresses, queues, message and
//! consumer counts, and the exact replies ActiveMQ Artemis 2.21 gave in
//! `docs/reference/artemis-2.21/management-transcript.txt` (success bodies, `AMQnnnnnn` error texts, the
//! same-arity overload traps). Texts not in the transcript come from Artemis 2.21's
//! `ActiveMQMessageBundle` (AMQ229025, AMQ229067, AMQ229205, AMQ229207, AMQ229229).

use std::collections::{BTreeMap, BTreeSet};

use maas_amqp::artemis::RoutingType;
use serde_json::{Value as Json, json};

/// What `getVersion` answers (transcript line 1).
pub const VERSION: &str = "2.21.0.redhat-00025";
/// The management node's address.
pub const MANAGEMENT_ADDRESS: &str = "activemq.management";
/// The notifications address every broker has.
pub const NOTIFICATIONS_ADDRESS: &str = "activemq.notifications";

/// One queue, as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    /// The address it is bound to.
    pub address: String,
    /// Its routing type.
    pub routing_type: RoutingType,
    /// Survives [`Model::restart`].
    pub durable: bool,
    /// Messages it holds (`getMessageCount`).
    pub messages: u64,
    /// Consumers attached: the test knob plus receiving links attached to it.
    pub consumers: u32,
    /// A temporary queue (a dynamic reply queue of a management client).
    pub temporary: bool,
}

/// One address, as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressState {
    /// Routing types it supports.
    pub routing_types: BTreeSet<RoutingType>,
    /// Created implicitly (by createQueue or a link attach).
    pub auto_created: bool,
    /// A temporary address (a dynamic reply queue's).
    pub temporary: bool,
}

#[derive(Debug, Clone)]
struct Queue {
    id: u64,
    address: String,
    routing_type: RoutingType,
    durable: bool,
    messages: u64,
    consumer_knob: u32,
    link_consumers: u32,
    temporary: bool,
    /// The queue configuration JSON createQueue answered with.
    config: Vec<(String, Json)>,
}

/// Management operations by kind, counted per call (whatever the outcome).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpCounters {
    /// Operations that change the broker (createAddress, deleteAddress, createQueue, destroyQueue, ...).
    pub writes: u64,
    /// Operations that only read.
    pub reads: u64,
    /// Calls that answered `_AMQ_OperationSucceeded = false`.
    pub failures: u64,
    /// Calls by operation name (`createQueue`, `getMessageCount`, ...).
    pub by_operation: BTreeMap<String, u64>,
}

impl OpCounters {
    /// Calls of one operation.
    pub fn of(&self, operation: &str) -> u64 {
        self.by_operation.get(operation).copied().unwrap_or(0)
    }
}

/// A management reply: `_AMQ_OperationSucceeded` and the amqp-value string body (`None`: no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `_AMQ_OperationSucceeded`.
    pub succeeded: bool,
    /// The body text (a JSON array), or `None` for void operations.
    pub body: Option<String>,
}

impl Reply {
    fn ok(result: Json) -> Reply {
        Reply {
            succeeded: true,
            body: Some(Json::Array(vec![result]).to_string()),
        }
    }

    fn void() -> Reply {
        Reply {
            succeeded: true,
            body: None,
        }
    }

    fn fail(text: impl Into<String>) -> Reply {
        Reply {
            succeeded: false,
            body: Some(Json::Array(vec![Json::String(text.into())]).to_string()),
        }
    }
}

/// Parameter types of the emulated operation overloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P {
    Str,
    Bool,
}

/// Operations that change the broker.
const WRITES: &[&str] = &[
    "createAddress",
    "deleteAddress",
    "createQueue",
    "destroyQueue",
    "removeAllMessages",
];

/// The broker.
#[derive(Debug, Clone)]
pub struct Model {
    addresses: BTreeMap<String, AddressState>,
    queues: BTreeMap<String, Queue>,
    next_id: u64,
    /// Counters since start or the last reset.
    pub counters: OpCounters,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

fn enum_constant(text: &str) -> String {
    format!(
        "No enum constant org.apache.activemq.artemis.api.core.RoutingType.{}",
        text.to_uppercase()
    )
}

/// Artemis parses routing types with `RoutingType.valueOf(text.toUpperCase())`.
fn routing(text: &str) -> Result<RoutingType, String> {
    match text.to_uppercase().as_str() {
        "ANYCAST" => Ok(RoutingType::Anycast),
        "MULTICAST" => Ok(RoutingType::Multicast),
        _ => Err(enum_constant(text)),
    }
}

/// Java's `EnumSet` order: MULTICAST before ANYCAST.
fn java_order(types: &BTreeSet<RoutingType>) -> Vec<&'static str> {
    let mut out = Vec::new();
    if types.contains(&RoutingType::Multicast) {
        out.push("MULTICAST");
    }
    if types.contains(&RoutingType::Anycast) {
        out.push("ANYCAST");
    }
    out
}

impl Model {
    /// A fresh broker: addresses `DLQ`, `ExpiryQueue`, `activemq.management`,
    /// `activemq.notifications`; queues `DLQ` and `ExpiryQueue`.
    // GUESS (e2e/GUESSES.md #27): routing types, durability and ids of the built-in queues
    pub fn new() -> Model {
        let mut m = Model {
            addresses: BTreeMap::new(),
            queues: BTreeMap::new(),
            next_id: 10,
            counters: OpCounters::default(),
        };
        for (name, rt) in [
            ("DLQ", RoutingType::Anycast),
            ("ExpiryQueue", RoutingType::Anycast),
            (MANAGEMENT_ADDRESS, RoutingType::Anycast),
            (NOTIFICATIONS_ADDRESS, RoutingType::Multicast),
        ] {
            m.addresses.insert(
                name.to_string(),
                AddressState {
                    routing_types: BTreeSet::from([rt]),
                    auto_created: false,
                    temporary: false,
                },
            );
        }
        for name in ["DLQ", "ExpiryQueue"] {
            m.insert_queue(name, name, RoutingType::Anycast, true, false, Vec::new());
        }
        m
    }

    fn insert_queue(
        &mut self,
        name: &str,
        address: &str,
        routing_type: RoutingType,
        durable: bool,
        temporary: bool,
        config: Vec<(String, Json)>,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queues.insert(
            name.to_string(),
            Queue {
                id,
                address: address.to_string(),
                routing_type,
                durable,
                messages: 0,
                consumer_knob: 0,
                link_consumers: 0,
                temporary,
                config,
            },
        );
        id
    }

    /// Queues by name.
    pub fn queues(&self) -> BTreeMap<String, QueueState> {
        self.queues
            .iter()
            .map(|(name, q)| {
                (
                    name.clone(),
                    QueueState {
                        address: q.address.clone(),
                        routing_type: q.routing_type,
                        durable: q.durable,
                        messages: q.messages,
                        consumers: q.consumer_knob.saturating_add(q.link_consumers),
                        temporary: q.temporary,
                    },
                )
            })
            .collect()
    }

    /// Addresses by name.
    pub fn addresses(&self) -> BTreeMap<String, AddressState> {
        self.addresses.clone()
    }

    /// Sets a queue's message count; false when there is no such queue.
    pub fn set_message_count(&mut self, queue: &str, n: u64) -> bool {
        match self.queues.get_mut(queue) {
            Some(q) => {
                q.messages = n;
                true
            }
            None => false,
        }
    }

    /// Sets the consumers a queue has besides attached links (e.g. a router's autoLink); false when there
    /// is no such queue.
    pub fn set_consumers(&mut self, queue: &str, n: u32) -> bool {
        match self.queues.get_mut(queue) {
            Some(q) => {
                q.consumer_knob = n;
                true
            }
            None => false,
        }
    }

    /// A broker restart: durable queues (with their messages) and non-temporary addresses survive;
    /// temporary and non-durable queues, temporary addresses and link consumers are gone. The consumer
    /// knob stays (it models consumers that reconnect, like a router's autoLink).
    // GUESS (e2e/GUESSES.md #41): what survives a broker restart
    pub fn restart(&mut self) {
        self.queues.retain(|_, q| q.durable && !q.temporary);
        for q in self.queues.values_mut() {
            q.link_consumers = 0;
        }
        self.addresses.retain(|_, a| !a.temporary);
    }

    /// A dynamic receiver's temporary queue: address and queue named `name` (a UUID).
    // GUESS (e2e/GUESSES.md #37): temporary queue shape and removal
    pub fn create_temporary(&mut self, name: &str) {
        self.addresses.insert(
            name.to_string(),
            AddressState {
                routing_types: BTreeSet::from([RoutingType::Anycast]),
                auto_created: false,
                temporary: true,
            },
        );
        self.insert_queue(name, name, RoutingType::Anycast, false, true, Vec::new());
    }

    /// Removes a temporary queue and its address (its link went away).
    pub fn remove_temporary(&mut self, name: &str) {
        if self.queues.get(name).is_some_and(|q| q.temporary) {
            self.queues.remove(name);
        }
        if self.addresses.get(name).is_some_and(|a| a.temporary) {
            self.addresses.remove(name);
        }
    }

    /// Artemis' default auto-creation when a link attaches to an unknown `address`: an ANYCAST address
    /// and a durable queue of the same name.
    // GUESS (e2e/GUESSES.md #38): ANYCAST + durable queue; recording suggests MULTICAST subscriptions
    pub fn auto_create(&mut self, address: &str) {
        if self.addresses.contains_key(address) || self.queues.contains_key(address) {
            return;
        }
        self.addresses.insert(
            address.to_string(),
            AddressState {
                routing_types: BTreeSet::from([RoutingType::Anycast]),
                auto_created: true,
                temporary: false,
            },
        );
        self.insert_queue(
            address,
            address,
            RoutingType::Anycast,
            true,
            false,
            Vec::new(),
        );
    }

    /// A receiving link attached to queue `name` (true) or went away (false); false when there is no such
    /// queue.
    // GUESS (e2e/GUESSES.md #40): receivers count as consumers of the queue named by the source
    pub fn link_consumer(&mut self, name: &str, attached: bool) -> bool {
        match self.queues.get_mut(name) {
            Some(q) => {
                if attached {
                    q.link_consumers = q.link_consumers.saturating_add(1);
                } else {
                    q.link_consumers = q.link_consumers.saturating_sub(1);
                }
                true
            }
            None => false,
        }
    }

    /// A message sent to `address`: the queue of that name, else every MULTICAST queue of the address and
    /// the ANYCAST one holding the fewest messages. False when nothing took it.
    // GUESS (e2e/GUESSES.md #39): routing of sent messages and counts
    pub fn deliver(&mut self, address: &str) -> bool {
        if let Some(q) = self.queues.get_mut(address) {
            q.messages += 1;
            return true;
        }
        let mut taken = false;
        let mut anycast: Option<(u64, String)> = None;
        for (name, q) in self.queues.iter_mut() {
            if q.address != address {
                continue;
            }
            match q.routing_type {
                RoutingType::Multicast => {
                    q.messages += 1;
                    taken = true;
                }
                RoutingType::Anycast => {
                    if anycast.as_ref().is_none_or(|(m, _)| q.messages < *m) {
                        anycast = Some((q.messages, name.clone()));
                    }
                }
            }
        }
        if let Some((_, name)) = anycast
            && let Some(q) = self.queues.get_mut(&name)
        {
            q.messages += 1;
            taken = true;
        }
        taken
    }

    /// Executes one management request: `resource` (`broker`, `queue.<name>`, `address.<name>`),
    /// `operation`, and the request body (the JSON-array text of the arguments).
    pub fn invoke(&mut self, resource: &str, operation: &str, body: Option<&str>) -> Reply {
        *self
            .counters
            .by_operation
            .entry(operation.to_string())
            .or_default() += 1;
        if WRITES.contains(&operation) {
            self.counters.writes += 1;
        } else {
            self.counters.reads += 1;
        }
        let args: Vec<Json> = match body.map(serde_json::from_str::<Json>) {
            None => Vec::new(),
            Some(Ok(Json::Array(args))) => args,
            Some(Ok(other)) => vec![other],
            Some(Err(e)) => {
                self.counters.failures += 1;
                // GUESS (e2e/GUESSES.md #35): invented text
                return Reply::fail(format!("Unable to parse the arguments: {e}"));
            }
        };
        let reply = self.dispatch(resource, operation, &args);
        if !reply.succeeded {
            self.counters.failures += 1;
        }
        reply
    }

    fn dispatch(&mut self, resource: &str, operation: &str, args: &[Json]) -> Reply {
        if resource == "broker" {
            return self.broker_op(operation, args);
        }
        if let Some(name) = resource.strip_prefix("queue.")
            && self.queues.contains_key(name)
        {
            return self.queue_op(name, operation, args);
        }
        if let Some(name) = resource.strip_prefix("address.")
            && self.addresses.contains_key(name)
        {
            return self.address_op(name, operation, args);
        }
        Reply::fail(format!(
            // GUESS (e2e/GUESSES.md #34): unknown resource text from the bundle, not recorded
            "AMQ229067: Cannot find resource with name {resource}"
        ))
    }

    /// Which overload of `operation` these arguments select (Artemis: same arity, and the first in
    /// declaration order whose parameter types accept the values; JSON null fits any type).
    // GUESS (e2e/GUESSES.md #29): first fitting overload in table order; null fits anything
    fn select(operation: &str, args: &[Json], overloads: &[(&str, &[P])]) -> Result<usize, Reply> {
        for (index, (name, params)) in overloads.iter().enumerate() {
            if *name != operation || params.len() != args.len() {
                continue;
            }
            let fits = params.iter().zip(args).all(|(p, a)| {
                matches!(
                    (p, a),
                    (_, Json::Null) | (P::Str, Json::String(_)) | (P::Bool, Json::Bool(_))
                )
            });
            if fits {
                return Ok(index);
            }
        }
        Err(Reply::fail(format!(
            "AMQ229069: no operation {operation}/{}",
            args.len()
        )))
    }

    fn broker_op(&mut self, operation: &str, args: &[Json]) -> Reply {
        use P::{Bool, Str};
        const OVERLOADS: &[(&str, &[P])] = &[
            ("getVersion", &[]),
            ("getAddressNames", &[]),
            ("getQueueNames", &[]),
            // GUESS (e2e/GUESSES.md #29): overloads beyond transcript lines 5-6 from the interface, not recorded
            ("getQueueNames", &[Str]),
            ("listAddresses", &[Str]),
            ("createAddress", &[Str, Str]),
            ("deleteAddress", &[Str]),
            ("deleteAddress", &[Str, Bool]),
            ("createQueue", &[Str]),
            ("createQueue", &[Str, Bool]),
            // Deprecated (address, name): MULTICAST, durable.
            ("createQueue", &[Str, Str]),
            // Deprecated (address, name, routingType): the trap of transcript line 5.
            ("createQueue", &[Str, Str, Str]),
            ("createQueue", &[Str, Str, Bool]),
            ("destroyQueue", &[Str]),
            ("destroyQueue", &[Str, Bool]),
            ("destroyQueue", &[Str, Bool, Bool]),
        ];
        let index = match Model::select(operation, args, OVERLOADS) {
            Ok(i) => i,
            Err(reply) => return reply,
        };
        let s = |i: usize| args.get(i).and_then(Json::as_str).unwrap_or("");
        let b = |i: usize| args.get(i).and_then(Json::as_bool).unwrap_or(false);
        match (operation, args.len(), OVERLOADS[index].1) {
            ("getVersion", ..) => Reply::ok(json!(VERSION)),
            // GUESS (e2e/GUESSES.md #28): sorted here, hash order on a real broker
            ("getAddressNames", ..) => Reply::ok(json!(self.addresses.keys().collect::<Vec<_>>())),
            ("getQueueNames", 0, _) => Reply::ok(json!(self.queues.keys().collect::<Vec<_>>())),
            ("getQueueNames", ..) => match routing(s(0)) {
                Ok(rt) => Reply::ok(json!(
                    self.queues
                        .iter()
                        .filter(|(_, q)| q.routing_type == rt)
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                )),
                // GUESS (e2e/GUESSES.md #28): unknown routing type fails here (source: empty list)
                Err(text) => Reply::fail(text),
            },
            ("listAddresses", ..) => {
                let mut names: Vec<&String> = self.addresses.keys().collect();
                names.sort_by_key(|n| n.to_lowercase());
                let joined: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
                Reply::ok(json!(joined.join(s(0))))
            }
            ("createAddress", ..) => self.create_address(s(0), s(1)),
            ("deleteAddress", ..) => self.delete_address(s(0), args.len() == 2 && b(1)),
            ("createQueue", 1, _) | ("createQueue", 2, [Str, Bool]) => {
                self.create_queue_json(s(0), args.len() == 2 && b(1))
            }
            // GUESS (e2e/GUESSES.md #32): deprecated (address, name) makes a durable MULTICAST queue
            ("createQueue", 2, _) => {
                self.create_queue_plain(s(0), s(1), RoutingType::Multicast, true)
            }
            ("createQueue", 3, [Str, Str, Str]) => match routing(s(2)) {
                Ok(rt) => self.create_queue_plain(s(0), s(1), rt, true),
                Err(text) => Reply::fail(text),
            },
            ("createQueue", 3, _) => {
                self.create_queue_plain(s(0), s(1), RoutingType::Multicast, b(2))
            }
            ("destroyQueue", n, _) => self.destroy_queue(s(0), n >= 2 && b(1), n == 3 && b(2)),
            // GUESS (e2e/GUESSES.md #30): listQueues (recorded) answered no operation
            _ => Reply::fail(format!(
                "AMQ229069: no operation {operation}/{}",
                args.len()
            )),
        }
    }

    fn create_address(&mut self, name: &str, routing_types: &str) -> Reply {
        let mut types = BTreeSet::new();
        for part in routing_types.split(',') {
            match routing(part.trim()) {
                Ok(rt) => {
                    types.insert(rt);
                }
                Err(text) => return Reply::fail(text),
            }
        }
        if self.addresses.contains_key(name) {
            return Reply::fail(format!("AMQ229204: Address already exists: {name}"));
        }
        // GUESS (e2e/GUESSES.md #32): several routing types at once, MULTICAST printed first
        let shown = java_order(&types).join(",");
        self.addresses.insert(
            name.to_string(),
            AddressState {
                routing_types: types,
                auto_created: false,
                temporary: false,
            },
        );
        Reply::ok(json!(format!(
            "Address [name={name}, routingTypes={{{shown}}}, autoCreated=false]"
        )))
    }

    // GUESS (e2e/GUESSES.md #33): bindings check and force semantics
    fn delete_address(&mut self, name: &str, force: bool) -> Reply {
        if !self.addresses.contains_key(name) {
            return Reply::fail(format!("AMQ229203: Address Does Not Exist: {name}"));
        }
        let bound: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.address == name)
            .map(|(n, _)| n.clone())
            .collect();
        if !bound.is_empty() {
            if !force {
                return Reply::fail(format!("AMQ229205: Address {name} has bindings"));
            }
            for q in bound {
                self.queues.remove(&q);
            }
        }
        self.addresses.remove(name);
        Reply::void()
    }

    /// Makes sure `address` exists with `rt`, auto-creating it; `Err` is the failure reply.
    fn bind_address(
        &mut self,
        address: &str,
        rt: RoutingType,
        auto_create: bool,
    ) -> Result<(), Reply> {
        match self.addresses.get(address) {
            Some(a) if a.routing_types.contains(&rt) => Ok(()),
            Some(a) => {
                let supported: Vec<&str> = java_order(&a.routing_types);
                Err(Reply::fail(format!(
                    // GUESS (e2e/GUESSES.md #32): Set rendering of the supported types
                    "AMQ229207: Can not create queue with routing type: {rt}, Supported routing types for address: {address} are [{}]",
                    supported.join(", ")
                )))
            }
            None if auto_create => {
                self.addresses.insert(
                    address.to_string(),
                    AddressState {
                        routing_types: BTreeSet::from([rt]),
                        auto_created: true,
                        temporary: false,
                    },
                );
                Ok(())
            }
            None => Err(Reply::fail(format!(
                "AMQ229203: Address Does Not Exist: {address}"
            ))),
        }
    }

    fn queue_exists(&self, name: &str) -> Option<Reply> {
        self.queues.get(name).map(|q| {
            Reply::fail(format!(
                "AMQ229019: Queue {name} already exists on address {}",
                q.address
            ))
        })
    }

    // GUESS (e2e/GUESSES.md #32): plain forms auto-create the address
    fn create_queue_plain(
        &mut self,
        address: &str,
        name: &str,
        rt: RoutingType,
        durable: bool,
    ) -> Reply {
        if let Some(reply) = self.queue_exists(name) {
            return reply;
        }
        if let Err(reply) = self.bind_address(address, rt, true) {
            return reply;
        }
        let config = queue_config(name, address, rt, durable, &serde_json::Map::new());
        self.insert_queue(name, address, rt, durable, false, config);
        Reply::void()
    }

    // GUESS (e2e/GUESSES.md #31): defaults, error texts, ignoreIfExists reply
    fn create_queue_json(&mut self, text: &str, ignore_if_exists: bool) -> Reply {
        let parse_error = || {
            Reply::fail(format!(
                "AMQ229229: Failed to parse JSON queue configuration: {text}"
            ))
        };
        let Ok(Json::Object(input)) = serde_json::from_str::<Json>(text) else {
            return parse_error();
        };
        let Some(name) = input.get("name").and_then(Json::as_str).map(str::to_string) else {
            return Reply::fail("AMQ229066: Queue name is null");
        };
        let address = input
            .get("address")
            .and_then(Json::as_str)
            .unwrap_or(&name)
            .to_string();
        let rt = match input.get("routing-type").and_then(Json::as_str) {
            None => RoutingType::Multicast,
            Some(text) => match routing(text) {
                Ok(rt) => rt,
                Err(text) => return Reply::fail(text),
            },
        };
        let durable = input.get("durable").and_then(Json::as_bool).unwrap_or(true);
        let auto_create = input
            .get("auto-create-address")
            .and_then(Json::as_bool)
            .unwrap_or(true);
        if let Some(existing) = self.queues.get(&name) {
            if ignore_if_exists {
                return Reply::ok(Json::String(config_text(existing.id, &existing.config)));
            }
            return self.queue_exists(&name).unwrap_or_else(parse_error);
        }
        if let Err(reply) = self.bind_address(&address, rt, auto_create) {
            return reply;
        }
        let config = queue_config(&name, &address, rt, durable, &input);
        let id = self.insert_queue(&name, &address, rt, durable, false, config.clone());
        Reply::ok(Json::String(config_text(id, &config)))
    }

    // GUESS (e2e/GUESSES.md #33): AMQ229025 argument, address removal, messages discarded
    fn destroy_queue(&mut self, name: &str, remove_consumers: bool, delete_address: bool) -> Reply {
        let Some(q) = self.queues.get(name) else {
            return Reply::fail(format!("AMQ229017: Queue {name} does not exist"));
        };
        if !remove_consumers && q.consumer_knob.saturating_add(q.link_consumers) > 0 {
            return Reply::fail(format!(
                "AMQ229025: Cannot delete queue {name} on binding {name} - it has consumers = org.apache.activemq.artemis.core.postoffice.impl.LocalQueueBinding"
            ));
        }
        let address = q.address.clone();
        self.queues.remove(name);
        if delete_address && !self.queues.values().any(|q| q.address == address) {
            self.addresses.remove(&address);
        }
        Reply::void()
    }

    fn queue_op(&mut self, name: &str, operation: &str, args: &[Json]) -> Reply {
        const OVERLOADS: &[(&str, &[P])] = &[
            ("getMessageCount", &[]),
            // GUESS (e2e/GUESSES.md #34): getConsumerCount/isTemporary/removeAllMessages not recorded
            ("getConsumerCount", &[]),
            ("getAddress", &[]),
            ("getRoutingType", &[]),
            ("isDurable", &[]),
            ("isTemporary", &[]),
            // GUESS (e2e/GUESSES.md #30): getUser (recorded) missing
            ("removeAllMessages", &[]),
        ];
        if let Err(reply) = Model::select(operation, args, OVERLOADS) {
            return reply;
        }
        let Some(q) = self.queues.get_mut(name) else {
            return Reply::fail(format!(
                "AMQ229067: Cannot find resource with name queue.{name}"
            ));
        };
        match operation {
            "getMessageCount" => Reply::ok(json!(q.messages)),
            "getConsumerCount" => {
                Reply::ok(json!(q.consumer_knob.saturating_add(q.link_consumers)))
            }
            "getAddress" => Reply::ok(json!(q.address)),
            "getRoutingType" => Reply::ok(json!(q.routing_type.as_str())),
            "isDurable" => Reply::ok(json!(q.durable)),
            "isTemporary" => Reply::ok(json!(q.temporary)),
            _ => {
                let removed = q.messages;
                q.messages = 0;
                Reply::ok(json!(removed))
            }
        }
    }

    fn address_op(&mut self, name: &str, operation: &str, args: &[Json]) -> Reply {
        // GUESS (e2e/GUESSES.md #34): address.<name> operations not recorded
        const OVERLOADS: &[(&str, &[P])] = &[("getQueueNames", &[]), ("getRoutingTypes", &[])];
        if let Err(reply) = Model::select(operation, args, OVERLOADS) {
            return reply;
        }
        match operation {
            "getQueueNames" => Reply::ok(json!(
                self.queues
                    .iter()
                    .filter(|(_, q)| q.address == name)
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>()
            )),
            _ => {
                let types = self
                    .addresses
                    .get(name)
                    .map(|a| java_order(&a.routing_types))
                    .unwrap_or_default();
                Reply::ok(json!(types))
            }
        }
    }
}

/// The queue configuration createQueue answers with, in Artemis' key order (transcript line 4), with the
/// request's values for the keys it gave.
// GUESS (e2e/GUESSES.md #31): only the recorded keys echoed; user/filter dropped
fn queue_config(
    name: &str,
    address: &str,
    rt: RoutingType,
    durable: bool,
    input: &serde_json::Map<String, Json>,
) -> Vec<(String, Json)> {
    let defaults: [(&str, Json); 24] = [
        ("name", json!(name)),
        ("address", json!(address)),
        ("routing-type", json!(rt.as_str())),
        ("durable", json!(durable)),
        ("max-consumers", json!(-1)),
        ("exclusive", json!(false)),
        ("group-rebalance", json!(false)),
        ("group-rebalance-pause-dispatch", json!(false)),
        ("group-buckets", json!(-1)),
        ("last-value", json!(false)),
        ("non-destructive", json!(false)),
        ("purge-on-no-consumers", json!(false)),
        ("enabled", json!(true)),
        ("consumers-before-dispatch", json!(0)),
        ("delay-before-dispatch", json!(-1)),
        ("auto-delete", json!(false)),
        ("auto-delete-delay", json!(0)),
        ("auto-delete-message-count", json!(0)),
        ("ring-size", json!(-1)),
        ("configuration-managed", json!(false)),
        ("temporary", json!(false)),
        ("auto-create-address", json!(true)),
        ("internal", json!(false)),
        ("transient", json!(false)),
    ];
    let fixed = ["name", "address", "routing-type", "durable"];
    let mut out: Vec<(String, Json)> = defaults
        .into_iter()
        .map(|(k, v)| {
            let v = match input.get(k) {
                Some(given) if !fixed.contains(&k) => given.clone(),
                _ => v,
            };
            (k.to_string(), v)
        })
        .collect();
    out.push(("auto-created".to_string(), json!(false)));
    out
}

/// `{"id":N,...}` in the recorded key order.
fn config_text(id: u64, config: &[(String, Json)]) -> String {
    let mut text = format!("{{\"id\":{id}");
    for (k, v) in config {
        text.push(',');
        text.push_str(&Json::String(k.clone()).to_string());
        text.push(':');
        text.push_str(&v.to_string());
    }
    text.push('}');
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn call(m: &mut Model, resource: &str, op: &str, args: &str) -> (bool, Option<String>) {
        let r = m.invoke(resource, op, Some(args));
        (r.succeeded, r.body)
    }

    fn ok(body: &str) -> (bool, Option<String>) {
        (true, Some(body.to_string()))
    }

    fn fail(text: &str) -> (bool, Option<String>) {
        (false, Some(json!([text]).to_string()))
    }

    const VOID: (bool, Option<String>) = (true, None);

    #[test]
    fn transcript_sequence() {
        let mut m = Model::new();
        // line 1
        assert_eq!(
            call(&mut m, "broker", "getVersion", "[]"),
            ok(r#"["2.21.0.redhat-00025"]"#)
        );
        // lines 2-3
        assert_eq!(
            call(
                &mut m,
                "broker",
                "createAddress",
                r#"["addr.one","ANYCAST"]"#
            ),
            ok(r#"["Address [name=addr.one, routingTypes={ANYCAST}, autoCreated=false]"]"#)
        );
        assert_eq!(
            call(
                &mut m,
                "broker",
                "createAddress",
                r#"["addr.one","ANYCAST"]"#
            ),
            fail("AMQ229204: Address already exists: addr.one")
        );
        // line 4
        let (succeeded, body) = call(
            &mut m,
            "broker",
            "createQueue",
            &json!([
                r#"{"name":"q.one","address":"addr.one","routing-type":"ANYCAST","durable":true}"#
            ])
            .to_string(),
        );
        assert!(succeeded);
        let inner: Vec<String> = serde_json::from_str(&body.unwrap()).unwrap();
        let expected = r#"{"id":ID,"name":"q.one","address":"addr.one","routing-type":"ANYCAST","durable":true,"max-consumers":-1,"exclusive":false,"group-rebalance":false,"group-rebalance-pause-dispatch":false,"group-buckets":-1,"last-value":false,"non-destructive":false,"purge-on-no-consumers":false,"enabled":true,"consumers-before-dispatch":0,"delay-before-dispatch":-1,"auto-delete":false,"auto-delete-delay":0,"auto-delete-message-count":0,"ring-size":-1,"configuration-managed":false,"temporary":false,"auto-create-address":true,"internal":false,"transient":false,"auto-created":false}"#;
        let got_id: Json = serde_json::from_str::<Json>(&inner[0]).unwrap()["id"].clone();
        assert_eq!(inner[0], expected.replace("ID", &got_id.to_string()));
        // line 5
        assert_eq!(
            call(
                &mut m,
                "broker",
                "createQueue",
                r#"["addr.two","ANYCAST","q.two"]"#
            ),
            fail("No enum constant org.apache.activemq.artemis.api.core.RoutingType.Q.TWO")
        );
        // line 6
        assert_eq!(
            call(
                &mut m,
                "broker",
                "createQueue",
                r#"["addr.three","q.three","ANYCAST"]"#
            ),
            VOID
        );
        // line 7
        assert_eq!(
            call(
                &mut m,
                "broker",
                "createQueue",
                &json!([r#"{"name":"q.one","address":"addr.one","routing-type":"ANYCAST"}"#])
                    .to_string()
            ),
            fail("AMQ229019: Queue q.one already exists on address addr.one")
        );
        // lines 8-9 (names; temp queues come from links)
        let names = |m: &mut Model, op: &str| -> BTreeSet<String> {
            let (_, body) = call(m, "broker", op, "[]");
            let v: Vec<Vec<String>> = serde_json::from_str(&body.unwrap()).unwrap();
            v[0].iter().cloned().collect()
        };
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            names(&mut m, "getAddressNames"),
            set(&[
                "activemq.management",
                "addr.three",
                "addr.one",
                "DLQ",
                "ExpiryQueue",
                "activemq.notifications"
            ])
        );
        assert_eq!(
            names(&mut m, "getQueueNames"),
            set(&["DLQ", "ExpiryQueue", "q.one", "q.three"])
        );
        // line 10 (case-insensitive order)
        assert_eq!(
            call(&mut m, "broker", "listAddresses", r#"[","]"#),
            ok(
                r#"["activemq.management,activemq.notifications,addr.one,addr.three,DLQ,ExpiryQueue"]"#
            )
        );
        // line 11
        assert_eq!(
            call(&mut m, "queue.q.one", "getMessageCount", "[]"),
            ok("[0]")
        );
        // lines 12-13
        assert_eq!(
            call(&mut m, "broker", "noSuchOperation", "[]"),
            fail("AMQ229069: no operation noSuchOperation/0")
        );
        assert_eq!(
            call(&mut m, "broker", "createAddress", r#"["x"]"#),
            fail("AMQ229069: no operation createAddress/1")
        );
        // lines 14-20
        assert_eq!(call(&mut m, "broker", "destroyQueue", r#"["q.one"]"#), VOID);
        assert_eq!(
            call(&mut m, "broker", "destroyQueue", r#"["q.two"]"#),
            fail("AMQ229017: Queue q.two does not exist")
        );
        assert_eq!(
            call(&mut m, "broker", "destroyQueue", r#"["q.three"]"#),
            VOID
        );
        assert_eq!(
            call(&mut m, "broker", "deleteAddress", r#"["addr.one"]"#),
            VOID
        );
        assert_eq!(
            call(&mut m, "broker", "deleteAddress", r#"["addr.two"]"#),
            fail("AMQ229203: Address Does Not Exist: addr.two")
        );
        assert_eq!(
            call(&mut m, "broker", "deleteAddress", r#"["addr.three"]"#),
            VOID
        );
        assert_eq!(
            call(&mut m, "broker", "destroyQueue", r#"["nope"]"#),
            fail("AMQ229017: Queue nope does not exist")
        );
        // line 21
        assert_eq!(
            names(&mut m, "getAddressNames"),
            set(&[
                "activemq.management",
                "DLQ",
                "ExpiryQueue",
                "activemq.notifications"
            ])
        );
        assert_eq!(m.counters.writes, 14);
        assert_eq!(m.counters.of("createQueue"), 4);
    }

    #[test]
    fn consumers_block_destroy_and_restart_keeps_durable_state() {
        let mut m = Model::new();
        call(
            &mut m,
            "broker",
            "createQueue",
            &json!([r#"{"name":"q","address":"q","routing-type":"ANYCAST","durable":true}"#])
                .to_string(),
        );
        call(
            &mut m,
            "broker",
            "createQueue",
            &json!([r#"{"name":"nd","address":"nd","routing-type":"ANYCAST","durable":false}"#])
                .to_string(),
        );
        m.create_temporary("t-uuid");
        assert!(m.set_consumers("q", 1));
        assert!(m.set_message_count("q", 5));
        let (s, body) = call(&mut m, "broker", "destroyQueue", r#"["q"]"#);
        assert!(!s);
        assert!(
            body.unwrap()
                .contains("AMQ229025: Cannot delete queue q on binding q - it has consumers")
        );
        assert_eq!(
            call(&mut m, "broker", "deleteAddress", r#"["q"]"#),
            fail("AMQ229205: Address q has bindings")
        );
        m.restart();
        let qs = m.queues();
        assert_eq!(qs["q"].messages, 5);
        assert!(!qs.contains_key("nd") && !qs.contains_key("t-uuid"));
        assert!(m.addresses().contains_key("nd") && !m.addresses().contains_key("t-uuid"));
        assert_eq!(
            call(&mut m, "broker", "destroyQueue", r#"["q", true]"#),
            VOID
        );
        assert_eq!(
            call(&mut m, "queue.q", "getMessageCount", "[]"),
            fail("AMQ229067: Cannot find resource with name queue.q")
        );
    }

    #[test]
    fn routing_type_mismatch_and_multicast_delivery() {
        let mut m = Model::new();
        call(&mut m, "broker", "createAddress", r#"["t","MULTICAST"]"#);
        let (s, body) = call(
            &mut m,
            "broker",
            "createQueue",
            &json!([r#"{"name":"x","address":"t","routing-type":"ANYCAST"}"#]).to_string(),
        );
        assert!(!s);
        assert!(body.unwrap().contains("AMQ229207"));
        assert_eq!(
            call(
                &mut m,
                "broker",
                "createAddress",
                r#"["both","ANYCAST,MULTICAST"]"#
            ),
            ok(r#"["Address [name=both, routingTypes={MULTICAST,ANYCAST}, autoCreated=false]"]"#)
        );
        call(&mut m, "broker", "createQueue", r#"["t","s1",true]"#);
        call(&mut m, "broker", "createQueue", r#"["t","s2",true]"#);
        assert!(m.deliver("t"));
        assert_eq!(m.queues()["s1"].messages, 1);
        assert_eq!(m.queues()["s2"].messages, 1);
        assert!(!m.deliver("nowhere"));
    }
}
