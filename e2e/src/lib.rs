//! Test support for maas: a faithful qdrouterd 1.19.0 management emulator ([`router`]) and an ActiveMQ
//! Artemis 2.21 broker-management emulator ([`broker`]) used by the agents' tests and the demo binaries
//! `router-emulator` and `broker-emulator`.
#![forbid(unsafe_code)]

pub mod broker;
pub mod router;
pub mod support;
