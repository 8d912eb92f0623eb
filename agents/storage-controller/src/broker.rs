//! Provisioning brokers: the broker management operations as a trait ([`BrokerMgmt`], implemented over Artemis
//! AMQP management in [`crate::artemis`] and by in-memory fakes in tests), the executor that runs one pod's
//! [`Plan`] ([`provision_pod`]), and the [`Provisioner`] that keeps a connection and an [`Ownership`] per broker pod
//! and provisions every pod of every cluster in one pass.
//!
//! Each pass reads the broker (`getAddressNames`, `getQueueNames`, and the owner — `getUser`, `getAddress` — of
//! queues not desired there that it has not asked about yet), plans, and writes only what differs: a pass over
//! brokers that already hold what they should — also the first pass after a restart — makes zero writes.
//! Operations are pipelined (`window` in flight per broker); addresses are created before queues; every queue is
//! created with `user` [`crate::provision::QUEUE_USER`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use maas_model::{AddressKind, BrokerPod, Brokers};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::provision::{
    Actual, BrokerDesired, Op, Ownership, Plan, QueueOwner, Routing, owner_lookups, plan,
    provisioned_hash,
};

/// A broker operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerError {
    /// Metric label (`timeout`, `disconnected`, `failed`, `connect`, ...).
    pub label: &'static str,
    /// What happened, for logs and status.
    pub message: String,
    /// True when the connection is unusable (drop it and reconnect on the next pass).
    pub connection: bool,
}

/// How a create or remove ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The broker changed.
    Changed,
    /// Nothing to change: already there (create) or already gone (remove).
    Unchanged,
}

/// The broker management operations the controller uses (Artemis `activemq.management`).
pub trait BrokerMgmt: Send + Sync {
    /// `getAddressNames`.
    fn address_names(&self) -> impl Future<Output = Result<Vec<String>, BrokerError>> + Send;
    /// `getQueueNames`.
    fn queue_names(&self) -> impl Future<Output = Result<Vec<String>, BrokerError>> + Send;
    /// `createAddress(name, routing)`.
    fn create_address(
        &self,
        name: &str,
        routing: Routing,
    ) -> impl Future<Output = Result<Done, BrokerError>> + Send;
    /// `createQueue` of a durable ANYCAST queue `name` on address `name`, `user` [`crate::provision::QUEUE_USER`].
    fn create_queue(&self, name: &str) -> impl Future<Output = Result<Done, BrokerError>> + Send;
    /// `createQueue` of a durable MULTICAST queue `name` bound to address `topic` (a durable subscription), `user`
    /// [`crate::provision::QUEUE_USER`].
    fn create_subscription(
        &self,
        name: &str,
        topic: &str,
    ) -> impl Future<Output = Result<Done, BrokerError>> + Send;
    /// `destroyQueue(name)`.
    fn destroy_queue(&self, name: &str) -> impl Future<Output = Result<Done, BrokerError>> + Send;
    /// `deleteAddress(name)`.
    fn delete_address(&self, name: &str) -> impl Future<Output = Result<Done, BrokerError>> + Send;
    /// `queue.<name>.getMessageCount`.
    fn message_count(&self, queue: &str) -> impl Future<Output = Result<u64, BrokerError>> + Send;
    /// `queue.<name>.getUser` and `getAddress`: who made the queue and where it is bound. None when the queue does
    /// not exist (any more).
    fn queue_owner(
        &self,
        queue: &str,
    ) -> impl Future<Output = Result<Option<QueueOwner>, BrokerError>> + Send;
    /// True once the connection is gone.
    fn is_closed(&self) -> bool;
}

/// Opens management connections to broker pods.
pub trait Connector: Send + Sync {
    /// The connection type.
    type Broker: BrokerMgmt + 'static;
    /// Connect to `pod` (bounded by a timeout).
    fn connect(
        &self,
        pod: &BrokerPod,
    ) -> impl Future<Output = Result<Self::Broker, BrokerError>> + Send;
}

/// What one pass over one broker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodReport {
    /// Operations that changed the broker.
    pub writes: usize,
    /// Queues that should go but still hold messages: name -> count.
    pub holding: BTreeMap<String, u64>,
    /// Failed operations: (operation label, name, error).
    pub failed: Vec<(String, String, String)>,
    /// Desired queues/topics in place after the pass.
    pub ready: usize,
    /// Desired queues/topics still missing after the pass.
    pub pending: usize,
}

/// The outcome of one removal group (all ops of one name).
enum RemovalOutcome {
    Done {
        writes: usize,
        gone_queue: bool,
        gone_address: bool,
    },
    Holding(u64),
    Failed(Op, BrokerError),
}

/// Run one broker's pass: read, plan, remove (queues only when empty), create. `owned` is updated with what the
/// broker holds afterwards. Queues named in `keep` are never removed ([`crate::provision::handed_over`]).
pub async fn provision_pod<B: BrokerMgmt>(
    broker: &B,
    desired: &BrokerDesired,
    keep: &BTreeSet<String>,
    owned: &mut Ownership,
    metrics: &Metrics,
    window: usize,
) -> Result<PodReport, BrokerError> {
    let (addresses, queues) = futures_util::join!(broker.address_names(), broker.queue_names());
    let mut actual = Actual::from_names(addresses?, queues?);
    let mut report = PodReport::default();
    let window = window.max(1);

    // Who made the queues that may have to go (asked once per queue; the answer is kept in `owned`).
    owned.retain_owners(&actual);
    let lookups = owner_lookups(desired, &actual, owned);
    let answers: Vec<(String, Result<Option<QueueOwner>, BrokerError>)> = stream::iter(lookups)
        .map(|q| async move {
            let r = broker.queue_owner(&q).await;
            metrics.broker_result(
                "getUser",
                r.as_ref().map_or_else(|e| e.label, |_| "unchanged"),
            );
            (q, r)
        })
        .buffer_unordered(window)
        .collect()
        .await;
    let mut lookup_error = None;
    for (q, r) in answers {
        match r {
            Ok(Some(o)) => {
                if o.is_ours() {
                    debug!(queue = %q, address = %o.address, "queue made by this controller (recorded on the broker)");
                }
                owned.set_owner(&q, o);
            }
            Ok(None) => {
                actual.queues.remove(&q);
            }
            Err(e) => {
                report
                    .failed
                    .push(("getUser".to_string(), q.clone(), e.message.clone()));
                if e.connection {
                    lookup_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = lookup_error {
        return Err(e);
    }
    let Plan { removals, creates } = plan(desired, &actual, owned).keeping(keep);

    // Removals, grouped by name (destroyQueue then deleteAddress of the same name).
    let mut groups: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in removals {
        groups.entry(op.name().to_string()).or_default().push(op);
    }
    let outcomes: Vec<(String, RemovalOutcome)> = stream::iter(groups)
        .map(|(name, ops)| async move {
            let outcome = remove_group(broker, &ops, metrics).await;
            (name, outcome)
        })
        .buffer_unordered(window)
        .collect()
        .await;
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    for (name, outcome) in outcomes {
        match outcome {
            RemovalOutcome::Done {
                writes,
                gone_queue,
                gone_address,
            } => {
                report.writes += writes;
                if gone_queue {
                    actual.queues.remove(&name);
                }
                if gone_address {
                    actual.addresses.remove(&name);
                }
            }
            RemovalOutcome::Holding(count) => {
                report.holding.insert(name.clone(), count);
                blocked.insert(name);
            }
            RemovalOutcome::Failed(op, e) => {
                report
                    .failed
                    .push((op.label().to_string(), name.clone(), e.message.clone()));
                blocked.insert(name);
                if e.connection {
                    return Err(e);
                }
            }
        }
    }

    // Creates: every address first, then the queues whose address is in place.
    let (address_ops, queue_ops): (Vec<Op>, Vec<Op>) = creates
        .into_iter()
        .filter(|op| !blocked.contains(op.name()))
        .partition(|op| matches!(op, Op::CreateAddress { .. }));
    for batch in [address_ops, queue_ops] {
        let results: Vec<(Op, Result<Done, BrokerError>)> = stream::iter(batch)
            .filter(|op| {
                let skip = matches!(op, Op::CreateQueue { name } if !actual.addresses.contains(name) && blocked.contains(name));
                std::future::ready(!skip)
            })
            .map(|op| async move {
                let r = match &op {
                    Op::CreateAddress { name, routing } => broker.create_address(name, *routing).await,
                    Op::CreateQueue { name } => broker.create_queue(name).await,
                    Op::CreateSubscription { name, topic } => {
                        broker.create_subscription(name, topic).await
                    }
                    _ => Ok(Done::Unchanged),
                };
                metrics.broker_op(op.label(), &r);
                (op, r)
            })
            .buffer_unordered(window)
            .collect()
            .await;
        let mut connection_error = None;
        for (op, r) in results {
            match r {
                Ok(done) => {
                    if done == Done::Changed {
                        report.writes += 1;
                    }
                    match &op {
                        Op::CreateAddress { name, .. } => {
                            actual.addresses.insert(name.clone());
                        }
                        Op::CreateQueue { name } => {
                            actual.queues.insert(name.clone());
                            if done == Done::Changed {
                                owned.set_owner(name, QueueOwner::ours(name));
                            }
                        }
                        Op::CreateSubscription { name, topic } => {
                            actual.queues.insert(name.clone());
                            if done == Done::Changed {
                                owned.set_owner(name, QueueOwner::ours(topic));
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    report.failed.push((
                        op.label().to_string(),
                        op.name().to_string(),
                        e.message.clone(),
                    ));
                    blocked.insert(op.name().to_string());
                    if e.connection {
                        connection_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = connection_error {
            return Err(e);
        }
    }

    for (name, want) in desired {
        let present = match want.kind {
            AddressKind::Queue => actual.queues.contains(name) && actual.addresses.contains(name),
            AddressKind::Subscription => actual.queues.contains(name),
            _ => actual.addresses.contains(name),
        };
        if present && !blocked.contains(name) {
            report.ready += 1;
        } else {
            report.pending += 1;
        }
    }
    owned.update(desired, &actual);
    Ok(report)
}

async fn remove_group<B: BrokerMgmt>(broker: &B, ops: &[Op], metrics: &Metrics) -> RemovalOutcome {
    let mut writes = 0;
    let mut gone_queue = false;
    let mut gone_address = false;
    for op in ops {
        match op {
            Op::DestroyQueue { name } => {
                let count = broker.message_count(name).await;
                metrics.broker_result(
                    "getMessageCount",
                    count.as_ref().map_or_else(|e| e.label, |_| "unchanged"),
                );
                match count {
                    Ok(0) => {}
                    Ok(n) => return RemovalOutcome::Holding(n),
                    Err(e) => return RemovalOutcome::Failed(op.clone(), e),
                }
                let r = broker.destroy_queue(name).await;
                metrics.broker_op(op.label(), &r);
                match r {
                    Ok(done) => {
                        writes += usize::from(done == Done::Changed);
                        gone_queue = true;
                    }
                    Err(e) => return RemovalOutcome::Failed(op.clone(), e),
                }
            }
            Op::DeleteAddress { name } => {
                let r = broker.delete_address(name).await;
                metrics.broker_op(op.label(), &r);
                match r {
                    Ok(done) => {
                        writes += usize::from(done == Done::Changed);
                        gone_address = true;
                    }
                    Err(e) => return RemovalOutcome::Failed(op.clone(), e),
                }
            }
            _ => {}
        }
    }
    RemovalOutcome::Done {
        writes,
        gone_queue,
        gone_address,
    }
}

/// Sum of `getMessageCount` over every non-internal queue of a broker (drain check).
pub async fn total_messages<B: BrokerMgmt>(
    broker: &B,
    metrics: &Metrics,
) -> Result<BTreeMap<String, u64>, BrokerError> {
    let queues = broker.queue_names().await?;
    let mut out = BTreeMap::new();
    for q in queues
        .into_iter()
        .filter(|q| !crate::provision::is_internal(q))
    {
        let n = broker.message_count(&q).await;
        metrics.broker_result(
            "getMessageCount",
            n.as_ref().map_or_else(|e| e.label, |_| "unchanged"),
        );
        out.insert(q, n?);
    }
    Ok(out)
}

/// One broker pod as the provisioner tracks it.
struct PodState<B> {
    /// The pod as last seen (a changed host/port means a new connection).
    pod: BrokerPod,
    /// The open management connection, if any.
    conn: Option<B>,
    /// What is ours on this broker.
    owned: Ownership,
}

/// What one provisioning pass over every broker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Broker writes in the pass.
    pub writes: usize,
    /// Pods provisioned without error.
    pub pods_ok: usize,
    /// Pods that could not be reached or failed: pod -> reason.
    pub pods_failed: BTreeMap<String, String>,
    /// (pod, queue) -> messages, for queues that should go but hold messages.
    pub holding: BTreeMap<(String, String), u64>,
    /// Desired queues/topics in place, summed over pods.
    pub ready: usize,
    /// Desired queues/topics missing, summed over pods.
    pub pending: usize,
    /// Pods of a desired cluster holding everything they should (nothing pending, nothing failed) -> the
    /// [`provisioned_hash`] of what they hold (the value of [`crate::PROVISIONED_ANNOTATION`]).
    pub provisioned: BTreeMap<String, String>,
}

impl PassReport {
    /// True when every pod holds exactly what it should (nothing held, nothing failed or pending).
    pub fn converged(&self) -> bool {
        self.pods_failed.is_empty() && self.holding.is_empty() && self.pending == 0
    }
}

/// Keeps a management connection and an [`Ownership`] per broker pod; [`Provisioner::pass`] provisions them all.
pub struct Provisioner<C: Connector> {
    connector: C,
    metrics: Metrics,
    /// Requests in flight per broker.
    window: usize,
    pods: BTreeMap<String, PodState<C::Broker>>,
    /// Leave subscription queues that are not on their topic's pod to subscription-service
    /// ([`crate::provision::handed_over`]; `--await-topic-release`).
    handover: bool,
}

impl<C: Connector> Provisioner<C> {
    /// A provisioner with no pods yet.
    pub fn new(connector: C, metrics: Metrics, window: usize) -> Self {
        Provisioner {
            connector,
            metrics,
            window,
            pods: BTreeMap::new(),
            handover: false,
        }
    }

    /// With `on`, a subscription queue on a pod other than its topic's is left to subscription-service (which
    /// moves it and deletes it after the hand-over) instead of destroyed here once empty (`--await-topic-release`,
    /// docs/architecture.md §5). Off by default.
    pub fn with_topic_handover(mut self, on: bool) -> Self {
        self.handover = on;
        self
    }

    /// Provision every pod of every cluster in `brokers` with the addresses `desired` gives its cluster (a cluster
    /// absent from `desired` should hold none of ours). Pods are handled concurrently; pods no longer listed are
    /// forgotten (their connections closed).
    pub async fn pass(
        &mut self,
        desired: &BTreeMap<String, BrokerDesired>,
        brokers: &Brokers,
    ) -> PassReport {
        let empty = BrokerDesired::new();
        let mut listed: BTreeMap<String, (&BrokerPod, BrokerDesired, BTreeSet<String>)> =
            BTreeMap::new();
        // Pods of a desired cluster -> the hash of what they should hold.
        let mut hashes: BTreeMap<String, String> = BTreeMap::new();
        for (cluster, pods) in &brokers.clusters {
            let d = desired.get(cluster);
            // Only Ready pods are provisioned; placement (subscription queues on their topic's pod) counts every
            // pod, so a restarting pod keeps its topics.
            for p in pods.iter().filter(|p| p.ready) {
                // Subscription queues only on their topic's pod.
                let for_pod = crate::provision::for_pod(d.unwrap_or(&empty), &p.name, pods);
                if d.is_some() {
                    hashes.insert(p.name.clone(), provisioned_hash(&for_pod));
                }
                let keep = match d {
                    Some(d) if self.handover => crate::provision::handed_over(d, &for_pod),
                    _ => BTreeSet::new(),
                };
                listed.insert(p.name.clone(), (p, for_pod, keep));
            }
        }
        self.pods.retain(|name, _| listed.contains_key(name));
        for (name, (pod, _, _)) in &listed {
            let state = self.pods.entry(name.clone()).or_insert_with(|| PodState {
                pod: (*pod).clone(),
                conn: None,
                owned: Ownership::default(),
            });
            if state.pod.host != pod.host || state.pod.port != pod.port {
                state.conn = None;
            }
            state.pod = (*pod).clone();
        }
        let connector = &self.connector;
        let metrics = &self.metrics;
        let window = self.window;
        let none = BTreeSet::new();
        let results: Vec<(String, Result<PodReport, BrokerError>)> =
            futures_util::future::join_all(self.pods.iter_mut().map(|(name, state)| {
                let (d, keep) = listed.get(name).map_or((&empty, &none), |(_, d, k)| (d, k));
                async move {
                    (
                        name.clone(),
                        provision_one(connector, state, d, keep, metrics, window).await,
                    )
                }
            }))
            .await;
        let mut report = PassReport::default();
        for (pod, r) in results {
            match r {
                Ok(r) => {
                    report.writes += r.writes;
                    report.ready += r.ready;
                    report.pending += r.pending;
                    for (q, n) in r.holding {
                        warn!(%pod, queue = %q, messages = n, "queue no longer wanted but holds messages; keeping it until empty");
                        report.holding.insert((pod.clone(), q), n);
                    }
                    // Every desired address/queue in place (a failed removal of something else does not matter).
                    if r.pending == 0
                        && let Some(h) = hashes.get(&pod)
                    {
                        report.provisioned.insert(pod.clone(), h.clone());
                    }
                    if r.failed.is_empty() {
                        report.pods_ok += 1;
                    } else {
                        for (op, name, e) in &r.failed {
                            warn!(%pod, operation = %op, %name, error = %e, "broker operation failed; retrying on the next pass");
                        }
                        report.pods_failed.insert(
                            pod,
                            format!(
                                "{} operation(s) failed, first: {} {}: {}",
                                r.failed.len(),
                                r.failed[0].0,
                                r.failed[0].1,
                                r.failed[0].2
                            ),
                        );
                    }
                }
                Err(e) => {
                    warn!(%pod, error = %e, "cannot provision broker; retrying on the next pass");
                    report.pods_failed.insert(pod, e.message);
                }
            }
        }
        if report.writes > 0 {
            info!(
                writes = report.writes,
                pods = report.pods_ok,
                "brokers provisioned"
            );
        } else {
            debug!(pods = report.pods_ok, "brokers already provisioned");
        }
        report
    }

    /// Messages per non-internal queue on `pod` (a connection opened if needed), for drain checks.
    pub async fn messages_on(
        &mut self,
        pod: &BrokerPod,
    ) -> Result<BTreeMap<String, u64>, BrokerError> {
        let state = self
            .pods
            .entry(pod.name.clone())
            .or_insert_with(|| PodState {
                pod: pod.clone(),
                conn: None,
                owned: Ownership::default(),
            });
        if state.pod.host != pod.host || state.pod.port != pod.port {
            state.conn = None;
            state.pod = pod.clone();
        }
        ensure_conn(&self.connector, state).await?;
        let Some(conn) = state.conn.as_ref() else {
            return Err(BrokerError {
                label: "connect",
                message: "no connection".into(),
                connection: true,
            });
        };
        let r = total_messages(conn, &self.metrics).await;
        if matches!(&r, Err(e) if e.connection) {
            state.conn = None;
        }
        r
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

async fn ensure_conn<C: Connector>(
    connector: &C,
    state: &mut PodState<C::Broker>,
) -> Result<(), BrokerError> {
    if state.conn.as_ref().is_some_and(BrokerMgmt::is_closed) {
        state.conn = None;
    }
    if state.conn.is_none() {
        state.conn = Some(connector.connect(&state.pod).await?);
    }
    Ok(())
}

async fn provision_one<C: Connector>(
    connector: &C,
    state: &mut PodState<C::Broker>,
    desired: &BrokerDesired,
    keep: &BTreeSet<String>,
    metrics: &Metrics,
    window: usize,
) -> Result<PodReport, BrokerError> {
    ensure_conn(connector, state).await?;
    let PodState { conn, owned, .. } = state;
    let Some(c) = conn.as_ref() else {
        return Err(BrokerError {
            label: "connect",
            message: "no connection".into(),
            connection: true,
        });
    };
    let r = provision_pod(c, desired, keep, owned, metrics, window).await;
    if matches!(&r, Err(e) if e.connection) {
        *conn = None;
    }
    r
}

/// Default bound on opening one management connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
