//! `maas_amqp::lean` against fe2o3 clients, on the protocol points config-service's own tests do not reach:
//! a large message in frames of the peer's smallest max-frame-size through a small session window, a peer's idle
//! timeout kept alive by our empty frames, a session ended and begun again on one connection, a drain, and a peer
//! that sends plain AMQP without SASL.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::AmqpError;
use fe2o3_amqp::types::messaging::{AmqpValue, Message};
use fe2o3_amqp::{Connection, Receiver, Session};
use maas_amqp::lean::{Encoded, IncomingAttach, LeanServer, SendHandler};
use maas_amqp::server::{ServerOptions, ServerStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Sends `count` copies of one message on source `many`; refuses anything else.
struct Many {
    message: Encoded,
    count: usize,
}

impl SendHandler for Many {
    async fn on_attach(&self, link: IncomingAttach) {
        if link.source_address().as_deref() != Some("many") {
            link.refuse(AmqpError::NotFound, "only \"many\" here".to_string())
                .await;
            return;
        }
        let Ok(mut accepted) = link.accept_sender().await else {
            return;
        };
        let (message, count) = (self.message.clone(), self.count);
        let tracker = accepted.tracker.clone();
        tracker.spawn(async move {
            let scope = accepted.scope.clone();
            for _ in 0..count {
                tokio::select! {
                    () = scope.cancelled() => return,
                    r = accepted.sender.send(&message) => if r.is_err() { return },
                }
            }
            scope.cancelled().await;
        });
    }
}

async fn start(
    text: &str,
    count: usize,
    options: ServerOptions,
) -> (SocketAddr, Arc<ServerStats>, CancellationToken) {
    let message = Message::builder().value(text.to_string()).build();
    let handler = Many {
        message: Encoded::new(&message).unwrap(),
        count,
    };
    let stats = Arc::new(ServerStats::default());
    let server = LeanServer::bind_with_stats(
        "127.0.0.1:0".parse().unwrap(),
        options,
        handler,
        Arc::clone(&stats),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(stop.clone().cancelled_owned()));
    (addr, stats, stop)
}

async fn connect(
    addr: SocketAddr,
    max_frame: u32,
    idle_ms: Option<u32>,
) -> fe2o3_amqp::connection::ConnectionHandle<()> {
    let mut builder = Connection::builder()
        .container_id("lean-test")
        .max_frame_size(max_frame)
        .sasl_profile(SaslProfile::Anonymous);
    if let Some(ms) = idle_ms {
        builder = builder.idle_time_out(ms);
    }
    builder
        .open(format!("amqp://{addr}").as_str())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_large_message_crosses_in_small_frames_through_a_small_session_window() {
    // 300 KB in 512-byte frames: ~600 transfer frames through a session window of 8 frames.
    let text = "x".repeat(300_000);
    let (addr, _, stop) = start(&text, 3, ServerOptions::new("lean")).await;
    let mut connection = connect(addr, 512, None).await;
    let mut session = Session::builder()
        .incoming_window(8)
        .begin(&mut connection)
        .await
        .unwrap();
    let mut receiver = Receiver::builder()
        .name("r")
        .source("many")
        .credit_mode(CreditMode::Auto(1))
        // Pre-settled deliveries: accepting sends nothing, but it is what refills auto credit in fe2o3.
        .auto_accept(true)
        .attach(&mut session)
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(
            Duration::from_secs(20),
            receiver.recv::<AmqpValue<String>>(),
        )
        .await
        .expect("the message arrives")
        .unwrap();
        assert_eq!(delivery.body().0.len(), 300_000);
        assert!(delivery.body().0.bytes().all(|b| b == b'x'));
    }
    receiver.close().await.unwrap();
    session.end().await.unwrap();
    connection.close().await.unwrap();
    stop.cancel();
}

#[tokio::test]
async fn our_empty_frames_keep_a_peer_with_an_idle_timeout_connected_and_sessions_can_begin_again()
{
    let (addr, stats, stop) = start("hello", 1, ServerOptions::new("lean")).await;
    // The peer drops a connection silent for 300 ms; we send nothing but heartbeats for 1.2 s.
    let mut connection = connect(addr, 4096, Some(300)).await;
    for round in 0..2 {
        let mut session = Session::begin(&mut connection).await.unwrap();
        let mut receiver = Receiver::attach(&mut session, format!("r{round}"), "many")
            .await
            .unwrap();
        let delivery = receiver.recv::<AmqpValue<String>>().await.unwrap();
        assert_eq!(delivery.body().0, "hello");
        tokio::time::sleep(Duration::from_millis(600)).await;
        // A drain with nothing left to send comes back at once, the credit used up.
        tokio::time::timeout(Duration::from_secs(5), receiver.drain())
            .await
            .expect("the drain is answered")
            .unwrap();
        receiver.close().await.unwrap();
        session.end().await.unwrap();
    }
    assert_eq!(stats.open_connections.load(Ordering::Acquire), 1);
    assert_eq!(stats.open_links.load(Ordering::Acquire), 0);
    connection.close().await.unwrap();
    stop.cancel();
}

#[tokio::test]
async fn a_refused_source_gets_not_found_and_the_connection_stays_usable() {
    let (addr, _, stop) = start("hello", 1, ServerOptions::new("lean")).await;
    let mut connection = connect(addr, 4096, None).await;
    let mut session = Session::begin(&mut connection).await.unwrap();
    let refused = Receiver::attach(&mut session, "bad", "nothing-here").await;
    let text = format!("{refused:?}");
    assert!(
        text.contains("NotFound") && text.contains("only \\\"many\\\" here"),
        "{text}"
    );
    // The same session goes on (the refusal's detach answered fe2o3's own, see lean::REFUSE_GRACE).
    let mut receiver = Receiver::attach(&mut session, "good", "many")
        .await
        .unwrap();
    let delivery = receiver.recv::<AmqpValue<String>>().await.unwrap();
    assert_eq!(delivery.body().0, "hello");
    connection.close().await.unwrap();
    stop.cancel();
}

#[tokio::test]
async fn a_peer_without_sasl_gets_the_sasl_header_and_is_dropped() {
    let (addr, stats, stop) = start("hello", 1, ServerOptions::new("lean")).await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
    let mut header = [0u8; 8];
    socket.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, b"AMQP\x03\x01\x00\x00");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest))
        .await
        .expect("the server closes the socket")
        .unwrap();
    assert!(rest.is_empty());
    assert_eq!(stats.handshake_failures.load(Ordering::Acquire), 1);
    stop.cancel();
}

/// One frame of `body` (SASL frames: type 1), as the wire has it.
fn frame_bytes<B: serde_amqp::serde::Serialize>(frame_type: u8, body: &B) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0, 2, frame_type, 0, 0];
    out.extend(serde_amqp::to_vec(body).unwrap());
    let size = (out.len() as u32).to_be_bytes();
    out[..4].copy_from_slice(&size);
    out
}

/// What a raw client writes first: the SASL header, an ANONYMOUS init, the AMQP header and an `open` announcing
/// `max_frame` and no idle timeout (the server's answers are left to the caller to read).
fn raw_hello(container: &str, max_frame: u32) -> Vec<u8> {
    use fe2o3_amqp::frames::sasl::Frame as SaslFrame;
    use fe2o3_amqp::types::performatives::{ChannelMax, MaxFrameSize, Open};
    use fe2o3_amqp::types::primitives::Symbol;
    use fe2o3_amqp::types::sasl::SaslInit;

    let init = SaslFrame::Init(SaslInit {
        mechanism: Symbol::from("ANONYMOUS"),
        initial_response: None,
        hostname: None,
    });
    let open = Open {
        container_id: container.to_string(),
        hostname: None,
        max_frame_size: MaxFrameSize(max_frame),
        channel_max: ChannelMax(0),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let mut hello = b"AMQP\x03\x01\x00\x00".to_vec();
    hello.extend(frame_bytes(1, &init));
    hello.extend(b"AMQP\x00\x01\x00\x00");
    hello.extend(frame_bytes(0, &open));
    hello
}

#[tokio::test]
async fn a_peer_silent_past_our_idle_timeout_is_closed_with_a_reason() {
    let mut options = ServerOptions::new("lean");
    options.idle_timeout = Duration::from_millis(300);
    let (addr, stats, stop) = start("hello", 1, options).await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let hello = raw_hello("silent", 4096);
    socket.write_all(&hello).await.unwrap();
    // Then nothing: the server closes after 300 ms, saying why, and ends the socket.
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut got))
        .await
        .expect("the server ends the connection")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("local-idle-timeout expired"), "{text:?}");
    assert!(text.contains("amqp:resource-limit-exceeded"), "{text:?}");
    assert_eq!(stats.open_connections.load(Ordering::Acquire), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_ids_reach_the_wire_in_sequence_when_links_of_a_session_send_at_once() {
    use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
    use fe2o3_amqp::types::messaging::Source;
    use fe2o3_amqp::types::performatives::{Attach, Begin, Flow, Performative};

    // 8 links of one session, 50 messages of 3 frames each on every link, all sent at once: proton closes a session
    // whose delivery-ids arrive out of sequence ("sequencing error"), so check exactly that.
    const LINKS: u32 = 8;
    const COUNT: usize = 50;
    let (addr, _, stop) = start(&"y".repeat(1200), COUNT, ServerOptions::new("lean")).await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: u32::MAX,
        outgoing_window: u32::MAX,
        handle_max: Handle(LINKS),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let mut hello = raw_hello("sequence", 512);
    hello.extend(frame_bytes(0, &begin));
    for h in 0..LINKS {
        let attach = Attach {
            name: format!("link-{h}"),
            handle: Handle(h),
            role: Role::Receiver,
            snd_settle_mode: SenderSettleMode::Settled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Box::new(Source::builder().address("many").build())),
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let flow = Flow {
            next_incoming_id: None,
            incoming_window: u32::MAX,
            next_outgoing_id: 0,
            outgoing_window: u32::MAX,
            handle: Some(Handle(h)),
            delivery_count: Some(0),
            link_credit: Some(COUNT as u32),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        hello.extend(frame_bytes(0, &attach));
        hello.extend(frame_bytes(0, &flow));
    }
    socket.write_all(&hello).await.unwrap();
    let mut header = [0u8; 8];
    socket.read_exact(&mut header).await.unwrap(); // SASL header
    let mut next_id = 0u32;
    let mut complete = 0usize;
    let mut body = Vec::new();
    let read = async {
        while complete < LINKS as usize * COUNT {
            let mut head = [0u8; 8];
            socket.read_exact(&mut head).await.unwrap();
            if &head == b"AMQP\x00\x01\x00\x00" {
                continue;
            }
            let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            body.resize(size - 8, 0);
            socket.read_exact(&mut body).await.unwrap();
            if head[5] != 0 || body.is_empty() {
                continue; // SASL frames, heartbeats
            }
            let mut cursor = std::io::Cursor::new(&body[..]);
            if let Ok(Performative::Transfer(t)) = serde_amqp::from_reader(&mut cursor) {
                if let Some(id) = t.delivery_id {
                    assert_eq!(id, next_id, "delivery-ids out of sequence");
                    next_id += 1;
                }
                if !t.more {
                    complete += 1;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("every delivery arrives");
    assert_eq!(next_id, LINKS * COUNT as u32);
    stop.cancel();
}
