//! Legacy (non-aggregated) discovery documents: `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, and
//! `/version`.
//!
//! kubectl 1.32 first asks for aggregated discovery (`as=APIGroupDiscoveryList`); because these replies carry a
//! plain `application/json` content type, client-go falls back to the legacy documents, which are simpler and
//! enough for RESTMapping and short names.

use super::resources::ResourceDef;
use serde_json::{Value, json};
use std::cmp::Reverse;

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, Reverse<u32>, Reverse<u32>) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if let Some(m) = tail.strip_prefix("beta") {
        (1, m.parse().unwrap_or(0))
    } else if let Some(m) = tail.strip_prefix("alpha") {
        (2, m.parse().unwrap_or(0))
    } else if tail.is_empty() {
        (0, 0)
    } else {
        (3, 0)
    };
    (stage, Reverse(major), Reverse(minor))
}

/// The versions of a group, most preferred first.
pub fn group_versions(defs: &[ResourceDef], group: &str) -> Vec<String> {
    let mut versions: Vec<String> = defs
        .iter()
        .filter(|d| d.group == group)
        .flat_map(|d| d.versions.iter().cloned())
        .collect();
    versions.sort_by_key(|v| (version_priority(v), v.clone()));
    versions.dedup();
    versions
}

fn group_doc(defs: &[ResourceDef], group: &str) -> Value {
    let versions: Vec<Value> = group_versions(defs, group)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or_default(),
    })
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

/// `/apis`, or `None`-free: groups in first-registered order.
pub fn group_list(defs: &[ResourceDef]) -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for d in defs {
        if !d.group.is_empty() && !groups.contains(&d.group.as_str()) {
            groups.push(&d.group);
        }
    }
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|g| group_doc(defs, g)).collect::<Vec<_>>(),
    })
}

/// `/apis/<group>`, or `None` for an unknown group.
pub fn group(defs: &[ResourceDef], group: &str) -> Option<Value> {
    defs.iter()
        .any(|d| d.group == group)
        .then(|| group_doc(defs, group))
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` when nothing is served there.
pub fn resource_list(defs: &[ResourceDef], group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = defs
        .iter()
        .filter(|d| d.group == group && d.versions.iter().any(|v| v == version))
        .flat_map(ResourceDef::api_resources)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-ironlb-lab",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (ironlb lab API server)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::api::resources::builtin;

    #[test]
    fn metallb_prefers_v1beta2_and_lists_bgppeers_in_both() {
        let defs = builtin();
        assert_eq!(
            group_versions(&defs, "metallb.io"),
            vec!["v1beta2", "v1beta1"]
        );
        let b1 = resource_list(&defs, "metallb.io", "v1beta1").unwrap();
        let names: Vec<&str> = b1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"bgppeers") && names.contains(&"ipaddresspools"));
        let b2 = resource_list(&defs, "metallb.io", "v1beta2").unwrap();
        assert_eq!(b2["resources"][0]["name"], "bgppeers");
        assert!(resource_list(&defs, "metallb.io", "v9").is_none());
    }

    #[test]
    fn core_list_has_short_names_and_status_subresources() {
        let v1 = resource_list(&builtin(), "", "v1").unwrap();
        let find = |n: &str| {
            v1["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == n)
                .cloned()
        };
        assert_eq!(find("services").unwrap()["shortNames"], json!(["svc"]));
        assert!(find("services/status").is_some());
        assert!(find("nodes/status").is_some());
        assert!(find("configmaps/status").is_none());
        assert_eq!(v1["groupVersion"], "v1");
    }

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2", "foo"];
        v.sort_by_key(|v| version_priority(v));
        assert_eq!(v, vec!["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}
