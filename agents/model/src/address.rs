//! Addresses and address sets: what the user asked for, validated and typed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ConfigError;

/// `apiVersion` of the typed format.
pub const API_VERSION: &str = "enmasse.io/v1";
/// `kind` of one typed address.
pub const ADDRESS_KIND: &str = "Address";
/// `kind` of a typed address list (the `v1/addresses` snapshot).
pub const ADDRESS_LIST_KIND: &str = "AddressList";

/// The kinds of address (docs/architecture.md §2, and `subscription`: §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressKind {
    /// Direct, one consumer gets each message (router only).
    Anycast,
    /// Direct, every consumer gets each message (router only). Synonym in input: `multicast`.
    Broadcast,
    /// Stored on a broker, one consumer gets each message.
    Queue,
    /// Stored on a broker, every subscription gets each message.
    Topic,
    /// A durable subscription S on a topic T (`topic`): a durable MULTICAST queue S bound to T on T's broker pod;
    /// consumers of S read it.
    Subscription,
}

impl AddressKind {
    /// The spelling used in the typed format (`spec.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Anycast => "anycast",
            AddressKind::Broadcast => "broadcast",
            AddressKind::Queue => "queue",
            AddressKind::Topic => "topic",
            AddressKind::Subscription => "subscription",
        }
    }

    /// Every kind, in order.
    pub const ALL: [AddressKind; 5] = [
        AddressKind::Anycast,
        AddressKind::Broadcast,
        AddressKind::Queue,
        AddressKind::Topic,
        AddressKind::Subscription,
    ];

    /// Queues and topics live on brokers and need a flavor (a subscription lives where its topic does).
    pub fn needs_broker(self) -> bool {
        matches!(self, AddressKind::Queue | AddressKind::Topic)
    }

    /// `(store_and_forward, multicast)` of the 2016 format (a subscription is written with its own keys).
    pub fn to_flags(self) -> (bool, bool) {
        match self {
            AddressKind::Anycast => (false, false),
            AddressKind::Broadcast => (false, true),
            AddressKind::Queue => (true, false),
            AddressKind::Topic | AddressKind::Subscription => (true, true),
        }
    }

    /// The kind named by a typed `spec.type` (`multicast` is accepted for `broadcast`); None when unknown.
    pub fn from_type_name(name: &str) -> Option<Self> {
        match name {
            "anycast" => Some(AddressKind::Anycast),
            "broadcast" | "multicast" => Some(AddressKind::Broadcast),
            "queue" => Some(AddressKind::Queue),
            "topic" => Some(AddressKind::Topic),
            "subscription" => Some(AddressKind::Subscription),
            _ => None,
        }
    }

    /// The kind given by the 2016 format's flags.
    pub fn from_flags(store_and_forward: bool, multicast: bool) -> Self {
        match (store_and_forward, multicast) {
            (false, false) => AddressKind::Anycast,
            (false, true) => AddressKind::Broadcast,
            (true, false) => AddressKind::Queue,
            (true, true) => AddressKind::Topic,
        }
    }
}

/// One validated address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// The AMQP address (1..=249 bytes, validated).
    pub address: String,
    /// Anycast, broadcast, queue or topic.
    pub kind: AddressKind,
    /// The flavor (broker template); set for queues and topics once validated (the default flavor filled in), and
    /// for a subscription to its topic's flavor.
    pub flavor: Option<String>,
    /// The topic of a subscription (None for every other kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A validated set of addresses, keyed by address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddressSet {
    /// Address -> its definition, in address order.
    pub addresses: BTreeMap<String, Address>,
}

impl AddressSet {
    /// Add (or replace) an address.
    pub fn insert(&mut self, address: Address) {
        self.addresses.insert(address.address.clone(), address);
    }

    /// The address named `address`, if any.
    pub fn get(&self, address: &str) -> Option<&Address> {
        self.addresses.get(address)
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// True when there are no addresses.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The addresses in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Address> {
        self.addresses.values()
    }

    /// How many addresses of each kind (for metrics).
    pub fn count_by_kind(&self) -> BTreeMap<AddressKind, usize> {
        let mut counts = BTreeMap::new();
        for a in self.addresses.values() {
            *counts.entry(a.kind).or_insert(0) += 1;
        }
        counts
    }
}

impl Address {
    /// This address as one typed `Address` object (`metadata.name` = the address, `spec.type` filled in).
    pub fn to_typed_value(&self) -> Value {
        let mut spec = Map::new();
        spec.insert("address".into(), Value::String(self.address.clone()));
        spec.insert("type".into(), Value::String(self.kind.as_str().into()));
        if let Some(t) = &self.topic {
            spec.insert("topic".into(), Value::String(t.clone()));
        } else if let Some(f) = &self.flavor {
            spec.insert("flavor".into(), Value::String(f.clone()));
        }
        json!({
            "apiVersion": API_VERSION,
            "kind": ADDRESS_KIND,
            "metadata": {"name": self.address},
            "spec": spec,
        })
    }

    /// This address's properties in the 2016 format: `{"store_and_forward": b, "multicast": b, "flavor": f}`, or
    /// `{"subscription": true, "topic": t}`.
    pub fn to_2016_value(&self) -> Value {
        if let Some(t) = &self.topic {
            return json!({"subscription": true, "topic": t});
        }
        let (store_and_forward, multicast) = self.kind.to_flags();
        let mut props = Map::new();
        props.insert("store_and_forward".into(), Value::Bool(store_and_forward));
        props.insert("multicast".into(), Value::Bool(multicast));
        if let Some(f) = &self.flavor {
            props.insert("flavor".into(), Value::String(f.clone()));
        }
        Value::Object(props)
    }
}

impl AddressSet {
    /// The typed `AddressList` object (what config-service sends on `v1/addresses`).
    pub fn to_address_list_value(&self) -> Value {
        let items: Vec<Value> = self.iter().map(Address::to_typed_value).collect();
        json!({"apiVersion": API_VERSION, "kind": ADDRESS_LIST_KIND, "items": items})
    }

    /// [`Self::to_address_list_value`] as compact JSON text, written straight from the set (no JSON tree in
    /// between: for 10,000 addresses that is several times faster). Byte for byte the same text.
    pub fn to_address_list_json(&self) -> String {
        serde_json::to_string(&AddressListOut(self)).unwrap_or_default()
    }

    /// The 2016 format object `{"<address>": {"store_and_forward": b, "multicast": b, "flavor": f}}` (what
    /// config-service sends on `maas`).
    pub fn to_2016_value(&self) -> Value {
        let map: Map<String, Value> = self
            .iter()
            .map(|a| (a.address.clone(), a.to_2016_value()))
            .collect();
        Value::Object(map)
    }

    /// [`Self::to_2016_value`] as compact JSON text, written straight from the set; byte for byte the same text.
    pub fn to_2016_json(&self) -> String {
        serde_json::to_string(&LegacyOut(self)).unwrap_or_default()
    }

    /// Parse typed-format JSON (one Address, a list, or an `AddressList`), e.g. a `v1/addresses` snapshot.
    /// Addresses and conflicts are validated; flavors are NOT checked (the receiver may not hold the flavor set).
    pub fn from_address_list_json(
        origin: &str,
        text: &str,
    ) -> Result<AddressSet, Vec<ConfigError>> {
        crate::parse::parse_unchecked(origin, crate::parse::KeyFormat::TypedJson, text)
    }

    /// Parse 2016-format JSON, e.g. a `maas` snapshot. Addresses and conflicts are validated; flavors are NOT
    /// checked.
    pub fn from_2016_json(origin: &str, text: &str) -> Result<AddressSet, Vec<ConfigError>> {
        crate::parse::parse_unchecked(origin, crate::parse::KeyFormat::Legacy, text)
    }
}

// Serialisers writing the snapshot texts directly. Keys are in the order a `serde_json::Value` (sorted map) would
// write them, so the text is identical to `to_*_value().to_string()` (tested).

struct AddressListOut<'a>(&'a AddressSet);
struct ItemsOut<'a>(&'a AddressSet);
struct TypedOut<'a>(&'a Address);
struct MetadataOut<'a>(&'a str);
struct SpecOut<'a>(&'a Address);
struct LegacyOut<'a>(&'a AddressSet);
struct LegacyPropsOut<'a>(&'a Address);

impl serde::Serialize for AddressListOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("apiVersion", API_VERSION)?;
        m.serialize_entry("items", &ItemsOut(self.0))?;
        m.serialize_entry("kind", ADDRESS_LIST_KIND)?;
        m.end()
    }
}

impl serde::Serialize for ItemsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(TypedOut))
    }
}

impl serde::Serialize for TypedOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("apiVersion", API_VERSION)?;
        m.serialize_entry("kind", ADDRESS_KIND)?;
        m.serialize_entry("metadata", &MetadataOut(&self.0.address))?;
        m.serialize_entry("spec", &SpecOut(self.0))?;
        m.end()
    }
}

impl serde::Serialize for MetadataOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("name", self.0)?;
        m.end()
    }
}

impl serde::Serialize for SpecOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let a = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("address", &a.address)?;
        if let Some(t) = &a.topic {
            m.serialize_entry("topic", t)?;
        } else if let Some(f) = &a.flavor {
            m.serialize_entry("flavor", f)?;
        }
        m.serialize_entry("type", a.kind.as_str())?;
        m.end()
    }
}

impl serde::Serialize for LegacyOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|a| (&a.address, LegacyPropsOut(a))))
    }
}

impl serde::Serialize for LegacyPropsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let a = self.0;
        let mut m = s.serialize_map(None)?;
        if let Some(t) = &a.topic {
            m.serialize_entry("subscription", &true)?;
            m.serialize_entry("topic", t)?;
            return m.end();
        }
        let (store_and_forward, multicast) = a.kind.to_flags();
        if let Some(f) = &a.flavor {
            m.serialize_entry("flavor", f)?;
        }
        m.serialize_entry("multicast", &multicast)?;
        m.serialize_entry("store_and_forward", &store_and_forward)?;
        m.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(items: &[(&str, AddressKind, Option<&str>)]) -> AddressSet {
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

    #[test]
    fn flags_and_kinds_agree() {
        for k in [
            AddressKind::Anycast,
            AddressKind::Broadcast,
            AddressKind::Queue,
            AddressKind::Topic,
        ] {
            let (s, m) = k.to_flags();
            assert_eq!(AddressKind::from_flags(s, m), k);
            assert_eq!(AddressKind::from_type_name(k.as_str()), Some(k));
        }
        assert_eq!(
            AddressKind::from_type_name("multicast"),
            Some(AddressKind::Broadcast)
        );
        assert_eq!(AddressKind::from_type_name("Queue"), None);
    }

    #[test]
    fn address_list_json_has_spec_type_and_metadata_name() {
        let s = set(&[
            ("orders", AddressKind::Queue, Some("vanilla-queue")),
            ("chat", AddressKind::Anycast, None),
        ]);
        let v: Value = serde_json::from_str(&s.to_address_list_json()).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "enmasse.io/v1", "kind": "AddressList", "items": [
                {"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "chat"},
                 "spec": {"address": "chat", "type": "anycast"}},
                {"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "orders"},
                 "spec": {"address": "orders", "type": "queue", "flavor": "vanilla-queue"}},
            ]})
        );
    }

    #[test]
    fn json_2016_has_flags() {
        let s = set(&[
            ("t", AddressKind::Topic, Some("vanilla-topic")),
            ("b", AddressKind::Broadcast, None),
        ]);
        let v: Value = serde_json::from_str(&s.to_2016_json()).unwrap();
        assert_eq!(
            v,
            json!({
                "b": {"store_and_forward": false, "multicast": true},
                "t": {"store_and_forward": true, "multicast": true, "flavor": "vanilla-topic"},
            })
        );
    }

    #[test]
    fn both_serialisations_round_trip() {
        let s = set(&[
            ("orders", AddressKind::Queue, Some("vanilla-queue")),
            ("news/sport", AddressKind::Topic, Some("shared-small")),
            ("chat", AddressKind::Anycast, None),
            ("events.all", AddressKind::Broadcast, None),
        ]);
        assert_eq!(
            AddressSet::from_address_list_json("t", &s.to_address_list_json()).unwrap(),
            s
        );
        assert_eq!(
            AddressSet::from_2016_json("t", &s.to_2016_json()).unwrap(),
            s
        );
        let empty = AddressSet::default();
        assert_eq!(
            AddressSet::from_address_list_json("t", &empty.to_address_list_json()).unwrap(),
            empty
        );
        assert_eq!(
            AddressSet::from_2016_json("t", &empty.to_2016_json()).unwrap(),
            empty
        );
    }

    #[test]
    fn direct_serialisers_write_exactly_the_value_text() {
        let mut set = AddressSet::default();
        for (name, kind, flavor) in [
            ("chat", AddressKind::Anycast, None),
            ("news \"quoted\"", AddressKind::Topic, Some("vanilla-topic")),
            ("orders", AddressKind::Queue, Some("vanilla-queue")),
            ("ünïcode/alerts", AddressKind::Broadcast, None),
        ] {
            set.insert(Address {
                address: name.into(),
                kind,
                flavor: flavor.map(str::to_string),
                topic: None,
            });
        }
        assert_eq!(
            set.to_address_list_json(),
            set.to_address_list_value().to_string()
        );
        assert_eq!(set.to_2016_json(), set.to_2016_value().to_string());
        let empty = AddressSet::default();
        assert_eq!(
            empty.to_address_list_json(),
            empty.to_address_list_value().to_string()
        );
        assert_eq!(empty.to_2016_json(), "{}");
    }
}
