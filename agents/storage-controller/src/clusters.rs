//! Desired broker clusters (docs/architecture.md §4, §6), pure: which clusters the queue/topic addresses need (the shared
//! placement function [`maas_model::cluster_for`]), their settings from the flavor, and the Kubernetes objects of
//! each (a StatefulSet of the stock Artemis image and its headless Service) as the exact JSON bodies the
//! controller server-side applies and `render` writes.
//!
//! Flavor fields read (all optional, from [`Flavor::extra`]): `image`, `replicas`, `storageClass`, `storageSize`
//! (else the template parameter `STORAGE_CAPACITY`, else 1Gi), `resources` (a container `resources` object, kept
//! verbatim).
//!
//! [`up_to_date`] says whether a live object already holds a desired one (the controller then sends no apply at
//! all, so a restart with nothing changed makes zero PATCH requests).
//!
//! The volumeClaimTemplates are supplied FULLY (apiVersion/kind, volumeMode, an empty status): a partial claim
//! template makes every no-op re-apply bump the StatefulSet's resourceVersion (kubernetes#119304).
//!
//! **Names.** The `maas.io/cluster` label (and `app.kubernetes.io/name`) always hold the cluster name; the
//! StatefulSet, Service and PodDisruptionBudget are named [`object_name`]: the cluster name when it is a DNS-1035
//! label of at most 52 characters (the StatefulSet controller labels each pod `controller-revision-hash=<name>-<10
//! characters>`, a label value of at most 63), else a deterministic derivation with a hash suffix (`1orders` ->
//! `b-1orders-<8 hex>`), unique per cluster name.
//!
//! **Broker pods** (stock image `quay.io/artemiscloud/activemq-artemis-broker`, user 185): login required
//! (AMQ_USER/AMQ_PASSWORD from the broker Secret, `AMQ_REQUIRE_LOGIN=true`, and `--require-login` in
//! AMQ_EXTRA_ARGS, which is what the stock image's launch script honours: it always passes `--allow-anonymous`,
//! and `artemis create` lets `--require-login` win); non-root with `fsGroup` 185 (the claim is writable), seccomp
//! `RuntimeDefault`, no privilege escalation, every capability dropped, no service account token (with
//! [`BrokerRunAsUser::Auto`], for OpenShift's restricted-v2 SCC, neither `runAsUser` nor `fsGroup` is set: the
//! platform assigns both from the namespace's range, manifests/README.md "OpenShift"); tcpSocket
//! startup, liveness and readiness probes on the AMQP port (readiness cannot mean "provisioned": the controller
//! provisions only ready pods; "provisioned" is the pod annotation [`crate::PROVISIONED_ANNOTATION`]).
//!
//! **Claims** (`persistentVolumeClaimRetentionPolicy`): `whenScaled: Retain` — a scale-down the controller did not
//! make (kubectl scale, an autoscaler) may not have been drained, and a retained claim comes back with its messages
//! when the ordinal does; `whenDeleted: Delete` — the controller deletes a StatefulSet only after every pod of it was
//! drained (marked, grace, 0 messages), so the claims hold no message; with an owner reference
//! (`--owner-configmap`) the garbage collector may delete the StatefulSet WITHOUT a drain, so then `Retain`.
//! API servers without the StatefulSetAutoDeletePVC feature (before 1.27, or gate off) drop the field and retain
//! every claim; [`up_to_date`] then ignores it (no re-apply every pass).

use std::collections::BTreeMap;

use maas_model::pods::{BROKER_COMPONENT, CLUSTER_LABEL, COMPONENT_LABEL};
use maas_model::{AddressKind, Config, Flavor, cluster_for, dns1123_label};
use serde_json::{Map, Value, json};

/// Field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "maas-storage-controller";
/// Label naming the cluster (recommended Kubernetes label).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label naming who manages the object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label naming the flavor the cluster was made from.
pub const FLAVOR_LABEL: &str = "maas.io/flavor";
/// Annotation naming the address of a cluster that is not shared (label values cannot hold every address).
pub const ADDRESS_ANNOTATION: &str = "maas.io/address";
/// Annotation of a StatefulSet holding the replicas the controller applied: a scale-down made behind its back
/// (pods gone undrained, their claims retained) does not lower what the controller drains before a removal.
pub const REPLICAS_ANNOTATION: &str = "maas.io/replicas";
/// Annotation holding the SHA-256 of the applied body (without this annotation): a changed desired object
/// changes it, so a field the controller stopped setting is noticed too.
pub const SPEC_HASH_ANNOTATION: &str = "maas.io/spec-hash";
/// Broker image when the flavor names none.
pub const DEFAULT_IMAGE: &str = "quay.io/artemiscloud/activemq-artemis-broker:1.0.25";
/// Volume size when the flavor names none.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";
/// The AMQP port of the broker container (named `amqp`, so the pod sources find it).
pub const AMQP_PORT: u16 = 5672;
/// Where the broker keeps its journal (the claim template `data` is mounted here).
pub const DATA_DIR: &str = "/opt/amq/data";
/// The Secret (keys `username`, `password`) the brokers take their login from when none is named.
pub const DEFAULT_BROKER_SECRET: &str = "maas-broker-credentials";
/// The user (and fsGroup) of the stock Artemis image (`run: user: 185` of activemq-artemis-broker).
pub const BROKER_UID: i64 = 185;

/// Which user the broker pods run as (`--broker-run-as-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRunAsUser {
    /// `runAsUser` and `fsGroup` are this id (default [`BROKER_UID`], the stock image's user; the claim is
    /// writable by it).
    Fixed(i64),
    /// Neither `runAsUser` nor `fsGroup` is set (`runAsNonRoot` stays): the platform assigns them. OpenShift's
    /// restricted-v2 SCC refuses a pod whose fixed UID is outside the namespace's range and, for a pod that sets
    /// none, assigns a UID and an fsGroup from that range (so the claim stays writable).
    Auto,
}

impl Default for BrokerRunAsUser {
    fn default() -> Self {
        BrokerRunAsUser::Fixed(BROKER_UID)
    }
}

impl std::fmt::Display for BrokerRunAsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerRunAsUser::Fixed(uid) => write!(f, "{uid}"),
            BrokerRunAsUser::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for BrokerRunAsUser {
    type Err = String;

    /// `auto`, or a user id from 1 to 2147483647 (0 would be root, which `runAsNonRoot` refuses).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BrokerRunAsUser::Auto);
        }
        match s.parse::<i64>() {
            Ok(uid) if (1..=i64::from(i32::MAX)).contains(&uid) => Ok(BrokerRunAsUser::Fixed(uid)),
            _ => Err(format!(
                "expected `auto` or a user id from 1 to {}, not {s:?}",
                i32::MAX
            )),
        }
    }
}
/// Longest StatefulSet name: the pods' `controller-revision-hash` label is `<name>-<10 characters>` (<= 63).
pub const MAX_OBJECT_NAME_LEN: usize = 52;
/// Hex characters of the hash suffix of a derived object name.
const NAME_HASH_LEN: usize = 8;
/// Label selector of everything this controller manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{COMPONENT_LABEL}={BROKER_COMPONENT}")
}

/// The name of the StatefulSet, Service and PodDisruptionBudget of cluster `cluster`: `cluster` itself when it is
/// a DNS-1035 label (a lower-case letter first; letters, digits, `-`; alphanumeric last) of at most
/// [`MAX_OBJECT_NAME_LEN`] characters; else `<base>-<8 hex of SHA-256(cluster)>` where `<base>` is the cluster
/// name reduced to `[a-z0-9-]`, prefixed `b-` when it does not start with a letter, cut to fit. Deterministic, and
/// two cluster names never share an object name (the hash suffix, as [`maas_model::dns1123_label`] does).
pub fn object_name(cluster: &str) -> String {
    let valid = cluster.len() <= MAX_OBJECT_NAME_LEN
        && cluster.starts_with(|c: char| c.is_ascii_lowercase())
        && cluster.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && cluster
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        return cluster.to_string();
    }
    let hash = maas_source::snapshot::hex_sha256(cluster.as_bytes());
    let suffix = &hash[..NAME_HASH_LEN];
    let reduced: String = cluster
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect();
    let reduced = reduced.trim_matches('-');
    let base = if reduced.starts_with(|c: char| c.is_ascii_lowercase()) {
        reduced.to_string()
    } else {
        format!("b-{reduced}")
    };
    // Only ASCII remains, so byte slicing is on char boundaries.
    let keep = MAX_OBJECT_NAME_LEN - NAME_HASH_LEN - 1;
    let base = base[..base.len().min(keep)].trim_end_matches('-');
    format!("{base}-{suffix}")
}

/// One broker cluster as the addresses and their flavor ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerCluster {
    /// DNS-1123 cluster name: the `maas.io/cluster` label (its objects are named [`object_name`] of it).
    pub name: String,
    /// The flavor the settings came from (empty when the address had none).
    pub flavor: String,
    /// True when the cluster is a shared flavor's cluster.
    pub shared: bool,
    /// The addresses placed on it, in order.
    pub addresses: Vec<String>,
    /// The topics among them, in order (a drain of one of its pods may wait for subscription-service to hand
    /// them over: `--await-topic-release`, docs/architecture.md §5).
    pub topics: Vec<String>,
    /// Broker image.
    pub image: String,
    /// Broker pods.
    pub replicas: i32,
    /// StorageClass of the claims (None: the namespace default).
    pub storage_class: Option<String>,
    /// Size of each pod's claim.
    pub storage_size: String,
    /// Container `resources`, verbatim from the flavor.
    pub resources: Option<Value>,
}

impl BrokerCluster {
    /// Place `address` on the cluster.
    fn push(&mut self, address: &maas_model::Address) {
        self.addresses.push(address.address.clone());
        if address.kind == AddressKind::Topic {
            self.topics.push(address.address.clone());
        }
    }

    /// The name of the cluster's StatefulSet, Service and PodDisruptionBudget ([`object_name`]).
    pub fn object_name(&self) -> String {
        object_name(&self.name)
    }
}

/// What is not in the address configuration but shapes the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Namespace of the objects.
    pub namespace: String,
    /// Secret with keys `username` and `password` given to the broker as AMQ_USER / AMQ_PASSWORD (the user the
    /// controller and the routers log in as; the brokers require login). Default [`DEFAULT_BROKER_SECRET`].
    pub broker_secret: String,
    /// Owner of every object (e.g. the address ConfigMap), when known. Off by default: garbage collection of an
    /// owner deletes brokers WITHOUT draining them.
    pub owner: Option<Owner>,
    /// The broker pods' `runAsUser`/`fsGroup` ([`BrokerRunAsUser::Fixed`] of [`BROKER_UID`] by default).
    pub broker_run_as_user: BrokerRunAsUser,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            namespace: String::new(),
            broker_secret: DEFAULT_BROKER_SECRET.to_string(),
            owner: None,
            broker_run_as_user: BrokerRunAsUser::default(),
        }
    }
}

/// An owner reference target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The clusters an address configuration needs, by name, and one line per conflict (two flavors asking for one
/// cluster name: the first address in order wins).
pub fn desired_clusters(config: &Config) -> (BTreeMap<String, BrokerCluster>, Vec<String>) {
    let mut clusters: BTreeMap<String, BrokerCluster> = BTreeMap::new();
    let mut problems = Vec::new();
    for address in config.addresses.iter() {
        let Some(name) = cluster_for(address, &config.flavors) else {
            continue;
        };
        let flavor_name = address.flavor.clone().unwrap_or_default();
        if let Some(c) = clusters.get_mut(&name) {
            if c.flavor != flavor_name {
                problems.push(format!(
                    "address {:?} (flavor {flavor_name:?}) is placed on cluster {name:?} made from flavor {:?}; \
                     the cluster keeps flavor {:?}",
                    address.address, c.flavor, c.flavor
                ));
            }
            c.push(address);
            continue;
        }
        let flavor = config.flavors.get(&flavor_name);
        let mut c = from_flavor(&name, &flavor_name, flavor);
        c.push(address);
        clusters.insert(name, c);
    }
    (clusters, problems)
}

fn from_flavor(name: &str, flavor_name: &str, flavor: Option<&Flavor>) -> BrokerCluster {
    let extra = |k: &str| flavor.and_then(|f| f.extra.get(k));
    let text = |k: &str| extra(k).and_then(Value::as_str).map(str::to_string);
    let replicas = extra("replicas")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|n| i32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1);
    let storage_size = text("storageSize")
        .or_else(|| flavor.and_then(|f| f.template_parameters.get("STORAGE_CAPACITY").cloned()))
        .unwrap_or_else(|| DEFAULT_STORAGE_SIZE.to_string());
    BrokerCluster {
        name: name.to_string(),
        flavor: flavor_name.to_string(),
        shared: flavor.is_some_and(|f| f.shared),
        addresses: Vec::new(),
        topics: Vec::new(),
        image: text("image").unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        replicas,
        storage_class: text("storageClass"),
        storage_size,
        resources: extra("resources").filter(|v| v.is_object()).cloned(),
    }
}

/// A label value derived from `s`: kept when valid (<= 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends), else
/// its DNS-1123 label.
pub fn label_value(s: &str) -> String {
    let valid = s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        s.to_string()
    } else {
        dns1123_label(s)
    }
}

/// The labels of every object of `cluster` and of its pods (the pod sources find broker pods by these).
pub fn cluster_labels(cluster: &BrokerCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), cluster.name.clone()),
        (COMPONENT_LABEL.to_string(), BROKER_COMPONENT.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
        (CLUSTER_LABEL.to_string(), cluster.name.clone()),
        (FLAVOR_LABEL.to_string(), label_value(&cluster.flavor)),
    ])
}

fn metadata(cluster: &BrokerCluster, opts: &ClusterOptions) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(cluster.object_name()));
    m.insert("namespace".into(), json!(opts.namespace));
    m.insert("labels".into(), json!(cluster_labels(cluster)));
    if !cluster.shared
        && let [address] = cluster.addresses.as_slice()
    {
        m.insert("annotations".into(), json!({ ADDRESS_ANNOTATION: address }));
    }
    if let Some(o) = &opts.owner {
        m.insert(
            "ownerReferences".into(),
            json!([{"apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid}]),
        );
    }
    Value::Object(m)
}

/// The headless Service of `cluster` (stable pod DNS names; not-ready pods published so peers find each other).
pub fn service(cluster: &BrokerCluster, opts: &ClusterOptions) -> Value {
    with_spec_hash(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(cluster, opts),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(cluster),
            "ports": [{"name": "amqp", "port": AMQP_PORT, "targetPort": "amqp", "protocol": "TCP"}],
        },
    }))
}

fn selector(cluster: &BrokerCluster) -> Value {
    json!({ NAME_LABEL: cluster.name, CLUSTER_LABEL: cluster.name })
}

/// The StatefulSet of `cluster` with `replicas` pods (the controller passes more than the flavor asks while pods
/// above it drain). See the module documentation for the pod's security settings, probes and claim policy.
pub fn statefulset(cluster: &BrokerCluster, opts: &ClusterOptions, replicas: i32) -> Value {
    let secret = &opts.broker_secret;
    let env = vec![
        json!({"name": "AMQ_NAME", "value": "broker"}),
        json!({"name": "AMQ_ROLE", "value": "admin"}),
        json!({"name": "AMQ_DATA_DIR", "value": DATA_DIR}),
        json!({"name": "AMQ_REQUIRE_LOGIN", "value": "true"}),
        json!({"name": "AMQ_EXTRA_ARGS", "value": "--nio --relax-jolokia --require-login"}),
        json!({"name": "AMQ_USER", "valueFrom": {"secretKeyRef": {"name": secret, "key": "username"}}}),
        json!({"name": "AMQ_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}),
    ];
    let tcp = json!({"port": "amqp"});
    let mut container = json!({
        "name": "broker",
        "image": cluster.image,
        "ports": [{"name": "amqp", "containerPort": AMQP_PORT, "protocol": "TCP"}],
        "env": env,
        // The journal may take a while to load: up to 10 minutes before liveness counts.
        "startupProbe": {"tcpSocket": tcp, "periodSeconds": 5, "failureThreshold": 120},
        "livenessProbe": {"tcpSocket": tcp, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "readinessProbe": {"tcpSocket": tcp, "periodSeconds": 5},
        "securityContext": {
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
    });
    if let Some(r) = &cluster.resources {
        container["resources"] = r.clone();
    }
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": cluster.storage_size}},
        "volumeMode": "Filesystem",
    });
    if let Some(class) = &cluster.storage_class {
        claim_spec["storageClassName"] = json!(class);
    }
    let name = cluster.object_name();
    let mut meta = metadata(cluster, opts);
    meta["annotations"][REPLICAS_ANNOTATION] = json!(replicas.to_string());
    // Deleted by the controller only after the drain; the garbage collector (owner reference) does not drain.
    let when_deleted = if opts.owner.is_some() {
        "Retain"
    } else {
        "Delete"
    };
    with_spec_hash(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": selector(cluster)},
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": when_deleted},
            "template": {
                "metadata": {"labels": cluster_labels(cluster)},
                "spec": {
                    "containers": [container],
                    "terminationGracePeriodSeconds": 60,
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security_context(opts.broker_run_as_user),
                },
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "labels": cluster_labels(cluster)},
                "spec": claim_spec,
                "status": {},
            }],
        },
    }))
}

/// The broker pods' securityContext: non-root, `RuntimeDefault` seccomp, and with a fixed user its `runAsUser` and
/// `fsGroup` (the claim writable by it); with [`BrokerRunAsUser::Auto`] neither (the platform assigns both).
fn pod_security_context(run_as: BrokerRunAsUser) -> Value {
    let mut sc = json!({
        "runAsNonRoot": true,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if let BrokerRunAsUser::Fixed(uid) = run_as {
        sc["runAsUser"] = json!(uid);
        sc["fsGroup"] = json!(uid);
    }
    sc
}

/// The PodDisruptionBudget of `cluster`: at most one broker pod of it voluntarily disrupted (drained node,
/// eviction) at a time.
pub fn pod_disruption_budget(cluster: &BrokerCluster, opts: &ClusterOptions) -> Value {
    with_spec_hash(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(cluster, opts),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(cluster)},
        },
    }))
}

/// `body` with [`SPEC_HASH_ANNOTATION`] set to the SHA-256 of `body` as given.
fn with_spec_hash(mut body: Value) -> Value {
    let hash = maas_source::snapshot::hex_sha256(body.to_string().as_bytes());
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(SPEC_HASH_ANNOTATION.into(), json!(hash));
        }
    }
    body
}

/// Keys the API server owns or rewrites inside the objects we apply (ignored when comparing).
const SERVER_KEYS: [&str; 3] = ["apiVersion", "kind", "status"];

/// True when the live object `live` (as listed) already holds everything the controller owns in `desired`: the
/// same spec hash annotation, and every label, annotation, owner reference and spec field of `desired` with the
/// same value (fields the API server defaulted or others own are ignored; arrays must have the same length).
/// False means: apply (a changed desired object, or drift someone made to our fields).
///
/// A StatefulSet's `persistentVolumeClaimRetentionPolicy` absent from the live object is not drift: API servers
/// without the StatefulSetAutoDeletePVC feature drop it, and re-applying would change nothing.
pub fn up_to_date(desired: &Value, live: &Value) -> bool {
    let hash = |v: &Value| v["metadata"]["annotations"][SPEC_HASH_ANNOTATION].clone();
    if hash(desired).is_null() || hash(desired) != hash(live) {
        return false;
    }
    let mut spec = desired["spec"].clone();
    if live["spec"].get(RETENTION_POLICY).is_none()
        && let Some(s) = spec.as_object_mut()
    {
        s.remove(RETENTION_POLICY);
    }
    ["labels", "annotations", "ownerReferences"]
        .iter()
        .all(|k| contained(&desired["metadata"][*k], &live["metadata"][*k]))
        && contained(&spec, &live["spec"])
}

/// The StatefulSet field an API server without the StatefulSetAutoDeletePVC feature drops.
const RETENTION_POLICY: &str = "persistentVolumeClaimRetentionPolicy";

/// `want` is contained in `have`: objects key by key (ignoring [`SERVER_KEYS`]), arrays element by element,
/// numbers by value, everything else equal.
fn contained(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| {
            SERVER_KEYS.contains(&k.as_str()) || contained(v, h.get(k).unwrap_or(&Value::Null))
        }),
        (Value::Object(w), Value::Null) => w.is_empty(),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(a, b)| contained(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => want == have,
    }
}

/// Every object `render` writes, as (file name, object): `<name>-service.yaml`, `<name>-statefulset.yaml` and
/// `<name>-pdb.yaml` per cluster (`<name>`: [`object_name`]), in cluster order.
pub fn manifests(
    clusters: &BTreeMap<String, BrokerCluster>,
    opts: &ClusterOptions,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for c in clusters.values() {
        let name = c.object_name();
        out.push((format!("{name}-service.yaml"), service(c, opts)));
        out.push((
            format!("{name}-statefulset.yaml"),
            statefulset(c, opts, c.replicas),
        ));
        out.push((format!("{name}-pdb.yaml"), pod_disruption_budget(c, opts)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use maas_model::{Address, AddressSet, FlavorSet};
    use std::collections::BTreeSet;

    fn flavor(name: &str, shared: bool, extra: Value) -> Flavor {
        Flavor {
            name: name.into(),
            kind: None,
            description: None,
            template_name: None,
            template_parameters: BTreeMap::from([("STORAGE_CAPACITY".into(), "5Gi".into())]),
            shared,
            extra: serde_json::from_value(extra).unwrap(),
        }
    }

    fn config(addrs: &[(&str, AddressKind, &str)]) -> Config {
        let mut flavors = FlavorSet::default();
        flavors.insert(flavor(
            "big",
            false,
            json!({"image": "img:2", "replicas": 3, "storageClass": "fast", "storageSize": "10Gi",
                   "resources": {"limits": {"memory": "1Gi"}}}),
        ));
        flavors.insert(flavor("small-shared", true, json!({})));
        let mut addresses = AddressSet::default();
        for (a, kind, f) in addrs {
            addresses.insert(Address {
                address: a.to_string(),
                kind: *kind,
                flavor: (!f.is_empty()).then(|| f.to_string()),
                topic: None,
            });
        }
        Config { addresses, flavors }
    }

    #[test]
    fn clusters_follow_placement_and_flavor() {
        use AddressKind::*;
        let cfg = config(&[
            ("orders", Queue, "big"),
            ("news", Topic, "small-shared"),
            ("alerts", Queue, "small-shared"),
            ("chat", Anycast, ""),
            ("Plain", Queue, "missing"),
        ]);
        let (clusters, problems) = desired_clusters(&cfg);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = clusters.keys().map(String::as_str).collect();
        let plain = dns1123_label("Plain");
        assert_eq!(names, vec!["orders", plain.as_str(), "small-shared"]);
        let orders = &clusters["orders"];
        assert_eq!(
            (
                orders.image.as_str(),
                orders.replicas,
                orders.storage_class.as_deref()
            ),
            ("img:2", 3, Some("fast"))
        );
        assert_eq!(orders.storage_size, "10Gi");
        let shared = &clusters["small-shared"];
        assert!(shared.shared);
        assert_eq!(shared.addresses, vec!["alerts", "news"]);
        assert_eq!(shared.topics, vec!["news"], "the topics it carries");
        assert!(clusters["orders"].topics.is_empty());
        assert_eq!(shared.storage_size, "5Gi", "from STORAGE_CAPACITY");
        assert_eq!(shared.image, DEFAULT_IMAGE);
        let p = &clusters[&plain];
        assert_eq!((p.replicas, p.storage_size.as_str()), (1, "1Gi"));
    }

    #[test]
    fn statefulset_body_is_complete_and_typed() {
        let cfg = config(&[("orders", AddressKind::Queue, "big")]);
        let (clusters, _) = desired_clusters(&cfg);
        let opts = ClusterOptions {
            namespace: "maas".into(),
            broker_secret: "broker-creds".into(),
            owner: Some(Owner {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "addresses".into(),
                uid: "u-1".into(),
            }),
            broker_run_as_user: BrokerRunAsUser::default(),
        };
        let sts = statefulset(&clusters["orders"], &opts, 3);
        // It is a valid StatefulSet.
        let typed: k8s_openapi::api::apps::v1::StatefulSet =
            serde_json::from_value(sts.clone()).unwrap();
        let spec = typed.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("orders"));
        let labels = &sts["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/component"], "broker");
        assert_eq!(labels["maas.io/cluster"], "orders");
        assert_eq!(labels["maas.io/flavor"], "big");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
        let claim = &sts["spec"]["volumeClaimTemplates"][0];
        assert_eq!(claim["apiVersion"], "v1");
        assert_eq!(claim["kind"], "PersistentVolumeClaim");
        assert_eq!(claim["spec"]["volumeMode"], "Filesystem");
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        assert_eq!(claim["status"], json!({}));
        let c = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["ports"][0],
            json!({"name": "amqp", "containerPort": 5672, "protocol": "TCP"})
        );
        assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            env("AMQ_USER")["valueFrom"],
            json!({"secretKeyRef": {"name": "broker-creds", "key": "username"}})
        );
        assert_eq!(
            env("AMQ_PASSWORD")["valueFrom"],
            json!({"secretKeyRef": {"name": "broker-creds", "key": "password"}})
        );
        assert_eq!(env("AMQ_REQUIRE_LOGIN")["value"], "true");
        assert!(
            env("AMQ_EXTRA_ARGS")["value"]
                .as_str()
                .unwrap()
                .split(' ')
                .any(|a| a == "--require-login"),
            "the stock image's launch script always passes --allow-anonymous; --require-login wins"
        );
        // No secret value in the body: only references.
        assert!(!sts.to_string().contains("\"password\":\""));
        assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(sts["metadata"]["annotations"][ADDRESS_ANNOTATION], "orders");
        let svc = service(&clusters["orders"], &opts);
        let _: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc.clone()).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "None");
        // Same input, same body (idempotent apply).
        assert_eq!(sts, statefulset(&clusters["orders"], &opts, 3));
    }

    fn cluster(name: &str) -> BrokerCluster {
        BrokerCluster {
            name: name.into(),
            flavor: String::new(),
            shared: false,
            addresses: vec![name.into()],
            topics: Vec::new(),
            image: DEFAULT_IMAGE.into(),
            replicas: 1,
            storage_class: None,
            storage_size: DEFAULT_STORAGE_SIZE.into(),
            resources: None,
        }
    }

    fn is_dns1035(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn object_names_are_valid_short_deterministic_and_unique() {
        // Valid names are kept.
        assert_eq!(object_name("orders"), "orders");
        assert_eq!(object_name(&"a".repeat(52)), "a".repeat(52));
        let long = format!("x{}", "-y".repeat(31)); // 63 characters, a valid DNS-1123 cluster name
        let mut names = BTreeSet::new();
        for c in [
            "1orders".to_string(),
            "0".to_string(),
            "9-lives".to_string(),
            "a".repeat(53),
            "a".repeat(63),
            long.clone(),
            dns1123_label("Orders.EU_1"),
            dns1123_label(&"7".repeat(80)),
        ] {
            let n = object_name(&c);
            assert!(is_dns1035(&n), "{c:?} -> {n:?}");
            assert!(n.len() <= MAX_OBJECT_NAME_LEN, "{c:?} -> {n:?}");
            // The controller-revision-hash label `<name>-<10>` and pod names `<name>-<ordinal>` fit in 63.
            assert!(n.len() + 11 <= 63);
            assert_eq!(object_name(&c), n, "deterministic");
            assert!(names.insert(n), "unique: {c:?}");
        }
        let n = object_name("1orders");
        assert!(n.starts_with("b-1orders-"), "{n}");
        assert_eq!(n.len(), "b-1orders-".len() + 8);
        // Names that only differ past the cut still differ.
        assert_ne!(
            object_name(&format!("{}a", "q".repeat(60))),
            object_name(&format!("{}b", "q".repeat(60)))
        );
    }

    #[test]
    fn a_cluster_named_after_a_digit_address_renders_valid_objects() {
        let c = cluster("1orders");
        let opts = ClusterOptions::default();
        let name = object_name("1orders");
        let sts = statefulset(&c, &opts, 2);
        let svc = service(&c, &opts);
        let pdb = pod_disruption_budget(&c, &opts);
        for obj in [&sts, &svc, &pdb] {
            assert_eq!(obj["metadata"]["name"], json!(name), "{}", obj["kind"]);
            // The cluster label keeps the cluster name (pods are grouped by it).
            assert_eq!(obj["metadata"]["labels"][CLUSTER_LABEL], "1orders");
        }
        assert_eq!(sts["spec"]["serviceName"], json!(name));
        assert_eq!(
            sts["spec"]["template"]["metadata"]["labels"][CLUSTER_LABEL],
            "1orders"
        );
        assert_eq!(
            sts["spec"]["selector"]["matchLabels"][CLUSTER_LABEL],
            "1orders"
        );
        assert_eq!(svc["spec"]["selector"][CLUSTER_LABEL], "1orders");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            sts["spec"]["selector"]["matchLabels"]
        );
        let _: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(sts).unwrap();
        let _: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc).unwrap();
        let _: k8s_openapi::api::policy::v1::PodDisruptionBudget =
            serde_json::from_value(pdb).unwrap();
        let files: Vec<String> = manifests(&BTreeMap::from([("1orders".to_string(), c)]), &opts)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            files,
            vec![
                format!("{name}-service.yaml"),
                format!("{name}-statefulset.yaml"),
                format!("{name}-pdb.yaml")
            ]
        );
    }

    #[test]
    fn broker_pods_are_hardened_and_probed() {
        let sts = statefulset(&cluster("orders"), &ClusterOptions::default(), 1);
        let typed: k8s_openapi::api::apps::v1::StatefulSet =
            serde_json::from_value(sts.clone()).unwrap();
        let pod = typed.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(BROKER_UID));
        assert_eq!(
            psc.fs_group,
            Some(BROKER_UID),
            "the claim is writable by the broker user"
        );
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        let csc = c.security_context.clone().unwrap();
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(csc.run_as_non_root, Some(true));
        assert_eq!(
            csc.capabilities.unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        for probe in [&c.startup_probe, &c.liveness_probe, &c.readiness_probe] {
            let p = probe.clone().unwrap();
            let tcp = p.tcp_socket.unwrap();
            assert_eq!(
                tcp.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("amqp".into())
            );
        }
        assert_eq!(
            c.startup_probe.clone().unwrap().failure_threshold,
            Some(120)
        );
        // Default secret.
        let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(env.to_string().contains(DEFAULT_BROKER_SECRET));
        // The applied replicas are recorded.
        assert_eq!(sts["metadata"]["annotations"][REPLICAS_ANNOTATION], "1");
    }

    #[test]
    fn broker_pods_leave_the_user_to_the_platform_with_run_as_user_auto() {
        assert_eq!("auto".parse::<BrokerRunAsUser>(), Ok(BrokerRunAsUser::Auto));
        assert_eq!(
            " AUTO ".parse::<BrokerRunAsUser>(),
            Ok(BrokerRunAsUser::Auto)
        );
        assert_eq!(
            "1000680000".parse::<BrokerRunAsUser>(),
            Ok(BrokerRunAsUser::Fixed(1_000_680_000))
        );
        for bad in ["0", "-1", "root", "", "2147483648", "185x"] {
            let err = bad.parse::<BrokerRunAsUser>().unwrap_err();
            assert!(err.contains("auto"), "{bad}: {err}");
        }
        assert_eq!(
            BrokerRunAsUser::default(),
            BrokerRunAsUser::Fixed(BROKER_UID)
        );
        assert_eq!(BrokerRunAsUser::default().to_string(), "185");
        assert_eq!(BrokerRunAsUser::Auto.to_string(), "auto");

        let auto = ClusterOptions {
            broker_run_as_user: BrokerRunAsUser::Auto,
            ..ClusterOptions::default()
        };
        let sts = statefulset(&cluster("orders"), &auto, 1);
        let psc = &sts["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(
            psc,
            &json!({
                "runAsNonRoot": true,
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            }),
            "no runAsUser, runAsGroup or fsGroup: the SCC assigns them"
        );
        let typed: k8s_openapi::api::apps::v1::StatefulSet =
            serde_json::from_value(sts.clone()).unwrap();
        let pod = typed.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        let csc = c.security_context.clone().unwrap();
        assert_eq!(csc.run_as_user, None);
        assert_eq!(csc.run_as_non_root, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        // Another fixed user is written as given; switching modes changes the body (and its hash): re-applied.
        let other = ClusterOptions {
            broker_run_as_user: BrokerRunAsUser::Fixed(1001),
            ..ClusterOptions::default()
        };
        let fixed = statefulset(&cluster("orders"), &other, 1);
        assert_eq!(
            fixed["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
            1001
        );
        assert_eq!(
            fixed["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
            1001
        );
        let default = statefulset(&cluster("orders"), &ClusterOptions::default(), 1);
        assert!(!up_to_date(&sts, &default) && !up_to_date(&default, &sts));
        assert!(up_to_date(&sts, &sts));
    }

    #[test]
    fn claim_retention_and_disruption_budget() {
        let c = cluster("orders");
        let sts = statefulset(&c, &ClusterOptions::default(), 1);
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenScaled": "Retain", "whenDeleted": "Delete"})
        );
        // With an owner reference the garbage collector may delete the StatefulSet without a drain: claims stay.
        let owned = ClusterOptions {
            owner: Some(Owner {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "a".into(),
                uid: "u".into(),
            }),
            ..ClusterOptions::default()
        };
        let sts = statefulset(&c, &owned, 1);
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Retain"
        );
        let pdb = pod_disruption_budget(&c, &owned);
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(pdb["metadata"]["ownerReferences"][0]["uid"], "u");
        assert_eq!(pdb["metadata"]["labels"][MANAGED_BY_LABEL], MANAGER);
        assert!(up_to_date(&pdb, &pdb));
    }

    #[test]
    fn a_retention_policy_the_api_server_dropped_is_not_drift() {
        let want = statefulset(&cluster("orders"), &ClusterOptions::default(), 1);
        let mut live = want.clone();
        live["spec"]
            .as_object_mut()
            .unwrap()
            .remove("persistentVolumeClaimRetentionPolicy");
        assert!(
            up_to_date(&want, &live),
            "an API server without the feature drops it"
        );
        let mut changed = want.clone();
        changed["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] = json!("Retain");
        assert!(!up_to_date(&want, &changed), "a changed policy is drift");
    }

    #[test]
    fn up_to_date_compares_owned_fields_only() {
        let cfg = config(&[("orders", AddressKind::Queue, "big")]);
        let (clusters, _) = desired_clusters(&cfg);
        let opts = ClusterOptions::default();
        let want = statefulset(&clusters["orders"], &opts, 3);
        assert!(want["metadata"]["annotations"][SPEC_HASH_ANNOTATION].is_string());
        assert!(up_to_date(&want, &want));
        // Server-set and defaulted fields do not matter.
        let mut live = want.clone();
        live["metadata"]["uid"] = json!("u");
        live["spec"]["revisionHistoryLimit"] = json!(10);
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        live["spec"]["volumeClaimTemplates"][0]["status"] = json!({"phase": "Bound"});
        live["status"] = json!({"replicas": 3});
        assert!(up_to_date(&want, &live));
        // Our fields do.
        let mut drift = live.clone();
        drift["spec"]["replicas"] = json!(2);
        assert!(!up_to_date(&want, &drift));
        let mut drift = live.clone();
        drift["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap()
            .pop();
        assert!(!up_to_date(&want, &drift));
        let mut drift = live.clone();
        drift["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(SPEC_HASH_ANNOTATION);
        assert!(!up_to_date(&want, &drift));
        // Another desired body (different replicas) has another hash.
        assert!(!up_to_date(
            &statefulset(&clusters["orders"], &opts, 2),
            &live
        ));
        let svc = service(&clusters["orders"], &opts);
        assert!(up_to_date(&svc, &svc));
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("vanilla-queue"), "vanilla-queue");
        assert_eq!(label_value("Shared.Small_1"), "Shared.Small_1");
        assert_eq!(label_value(""), "");
        assert_eq!(label_value("a b"), dns1123_label("a b"));
        assert_eq!(label_value(&"x".repeat(64)), dns1123_label(&"x".repeat(64)));
    }

    #[test]
    fn manifests_name_files_per_cluster() {
        let cfg = config(&[
            ("orders", AddressKind::Queue, "big"),
            ("t", AddressKind::Topic, ""),
        ]);
        let (clusters, _) = desired_clusters(&cfg);
        let files: Vec<String> = manifests(&clusters, &ClusterOptions::default())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            files,
            vec![
                "orders-service.yaml",
                "orders-statefulset.yaml",
                "orders-pdb.yaml",
                "t-service.yaml",
                "t-statefulset.yaml",
                "t-pdb.yaml"
            ]
        );
    }
}
