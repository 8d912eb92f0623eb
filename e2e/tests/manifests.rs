//! Static checks of the deployment artifacts: every YAML document under `manifests/` (kustomize base and
//! overlays, the OpenShift Template) and the Dockerfiles under `images/`. No cluster, no network, no sockets: the
//! files are parsed with serde_yaml and checked for what an operator would otherwise find out at `kubectl apply`
//! time or, worse, at run time (a sidecar never ready, a ConfigMap edit that never reaches the agent, a pod
//! refused for running as root, a Template parameter left unsubstituted).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml::Value;

/// One YAML document (or one object of the OpenShift Template), with where it came from.
#[derive(Debug, Clone)]
struct Doc {
    /// File path relative to the repository root.
    file: String,
    /// Index of the document in its file (and `objects[i]` for Template objects).
    origin: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn at(&self) -> String {
        format!(
            "{} {} {}/{}",
            self.file,
            self.origin,
            self.kind(),
            self.name()
        )
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e is inside the repository")
        .to_path_buf()
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every non-empty YAML document of one file.
fn load_file(path: &Path) -> Vec<Doc> {
    let text = fs::read_to_string(path).unwrap();
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{}: document {i} is not valid YAML: {e}", rel(path)));
        if !value.is_null() {
            docs.push(Doc {
                file: rel(path),
                origin: format!("doc {i}"),
                value,
            });
        }
    }
    docs
}

/// Every YAML document under `manifests/`.
fn all_docs() -> Vec<Doc> {
    let files = yaml_files(&repo_root().join("manifests"));
    assert!(
        files.len() >= 8,
        "expected the base, three overlays and the Template, found {files:?}"
    );
    files.iter().flat_map(|f| load_file(f)).collect()
}

fn load(rel_path: &str) -> Vec<Doc> {
    load_file(&repo_root().join(rel_path))
}

/// The objects a kustomization directory renders (its resources, recursively; patches not applied).
fn kustomize_resources(dir: &Path) -> Vec<Doc> {
    let k = load_file(&dir.join("kustomization.yaml"));
    let mut out = Vec::new();
    for r in seq_strs(&k[0].value["resources"]) {
        let p = dir.join(r);
        if p.is_dir() {
            out.extend(kustomize_resources(&p));
        } else {
            out.extend(load_file(&p));
        }
    }
    out
}

fn base() -> Vec<Doc> {
    kustomize_resources(&repo_root().join("manifests/base"))
}

/// The OpenShift Template and its objects (as documents of their own).
fn template() -> (Value, Vec<Doc>) {
    let docs = load("manifests/openshift/maas-template.yaml");
    assert_eq!(docs.len(), 1, "the Template file holds one document");
    let t = docs[0].value.clone();
    let objects = t["objects"]
        .as_sequence()
        .expect("Template has objects")
        .iter()
        .enumerate()
        .map(|(i, v)| Doc {
            file: docs[0].file.clone(),
            origin: format!("objects[{i}]"),
            value: v.clone(),
        })
        .collect();
    (t, objects)
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn seq_strs(v: &Value) -> Vec<&str> {
    seq(v).iter().filter_map(Value::as_str).collect()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    seq(&pod_spec["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// `env` of a container as name -> literal value (`None` for valueFrom or `$patch: delete`).
fn env(c: &Value) -> BTreeMap<String, Option<String>> {
    seq(&c["env"])
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_string(),
                e["value"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Resolve a probe/target port (number or container port name) to a number.
fn resolve_port(c: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    seq(&c["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
}

/// Objects with a pod template: (doc, pod spec).
fn workloads(docs: &[Doc]) -> Vec<(&Doc, &Value)> {
    docs.iter()
        .filter(|d| matches!(d.kind(), "Deployment" | "StatefulSet" | "DaemonSet" | "Job"))
        .map(|d| (d, &d.value["spec"]["template"]["spec"]))
        .collect()
}

/// The workload (Deployment, StatefulSet, ...) named `name`, whatever its kind.
fn find_workload<'a>(docs: &'a [Doc], name: &str) -> &'a Doc {
    workloads(docs)
        .into_iter()
        .map(|(d, _)| d)
        .find(|d| d.name() == name)
        .unwrap_or_else(|| panic!("no workload {name}"))
}

/// What the edge overlay renders (patches not applied): the base plus the edge routers.
fn edge_overlay() -> Vec<Doc> {
    kustomize_resources(&repo_root().join("manifests/overlays/edge"))
}

/// A `{key: value}` mapping of strings (labels, matchLabels, a Service selector).
fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The labels of a workload's pods.
fn pod_labels(workload: &Doc) -> BTreeMap<String, String> {
    str_map(&workload.value["spec"]["template"]["metadata"]["labels"])
}

/// True when the (non-empty) selector `{key: value}` matches the labels.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let selector = str_map(selector);
    !selector.is_empty() && maas_model::selector_matches(&selector, labels)
}

/// The number of the container port named `name` in any container of the pod spec.
fn named_port(pod_spec: &Value, name: &str) -> Option<u64> {
    seq(&pod_spec["containers"])
        .iter()
        .flat_map(|c| seq(&c["ports"]))
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
}

/// `valueFrom.fieldRef.fieldPath` of a container's env var (downward API).
fn env_field_ref<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    seq(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
}

/// The sections of a qdrouterd.conf (`router { ... }`, `listener { ... }`) as (section, attribute -> value),
/// comments removed.
fn conf_sections(conf: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, BTreeMap<String, String>)> = None;
    for line in conf.lines() {
        let line = line.split('#').next().unwrap().trim();
        if let Some(section) = line.strip_suffix('{') {
            assert!(current.is_none(), "nested section in qdrouterd.conf");
            current = Some((section.trim().to_string(), BTreeMap::new()));
        } else if line == "}" {
            out.push(current.take().expect("`}` outside a section"));
        } else if let Some((k, v)) = line.split_once(':') {
            let (_, attrs) = current.as_mut().expect("attribute outside a section");
            attrs.insert(k.trim().to_string(), v.trim().to_string());
        } else {
            assert!(line.is_empty(), "qdrouterd.conf line {line:?}");
        }
    }
    assert!(current.is_none(), "unterminated section in qdrouterd.conf");
    out
}

/// The `qdrouterd.conf` of a router workload: the ConfigMap mounted as `router-config` (checked to be the file
/// the router container runs with).
fn router_conf<'a>(docs: &'a [Doc], workload: &Doc) -> &'a str {
    let spec = &workload.value["spec"]["template"]["spec"];
    let qdr = container(spec, "router");
    let cm = seq(&spec["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some("router-config"))
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap_or_else(|| panic!("{}: no router-config ConfigMap volume", workload.at()));
    let mount = seq(&qdr["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some("router-config"))
        .expect("router config mounted");
    let conf_path = format!(
        "{}/qdrouterd.conf",
        mount["mountPath"].as_str().unwrap().trim_end_matches('/')
    );
    assert!(
        seq_strs(&qdr["command"]).contains(&conf_path.as_str()),
        "{}: router runs with {conf_path}",
        workload.at()
    );
    let conf = find(docs, "ConfigMap", cm).value["data"]["qdrouterd.conf"]
        .as_str()
        .unwrap();
    assert!(
        !conf.contains("${"),
        "qdrouterd.conf must not depend on variable substitution"
    );
    conf
}

/// A pod of `workload` as config-service's `podsense` would report it once it is ready.
fn pod_info(workload: &Doc, name: &str, host: &str) -> maas_model::PodInfo {
    let spec = &workload.value["spec"]["template"]["spec"];
    maas_model::PodInfo {
        name: name.to_string(),
        host: host.to_string(),
        phase: "Running".to_string(),
        ready: true,
        ports: seq(&spec["containers"])
            .iter()
            .map(|c| {
                let ports = seq(&c["ports"])
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p["name"].as_str()?.to_string(),
                            u16::try_from(p["containerPort"].as_u64()?).ok()?,
                        ))
                    })
                    .collect();
                (c["name"].as_str().unwrap().to_string(), ports)
            })
            .collect(),
        labels: pod_labels(workload),
        annotations: BTreeMap::new(),
    }
}

/// Preferred pod anti-affinity on kubernetes.io/hostname against the workload's own pods.
fn check_anti_affinity(workload: &Doc) {
    let terms = seq(
        &workload.value["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
    );
    let labels = pod_labels(workload);
    assert!(
        terms.iter().any(|t| {
            let term = &t["podAffinityTerm"];
            term["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                && selects(&term["labelSelector"]["matchLabels"], &labels)
                && t["weight"].as_u64().is_some_and(|w| w > 0)
        }),
        "{}: no preferred pod anti-affinity on kubernetes.io/hostname",
        workload.at()
    );
}

/// True when the NetworkPolicies of `docs` let a pod labelled `peer` (same namespace) reach `port` of a pod
/// labelled `pod`: some policy selecting the pod admits it, or no policy selects the pod at all (not isolated).
/// Conservative: an ipBlock or matchExpressions peer counts as admitting.
fn admitted(
    docs: &[Doc],
    pod: &BTreeMap<String, String>,
    port: u64,
    peer: &BTreeMap<String, String>,
) -> bool {
    let policies: Vec<&Doc> = docs
        .iter()
        .filter(|d| {
            d.kind() == "NetworkPolicy"
                && selects(&d.value["spec"]["podSelector"]["matchLabels"], pod)
        })
        .collect();
    policies.is_empty()
        || policies
            .iter()
            .flat_map(|np| seq(&np.value["spec"]["ingress"]))
            .filter(|r| {
                seq(&r["ports"]).is_empty()
                    || seq(&r["ports"])
                        .iter()
                        .any(|p| p["port"].as_u64() == Some(port))
            })
            .any(|r| {
                seq(&r["from"]).is_empty()
                    || seq(&r["from"]).iter().any(|f| {
                        let sel = &f["podSelector"];
                        !f["ipBlock"].is_null()
                            || sel.is_null()
                            || !sel["matchExpressions"].is_null()
                            || maas_model::selector_matches(&str_map(&sel["matchLabels"]), peer)
                    })
            })
}

/// Paths of the strategic-merge patches of every kustomization (partial objects, not complete workloads).
fn patch_files() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in yaml_files(&repo_root().join("manifests")) {
        if f.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml") {
            continue;
        }
        let dir = f.parent().unwrap();
        for k in load_file(&f) {
            for p in seq(&k.value["patches"])
                .iter()
                .chain(seq(&k.value["patchesStrategicMerge"]))
            {
                let path = p["path"].as_str().or(p.as_str()).unwrap();
                out.insert(rel(&dir.join(path)));
            }
        }
    }
    out
}

/// Every complete object that runs pods: the documents under `manifests/` minus patches, plus the Template's
/// objects.
fn complete_objects() -> Vec<Doc> {
    let patches = patch_files();
    let mut docs: Vec<Doc> = all_docs()
        .into_iter()
        .filter(|d| !patches.contains(&d.file) && d.kind() != "Template")
        .collect();
    docs.extend(template().1);
    docs
}

#[test]
fn every_document_is_a_named_kubernetes_object_in_yaml() {
    let docs = all_docs();
    for d in &docs {
        assert!(
            d.value["apiVersion"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{}: no apiVersion",
            d.at()
        );
        assert!(!d.kind().is_empty(), "{}: no kind", d.at());
        assert!(!d.name().is_empty(), "{}: no metadata.name", d.at());
    }
    for d in &template().1 {
        assert!(d.value["apiVersion"].as_str().is_some(), "{}", d.at());
        assert!(!d.kind().is_empty() && !d.name().is_empty(), "{}", d.at());
    }
    // kubectl reads a file whose first document is JSON as JSON and then chokes on `---`: YAML only.
    for f in yaml_files(&repo_root().join("manifests")) {
        let text = fs::read_to_string(&f).unwrap();
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        assert!(
            !first.starts_with('{') && !first.starts_with('['),
            "{}: JSON document",
            rel(&f)
        );
    }
    // Names are unique per kind within what one kustomization renders.
    for (what, docs) in [("the base", base()), ("overlays/edge", edge_overlay())] {
        let mut seen = BTreeSet::new();
        for d in docs {
            assert!(
                seen.insert((d.kind().to_string(), d.name().to_string())),
                "{} twice in {what}",
                d.at()
            );
        }
    }
}

#[test]
fn kustomizations_reference_existing_files_and_leave_none_out() {
    let mut checked = 0;
    for f in yaml_files(&repo_root().join("manifests")) {
        if f.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml") {
            continue;
        }
        checked += 1;
        let dir = f.parent().unwrap();
        let k = &load_file(&f)[0];
        assert_eq!(k.kind(), "Kustomization", "{}", k.at());
        let mut referenced = BTreeSet::new();
        for r in seq_strs(&k.value["resources"]) {
            let p = dir.join(r);
            assert!(
                p.is_file() || p.join("kustomization.yaml").is_file(),
                "{}: resource {r} does not exist",
                rel(&f)
            );
            referenced.insert(p);
        }
        for p in seq(&k.value["patches"]) {
            let path = p["path"].as_str().expect("patches by path");
            let p = dir.join(path);
            assert!(p.is_file(), "{}: patch {path} does not exist", rel(&f));
            referenced.insert(p);
        }
        // A YAML file beside a kustomization that it does not list would silently never be applied.
        for other in fs::read_dir(dir).unwrap() {
            let other = other.unwrap().path();
            if other.is_file() && other != f && other.extension().is_some_and(|e| e == "yaml") {
                assert!(
                    referenced.contains(&other),
                    "{} is not listed in {}",
                    rel(&other),
                    rel(&f)
                );
            }
        }
        // The images of the maas binaries are pinned in one place.
        if dir.ends_with("base") {
            let names: BTreeSet<&str> = seq(&k.value["images"])
                .iter()
                .filter_map(|i| i["name"].as_str())
                .collect();
            for bin in [
                "router-agent",
                "config-service",
                "storage-controller",
                "subscription-service",
            ] {
                assert!(
                    names.contains(format!("quay.io/maas/{bin}").as_str()),
                    "base images: no entry for {bin}"
                );
            }
            for (d, spec) in workloads(&base()) {
                for c in seq(&spec["containers"]) {
                    let image = c["image"].as_str().unwrap();
                    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
                    assert!(
                        names.contains(repo),
                        "{}: image {image} has no images: entry",
                        d.at()
                    );
                }
            }
        }
        // `labels` (not commonLabels, which would rewrite immutable selectors), on the base and on every overlay
        // that adds objects of its own.
        if dir.ends_with("base") || dir.ends_with("edge") {
            assert!(k.value["commonLabels"].is_null());
            let labels = &seq(&k.value["labels"])[0];
            assert_eq!(
                labels["pairs"]["app.kubernetes.io/part-of"].as_str(),
                Some("maas")
            );
            assert_eq!(labels["includeSelectors"].as_bool(), Some(false));
        }
    }
    assert_eq!(
        checked, 4,
        "base, overlays/file-mode, overlays/dev, overlays/edge"
    );
    // The edge routers are not in the base (optional), only in overlays/edge; the images pinned there (the base's
    // `images:` do not reach the overlay's own files, and the overlay's would override the base's) equal the
    // base's pins.
    let base_k = &load("manifests/base/kustomization.yaml")[0];
    assert!(
        !seq_strs(&base_k.value["resources"])
            .iter()
            .any(|r| r.contains("edge")),
        "the base includes the edge routers"
    );
    let edge_k = &load("manifests/overlays/edge/kustomization.yaml")[0];
    assert_eq!(
        seq_strs(&edge_k.value["resources"]),
        ["../../base", "router-edge.yaml"]
    );
    let pins = |k: &Doc| -> BTreeMap<String, Value> {
        seq(&k.value["images"])
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_string(), i.clone()))
            .collect()
    };
    let (base_pins, edge_pins) = (pins(base_k), pins(edge_k));
    for (d, spec) in workloads(&load("manifests/overlays/edge/router-edge.yaml")) {
        for c in seq(&spec["containers"]) {
            let image = c["image"].as_str().unwrap();
            let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
            assert!(
                edge_pins.contains_key(repo),
                "{}: image {image} has no images: entry in overlays/edge",
                d.at()
            );
        }
    }
    for (name, pin) in &edge_pins {
        assert_eq!(
            Some(pin),
            base_pins.get(name),
            "overlays/edge pins {name} differently from the base"
        );
    }
}

#[test]
fn patches_target_objects_and_containers_that_exist_in_their_bases() {
    for dir in [
        "manifests/overlays/file-mode",
        "manifests/overlays/dev",
        "manifests/overlays/edge",
    ] {
        let dir = repo_root().join(dir);
        let rendered = kustomize_resources(&dir);
        let k = &load_file(&dir.join("kustomization.yaml"))[0];
        for p in seq(&k.value["patches"]) {
            for patch in load_file(&dir.join(p["path"].as_str().unwrap())) {
                let target = find(&rendered, patch.kind(), patch.name());
                let target_spec = &target.value["spec"]["template"]["spec"];
                for c in seq(&patch.value["spec"]["template"]["spec"]["containers"]) {
                    let name = c["name"].as_str().unwrap();
                    container(target_spec, name);
                }
            }
        }
        for r in seq(&k.value["replicas"]) {
            find_workload(&rendered, r["name"].as_str().unwrap());
        }
    }
    let dev = &load("manifests/overlays/dev/kustomization.yaml")[0];
    assert_eq!(dev.value["namespace"].as_str(), Some("maas-dev"));
    assert!(
        seq(&dev.value["replicas"])
            .iter()
            .all(|r| r["count"].as_u64() == Some(1))
    );
    let dev_replicas: BTreeSet<&str> = seq(&dev.value["replicas"])
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for (d, _) in workloads(&base()) {
        assert!(
            dev_replicas.contains(d.name()),
            "{}: no replicas entry in overlays/dev",
            d.at()
        );
    }
    let ns = load("manifests/overlays/dev/namespace.yaml");
    assert_eq!((ns[0].kind(), ns[0].name()), ("Namespace", "maas-dev"));
}

/// Checks of the router-agent sidecar of a router workload (interior or edge): `router-agent run` on the router's
/// loopback, probes on 8080, its pod name from the downward API and its mode.
fn check_agent(workload: &Doc, mode: &str) {
    let spec = &workload.value["spec"]["template"]["spec"];
    let qdr = container(spec, "router");
    assert!(
        qdr["image"]
            .as_str()
            .is_some_and(|i| i.ends_with("qdrouterd:1.19.0") || i == "${ROUTER_IMAGE}"),
        "{}: router image {:?}",
        workload.at(),
        qdr["image"]
    );
    let agent = container(spec, "router-agent");
    assert_eq!(seq_strs(&agent["args"]), ["run"], "{}", workload.at());
    let readiness = &agent["readinessProbe"]["httpGet"];
    assert_eq!(
        readiness["path"].as_str(),
        Some("/readyz"),
        "{}",
        workload.at()
    );
    assert_eq!(resolve_port(agent, &readiness["port"]), Some(8080));
    let liveness = &agent["livenessProbe"]["httpGet"];
    assert_eq!(
        liveness["path"].as_str(),
        Some("/healthz"),
        "{}",
        workload.at()
    );
    assert_eq!(resolve_port(agent, &liveness["port"]), Some(8080));
    let e = env(agent);
    // The sidecar dials its own router over the pod's loopback, and serves HTTP where the probes look.
    assert_eq!(
        e.get("ROUTER_URL"),
        Some(&Some("amqp://127.0.0.1:5672".to_string())),
        "{}",
        workload.at()
    );
    assert_eq!(
        e.get("CONFIG_SERVICE_URL"),
        Some(&Some("amqp://maas-config-service:5672".to_string())),
        "{}",
        workload.at()
    );
    assert_eq!(e.get("HTTP_ADDR"), Some(&Some("0.0.0.0:8080".to_string())));
    // Its identity in the router network is its pod name, from the downward API (never a literal: every replica
    // would claim the same name).
    assert_eq!(
        env_field_ref(agent, "POD_NAME"),
        Some("metadata.name"),
        "{}: POD_NAME from fieldRef metadata.name",
        workload.at()
    );
    let agent_mode = e.get("ROUTER_MODE").cloned().flatten();
    assert_eq!(
        agent_mode.as_deref().unwrap_or("interior"),
        mode,
        "{}: ROUTER_MODE",
        workload.at()
    );
    check_anti_affinity(workload);
}

/// Checks of the interior router StatefulSet shared by the base and the Template.
fn check_router(docs: &[Doc]) {
    let router = find(docs, "StatefulSet", "maas-router");
    check_agent(router, "interior");
    let sts = &router.value["spec"];
    let spec = &sts["template"]["spec"];
    let labels = pod_labels(router);
    assert!(selects(&sts["selector"]["matchLabels"], &labels));
    assert_eq!(
        labels
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some(maas_model::mesh::ROUTER_COMPONENT)
    );
    assert!(!labels.contains_key(maas_model::mesh::ROUTER_MODE_LABEL));
    // A mesh needs two routers at least (the Template's default is checked with its parameters).
    match sts["replicas"].as_u64() {
        Some(n) => assert!(n >= 2, "{}: {n} replicas", router.at()),
        None => assert_eq!(sts["replicas"].as_str(), Some("${{ROUTER_REPLICAS}}")),
    }
    assert_eq!(sts["podManagementPolicy"].as_str(), Some("Parallel"));
    assert!(
        sts["volumeClaimTemplates"].is_null(),
        "routers keep no state"
    );
    // The StatefulSet's headless Service: stable DNS names <pod>.<service> for every pod, ready or not.
    let mesh_svc = find(
        docs,
        "Service",
        sts["serviceName"].as_str().expect("serviceName"),
    );
    assert_eq!(mesh_svc.value["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        mesh_svc.value["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert!(selects(&mesh_svc.value["spec"]["selector"], &labels));
    // A PodDisruptionBudget lets voluntary disruptions take at most one interior router at a time.
    let pdb = docs
        .iter()
        .find(|d| {
            d.kind() == "PodDisruptionBudget"
                && selects(&d.value["spec"]["selector"]["matchLabels"], &labels)
        })
        .unwrap_or_else(|| panic!("no PodDisruptionBudget selects the router pods"));
    assert_eq!(
        pdb.value["spec"]["maxUnavailable"].as_u64(),
        Some(1),
        "{}",
        pdb.at()
    );

    // qdrouterd.conf: interior, and one listener per role on the container port of the name the agents look for.
    let conf = conf_sections(router_conf(docs, router));
    let routers: Vec<_> = conf.iter().filter(|(s, _)| s == "router").collect();
    assert_eq!(routers.len(), 1);
    assert_eq!(
        routers[0].1.get("mode").map(String::as_str),
        Some("interior")
    );
    assert!(
        !routers[0].1.contains_key("id"),
        "a fixed router id would be shared by every pod"
    );
    for (role, port_name) in [
        ("normal", "amqp"),
        ("inter-router", maas_model::mesh::INTER_ROUTER_PORT_NAME),
        ("edge", maas_model::mesh::EDGE_PORT_NAME),
    ] {
        let listener = &conf
            .iter()
            .find(|(s, a)| s == "listener" && a.get("role").map(String::as_str) == Some(role))
            .unwrap_or_else(|| panic!("{}: no {role} listener", router.at()))
            .1;
        let port = named_port(spec, port_name)
            .unwrap_or_else(|| panic!("{}: no container port named {port_name}", router.at()));
        assert_eq!(
            listener.get("port").and_then(|p| p.parse::<u64>().ok()),
            Some(port),
            "{}: the {role} listener is not on the port named {port_name}",
            router.at()
        );
    }
    assert_eq!(
        named_port(spec, maas_model::mesh::INTER_ROUTER_PORT_NAME),
        Some(u64::from(maas_model::mesh::DEFAULT_INTER_ROUTER_PORT))
    );
    assert_eq!(
        named_port(spec, maas_model::mesh::EDGE_PORT_NAME),
        Some(u64::from(maas_model::mesh::DEFAULT_EDGE_PORT))
    );
    // The headless Service's ports are the router's.
    for p in seq(&mesh_svc.value["spec"]["ports"]) {
        let target = p["targetPort"].as_str().unwrap();
        assert_eq!(
            named_port(spec, target),
            p["port"].as_u64(),
            "{}",
            mesh_svc.at()
        );
    }

    // What the agents make of these pods: each is an interior router with both ports, and the higher name dials
    // the lower one, once.
    let pods = [
        pod_info(router, "maas-router-0", "10.0.0.1"),
        pod_info(router, "maas-router-1", "10.0.0.2"),
    ];
    let interiors = maas_model::mesh::routers_from_pods(&pods);
    assert_eq!(interiors.len(), 2, "{}: {interiors:?}", router.at());
    assert!(interiors.iter().all(|r| {
        r.port == maas_model::mesh::DEFAULT_INTER_ROUTER_PORT
            && r.edge_port == Some(maas_model::mesh::DEFAULT_EDGE_PORT)
    }));
    let connectors = |own: &str| {
        maas_model::mesh::mesh_entities(&maas_model::MeshInputs {
            own: Some(own.to_string()),
            mode: maas_model::RouterMode::Interior,
            routers: interiors.clone(),
            options: maas_model::MeshOptions::default(),
        })
    };
    assert!(connectors("maas-router-0").is_empty());
    let up = connectors("maas-router-1");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].name, "maas-router-maas-router-0");
    assert_eq!(up[0].attributes["role"], "inter-router");

    // NetworkPolicy: clients and probes from anywhere; the unauthenticated inter-router port from interior
    // router pods only.
    let client = BTreeMap::from([("app".to_string(), "some-client".to_string())]);
    for port in [5672, 8080] {
        assert!(admitted(docs, &labels, port, &client), "port {port}");
    }
    assert!(admitted(docs, &labels, 55672, &labels));
    assert!(!admitted(docs, &labels, 55672, &client));
    assert!(!admitted(docs, &labels, 45672, &client));
    assert!(!admitted(docs, &labels, 45672, &labels));
}

/// Checks of the edge routers (overlays/edge and the Template), with the interior routers beside them.
fn check_edge(docs: &[Doc]) {
    let edge = find(docs, "Deployment", "maas-router-edge");
    let interior = find(docs, "StatefulSet", "maas-router");
    check_agent(edge, "edge");
    let spec = &edge.value["spec"]["template"]["spec"];
    let labels = pod_labels(edge);
    let interior_labels = pod_labels(interior);
    assert!(selects(
        &edge.value["spec"]["selector"]["matchLabels"],
        &labels
    ));
    assert!(
        !selects(&interior.value["spec"]["selector"]["matchLabels"], &labels),
        "the interior StatefulSet would adopt edge pods"
    );
    assert!(!selects(
        &edge.value["spec"]["selector"]["matchLabels"],
        &interior_labels
    ));
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("maas-router-edge")
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some(maas_model::mesh::ROUTER_COMPONENT)
    );
    assert_eq!(
        labels
            .get(maas_model::mesh::ROUTER_MODE_LABEL)
            .map(String::as_str),
        Some("edge")
    );
    // An edge only dials out: no inter-router or edge port, and a config in edge mode with only the normal
    // listener.
    for name in [
        maas_model::mesh::INTER_ROUTER_PORT_NAME,
        maas_model::mesh::EDGE_PORT_NAME,
    ] {
        assert!(
            named_port(spec, name).is_none(),
            "{}: port {name}",
            edge.at()
        );
    }
    let conf = conf_sections(router_conf(docs, edge));
    let router = conf
        .iter()
        .find(|(s, _)| s == "router")
        .expect("router section");
    assert_eq!(router.1.get("mode").map(String::as_str), Some("edge"));
    let listeners: Vec<_> = conf.iter().filter(|(s, _)| s == "listener").collect();
    assert_eq!(listeners.len(), 1, "{}: {listeners:?}", edge.at());
    assert_eq!(
        listeners[0].1.get("role").map(String::as_str),
        Some("normal")
    );
    assert_eq!(
        listeners[0]
            .1
            .get("port")
            .and_then(|p| p.parse::<u64>().ok()),
        named_port(spec, "amqp")
    );
    // The same images as the interior routers.
    let ispec = &interior.value["spec"]["template"]["spec"];
    for c in ["router", "router-agent"] {
        assert_eq!(
            container(spec, c)["image"],
            container(ispec, c)["image"],
            "{} {c}",
            edge.at()
        );
    }

    // What the agents make of these pods: an edge pod is not an interior router, and its agent dials one interior
    // pod's edge port with role edge.
    let pods = [
        pod_info(interior, "maas-router-0", "10.0.0.1"),
        pod_info(interior, "maas-router-1", "10.0.0.2"),
        pod_info(edge, "maas-router-edge-7d9f-abcde", "10.0.0.3"),
    ];
    let interiors = maas_model::mesh::routers_from_pods(&pods);
    assert_eq!(
        interiors
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["maas-router-0", "maas-router-1"]
    );
    let uplink = maas_model::mesh::mesh_entities(&maas_model::MeshInputs {
        own: Some("maas-router-edge-7d9f-abcde".to_string()),
        mode: maas_model::RouterMode::Edge,
        routers: interiors,
        options: maas_model::MeshOptions::default(),
    });
    assert_eq!(uplink.len(), 1, "{uplink:?}");
    assert_eq!(uplink[0].attributes["role"], "edge");
    assert_eq!(
        uplink[0].attributes["port"],
        maas_model::mesh::DEFAULT_EDGE_PORT.to_string()
    );

    // Clients reach interior and edge routers through the one client Service.
    let clients = find(docs, "Service", "maas-router");
    assert!(selects(&clients.value["spec"]["selector"], &labels));
    assert!(selects(
        &clients.value["spec"]["selector"],
        &interior_labels
    ));
    // NetworkPolicies: the interiors' edge port admits edge pods only, their inter-router port interior pods
    // only; the edge pods admit clients and probes.
    let client = BTreeMap::from([("app".to_string(), "some-client".to_string())]);
    assert!(admitted(docs, &interior_labels, 45672, &labels));
    assert!(!admitted(docs, &interior_labels, 55672, &labels));
    assert!(admitted(docs, &interior_labels, 55672, &interior_labels));
    assert!(!admitted(docs, &interior_labels, 45672, &interior_labels));
    assert!(!admitted(docs, &interior_labels, 45672, &client));
    for port in [5672, 8080] {
        assert!(admitted(docs, &labels, port, &client), "edge port {port}");
    }
    assert!(
        docs.iter().any(|d| d.kind() == "NetworkPolicy"
            && selects(&d.value["spec"]["podSelector"]["matchLabels"], &labels)),
        "no NetworkPolicy for the edge pods (a default-deny namespace would refuse their clients)"
    );
}

#[test]
fn router_runs_the_agent_sidecar_ready_on_readyz() {
    check_router(&base());
    check_router(&template().1);
    check_router(&edge_overlay());
    check_edge(&edge_overlay());
    check_edge(&template().1);
    // Edge routers are optional: not in the base.
    assert!(
        !base()
            .iter()
            .any(|d| d.name().starts_with("maas-router-edge"))
    );
}

#[test]
fn router_agent_env_is_understood_by_router_agent_run() {
    let cli = router_agent::args::Cli::command();
    let run = cli.find_subcommand("run").expect("router-agent run");
    let known: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for name in ["ROUTER_URL", "POD_NAME", "ROUTER_MODE", "ROUTERS_FILE"] {
        assert!(known.contains(name), "{name} not in {known:?}");
    }
    // The values ROUTER_MODE takes in the manifests are ones `router-agent run` accepts.
    let modes: BTreeSet<String> = run
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == "ROUTER_MODE"))
        .unwrap()
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_string())
        .collect();
    // Read by the logging set-up of every binary rather than by clap.
    let global = ["LOG_FORMAT", "RUST_LOG"];
    let patch = load("manifests/overlays/file-mode/router-file-mode.yaml");
    let mut agents: Vec<(String, Value)> = Vec::new();
    for docs in [base(), template().1, patch] {
        let d = find(&docs, "StatefulSet", "maas-router");
        let c = container(&d.value["spec"]["template"]["spec"], "router-agent");
        agents.push((d.at(), c.clone()));
    }
    for docs in [edge_overlay(), template().1] {
        let d = find(&docs, "Deployment", "maas-router-edge");
        let c = container(&d.value["spec"]["template"]["spec"], "router-agent");
        agents.push((d.at(), c.clone()));
    }
    for (at, c) in agents {
        for (name, value) in env(&c) {
            assert!(
                known.contains(&name) || global.contains(&name.as_str()),
                "{at}: router-agent has no env var {name}; `router-agent run` knows {known:?}"
            );
            if name == "ROUTER_MODE" {
                let value = value.unwrap();
                assert!(
                    modes.contains(&value),
                    "{at}: ROUTER_MODE={value}, not in {modes:?}"
                );
            }
        }
    }
}

#[test]
fn file_mode_mounts_the_address_configmap_as_a_directory_never_subpath() {
    let patch = load("manifests/overlays/file-mode/router-file-mode.yaml");
    let d = find(&patch, "StatefulSet", "maas-router");
    let spec = &d.value["spec"]["template"]["spec"];
    let agent = container(spec, "router-agent");
    let volume_of = |cm: &str| -> String {
        seq(&spec["volumes"])
            .iter()
            .find(|v| v["configMap"]["name"].as_str() == Some(cm))
            .and_then(|v| v["name"].as_str())
            .unwrap_or_else(|| panic!("no volume from ConfigMap {cm}"))
            .to_string()
    };
    let mount_of = |volume: &str| -> &Value {
        seq(&agent["volumeMounts"])
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("router-agent does not mount {volume}"))
    };
    let e = env(agent);
    let mounted_dir = |cm: &str| -> String {
        let m = mount_of(&volume_of(cm));
        assert!(
            m["subPath"].is_null() && m["subPathExpr"].is_null(),
            "ConfigMap {cm} mounted with subPath: it would never update"
        );
        m["mountPath"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    };
    let addresses = mounted_dir("addresses");
    assert_eq!(e.get("ADDRESSES_DIR"), Some(&Some(addresses)));
    let flavors = mounted_dir("flavor");
    assert_eq!(
        e.get("FLAVORS_FILE"),
        Some(&Some(format!("{flavors}/flavor.json")))
    );
    let brokers = mounted_dir("maas-brokers");
    assert_eq!(
        e.get("BROKERS_FILE"),
        Some(&Some(format!("{brokers}/brokers.json")))
    );
    let routers = mounted_dir("maas-routers");
    assert_eq!(
        e.get("ROUTERS_FILE"),
        Some(&Some(format!("{routers}/routers.json")))
    );
    // The config-service subscription is removed, not left to conflict with the directory.
    let cs = seq(&agent["env"])
        .iter()
        .find(|v| v["name"].as_str() == Some("CONFIG_SERVICE_URL"))
        .expect("CONFIG_SERVICE_URL removed by the patch");
    assert_eq!(cs["$patch"].as_str(), Some("delete"));
    // And the ConfigMaps it mounts exist in what the overlay renders.
    let rendered = kustomize_resources(&repo_root().join("manifests/overlays/file-mode"));
    for cm in ["addresses", "flavor", "maas-brokers", "maas-routers"] {
        find(&rendered, "ConfigMap", cm);
    }
    // Without config-service the mesh comes from the routers list: it parses, and lists exactly the
    // StatefulSet's pods (names = their POD_NAME) under their stable DNS names <pod>.<headless Service>, on the
    // ports named inter-router and edge.
    let routers_cm = find(&rendered, "ConfigMap", "maas-routers");
    let list = maas_model::mesh::parse_routers(
        "maas-routers",
        routers_cm.value["data"]["routers.json"].as_str().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{}: {e:?}", routers_cm.at()));
    let sts = find(&rendered, "StatefulSet", "maas-router");
    let replicas = sts.value["spec"]["replicas"].as_u64().unwrap();
    let service = sts.value["spec"]["serviceName"].as_str().unwrap();
    let sts_spec = &sts.value["spec"]["template"]["spec"];
    let expected: Vec<maas_model::RouterPod> = (0..replicas)
        .map(|i| maas_model::RouterPod {
            name: format!("{}-{i}", sts.name()),
            host: format!("{}-{i}.{service}", sts.name()),
            port: u16::try_from(
                named_port(sts_spec, maas_model::mesh::INTER_ROUTER_PORT_NAME).unwrap(),
            )
            .unwrap(),
            edge_port: named_port(sts_spec, maas_model::mesh::EDGE_PORT_NAME)
                .map(|p| u16::try_from(p).unwrap()),
        })
        .collect();
    assert_eq!(list, expected, "{}", routers_cm.at());
    // Nowhere in the manifests is a ConfigMap volume mounted with subPath.
    for obj in complete_objects().iter().chain(patch.iter()) {
        let spec = &obj.value["spec"]["template"]["spec"];
        let cm_volumes: BTreeSet<&str> = seq(&spec["volumes"])
            .iter()
            .filter(|v| !v["configMap"].is_null() || !v["projected"].is_null())
            .filter_map(|v| v["name"].as_str())
            .collect();
        for c in seq(&spec["containers"]) {
            for m in seq(&c["volumeMounts"]) {
                if cm_volumes.contains(m["name"].as_str().unwrap_or("")) {
                    assert!(m["subPath"].is_null(), "{}: subPath mount", obj.at());
                }
            }
        }
    }
}

#[test]
fn every_container_runs_non_root_with_a_hardened_security_context() {
    let objects = complete_objects();
    let wl = workloads(&objects);
    assert!(
        wl.len() >= 8,
        "3 Deployments/StatefulSets in the base and in the Template, and the edge routers in both"
    );
    for (d, spec) in wl {
        let pod_sc = &spec["securityContext"];
        for c in seq(&spec["containers"])
            .iter()
            .chain(seq(&spec["initContainers"]))
        {
            let at = format!("{} container {}", d.at(), c["name"].as_str().unwrap_or("?"));
            let sc = &c["securityContext"];
            let non_root = sc["runAsNonRoot"]
                .as_bool()
                .or(pod_sc["runAsNonRoot"].as_bool());
            assert_eq!(non_root, Some(true), "{at}: runAsNonRoot");
            for uid in [&sc["runAsUser"], &pod_sc["runAsUser"]] {
                assert_ne!(uid.as_u64(), Some(0), "{at}: runAsUser 0");
            }
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{at}"
            );
            assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{at}");
            assert!(
                seq_strs(&sc["capabilities"]["drop"]).contains(&"ALL"),
                "{at}: capabilities.drop ALL"
            );
            assert!(sc["privileged"].as_bool() != Some(true), "{at}");
            assert!(
                !c["resources"]["requests"]["memory"].is_null()
                    && !c["resources"]["limits"]["memory"].is_null(),
                "{at}: memory request and limit"
            );
            assert!(!c["image"].is_null(), "{at}: image");
            assert!(
                !c["livenessProbe"].is_null() && !c["readinessProbe"].is_null(),
                "{at}: probes"
            );
        }
    }
    // OpenShift's restricted SCC assigns the UID: the Template must not pin one.
    for (d, spec) in workloads(&template().1) {
        assert!(
            spec["securityContext"]["runAsUser"].is_null(),
            "{}: runAsUser in the Template",
            d.at()
        );
    }
}

#[test]
fn services_rbac_and_accounts_are_wired_together() {
    for docs in [base(), template().1, edge_overlay()] {
        let wl = workloads(&docs);
        // Every Service's pods (all the workloads it selects: the client Service takes interior and edge routers)
        // have its target ports.
        for svc in docs.iter().filter(|d| d.kind() == "Service") {
            let selected: Vec<_> = wl
                .iter()
                .filter(|(d, _)| selects(&svc.value["spec"]["selector"], &pod_labels(d)))
                .collect();
            assert!(!selected.is_empty(), "{}: selects no pods", svc.at());
            for (d, spec) in selected {
                for p in seq(&svc.value["spec"]["ports"]) {
                    let target = &p["targetPort"];
                    let ok = seq(&spec["containers"])
                        .iter()
                        .any(|c| resolve_port(c, target).is_some());
                    assert!(
                        ok,
                        "{}: targetPort {target:?} is no container port of {}",
                        svc.at(),
                        d.at()
                    );
                }
            }
        }
        // PodDisruptionBudgets and NetworkPolicies select pods that exist.
        for d in docs.iter().filter(|d| d.kind() == "PodDisruptionBudget") {
            let selector = &d.value["spec"]["selector"]["matchLabels"];
            assert!(
                wl.iter().any(|(w, _)| selects(selector, &pod_labels(w))),
                "{}: selects no pods",
                d.at()
            );
        }
        for d in docs.iter().filter(|d| d.kind() == "NetworkPolicy") {
            let selector = &d.value["spec"]["podSelector"]["matchLabels"];
            assert!(
                wl.iter().any(|(w, _)| selects(selector, &pod_labels(w))),
                "{}: selects no pods",
                d.at()
            );
        }
        for rb in docs.iter().filter(|d| d.kind() == "RoleBinding") {
            let role = &rb.value["roleRef"];
            find(
                &docs,
                role["kind"].as_str().unwrap(),
                role["name"].as_str().unwrap(),
            );
            for s in seq(&rb.value["subjects"]) {
                find(&docs, "ServiceAccount", s["name"].as_str().unwrap());
            }
        }
        for (d, spec) in &wl {
            if let Some(sa) = spec["serviceAccountName"].as_str() {
                find(&docs, "ServiceAccount", sa);
                assert!(
                    docs.iter().any(|rb| rb.kind() == "RoleBinding"
                        && seq(&rb.value["subjects"])
                            .iter()
                            .any(|s| s["name"].as_str() == Some(sa))),
                    "{}: {sa} has no RoleBinding",
                    d.at()
                );
            } else {
                assert_eq!(
                    spec["automountServiceAccountToken"].as_bool(),
                    Some(false),
                    "{}: pods without their own account get no API token",
                    d.at()
                );
            }
        }
        // What each controller's Role grants.
        let verbs = |role: &str, group: &str, resource: &str| -> BTreeSet<String> {
            seq(&find(&docs, "Role", role).value["rules"])
                .iter()
                .filter(|r| {
                    seq_strs(&r["apiGroups"]).contains(&group)
                        && seq_strs(&r["resources"]).contains(&resource)
                })
                .flat_map(|r| seq_strs(&r["verbs"]))
                .map(str::to_string)
                .collect()
        };
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let read = set(&["get", "list", "watch"]);
        assert_eq!(verbs("maas-config-service", "", "configmaps"), read);
        assert_eq!(verbs("maas-config-service", "", "pods"), read);
        let manage = set(&["get", "list", "watch", "create", "patch", "delete"]);
        assert_eq!(
            verbs("maas-storage-controller", "apps", "statefulsets"),
            manage
        );
        assert_eq!(verbs("maas-storage-controller", "", "services"), manage);
        assert_eq!(verbs("maas-storage-controller", "", "pods"), read);
        for role in ["maas-config-service", "maas-storage-controller"] {
            assert!(
                verbs(role, "", "events").contains("create"),
                "{role} events"
            );
        }
    }
}

#[test]
fn controllers_take_their_namespace_from_the_downward_api() {
    for docs in [base(), template().1] {
        for (name, first_args) in [
            (
                "maas-config-service",
                vec!["--listen", "0.0.0.0:5672", "--kube"],
            ),
            ("maas-storage-controller", vec!["run", "--kube"]),
        ] {
            let d = find(&docs, "Deployment", name);
            let spec = &d.value["spec"]["template"]["spec"];
            let c = &seq(&spec["containers"])[0];
            let args = seq_strs(&c["args"]);
            assert_eq!(
                &args[..first_args.len()],
                first_args.as_slice(),
                "{}",
                d.at()
            );
            let ns = args
                .iter()
                .position(|a| *a == "--namespace")
                .expect("--namespace");
            assert_eq!(args[ns + 1], "$(POD_NAMESPACE)", "{}", d.at());
            let pod_ns = seq(&c["env"])
                .iter()
                .find(|e| e["name"].as_str() == Some("POD_NAMESPACE"))
                .expect("POD_NAMESPACE env");
            assert_eq!(
                pod_ns["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                Some("metadata.namespace")
            );
        }
        let sc = find(&docs, "Deployment", "maas-storage-controller");
        assert_eq!(sc.value["spec"]["replicas"].as_u64(), Some(1));
        assert_eq!(
            sc.value["spec"]["strategy"]["type"].as_str(),
            Some("Recreate")
        );
    }
}

#[test]
fn address_configmaps_are_valid_for_the_model() {
    for docs in [base(), template().1] {
        let cm_data = |d: &Doc| -> BTreeMap<String, String> {
            d.value["data"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let flavor_cm = find(&docs, "ConfigMap", "flavor");
        let flavors = maas_model::parse_flavor_config("flavor", &cm_data(flavor_cm))
            .unwrap_or_else(|e| panic!("{}: {e:?}", flavor_cm.at()));
        assert!(!flavors.is_empty());
        let mut total = 0;
        for d in docs.iter().filter(|d| {
            d.kind() == "ConfigMap"
                && d.value["metadata"]["labels"]["type"].as_str() == Some("address-config")
        }) {
            let config = maas_model::parse_config(d.name(), &cm_data(d), Some(&flavors))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {}",
                        d.at(),
                        e.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                });
            total += config.addresses.len();
        }
        assert!(
            total >= 4,
            "the shipped address ConfigMap has examples of each kind"
        );
        // The flavor ConfigMap is not itself an address ConfigMap (config-service would parse it as addresses).
        assert!(flavor_cm.value["metadata"]["labels"]["type"].is_null());
    }
}

/// `${NAME}` and `${{NAME}}` references in every string of `v`.
fn template_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                rest = &rest[i + 2..];
                let inner = rest.strip_prefix('{').unwrap_or(rest);
                let end = inner.find('}').expect("unterminated ${");
                out.insert(inner[..end].to_string());
                rest = &inner[end..];
            }
        }
        Value::Sequence(s) => s.iter().for_each(|x| template_refs(x, out)),
        Value::Mapping(m) => m.iter().for_each(|(k, x)| {
            template_refs(k, out);
            template_refs(x, out);
        }),
        _ => {}
    }
}

#[test]
fn openshift_template_declares_every_parameter_it_uses() {
    let (t, objects) = template();
    assert_eq!(t["apiVersion"].as_str(), Some("template.openshift.io/v1"));
    assert_eq!(t["kind"].as_str(), Some("Template"));
    let declared: BTreeMap<String, &Value> = seq(&t["parameters"])
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p))
        .collect();
    let mut used = BTreeSet::new();
    template_refs(&t["objects"], &mut used);
    template_refs(&t["message"], &mut used);
    for name in &used {
        assert!(
            declared.contains_key(name),
            "${{{name}}} is used but not a parameter"
        );
    }
    for (name, p) in &declared {
        assert!(used.contains(name), "parameter {name} is never used");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        // Required without a default: only what the installer must choose.
        if p["value"].is_null() && p["generate"].is_null() {
            assert_eq!(name, "NAMESPACE", "{name} has no default");
        }
    }
    for required in [
        "NAMESPACE",
        "ROUTER_IMAGE",
        "ROUTER_AGENT_IMAGE",
        "CONFIG_SERVICE_IMAGE",
        "STORAGE_CONTROLLER_IMAGE",
        "ROUTER_REPLICAS",
        "EDGE_ROUTER_REPLICAS",
    ] {
        assert!(declared.contains_key(required), "no parameter {required}");
    }
    // Two interior routers by default (a mesh, and redundancy); no edge routers unless asked for.
    let default = |name: &str| -> u64 {
        declared[name]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: string default"))
            .parse()
            .unwrap()
    };
    assert!(default("ROUTER_REPLICAS") >= 2);
    assert_eq!(default("EDGE_ROUTER_REPLICAS"), 0);
    for d in &objects {
        assert_eq!(
            d.value["metadata"]["namespace"].as_str(),
            Some("${NAMESPACE}"),
            "{}",
            d.at()
        );
    }
    for (kind, name, param) in [
        ("StatefulSet", "maas-router", "ROUTER_REPLICAS"),
        ("Deployment", "maas-router-edge", "EDGE_ROUTER_REPLICAS"),
    ] {
        let d = find(&objects, kind, name);
        assert_eq!(
            d.value["spec"]["replicas"].as_str(),
            Some(format!("${{{{{param}}}}}").as_str()),
            "{}: an integer parameter needs ${{{{...}}}}",
            d.at()
        );
    }
}

#[test]
fn openshift_template_holds_the_same_objects_as_the_base() {
    // The base plus the (optional) edge routers: the Template always has the edge Deployment, with
    // EDGE_ROUTER_REPLICAS pods.
    let base = edge_overlay();
    let (_, objects) = template();
    let ids = |docs: &[Doc]| -> BTreeSet<(String, String)> {
        docs.iter()
            .map(|d| (d.kind().to_string(), d.name().to_string()))
            .collect()
    };
    assert_eq!(ids(&base), ids(&objects));
    for b in &base {
        let t = find(&objects, b.kind(), b.name());
        match b.kind() {
            "ConfigMap" => assert_eq!(b.value["data"], t.value["data"], "{}", b.at()),
            "Role" => assert_eq!(b.value["rules"], t.value["rules"], "{}", b.at()),
            "Service" | "NetworkPolicy" | "PodDisruptionBudget" => {
                assert_eq!(b.value["spec"], t.value["spec"], "{}", b.at())
            }
            "Deployment" | "StatefulSet" => {
                let bs = &b.value["spec"]["template"]["spec"];
                let ts = &t.value["spec"]["template"]["spec"];
                for key in [
                    "selector",
                    "strategy",
                    "serviceName",
                    "podManagementPolicy",
                    "updateStrategy",
                ] {
                    assert_eq!(
                        b.value["spec"][key],
                        t.value["spec"][key],
                        "{} {key}",
                        b.at()
                    );
                }
                for key in [
                    "affinity",
                    "automountServiceAccountToken",
                    "serviceAccountName",
                    "terminationGracePeriodSeconds",
                ] {
                    assert_eq!(bs[key], ts[key], "{} {key}", b.at());
                }
                // The Template's pods carry the part-of label itself (kustomize adds it to the base's).
                let mut t_labels = pod_labels(t);
                t_labels.remove("app.kubernetes.io/part-of");
                assert_eq!(pod_labels(b), t_labels, "{} pod labels", b.at());
                for bc in seq(&bs["containers"]) {
                    let tc = container(ts, bc["name"].as_str().unwrap());
                    for key in [
                        "args",
                        "command",
                        "ports",
                        "readinessProbe",
                        "livenessProbe",
                        "securityContext",
                        "volumeMounts",
                        "resources",
                    ] {
                        assert_eq!(bc[key], tc[key], "{} {key}", b.at());
                    }
                    assert_eq!(
                        env(bc).keys().collect::<Vec<_>>(),
                        env(tc).keys().collect::<Vec<_>>(),
                        "{} env",
                        b.at()
                    );
                    // Same values, except where the Template takes a parameter (LOG_FORMAT).
                    for (be, te) in seq(&bc["env"]).iter().zip(seq(&tc["env"])) {
                        if !te["value"].as_str().is_some_and(|v| v.starts_with("${")) {
                            assert_eq!(be, te, "{} env", b.at());
                        }
                    }
                }
                assert_eq!(seq(&bs["containers"]).len(), seq(&ts["containers"]).len());
                assert_eq!(bs["volumes"], ts["volumes"], "{}", b.at());
            }
            _ => {}
        }
    }
}

#[test]
fn dockerfiles_copy_the_release_binary_onto_distroless_and_run_non_root() {
    for bin in [
        "router-agent",
        "config-service",
        "storage-controller",
        "subscription-service",
    ] {
        let dir = repo_root().join("images").join(bin);
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let instructions: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let has = |prefix: &str, rest: &str| {
            instructions
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(rest))
        };
        assert!(
            has("FROM", "gcr.io/distroless/cc-debian12:nonroot"),
            "{bin}: base"
        );
        assert_eq!(
            instructions
                .iter()
                .filter(|l| l.starts_with("FROM"))
                .count(),
            1,
            "{bin}: built outside, one stage"
        );
        assert!(
            has(
                "COPY",
                &format!("target/release/{bin} /usr/local/bin/{bin}")
            ),
            "{bin}: COPY"
        );
        let user = instructions
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{bin}: no USER"));
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{bin}: USER must be numeric for runAsNonRoot"));
        assert_ne!(uid, 0, "{bin}: root");
        assert!(
            has("ENTRYPOINT", &format!("[\"/usr/local/bin/{bin}\"]")),
            "{bin}: ENTRYPOINT"
        );
        let ignore = fs::read_to_string(dir.join("Dockerfile.dockerignore")).unwrap();
        assert!(
            ignore.lines().any(|l| l.trim() == "*"),
            "{bin}: context excludes all"
        );
        assert!(
            ignore
                .lines()
                .any(|l| l.trim() == format!("!target/release/{bin}")),
            "{bin}: context includes the binary"
        );
    }
    let readme = fs::read_to_string(repo_root().join("images/README.md")).unwrap();
    assert!(readme.contains("cargo build --release -p"));
    assert!(readme.contains("docker build -f \"images/$bin/Dockerfile\""));
}

/// `kubectl kustomize DIR` (kustomize built into kubectl; no cluster needed), or `None` when kubectl is not
/// installed.
fn kubectl_kustomize(dir: &str) -> Option<Vec<Value>> {
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join(dir))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|de| Value::deserialize(de).unwrap())
            .filter(|v| !v.is_null())
            .collect(),
    )
}

#[test]
fn kustomize_renders_base_and_overlays_as_intended() {
    let Some(base) = kubectl_kustomize("manifests/base") else {
        eprintln!("kubectl not installed: rendering not checked");
        return;
    };
    let find_rendered = |docs: &[Value], kind: &str, name: &str| -> Value {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .cloned()
            .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
    };
    let agent_env = |docs: &[Value]| -> BTreeMap<String, Option<String>> {
        let router = find_rendered(docs, "StatefulSet", "maas-router");
        env(container(
            &router["spec"]["template"]["spec"],
            "router-agent",
        ))
    };
    assert_eq!(
        base.len(),
        self::base().len(),
        "kustomize renders every object of the base files"
    );
    for d in &base {
        assert!(
            d["metadata"]["namespace"].is_null(),
            "the base is namespace-agnostic"
        );
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
            Some("maas")
        );
        if matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
            let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
            assert_eq!(
                pod_labels["app.kubernetes.io/part-of"].as_str(),
                Some("maas")
            );
            assert!(d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/part-of"].is_null());
        }
    }
    assert!(agent_env(&base).contains_key("CONFIG_SERVICE_URL"));

    // file mode: the strategic-merge patch really removed the config-service URL and added the directory.
    let file_mode = kubectl_kustomize("manifests/overlays/file-mode").unwrap();
    let e = agent_env(&file_mode);
    assert!(!e.contains_key("CONFIG_SERVICE_URL"), "{e:?}");
    assert_eq!(
        e.get("ADDRESSES_DIR"),
        Some(&Some("/etc/maas/addresses".to_string()))
    );
    assert_eq!(
        e.get("ROUTER_URL"),
        Some(&Some("amqp://127.0.0.1:5672".to_string()))
    );
    assert_eq!(
        e.get("ROUTERS_FILE"),
        Some(&Some("/etc/maas/routers/routers.json".to_string()))
    );
    assert!(e.contains_key("POD_NAME"), "{e:?}");
    let router = find_rendered(&file_mode, "StatefulSet", "maas-router");
    let spec = &router["spec"]["template"]["spec"];
    assert_eq!(seq(&spec["containers"]).len(), 2, "router and router-agent");
    let volumes: BTreeSet<&str> = seq(&spec["volumes"])
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in [
        "addresses",
        "flavor",
        "brokers",
        "routers",
        "router-config",
        "tmp",
    ] {
        assert!(volumes.contains(v), "{v} in {volumes:?}");
    }
    find_rendered(&file_mode, "ConfigMap", "maas-brokers");
    find_rendered(&file_mode, "ConfigMap", "maas-routers");

    // dev: everything namespaced in maas-dev, one replica each.
    let dev = kubectl_kustomize("manifests/overlays/dev").unwrap();
    for d in &dev {
        if d["kind"].as_str() == Some("Namespace") {
            assert_eq!(d["metadata"]["name"].as_str(), Some("maas-dev"));
        } else {
            assert_eq!(
                d["metadata"]["namespace"].as_str(),
                Some("maas-dev"),
                "{:?}",
                d["metadata"]
            );
        }
        if matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
            assert_eq!(
                d["spec"]["replicas"].as_u64(),
                Some(1),
                "{:?}",
                d["metadata"]
            );
        }
    }
    find_rendered(&dev, "StatefulSet", "maas-router");

    // edge: the base plus the edge routers, labelled like the base, with the base's images.
    let edge = kubectl_kustomize("manifests/overlays/edge").unwrap();
    assert_eq!(
        edge.len(),
        edge_overlay().len(),
        "kustomize renders every object of the base and router-edge.yaml"
    );
    for d in &edge {
        assert!(d["metadata"]["namespace"].is_null());
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
            Some("maas"),
            "{:?}",
            d["metadata"]
        );
    }
    let edge_router = find_rendered(&edge, "Deployment", "maas-router-edge");
    assert!(edge_router["spec"]["replicas"].as_u64().unwrap() >= 1);
    assert_eq!(
        edge_router["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
        Some("maas")
    );
    assert!(edge_router["spec"]["selector"]["matchLabels"]["app.kubernetes.io/part-of"].is_null());
    let espec = &edge_router["spec"]["template"]["spec"];
    assert_eq!(
        env(container(espec, "router-agent")).get("ROUTER_MODE"),
        Some(&Some("edge".to_string()))
    );
    find_rendered(&edge, "ConfigMap", "maas-router-edge-config");
    find_rendered(&edge, "NetworkPolicy", "maas-router-edge");
    let interior = find_rendered(&edge, "StatefulSet", "maas-router");
    let rendered_base_interior = find_rendered(&base, "StatefulSet", "maas-router");
    assert_eq!(
        interior, rendered_base_interior,
        "overlays/edge changes the interior routers"
    );
    for c in ["router", "router-agent"] {
        assert_eq!(
            container(espec, c)["image"],
            container(&interior["spec"]["template"]["spec"], c)["image"],
            "{c} image"
        );
    }
}
