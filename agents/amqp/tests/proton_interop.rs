//! Interop of `RouterClient` with a python3-qpid-proton `$management` responder
//! (`e2e/python/mgmt_responder.py`) that answers like qdrouterd 1.19 and checks the exact AMQP
//! types of every request (str properties, uint offset, ulong count, dict bodies, reply-to = the
//! dynamic address). Skipped, with a message, only when `python3 -c 'import proton'` fails.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::Stdio;
use std::time::{Duration, Instant};

use maas_amqp::router::MANAGEMENT_TYPE;
use maas_amqp::{ClientConfig, ConnectOptions, MgmtError, RouterClient};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PYTHON: &str = "/usr/bin/python3";
const ADDRESS: &str = "org.apache.qpid.dispatch.router.config.address";

fn proton_available() -> bool {
    maas_e2e::support::proton_available()
}

/// The spawned python responder; killed by its PID when dropped.
struct Responder {
    child: Child,
    port: u16,
}

impl Responder {
    async fn spawn(preload: usize) -> Responder {
        Self::spawn_with(preload, &[]).await
    }

    async fn spawn_with(preload: usize, extra: &[&str]) -> Responder {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../e2e/python/mgmt_responder.py"
        );
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg("0")
            .arg("--preload")
            .arg(preload.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("responder did not start within 10 s")
            .unwrap()
            .expect("responder exited before READY");
        let port = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .parse()
            .unwrap();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Responder { child, port }
    }

    fn options(&self) -> ConnectOptions {
        ConnectOptions::from_url(&format!("amqp://127.0.0.1:{}", self.port)).unwrap()
    }

    async fn client(&self, cfg: ClientConfig) -> RouterClient {
        // The listener may need a moment after READY.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match RouterClient::connect(&self.options(), cfg).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying connect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot connect to the responder: {e}"),
            }
        }
    }

    /// Kills the process (by its PID) and waits for it.
    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn attrs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

async fn mismatches(client: &RouterClient) -> Value {
    client
        .call("MAAS-MISMATCHES", MANAGEMENT_TYPE, "self", &[], Map::new())
        .await
        .unwrap()
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_query_paging_and_errors_match_the_wire_contract() {
    if !proton_available() {
        return;
    }
    let mut responder = Responder::spawn(1200).await;
    let client = responder.client(ClientConfig::default()).await;

    let props = client.peer_properties().expect("open frame properties");
    assert_eq!(props.get("product"), Some(&json!("qpid-dispatch-router")));
    assert_eq!(props.get("version"), Some(&json!("1.19.0")));
    assert_eq!(client.peer_container_id(), Some("Router.A"));
    assert!(
        client
            .reply_to()
            .starts_with("amqp:/_topo/0/Router.A/temp."),
        "{}",
        client.reply_to()
    );

    // CREATE -> 201 with the stored entity.
    let created = client
        .create(
            ADDRESS,
            "maas-a",
            attrs(json!({"prefix": "maas-a", "distribution": "closest", "waypoint": false})),
        )
        .await
        .unwrap();
    assert_eq!(created["name"], json!("maas-a"));
    assert_eq!(created["prefix"], json!("maas-a"));
    assert_eq!(created["distribution"], json!("closest"));
    assert_eq!(created["priority"], json!(-1));
    assert!(created["identity"].is_string());

    // READ -> 200; missing -> None.
    let read = client.read(ADDRESS, "maas-a").await.unwrap().unwrap();
    assert_eq!(read, created);
    assert_eq!(client.read(ADDRESS, "maas-missing").await.unwrap(), None);

    // 400s: duplicate name, short type name.
    let dup = client
        .create(ADDRESS, "maas-a", attrs(json!({"prefix": "other"})))
        .await
        .unwrap_err();
    assert_eq!(dup.status_code(), Some(400));
    assert!(
        dup.to_string()
            .contains("Name conflicts with an existing entity"),
        "{dup}"
    );
    assert_eq!(dup.metric_label(), "bad_request");
    let short = client
        .create("address", "maas-b", attrs(json!({"prefix": "maas-b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&short, MgmtError::Status { code: 400, description, .. } if description == "No such entity type 'address'"),
        "{short:?}"
    );

    // QUERY: 1,201 rows need three pages of 500.
    let rows = client.query(ADDRESS, &["name", "prefix"]).await.unwrap();
    assert_eq!(rows.len(), 1201);
    assert!(
        rows.iter()
            .all(|r| r.len() == 2 && r.contains_key("name") && r.contains_key("prefix"))
    );
    let names: std::collections::HashSet<_> = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 1201);
    assert!(names.contains("maas-a") && names.contains("pre-00000") && names.contains("pre-01199"));
    let page = client
        .query_page(ADDRESS, &["name"], 1000, 500)
        .await
        .unwrap();
    assert_eq!(page.attribute_names, vec!["name"]);
    assert_eq!(page.rows.len(), 201);
    assert_eq!(page.rows[0], vec![json!("pre-01000")]);
    // No attribute names: the router returns all of them.
    let all = client.query_page(ADDRESS, &[], 0, 1).await.unwrap();
    assert!(
        all.attribute_names.iter().any(|a| a == "distribution"),
        "{:?}",
        all.attribute_names
    );
    assert_eq!(all.rows[0].len(), all.attribute_names.len());
    let unknown = client
        .query("org.apache.qpid.dispatch.nosuch", &[])
        .await
        .unwrap_err();
    assert_eq!(unknown.status_code(), Some(400));

    // DELETE -> 204; again -> 404.
    client.delete(ADDRESS, "maas-a").await.unwrap();
    let again = client.delete(ADDRESS, "maas-a").await.unwrap_err();
    assert_eq!(again.status_code(), Some(404));
    assert_eq!(again.metric_label(), "not_found");
    assert_eq!(client.read(ADDRESS, "maas-a").await.unwrap(), None);

    // Management node operations.
    assert_eq!(
        client.get_mgmt_nodes().await.unwrap(),
        json!(["amqp:/_topo/0/Router.A/$management"])
    );
    assert!(
        client
            .get_operations()
            .await
            .unwrap()
            .get(ADDRESS)
            .is_some()
    );
    assert!(client.get_types().await.unwrap().get(ADDRESS).is_some());

    let report = mismatches(&client).await;
    assert_eq!(
        report["count"],
        json!(0),
        "responder saw wrong request types: {report}"
    );
    assert!(report["requests"].as_u64().unwrap() >= 14);
    assert_eq!(client.in_flight(), 0);

    client.close().await;
    responder.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responder_catches_wrong_types() {
    if !proton_available() {
        return;
    }
    let mut responder = Responder::spawn(0).await;
    let client = responder.client(ClientConfig::default()).await;
    // A QUERY with offset/count as strings (as a careless client would send) must be refused,
    // proving the responder's type checks are not vacuous.
    let err = client
        .call(
            "QUERY",
            MANAGEMENT_TYPE,
            "self",
            &[("entityType", ADDRESS), ("offset", "0"), ("count", "500")],
            attrs(json!({"attributeNames": []})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MgmtError::Status { code: 400, description, .. } if description.contains("offset") && description.contains("want uint")),
        "{err:?}"
    );
    assert_eq!(mismatches(&client).await["count"], json!(1));
    client.close().await;
    responder.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_update_times_out_and_the_client_keeps_working() {
    if !proton_available() {
        return;
    }
    let mut responder = Responder::spawn(0).await;
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let client = responder.client(cfg).await;
    let started = Instant::now();
    let err = client
        .update(ADDRESS, "x", attrs(json!({"distribution": "closest"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MgmtError::Timeout { operation, after, .. } if operation == "UPDATE" && *after == Duration::from_millis(500)),
        "{err:?}"
    );
    // One unanswered request is not a lost connection.
    assert!(!err.is_connection_error());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        client.in_flight(),
        0,
        "the timed-out request must leave the pending map"
    );
    assert!(!client.is_closed());
    client
        .create(
            ADDRESS,
            "after-timeout",
            attrs(json!({"prefix": "after-timeout"})),
        )
        .await
        .unwrap();
    assert_eq!(mismatches(&client).await["count"], json!(0));
    client.close().await;
    responder.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_fail_with_disconnected_when_the_peer_dies() {
    if !proton_available() {
        return;
    }
    let mut responder = Responder::spawn(0).await;
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let client = responder.client(cfg).await;
    let mut waiting = Vec::new();
    for i in 0..10 {
        let c = client.clone();
        waiting.push(tokio::spawn(async move {
            c.update(ADDRESS, &format!("u{i}"), Map::new()).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.in_flight() < 10 {
        assert!(Instant::now() < deadline, "requests never went out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    responder.kill().await;
    for w in waiting {
        let res = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("pending request not failed within 5 s of the peer dying")
            .unwrap();
        let err = res.unwrap_err();
        assert!(matches!(err, MgmtError::Disconnected(_)), "{err:?}");
    }
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(1), client.closed())
        .await
        .expect("closed() did not resolve");
    assert!(client.is_closed());
    assert!(client.close_reason().is_some());
    let late = client.read(ADDRESS, "x").await.unwrap_err();
    assert!(matches!(late, MgmtError::Disconnected(_)), "{late:?}");
    assert!(late.is_connection_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_burst_of_2000_creates_with_window_250() {
    if !proton_available() {
        return;
    }
    let mut responder = Responder::spawn(0).await;
    let client = responder
        .client(ClientConfig {
            window: 250,
            ..ClientConfig::default()
        })
        .await;
    // Sample how many requests are in flight: pipelined (> 1) but never above the window.
    let burst_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let c = client.clone();
        let done = burst_done.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(c.in_flight());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            max
        })
    };
    let started = Instant::now();
    let results = futures_util::future::join_all((0..2000).map(|i| {
        let c = client.clone();
        async move {
            let name = format!("burst-{i:04}");
            c.create(
                ADDRESS,
                &name,
                attrs(json!({"prefix": name, "distribution": "balanced"})),
            )
            .await
        }
    }))
    .await;
    let elapsed = started.elapsed();
    burst_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    eprintln!("2000 pipelined CREATEs against python-proton in {elapsed:?}");
    let max_in_flight = sampler.await.unwrap();
    assert!(
        (2..=250).contains(&max_in_flight),
        "max in flight {max_in_flight}"
    );
    let rows = client.query(ADDRESS, &["name"]).await.unwrap();
    assert_eq!(rows.len(), 2000);
    assert_eq!(mismatches(&client).await["count"], json!(0));
    assert_eq!(client.in_flight(), 0);
    client.close().await;
    responder.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_clone() {
    if !proton_available() {
        return;
    }
    let mut responder = Responder::spawn(0).await;
    let client = responder.client(ClientConfig::default()).await;
    let clone = client.clone();
    client.close().await;
    tokio::time::timeout(Duration::from_secs(2), clone.closed())
        .await
        .expect("clone not closed");
    let err = clone.read(ADDRESS, "x").await.unwrap_err();
    assert!(matches!(err, MgmtError::Disconnected(_)), "{err:?}");
    responder.kill().await;
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_fast_with_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let opts = ConnectOptions::from_url(&format!("amqp://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = RouterClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MgmtError::Connect(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.is_connection_error());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connect_times_out_against_a_silent_peer() {
    // A listener that accepts TCP but never speaks AMQP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut opts = ConnectOptions::from_url(&format!("amqp://127.0.0.1:{port}")).unwrap();
    opts.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = RouterClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    hold.abort();
}

/// A throw-away CA and a server certificate for `localhost` / 127.0.0.1 made with `openssl`.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn create(tag: &str) -> Option<Pki> {
        let dir = std::env::temp_dir().join(format!("maas-amqp-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ok = run(&[
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=maas-test-ca",
            ][..],
        ]
        .concat())
            && run(&[
                &["req"][..],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ][..],
            ]
            .concat())
            && run(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "1",
                "-extfile",
                "san.ext",
            ])
            && run(&[
                &["req", "-x509"][..],
                &ec[..],
                &[
                    "-keyout",
                    "other.key",
                    "-out",
                    "other-ca.crt",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=other-ca",
                ][..],
            ]
            .concat());
        if !ok {
            maas_e2e::support::cannot_run("openssl could not create test certificates");
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        Some(Pki { dir })
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_works_and_a_wrong_ca_is_refused() {
    if !proton_available() {
        return;
    }
    let Some(pki) = Pki::create("ok") else { return };
    let mut responder = Responder::spawn_with(
        0,
        &["--tls", &pki.path("server.crt"), &pki.path("server.key")],
    )
    .await;
    let mut opts =
        ConnectOptions::from_url(&format!("amqps://127.0.0.1:{}", responder.port)).unwrap();
    assert!(opts.tls.is_some());
    // Without a CA file: a clear refusal, not a silent trust-all.
    let err = RouterClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CA file"), "{err}");
    // A CA that did not sign the server certificate.
    opts.tls = Some(maas_amqp::TlsOptions {
        ca_file: Some(pki.path("other-ca.crt").into()),
        ..Default::default()
    });
    let err = RouterClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MgmtError::Connect(_)) && err.to_string().contains("TLS handshake failed"),
        "{err}"
    );
    // The right CA; the certificate names 127.0.0.1 and localhost.
    opts.tls = Some(maas_amqp::TlsOptions {
        ca_file: Some(pki.path("ca.crt").into()),
        ..Default::default()
    });
    let client = RouterClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap();
    client
        .create(ADDRESS, "over-tls", attrs(json!({"prefix": "over-tls"})))
        .await
        .unwrap();
    assert_eq!(
        client.peer_properties().unwrap()["product"],
        json!("qpid-dispatch-router")
    );
    assert_eq!(mismatches(&client).await["count"], json!(0));
    client.close().await;
    // server_name overrides the host for verification: a name not in the certificate fails.
    opts.tls = Some(maas_amqp::TlsOptions {
        ca_file: Some(pki.path("ca.crt").into()),
        server_name: Some("wrong.example".into()),
        ..Default::default()
    });
    let err = RouterClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    responder.kill().await;
}
