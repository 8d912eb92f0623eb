//! The router emulator's mesh (e2e/src/router/mesh.rs) against what three real interior routers and an edge
//! router showed (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §2 and §6): connectors created over
//! management join the routers; `router.node` lists the interior routers of the mesh, `connection` lists who
//! dialled whom; a router that goes away leaves the mesh.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;

use maas_amqp::options::ConnectOptions;
use maas_amqp::router::{ClientConfig, RouterClient};
use maas_e2e::router::{CONNECTION, CONNECTOR, EmulatorConfig, Mode, ROUTER_NODE, RouterEmulator};
use serde_json::json;

async fn router(id: &str, mode: Mode) -> RouterEmulator {
    RouterEmulator::start(EmulatorConfig {
        router_id: id.into(),
        cost_model: false,
        mode,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn client(emu: &RouterEmulator) -> RouterClient {
    RouterClient::connect(
        &ConnectOptions::from_url(&emu.url()).unwrap(),
        ClientConfig::default(),
    )
    .await
    .unwrap()
}

async fn connect(c: &RouterClient, name: &str, role: &str, to: &RouterEmulator) {
    let attrs = json!({"role": role, "host": "127.0.0.1", "port": to.addr().port().to_string()});
    c.create(CONNECTOR, name, attrs.as_object().unwrap().clone())
        .await
        .unwrap();
}

async fn nodes(c: &RouterClient) -> Vec<String> {
    c.query(ROUTER_NODE, &["id"])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// "role dir" -> how many connections of that kind.
async fn connections(c: &RouterClient) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in c
        .query(CONNECTION, &["role", "dir", "container"])
        .await
        .unwrap()
    {
        let key = format!(
            "{} {}",
            r["role"].as_str().unwrap(),
            r["dir"].as_str().unwrap()
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_interior_routers_form_one_mesh_and_an_edge_attaches() {
    let (r1, r2, r3) = (
        router("Router.M1", Mode::Interior).await,
        router("Router.M2", Mode::Interior).await,
        router("Router.M3", Mode::Interior).await,
    );
    let (c1, c2, c3) = (client(&r1).await, client(&r2).await, client(&r3).await);
    // Alone, a router knows only itself.
    assert_eq!(nodes(&c1).await, ["Router.M1"]);
    // §2: R2->R1, R3->R1, R3->R2.
    connect(&c2, "maas-router-m1", "inter-router", &r1).await;
    connect(&c3, "maas-router-m1", "inter-router", &r1).await;
    connect(&c3, "maas-router-m2", "inter-router", &r2).await;
    for c in [&c1, &c2, &c3] {
        // "QUERY router.node on every router lists all three router ids"
        assert_eq!(nodes(c).await, ["Router.M1", "Router.M2", "Router.M3"]);
    }
    // "R1 connections: normal in, inter-router in, inter-router in"; "R3 connections: normal in, inter-router
    // out (to R1), inter-router out (to R2)".
    assert_eq!(
        connections(&c1).await,
        counts(&[("normal in", 1), ("inter-router in", 2)])
    );
    assert_eq!(
        connections(&c3).await,
        counts(&[("normal in", 1), ("inter-router out", 2)])
    );
    let row = c3
        .query(CONNECTION, &["role", "dir", "container"])
        .await
        .unwrap();
    let mut peers: Vec<String> = row
        .iter()
        .filter(|r| r["dir"] == json!("out"))
        .map(|r| r["container"].as_str().unwrap().to_string())
        .collect();
    peers.sort();
    assert_eq!(peers, ["Router.M1", "Router.M2"]);

    // §6: an edge router with a connector of role edge to an interior router. Edges are not mesh nodes.
    let edge = router("Router.E1", Mode::Edge).await;
    let ce = client(&edge).await;
    connect(&ce, "maas-router-m1", "edge", &r1).await;
    assert_eq!(nodes(&c1).await, ["Router.M1", "Router.M2", "Router.M3"]);
    assert_eq!(
        connections(&ce).await,
        counts(&[("normal in", 1), ("edge out", 1)])
    );
    assert_eq!(
        connections(&c1).await,
        counts(&[("normal in", 1), ("inter-router in", 2), ("edge in", 1)])
    );
    // A connector whose role does not fit (inter-router from an edge router) joins nothing, although the router
    // answers its CREATE with 201 (§6).
    connect(&ce, "maas-router-m2", "inter-router", &r2).await;
    assert_eq!(nodes(&c2).await, ["Router.M1", "Router.M2", "Router.M3"]);

    // R1 goes away: R2 and R3 still see each other.
    c1.close().await;
    r1.stop().await;
    for c in [&c2, &c3] {
        assert_eq!(nodes(c).await, ["Router.M2", "Router.M3"]);
    }
    // Paging works like any QUERY.
    let page = c3.query_page(ROUTER_NODE, &["id"], 1, 10).await.unwrap();
    assert_eq!(page.rows, vec![vec![json!("Router.M3")]]);
}
