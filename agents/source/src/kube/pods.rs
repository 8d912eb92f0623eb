//! The pods of a namespace as [`PodInfo`] (config-service's `podsense`, docs/architecture.md §3), from a kube-runtime
//! watcher on Pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Api, Client};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use maas_model::pods::PodInfo;
use tokio::sync::watch;
use tracing::debug;

use super::index::Index;

/// What the pod source holds right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodsState {
    /// Every pod of the namespace, sorted by name.
    pub pods: Vec<PodInfo>,
    /// True once the first complete list is done.
    pub synced: bool,
}

/// Annotation prefix kept in [`PodInfo::annotations`] (the ones maas reads); others (e.g. kubectl's
/// last-applied-configuration) are left out of snapshots.
pub const KEPT_ANNOTATION_PREFIX: &str = "maas.io/";

/// A pod as `podsense` reports it: `host` is the pod IP (empty while unassigned), `phase` the pod phase
/// (`Pending` while unreported), `ready` its Ready condition (false once it is terminating), `ports` container ->
/// port name -> number (unnamed ports keyed by their number; containers without ports left out).
pub fn pod_info(pod: &Pod) -> PodInfo {
    let status = pod.status.as_ref();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = !terminating
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let mut ports = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let mut named = BTreeMap::new();
        for p in c.ports.iter().flatten() {
            let Ok(number) = u16::try_from(p.container_port) else {
                continue;
            };
            let name = p.name.clone().unwrap_or_else(|| number.to_string());
            named.insert(name, number);
        }
        if !named.is_empty() {
            ports.insert(c.name.clone(), named);
        }
    }
    PodInfo {
        name: pod.metadata.name.clone().unwrap_or_default(),
        host: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_string()),
        ready,
        ports,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        annotations: pod
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(KEPT_ANNOTATION_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Watch all pods of `namespace` and publish a [`PodsState`] whenever the pod set changes. While the API server is
/// away the last state stays published; the watcher re-lists with backoff. Must be called inside a tokio runtime;
/// the task ends when every receiver is dropped.
pub fn spawn_kube_pods(client: Client, namespace: String) -> watch::Receiver<Arc<PodsState>> {
    let (tx, rx) = watch::channel(Arc::new(PodsState::default()));
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, &namespace);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut index: Index<PodInfo> = Index::default();
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                _ = tx.closed() => break,
            };
            match event {
                Some(Ok(ev)) => {
                    if !index.apply(ev, |p| pod_info(&p)) || !index.synced() {
                        continue;
                    }
                }
                Some(Err(e)) => {
                    super::log_watch_error(&namespace, "pods", &e);
                    continue;
                }
                None => break,
            }
            let next = PodsState {
                pods: index.objects().values().cloned().collect(),
                synced: true,
            };
            if **tx.borrow() != next {
                debug!(namespace = %namespace, pods = next.pods.len(), "pod set changed");
                tx.send_replace(Arc::new(next));
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use maas_model::pods::{DRAINING_ANNOTATION, TOPICS_RELEASED_ANNOTATION};

    /// The annotations maas reads reach every consumer of the pod list (router-agent, storage-controller,
    /// subscription-service, config-service `podsense`): draining, provisioned and the topic release.
    #[test]
    fn maas_annotations_are_kept_and_others_left_out() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-0", "annotations": {
                DRAINING_ANNOTATION: "true",
                TOPICS_RELEASED_ANNOTATION: "true",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"
            }},
            "status": {"podIP": "10.0.0.1", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let info = pod_info(&pod);
        assert_eq!(
            info.annotations
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            [DRAINING_ANNOTATION, TOPICS_RELEASED_ANNOTATION]
        );
        assert!(info.ready);
    }
}
