//! Messaging on the broker emulator, against what docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt
//! records of a real Artemis 2.21 (cited per test as `DST §n`) and, where no transcript shows the behaviour, the
//! entries of e2e/GUESSES.md (cited as `guess #n`):
//! - MULTICAST fan-out to every queue bound to an address; createQueue with `user`; getUser, isDurable,
//!   getAddress, getRoutingType, getMessageCount and listQueues rows (DST §4, §5);
//! - durable subscription queues `<container-id>.<link-name>` made on attach, kept across detach, filling while
//!   detached (DST §1), with fe2o3 and with python3-qpid-proton (the recorded client);
//! - fully qualified queue names `T::S` to receive (DST §4: the broker saw `t1::s1`) and to send (guess #48) —
//!   moving a subscription's messages from one broker pod to another;
//! - at-least-once delivery: released messages come back first, unsettled ones come back when the link goes,
//!   getMessageCount counts delivered-but-unsettled messages (guess #47; Artemis' QueueImpl.getMessageCount);
//! - auto-creation on attach (router-to-artemis.txt:205 and guess #38);
//! - restart keeps durable queues' messages (guess #41).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use fe2o3_amqp::link::{CreditMode, RecvError};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties, Source,
    TerminusDurability, TerminusExpiryPolicy,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{ArtemisClient, ClientConfig, QueueConfig, RoutingType};
use maas_amqp::connect::{Opened, open_connection};
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use maas_e2e::support::wait_until;
use serde_json::{Value as Json, json};

/// DST §5: the listQueues row recorded for queue s1 of topic t1 after 5 messages were published and consumed.
const RECORDED_ROW: &str = r#"{"id": "1733", "name": "s1", "address": "t1", "filter": "", "durable": "true", "paused": "false", "temporary": "false", "purgeOnNoConsumers": "false", "consumerCount": "0", "maxConsumers": "-1", "autoCreated": "false", "user": "maas-storage-controller", "routingType": "MULTICAST", "messagesAdded": "5", "messageCount": "0", "messagesAcked": "5", "messagesExpired": "0", "deliveringCount": "0", "messagesKilled": "0", "directDeliver": "false", "exclusive": "false", "lastValue": "false", "lastValueKey": "", "scheduledCount": "0", "groupRebalance": "false", "groupRebalancePauseDispatch": "false", "groupBuckets": "-1", "groupFirstKey": "", "enabled": "true", "ringSize": "-1", "consumersBeforeDispatch": "0", "delayBeforeDispatch": "-1"}"#;

const OWNER: &str = "maas-storage-controller";

async fn broker() -> BrokerEmulator {
    BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel::none(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap()
}

async fn client(b: &BrokerEmulator) -> ArtemisClient {
    let opts = ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap();
    ArtemisClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap()
}

/// An AMQP connection (SASL PLAIN admin/admin) whose `open` frame carries `container_id`, and a session.
async fn connect(b: &BrokerEmulator, container_id: &str) -> (Opened, SessionHandle<()>) {
    let mut opts = ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap();
    opts.container_id = container_id.to_string();
    let mut opened = open_connection(&opts).await.unwrap();
    let session = Session::begin(&mut opened.connection).await.unwrap();
    (opened, session)
}

/// A message with an amqp-value string body, a message-id and an application property.
fn message(body: &str) -> Message<Body<Value>> {
    Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String(format!("id-{body}"))),
            ..Default::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("origin", SimpleValue::String("test".into()))
                .build(),
        )
        .body(Body::Value(AmqpValue(Value::String(body.to_string()))))
        .build()
}

fn body_of(m: &Message<Body<Value>>) -> String {
    match &m.body {
        Body::Value(AmqpValue(Value::String(s))) => s.clone(),
        other => panic!("unexpected body {other:?}"),
    }
}

async fn publish(session: &mut SessionHandle<()>, address: &str, bodies: &[&str]) {
    let mut sender = Sender::attach(session, format!("pub-{address}-{}", bodies.len()), address)
        .await
        .unwrap();
    for b in bodies {
        sender.send(message(b)).await.unwrap();
    }
    sender.close().await.unwrap();
}

async fn receiver(
    session: &mut SessionHandle<()>,
    name: &str,
    source: impl Into<Source>,
    credit: u32,
) -> Receiver {
    let mut r = Receiver::builder()
        .name(name)
        .source(source)
        .credit_mode(CreditMode::Manual)
        .attach(session)
        .await
        .unwrap();
    r.set_credit(credit).await.unwrap();
    r
}

fn durable_source(address: &str) -> Source {
    Source::builder()
        .address(address)
        .durable(TerminusDurability::UnsettledState)
        .expiry_policy(TerminusExpiryPolicy::Never)
        .build()
}

async fn recv(r: &mut Receiver) -> fe2o3_amqp::link::delivery::Delivery<Body<Value>> {
    tokio::time::timeout(Duration::from_secs(5), r.recv::<Body<Value>>())
        .await
        .expect("a delivery within 5 s")
        .unwrap()
}

/// Nothing arrives within `ms`.
async fn nothing(r: &mut Receiver, ms: u64) {
    let got: Result<Result<_, RecvError>, _> =
        tokio::time::timeout(Duration::from_millis(ms), r.recv::<Body<Value>>()).await;
    assert!(
        got.is_err(),
        "unexpected delivery {:?}",
        got.map(|d| d.map(|d| body_of(d.message())))
    );
}

/// `listQueues` filtered on `address` EQUALS `value`, page 1, size 50 (DST §5): the raw reply text.
async fn list_queues_text(c: &ArtemisClient, address: &str) -> String {
    let filter = json!({"field": "address", "operation": "EQUALS", "value": address}).to_string();
    let body = c
        .call(
            "broker",
            "listQueues",
            vec![json!(filter), json!(1), json!(50)],
        )
        .await
        .unwrap();
    body[0].as_str().unwrap().to_string()
}

/// The keys of a JSON object text in their order (top level of the first object found after `from`).
fn keys_in_order(text: &str) -> Vec<String> {
    let value: Json = serde_json::from_str(text).unwrap();
    let obj = value.as_object().unwrap();
    let mut keys: Vec<(usize, String)> = obj
        .keys()
        .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

/// A sending link to `target` is refused: the attach fails, or (the server refuses a link by answering the
/// attach and closing it at once) the first send fails.
async fn sending_is_refused(session: &mut SessionHandle<()>, target: &str) -> bool {
    let Ok(mut sender) = Sender::attach(session, format!("refused-{target}"), target).await else {
        return true;
    };
    let sent = tokio::time::timeout(Duration::from_secs(5), sender.send(message("x"))).await;
    matches!(sent, Ok(Err(_)))
}

async fn count(c: &ArtemisClient, queue: &str) -> u64 {
    c.get_message_count(queue).await.unwrap()
}

async fn queue_op(c: &ArtemisClient, queue: &str, op: &str) -> Json {
    c.call(&format!("queue.{queue}"), op, vec![]).await.unwrap()
}

/// DST §4-§5 end to end: topic t1 with the configured subscription s1 (createQueue with `user`) and a second
/// subscription s2; 5 messages published to t1 reach BOTH queues (MULTICAST fan-out); s1 is consumed by its
/// fully qualified name `t1::s1` (m0..m4 in order); getMessageCount 5 then 0; getUser/isDurable/getAddress/
/// getRoutingType as recorded; the listQueues row equals the recorded one (values as strings, same keys in the
/// same order) up to the queue id; s2 keeps its 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_fan_out_fqqn_consumption_and_the_recorded_management_values() {
    let b = broker().await;
    let c = client(&b).await;
    // DST §4 line 1-2.
    c.call(
        "broker",
        "createAddress",
        vec![json!("t1"), json!("MULTICAST")],
    )
    .await
    .unwrap();
    let reply = c
        .call(
            "broker",
            "createQueue",
            vec![json!(
                r#"{"name":"s1","address":"t1","routing-type":"MULTICAST","durable":true,"user":"maas-storage-controller"}"#
            )],
        )
        .await
        .unwrap();
    // "reply echoes the whole queue config": the user comes back (where QueueConfiguration.toJSON puts it).
    let echoed = reply[0].as_str().unwrap();
    assert!(
        echoed.contains(r#""durable":true,"user":"maas-storage-controller","max-consumers":-1"#),
        "{echoed}"
    );
    // A second subscription through the typed client, with the owner.
    let s2 = QueueConfig {
        name: "s2".into(),
        address: "t1".into(),
        routing_type: RoutingType::Multicast,
        durable: true,
    };
    c.create_queue_with(&s2, Some(OWNER)).await.unwrap();

    let (mut opened, mut session) = connect(&b, "publisher").await;
    publish(&mut session, "t1", &["m0", "m1", "m2", "m3", "m4"]).await;
    // DST §4: "5 messages published to t1 -> queue s1 messageCount 5"; MULTICAST: s2 got a copy of each.
    assert_eq!(count(&c, "s1").await, 5);
    assert_eq!(count(&c, "s2").await, 5);
    // DST §5: getUser, isDurable, getAddress, getRoutingType, getMessageCount.
    assert_eq!(queue_op(&c, "s1", "getUser").await, json!([OWNER]));
    assert_eq!(queue_op(&c, "s1", "isDurable").await, json!([true]));
    assert_eq!(queue_op(&c, "s1", "getAddress").await, json!(["t1"]));
    assert_eq!(
        queue_op(&c, "s1", "getRoutingType").await,
        json!(["MULTICAST"])
    );
    assert_eq!(queue_op(&c, "s1", "getMessageCount").await, json!([5]));

    // DST §4: a receiver consumed s1 (the broker saw the source `t1::s1`) and got m0..m4.
    let mut r = receiver(&mut session, "s1-consumer", "t1::s1", 10).await;
    for i in 0..5 {
        let d = recv(&mut r).await;
        assert_eq!(body_of(d.message()), format!("m{i}"));
        // Bodies and properties are kept.
        assert_eq!(
            d.message().properties.as_ref().unwrap().message_id,
            Some(MessageId::String(format!("id-m{i}")))
        );
        assert_eq!(
            d.message()
                .application_properties
                .as_ref()
                .unwrap()
                .0
                .get("origin"),
            Some(&SimpleValue::String("test".into()))
        );
        r.accept(&d).await.unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || b.queues()["s1"].messages == 0).await);
    r.close().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || b.queues()["s1"].consumers == 0).await);
    // DST §4: "messageCount 0 afterwards".
    assert_eq!(count(&c, "s1").await, 0);
    assert_eq!(count(&c, "s2").await, 5);

    // DST §5: listQueues [filter, 1, 50] -> {"data":[...],"count":N}; the s1 row as recorded (id aside).
    let text = list_queues_text(&c, "t1").await;
    let listing: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(keys_in_order(&text), ["data", "count"]);
    assert_eq!(listing["count"], json!(2));
    let rows = listing["data"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s1", "s2"], "sorted by name");
    let mut recorded: Json = serde_json::from_str(RECORDED_ROW).unwrap();
    let mut got = rows[0].clone();
    assert!(got["id"].as_str().unwrap().parse::<u64>().is_ok());
    recorded["id"] = json!("<id>");
    got["id"] = json!("<id>");
    assert_eq!(got, recorded);
    // Same keys in the same order, every value a string.
    let row_text = serde_json::to_string(&rows[0]).unwrap();
    let start = text.find(r#"{"id""#).unwrap();
    let end = start + text[start..].find('}').unwrap() + 1;
    assert_eq!(
        keys_in_order(&text[start..end]),
        keys_in_order(RECORDED_ROW),
        "{row_text}"
    );
    assert!(rows[0].as_object().unwrap().values().all(Json::is_string));
    assert_eq!(rows[1]["messageCount"], json!("5"));
    assert_eq!(rows[1]["user"], json!(OWNER));

    // The typed client reads the same rows.
    let infos = c.list_queues_of_address("t1").await.unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].name, "s1");
    assert_eq!(infos[0].user.as_deref(), Some(OWNER));
    assert_eq!((infos[1].name.as_str(), infos[1].message_count), ("s2", 5));

    // Other filters select nothing here; a filter field Artemis does not know fails with its enum text.
    assert_eq!(
        serde_json::from_str::<Json>(&list_queues_text(&c, "nope").await).unwrap(),
        json!({"data": [], "count": 0})
    );
    let err = c
        .call(
            "broker",
            "listQueues",
            vec![
                json!(r#"{"field":"messageCount","operation":"EQUALS","value":"0"}"#),
                json!(1),
                json!(50),
            ],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No enum constant"), "{err}");

    // DST §5 last line: destroyQueue and deleteAddress succeed (no body).
    assert_eq!(
        c.call("broker", "destroyQueue", vec![json!("s1")])
            .await
            .unwrap(),
        Json::Null
    );
    assert_eq!(
        c.call("broker", "destroyQueue", vec![json!("s2")])
            .await
            .unwrap(),
        Json::Null
    );
    assert_eq!(
        c.call("broker", "deleteAddress", vec![json!("t1")])
            .await
            .unwrap(),
        Json::Null
    );
    let _ = opened.connection.close().await;
    c.close().await;
    b.stop().await;
}

/// DST §1: a receiver on MULTICAST `news` with a durable terminus (unsettled-state, expiry never) from container
/// `check-client2`, link `sub2`, makes queue `check-client2.sub2`. Guess #45: the queue stays when the link
/// DETACHES, keeps receiving what is published meanwhile, the reattached link gets the rest in order; CLOSING the
/// link deletes it (Artemis' unsubscribe). Guess #46: a non-durable receiver gets a temporary UUID queue, gone
/// with its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_queue_is_container_dot_link_and_survives_detach() {
    let b = broker().await;
    let c = client(&b).await;
    c.create_address("news", RoutingType::Multicast)
        .await
        .unwrap();
    let (mut sub_conn, mut sub_session) = connect(&b, "check-client2").await;
    let mut sub = receiver(&mut sub_session, "sub2", durable_source("news"), 10).await;
    let q = &b.queues()["check-client2.sub2"];
    assert_eq!(
        (q.address.as_str(), q.routing_type, q.durable, q.temporary),
        ("news", RoutingType::Multicast, true, false)
    );
    assert_eq!(q.consumers, 1);
    // A volatile subscriber on the same topic: a temporary queue named by a UUID (guess #46).
    let mut volatile = receiver(&mut sub_session, "vol", "news", 10).await;
    let temps: Vec<String> = b
        .queues()
        .iter()
        .filter(|(_, q)| q.temporary && q.address == "news")
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert_eq!(temps[0].len(), 36);

    let (mut pub_conn, mut pub_session) = connect(&b, "publisher").await;
    publish(&mut pub_session, "news", &["m0", "m1", "m2"]).await;
    let d = recv(&mut sub).await;
    assert_eq!(body_of(d.message()), "m0");
    sub.accept(&d).await.unwrap();
    for i in 0..3 {
        let d = recv(&mut volatile).await;
        assert_eq!(body_of(d.message()), format!("m{i}"));
        volatile.accept(&d).await.unwrap();
    }
    volatile.close().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !b
            .queues()
            .contains_key(&temps[0]))
        .await
    );
    // m1 and m2 went out to sub2 (credit 10) but were never settled: they count, and go back on detach.
    assert!(
        wait_until(Duration::from_secs(5), || b.queues()["check-client2.sub2"]
            .messages
            == 2)
        .await
    );
    sub.detach().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let q = &b.queues()["check-client2.sub2"];
            q.consumers == 0 && q.delivering == 0
        })
        .await
    );
    // Published while the subscriber is away: the subscription queue keeps them.
    publish(&mut pub_session, "news", &["m3", "m4"]).await;
    assert_eq!(count(&c, "check-client2.sub2").await, 4);
    let infos = c.list_queues_of_address("news").await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(
        (
            infos[0].name.as_str(),
            infos[0].message_count,
            infos[0].durable,
            infos[0].user.as_deref()
        ),
        ("check-client2.sub2", 4, true, Some("admin"))
    );
    // Same container, same link name: the same queue, the rest in order.
    let mut sub_session = Session::begin(&mut sub_conn.connection).await.unwrap();
    let mut sub = receiver(&mut sub_session, "sub2", durable_source("news"), 10).await;
    for i in 1..5 {
        let d = recv(&mut sub).await;
        assert_eq!(body_of(d.message()), format!("m{i}"));
        sub.accept(&d).await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || b.queues()["check-client2.sub2"]
            .messages
            == 0)
        .await
    );
    // Another container with the same link name is another subscription (DST §1, last sentence).
    let (mut other_conn, mut other_session) = connect(&b, "other-client").await;
    let other = receiver(&mut other_session, "sub2", durable_source("news"), 10).await;
    assert!(b.queues().contains_key("other-client.sub2"));
    other.detach().await.unwrap();
    // Closing the link is an unsubscribe: the queue goes (guess #45).
    sub.close().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !b
            .queues()
            .contains_key("check-client2.sub2"))
        .await
    );
    assert!(b.queues().contains_key("other-client.sub2"));
    let _ = other_conn.connection.close().await;
    let _ = sub_conn.connection.close().await;
    let _ = pub_conn.connection.close().await;
    c.close().await;
    b.stop().await;
}

/// The recorded client of DST §1 (python3-qpid-proton 0.37, `DurableSubscription`, container `check-client2`,
/// link `sub2`): the queue is `check-client2.sub2`; the client leaves by closing its connection (the link is
/// not closed), the queue stays and fills; the client comes back and receives the messages in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_durable_subscriber_gets_the_recorded_queue_name() {
    const SCRIPT: &str = r#"
import sys
from proton.reactor import Container, DurableSubscription
from proton.utils import BlockingConnection
url, cid, link, address, n = sys.argv[1:6]
container = Container()
container.container_id = cid
conn = BlockingConnection(url, timeout=10, container=container, user="admin", password="admin", allowed_mechs="PLAIN")
rcv = conn.create_receiver(address, name=link, options=DurableSubscription(), credit=10)
print("ATTACHED")
for _ in range(int(n)):
    m = rcv.receive(timeout=10)
    print("BODY", m.body)
    rcv.accept()
conn.close()
"#;
    let b = broker().await;
    let c = client(&b).await;
    c.create_address("news", RoutingType::Multicast)
        .await
        .unwrap();
    let run = |n: &str| {
        let url = b.url();
        let n = n.to_string();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("timeout")
                .args([
                    "60",
                    "/usr/bin/python3",
                    "-c",
                    SCRIPT,
                    &url,
                    "check-client2",
                    "sub2",
                    "news",
                    &n,
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "python: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
    };
    assert_eq!(run("0").await.unwrap(), "ATTACHED\n");
    assert!(
        wait_until(Duration::from_secs(5), || b
            .queues()
            .get("check-client2.sub2")
            .is_some_and(|q| q.consumers == 0))
        .await
    );
    let q = &b.queues()["check-client2.sub2"];
    assert_eq!(
        (q.address.as_str(), q.routing_type, q.durable),
        ("news", RoutingType::Multicast, true)
    );
    let (mut opened, mut session) = connect(&b, "publisher").await;
    publish(&mut session, "news", &["m0", "m1", "m2"]).await;
    assert_eq!(count(&c, "check-client2.sub2").await, 3);
    assert_eq!(
        run("3").await.unwrap(),
        "ATTACHED\nBODY m0\nBODY m1\nBODY m2\n"
    );
    assert!(
        wait_until(Duration::from_secs(5), || b.queues()["check-client2.sub2"]
            .messages
            == 0)
        .await
    );
    let _ = opened.connection.close().await;
    c.close().await;
    b.stop().await;
}

/// Moving a subscription between broker pods (guess #48 for sending to `T::S`): receive from the old pod's
/// `t1::s1`, send each message to the new pod's `t1::s1`, accept on the old pod only after the new pod took it.
/// Only queue s1 gets them (not s2 on the same topic); bodies and properties survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fqqn_send_and_receive_move_a_subscription_between_pods() {
    let old = broker().await;
    let new = broker().await;
    for b in [&old, &new] {
        let c = client(b).await;
        c.create_address("t1", RoutingType::Multicast)
            .await
            .unwrap();
        for s in ["s1", "s2"] {
            let q = QueueConfig {
                name: s.into(),
                address: "t1".into(),
                routing_type: RoutingType::Multicast,
                durable: true,
            };
            c.create_queue_with(&q, Some(OWNER)).await.unwrap();
        }
        c.close().await;
    }
    let (mut old_conn, mut old_session) = connect(&old, "mover").await;
    let (mut new_conn, mut new_session) = connect(&new, "mover").await;
    publish(&mut old_session, "t1", &["m0", "m1", "m2", "m3"]).await;
    // A queue that is not bound to the address is not found (Artemis: "Queue: 's1' does not exist for
    // address 'x'"), nor is a missing one.
    // (Each on its own session: fe2o3's client may end a session whose attach was refused.)
    for bad in ["x::s1", "t1::nope"] {
        let mut s = Session::begin(&mut old_conn.connection).await.unwrap();
        let refused = Receiver::builder()
            .name(format!("bad-{bad}"))
            .source(bad)
            .attach(&mut s)
            .await;
        assert!(refused.is_err(), "{bad}");
    }
    let mut from = receiver(&mut old_session, "move-from", "t1::s1", 2).await;
    let mut to = Sender::attach(&mut new_session, "move-to", "t1::s1")
        .await
        .unwrap();
    for _ in 0..4 {
        let d = recv(&mut from).await;
        to.send(d.message().clone()).await.unwrap();
        from.accept(&d).await.unwrap();
        from.set_credit(1).await.unwrap();
    }
    nothing(&mut from, 200).await;
    assert!(wait_until(Duration::from_secs(5), || old.queues()["s1"].messages == 0).await);
    assert_eq!(old.queues()["s2"].messages, 4);
    assert_eq!(new.queues()["s1"].messages, 4);
    assert_eq!(new.queues()["s2"].messages, 0, "T::S reaches queue S only");
    let moved = new.messages("s1").unwrap();
    let bodies: Vec<String> = moved.iter().map(body_of).collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3"]);
    assert_eq!(
        moved[2].properties.as_ref().unwrap().message_id,
        Some(MessageId::String("id-m2".into()))
    );
    // Sending to a queue the address does not have is refused (guess #48).
    let mut s = Session::begin(&mut new_conn.connection).await.unwrap();
    assert!(sending_is_refused(&mut s, "t1::nope").await);
    let _ = old_conn.connection.close().await;
    let _ = new_conn.connection.close().await;
    old.stop().await;
    new.stop().await;
}

/// Guess #47 (at-least-once): a released message comes back first, ahead of the rest; getMessageCount counts
/// delivered-but-unsettled messages (Artemis' QueueImpl.getMessageCount adds the delivering count); credit is
/// respected; unsettled messages go back, in order, when the link closes; rejected ones go to the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_messages_come_back_first_and_counts_include_delivering() {
    let b = broker().await;
    let c = client(&b).await;
    c.create_queue(&QueueConfig {
        name: "work".into(),
        address: "work".into(),
        routing_type: RoutingType::Anycast,
        durable: true,
    })
    .await
    .unwrap();
    let (mut opened, mut session) = connect(&b, "worker").await;
    publish(&mut session, "work", &["m0", "m1", "m2", "m3"]).await;
    assert_eq!(count(&c, "work").await, 4);

    let mut r = receiver(&mut session, "w", "work", 1).await;
    let d0 = recv(&mut r).await;
    assert_eq!(body_of(d0.message()), "m0");
    // Credit 1: one message out, nothing more.
    nothing(&mut r, 200).await;
    assert_eq!(count(&c, "work").await, 4, "delivering counts");
    assert_eq!(queue_op(&c, "work", "getDeliveringCount").await, json!([1]));
    let row: Json = serde_json::from_str(&list_queues_text(&c, "work").await).unwrap();
    assert_eq!(row["data"][0]["deliveringCount"], json!("1"));
    assert_eq!(row["data"][0]["messageCount"], json!("4"));
    assert_eq!(row["data"][0]["consumerCount"], json!("1"));

    r.release(&d0).await.unwrap();
    r.set_credit(1).await.unwrap();
    let again = recv(&mut r).await;
    assert_eq!(body_of(again.message()), "m0", "released comes back first");
    r.accept(&again).await.unwrap();
    r.set_credit(2).await.unwrap();
    let d1 = recv(&mut r).await;
    let d2 = recv(&mut r).await;
    assert_eq!(
        (body_of(d1.message()), body_of(d2.message())),
        ("m1".into(), "m2".into())
    );
    assert!(wait_until(Duration::from_secs(5), || b.queues()["work"].messages == 3).await);
    // m1 rejected: it leaves for the DLQ; m2 never settled: back when the link closes.
    r.reject(&d1, None).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || b.queues()["DLQ"].messages == 1).await);
    r.close().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let q = &b.queues()["work"];
            q.consumers == 0 && q.delivering == 0
        })
        .await
    );
    let left: Vec<String> = b.messages("work").unwrap().iter().map(body_of).collect();
    assert_eq!(left, ["m2", "m3"], "order kept");
    let q = &b.queues()["work"];
    assert_eq!((q.messages_added, q.messages_acked), (4, 1));

    // Two competing consumers share the queue; every message is delivered once when all are accepted.
    let mut a = receiver(&mut session, "a", "work", 10).await;
    let mut z = receiver(&mut session, "z", "work", 10).await;
    publish(&mut session, "work", &["m4", "m5"]).await;
    let mut got = Vec::new();
    for r in [&mut a, &mut z] {
        while let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(300), r.recv::<Body<Value>>()).await
        {
            got.push(body_of(d.message()));
            r.accept(&d).await.unwrap();
        }
    }
    got.sort();
    assert_eq!(got, ["m2", "m3", "m4", "m5"]);
    assert!(wait_until(Duration::from_secs(5), || b.queues()["work"].messages == 0).await);
    let _ = opened.connection.close().await;
    c.close().await;
    b.stop().await;
}

/// router-to-artemis.txt:205 (the broker listed no `orders` queue, only UUID-named ones, after the router's
/// autoLinks out of and into `orders`): a SENDER to an unknown address makes a MULTICAST address without a queue
/// (messages to it are dropped), and a receiver on it then gets a temporary UUID subscription. A receiver without
/// capabilities on an unknown address makes an ANYCAST address and a durable queue of that name (guess #44, from
/// Artemis' ProtonServerSenderContext). Without auto-creation the attach is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creation_on_attach_follows_the_recording_and_the_source() {
    let b = broker().await;
    let c = client(&b).await;
    let (mut opened, mut session) = connect(&b, "router").await;
    publish(&mut session, "orders", &["dropped"]).await;
    let a = &b.addresses()["orders"];
    assert!(a.auto_created && a.routing_types.contains(&RoutingType::Multicast));
    assert!(!b.queues().contains_key("orders"));
    let r = receiver(&mut session, "autolink-in", "orders", 10).await;
    let mut names = c.call("broker", "getQueueNames", vec![]).await.unwrap()[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .filter(|n| n.len() != 36)
        .collect::<Vec<_>>();
    names.sort();
    // As recorded: DLQ, ExpiryQueue and two UUIDs (ours: the management reply queue and the subscription).
    assert_eq!(names, ["DLQ", "ExpiryQueue"]);
    assert_eq!(b.queues().values().filter(|q| q.temporary).count(), 2);
    r.close().await.unwrap();

    let lrq = receiver(&mut session, "plain", "lrq.test", 10).await;
    let q = &b.queues()["lrq.test"];
    assert_eq!(
        (q.routing_type, q.durable, q.auto_created),
        (RoutingType::Anycast, true, true)
    );
    lrq.close().await.unwrap();
    let _ = opened.connection.close().await;
    c.close().await;
    b.stop().await;

    let strict = BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel::none(),
        auto_create: false,
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let (mut opened, mut session) = connect(&strict, "x").await;
    assert!(
        Receiver::attach(&mut session, "r", "missing")
            .await
            .is_err()
    );
    let mut session = Session::begin(&mut opened.connection).await.unwrap();
    assert!(sending_is_refused(&mut session, "missing").await);
    let _ = opened.connection.close().await;
    strict.stop().await;
}

/// Guess #41: a restart keeps durable queues with their messages (delivering ones back in place), drops
/// non-durable and temporary queues; a durable subscription keeps filling after the subscriber comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_durable_queue_messages() {
    let b = broker().await;
    let c = client(&b).await;
    c.create_address("t1", RoutingType::Multicast)
        .await
        .unwrap();
    for (name, durable) in [("keep", true), ("lose", false)] {
        c.create_queue(&QueueConfig {
            name: name.into(),
            address: "t1".into(),
            routing_type: RoutingType::Multicast,
            durable,
        })
        .await
        .unwrap();
    }
    c.close().await;
    let (mut opened, mut session) = connect(&b, "c1").await;
    let sub = receiver(&mut session, "sub", durable_source("t1"), 0).await;
    sub.detach().await.unwrap();
    publish(&mut session, "t1", &["m0", "m1", "m2"]).await;
    let mut r = receiver(&mut session, "peek", "t1::keep", 1).await;
    let _unsettled = recv(&mut r).await;
    assert_eq!(b.queues()["keep"].delivering, 1);
    let _ = opened.connection.close().await;
    b.restart().await.unwrap();
    let queues = b.queues();
    assert!(!queues.contains_key("lose"));
    assert_eq!((queues["keep"].messages, queues["keep"].delivering), (3, 0));
    assert_eq!(queues["c1.sub"].messages, 3);
    assert!(queues.values().all(|q| !q.temporary));
    let c = client(&b).await;
    assert_eq!(count(&c, "keep").await, 3);
    let (mut opened, mut session) = connect(&b, "c1").await;
    let mut r = receiver(&mut session, "sub", durable_source("t1"), 10).await;
    for i in 0..3 {
        let d = recv(&mut r).await;
        assert_eq!(body_of(d.message()), format!("m{i}"));
        r.accept(&d).await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || b.queues()["c1.sub"].messages
            == 0)
        .await
    );
    let _ = opened.connection.close().await;
    c.close().await;
    b.stop().await;
}
