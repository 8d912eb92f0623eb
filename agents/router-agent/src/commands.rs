//! The three subcommands: `run`, `plan`, `validate`. Each returns a process exit code; configuration problems are
//! one clear line on stderr and a non-zero exit.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use maas_amqp::options::{Backoff, ConnectOptions, SaslOptions, Secret, TlsOptions};
use maas_amqp::router::{ClientConfig, RouterClient};
use maas_model::{Entity, EntityOptions, MeshInputs, MeshOptions, RouterMode, desired_entities};
use maas_ops::{Health, HttpServer};
use maas_source::WatchOptions;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::agent::{AgentConfig, Outcome, plan_against_router, run_agent};
use crate::args::{
    Cli, Command, MeshArgs, PlanArgs, RouterConnArgs, RouterModeArg, RunArgs, SaslMechanism,
    ShowArgs, SourceArgs, ValidateArgs,
};
use crate::desired::{
    BrokersInput, FileSources, Handover, Inputs, RoutersInput, load_once, spawn_desired_with,
    spawn_file_sources_with,
};
use crate::metrics::Metrics;

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
                Err(msg) => fail(&msg),
            }
        }
        Command::Plan(args) => match plan(args).await {
            Ok(code) => code,
            Err(msg) => fail(&msg),
        },
        Command::Validate(args) => validate(&args),
        Command::Show(args) => match show(args).await {
            Ok(code) => code,
            Err(msg) => fail(&msg),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("router-agent: {msg}");
    ExitCode::from(2)
}

/// Broker connector settings from the flags (the password read from its file).
pub fn entity_options(src: &SourceArgs) -> Result<EntityOptions, String> {
    if let Some(p) = &src.broker_password_file
        && !p.starts_with('/')
    {
        return Err(format!(
            "--broker-password-file {p:?}: must be an absolute path (of the password file as mounted in the router \
             container)"
        ));
    }
    Ok(EntityOptions {
        broker_sasl_mechanisms: src.broker_sasl_mechanisms.clone(),
        broker_username: src.broker_username.clone(),
        broker_password_file: src.broker_password_file.clone(),
        broker_ssl_profile: src.broker_ssl_profile.clone(),
        subctrl: src.subctrl,
    })
}

/// This router in the mesh, from the flags (the router pods themselves come from a source).
pub fn mesh_inputs(m: &MeshArgs) -> Result<MeshInputs, String> {
    if let Some(path) = &m.mesh_sasl_password_file
        && !path.starts_with('/')
    {
        return Err(format!(
            "--mesh-sasl-password-file {path:?}: must be an absolute path inside the router container"
        ));
    }
    if m.pod_name.is_none() && m.routers_file.is_some() {
        return Err(
            "--routers-file needs --pod-name (POD_NAME): without its own name the agent cannot tell which \
             connectors are its to make"
                .into(),
        );
    }
    Ok(MeshInputs {
        own: m.pod_name.clone(),
        mode: match m.router_mode {
            RouterModeArg::Interior => RouterMode::Interior,
            RouterModeArg::Edge => RouterMode::Edge,
        },
        routers: Vec::new(),
        options: MeshOptions {
            ssl_profile: m.mesh_ssl_profile.clone(),
            sasl_mechanisms: m.mesh_sasl_mechanisms.clone(),
            sasl_username: m.mesh_sasl_username.clone(),
            sasl_password_file: m.mesh_sasl_password_file.clone(),
        },
        current_uplink: None,
    })
}

fn routers_file_input(m: &MeshArgs, watch: WatchOptions) -> Result<Option<RoutersInput>, String> {
    match &m.routers_file {
        Some(p) => Ok(Some(RoutersInput::File {
            path: p.clone(),
            rx: maas_source::watch_file(p.clone(), watch)
                .map_err(|e| format!("--routers-file: {e}"))?,
        })),
        None => Ok(None),
    }
}

/// Connection options for the router from the URL and flags.
pub fn connect_options(url: &str, conn: &RouterConnArgs) -> Result<ConnectOptions, String> {
    let mut opts =
        ConnectOptions::from_url(url).map_err(|e| format!("--router-url {url:?}: {e}"))?;
    if conn.router_ca_file.is_some() || conn.router_cert_file.is_some() {
        let mut tls = opts.tls.clone().unwrap_or(TlsOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
        });
        tls.ca_file = conn.router_ca_file.clone().or(tls.ca_file);
        tls.cert_file = conn.router_cert_file.clone().or(tls.cert_file);
        tls.key_file = conn.router_key_file.clone().or(tls.key_file);
        opts.tls = Some(tls);
    }
    if let Some(user) = &conn.router_username {
        let password = match (&conn.router_password_file, &conn.router_password) {
            (Some(pw), _) => Secret::from_file(pw)
                .map_err(|e| format!("--router-password-file {}: {e}", pw.display()))?,
            (None, Some(pw)) => Secret::new(pw.clone()),
            (None, None) => {
                return Err(
                    "--router-username needs --router-password-file or ROUTER_PASSWORD".into(),
                );
            }
        };
        opts.sasl = SaslOptions::Plain {
            username: user.clone(),
            password,
        };
    }
    match conn.router_sasl_mechanism {
        None => {}
        Some(SaslMechanism::Anonymous) => {
            if matches!(opts.sasl, SaslOptions::Plain { .. }) {
                return Err("--router-sasl-mechanism ANONYMOUS takes no user name (drop --router-username or the user in --router-url)".into());
            }
            opts.sasl = SaslOptions::Anonymous;
        }
        Some(SaslMechanism::Plain) if !matches!(opts.sasl, SaslOptions::Plain { .. }) => {
            return Err(
                "--router-sasl-mechanism PLAIN needs --router-username (or a user in --router-url)"
                    .into(),
            );
        }
        Some(SaslMechanism::Plain) => {}
        Some(SaslMechanism::External) => {
            if matches!(opts.sasl, SaslOptions::Plain { .. }) {
                return Err("--router-sasl-mechanism EXTERNAL takes no user name (the client certificate is the identity; drop --router-username or the user in --router-url)".into());
            }
            let tls_complete = opts.tls.as_ref().is_some_and(|t| {
                t.ca_file.is_some() && t.cert_file.is_some() && t.key_file.is_some()
            });
            if !tls_complete {
                return Err("--router-sasl-mechanism EXTERNAL needs TLS with a client certificate: give --router-ca-file, --router-cert-file and --router-key-file".into());
            }
            opts.sasl = SaslOptions::External;
        }
    }
    Ok(opts)
}

fn client_config(conn: &RouterConnArgs) -> ClientConfig {
    ClientConfig {
        window: conn.window as usize,
        request_timeout: conn.request_timeout,
        max_consecutive_timeouts: conn.max_consecutive_timeouts,
        ..Default::default()
    }
}

async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<ExitCode, String> {
    let router = connect_options(&args.router_url, &args.conn)?;
    let entity_options = entity_options(&args.source)?;
    let mesh = mesh_inputs(&args.mesh)?;
    let (metrics, registry) = Metrics::new();
    let health = Health::new();
    health.set_not_ready("starting");
    let watch = WatchOptions {
        debounce: args.debounce,
        resync: args.resync_interval,
    };

    let desired_rx = if let Some(url) = &args.config_service_url {
        let connect = config_service_options(url, &args)?;
        let brokers_file = brokers_file_input(&args.source, watch)?;
        let pods_selector = brokers_file.is_none().then(|| {
            [(
                maas_model::pods::COMPONENT_LABEL.to_string(),
                maas_model::pods::BROKER_COMPONENT.to_string(),
            )]
            .into_iter()
            .collect()
        });
        let routers_file = routers_file_input(&args.mesh, watch)?;
        let want_routers = routers_file.is_none() && mesh.own.is_some();
        // Broker and router pods come from one podsense subscription: all pods when both are needed.
        let pods_selector = match (pods_selector, want_routers) {
            (Some(_), true) => Some(Default::default()),
            (None, true) => Some(
                [(
                    maas_model::pods::COMPONENT_LABEL.to_string(),
                    maas_model::mesh::ROUTER_COMPONENT.to_string(),
                )]
                .into_iter()
                .collect(),
            ),
            (selector, false) => selector,
        };
        let subscription = maas_source::ConfigSubscription {
            connect,
            backoff: Backoff::default(),
            pods_selector,
        };
        // Incremental mode (--config-delta, the default): a full snapshot, then only what changed.
        let (config_rx, pods_rx) = if args.config_delta {
            maas_source::sources::spawn_incremental_config_subscription(
                subscription,
                shutdown.clone(),
            )
        } else {
            maas_source::spawn_config_subscription(subscription, shutdown.clone())
        };
        let brokers = match (brokers_file, &pods_rx) {
            (Some(b), _) => b,
            (None, Some(rx)) => BrokersInput::Pods(rx.clone()),
            (None, None) => BrokersInput::None,
        };
        let handover = Handover::from_args(
            &args.handover,
            matches!(brokers, BrokersInput::File { .. }),
            watch,
        )?;
        let routers = match (routers_file, pods_rx) {
            (Some(r), _) => r,
            (None, Some(rx)) if want_routers => RoutersInput::Pods(rx),
            _ => RoutersInput::None,
        };
        spawn_desired_with(
            config_rx,
            Inputs {
                brokers,
                routers,
                entity_options,
                mesh,
            },
            handover,
            metrics.clone(),
        )
    } else if args.kube {
        let client = kube::Client::try_default().await.map_err(|e| {
            format!("--kube: no usable Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
        })?;
        let config_rx = maas_source::spawn_kube_config(
            client.clone(),
            maas_source::KubeConfigOptions::new(args.namespace.clone(), "maas-router-agent"),
        );
        let brokers_file = brokers_file_input(&args.source, watch)?;
        let routers_file = routers_file_input(&args.mesh, watch)?;
        // One pod watch serves both the broker and the router pods.
        let pods = (brokers_file.is_none() || (routers_file.is_none() && mesh.own.is_some()))
            .then(|| maas_source::spawn_kube_pods(client, args.namespace.clone()));
        let brokers = match (brokers_file, &pods) {
            (Some(b), _) => b,
            (None, Some(rx)) => BrokersInput::Pods(rx.clone()),
            (None, None) => BrokersInput::None,
        };
        let handover = Handover::from_args(
            &args.handover,
            matches!(brokers, BrokersInput::File { .. }),
            watch,
        )?;
        let routers = match (routers_file, pods) {
            (Some(r), _) => r,
            (None, Some(rx)) if mesh.own.is_some() => RoutersInput::Pods(rx),
            _ => RoutersInput::None,
        };
        spawn_desired_with(
            config_rx,
            Inputs {
                brokers,
                routers,
                entity_options,
                mesh,
            },
            handover,
            metrics.clone(),
        )
    } else {
        let Some(dir) = args.source.addresses_dir.clone() else {
            return Err(
                "no address source: give --addresses-dir DIR, --config-service-url URL or --kube"
                    .into(),
            );
        };
        if !dir.is_dir() {
            return Err(format!(
                "--addresses-dir {}: not a directory",
                dir.display()
            ));
        }
        let handover =
            Handover::from_args(&args.handover, args.source.brokers_file.is_some(), watch)?;
        spawn_file_sources_with(
            FileSources {
                addresses_dir: dir,
                flavors_file: args.source.flavors_file.clone(),
                brokers_file: args.source.brokers_file.clone(),
                routers_file: args.mesh.routers_file.clone(),
                entity_options,
                mesh,
                watch,
            },
            handover,
            metrics.clone(),
        )
        .map_err(|e| e.to_string())?
    };

    let http = HttpServer::bind(args.http_addr, health.clone(), registry)
        .await
        .map_err(|e| format!("--http-addr {}: {e}", args.http_addr))?;
    info!(addr = %http.local_addr(), "serving /healthz /readyz /metrics");
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(http.serve(async move { http_shutdown.cancelled().await }));

    let cfg = AgentConfig {
        router,
        client: client_config(&args.conn),
        drift_check_interval: args.drift_check_interval,
        backoff: Backoff::default(),
    };
    let outcome = run_agent(
        cfg,
        desired_rx,
        metrics,
        health,
        args.once,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http_task).await;
    match outcome {
        Outcome::Stopped => {
            info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Converged => {
            info!("router holds exactly the desired entities");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::NotConverged(reason) => {
            error!(%reason, "router did not converge");
            eprintln!("router-agent: router did not converge: {reason}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Connection options for the config-service.
fn config_service_options(url: &str, args: &RunArgs) -> Result<ConnectOptions, String> {
    let mut opts =
        ConnectOptions::from_url(url).map_err(|e| format!("--config-service-url {url:?}: {e}"))?;
    if let Some(ca) = &args.config_service_ca_file {
        let mut tls = opts.tls.clone().unwrap_or(TlsOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
        });
        tls.ca_file = Some(ca.clone());
        opts.tls = Some(tls);
    }
    if let (Some(user), Some(pw)) = (
        &args.config_service_username,
        &args.config_service_password_file,
    ) {
        let password = Secret::from_file(pw)
            .map_err(|e| format!("--config-service-password-file {}: {e}", pw.display()))?;
        opts.sasl = SaslOptions::Plain {
            username: user.clone(),
            password,
        };
    }
    Ok(opts)
}

/// The brokers file as a broker input, when given.
fn brokers_file_input(
    src: &SourceArgs,
    watch: WatchOptions,
) -> Result<Option<BrokersInput>, String> {
    match &src.brokers_file {
        Some(p) => Ok(Some(BrokersInput::File {
            path: p.clone(),
            rx: maas_source::watch_file(p.clone(), watch)
                .map_err(|e| format!("--brokers-file: {e}"))?,
        })),
        None => Ok(None),
    }
}

/// One line per entity: type, name, attributes (secrets redacted).
pub fn entity_line(e: &Entity) -> String {
    let e = e.redacted();
    let attrs: Vec<String> = e
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{:<10} {:<50} {}",
        e.entity_type.short_name(),
        e.name,
        attrs.join(" ")
    )
}

async fn plan(args: PlanArgs) -> Result<ExitCode, String> {
    let Some(dir) = args.source.addresses_dir.clone() else {
        return Err("plan needs --addresses-dir DIR".into());
    };
    let (config, brokers) = match load_once(
        &dir,
        args.source.flavors_file.as_deref(),
        args.source.brokers_file.as_deref(),
    ) {
        Ok(v) => v,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let opts = entity_options(&args.source)?;
    let desired = desired_entities(&config.addresses, &config.flavors, &brokers, &opts);
    println!(
        "# {} addresses -> {} router entities (generation hash {})",
        config.addresses.len(),
        desired.len(),
        desired.generation_hash()
    );
    for e in desired.iter() {
        println!("{}", entity_line(e));
    }
    if let Some(url) = &args.router_url {
        let copts = connect_options(url, &args.conn)?;
        let client = RouterClient::connect(&copts, client_config(&args.conn))
            .await
            .map_err(|e| format!("cannot connect to the router at {url}: {e}"))?;
        let (metrics, _) = Metrics::new();
        let plan = plan_against_router(&client, &desired, &metrics)
            .await
            .map_err(|e| format!("cannot read the router: {e}"))?;
        client.close().await;
        println!(
            "# operations against {url}: {} DELETE, {} CREATE",
            plan.deletes.len(),
            plan.creates.len()
        );
        for (t, name) in &plan.deletes {
            println!("DELETE {:<10} {name}", t.short_name());
        }
        for (t, name) in &plan.creates {
            if let Some(e) = desired.get(*t, name) {
                println!("CREATE {}", entity_line(e));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(args: &ValidateArgs) -> ExitCode {
    validate_paths(
        &args.dir,
        args.flavors_file.as_deref(),
        args.brokers_file.as_deref(),
    )
}

/// `validate`: 0 and a summary, or one line per problem and 1.
pub fn validate_paths(dir: &Path, flavors: Option<&Path>, brokers: Option<&Path>) -> ExitCode {
    match load_once(dir, flavors, brokers) {
        Ok((config, brokers)) => {
            let counts = config.addresses.count_by_kind();
            let summary: Vec<String> = counts
                .iter()
                .map(|(k, n)| format!("{n} {}", k.as_str()))
                .collect();
            println!(
                "ok: {} addresses ({}), {} flavors, {} broker clusters",
                config.addresses.len(),
                summary.join(", "),
                config.flavors.flavors.len(),
                brokers.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            ExitCode::from(1)
        }
    }
}

async fn show(args: ShowArgs) -> Result<ExitCode, String> {
    let copts = connect_options(&args.router_url, &args.conn)?;
    let client = RouterClient::connect(&copts, client_config(&args.conn))
        .await
        .map_err(|e| format!("cannot connect to the router at {}: {e}", args.router_url))?;
    println!("{:<10} {:<50} ATTRIBUTES", "TYPE", "NAME");
    let mut total = 0usize;
    for t in maas_model::EntityType::ALL {
        let rows = client
            .query(t.full_name(), crate::agent::query_attributes(t))
            .await
            .map_err(|e| format!("cannot read the router's {} entities: {e}", t.short_name()))?;
        for row in rows {
            let name = row
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            if args.maas_only && !name.starts_with(maas_model::entity::NAME_PREFIX) {
                continue;
            }
            let attrs: Vec<String> = row
                .iter()
                .filter(|(k, v)| k.as_str() != "name" && !v.is_null())
                .map(|(k, v)| {
                    if Entity::SECRET_ATTRIBUTES.contains(&k.as_str()) {
                        format!("{k}=***")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            println!("{:<10} {:<50} {}", t.short_name(), name, attrs.join(" "));
            total += 1;
        }
    }
    println!("# {total} entities");
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
