//! The Kubernetes API calls of the controller, each bounded by a timeout and counted: listing the StatefulSets and
//! Services it manages, server-side apply (field manager `maas-storage-controller`, forced) of Services and
//! StatefulSets — skipped when the listed object already holds the desired one ([`up_to_date`]), so a pass with
//! nothing changed sends no PATCH —, deleting a cluster, marking a broker pod as draining, and reading the owner
//! ConfigMap's uid.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use maas_model::pods::DRAINING_ANNOTATION;
use serde_json::{Value, json};

use crate::clusters::{
    BrokerCluster, ClusterOptions, MANAGER, Owner, managed_selector, service, statefulset,
    up_to_date,
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
}

/// A StatefulSet this controller manages, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCluster {
    /// StatefulSet (and Service) name = cluster name.
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// The object as listed (JSON), compared with the desired one before applying.
    pub object: Value,
}

impl KubeCtx {
    /// A context for `client` with the default timeout.
    pub fn new(client: Client, opts: ClusterOptions, metrics: Metrics) -> Self {
        KubeCtx {
            client,
            opts,
            metrics,
            timeout: API_TIMEOUT,
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

    /// The StatefulSets this controller manages (label `app.kubernetes.io/managed-by=maas-storage-controller`).
    pub async fn list_clusters(&self) -> Result<BTreeMap<String, ExistingCluster>> {
        let api: Api<StatefulSet> = self.api();
        let lp = ListParams::default().labels(&managed_selector());
        let list = self.call("list", "StatefulSet", "", api.list(&lp)).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                let replicas = s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1);
                let object = serde_json::to_value(&s).unwrap_or(Value::Null);
                Some((
                    name.clone(),
                    ExistingCluster {
                        name,
                        replicas,
                        object,
                    },
                ))
            })
            .collect())
    }

    /// The Services this controller manages, by name, as listed (JSON).
    pub async fn list_services(&self) -> Result<BTreeMap<String, Value>> {
        let api: Api<Service> = self.api();
        let lp = ListParams::default().labels(&managed_selector());
        let list = self.call("list", "Service", "", api.list(&lp)).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                Some((name, serde_json::to_value(&s).unwrap_or(Value::Null)))
            })
            .collect())
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

    /// Server-side apply of the cluster's headless Service.
    pub async fn apply_service(&self, cluster: &BrokerCluster) -> Result<()> {
        let api: Api<Service> = self.api();
        let body = service(cluster, &self.opts);
        self.call(
            "apply",
            "Service",
            &cluster.name,
            api.patch(&cluster.name, &Self::apply_params(), &Patch::Apply(&body)),
        )
        .await
        .map(|_| ())
    }

    /// Server-side apply of the cluster's StatefulSet with `replicas` pods.
    pub async fn apply_statefulset(&self, cluster: &BrokerCluster, replicas: i32) -> Result<()> {
        let api: Api<StatefulSet> = self.api();
        let body = statefulset(cluster, &self.opts, replicas);
        self.call(
            "apply",
            "StatefulSet",
            &cluster.name,
            api.patch(&cluster.name, &Self::apply_params(), &Patch::Apply(&body)),
        )
        .await
        .map(|_| ())
    }

    /// Delete a cluster's StatefulSet, then its Service (404 = already gone). The claims stay (StatefulSet
    /// default): the journal is kept for an operator even after a drained removal.
    pub async fn delete_cluster(&self, name: &str) -> Result<()> {
        let sts: Api<StatefulSet> = self.api();
        let dp = DeleteParams::foreground();
        ignore_not_found(
            self.call("delete", "StatefulSet", name, sts.delete(name, &dp))
                .await
                .map(|_| ()),
        )?;
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

    /// Mark a broker pod as draining (`maas.io/draining: "true"`), or clear the mark.
    pub async fn set_draining(&self, pod: &str, draining: bool) -> Result<()> {
        let api: Api<Pod> = self.api();
        let value = if draining { json!("true") } else { Value::Null };
        let body = json!({"metadata": {"annotations": {DRAINING_ANNOTATION: value}}});
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

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Kube {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 404 => Ok(()),
        other => other,
    }
}
