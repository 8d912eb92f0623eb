//! The router network as emulated routers see it. Every emulator started in a process registers itself here;
//! an emulated router holding a `connector` (created over management like any other) whose host is a loopback
//! address and whose port is another emulator's port is "connected" to that router, as a real router's connector
//! connects to the listener it names:
//!
//! - role `inter-router` between two interior routers: an inter-router connection, both routers are nodes of one
//!   mesh (docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §2: with R2->R1, R3->R1, R3->R2 every router
//!   lists all three in `router.node`; R1 shows two `inter-router` `in` connections, R3 two `out`);
//! - role `edge` from an edge router to an interior one: an edge connection; edges are not mesh nodes (§6:
//!   `router.node` on the interior lists only interior routers; edge connections: `edge out` on the edge, `edge in`
//!   on the interior).
//!
//! `router.node` and `connection` QUERYs are answered from this view (computed when asked: the real router
//! learns a new neighbour within about a second, the emulator at once).
//!
//! Guesses (e2e/GUESSES.md #26a): the attributes filled in rows beyond `id`/`role`/`dir`/`container` (cost, nextHop,
//! linkState, host text); an edge router's `router.node` lists only itself; a connector whose role does not fit the
//! two routers' modes (e.g. `inter-router` from an edge) connects nothing (the real router would fail the
//! connection; §6 shows it accepts the CREATE); a connector to a port nobody listens on shows no connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use fe2o3_amqp::types::primitives::Value;

use super::core::Shared;
use super::model::{CONNECTOR, Kind, Reply, Request};

/// Full type name of router nodes.
pub const ROUTER_NODE: &str = "org.apache.qpid.dispatch.router.node";
/// Full type name of connections.
pub const CONNECTION: &str = "org.apache.qpid.dispatch.connection";

/// How an emulated router runs (its `router` entity's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Part of the mesh.
    #[default]
    Interior,
    /// Attached to an interior router.
    Edge,
}

struct Node {
    port: u16,
    router_id: String,
    mode: Mode,
    shared: Weak<Shared>,
}

fn registry() -> &'static Mutex<Vec<Node>> {
    static REGISTRY: OnceLock<Mutex<Vec<Node>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers a started emulator.
pub fn register(port: u16, router_id: &str, mode: Mode, shared: &Arc<Shared>) {
    let mut nodes = registry().lock().unwrap_or_else(|e| e.into_inner());
    nodes.retain(|n| n.port != port && n.shared.strong_count() > 0);
    nodes.push(Node {
        port,
        router_id: router_id.to_string(),
        mode,
        shared: Arc::downgrade(shared),
    });
}

/// Forgets a stopped emulator.
pub fn unregister(port: u16) {
    let mut nodes = registry().lock().unwrap_or_else(|e| e.into_inner());
    nodes.retain(|n| n.port != port);
}

/// QUERYs this module answers.
pub fn handles(req: &Request) -> bool {
    req.operation == "QUERY" && matches!(req.entity_type.as_deref(), Some(ROUTER_NODE | CONNECTION))
}

/// One connection between two emulated routers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Link {
    from: u16,
    to: u16,
    role: String,
}

struct Live {
    router_id: String,
    mode: Mode,
    shared: Arc<Shared>,
}

/// Every live emulator and the links between them. Each model is locked on its own, never two at once.
fn snapshot() -> (BTreeMap<u16, Live>, Vec<Link>) {
    let nodes: Vec<(u16, String, Mode, Weak<Shared>)> = {
        let nodes = registry().lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .map(|n| (n.port, n.router_id.clone(), n.mode, n.shared.clone()))
            .collect()
    };
    let live: BTreeMap<u16, Live> = nodes
        .into_iter()
        .filter_map(|(port, router_id, mode, w)| {
            w.upgrade().map(|shared| {
                (
                    port,
                    Live {
                        router_id,
                        mode,
                        shared,
                    },
                )
            })
        })
        .collect();
    let mut links = BTreeSet::new();
    for (port, node) in &live {
        let Some(kind) = Kind::from_full(CONNECTOR) else {
            continue;
        };
        for row in node.shared.model().snapshot(kind) {
            let text = |k: &str| {
                row.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let role = text("role");
            let host = text("host");
            let Ok(to) = text("port").parse::<u16>() else {
                continue;
            };
            if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") || to == *port {
                continue;
            }
            let Some(peer) = live.get(&to) else { continue };
            let fits = match role.as_str() {
                "inter-router" => node.mode == Mode::Interior && peer.mode == Mode::Interior,
                "edge" => node.mode == Mode::Edge && peer.mode == Mode::Interior,
                _ => false,
            };
            if fits {
                links.insert(Link {
                    from: *port,
                    to,
                    role,
                });
            }
        }
    }
    (live, links.into_iter().collect())
}

/// The reply to a `router.node` or `connection` QUERY on the emulator listening on `own`, paged like every
/// QUERY (`offset`, `count`, `attributeNames`).
pub fn query(own: u16, req: &Request) -> Reply {
    let (live, links) = snapshot();
    let own_id = live
        .get(&own)
        .map(|n| n.router_id.clone())
        .unwrap_or_default();
    let open_clients = live
        .get(&own)
        .map(|n| n.shared.open_connections())
        .unwrap_or(0);
    let id_of = |p: u16| {
        live.get(&p)
            .map(|n| n.router_id.clone())
            .unwrap_or_default()
    };
    let (columns, rows): (&[&str], Vec<BTreeMap<&str, Value>>) =
        if req.entity_type.as_deref() == Some(ROUTER_NODE) {
            (NODE_COLUMNS, node_rows(own, &live, &links, &id_of))
        } else {
            let mut rows = Vec::new();
            for _ in 0..open_clients {
                rows.push(connection_row("normal", "in", "127.0.0.1", ""));
            }
            for l in &links {
                if l.from == own {
                    rows.push(connection_row(
                        &l.role,
                        "out",
                        &format!("127.0.0.1:{}", l.to),
                        &id_of(l.to),
                    ));
                } else if l.to == own {
                    rows.push(connection_row(&l.role, "in", "127.0.0.1", &id_of(l.from)));
                }
            }
            let _ = &own_id;
            (CONNECTION_COLUMNS, rows)
        };
    let asked = attribute_names(&req.body);
    let names: Vec<String> = if asked.is_empty() {
        columns.iter().map(|c| c.to_string()).collect()
    } else {
        asked
    };
    let offset = req.offset.unwrap_or(0) as usize;
    let count = req.count.map_or(usize::MAX, |c| c as usize);
    let results: Vec<Value> = rows
        .iter()
        .skip(offset)
        .take(count)
        .map(|r| {
            Value::List(
                names
                    .iter()
                    .map(|n| r.get(n.as_str()).cloned().unwrap_or(Value::Null))
                    .collect(),
            )
        })
        .collect();
    let s = |t: &str| Value::String(t.to_string());
    let body = Value::Map(
        [
            (
                s("attributeNames"),
                Value::List(names.iter().map(|n| s(n)).collect()),
            ),
            (s("results"), Value::List(results)),
        ]
        .into_iter()
        .collect(),
    );
    Reply::new(200, "OK", body)
}

const NODE_COLUMNS: &[&str] = &[
    "name",
    "identity",
    "type",
    "id",
    "protocolVersion",
    "instance",
    "linkState",
    "nextHop",
    "validOrigins",
    "address",
    "routerLink",
    "cost",
    "lastTopoChange",
    "index",
];

const CONNECTION_COLUMNS: &[&str] = &[
    "name",
    "identity",
    "type",
    "container",
    "host",
    "dir",
    "role",
    "opened",
    "operStatus",
    "adminStatus",
];

fn node_rows<'a>(
    own: u16,
    live: &BTreeMap<u16, Live>,
    links: &[Link],
    id_of: &dyn Fn(u16) -> String,
) -> Vec<BTreeMap<&'a str, Value>> {
    let own_mode = live.get(&own).map(|n| n.mode).unwrap_or_default();
    // Interior neighbours, undirected.
    let mut adjacent: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
    for l in links.iter().filter(|l| l.role == "inter-router") {
        adjacent.entry(l.from).or_default().insert(l.to);
        adjacent.entry(l.to).or_default().insert(l.from);
    }
    // Breadth-first from this router: hop count and the first hop.
    let mut reached: BTreeMap<u16, (u32, Option<u16>)> = BTreeMap::new();
    reached.insert(own, (0, None));
    if own_mode == Mode::Interior {
        let mut queue = VecDeque::from([own]);
        while let Some(at) = queue.pop_front() {
            let (hops, first) = reached.get(&at).copied().unwrap_or((0, None));
            for &next in adjacent.get(&at).into_iter().flatten() {
                if reached.contains_key(&next) {
                    continue;
                }
                let first = first.or(Some(next));
                reached.insert(next, (hops + 1, first));
                queue.push_back(next);
            }
        }
    }
    let s = |t: &str| Value::String(t.to_string());
    let mut rows: Vec<(String, BTreeMap<&str, Value>)> = reached
        .iter()
        .map(|(&port, &(hops, first))| {
            let id = id_of(port);
            let neighbours: Vec<Value> = adjacent
                .get(&port)
                .into_iter()
                .flatten()
                .map(|p| s(&id_of(*p)))
                .collect();
            let next_hop = match first {
                Some(f) if hops > 1 => s(&id_of(f)),
                _ => Value::Null,
            };
            let row: BTreeMap<&str, Value> = [
                ("name", s(&format!("router.node/{id}"))),
                ("identity", s(&format!("router.node/{id}"))),
                ("type", s(ROUTER_NODE)),
                ("id", s(&id)),
                ("protocolVersion", Value::Int(1)),
                ("linkState", Value::List(neighbours)),
                ("nextHop", next_hop),
                ("address", s(&format!("amqp:/_topo/0/{id}"))),
                ("cost", Value::Int(hops as i32)),
            ]
            .into_iter()
            .collect();
            (id, row)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter()
        .enumerate()
        .map(|(i, (_, mut r))| {
            r.insert("index", Value::Int(i as i32));
            r
        })
        .collect()
}

fn connection_row<'a>(
    role: &str,
    dir: &str,
    host: &str,
    container: &str,
) -> BTreeMap<&'a str, Value> {
    let s = |t: &str| Value::String(t.to_string());
    [
        ("type", s(CONNECTION)),
        (
            "container",
            if container.is_empty() {
                Value::Null
            } else {
                s(container)
            },
        ),
        ("host", s(host)),
        ("dir", s(dir)),
        ("role", s(role)),
        ("opened", Value::Bool(true)),
        ("operStatus", s("up")),
        ("adminStatus", s("enabled")),
    ]
    .into_iter()
    .collect()
}

fn attribute_names(body: &Value) -> Vec<String> {
    let Value::Map(m) = body else {
        return Vec::new();
    };
    let list = m.iter().find_map(|(k, v)| match k {
        Value::String(k) if k == "attributeNames" => Some(v),
        _ => None,
    });
    match list {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
