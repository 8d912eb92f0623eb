//! Tracing set-up shared by every binary: one call at the start of `main`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber.
///
/// The filter comes from `RUST_LOG` (default `info`; an invalid value falls back to `info`). Output is
/// human-readable on stderr (coloured only when stderr is a terminal, so collected logs hold no escape codes), or one JSON object per line when `LOG_FORMAT=json`. Calling it again (or after a
/// test installed its own subscriber) is harmless: the first subscriber stays.
pub fn init_tracing(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
            .is_ok()
    } else {
        builder.try_init().is_ok()
    };
    if installed {
        tracing::debug!(
            service,
            format = if json { "json" } else { "text" },
            "tracing initialised"
        );
    }
}
