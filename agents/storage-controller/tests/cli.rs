//! The `storage-controller` binary as an operator uses it: --help, one-line configuration errors, render,
//! `run --brokers-file --once` against broker emulators, the HTTP endpoints, and a clean exit on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
use maas_e2e::support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_storage-controller");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("ADDRESSES_DIR")
        .env_remove("BROKERS_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ADDRESSES: &str = r#"{"orders": {"store_and_forward": true, "multicast": false, "flavor": "vanilla"},
  "news": {"store_and_forward": true, "multicast": true, "flavor": "vanilla"},
  "chat": {"store_and_forward": false, "multicast": false}}"#;
const FLAVORS: &str = r#"{"vanilla": {"type": "queue", "replicas": 2, "storageSize": "2Gi"}}"#;

fn address_dir(dir: &Path) {
    std::fs::write(dir.join("json"), ADDRESSES).unwrap();
    std::fs::write(dir.join("flavor.json"), FLAVORS).unwrap();
}

#[test]
fn help_names_every_flag_with_its_environment_variable() {
    let (code, out, _) = run(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--kube",
        "--brokers-file",
        "--addresses-dir",
        "--config-service-url",
        "--flavors-file",
        "--once",
        "--namespace",
        "--broker-username",
        "--broker-password-file",
        "--broker-sasl-mechanisms",
        "--broker-ca-file",
        "--broker-run-as-user",
        "--http-addr",
        "--drain-grace",
        "--await-topic-release",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
    assert!(out.contains("[env: BROKERS_FILE=]"), "{out}");
    assert!(out.contains("[env: AWAIT_TOPIC_RELEASE=]"), "{out}");
    assert!(
        out.contains("subscription-service") && out.contains("maas.io/topics-released"),
        "--await-topic-release explains who releases a pod:\n{out}"
    );
    let (code, out, _) = run(&["render", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--out") && out.contains("[env: OUT=]"));
    assert!(
        out.contains("--broker-run-as-user") && out.contains("[env: BROKER_RUN_AS_USER="),
        "{out}"
    );
}

#[test]
fn configuration_errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = run(&["run", "--addresses-dir", d]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no broker source"), "{err}");
    let (code, _, err) = run(&["run", "--brokers-file", "/nonexistent.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("no address source"), "{err}");
    let (code, _, err) = run(&["run", "--kube", "--brokers-file", "x"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn render_writes_one_yaml_document_per_file() {
    let dir = tempfile::tempdir().unwrap();
    address_dir(dir.path());
    let out = dir.path().join("out");
    let (code, stdout, err) = run(&[
        "render",
        "--addresses-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        "maas",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote 6 manifest(s)"), "{stdout}");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "news-pdb.yaml",
            "news-service.yaml",
            "news-statefulset.yaml",
            "orders-pdb.yaml",
            "orders-service.yaml",
            "orders-statefulset.yaml"
        ]
    );
    let text = std::fs::read_to_string(out.join("orders-statefulset.yaml")).unwrap();
    assert!(!text.contains("\n---"), "one document per file");
    let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(v["kind"], "StatefulSet");
    assert_eq!(v["metadata"]["namespace"], "maas");
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(
        v["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "2Gi"
    );
    // Every rendered object is a valid typed object; the brokers take their login from the default Secret.
    let _: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(v.clone()).unwrap();
    assert!(text.contains("maas-broker-credentials"), "{text}");
    let pdb: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("orders-pdb.yaml")).unwrap())
            .unwrap();
    let _: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(pdb).unwrap();
    let svc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("orders-service.yaml")).unwrap())
            .unwrap();
    let _: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc).unwrap();
    // Rendering again gives the same bytes; a removed address's files go away.
    run(&[
        "render",
        "--addresses-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        "maas",
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("orders-statefulset.yaml")).unwrap(),
        text
    );
    std::fs::write(
        dir.path().join("json"),
        r#"{"orders": {"store_and_forward": true, "multicast": false, "flavor": "vanilla"}}"#,
    )
    .unwrap();
    run(&[
        "render",
        "--addresses-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!out.join("news-statefulset.yaml").exists());
    assert!(!out.join("news-pdb.yaml").exists());
    // An invalid directory: non-zero with the problem named.
    std::fs::write(dir.path().join("json"), "{").unwrap();
    let (code, _, err) = run(&[
        "render",
        "--addresses-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("json"), "{err}");
}

/// Start emulators on a runtime that outlives the test body's blocking calls.
fn emulators(n: usize) -> (tokio::runtime::Runtime, Vec<BrokerEmulator>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let emus = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                BrokerEmulator::start(BrokerConfig::default())
                    .await
                    .unwrap(),
            );
        }
        v
    });
    (rt, emus)
}

/// `orders-<i>` on every emulator but the last, `news-0` on the last (a cluster without brokers is not ready).
fn brokers_file(dir: &Path, emus: &[BrokerEmulator]) -> std::path::PathBuf {
    let (news, orders) = emus.split_last().unwrap();
    let news = vec![
        serde_json::json!({"name": "news-0", "host": "127.0.0.1", "port": news.addr().port()}),
    ];
    let pods: Vec<serde_json::Value> = orders
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"name": format!("orders-{i}"), "host": "127.0.0.1", "port": e.addr().port()}))
        .collect();
    let path = dir.join("brokers.json");
    std::fs::write(
        &path,
        serde_json::json!({"orders": pods, "news": news}).to_string(),
    )
    .unwrap();
    path
}

#[test]
fn once_provisions_brokers_and_exits_zero() {
    let (_rt, emus) = emulators(3);
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
    std::fs::create_dir(&addrs).unwrap();
    address_dir(&addrs);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "admin\n").unwrap();
    let bf = brokers_file(dir.path(), &emus);
    let port = free_port().to_string();
    let args = [
        "run",
        "--once",
        "--brokers-file",
        bf.to_str().unwrap(),
        "--addresses-dir",
        addrs.to_str().unwrap(),
        "--broker-username",
        "admin",
        "--broker-password-file",
        pw.to_str().unwrap(),
        "--http-addr",
    ];
    let mut all: Vec<&str> = args.to_vec();
    let addr = format!("127.0.0.1:{port}");
    all.push(&addr);
    let (code, _, err) = run(&all);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("admin\n") && !err.contains("password=admin"),
        "password never logged"
    );
    for e in &emus[..2] {
        assert!(e.queues().contains_key("orders"));
    }
    assert!(emus[2].addresses().contains_key("news"));
    // Wrong password: not converged, non-zero with the reason.
    std::fs::write(&pw, "nope").unwrap();
    let (code, _, err) = run(&all);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not converge"), "{err}");
}

#[test]
fn serves_http_and_exits_zero_on_sigterm() {
    let (_rt, emus) = emulators(2);
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
    std::fs::create_dir(&addrs).unwrap();
    address_dir(&addrs);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "admin").unwrap();
    let bf = brokers_file(dir.path(), &emus);
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--brokers-file",
            bf.to_str().unwrap(),
            "--addresses-dir",
            addrs.to_str().unwrap(),
            "--broker-username",
            "admin",
            "--broker-password-file",
            pw.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut ready = None;
    while start.elapsed() < Duration::from_secs(15) {
        if let Some((200, body)) = http_get(port, "/readyz") {
            ready = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = ready.expect("ready within 15 s");
    assert!(body.contains("provisioned on 2 broker pod"), "{body}");
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for m in [
        "maas_storage_controller_broker_operations_total{operation=\"createQueue\",result=\"ok\"} 1",
        "maas_storage_controller_queues{state=\"ready\"} 2",
        "maas_storage_controller_queues{state=\"pending\"} 0",
        "maas_storage_controller_queues{state=\"holding-messages\"} 0",
        "maas_storage_controller_clusters 2",
        "maas_storage_controller_drains_in_progress 0",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
