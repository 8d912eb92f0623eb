//! A lean AMQP 1.0 server for links that only SEND shared, pre-encoded messages: config-service's fan-out of one
//! snapshot (or delta) to a thousand subscribers (issue 12; docs/architecture.md §3 "Incremental mode").
//!
//! Why not [`crate::server`] (fe2o3's acceptors): fe2o3 0.18 keeps ~95 KB per connection (its connection,
//! session and link engines talk over about ten tokio channels, each with an 8.7 KB block allocated up front),
//! keeps each connection's write buffer as large as the largest frame it ever wrote, and copies every message
//! three times per send (encode, frame payload, codec buffer). For 1,000 subscribers of a 1.4 MB snapshot that is
//! ~400 MB resident and ~700 ms of CPU per edit. Here:
//! - a message is encoded ONCE ([`Encoded`], shared `Bytes`); each send writes frame headers of a few dozen bytes
//!   and slices of that one buffer, with vectored writes straight to the socket (TLS: to rustls);
//! - one reader task and one writer task per connection, no per-session or per-link engine; the writer's queue
//!   holds at most [`WRITE_QUEUE`] frames (slices, not copies), which is also the back-pressure on a sender;
//! - sessions and links are small structs under a mutex, shared with the tasks serving the links.
//!
//! What it speaks (AMQP 1.0, OASIS): the SASL layer (ANONYMOUS, PLAIN, EXTERNAL — the same checks as
//! [`crate::server`], which it shares), plain TLS on the socket (no AMQP TLS header, as qdrouterd and Artemis),
//! open / begin / attach / flow / transfer (pre-settled, split to the peer's max-frame-size, respecting the
//! session's incoming window and the link's credit) / disposition (ignored: every delivery is pre-settled) /
//! detach / end / close, empty frames for the peer's idle timeout, and our own idle timeout. Links where the peer
//! SENDS are refused (attach with a null target, then detach with the error), as config-service refuses them.
//! Limits and their refusal texts are those of [`crate::server`]: open connections, links per connection, frame
//! size, handshake timeout.
//!
//! Not implemented, because no sender of pre-settled snapshots needs it: unsettled deliveries, link recovery
//! (`unsettled` maps), resuming deliveries, dynamic nodes, receiving messages. A peer doing any of those gets an
//! error naming what is not supported.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::frames::sasl::Frame as SaslFrame;
use fe2o3_amqp::types::definitions::{
    AmqpError, ConnectionError, Error as ErrorBody, ErrorCondition, Handle, ReceiverSettleMode,
    Role, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{Message, SerializableBody};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, ChannelMax, Close, Detach, End, Flow, MaxFrameSize, Open, Performative, Transfer,
};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::server::{
    ConnSasl, ConnectionInfo, Counted, HandshakeError, LinkGuard, ServerError, ServerOptions,
    ServerStats, WriteProgress, accept_connections, attach_fields, bind_listener,
    report_handshake_failure, reserve_connection, x509_user,
};

/// How long a refused link waits for the peer's own detach before we send ours (with the error). A peer that sees
/// our attach without the source (or target) it asked for may detach at once — fe2o3 clients do, and an fe2o3
/// client that gets our detach while it is still processing that attach can lose its whole session (seen with
/// fe2o3 0.18.4 when attach and detach arrived in one write) — so our detach, carrying the reason, answers theirs;
/// a peer that waits for us (proton) gets it after this grace.
pub const REFUSE_GRACE: Duration = Duration::from_millis(200);

/// Frames the writer task of a connection queues at most (each a frame header and a slice of a shared message, or
/// one small encoded frame): what a sender may be ahead of the socket.
pub const WRITE_QUEUE: usize = 16;

const FRAME_TYPE_AMQP: u8 = 0;
const FRAME_TYPE_SASL: u8 = 1;
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
/// Every peer may send frames of at least this size (AMQP 1.0 §2.7.1, `MIN-MAX-FRAME-SIZE`).
const MIN_MAX_FRAME_SIZE: u32 = 512;
/// The session incoming window we announce: we take no transfers, so any value works; the largest keeps a peer
/// that counts it from ever waiting.
const OUR_INCOMING_WINDOW: u32 = i32::MAX as u32;

/// A message's encoded sections, built once and sent by reference to every link (each send writes slices of it).
#[derive(Clone, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("len", &self.0.len())
            .finish()
    }
}

impl Encoded {
    /// Encodes `message` exactly as fe2o3 does for a send (its own serializer: header, properties, application
    /// properties, body sections).
    pub fn new<T: SerializableBody>(message: &Message<T>) -> Result<Encoded, serde_amqp::Error> {
        serde_amqp::to_vec(&Serializable(message)).map(|v| Encoded(Bytes::from(v)))
    }

    /// No bytes (a placeholder where encoding failed).
    pub fn empty() -> Encoded {
        Encoded(Bytes::new())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty (never, for a real message).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a send did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer detached the link, or its session or connection ended.
    #[error("the link is gone")]
    Gone,
}

/// One item for a connection's writer task.
enum Out {
    /// A whole encoded frame.
    Frame(Vec<u8>),
    /// A transfer frame: its header and performative, then a slice of a shared message.
    Transfer { head: Vec<u8>, payload: Bytes },
}

/// Encodes one frame: size, data offset 2, `frame_type`, `channel`, then `body` (nothing for an empty frame).
fn encode_frame<B: Serialize>(
    frame_type: u8,
    channel: u16,
    body: Option<&B>,
    extra: usize,
) -> Result<Vec<u8>, serde_amqp::Error> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0, 0, 0, 0, 2, frame_type]);
    buf.extend_from_slice(&channel.to_be_bytes());
    if let Some(body) = body {
        let mut serializer = serde_amqp::ser::Serializer::new(&mut buf);
        body.serialize(&mut serializer)?;
    }
    let size = u32::try_from(buf.len() + extra).unwrap_or(u32::MAX);
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

/// Who is attached, per session: the link state a sending task and the reader share.
struct Link {
    name: String,
    our_handle: u32,
    flow: Mutex<LinkFlow>,
    changed: Notify,
    /// Cancelled when the peer detached the link, or its session or connection ended.
    scope: CancellationToken,
    /// Cancelled when the PEER detached (their detach arrived).
    peer_detached: CancellationToken,
    /// The error of a refusal not yet sent: it goes with our detach (see [`REFUSE_GRACE`]).
    refusal: Mutex<Option<ErrorBody>>,
}

#[derive(Debug, Default)]
struct LinkFlow {
    delivery_count: u32,
    credit: u32,
    drain: bool,
    /// A send is writing a delivery (a drain must wait for it).
    sending: bool,
    /// We sent our detach.
    detached: bool,
}

struct Session {
    our_channel: u16,
    /// Held while the first frame of a delivery is numbered and queued (see [`LeanSender::send`]).
    order: tokio::sync::Mutex<()>,
    flow: Mutex<SessionFlow>,
    changed: Notify,
    /// By the PEER's handle.
    links: Mutex<HashMap<u32, Arc<Link>>>,
    scope: CancellationToken,
}

#[derive(Debug, Default)]
struct SessionFlow {
    next_outgoing_id: u32,
    remote_incoming_window: u32,
    next_delivery_id: u32,
    next_handle: u32,
    /// Their next-outgoing-id as last heard (we count no incoming transfers: we refuse them).
    their_next_outgoing_id: u32,
}

/// What the reader, the writer and the link tasks of one connection share.
struct Conn {
    info: Arc<ConnectionInfo>,
    out: mpsc::Sender<Out>,
    /// The largest frame the peer takes.
    peer_max_frame: usize,
    scope: CancellationToken,
    /// By the PEER's channel.
    sessions: Mutex<HashMap<u16, Arc<Session>>>,
    links: Arc<AtomicUsize>,
    stats: Arc<ServerStats>,
    tracker: TaskTracker,
    close_timeout: Duration,
    max_links: usize,
}

impl Conn {
    /// Queues `frame` for writing; false when the connection is gone.
    async fn write(&self, frame: Out) -> bool {
        self.out.send(frame).await.is_ok()
    }

    async fn write_performative<P: Serialize>(&self, channel: u16, body: &P) -> bool {
        match encode_frame(FRAME_TYPE_AMQP, channel, Some(body), 0) {
            Ok(frame) => self.write(Out::Frame(frame)).await,
            Err(error) => {
                warn!(connection = self.info.id, %error, "cannot encode a frame");
                false
            }
        }
    }
}

/// One incoming attach, handed to the [`SendHandler`]; accept it as a sender or refuse it. Dropping it unanswered
/// refuses it with `amqp:internal-error`.
pub struct IncomingAttach {
    attach: Option<Attach>,
    conn: Arc<Conn>,
    session: Arc<Session>,
}

impl fmt::Debug for IncomingAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingAttach")
            .field("name", &self.name())
            .field("source", &self.source_address())
            .field("connection", &self.conn.info.id)
            .finish_non_exhaustive()
    }
}

/// What a handler gets for an accepted sending link.
#[derive(Debug)]
pub struct AcceptedSender {
    /// Our sending end (the peer receives).
    pub sender: LeanSender,
    /// Cancelled when the link, its session, the connection or the server ends: select on it around every send.
    pub scope: CancellationToken,
    /// Keep it as long as the link is served (counts against the link limit).
    pub guard: LinkGuard,
    /// Spawn the task serving this link here: [`LeanServer::serve`] waits for it on shutdown.
    pub tracker: TaskTracker,
}

impl IncomingAttach {
    fn fields(&self) -> Option<&Attach> {
        self.attach.as_ref()
    }

    /// The link name.
    pub fn name(&self) -> &str {
        self.fields().map_or("", |a| a.name.as_str())
    }

    /// True when the peer RECEIVES on this link (we would be the sender).
    pub fn peer_receives(&self) -> bool {
        self.fields()
            .is_some_and(|a| matches!(a.role, Role::Receiver))
    }

    /// The source address the peer asked for.
    pub fn source_address(&self) -> Option<String> {
        attach_fields::source_address(self.fields()?)
    }

    /// The capabilities of the source the peer asked for, in order.
    pub fn source_capabilities(&self) -> Vec<String> {
        self.fields()
            .map(attach_fields::source_capabilities)
            .unwrap_or_default()
    }

    /// True when the peer asked for a dynamic source.
    pub fn source_dynamic(&self) -> bool {
        self.fields().is_some_and(attach_fields::source_dynamic)
    }

    /// The target address of the peer's attach.
    pub fn target_address(&self) -> Option<String> {
        attach_fields::target_address(self.fields()?)
    }

    /// The source's filter map as strings; `Err(key)` names the first entry whose value is not a string.
    pub fn filter_strings(&self) -> Result<BTreeMap<String, String>, String> {
        match self.fields() {
            Some(a) => attach_fields::filter_strings(a),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Who is on the other end.
    pub fn connection(&self) -> &Arc<ConnectionInfo> {
        &self.conn.info
    }

    /// Accepts the link as our sender, answering with no source capabilities.
    pub async fn accept_sender(self) -> Result<AcceptedSender, SendError> {
        self.accept_sender_with_capabilities(&[]).await
    }

    /// Accepts the link as our SENDER (pre-settled deliveries: an `unsettled` sender settle mode is answered with
    /// `settled`); the source of our attach lists `capabilities` (what we grant of what the peer asked for).
    pub async fn accept_sender_with_capabilities(
        mut self,
        capabilities: &[&str],
    ) -> Result<AcceptedSender, SendError> {
        let Some(attach) = self.attach.take() else {
            return Err(SendError::Gone);
        };
        if !matches!(attach.role, Role::Receiver) {
            self.attach = Some(attach);
            self.refuse_now(
                AmqpError::NotAllowed.into(),
                "this server only sends on its links; attach a receiver".to_string(),
            )
            .await;
            return Err(SendError::Gone);
        }
        let link = self.register(&attach);
        let mut source = attach.source.clone();
        if let Some(source) = source.as_mut() {
            source.capabilities = (!capabilities.is_empty()).then(|| {
                Array::from(
                    capabilities
                        .iter()
                        .map(|c| Symbol::from(*c))
                        .collect::<Vec<_>>(),
                )
            });
        }
        let snd_settle_mode = match attach.snd_settle_mode {
            SenderSettleMode::Mixed => SenderSettleMode::Mixed,
            _ => SenderSettleMode::Settled,
        };
        let reply = Attach {
            name: attach.name.clone(),
            handle: Handle(link.our_handle),
            role: Role::Sender,
            snd_settle_mode,
            rcv_settle_mode: ReceiverSettleMode::First,
            source,
            target: attach.target.clone(),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        if !self
            .conn
            .write_performative(self.session.our_channel, &reply)
            .await
        {
            return Err(SendError::Gone);
        }
        self.conn.links.fetch_add(1, Ordering::AcqRel);
        self.conn.stats.open_links.fetch_add(1, Ordering::AcqRel);
        let guard = LinkGuard::new(Arc::clone(&self.conn.links), Arc::clone(&self.conn.stats));
        Ok(AcceptedSender {
            scope: link.scope.clone(),
            sender: LeanSender {
                conn: Arc::clone(&self.conn),
                session: Arc::clone(&self.session),
                link,
                next_tag: 0,
            },
            guard,
            tracker: self.conn.tracker.clone(),
        })
    }

    /// Refuses the link: attaches it with a null source (a receiving peer) or target (a sending peer), as the
    /// spec suggests, and detaches it at once with `condition` and `description`.
    pub async fn refuse(mut self, condition: impl Into<ErrorCondition>, description: String) {
        self.refuse_now(condition.into(), description).await;
    }

    async fn refuse_now(&mut self, condition: ErrorCondition, description: String) {
        let Some(attach) = self.attach.take() else {
            return;
        };
        debug!(
            connection = self.conn.info.id,
            link = %attach.name,
            ?condition,
            %description,
            "refusing link"
        );
        let link = self.register(&attach);
        let peer_receives = matches!(attach.role, Role::Receiver);
        let reply = Attach {
            name: attach.name.clone(),
            handle: Handle(link.our_handle),
            role: if peer_receives {
                Role::Sender
            } else {
                Role::Receiver
            },
            snd_settle_mode: attach.snd_settle_mode.clone(),
            rcv_settle_mode: attach.rcv_settle_mode.clone(),
            source: if peer_receives { None } else { attach.source },
            target: if peer_receives { attach.target } else { None },
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: peer_receives.then_some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let channel = self.session.our_channel;
        *lock(&link.refusal) = Some(ErrorBody::new(condition, Some(description), None));
        if !self.conn.write_performative(channel, &reply).await {
            return;
        }
        // The detach with the error follows the peer's own detach, or REFUSE_GRACE.
        let conn = Arc::clone(&self.conn);
        self.conn.tracker.spawn(async move {
            tokio::select! {
                () = link.peer_detached.cancelled() => {}
                () = link.scope.cancelled() => {}
                () = tokio::time::sleep(REFUSE_GRACE) => {
                    let error = lock(&link.refusal).take();
                    if error.is_some() {
                        detach(&conn, channel, &link, error).await;
                    }
                }
            }
        });
    }

    /// Registers the peer's link (by its handle) with a new handle of ours.
    fn register(&self, attach: &Attach) -> Arc<Link> {
        let our_handle = {
            let mut flow = lock(&self.session.flow);
            let h = flow.next_handle;
            flow.next_handle = flow.next_handle.wrapping_add(1);
            h
        };
        let link = Arc::new(Link {
            name: attach.name.clone(),
            our_handle,
            flow: Mutex::new(LinkFlow::default()),
            changed: Notify::new(),
            scope: self.session.scope.child_token(),
            peer_detached: CancellationToken::new(),
            refusal: Mutex::new(None),
        });
        lock(&self.session.links).insert(attach.handle.0, Arc::clone(&link));
        link
    }
}

impl Drop for IncomingAttach {
    fn drop(&mut self) {
        if let Some(attach) = self.attach.take() {
            warn!(
                link = %attach.name,
                "link handler neither accepted nor refused a link; refusing it"
            );
            let mut again = IncomingAttach {
                attach: Some(attach),
                conn: Arc::clone(&self.conn),
                session: Arc::clone(&self.session),
            };
            self.conn.tracker.spawn(async move {
                again
                    .refuse_now(
                        AmqpError::InternalError.into(),
                        "the server did not answer this attach".to_string(),
                    )
                    .await;
            });
        }
    }
}

/// Sends our detach of `link` (closed), once.
async fn detach(conn: &Conn, channel: u16, link: &Link, error: Option<ErrorBody>) {
    {
        let mut flow = lock(&link.flow);
        if flow.detached {
            return;
        }
        flow.detached = true;
    }
    let frame = Detach {
        handle: Handle(link.our_handle),
        closed: true,
        error,
    };
    conn.write_performative(channel, &frame).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Our sending end of one link.
pub struct LeanSender {
    conn: Arc<Conn>,
    session: Arc<Session>,
    link: Arc<Link>,
    next_tag: u64,
}

impl fmt::Debug for LeanSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanSender")
            .field("link", &self.link.name)
            .field("connection", &self.conn.info.id)
            .finish_non_exhaustive()
    }
}

impl LeanSender {
    /// Sends `message` pre-settled: waits for link credit, then writes it in frames of the peer's max-frame-size
    /// as the session's window allows. Returns once the last frame is queued for the socket (at most
    /// [`WRITE_QUEUE`] frames, slices of `message`, are ever queued). Cancel-safe in the sense that matters: a send
    /// dropped before its first frame leaves nothing behind; one dropped part-way leaves a partial delivery the
    /// caller must end by closing the link (the peer then discards it).
    pub async fn send(&mut self, message: &Encoded) -> Result<(), SendError> {
        // Credit.
        loop {
            let notified = self.link.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut flow = lock(&self.link.flow);
                if flow.detached || self.link.scope.is_cancelled() {
                    return Err(SendError::Gone);
                }
                if flow.credit > 0 {
                    // The delivery counts from its first frame on: the peer may hold it (and report it in a flow)
                    // before this send returns, so credit and count move now, not after the last frame.
                    flow.credit -= 1;
                    flow.delivery_count = flow.delivery_count.wrapping_add(1);
                    flow.sending = true;
                    break;
                }
            }
            tokio::select! {
                () = self.link.scope.cancelled() => return Err(SendError::Gone),
                () = notified => {}
            }
        }
        let link = Arc::clone(&self.link);
        let sending = Sending(&link);
        let result = self.write_delivery(message).await;
        drop(sending);
        let drain_flow = drain_now(&mut lock(&self.link.flow));
        if let Some((delivery_count, credit)) = drain_flow {
            send_link_flow(
                &self.conn,
                &self.session,
                &self.link,
                delivery_count,
                credit,
            )
            .await;
        }
        result
    }

    async fn write_delivery(&mut self, message: &Encoded) -> Result<(), SendError> {
        let tag = self.next_tag.to_be_bytes();
        self.next_tag = self.next_tag.wrapping_add(1);
        let handle = Handle(self.link.our_handle);
        let channel = self.session.our_channel;
        let payload = &message.0;
        let mut offset = 0usize;
        // Delivery-ids must reach the wire in the order they are numbered (a peer checks the sequence: proton closes
        // the session with "sequencing error"), so the first frame of a delivery is numbered and queued under the
        // session's order lock, in one step with no await between.
        let mut order = Some(self.session.order.lock().await);
        loop {
            self.window_open().await?;
            // Queue space first (cancel-safe); then window, numbering and queueing happen at once.
            let permit = self.conn.out.reserve().await.map_err(|_| SendError::Gone)?;
            let first = order.is_some();
            let (head, end) = {
                let mut flow = lock(&self.session.flow);
                if flow.remote_incoming_window == 0 {
                    continue;
                }
                let mut transfer = Transfer {
                    handle: handle.clone(),
                    delivery_id: None,
                    delivery_tag: None,
                    message_format: None,
                    settled: None,
                    // The performative with `more` set is the longest (by one byte at most): size the chunk on it.
                    more: true,
                    rcv_settle_mode: None,
                    state: None,
                    resume: false,
                    aborted: false,
                    batchable: false,
                };
                if first {
                    transfer.delivery_id = Some(flow.next_delivery_id);
                    transfer.delivery_tag = Some(serde_bytes::ByteBuf::from(tag.to_vec()));
                    transfer.message_format = Some(0);
                    transfer.settled = Some(true);
                }
                let probe =
                    encode_frame(FRAME_TYPE_AMQP, channel, Some(&transfer), 0).map_err(|e| {
                        warn!(error = %e, "cannot encode a transfer");
                        SendError::Gone
                    })?;
                let room = self.conn.peer_max_frame.saturating_sub(probe.len()).max(1);
                let end = (offset + room).min(payload.len());
                transfer.more = end < payload.len();
                let head = encode_frame(FRAME_TYPE_AMQP, channel, Some(&transfer), end - offset)
                    .map_err(|_| SendError::Gone)?;
                flow.remote_incoming_window -= 1;
                flow.next_outgoing_id = flow.next_outgoing_id.wrapping_add(1);
                if first {
                    flow.next_delivery_id = flow.next_delivery_id.wrapping_add(1);
                }
                (head, end)
            };
            permit.send(Out::Transfer {
                head,
                payload: payload.slice(offset..end),
            });
            order = None;
            offset = end;
            if offset >= payload.len() {
                return Ok(());
            }
        }
    }

    /// Waits until the session's remote incoming window has room for a frame (taken when the frame is queued).
    async fn window_open(&self) -> Result<(), SendError> {
        loop {
            let notified = self.session.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.session.flow).remote_incoming_window > 0 {
                return Ok(());
            }
            tokio::select! {
                () = self.link.scope.cancelled() => return Err(SendError::Gone),
                () = notified => {}
            }
        }
    }

    /// Resolves when the peer detached the link (or its session or connection ended).
    pub async fn on_detach(&self) {
        tokio::select! {
            () = self.link.peer_detached.cancelled() => {}
            () = self.link.scope.cancelled() => {}
        }
    }

    /// Detaches the link (closed) with `error`, and waits (at most the server's close timeout) for the peer's
    /// detach.
    pub async fn close_with_error(self, error: ErrorBody) {
        detach(
            &self.conn,
            self.session.our_channel,
            &self.link,
            Some(error),
        )
        .await;
        let _ = tokio::time::timeout(self.conn.close_timeout, self.on_detach()).await;
    }
}

impl Drop for LeanSender {
    fn drop(&mut self) {
        // A link no task serves any more is detached (as fe2o3 does when its Sender is dropped).
        let already = {
            let mut flow = lock(&self.link.flow);
            std::mem::replace(&mut flow.detached, true)
        };
        if !already && !self.conn.scope.is_cancelled() {
            let frame = Detach {
                handle: Handle(self.link.our_handle),
                closed: true,
                error: None,
            };
            if let Ok(bytes) =
                encode_frame(FRAME_TYPE_AMQP, self.session.our_channel, Some(&frame), 0)
            {
                let _ = self.conn.out.try_send(Out::Frame(bytes));
            }
        }
    }
}

/// The credit we hold after a flow (AMQP 1.0 §2.6.7): link-credit(ours) = delivery-count(flow) +
/// link-credit(flow) minus delivery-count(ours), in serial-number arithmetic. A flow sent before the peer saw our latest deliveries grants
/// that much less; one granting less than we delivered since leaves none (the subtraction would wrap).
fn credit_after_flow(their_count: u32, link_credit: u32, our_count: u32) -> u32 {
    let credit = their_count
        .wrapping_add(link_credit)
        .wrapping_sub(our_count);
    if credit > link_credit { 0 } else { credit }
}

/// Marks a link's delivery as written until dropped (also when its send is cancelled part-way).
struct Sending<'a>(&'a Link);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        lock(&self.0.flow).sending = false;
    }
}

/// When the peer asked to drain and no delivery is being written: all credit is used up now; returns the
/// (delivery-count, credit) to announce.
fn drain_now(flow: &mut LinkFlow) -> Option<(u32, u32)> {
    if !flow.drain || flow.sending || flow.detached {
        return None;
    }
    flow.delivery_count = flow.delivery_count.wrapping_add(flow.credit);
    flow.credit = 0;
    flow.drain = false;
    Some((flow.delivery_count, 0))
}

async fn send_link_flow(
    conn: &Conn,
    session: &Session,
    link: &Link,
    delivery_count: u32,
    credit: u32,
) {
    let frame = {
        let flow = lock(&session.flow);
        Flow {
            next_incoming_id: Some(flow.their_next_outgoing_id),
            incoming_window: OUR_INCOMING_WINDOW,
            next_outgoing_id: flow.next_outgoing_id,
            outgoing_window: u32::MAX,
            handle: Some(Handle(link.our_handle)),
            delivery_count: Some(delivery_count),
            link_credit: Some(credit),
            available: Some(0),
            drain: true,
            echo: false,
            properties: None,
        }
    };
    conn.write_performative(session.our_channel, &frame).await;
}

/// The application's decision per incoming attach.
pub trait SendHandler: Send + Sync + 'static {
    /// Called for every incoming attach (within the link limit). Must accept or refuse `link` promptly (the
    /// connection's other frames wait) and serve an accepted link from a task spawned on its tracker.
    fn on_attach(&self, link: IncomingAttach) -> impl Future<Output = ()> + Send + '_;
}

/// A bound lean server.
pub struct LeanServer<H> {
    listener: TcpListener,
    local_addr: SocketAddr,
    options: Arc<ServerOptions>,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
}

impl<H> fmt::Debug for LeanServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanServer")
            .field("local_addr", &self.local_addr)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<H: SendHandler> LeanServer<H> {
    /// Binds `addr` (port 0 picks a free port), counting into `stats`.
    pub async fn bind_with_stats(
        addr: SocketAddr,
        options: ServerOptions,
        handler: H,
        stats: Arc<ServerStats>,
    ) -> Result<LeanServer<H>, ServerError> {
        let (listener, local_addr) = bind_listener(addr).await?;
        Ok(LeanServer {
            listener,
            local_addr,
            options: Arc::new(options),
            handler: Arc::new(handler),
            stats,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `shutdown` resolves; then closes every connection and waits (at most the close
    /// timeout plus a second) for every task it spawned.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let LeanServer {
            listener,
            local_addr,
            options,
            handler,
            stats,
        } = self;
        let tracker = TaskTracker::new();
        let connections = tracker.clone();
        accept_connections(
            listener,
            local_addr,
            &options,
            &stats,
            tracker,
            shutdown,
            |stream, peer, id, token| {
                let ctx = Ctx {
                    options: Arc::clone(&options),
                    handler: Arc::clone(&handler),
                    stats: Arc::clone(&stats),
                    tracker: connections.clone(),
                };
                connection(stream, peer, id, ctx, token)
            },
        )
        .await;
    }
}

struct Ctx<H> {
    options: Arc<ServerOptions>,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    tracker: TaskTracker,
}

/// Why a connection ended early; the texts go to the log (and, where the peer should know, into `close`).
#[derive(Debug)]
enum Fail {
    Io(std::io::Error),
    /// A protocol violation: close with this condition and text.
    Protocol(ErrorCondition, String),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Io(e)
    }
}

fn framing(text: impl Into<String>) -> Fail {
    Fail::Protocol(ConnectionError::FramingError.into(), text.into())
}

/// Reads one frame: (type, channel, body). `max` bounds its size.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: u32,
) -> Result<(u8, u16), Fail> {
    let mut head = [0u8; 8];
    reader.read_exact(&mut head).await?;
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if size < 8 {
        return Err(framing(format!("frame size {size} is below 8")));
    }
    if size > max {
        return Err(framing(format!(
            "frame of {size} bytes is larger than the max-frame-size {max}"
        )));
    }
    let doff = usize::from(head[4]) * 4;
    if doff < 8 || doff > size as usize {
        return Err(framing(format!("bad data offset {}", head[4])));
    }
    buf.clear();
    buf.resize(size as usize - 8, 0);
    reader.read_exact(buf).await?;
    buf.drain(..doff - 8);
    Ok((head[5], u16::from_be_bytes([head[6], head[7]])))
}

async fn write_raw<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

async fn connection<H: SendHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: Ctx<H>,
    token: CancellationToken,
) {
    let options = Arc::clone(&ctx.options);
    let written = Arc::new(WriteProgress::default());
    let counted = Counted::new(stream, Arc::clone(&written));
    let sasl = ConnSasl::new(options.sasl.clone(), options.sasl_external);
    match &options.tls {
        None => run(counted, peer, id, ctx, token, sasl, written).await,
        Some(tls) => {
            let accepted = tokio::select! {
                () = token.cancelled() => return,
                r = tokio::time::timeout(options.handshake_timeout, tls.accept(counted)) => r,
            };
            match accepted {
                Ok(Ok(tls_stream)) => {
                    if let Some(cert) = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                    {
                        sasl.set_peer_cert_user(x509_user(cert));
                    }
                    run(tls_stream, peer, id, ctx, token, sasl, written).await;
                }
                Ok(Err(e)) => {
                    let reason = format!("TLS handshake failed: {e}");
                    let failure = Some(HandshakeError::Other(reason));
                    report_handshake_failure(&ctx.stats, &options, id, peer, &sasl, failure);
                }
                Err(_) => report_handshake_failure(&ctx.stats, &options, id, peer, &sasl, None),
            }
        }
    }
}

/// What the handshake settled.
struct Opened {
    mechanism: String,
    user: String,
    peer_open: Open,
}

/// SASL (always: a peer sending the plain AMQP header gets the SASL one back and is dropped), then the AMQP header
/// and the peer's `open`.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    options: &ServerOptions,
    sasl: &mut ConnSasl,
) -> Result<Opened, HandshakeError> {
    let io = |e: std::io::Error| HandshakeError::Other(format!("I/O: {e}"));
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.map_err(io)?;
    if header != SASL_HEADER {
        let _ = write_raw(stream, &SASL_HEADER).await;
        return Err(HandshakeError::Other(format!(
            "protocol header {header:?} is not the SASL header (this server needs SASL)"
        )));
    }
    write_raw(stream, &SASL_HEADER).await.map_err(io)?;
    let mechanisms = SaslFrame::Mechanisms(SaslMechanisms {
        sasl_server_mechanisms: sasl.mechanisms(),
    });
    let frame = encode_frame(FRAME_TYPE_SASL, 0, Some(&mechanisms), 0)
        .map_err(|e| HandshakeError::Other(e.to_string()))?;
    write_raw(stream, &frame).await.map_err(io)?;
    let mut buf = Vec::new();
    let (ftype, _) = read_frame(stream, &mut buf, MIN_MAX_FRAME_SIZE.max(4096))
        .await
        .map_err(|e| HandshakeError::Other(format!("{e:?}")))?;
    let init = match (ftype, serde_amqp::from_slice::<SaslFrame>(&buf)) {
        (FRAME_TYPE_SASL, Ok(SaslFrame::Init(init))) => init,
        _ => {
            let outcome = SaslFrame::Outcome(SaslOutcome {
                code: SaslCode::Sys,
                additional_data: None,
            });
            if let Ok(frame) = encode_frame(FRAME_TYPE_SASL, 0, Some(&outcome), 0) {
                let _ = write_raw(stream, &frame).await;
            }
            return Err(HandshakeError::Sasl(SaslCode::Sys));
        }
    };
    let code = sasl.check_init(init);
    let outcome = SaslFrame::Outcome(SaslOutcome {
        code: code.clone(),
        additional_data: None,
    });
    let frame = encode_frame(FRAME_TYPE_SASL, 0, Some(&outcome), 0)
        .map_err(|e| HandshakeError::Other(e.to_string()))?;
    write_raw(stream, &frame).await.map_err(io)?;
    if code != SaslCode::Ok {
        return Err(HandshakeError::Sasl(code));
    }
    stream.read_exact(&mut header).await.map_err(io)?;
    if header != AMQP_HEADER {
        let _ = write_raw(stream, &AMQP_HEADER).await;
        return Err(HandshakeError::Other(format!(
            "protocol header {header:?} after SASL is not AMQP 1.0"
        )));
    }
    write_raw(stream, &AMQP_HEADER).await.map_err(io)?;
    let max = options.max_frame_size.max(MIN_MAX_FRAME_SIZE);
    let (ftype, _) = read_frame(stream, &mut buf, max)
        .await
        .map_err(|e| HandshakeError::Other(format!("{e:?}")))?;
    let peer_open = match (ftype, serde_amqp::from_slice::<Performative>(&buf)) {
        (FRAME_TYPE_AMQP, Ok(Performative::Open(open))) => open,
        _ => {
            return Err(HandshakeError::Other(
                "the first frame is not open".to_string(),
            ));
        }
    };
    let (mechanism, user) = sasl.seen().unwrap_or_default();
    Ok(Opened {
        mechanism,
        user,
        peer_open,
    })
}

fn our_open(options: &ServerOptions) -> Open {
    Open {
        container_id: options.container_id.clone(),
        hostname: None,
        max_frame_size: MaxFrameSize(options.max_frame_size.max(MIN_MAX_FRAME_SIZE)),
        channel_max: ChannelMax(u16::MAX),
        idle_time_out: Some(u32::try_from(options.idle_timeout.as_millis()).unwrap_or(u32::MAX)),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

/// Sends our `open` and a `close` with `error`, then drops the connection (after at most the close timeout).
async fn open_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    options: &ServerOptions,
    error: ErrorBody,
) {
    let mut bytes =
        encode_frame(FRAME_TYPE_AMQP, 0, Some(&our_open(options)), 0).unwrap_or_default();
    let close = Close { error: Some(error) };
    bytes.extend(encode_frame(FRAME_TYPE_AMQP, 0, Some(&close), 0).unwrap_or_default());
    let _ = tokio::time::timeout(options.close_timeout, write_raw(stream, &bytes)).await;
}

async fn run<S, H>(
    mut stream: S,
    peer: SocketAddr,
    id: u64,
    ctx: Ctx<H>,
    token: CancellationToken,
    mut sasl: ConnSasl,
    written: Arc<WriteProgress>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: SendHandler,
{
    let options = Arc::clone(&ctx.options);
    let stats = &ctx.stats;
    let opened = tokio::select! {
        () = token.cancelled() => return,
        r = tokio::time::timeout(options.handshake_timeout, handshake(&mut stream, &options, &mut sasl)) => r,
    };
    let opened = match opened {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return report_handshake_failure(stats, &options, id, peer, &sasl, Some(e)),
        Err(_) => return report_handshake_failure(stats, &options, id, peer, &sasl, None),
    };
    let _open = match reserve_connection(stats, &options, id, peer, &opened.user) {
        Ok(guard) => guard,
        Err(error) => {
            open_and_close(&mut stream, &options, error).await;
            return;
        }
    };
    let info = Arc::new(ConnectionInfo {
        id,
        peer,
        mechanism: opened.mechanism,
        user: opened.user,
        written,
    });
    debug!(connection = id, %peer, user = %info.user, "connection open");
    let peer_max_frame = (opened.peer_open.max_frame_size.0.max(MIN_MAX_FRAME_SIZE)) as usize;
    // The peer wants a frame at least every half of its idle timeout.
    let heartbeat = opened
        .peer_open
        .idle_time_out
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(u64::from(ms) / 2).max(Duration::from_millis(50)));
    let (reader, mut writer) = tokio::io::split(stream);
    let (out_tx, out_rx) = mpsc::channel::<Out>(WRITE_QUEUE);
    let conn = Arc::new(Conn {
        info: Arc::clone(&info),
        out: out_tx,
        peer_max_frame,
        scope: token.clone(),
        sessions: Mutex::new(HashMap::new()),
        links: Arc::new(AtomicUsize::new(0)),
        stats: Arc::clone(stats),
        tracker: ctx.tracker.clone(),
        close_timeout: options.close_timeout,
        max_links: options.max_links_per_connection,
    });
    // Our open goes out first, straight from here (the writer task starts after).
    match encode_frame(FRAME_TYPE_AMQP, 0, Some(&our_open(&options)), 0) {
        Ok(frame) => {
            if write_raw(&mut writer, &frame).await.is_err() {
                return;
            }
        }
        Err(_) => return,
    }
    let writer_task = ctx
        .tracker
        .spawn(write_loop(writer, out_rx, heartbeat, token.clone()));
    let ended = read_loop(reader, &conn, &ctx, &options).await;
    let close = match ended {
        ReadEnd::PeerClosed => Some(Close { error: None }),
        ReadEnd::Shutdown => Some(Close { error: None }),
        ReadEnd::Failed(Fail::Protocol(condition, text)) => {
            info!(connection = id, %peer, %text, "closing the connection: protocol error");
            Some(Close {
                error: Some(ErrorBody::new(condition, Some(text), None)),
            })
        }
        ReadEnd::Failed(Fail::Io(error)) => {
            debug!(connection = id, %peer, %error, "connection read ended");
            None
        }
    };
    if let Some(close) = close {
        // Best effort: the writer sends it, then stops when every sender of its queue is gone.
        let _ =
            tokio::time::timeout(options.close_timeout, conn.write_performative(0, &close)).await;
    }
    // Ends every link task of this connection; their senders (and the queue) go with them.
    token.cancel();
    lock(&conn.sessions).clear();
    drop(conn);
    let _ = tokio::time::timeout(options.close_timeout, writer_task).await;
    debug!(connection = id, %peer, "connection closed");
}

/// Writes what the connection's queue brings, several frames per (vectored) write; an empty frame when nothing
/// was written for `heartbeat`. Ends when every sender of the queue is gone (and the queue is written), or the
/// socket fails.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: WriteHalf<W>,
    mut rx: mpsc::Receiver<Out>,
    heartbeat: Option<Duration>,
    token: CancellationToken,
) {
    let empty: [u8; 8] = [0, 0, 0, 8, 2, FRAME_TYPE_AMQP, 0, 0];
    let mut batch: Vec<Out> = Vec::with_capacity(WRITE_QUEUE);
    loop {
        let first = match heartbeat {
            Some(period) => match tokio::time::timeout(period, rx.recv()).await {
                Ok(item) => item,
                Err(_) => {
                    if write_raw(&mut writer, &empty).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < WRITE_QUEUE {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = write_batch(&mut writer, &batch) => r,
            // A peer that stopped reading must not hold the task past the connection's end.
            () = async { token.cancelled().await; tokio::time::sleep(Duration::from_secs(2)).await } => {
                Err(std::io::Error::other("connection ended while writing"))
            }
        };
        batch.clear();
        if written.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut WriteHalf<W>,
    batch: &[Out],
) -> std::io::Result<()> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(batch.len() * 2);
    for item in batch {
        match item {
            Out::Frame(bytes) => parts.push(bytes),
            Out::Transfer { head, payload } => {
                parts.push(head);
                parts.push(payload);
            }
        }
    }
    let mut index = 0;
    let mut offset = 0;
    while index < parts.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&parts[index][offset..])
            .chain(parts[index + 1..].iter().copied())
            .take(64)
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && index < parts.len() {
            let left = parts[index].len() - offset;
            if n >= left {
                n -= left;
                index += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        while index < parts.len() && parts[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    writer.flush().await
}

enum ReadEnd {
    PeerClosed,
    Shutdown,
    Failed(Fail),
}

async fn read_loop<R: AsyncRead + Unpin, H: SendHandler>(
    mut reader: ReadHalf<R>,
    conn: &Arc<Conn>,
    ctx: &Ctx<H>,
    options: &ServerOptions,
) -> ReadEnd {
    let max = options.max_frame_size.max(MIN_MAX_FRAME_SIZE);
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            () = conn.scope.cancelled() => return ReadEnd::Shutdown,
            r = tokio::time::timeout(options.idle_timeout, read_frame(&mut reader, &mut buf, max)) => r,
        };
        let (ftype, channel) = match read {
            Err(_) => {
                return ReadEnd::Failed(Fail::Protocol(
                    AmqpError::ResourceLimitExceeded.into(),
                    "local-idle-timeout expired".to_string(),
                ));
            }
            Ok(Err(fail)) => return ReadEnd::Failed(fail),
            Ok(Ok(frame)) => frame,
        };
        if buf.is_empty() {
            continue; // an empty frame (heartbeat)
        }
        if ftype != FRAME_TYPE_AMQP {
            return ReadEnd::Failed(framing(format!("frame type {ftype} after open")));
        }
        let performative = match serde_amqp::from_slice::<Performative>(&buf) {
            Ok(p) => p,
            Err(e) => return ReadEnd::Failed(framing(format!("undecodable frame: {e}"))),
        };
        match on_frame(conn, ctx, channel, performative).await {
            Ok(true) => {}
            Ok(false) => return ReadEnd::PeerClosed,
            Err(fail) => return ReadEnd::Failed(fail),
        }
    }
}

fn session_of(conn: &Conn, channel: u16) -> Result<Arc<Session>, Fail> {
    lock(&conn.sessions).get(&channel).cloned().ok_or_else(|| {
        Fail::Protocol(
            ConnectionError::FramingError.into(),
            format!("no session on channel {channel}"),
        )
    })
}

/// Handles one frame; `Ok(false)`: the peer closed the connection.
async fn on_frame<H: SendHandler>(
    conn: &Arc<Conn>,
    ctx: &Ctx<H>,
    channel: u16,
    performative: Performative,
) -> Result<bool, Fail> {
    match performative {
        Performative::Open(_) => {
            return Err(Fail::Protocol(
                AmqpError::IllegalState.into(),
                "a second open".to_string(),
            ));
        }
        Performative::Close(_) => return Ok(false),
        Performative::Begin(begin) => {
            if begin.remote_channel.is_some() {
                return Err(Fail::Protocol(
                    AmqpError::NotImplemented.into(),
                    "this server begins no sessions".to_string(),
                ));
            }
            let our_channel = {
                let sessions = lock(&conn.sessions);
                (0..=u16::MAX)
                    .find(|c| !sessions.values().any(|s| s.our_channel == *c))
                    .unwrap_or(0)
            };
            let session = Arc::new(Session {
                our_channel,
                order: tokio::sync::Mutex::new(()),
                flow: Mutex::new(SessionFlow {
                    next_outgoing_id: 0,
                    remote_incoming_window: begin.incoming_window,
                    next_delivery_id: 0,
                    next_handle: 0,
                    their_next_outgoing_id: begin.next_outgoing_id,
                }),
                changed: Notify::new(),
                links: Mutex::new(HashMap::new()),
                scope: conn.scope.child_token(),
            });
            lock(&conn.sessions).insert(channel, Arc::clone(&session));
            let reply = Begin {
                remote_channel: Some(channel),
                next_outgoing_id: 0,
                incoming_window: OUR_INCOMING_WINDOW,
                outgoing_window: u32::MAX,
                handle_max: Handle(u32::MAX),
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            };
            conn.write_performative(our_channel, &reply).await;
        }
        Performative::End(_) => {
            let session = lock(&conn.sessions).remove(&channel);
            if let Some(session) = session {
                // The session's links end with it: no detach of ours may follow the end.
                for link in lock(&session.links).drain().map(|(_, l)| l) {
                    lock(&link.flow).detached = true;
                    link.peer_detached.cancel();
                }
                session.scope.cancel();
                conn.write_performative(session.our_channel, &End { error: None })
                    .await;
            }
        }
        Performative::Attach(attach) => {
            let session = session_of(conn, channel)?;
            // A handle still held by a link WE detached may be reused: fe2o3 clients, for one, do not answer the
            // detach of a link whose attach we refused, and take its handle again.
            let live = lock(&session.links)
                .get(&attach.handle.0)
                .is_some_and(|l| !lock(&l.flow).detached);
            if live {
                return Err(Fail::Protocol(
                    ConnectionError::FramingError.into(),
                    format!("handle {} is already attached", attach.handle.0),
                ));
            }
            let link = IncomingAttach {
                attach: Some(attach),
                conn: Arc::clone(conn),
                session,
            };
            if conn.links.load(Ordering::Acquire) >= conn.max_links {
                ctx.stats.refused_links.fetch_add(1, Ordering::Relaxed);
                warn!(
                    connection = conn.info.id,
                    peer = %conn.info.peer,
                    limit = conn.max_links,
                    "refusing link: link limit per connection reached"
                );
                let description = format!(
                    "link limit reached: this server allows {} links per connection",
                    conn.max_links
                );
                link.refuse(AmqpError::ResourceLimitExceeded, description)
                    .await;
            } else {
                let handled = tokio::time::timeout(
                    ctx.options.handshake_timeout,
                    Box::pin(ctx.handler.on_attach(link)),
                );
                if handled.await.is_err() {
                    warn!(
                        connection = conn.info.id,
                        "link handler did not answer an attach in time"
                    );
                }
            }
        }
        Performative::Flow(flow) => {
            let session = session_of(conn, channel)?;
            {
                let mut s = lock(&session.flow);
                s.their_next_outgoing_id = flow.next_outgoing_id;
                // AMQP 1.0 §2.5.6: remote-incoming-window = next-incoming-id(flow) + incoming-window(flow)
                // - next-outgoing-id(ours); a null next-incoming-id means the peer has not seen our begin yet.
                let next_incoming = flow.next_incoming_id.unwrap_or(0);
                s.remote_incoming_window = next_incoming
                    .wrapping_add(flow.incoming_window)
                    .wrapping_sub(s.next_outgoing_id);
            }
            session.changed.notify_waiters();
            if let Some(handle) = flow.handle {
                let link = lock(&session.links).get(&handle.0).cloned();
                if let Some(link) = link {
                    let drained = {
                        let mut l = lock(&link.flow);
                        l.credit = credit_after_flow(
                            flow.delivery_count.unwrap_or(0),
                            flow.link_credit.unwrap_or(0),
                            l.delivery_count,
                        );
                        l.drain = flow.drain;
                        drain_now(&mut l)
                    };
                    link.changed.notify_waiters();
                    if let Some((count, credit)) = drained {
                        send_link_flow(conn, &session, &link, count, credit).await;
                    } else if flow.echo {
                        let (count, credit) = {
                            let l = lock(&link.flow);
                            (l.delivery_count, l.credit)
                        };
                        send_link_flow(conn, &session, &link, count, credit).await;
                    }
                }
            }
        }
        Performative::Transfer(_) => {
            return Err(Fail::Protocol(
                AmqpError::NotAllowed.into(),
                "this server takes no messages".to_string(),
            ));
        }
        Performative::Disposition(_) => {}
        Performative::Detach(detach_frame) => {
            let session = session_of(conn, channel)?;
            let link = lock(&session.links).remove(&detach_frame.handle.0);
            if let Some(link) = link {
                link.peer_detached.cancel();
                link.scope.cancel();
                link.changed.notify_waiters();
                let refusal = lock(&link.refusal).take();
                detach(conn, session.our_channel, &link, refusal).await;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_size_data_offset_type_and_channel() {
        let empty = encode_frame::<Open>(FRAME_TYPE_AMQP, 3, None, 0).unwrap();
        assert_eq!(empty, vec![0, 0, 0, 8, 2, 0, 0, 3]);
        let close = encode_frame(FRAME_TYPE_AMQP, 0, Some(&Close { error: None }), 0).unwrap();
        assert_eq!(&close[4..8], &[2, 0, 0, 0]);
        assert_eq!(
            u32::from_be_bytes([close[0], close[1], close[2], close[3]]) as usize,
            close.len()
        );
        // The described list of `close`: 0x00 0x53 0x18.
        assert_eq!(&close[8..11], &[0x00, 0x53, 0x18]);
        // A transfer head counts the payload that follows it in its size.
        let head = encode_frame(FRAME_TYPE_AMQP, 1, Some(&Close { error: None }), 100).unwrap();
        assert_eq!(
            u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize,
            head.len() + 100
        );
    }

    #[tokio::test]
    async fn a_batch_is_written_whole_and_in_order_through_partial_writes() {
        // A 7-byte pipe: every vectored write is partial, often in the middle of a part.
        let (a, mut b) = tokio::io::duplex(7);
        let (_, mut writer) = tokio::io::split(a);
        let payload = Bytes::from((0u8..200).collect::<Vec<_>>());
        let batch = vec![
            Out::Frame(vec![1, 2, 3]),
            Out::Transfer {
                head: vec![9; 11],
                payload: payload.slice(10..150),
            },
            Out::Frame(Vec::new()),
            Out::Transfer {
                head: vec![8; 5],
                payload: payload.slice(150..),
            },
        ];
        let mut expected = vec![1, 2, 3];
        expected.extend([9; 11]);
        expected.extend(10u8..150);
        expected.extend([8; 5]);
        expected.extend(150u8..200);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 3 + 11 + 140 + 5 + 50];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        write_batch(&mut writer, &batch).await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[test]
    fn credit_counts_the_deliveries_the_flow_did_not_see_yet() {
        // Granted 10 after 5 deliveries, and we sent 5: 10 left.
        assert_eq!(credit_after_flow(5, 10, 5), 10);
        // A flow from before our last 2 deliveries: 8 left.
        assert_eq!(credit_after_flow(3, 10, 5), 8);
        // Granted 1 when we had sent 2 more already: none left.
        assert_eq!(credit_after_flow(3, 1, 5), 0);
        // Serial numbers wrap.
        assert_eq!(credit_after_flow(u32::MAX, 10, 2), 7);
        // A flow counting a delivery we have not counted yet (their 5, ours 4) cannot be trusted: nothing. That is
        // why a send counts its delivery at the first frame (the stall of a count taken after the last one).
        assert_eq!(credit_after_flow(5, 10, 4), 0);
    }

    #[test]
    fn drain_uses_up_the_credit_only_between_deliveries() {
        let mut flow = LinkFlow {
            delivery_count: 5,
            credit: 3,
            drain: true,
            sending: true,
            detached: false,
        };
        assert_eq!(drain_now(&mut flow), None, "a delivery is being written");
        flow.sending = false;
        assert_eq!(drain_now(&mut flow), Some((8, 0)));
        assert_eq!((flow.credit, flow.drain), (0, false));
        assert_eq!(drain_now(&mut flow), None, "drained once");
    }
}
