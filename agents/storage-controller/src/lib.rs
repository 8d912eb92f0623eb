//! storage-controller: broker clusters of stock ActiveMQ Artemis on Kubernetes and the addresses/queues on every
//! broker, from the address configuration (docs/architecture.md §4, §6).
//!
//! Data flow: address configuration (directory, config-service or Kubernetes API: [`maas_source`])
//! -> [`clusters`] (desired StatefulSets and Services, pure) and [`provision`] (desired broker addresses/queues vs
//! what each broker reports, pure) -> [`kube`] (server-side apply, drain, delete) and [`broker`] (Artemis
//! management operations, executed by [`artemis`]) -> [`metrics`], `/readyz`.
//! `main` parses [`args::Cli`] and calls [`main_with`]; tests drive the same functions in-process.
#![forbid(unsafe_code)]

pub mod args;
pub mod artemis;
pub mod broker;
pub mod clusters;
pub mod commands;
pub mod controller;
pub mod kube;
pub mod metrics;
pub mod provision;

pub use commands::main_with;

/// Pod annotation the controller sets on a broker pod once it holds every address/queue its cluster wants there:
/// the value is [`provision::provisioned_hash`] of that set (a changed set changes it; it is set again once the
/// change is provisioned). Router-agents bind a queue's autoLinks only to pods whose annotation matches the hash
/// of the set they expect, so no router reaches a queue before it exists. (To move to `maas_model::pods`.)
pub use maas_model::pods::PROVISIONED_ANNOTATION;

/// Everything that can go wrong in the controller, with a metric label per variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {operation} {kind} {name}: {source}")]
    Kube {
        operation: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: ::kube::Error,
    },
    /// A Kubernetes API call did not answer in time.
    #[error("Kubernetes API: {operation} {kind} {name}: no answer within {seconds} s")]
    KubeTimeout {
        operation: &'static str,
        kind: &'static str,
        name: String,
        seconds: u64,
    },
    /// A broker operation failed.
    #[error("broker {pod}: {source}")]
    Broker {
        pod: String,
        #[source]
        source: broker::BrokerError,
    },
    /// The configuration given on the command line or in files is unusable.
    #[error("{0}")]
    Config(String),
    /// Writing rendered manifests failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The label this error has in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                ::kube::Error::Api(s) if s.code == 409 => "conflict",
                ::kube::Error::Api(s) if s.code == 404 => "not_found",
                ::kube::Error::Api(s) if s.code >= 500 => "server_error",
                ::kube::Error::Api(_) => "api_error",
                _ => "transport",
            },
            Error::KubeTimeout { .. } => "timeout",
            Error::Broker { source, .. } => source.label,
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
