//! Secrets stay in their files: with a known broker password in a file, the router-agent binary is run every way an
//! operator runs it (`run` with /readyz and /metrics, `run --once`, `plan`, `show`, `validate`, an error that echoes
//! an entity back), and every output is searched for the password. The router gets `saslPassword: file:<path>`
//! (qdrouterd reads the file; any `$management` client could read a clear-text password back,
//! docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §3), so the agent never even reads it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use maas_e2e::support::{free_port, http_get};
use maas_model::EntityType;

const BIN: &str = env!("CARGO_BIN_EXE_router-agent");
const PASSWORD: &str = "Kn0wn-Br0ker-Pa55w0rd";

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_password_appears_in_no_output_and_the_router_gets_only_its_path() {
    let emu = emulator(false).await;
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
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
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let pw = pw.to_str().unwrap().to_string();
    let common = [
        "--addresses-dir".to_string(),
        addrs.to_str().unwrap().into(),
        "--brokers-file".into(),
        brokers.to_str().unwrap().into(),
        "--broker-sasl-mechanisms".into(),
        "PLAIN".into(),
        "--broker-username".into(),
        "maas".into(),
        "--broker-password-file".into(),
        pw.clone(),
    ];
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .args(&args)
                .env("RUST_LOG", "debug")
                .output()
                .unwrap();
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    };

    // run, served: /readyz, /metrics, the logs (debug level).
    let port = free_port();
    let child = Command::new(BIN)
        .args(["run", "--router-url", &emu.url()])
        .args(&common)
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(15), || {
        matches!(http_get(port, "/readyz"), Some((200, _)))
    })
    .await;
    assert!(ready, "{:?}", http_get(port, "/readyz"));
    for path in ["/readyz", "/metrics", "/healthz"] {
        assert_clean(path, &http_get(port, path).unwrap().1);
    }
    // What the router holds: the path, never the password.
    let connectors = emu.entities(EntityType::Connector.full_name());
    assert_eq!(connectors.len(), 1);
    assert_eq!(
        connectors[0]["saslPassword"],
        serde_json::json!(format!("file:{pw}"))
    );
    assert_clean("the router's connector", &format!("{connectors:?}"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_clean("run's stdout", &String::from_utf8_lossy(&out.stdout));
    assert_clean("run's logs", &String::from_utf8_lossy(&out.stderr));

    // An error that echoes the entity: the router's duplicate-name 400 on a connector lists every attribute
    // (mgmt-transcript.txt), and such texts reach logs and /readyz. With the file form it holds the path only.
    let client = maas_amqp::router::RouterClient::connect(
        &maas_amqp::options::ConnectOptions::from_url(&emu.url()).unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let mut attrs: serde_json::Map<String, serde_json::Value> = connectors[0].clone();
    for k in ["identity", "type", "connectionStatus", "connectionMsg"] {
        attrs.remove(k);
    }
    let err = client
        .create(EntityType::Connector.full_name(), "maas-broker-b0", attrs)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicates unique attribute"), "{err}");
    assert!(err.contains(&format!("saslPassword=file:{pw}")), "{err}");
    assert_clean("the router's duplicate-name error", &err);
    client.close().await;

    // plan (with and without the router), show, validate.
    let mut args = vec!["plan".to_string(), "--router-url".into(), emu.url()];
    args.extend(common.iter().cloned());
    let (code, text) = run(args).await.unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_clean("plan", &text);
    let (code, text) = run(vec!["show".into(), "--router-url".into(), emu.url()])
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_clean("show", &text);
    let (code, text) = run(vec![
        "validate".into(),
        addrs.to_str().unwrap().into(),
        "--brokers-file".into(),
        brokers.to_str().unwrap().into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_clean("validate", &text);

    // A relative path is refused with one line (the router could not resolve it).
    let (code, text) = run(vec![
        "run".into(),
        "--addresses-dir".into(),
        addrs.to_str().unwrap().into(),
        "--broker-password-file".into(),
        "password".into(),
    ])
    .await
    .unwrap();
    assert_ne!(code, Some(0));
    assert!(text.contains("must be an absolute path"), "{text}");
}
