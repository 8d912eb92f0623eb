//! Parsing a ConfigMap's data (or a directory's files) into a validated [`Config`] (docs/architecture.md §2).
//!
//! Data keys: `json` holds the 2016 format; any other key ending in `.json` (except `flavor.json`) holds the typed
//! format (one Address, a list of them, or an `AddressList`); `.yaml`/`.yml` the typed format in YAML (several
//! `---` documents allowed); `flavor.json` holds the flavors unless they are given separately. Other keys are
//! ignored. Every problem found is returned, each naming the origin, key and address.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::address::{ADDRESS_KIND, ADDRESS_LIST_KIND, API_VERSION};
use crate::flavor::{json_type_name, parse_flavors};
use crate::placement::cluster_for;
use crate::{Address, AddressKind, AddressSet, ConfigError, FlavorSet};

/// Data key of the 2016 format.
pub const LEGACY_KEY: &str = "json";
/// Data key of the flavors in an address ConfigMap/directory (and in a flavor ConfigMap).
pub const FLAVOR_KEY: &str = "flavor.json";
/// Longest address, in bytes of UTF-8.
pub const MAX_ADDRESS_LEN: usize = 249;

/// A validated configuration: the addresses and the flavors they refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The validated addresses (queue/topic flavors filled in, default flavor applied).
    pub addresses: AddressSet,
    /// The flavors used for validation: the ones given, else those of the `flavor.json` key, else none.
    pub flavors: FlavorSet,
}

/// What a data key holds, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// `json`: the 2016 format.
    Legacy,
    /// `*.json` (not `flavor.json`): the typed format.
    TypedJson,
    /// `*.yaml` / `*.yml`: the typed format in YAML.
    TypedYaml,
    /// `flavor.json`: flavors.
    Flavor,
}

impl KeyFormat {
    /// The format of data key `key`; None for keys that are ignored (including the kubelet's `..data` links).
    pub fn of_key(key: &str) -> Option<KeyFormat> {
        if key.starts_with("..") {
            None
        } else if key == LEGACY_KEY {
            Some(KeyFormat::Legacy)
        } else if key == FLAVOR_KEY {
            Some(KeyFormat::Flavor)
        } else if key.ends_with(".json") {
            Some(KeyFormat::TypedJson)
        } else if key.ends_with(".yaml") || key.ends_with(".yml") {
            Some(KeyFormat::TypedYaml)
        } else {
            None
        }
    }
}

/// Options of [`parse_config_opts`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions<'a> {
    /// Flavors from elsewhere (`--flavors-file`, a flavor ConfigMap); when None, the `flavor.json` key is used.
    pub flavors: Option<&'a FlavorSet>,
    /// Flavor given to queues and topics that name none. It must exist among the flavors.
    pub default_flavor: Option<&'a str>,
    /// The files are one part of a larger set (one of several address ConfigMaps merged into one): a subscription
    /// whose topic is not defined in THESE files is kept unresolved (no flavor) instead of being an error; the
    /// caller checks it against the merged set with [`resolve_merged_subscriptions`]. A subscription whose topic
    /// is defined here is checked here, as always.
    pub deferred_subscriptions: bool,
}

/// Parse the data of one ConfigMap or directory. `origin` names it in errors; `files` maps data key -> text;
/// `flavors` are used when given (from `--flavors-file`), else a `flavor.json` key among `files`.
/// All problems are returned, not just the first.
pub fn parse_config(
    origin: &str,
    files: &BTreeMap<String, String>,
    flavors: Option<&FlavorSet>,
) -> Result<Config, Vec<ConfigError>> {
    parse_config_opts(
        origin,
        files,
        ParseOptions {
            flavors,
            ..ParseOptions::default()
        },
    )
}

/// [`parse_config`] with a default flavor for queues and topics that name none.
pub fn parse_config_with(
    origin: &str,
    files: &BTreeMap<String, String>,
    flavors: Option<&FlavorSet>,
    default_flavor: Option<&str>,
) -> Result<Config, Vec<ConfigError>> {
    parse_config_opts(
        origin,
        files,
        ParseOptions {
            flavors,
            default_flavor,
            ..ParseOptions::default()
        },
    )
}

/// [`parse_config`] with all options.
pub fn parse_config_opts(
    origin: &str,
    files: &BTreeMap<String, String>,
    opts: ParseOptions<'_>,
) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    // Flavors first: addresses are checked against them. When the flavor file itself is broken, the "flavor does
    // not exist" errors it would cause are not reported (the flavor file's errors say what to fix).
    let (flavors, flavors_ok) = match opts.flavors {
        Some(f) => (f.clone(), true),
        None => match files.get(FLAVOR_KEY) {
            Some(text) => match parse_flavors(origin, Some(FLAVOR_KEY), text) {
                Ok(f) => (f, true),
                Err(e) => {
                    errors.extend(e);
                    (FlavorSet::default(), false)
                }
            },
            None => (FlavorSet::default(), true),
        },
    };
    let mut raws = Vec::new();
    for (key, text) in files {
        if let Some(format) = KeyFormat::of_key(key) {
            collect(origin, Some(key), format, text, &mut raws, &mut errors);
        }
    }
    let check = if flavors_ok {
        FlavorCheck::Against(&flavors)
    } else {
        FlavorCheck::Skip
    };
    let addresses = assemble(
        origin,
        raws,
        check,
        opts.default_flavor,
        opts.deferred_subscriptions,
        &mut errors,
    );
    if errors.is_empty() {
        Ok(Config { addresses, flavors })
    } else {
        Err(errors)
    }
}

/// Parse one text of `format` into a validated set without checking flavors (snapshots from config-service).
pub(crate) fn parse_unchecked(
    origin: &str,
    format: KeyFormat,
    text: &str,
) -> Result<AddressSet, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut raws = Vec::new();
    collect(origin, None, format, text, &mut raws, &mut errors);
    let set = assemble(origin, raws, FlavorCheck::Skip, None, false, &mut errors);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Every rule an address string breaks (docs/architecture.md §2); empty when it is valid.
pub fn address_problems(address: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if address.is_empty() {
        problems.push("address must not be empty".to_string());
        return problems;
    }
    if address.len() > MAX_ADDRESS_LEN {
        problems.push(format!(
            "address is {} bytes long; at most {MAX_ADDRESS_LEN} bytes are allowed",
            address.len()
        ));
    }
    if let Some((i, c)) = address
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        problems.push(format!(
            "address must not contain whitespace or control characters (found U+{:04X} at byte {i})",
            u32::from(c)
        ));
    }
    if address.starts_with('$') || address.starts_with('_') {
        problems.push(
            "address must not start with '$' or '_' (reserved by the router, e.g. $management, _topo)"
                .to_string(),
        );
    }
    if address.contains('#') || address.contains('*') {
        problems.push("address must not contain '#' or '*' (pattern wildcards)".to_string());
    }
    if address.contains("::") {
        problems.push(
            "address must not contain '::' (the Artemis fully-qualified queue name separator)"
                .to_string(),
        );
    }
    if address.ends_with('.') || address.ends_with('/') {
        // qdrouterd stores a prefix without its trailing separator ("queue." reads back as "queue"), so the
        // entity would never match what the router reports, and "a" and "a." would collide.
        problems.push(
            "address must not end with '.' or '/' (the router drops a trailing separator from a prefix)"
                .to_string(),
        );
    }
    problems
}

/// One address definition as found in the input, before validation and merging.
#[derive(Debug, Clone)]
struct Raw<'k> {
    address: String,
    kind: AddressKind,
    flavor: Option<String>,
    /// The topic of a subscription.
    topic: Option<String>,
    /// The data key it came from (borrowed: one allocation less per address).
    key: Option<&'k str>,
}

/// Whether to check that queue/topic flavors exist.
#[derive(Debug, Clone, Copy)]
enum FlavorCheck<'a> {
    /// Not checked (flavors unknown, or their file is broken).
    Skip,
    /// Checked against this set; shared-flavor cluster names are checked for collisions too.
    Against(&'a FlavorSet),
}

/// Read the address definitions of one key into `raws`.
fn collect<'k>(
    origin: &str,
    key: Option<&'k str>,
    format: KeyFormat,
    text: &str,
    raws: &mut Vec<Raw<'k>>,
    errors: &mut Vec<ConfigError>,
) {
    match format {
        KeyFormat::Flavor => {}
        // A JSON object is read entry by entry: 10,000 addresses never exist as one JSON tree in memory.
        KeyFormat::Legacy if text.trim_start().starts_with('{') => {
            let mut de = serde_json::Deserializer::from_str(text);
            let visitor = LegacyVisitor {
                origin,
                key,
                raws: &mut *raws,
                errors: &mut *errors,
            };
            if let Err(e) =
                serde::Deserializer::deserialize_map(&mut de, visitor).and_then(|()| de.end())
            {
                errors.push(ConfigError::new(
                    origin,
                    key,
                    None,
                    format!("invalid JSON: {e}"),
                ));
            }
        }
        KeyFormat::Legacy => match serde_json::from_str::<Value>(text) {
            Ok(v) => collect_legacy(origin, key, v, raws, errors),
            Err(e) => errors.push(ConfigError::new(
                origin,
                key,
                None,
                format!("invalid JSON: {e}"),
            )),
        },
        KeyFormat::TypedJson => match serde_json::from_str::<Value>(text) {
            Ok(v) => collect_typed(origin, key, &v, raws, errors),
            Err(e) => errors.push(ConfigError::new(
                origin,
                key,
                None,
                format!("invalid JSON: {e}"),
            )),
        },
        KeyFormat::TypedYaml => {
            for doc in serde_yaml::Deserializer::from_str(text) {
                match Value::deserialize(doc) {
                    Ok(Value::Null) => {}
                    Ok(v) => collect_typed(origin, key, &v, raws, errors),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            origin,
                            key,
                            None,
                            format!("invalid YAML: {e}"),
                        ));
                        // The documents after a syntax error cannot be trusted.
                        break;
                    }
                }
            }
        }
    }
}

/// Reads a 2016-format object one entry at a time.
struct LegacyVisitor<'a, 'k> {
    origin: &'a str,
    key: Option<&'k str>,
    raws: &'a mut Vec<Raw<'k>>,
    errors: &'a mut Vec<ConfigError>,
}

impl<'de, 'k> serde::de::Visitor<'de> for LegacyVisitor<'_, 'k> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object from address to its properties")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(address) = map.next_key::<String>()? {
            let props: Value = map.next_value()?;
            legacy_entry(
                self.origin,
                self.key,
                address,
                props,
                self.raws,
                self.errors,
            );
        }
        Ok(())
    }
}

/// The 2016 format: `{"<address>": {"store_and_forward": b, "multicast": b, "flavor": f}}`.
fn collect_legacy<'k>(
    origin: &str,
    key: Option<&'k str>,
    value: Value,
    raws: &mut Vec<Raw<'k>>,
    errors: &mut Vec<ConfigError>,
) {
    let Value::Object(map) = value else {
        errors.push(ConfigError::new(
            origin,
            key,
            None,
            format!(
                "the 2016 format must be a JSON object from address to {{\"store_and_forward\": bool, \
                 \"multicast\": bool, \"flavor\": name}}, found {}",
                json_type_name(&value)
            ),
        ));
        return;
    };
    for (address, props) in map {
        legacy_entry(origin, key, address, props, raws, errors);
    }
}

/// One entry of the 2016 format.
fn legacy_entry<'k>(
    origin: &str,
    key: Option<&'k str>,
    address: String,
    props: Value,
    raws: &mut Vec<Raw<'k>>,
    errors: &mut Vec<ConfigError>,
) {
    let err = |msg: String| ConfigError::new(origin, key, Some(&address), msg);
    let Value::Object(props) = props else {
        errors.push(err(format!(
            "properties must be an object like {{\"store_and_forward\": true, \"multicast\": false, \
             \"flavor\": \"vanilla-queue\"}}, found {}",
            json_type_name(&props)
        )));
        return;
    };
    let mut problems = Vec::new();
    let store_and_forward = flag(
        &props,
        "store_and_forward",
        Some("store-and-forward"),
        &mut problems,
    );
    let multicast = flag(&props, "multicast", None, &mut problems);
    let flavor = flavor_field(props.get("flavor"), "\"flavor\"", &mut problems);
    let subscription = flag(&props, "subscription", None, &mut problems);
    let topic = topic_field(props.get("topic"), "\"topic\"", subscription, &mut problems);
    if !problems.is_empty() {
        errors.extend(problems.into_iter().map(err));
        return;
    }
    let kind = if subscription {
        AddressKind::Subscription
    } else {
        AddressKind::from_flags(store_and_forward, multicast)
    };
    raws.push(Raw {
        kind,
        address,
        flavor,
        topic,
        key,
    });
}

/// A boolean of the 2016 format (missing = false), accepting an alternative spelling.
fn flag(
    props: &Map<String, Value>,
    name: &str,
    synonym: Option<&str>,
    problems: &mut Vec<String>,
) -> bool {
    let mut read = |field: &str| match props.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            problems.push(format!(
                "\"{field}\" must be true or false, found {}",
                json_type_name(v)
            ));
            None
        }
    };
    let main = read(name);
    let other = synonym.and_then(&mut read);
    if let (Some(a), Some(b), Some(syn)) = (main, other, synonym)
        && a != b
    {
        problems.push(format!("\"{name}\" and \"{syn}\" disagree"));
    }
    main.or(other).unwrap_or(false)
}

/// The topic of a subscription: required (a non-empty string) when `subscription`, not allowed otherwise.
fn topic_field(
    value: Option<&Value>,
    what: &str,
    subscription: bool,
    problems: &mut Vec<String>,
) -> Option<String> {
    match (value, subscription) {
        (None | Some(Value::Null), false) => None,
        (None | Some(Value::Null), true) => {
            problems.push(format!(
                "a subscription needs {what}: the topic it subscribes to"
            ));
            None
        }
        (Some(Value::String(t)), true) if !t.is_empty() => Some(t.clone()),
        (Some(Value::String(t)), true) if t.is_empty() => {
            problems.push(format!("{what} must not be empty"));
            None
        }
        (Some(Value::String(_)), _) => {
            problems.push(format!("{what} is only for subscriptions"));
            None
        }
        (Some(v), _) => {
            problems.push(format!(
                "{what} must be a string, found {}",
                json_type_name(v)
            ));
            None
        }
    }
}

/// An optional flavor name (missing, null or "" = none).
fn flavor_field(value: Option<&Value>, what: &str, problems: &mut Vec<String>) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            problems.push(format!(
                "{what} must be a string, found {}",
                json_type_name(v)
            ));
            None
        }
    }
}

/// The typed format: one Address, a list of them, or an AddressList.
fn collect_typed<'k>(
    origin: &str,
    key: Option<&'k str>,
    value: &Value,
    raws: &mut Vec<Raw<'k>>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                typed_item(origin, key, &format!("item {i}"), item, raws, errors);
            }
        }
        Value::Object(o) if o.get("kind").and_then(Value::as_str) == Some(ADDRESS_LIST_KIND) => {
            match o.get("items") {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        typed_item(origin, key, &format!("items[{i}]"), item, raws, errors);
                    }
                }
                Some(v) => errors.push(ConfigError::new(
                    origin,
                    key,
                    None,
                    format!(
                        "\"items\" of an AddressList must be a list, found {}",
                        json_type_name(v)
                    ),
                )),
            }
        }
        Value::Object(_) => typed_item(origin, key, "the Address", value, raws, errors),
        other => errors.push(ConfigError::new(
            origin,
            key,
            None,
            format!(
                "expected an Address object, a list of them or an AddressList, found {}",
                json_type_name(other)
            ),
        )),
    }
}

/// One typed Address object; `label` says where it is (`item 3`) when it has no address to name it by.
fn typed_item<'k>(
    origin: &str,
    key: Option<&'k str>,
    label: &str,
    item: &Value,
    raws: &mut Vec<Raw<'k>>,
    errors: &mut Vec<ConfigError>,
) {
    let Value::Object(o) = item else {
        errors.push(ConfigError::new(
            origin,
            key,
            None,
            format!(
                "{label} must be an Address object, found {}",
                json_type_name(item)
            ),
        ));
        return;
    };
    let mut problems = Vec::new();
    let spec = match o.get("spec") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => Some(s),
        Some(v) => {
            problems.push(format!(
                "\"spec\" must be an object, found {}",
                json_type_name(v)
            ));
            None
        }
    };
    let metadata_name = o
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let address = match spec.and_then(|s| s.get("address")) {
        None | Some(Value::Null) => metadata_name.map(str::to_string),
        Some(Value::String(a)) => Some(a.clone()),
        Some(v) => {
            problems.push(format!(
                "\"spec.address\" must be a string, found {}",
                json_type_name(v)
            ));
            None
        }
    };
    match o.get("apiVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => problems.push(format!(
            "unsupported apiVersion {v} (expected \"{API_VERSION}\")"
        )),
    }
    match o.get("kind") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) if k == ADDRESS_KIND => {}
        Some(v) => problems.push(format!(
            "unsupported kind {v} (expected \"{ADDRESS_KIND}\")"
        )),
    }
    let kind = match spec.and_then(|s| s.get("type")) {
        None | Some(Value::Null) => {
            problems.push(
                "missing \"spec.type\" (one of anycast, broadcast, queue, topic, subscription)"
                    .to_string(),
            );
            None
        }
        Some(Value::String(t)) => {
            let kind = AddressKind::from_type_name(t);
            if kind.is_none() {
                problems.push(format!(
                    "unknown type {t:?} (expected anycast, broadcast, multicast, queue, topic or \
                     subscription)"
                ));
            }
            kind
        }
        Some(v) => {
            problems.push(format!(
                "\"spec.type\" must be a string, found {}",
                json_type_name(v)
            ));
            None
        }
    };
    let flavor = flavor_field(
        spec.and_then(|s| s.get("flavor")),
        "\"spec.flavor\"",
        &mut problems,
    );
    let topic = topic_field(
        spec.and_then(|s| s.get("topic")),
        "\"spec.topic\"",
        kind == Some(AddressKind::Subscription),
        &mut problems,
    );
    match (address, kind) {
        (Some(address), Some(kind)) if problems.is_empty() => raws.push(Raw {
            address,
            kind,
            flavor,
            topic,
            key,
        }),
        (Some(address), _) => errors.extend(
            problems
                .into_iter()
                .map(|m| ConfigError::new(origin, key, Some(&address), m)),
        ),
        (None, _) => {
            if problems.is_empty() || !problems.iter().any(|p| p.starts_with("\"spec.address\"")) {
                problems.insert(
                    0,
                    "has no address: set \"spec.address\" (or \"metadata.name\")".to_string(),
                );
            }
            errors.extend(
                problems
                    .into_iter()
                    .map(|m| ConfigError::new(origin, key, None, format!("{label}: {m}"))),
            );
        }
    }
}

/// A short description of where a definition came from, for conflict messages.
fn where_from(key: &Option<&str>) -> String {
    match key {
        Some(k) => format!("key {k:?}"),
        None => "input".to_string(),
    }
}

/// Validate, merge repeats, resolve flavors and check conflicts; every problem goes to `errors`.
fn assemble(
    origin: &str,
    mut raws: Vec<Raw<'_>>,
    check: FlavorCheck<'_>,
    default_flavor: Option<&str>,
    deferred_subscriptions: bool,
    errors: &mut Vec<ConfigError>,
) -> AddressSet {
    // The key each subscription came from (first definition), for the errors about its topic.
    let mut subscription_keys: BTreeMap<String, Option<String>> = BTreeMap::new();
    // Group the definitions of each address by sorting (stable: each group keeps input order), without a map
    // and a list per address.
    raws.sort_by(|a, b| a.address.cmp(&b.address));
    let mut set = AddressSet::default();
    let mut raws = raws.into_iter().peekable();
    let mut defs: Vec<Raw<'_>> = Vec::new();
    while let Some(first) = raws.next() {
        defs.clear();
        defs.push(first);
        while let Some(next) = raws.next_if(|r| r.address == defs[0].address) {
            defs.push(next);
        }
        let address = std::mem::take(&mut defs[0].address);
        let first_key = defs[0].key;
        let err =
            |key: &Option<&str>, msg: String| ConfigError::new(origin, *key, Some(&address), msg);
        let problems = address_problems(&address);
        if !problems.is_empty() {
            errors.extend(problems.into_iter().map(|m| err(&first_key, m)));
            continue;
        }
        let explicit_flavor = defs.iter().any(|d| d.flavor.is_some());
        // Flavors only matter for queues and topics; the default fills the gaps.
        for d in &mut defs {
            d.flavor = if d.kind.needs_broker() {
                d.flavor
                    .take()
                    .or_else(|| default_flavor.map(str::to_string))
            } else {
                None
            };
        }
        let first = &defs[0];
        if let Some(other) = defs.iter().find(|d| d.kind != first.kind) {
            let mut seen = BTreeSet::new();
            let listed: Vec<String> = defs
                .iter()
                .filter(|d| seen.insert((d.kind, d.key)))
                .map(|d| format!("{} ({})", d.kind.as_str(), where_from(&d.key)))
                .collect();
            errors.push(err(
                &other.key,
                format!("defined with different kinds: {}", listed.join(", ")),
            ));
            continue;
        }
        if let Some(other) = defs.iter().find(|d| d.flavor != first.flavor) {
            let mut seen = BTreeSet::new();
            let listed: Vec<String> = defs
                .iter()
                .filter(|d| seen.insert((d.flavor.clone(), d.key)))
                .map(|d| {
                    let f = d
                        .flavor
                        .as_deref()
                        .map_or("no flavor".to_string(), |f| format!("{f:?}"));
                    format!("{f} ({})", where_from(&d.key))
                })
                .collect();
            errors.push(err(
                &other.key,
                format!("defined with different flavors: {}", listed.join(", ")),
            ));
            continue;
        }
        if let Some(other) = defs.iter().find(|d| d.topic != first.topic) {
            errors.push(err(
                &other.key,
                format!(
                    "subscription defined on different topics: {:?} and {:?}",
                    first.topic.as_deref().unwrap_or(""),
                    other.topic.as_deref().unwrap_or("")
                ),
            ));
            continue;
        }
        let kind = first.kind;
        let flavor = first.flavor.clone();
        let topic = first.topic.clone();
        if let FlavorCheck::Against(flavors) = check
            && kind.needs_broker()
        {
            match flavor.as_deref() {
                None => {
                    errors.push(err(
                        &first_key,
                        format!(
                            "a {} needs a flavor: set \"flavor\" (no default flavor is configured)",
                            kind.as_str()
                        ),
                    ));
                    continue;
                }
                Some(f) if !flavors.contains(f) => {
                    let default_note = if !explicit_flavor {
                        " (the default flavor)"
                    } else {
                        ""
                    };
                    let known = if flavors.is_empty() {
                        "no flavors are configured".to_string()
                    } else {
                        let names: Vec<&str> = flavors.flavors.keys().map(String::as_str).collect();
                        format!("known flavors: {}", names.join(", "))
                    };
                    errors.push(err(
                        &first_key,
                        format!("flavor {f:?}{default_note} does not exist ({known})"),
                    ));
                    continue;
                }
                Some(_) => {}
            }
        }
        if kind == AddressKind::Subscription {
            subscription_keys.insert(address.clone(), first_key.map(str::to_string));
        }
        set.insert(Address {
            address,
            kind,
            flavor,
            topic,
        });
    }
    for (address, problem) in subscription_problems(&set, deferred_subscriptions) {
        let key = subscription_keys.get(&address).cloned().flatten();
        errors.push(ConfigError::new(
            origin,
            key.as_deref(),
            Some(&address),
            problem,
        ));
    }
    resolve_subscriptions(&mut set, deferred_subscriptions);
    if let FlavorCheck::Against(flavors) = check {
        check_cluster_names(origin, &set, flavors, errors);
    }
    set
}

/// Every subscription's topic must be a topic of the set; a subscription takes its topic's flavor (it lives on
/// the topic's broker cluster). The subscriptions that cannot stay, with why, in address order: their topic is not
/// a topic, or (unless `deferred`: see [`ParseOptions::deferred_subscriptions`]) is not defined.
fn subscription_problems(set: &AddressSet, deferred: bool) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for a in set.iter().filter(|a| a.kind == AddressKind::Subscription) {
        let topic = a.topic.as_deref().unwrap_or_default();
        match set.get(topic) {
            Some(t) if t.kind == AddressKind::Topic => {}
            Some(t) => problems.push((
                a.address.clone(),
                format!(
                    "subscription on {topic:?}, which is a {}, not a topic",
                    t.kind.as_str()
                ),
            )),
            None if deferred => {}
            None => problems.push((
                a.address.clone(),
                format!("subscription on topic {topic:?}, which is not defined"),
            )),
        }
    }
    problems
}

/// Give every subscription its topic's flavor and leave out those [`subscription_problems`] names.
fn resolve_subscriptions(set: &mut AddressSet, deferred: bool) {
    let bad: Vec<String> = subscription_problems(set, deferred)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    for address in bad {
        set.addresses.remove(&address);
    }
    let flavors: Vec<(String, Option<String>)> = set
        .iter()
        .filter(|a| a.kind == AddressKind::Subscription)
        .filter_map(|a| {
            let topic = set.get(a.topic.as_deref().unwrap_or_default())?;
            Some((a.address.clone(), topic.flavor.clone()))
        })
        .collect();
    for (address, flavor) in flavors {
        if let Some(a) = set.addresses.get_mut(&address) {
            a.flavor = flavor;
        }
    }
}

/// Check the subscriptions of a MERGED set (the union of parts parsed with
/// [`ParseOptions::deferred_subscriptions`], e.g. several address ConfigMaps) against that set: a subscription's
/// topic must be defined in it and be a topic, and the subscription takes the topic's flavor. Those that fail are
/// removed from `set` (only they: the rest of their part stays) and returned with why, in address order; the
/// caller names the part (and [`defining_key`]) they came from.
pub fn resolve_merged_subscriptions(set: &mut AddressSet) -> Vec<(String, String)> {
    let problems = subscription_problems(set, false);
    resolve_subscriptions(set, false);
    problems
}

/// The first data key (in key order) of `files` that defines `address`, read without validation; None when no
/// key does. For naming the key of an address found wrong after a merge (rare: read again only then).
pub fn defining_key(files: &BTreeMap<String, String>, address: &str) -> Option<String> {
    files.iter().find_map(|(key, text)| {
        let format = KeyFormat::of_key(key)?;
        let mut raws = Vec::new();
        let mut errors = Vec::new();
        collect("", Some(key), format, text, &mut raws, &mut errors);
        raws.iter()
            .any(|r| r.address == address)
            .then(|| key.clone())
    })
}

/// Two different owners (an address's own cluster, a shared flavor's cluster) must not end up with the same
/// cluster name; report each address involved.
fn check_cluster_names(
    origin: &str,
    set: &AddressSet,
    flavors: &FlavorSet,
    errors: &mut Vec<ConfigError>,
) {
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_address = Vec::new();
    // A subscription shares its topic's cluster by design.
    for a in set.iter().filter(|a| a.kind != AddressKind::Subscription) {
        let Some(cluster) = cluster_for(a, flavors) else {
            continue;
        };
        let shared = a
            .flavor
            .as_deref()
            .and_then(|f| flavors.get(f))
            .is_some_and(|f| f.shared);
        let owner = match (&a.flavor, shared) {
            (Some(f), true) => format!("shared flavor {f:?}"),
            _ => format!("address {:?}", a.address),
        };
        owners
            .entry(cluster.clone())
            .or_default()
            .insert(owner.clone());
        by_address.push((a.address.clone(), cluster, owner));
    }
    for (address, cluster, owner) in by_address {
        let all = &owners[&cluster];
        if all.len() > 1 {
            let others: Vec<&str> = all
                .iter()
                .filter(|o| **o != owner)
                .map(String::as_str)
                .collect();
            errors.push(ConfigError::new(
                origin,
                None,
                Some(&address),
                format!(
                    "its broker cluster name {cluster:?} is also the cluster of {}; rename one of them",
                    others.join(", ")
                ),
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FLAVORS: &str = r#"{
        "vanilla-queue": {"type": "queue", "templateName": "queue-persisted"},
        "vanilla-topic": {"type": "topic", "templateName": "topic-persisted"},
        "shared-small": {"type": "queue", "shared": true}
    }"#;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flavors() -> FlavorSet {
        FlavorSet::from_json("flavors", FLAVORS).unwrap()
    }

    fn ok(pairs: &[(&str, &str)]) -> AddressSet {
        match parse_config("cm", &files(pairs), Some(&flavors())) {
            Ok(c) => c.addresses,
            Err(e) => panic!("unexpected errors: {e:#?}"),
        }
    }

    fn errs(pairs: &[(&str, &str)]) -> Vec<String> {
        errs_with(pairs, None)
    }

    fn errs_with(pairs: &[(&str, &str)], default_flavor: Option<&str>) -> Vec<String> {
        parse_config_with("cm", &files(pairs), Some(&flavors()), default_flavor)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn summary(set: &AddressSet) -> Vec<(String, &'static str, Option<String>)> {
        set.iter()
            .map(|a| (a.address.clone(), a.kind.as_str(), a.flavor.clone()))
            .collect()
    }

    fn s(a: &str, k: &'static str, f: Option<&str>) -> (String, &'static str, Option<String>) {
        (a.to_string(), k, f.map(str::to_string))
    }

    #[test]
    fn legacy_format_kinds_and_synonym() {
        let set = ok(&[(
            "json",
            r#"{"a": {"store_and_forward": false, "multicast": false},
                "b": {"multicast": true},
                "q": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"},
                "t": {"store-and-forward": true, "multicast": true, "flavor": "vanilla-topic"},
                "e": {},
                "f": {"store_and_forward": false, "flavor": "vanilla-queue"},
                "g": {"store_and_forward": true, "store-and-forward": true, "flavor": "vanilla-queue"}}"#,
        )]);
        assert_eq!(
            summary(&set),
            vec![
                s("a", "anycast", None),
                s("b", "broadcast", None),
                s("e", "anycast", None),
                s("f", "anycast", None),
                s("g", "queue", Some("vanilla-queue")),
                s("q", "queue", Some("vanilla-queue")),
                s("t", "topic", Some("vanilla-topic")),
            ]
        );
    }

    #[test]
    fn typed_format_single_list_and_address_list() {
        let single = r#"{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "my-q"},
                         "spec": {"address": "orders", "type": "queue", "flavor": "vanilla-queue"}}"#;
        let list = r#"[{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "b"},
                        "spec": {"address": "b", "type": "multicast"}},
                       {"metadata": {"name": "by-name"}, "spec": {"type": "anycast"}}]"#;
        let address_list = r#"{"apiVersion": "enmasse.io/v1", "kind": "AddressList", "items": [
                        {"spec": {"address": "news", "type": "topic", "flavor": "shared-small"}},
                        {"spec": {"address": "c", "type": "broadcast"}}]}"#;
        let set = ok(&[
            ("a.json", single),
            ("b.json", list),
            ("c.json", address_list),
            ("empty.json", r#"{"kind": "AddressList", "items": []}"#),
        ]);
        assert_eq!(
            summary(&set),
            vec![
                s("b", "broadcast", None),
                s("by-name", "anycast", None),
                s("c", "broadcast", None),
                s("news", "topic", Some("shared-small")),
                s("orders", "queue", Some("vanilla-queue")),
            ]
        );
    }

    #[test]
    fn yaml_format_with_several_documents() {
        let yaml = "apiVersion: enmasse.io/v1\nkind: Address\nmetadata:\n  name: y1\nspec:\n  address: y1\n  type: queue\n  flavor: vanilla-queue\n---\n- spec: {address: y2, type: topic, flavor: vanilla-topic}\n- spec: {address: y3, type: anycast}\n---\n";
        let set = ok(&[
            ("addresses.yaml", yaml),
            ("more.yml", "kind: AddressList\nitems: []\n"),
            ("blank.yaml", ""),
        ]);
        assert_eq!(
            summary(&set),
            vec![
                s("y1", "queue", Some("vanilla-queue")),
                s("y2", "topic", Some("vanilla-topic")),
                s("y3", "anycast", None),
            ]
        );
    }

    #[test]
    fn mixed_keys_identical_repeats_and_ignored_keys() {
        let set = ok(&[
            (
                "json",
                r#"{"orders": {"store_and_forward": true, "flavor": "vanilla-queue"}, "x": {}}"#,
            ),
            (
                "config.json",
                r#"[{"spec": {"address": "orders", "type": "queue", "flavor": "vanilla-queue"}},
                    {"spec": {"address": "orders", "type": "queue", "flavor": "vanilla-queue"}},
                    {"spec": {"address": "x", "type": "anycast", "flavor": "ignored-for-anycast"}}]"#,
            ),
            ("README.md", "not parsed"),
            ("..data", "not parsed"),
            ("..2024_01_01/config.json", "not parsed"),
        ]);
        assert_eq!(
            summary(&set),
            vec![
                s("orders", "queue", Some("vanilla-queue")),
                s("x", "anycast", None)
            ]
        );
    }

    #[test]
    fn every_address_rule_has_its_error() {
        let long = "a".repeat(250);
        let max = "a".repeat(249);
        let cases: Vec<(String, Vec<String>)> = vec![
            ("".into(), vec!["address must not be empty".into()]),
            (long.clone(), vec!["address is 250 bytes long; at most 249 bytes are allowed".into()]),
            ("a b".into(), vec!["address must not contain whitespace or control characters (found U+0020 at byte 1)".into()]),
            ("a\tb".into(), vec!["address must not contain whitespace or control characters (found U+0009 at byte 1)".into()]),
            ("a\u{7f}".into(), vec!["address must not contain whitespace or control characters (found U+007F at byte 1)".into()]),
            ("é\u{a0}".into(), vec!["address must not contain whitespace or control characters (found U+00A0 at byte 2)".into()]),
            ("$management".into(), vec!["address must not start with '$' or '_' (reserved by the router, e.g. $management, _topo)".into()]),
            ("_topo".into(), vec!["address must not start with '$' or '_' (reserved by the router, e.g. $management, _topo)".into()]),
            ("a.#".into(), vec!["address must not contain '#' or '*' (pattern wildcards)".into()]),
            ("a*b".into(), vec!["address must not contain '#' or '*' (pattern wildcards)".into()]),
            ("t::sub".into(), vec!["address must not contain '::' (the Artemis fully-qualified queue name separator)".into()]),
            ("queue.".into(), vec!["address must not end with '.' or '/' (the router drops a trailing separator from a prefix)".into()]),
            ("a/".into(), vec!["address must not end with '.' or '/' (the router drops a trailing separator from a prefix)".into()]),
            ("$a b*".into(), vec![
                "address must not contain whitespace or control characters (found U+0020 at byte 2)".into(),
                "address must not start with '$' or '_' (reserved by the router, e.g. $management, _topo)".into(),
                "address must not contain '#' or '*' (pattern wildcards)".into(),
            ]),
        ];
        for (address, want) in cases {
            assert_eq!(address_problems(&address), want, "address {address:?}");
        }
        for good in [
            max.as_str(),
            "a",
            "orders",
            "news/sport.eu",
            "a:b",
            "ünïcødé",
            "a$",
            "a_b",
            "0",
        ] {
            assert!(address_problems(good).is_empty(), "{good:?}");
        }
    }

    #[test]
    fn address_errors_name_origin_key_and_address() {
        let legacy = format!(
            r#"{{"$bad": {{}}, "": {{}}, "ok": {{}}, "{}": {{}}}}"#,
            "x".repeat(300)
        );
        let got = errs(&[
            ("json", &legacy),
            (
                "c.json",
                r#"{"spec": {"address": "a b", "type": "anycast"}}"#,
            ),
        ]);
        assert_eq!(
            got,
            vec![
                r#"cm key "json" address "": address must not be empty"#.to_string(),
                r#"cm key "json" address "$bad": address must not start with '$' or '_' (reserved by the router, e.g. $management, _topo)"#.to_string(),
                r#"cm key "c.json" address "a b": address must not contain whitespace or control characters (found U+0020 at byte 1)"#.to_string(),
                format!(r#"cm key "json" address "{}...": address is 300 bytes long; at most 249 bytes are allowed"#, "x".repeat(80)),
            ]
        );
    }

    #[test]
    fn malformed_input_errors_include_line_and_column() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "json",
                "{\n  \"a\": {,}\n}",
                r#"cm key "json": invalid JSON: key must be a string at line 2 column 9"#,
            ),
            (
                "c.json",
                "[\n{\"spec\": }]",
                r#"cm key "c.json": invalid JSON: expected value at line 2 column 10"#,
            ),
            (
                "c.json",
                "",
                r#"cm key "c.json": invalid JSON: EOF while parsing a value at line 1 column 0"#,
            ),
            (
                "a.yaml",
                "spec:\n  type: [queue\n",
                r#"cm key "a.yaml": invalid YAML: did not find expected ',' or ']' at line 3 column 1, while parsing a flow sequence at line 2 column 9"#,
            ),
            (
                "a.yaml",
                "a: b: c",
                r#"cm key "a.yaml": invalid YAML: mapping values are not allowed in this context at line 1 column 5"#,
            ),
        ];
        for (key, text, want) in cases {
            assert_eq!(
                errs(&[(key, text)]),
                vec![want.to_string()],
                "{key}: {text}"
            );
        }
    }

    #[test]
    fn structural_errors_in_each_format() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "json",
                "[]",
                &[
                    r#"cm key "json": the 2016 format must be a JSON object from address to {"store_and_forward": bool, "multicast": bool, "flavor": name}, found a list"#,
                ],
            ),
            (
                "json",
                r#"{"a": true}"#,
                &[
                    r#"cm key "json" address "a": properties must be an object like {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"}, found a boolean"#,
                ],
            ),
            (
                "json",
                r#"{"a": {"store_and_forward": "yes", "multicast": 1, "flavor": 7}}"#,
                &[
                    r#"cm key "json" address "a": "store_and_forward" must be true or false, found a string"#,
                    r#"cm key "json" address "a": "multicast" must be true or false, found a number"#,
                    r#"cm key "json" address "a": "flavor" must be a string, found a number"#,
                ],
            ),
            (
                "json",
                r#"{"a": {"store_and_forward": true, "store-and-forward": false}}"#,
                &[
                    r#"cm key "json" address "a": "store_and_forward" and "store-and-forward" disagree"#,
                ],
            ),
            (
                "c.json",
                "42",
                &[
                    r#"cm key "c.json": expected an Address object, a list of them or an AddressList, found a number"#,
                ],
            ),
            (
                "c.json",
                r#"[1, {"spec": {"type": "queue"}}, {"spec": {"address": 5, "type": "queue"}}]"#,
                &[
                    r#"cm key "c.json": item 0 must be an Address object, found a number"#,
                    r#"cm key "c.json": item 1: has no address: set "spec.address" (or "metadata.name")"#,
                    r#"cm key "c.json": item 2: "spec.address" must be a string, found a number"#,
                ],
            ),
            (
                "c.json",
                r#"{"kind": "AddressList", "items": {}}"#,
                &[r#"cm key "c.json": "items" of an AddressList must be a list, found an object"#],
            ),
            (
                "c.json",
                r#"{"kind": "AddressList", "items": [{"spec": "x"}]}"#,
                &[
                    r#"cm key "c.json": items[0]: has no address: set "spec.address" (or "metadata.name")"#,
                    r#"cm key "c.json": items[0]: "spec" must be an object, found a string"#,
                    r#"cm key "c.json": items[0]: missing "spec.type" (one of anycast, broadcast, queue, topic, subscription)"#,
                ],
            ),
            (
                "c.json",
                r#"{"apiVersion": "enmasse.io/v1beta1", "kind": "AddressSpace", "spec": {"address": "a", "type": "lake", "flavor": []}}"#,
                &[
                    r#"cm key "c.json" address "a": unsupported apiVersion "enmasse.io/v1beta1" (expected "enmasse.io/v1")"#,
                    r#"cm key "c.json" address "a": unsupported kind "AddressSpace" (expected "Address")"#,
                    r#"cm key "c.json" address "a": unknown type "lake" (expected anycast, broadcast, multicast, queue, topic or subscription)"#,
                    r#"cm key "c.json" address "a": "spec.flavor" must be a string, found a list"#,
                ],
            ),
            (
                "c.json",
                r#"{"spec": {"address": "a"}}"#,
                &[
                    r#"cm key "c.json" address "a": missing "spec.type" (one of anycast, broadcast, queue, topic, subscription)"#,
                ],
            ),
            (
                "c.json",
                r#"{"spec": {"address": "a", "type": 1}}"#,
                &[r#"cm key "c.json" address "a": "spec.type" must be a string, found a number"#],
            ),
            (
                "x.yaml",
                "just a string",
                &[
                    r#"cm key "x.yaml": expected an Address object, a list of them or an AddressList, found a string"#,
                ],
            ),
        ];
        for (key, text, want) in cases {
            assert_eq!(&errs(&[(key, text)]), want, "{key}: {text}");
        }
    }

    #[test]
    fn subscriptions_in_both_formats_and_their_rules() {
        let flavor = r#"{"small": {"type": "topic"}}"#;
        let ok = parse_config(
            "cm",
            &[
                (
                    "json".to_string(),
                    r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "small"},
                        "s1": {"subscription": true, "topic": "news"}}"#
                        .to_string(),
                ),
                (
                    "more.json".to_string(),
                    r#"{"spec": {"address": "s2", "type": "subscription", "topic": "news"}}"#
                        .to_string(),
                ),
                ("flavor.json".to_string(), flavor.to_string()),
            ]
            .into_iter()
            .collect(),
            None,
        )
        .unwrap();
        for s in ["s1", "s2"] {
            let a = ok.addresses.get(s).unwrap();
            assert_eq!(a.kind, AddressKind::Subscription);
            assert_eq!(a.topic.as_deref(), Some("news"));
        }
        // Both snapshot formats carry it and read back the same.
        let typed =
            AddressSet::from_address_list_json("x", &ok.addresses.to_address_list_json()).unwrap();
        let legacy = AddressSet::from_2016_json("x", &ok.addresses.to_2016_json()).unwrap();
        assert_eq!(typed.get("s1"), ok.addresses.get("s1"));
        assert_eq!(legacy.get("s2"), ok.addresses.get("s2"));
        assert!(
            ok.addresses
                .to_2016_json()
                .contains(r#""s1":{"subscription":true,"topic":"news"}"#)
        );

        let got = errs(&[
            (
                "json",
                r#"{"chat": {}, "a": {"subscription": true, "topic": "chat"},
                    "b": {"subscription": true, "topic": "nope"}, "c": {"subscription": true},
                    "d": {"topic": "chat"}}"#,
            ),
            ("flavor.json", flavor),
        ]);
        assert_eq!(
            got,
            vec![
                r#"cm key "json" address "c": a subscription needs "topic": the topic it subscribes to"#,
                r#"cm key "json" address "d": "topic" is only for subscriptions"#,
                r#"cm key "json" address "a": subscription on "chat", which is a anycast, not a topic"#,
                r#"cm key "json" address "b": subscription on topic "nope", which is not defined"#,
            ]
        );
    }

    #[test]
    fn deferred_subscriptions_are_checked_against_the_merged_set() {
        let files = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let deferred = ParseOptions {
            deferred_subscriptions: true,
            ..ParseOptions::default()
        };
        let subs = files(&[(
            "subscriptions.json",
            r#"[{"spec": {"address": "s1", "type": "subscription", "topic": "news"}},
                {"spec": {"address": "s2", "type": "subscription", "topic": "gone"}},
                {"spec": {"address": "s3", "type": "subscription", "topic": "chat"}}]"#,
        )]);
        // On its own, as always: every subscription on a topic defined elsewhere is an error.
        let err = parse_config("cm", &subs, None).unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
        assert_eq!(
            err[0].to_string(),
            r#"cm key "subscriptions.json" address "s1": subscription on topic "news", which is not defined"#
        );
        // Deferred: kept, unresolved (no flavor yet).
        let part = parse_config_opts("cm", &subs, deferred).unwrap();
        assert_eq!(part.addresses.len(), 3);
        assert_eq!(part.addresses.get("s1").unwrap().flavor, None);
        // A topic defined in the same files is still checked there (the part is refused as before).
        let mixed = files(&[
            ("json", r#"{"chat": {}}"#),
            (
                "subscriptions.json",
                r#"{"spec": {"address": "s3", "type": "subscription", "topic": "chat"}}"#,
            ),
        ]);
        let err = parse_config_opts("cm", &mixed, deferred).unwrap_err();
        assert_eq!(
            err.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                r#"cm key "subscriptions.json" address "s3": subscription on "chat", which is a anycast, not a topic"#
            ]
        );
        // The merge: topics from another part; s1 resolves (the topic's flavor), s2 (no such topic) and s3 (not a
        // topic) are dropped alone, with why.
        let topics = parse_config(
            "other",
            &files(&[
                (
                    "json",
                    r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "small"},
                        "chat": {}}"#,
                ),
                ("flavor.json", r#"{"small": {"type": "topic"}}"#),
            ]),
            None,
        )
        .unwrap();
        let mut merged = topics.addresses.clone();
        for a in part.addresses.iter() {
            merged.insert(a.clone());
        }
        let dropped = resolve_merged_subscriptions(&mut merged);
        assert_eq!(
            dropped,
            vec![
                (
                    "s2".to_string(),
                    r#"subscription on topic "gone", which is not defined"#.to_string()
                ),
                (
                    "s3".to_string(),
                    r#"subscription on "chat", which is a anycast, not a topic"#.to_string()
                ),
            ]
        );
        let s1 = merged.get("s1").unwrap();
        assert_eq!(s1.flavor.as_deref(), Some("small"));
        assert!(merged.get("s2").is_none() && merged.get("s3").is_none());
        assert!(merged.get("news").is_some() && merged.get("chat").is_some());
        // Nothing to do on a set whose subscriptions are fine.
        assert!(resolve_merged_subscriptions(&mut merged).is_empty());
        // The key that defines an address, for the merge's errors.
        let two = files(&[
            ("json", r#"{"q": {}}"#),
            (
                "subscriptions.json",
                r#"{"spec": {"address": "s2", "type": "subscription", "topic": "gone"}}"#,
            ),
            ("notes.txt", "s2"),
        ]);
        assert_eq!(
            defining_key(&two, "s2").as_deref(),
            Some("subscriptions.json")
        );
        assert_eq!(defining_key(&two, "q").as_deref(), Some("json"));
        assert_eq!(defining_key(&two, "nope"), None);
    }

    #[test]
    fn conflicts_between_definitions() {
        let got = errs(&[
            (
                "json",
                r#"{"a": {"store_and_forward": true, "flavor": "vanilla-queue"}, "b": {"store_and_forward": true, "flavor": "vanilla-queue"}, "c": {}}"#,
            ),
            (
                "config.json",
                r#"[{"spec": {"address": "a", "type": "topic", "flavor": "vanilla-queue"}},
                                {"spec": {"address": "b", "type": "queue", "flavor": "shared-small"}},
                                {"spec": {"address": "c", "type": "anycast"}},
                                {"spec": {"address": "d", "type": "anycast"}},
                                {"spec": {"address": "d", "type": "multicast"}}]"#,
            ),
        ]);
        assert_eq!(
            got,
            vec![
                r#"cm key "json" address "a": defined with different kinds: topic (key "config.json"), queue (key "json")"#,
                r#"cm key "json" address "b": defined with different flavors: "shared-small" (key "config.json"), "vanilla-queue" (key "json")"#,
                r#"cm key "config.json" address "d": defined with different kinds: anycast (key "config.json"), broadcast (key "config.json")"#,
            ]
        );
    }

    #[test]
    fn flavors_are_required_and_must_exist() {
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            (
                r#"{"q": {"store_and_forward": true}}"#,
                None,
                &[
                    r#"cm key "json" address "q": a queue needs a flavor: set "flavor" (no default flavor is configured)"#,
                ],
            ),
            (
                r#"{"t": {"store_and_forward": true, "multicast": true}}"#,
                None,
                &[
                    r#"cm key "json" address "t": a topic needs a flavor: set "flavor" (no default flavor is configured)"#,
                ],
            ),
            (
                r#"{"q": {"store_and_forward": true, "flavor": "gold"}}"#,
                None,
                &[
                    r#"cm key "json" address "q": flavor "gold" does not exist (known flavors: shared-small, vanilla-queue, vanilla-topic)"#,
                ],
            ),
            (
                r#"{"q": {"store_and_forward": true}}"#,
                Some("gold"),
                &[
                    r#"cm key "json" address "q": flavor "gold" (the default flavor) does not exist (known flavors: shared-small, vanilla-queue, vanilla-topic)"#,
                ],
            ),
        ];
        for (text, default, want) in cases {
            assert_eq!(&errs_with(&[("json", text)], *default), want, "{text}");
        }
        // The default flavor fills gaps and makes an explicit repeat with that flavor identical.
        let c = parse_config_with(
            "cm",
            &files(&[
                (
                    "json",
                    r#"{"q": {"store_and_forward": true}, "a": {"flavor": "x"}}"#,
                ),
                (
                    "c.json",
                    r#"{"spec": {"address": "q", "type": "queue", "flavor": "vanilla-queue"}}"#,
                ),
            ]),
            Some(&flavors()),
            Some("vanilla-queue"),
        )
        .unwrap();
        assert_eq!(
            summary(&c.addresses),
            vec![
                s("a", "anycast", None),
                s("q", "queue", Some("vanilla-queue"))
            ]
        );
    }

    #[test]
    fn flavors_come_from_flavor_json_unless_given() {
        let data = files(&[
            (
                "json",
                r#"{"q": {"store_and_forward": true, "flavor": "local"}}"#,
            ),
            ("flavor.json", r#"{"local": {"type": "queue"}}"#),
        ]);
        let c = parse_config("cm", &data, None).unwrap();
        assert!(c.flavors.contains("local"));
        assert_eq!(
            c.addresses.get("q").unwrap().flavor.as_deref(),
            Some("local")
        );
        // Given flavors win over the key.
        let got: Vec<String> = parse_config("cm", &data, Some(&flavors()))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            vec![
                r#"cm key "json" address "q": flavor "local" does not exist (known flavors: shared-small, vanilla-queue, vanilla-topic)"#
            ]
        );
        // No flavors at all.
        let got: Vec<String> = parse_config(
            "cm",
            &files(&[(
                "json",
                r#"{"q": {"store_and_forward": true, "flavor": "x"}}"#,
            )]),
            None,
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            got,
            vec![
                r#"cm key "json" address "q": flavor "x" does not exist (no flavors are configured)"#
            ]
        );
        // A broken flavor file is reported, without a cascade of "does not exist" errors.
        let got: Vec<String> = parse_config(
            "cm",
            &files(&[
                (
                    "json",
                    r#"{"q": {"store_and_forward": true, "flavor": "x"}, "$": {}}"#,
                ),
                ("flavor.json", "{"),
            ]),
            None,
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            got,
            vec![
                r#"cm key "flavor.json": invalid JSON in flavor file: EOF while parsing an object at line 1 column 1"#,
                r#"cm key "json" address "$": address must not start with '$' or '_' (reserved by the router, e.g. $management, _topo)"#,
            ]
        );
    }

    #[test]
    fn all_problems_across_keys_are_reported() {
        let got = errs(&[
            ("a.json", "{"),
            (
                "b.yaml",
                "- spec: {address: '#', type: queue, flavor: vanilla-queue}",
            ),
            ("json", r#"{"ok": {}, "q": {"store_and_forward": true}}"#),
        ]);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with(r#"cm key "a.json": invalid JSON"#));
        assert!(got[1].contains(r##"address "#""##));
        assert!(got[2].contains(r#"address "q": a queue needs a flavor"#));
    }

    #[test]
    fn cluster_name_collisions_are_errors() {
        let mut f = flavors();
        let mut orders = f.get("shared-small").unwrap().clone();
        orders.name = "orders".into();
        f.insert(orders);
        let got: Vec<String> = parse_config(
            "cm",
            &files(&[(
                "json",
                r#"{"orders": {"store_and_forward": true, "flavor": "vanilla-queue"},
                    "other": {"store_and_forward": true, "flavor": "orders"}}"#,
            )]),
            Some(&f),
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            got,
            vec![
                r#"cm address "orders": its broker cluster name "orders" is also the cluster of shared flavor "orders"; rename one of them"#,
                r#"cm address "other": its broker cluster name "orders" is also the cluster of address "orders"; rename one of them"#,
            ]
        );
    }

    #[test]
    fn key_formats() {
        let cases = [
            ("json", Some(KeyFormat::Legacy)),
            ("flavor.json", Some(KeyFormat::Flavor)),
            ("config.json", Some(KeyFormat::TypedJson)),
            ("x.yaml", Some(KeyFormat::TypedYaml)),
            ("x.yml", Some(KeyFormat::TypedYaml)),
            ("..data", None),
            ("README", None),
            ("config.json.bak", None),
        ];
        for (key, want) in cases {
            assert_eq!(KeyFormat::of_key(key), want, "{key}");
        }
    }

    #[test]
    fn empty_input_is_an_empty_set() {
        let c = parse_config("cm", &BTreeMap::new(), None).unwrap();
        assert!(c.addresses.is_empty());
        assert!(ok(&[("json", "{}"), ("c.json", "[]")]).is_empty());
    }
}
