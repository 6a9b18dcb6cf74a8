//! A synchronous, in-memory index of one kind of Kubernetes object, fed by a watcher.
//!
//! It knows nothing about what the objects mean. `apply`, `delete` and `reset` are plain functions on plain data, so
//! the index is tested without an API server; the watch loop only maps watcher events onto them.

use std::collections::{BTreeMap, BTreeSet};

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

/// What changed in an index since a consumer last looked ([`ObjectIndex::changes_since`]): the keys of the objects
/// added, replaced or deleted, or everything (the consumer's first look, or it fell behind the journal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub all: bool,
    pub keys: BTreeSet<ObjectKey>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }
}

/// Where one consumer of an index stands in its journal. Every consumer keeps its own, so each sees every change,
/// whoever else reads the index. A new cursor has seen nothing: its first look returns everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    looked: bool,
    /// The sequence number of the last change seen.
    seen: u64,
}

/// The keys changed, in order, each with its sequence number (from 1). Bounded: past [`Journal::limit`] the oldest
/// entries go, and a consumer whose cursor is older than what remains gets everything, which is always correct.
#[derive(Debug, Default)]
struct Journal {
    entries: std::collections::VecDeque<(u64, ObjectKey)>,
    /// The sequence number of the last change noted.
    last: u64,
    /// Entries up to this sequence number have been dropped.
    dropped: u64,
}

impl Journal {
    /// At least this many entries are kept; more while the index holds more objects (twice their number).
    const MIN_LIMIT: usize = 4096;

    fn note(&mut self, key: &ObjectKey, objects: usize) {
        self.last += 1;
        self.entries.push_back((self.last, key.clone()));
        let limit = Self::MIN_LIMIT.max(objects.saturating_mul(2));
        while self.entries.len() > limit {
            if let Some((seq, _)) = self.entries.pop_front() {
                self.dropped = seq;
            }
        }
    }

    fn since(&self, cursor: &mut Cursor) -> Changes {
        let changes = if !cursor.looked || cursor.seen < self.dropped {
            Changes {
                all: true,
                keys: BTreeSet::new(),
            }
        } else {
            let start = self.entries.partition_point(|(seq, _)| *seq <= cursor.seen);
            Changes {
                all: false,
                keys: self
                    .entries
                    .range(start..)
                    .map(|(_, k)| k.clone())
                    .collect(),
            }
        };
        *cursor = Cursor {
            looked: true,
            seen: self.last,
        };
        changes
    }
}

/// The objects of one kind, by key. While a relist is under way the old contents stay visible, and the relisted
/// set replaces them atomically when the watcher says it is complete. It also keeps a journal of the keys changed,
/// so that each consumer, with its own [`Cursor`], can recompute only what changed since it last looked.
#[derive(Debug)]
pub struct ObjectIndex<K> {
    objects: BTreeMap<ObjectKey, K>,
    relisting: Option<BTreeMap<ObjectKey, K>>,
    synced: bool,
    journal: Journal,
}

impl<K> Default for ObjectIndex<K> {
    fn default() -> Self {
        ObjectIndex {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
            journal: Journal::default(),
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
        self.objects.insert(key.clone(), obj);
        self.journal.note(&key, self.objects.len());
        true
    }

    pub fn delete(&mut self, obj: &K) -> bool {
        let key = ObjectKey::of(obj);
        let gone = self.objects.remove(&key).is_some();
        if gone {
            self.journal.note(&key, self.objects.len());
        }
        gone
    }

    /// Replaces the whole contents. Returns whether anything changed; the keys that did are noted.
    pub fn reset(&mut self, objs: impl IntoIterator<Item = K>) -> bool {
        let fresh: BTreeMap<ObjectKey, K> =
            objs.into_iter().map(|o| (ObjectKey::of(&o), o)).collect();
        let mut changed = false;
        let objects = fresh.len().max(self.objects.len());
        for (key, obj) in &fresh {
            let rv = &obj.meta().resource_version;
            let same = rv.is_some()
                && self
                    .objects
                    .get(key)
                    .is_some_and(|old| &old.meta().resource_version == rv);
            if !same {
                self.journal.note(key, objects);
                changed = true;
            }
        }
        for key in self.objects.keys() {
            if !fresh.contains_key(key) {
                self.journal.note(key, objects);
                changed = true;
            }
        }
        self.objects = fresh;
        self.synced = true;
        changed
    }

    /// The keys changed since `cursor` last looked (everything at its first look, or when it fell behind the
    /// journal), and moves it to now.
    pub fn changes_since(&self, cursor: &mut Cursor) -> Changes {
        self.journal.since(cursor)
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

    #[test]
    fn every_consumer_sees_every_change_and_one_left_behind_gets_everything() {
        let mut index = ObjectIndex::default();
        let (mut allocation, mut dataplane) = (Cursor::default(), Cursor::default());
        assert!(
            index.changes_since(&mut allocation).all,
            "a first look on an empty index"
        );
        index.apply(svc("a", "web", "1"));
        assert_eq!(
            index.changes_since(&mut allocation).keys,
            BTreeSet::from([ObjectKey::new("a", "web")])
        );
        assert!(index.changes_since(&mut dataplane).all);
        index.apply(svc("a", "db", "1"));
        for cursor in [&mut allocation, &mut dataplane] {
            assert_eq!(
                index.changes_since(cursor).keys,
                BTreeSet::from([ObjectKey::new("a", "db")]),
                "one consumer's look takes nothing from another"
            );
        }
        // Past the journal's bound, the consumer that did not look gets everything.
        for v in 2..(Journal::MIN_LIMIT as u64 + 10) {
            index.apply(svc("a", "web", &v.to_string()));
        }
        assert!(index.changes_since(&mut dataplane).all);
        assert!(index.changes_since(&mut dataplane).is_empty());
    }

    #[test]
    fn changes_name_the_keys_touched_since_they_were_last_taken() {
        let mut index = ObjectIndex::default();
        let mut cursor = Cursor::default();
        index.apply(svc("a", "web", "1"));
        index.apply(svc("a", "db", "1"));
        // Nothing was seen before: a consumer starts from everything.
        assert!(index.changes_since(&mut cursor).all);
        assert!(index.changes_since(&mut cursor).is_empty());
        index.apply(svc("a", "web", "1"));
        assert!(
            index.changes_since(&mut cursor).is_empty(),
            "the same version is no change"
        );
        index.apply(svc("a", "web", "2"));
        index.delete(&svc("a", "db", "1"));
        index.delete(&svc("a", "gone", "1"));
        let changes = index.changes_since(&mut cursor);
        assert!(!changes.all);
        assert_eq!(
            changes.keys,
            BTreeSet::from([ObjectKey::new("a", "db"), ObjectKey::new("a", "web")])
        );
        // A relist notes exactly what differs from the contents it replaces.
        index.apply(svc("a", "keep", "3"));
        index.changes_since(&mut cursor);
        index.handle(watcher::Event::Init);
        index.handle(watcher::Event::InitApply(svc("a", "keep", "3")));
        index.handle(watcher::Event::InitApply(svc("a", "new", "4")));
        assert!(index.handle(watcher::Event::InitDone));
        assert_eq!(
            index.changes_since(&mut cursor).keys,
            BTreeSet::from([ObjectKey::new("a", "new"), ObjectKey::new("a", "web")])
        );
    }
}
