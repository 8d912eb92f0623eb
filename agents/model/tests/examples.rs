//! The shipped examples (`examples/addresses`, `examples/brokers.json`) parse, validate and place cleanly.
#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use maas_model::{
    AddressKind, EntityOptions, EntityType, clusters_in_use, desired_entities, parse_brokers,
    parse_config,
};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn read_dir(dir: &PathBuf) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn example_addresses_parse_in_both_formats() {
    let dir = examples_dir().join("addresses");
    let files = read_dir(&dir);
    assert!(files.contains_key("json") && files.contains_key("config.json"));
    let config =
        parse_config(&dir.display().to_string(), &files, None).unwrap_or_else(|e| panic!("{e:#?}"));
    let counts = config.addresses.count_by_kind();
    for kind in [
        AddressKind::Anycast,
        AddressKind::Broadcast,
        AddressKind::Queue,
        AddressKind::Topic,
    ] {
        assert!(counts.get(&kind).copied().unwrap_or(0) >= 2, "{counts:?}");
    }
    // 6 + 6 definitions, one ("orders") repeated identically in both formats.
    assert_eq!(config.addresses.len(), 11);
    let shared = config.flavors.get("shared-small").unwrap();
    assert!(shared.shared);
    assert_eq!(
        shared.extra["image"],
        "quay.io/artemiscloud/activemq-artemis-broker:1.0.25"
    );
    assert!(config.flavors.get("vanilla-queue").is_some());
    assert!(config.flavors.get("vanilla-topic").is_some());
}

#[test]
fn example_brokers_cover_every_cluster_the_examples_use() {
    let dir = examples_dir().join("addresses");
    let config = parse_config("examples", &read_dir(&dir), None).unwrap();
    let path = examples_dir().join("brokers.json");
    let brokers = parse_brokers(
        &path.display().to_string(),
        &std::fs::read_to_string(&path).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let used = clusters_in_use(&config.addresses, &config.flavors);
    let listed: BTreeSet<String> = brokers.clusters.keys().cloned().collect();
    assert_eq!(used, listed);
    for pod in brokers.clusters.values().flatten() {
        assert_eq!(pod.host, "127.0.0.1");
        assert!(pod.port >= 5674);
    }
    let entities = desired_entities(
        &config.addresses,
        &config.flavors,
        &brokers,
        &EntityOptions::default(),
    );
    let pods = brokers.clusters.values().flatten().count();
    assert_eq!(entities.of_type(EntityType::Connector).count(), pods);
    assert_eq!(
        entities.of_type(EntityType::Address).count(),
        config
            .addresses
            .iter()
            .filter(|a| a.kind != AddressKind::Topic)
            .count()
    );
    assert!(entities.of_type(EntityType::AutoLink).count() > 0);
    assert!(entities.of_type(EntityType::LinkRoute).count() > 0);
}
