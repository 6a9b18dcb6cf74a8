//! HTTP routing and handlers: turns Kubernetes REST requests into [`Store`] calls and store results into the
//! JSON (objects, lists, Tables, `Status` errors, watch streams) that client-go and kube-rs expect.
//!
//! ```text
//! request ──▶ route() ──▶ discovery document
//!                    └──▶ resource handler ──▶ Store (one mutex) ──▶ JSON reply
//!                                  watch ──▶ task ──(mpsc, one JSON line per event)──▶ chunked body
//!                                               ▲ Store broadcast    ▲ shutdown / timeoutSeconds end it
//! ```
//!
//! Every failure becomes a `Status` reply; nothing a client sends may panic the server.

use super::discovery;
use super::openapi;
use super::patch::{self, PatchType};
use super::protobuf;
use super::resources::{self, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};
use super::service_network::ServiceNetwork;
use super::store::{self, EventType, GroupResource, Store, StoreEvent, UpdateScope};
use super::table::{self, IncludeObject};
use super::validate;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The largest request body accepted; objects in the lab are small.
const MAX_BODY: usize = 8 << 20;
/// How long a watch lasts when the client does not say.
const DEFAULT_WATCH_SECS: u64 = 1800;
/// Namespaces that exist from the start.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "metallb-system", "ironlb-system"];

/// Why a request failed, as a `Status` reason and code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Patch(#[from] patch::Error),
    #[error(transparent)]
    Selector(#[from] super::selector::Error),
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    BadRequest(String),
    #[error("{method} is not supported on this resource")]
    MethodNotAllowed { method: Method },
    #[error(transparent)]
    Protobuf(#[from] protobuf::Error),
}

impl Error {
    fn reason_and_code(&self) -> (&'static str, StatusCode) {
        match self {
            Error::Store(store::Error::NotFound { .. }) | Error::NoRoute => {
                ("NotFound", StatusCode::NOT_FOUND)
            }
            Error::Store(store::Error::AlreadyExists { .. }) => {
                ("AlreadyExists", StatusCode::CONFLICT)
            }
            Error::Store(store::Error::Conflict { .. }) => ("Conflict", StatusCode::CONFLICT),
            Error::Store(store::Error::Gone { .. }) => ("Expired", StatusCode::GONE),
            Error::Store(store::Error::Invalid { .. }) => {
                ("Invalid", StatusCode::UNPROCESSABLE_ENTITY)
            }
            Error::Store(store::Error::Internal(_)) => {
                ("InternalError", StatusCode::INTERNAL_SERVER_ERROR)
            }
            Error::Patch(patch::Error::UnsupportedType(_))
            | Error::Protobuf(protobuf::Error::UnsupportedKind { .. }) => {
                ("UnsupportedMediaType", StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            Error::Patch(patch::Error::JsonPatch(_)) => {
                ("Invalid", StatusCode::UNPROCESSABLE_ENTITY)
            }
            Error::MethodNotAllowed { .. } => ("MethodNotAllowed", StatusCode::METHOD_NOT_ALLOWED),
            Error::Store(store::Error::BadRequest(_))
            | Error::Patch(_)
            | Error::Selector(_)
            | Error::Protobuf(protobuf::Error::Malformed(_))
            | Error::BadRequest(_) => ("BadRequest", StatusCode::BAD_REQUEST),
        }
    }

    /// The `Status` object describing this error.
    pub fn status(&self) -> Value {
        let (reason, code) = self.reason_and_code();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        match self {
            Error::Store(
                store::Error::NotFound { resource, name }
                | store::Error::AlreadyExists { resource, name }
                | store::Error::Conflict { resource, name },
            ) => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                status["details"] = json!({"name": name, "group": group, "kind": kind});
            }
            Error::NoRoute => status["details"] = json!({}),
            _ => {}
        }
        status
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (_, code) = self.reason_and_code();
        json_response(code, &self.status())
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One request as the server received it, for tests that check what clients ask for (RBAC coverage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub user_agent: String,
}

/// The most recent requests, oldest first. Bounded, so that a long-running `ironlb lab api` does not grow without
/// limit.
#[derive(Debug, Default)]
pub struct RequestLog {
    records: std::sync::Mutex<std::collections::VecDeque<RequestRecord>>,
}

impl RequestLog {
    /// How many requests are kept.
    pub const CAPACITY: usize = 100_000;

    fn record(&self, record: RequestRecord) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == Self::CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// A copy of the kept requests, oldest first.
    pub fn snapshot(&self) -> Vec<RequestRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }
}

/// Shared state of one lab API server.
pub struct ApiState {
    pub store: Store,
    pub requests: Arc<RequestLog>,
    builtin: Vec<ResourceDef>,
    /// Resources registered by CustomResourceDefinitions, by (group, plural).
    custom: RwLock<HashMap<(String, String), ResourceDef>>,
    shutdown: watch::Receiver<bool>,
}

impl ApiState {
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self::with_service_network(shutdown, ServiceNetwork::default())
    }

    /// A server whose Services get ClusterIPs and NodePorts from `network`.
    pub fn with_service_network(shutdown: watch::Receiver<bool>, network: ServiceNetwork) -> Self {
        let store = Store::with_service_network(network);
        store.ensure_namespaces(INITIAL_NAMESPACES);
        ApiState {
            store,
            requests: Arc::default(),
            builtin: resources::builtin(),
            custom: RwLock::new(HashMap::new()),
            shutdown,
        }
    }

    /// Built-in resources, then custom ones that do not shadow a built-in.
    fn defs(&self) -> Vec<ResourceDef> {
        let mut defs = self.builtin.clone();
        let custom = self.custom.read().unwrap_or_else(|e| e.into_inner());
        let mut extra: Vec<&ResourceDef> = custom
            .values()
            .filter(|c| {
                !defs
                    .iter()
                    .any(|b| b.group == c.group && b.plural == c.plural)
            })
            .collect();
        extra.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
        defs.extend(extra.into_iter().cloned());
        defs
    }

    /// Keeps discovery in step with a CRD that was written or deleted.
    fn crd_changed(&self, crd: &Value, deleted: bool) {
        let Some(def) = ResourceDef::from_crd(crd) else {
            return;
        };
        let mut custom = self.custom.write().unwrap_or_else(|e| e.into_inner());
        let key = (def.group.clone(), def.plural.clone());
        if deleted {
            custom.remove(&key);
        } else {
            custom.insert(key, def);
        }
    }
}

/// A parsed resource path.
struct Target {
    def: ResourceDef,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    watch_path: bool,
}

impl Target {
    fn gr(&self) -> GroupResource {
        GroupResource::new(&self.def.group, &self.def.plural)
    }

    fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn scope(&self) -> UpdateScope {
        match (self.def.status, self.status) {
            (_, true) => UpdateScope::Status,
            (true, false) => UpdateScope::Main,
            (false, false) => UpdateScope::Whole,
        }
    }

    /// Refuses a body that does not decode as this built-in kind; with `fieldValidation=Strict`, as kubectl sends,
    /// also one with fields the kind does not have.
    fn validate(&self, obj: &Value, q: &Query) -> Result<()> {
        let strict = q.get("fieldValidation") == Some("Strict");
        validate::check(&self.def.group, &self.def.plural, obj, strict).map_err(Error::BadRequest)
    }

    /// Sets apiVersion and kind as seen through this request's version.
    fn present(&self, mut obj: Value) -> Value {
        if let Value::Object(m) = &mut obj {
            m.insert(
                "apiVersion".into(),
                json!(self.def.api_version(&self.version)),
            );
            m.insert("kind".into(), json!(self.def.kind));
        }
        obj
    }
}

enum Route {
    Json(Value),
    /// `/openapi/v2`, which client-go reads only as protobuf.
    OpenApiV2,
    Resource(Box<Target>),
}

fn route(lab: &ApiState, path: &str) -> Result<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let defs = lab.defs();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Json(discovery::version())),
        ["healthz" | "readyz" | "livez"] => return Ok(Route::Json(json!("ok"))),
        ["api"] => return Ok(Route::Json(discovery::api_versions())),
        ["openapi", "v2"] => return Ok(Route::OpenApiV2),
        ["openapi", "v3"] => return Ok(Route::Json(openapi::root(&defs))),
        ["openapi", "v3", "api", version] => {
            return openapi::document(&defs, "", version)
                .map(Route::Json)
                .ok_or(Error::NoRoute);
        }
        ["openapi", "v3", "apis", group, version] => {
            return openapi::document(&defs, group, version)
                .map(Route::Json)
                .ok_or(Error::NoRoute);
        }
        ["apis"] => return Ok(Route::Json(discovery::group_list(&defs))),
        ["apis", group] => {
            return discovery::group(&defs, group)
                .map(Route::Json)
                .ok_or(Error::NoRoute);
        }
        ["api", version] => {
            return discovery::resource_list(&defs, "", version)
                .map(Route::Json)
                .ok_or(Error::NoRoute);
        }
        ["apis", group, version] => {
            return discovery::resource_list(&defs, group, version)
                .map(Route::Json)
                .ok_or(Error::NoRoute);
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(Error::NoRoute),
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    // `namespaces/<ns>/<resource>/...` addresses a namespaced resource; `namespaces/<ns>[/status]` is the
    // Namespace object itself.
    let (namespace, resource, name, sub) = match rest {
        ["namespaces", ns, resource, tail @ ..]
            if group.is_empty()
                && matches!(*resource, "status" | "finalize")
                && tail.is_empty() =>
        {
            (None, "namespaces", Some(*ns), Some(*resource))
        }
        ["namespaces", ns, resource, tail @ ..] => (
            Some(*ns),
            *resource,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [resource, tail @ ..] => (None, *resource, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(Error::NoRoute),
    };
    if rest.len() > 5 {
        return Err(Error::NoRoute);
    }
    let def = defs
        .into_iter()
        .find(|d| {
            d.group == group && d.plural == resource && d.versions.iter().any(|v| v == version)
        })
        .ok_or(Error::NoRoute)?;
    if namespace.is_some() && !def.namespaced {
        return Err(Error::NoRoute);
    }
    let status = match sub {
        None => false,
        Some("status") if def.status => true,
        Some(_) => return Err(Error::NoRoute),
    };
    Ok(Route::Resource(Box::new(Target {
        def,
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
        watch_path,
    })))
}

struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }
}

/// Label and field selectors of a list or watch.
struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(q: &Query) -> Result<Self> {
        Ok(Filter {
            labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Entry point for every request.
pub async fn handle(lab: Arc<ApiState>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return Error::BadRequest(format!("cannot read request body: {e}")).into_response();
        }
    };
    lab.requests.record(RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        user_agent: header_str(&parts.headers, header::USER_AGENT).to_owned(),
    });
    let query = Query::parse(parts.uri.query());
    tracing::debug!(method = %parts.method, uri = %parts.uri, "lab api request");
    match dispatch(
        &lab,
        &parts.method,
        parts.uri.path(),
        &query,
        &parts.headers,
        body,
    ) {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(method = %parts.method, uri = %parts.uri, error = %e, "lab api request failed");
            e.into_response()
        }
    }
}

/// The object in a POST or PUT body: JSON, or protobuf for the built-in kinds kubectl's typed commands send.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    if protobuf::is_protobuf(header_str(headers, header::CONTENT_TYPE)) {
        return Ok(protobuf::decode(body)?);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::BadRequest(
            "request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn dispatch(
    lab: &Arc<ApiState>,
    method: &Method,
    path: &str,
    q: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let target = match route(lab, path)? {
        Route::Json(doc) if *method == Method::GET => {
            return Ok(json_response(StatusCode::OK, &doc));
        }
        Route::OpenApiV2 if *method == Method::GET => {
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, openapi::V2_CONTENT_TYPE)],
                openapi::V2_DOCUMENT,
            )
                .into_response());
        }
        Route::Json(_) | Route::OpenApiV2 => {
            return Err(Error::MethodNotAllowed {
                method: method.clone(),
            });
        }
        Route::Resource(t) => *t,
    };
    let as_table = table::wants_table(header_str(headers, header::ACCEPT));
    let dry_run = q.get("dryRun").is_some();
    let store = &lab.store;
    let gr = target.gr();
    let reply = |obj: Value| -> Result<Response> {
        let obj = target.present(obj);
        if as_table && *method == Method::GET {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let include = IncludeObject::from_query(q.get("includeObject"));
            return Ok(json_response(
                StatusCode::OK,
                &table::table(&target.def.group, &target.def.plural, &[obj], rv, include),
            ));
        }
        Ok(json_response(StatusCode::OK, &obj))
    };
    if target.def.namespaced
        && target.namespace.is_none()
        && (target.name.is_some() || *method != Method::GET)
    {
        return Err(Error::NoRoute);
    }
    let Some(name) = target.name.clone() else {
        return match *method {
            Method::GET if target.watch_path || q.flag("watch") => watch(lab, target, q, as_table),
            Method::GET => list(lab, &target, q, as_table),
            Method::POST => {
                let obj = parse_body(headers, &body)?;
                target.validate(&obj, q)?;
                let obj = prepare_create(&target, obj);
                if dry_run {
                    return reply(obj);
                }
                let created = store.create(&gr, target.ns(), obj)?;
                after_write(lab, &target, &created, false);
                Ok(json_response(StatusCode::CREATED, &target.present(created)))
            }
            Method::DELETE => {
                let filter = Filter::from_query(q)?;
                let (items, _) = store.list(&gr, target.ns());
                let mut deleted = Vec::new();
                for item in items.iter().filter(|i| filter.matches(i)) {
                    let name = item
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
                    if let Ok(obj) = store.delete(&gr, ns.or(target.ns()), name, None) {
                        after_write(lab, &target, &obj, true);
                        deleted.push(target.present(obj));
                    }
                }
                Ok(json_response(
                    StatusCode::OK,
                    &list_doc(&target, deleted, store.resource_version()),
                ))
            }
            _ => Err(Error::MethodNotAllowed {
                method: method.clone(),
            }),
        };
    };
    match *method {
        Method::GET if target.watch_path || q.flag("watch") => {
            let mut q2 = Query(q.0.clone());
            let selector = match q.get("fieldSelector") {
                Some(f) if !f.is_empty() => format!("{f},metadata.name={name}"),
                _ => format!("metadata.name={name}"),
            };
            q2.0.insert("fieldSelector".into(), selector);
            let mut t = target;
            t.name = None;
            watch(lab, t, &q2, as_table)
        }
        Method::GET => reply(store.get(&gr, target.ns(), &name)?),
        Method::PUT => {
            let mut obj = parse_body(headers, &body)?;
            target.validate(&obj, q)?;
            normalize(&target, &mut obj);
            if dry_run {
                return reply(obj);
            }
            let updated = store.update(&gr, target.ns(), &name, obj, target.scope())?;
            after_write(lab, &target, &updated, false);
            reply(updated)
        }
        Method::PATCH => {
            let kind = PatchType::from_content_type(header_str(headers, header::CONTENT_TYPE))?;
            let patched = store.modify(&gr, target.ns(), &name, target.scope(), |current| {
                let mut out = patch::apply(kind, current, &body)
                    .map_err(|e| store::Error::BadRequest(e.to_string()))?;
                validate::check(&target.def.group, &target.def.plural, &out, false)
                    .map_err(store::Error::BadRequest)?;
                normalize(&target, &mut out);
                Ok(out)
            });
            let patched = match patched {
                // Server-side apply creates what does not exist yet.
                Err(store::Error::NotFound { .. })
                    if kind == PatchType::Apply && !target.status =>
                {
                    let mut obj = patch::apply(kind, &json!({}), &body)?;
                    if obj.pointer("/metadata/name").is_none() {
                        obj["metadata"]["name"] = json!(name);
                    }
                    let obj = prepare_create(&target, obj);
                    if dry_run {
                        return reply(obj);
                    }
                    let created = store.create(&gr, target.ns(), obj)?;
                    after_write(lab, &target, &created, false);
                    return Ok(json_response(StatusCode::CREATED, &target.present(created)));
                }
                // Patch failures come back through the store as BadRequest with the patch error's text.
                other => other?,
            };
            after_write(lab, &target, &patched, false);
            reply(patched)
        }
        Method::DELETE => {
            let precondition = if body.is_empty() {
                None
            } else {
                serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
                    b.pointer("/preconditions/resourceVersion")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
            };
            if dry_run {
                return reply(store.get(&gr, target.ns(), &name)?);
            }
            let deleted = store.delete(&gr, target.ns(), &name, precondition.as_deref())?;
            after_write(lab, &target, &deleted, true);
            reply(deleted)
        }
        _ => Err(Error::MethodNotAllowed {
            method: method.clone(),
        }),
    }
}

/// Sets apiVersion and kind as the stored form, whatever version the client wrote through, and the defaults the
/// API server applies on every write: a Service ingress entry with an IP and no `ipMode` gets `VIP`.
fn normalize(target: &Target, obj: &mut Value) {
    if let Value::Object(m) = obj {
        m.insert(
            "apiVersion".into(),
            json!(target.def.api_version(&target.version)),
        );
        m.insert("kind".into(), json!(target.def.kind));
    }
    if (target.def.group.as_str(), target.def.plural.as_str()) == ("", "services")
        && let Some(ingress) = obj
            .pointer_mut("/status/loadBalancer/ingress")
            .and_then(Value::as_array_mut)
    {
        for entry in ingress.iter_mut().filter(|e| e.get("ip").is_some()) {
            if entry.get("ipMode").is_none() {
                entry["ipMode"] = json!("VIP");
            }
        }
    }
}

/// Defaults the API server would fill in on create, for the kinds whose printers and clients look at them.
fn prepare_create(target: &Target, mut obj: Value) -> Value {
    normalize(target, &mut obj);
    match (target.def.group.as_str(), target.def.plural.as_str()) {
        ("", "services") => {
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            if spec.get("type").is_none() {
                spec["type"] = json!("ClusterIP");
            }
            if spec.get("sessionAffinity").is_none() {
                spec["sessionAffinity"] = json!("None");
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter(|p| p.is_object()) {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                    if p.get("targetPort").is_none()
                        && let Some(port) = p.get("port").cloned()
                    {
                        p["targetPort"] = port;
                    }
                }
            }
            // As in Kubernetes, status is never set on create.
            obj["status"] = json!({"loadBalancer": {}});
        }
        ("", "namespaces") => {
            // As kube-apiserver's namespace strategy does, and as the store does for namespaces it makes itself:
            // a pool's serviceAllocation.namespaceSelectors may select on this label.
            if let Some(name) = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
            {
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            if obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        // The lab serves a CRD's kind as soon as it is stored, so it is Established at once; `kubectl wait
        // --for=condition=Established` and clients that check the conditions then see what a real server reports.
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            obj["status"] = resources::established_status(&obj);
        }
        _ => {}
    }
    obj
}

fn after_write(lab: &ApiState, target: &Target, obj: &Value, deleted: bool) {
    if target.def.group == "apiextensions.k8s.io"
        && target.def.plural == "customresourcedefinitions"
    {
        lab.crd_changed(obj, deleted);
    }
}

fn list_doc(target: &Target, items: Vec<Value>, rv: u64) -> Value {
    json!({
        "apiVersion": target.def.api_version(&target.version),
        "kind": format!("{}List", target.def.kind),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn list(lab: &ApiState, target: &Target, q: &Query, as_table: bool) -> Result<Response> {
    let filter = Filter::from_query(q)?;
    let (items, rv) = lab.store.list(&target.gr(), target.ns());
    // One page holds everything: `limit` and `continue` are accepted and `metadata.continue` stays unset.
    let items: Vec<Value> = items
        .into_iter()
        .filter(|i| filter.matches(i))
        .map(|i| target.present(i))
        .collect();
    if as_table {
        let include = IncludeObject::from_query(q.get("includeObject"));
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&target.def.group, &target.def.plural, &items, rv, include),
        ));
    }
    Ok(json_response(StatusCode::OK, &list_doc(target, items, rv)))
}

/// How one stored change looks to a filtered watch: a change that leaves the selector is a DELETED, one that
/// enters it an ADDED.
fn filtered_event(filter: &Filter, ev: &StoreEvent) -> Option<EventType> {
    let now = filter.matches(&ev.object);
    match (ev.kind, &ev.previous) {
        (EventType::Modified, Some(prev)) => match (filter.matches(prev), now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
        (kind, _) => now.then_some(kind),
    }
}

fn watch(lab: &Arc<ApiState>, target: Target, q: &Query, as_table: bool) -> Result<Response> {
    let filter = Filter::from_query(q)?;
    let send_initial = q.flag("sendInitialEvents");
    let since = match q.get("resourceVersion") {
        _ if send_initial => None,
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| Error::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(DEFAULT_WATCH_SECS);
    let include = IncludeObject::from_query(q.get("includeObject"));
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let gr = target.gr();
    let ns = target.namespace.clone();
    let start = lab.store.watch(&gr, ns.as_deref(), since);
    let mut shutdown = lab.shutdown.clone();
    let encode = move |kind: &str, obj: Value| -> Bytes {
        let obj = if as_table && kind != "BOOKMARK" && kind != "ERROR" {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            table::table(
                &target.def.group,
                &target.def.plural,
                &[target.present(obj)],
                rv,
                include,
            )
        } else if kind == "ERROR" {
            obj
        } else {
            target.present(obj)
        };
        let mut line = json!({"type": kind, "object": obj}).to_string();
        line.push('\n');
        Bytes::from(line)
    };
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let stopping = async move {
            // Drop the borrow guard at once: it must not live across an await.
            let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
        };
        tokio::pin!(stopping);
        let mut start = match start {
            Ok(s) => s,
            Err(e) => {
                // An expired resourceVersion is reported in the stream, as the API server does, so that
                // reflectors relist.
                let _ = tx.send(Ok(encode("ERROR", Error::Store(e).status()))).await;
                return;
            }
        };
        for obj in std::mem::take(&mut start.current) {
            if filter.matches(&obj) && tx.send(Ok(encode("ADDED", obj))).await.is_err() {
                return;
            }
        }
        if send_initial {
            let bookmark = json!({"metadata": {
                "resourceVersion": start.rv.to_string(),
                "annotations": {"k8s.io/initial-events-end": "true"},
            }});
            if tx.send(Ok(encode("BOOKMARK", bookmark))).await.is_err() {
                return;
            }
        }
        for ev in std::mem::take(&mut start.backlog) {
            if let Some(kind) = filtered_event(&filter, &ev)
                && tx
                    .send(Ok(encode(kind.as_str(), ev.object.clone())))
                    .await
                    .is_err()
            {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = &mut stopping => return,
                ev = start.live.recv() => match ev {
                    Ok(ev) => {
                        if ev.gr != gr || ns.as_deref().is_some_and(|n| n != ev.namespace) {
                            continue;
                        }
                        if let Some(kind) = filtered_event(&filter, &ev)
                            && tx.send(Ok(encode(kind.as_str(), ev.object.clone()))).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow to keep up is cut off; it resumes from its last resourceVersion, which
                    // the history still holds.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(rx))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, labels: Value, previous: Option<Value>) -> StoreEvent {
        StoreEvent {
            rv: 1,
            kind,
            gr: GroupResource::new("", "services"),
            namespace: "d".into(),
            object: json!({"metadata": {"labels": labels}}),
            previous: previous.map(|l| json!({"metadata": {"labels": l}})),
        }
    }

    #[test]
    fn filtered_watch_turns_selector_moves_into_added_and_deleted() {
        let filter = Filter {
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::default(),
        };
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        let modified = |now: &Value, before: &Value| {
            filtered_event(
                &filter,
                &event(EventType::Modified, now.clone(), Some(before.clone())),
            )
        };
        assert_eq!(modified(&web, &web), Some(EventType::Modified));
        assert_eq!(modified(&web, &db), Some(EventType::Added));
        assert_eq!(modified(&db, &web), Some(EventType::Deleted));
        assert_eq!(modified(&db, &db), None);
        assert_eq!(
            filtered_event(&filter, &event(EventType::Added, db, None)),
            None
        );
        assert_eq!(
            filtered_event(&filter, &event(EventType::Deleted, web, None)),
            Some(EventType::Deleted)
        );
    }

    #[test]
    fn status_errors_carry_reason_code_and_details() {
        let err = Error::Store(store::Error::NotFound {
            resource: "ipaddresspools.metallb.io".into(),
            name: "docs".into(),
        });
        let status = err.status();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(
            status["details"],
            json!({"name": "docs", "group": "metallb.io", "kind": "ipaddresspools"})
        );
        assert_eq!(
            status["message"],
            r#"ipaddresspools.metallb.io "docs" not found"#
        );
    }
}
