//! Flavors: broker templates that queue and topic addresses refer to, their file format
//! (`{"<name>": {"type": "queue", "templateName": ..., "shared": true, ...}}`) and its validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ConfigError;

/// One flavor (`flavor.json` entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flavor {
    /// The key of the flavor map.
    #[serde(skip)]
    pub name: String,
    /// `queue` or `topic` (what the flavor is meant for), when given.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name of the broker template (OpenShift Template / storage-controller template).
    #[serde(
        rename = "templateName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub template_name: Option<String>,
    /// Parameters passed to the template.
    #[serde(
        rename = "templateParameters",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub template_parameters: BTreeMap<String, String>,
    /// Many addresses share one broker cluster named after the flavor.
    #[serde(default)]
    pub shared: bool,
    /// Everything else the storage controller needs (image, replicas, storage, acceptors...), kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Flavors by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlavorSet {
    /// Flavor name -> flavor.
    pub flavors: BTreeMap<String, Flavor>,
}

impl FlavorSet {
    /// The flavor named `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Flavor> {
        self.flavors.get(name)
    }

    /// True when a flavor named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.flavors.contains_key(name)
    }

    /// Add (or replace) a flavor under its `name`.
    pub fn insert(&mut self, flavor: Flavor) {
        self.flavors.insert(flavor.name.clone(), flavor);
    }

    /// Number of flavors.
    pub fn len(&self) -> usize {
        self.flavors.len()
    }

    /// True when there are no flavors.
    pub fn is_empty(&self) -> bool {
        self.flavors.is_empty()
    }

    /// Iterate the flavors in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Flavor> {
        self.flavors.values()
    }

    /// The flavor file format: an object from flavor name to its fields (what config-service sends on
    /// `v1/flavors`).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        for (name, f) in &self.flavors {
            // Serialising these plain fields into a Value cannot fail; Null is never produced in practice.
            let v = serde_json::to_value(f).unwrap_or(Value::Null);
            map.insert(name.clone(), v);
        }
        Value::Object(map)
    }

    /// [`Self::to_value`] as compact JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// Parse a flavor file (`--flavors-file`, or a `v1/flavors` snapshot). `origin` names it in errors.
    pub fn from_json(origin: &str, text: &str) -> Result<FlavorSet, Vec<ConfigError>> {
        parse_flavors(origin, None, text)
    }
}

/// Parse the flavors of a flavor ConfigMap's data: key `flavor.json`, else key `json`. No such key = no flavors.
pub fn parse_flavor_config(
    origin: &str,
    files: &BTreeMap<String, String>,
) -> Result<FlavorSet, Vec<ConfigError>> {
    for key in [crate::parse::FLAVOR_KEY, crate::parse::LEGACY_KEY] {
        if let Some(text) = files.get(key) {
            return parse_flavors(origin, Some(key), text);
        }
    }
    Ok(FlavorSet::default())
}

/// Flavor `type` values accepted in a flavor file.
const FLAVOR_TYPES: [&str; 2] = ["queue", "topic"];

/// Parse flavor JSON `{"<name>": {...}}`. `origin` and `key` (the data key, e.g. `flavor.json`, when the text
/// came from a ConfigMap) name it in errors. Every problem is returned.
pub fn parse_flavors(
    origin: &str,
    key: Option<&str>,
    text: &str,
) -> Result<FlavorSet, Vec<ConfigError>> {
    let err = |msg: String| ConfigError::new(origin, key, None, msg);
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(vec![err(format!("invalid JSON in flavor file: {e}"))]),
    };
    let Value::Object(map) = value else {
        return Err(vec![err(format!(
            "a flavor file must be a JSON object from flavor name to its settings, found {}",
            json_type_name(&value)
        ))]);
    };
    let mut errors = Vec::new();
    let mut set = FlavorSet::default();
    for (name, body) in map {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(err(format!(
                "flavor name {name:?} is invalid: it must be non-empty without whitespace or control characters"
            )));
            continue;
        }
        if !body.is_object() {
            errors.push(err(format!(
                "flavor {name:?} must be a JSON object, found {}",
                json_type_name(&body)
            )));
            continue;
        }
        let mut flavor: Flavor = match serde_json::from_value(body) {
            Ok(f) => f,
            Err(e) => {
                errors.push(err(format!("flavor {name:?} is invalid: {e}")));
                continue;
            }
        };
        if let Some(kind) = &flavor.kind
            && !FLAVOR_TYPES.contains(&kind.as_str())
        {
            errors.push(err(format!(
                "flavor {name:?} has unknown type {kind:?} (expected \"queue\" or \"topic\")"
            )));
            continue;
        }
        flavor.name = name;
        set.insert(flavor);
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const FLAVORS: &str = r#"{
        "vanilla-queue": {"type": "queue", "description": "A queue", "templateName": "queue-persisted",
                          "templateParameters": {"STORAGE_CAPACITY": "1Gi"}, "image": "artemis:1", "replicas": 2},
        "shared-small": {"type": "topic", "shared": true, "storageSize": "1Gi"}
    }"#;

    #[test]
    fn parses_flavors_with_extra_fields() {
        let set = FlavorSet::from_json("f.json", FLAVORS).unwrap();
        assert_eq!(set.len(), 2);
        let q = set.get("vanilla-queue").unwrap();
        assert_eq!(q.name, "vanilla-queue");
        assert_eq!(q.kind.as_deref(), Some("queue"));
        assert_eq!(q.template_name.as_deref(), Some("queue-persisted"));
        assert_eq!(q.template_parameters["STORAGE_CAPACITY"], "1Gi");
        assert!(!q.shared);
        assert_eq!(q.extra["image"], json!("artemis:1"));
        assert_eq!(q.extra["replicas"], json!(2));
        assert!(set.get("shared-small").unwrap().shared);
    }

    #[test]
    fn flavor_config_map_keys() {
        let files = |k: &str| BTreeMap::from([(k.to_string(), FLAVORS.to_string())]);
        assert_eq!(
            parse_flavor_config("cm", &files("flavor.json"))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(parse_flavor_config("cm", &files("json")).unwrap().len(), 2);
        assert!(
            parse_flavor_config("cm", &files("other"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn flavor_set_round_trips() {
        let set = FlavorSet::from_json("f.json", FLAVORS).unwrap();
        assert_eq!(FlavorSet::from_json("again", &set.to_json()).unwrap(), set);
        let empty = FlavorSet::default();
        assert_eq!(FlavorSet::from_json("e", &empty.to_json()).unwrap(), empty);
    }

    #[test]
    fn flavor_errors_are_all_reported() {
        let cases: &[(&str, &[&str])] = &[
            (
                "{",
                &[
                    "f.json key \"flavor.json\": invalid JSON in flavor file: EOF while parsing an object at line 1 column 1",
                ],
            ),
            (
                "[]",
                &[
                    "f.json key \"flavor.json\": a flavor file must be a JSON object from flavor name to its settings, found a list",
                ],
            ),
            (
                r#"{"a": 1, "b": {"type": "lake"}, "c": {"shared": "yes"}, "": {}, "ok": {}}"#,
                &[
                    "f.json key \"flavor.json\": flavor name \"\" is invalid: it must be non-empty without whitespace or control characters",
                    "f.json key \"flavor.json\": flavor \"a\" must be a JSON object, found a number",
                    "f.json key \"flavor.json\": flavor \"b\" has unknown type \"lake\" (expected \"queue\" or \"topic\")",
                    "f.json key \"flavor.json\": flavor \"c\" is invalid: invalid type: string \"yes\", expected a boolean",
                ],
            ),
        ];
        for (text, want) in cases {
            let errs = parse_flavors("f.json", Some("flavor.json"), text).unwrap_err();
            let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
            assert_eq!(&got, want, "input {text}");
        }
    }
}
