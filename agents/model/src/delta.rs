//! Incremental updates of an address set (docs/architecture.md §3 "Incremental mode", after Envoy's delta xDS).
//!
//! A subscriber whose link source carries the capability [`DELTA_CAPABILITY`] gets the full snapshot on attach,
//! tagged with its generation (application property [`GENERATION_PROPERTY`]), then one [`AddressDelta`] per change:
//! the addresses upserted and the names removed, the generation they produce ([`GENERATION_PROPERTY`]) and the
//! generation they apply to ([`FOLLOWS_PROPERTY`]). A subscriber whose generation is not the delta's `follows`
//! missed one and re-attaches its link, which brings a full snapshot again.
//!
//! Wire shape (AMQP value string body, like the snapshots; subject [`DELTA_SUBJECT`]):
//! - `v1/addresses`: `{"apiVersion":"maas.io/v1","kind":"AddressDelta","generation":7,"follows":6,
//!   "upserted":[<typed Address>...],"removed":["a",...]}`
//! - `maas` (2016 format): the same, with `"upserted": {"<address>": {<2016 properties>}, ...}`.
//!
//! The delta's addresses are validated one by one (name rules, kind, a subscription's topic named); rules that
//! span the whole set (a subscription's topic exists) were checked by config-service on the full set.

use std::collections::BTreeSet;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;

use crate::address::AddressKind;
use crate::{Address, AddressSet, ConfigError, address_problems};

/// Source capability asking for incremental mode.
pub const DELTA_CAPABILITY: &str = "maas:delta";
/// Application property: the generation a message (full snapshot or delta) brings the subscriber to.
pub const GENERATION_PROPERTY: &str = "maas:generation";
/// Application property of a delta: the generation it applies to.
pub const FOLLOWS_PROPERTY: &str = "maas:follows";
/// Subject of a delta message.
pub const DELTA_SUBJECT: &str = "maas.io/v1/AddressDelta";
/// `apiVersion` of a delta body (its typed items keep their own, `enmasse.io/v1`).
pub const DELTA_API_VERSION: &str = "maas.io/v1";
/// `kind` of a delta body.
pub const DELTA_KIND: &str = "AddressDelta";

/// Which format a delta's addresses are written in (the format of the source it is sent on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaFormat {
    /// `v1/addresses`: typed Address objects in a list.
    Typed,
    /// `maas`: a map address -> 2016 properties.
    Legacy,
}

/// What changed between two generations of an address set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressDelta {
    /// The generation this delta produces.
    pub generation: u64,
    /// The generation it applies to.
    pub follows: u64,
    /// Addresses added or changed, in address order.
    pub upserted: Vec<Address>,
    /// Addresses removed, in address order.
    pub removed: Vec<String>,
}

impl AddressDelta {
    /// What turns `old` (generation `follows`) into `new` (generation `generation`).
    pub fn between(old: &AddressSet, new: &AddressSet, follows: u64, generation: u64) -> Self {
        let upserted = new
            .iter()
            .filter(|a| old.get(&a.address) != Some(*a))
            .cloned()
            .collect();
        let removed = old
            .addresses
            .keys()
            .filter(|k| new.get(k).is_none())
            .cloned()
            .collect();
        AddressDelta {
            generation,
            follows,
            upserted,
            removed,
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    /// The names this delta touches (upserted and removed), in address order.
    pub fn touched(&self) -> BTreeSet<&str> {
        self.upserted
            .iter()
            .map(|a| a.address.as_str())
            .chain(self.removed.iter().map(String::as_str))
            .collect()
    }

    /// Applies this delta to `set`.
    pub fn apply(&self, set: &mut AddressSet) {
        for name in &self.removed {
            set.addresses.remove(name);
        }
        for a in &self.upserted {
            set.insert(a.clone());
        }
    }

    /// Folds a `later` delta (which follows this one) into this one: the result goes from `self.follows` to
    /// `later.generation`. Used by a subscriber that is still busy with the previous change.
    pub fn merge(&mut self, later: AddressDelta) {
        let mut upserted: std::collections::BTreeMap<String, Address> =
            std::mem::take(&mut self.upserted)
                .into_iter()
                .map(|a| (a.address.clone(), a))
                .collect();
        let mut removed: BTreeSet<String> = std::mem::take(&mut self.removed).into_iter().collect();
        for name in later.removed {
            upserted.remove(&name);
            removed.insert(name);
        }
        for a in later.upserted {
            removed.remove(&a.address);
            upserted.insert(a.address.clone(), a);
        }
        self.upserted = upserted.into_values().collect();
        self.removed = removed.into_iter().collect();
        self.generation = later.generation;
    }

    /// The body text in `format`.
    pub fn to_json(&self, format: DeltaFormat) -> String {
        serde_json::to_string(&DeltaOut(self, format)).unwrap_or_default()
    }

    /// Parses a delta body in `format`; `origin` names where it came from in errors.
    pub fn from_json(
        origin: &str,
        format: DeltaFormat,
        text: &str,
    ) -> Result<Self, Vec<ConfigError>> {
        let err = |address: Option<&str>, message: String| {
            ConfigError::new(origin, None, address, message)
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| vec![err(None, format!("delta is not valid JSON: {e}"))])?;
        let Value::Object(mut map) = value else {
            return Err(vec![err(None, "delta is not a JSON object".into())]);
        };
        let number = |map: &serde_json::Map<String, Value>, key: &str| {
            map.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| vec![err(None, format!("delta has no numeric {key:?}"))])
        };
        let generation = number(&map, "generation")?;
        let follows = number(&map, "follows")?;
        let mut errors = Vec::new();
        let mut upserted = Vec::new();
        match (format, map.remove("upserted")) {
            (_, None) => {}
            (DeltaFormat::Typed, Some(Value::Array(items))) => {
                for item in &items {
                    match typed_item(item) {
                        Ok(a) => upserted.push(a),
                        Err((address, message)) => errors.push(err(address.as_deref(), message)),
                    }
                }
            }
            (DeltaFormat::Legacy, Some(Value::Object(items))) => {
                for (name, props) in &items {
                    match legacy_item(name, props) {
                        Ok(a) => upserted.push(a),
                        Err(message) => errors.push(err(Some(name), message)),
                    }
                }
            }
            (_, Some(_)) => errors.push(err(None, "delta \"upserted\" has the wrong shape".into())),
        }
        let mut removed = Vec::new();
        match map.remove("removed") {
            None => {}
            Some(Value::Array(names)) => {
                for n in names {
                    match n {
                        Value::String(s) => removed.push(s),
                        other => {
                            errors.push(err(None, format!("delta removes a non-string {other}")))
                        }
                    }
                }
            }
            Some(_) => errors.push(err(None, "delta \"removed\" is not a list".into())),
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        upserted.sort_by(|a: &Address, b| a.address.cmp(&b.address));
        removed.sort();
        Ok(AddressDelta {
            generation,
            follows,
            upserted,
            removed,
        })
    }
}

fn checked(
    address: &str,
    kind: AddressKind,
    flavor: Option<String>,
    topic: Option<String>,
) -> Result<Address, String> {
    let problems = address_problems(address);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if kind == AddressKind::Subscription && topic.is_none() {
        return Err("a subscription names no topic".into());
    }
    Ok(Address {
        address: address.to_string(),
        kind,
        flavor,
        topic: if kind == AddressKind::Subscription {
            topic
        } else {
            None
        },
    })
}

fn typed_item(item: &Value) -> Result<Address, (Option<String>, String)> {
    let spec = item.get("spec").unwrap_or(item);
    let Some(address) = spec.get("address").and_then(Value::as_str) else {
        return Err((None, "a delta item has no spec.address".into()));
    };
    let s = |k: &str| spec.get(k).and_then(Value::as_str).map(str::to_string);
    let kind_name = s("type").unwrap_or_default();
    let kind = AddressKind::from_type_name(&kind_name).ok_or_else(|| {
        (
            Some(address.to_string()),
            format!("unknown address type {kind_name:?}"),
        )
    })?;
    checked(address, kind, s("flavor"), s("topic")).map_err(|m| (Some(address.to_string()), m))
}

fn legacy_item(name: &str, props: &Value) -> Result<Address, String> {
    let b = |k: &str| props.get(k).and_then(Value::as_bool).unwrap_or(false);
    let s = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_string);
    let kind = if b("subscription") {
        AddressKind::Subscription
    } else {
        AddressKind::from_flags(b("store_and_forward"), b("multicast"))
    };
    checked(name, kind, s("flavor"), s("topic"))
}

struct DeltaOut<'a>(&'a AddressDelta, DeltaFormat);
struct UpsertedOut<'a>(&'a [Address], DeltaFormat);

impl Serialize for DeltaOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("apiVersion", DELTA_API_VERSION)?;
        m.serialize_entry("kind", DELTA_KIND)?;
        m.serialize_entry("generation", &self.0.generation)?;
        m.serialize_entry("follows", &self.0.follows)?;
        m.serialize_entry("upserted", &UpsertedOut(&self.0.upserted, self.1))?;
        m.serialize_entry("removed", &self.0.removed)?;
        m.end()
    }
}

impl Serialize for UpsertedOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            DeltaFormat::Typed => {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for a in self.0 {
                    seq.serialize_element(&a.to_typed_value())?;
                }
                seq.end()
            }
            DeltaFormat::Legacy => {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for a in self.0 {
                    m.serialize_entry(&a.address, &a.to_2016_value())?;
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(name: &str, kind: AddressKind) -> Address {
        Address {
            address: name.into(),
            kind,
            flavor: kind.needs_broker().then(|| "vanilla".to_string()),
            topic: None,
        }
    }

    fn set(items: &[Address]) -> AddressSet {
        let mut s = AddressSet::default();
        for i in items {
            s.insert(i.clone());
        }
        s
    }

    #[test]
    fn between_lists_exactly_the_changed_and_removed_addresses_and_apply_reproduces_the_new_set() {
        let old = set(&[
            a("a", AddressKind::Anycast),
            a("q", AddressKind::Queue),
            a("gone", AddressKind::Topic),
        ]);
        let mut sub = a("s", AddressKind::Subscription);
        sub.topic = Some("t".into());
        let new = set(&[
            a("a", AddressKind::Anycast),
            a("q", AddressKind::Broadcast),
            a("t", AddressKind::Topic),
            sub,
        ]);
        let d = AddressDelta::between(&old, &new, 4, 5);
        assert_eq!(
            d.upserted
                .iter()
                .map(|x| x.address.as_str())
                .collect::<Vec<_>>(),
            ["q", "s", "t"]
        );
        assert_eq!(d.removed, ["gone"]);
        let mut applied = old.clone();
        d.apply(&mut applied);
        assert_eq!(applied, new);
        assert!(AddressDelta::between(&new, &new, 5, 6).is_empty());
    }

    #[test]
    fn both_wire_formats_round_trip() {
        let mut sub = a("s", AddressKind::Subscription);
        sub.topic = Some("t".into());
        let d = AddressDelta {
            generation: 9,
            follows: 8,
            upserted: vec![
                a("a/b", AddressKind::Queue),
                sub,
                a("t", AddressKind::Topic),
            ],
            removed: vec!["x".into(), "y".into()],
        };
        for format in [DeltaFormat::Typed, DeltaFormat::Legacy] {
            let text = d.to_json(format);
            assert!(text.contains("\"kind\":\"AddressDelta\""), "{text}");
            assert_eq!(
                AddressDelta::from_json("test", format, &text),
                Ok(d.clone()),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_items_are_reported_with_their_address() {
        let text = r#"{"generation":2,"follows":1,"upserted":[{"spec":{"address":"ok","type":"anycast"}},
            {"spec":{"address":"bad","type":"nonsense"}},{"spec":{"address":"s","type":"subscription"}}],"removed":[]}"#;
        let errors =
            AddressDelta::from_json("ConfigMap ns/cm", DeltaFormat::Typed, text).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].address.as_deref(), Some("bad"));
        assert!(errors[0].message.contains("nonsense"));
        assert_eq!(errors[1].address.as_deref(), Some("s"));
        let no_generation =
            AddressDelta::from_json("x", DeltaFormat::Typed, r#"{"follows":1}"#).unwrap_err();
        assert!(no_generation[0].message.contains("generation"));
    }

    #[test]
    fn merge_keeps_the_first_follows_and_the_last_word_on_each_address() {
        let mut first = AddressDelta {
            generation: 2,
            follows: 1,
            upserted: vec![a("a", AddressKind::Anycast), a("b", AddressKind::Anycast)],
            removed: vec!["c".into()],
        };
        let later = AddressDelta {
            generation: 3,
            follows: 2,
            upserted: vec![a("c", AddressKind::Queue)],
            removed: vec!["a".into()],
        };
        first.merge(later);
        assert_eq!((first.follows, first.generation), (1, 3));
        assert_eq!(
            first
                .upserted
                .iter()
                .map(|x| x.address.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(first.removed, ["a"]);
    }
}
