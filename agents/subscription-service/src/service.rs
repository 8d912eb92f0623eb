//! The loop: a pass every `interval` and on every change of the addresses or the broker pods.
//!
//! A pass: the topics of the address set with their cluster's pods ([`plan::topics`]); on every pod, over its
//! management connection, the queues bound to each of its cluster's topics (`listQueues`); the plan
//! ([`plan::plan`]); then the moves, a few at a time ([`mover::move_queue`]), every target queue created first
//! (so a publisher already routed to the new pod loses nothing to a missing subscription queue); metrics and
//! `/readyz`. Errors never stop the loop: what failed is retried on the next pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use maas_model::{Brokers, Config, brokers_from_pods, parse_brokers};
use maas_ops::Health;
use maas_source::ConfigState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::BrokerPool;
use crate::metrics::Metrics;
use crate::mover::{MoveConfig, MoveContext, MoveError, Moved, move_queue};
use crate::plan::{self, Move, Observed, Plan};

/// How long a pass may take to wind down after SIGTERM before it is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Management requests in flight per pod while listing.
const LIST_WINDOW: usize = 32;

/// Where the broker pods come from (shared with the other binaries).
pub use maas_source::BrokerSource;

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
    /// Moves that finished.
    pub moved: Vec<(Move, Moved)>,
    /// Moves that did not: the move and why.
    pub failed: Vec<(Move, MoveError)>,
}

impl PassReport {
    /// True when, after the pass, every subscription seen sits on its topic's pod.
    pub fn settled(&self) -> bool {
        self.unreachable.is_empty()
            && self.failed.is_empty()
            && self.plan.stranded.is_empty()
            && self.plan.unknown.is_empty()
    }

    /// `/readyz` text: what is in place, or every problem.
    pub fn status(&self) -> String {
        let in_place = self.plan.in_place.len() + self.moved.len();
        if self.settled() {
            let mut s = format!("{in_place} durable subscription(s) on their topics' pods");
            if !self.moved.is_empty() {
                let n: u64 = self.moved.iter().map(|(_, m)| m.messages).sum();
                s.push_str(&format!(
                    "; moved {} queue(s) with {n} message(s) in the last pass",
                    self.moved.len()
                ));
            }
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
        problems.join("; ")
    }
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

/// One pass over `config` and `brokers`.
pub async fn pass(
    config: &Config,
    brokers: &Brokers,
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
    let plan = plan::plan(&topics, &observed);
    let mut report = PassReport {
        unreachable,
        ..PassReport::default()
    };
    metrics.set_subscriptions(
        plan.in_place.len(),
        plan.moves.len(),
        0,
        plan.stranded.len(),
    );
    for s in &plan.stranded {
        warn!(queue = %s.queue, topic = %s.topic, pod = %s.pod, messages = s.messages,
            "durable subscription cannot move: every pod of its topic's cluster drains");
    }
    if !plan.moves.is_empty() {
        let what: Vec<String> = plan.moves.iter().map(Move::describe).collect();
        info!(
            moves = plan.moves.len(),
            "moving durable subscriptions to their topics' pods"
        );
        health.set_not_ready(format!(
            "moving {} subscription queue(s): {}",
            plan.moves.len(),
            what.join(", ")
        ));
        // Every target queue first: publishers already routed to the new pod then lose nothing.
        let ensured: Vec<(usize, Result<(), MoveError>)> =
            stream::iter(plan.moves.iter().enumerate())
                .map(|(i, m)| async move {
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
        let results: Vec<(usize, Result<Moved, MoveError>)> =
            stream::iter(plan.moves.iter().enumerate())
                .map(|(i, m)| {
                    let blocked = blocked.get(&i).cloned();
                    async move {
                        if let Some(e) = blocked {
                            return (i, Err(e));
                        }
                        (i, run_move(m, pool, metrics, &cfg.moves, shutdown).await)
                    }
                })
                .buffer_unordered(cfg.parallel.max(1))
                .collect()
                .await;
        let mut results = results;
        results.sort_by_key(|(i, _)| *i);
        for (i, r) in results {
            let m = plan.moves[i].clone();
            match r {
                Ok(done) => report.moved.push((m, done)),
                Err(e) => {
                    if !matches!(e, MoveError::Abandoned) {
                        warn!(queue = %m.queue, topic = %m.topic, from = %m.from.name, to = %m.to.name, error = %e,
                            "cannot move a durable subscription; retrying on the next pass");
                    }
                    report.failed.push((m, e));
                }
            }
        }
        metrics.set_subscriptions(
            plan.in_place.len() + report.moved.len(),
            0,
            report.failed.len(),
            plan.stranded.len(),
        );
    }
    report.plan = plan;
    report
}

async fn run_move(
    m: &Move,
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
        move_queue(m, &ctx, cfg, &progress, shutdown).await
    }
    .await;
    match &r {
        Ok(done) => metrics.move_done("ok", done.took),
        Err(e) => {
            if let MoveError::Broker(b) = e
                && b.connection
            {
                pool.lost(&m.from.name);
                pool.lost(&m.to.name);
            }
            metrics.move_done(e.label(), started.elapsed());
        }
    }
    r
}

/// Run the loop until shutdown (or once).
pub async fn run_loop(
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    mut brokers: BrokerSource,
    pool: BrokerPool,
    health: Health,
    metrics: Metrics,
    cfg: LoopConfig,
    shutdown: CancellationToken,
) -> Outcome {
    let mut last_error_events = 0;
    let mut last_brokers: Option<Brokers> = None;
    let mut brokers_error_hash = String::new();
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
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(cfg.interval) => {}
                r = config_rx.changed() => if r.is_err() { return Outcome::Stopped },
                r = brokers.changed() => if r.is_err() { return Outcome::Stopped },
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
        let current = match &mut brokers {
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
                last_brokers.clone().unwrap_or_default()
            }
            BrokerSource::Pods(rx) => brokers_from_pods(&rx.borrow_and_update().pods),
        };
        // At shutdown a pass gets a few seconds to wind down (moves close their links: the old pod takes back
        // what it delivered and was not settled); then it is dropped, which closes its connections all the same.
        let report = tokio::select! {
            r = pass(&config, &current, &pool, &metrics, &health, &cfg, &shutdown) => r,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => return Outcome::Stopped,
        };
        metrics.passes.inc();
        if shutdown.is_cancelled() {
            return Outcome::Stopped;
        }
        let status = report.status();
        if report.settled() {
            health.set_ready(status.clone());
        } else {
            health.set_not_ready(status.clone());
        }
        if cfg.once {
            return if report.settled() {
                Outcome::Settled
            } else {
                Outcome::NotSettled(status)
            };
        }
    }
}
