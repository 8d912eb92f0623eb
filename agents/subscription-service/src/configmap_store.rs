//! `$subctrl`'s subscriptions in Kubernetes mode: a ConfigMap this service owns (default `maas-subscriptions`),
//! labelled `type=address-config` so that every maas source reading address ConfigMaps picks it up
//! (docs/architecture.md §5), its key `subscriptions.json` holding the same typed `Address` documents as the file
//! ([`crate::store::render_book`]).
//!
//! Read with a GET (a missing ConfigMap holds no subscription), written with a server-side apply, field manager
//! `maas-subscription-service`, forced (the pattern of agents/storage-controller/src/kube.rs): the service owns the
//! ConfigMap's labels it sets and its key, nothing else. RBAC: configmaps `get`, `patch` (and `create`, which the
//! API server checks for an apply that creates the object).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::store::{StoreError, parse_book, render_book};
use crate::subctrl::Book;

/// The ConfigMap key holding the subscriptions (a `*.json` key: typed Address documents).
pub const SUBSCRIPTIONS_KEY: &str = "subscriptions.json";
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "maas-subscription-service";
/// The ConfigMap's name by default.
pub const DEFAULT_CONFIGMAP: &str = "maas-subscriptions";

/// The subscriptions ConfigMap.
#[derive(Clone)]
pub struct ConfigMapStore {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    /// Bound on one API call.
    pub timeout: Duration,
}

impl std::fmt::Debug for ConfigMapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// The ConfigMap holding `book`, as applied.
pub fn desired_configmap(name: &str, namespace: &str, book: &Book) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "type": "address-config",
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
                "app.kubernetes.io/component": "subscription-service",
            },
        },
        "data": { SUBSCRIPTIONS_KEY: render_book(book) },
    })
}

impl ConfigMapStore {
    /// `ConfigMap <namespace>/<name>`, for logs and errors.
    pub fn describe(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    fn err(&self, reason: String) -> StoreError {
        StoreError::Format {
            path: self.describe(),
            reason,
        }
    }

    /// The subscriptions the ConfigMap holds (none when it or its key does not exist).
    pub async fn load_configmap(&self) -> Result<Book, StoreError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cm = match tokio::time::timeout(self.timeout, api.get_opt(&self.name)).await {
            Ok(Ok(cm)) => cm,
            Ok(Err(e)) => return Err(self.err(format!("cannot read it: {e}"))),
            Err(_) => {
                return Err(self.err(format!(
                    "cannot read it: no answer within {:?}",
                    self.timeout
                )));
            }
        };
        let data: BTreeMap<String, String> = cm.and_then(|c| c.data).unwrap_or_default();
        match data.get(SUBSCRIPTIONS_KEY) {
            None => Ok(Book::new()),
            Some(text) => {
                parse_book(text).map_err(|r| self.err(format!("key {SUBSCRIPTIONS_KEY}: {r}")))
            }
        }
    }

    /// Apply the ConfigMap holding `book`.
    pub async fn apply_configmap(&self, book: &Book) -> Result<(), StoreError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let body = desired_configmap(&self.name, &self.namespace, book);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match tokio::time::timeout(
            self.timeout,
            api.patch(&self.name, &params, &Patch::Apply(&body)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.err(format!("cannot write it: {e}"))),
            Err(_) => Err(self.err(format!(
                "cannot write it: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_configmap_is_an_address_config_with_the_typed_documents() {
        let book = Book::from([("c1".to_string(), "news".to_string())]);
        let cm = desired_configmap("maas-subscriptions", "maas", &book);
        assert_eq!(cm["metadata"]["labels"]["type"], "address-config");
        let data: BTreeMap<String, String> = serde_json::from_value(cm["data"].clone()).unwrap();
        // What the address pipeline reads: with the topic, the key validates like the file.
        let mut files = data.clone();
        files.insert(
            "json".into(),
            r#"{"news": {"store_and_forward": true, "multicast": true, "flavor": "t"}}"#.into(),
        );
        files.insert("flavor.json".into(), r#"{"t": {"type": "topic"}}"#.into());
        let config = maas_model::parse_config("cm", &files, None).unwrap();
        assert_eq!(
            config.addresses.get("c1").unwrap().topic.as_deref(),
            Some("news")
        );
        assert_eq!(parse_book(&data[SUBSCRIPTIONS_KEY]).unwrap(), book);
    }
}
