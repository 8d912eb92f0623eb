//! A subscriber of snapshot sources (config-service, docs/architecture.md §3): one connection, one receiving link per
//! source address (optionally with a filter map, e.g. a label selector for `podsense`), every message handed over
//! as it arrives. On any failure — connect, attach refused, connection lost, idle timeout — it reconnects with
//! capped exponential backoff and jitter, and re-attaches everything; each attach brings a fresh FULL snapshot, so
//! the consumer simply takes the latest message of each source as the truth.

use std::collections::BTreeMap;
use std::time::Duration;

use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver, Session};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connect::open_connection;
use crate::options::{Backoff, ConnectOptions};

/// One source to attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The source address, e.g. `v1/addresses`.
    pub address: String,
    /// The source's filter map (string keys and values), e.g. a label selector for `podsense`.
    pub filter: BTreeMap<String, String>,
}

impl Subscription {
    pub fn new(address: impl Into<String>) -> Self {
        Subscription {
            address: address.into(),
            filter: BTreeMap::new(),
        }
    }
}

/// One message of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMessage {
    pub subject: Option<String>,
    pub content_type: Option<String>,
    /// The AMQP-value string body (JSON text). A non-string body is reported as an error event instead.
    pub body: String,
}

/// What the subscriber reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent {
    /// Connected and every source attached.
    Connected,
    /// A message arrived on source `index` (position in the subscription list).
    Message {
        index: usize,
        message: SnapshotMessage,
    },
    /// The connection is gone or could not be made; reconnecting after the backoff.
    Disconnected { reason: String },
}

/// Start the subscriber task. Events arrive on the returned channel (bounded; a slow consumer slows the
/// subscriber, which only delays reading snapshots). The task ends when `shutdown` is cancelled or the receiver of
/// events is dropped.
pub fn spawn_subscriber(
    opts: ConnectOptions,
    subscriptions: Vec<Subscription>,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> mpsc::Receiver<SubscriberEvent> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                r = session_loop(&opts, &subscriptions, &tx, &mut attempt) => r,
            };
            let reason = match result {
                Ok(()) => return,
                Err(reason) => reason,
            };
            let delay = backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            warn!(peer = %opts, %reason, retry_in = ?delay, "config subscription lost; reconnecting");
            if tx
                .send(SubscriberEvent::Disconnected { reason })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    });
    rx
}

/// One connection's life: attach every source, forward messages until something fails. `Ok` only when the
/// consumer went away.
async fn session_loop(
    opts: &ConnectOptions,
    subscriptions: &[Subscription],
    tx: &mpsc::Sender<SubscriberEvent>,
    attempt: &mut u32,
) -> Result<(), String> {
    let opened = open_connection(opts).await.map_err(|e| e.to_string())?;
    let mut connection = opened.connection;
    let mut session = tokio::time::timeout(opts.connect_timeout, Session::begin(&mut connection))
        .await
        .map_err(|_| format!("session not begun within {:?}", opts.connect_timeout))?
        .map_err(|e| format!("begin session: {e}"))?;
    let (msg_tx, mut msg_rx) = mpsc::channel::<Result<(usize, SnapshotMessage), String>>(16);
    let mut tasks = Vec::new();
    for (index, sub) in subscriptions.iter().enumerate() {
        let mut source = Source::builder().address(sub.address.clone());
        if !sub.filter.is_empty() {
            let mut set = fe2o3_amqp::types::messaging::FilterSet::new();
            for (k, v) in &sub.filter {
                set.insert(Symbol::from(k.as_str()), Value::String(v.clone()));
            }
            source = source.filter(set);
        }
        let attach = Receiver::builder()
            .name(format!("maas-subscriber-{}-{index}", sub.address))
            .source(source.build())
            .credit_mode(CreditMode::Auto(16))
            .auto_accept(true)
            .attach(&mut session);
        let mut receiver = tokio::time::timeout(opts.connect_timeout, attach)
            .await
            .map_err(|_| {
                format!(
                    "attach to {:?} not answered within {:?}",
                    sub.address, opts.connect_timeout
                )
            })?
            .map_err(|e| format!("attach to {:?} refused: {e}", sub.address))?;
        let msg_tx = msg_tx.clone();
        let address = sub.address.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let r = match receiver.recv::<Body<Value>>().await {
                    Ok(delivery) => {
                        let message = delivery.message();
                        let props = message.properties.as_ref();
                        let subject = props.and_then(|p| p.subject.clone());
                        let content_type =
                            props.and_then(|p| p.content_type.as_ref().map(|s| s.0.clone()));
                        match delivery.body() {
                            Body::Value(v) => match &v.0 {
                                Value::String(s) => Ok((
                                    index,
                                    SnapshotMessage {
                                        subject,
                                        content_type,
                                        body: s.clone(),
                                    },
                                )),
                                other => Err(format!(
                                    "source {address:?}: body is not a string but {other:?}"
                                )),
                            },
                            _ => Err(format!("source {address:?}: body is not an AMQP value")),
                        }
                    }
                    Err(e) => Err(format!("source {address:?}: link ended: {e}")),
                };
                let fatal = r.is_err();
                if msg_tx.send(r).await.is_err() || fatal {
                    let _ = receiver.close().await;
                    return;
                }
            }
        }));
    }
    drop(msg_tx);
    info!(peer = %opts, sources = subscriptions.len(), "subscribed to the config service");
    *attempt = 0;
    if tx.send(SubscriberEvent::Connected).await.is_err() {
        return Ok(());
    }
    let result = loop {
        match msg_rx.recv().await {
            Some(Ok((index, message))) => {
                debug!(index, bytes = message.body.len(), "snapshot received");
                if tx
                    .send(SubscriberEvent::Message { index, message })
                    .await
                    .is_err()
                {
                    break Ok(());
                }
            }
            Some(Err(reason)) => break Err(reason),
            None => break Err("all links ended".to_string()),
        }
    };
    for t in tasks {
        t.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), session.end()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
    result
}
