//! The router network with real `router-agent` processes, one per emulated router (the emulators, in this process,
//! see each other's connectors: e2e/src/router/mesh.rs). What an operator checks: every pair of interior routers is
//! joined by exactly one connector and `router.node` lists them all; a pod that joins or leaves changes only the
//! connectors that involve it and never an address entity; an agent restart writes nothing; a restarted router
//! gets everything back; an edge moves to another interior router when its own goes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use maas_amqp::options::ConnectOptions;
use maas_amqp::router::{ClientConfig, RouterClient};
use maas_e2e::router::{ADDRESS, CONNECTOR, EmulatorConfig, Mode, ROUTER_NODE, RouterEmulator};
use maas_e2e::support::{free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_router-agent");

struct Pod {
    name: String,
    emu: RouterEmulator,
    agent: Option<Child>,
    http: u16,
    mode: Mode,
}

impl Pod {
    async fn start(name: &str, mode: Mode) -> Pod {
        let emu = RouterEmulator::start(EmulatorConfig {
            router_id: format!("Router.{name}"),
            cost_model: false,
            mode,
            ..Default::default()
        })
        .await
        .unwrap();
        Pod {
            name: name.into(),
            emu,
            agent: None,
            http: free_port(),
            mode,
        }
    }

    fn spawn_agent(&mut self, addresses: &Path, routers: &Path) {
        let mode = if self.mode == Mode::Edge {
            "edge"
        } else {
            "interior"
        };
        let child = Command::new(BIN)
            .args(["run", "--router-url", &self.emu.url()])
            .args(["--addresses-dir", addresses.to_str().unwrap()])
            .args(["--routers-file", routers.to_str().unwrap()])
            .args(["--pod-name", &self.name, "--router-mode", mode])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .args(["--debounce", "50ms", "--drift-check-interval", "0s"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// SIGTERM and wait (the agent exits 0 within a few seconds).
    fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().unwrap();
            assert!(status.success(), "agent {} exited {status}", self.name);
        }
    }

    /// The agent's router holds its latest desired generation.
    fn converged(&self) -> bool {
        let Some((200, text)) = http_get(self.http, "/metrics") else {
            return false;
        };
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_string)
        };
        value("maas_router_agent_converged").as_deref() == Some("1")
            && value("maas_router_agent_desired_generation")
                == value("maas_router_agent_applied_generation")
    }

    fn mesh_connectors(&self) -> BTreeMap<String, String> {
        self.emu
            .entities(CONNECTOR)
            .into_iter()
            .filter_map(|r| {
                let name = r.get("name")?.as_str()?.to_string();
                let role = r.get("role")?.as_str()?.to_string();
                name.starts_with("maas-router-").then_some((name, role))
            })
            .collect()
    }

    /// name -> identity of the router's address entities, the generation marker included: an entity that was
    /// deleted and created again has a new identity.
    fn address_identities(&self) -> BTreeMap<String, String> {
        self.emu
            .entities(ADDRESS)
            .into_iter()
            .filter_map(|r| {
                let name = r.get("name")?.as_str()?.to_string();
                let id = r.get("identity")?.as_str()?.to_string();
                Some((name, id))
            })
            .collect()
    }

    fn connector_writes(&self) -> u64 {
        let c = self.emu.counters();
        ["CREATE", "DELETE", "UPDATE"]
            .iter()
            .map(|op| {
                c.by_type
                    .get(&(op.to_string(), CONNECTOR.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    async fn nodes(&self) -> Vec<String> {
        let c = RouterClient::connect(
            &ConnectOptions::from_url(&self.emu.url()).unwrap(),
            ClientConfig::default(),
        )
        .await
        .unwrap();
        let ids = c
            .query(ROUTER_NODE, &["id"])
            .await
            .unwrap()
            .into_iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        c.close().await;
        ids
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes the routers file (the interior pods) atomically, like a ConfigMap update.
fn write_routers(path: &Path, pods: &[&Pod]) {
    let list: Vec<serde_json::Value> = pods
        .iter()
        .filter(|p| p.mode == Mode::Interior)
        .map(|p| {
            serde_json::json!({"name": p.name, "host": "127.0.0.1", "port": p.emu.addr().port(),
                               "edgePort": p.emu.addr().port()})
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::Value::Array(list).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn all_converged(pods: &[&Pod]) {
    let ok = wait_until(Duration::from_secs(20), || {
        pods.iter().all(|p| p.converged())
    })
    .await;
    let state: Vec<String> = pods
        .iter()
        .map(|p| format!("{}: {:?}", p.name, http_get(p.http, "/readyz")))
        .collect();
    assert!(ok, "not converged: {state:?}");
}

/// Every pair of interior pods joined by exactly one connector, dialled by the higher name.
fn assert_full_mesh(pods: &[&Pod]) {
    let names: BTreeSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    for p in pods {
        let want: BTreeMap<String, String> = names
            .iter()
            .filter(|n| **n < p.name.as_str())
            .map(|n| (format!("maas-router-{n}"), "inter-router".to_string()))
            .collect();
        assert_eq!(p.mesh_connectors(), want, "connectors of {}", p.name);
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let addresses = dir.path().join("addresses");
    writer(&addresses)
        .write(&files(&[(
            "json",
            r#"{"orders": {}, "prices": {"multicast": true}, "chat": {}}"#,
        )]))
        .unwrap();
    let routers = dir.path().join("routers.json");
    (dir, addresses, routers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_form_one_mesh_and_pods_joining_or_leaving_change_only_their_connectors() {
    let (_dir, addresses, routers) = setup();
    let mut r0 = Pod::start("router-0", Mode::Interior).await;
    let mut r2 = Pod::start("router-2", Mode::Interior).await;
    let mut r4 = Pod::start("router-4", Mode::Interior).await;
    write_routers(&routers, &[&r0, &r2, &r4]);
    for p in [&mut r0, &mut r2, &mut r4] {
        p.spawn_agent(&addresses, &routers);
    }
    all_converged(&[&r0, &r2, &r4]).await;
    assert_full_mesh(&[&r0, &r2, &r4]);
    for p in [&r0, &r2, &r4] {
        assert_eq!(
            p.nodes().await,
            ["Router.router-0", "Router.router-2", "Router.router-4"]
        );
    }

    // A fourth pod joins, sorting between the others: it dials router-0 and router-2, router-4 dials it; nothing
    // else is written anywhere, and no address entity is touched.
    let before: Vec<_> = [&r0, &r2, &r4]
        .iter()
        .map(|p| p.address_identities())
        .collect();
    for p in [&r0, &r2, &r4] {
        p.emu.reset_counters();
    }
    let mut r3 = Pod::start("router-3", Mode::Interior).await;
    write_routers(&routers, &[&r0, &r2, &r3, &r4]);
    r3.spawn_agent(&addresses, &routers);
    let ok = wait_until(Duration::from_secs(20), || {
        r4.mesh_connectors().contains_key("maas-router-router-3")
    })
    .await;
    assert!(ok, "router-4 dials the new pod");
    all_converged(&[&r0, &r2, &r3, &r4]).await;
    assert_full_mesh(&[&r0, &r2, &r3, &r4]);
    assert_eq!(
        (
            r0.connector_writes(),
            r2.connector_writes(),
            r4.connector_writes(),
            r3.connector_writes()
        ),
        (0, 0, 1, 2),
        "connector writes on router-0, -2, -4 and the new router-3"
    );
    assert_eq!(
        r0.emu.counters().writes(),
        0,
        "router-0 is not touched at all"
    );
    assert_eq!(
        r2.emu.counters().writes(),
        0,
        "router-2 is not touched at all"
    );
    assert_eq!(
        r4.emu.counters().writes(),
        1,
        "router-4: its one new connector and nothing else (the generation marker stays)"
    );
    let after: Vec<_> = [&r0, &r2, &r4]
        .iter()
        .map(|p| p.address_identities())
        .collect();
    assert_eq!(before, after, "no address entity was recreated");
    assert_eq!(r3.nodes().await.len(), 4);

    // router-2 leaves: router-3 and router-4 delete their connector to it, router-0 is untouched.
    for p in [&r0, &r3, &r4] {
        p.emu.reset_counters();
    }
    r2.stop_agent();
    write_routers(&routers, &[&r0, &r3, &r4]);
    drop(r2);
    let ok = wait_until(Duration::from_secs(20), || {
        !r4.mesh_connectors().contains_key("maas-router-router-2")
            && !r3.mesh_connectors().contains_key("maas-router-router-2")
    })
    .await;
    assert!(ok, "connectors to the pod that left are deleted");
    all_converged(&[&r0, &r3, &r4]).await;
    assert_full_mesh(&[&r0, &r3, &r4]);
    assert_eq!(
        (
            r0.connector_writes(),
            r3.connector_writes(),
            r4.connector_writes()
        ),
        (0, 1, 1)
    );
    assert_eq!(r0.emu.counters().writes(), 0);
    assert_eq!(
        (r3.emu.counters().writes(), r4.emu.counters().writes()),
        (1, 1),
        "router-3 and router-4: one connector DELETE each, no address entity, no marker"
    );
    for p in [&r0, &r3, &r4] {
        assert_eq!(p.nodes().await.len(), 3, "{}", p.name);
    }

    // An agent restart writes nothing.
    r4.emu.reset_counters();
    r4.stop_agent();
    r4.spawn_agent(&addresses, &routers);
    all_converged(&[&r4]).await;
    assert_eq!(r4.emu.counters().writes(), 0, "agent restart: zero writes");

    // A mesh connector deleted by hand while the agent is down: the marker still matches (it leaves the mesh out),
    // so the restarted agent reads the connectors and recreates only that one.
    r4.stop_agent();
    let before = r4.address_identities();
    assert!(r4.emu.delete_by_hand(CONNECTOR, "maas-router-router-0"));
    r4.emu.reset_counters();
    r4.spawn_agent(&addresses, &routers);
    let ok = wait_until(Duration::from_secs(20), || {
        r4.mesh_connectors().contains_key("maas-router-router-0")
    })
    .await;
    assert!(
        ok,
        "the restarted agent recreates the missing mesh connector"
    );
    all_converged(&[&r4]).await;
    assert_eq!(
        r4.emu.counters().writes(),
        1,
        "one connector CREATE, nothing else"
    );
    assert_eq!(
        r4.address_identities(),
        before,
        "no address entity rewritten"
    );

    // A restarted router (state lost) gets everything back, its mesh connectors included.
    r4.emu.restart().await;
    let ok = wait_until(Duration::from_secs(20), || r4.mesh_connectors().len() == 2).await;
    assert!(ok, "mesh connectors replayed");
    all_converged(&[&r4]).await;
    assert_full_mesh(&[&r0, &r3, &r4]);
    // 3 address entities and the generation marker, written last.
    let ok = wait_until(Duration::from_secs(20), || {
        r4.address_identities()
            .contains_key(router_agent::plan::MARKER_NAME)
    })
    .await;
    assert!(ok, "the generation marker is written again");
    assert_eq!(
        r4.address_identities().len(),
        4,
        "addresses replayed too, with the marker"
    );

    for p in [&mut r0, &mut r3, &mut r4] {
        p.stop_agent();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_moves_to_another_interior_router_when_its_own_goes() {
    let (_dir, addresses, routers) = setup();
    let mut interiors = Vec::new();
    for i in 0..3 {
        interiors.push(Pod::start(&format!("router-{i}"), Mode::Interior).await);
    }
    let mut edge = Pod::start("edge-0", Mode::Edge).await;
    write_routers(&routers, &interiors.iter().collect::<Vec<_>>());
    edge.spawn_agent(&addresses, &routers);
    all_converged(&[&edge]).await;
    let first = edge.mesh_connectors();
    assert_eq!(first.len(), 1, "one uplink: {first:?}");
    let (uplink, role) = first.iter().next().unwrap();
    assert_eq!(role, "edge");
    let uplink_pod = uplink.strip_prefix("maas-router-").unwrap().to_string();
    // The interior router sees the edge (and does not count it as a mesh node).
    let host = interiors.iter().find(|p| p.name == uplink_pod).unwrap();
    assert_eq!(host.nodes().await, [format!("Router.{}", host.name)]);

    // Its interior router goes: the edge attaches to another one.
    interiors.retain(|p| p.name != uplink_pod);
    write_routers(&routers, &interiors.iter().collect::<Vec<_>>());
    let ok = wait_until(Duration::from_secs(20), || {
        let now = edge.mesh_connectors();
        now.len() == 1 && !now.contains_key(uplink)
    })
    .await;
    assert!(ok, "edge moved: {:?}", edge.mesh_connectors());
    all_converged(&[&edge]).await;
    let moved = edge.mesh_connectors();
    let new_pod = moved
        .keys()
        .next()
        .unwrap()
        .strip_prefix("maas-router-")
        .unwrap();
    assert!(interiors.iter().any(|p| p.name == new_pod));
    edge.stop_agent();
}
