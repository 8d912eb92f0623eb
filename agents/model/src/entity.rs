//! Router entities: what an address set means for one qdrouterd (docs/architecture.md §4). Every name starts with `maas-`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::placement::{BrokerPod, hex};
use crate::{Address, AddressKind, AddressSet, Brokers, FlavorSet, cluster_for};

/// Prefix of every entity name maas creates; entities without it are never touched.
pub const NAME_PREFIX: &str = "maas-";

/// The router entity types maas manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityType {
    /// `org.apache.qpid.dispatch.connector` (route-container connectors to broker pods). Created first, deleted last.
    Connector,
    /// `org.apache.qpid.dispatch.router.config.address`
    Address,
    /// `org.apache.qpid.dispatch.router.config.linkRoute`
    LinkRoute,
    /// `org.apache.qpid.dispatch.router.config.autoLink`
    AutoLink,
}

impl EntityType {
    /// Every managed type, in the order entities are created (connectors first).
    pub const ALL: [EntityType; 4] = [
        EntityType::Connector,
        EntityType::Address,
        EntityType::LinkRoute,
        EntityType::AutoLink,
    ];

    /// The FULL management type name (short names are rejected by the router with 400).
    pub fn full_name(self) -> &'static str {
        match self {
            EntityType::Connector => "org.apache.qpid.dispatch.connector",
            EntityType::Address => "org.apache.qpid.dispatch.router.config.address",
            EntityType::LinkRoute => "org.apache.qpid.dispatch.router.config.linkRoute",
            EntityType::AutoLink => "org.apache.qpid.dispatch.router.config.autoLink",
        }
    }

    /// Short name for logs, metrics labels and tables (`address`, `linkRoute`, ...).
    pub fn short_name(self) -> &'static str {
        match self {
            EntityType::Connector => "connector",
            EntityType::Address => "address",
            EntityType::LinkRoute => "linkRoute",
            EntityType::AutoLink => "autoLink",
        }
    }

    /// The type with FULL management name `name`; None for types maas does not manage.
    pub fn from_full_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.full_name() == name)
    }
}

/// One desired router entity: type, name and exactly the attributes maas sets. Values are normalised to what the
/// router reports back (e.g. a connector `port` is a string), so a reply can be compared attribute by attribute.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Which management type this is.
    pub entity_type: EntityType,
    /// The entity name (always starting with [`NAME_PREFIX`]).
    pub name: String,
    /// Exactly the attributes maas sets, as the router reports them back.
    pub attributes: BTreeMap<String, Value>,
}

impl Entity {
    /// Attribute names whose values are secrets: never logged, never printed by `plan`.
    pub const SECRET_ATTRIBUTES: &'static [&'static str] = &["saslPassword"]; // maas sends file:<path>

    /// A copy fit for logs and `plan` output: secret attributes replaced by `"***"`.
    pub fn redacted(&self) -> Entity {
        let mut e = self.clone();
        for k in Self::SECRET_ATTRIBUTES {
            if let Some(v) = e.attributes.get_mut(*k) {
                *v = Value::String("***".into());
            }
        }
        e
    }

    /// True when every attribute maas sets has the same value in `reported` (what the router returned for this
    /// entity; it holds more attributes than we set, and those are ignored).
    pub fn matches_reported(&self, reported: &serde_json::Map<String, Value>) -> bool {
        self.attributes
            .iter()
            .all(|(k, v)| reported.get(k) == Some(v))
    }
}

/// A set of entities keyed by (type, name). Iteration order is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitySet {
    /// `(type, name)` -> entity.
    pub entities: BTreeMap<(EntityType, String), Entity>,
}

impl EntitySet {
    /// Add (or replace) an entity.
    pub fn insert(&mut self, e: Entity) {
        self.entities.insert((e.entity_type, e.name.clone()), e);
    }
    /// The entity of type `t` named `name`.
    pub fn get(&self, t: EntityType, name: &str) -> Option<&Entity> {
        self.entities.get(&(t, name.to_string()))
    }
    /// Remove and return the entity of type `t` named `name`.
    pub fn remove(&mut self, t: EntityType, name: &str) -> Option<Entity> {
        self.entities.remove(&(t, name.to_string()))
    }
    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entities.len()
    }
    /// True when there are no entities.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
    /// The entities in (type, name) order.
    pub fn iter(&self) -> impl Iterator<Item = &Entity> {
        self.entities.values()
    }
    /// A stable hash (hex SHA-256, 32 chars) of the whole set: equal sets give equal hashes on every machine.
    /// It is [`DigestSet::generation_hash`] of [`EntitySet::digests`], so the compact form gives the same hash.
    pub fn generation_hash(&self) -> String {
        self.digests().generation_hash()
    }

    /// The compact form: one 64-bit digest per entity.
    pub fn digests(&self) -> DigestSet {
        let mut b = DigestSetBuilder::default();
        for ((t, name), e) in &self.entities {
            b.push(*t, name, entity_digest(e));
        }
        b.build()
    }

    /// A copy fit for logs and `plan` output: every entity [`Entity::redacted`].
    pub fn redacted(&self) -> EntitySet {
        EntitySet {
            entities: self
                .entities
                .iter()
                .map(|(k, e)| (k.clone(), e.redacted()))
                .collect(),
        }
    }

    /// The entities of one type, in name order.
    pub fn of_type(&self, t: EntityType) -> impl Iterator<Item = &Entity> {
        self.iter().filter(move |e| e.entity_type == t)
    }
}

/// Settings that shape the entities but are not in the address set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EntityOptions {
    /// `saslMechanisms` of broker connectors (e.g. `PLAIN`); omitted when None.
    pub broker_sasl_mechanisms: Option<String>,
    /// `saslUsername` of broker connectors; omitted when None.
    pub broker_username: Option<String>,
    /// Absolute path of the broker password file AS MOUNTED IN THE ROUTER CONTAINER: connectors get
    /// `saslPassword: file:<path>` and the router reads the file. The password itself never passes through maas:
    /// qdrouterd hands a clear-text `saslPassword` back to any client that can QUERY `$management`
    /// (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §3).
    pub broker_password_file: Option<String>,
    /// `sslProfile` of broker connectors, when the brokers use TLS.
    pub broker_ssl_profile: Option<String>,
    /// Route `$subctrl` (subscription-service's API, docs/architecture.md §5): the router gets the address
    /// `maas-address/$subctrl` {prefix `$subctrl`, distribution balanced}. Not an address of the user's set (`$`
    /// is reserved there), so it is an option of the router.
    pub subctrl: bool,
}

/// The address subscription-service's `$subctrl` API is reached at.
pub const SUBCTRL_ADDRESS: &str = "$subctrl";

/// Name of the connector to a broker pod: `maas-broker-<pod>`.
pub fn connector_name(pod: &str) -> String {
    format!("maas-broker-{pod}")
}

/// Debug output never shows secrets: secret attributes appear as `"***"`.
impl std::fmt::Debug for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("Entity")
            .field("entity_type", &shown.entity_type)
            .field("name", &shown.name)
            .field("attributes", &shown.attributes)
            .finish()
    }
}

/// Debug output never shows the broker password.
impl std::fmt::Debug for EntityOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityOptions")
            .field("broker_sasl_mechanisms", &self.broker_sasl_mechanisms)
            .field("broker_username", &self.broker_username)
            .field("broker_password_file", &self.broker_password_file)
            .field("broker_ssl_profile", &self.broker_ssl_profile)
            .field("subctrl", &self.subctrl)
            .finish()
    }
}

/// Direction of an autoLink or linkRoute, as the router spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the router: messages/links from the broker (consumers empty the broker).
    In,
    /// Away from the router: messages/links to the broker.
    Out,
}

impl Direction {
    /// `in` or `out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// The directions a pod gets: both, or only `in` while it drains.
    fn for_pod(pod: &BrokerPod) -> &'static [Direction] {
        if pod.draining {
            &[Direction::In]
        } else {
            &[Direction::In, Direction::Out]
        }
    }
}

/// Name of the `router.config.address` entity of address `address`: `maas-address/<address>`.
pub fn address_entity_name(address: &str) -> String {
    format!("maas-address/{address}")
}

/// Name of an autoLink: `maas-autolink/<address>/<pod>/<in|out>`.
pub fn autolink_name(address: &str, pod: &str, direction: Direction) -> String {
    format!("maas-autolink/{address}/{pod}/{}", direction.as_str())
}

/// Name of a linkRoute: `maas-linkroute/<address>/<pod>/<in|out>`.
pub fn linkroute_name(address: &str, pod: &str, direction: Direction) -> String {
    format!("maas-linkroute/{address}/{pod}/{}", direction.as_str())
}

/// Build an attribute map from `(name, value)` pairs.
fn attrs<const N: usize>(pairs: [(&str, Value); N]) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The connector entity to a broker pod (`port` as a string, like the router reports it).
pub fn connector_entity(pod: &BrokerPod, opts: &EntityOptions) -> Entity {
    let mut attributes = attrs([
        ("role", json!("route-container")),
        ("host", json!(pod.host)),
        ("port", json!(pod.port.to_string())),
    ]);
    let optional = [
        ("saslMechanisms", &opts.broker_sasl_mechanisms),
        ("saslUsername", &opts.broker_username),
        (
            "saslPassword", // file:<path> only: the router reads the file
            &opts
                .broker_password_file
                .as_ref()
                .map(|p| format!("file:{p}")),
        ),
        ("sslProfile", &opts.broker_ssl_profile),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            attributes.insert(name.to_string(), json!(v));
        }
    }
    Entity {
        entity_type: EntityType::Connector,
        name: connector_name(&pod.name),
        attributes,
    }
}

/// A stable 64-bit digest of one entity: the first 8 bytes of SHA-256 over its canonical JSON
/// `[full type name, name, attributes]` (object keys sorted, no whitespace). Equal entities give equal digests on
/// every machine and in every version.
pub fn entity_digest(e: &Entity) -> u64 {
    let mut h = Sha256::new();
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    buf.push(b'[');
    json_str(&mut buf, e.entity_type.full_name());
    buf.push(b',');
    json_str(&mut buf, &e.name);
    buf.extend_from_slice(b",{");
    for (i, (k, v)) in e.attributes.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        json_str(&mut buf, k);
        buf.push(b':');
        match v {
            Value::String(s) => json_str(&mut buf, s),
            Value::Bool(true) => buf.extend_from_slice(b"true"),
            Value::Bool(false) => buf.extend_from_slice(b"false"),
            other => {
                let mut text = String::new();
                write_canonical(other, &mut text);
                buf.extend_from_slice(text.as_bytes());
            }
        }
    }
    buf.extend_from_slice(b"}]");
    h.update(&buf);
    let digest = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Append `s` as a JSON string (serde_json's escaping, as in the canonical text).
fn json_str(buf: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *buf, s).is_err() {
        // Writing to a Vec cannot fail; keep the digest defined anyway.
        buf.extend_from_slice(s.as_bytes());
    }
}

/// The compact form of an [`EntitySet`]: (type, name) -> [`entity_digest`]. A few dozen bytes per entity instead
/// of the whole attribute map, enough to diff against what a router holds and to name the generation.
///
/// Stored as two buffers (every name back to back, and one fixed-size entry per entity sorted by (type, name))
/// instead of a map of 25,000 small allocations: a new desired state then costs two allocations, nothing
/// interleaves with the transient garbage of building it, and the heap does not fragment edit after edit.
#[derive(Clone, Default)]
pub struct DigestSet {
    /// Every name, back to back.
    names: String,
    /// Sorted by (type, name), names unique per type.
    entries: Vec<DigestEntry>,
}

#[derive(Debug, Clone, Copy)]
struct DigestEntry {
    start: usize,
    len: usize,
    digest: u64,
    entity_type: EntityType,
}

impl DigestSet {
    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entities.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn name_of(&self, e: &DigestEntry) -> &str {
        self.names.get(e.start..e.start + e.len).unwrap_or_default()
    }

    fn position(&self, t: EntityType, name: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|e| (e.entity_type, self.name_of(e)).cmp(&(t, name)))
    }

    /// The digest of the entity of type `t` named `name`.
    pub fn get(&self, t: EntityType, name: &str) -> Option<u64> {
        self.position(t, name).ok().map(|i| self.entries[i].digest)
    }

    /// True when the set holds an entity of type `t` named `name`.
    pub fn contains(&self, t: EntityType, name: &str) -> bool {
        self.position(t, name).is_ok()
    }

    /// Every (type, name, digest), in (type, name) order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (EntityType, &str, u64)> + '_ {
        self.entries
            .iter()
            .map(|e| (e.entity_type, self.name_of(e), e.digest))
    }

    /// A stable hash (hex SHA-256, 32 chars) of the set: SHA-256 over one line
    /// `<full type name>\0<name>\0<digest as 16 hex digits>\n` per entity in (type, name) order.
    pub fn generation_hash(&self) -> String {
        self.generation_hash_where(|_, _| true)
    }

    /// [`Self::generation_hash`] over the entities `keep` accepts only (router-agent's marker leaves the mesh
    /// connectors out, so a router pod joining or leaving never rewrites it).
    pub fn generation_hash_where(&self, keep: impl Fn(EntityType, &str) -> bool) -> String {
        let mut h = Sha256::new();
        for (t, name, d) in self.iter().filter(|(t, name, _)| keep(*t, name)) {
            h.update(t.full_name().as_bytes());
            h.update([0]);
            h.update(name.as_bytes());
            h.update([0]);
            h.update(format!("{d:016x}\n").as_bytes());
        }
        hex(&h.finalize())[..32].to_string()
    }
}

impl PartialEq for DigestSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for DigestSet {}

impl std::fmt::Debug for DigestSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(t, n, d)| ((t, n), d)))
            .finish()
    }
}

/// Builds a [`DigestSet`] from entries in any order; a later entry of the same type and name replaces an earlier
/// one.
#[derive(Debug, Default)]
pub struct DigestSetBuilder {
    set: DigestSet,
}

impl DigestSetBuilder {
    /// Room for about `entities` entities with names of about `name_bytes` bytes in all.
    pub fn with_capacity(entities: usize, name_bytes: usize) -> Self {
        DigestSetBuilder {
            set: DigestSet {
                names: String::with_capacity(name_bytes),
                entries: Vec::with_capacity(entities),
            },
        }
    }

    /// Add the entity of type `t` named `name` with digest `digest`.
    pub fn push(&mut self, t: EntityType, name: &str, digest: u64) {
        let start = self.set.names.len();
        self.set.names.push_str(name);
        self.set.entries.push(DigestEntry {
            start,
            len: name.len(),
            digest,
            entity_type: t,
        });
    }

    /// The finished set.
    pub fn build(self) -> DigestSet {
        let DigestSet { names, mut entries } = self.set;
        // In place (no merge buffer); equal keys stay in push order (a later push has a later name), so that the
        // last of them is kept below.
        entries.sort_unstable_by(|a, b| {
            let name = |e: &DigestEntry| names.get(e.start..e.start + e.len).unwrap_or_default();
            (a.entity_type, name(a), a.start).cmp(&(b.entity_type, name(b), b.start))
        });
        entries.dedup_by(|later, earlier| {
            let same = later.entity_type == earlier.entity_type
                && names.get(later.start..later.start + later.len)
                    == names.get(earlier.start..earlier.start + earlier.len);
            if same {
                *earlier = *later;
            }
            same
        });
        let mut set = DigestSet { names, entries };
        set.names.shrink_to_fit();
        set.entries.shrink_to_fit();
        set
    }
}

impl FromIterator<(EntityType, String, u64)> for DigestSet {
    fn from_iter<I: IntoIterator<Item = (EntityType, String, u64)>>(iter: I) -> Self {
        let mut b = DigestSetBuilder::default();
        for (t, name, d) in iter {
            b.push(t, &name, d);
        }
        b.build()
    }
}

/// The digests of the desired entities, built without ever holding them all (see [`for_each_desired_entity`]).
pub fn desired_digests(
    addresses: &AddressSet,
    flavors: &FlavorSet,
    brokers: &Brokers,
    opts: &EntityOptions,
) -> DigestSet {
    // Room for about three entities of ~30 bytes of name per address, so that the buffers do not grow (and copy)
    // on the way; the builder gives back what is left over.
    let mut set = DigestSetBuilder::with_capacity(addresses.len() * 3 + 16, addresses.len() * 90);
    for_each_desired_entity(addresses, flavors, brokers, opts, |e| {
        set.push(e.entity_type, &e.name, entity_digest(&e));
    });
    set.build()
}

/// The desired router entities for an address set (docs/architecture.md §4 table).
///
/// - anycast: address {prefix, distribution balanced, waypoint false}; broadcast: {prefix, distribution
///   multicast}.
/// - queue: address {prefix, balanced, waypoint true} plus, per pod of its cluster, autoLinks {address,
///   direction, connection}; topic: per pod linkRoutes {prefix, direction, connection}. A draining pod gets only
///   the `in` one. A cluster without pods gives a queue only its address entity, a topic nothing.
/// - a route-container connector `maas-broker-<pod>` per pod of every cluster an address uses.
pub fn desired_entities(
    addresses: &AddressSet,
    flavors: &FlavorSet,
    brokers: &Brokers,
    opts: &EntityOptions,
) -> EntitySet {
    let mut set = EntitySet::default();
    for_each_desired_entity(addresses, flavors, brokers, opts, |e| set.insert(e));
    set
}

/// Hand every desired entity to `f`, one at a time (connectors first, then per address in address order), so a
/// caller can digest or filter them without holding the whole set.
pub fn for_each_desired_entity(
    addresses: &AddressSet,
    flavors: &FlavorSet,
    brokers: &Brokers,
    opts: &EntityOptions,
    mut f: impl FnMut(Entity),
) {
    for e in option_entities(opts) {
        f(e);
    }
    for e in connector_entities(addresses, flavors, brokers, opts) {
        f(e);
    }
    for a in addresses.iter() {
        for_each_entity_of_address(a, flavors, brokers, &mut f);
    }
}

/// Entities the options alone ask for (not tied to an address): `maas-address/$subctrl` with
/// [`EntityOptions::subctrl`].
pub fn option_entities(opts: &EntityOptions) -> Vec<Entity> {
    if !opts.subctrl {
        return Vec::new();
    }
    vec![Entity {
        entity_type: EntityType::Address,
        name: address_entity_name(SUBCTRL_ADDRESS),
        attributes: attrs([
            ("prefix", json!(SUBCTRL_ADDRESS)),
            ("distribution", json!("balanced")),
            ("waypoint", json!(false)),
        ]),
    }]
}

/// The connectors to the broker pods of every cluster some address uses.
pub fn connector_entities(
    addresses: &AddressSet,
    flavors: &FlavorSet,
    brokers: &Brokers,
    opts: &EntityOptions,
) -> Vec<Entity> {
    let mut used_clusters = BTreeSet::new();
    for a in addresses.iter() {
        if let Some(cluster) = cluster_for(a, flavors)
            && !brokers.pods(&cluster).is_empty()
        {
            used_clusters.insert(cluster);
        }
    }
    used_clusters
        .iter()
        .flat_map(|cluster| brokers.pods(cluster))
        .map(|pod| connector_entity(pod, opts))
        .collect()
}

/// Hand the entities of one address (its router address, autoLinks, linkRoutes; not the connectors) to `set`.
pub fn for_each_entity_of_address(
    a: &Address,
    flavors: &FlavorSet,
    brokers: &Brokers,
    mut set: impl FnMut(Entity),
) {
    let prefix = &a.address;
    match a.kind {
        AddressKind::Anycast => set(Entity {
            entity_type: EntityType::Address,
            name: address_entity_name(prefix),
            attributes: attrs([
                ("prefix", json!(prefix)),
                ("distribution", json!("balanced")),
                ("waypoint", json!(false)),
            ]),
        }),
        AddressKind::Broadcast => set(Entity {
            entity_type: EntityType::Address,
            name: address_entity_name(prefix),
            attributes: attrs([
                ("prefix", json!(prefix)),
                ("distribution", json!("multicast")),
            ]),
        }),
        AddressKind::Queue | AddressKind::Topic => {
            if a.kind == AddressKind::Queue {
                set(Entity {
                    entity_type: EntityType::Address,
                    name: address_entity_name(prefix),
                    attributes: attrs([
                        ("prefix", json!(prefix)),
                        ("distribution", json!("balanced")),
                        ("waypoint", json!(true)),
                    ]),
                });
            }
            let Some(cluster) = cluster_for(a, flavors) else {
                return;
            };
            let pods = brokers.pods(&cluster);
            // A topic's links go to the ONE pod it lives on (a publisher and its subscribers must meet there); a
            // queue's to every pod (the router collects from all of them).
            let pods = if a.kind == AddressKind::Topic {
                crate::placement::topic_pod(prefix, pods)
                    .map(std::slice::from_ref)
                    .unwrap_or(&[])
            } else {
                pods
            };
            for pod in pods {
                // A queue's links only to Ready pods that hold it (storage-controller said so); a draining pod keeps
                // its `in` link whatever its annotation says (it is not re-annotated while it drains). A topic's
                // pod keeps its links while it is not Ready (they wait for it: readiness does not move a topic).
                if a.kind == AddressKind::Queue
                    && (!pod.ready || (pod.provisioned.is_some() && !pod.draining))
                {
                    continue;
                }
                let connection = connector_name(&pod.name);
                for &dir in Direction::for_pod(pod) {
                    let e = if a.kind == AddressKind::Queue {
                        Entity {
                            entity_type: EntityType::AutoLink,
                            name: autolink_name(prefix, &pod.name, dir),
                            attributes: attrs([
                                ("address", json!(prefix)),
                                ("direction", json!(dir.as_str())),
                                ("connection", json!(connection)),
                            ]),
                        }
                    } else {
                        Entity {
                            entity_type: EntityType::LinkRoute,
                            name: linkroute_name(prefix, &pod.name, dir),
                            attributes: attrs([
                                ("prefix", json!(prefix)),
                                ("direction", json!(dir.as_str())),
                                ("connection", json!(connection)),
                            ]),
                        }
                    };
                    set(e);
                }
            }
        }
        AddressKind::Subscription => {
            // Consumers of S reach the durable queue S on its topic's pod as `T::S` (the fully qualified queue
            // name; docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §4).
            let (Some(topic), Some(cluster)) = (&a.topic, cluster_for(a, flavors)) else {
                return;
            };
            let Some(pod) = crate::placement::topic_pod(topic, brokers.pods(&cluster)) else {
                return;
            };
            set(Entity {
                entity_type: EntityType::LinkRoute,
                name: linkroute_name(prefix, &pod.name, Direction::Out),
                attributes: attrs([
                    ("prefix", json!(prefix)),
                    ("direction", json!(Direction::Out.as_str())),
                    ("connection", json!(connector_name(&pod.name))),
                    ("addExternalPrefix", json!(format!("{topic}::"))),
                ]),
            });
        }
    }
}

/// Append `v` as JSON with object keys sorted at every level.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Address, BrokerPod, Flavor};

    fn addresses(items: &[(&str, AddressKind, Option<&str>)]) -> AddressSet {
        let mut s = AddressSet::default();
        for (a, k, f) in items {
            s.insert(Address {
                address: a.to_string(),
                kind: *k,
                flavor: f.map(str::to_string),
                topic: None,
            });
        }
        s
    }

    fn flavors() -> FlavorSet {
        let mut set = FlavorSet::default();
        for (name, shared) in [("vanilla", false), ("shared-small", true)] {
            set.insert(Flavor {
                name: name.into(),
                kind: None,
                description: None,
                template_name: None,
                template_parameters: BTreeMap::new(),
                shared,
                extra: BTreeMap::new(),
            });
        }
        set
    }

    fn pod(name: &str, port: u16, draining: bool) -> BrokerPod {
        BrokerPod {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            draining,
            provisioned: None,
            ready: true,
        }
    }

    fn brokers(clusters: &[(&str, Vec<BrokerPod>)]) -> Brokers {
        Brokers {
            clusters: clusters
                .iter()
                .map(|(c, p)| (c.to_string(), p.clone()))
                .collect(),
        }
    }

    /// `(short type, name, attributes as compact JSON)` of every entity, in set order.
    fn table(set: &EntitySet) -> Vec<(&'static str, String, String)> {
        set.iter()
            .map(|e| {
                let attrs: serde_json::Map<String, Value> = e
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (
                    e.entity_type.short_name(),
                    e.name.clone(),
                    Value::Object(attrs).to_string(),
                )
            })
            .collect()
    }

    fn row(t: &'static str, name: &str, attrs: &str) -> (&'static str, String, String) {
        (t, name.to_string(), attrs.to_string())
    }

    #[test]
    fn entities_for_each_kind() {
        let a = addresses(&[
            ("chat", AddressKind::Anycast, None),
            ("events", AddressKind::Broadcast, None),
            ("orders", AddressKind::Queue, Some("vanilla")),
            ("news", AddressKind::Topic, Some("vanilla")),
        ]);
        let b = brokers(&[
            ("orders", vec![pod("orders-0", 5674, false)]),
            ("news", vec![pod("news-0", 5675, false)]),
        ]);
        let got = table(&desired_entities(
            &a,
            &flavors(),
            &b,
            &EntityOptions::default(),
        ));
        assert_eq!(
            got,
            vec![
                row(
                    "connector",
                    "maas-broker-news-0",
                    r#"{"host":"127.0.0.1","port":"5675","role":"route-container"}"#
                ),
                row(
                    "connector",
                    "maas-broker-orders-0",
                    r#"{"host":"127.0.0.1","port":"5674","role":"route-container"}"#
                ),
                row(
                    "address",
                    "maas-address/chat",
                    r#"{"distribution":"balanced","prefix":"chat","waypoint":false}"#
                ),
                row(
                    "address",
                    "maas-address/events",
                    r#"{"distribution":"multicast","prefix":"events"}"#
                ),
                row(
                    "address",
                    "maas-address/orders",
                    r#"{"distribution":"balanced","prefix":"orders","waypoint":true}"#
                ),
                row(
                    "linkRoute",
                    "maas-linkroute/news/news-0/in",
                    r#"{"connection":"maas-broker-news-0","direction":"in","prefix":"news"}"#
                ),
                row(
                    "linkRoute",
                    "maas-linkroute/news/news-0/out",
                    r#"{"connection":"maas-broker-news-0","direction":"out","prefix":"news"}"#
                ),
                row(
                    "autoLink",
                    "maas-autolink/orders/orders-0/in",
                    r#"{"address":"orders","connection":"maas-broker-orders-0","direction":"in"}"#
                ),
                row(
                    "autoLink",
                    "maas-autolink/orders/orders-0/out",
                    r#"{"address":"orders","connection":"maas-broker-orders-0","direction":"out"}"#
                ),
            ]
        );
        assert!(got.iter().all(|(_, name, _)| name.starts_with(NAME_PREFIX)));
    }

    #[test]
    fn shared_flavor_puts_addresses_on_one_cluster_and_draining_pods_get_only_in() {
        let a = addresses(&[
            ("q1", AddressKind::Queue, Some("shared-small")),
            ("t1", AddressKind::Topic, Some("shared-small")),
        ]);
        let b = brokers(&[(
            "shared-small",
            vec![pod("s-0", 5674, false), pod("s-1", 5675, true)],
        )]);
        let set = desired_entities(&a, &flavors(), &b, &EntityOptions::default());
        let names: Vec<&str> = set.iter().map(|e| e.name.as_str()).collect();
        // The queue is on both pods (only `in` on the draining one); the topic only on the one pod it lives on,
        // never a draining one.
        assert_eq!(
            names,
            vec![
                "maas-broker-s-0",
                "maas-broker-s-1",
                "maas-address/q1",
                "maas-linkroute/t1/s-0/in",
                "maas-linkroute/t1/s-0/out",
                "maas-autolink/q1/s-0/in",
                "maas-autolink/q1/s-0/out",
                "maas-autolink/q1/s-1/in",
            ]
        );
    }

    #[test]
    fn a_topic_and_its_subscriptions_live_on_one_pod() {
        let mut a = addresses(&[
            ("news", AddressKind::Topic, Some("shared-small")),
            ("sport", AddressKind::Topic, Some("shared-small")),
        ]);
        a.insert(Address {
            address: "news-sub".into(),
            kind: AddressKind::Subscription,
            flavor: Some("shared-small".into()),
            topic: Some("news".into()),
        });
        let pods = vec![
            pod("s-0", 5674, false),
            pod("s-1", 5675, false),
            pod("s-2", 5676, false),
        ];
        let b = brokers(&[("shared-small", pods.clone())]);
        let set = desired_entities(&a, &flavors(), &b, &EntityOptions::default());
        let news_pod = crate::placement::topic_pod("news", &pods)
            .unwrap()
            .name
            .clone();
        let routes: Vec<&Entity> = set.of_type(EntityType::LinkRoute).collect();
        // news: in + out to its pod; sport: in + out to its pod; news-sub: out to news's pod.
        assert_eq!(routes.len(), 5, "{routes:?}");
        for e in &routes {
            let pod = e.name.rsplit('/').nth(1).unwrap();
            if e.name.starts_with("maas-linkroute/news") {
                assert_eq!(pod, news_pod, "{}", e.name);
            }
        }
        let sub = set
            .get(
                EntityType::LinkRoute,
                &format!("maas-linkroute/news-sub/{news_pod}/out"),
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&sub.attributes).unwrap(),
            json!({"prefix": "news-sub", "direction": "out", "addExternalPrefix": "news::",
                   "connection": format!("maas-broker-{news_pod}")})
        );
    }

    #[test]
    fn clusters_without_pods_give_only_the_queue_address() {
        let a = addresses(&[
            ("q", AddressKind::Queue, Some("vanilla")),
            ("t", AddressKind::Topic, Some("vanilla")),
        ]);
        let b = brokers(&[("q", vec![]), ("unused", vec![pod("u-0", 5674, false)])]);
        let set = desired_entities(&a, &flavors(), &b, &EntityOptions::default());
        let names: Vec<&str> = set.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["maas-address/q"]);
    }

    #[test]
    fn subctrl_is_routed_when_asked() {
        let a = addresses(&[("chat", AddressKind::Anycast, None)]);
        let b = brokers(&[]);
        let plain = desired_entities(&a, &flavors(), &b, &EntityOptions::default());
        assert!(
            plain
                .get(EntityType::Address, "maas-address/$subctrl")
                .is_none()
        );
        let opts = EntityOptions {
            subctrl: true,
            ..Default::default()
        };
        let set = desired_entities(&a, &flavors(), &b, &opts);
        let e = set
            .get(EntityType::Address, "maas-address/$subctrl")
            .unwrap();
        assert_eq!(
            serde_json::to_value(&e.attributes).unwrap(),
            json!({"prefix": "$subctrl", "distribution": "balanced", "waypoint": false})
        );
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn connector_options_and_redaction() {
        let opts = EntityOptions {
            broker_sasl_mechanisms: Some("PLAIN".into()),
            broker_username: Some("admin".into()),
            broker_password_file: Some("/etc/maas/broker/password".into()),
            broker_ssl_profile: Some("broker-tls".into()),
            subctrl: false,
        };
        let a = addresses(&[("q", AddressKind::Queue, Some("vanilla"))]);
        let b = brokers(&[("q", vec![pod("q-0", 5674, false)])]);
        let set = desired_entities(&a, &flavors(), &b, &opts);
        let c = set.get(EntityType::Connector, "maas-broker-q-0").unwrap();
        assert_eq!(
            Value::Object(c.attributes.clone().into_iter().collect()),
            json!({"role": "route-container", "host": "127.0.0.1", "port": "5674", "saslMechanisms": "PLAIN",
                   "saslUsername": "admin", "saslPassword": "file:/etc/maas/broker/password",
                   "sslProfile": "broker-tls"})
        );
        // Only the file's path reaches the router (it reads the password itself); output still redacts it.
        let shown = format!("{set:?}");
        assert!(shown.contains("***"));
        assert_eq!(
            set.redacted()
                .get(EntityType::Connector, "maas-broker-q-0")
                .unwrap()
                .attributes["saslPassword"], // file:<path> redacted too
            json!("***")
        );
        assert_eq!(
            c.attributes["saslPassword"], // file:<path>
            json!("file:/etc/maas/broker/password")
        );
    }

    #[test]
    fn desired_values_match_what_the_router_reports() {
        // Rows as the real qdrouterd 1.19.0 reports them (reference mgmt-transcript.txt), renamed to our names.
        let a = addresses(&[
            ("foo", AddressKind::Anycast, None),
            ("orders", AddressKind::Queue, Some("vanilla")),
        ]);
        let b = brokers(&[("orders", vec![pod("b", 5673, false)])]);
        let opts = EntityOptions {
            broker_sasl_mechanisms: Some("ANONYMOUS".into()),
            ..Default::default()
        };
        let set = desired_entities(&a, &flavors(), &b, &opts);
        let reported = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let address = reported(json!({"name": "maas-address/foo", "identity": "7",
            "type": "org.apache.qpid.dispatch.router.config.address", "prefix": "foo", "distribution": "balanced",
            "waypoint": false, "ingressPhase": 0, "egressPhase": 0, "priority": -1, "fallback": false}));
        assert!(
            set.get(EntityType::Address, "maas-address/foo")
                .unwrap()
                .matches_reported(&address)
        );
        let autolink = reported(
            json!({"name": "maas-autolink/orders/b/out", "identity": "16",
            "type": "org.apache.qpid.dispatch.router.config.autoLink", "address": "orders", "addr": "orders",
            "direction": "out", "dir": "out", "phase": 0, "connection": "maas-broker-b",
            "operStatus": "inactive", "fallback": false}),
        );
        assert!(
            set.get(EntityType::AutoLink, "maas-autolink/orders/b/out")
                .unwrap()
                .matches_reported(&autolink)
        );
        let connector = reported(
            json!({"host": "127.0.0.1", "port": "5673", "role": "route-container", "cost": 1,
            "saslMechanisms": "ANONYMOUS", "allowRedirect": true, "connectionStatus": "CONNECTING",
            "name": "maas-broker-b", "identity": "connector/127.0.0.1:5673:maas-broker-b",
            "type": "org.apache.qpid.dispatch.connector"}),
        );
        assert!(
            set.get(EntityType::Connector, "maas-broker-b")
                .unwrap()
                .matches_reported(&connector)
        );
        // A port reported as a number, or a distribution stored as something else, is a mismatch.
        let mut wrong = connector.clone();
        wrong.insert("port".into(), json!(5673));
        assert!(
            !set.get(EntityType::Connector, "maas-broker-b")
                .unwrap()
                .matches_reported(&wrong)
        );
    }

    #[test]
    fn generation_hash_is_stable_and_sensitive() {
        let a = addresses(&[
            ("chat", AddressKind::Anycast, None),
            ("orders", AddressKind::Queue, Some("vanilla")),
        ]);
        let b = brokers(&[("orders", vec![pod("orders-0", 5674, false)])]);
        let set = desired_entities(&a, &flavors(), &b, &EntityOptions::default());
        let h = set.generation_hash();
        assert_eq!(h.len(), 32);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // Same content built in another order gives the same hash.
        let mut rebuilt = EntitySet::default();
        for e in set.iter().collect::<Vec<_>>().into_iter().rev() {
            rebuilt.insert(e.clone());
        }
        assert_eq!(rebuilt.generation_hash(), h);
        // Pinned: the hash must not change between builds or machines.
        assert_eq!(h, PINNED_HASH);
        assert_eq!(
            EntitySet::default().generation_hash(),
            "e3b0c44298fc1c149afbf4c8996fb924"
        );
        // Any change of an attribute changes the hash.
        let b2 = brokers(&[("orders", vec![pod("orders-0", 5674, true)])]);
        let drained = desired_entities(&a, &flavors(), &b2, &EntityOptions::default());
        assert_ne!(drained.generation_hash(), h);
        let opts = EntityOptions {
            broker_password_file: Some("/new/path".into()),
            ..Default::default()
        };
        assert_ne!(
            desired_entities(&a, &flavors(), &b, &opts).generation_hash(),
            h
        );
    }

    /// Computed independently in Python: per entity `sha256(json.dumps([type, name, attrs], sort_keys=True,
    /// separators=(",", ":")))[:8]`, then SHA-256 over `type\0name\0<digest hex>\n` lines in (type, name) order.
    const PINNED_HASH: &str = "e32009b0ff81d7a71680252bc269f1a3";

    #[test]
    fn streaming_digests_equal_the_full_set() {
        let a = addresses(&[
            ("chat", AddressKind::Anycast, None),
            ("news", AddressKind::Topic, Some("shared-small")),
            ("orders", AddressKind::Queue, Some("vanilla")),
        ]);
        let b = brokers(&[
            ("orders", vec![pod("orders-0", 5674, false)]),
            (
                "shared-small",
                vec![pod("s-0", 5675, false), pod("s-1", 5676, true)],
            ),
        ]);
        let opts = EntityOptions::default();
        let full = desired_entities(&a, &flavors(), &b, &opts);
        let compact = desired_digests(&a, &flavors(), &b, &opts);
        assert_eq!(full.digests(), compact);
        assert_eq!(full.generation_hash(), compact.generation_hash());
        assert_eq!(
            compact.get(EntityType::Address, "maas-address/chat"),
            full.get(EntityType::Address, "maas-address/chat")
                .map(entity_digest)
        );
    }

    #[test]
    fn entity_type_names() {
        for t in EntityType::ALL {
            assert_eq!(EntityType::from_full_name(t.full_name()), Some(t));
        }
        assert_eq!(EntityType::from_full_name("address"), None);
    }
}
