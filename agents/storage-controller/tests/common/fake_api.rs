//! A stateful mocked Kubernetes API server for loop-level tests (and the bench): `tower_test::mock::pair` behind
//! `kube::Client::new`, keeping the StatefulSets, Services, PodDisruptionBudgets, ConfigMaps and pods the
//! controller works on.
//!
//! - Server-side apply stores the body as a real API server would return it: with server-set metadata
//!   (`uid`, `resourceVersion`, `managedFields`, ...) and defaulted fields (`imagePullPolicy`,
//!   `revisionHistoryLimit`, probe thresholds, claim template `status.phase`, Service `clusterIPs`, ...), so a
//!   comparison of live and desired objects meets what it would meet in a cluster.
//! - A merge patch of a pod's annotations updates the pod and publishes the pods (as the pod watch would).
//! - Deleting a StatefulSet removes its pods (as the garbage collector would).
//! - Failures can be injected per object name (every write to it answers 500), and the pod list can be made
//!   unsynced (as a pod watch before its first complete list).
//! - Every request is logged with its verb, kind, name, body and time.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use maas_model::PodInfo;
use maas_source::PodsState;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock;

/// One request the API server saw.
#[derive(Debug, Clone)]
pub struct Req {
    /// list, get, apply, annotate, delete.
    pub verb: &'static str,
    /// StatefulSet, Service, PodDisruptionBudget, ConfigMap, Pod.
    pub kind: &'static str,
    /// Object name ("" for lists).
    pub name: String,
    /// Request body (Null when none).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

impl Req {
    /// True for requests that change something.
    pub fn is_write(&self) -> bool {
        !matches!(self.verb, "list" | "get")
    }
}

pub struct ApiState {
    pub statefulsets: BTreeMap<String, Value>,
    pub services: BTreeMap<String, Value>,
    pub pdbs: BTreeMap<String, Value>,
    pub configmaps: BTreeMap<String, Value>,
    pub pods: BTreeMap<String, PodInfo>,
    pub log: Vec<Req>,
    /// Object names every write to which fails with 500.
    pub failing: BTreeSet<String>,
    /// False: the pod list is published as not synced yet.
    pub pods_synced: bool,
    next_version: u64,
}

impl Default for ApiState {
    fn default() -> Self {
        ApiState {
            statefulsets: BTreeMap::new(),
            services: BTreeMap::new(),
            pdbs: BTreeMap::new(),
            configmaps: BTreeMap::new(),
            pods: BTreeMap::new(),
            log: Vec::new(),
            failing: BTreeSet::new(),
            pods_synced: true,
            next_version: 0,
        }
    }
}

/// The fake API server; clones share it.
#[derive(Clone)]
pub struct FakeApi {
    pub state: Arc<Mutex<ApiState>>,
    pods_tx: Arc<watch::Sender<Arc<PodsState>>>,
}

fn respond(send: mock::SendResponse<Response<Body>>, status: u16, v: &Value) {
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap(),
    );
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": format!("{kind} {name:?} not found"), "reason": "NotFound", "code": 404})
}

/// `body` as the API server stores and returns it.
fn served(kind: &str, mut body: Value, uid: &str, version: u64) -> Value {
    let api_version = body["apiVersion"].clone();
    let m = &mut body["metadata"];
    m["uid"] = json!(uid);
    m["resourceVersion"] = json!(version.to_string());
    m["creationTimestamp"] = json!("2026-11-28T08:00:00Z");
    m["generation"] = json!(1);
    m["managedFields"] = json!([{"manager": "maas-storage-controller", "operation": "Apply",
        "apiVersion": api_version, "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    match kind {
        "StatefulSet" => {
            let spec = &mut body["spec"];
            spec["revisionHistoryLimit"] = json!(10);
            spec["updateStrategy"] =
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
            if spec.get("persistentVolumeClaimRetentionPolicy").is_none() {
                spec["persistentVolumeClaimRetentionPolicy"] =
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"});
            }
            let pod = &mut spec["template"]["spec"];
            pod["restartPolicy"] = json!("Always");
            pod["dnsPolicy"] = json!("ClusterFirst");
            pod["schedulerName"] = json!("default-scheduler");
            if let Some(cs) = pod["containers"].as_array_mut() {
                for c in cs {
                    c["imagePullPolicy"] = json!("IfNotPresent");
                    c["terminationMessagePath"] = json!("/dev/termination-log");
                    if c.get("resources").is_none() {
                        c["resources"] = json!({});
                    }
                    for name in ["readinessProbe", "livenessProbe", "startupProbe"] {
                        if let Some(probe) = c.get_mut(name).and_then(Value::as_object_mut) {
                            for (k, v) in [
                                ("timeoutSeconds", 1),
                                ("successThreshold", 1),
                                ("failureThreshold", 3),
                                ("periodSeconds", 10),
                            ] {
                                probe.entry(k).or_insert(json!(v));
                            }
                        }
                    }
                }
            }
            if let Some(ts) = spec["volumeClaimTemplates"].as_array_mut() {
                for t in ts {
                    t["status"] = json!({"phase": "Pending"});
                }
            }
            body["status"] = json!({"replicas": 0, "availableReplicas": 0});
        }
        "Service" => {
            let spec = &mut body["spec"];
            spec["clusterIPs"] = json!(["None"]);
            spec["type"] = json!("ClusterIP");
            spec["sessionAffinity"] = json!("None");
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
            body["status"] = json!({"loadBalancer": {}});
        }
        "PodDisruptionBudget" => {
            body["status"] = json!({"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0,
                                    "expectedPods": 0, "observedGeneration": 1});
        }
        _ => {}
    }
    body
}

impl FakeApi {
    /// Start serving in `namespace`: the API, a client bound to it, and the pods as a watch would publish them.
    pub fn start(namespace: &str) -> (FakeApi, kube::Client, watch::Receiver<Arc<PodsState>>) {
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, namespace);
        let (tx, rx) = watch::channel(Arc::new(PodsState {
            pods: Vec::new(),
            synced: true,
        }));
        let api = FakeApi {
            state: Arc::new(Mutex::new(ApiState::default())),
            pods_tx: Arc::new(tx),
        };
        let server = api.clone();
        let ns = namespace.to_string();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().clone();
                let path = req.uri().path().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let (status, answer) = server.handle(&ns, &method, &path, body);
                respond(send, status, &answer);
            }
        });
        (api, client, rx)
    }

    fn handle(&self, ns: &str, method: &Method, path: &str, body: Value) -> (u16, Value) {
        let sts = format!("/apis/apps/v1/namespaces/{ns}/statefulsets");
        let svc = format!("/api/v1/namespaces/{ns}/services");
        let cms = format!("/api/v1/namespaces/{ns}/configmaps");
        let pods = format!("/api/v1/namespaces/{ns}/pods");
        let pdbs = format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets");
        let (kind, name): (&'static str, Option<String>) =
            if let Some(rest) = path.strip_prefix(&sts) {
                ("StatefulSet", rest.strip_prefix('/').map(str::to_string))
            } else if let Some(rest) = path.strip_prefix(&svc) {
                ("Service", rest.strip_prefix('/').map(str::to_string))
            } else if let Some(rest) = path.strip_prefix(&cms) {
                ("ConfigMap", rest.strip_prefix('/').map(str::to_string))
            } else if let Some(rest) = path.strip_prefix(&pods) {
                ("Pod", rest.strip_prefix('/').map(str::to_string))
            } else if let Some(rest) = path.strip_prefix(&pdbs) {
                (
                    "PodDisruptionBudget",
                    rest.strip_prefix('/').map(str::to_string),
                )
            } else {
                panic!("unexpected {method} {path}");
            };
        let verb = match (method, &name, kind) {
            (&Method::GET, None, _) => "list",
            (&Method::GET, Some(_), _) => "get",
            (&Method::PATCH, Some(_), "Pod") => "annotate",
            (&Method::PATCH, Some(_), _) => "apply",
            (&Method::DELETE, Some(_), _) => "delete",
            _ => panic!("unexpected {method} {path}"),
        };
        let name = name.unwrap_or_default();
        let mut st = self.state.lock().unwrap();
        st.log.push(Req {
            verb,
            kind,
            name: name.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        st.next_version += 1;
        let version = st.next_version;
        if verb != "list" && verb != "get" && st.failing.contains(&name) {
            return (
                500,
                json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                       "message": "injected failure", "reason": "InternalError", "code": 500}),
            );
        }
        fn store_of<'a>(st: &'a mut ApiState, kind: &str) -> &'a mut BTreeMap<String, Value> {
            match kind {
                "StatefulSet" => &mut st.statefulsets,
                "Service" => &mut st.services,
                "PodDisruptionBudget" => &mut st.pdbs,
                _ => &mut st.configmaps,
            }
        }
        match verb {
            "list" => {
                let items: Vec<Value> = store_of(&mut st, kind).values().cloned().collect();
                let list_kind = format!("{kind}List");
                let api_version = match kind {
                    "StatefulSet" => "apps/v1",
                    "PodDisruptionBudget" => "policy/v1",
                    _ => "v1",
                };
                (
                    200,
                    json!({"apiVersion": api_version,
                           "kind": list_kind, "metadata": {"resourceVersion": version.to_string()},
                           "items": items}),
                )
            }
            "get" => match store_of(&mut st, kind).get(&name) {
                Some(v) => (200, v.clone()),
                None => (404, not_found(kind, &name)),
            },
            "apply" => {
                let uid = store_of(&mut st, kind)
                    .get(&name)
                    .and_then(|v| v["metadata"]["uid"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("uid-{kind}-{name}"));
                let obj = served(kind, body, &uid, version);
                store_of(&mut st, kind).insert(name, obj.clone());
                (200, obj)
            }
            "annotate" => {
                let Some(pod) = st.pods.get_mut(&name) else {
                    return (404, not_found(kind, &name));
                };
                if let Some(a) = body["metadata"]["annotations"].as_object() {
                    for (k, v) in a {
                        match v.as_str() {
                            Some(s) => pod.annotations.insert(k.clone(), s.to_string()),
                            None => pod.annotations.remove(k),
                        };
                    }
                }
                let out = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}});
                self.publish(&st);
                (200, out)
            }
            "delete" => {
                if store_of(&mut st, kind).remove(&name).is_none() {
                    return (404, not_found(kind, &name));
                }
                if kind == "StatefulSet" {
                    st.pods.retain(|p, _| {
                        p.strip_prefix(name.as_str())
                            .and_then(|r| r.strip_prefix('-'))
                            .is_none_or(|n| n.parse::<u32>().is_err())
                    });
                    self.publish(&st);
                }
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
                )
            }
            _ => unreachable!(),
        }
    }

    fn publish(&self, st: &ApiState) {
        let pods: Vec<PodInfo> = st.pods.values().cloned().collect();
        let _ = self.pods_tx.send(Arc::new(PodsState {
            pods,
            synced: st.pods_synced,
        }));
    }

    /// Publish the pod list as synced or not (a pod watch before its first complete list publishes what it has
    /// with `synced: false`).
    pub fn set_pods_synced(&self, synced: bool) {
        let mut st = self.state.lock().unwrap();
        st.pods_synced = synced;
        self.publish(&st);
    }

    /// Make every write to objects named `name` fail with 500 (or succeed again).
    pub fn set_failing(&self, name: &str, failing: bool) {
        let mut st = self.state.lock().unwrap();
        if failing {
            st.failing.insert(name.to_string());
        } else {
            st.failing.remove(name);
        }
    }

    /// The stored PodDisruptionBudget `name`.
    pub fn pdb(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().pdbs.get(name).cloned()
    }

    /// Put (or replace) pods, keeping the annotations the API holds for pods already there.
    pub fn set_pods(&self, pods: Vec<PodInfo>) {
        let mut st = self.state.lock().unwrap();
        for mut p in pods {
            if let Some(old) = st.pods.get(&p.name) {
                for (k, v) in &old.annotations {
                    p.annotations.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            st.pods.insert(p.name.clone(), p);
        }
        self.publish(&st);
    }

    /// Add a ConfigMap with `uid`.
    pub fn add_configmap(&self, name: &str, uid: &str) {
        self.state.lock().unwrap().configmaps.insert(
            name.to_string(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "uid": uid, "resourceVersion": "1"}, "data": {}}),
        );
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests after the first `from`.
    pub fn since(&self, from: usize) -> Vec<Req> {
        self.state.lock().unwrap().log[from..].to_vec()
    }

    /// The stored StatefulSet `name`.
    pub fn statefulset(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().statefulsets.get(name).cloned()
    }

    /// The stored Service `name`.
    pub fn service(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().services.get(name).cloned()
    }

    /// Change a stored StatefulSet behind the controller's back (drift).
    pub fn edit_statefulset(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        if let Some(v) = st.statefulsets.get_mut(name) {
            f(v);
        }
    }

    /// The pod `name` as the API holds it.
    pub fn pod(&self, name: &str) -> Option<PodInfo> {
        self.state.lock().unwrap().pods.get(name).cloned()
    }
}
