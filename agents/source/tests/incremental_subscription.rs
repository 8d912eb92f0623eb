//! The config-service address source of storage-controller and subscription-service
//! (`maas_source::spawn_address_source` with `AddressSource::ConfigService`) in incremental mode
//! (docs/architecture.md §3 "Incremental mode"), against a small in-test source on `maas_amqp::server` that
//! speaks it: a full snapshot with its generation on attach, then one `AddressDelta` per change. Checks that the
//! link asks for it, that changes arrive as deltas (no full snapshot after the first), that the published set is
//! the source's set after every change, and that a missed delta brings a full snapshot again.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maas_amqp::options::ConnectOptions;
use maas_amqp::server::{IncomingLink, LinkHandler, Server, ServerOptions};
use maas_amqp::subscriber::{asks_for_delta, source_message};
use maas_model::delta::{AddressDelta, DELTA_SUBJECT, DeltaFormat};
use maas_model::{Address, AddressKind, AddressSet, Flavor, FlavorSet};
use maas_source::{AddressSource, ConfigState, WatchOptions, spawn_address_source};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A source speaking incremental mode on `v1/addresses` when asked (full snapshots otherwise) and full snapshots
/// on `v1/flavors`.
#[derive(Clone)]
struct DeltaSource {
    /// (generation, set)
    addresses: watch::Receiver<(u64, AddressSet)>,
    flavors: String,
    /// Skip the next delta on every link (a lost message: the generation moves on without it).
    skip_next: Arc<AtomicBool>,
    attaches: Arc<AtomicUsize>,
    delta_links: Arc<AtomicUsize>,
    /// (full snapshots, deltas) sent on `v1/addresses`.
    sent: Arc<Mutex<(usize, usize)>>,
}

impl LinkHandler for DeltaSource {
    async fn on_attach<'a>(&'a self, link: IncomingLink<'a>) {
        let source = link.source_address().unwrap_or_default();
        let delta = asks_for_delta(&link);
        let mut accepted = link.accept_sender().await.unwrap();
        let tracker = accepted.tracker.clone();
        let me = self.clone();
        if source == "v1/flavors" {
            tracker.spawn(async move {
                let scope = accepted.scope.clone();
                let m = source_message("enmasse.io/v1/FlavorList", me.flavors.clone(), None, None);
                tokio::select! {
                    () = scope.cancelled() => return,
                    _ = accepted.sender.send(m) => {}
                }
                tokio::select! {
                    () = scope.cancelled() => {}
                    _ = accepted.sender.on_detach() => {}
                }
            });
            return;
        }
        me.attaches.fetch_add(1, Ordering::SeqCst);
        if delta {
            me.delta_links.fetch_add(1, Ordering::SeqCst);
        }
        tracker.spawn(async move {
            let scope = accepted.scope.clone();
            let mut rx = me.addresses.clone();
            let (mut generation, mut held) = rx.borrow_and_update().clone();
            let mut next = source_message(
                "enmasse.io/v1/AddressList",
                held.to_address_list_json(),
                Some(generation),
                None,
            );
            let mut is_delta = false;
            loop {
                // Counted before it is sent: the subscriber may act on it before `send` returns.
                {
                    let mut sent = me.sent.lock().unwrap();
                    if is_delta {
                        sent.1 += 1;
                    } else {
                        sent.0 += 1;
                    }
                }
                tokio::select! {
                    () = scope.cancelled() => return,
                    r = accepted.sender.send(next) => if r.is_err() { return },
                }
                loop {
                    tokio::select! {
                        () = scope.cancelled() => return,
                        _ = accepted.sender.on_detach() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                    let (g, set) = rx.borrow_and_update().clone();
                    if !delta {
                        next = source_message(
                            "enmasse.io/v1/AddressList",
                            set.to_address_list_json(),
                            None,
                            None,
                        );
                        is_delta = false;
                        held = set;
                        generation = g;
                        break;
                    }
                    let d = AddressDelta::between(&held, &set, generation, g);
                    held = set;
                    generation = g;
                    if me.skip_next.swap(false, Ordering::SeqCst) {
                        continue;
                    }
                    next = source_message(
                        DELTA_SUBJECT,
                        d.to_json(DeltaFormat::Typed),
                        Some(d.generation),
                        Some(d.follows),
                    );
                    is_delta = true;
                    break;
                }
            }
        });
    }
}

fn flavors() -> String {
    let mut f = FlavorSet::default();
    f.insert(Flavor {
        name: "small".into(),
        kind: None,
        description: None,
        template_name: None,
        template_parameters: BTreeMap::new(),
        shared: true,
        extra: BTreeMap::new(),
    });
    f.to_json()
}

fn addresses(n: usize, edit: Option<usize>) -> AddressSet {
    let mut s = AddressSet::default();
    for i in 0..n {
        let kind = if edit == Some(i) {
            AddressKind::Broadcast
        } else if i % 2 == 0 {
            AddressKind::Anycast
        } else {
            AddressKind::Queue
        };
        s.insert(Address {
            address: format!("a-{i}"),
            kind,
            flavor: kind.needs_broker().then(|| "small".to_string()),
            topic: None,
        });
    }
    s
}

async fn wait_for_set(rx: &mut watch::Receiver<Arc<ConfigState>>, want: &AddressSet) {
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if rx
                .borrow_and_update()
                .config
                .as_ref()
                .is_some_and(|c| &c.addresses == want)
            {
                return;
            }
            if rx.changed().await.is_err() {
                panic!("source ended");
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "set not reached; holding {:?} addresses",
        rx.borrow().config.as_ref().map(|c| c.addresses.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_config_service_source_applies_deltas_and_resyncs_after_a_missed_one() {
    let (tx, rx) = watch::channel((1u64, addresses(200, None)));
    let source = DeltaSource {
        addresses: rx,
        flavors: flavors(),
        skip_next: Arc::default(),
        attaches: Arc::default(),
        delta_links: Arc::default(),
        sent: Arc::default(),
    };
    let server = Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ServerOptions::new("delta-source"),
        source.clone(),
    )
    .await
    .unwrap();
    let port = server.local_addr().port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(server.serve(async move { s.cancelled().await }));

    let shutdown = CancellationToken::new();
    let mut config = spawn_address_source(
        AddressSource::ConfigService(ConnectOptions::new("127.0.0.1", port)),
        WatchOptions::default(),
        shutdown.clone(),
    )
    .unwrap();
    wait_for_set(&mut config, &addresses(200, None)).await;
    assert_eq!(
        source.delta_links.load(Ordering::SeqCst),
        1,
        "asks for incremental mode"
    );

    // 20 edits, each a delta.
    for k in 0..20u64 {
        let want = addresses(200, Some(k as usize));
        tx.send((2 + k, want.clone())).unwrap();
        wait_for_set(&mut config, &want).await;
    }
    let (snapshots, deltas) = *source.sent.lock().unwrap();
    assert_eq!(snapshots, 1, "no full snapshot after the first");
    assert_eq!(deltas, 20);
    let st = config.borrow().clone();
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(st.inputs_valid, 1);

    // One delta is lost: the next one does not follow, the link is re-attached and a full snapshot brings the
    // current set.
    source.skip_next.store(true, Ordering::SeqCst);
    tx.send((30, addresses(200, Some(100)))).unwrap();
    tx.send((31, addresses(200, Some(101)))).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send((32, addresses(200, Some(102)))).unwrap();
    wait_for_set(&mut config, &addresses(200, Some(102))).await;
    assert_eq!(
        source.attaches.load(Ordering::SeqCst),
        2,
        "re-attached once"
    );
    assert_eq!(source.sent.lock().unwrap().0, 2, "one more full snapshot");
    // And deltas again after it.
    tx.send((33, addresses(200, Some(103)))).unwrap();
    wait_for_set(&mut config, &addresses(200, Some(103))).await;
    assert_eq!(source.sent.lock().unwrap().0, 2);

    shutdown.cancel();
    stop.cancel();
}
