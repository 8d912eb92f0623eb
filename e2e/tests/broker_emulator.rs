//! The broker emulator against the recorded Artemis 2.21 behaviour (docs/reference/artemis-2.21/
//! management-transcript.txt, the `A-` lines and "Also seen" of docs/reference/observed-shapes.txt): every
//! transcript line replayed through a proton-c client (`e2e/python/broker_transcript.py`, as the transcript
//! was recorded) and through the shared client `maas_amqp::artemis::ArtemisClient`; SASL refusals; consumer
//! links blocking destroyQueue; messages sent to queues counted; the cost model; the `broker-emulator` binary.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::{Receiver, Sender, Session};
use maas_amqp::ConnectOptions;
use maas_amqp::artemis::{ArtemisClient, ArtemisError, ClientConfig, QueueConfig, RoutingType};
use maas_amqp::connect::open_connection;
use maas_e2e::broker::{BrokerConfig, BrokerEmulator, CostModel};
use serde_json::Value as Json;

/// docs/reference/artemis-2.21/management-transcript.txt, verbatim (lines 1-21).
const TRANSCRIPT: &str = r#"broker.getVersion([]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='["2.21.0.redhat-00025"]'
broker.createAddress(["addr.one","ANYCAST"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='["Address [name=addr.one, routingTypes={ANYCAST}, autoCreated=false]"]'
broker.createAddress(["addr.one","ANYCAST"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229204: Address already exists: addr.one"]'
broker.createQueue(["{\"name\":\"q.one\",\"address\":\"addr.one\",\"routing-type\":\"ANYCAST\",\"durable\":true}"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='["{\\"id\\":76,\\"name\\":\\"q.one\\",\\"address\\":\\"addr.one\\",\\"routing-type\\":\\"ANYCAST\\",\\"durable\\":true,\\"max-consumers\\":-1,\\"exclusive\\":false,\\"group-rebalance\\":false,\\"group-rebalance-pause-dispatch\\":false,\\"group-buckets\\":-1,\\"last-value\\":false,\\"non-destructive\\":false,\\"purge-on-no-consumers\\":false,\\"enabled\\":true,\\"consumers-before-dispatch\\":0,\\"delay-before-dispatch\\":-1,\\"auto-delete\\":false,\\"auto-delete-delay\\":0,\\"auto-delete-message-count\\":0,\\"ring-size\\":-1,\\"configuration-managed\\":false,\\"temporary\\":false,\\"auto-create-address\\":true,\\"internal\\":false,\\"transient\\":false,\\"auto-created\\":false}"]'
broker.createQueue(["addr.two","ANYCAST","q.two"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["No enum constant org.apache.activemq.artemis.api.core.RoutingType.Q.TWO"]'
broker.createQueue(["addr.three","q.three","ANYCAST"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body=None
broker.createQueue(["{\"name\":\"q.one\",\"address\":\"addr.one\",\"routing-type\":\"ANYCAST\"}"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229019: Queue q.one already exists on address addr.one"]'
broker.getAddressNames([]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='[["activemq.management","addr.three","5805de55-5e16-4857-8ecc-a00657602fae","addr.one","DLQ","ExpiryQueue","activemq.notifications"]]'
broker.getQueueNames([]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='[["DLQ","ExpiryQueue","q.one","q.three","5075030b-bde6-4895-a366-826d1eb23a05"]]'
broker.listAddresses([","]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='["activemq.management,activemq.notifications,addr.one,addr.three,c844891c-9b51-47cc-b0d8-790d50dece9f,DLQ,ExpiryQueue"]'
queue.q.one.getMessageCount([]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='[0]'
broker.noSuchOperation([]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229069: no operation noSuchOperation/0"]'
broker.createAddress(["x"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229069: no operation createAddress/1"]'
broker.destroyQueue(["q.one"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body=None
broker.destroyQueue(["q.two"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229017: Queue q.two does not exist"]'
broker.destroyQueue(["q.three"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body=None
broker.deleteAddress(["addr.one"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body=None
broker.deleteAddress(["addr.two"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229203: Address Does Not Exist: addr.two"]'
broker.deleteAddress(["addr.three"]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body=None
broker.destroyQueue(["nope"]) -> props={'_AMQ_OperationSucceeded': False, 'JMSXDeliveryCount': None} body='["AMQ229017: Queue nope does not exist"]'
broker.getAddressNames([]) -> props={'_AMQ_OperationSucceeded': True, 'JMSXDeliveryCount': None} body='[["activemq.management","a15e64be-854a-413f-b629-6882ae65a967","DLQ","ExpiryQueue","activemq.notifications"]]'"#;

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

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Replaces every UUID (a temporary reply queue's name) with `<uuid>`, and createQueue's queue `id`
/// (76 in the recording; a broker-wide sequence) with `<id>`.
fn normalize(text: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        if text.is_char_boundary(i) && text.len() >= i + 36 && is_uuid(&text[i..i + 36]) {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        let c = text[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    for key in [r#"\\"id\\":"#, r#"\"id\":"#, r#""id":"#] {
        if let Some(at) = out.find(key) {
            let start = at + key.len();
            let end = start
                + out[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(0);
            out.replace_range(start..end, "<id>");
            break;
        }
    }
    out
}

/// A transcript line's name lists are in Java hash order: compare them as sorted lists. listAddresses'
/// comma list is sorted case-insensitively by Artemis, which is checked first.
fn canonical(line: &str) -> String {
    let line = normalize(line);
    let Some((head, body)) = line.split_once(" body='") else {
        return line;
    };
    let body = body.trim_end_matches('\'');
    if head.starts_with("broker.getAddressNames") || head.starts_with("broker.getQueueNames") {
        let mut names: Vec<Vec<String>> = serde_json::from_str(body).unwrap();
        names[0].sort();
        return format!("{head} body='{}'", serde_json::to_string(&names).unwrap());
    }
    if head.starts_with("broker.listAddresses") {
        let joined: Vec<String> = serde_json::from_str(body).unwrap();
        let mut names: Vec<&str> = joined[0].split(',').collect();
        let mut ci = names.clone();
        ci.sort_by_key(|n| n.to_lowercase());
        // The recorded UUID sorts by its own text; compare the named entries' order only.
        let named = |v: &[&str]| {
            v.iter()
                .filter(|n| **n != "<uuid>")
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            named(&names),
            named(&ci),
            "listAddresses is not case-insensitively sorted: {line}"
        );
        names.sort();
        return format!(
            "{head} body='{}'",
            serde_json::to_string(&[names.join(",")]).unwrap()
        );
    }
    line
}

fn python(args: &[&str], stdin: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/broker_transcript.py");
    let mut child = Command::new("timeout")
        .arg("60")
        .arg("/usr/bin/python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn request_of(line: &str) -> &str {
    line.split_once(" -> ").unwrap().0
}

/// Every transcript line (1-21), sent by proton-c exactly as recorded, gets the recorded reply: the same
/// application properties (`_AMQ_OperationSucceeded`, `JMSXDeliveryCount: None`) and body, byte for byte
/// up to the temporary queue's UUID, createQueue's `id` and the hash order of name lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_replays_the_transcript_line_by_line() {
    let b = broker().await;
    let requests: String = TRANSCRIPT
        .lines()
        .map(|l| format!("{}\n", request_of(l)))
        .collect();
    let url = b.url();
    let out = tokio::task::spawn_blocking(move || python(&[&url, "admin", "admin"], &requests))
        .await
        .unwrap();
    let got: Vec<&str> = out.lines().collect();
    let want: Vec<&str> = TRANSCRIPT.lines().collect();
    assert_eq!(got.len(), want.len(), "{out}");
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(canonical(g), canonical(w), "transcript line {}", n + 1);
    }
    // Line 8 vs line 21: the temporary queue is listed while its receiver is open and gone after.
    assert!(b.queues().values().all(|q| !q.temporary));
    b.stop().await;
}

/// Python repr of a str (the transcript's `body='...'`) back to its text.
fn unrepr(body: &str) -> Option<String> {
    if body == "None" {
        return None;
    }
    let inner = body.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
    Some(inner.replace("\\\\", "\\"))
}

/// The same 21 requests through the shared client: `call` returns the recorded body (decoded), or
/// `Failed` with the recorded text and its AMQ code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_client_gets_every_recorded_outcome() {
    let b = broker().await;
    let c = client(&b).await;
    for (n, line) in TRANSCRIPT.lines().enumerate() {
        let request = request_of(line);
        let (head, rest) = request.split_once('(').unwrap();
        let (resource, operation) = head.rsplit_once('.').unwrap();
        let args: Vec<Json> = serde_json::from_str(rest.strip_suffix(')').unwrap()).unwrap();
        let succeeded = line.contains("'_AMQ_OperationSucceeded': True");
        let body = unrepr(line.rsplit_once(" body=").unwrap().1);
        let expected: Json = body.map_or(Json::Null, |b| serde_json::from_str(&b).unwrap());
        let what = format!("transcript line {}: {request}", n + 1);
        match c.call(resource, operation, args).await {
            Ok(got) => {
                assert!(succeeded, "{what}: succeeded, recorded a failure");
                let got = canonical(&format!("{head} body='{got}'"));
                let want = canonical(&format!("{head} body='{expected}'"));
                if expected.is_null() {
                    assert_eq!(got, format!("{head} body='null'"), "{what}");
                } else {
                    assert_eq!(got, want, "{what}");
                }
            }
            Err(ArtemisError::Failed { message, code, .. }) => {
                assert!(!succeeded, "{what}: failed with {message}");
                assert_eq!(
                    Json::Array(vec![Json::String(message.clone())]),
                    expected,
                    "{what}"
                );
                assert_eq!(
                    code.as_deref(),
                    message.get(..9).filter(|c| c.starts_with("AMQ")),
                    "{what}"
                );
            }
            Err(other) => panic!("{what}: {other:?}"),
        }
    }
    c.close().await;
    b.stop().await;
}

/// observed-shapes A-anonymous: ANONYMOUS is closed with amqp:unauthorized-access 'AMQ229031: Unable to
/// validate user...'; a wrong password fails SASL ('Authentication failed [mech=PLAIN]').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_sees_the_recorded_authentication_refusals() {
    let b = broker().await;
    let url = b.url();
    let out = tokio::task::spawn_blocking(move || {
        let anonymous = python(&["--auth", &url, "ANONYMOUS"], "");
        let wrong = python(&["--auth", &url, "PLAIN", "admin", "wrong"], "");
        let right = python(&["--auth", &url, "PLAIN", "admin", "admin"], "");
        (anonymous, wrong, right)
    })
    .await
    .unwrap();
    let (anonymous, wrong, right) = out;
    assert!(anonymous.starts_with("REFUSED"), "{anonymous}");
    assert!(
        anonymous.contains("amqp:unauthorized-access"),
        "{anonymous}"
    );
    assert!(
        anonymous.contains("AMQ229031: Unable to validate user"),
        "{anonymous}"
    );
    assert!(wrong.starts_with("REFUSED"), "{wrong}");
    assert!(wrong.contains("Authentication failed"), "{wrong}");
    assert_eq!(right.trim(), "OPEN");
    b.stop().await;
}

/// observed-shapes "Also seen": destroyQueue fails while the queue has a consumer (e.g. the router's
/// autoLink out of it); ordinary links attach (Artemis auto-creates) and messages sent are counted
/// (delivery itself is tested in broker_messaging.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_links_block_destroy_and_sent_messages_are_counted() {
    let b = broker().await;
    let c = client(&b).await;
    c.create_queue(&QueueConfig {
        name: "q1".into(),
        address: "q1".into(),
        routing_type: RoutingType::Anycast,
        durable: true,
    })
    .await
    .unwrap();
    let opts = ConnectOptions::from_url(&b.url_with("admin", "admin")).unwrap();
    let mut opened = open_connection(&opts).await.unwrap();
    let mut session = Session::begin(&mut opened.connection).await.unwrap();
    let receiver = Receiver::builder()
        .name("router-out")
        .source("q1")
        .credit_mode(CreditMode::Auto(10))
        .attach(&mut session)
        .await
        .unwrap();
    let mut sender = Sender::builder()
        .name("router-in")
        .target("q1")
        .attach(&mut session)
        .await
        .unwrap();
    for _ in 0..3 {
        sender.send("m").await.unwrap();
    }
    // An address nobody created: auto-created like Artemis' defaults for a sender, MULTICAST and without a
    // queue (router-to-artemis.txt:205, GUESSES #48): the message is accepted and dropped.
    let mut other = Sender::builder()
        .name("auto")
        .target("auto.q")
        .attach(&mut session)
        .await
        .unwrap();
    other.send("m").await.unwrap();
    // The receiver got the 3 messages but settled none: delivered-but-unsettled messages still count.
    assert_eq!(c.get_message_count("q1").await.unwrap(), 3);
    let err = c.get_message_count("auto.q").await.unwrap_err();
    assert_eq!(err.code(), Some("AMQ229067"), "{err}");
    let auto = &b.addresses()["auto.q"];
    assert!(auto.auto_created && auto.routing_types.contains(&RoutingType::Multicast));
    assert_eq!(b.queues()["q1"].consumers, 1);
    let err = c.destroy_queue("q1").await.unwrap_err();
    assert_eq!(err.code(), Some("AMQ229025"), "{err}");
    assert_eq!(
        err.to_string(),
        "broker.destroyQueue failed: AMQ229025: Cannot delete queue q1 on binding q1 - it has consumers = org.apache.activemq.artemis.core.postoffice.impl.LocalQueueBinding"
    );
    receiver.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.queues()["q1"].consumers > 0 {
        assert!(Instant::now() < deadline, "consumer never went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Artemis destroys a queue WITH its messages: the storage-controller must check first.
    c.destroy_queue("q1").await.unwrap();
    assert!(!b.queues().contains_key("q1"));
    let _ = opened.connection.close().await;
    c.close().await;
    b.stop().await;
}

/// The cost model: operations run one at a time for a fixed busy time, so the raw rate is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_model_bounds_the_raw_operation_rate() {
    let b = BrokerEmulator::start(BrokerConfig {
        cost_model: CostModel {
            per_operation: Duration::from_millis(2),
        },
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let c = client(&b).await;
    b.reset_counters();
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_version().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    let counters = b.counters();
    assert_eq!((counters.reads, counters.writes), (50, 0));
    c.close().await;
    b.stop().await;
}

/// `broker-emulator` prints where it listens, serves, and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_address_serves_and_exits_zero_on_sigterm() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker-emulator"))
        .args(["--listen", "127.0.0.1:0", "--cost-us", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let opts = ConnectOptions::from_url(&url.replace("amqp://", "amqp://admin:admin@")).unwrap();
    let c = ArtemisClient::connect(&opts, ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(c.get_version().await.unwrap(), "2.21.0.redhat-00025");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .unwrap();
}
