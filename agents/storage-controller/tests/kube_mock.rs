//! Kubernetes mode against a mocked API server (the ApiServerVerifier pattern of kube-rs/controller-rs):
//! `tower_test::mock::pair` behind `kube::Client::new`; each Scenario asserts every API call in order, with its
//! exact server-side-apply body, under a 1 s timeout per step. Every StatefulSet list is followed by the Services
//! and PodDisruptionBudgets lists (answered with the same names, or the given live objects). Brokers are in-memory
//! fakes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::FakeConnector;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use maas_model::{Address, AddressKind, AddressSet, Config, Flavor, FlavorSet, PodInfo};
use serde_json::{Value, json};
use storage_controller::broker::{Connector, Provisioner};
use storage_controller::clusters::{
    BrokerCluster, ClusterOptions, desired_clusters, pod_disruption_budget, service, statefulset,
};
use storage_controller::controller::{ClusterReport, DrainClock, reconcile_clusters};
use storage_controller::kube::KubeCtx;
use storage_controller::metrics::Metrics;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

const NS: &str = "maas";
const STEP: Duration = Duration::from_secs(1);

/// One expected API call.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    ListStatefulSets,
    ApplyService(Value),
    ApplyStatefulSet(Value),
    ApplyPdb(Value),
    AnnotatePod(String, Value),
    DeleteStatefulSet(String),
    DeletePdb(String),
    DeleteService(String),
}

/// What the mocked API server answers.
enum Answer {
    /// The list of managed StatefulSets (name, replicas), minimal objects; the Services and PodDisruptionBudgets
    /// lists have the same names.
    List(Vec<(String, i32)>),
    /// Live objects as an API server returns them: StatefulSets, Services, PodDisruptionBudgets.
    Live(Vec<Value>, Vec<Value>, Vec<Value>),
    /// Echo the applied/patched object (200).
    Ok,
    /// An API error Status with this code.
    Status(u16),
}

/// A scenario: the calls expected in order, each with its answer.
struct Scenario(Vec<(Call, Answer)>);

struct Verifier(Handle<Request<Body>, Response<Body>>);

fn respond(send: SendResponse<Response<Body>>, status: u16, v: &Value) {
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap(),
    );
}

impl Verifier {
    /// Serve the scenario: every call must come, in order, within STEP; then no further call within STEP.
    async fn run(mut self, scenario: Scenario) {
        for (i, (want, answer)) in scenario.0.into_iter().enumerate() {
            let (req, send) = tokio::time::timeout(STEP, self.0.next_request())
                .await
                .unwrap_or_else(|_| {
                    panic!("step {i}: no request within {STEP:?}; expected {want:?}")
                })
                .expect("client alive");
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let got = match (method.clone(), path.as_str()) {
                (Method::GET, p) if p == format!("/apis/apps/v1/namespaces/{NS}/statefulsets") => {
                    assert!(
                        query.contains(
                            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmaas-storage-controller"
                        ),
                        "list selector: {query}"
                    );
                    Call::ListStatefulSets
                }
                (Method::PATCH, p)
                    if p.starts_with(&format!("/api/v1/namespaces/{NS}/services/")) =>
                {
                    assert!(
                        query.contains("fieldManager=maas-storage-controller")
                            && query.contains("force=true"),
                        "{query}"
                    );
                    Call::ApplyService(body.clone())
                }
                (Method::PATCH, p)
                    if p.starts_with(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets/")) =>
                {
                    assert!(
                        query.contains("fieldManager=maas-storage-controller")
                            && query.contains("force=true"),
                        "{query}"
                    );
                    Call::ApplyStatefulSet(body.clone())
                }
                (Method::PATCH, p)
                    if p.starts_with(&format!(
                        "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/"
                    )) =>
                {
                    assert!(
                        query.contains("fieldManager=maas-storage-controller")
                            && query.contains("force=true"),
                        "{query}"
                    );
                    Call::ApplyPdb(body.clone())
                }
                (Method::DELETE, p)
                    if p.starts_with(&format!(
                        "/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/"
                    )) =>
                {
                    Call::DeletePdb(p.rsplit('/').next().unwrap().to_string())
                }
                (Method::PATCH, p) if p.starts_with(&format!("/api/v1/namespaces/{NS}/pods/")) => {
                    Call::AnnotatePod(p.rsplit('/').next().unwrap().to_string(), body.clone())
                }
                (Method::DELETE, p)
                    if p.starts_with(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets/")) =>
                {
                    Call::DeleteStatefulSet(p.rsplit('/').next().unwrap().to_string())
                }
                (Method::DELETE, p)
                    if p.starts_with(&format!("/api/v1/namespaces/{NS}/services/")) =>
                {
                    Call::DeleteService(p.rsplit('/').next().unwrap().to_string())
                }
                _ => panic!("step {i}: unexpected {method} {path}?{query}"),
            };
            assert_eq!(got, want, "step {i}");
            let (sts, svcs, pdbs) = match &answer {
                Answer::List(items) => (
                    items
                        .iter()
                        .map(|(n, r)| json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                            "metadata": {"name": n, "namespace": NS, "uid": format!("uid-{n}")},
                            "spec": {"replicas": r, "serviceName": n, "selector": {}, "template": {}}}))
                        .collect(),
                    items
                        .iter()
                        .map(|(n, _)| json!({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": n, "namespace": NS, "uid": format!("uid-svc-{n}")},
                            "spec": {"clusterIP": "None"}}))
                        .collect(),
                    items
                        .iter()
                        .map(|(n, _)| json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                            "metadata": {"name": n, "namespace": NS, "uid": format!("uid-pdb-{n}")},
                            "spec": {"maxUnavailable": 1}}))
                        .collect(),
                ),
                Answer::Live(a, b, c) => (a.clone(), b.clone(), c.clone()),
                _ => (Vec::new(), Vec::new(), Vec::new()),
            };
            match answer {
                Answer::List(_) | Answer::Live(..) => {
                    respond(
                        send,
                        200,
                        &json!({"apiVersion": "apps/v1", "kind": "StatefulSetList",
                        "metadata": {"resourceVersion": "1"}, "items": sts}),
                    );
                    // The Services list follows.
                    let (req, send) = tokio::time::timeout(STEP, self.0.next_request())
                        .await
                        .unwrap_or_else(|_| panic!("step {i}: no Services list within {STEP:?}"))
                        .expect("client alive");
                    assert_eq!(req.method(), Method::GET, "step {i}: {}", req.uri());
                    assert_eq!(
                        req.uri().path(),
                        format!("/api/v1/namespaces/{NS}/services")
                    );
                    assert!(
                        req.uri().query().unwrap_or_default().contains(
                            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmaas-storage-controller"
                        ),
                        "{}",
                        req.uri()
                    );
                    respond(
                        send,
                        200,
                        &json!({"apiVersion": "v1", "kind": "ServiceList",
                        "metadata": {"resourceVersion": "1"}, "items": svcs}),
                    );
                    // Then the PodDisruptionBudgets list.
                    let (req, send) = tokio::time::timeout(STEP, self.0.next_request())
                        .await
                        .unwrap_or_else(|_| panic!("step {i}: no PDB list within {STEP:?}"))
                        .expect("client alive");
                    assert_eq!(req.method(), Method::GET, "step {i}: {}", req.uri());
                    assert_eq!(
                        req.uri().path(),
                        format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets")
                    );
                    assert!(
                        req.uri().query().unwrap_or_default().contains(
                            "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmaas-storage-controller"
                        ),
                        "{}",
                        req.uri()
                    );
                    respond(
                        send,
                        200,
                        &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList",
                        "metadata": {"resourceVersion": "1"}, "items": pdbs}),
                    );
                }
                Answer::Ok => {
                    let obj = match got {
                        Call::ApplyService(mut b)
                        | Call::ApplyStatefulSet(mut b)
                        | Call::ApplyPdb(mut b) => {
                            b["metadata"]["uid"] = json!("uid-x");
                            b["metadata"]["resourceVersion"] = json!("2");
                            b
                        }
                        Call::AnnotatePod(n, _) => {
                            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n}})
                        }
                        _ => {
                            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}})
                        }
                    };
                    respond(send, 200, &obj);
                }
                Answer::Status(code) => respond(
                    send,
                    code,
                    &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                            "message": "injected failure", "reason": "InternalError", "code": code}),
                ),
            }
        }
        if let Ok(Some((req, _))) = tokio::time::timeout(STEP, self.0.next_request()).await {
            panic!("unexpected extra request {} {}", req.method(), req.uri());
        }
    }
}

fn opts() -> ClusterOptions {
    ClusterOptions {
        namespace: NS.into(),
        broker_secret: "broker-creds".into(),
        owner: None,
        ..ClusterOptions::default()
    }
}

fn config(addrs: &[(&str, AddressKind)], replicas: i64) -> Config {
    let mut flavors = FlavorSet::default();
    flavors.insert(Flavor {
        name: "vanilla".into(),
        kind: None,
        description: None,
        template_name: None,
        template_parameters: BTreeMap::new(),
        shared: false,
        extra: BTreeMap::from([("replicas".to_string(), json!(replicas))]),
    });
    let mut addresses = AddressSet::default();
    for (a, k) in addrs {
        addresses.insert(Address {
            address: a.to_string(),
            kind: *k,
            flavor: Some("vanilla".into()),
            topic: None,
        });
    }
    Config { addresses, flavors }
}

fn pod(name: &str, cluster: &str, draining: bool, port: u16) -> PodInfo {
    let mut annotations = BTreeMap::new();
    if draining {
        annotations.insert("maas.io/draining".to_string(), "true".to_string());
    }
    PodInfo {
        name: name.into(),
        host: "127.0.0.1".into(),
        phase: "Running".into(),
        ready: true,
        ports: BTreeMap::from([(
            "broker".to_string(),
            BTreeMap::from([("amqp".to_string(), port)]),
        )]),
        labels: BTreeMap::from([
            (
                "app.kubernetes.io/component".to_string(),
                "broker".to_string(),
            ),
            ("maas.io/cluster".to_string(), cluster.to_string()),
        ]),
        annotations,
    }
}

struct Harness<C: Connector = FakeConnector> {
    ctx: KubeCtx,
    verifier: Option<Verifier>,
    prov: Option<Provisioner<C>>,
    brokers: FakeConnector,
    metrics_registry: std::sync::Arc<prometheus_client::registry::Registry>,
    clock: DrainClock,
}

fn harness() -> Harness {
    let brokers = FakeConnector::default();
    harness_with(brokers.clone(), brokers)
}

fn harness_with<C: Connector + 'static>(connector: C, brokers: FakeConnector) -> Harness<C> {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, NS);
    let (metrics, registry) = Metrics::new();
    Harness {
        ctx: KubeCtx::new(client, opts(), metrics.clone()),
        verifier: Some(Verifier(handle)),
        prov: Some(Provisioner::new(connector, metrics, 10)),
        brokers,
        metrics_registry: registry,
        clock: DrainClock::new(Duration::ZERO),
    }
}

impl<C: Connector + 'static> Harness<C> {
    /// One reconcile against the scenario with a synced pod list; the report (or error).
    async fn reconcile(
        &mut self,
        desired: &BTreeMap<String, BrokerCluster>,
        pods: Vec<PodInfo>,
        scenario: Scenario,
    ) -> storage_controller::Result<ClusterReport> {
        self.reconcile_with(desired, Some(pods), scenario).await
    }

    /// One reconcile against the scenario; `pods` None: the pod list is not synced.
    async fn reconcile_with(
        &mut self,
        desired: &BTreeMap<String, BrokerCluster>,
        pods: Option<Vec<PodInfo>>,
        scenario: Scenario,
    ) -> storage_controller::Result<ClusterReport> {
        let verifier = self.verifier.take().unwrap();
        let ctx = self.ctx.clone();
        let mut prov = self.prov.take().unwrap();
        let desired = desired.clone();
        let mut clock = std::mem::take(&mut self.clock);
        let task: JoinHandle<_> = tokio::spawn(async move {
            let r =
                reconcile_clusters(&ctx, &desired, pods.as_deref(), &mut prov, &mut clock).await;
            (r, prov, clock)
        });
        // The verifier's handle is reused across reconciles: run it, then put it back.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve = tokio::spawn(async move {
            let Verifier(handle) = verifier;
            let v = Verifier(handle);
            v.run(scenario).await;
            let _ = tx.send(());
        });
        let (r, prov, clock) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        self.prov = Some(prov);
        self.clock = clock;
        serve.await.unwrap();
        rx.await.unwrap();
        r
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.metrics_registry).unwrap();
        s
    }
}

// The Verifier consumes its handle in `run`; a new mock pair per reconcile keeps ownership simple.
fn fresh<C: Connector>(h: &mut Harness<C>) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    h.ctx.client = kube::Client::new(svc, NS);
    h.verifier = Some(Verifier(handle));
}

fn cluster_calls(c: &BrokerCluster, replicas: i32) -> Vec<(Call, Answer)> {
    vec![
        (Call::ApplyService(service(c, &opts())), Answer::Ok),
        (
            Call::ApplyStatefulSet(statefulset(c, &opts(), replicas)),
            Answer::Ok,
        ),
        (
            Call::ApplyPdb(pod_disruption_budget(c, &opts())),
            Answer::Ok,
        ),
    ]
}

#[tokio::test]
async fn applies_exact_bodies_then_skips_unchanged_and_repairs_drift() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(
        &[("orders", AddressKind::Queue), ("news", AddressKind::Topic)],
        2,
    ));
    let mut calls = vec![(Call::ListStatefulSets, Answer::List(vec![]))];
    calls.extend(cluster_calls(&desired["news"], 2));
    calls.extend(cluster_calls(&desired["orders"], 2));
    let r = h
        .reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r.applied, vec!["news", "orders"]);
    // The body is what docs/architecture.md asks: labels, headless service, full claim template.
    let sts = statefulset(&desired["orders"], &opts(), 2);
    assert_eq!(
        sts["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "maas-storage-controller"
    );
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["status"], json!({}));

    // Second pass, nothing changed: the lists return what was applied (as an API server returns it, with
    // server-set metadata and defaulted fields): no PATCH at all, nothing else either.
    let live = |replicas: i32| {
        let mut sts = Vec::new();
        let mut svcs = Vec::new();
        let mut pdbs = Vec::new();
        for name in ["news", "orders"] {
            sts.push(as_served(statefulset(&desired[name], &opts(), replicas)));
            svcs.push(as_served(service(&desired[name], &opts())));
            pdbs.push(as_served(pod_disruption_budget(&desired[name], &opts())));
        }
        (sts, svcs, pdbs)
    };
    fresh(&mut h);
    let (sts, svcs, pdbs) = live(2);
    let r2 = h
        .reconcile(
            &desired,
            vec![],
            Scenario(vec![(
                Call::ListStatefulSets,
                Answer::Live(sts, svcs, pdbs),
            )]),
        )
        .await
        .unwrap();
    assert!(r2.applied.is_empty(), "{r2:?}");
    assert_eq!(r2.unchanged, vec!["news", "orders"]);
    assert_eq!(r2.patches, 0);
    assert!(r2.deleted.is_empty() && r2.draining.is_empty());
    assert!(h.metrics().contains(r#"maas_storage_controller_api_operations_total{operation="apply",kind="StatefulSet",result="ok"} 2"#), "{}", h.metrics());

    // Drift on fields we own is repaired, only where it is: image changed on orders' StatefulSet, a label
    // removed from news' Service.
    fresh(&mut h);
    let (mut sts, mut svcs, pdbs) = live(2);
    sts[1]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone-elses:1");
    svcs[0]["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("maas.io/flavor");
    let calls = vec![
        (Call::ListStatefulSets, Answer::Live(sts, svcs, pdbs)),
        (
            Call::ApplyService(service(&desired["news"], &opts())),
            Answer::Ok,
        ),
        (
            Call::ApplyStatefulSet(statefulset(&desired["orders"], &opts(), 2)),
            Answer::Ok,
        ),
    ];
    let r3 = h
        .reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    assert_eq!(
        (r3.applied, r3.patches),
        (vec!["news".to_string(), "orders".to_string()], 2)
    );

    // A changed desired object (the flavor now asks for a resource limit) is applied even though every field
    // the old body set still matches: the spec hash differs.
    fresh(&mut h);
    let (sts, svcs, pdbs) = live(2);
    let mut changed = desired.clone();
    changed.get_mut("orders").unwrap().resources = Some(json!({"limits": {"memory": "1Gi"}}));
    let calls = vec![
        (Call::ListStatefulSets, Answer::Live(sts, svcs, pdbs)),
        (
            Call::ApplyStatefulSet(statefulset(&changed["orders"], &opts(), 2)),
            Answer::Ok,
        ),
    ];
    let r4 = h
        .reconcile(&changed, vec![], Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r4.applied, vec!["orders"]);
    assert_eq!(r4.unchanged, vec!["news"]);
}

/// An applied body as the API server returns it in a list: server-set metadata, defaulted fields, claim status.
fn as_served(mut v: Value) -> Value {
    v["metadata"]["uid"] = json!("uid-1");
    v["metadata"]["resourceVersion"] = json!("7");
    v["metadata"]["managedFields"] =
        json!([{"manager": "maas-storage-controller", "operation": "Apply"}]);
    if v["kind"] == "StatefulSet" {
        v["spec"]["revisionHistoryLimit"] = json!(10);
        let c = &mut v["spec"]["template"]["spec"]["containers"][0];
        c["imagePullPolicy"] = json!("IfNotPresent");
        c["readinessProbe"]["timeoutSeconds"] = json!(1);
        c["livenessProbe"]["successThreshold"] = json!(1);
        c["startupProbe"]["timeoutSeconds"] = json!(1);
        v["spec"]["volumeClaimTemplates"][0]["status"] = json!({"phase": "Pending"});
        v["status"] = json!({"replicas": 2});
    } else if v["kind"] == "Service" {
        v["spec"]["clusterIPs"] = json!(["None"]);
        v["spec"]["type"] = json!("ClusterIP");
    } else {
        v["status"] = json!({"disruptionsAllowed": 1, "currentHealthy": 2});
    }
    v
}

/// With a drain grace, a pod going away at 0 messages is not drained until it has been seen marked that long.
#[tokio::test]
async fn drain_grace_holds_an_empty_pod_until_it_passed() {
    let mut h = harness();
    h.clock = DrainClock::new(Duration::from_millis(600));
    let (desired, _) = desired_clusters(&config(&[], 1));
    h.brokers.broker("old-0").set_count("old", 0);
    // Pass 1: marked.
    let calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1)]),
        ),
        (
            Call::AnnotatePod(
                "old-0".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
            ),
            Answer::Ok,
        ),
    ];
    h.reconcile(
        &desired,
        vec![pod("old-0", "old", false, 5672)],
        Scenario(calls),
    )
    .await
    .unwrap();
    // Pass 2: the mark is seen, 0 messages, but within the grace: nothing deleted.
    let seen = std::time::Instant::now();
    fresh(&mut h);
    let calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("old".into(), 1)]),
    )];
    let r = h
        .reconcile(
            &desired,
            vec![pod("old-0", "old", true, 5672)],
            Scenario(calls),
        )
        .await
        .unwrap();
    assert!(r.deleted.is_empty());
    assert_eq!(r.draining.get("old-0"), Some(&Some(0)));
    // Pass 3, once the grace has passed since the mark was first seen: deleted.
    let left = Duration::from_millis(600).saturating_sub(seen.elapsed());
    tokio::time::sleep(left).await;
    fresh(&mut h);
    let calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1)]),
        ),
        (Call::DeleteStatefulSet("old".into()), Answer::Ok),
        (Call::DeletePdb("old".into()), Answer::Ok),
        (Call::DeleteService("old".into()), Answer::Ok),
    ];
    let r = h
        .reconcile(
            &desired,
            vec![pod("old-0", "old", true, 5672)],
            Scenario(calls),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted, vec!["old"]);
}

#[tokio::test]
async fn removed_cluster_is_drained_then_deleted() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[], 1));
    let broker = h.brokers.broker("old-0");
    broker.set_count("old", 3);

    // Pass 1: the pod is marked draining; nothing deleted.
    let calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1)]),
        ),
        (
            Call::AnnotatePod(
                "old-0".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
            ),
            Answer::Ok,
        ),
    ];
    let r = h
        .reconcile(
            &desired,
            vec![pod("old-0", "old", false, 5672)],
            Scenario(calls),
        )
        .await
        .unwrap();
    assert!(r.deleted.is_empty());
    assert_eq!(r.draining.get("old-0"), Some(&None));

    // Pass 2: marked, but 3 messages still there: nothing deleted.
    fresh(&mut h);
    let calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("old".into(), 1)]),
    )];
    let r = h
        .reconcile(
            &desired,
            vec![pod("old-0", "old", true, 5672)],
            Scenario(calls),
        )
        .await
        .unwrap();
    assert!(r.deleted.is_empty());
    assert_eq!(r.draining.get("old-0"), Some(&Some(3)));

    // Pass 3: consumers emptied it: StatefulSet then Service deleted.
    broker.set_count("old", 0);
    fresh(&mut h);
    let calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1)]),
        ),
        (Call::DeleteStatefulSet("old".into()), Answer::Ok),
        (Call::DeletePdb("old".into()), Answer::Ok),
        (Call::DeleteService("old".into()), Answer::Ok),
    ];
    let r = h
        .reconcile(
            &desired,
            vec![pod("old-0", "old", true, 5672)],
            Scenario(calls),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted, vec!["old"]);
    assert!(
        broker.writes().is_empty(),
        "the drain check never writes to the broker"
    );
}

#[tokio::test]
async fn scale_down_waits_for_the_drain() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 1));
    let c = &desired["orders"];
    let b1 = h.brokers.broker("orders-1");
    b1.set_count("orders", 2);
    let pods = |marked: bool| {
        vec![
            pod("orders-0", "orders", false, 5672),
            pod("orders-1", "orders", marked, 5673),
        ]
    };
    // 2 -> 1 replicas: pod 1 marked, StatefulSet kept at 2.
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("orders".into(), 2)]),
        ),
        (
            Call::AnnotatePod(
                "orders-1".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
            ),
            Answer::Ok,
        ),
    ];
    calls.extend(cluster_calls(c, 2));
    h.reconcile(&desired, pods(false), Scenario(calls))
        .await
        .unwrap();
    // Still 2 messages on orders-1: still 2 replicas.
    fresh(&mut h);
    let mut calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("orders".into(), 2)]),
    )];
    calls.extend(cluster_calls(c, 2));
    let r = h
        .reconcile(&desired, pods(true), Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r.draining.get("orders-1"), Some(&Some(2)));
    // Empty: scaled to 1.
    b1.set_count("orders", 0);
    fresh(&mut h);
    let mut calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("orders".into(), 2)]),
    )];
    calls.extend(cluster_calls(c, 1));
    let r = h
        .reconcile(&desired, pods(true), Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r.draining.get("orders-1"), Some(&Some(0)));
}

#[tokio::test]
async fn scale_back_up_clears_the_draining_mark() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 2));
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("orders".into(), 2)]),
        ),
        (
            Call::AnnotatePod(
                "orders-1".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": null}}}),
            ),
            Answer::Ok,
        ),
    ];
    calls.extend(cluster_calls(&desired["orders"], 2));
    let pods = vec![
        pod("orders-0", "orders", false, 5672),
        pod("orders-1", "orders", true, 5673),
    ];
    h.reconcile(&desired, pods, Scenario(calls)).await.unwrap();
}

/// `--await-topic-release`: a pod of a cluster carrying topics is not scaled away, even empty, before
/// subscription-service released it (`maas.io/topics-released=true`), and is once released (and empty).
#[tokio::test]
async fn a_scale_down_of_a_topic_cluster_waits_for_the_release() {
    let mut h = harness();
    h.ctx.await_topic_release = true;
    let (desired, _) = desired_clusters(&config(&[("news", AddressKind::Topic)], 1));
    let c = &desired["news"];
    assert_eq!(c.topics, vec!["news"]);
    h.brokers.broker("news-0").set_count("news", 0);
    let b1 = h.brokers.broker("news-1");
    b1.set_count("news", 0);
    let pods = |marked: bool, released: Option<&str>| {
        let mut b1 = pod("news-1", "news", marked, 5673);
        if let Some(v) = released {
            b1.annotations
                .insert("maas.io/topics-released".into(), v.into());
        }
        vec![pod("news-0", "news", false, 5672), b1]
    };
    let keep = |replicas: i32| {
        let mut calls = vec![(
            Call::ListStatefulSets,
            Answer::List(vec![("news".into(), 2)]),
        )];
        calls.extend(cluster_calls(c, replicas));
        Scenario(calls)
    };
    // Pass 1: 2 -> 1 replicas, news-1 marked, 2 kept.
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("news".into(), 2)]),
        ),
        (
            Call::AnnotatePod(
                "news-1".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
            ),
            Answer::Ok,
        ),
    ];
    calls.extend(cluster_calls(c, 2));
    h.reconcile(&desired, pods(false, None), Scenario(calls))
        .await
        .unwrap();
    // Passes 2 and 3: marked and empty (the drain grace is 0 here), but not released (no annotation, then one
    // that is not "true"): 2 replicas kept, the wait names the pod and the topic it hands over.
    for released in [None, Some("false")] {
        fresh(&mut h);
        let r = h
            .reconcile(&desired, pods(true, released), keep(2))
            .await
            .unwrap();
        let w = &r.waits["news-1"];
        assert_eq!(w.label(), "topic-release", "{r:?}");
        let text = w.describe("news-1").unwrap();
        assert!(
            text.starts_with("waiting for subscription-service to release news-1 ("),
            "{text}"
        );
        assert_eq!(r.draining.get("news-1"), Some(&None), "not counted yet");
    }
    // Released, but a message reached it meanwhile: still kept (counted now).
    b1.set_count("news", 1);
    fresh(&mut h);
    let r = h
        .reconcile(&desired, pods(true, Some("true")), keep(2))
        .await
        .unwrap();
    assert_eq!(r.waits["news-1"].label(), "messages");
    assert_eq!(r.draining.get("news-1"), Some(&Some(1)));
    // Released and empty: scaled to 1.
    b1.set_count("news", 0);
    fresh(&mut h);
    let r = h
        .reconcile(&desired, pods(true, Some("true")), keep(1))
        .await
        .unwrap();
    assert_eq!(r.draining.get("news-1"), Some(&Some(0)));
    assert!(r.waits.is_empty(), "{r:?}");

    // Without the flag, the same empty pod goes at once (as before the hand-over).
    let mut h = harness();
    h.brokers.broker("news-0").set_count("news", 0);
    h.brokers.broker("news-1").set_count("news", 0);
    let r = h
        .reconcile(&desired, pods(true, None), keep(1))
        .await
        .unwrap();
    assert!(r.waits.is_empty(), "{r:?}");
}

/// A queue-only cluster never waits for a release, even with `--await-topic-release` (nothing hands over).
#[tokio::test]
async fn a_queue_cluster_does_not_wait_for_a_release() {
    let mut h = harness();
    h.ctx.await_topic_release = true;
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 1));
    h.brokers.broker("orders-1").set_count("orders", 0);
    let mut calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("orders".into(), 2)]),
    )];
    calls.extend(cluster_calls(&desired["orders"], 1));
    let pods = vec![
        pod("orders-0", "orders", false, 5672),
        pod("orders-1", "orders", true, 5673),
    ];
    let r = h.reconcile(&desired, pods, Scenario(calls)).await.unwrap();
    assert!(r.waits.is_empty(), "{r:?}");
}

/// A pod that no longer goes away loses its draining mark and, in the same patch, a release subscription-service
/// gave it (a stale release must not let a later drain skip the hand-over).
#[tokio::test]
async fn scale_back_up_clears_the_release_with_the_mark() {
    let mut h = harness();
    h.ctx.await_topic_release = true;
    let (desired, _) = desired_clusters(&config(&[("news", AddressKind::Topic)], 2));
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("news".into(), 2)]),
        ),
        (
            Call::AnnotatePod(
                "news-1".into(),
                json!({"metadata": {"annotations": {
                    "maas.io/draining": null, "maas.io/topics-released": null}}}),
            ),
            Answer::Ok,
        ),
    ];
    calls.extend(cluster_calls(&desired["news"], 2));
    let mut b1 = pod("news-1", "news", true, 5673);
    b1.annotations
        .insert("maas.io/topics-released".into(), "true".into());
    let pods = vec![pod("news-0", "news", false, 5672), b1];
    h.reconcile(&desired, pods, Scenario(calls)).await.unwrap();
}

#[tokio::test]
async fn api_errors_fail_the_pass_and_the_retry_succeeds() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 1));
    let c = &desired["orders"];
    let calls = vec![
        (Call::ListStatefulSets, Answer::List(vec![])),
        (Call::ApplyService(service(c, &opts())), Answer::Ok),
        (
            Call::ApplyStatefulSet(statefulset(c, &opts(), 1)),
            Answer::Status(500),
        ),
    ];
    // The cluster's pass fails (the rest of its objects wait for the retry); the reconcile itself goes on.
    let r = h
        .reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    assert!(
        r.failed["orders"].contains("apply StatefulSet orders"),
        "{r:?}"
    );
    assert!(r.applied.is_empty());
    // A failed list fails the pass before anything is written.
    fresh(&mut h);
    let calls = vec![(Call::ListStatefulSets, Answer::Status(503))];
    assert!(
        h.reconcile(&desired, vec![], Scenario(calls))
            .await
            .is_err()
    );
    // Retry: the same applies again.
    fresh(&mut h);
    let mut calls = vec![(Call::ListStatefulSets, Answer::List(vec![]))];
    calls.extend(cluster_calls(c, 1));
    h.reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    let m = h.metrics();
    assert!(m.contains(r#"maas_storage_controller_api_operations_total{operation="apply",kind="StatefulSet",result="server_error"} 1"#), "{m}");
    assert!(m.contains(r#"maas_storage_controller_api_operations_total{operation="apply",kind="StatefulSet",result="ok"} 1"#), "{m}");
}

/// A removed cluster whose pod is missing from the (synced) pod list is NOT drained: the pod's claim may hold
/// messages, so the removal waits for it. A StatefulSet with 0 replicas and no pod has nothing to drain: deleted
/// at once, a PodDisruptionBudget or Service already gone (404) is fine.
#[tokio::test]
async fn a_missing_pod_is_never_drained_and_an_empty_cluster_is_deleted() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[], 1));
    for _ in 0..2 {
        fresh(&mut h);
        let calls = vec![(
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1)]),
        )];
        let r = h
            .reconcile(&desired, vec![], Scenario(calls))
            .await
            .unwrap();
        assert!(r.deleted.is_empty(), "{r:?}");
        assert_eq!(r.draining.get("old-0"), Some(&None));
    }
    fresh(&mut h);
    let calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 0)]),
        ),
        (Call::DeleteStatefulSet("old".into()), Answer::Ok),
        (Call::DeletePdb("old".into()), Answer::Status(404)),
        (Call::DeleteService("old".into()), Answer::Status(404)),
    ];
    let r = h
        .reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r.deleted, vec!["old"]);
}

/// Until the pod watch has synced, nothing is marked, scaled down or deleted: a scale-down keeps the current
/// replicas (the exact body says 2) and a removed cluster stays, both reported as waiting. Once synced, the drain
/// starts (the mark).
#[tokio::test]
async fn an_unsynced_pod_list_never_leads_to_a_scale_down_or_removal() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 1));
    let c = &desired["orders"];
    h.brokers.broker("orders-1").set_count("orders", 0);
    h.brokers.broker("old-0").set_count("old", 0);
    for _ in 0..3 {
        fresh(&mut h);
        let mut calls = vec![(
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1), ("orders".into(), 2)]),
        )];
        calls.extend(cluster_calls(c, 2));
        let r = h
            .reconcile_with(&desired, None, Scenario(calls))
            .await
            .unwrap();
        assert_eq!(r.deferred, vec!["orders", "old"]);
        assert!(r.deleted.is_empty() && r.draining.is_empty(), "{r:?}");
    }
    // Synced: orders-1 and old-0 are marked first (nothing deleted, 2 replicas kept).
    fresh(&mut h);
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("old".into(), 1), ("orders".into(), 2)]),
        ),
        (
            Call::AnnotatePod(
                "orders-1".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
            ),
            Answer::Ok,
        ),
    ];
    calls.extend(cluster_calls(c, 2));
    calls.push((
        Call::AnnotatePod(
            "old-0".into(),
            json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
        ),
        Answer::Ok,
    ));
    let pods = vec![
        pod("orders-0", "orders", false, 5672),
        pod("orders-1", "orders", false, 5673),
        pod("old-0", "old", false, 5674),
    ];
    let r = h.reconcile(&desired, pods, Scenario(calls)).await.unwrap();
    assert!(r.deferred.is_empty() && r.deleted.is_empty(), "{r:?}");
}

/// One cluster's API errors (its StatefulSet apply, or the deletion of a removed cluster) fail that cluster only:
/// the next cluster is still created, the failures are reported per cluster (report, metric) and retried.
#[tokio::test]
async fn a_failing_cluster_does_not_stop_the_others() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(
        &[("alpha", AddressKind::Queue), ("beta", AddressKind::Queue)],
        1,
    ));
    let (a, b) = (&desired["alpha"], &desired["beta"]);
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("gone".into(), 0)]),
        ),
        (Call::ApplyService(service(a, &opts())), Answer::Ok),
        (
            Call::ApplyStatefulSet(statefulset(a, &opts(), 1)),
            Answer::Status(500),
        ),
    ];
    calls.extend(cluster_calls(b, 1));
    calls.push((Call::DeleteStatefulSet("gone".into()), Answer::Status(503)));
    let r = h
        .reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r.applied, vec!["beta"]);
    assert_eq!(
        r.failed.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["alpha", "gone"]
    );
    assert!(
        r.failed["alpha"].contains("apply StatefulSet alpha"),
        "{r:?}"
    );
    assert!(r.deleted.is_empty());
    let m = h.metrics();
    assert!(
        m.contains(r#"maas_storage_controller_cluster_errors_total{cluster="alpha"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"maas_storage_controller_cluster_errors_total{cluster="gone"} 1"#),
        "{m}"
    );
    // Retried: alpha is applied, gone deleted.
    fresh(&mut h);
    let mut calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("gone".into(), 0)]),
    )];
    calls.extend(cluster_calls(a, 1));
    calls.extend(cluster_calls(b, 1));
    calls.extend([
        (Call::DeleteStatefulSet("gone".into()), Answer::Ok),
        (Call::DeletePdb("gone".into()), Answer::Ok),
        (Call::DeleteService("gone".into()), Answer::Ok),
    ]);
    let r = h
        .reconcile(&desired, vec![], Scenario(calls))
        .await
        .unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.deleted, vec!["gone"]);
}

/// A StatefulSet someone scaled down behind the controller's back (3 -> 1; the replicas the controller applied
/// are in its annotation) while the flavor now asks for 2: pod 2 went away undrained, its claim retained. The
/// controller drains from what it applied (3), finds orders-2 missing, keeps 3 replicas (orders-1 and orders-2
/// come back with their claims) and waits: nothing is ever scaled away undrained.
#[tokio::test]
async fn a_scale_down_made_behind_the_controllers_back_is_undone_before_draining() {
    let mut h = harness();
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 2));
    let c = &desired["orders"];
    let mut sts = as_served(statefulset(c, &opts(), 3));
    sts["spec"]["replicas"] = json!(1);
    let svc = as_served(service(c, &opts()));
    let pdb = as_served(pod_disruption_budget(c, &opts()));
    let calls = vec![
        (
            Call::ListStatefulSets,
            Answer::Live(vec![sts], vec![svc], vec![pdb]),
        ),
        (
            Call::ApplyStatefulSet(statefulset(c, &opts(), 3)),
            Answer::Ok,
        ),
    ];
    let r = h
        .reconcile(
            &desired,
            vec![pod("orders-0", "orders", false, 5672)],
            Scenario(calls),
        )
        .await
        .unwrap();
    assert_eq!(r.draining.get("orders-2"), Some(&None));
}

/// Scale-down against real AMQP brokers (emulators): the StatefulSet goes from 2 to 1 replicas only in the pass
/// after the pod going away reports 0 messages, so no message counted on a broker is lost with its pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_counted_message_is_lost_across_a_scale_down() {
    use maas_e2e::broker::{BrokerConfig, BrokerEmulator};
    let e0 = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let e1 = BrokerEmulator::start(BrokerConfig::default())
        .await
        .unwrap();
    let mut template = maas_amqp::options::ConnectOptions::new("127.0.0.1", 5672);
    template.sasl = maas_amqp::options::SaslOptions::Plain {
        username: "admin".into(),
        password: maas_amqp::options::Secret::new("admin"),
    };
    let connector = storage_controller::artemis::ArtemisConnector {
        template,
        client: maas_amqp::artemis::ClientConfig::default(),
    };
    let mut h = harness_with(connector, FakeConnector::default());
    let (desired, _) = desired_clusters(&config(&[("orders", AddressKind::Queue)], 1));
    let c = &desired["orders"];
    let pods = |marked: bool| {
        vec![
            pod("orders-0", "orders", false, e0.addr().port()),
            pod("orders-1", "orders", marked, e1.addr().port()),
        ]
    };
    // Both brokers provisioned (the cluster had 2 replicas); orders-1 holds 5 messages.
    let mut prov = h.prov.take().unwrap();
    let brokers = maas_model::brokers_from_pods(&pods(false));
    let per_cluster = storage_controller::provision::desired_per_cluster(&config(
        &[("orders", AddressKind::Queue)],
        1,
    ));
    assert!(prov.pass(&per_cluster, &brokers).await.converged());
    h.prov = Some(prov);
    assert!(e1.set_message_count("orders", 5));

    // Pass 1: mark orders-1; keep 2 replicas.
    let mut calls = vec![
        (
            Call::ListStatefulSets,
            Answer::List(vec![("orders".into(), 2)]),
        ),
        (
            Call::AnnotatePod(
                "orders-1".into(),
                json!({"metadata": {"annotations": {"maas.io/draining": "true"}}}),
            ),
            Answer::Ok,
        ),
    ];
    calls.extend(cluster_calls(c, 2));
    h.reconcile(&desired, pods(false), Scenario(calls))
        .await
        .unwrap();

    // Consumers take messages off orders-1 (via the router's remaining `in` autoLink) a few at a time; every pass
    // until the count is 0 keeps 2 replicas.
    for left in [5u64, 3, 1] {
        e1.set_message_count("orders", left);
        fresh(&mut h);
        let mut calls = vec![(
            Call::ListStatefulSets,
            Answer::List(vec![("orders".into(), 2)]),
        )];
        calls.extend(cluster_calls(c, 2));
        let r = h
            .reconcile(&desired, pods(true), Scenario(calls))
            .await
            .unwrap();
        assert_eq!(r.draining.get("orders-1"), Some(&Some(left)));
    }
    e1.set_message_count("orders", 0);
    fresh(&mut h);
    let mut calls = vec![(
        Call::ListStatefulSets,
        Answer::List(vec![("orders".into(), 2)]),
    )];
    calls.extend(cluster_calls(c, 1));
    let r = h
        .reconcile(&desired, pods(true), Scenario(calls))
        .await
        .unwrap();
    assert_eq!(r.draining.get("orders-1"), Some(&Some(0)));
    // The scale-down (replicas 1 in the exact body above) came only once the pod going away counted 0: every
    // message counted on it was consumed first, none lost with the pod.
    assert_eq!(e1.queues()["orders"].messages, 0);
    e0.stop().await;
    e1.stop().await;
}
