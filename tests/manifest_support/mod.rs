//! Reading Kubernetes manifests in tests: YAML documents, and typed checks that catch unknown or misspelled fields.
//! Shared by tests/deploy_manifest.rs and tests/packaging.rs.

#![allow(dead_code)]

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The first place where `a` and `b` differ, as a JSON pointer.
pub fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = format!("{at}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &path),
                    (Some(_), None) => Some(format!(
                        "{path} (dropped by the typed object: unknown field?)"
                    )),
                    (None, Some(_)) => Some(format!("{path} (added by the typed object)")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ if a == b => None,
        // YAML writers differ on `255` vs `255.0`; the value is what counts.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ => Some(format!("{at}: {a} became {b}")),
    }
}

/// Deserializes `doc` as `K` and requires that serializing it back gives `doc` again: k8s-openapi ignores unknown
/// fields on the way in, so a misspelled field shows up as one missing on the way out.
pub fn typed<K: DeserializeOwned + Serialize>(doc: &Value) -> Result<K> {
    let object: K =
        serde_json::from_value(doc.clone()).context("not a valid object of its kind")?;
    let back = serde_json::to_value(&object)?;
    if let Some(diff) = first_difference(doc, &back, "") {
        bail!("{diff}");
    }
    Ok(object)
}

/// Checks one document against its kind's type.
pub fn check_document(doc: &Value) -> Result<()> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (doc["apiVersion"].as_str().unwrap_or_default(), kind) {
        ("v1", "Namespace") => typed::<Namespace>(doc).map(drop),
        ("v1", "Secret") => typed::<Secret>(doc).map(drop),
        ("v1", "Service") => typed::<Service>(doc).map(drop),
        ("v1", "ServiceAccount") => typed::<ServiceAccount>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed::<ClusterRole>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            typed::<ClusterRoleBinding>(doc).map(drop)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => typed::<Role>(doc).map(drop),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed::<RoleBinding>(doc).map(drop),
        ("apps/v1", "DaemonSet") => typed::<DaemonSet>(doc).map(drop),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            typed::<CustomResourceDefinition>(doc).map(drop)
        }
        (api_version, kind) => bail!("unexpected {api_version} {kind}"),
    }
}
