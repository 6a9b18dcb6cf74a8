//! Checks shared by the tests that run real kube-proxy beside IronLB (tests/netns_kube_proxy.rs on the host in
//! nftables and iptables mode, tests/vm_kube_proxy.rs in the VM in IPVS mode, tests/vm_lab.rs in the VM in nftables
//! mode beside the direct data plane).

use std::net::IpAddr;
use std::time::Duration;

use ironlb::k8s::report::StatusRow;
use ironlb::lab::cluster::{Lab, PodReply};
use ironlb::lab::topology;
use ironlb::plan::visibility::PROXY_MODE_ANNOTATION;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

/// kube-proxy's mode as `node`'s Node annotation says it.
pub async fn published_mode(lab: &Lab, node: &str) -> Option<String> {
    let node = Api::<Node>::all(lab.client.clone()).get(node).await.ok()?;
    node.metadata
        .annotations?
        .get(PROXY_MODE_ANNOTATION)
        .cloned()
}

/// Every VIP with its owner: the MAC that answers ARP/NDP from the client must be the owner's, and a connection must
/// reach a pod as the Service's policy says. Returns the pods that answered.
pub fn check_paths(lab: &Lab, rows: &[StatusRow], local_service: &str) -> Vec<PodReply> {
    let mut replies = Vec::new();
    for row in rows {
        assert_eq!(
            row.owners.len(),
            1,
            "{} has one owner: {row:?}",
            row.service
        );
        let owner = lab.node(&row.owners[0]).unwrap();
        for vip in &row.vips {
            let ip: IpAddr = vip.parse().unwrap();
            // Under the VM's emulated CPUs one arping can miss its 2 s, and a starved agent can be declared Down for a
            // few seconds, yielding its VIPs meanwhile while no other node claims them (no split brain): up to 15
            // tries, half a second apart, for an answer. A wrong answer is not retried.
            let mac = (0..15).find_map(|_| {
                let mac = lab.resolve_from_client(ip);
                if mac.is_none() {
                    std::thread::sleep(Duration::from_millis(500));
                }
                mac
            });
            assert_eq!(
                mac.as_deref(),
                Some(owner.mac.as_str()),
                "{vip} of {} must be answered by its owner {}",
                row.service,
                owner.name
            );
            // A few tries: under the VM's emulated CPUs one connection can take longer than its timeout.
            let text = (0..5)
                .find_map(|_| lab.connect_from_client(ip, Duration::from_secs(2)).ok())
                .unwrap_or_else(|| panic!("{vip}: no connection in 5 tries"));
            let reply = PodReply::parse(&text).unwrap_or_else(|| {
                panic!("{vip}: a pod must answer through kube-proxy, got {text:?}")
            });
            if row.service == local_service {
                let client = match ip {
                    IpAddr::V4(_) => IpAddr::V4(topology::CLIENT_V4),
                    IpAddr::V6(_) => IpAddr::V6(topology::CLIENT_V6),
                };
                assert_eq!(
                    reply.peer, client,
                    "Local keeps the client's address: {text}"
                );
                assert_eq!(reply.node, owner.name, "Local stays on the owner: {text}");
            } else {
                let snat = lab.topology.node_with_addr(reply.peer);
                assert_eq!(
                    snat.map(|n| n.name.as_str()),
                    Some(owner.name.as_str()),
                    "Cluster is source-NATed by the node that received it: {text}"
                );
            }
            replies.push(reply);
        }
    }
    replies
}

/// The status once no owner has changed for 1.5 s. (Not [`Lab::wait_settled`]: with a Local Service pinned to one
/// node, the loads need not be level.)
pub async fn quiet(lab: &Lab, limit: Duration) -> Vec<StatusRow> {
    let start = std::time::Instant::now();
    let mut last = Vec::new();
    let mut since = std::time::Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(now) = lab.status().await else {
            continue;
        };
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= Duration::from_millis(1500) {
            return now;
        }
    }
    panic!("the owners did not hold still for 1.5 s within {limit:?}: {last:?}");
}

/// Waits (bounded by `limit`) until every node of the lab publishes `mode` as kube-proxy's.
pub async fn wait_all_published(lab: &Lab, mode: &str, limit: Duration) {
    let nodes = lab.node_names();
    super::wait_until(
        &format!("every node to publish {mode} mode"),
        limit,
        || async {
            for node in &nodes {
                if published_mode(lab, node).await.as_deref() != Some(mode) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Each Service with its VIPs and owners: what must not change while kube-proxy's mode does.
pub fn placement(rows: &[StatusRow]) -> Vec<(String, Vec<String>, Vec<String>)> {
    rows.iter()
        .map(|r| (r.service.clone(), r.vips.clone(), r.owners.clone()))
        .collect()
}

/// The addresses `node`'s kube-proxy (nftables mode) has rules for: the keys of its `service-ips` maps, IPv4 and
/// IPv6, as `nft list map` prints them (`<ip> . tcp . <port>`).
pub fn service_ips(lab: &Lab, node: &str) -> String {
    let netns = &lab.node(node).unwrap().netns;
    ["ip", "ip6"]
        .iter()
        .map(|family| {
            topology::run_in(
                netns,
                &["nft", "list", "map", family, "kube-proxy", "service-ips"],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
        })
        .collect()
}

/// Whether `node`'s kube-proxy has nftables rules for every one of `vips` on TCP port 80.
pub fn nft_has(lab: &Lab, node: &str, vips: &[IpAddr]) -> bool {
    let rules = service_ips(lab, node);
    vips.iter()
        .all(|vip| rules.contains(&format!("{vip} . tcp . 80")))
}
