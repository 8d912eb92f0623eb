//! Command line of `router-agent` (docs/architecture.md §7). Every flag has an environment variable; the doc comments are
//! the `--help` text. Configuration is checked here, before any task starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// router-agent: keeps a qdrouterd's `maas-` entities (addresses, autoLinks, linkRoutes, broker connectors) equal
/// to an address ConfigMap, over AMQP management, without restarting the router.
#[derive(Debug, Parser)]
#[command(name = "router-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile the router continuously (or once with --once) from an address directory, a config-service or the
    /// Kubernetes API.
    Run(Box<RunArgs>),
    /// Print the entities the addresses map to; with --router-url also the DELETE/CREATE it would send. Changes nothing.
    Plan(PlanArgs),
    /// Check an address directory (and flavors); exit 0, or print one line per problem and exit 1.
    Validate(ValidateArgs),
    /// Print the router's entities of the types maas manages as a table (read-only; `maas-` ones and others).
    Show(ShowArgs),
}

/// Where the addresses come from, and what shapes the entities.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Directory holding the address ConfigMap (as mounted by the kubelet, or plain files): key `json` (2016
    /// format), `*.json` / `*.yaml` (typed Address documents), optionally `flavor.json`.
    #[arg(long, env = "ADDRESSES_DIR")]
    pub addresses_dir: Option<PathBuf>,

    /// Flavor file (JSON map name -> flavor). Default: the `flavor.json` key of the addresses directory.
    #[arg(long, env = "FLAVORS_FILE")]
    pub flavors_file: Option<PathBuf>,

    /// Broker pods per cluster, JSON `{"<cluster>": [{"name": "broker-0", "host": "10.0.0.7", "port": 5672}]}`;
    /// re-read when it changes. Without it queues get only their router address and no broker links.
    #[arg(long, env = "BROKERS_FILE")]
    pub brokers_file: Option<PathBuf>,

    /// `saslMechanisms` of the router's connectors to broker pods (e.g. PLAIN).
    #[arg(long, env = "BROKER_SASL_MECHANISMS")]
    pub broker_sasl_mechanisms: Option<String>,

    /// `saslUsername` of the router's connectors to broker pods.
    #[arg(long, env = "BROKER_USERNAME")]
    pub broker_username: Option<String>,

    /// Absolute path of the broker password file AS MOUNTED IN THE ROUTER CONTAINER: broker connectors get
    /// `saslPassword: file:<path>` and the router reads it. The agent never reads it, so the password appears in no
    /// entity that `$management` clients can QUERY, no log, no `plan`/`show` output.
    #[arg(long, env = "BROKER_PASSWORD_FILE")]
    pub broker_password_file: Option<String>,

    /// `sslProfile` (defined in the router's static configuration) for connectors to broker pods using TLS.
    #[arg(long, env = "BROKER_SSL_PROFILE")]
    pub broker_ssl_profile: Option<String>,

    /// Route `$subctrl`, the subscription-service's API (subscribe/unsubscribe/list/close by message): the router
    /// gets the address `maas-address/$subctrl` (balanced). Set it when subscription-service runs with
    /// --router-url.
    #[arg(long, env = "SUBCTRL", default_value_t = false)]
    pub subctrl: bool,
}

/// This router in the router network (mesh). Without `--pod-name` the agent makes no mesh connectors.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// This router's pod name (from the downward API: `metadata.name`). The agent keeps one `inter-router`
    /// connector `maas-router-<pod>` to every interior router pod whose name sorts lower than this one (each pair
    /// is dialled once, by the higher name); an edge router keeps one `edge` connector to one interior pod.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// How this router runs (its qdrouterd.conf `mode`): `interior` (part of the mesh) or `edge` (attached to one
    /// interior router, chosen by a rendezvous hash of this pod's name over the interior pods).
    #[arg(
        long,
        env = "ROUTER_MODE",
        value_enum,
        ignore_case = true,
        default_value = "interior"
    )]
    pub router_mode: RouterModeArg,

    /// Interior router pods, JSON `[{"name": "router-0", "host": "10.1.2.3", "port": 55672, "edgePort": 45672}]`
    /// (`port`: the inter-router listener; `edgePort`: the edge listener); re-read when it changes, this pod's own
    /// entry ignored. Without it, with --kube or --config-service-url, router pods come from the pods labelled
    /// app.kubernetes.io/component=router with a port named inter-router.
    #[arg(long, env = "ROUTERS_FILE")]
    pub routers_file: Option<PathBuf>,

    /// `sslProfile` (defined in the router's static configuration) of the connectors to other routers (TLS).
    #[arg(long, env = "MESH_SSL_PROFILE")]
    pub mesh_ssl_profile: Option<String>,

    /// `saslMechanisms` of the connectors to other routers (EXTERNAL with TLS client certificates, or PLAIN).
    #[arg(long, env = "MESH_SASL_MECHANISMS")]
    pub mesh_sasl_mechanisms: Option<String>,

    /// `saslUsername` of the connectors to other routers (PLAIN).
    #[arg(long, env = "MESH_SASL_USERNAME")]
    pub mesh_sasl_username: Option<String>,

    /// Absolute path of the inter-router password file AS MOUNTED IN THE ROUTER CONTAINER: connectors get
    /// `saslPassword: file:<path>` and the router reads it; the password never passes through the agent.
    #[arg(long, env = "MESH_SASL_PASSWORD_FILE")]
    pub mesh_sasl_password_file: Option<String>,
}

/// The topic hand-over with subscription-service (docs/architecture.md §5).
#[derive(Debug, Clone, Args)]
pub struct HandoverArgs {
    /// A draining broker pod keeps the linkRoutes of its topics (and of their subscriptions) until
    /// subscription-service has moved every durable subscription of those topics, with their messages, to the
    /// topics' new pods and RELEASED the pod (annotation maas.io/topics-released=true on the pod, or
    /// --handover-file), or until the pod is gone from the pod list. Without it a topic's links leave its pod as
    /// soon as the pod drains, before its subscriptions have moved. Only with subscription-service running:
    /// nothing else releases a pod, so a draining pod would keep its topics until it is removed.
    #[arg(long, env = "TOPIC_HANDOVER", default_value_t = false)]
    pub topic_handover: bool,

    /// File mode: the broker pods subscription-service has released, JSON {"released": ["broker-0"]}, as
    /// `subscription-service --handover-file` writes it; re-read when it changes (created empty when missing).
    /// With --brokers-file, --topic-handover needs it (without it no release can reach the agent and the hand-over
    /// stays off, with a warning).
    #[arg(long, env = "HANDOVER_FILE", requires = "topic_handover")]
    pub handover_file: Option<PathBuf>,
}

/// `--router-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouterModeArg {
    /// Part of the mesh.
    Interior,
    /// Attached to one interior router.
    Edge,
}

/// How to reach the router's `$management`.
#[derive(Debug, Clone, Args)]
pub struct RouterConnArgs {
    /// CA certificate file (PEM) to verify the router's TLS certificate; implies TLS.
    #[arg(long, env = "ROUTER_CA_FILE")]
    pub router_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) presented to the router (TLS).
    #[arg(long, env = "ROUTER_CERT_FILE", requires = "router_key_file")]
    pub router_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --router-cert-file.
    #[arg(long, env = "ROUTER_KEY_FILE", requires = "router_cert_file")]
    pub router_key_file: Option<PathBuf>,

    /// SASL PLAIN user name for the router (default: ANONYMOUS).
    #[arg(long, env = "ROUTER_USERNAME")]
    pub router_username: Option<String>,

    /// SASL mechanism for the router. Default: PLAIN when a user name is given (--router-username or in
    /// --router-url), else ANONYMOUS. EXTERNAL authenticates with the TLS client certificate and needs
    /// --router-ca-file, --router-cert-file and --router-key-file (and no user name).
    #[arg(long, env = "ROUTER_SASL_MECHANISM", value_enum, ignore_case = true)]
    pub router_sasl_mechanism: Option<SaslMechanism>,

    /// File holding the SASL PLAIN password for the router (never logged).
    #[arg(
        long,
        env = "ROUTER_PASSWORD_FILE",
        requires = "router_username",
        conflicts_with = "router_password"
    )]
    pub router_password_file: Option<PathBuf>,

    /// The SASL PLAIN password for the router, from the environment only (e.g. a Secret as env var; its value is
    /// never shown by --help nor logged). Prefer --router-password-file.
    #[arg(
        long,
        env = "ROUTER_PASSWORD",
        hide_env_values = true,
        requires = "router_username"
    )]
    pub router_password: Option<String>,

    /// Management requests in flight at once (pipeline window). The router grants 250 credits.
    #[arg(long, env = "MGMT_WINDOW", default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: u32,

    /// Time to wait for each management reply (e.g. 10s, 500ms). A request without a reply in time fails alone
    /// and is retried; the connection stays (a QUERY page is asked again with twice the timeout, up to 3 times).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Drop the connection and reconnect after this many requests in a row time out with no reply at all in
    /// between (the router stopped answering).
    #[arg(long, env = "MAX_CONSECUTIVE_TIMEOUTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_consecutive_timeouts: u32,
}

/// A SASL mechanism the agent can use towards the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SaslMechanism {
    /// No credentials (`authenticatePeer: no` listeners).
    Anonymous,
    /// User name and password.
    Plain,
    /// The TLS client certificate is the identity.
    External,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The router's AMQP URL: amqp://host:port (amqps:// for TLS; amqp://user@host with --router-password-file).
    #[arg(long, env = "ROUTER_URL", default_value = "amqp://127.0.0.1:5672")]
    pub router_url: String,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub conn: RouterConnArgs,

    #[command(flatten)]
    pub mesh: MeshArgs,

    #[command(flatten)]
    pub handover: HandoverArgs,

    /// Subscribe to a config-service (amqp://host:port) for addresses and flavors instead of a directory; broker
    /// pods come from its `podsense` source unless --brokers-file is given. Reconnects with backoff.
    #[arg(long, env = "CONFIG_SERVICE_URL", conflicts_with_all = ["addresses_dir", "kube"])]
    pub config_service_url: Option<String>,

    /// SASL PLAIN user for the config-service (default: ANONYMOUS).
    #[arg(
        long,
        env = "CONFIG_SERVICE_USERNAME",
        requires = "config_service_password_file"
    )]
    pub config_service_username: Option<String>,

    /// File holding the config-service SASL PLAIN password.
    #[arg(
        long,
        env = "CONFIG_SERVICE_PASSWORD_FILE",
        requires = "config_service_username"
    )]
    pub config_service_password_file: Option<PathBuf>,

    /// CA certificate (PEM) to verify the config-service's TLS certificate (with an amqps:// URL).
    #[arg(long, env = "CONFIG_SERVICE_CA_FILE")]
    pub config_service_ca_file: Option<PathBuf>,

    /// Subscribe to the config-service's addresses in incremental mode (true, the default) or take a full snapshot
    /// per change (false). Incremental: a full snapshot on connect, then only the addresses that changed; the
    /// agent applies each change to the set it holds and generates only the touched addresses' entities, instead
    /// of parsing the whole set again (less memory and CPU per change with large sets). A config-service without
    /// incremental mode just keeps sending full snapshots, so false is only needed to compare the two.
    #[arg(long, env = "CONFIG_DELTA", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub config_delta: bool,

    /// Watch address ConfigMaps (label type=address-config), the `flavor` ConfigMap and broker pods through the
    /// Kubernetes API (in-cluster config or KUBECONFIG) instead of a directory.
    #[arg(
        long,
        env = "KUBE",
        default_value_t = false,
        conflicts_with = "addresses_dir"
    )]
    pub kube: bool,

    /// Namespace of the ConfigMaps and pods in --kube mode.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Reconcile a single time, verify, and exit 0 when the router holds exactly the desired `maas-` entities.
    #[arg(long, env = "ONCE", default_value_t = false)]
    pub once: bool,

    /// How often the whole router is re-read in the background to repair drift (entities changed by hand).
    /// Reading the whole router is expensive (roughly quadratic in its size), so this is paced; 0s disables it.
    #[arg(long, env = "DRIFT_CHECK_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub drift_check_interval: Duration,

    /// Debounce of directory events (the kubelet writes a ConfigMap in several steps).
    #[arg(long, env = "DEBOUNCE", default_value = "200ms", value_parser = parse_duration)]
    pub debounce: Duration,

    /// Re-read the address directory this often even without events (safety net).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Also connect to this router and print the operations that would bring it to the desired state.
    #[arg(long, env = "ROUTER_URL")]
    pub router_url: Option<String>,

    #[command(flatten)]
    pub conn: RouterConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// The address directory to check.
    pub dir: PathBuf,

    /// Flavor file (default: `flavor.json` in DIR).
    #[arg(long, env = "FLAVORS_FILE")]
    pub flavors_file: Option<PathBuf>,

    /// Brokers file to check as well.
    #[arg(long, env = "BROKERS_FILE")]
    pub brokers_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The router's AMQP URL.
    #[arg(long, env = "ROUTER_URL", default_value = "amqp://127.0.0.1:5672")]
    pub router_url: String,

    #[command(flatten)]
    pub conn: RouterConnArgs,

    /// Only entities whose name starts with `maas-`.
    #[arg(long, default_value_t = false)]
    pub maas_only: bool,
}

pub use maas_ops::parse_duration;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_delta_is_on_by_default_and_can_be_turned_off() {
        let delta = |extra: &[&str]| {
            let mut argv = vec![
                "router-agent",
                "run",
                "--config-service-url",
                "amqp://127.0.0.1:5672",
            ];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(run) => run.config_delta,
                _ => unreachable!(),
            }
        };
        assert!(delta(&[]));
        assert!(delta(&["--config-delta", "true"]));
        assert!(!delta(&["--config-delta", "false"]));
    }

    /// The router connection options `router-agent show` would use with these extra arguments.
    fn show_sasl(args: &[&str]) -> Result<maas_amqp::SaslOptions, String> {
        let mut argv = vec!["router-agent", "show", "--router-url", "amqps://127.0.0.1"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Show(show) = cli.command else {
            unreachable!()
        };
        crate::commands::connect_options(&show.router_url, &show.conn).map(|o| o.sasl)
    }

    #[test]
    fn sasl_mechanism_defaults_and_choices() {
        use maas_amqp::SaslOptions;
        assert_eq!(show_sasl(&[]).unwrap(), SaslOptions::Anonymous);
        let tls = [
            "--router-ca-file",
            "ca.crt",
            "--router-cert-file",
            "c.crt",
            "--router-key-file",
            "c.key",
        ];
        let mut external = tls.to_vec();
        external.extend(["--router-sasl-mechanism", "external"]);
        assert_eq!(show_sasl(&external).unwrap(), SaslOptions::External);
        // A client certificate alone does not switch the mechanism.
        assert_eq!(show_sasl(&tls).unwrap(), SaslOptions::Anonymous);
        assert_eq!(
            show_sasl(&["--router-sasl-mechanism", "ANONYMOUS"]).unwrap(),
            SaslOptions::Anonymous
        );
        let err = show_sasl(&["--router-sasl-mechanism", "EXTERNAL"]).unwrap_err();
        assert!(
            err.contains("--router-cert-file and --router-key-file") && !err.contains('\n'),
            "{err}"
        );
        let err = show_sasl(&[
            "--router-sasl-mechanism",
            "EXTERNAL",
            "--router-ca-file",
            "ca",
        ])
        .unwrap_err();
        assert!(err.contains("--router-cert-file"), "{err}");
        let err = show_sasl(&["--router-sasl-mechanism", "PLAIN"]).unwrap_err();
        assert!(err.contains("--router-username"), "{err}");
        let mut with_user = external.clone();
        with_user.extend(["--router-username", "u", "--router-password", "p"]);
        let err = show_sasl(&with_user).unwrap_err();
        assert!(err.contains("takes no user name"), "{err}");
        let err = show_sasl(&["--router-sasl-mechanism", "GSSAPI"]).unwrap_err();
        assert!(err.contains("EXTERNAL"), "{err}");
    }
}
