//! The allocation pass: what the leader writes onto Services, computed from [`ClusterState`] alone.
//!
//! Every pass recomputes the whole assignment the way a new leader would: adopt every IP in Service status, then
//! allocate the rest ([`crate::alloc::plan::plan_services`]). Status is the only persistent record, so a restart or a
//! change of leader runs exactly this code and cannot come to a different answer. The pass returns writes and Events
//! as values; `agent` sends them. Written status is put back into the state at once (the API's reply), so the next
//! pass never races its own writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use serde_json::Value;

use super::events::Note;
use super::index::ObjectKey;
use super::state::ClusterState;
use super::status::{IngressMode, pool_annotation_patch, status_patch};
use crate::alloc::Ips;
use crate::alloc::plan::{Outcome, plan_services};
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
}

/// Remembers what was already said, so that a repeated pass does not repeat its Events.
#[derive(Debug, Default)]
pub struct AllocationController {
    settings: Settings,
    /// The last AllocationFailed reason per Service.
    failed: BTreeMap<ObjectKey, String>,
    /// Services already told about deprecated annotations.
    deprecated: BTreeSet<ObjectKey>,
    /// Config diagnostics already published, by their text.
    config_said: BTreeSet<String>,
}

impl AllocationController {
    pub fn new(settings: Settings) -> Self {
        AllocationController {
            settings,
            ..Default::default()
        }
    }

    /// Forgets what was said. A new leader calls this so that it reports the current problems once itself.
    pub fn reset_notes(&mut self) {
        self.failed.clear();
        self.deprecated.clear();
        self.config_said.clear();
    }

    pub fn pass(&mut self, state: &ClusterState, validated: &Validated) -> Pass {
        let mut pass = Pass::default();
        self.config_notes(state, validated, &mut pass);

        let namespaces = state.namespace_labels();
        let pools = validated.config.pools.values().cloned().collect();
        let rows = plan_services(
            pools,
            state.services.values(),
            &namespaces,
            self.settings.lb_class.as_deref(),
        );
        let mut seen = BTreeSet::new();
        for row in rows {
            let key = ObjectKey::new(row.service.namespace.clone(), row.service.name.clone());
            seen.insert(key.clone());
            let Some(svc) = state.services.get(&key) else {
                continue;
            };
            let mut notes = Vec::new();
            if self.deprecated.insert(key.clone()) {
                let request = crate::alloc::LbRequest::for_adoption(
                    svc,
                    namespaces
                        .get(&key.namespace)
                        .unwrap_or(&Default::default()),
                    self.settings.lb_class.as_deref(),
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
            let status = status_patch(svc, &row.ips, self.settings.ingress_mode);
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
                    self.failed.remove(&key);
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
                    *pass.failures.entry(failure_class(reason)).or_default() += 1;
                    if self.failed.get(&key) != Some(reason) {
                        self.failed.insert(key.clone(), reason.clone());
                        notes.push(Note::warning("AllocationFailed", reason.clone()));
                    }
                }
                _ => {
                    self.failed.remove(&key);
                }
            }
            if status.is_some() || metadata.is_some() || !notes.is_empty() {
                pass.services.push(ServiceAction {
                    service: key,
                    reference: svc.object_ref(&()),
                    status,
                    metadata,
                    notes,
                });
            }
        }
        self.failed.retain(|k, _| seen.contains(k));
        self.deprecated.retain(|k| seen.contains(k));
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

/// A short, bounded label for a failure reason (the full text goes into the Event).
fn failure_class(reason: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    let class = if lower.contains("exhausted") || lower.contains("no free") {
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
