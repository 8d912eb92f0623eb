//! The loop: a pass every `interval` and on every change of the addresses or the broker pods.
//!
//! A pass: the topics of the address set with their cluster's pods ([`plan::topics`]); on every pod, over its
//! management connection, the queues bound to each of its cluster's topics (`listQueues`); the plan
//! ([`plan::plan`]) and the merges of a client's queues made through different routers ([`merge::merges`], with
//! the router ids of a [`RouterSource`]); then the moves and merges, a few at a time ([`mover::move_queue`]),
//! every target queue of a move created first (so a publisher already routed to the new pod loses nothing to a
//! missing subscription queue); metrics and `/readyz`. Errors never stop the loop: what failed is retried on the
//! next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use maas_model::mesh::{parse_router_names, router_names_from_pods};
use maas_model::{Brokers, Config, brokers_from_pods, parse_brokers};
use maas_ops::Health;
use maas_source::{ConfigState, FileSnapshot, PodsState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::BrokerPool;
use crate::handover::{HandoverBook, Step};
use crate::merge;
use crate::metrics::Metrics;
use crate::mover::{MoveConfig, MoveContext, MoveError, Moved, move_queue};
use crate::plan::{self, Move, Observed, Plan};
use crate::release::Releaser;

/// `--once`: at most this many passes (copies, then the sweeps after the grace).
const ONCE_PASSES: u32 = 10;

/// How long a pass may take to wind down after SIGTERM before it is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Management requests in flight per pod while listing.
const LIST_WINDOW: usize = 32;

/// Where the broker pods come from (shared with the other binaries).
pub use maas_source::BrokerSource;

/// Where the router ids (router pod names, manifests/README.md "Stable router ids") come from, for the merge of a
/// client's subscription queues made through different routers ([`merge`]).
pub enum RouterSource {
    /// None: nothing is merged.
    None,
    /// The router pods among the pods the broker pods come from (`--kube`).
    BrokerPods,
    /// `--routers-file`, re-read on change (the last good content stays in force).
    File {
        path: String,
        rx: watch::Receiver<Arc<FileSnapshot>>,
    },
    /// config-service `podsense` with the router pods' selector.
    Podsense(watch::Receiver<Arc<PodsState>>),
}

/// How the loop behaves.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// A pass this often without changes.
    pub interval: Duration,
    /// Moves at the same time.
    pub parallel: usize,
    /// One pass, then exit.
    pub once: bool,
    pub moves: MoveConfig,
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown requested.
    Stopped,
    /// `--once`: every durable subscription sits on its topic's pod.
    Settled,
    /// `--once`: some do not; why (one line).
    NotSettled(String),
}

/// What one pass found and did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// The plan of the pass.
    pub plan: Plan,
    /// Pods that could not be listed: pod -> reason.
    pub unreachable: BTreeMap<String, String>,
    /// Copies that finished (the messages are on the topic's pod; the old queue stays until its sweep).
    pub moved: Vec<(Move, Moved)>,
    /// Sweeps that finished (the old queue deleted).
    pub swept: Vec<(Move, Moved)>,
    /// Merges that finished (a client's queue emptied into the one of the same subscription, then deleted).
    pub merged: Vec<(Move, Moved)>,
    /// Moves that did not: the move and why.
    pub failed: Vec<(Move, MoveError)>,
    /// Old queues kept until the router-agents moved the links, and when they are swept (None: their pod drains
    /// and is not released yet).
    pub waiting: Vec<(Move, Option<Instant>)>,
    /// Draining pods released in this pass.
    pub released_now: Vec<String>,
    /// Every released draining pod.
    pub released: BTreeSet<String>,
    /// Releases (or their removal) that failed.
    pub release_errors: Vec<String>,
    /// When the next old queue is due for its sweep.
    pub next_sweep: Option<Instant>,
}

impl PassReport {
    /// True when nothing but the hand-over's waiting holds the pass up.
    pub fn problem_free(&self) -> bool {
        self.unreachable.is_empty()
            && self.failed.is_empty()
            && self.plan.stranded.is_empty()
            && self.plan.unknown.is_empty()
            && self.release_errors.is_empty()
    }

    /// True when, after the pass, every subscription seen sits on its topic's pod (and nowhere else).
    pub fn settled(&self) -> bool {
        self.problem_free() && self.waiting.is_empty()
    }

    /// Durable subscription queues on their topics' pods after the pass.
    pub fn in_place(&self) -> usize {
        (self.plan.in_place.len() + self.swept.len()).saturating_sub(self.merged.len())
    }

    /// `; merged ...` and `; ... not merged: ...` (empty when nothing of the kind happened).
    fn merge_status(&self) -> String {
        let mut s = String::new();
        if !self.merged.is_empty() {
            let n: u64 = self.merged.iter().map(|(_, m)| m.messages).sum();
            s.push_str(&format!(
                "; merged {} client subscription queue(s) into the queue of the same subscription, with {n} message(s), in the last pass",
                self.merged.len()
            ));
        }
        if !self.plan.unmerged.is_empty() {
            let what: Vec<String> = self.plan.unmerged.iter().map(|u| u.describe()).collect();
            s.push_str(&format!("; {}", what.join("; ")));
        }
        s
    }

    /// `/readyz` text: what is in place, or every problem and what the hand-over waits for.
    pub fn status(&self) -> String {
        let in_place = self.in_place();
        let released = if self.released.is_empty() {
            String::new()
        } else {
            format!(
                "; released {}",
                self.released.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        if self.settled() {
            let mut s = format!("{in_place} durable subscription(s) on their topics' pods");
            let done = self.moved.len() + self.swept.len();
            if done > 0 {
                let n: u64 = self
                    .moved
                    .iter()
                    .chain(&self.swept)
                    .map(|(_, m)| m.messages)
                    .sum();
                s.push_str(&format!(
                    "; moved {done} queue(s) with {n} message(s) in the last pass"
                ));
            }
            s.push_str(&self.merge_status());
            s.push_str(&released);
            return s;
        }
        let mut problems = Vec::new();
        for (pod, reason) in &self.unreachable {
            problems.push(format!("broker {pod}: {reason}"));
        }
        for (m, e) in &self.failed {
            problems.push(format!("cannot move {}: {e}", m.describe()));
        }
        for s in &self.plan.stranded {
            problems.push(format!(
                "queue {} of topic {} on {} ({} message(s)) cannot move: every pod of its cluster drains",
                s.queue, s.topic, s.pod, s.messages
            ));
        }
        problems.extend(self.release_errors.iter().cloned());
        // The hand-over, per old pod.
        let mut by_pod: BTreeMap<&str, (bool, usize, Option<Instant>)> = BTreeMap::new();
        for (m, until) in &self.waiting {
            let e = by_pod
                .entry(m.from.name.as_str())
                .or_insert((m.from.draining, 0, *until));
            e.1 += 1;
            e.2 = match (e.2, until) {
                (Some(a), Some(b)) => Some(a.min(*b)),
                (a, b) => a.or(*b),
            };
        }
        let now = Instant::now();
        for (pod, (draining, n, until)) in by_pod {
            let when = until
                .map(|t| {
                    format!(
                        "swept in {:.1}s",
                        t.saturating_duration_since(now).as_secs_f64()
                    )
                })
                .unwrap_or_default();
            problems.push(match (draining, self.released.contains(pod), until) {
                (true, true, _) => format!(
                    "released {pod}: {n} old subscription queue(s) kept there until the router-agents moved the links; {when}"
                ),
                (true, false, _) => format!(
                    "{pod} drains: {n} subscription queue(s) copied to their topics' pods; not released yet"
                ),
                (false, _, _) => format!(
                    "{n} old subscription queue(s) on {pod} kept until the router-agents moved the links; {when}"
                ),
            });
        }
        let mut s = problems.join("; ");
        s.push_str(&self.merge_status());
        s.push_str(&released);
        s
    }
}

/// What a job of a pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Hand-over step 1: the queue and its messages to the topic's pod, the old queue kept.
    Copy,
    /// Hand-over step 3: what is left moved, then the old queue deleted.
    Sweep,
    /// A client's queue emptied into the queue of the same subscription on the topic's pod, then deleted.
    Merge,
}

/// The hand-over's state and where releases go.
pub struct Handover {
    pub book: HandoverBook,
    pub releaser: Releaser,
}

/// List the queues of every topic on every pod of its cluster.
async fn observe(
    pool: &BrokerPool,
    topics: &[plan::TopicPods],
) -> (Observed, BTreeMap<String, String>) {
    let listings = plan::listings(topics);
    pool.retain(|name| listings.contains_key(name));
    let results =
        futures_util::future::join_all(listings.into_values().map(|(pod, topics)| async move {
            let broker = match pool.get(&pod).await {
                Ok(b) => b,
                Err(e) => return (pod.name, Err(e.message)),
            };
            let listed: Vec<_> = stream::iter(topics)
                .map(|t| {
                    let broker = broker.clone();
                    async move {
                        let r = broker.queues_of(&t).await;
                        (t, r)
                    }
                })
                .buffer_unordered(LIST_WINDOW)
                .collect()
                .await;
            let mut by_topic = BTreeMap::new();
            for (t, r) in listed {
                match r {
                    Ok(q) => {
                        by_topic.insert(t, q);
                    }
                    Err(e) => {
                        if e.connection {
                            pool.lost(&pod.name);
                        }
                        return (pod.name, Err(e.message));
                    }
                }
            }
            (pod.name, Ok(by_topic))
        }))
        .await;
    let mut observed = Observed::new();
    let mut unreachable = BTreeMap::new();
    for (pod, r) in results {
        match r {
            Ok(by_topic) => {
                observed.insert(pod, by_topic);
            }
            Err(reason) => {
                unreachable.insert(pod, reason);
            }
        }
    }
    (observed, unreachable)
}

/// One pass over `config` and `brokers`. `external`: the draining pods released before this pass by someone this
/// run did not hear from (the pod annotation, the handover file of an earlier run). `routers`: the known router
/// ids (empty: nothing is merged).
#[allow(clippy::too_many_arguments)]
pub async fn pass(
    config: &Config,
    brokers: &Brokers,
    external: &BTreeSet<String>,
    routers: &BTreeSet<String>,
    handover: &mut Handover,
    pool: &BrokerPool,
    metrics: &Metrics,
    health: &Health,
    cfg: &LoopConfig,
    shutdown: &CancellationToken,
) -> PassReport {
    let topics = plan::topics(config, brokers);
    let (observed, unreachable) = observe(pool, &topics).await;
    for (pod, reason) in &unreachable {
        warn!(%pod, %reason, "cannot list the subscription queues of a broker pod; retrying on the next pass");
    }
    metrics
        .brokers_unreachable
        .set(i64::try_from(unreachable.len()).unwrap_or(i64::MAX));
    let mut plan = plan::plan(&topics, &observed);
    (plan.merges, plan.unmerged) = merge::merges(&topics, &observed, routers, &plan.moves);
    // Shown by /readyz and unmerged_subscriptions every pass; the log would repeat it every pass.
    for u in &plan.unmerged {
        tracing::debug!(reason = u.reason(), "{}", u.describe());
    }
    metrics.set_unmerged(plan.unmerged.iter().map(merge::Unmerged::reason));
    let now = Instant::now();
    handover.book.begin(brokers, external, &plan, now);
    let mut report = PassReport {
        unreachable,
        ..PassReport::default()
    };
    // What each move does now: copy, sweep, or wait for the links to go; then the merges.
    let mut work: Vec<(Move, Kind)> = Vec::new();
    for m in &plan.moves {
        match handover.book.step(m, now) {
            Step::Copy => work.push((m.clone(), Kind::Copy)),
            Step::Sweep => work.push((m.clone(), Kind::Sweep)),
            Step::Wait { until } => report.waiting.push((m.clone(), until)),
        }
    }
    work.extend(plan.merges.iter().map(|m| (m.clone(), Kind::Merge)));
    metrics.set_subscriptions(
        plan.in_place.len(),
        work.len(),
        0,
        plan.stranded.len(),
        report.waiting.len(),
    );
    for s in &plan.stranded {
        warn!(queue = %s.queue, topic = %s.topic, pod = %s.pod, messages = s.messages,
            "durable subscription cannot move: every pod of its topic's cluster drains");
    }
    if !work.is_empty() {
        let what: Vec<String> = work
            .iter()
            .map(|(m, kind)| match kind {
                Kind::Sweep => format!("{} (sweep)", m.describe()),
                Kind::Merge => format!("{} (merge)", m.describe()),
                Kind::Copy => m.describe(),
            })
            .collect();
        info!(
            moves = work.len(),
            "moving durable subscriptions to their topics' pods"
        );
        health.set_not_ready(format!(
            "moving {} subscription queue(s): {}",
            work.len(),
            what.join(", ")
        ));
        // Every target queue first: publishers already routed to the new pod then lose nothing. (A merge's target
        // is there: it was listed.)
        let ensured: Vec<(usize, Result<(), MoveError>)> = stream::iter(
            work.iter()
                .enumerate()
                .filter(|(_, (_, kind))| *kind != Kind::Merge),
        )
        .map(|(i, (m, _))| async move {
            let r = match pool.get(&m.to).await {
                Ok(b) => b
                    .create_subscription(&m.queue, &m.topic, m.user.as_deref())
                    .await
                    .map(|_| ())
                    .map_err(MoveError::from),
                Err(e) => Err(e.into()),
            };
            (i, r)
        })
        .buffer_unordered(LIST_WINDOW)
        .collect()
        .await;
        let mut blocked = BTreeMap::new();
        for (i, r) in ensured {
            if let Err(e) = r {
                blocked.insert(i, e);
            }
        }
        let mut results: Vec<(usize, Result<Moved, MoveError>)> =
            stream::iter(work.iter().enumerate())
                .map(|(i, (m, kind))| {
                    let blocked = blocked.get(&i).cloned();
                    async move {
                        if let Some(e) = blocked {
                            return (i, Err(e));
                        }
                        (
                            i,
                            run_move(m, *kind, pool, metrics, &cfg.moves, shutdown).await,
                        )
                    }
                })
                .buffer_unordered(cfg.parallel.max(1))
                .collect()
                .await;
        results.sort_by_key(|(i, _)| *i);
        for (i, r) in results {
            let (m, kind) = work[i].clone();
            match (r, kind) {
                (Ok(done), Kind::Sweep) => report.swept.push((m, done)),
                (Ok(done), Kind::Merge) => report.merged.push((m, done)),
                (Ok(done), Kind::Copy) => {
                    handover.book.copied(&m);
                    report.moved.push((m, done));
                }
                (Err(e), _) => {
                    if !matches!(e, MoveError::Abandoned) {
                        warn!(queue = %m.queue, topic = %m.topic, from = %m.from.name, to = %m.to.name,
                            to_queue = %m.to_queue, error = %e,
                            "cannot move a durable subscription; retrying on the next pass");
                    }
                    report.failed.push((m, e));
                }
            }
        }
    }
    // Release the draining pods whose subscriptions all sit on their topics' pods now, then tidy up.
    if !shutdown.is_cancelled() {
        let candidates = handover.book.releasable(brokers, &observed);
        if !candidates.is_empty() {
            let already = handover.book.released();
            let (done, errors) = handover.releaser.release(&already, &candidates).await;
            for pod in done {
                info!(%pod, "broker pod released: every durable subscription of its topics sits on their new pods; \
                    router-agents may move its topics' links now");
                handover.book.release(&pod, now);
                metrics.releases.inc();
                report.released_now.push(pod);
            }
            report.release_errors.extend(errors);
        }
        // A release annotation removed by hand while the pod still drains is put back (the router-agents would
        // otherwise bring the pod's topics back to it).
        if handover.releaser.annotates() {
            let missing: Vec<String> = handover
                .book
                .released()
                .into_iter()
                .filter(|p| !external.contains(p) && !report.released_now.contains(p))
                .collect();
            if !missing.is_empty() {
                let already = handover.book.released();
                let (_, errors) = handover.releaser.release(&already, &missing).await;
                report.release_errors.extend(errors);
            }
        }
        let stale: Vec<String> = brokers
            .clusters
            .values()
            .flatten()
            .filter(|p| !p.draining && external.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();
        let errors = handover
            .releaser
            .tidy(&handover.book.released(), &stale)
            .await;
        report.release_errors.extend(errors);
        for e in &report.release_errors {
            warn!(error = %e, "cannot release a broker pod (or remove its release); retrying on the next pass");
        }
    }
    // The copies of this pass wait for their sweep too.
    for (m, _) in &report.moved {
        report.waiting.push((m.clone(), handover.book.sweep_at(m)));
    }
    report.released = handover.book.released();
    report.next_sweep = report.waiting.iter().filter_map(|(_, t)| *t).min();
    metrics.set_subscriptions(
        (plan.in_place.len() + report.swept.len()).saturating_sub(report.merged.len()),
        0,
        report.failed.len(),
        plan.stranded.len(),
        report.waiting.len(),
    );
    metrics
        .released_pods
        .set(i64::try_from(report.released.len()).unwrap_or(i64::MAX));
    report.plan = plan;
    report
}

async fn run_move(
    m: &Move,
    kind: Kind,
    pool: &BrokerPool,
    metrics: &Metrics,
    cfg: &MoveConfig,
    shutdown: &CancellationToken,
) -> Result<Moved, MoveError> {
    let started = std::time::Instant::now();
    let r = async {
        let from = pool.get(&m.from).await?;
        let to = pool.get(&m.to).await?;
        let ctx = MoveContext {
            from,
            to,
            from_opts: pool.options_for(&m.from),
            to_opts: pool.options_for(&m.to),
            metrics: metrics.clone(),
        };
        let progress = AtomicU64::new(0);
        move_queue(m, &ctx, cfg, kind != Kind::Copy, &progress, shutdown).await
    }
    .await;
    let result = match &r {
        Ok(_) => "ok",
        Err(e) => {
            if let MoveError::Broker(b) = e
                && b.connection
            {
                pool.lost(&m.from.name);
                pool.lost(&m.to.name);
            }
            e.label()
        }
    };
    match kind {
        Kind::Sweep => metrics.sweep_done(result),
        Kind::Merge => metrics.merge_done(result),
        Kind::Copy => {
            let took = r.as_ref().map_or_else(|_| started.elapsed(), |d| d.took);
            metrics.move_done(result, took);
        }
    }
    r
}

/// Run the loop until shutdown (or once: passes until every subscription sits on its topic's pod and nowhere else,
/// waiting for the hand-over's sweeps in between).
#[allow(clippy::too_many_arguments)]
pub async fn run_loop(
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    mut brokers: BrokerSource,
    mut routers: RouterSource,
    pool: BrokerPool,
    mut handover: Handover,
    health: Health,
    metrics: Metrics,
    cfg: LoopConfig,
    shutdown: CancellationToken,
) -> Outcome {
    let mut last_error_events = 0;
    let mut last_brokers: Option<Brokers> = None;
    let mut brokers_error_hash = String::new();
    // Every router id seen since the start: a client's older queue may name a router pod that is gone by now (an
    // edge pod the Deployment replaced, a router scaled away).
    let mut known_routers: BTreeSet<String> = BTreeSet::new();
    let mut routers_error_hash = String::new();
    // Releases an earlier run wrote to the handover file: adopted on the first pass only (this run writes it).
    let mut from_file = match handover.releaser.load_file() {
        Ok(set) => set,
        Err(e) => {
            warn!(error = %e, "cannot read the handover file; it is written anew");
            BTreeSet::new()
        }
    };
    // Wait for the first complete configuration (and, from the Kubernetes API, the first pod list).
    loop {
        let config_ready = {
            let s = config_rx.borrow();
            (s.synced, s.config.is_some(), s.errors.join("; "))
        };
        let pods_ready = match &brokers {
            BrokerSource::Pods(rx) => rx.borrow().synced,
            BrokerSource::File { .. } => true,
        };
        if config_ready.0 && config_ready.1 && pods_ready {
            break;
        }
        if cfg.once && config_ready.0 && !config_ready.1 {
            return Outcome::NotSettled(format!(
                "no valid address configuration: {}",
                config_ready.2
            ));
        }
        health.set_not_ready("waiting for the address configuration and the broker pods");
        tokio::select! {
            r = config_rx.changed() => if r.is_err() { return Outcome::Stopped },
            r = brokers.changed() => if r.is_err() { return Outcome::Stopped },
            _ = shutdown.cancelled() => return Outcome::Stopped,
        }
    }
    let mut first = true;
    let mut next_sweep: Option<Instant> = None;
    let mut passes = 0u32;
    loop {
        if !first {
            // The next pass: after the interval, on a change, or when an old queue is due for its sweep.
            let wait = match next_sweep {
                Some(t) if cfg.once => t.saturating_duration_since(Instant::now()),
                Some(t) => t
                    .saturating_duration_since(Instant::now())
                    .min(cfg.interval),
                None => cfg.interval,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = config_rx.changed(), if !cfg.once => if r.is_err() { return Outcome::Stopped },
                r = brokers.changed(), if !cfg.once => if r.is_err() { return Outcome::Stopped },
                _ = shutdown.cancelled() => return Outcome::Stopped,
            }
        }
        first = false;
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
            continue;
        };
        let mut router_pods: Option<Vec<String>> = None;
        let (current, external) = match &mut brokers {
            BrokerSource::File { path, rx } => {
                let snap = rx.borrow_and_update().clone();
                match parse_brokers(path, &snap.content) {
                    Ok(b) => last_brokers = Some(b),
                    Err(errors) => {
                        if brokers_error_hash != snap.hash {
                            brokers_error_hash = snap.hash.clone();
                            metrics.config_errors.inc();
                            for e in &errors {
                                warn!(error = %e, "invalid brokers file; the last good one stays in force");
                            }
                        }
                        if cfg.once && last_brokers.is_none() {
                            let first = errors.first().map(ToString::to_string).unwrap_or_default();
                            return Outcome::NotSettled(format!("invalid brokers file: {first}"));
                        }
                    }
                }
                (
                    last_brokers.clone().unwrap_or_default(),
                    std::mem::take(&mut from_file),
                )
            }
            BrokerSource::Pods(rx) => {
                let pods = rx.borrow_and_update().clone();
                router_pods = Some(router_names_from_pods(&pods.pods));
                (
                    brokers_from_pods(&pods.pods),
                    maas_model::pods::released_from_pods(&pods.pods),
                )
            }
        };
        let seen = match &mut routers {
            RouterSource::None => Vec::new(),
            RouterSource::BrokerPods => router_pods.unwrap_or_default(),
            RouterSource::Podsense(rx) => router_names_from_pods(&rx.borrow_and_update().pods),
            RouterSource::File { path, rx } => {
                let snap = rx.borrow_and_update().clone();
                match parse_router_names(path, &snap.content) {
                    Ok(names) => names,
                    Err(errors) => {
                        if routers_error_hash != snap.hash {
                            routers_error_hash = snap.hash.clone();
                            metrics.config_errors.inc();
                            for e in &errors {
                                warn!(error = %e, "invalid routers file; the router ids known stay in force");
                            }
                        }
                        Vec::new()
                    }
                }
            }
        };
        known_routers.extend(seen);
        metrics
            .router_ids
            .set(i64::try_from(known_routers.len()).unwrap_or(i64::MAX));
        // At shutdown a pass gets a few seconds to wind down (moves close their links: the old pod takes back
        // what it delivered and was not settled); then it is dropped, which closes its connections all the same.
        let report = tokio::select! {
            r = pass(&config, &current, &external, &known_routers, &mut handover, &pool, &metrics, &health, &cfg, &shutdown) => r,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => return Outcome::Stopped,
        };
        metrics.passes.inc();
        passes += 1;
        if shutdown.is_cancelled() {
            return Outcome::Stopped;
        }
        next_sweep = report.next_sweep;
        let status = report.status();
        if report.settled() {
            health.set_ready(status.clone());
        } else {
            health.set_not_ready(status.clone());
        }
        if cfg.once {
            if report.settled() {
                return Outcome::Settled;
            }
            // Only the hand-over's sweeps left: wait for them (a pass as soon as the first is due).
            if !report.problem_free() || next_sweep.is_none() || passes >= ONCE_PASSES {
                return Outcome::NotSettled(status);
            }
        }
    }
}
