//! The router network (docs/architecture.md §4 "Router network"), pure: which connectors a router needs so that
//! the router pods of an address space form ONE mesh.
//!
//! - Interior routers (`mode: interior`): a `connector` `maas-router-<pod>` {role `inter-router`, host, port} to
//!   every router pod whose name sorts LOWER than this one's, so each pair is dialled exactly once, by the higher
//!   name (EnMasse's rule; the router's documentation asks for exactly one connection between any pair of routers,
//!   docs/reference/qdrouterd-1.19.0/python-agent-and-mesh.txt §2). A pod that joins changes only its own
//!   connectors and those of the pods sorting above it; one that leaves loses only the connectors to it.
//! - Edge routers (`mode: edge`): ONE connector `maas-router-<pod>` {role `edge`} to one interior pod's `edge`
//!   listener, picked by a rendezvous hash of the edge pod's name over the interior pods
//!   ([`crate::placement::rendezvous`]) when it has none yet: edges spread evenly. An edge then STAYS on its interior
//!   ([`MeshInputs::current_uplink`]) as long as that pod is there, and moves only when it goes; a joining interior
//!   takes no edge away (new edges and moved ones find it through the hash).
//!
//! qdrouterd does not check a connector's role against the listener it dials (§6: an inter-router connector aimed
//! at an edge listener is answered 201), so the roles are chosen here from the agent's own mode, never guessed
//! from the peer.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::placement::{pod_port_field, pod_text_field, rendezvous};
use crate::{ConfigError, Entity, EntityType, PodInfo};

/// Value of the component label on router pods (interior and edge).
pub const ROUTER_COMPONENT: &str = "router";
/// Label marking edge router pods (`maas.io/router-mode=edge`).
pub const ROUTER_MODE_LABEL: &str = "maas.io/router-mode";
/// Name of the port of the `role: inter-router` listener.
pub const INTER_ROUTER_PORT_NAME: &str = "inter-router";
/// Name of the port of the `role: edge` listener.
pub const EDGE_PORT_NAME: &str = "edge";
/// Default port of the inter-router listener.
pub const DEFAULT_INTER_ROUTER_PORT: u16 = 55672;
/// Default port of the edge listener.
pub const DEFAULT_EDGE_PORT: u16 = 45672;

/// One interior router pod of the address space.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterPod {
    /// Pod name (the connector to it is `maas-router-<name>`).
    pub name: String,
    /// Pod IP or host name.
    pub host: String,
    /// Port of its inter-router listener.
    pub port: u16,
    /// Port of its edge listener, when it has one.
    pub edge_port: Option<u16>,
}

/// How a router runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouterMode {
    /// Part of the mesh.
    #[default]
    Interior,
    /// Attached to one interior router.
    Edge,
}

impl RouterMode {
    /// `interior` or `edge`, as qdrouterd spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterMode::Interior => "interior",
            RouterMode::Edge => "edge",
        }
    }
}

/// How this router's connectors to other routers log in. The password never passes through maas: the connector
/// gets `saslPassword: file:<path>` naming the Secret as mounted in the ROUTER's container (the router reads it;
/// any `$management` client can read a clear-text password back, §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshOptions {
    /// `sslProfile` (defined in the router's static configuration) for TLS between routers.
    pub ssl_profile: Option<String>,
    /// `saslMechanisms` (e.g. `EXTERNAL` with TLS, or `PLAIN`).
    pub sasl_mechanisms: Option<String>,
    /// `saslUsername`.
    pub sasl_username: Option<String>,
    /// Absolute path of the password file inside the router container: sent as `saslPassword: file:<path>`.
    pub sasl_password_file: Option<String>,
}

/// What this agent's router is in the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshInputs {
    /// This router pod's name; no mesh without it.
    pub own: Option<String>,
    /// This router's mode.
    pub mode: RouterMode,
    /// The interior router pods of the address space (this one may be among them: it is skipped).
    pub routers: Vec<RouterPod>,
    /// Login and TLS of the connectors.
    pub options: MeshOptions,
    /// For an edge: the interior pod it is attached to now; kept while that pod is among `routers` (with an edge
    /// listener), so interior pods joining move no edge.
    pub current_uplink: Option<String>,
}

/// Name of the connector to router pod `pod`: `maas-router-<pod>`.
pub fn router_connector_name(pod: &str) -> String {
    format!("{ROUTER_CONNECTOR_PREFIX}{pod}")
}

/// Name prefix of the mesh connectors (inter-router and edge).
pub const ROUTER_CONNECTOR_PREFIX: &str = "maas-router-";

/// True for a mesh connector (`maas-router-<pod>`): the entities a router pod joining or leaving changes.
pub fn is_mesh_entity(t: crate::EntityType, name: &str) -> bool {
    t == crate::EntityType::Connector && name.starts_with(ROUTER_CONNECTOR_PREFIX)
}

/// The interior pod an edge router attaches to (rendezvous over the pods that have an edge listener).
pub fn edge_uplink<'a>(edge: &str, routers: &'a [RouterPod]) -> Option<&'a RouterPod> {
    rendezvous(
        edge,
        routers
            .iter()
            .filter(|r| r.edge_port.is_some() && r.name != edge)
            .map(|r| (r.name.as_str(), r)),
    )
}

/// The connectors this router needs (see the module docs), sorted by name.
pub fn mesh_entities(mesh: &MeshInputs) -> Vec<Entity> {
    let Some(own) = mesh.own.as_deref() else {
        return Vec::new();
    };
    let mut out: Vec<Entity> = match mesh.mode {
        RouterMode::Interior => mesh
            .routers
            .iter()
            .filter(|r| r.name.as_str() < own)
            .map(|r| connector(r, "inter-router", r.port, &mesh.options))
            .collect(),
        RouterMode::Edge => mesh
            .current_uplink
            .as_deref()
            .and_then(|current| {
                mesh.routers
                    .iter()
                    .find(|r| r.name == current && r.edge_port.is_some())
            })
            .or_else(|| edge_uplink(own, &mesh.routers))
            .and_then(|r| r.edge_port.map(|p| connector(r, "edge", p, &mesh.options)))
            .into_iter()
            .collect(),
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn connector(r: &RouterPod, role: &str, port: u16, opts: &MeshOptions) -> Entity {
    let mut attributes: BTreeMap<String, Value> = [
        ("role".to_string(), json!(role)),
        ("host".to_string(), json!(r.host)),
        ("port".to_string(), json!(port.to_string())),
    ]
    .into_iter()
    .collect();
    let password = opts
        .sasl_password_file
        .as_ref()
        .map(|path| format!("file:{path}"));
    for (name, value) in [
        ("sslProfile", &opts.ssl_profile),
        ("saslMechanisms", &opts.sasl_mechanisms),
        ("saslUsername", &opts.sasl_username),
        ("saslPassword", &password), // file:<path> only
    ] {
        if let Some(v) = value {
            attributes.insert(name.to_string(), json!(v));
        }
    }
    Entity {
        entity_type: EntityType::Connector,
        name: router_connector_name(&r.name),
        attributes,
    }
}

/// Interior router pods from a pod list: labelled `app.kubernetes.io/component=router`, ready, with an IP and a
/// port named `inter-router` (edge pods have none); their `edge` port when they have one. Sorted by name.
pub fn routers_from_pods(pods: &[PodInfo]) -> Vec<RouterPod> {
    let mut out: Vec<RouterPod> = pods
        .iter()
        .filter(|p| {
            p.labels
                .get(crate::pods::COMPONENT_LABEL)
                .map(String::as_str)
                == Some(ROUTER_COMPONENT)
                && p.labels.get(ROUTER_MODE_LABEL).map(String::as_str) != Some("edge")
                && p.ready
                && !p.host.is_empty()
        })
        .filter_map(|p| {
            let port_named = |n: &str| p.ports.values().find_map(|ports| ports.get(n).copied());
            Some(RouterPod {
                name: p.name.clone(),
                host: p.host.clone(),
                port: port_named(INTER_ROUTER_PORT_NAME)?,
                edge_port: port_named(EDGE_PORT_NAME),
            })
        })
        .collect();
    out.sort();
    out
}

/// The names of every router pod, interior AND edge (labelled `app.kubernetes.io/component=router`), ready or not,
/// sorted. In the shipped manifests a router's id is its pod name (manifests/README.md "Stable router ids"), so these
/// are the router ids that durable subscription queues made through a router start with
/// (`<router-id>.<link-name>@<container-id>`, docs/reference/artemis-2.21/durable-subscriptions-and-topics.txt §1).
pub fn router_names_from_pods(pods: &[PodInfo]) -> Vec<String> {
    let mut out: Vec<String> = pods
        .iter()
        .filter(|p| {
            p.labels
                .get(crate::pods::COMPONENT_LABEL)
                .map(String::as_str)
                == Some(ROUTER_COMPONENT)
        })
        .map(|p| p.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The router NAMES of a `--routers-file` (the format of [`parse_routers`]), for readers that need only the names
/// (subscription-service): `name` is required, `host`, `port` and `edgePort` may be left out (so edge routers, which
/// have no inter-router listener, can be listed too) but are checked when given. Sorted.
pub fn parse_router_names(origin: &str, text: &str) -> Result<Vec<String>, Vec<ConfigError>> {
    let entries = parse_router_entries(origin, text, false)?;
    Ok(entries.into_iter().map(|e| e.name).collect())
}

/// Parses a `--routers-file`: `[{"name": "router-0", "host": "10.1.2.3", "port": 55672, "edgePort": 45672}, ...]`
/// (`port`: the inter-router listener; `edgePort` optional). Every problem is reported, naming the entry.
pub fn parse_routers(origin: &str, text: &str) -> Result<Vec<RouterPod>, Vec<ConfigError>> {
    let entries = parse_router_entries(origin, text, true)?;
    let mut out: Vec<RouterPod> = entries
        .into_iter()
        .filter_map(|e| {
            Some(RouterPod {
                name: e.name,
                host: e.host?,
                port: e.port?,
                edge_port: e.edge_port,
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// One entry of a routers file.
struct RouterEntry {
    name: String,
    host: Option<String>,
    port: Option<u16>,
    edge_port: Option<u16>,
}

/// The entries of a routers file, sorted by name; `addressed`: `host` and `port` are required (every entry then has
/// them), otherwise only `name` is, the others being checked when given.
fn parse_router_entries(
    origin: &str,
    text: &str,
    addressed: bool,
) -> Result<Vec<RouterEntry>, Vec<ConfigError>> {
    let err = |msg: String| ConfigError::new(origin, None, None, msg);
    let (example, wanted) = if addressed {
        (
            r#"[{"name": "router-0", "host": "10.1.2.3", "port": 55672}]"#,
            r#""name", "host" and "port""#,
        )
    } else {
        (r#"[{"name": "router-0"}]"#, r#""name""#)
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| vec![err(format!("invalid JSON in routers file: {e}"))])?;
    let Value::Array(items) = value else {
        return Err(vec![err(format!(
            "a routers file must be a JSON list of router pods like {example}, found {}",
            crate::flavor::json_type_name(&value)
        ))]);
    };
    let mut errors = Vec::new();
    let mut out: Vec<RouterEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            errors.push(err(format!(
                "router {i}: must be an object with {wanted}, found {}",
                crate::flavor::json_type_name(item)
            )));
            continue;
        };
        let mut problems = Vec::new();
        let name = pod_text_field(o, "name").map_err(|e| problems.push(e)).ok();
        let host = if addressed || o.contains_key("host") {
            pod_text_field(o, "host").map_err(|e| problems.push(e)).ok()
        } else {
            None
        };
        let port = match pod_port_field(o, "port") {
            Ok(None) if addressed => {
                problems.push("missing \"port\" (the inter-router listener)".to_string());
                None
            }
            Ok(p) => p,
            Err(e) => {
                problems.push(e);
                None
            }
        };
        let edge_port = pod_port_field(o, "edgePort")
            .map_err(|e| problems.push(e))
            .ok()
            .flatten();
        for k in o.keys() {
            if !["name", "host", "port", "edgePort"].contains(&k.as_str()) {
                problems.push(format!(
                    "unknown field {k:?} (known: name, host, port, edgePort)"
                ));
            }
        }
        if let Some(name) = &name
            && out.iter().any(|r| &r.name == name)
        {
            problems.push(format!("router name {name:?} is listed twice"));
        }
        match name {
            Some(name) if problems.is_empty() => out.push(RouterEntry {
                name,
                host,
                port,
                edge_port,
            }),
            _ => errors.extend(
                problems
                    .into_iter()
                    .map(|m| err(format!("router {i}: {m}"))),
            ),
        }
    }
    if errors.is_empty() {
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn router_names_are_every_router_pod_interior_and_edge() {
        let pod = |name: &str, labels: &[(&str, &str)], ready: bool| PodInfo {
            name: name.into(),
            host: String::new(),
            phase: "Running".into(),
            ready,
            ports: BTreeMap::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
        };
        let router = [(crate::pods::COMPONENT_LABEL, ROUTER_COMPONENT)];
        let edge = [
            (crate::pods::COMPONENT_LABEL, ROUTER_COMPONENT),
            (ROUTER_MODE_LABEL, "edge"),
        ];
        let pods = [
            pod("maas-router-1", &router, true),
            pod("maas-router-0", &router, false),
            pod("maas-router-edge-7d9f-abcde", &edge, true),
            pod(
                "broker-0",
                &[(crate::pods::COMPONENT_LABEL, "broker")],
                true,
            ),
            pod("other", &[], true),
        ];
        assert_eq!(
            router_names_from_pods(&pods),
            [
                "maas-router-0",
                "maas-router-1",
                "maas-router-edge-7d9f-abcde"
            ],
            "not-ready and edge routers have ids too"
        );
    }

    #[test]
    fn router_names_parse_from_a_routers_file_with_or_without_hosts() {
        let text = r#"[{"name": "router-1", "host": "10.0.0.2", "port": 55672},
                       {"name": "Router.A"}, {"name": "edge-0", "host": "10.0.0.9"}]"#;
        assert_eq!(
            parse_router_names("f", text).unwrap(),
            ["Router.A", "edge-0", "router-1"]
        );
        // The router-agent's file reads the same.
        assert!(parse_routers("f", r#"[{"name": "router-1", "host": "h", "port": 1}]"#).is_ok());
        let e = parse_router_names(
            "f",
            r#"[{"host": "h"}, {"name": "a", "nmae": 1}, {"name": "b"}, {"name": "b"}, {"name": "c", "port": 0}, 7]"#,
        )
        .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 5, "{text:?}");
        for want in [
            "router 0: missing \"name\"",
            "router 1: unknown field \"nmae\"",
            "router 3: router name \"b\" is listed twice",
            "router 4: \"port\" 0 is not a port number",
            "router 5: must be an object",
        ] {
            assert!(text.iter().any(|t| t.contains(want)), "{want} in {text:?}");
        }
        assert!(parse_router_names("f", "{}").is_err());
        assert!(parse_router_names("f", "[").is_err());
    }

    fn pods(names: &[&str]) -> Vec<RouterPod> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| RouterPod {
                name: n.to_string(),
                host: format!("10.0.0.{i}"),
                port: 55672,
                edge_port: Some(45672),
            })
            .collect()
    }

    fn mesh(own: &str, mode: RouterMode, names: &[&str]) -> Vec<String> {
        mesh_entities(&MeshInputs {
            own: Some(own.into()),
            mode,
            routers: pods(names),
            options: MeshOptions::default(),
            current_uplink: None,
        })
        .into_iter()
        .map(|e| e.name)
        .collect()
    }

    #[test]
    fn each_pair_is_dialled_once_by_the_higher_name() {
        let names = ["r-0", "r-1", "r-2"];
        assert_eq!(
            mesh("r-0", RouterMode::Interior, &names),
            Vec::<String>::new()
        );
        assert_eq!(
            mesh("r-1", RouterMode::Interior, &names),
            vec!["maas-router-r-0"]
        );
        assert_eq!(
            mesh("r-2", RouterMode::Interior, &names),
            vec!["maas-router-r-0", "maas-router-r-1"]
        );
        // Over any set of pods: every unordered pair exactly once.
        let names: Vec<String> = (0..20).map(|i| format!("router-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut pairs = std::collections::BTreeSet::new();
        for own in &refs {
            for c in mesh(own, RouterMode::Interior, &refs) {
                let other = c.strip_prefix("maas-router-").unwrap().to_string();
                let pair = if *own < other.as_str() {
                    (own.to_string(), other)
                } else {
                    (other, own.to_string())
                };
                assert!(pairs.insert(pair), "pair dialled twice");
            }
        }
        assert_eq!(pairs.len(), 20 * 19 / 2);
        // No own name: no mesh.
        assert!(
            mesh_entities(&MeshInputs {
                routers: pods(&refs),
                ..MeshInputs::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn a_joining_pod_changes_only_its_own_connectors_and_those_above_it() {
        let before = ["r-a", "r-c", "r-e"];
        let after = ["r-a", "r-c", "r-d", "r-e"];
        for own in before {
            let b = mesh(own, RouterMode::Interior, &before);
            let a = mesh(own, RouterMode::Interior, &after);
            if own > "r-d" {
                assert_eq!(a.len(), b.len() + 1, "{own} dials the new pod");
                assert!(a.contains(&"maas-router-r-d".to_string()));
            } else {
                assert_eq!(a, b, "{own} is unchanged");
            }
        }
    }

    #[test]
    fn connector_attributes_never_carry_a_password() {
        let e = &mesh_entities(&MeshInputs {
            own: Some("r-1".into()),
            mode: RouterMode::Interior,
            routers: pods(&["r-0"]),
            options: MeshOptions {
                ssl_profile: Some("mesh-tls".into()),
                sasl_mechanisms: Some("PLAIN".into()),
                sasl_username: Some("router".into()),
                sasl_password_file: Some("/etc/qpid-dispatch/mesh/password".into()),
            },
            current_uplink: None,
        })[0];
        assert_eq!(
            serde_json::to_value(&e.attributes).unwrap(),
            json!({"role": "inter-router", "host": "10.0.0.0", "port": "55672", "sslProfile": "mesh-tls",
                   "saslMechanisms": "PLAIN", "saslUsername": "router",
                   "saslPassword": "file:/etc/qpid-dispatch/mesh/password"})
        );
    }

    #[test]
    fn edges_spread_evenly_and_move_only_as_rendezvous_says() {
        let interiors: Vec<String> = (0..4).map(|i| format!("router-{i}")).collect();
        let refs: Vec<&str> = interiors.iter().map(String::as_str).collect();
        let routers = pods(&refs);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        let pick =
            |edge: &str, routers: &[RouterPod]| edge_uplink(edge, routers).map(|r| r.name.clone());
        for i in 0..400 {
            let edge = format!("edge-{i}");
            *per.entry(pick(&edge, &routers).unwrap()).or_default() += 1;
            // The edge connector: role edge, the interior's edge port.
            let e = &mesh_entities(&MeshInputs {
                own: Some(edge.clone()),
                mode: RouterMode::Edge,
                routers: routers.clone(),
                options: MeshOptions::default(),
                current_uplink: None,
            })[0];
            assert_eq!(e.attributes["role"], json!("edge"));
            assert_eq!(e.attributes["port"], json!("45672"));
        }
        assert_eq!(per.len(), 4);
        assert!(per.values().all(|n| (70..=130).contains(n)), "{per:?}");
        // One interior goes: only its edges move.
        let without: Vec<RouterPod> = routers
            .iter()
            .filter(|r| r.name != "router-2")
            .cloned()
            .collect();
        let mut moved = 0;
        for i in 0..400 {
            let edge = format!("edge-{i}");
            let (b, a) = (
                pick(&edge, &routers).unwrap(),
                pick(&edge, &without).unwrap(),
            );
            if b != a {
                assert_eq!(b, "router-2");
                moved += 1;
            }
        }
        assert_eq!(moved, per["router-2"]);
        // An interior without an edge listener takes no edges.
        let mut no_edge = routers.clone();
        for r in &mut no_edge {
            r.edge_port = None;
        }
        assert!(pick("edge-0", &no_edge).is_none());
    }

    #[test]
    fn an_edge_stays_on_its_interior_while_it_is_there() {
        let names: Vec<String> = (0..4).map(|i| format!("router-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let uplink = |routers: &[RouterPod], current: Option<&str>| {
            mesh_entities(&MeshInputs {
                own: Some("edge-7".into()),
                mode: RouterMode::Edge,
                routers: routers.to_vec(),
                options: MeshOptions::default(),
                current_uplink: current.map(String::from),
            })
            .pop()
            .map(|e| e.name)
        };
        let four = pods(&refs);
        let first = uplink(&four, None).unwrap();
        let home = first.strip_prefix("maas-router-").unwrap().to_string();
        // Whatever pods join, it stays.
        let mut more = four.clone();
        for i in 4..20 {
            more.push(RouterPod {
                name: format!("router-{i}"),
                host: "10.0.1.1".into(),
                port: 55672,
                edge_port: Some(45672),
            });
        }
        more.sort();
        assert_eq!(uplink(&more, Some(&home)), Some(first.clone()));
        // Its interior goes: it moves (to the hash's choice among the rest).
        let without: Vec<RouterPod> = four.iter().filter(|r| r.name != home).cloned().collect();
        let moved = uplink(&without, Some(&home)).unwrap();
        assert_ne!(moved, first);
        assert_eq!(uplink(&without, None), Some(moved));
    }

    #[test]
    fn routers_file_and_pods() {
        let r = parse_routers(
            "routers.json",
            r#"[{"name": "r-1", "host": "10.0.0.2", "port": 55672},
                {"name": "r-0", "host": "10.0.0.1", "port": 55672, "edgePort": 45672}]"#,
        )
        .unwrap();
        assert_eq!(
            r.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["r-0", "r-1"]
        );
        assert_eq!(r[0].edge_port, Some(45672));
        let errs = parse_routers(
            "routers.json",
            r#"[{"name": "r-1", "host": "h", "port": 0}, {"name": "r-1", "host": "h", "port": 1, "prot": 2}, 7]"#,
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("routers.json: router 0: \"port\" 0 is not a port number"),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("router 1: unknown field \"prot\"")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("router 2: must be an object")),
            "{text:?}"
        );
        assert!(
            parse_routers("f", "{}").unwrap_err()[0]
                .message
                .contains("JSON list")
        );

        let pod =
            |name: &str, labels: &[(&str, &str)], ports: &[(&str, u16)], ready: bool| PodInfo {
                name: name.into(),
                host: "10.1.1.1".into(),
                phase: "Running".into(),
                ready,
                ports: [(
                    "router".to_string(),
                    ports.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                )]
                .into_iter()
                .collect(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: Default::default(),
            };
        let router = [(crate::pods::COMPONENT_LABEL, ROUTER_COMPONENT)];
        let edge = [
            (crate::pods::COMPONENT_LABEL, ROUTER_COMPONENT),
            (ROUTER_MODE_LABEL, "edge"),
        ];
        let found = routers_from_pods(&[
            pod(
                "r-1",
                &router,
                &[("amqp", 5672), ("inter-router", 55672)],
                true,
            ),
            pod(
                "r-0",
                &router,
                &[("inter-router", 55672), ("edge", 45672)],
                true,
            ),
            pod("r-2", &router, &[("inter-router", 55672)], false),
            pod("e-0", &edge, &[("amqp", 5672)], true),
            pod(
                "b-0",
                &[(crate::pods::COMPONENT_LABEL, "broker")],
                &[("inter-router", 1)],
                true,
            ),
        ]);
        assert_eq!(
            found,
            vec![
                RouterPod {
                    name: "r-0".into(),
                    host: "10.1.1.1".into(),
                    port: 55672,
                    edge_port: Some(45672)
                },
                RouterPod {
                    name: "r-1".into(),
                    host: "10.1.1.1".into(),
                    port: 55672,
                    edge_port: None
                },
            ]
        );
    }
}
