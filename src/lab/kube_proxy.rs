//! A real kube-proxy in every node namespace of the lab, built from the same Go wrapper module as the control plane
//! (`scripts/build-control-plane`), in IPVS, nftables or iptables mode. It runs as the ServiceAccount
//! `kube-system/kube-proxy` bound to the API server's own `system:node-proxier` role, as kubeadm sets it up, and
//! reaches the API through the lab's relay like the agents do.
//!
//! Its configuration is a `KubeProxyConfiguration` file: the mode, the node name, the pods' CIDRs (so it tells
//! traffic from outside), its metrics on the node's loopback (`127.0.0.1:10249`, where the agent asks it for its
//! mode), and conntrack left alone (the host's conntrack table is shared by every namespace of the lab). Nothing
//! else is set: every other value is kube-proxy's default, as on a cluster.

use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::{Context, Result};

use super::control_plane::{self, ControlPlane};
use super::topology::LabNode;

/// The pods' CIDRs: the /30s and /64s of [`super::topology::Topology::add_pods`].
pub const CLUSTER_CIDRS: &str = "198.51.100.0/24,2001:db8:1::/48";
/// kube-proxy's metrics address in every node namespace: its default.
pub const METRICS_ADDR: &str = "127.0.0.1:10249";

/// A kube-proxy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeProxyMode {
    Ipvs,
    Nftables,
    Iptables,
}

impl KubeProxyMode {
    /// The name kube-proxy's configuration and its `/proxyMode` use.
    pub fn name(self) -> &'static str {
        match self {
            KubeProxyMode::Ipvs => "ipvs",
            KubeProxyMode::Nftables => "nftables",
            KubeProxyMode::Iptables => "iptables",
        }
    }
}

impl std::fmt::Display for KubeProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One node's running kube-proxy; stopped (SIGTERM, then SIGKILL) on drop.
pub struct KubeProxy {
    pub mode: KubeProxyMode,
    pub log: PathBuf,
    child: Option<Child>,
}

impl KubeProxy {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            control_plane::stop(child);
        }
    }
}

/// Creates the ServiceAccount `kube-system/kube-proxy`, binds it to `system:node-proxier`, and writes its
/// kubeconfig for `server` (the relay's address) into `dir`.
pub fn prepare(plane: &ControlPlane, server: &str, dir: &Path) -> Result<PathBuf> {
    plane.kubectl_ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  \
         name: lab-kube-proxy\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  \
         name: system:node-proxier\nsubjects:\n- kind: ServiceAccount\n  name: kube-proxy\n  \
         namespace: kube-system\n",
    )?;
    let token = plane.service_account_kubeconfig_at("kube-system", "kube-proxy", server)?;
    let path = dir.join("kube-proxy.kubeconfig");
    std::fs::copy(&token, &path).with_context(|| format!("copy {}", token.display()))?;
    Ok(path)
}

/// The `KubeProxyConfiguration` for `node` in `mode`.
pub fn configuration(node: &str, mode: KubeProxyMode, kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
         kind: KubeProxyConfiguration\n\
         mode: {mode}\n\
         clientConnection:\n  kubeconfig: {kubeconfig}\n\
         hostnameOverride: {node}\n\
         clusterCIDR: {CLUSTER_CIDRS}\n\
         metricsBindAddress: {METRICS_ADDR}\n\
         healthzBindAddress: 127.0.0.1:10256\n\
         conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n\
         ipvs:\n  strictARP: true\n",
        kubeconfig = kubeconfig.display(),
    )
}

/// Starts kube-proxy in `node`'s namespace in `mode`, its configuration and log in `dir`.
pub fn start(
    plane: &ControlPlane,
    node: &LabNode,
    mode: KubeProxyMode,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<KubeProxy> {
    let config = dir.join(format!("kube-proxy-{}.yaml", node.name));
    std::fs::write(&config, configuration(&node.name, mode, kubeconfig))
        .with_context(|| format!("write {}", config.display()))?;
    let log = dir.join(format!("kube-proxy-{}.log", node.name));
    let child = plane.spawn_in_netns(
        &node.netns,
        "kube-proxy",
        &[format!("--config={}", config.display()), "--v=2".into()],
        &log,
    )?;
    Ok(KubeProxy {
        mode,
        log,
        child: Some(child),
    })
}

/// The end of a kube-proxy log, for an error message.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_the_mode_the_node_and_leaves_conntrack_alone() {
        let text = configuration(
            "node-2",
            KubeProxyMode::Nftables,
            Path::new("/tmp/kp.kubeconfig"),
        );
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(value["kind"], "KubeProxyConfiguration");
        assert_eq!(value["mode"], "nftables");
        assert_eq!(value["hostnameOverride"], "node-2");
        assert_eq!(value["metricsBindAddress"], METRICS_ADDR);
        assert_eq!(value["conntrack"]["maxPerCore"], 0);
        assert_eq!(
            value["clientConnection"]["kubeconfig"],
            "/tmp/kp.kubeconfig"
        );
    }
}
