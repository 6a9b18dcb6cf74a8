//! The table of resource types the lab API server knows: their group, versions, names and scope.
//!
//! Discovery, routing and kubectl's short names all come from this one table, so a resource added here is served
//! everywhere at once. Custom resources registered through `apiextensions.k8s.io/v1` CustomResourceDefinitions are
//! added at run time (see [`ResourceDef::from_crd`]); the metallb.io kinds are built in so the agent works before
//! anyone applies CRDs.

use serde_json::{Value, json};

/// One resource type, as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; empty for the core (legacy) group.
    pub group: String,
    /// Served versions, most preferred first. Objects are stored once, whatever the version: the lab does no
    /// conversion, which is enough for kinds whose versions share a schema.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    /// Whether the resource has a `/status` subresource: then updates of the main resource never change
    /// `.status` and updates through `/status` change nothing else, as in Kubernetes.
    pub status: bool,
    pub categories: Vec<String>,
}

impl ResourceDef {
    fn builtin(
        group: &str,
        versions: &[&str],
        plural: &str,
        kind: &str,
        short_names: &[&str],
        namespaced: bool,
        status: bool,
    ) -> Self {
        ResourceDef {
            group: group.to_owned(),
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            kind: kind.to_owned(),
            short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
            namespaced,
            status,
            categories: Vec::new(),
        }
    }

    fn in_category(mut self, category: &str) -> Self {
        self.categories.push(category.to_owned());
        self
    }

    /// `apiVersion` for a version of this resource: `v1` for core, `group/version` otherwise.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The resource a CustomResourceDefinition object describes, or `None` when the object lacks the fields that
    /// discovery needs. Only served versions are kept, storage version first.
    pub fn from_crd(crd: &Value) -> Option<Self> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let group = spec.get("group")?.as_str()?.to_owned();
        let plural = names.get("plural")?.as_str()?.to_owned();
        let kind = names.get("kind")?.as_str()?.to_owned();
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map_or_else(|| kind.to_lowercase(), str::to_owned);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut status = false;
        let mut versions: Vec<(bool, String)> = Vec::new();
        for v in spec
            .get("versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let Some(name) = v.get("name").and_then(Value::as_str) else {
                continue;
            };
            if v.pointer("/subresources/status").is_some() {
                status = true;
            }
            let storage = v.get("storage").and_then(Value::as_bool) == Some(true);
            versions.push((!storage, name.to_owned()));
        }
        if versions.is_empty() {
            return None;
        }
        versions.sort();
        Some(ResourceDef {
            group,
            versions: versions.into_iter().map(|(_, v)| v).collect(),
            plural,
            singular,
            kind,
            short_names: strings(names.get("shortNames")),
            namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
            status,
            categories: strings(names.get("categories")),
        })
    }

    /// The APIResource entries of this resource (and its status subresource) for an APIResourceList.
    pub fn api_resources(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// The `status` of a CustomResourceDefinition the lab serves: names accepted as given, Established, the storage
/// version stored; what kube-apiserver reports once a CRD's names raise no conflict.
pub fn established_status(crd: &Value) -> Value {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        })
    };
    let stored: Vec<&Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name"))
        .collect();
    json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}

/// The resources served from the start.
pub fn builtin() -> Vec<ResourceDef> {
    let v1 = &["v1"];
    let b1 = &["v1beta1"];
    vec![
        ResourceDef::builtin("", v1, "namespaces", "Namespace", &["ns"], false, true),
        ResourceDef::builtin("", v1, "services", "Service", &["svc"], true, true)
            .in_category("all"),
        ResourceDef::builtin("", v1, "endpoints", "Endpoints", &["ep"], true, false),
        ResourceDef::builtin("", v1, "nodes", "Node", &["no"], false, true),
        ResourceDef::builtin("", v1, "configmaps", "ConfigMap", &["cm"], true, false),
        ResourceDef::builtin("", v1, "secrets", "Secret", &[], true, false),
        ResourceDef::builtin("", v1, "events", "Event", &["ev"], true, false),
        ResourceDef::builtin("", v1, "pods", "Pod", &["po"], true, true).in_category("all"),
        ResourceDef::builtin(
            "discovery.k8s.io",
            v1,
            "endpointslices",
            "EndpointSlice",
            &[],
            true,
            false,
        ),
        ResourceDef::builtin(
            "coordination.k8s.io",
            v1,
            "leases",
            "Lease",
            &[],
            true,
            false,
        ),
        ResourceDef::builtin("events.k8s.io", v1, "events", "Event", &[], true, false),
        ResourceDef::builtin(
            "apiextensions.k8s.io",
            v1,
            "customresourcedefinitions",
            "CustomResourceDefinition",
            &["crd", "crds"],
            false,
            true,
        ),
        ResourceDef::builtin(
            "metallb.io",
            b1,
            "ipaddresspools",
            "IPAddressPool",
            &[],
            true,
            true,
        ),
        ResourceDef::builtin(
            "metallb.io",
            b1,
            "l2advertisements",
            "L2Advertisement",
            &[],
            true,
            true,
        ),
        ResourceDef::builtin(
            "metallb.io",
            b1,
            "bgpadvertisements",
            "BGPAdvertisement",
            &[],
            true,
            true,
        ),
        ResourceDef::builtin(
            "metallb.io",
            b1,
            "communities",
            "Community",
            &[],
            true,
            true,
        ),
        ResourceDef::builtin(
            "metallb.io",
            b1,
            "bfdprofiles",
            "BFDProfile",
            &[],
            true,
            true,
        ),
        ResourceDef::builtin(
            "metallb.io",
            &["v1beta2", "v1beta1"],
            "bgppeers",
            "BGPPeer",
            &[],
            true,
            true,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_yields_served_versions_storage_first() {
        let crd = json!({
            "spec": {
                "group": "example.com",
                "scope": "Cluster",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v0", "served": false, "storage": false},
                ],
            }
        });
        let def = ResourceDef::from_crd(&crd).expect("valid CRD");
        assert_eq!(def.versions, vec!["v1", "v1alpha1"]);
        assert!(!def.namespaced);
        assert!(def.status);
        assert_eq!(def.singular, "widget");
        assert_eq!(def.short_names, vec!["wd"]);
    }

    #[test]
    fn crd_status_is_established_with_its_names_and_storage_version() {
        let crd = json!({"spec": {
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1alpha1", "storage": false}, {"name": "v1", "storage": true}],
        }});
        let status = established_status(&crd);
        assert_eq!(status["acceptedNames"]["kind"], "Widget");
        assert_eq!(status["storedVersions"], json!(["v1"]));
        let true_conditions: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "True")
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(true_conditions, ["NamesAccepted", "Established"]);
    }

    #[test]
    fn crd_without_names_is_ignored() {
        assert!(ResourceDef::from_crd(&json!({"spec": {"group": "x"}})).is_none());
    }
}
