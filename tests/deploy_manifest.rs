//! unit tier: deploy/ironlb.yaml, the one manifest users apply. Every document must be a valid typed Kubernetes
//! object with no unknown or misspelled field, the DaemonSet must run the agent the way the README promises, the
//! webhook's Deployment must start `ironlb webhook` with arguments the binary accepts, and the CRDs in it must be
//! exactly the ones generated from IronLB's types.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

mod manifest_support;

use manifest_support::{
    assert_binary_accepts, check_document, first_difference, typed, yaml_documents,
};

const REGENERATE: &str = "deploy/ironlb.yaml is missing or stale: run scripts/gen-deploy";

fn manifest() -> Result<Vec<Value>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ironlb.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| REGENERATE)?;
    yaml_documents(&text)
}

#[test]
fn every_document_is_a_typed_object_without_unknown_fields() -> Result<()> {
    let docs = manifest()?;
    ensure!(
        docs.len() >= 10,
        "{REGENERATE}: only {} documents",
        docs.len()
    );
    for doc in &docs {
        check_document(doc).with_context(|| {
            format!(
                "{} {}",
                doc["kind"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            )
        })?;
    }
    Ok(())
}

#[test]
fn the_check_catches_a_misspelled_field() -> Result<()> {
    let docs = manifest()?;
    let mut ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?
        .clone();
    ds["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = check_document(&ds).expect_err("a misspelled field must be rejected");
    assert!(err.to_string().contains("hostNetwrok"), "{err}");
    let mut role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .context("no Role")?
        .clone();
    role["rules"][0]["resourceName"] = serde_json::json!(["x"]);
    assert!(check_document(&role).is_err());
    let mut configuration = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .context("no ValidatingWebhookConfiguration")?
        .clone();
    configuration["webhooks"][0]["failurPolicy"] = Value::from("Ignore");
    let err = check_document(&configuration).expect_err("a misspelled field must be rejected");
    assert!(err.to_string().contains("failurPolicy"), "{err}");
    Ok(())
}

#[test]
fn the_daemonset_runs_the_agent_as_documented() -> Result<()> {
    let docs = manifest()?;
    let dss: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DaemonSet").collect();
    ensure!(dss.len() == 1, "one DaemonSet, found {}", dss.len());
    let ds: DaemonSet = typed(dss[0])?;
    assert_eq!(ds.metadata.namespace.as_deref(), Some("ironlb-system"));
    let pod = ds.spec.context("spec")?.template.spec.context("pod spec")?;
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.service_account_name.as_deref(), Some("ironlb-agent"));
    ensure!(pod.containers.len() == 1, "one container");
    let agent = &pod.containers[0];
    assert_eq!(agent.args.as_deref(), Some(&["agent".to_string()][..]));

    let sc = agent.security_context.as_ref().context("securityContext")?;
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().context("capabilities")?;
    let set =
        |v: &Option<Vec<String>>| -> BTreeSet<String> { v.iter().flatten().cloned().collect() };
    assert_eq!(
        set(&caps.add),
        ["NET_ADMIN", "NET_RAW"].map(String::from).into(),
        "exactly NET_ADMIN and NET_RAW are added"
    );
    assert_eq!(
        set(&caps.drop),
        ["ALL"].map(String::from).into(),
        "ALL is dropped"
    );

    let ports = agent.ports.as_deref().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .context("a port named metrics")?;
    let probe_port =
        |probe: &Option<k8s_openapi::api::core::v1::Probe>, path: &str| -> Result<()> {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .with_context(|| format!("an httpGet probe on {path}"))?;
            assert_eq!(get.path.as_deref(), Some(path));
            let on_metrics = match &get.port {
                IntOrString::Int(n) => *n == metrics.container_port,
                IntOrString::String(s) => s == "metrics",
            };
            ensure!(
                on_metrics,
                "{path} probes {:?}, not the metrics port",
                get.port
            );
            Ok(())
        };
    probe_port(&agent.liveness_probe, "/healthz")?;
    probe_port(&agent.readiness_probe, "/readyz")?;
    // The agent must listen where the probes look.
    let env = agent.env.as_deref().unwrap_or_default();
    let listen = env
        .iter()
        .find(|e| e.name == "IRONLB_METRICS_ADDR")
        .and_then(|e| e.value.as_deref())
        .unwrap_or("0.0.0.0:7472");
    assert!(
        listen.ends_with(&format!(":{}", metrics.container_port)),
        "metrics listen address {listen} vs port {}",
        metrics.container_port
    );

    let requests = agent
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .context("resource requests")?;
    assert!(requests.contains_key("cpu"), "a cpu request");
    assert!(requests.contains_key("memory"), "a memory request");

    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .context("NODE_NAME in env")?;
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .context("NODE_NAME from the downward API")?;
    assert_eq!(field.field_path, "spec.nodeName");
    Ok(())
}

/// The admission webhook: one replica off the host network, under its own ServiceAccount, unprivileged, started
/// with arguments the binary accepts.
#[test]
fn the_webhook_deployment_runs_the_webhook_as_documented() -> Result<()> {
    let docs = manifest()?;
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    ensure!(
        deployments.len() == 1,
        "one Deployment, found {}",
        deployments.len()
    );
    let deployment: Deployment = typed(deployments[0])?;
    assert_eq!(deployment.metadata.name.as_deref(), Some("ironlb-webhook"));
    assert_eq!(
        deployment.metadata.namespace.as_deref(),
        Some("ironlb-system")
    );
    let spec = deployment.spec.context("spec")?;
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.context("pod spec")?;
    assert_ne!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.service_account_name.as_deref(), Some("ironlb-webhook"));
    ensure!(pod.containers.len() == 1, "one container");
    let webhook = &pod.containers[0];
    assert_eq!(webhook.name, "webhook");
    let args = webhook.args.clone().unwrap_or_default();
    assert_eq!(args, ["webhook"]);
    assert_binary_accepts(&args)?;

    let sc = webhook
        .security_context
        .as_ref()
        .context("securityContext")?;
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65534));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().context("capabilities")?;
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    ensure!(
        caps.add.as_deref().unwrap_or_default().is_empty(),
        "no capability is added"
    );

    // `ironlb webhook` listens on 0.0.0.0:9443 by default, and serves its health endpoints there over HTTPS.
    let https = webhook
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .context("a port named https")?;
    assert_eq!(https.container_port, 9443);
    for (probe, path) in [
        (&webhook.liveness_probe, "/healthz"),
        (&webhook.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .with_context(|| format!("an httpGet probe on {path}"))?;
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        ensure!(
            get.port == IntOrString::String("https".into()) || get.port == IntOrString::Int(9443),
            "{path} probes {:?}",
            get.port
        );
    }
    let requests = webhook
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .context("resource requests")?;
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    let env = webhook.env.as_deref().unwrap_or_default();
    let namespace = env
        .iter()
        .find(|e| e.name == "POD_NAMESPACE")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .context("POD_NAMESPACE from the downward API")?;
    assert_eq!(namespace.field_path, "metadata.namespace");
    Ok(())
}

#[test]
fn the_crds_are_the_generated_ones() -> Result<()> {
    let in_manifest: Vec<Value> = manifest()?
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let generated = yaml_documents(&ironlb::config::crd_manifests())?;
    ensure!(!generated.is_empty(), "crd_manifests() is empty");
    let names = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    ensure!(
        names(&in_manifest) == names(&generated),
        "{REGENERATE}: CRDs {:?} in the manifest, {:?} generated",
        names(&in_manifest),
        names(&generated)
    );
    for (have, want) in in_manifest.iter().zip(&generated) {
        if let Some(diff) = first_difference(have, want, "") {
            bail!(
                "{REGENERATE}: CRD {} differs at {diff}",
                have["metadata"]["name"]
            );
        }
    }
    Ok(())
}

/// The manifest is deploy/agent.yaml followed by the CRDs, as scripts/gen-deploy writes it.
#[test]
fn the_manifest_starts_with_deploy_agent_yaml() -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/agent.yaml");
    let agent = yaml_documents(&std::fs::read_to_string(path)?)?;
    let all = manifest()?;
    ensure!(
        all.len() >= agent.len() && all[..agent.len()] == agent[..],
        "{REGENERATE}: its first documents are not deploy/agent.yaml"
    );
    Ok(())
}
