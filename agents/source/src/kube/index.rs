//! A name-keyed index of the objects one kube-runtime watcher reports, kubert style.
//!
//! `Init`/`InitApply`/`InitDone` (a list or re-list) fill a side buffer that REPLACES the index only at
//! `InitDone`, so objects that vanished while the watch was down are dropped exactly when the re-list is complete,
//! never earlier; a re-list interrupted by an API error leaves the index untouched. `Apply`/`Delete` update it
//! in place.

use std::collections::BTreeMap;

use ::kube::ResourceExt;
use ::kube::runtime::watcher::Event;

/// Objects by name (one namespace), plus the buffer of a re-list in progress.
#[derive(Debug)]
pub struct Index<V> {
    objects: BTreeMap<String, V>,
    relist: Option<BTreeMap<String, V>>,
    synced: bool,
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Index {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<V> Index<V> {
    /// Applies one watcher event, storing `convert(object)`. Returns true when the index changed (an
    /// `Apply`/`Delete`, or a completed (re-)list); `Init`/`InitApply` only fill the re-list buffer.
    pub fn apply<K: ::kube::Resource>(
        &mut self,
        event: Event<K>,
        convert: impl Fn(K) -> V,
    ) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                let name = obj.name_any();
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, convert(obj));
                false
            }
            Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(obj) => {
                let name = obj.name_any();
                self.objects.insert(name, convert(obj));
                true
            }
            Event::Delete(obj) => {
                self.objects.remove(&obj.name_any());
                true
            }
        }
    }

    /// The objects in force, by name.
    pub fn objects(&self) -> &BTreeMap<String, V> {
        &self.objects
    }

    /// True once a first complete list was applied.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(i: &Index<ConfigMap>) -> Vec<&str> {
        i.objects().keys().map(String::as_str).collect()
    }

    #[test]
    fn relist_replaces_only_at_init_done() {
        let mut i = Index::default();
        let id = |c: ConfigMap| c;
        assert!(!i.apply(Event::Init, id));
        assert!(!i.apply(Event::InitApply(cm("a")), id));
        assert!(!i.synced());
        assert!(i.apply(Event::InitDone, id));
        assert!(i.synced());
        assert!(i.apply(Event::Apply(cm("b")), id));
        assert_eq!(names(&i), ["a", "b"]);
        // A re-list that only sees "b": "a" stays until InitDone.
        i.apply(Event::Init, id);
        i.apply(Event::InitApply(cm("b")), id);
        assert_eq!(names(&i), ["a", "b"]);
        // Interrupted re-list restarts from an empty buffer.
        i.apply(Event::Init, id);
        i.apply(Event::InitApply(cm("c")), id);
        i.apply(Event::InitDone, id);
        assert_eq!(names(&i), ["c"]);
        assert!(i.apply(Event::Delete(cm("c")), id));
        assert!(i.objects().is_empty());
    }
}
