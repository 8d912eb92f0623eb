//! SASL EXTERNAL end to end on 127.0.0.1: our client (TLS client certificate + EXTERNAL) against
//! `maas_amqp::server` verifying client certificates against a client CA. Checks the user the server
//! sees (`x509:sha256:<16 hex>` of the certificate), the one-line errors of impossible set-ups, and
//! that the server grants EXTERNAL only to a connection with a verified certificate.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::types::messaging::Source;
use fe2o3_amqp::{Receiver, Session};
use maas_amqp::connect::open_connection;
use maas_amqp::options::{ConnectOptions, SaslOptions, TlsOptions};
use maas_amqp::server::{
    IncomingLink, LinkHandler, SaslConfig, Server, ServerOptions, ServerStats,
    tls_acceptor_with_client_ca, x509_user,
};
use maas_e2e::support::TestPki;
use tokio::sync::oneshot;

/// Sends one message on any receiving link: `<mechanism> <user>` of the connection.
struct WhoAmI;

impl LinkHandler for WhoAmI {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let text = format!("{} {}", link.connection().mechanism, link.connection().user);
        let Ok(mut accepted) = link.accept_sender().await else {
            return;
        };
        let tracker = accepted.tracker.clone();
        tracker.spawn(async move {
            let scope = accepted.scope.clone();
            tokio::select! {
                () = scope.cancelled() => {}
                _ = accepted.sender.send(text) => {}
            }
            scope.cancelled().await;
        });
    }
}

/// Opens a connection, attaches a receiver to `whoami` and returns the one message it gets.
async fn whoami(opts: &ConnectOptions) -> Result<String, String> {
    let mut opened = open_connection(opts).await.map_err(|e| e.to_string())?;
    let mut session = Session::begin(&mut opened.connection)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut receiver = Receiver::builder()
        .name("whoami")
        .source(Source::builder().address("whoami").build())
        .credit_mode(CreditMode::Auto(5))
        .attach(&mut session)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let d = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<String>())
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let _ = receiver.accept(&d).await;
    let body = d.body().clone();
    let _ = opened.connection.close().await;
    Ok(body)
}

/// Adds to the test PKI: `client.crt`/`client.key` signed by its CA, and `rogue.crt`/`rogue.key`
/// signed by another CA (`rogue-ca.crt`).
fn client_certs(pki: &TestPki) -> bool {
    std::fs::write(pki.0.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    pki.openssl(
        &format!("req {ec} -keyout client.key -out client.csr -subj /CN=router-agent"),
    ) && pki.openssl(
        "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 1 -extfile client.ext",
    ) && pki.openssl(
        &format!(
            "req -x509 {ec} -keyout rogue-ca.key -out rogue-ca.crt -days 1 -subj /CN=rogue-ca"
        ),
    ) && pki.openssl(
        &format!("req {ec} -keyout rogue.key -out rogue.csr -subj /CN=router-agent"),
    ) && pki.openssl(
        "x509 -req -in rogue.csr -CA rogue-ca.crt -CAkey rogue-ca.key -CAcreateserial -out rogue.crt -days 1 -extfile client.ext",
    )
}

/// The DER of the first certificate in a PEM file.
fn cert_der(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let cert = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .next()
        .unwrap()
        .unwrap();
    cert.as_ref().to_vec()
}

struct Running {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.serving)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(self.stats.open_connections.load(Ordering::Relaxed), 0);
    }
}

/// A server verifying client certificates against the test CA, with the given mechanisms.
async fn start(pki: &TestPki, mechanisms: &[&str]) -> Running {
    let (sasl, external) = SaslConfig::from_mechanisms_with_external(mechanisms, None).unwrap();
    let mut options = ServerOptions::new("test-server");
    options.sasl = sasl;
    options.sasl_external = external;
    options.tls = Some(
        tls_acceptor_with_client_ca(
            &pki.0.join("server.crt"),
            &pki.0.join("server.key"),
            &pki.0.join("ca.crt"),
        )
        .unwrap(),
    );
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options, WhoAmI)
        .await
        .unwrap();
    let addr = server.local_addr();
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop,
        serving,
    }
}

fn client(pki: &TestPki, port: u16, cert: Option<&str>, sasl: SaslOptions) -> ConnectOptions {
    let mut opts = ConnectOptions::new("127.0.0.1", port);
    opts.tls = Some(TlsOptions {
        ca_file: Some(pki.0.join("ca.crt")),
        cert_file: cert.map(|c| pki.0.join(format!("{c}.crt"))),
        key_file: cert.map(|c| pki.0.join(format!("{c}.key"))),
        server_name: None,
    });
    opts.sasl = sasl;
    opts.connect_timeout = Duration::from_secs(3);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_with_a_verified_client_certificate_authenticates_as_its_x509_name() {
    let Some(pki) = TestPki::create("amqp-external-ok") else {
        return;
    };
    if !client_certs(&pki) {
        maas_e2e::support::cannot_run("openssl could not create client certificates");
        return;
    }
    let server = start(&pki, &["ANONYMOUS", "EXTERNAL"]).await;
    let expected = x509_user(&cert_der(&pki.0.join("client.crt")));
    assert!(expected.starts_with("x509:sha256:") && expected.len() == 12 + 16);

    let opts = client(
        &pki,
        server.addr.port(),
        Some("client"),
        SaslOptions::External,
    );
    assert_eq!(whoami(&opts).await.unwrap(), format!("EXTERNAL {expected}"));
    // The peer's open frame is still captured (SASL done by us, AMQP by fe2o3).
    let opened = open_connection(&opts).await.unwrap();
    assert_eq!(opened.peer_container_id.as_deref(), Some("test-server"));
    drop(opened);

    // The same server still lets clients without a certificate in with ANONYMOUS.
    let anon = client(&pki, server.addr.port(), None, SaslOptions::Anonymous);
    assert_eq!(whoami(&anon).await.unwrap(), "ANONYMOUS anonymous");
    // A certificate with ANONYMOUS chosen is just ANONYMOUS.
    let anon_with_cert = client(
        &pki,
        server.addr.port(),
        Some("client"),
        SaslOptions::Anonymous,
    );
    assert_eq!(
        whoami(&anon_with_cert).await.unwrap(),
        "ANONYMOUS anonymous"
    );
    assert_eq!(server.stats.sasl_failures.load(Ordering::Relaxed), 0);
    server.stop().await;
}

#[tokio::test]
async fn external_without_a_client_certificate_fails_before_connecting() {
    // Nothing listens on this port: the error must come from the option check, not from TCP.
    let mut opts = ConnectOptions::new("127.0.0.1", 9);
    opts.sasl = SaslOptions::External;
    let err = open_connection(&opts).await.unwrap_err().to_string();
    assert!(
        err.contains("SASL EXTERNAL needs TLS with a client certificate"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    opts.tls = Some(TlsOptions {
        ca_file: Some("/nonexistent/ca.crt".into()),
        ..TlsOptions::default()
    });
    let err = open_connection(&opts).await.unwrap_err().to_string();
    assert!(
        err.contains("SASL EXTERNAL needs TLS with a client certificate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_grants_external_only_with_a_verified_certificate() {
    let Some(pki) = TestPki::create("amqp-external-refused") else {
        return;
    };
    if !client_certs(&pki) {
        maas_e2e::support::cannot_run("openssl could not create client certificates");
        return;
    }
    let server = start(&pki, &["EXTERNAL"]).await;
    let port = server.addr.port();

    // A certificate from another CA: the TLS handshake fails (the server rejects it).
    let rogue = client(&pki, port, Some("rogue"), SaslOptions::External);
    let err = whoami(&rogue).await.unwrap_err();
    assert!(err.contains("cannot connect"), "{err}");

    // No certificate at all: the server does not offer EXTERNAL, so a raw fe2o3 client insisting
    // on EXTERNAL (its own TLS, no client certificate) does not get in.
    let tls = client(&pki, port, None, SaslOptions::Anonymous);
    let ca = std::fs::File::open(pki.0.join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(ca)) {
        roots.add(cert.unwrap()).unwrap();
    }
    maas_amqp::options::install_crypto_provider();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let raw = tokio::time::timeout(
        Duration::from_secs(5),
        fe2o3_amqp::Connection::builder()
            .container_id("raw")
            .scheme("amqps")
            .domain("localhost")
            .rustls_connector(connector)
            .alt_tls_establishment(true)
            .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::External)
            .open_with_stream(tcp),
    )
    .await
    .unwrap();
    assert!(raw.is_err(), "EXTERNAL without a certificate was accepted");
    // Our client with ANONYMOUS on this EXTERNAL-only server: refused, and the error says why not.
    let err = whoami(&tls).await.unwrap_err();
    assert!(err.contains("AMQP open failed"), "{err}");
    assert!(server.stats.accepted_connections.load(Ordering::Relaxed) == 0);

    // Still serving: the right certificate gets in.
    let ok = client(&pki, port, Some("client"), SaslOptions::External);
    let expected = x509_user(&cert_der(&pki.0.join("client.crt")));
    assert_eq!(whoami(&ok).await.unwrap(), format!("EXTERNAL {expected}"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_not_offered_gives_a_clear_error() {
    let Some(pki) = TestPki::create("amqp-external-off") else {
        return;
    };
    if !client_certs(&pki) {
        maas_e2e::support::cannot_run("openssl could not create client certificates");
        return;
    }
    // Client certificates are verified, but EXTERNAL is not among the mechanisms.
    let server = start(&pki, &["ANONYMOUS"]).await;
    let opts = client(
        &pki,
        server.addr.port(),
        Some("client"),
        SaslOptions::External,
    );
    let err = whoami(&opts).await.unwrap_err();
    assert!(
        err.contains("the server does not offer SASL EXTERNAL (it offers: ANONYMOUS)"),
        "{err}"
    );
    server.stop().await;
}

/// Our client against a python3-qpid-proton server (`proton_external_server.py`): TLS with
/// client-certificate verification, SASL EXTERNAL only. Skipped, with a message, when proton is
/// not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_interoperates_with_a_qpid_proton_server() {
    use tokio::io::AsyncBufReadExt;
    let proton = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import proton"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !proton {
        maas_e2e::support::cannot_run("`/usr/bin/python3 -c 'import proton'` failed");
        return;
    }
    let Some(pki) = TestPki::create("amqp-external-proton") else {
        return;
    };
    if !client_certs(&pki) {
        maas_e2e::support::cannot_run("openssl could not create client certificates");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/proton_external_server.py"
    );
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(pki.0.join("server.crt"))
        .arg(pki.0.join("server.key"))
        .arg(pki.0.join("ca.crt"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("proton server did not start within 10 s")
        .unwrap()
        .expect("proton server exited before READY");
    let port: u16 = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .parse()
        .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let opts = client(&pki, port, Some("client"), SaslOptions::External);
    let got = whoami(&opts).await.unwrap();
    assert!(
        got.starts_with("EXTERNAL ") && got.contains("CN=router-agent"),
        "{got}"
    );
    // Without EXTERNAL the proton server (EXTERNAL only) refuses us.
    let anon = client(&pki, port, Some("client"), SaslOptions::Anonymous);
    assert!(whoami(&anon).await.is_err());
    let _ = child.kill().await;
}
