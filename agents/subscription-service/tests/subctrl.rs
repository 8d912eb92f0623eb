//! `$subctrl` end to end: the `subscription-service` binary with `--router-url` pointing at a small fe2o3 AMQP
//! peer standing in for the router (no router emulator speaks messaging). The peer does what qdrouterd does for
//! the balanced address `$subctrl` (docs/architecture.md §5): it hands the service's `$subctrl` receiver the
//! requests the test sends and passes the service's disposition back to the test as the request's outcome
//! (accepted, or rejected with the condition and description a client would see), and it takes the service's
//! `list` replies on a link to the request's reply-to address. What the test checks is what a client and an
//! operator see: outcomes, the reply, the subscriptions file, the address directory still valid for every maas
//! binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{OrderedMap, Value};
use maas_amqp::server::{AcceptedSender, IncomingLink, LinkHandler, Server, ServerOptions};
use maas_model::AddressKind;
use tokio::sync::mpsc;

/// The stand-in router: `$subctrl` receivers go to the test, sending links' messages too (with their target).
struct Peer {
    subctrl: mpsc::UnboundedSender<AcceptedSender>,
    replies: mpsc::UnboundedSender<(String, Message<Body<Value>>)>,
}

impl LinkHandler for Peer {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        if link.peer_receives() {
            if link.source_address().as_deref() == Some("$subctrl") {
                if let Ok(s) = link.accept_sender().await {
                    let _ = self.subctrl.send(s);
                }
            } else {
                link.refuse(AmqpError::NotFound, "no such node".into())
                    .await;
            }
            return;
        }
        let target = link.target_address().unwrap_or_default();
        if let Ok(mut r) = link.accept_receiver(10).await {
            let tx = self.replies.clone();
            let tracker = r.tracker.clone();
            tracker.spawn(async move {
                let _guard = r.guard;
                loop {
                    tokio::select! {
                        () = r.scope.cancelled() => break,
                        d = r.receiver.recv::<Body<Value>>() => match d {
                            Ok(d) => {
                                let _ = r.receiver.accept(&d).await;
                                let _ = tx.send((target.clone(), d.into_message()));
                            }
                            Err(_) => break,
                        }
                    }
                }
            });
        }
    }
}

fn request(subject: &str, id: &str, body: Value, reply_to: Option<&str>) -> Message<Body<Value>> {
    let mut p = Properties::builder()
        .subject(subject.to_string())
        .correlation_id(id.to_string())
        .build();
    p.reply_to = reply_to.map(str::to_string);
    Message::builder()
        .properties(p)
        .body(Body::Value(AmqpValue(body)))
        .build()
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

/// Sends a request; Ok(()) when accepted, Err((condition, description)) when rejected.
async fn ask(link: &mut AcceptedSender, m: Message<Body<Value>>) -> Result<(), (String, String)> {
    let outcome = tokio::time::timeout(Duration::from_secs(10), link.sender.send(m))
        .await
        .expect("an outcome within 10 s")
        .unwrap();
    match outcome {
        Outcome::Accepted(_) => Ok(()),
        Outcome::Rejected(r) => {
            let e = r.error.unwrap();
            let condition = match e.condition {
                ErrorCondition::AmqpError(a) => format!("{a:?}"),
                other => format!("{other:?}"),
            };
            Err((condition, e.description.unwrap_or_default()))
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// The subscriptions the directory holds for the rest of maas: name -> topic.
fn subscriptions(dir: &std::path::Path) -> BTreeMap<String, String> {
    let config = maas_source::load_file_config(dir, None).unwrap();
    config
        .addresses
        .iter()
        .filter(|a| a.kind == AddressKind::Subscription)
        .map(|a| (a.address.clone(), a.topic.clone().unwrap()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_list_unsubscribe_and_close_round_trip_through_the_subscriptions_file() {
    let (subctrl_tx, mut subctrl_rx) = mpsc::unbounded_channel();
    let (replies_tx, mut replies_rx) = mpsc::unbounded_channel();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerOptions::new("Router.Test"),
        Peer {
            subctrl: subctrl_tx,
            replies: replies_tx,
        },
    )
    .await
    .unwrap();
    let url = format!("amqp://{}", server.local_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    let serving = tokio::spawn(server.serve(async move { s2.cancelled().await }));

    let dir = common::workdir();
    let addresses = dir.path().join("addresses");
    std::fs::write(
        addresses.join("json"),
        r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"},
            "sports": {"store_and_forward": true, "multicast": true, "flavor": "t"},
            "orders": {"store_and_forward": true, "multicast": false, "flavor": "t"}}"#,
    )
    .unwrap();
    let brokers = dir.path().join("brokers.json");
    std::fs::write(&brokers, "{}").unwrap();
    let mut c = common::command(dir.path(), &brokers, &["--router-url", &url]);
    c.stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();

    let mut link = tokio::time::timeout(Duration::from_secs(20), subctrl_rx.recv())
        .await
        .expect("the service attaches to $subctrl")
        .unwrap();

    // subscribe: one topic -> subscription named after the subscriber.
    ask(&mut link, request("subscribe", "c1", s("news"), None))
        .await
        .unwrap();
    assert_eq!(subscriptions(&addresses), pairs(&[("c1", "news")]));
    // Several topics (a map topic -> tag) -> <id>.<topic> each.
    let mut map = OrderedMap::new();
    map.insert(s("news"), s("tag-1"));
    map.insert(s("sports"), s("tag-2"));
    ask(&mut link, request("subscribe", "c2", Value::Map(map), None))
        .await
        .unwrap();
    assert_eq!(
        subscriptions(&addresses),
        pairs(&[("c1", "news"), ("c2.news", "news"), ("c2.sports", "sports")])
    );
    // The same again: accepted, nothing changes.
    ask(&mut link, request("subscribe", "c1", s("news"), None))
        .await
        .unwrap();

    // Refusals a client can read.
    let (condition, description) = ask(&mut link, request("subscribe", "c3", s("weather"), None))
        .await
        .unwrap_err();
    assert_eq!(condition, "NotFound");
    assert_eq!(description, "no topic \"weather\"");
    let (condition, description) = ask(&mut link, request("subscribe", "c3", s("orders"), None))
        .await
        .unwrap_err();
    assert_eq!(
        (condition.as_str(), description.as_str()),
        ("NotFound", "no topic \"orders\": it is a queue address")
    );
    let (condition, description) = ask(&mut link, request("subscribe", "c1", s("sports"), None))
        .await
        .unwrap_err();
    assert_eq!(condition, "PreconditionFailed");
    assert!(
        description.contains("exists already, on topic \"news\""),
        "{description}"
    );
    let (condition, _) = ask(&mut link, request("launch", "c1", s("news"), None))
        .await
        .unwrap_err();
    assert_eq!(condition, "PreconditionFailed");

    // list: the reply goes to reply-to with the request's correlation-id.
    ask(
        &mut link,
        request("list", "c2", Value::Null, Some("replies/c2")),
    )
    .await
    .unwrap();
    let (to, reply) = tokio::time::timeout(Duration::from_secs(10), replies_rx.recv())
        .await
        .expect("a list reply")
        .unwrap();
    assert_eq!(to, "replies/c2");
    let props = reply.properties.unwrap();
    assert_eq!(props.subject.as_deref(), Some("subscriptions"));
    assert_eq!(
        props.correlation_id,
        Some(fe2o3_amqp::types::messaging::MessageId::String("c2".into()))
    );
    let Body::Value(AmqpValue(Value::Map(m))) = reply.body else {
        panic!("list reply body is not a map")
    };
    let listed: BTreeMap<String, String> = m
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::String(k), Value::String(v)) => (k, v),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        listed,
        pairs(&[("news", "c2.news"), ("sports", "c2.sports")])
    );

    // unsubscribe one topic, then close the subscriber.
    ask(
        &mut link,
        request("unsubscribe", "c2", Value::List(vec![s("news")]), None),
    )
    .await
    .unwrap();
    assert_eq!(
        subscriptions(&addresses),
        pairs(&[("c1", "news"), ("c2.sports", "sports")])
    );
    ask(&mut link, request("close", "c2", Value::Null, None))
        .await
        .unwrap();
    assert_eq!(subscriptions(&addresses), pairs(&[("c1", "news")]));

    // The team removes topic `news`: its subscription leaves the file, so the directory stays valid for every
    // maas binary (a subscription on a missing topic would make the whole directory invalid).
    std::fs::write(
        addresses.join("json"),
        r#"{"sports": {"store_and_forward": true, "multicast": true, "flavor": "t"}}"#,
    )
    .unwrap();
    let started = Instant::now();
    while maas_source::load_file_config(&addresses, None).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the orphaned subscription was not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subscriptions(&addresses), BTreeMap::new());

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    drop(link);
    stop.cancel();
    let _ = serving.await;
}
