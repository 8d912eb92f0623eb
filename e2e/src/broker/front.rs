//! The broker emulator's front door: the listener clients connect to. It terminates TLS (when configured),
//! forwards every byte to the AMQP server (`maas_amqp::server`, on a private loopback port) and back, and
//! reads the `container-id` of the client's `open` frame on the way in.
//!
//! Why: Artemis names a durable subscription queue `<container-id>.<link-name>` after the container-id the
//! peer's `open` frame carried (durable-subscriptions-and-topics.txt §1: `check-client2` + `sub2` ->
//! `check-client2.sub2`), and neither fe2o3's acceptor nor `maas_amqp::server::ConnectionInfo` expose the
//! remote `open`. The front door records, per forwarded connection, the client's socket address and
//! container-id under the socket address the AMQP server sees as its peer ([`Peers`]); the link handler
//! looks them up there. The container-id is recorded BEFORE the bytes holding the `open` frame are
//! forwarded, so it is known before any attach arrives.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client byte stream (TCP, or TLS over TCP).
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// Turns an accepted TCP stream into the client byte stream (the TLS handshake, when configured).
pub(crate) type Upgrade = Arc<
    dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = io::Result<Box<dyn ClientIo>>> + Send>>
        + Send
        + Sync,
>;

/// What the front door knows about one forwarded connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The client's own socket address.
    pub addr: SocketAddr,
    /// The container-id of the client's `open` frame, once seen.
    pub container_id: Option<String>,
}

/// Forwarded connections by the socket address the AMQP server sees as their peer.
#[derive(Debug, Default)]
pub(crate) struct Peers(Mutex<HashMap<SocketAddr, Peer>>);

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Peer>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer the AMQP server knows as `inner` (its own view of the peer address).
    pub fn get(&self, inner: &SocketAddr) -> Option<Peer> {
        self.lock().get(inner).cloned()
    }

    fn insert(&self, inner: SocketAddr, peer: Peer) {
        self.lock().insert(inner, peer);
    }

    fn set_container(&self, inner: &SocketAddr, id: Option<String>) {
        if let Some(p) = self.lock().get_mut(inner) {
            p.container_id = id;
        }
    }

    fn remove(&self, inner: &SocketAddr) {
        self.lock().remove(inner);
    }
}

/// A running front door.
pub(crate) struct Front {
    stop: CancellationToken,
    tracker: TaskTracker,
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Listens on `listen` and forwards each connection to `inner`.
    pub async fn bind(
        listen: SocketAddr,
        inner: SocketAddr,
        upgrade: Option<Upgrade>,
        handshake_timeout: Duration,
        peers: Arc<Peers>,
    ) -> io::Result<(Front, SocketAddr)> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let task = tokio::spawn(accept_loop(
            listener,
            inner,
            upgrade,
            handshake_timeout,
            peers,
            stop.clone(),
            tracker.clone(),
        ));
        Ok((
            Front {
                stop,
                tracker,
                task,
            },
            addr,
        ))
    }

    /// Stops listening and drops every forwarded connection (call after the AMQP server closed its
    /// connections, so their `close` frames were forwarded).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    inner: SocketAddr,
    upgrade: Option<Upgrade>,
    handshake_timeout: Duration,
    peers: Arc<Peers>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(forward(
                    stream,
                    peer,
                    inner,
                    upgrade.clone(),
                    handshake_timeout,
                    Arc::clone(&peers),
                    stop.clone(),
                ));
            }
            Err(e) => {
                tracing::debug!(error = %e, "broker emulator: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One client connection: TLS (optional), then bytes both ways until either side ends.
async fn forward(
    stream: TcpStream,
    peer: SocketAddr,
    inner: SocketAddr,
    upgrade: Option<Upgrade>,
    handshake_timeout: Duration,
    peers: Arc<Peers>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let client: Box<dyn ClientIo> = match upgrade {
        None => Box::new(stream),
        Some(upgrade) => {
            let handshake = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(handshake_timeout, upgrade(stream)) => r,
            };
            match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "broker emulator: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "broker emulator: TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let server = match TcpStream::connect(inner).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "broker emulator: inner server unreachable");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let Ok(local) = server.local_addr() else {
        return;
    };
    peers.insert(
        local,
        Peer {
            addr: peer,
            container_id: None,
        },
    );
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = server.into_split();
    let upstream = client_to_server(client_read, server_write, local, Arc::clone(&peers));
    let downstream = server_to_client(server_read, client_write);
    tokio::pin!(upstream, downstream);
    let mut upstream_done = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = &mut upstream, if !upstream_done => upstream_done = true,
            // The broker closed the connection: the client's socket goes too (a real broker closes it).
            () = &mut downstream => break,
        }
    }
    peers.remove(&local);
}

async fn client_to_server<R: AsyncRead + Unpin>(
    mut from: R,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    local: SocketAddr,
    peers: Arc<Peers>,
) {
    let mut sniffer = Some(OpenSniffer::default());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = sniffer.as_mut() {
            match s.feed(&buf[..n]) {
                Sniff::More => {}
                Sniff::Found(id) => {
                    peers.set_container(&local, id);
                    sniffer = None;
                }
                Sniff::GiveUp => sniffer = None,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn server_to_client<W: AsyncWrite + Unpin>(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: W,
) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// What the sniffer made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// No `open` frame yet.
    More,
    /// The `open` frame's container-id (`None`: it had none the sniffer could read).
    Found(Option<String>),
    /// Not an AMQP stream the sniffer understands (or too much data before the `open`).
    GiveUp,
}

/// Finds the client's `open` frame in the byte stream: protocol headers (`AMQP` + 4 bytes: SASL and AMQP),
/// SASL frames (type 1), then the first AMQP frame (type 0) that is not empty must be the `open`.
#[derive(Debug, Default)]
pub(crate) struct OpenSniffer {
    buf: Vec<u8>,
}

/// More bytes than any SASL exchange sends before the `open`: give up after this.
const SNIFF_LIMIT: usize = 64 * 1024;

impl OpenSniffer {
    pub fn feed(&mut self, bytes: &[u8]) -> Sniff {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0usize;
        let result = loop {
            let rest = &self.buf[pos..];
            if rest.len() < 8 {
                break Sniff::More;
            }
            if &rest[..4] == b"AMQP" {
                pos += 8;
                continue;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let doff = usize::from(rest[4]) * 4;
            let kind = rest[5];
            if !(8..=SNIFF_LIMIT).contains(&size) || doff < 8 || doff > size {
                break Sniff::GiveUp;
            }
            if rest.len() < size {
                break Sniff::More;
            }
            let body = &rest[doff..size];
            pos += size;
            match kind {
                1 => continue,
                0 if body.is_empty() => continue,
                0 => break Sniff::Found(open_container_id(body)),
                _ => break Sniff::GiveUp,
            }
        };
        if result == Sniff::More && self.buf.len() > SNIFF_LIMIT {
            return Sniff::GiveUp;
        }
        result
    }
}

/// The container-id of an encoded `open` performative (descriptor 0x10, a list whose first field is a
/// string); `None` for anything else.
fn open_container_id(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(&[0x00])?;
    let rest = match rest.first()? {
        0x53 => {
            if *rest.get(1)? != 0x10 {
                return None;
            }
            rest.get(2..)?
        }
        0x80 => {
            let code = u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
            if code != 0x10 {
                return None;
            }
            rest.get(9..)?
        }
        _ => return None,
    };
    let first = match rest.first()? {
        0xc0 => rest.get(3..)?,
        0xd0 => rest.get(9..)?,
        _ => return None,
    };
    let (len, text) = match first.first()? {
        0xa1 => (usize::from(*first.get(1)?), first.get(2..)?),
        0xb1 => (
            u32::from_be_bytes(first.get(1..5)?.try_into().ok()?) as usize,
            first.get(5..)?,
        ),
        _ => return None,
    };
    String::from_utf8(text.get(..len)?.to_vec()).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let size = u32::try_from(8 + body.len()).unwrap();
        let mut f = size.to_be_bytes().to_vec();
        f.extend_from_slice(&[2, kind, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    fn open_body(id: &str) -> Vec<u8> {
        let mut fields = vec![0xa1, u8::try_from(id.len()).unwrap()];
        fields.extend_from_slice(id.as_bytes());
        fields.extend_from_slice(&[0xa1, 1, b'h']);
        let mut body = vec![
            0x00,
            0x53,
            0x10,
            0xc0,
            u8::try_from(fields.len() + 1).unwrap(),
            2,
        ];
        body.extend_from_slice(&fields);
        body
    }

    #[test]
    fn finds_the_container_id_after_sasl_in_any_chunking() {
        let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
        stream.extend(frame(1, &[0x00, 0x53, 0x41, 0x45]));
        stream.extend(b"AMQP\x00\x01\x00\x00");
        stream.extend(frame(0, &[]));
        stream.extend(frame(0, &open_body("check-client2")));
        for chunk in [1usize, 3, 7, 1000] {
            let mut s = OpenSniffer::default();
            let mut found = None;
            for piece in stream.chunks(chunk) {
                match s.feed(piece) {
                    Sniff::More => {}
                    other => {
                        found = Some(other);
                        break;
                    }
                }
            }
            assert_eq!(
                found,
                Some(Sniff::Found(Some("check-client2".to_string()))),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn long_forms_and_garbage() {
        let mut body = vec![
            0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x10, 0xd0, 0, 0, 0, 9, 0, 0, 0, 1,
        ];
        body.extend_from_slice(&[0xb1, 0, 0, 0, 2, b'i', b'd']);
        assert_eq!(open_container_id(&body).as_deref(), Some("id"));
        assert_eq!(open_container_id(&[0x00, 0x53, 0x11]), None);
        assert_eq!(
            OpenSniffer::default().feed(b"GET / HTTP/1.1\r\n\r\n"),
            Sniff::GiveUp
        );
    }
}
