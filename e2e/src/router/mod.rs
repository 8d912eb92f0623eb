//! A qdrouterd 1.19.0 management emulator: an AMQP 1.0 server on 127.0.0.1 whose `$management` node answers
//! like the real router recorded in `docs/reference/qdrouterd-1.19.0/` for `router.config.address|linkRoute|autoLink`,
//! `connector` and `listener`, with the router's cost shape (one management thread, QUERY re-walks the table)
//! and knobs for fault injection (added latency, withheld replies, dropped connections, restart, drift).
//!
//! - [`model`]: entities, validation, exact replies (pure);
//! - [`core`]: the single management thread and its virtual clock;
//! - [`server`]: the AMQP listener, links and reply routing;
//! - [`policy`]: the recorded `clients` vhost policy of the optional client listener
//!   ([`RouterEmulator::start_with_client_listener`]): a second port where `$management` is refused, as on a real
//!   router whose agent has a listener of its own (python-agent-and-mesh.txt §5).

pub mod core;
pub mod echo;
pub mod mesh;
pub mod model;
pub mod policy;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::core::{CoreMsg, Knobs, Shared};
pub use self::mesh::{CONNECTION, Mode, ROUTER_NODE};
use self::model::Model;
pub use self::model::{ADDRESS, AUTO_LINK, CONNECTOR, Kind, LINK_ROUTE, LISTENER, OpCounters};

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; only loopback addresses are accepted. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Router id: the open frame's container-id and the `_topo` part of dynamic addresses.
    pub router_id: String,
    /// Reproduce the real router's costs (one management thread, ~0.7 ms round trip, slow QUERY pages).
    /// Off: replies are immediate, for fast functional tests.
    pub cost_model: bool,
    /// Extra latency added to every reply.
    pub latency: Duration,
    /// Credit granted on each `$management` link (the router's link capacity).
    pub management_credit: u32,
    /// Interior (mesh member) or edge router, for `router.node` and `connection` (mesh.rs).
    pub mode: mesh::Mode,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            router_id: "Router.A".to_string(),
            cost_model: true,
            latency: Duration::ZERO,
            management_credit: 250,
            mode: mesh::Mode::Interior,
        }
    }
}

/// The optional second listener, for clients: a `normal` listener naming the recorded `clients` policy vhost
/// (python-agent-and-mesh.txt §5). The emulator's first port stays the agent's (no policy, `$management` works).
#[derive(Debug, Clone)]
pub struct ClientListener {
    /// Where to listen; only loopback addresses are accepted. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The vhost user group applied to every link attached on this listener.
    pub policy: policy::GroupPolicy,
    /// `None`: no authentication (`authenticatePeer: false`, any SASL mechanism or none, e2e/GUESSES.md #4).
    /// `Some`: the shipped listener (`authenticatePeer: true`, `saslMechanisms: PLAIN`): only SASL PLAIN is
    /// offered, with these users (names with their realm, `alice@maas`); anything else is refused at SASL.
    pub users: Option<maas_amqp::server::Users>,
}

impl Default for ClientListener {
    fn default() -> Self {
        ClientListener {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: policy::GroupPolicy::clients(),
            users: None,
        }
    }
}

struct Inner {
    addr: SocketAddr,
    /// The client listener's address, when there is one.
    client_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    core_tx: Mutex<std::sync::mpsc::Sender<CoreMsg>>,
    shutdown: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    client_accept_task: Mutex<Option<JoinHandle<()>>>,
    core_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Next `qd.conn-id`: one more per connection opened.
    conn_ids: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        mesh::unregister(self.addr.port());
        let _ = self.shutdown.send(true);
        if let Ok(tx) = self.core_tx.lock() {
            let _ = tx.send(CoreMsg::Shutdown);
        }
    }
}

/// A running emulator; a cheap clonable handle. Dropping the last handle (or [`RouterEmulator::stop`]) stops it.
#[derive(Clone)]
pub struct RouterEmulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RouterEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterEmulator")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

fn kind_of(full_type: &str) -> Option<Kind> {
    let k = Kind::from_full(full_type);
    if k.is_none() {
        tracing::warn!(full_type, "not an emulated entity type");
    }
    k
}

fn check_loopback(listen: SocketAddr) -> std::io::Result<()> {
    if listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the emulator only listens on loopback, not {listen}"),
        ))
    }
}

impl RouterEmulator {
    /// Binds the listener and starts serving.
    pub async fn start(cfg: EmulatorConfig) -> std::io::Result<RouterEmulator> {
        Self::start_inner(cfg, None).await
    }

    /// Like [`RouterEmulator::start`], with a second listener for clients that applies the recorded `clients`
    /// vhost policy (links to `$management`, or any address not starting with a letter or digit, are refused
    /// with `amqp:unauthorized-access` `link disallowed by local policy`). The first port is the agent's and
    /// behaves as with [`RouterEmulator::start`]; see [`RouterEmulator::client_url`].
    pub async fn start_with_client_listener(
        cfg: EmulatorConfig,
        client: ClientListener,
    ) -> std::io::Result<RouterEmulator> {
        Self::start_inner(cfg, Some(client)).await
    }

    async fn start_inner(
        cfg: EmulatorConfig,
        client: Option<ClientListener>,
    ) -> std::io::Result<RouterEmulator> {
        check_loopback(cfg.listen)?;
        if let Some(c) = &client {
            check_loopback(c.listen)?;
        }
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let client_listener = match &client {
            Some(c) => Some(TcpListener::bind(c.listen).await?),
            None => None,
        };
        let client_addr = match &client_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            model: Mutex::new(Model::new(cfg.router_id.clone())),
            routes: Mutex::new(Default::default()),
            knobs: Knobs {
                latency_us: AtomicU64::new(
                    u64::try_from(cfg.latency.as_micros()).unwrap_or(u64::MAX),
                ),
                withhold: Default::default(),
                query_latency_us: Default::default(),
            },
            epoch,
            cost_model: cfg.cost_model,
            port: addr.port(),
            open: Default::default(),
        });
        mesh::register(addr.port(), &cfg.router_id, cfg.mode, &shared);
        let (core_tx, core_rx) = std::sync::mpsc::channel();
        let core_shared = shared.clone();
        let core_thread = std::thread::Builder::new()
            .name("router-emulator-core".into())
            .spawn(move || core::run(core_shared, core_rx))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let conn_ids = Arc::new(AtomicU64::new(1));
        let ctx = server::Ctx {
            shared: shared.clone(),
            core_tx: core_tx.clone(),
            router_id: cfg.router_id.clone(),
            credit: cfg.management_credit.max(1),
            shutdown: shutdown_rx,
            conn_ids: conn_ids.clone(),
            policy: None,
            users: None,
        };
        let client_accept_task = match (client_listener, client) {
            (Some(l), Some(c)) => {
                // GUESS (e2e/GUESSES.md #26b): (f) same open frame, SASL and conn-ids as the agent port
                let client_ctx = server::Ctx {
                    policy: Some(Arc::new(c.policy)),
                    users: c.users.map(Arc::new),
                    ..ctx.clone()
                };
                Some(tokio::spawn(server::accept_loop(l, client_ctx)))
            }
            _ => None,
        };
        let accept_task = tokio::spawn(server::accept_loop(listener, ctx));
        tracing::info!(%addr, ?client_addr, router_id = %cfg.router_id, cost_model = cfg.cost_model, "router emulator listening");
        Ok(RouterEmulator {
            inner: Arc::new(Inner {
                addr,
                client_addr,
                shared,
                core_tx: Mutex::new(core_tx),
                shutdown,
                accept_task: Mutex::new(Some(accept_task)),
                client_accept_task: Mutex::new(client_accept_task),
                core_thread: Mutex::new(Some(core_thread)),
                conn_ids,
            }),
        })
    }

    fn send_core(&self, msg: CoreMsg) {
        if let Ok(tx) = self.inner.core_tx.lock() {
            let _ = tx.send(msg);
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `amqp://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("amqp://{}:{}", self.inner.addr.ip(), self.inner.addr.port())
    }

    /// The client listener's address ([`RouterEmulator::start_with_client_listener`]), if there is one.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.inner.client_addr
    }

    /// `amqp://127.0.0.1:PORT` of the client listener, if there is one.
    pub fn client_url(&self) -> Option<String> {
        self.inner
            .client_addr
            .map(|a| format!("amqp://{}:{}", a.ip(), a.port()))
    }

    /// Operation counters since start (or the last reset).
    pub fn counters(&self) -> OpCounters {
        self.inner.shared.model().counters.clone()
    }

    /// Zeroes the operation counters.
    pub fn reset_counters(&self) {
        self.inner.shared.model().counters = OpCounters::default();
    }

    /// Simulates a router restart: drops every connection, loses every entity created over management (static
    /// ones stay), keeps the port; identities keep growing.
    // GUESS (e2e/GUESSES.md #22): restart semantics beyond any recording
    pub async fn restart(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_core(CoreMsg::Restart(tx));
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
    }

    /// Attribute maps of the entities of a full type, in the router's order.
    pub fn entities(&self, full_type: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        match kind_of(full_type) {
            Some(k) => self.inner.shared.model().snapshot(k),
            None => Vec::new(),
        }
    }

    /// Number of entities of every type.
    pub fn entity_count(&self) -> usize {
        self.inner.shared.model().total()
    }

    /// Reply links currently open (one per connected management client); 0 once every client has gone, which
    /// shows that connection tasks do not leak.
    pub fn open_reply_links(&self) -> usize {
        self.inner.shared.routes().len()
    }

    /// Adds a static entity, as if from qdrouterd.conf: it survives [`RouterEmulator::restart`].
    pub fn insert_static(
        &self,
        full_type: &str,
        name: &str,
        attributes: serde_json::Map<String, serde_json::Value>,
    ) {
        if let Some(k) = kind_of(full_type) {
            self.inner
                .shared
                .model()
                .insert_static(k, name, &attributes);
        }
    }

    /// Deletes an entity without a management request (someone else changed the router). True if it existed.
    pub fn delete_by_hand(&self, full_type: &str, name: &str) -> bool {
        match kind_of(full_type) {
            Some(k) => self.inner.shared.model().delete_by_hand(k, name),
            None => false,
        }
    }

    /// Extra latency for every reply from now on.
    pub fn set_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.inner
            .shared
            .knobs
            .latency_us
            .store(us, Ordering::Relaxed);
    }

    /// Extra latency added to QUERY replies only (a page deep into a large router is slow).
    pub fn set_query_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.inner
            .shared
            .knobs
            .query_latency_us
            .store(us, Ordering::Relaxed);
    }

    /// AMQP connections opened so far (a client that reconnects opens another).
    pub fn connections_opened(&self) -> u64 {
        self.inner.conn_ids.load(Ordering::Relaxed) - 1
    }

    /// While on, requests still take effect but their replies are never sent.
    pub fn withhold_replies(&self, on: bool) {
        self.inner
            .shared
            .knobs
            .withhold
            .store(on, Ordering::Relaxed);
    }

    /// After `n` more operations have been answered, drop every connection (once). `Some(0)` drops now,
    /// `None` cancels.
    pub fn drop_connections_after(&self, n: Option<u64>) {
        self.send_core(CoreMsg::DropAfter(n));
    }

    /// Stops listening, closes every connection and ends the management thread.
    pub async fn stop(self) {
        mesh::unregister(self.inner.addr.port());
        let _ = self.inner.shutdown.send(true);
        self.send_core(CoreMsg::Shutdown);
        let task = self
            .inner
            .accept_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let client_task = self
            .inner
            .client_accept_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = client_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let thread = self
            .inner
            .core_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
