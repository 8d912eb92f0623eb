//! The pure core of the agent: what the router is known to hold, and the operations that turn it into the desired
//! entity set. No I/O: desired state in, operations out (table-tested below).
//!
//! qdrouterd has no UPDATE for `router.config.*` (it never answers one), so a changed entity is a DELETE followed by
//! a CREATE. Only names starting with `maas-` are ever deleted; static configuration and other tools' entities are
//! left alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use maas_model::entity::NAME_PREFIX;
use maas_model::mesh::is_mesh_entity;
use maas_model::{DigestSet, Entity, EntityType, entity_digest};
use serde_json::{Map, Value};

/// Name of the marker entity that records which generation of the desired set the router holds. It is written
/// last (after every other operation succeeded) and deleted before any change starts, so "the marker names
/// generation G" proves "the router holds G" with one cheap READ.
pub const MARKER_NAME: &str = "maas-generation";
const MARKER_PREFIX: &str = "_maas/generation/";

/// The marker entity for a desired-set hash: a `router.config.address` whose prefix carries the hash. Its prefix
/// starts with `_`, which no user address may, so it can never collide with an address.
pub fn marker_entity(hash: &str) -> Entity {
    let mut attributes = BTreeMap::new();
    attributes.insert(
        "prefix".into(),
        Value::String(format!("{MARKER_PREFIX}{hash}")),
    );
    attributes.insert("distribution".into(), Value::String("closest".into()));
    Entity {
        entity_type: EntityType::Address,
        name: MARKER_NAME.into(),
        attributes,
    }
}

/// The hash a marker entity reported by the router carries.
pub fn marker_hash(reported: &Map<String, Value>) -> Option<String> {
    reported
        .get("prefix")
        .and_then(Value::as_str)
        .and_then(|p| p.strip_prefix(MARKER_PREFIX))
        .map(str::to_string)
}

type Key = (EntityType, String);

/// A small map keyed by (type, name) that can be looked up with a borrowed name.
type ByType<V> = BTreeMap<EntityType, BTreeMap<String, V>>;

fn by_type_get<'a, V>(m: &'a ByType<V>, t: EntityType, name: &str) -> Option<&'a V> {
    m.get(&t).and_then(|names| names.get(name))
}

fn by_type_remove<V>(m: &mut ByType<V>, t: EntityType, name: &str) -> Option<V> {
    let names = m.get_mut(&t)?;
    let v = names.remove(name);
    if names.is_empty() {
        m.remove(&t);
    }
    v
}

fn by_type_iter<V>(m: &ByType<V>) -> impl Iterator<Item = (EntityType, &str, &V)> {
    m.iter()
        .flat_map(|(t, names)| names.iter().map(move |(n, v)| (*t, n.as_str(), v)))
}

fn by_type_len<V>(m: &ByType<V>) -> usize {
    m.values().map(BTreeMap::len).sum()
}

/// What the agent knows the router holds: its `maas-` entities (except the marker), each with the digest
/// ([`entity_digest`]) of the desired entity it was verified equal to (None: it matches nothing desired and must
/// go), and the marker.
///
/// Stored as an overlay on a shared [`DigestSet`]: after a generation is applied, what the router holds IS the
/// desired set, so `Known` points at the same `Arc` and costs nothing; only differences are stored.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Entities known to be on the router as this set says (unless overridden or removed below).
    base: Arc<DigestSet>,
    /// Entities whose state differs from `base`: Some(digest) = present with that digest, None = present but wrong.
    overrides: ByType<Option<u64>>,
    /// Entities of `base` that are gone.
    removed: ByType<()>,
    /// The hash carried by the marker entity, if the router holds one.
    pub marker: Option<String>,
}

impl PartialEq for Known {
    fn eq(&self, other: &Self) -> bool {
        self.marker == other.marker && self.iter().eq(other.iter())
    }
}

impl Known {
    /// The router holds exactly `desired` and its marker (proved by the marker: nothing needs reading).
    pub fn from_desired(desired: &Arc<DigestSet>, hash: &str) -> Known {
        Known {
            base: desired.clone(),
            overrides: BTreeMap::new(),
            removed: BTreeMap::new(),
            marker: Some(hash.to_string()),
        }
    }

    /// About to create every entity of `desired` on a router holding none: assume each will be there, so that a
    /// verified CREATE costs no bookkeeping; each one that fails must then be recorded ([`Self::deleted`] or
    /// [`Self::mark_wrong`]). No marker.
    pub fn assume_created(desired: &Arc<DigestSet>) -> Known {
        Known {
            base: desired.clone(),
            ..Known::default()
        }
    }

    /// Build from rows the router reported (QUERY), keeping only `maas-` names. `for_each_desired` hands every
    /// desired entity to the given closure once (so the desired set never has to be held whole); each reported row
    /// is compared attribute by attribute with the desired entity of the same type and name.
    pub fn from_reported(
        rows: &[(EntityType, Map<String, Value>)],
        for_each_desired: impl FnOnce(&mut dyn FnMut(Entity)),
    ) -> Known {
        let mut known = Known::default();
        let mut by_key: BTreeMap<(EntityType, &str), &Map<String, Value>> = BTreeMap::new();
        for (t, row) in rows {
            let Some(name) = row.get("name").and_then(Value::as_str) else {
                continue;
            };
            if !name.starts_with(NAME_PREFIX) {
                continue;
            }
            if *t == EntityType::Address && name == MARKER_NAME {
                known.marker = marker_hash(row);
                continue;
            }
            known.set_override(*t, name.to_string(), None);
            by_key.insert((*t, name), row);
        }
        if by_key.is_empty() {
            return known;
        }
        for_each_desired(&mut |e: Entity| {
            if let Some(row) = by_key.get(&(e.entity_type, e.name.as_str()))
                && e.matches_reported(row)
            {
                let d = entity_digest(&e);
                known.set_override(e.entity_type, e.name, Some(d));
            }
        });
        known
    }

    fn set_override(&mut self, t: EntityType, name: String, v: Option<u64>) {
        self.overrides.entry(t).or_default().insert(name, v);
    }

    /// What is known of one entity: None = not on the router; Some(None) = there but wrong; Some(Some(d)) = there,
    /// equal to the desired entity with digest d.
    pub fn get(&self, key: &Key) -> Option<Option<u64>> {
        self.lookup(key.0, &key.1)
    }

    /// [`Self::get`] by type and name.
    pub fn lookup(&self, t: EntityType, name: &str) -> Option<Option<u64>> {
        if let Some(v) = by_type_get(&self.overrides, t, name) {
            return Some(*v);
        }
        if by_type_get(&self.removed, t, name).is_some() {
            return None;
        }
        self.base.get(t, name).map(Some)
    }

    /// True when nothing is stored beside the shared set.
    fn is_plain(&self) -> bool {
        self.overrides.is_empty() && self.removed.is_empty()
    }

    /// Every entity known to be on the router, in (type, name) order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (EntityType, &str, Option<u64>)> + '_> {
        let base = self.base.iter().map(|(t, n, d)| (t, n, Some(d)));
        if self.is_plain() {
            // The common case (right after a generation was applied): the shared set itself, nothing to merge.
            return Box::new(base);
        }
        let base = base.filter(|(t, n, _)| {
            by_type_get(&self.removed, *t, n).is_none()
                && by_type_get(&self.overrides, *t, n).is_none()
        });
        let over = by_type_iter(&self.overrides).map(|(t, n, v)| (t, n, *v));
        // Both are sorted; merge them so the order stays (type, name).
        let mut out: Vec<(EntityType, &str, Option<u64>)> = base.chain(over).collect();
        out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Box::new(out.into_iter())
    }

    /// Record a verified CREATE of `e`, a member of `desired` (its digest is taken from there, not recomputed).
    pub fn created(&mut self, e: Entity, desired: &DigestSet) {
        let t = e.entity_type;
        let d = match desired.get(t, &e.name) {
            Some(d) => d,
            None => entity_digest(&e),
        };
        by_type_remove(&mut self.removed, t, &e.name);
        if self.base.get(t, &e.name) == Some(d) {
            by_type_remove(&mut self.overrides, t, &e.name);
        } else {
            self.set_override(t, e.name, Some(d));
        }
    }

    /// Record that an entity is on the router but not as desired (it must be replaced).
    pub fn mark_wrong(&mut self, t: EntityType, name: &str) {
        self.set_override(t, name.to_string(), None);
    }

    /// Record a DELETE (or a 404 on DELETE: it is gone either way).
    pub fn deleted(&mut self, t: EntityType, name: &str) {
        by_type_remove(&mut self.overrides, t, name);
        if self.base.contains(t, name) {
            self.removed
                .entry(t)
                .or_default()
                .insert(name.to_string(), ());
        }
    }

    pub fn len(&self) -> usize {
        self.base.len() - by_type_len(&self.removed)
            + by_type_iter(&self.overrides)
                .filter(|(t, n, _)| {
                    !self.base.contains(*t, n) || by_type_get(&self.removed, *t, n).is_some()
                })
                .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Correct what the marker cannot prove: the mesh connectors. `rows` are the router's connector rows (a
    /// connector QUERY), `mesh` the desired mesh connectors. A desired one that is missing or differs is recorded
    /// so; a `maas-router-` connector that is not desired is recorded as wrong (to be deleted).
    pub fn verify_mesh(&mut self, rows: &[(EntityType, Map<String, Value>)], mesh: &[Entity]) {
        let mut reported: BTreeMap<&str, &Map<String, Value>> = BTreeMap::new();
        for (t, row) in rows {
            if let Some(name) = row.get("name").and_then(Value::as_str)
                && is_mesh_entity(*t, name)
            {
                reported.insert(name, row);
            }
        }
        for e in mesh {
            match reported.remove(e.name.as_str()) {
                None => self.deleted(e.entity_type, &e.name),
                Some(row) if !e.matches_reported(row) => self.mark_wrong(e.entity_type, &e.name),
                Some(_) => {}
            }
        }
        for name in reported.into_keys() {
            self.mark_wrong(EntityType::Connector, name);
        }
    }

    /// True when nothing differs from the shared set `desired` (cheap: no walk when it is the same `Arc`).
    pub fn holds_exactly(&self, desired: &Arc<DigestSet>) -> bool {
        if Arc::ptr_eq(&self.base, desired) {
            return self.is_plain();
        }
        diff(desired, self).is_empty()
    }
}

/// The operations that bring the router from `known` to `desired`: all DELETEs first (wrong or extra entities),
/// then all CREATEs (missing or changed). Within each phase the order is deterministic; deletes go links first,
/// connectors last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub deletes: Vec<(EntityType, String)>,
    pub creates: Vec<(EntityType, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.creates.is_empty()
    }

    pub fn len(&self) -> usize {
        self.deletes.len() + self.creates.len()
    }
}

/// True when every operation of `plan` is on a mesh connector (a router pod joined or left).
pub fn plan_is_mesh_only(plan: &Plan) -> bool {
    plan.deletes
        .iter()
        .chain(&plan.creates)
        .all(|(t, n)| is_mesh_entity(*t, n))
}

/// Diff desired against known. Only changed entities cause operations.
pub fn diff(desired: &DigestSet, known: &Known) -> Plan {
    use std::cmp::Ordering;
    let mut plan = Plan::default();
    // Both sides are in (type, name) order: one merge walk.
    let mut k = known.iter().peekable();
    let mut d = desired.iter().peekable();
    loop {
        let order = match (k.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((kt, kn, _)), Some((dt, dn, _))) => (kt, kn).cmp(&(dt, dn)),
        };
        match order {
            Ordering::Less => {
                if let Some((t, name, _)) = k.next() {
                    plan.deletes.push((t, name.to_string()));
                }
            }
            Ordering::Greater => {
                if let Some((t, name, _)) = d.next() {
                    plan.creates.push((t, name.to_string()));
                }
            }
            Ordering::Equal => {
                if let (Some((t, name, fp)), Some((_, _, want))) = (k.next(), d.next())
                    && fp != Some(want)
                {
                    plan.deletes.push((t, name.to_string()));
                    plan.creates.push((t, name.to_string()));
                }
            }
        }
    }
    // Delete autoLinks/linkRoutes before addresses before connectors: the reverse of creation order.
    plan.deletes
        .sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_model::EntitySet;

    fn addr(name: &str, prefix: &str, dist: &str) -> Entity {
        let mut attributes = BTreeMap::new();
        attributes.insert("prefix".to_string(), Value::from(prefix));
        attributes.insert("distribution".to_string(), Value::from(dist));
        Entity {
            entity_type: EntityType::Address,
            name: name.into(),
            attributes,
        }
    }

    fn autolink(name: &str) -> Entity {
        let mut attributes = BTreeMap::new();
        attributes.insert("address".to_string(), Value::from("q"));
        attributes.insert("direction".to_string(), Value::from("in"));
        Entity {
            entity_type: EntityType::AutoLink,
            name: name.into(),
            attributes,
        }
    }

    fn set(es: &[Entity]) -> EntitySet {
        let mut s = EntitySet::default();
        for e in es {
            s.insert(e.clone());
        }
        s
    }

    fn from_rows(d: &EntitySet, rows: &[(EntityType, Map<String, Value>)]) -> Known {
        Known::from_reported(rows, |f| {
            for e in d.iter() {
                f(e.clone())
            }
        })
    }

    fn keys(es: &[Entity]) -> Vec<(EntityType, String)> {
        es.iter().map(|e| (e.entity_type, e.name.clone())).collect()
    }

    fn row(e: &Entity) -> Map<String, Value> {
        let mut m: Map<String, Value> = e.attributes.clone().into_iter().collect();
        m.insert("name".into(), Value::from(e.name.clone()));
        m.insert("identity".into(), Value::from("17"));
        m.insert("waypoint".into(), Value::from(false));
        m
    }

    fn mesh_connector(pod: &str, host: &str) -> Entity {
        let mut attributes = BTreeMap::new();
        attributes.insert("role".to_string(), Value::from("inter-router"));
        attributes.insert("host".to_string(), Value::from(host));
        attributes.insert("port".to_string(), Value::from("55672"));
        Entity {
            entity_type: EntityType::Connector,
            name: maas_model::router_connector_name(pod),
            attributes,
        }
    }

    #[test]
    fn a_marker_proved_router_with_other_mesh_connectors_needs_only_connector_operations() {
        let a = addr("maas-address/a", "a", "balanced");
        let keep = mesh_connector("r-0", "10.0.0.1");
        let moved = mesh_connector("r-1", "10.0.0.2");
        let new = mesh_connector("r-2", "10.0.0.3");
        let d = set(&[a.clone(), keep.clone(), moved.clone(), new.clone()]);
        let digests = Arc::new(d.digests());
        let mut known = Known::from_desired(&digests, "marker");
        // The router holds r-0 as desired, r-1 at an old host, a connector to a pod that left, not r-2 — and a
        // broker connector, which the marker proves and which must not be touched.
        let rows = vec![
            (EntityType::Connector, row(&keep)),
            (
                EntityType::Connector,
                row(&mesh_connector("r-1", "10.9.9.9")),
            ),
            (
                EntityType::Connector,
                row(&mesh_connector("gone", "10.0.0.4")),
            ),
            (EntityType::Connector, {
                let mut r = row(&keep);
                r.insert("name".into(), Value::from("maas-broker-b-0"));
                r
            }),
        ];
        known.verify_mesh(&rows, &[keep, moved.clone(), new.clone()]);
        let plan = diff(&digests, &known);
        let gone = maas_model::router_connector_name("gone");
        assert_eq!(
            plan.deletes,
            vec![
                (EntityType::Connector, gone),
                (EntityType::Connector, moved.name.clone())
            ]
        );
        assert_eq!(plan.creates, keys(&[moved, new]));
        assert!(plan_is_mesh_only(&plan));
        assert_eq!(known.marker.as_deref(), Some("marker"));
        let with_address = Plan {
            deletes: vec![],
            creates: keys(&[a]),
        };
        assert!(!plan_is_mesh_only(&with_address));
    }

    #[test]
    fn empty_router_gets_everything_created() {
        let d = set(&[
            addr("maas-address/a", "a", "balanced"),
            autolink("maas-autolink/q/b0/in"),
        ]);
        let p = diff(&d.digests(), &Known::default());
        assert!(p.deletes.is_empty());
        assert_eq!(p.creates.len(), 2);
    }

    #[test]
    fn router_holding_desired_needs_nothing() {
        let d = set(&[addr("maas-address/a", "a", "balanced")]);
        assert!(
            diff(
                &d.digests(),
                &Known::from_desired(&Arc::new(d.digests()), "h")
            )
            .is_empty()
        );
        let rows = [(
            EntityType::Address,
            row(&addr("maas-address/a", "a", "balanced")),
        )];
        let known = from_rows(&d, &rows);
        assert!(
            diff(&d.digests(), &known).is_empty(),
            "extra reported attributes are ignored"
        );
    }

    #[test]
    fn changed_entity_is_deleted_then_created() {
        let old = set(&[addr("maas-address/a", "a", "balanced")]);
        let new = set(&[addr("maas-address/a", "a", "multicast")]);
        let p = diff(
            &new.digests(),
            &Known::from_desired(&Arc::new(old.digests()), "h"),
        );
        assert_eq!(
            p.deletes,
            vec![(EntityType::Address, "maas-address/a".to_string())]
        );
        assert_eq!(p.creates, keys(&[addr("maas-address/a", "a", "multicast")]));
    }

    #[test]
    fn extra_maas_entities_deleted_foreign_ones_untouched() {
        let d = set(&[]);
        let rows = [
            (
                EntityType::Address,
                row(&addr("maas-address/gone", "gone", "balanced")),
            ),
            (
                EntityType::Address,
                row(&addr("override-x", "x", "closest")),
            ),
        ];
        let known = from_rows(&d, &rows);
        let p = diff(&d.digests(), &known);
        assert_eq!(
            p.deletes,
            vec![(EntityType::Address, "maas-address/gone".to_string())]
        );
        assert!(p.creates.is_empty());
    }

    #[test]
    fn router_normalised_value_counts_as_wrong() {
        // The router stores an invalid distribution as `balanced` without complaint (mgmt-raw-errors.txt): a row
        // whose value differs from what we want must be replaced.
        let d = set(&[addr("maas-address/a", "a", "closest")]);
        let rows = [(
            EntityType::Address,
            row(&addr("maas-address/a", "a", "balanced")),
        )];
        let known = from_rows(&d, &rows);
        let p = diff(&d.digests(), &known);
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(p.creates.len(), 1);
    }

    #[test]
    fn deletes_are_ordered_links_before_addresses() {
        let known = Known::from_desired(
            &set(&[
                addr("maas-address/q", "q", "balanced"),
                autolink("maas-autolink/q/b0/in"),
            ])
            .digests()
            .into(),
            "h",
        );
        let p = diff(&DigestSet::default(), &known);
        assert_eq!(p.deletes[0].0, EntityType::AutoLink);
        assert_eq!(p.deletes[1].0, EntityType::Address);
    }

    #[test]
    fn marker_round_trip_and_excluded_from_entities() {
        let m = marker_entity("abc123");
        let r = row(&m);
        assert_eq!(marker_hash(&r).as_deref(), Some("abc123"));
        let known = from_rows(&EntitySet::default(), &[(EntityType::Address, r.clone())]);
        assert_eq!(known.marker.as_deref(), Some("abc123"));
        assert!(known.is_empty());
    }
}
