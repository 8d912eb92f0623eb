//! What subscribers get: the four sources, the encoded snapshot messages, the deltas of incremental mode, and the
//! publishers that turn source states into the LATEST [`Published`] state per source.
//!
//! Per source a `tokio::sync::watch` holds only the latest [`Published`] (`Arc`): a slow subscriber skips
//! intermediate ones but always ends on the latest, and a stuck one holds at most one old `Arc`, so memory
//! never grows with the number of changes. A new state is published only when its encoded body differs
//! from the previous one. `None` means "not synced yet": subscribers wait.
//!
//! Incremental mode (docs/architecture.md §3 "Incremental mode"): every published state of `v1/addresses` and
//! `maas` carries its GENERATION (the publisher's counter per source, 1 for the first state, +1 per published
//! change, reset only by a restart) and the [`AddressDelta`]s of the last changes (the latest one always; older ones
//! up to [`DELTA_HISTORY`] in all, while together no more bytes than the full snapshot). A delta subscriber at an older generation gets the one
//! delta that follows it, or those it missed merged into one ([`Published::update_from`]), or — when the history
//! no longer reaches back to it, or the merged delta would be larger than the snapshot — the full snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Message, Properties};
use fe2o3_amqp::types::primitives::Symbol;
use maas_amqp::lean::Encoded;
use maas_model::Config;
use maas_model::delta::{
    AddressDelta, DELTA_SUBJECT, DeltaFormat, FOLLOWS_PROPERTY, GENERATION_PROPERTY,
};
use maas_model::pods::{PodInfo, selector_matches};
use maas_source::ConfigState;
use maas_source::watch::{WatchOptions, watch_file};
use serde_amqp::serde::{Serialize, Serializer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::metrics::Metrics;

/// Content type of every snapshot and delta.
pub const CONTENT_TYPE: &str = "application/json";

/// Most deltas kept per source for subscribers that skipped generations (fewer when they add up to more bytes
/// than the full snapshot; the latest is always kept).
pub const DELTA_HISTORY: usize = 64;

/// A source address a subscriber can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `v1/addresses`: the typed `AddressList`.
    Addresses,
    /// `maas`: the same set in the 2016 format.
    Maas,
    /// `v1/flavors`: the flavor set.
    Flavors,
    /// `podsense`: pods matching the link's label selector.
    Podsense,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 4] = [
        Source::Addresses,
        Source::Maas,
        Source::Flavors,
        Source::Podsense,
    ];

    /// The link source address.
    pub fn address(self) -> &'static str {
        match self {
            Source::Addresses => "v1/addresses",
            Source::Maas => "maas",
            Source::Flavors => "v1/flavors",
            Source::Podsense => "podsense",
        }
    }

    /// The message subject of its snapshots.
    pub fn subject(self) -> &'static str {
        match self {
            Source::Addresses => "enmasse.io/v1/AddressList",
            Source::Maas => "maas.io/v1/AddressConfig",
            Source::Flavors => "maas.io/v1/FlavorSet",
            Source::Podsense => "maas.io/v1/PodList",
        }
    }

    /// The format of its deltas; `None`: this source has no incremental mode (a link asking for it gets full
    /// snapshots as everyone else).
    pub fn delta_format(self) -> Option<DeltaFormat> {
        match self {
            Source::Addresses => Some(DeltaFormat::Typed),
            Source::Maas => Some(DeltaFormat::Legacy),
            Source::Flavors | Source::Podsense => None,
        }
    }

    /// The source named by a link's source address.
    pub fn from_address(address: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.address() == address)
    }
}

/// A message body shared by every message carrying it: serialized as the AMQP string it holds (the same bytes as
/// a `String` body), without a copy of the text per message.
#[derive(Debug, Clone)]
pub struct SharedText(pub Arc<str>);

impl Serialize for SharedText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A message as sent: built once, encoded once; every send writes slices of the one encoding
/// ([`maas_amqp::lean`]).
#[derive(Debug)]
pub struct Outgoing {
    /// The message (subject, content type, application properties, body).
    pub message: Message<AmqpValue<SharedText>>,
    /// Its encoding.
    pub encoded: Encoded,
}

fn outgoing(subject: &str, properties: Option<ApplicationProperties>, body: Arc<str>) -> Outgoing {
    let builder = Message::builder().properties(
        Properties::builder()
            .subject(subject)
            .content_type(Symbol::from(CONTENT_TYPE))
            .build(),
    );
    let message = match properties {
        Some(p) => builder
            .application_properties(p)
            .value(SharedText(body))
            .build(),
        None => builder.value(SharedText(body)).build(),
    };
    let encoded = Encoded::new(&message).unwrap_or_else(|error| {
        // Only a body over 4 GiB could fail to encode; the read limits keep bodies far below that.
        tracing::error!(%error, subject, "cannot encode a message");
        Encoded::empty()
    });
    Outgoing { message, encoded }
}

/// The latest published state of one source (`None` until synced).
pub type Latest = watch::Receiver<Option<Arc<Published>>>;

/// One encoded snapshot, shared by every subscriber of its source.
#[derive(Debug)]
pub struct Snapshot {
    /// The JSON text (the AMQP-value string body).
    pub body: Arc<str>,
    /// The message, pre-settled, sent by reference to every subscriber: subject, content type, body; nothing else.
    pub sendable: Outgoing,
}

impl Snapshot {
    /// Wraps `body` into the message of `source`.
    pub fn new(source: Source, body: String) -> Snapshot {
        let body: Arc<str> = Arc::from(body);
        Snapshot {
            sendable: outgoing(source.subject(), None, Arc::clone(&body)),
            body,
        }
    }
}

/// One delta message of incremental mode, shared by every delta subscriber it is sent to.
#[derive(Debug)]
pub struct DeltaMessage {
    /// The change: from generation `follows` to `generation`.
    pub delta: AddressDelta,
    /// Length of the JSON body.
    pub body_len: usize,
    /// The message: subject [`DELTA_SUBJECT`], application properties `maas:generation` and `maas:follows`.
    pub sendable: Outgoing,
}

impl DeltaMessage {
    /// Encodes `delta` in `format`.
    pub fn new(delta: AddressDelta, format: DeltaFormat) -> DeltaMessage {
        let body: Arc<str> = Arc::from(delta.to_json(format));
        let properties = ApplicationProperties::builder()
            .insert(GENERATION_PROPERTY, delta.generation)
            .insert(FOLLOWS_PROPERTY, delta.follows)
            .build();
        DeltaMessage {
            body_len: body.len(),
            sendable: outgoing(DELTA_SUBJECT, Some(properties), body),
            delta,
        }
    }
}

/// What brings a delta subscriber up to a [`Published`] generation.
#[derive(Debug, Clone)]
pub enum Update {
    /// The full snapshot with its generation ([`Published::tagged_full`]).
    Full,
    /// One delta (possibly several merged) that follows the subscriber's generation.
    Delta(Arc<DeltaMessage>),
}

/// One published state of a source: its generation, the full snapshot, and (address sources) the recent deltas.
#[derive(Debug)]
pub struct Published {
    /// The publisher's generation of this state (per source; 1 for the first).
    pub generation: u64,
    /// The full snapshot, as plain subscribers get it.
    pub snapshot: Arc<Snapshot>,
    /// The delta format of the source; `None` for a source without incremental mode.
    format: Option<DeltaFormat>,
    /// The last deltas, oldest first, each following the one before; the last one produces `generation`.
    deltas: VecDeque<Arc<DeltaMessage>>,
    /// The full snapshot with `maas:generation`, built when a delta subscriber first needs it.
    tagged: OnceLock<Outgoing>,
    /// Merged deltas built for subscribers that skipped generations, by the generation they follow (`None`: the
    /// full snapshot is smaller); shared by every subscriber at that generation; at most one per delta kept, and
    /// together no larger than the snapshot.
    merged: Mutex<Vec<(u64, Option<Arc<DeltaMessage>>)>>,
}

impl Published {
    /// A state without history (the first of a source, or one of a source without incremental mode).
    pub fn new(generation: u64, snapshot: Arc<Snapshot>, format: Option<DeltaFormat>) -> Published {
        Published::with_deltas(generation, snapshot, format, VecDeque::new())
    }

    fn with_deltas(
        generation: u64,
        snapshot: Arc<Snapshot>,
        format: Option<DeltaFormat>,
        deltas: VecDeque<Arc<DeltaMessage>>,
    ) -> Published {
        Published {
            generation,
            snapshot,
            format,
            deltas,
            tagged: OnceLock::new(),
            merged: Mutex::new(Vec::new()),
        }
    }

    /// The generations the delta history reaches back to (the oldest `follows`), if any.
    pub fn history_from(&self) -> Option<u64> {
        self.deltas.front().map(|d| d.delta.follows)
    }

    /// The full snapshot as a delta subscriber gets it: the plain message plus application property
    /// `maas:generation`.
    pub fn tagged_full(&self) -> &Outgoing {
        self.tagged.get_or_init(|| {
            let properties = ApplicationProperties::builder()
                .insert(GENERATION_PROPERTY, self.generation)
                .build();
            let subject = self
                .snapshot
                .sendable
                .message
                .properties
                .as_ref()
                .and_then(|p| p.subject.clone())
                .unwrap_or_default();
            outgoing(&subject, Some(properties), Arc::clone(&self.snapshot.body))
        })
    }

    /// What a delta subscriber that holds generation `have` (`None`: nothing yet) gets to reach this state:
    /// `None` when it holds it already; the full snapshot when it holds nothing (or a generation this state does not
    /// know), or when the history does not reach back to `have`; else the delta that follows `have`: the latest one
    /// when it is one change behind, else the changes since `have` merged into one (the full snapshot instead when
    /// that would be larger).
    pub fn update_from(&self, have: Option<u64>) -> Option<Update> {
        let Some(have) = have else {
            return Some(Update::Full);
        };
        if have == self.generation {
            return None;
        }
        if have > self.generation || self.format.is_none() {
            return Some(Update::Full);
        }
        let Some(start) = self.deltas.iter().position(|d| d.delta.follows == have) else {
            return Some(Update::Full);
        };
        if start + 1 == self.deltas.len() {
            return self.deltas.back().map(|d| Update::Delta(Arc::clone(d)));
        }
        // Subscribers that skipped the same generations share one merged delta (or the verdict "full").
        let Ok(mut cache) = self.merged.lock() else {
            return Some(Update::Full);
        };
        if let Some((_, hit)) = cache.iter().find(|(from, _)| *from == have) {
            return Some(hit.clone().map_or(Update::Full, Update::Delta));
        }
        let format = self.format?;
        let mut merged = self.deltas[start].delta.clone();
        for later in self.deltas.iter().skip(start + 1) {
            merged.merge(later.delta.clone());
        }
        let message = Arc::new(DeltaMessage::new(merged, format));
        let entry = (message.body_len < self.snapshot.body.len()).then_some(message);
        // Kept for the next subscriber at `have` while all kept merged deltas are no larger than the snapshot.
        let cached: usize = cache
            .iter()
            .filter_map(|(_, m)| m.as_ref().map(|m| m.body_len))
            .sum();
        let size = entry.as_ref().map_or(0, |m| m.body_len);
        if cached.saturating_add(size) <= self.snapshot.body.len() {
            cache.push((have, entry.clone()));
        }
        Some(entry.map_or(Update::Full, Update::Delta))
    }
}

/// The latest state of each source (`None` until synced).
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// `v1/addresses`.
    pub addresses: Latest,
    /// `maas`.
    pub maas: Latest,
    /// `v1/flavors`.
    pub flavors: Latest,
    /// `podsense` pods (each subscriber filters and encodes its own view); `None` without a pod source.
    pub pods: Option<watch::Receiver<Option<Arc<Vec<PodInfo>>>>>,
}

impl Snapshots {
    /// The latest state channel of a static source (`podsense` has none).
    pub fn of(&self, source: Source) -> Option<&Latest> {
        match source {
            Source::Addresses => Some(&self.addresses),
            Source::Maas => Some(&self.maas),
            Source::Flavors => Some(&self.flavors),
            Source::Podsense => None,
        }
    }
}

pub use maas_source::PodsState;

/// The `podsense` body for a selector: the matching pods as a JSON list.
pub fn podsense_body(pods: &[PodInfo], selector: &BTreeMap<String, String>) -> String {
    let matching: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| selector_matches(selector, &p.labels))
        .collect();
    serde_json::to_string(&matching).unwrap_or_else(|_| "[]".to_string())
}

fn build(source: Source, config: &Config, metrics: &Metrics) -> Arc<Snapshot> {
    let started = Instant::now();
    let body = match source {
        Source::Addresses => config.addresses.to_address_list_json(),
        Source::Maas => config.addresses.to_2016_json(),
        Source::Flavors => config.flavors.to_json(),
        Source::Podsense => "[]".to_string(),
    };
    let snapshot = Arc::new(Snapshot::new(source, body));
    metrics.build_time(source.address(), started.elapsed().as_secs_f64());
    snapshot
}

/// The publisher's state of one static source: its generation counter, the configuration of the last published
/// state (to compute the next delta from) and the delta history.
struct Feed {
    source: Source,
    tx: watch::Sender<Option<Arc<Published>>>,
    generation: u64,
    last: Option<Arc<Config>>,
    deltas: VecDeque<Arc<DeltaMessage>>,
}

impl Feed {
    fn new(source: Source) -> (Feed, Latest) {
        let (tx, rx) = watch::channel(None);
        let feed = Feed {
            source,
            tx,
            generation: 0,
            last: None,
            deltas: VecDeque::new(),
        };
        (feed, rx)
    }

    /// Publishes `config` when its body differs from the current one.
    fn offer(&mut self, config: &Arc<Config>, metrics: &Metrics) {
        let started = Instant::now();
        let snapshot = build(self.source, config, metrics);
        let same = self
            .tx
            .borrow()
            .as_ref()
            .is_some_and(|c| c.snapshot.body == snapshot.body);
        if same {
            return;
        }
        self.generation += 1;
        let built = started.elapsed();
        let format = self.source.delta_format();
        match (format, &self.last) {
            (Some(format), Some(last)) => {
                let delta_started = Instant::now();
                let delta = AddressDelta::between(
                    &last.addresses,
                    &config.addresses,
                    self.generation - 1,
                    self.generation,
                );
                let message = DeltaMessage::new(delta, format);
                metrics
                    .delta_build_time(self.source.address(), delta_started.elapsed().as_secs_f64());
                // The latest delta is always kept (a subscriber one change behind gets exactly it); older ones
                // only while all together are no larger than the full snapshot, which is what a subscriber gets
                // once the history no longer reaches back to it.
                self.deltas.push_back(Arc::new(message));
                let limit = snapshot.body.len();
                let mut bytes: usize = self.deltas.iter().map(|d| d.body_len).sum();
                while self.deltas.len() > DELTA_HISTORY || (self.deltas.len() > 1 && bytes > limit)
                {
                    match self.deltas.pop_front() {
                        Some(d) => bytes = bytes.saturating_sub(d.body_len),
                        None => break,
                    }
                }
            }
            _ => self.deltas.clear(),
        }
        self.last = Some(Arc::clone(config));
        let published =
            Published::with_deltas(self.generation, snapshot, format, self.deltas.clone());
        self.tx.send_replace(Some(Arc::new(published)));
        debug!(
            source = self.source.address(),
            generation = self.generation,
            deltas_kept = self.deltas.len(),
            snapshot_ms = built.as_secs_f64() * 1e3,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "published"
        );
    }
}

/// Publishes the configuration states: on every new [`ConfigState`] with a configuration, rebuilds the three
/// static sources and publishes those whose body changed (with the next generation and, for the address sources,
/// the delta from the previous state). Also keeps the config metrics and reports readiness through `on_state`.
/// Ends when `stop` fires or the source ends.
pub fn spawn_config_publisher(
    mut config: watch::Receiver<Arc<ConfigState>>,
    metrics: Metrics,
    stop: CancellationToken,
    on_state: impl Fn(&ConfigState) + Send + 'static,
) -> (Latest, Latest, Latest) {
    let (addresses, addresses_rx) = Feed::new(Source::Addresses);
    let (maas, maas_rx) = Feed::new(Source::Maas);
    let (flavors, flavors_rx) = Feed::new(Source::Flavors);
    tokio::spawn(async move {
        let mut feeds = [addresses, maas, flavors];
        let mut seen_error_events = 0u64;
        loop {
            let state = config.borrow_and_update().clone();
            if state.error_events > seen_error_events {
                metrics.source_errors("config", state.error_events - seen_error_events);
                seen_error_events = state.error_events;
            }
            let addresses = state.config.as_ref().map_or(0, |c| c.addresses.len());
            metrics.config_state(state.errors.len(), addresses, state.generation);
            metrics.inputs(state.inputs_valid, state.inputs_invalid);
            if let Some(cfg) = &state.config {
                for feed in &mut feeds {
                    feed.offer(cfg, &metrics);
                }
            }
            on_state(&state);
            tokio::select! {
                () = stop.cancelled() => break,
                r = config.changed() => if r.is_err() { break },
            }
        }
    });
    (addresses_rx, maas_rx, flavors_rx)
}

/// Publishes the pods of a [`PodsState`] channel once synced (an unchanged list is not republished).
pub fn spawn_pods_publisher(
    mut pods: watch::Receiver<Arc<PodsState>>,
    stop: CancellationToken,
) -> watch::Receiver<Option<Arc<Vec<PodInfo>>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let state = pods.borrow_and_update().clone();
            if state.synced {
                tx.send_if_modified(|current: &mut Option<Arc<Vec<PodInfo>>>| {
                    let same = current.as_deref() == Some(&state.pods);
                    if !same {
                        *current = Some(Arc::new(state.pods.clone()));
                    }
                    !same
                });
            }
            tokio::select! {
                () = stop.cancelled() => break,
                r = pods.changed() => if r.is_err() { break },
            }
        }
    });
    rx
}

/// File-mode pods: watches `path` (a JSON list of [`PodInfo`]) kubelet-safely. A file that does not parse keeps
/// the last good list (counted in `source_errors{source="pods"}` and logged once per distinct content).
pub fn spawn_pods_file(
    path: PathBuf,
    opts: WatchOptions,
    metrics: Metrics,
) -> Result<watch::Receiver<Arc<PodsState>>, Error> {
    let mut file = watch_file(path.clone(), opts).map_err(|e| Error::Source(e.to_string()))?;
    let parse = move |text: &str| -> Result<Vec<PodInfo>, String> {
        let mut pods: Vec<PodInfo> = serde_json::from_str(text)
            .map_err(|e| format!("{}: not a pod list: {e}", path.display()))?;
        pods.sort();
        Ok(pods)
    };
    let first = file.borrow_and_update().clone();
    let mut state = PodsState::default();
    match parse(&first.content) {
        Ok(pods) => {
            state = PodsState { pods, synced: true };
        }
        Err(e) => {
            metrics.source_errors("pods", 1);
            warn!(error = %e, "pods file is invalid; podsense waits for a valid one");
        }
    }
    let (tx, rx) = watch::channel(Arc::new(state));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => break,
                r = file.changed() => if r.is_err() { break },
            }
            let snap = file.borrow_and_update().clone();
            match parse(&snap.content) {
                Ok(pods) => {
                    let next = PodsState { pods, synced: true };
                    if **tx.borrow() != next {
                        info!(pods = next.pods.len(), "pods file loaded");
                        if tx.send(Arc::new(next)).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    // The watch publishes only changed content, so this is once per distinct bad input.
                    metrics.source_errors("pods", 1);
                    warn!(error = %e, "pods file is invalid; the last good pod list stays served");
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    use maas_model::{Address, AddressKind, AddressSet};

    fn encoded<T: fe2o3_amqp::types::messaging::SerializableBody>(m: &Message<T>) -> Vec<u8> {
        serde_amqp::to_vec(&Serializable(m)).unwrap()
    }

    #[test]
    fn a_plain_snapshot_is_byte_for_byte_the_message_of_a_string_body() {
        let body = r#"{"apiVersion":"enmasse.io/v1","kind":"AddressList","items":[]}"#.to_string();
        let before: Message<AmqpValue<String>> = Message::builder()
            .properties(
                Properties::builder()
                    .subject(Source::Addresses.subject())
                    .content_type(Symbol::from(CONTENT_TYPE))
                    .build(),
            )
            .value(body.clone())
            .build();
        let now = Snapshot::new(Source::Addresses, body);
        assert_eq!(encoded(&now.sendable.message), encoded(&before));
        assert!(now.sendable.message.application_properties.is_none());
    }

    fn anycast(name: &str) -> Address {
        Address {
            address: name.into(),
            kind: AddressKind::Anycast,
            flavor: None,
            topic: None,
        }
    }

    /// A feed's states for the sets `sets` in turn (generation 1 for the first), as the publisher builds them.
    fn states(sets: &[Vec<&str>]) -> Vec<Arc<Published>> {
        states_with(sets, 30)
    }

    /// [`states`] with `filler` more unchanged addresses in every set.
    fn states_with(sets: &[Vec<&str>], filler: usize) -> Vec<Arc<Published>> {
        let metrics = Metrics::register(
            &mut prometheus_client::registry::Registry::default(),
            Arc::default(),
        );
        let (mut feed, rx) = Feed::new(Source::Addresses);
        let mut out = Vec::new();
        for names in sets {
            // Unchanged filler, so that the snapshot is larger than a few deltas (the history's byte bound).
            let mut addresses = AddressSet::default();
            for i in 0..filler {
                addresses.insert(anycast(&format!("zz-filler-{i}")));
            }
            for n in names {
                addresses.insert(anycast(n));
            }
            let config = Arc::new(Config {
                addresses,
                ..Config::default()
            });
            feed.offer(&config, &metrics);
            out.push(rx.borrow().clone().unwrap());
        }
        out
    }

    fn delta_of(update: Option<Update>) -> Arc<DeltaMessage> {
        match update {
            Some(Update::Delta(d)) => d,
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    #[test]
    fn generations_chain_and_a_subscriber_behind_gets_one_merged_delta() {
        let s = states(&[
            vec!["a", "b"],
            vec!["a", "b", "c"],
            vec!["a", "b", "c"], // unchanged: not published, no generation
            vec!["a", "c"],
            vec!["a", "c", "d"],
        ]);
        let latest = &s[4];
        assert_eq!(
            s.iter().map(|p| p.generation).collect::<Vec<_>>(),
            [1, 2, 2, 3, 4]
        );
        assert!(matches!(latest.update_from(None), Some(Update::Full)));
        assert!(latest.update_from(Some(4)).is_none());
        let one = delta_of(latest.update_from(Some(3)));
        assert_eq!((one.delta.follows, one.delta.generation), (3, 4));
        assert_eq!(one.delta.upserted, [anycast("d")]);
        let merged = delta_of(latest.update_from(Some(1)));
        assert_eq!((merged.delta.follows, merged.delta.generation), (1, 4));
        assert_eq!(merged.delta.upserted, [anycast("c"), anycast("d")]);
        assert_eq!(merged.delta.removed, ["b"]);
        // Shared by every subscriber at generation 1.
        assert!(Arc::ptr_eq(&merged, &delta_of(latest.update_from(Some(1)))));
        let text = String::from_utf8_lossy(&encoded(&merged.sendable.message)).to_string();
        assert!(
            text.contains(DELTA_SUBJECT) && text.contains(GENERATION_PROPERTY),
            "{text}"
        );
        // The tagged full snapshot: the same body, with its generation.
        let tagged = latest.tagged_full();
        let generation = tagged
            .message
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get(GENERATION_PROPERTY).cloned());
        assert_eq!(
            generation,
            Some(fe2o3_amqp::types::primitives::SimpleValue::Ulong(4))
        );
        assert_eq!(*tagged.message.body.0.0, *latest.snapshot.body);
    }

    #[test]
    fn the_history_is_bounded_by_count_and_by_the_size_of_the_snapshot() {
        let mut sets = vec![vec!["base-address-with-a-long-name"]];
        for i in 0..(DELTA_HISTORY + 10) {
            let mut names = vec!["base-address-with-a-long-name"];
            let name = format!("n{i}");
            names.push(Box::leak(name.into_boxed_str()));
            sets.push(names);
        }
        let s = states_with(&sets, 0);
        let latest = s.last().unwrap();
        // Two deltas add up to more bytes than this small snapshot: only the latest is kept (and sent to a
        // subscriber one change behind, even though it is larger), a subscriber further behind gets the full one.
        assert_eq!(latest.history_from(), Some(latest.generation - 1));
        let last = delta_of(latest.update_from(Some(latest.generation - 1)));
        assert!(last.body_len > latest.snapshot.body.len() / 2);
        assert!(matches!(
            latest.update_from(Some(latest.generation - 2)),
            Some(Update::Full)
        ));

        let mut big: Vec<String> = (0..400).map(|i| format!("address-{i}")).collect();
        let mut sets = vec![big.clone()];
        for i in 0..(DELTA_HISTORY + 10) {
            big.push(format!("x{i}"));
            sets.push(big.clone());
        }
        let sets: Vec<Vec<&str>> = sets
            .iter()
            .map(|v| v.iter().map(String::as_str).collect())
            .collect();
        let s = states(&sets);
        let latest = s.last().unwrap();
        let from = latest.history_from().unwrap();
        assert_eq!(latest.generation - from, DELTA_HISTORY as u64);
        assert!(matches!(
            latest.update_from(Some(from - 1)),
            Some(Update::Full)
        ));
        let d = delta_of(latest.update_from(Some(from)));
        assert_eq!(d.delta.upserted.len(), DELTA_HISTORY);
    }
}
