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

use std::collections::BTreeMap;

use maas_model::pods::{BROKER_COMPONENT, CLUSTER_LABEL, COMPONENT_LABEL};
use maas_model::{Config, Flavor, cluster_for, dns1123_label};
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
/// Label selector of everything this controller manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{COMPONENT_LABEL}={BROKER_COMPONENT}")
}

/// One broker cluster as the addresses and their flavor ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerCluster {
    /// DNS-1123 cluster name: the StatefulSet, the Service, and the `maas.io/cluster` label.
    pub name: String,
    /// The flavor the settings came from (empty when the address had none).
    pub flavor: String,
    /// True when the cluster is a shared flavor's cluster.
    pub shared: bool,
    /// The addresses placed on it, in order.
    pub addresses: Vec<String>,
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

/// What is not in the address configuration but shapes the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Namespace of the objects.
    pub namespace: String,
    /// Secret with keys `username` and `password` given to the broker as AMQ_USER / AMQ_PASSWORD (the user the
    /// controller and the routers log in as). None: no credentials are set (the image then makes its own).
    pub broker_secret: Option<String>,
    /// Owner of every object (e.g. the address ConfigMap), when known. Off by default: garbage collection of an
    /// owner deletes brokers WITHOUT draining them.
    pub owner: Option<Owner>,
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
            c.addresses.push(address.address.clone());
            continue;
        }
        let flavor = config.flavors.get(&flavor_name);
        let mut c = from_flavor(&name, &flavor_name, flavor);
        c.addresses.push(address.address.clone());
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
    m.insert("name".into(), json!(cluster.name));
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
/// above it drain).
pub fn statefulset(cluster: &BrokerCluster, opts: &ClusterOptions, replicas: i32) -> Value {
    let mut env = vec![
        json!({"name": "AMQ_NAME", "value": "broker"}),
        json!({"name": "AMQ_ROLE", "value": "admin"}),
        json!({"name": "AMQ_DATA_DIR", "value": DATA_DIR}),
        json!({"name": "AMQ_EXTRA_ARGS", "value": "--nio --relax-jolokia"}),
    ];
    if let Some(secret) = &opts.broker_secret {
        env.push(json!({"name": "AMQ_USER", "valueFrom": {"secretKeyRef": {"name": secret, "key": "username"}}}));
        env.push(json!({"name": "AMQ_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}));
    }
    let mut container = json!({
        "name": "broker",
        "image": cluster.image,
        "ports": [{"name": "amqp", "containerPort": AMQP_PORT, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": {"tcpSocket": {"port": "amqp"}, "periodSeconds": 5},
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
    with_spec_hash(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(cluster, opts),
        "spec": {
            "replicas": replicas,
            "serviceName": cluster.name,
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": selector(cluster)},
            "template": {
                "metadata": {"labels": cluster_labels(cluster)},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 60},
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
pub fn up_to_date(desired: &Value, live: &Value) -> bool {
    let hash = |v: &Value| v["metadata"]["annotations"][SPEC_HASH_ANNOTATION].clone();
    if hash(desired).is_null() || hash(desired) != hash(live) {
        return false;
    }
    ["labels", "annotations", "ownerReferences"]
        .iter()
        .all(|k| contained(&desired["metadata"][*k], &live["metadata"][*k]))
        && contained(&desired["spec"], &live["spec"])
}

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

/// Every object `render` writes, as (file name, object): `<cluster>-service.yaml` and `<cluster>-statefulset.yaml`
/// per cluster, in cluster order.
pub fn manifests(
    clusters: &BTreeMap<String, BrokerCluster>,
    opts: &ClusterOptions,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for c in clusters.values() {
        out.push((format!("{}-service.yaml", c.name), service(c, opts)));
        out.push((
            format!("{}-statefulset.yaml", c.name),
            statefulset(c, opts, c.replicas),
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use maas_model::{Address, AddressKind, AddressSet, FlavorSet};

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
            broker_secret: Some("broker-creds".into()),
            owner: Some(Owner {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "addresses".into(),
                uid: "u-1".into(),
            }),
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
        assert_eq!(
            c["env"][4]["valueFrom"]["secretKeyRef"]["name"],
            "broker-creds"
        );
        assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(sts["metadata"]["annotations"][ADDRESS_ANNOTATION], "orders");
        let svc = service(&clusters["orders"], &opts);
        let _: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc.clone()).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "None");
        // Same input, same body (idempotent apply).
        assert_eq!(sts, statefulset(&clusters["orders"], &opts, 3));
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
                "t-service.yaml",
                "t-statefulset.yaml"
            ]
        );
    }
}
