//! Fuzz `maas_model::parse_config`: the input is split on 0xFF bytes into up to five data keys (2016 format,
//! typed JSON, typed YAML, flavors, a second typed JSON key). Invariants checked:
//! - parsing never panics, with or without given flavors and a default flavor;
//! - whatever parses successfully round-trips through both serialisers to the same address set.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use maas_model::{AddressSet, parse_config, parse_config_with};

const KEYS: [&str; 5] = ["json", "config.json", "addresses.yaml", "flavor.json", "more.json"];

fuzz_target!(|data: &[u8]| {
    let files: BTreeMap<String, String> = data
        .split(|b| *b == 0xFF)
        .zip(KEYS)
        .map(|(chunk, key)| (key.to_string(), String::from_utf8_lossy(chunk).into_owned()))
        .collect();

    let parsed = parse_config("fuzz", &files, None);
    let _ = parse_config_with("fuzz", &files, None, Some("vanilla-queue"));

    if let Ok(config) = parsed {
        let set = &config.addresses;
        let typed = set.to_address_list_json();
        let legacy = set.to_2016_json();
        let again = AddressSet::from_address_list_json("fuzz-roundtrip", &typed)
            .expect("a valid set re-parses from its typed JSON");
        assert_eq!(&again, set);
        let again = AddressSet::from_2016_json("fuzz-roundtrip", &legacy)
            .expect("a valid set re-parses from its 2016 JSON");
        assert_eq!(&again, set);
        // With the same flavors, the full parser accepts the serialised set too.
        let only_typed = BTreeMap::from([("config.json".to_string(), typed)]);
        let reparsed = parse_config("fuzz-roundtrip", &only_typed, Some(&config.flavors))
            .expect("a valid set re-parses with its flavors");
        assert_eq!(&reparsed.addresses, set);
    }
});
