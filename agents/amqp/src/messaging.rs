//! Plain AMQP messaging over one connection: open a connection and a session from [`ConnectOptions`], attach
//! receiving and sending links, close — every step under a timeout, with errors that name the peer and the
//! address. For binaries that move messages themselves (subscription-service moves durable subscription queues
//! between Artemis pods) and for tests and benches that publish or consume.
//!
//! Links are plain fe2o3 [`Receiver`]/[`Sender`]s: receivers never auto-accept (the caller settles, e.g. only once
//! another peer accepted a copy) and get `credit` with automatic refill; senders send unsettled, so every send
//! has an outcome. fe2o3's `recv` and `send` are cancel-safe; a pending outcome never resolves by itself when the
//! peer goes away (docs/reference/fe2o3-amqp-notes.txt, "HANG"), so wait for outcomes with a timeout.

use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Source;
use fe2o3_amqp::{Receiver, Sender, Session};

use crate::connect::open_connection;
use crate::options::ConnectOptions;

/// A failed messaging step. Texts name the peer (`amqp://host:port`, never a password) and the address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MessagingError {
    /// The connection or session could not be set up.
    #[error("cannot connect to {peer}: {reason}")]
    Connect {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// The peer refused a link (e.g. Artemis: `amqp:not-found` for a queue that does not exist).
    #[error("{peer}: attach to {address:?} refused: {reason}")]
    Refused {
        /// The peer.
        peer: String,
        /// The link's address.
        address: String,
        /// The peer's error.
        reason: String,
    },
    /// A step got no answer in time.
    #[error("{peer}: {what} got no answer within {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The step (`attach to "T::q"`, ...).
        what: String,
        /// The timeout.
        after: Duration,
    },
}

/// One AMQP connection with one session, for messaging links.
pub struct Messaging {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    peer: String,
    timeout: Duration,
}

impl std::fmt::Debug for Messaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messaging")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Messaging {
    /// Connects (TCP, TLS, SASL, open within `opts.connect_timeout`) and begins a session within `timeout`,
    /// which also bounds every later attach.
    pub async fn open(
        opts: &ConnectOptions,
        timeout: Duration,
    ) -> Result<Messaging, MessagingError> {
        let peer = opts.to_string();
        let opened = open_connection(opts)
            .await
            .map_err(|e| MessagingError::Connect {
                peer: peer.clone(),
                reason: e.reason,
            })?;
        let mut connection = opened.connection;
        let session = match tokio::time::timeout(timeout, Session::begin(&mut connection)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(MessagingError::Connect {
                    peer,
                    reason: format!("begin session: {e}"),
                });
            }
            Err(_) => {
                return Err(MessagingError::Timeout {
                    peer,
                    what: "begin session".into(),
                    after: timeout,
                });
            }
        };
        Ok(Messaging {
            connection,
            session,
            peer,
            timeout,
        })
    }

    /// The peer, `amqp[s]://[user@]host:port`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Attaches a receiving link named `name` from `address` with `credit` (refilled as deliveries are
    /// settled); deliveries are not accepted automatically.
    pub async fn receiver(
        &mut self,
        name: &str,
        address: &str,
        credit: u32,
    ) -> Result<Receiver, MessagingError> {
        let attach = Receiver::builder()
            .name(name)
            .source(Source::builder().address(address.to_string()).build())
            .credit_mode(CreditMode::Auto(credit.max(1)))
            .auto_accept(false)
            .attach(&mut self.session);
        match tokio::time::timeout(self.timeout, attach).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.refused(address, e.to_string())),
            Err(_) => Err(self.timed_out(format!("attach to {address:?}"))),
        }
    }

    /// Attaches a sending link named `name` to `address`.
    pub async fn sender(&mut self, name: &str, address: &str) -> Result<Sender, MessagingError> {
        let attach = Sender::builder()
            .name(name)
            .target(address.to_string())
            .attach(&mut self.session);
        match tokio::time::timeout(self.timeout, attach).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(self.refused(address, e.to_string())),
            Err(_) => Err(self.timed_out(format!("attach to {address:?}"))),
        }
    }

    /// A [`MessagingError::Timeout`] of this connection.
    pub fn timed_out(&self, what: impl Into<String>) -> MessagingError {
        MessagingError::Timeout {
            peer: self.peer.clone(),
            what: what.into(),
            after: self.timeout,
        }
    }

    fn refused(&self, address: &str, reason: String) -> MessagingError {
        MessagingError::Refused {
            peer: self.peer.clone(),
            address: address.to_string(),
            reason,
        }
    }

    /// Ends the session and closes the connection, each within `limit` (a peer that does not answer is left).
    /// Links still attached are detached by the peer with the session; their unsettled deliveries go back to
    /// the peer's queue.
    pub async fn close(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.session.end()).await;
        let _ = tokio::time::timeout(limit, self.connection.close()).await;
    }
}

/// Closes a receiver within `limit` (ignoring errors): its unsettled deliveries go back to the peer's queue.
pub async fn close_receiver(receiver: Receiver, limit: Duration) {
    let _ = tokio::time::timeout(limit, receiver.close()).await;
}

/// Closes a sender within `limit` (ignoring errors).
pub async fn close_sender(sender: Sender, limit: Duration) {
    let _ = tokio::time::timeout(limit, sender.close()).await;
}
