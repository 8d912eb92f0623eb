//! The `$subctrl` receiver: one connection to `--router-url`, a receiving link on `$subctrl` (the router-agent
//! makes it a balanced address, so requests reach exactly one consumer and dispositions travel back to the
//! client), requests handled one at a time ([`crate::subctrl`]), the subscriptions written BEFORE a request is
//! accepted (the file atomically; the ConfigMap with a server-side apply, and then the request is accepted only
//! once the address configuration shows the change: [`crate::store::taken_up`]); `list` replies sent to the
//! request's reply-to. Reconnects with capped backoff.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorBody};
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{OrderedMap, Value};
use fe2o3_amqp::{Receiver, Sender};
use maas_amqp::messaging::{Messaging, close_receiver, close_sender};
use maas_amqp::options::{Backoff, ConnectOptions};
use maas_source::ConfigState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::store::{Store, orphans, orphans_in, taken_up};
use crate::subctrl::{
    self, BodyTopics, Book, Condition, LIST_REPLY_SUBJECT, Rejection, SUBCTRL_ADDRESS,
};

/// Reply senders kept open (by reply-to address).
const REPLY_SENDERS: usize = 8;
/// Credit of the `$subctrl` link.
const CREDIT: u32 = 16;

/// How the `$subctrl` side runs.
#[derive(Debug, Clone)]
pub struct SubctrlConfig {
    /// The router (or any AMQP peer delivering `$subctrl`).
    pub connect: ConnectOptions,
    /// Where the subscriptions are kept.
    pub store: Store,
    /// Bound on every AMQP step.
    pub timeout: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// The addresses directory the file lives in (file mode), to drop subscriptions whose topic was removed.
    pub addresses_dir: Option<std::path::PathBuf>,
}

/// Start the `$subctrl` task; it ends at shutdown.
pub fn spawn(
    cfg: SubctrlConfig,
    config_rx: watch::Receiver<Arc<ConfigState>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        loop {
            let r = session(&cfg, config_rx.clone(), &metrics, &shutdown, &mut attempt).await;
            metrics.subctrl_connected.set(0);
            if shutdown.is_cancelled() {
                return;
            }
            let delay = cfg.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            if let Err(reason) = r {
                warn!(peer = %cfg.connect, %reason, retry_in = ?delay, "$subctrl connection lost; reconnecting");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    })
}

/// One connection's life.
async fn session(
    cfg: &SubctrlConfig,
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    attempt: &mut u32,
) -> Result<(), String> {
    let mut conn = Messaging::open(&cfg.connect, cfg.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut receiver = match conn.receiver("maas-subctrl", SUBCTRL_ADDRESS, CREDIT).await {
        Ok(r) => r,
        Err(e) => {
            conn.close(Duration::from_secs(1)).await;
            return Err(e.to_string());
        }
    };
    info!(peer = %cfg.connect, "consuming $subctrl requests");
    metrics.subctrl_connected.set(1);
    *attempt = 0;
    let mut replies: VecDeque<(String, Sender)> = VecDeque::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = config_rx.changed() => {
                if r.is_err() { break Ok(()) }
                let state = config_rx.borrow().clone();
                prune(cfg, &state).await;
            }
            r = receiver.recv::<Body<Value>>() => match r {
                Ok(delivery) => {
                    let (reply, settle) = handle(cfg, &config_rx, delivery.message(), metrics).await;
                    if let Some((to, message)) = reply
                        && let Err(reason) = send_reply(&mut conn, &mut replies, &to, message, cfg.timeout).await
                    {
                        warn!(reply_to = %to, %reason, "cannot send the $subctrl list reply");
                    }
                    let settled = tokio::time::timeout(cfg.timeout, async {
                        match settle {
                            Ok(()) => receiver.accept(&delivery).await,
                            Err(rej) => receiver.reject(&delivery, reject_error(&rej)).await,
                        }
                    })
                    .await;
                    match settled {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Err(format!("settling a $subctrl request: {e}")),
                        Err(_) => break Err(format!("settling a $subctrl request: not sent within {:?}", cfg.timeout)),
                    }
                }
                Err(e) => break Err(format!("$subctrl link: {e}")),
            }
        }
    };
    close_links(receiver, replies).await;
    conn.close(Duration::from_secs(1)).await;
    result
}

async fn close_links(receiver: Receiver, replies: VecDeque<(String, Sender)>) {
    close_receiver(receiver, Duration::from_secs(1)).await;
    for (_, s) in replies {
        close_sender(s, Duration::from_secs(1)).await;
    }
}

fn reject_error(rej: &Rejection) -> AmqpErrorBody {
    let condition = match rej.condition {
        Condition::NotFound => AmqpError::NotFound,
        Condition::PreconditionFailed => AmqpError::PreconditionFailed,
        Condition::InternalError => AmqpError::InternalError,
    };
    AmqpErrorBody::new(condition, Some(rej.description.clone()), None)
}

/// The subscriber id of a correlation-id.
fn id_text(id: &MessageId) -> Option<String> {
    match id {
        MessageId::String(s) => Some(s.clone()),
        MessageId::Ulong(n) => Some(n.to_string()),
        MessageId::Uuid(u) => {
            let h: String = u.as_inner().iter().map(|b| format!("{b:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        MessageId::Binary(b) => String::from_utf8(b.to_vec()).ok(),
    }
}

fn body_topics(body: &Body<Value>) -> BodyTopics {
    match body {
        Body::Value(AmqpValue(v)) => match v {
            Value::String(s) => BodyTopics::One(s.clone()),
            Value::Symbol(s) => BodyTopics::One(s.0.clone()),
            Value::List(items) => strings(items.iter()).map_or_else(
                || BodyTopics::Other("a list holding non-strings".into()),
                BodyTopics::Many,
            ),
            Value::Array(items) => strings(items.0.iter()).map_or_else(
                || BodyTopics::Other("an array holding non-strings".into()),
                BodyTopics::Many,
            ),
            Value::Map(m) => strings(m.keys()).map_or_else(
                || BodyTopics::Other("a map with non-string keys".into()),
                BodyTopics::Many,
            ),
            Value::Null => BodyTopics::Other("an empty body".into()),
            _ => BodyTopics::Other("another AMQP value".into()),
        },
        Body::Empty => BodyTopics::Other("an empty body".into()),
        Body::Data(_) => BodyTopics::Other("a data section".into()),
        Body::Sequence(_) => BodyTopics::Other("an amqp-sequence".into()),
    }
}

fn strings<'a>(items: impl Iterator<Item = &'a Value>) -> Option<Vec<String>> {
    items
        .map(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Symbol(s) => Some(s.0.clone()),
            _ => None,
        })
        .collect()
}

/// A reply to send: (reply-to address, message).
type Reply = (String, Message<Body<Value>>);

/// Handle one request: the reply to send for `list`, and how to settle the request.
async fn handle(
    cfg: &SubctrlConfig,
    config_rx: &watch::Receiver<Arc<ConfigState>>,
    message: &Message<Body<Value>>,
    metrics: &Metrics,
) -> (Option<Reply>, Result<(), Rejection>) {
    let props = message.properties.as_ref();
    let subject = props.and_then(|p| p.subject.as_deref());
    let correlation = props.and_then(|p| p.correlation_id.clone());
    let reply_to = props.and_then(|p| p.reply_to.clone());
    let request = match subctrl::parse_request(
        subject,
        correlation.as_ref().and_then(id_text),
        body_topics(&message.body),
    ) {
        Ok(r) => r,
        Err(rej) => {
            metrics.request("unknown", rej.condition.label());
            warn!(subject = subject.unwrap_or(""), reason = %rej, "$subctrl request refused");
            return (None, Err(rej));
        }
    };
    let name = request.name();
    let result = async {
        let book = cfg
            .store
            .load()
            .await
            .map_err(|e| Rejection::new(Condition::InternalError, e.to_string()))?;
        let state = config_rx.borrow().clone();
        let applied = subctrl::apply(&book, &request, state.config.as_ref().map(|c| &c.addresses))?;
        if let Some(next) = &applied.book {
            cfg.store
                .save(next)
                .await
                .map_err(|e| Rejection::new(Condition::InternalError, e.to_string()))?;
            info!(request = name, subscriptions = next.len(), store = %cfg.store.describe(),
                "$subctrl: subscriptions written");
            if matches!(cfg.store, Store::ConfigMap(_)) {
                wait_taken_up(cfg, config_rx.clone(), &book, next).await?;
            }
        }
        Ok::<_, Rejection>(applied.list)
    }
    .await;
    match result {
        Ok(list) => {
            metrics.request(name, "accepted");
            let reply = match (list, reply_to) {
                (Some(list), Some(to)) => Some((to, list_reply(list, correlation))),
                (Some(_), None) => {
                    metrics.request(name, "no-reply-to");
                    warn!("$subctrl list request without reply-to: nothing to reply to");
                    None
                }
                _ => None,
            };
            (reply, Ok(()))
        }
        Err(rej) => {
            metrics.request(name, rej.condition.label());
            warn!(request = name, reason = %rej, "$subctrl request refused");
            (None, Err(rej))
        }
    }
}

/// Kubernetes mode: wait (up to the request timeout) until the address configuration this service reads (the same
/// the router-agents and storage-controller read) shows the change, so that `accepted` means the pipeline took
/// it; an `amqp:internal-error` saying so otherwise (e.g. the ConfigMap was refused: see its Events).
async fn wait_taken_up(
    cfg: &SubctrlConfig,
    mut config_rx: watch::Receiver<Arc<ConfigState>>,
    before: &Book,
    after: &Book,
) -> Result<(), Rejection> {
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    loop {
        let shown = config_rx
            .borrow_and_update()
            .config
            .as_ref()
            .is_some_and(|c| taken_up(&c.addresses, before, after));
        if shown {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, config_rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                return Err(Rejection::new(
                    Condition::InternalError,
                    format!(
                        "the subscriptions were written to {}, but the address configuration did not take the \
                         change up within {:?} (see the ConfigMap's Events, e.g. InvalidAddressConfig)",
                        cfg.store.describe(),
                        cfg.timeout
                    ),
                ));
            }
        }
    }
}

fn list_reply(
    list: BTreeMap<String, String>,
    correlation: Option<MessageId>,
) -> Message<Body<Value>> {
    let mut map = OrderedMap::new();
    for (topic, name) in list {
        map.insert(Value::String(topic), Value::String(name));
    }
    let mut props = Properties::builder()
        .subject(LIST_REPLY_SUBJECT.to_string())
        .build();
    props.correlation_id = correlation;
    Message::builder()
        .properties(props)
        .body(Body::Value(AmqpValue(Value::Map(map))))
        .build()
}

async fn send_reply(
    conn: &mut Messaging,
    replies: &mut VecDeque<(String, Sender)>,
    to: &str,
    mut message: Message<Body<Value>>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(p) = message.properties.as_mut() {
        p.to = Some(to.to_string());
    }
    let index = match replies.iter().position(|(a, _)| a == to) {
        Some(i) => i,
        None => {
            let sender = conn
                .sender(&format!("maas-subctrl-reply-{to}"), to)
                .await
                .map_err(|e| e.to_string())?;
            if replies.len() >= REPLY_SENDERS
                && let Some((_, old)) = replies.pop_front()
            {
                close_sender(old, Duration::from_secs(1)).await;
            }
            replies.push_back((to.to_string(), sender));
            replies.len() - 1
        }
    };
    let Some((_, sender)) = replies.get_mut(index) else {
        return Err("reply sender vanished".into());
    };
    let r = tokio::time::timeout(timeout, sender.send(message)).await;
    match r {
        Ok(Ok(Outcome::Accepted(_))) => Ok(()),
        Ok(Ok(other)) => Err(format!("reply not accepted: {other:?}")),
        Ok(Err(e)) => {
            replies.remove(index);
            Err(e.to_string())
        }
        Err(_) => {
            if let Some((_, s)) = replies.remove(index) {
                close_sender(s, Duration::from_secs(1)).await;
            }
            Err(format!("no outcome within {timeout:?}"))
        }
    }
}

/// Drop the subscriptions whose topic is gone (else, in file mode, the directory stops validating for every maas
/// binary): file mode, from the rest of the addresses directory; Kubernetes mode, from the synced address
/// configuration (where this service's ConfigMap brings no topic).
async fn prune(cfg: &SubctrlConfig, state: &ConfigState) {
    let gone = match &cfg.store {
        Store::File(file) => {
            let Some(dir) = &cfg.addresses_dir else {
                return;
            };
            let Some(key) = file
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
            else {
                return;
            };
            if file.path().parent() != Some(dir.as_path()) {
                return;
            }
            let (Ok(book), Ok(snap)) = (file.load(), maas_source::read_dir_snapshot(dir)) else {
                return;
            };
            if book.is_empty() {
                return;
            }
            let flavors = state.config.as_ref().map(|c| &c.flavors);
            let Some(gone) = orphans(&snap.files, &key, flavors, &book) else {
                return;
            };
            (book, gone)
        }
        Store::ConfigMap(_) => {
            let Some(config) = state.config.as_ref().filter(|_| state.synced) else {
                return;
            };
            let Ok(book) = cfg.store.load().await else {
                return;
            };
            let gone = orphans_in(&config.addresses, &book);
            (book, gone)
        }
    };
    let (book, gone) = gone;
    if gone.is_empty() {
        return;
    }
    let mut next: Book = book;
    for n in &gone {
        next.remove(n);
    }
    match cfg.store.save(&next).await {
        Ok(()) => {
            warn!(removed = ?gone, "$subctrl: removed subscriptions whose topic no longer exists")
        }
        Err(e) => {
            warn!(error = %e, "$subctrl: cannot remove subscriptions whose topic no longer exists")
        }
    }
}
