//! Tier: the real kube-apiserver calling `ironlb webhook`. The webhook runs as the shipped manifest's
//! `ironlb-webhook` ServiceAccount, with the manifest's RBAC and the manifest's ValidatingWebhookConfiguration (its
//! Service reference swapped for a loopback URL: this API server has no cluster network to reach a Service). It
//! issues its own certificate into a Secret and the CA into the configuration's `caBundle`, and `kubectl apply` gets
//! its verdicts, which are `ironlb config check`'s.
//!
//! One test with its steps in order: the configuration is cluster-wide and its `failurePolicy: Fail` would refuse
//! the metallb.io writes of any other test sharing the control plane, so this binary holds no other test.

mod real_api_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use real_api_support::Crds;

const CONFIGURATION: &str = "ironlb-webhook-configuration";
const SECRET: &str = "ironlb-webhook-cert";

/// A running `ironlb webhook`, killed when dropped; its log is kept in the control plane's directory.
struct Webhook {
    child: Child,
    log: PathBuf,
}

impl Webhook {
    fn start(dir: &Path, kubeconfig: &Path, port: u16, name: &str) -> Result<Webhook> {
        let log = dir.join(format!("webhook-{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
            .args(["webhook", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", "ironlb-system", "--cert-host", "127.0.0.1"])
            .env_remove("KUBECONFIG")
            .env_remove("IRONLB_CONFIG_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting ironlb webhook")?;
        Ok(Webhook { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 100 ms until it returns Some, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        ensure!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The webhook's certificate Secret, as JSON.
fn cert_secret(plane: &real_api_support::ControlPlane) -> Result<Value> {
    let json = plane.kubectl_ok(&["get", "secret", SECRET, "-n", "ironlb-system", "-o", "json"])?;
    Ok(serde_json::from_str(&json)?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The shipped ValidatingWebhookConfiguration (deploy/agent.yaml), calling `url` instead of the Service.
fn configuration(url: &str) -> Result<String> {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/agent.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&manifest) {
        let mut value: Value = serde::Deserialize::deserialize(doc)?;
        if value["kind"] != "ValidatingWebhookConfiguration" {
            continue;
        }
        ensure!(
            value["metadata"]["name"] == CONFIGURATION,
            "the shipped configuration is {}",
            value["metadata"]
        );
        let webhooks = value["webhooks"].as_array_mut().context("webhooks")?;
        ensure!(
            !webhooks.is_empty(),
            "the shipped configuration has no webhook"
        );
        for webhook in webhooks {
            ensure!(
                webhook["failurePolicy"] == "Fail",
                "the shipped failurePolicy is {}",
                webhook["failurePolicy"]
            );
            webhook["clientConfig"] = serde_json::json!({ "url": url });
        }
        return Ok(serde_json::to_string(&value)?);
    }
    anyhow::bail!("deploy/agent.yaml has no ValidatingWebhookConfiguration")
}

fn pool(name: &str, namespace: &str, address: &str) -> String {
    format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  addresses: [\"{address}\"]\n"
    )
}

/// `kubectl apply` of `yaml`: whether it succeeded, and its stderr (kubectl's warnings and refusals).
fn apply(plane: &real_api_support::ControlPlane, yaml: &str) -> Result<(bool, String)> {
    let out = plane.kubectl_with_input(&["apply", "-f", "-"], yaml)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `ironlb config check` of `yaml`, in a file: its output, one error per line.
fn config_check(dir: &Path, name: &str, yaml: &str) -> Result<String> {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml)?;
    let out = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["config", "check"])
        .arg(&file)
        .output()?;
    ensure!(
        out.status.code() == Some(1),
        "config check accepted {name}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubectl refused `yaml` through the webhook with every error `ironlb config check` prints for it.
fn assert_refused_as_check_refuses(
    plane: &real_api_support::ControlPlane,
    name: &str,
    yaml: &str,
) -> Result<()> {
    let (ok, stderr) = apply(plane, yaml)?;
    ensure!(!ok, "{name} was accepted");
    ensure!(
        stderr.contains("Error from server (Forbidden)")
            && stderr
                .contains("admission webhook \"metallb-io.validate.ironlb.io\" denied the request"),
        "{name} was refused, but not by the webhook: {stderr}"
    );
    let check = config_check(plane.dir(), name, yaml)?;
    // The lines between `N error(s):` and `N warning(s):`.
    let errors: Vec<&str> = check
        .lines()
        .skip_while(|l| !l.ends_with("error(s):"))
        .skip(1)
        .take_while(|l| !l.ends_with("warning(s):"))
        .collect();
    ensure!(
        !errors.is_empty(),
        "config check printed no error for {name}: {check}"
    );
    for error in errors {
        ensure!(
            stderr.contains(error),
            "kubectl's refusal of {name} lacks {error:?}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn kubectl_apply_gets_the_config_check_verdict_and_the_failure_policy_decides_when_the_webhook_is_down()
-> Result<()> {
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    plane.install_ironlb(&Crds::Ours)?;
    let kubeconfig = plane.service_account_kubeconfig("ironlb-system", "ironlb-webhook")?;
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}/validate");
    plane.kubectl_ok_with_input(&["apply", "-f", "-"], &configuration(&url)?)?;
    let result = steps(&plane, &kubeconfig, port);
    // The configuration is cluster-wide: remove it whatever happened, so nothing after this test meets it.
    let _ = plane.kubectl(&[
        "delete",
        "validatingwebhookconfiguration",
        CONFIGURATION,
        "--ignore-not-found",
    ]);
    if result.is_err() {
        eprintln!(
            "kube-apiserver log tail:\n{}",
            plane.log_tail("kube-apiserver", 40)
        );
    }
    result
}

fn steps(plane: &real_api_support::ControlPlane, kubeconfig: &Path, port: u16) -> Result<()> {
    let ns = "metallb-system";
    let webhook = Webhook::start(plane.dir(), kubeconfig, port, "first")?;
    let fail = |e: anyhow::Error| e.context(format!("webhook log:\n{}", webhook.log()));

    // The CA reaches the configuration and the certificate the Secret, written as the ServiceAccount.
    let bundle = wait_for("the caBundle", Duration::from_secs(30), || {
        let out = plane
            .kubectl_ok(&[
                "get",
                "validatingwebhookconfiguration",
                CONFIGURATION,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .ok()?;
        (!out.trim().is_empty()).then_some(out)
    })
    .map_err(fail)?;
    let secret = cert_secret(plane)?;
    ensure!(
        secret["type"] == "kubernetes.io/tls",
        "the Secret is {}",
        secret["type"]
    );
    ensure!(
        secret["data"]["ca.crt"] == bundle.trim(),
        "the caBundle is not the Secret's ca.crt"
    );

    // A valid pool passes (the first tries may come before the listener is up: the policy is Fail).
    let first = pool("first", ns, "192.0.2.0/28");
    wait_for(
        "a valid pool to be accepted",
        Duration::from_secs(30),
        || apply(plane, &first).ok().filter(|(ok, _)| *ok),
    )
    .map_err(fail)?;

    // Invalid objects are refused with every error `config check` gives them.
    assert_refused_as_check_refuses(plane, "bad-address", &pool("bad", ns, "192.0.2.300/28"))
        .map_err(fail)?;
    let overlap = format!("{first}---\n{}", pool("overlap", ns, "192.0.2.8/29"));
    let (ok, stderr) = apply(plane, &overlap)?;
    ensure!(
        !ok && stderr.contains("IPAddressPool/overlap: "),
        "the overlapping pool: {stderr}"
    );
    assert_refused_as_check_refuses(plane, "overlap", &overlap).map_err(fail)?;
    let (ok, stderr) = apply(plane, &pool("elsewhere", "default", "198.51.100.0/28"))?;
    ensure!(
        !ok && stderr.contains("resource must be created in metallb-system namespace"),
        "a pool outside metallb-system: {stderr}"
    );

    // A reference to an object that comes later is a warning; deleting an object in use is refused.
    let peer = format!(
        "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata:\n  name: router\n  namespace: {ns}\n\
         spec:\n  myASN: 64500\n  peerASN: 64501\n  peerAddress: 192.0.2.254\n  bfdProfile: fast\n"
    );
    let (ok, stderr) = apply(plane, &peer)?;
    ensure!(
        ok && stderr
            .contains("Warning: BGPPeer/router: spec.bfdProfile: BFDProfile/fast does not exist"),
        "the peer before its BFD profile: {stderr}"
    );
    let profile = format!(
        "apiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata:\n  name: fast\n  namespace: {ns}\nspec: {{}}\n"
    );
    plane.kubectl_ok_with_input(&["apply", "-f", "-"], &profile)?;
    let out = plane.kubectl(&["delete", "bfdprofile", "fast", "-n", ns])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("deleting BFDProfile/fast would leave BGPPeer/router"),
        "deleting a BFD profile in use: {stderr}"
    );
    plane.kubectl_ok(&["delete", "bgppeer", "router", "-n", ns])?;
    plane.kubectl_ok(&["delete", "bfdprofile", "fast", "-n", ns])?;

    // A second replica serves the certificate the first one issued, rather than issuing another.
    let before = secret["data"]["tls.crt"].clone();
    let second_port = free_port()?;
    let second = Webhook::start(plane.dir(), kubeconfig, second_port, "second")?;
    wait_for(
        "the second replica to serve",
        Duration::from_secs(30),
        || second.log().contains("webhook serving").then_some(()),
    )
    .map_err(|e| e.context(second.log()))?;
    let secret = cert_secret(plane)?;
    ensure!(
        secret["data"]["tls.crt"] == before,
        "the second replica issued a certificate of its own"
    );
    drop(second);

    // Down, with failurePolicy Fail: the change is refused. With Ignore: it passes unjudged.
    drop(webhook);
    let second_pool = pool("second", ns, "198.51.100.0/28");
    let (ok, stderr) = apply(plane, &second_pool)?;
    ensure!(
        !ok && stderr.contains("failed calling webhook"),
        "with the webhook down and Fail: {stderr}"
    );
    plane.kubectl_ok(&[
        "patch",
        "validatingwebhookconfiguration",
        CONFIGURATION,
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]"#,
    ])?;
    let (ok, stderr) = apply(plane, &second_pool)?;
    ensure!(ok, "with the webhook down and Ignore: {stderr}");
    plane.kubectl_ok(&["delete", "ipaddresspool", "first", "second", "-n", ns])?;
    Ok(())
}
