//! Test support for the router-agent tests: an in-process agent against the in-process router emulator, with the
//! address directory written the way the kubelet writes a mounted ConfigMap.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::router::ClientConfig;
use maas_e2e::router::{EmulatorConfig, RouterEmulator};
pub use maas_e2e::support::wait_until;
use maas_model::{EntityOptions, EntitySet, EntityType};
use maas_ops::Health;
use maas_source::WatchOptions;
use maas_source::kubelet::KubeletWriter;
use prometheus_client::registry::Registry;
use router_agent::agent::{AgentConfig, Outcome, run_agent};
use router_agent::desired::{FileSources, load_once, spawn_file_sources};
use router_agent::metrics::Metrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestAgent {
    pub health: Health,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub token: CancellationToken,
    pub join: JoinHandle<Outcome>,
}

impl TestAgent {
    pub async fn stop(self) -> Outcome {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.join)
            .await
            .expect("agent stops within 5 s")
            .expect("agent task")
    }

    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("encode");
        s
    }

    /// Wait until /readyz would say the router holds generation `generation`.
    pub async fn wait_generation(&self, generation: u64, timeout: Duration) {
        let probe = format!("router holds generation {generation} ");
        let ok = wait_until(timeout, || {
            self.health.is_ready() && self.health.detail().contains(&probe)
        })
        .await;
        assert!(
            ok,
            "generation {generation} not applied in {timeout:?}; readyz detail: {}",
            self.health.detail()
        );
    }
}

pub struct Options {
    pub brokers_file: Option<PathBuf>,
    pub routers_file: Option<PathBuf>,
    /// This router in the mesh (pod name, mode, connector login).
    pub mesh: maas_model::MeshInputs,
    pub drift: Duration,
    pub request_timeout: Duration,
    pub window: usize,
    pub once: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            brokers_file: None,
            routers_file: None,
            mesh: maas_model::MeshInputs::default(),
            drift: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            window: 250,
            once: false,
        }
    }
}

pub fn start_agent(dir: &Path, router_url: &str, opts: Options) -> TestAgent {
    let (metrics, registry) = Metrics::new();
    let health = Health::new();
    let token = CancellationToken::new();
    let desired_rx = spawn_file_sources(
        FileSources {
            addresses_dir: dir.to_path_buf(),
            flavors_file: None,
            brokers_file: opts.brokers_file.clone(),
            routers_file: opts.routers_file.clone(),
            entity_options: EntityOptions::default(),
            mesh: opts.mesh.clone(),
            watch: WatchOptions {
                debounce: Duration::from_millis(50),
                resync: Duration::from_secs(30),
            },
        },
        metrics.clone(),
    )
    .expect("watch the address directory");
    let cfg = AgentConfig {
        router: ConnectOptions::from_url(router_url).expect("url"),
        client: ClientConfig {
            window: opts.window,
            request_timeout: opts.request_timeout,
            ..Default::default()
        },
        drift_check_interval: opts.drift,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(300),
        },
    };
    let join = tokio::spawn(run_agent(
        cfg,
        desired_rx,
        metrics.clone(),
        health.clone(),
        opts.once,
        token.clone(),
    ));
    TestAgent {
        health,
        metrics,
        registry,
        token,
        join,
    }
}

pub async fn emulator(cost_model: bool) -> RouterEmulator {
    RouterEmulator::start(EmulatorConfig {
        cost_model,
        ..EmulatorConfig::default()
    })
    .await
    .expect("start the router emulator")
}

/// A 2016-format `json` key with `n` addresses named `<prefix>-<i>`, kinds cycling anycast/broadcast.
pub fn legacy_addresses(prefix: &str, n: usize) -> String {
    let mut m = serde_json::Map::new();
    for i in 0..n {
        m.insert(
            format!("{prefix}-{i}"),
            serde_json::json!({"store_and_forward": false, "multicast": i % 2 == 1}),
        );
    }
    serde_json::Value::Object(m).to_string()
}

pub fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn writer(dir: &Path) -> KubeletWriter {
    KubeletWriter::new(dir).expect("kubelet writer")
}

/// The entities the agent should put on the router for this directory.
pub fn desired_for(dir: &Path, brokers: Option<&Path>) -> EntitySet {
    let (config, brokers) = load_once(dir, None, brokers).expect("valid configuration");
    maas_model::desired_entities(
        &config.addresses,
        &config.flavors,
        &brokers,
        &EntityOptions::default(),
    )
}

/// The emulator holds exactly the desired `maas-` entities (plus the marker), attribute by attribute.
pub fn router_matches(emu: &RouterEmulator, desired: &EntitySet) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for t in EntityType::ALL {
        for row in emu.entities(t.full_name()) {
            let Some(name) = row.get("name").and_then(|v| v.as_str()) else {
                continue;
            };
            if !name.starts_with("maas-") || name == router_agent::plan::MARKER_NAME {
                continue;
            }
            match desired.get(t, name) {
                Some(d) if d.matches_reported(&row) => {
                    seen.insert((t, name.to_string()));
                }
                Some(_) => {
                    return Err(format!(
                        "{} {name} has wrong attributes: {row:?}",
                        t.short_name()
                    ));
                }
                None => return Err(format!("unexpected {} {name}", t.short_name())),
            }
        }
    }
    if seen.len() != desired.len() {
        return Err(format!(
            "router holds {} of {} desired entities",
            seen.len(),
            desired.len()
        ));
    }
    Ok(())
}

pub fn has_marker(emu: &RouterEmulator) -> bool {
    emu.entities(EntityType::Address.full_name())
        .iter()
        .any(|r| r.get("name").and_then(|v| v.as_str()) == Some(router_agent::plan::MARKER_NAME))
}
