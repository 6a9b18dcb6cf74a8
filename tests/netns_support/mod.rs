//! Scaffolding shared by the network-namespace lab tests: skipping without root, the lab's options, and the agents'
//! logs on failure. Shared by tests/netns_l2.rs, netns_faults.rs, netns_node_lease.rs and netns_bgp_agents.rs.

#![allow(dead_code)]

use std::time::{Duration, Instant};

pub mod kube_proxy;

use ironlb::lab::cluster::{Lab, LabOptions, is_root};

/// True (and says why) when the test cannot create network namespaces.
pub fn skip() -> bool {
    if !is_root() {
        println!("skipped: needs root to create network namespaces");
        return true;
    }
    false
}

/// A lab of `nodes` real agents and `services` demo Services, its namespaces and files named after `prefix` and the
/// test process, without pods.
pub fn options(
    prefix: &str,
    nodes: usize,
    services: usize,
    strict_arp: &str,
    agent_args: &[&str],
) -> LabOptions {
    let prefix = format!("{prefix}-{}", std::process::id());
    LabOptions {
        nodes,
        services,
        dir: std::env::temp_dir().join(&prefix),
        prefix,
        binary: env!("CARGO_BIN_EXE_ironlb").into(),
        strict_arp: strict_arp.into(),
        agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        pods: false,
        api: Default::default(),
        kube_proxy: None,
    }
}

/// Prints the last lines of every agent's log when a test fails, and removes the logs otherwise. It holds no borrow
/// of the lab, so a test can still kill and start agents.
pub struct Logs(std::path::PathBuf, Vec<String>);

impl Logs {
    pub fn of(lab: &Lab) -> Logs {
        Logs(lab.options().dir.clone(), lab.node_names())
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            for node in &self.1 {
                let log =
                    std::fs::read_to_string(self.0.join(format!("{node}.log"))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                eprintln!("--- agent log of {node} ---\n{tail}");
            }
        }
    }
}

/// Waits until `check` holds (polling every 50 ms) and returns how long that took, or panics after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}
