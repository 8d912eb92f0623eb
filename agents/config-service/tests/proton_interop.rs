//! Interop with an independent AMQP implementation: `e2e/python/cs_interop.py` (python3-qpid-proton) against an
//! in-process config-service — snapshots on `v1/addresses` and `maas`, the `amqp:not-found` detach of an unknown
//! source, a kubelet-style edit, and SASL PLAIN accepted/rejected; and `tests/cs_delta_interop.py`: a proton receiver
//! asking for incremental mode (source capability `maas:delta`) next to a plain one. Skipped (with a message) only
//! when `import proton` fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_service::Args;
use maas_source::kubelet::KubeletWriter;
use tokio::sync::oneshot;

const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e/python/cs_interop.py")
}

fn proton_available() -> bool {
    maas_e2e::support::proton_available()
}

fn delta_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cs_delta_interop.py")
}

async fn run_case(plain: bool) {
    run_script(script(), plain).await;
}

async fn run_script(script: PathBuf, plain: bool) {
    if !proton_available() {
        // proton_available() reported it (a failure in CI).
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    KubeletWriter::new(&cfg)
        .unwrap()
        .write(&BTreeMap::from([
            (
                "json".to_string(),
                r#"{"q1": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"}}"#.to_string(),
            ),
            (
                "flavor.json".to_string(),
                r#"{"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"}}"#.to_string(),
            ),
        ]))
        .unwrap();
    let mut args = Args::for_dir(&cfg);
    let mut extra: Vec<String> = Vec::new();
    if plain {
        let users = dir.path().join("users");
        std::fs::write(&users, "interop:pass-w0rd\n").unwrap();
        args.users_file = Some(users);
        args.sasl_mechanisms = vec!["PLAIN".into()];
        extra = vec!["interop".into(), "pass-w0rd".into()];
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let running = config_service::start(args, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let url = format!("amqp://{}", running.amqp_addr);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(PYTHON)
            .arg(&script)
            .arg(&url)
            .arg(&cfg)
            .args(&extra)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("proton client timed out")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `import proton` worked above, so the script must not skip.
    {
        assert!(
            out.status.success(),
            "proton client failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("ALL OK"), "{stdout}");
        eprintln!("{stdout}");
        if script.ends_with("cs_delta_interop.py") {
            assert!(stdout.contains("OK delta: b1 upserted"), "{stdout}");
        } else {
            assert!(
                stdout.contains("OK unknown source: amqp:not-found"),
                "{stdout}"
            );
        }
        if plain {
            assert!(
                stdout.contains("OK PLAIN wrong password rejected"),
                "{stdout}"
            );
            assert!(stdout.contains("OK PLAIN accepted"), "{stdout}");
        }
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_client_anonymous_snapshots_not_found_and_kubelet_edit() {
    run_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_client_sasl_plain_accepted_and_rejected() {
    run_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_client_asking_for_maas_delta_gets_full_then_a_delta_and_plain_stays_full() {
    run_script(delta_script(), false).await;
}
