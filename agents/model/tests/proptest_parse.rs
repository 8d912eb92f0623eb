//! Property tests: `parse_config` never panics on arbitrary or mutated input, and valid generated address sets
//! round-trip through both serialisers (and YAML).
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

use std::collections::BTreeMap;

use maas_model::{
    Address, AddressKind, AddressSet, FlavorSet, address_problems, parse_config, parse_config_with,
};
use proptest::prelude::*;

const FLAVORS: &str = r#"{"vanilla-queue": {"type": "queue"}, "vanilla-topic": {"type": "topic"},
                          "shared-small": {"shared": true}}"#;

fn flavors() -> FlavorSet {
    FlavorSet::from_json("flavors", FLAVORS).unwrap()
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "json",
        "config.json",
        "more.json",
        "a.yaml",
        "b.yml",
        "flavor.json",
        "README",
    ])
    .prop_map(str::to_string)
}

fn kind() -> impl Strategy<Value = AddressKind> {
    prop::sample::select(vec![
        AddressKind::Anycast,
        AddressKind::Broadcast,
        AddressKind::Queue,
        AddressKind::Topic,
    ])
}

fn valid_address() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é][a-zA-Z0-9._/:é-]{0,24}".prop_filter("valid address", |a| {
        address_problems(a).is_empty() && a != "shared-small"
    })
}

fn address_set() -> impl Strategy<Value = AddressSet> {
    prop::collection::vec(
        (
            valid_address(),
            kind(),
            prop::sample::select(vec!["vanilla-queue", "vanilla-topic", "shared-small"]),
        ),
        0..12,
    )
    .prop_map(|items| {
        let mut set = AddressSet::default();
        for (address, kind, flavor) in items {
            set.insert(Address {
                address,
                kind,
                flavor: kind.needs_broker().then(|| flavor.to_string()),
                topic: None,
            });
        }
        set
    })
}

/// Apply byte-level edits (insert, delete, replace) to `text`, keeping it valid UTF-8 via lossy conversion.
fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(pos, op, b) in edits {
        let i = if bytes.is_empty() {
            0
        } else {
            pos % (bytes.len() + 1)
        };
        match op % 3 {
            0 => bytes.insert(i, b),
            1 if i < bytes.len() => {
                bytes.remove(i);
            }
            _ if i < bytes.len() => bytes[i] = b,
            _ => bytes.push(b),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn one(key: &str, text: String) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_string(), text)])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_input_never_panics(files in prop::collection::btree_map(key(), ".{0,200}", 0..5)) {
        let _ = parse_config("prop", &files, None);
        let _ = parse_config_with("prop", &files, Some(&flavors()), Some("vanilla-queue"));
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec((key(), prop::collection::vec(any::<u8>(), 0..200)), 0..5)) {
        let files: BTreeMap<String, String> = raw
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let _ = parse_config("prop", &files, None);
    }

    #[test]
    fn mutated_valid_input_never_panics(
        set in address_set(),
        format in 0..3u8,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let (key, text) = match format {
            0 => ("json", set.to_2016_json()),
            1 => ("config.json", set.to_address_list_json()),
            _ => ("c.yaml", serde_yaml::to_string(&set.to_address_list_value()).unwrap()),
        };
        let mut files = one(key, mutate(&text, &edits));
        files.insert("flavor.json".into(), mutate(FLAVORS, &edits[..1]));
        let _ = parse_config("prop", &files, None);
        let _ = parse_config("prop", &files, Some(&flavors()));
    }

    #[test]
    fn valid_sets_round_trip_through_both_serialisers(set in address_set()) {
        let f = flavors();
        let typed = set.to_address_list_json();
        let legacy = set.to_2016_json();
        let yaml = serde_yaml::to_string(&set.to_address_list_value()).unwrap();

        let from_typed = parse_config("prop", &one("config.json", typed.clone()), Some(&f)).unwrap();
        prop_assert_eq!(&from_typed.addresses, &set);
        let from_legacy = parse_config("prop", &one("json", legacy.clone()), Some(&f)).unwrap();
        prop_assert_eq!(&from_legacy.addresses, &set);
        let from_yaml = parse_config("prop", &one("c.yaml", yaml), Some(&f)).unwrap();
        prop_assert_eq!(&from_yaml.addresses, &set);

        // Both formats at once are identical repeats, not conflicts.
        let mut both = one("json", legacy.clone());
        both.insert("config.json".into(), typed.clone());
        prop_assert_eq!(&parse_config("prop", &both, Some(&f)).unwrap().addresses, &set);

        // The snapshot parsers used by subscribers agree.
        prop_assert_eq!(&AddressSet::from_address_list_json("prop", &typed).unwrap(), &set);
        prop_assert_eq!(&AddressSet::from_2016_json("prop", &legacy).unwrap(), &set);
    }
}
