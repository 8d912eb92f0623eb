//! The `router-agent` binary as an operator uses it: --help, one-line configuration errors, validate, plan (secrets
//! never printed), show, the HTTP endpoints, JSON logs, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use maas_e2e::support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_router-agent");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("ROUTER_URL")
        .env_remove("ADDRESSES_DIR")
        .output()
        .expect("run router-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_flag_with_its_environment_variable() {
    let (code, out, _) = run(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--router-url",
        "--addresses-dir",
        "--flavors-file",
        "--brokers-file",
        "--http-addr",
        "--once",
        "--broker-sasl-mechanisms",
        "--broker-username",
        "--broker-password-file",
        "--window",
        "--request-timeout",
        "--drift-check-interval",
        "--max-consecutive-timeouts",
        "--pod-name",
        "--router-mode",
        "--routers-file",
        "--mesh-ssl-profile",
        "--mesh-sasl-mechanisms",
        "--mesh-sasl-username",
        "--mesh-sasl-password-file",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
    for env in [
        "ROUTER_URL",
        "ADDRESSES_DIR",
        "BROKERS_FILE",
        "HTTP_ADDR",
        "BROKER_PASSWORD_FILE",
        "POD_NAME",
        "ROUTERS_FILE",
        "ROUTER_MODE",
    ] {
        assert!(
            out.contains(&format!("env: {env}")),
            "{env} missing from --help:\n{out}"
        );
    }
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["run", "plan", "validate", "show"] {
        assert!(out.contains(sub), "{out}");
    }
}

#[test]
fn invalid_configuration_exits_nonzero_with_one_clear_line() {
    let (code, _, err) = run(&["run"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--addresses-dir"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = run(&["run", "--addresses-dir", d, "--router-url", "http://nope"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--router-url"), "{err}");

    let (code, _, err) = run(&["run", "--addresses-dir", "/nonexistent/dir"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn validate_names_key_and_address_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    writer(dir.path())
        .write(&files(&[
            ("json", r#"{"ok": {}, "with space": {}}"#),
            (
                "config.json",
                r#"[{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "q"}, "spec": {"address": "q", "type": "queue", "flavor": "nope"}}]"#,
            ),
        ]))
        .unwrap();
    let (code, out, _) = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("\"json\"") && l.contains("with space")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("config.json") && l.contains("\"q\"") && l.contains("nope")),
        "{out}"
    );

    let good = tempfile::tempdir().unwrap();
    writer(good.path())
        .write(&files(&[("json", &legacy_addresses("v", 4))]))
        .unwrap();
    let (code, out, _) = run(&["validate", good.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 4 addresses"), "{out}");

    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/addresses");
    let brokers = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/brokers.json");
    let (code, out, _) = run(&["validate", examples, "--brokers-file", brokers]);
    assert_eq!(code, 0, "examples must be valid: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_entities_and_operations_but_never_the_password() {
    let emu = emulator(false).await;
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("a");
    writer(&addrs)
        .write(&files(&[
            (
                "json",
                r#"{"jobs": {"store_and_forward": true, "flavor": "small"}, "chat": {}}"#,
            ),
            ("flavor.json", r#"{"small": {"type": "queue"}}"#),
        ]))
        .unwrap();
    let brokers = dir.path().join("brokers.json");
    std::fs::write(
        &brokers,
        r#"{"jobs": [{"name": "b0", "host": "127.0.0.1", "port": 5674}]}"#,
    )
    .unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cr3t-Pa55\n").unwrap();
    let url = emu.url();
    let args = vec![
        "plan".to_string(),
        "--addresses-dir".into(),
        addrs.to_str().unwrap().into(),
        "--brokers-file".into(),
        brokers.to_str().unwrap().into(),
        "--broker-username".into(),
        "maas".into(),
        "--broker-password-file".into(),
        pw.to_str().unwrap().into(),
        "--router-url".into(),
        url,
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN).args(&args).output().expect("run plan")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"),
        "password printed:\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("maas-broker-b0") && stdout.contains("saslPassword=\"***\""),
        "{stdout}"
    );
    assert!(stdout.contains("maas-autolink/jobs/b0/in"), "{stdout}");
    assert!(stdout.contains("0 DELETE, 5 CREATE"), "{stdout}");
    assert_eq!(emu.counters().writes(), 0, "plan changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_health_ready_metrics_logs_json_and_stops_on_sigterm() {
    let emu = emulator(false).await;
    let dir = tempfile::tempdir().unwrap();
    writer(dir.path())
        .write(&files(&[("json", &legacy_addresses("h", 5))]))
        .unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "run",
            "--router-url",
            &emu.url(),
            "--addresses-dir",
            dir.path().to_str().unwrap(),
        ])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn router-agent");
    let pid = child.id();
    let ready = wait_until(Duration::from_secs(15), || {
        matches!(http_get(port, "/readyz"), Some((200, _)))
    })
    .await;
    assert!(ready, "not ready: {:?}", http_get(port, "/readyz"));
    let (code, body) = http_get(port, "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, body) = http_get(port, "/readyz").unwrap();
    assert!(body.contains("router holds generation 1"), "{body}");
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for m in [
        "maas_router_agent_management_operations_total",
        "maas_router_agent_reconcile_duration_seconds",
        "maas_router_agent_addresses{kind=\"anycast\"} 3",
        "maas_router_agent_router_connected 1",
        "maas_router_agent_config_errors_total 0",
        "maas_router_agent_desired_generation 1",
        "maas_router_agent_applied_generation 1",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(exit.status.code(), Some(0));
    let logs =
        String::from_utf8_lossy(&exit.stdout).into_owned() + &String::from_utf8_lossy(&exit.stderr);
    let first = logs.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        first.starts_with('{'),
        "LOG_FORMAT=json gives JSON lines: {first}"
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{first}"
    );
}

/// `--subctrl` routes subscription-service's `$subctrl` API: the router gets `maas-address/$subctrl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subctrl_flag_routes_the_subscription_api() {
    let emu = emulator(false).await;
    let dir = tempfile::tempdir().unwrap();
    writer(dir.path())
        .write(&files(&[("json", r#"{"chat": {}}"#)]))
        .unwrap();
    let args = vec![
        "run".to_string(),
        "--once".into(),
        "--subctrl".into(),
        "--router-url".into(),
        emu.url(),
        "--addresses-dir".into(),
        dir.path().to_str().unwrap().into(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let subctrl = emu
        .entities("org.apache.qpid.dispatch.router.config.address")
        .into_iter()
        .find(|r| r["name"] == serde_json::json!("maas-address/$subctrl"))
        .expect("maas-address/$subctrl on the router");
    assert_eq!(subctrl["prefix"], serde_json::json!("$subctrl"));
    assert_eq!(subctrl["distribution"], serde_json::json!("balanced"));
}
