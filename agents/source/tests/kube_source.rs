//! The Kubernetes API source against a mocked API server (the ApiServerVerifier pattern of kube-rs/controller-rs):
//! `tower_test::mock::pair` behind `kube::Client::new`, and a verifier that answers the requests the watchers make
//! (list, watch, Event POST), matching them loosely by method, path and key query parameters.
//!
//! Time is paused: the watchers' backoff after API errors elapses at once, and a missing request fails a step after
//! its (virtual) timeout instead of hanging.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use maas_model::AddressKind;
use maas_source::ConfigState;
use maas_source::kube::{KubeConfigOptions, PodsState, spawn_kube_config, spawn_kube_pods};
use serde_json::{Value, json};
use tokio::sync::watch::Receiver;
use tower_test::mock::{self, Handle, SendResponse};

const NS: &str = "maas";
/// How long one expected request or state may take (virtual time).
const STEP: Duration = Duration::from_secs(20);

const FLAVORS: &str = r#"{"vanilla-queue": {"type": "queue", "templateName": "queue-persisted"},
  "vanilla-topic": {"type": "topic", "templateName": "topic-persisted"}}"#;

/// What a request to the mocked API server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ListAddresses,
    WatchAddresses,
    ListFlavor,
    WatchFlavor,
    ListPods,
    WatchPods,
    PostEvent,
    PatchEvent,
    Other,
}

/// One request, decoded, with the handle to answer it.
struct Req {
    kind: Kind,
    path: String,
    raw_query: String,
    query: BTreeMap<String, String>,
    body: Value,
    send: SendResponse<Response<Body>>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl Req {
    async fn read(req: Request<Body>, send: SendResponse<Response<Body>>) -> Req {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let raw_query = req.uri().query().unwrap_or_default().to_string();
        let query: BTreeMap<String, String> = raw_query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let watch = query.get("watch").map(String::as_str) == Some("true");
        let kind = match (method.clone(), path.as_str()) {
            (Method::GET, p) if p == format!("/api/v1/namespaces/{NS}/configmaps") => {
                match (query.contains_key("fieldSelector"), watch) {
                    (true, false) => Kind::ListFlavor,
                    (true, true) => Kind::WatchFlavor,
                    (false, false) => Kind::ListAddresses,
                    (false, true) => Kind::WatchAddresses,
                }
            }
            (Method::GET, p) if p == format!("/api/v1/namespaces/{NS}/pods") => {
                if watch {
                    Kind::WatchPods
                } else {
                    Kind::ListPods
                }
            }
            (Method::POST, p) if p == format!("/apis/events.k8s.io/v1/namespaces/{NS}/events") => {
                Kind::PostEvent
            }
            (Method::PATCH, p)
                if p.starts_with(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events/")) =>
            {
                Kind::PatchEvent
            }
            _ => Kind::Other,
        };
        Req {
            kind,
            path,
            raw_query,
            query,
            body,
            send,
        }
    }

    fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn respond(self, status: u16, body: Vec<u8>) {
        let response = Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        self.send.send_response(response);
    }

    fn respond_json(self, status: u16, v: &Value) {
        self.respond(status, serde_json::to_vec(v).unwrap());
    }

    /// A list response at resourceVersion `rv`.
    fn respond_list(self, kind: &str, rv: &str, items: &[Value]) {
        self.respond_json(
            200,
            &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}),
        );
    }

    /// A watch response carrying these events, one JSON line each; the stream then ends (the watcher re-watches).
    fn respond_events(self, events: &[Value]) {
        let mut body = Vec::new();
        for e in events {
            body.extend(serde_json::to_vec(e).unwrap());
            body.push(b'\n');
        }
        self.respond(200, body);
    }

    /// An API error (Status object).
    fn respond_status(self, code: u16, reason: &str, message: &str) {
        self.respond_json(
            code,
            &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code}),
        );
    }
}

/// The mocked API server: answers what the test expects, parks the other requests (e.g. held-open watches) until
/// the test asks for them.
struct Verifier {
    handle: Handle<Request<Body>, Response<Body>>,
    parked: Vec<Req>,
}

impl Verifier {
    async fn pull(&mut self, within: Duration) -> Option<Req> {
        match tokio::time::timeout(within, self.handle.next_request()).await {
            Ok(Some((req, send))) => Some(Req::read(req, send).await),
            Ok(None) => panic!("the client is gone"),
            Err(_) => None,
        }
    }

    /// The next request of this kind (parked or new), within [`STEP`].
    async fn expect(&mut self, kind: Kind) -> Req {
        if let Some(i) = self.parked.iter().position(|r| r.kind == kind) {
            return self.parked.remove(i);
        }
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(req) = self.pull(left).await else {
                let parked: Vec<_> = self
                    .parked
                    .iter()
                    .map(|r| (r.kind, r.path.clone()))
                    .collect();
                panic!("no {kind:?} request within {STEP:?}; parked: {parked:?}");
            };
            assert_ne!(
                req.kind,
                Kind::Other,
                "unexpected request {} ?{}",
                req.path,
                req.raw_query
            );
            if req.kind == kind {
                return req;
            }
            self.parked.push(req);
        }
    }

    /// True when no request of this kind arrives within `d`.
    async fn quiet(&mut self, kind: Kind, d: Duration) -> bool {
        if self.parked.iter().any(|r| r.kind == kind) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.pull(left).await {
                None => return true,
                Some(r) if r.kind == kind => return false,
                Some(r) => self.parked.push(r),
            }
        }
    }
}

fn mock_client() -> (kube::Client, Verifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        client,
        Verifier {
            handle,
            parked: Vec::new(),
        },
    )
}

fn start() -> (Receiver<Arc<ConfigState>>, Verifier) {
    let (client, v) = mock_client();
    let rx = spawn_kube_config(client, KubeConfigOptions::new(NS, "maas-config-service"));
    (rx, v)
}

fn cm(name: &str, rv: &str, data: &[(&str, &str)]) -> Value {
    let data: BTreeMap<_, _> = data.iter().copied().collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": NS, "resourceVersion": rv, "uid": format!("uid-{name}"),
                        "labels": {"type": "address-config"}},
           "data": data})
}

fn flavor_cm(rv: &str) -> Value {
    cm("flavor", rv, &[("flavor.json", FLAVORS)])
}

fn ev(type_: &str, object: Value) -> Value {
    json!({"type": type_, "object": object})
}

/// ConfigMap `a`: the 2016 format.
fn cm_a(rv: &str) -> Value {
    cm(
        "a",
        rv,
        &[(
            "json",
            r#"{"orders": {"store_and_forward": true, "multicast": false, "flavor": "vanilla-queue"},
                "anycast1": {"store_and_forward": false, "multicast": false}}"#,
        )],
    )
}

/// ConfigMap `b`: the typed format.
fn cm_b(rv: &str) -> Value {
    cm(
        "b",
        rv,
        &[(
            "config.json",
            r#"[{"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "events"},
                 "spec": {"address": "events", "type": "topic", "flavor": "vanilla-topic"}},
                {"apiVersion": "enmasse.io/v1", "kind": "Address", "metadata": {"name": "news"},
                 "spec": {"address": "news", "type": "multicast"}}]"#,
        )],
    )
}

/// Address -> (kind, flavor) of the published configuration.
fn addresses(s: &ConfigState) -> BTreeMap<String, (AddressKind, Option<String>)> {
    s.config
        .as_ref()
        .map(|c| {
            c.addresses
                .iter()
                .map(|a| (a.address.clone(), (a.kind, a.flavor.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn names(s: &ConfigState) -> Vec<String> {
    addresses(s).into_keys().collect()
}

/// Waits (within [`STEP`]) until the published state satisfies `pred`.
async fn wait_state<T: std::fmt::Debug>(
    rx: &mut Receiver<Arc<T>>,
    what: &str,
    pred: impl Fn(&T) -> bool,
) -> Arc<T> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let current = rx.borrow_and_update().clone();
        if pred(&current) {
            return current;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("state never became {what}; last: {current:#?}"),
        }
    }
}

/// Answers the initial lists (address ConfigMaps at rv 10, the flavor ConfigMap at rv 10) and waits for the synced
/// state.
async fn initial(
    rx: &mut Receiver<Arc<ConfigState>>,
    v: &mut Verifier,
    items: &[Value],
) -> Arc<ConfigState> {
    v.expect(Kind::ListAddresses)
        .await
        .respond_list("ConfigMapList", "10", items);
    v.expect(Kind::ListFlavor)
        .await
        .respond_list("ConfigMapList", "10", &[flavor_cm("5")]);
    wait_state(rx, "synced", |s| s.synced).await
}

#[tokio::test(start_paused = true)]
async fn initial_list_merges_both_formats_and_flavors() {
    let (mut rx, mut v) = start();
    let list = v.expect(Kind::ListAddresses).await;
    assert!(
        list.raw_query
            .contains("labelSelector=type%3Daddress-config"),
        "{}",
        list.raw_query
    );
    assert_eq!(list.q("limit"), Some("500"));
    assert_eq!(list.q("watch"), None);
    list.respond_list("ConfigMapList", "10", &[cm_a("7"), cm_b("8")]);

    // The address watch starts from the list's resourceVersion, with bookmarks and a server-side timeout.
    let watch = v.expect(Kind::WatchAddresses).await;
    assert_eq!(watch.q("resourceVersion"), Some("10"));
    assert_eq!(watch.q("allowWatchBookmarks"), Some("true"));
    assert_eq!(watch.q("timeoutSeconds"), Some("290"));
    assert_eq!(watch.q("labelSelector"), Some("type=address-config"));
    // Not synced before the flavor ConfigMap was listed too.
    assert!(!rx.borrow().synced);
    assert!(rx.borrow().config.is_none());

    let flavor = v.expect(Kind::ListFlavor).await;
    assert_eq!(flavor.q("fieldSelector"), Some("metadata.name=flavor"));
    flavor.respond_list("ConfigMapList", "10", &[flavor_cm("5")]);

    let s = wait_state(&mut rx, "synced", |s| s.synced).await;
    let q = |k: AddressKind, f: Option<&str>| (k, f.map(str::to_string));
    assert_eq!(
        addresses(&s),
        BTreeMap::from([
            ("anycast1".to_string(), q(AddressKind::Anycast, None)),
            (
                "events".to_string(),
                q(AddressKind::Topic, Some("vanilla-topic"))
            ),
            ("news".to_string(), q(AddressKind::Broadcast, None)),
            (
                "orders".to_string(),
                q(AddressKind::Queue, Some("vanilla-queue"))
            ),
        ])
    );
    let flavors = s.config.as_ref().map(|c| c.flavors.len());
    assert_eq!(flavors, Some(2));
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!((s.generation, s.error_events), (1, 0));
    drop(watch);
}

#[tokio::test(start_paused = true)]
async fn missing_flavor_configmap_is_fine() {
    let (mut rx, mut v) = start();
    v.expect(Kind::ListAddresses).await.respond_list(
        "ConfigMapList",
        "10",
        &[cm("c", "3", &[("json", r#"{"plain": {}}"#)])],
    );
    v.expect(Kind::ListFlavor)
        .await
        .respond_list("ConfigMapList", "10", &[]);
    let s = wait_state(&mut rx, "synced", |s| s.synced).await;
    assert_eq!(names(&s), ["plain"]);
    assert_eq!(s.config.as_ref().map(|c| c.flavors.len()), Some(0));
    assert!(s.errors.is_empty());
}

#[tokio::test(start_paused = true)]
async fn watch_events_add_modify_delete() {
    let (mut rx, mut v) = start();
    let s = initial(&mut rx, &mut v, &[cm_a("7"), cm_b("8")]).await;
    assert_eq!(names(&s), ["anycast1", "events", "news", "orders"]);

    v.expect(Kind::WatchAddresses)
        .await
        .respond_events(&[ev("ADDED", cm("c", "11", &[("json", r#"{"added": {}}"#)]))]);
    let s = wait_state(&mut rx, "with c", |s| addresses(s).contains_key("added")).await;
    assert_eq!(s.generation, 2);

    // The watch resumes from the last event's resourceVersion.
    let watch = v.expect(Kind::WatchAddresses).await;
    assert_eq!(watch.q("resourceVersion"), Some("11"));
    watch.respond_events(&[
        ev(
            "MODIFIED",
            cm(
                "a",
                "12",
                &[(
                    "json",
                    r#"{"orders2": {"store_and_forward": true, "flavor": "vanilla-queue"}}"#,
                )],
            ),
        ),
        ev("DELETED", cm_b("13")),
    ]);
    let s = wait_state(&mut rx, "a modified, b deleted", |s| {
        names(s) == ["added", "orders2"]
    })
    .await;
    assert!(s.generation >= 3);
    assert!(s.errors.is_empty());

    // A flavor change reaches the merged configuration too.
    v.expect(Kind::WatchFlavor).await.respond_events(&[ev(
        "MODIFIED",
        cm(
            "flavor",
            "14",
            &[("flavor.json", r#"{"vanilla-queue": {"type": "queue"}}"#)],
        ),
    )]);
    let s = wait_state(&mut rx, "one flavor", |s| {
        s.config.as_ref().map(|c| c.flavors.len()) == Some(1)
    })
    .await;
    assert_eq!(names(&s), ["added", "orders2"]);
}

#[tokio::test(start_paused = true)]
async fn bad_configmap_keeps_last_good_and_posts_an_event() {
    let (mut rx, mut v) = start();
    let s = initial(&mut rx, &mut v, &[cm_a("7")]).await;
    assert_eq!(names(&s), ["anycast1", "orders"]);

    let bad = r#"{"$reserved": {}, "fine": {}}"#;
    v.expect(Kind::WatchAddresses)
        .await
        .respond_events(&[ev("MODIFIED", cm("a", "11", &[("json", bad)]))]);
    let s = wait_state(&mut rx, "with errors", |s| !s.errors.is_empty()).await;
    // The last good content stays in force: nothing deleted, nothing added.
    assert_eq!(names(&s), ["anycast1", "orders"]);
    assert_eq!(s.generation, 1);
    assert_eq!(s.error_events, 1);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    let line = &s.errors[0];
    assert!(
        line.starts_with(r#"ConfigMap maas/a key "json" address "$reserved""#),
        "{line}"
    );

    // A Warning Event on that ConfigMap, naming key and address.
    let post = v.expect(Kind::PostEvent).await;
    let e = post.body.clone();
    assert_eq!(e["reason"], "InvalidAddressConfig");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["kind"], "ConfigMap");
    assert_eq!(e["regarding"]["name"], "a");
    assert_eq!(e["regarding"]["namespace"], NS);
    assert_eq!(e["reportingController"], "maas-config-service");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.contains(r#"key "json" address "$reserved""#), "{note}");
    let echo = post.body.clone();
    post.respond_json(201, &echo);

    // The same bad content again (e.g. a label change): no new count, no new Event.
    let mut same = cm("a", "12", &[("json", bad)]);
    same["metadata"]["labels"]["team"] = json!("x");
    v.expect(Kind::WatchAddresses).await.respond_events(&[
        ev("MODIFIED", same),
        ev("ADDED", cm("c", "13", &[("json", r#"{"other": {}}"#)])),
    ]);
    let s = wait_state(&mut rx, "with c", |s| {
        names(s).contains(&"other".to_string())
    })
    .await;
    assert_eq!(s.error_events, 1);
    assert!(v.quiet(Kind::PostEvent, Duration::from_secs(2)).await);

    // Another bad content; the Event POST fails (RBAC): logged, not fatal.
    v.expect(Kind::WatchAddresses)
        .await
        .respond_events(&[ev("MODIFIED", cm("a", "14", &[("json", "{not json")]))]);
    let s = wait_state(&mut rx, "second bad content", |s| s.error_events == 2).await;
    assert_eq!(names(&s), ["anycast1", "orders", "other"]);
    v.expect(Kind::PostEvent).await.respond_status(
        403,
        "Forbidden",
        "events.events.k8s.io is forbidden",
    );

    // Fixed: the errors clear and the new content is in force.
    v.expect(Kind::WatchAddresses).await.respond_events(&[ev(
        "MODIFIED",
        cm("a", "15", &[("json", r#"{"fine": {}}"#)]),
    )]);
    let s = wait_state(&mut rx, "fixed", |s| s.errors.is_empty()).await;
    assert_eq!(names(&s), ["fine", "other"]);
    assert_eq!(s.error_events, 2);
}

#[tokio::test(start_paused = true)]
async fn conflicting_definitions_keep_the_first_configmap() {
    let (mut rx, mut v) = start();
    let s = initial(
        &mut rx,
        &mut v,
        &[
            cm("b", "8", &[("json", r#"{"shared": {}, "same": {}}"#)]),
            cm(
                "a",
                "7",
                &[("json", r#"{"shared": {"multicast": true}, "same": {}}"#)],
            ),
        ],
    )
    .await;
    assert_eq!(addresses(&s)["shared"].0, AddressKind::Broadcast);
    assert_eq!(names(&s), ["same", "shared"]);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    let line = &s.errors[0];
    assert!(
        line.contains("ConfigMap maas/a")
            && line.contains("ConfigMap maas/b")
            && line.contains(r#""shared""#),
        "{line}"
    );
    let post = v.expect(Kind::PostEvent).await;
    assert_eq!(post.body["regarding"]["name"], "b");
    assert_eq!(post.body["reason"], "InvalidAddressConfig");
}

#[tokio::test(start_paused = true)]
async fn watch_expiry_relists_and_drops_vanished_only_after_the_relist() {
    let (mut rx, mut v) = start();
    let s = initial(&mut rx, &mut v, &[cm_a("7"), cm_b("8")]).await;
    let generation = s.generation;

    // 410 Gone as a watch ERROR event: the watcher re-lists.
    v.expect(Kind::WatchAddresses).await.respond_events(&[json!({
        "type": "ERROR",
        "object": {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                   "message": "too old resource version: 10 (50)", "reason": "Expired", "code": 410}
    })]);
    let relist = v.expect(Kind::ListAddresses).await;
    // While the re-list is pending, and when it fails, the last state stays published.
    assert_eq!(
        names(&rx.borrow()),
        ["anycast1", "events", "news", "orders"]
    );
    relist.respond_status(500, "InternalError", "etcdserver: request timed out");
    let relist = v.expect(Kind::ListAddresses).await;
    let s = rx.borrow().clone();
    assert_eq!(names(&s), ["anycast1", "events", "news", "orders"]);
    assert_eq!(s.generation, generation);

    // The completed re-list replaces the index: b vanished, a changed.
    relist.respond_list(
        "ConfigMapList",
        "60",
        &[cm(
            "a",
            "55",
            &[("json", r#"{"anycast1": {}, "late": {}}"#)],
        )],
    );
    let s = wait_state(&mut rx, "relisted", |s| names(s) == ["anycast1", "late"]).await;
    assert_eq!(s.generation, generation + 1);
    assert!(s.synced);
    let watch = v.expect(Kind::WatchAddresses).await;
    assert_eq!(watch.q("resourceVersion"), Some("60"));
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_retried_and_the_state_is_kept() {
    let (mut rx, mut v) = start();
    // The first list fails: nothing is published as synced, the watcher retries after its backoff.
    v.expect(Kind::ListAddresses).await.respond_status(
        500,
        "InternalError",
        "the server is currently unable to handle the request",
    );
    v.expect(Kind::ListFlavor)
        .await
        .respond_list("ConfigMapList", "10", &[flavor_cm("5")]);
    let list = v.expect(Kind::ListAddresses).await;
    assert!(!rx.borrow().synced);
    list.respond_list("ConfigMapList", "10", &[cm_a("7")]);
    let s = wait_state(&mut rx, "synced", |s| s.synced).await;
    assert_eq!(names(&s), ["anycast1", "orders"]);
    rx.borrow_and_update();

    // The watch fails (500, then a transport error): it is re-established from the same resourceVersion, without
    // a re-list, and the published state does not change.
    v.expect(Kind::WatchAddresses)
        .await
        .respond_status(500, "InternalError", "watch failed");
    v.expect(Kind::WatchAddresses)
        .await
        .send
        .send_error(std::io::Error::other("connection reset"));
    let watch = v.expect(Kind::WatchAddresses).await;
    assert_eq!(watch.q("resourceVersion"), Some("10"));
    assert!(v.quiet(Kind::ListAddresses, Duration::from_secs(1)).await);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(names(&rx.borrow()), ["anycast1", "orders"]);

    // Once the API answers again, changes flow.
    watch.respond_events(&[ev("ADDED", cm("c", "11", &[("json", r#"{"back": {}}"#)]))]);
    wait_state(&mut rx, "with c", |s| {
        names(s).contains(&"back".to_string())
    })
    .await;
}

fn pod(name: &str, rv: &str, extra: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": rv},
        "spec": {"containers": [{"name": "main", "image": "x"}]}});
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), extra) {
        for (k, v) in extra {
            if k == "metadata" {
                for (mk, mv) in v.as_object().cloned().unwrap_or_default() {
                    p["metadata"][mk] = mv;
                }
            } else {
                p.insert(k, v);
            }
        }
    }
    p
}

#[tokio::test(start_paused = true)]
async fn pods_list_and_watch_give_podinfo() {
    let (client, mut v) = mock_client();
    let mut rx = spawn_kube_pods(client, NS.to_string());
    let list = v.expect(Kind::ListPods).await;
    assert_eq!(list.q("labelSelector"), None);
    let broker = pod(
        "broker-0",
        "3",
        json!({
            "metadata": {"labels": {"app.kubernetes.io/component": "broker", "maas.io/cluster": "q"},
                         "annotations": {"maas.io/draining": "true", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"containers": [
                {"name": "broker", "image": "artemis", "ports": [
                    {"name": "amqp", "containerPort": 5672}, {"containerPort": 8161}]},
                {"name": "sidecar", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.1.2.3",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }),
    );
    let pending = pod("a-pending", "4", json!({"status": {"phase": "Pending"}}));
    list.respond_list("PodList", "20", &[broker.clone(), pending]);

    let s: Arc<PodsState> = wait_state(&mut rx, "synced", |s| s.synced).await;
    let got: Vec<&str> = s.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, ["a-pending", "broker-0"]);
    let p = &s.pods[0];
    assert_eq!(
        (p.host.as_str(), p.phase.as_str(), p.ready),
        ("", "Pending", false)
    );
    assert!(p.ports.is_empty());
    let b = &s.pods[1];
    assert_eq!(
        (b.host.as_str(), b.phase.as_str(), b.ready),
        ("10.1.2.3", "Running", true)
    );
    assert_eq!(
        b.ports,
        BTreeMap::from([(
            "broker".to_string(),
            BTreeMap::from([("amqp".to_string(), 5672), ("8161".to_string(), 8161)])
        )])
    );
    assert_eq!(b.labels["maas.io/cluster"], "q");
    assert_eq!(
        b.annotations,
        BTreeMap::from([("maas.io/draining".to_string(), "true".to_string())])
    );

    // Not ready any more, then deleted.
    let watch = v.expect(Kind::WatchPods).await;
    assert_eq!(watch.q("resourceVersion"), Some("20"));
    let mut unready = broker.clone();
    unready["metadata"]["resourceVersion"] = json!("21");
    unready["status"]["conditions"][0]["status"] = json!("False");
    watch.respond_events(&[ev("MODIFIED", unready)]);
    wait_state(&mut rx, "broker unready", |s| {
        s.pods.iter().any(|p| p.name == "broker-0" && !p.ready)
    })
    .await;
    let mut gone = broker;
    gone["metadata"]["resourceVersion"] = json!("22");
    v.expect(Kind::WatchPods)
        .await
        .respond_events(&[ev("DELETED", gone)]);
    let s = wait_state(&mut rx, "broker deleted", |s| s.pods.len() == 1).await;
    assert_eq!(s.pods[0].name, "a-pending");
}
