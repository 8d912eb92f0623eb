//! `init_tracing`: idempotent, human-readable by default, JSON lines with `LOG_FORMAT=json`, filtered by
//! `RUST_LOG`. Output formats are checked by re-running this test binary as a child process with a chosen
//! environment, since the global subscriber can be installed only once per process.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::process::Command;

const CHILD_ENV: &str = "MAAS_OPS_TELEMETRY_CHILD";

#[test]
fn init_tracing_is_idempotent() {
    maas_ops::init_tracing("test");
    maas_ops::init_tracing("test");
    tracing::info!("still logging");
}

/// Runs only as a child of the tests below.
#[test]
#[ignore = "helper: run by the other tests as a child process"]
fn child_emits_logs() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    maas_ops::init_tracing("child");
    tracing::info!(generation = 7, "hello from child");
    tracing::warn!("a warning from child");
}

fn child_stderr(envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_emits_logs", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn default_output_is_human_readable_at_info() {
    let stderr = child_stderr(&[]);
    let line = stderr
        .lines()
        .find(|l| l.contains("hello from child"))
        .unwrap_or_else(|| panic!("no info line in {stderr:?}"));
    assert!(!line.starts_with('{'), "{line}");
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("generation=7"), "{line}");
}

#[test]
fn log_format_json_gives_json_lines() {
    let stderr = child_stderr(&[("LOG_FORMAT", "json")]);
    let line = stderr
        .lines()
        .find(|l| l.contains("hello from child"))
        .unwrap_or_else(|| panic!("no info line in {stderr:?}"));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains(r#""level":"INFO""#), "{line}");
    assert!(line.contains(r#""message":"hello from child""#), "{line}");
    assert!(line.contains(r#""generation":7"#), "{line}");
}

#[test]
fn rust_log_filters() {
    let stderr = child_stderr(&[("RUST_LOG", "warn")]);
    assert!(!stderr.contains("hello from child"), "{stderr}");
    assert!(stderr.contains("a warning from child"), "{stderr}");
}
