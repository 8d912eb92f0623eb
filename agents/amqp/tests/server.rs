//! `maas_amqp::server` with a small application handler: TLS (plain TLS on the socket) + SASL PLAIN from a
//! users file, the handler seeing source address and filter map, refusals, and the server surviving bad clients.
#![allow(clippy::unwrap_used)]

use maas_e2e::support::TestPki;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::{FilterSet, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver, Session};
use maas_amqp::connect::open_connection;
use maas_amqp::options::{ConnectOptions, SaslOptions, Secret, TlsOptions};
use maas_amqp::server::{
    IncomingLink, LinkHandler, SaslConfig, Server, ServerOptions, tls_acceptor,
};
use tokio::sync::oneshot;

/// Accepts source `echo` and sends one message: the filter map as `k=v;` text. Refuses anything else.
struct Echo;

impl LinkHandler for Echo {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        if link.source_address().as_deref() != Some("echo") {
            let name = link.source_address().unwrap_or_default();
            link.refuse(AmqpError::NotFound, format!("no {name:?}"))
                .await;
            return;
        }
        let filter = link.filter_strings().unwrap();
        let user = link.connection().user.clone();
        let text: String = filter
            .iter()
            .map(|(k, v)| format!("{k}={v};"))
            .collect::<String>()
            + &user;
        let mut accepted = link.accept_sender().await.unwrap();
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

async fn receive(
    opts: &ConnectOptions,
    address: &str,
    filter: &[(&str, &str)],
) -> Result<String, String> {
    let mut opened = open_connection(opts).await.map_err(|e| e.to_string())?;
    let mut session = Session::begin(&mut opened.connection)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut source = Source::builder().address(address.to_string());
    if !filter.is_empty() {
        let mut set = FilterSet::new();
        for (k, v) in filter {
            set.insert(Symbol::from(*k), Value::String(v.to_string()));
        }
        source = source.filter(set);
    }
    let mut receiver = Receiver::builder()
        .name("t")
        .source(source.build())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_plain_with_a_handler_seeing_source_and_filter() {
    let Some(pki) = TestPki::create("amqp-server") else {
        return;
    };
    let users = pki.0.join("users");
    std::fs::write(&users, "svc:secret\n").unwrap();
    let mut options = ServerOptions::new("test-server");
    options.sasl = SaslConfig::from_mechanisms(&["PLAIN"], Some(&users)).unwrap();
    options.tls = Some(tls_acceptor(&pki.0.join("server.crt"), &pki.0.join("server.key")).unwrap());
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options, Echo)
        .await
        .unwrap();
    let addr = server.local_addr();
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));

    let mut opts = ConnectOptions::new("127.0.0.1", addr.port());
    opts.tls = Some(TlsOptions {
        ca_file: Some(pki.0.join("ca.crt")),
        ..TlsOptions::default()
    });
    opts.sasl = SaslOptions::Plain {
        username: "svc".into(),
        password: Secret::new("secret"),
    };
    let body = receive(&opts, "echo", &[("app", "broker"), ("tier", "a")])
        .await
        .unwrap();
    assert_eq!(body, "app=broker;tier=a;svc");

    let err = receive(&opts, "other", &[]).await.unwrap_err();
    assert!(err.contains("NotFound") && err.contains("other"), "{err}");

    // Wrong password: SASL failure; then the server still serves.
    let mut wrong = opts.clone();
    wrong.sasl = SaslOptions::Plain {
        username: "svc".into(),
        password: Secret::new("nope"),
    };
    let err = receive(&wrong, "echo", &[]).await.unwrap_err();
    assert!(err.contains("AMQP open failed"), "{err}");
    // Without TLS: the TLS handshake fails on the server side; the server keeps serving.
    let mut plain_tcp = opts.clone();
    plain_tcp.tls = None;
    plain_tcp.connect_timeout = Duration::from_secs(2);
    assert!(receive(&plain_tcp, "echo", &[]).await.is_err());
    assert_eq!(receive(&opts, "echo", &[]).await.unwrap(), "svc");
    assert!(stats.sasl_failures.load(Ordering::Relaxed) >= 1);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.open_connections.load(Ordering::Relaxed), 0);
    assert_eq!(stats.open_links.load(Ordering::Relaxed), 0);
}
