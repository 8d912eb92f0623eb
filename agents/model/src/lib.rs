//! The address model of maas: the user's address and flavor formats, their validation, broker-cluster placement,
//! and the router entities an address set maps to. Pure: no I/O, no tokio, no AMQP, no Kubernetes.
//!
//! Data flow: ConfigMap data (key -> text) --[`parse`]--> [`Config`] (an [`AddressSet`] plus a [`FlavorSet`])
//! --[`entity::desired_entities`] with [`placement::Brokers`]--> [`entity::EntitySet`].
#![forbid(unsafe_code)]

pub mod address;
pub mod delta;
pub mod entity;
pub mod error;
pub mod flavor;
pub mod mesh;
pub mod parse;
pub mod placement;
pub mod pods;

pub use address::{Address, AddressKind, AddressSet};
pub use entity::{
    DigestSet, DigestSetBuilder, Direction, Entity, EntityOptions, EntitySet, EntityType,
    address_entity_name, autolink_name, connector_entities, connector_entity, connector_name,
    desired_digests, desired_entities, entity_digest, for_each_desired_entity,
    for_each_entity_of_address, linkroute_name,
};
pub use error::ConfigError;
pub use flavor::{Flavor, FlavorSet, parse_flavor_config, parse_flavors};
pub use mesh::{
    MeshInputs, MeshOptions, RouterMode, RouterPod, mesh_entities, router_connector_name,
};
pub use parse::{
    Config, KeyFormat, ParseOptions, address_problems, parse_config, parse_config_opts,
    parse_config_with,
};
pub use placement::{
    BrokerPod, Brokers, cluster_for, clusters_in_use, dns1123_label, parse_brokers, rendezvous,
    topic_pod,
};
pub use pods::{PodInfo, brokers_from_pods, selector_matches};
