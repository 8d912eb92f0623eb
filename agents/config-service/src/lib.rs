//! config-service: serves full address, flavor and pod snapshots over AMQP 1.0, and address deltas to subscribers
//! that ask for incremental mode (docs/architecture.md §3).
//!
//! Data flow: a source ([`maas_source::spawn_file_config`] for a mounted ConfigMap directory, a pods file, or the
//! Kubernetes API) publishes [`maas_source::ConfigState`]; [`snapshot`] turns it into the latest published state
//! per source address (encoded snapshot, generation, recent deltas); [`serve`] hands each subscriber its source —
//! full snapshots, or deltas on a `maas:delta` link — over the generic AMQP server of [`maas_amqp::server`]. [`metrics`] owns `/metrics`; [`args`] the command line.
//!
//! `main` parses [`Args`] and calls [`run`]; tests call [`start`] to learn the bound ports.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod args;
pub mod metrics;
pub mod serve;
pub mod snapshot;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use maas_amqp::server::{SaslConfig, ServerOptions, tls_acceptor, tls_acceptor_with_client_ca};
use maas_ops::{Health, HttpServer};
use maas_source::{ConfigState, FileConfig, WatchOptions};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use args::{Args, Mode};
pub use metrics::Metrics;
pub use snapshot::{DeltaMessage, PodsState, Published, Snapshot, Snapshots, Source, Update};

/// Why config-service cannot start or stopped with an error. One line each.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid flags or combinations of flags.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A source could not be started (unreadable directory, file, API).
    #[error("source: {0}")]
    Source(String),
    /// The AMQP server could not be set up (users file, TLS files, bind).
    #[error("{0}")]
    Server(#[from] maas_amqp::server::ServerError),
    /// The HTTP server could not bind or failed.
    #[error("HTTP server on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A task of the service panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Source(_) => "source",
            Error::Server(e) => e.metric_label(),
            Error::Http { .. } => "http",
            Error::Internal(_) => "internal",
        }
    }
}

/// The sources the service serves from.
#[derive(Debug)]
pub struct Sources {
    /// Address and flavor configuration.
    pub config: watch::Receiver<Arc<ConfigState>>,
    /// Pods for `podsense`, when a pod source is configured.
    pub pods: Option<watch::Receiver<Arc<PodsState>>>,
}

/// Kubernetes API mode sources: the labelled address ConfigMaps and the flavor ConfigMap of `namespace` (last good
/// kept per ConfigMap, `InvalidAddressConfig` Events on bad ones) and the namespace's pods for `podsense`. The
/// cluster comes from the in-cluster configuration or `KUBECONFIG`.
pub async fn kube_sources(namespace: &str, _metrics: &Metrics) -> Result<Sources, Error> {
    let client = kube::Client::try_default().await.map_err(|e| {
        Error::Source(format!(
            "--kube: no usable Kubernetes configuration (in-cluster or KUBECONFIG): {e}"
        ))
    })?;
    let config = maas_source::spawn_kube_config(
        client.clone(),
        maas_source::KubeConfigOptions::new(namespace, "maas-config-service"),
    );
    let pods = maas_source::spawn_kube_pods(client, namespace.to_string());
    Ok(Sources {
        config,
        pods: Some(pods),
    })
}

fn file_sources(mode: &Mode, watch: WatchOptions, metrics: &Metrics) -> Result<Sources, Error> {
    let Mode::Files {
        addresses_dir,
        flavors_file,
        pods_file,
    } = mode
    else {
        return Err(Error::Internal("file_sources called in kube mode".into()));
    };
    let config = maas_source::spawn_file_config(FileConfig {
        addresses_dir: addresses_dir.clone(),
        flavors_file: flavors_file.clone(),
        watch,
    })
    .map_err(|e| Error::Source(e.to_string()))?;
    let pods = match pods_file {
        Some(p) => Some(snapshot::spawn_pods_file(
            p.clone(),
            watch,
            metrics.clone(),
        )?),
        None => None,
    };
    Ok(Sources { config, pods })
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    /// Where AMQP is served.
    pub amqp_addr: SocketAddr,
    /// Where `/healthz`, `/readyz`, `/metrics` are served.
    pub http_addr: SocketAddr,
    /// The metric handles (tests read gauges here).
    pub metrics: Metrics,
    /// The readiness flag.
    pub health: Health,
    amqp: JoinHandle<()>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Waits until the service stopped (after the shutdown future resolved).
    pub async fn wait(self) -> Result<(), Error> {
        self.amqp
            .await
            .map_err(|e| Error::Internal(format!("AMQP server task: {e}")))?;
        match self.http.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::Http {
                addr: self.http_addr,
                source,
            }),
            Err(e) => Err(Error::Internal(format!("HTTP server task: {e}"))),
        }
    }
}

/// Validates `args`, starts the sources, the AMQP server and the HTTP server, and returns once both listen.
/// Everything stops when `shutdown` resolves.
pub async fn start(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, Error> {
    let mode = args.mode()?;
    let (sasl, sasl_external) = SaslConfig::from_mechanisms_with_external(
        &args.sasl_mechanisms,
        args.users_file.as_deref(),
    )?;
    let tls = match (&args.tls_cert_file, &args.tls_key_file, &args.tls_client_ca) {
        (Some(cert), Some(key), None) => Some(tls_acceptor(cert, key)?),
        (Some(cert), Some(key), Some(ca)) => Some(tls_acceptor_with_client_ca(cert, key, ca)?),
        _ => None,
    };
    let mut options = ServerOptions::new(format!("config-service-{}", std::process::id()));
    options.sasl = sasl;
    options.tls = tls;
    options.sasl_external = sasl_external;
    options.max_connections = args.max_connections;
    options.max_links_per_connection = args.max_links_per_connection;
    options.max_frame_size = args.max_frame_size;

    let mut registry = Registry::with_prefix(metrics::PREFIX);
    // The server (and its stats) exist before the handler, which needs the metrics: build stats first.
    let stop = CancellationToken::new();
    let health = Health::new();
    let sources_metrics_registry = &mut registry;
    let stats = Arc::new(maas_amqp::server::ServerStats::default());
    let metrics = Metrics::register(sources_metrics_registry, Arc::clone(&stats));
    let sources = match &mode {
        Mode::Files { .. } => {
            let watch = WatchOptions {
                debounce: args.debounce,
                ..WatchOptions::default()
            };
            file_sources(&mode, watch, &metrics)?
        }
        Mode::Kube { namespace } => kube_sources(namespace, &metrics).await?,
    };

    let with_pods = sources.pods.is_some();
    let pods = sources
        .pods
        .map(|rx| snapshot::spawn_pods_publisher(rx, stop.clone()));
    let pods_ready = pods.clone();
    let ready_health = health.clone();
    let (addresses, maas, flavors) = snapshot::spawn_config_publisher(
        sources.config,
        metrics.clone(),
        stop.clone(),
        move |state: &ConfigState| {
            let pods_synced = pods_ready.as_ref().is_none_or(|rx| rx.borrow().is_some());
            match (&state.config, pods_synced) {
                (Some(cfg), true) => ready_health.set_ready(format!(
                    "generation {} served ({} addresses)",
                    state.generation,
                    cfg.addresses.len()
                )),
                (None, _) if state.synced => {
                    ready_health.set_not_ready("no valid address configuration yet (see the logs)")
                }
                (None, _) => ready_health.set_not_ready("waiting for the first source sync"),
                (Some(_), false) => ready_health.set_not_ready("waiting for the first pod list"),
            }
        },
    );
    if let Some(pods_rx) = pods.clone() {
        // Readiness also flips when the pod list arrives after the configuration.
        let health = health.clone();
        let config = addresses.clone();
        let stop = stop.clone();
        let mut pods_rx = pods_rx;
        tokio::spawn(async move {
            loop {
                if pods_rx.borrow_and_update().is_some()
                    && config.borrow().is_some()
                    && !health.is_ready()
                {
                    health.set_ready("snapshots served");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = pods_rx.changed() => if r.is_err() { break },
                }
            }
        });
    }
    let snapshots = Snapshots {
        addresses,
        maas,
        flavors,
        pods,
    };
    let handler = serve::SnapshotHandler {
        snapshots,
        metrics: metrics.clone(),
        sends: serve::SendGate::new(args.max_concurrent_sends, args.send_timeout),
    };
    let server =
        maas_amqp::lean::LeanServer::bind_with_stats(args.listen, options, handler, stats).await?;
    let amqp_addr = server.local_addr();
    let http = HttpServer::bind(args.http_addr, health.clone(), Arc::new(registry))
        .await
        .map_err(|source| Error::Http {
            addr: args.http_addr,
            source,
        })?;
    let http_addr = http.local_addr();
    info!(%amqp_addr, %http_addr, pods = with_pods, "config-service started");

    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down: closing AMQP connections");
        trigger.cancel();
    });
    let amqp = tokio::spawn(server.serve(stop.clone().cancelled_owned()));
    let http = tokio::spawn(http.serve(stop.cancelled_owned()));
    Ok(Running {
        amqp_addr,
        http_addr,
        metrics,
        health,
        amqp,
        http,
    })
}

/// Runs the service until `shutdown` resolves; `Ok` after a clean stop.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    start(args, shutdown).await?.wait().await
}
