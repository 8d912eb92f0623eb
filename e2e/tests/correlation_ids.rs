//! Correlation-ids against the router emulator, which echoes them as each of the real router's two management
//! agents does (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §1: the Python agent turns a ulong
//! into an AMQP `int` and drops a uuid): proton-c sees exactly the recorded types; a client that decodes
//! strictly (fe2o3, as the agent's old client did with ulong ids) cannot decode the Python agent's reply at all;
//! `RouterClient` works with string ids (its default) and binary ids, and with the other types fails fast or
//! says why. Also the request timeouts: one timeout fails one request, a request that timed out in the send
//! queue is never sent, and only repeated timeouts drop the connection.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Properties, Source, Target};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use maas_amqp::options::ConnectOptions;
use maas_amqp::router::{ClientConfig, CorrelationIds, MgmtError, ReplyStats, RouterClient};
use maas_e2e::router::{ADDRESS, CONNECTOR, EmulatorConfig, RouterEmulator};
use serde_json::{Value as Json, json};

async fn emulator() -> RouterEmulator {
    RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn client(emu: &RouterEmulator, cfg: ClientConfig, stats: &ReplyStats) -> RouterClient {
    RouterClient::connect_with_stats(
        &ConnectOptions::from_url(&emu.url()).unwrap(),
        cfg,
        stats.clone(),
    )
    .await
    .unwrap()
}

fn connector(name: &str) -> serde_json::Map<String, Json> {
    json!({"host": "127.0.0.1", "port": "5673", "role": "route-container", "name": name})
        .as_object()
        .unwrap()
        .clone()
}

fn address(name: &str) -> serde_json::Map<String, Json> {
    json!({"prefix": name, "distribution": "balanced"})
        .as_object()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_sees_each_agent_echo_the_recorded_types() {
    let emu = emulator().await;
    let url = emu.url();
    let out = tokio::task::spawn_blocking(move || {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/correlation_echo.py");
        Command::new("timeout")
            .args(["60", "/usr/bin/python3", script, &url])
            // proton-c prints every frame as it went over the wire, as in the recording.
            .env("PN_TRACE_FRM", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Json> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 24, "{rows:?}");
    for row in &rows {
        let entity = row["entity"].as_str().unwrap();
        let sent = row["sent"].as_str().unwrap();
        // python-agent-and-mesh.txt §1, the table: the C agent echoes every type as sent; the Python agent
        // (connector) turns ulong 7 into an int 7, which proton-c's message decoder drops (it is not a legal
        // message-id: the frame trace below shows it), and a uuid into null.
        let (want_type, want_value) = match (entity, sent) {
            ("connector", "ulong") => ("NoneType", "None"),
            ("connector", "uuid") => ("NoneType", "None"),
            (_, "ulong") => ("int", "7"),
            (_, "uuid") => ("UUID", "UUID('00000000-0000-0000-0000-000000000007')"),
            (_, "string") => ("str", "'7'"),
            (_, "binary") => ("bytes", "b'\\x07'"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (
                row["type"].as_str().unwrap(),
                row["value"].as_str().unwrap()
            ),
            (want_type, want_value),
            "{row}"
        );
        let ok = match row["operation"].as_str().unwrap() {
            "QUERY" => 200,
            "CREATE" => 201,
            _ => 204,
        };
        assert_eq!(row["status"], json!(ok), "{row}");
    }
    // The reply frames as proton-c traced them, compared with the recorded ones (§1: "request 1 carries
    // correlation-id `S\x07` (smallulong 7); its reply carries `T\x07` (smallint 7)", "request 2 carries
    // `\x98 <16 bytes>` (uuid); its reply carries `@` (null)"): the properties end `<to>@@<correlation-id>`,
    // then the application-properties section `\x00St` starts.
    let trace = String::from_utf8_lossy(&out.stderr);
    let replies: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("<- @transfer"))
        .collect();
    assert_eq!(replies.len(), 24, "{trace}");
    let count = |needle: &str| replies.iter().filter(|l| l.contains(needle)).count();
    // ulong 7: int 7 from the Python agent (3 connector requests), smallulong 7 from the C agent (3 address).
    assert_eq!(count(r"@@T\x07\x00St"), 3, "{trace}");
    assert_eq!(count(r"@@S\x07\x00St"), 3, "{trace}");
    // uuid: null from the Python agent, the uuid from the C agent.
    assert_eq!(count(r"@@@\x00St"), 3, "{trace}");
    assert_eq!(count(r"@@\x98"), 3, "{trace}");
    // string "7" and binary 7 come back as sent from both.
    assert_eq!(count(r"@@\xa1\x017\x00St"), 6, "{trace}");
    assert_eq!(count(r"@@\xa0\x01\x07\x00St"), 6, "{trace}");
    emu.stop().await;
}

/// What the agent's client did before (ulong correlation-ids, strict decoding) against a connector QUERY:
/// fe2o3 cannot decode the Python agent's reply at all, so a client matching replies by correlation-id
/// never sees it (it used to end in a 10 s timeout, then a reconnect, forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_client_cannot_decode_the_python_agents_reply_to_a_ulong_id() {
    let emu = emulator().await;
    let mut connection = Connection::open("old-client", emu.url().as_str())
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "old-client-mgmt", "$management")
        .await
        .unwrap();
    let mut receiver = Receiver::builder()
        .name("old-client-replies")
        .source(Source::builder().dynamic(true).build())
        .target(Target::builder().build())
        .attach(&mut session)
        .await
        .unwrap();
    let reply_to = receiver
        .source()
        .as_ref()
        .and_then(|s| s.address.clone())
        .unwrap();
    for (entity_type, id) in [(ADDRESS, 1u64), (CONNECTOR, 2)] {
        let props = fe2o3_amqp::types::messaging::ApplicationProperties::builder()
            .insert("operation", SimpleValue::String("QUERY".into()))
            .insert("type", SimpleValue::String("org.amqp.management".into()))
            .insert("name", SimpleValue::String("self".into()))
            .insert("entityType", SimpleValue::String(entity_type.into()))
            .build();
        let message = Message::builder()
            .properties(
                Properties::builder()
                    .reply_to(reply_to.clone())
                    .correlation_id(MessageId::Ulong(id))
                    .build(),
            )
            .application_properties(props)
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                Value::Map(Default::default()),
            )))
            .build();
        sender.send(message).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
            .await
            .unwrap();
        if entity_type == ADDRESS {
            // The C agent echoes the ulong: decodable.
            let d = got.unwrap();
            assert_eq!(
                d.message()
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_id.clone()),
                Some(MessageId::Ulong(1))
            );
        } else {
            match got {
                Err(RecvError::MessageDecode(e)) => {
                    assert!(e.to_string().contains("Invalid format code"), "{e}")
                }
                other => panic!("expected an undecodable reply, got {other:?}"),
            }
        }
    }
    let _ = connection.close().await;
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_client_with_every_correlation_id_type() {
    let emu = emulator().await;
    for ids in [
        CorrelationIds::String,
        CorrelationIds::Binary,
        CorrelationIds::Ulong,
        CorrelationIds::Uuid,
    ] {
        let stats = ReplyStats::default();
        let cfg = ClientConfig {
            request_timeout: Duration::from_millis(800),
            max_consecutive_timeouts: 100,
            correlation_ids: ids,
            ..Default::default()
        };
        let c = client(&emu, cfg, &stats).await;
        let name = format!("maas-{ids:?}").to_lowercase();
        // The C agent echoes every type: address operations work with all of them.
        c.create(ADDRESS, &name, address(&name)).await.unwrap();
        assert!(!c.query(ADDRESS, &["name"]).await.unwrap().is_empty());
        c.delete(ADDRESS, &name).await.unwrap();

        let started = Instant::now();
        let connector_query = c.query(CONNECTOR, &["name"]).await;
        match ids {
            // Echoed unchanged by the Python agent too.
            CorrelationIds::String | CorrelationIds::Binary => {
                connector_query.unwrap();
                c.create(CONNECTOR, &name, connector(&name)).await.unwrap();
                c.delete(CONNECTOR, &name).await.unwrap();
                assert_eq!((stats.undecodable(), stats.unmatched()), (0, 0));
            }
            // The reply cannot be decoded, but its correlation-id (an int) still names the request: it fails at
            // once, saying what is wrong, instead of timing out.
            CorrelationIds::Ulong => {
                let err = connector_query.unwrap_err();
                assert!(
                    started.elapsed() < Duration::from_millis(500),
                    "failed fast"
                );
                let MgmtError::BadReply {
                    operation,
                    entity_type,
                    reason,
                    ..
                } = &err
                else {
                    panic!("{err:?}")
                };
                assert_eq!(
                    (operation.as_str(), entity_type.as_str()),
                    ("QUERY", CONNECTOR)
                );
                assert!(reason.contains("correlation-id int"), "{err}");
                assert!(reason.contains("sent as ulong"), "{err}");
                assert!(
                    err.to_string()
                        .starts_with("QUERY org.apache.qpid.dispatch.connector")
                );
                assert_eq!(err.metric_label(), "bad_reply");
                assert_eq!(stats.undecodable(), 1);
                // More undecodable replies than the reply link's credit (250): none of them uses credit up
                // for good, and the connection still works.
                let mut fails = Vec::new();
                for _ in 0..300 {
                    let c = c.clone();
                    fails.push(tokio::spawn(async move {
                        c.query_page(CONNECTOR, &["name"], 0, 10).await
                    }));
                }
                for f in fails {
                    assert!(matches!(f.await.unwrap(), Err(MgmtError::BadReply { .. })));
                }
                assert_eq!(stats.undecodable(), 301);
                assert!(c.query(ADDRESS, &["name"]).await.is_ok());
            }
            // The Python agent drops a uuid: the reply names no request. It is counted and logged, and the
            // request ends in a timeout; the connection stays.
            CorrelationIds::Uuid => {
                let err = connector_query.unwrap_err();
                assert!(matches!(err, MgmtError::Timeout { .. }), "{err:?}");
                assert!(
                    wait(|| stats.unmatched() == 1).await,
                    "unmatched {}",
                    stats.unmatched()
                );
                assert_eq!(stats.timeouts(), 1);
                assert!(!c.is_closed());
                assert!(c.query(ADDRESS, &["name"]).await.is_ok());
            }
        }
        c.close().await;
    }
    emu.stop().await;
}

async fn wait(mut f: impl FnMut() -> bool) -> bool {
    maas_e2e::support::wait_until(Duration::from_secs(5), &mut f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_timeout_fails_one_request_and_repeated_timeouts_drop_the_connection() {
    let emu = emulator().await;
    let stats = ReplyStats::default();
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(200),
        max_consecutive_timeouts: 3,
        ..Default::default()
    };
    let c = client(&emu, cfg, &stats).await;
    // Two timeouts, then a reply: the count starts again.
    emu.withhold_replies(true);
    for _ in 0..2 {
        let err = c.read(ADDRESS, "x").await.unwrap_err();
        assert!(matches!(err, MgmtError::Timeout { .. }), "{err:?}");
        assert!(!err.is_connection_error());
    }
    emu.withhold_replies(false);
    assert_eq!(c.read(ADDRESS, "x").await.unwrap(), None);
    emu.withhold_replies(true);
    for _ in 0..2 {
        assert!(matches!(
            c.read(ADDRESS, "x").await,
            Err(MgmtError::Timeout { .. })
        ));
    }
    assert!(!c.is_closed(), "two in a row: still connected");
    // The third in a row: the peer stopped answering.
    assert!(matches!(
        c.read(ADDRESS, "x").await,
        Err(MgmtError::Timeout { .. })
    ));
    tokio::time::timeout(Duration::from_secs(2), c.closed())
        .await
        .unwrap();
    let reason = c.close_reason().unwrap();
    assert!(reason.contains("3 requests in a row"), "{reason}");
    assert!(matches!(
        c.read(ADDRESS, "x").await,
        Err(MgmtError::Disconnected(_))
    ));
    assert_eq!(stats.timeouts(), 5);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_timed_out_in_the_send_queue_is_never_sent() {
    // The router takes 2 requests at a time (link credit 2, its capacity) and answers after 1 s.
    let emu = RouterEmulator::start(EmulatorConfig {
        cost_model: false,
        management_credit: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let stats = ReplyStats::default();
    let cfg = ClientConfig {
        window: 10,
        request_timeout: Duration::from_millis(300),
        max_consecutive_timeouts: 100,
        ..Default::default()
    };
    let c = client(&emu, cfg, &stats).await;
    emu.set_latency(Duration::from_secs(1));
    emu.reset_counters();
    let mut all = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        all.push(tokio::spawn(async move {
            c.read(ADDRESS, &format!("q{i}")).await
        }));
    }
    for r in all {
        assert!(matches!(r.await.unwrap(), Err(MgmtError::Timeout { .. })));
    }
    // Wait until the router has answered what it took and would take more.
    emu.set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let read = emu.counters().read;
    assert!(
        read < 10,
        "requests that timed out while queued were sent anyway: the router saw {read} of 10"
    );
    assert!(read >= 2, "{read}");
    // The connection is still good.
    assert_eq!(c.read(ADDRESS, "q0").await.unwrap(), None);
    emu.stop().await;
}
