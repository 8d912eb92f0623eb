//! AMQP plumbing shared by the maas binaries: connection options (TLS, SASL, idle timeout,
//! reconnect backoff) in [`options`], opening a connection in [`connect`], the JSON <-> AMQP value
//! mapping in [`value`], the generic pipelined request/response client in [`request`] and the two
//! management clients over it — qdrouterd `$management` in [`router`], Artemis
//! `activemq.management` in [`artemis`] — and a reusable AMQP server
//! skeleton (accept loop, SASL, TLS, limits, per-link decisions) in [`server`].
//!
//! The clients never reconnect by themselves: a caller waits for `closed()`, sleeps
//! [`options::Backoff::delay`] and connects again.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod artemis;
pub mod connect;
pub mod lean;
pub mod messaging;
pub mod options;
pub mod request;
pub mod router;
pub mod server;
pub mod subscriber;
pub mod value;
pub mod wire;

pub use options::{
    Backoff, ConnectOptions, OptionsError, SaslOptions, Secret, TlsOptions, install_crypto_provider,
};
pub use router::{ClientConfig, MgmtError, QueryPage, Reply, RouterClient};
