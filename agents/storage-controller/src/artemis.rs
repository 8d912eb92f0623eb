//! [`BrokerMgmt`] over Artemis AMQP management ([`maas_amqp::artemis::ArtemisClient`]), and the [`Connector`] that
//! opens one management connection per broker pod with the `--broker-*` credentials and TLS settings.
//!
//! Every queue is created with `"user": "maas-storage-controller"` (durable-subscriptions-and-topics.txt §4), and
//! read back with `queue.<name>.getUser` / `getAddress` (§5).

use std::time::Duration;

use maas_amqp::artemis::{
    ArtemisClient, ArtemisError, ClientConfig, Outcome, QueueConfig, Removal, RoutingType,
};
use maas_amqp::options::ConnectOptions;
use maas_model::BrokerPod;
use serde_json::Value as Json;

use crate::broker::{BrokerError, BrokerMgmt, Connector, Done};
use crate::provision::{QUEUE_USER, QueueOwner, Routing};

/// `AMQ229067: Cannot find resource with name queue.<name>`: the queue does not exist.
const NO_RESOURCE: &str = "AMQ229067";

fn err(e: ArtemisError) -> BrokerError {
    BrokerError {
        label: e.metric_label(),
        message: e.to_string(),
        connection: e.is_connection_error(),
    }
}

fn routing(r: Routing) -> RoutingType {
    match r {
        Routing::Anycast => RoutingType::Anycast,
        Routing::Multicast => RoutingType::Multicast,
    }
}

fn created(o: Outcome) -> Done {
    match o {
        Outcome::Done => Done::Changed,
        Outcome::AlreadyThere => Done::Unchanged,
    }
}

fn removed(r: Removal) -> Done {
    match r {
        Removal::Done => Done::Changed,
        Removal::AlreadyGone => Done::Unchanged,
    }
}

impl BrokerMgmt for ArtemisClient {
    async fn address_names(&self) -> Result<Vec<String>, BrokerError> {
        self.get_address_names().await.map_err(err)
    }

    async fn queue_names(&self) -> Result<Vec<String>, BrokerError> {
        self.get_queue_names().await.map_err(err)
    }

    async fn create_address(&self, name: &str, r: Routing) -> Result<Done, BrokerError> {
        ArtemisClient::create_address(self, name, routing(r))
            .await
            .map(created)
            .map_err(err)
    }

    async fn create_queue(&self, name: &str) -> Result<Done, BrokerError> {
        let q = QueueConfig {
            name: name.to_string(),
            address: name.to_string(),
            routing_type: RoutingType::Anycast,
            durable: true,
        };
        self.create_queue_with(&q, Some(QUEUE_USER))
            .await
            .map(created)
            .map_err(err)
    }

    async fn create_subscription(&self, name: &str, topic: &str) -> Result<Done, BrokerError> {
        let q = QueueConfig {
            name: name.to_string(),
            address: topic.to_string(),
            routing_type: RoutingType::Multicast,
            durable: true,
        };
        self.create_queue_with(&q, Some(QUEUE_USER))
            .await
            .map(created)
            .map_err(err)
    }

    async fn destroy_queue(&self, name: &str) -> Result<Done, BrokerError> {
        ArtemisClient::destroy_queue(self, name)
            .await
            .map(removed)
            .map_err(err)
    }

    async fn delete_address(&self, name: &str) -> Result<Done, BrokerError> {
        ArtemisClient::delete_address(self, name)
            .await
            .map(removed)
            .map_err(err)
    }

    async fn message_count(&self, queue: &str) -> Result<u64, BrokerError> {
        self.get_message_count(queue).await.map_err(err)
    }

    async fn queue_owner(&self, queue: &str) -> Result<Option<QueueOwner>, BrokerError> {
        let resource = format!("queue.{queue}");
        let (user, address) = futures_util::join!(
            self.queue_user(queue),
            self.call(&resource, "getAddress", vec![])
        );
        let gone = |e: &ArtemisError| {
            matches!(
                e.code(),
                Some(NO_RESOURCE | maas_amqp::artemis::QUEUE_DOES_NOT_EXIST)
            )
        };
        let user = match user {
            Ok(u) => u.filter(|u| !u.is_empty()),
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let address = match address {
            Ok(body) => address_of(&body).ok_or_else(|| BrokerError {
                label: "protocol",
                message: format!("{resource}.getAddress: unexpected reply {body}"),
                connection: false,
            })?,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        Ok(Some(QueueOwner { user, address }))
    }

    fn is_closed(&self) -> bool {
        ArtemisClient::is_closed(self)
    }
}

/// The address of a `getAddress` reply (`["t1"]`).
fn address_of(body: &Json) -> Option<String> {
    match body {
        Json::Array(items) if items.len() == 1 => items[0].as_str().map(str::to_string),
        _ => None,
    }
}

/// Opens Artemis management connections to broker pods: `template` gives SASL, TLS and timeouts; host and port
/// come from the pod.
#[derive(Debug, Clone)]
pub struct ArtemisConnector {
    /// Connection settings shared by every pod (host/port replaced per pod).
    pub template: ConnectOptions,
    /// Pipeline window and per-request timeout.
    pub client: ClientConfig,
}

impl Connector for ArtemisConnector {
    type Broker = ArtemisClient;

    async fn connect(&self, pod: &BrokerPod) -> Result<ArtemisClient, BrokerError> {
        let mut opts = self.template.clone();
        opts.host = pod.host.clone();
        opts.port = pod.port;
        if let Some(tls) = opts.tls.as_mut()
            && tls.server_name.is_none()
        {
            tls.server_name = Some(pod.host.clone());
        }
        // connect() bounds itself by opts.connect_timeout; this is a second fence.
        let limit = opts.connect_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, ArtemisClient::connect(&opts, self.client)).await {
            Ok(r) => r.map_err(err),
            Err(_) => Err(BrokerError {
                label: "connect",
                message: format!(
                    "cannot open Artemis management connection to {}:{}: no answer within {limit:?}",
                    pod.host, pod.port
                ),
                connection: true,
            }),
        }
    }
}
