//! Command line of `subscription-service` (docs/architecture.md §5, §7). Every flag has an environment variable;
//! the doc comments are the `--help` text. Configuration is checked before any task starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use maas_ops::parse_duration;

/// subscription-service: keeps every durable subscription queue (configured `subscription` addresses and
/// subscriptions made by AMQP clients) on the broker pod its topic lives on, moving the queue and its messages when
/// that pod changes, and serves the `$subctrl` subscription API.
#[derive(Debug, Parser)]
#[command(name = "subscription-service", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run continuously (or once with --once): every --interval and on every change of the addresses or broker
    /// pods, list the durable subscription queues of every topic on every pod of its cluster and move those that
    /// are not on the topic's pod (queue first, then the messages, at least once), then delete the old queue; on
    /// the topic's pod, merge the queues one client made through different routers into one.
    Run(Box<RunArgs>),
}

/// Broker connection settings, for Artemis management and for moving messages (the user needs Artemis' `manage`
/// role, and `consume`/`send` on the subscription queues).
#[derive(Debug, Clone, Args)]
pub struct BrokerConnArgs {
    /// SASL user for the broker connections (default: ANONYMOUS).
    #[arg(long, env = "BROKER_USERNAME", requires = "broker_password_file")]
    pub broker_username: Option<String>,

    /// File holding the broker user's password (never logged).
    #[arg(long, env = "BROKER_PASSWORD_FILE", requires = "broker_username")]
    pub broker_password_file: Option<PathBuf>,

    /// SASL mechanisms for the broker connections: PLAIN (default with a user), ANONYMOUS, or EXTERNAL (the TLS
    /// client certificate is the identity; needs --broker-ca-file, --broker-cert-file and --broker-key-file).
    #[arg(long, env = "BROKER_SASL_MECHANISMS")]
    pub broker_sasl_mechanisms: Option<String>,

    /// CA certificate (PEM) to verify the brokers' TLS certificates; implies TLS.
    #[arg(long, env = "BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for TLS to the brokers (with --broker-key-file and --broker-ca-file).
    #[arg(long, env = "BROKER_CERT_FILE", requires_all = ["broker_key_file", "broker_ca_file"])]
    pub broker_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --broker-cert-file.
    #[arg(long, env = "BROKER_KEY_FILE", requires = "broker_cert_file")]
    pub broker_key_file: Option<PathBuf>,

    /// Time to wait for each broker operation: a management reply, an attach, a moved message's acceptance
    /// (e.g. 10s, 500ms).
    #[arg(long, env = "BROKER_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub broker_request_timeout: Duration,
}

/// Connection to the router for `$subctrl`.
#[derive(Debug, Clone, Args)]
pub struct RouterConnArgs {
    /// Router AMQP URL (`amqp://host:port`, `amqps://` for TLS, `amqp://user@host` with --router-password-file for
    /// SASL PLAIN). When given, `$subctrl` requests are consumed from the router (its router-agent creates the
    /// balanced address `$subctrl`); without it there is no `$subctrl` API.
    #[arg(long, env = "ROUTER_URL")]
    pub router_url: Option<String>,

    /// File holding the password of the --router-url user (never logged).
    #[arg(long, env = "ROUTER_PASSWORD_FILE", requires = "router_url")]
    pub router_password_file: Option<PathBuf>,

    /// CA certificate (PEM) to verify the router's TLS certificate (with an `amqps://` --router-url).
    #[arg(long, env = "ROUTER_CA_FILE", requires = "router_url")]
    pub router_ca_file: Option<PathBuf>,

    /// The file `$subctrl` keeps its `subscription` addresses in: typed Address documents (a JSON list), written
    /// atomically (temporary file + rename). It must be read by the rest of maas: in file mode put it in the
    /// addresses directory (default: `<addresses-dir>/subscriptions.json`). With --kube and no file (and no
    /// --addresses-dir), the subscriptions go to the ConfigMap --subscriptions-configmap instead.
    #[arg(long, env = "SUBSCRIPTIONS_FILE", requires = "router_url")]
    pub subscriptions_file: Option<PathBuf>,

    /// With --kube (and neither --subscriptions-file nor --addresses-dir): the ConfigMap `$subctrl` keeps its
    /// subscriptions in (key `subscriptions.json`, label type=address-config so the address pipeline reads it;
    /// server-side apply, field manager maas-subscription-service). A request is accepted once the address
    /// configuration shows the change.
    #[arg(
        long,
        env = "SUBSCRIPTIONS_CONFIGMAP",
        default_value = "maas-subscriptions",
        requires = "router_url"
    )]
    pub subscriptions_configmap: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Broker pods (and, without --addresses-dir / --config-service-url, the addresses) from the Kubernetes API
    /// (in-cluster config or KUBECONFIG): ready pods labelled `app.kubernetes.io/component=broker` and
    /// `maas.io/cluster=<cluster>`, draining when annotated `maas.io/draining=true`.
    #[arg(
        long,
        env = "KUBE",
        default_value_t = false,
        conflicts_with = "brokers_file"
    )]
    pub kube: bool,

    /// Namespace of the pods and ConfigMaps in --kube mode.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Broker pods per cluster, JSON `{"<cluster>": [{"name": "broker-0", "host": "10.0.0.7", "port": 5672,
    /// "draining": false}]}`; re-read when it changes. A draining pod holds no topic.
    #[arg(long, env = "BROKERS_FILE")]
    pub brokers_file: Option<PathBuf>,

    /// Router ids for merging a client's durable subscription queues made through different routers (Artemis
    /// names them `<router-id>.<link-name>@<container-id>`; the shipped routers' ids are their pod names): a JSON
    /// list like router-agent's --routers-file, [{"name": "router-0", "host": "10.1.2.3", "port": 55672}, ...], where
    /// only "name" is needed (list edge routers too); re-read when it changes. Without it the router ids are the
    /// names of the pods labelled app.kubernetes.io/component=router (--kube), else those config-service `podsense`
    /// reports (--config-service-url); with none of these nothing is merged.
    #[arg(long, env = "ROUTERS_FILE")]
    pub routers_file: Option<PathBuf>,

    /// Directory holding the address ConfigMap (as mounted by the kubelet, or plain files).
    #[arg(long, env = "ADDRESSES_DIR", conflicts_with = "config_service_url")]
    pub addresses_dir: Option<PathBuf>,

    /// Subscribe to a config-service (amqp://host:port) for addresses and flavors.
    #[arg(long, env = "CONFIG_SERVICE_URL")]
    pub config_service_url: Option<String>,

    /// Flavor file (JSON map name -> flavor). Default: the `flavor.json` key of the addresses directory.
    #[arg(long, env = "FLAVORS_FILE")]
    pub flavors_file: Option<PathBuf>,

    #[command(flatten)]
    pub broker: BrokerConnArgs,

    #[command(flatten)]
    pub router: RouterConnArgs,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// One pass: make every durable subscription sit on its topic's pod (moving what must move), then exit 0, or
    /// non-zero with one line naming what could not be moved.
    #[arg(long, env = "ONCE", default_value_t = false)]
    pub once: bool,

    /// Run a pass this often even without changes (e.g. 5s).
    #[arg(long, env = "INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Moves run at the same time (each one queue: its own connections to the old and the new pod).
    #[arg(long, env = "PARALLEL_MOVES", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel_moves: u32,

    /// Messages of one move in flight: received from the old pod and not yet accepted by the new one.
    #[arg(long, env = "MOVE_WINDOW", default_value_t = 250, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub move_window: u32,

    /// A move ends when no message arrived for this long and the old queue's message count is 0.
    #[arg(long, env = "DRAIN_WAIT", default_value = "300ms", value_parser = parse_duration)]
    pub drain_wait: Duration,

    /// File mode: where the draining broker pods this service has RELEASED are written, JSON
    /// {"released": ["broker-0"]} (atomically: temporary file + rename), for router-agent --topic-handover
    /// --handover-file. A draining pod is released once every durable subscription of the topics leaving it sits on
    /// the topics' new pods with its messages; router-agents then move those topics' links off it. With --kube
    /// the release is the pod annotation maas.io/topics-released=true instead (this file, if given, too).
    #[arg(long, env = "HANDOVER_FILE")]
    pub handover_file: Option<PathBuf>,

    /// How long after the links of a topic left a pod (its release, or the pod change) the old subscription queues
    /// there are swept: what reached them meanwhile moves to the new pod, then they are deleted. Long enough for
    /// every router-agent to move the links (e.g. 5s, 500ms).
    #[arg(long, env = "HANDOVER_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub handover_grace: Duration,

    /// Debounce of directory events (the kubelet writes a ConfigMap in several steps).
    #[arg(long, env = "DEBOUNCE", default_value = "200ms", value_parser = parse_duration)]
    pub debounce: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
