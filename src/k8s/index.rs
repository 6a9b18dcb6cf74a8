//! A synchronous, in-memory index of one kind of Kubernetes object, fed by a watcher.
//!
//! It knows nothing about what the objects mean. `apply`, `delete` and `reset` are plain functions on plain data, so
//! the index is tested without an API server; the watch loop only maps watcher events onto them.

use std::collections::BTreeMap;

use kube::Resource;
use kube::runtime::watcher;

/// Namespace (empty for cluster-scoped objects) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: Resource>(obj: &K) -> Self {
        let meta = obj.meta();
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The objects of one kind, by key. While a relist is under way the old contents stay visible, and the relisted
/// set replaces them atomically when the watcher says it is complete.
#[derive(Debug)]
pub struct ObjectIndex<K> {
    objects: BTreeMap<ObjectKey, K>,
    relisting: Option<BTreeMap<ObjectKey, K>>,
    synced: bool,
}

impl<K> Default for ObjectIndex<K> {
    fn default() -> Self {
        ObjectIndex {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<K: Resource + Clone> ObjectIndex<K> {
    /// Adds or replaces an object. Returns whether anything changed: an object seen again at the same
    /// resourceVersion is not a change, and neither is an older one. The agent puts the API's reply to its own writes
    /// into the index at once, so a watch event from before that write can arrive afterwards; resourceVersions are
    /// opaque by contract, but every API server issues them as increasing integers, and only then are they compared.
    pub fn apply(&mut self, obj: K) -> bool {
        let key = ObjectKey::of(&obj);
        if let Some(old) = self.objects.get(&key) {
            let (old_rv, new_rv) = (&old.meta().resource_version, &obj.meta().resource_version);
            if old_rv.is_some() && old_rv == new_rv {
                return false;
            }
            let number = |rv: &Option<String>| rv.as_deref().and_then(|v| v.parse::<u64>().ok());
            if let (Some(old_n), Some(new_n)) = (number(old_rv), number(new_rv))
                && new_n < old_n
            {
                return false;
            }
        }
        self.objects.insert(key, obj);
        true
    }

    pub fn delete(&mut self, obj: &K) -> bool {
        self.objects.remove(&ObjectKey::of(obj)).is_some()
    }

    /// Replaces the whole contents. Returns whether anything changed.
    pub fn reset(&mut self, objs: impl IntoIterator<Item = K>) -> bool {
        let fresh: BTreeMap<ObjectKey, K> =
            objs.into_iter().map(|o| (ObjectKey::of(&o), o)).collect();
        let changed = fresh.len() != self.objects.len()
            || fresh
                .iter()
                .zip(self.objects.iter())
                .any(|((ka, a), (kb, b))| {
                    ka != kb
                        || a.meta().resource_version.is_none()
                        || a.meta().resource_version != b.meta().resource_version
                });
        self.objects = fresh;
        self.synced = true;
        changed
    }

    /// Applies one watcher event. Returns whether the visible contents changed.
    pub fn handle(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(obj) => self.apply(obj),
            watcher::Event::Delete(obj) => self.delete(&obj),
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                self.relisting
                    .get_or_insert_default()
                    .insert(ObjectKey::of(&obj), obj);
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                self.reset(listed.into_values())
            }
        }
    }

    /// Whether a complete list has been seen at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&K> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &K)> {
        self.objects.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::ObjectMeta;

    fn svc(ns: &str, name: &str, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn apply_reports_changes_by_resource_version() {
        let mut index = ObjectIndex::default();
        assert!(index.apply(svc("a", "web", "1")));
        assert!(!index.apply(svc("a", "web", "1")));
        assert!(index.apply(svc("a", "web", "2")));
        assert!(
            !index.apply(svc("a", "web", "1")),
            "an older version must not replace a newer one"
        );
        assert_eq!(
            index
                .get(&ObjectKey::new("a", "web"))
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("2")
        );
        assert_eq!(index.len(), 1);
        assert!(index.delete(&svc("a", "web", "2")));
        assert!(!index.delete(&svc("a", "web", "2")));
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_contents_only_when_done() {
        let mut index = ObjectIndex::default();
        index.apply(svc("a", "old", "1"));
        assert!(!index.is_synced());
        assert!(!index.handle(watcher::Event::Init));
        assert!(!index.handle(watcher::Event::InitApply(svc("a", "new", "5"))));
        // Until InitDone the previous contents stay visible.
        assert!(index.get(&ObjectKey::new("a", "old")).is_some());
        assert!(index.handle(watcher::Event::InitDone));
        assert!(index.is_synced());
        assert!(index.get(&ObjectKey::new("a", "old")).is_none());
        assert!(index.get(&ObjectKey::new("a", "new")).is_some());
        // The same list again changes nothing.
        index.handle(watcher::Event::Init);
        index.handle(watcher::Event::InitApply(svc("a", "new", "5")));
        assert!(!index.handle(watcher::Event::InitDone));
    }
}
