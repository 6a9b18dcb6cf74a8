//! The lab's network, on its own: a node whose uplink was cut and healed reaches the other nodes' pods again, over
//! IPv4 and IPv6. (The kernel drops the routes over a link that goes down; without them a healed node's IPVS could
//! not reach a pod behind another node, and the VM's failover bench saw Cluster VIPs go unserved after a heal.)
//! Needs root; the namespaces are removed on drop.

mod netns_support;

use std::net::IpAddr;
use std::time::Duration;

use ironlb::lab::topology::{Topology, run_in};
use netns_support::skip;

/// Whether `from` gets an answer from `to` within a few bounded pings.
fn reaches(from: &str, to: IpAddr) -> bool {
    for _ in 0..5 {
        let ok = run_in(from, &["ping", "-c", "1", "-W", "1", &to.to_string()]).is_ok();
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_healed_node_reaches_the_other_nodes_pods_again() {
    if skip() {
        return;
    }
    let mut topo = Topology::create(&format!("ilb-topo-{}", std::process::id()), 2).unwrap();
    topo.add_pods().unwrap();
    let node = topo.nodes[0].clone();
    let pod = topo
        .pods
        .iter()
        .find(|p| p.node != node.name)
        .unwrap()
        .clone();
    let targets = [IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)];
    for to in targets {
        assert!(
            reaches(&node.netns, to),
            "{} cannot reach {to} at the start",
            node.name
        );
    }
    topo.cut(&node).unwrap();
    for to in targets {
        assert!(
            !reaches(&node.netns, to),
            "{} reaches {to} while cut",
            node.name
        );
    }
    topo.heal(&node).unwrap();
    for to in targets {
        assert!(
            reaches(&node.netns, to),
            "{} cannot reach {to} ({}'s pod) after the heal",
            node.name,
            pod.node
        );
    }
}
