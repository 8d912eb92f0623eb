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

/// One entity of a qdrouterd JSON configuration: (entity type, attributes).
type RouterEntity = (String, serde_json::Map<String, serde_json::Value>);

/// The entities of a qdrouterd JSON configuration file (`[["router", {...}], ["listener", {...}], ...]`, the form
/// `qdrouterd -c FILE.json` reads), in file order.
fn router_entities(json: &str) -> Vec<RouterEntity> {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("qdrouterd.json is not JSON: {e}"));
    v.as_array()
        .expect("qdrouterd.json is a list")
        .iter()
        .map(|e| {
            let pair = e.as_array().expect("[type, attributes]");
            assert_eq!(pair.len(), 2, "[type, attributes]: {e}");
            (
                pair[0].as_str().expect("entity type").to_string(),
                pair[1].as_object().expect("attributes").clone(),
            )
        })
        .collect()
}

/// A scalar attribute as text (qdrouterd takes `"port": "5672"` and `5672` alike).
fn attr(a: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    match a.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The entities of `kind` (`listener`, `vhost`, ...).
fn entities<'a>(
    conf: &'a [RouterEntity],
    kind: &str,
) -> Vec<&'a serde_json::Map<String, serde_json::Value>> {
    conf.iter()
        .filter(|(t, _)| t == kind)
        .map(|(_, a)| a)
        .collect()
}

/// Where a router id goes in `qdrouterd.json`: the router container's command replaces it with its pod name.
const ROUTER_ID_PLACEHOLDER: &str = "@POD_NAME@";

/// What the router container's command did when run for real (see [`run_router_command`]).
#[derive(Debug)]
struct RouterStart {
    /// Exit status of the command (the fake qdrouterd exits 0).
    success: bool,
    stderr: String,
    /// The arguments qdrouterd was started with (None: it was never started).
    qdrouterd_args: Option<Vec<String>>,
    /// `-c`'s file as a path INSIDE the container, and what it held.
    config: Option<(String, String)>,
    /// Files the command wrote outside the container's writable emptyDir mounts.
    written_elsewhere: Vec<String>,
}

/// Runs the router container's command (`sh -c <script>`: the stock image's shell) in a scratch directory: every
/// volume mount of the container becomes a directory there (the script's paths are mapped to it), the
/// `router-config` mount holds `qdrouterd.json` = `mounted`, and `qdrouterd` on PATH is a stand-in that records
/// its arguments. `pod_name`: the POD_NAME the downward API gives it (None: unset). None when `sh` cannot run.
fn run_router_command(
    workload: &Doc,
    mounted: &str,
    pod_name: Option<&str>,
) -> Option<RouterStart> {
    let spec = &workload.value["spec"]["template"]["spec"];
    let qdr = container(spec, "router");
    let command = seq_strs(&qdr["command"]);
    assert!(
        command.len() == 3 && command[..2] == ["sh", "-c"],
        "{}: the router container runs `sh -c <script>` (renders its id, then execs qdrouterd): {command:?}",
        workload.at()
    );
    assert!(
        seq(&qdr["args"]).is_empty(),
        "{}: no args besides the command",
        workload.at()
    );
    let scratch = tempfile::tempdir().unwrap();
    // Container path -> scratch directory, longest paths first (a mount inside another one maps first).
    let mut mounts: Vec<(String, PathBuf, bool)> = Vec::new();
    for m in seq(&qdr["volumeMounts"]) {
        let name = m["name"].as_str().unwrap();
        let path = m["mountPath"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let volume = seq(&spec["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no volume {name}", workload.at()));
        let writable = !volume["emptyDir"].is_null() && !m["readOnly"].as_bool().unwrap_or(false);
        let dir = scratch.path().join("mounts").join(name);
        fs::create_dir_all(&dir).unwrap();
        if name == "router-config" {
            fs::write(dir.join("qdrouterd.json"), mounted).unwrap();
        }
        mounts.push((path, dir, writable));
    }
    mounts.sort_by_key(|(path, _, _)| std::cmp::Reverse(path.len()));
    // One pass over the script: a mount path (followed by `/`) where a path starts is replaced by its directory.
    let text = command[2];
    let mut script = String::new();
    let mut i = 0;
    while i < text.len() {
        let starts_path =
            i == 0 || !text[..i].ends_with(|c: char| c.is_alphanumeric() || "/._-".contains(c));
        let hit = mounts
            .iter()
            .find(|(path, _, _)| starts_path && text[i..].starts_with(&format!("{path}/")));
        match hit {
            Some((path, dir, _)) => {
                script.push_str(&dir.display().to_string());
                i += path.len();
            }
            None => {
                let c = text[i..].chars().next().unwrap();
                script.push(c);
                i += c.len_utf8();
            }
        }
    }
    let bin = scratch.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let record = scratch.path().join("qdrouterd-args");
    let fake = bin.join("qdrouterd");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
            record.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let before = files_under(&scratch.path().join("mounts"));
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
    if let Some(p) = pod_name {
        c.env("POD_NAME", p);
    }
    let out = c.output().ok()?;
    let qdrouterd_args: Option<Vec<String>> = fs::read_to_string(&record)
        .ok()
        .map(|t| t.lines().map(str::to_string).collect());
    // The container path of a scratch path.
    let in_container = |p: &Path| -> Option<String> {
        mounts.iter().find_map(|(path, dir, _)| {
            p.strip_prefix(dir)
                .ok()
                .map(|rest| format!("{path}/{}", rest.display()))
        })
    };
    let config = qdrouterd_args.as_ref().and_then(|a| {
        let at = a.iter().position(|x| x == "-c")?;
        let file = PathBuf::from(a.get(at + 1)?);
        Some((in_container(&file)?, fs::read_to_string(&file).ok()?))
    });
    // The arguments as the container sees them (scratch paths mapped back).
    let qdrouterd_args = qdrouterd_args.map(|a| {
        a.into_iter()
            .map(|x| in_container(Path::new(&x)).unwrap_or(x))
            .collect()
    });
    let written_elsewhere = files_under(&scratch.path().join("mounts"))
        .into_iter()
        .filter(|f| !before.contains(f))
        .filter(|f| {
            !mounts
                .iter()
                .any(|(_, dir, writable)| *writable && f.starts_with(dir))
        })
        .map(|f| in_container(&f).unwrap_or_else(|| f.display().to_string()))
        .collect();
    Some(RouterStart {
        success: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        qdrouterd_args,
        config,
        written_elsewhere,
    })
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p);
            }
        }
    }
    out
}

/// The router container of `workload` starts qdrouterd with its mounted `qdrouterd.json` (`conf`), the router id
/// placeholder replaced by POD_NAME (from the downward API: the pod name), rendered on a writable emptyDir: run for
/// real with two pod names, and without POD_NAME (it must refuse to start, not start with a random id).
fn check_router_start(workload: &Doc, conf: &str) {
    let spec = &workload.value["spec"]["template"]["spec"];
    let qdr = container(spec, "router");
    assert_eq!(
        env_field_ref(qdr, "POD_NAME"),
        Some("metadata.name"),
        "{}: the router container's POD_NAME from fieldRef metadata.name (its router id)",
        workload.at()
    );
    assert_eq!(
        qdr["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{}",
        workload.at()
    );
    for pod in ["maas-router-0", "maas-router-edge-7d9f-abcde.x"] {
        let Some(run) = run_router_command(workload, conf, Some(pod)) else {
            return cannot_run("router start (check_router_start)", "sh cannot be run");
        };
        assert!(run.success, "{}: {run:?}", workload.at());
        let (path, rendered) = run.config.clone().unwrap_or_else(|| {
            panic!(
                "{}: qdrouterd was not started with `-c <file on a mount>`: {run:?}",
                workload.at()
            )
        });
        assert_eq!(
            run.qdrouterd_args.as_deref().unwrap(),
            ["-c".to_string(), path.clone()],
            "{}: qdrouterd runs the rendered file, nothing else",
            workload.at()
        );
        assert!(
            run.written_elsewhere.is_empty(),
            "{}: wrote outside its writable emptyDir mounts: {:?}",
            workload.at(),
            run.written_elsewhere
        );
        let writable_mount = seq(&qdr["volumeMounts"]).iter().any(|m| {
            let mp = m["mountPath"].as_str().unwrap().trim_end_matches('/');
            path.starts_with(&format!("{mp}/"))
                && !m["readOnly"].as_bool().unwrap_or(false)
                && seq(&spec["volumes"])
                    .iter()
                    .any(|v| v["name"] == m["name"] && !v["emptyDir"].is_null())
        });
        assert!(
            writable_mount,
            "{}: the rendered {path} is on no writable emptyDir",
            workload.at()
        );
        assert_eq!(
            rendered,
            conf.replace(ROUTER_ID_PLACEHOLDER, pod),
            "{}: only the router id changes",
            workload.at()
        );
        let rendered_conf = router_entities(&rendered);
        let routers = entities(&rendered_conf, "router");
        assert_eq!(
            attr(routers[0], "id").as_deref(),
            Some(pod),
            "{}",
            workload.at()
        );
    }
    let Some(run) = run_router_command(workload, conf, None) else {
        return cannot_run("router start (check_router_start)", "sh cannot be run");
    };
    assert!(
        !run.success && run.qdrouterd_args.is_none() && run.stderr.contains("POD_NAME"),
        "{}: without POD_NAME the router must not start (it would get a random id): {run:?}",
        workload.at()
    );
}

/// The router configuration of a router workload: the ConfigMap mounted as `router-config`, key
/// `qdrouterd.json`, checked to be the file the router container runs with (rendered with the pod name as router
/// id, [`check_router_start`]).
fn router_config(docs: &[Doc], workload: &Doc) -> Vec<RouterEntity> {
    let spec = &workload.value["spec"]["template"]["spec"];
    let qdr = container(spec, "router");
    let cm = seq(&spec["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some("router-config"))
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap_or_else(|| panic!("{}: no router-config ConfigMap volume", workload.at()));
    assert!(
        seq(&qdr["volumeMounts"])
            .iter()
            .any(|m| m["name"].as_str() == Some("router-config")),
        "{}: router config mounted",
        workload.at()
    );
    let data = &find(docs, "ConfigMap", cm).value["data"];
    assert!(
        data["qdrouterd.conf"].is_null(),
        "{cm}: a leftover qdrouterd.conf (the router reads qdrouterd.json)"
    );
    let conf = data["qdrouterd.json"]
        .as_str()
        .unwrap_or_else(|| panic!("{cm}: no qdrouterd.json"));
    assert!(
        !conf.contains("${"),
        "qdrouterd.json must not depend on variable substitution"
    );
    // qdrouterd's JSON reader drops everything after a `#` on each line (its comment syntax).
    assert!(
        !conf.contains('#'),
        "qdrouterd.json: `#` would be read as a comment"
    );
    let entities = router_entities(conf);
    // The router id: the placeholder the container's command replaces with the pod name (durable subscription
    // queues made through a router carry its id, docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt
    // §1; without one qdrouterd picks a random id at every start).
    let routers: Vec<_> = entities.iter().filter(|(t, _)| t == "router").collect();
    assert_eq!(routers.len(), 1, "{cm}");
    assert_eq!(
        attr(&routers[0].1, "id").as_deref(),
        Some(ROUTER_ID_PLACEHOLDER),
        "{cm}: the router id is the pod name"
    );
    assert_eq!(conf.matches(ROUTER_ID_PLACEHOLDER).count(), 1, "{cm}");
    check_router_start(workload, conf);
    entities
}

/// The `$default` group settings of vhost `name`.
/// Every user group of vhost `name`.
fn vhost_groups<'a>(
    conf: &'a [RouterEntity],
    name: &str,
) -> &'a serde_json::Map<String, serde_json::Value> {
    entities(conf, "vhost")
        .into_iter()
        .find(|v| attr(v, "hostname").as_deref() == Some(name))
        .and_then(|v| v["groups"].as_object())
        .unwrap_or_else(|| panic!("no vhost {name} with groups"))
}

fn vhost_group<'a>(
    conf: &'a [RouterEntity],
    name: &str,
) -> &'a serde_json::Map<String, serde_json::Value> {
    let vhost = entities(conf, "vhost")
        .into_iter()
        .find(|v| attr(v, "hostname").as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no vhost {name}"));
    assert_eq!(attr(vhost, "allowUnknownUser").as_deref(), Some("true"));
    vhost["groups"]["$default"]
        .as_object()
        .unwrap_or_else(|| panic!("vhost {name}: no $default group"))
}

/// "Only the agent reaches $management" (docs/architecture.md §7; the policy seen working in
/// docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §5), for an interior or edge router workload:
/// vhost policy on, the client listener (the `amqp` container port) in vhost `clients` whose targets refuse
/// `$management`, the agent's own listener on 127.0.0.1 in vhost `agent`, and the agent's ROUTER_URL on it.
fn check_router_policy(workload: &Doc, conf: &[RouterEntity]) {
    use maas_e2e::router::policy::{
        GroupPolicy, SUBCTRL, SUBSCRIPTION_SERVICE_USER, allowed, clients_sources, clients_targets,
    };
    let at = workload.at();
    let spec = &workload.value["spec"]["template"]["spec"];
    let policies = entities(conf, "policy");
    assert_eq!(policies.len(), 1, "{at}");
    assert_eq!(
        attr(policies[0], "enableVhostPolicy").as_deref(),
        Some("true"),
        "{at}"
    );
    assert_eq!(
        attr(policies[0], "defaultVhost").as_deref(),
        Some("clients"),
        "{at}: a connection naming no known vhost gets the clients' rules"
    );
    let clients = vhost_group(conf, "clients");
    let targets = attr(clients, "targets").unwrap_or_default();
    assert_eq!(
        targets,
        clients_targets(),
        "{at}: the recorded targets and $subctrl"
    );
    // Clients send requests to the subscription-service's API `$subctrl` (an exact entry: nothing else that starts
    // with `$` is admitted by it).
    assert!(
        allowed(&targets, SUBCTRL),
        "{at}: clients may not send to $subctrl"
    );
    for denied in ["$subctrl2", "$subctr", "$management2"] {
        assert!(
            !allowed(&targets, denied),
            "{at}: clients may send to {denied}"
        );
    }
    // (Not refused: the `amqp:/` forms such as `amqp:/_topo/0/<router id>/$management` start with a letter;
    // manifests/README.md "Security notes".)
    for denied in ["$management", "/$management", "_local/$management"] {
        assert!(
            !allowed(&targets, denied),
            "{at}: clients may send to {denied}"
        );
    }
    for ok in [
        "orders",
        "Orders",
        "9lives",
        "amqp:/_topo/0/Router.A/temp.x",
    ] {
        assert!(allowed(&targets, ok), "{at}: clients may not send to {ok}");
    }
    // Receivers: addresses starting with a letter or digit (and dynamic reply-to addresses), never `$subctrl`: no
    // client takes the requests meant for the subscription-service.
    let sources = attr(clients, "sources").unwrap_or_default();
    assert_eq!(sources, clients_sources(), "{at}");
    for denied in [SUBCTRL, "$management"] {
        assert!(
            !allowed(&sources, denied),
            "{at}: clients may receive from {denied}"
        );
    }
    assert!(allowed(&sources, "orders"), "{at}");
    assert_eq!(attr(clients, "remoteHosts").as_deref(), Some("*"), "{at}");
    // The subscription-service's own group: its user receives `$subctrl` (only), and sends its `list` replies to
    // reply-to addresses.
    let service = vhost_groups(conf, "clients")
        .get("subscription-service")
        .and_then(serde_json::Value::as_object)
        .unwrap_or_else(|| panic!("{at}: no group subscription-service in vhost clients"));
    assert_eq!(
        attr(service, "users").as_deref(),
        Some(SUBSCRIPTION_SERVICE_USER),
        "{at}"
    );
    let want = GroupPolicy::subscription_service();
    assert_eq!(attr(service, "sources"), Some(want.sources), "{at}");
    assert_eq!(attr(service, "targets"), Some(want.targets), "{at}");
    assert_eq!(
        attr(service, "allowDynamicSource").as_deref(),
        Some("false"),
        "{at}"
    );
    assert_eq!(attr(service, "remoteHosts").as_deref(), Some("*"), "{at}");
    assert_eq!(
        attr(clients, "allowDynamicSource").as_deref(),
        Some("true"),
        "{at}"
    );
    assert_eq!(
        attr(clients, "allowAnonymousSender").as_deref(),
        Some("false"),
        "{at}: an anonymous sender could address $management message by message"
    );
    let agent = vhost_group(conf, "agent");
    assert_eq!(
        attr(agent, "remoteHosts").as_deref(),
        Some("127.0.0.1"),
        "{at}"
    );
    assert!(allowed(
        &attr(agent, "targets").unwrap_or_default(),
        "$management"
    ));

    // Every listener that names a vhost names a defined one.
    let vhosts: BTreeSet<String> = entities(conf, "vhost")
        .iter()
        .filter_map(|v| attr(v, "hostname"))
        .collect();
    let listeners = entities(conf, "listener");
    for l in &listeners {
        if let Some(v) = attr(l, "policyVhost") {
            assert!(vhosts.contains(&v), "{at}: listener names vhost {v}");
        }
    }
    // The client listener: on the `amqp` container port, every address, vhost clients.
    let amqp_port = named_port(spec, "amqp").expect("port named amqp");
    let normal: Vec<_> = listeners
        .iter()
        .filter(|l| attr(l, "role").as_deref().unwrap_or("normal") == "normal")
        .collect();
    assert_eq!(normal.len(), 2, "{at}: client and agent listeners");
    let client = normal
        .iter()
        .find(|l| attr(l, "port").and_then(|p| p.parse::<u64>().ok()) == Some(amqp_port))
        .unwrap_or_else(|| panic!("{at}: no listener on the amqp port {amqp_port}"));
    assert_eq!(attr(client, "host").as_deref(), Some("0.0.0.0"), "{at}");
    assert_eq!(
        attr(client, "policyVhost").as_deref(),
        Some("clients"),
        "{at}: the client listener must name vhost clients"
    );
    // The agent's listener: loopback only, not a container port, vhost agent; the agent dials exactly it.
    let agent_listener = normal
        .iter()
        .find(|l| attr(l, "policyVhost").as_deref() == Some("agent"))
        .unwrap_or_else(|| panic!("{at}: no listener in vhost agent"));
    assert_eq!(
        attr(agent_listener, "host").as_deref(),
        Some("127.0.0.1"),
        "{at}: the agent's listener must be reachable only inside the pod"
    );
    let agent_port: u64 = attr(agent_listener, "port").unwrap().parse().unwrap();
    assert_ne!(agent_port, amqp_port, "{at}");
    for c in seq(&spec["containers"]) {
        for p in seq(&c["ports"]) {
            assert_ne!(
                p["containerPort"].as_u64(),
                Some(agent_port),
                "{at}: the agent's port is published"
            );
        }
    }
    let agent_env = env(container(spec, "router-agent"));
    assert_eq!(
        agent_env.get("ROUTER_URL"),
        Some(&Some(format!("amqp://127.0.0.1:{agent_port}"))),
        "{at}: the agent must dial its own listener"
    );
}

/// The Secret (and key) a router container reads `path` from: a Secret volume mounted (whole, read-only, mode
/// 0440-like, see [`secret_mount_dir`]) at the file's directory, and the Secret in `docs` with that key.
fn mounted_secret_file<'a>(
    docs: &'a [Doc],
    workload: &Doc,
    container_name: &str,
    path: &str,
) -> (&'a Doc, String) {
    let at = workload.at();
    let spec = &workload.value["spec"]["template"]["spec"];
    let c = container(spec, container_name);
    let (dir, key) = path
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{at}: {path} is no absolute file path"));
    let secret = seq(&spec["volumes"])
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .find(|name| secret_mount_dir(spec, c, name).as_deref() == Some(dir))
        .unwrap_or_else(|| {
            panic!("{at}: no Secret mounted at {dir} in container {container_name}")
        });
    let doc = find(docs, "Secret", secret);
    assert!(
        !doc.value["data"][key].is_null() || !doc.value["stringData"][key].is_null(),
        "{}: no key {key} (read as {path} by {at})",
        doc.at()
    );
    (doc, key.to_string())
}

/// "The client listener authenticates clients" (docs/architecture.md §7, manifests/README.md "Client
/// authentication"), for an interior or edge router workload: the `amqp` listener requires authentication with
/// mechanisms that are not ANONYMOUS; PLAIN needs Cyrus SASL's configuration (the router's saslConfigDir /
/// saslConfigName, a file of the mounted router ConfigMap) naming a sasldb that is a key of a Secret mounted into
/// the router container only; EXTERNAL (or any sslProfile) needs the sslProfile and its files from a mounted
/// Secret. Every group of the `clients` vhost (the one authenticated users fall into) still refuses `$management`.
fn check_client_authentication(docs: &[Doc], workload: &Doc, conf: &[RouterEntity]) {
    use maas_e2e::router::policy::allowed;
    let at = workload.at();
    let spec = &workload.value["spec"]["template"]["spec"];
    let amqp_port = named_port(spec, "amqp").expect("port named amqp");
    let client = entities(conf, "listener")
        .into_iter()
        .find(|l| attr(l, "port").and_then(|p| p.parse::<u64>().ok()) == Some(amqp_port))
        .unwrap_or_else(|| panic!("{at}: no client listener"));
    assert_eq!(
        attr(client, "authenticatePeer").as_deref(),
        Some("true"),
        "{at}: the client listener must authenticate clients"
    );
    let mechanisms: Vec<String> = attr(client, "saslMechanisms")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_uppercase)
        .collect();
    assert!(
        !mechanisms.is_empty(),
        "{at}: the client listener names no SASL mechanism (it would offer all)"
    );
    assert!(
        !mechanisms.iter().any(|m| m == "ANONYMOUS"),
        "{at}: the client listener accepts ANONYMOUS: {mechanisms:?}"
    );
    for m in &mechanisms {
        assert!(
            ["PLAIN", "EXTERNAL"].contains(&m.as_str()),
            "{at}: mechanism {m} is not provided for"
        );
    }
    // The unauthenticated listeners stay where they were: the agent's (loopback) and the mesh ports (the
    // NetworkPolicy admits only router pods there).
    for l in entities(conf, "listener") {
        if attr(l, "authenticatePeer").as_deref() != Some("true") {
            let loopback = attr(l, "host").as_deref() == Some("127.0.0.1");
            let mesh = matches!(attr(l, "role").as_deref(), Some("inter-router" | "edge"));
            assert!(
                loopback || mesh,
                "{at}: an unauthenticated listener for clients: {l:?}"
            );
        }
    }
    if mechanisms.iter().any(|m| m == "PLAIN") {
        let router = entities(conf, "router")[0];
        let dir = attr(router, "saslConfigDir")
            .unwrap_or_else(|| panic!("{at}: PLAIN needs the router's saslConfigDir (Cyrus SASL)"));
        let name = attr(router, "saslConfigName").unwrap_or_else(|| "qdrouterd".to_string());
        // The directory is the router-config mount, and the file a key of that ConfigMap.
        let qdr = container(spec, "router");
        let mount = seq(&qdr["volumeMounts"])
            .iter()
            .find(|m| m["name"].as_str() == Some("router-config"))
            .unwrap();
        assert_eq!(
            mount["mountPath"].as_str().map(|p| p.trim_end_matches('/')),
            Some(dir.as_str()),
            "{at}"
        );
        let cm = seq(&spec["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some("router-config"))
            .and_then(|v| v["configMap"]["name"].as_str())
            .unwrap();
        let sasl_conf = find(docs, "ConfigMap", cm).value["data"][format!("{name}.conf").as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("{cm}: no {name}.conf for Cyrus SASL"))
            .to_string();
        let options: BTreeMap<&str, &str> = sasl_conf
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| {
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{cm} {name}.conf: {l}"));
                (k.trim(), v.trim())
            })
            .collect();
        let mech_list: Vec<&str> = options
            .get("mech_list")
            .copied()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        for m in &mechanisms {
            assert!(
                mech_list.contains(&m.as_str()),
                "{cm}: mech_list {mech_list:?} lacks the client listener's {m}"
            );
        }
        // The agent's (and the mesh's) listeners stay ANONYMOUS: the mech_list is the whole router's.
        assert!(
            mech_list.contains(&"ANONYMOUS"),
            "{cm}: the agent's listener needs ANONYMOUS: {mech_list:?}"
        );
        assert_eq!(
            options.get("pwcheck_method").copied(),
            Some("auxprop"),
            "{cm}"
        );
        assert_eq!(
            options.get("auxprop_plugin").copied(),
            Some("sasldb"),
            "{cm}"
        );
        let sasldb = options
            .get("sasldb_path")
            .unwrap_or_else(|| panic!("{cm}: no sasldb_path"));
        let (secret, _) = mounted_secret_file(docs, workload, "router", sasldb);
        // The user database is the router's alone: the agent does not get it.
        let agent = container(spec, "router-agent");
        assert!(
            secret_mount_dir(spec, agent, secret.name()).is_none(),
            "{at}: the router-agent mounts {}",
            secret.name()
        );
        // No password of it in the ConfigMap, the router configuration or an env var.
        assert!(!sasl_conf.contains("password"), "{cm}: {sasl_conf}");
        for c in seq(&spec["containers"]) {
            for e in seq(&c["env"]) {
                assert_ne!(
                    e["valueFrom"]["secretKeyRef"]["name"].as_str(),
                    Some(secret.name()),
                    "{at}"
                );
            }
        }
    }
    if let Some(profile) = attr(client, "sslProfile") {
        let p = entities(conf, "sslProfile")
            .into_iter()
            .find(|p| attr(p, "name").as_deref() == Some(profile.as_str()))
            .unwrap_or_else(|| panic!("{at}: no sslProfile {profile}"));
        for key in ["certFile", "privateKeyFile", "caCertFile"] {
            let path =
                attr(p, key).unwrap_or_else(|| panic!("{at}: sslProfile {profile} has no {key}"));
            mounted_secret_file(docs, workload, "router", &path);
        }
        assert_eq!(attr(client, "requireSsl").as_deref(), Some("true"), "{at}");
    } else {
        assert!(
            !mechanisms.iter().any(|m| m == "EXTERNAL"),
            "{at}: EXTERNAL without an sslProfile (client certificates)"
        );
    }
    // Authenticated users are unknown users of the policy (no `users` lists): every group of vhost `clients`
    // refuses $management, so a login changes nothing about it.
    let clients = entities(conf, "vhost")
        .into_iter()
        .find(|v| attr(v, "hostname").as_deref() == Some("clients"))
        .unwrap();
    let groups = clients["groups"].as_object().expect("groups");
    assert!(groups.contains_key("$default"), "{at}");
    for (name, g) in groups {
        let g = g.as_object().unwrap();
        let targets = attr(g, "targets").unwrap_or_default();
        for denied in ["$management", "_local/$management"] {
            assert!(
                !allowed(&targets, denied),
                "{at}: group {name} may send to {denied}"
            );
        }
        assert_ne!(
            attr(g, "allowAnonymousSender").as_deref(),
            Some("true"),
            "{at}: group {name}"
        );
    }
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
    // The sidecar dials its own router over the pod's loopback (on the router's agent listener: checked with the
    // router configuration in check_router_policy), and serves HTTP where the probes look.
    assert_eq!(
        e.get("ROUTER_URL"),
        Some(&Some("amqp://127.0.0.1:5673".to_string())),
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

    // qdrouterd.json: interior, the client and agent listeners with their policy, and one listener per mesh role
    // on the container port of the name the agents look for.
    let conf = router_config(docs, router);
    let routers = entities(&conf, "router");
    assert_eq!(routers.len(), 1);
    assert_eq!(attr(routers[0], "mode").as_deref(), Some("interior"));
    // Each pod's own name (router_config ran the command); never a literal shared by every pod.
    assert_eq!(
        attr(routers[0], "id").as_deref(),
        Some(ROUTER_ID_PLACEHOLDER)
    );
    check_router_policy(router, &conf);
    check_client_authentication(docs, router, &conf);
    for (role, port_name) in [
        ("inter-router", maas_model::mesh::INTER_ROUTER_PORT_NAME),
        ("edge", maas_model::mesh::EDGE_PORT_NAME),
    ] {
        let listeners: Vec<_> = entities(&conf, "listener")
            .into_iter()
            .filter(|a| attr(a, "role").as_deref() == Some(role))
            .collect();
        assert_eq!(listeners.len(), 1, "{}: {role} listeners", router.at());
        let port = named_port(spec, port_name)
            .unwrap_or_else(|| panic!("{}: no container port named {port_name}", router.at()));
        assert_eq!(
            attr(listeners[0], "port").and_then(|p| p.parse::<u64>().ok()),
            Some(port),
            "{}: the {role} listener is not on the port named {port_name}",
            router.at()
        );
    }
    // Vhost policy applies to every listener connection but inter-router ones (qdrouterd src/policy.c): the edge
    // listener needs a vhost that lets an edge uplink attach anonymous senders and `$`/`_` addresses (the default
    // vhost, clients, would refuse them).
    let edge_listener = entities(&conf, "listener")
        .into_iter()
        .find(|a| attr(a, "role").as_deref() == Some("edge"))
        .unwrap();
    let edge_vhost = attr(edge_listener, "policyVhost")
        .unwrap_or_else(|| panic!("{}: the edge listener names no vhost", router.at()));
    let edge_group = vhost_group(&conf, &edge_vhost);
    assert_eq!(attr(edge_group, "targets").as_deref(), Some("*"));
    assert_eq!(attr(edge_group, "sources").as_deref(), Some("*"));
    assert_eq!(
        attr(edge_group, "allowAnonymousSender").as_deref(),
        Some("true")
    );
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
            current_uplink: None,
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
    let conf = router_config(docs, edge);
    let routers = entities(&conf, "router");
    assert_eq!(routers.len(), 1);
    assert_eq!(attr(routers[0], "mode").as_deref(), Some("edge"));
    assert_eq!(
        attr(routers[0], "id").as_deref(),
        Some(ROUTER_ID_PLACEHOLDER)
    );
    // Only the client and agent listeners (both `normal`).
    let listeners = entities(&conf, "listener");
    assert_eq!(listeners.len(), 2, "{}: {listeners:?}", edge.at());
    assert!(
        listeners
            .iter()
            .all(|l| attr(l, "role").as_deref().unwrap_or("normal") == "normal"),
        "{}: {listeners:?}",
        edge.at()
    );
    check_router_policy(edge, &conf);
    check_client_authentication(docs, edge, &conf);
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
        current_uplink: None,
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
    // OpenShift's restricted SCC assigns the UID: the Template must not pin one (nor a group).
    for (d, spec) in workloads(&template().1) {
        for key in ["runAsUser", "runAsGroup", "fsGroup"] {
            assert!(
                spec["securityContext"][key].is_null(),
                "{}: {key} in the Template",
                d.at()
            );
            for c in seq(&spec["containers"]) {
                assert!(c["securityContext"][key].is_null(), "{}: {key}", d.at());
            }
        }
    }
}

/// The broker pods storage-controller makes under the Template: OpenShift's restricted-v2 SCC refuses a fixed UID
/// outside the project's range, so the Template runs the storage-controller with `BROKER_RUN_AS_USER=auto` (a
/// parameter) and the broker StatefulSets it renders then set no runAsUser/fsGroup (still runAsNonRoot). The base
/// keeps the stock image's user 185 (the flag's default).
#[test]
fn openshift_broker_pods_leave_the_user_to_the_scc() {
    use storage_controller::clusters::BrokerRunAsUser;
    let (t, objects) = template();
    let param = seq(&t["parameters"])
        .iter()
        .find(|p| p["name"].as_str() == Some("BROKER_RUN_AS_USER"))
        .expect("parameter BROKER_RUN_AS_USER");
    let default = param["value"].as_str().expect("a default");
    assert_eq!(
        storage_controller::args::parse_run_as_user(default),
        Ok(BrokerRunAsUser::Auto)
    );
    let sc = find(&objects, "Deployment", "maas-storage-controller");
    let c = container(&sc.value["spec"]["template"]["spec"], "storage-controller");
    assert_eq!(
        env(c).get("BROKER_RUN_AS_USER"),
        Some(&Some("${BROKER_RUN_AS_USER}".to_string())),
        "{}",
        sc.at()
    );
    // It is the env var of the run flag --broker-run-as-user.
    let run = storage_controller::args::Cli::command();
    let run = run.find_subcommand("run").unwrap();
    assert!(
        run.get_arguments()
            .any(|a| a.get_long() == Some("broker-run-as-user")
                && a.get_env().and_then(|e| e.to_str()) == Some("BROKER_RUN_AS_USER")),
        "storage-controller run has no --broker-run-as-user [env: BROKER_RUN_AS_USER]"
    );
    // The base leaves it at the default: the image's user.
    let base = base();
    let base_sc = find_workload(&base, "maas-storage-controller");
    let bc = container(
        &base_sc.value["spec"]["template"]["spec"],
        "storage-controller",
    );
    assert!(!env(bc).contains_key("BROKER_RUN_AS_USER"));

    // What the controller renders either way.
    let dir = tempfile::tempdir().unwrap();
    render_brokers_with(dir.path(), &["--broker-run-as-user", default]);
    let auto = rendered_objects(dir.path());
    let fixed = rendered_brokers();
    for (objects, uid) in [(&auto, None), (&fixed, Some(185))] {
        let sts: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some("StatefulSet"))
            .collect();
        assert!(!sts.is_empty());
        for o in sts {
            let psc = &o["spec"]["template"]["spec"]["securityContext"];
            assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true), "{psc:?}");
            assert_eq!(psc["runAsUser"].as_u64(), uid, "{psc:?}");
            assert_eq!(psc["fsGroup"].as_u64(), uid, "{psc:?}");
            assert!(psc["runAsGroup"].is_null(), "{psc:?}");
            let c = &o["spec"]["template"]["spec"]["containers"][0]["securityContext"];
            assert!(c["runAsUser"].is_null(), "{c:?}");
        }
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
        // (The broker pods are not in the manifests: storage-controller renders them at run time.)
        let brokers = rendered_broker_pod_labels();
        for d in docs.iter().filter(|d| d.kind() == "NetworkPolicy") {
            let selector = &d.value["spec"]["podSelector"]["matchLabels"];
            assert!(
                wl.iter().any(|(w, _)| selects(selector, &pod_labels(w)))
                    || brokers.iter().any(|b| selects(selector, b)),
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
        // What each Role grants is derived from the code's Kubernetes API calls and compared in
        // e2e/tests/rbac.rs (a copied verb list here once asserted the wrong rule set: no PATCH on pods, so every
        // drain failed with 403).
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
            ("maas-subscription-service", vec!["run", "--kube"]),
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
                    // The Template's storage-controller also leaves the broker pods' user to the SCC
                    // (BROKER_RUN_AS_USER, a parameter; the base keeps the default, the image's user 185).
                    let t_env: Vec<&Value> = seq(&tc["env"])
                        .iter()
                        .filter(|e| e["name"].as_str() != Some("BROKER_RUN_AS_USER"))
                        .collect();
                    assert_eq!(
                        env(bc).keys().map(String::as_str).collect::<Vec<_>>(),
                        t_env
                            .iter()
                            .filter_map(|e| e["name"].as_str())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>(),
                        "{} env",
                        b.at()
                    );
                    // Same values, except where the Template takes a parameter (LOG_FORMAT).
                    for (be, te) in seq(&bc["env"]).iter().zip(t_env) {
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

/// The workspace crates with a binary (`agents/*/src/main.rs`): one image each.
fn binaries() -> BTreeSet<String> {
    fs::read_dir(repo_root().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src/main.rs").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The `version` of `[workspace.package]` in the root Cargo.toml: images are tagged `v<version>`.
fn workspace_version() -> String {
    let text = fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && line.starts_with("version") {
            return line.split('"').nth(1).unwrap().to_string();
        }
    }
    panic!("no [workspace.package] version")
}

/// `image@sha256:<64 lowercase hex>`, not a made-up all-zero digest.
fn pinned_by_digest(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(_, hex)| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            && hex.chars().any(|c| c != '0')
    })
}

/// The instructions of a Dockerfile: comments dropped, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
        } else {
            current.push_str(t);
            out.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "Dockerfile ends with a continuation");
    out
}

#[test]
fn dockerfiles_build_from_the_repository_pinned_multi_stage_and_non_root() {
    let bins = binaries();
    let image_dirs: BTreeSet<String> = fs::read_dir(repo_root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(image_dirs, bins, "one images/<bin>/Dockerfile per binary");
    let readme = fs::read_to_string(repo_root().join("images/README.md")).unwrap();
    let mut bases: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for bin in &bins {
        let dir = repo_root().join("images").join(bin);
        let text = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        // A `# syntax=` directive fetches a frontend image at build time: only pinned, if at all.
        if let Some(syntax) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("# syntax="))
        {
            assert!(
                pinned_by_digest(syntax),
                "{bin}: unpinned # syntax={syntax}"
            );
        }
        assert!(
            !text.contains(":latest"),
            "{bin}: :latest in the Dockerfile"
        );
        let ins = dockerfile_instructions(&text);
        // Stages: FROM [--platform=...] image [AS name].
        let mut stages: Vec<(String, Option<String>)> = Vec::new();
        for i in ins.iter().filter(|i| i.starts_with("FROM ")) {
            let words: Vec<&str> = i
                .split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("--"))
                .collect();
            let image = words[0].to_string();
            let name = (words.len() == 3 && words[1].eq_ignore_ascii_case("AS"))
                .then(|| words[2].to_string());
            let earlier_stage = stages.iter().any(|(_, n)| n.as_deref() == Some(&image));
            assert!(
                earlier_stage || pinned_by_digest(&image),
                "{bin}: FROM {image} is not pinned by a sha256 digest"
            );
            assert!(!image.contains('$'), "{bin}: FROM through a build arg");
            stages.push((image, name));
        }
        assert!(
            stages.len() >= 2,
            "{bin}: multi-stage (build, then runtime)"
        );
        for (i, (image, _)) in stages.iter().enumerate() {
            bases.entry(i).or_default().insert(image.clone());
            let digest = image.split_once('@').unwrap().1;
            assert!(
                readme.contains(digest),
                "{bin}: images/README.md does not document {image}"
            );
        }
        // The build stage compiles this binary from the locked workspace.
        let build_stage = stages[0].1.clone().expect("the build stage is named");
        let build = ins
            .iter()
            .find(|i| i.starts_with("RUN ") && i.contains("cargo build"))
            .unwrap_or_else(|| panic!("{bin}: no RUN cargo build"));
        for flag in ["--locked", "--release", &format!("-p {bin}")] {
            assert!(build.contains(flag), "{bin}: cargo build without {flag}");
        }
        // The runtime stage: distroless, only the binary, a numeric non-root user, the binary as entrypoint.
        let runtime_at = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
        let runtime = &ins[runtime_at..];
        assert!(
            stages.last().unwrap().0.starts_with("gcr.io/distroless/"),
            "{bin}: runtime base {}",
            stages.last().unwrap().0
        );
        assert!(
            runtime.iter().any(|i| i.starts_with("COPY ")
                && i.contains(&format!("--from={build_stage}"))
                && i.ends_with(&format!("/usr/local/bin/{bin}"))),
            "{bin}: COPY --from={build_stage} ... /usr/local/bin/{bin}"
        );
        let user = runtime
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{bin}: no USER in the runtime stage"));
        for id in user.split(':') {
            let id: u32 = id
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{bin}: USER {user} must be numeric for runAsNonRoot"));
            assert_ne!(id, 0, "{bin}: USER {user} is root");
        }
        assert_eq!(
            runtime.iter().find(|i| i.starts_with("ENTRYPOINT ")),
            Some(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")),
            "{bin}: ENTRYPOINT"
        );
        // The context: the workspace sources only.
        let ignore = fs::read_to_string(dir.join("Dockerfile.dockerignore")).unwrap();
        let lines: Vec<&str> = ignore
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            lines.first(),
            Some(&"*"),
            "{bin}: context excludes all first"
        );
        for keep in ["!Cargo.toml", "!Cargo.lock", "!agents", "!e2e"] {
            assert!(lines.contains(&keep), "{bin}: context lacks {keep}");
        }
        assert_eq!(lines.last(), Some(&"**/target"), "{bin}: target/ stays out");
    }
    // One build image and one runtime image for all: updated together.
    for (stage, images) in &bases {
        assert_eq!(images.len(), 1, "stage {stage} differs: {images:?}");
    }
    assert!(readme.contains("docker build -f \"images/$bin/Dockerfile\""));
    assert!(
        readme.contains("imagetools inspect"),
        "how to update the digests"
    );
}

#[test]
fn images_are_pinned_to_the_release_version_never_latest() {
    let tag = format!("v{}", workspace_version());
    // No `:latest` anywhere in the manifests or the deployment docs.
    for f in yaml_files(&repo_root().join("manifests"))
        .into_iter()
        .chain([
            repo_root().join("manifests/README.md"),
            repo_root().join("images/README.md"),
        ])
    {
        let text = fs::read_to_string(&f).unwrap();
        assert!(
            !text.to_ascii_lowercase().contains(":latest"),
            "{}: names a :latest image",
            rel(&f)
        );
    }
    let (t, _) = template();
    let defaults: BTreeMap<&str, &str> = seq(&t["parameters"])
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, p["value"].as_str()?)))
        .collect();
    let patches = patch_files();
    let mut seen = BTreeSet::new();
    for d in complete_objects()
        .iter()
        .chain(all_docs().iter().filter(|d| patches.contains(&d.file)))
    {
        for c in seq(&d.value["spec"]["template"]["spec"]["containers"]) {
            let Some(mut image) = c["image"].as_str() else {
                continue; // a patch that leaves the image alone
            };
            if let Some(param) = image.strip_prefix("${").and_then(|p| p.strip_suffix('}')) {
                image = defaults[param];
            }
            let (repo, version) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{}: image {image} has no tag", d.at()));
            if repo.starts_with("quay.io/maas/") {
                assert_eq!(version, tag, "{}: {image}", d.at());
                seen.insert(repo.to_string());
            } else {
                assert_eq!(
                    image,
                    "quay.io/interconnectedcloud/qdrouterd:1.19.0",
                    "{}",
                    d.at()
                );
            }
        }
    }
    for bin in [
        "router-agent",
        "config-service",
        "storage-controller",
        "subscription-service",
    ] {
        assert!(
            seen.contains(&format!("quay.io/maas/{bin}")),
            "{bin} deployed"
        );
    }
    for k in [
        "manifests/base/kustomization.yaml",
        "manifests/overlays/edge/kustomization.yaml",
    ] {
        for i in seq(&load(k)[0].value["images"]) {
            if i["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("quay.io/maas/"))
            {
                assert_eq!(i["newTag"].as_str(), Some(tag.as_str()), "{k}: {i:?}");
                assert!(
                    i["newName"].is_null() && i["digest"].is_null(),
                    "{k}: {i:?}"
                );
            }
        }
    }
}

/// A test that cannot run on this machine (a tool is missing): in CI (`CI` set, as CI sets it) that is a
/// FAILURE; elsewhere it prints SKIPPED and the test returns. scripts/test installs what these tests need.
fn cannot_run(test: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "{test} cannot run: {why}. CI must run every test: scripts/test installs what it needs"
    );
    eprintln!("SKIPPED {test}: {why} (scripts/test installs what it needs; in CI this fails)");
}

/// The kubectl to render with: $KUBECTL, else the one scripts/test installed into target/tools/bin, else PATH's.
fn kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return k.into();
    }
    let local = repo_root().join("target/tools/bin/kubectl");
    if local.is_file() {
        return local;
    }
    "kubectl".into()
}

/// `kubectl kustomize DIR` as text (kustomize built into kubectl; no cluster needed), or `None` when kubectl is
/// not installed.
fn kubectl_kustomize_text(dir: &str) -> Option<String> {
    let out = match std::process::Command::new(kubectl())
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
        "kubectl kustomize {dir} (needs kubectl >= 1.27, i.e. kustomize v5; scripts/test installs one): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// `kubectl kustomize DIR` parsed, or `None` when kubectl is not installed.
fn kubectl_kustomize(dir: &str) -> Option<Vec<Value>> {
    let text = kubectl_kustomize_text(dir)?;
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|de| Value::deserialize(de).unwrap())
            .filter(|v| !v.is_null())
            .collect(),
    )
}

/// `storage-controller render` of examples/addresses into `out`, as the deployed controller would apply it (the
/// broker Secret named by the base's storage-controller Deployment): the broker objects made at run time.
fn render_brokers(out: &Path) {
    render_brokers_with(out, &[]);
}

/// [`render_brokers`] with more `render` flags.
fn render_brokers_with(out: &Path, extra: &[&str]) {
    let base = base();
    let sc = find(&base, "Deployment", "maas-storage-controller");
    let c = container(&sc.value["spec"]["template"]["spec"], "storage-controller");
    let secret = env(c)
        .get("BROKER_SECRET")
        .cloned()
        .flatten()
        .expect("the storage-controller names the broker Secret (BROKER_SECRET)");
    let args = [
        "storage-controller".to_string(),
        "render".into(),
        "--addresses-dir".into(),
        repo_root().join("examples/addresses").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--namespace".into(),
        "maas".into(),
        "--broker-secret".into(),
        secret,
    ];
    let args = args.into_iter().chain(extra.iter().map(|a| a.to_string()));
    let cli = <storage_controller::args::Cli as clap::Parser>::try_parse_from(args).unwrap();
    let storage_controller::args::Command::Render(args) = cli.command else {
        unreachable!("parsed as render")
    };
    let n = storage_controller::commands::render(&args).unwrap();
    assert!(n > 0, "storage-controller render wrote nothing");
}

/// The objects `storage-controller render` writes for examples/addresses.
fn rendered_brokers() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    render_brokers(dir.path());
    rendered_objects(dir.path())
}

/// The objects of the YAML files in `dir` (a `storage-controller render` output).
fn rendered_objects(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = fs::read_to_string(f).unwrap();
            serde_yaml::Deserializer::from_str(&text)
                .map(|de| Value::deserialize(de).unwrap())
                .filter(|v| !v.is_null())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The pod labels of the broker StatefulSets storage-controller renders.
fn rendered_broker_pod_labels() -> Vec<BTreeMap<String, String>> {
    let out: Vec<_> = rendered_brokers()
        .iter()
        .filter(|o| o["kind"].as_str() == Some("StatefulSet"))
        .map(|o| str_map(&o["spec"]["template"]["metadata"]["labels"]))
        .collect();
    assert!(!out.is_empty(), "render made no broker StatefulSet");
    out
}

/// The Kubernetes versions every rendered object is validated against: 1.29 (the oldest the manifests target, e.g.
/// OpenShift 4.16) and the newest that kubernetes-validate 1.37.0 (pinned in scripts/test) ships.
const K8S_VERSIONS: [&str; 2] = ["1.29", "1.37"];

/// The Python that has kubernetes-validate: $MAAS_K8S_PYTHON, else scripts/test's venv, else PATH's python3.
fn validate_python() -> PathBuf {
    if let Some(p) = std::env::var_os("MAAS_K8S_PYTHON") {
        return p.into();
    }
    let venv = repo_root().join("target/tools/venv/bin/python3");
    if venv.is_file() {
        return venv;
    }
    "python3".into()
}

#[test]
fn every_rendered_object_is_valid_for_the_kubernetes_api() {
    const TEST: &str = "every_rendered_object_is_valid_for_the_kubernetes_api";
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    // The base and each overlay as kustomize renders them.
    for k in [
        "manifests/base",
        "manifests/overlays/dev",
        "manifests/overlays/edge",
        "manifests/overlays/file-mode",
    ] {
        let Some(text) = kubectl_kustomize_text(k) else {
            return cannot_run(
                TEST,
                "kubectl is not installed (kubectl kustomize renders the overlays)",
            );
        };
        let path = dir.path().join(format!("{}.yaml", k.replace('/', "_")));
        fs::write(&path, text).unwrap();
        inputs.push(format!("{k}={}", path.display()));
    }
    // The broker objects storage-controller applies at run time: as the base runs it, and as the Template does
    // (broker pods without runAsUser/fsGroup).
    let render = dir.path().join("render");
    render_brokers(&render);
    let render_auto = dir.path().join("render-auto");
    render_brokers_with(&render_auto, &["--broker-run-as-user", "auto"]);
    let mut rendered: Vec<PathBuf> = fs::read_dir(&render)
        .unwrap()
        .chain(fs::read_dir(&render_auto).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    rendered.sort();
    for f in &rendered {
        inputs.push(format!(
            "storage-controller render {}{}={}",
            if f.starts_with(&render_auto) {
                "(auto) "
            } else {
                ""
            },
            f.file_name().unwrap().to_string_lossy(),
            f.display()
        ));
    }
    // The OpenShift Template, processed with its defaults (generated values get a fixed test value).
    let mut cmd = std::process::Command::new(validate_python());
    cmd.arg(repo_root().join("e2e/python/validate_k8s.py"));
    for v in K8S_VERSIONS {
        cmd.args(["--k8s-version", v]);
    }
    cmd.arg("--template")
        .arg(repo_root().join("manifests/openshift/maas-template.yaml"))
        .args(["--param", "NAMESPACE=maas-validate"])
        .args(&inputs);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return cannot_run(TEST, &format!("{} not found", validate_python().display()));
        }
        Err(e) => panic!("validate_k8s.py: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        return cannot_run(TEST, stderr.trim());
    }
    assert!(
        out.status.success(),
        "objects the Kubernetes API would reject:\n{stdout}{stderr}"
    );
    eprint!("{stdout}");
    // Everything was looked at: each input and the Template's objects.
    let (_, template_objects) = template();
    let count: usize = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("validated "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    assert!(
        count >= template_objects.len() + base().len() + rendered.len(),
        "validated only {count} objects"
    );
}

#[test]
fn kustomize_renders_base_and_overlays_as_intended() {
    let Some(base) = kubectl_kustomize("manifests/base") else {
        return cannot_run(
            "kustomize_renders_base_and_overlays_as_intended",
            "kubectl is not installed",
        );
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
        Some(&Some("amqp://127.0.0.1:5673".to_string()))
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

/// The mount directory of the Secret `secret` in container `c` of `spec` (a whole-Secret volume), if mounted.
fn secret_mount_dir(spec: &Value, c: &Value, secret: &str) -> Option<String> {
    let volume = seq(&spec["volumes"])
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some(secret))?;
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume["name"])?;
    assert!(
        mount["subPath"].is_null() && volume["secret"]["items"].is_null(),
        "the whole Secret, mounted as a directory"
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true), "{mount:?}");
    // Readable by the pod's group (fsGroup / the SCC's), by nobody else.
    let mode = volume["secret"]["defaultMode"]
        .as_u64()
        .expect("defaultMode");
    assert!(
        mode & 0o040 != 0 && mode & 0o007 == 0,
        "defaultMode {mode:o}"
    );
    Some(
        mount["mountPath"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string(),
    )
}

/// `env` entry `name` of a container.
fn env_entry<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    seq(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

/// The env var takes key `key` of Secret `secret`.
fn from_secret(c: &Value, name: &str, secret: &str, key: &str) -> bool {
    env_entry(c, name).is_some_and(|e| {
        let r = &e["valueFrom"]["secretKeyRef"];
        r["name"].as_str() == Some(secret) && r["key"].as_str() == Some(key)
    })
}

#[test]
fn brokers_require_login_with_one_secret_wired_everywhere() {
    const SECRET: &str = "maas-broker-credentials";
    let sc_run = storage_controller::args::Cli::command()
        .find_subcommand("run")
        .unwrap()
        .clone();
    let sc_env: BTreeSet<String> = sc_run
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for docs in [base(), template().1, edge_overlay()] {
        let secret = find(&docs, "Secret", SECRET);
        let data = if secret.value["stringData"].is_null() {
            &secret.value["data"]
        } else {
            &secret.value["stringData"]
        };
        for key in ["username", "password"] {
            assert!(!data[key].is_null(), "{}: no key {key}", secret.at());
        }
        // storage-controller: gives the Secret to the brokers, logs in to Artemis management with it.
        let sc = find(&docs, "Deployment", "maas-storage-controller");
        let spec = &sc.value["spec"]["template"]["spec"];
        let c = container(spec, "storage-controller");
        let args = seq_strs(&c["args"]).join(" ");
        for (name, _) in env(c) {
            // Known to clap, read by the logging set-up, or expanded by Kubernetes into the args ($(NAME)).
            assert!(
                sc_env.contains(&name)
                    || ["LOG_FORMAT", "RUST_LOG"].contains(&name.as_str())
                    || args.contains(&format!("$({name})")),
                "{}: storage-controller run has no env var {name}",
                sc.at()
            );
        }
        let e = env(c);
        assert_eq!(
            e.get("BROKER_SECRET"),
            Some(&Some(SECRET.to_string())),
            "{}",
            sc.at()
        );
        assert!(
            from_secret(c, "BROKER_USERNAME", SECRET, "username"),
            "{}",
            sc.at()
        );
        let dir = secret_mount_dir(spec, c, SECRET)
            .unwrap_or_else(|| panic!("{}: Secret not mounted", sc.at()));
        assert_eq!(
            e.get("BROKER_PASSWORD_FILE"),
            Some(&Some(format!("{dir}/password"))),
            "{}",
            sc.at()
        );
        // subscription-service: logs in to the brokers (management and the queues it moves) like the controller;
        // every env var it gets is one `subscription-service run` knows.
        let ss_run = subscription_service::args::Cli::command()
            .find_subcommand("run")
            .unwrap()
            .clone();
        let ss_env: BTreeSet<String> = ss_run
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let ss = find(&docs, "Deployment", "maas-subscription-service");
        let spec = &ss.value["spec"]["template"]["spec"];
        let c = container(spec, "subscription-service");
        let args = seq_strs(&c["args"]).join(" ");
        for (name, _) in env(c) {
            assert!(
                ss_env.contains(&name)
                    || ["LOG_FORMAT", "RUST_LOG"].contains(&name.as_str())
                    || args.contains(&format!("$({name})")),
                "{}: subscription-service run has no env var {name}",
                ss.at()
            );
        }
        assert!(
            from_secret(c, "BROKER_USERNAME", SECRET, "username"),
            "{}",
            ss.at()
        );
        let dir = secret_mount_dir(spec, c, SECRET)
            .unwrap_or_else(|| panic!("{}: Secret not mounted", ss.at()));
        assert_eq!(
            env(c).get("BROKER_PASSWORD_FILE"),
            Some(&Some(format!("{dir}/password"))),
            "{}",
            ss.at()
        );
        // Every router pod (interior and edge): the ROUTER container reads the password file (the connectors get
        // `saslPassword: file:<path>`), the agent names that path and sees it at the same place.
        let routers: Vec<_> = workloads(&docs)
            .into_iter()
            .filter(|(d, _)| {
                pod_labels(d)
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some("router")
            })
            .collect();
        assert!(!routers.is_empty());
        for (d, spec) in routers {
            let qdr = container(spec, "router");
            let agent = container(spec, "router-agent");
            let dir = secret_mount_dir(spec, qdr, SECRET).unwrap_or_else(|| {
                panic!("{}: Secret not mounted in the router container", d.at())
            });
            assert_eq!(
                secret_mount_dir(spec, agent, SECRET).as_deref(),
                Some(dir.as_str()),
                "{}: the agent sees the Secret at the router's path",
                d.at()
            );
            let e = env(agent);
            let file = format!("{dir}/password");
            assert!(file.starts_with('/'));
            assert_eq!(
                e.get("BROKER_PASSWORD_FILE"),
                Some(&Some(file)),
                "{}",
                d.at()
            );
            assert_eq!(
                e.get("BROKER_SASL_MECHANISMS"),
                Some(&Some("PLAIN".to_string())),
                "{}",
                d.at()
            );
            assert!(
                from_secret(agent, "BROKER_USERNAME", SECRET, "username"),
                "{}",
                d.at()
            );
        }
        // No maas container holds a password in its environment (only file paths).
        for (d, spec) in workloads(&docs) {
            for c in seq(&spec["containers"]) {
                for e in seq(&c["env"]) {
                    let name = e["name"].as_str().unwrap();
                    if name.contains("PASSWORD") {
                        assert!(
                            name.ends_with("_FILE") && e["valueFrom"].is_null(),
                            "{}: {name} puts a password in the environment",
                            d.at()
                        );
                    }
                }
            }
        }
    }
    // The base ships a recognisable placeholder, documented as such; the Template generates the password.
    let base = base();
    let placeholder = find(&base, "Secret", SECRET).value["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(placeholder.contains("REPLACE-ME"), "{placeholder}");
    let readme = fs::read_to_string(repo_root().join("manifests/README.md")).unwrap();
    assert!(readme.contains("REPLACE-ME") && readme.contains(SECRET));
    let (t, objects) = template();
    let password_param = seq(&t["parameters"])
        .iter()
        .find(|p| p["name"].as_str() == Some("BROKER_PASSWORD"))
        .expect("parameter BROKER_PASSWORD");
    assert_eq!(password_param["generate"].as_str(), Some("expression"));
    assert_eq!(password_param["from"].as_str(), Some("[a-zA-Z0-9]{24}"));
    assert!(
        password_param["value"].is_null(),
        "a generated password has no default"
    );
    assert_eq!(
        find(&objects, "Secret", SECRET).value["stringData"]["password"].as_str(),
        Some("${BROKER_PASSWORD}")
    );
    // The brokers storage-controller makes take the same Secret (AMQ_USER/AMQ_PASSWORD: login required).
    let rendered = rendered_brokers();
    let sts: Vec<&Value> = rendered
        .iter()
        .filter(|o| o["kind"].as_str() == Some("StatefulSet"))
        .collect();
    assert!(!sts.is_empty());
    for s in sts {
        let c = &seq(&s["spec"]["template"]["spec"]["containers"])[0];
        assert!(
            from_secret(c, "AMQ_USER", SECRET, "username")
                && from_secret(c, "AMQ_PASSWORD", SECRET, "password"),
            "rendered broker {:?}: {:?}",
            s["metadata"]["name"],
            c["env"]
        );
    }
}

#[test]
fn network_policies_admit_only_what_each_component_needs() {
    let brokers = rendered_broker_pod_labels();
    let broker_port = u64::from(storage_controller::clusters::AMQP_PORT);
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let client = labels(&[("app", "some-client")]);
    let subscription_service = labels(&[
        ("app.kubernetes.io/name", "maas-subscription-service"),
        ("app.kubernetes.io/component", "subscription-service"),
    ]);
    for docs in [base(), template().1, edge_overlay()] {
        let pods = |name: &str| pod_labels(find_workload(&docs, name));
        let interior = pods("maas-router");
        let sc = pods("maas-storage-controller");
        let cs = pods("maas-config-service");
        let mut routers = vec![interior.clone()];
        if docs.iter().any(|d| d.name() == "maas-router-edge") {
            routers.push(pods("maas-router-edge"));
        }
        // Every maas pod is isolated by some policy (a default-deny namespace keeps working, and nothing is open
        // by omission), the brokers included.
        let selected = |pod: &BTreeMap<String, String>| {
            docs.iter().any(|d| {
                d.kind() == "NetworkPolicy"
                    && selects(&d.value["spec"]["podSelector"]["matchLabels"], pod)
            })
        };
        for (d, _) in workloads(&docs) {
            assert!(selected(&pod_labels(d)), "{}: no NetworkPolicy", d.at());
        }
        for b in &brokers {
            assert!(selected(b), "broker pods {b:?}: no NetworkPolicy");
            // AMQP from the routers' connectors, the controller and the subscription-service only.
            for r in &routers {
                assert!(admitted(&docs, b, broker_port, r), "router -> broker");
            }
            assert!(
                admitted(&docs, b, broker_port, &sc),
                "storage-controller -> broker"
            );
            assert!(admitted(&docs, b, broker_port, &subscription_service));
            for other in [&client, &cs] {
                assert!(
                    !admitted(&docs, b, broker_port, other),
                    "{other:?} -> broker"
                );
            }
            // Nothing else of a broker is reachable (the console, the core protocol...).
            for port in [8161, 61616, 8080] {
                assert!(!admitted(&docs, b, port, &interior), "broker port {port}");
            }
        }
        // config-service: its subscribers on 5672; probes and metrics on 8080 from anywhere.
        for r in &routers {
            assert!(admitted(&docs, &cs, 5672, r), "router -> config-service");
        }
        assert!(admitted(&docs, &cs, 5672, &sc));
        assert!(admitted(&docs, &cs, 5672, &subscription_service));
        for b in &brokers {
            assert!(!admitted(&docs, &cs, 5672, b), "broker -> config-service");
        }
        assert!(!admitted(&docs, &cs, 5672, &client));
        assert!(admitted(&docs, &cs, 8080, &client));
        // storage-controller: HTTP only.
        assert!(admitted(&docs, &sc, 8080, &client));
        for port in [5672, 55672] {
            assert!(
                !admitted(&docs, &sc, port, &interior),
                "storage-controller {port}"
            );
        }
    }
}

#[test]
fn no_file_cites_paths_outside_the_repository() {
    // Written in pieces so that this file does not cite them itself.
    let forbidden = [
        concat!("../", "shared/"),
        concat!("ARCHI", "TECTURE §"),
        concat!("ARCHI", "TECTURE.md"),
        concat!("/wo", "rk/"),
    ];
    let root = repo_root();
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = ["agents", "e2e", "scripts", ".ci"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "target" && name != "__pycache__" {
                    stack.push(p);
                }
            } else {
                files.push(p);
            }
        }
    }
    // Lexical `..` resolution against `base`; None when it climbs above the repository root.
    let inside = |base: &Path, rel_path: &str| -> bool {
        let mut parts: Vec<String> = base
            .strip_prefix(&root)
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        for seg in rel_path.split('/') {
            match seg {
                ".." => {
                    if parts.pop().is_none() {
                        return false;
                    }
                }
                "." | "" => {}
                _ => parts.push(seg.to_string()),
            }
        }
        true
    };
    for f in &files {
        let Ok(text) = fs::read_to_string(f) else {
            continue; // not text
        };
        let r = rel(f);
        for bad in forbidden {
            if text.contains(bad) {
                problems.push(format!("{r}: cites {bad:?}"));
            }
        }
        // Every `../` path must stay in the repository, from the file's directory or its crate's (Cargo runs tests
        // and build scripts there).
        let crate_dir = f
            .ancestors()
            .find(|a| a.join("Cargo.toml").is_file())
            .unwrap_or(&root)
            .to_path_buf();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("../") {
            let start = rest[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c)))
                .map_or(0, |k| k + 1);
            let end = rest[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c)))
                .map_or(rest.len(), |k| i + k);
            let path = &rest[start..end];
            if !inside(f.parent().unwrap(), path) && !inside(&crate_dir, path) {
                problems.push(format!("{r}: {path} leaves the repository"));
            }
            rest = &rest[end..];
        }
        // Cited documents exist.
        let mut rest = text.as_str();
        while let Some(i) = rest.find("docs/") {
            let preceded_ok = i == 0
                || !rest[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let end = rest[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c)))
                .map_or(rest.len(), |k| i + k);
            let path = rest[i..end].trim_end_matches(['.', ',']);
            if preceded_ok && path.len() > "docs/".len() && !root.join(path).exists() {
                problems.push(format!("{r}: cites {path}, which does not exist"));
            }
            rest = &rest[end..];
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The topic hand-over (docs/architecture.md §5) is on where subscription-service can release pods: every
/// router-agent (interior and edge) keeps a draining broker pod's topics (TOPIC_HANDOVER) and takes the broker pods
/// (with their `maas.io/topics-released` annotation) from config-service `podsense`; subscription-service takes the
/// broker pods from the Kubernetes API (releases are pod annotations, so its Role may patch pods); and the
/// storage-controller does not remove a draining pod of a topic's cluster before its release (AWAIT_TOPIC_RELEASE).
#[test]
fn the_topic_handover_is_on_where_subscription_service_releases_pods() {
    for docs in [base(), template().1, edge_overlay()] {
        let mut routers = vec![find(&docs, "StatefulSet", "maas-router")];
        if let Some(edge) = docs
            .iter()
            .find(|d| d.kind() == "Deployment" && d.name() == "maas-router-edge")
        {
            routers.push(edge);
        }
        for router in &routers {
            let agent = container(&router.value["spec"]["template"]["spec"], "router-agent");
            let e = env(agent);
            assert_eq!(
                e.get("TOPIC_HANDOVER"),
                Some(&Some("true".to_string())),
                "{}",
                router.at()
            );
            assert!(
                e.contains_key("CONFIG_SERVICE_URL") && !e.contains_key("BROKERS_FILE"),
                "{}: broker pods (and their release annotation) from podsense",
                router.at()
            );
        }
        let service = find(&docs, "Deployment", "maas-subscription-service");
        let c = container(
            &service.value["spec"]["template"]["spec"],
            "subscription-service",
        );
        let args = seq_strs(&c["args"]);
        assert!(
            args.contains(&"--kube") && !args.contains(&"--brokers-file"),
            "{}: broker pods from the API: {args:?}",
            service.at()
        );
        let role = find(&docs, "Role", "maas-subscription-service");
        let patches_pods = seq(&role.value["rules"]).iter().any(|r| {
            seq_strs(&r["resources"]).contains(&"pods") && seq_strs(&r["verbs"]).contains(&"patch")
        });
        assert!(patches_pods, "{}: pods patch", role.at());
        // The storage-controller waits for the release before it removes a draining pod of a topic's cluster
        // (the only releaser, subscription-service, runs beside it).
        let sc = find(&docs, "Deployment", "maas-storage-controller");
        let sc_c = container(&sc.value["spec"]["template"]["spec"], "storage-controller");
        assert_eq!(
            env(sc_c).get("AWAIT_TOPIC_RELEASE"),
            Some(&Some("true".to_string())),
            "{}",
            sc.at()
        );
    }
    // The flag exists, under that env var.
    let sc_run = storage_controller::args::Cli::command()
        .find_subcommand("run")
        .unwrap()
        .clone();
    assert!(
        sc_run
            .get_arguments()
            .any(|a| a.get_long() == Some("await-topic-release")
                && a.get_env().is_some_and(|e| e == "AWAIT_TOPIC_RELEASE"))
    );
}

/// `$subctrl` is wired end to end: every router-agent (interior and edge) routes it (SUBCTRL: the balanced address
/// `maas-address/$subctrl`); every client may send to it (check_router_policy); the subscription-service consumes
/// it through the routers' client Service on the client listener (`--router-url` names the Service `maas-router`
/// and the port that reaches the listener of vhost `clients`), logged in with SASL PLAIN as the user of the routers'
/// `subscription-service` group, its password from a mounted Secret; and it keeps the subscriptions in the
/// ConfigMap (`--kube`, neither `--subscriptions-file` nor `--addresses-dir`), with the verbs for it.
#[test]
fn subctrl_is_wired_from_the_clients_to_the_subscription_service() {
    use maas_e2e::router::policy::SUBSCRIPTION_SERVICE_USER;
    for docs in [base(), template().1, edge_overlay()] {
        let routers: Vec<&Doc> = docs
            .iter()
            .filter(|d| {
                (d.kind() == "StatefulSet" && d.name() == "maas-router")
                    || (d.kind() == "Deployment" && d.name() == "maas-router-edge")
            })
            .collect();
        assert!(!routers.is_empty());
        for router in &routers {
            let agent = container(&router.value["spec"]["template"]["spec"], "router-agent");
            assert_eq!(
                env(agent).get("SUBCTRL"),
                Some(&Some("true".to_string())),
                "{}: the router-agent must route $subctrl",
                router.at()
            );
        }
        let service = find(&docs, "Deployment", "maas-subscription-service");
        let spec = &service.value["spec"]["template"]["spec"];
        let c = container(spec, "subscription-service");
        let at = service.at();
        let args = seq_strs(&c["args"]);
        let url = args
            .iter()
            .position(|a| *a == "--router-url")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{at}: no --router-url: {args:?}"));
        let opts = maas_amqp::options::ConnectOptions::from_url(url)
            .unwrap_or_else(|e| panic!("{at}: --router-url {url}: {e}"));
        assert!(
            opts.tls.is_none(),
            "{at}: the client listener speaks plain AMQP"
        );
        match &opts.sasl {
            maas_amqp::options::SaslOptions::Plain { username, .. } => {
                assert_eq!(username, SUBSCRIPTION_SERVICE_USER, "{at}: {url}");
            }
            other => panic!("{at}: --router-url must log in with SASL PLAIN: {other:?}"),
        }
        // The host is the routers' client Service; its port reaches the `amqp` port of every router pod, which
        // is the client listener (vhost `clients`, where the user's group lives).
        let svc = find(&docs, "Service", &opts.host);
        let port = seq(&svc.value["spec"]["ports"])
            .iter()
            .find(|p| p["port"].as_u64() == Some(u64::from(opts.port)))
            .unwrap_or_else(|| panic!("{}: no port {}", svc.at(), opts.port));
        assert_eq!(port["targetPort"].as_str(), Some("amqp"), "{}", svc.at());
        for router in &routers {
            assert!(
                selects(&svc.value["spec"]["selector"], &pod_labels(router)),
                "{}: does not select {}",
                svc.at(),
                router.at()
            );
            let conf = router_config(&docs, router);
            let amqp = named_port(&router.value["spec"]["template"]["spec"], "amqp").unwrap();
            let listener = entities(&conf, "listener")
                .into_iter()
                .find(|l| attr(l, "port").and_then(|p| p.parse::<u64>().ok()) == Some(amqp))
                .unwrap_or_else(|| panic!("{}: no listener on {amqp}", router.at()));
            assert_eq!(
                attr(listener, "policyVhost").as_deref(),
                Some("clients"),
                "{}",
                router.at()
            );
            let users = vhost_groups(&conf, "clients")
                .get("subscription-service")
                .and_then(|g| g["users"].as_str())
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                users,
                SUBSCRIPTION_SERVICE_USER,
                "{}: the group's user is the one --router-url logs in as",
                router.at()
            );
        }
        // The password: a file of the mounted Secret maas-subscription-service-login.
        const LOGIN: &str = "maas-subscription-service-login";
        let dir = secret_mount_dir(spec, c, LOGIN)
            .unwrap_or_else(|| panic!("{at}: Secret {LOGIN} not mounted"));
        assert_eq!(
            env(c).get("ROUTER_PASSWORD_FILE"),
            Some(&Some(format!("{dir}/password"))),
            "{at}"
        );
        let secret = find(&docs, "Secret", LOGIN);
        assert!(
            !secret.value["stringData"]["password"].is_null()
                || !secret.value["data"]["password"].is_null(),
            "{}: no key password",
            secret.at()
        );
        // The subscriptions: the ConfigMap (Kubernetes mode without a file), read back through config-service.
        assert!(args.contains(&"--kube"), "{at}");
        for file_flag in ["--subscriptions-file", "--addresses-dir"] {
            assert!(!args.contains(&file_flag), "{at}: {file_flag}");
        }
        for name in ["SUBSCRIPTIONS_FILE", "ADDRESSES_DIR"] {
            assert!(!env(c).contains_key(name), "{at}: {name}");
        }
        let role = find(&docs, "Role", "maas-subscription-service");
        let grants = |verb: &str| {
            seq(&role.value["rules"]).iter().any(|r| {
                seq_strs(&r["resources"]).contains(&"configmaps")
                    && seq_strs(&r["verbs"]).contains(&verb)
            })
        };
        for verb in ["get", "patch", "create"] {
            assert!(grants(verb), "{}: configmaps {verb}", role.at());
        }
    }
}
