//! Moving one durable subscription queue q of topic T from pod P to pod H (docs/architecture.md §5), or, for a
//! MERGE (`crate::merge`: P = H, into another queue q' of the same client subscription), from `T::q` to `T::q'`
//! with the same steps (q' is not created: it must exist; q is deleted once it counts 0):
//!
//! 1. ensure q exists on H: `createQueue {"name": q, "address": T, "routing-type": "MULTICAST", "durable": true}`
//!    (`AMQ229019` "already exists" is fine);
//! 2. receive from P at the fully qualified queue name `T::q` (credit = the window) and send each message to H at
//!    `T::q`, with the message annotation `x-opt-maas-moved-from` = `<P>/<q>` (so consumers can count
//!    duplicates); a message is ACCEPTED on P only after H accepted its copy, so a crash, a lost connection or
//!    SIGTERM in the middle loses nothing: P takes back what it had not settled (duplicates are possible only
//!    for messages H accepted and P never heard of). Up to `window` messages are in flight, in order;
//! 3. the sweep (`destroy`) stops when nothing is in flight and P's `getMessageCount` is 0: asked as soon as as
//!    many messages moved as P counted before, then (a straggler, or accepts P has not processed yet) after pauses
//!    growing from 5 ms to `drain_wait` without deliveries. The copy stops once as many messages moved as P counted
//!    when it started (the backlog): the router may still route publishers to P, so P need not reach 0 — what
//!    arrives later moves on a later pass or in the sweep;
//! 4. with `destroy` (the sweep of the hand-over, `crate::handover`): `destroyQueue q` on P — only after
//!    `getMessageCount` said 0 (never while it holds messages). Without it (the copy) the old queue stays: the router
//!    may still route the topic's publishers to P until the links move.
//!
//! Every AMQP step is bounded by `timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::{SendError, Sender};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageAnnotations, Outcome};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use maas_amqp::messaging::{Messaging, MessagingError, close_receiver, close_sender};
use maas_amqp::options::ConnectOptions;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::broker::{Broker, BrokerError};
use crate::metrics::Metrics;
use crate::plan::Move;

/// The message annotation naming where a moved message came from: `<pod>/<queue>`.
pub const MOVED_FROM: &str = "x-opt-maas-moved-from";

/// The first pause before P's count is asked again once every counted message moved.
const FIRST_POLL: Duration = Duration::from_millis(5);

/// How long closing links and connections may take when a move ends.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// How moves behave.
#[derive(Debug, Clone, Copy)]
pub struct MoveConfig {
    /// Messages in flight: received from P and not yet accepted by H.
    pub window: usize,
    /// No delivery for this long (nothing in flight) -> ask P's message count.
    pub drain_wait: Duration,
    /// Bound on each AMQP step (connect, attach, a send's outcome, a management reply).
    pub timeout: Duration,
    /// `drain_wait` times this without deliveries while P still counts messages, and the move fails (they are
    /// held elsewhere, e.g. delivered to another consumer).
    pub max_idle_rounds: u32,
}

impl Default for MoveConfig {
    fn default() -> Self {
        MoveConfig {
            window: 250,
            drain_wait: Duration::from_millis(300),
            timeout: Duration::from_secs(10),
            max_idle_rounds: 20,
        }
    }
}

/// Why a move did not finish. Nothing is lost in any case: P keeps what H did not accept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MoveError {
    /// A management operation failed.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// A messaging connection or link could not be set up.
    #[error("{0}")]
    Messaging(#[from] MessagingError),
    /// The receiving link on P failed.
    #[error("receiving from {pod} {address:?}: {reason}")]
    Receive {
        pod: String,
        address: String,
        reason: String,
    },
    /// Sending to H failed, or H did not answer in time.
    #[error("sending to {pod} {address:?}: {reason}")]
    Send {
        pod: String,
        address: String,
        reason: String,
    },
    /// H answered a moved message with something other than `accepted`.
    #[error("{pod} did not accept a message sent to {address:?}: {outcome}")]
    NotAccepted {
        pod: String,
        address: String,
        outcome: String,
    },
    /// P still counts messages that are not delivered to the mover.
    #[error(
        "queue {queue} on {pod} still holds {count} message(s) that are not delivered to the mover (another consumer holds them?); not deleted"
    )]
    StillHolding {
        pod: String,
        queue: String,
        count: u64,
    },
    /// Shutdown: the move was abandoned (P keeps what H did not accept).
    #[error("abandoned at shutdown")]
    Abandoned,
}

impl MoveError {
    /// The metric label of a move that ended with this error.
    pub fn label(&self) -> &'static str {
        match self {
            MoveError::Abandoned => "abandoned",
            _ => "failed",
        }
    }
}

/// What a finished move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Messages accepted by H and then settled on P.
    pub messages: u64,
    /// The queue was created on H now (false: it was there).
    pub created: bool,
    /// How long it took.
    pub took: Duration,
}

/// What one move works with.
#[derive(Debug, Clone)]
pub struct MoveContext {
    /// Management of the old pod P.
    pub from: Broker,
    /// Management of the new pod H.
    pub to: Broker,
    /// Messaging connection to P.
    pub from_opts: ConnectOptions,
    /// Messaging connection to H.
    pub to_opts: ConnectOptions,
    pub metrics: Metrics,
}

/// Does one move (see the module documentation); with `destroy`, the old queue is deleted once it counts 0.
/// `progress` counts moved messages as they go.
pub async fn move_queue(
    m: &Move,
    ctx: &MoveContext,
    cfg: &MoveConfig,
    destroy: bool,
    progress: &AtomicU64,
    shutdown: &CancellationToken,
) -> Result<Moved, MoveError> {
    let started = Instant::now();
    let created = if m.is_merge() {
        // A merge's target is the client's own queue: never made here (a client that unsubscribed deleted it, and
        // it must not come back). Gone: the merge fails, and the next pass sees a group without it.
        ctx.to.message_count(&m.to_queue).await?;
        false
    } else {
        ctx.to
            .create_subscription(&m.queue, &m.topic, m.user.as_deref())
            .await?
    };
    let mut messages = 0;
    let mut rounds = 0;
    loop {
        if shutdown.is_cancelled() {
            return Err(MoveError::Abandoned);
        }
        let count = match ctx.from.message_count(&m.queue).await {
            Ok(n) => n,
            // Gone already (e.g. removed by storage-controller once empty): nothing left to move.
            Err(e) if is_missing(&e) => {
                debug!(queue = %m.queue, pod = %m.from.name, "queue already gone from the old pod");
                return Ok(Moved {
                    messages,
                    created,
                    took: started.elapsed(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if count == 0 {
            break;
        }
        rounds += 1;
        if rounds > 3 {
            return Err(MoveError::StillHolding {
                pod: m.from.name.clone(),
                queue: m.queue.clone(),
                count,
            });
        }
        messages += transfer(m, ctx, cfg, count, destroy, progress, shutdown).await?;
        if !destroy {
            // The copy: the backlog counted at the start has moved.
            break;
        }
    }
    if destroy {
        ctx.from.destroy_queue(&m.queue).await?;
    }
    let moved = Moved {
        messages,
        created,
        took: started.elapsed(),
    };
    if m.is_merge() {
        info!(queue = %m.queue, topic = %m.topic, pod = %m.from.name, into = %m.to_queue, messages,
            took_ms = moved.took.as_millis(), "client subscription queue merged into the one of the same subscription and deleted");
    } else if destroy {
        info!(queue = %m.queue, topic = %m.topic, from = %m.from.name, to = %m.to.name, messages,
            took_ms = moved.took.as_millis(), "old subscription queue swept and deleted");
    } else if messages > 0 || created {
        info!(queue = %m.queue, topic = %m.topic, from = %m.from.name, to = %m.to.name, messages,
            took_ms = moved.took.as_millis(), "subscription copied to its topic's pod (the old queue stays until the links moved)");
    }
    Ok(moved)
}

/// AMQ229017 / AMQ229067 (no such queue / cannot find resource).
fn is_missing(e: &BrokerError) -> bool {
    e.label == "not_found" || e.message.contains("AMQ229067") || e.message.contains("AMQ229017")
}

type Pending = Pin<
    Box<
        dyn Future<
                Output = (
                    DeliveryInfo,
                    Result<Result<Outcome, SendError>, tokio::time::error::Elapsed>,
                ),
            > + Send,
    >,
>;

/// Moves messages from P's `T::q` to H's `T::q` until P has none left to deliver (`until_empty`), or until
/// `expected` moved; the number moved. `expected` is P's message count before: once that many moved, P's count is
/// asked at once (not after `drain_wait`).
async fn transfer(
    m: &Move,
    ctx: &MoveContext,
    cfg: &MoveConfig,
    expected: u64,
    until_empty: bool,
    progress: &AtomicU64,
    shutdown: &CancellationToken,
) -> Result<u64, MoveError> {
    let address = m.fqqn();
    let to_address = m.to_fqqn();
    let link = format!("maas-move/{}", m.queue);
    let mut src = Messaging::open(&ctx.from_opts, cfg.timeout).await?;
    let mut dst = match Messaging::open(&ctx.to_opts, cfg.timeout).await {
        Ok(d) => d,
        Err(e) => {
            src.close(CLOSE_LIMIT).await;
            return Err(e.into());
        }
    };
    let links = async {
        let sender = dst.sender(&link, &to_address).await?;
        let window = u32::try_from(cfg.window).unwrap_or(u32::MAX);
        match src.receiver(&link, &address, window).await {
            Ok(r) => Ok((sender, r)),
            Err(e) => {
                close_sender(sender, CLOSE_LIMIT).await;
                Err(e)
            }
        }
    }
    .await;
    let (mut sender, mut receiver) = match links {
        Ok(l) => l,
        Err(e) => {
            src.close(CLOSE_LIMIT).await;
            dst.close(CLOSE_LIMIT).await;
            return Err(e.into());
        }
    };
    let moved_from = Value::String(format!("{}/{}", m.from.name, m.queue));
    let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut moved = 0u64;
    let mut checked_at = None;
    let mut idle = Duration::ZERO;
    let mut poll = FIRST_POLL;
    let window = cfg.window.max(1);
    let receive_err = |reason: String| MoveError::Receive {
        pod: m.from.name.clone(),
        address: address.clone(),
        reason,
    };
    let send_err = |reason: String| MoveError::Send {
        pod: m.to.name.clone(),
        address: to_address.clone(),
        reason,
    };
    let result: Result<(), MoveError> = loop {
        if inflight.is_empty() && moved >= expected && !until_empty {
            break Ok(());
        }
        if inflight.is_empty() && moved >= expected && checked_at != Some(moved) {
            checked_at = Some(moved);
            match ctx.from.message_count(&m.queue).await {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e.into()),
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Err(MoveError::Abandoned),
            Some((info, outcome)) = inflight.next(), if !inflight.is_empty() => {
                match outcome {
                    Ok(Ok(Outcome::Accepted(_))) => {
                        match tokio::time::timeout(cfg.timeout, receiver.accept(info)).await {
                            Ok(Ok(())) => {
                                moved += 1;
                                progress.fetch_add(1, Ordering::Relaxed);
                                ctx.metrics.messages_moved.inc();
                            }
                            Ok(Err(e)) => break Err(receive_err(format!("accept: {e}"))),
                            Err(_) => break Err(receive_err(format!("accept not sent within {:?}", cfg.timeout))),
                        }
                    }
                    Ok(Ok(other)) => break Err(MoveError::NotAccepted {
                        pod: m.to.name.clone(),
                        address: to_address.clone(),
                        outcome: format!("{other:?}"),
                    }),
                    Ok(Err(e)) => break Err(send_err(e.to_string())),
                    Err(_) => break Err(send_err(format!("no outcome within {:?}", cfg.timeout))),
                }
            }
            r = tokio::time::timeout(if moved >= expected { poll } else { cfg.drain_wait }, receiver.recv::<Body<Value>>()), if inflight.len() < window => {
                match r {
                    Ok(Ok(delivery)) => {
                        idle = Duration::ZERO;
                        poll = FIRST_POLL;
                        let info = DeliveryInfo::from(&delivery);
                        let message = mark_moved(delivery.into_message(), &moved_from);
                        match send(&mut sender, message, cfg.timeout).await {
                            Ok(p) => inflight.push_back(Box::pin(async move { (info, p.await) })),
                            Err(reason) => break Err(send_err(reason)),
                        }
                    }
                    Ok(Err(e)) => break Err(receive_err(e.to_string())),
                    Err(_) if inflight.is_empty() => {
                        match ctx.from.message_count(&m.queue).await {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                idle += if moved >= expected { poll } else { cfg.drain_wait };
                                poll = (poll * 2).min(cfg.drain_wait);
                                if idle >= cfg.drain_wait * cfg.max_idle_rounds {
                                    break Err(MoveError::StillHolding {
                                        pod: m.from.name.clone(),
                                        queue: m.queue.clone(),
                                        count: n,
                                    });
                                }
                            }
                            Err(e) => break Err(e.into()),
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    };
    // Unsettled deliveries (not accepted by H, or H's answer lost) go back to P's queue with the link.
    drop(inflight);
    close_receiver(receiver, CLOSE_LIMIT).await;
    close_sender(sender, CLOSE_LIMIT).await;
    src.close(CLOSE_LIMIT).await;
    dst.close(CLOSE_LIMIT).await;
    result.map(|()| moved)
}

/// Sends one message unsettled; the future resolving to its outcome (bounded by `timeout`).
async fn send(
    sender: &mut Sender,
    message: Message<Body<Value>>,
    timeout: Duration,
) -> Result<
    impl Future<Output = Result<Result<Outcome, SendError>, tokio::time::error::Elapsed>>
    + Send
    + 'static,
    String,
> {
    match tokio::time::timeout(timeout, sender.send_batchable(message)).await {
        Ok(Ok(fut)) => Ok(tokio::time::timeout(timeout, fut)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no link credit within {timeout:?}")),
    }
}

/// The message as it goes to H: delivery annotations dropped (they are for one hop), `x-opt-maas-moved-from` set.
pub fn mark_moved(mut message: Message<Body<Value>>, moved_from: &Value) -> Message<Body<Value>> {
    message.delivery_annotations = None;
    let annotations = message
        .message_annotations
        .get_or_insert_with(|| MessageAnnotations(Default::default()));
    annotations.0.insert(
        OwnedKey::Symbol(Symbol::from(MOVED_FROM)),
        moved_from.clone(),
    );
    message
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fe2o3_amqp::types::messaging::{AmqpValue, Properties};

    #[test]
    fn moved_messages_keep_everything_but_delivery_annotations_and_say_where_they_came_from() {
        let m = Message::builder()
            .properties(
                Properties::builder()
                    .message_id(String::from("m-1"))
                    .build(),
            )
            .body(Body::Value(AmqpValue(Value::String("hello".into()))))
            .build();
        let from = Value::String("b-0/sub1".into());
        let out = mark_moved(m.clone(), &from);
        assert_eq!(out.properties, m.properties);
        assert_eq!(out.body, m.body);
        let key = OwnedKey::Symbol(Symbol::from(MOVED_FROM));
        assert_eq!(
            out.message_annotations.as_ref().unwrap().0.get(&key),
            Some(&from)
        );
        // Moved again: the latest origin.
        let again = mark_moved(out, &Value::String("b-1/sub1".into()));
        assert_eq!(
            again.message_annotations.unwrap().0.get(&key),
            Some(&Value::String("b-1/sub1".into()))
        );
    }
}
