//! A subscriber of snapshot sources (config-service, docs/architecture.md §3): one connection, one receiving link per
//! source address (optionally with a filter map, e.g. a label selector for `podsense`), every message handed over
//! as it arrives. On any failure — connect, attach refused, connection lost, idle timeout — it reconnects with
//! capped exponential backoff and jitter, and re-attaches everything; each attach brings a fresh FULL snapshot, so
//! the consumer simply takes the latest message of each source as the truth.
//!
//! Memory: only the LATEST snapshot of each source is kept while the consumer is busy (a newer one replaces an
//! older one not yet handed over); each link grants a credit of 1, and the event channel holds one event. With
//! 10,000 addresses a snapshot is ~1.4 MB: a slow consumer costs about one snapshot per source, not a queue of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Receiver, Session};
use tokio::sync::{Notify, mpsc};
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

/// Start the subscriber task. Events arrive on the returned channel (one at a time; while the consumer is busy
/// only the latest snapshot of each source is kept). The task ends when `shutdown` is cancelled or the receiver of
/// events is dropped.
pub fn spawn_subscriber(
    opts: ConnectOptions,
    subscriptions: Vec<Subscription>,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> mpsc::Receiver<SubscriberEvent> {
    let (tx, rx) = mpsc::channel(1);
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

/// The latest undelivered snapshot per source, filled by the link tasks and emptied as events go out.
struct Latest {
    slots: Mutex<Vec<Option<SnapshotMessage>>>,
    fatal: Mutex<Option<String>>,
    changed: Notify,
}

impl Latest {
    /// Keeps `message` as the latest of source `index` (an older one not handed over yet is dropped).
    fn put(&self, index: usize, message: SnapshotMessage) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(index)
        {
            if slot.is_some() {
                debug!(index, "a newer snapshot replaces one not handed over yet");
            }
            *slot = Some(message);
        }
        self.changed.notify_one();
    }

    fn fail(&self, reason: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(reason);
        }
        self.changed.notify_one();
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// The lowest-numbered source with a snapshot waiting, and that snapshot.
    fn take(&self) -> Option<(usize, SnapshotMessage)> {
        let mut slots = self.slots.lock().ok()?;
        slots
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| s.take().map(|m| (i, m)))
    }
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
    // The latest undelivered snapshot of each source, and the first fatal error; the link tasks fill them.
    let latest = Arc::new(Latest {
        slots: Mutex::new(vec![None; subscriptions.len()]),
        fatal: Mutex::new(None),
        changed: Notify::new(),
    });
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
            // One snapshot in flight per link: the next one waits at the sender (which skips to its latest).
            .credit_mode(CreditMode::Auto(1))
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
        let latest = latest.clone();
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
                        match delivery.into_body() {
                            Body::Value(v) => match v.0 {
                                Value::String(s) => Ok(SnapshotMessage {
                                    subject,
                                    content_type,
                                    body: s,
                                }),
                                other => Err(format!(
                                    "source {address:?}: body is not a string but {other:?}"
                                )),
                            },
                            _ => Err(format!("source {address:?}: body is not an AMQP value")),
                        }
                    }
                    Err(e) => Err(format!("source {address:?}: link ended: {e}")),
                };
                match r {
                    Ok(message) => latest.put(index, message),
                    Err(reason) => {
                        latest.fail(reason);
                        let _ = receiver.close().await;
                        return;
                    }
                }
            }
        }));
    }
    info!(peer = %opts, sources = subscriptions.len(), "subscribed to the config service");
    *attempt = 0;
    if tx.send(SubscriberEvent::Connected).await.is_err() {
        return Ok(());
    }
    let result = loop {
        // Room for one event first, then the latest snapshot of the next source that has one: a snapshot that
        // arrives while the consumer is busy replaces the one waiting.
        let Ok(permit) = tx.reserve().await else {
            break Ok(());
        };
        let next = loop {
            if let Some(reason) = latest.fatal() {
                break Err(reason);
            }
            if let Some(found) = latest.take() {
                break Ok(found);
            }
            latest.changed.notified().await;
        };
        match next {
            Ok((index, message)) => {
                debug!(index, bytes = message.body.len(), "snapshot received");
                permit.send(SubscriberEvent::Message { index, message });
            }
            Err(reason) => break Err(reason),
        }
    };
    for t in tasks {
        t.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), session.end()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
    result
}
