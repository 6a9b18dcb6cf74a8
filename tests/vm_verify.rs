//! VM tier: `ironlb verify` (the real binary) against a real IPVS table and a real dummy `kube-ipvs0`, programmed
//! with ipvsadm the way kube-proxy programs them, and a cluster served by the lab's in-process API server.
//!
//! Runs only inside the VM that `scripts/vm-test` boots (`IRONLB_VM=1`); the host kernel has no IPVS and no dummy
//! links. The kernel's IPVS table is shared with the other VM tests, so the runner passes `--test-threads=1`, and
//! the guard flushes it and deletes the link in `Drop`, even when the test panics.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use ironlb::lab::api::{ApiServer, write_kubeconfig};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn in_vm() -> bool {
    if std::env::var("IRONLB_VM").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: needs the VM tier (scripts/vm-test)");
    false
}

fn sh(cmd: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("sh");
    assert!(status.success(), "`{cmd}` failed: {status}");
}

/// The node's data plane: a fresh IPVS table and a dummy `kube-ipvs0`; flushed and deleted on drop.
struct Node;

impl Node {
    fn fresh() -> Self {
        let node = Self;
        sh("ipvsadm -C");
        sh("ip link add kube-ipvs0 type dummy");
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ipvsadm").arg("-C").status();
        let _ = Command::new("ip")
            .args(["link", "del", "kube-ipvs0"])
            .status();
    }
}

/// Runs `ironlb verify` for node n1; its exit code and stdout.
async fn verify(kubeconfig: &Path) -> anyhow::Result<(i32, String)> {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .arg("verify")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--node-name", "n1"])
        .env_remove("KUBECONFIG")
        .env_remove("NODE_NAME")
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .context("ironlb verify did not finish in 60 s")??;
    let stdout = String::from_utf8(out.stdout)?;
    println!("{stdout}");
    Ok((out.status.code().context("killed by a signal")?, stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_kube_proxy_ipvs_state_and_drift() -> anyhow::Result<()> {
    if !in_vm() {
        return Ok(());
    }
    let _node = Node::fresh();
    let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url())?;
    let client = ironlb::agent::client(Some(&kubeconfig)).await?;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "LoadBalancer",
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
            }))?,
        )
        .await?;
    services
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})),
        )
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let ready = |addr: &str, node: &str| json!({"addresses": [addr], "nodeName": node, "conditions": {"ready": true}});
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web-abcde", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [ready("198.51.100.2", "n1"), ready("198.51.100.3", "n2")],
            }))?,
        )
        .await?;

    // What kube-proxy does for this Service: bind the VIP on kube-ipvs0 and create the virtual server. It also
    // has its own ClusterIP services, which verify must not report as extra.
    sh("ip addr add 192.0.2.10/32 dev kube-ipvs0");
    sh("ipvsadm -A -t 192.0.2.10:80 -s rr");
    sh("ipvsadm -a -t 192.0.2.10:80 -r 198.51.100.2:8080 -m -w 1");
    sh("ipvsadm -a -t 192.0.2.10:80 -r 198.51.100.3:8080 -m -w 1");
    sh("ip addr add 203.0.113.50/32 dev kube-ipvs0");
    sh("ipvsadm -A -t 203.0.113.50:443 -s rr");
    sh("ipvsadm -a -t 203.0.113.50:443 -r 198.51.100.50:6443 -m -w 1");

    let (code, out) = verify(&kubeconfig).await?;
    ensure!(
        code == 0,
        "verify exited {code} on a matching table:\n{out}"
    );
    ensure!(out.contains("no drift"), "{out}");
    ensure!(
        !out.contains("203.0.113.50"),
        "kube-proxy's ClusterIP is out of scope:\n{out}"
    );

    sh("ipvsadm -d -t 192.0.2.10:80 -r 198.51.100.3:8080");
    let (code, out) = verify(&kubeconfig).await?;
    ensure!(code == 1, "verify exited {code} on drift:\n{out}");
    ensure!(
        out.contains("missing destination TCP 192.0.2.10:80 -> 198.51.100.3:8080"),
        "{out}"
    );

    // More drift of other kinds: a wrong scheduler, an extra service on the VIP, the VIP unbound.
    sh("ipvsadm -a -t 192.0.2.10:80 -r 198.51.100.3:8080 -m -w 1");
    sh("ipvsadm -E -t 192.0.2.10:80 -s wrr");
    sh("ipvsadm -A -t 192.0.2.10:443 -s rr");
    sh("ip addr del 192.0.2.10/32 dev kube-ipvs0");
    let (code, out) = verify(&kubeconfig).await?;
    ensure!(code == 1, "verify exited {code} on drift:\n{out}");
    let drift: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.is_empty())
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect();
    ensure!(
        drift
            == [
                "wrong scheduler TCP 192.0.2.10:80 (wanted rr, actual wrr)",
                "extra service TCP 192.0.2.10:443",
                "missing binding 192.0.2.10 on kube-ipvs0",
            ],
        "{drift:?}\n{out}"
    );
    server.shutdown().await?;
    Ok(())
}
