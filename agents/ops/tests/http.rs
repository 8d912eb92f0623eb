//! The ops HTTP surface, spoken to with raw HTTP/1.1 over a TcpStream.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use maas_ops::{Health, HttpServer, METRICS_CONTENT_TYPE};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    tokio::time::timeout(TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
    .expect("HTTP request timed out")
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(health: Health, registry: Registry) -> Running {
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), health, Arc::new(registry))
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = start(Health::new(), Registry::default()).await;
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
}

#[tokio::test]
async fn readyz_starts_unready_and_follows_health() {
    let health = Health::new();
    let server = start(health.clone(), Registry::default()).await;

    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "not ready: starting");

    health.set_ready("generation 1 applied");
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ready: generation 1 applied");

    health.set_not_ready("router unreachable");
    let reply = get(server.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "not ready: router unreachable");
    // Liveness does not depend on readiness.
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn metrics_serve_the_registry_as_openmetrics_text() {
    let mut registry = Registry::with_prefix("maas");
    let ops: Counter = Counter::default();
    registry.register(
        "management_operations",
        "Management operations sent",
        ops.clone(),
    );
    ops.inc_by(3);
    let server = start(Health::new(), registry).await;

    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(METRICS_CONTENT_TYPE));
    assert_eq!(
        METRICS_CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        reply
            .body
            .contains("# TYPE maas_management_operations counter"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("maas_management_operations_total 3"),
        "{}",
        reply.body
    );
    assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);

    // Live values, not a copy taken at bind time.
    ops.inc();
    let reply = get(server.addr, "/metrics").await;
    assert!(
        reply.body.contains("maas_management_operations_total 4"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let server = start(Health::new(), Registry::default()).await;
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    assert_eq!(request(server.addr, "POST", "/healthz").await.status, 405);
}

#[tokio::test]
async fn serve_returns_when_the_shutdown_future_resolves() {
    let mut server = start(Health::new(), Registry::default()).await;
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    // An idle keep-alive connection must not hold the shutdown up.
    let idle = TcpStream::connect(server.addr).await.unwrap();

    server.stop.take().unwrap().send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(3), &mut server.task)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    assert!(result.is_ok());
    drop(idle);
    // The listener is closed: nothing accepts on that port any more.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn binding_a_port_in_use_fails() {
    let server = start(Health::new(), Registry::default()).await;
    let err = HttpServer::bind(server.addr, Health::new(), Arc::new(Registry::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn a_stuck_client_cannot_hold_shutdown_forever() {
    let mut server = start(Health::new(), Registry::default()).await;
    // Half a request, never finished.
    let mut stuck = TcpStream::connect(server.addr).await.unwrap();
    stuck.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    server.stop.take().unwrap().send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(8), &mut server.task)
        .await
        .expect("serve did not return within the drain timeout")
        .unwrap();
    assert!(result.is_ok());
    drop(stuck);
}
