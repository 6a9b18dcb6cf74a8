//! The allocation pass: what the leader writes onto Services, computed from [`ClusterState`] alone.
//!
//! The first pass computes the whole assignment the way a new leader would: adopt every IP in Service status, then
//! allocate the rest ([`Planner::full`]). Status is the only persistent record, so a restart or a change of leader
//! runs exactly this code and cannot come to a different answer. Later passes replan only the Services that changed
//! since ([`Planner::update`], which reaches the full pass's answer, property-tested), from the Service journal; a
//! change of pools, of the namespace labels a pool reads, or of leader plans everything again. The pass returns writes and Events
//! as values; `agent` sends them. Written status is put back into the state at once (the API's reply), so the next
//! pass never races its own writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use serde_json::Value;

use super::events::Note;
use super::index::Cursor;
use super::index::ObjectKey;
use super::state::ClusterState;
use super::status::{IngressMode, pool_annotation_patch, status_patch};
use crate::alloc::Ips;
use crate::alloc::ServiceKey;
use crate::alloc::plan::{NeedsFullPass, Outcome, PlanRow, Planner, reads_namespace_labels};
use crate::config::Pool;
use crate::config::Validated;

/// What to do to one Service. Its notes are published only after its writes succeed.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceAction {
    pub service: ObjectKey,
    pub reference: ObjectReference,
    /// Merge patch for the status subresource.
    pub status: Option<Value>,
    /// Merge patch for the Service itself (annotations).
    pub metadata: Option<Value>,
    pub notes: Vec<Note>,
}

/// A Warning about a configuration object.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigNote {
    pub reference: ObjectReference,
    pub note: Note,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pass {
    pub services: Vec<ServiceAction>,
    pub config: Vec<ConfigNote>,
    /// Services that got no IP, by reason, for metrics.
    pub failures: BTreeMap<String, u64>,
}

/// Settings of the allocation pass.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub lb_class: Option<String>,
    pub ingress_mode: IngressMode,
    /// Set by the allocation writer once the API server is seen dropping `ipMode`: `Proxy` then becomes
    /// [`IngressMode::ProxyNotKept`].
    pub ip_mode_dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Settings {
    /// The ingress mode to write and compare with now.
    pub fn ingress_mode(&self) -> IngressMode {
        match self.ingress_mode {
            IngressMode::Proxy
                if self
                    .ip_mode_dropped
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                IngressMode::ProxyNotKept
            }
            mode => mode,
        }
    }
}

/// Remembers what was already said, so that a repeated pass does not repeat its Events, and keeps the plan between
/// passes, so that a pass replans only the Services that changed.
#[derive(Default)]
pub struct AllocationController {
    settings: Settings,
    /// The last AllocationFailed reason per Service.
    failed: BTreeMap<ObjectKey, String>,
    /// Services already told about deprecated annotations.
    deprecated: BTreeSet<ObjectKey>,
    /// Config diagnostics already published, by their text.
    config_said: BTreeSet<String>,
    /// The plan of the last pass and the pools it was made with; `None` until the first pass, and after a change
    /// of leader.
    kept: Option<(Planner, Vec<Pool>)>,
    /// Where this controller stands in the Service and Namespace journals.
    cursors: (Cursor, Cursor),
    /// Services the last pass wrote to or told about: looked at again, in case a write did not land.
    acted: BTreeSet<ObjectKey>,
    /// How many passes ran in full, for tests and metrics.
    full_passes: u64,
    /// Whether the last pass found that no node can forward (see [`crate::plan::input::nothing_forwards`]); a
    /// change rewrites every Service's `ipMode`.
    nothing_forwards: bool,
}

impl std::fmt::Debug for AllocationController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocationController")
            .field("settings", &self.settings)
            .field("full_passes", &self.full_passes)
            .finish_non_exhaustive()
    }
}

impl AllocationController {
    pub fn new(settings: Settings) -> Self {
        AllocationController {
            settings,
            ..Default::default()
        }
    }

    /// Forgets what was said, and the plan. A new leader calls this so that it reports the current problems once
    /// itself, and plans from the statuses as they are now.
    pub fn reset_notes(&mut self) {
        self.failed.clear();
        self.deprecated.clear();
        self.config_said.clear();
        self.kept = None;
    }

    /// How many passes so far planned every Service (the first, and those after a change of pools, of namespace
    /// labels a pool reads, of leader, or a journal overflow).
    pub fn full_passes(&self) -> u64 {
        self.full_passes
    }

    pub fn pass(&mut self, state: &ClusterState, validated: &Validated) -> Pass {
        let mut pass = Pass::default();
        self.config_notes(state, validated, &mut pass);

        let pools = || {
            validated
                .config
                .pools
                .values()
                .cloned()
                .collect::<Vec<Pool>>()
        };
        let services = state.services.changes_since(&mut self.cursors.0);
        let namespaces_changed = !state
            .namespaces
            .changes_since(&mut self.cursors.1)
            .is_empty();
        let reads = validated.config.pools.values().any(reads_namespace_labels);
        let namespaces = if reads {
            state.namespace_labels()
        } else {
            BTreeMap::new()
        };
        let lb_class = self.settings.lb_class.clone();
        let nothing_forwards = crate::plan::input::nothing_forwards(state.nodes.values());
        let forwarding_changed =
            std::mem::replace(&mut self.nothing_forwards, nothing_forwards) != nothing_forwards;
        // The Services to look at: every one after a full pass, else those replanned and those acted on last time.
        let look: Option<BTreeSet<ObjectKey>> = match self.kept.take() {
            Some((mut planner, kept_pools))
                if kept_pools.iter().eq(validated.config.pools.values())
                    && !(services.all || (reads && namespaces_changed) || forwarding_changed) =>
            {
                let changed = services.keys.iter().map(|k| {
                    (
                        ServiceKey::new(k.namespace.clone(), k.name.clone()),
                        state.services.get(k),
                    )
                });
                match planner.update(changed, &namespaces) {
                    Ok(redone) => {
                        self.kept = Some((planner, kept_pools));
                        let mut look: BTreeSet<ObjectKey> = std::mem::take(&mut self.acted);
                        look.extend(services.keys.iter().cloned());
                        look.extend(
                            redone
                                .into_iter()
                                .map(|k| ObjectKey::new(k.namespace, k.name)),
                        );
                        Some(look)
                    }
                    Err(NeedsFullPass) => None,
                }
            }
            _ => None,
        };
        if look.is_none() {
            self.full_passes += 1;
            let planner = Planner::full(
                pools(),
                state.services.values(),
                &namespaces,
                lb_class.as_deref(),
            );
            self.kept = Some((planner, pools()));
            self.acted.clear();
        }
        let Some((planner, _)) = &self.kept else {
            return pass;
        };
        let keys: Vec<ObjectKey> = match look {
            Some(look) => look.into_iter().collect(),
            None => {
                let all: BTreeSet<ObjectKey> = planner
                    .rows()
                    .map(|r| ObjectKey::new(r.service.namespace.clone(), r.service.name.clone()))
                    .collect();
                self.failed.retain(|k, _| all.contains(k));
                self.deprecated.retain(|k| all.contains(k));
                all.into_iter().collect()
            }
        };
        for row in planner.pending() {
            if let Outcome::Pending(reason) = &row.outcome {
                *pass.failures.entry(failure_class(reason)).or_default() += 1;
            }
        }
        let mut acted = BTreeSet::new();
        for key in keys {
            let row = planner.row(&ServiceKey::new(key.namespace.clone(), key.name.clone()));
            let (Some(row), Some(svc)) = (row, state.services.get(&key)) else {
                // Deleted, or no longer a LoadBalancer of ours.
                self.failed.remove(&key);
                self.deprecated.remove(&key);
                continue;
            };
            if let Some(action) = act(
                &self.settings,
                nothing_forwards,
                &mut self.failed,
                &mut self.deprecated,
                key,
                svc,
                row,
            ) {
                acted.insert(action.service.clone());
                pass.services.push(action);
            }
        }
        self.acted = acted;
        pass
    }
    fn config_notes(&mut self, state: &ClusterState, validated: &Validated, pass: &mut Pass) {
        let errors = validated.errors.iter().map(|d| (true, d));
        let warnings = validated.warnings.iter().map(|d| (false, d));
        for (is_error, diagnostic) in errors.chain(warnings) {
            let text = diagnostic.to_string();
            if !self.config_said.insert(text.clone()) {
                continue;
            }
            let Some(reference) = config_reference(state, &diagnostic.kind, &diagnostic.name)
            else {
                continue;
            };
            let reason = if is_error {
                "InvalidConfiguration"
            } else {
                "ConfigurationWarning"
            };
            pass.config.push(ConfigNote {
                reference,
                // Object-level findings have no field; do not start the message with ": ".
                note: Note::warning(
                    reason,
                    if diagnostic.field.is_empty() {
                        diagnostic.message.clone()
                    } else {
                        format!("{}: {}", diagnostic.field, diagnostic.message)
                    },
                ),
            });
        }
    }
}

/// What to do to one Service for its row: its status and pool annotation patches and its Events. `failed` and
/// `deprecated` are what was said before, so that nothing is said twice.
fn act(
    settings: &Settings,
    nothing_forwards: bool,
    failed: &mut BTreeMap<ObjectKey, String>,
    deprecated: &mut BTreeSet<ObjectKey>,
    key: ObjectKey,
    svc: &k8s_openapi::api::core::v1::Service,
    row: &PlanRow,
) -> Option<ServiceAction> {
    let mut notes = Vec::new();
    if deprecated.insert(key.clone()) {
        // Only the annotations are read here: namespace labels do not matter.
        let request = crate::alloc::LbRequest::for_adoption(
            svc,
            &Default::default(),
            settings.lb_class.as_deref(),
        );
        if let Ok(Some(request)) = request
            && !request.deprecated_annotations.is_empty()
        {
            notes.push(Note::warning(
                "deprecatedAnnotation",
                format!(
                    "annotations {} are deprecated; use the metallb.io/ forms",
                    request.deprecated_annotations.join(", ")
                ),
            ));
        }
    }
    // `Proxy` says something other than kube-proxy forwards the VIP: not so while no node can.
    let mode = match settings.ingress_mode() {
        IngressMode::Proxy | IngressMode::ProxyNotKept if nothing_forwards => IngressMode::Vip,
        mode => mode,
    };
    let status = status_patch(svc, &row.ips, mode);
    let metadata = pool_annotation_patch(svc, row.pool.as_deref());
    let lost: Vec<_> = row
        .previous
        .iter()
        .filter(|ip| !row.ips.contains(ip))
        .copied()
        .collect();
    if status.is_some() && !lost.is_empty() {
        let why = match &row.outcome {
            Outcome::Pending(reason) => reason.clone(),
            _ => "no longer valid for this Service".to_string(),
        };
        notes.push(Note::warning(
            "ClearAssignment",
            format!("removed {}: {why}", Ips(&lost)),
        ));
    }
    match &row.outcome {
        Outcome::New | Outcome::Changed { .. } if status.is_some() => {
            failed.remove(&key);
            notes.push(Note::normal(
                "IPAllocated",
                format!(
                    "Assigned IP {} from pool {}",
                    Ips(&row.ips),
                    row.pool.as_deref().unwrap_or("-")
                ),
            ));
        }
        Outcome::Pending(reason) => {
            if failed.get(&key) != Some(reason) {
                failed.insert(key.clone(), reason.clone());
                notes.push(Note::warning("AllocationFailed", reason.clone()));
            }
        }
        _ => {
            failed.remove(&key);
        }
    }
    (status.is_some() || metadata.is_some() || !notes.is_empty()).then(|| ServiceAction {
        service: key,
        reference: svc.object_ref(&()),
        status,
        metadata,
        notes,
    })
}

/// A short, bounded label for a failure reason (the full text goes into the Event).
fn failure_class(reason: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    let class = if lower.contains("exhausted")
        || lower.contains("no free")
        || lower.contains("has a free address")
    {
        "pool_exhausted"
    } else if lower.contains("not in any pool") || lower.contains("in no pool") {
        "ip_not_in_pool"
    } else if lower.contains("shar") {
        "sharing_conflict"
    } else if lower.contains("family") || lower.contains("ipv4") || lower.contains("ipv6") {
        "family_unavailable"
    } else if lower.contains("in use") || lower.contains("held by") {
        "ip_in_use"
    } else {
        "other"
    };
    class.to_string()
}

/// The object a diagnostic is about, as the index holds it. Objects converted from the legacy ConfigMap exist only
/// inside it, so their diagnostics go onto the ConfigMap.
fn config_reference(state: &ClusterState, kind: &str, name: &str) -> Option<ObjectReference> {
    state.config_reference(kind, name).or_else(|| {
        state
            .config_maps
            .values()
            .next()
            .map(|cm| cm.object_ref(&()))
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    use super::*;
    use crate::config::{Sources, validate};

    fn config(pools: &str) -> Validated {
        validate(&Sources::from_yaml(pools).unwrap())
    }

    const ONE_POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\n\
        metadata: {name: a, namespace: metallb-system}\nspec: {addresses: [192.0.2.0/28]}\n";

    fn service(i: usize, version: u64) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": format!("svc{i:02}"), "namespace": "ns", "resourceVersion": version.to_string(),
                "creationTimestamp": format!("2026-12-07T10:00:{:02}Z", i % 60),
            },
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    /// Applies the patches of a pass, as the API's replies do in the agent.
    fn land(state: &mut ClusterState, pass: &Pass, version: &mut u64) {
        for action in &pass.services {
            let Some(svc) = state.services.get(&action.service) else {
                continue;
            };
            let mut svc = svc.clone();
            if let Some(patch) = &action.status {
                svc.status = serde_json::from_value(patch["status"].clone()).unwrap();
            }
            if let Some(patch) = &action.metadata {
                let annotations = svc.metadata.annotations.get_or_insert_default();
                for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
                    match v.as_str() {
                        Some(v) => annotations.insert(k.clone(), v.to_string()),
                        None => annotations.remove(k),
                    };
                }
            }
            *version += 1;
            svc.metadata.resource_version = Some(version.to_string());
            state.services.apply(svc);
        }
    }

    #[test]
    fn later_passes_replan_only_what_changed_and_agree_with_a_new_leader() {
        let validated = config(ONE_POOL);
        let mut state = ClusterState::default();
        let mut controller = AllocationController::new(Settings::default());
        let mut version = 0;
        controller.pass(&state, &validated);
        for i in 0..12 {
            version += 1;
            state.services.apply(service(i, version));
            let pass = controller.pass(&state, &validated);
            let touched: Vec<String> = pass
                .services
                .iter()
                .map(|a| a.service.name.clone())
                .collect();
            assert_eq!(
                touched,
                [format!("svc{i:02}")],
                "pass after creating svc{i:02}"
            );
            land(&mut state, &pass, &mut version);
            // The write's reply is a change of its own: the Service is looked at again, and nothing is left to do.
            let pass = controller.pass(&state, &validated);
            assert!(pass.services.is_empty(), "{:?}", pass.services);
        }
        // A delete frees an address; a Service created after it gets the lowest free one.
        let gone = state
            .services
            .get(&ObjectKey::new("ns", "svc03"))
            .unwrap()
            .clone();
        state.services.delete(&gone);
        controller.pass(&state, &validated);
        version += 1;
        state.services.apply(service(40, version));
        let pass = controller.pass(&state, &validated);
        let status = pass.services[0].status.as_ref().unwrap();
        assert_eq!(
            status["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.3"
        );
        land(&mut state, &pass, &mut version);
        controller.pass(&state, &validated);
        assert_eq!(controller.full_passes(), 1);

        // A new leader, planning everything from the statuses, finds nothing to change.
        let mut leader = AllocationController::new(Settings::default());
        let fresh = leader.pass(&state, &validated);
        assert!(
            fresh
                .services
                .iter()
                .all(|a| a.status.is_none() && a.metadata.is_none()),
            "{fresh:?}"
        );

        // Other pools plan everything again.
        let two = format!(
            "{ONE_POOL}---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\n\
             metadata: {{name: b, namespace: metallb-system}}\nspec: {{addresses: [198.51.100.0/28]}}\n"
        );
        controller.pass(&state, &config(&two));
        assert_eq!(controller.full_passes(), 2);
    }

    #[test]
    fn ip_mode_proxy_is_written_only_while_some_node_can_forward() {
        use crate::plan::input::{CANNOT_FORWARD_ANNOTATION, SUBNETS_ANNOTATION};
        let validated = config(ONE_POOL);
        let mut state = ClusterState::default();
        let node = |name: &str, version: u32, cannot_forward: Option<&str>| {
            let mut annotations = serde_json::Map::new();
            annotations.insert(SUBNETS_ANNOTATION.into(), json!("192.0.2.11/24"));
            if let Some(why) = cannot_forward {
                annotations.insert(CANNOT_FORWARD_ANNOTATION.into(), json!(why));
            }
            serde_json::from_value::<k8s_openapi::api::core::v1::Node>(json!({
                "metadata": {"name": name, "resourceVersion": version.to_string(), "annotations": annotations},
            }))
            .unwrap()
        };
        state.nodes.apply(node("node-1", 1, Some("no IPVS")));
        state.nodes.apply(node("node-2", 1, None));
        let mut controller = AllocationController::new(Settings {
            ingress_mode: IngressMode::Proxy,
            ..Settings::default()
        });
        let mut version = 0;
        let modes = |pass: &Pass| -> Vec<Value> {
            pass.services
                .iter()
                .filter_map(|a| a.status.as_ref())
                .map(|s| s["status"]["loadBalancer"]["ingress"][0]["ipMode"].clone())
                .collect()
        };
        for i in 0..3 {
            version += 1;
            state.services.apply(service(i, version));
        }
        let pass = controller.pass(&state, &validated);
        assert_eq!(modes(&pass), vec![json!("Proxy"); 3], "node-2 forwards");
        land(&mut state, &pass, &mut version);
        assert!(controller.pass(&state, &validated).services.is_empty());

        // node-2 loses IPVS too: every Service is rewritten without ipMode, in one pass.
        state.nodes.apply(node("node-2", 2, Some("no IPVS")));
        let pass = controller.pass(&state, &validated);
        assert_eq!(modes(&pass), vec![Value::Null; 3], "nothing forwards");
        land(&mut state, &pass, &mut version);
        assert!(controller.pass(&state, &validated).services.is_empty());

        // And back.
        state.nodes.apply(node("node-2", 3, None));
        let pass = controller.pass(&state, &validated);
        assert_eq!(modes(&pass), vec![json!("Proxy"); 3]);
    }

    #[test]
    fn a_pool_running_dry_and_refilling_is_reported_and_resolved_incrementally() {
        let tiny = ONE_POOL.replace("192.0.2.0/28", "192.0.2.0/31");
        let validated = config(&tiny);
        let mut state = ClusterState::default();
        let mut controller = AllocationController::new(Settings::default());
        let mut version = 0;
        for i in 0..3 {
            version += 1;
            state.services.apply(service(i, version));
            let pass = controller.pass(&state, &validated);
            land(&mut state, &pass, &mut version);
            controller.pass(&state, &validated);
        }
        let pass = controller.pass(&state, &validated);
        assert_eq!(
            pass.failures.get("pool_exhausted"),
            Some(&1),
            "{:?}",
            pass.failures
        );
        // svc02 waits; deleting svc00 gives it 192.0.2.0 in the next pass.
        let first = state
            .services
            .get(&ObjectKey::new("ns", "svc00"))
            .unwrap()
            .clone();
        state.services.delete(&first);
        let pass = controller.pass(&state, &validated);
        let given: Vec<(&str, &Value)> = pass
            .services
            .iter()
            .filter_map(|a| Some((a.service.name.as_str(), a.status.as_ref()?)))
            .collect();
        assert_eq!(given.len(), 1, "{given:?}");
        assert_eq!(given[0].0, "svc02");
        assert_eq!(
            given[0].1["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.0"
        );
        assert!(pass.failures.is_empty());
        assert_eq!(controller.full_passes(), 1);
    }
}
