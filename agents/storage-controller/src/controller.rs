//! The level-triggered control loop: on every configuration change, pod change, or timer tick it
//! 1. (Kubernetes mode) reconciles the broker clusters ([`reconcile_clusters`]): server-side applies the Service
//!    and StatefulSet of each cluster the addresses need — only when the listed object differs from the desired
//!    one, so a pass (or a restart) with nothing changed sends no PATCH; for a scale-down or a cluster no address
//!    needs, marks the pods going away `maas.io/draining=true`, waits the drain grace ([`DrainClock`]: the
//!    router-agents must have seen the mark and dropped the `out` autoLinks) and until every queue on them is
//!    empty, and only then scales down or deletes;
//! 2. provisions every broker pod ([`Provisioner::pass`]); a desired cluster without broker pods (yet) counts
//!    its addresses as pending;
//! 3. publishes metrics and readiness.
//!
//! Errors never stop the loop: the pass is retried with capped backoff; the last good configuration stays in
//! force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_amqp::options::Backoff;
use maas_model::pods::{CLUSTER_LABEL, DRAINING_ANNOTATION};
use maas_model::{BrokerPod, Brokers, Config, PodInfo, brokers_from_pods, parse_brokers};
use maas_ops::Health;
use maas_source::{ConfigState, FileSnapshot, PodsState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::broker::{Connector, PassReport, Provisioner};
use crate::clusters::{BrokerCluster, desired_clusters};
use crate::kube::KubeCtx;
use crate::provision::desired_per_cluster;
use crate::{Error, Result};

/// What a cluster reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// Clusters whose Service or StatefulSet was applied (a PATCH sent).
    pub applied: Vec<String>,
    /// Desired clusters whose listed Service and StatefulSet already held the desired objects (no PATCH).
    pub unchanged: Vec<String>,
    /// Server-side apply PATCH requests sent.
    pub patches: usize,
    /// Clusters deleted (after their drain).
    pub deleted: Vec<String>,
    /// Pods being drained -> messages still on them (None: not known yet, e.g. the mark was just set or the
    /// broker is unreachable).
    pub draining: BTreeMap<String, Option<u64>>,
}

/// How long a pod must have been seen marked draining before it may count as drained, and since when each
/// draining pod has been seen marked (by this process: after a restart the grace starts again).
///
/// The mark reaches the router-agents through their own pod watches; until they have seen it they may still
/// route messages to the pod through its `out` autoLink, so 0 messages right after marking proves nothing.
#[derive(Debug, Clone, Default)]
pub struct DrainClock {
    /// The drain grace (`--drain-grace`).
    pub grace: Duration,
    seen: BTreeMap<String, Instant>,
}

impl DrainClock {
    /// A clock with `grace`.
    pub fn new(grace: Duration) -> Self {
        DrainClock {
            grace,
            seen: BTreeMap::new(),
        }
    }

    /// How long `pod` has been seen marked (its first sighting is now when unknown).
    fn marked_for(&mut self, pod: &str) -> Duration {
        self.seen
            .entry(pod.to_string())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// Forget pods that are no longer marked (or gone).
    fn retain_marked(&mut self, pods: &[PodInfo]) {
        self.seen
            .retain(|name, _| pods.iter().any(|p| &p.name == name && is_marked(p)));
    }
}

/// The ordinal of StatefulSet pod `pod` of `cluster` (`<cluster>-<n>`).
pub fn ordinal(cluster: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

fn is_marked(p: &PodInfo) -> bool {
    p.annotations.get(DRAINING_ANNOTATION).map(String::as_str) == Some("true")
}

/// The broker endpoint of a pod (ready, with an IP and an AMQP port), for drain checks.
fn endpoint(p: &PodInfo) -> Option<BrokerPod> {
    brokers_from_pods(std::slice::from_ref(p))
        .clusters
        .into_values()
        .next()
        .and_then(|v| v.into_iter().next())
}

/// Drain `pods`: mark each, and once the mark is visible on the pod, count the messages of every queue on it.
/// True when every pod is marked, has been seen marked for the drain grace, and is empty.
async fn drain<C: Connector>(
    ctx: &KubeCtx,
    pods: &[&PodInfo],
    prov: &mut Provisioner<C>,
    clock: &mut DrainClock,
    report: &mut ClusterReport,
) -> Result<bool> {
    let mut all_empty = true;
    for p in pods {
        if !is_marked(p) {
            info!(pod = %p.name, "marking broker pod as draining");
            ctx.set_draining(&p.name, true).await?;
            report.draining.insert(p.name.clone(), None);
            all_empty = false;
            continue;
        }
        let marked_for = clock.marked_for(&p.name);
        let Some(ep) = endpoint(p) else {
            warn!(pod = %p.name, "draining broker pod is not reachable (not ready); waiting");
            report.draining.insert(p.name.clone(), None);
            all_empty = false;
            continue;
        };
        match prov.messages_on(&ep).await {
            Ok(counts) => {
                let total: u64 = counts.values().sum();
                report.draining.insert(p.name.clone(), Some(total));
                if total > 0 {
                    info!(pod = %p.name, messages = total, "broker pod still holds messages; waiting for consumers to empty it");
                    all_empty = false;
                } else if marked_for < clock.grace {
                    info!(pod = %p.name, waited_ms = marked_for.as_millis(), grace_ms = clock.grace.as_millis(),
                        "broker pod is empty but within the drain grace (router-agents may still route to it); waiting");
                    all_empty = false;
                }
            }
            Err(e) => {
                warn!(pod = %p.name, error = %e, "cannot count messages on a draining broker; waiting");
                report.draining.insert(p.name.clone(), None);
                all_empty = false;
            }
        }
    }
    Ok(all_empty)
}

/// One reconcile of the broker clusters against the Kubernetes API. Requests, in order: list the managed
/// StatefulSets, list the managed Services; per desired cluster (name order) apply its Service then its
/// StatefulSet (keeping the current replicas while pods above the flavor's count drain) — each only when the
/// listed object differs from the desired one —, clearing stale draining marks; per cluster no address needs:
/// drain its pods (mark, drain grace, 0 messages), then delete its StatefulSet and Service; a managed Service
/// left without its StatefulSet and not needed is deleted.
#[instrument(skip_all, fields(clusters = desired.len()))]
pub async fn reconcile_clusters<C: Connector>(
    ctx: &KubeCtx,
    desired: &BTreeMap<String, BrokerCluster>,
    pods: &[PodInfo],
    prov: &mut Provisioner<C>,
    clock: &mut DrainClock,
) -> Result<ClusterReport> {
    let existing = ctx.list_clusters().await?;
    let services = ctx.list_services().await?;
    clock.retain_marked(pods);
    let mut report = ClusterReport::default();
    let pods_of = |cluster: &str| -> Vec<&PodInfo> {
        pods.iter()
            .filter(|p| p.labels.get(CLUSTER_LABEL).map(String::as_str) == Some(cluster))
            .collect()
    };
    for (name, cluster) in desired {
        let current = existing.get(name).map(|e| e.replicas);
        let target = cluster.replicas;
        let cluster_pods = pods_of(name);
        let mut replicas = target;
        if let Some(cur) = current
            && cur > target
        {
            let going: Vec<&PodInfo> = cluster_pods
                .iter()
                .copied()
                .filter(|p| ordinal(name, &p.name).is_some_and(|o| o >= target))
                .collect();
            if !drain(ctx, &going, prov, clock, &mut report).await? {
                replicas = cur;
            } else {
                info!(cluster = %name, from = cur, to = target, "drained; scaling down");
            }
        }
        for p in &cluster_pods {
            if is_marked(p) && ordinal(name, &p.name).is_some_and(|o| o < replicas.min(target)) {
                info!(pod = %p.name, "broker pod no longer goes away; clearing its draining mark");
                ctx.set_draining(&p.name, false).await?;
            }
        }
        let svc = ctx.ensure_service(cluster, services.get(name)).await?;
        let sts = ctx
            .ensure_statefulset(cluster, replicas, existing.get(name).map(|e| &e.object))
            .await?;
        report.patches += usize::from(svc) + usize::from(sts);
        if svc || sts {
            report.applied.push(name.clone());
        } else {
            report.unchanged.push(name.clone());
        }
    }
    for name in existing.keys().filter(|n| !desired.contains_key(*n)) {
        let cluster_pods = pods_of(name);
        if drain(ctx, &cluster_pods, prov, clock, &mut report).await? {
            info!(cluster = %name, "no address needs this cluster and its brokers are empty; deleting it");
            ctx.delete_cluster(name).await?;
            report.deleted.push(name.clone());
        }
    }
    for name in services
        .keys()
        .filter(|n| !desired.contains_key(*n) && !existing.contains_key(*n))
    {
        info!(service = %name, "managed Service without its StatefulSet and no longer needed; deleting it");
        ctx.delete_service(name).await?;
    }
    Ok(report)
}

/// Where broker pods come from.
pub enum BrokerSource {
    /// `--brokers-file`: provisioning only, the file re-read on change.
    File {
        path: String,
        rx: watch::Receiver<Arc<FileSnapshot>>,
    },
    /// Pods from the Kubernetes API (or config-service `podsense`).
    Pods(watch::Receiver<Arc<PodsState>>),
}

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Re-run a pass this often even without changes (repairs drift, retries held removals).
    pub resync: Duration,
    /// Re-run this soon while removals are held or drains are in progress.
    pub retry: Duration,
    /// Backoff after a failed pass.
    pub backoff: Backoff,
    /// One pass, then exit.
    pub once: bool,
    /// How long a pod going away must have been seen marked draining before 0 messages on it counts as drained.
    pub drain_grace: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            resync: Duration::from_secs(30),
            retry: Duration::from_secs(2),
            backoff: Backoff::default(),
            once: false,
            drain_grace: Duration::from_secs(5),
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown requested.
    Stopped,
    /// `--once`: every broker holds exactly what it should.
    Converged,
    /// `--once`: it does not; why.
    NotConverged(String),
}

/// The status of a pass, for `/readyz` and `--once`. `no_pods`: desired clusters without broker pods -> their
/// addresses (all pending).
fn status(
    generation: u64,
    pass: &PassReport,
    clusters: Option<&Result<ClusterReport>>,
    no_pods: &BTreeMap<String, usize>,
) -> (bool, String) {
    let mut problems = Vec::new();
    if let Some(Err(e)) = clusters {
        problems.push(format!("Kubernetes: {e}"));
    }
    for (cluster, n) in no_pods {
        problems.push(format!(
            "cluster {cluster} has no ready broker pod yet: {n} address(es) pending"
        ));
    }
    if let Some(Ok(r)) = clusters
        && !r.draining.is_empty()
    {
        problems.push(format!("{} pod(s) draining", r.draining.len()));
    }
    for (pod, reason) in &pass.pods_failed {
        problems.push(format!("broker {pod}: {reason}"));
    }
    for ((pod, queue), n) in &pass.holding {
        problems.push(format!(
            "queue {queue} on {pod} holds {n} message(s); kept until empty"
        ));
    }
    if pass.pending > 0 && pass.pods_failed.is_empty() {
        problems.push(format!("{} address(es) pending", pass.pending));
    }
    if problems.is_empty() {
        (
            true,
            format!(
                "generation {generation} provisioned on {} broker pod(s)",
                pass.pods_ok
            ),
        )
    } else {
        (false, problems.join("; "))
    }
}

/// Run the loop until shutdown (or once). `kube` is set in Kubernetes mode (clusters are reconciled too).
pub async fn run_loop<C: Connector>(
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    mut brokers: BrokerSource,
    mut prov: Provisioner<C>,
    kube: Option<KubeCtx>,
    health: Health,
    cfg: LoopConfig,
    shutdown: CancellationToken,
) -> Outcome {
    let metrics = prov.metrics().clone();
    let mut clock = DrainClock::new(cfg.drain_grace);
    let mut last_error_events = 0;
    let mut last_brokers: Option<Brokers> = None;
    let mut brokers_error_hash = String::new();
    let mut failures: u32 = 0;
    let mut delay = Duration::ZERO;
    // Wait for the first complete configuration.
    loop {
        if config_rx.borrow().synced && config_rx.borrow().config.is_some() {
            break;
        }
        if cfg.once && config_rx.borrow().synced {
            let errors = config_rx.borrow().errors.join("; ");
            return Outcome::NotConverged(format!("no valid configuration: {errors}"));
        }
        tokio::select! {
            r = config_rx.changed() => if r.is_err() { return Outcome::Stopped },
            _ = shutdown.cancelled() => return Outcome::Stopped,
        }
    }
    loop {
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                r = config_rx.changed() => if r.is_err() { return Outcome::Stopped },
                r = brokers_changed(&mut brokers) => if r.is_err() { return Outcome::Stopped },
                _ = shutdown.cancelled() => return Outcome::Stopped,
            }
        }
        if shutdown.is_cancelled() {
            return Outcome::Stopped;
        }
        let state = config_rx.borrow_and_update().clone();
        if state.error_events != last_error_events {
            last_error_events = state.error_events;
            metrics.config_errors.inc();
            for e in &state.errors {
                warn!(error = %e, "invalid address configuration; the last good one stays in force");
            }
        }
        let Some(config) = state.config.clone() else {
            delay = cfg.resync;
            continue;
        };
        let (current_brokers, pods) = match &mut brokers {
            BrokerSource::File { path, rx } => {
                let snap = rx.borrow_and_update().clone();
                match parse_brokers(path, &snap.content) {
                    Ok(b) => {
                        last_brokers = Some(b);
                    }
                    Err(errors) => {
                        if brokers_error_hash != snap.hash {
                            brokers_error_hash = snap.hash.clone();
                            metrics.config_errors.inc();
                            for e in &errors {
                                warn!(error = %e, "invalid brokers file; the last good one stays in force");
                            }
                        }
                    }
                }
                (last_brokers.clone().unwrap_or_default(), Vec::new())
            }
            BrokerSource::Pods(rx) => {
                let pods = rx.borrow_and_update().pods.clone();
                (brokers_from_pods(&pods), pods)
            }
        };
        let (outcome_ok, detail, retry_soon) = pass(
            &config,
            state.generation,
            &current_brokers,
            &pods,
            &mut prov,
            kube.as_ref(),
            &mut clock,
        )
        .await;
        metrics.passes.inc();
        if outcome_ok {
            health.set_ready(detail.clone());
            failures = 0;
        } else {
            health.set_not_ready(detail.clone());
        }
        if cfg.once {
            return if outcome_ok {
                Outcome::Converged
            } else {
                Outcome::NotConverged(detail)
            };
        }
        delay = if outcome_ok {
            cfg.resync
        } else if retry_soon {
            cfg.retry
        } else {
            failures = failures.saturating_add(1);
            cfg.backoff.delay(failures)
        };
    }
}

async fn brokers_changed(b: &mut BrokerSource) -> std::result::Result<(), watch::error::RecvError> {
    match b {
        BrokerSource::File { rx, .. } => rx.changed().await,
        BrokerSource::Pods(rx) => rx.changed().await,
    }
}

/// One pass: clusters (Kubernetes mode), then provisioning. (converged, readiness detail, retry soon).
async fn pass<C: Connector>(
    config: &Config,
    generation: u64,
    brokers: &Brokers,
    pods: &[PodInfo],
    prov: &mut Provisioner<C>,
    kube: Option<&KubeCtx>,
    clock: &mut DrainClock,
) -> (bool, String, bool) {
    let metrics = prov.metrics().clone();
    let (clusters, problems) = desired_clusters(config);
    for p in &problems {
        warn!(problem = %p, "cluster placement conflict");
    }
    metrics
        .clusters
        .set(i64::try_from(clusters.len()).unwrap_or(i64::MAX));
    let cluster_result = match kube {
        Some(ctx) => {
            let r = reconcile_clusters(ctx, &clusters, pods, prov, clock).await;
            match &r {
                Ok(rep) => {
                    metrics
                        .drains_in_progress
                        .set(i64::try_from(rep.draining.len()).unwrap_or(i64::MAX));
                }
                Err(e) => warn!(error = %e, "cluster reconcile failed; retrying with backoff"),
            }
            Some(r)
        }
        None => None,
    };
    let desired = desired_per_cluster(config);
    let report = prov.pass(&desired, brokers).await;
    let no_pods: BTreeMap<String, usize> = desired
        .iter()
        .filter(|(cluster, _)| brokers.clusters.get(*cluster).is_none_or(Vec::is_empty))
        .map(|(cluster, addresses)| (cluster.clone(), addresses.len()))
        .collect();
    metrics.set_queues(
        report.ready,
        report.holding.len(),
        report.pending + no_pods.values().sum::<usize>(),
    );
    metrics
        .brokers_unreachable
        .set(i64::try_from(report.pods_failed.len()).unwrap_or(i64::MAX));
    let (ok, detail) = status(generation, &report, cluster_result.as_ref(), &no_pods);
    let retry_soon = !report.holding.is_empty()
        || matches!(&cluster_result, Some(Ok(r)) if !r.draining.is_empty());
    (ok, detail, retry_soon)
}

/// The configuration errors a `--once` run reports, or Ok.
pub fn check_config(state: &ConfigState) -> Result<Arc<Config>> {
    state
        .config
        .clone()
        .ok_or_else(|| Error::Config(state.errors.join("; ")))
}

/// File-mode inputs (`--addresses-dir` [+ `--flavors-file`] and `--brokers-file`), watched like a mounted ConfigMap.
pub fn file_inputs(
    addresses_dir: &std::path::Path,
    flavors_file: Option<&std::path::Path>,
    brokers_file: &std::path::Path,
    watch_opts: maas_source::WatchOptions,
) -> Result<(watch::Receiver<Arc<ConfigState>>, BrokerSource)> {
    let config_rx = maas_source::spawn_file_config(maas_source::FileConfig {
        addresses_dir: addresses_dir.to_path_buf(),
        flavors_file: flavors_file.map(std::path::Path::to_path_buf),
        watch: watch_opts,
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    let rx = maas_source::watch_file(brokers_file.to_path_buf(), watch_opts)
        .map_err(|e| Error::Config(format!("--brokers-file: {e}")))?;
    Ok((
        config_rx,
        BrokerSource::File {
            path: brokers_file.display().to_string(),
            rx,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        assert_eq!(ordinal("orders", "orders-0"), Some(0));
        assert_eq!(ordinal("orders", "orders-12"), Some(12));
        assert_eq!(ordinal("orders", "orders-x"), None);
        assert_eq!(ordinal("orders", "orders2-1"), None);
        assert_eq!(ordinal("a-b", "a-b-3"), Some(3));
    }
}
