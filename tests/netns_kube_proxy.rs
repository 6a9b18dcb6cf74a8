//! IronLB beside a real kube-proxy in nftables and iptables mode (`ironlb lab --api real --kube-proxy nftables`):
//! the real control plane, a real kube-proxy (built from the same Go module) and an IronLB agent in every node
//! namespace, a pod behind every node, and a client on the LAN. What kube-proxy does here is its own doing: nothing
//! in the lab stands in for it.
//!
//! It proves what the README says of those modes:
//! - nothing is bound on `kube-ipvs0` (there is none), strict ARP is not needed, and the owner alone answers ARP and
//!   NDP for each VIP;
//! - traffic reaches the pods through kube-proxy's rules: `Cluster` Services source-NATed to the forwarding node,
//!   `Local` ones with the client's own address, announced only from a node with a ready endpoint;
//! - each agent publishes its node's mode (`ironlb.io/kube-proxy-mode`, `ironlb status`), and a node whose
//!   kube-proxy is restarted in another mode shows it without a restart of IronLB, with no VIP moving.
//!
//! IPVS mode needs a kernel with IPVS: the VM tier runs it. Needs root (network namespaces), the control plane's
//! binaries (scripts/setup builds them), nft and iptables.

mod netns_support;
mod real_api_support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ironlb::lab::cluster::{Lab, LabOptions, PodReply};
use ironlb::lab::kube_proxy::KubeProxyMode as Mode;
use ironlb::lab::topology;
use netns_support::kube_proxy::{
    check_paths, placement, published_mode, quiet, wait_all_published,
};
use netns_support::{Logs, skip, wait_until};

fn options(tag: &str, mode: Mode) -> Option<LabOptions> {
    if skip() {
        return None;
    }
    real_api_support::on_real_api(LabOptions {
        kube_proxy: Some(mode),
        // `check` writes no sysctl: a node whose ARP settings are the kernel's defaults must still announce.
        ..netns_support::options(tag, 3, 3, "check", &[])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_kube_proxy_forwards_every_vip_and_a_mode_change_moves_nothing() {
    let Some(options) = options("ilb-kp", Mode::Nftables) else {
        return;
    };
    let mut lab = Lab::start(options).await.expect("lab starts");
    let _logs = Logs::of(&lab);
    let limit = Duration::from_secs(60);
    lab.wait_announced(limit).await.unwrap();
    let took = lab.wait_forwarding(limit).await.unwrap_or_else(|e| {
        let (_, log) = lab.kube_proxy("node-1").unwrap();
        panic!(
            "{e}\n--- kube-proxy of node-1 ---\n{}",
            ironlb::lab::kube_proxy::log_tail(log, 40)
        )
    });
    println!(
        "every VIP forwarded through kube-proxy {} ms after announcement",
        took.as_millis()
    );

    for node in lab.topology.nodes.clone() {
        let links = topology::run_in(&node.netns, &["ip", "-o", "link", "show"]).unwrap();
        let links = String::from_utf8_lossy(&links.stdout).to_string();
        assert!(
            !links.contains("kube-ipvs0"),
            "nftables mode has no kube-ipvs0: {links}"
        );
        // The kernel's default: strict ARP is not in effect, and not needed.
        let ignore = topology::run_in(
            &node.netns,
            &["sysctl", "-n", "net.ipv4.conf.all.arp_ignore"],
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&ignore.stdout).trim(), "0");
    }
    wait_all_published(&lab, "nftables", limit).await;

    let rows = lab
        .wait_settled(Duration::from_millis(1200), limit)
        .await
        .unwrap();
    let replies = tokio::task::block_in_place(|| check_paths(&lab, &rows, "default/demo-2"));
    assert_eq!(replies.len(), 4, "three Services, one of them dual-stack");

    // kube-proxy spreads a Cluster Service over every ready endpoint.
    let vip: IpAddr = rows[0].vips[0].parse().unwrap();
    let pods: BTreeSet<String> = tokio::task::block_in_place(|| {
        (0..30)
            .filter_map(|_| lab.connect_from_client(vip, Duration::from_secs(2)).ok())
            .filter_map(|text| PodReply::parse(&text).map(|r| r.pod))
            .collect()
    });
    assert!(
        pods.len() > 1,
        "30 connections to {vip} all reached {pods:?}"
    );

    // A Local Service is announced only from a node with a ready endpoint: move its only endpoint to node-3.
    lab.set_endpoints("demo-2", &["node-3"]).await.unwrap();
    wait_until(
        "demo-2 to be announced by node-3, its only endpoint",
        limit,
        || async {
            let rows = lab.status().await.unwrap();
            rows.iter()
                .any(|r| r.service == "default/demo-2" && r.owners == ["node-3"])
        },
    )
    .await;
    let rows = quiet(&lab, limit).await;
    tokio::task::block_in_place(|| check_paths(&lab, &rows, "default/demo-2"));

    // node-1 moves to iptables mode: kube-proxy restarted with a new configuration, IronLB left alone.
    let pid = lab.agent_pid("node-1");
    let before = placement(&rows);
    lab.restart_kube_proxy("node-1", Mode::Iptables).unwrap();
    wait_until("node-1 to publish iptables mode", limit, || async {
        published_mode(&lab, "node-1").await.as_deref() == Some("iptables")
    })
    .await;
    // The new rules need a sync of kube-proxy; then every path is as before.
    lab.wait_forwarding(limit).await.unwrap();
    let rows = lab.status().await.unwrap();
    let after = placement(&rows);
    assert_eq!(
        after, before,
        "no VIP and no owner changes with kube-proxy's mode"
    );
    assert_eq!(lab.agent_pid("node-1"), pid, "the agent was not restarted");
    tokio::task::block_in_place(|| check_paths(&lab, &rows, "default/demo-2"));

    // `ironlb status` lists every node's mode.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .arg("status")
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(
            "kube-proxy mode per node: node-1 iptables, node-2 nftables, node-3 nftables"
        ),
        "{text}"
    );
}
