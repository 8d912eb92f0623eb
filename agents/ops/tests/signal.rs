//! `shutdown_signal` resolves on SIGTERM and on SIGINT. Its own test binary: it signals this very process.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::time::Duration;

use maas_ops::shutdown_signal;

fn send(signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

async fn resolves_on(signal: &str) {
    let waiting = tokio::spawn(shutdown_signal());
    // Let the task run far enough to install its handlers before the signal is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "resolved before any signal");
    send(signal);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap_or_else(|_| panic!("shutdown_signal did not resolve on SIG{signal}"))
        .unwrap();
}

// One test function, so the two signals are sent strictly one after the other.
#[tokio::test]
async fn resolves_on_sigterm_then_on_sigint() {
    resolves_on("TERM").await;
    resolves_on("INT").await;
}
