//! The desired digests after a change of a few addresses, made from the previous ones instead of generating and
//! digesting every entity again (docs/architecture.md §3 "Incremental mode": router-agent applies a change without
//! re-reading the whole set).
//!
//! An address's entities (its router address, autoLinks, linkRoutes) depend on that address, the flavors and the
//! broker pods only; the broker connectors on which clusters the whole set uses. So when nothing but the addresses
//! changed, the new digests are the previous ones without the entities of the touched addresses, plus the entities
//! of the touched addresses as they are now, plus the connectors again when a touched address uses a broker
//! cluster. Anything else changing (flavors, broker pods, mesh, options) rebuilds everything. Pure: no I/O.

use std::collections::BTreeSet;
use std::sync::Arc;

use maas_model::{AddressSet, Config, DigestSet, DigestSetBuilder, EntityType, entity_digest};

use crate::desired::DesiredInputs;

/// A change touching more than this share (1/N) of the addresses is rebuilt in full.
const MOST_TOUCHED_SHARE: usize = 4;

/// The names of the addresses that differ between `old` and `new` (added, removed or changed), found by one merge
/// walk of both sets. None when there are more than `most`.
pub fn touched_addresses(
    old: &AddressSet,
    new: &AddressSet,
    most: usize,
) -> Option<BTreeSet<String>> {
    use std::cmp::Ordering;
    let mut touched = BTreeSet::new();
    let mut a = old.addresses.iter().peekable();
    let mut b = new.addresses.iter().peekable();
    loop {
        let name = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                let k = *k;
                a.next();
                k
            }
            (None, Some((k, _))) => {
                let k = *k;
                b.next();
                k
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                Ordering::Less => {
                    let k = *ka;
                    a.next();
                    k
                }
                Ordering::Greater => {
                    let k = *kb;
                    b.next();
                    k
                }
                Ordering::Equal => {
                    let (k, same) = (*ka, va == vb);
                    a.next();
                    b.next();
                    if same {
                        continue;
                    }
                    k
                }
            },
        };
        touched.insert(name.clone());
        if touched.len() > most {
            return None;
        }
    }
    Some(touched)
}

/// The address an entity was made for, from its name (`maas-address/<a>`, `maas-autolink/<a>/<pod>/<dir>`,
/// `maas-linkroute/<a>/<pod>/<dir>`; pod names and directions hold no '/', addresses may). None for connectors.
pub fn owner(t: EntityType, name: &str) -> Option<&str> {
    match t {
        EntityType::Address => name.strip_prefix("maas-address/"),
        EntityType::AutoLink => name
            .strip_prefix("maas-autolink/")
            .and_then(|rest| rest.rsplitn(3, '/').nth(2)),
        EntityType::LinkRoute => name
            .strip_prefix("maas-linkroute/")
            .and_then(|rest| rest.rsplitn(3, '/').nth(2)),
        EntityType::Connector => None,
    }
}

/// The digests of `next`, made from `prev_digests` (the digests of `prev`) when only addresses changed between
/// them; None when anything else changed or too many addresses did (then build them in full).
pub fn update(
    prev: &DesiredInputs,
    prev_digests: &DigestSet,
    next: &DesiredInputs,
) -> Option<DigestSet> {
    if prev.config.flavors != next.config.flavors {
        return None;
    }
    // Everything but the configuration must be the same (broker pods, options, mesh, ...).
    let rest_of_prev = DesiredInputs {
        config: next.config.clone(),
        ..prev.clone()
    };
    if rest_of_prev != *next {
        return None;
    }
    let old = &prev.config.addresses;
    let new = &next.config.addresses;
    let most = old.len().max(new.len()) / MOST_TOUCHED_SHARE + 16;
    let touched = touched_addresses(old, new, most)?;
    if touched.is_empty() {
        return Some(prev_digests.clone());
    }
    let flavors = &next.config.flavors;
    // The connectors depend on the clusters the whole set uses: made again only when a touched address (before or
    // after) lives on a broker cluster.
    let connectors_change = touched.iter().any(|name| {
        [old.get(name), new.get(name)]
            .into_iter()
            .flatten()
            .any(|a| maas_model::cluster_for(a, flavors).is_some())
    });
    let mut names = 0;
    for (_, name, _) in prev_digests.iter() {
        names += name.len();
    }
    let mut set = DigestSetBuilder::with_capacity(
        prev_digests.len() + touched.len() * 4 + 16,
        names + touched.len() * 200,
    );
    for (t, name, digest) in prev_digests.iter() {
        let gone = if t == EntityType::Connector {
            connectors_change
        } else {
            owner(t, name).is_some_and(|a| touched.contains(a))
        };
        if !gone {
            set.push(t, name, digest);
        }
    }
    if connectors_change {
        for e in &next.mesh {
            set.push(e.entity_type, &e.name, entity_digest(e));
        }
        for e in maas_model::connector_entities(new, flavors, &next.brokers, &next.options) {
            set.push(e.entity_type, &e.name, entity_digest(&e));
        }
    }
    // The touched addresses as they are now, through the same walk a full build takes (only their own entities:
    // the connectors and the option entities were dealt with above).
    let mut subset = AddressSet::default();
    for name in &touched {
        if let Some(a) = new.get(name) {
            subset.insert(a.clone());
        }
    }
    let options: BTreeSet<(EntityType, String)> =
        maas_model::entity::option_entities(&next.options)
            .into_iter()
            .map(|e| (e.entity_type, e.name))
            .collect();
    let only_touched = DesiredInputs {
        config: Arc::new(Config {
            addresses: subset,
            flavors: flavors.clone(),
        }),
        mesh: Vec::new(),
        ..next.clone()
    };
    only_touched.for_each(|e| {
        if e.entity_type != EntityType::Connector
            && !options.contains(&(e.entity_type, e.name.clone()))
        {
            set.push(e.entity_type, &e.name, entity_digest(&e));
        }
    });
    Some(set.build())
}

/// The desired digests of one source, made incrementally from the previous ones when only addresses changed.
#[derive(Default)]
pub struct Incremental {
    /// The inputs and digests of the last desired state.
    last: Option<(Arc<DesiredInputs>, Arc<DigestSet>)>,
    /// Desired states made from the previous one, and built in full (logs, tests).
    pub updates: u64,
    pub rebuilds: u64,
}

impl Incremental {
    /// The digests of `next`.
    pub fn digests(&mut self, next: &DesiredInputs) -> Arc<DigestSet> {
        if let Some((prev, prev_digests)) = &self.last {
            if **prev == *next {
                return prev_digests.clone();
            }
            if let Some(d) = update(prev, prev_digests, next) {
                self.updates += 1;
                tracing::debug!(
                    entities = d.len(),
                    "desired digests made from the previous ones (only addresses changed)"
                );
                return Arc::new(d);
            }
        }
        self.rebuilds += 1;
        Arc::new(next.digests())
    }

    /// Remember the desired state just made (shared with it, not copied).
    pub fn keep(&mut self, inputs: &Arc<DesiredInputs>, digests: &Arc<DigestSet>) {
        self.last = Some((inputs.clone(), digests.clone()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use maas_model::{Address, AddressKind, EntityOptions, MeshInputs, RouterPod};
    use std::collections::BTreeMap;

    fn base_config() -> Config {
        let files: BTreeMap<String, String> = [
            (
                "json".to_string(),
                r#"{"any": {"store_and_forward": false, "multicast": false},
                    "a/b/c": {"store_and_forward": false, "multicast": false},
                    "bc": {"store_and_forward": false, "multicast": true},
                    "q1": {"store_and_forward": true, "multicast": false, "flavor": "shared"},
                    "q2": {"store_and_forward": true, "multicast": false, "flavor": "shared"},
                    "own": {"store_and_forward": true, "multicast": false, "flavor": "vanilla"},
                    "t": {"store_and_forward": true, "multicast": true, "flavor": "shared"},
                    "t/x": {"store_and_forward": true, "multicast": true, "flavor": "vanilla"},
                    "s": {"subscription": true, "topic": "t"}}"#
                    .to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"shared": {"type": "queue", "shared": true},
                    "vanilla": {"type": "queue"}}"#
                    .to_string(),
            ),
        ]
        .into_iter()
        .collect();
        maas_model::parse_config("test", &files, None).unwrap()
    }

    fn inputs(config: Config) -> DesiredInputs {
        let brokers = maas_model::placement::parse_brokers(
            "brokers",
            r#"{"shared": [{"name": "b-0", "host": "127.0.0.1", "port": 5674},
                           {"name": "b-1", "host": "127.0.0.1", "port": 5675}],
                "own": [{"name": "own-0", "host": "127.0.0.1", "port": 5676}],
                "new-q": [{"name": "nq-0", "host": "127.0.0.1", "port": 5677}],
                "t-x": [{"name": "tx-0", "host": "127.0.0.1", "port": 5678}]}"#,
        )
        .unwrap();
        DesiredInputs {
            config: Arc::new(config),
            brokers,
            options: EntityOptions {
                subctrl: true,
                ..Default::default()
            },
            mesh: maas_model::mesh_entities(&MeshInputs {
                own: Some("r-1".into()),
                routers: vec![RouterPod {
                    name: "r-0".into(),
                    host: "10.0.0.1".into(),
                    port: 55672,
                    edge_port: None,
                }],
                ..MeshInputs::default()
            }),
            ..Default::default()
        }
    }

    fn address(name: &str, kind: AddressKind, flavor: Option<&str>) -> Address {
        Address {
            address: name.into(),
            kind,
            flavor: flavor.map(str::to_string),
            topic: None,
        }
    }

    type Edit = fn(&mut AddressSet);

    #[test]
    fn a_change_of_some_addresses_gives_exactly_the_digests_of_a_full_build() {
        let edits: Vec<(&str, Edit)> = vec![
            ("anycast becomes broadcast", |s| {
                s.insert(address("any", AddressKind::Broadcast, None))
            }),
            ("an address with '/' changes", |s| {
                s.insert(address("a/b/c", AddressKind::Broadcast, None))
            }),
            ("a queue on a new cluster (connectors added)", |s| {
                s.insert(address("new-q", AddressKind::Queue, Some("vanilla")))
            }),
            (
                "the only queue of a cluster goes (connectors removed)",
                |s| {
                    s.addresses.remove("own");
                },
            ),
            ("a queue moves to another flavor", |s| {
                s.insert(address("q1", AddressKind::Queue, Some("vanilla")))
            }),
            ("a topic's subscription goes", |s| {
                s.addresses.remove("s");
            }),
            ("a subscription on another topic comes", |s| {
                let mut sub = address("s2", AddressKind::Subscription, Some("vanilla"));
                sub.topic = Some("t/x".into());
                s.insert(sub);
            }),
            (
                "a topic and an anycast address go, a broadcast comes",
                |s| {
                    s.addresses.remove("t");
                    s.addresses.remove("bc");
                    s.insert(address("zz", AddressKind::Broadcast, None));
                },
            ),
            ("nothing changes", |_| {}),
        ];
        let mut prev = inputs(base_config());
        let mut prev_digests = prev.digests();
        for (what, edit) in edits {
            let mut config = prev.config.as_ref().clone();
            edit(&mut config.addresses);
            let next = inputs(config);
            let want = next.digests();
            let got =
                update(&prev, &prev_digests, &next).unwrap_or_else(|| panic!("{what}: rebuilt"));
            assert_eq!(got, want, "{what}");
            assert_eq!(got.generation_hash(), want.generation_hash(), "{what}");
            prev = next;
            prev_digests = got;
        }
    }

    #[test]
    fn anything_but_addresses_changing_or_too_many_addresses_rebuilds() {
        let prev = inputs(base_config());
        let d = prev.digests();
        let other_brokers = DesiredInputs {
            brokers: maas_model::Brokers::default(),
            ..prev.clone()
        };
        assert!(update(&prev, &d, &other_brokers).is_none());
        let no_mesh = DesiredInputs {
            mesh: Vec::new(),
            ..prev.clone()
        };
        assert!(update(&prev, &d, &no_mesh).is_none());
        let other_options = DesiredInputs {
            options: EntityOptions::default(),
            ..prev.clone()
        };
        assert!(update(&prev, &d, &other_options).is_none());
        let mut config = prev.config.as_ref().clone();
        config.flavors.flavors.remove("vanilla");
        assert!(update(&prev, &d, &inputs(config)).is_none());
        // 1,000 addresses replaced by others: built in full.
        let mut many = AddressSet::default();
        for i in 0..1000 {
            many.insert(address(&format!("x{i}"), AddressKind::Anycast, None));
        }
        let mut more = many.clone();
        for i in 0..1000 {
            more.insert(address(&format!("y{i}"), AddressKind::Anycast, None));
        }
        let config = |addresses: AddressSet| Config {
            addresses,
            flavors: prev.config.flavors.clone(),
        };
        let a = inputs(config(many));
        let b = inputs(config(more));
        assert!(update(&a, &a.digests(), &b).is_none());
    }

    #[test]
    fn touched_addresses_are_the_added_removed_and_changed_ones() {
        let mut old = AddressSet::default();
        for n in ["a", "b", "c", "d"] {
            old.insert(address(n, AddressKind::Anycast, None));
        }
        let mut new = old.clone();
        new.addresses.remove("a");
        new.insert(address("c", AddressKind::Broadcast, None));
        new.insert(address("e", AddressKind::Anycast, None));
        let t = touched_addresses(&old, &new, 10).unwrap();
        assert_eq!(t.into_iter().collect::<Vec<_>>(), ["a", "c", "e"]);
        assert!(touched_addresses(&old, &new, 2).is_none());
        assert!(touched_addresses(&old, &old, 0).unwrap().is_empty());
        assert_eq!(
            owner(EntityType::AutoLink, "maas-autolink/a/b/pod-0/in"),
            Some("a/b")
        );
        assert_eq!(
            owner(EntityType::LinkRoute, "maas-linkroute/t/pod-0/out"),
            Some("t")
        );
        assert_eq!(owner(EntityType::Address, "maas-address/x/y"), Some("x/y"));
        assert_eq!(owner(EntityType::Connector, "maas-broker-b-0"), None);
    }
}
