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
        "expected the base, two overlays and the Template, found {files:?}"
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
    let mut seen = BTreeSet::new();
    for d in base() {
        assert!(
            seen.insert((d.kind().to_string(), d.name().to_string())),
            "{} twice in the base",
            d.at()
        );
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
            // `labels` (not commonLabels, which would rewrite immutable selectors).
            assert!(k.value["commonLabels"].is_null());
            let labels = &seq(&k.value["labels"])[0];
            assert_eq!(
                labels["pairs"]["app.kubernetes.io/part-of"].as_str(),
                Some("maas")
            );
            assert_eq!(labels["includeSelectors"].as_bool(), Some(false));
        }
    }
    assert_eq!(checked, 3, "base, overlays/file-mode, overlays/dev");
}

#[test]
fn patches_target_objects_and_containers_that_exist_in_their_bases() {
    for dir in ["manifests/overlays/file-mode", "manifests/overlays/dev"] {
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
            find(&rendered, "Deployment", r["name"].as_str().unwrap());
        }
    }
    let dev = &load("manifests/overlays/dev/kustomization.yaml")[0];
    assert_eq!(dev.value["namespace"].as_str(), Some("maas-dev"));
    assert!(
        seq(&dev.value["replicas"])
            .iter()
            .all(|r| r["count"].as_u64() == Some(1))
    );
    let ns = load("manifests/overlays/dev/namespace.yaml");
    assert_eq!((ns[0].kind(), ns[0].name()), ("Namespace", "maas-dev"));
}

/// Checks of the router Deployment shared by the base and the Template.
fn check_router(docs: &[Doc]) {
    let router = find(docs, "Deployment", "maas-router");
    let spec = &router.value["spec"]["template"]["spec"];
    let qdr = container(spec, "router");
    assert!(
        qdr["image"]
            .as_str()
            .is_some_and(|i| i.ends_with("qdrouterd:1.19.0") || i == "${ROUTER_IMAGE}"),
        "{}: router image {:?}",
        router.at(),
        qdr["image"]
    );
    let agent = container(spec, "router-agent");
    assert_eq!(seq_strs(&agent["args"]), ["run"], "{}", router.at());
    let readiness = &agent["readinessProbe"]["httpGet"];
    assert_eq!(
        readiness["path"].as_str(),
        Some("/readyz"),
        "{}",
        router.at()
    );
    assert_eq!(resolve_port(agent, &readiness["port"]), Some(8080));
    let liveness = &agent["livenessProbe"]["httpGet"];
    assert_eq!(
        liveness["path"].as_str(),
        Some("/healthz"),
        "{}",
        router.at()
    );
    assert_eq!(resolve_port(agent, &liveness["port"]), Some(8080));
    let e = env(agent);
    // The sidecar dials its own router over the pod's loopback, and serves HTTP where the probes look.
    assert_eq!(
        e.get("ROUTER_URL"),
        Some(&Some("amqp://127.0.0.1:5672".to_string()))
    );
    assert_eq!(
        e.get("CONFIG_SERVICE_URL"),
        Some(&Some("amqp://maas-config-service:5672".to_string()))
    );
    assert_eq!(e.get("HTTP_ADDR"), Some(&Some("0.0.0.0:8080".to_string())));
    // The router's static configuration has the 5672 listener the agent dials, and is what the router loads.
    let conf_cm = find(docs, "ConfigMap", "maas-router-config");
    let conf = conf_cm.value["data"]["qdrouterd.conf"].as_str().unwrap();
    assert!(conf.contains("port: 5672") && conf.contains("role: normal"));
    assert!(
        !conf.contains("${"),
        "qdrouterd.conf must not depend on variable substitution"
    );
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
        "router runs with {conf_path}"
    );
}

#[test]
fn router_runs_the_agent_sidecar_ready_on_readyz() {
    check_router(&base());
    check_router(&template().1);
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
    assert!(known.contains("ROUTER_URL"), "{known:?}");
    // Read by the logging set-up of every binary rather than by clap.
    let global = ["LOG_FORMAT", "RUST_LOG"];
    let patch = load("manifests/overlays/file-mode/router-file-mode.yaml");
    let mut agents: Vec<(String, Value)> = Vec::new();
    for docs in [base(), template().1, patch] {
        let d = find(&docs, "Deployment", "maas-router");
        let c = container(&d.value["spec"]["template"]["spec"], "router-agent");
        agents.push((d.at(), c.clone()));
    }
    for (at, c) in agents {
        for name in env(&c).keys() {
            assert!(
                known.contains(name) || global.contains(&name.as_str()),
                "{at}: router-agent has no env var {name}; `router-agent run` knows {known:?}"
            );
        }
    }
}

#[test]
fn file_mode_mounts_the_address_configmap_as_a_directory_never_subpath() {
    let patch = load("manifests/overlays/file-mode/router-file-mode.yaml");
    let d = find(&patch, "Deployment", "maas-router");
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
    // The config-service subscription is removed, not left to conflict with the directory.
    let cs = seq(&agent["env"])
        .iter()
        .find(|v| v["name"].as_str() == Some("CONFIG_SERVICE_URL"))
        .expect("CONFIG_SERVICE_URL removed by the patch");
    assert_eq!(cs["$patch"].as_str(), Some("delete"));
    // And the ConfigMaps it mounts exist in what the overlay renders.
    let rendered = kustomize_resources(&repo_root().join("manifests/overlays/file-mode"));
    for cm in ["addresses", "flavor", "maas-brokers"] {
        find(&rendered, "ConfigMap", cm);
    }
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
        wl.len() >= 6,
        "3 Deployments in the base and in the Template"
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
    for docs in [base(), template().1] {
        let wl = workloads(&docs);
        for svc in docs.iter().filter(|d| d.kind() == "Service") {
            let selector = svc.value["spec"]["selector"].as_mapping().unwrap();
            let (_, spec) = wl
                .iter()
                .find(|(d, _)| {
                    let labels = &d.value["spec"]["template"]["metadata"]["labels"];
                    selector
                        .iter()
                        .all(|(k, v)| &labels[k.as_str().unwrap()] == v)
                })
                .unwrap_or_else(|| panic!("{}: selects no pods", svc.at()));
            for p in seq(&svc.value["spec"]["ports"]) {
                let target = &p["targetPort"];
                let ok = seq(&spec["containers"])
                    .iter()
                    .any(|c| resolve_port(c, target).is_some());
                assert!(
                    ok,
                    "{}: targetPort {target:?} is no container port",
                    svc.at()
                );
            }
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
    ] {
        assert!(declared.contains_key(required), "no parameter {required}");
    }
    for d in &objects {
        assert_eq!(
            d.value["metadata"]["namespace"].as_str(),
            Some("${NAMESPACE}"),
            "{}",
            d.at()
        );
    }
    let router = find(&objects, "Deployment", "maas-router");
    assert_eq!(
        router.value["spec"]["replicas"].as_str(),
        Some("${{ROUTER_REPLICAS}}"),
        "an integer parameter needs ${{{{...}}}}"
    );
}

#[test]
fn openshift_template_holds_the_same_objects_as_the_base() {
    let base = base();
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
            "Service" | "NetworkPolicy" => {
                assert_eq!(b.value["spec"], t.value["spec"], "{}", b.at())
            }
            "Deployment" => {
                let bs = &b.value["spec"]["template"]["spec"];
                let ts = &t.value["spec"]["template"]["spec"];
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
        let router = find_rendered(docs, "Deployment", "maas-router");
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
        if d["kind"].as_str() == Some("Deployment") {
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
    let router = find_rendered(&file_mode, "Deployment", "maas-router");
    let spec = &router["spec"]["template"]["spec"];
    assert_eq!(seq(&spec["containers"]).len(), 2, "router and router-agent");
    let volumes: BTreeSet<&str> = seq(&spec["volumes"])
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["addresses", "flavor", "brokers", "router-config", "tmp"] {
        assert!(volumes.contains(v), "{v} in {volumes:?}");
    }
    find_rendered(&file_mode, "ConfigMap", "maas-brokers");

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
        if d["kind"].as_str() == Some("Deployment") {
            assert_eq!(d["spec"]["replicas"].as_u64(), Some(1));
        }
    }
}
