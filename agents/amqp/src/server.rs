//! A reusable AMQP 1.0 server skeleton on fe2o3-amqp's acceptors, for config-service and the emulators.
//!
//! It owns everything below the application's decision "what does this link get":
//! - the accept loop on a [`TcpListener`] (`TCP_NODELAY` on every socket: without it request/response
//!   traffic stalls on Nagle + delayed ACK);
//! - one task per connection running the TLS (optional, rustls, plain TLS on the socket as qdrouterd and
//!   Artemis expect — no AMQP TLS header), SASL and AMQP open handshake under a timeout, so a slow or silent
//!   client blocks only itself;
//! - SASL ANONYMOUS and/or PLAIN with users from a file ([`Users`]); a wrong password gets a SASL `auth`
//!   outcome and the server keeps serving; passwords are never logged;
//! - SASL EXTERNAL ([`ServerOptions::sasl_external`]) for connections whose TLS client certificate was
//!   verified against a client CA ([`tls_acceptor_with_client_ca`]); the user is [`x509_user`] of it;
//! - limits: open connections, links per connection, frame size; refusals carry
//!   `amqp:resource-limit-exceeded` and a description saying which limit;
//! - one task per session; every incoming attach is handed to the application's [`LinkHandler`] as an
//!   [`IncomingLink`] (source/target address, filter map, the session) which accepts or refuses it;
//! - lifetimes: the connection and session handles live in their tasks (dropping one ends it); each session
//!   has a [`CancellationToken`] fired when it ends (or its connection, or the server), which application
//!   tasks serving a link must select on — a pending send never wakes by itself when the peer goes away.
//!
//! [`Server::serve`] returns once the shutdown future resolved, every connection got a `close`, and every
//! task spawned through the server ended (bounded by [`ServerOptions::close_timeout`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SaslAcceptor, SessionAcceptor, SupportedSenderSettleModes,
};
use fe2o3_amqp::connection::OpenError;
use fe2o3_amqp::link::Sender;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorBody, ErrorCondition, Role};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::options::{Secret, install_crypto_provider};

/// SASL mechanism name ANONYMOUS.
pub const ANONYMOUS: &str = "ANONYMOUS";
/// SASL mechanism name PLAIN.
pub const PLAIN: &str = "PLAIN";
/// SASL mechanism name EXTERNAL.
pub const EXTERNAL: &str = "EXTERNAL";

/// The user name of a connection authenticated by SASL EXTERNAL with this (end-entity, DER) client
/// certificate: `x509:sha256:` and the first 16 hex digits of the certificate's SHA-256.
pub fn x509_user(cert_der: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(cert_der);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("x509:sha256:{hex}")
}

/// Why a server could not be configured or started. Texts name the file or flag, never a password.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A users file could not be read.
    #[error("cannot read users file {path}: {source}")]
    UsersFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A users file line is malformed (the line's content is not shown: it may hold a password).
    #[error("users file {path}, line {line}: {reason}")]
    UsersLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The SASL mechanism list is unusable.
    #[error("SASL mechanisms: {0}")]
    Mechanisms(String),
    /// TLS certificate or key files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ServerError {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ServerError::UsersFile { .. } | ServerError::UsersLine { .. } => "users_file",
            ServerError::Mechanisms(_) => "sasl_mechanisms",
            ServerError::Tls(_) => "tls",
            ServerError::Bind { .. } => "bind",
        }
    }
}

/// SASL PLAIN users: name -> password. `Debug` never shows a password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    users: HashMap<String, Secret>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Users {
    /// Reads a users file: one `user:password` per line (the password is everything after the first `:`),
    /// blank lines and lines starting with `#` ignored.
    pub fn from_file(path: &Path) -> Result<Users, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::UsersFile {
            path: path.to_path_buf(),
            source,
        })?;
        Users::parse(path, &text)
    }

    /// Parses the text of a users file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Users, ServerError> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let bad = |reason: &str| ServerError::UsersLine {
                path: path.to_path_buf(),
                line: index + 1,
                reason: reason.to_string(),
            };
            let Some((user, password)) = line.split_once(':') else {
                return Err(bad("expected user:password"));
            };
            let user = user.trim();
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            if users
                .insert(user.to_string(), Secret::new(password))
                .is_some()
            {
                return Err(bad(&format!("user {user:?} defined twice")));
            }
        }
        Ok(Users { users })
    }

    /// Adds or replaces one user (tests, programmatic set-up).
    pub fn insert(&mut self, user: impl Into<String>, password: impl Into<Secret>) {
        self.users.insert(user.into(), password.into());
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when `name` is a user of this file.
    pub fn knows(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// True when there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// True when `user` exists and `password` is its password (compared in constant time).
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let Ok(user) = std::str::from_utf8(user) else {
            return false;
        };
        match self.users.get(user) {
            Some(secret) => constant_time_eq(secret.expose().as_bytes(), password),
            None => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which SASL mechanisms the server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslConfig {
    /// Offer ANONYMOUS (anyone gets in).
    pub anonymous: bool,
    /// Offer PLAIN, checked against these users.
    pub plain: Option<Arc<Users>>,
}

impl Default for SaslConfig {
    /// ANONYMOUS only.
    fn default() -> Self {
        SaslConfig {
            anonymous: true,
            plain: None,
        }
    }
}

impl SaslConfig {
    /// From a mechanism list (`ANONYMOUS`, `PLAIN`, case-insensitive) and an optional users file. PLAIN needs
    /// a users file; a users file without PLAIN is an error too (it would silently do nothing). EXTERNAL is
    /// refused here: use [`SaslConfig::from_mechanisms_with_external`].
    pub fn from_mechanisms<S: AsRef<str>>(
        mechanisms: &[S],
        users_file: Option<&Path>,
    ) -> Result<SaslConfig, ServerError> {
        Self::parse(mechanisms, users_file, false).map(|(config, _)| config)
    }

    /// Like [`SaslConfig::from_mechanisms`], but `EXTERNAL` is accepted too; the `bool` says whether it was
    /// named (set [`ServerOptions::sasl_external`] from it). EXTERNAL alone is a valid list.
    pub fn from_mechanisms_with_external<S: AsRef<str>>(
        mechanisms: &[S],
        users_file: Option<&Path>,
    ) -> Result<(SaslConfig, bool), ServerError> {
        Self::parse(mechanisms, users_file, true)
    }

    fn parse<S: AsRef<str>>(
        mechanisms: &[S],
        users_file: Option<&Path>,
        allow_external: bool,
    ) -> Result<(SaslConfig, bool), ServerError> {
        let mut anonymous = false;
        let mut plain = false;
        let mut external = false;
        let supported = if allow_external {
            "ANONYMOUS, PLAIN, EXTERNAL"
        } else {
            "ANONYMOUS, PLAIN"
        };
        for m in mechanisms {
            match m.as_ref().trim().to_ascii_uppercase().as_str() {
                ANONYMOUS => anonymous = true,
                PLAIN => plain = true,
                EXTERNAL if allow_external => external = true,
                "" => {}
                other => {
                    return Err(ServerError::Mechanisms(format!(
                        "unsupported mechanism {other:?} (supported: {supported})"
                    )));
                }
            }
        }
        if !anonymous && !plain && !external {
            return Err(ServerError::Mechanisms(format!(
                "no mechanism given (use one or more of {supported})"
            )));
        }
        let plain = match (plain, users_file) {
            (true, Some(path)) => Some(Arc::new(Users::from_file(path)?)),
            (true, None) => {
                return Err(ServerError::Mechanisms(
                    "PLAIN needs a users file".to_string(),
                ));
            }
            (false, Some(path)) => {
                return Err(ServerError::Mechanisms(format!(
                    "a users file ({}) is given but PLAIN is not offered",
                    path.display()
                )));
            }
            (false, None) => None,
        };
        Ok((SaslConfig { anonymous, plain }, external))
    }

    /// The mechanism names offered, in preference order (PLAIN first).
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.plain.is_some() {
            names.push(PLAIN);
        }
        if self.anonymous {
            names.push(ANONYMOUS);
        }
        names
    }
}

/// The per-connection SASL acceptor: checks the mechanism and credentials and records who authenticated.
#[derive(Clone)]
pub(crate) struct ConnSasl {
    config: SaslConfig,
    /// Offer EXTERNAL to connections with a verified client certificate.
    external: bool,
    /// [`x509_user`] of the verified TLS client certificate, set after the TLS handshake.
    peer_cert_user: Arc<Mutex<Option<String>>>,
    /// (mechanism, identity) once an init arrived; identity is the user name (PLAIN), `anonymous` or the
    /// [`x509_user`] (EXTERNAL).
    seen: Arc<Mutex<Option<(String, String)>>>,
}

impl ConnSasl {
    /// A fresh acceptor for one connection.
    pub(crate) fn new(config: SaslConfig, external: bool) -> ConnSasl {
        ConnSasl {
            config,
            external,
            peer_cert_user: Arc::new(Mutex::new(None)),
            seen: Arc::new(Mutex::new(None)),
        }
    }

    /// Records the [`x509_user`] of the connection's verified TLS client certificate.
    pub(crate) fn set_peer_cert_user(&self, user: String) {
        if let Ok(mut slot) = self.peer_cert_user.lock() {
            *slot = Some(user);
        }
    }

    /// The outcome of a `sasl-init` (no mechanism here sends a challenge).
    pub(crate) fn check_init(&mut self, init: SaslInit) -> SaslCode {
        match self.on_init(init) {
            SaslServerFrame::Outcome(o) => o.code,
            SaslServerFrame::Challenge(_) => SaslCode::Sys,
        }
    }

    /// `user` as it may be logged after a failed login: a name that is no user is not shown (it may be a password
    /// typed into the user field).
    pub(crate) fn loggable_user(&self, user: String) -> String {
        let known = self
            .config
            .plain
            .as_ref()
            .is_some_and(|users| users.knows(&user));
        if known || user.is_empty() {
            user
        } else {
            "(not a known user)".to_string()
        }
    }

    /// The x509 user EXTERNAL would authenticate, when EXTERNAL is on and a verified certificate is there.
    fn external_user(&self) -> Option<String> {
        if !self.external {
            return None;
        }
        self.peer_cert_user.lock().ok().and_then(|g| g.clone())
    }

    fn record(&self, mechanism: &str, identity: &str) {
        if let Ok(mut guard) = self.seen.lock() {
            *guard = Some((mechanism.to_string(), identity.to_string()));
        }
    }

    pub(crate) fn seen(&self) -> Option<(String, String)> {
        self.seen.lock().ok().and_then(|g| g.clone())
    }
}

fn outcome(code: SaslCode) -> SaslServerFrame {
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: None,
    })
}

impl SaslAcceptor for ConnSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        // EXTERNAL only where it can succeed (as Qpid does): a verified client certificate is present.
        let external = self.external_user().is_some().then_some(EXTERNAL);
        Array::from(
            external
                .into_iter()
                .chain(self.config.mechanism_names())
                .map(Symbol::from)
                .collect::<Vec<_>>(),
        )
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let mechanism = init.mechanism.0.as_str();
        match mechanism {
            ANONYMOUS if self.config.anonymous => {
                self.record(ANONYMOUS, "anonymous");
                outcome(SaslCode::Ok)
            }
            PLAIN => {
                let Some(users) = self.config.plain.clone() else {
                    self.record(PLAIN, "");
                    return outcome(SaslCode::Auth);
                };
                let response = init
                    .initial_response
                    .map(|b| b.into_vec())
                    .unwrap_or_default();
                let mut parts = response.split(|b| *b == 0);
                let (_authzid, user, password) = (parts.next(), parts.next(), parts.next());
                match (user, password) {
                    (Some(user), Some(password)) => {
                        self.record(PLAIN, &String::from_utf8_lossy(user));
                        if users.check(user, password) {
                            outcome(SaslCode::Ok)
                        } else {
                            outcome(SaslCode::Auth)
                        }
                    }
                    _ => {
                        self.record(PLAIN, "");
                        outcome(SaslCode::Auth)
                    }
                }
            }
            EXTERNAL if self.external => {
                let Some(user) = self.external_user() else {
                    // No verified client certificate on this connection.
                    self.record(EXTERNAL, "");
                    return outcome(SaslCode::Auth);
                };
                self.record(EXTERNAL, &user);
                // The initial response is an authorization id; we support none but "act as myself".
                let authzid = init
                    .initial_response
                    .map(|b| b.into_vec())
                    .unwrap_or_default();
                if authzid.is_empty() || authzid == user.as_bytes() {
                    outcome(SaslCode::Ok)
                } else {
                    outcome(SaslCode::Auth)
                }
            }
            other => {
                self.record(other, "");
                outcome(SaslCode::Auth)
            }
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither ANONYMOUS nor PLAIN sends challenges, so a response is a protocol error.
        outcome(SaslCode::Sys)
    }
}

/// Builds a rustls TLS acceptor from PEM certificate chain and private key files.
pub fn tls_acceptor(
    cert_file: &Path,
    key_file: &Path,
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    build_tls_acceptor(cert_file, key_file, None)
}

/// Like [`tls_acceptor`], and a client certificate, when one is presented, must be signed by a CA in
/// `client_ca_file` (PEM) or the handshake fails. Clients without a certificate are still accepted (for
/// PLAIN/ANONYMOUS); with [`ServerOptions::sasl_external`] a verified certificate allows SASL EXTERNAL.
pub fn tls_acceptor_with_client_ca(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: &Path,
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    build_tls_acceptor(cert_file, key_file, Some(client_ca_file))
}

fn build_tls_acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    install_crypto_provider();
    let builder = match client_ca_file {
        None => rustls::ServerConfig::builder().with_no_client_auth(),
        Some(ca_file) => {
            let ca_err =
                |e: String| ServerError::Tls(format!("client CA file {}: {e}", ca_file.display()));
            let file = std::fs::File::open(ca_file).map_err(|e| ca_err(e.to_string()))?;
            let certs = rustls_pemfile::certs(&mut BufReader::new(file))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("holds no certificate".to_string()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
            rustls::ServerConfig::builder().with_client_cert_verifier(verifier)
        }
    };
    let file = std::fs::File::open(cert_file).map_err(|e| {
        ServerError::Tls(format!(
            "cannot read certificate file {}: {e}",
            cert_file.display()
        ))
    })?;
    let chain = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ServerError::Tls(format!(
                "cannot parse certificates in {}: {e}",
                cert_file.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(ServerError::Tls(format!(
            "certificate file {} holds no certificate",
            cert_file.display()
        )));
    }
    let file = std::fs::File::open(key_file).map_err(|e| {
        ServerError::Tls(format!("cannot read key file {}: {e}", key_file.display()))
    })?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| {
            ServerError::Tls(format!("cannot parse key file {}: {e}", key_file.display()))
        })?
        .ok_or_else(|| {
            ServerError::Tls(format!(
                "key file {} holds no private key",
                key_file.display()
            ))
        })?;
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(format!("certificate/key rejected: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How the server behaves.
#[derive(Clone)]
pub struct ServerOptions {
    /// Our container id in the `open` frame.
    pub container_id: String,
    /// SASL mechanisms offered.
    pub sasl: SaslConfig,
    /// TLS on every accepted socket, when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Offer SASL EXTERNAL to connections whose TLS client certificate was verified (needs `tls` from
    /// [`tls_acceptor_with_client_ca`]; without verified certificates EXTERNAL is never offered).
    pub sasl_external: bool,
    /// Most connections open at once; one more is opened and closed with `amqp:resource-limit-exceeded`.
    pub max_connections: usize,
    /// Most links attached at once on one connection; one more is attached and closed with
    /// `amqp:resource-limit-exceeded`.
    pub max_links_per_connection: usize,
    /// Largest frame we accept (announced in `open`; at least 512).
    pub max_frame_size: u32,
    /// Idle timeout announced in `open`: a peer silent for this long is dropped (it heartbeats at half of it).
    pub idle_timeout: Duration,
    /// Bound on TLS + SASL + AMQP open of one connection.
    pub handshake_timeout: Duration,
    /// Bound on closing one connection or link (waiting for the peer's answer), and on the final drain.
    pub close_timeout: Duration,
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("container_id", &self.container_id)
            .field("sasl", &self.sasl.mechanism_names())
            .field("tls", &self.tls.is_some())
            .field("sasl_external", &self.sasl_external)
            .field("max_connections", &self.max_connections)
            .field("max_links_per_connection", &self.max_links_per_connection)
            .field("max_frame_size", &self.max_frame_size)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .finish()
    }
}

impl ServerOptions {
    /// Defaults: ANONYMOUS, no TLS, no EXTERNAL, 1000 connections, 100 links per connection, 1 MiB frames, 60 s idle
    /// timeout, 10 s handshake timeout, 2 s close timeout.
    pub fn new(container_id: impl Into<String>) -> Self {
        ServerOptions {
            container_id: container_id.into(),
            sasl: SaslConfig::default(),
            tls: None,
            sasl_external: false,
            max_connections: 1000,
            max_links_per_connection: 100,
            max_frame_size: 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// Live counters of a server; read them for metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now (handshake done, not refused).
    pub open_connections: AtomicUsize,
    /// Connections accepted since start.
    pub accepted_connections: AtomicU64,
    /// Connections refused because of `max_connections`.
    pub refused_connections: AtomicU64,
    /// Links refused because of `max_links_per_connection`.
    pub refused_links: AtomicU64,
    /// SASL handshakes that failed (wrong credentials, unknown mechanism).
    pub sasl_failures: AtomicU64,
    /// Handshakes that failed otherwise (TLS, protocol, timeout).
    pub handshake_failures: AtomicU64,
    /// Links open now, over all connections.
    pub open_links: AtomicUsize,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Server-local connection number (log correlation).
    pub id: u64,
    /// The peer's socket address.
    pub peer: SocketAddr,
    /// The SASL mechanism used.
    pub mechanism: String,
    /// The authenticated user (`anonymous` for ANONYMOUS, [`x509_user`] of the client certificate for EXTERNAL).
    pub user: String,
    /// Bytes written to this connection's socket so far (below TLS: ciphertext).
    pub written: Arc<WriteProgress>,
}

/// How many bytes a connection has handed to its socket (the kernel) so far.
///
/// fe2o3's `send` returns once a message's frames are QUEUED inside the connection (its session and connection
/// queues are `u16::MAX` frames deep), not once they are written; a task sending large messages to many peers
/// would otherwise pile up every encoded copy in memory. Waiting with [`WriteProgress::wait_for`] until the
/// count has grown by the message's size bounds that: the frames left the process.
#[derive(Debug, Default)]
pub struct WriteProgress {
    written: AtomicU64,
    notify: tokio::sync::Notify,
}

impl WriteProgress {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Resolves once at least `target` bytes were written in all. Never resolves if the connection stops
    /// writing: select on the link's scope and a timeout around it.
    pub async fn wait_for(&self, target: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.written() >= target {
                return;
            }
            notified.await;
        }
    }

    fn add(&self, n: usize) {
        if n > 0 {
            self.written.fetch_add(n as u64, Ordering::AcqRel);
            self.notify.notify_waiters();
        }
    }
}

/// The socket under TLS and fe2o3, counting the bytes written into [`WriteProgress`].
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    progress: Arc<WriteProgress>,
}

impl<S> Counted<S> {
    /// `inner`, counting what is written to it into `progress`.
    pub(crate) fn new(inner: S, progress: Arc<WriteProgress>) -> Counted<S> {
        Counted { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.progress.add(*n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.progress.add(*n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Held by the task serving an accepted link: counts against `max_links_per_connection` until dropped.
#[derive(Debug)]
pub struct LinkGuard {
    links: Arc<AtomicUsize>,
    stats: Arc<ServerStats>,
}

impl LinkGuard {
    /// Counts one more link open, in `links` (its connection's) and `stats`, until dropped; the caller has already
    /// incremented both.
    pub(crate) fn new(links: Arc<AtomicUsize>, stats: Arc<ServerStats>) -> LinkGuard {
        LinkGuard { links, stats }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.links.fetch_sub(1, Ordering::AcqRel);
        self.stats.open_links.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a handler gets for an accepted sending link.
#[derive(Debug)]
pub struct AcceptedSender {
    /// Our sending end (the peer receives).
    pub sender: Sender,
    /// Cancelled when the session, the connection or the server ends: select on it around every send.
    pub scope: CancellationToken,
    /// Keep it as long as the link is served.
    pub guard: LinkGuard,
    /// Spawn the task serving this link here: [`Server::serve`] waits for it on shutdown.
    pub tracker: TaskTracker,
    /// Bytes this link's connection has handed to its socket: after `send` returns, fe2o3 still holds the
    /// message's frames in its queues; wait on this to know they left the process.
    pub written: Arc<WriteProgress>,
}

/// What a handler gets for an accepted receiving link (the peer sends).
#[derive(Debug)]
pub struct AcceptedReceiver {
    /// Our receiving end, with the credit asked for already granted; fe2o3's automatic credit mode grants
    /// it again as deliveries are accepted (so at most about that many are outstanding).
    pub receiver: fe2o3_amqp::link::Receiver,
    /// Cancelled when the session, the connection or the server ends: select on it around every receive.
    pub scope: CancellationToken,
    /// Keep it as long as the link is served.
    pub guard: LinkGuard,
    /// Spawn the task serving this link here: [`Server::serve`] waits for it on shutdown.
    pub tracker: TaskTracker,
}

/// Why an incoming link could not be accepted as asked.
#[derive(Debug, thiserror::Error)]
pub enum LinkAcceptError {
    /// The peer attached a sending link where a receiving one was expected (or the reverse).
    #[error("the peer's link has role {0:?}, not the one expected")]
    WrongRole(Role),
    /// fe2o3 could not complete the attach.
    #[error("attach failed: {0}")]
    Attach(String),
}

/// One incoming attach, handed to the [`LinkHandler`]. Dropping it without accepting or refusing it refuses
/// it with `amqp:internal-error`.
pub struct IncomingLink<'s> {
    attach: Option<Attach>,
    session: &'s mut ListenerSessionHandle,
    connection: Arc<ConnectionInfo>,
    scope: CancellationToken,
    tracker: TaskTracker,
    links: Arc<AtomicUsize>,
    stats: Arc<ServerStats>,
    close_timeout: Duration,
}

impl fmt::Debug for IncomingLink<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingLink")
            .field("name", &self.name())
            .field("source", &self.source_address())
            .field("target", &self.target_address())
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl<'s> IncomingLink<'s> {
    /// The raw attach frame.
    pub fn attach(&self) -> Option<&Attach> {
        self.attach.as_ref()
    }

    /// The link name.
    pub fn name(&self) -> &str {
        self.attach.as_ref().map_or("", |a| a.name.as_str())
    }

    /// True when the peer RECEIVES on this link (it attached as receiver, so we are the sender).
    pub fn peer_receives(&self) -> bool {
        self.attach
            .as_ref()
            .is_some_and(|a| matches!(a.role, Role::Receiver))
    }

    /// The source address the peer asked for (`None` without a source or address).
    pub fn source_address(&self) -> Option<String> {
        attach_fields::source_address(self.attach.as_ref()?)
    }

    /// The capabilities of the source the peer asked for (e.g. an opt-in mode such as `maas:delta`), in order.
    pub fn source_capabilities(&self) -> Vec<String> {
        self.attach
            .as_ref()
            .map(attach_fields::source_capabilities)
            .unwrap_or_default()
    }

    /// True when the peer asked for a dynamic source.
    pub fn source_dynamic(&self) -> bool {
        self.attach
            .as_ref()
            .is_some_and(attach_fields::source_dynamic)
    }

    /// The target address of the peer's attach.
    pub fn target_address(&self) -> Option<String> {
        attach_fields::target_address(self.attach.as_ref()?)
    }

    /// The source's filter map as strings: keys and string/symbol values (a described value holding a
    /// string counts too). `Err(key)` names the first entry whose value is not a string.
    pub fn filter_strings(&self) -> Result<BTreeMap<String, String>, String> {
        match self.attach.as_ref() {
            Some(a) => attach_fields::filter_strings(a),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Who is on the other end.
    pub fn connection(&self) -> &Arc<ConnectionInfo> {
        &self.connection
    }

    /// Cancelled when the session, the connection or the server ends.
    pub fn scope(&self) -> CancellationToken {
        self.scope.clone()
    }

    /// Spawns a task the server waits for on shutdown (serve accepted links from such tasks).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Accepts the link as our SENDER (the peer receives). Pre-settled sends work: the sender settle mode is
    /// `settled` or `mixed` (an `unsettled` request is answered with `settled`). A dynamic source is answered
    /// with a null source; use [`IncomingLink::accept_dynamic_sender`] to give it an address.
    pub async fn accept_sender(self) -> Result<AcceptedSender, LinkAcceptError> {
        self.accept_sender_with(sender_link_acceptor()).await
    }

    /// Accepts the link as our SENDER like [`IncomingLink::accept_sender`], and the attach we answer with lists
    /// `capabilities` in its source: what this node grants of what the peer asked for (a peer asking for an opt-in
    /// mode learns from the answer whether it got it). [`IncomingLink::accept_sender`] answers with none.
    pub async fn accept_sender_with_capabilities(
        self,
        capabilities: &[&str],
    ) -> Result<AcceptedSender, LinkAcceptError> {
        let capabilities: Vec<Symbol> = capabilities.iter().map(|c| Symbol::from(*c)).collect();
        let acceptor = LinkAcceptor::builder()
            .supported_sender_settle_modes(SupportedSenderSettleModes::SettledAndMixed)
            .fallback_sender_settle_mode(SenderSettleMode::Settled)
            .source_capabilities(capabilities)
            .build();
        self.accept_sender_with(acceptor).await
    }

    /// Accepts the link as our SENDER like [`IncomingLink::accept_sender`], answering a DYNAMIC source with
    /// `address` (the node the server created for it, e.g. a temporary reply queue).
    ///
    /// The attach is on the wire before this returns, and the peer may use `address` at once (e.g. as the
    /// `reply-to` of a request another task answers): register whatever routes messages to `address`
    /// BEFORE calling this (and undo it on `Err`), never after.
    pub async fn accept_dynamic_sender(
        self,
        address: String,
    ) -> Result<AcceptedSender, LinkAcceptError> {
        let acceptor = LinkAcceptor::builder()
            .supported_sender_settle_modes(SupportedSenderSettleModes::SettledAndMixed)
            .fallback_sender_settle_mode(SenderSettleMode::Settled)
            .on_dynamic_source(move |mut source: fe2o3_amqp::types::messaging::Source| {
                source.address = Some(address.clone());
                Some(source)
            })
            .build();
        self.accept_sender_with(acceptor).await
    }

    async fn accept_sender_with<FS, FT>(
        mut self,
        acceptor: LinkAcceptor<FS, FT>,
    ) -> Result<AcceptedSender, LinkAcceptError>
    where
        FS: Fn(
            fe2o3_amqp::types::messaging::Source,
        ) -> Option<fe2o3_amqp::types::messaging::Source>,
        FT: Fn(
            fe2o3_amqp::types::messaging::Target,
        ) -> Option<fe2o3_amqp::types::messaging::Target>,
    {
        let Some(attach) = self.attach.take() else {
            return Err(LinkAcceptError::Attach("attach already consumed".into()));
        };
        if !matches!(attach.role, Role::Receiver) {
            let role = attach.role.clone();
            self.attach = Some(attach);
            self.refuse_now(
                AmqpError::NotAllowed,
                "this server only sends on its links; attach a receiver".to_string(),
            )
            .await;
            return Err(LinkAcceptError::WrongRole(role));
        }
        match acceptor.accept_incoming_attach(attach, self.session).await {
            Ok(LinkEndpoint::Sender(sender)) => {
                self.links.fetch_add(1, Ordering::AcqRel);
                self.stats.open_links.fetch_add(1, Ordering::AcqRel);
                Ok(AcceptedSender {
                    sender,
                    scope: self.scope.clone(),
                    guard: LinkGuard {
                        links: Arc::clone(&self.links),
                        stats: Arc::clone(&self.stats),
                    },
                    tracker: self.tracker.clone(),
                    written: Arc::clone(&self.connection.written),
                })
            }
            Ok(LinkEndpoint::Receiver(receiver)) => {
                drop(receiver);
                Err(LinkAcceptError::WrongRole(Role::Sender))
            }
            Err(e) => Err(LinkAcceptError::Attach(e.to_string())),
        }
    }

    /// Accepts the link as our RECEIVER (the peer sends) and grants it `credit` (at least 1); the credit is
    /// granted again as the serving task accepts deliveries (fe2o3's automatic credit mode), which bounds what
    /// a fast sender can queue.
    pub async fn accept_receiver(
        mut self,
        credit: u32,
    ) -> Result<AcceptedReceiver, LinkAcceptError> {
        let Some(attach) = self.attach.take() else {
            return Err(LinkAcceptError::Attach("attach already consumed".into()));
        };
        if !matches!(attach.role, Role::Sender) {
            let role = attach.role.clone();
            self.attach = Some(attach);
            self.refuse_now(
                AmqpError::NotAllowed,
                "this link only receives; attach a sender".to_string(),
            )
            .await;
            return Err(LinkAcceptError::WrongRole(role));
        }
        match sender_link_acceptor()
            .accept_incoming_attach(attach, self.session)
            .await
        {
            Ok(LinkEndpoint::Receiver(mut receiver)) => {
                self.links.fetch_add(1, Ordering::AcqRel);
                self.stats.open_links.fetch_add(1, Ordering::AcqRel);
                let guard = LinkGuard {
                    links: Arc::clone(&self.links),
                    stats: Arc::clone(&self.stats),
                };
                receiver
                    .set_credit(credit.max(1))
                    .await
                    .map_err(|e| LinkAcceptError::Attach(format!("granting credit: {e}")))?;
                Ok(AcceptedReceiver {
                    receiver,
                    scope: self.scope.clone(),
                    guard,
                    tracker: self.tracker.clone(),
                })
            }
            Ok(LinkEndpoint::Sender(sender)) => {
                drop(sender);
                Err(LinkAcceptError::WrongRole(Role::Receiver))
            }
            Err(e) => Err(LinkAcceptError::Attach(e.to_string())),
        }
    }

    /// Refuses the link: attaches it (with a null source, as the spec suggests) and closes it at once with
    /// `condition` and `description`. The close handshake runs in a tracked task so a silent peer does not
    /// stall the session.
    pub async fn refuse(mut self, condition: impl Into<ErrorCondition>, description: String) {
        self.refuse_now(condition, description).await;
    }

    async fn refuse_now(&mut self, condition: impl Into<ErrorCondition>, description: String) {
        let Some(mut attach) = self.attach.take() else {
            return;
        };
        let condition = condition.into();
        debug!(
            connection = self.connection.id,
            link = %attach.name,
            ?condition,
            %description,
            "refusing link"
        );
        if matches!(attach.role, Role::Receiver) {
            attach.source = None;
        }
        let error = AmqpErrorBody::new(condition, Some(description), None);
        let close_timeout = self.close_timeout;
        match sender_link_acceptor()
            .accept_incoming_attach(attach, self.session)
            .await
        {
            Ok(LinkEndpoint::Sender(sender)) => {
                self.tracker.spawn(async move {
                    let _ =
                        tokio::time::timeout(close_timeout, sender.close_with_error(error)).await;
                });
            }
            Ok(LinkEndpoint::Receiver(receiver)) => {
                self.tracker.spawn(async move {
                    let _ =
                        tokio::time::timeout(close_timeout, receiver.close_with_error(error)).await;
                });
            }
            Err(e) => debug!(error = %e, "attach of a refused link failed"),
        }
    }
}

impl Drop for IncomingLink<'_> {
    fn drop(&mut self) {
        if self.attach.is_some() {
            warn!(
                link = self.name(),
                "link handler neither accepted nor refused a link; the peer's attach stays unanswered"
            );
        }
    }
}

/// The link acceptor with plain function pointers for the dynamic-node hooks (no dynamic nodes here).
type PlainLinkAcceptor = LinkAcceptor<
    fn(fe2o3_amqp::types::messaging::Source) -> Option<fe2o3_amqp::types::messaging::Source>,
    fn(fe2o3_amqp::types::messaging::Target) -> Option<fe2o3_amqp::types::messaging::Target>,
>;

fn sender_link_acceptor() -> PlainLinkAcceptor {
    LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::SettledAndMixed)
        .fallback_sender_settle_mode(SenderSettleMode::Settled)
        .build()
}

/// What an incoming attach asks for, read off the frame (shared by [`IncomingLink`] and the lean server's
/// attaches).
pub(crate) mod attach_fields {
    use std::collections::BTreeMap;

    use fe2o3_amqp::types::performatives::Attach;
    use fe2o3_amqp::types::primitives::Value;

    /// The source address (`None` without a source or address).
    pub(crate) fn source_address(attach: &Attach) -> Option<String> {
        let source = attach.source.as_ref()?;
        source.address.as_ref().map(|a| a.to_string())
    }

    /// The source's capabilities, in order.
    pub(crate) fn source_capabilities(attach: &Attach) -> Vec<String> {
        attach
            .source
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .map(|caps| caps.0.iter().map(|c| c.0.clone()).collect())
            .unwrap_or_default()
    }

    /// True for a dynamic source.
    pub(crate) fn source_dynamic(attach: &Attach) -> bool {
        attach.source.as_ref().is_some_and(|s| s.dynamic)
    }

    /// The target address.
    pub(crate) fn target_address(attach: &Attach) -> Option<String> {
        let target = attach.target.as_ref()?;
        match target.as_ref() {
            fe2o3_amqp::types::messaging::TargetArchetype::Target(t) => {
                t.address.as_ref().map(|a| a.to_string())
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The source's filter map as strings; `Err(key)` names the first entry whose value is not a string.
    pub(crate) fn filter_strings(attach: &Attach) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        let Some(filter) = attach.source.as_ref().and_then(|s| s.filter.as_ref()) else {
            return Ok(out);
        };
        for (key, value) in filter.iter() {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Symbol(s) => s.0.clone(),
                Value::Described(d) => match &d.value {
                    Value::String(s) => s.clone(),
                    Value::Symbol(s) => s.0.clone(),
                    _ => return Err(key.0.clone()),
                },
                _ => return Err(key.0.clone()),
            };
            out.insert(key.0.clone(), text);
        }
        Ok(out)
    }
}

/// The application's decision per incoming link.
pub trait LinkHandler: Send + Sync + 'static {
    /// Called for every incoming attach (within the link limit). Must accept or refuse `link` promptly (the
    /// session's other attaches wait) and serve an accepted link from a task spawned with
    /// [`IncomingLink::spawn`].
    fn on_attach<'a>(&'a self, link: IncomingLink<'a>) -> impl Future<Output = ()> + Send + 'a;

    /// Called once per connection after the AMQP open (SASL done), before any session is served.
    /// `Err((condition, description))` closes the connection with that error at once (ActiveMQ Artemis, for
    /// example, lets SASL ANONYMOUS through and then closes the connection with `amqp:unauthorized-access`).
    /// The default admits every connection.
    fn on_connection(&self, connection: &ConnectionInfo) -> Result<(), (ErrorCondition, String)> {
        let _ = connection;
        Ok(())
    }
}

/// A bound AMQP server.
pub struct Server<H> {
    listener: TcpListener,
    local_addr: SocketAddr,
    options: Arc<ServerOptions>,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
}

impl<H> fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the connection tasks share.
struct Shared<H> {
    options: Arc<ServerOptions>,
    handler: Arc<H>,
    stats: Arc<ServerStats>,
    tracker: TaskTracker,
}

impl<H: LinkHandler> Server<H> {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        options: ServerOptions,
        handler: H,
    ) -> Result<Server<H>, ServerError> {
        Self::bind_with_stats(addr, options, handler, Arc::new(ServerStats::default())).await
    }

    /// Like [`Server::bind`], counting into `stats` (created earlier, e.g. to register metrics first).
    pub async fn bind_with_stats(
        addr: SocketAddr,
        options: ServerOptions,
        handler: H,
        stats: Arc<ServerStats>,
    ) -> Result<Server<H>, ServerError> {
        let (listener, local_addr) = bind_listener(addr).await?;
        Ok(Server {
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

    /// The live counters (shared; valid after `serve` started too).
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts connections until `shutdown` resolves; then stops accepting, closes every connection, and
    /// waits (at most `close_timeout` plus a second) for every task it spawned.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let Server {
            listener,
            local_addr,
            options,
            handler,
            stats,
        } = self;
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            options: Arc::clone(&options),
            handler,
            stats: Arc::clone(&stats),
            tracker: tracker.clone(),
        });
        accept_connections(
            listener,
            local_addr,
            &options,
            &stats,
            tracker,
            shutdown,
            |stream, peer, id, token| connection_task(stream, peer, id, Arc::clone(&shared), token),
        )
        .await;
    }
}

/// Binds `addr`, returning the listener and the address actually bound.
pub(crate) async fn bind_listener(
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, local_addr))
}

/// The accept loop of [`Server`] and of the lean server: accepts until `shutdown` resolves (`TCP_NODELAY` on every
/// socket, a back-off on accept errors, sockets far over the connection limit dropped), runs `connection` for each
/// in a task of `tracker` with a child token of the server's; then cancels every connection and waits (at most the
/// close timeout plus a second) for every task of `tracker`.
pub(crate) async fn accept_connections<F, Fut>(
    listener: TcpListener,
    local_addr: SocketAddr,
    options: &ServerOptions,
    stats: &Arc<ServerStats>,
    tracker: TaskTracker,
    shutdown: impl Future<Output = ()> + Send,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, u64, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let root = CancellationToken::new();
    info!(
        addr = %local_addr,
        sasl = ?options.sasl.mechanism_names(),
        sasl_external = options.sasl_external,
        tls = options.tls.is_some(),
        "AMQP server listening"
    );
    let mut next_id: u64 = 0;
    // Counts connection tasks (handshaking or open): refuse-by-closing needs a bound too.
    let in_progress = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // E.g. EMFILE: back off briefly instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        next_id += 1;
        let tasks = in_progress.fetch_add(1, Ordering::AcqRel) + 1;
        // Beyond twice the limit even the polite refusal is skipped: the socket is just dropped.
        if tasks > options.max_connections.saturating_mul(2).max(4) {
            in_progress.fetch_sub(1, Ordering::AcqRel);
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, limit = options.max_connections, "connection dropped: far over the connection limit");
            continue;
        }
        let task = connection(stream, peer, next_id, root.child_token());
        let in_progress = Arc::clone(&in_progress);
        tracker.spawn(async move {
            task.await;
            in_progress.fetch_sub(1, Ordering::AcqRel);
        });
    }
    drop(listener);
    info!(addr = %local_addr, "AMQP server stopping: closing connections");
    root.cancel();
    tracker.close();
    let limit = options.close_timeout + Duration::from_secs(1);
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        warn!(
            remaining = tracker.len(),
            "AMQP tasks still running after shutdown; abandoning them"
        );
    }
    info!(addr = %local_addr, "AMQP server stopped");
}

/// Decrements the open connection count when the connection task ends.
pub(crate) struct OpenGuard(Arc<ServerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

fn resource_limit(description: String) -> AmqpErrorBody {
    AmqpErrorBody::new(AmqpError::ResourceLimitExceeded, Some(description), None)
}

async fn handshake(
    stream: Counted<TcpStream>,
    options: &ServerOptions,
    sasl: ConnSasl,
) -> Result<ListenerConnectionHandle, HandshakeError> {
    let max_frame = options.max_frame_size.max(512);
    let idle_ms = u32::try_from(options.idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let acceptor = ConnectionAcceptor::builder()
        .container_id(options.container_id.clone())
        .max_frame_size(max_frame)
        .idle_time_out(idle_ms)
        .sasl_acceptor(sasl.clone())
        .build();
    match &options.tls {
        None => acceptor.accept(stream).await.map_err(HandshakeError::from),
        Some(tls) => {
            let tls_stream = tls
                .accept(stream)
                .await
                .map_err(|e| HandshakeError::Other(format!("TLS handshake failed: {e}")))?;
            // rustls keeps peer certificates only when the client verifier accepted them.
            if let Some(cert) = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
            {
                sasl.set_peer_cert_user(x509_user(cert));
            }
            acceptor
                .accept(tls_stream)
                .await
                .map_err(HandshakeError::from)
        }
    }
}

/// Why a connection's handshake (TLS, SASL, open) failed.
pub(crate) enum HandshakeError {
    /// The SASL outcome was not `ok`.
    Sasl(SaslCode),
    /// Anything else (TLS, protocol, I/O).
    Other(String),
}

/// Counts and logs a failed handshake (`None`: it timed out). A failed login logs the user only when it is a known
/// one ([`ConnSasl::loggable_user`]).
pub(crate) fn report_handshake_failure(
    stats: &ServerStats,
    options: &ServerOptions,
    id: u64,
    peer: SocketAddr,
    sasl: &ConnSasl,
    failure: Option<HandshakeError>,
) {
    match failure {
        Some(HandshakeError::Sasl(code)) => {
            stats.sasl_failures.fetch_add(1, Ordering::Relaxed);
            let (mechanism, user) = sasl.seen().unwrap_or_default();
            let user = sasl.loggable_user(user);
            info!(connection = id, %peer, %mechanism, %user, ?code, "SASL authentication failed");
        }
        Some(HandshakeError::Other(reason)) => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            info!(connection = id, %peer, %reason, "connection handshake failed");
        }
        None => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            info!(connection = id, %peer, timeout = ?options.handshake_timeout, "connection handshake timed out");
        }
    }
}

/// Takes one of the `max_connections` slots (atomically, so concurrent handshakes cannot overshoot), counting the
/// connection accepted; the guard gives it back. Over the limit: counted refused, and the error to close with.
pub(crate) fn reserve_connection(
    stats: &Arc<ServerStats>,
    options: &ServerOptions,
    id: u64,
    peer: SocketAddr,
    user: &str,
) -> Result<OpenGuard, AmqpErrorBody> {
    let max = options.max_connections;
    let reserved = stats
        .open_connections
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok();
    if !reserved {
        stats.refused_connections.fetch_add(1, Ordering::Relaxed);
        warn!(connection = id, %peer, %user, limit = max, "refusing connection: connection limit reached");
        return Err(resource_limit(format!(
            "connection limit reached: this server allows {max} open connections"
        )));
    }
    stats.accepted_connections.fetch_add(1, Ordering::Relaxed);
    Ok(OpenGuard(Arc::clone(stats)))
}

impl From<OpenError> for HandshakeError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::SaslError { code, .. } => HandshakeError::Sasl(code),
            other => HandshakeError::Other(other.to_string()),
        }
    }
}

async fn connection_task<H: LinkHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared<H>>,
    token: CancellationToken,
) {
    let options = &shared.options;
    let stats = &shared.stats;
    let sasl = ConnSasl::new(options.sasl.clone(), options.sasl_external);
    let written = Arc::new(WriteProgress::default());
    let counted = Counted::new(stream, Arc::clone(&written));
    let opened = tokio::select! {
        () = token.cancelled() => return,
        // Boxed: the handshake's state (TLS, SASL) is large and needed only here, not for the connection's life.
        r = tokio::time::timeout(options.handshake_timeout, Box::pin(handshake(counted, options, sasl.clone()))) => r,
    };
    let seen = sasl.seen();
    let mut connection = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return report_handshake_failure(stats, options, id, peer, &sasl, Some(e)),
        Err(_) => return report_handshake_failure(stats, options, id, peer, &sasl, None),
    };
    let (mechanism, user) = seen.unwrap_or_default();
    let _open = match reserve_connection(stats, options, id, peer, &user) {
        Ok(guard) => guard,
        Err(error) => {
            let _ = tokio::time::timeout(options.close_timeout, connection.close_with_error(error))
                .await;
            return;
        }
    };
    let info = Arc::new(ConnectionInfo {
        id,
        peer,
        mechanism,
        user,
        written,
    });
    if let Err((condition, description)) = shared.handler.on_connection(&info) {
        info!(connection = id, %peer, user = %info.user, %description, "connection refused by the application");
        let error = AmqpErrorBody::new(condition, Some(description), None);
        let _ =
            tokio::time::timeout(options.close_timeout, connection.close_with_error(error)).await;
        return;
    }
    debug!(connection = id, %peer, user = %info.user, "connection open");
    let links = Arc::new(AtomicUsize::new(0));
    let mut closed = false;
    loop {
        tokio::select! {
            () = token.cancelled() => {
                let _ = tokio::time::timeout(options.close_timeout, connection.close()).await;
                closed = true;
                break;
            }
            incoming = connection.next_incoming_session() => {
                let Some(incoming) = incoming else { break };
                match SessionAcceptor::new().accept_incoming_session(incoming, &mut connection).await {
                    Ok(session) => {
                        let shared2 = Arc::clone(&shared);
                        let session_token = token.child_token();
                        let info = Arc::clone(&info);
                        let links = Arc::clone(&links);
                        shared.tracker.spawn(session_task(session, shared2, info, links, session_token));
                    }
                    Err(error) => {
                        debug!(connection = id, %error, "session begin failed");
                    }
                }
            }
        }
    }
    // Ends every session task and every link task of this connection.
    token.cancel();
    if !closed {
        let _ = tokio::time::timeout(options.close_timeout, connection.on_close()).await;
    }
    debug!(connection = id, %peer, "connection closed");
}

async fn session_task<H: LinkHandler>(
    mut session: ListenerSessionHandle,
    shared: Arc<Shared<H>>,
    info: Arc<ConnectionInfo>,
    links: Arc<AtomicUsize>,
    token: CancellationToken,
) {
    let options = &shared.options;
    loop {
        let attach = tokio::select! {
            () = token.cancelled() => break,
            attach = session.next_incoming_attach() => attach,
        };
        let Some(attach) = attach else { break };
        let link = IncomingLink {
            attach: Some(attach),
            session: &mut session,
            connection: Arc::clone(&info),
            scope: token.clone(),
            tracker: shared.tracker.clone(),
            links: Arc::clone(&links),
            stats: Arc::clone(&shared.stats),
            close_timeout: options.close_timeout,
        };
        if links.load(Ordering::Acquire) >= options.max_links_per_connection {
            shared.stats.refused_links.fetch_add(1, Ordering::Relaxed);
            warn!(
                connection = info.id,
                peer = %info.peer,
                limit = options.max_links_per_connection,
                "refusing link: link limit per connection reached"
            );
            let description = format!(
                "link limit reached: this server allows {} links per connection",
                options.max_links_per_connection
            );
            link.refuse(AmqpError::ResourceLimitExceeded, description)
                .await;
            continue;
        }
        // Boxed: the handler's future lives only while it answers this attach.
        let handled = tokio::time::timeout(
            options.handshake_timeout,
            Box::pin(shared.handler.on_attach(link)),
        );
        tokio::select! {
            () = token.cancelled() => break,
            r = handled => if r.is_err() {
                warn!(connection = info.id, "link handler did not answer an attach in time");
            },
        }
    }
    // Ends the link tasks of this session (their sends would otherwise wait forever for credit).
    token.cancel();
    drop(session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_progress_counts_what_reached_the_socket_and_wakes_waiters() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A 4 KiB pipe: a 10 KiB write can only complete as the other end reads.
        let (a, mut b) = tokio::io::duplex(4096);
        let progress = Arc::new(WriteProgress::default());
        let mut counted = Counted {
            inner: a,
            progress: Arc::clone(&progress),
        };
        let waiter = {
            let progress = Arc::clone(&progress);
            tokio::spawn(async move { progress.wait_for(10_240).await })
        };
        let writer = tokio::spawn(async move {
            counted.write_all(&[7u8; 10_240]).await.unwrap();
            counted
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Nothing read yet: only what fits the pipe was written, and the waiter still waits.
        assert_eq!(progress.written(), 4096);
        assert!(!waiter.is_finished());
        let mut buf = vec![0u8; 10_240];
        b.read_exact(&mut buf).await.unwrap();
        let _counted = writer.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes once 10 KiB were written")
            .unwrap();
        assert_eq!(progress.written(), 10_240);
        // A target already reached resolves at once.
        tokio::time::timeout(Duration::from_millis(100), progress.wait_for(5))
            .await
            .unwrap();
    }

    #[test]
    fn users_file_parses_and_checks_without_showing_passwords() {
        let text = "# admins\nadmin:s3cret:with:colons\n\n  # another comment\nbob:\n";
        let users = Users::parse(Path::new("users"), text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.check(b"admin", b"s3cret:with:colons"));
        assert!(!users.check(b"admin", b"s3cret"));
        assert!(users.check(b"bob", b""));
        assert!(!users.check(b"carol", b""));
        let shown = format!("{users:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("admin"), "{shown}");
    }

    #[test]
    fn bad_users_lines_name_the_line_not_the_content() {
        let err = Users::parse(Path::new("u.txt"), "ok:1\nnopasswordhere\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("nopasswordhere"), "{err}");
        let err = Users::parse(Path::new("u.txt"), "a:1\na:2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("defined twice"), "{err}");
    }

    fn init(mechanism: &str, response: Option<&[u8]>) -> SaslInit {
        SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: response.map(|r| r.to_vec().into()),
            hostname: None,
        }
    }

    fn code(frame: SaslServerFrame) -> SaslCode {
        match frame {
            SaslServerFrame::Outcome(o) => o.code,
            SaslServerFrame::Challenge(_) => SaslCode::Sys,
        }
    }

    #[test]
    fn sasl_acceptor_checks_mechanism_and_credentials() {
        let mut users = Users::default();
        users.insert("u", "p");
        let mut plain_only = ConnSasl {
            config: SaslConfig {
                anonymous: false,
                plain: Some(Arc::new(users)),
            },
            external: false,
            peer_cert_user: Arc::new(Mutex::new(Some("x509:sha256:00".to_string()))),
            seen: Arc::new(Mutex::new(None)),
        };
        assert_eq!(
            code(plain_only.on_init(init(ANONYMOUS, None))),
            SaslCode::Auth
        );
        assert_eq!(
            code(plain_only.on_init(init(PLAIN, Some(b"\0u\0p")))),
            SaslCode::Ok
        );
        assert_eq!(
            plain_only.seen(),
            Some((PLAIN.to_string(), "u".to_string()))
        );
        assert_eq!(
            code(plain_only.on_init(init(PLAIN, Some(b"\0u\0x")))),
            SaslCode::Auth
        );
        assert_eq!(
            code(plain_only.on_init(init(PLAIN, Some(b"garbage")))),
            SaslCode::Auth
        );
        assert_eq!(
            code(plain_only.on_init(init("EXTERNAL", None))),
            SaslCode::Auth
        );
        let mut anonymous = ConnSasl {
            config: SaslConfig::default(),
            external: false,
            peer_cert_user: Arc::new(Mutex::new(None)),
            seen: Arc::new(Mutex::new(None)),
        };
        assert_eq!(code(anonymous.on_init(init(ANONYMOUS, None))), SaslCode::Ok);
        assert_eq!(
            code(anonymous.on_init(init(PLAIN, Some(b"\0u\0p")))),
            SaslCode::Auth
        );
    }

    #[test]
    fn external_needs_a_verified_certificate_on_the_connection() {
        let mut sasl = ConnSasl {
            config: SaslConfig::default(),
            external: true,
            peer_cert_user: Arc::new(Mutex::new(None)),
            seen: Arc::new(Mutex::new(None)),
        };
        // No verified certificate: EXTERNAL is neither offered nor granted.
        assert_eq!(
            sasl.mechanisms(),
            Array::from(vec![Symbol::from(ANONYMOUS)])
        );
        assert_eq!(
            code(sasl.on_init(init(EXTERNAL, Some(b"")))),
            SaslCode::Auth
        );
        assert_eq!(sasl.seen(), Some((EXTERNAL.to_string(), String::new())));
        // A verified certificate (set by the handshake after TLS): offered first and granted.
        let user = x509_user(b"certificate");
        *sasl.peer_cert_user.lock().unwrap() = Some(user.clone());
        assert_eq!(
            sasl.mechanisms(),
            Array::from(vec![Symbol::from(EXTERNAL), Symbol::from(ANONYMOUS)])
        );
        assert_eq!(code(sasl.on_init(init(EXTERNAL, Some(b"")))), SaslCode::Ok);
        assert_eq!(sasl.seen(), Some((EXTERNAL.to_string(), user.clone())));
        assert_eq!(code(sasl.on_init(init(EXTERNAL, None))), SaslCode::Ok);
        assert_eq!(
            code(sasl.on_init(init(EXTERNAL, Some(user.as_bytes())))),
            SaslCode::Ok
        );
        // Asking to act as someone else is refused.
        assert_eq!(
            code(sasl.on_init(init(EXTERNAL, Some(b"admin")))),
            SaslCode::Auth
        );
        // EXTERNAL switched off: a certificate alone does not enable it.
        sasl.external = false;
        assert_eq!(
            sasl.mechanisms(),
            Array::from(vec![Symbol::from(ANONYMOUS)])
        );
        assert_eq!(
            code(sasl.on_init(init(EXTERNAL, Some(b"")))),
            SaslCode::Auth
        );
    }

    #[test]
    fn x509_user_is_a_short_sha256() {
        // sha256("abc") = ba7816bf8f01cfea 414140de5dae2223...
        assert_eq!(x509_user(b"abc"), "x509:sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn mechanism_lists_with_external() {
        let (c, external) = SaslConfig::from_mechanisms_with_external(&["EXTERNAL"], None).unwrap();
        assert!(external);
        assert!(c.mechanism_names().is_empty());
        let (c, external) =
            SaslConfig::from_mechanisms_with_external(&["anonymous", "external"], None).unwrap();
        assert!(external);
        assert_eq!(c.mechanism_names(), vec![ANONYMOUS]);
        let (_, external) =
            SaslConfig::from_mechanisms_with_external(&["ANONYMOUS"], None).unwrap();
        assert!(!external);
        let err = SaslConfig::from_mechanisms(&["EXTERNAL"], None).unwrap_err();
        assert!(err.to_string().contains("EXTERNAL"), "{err}");
    }

    #[test]
    fn mechanism_lists() {
        let c = SaslConfig::from_mechanisms(&["anonymous"], None).unwrap();
        assert_eq!(c.mechanism_names(), vec![ANONYMOUS]);
        let err = SaslConfig::from_mechanisms(&["PLAIN"], None).unwrap_err();
        assert!(err.to_string().contains("users file"), "{err}");
        let err = SaslConfig::from_mechanisms(&["GSSAPI"], None).unwrap_err();
        assert!(err.to_string().contains("GSSAPI"), "{err}");
        let err = SaslConfig::from_mechanisms::<&str>(&[], None).unwrap_err();
        assert!(err.to_string().contains("no mechanism"), "{err}");
    }
}
