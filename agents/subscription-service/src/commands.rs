//! `subscription-service run`: configuration checked first (one clear line and exit 2 when unusable), then the
//! sources, the HTTP server, the `$subctrl` task and the loop.

use std::future::Future;
use std::process::ExitCode;

use maas_amqp::artemis::ClientConfig;
use maas_amqp::options::{Backoff, ConnectOptions, SaslOptions, Secret};
use maas_ops::{Health, HttpServer};
use maas_source::WatchOptions;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::args::{BrokerConnArgs, Cli, Command, RouterConnArgs, RunArgs};
use crate::broker::BrokerPool;
use crate::configmap_store::ConfigMapStore;
use crate::handover::HandoverBook;
use crate::metrics::Metrics;
use crate::mover::MoveConfig;
use crate::release::{KubePods, Releaser};
use crate::service::{Handover, LoopConfig, Outcome, RouterSource, run_loop};
use crate::store::{FileStore, Store};
use crate::subctrl_link::SubctrlConfig;
use crate::{Error, Result};

/// Run the command; `shutdown` resolves on SIGTERM/SIGINT (tests pass their own future).
pub async fn main_with(cli: Cli, shutdown: impl Future<Output = ()> + Send + 'static) -> ExitCode {
    maas_amqp::options::install_crypto_provider();
    match cli.command {
        Command::Run(args) => {
            let token = CancellationToken::new();
            let t = token.clone();
            tokio::spawn(async move {
                shutdown.await;
                t.cancel();
            });
            match run(*args, token).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("subscription-service: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Connection settings for the brokers from the flags (host/port are per pod).
pub fn broker_connect_template(b: &BrokerConnArgs) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new("127.0.0.1", maas_amqp::options::AMQP_PORT);
    opts.container_id = format!("maas-subscription-service-{}", std::process::id());
    maas_amqp::options::BrokerLogin {
        mechanism: b.broker_sasl_mechanisms.as_deref(),
        username: b.broker_username.as_deref(),
        password_file: b.broker_password_file.as_deref(),
        ca_file: b.broker_ca_file.as_deref(),
        cert_file: b.broker_cert_file.as_deref(),
        key_file: b.broker_key_file.as_deref(),
    }
    .apply(&mut opts)
    .map_err(Error::Config)?;
    Ok(opts)
}

/// Connection settings for the router (`$subctrl`).
pub fn router_connect(r: &RouterConnArgs, url: &str) -> Result<ConnectOptions> {
    let mut opts =
        ConnectOptions::from_url(url).map_err(|e| Error::Config(format!("--router-url: {e}")))?;
    opts.container_id = format!("maas-subscription-service-subctrl-{}", std::process::id());
    if let Some(pw) = &r.router_password_file {
        let SaslOptions::Plain { password, .. } = &mut opts.sasl else {
            return Err(Error::Config(
                "--router-password-file needs a user in --router-url (amqp://user@host:port)"
                    .into(),
            ));
        };
        *password = Secret::from_file(pw)
            .map_err(|e| Error::Config(format!("--router-password-file {}: {e}", pw.display())))?;
    }
    if let Some(ca) = &r.router_ca_file {
        match opts.tls.as_mut() {
            Some(tls) => tls.ca_file = Some(ca.clone()),
            None => {
                return Err(Error::Config(
                    "--router-ca-file needs an amqps:// --router-url".into(),
                ));
            }
        }
    }
    Ok(opts)
}

/// The `$subctrl` file, checked: its directory exists and what it holds reads.
fn file_store(file: std::path::PathBuf) -> Result<FileStore> {
    if file
        .parent()
        .is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir())
    {
        return Err(Error::Config(format!(
            "--subscriptions-file {}: its directory does not exist",
            file.display()
        )));
    }
    let store = FileStore::new(file);
    store
        .load()
        .map_err(|e| Error::Config(format!("--subscriptions-file {e}")))?;
    Ok(store)
}

/// The `run` subcommand: configuration checks, sources, HTTP, `$subctrl`, the loop.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<ExitCode> {
    if !args.kube && args.brokers_file.is_none() {
        return Err(Error::Config(
            "no broker source: give --kube (broker pods from the Kubernetes API) or --brokers-file FILE".into(),
        ));
    }
    if !args.kube && args.addresses_dir.is_none() && args.config_service_url.is_none() {
        return Err(Error::Config(
            "no address source: give --addresses-dir DIR, --config-service-url URL or --kube"
                .into(),
        ));
    }
    if let Some(dir) = &args.addresses_dir
        && !dir.is_dir()
    {
        return Err(Error::Config(format!(
            "--addresses-dir {}: not a directory",
            dir.display()
        )));
    }
    if let Some(path) = &args.brokers_file
        && !path.is_file()
    {
        return Err(Error::Config(format!(
            "--brokers-file {}: no such file",
            path.display()
        )));
    }
    if let Some(path) = &args.routers_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("--routers-file {}: {e}", path.display())))?;
        if let Err(errors) =
            maas_model::mesh::parse_router_names(&path.display().to_string(), &text)
        {
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            return Err(Error::Config(format!("--routers-file {first}")));
        }
    }
    let template = broker_connect_template(&args.broker)?;
    let subctrl = match &args.router.router_url {
        Some(url) => {
            let connect = router_connect(&args.router, url)?;
            let store = match (&args.router.subscriptions_file, &args.addresses_dir) {
                (Some(f), _) => Some(file_store(f.clone())?),
                (None, Some(dir)) => Some(file_store(dir.join("subscriptions.json"))?),
                // The ConfigMap, once the API client is there (below).
                (None, None) if args.kube => None,
                (None, None) => {
                    return Err(Error::Config(
                        "--router-url without --addresses-dir needs --subscriptions-file FILE or --kube (where $subctrl keeps its subscriptions)"
                            .into(),
                    ));
                }
            };
            Some((connect, store))
        }
        None => None,
    };
    let (metrics, registry) = Metrics::new();
    let health = Health::new();
    let watch_opts = WatchOptions {
        debounce: args.debounce,
        resync: std::time::Duration::from_secs(30),
    };

    if let Some(file) = &args.handover_file
        && file
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir())
    {
        return Err(Error::Config(format!(
            "--handover-file {}: its directory does not exist",
            file.display()
        )));
    }
    let maas_source::Sources {
        client,
        config: config_rx,
        brokers,
    } = maas_source::spawn_sources(
        maas_source::SourceFlags {
            kube: args.kube,
            addresses_dir: args.addresses_dir.as_deref(),
            flavors_file: args.flavors_file.as_deref(),
            config_service_url: args.config_service_url.as_deref(),
            brokers_file: args.brokers_file.as_deref(),
            namespace: &args.namespace,
            reporter: "maas-subscription-service",
        },
        watch_opts,
        shutdown.clone(),
    )
    .await
    .map_err(Error::Config)?;

    // The router ids for the merges: --routers-file, else the router pods beside the broker pods (--kube), else
    // config-service `podsense` (its own subscription: the address one asks for no pods).
    let routers = match (&args.routers_file, &brokers, &args.config_service_url) {
        (Some(path), _, _) => RouterSource::File {
            path: path.display().to_string(),
            rx: maas_source::watch_file(path.clone(), watch_opts)
                .map_err(|e| Error::Config(format!("--routers-file: {e}")))?,
        },
        (None, maas_source::BrokerSource::Pods(_), _) => RouterSource::BrokerPods,
        (None, _, Some(url)) => {
            let connect = ConnectOptions::from_url(url)
                .map_err(|e| Error::Config(format!("--config-service-url {url:?}: {e}")))?;
            let (_, pods) = maas_source::spawn_config_subscription(
                maas_source::ConfigSubscription {
                    connect,
                    backoff: Backoff::default(),
                    pods_selector: Some(
                        [(
                            maas_model::pods::COMPONENT_LABEL.to_string(),
                            maas_model::mesh::ROUTER_COMPONENT.to_string(),
                        )]
                        .into(),
                    ),
                },
                shutdown.clone(),
            );
            pods.map_or(RouterSource::None, RouterSource::Podsense)
        }
        (None, _, None) => RouterSource::None,
    };

    let http = HttpServer::bind(args.http_addr, health.clone(), registry)
        .await
        .map_err(|e| Error::Config(format!("--http-addr {}: {e}", args.http_addr)))?;
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(http.serve(async move { http_shutdown.cancelled().await }));

    // `$subctrl`'s store: the file, or (--kube without a file) the ConfigMap this service owns.
    let subctrl = match subctrl {
        Some((connect, store)) => {
            let store = match (store, &client) {
                (Some(file), _) => Store::File(file),
                (None, Some(client)) => Store::ConfigMap(ConfigMapStore {
                    client: client.clone(),
                    namespace: args.namespace.clone(),
                    name: args.router.subscriptions_configmap.clone(),
                    timeout: args.broker.broker_request_timeout,
                }),
                (None, None) => {
                    return Err(Error::Config(
                        "--router-url: no store for $subctrl's subscriptions (give --subscriptions-file FILE)".into(),
                    ));
                }
            };
            Some(SubctrlConfig {
                connect,
                store,
                timeout: args.broker.broker_request_timeout,
                backoff: Backoff::default(),
                addresses_dir: args.addresses_dir.clone(),
            })
        }
        None => None,
    };
    let subctrl_task = subctrl.map(|cfg| {
        crate::subctrl_link::spawn(cfg, config_rx.clone(), metrics.clone(), shutdown.clone())
    });

    let pool = BrokerPool::new(
        template,
        ClientConfig {
            request_timeout: args.broker.broker_request_timeout,
            ..Default::default()
        },
        metrics.clone(),
    );
    // Releases go to the broker pods' annotation when the pods come from the API, and to --handover-file.
    let kube_pods = match (&brokers, client) {
        (maas_source::BrokerSource::Pods(_), Some(client)) => Some(KubePods {
            client: client.clone(),
            namespace: args.namespace.clone(),
            timeout: args.broker.broker_request_timeout,
        }),
        _ => None,
    };
    let handover = Handover {
        book: HandoverBook::new(args.handover_grace),
        releaser: Releaser::new(args.handover_file.clone(), kube_pods),
    };
    let outcome = run_loop(
        config_rx,
        brokers,
        routers,
        pool,
        handover,
        health,
        metrics,
        LoopConfig {
            interval: args.interval,
            parallel: args.parallel_moves as usize,
            once: args.once,
            moves: MoveConfig {
                window: args.move_window as usize,
                drain_wait: args.drain_wait,
                timeout: args.broker.broker_request_timeout,
                ..MoveConfig::default()
            },
        },
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let limit = std::time::Duration::from_secs(2);
    let _ = tokio::time::timeout(limit, http_task).await;
    if let Some(t) = subctrl_task {
        let _ = tokio::time::timeout(limit, t).await;
    }
    Ok(match outcome {
        Outcome::Stopped => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Outcome::Settled => {
            info!("every durable subscription sits on its topic's pod");
            ExitCode::SUCCESS
        }
        Outcome::NotSettled(reason) => {
            error!(%reason, "durable subscriptions not settled");
            eprintln!(
                "subscription-service: not every durable subscription is on its topic's pod: {reason}"
            );
            ExitCode::from(1)
        }
    })
}
