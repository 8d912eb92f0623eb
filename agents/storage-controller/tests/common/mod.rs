//! Test support: an in-memory broker ([`FakeBroker`]) behaving like Artemis management as the transcripts show it
//! (idempotent creates report "already there", UUID temp queue and Artemis' own names listed, message counts tests
//! can set, destroyQueue refused while the queue has a consumer, the `user` createQueue stored read back with
//! getUser/getAddress), and a connector handing them out by pod name.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use maas_model::BrokerPod;
use storage_controller::broker::{BrokerError, BrokerMgmt, Connector, Done};
use storage_controller::provision::{QUEUE_USER, QueueOwner, Routing};

#[derive(Debug, Default)]
pub struct FakeState {
    pub addresses: BTreeMap<String, Routing>,
    /// queue -> message count.
    pub queues: BTreeMap<String, u64>,
    /// queue -> (user it was created with, address it is bound to); a queue without an entry has no user and is
    /// bound to the address of its name.
    pub meta: BTreeMap<String, (Option<String>, String)>,
    /// getUser/getAddress lookups answered.
    pub owner_reads: usize,
    /// Queues with a consumer (destroyQueue fails with AMQ229025).
    pub consumers: Vec<String>,
    /// Every write, in order: "createAddress x", ...
    pub writes: Vec<String>,
    pub reads: usize,
    /// When set, the connection is down.
    pub down: bool,
}

/// One in-memory broker; clones share it.
#[derive(Debug, Clone, Default)]
pub struct FakeBroker(pub Arc<Mutex<FakeState>>);

impl FakeBroker {
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
    pub fn set_count(&self, queue: &str, n: u64) {
        self.state().queues.insert(queue.to_string(), n);
    }
    pub fn writes(&self) -> Vec<String> {
        self.state().writes.clone()
    }
    pub fn add_foreign(&self, name: &str) {
        let mut s = self.state();
        s.addresses.insert(name.into(), Routing::Anycast);
        s.queues.insert(name.into(), 0);
    }
    /// A queue on the ANYCAST address of its name, made by `user` (None: no user), holding `messages`.
    pub fn add_queue_by(&self, name: &str, user: Option<&str>, messages: u64) {
        let mut s = self.state();
        s.addresses.insert(name.into(), Routing::Anycast);
        s.queues.insert(name.into(), messages);
        s.meta
            .insert(name.into(), (user.map(str::to_string), name.to_string()));
    }
    fn check(&self) -> Result<(), BrokerError> {
        if self.state().down {
            Err(BrokerError {
                label: "disconnected",
                message: "connection lost".into(),
                connection: true,
            })
        } else {
            Ok(())
        }
    }
    fn failed(message: String) -> BrokerError {
        BrokerError {
            label: "failed",
            message,
            connection: false,
        }
    }
}

impl BrokerMgmt for FakeBroker {
    async fn address_names(&self) -> Result<Vec<String>, BrokerError> {
        self.check()?;
        let mut s = self.state();
        s.reads += 1;
        let mut names: Vec<String> = s.addresses.keys().cloned().collect();
        names.extend(
            [
                "activemq.management",
                "DLQ",
                "ExpiryQueue",
                "activemq.notifications",
                "5805de55-5e16-4857-8ecc-a00657602fae",
            ]
            .map(String::from),
        );
        Ok(names)
    }
    async fn queue_names(&self) -> Result<Vec<String>, BrokerError> {
        self.check()?;
        let mut s = self.state();
        s.reads += 1;
        let mut names: Vec<String> = s.queues.keys().cloned().collect();
        names.extend(
            ["DLQ", "ExpiryQueue", "5075030b-bde6-4895-a366-826d1eb23a05"].map(String::from),
        );
        Ok(names)
    }
    async fn create_address(&self, name: &str, routing: Routing) -> Result<Done, BrokerError> {
        self.check()?;
        let mut s = self.state();
        if s.addresses.contains_key(name) {
            return Ok(Done::Unchanged);
        }
        s.addresses.insert(name.into(), routing);
        s.writes
            .push(format!("createAddress {name} {}", routing.as_str()));
        Ok(Done::Changed)
    }
    async fn create_queue(&self, name: &str) -> Result<Done, BrokerError> {
        self.check()?;
        let mut s = self.state();
        if s.queues.contains_key(name) {
            return Ok(Done::Unchanged);
        }
        s.queues.insert(name.into(), 0);
        s.meta
            .insert(name.into(), (Some(QUEUE_USER.into()), name.to_string()));
        s.writes.push(format!("createQueue {name}"));
        Ok(Done::Changed)
    }
    async fn create_subscription(&self, name: &str, topic: &str) -> Result<Done, BrokerError> {
        self.check()?;
        let mut s = self.state();
        if s.queues.contains_key(name) {
            return Ok(Done::Unchanged);
        }
        s.queues.insert(name.into(), 0);
        s.meta
            .insert(name.into(), (Some(QUEUE_USER.into()), topic.to_string()));
        s.writes
            .push(format!("createQueue {name} on {topic} MULTICAST"));
        Ok(Done::Changed)
    }
    async fn destroy_queue(&self, name: &str) -> Result<Done, BrokerError> {
        self.check()?;
        let mut s = self.state();
        if s.consumers.iter().any(|c| c == name) {
            return Err(FakeBroker::failed(format!(
                "AMQ229025: Cannot delete queue {name} on binding {name} - it has consumers"
            )));
        }
        if s.queues.remove(name).is_none() {
            return Ok(Done::Unchanged);
        }
        s.meta.remove(name);
        s.writes.push(format!("destroyQueue {name}"));
        Ok(Done::Changed)
    }
    async fn delete_address(&self, name: &str) -> Result<Done, BrokerError> {
        self.check()?;
        let mut s = self.state();
        if s.queues.contains_key(name) {
            return Err(FakeBroker::failed(format!(
                "AMQ229205: Address {name} has bindings"
            )));
        }
        if s.addresses.remove(name).is_none() {
            return Ok(Done::Unchanged);
        }
        s.writes.push(format!("deleteAddress {name}"));
        Ok(Done::Changed)
    }
    async fn message_count(&self, queue: &str) -> Result<u64, BrokerError> {
        self.check()?;
        let mut s = self.state();
        s.reads += 1;
        s.queues
            .get(queue)
            .copied()
            .ok_or_else(|| FakeBroker::failed(format!("AMQ229017: Queue {queue} does not exist")))
    }
    async fn queue_owner(&self, queue: &str) -> Result<Option<QueueOwner>, BrokerError> {
        self.check()?;
        let mut s = self.state();
        s.owner_reads += 1;
        if !s.queues.contains_key(queue) {
            return Ok(None);
        }
        let (user, address) = s
            .meta
            .get(queue)
            .cloned()
            .unwrap_or_else(|| (None, queue.to_string()));
        Ok(Some(QueueOwner { user, address }))
    }
    fn is_closed(&self) -> bool {
        self.state().down
    }
}

/// Hands out the fake broker registered for a pod name.
#[derive(Debug, Clone, Default)]
pub struct FakeConnector(pub Arc<Mutex<BTreeMap<String, FakeBroker>>>);

impl FakeConnector {
    pub fn broker(&self, pod: &str) -> FakeBroker {
        self.0
            .lock()
            .unwrap()
            .entry(pod.to_string())
            .or_default()
            .clone()
    }
}

impl Connector for FakeConnector {
    type Broker = FakeBroker;
    async fn connect(&self, pod: &BrokerPod) -> Result<FakeBroker, BrokerError> {
        let b = self.broker(&pod.name);
        if b.state().down {
            return Err(BrokerError {
                label: "connect",
                message: format!("cannot connect to {}", pod.name),
                connection: true,
            });
        }
        Ok(b)
    }
}
pub mod fake_api;
