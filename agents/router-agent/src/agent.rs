//! The reconcile loop: keeps one management connection to the router, brings it to the latest desired state, and
//! keeps it there.
//!
//! - What the router holds is read once (a cheap READ of the marker entity when it proves the router already holds
//!   the desired generation; a full paged QUERY otherwise), then kept up to date from our own verified replies:
//!   reading the whole router on every change does not scale (QUERY cost grows with the offset).
//! - A change is applied as: DELETE marker, DELETE wrong/extra, CREATE missing (pipelined), verify each reply,
//!   CREATE marker. Bursts coalesce: while one change is applied, later ones wait and only the latest is applied.
//! - Reconnect (router restart) forgets everything known and resyncs. A paced background drift check re-reads the
//!   router and repairs what was changed by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use maas_amqp::options::{Backoff, ConnectOptions};
use maas_amqp::router::{ClientConfig, MgmtError, RouterClient};
use maas_model::entity::NAME_PREFIX;
use maas_model::{DigestSet, Entity, EntityType};
use maas_ops::Health;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::desired::Desired;
use crate::metrics::Metrics;
use crate::plan::{Known, MARKER_NAME, Plan, diff, marker_entity, marker_hash, plan_is_mesh_only};

/// Rows per QUERY page (what the router's own tools ask for).
pub const PAGE_SIZE: u64 = 500;
/// Attempts per QUERY page; each retry waits twice as long as the one before (a page deep into a large router
/// can take seconds: QUERY cost grows with the offset).
pub const PAGE_ATTEMPTS: u32 = 3;

/// How the agent talks to its router.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub router: ConnectOptions,
    pub client: ClientConfig,
    /// Background drift check period; zero disables it.
    pub drift_check_interval: Duration,
    pub backoff: Backoff,
}

/// Why a reconcile did not reach the desired state.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The connection is gone or a request timed out: reconnect and resync.
    #[error("router connection: {0}")]
    Connection(MgmtError),
    /// Some operations failed; retried with backoff. `resync`: what we knew of the router proved wrong.
    #[error("{} operation(s) failed: {}", failures.len(), failures.join("; "))]
    Failed { failures: Vec<String>, resync: bool },
}

impl ReconcileError {
    fn from_mgmt(e: MgmtError) -> Self {
        if e.is_connection_error() {
            ReconcileError::Connection(e)
        } else {
            // A timeout leaves what we know as it was (the next attempt repeats the request); anything else
            // says what we know may be wrong.
            let resync = !matches!(e, MgmtError::Timeout { .. });
            ReconcileError::Failed {
                failures: vec![e.to_string()],
                resync,
            }
        }
    }
}

/// Attributes asked for when reading the router: everything maas may set, per type.
pub fn query_attributes(t: EntityType) -> &'static [&'static str] {
    match t {
        EntityType::Address => &["name", "prefix", "pattern", "distribution", "waypoint"],
        EntityType::LinkRoute => &[
            "name",
            "prefix",
            "pattern",
            "direction",
            "connection",
            "containerId",
            "addExternalPrefix",
        ],
        EntityType::AutoLink => &["name", "address", "direction", "connection", "containerId"],
        EntityType::Connector => &[
            "name",
            "role",
            "host",
            "port",
            "saslMechanisms",
            "saslUsername",
            "saslPassword", // read back to compare: maas only sends file:<path>
            "sslProfile",
        ],
    }
}

/// Read every `maas-` entity of the router, page by page. With `paced`, pauses after each page for as long as the
/// page took, so a background check never keeps the router's management busy more than half the time.
pub async fn read_router(
    client: &RouterClient,
    metrics: &Metrics,
    paced: bool,
) -> Result<Vec<(EntityType, Map<String, Value>)>, MgmtError> {
    read_types(client, metrics, &EntityType::ALL, paced).await
}

/// [`read_router`] for some entity types only.
pub async fn read_types(
    client: &RouterClient,
    metrics: &Metrics,
    types: &[EntityType],
    paced: bool,
) -> Result<Vec<(EntityType, Map<String, Value>)>, MgmtError> {
    let mut rows_out = Vec::new();
    for &t in types {
        let attrs = query_attributes(t);
        let mut offset: u32 = 0;
        loop {
            let started = Instant::now();
            let page = query_page_retried(client, metrics, t, attrs, offset).await?;
            let n = page.rows.len();
            for row in page.rows {
                let map: Map<String, Value> =
                    page.attribute_names.iter().cloned().zip(row).collect();
                if map
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with(NAME_PREFIX))
                {
                    rows_out.push((t, map));
                }
            }
            if (n as u64) < PAGE_SIZE {
                break;
            }
            offset = offset.saturating_add(n as u32);
            if paced {
                tokio::time::sleep(started.elapsed()).await;
            }
        }
    }
    Ok(rows_out)
}

/// One QUERY page; a timeout is retried on the same connection with twice the timeout, up to [`PAGE_ATTEMPTS`]
/// attempts, instead of starting the whole read again.
async fn query_page_retried(
    client: &RouterClient,
    metrics: &Metrics,
    t: EntityType,
    attrs: &[&str],
    offset: u32,
) -> Result<maas_amqp::router::QueryPage, MgmtError> {
    let mut timeout = client.config().request_timeout;
    let mut attempt = 1;
    loop {
        let page = client
            .query_page_with_timeout(t.full_name(), attrs, offset, PAGE_SIZE, Some(timeout))
            .await;
        metrics.op("QUERY", t.short_name(), result_label(&page));
        match page {
            Err(MgmtError::Timeout { .. }) if attempt < PAGE_ATTEMPTS => {
                warn!(
                    entity_type = t.short_name(),
                    offset,
                    ?timeout,
                    "QUERY page got no reply in time; asking again with a longer timeout"
                );
                attempt += 1;
                timeout = timeout.saturating_mul(2);
            }
            other => return other,
        }
    }
}

fn result_label<T>(r: &Result<T, MgmtError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    }
}

fn attributes_json(e: &Entity) -> Map<String, Value> {
    e.attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Apply a plan, pipelined up to `window` requests in flight: first the DELETEs of entities that go away, then the
/// CREATEs; an entity that CHANGED is replaced on its own, its DELETE and CREATE sent back to back as one unit
/// (the router runs them in order on its management thread), so it is missing only between the two, not for the
/// whole delete phase: rotating a credential never drops every broker connection at once. `replaced` are the keys
/// in both `deletes` and `creates`. `known` is updated from every verified reply, so it stays true even when some
/// operations fail.
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    client: &RouterClient,
    deletes: &[(EntityType, String)],
    creates: impl Iterator<Item = Entity>,
    replaced: &std::collections::BTreeSet<(EntityType, String)>,
    desired: &DigestSet,
    known: &mut Known,
    metrics: &Metrics,
    window: usize,
) -> Result<(), ReconcileError> {
    let mut failures = Vec::new();
    let mut resync = false;
    let mut connection_error = None;

    // What a DELETE reply means for what we know; false when it failed.
    let deleted = |t: EntityType,
                   name: &str,
                   r: Result<(), MgmtError>,
                   known: &mut Known,
                   failures: &mut Vec<String>,
                   resync: &mut bool,
                   connection_error: &mut Option<MgmtError>| {
        metrics.op("DELETE", t.short_name(), result_label(&r));
        match r {
            Ok(()) => known.deleted(t, name),
            Err(e) if e.status_code() == Some(404) => known.deleted(t, name),
            Err(e) if e.is_connection_error() => {
                connection_error.get_or_insert(e);
            }
            // Maybe deleted, maybe not: it stays known, so the next attempt deletes it again (404 is fine).
            Err(e @ MgmtError::Timeout { .. }) => {
                failures.push(format!("DELETE {} {name}: {e}", t.short_name()));
            }
            Err(e) => {
                *resync = true;
                failures.push(format!("DELETE {} {name}: {e}", t.short_name()));
            }
        }
    };

    let gone = deletes
        .iter()
        .filter(|k| !replaced.contains(*k))
        .cloned()
        .map(|(t, name)| {
            let c = client.clone();
            async move {
                let r = c.delete(t.full_name(), &name).await;
                (t, name, r)
            }
        });
    pipelined(gone, window, |(t, name, r)| {
        deleted(
            t,
            &name,
            r,
            known,
            &mut failures,
            &mut resync,
            &mut connection_error,
        )
    })
    .await;
    if let Some(e) = connection_error {
        return Err(ReconcileError::Connection(e));
    }

    let creates = creates.map(|e| {
        let c = client.clone();
        let replace = replaced.contains(&(e.entity_type, e.name.clone()));
        async move {
            let t = e.entity_type;
            let create = c.create_checked(t.full_name(), &e.name, &e.attributes);
            let (d, r) = if replace {
                // Both requests queue on the connection in this order before either reply is awaited.
                let (d, r) = futures_util::join!(c.delete(t.full_name(), &e.name), create);
                (Some(d), r)
            } else {
                (None, create.await)
            };
            (e, d, r)
        }
    });
    pipelined(creates, window, |(e, d, r)| {
        let t = e.entity_type;
        if let Some(d) = d {
            deleted(
                t,
                &e.name,
                d,
                known,
                &mut failures,
                &mut resync,
                &mut connection_error,
            );
        }
        metrics.op("CREATE", t.short_name(), result_label(&r));
        match r {
            Ok(None) => known.created(e, desired),
            Ok(Some(body)) => {
                // The router accepted but stored something else (it silently ignores unknown attributes and
                // stores an invalid distribution as `balanced`): record it as wrong so it is replaced.
                known.mark_wrong(t, &e.name);
                failures.push(format!(
                    "CREATE {} {}: router stored different values ({})",
                    t.short_name(),
                    e.name,
                    differences(&e, &body)
                ));
            }
            Err(e2) if e2.is_connection_error() => {
                connection_error.get_or_insert(e2);
            }
            // Maybe created, maybe not: recorded as wrong, so the next attempt deletes (404 is fine) and
            // creates it again.
            Err(e2 @ MgmtError::Timeout { .. }) => {
                known.mark_wrong(t, &e.name);
                failures.push(format!("CREATE {} {}: {e2}", t.short_name(), e.name));
            }
            Err(e2) => {
                // Not created (whatever `known` assumed).
                known.deleted(t, &e.name);
                if let MgmtError::Status { description, .. } = &e2
                    && description.contains("Name conflicts")
                {
                    // The router holds an entity of that name we did not know of: re-read it before retrying.
                    resync = true;
                }
                failures.push(format!("CREATE {} {}: {e2}", t.short_name(), e.name));
            }
        }
    })
    .await;
    if let Some(e) = connection_error {
        return Err(ReconcileError::Connection(e));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ReconcileError::Failed { failures, resync })
    }
}

/// Run `futs` with at most `window` in flight, handing each result to `done` as it arrives.
async fn pipelined<F: Future>(
    futs: impl Iterator<Item = F>,
    window: usize,
    mut done: impl FnMut(F::Output),
) {
    let mut futs = futs;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < window.max(1) {
            match futs.next() {
                Some(f) => in_flight.push(f),
                None => break,
            }
        }
        match in_flight.next().await {
            Some(out) => done(out),
            None => break,
        }
    }
}

/// What differs between what was sent and what the router reports (secrets not shown).
fn differences(e: &Entity, body: &Map<String, Value>) -> String {
    e.attributes
        .iter()
        .filter(|(k, v)| body.get(*k) != Some(*v))
        .map(|(k, v)| {
            if Entity::SECRET_ATTRIBUTES.contains(&k.as_str()) {
                format!("{k}: differs")
            } else {
                format!(
                    "{k}: sent {v}, router holds {}",
                    body.get(k).unwrap_or(&Value::Null)
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Outcome of one successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Management writes (DELETE + CREATE, marker included) this reconcile sent.
    pub writes: usize,
}

/// Bring the router to `desired`. `known` is None when nothing is known yet (after connect): then the marker is
/// READ, and only when it does not prove the desired generation is the whole router read.
#[instrument(skip_all, fields(generation = desired.generation, hash = %desired.hash))]
pub async fn reconcile_once(
    client: &RouterClient,
    desired: &Desired,
    known: &mut Option<Known>,
    metrics: &Metrics,
    window: usize,
) -> Result<Applied, ReconcileError> {
    let started = Instant::now();
    let k = match known.take() {
        Some(k) => k,
        None => {
            let marker = client
                .read(EntityType::Address.full_name(), MARKER_NAME)
                .await;
            metrics.op(
                "READ",
                EntityType::Address.short_name(),
                result_label(&marker),
            );
            let marker = marker.map_err(ReconcileError::from_mgmt)?;
            if marker.as_ref().and_then(marker_hash).as_deref() == Some(desired.marker.as_str()) {
                // The marker proves every entity but the mesh connectors (left out of it so that a router pod
                // joining or leaving never rewrites it): read those, a handful of connector rows.
                let mut k = Known::from_desired(&desired.digests, &desired.marker);
                let rows = read_types(client, metrics, &[EntityType::Connector], false)
                    .await
                    .map_err(ReconcileError::from_mgmt)?;
                k.verify_mesh(&rows, &desired.inputs.mesh);
                info!(
                    "router already holds the desired generation (marker matches, mesh connectors read)"
                );
                k
            } else {
                let rows = read_router(client, metrics, false)
                    .await
                    .map_err(ReconcileError::from_mgmt)?;
                let k = Known::from_reported(&rows, |f| desired.inputs.for_each(f));
                info!(maas_entities = k.len(), "read the router's maas- entities");
                k
            }
        }
    };
    let mut k = k;
    let result = apply(client, desired, &mut k, metrics, window).await;
    // Keep what we learned, unless it proved wrong or the connection is gone.
    match &result {
        Err(ReconcileError::Connection(_)) | Err(ReconcileError::Failed { resync: true, .. }) => {}
        _ => *known = Some(k),
    }
    metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn apply(
    client: &RouterClient,
    desired: &Desired,
    known: &mut Known,
    metrics: &Metrics,
    window: usize,
) -> Result<Applied, ReconcileError> {
    // A router holding no maas- entity gets everything: no plan of 25,000 names to build, no lookups.
    let everything = known.is_empty();
    let plan = if everything {
        Plan::default()
    } else {
        diff(&desired.digests, known)
    };
    let (n_deletes, n_creates) = if everything {
        (0, desired.digests.len())
    } else {
        (plan.deletes.len(), plan.creates.len())
    };
    let marked = known.marker.as_deref() == Some(desired.marker.as_str());
    if n_deletes + n_creates == 0 && marked {
        return Ok(Applied { writes: 0 });
    }
    let mut writes = 0;
    // Only mesh connectors change (a router pod joined or left): the marker, which leaves them out, stays.
    let mesh_only = marked && !everything && plan_is_mesh_only(&plan);
    debug!(deletes = n_deletes, creates = n_creates, "applying");
    if known.marker.is_some() && !mesh_only {
        // The marker goes first: from now on the router no longer claims any generation.
        let r = client
            .delete(EntityType::Address.full_name(), MARKER_NAME)
            .await;
        metrics.op("DELETE", EntityType::Address.short_name(), result_label(&r));
        writes += 1;
        match r {
            Ok(()) => {}
            Err(e) if e.status_code() == Some(404) => {}
            Err(e) => return Err(ReconcileError::from_mgmt(e)),
        }
        known.marker = None;
    }
    writes += n_deletes + n_creates;
    let (deletes, creates) = (plan.deletes, plan.creates);
    let creates: std::collections::BTreeSet<(EntityType, String)> = creates.into_iter().collect();
    let replaced = deletes
        .iter()
        .filter(|k| creates.contains(*k))
        .cloned()
        .collect();
    // When everything is created there is no need to look each entity up.
    let keys = (n_creates < desired.digests.len()).then_some(creates);
    let creates = desired.inputs.entities(keys);
    if everything {
        *known = Known::assume_created(&desired.digests);
    }
    execute(
        client,
        &deletes,
        creates,
        &replaced,
        &desired.digests,
        known,
        metrics,
        window,
    )
    .await?;
    if mesh_only {
        *known = Known::from_desired(&desired.digests, &desired.marker);
        info!(
            deletes = n_deletes,
            creates = n_creates,
            "mesh connectors updated; router holds generation {}",
            desired.generation
        );
        return Ok(Applied { writes });
    }
    let marker = marker_entity(&desired.marker);
    let r = client
        .create(
            marker.entity_type.full_name(),
            &marker.name,
            attributes_json(&marker),
        )
        .await;
    metrics.op("CREATE", EntityType::Address.short_name(), result_label(&r));
    writes += 1;
    match r {
        // Every operation was verified: the router holds exactly the desired set. Share it instead of keeping a
        // copy of what we learned.
        Ok(_) => *known = Known::from_desired(&desired.digests, &desired.marker),
        Err(e) => return Err(ReconcileError::from_mgmt(e)),
    }
    info!(
        deletes = n_deletes,
        creates = n_creates,
        "router holds generation {}",
        desired.generation
    );
    Ok(Applied { writes })
}

/// Check that the router holds exactly the desired `maas-` entities and the marker (a full read).
pub async fn verify(
    client: &RouterClient,
    desired: &Desired,
    metrics: &Metrics,
) -> Result<(), String> {
    let rows = read_router(client, metrics, false)
        .await
        .map_err(|e| e.to_string())?;
    let known = Known::from_reported(&rows, |f| desired.inputs.for_each(f));
    let plan = diff(&desired.digests, &known);
    if !plan.is_empty() {
        let mut what: Vec<String> = plan
            .deletes
            .iter()
            .map(|(t, n)| format!("unexpected or wrong {} {n}", t.short_name()))
            .collect();
        what.extend(
            plan.creates
                .iter()
                .map(|(t, n)| format!("missing {} {n}", t.short_name())),
        );
        let shown = what.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        return Err(format!(
            "router differs from the desired state in {} entities: {shown}",
            what.len()
        ));
    }
    if known.marker.as_deref() != Some(desired.marker.as_str()) {
        return Err("router does not carry the marker of the desired generation".into());
    }
    Ok(())
}

/// Result of `run_agent` with `once`.
#[derive(Debug)]
pub enum Outcome {
    /// Shut down on request.
    Stopped,
    /// `--once`: the router holds exactly the desired entities.
    Converged,
    /// `--once`: it does not; the reason.
    NotConverged(String),
}

fn ready_detail(desired: &Desired) -> String {
    let mut s = format!(
        "router holds generation {} ({} entities, {} addresses)",
        desired.generation,
        desired.digests.len(),
        desired.addresses_by_kind.values().sum::<usize>()
    );
    if !desired.errors.is_empty() {
        s.push_str(&format!(
            "; configuration errors, last good configuration in force: {}",
            desired.errors.join("; ")
        ));
    }
    s
}

/// The agent's main loop. Returns when `shutdown` is cancelled (or after one reconcile with `once`).
pub async fn run_agent(
    cfg: AgentConfig,
    mut desired_rx: watch::Receiver<Arc<Desired>>,
    metrics: Metrics,
    health: Health,
    once: bool,
    shutdown: CancellationToken,
) -> Outcome {
    let window = cfg.client.window;
    let mut attempt: u32 = 0;
    'connect: loop {
        metrics.router_connected.set(0);
        let client = tokio::select! {
            _ = shutdown.cancelled() => return Outcome::Stopped,
            r = RouterClient::connect_with_stats(&cfg.router, cfg.client, metrics.replies.clone()) => r,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                let delay = cfg.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                warn!(error = %e, retry_in = ?delay, "cannot connect to the router");
                health.set_not_ready(format!("cannot connect to the router: {e}"));
                if once && attempt > 5 {
                    return Outcome::NotConverged(format!("cannot connect to the router: {e}"));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Outcome::Stopped,
                    _ = tokio::time::sleep(delay) => continue 'connect,
                }
            }
        };
        info!(router = %cfg.router.host, port = cfg.router.port, "connected to the router");
        metrics.router_connected.set(1);
        // A new connection may be a restarted router: forget what we knew.
        let mut known: Option<Known> = None;
        // What the router was last configured with on this connection. Readiness means "reachable and configured
        // at least once with a valid generation": a later generation that fails (one entity the router rejects)
        // is reported in the /readyz text and the metrics, but does not take the router out of its Service.
        let mut configured: Option<String> = None;
        let mut failures: u32 = 0;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut drift_at = next_drift(cfg.drift_check_interval);
        loop {
            let desired = desired_rx.borrow_and_update().clone();
            if !desired.loaded {
                health.set_not_ready(format!(
                    "no valid address configuration yet: {}",
                    desired.errors.join("; ")
                ));
                if once {
                    return Outcome::NotConverged(format!(
                        "no valid address configuration: {}",
                        desired.errors.join("; ")
                    ));
                }
            } else {
                match reconcile_once(&client, &desired, &mut known, &metrics, window).await {
                    Ok(applied) => {
                        attempt = 0;
                        failures = 0;
                        retry_at = None;
                        metrics.applied_generation.set(desired.generation as i64);
                        metrics.converged.set(1);
                        let detail = ready_detail(&desired);
                        health.set_ready(detail.clone());
                        configured = Some(detail);
                        if applied.writes > 0 {
                            debug!(writes = applied.writes, "applied");
                        }
                        if once {
                            let r = verify(&client, &desired, &metrics).await;
                            client.close().await;
                            return match r {
                                Ok(()) => Outcome::Converged,
                                Err(reason) => Outcome::NotConverged(reason),
                            };
                        }
                    }
                    Err(ReconcileError::Connection(e)) => {
                        warn!(error = %e, "lost the router connection during reconcile; reconnecting");
                        health.set_not_ready(format!("router connection lost: {e}"));
                        metrics.converged.set(0);
                        metrics.reconcile_failures.inc();
                        if once && attempt > 5 {
                            return Outcome::NotConverged(e.to_string());
                        }
                        attempt = attempt.saturating_add(1);
                        let delay = cfg.backoff.delay(attempt);
                        tokio::select! {
                            _ = shutdown.cancelled() => return Outcome::Stopped,
                            _ = tokio::time::sleep(delay) => continue 'connect,
                        }
                    }
                    Err(e) => {
                        metrics.reconcile_failures.inc();
                        failures = failures.saturating_add(1);
                        let delay = cfg.backoff.delay(failures);
                        warn!(error = %e, retry_in = ?delay, "reconcile failed");
                        metrics.converged.set(0);
                        let failed = format!("generation {} not applied: {e}", desired.generation);
                        match &configured {
                            // Still serving what it was configured with: ready, and saying what is wrong.
                            Some(detail) => {
                                health.set_ready(format!("{failed}; last configured: {detail}"))
                            }
                            None => health.set_not_ready(failed),
                        }
                        if once {
                            client.close().await;
                            return Outcome::NotConverged(e.to_string());
                        }
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }

            // Wait for the next reason to act.
            tokio::select! {
                _ = shutdown.cancelled() => {
                    client.close().await;
                    return Outcome::Stopped;
                }
                r = desired_rx.changed() => {
                    if r.is_err() {
                        return Outcome::Stopped;
                    }
                }
                _ = client.closed() => {
                    warn!("router connection closed; reconnecting and resyncing");
                    health.set_not_ready("router connection lost; reconnecting");
                    continue 'connect;
                }
                _ = sleep_until_opt(retry_at) => {}
                _ = sleep_until_opt(drift_at), if desired.loaded && known.is_some() => {
                    drift_at = next_drift(cfg.drift_check_interval);
                    tokio::select! {
                        r = read_router(&client, &metrics, true) => match r {
                            Ok(rows) => {
                                let k = Known::from_reported(&rows, |f| desired.inputs.for_each(f));
                                let drifted = !diff(&desired.digests, &k).is_empty()
                                    || k.marker.as_deref() != Some(desired.marker.as_str());
                                if drifted {
                                    warn!("drift check: the router's maas- entities differ from what was applied; repairing");
                                    metrics.drift_repairs.inc();
                                }
                                known = Some(k);
                            }
                            Err(e) if e.is_connection_error() => continue 'connect,
                            Err(e) => warn!(error = %e, "drift check failed"),
                        },
                        // A change arrives: it goes first; the drift check runs again later.
                        r = desired_rx.changed() => if r.is_err() { return Outcome::Stopped },
                        _ = shutdown.cancelled() => return Outcome::Stopped,
                    }
                }
            }
        }
    }
}

fn next_drift(interval: Duration) -> Option<tokio::time::Instant> {
    (!interval.is_zero()).then(|| tokio::time::Instant::now() + interval)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Read the router once and compute the plan (for `plan --router-url`).
pub async fn plan_against_router(
    client: &RouterClient,
    desired: &maas_model::EntitySet,
    metrics: &Metrics,
) -> Result<Plan, MgmtError> {
    let rows = read_router(client, metrics, false).await?;
    let known = Known::from_reported(&rows, |f| {
        for e in desired.iter() {
            f(e.clone())
        }
    });
    Ok(diff(&desired.digests(), &known))
}
