//! Secrets stay in their files: storage-controller logs in to the brokers with a known password read from a file,
//! and neither its logs (debug level), `/readyz`, `/metrics`, nor a failed login's error text shows it.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_e2e::support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_storage-controller");
const PASSWORD: &str = "Kn0wn-Br0ker-Pa55w0rd";

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

#[test]
fn the_broker_password_appears_in_no_output() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let emu = rt.block_on(async {
        BrokerEmulator::start(BrokerConfig {
            users: vec![("maas".into(), PASSWORD.into())],
            ..BrokerConfig::default()
        })
        .await
        .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
    std::fs::create_dir(&addrs).unwrap();
    std::fs::write(
        addrs.join("json"),
        r#"{"orders": {"store_and_forward": true, "flavor": "v"}}"#,
    )
    .unwrap();
    std::fs::write(addrs.join("flavor.json"), r#"{"v": {"type": "queue"}}"#).unwrap();
    let brokers = dir.path().join("brokers.json");
    std::fs::write(
        &brokers,
        serde_json::json!({"orders": [{"name": "orders-0", "host": "127.0.0.1", "port": emu.addr().port()}]})
            .to_string(),
    )
    .unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let port = free_port();
    let args = |pw: &std::path::Path| {
        vec![
            "run".to_string(),
            "--brokers-file".into(),
            brokers.to_str().unwrap().into(),
            "--addresses-dir".into(),
            addrs.to_str().unwrap().into(),
            "--broker-username".into(),
            "maas".into(),
            "--broker-password-file".into(),
            pw.to_str().unwrap().into(),
            "--http-addr".into(),
            format!("127.0.0.1:{port}"),
        ]
    };
    let child = Command::new(BIN)
        .args(args(&pw))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut ready = false;
    while start.elapsed() < Duration::from_secs(15) {
        if let Some((200, _)) = http_get(port, "/readyz") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "{:?}", http_get(port, "/readyz"));
    assert!(
        emu.queues().contains_key("orders"),
        "logged in and provisioned"
    );
    for path in ["/readyz", "/metrics", "/healthz"] {
        assert_clean(path, &http_get(port, path).unwrap().1);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_clean("stdout", &String::from_utf8_lossy(&out.stdout));
    assert_clean("logs", &String::from_utf8_lossy(&out.stderr));

    // A wrong password: the failure is reported, without either password.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, format!("{PASSWORD}-wrong")).unwrap();
    let mut once = args(&wrong);
    once.insert(1, "--once".into());
    let out = Command::new(BIN)
        .args(&once)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("did not converge"), "{text}");
    assert_clean("a failed login", &text);
    drop(emu);
}
