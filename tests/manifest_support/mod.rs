//! Reading Kubernetes manifests in tests: YAML documents, typed checks that catch unknown or misspelled fields, and
//! the check that the real `ironlb` binary accepts a container's arguments. Shared by tests/deploy_manifest.rs and
//! tests/packaging.rs.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
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
        ("apps/v1", "Deployment") => typed::<Deployment>(doc).map(drop),
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            typed::<ValidatingWebhookConfiguration>(doc).map(drop)
        }
        ("cert-manager.io/v1", "Certificate") => check_certificate(doc),
        ("cert-manager.io/v1", "Issuer") => check_issuer(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            typed::<CustomResourceDefinition>(doc).map(drop)
        }
        (api_version, kind) => bail!("unexpected {api_version} {kind}"),
    }
}

/// The fields of cert-manager's `CertificateSpec` (cert-manager.io/v1). cert-manager's kinds are not in k8s-openapi,
/// so its objects are checked field by field: known names only, and the ones cert-manager requires.
const CERTIFICATE_SPEC_FIELDS: &[&str] = &[
    "additionalOutputFormats",
    "commonName",
    "dnsNames",
    "duration",
    "emailAddresses",
    "encodeUsagesInRequest",
    "ipAddresses",
    "isCA",
    "issuerRef",
    "keystores",
    "literalSubject",
    "nameConstraints",
    "otherNames",
    "privateKey",
    "renewBefore",
    "renewBeforePercentage",
    "revisionHistoryLimit",
    "secretName",
    "secretTemplate",
    "signatureAlgorithm",
    "subject",
    "uris",
    "usages",
];

/// The issuer types of cert-manager's `IssuerSpec`: exactly one is set.
const ISSUER_TYPES: &[&str] = &["acme", "ca", "selfSigned", "vault", "venafi"];

fn check_fields(object: &Value, known: &[&str], at: &str) -> Result<()> {
    let fields = object
        .as_object()
        .with_context(|| format!("{at} is not a mapping"))?;
    for field in fields.keys() {
        ensure!(
            known.contains(&field.as_str()),
            "{at}/{field}: unknown field"
        );
    }
    Ok(())
}

fn check_metadata(doc: &Value) -> Result<()> {
    check_fields(doc, &["apiVersion", "kind", "metadata", "spec"], "")?;
    ensure!(
        doc["metadata"]["name"].is_string(),
        "/metadata/name is missing"
    );
    ensure!(
        doc["metadata"]["namespace"].is_string(),
        "/metadata/namespace is missing"
    );
    Ok(())
}

fn check_certificate(doc: &Value) -> Result<()> {
    check_metadata(doc)?;
    check_fields(&doc["spec"], CERTIFICATE_SPEC_FIELDS, "/spec")?;
    ensure!(
        doc["spec"]["secretName"].is_string(),
        "/spec/secretName is missing"
    );
    check_fields(
        &doc["spec"]["issuerRef"],
        &["name", "kind", "group"],
        "/spec/issuerRef",
    )?;
    ensure!(
        doc["spec"]["issuerRef"]["name"].is_string(),
        "/spec/issuerRef/name is missing"
    );
    let names = doc["spec"]["dnsNames"].as_array().into_iter().flatten();
    for name in names {
        ensure!(name.is_string(), "/spec/dnsNames: {name} is not a string");
    }
    Ok(())
}

fn check_issuer(doc: &Value) -> Result<()> {
    check_metadata(doc)?;
    check_fields(&doc["spec"], ISSUER_TYPES, "/spec")?;
    let types = doc["spec"].as_object().map_or(0, |spec| spec.len());
    ensure!(types == 1, "/spec sets {types} issuer types, not one");
    Ok(())
}

/// How long a child process may run before it is killed.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion within [`RUN_LIMIT`], killing it past that. Its output is read while it runs (on a
/// thread of its own): a child that writes more than a pipe holds (a chart with its CRDs is over 64 KiB) would
/// otherwise block on a full pipe while this waits for it to exit.
pub fn run(mut cmd: Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot start {what} (scripts/setup installs helm and kubectl)")
        })?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("{what} ran longer than {RUN_LIMIT:?}");
        }
    }
}

/// Starts the real binary with the container's arguments and a kubeconfig that does not exist. A flag the binary
/// does not know, or a value it refuses, fails in argument parsing (clap: exit code 2, a usage message); flags that
/// parse get as far as reading the kubeconfig and fail there instead.
pub fn assert_binary_accepts(args: &[String]) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ironlb"));
    cmd.args(args)
        .arg("--kubeconfig=/nonexistent/ironlb-packaging-test/kubeconfig")
        .env("NODE_NAME", "node-1")
        .env("POD_NAMESPACE", "ironlb-system")
        .env_remove("KUBECONFIG");
    let out = run(cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "ironlb {args:?} cannot run without a kubeconfig"
    );
    ensure!(
        out.status.code() != Some(2) && !stderr.contains("Usage:"),
        "ironlb refused the arguments {args:?}: {stderr}"
    );
    ensure!(
        stderr.contains("ironlb-packaging-test"),
        "ironlb {args:?} failed, but not on the kubeconfig: {stderr}"
    );
    Ok(())
}
