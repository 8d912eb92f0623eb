//! The level-triggered control loop: on every configuration change, pod change, or timer tick it
//! 1. (Kubernetes mode) reconciles the broker clusters ([`reconcile_clusters`]): server-side applies the Service,
//!    StatefulSet and PodDisruptionBudget of each cluster the addresses need — only when the listed object differs
//!    from the desired one, so a pass (or a restart) with nothing changed sends no PATCH; for a scale-down or a
//!    cluster no address needs, marks the pods going away `maas.io/draining=true`, waits the drain grace
//!    ([`DrainClock`]: the router-agents must have seen the mark and dropped the `out` autoLinks) and until every
//!    queue on them is empty, and only then scales down or deletes;
//! 2. provisions every broker pod ([`Provisioner::pass`]); a desired cluster without broker pods (yet) counts
//!    its addresses as pending; (Kubernetes mode) annotates every pod that holds all it should
//!    [`crate::PROVISIONED_ANNOTATION`]` = <hash of that set>`;
//! 3. publishes metrics and readiness.
//!
//! **Drains never act on an unknown pod list.** Until the pod watch has synced (and always in `--brokers-file`
//! mode, where the controller sees no pods), nothing is scaled down, marked or deleted: the scale-down keeps the
//! current replicas, the removal waits. A pod that should be drained (every ordinal the StatefulSet has or had:
//! `spec.replicas`, or the replicas the controller last applied when someone scaled it down behind its back) but
//! is not in the synced list is not "drained": it is waited for (its claim may hold messages).
//!
//! **One bad cluster does not block the others.** Each cluster's pass (apply, drain, delete) is independent: an
//! API error fails that cluster alone (`cluster_errors{cluster}`, the log, `/readyz`), the others go on, and the
//! failed one is retried; an unreachable broker only keeps its own drain waiting. Only a failed LIST (nothing is
//! known) fails the whole reconcile.
//!
//! Errors never stop the loop: the pass is retried with capped backoff; the last good configuration stays in
//! force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maas_amqp::options::Backoff;
use maas_model::placement::topic_route_pod;
use maas_model::pods::{
    CLUSTER_LABEL, DRAINING_ANNOTATION, TOPICS_RELEASED_ANNOTATION, released_from_pods,
};
use maas_model::{BrokerPod, Brokers, Config, PodInfo, brokers_from_pods, parse_brokers};
use maas_ops::Health;
use maas_source::ConfigState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::broker::{Connector, PassReport, Provisioner};
use crate::clusters::{BrokerCluster, desired_clusters};
use crate::kube::{ExistingCluster, KubeCtx};
use crate::provision::desired_per_cluster;
use crate::{Error, PROVISIONED_ANNOTATION, Result};

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
    /// Pods being drained -> messages still on them (None: not known yet, e.g. the mark was just set, the
    /// broker is unreachable, or the pod is not in the pod list).
    pub draining: BTreeMap<String, Option<u64>>,
    /// Clusters whose pass failed (a Kubernetes API error) -> the error. The other clusters went on; these are
    /// retried.
    pub failed: BTreeMap<String, String>,
    /// Clusters whose scale-down or removal waits for the pod list to be synced.
    pub deferred: Vec<String>,
    /// Pods being drained -> what their drain waits for (a pod that counts as drained has none).
    pub waits: BTreeMap<String, DrainWait>,
}

/// What the drain of one broker pod going away waits for. A pod counts as drained when there is nothing left to
/// wait for: listed, marked, (with `--await-topic-release` on a cluster carrying topics) released by
/// subscription-service, 0 messages, and the drain grace passed since the mark (and the release) was first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainWait {
    /// Not in the pod list: its claim may hold messages.
    NotListed,
    /// The draining mark was set in this pass (the pod list does not show it yet).
    Marking,
    /// Not ready: its messages cannot be counted (and subscription-service releases only Ready pods).
    NotReady,
    /// `--await-topic-release`: subscription-service has not released the pod yet
    /// ([`maas_model::pods::TOPICS_RELEASED_ANNOTATION`]). `topics`: those of its cluster whose links still point at
    /// it (it hands them over); `of`: how many topics its cluster carries.
    Release { topics: Vec<String>, of: usize },
    /// Empty, but within the drain grace since the mark (or the release) was first seen: the router-agents may
    /// still route to it.
    Grace,
    /// Messages still on it.
    Messages(u64),
    /// Its messages could not be counted (the broker did not answer).
    Unreachable,
}

impl DrainWait {
    /// Every `reason` label of `maas_storage_controller_drains_waiting`, in the order [`DrainWait::label`] uses.
    pub const LABELS: [&'static str; 7] = [
        "not-listed",
        "marking",
        "not-ready",
        "topic-release",
        "grace",
        "messages",
        "unreachable",
    ];

    /// The `reason` label of this wait.
    pub fn label(&self) -> &'static str {
        let i = match self {
            DrainWait::NotListed => 0,
            DrainWait::Marking => 1,
            DrainWait::NotReady => 2,
            DrainWait::Release { .. } => 3,
            DrainWait::Grace => 4,
            DrainWait::Messages(_) => 5,
            DrainWait::Unreachable => 6,
        };
        Self::LABELS[i]
    }

    /// The `/readyz` words for the wait of `pod`, when it says more than "draining".
    pub fn describe(&self, pod: &str) -> Option<String> {
        match self {
            DrainWait::Release { topics, of } => Some(format!(
                "waiting for subscription-service to release {pod} ({})",
                if topics.is_empty() {
                    format!("it holds none of the {of} topic(s) of its cluster")
                } else {
                    format!("topics {}", name_some(topics, 5))
                }
            )),
            _ => None,
        }
    }
}

/// Up to `n` names joined by `, `, then how many more.
fn name_some(names: &[String], n: usize) -> String {
    let shown = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(n) {
        0 => shown,
        more => format!("{shown}, … ({more} more)"),
    }
}

/// Whether the drain of `pod` (listed and marked) waits for subscription-service to release it: with
/// `await_release`, its cluster carries `topics` and it is not annotated
/// [`maas_model::pods::TOPICS_RELEASED_ANNOTATION`]`=true`. The wait names the topics whose links still point at it
/// ([`maas_model::placement::topic_route_pod`] over its cluster's pods in `pods` and the releases they carry: the
/// topics it hands over). Pure.
pub fn release_wait(
    pod: &PodInfo,
    topics: &[String],
    await_release: bool,
    pods: &[PodInfo],
) -> Option<DrainWait> {
    if !await_release || topics.is_empty() || is_released(pod) {
        return None;
    }
    let brokers = brokers_from_pods(pods);
    let cluster_pods = pod
        .labels
        .get(CLUSTER_LABEL)
        .map(|c| brokers.pods(c))
        .unwrap_or_default();
    let released = released_from_pods(pods);
    let held = topics
        .iter()
        .filter(|t| topic_route_pod(t, cluster_pods, &released).is_some_and(|p| p.name == pod.name))
        .cloned()
        .collect();
    Some(DrainWait::Release {
        topics: held,
        of: topics.len(),
    })
}

/// What the drain of a listed, marked (and, when awaited, released) pod still waits for once its messages were
/// counted (`total`): messages first, then the drain grace since the mark (`marked_for`) and since the release
/// (`released_for`, when a release was awaited). None: drained. Pure.
pub fn count_wait(
    total: u64,
    marked_for: Duration,
    released_for: Option<Duration>,
    grace: Duration,
) -> Option<DrainWait> {
    if total > 0 {
        Some(DrainWait::Messages(total))
    } else if marked_for < grace || released_for.is_some_and(|r| r < grace) {
        Some(DrainWait::Grace)
    } else {
        None
    }
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
    /// Since when each marked pod has been seen released by subscription-service (`--await-topic-release`: the
    /// router-agents move a topic's links when they see the release, so the grace counts from it too).
    released: BTreeMap<String, Instant>,
}

impl DrainClock {
    /// A clock with `grace`.
    pub fn new(grace: Duration) -> Self {
        DrainClock {
            grace,
            seen: BTreeMap::new(),
            released: BTreeMap::new(),
        }
    }

    /// How long `pod` has been seen marked (its first sighting is now when unknown).
    fn marked_for(&mut self, pod: &str) -> Duration {
        self.seen
            .entry(pod.to_string())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// How long `pod` has been seen released (its first sighting is now when unknown).
    fn released_for(&mut self, pod: &str) -> Duration {
        self.released
            .entry(pod.to_string())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// Forget pods that are no longer marked (or gone), and releases of pods no longer marked and released.
    fn retain_marked(&mut self, pods: &[PodInfo]) {
        self.seen
            .retain(|name, _| pods.iter().any(|p| &p.name == name && is_marked(p)));
        self.released.retain(|name, _| {
            pods.iter()
                .any(|p| &p.name == name && is_marked(p) && is_released(p))
        });
    }
}

/// The ordinal of StatefulSet pod `pod` of `cluster` (`<cluster>-<n>`).
pub fn ordinal(cluster: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

fn is_marked(p: &PodInfo) -> bool {
    p.annotations.get(DRAINING_ANNOTATION).map(String::as_str) == Some("true")
}

fn is_released(p: &PodInfo) -> bool {
    p.annotations
        .get(TOPICS_RELEASED_ANNOTATION)
        .map(String::as_str)
        == Some("true")
}

/// The broker endpoint of a pod (ready, with an IP and an AMQP port), for drain checks.
fn endpoint(p: &PodInfo) -> Option<BrokerPod> {
    brokers_from_pods(std::slice::from_ref(p))
        .clusters
        .into_values()
        .next()
        .and_then(|v| v.into_iter().next())
}

/// Drain the pods named `going` (from the synced pod list `pods`) of a cluster carrying `topics` (none for a
/// cluster no address needs): mark each, and once the mark is visible on the pod (and, with
/// [`KubeCtx::await_topic_release`] and topics, once subscription-service released it), count the messages of
/// every queue on it. True when every one of them is in the list, marked, released when awaited, has been seen
/// marked (and released) for the drain grace, and is empty. A pod missing from the list is never taken as drained.
/// What each pod waits for goes to [`ClusterReport::waits`].
async fn drain<C: Connector>(
    ctx: &KubeCtx,
    going: &[String],
    topics: &[String],
    pods: &[PodInfo],
    prov: &mut Provisioner<C>,
    clock: &mut DrainClock,
    report: &mut ClusterReport,
) -> Result<bool> {
    let mut all_empty = true;
    let mut wait = |report: &mut ClusterReport, pod: &str, count: Option<u64>, w: DrainWait| {
        report.draining.insert(pod.to_string(), count);
        report.waits.insert(pod.to_string(), w);
        all_empty = false;
    };
    for name in going {
        let Some(p) = pods.iter().find(|p| &p.name == name) else {
            warn!(pod = %name, "broker pod going away is not in the pod list (its claim may hold messages); waiting for it");
            wait(report, name, None, DrainWait::NotListed);
            continue;
        };
        if !is_marked(p) {
            info!(pod = %p.name, "marking broker pod as draining");
            ctx.set_draining(&p.name, true).await?;
            wait(report, &p.name, None, DrainWait::Marking);
            continue;
        }
        let marked_for = clock.marked_for(&p.name);
        if let Some(w) = release_wait(p, topics, ctx.await_topic_release, pods) {
            info!(pod = %p.name, wait = %w.describe(&p.name).unwrap_or_default(),
                "draining broker pod holds topics; waiting for subscription-service to hand them over and release it");
            wait(report, &p.name, None, w);
            continue;
        }
        let released_for =
            (ctx.await_topic_release && !topics.is_empty()).then(|| clock.released_for(&p.name));
        let Some(ep) = endpoint(p) else {
            warn!(pod = %p.name, "draining broker pod is not reachable (not ready); waiting");
            wait(report, &p.name, None, DrainWait::NotReady);
            continue;
        };
        match prov.messages_on(&ep).await {
            Ok(counts) => {
                let total: u64 = counts.values().sum();
                report.draining.insert(p.name.clone(), Some(total));
                match count_wait(total, marked_for, released_for, clock.grace) {
                    None => {}
                    Some(w) => {
                        if total > 0 {
                            info!(pod = %p.name, messages = total, "broker pod still holds messages; waiting for consumers to empty it");
                        } else {
                            info!(pod = %p.name, marked_ms = marked_for.as_millis(),
                                released_ms = released_for.map(|d| d.as_millis()), grace_ms = clock.grace.as_millis(),
                                "broker pod is empty but within the drain grace (router-agents may still route to it); waiting");
                        }
                        wait(report, &p.name, Some(total), w);
                    }
                }
            }
            Err(e) => {
                warn!(pod = %p.name, error = %e, "cannot count messages on a draining broker; waiting");
                wait(report, &p.name, None, DrainWait::Unreachable);
            }
        }
    }
    Ok(all_empty)
}

/// The pods of StatefulSet `object` (of `cluster`) with ordinals `from..to`, and any other pod of it in `pods`
/// with an ordinal at or above `from` (e.g. one still terminating), in ordinal order.
fn pods_going(object: &str, cluster: &str, from: i32, to: i32, pods: &[PodInfo]) -> Vec<String> {
    let mut ordinals: BTreeSet<i32> = (from.max(0)..to).collect();
    ordinals.extend(
        pods.iter()
            .filter(|p| p.labels.get(CLUSTER_LABEL).map(String::as_str) == Some(cluster))
            .filter_map(|p| ordinal(object, &p.name))
            .filter(|o| *o >= from),
    );
    ordinals
        .into_iter()
        .map(|o| format!("{object}-{o}"))
        .collect()
}

/// Record a failed cluster pass: log, metric, report (the other clusters go on; this one is retried).
fn cluster_failed(ctx: &KubeCtx, report: &mut ClusterReport, cluster: &str, e: &Error) {
    warn!(%cluster, error = %e, "cluster pass failed; the other clusters go on, this one is retried");
    ctx.metrics.cluster_error(cluster);
    report.failed.insert(cluster.to_string(), e.to_string());
}

/// One reconcile of the broker clusters against the Kubernetes API. `pods` is the pod list when the pod watch
/// has synced (None: unknown, so nothing is scaled down, marked or deleted). Requests, in order: list the managed
/// StatefulSets, Services and PodDisruptionBudgets (a failed list fails the reconcile); per desired cluster (name
/// order) drain the pods above the flavor's count (keeping the current replicas until they are drained), clear
/// stale draining marks, and apply its Service, StatefulSet and PodDisruptionBudget — each only when the listed
/// object differs from the desired one; per cluster no address needs: drain every pod it has or had (mark, drain
/// grace, 0 messages), then delete its StatefulSet, PodDisruptionBudget and Service; a managed Service or
/// PodDisruptionBudget left without its StatefulSet and not needed is deleted. A failed call fails its cluster
/// only ([`ClusterReport::failed`]).
#[instrument(skip_all, fields(clusters = desired.len()))]
pub async fn reconcile_clusters<C: Connector>(
    ctx: &KubeCtx,
    desired: &BTreeMap<String, BrokerCluster>,
    pods: Option<&[PodInfo]>,
    prov: &mut Provisioner<C>,
    clock: &mut DrainClock,
) -> Result<ClusterReport> {
    let existing = ctx.list_clusters().await?;
    let services = ctx.list_services().await?;
    let budgets = ctx.list_pdbs().await?;
    if let Some(pods) = pods {
        clock.retain_marked(pods);
    }
    let mut report = ClusterReport::default();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for (name, cluster) in desired {
        let object = cluster.object_name();
        let live = Live {
            statefulset: existing.get(&object),
            service: services.get(&object).map(|l| &l.object),
            pdb: budgets.get(&object).map(|l| &l.object),
        };
        let r =
            reconcile_desired(ctx, cluster, &object, live, pods, prov, clock, &mut report).await;
        if let Err(e) = r {
            cluster_failed(ctx, &mut report, name, &e);
        }
        wanted.insert(object);
    }
    for (object, e) in existing.iter().filter(|(o, _)| !wanted.contains(*o)) {
        let Some(pods) = pods else {
            info!(cluster = %e.cluster, "no address needs this cluster, but the pod list is not synced yet; its drain waits");
            report.deferred.push(e.cluster.clone());
            continue;
        };
        let going = pods_going(object, &e.cluster, 0, e.replicas, pods);
        let r = match drain(ctx, &going, &[], pods, prov, clock, &mut report).await {
            Ok(true) => {
                info!(cluster = %e.cluster, "no address needs this cluster and its brokers are empty; deleting it");
                ctx.delete_cluster(object).await.map(|()| {
                    report.deleted.push(e.cluster.clone());
                })
            }
            Ok(false) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = r {
            cluster_failed(ctx, &mut report, &e.cluster, &err);
        }
    }
    for (object, l) in services
        .iter()
        .filter(|(o, _)| !wanted.contains(*o) && !existing.contains_key(*o))
    {
        info!(service = %object, "managed Service without its StatefulSet and no longer needed; deleting it");
        if let Err(e) = ctx.delete_service(object).await {
            cluster_failed(ctx, &mut report, &l.cluster, &e);
        }
    }
    for (object, l) in budgets
        .iter()
        .filter(|(o, _)| !wanted.contains(*o) && !existing.contains_key(*o))
    {
        info!(pdb = %object, "managed PodDisruptionBudget without its StatefulSet and no longer needed; deleting it");
        if let Err(e) = ctx.delete_pdb(object).await {
            cluster_failed(ctx, &mut report, &l.cluster, &e);
        }
    }
    Ok(report)
}

/// The listed objects of one cluster.
#[derive(Clone, Copy)]
struct Live<'a> {
    statefulset: Option<&'a ExistingCluster>,
    service: Option<&'a serde_json::Value>,
    pdb: Option<&'a serde_json::Value>,
}

/// One desired cluster: drain what goes (scale-down), clear stale marks, apply what differs.
#[allow(clippy::too_many_arguments)]
async fn reconcile_desired<C: Connector>(
    ctx: &KubeCtx,
    cluster: &BrokerCluster,
    object: &str,
    live: Live<'_>,
    pods: Option<&[PodInfo]>,
    prov: &mut Provisioner<C>,
    clock: &mut DrainClock,
    report: &mut ClusterReport,
) -> Result<()> {
    let name = &cluster.name;
    let target = cluster.replicas;
    let mut replicas = target;
    if let Some(cur) = live.statefulset.map(|e| e.replicas)
        && cur > target
    {
        match pods {
            None => {
                info!(cluster = %name, from = cur, to = target, "scale-down waits: the pod list is not synced yet");
                report.deferred.push(name.clone());
                replicas = cur;
            }
            Some(pods) => {
                let going = pods_going(object, name, target, cur, pods);
                if drain(ctx, &going, &cluster.topics, pods, prov, clock, report).await? {
                    info!(cluster = %name, from = cur, to = target, "drained; scaling down");
                } else {
                    replicas = cur;
                }
            }
        }
    }
    if let Some(pods) = pods {
        for p in pods
            .iter()
            .filter(|p| p.labels.get(CLUSTER_LABEL) == Some(name))
        {
            if is_marked(p) && ordinal(object, &p.name).is_some_and(|o| o < replicas.min(target)) {
                info!(pod = %p.name, "broker pod no longer goes away; clearing its draining mark");
                if is_released(p) {
                    ctx.clear_draining_and_release(&p.name).await?;
                } else {
                    ctx.set_draining(&p.name, false).await?;
                }
            }
        }
    }
    let svc = ctx.ensure_service(cluster, live.service).await?;
    let sts = ctx
        .ensure_statefulset(cluster, replicas, live.statefulset.map(|e| &e.object))
        .await?;
    let pdb = ctx.ensure_pdb(cluster, live.pdb).await?;
    report.patches += usize::from(svc) + usize::from(sts) + usize::from(pdb);
    if svc || sts || pdb {
        report.applied.push(name.clone());
    } else {
        report.unchanged.push(name.clone());
    }
    Ok(())
}

/// Where the broker pods come from (shared with the other binaries).
pub use maas_source::BrokerSource;

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

/// What a pass found, for `/readyz` and `--once`.
struct PassStatus<'a> {
    generation: u64,
    pass: &'a PassReport,
    clusters: Option<&'a Result<ClusterReport>>,
    /// Desired clusters without broker pods -> their addresses (all pending).
    no_pods: &'a BTreeMap<String, usize>,
    /// Pods whose provisioned annotation could not be set -> why.
    annotate_failed: &'a BTreeMap<String, String>,
}

/// The status of a pass: (ready, detail).
fn status(st: &PassStatus<'_>) -> (bool, String) {
    let mut problems = Vec::new();
    match st.clusters {
        Some(Err(e)) => problems.push(format!("Kubernetes: {e}")),
        Some(Ok(r)) => {
            for (cluster, e) in &r.failed {
                problems.push(format!("cluster {cluster}: {e}"));
            }
            if !r.deferred.is_empty() {
                problems.push(format!(
                    "pod list not synced yet: scale-down/removal of {} waits",
                    r.deferred.join(", ")
                ));
            }
        }
        None => {}
    }
    for (cluster, n) in st.no_pods {
        problems.push(format!(
            "cluster {cluster} has no ready broker pod yet: {n} address(es) pending"
        ));
    }
    if let Some(Ok(r)) = st.clusters
        && !r.draining.is_empty()
    {
        problems.push(format!("{} pod(s) draining", r.draining.len()));
        problems.extend(r.waits.iter().filter_map(|(pod, w)| w.describe(pod)));
    }
    for (pod, reason) in &st.pass.pods_failed {
        problems.push(format!("broker {pod}: {reason}"));
    }
    for ((pod, queue), n) in &st.pass.holding {
        problems.push(format!(
            "queue {queue} on {pod} holds {n} message(s); kept until empty"
        ));
    }
    if st.pass.pending > 0 && st.pass.pods_failed.is_empty() {
        problems.push(format!("{} address(es) pending", st.pass.pending));
    }
    for (pod, e) in st.annotate_failed {
        problems.push(format!(
            "pod {pod}: cannot set {PROVISIONED_ANNOTATION}: {e}"
        ));
    }
    if problems.is_empty() {
        (
            true,
            format!(
                "generation {} provisioned on {} broker pod(s)",
                st.generation, st.pass.pods_ok
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
                // No pod list at all: nothing is ever drained, scaled down or deleted in this mode.
                (last_brokers.clone().unwrap_or_default(), None)
            }
            BrokerSource::Pods(rx) => {
                let st = rx.borrow_and_update().clone();
                // Provisioning a pod seen ready is safe from a partial list; drains need the synced one.
                (
                    brokers_from_pods(&st.pods),
                    st.synced.then(|| st.pods.clone()),
                )
            }
        };
        let (outcome_ok, detail, retry_soon) = pass(
            &config,
            state.generation,
            &current_brokers,
            pods.as_deref(),
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

/// One pass: clusters (Kubernetes mode), then provisioning, then (Kubernetes mode, pod list synced) the
/// provisioned annotations. `pods`: the synced pod list (None: unknown). (converged, readiness detail, retry soon).
async fn pass<C: Connector>(
    config: &Config,
    generation: u64,
    brokers: &Brokers,
    pods: Option<&[PodInfo]>,
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
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let cluster_result = match kube {
        Some(ctx) => {
            // Boxed: keeps the loop's future shallow (its layout nests every await below).
            let r = Box::pin(reconcile_clusters(ctx, &clusters, pods, prov, clock)).await;
            match &r {
                Ok(rep) => {
                    metrics.drains_in_progress.set(gauge(rep.draining.len()));
                    metrics.set_drain_waits(rep.waits.values().map(DrainWait::label));
                    metrics.clusters_failing.set(gauge(rep.failed.len()));
                }
                Err(e) => {
                    warn!(error = %e, "cluster reconcile failed; retrying with backoff");
                    metrics.clusters_failing.set(gauge(clusters.len()));
                }
            }
            Some(r)
        }
        None => None,
    };
    let desired = desired_per_cluster(config);
    let report = prov.pass(&desired, brokers).await;
    let mut annotate_failed = BTreeMap::new();
    if let (Some(ctx), Some(pods)) = (kube, pods) {
        for (pod, hash) in &report.provisioned {
            let Some(p) = pods.iter().find(|p| &p.name == pod) else {
                continue;
            };
            if is_marked(p) || p.annotations.get(PROVISIONED_ANNOTATION) == Some(hash) {
                continue;
            }
            match ctx.set_provisioned(pod, hash).await {
                Ok(()) => {
                    info!(%pod, %hash, "broker pod holds every address it should; annotated provisioned")
                }
                Err(e) => {
                    warn!(%pod, error = %e, "cannot annotate broker pod as provisioned; retrying");
                    annotate_failed.insert(pod.clone(), e.to_string());
                }
            }
        }
    }
    metrics
        .pods_provisioned
        .set(gauge(report.provisioned.len()));
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
        .set(gauge(report.pods_failed.len()));
    let (ok, detail) = status(&PassStatus {
        generation,
        pass: &report,
        clusters: cluster_result.as_ref(),
        no_pods: &no_pods,
        annotate_failed: &annotate_failed,
    });
    let retry_soon = !report.holding.is_empty()
        || matches!(&cluster_result, Some(Ok(r)) if !r.draining.is_empty() || !r.deferred.is_empty());
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
#[allow(clippy::unwrap_used)]
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

    fn pod(name: &str, cluster: &str) -> PodInfo {
        PodInfo {
            name: name.into(),
            host: String::new(),
            phase: "Running".into(),
            ready: true,
            ports: BTreeMap::new(),
            labels: BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster.to_string())]),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn pods_going_cover_every_ordinal_and_stragglers() {
        // Scale-down 3 -> 1: ordinals 1 and 2, whether their pods are listed or not.
        assert_eq!(pods_going("o", "o", 1, 3, &[]), vec!["o-1", "o-2"]);
        // A removal with no pod listed still names every ordinal (none is taken as drained).
        assert_eq!(pods_going("o", "o", 0, 2, &[]), vec!["o-0", "o-1"]);
        // A pod above the replicas (still terminating) is drained too; pods of other clusters or below are not.
        let pods = [
            pod("o-0", "o"),
            pod("o-4", "o"),
            pod("o-9", "other"),
            pod("ox-1", "o"),
        ];
        assert_eq!(pods_going("o", "o", 1, 2, &pods), vec!["o-1", "o-4"]);
        // Derived object names: pods are named after the StatefulSet, grouped by the cluster label.
        let pods = [pod("b-1orders-0a1b2c3d-0", "1orders")];
        assert_eq!(
            pods_going("b-1orders-0a1b2c3d", "1orders", 0, 0, &pods),
            vec!["b-1orders-0a1b2c3d-0"]
        );
        assert!(pods_going("o", "o", 2, 2, &[]).is_empty());
    }

    fn broker(name: &str, cluster: &str, annotations: &[(&str, &str)]) -> PodInfo {
        let mut p = pod(name, cluster);
        p.host = "10.0.0.1".into();
        p.ports = BTreeMap::from([(
            "broker".to_string(),
            BTreeMap::from([("amqp".to_string(), 5672)]),
        )]);
        p.labels.insert(
            maas_model::pods::COMPONENT_LABEL.to_string(),
            maas_model::pods::BROKER_COMPONENT.to_string(),
        );
        for (k, v) in annotations {
            p.annotations.insert(k.to_string(), v.to_string());
        }
        p
    }

    #[test]
    fn a_drain_waits_for_the_release_only_when_asked_and_the_cluster_carries_topics() {
        let topics: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        let marked = [(DRAINING_ANNOTATION, "true")];
        let pods = vec![
            broker("c-0", "c", &[]),
            broker("c-1", "c", &marked),
            broker("x-0", "x", &[]),
        ];
        // Off, or a cluster without topics (a removal: no address needs it): no wait.
        assert_eq!(release_wait(&pods[1], &topics, false, &pods), None);
        assert_eq!(release_wait(&pods[1], &[], true, &pods), None);
        // On: waits, naming the topics whose links still point at c-1 (those it hands over).
        let Some(DrainWait::Release { topics: held, of }) =
            release_wait(&pods[1], &topics, true, &pods)
        else {
            panic!("waits")
        };
        assert_eq!(of, 12);
        let brokers = brokers_from_pods(&pods);
        let undrained: Vec<BrokerPod> = brokers
            .pods("c")
            .iter()
            .cloned()
            .map(|mut p| {
                p.draining = false;
                p
            })
            .collect();
        let expected: Vec<String> = topics
            .iter()
            .filter(|t| maas_model::topic_pod(t, &undrained).is_some_and(|p| p.name == "c-1"))
            .cloned()
            .collect();
        assert!(!expected.is_empty() && expected.len() < 12, "{expected:?}");
        assert_eq!(held, expected, "the topics c-1 lived on before it drained");
        // Released: no longer waits (the annotation must say "true").
        let mut released = pods.clone();
        released[1]
            .annotations
            .insert(TOPICS_RELEASED_ANNOTATION.into(), "true".into());
        assert_eq!(release_wait(&released[1], &topics, true, &released), None);
        released[1]
            .annotations
            .insert(TOPICS_RELEASED_ANNOTATION.into(), "false".into());
        assert!(release_wait(&released[1], &topics, true, &released).is_some());
        // A draining pod that holds no topic still waits (subscription-service releases it at once), saying so.
        let elsewhere: Vec<String> = topics
            .iter()
            .filter(|t| !expected.contains(t))
            .take(1)
            .cloned()
            .collect();
        let w = release_wait(&pods[1], &elsewhere, true, &pods).unwrap();
        assert_eq!(
            w.describe("c-1").unwrap(),
            "waiting for subscription-service to release c-1 (it holds none of the 1 topic(s) of its cluster)"
        );
    }

    #[test]
    fn release_waits_read_well_and_label_the_metric() {
        let names = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
        let w = DrainWait::Release {
            topics: vec!["news".into(), "sports".into()],
            of: 3,
        };
        assert_eq!(
            w.describe("b-1").unwrap(),
            "waiting for subscription-service to release b-1 (topics news, sports)"
        );
        assert_eq!(w.label(), "topic-release");
        let w = DrainWait::Release {
            topics: names(7),
            of: 9,
        };
        assert_eq!(
            w.describe("b-1").unwrap(),
            "waiting for subscription-service to release b-1 (topics t0, t1, t2, t3, t4, … (2 more))"
        );
        let w = DrainWait::Release {
            topics: vec![],
            of: 2,
        };
        assert_eq!(
            w.describe("b-2").unwrap(),
            "waiting for subscription-service to release b-2 (it holds none of the 2 topic(s) of its cluster)"
        );
        assert_eq!(DrainWait::Messages(3).describe("b-1"), None);
        let all = [
            DrainWait::NotListed,
            DrainWait::Marking,
            DrainWait::NotReady,
            DrainWait::Release {
                topics: vec![],
                of: 1,
            },
            DrainWait::Grace,
            DrainWait::Messages(1),
            DrainWait::Unreachable,
        ];
        let labels: Vec<&str> = all.iter().map(DrainWait::label).collect();
        assert_eq!(labels, DrainWait::LABELS);
    }

    #[test]
    fn after_the_count_messages_then_the_grace_since_mark_and_release() {
        let s = Duration::from_secs;
        let grace = s(5);
        assert_eq!(
            count_wait(3, s(60), Some(s(60)), grace),
            Some(DrainWait::Messages(3))
        );
        assert_eq!(count_wait(0, s(1), None, grace), Some(DrainWait::Grace));
        assert_eq!(count_wait(0, s(60), None, grace), None);
        // Released a moment ago: the router-agents may not have moved the topic's links yet.
        assert_eq!(
            count_wait(0, s(60), Some(s(1)), grace),
            Some(DrainWait::Grace)
        );
        assert_eq!(count_wait(0, s(60), Some(s(5)), grace), None);
        assert_eq!(count_wait(0, s(0), Some(s(0)), Duration::ZERO), None);
    }

    #[test]
    fn status_says_what_a_drain_waits_for() {
        let pass = PassReport::default();
        let report = ClusterReport {
            draining: BTreeMap::from([("b-1".to_string(), None), ("o-1".to_string(), Some(2))]),
            waits: BTreeMap::from([
                (
                    "b-1".to_string(),
                    DrainWait::Release {
                        topics: vec!["news".into()],
                        of: 1,
                    },
                ),
                ("o-1".to_string(), DrainWait::Messages(2)),
            ]),
            ..ClusterReport::default()
        };
        let clusters = Ok(report);
        let (ok, detail) = status(&PassStatus {
            generation: 1,
            pass: &pass,
            clusters: Some(&clusters),
            no_pods: &BTreeMap::new(),
            annotate_failed: &BTreeMap::new(),
        });
        assert!(!ok);
        assert_eq!(
            detail,
            "2 pod(s) draining; waiting for subscription-service to release b-1 (topics news)"
        );
    }

    #[test]
    fn status_names_failed_clusters_deferred_drains_and_annotation_errors() {
        let pass = PassReport::default();
        let report = ClusterReport {
            failed: BTreeMap::from([(
                "a".to_string(),
                "Kubernetes API: apply StatefulSet a: boom".to_string(),
            )]),
            deferred: vec!["b".into()],
            ..ClusterReport::default()
        };
        let clusters = Ok(report);
        let annotate_failed = BTreeMap::from([("c-0".to_string(), "denied".to_string())]);
        let (ok, detail) = status(&PassStatus {
            generation: 3,
            pass: &pass,
            clusters: Some(&clusters),
            no_pods: &BTreeMap::new(),
            annotate_failed: &annotate_failed,
        });
        assert!(!ok);
        assert!(
            detail.contains("cluster a: Kubernetes API: apply StatefulSet a: boom"),
            "{detail}"
        );
        assert!(
            detail.contains("pod list not synced yet: scale-down/removal of b waits"),
            "{detail}"
        );
        assert!(
            detail.contains("pod c-0: cannot set maas.io/provisioned: denied"),
            "{detail}"
        );
        let clusters = Ok(ClusterReport::default());
        let (ok, detail) = status(&PassStatus {
            generation: 3,
            pass: &pass,
            clusters: Some(&clusters),
            no_pods: &BTreeMap::new(),
            annotate_failed: &BTreeMap::new(),
        });
        assert!(ok, "{detail}");
        assert_eq!(detail, "generation 3 provisioned on 0 broker pod(s)");
    }
}
