//! From the indexed ConfigMaps to one [`ConfigState`]: each address ConfigMap parsed on its own with its own last
//! good value, the flavor ConfigMap's last good flavors, and the merge of all last good address sets.
//!
//! **Subscriptions across ConfigMaps.** A `subscription` address may name a topic defined in ANOTHER address
//! ConfigMap (subscription-service writes `$subctrl` subscriptions to its own ConfigMap, `maas-subscriptions`, on
//! topics the application teams define elsewhere). Each ConfigMap is therefore parsed with
//! [`maas_model::ParseOptions::deferred_subscriptions`]: a subscription whose topic is defined in the SAME
//! ConfigMap is checked there as always (a bad one makes that ConfigMap's new content refused: its last good
//! content stays), one whose topic is not is kept and checked after the merge, against the merged set
//! ([`maas_model::parse::resolve_merged_subscriptions`]): its topic must be defined there and be a topic, and it
//! takes the topic's flavor. One that fails is left out ALONE (the rest of its ConfigMap stays in force: the fault
//! may be another ConfigMap's, e.g. a topic removed from it), reported once per change like a conflict, with an
//! Event on its ConfigMap naming the ConfigMap, key and address.
//!
//! Pure bookkeeping (no I/O): [`ConfigMerger::recompute`] returns the next state and the Kubernetes Events to post
//! ([`Notice`]); the caller publishes and posts them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ::kube::Resource;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use maas_model::{AddressKind, AddressSet, Config, FlavorSet};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{ConfigState, LastGood};

/// A Kubernetes Event to post about a ConfigMap whose content is (partly) not in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The ConfigMap the Event is about (with its resourceVersion).
    pub regarding: ObjectReference,
    /// The problems, one ConfigError line each.
    pub errors: Vec<String>,
}

/// One address ConfigMap: its last good parse and what was last offered.
#[derive(Debug, Default)]
struct Entry {
    last_good: LastGood<Config>,
    /// Data hash + flavors hash of the last offer; the same key is not parsed again.
    last_key: Option<String>,
}

/// The merge state of one namespace's address and flavor ConfigMaps.
#[derive(Debug)]
pub struct ConfigMerger {
    namespace: String,
    flavor_name: String,
    flavors: LastGood<FlavorSet>,
    entries: BTreeMap<String, Entry>,
    conflicts: Vec<String>,
    /// Subscriptions left out of the merge (their topic is not a topic of the merged set), one line each.
    dangling: Vec<String>,
    merged: Option<Arc<Config>>,
    generation: u64,
    error_events: u64,
}

/// The origin a ConfigMap has in error messages.
pub fn configmap_origin(namespace: &str, name: &str) -> String {
    format!("ConfigMap {namespace}/{name}")
}

/// A content hash of a ConfigMap's `data` (binaryData is ignored).
pub fn data_hash(data: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn empty_data() -> &'static BTreeMap<String, String> {
    static EMPTY: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(BTreeMap::new)
}

fn data_of(cm: &ConfigMap) -> &BTreeMap<String, String> {
    cm.data.as_ref().unwrap_or_else(|| empty_data())
}

impl ConfigMerger {
    /// Nothing known yet about `namespace`; `flavor_name` is the flavor ConfigMap (never read as addresses).
    pub fn new(namespace: &str, flavor_name: &str) -> Self {
        ConfigMerger {
            namespace: namespace.to_string(),
            flavor_name: flavor_name.to_string(),
            flavors: LastGood::new(),
            entries: BTreeMap::new(),
            conflicts: Vec::new(),
            dangling: Vec::new(),
            merged: None,
            generation: 0,
            error_events: 0,
        }
    }

    /// The next state from the complete current ConfigMaps: the labelled address ConfigMaps by name and the flavor
    /// ConfigMap if it exists. Returns it with the Events to post (one per ConfigMap with new problems).
    pub fn recompute(
        &mut self,
        address_cms: &BTreeMap<String, ConfigMap>,
        flavor_cm: Option<&ConfigMap>,
    ) -> (ConfigState, Vec<Notice>) {
        let mut notices = Vec::new();

        // Flavors: a missing flavor ConfigMap means no flavors.
        let offer = match flavor_cm {
            Some(cm) => {
                let data = data_of(cm);
                let origin = configmap_origin(&self.namespace, &self.flavor_name);
                let parsed = maas_model::parse_flavor_config(&origin, data)
                    .map_err(|e| e.iter().map(ToString::to_string).collect());
                self.flavors.offer(&data_hash(data), parsed)
            }
            None => self.flavors.offer("absent", Ok(FlavorSet::default())),
        };
        if offer.new_errors {
            self.report(
                flavor_cm,
                self.flavors.errors().to_vec(),
                true,
                &mut notices,
            );
        }
        let flavors = self.flavors.good().cloned();
        let flavors_hash = self.flavors.good_hash().unwrap_or_default().to_string();

        // Address ConfigMaps, each with its own last good value.
        self.entries
            .retain(|name, _| address_cms.contains_key(name) && *name != self.flavor_name);
        for (name, cm) in address_cms {
            if *name == self.flavor_name {
                continue;
            }
            let entry = self.entries.entry(name.clone()).or_default();
            // With flavors that never parsed nothing can be validated: keep the last good addresses.
            let Some(flavors) = &flavors else { continue };
            let data = data_of(cm);
            let key = format!("{}+{}", data_hash(data), flavors_hash);
            if entry.last_key.as_deref() == Some(key.as_str()) {
                continue;
            }
            entry.last_key = Some(key.clone());
            let origin = configmap_origin(&self.namespace, name);
            let parsed = maas_model::parse_config_opts(
                &origin,
                data,
                maas_model::ParseOptions {
                    flavors: Some(flavors),
                    deferred_subscriptions: true,
                    ..maas_model::ParseOptions::default()
                },
            )
            .map_err(|e| e.iter().map(ToString::to_string).collect());
            let offer = entry.last_good.offer(&key, parsed);
            if offer.new_errors {
                let errors = entry.last_good.errors().to_vec();
                self.report(Some(cm), errors, true, &mut notices);
            } else if offer.recovered {
                info!(configmap = %origin, "address ConfigMap is valid again");
            }
        }

        // Merge in ConfigMap name order: the first definition of an address wins.
        let mut addresses = AddressSet::default();
        let mut defined_in: BTreeMap<String, &str> = BTreeMap::new();
        let mut conflicts = Vec::new();
        let mut conflicting_cms: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, entry) in &self.entries {
            let Some(config) = entry.last_good.good() else {
                continue;
            };
            for a in config.addresses.iter() {
                match addresses.get(&a.address) {
                    None => {
                        addresses.insert(a.clone());
                        defined_in.insert(a.address.clone(), name);
                    }
                    Some(existing) if same_definition(existing, a) => {}
                    Some(_) => {
                        let first = defined_in.get(&a.address).copied().unwrap_or_default();
                        let line = format!(
                            "{} address {:?}: defined differently in {} and {}; the definition from {} is used",
                            configmap_origin(&self.namespace, name),
                            a.address,
                            configmap_origin(&self.namespace, first),
                            configmap_origin(&self.namespace, name),
                            configmap_origin(&self.namespace, first),
                        );
                        conflicting_cms
                            .entry(name.clone())
                            .or_default()
                            .push(line.clone());
                        conflicts.push(line);
                    }
                }
            }
        }
        // Subscriptions on topics of other ConfigMaps: checked against the merged set; a bad one is left out alone.
        let mut dangling = Vec::new();
        let mut dangling_cms: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (address, problem) in maas_model::parse::resolve_merged_subscriptions(&mut addresses) {
            let name = defined_in.get(&address).copied().unwrap_or_default();
            let key = address_cms
                .get(name)
                .and_then(|cm| maas_model::parse::defining_key(data_of(cm), &address));
            let line = maas_model::ConfigError::new(
                &configmap_origin(&self.namespace, name),
                key.as_deref(),
                Some(&address),
                format!(
                    "{problem} (checked against every address ConfigMap); this subscription is left out, \
                     the rest of its ConfigMap is in force"
                ),
            )
            .to_string();
            dangling_cms
                .entry(name.to_string())
                .or_default()
                .push(line.clone());
            dangling.push(line);
        }
        let previous: BTreeSet<&String> = self.conflicts.iter().chain(&self.dangling).collect();
        let mut fresh: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, lines) in conflicting_cms.into_iter().chain(dangling_cms) {
            fresh.entry(name).or_default().extend(lines);
        }
        fresh.retain(|_, lines| lines.iter().any(|l| !previous.contains(l)));
        if !fresh.is_empty() {
            // A change of conflicts counts once, whatever the number of ConfigMaps involved.
            self.error_events += 1;
        }
        for (name, lines) in fresh {
            self.report(address_cms.get(&name), lines, false, &mut notices);
        }
        self.conflicts = conflicts;
        self.dangling = dangling;

        let merged = Config {
            addresses,
            flavors: flavors.map(|f| f.as_ref().clone()).unwrap_or_default(),
        };
        if self.merged.as_deref() != Some(&merged) {
            self.generation += 1;
            info!(
                namespace = %self.namespace,
                configmaps = self.entries.len(),
                addresses = merged.addresses.len(),
                flavors = merged.flavors.len(),
                generation = self.generation,
                "address configuration loaded from ConfigMaps"
            );
            self.merged = Some(Arc::new(merged));
        }

        let mut errors: Vec<String> = self.flavors.errors().to_vec();
        for entry in self.entries.values() {
            errors.extend(entry.last_good.errors().iter().cloned());
        }
        errors.extend(self.conflicts.iter().cloned());
        errors.extend(self.dangling.iter().cloned());
        let state = ConfigState {
            config: self.merged.clone(),
            errors,
            generation: self.generation,
            error_events: self.error_events,
            synced: true,
            inputs_valid: self
                .entries
                .values()
                .filter(|e| e.last_good.errors().is_empty())
                .count(),
            inputs_invalid: self
                .entries
                .values()
                .filter(|e| !e.last_good.errors().is_empty())
                .count(),
        };
        (state, notices)
    }

    /// Log new problems of one ConfigMap once, count them (when `count`), and queue an Event on it.
    fn report(
        &mut self,
        cm: Option<&ConfigMap>,
        errors: Vec<String>,
        count: bool,
        notices: &mut Vec<Notice>,
    ) {
        if count {
            self.error_events += 1;
        }
        for e in &errors {
            warn!(error = %e, "invalid address configuration; the last good content stays in force");
        }
        if let Some(cm) = cm {
            // With its resourceVersion, each new bad content is a distinct Event (kube's Recorder would otherwise
            // patch the cached Event of this ConfigMap, keeping its old note).
            let mut regarding = cm.object_ref(&());
            regarding.resource_version = cm.metadata.resource_version.clone();
            notices.push(Notice { regarding, errors });
        }
    }
}

/// Whether two ConfigMaps define an address the same way. A subscription is compared without its flavor: a
/// ConfigMap holding its topic resolved it (the topic's flavor), one that does not left it unresolved; the merge
/// gives it the topic's flavor either way.
fn same_definition(a: &maas_model::Address, b: &maas_model::Address) -> bool {
    if a.kind == AddressKind::Subscription && b.kind == AddressKind::Subscription {
        a.address == b.address && a.topic == b.topic
    } else {
        a == b
    }
}

/// The note of an Event: the problems, at most 1 kB (the Events API limit).
pub fn event_note(errors: &[String]) -> String {
    const MAX: usize = 1024;
    let mut note = format!(
        "invalid address configuration, the last good content stays in force: {}",
        errors.join("; ")
    );
    if note.len() > MAX {
        let mut end = MAX - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const FLAVORS: &str = r#"{"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"},
        "vanilla-topic": {"type": "topic", "templateName": "topic-persisted"}}"#;

    fn cm(name: &str, rv: &str, pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn index(cms: &[ConfigMap]) -> BTreeMap<String, ConfigMap> {
        cms.iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c.clone()))
            .collect()
    }

    fn flavor() -> ConfigMap {
        cm("flavor", "1", &[("flavor.json", FLAVORS)])
    }

    fn addrs(s: &ConfigState) -> Vec<(String, AddressKind)> {
        s.config
            .as_ref()
            .map(|c| {
                c.addresses
                    .iter()
                    .map(|a| (a.address.clone(), a.kind))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn bad_configmap_keeps_last_good_and_reports_once_per_content() {
        let mut m = ConfigMerger::new("ns", "flavor");
        let good = cm(
            "a",
            "1",
            &[(
                "json",
                r#"{"q": {"store_and_forward": true, "flavor": "vanilla-queue"}}"#,
            )],
        );
        let (s, n) = m.recompute(&index(&[good]), Some(&flavor()));
        assert_eq!(addrs(&s), [("q".to_string(), AddressKind::Queue)]);
        assert!(n.is_empty() && s.errors.is_empty());
        assert_eq!((s.generation, s.error_events), (1, 0));

        let bad = cm("a", "2", &[("json", r#"{"$q": {}}"#)]);
        let (s, n) = m.recompute(&index(std::slice::from_ref(&bad)), Some(&flavor()));
        assert_eq!(addrs(&s), [("q".to_string(), AddressKind::Queue)]);
        assert_eq!(s.error_events, 1);
        assert_eq!(s.generation, 1);
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].starts_with(r#"ConfigMap ns/a key "json" address "$q""#),
            "{:?}",
            s.errors
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].regarding.name.as_deref(), Some("a"));
        assert_eq!(n[0].regarding.resource_version.as_deref(), Some("2"));

        // The same bad content again (a resync): no new report.
        let (s, n) = m.recompute(&index(&[bad]), Some(&flavor()));
        assert_eq!((s.error_events, n.len()), (1, 0));
    }

    #[test]
    fn conflicting_definitions_first_configmap_wins() {
        let mut m = ConfigMerger::new("ns", "flavor");
        let a = cm(
            "a",
            "1",
            &[("json", r#"{"x": {"multicast": true}, "same": {}}"#)],
        );
        let b = cm("b", "1", &[("json", r#"{"x": {}, "same": {}, "y": {}}"#)]);
        let (s, n) = m.recompute(&index(&[b.clone(), a.clone()]), None);
        assert_eq!(
            addrs(&s),
            [
                ("same".to_string(), AddressKind::Anycast),
                ("x".to_string(), AddressKind::Broadcast),
                ("y".to_string(), AddressKind::Anycast)
            ]
        );
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].contains("ConfigMap ns/a") && s.errors[0].contains("ConfigMap ns/b"));
        assert!(s.errors[0].contains(r#""x""#));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].regarding.name.as_deref(), Some("b"));
        assert_eq!(s.error_events, 1);
        // Unchanged conflict: not reported again.
        let (s, n) = m.recompute(&index(&[a, b]), None);
        assert_eq!((s.error_events, n.len(), s.errors.len()), (1, 0, 1));
    }

    #[test]
    fn flavors_follow_the_flavor_configmap() {
        let mut m = ConfigMerger::new("ns", "flavor");
        let q = cm(
            "a",
            "1",
            &[(
                "json",
                r#"{"q": {"store_and_forward": true, "flavor": "vanilla-queue"}}"#,
            )],
        );
        // No flavor ConfigMap: no flavors, the queue cannot be validated.
        let (s, _) = m.recompute(&index(std::slice::from_ref(&q)), None);
        assert!(addrs(&s).is_empty());
        assert_eq!(s.errors.len(), 1);
        let (s, _) = m.recompute(&index(std::slice::from_ref(&q)), Some(&flavor()));
        assert_eq!(addrs(&s).len(), 1);
        assert_eq!(s.config.as_ref().map(|c| c.flavors.len()), Some(2));
        assert!(s.errors.is_empty());
        // A bad flavor ConfigMap keeps the last good flavors.
        let bad = cm("flavor", "2", &[("flavor.json", "{")]);
        let (s, n) = m.recompute(&index(&[q]), Some(&bad));
        assert_eq!(s.config.as_ref().map(|c| c.flavors.len()), Some(2));
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].starts_with("ConfigMap ns/flavor"),
            "{:?}",
            s.errors
        );
        assert_eq!(n[0].regarding.name.as_deref(), Some("flavor"));
    }

    const NEWS: &str = r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "vanilla-topic"},
        "sports": {"store_and_forward": true, "multicast": true, "flavor": "vanilla-topic"},
        "chat": {}}"#;

    fn subscription(name: &str, topic: &str) -> String {
        format!(
            r#"{{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {{"name": "{name}"}},
                "spec": {{"address": "{name}", "type": "subscription", "topic": "{topic}"}}}}"#
        )
    }

    fn subscriptions(subs: &[(&str, &str)]) -> ConfigMap {
        let list: Vec<String> = subs.iter().map(|(n, t)| subscription(n, t)).collect();
        cm(
            "maas-subscriptions",
            "1",
            &[("subscriptions.json", &format!("[{}]", list.join(",")))],
        )
    }

    #[test]
    fn a_subscription_on_a_topic_of_another_configmap_is_checked_against_the_merged_set() {
        let mut m = ConfigMerger::new("ns", "flavor");
        let apps = cm("addresses", "1", &[("json", NEWS)]);
        let subs = subscriptions(&[("c1", "news"), ("c2", "sports")]);
        let (s, n) = m.recompute(&index(&[apps, subs.clone()]), Some(&flavor()));
        assert!(s.errors.is_empty() && n.is_empty(), "{:?}", s.errors);
        let config = s.config.clone().unwrap();
        let c1 = config.addresses.get("c1").unwrap();
        assert_eq!(c1.kind, AddressKind::Subscription);
        assert_eq!(c1.topic.as_deref(), Some("news"));
        assert_eq!(
            c1.flavor.as_deref(),
            Some("vanilla-topic"),
            "the topic's flavor: it lives on the topic's cluster"
        );
        assert_eq!((s.inputs_valid, s.inputs_invalid), (2, 0));

        // The topic "news" leaves the other ConfigMap: c1 alone is left out, c2 and everything else stay.
        let without_news = cm(
            "addresses",
            "2",
            &[(
                "json",
                r#"{"sports": {"store_and_forward": true, "multicast": true, "flavor": "vanilla-topic"},
                    "chat": {}}"#,
            )],
        );
        let events = s.error_events;
        let (s, n) = m.recompute(
            &index(&[without_news.clone(), subs.clone()]),
            Some(&flavor()),
        );
        assert_eq!(
            addrs(&s),
            [
                ("c2".to_string(), AddressKind::Subscription),
                ("chat".to_string(), AddressKind::Anycast),
                ("sports".to_string(), AddressKind::Topic),
            ]
        );
        assert_eq!(
            s.errors,
            [
                r#"ConfigMap ns/maas-subscriptions key "subscriptions.json" address "c1": subscription on topic "news", which is not defined (checked against every address ConfigMap); this subscription is left out, the rest of its ConfigMap is in force"#
            ]
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].regarding.name.as_deref(), Some("maas-subscriptions"));
        assert_eq!(s.error_events, events + 1);
        // The same state again: not reported again.
        let (s2, n) = m.recompute(&index(&[without_news, subs.clone()]), Some(&flavor()));
        assert_eq!((s2.error_events, n.len()), (s.error_events, 0));
        assert_eq!(s2.errors.len(), 1);
        // The topic comes back: so does c1, and the problem is gone.
        let apps = cm("addresses", "3", &[("json", NEWS)]);
        let (s, _) = m.recompute(&index(&[apps, subs]), Some(&flavor()));
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!(s.config.unwrap().addresses.get("c1").is_some());
    }

    #[test]
    fn a_subscription_on_an_address_of_another_configmap_that_is_no_topic_is_left_out_alone() {
        let mut m = ConfigMerger::new("ns", "flavor");
        let apps = cm("addresses", "1", &[("json", NEWS)]);
        let subs = subscriptions(&[("c1", "chat"), ("c2", "news")]);
        let (s, n) = m.recompute(&index(&[apps, subs]), Some(&flavor()));
        let config = s.config.clone().unwrap();
        assert!(config.addresses.get("c1").is_none());
        assert!(config.addresses.get("c2").is_some());
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].starts_with(
                r#"ConfigMap ns/maas-subscriptions key "subscriptions.json" address "c1": subscription on "chat", which is a anycast, not a topic"#
            ),
            "{:?}",
            s.errors
        );
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn a_subscription_on_a_topic_of_its_own_configmap_follows_the_configmap_rules() {
        let mut m = ConfigMerger::new("ns", "flavor");
        let good = cm("addresses", "1", &[("json", NEWS)]);
        let (s, _) = m.recompute(&index(&[good]), Some(&flavor()));
        assert_eq!(addrs(&s).len(), 3);
        // A subscription on the ConfigMap's own anycast address: the new content is refused as a whole (the last
        // good one stays), as before subscriptions could cross ConfigMaps.
        let bad = cm(
            "addresses",
            "2",
            &[
                ("json", NEWS),
                ("subscriptions.json", &subscription("c1", "chat")),
                ("more.json", &subscription("c2", "news")),
            ],
        );
        let (s, n) = m.recompute(&index(&[bad]), Some(&flavor()));
        assert_eq!(addrs(&s).len(), 3, "the last good content");
        assert_eq!(
            s.errors,
            [
                r#"ConfigMap ns/addresses key "subscriptions.json" address "c1": subscription on "chat", which is a anycast, not a topic"#
            ]
        );
        assert_eq!((s.inputs_valid, s.inputs_invalid), (0, 1));
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn one_subscription_defined_in_two_configmaps_is_no_conflict() {
        let mut m = ConfigMerger::new("ns", "flavor");
        // Resolved in "addresses" (its topic is there), unresolved in "maas-subscriptions": the same definition.
        let apps = cm(
            "addresses",
            "1",
            &[("json", NEWS), ("subs.json", &subscription("c1", "news"))],
        );
        let subs = subscriptions(&[("c1", "news")]);
        let (s, n) = m.recompute(&index(&[apps.clone(), subs]), Some(&flavor()));
        assert!(s.errors.is_empty() && n.is_empty(), "{:?}", s.errors);
        // On another topic it is a conflict, and the first ConfigMap's definition wins.
        let other = subscriptions(&[("c1", "sports")]);
        let (s, _) = m.recompute(&index(&[apps, other]), Some(&flavor()));
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].contains("defined differently"),
            "{:?}",
            s.errors
        );
        let c1 = s.config.unwrap().addresses.get("c1").cloned().unwrap();
        assert_eq!(c1.topic.as_deref(), Some("news"));
    }

    #[test]
    fn event_note_is_bounded() {
        let long = vec!["é".repeat(2000)];
        let note = event_note(&long);
        assert!(note.len() <= 1024);
        assert!(note.ends_with("..."));
    }
}
