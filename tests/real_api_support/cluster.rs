//! Real `ironlb agent` processes against the real kube-apiserver, each running as the ServiceAccount
//! `ironlb-system/ironlb-agent` with exactly the RBAC of the shipped manifest (`deploy/ironlb.yaml`), so a request the
//! manifest does not grant is refused by the API server and shows in the agent's log, which [`RealCluster::forbidden`]
//! reads.
//!
//! Included by the real-API test files with `#[path]`, beside `real_api_support`. Agents run on the host's loopback
//! (no network namespaces): this tier is about the control plane, not about ARP. Agents are killed on drop, and their
//! logs printed when a test did not call [`RealCluster::passed`].

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::real_api_support::{self as control_plane, ControlPlane};

/// Which CRDs the cluster has: IronLB's generated ones, or MetalLB's own manifests, as a user who keeps them would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crds {
    Ours,
    MetalLbs,
}

pub const AGENT: &str = env!("CARGO_BIN_EXE_ironlb");

pub struct RealCluster {
    pub plane: Arc<ControlPlane>,
    /// The ServiceAccount token kubeconfig every agent uses.
    pub agent_kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    agents: BTreeMap<String, Child>,
    logs: BTreeMap<String, Vec<PathBuf>>,
    extra: Vec<String>,
    passed: bool,
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl RealCluster {
    /// Installs the CRDs and the manifest's RBAC on `plane`; no agent runs yet.
    pub fn start(plane: Arc<ControlPlane>, crds: Crds) -> Result<RealCluster> {
        let crds = match crds {
            Crds::Ours => control_plane::Crds::Ours,
            Crds::MetalLbs => control_plane::metallb_crds()?,
        };
        plane.install_ironlb(&crds)?;
        let agent_kubeconfig = plane.service_account_kubeconfig("ironlb-system", "ironlb-agent")?;
        Ok(RealCluster {
            plane,
            agent_kubeconfig,
            dir: tempfile::tempdir()?,
            agents: BTreeMap::new(),
            logs: BTreeMap::new(),
            extra: Vec::new(),
            passed: false,
        })
    }

    /// Extra flags for every agent started from now on.
    pub fn agent_args(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.plane
            .kubectl_ok_with_input(&["apply", "-f", "-"], yaml)
    }

    /// Starts (or restarts) the agent of `node` as the ServiceAccount, through `kubeconfig` when given.
    pub fn start_agent_with(&mut self, node: &str, kubeconfig: Option<&Path>) -> Result<()> {
        ensure!(!self.agents.contains_key(node), "{node} is already running");
        let logs = self.logs.entry(node.to_string()).or_default();
        let log = self
            .dir
            .path()
            .join(format!("{node}.{}.log", logs.len() + 1));
        logs.push(log.clone());
        let file = File::create(&log)?;
        let child = Command::new(AGENT)
            .args([
                "agent",
                "--node-name",
                node,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig.unwrap_or(&self.agent_kubeconfig))
            .args(&self.extra)
            .env_clear()
            .env("RUST_LOG", "info")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {AGENT}"))?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        self.start_agent_with(node, None)
    }

    /// SIGKILL, as a crash or an OOM kill.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(mut child) = self.agents.remove(node) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as the kubelet stops a pod, then waits up to `limit` for the exit.
    pub fn stop_agent(&mut self, node: &str, limit: Duration) -> Result<()> {
        let Some(mut child) = self.agents.remove(node) else {
            bail!("{node} is not running");
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("{node} did not exit within {limit:?} of SIGTERM")
    }

    pub fn running(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    /// The holder of the allocator Lease, if any.
    pub fn lease_holder(&self) -> Result<Option<String>> {
        let out = self.plane.kubectl(&[
            "-n",
            "ironlb-system",
            "get",
            "lease",
            "ironlb-allocator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?;
        let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((out.status.success() && !holder.is_empty()).then_some(holder))
    }

    /// The Service's ingress IPs.
    pub fn ingress(&self, namespace: &str, name: &str) -> Result<Vec<String>> {
        let out = self.plane.kubectl_ok(&[
            "-n",
            namespace,
            "get",
            "service",
            name,
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ])?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// Every line of every agent log in which the API server refused a request: each names the verb, resource and
    /// identity, that is the rule the manifest lacks.
    pub fn forbidden(&self) -> Vec<String> {
        self.logs
            .values()
            .flatten()
            .flat_map(|log| {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Fails with the refused requests if there were any.
    pub fn assert_nothing_forbidden(&self) {
        let refused = self.forbidden();
        assert!(
            refused.is_empty(),
            "the API server refused requests of the agents (a rule missing from deploy/ironlb.yaml):\n{}",
            refused.join("\n")
        );
    }

    pub fn log_text(&self, node: &str) -> String {
        self.logs
            .get(node)
            .into_iter()
            .flatten()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn passed(mut self) {
        self.passed = true;
    }
}

/// A LoadBalancer Service `default/<name>` with one TCP port, as YAML.
pub fn lb_service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: LoadBalancer\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n"
    )
}

/// The invariant of every allocation scenario: no IP is held by two Services.
pub fn assert_no_ip_twice(ips: &BTreeMap<String, Vec<String>>) {
    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (svc, list) in ips {
        for ip in list {
            holders.entry(ip).or_default().push(svc);
        }
    }
    let shared: Vec<_> = holders.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(shared.is_empty(), "IPs held by two Services: {shared:?}");
}

/// Polls `check` every 50 ms until it returns Some, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        let nodes: Vec<String> = self.agents.keys().cloned().collect();
        for node in nodes {
            self.kill_agent(&node);
        }
        if !self.passed {
            for (node, logs) in &self.logs {
                for log in logs {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    eprintln!("--- {} ({node}) ---\n{tail}", log.display());
                }
            }
            eprintln!(
                "--- kube-apiserver ---\n{}",
                self.plane.log_tail("kube-apiserver", 30)
            );
        }
    }
}
