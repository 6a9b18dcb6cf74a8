//! MetalLB's status objects, written as MetalLB's speaker writes them, so that `kubectl get servicel2statuses,
//! servicebgpstatuses -A` says who announces what: one `ServiceL2Status` per Service this node announces in Layer 2
//! mode (its interfaces, when its L2Advertisements restrict them) and one `ServiceBGPStatus` per Service it advertises
//! over BGP (the BGPPeers it goes to).
//!
//! Each agent writes only objects labelled with its own node (`metallb.io/node`), in its own namespace, with
//! `generateName` `l2-` / `bgp-` and MetalLB's labels for the Service. When the agent knows its Pod (`POD_NAME` and
//! `POD_UID`, from the DaemonSet), the objects are owned by it, so they go with the Pod; objects of the node that an
//! earlier Pod left behind are deleted. The objects of a Service that is no longer announced from this node are
//! deleted, and nothing is written while the objects already say what this node does.
//!
//! Each agent also keeps a `ConfigurationState` named `speaker-<node>` (labels `metallb.io/component-type: speaker`,
//! `metallb.io/node-name`), as MetalLB's speakers do: `Valid`, or `Invalid` with the objects it left out in
//! `errorSummary` and the `configReconcilerValid` condition. IronLB runs the valid rest of a configuration, where
//! MetalLB keeps its whole previous one, so `Invalid` here means "running without these objects".
//!
//! The task keeps its own watch of those objects and runs on its own: the agent's loop only publishes what it
//! announces ([`Wanted`]) and never waits on these writes. Every request has the client's timeout; a failed round is
//! retried after a backoff (1 s doubling to 30 s), and at once when something changes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::alloc::ServiceKey;
use crate::config::crd::{
    ConfigurationState, InterfaceInfo, MetalLBServiceBGPStatus, MetalLBServiceL2Status,
    ServiceBGPStatus, ServiceL2Status,
};

/// MetalLB's labels on its status objects.
pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";

/// The longest wait before a failed round is tried again.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What this node announces, for its status objects: per Service, the interfaces it answers on in Layer 2 mode
/// (empty when its L2Advertisements do not restrict them), and the BGPPeers it advertises the Service to; and the
/// configuration errors it left objects out for (`Kind/name: field: message`), for its ConfigurationState.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub layer2: BTreeMap<ServiceKey, Vec<String>>,
    pub bgp: BTreeMap<ServiceKey, Vec<String>>,
    pub config_errors: Vec<String>,
}

/// MetalLB's labels and condition on a speaker's ConfigurationState.
const LABEL_COMPONENT: &str = "metallb.io/component-type";
const LABEL_NODE_NAME: &str = "metallb.io/node-name";
const CONDITION_TYPE: &str = "configReconcilerValid";
/// The API's limit on a condition's message.
const MESSAGE_MAX: usize = 32768;

/// The name of this node's ConfigurationState, as MetalLB names a speaker's.
fn config_state_name(node: &str) -> String {
    format!("speaker-{node}")
}

/// The ConfigurationState status to write for `errors`, or None when `observed` already says it. The condition's
/// `lastTransitionTime` moves only when its status does.
fn config_state_status(errors: &[String], observed: Option<&Value>, now: &str) -> Option<Value> {
    let valid = errors.is_empty();
    let mut summary = errors.join("\n");
    if summary.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX;
        while !summary.is_char_boundary(end) {
            end -= 1;
        }
        summary.truncate(end);
    }
    let (status, reason) = if valid {
        ("True", "Reconciled")
    } else {
        ("False", "ConfigurationError")
    };
    let old = observed
        .and_then(|o| o["conditions"].as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == CONDITION_TYPE));
    let since = match old {
        Some(c) if c["status"] == status => c["lastTransitionTime"].as_str().unwrap_or(now),
        _ => now,
    };
    let mut want = json!({
        "result": if valid { "Valid" } else { "Invalid" },
        "conditions": [{
            "type": CONDITION_TYPE, "status": status, "reason": reason, "message": summary,
            "lastTransitionTime": since,
        }],
    });
    if !valid {
        want["errorSummary"] = Value::String(summary);
    }
    (observed != Some(&want)).then_some(want)
}

/// The two kinds, with what differs between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Layer2,
    Bgp,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Layer2 => ApiResource::erase::<ServiceL2Status>(&()),
            Kind::Bgp => ApiResource::erase::<ServiceBGPStatus>(&()),
        }
    }

    fn generate_name(self) -> &'static str {
        match self {
            Kind::Layer2 => "l2-",
            Kind::Bgp => "bgp-",
        }
    }

    /// The `status` this node's object for `service` should hold, given the interfaces or peers.
    fn status(self, node: &str, service: &ServiceKey, names: &[String]) -> Value {
        let (node, service_name, service_namespace) = (
            Some(node.to_string()),
            Some(service.name.clone()),
            Some(service.namespace.clone()),
        );
        let value = match self {
            Kind::Layer2 => serde_json::to_value(MetalLBServiceL2Status {
                node,
                service_name,
                service_namespace,
                interfaces: (!names.is_empty()).then(|| {
                    names
                        .iter()
                        .map(|n| InterfaceInfo {
                            name: Some(n.clone()),
                        })
                        .collect()
                }),
            }),
            Kind::Bgp => serde_json::to_value(MetalLBServiceBGPStatus {
                node,
                service_name,
                service_namespace,
                peers: (!names.is_empty()).then(|| names.to_vec()),
            }),
        };
        value.unwrap_or_default()
    }
}

/// One object of this node as the watch shows it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    name: String,
    /// From the labels; None when they do not name a Service.
    service: Option<ServiceKey>,
    status: Value,
    /// Owned by this agent's Pod, or no Pod is known.
    ours: bool,
}

/// A write to make.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    Create { service: ServiceKey, status: Value },
    Patch { name: String, patch: Value },
    Delete { name: String },
}

/// The writes that make `seen` (this node's objects of one kind) say `wanted`: keep one object per wanted Service
/// (the first by name) and patch its status if it differs, create the missing, delete the rest (unwanted Services,
/// duplicates, objects with no Service labels, objects an earlier Pod owned).
fn plan(
    kind: Kind,
    node: &str,
    wanted: &BTreeMap<ServiceKey, Vec<String>>,
    seen: &[Seen],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut kept: BTreeMap<&ServiceKey, &Seen> = BTreeMap::new();
    let mut by_name: Vec<&Seen> = seen.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for object in by_name {
        let keep = object.ours
            && object
                .service
                .as_ref()
                .is_some_and(|s| wanted.contains_key(s) && !kept.contains_key(s));
        match &object.service {
            Some(service) if keep => {
                kept.insert(service, object);
            }
            _ => actions.push(Action::Delete {
                name: object.name.clone(),
            }),
        }
    }
    for (service, names) in wanted {
        let status = kind.status(node, service, names);
        match kept.get(service) {
            Some(object) if object.status == status => {}
            Some(object) => actions.push(Action::Patch {
                name: object.name.clone(),
                patch: json!({ "status": merge_patch(&object.status, &status) }),
            }),
            None => actions.push(Action::Create {
                service: service.clone(),
                status,
            }),
        }
    }
    actions
}

/// The JSON merge patch from `from` to `to` (two objects): `to`'s fields, and null for each field only `from` has.
fn merge_patch(from: &Value, to: &Value) -> Value {
    let mut patch = to.as_object().cloned().unwrap_or_default();
    for key in from.as_object().into_iter().flat_map(Map::keys) {
        patch.entry(key.clone()).or_insert(Value::Null);
    }
    Value::Object(patch)
}

/// The agent's owner reference for its objects: its Pod, when `POD_NAME` and `POD_UID` are set.
pub fn pod_owner(
    name: Option<&str>,
    uid: Option<&str>,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.filter(|n| !n.is_empty())?.to_string(),
            uid: uid.filter(|u| !u.is_empty())?.to_string(),
            ..Default::default()
        },
    )
}

/// Writes this node's status objects; see the module.
pub struct StatusObjects {
    /// For writes (with the request timeout) and for the watch.
    request: Client,
    watch: Client,
    namespace: String,
    node: String,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// This node's objects of one kind, as its watch last listed them.
#[derive(Default)]
struct Observed {
    objects: BTreeMap<String, DynamicObject>,
    synced: bool,
}

impl StatusObjects {
    pub fn new(
        request: Client,
        watch: Client,
        namespace: &str,
        node: &str,
        owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> StatusObjects {
        StatusObjects {
            request,
            watch,
            namespace: namespace.to_string(),
            node: node.to_string(),
            owner,
        }
    }

    fn api(&self, client: &Client, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.namespace, &kind.resource())
    }

    fn seen(&self, observed: &Observed) -> Vec<Seen> {
        observed
            .objects
            .values()
            .map(|o| {
                let labels = o.metadata.labels.clone().unwrap_or_default();
                let service = match (
                    labels.get(LABEL_SERVICE_NAMESPACE),
                    labels.get(LABEL_SERVICE_NAME),
                ) {
                    (Some(ns), Some(name)) => Some(ServiceKey::new(ns, name)),
                    _ => None,
                };
                let ours = match &self.owner {
                    None => true,
                    Some(owner) => o
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.uid == owner.uid),
                };
                Seen {
                    name: o.metadata.name.clone().unwrap_or_default(),
                    service,
                    status: o.data.get("status").cloned().unwrap_or(json!({})),
                    ours,
                }
            })
            .collect()
    }

    /// Runs until `stop` resolves.
    pub async fn run(
        self,
        mut wanted: watch::Receiver<Option<Wanted>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let selector = format!("{LABEL_NODE}={}", self.node);
        let stream = |kind: Kind| {
            watcher(
                self.api(&self.watch, kind),
                watcher::Config::default().labels(&selector),
            )
            .default_backoff()
            .map(move |event| (kind, event))
            .boxed()
        };
        let mut events = futures::stream::select(stream(Kind::Layer2), stream(Kind::Bgp));
        let state_selector = format!("{LABEL_COMPONENT}=speaker,{LABEL_NODE_NAME}={}", self.node);
        let mut state_events = watcher(
            self.config_state_api(&self.watch),
            watcher::Config::default().labels(&state_selector),
        )
        .default_backoff()
        .boxed();
        let mut observed = [
            Observed::default(),
            Observed::default(),
            Observed::default(),
        ];
        let mut retry = crate::task::Backoff::new(Duration::from_secs(1), BACKOFF_MAX);
        let mut dirty = true;
        tokio::pin!(stop);
        loop {
            let ready = observed.iter().all(|o| o.synced) && wanted.borrow().is_some();
            if dirty && ready && retry.due() {
                let now = wanted.borrow().clone().unwrap_or_default();
                match self.round(&now, &mut observed).await {
                    Ok(()) => {
                        dirty = false;
                        retry.succeeded();
                    }
                    Err(error) => {
                        let wait = retry.failed();
                        tracing::warn!(
                            node = %self.node, %error,
                            "writing status objects (ServiceL2Status, ServiceBGPStatus, ConfigurationState) \
                             failed; trying again in {wait:?}"
                        );
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                changed = wanted.changed() => {
                    if changed.is_err() {
                        // The agent is stopping.
                        return;
                    }
                    dirty = true;
                }
                Some(event) = state_events.next() => {
                    match event {
                        Ok(event) => {
                            apply(&mut observed[2], event);
                            dirty = true;
                        }
                        Err(error) => {
                            tracing::warn!(node = %self.node, %error, "watch of the ConfigurationState failed; retrying");
                        }
                    }
                }
                Some((kind, event)) = events.next() => {
                    let at = match kind { Kind::Layer2 => 0, Kind::Bgp => 1 };
                    match event {
                        Ok(event) => {
                            apply(&mut observed[at], event);
                            dirty = true;
                        }
                        Err(error) => {
                            tracing::warn!(node = %self.node, %error, "watch of {kind:?} status objects failed; retrying");
                        }
                    }
                }
                _ = retry.elapsed() => {}
            }
        }
    }

    /// One round: plans both kinds from what the watches show and carries the writes out, folding what the API
    /// returns into `observed` so the next round does not repeat them before the watch catches up.
    async fn round(&self, wanted: &Wanted, observed: &mut [Observed; 3]) -> kube::Result<()> {
        self.config_state(&wanted.config_errors, &mut observed[2])
            .await?;
        for (i, (kind, services)) in [(Kind::Layer2, &wanted.layer2), (Kind::Bgp, &wanted.bgp)]
            .into_iter()
            .enumerate()
        {
            let actions = plan(kind, &self.node, services, &self.seen(&observed[i]));
            let api = self.api(&self.request, kind);
            for action in actions {
                match action {
                    Action::Delete { name } => {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 => {}
                            Err(e) => return Err(e),
                        }
                        observed[i].objects.remove(&name);
                    }
                    Action::Patch { name, patch } => {
                        let object = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await?;
                        observed[i].objects.insert(name, object);
                    }
                    Action::Create { service, status } => {
                        let object = self.create(&api, kind, &service).await?;
                        let name = object.metadata.name.clone().unwrap_or_default();
                        observed[i].objects.insert(name.clone(), object);
                        // A CRD with a status subresource ignores the status of a create: it is patched in next.
                        let object = api
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({ "status": status })),
                            )
                            .await?;
                        observed[i].objects.insert(name, object);
                    }
                }
            }
        }
        Ok(())
    }

    fn config_state_api(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(
            client.clone(),
            &self.namespace,
            &ApiResource::erase::<ConfigurationState>(&()),
        )
    }

    /// Creates this node's ConfigurationState if missing, and patches its status when it should say otherwise.
    async fn config_state(&self, errors: &[String], observed: &mut Observed) -> kube::Result<()> {
        let name = config_state_name(&self.node);
        let api = self.config_state_api(&self.request);
        let current = observed
            .objects
            .get(&name)
            .map(|o| o.data["status"].clone());
        let now = k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
            .to_string();
        let Some(status) =
            config_state_status(errors, current.as_ref().filter(|s| !s.is_null()), &now)
        else {
            return Ok(());
        };
        if current.is_none() {
            let mut object =
                DynamicObject::new(&name, &ApiResource::erase::<ConfigurationState>(&()))
                    .within(&self.namespace);
            object.metadata.labels = Some(
                [
                    (LABEL_COMPONENT, "speaker"),
                    (LABEL_NODE_NAME, self.node.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
            object.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
            object.data = json!({ "spec": {} });
            match api.create(&PostParams::default(), &object).await {
                Ok(created) => {
                    observed.objects.insert(name.clone(), created);
                }
                // Left by an earlier Pod, or made by hand without MetalLB's labels: take it over.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let labels = json!({"metadata": {
                        "labels": {LABEL_COMPONENT: "speaker", LABEL_NODE_NAME: self.node},
                        "ownerReferences": self.owner.clone().map(|o| vec![o]),
                    }});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&labels))
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        let written = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        observed.objects.insert(name, written);
        Ok(())
    }

    async fn create(
        &self,
        api: &Api<DynamicObject>,
        kind: Kind,
        service: &ServiceKey,
    ) -> kube::Result<DynamicObject> {
        let resource = kind.resource();
        let mut object = DynamicObject::new("", &resource).within(&self.namespace);
        object.metadata.name = None;
        object.metadata.generate_name = Some(kind.generate_name().to_string());
        object.metadata.labels = Some(
            [
                (LABEL_NODE, self.node.as_str()),
                (LABEL_SERVICE_NAME, service.name.as_str()),
                (LABEL_SERVICE_NAMESPACE, service.namespace.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        object.metadata.owner_references = self.owner.clone().map(|o| vec![o]);
        object.data = json!({ "spec": {} });
        api.create(&PostParams::default(), &object).await
    }
}

/// Folds one watch event into `observed`.
fn apply(observed: &mut Observed, event: watcher::Event<DynamicObject>) {
    let name = |o: &DynamicObject| o.meta().name.clone().unwrap_or_default();
    match event {
        watcher::Event::Apply(o) => {
            observed.objects.insert(name(&o), o);
        }
        watcher::Event::Delete(o) => {
            observed.objects.remove(&name(&o));
        }
        watcher::Event::Init => {
            observed.objects.clear();
            observed.synced = false;
        }
        watcher::Event::InitApply(o) => {
            observed.objects.insert(name(&o), o);
        }
        watcher::Event::InitDone => observed.synced = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", name)
    }

    fn seen(name: &str, service: Option<&str>, status: Value, ours: bool) -> Seen {
        Seen {
            name: name.into(),
            service: service.map(key),
            status,
            ours,
        }
    }

    #[test]
    fn the_status_is_metallbs() {
        assert_eq!(
            Kind::Layer2.status("n1", &key("web"), &["eth0".into()]),
            json!({"node": "n1", "serviceName": "web", "serviceNamespace": "default",
                   "interfaces": [{"name": "eth0"}]})
        );
        assert_eq!(
            Kind::Layer2.status("n1", &key("web"), &[]),
            json!({"node": "n1", "serviceName": "web", "serviceNamespace": "default"})
        );
        assert_eq!(
            Kind::Bgp.status("n1", &key("web"), &["router".into()]),
            json!({"node": "n1", "serviceName": "web", "serviceNamespace": "default", "peers": ["router"]})
        );
    }

    /// Nothing to write when the objects already say it; a new Service gets an object; a changed one a patch that
    /// also removes what is gone; an unwanted Service, a duplicate, an unlabelled object and an earlier Pod's object
    /// are deleted.
    #[test]
    fn one_object_per_announced_service_and_no_write_when_it_says_so() {
        let wanted: BTreeMap<ServiceKey, Vec<String>> = [
            (key("same"), vec![]),
            (key("changed"), vec![]),
            (key("new"), vec!["eth1".to_string()]),
        ]
        .into();
        let same = Kind::Layer2.status("n1", &key("same"), &[]);
        let old = json!({"node": "n1", "serviceName": "changed", "serviceNamespace": "default",
                         "interfaces": [{"name": "eth0"}]});
        let objects = [
            seen("l2-a", Some("same"), same.clone(), true),
            seen("l2-b", Some("same"), same.clone(), true),
            seen("l2-c", Some("changed"), old, true),
            seen("l2-d", Some("gone"), json!({}), true),
            seen("l2-e", None, json!({}), true),
            seen("l2-f", Some("new"), json!({}), false),
        ];
        let actions = plan(Kind::Layer2, "n1", &wanted, &objects);
        let delete = |n: &str| Action::Delete { name: n.into() };
        assert_eq!(
            actions,
            vec![
                delete("l2-b"),
                delete("l2-d"),
                delete("l2-e"),
                delete("l2-f"),
                Action::Patch {
                    name: "l2-c".into(),
                    patch: json!({"status": {"node": "n1", "serviceName": "changed",
                                             "serviceNamespace": "default", "interfaces": null}}),
                },
                Action::Create {
                    service: key("new"),
                    status: Kind::Layer2.status("n1", &key("new"), &["eth1".into()]),
                },
            ]
        );
        // Once written, nothing more.
        let settled = [
            seen("l2-a", Some("same"), same, true),
            seen(
                "l2-c",
                Some("changed"),
                Kind::Layer2.status("n1", &key("changed"), &[]),
                true,
            ),
            seen(
                "l2-g",
                Some("new"),
                Kind::Layer2.status("n1", &key("new"), &["eth1".into()]),
                true,
            ),
        ];
        assert_eq!(plan(Kind::Layer2, "n1", &wanted, &settled), vec![]);
        // Nothing announced: every object goes.
        assert_eq!(
            plan(Kind::Layer2, "n1", &BTreeMap::new(), &settled).len(),
            3
        );
    }

    /// MetalLB's status for a speaker: Valid with a True condition, Invalid with the errors in the summary and the
    /// condition's message; nothing to write when it already says so; the transition time moves with the status only.
    #[test]
    fn the_configuration_state_says_valid_or_names_what_was_left_out() {
        let valid = config_state_status(&[], None, "2026-12-07T10:00:00Z").unwrap();
        assert_eq!(valid["result"], "Valid");
        assert_eq!(valid["conditions"][0]["status"], "True");
        assert_eq!(valid["conditions"][0]["reason"], "Reconciled");
        assert!(valid.get("errorSummary").is_none());
        assert_eq!(
            config_state_status(&[], Some(&valid), "2026-12-07T11:00:00Z"),
            None
        );

        let errors = vec![
            "IPAddressPool/a: spec.addresses[0]: bad".to_string(),
            "L2Advertisement/b: x".to_string(),
        ];
        let invalid = config_state_status(&errors, Some(&valid), "2026-12-07T11:00:00Z").unwrap();
        assert_eq!(invalid["result"], "Invalid");
        assert_eq!(invalid["errorSummary"], errors.join("\n"));
        assert_eq!(invalid["conditions"][0]["status"], "False");
        assert_eq!(invalid["conditions"][0]["reason"], "ConfigurationError");
        assert_eq!(
            invalid["conditions"][0]["lastTransitionTime"],
            "2026-12-07T11:00:00Z"
        );
        // Another error, same status: the transition time stays.
        let more =
            config_state_status(&errors[..1], Some(&invalid), "2026-12-07T12:00:00Z").unwrap();
        assert_eq!(
            more["conditions"][0]["lastTransitionTime"],
            "2026-12-07T11:00:00Z"
        );
        // A huge summary is cut at the API's limit.
        let huge = vec!["é".repeat(MESSAGE_MAX)];
        let cut = config_state_status(&huge, None, "2026-12-07T12:00:00Z").unwrap();
        assert!(cut["conditions"][0]["message"].as_str().unwrap().len() <= MESSAGE_MAX);
    }

    #[test]
    fn the_pod_owns_the_objects_only_when_it_is_known() {
        assert!(pod_owner(Some("ironlb-agent-x"), None).is_none());
        assert!(pod_owner(Some(""), Some("u")).is_none());
        let owner = pod_owner(Some("ironlb-agent-x"), Some("1234")).unwrap();
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "1234"));
    }
}
