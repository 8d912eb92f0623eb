//! Command line of `storage-controller` (docs/architecture.md §7). Every flag has an environment variable; the doc
//! comments are the `--help` text. Configuration is checked before any task starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::clusters::BrokerRunAsUser;

/// storage-controller: makes the broker clusters (StatefulSets of stock ActiveMQ Artemis) that queue and topic
/// addresses need, and the addresses/queues on every broker, over the Kubernetes API and Artemis management.
#[derive(Debug, Parser)]
#[command(name = "storage-controller", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile continuously (or once with --once): broker clusters in Kubernetes (--kube) and the addresses and
    /// queues on every broker pod (from the Kubernetes API, or --brokers-file for provisioning only).
    Run(Box<RunArgs>),
    /// Write the manifests (one YAML document per file) the controller would apply for an address directory.
    /// Needs no cluster.
    Render(RenderArgs),
}

/// Broker management connection settings (the user needs Artemis' `manage` role).
#[derive(Debug, Clone, Args)]
pub struct BrokerConnArgs {
    /// SASL user for the brokers' AMQP management (default: ANONYMOUS).
    #[arg(long, env = "BROKER_USERNAME", requires = "broker_password_file")]
    pub broker_username: Option<String>,

    /// File holding the broker user's password (never logged).
    #[arg(long, env = "BROKER_PASSWORD_FILE", requires = "broker_username")]
    pub broker_password_file: Option<PathBuf>,

    /// SASL mechanisms for the broker connections; PLAIN (default with a user) or ANONYMOUS.
    #[arg(long, env = "BROKER_SASL_MECHANISMS")]
    pub broker_sasl_mechanisms: Option<String>,

    /// CA certificate (PEM) to verify the brokers' TLS certificates; implies TLS.
    #[arg(long, env = "BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,

    /// Management requests in flight per broker (pipeline window).
    #[arg(long, env = "BROKER_WINDOW", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub broker_window: u32,

    /// Time to wait for each broker management reply (e.g. 10s, 500ms).
    #[arg(long, env = "BROKER_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub broker_request_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Manage broker clusters through the Kubernetes API (in-cluster config or KUBECONFIG); broker pods come from
    /// the API. Without --addresses-dir / --config-service-url, addresses come from the API too.
    #[arg(
        long,
        env = "KUBE",
        default_value_t = false,
        conflicts_with = "brokers_file"
    )]
    pub kube: bool,

    /// Provisioning only, no Kubernetes: broker pods per cluster, JSON
    /// `{"<cluster>": [{"name": "broker-0", "host": "10.0.0.7", "port": 5672}]}`; re-read when it changes.
    #[arg(long, env = "BROKERS_FILE")]
    pub brokers_file: Option<PathBuf>,

    /// Directory holding the address ConfigMap (as mounted by the kubelet, or plain files).
    #[arg(long, env = "ADDRESSES_DIR", conflicts_with = "config_service_url")]
    pub addresses_dir: Option<PathBuf>,

    /// Subscribe to a config-service (amqp://host:port) for addresses and flavors.
    #[arg(long, env = "CONFIG_SERVICE_URL")]
    pub config_service_url: Option<String>,

    /// Flavor file (JSON map name -> flavor). Default: the `flavor.json` key of the addresses directory.
    #[arg(long, env = "FLAVORS_FILE")]
    pub flavors_file: Option<PathBuf>,

    /// Namespace of the ConfigMaps, StatefulSets, Services and pods in --kube mode.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Secret (keys `username`, `password`) given to the brokers as AMQ_USER / AMQ_PASSWORD (brokers require login).
    #[arg(long, env = "BROKER_SECRET", default_value = crate::clusters::DEFAULT_BROKER_SECRET)]
    pub broker_secret: String,

    /// User id the broker pods run as (their runAsUser and fsGroup), or `auto` to set neither and let the
    /// platform assign both (OpenShift's restricted-v2 SCC refuses a fixed id outside the namespace's range).
    #[arg(long, env = "BROKER_RUN_AS_USER", default_value = "185", value_parser = parse_run_as_user)]
    pub broker_run_as_user: BrokerRunAsUser,

    /// ConfigMap to name as owner of every StatefulSet and Service. Off by default: deleting an owner lets the
    /// garbage collector remove brokers WITHOUT draining them.
    #[arg(long, env = "OWNER_CONFIGMAP")]
    pub owner_configmap: Option<String>,

    #[command(flatten)]
    pub broker: BrokerConnArgs,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// One pass, then exit 0 when every broker holds exactly what it should, non-zero with a reason otherwise.
    #[arg(long, env = "ONCE", default_value_t = false)]
    pub once: bool,

    /// Re-run a pass this often without changes (repairs drift).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Re-check this often while a queue to remove still holds messages or a drain is in progress.
    #[arg(long, env = "RETRY_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub retry_interval: Duration,

    /// After marking a broker pod draining, how long it must have been seen marked before 0 messages on it
    /// counts as drained (the router-agents must have seen the mark and stopped routing to it).
    #[arg(long, env = "DRAIN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Topic hand-over with subscription-service (docs/architecture.md §5). Kubernetes mode: a pod going away from a
    /// cluster that carries topics is removed only once subscription-service has handed its topics over and
    /// released it (pod annotation `maas.io/topics-released=true`), then the drain grace (from the release too) and
    /// 0 messages as always. And a subscription queue on a pod other than its topic's is left to
    /// subscription-service (it moves and deletes it after the hand-over) instead of destroyed once empty. Turn on
    /// only where subscription-service runs: otherwise nothing releases a pod and such a drain waits forever (shown
    /// in /readyz and maas_storage_controller_drains_waiting{reason="topic-release"}).
    #[arg(long, env = "AWAIT_TOPIC_RELEASE", default_value_t = false)]
    pub await_topic_release: bool,

    /// Debounce of directory events (the kubelet writes a ConfigMap in several steps).
    #[arg(long, env = "DEBOUNCE", default_value = "200ms", value_parser = parse_duration)]
    pub debounce: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// The address directory.
    #[arg(long, env = "ADDRESSES_DIR")]
    pub addresses_dir: PathBuf,

    /// Flavor file (default: `flavor.json` in the directory).
    #[arg(long, env = "FLAVORS_FILE")]
    pub flavors_file: Option<PathBuf>,

    /// Output directory (created if missing); one YAML document per file.
    #[arg(long, env = "OUT")]
    pub out: PathBuf,

    /// Namespace written into the manifests.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Secret (keys `username`, `password`) given to the brokers as AMQ_USER / AMQ_PASSWORD (brokers require login).
    #[arg(long, env = "BROKER_SECRET", default_value = crate::clusters::DEFAULT_BROKER_SECRET)]
    pub broker_secret: String,

    /// User id the broker pods run as (their runAsUser and fsGroup), or `auto` to set neither.
    #[arg(long, env = "BROKER_RUN_AS_USER", default_value = "185", value_parser = parse_run_as_user)]
    pub broker_run_as_user: BrokerRunAsUser,
}

pub use maas_ops::parse_duration;

/// `--broker-run-as-user`: `auto` or a user id from 1 (see [`BrokerRunAsUser`]).
pub fn parse_run_as_user(s: &str) -> Result<BrokerRunAsUser, String> {
    s.parse()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broker_run_as_user_defaults_to_the_image_user_and_takes_auto() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["storage-controller", "run"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Run(a)) => Ok(a.broker_run_as_user),
                Ok(_) => Err("not run".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(run(&[]), Ok(BrokerRunAsUser::Fixed(185)));
        match Cli::try_parse_from(["storage-controller", "run"]).map(|c| c.command) {
            Ok(Command::Run(a)) => assert!(!a.await_topic_release, "off by default"),
            other => panic!("{other:?}"),
        }
        match Cli::try_parse_from(["storage-controller", "run", "--await-topic-release"])
            .map(|c| c.command)
        {
            Ok(Command::Run(a)) => assert!(a.await_topic_release),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            run(&["--broker-run-as-user", "auto"]),
            Ok(BrokerRunAsUser::Auto)
        );
        assert_eq!(
            run(&["--broker-run-as-user=1001"]),
            Ok(BrokerRunAsUser::Fixed(1001))
        );
        let err = run(&["--broker-run-as-user", "0"]).unwrap_err();
        assert!(err.contains("auto"), "{err}");
        match Cli::try_parse_from([
            "storage-controller",
            "render",
            "--addresses-dir",
            "a",
            "--out",
            "o",
            "--broker-run-as-user",
            "auto",
        ])
        .map(|c| c.command)
        {
            Ok(Command::Render(r)) => assert_eq!(r.broker_run_as_user, BrokerRunAsUser::Auto),
            other => panic!("{other:?}"),
        }
    }
}
