//! Test support for maas: a faithful qdrouterd 1.19.0 management emulator ([`router`]) used by the agents'
//! tests and the demo binary `router-emulator`.
#![forbid(unsafe_code)]

pub mod router;
