//! The Kubernetes API calls of the subscription-service against a mocked API server (`tower_test::mock::pair`
//! behind `kube::Client::new`, the pattern of agents/storage-controller/tests/kube_mock.rs): `$subctrl`'s
//! subscriptions ConfigMap (GET, server-side apply with field manager `maas-subscription-service`, forced) and
//! the release annotation of a draining broker pod (JSON merge patch). Each request is checked exactly: method,
//! path, query, content type and body.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use subscription_service::configmap_store::{ConfigMapStore, SUBSCRIPTIONS_KEY};
use subscription_service::release::{KubePods, Releaser};
use subscription_service::store::{Store, render_book};
use subscription_service::subctrl::Book;
use tower_test::mock::{self, Handle};

const NS: &str = "maas";
const STEP: Duration = Duration::from_secs(2);

/// One request as the API server sees it.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// The next request, answered with `status` and `answer`.
async fn serve(
    handle: &mut Handle<Request<Body>, Response<Body>>,
    status: u16,
    answer: Value,
) -> Seen {
    let (req, send) = tokio::time::timeout(STEP, handle.next_request())
        .await
        .expect("a request in time")
        .expect("client alive");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    Seen {
        method,
        path,
        query,
        content_type,
        body,
    }
}

fn client() -> (kube::Client, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, NS), handle)
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": "configmaps \"maas-subscriptions\" not found"})
}

#[tokio::test]
async fn subctrl_subscriptions_live_in_a_configmap_applied_server_side() {
    let (client, mut api) = client();
    let store = Store::ConfigMap(ConfigMapStore {
        client,
        namespace: NS.into(),
        name: "maas-subscriptions".into(),
        timeout: STEP,
    });
    let path = format!("/api/v1/namespaces/{NS}/configmaps/maas-subscriptions");

    // No ConfigMap yet: no subscription.
    let load = tokio::spawn({
        let store = store.clone();
        async move { store.load().await }
    });
    let seen = serve(&mut api, 404, not_found()).await;
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::GET, path.as_str())
    );
    assert_eq!(load.await.unwrap().unwrap(), Book::new());

    // A subscription: the whole ConfigMap applied, labelled for the address pipeline.
    let book = Book::from([("c1".to_string(), "news".to_string())]);
    let save = tokio::spawn({
        let store = store.clone();
        let book = book.clone();
        async move { store.save(&book).await }
    });
    let applied = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "maas-subscriptions", "namespace": NS, "labels": {
            "type": "address-config",
            "app.kubernetes.io/managed-by": "maas-subscription-service",
            "app.kubernetes.io/component": "subscription-service"}},
        "data": {SUBSCRIPTIONS_KEY: render_book(&book)}
    });
    let seen = serve(&mut api, 200, applied.clone()).await;
    assert_eq!(
        (seen.method, seen.path.as_str()),
        (Method::PATCH, path.as_str())
    );
    assert!(
        seen.query
            .contains("fieldManager=maas-subscription-service")
            && seen.query.contains("force=true"),
        "{}",
        seen.query
    );
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(seen.body, applied);
    save.await.unwrap().unwrap();

    // Read back.
    let load = tokio::spawn({
        let store = store.clone();
        async move { store.load().await }
    });
    let seen = serve(&mut api, 200, applied).await;
    assert_eq!(seen.method, Method::GET);
    assert_eq!(load.await.unwrap().unwrap(), book);

    // An API error is one line naming the ConfigMap.
    let save = tokio::spawn({
        let store = store.clone();
        async move { store.save(&Book::new()).await }
    });
    let _ = serve(
        &mut api,
        403,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
               "message": "configmaps is forbidden"}),
    )
    .await;
    let e = save.await.unwrap().unwrap_err().to_string();
    assert!(
        e.starts_with("ConfigMap maas/maas-subscriptions: cannot write it:"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[tokio::test]
async fn a_released_pod_is_annotated_and_the_annotation_removed_when_it_stops_draining() {
    let (client, mut api) = client();
    let mut releaser = Releaser::new(
        None,
        Some(KubePods {
            client,
            namespace: NS.into(),
            timeout: STEP,
        }),
    );
    let task = tokio::spawn(async move {
        let (done, errors) = releaser
            .release(&BTreeSet::new(), &["news-1".to_string()])
            .await;
        let tidy = releaser
            .tidy(&BTreeSet::new(), &["news-2".to_string()])
            .await;
        (done, errors, tidy)
    });
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "news-1", "namespace": NS}});
    let seen = serve(&mut api, 200, pod.clone()).await;
    assert_eq!(
        (seen.method, seen.path.as_str(), seen.content_type.as_str()),
        (
            Method::PATCH,
            "/api/v1/namespaces/maas/pods/news-1",
            "application/merge-patch+json"
        )
    );
    assert_eq!(
        seen.body,
        json!({"metadata": {"annotations": {"maas.io/topics-released": "true"}}})
    );
    let seen = serve(&mut api, 200, pod).await;
    assert_eq!(seen.path, "/api/v1/namespaces/maas/pods/news-2");
    assert_eq!(
        seen.body,
        json!({"metadata": {"annotations": {"maas.io/topics-released": null}}})
    );
    let (done, errors, tidy) = task.await.unwrap();
    assert_eq!(done, ["news-1"]);
    assert!(errors.is_empty() && tidy.is_empty(), "{errors:?} {tidy:?}");
}
