//! The Kubernetes API calls of the controller, each bounded by a timeout and counted: listing the StatefulSets,
//! Services and PodDisruptionBudgets it manages, server-side apply (field manager `maas-storage-controller`, forced)
//! of each — skipped when the listed object already holds the desired one ([`up_to_date`]), so a pass with
//! nothing changed sends no PATCH —, deleting a cluster, annotating a broker pod (draining, provisioned: JSON merge
//! patch), and reading the owner ConfigMap's uid.
//!
//! Verbs used: statefulsets, services, poddisruptionbudgets (policy): list, patch (apply), delete; pods: patch;
//! configmaps: get (only with `--owner-configmap`). The pod list itself comes from a watch (get, list, watch).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use maas_model::pods::{CLUSTER_LABEL, DRAINING_ANNOTATION, TOPICS_RELEASED_ANNOTATION};
use serde_json::{Value, json};

use crate::PROVISIONED_ANNOTATION;
use crate::clusters::{
    BrokerCluster, ClusterOptions, MANAGER, Owner, REPLICAS_ANNOTATION, managed_selector,
    pod_disruption_budget, service, statefulset, up_to_date,
};
use crate::metrics::Metrics;
use crate::{Error, Result};

/// Default bound on one API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What the Kubernetes calls share.
#[derive(Clone)]
pub struct KubeCtx {
    pub client: Client,
    /// Namespace and object options (secret, owner).
    pub opts: ClusterOptions,
    pub metrics: Metrics,
    /// Bound on each API call.
    pub timeout: Duration,
    /// `--await-topic-release`: the drain of a pod of a cluster carrying topics also waits until subscription-service
    /// released it ([`TOPICS_RELEASED_ANNOTATION`], docs/architecture.md §5). Off in [`KubeCtx::new`].
    pub await_topic_release: bool,
}

/// A StatefulSet this controller manages, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCluster {
    /// StatefulSet (and Service, PodDisruptionBudget) name: [`crate::clusters::object_name`] of the cluster.
    pub name: String,
    /// The cluster it belongs to (its `maas.io/cluster` label; the object name when it has none).
    pub cluster: String,
    /// The most pods it may have had with a claim: `spec.replicas`, or more when the controller's last apply asked
    /// for more ([`REPLICAS_ANNOTATION`]: someone scaled it down behind the controller's back, undrained).
    pub replicas: i32,
    /// The object as listed (JSON), compared with the desired one before applying.
    pub object: Value,
}

/// A Service or PodDisruptionBudget this controller manages, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The cluster it belongs to (its `maas.io/cluster` label; the object name when it has none).
    pub cluster: String,
    /// The object as listed (JSON).
    pub object: Value,
}

fn cluster_of(object: &Value, name: &str) -> String {
    object["metadata"]["labels"][CLUSTER_LABEL]
        .as_str()
        .unwrap_or(name)
        .to_string()
}

impl KubeCtx {
    /// A context for `client` with the default timeout.
    pub fn new(client: Client, opts: ClusterOptions, metrics: Metrics) -> Self {
        KubeCtx {
            client,
            opts,
            metrics,
            timeout: API_TIMEOUT,
            await_topic_release: false,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.opts.namespace)
    }

    /// Run one API call under the timeout, counting it.
    async fn call<T>(
        &self,
        operation: &'static str,
        kind: &'static str,
        name: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        let r = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Kube {
                operation,
                kind,
                name: name.to_string(),
                source,
            }),
            Err(_) => Err(Error::KubeTimeout {
                operation,
                kind,
                name: name.to_string(),
                seconds: self.timeout.as_secs(),
            }),
        };
        let label = match &r {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        self.metrics.api_op(operation, kind, label);
        r
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(MANAGER).force()
    }

    /// The StatefulSets this controller manages (label `app.kubernetes.io/managed-by=maas-storage-controller`), by
    /// object name.
    pub async fn list_clusters(&self) -> Result<BTreeMap<String, ExistingCluster>> {
        let api: Api<StatefulSet> = self.api();
        let lp = ListParams::default().labels(&managed_selector());
        let list = self.call("list", "StatefulSet", "", api.list(&lp)).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                let spec_replicas = s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1);
                let applied = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REPLICAS_ANNOTATION))
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let object = serde_json::to_value(&s).unwrap_or(Value::Null);
                Some((
                    name.clone(),
                    ExistingCluster {
                        cluster: cluster_of(&object, &name),
                        name,
                        replicas: spec_replicas.max(applied),
                        object,
                    },
                ))
            })
            .collect())
    }

    /// The Services this controller manages, by object name, as listed.
    pub async fn list_services(&self) -> Result<BTreeMap<String, Listed>> {
        let api: Api<Service> = self.api();
        let lp = ListParams::default().labels(&managed_selector());
        let list = self.call("list", "Service", "", api.list(&lp)).await?;
        Ok(listed(list.items.into_iter().filter_map(|s| {
            Some((
                s.metadata.name.clone()?,
                serde_json::to_value(&s).unwrap_or(Value::Null),
            ))
        })))
    }

    /// The PodDisruptionBudgets this controller manages, by object name, as listed.
    pub async fn list_pdbs(&self) -> Result<BTreeMap<String, Listed>> {
        let api: Api<PodDisruptionBudget> = self.api();
        let lp = ListParams::default().labels(&managed_selector());
        let list = self
            .call("list", "PodDisruptionBudget", "", api.list(&lp))
            .await?;
        Ok(listed(list.items.into_iter().filter_map(|s| {
            Some((
                s.metadata.name.clone()?,
                serde_json::to_value(&s).unwrap_or(Value::Null),
            ))
        })))
    }

    /// Apply the cluster's Service unless `live` (as listed) already holds it. True when a PATCH was sent.
    pub async fn ensure_service(
        &self,
        cluster: &BrokerCluster,
        live: Option<&Value>,
    ) -> Result<bool> {
        if live.is_some_and(|l| up_to_date(&service(cluster, &self.opts), l)) {
            return Ok(false);
        }
        self.apply_service(cluster).await.map(|()| true)
    }

    /// Apply the cluster's StatefulSet with `replicas` pods unless `live` (as listed) already holds it. True when
    /// a PATCH was sent.
    pub async fn ensure_statefulset(
        &self,
        cluster: &BrokerCluster,
        replicas: i32,
        live: Option<&Value>,
    ) -> Result<bool> {
        if live.is_some_and(|l| up_to_date(&statefulset(cluster, &self.opts, replicas), l)) {
            return Ok(false);
        }
        self.apply_statefulset(cluster, replicas)
            .await
            .map(|()| true)
    }

    /// Apply the cluster's PodDisruptionBudget unless `live` (as listed) already holds it. True when a PATCH was
    /// sent.
    pub async fn ensure_pdb(&self, cluster: &BrokerCluster, live: Option<&Value>) -> Result<bool> {
        if live.is_some_and(|l| up_to_date(&pod_disruption_budget(cluster, &self.opts), l)) {
            return Ok(false);
        }
        self.apply_pdb(cluster).await.map(|()| true)
    }

    /// Server-side apply of the cluster's headless Service.
    pub async fn apply_service(&self, cluster: &BrokerCluster) -> Result<()> {
        let api: Api<Service> = self.api();
        let body = service(cluster, &self.opts);
        let name = cluster.object_name();
        self.call(
            "apply",
            "Service",
            &name,
            api.patch(&name, &Self::apply_params(), &Patch::Apply(&body)),
        )
        .await
        .map(|_| ())
    }

    /// Server-side apply of the cluster's StatefulSet with `replicas` pods.
    pub async fn apply_statefulset(&self, cluster: &BrokerCluster, replicas: i32) -> Result<()> {
        let api: Api<StatefulSet> = self.api();
        let body = statefulset(cluster, &self.opts, replicas);
        let name = cluster.object_name();
        self.call(
            "apply",
            "StatefulSet",
            &name,
            api.patch(&name, &Self::apply_params(), &Patch::Apply(&body)),
        )
        .await
        .map(|_| ())
    }

    /// Server-side apply of the cluster's PodDisruptionBudget.
    pub async fn apply_pdb(&self, cluster: &BrokerCluster) -> Result<()> {
        let api: Api<PodDisruptionBudget> = self.api();
        let body = pod_disruption_budget(cluster, &self.opts);
        let name = cluster.object_name();
        self.call(
            "apply",
            "PodDisruptionBudget",
            &name,
            api.patch(&name, &Self::apply_params(), &Patch::Apply(&body)),
        )
        .await
        .map(|_| ())
    }

    /// Delete a cluster's StatefulSet, then its PodDisruptionBudget and Service (404 = already gone); `name` is the
    /// object name. The claims go with the StatefulSet (`whenDeleted: Delete`: every pod was drained first) unless
    /// an owner reference is set or the API server does not know the retention policy (then they stay).
    pub async fn delete_cluster(&self, name: &str) -> Result<()> {
        let sts: Api<StatefulSet> = self.api();
        let dp = DeleteParams::foreground();
        ignore_not_found(
            self.call("delete", "StatefulSet", name, sts.delete(name, &dp))
                .await
                .map(|_| ()),
        )?;
        self.delete_pdb(name).await?;
        self.delete_service(name).await
    }

    /// Delete a managed Service (404 = already gone), e.g. one left behind without its StatefulSet.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        let svc: Api<Service> = self.api();
        let dp = DeleteParams::foreground();
        ignore_not_found(
            self.call("delete", "Service", name, svc.delete(name, &dp))
                .await
                .map(|_| ()),
        )
    }

    /// Delete a managed PodDisruptionBudget (404 = already gone).
    pub async fn delete_pdb(&self, name: &str) -> Result<()> {
        let api: Api<PodDisruptionBudget> = self.api();
        let dp = DeleteParams::foreground();
        ignore_not_found(
            self.call("delete", "PodDisruptionBudget", name, api.delete(name, &dp))
                .await
                .map(|_| ()),
        )
    }

    /// Mark a broker pod as draining (`maas.io/draining: "true"`), or clear the mark.
    pub async fn set_draining(&self, pod: &str, draining: bool) -> Result<()> {
        let value = if draining { json!("true") } else { Value::Null };
        self.annotate_pod(pod, DRAINING_ANNOTATION, value).await
    }

    /// Clear the draining mark of a broker pod that no longer goes away and, in the same merge patch, the release
    /// subscription-service gave it ([`TOPICS_RELEASED_ANNOTATION`]): a stale release must not let a later drain of
    /// the same pod skip its hand-over (subscription-service removes it too, on its next pass).
    pub async fn clear_draining_and_release(&self, pod: &str) -> Result<()> {
        let api: Api<Pod> = self.api();
        let body = json!({"metadata": {"annotations": {
            DRAINING_ANNOTATION: Value::Null,
            TOPICS_RELEASED_ANNOTATION: Value::Null,
        }}});
        self.call(
            "annotate",
            "Pod",
            pod,
            api.patch(pod, &PatchParams::default(), &Patch::Merge(&body)),
        )
        .await
        .map(|_| ())
    }

    /// Set [`PROVISIONED_ANNOTATION`] of a broker pod to `hash` (what it holds is provisioned).
    pub async fn set_provisioned(&self, pod: &str, hash: &str) -> Result<()> {
        self.annotate_pod(pod, PROVISIONED_ANNOTATION, json!(hash))
            .await
    }

    /// JSON merge patch of one annotation of a pod (`null` removes it).
    async fn annotate_pod(&self, pod: &str, key: &str, value: Value) -> Result<()> {
        let api: Api<Pod> = self.api();
        let body = json!({"metadata": {"annotations": {key: value}}});
        self.call(
            "annotate",
            "Pod",
            pod,
            api.patch(pod, &PatchParams::default(), &Patch::Merge(&body)),
        )
        .await
        .map(|_| ())
    }

    /// The owner reference target for ConfigMap `name` (its uid read from the API).
    pub async fn configmap_owner(&self, name: &str) -> Result<Owner> {
        let api: Api<ConfigMap> = self.api();
        let cm = self.call("get", "ConfigMap", name, api.get(name)).await?;
        Ok(Owner {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: name.to_string(),
            uid: cm.metadata.uid.unwrap_or_default(),
        })
    }
}

fn listed(items: impl Iterator<Item = (String, Value)>) -> BTreeMap<String, Listed> {
    items
        .map(|(name, object)| {
            (
                name.clone(),
                Listed {
                    cluster: cluster_of(&object, &name),
                    object,
                },
            )
        })
        .collect()
}

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 404 => Ok(()),
        other => other,
    }
}
