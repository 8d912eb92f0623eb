//! Opening one fe2o3-amqp connection from [`ConnectOptions`]: our own TCP connect (so we can set
//! `TCP_NODELAY`, which the request/response traffic needs), TLS with rustls done directly on the
//! socket (qdrouterd and Artemis expect plain TLS, not the AMQP TLS header), SASL, the idle
//! timeout, all under `connect_timeout`. It also captures the peer's `open` frame so callers can
//! show what they are talking to (`product`, `version`).
//!
//! SASL EXTERNAL is negotiated here, not by fe2o3: fe2o3 0.18.4 accepts EXTERNAL only when it does
//! the TLS handshake itself (else `InvalidSchemeForSaslExternal`), which would hide the decrypted
//! bytes from the `open` capture and split the TLS code in two. [`sasl_external`] runs the SASL
//! layer on our TLS stream — `sasl-init` with an empty initial response, as Qpid Proton clients
//! send (fe2o3 sends none) — then the stream goes to fe2o3 without a SASL profile for the AMQP
//! header and `open`.

use std::fs::File;
use std::io::BufReader;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fe2o3_amqp::Connection;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::performatives::Open;
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::options::{ConnectOptions, SaslOptions, TlsOptions, install_crypto_provider};
use crate::value::amqp_to_json;
use crate::wire::DeliveryLog;

/// Why a connection could not be opened. The text names the peer and the step that failed, never
/// a password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {peer}: {reason}")]
pub struct ConnectError {
    /// `amqp[s]://[user@]host:port`.
    pub peer: String,
    /// What failed.
    pub reason: String,
}

/// An open AMQP connection plus what the peer announced.
pub struct Opened {
    /// The fe2o3 connection; dropping it closes the connection.
    pub connection: ConnectionHandle<()>,
    /// The `properties` of the peer's `open` frame (qdrouterd: `product`, `version`), if any.
    pub peer_properties: Option<serde_json::Map<String, serde_json::Value>>,
    /// The peer's container id (qdrouterd: the router id).
    pub peer_container_id: Option<String>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("peer_properties", &self.peer_properties)
            .field("peer_container_id", &self.peer_container_id)
            .finish_non_exhaustive()
    }
}

/// Opens a connection as described by `opts`, all within `opts.connect_timeout`.
pub async fn open_connection(opts: &ConnectOptions) -> Result<Opened, ConnectError> {
    open_connection_logged(opts, None).await
}

/// [`open_connection`], announcing `max_frame_size` in our `open` frame instead of fe2o3's default (the largest
/// frame the peer may send us). A server keeps a write buffer per connection as large as the largest frame it
/// wrote on it, so subscribers of big snapshots announce small frames (see [`crate::subscriber`]).
pub async fn open_connection_with_max_frame(
    opts: &ConnectOptions,
    max_frame_size: u32,
) -> Result<Opened, ConnectError> {
    open_timed(opts, None, Some(max_frame_size)).await
}

/// [`open_connection`], and every byte read from the peer also goes to `log` (which keeps the first bytes of
/// each delivery, for replies fe2o3 cannot decode; see [`crate::wire::DeliveryLog`]).
pub async fn open_connection_logged(
    opts: &ConnectOptions,
    log: Option<Arc<DeliveryLog>>,
) -> Result<Opened, ConnectError> {
    open_timed(opts, log, None).await
}

async fn open_timed(
    opts: &ConnectOptions,
    log: Option<Arc<DeliveryLog>>,
    max_frame_size: Option<u32>,
) -> Result<Opened, ConnectError> {
    let peer = opts.to_string();
    match tokio::time::timeout(opts.connect_timeout, open_inner(opts, log, max_frame_size)).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(reason)) => Err(ConnectError { peer, reason }),
        Err(_) => Err(ConnectError {
            peer,
            reason: format!("timed out after {:?}", opts.connect_timeout),
        }),
    }
}

async fn open_inner(
    opts: &ConnectOptions,
    log: Option<Arc<DeliveryLog>>,
    max_frame_size: Option<u32>,
) -> Result<Opened, String> {
    if opts.sasl == SaslOptions::External {
        check_external(opts.tls.as_ref())?;
    }
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| format!("TCP connect failed: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let capture = Capture::default();
    match &opts.tls {
        None => {
            open_amqp(
                opts,
                Sniff::new(tcp, capture.clone(), log),
                capture,
                max_frame_size,
            )
            .await
        }
        Some(tls) => {
            let connector = tls_connector(tls)?;
            let name = tls.server_name.clone().unwrap_or_else(|| opts.host.clone());
            let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))?;
            let mut stream = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            if opts.sasl == SaslOptions::External {
                sasl_external(&mut stream, &opts.host).await?;
            }
            open_amqp(
                opts,
                Sniff::new(stream, capture.clone(), log),
                capture,
                max_frame_size,
            )
            .await
        }
    }
}

async fn open_amqp<Io>(
    opts: &ConnectOptions,
    stream: Sniff<Io>,
    capture: Capture,
    max_frame_size: Option<u32>,
) -> Result<Opened, String>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let idle_ms = u32::try_from(opts.idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let builder = Connection::builder()
        .container_id(opts.container_id.clone())
        .hostname(opts.host.as_str())
        .idle_time_out(idle_ms)
        .scheme("amqp");
    let builder = match max_frame_size {
        Some(n) => builder.max_frame_size(n),
        None => builder,
    };
    let builder = match &opts.sasl {
        // EXTERNAL was negotiated before (sasl_external): fe2o3 goes straight to the AMQP header.
        SaslOptions::None | SaslOptions::External => builder,
        SaslOptions::Anonymous => builder.sasl_profile(SaslProfile::Anonymous),
        SaslOptions::Plain { username, password } => builder.sasl_profile(SaslProfile::Plain {
            username: username.clone(),
            password: password.expose().to_string(),
        }),
    };
    let connection = builder
        .open_with_stream(stream)
        .await
        .map_err(|e| format!("AMQP open failed: {e}"))?;
    let open = capture.finish().and_then(|bytes| parse_peer_open(&bytes));
    let (peer_properties, peer_container_id) = match open {
        Some(open) => {
            let props = open.properties.map(|fields| {
                fields
                    .into_iter()
                    .map(|(k, v)| (k.0, amqp_to_json(v)))
                    .collect::<serde_json::Map<_, _>>()
            });
            (props, Some(open.container_id))
        }
        None => (None, None),
    };
    Ok(Opened {
        connection,
        peer_properties,
        peer_container_id,
    })
}

/// EXTERNAL proves the identity with the TLS client certificate: without one it cannot work.
fn check_external(tls: Option<&TlsOptions>) -> Result<(), String> {
    match tls {
        Some(TlsOptions {
            cert_file: Some(_),
            key_file: Some(_),
            ..
        }) => Ok(()),
        _ => Err(
            "SASL EXTERNAL needs TLS with a client certificate (a CA file, a cert file and a key file)"
                .to_string(),
        ),
    }
}

/// The SASL header `AMQP 3 1 0 0`.
const SASL_HEADER: &[u8; 8] = b"AMQP\x03\x01\x00\x00";
/// Largest SASL frame we accept (the SASL minimum max-frame-size is 512; be generous).
const SASL_FRAME_LIMIT: usize = 64 * 1024;
/// SASL frame type in the frame header.
const SASL_FRAME_TYPE: u8 = 1;

/// Runs the SASL layer with mechanism EXTERNAL on `io` (client side): header exchange,
/// `sasl-mechanisms`, `sasl-init` (empty initial response), `sasl-outcome`. On success the stream
/// is positioned at the start of the AMQP layer.
pub(crate) async fn sasl_external<Io>(io: &mut Io, hostname: &str) -> Result<(), String>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let io_err = |e: std::io::Error| format!("SASL exchange failed: {e}");
    io.write_all(SASL_HEADER).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut header = [0u8; 8];
    io.read_exact(&mut header).await.map_err(io_err)?;
    if &header != SASL_HEADER {
        return Err(format!(
            "the server does not speak SASL (protocol header {header:?}); SASL EXTERNAL needs a SASL listener"
        ));
    }
    let body = read_sasl_frame(io).await?;
    let offered: SaslMechanisms =
        serde_amqp::from_slice(&body).map_err(|e| format!("cannot decode sasl-mechanisms: {e}"))?;
    let names: Vec<&str> = offered
        .sasl_server_mechanisms
        .0
        .iter()
        .map(|m| m.0.as_str())
        .collect();
    if !names.contains(&"EXTERNAL") {
        return Err(format!(
            "the server does not offer SASL EXTERNAL (it offers: {})",
            names.join(", ")
        ));
    }
    let init = SaslInit {
        mechanism: Symbol::from("EXTERNAL"),
        initial_response: Some(Binary::from(Vec::new())),
        hostname: Some(hostname.to_string()),
    };
    let init = serde_amqp::to_vec(&init).map_err(|e| format!("cannot encode sasl-init: {e}"))?;
    let size = u32::try_from(init.len() + 8).map_err(|_| "sasl-init too large".to_string())?;
    let mut frame = Vec::with_capacity(init.len() + 8);
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&[2, SASL_FRAME_TYPE, 0, 0]);
    frame.extend_from_slice(&init);
    io.write_all(&frame).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let body = read_sasl_frame(io).await?;
    // Descriptor 0x00 0x53 0x42 is sasl-challenge: EXTERNAL with an initial response needs none.
    if body.starts_with(&[0x00, 0x53, 0x42]) {
        return Err("the server sent a SASL challenge to EXTERNAL (not supported)".to_string());
    }
    let outcome: SaslOutcome =
        serde_amqp::from_slice(&body).map_err(|e| format!("cannot decode sasl-outcome: {e}"))?;
    match outcome.code {
        SaslCode::Ok => Ok(()),
        SaslCode::Auth => Err(
            "SASL EXTERNAL refused: the server did not accept the client certificate (sasl-outcome auth)"
                .to_string(),
        ),
        code => Err(format!("SASL EXTERNAL failed: sasl-outcome {code:?}")),
    }
}

/// Reads one SASL frame and returns its body (skipping the extended header).
async fn read_sasl_frame<Io: AsyncRead + Unpin>(io: &mut Io) -> Result<Vec<u8>, String> {
    let io_err = |e: std::io::Error| format!("SASL exchange failed: {e}");
    let mut head = [0u8; 8];
    io.read_exact(&mut head).await.map_err(io_err)?;
    let (size, doff) = frame_header(&head)
        .filter(|(size, _)| head[5] == SASL_FRAME_TYPE && *size <= SASL_FRAME_LIMIT)
        .ok_or_else(|| {
            format!(
                "invalid SASL frame (type {}, size {}, data offset {})",
                head[5],
                u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
                usize::from(head[4]) * 4
            )
        })?;
    let mut rest = vec![0u8; size - 8];
    io.read_exact(&mut rest).await.map_err(io_err)?;
    Ok(rest.split_off(doff - 8))
}

fn tls_connector(tls: &TlsOptions) -> Result<tokio_rustls::TlsConnector, String> {
    install_crypto_provider();
    let ca_file = tls
        .ca_file
        .as_ref()
        .ok_or("TLS needs a CA file to verify the server certificate (none given)")?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = read_certs(ca_file)?;
    if certs.is_empty() {
        return Err(format!(
            "CA file {} holds no certificate",
            ca_file.display()
        ));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certs(cert_file)?;
            let file = File::open(key_file)
                .map_err(|e| format!("cannot read key file {}: {e}", key_file.display()))?;
            let key = rustls_pemfile::private_key(&mut BufReader::new(file))
                .map_err(|e| format!("cannot parse key file {}: {e}", key_file.display()))?
                .ok_or_else(|| format!("key file {} holds no private key", key_file.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate/key rejected: {e}"))?
        }
        _ => return Err("a client certificate needs both a cert file and a key file".to_string()),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn read_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse certificates in {}: {e}", path.display()))
}

/// Most bytes we keep while waiting for the peer's `open` (it is far smaller than this).
const CAPTURE_LIMIT: usize = 64 * 1024;

/// Bytes received from the peer until the connection is open; `None` once capture has ended.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

impl Capture {
    fn start(&self) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = Some(Vec::new());
        }
    }

    fn record(&self, bytes: &[u8]) {
        if let Ok(mut guard) = self.0.lock()
            && let Some(buf) = guard.as_mut()
        {
            let room = CAPTURE_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// Stops capturing and returns what was captured.
    fn finish(&self) -> Option<Vec<u8>> {
        self.0.lock().ok().and_then(|mut guard| guard.take())
    }
}

/// A stream wrapper that copies what is read into a [`Capture`] until capture ends, and into a
/// [`DeliveryLog`] for as long as the connection lives when one is given.
struct Sniff<Io> {
    inner: Io,
    capture: Capture,
    log: Option<Arc<DeliveryLog>>,
}

impl<Io> Sniff<Io> {
    fn new(inner: Io, capture: Capture, log: Option<Arc<DeliveryLog>>) -> Self {
        capture.start();
        Sniff {
            inner,
            capture,
            log,
        }
    }
}

impl<Io> std::fmt::Debug for Sniff<Io> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sniff")
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Sniff<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.capture.record(new);
                if let Some(log) = &this.log {
                    log.feed(new);
                }
            }
        }
        res
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Sniff<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Finds and decodes the peer's `open` performative in the captured start of the byte stream:
/// an optional SASL layer (header `AMQP 3 1 0 0`, SASL frames up to the outcome) followed by the
/// AMQP header `AMQP 0 1 0 0` and the first non-empty AMQP frame.
pub(crate) fn parse_peer_open(bytes: &[u8]) -> Option<Open> {
    let mut pos = 0usize;
    loop {
        let header = bytes.get(pos..pos + 8)?;
        if &header[..4] != b"AMQP" {
            return None;
        }
        let protocol_id = header[4];
        pos += 8;
        match protocol_id {
            3 => {
                // SASL frames until the outcome (descriptor 0x44).
                loop {
                    let (body, next) = frame_at(bytes, pos)?;
                    pos = next;
                    if body.len() >= 3 && body[0] == 0x00 && body[1] == 0x53 && body[2] == 0x44 {
                        break;
                    }
                }
            }
            0 => loop {
                let (body, next) = frame_at(bytes, pos)?;
                pos = next;
                if !body.is_empty() {
                    return serde_amqp::from_slice::<Open>(body).ok();
                }
            },
            _ => return None,
        }
    }
}

/// The body of the frame starting at `pos` and the position after it.
fn frame_at(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let (size, doff) = frame_header(bytes.get(pos..pos + 8)?)?;
    let body = bytes.get(pos + doff..pos + size)?;
    Some((body, pos + size))
}

/// `(size, data offset)` of an 8-byte AMQP/SASL frame header; `None` when they are inconsistent.
fn frame_header(head: &[u8]) -> Option<(usize, usize)> {
    let size =
        u32::from_be_bytes([*head.first()?, *head.get(1)?, *head.get(2)?, *head.get(3)?]) as usize;
    let doff = usize::from(*head.get(4)?) * 4;
    (size >= 8 && doff >= 8 && doff <= size).then_some((size, doff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_amqp::Value;
    use serde_amqp::primitives::{OrderedMap, Symbol};

    fn frame(frame_type: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
        f.extend_from_slice(&[2, frame_type, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    /// Runs `sasl_external` against a scripted server that answers `replies` after reading what
    /// the client sends; returns the client's result.
    async fn external_against(replies: Vec<u8>) -> Result<(), String> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            server.write_all(&replies).await.unwrap();
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
            sink
        });
        let result = sasl_external(&mut client, "router").await;
        drop(client);
        let sent = peer.await.unwrap();
        if result.is_ok() {
            // Header, then sasl-init EXTERNAL with an empty initial response.
            assert!(sent.starts_with(SASL_HEADER));
            let (body, _) = frame_at(&sent, 8).unwrap();
            let init: SaslInit = serde_amqp::from_slice(body).unwrap();
            assert_eq!(init.mechanism, Symbol::from("EXTERNAL"));
            assert_eq!(init.initial_response, Some(Binary::from(Vec::new())));
        }
        result
    }

    #[tokio::test]
    async fn sasl_external_exchange_and_its_errors() {
        let mechanisms = |names: &[&str]| {
            let m = SaslMechanisms {
                sasl_server_mechanisms: names
                    .iter()
                    .map(|n| Symbol::from(*n))
                    .collect::<Vec<_>>()
                    .into(),
            };
            frame(1, &serde_amqp::to_vec(&m).unwrap())
        };
        let outcome = |code| {
            let o = SaslOutcome {
                code,
                additional_data: None,
            };
            frame(1, &serde_amqp::to_vec(&o).unwrap())
        };
        let script = |parts: &[Vec<u8>]| {
            let mut v = SASL_HEADER.to_vec();
            for p in parts {
                v.extend_from_slice(p);
            }
            v
        };
        let ok = script(&[mechanisms(&["EXTERNAL", "PLAIN"]), outcome(SaslCode::Ok)]);
        external_against(ok).await.unwrap();
        let refused = script(&[mechanisms(&["EXTERNAL"]), outcome(SaslCode::Auth)]);
        let err = external_against(refused).await.unwrap_err();
        assert!(
            err.contains("did not accept the client certificate"),
            "{err}"
        );
        let not_offered = script(&[mechanisms(&["PLAIN", "ANONYMOUS"])]);
        let err = external_against(not_offered).await.unwrap_err();
        assert_eq!(
            err,
            "the server does not offer SASL EXTERNAL (it offers: PLAIN, ANONYMOUS)"
        );
        let err = external_against(b"AMQP\x00\x01\x00\x00".to_vec())
            .await
            .unwrap_err();
        assert!(err.contains("does not speak SASL"), "{err}");
    }

    #[test]
    fn finds_open_after_sasl() {
        let mut props = OrderedMap::new();
        props.insert(
            Symbol::from("product"),
            Value::String("qpid-dispatch-router".into()),
        );
        props.insert(Symbol::from("version"), Value::String("1.19.0".into()));
        let open = Open {
            container_id: "Router.A".into(),
            hostname: None,
            max_frame_size: Default::default(),
            channel_max: Default::default(),
            idle_time_out: Some(8000),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: Some(props),
        };
        let open_bytes = serde_amqp::to_vec(&open).unwrap();
        let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
        // sasl-mechanisms [ANONYMOUS]
        stream.extend(frame(1, b"\x00\x53\x40\xc0\x0c\x01\xa3\x09ANONYMOUS"));
        // sasl-outcome [ok]
        stream.extend(frame(1, b"\x00\x53\x44\xc0\x03\x01\x50\x00"));
        stream.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        stream.extend(frame(0, b"")); // an empty (heartbeat) frame is skipped
        stream.extend(frame(0, &open_bytes));
        let got = parse_peer_open(&stream).unwrap();
        assert_eq!(got, open);
        assert_eq!(parse_peer_open(&stream[..stream.len() - 3]), None);
        assert_eq!(parse_peer_open(b"HTTP/1.1 400"), None);
    }
}
