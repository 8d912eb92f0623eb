//! The `subscription-service` command line as an operator meets it: `--help` names every flag with its
//! environment variable, and unusable configuration is one clear line on stderr and a non-zero exit.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_subscription-service");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("ADDRESSES_DIR")
        .env_remove("BROKERS_FILE")
        .env_remove("ROUTER_URL")
        .env_remove("KUBE")
        .env_remove("ROUTERS_FILE")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_every_flag_with_its_environment_variable() {
    let (code, out, _) = run(&["run", "--help"]);
    assert_eq!(code, 0);
    for (flag, env) in [
        ("--kube", "KUBE"),
        ("--namespace", "NAMESPACE"),
        ("--brokers-file", "BROKERS_FILE"),
        ("--addresses-dir", "ADDRESSES_DIR"),
        ("--config-service-url", "CONFIG_SERVICE_URL"),
        ("--flavors-file", "FLAVORS_FILE"),
        ("--router-url", "ROUTER_URL"),
        ("--router-password-file", "ROUTER_PASSWORD_FILE"),
        ("--router-ca-file", "ROUTER_CA_FILE"),
        ("--subscriptions-file", "SUBSCRIPTIONS_FILE"),
        ("--subscriptions-configmap", "SUBSCRIPTIONS_CONFIGMAP"),
        ("--handover-file", "HANDOVER_FILE"),
        ("--handover-grace", "HANDOVER_GRACE"),
        ("--routers-file", "ROUTERS_FILE"),
        ("--broker-sasl-mechanisms", "BROKER_SASL_MECHANISMS"),
        ("--broker-username", "BROKER_USERNAME"),
        ("--broker-password-file", "BROKER_PASSWORD_FILE"),
        ("--broker-ca-file", "BROKER_CA_FILE"),
        ("--broker-cert-file", "BROKER_CERT_FILE"),
        ("--broker-key-file", "BROKER_KEY_FILE"),
        ("--broker-request-timeout", "BROKER_REQUEST_TIMEOUT"),
        ("--http-addr", "HTTP_ADDR"),
        ("--once", "ONCE"),
        ("--interval", "INTERVAL"),
        ("--parallel-moves", "PARALLEL_MOVES"),
        ("--move-window", "MOVE_WINDOW"),
        ("--drain-wait", "DRAIN_WAIT"),
        ("--debounce", "DEBOUNCE"),
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
        assert!(
            out.contains(&format!("[env: {env}=")),
            "{flag}: no [env: {env}=] in --help:\n{out}"
        );
    }
    // Every flag listed has an environment variable.
    let flags = out
        .lines()
        .filter(|l| l.trim_start().starts_with("--"))
        .count();
    let envs = out.matches("[env: ").count();
    assert_eq!(flags, envs, "every flag has an env:\n{out}");
    assert!(out.contains("maas.io/topics-released"), "{out}");
}

#[test]
fn configuration_errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let brokers = dir.path().join("brokers.json");
    std::fs::write(&brokers, "{}").unwrap();
    let b = brokers.to_str().unwrap();
    let missing = dir.path().join("nope");
    let m = missing.to_str().unwrap();
    let routers = dir.path().join("routers.json");
    std::fs::write(&routers, r#"[{"name": "router-0"}, {"host": "10.0.0.2"}]"#).unwrap();
    let r = routers.to_str().unwrap();
    for (args, expect) in [
        (vec!["run", "--addresses-dir", d], "no broker source"),
        (vec!["run", "--brokers-file", b], "no address source"),
        (
            vec!["run", "--brokers-file", b, "--addresses-dir", m],
            "--addresses-dir",
        ),
        (
            vec!["run", "--brokers-file", m, "--addresses-dir", d],
            "--brokers-file",
        ),
        (
            vec![
                "run",
                "--brokers-file",
                b,
                "--config-service-url",
                "amqp://127.0.0.1:1",
                "--router-url",
                "amqp://127.0.0.1:2",
            ],
            "--subscriptions-file",
        ),
        (
            vec![
                "run",
                "--brokers-file",
                b,
                "--addresses-dir",
                d,
                "--router-url",
                "http://router",
            ],
            "--router-url",
        ),
        (
            vec![
                "run",
                "--brokers-file",
                b,
                "--addresses-dir",
                d,
                "--broker-sasl-mechanisms",
                "GSSAPI",
            ],
            "only PLAIN, ANONYMOUS and EXTERNAL",
        ),
        (
            vec![
                "run",
                "--brokers-file",
                b,
                "--addresses-dir",
                d,
                "--broker-username",
                "admin",
                "--broker-password-file",
                m,
            ],
            "--broker-password-file",
        ),
        (
            vec![
                "run",
                "--brokers-file",
                b,
                "--addresses-dir",
                d,
                "--routers-file",
                m,
            ],
            "--routers-file",
        ),
        (
            vec![
                "run",
                "--brokers-file",
                b,
                "--addresses-dir",
                d,
                "--routers-file",
                r,
            ],
            "router 1: missing \"name\"",
        ),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(err.starts_with("subscription-service: "), "{err}");
    }
    // clap's own refusals are non-zero too.
    let (code, _, _) = run(&["run", "--kube", "--brokers-file", b]);
    assert_ne!(code, 0);
    let (code, _, err) = run(&["run", "--interval", "soon"]);
    assert_ne!(code, 0, "{err}");
}

#[test]
fn once_with_an_invalid_configuration_says_why_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("json"), "{").unwrap();
    let other = tempfile::tempdir().unwrap();
    let brokers = other.path().join("b.json");
    std::fs::write(&brokers, "{}").unwrap();
    let (code, _, err) = run(&[
        "run",
        "--brokers-file",
        brokers.to_str().unwrap(),
        "--addresses-dir",
        dir.path().to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--once",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no valid address configuration"), "{err}");
    // A brokers file that does not parse.
    std::fs::write(dir.path().join("json"), "{}").unwrap();
    std::fs::write(&brokers, "[").unwrap();
    let (code, _, err) = run(&[
        "run",
        "--brokers-file",
        brokers.to_str().unwrap(),
        "--addresses-dir",
        dir.path().to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--once",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("invalid brokers file"), "{err}");
}
