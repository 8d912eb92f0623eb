//! Secrets stay in their files (docs/architecture.md §7): the `config-service` binary serves SASL PLAIN with a
//! users file holding a known password, and neither its logs (debug level), `/readyz`, `/metrics`, `/healthz`, nor
//! what a refused client sees shows it: a right login (a snapshot received), a wrong password, the password given
//! for an unknown user, the password typed as user name, ANONYMOUS; and a users file that does not parse (the error names the line, not its text).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Session};
use maas_e2e::support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_config-service");
const USER: &str = "maas-router";
const PASSWORD: &str = "Kn0wn-C0nfig-Serv1ce-Pa55";
const TIMEOUT: Duration = Duration::from_secs(5);

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the password:\n{text}"
    );
}

fn addresses(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("json"),
        r#"{"orders": {"store_and_forward": true, "multicast": false, "flavor": "v"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("flavor.json"), r#"{"v": {"type": "queue"}}"#).unwrap();
}

fn spawn(addrs: &Path, users: &Path, amqp: u16, http: u16) -> Child {
    Command::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{amqp}"),
            "--addresses-dir",
            addrs.to_str().unwrap(),
            "--sasl-mechanisms",
            "PLAIN",
            "--users-file",
            users.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "text")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(child: Child) -> Output {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait_with_output().unwrap()
}

/// Opens a connection with `sasl` and receives the first `v1/addresses` snapshot; the error text otherwise.
async fn snapshot(url: &str, sasl: SaslProfile) -> Result<String, String> {
    let attempt = async {
        let mut c = Connection::builder()
            .container_id("secrets-test")
            .sasl_profile(sasl)
            .open(url)
            .await
            .map_err(|e| format!("{e} {e:?}"))?;
        let mut s = Session::begin(&mut c)
            .await
            .map_err(|e| format!("{e} {e:?}"))?;
        let mut r = Receiver::builder()
            .name("secrets-test-addresses")
            .source(Source::builder().address("v1/addresses").build())
            .auto_accept(true)
            .attach(&mut s)
            .await
            .map_err(|e| format!("{e} {e:?}"))?;
        let d = r
            .recv::<Body<Value>>()
            .await
            .map_err(|e| format!("{e} {e:?}"))?;
        let text = format!("{:?}", d.message());
        let _ = r.close().await;
        let _ = s.end().await;
        let _ = c.close().await;
        Ok::<_, String>(text)
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

fn plain(user: &str, password: &str) -> SaslProfile {
    SaslProfile::Plain {
        username: user.to_string(),
        password: password.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_password_appears_in_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
    addresses(&addrs);
    let users = dir.path().join("users");
    std::fs::write(&users, format!("# the routers\n{USER}:{PASSWORD}\n")).unwrap();
    let (amqp, http) = (free_port(), free_port());
    let child = spawn(&addrs, &users, amqp, http);

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15)
        && !matches!(http_get(http, "/readyz"), Some((200, _)))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(http_get(http, "/readyz"), Some((200, _))),
        "{:?}",
        http_get(http, "/readyz")
    );
    let url = format!("amqp://127.0.0.1:{amqp}");

    // The right login gets the snapshot.
    let mut got = Err(String::new());
    for _ in 0..50 {
        got = snapshot(&url, plain(USER, PASSWORD)).await;
        if got.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.unwrap();
    assert!(got.contains("orders"), "{got}");
    assert_clean("the snapshot", &got);

    // Refused logins: what the client sees never carries the password, and neither do the logs — also when a
    // client types the password into the user name field (a name that is no user is not logged).
    for (what, sasl) in [
        (
            "a wrong password",
            plain(USER, &format!("{PASSWORD}-wrong")),
        ),
        ("an unknown user", plain("mallory", PASSWORD)),
        ("the password as user name", plain(PASSWORD, "x")),
        ("ANONYMOUS", SaslProfile::Anonymous),
    ] {
        let err = snapshot(&url, sasl).await.unwrap_err();
        assert_clean(what, &err);
    }

    for path in ["/readyz", "/metrics", "/healthz"] {
        let (_, body) = http_get(http, path).unwrap();
        assert_clean(path, &body);
    }
    let out = stop(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_clean("stdout", &String::from_utf8_lossy(&out.stdout));
    assert_clean("logs", &stderr);
    // The logs did record the refusals (so the check above looked at the failure path), but not the password.
    assert!(!stderr.trim().is_empty(), "no logs at debug level");
    assert!(
        stderr.contains("SASL authentication failed") && stderr.contains(USER),
        "a known user's failed login is logged with the name: {stderr}"
    );
}

#[test]
fn a_users_file_that_does_not_parse_is_named_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = dir.path().join("addresses");
    addresses(&addrs);
    // A line without `:`: the whole line would be the password if it were shown.
    let users = dir.path().join("users");
    std::fs::write(&users, format!("{USER}:ok\n{PASSWORD}\n")).unwrap();
    let out = Command::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--addresses-dir",
            addrs.to_str().unwrap(),
            "--sasl-mechanisms",
            "PLAIN",
            "--users-file",
            users.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("line 2"), "the error names the line: {text}");
    assert_clean("the users file error", &text);
}
