//! The lab API server's storage: JSON objects in memory, keyed by group, resource, namespace and name.
//!
//! It owns the bookkeeping Kubernetes clients rely on: one global, monotonically increasing `resourceVersion`
//! shared by every write, `metadata.uid`, `creationTimestamp`, `generation` (bumped when anything outside
//! `metadata` and `status` changes), optimistic concurrency (a stale `resourceVersion` is a Conflict), the
//! main-resource/`status` split, and a bounded history of changes from which watches resume. It knows nothing of
//! HTTP, versions or discovery: objects are stored once whatever version they were written through.
//!
//! Every write happens under one mutex and is published on a broadcast channel while that mutex is held, so a
//! watcher that reads the history and subscribes under the same mutex sees each change exactly once, in order.

use super::service_network::{self, ServiceNetwork};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// How many changes are kept for watches that resume from an older `resourceVersion`. Older ones get 410 Gone
/// and must list again, as with etcd compaction.
const HISTORY: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { resource: String, name: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    /// Refused by validation (422 Invalid).
    #[error("{kind} {name:?} is invalid: {message}")]
    Invalid {
        kind: String,
        name: String,
        message: String,
    },
    /// The server could not do what was asked (500 InternalError), as when a Service range is full.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A resource type, version-agnostic: `("", "services")`, `("metallb.io", "ipaddresspools")`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        GroupResource {
            group: group.to_owned(),
            resource: resource.to_owned(),
        }
    }

    fn display(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    gr: GroupResource,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches deliver it.
#[derive(Clone, Debug)]
pub struct StoreEvent {
    pub rv: u64,
    pub kind: EventType,
    pub gr: GroupResource,
    pub namespace: String,
    pub object: Value,
    /// The object before a MODIFIED change, so that a filtered watch can turn a change that leaves or enters
    /// its selector into DELETED or ADDED, as Kubernetes does.
    pub previous: Option<Value>,
}

/// Which part of an object an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateScope {
    /// A resource without a status subresource: everything but system metadata.
    Whole,
    /// The main resource of a kind with a status subresource: `.status` is kept as stored.
    Main,
    /// The status subresource: only `.status` changes.
    Status,
}

/// What a watch starts with: the changes it missed, then a live feed.
pub struct WatchStart {
    pub backlog: Vec<Arc<StoreEvent>>,
    pub live: broadcast::Receiver<Arc<StoreEvent>>,
    pub current: Vec<Value>,
    pub rv: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<StoreEvent>>,
}

struct Inner {
    objects: BTreeMap<ObjectKey, Value>,
    rv: u64,
    history: VecDeque<Arc<StoreEvent>>,
    /// The resourceVersion just before the oldest change in `history`.
    history_floor: u64,
    /// ClusterIPs and NodePorts held by the stored Services.
    services: ServiceNetwork,
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>> {
    let Value::Object(map) = obj else {
        return Err(Error::BadRequest("object must be a JSON object".into()));
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    match meta {
        Value::Object(m) => Ok(m),
        _ => Err(Error::BadRequest("metadata must be an object".into())),
    }
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_services(gr: &GroupResource) -> bool {
    gr.group.is_empty() && gr.resource == "services"
}

fn service_error(name: &str, e: service_network::Error) -> Error {
    match e {
        service_network::Error::Invalid(message) => Error::Invalid {
            kind: "Service".into(),
            name: name.to_owned(),
            message,
        },
        service_network::Error::Full(message) => Error::Internal(message),
    }
}

/// A random lowercase suffix for `generateName`, like the API server's five characters.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store whose Services get ClusterIPs from [`service_network::DEFAULT_SERVICE_CIDRS`].
    pub fn new() -> Self {
        Self::with_service_network(ServiceNetwork::default())
    }

    /// A store whose Services get ClusterIPs and NodePorts from `services`.
    pub fn with_service_network(services: ServiceNetwork) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Store {
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                rv: 0,
                history: VecDeque::new(),
                history_floor: 0,
                services,
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another request panicked mid-write; the map itself is still consistent
        // because every write is a single insert or remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(gr: &GroupResource, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            gr: gr.clone(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.to_owned(),
        }
    }

    fn not_found(gr: &GroupResource, name: &str) -> Error {
        Error::NotFound {
            resource: gr.display(),
            name: name.to_owned(),
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Objects of one resource, in one namespace or (with `None`) in all, sorted by namespace and name, and the
    /// resourceVersion they were read at.
    pub fn list(&self, gr: &GroupResource, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        (Self::list_locked(&inner, gr, namespace), inner.rv)
    }

    fn list_locked(inner: &Inner, gr: &GroupResource, namespace: Option<&str>) -> Vec<Value> {
        inner
            .objects
            .iter()
            .filter(|(k, _)| k.gr == *gr && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn get(&self, gr: &GroupResource, namespace: Option<&str>, name: &str) -> Result<Value> {
        self.lock()
            .objects
            .get(&Self::key(gr, namespace, name))
            .cloned()
            .ok_or_else(|| Self::not_found(gr, name))
    }

    fn commit(
        &self,
        inner: &mut Inner,
        kind: EventType,
        key: &ObjectKey,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(StoreEvent {
            rv: inner.rv,
            kind,
            gr: key.gr.clone(),
            namespace: key.namespace.clone(),
            object,
            previous,
        });
        if inner.history.len() == HISTORY
            && let Some(old) = inner.history.pop_front()
        {
            inner.history_floor = old.rv;
        }
        inner.history.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// Creates an object. `namespace` is `Some` exactly for namespaced resources; a missing namespace is created
    /// on the fly, which is friendlier for a lab than Kubernetes' NotFound.
    pub fn create(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let meta = metadata_mut(&mut obj)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", name_suffix()),
                _ => {
                    return Err(Error::BadRequest(
                        "metadata.name or metadata.generateName is required".into(),
                    ));
                }
            },
        };
        if let Some(ns) = namespace {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(Error::BadRequest(format!(
                        "the namespace of the object ({given}) does not match the namespace of the request ({ns})"
                    )));
                }
                _ => {}
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        let key = Self::key(gr, namespace, &name);
        if inner.objects.contains_key(&key) {
            return Err(Error::AlreadyExists {
                resource: gr.display(),
                name,
            });
        }
        if is_services(gr) {
            inner
                .services
                .create(&mut obj)
                .map_err(|e| service_error(&name, e))?;
        }
        let meta = metadata_mut(&mut obj)?;
        if let Some(ns) = namespace {
            self.ensure_namespace(&mut inner, ns);
        }
        inner.rv += 1;
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("resourceVersion".into(), json!(inner.rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("managedFields");
        inner.objects.insert(key.clone(), obj.clone());
        self.commit(&mut inner, EventType::Added, &key, obj.clone(), None);
        Ok(obj)
    }

    fn ensure_namespace(&self, inner: &mut Inner, ns: &str) {
        let key = Self::key(&GroupResource::new("", "namespaces"), None, ns);
        if inner.objects.contains_key(&key) {
            return;
        }
        inner.rv += 1;
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "uid": uuid::Uuid::new_v4().to_string(),
                "resourceVersion": inner.rv.to_string(),
                "creationTimestamp": now(),
                "labels": {"kubernetes.io/metadata.name": ns},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        inner.objects.insert(key.clone(), obj.clone());
        self.commit(inner, EventType::Added, &key, obj, None);
    }

    /// Creates a namespace if it does not exist yet.
    pub fn ensure_namespaces(&self, names: &[&str]) {
        let mut inner = self.lock();
        for ns in names {
            self.ensure_namespace(&mut inner, ns);
        }
    }

    /// Replaces an object. A non-empty `metadata.resourceVersion` in `obj` must equal the stored one (optimistic
    /// concurrency); an empty one means "unconditionally", as in Kubernetes.
    pub fn update(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        scope: UpdateScope,
    ) -> Result<Value> {
        self.modify(gr, namespace, name, scope, |_| Ok(obj))
    }

    /// Read-modify-write of one object under the store lock: `f` gets the stored object and returns the new one,
    /// which is then checked and saved as by [`Store::update`]. This is how patches avoid lost updates.
    pub fn modify<F>(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        name: &str,
        scope: UpdateScope,
        f: F,
    ) -> Result<Value>
    where
        F: FnOnce(&Value) -> Result<Value>,
    {
        let mut inner = self.lock();
        let key = Self::key(gr, namespace, name);
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| Self::not_found(gr, name))?;
        let mut new = f(&old)?;
        let conflict = || Error::Conflict {
            resource: gr.display(),
            name: name.to_owned(),
        };
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or_default();
        match meta_str(&new, "resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != old_rv => return Err(conflict()),
            _ => {}
        }
        match meta_str(&new, "name") {
            Some(n) if !n.is_empty() && n != name => {
                return Err(Error::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if !new.is_object() {
            return Err(Error::BadRequest("object must be a JSON object".into()));
        }
        match scope {
            UpdateScope::Whole => {}
            UpdateScope::Main => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Value::Object(m) = &mut new {
                        m.remove("status");
                    }
                }
            },
            UpdateScope::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Value::Object(m) = &mut new {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        // System metadata is the server's, whatever the client sent.
        let old_meta = old.get("metadata").cloned().unwrap_or_default();
        let meta = metadata_mut(&mut new)?;
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "resourceVersion",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("managedFields");
        if is_services(gr) && scope != UpdateScope::Status {
            inner
                .services
                .update(&old, &mut new)
                .map_err(|e| service_error(name, e))?;
        }
        if spec_part(&new) != spec_part(&old) {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut new)?.insert("generation".into(), json!(generation + 1));
        }
        if new == old {
            // A no-op write changes nothing and notifies nobody, as in Kubernetes.
            return Ok(old);
        }
        inner.rv += 1;
        let rv = inner.rv.to_string();
        metadata_mut(&mut new)?.insert("resourceVersion".into(), json!(rv));
        inner.objects.insert(key.clone(), new.clone());
        self.commit(
            &mut inner,
            EventType::Modified,
            &key,
            new.clone(),
            Some(old),
        );
        Ok(new)
    }

    /// Deletes an object and returns it. `precondition_rv`, when given, must match. Deleting a namespace deletes
    /// everything in it.
    pub fn delete(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let key = Self::key(gr, namespace, name);
        let Some(old) = inner.objects.get(&key) else {
            return Err(Self::not_found(gr, name));
        };
        if let Some(want) = precondition_rv
            && meta_str(old, "resourceVersion") != Some(want)
        {
            return Err(Error::Conflict {
                resource: gr.display(),
                name: name.to_owned(),
            });
        }
        if gr.group.is_empty() && gr.resource == "namespaces" {
            let contained: Vec<ObjectKey> = inner
                .objects
                .keys()
                .filter(|k| k.namespace == name)
                .cloned()
                .collect();
            for k in contained {
                self.remove_locked(&mut inner, &k);
            }
        }
        self.remove_locked(&mut inner, &key)
            .ok_or_else(|| Self::not_found(gr, name))
    }

    fn remove_locked(&self, inner: &mut Inner, key: &ObjectKey) -> Option<Value> {
        let mut obj = inner.objects.remove(key)?;
        if is_services(&key.gr) {
            inner.services.release(&obj);
        }
        inner.rv += 1;
        // A DELETED event carries the object at the resourceVersion of its deletion.
        if let Ok(meta) = metadata_mut(&mut obj) {
            meta.insert("resourceVersion".into(), json!(inner.rv.to_string()));
        }
        self.commit(inner, EventType::Deleted, key, obj.clone(), None);
        Some(obj)
    }

    /// Starts a watch of one resource. With `since = Some(rv)`, the backlog holds every later change of that
    /// resource (410 Gone if the history no longer reaches back that far); with `None`, `current` holds a snapshot
    /// to be sent as ADDED events, as for `resourceVersion=0` or an absent one.
    pub fn watch(
        &self,
        gr: &GroupResource,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> Result<WatchStart> {
        let inner = self.lock();
        let live = self.tx.subscribe();
        let wanted =
            |e: &&Arc<StoreEvent>| e.gr == *gr && namespace.is_none_or(|ns| e.namespace == ns);
        match since {
            Some(rv) => {
                if rv < inner.history_floor {
                    return Err(Error::Gone {
                        requested: rv,
                        oldest: inner.history_floor,
                    });
                }
                let backlog = inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .filter(wanted)
                    .cloned()
                    .collect();
                Ok(WatchStart {
                    backlog,
                    live,
                    current: Vec::new(),
                    rv: inner.rv,
                })
            }
            None => Ok(WatchStart {
                backlog: Vec::new(),
                live,
                current: Self::list_locked(&inner, gr, namespace),
                rv: inner.rv,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc_gr() -> GroupResource {
        GroupResource::new("", "services")
    }

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"type": "LoadBalancer"}})
    }

    fn rv(obj: &Value) -> u64 {
        meta_str(obj, "resourceVersion").unwrap().parse().unwrap()
    }

    #[test]
    fn writes_increment_one_global_resource_version() {
        let store = Store::new();
        store.ensure_namespaces(&["default"]);
        let a = store.create(&svc_gr(), Some("default"), svc("a")).unwrap();
        let b = store.create(&svc_gr(), Some("default"), svc("b")).unwrap();
        assert!(rv(&b) > rv(&a));
        assert_eq!(store.resource_version(), rv(&b));
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(a["metadata"]["namespace"], "default");
        assert!(meta_str(&a, "uid").is_some_and(|u| u.len() == 36));
        assert!(meta_str(&a, "creationTimestamp").is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn create_conflicts_and_generate_name() {
        let store = Store::new();
        store.create(&svc_gr(), Some("ns1"), svc("a")).unwrap();
        assert!(matches!(
            store.create(&svc_gr(), Some("ns1"), svc("a")),
            Err(Error::AlreadyExists { .. })
        ));
        // Same name in another namespace is another object, and the namespace springs into existence.
        store.create(&svc_gr(), Some("ns2"), svc("a")).unwrap();
        store
            .get(&GroupResource::new("", "namespaces"), None, "ns2")
            .unwrap();
        let generated = store
            .create(
                &svc_gr(),
                Some("ns1"),
                json!({"metadata": {"generateName": "web-"}}),
            )
            .unwrap();
        let name = meta_str(&generated, "name").unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert!(matches!(
            store.create(&svc_gr(), Some("ns1"), json!({"metadata": {}})),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            store.create(&svc_gr(), Some("ns1"), json!([1, 2])),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn stale_update_is_a_conflict_and_unconditional_update_is_not() {
        let store = Store::new();
        let a = store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        let mut first = a.clone();
        first["spec"]["type"] = json!("ClusterIP");
        let first = store
            .update(&svc_gr(), Some("d"), "a", first, UpdateScope::Main)
            .unwrap();
        assert_eq!(first["metadata"]["generation"], 2);
        let mut stale = a.clone();
        stale["spec"]["type"] = json!("NodePort");
        assert!(matches!(
            store.update(&svc_gr(), Some("d"), "a", stale.clone(), UpdateScope::Main),
            Err(Error::Conflict { .. })
        ));
        stale["metadata"]["resourceVersion"] = json!("");
        let forced = store
            .update(&svc_gr(), Some("d"), "a", stale, UpdateScope::Main)
            .unwrap();
        assert_eq!(forced["spec"]["type"], "NodePort");
        assert_eq!(forced["metadata"]["uid"], a["metadata"]["uid"]);
    }

    #[test]
    fn no_op_update_keeps_resource_version() {
        let store = Store::new();
        let a = store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        let same = store
            .update(&svc_gr(), Some("d"), "a", a.clone(), UpdateScope::Main)
            .unwrap();
        assert_eq!(rv(&same), rv(&a));
    }

    #[test]
    fn status_subresource_is_isolated() {
        let store = Store::new();
        let a = store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        // A status write cannot change the spec or labels...
        let mut st = a.clone();
        st["spec"]["type"] = json!("NodePort");
        st["metadata"]["labels"] = json!({"x": "y"});
        st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
        let after_status = store
            .update(&svc_gr(), Some("d"), "a", st, UpdateScope::Status)
            .unwrap();
        assert_eq!(after_status["spec"]["type"], "LoadBalancer");
        assert!(after_status["metadata"].get("labels").is_none());
        assert_eq!(
            after_status["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.10"
        );
        assert_eq!(after_status["metadata"]["generation"], 1);
        // ...and a main write cannot change or drop the status.
        let mut main = after_status.clone();
        main["status"] = json!({});
        main["metadata"]["labels"] = json!({"x": "y"});
        let after_main = store
            .update(&svc_gr(), Some("d"), "a", main, UpdateScope::Main)
            .unwrap();
        assert_eq!(after_main["status"], after_status["status"]);
        assert_eq!(after_main["metadata"]["labels"]["x"], "y");
        // Whole-object resources take everything.
        let mut whole = after_main.clone();
        whole["status"] = json!({"x": 1});
        let after_whole = store
            .update(&svc_gr(), Some("d"), "a", whole, UpdateScope::Whole)
            .unwrap();
        assert_eq!(after_whole["status"], json!({"x": 1}));
    }

    #[test]
    fn modify_rejects_renames_and_stale_patches() {
        let store = Store::new();
        store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        let renamed = store.modify(&svc_gr(), Some("d"), "a", UpdateScope::Whole, |o| {
            let mut o = o.clone();
            o["metadata"]["name"] = json!("b");
            Ok(o)
        });
        assert!(matches!(renamed, Err(Error::BadRequest(_))));
        let stale = store.modify(&svc_gr(), Some("d"), "a", UpdateScope::Whole, |o| {
            let mut o = o.clone();
            o["metadata"]["resourceVersion"] = json!("1");
            o["spec"]["x"] = json!(1);
            Ok(o)
        });
        assert!(matches!(stale, Err(Error::Conflict { .. })));
        assert!(matches!(
            store.modify(&svc_gr(), Some("d"), "zz", UpdateScope::Whole, |o| Ok(
                o.clone()
            )),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn delete_returns_object_and_honours_preconditions() {
        let store = Store::new();
        let a = store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        assert!(matches!(
            store.delete(&svc_gr(), Some("d"), "a", Some("999")),
            Err(Error::Conflict { .. })
        ));
        let gone = store
            .delete(&svc_gr(), Some("d"), "a", meta_str(&a, "resourceVersion"))
            .unwrap();
        assert_eq!(gone["metadata"]["name"], "a");
        assert!(matches!(
            store.delete(&svc_gr(), Some("d"), "a", None),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn deleting_a_namespace_deletes_its_objects() {
        let store = Store::new();
        store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        store.create(&svc_gr(), Some("e"), svc("a")).unwrap();
        store
            .delete(&GroupResource::new("", "namespaces"), None, "d", None)
            .unwrap();
        assert_eq!(store.list(&svc_gr(), None).0.len(), 1);
    }

    #[tokio::test]
    async fn watch_resumes_in_order_and_then_follows_live_changes() {
        let store = Store::new();
        let a = store.create(&svc_gr(), Some("d"), svc("a")).unwrap();
        let start_rv = rv(&a);
        let mut a2 = a.clone();
        a2["spec"]["x"] = json!(1);
        store
            .update(&svc_gr(), Some("d"), "a", a2, UpdateScope::Main)
            .unwrap();
        store
            .create(&GroupResource::new("", "configmaps"), Some("d"), svc("cm"))
            .unwrap();
        store.create(&svc_gr(), Some("other"), svc("b")).unwrap();
        let mut w = store.watch(&svc_gr(), Some("d"), Some(start_rv)).unwrap();
        let kinds: Vec<_> = w.backlog.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventType::Modified]);
        store.delete(&svc_gr(), Some("d"), "a", None).unwrap();
        let live = w.live.recv().await.unwrap();
        assert_eq!(live.kind, EventType::Deleted);
        assert!(live.rv > w.backlog[0].rv);
        let snapshot = store.watch(&svc_gr(), None, None).unwrap();
        assert_eq!(snapshot.current.len(), 1);
        assert!(snapshot.backlog.is_empty());
    }

    #[test]
    fn watch_from_before_the_history_is_gone() {
        // More Services than an IPv4 /24 holds.
        let store =
            Store::with_service_network(ServiceNetwork::parse("2001:db8:ffff::/108").unwrap());
        for i in 0..(HISTORY + 5) {
            store
                .create(&svc_gr(), Some("d"), svc(&format!("s{i}")))
                .unwrap();
        }
        assert!(matches!(
            store.watch(&svc_gr(), None, Some(1)),
            Err(Error::Gone { .. })
        ));
        let recent = store.resource_version() - 3;
        assert_eq!(
            store
                .watch(&svc_gr(), None, Some(recent))
                .unwrap()
                .backlog
                .len(),
            3
        );
    }
}
