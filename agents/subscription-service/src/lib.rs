//! subscription-service: durable topic subscriptions (docs/architecture.md §5).
//!
//! A topic lives on ONE pod of its broker cluster ([`maas_model::topic_pod`]); its durable subscription queues
//! (configured `subscription` addresses and those AMQP clients make) must live there too, so that a reconnecting
//! subscriber finds its backlog. This service keeps them there:
//!
//! address configuration + broker pods ([`maas_source`]) -> per pod, the queues bound to each topic (Artemis
//! management, [`broker`]) -> [`plan`] (pure: which queue moves from which pod to which) -> [`handover`] (pure:
//! copy now, or sweep once the router-agents moved the links; which draining pods to release) -> [`mover`] (queue
//! on the new pod, messages at least once, the old queue deleted by the sweep) -> [`release`] (the pod annotation or
//! the handover file) -> [`metrics`], `/readyz` ([`service`] runs the loop). On the topic's pod, the queues one
//! client made through different routers are merged into one ([`merge`], pure; the same mover).
//!
//! It also serves `$subctrl` ([`subctrl`], pure; [`subctrl_link`], the AMQP side): subscribe/unsubscribe/list/close
//! requests that become `subscription` addresses in a file it owns ([`store`]), provisioned by the normal pipeline.
//! `main` parses [`args::Cli`] and calls [`main_with`]; tests drive [`run`] in-process.
#![forbid(unsafe_code)]

pub mod args;
pub mod broker;
pub mod commands;
pub mod configmap_store;
pub mod handover;
pub mod merge;
pub mod metrics;
pub mod mover;
pub mod plan;
pub mod release;
pub mod service;
pub mod store;
pub mod subctrl;
pub mod subctrl_link;

pub use commands::{main_with, run};

/// What stops the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration given on the command line or in files is unusable.
    #[error("{0}")]
    Config(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
