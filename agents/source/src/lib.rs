//! Where address sets come from.
//!
//! This crate owns the *raw input* side of every maas binary: reading a mounted ConfigMap directory (or a
//! single file) as a whole, hashing it, watching it the way the kubelet actually updates it, and keeping the
//! last successfully parsed value of each input when a new one is bad. Parsing and validation rules belong to
//! `maas-model`; this crate applies them to each new input and hands over full, validated snapshots.
//!
//! - [`snapshot`]: one consistent read of a directory or file, with a content hash.
//! - [`watch`]: the kubelet-safe watch ([`watch_dir`], [`watch_file`]) publishing new snapshots on a
//!   `tokio::sync::watch` channel only when the content hash changes.
//! - [`last_good`]: [`LastGood`], "bad input keeps the last good value", reusable by every source kind.
//! - [`config`]: validated address configurations from a mounted directory ([`spawn_file_config`]), last good kept.
//! - [`kubelet`]: test support reproducing the kubelet's atomic writer step by step.
//! - [`kube`]: the Kubernetes API source: address/flavor ConfigMaps ([`spawn_kube_config`]) and Pods
//!   ([`spawn_kube_pods`]) followed by kube-runtime watchers, publishing the same [`ConfigState`].
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod kube;
pub mod kubelet;
pub mod last_good;
pub mod snapshot;
pub mod sources;
pub mod subscription;
pub mod watch;

pub use self::kube::{KubeConfigOptions, PodsState, spawn_kube_config, spawn_kube_pods};
pub use config::{ConfigState, FileConfig, load_file_config, spawn_file_config};
pub use error::{Result, SourceError};
pub use last_good::{LastGood, Offer};
pub use snapshot::{DirSnapshot, FileSnapshot, read_dir_snapshot, read_file_snapshot};
pub use sources::{
    AddressSource, BrokerSource, SourceFlags, Sources, spawn_address_source, spawn_sources,
};
pub use subscription::{ConfigSubscription, spawn_config_subscription};
pub use watch::{WatchOptions, watch_dir, watch_file};
