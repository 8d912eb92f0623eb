//! Secrets stay in their files (docs/architecture.md §7): the `subscription-service` binary logs in to a broker
//! (Artemis emulator, `--broker-password-file`) and to the router's authenticating client listener for `$subctrl`
//! (router emulator, `--router-url amqp://user@host` with `--router-password-file`) with known passwords, and
//! neither its logs (debug level), `/readyz`, `/metrics`, `/healthz`, nor the failures of wrong passwords or an
//! unreachable broker show either password.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use maas_amqp::server::Users;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use maas_e2e::router::{ClientListener, EmulatorConfig, RouterEmulator};
use maas_e2e::support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_subscription-service");
const BROKER_PASSWORD: &str = "Kn0wn-Sub-Br0ker-Pa55";
const ROUTER_USER: &str = "subscriptions@maas";
const ROUTER_PASSWORD: &str = "Kn0wn-Sub-R0uter-Pa55";
const CONNECTED: &str = "maas_subscription_service_subctrl_connected";

fn assert_clean(what: &str, text: &str) {
    for pw in [BROKER_PASSWORD, ROUTER_PASSWORD] {
        assert!(!text.contains(pw), "{what} shows a password:\n{text}");
    }
}

/// Topic `news` (its own cluster `news`), one broker pod.
fn files(dir: &Path, broker_port: u16) -> (PathBuf, PathBuf) {
    let addrs = dir.join("addresses");
    std::fs::create_dir(&addrs).unwrap();
    std::fs::write(
        addrs.join("json"),
        r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"}}"#,
    )
    .unwrap();
    std::fs::write(addrs.join("flavor.json"), r#"{"t": {"type": "topic"}}"#).unwrap();
    let brokers = dir.join("brokers.json");
    std::fs::write(
        &brokers,
        serde_json::json!({"news": [{"name": "b-0", "host": "127.0.0.1", "port": broker_port}]})
            .to_string(),
    )
    .unwrap();
    (addrs, brokers)
}

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p
}

struct Run<'a> {
    addrs: &'a Path,
    brokers: &'a Path,
    broker_password: &'a Path,
    router_url: &'a str,
    router_password: &'a Path,
}

impl Run<'_> {
    fn command(&self, http: u16, extra: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args([
            "run",
            "--brokers-file",
            self.brokers.to_str().unwrap(),
            "--addresses-dir",
            self.addrs.to_str().unwrap(),
            "--broker-username",
            "maas",
            "--broker-password-file",
            self.broker_password.to_str().unwrap(),
            "--broker-request-timeout",
            "2s",
            "--router-url",
            self.router_url,
            "--router-password-file",
            self.router_password.to_str().unwrap(),
            "--interval",
            "500ms",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .args(extra)
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "text")
        .env_remove("KUBE")
        .env_remove("CONFIG_SERVICE_URL");
        c
    }

    fn spawn(&self, http: u16) -> Child {
        self.command(http, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn stop(child: Child) -> Output {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait_with_output().unwrap()
}

/// Polls until `f` holds (at most 15 s).
async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn metric(http: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(http, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn check_endpoints(http: u16) {
    for path in ["/readyz", "/metrics", "/healthz"] {
        let (_, body) = http_get(http, path).unwrap();
        assert_clean(path, &body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_and_router_passwords_appear_in_no_output() {
    let broker = BrokerEmulator::start(BrokerConfig {
        users: vec![("maas".into(), BROKER_PASSWORD.into())],
        cost_model: CostModel::none(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let mut users = Users::default();
    users.insert(ROUTER_USER, ROUTER_PASSWORD);
    let router = RouterEmulator::start_with_client_listener(
        EmulatorConfig {
            cost_model: false,
            ..Default::default()
        },
        ClientListener {
            users: Some(users),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = router.client_addr().unwrap();
    // The user's `@` percent-encoded in the URL; the password only in its file.
    let router_url = format!(
        "amqp://{}@127.0.0.1:{}",
        ROUTER_USER.replace('@', "%40"),
        client.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let (addrs, brokers) = files(dir.path(), broker.addr().port());
    let broker_pw = secret_file(dir.path(), "broker-password", BROKER_PASSWORD);
    let router_pw = secret_file(dir.path(), "router-password", ROUTER_PASSWORD);
    let good = Run {
        addrs: &addrs,
        brokers: &brokers,
        broker_password: &broker_pw,
        router_url: &router_url,
        router_password: &router_pw,
    };

    // Both logins work: ready (a pass listed the broker's queues) and consuming `$subctrl` on the router.
    let http = free_port();
    let child = good.spawn(http);
    wait_for("/readyz 200", || {
        matches!(http_get(http, "/readyz"), Some((200, _)))
    })
    .await;
    wait_for("$subctrl connected", || {
        metric(http, CONNECTED) == Some(1.0)
    })
    .await;
    let c = broker.counters();
    assert!(c.reads + c.writes > 0, "logged in to the broker");
    check_endpoints(http);
    let out = stop(child);
    assert_clean("stdout", &String::from_utf8_lossy(&out.stdout));
    assert_clean("logs", &String::from_utf8_lossy(&out.stderr));

    // Wrong passwords for both: not ready, `$subctrl` not connected, the failures logged without any password.
    let wrong_broker = secret_file(dir.path(), "wrong-broker", &format!("{BROKER_PASSWORD}-x"));
    let wrong_router = secret_file(dir.path(), "wrong-router", &format!("{ROUTER_PASSWORD}-x"));
    let bad = Run {
        broker_password: &wrong_broker,
        router_password: &wrong_router,
        ..good
    };
    let http = free_port();
    let child = bad.spawn(http);
    wait_for("/readyz answering", || http_get(http, "/readyz").is_some()).await;
    // A few passes and reconnect attempts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(http_get(http, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(metric(http, CONNECTED), Some(0.0));
    check_endpoints(http);
    let out = stop(child);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("$subctrl connection lost"),
        "the router login failure is logged:\n{logs}"
    );
    assert_clean("stdout", &String::from_utf8_lossy(&out.stdout));
    assert_clean("logs of failed logins", &logs);

    // An unreachable broker with --once: the one-line failure shows no password either.
    let gone = free_port();
    let (_, gone_brokers) = {
        let d = dir.path().join("gone");
        std::fs::create_dir(&d).unwrap();
        files(&d, gone)
    };
    let unreachable = Run {
        brokers: &gone_brokers,
        ..good
    };
    let out = unreachable
        .command(free_port(), &["--once"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("b-0"), "{text}");
    assert_clean("an unreachable broker", &text);

    router.stop().await;
    broker.stop().await;
}
