//! Artemis management for the subscription-service: one management connection per broker pod
//! ([`BrokerPool`], reconnecting with capped backoff), and the operations it needs on [`ArtemisClient`]:
//! list the queues bound to a topic, create a durable subscription queue, count messages, destroy a queue. Every
//! operation is bounded by the client's request timeout and counted in the metrics.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use maas_amqp::artemis::{
    ArtemisClient, ArtemisError, BROKER, ClientConfig, Outcome, QueueConfig, QueueInfo, Removal,
    RoutingType,
};
use maas_amqp::options::{Backoff, ConnectOptions};
use maas_model::BrokerPod;
use serde_json::Value as Json;

use crate::metrics::Metrics;
use crate::plan::ObservedQueue;

/// A failed broker operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerError {
    /// Metric label (`timeout`, `disconnected`, `failed`, `connect`, ...).
    pub label: &'static str,
    /// What happened, for logs and status.
    pub message: String,
    /// True when the connection is unusable (it is dropped and made again).
    pub connection: bool,
}

impl From<ArtemisError> for BrokerError {
    fn from(e: ArtemisError) -> Self {
        BrokerError {
            label: e.metric_label(),
            message: e.to_string(),
            connection: e.is_connection_error(),
        }
    }
}

/// The management operations of one broker pod, counted in `metrics`.
#[derive(Clone, Debug)]
pub struct Broker {
    /// The pod's name (for errors).
    pub pod: String,
    client: ArtemisClient,
    metrics: Metrics,
}

fn label<T>(r: &Result<T, ArtemisError>, ok: &'static str) -> &'static str {
    match r {
        Ok(_) => ok,
        Err(e) => e.metric_label(),
    }
}

impl Broker {
    /// Wraps an open management client of `pod`.
    pub fn new(pod: &str, client: ArtemisClient, metrics: Metrics) -> Broker {
        Broker {
            pod: pod.to_string(),
            client,
            metrics,
        }
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Every queue bound to `address` (`listQueues` with filter `address EQUALS <address>`, paged), with the row's
    /// `id` (higher = created later on this broker: the merge of a client's subscription queues picks the newest by
    /// it, `crate::merge`).
    pub async fn queues_of(&self, address: &str) -> Result<Vec<ObservedQueue>, BrokerError> {
        let r = self.list_queues(address).await;
        self.metrics.broker_op("listQueues", label(&r, "ok"));
        Ok(r?)
    }

    /// `broker.listQueues(<filter address EQUALS address>, page, LIST_PAGE_SIZE)`, every page
    /// (docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §5: a JSON string `{"data": [rows],
    /// "count": N}`, every row value a string). The rows are read like `maas_amqp::artemis::QueueInfo::from_row`,
    /// plus `id`, which that type does not keep.
    async fn list_queues(&self, address: &str) -> Result<Vec<ObservedQueue>, ArtemisError> {
        let operation = "listQueues";
        let filter =
            serde_json::json!({"field": "address", "operation": "EQUALS", "value": address})
                .to_string();
        let mut out: Vec<ObservedQueue> = Vec::new();
        let mut page = 1u64;
        loop {
            let args = vec![
                Json::from(filter.clone()),
                Json::from(page),
                Json::from(LIST_PAGE_SIZE),
            ];
            let body = self.client.call(BROKER, operation, args).await?;
            let (rows, count) = parse_listing(&body).ok_or_else(|| {
                ArtemisError::Protocol(format!("unexpected {operation} reply body {body}"))
            })?;
            let empty = rows.is_empty();
            for q in rows {
                if !out.iter().any(|o| o.name == q.name) {
                    out.push(q);
                }
            }
            if empty || page.saturating_mul(LIST_PAGE_SIZE) >= count {
                return Ok(out);
            }
            page += 1;
        }
    }

    /// `createQueue` of a durable MULTICAST queue `name` bound to `topic`, owned by `user` (copied from the old
    /// pod's queue); an existing one (`AMQ229019`) is fine. `Ok(true)` when it was created now.
    pub async fn create_subscription(
        &self,
        name: &str,
        topic: &str,
        user: Option<&str>,
    ) -> Result<bool, BrokerError> {
        let q = QueueConfig {
            name: name.to_string(),
            address: topic.to_string(),
            routing_type: RoutingType::Multicast,
            durable: true,
        };
        let r = self.client.create_queue_with(&q, user).await;
        self.metrics.broker_op(
            "createQueue",
            match &r {
                Ok(Outcome::Done) => "ok",
                Ok(Outcome::AlreadyThere) => "unchanged",
                Err(e) => e.metric_label(),
            },
        );
        Ok(r? == Outcome::Done)
    }

    /// `queue.<name>.getMessageCount`.
    pub async fn message_count(&self, queue: &str) -> Result<u64, BrokerError> {
        let r = self.client.get_message_count(queue).await;
        self.metrics.broker_op("getMessageCount", label(&r, "ok"));
        Ok(r?)
    }

    /// `destroyQueue(name)`; a queue already gone is fine. The caller checks it is empty first.
    pub async fn destroy_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let r = self.client.destroy_queue(queue).await;
        self.metrics.broker_op(
            "destroyQueue",
            match &r {
                Ok(Removal::Done) => "ok",
                Ok(Removal::AlreadyGone) => "unchanged",
                Err(e) => e.metric_label(),
            },
        );
        r?;
        Ok(())
    }
}

/// Rows asked per `listQueues` page.
const LIST_PAGE_SIZE: u64 = 100;

/// One `listQueues` reply (an array holding one JSON string `{"data": [rows], "count": N}`): the rows as the
/// planner sees them and the count. None when the reply or a row does not have that shape (`id` may be missing:
/// then it is None).
pub fn parse_listing(body: &Json) -> Option<(Vec<ObservedQueue>, u64)> {
    let text = match body {
        Json::Array(items) if items.len() == 1 => items[0].as_str()?,
        _ => return None,
    };
    let listing: Json = serde_json::from_str(text).ok()?;
    let count = listing.get("count").and_then(Json::as_u64)?;
    let rows = listing
        .get("data")
        .and_then(Json::as_array)?
        .iter()
        .map(|row| {
            let id = row.get("id").and_then(|v| {
                v.as_str()
                    .and_then(|t| t.parse::<u64>().ok())
                    .or(v.as_u64())
            });
            QueueInfo::from_row(row).map(|q| observed(q, id))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((rows, count))
}

/// The planner's view of a `listQueues` row.
fn observed(q: QueueInfo, id: Option<u64>) -> ObservedQueue {
    ObservedQueue {
        name: q.name,
        address: q.address,
        multicast: q.routing_type == RoutingType::Multicast,
        durable: q.durable,
        temporary: q.temporary,
        messages: q.message_count,
        consumers: q.consumer_count,
        user: q.user,
        id,
    }
}

/// One pod's management connection and its reconnect state.
struct PodConn {
    pod: BrokerPod,
    broker: Option<Broker>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<BrokerError>,
}

/// One management connection per broker pod, opened on first use and again (after a capped, jittered backoff)
/// when it was lost. Pods no longer listed are forgotten. Shared by concurrent tasks (`&self`); connecting
/// happens outside the lock.
pub struct BrokerPool {
    template: ConnectOptions,
    client: ClientConfig,
    backoff: Backoff,
    metrics: Metrics,
    pods: Mutex<BTreeMap<String, PodConn>>,
}

impl BrokerPool {
    /// A pool connecting with `template` (host and port replaced per pod).
    pub fn new(template: ConnectOptions, client: ClientConfig, metrics: Metrics) -> BrokerPool {
        BrokerPool {
            template,
            client,
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
            },
            metrics,
            pods: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodConn>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection template with `pod`'s host and port (TLS server name = the host unless set).
    pub fn options_for(&self, pod: &BrokerPod) -> ConnectOptions {
        let mut opts = self.template.clone();
        opts.host = pod.host.clone();
        opts.port = pod.port;
        if let Some(tls) = opts.tls.as_mut()
            && tls.server_name.is_none()
        {
            tls.server_name = Some(pod.host.clone());
        }
        opts
    }

    /// Forget pods for which `keep` is false (their connections close).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|name, _| keep(name));
    }

    /// The management connection of `pod`, opened if needed. While a reconnect backoff runs, the last error.
    pub async fn get(&self, pod: &BrokerPod) -> Result<Broker, BrokerError> {
        {
            let mut pods = self.lock();
            let state = pods.entry(pod.name.clone()).or_insert_with(|| PodConn {
                pod: pod.clone(),
                broker: None,
                failures: 0,
                retry_at: None,
                last_error: None,
            });
            if state.pod.host != pod.host || state.pod.port != pod.port {
                state.broker = None;
                state.retry_at = None;
                state.failures = 0;
            }
            state.pod = pod.clone();
            if state.broker.as_ref().is_some_and(Broker::is_closed) {
                state.broker = None;
            }
            if let Some(b) = &state.broker {
                return Ok(b.clone());
            }
            if let (Some(at), Some(e)) = (state.retry_at, &state.last_error)
                && Instant::now() < at
            {
                return Err(e.clone());
            }
        }
        let opts = self.options_for(pod);
        let limit = opts.connect_timeout + Duration::from_secs(1);
        let r = match tokio::time::timeout(limit, ArtemisClient::connect(&opts, self.client)).await
        {
            Ok(r) => r.map_err(BrokerError::from),
            Err(_) => Err(BrokerError {
                label: "connect",
                message: format!(
                    "cannot open Artemis management connection to {}:{}: no answer within {limit:?}",
                    pod.host, pod.port
                ),
                connection: true,
            }),
        };
        let mut pods = self.lock();
        let Some(state) = pods.get_mut(&pod.name) else {
            return Err(BrokerError {
                label: "connect",
                message: format!("broker {}: no longer listed", pod.name),
                connection: true,
            });
        };
        match r {
            Ok(client) => {
                self.metrics.broker_op("connect", "ok");
                // Another task may have connected meanwhile: keep one connection.
                if let Some(b) = state.broker.as_ref().filter(|b| !b.is_closed()) {
                    return Ok(b.clone());
                }
                let b = Broker::new(&pod.name, client, self.metrics.clone());
                state.broker = Some(b.clone());
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                Ok(b)
            }
            Err(e) => {
                self.metrics.broker_op("connect", e.label);
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some(Instant::now() + self.backoff.delay(state.failures - 1));
                let e = BrokerError {
                    message: format!("broker {}: {}", pod.name, e.message),
                    ..e
                };
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Drop `pod`'s connection after a connection error (the next [`Self::get`] reconnects).
    pub fn lost(&self, pod: &str) {
        if let Some(s) = self.lock().get_mut(pod) {
            s.broker = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The recorded row (docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §5).
    const ROW: &str = r#"{"id": "1733", "name": "s1", "address": "t1", "filter": "", "durable": "true", "paused": "false", "temporary": "false", "purgeOnNoConsumers": "false", "consumerCount": "0", "maxConsumers": "-1", "autoCreated": "false", "user": "maas-storage-controller", "routingType": "MULTICAST", "messagesAdded": "5", "messageCount": "0", "messagesAcked": "5", "messagesExpired": "0", "deliveringCount": "0", "messagesKilled": "0", "directDeliver": "false", "exclusive": "false", "lastValue": "false", "lastValueKey": "", "scheduledCount": "0", "groupRebalance": "false", "groupRebalancePauseDispatch": "false", "groupBuckets": "-1", "groupFirstKey": "", "enabled": "true", "ringSize": "-1", "consumersBeforeDispatch": "0", "delayBeforeDispatch": "-1"}"#;

    fn reply(data: &str, count: u64) -> Json {
        Json::Array(vec![Json::String(format!(
            r#"{{"data":[{data}],"count":{count}}}"#
        ))])
    }

    #[test]
    fn a_listing_row_keeps_its_id() {
        let (rows, count) = parse_listing(&reply(ROW, 1)).unwrap();
        assert_eq!(count, 1);
        assert_eq!(rows.len(), 1);
        let q = &rows[0];
        assert_eq!(
            (
                q.name.as_str(),
                q.address.as_str(),
                q.id,
                q.messages,
                q.consumers
            ),
            ("s1", "t1", Some(1733), 0, 0)
        );
        assert!(q.multicast && q.durable && !q.temporary);
        assert_eq!(q.user.as_deref(), Some("maas-storage-controller"));
        // Without an id the row still reads (the merge then cannot tell which queue is newer).
        let no_id = ROW.replace(r#""id": "1733", "#, "");
        assert_eq!(parse_listing(&reply(&no_id, 1)).unwrap().0[0].id, None);
        // Not a listing.
        assert!(parse_listing(&Json::Array(vec![])).is_none());
        assert!(parse_listing(&reply(r#"{"name": "x"}"#, 1)).is_none());
        assert!(parse_listing(&Json::Array(vec![Json::String("{}".into())])).is_none());
    }
}
