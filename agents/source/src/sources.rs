//! A binary's sources chosen from its flags, the same way in every binary: the address configuration (exactly one
//! of a mounted directory, a config-service subscription, the Kubernetes API) and the broker pods (a brokers file,
//! or the pods of the namespace from the API).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::Client;
use maas_amqp::options::{Backoff, ConnectOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    ConfigState, ConfigSubscription, FileConfig, FileSnapshot, KubeConfigOptions, PodsState,
    WatchOptions,
};

/// Where the address configuration comes from.
#[derive(Clone)]
pub enum AddressSource {
    /// `--addresses-dir` (a mounted ConfigMap), with `--flavors-file` or the directory's `flavor.json`.
    Dir {
        dir: PathBuf,
        flavors_file: Option<PathBuf>,
    },
    /// `--config-service-url`.
    ConfigService(ConnectOptions),
    /// `--kube`: the ConfigMaps of `namespace`; `reporter` names the binary in Events.
    Kube {
        client: Client,
        namespace: String,
        reporter: String,
    },
}

impl AddressSource {
    /// The source the flags name: `--addresses-dir` (with `--flavors-file`), else `--config-service-url`, else
    /// the API when a client is given (`--kube`); one line naming the flag at fault otherwise.
    pub fn from_flags(
        addresses_dir: Option<&Path>,
        flavors_file: Option<&Path>,
        config_service_url: Option<&str>,
        client: Option<&Client>,
        namespace: &str,
        reporter: &str,
    ) -> Result<AddressSource, String> {
        if let Some(dir) = addresses_dir {
            Ok(AddressSource::Dir {
                dir: dir.to_path_buf(),
                flavors_file: flavors_file.map(Path::to_path_buf),
            })
        } else if let Some(url) = config_service_url {
            ConnectOptions::from_url(url)
                .map(AddressSource::ConfigService)
                .map_err(|e| format!("--config-service-url {url:?}: {e}"))
        } else if let Some(client) = client {
            Ok(AddressSource::Kube {
                client: client.clone(),
                namespace: namespace.to_string(),
                reporter: reporter.to_string(),
            })
        } else {
            Err(
                "no address source: give --addresses-dir DIR, --config-service-url URL or --kube"
                    .into(),
            )
        }
    }
}

/// Starts watching the address configuration; one line naming the flag at fault otherwise.
pub fn spawn_address_source(
    src: AddressSource,
    watch_opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<ConfigState>>, String> {
    match src {
        AddressSource::Dir { dir, flavors_file } => {
            if !dir.is_dir() {
                return Err(format!(
                    "--addresses-dir {}: not a directory",
                    dir.display()
                ));
            }
            crate::spawn_file_config(FileConfig {
                addresses_dir: dir,
                flavors_file,
                watch: watch_opts,
            })
            .map_err(|e| e.to_string())
        }
        AddressSource::ConfigService(connect) => Ok(crate::spawn_config_subscription(
            ConfigSubscription {
                connect,
                backoff: Backoff::default(),
                pods_selector: None,
            },
            shutdown,
        )
        .0),
        AddressSource::Kube {
            client,
            namespace,
            reporter,
        } => Ok(crate::spawn_kube_config(
            client,
            KubeConfigOptions::new(namespace, reporter),
        )),
    }
}

/// Where the broker pods come from.
pub enum BrokerSource {
    /// `--brokers-file`, re-read on change (the last good content stays in force).
    File {
        path: String,
        rx: watch::Receiver<Arc<FileSnapshot>>,
    },
    /// Pods from the Kubernetes API.
    Pods(watch::Receiver<Arc<PodsState>>),
}

impl BrokerSource {
    /// `--brokers-file` if given, else the pods of `namespace` from the API; one line naming what is missing
    /// otherwise.
    pub fn spawn(
        brokers_file: Option<&Path>,
        client: Option<&Client>,
        namespace: &str,
        watch_opts: WatchOptions,
    ) -> Result<BrokerSource, String> {
        match (brokers_file, client) {
            (Some(path), _) => Ok(BrokerSource::File {
                path: path.display().to_string(),
                rx: crate::watch_file(path.to_path_buf(), watch_opts)
                    .map_err(|e| format!("--brokers-file: {e}"))?,
            }),
            (None, Some(client)) => Ok(BrokerSource::Pods(crate::spawn_kube_pods(
                client.clone(),
                namespace.to_string(),
            ))),
            (None, None) => Err("no broker source: give --brokers-file FILE or --kube".into()),
        }
    }

    /// Resolves when the source changed (Err once it is gone).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            BrokerSource::File { rx, .. } => rx.changed().await,
            BrokerSource::Pods(rx) => rx.changed().await,
        }
    }
}

/// The source flags every controller binary takes (storage-controller, subscription-service).
#[derive(Debug, Clone, Copy)]
pub struct SourceFlags<'a> {
    /// `--kube`: use the Kubernetes API (in-cluster configuration or KUBECONFIG).
    pub kube: bool,
    pub addresses_dir: Option<&'a Path>,
    pub flavors_file: Option<&'a Path>,
    pub config_service_url: Option<&'a str>,
    pub brokers_file: Option<&'a Path>,
    pub namespace: &'a str,
    /// The binary's name in Events.
    pub reporter: &'a str,
}

/// What [`spawn_sources`] started.
pub struct Sources {
    /// The API client, with `--kube`.
    pub client: Option<Client>,
    pub config: watch::Receiver<Arc<ConfigState>>,
    pub brokers: BrokerSource,
}

/// Connects to the API (with `--kube`) and starts watching the address configuration and the broker pods the
/// flags name; one line naming the flag at fault otherwise.
pub async fn spawn_sources(
    flags: SourceFlags<'_>,
    watch_opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<Sources, String> {
    let client = if flags.kube {
        Some(Client::try_default().await.map_err(|e| {
            format!("--kube: no usable Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
        })?)
    } else {
        None
    };
    let source = AddressSource::from_flags(
        flags.addresses_dir,
        flags.flavors_file,
        flags.config_service_url,
        client.as_ref(),
        flags.namespace,
        flags.reporter,
    )?;
    let config = spawn_address_source(source, watch_opts, shutdown)?;
    let brokers = BrokerSource::spawn(
        flags.brokers_file,
        client.as_ref(),
        flags.namespace,
        watch_opts,
    )?;
    Ok(Sources {
        client,
        config,
        brokers,
    })
}
