//! router-agent: the sidecar that keeps a qdrouterd's `maas-` entities equal to the address configuration.
//!
//! Data flow (docs/architecture.md §1): address directory -> [`desired`] (validated, last good kept) -> [`plan`] (pure
//! diff against what the router is known to hold) -> [`agent`] (management operations, verification, readiness).
//! `main` parses [`args::Cli`] and calls [`main_with`]; tests drive the same functions in-process.
#![forbid(unsafe_code)]

pub mod agent;
pub mod args;
pub mod commands;
pub mod desired;
pub mod incremental;
pub mod metrics;
pub mod plan;

pub use commands::main_with;
