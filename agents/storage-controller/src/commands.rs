//! The subcommands: `run` and `render`. Each returns a process exit code; configuration problems are one clear line
//! on stderr and a non-zero exit.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use maas_amqp::artemis::ClientConfig;
use maas_amqp::options::{Backoff, ConnectOptions};
use maas_ops::{Health, HttpServer};
use maas_source::WatchOptions;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::args::{BrokerConnArgs, Cli, Command, RenderArgs, RunArgs};
use crate::artemis::ArtemisConnector;
use crate::broker::Provisioner;
use crate::clusters::{ClusterOptions, desired_clusters, manifests};
use crate::controller::{LoopConfig, Outcome, run_loop};
use crate::kube::KubeCtx;
use crate::metrics::Metrics;
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
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Render(args) => match render(&args) {
            Ok(n) => {
                println!("wrote {n} manifest(s) to {}", args.out.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("storage-controller: {msg}");
    ExitCode::from(2)
}

/// Connection settings for broker management from the flags (host/port are per pod).
pub fn broker_connect_template(b: &BrokerConnArgs) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new("127.0.0.1", maas_amqp::options::AMQP_PORT);
    maas_amqp::options::BrokerLogin {
        mechanism: b.broker_sasl_mechanisms.as_deref(),
        username: b.broker_username.as_deref(),
        password_file: b.broker_password_file.as_deref(),
        ca_file: b.broker_ca_file.as_deref(),
        ..Default::default()
    }
    .apply(&mut opts)
    .map_err(Error::Config)?;
    Ok(opts)
}

/// The Artemis connector of the flags.
pub fn connector(b: &BrokerConnArgs) -> Result<ArtemisConnector> {
    Ok(ArtemisConnector {
        template: broker_connect_template(b)?,
        client: ClientConfig {
            window: b.broker_window as usize,
            request_timeout: b.broker_request_timeout,
            ..Default::default()
        },
    })
}

/// The Kubernetes context of `--kube` mode: `opts` for every object, and with `owner_configmap` that ConfigMap
/// (its uid read from the API, one GET) as owner of every StatefulSet and Service.
pub async fn kube_context(
    client: ::kube::Client,
    opts: ClusterOptions,
    owner_configmap: Option<&str>,
    metrics: Metrics,
) -> Result<KubeCtx> {
    let mut ctx = KubeCtx::new(client, opts, metrics);
    if let Some(cm) = owner_configmap {
        ctx.opts.owner = Some(ctx.configmap_owner(cm).await?);
    }
    Ok(ctx)
}

async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<ExitCode> {
    if !args.kube && args.brokers_file.is_none() {
        return Err(Error::Config(
            "no broker source: give --kube (clusters and pods through the Kubernetes API) or --brokers-file FILE"
                .into(),
        ));
    }
    if !args.kube && args.addresses_dir.is_none() && args.config_service_url.is_none() {
        return Err(Error::Config(
            "no address source: give --addresses-dir DIR, --config-service-url URL or --kube"
                .into(),
        ));
    }
    let connector = connector(&args.broker)?;
    let (metrics, registry) = Metrics::new();
    let health = Health::new();
    let watch_opts = WatchOptions {
        debounce: args.debounce,
        resync: args.resync_interval,
    };

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
            reporter: "maas-storage-controller",
        },
        watch_opts,
        shutdown.clone(),
    )
    .await
    .map_err(Error::Config)?;

    let kube_ctx = match &client {
        Some(client) => Some(KubeCtx {
            await_topic_release: args.await_topic_release,
            ..kube_context(
                client.clone(),
                ClusterOptions {
                    namespace: args.namespace.clone(),
                    broker_secret: args.broker_secret.clone(),
                    owner: None,
                    broker_run_as_user: args.broker_run_as_user,
                },
                args.owner_configmap.as_deref(),
                metrics.clone(),
            )
            .await?
        }),
        None => None,
    };

    let http = HttpServer::bind(args.http_addr, health.clone(), registry)
        .await
        .map_err(|e| Error::Config(format!("--http-addr {}: {e}", args.http_addr)))?;
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(http.serve(async move { http_shutdown.cancelled().await }));

    let prov = Provisioner::new(connector, metrics, args.broker.broker_window as usize)
        .with_topic_handover(args.await_topic_release);
    let outcome = run_loop(
        config_rx,
        brokers,
        prov,
        kube_ctx,
        health,
        LoopConfig {
            resync: args.resync_interval,
            retry: args.retry_interval,
            backoff: Backoff::default(),
            once: args.once,
            drain_grace: args.drain_grace,
        },
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http_task).await;
    Ok(match outcome {
        Outcome::Stopped => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Outcome::Converged => {
            info!("every broker holds exactly what it should");
            ExitCode::SUCCESS
        }
        Outcome::NotConverged(reason) => {
            error!(%reason, "brokers did not converge");
            eprintln!("storage-controller: brokers did not converge: {reason}");
            ExitCode::from(1)
        }
    })
}

/// Write the manifests for an address directory to `args.out`; the number of files written.
pub fn render(args: &RenderArgs) -> Result<usize> {
    let config = maas_source::load_file_config(&args.addresses_dir, args.flavors_file.as_deref())
        .map_err(|errors| Error::Config(errors.join("\n")))?;
    let (clusters, problems) = desired_clusters(&config);
    for p in problems {
        eprintln!("warning: {p}");
    }
    let opts = ClusterOptions {
        namespace: args.namespace.clone(),
        broker_secret: args.broker_secret.clone(),
        owner: None,
        broker_run_as_user: args.broker_run_as_user,
    };
    write_manifests(&args.out, &manifests(&clusters, &opts))
}

/// Write each (file, object) as one YAML document; files of earlier renders that are no longer produced are
/// removed (only `*-service.yaml` / `*-statefulset.yaml` / `*-pdb.yaml`).
pub fn write_manifests(out: &Path, files: &[(String, serde_json::Value)]) -> Result<usize> {
    let io = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let keep: std::collections::BTreeSet<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.ends_with("-service.yaml")
                || name.ends_with("-statefulset.yaml")
                || name.ends_with("-pdb.yaml"))
                && !keep.contains(name.as_str())
            {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
    }
    for (file, value) in files {
        let path = out.join(file);
        let text = serde_yaml::to_string(value)
            .map_err(|e| Error::Config(format!("cannot render {file}: {e}")))?;
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    Ok(files.len())
}
