//! What every maas binary serves and does the same way.
//!
//! - [`telemetry`]: [`init_tracing`] — `RUST_LOG` filtering, human-readable or JSON (`LOG_FORMAT=json`) logs.
//! - [`shutdown`]: [`shutdown_signal`] — resolves on the first SIGTERM or SIGINT, to be passed into `run`.
//! - [`health`]: [`Health`] — the readiness flag (starts NOT ready) a binary flips once it did its job.
//! - [`http`]: [`HttpServer`] — `/healthz`, `/readyz` and `/metrics` (prometheus-client text encoding).
#![forbid(unsafe_code)]

pub mod duration;
pub mod health;
pub mod http;
pub mod shutdown;
pub mod telemetry;

pub use duration::parse_duration;
pub use health::Health;
pub use http::{HttpServer, METRICS_CONTENT_TYPE};
pub use shutdown::shutdown_signal;
pub use telemetry::init_tracing;
