//! [`NodePlan`]: what this node must do about the VIPs, given the chosen owners and its own links.
//!
//! It owns one local rule that the cluster-wide eligibility cannot check: on which of this node's interfaces an owned
//! VIP is answered. A VIP is answered only on an interface that is up, not loopback, not NOARP and not
//! `kube-ipvs0`: kube-proxy's dummy device holds every LB IP on every node, and answering there (or on any
//! interface without ARP) is exactly the every-node-answers failure that strict ARP exists to prevent. The plan is a
//! value; the ARP/NDP responder and the address reconciler apply it. This module never reads the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::input::{GroupKey, Interfaces, VipGroup};
use crate::alloc::ServiceKey;

/// kube-proxy's IPVS dummy device, where it binds every LB IP of the cluster on every node.
pub const KUBE_IPVS0: &str = "kube-ipvs0";

/// What the plan needs to know about one of this node's links: the part of `netif::LocalInterface` that decides
/// whether a VIP may be answered on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceFacts {
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub up: bool,
    /// `IFF_NOARP`: the kernel answers no ARP here, and neither may we.
    pub noarp: bool,
    pub loopback: bool,
}

impl InterfaceFacts {
    /// Whether ARP/NDP may be answered on this link at all.
    pub fn is_usable(&self) -> bool {
        self.up && !self.noarp && !self.loopback && self.name != KUBE_IPVS0
    }
}

/// What one node must do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// The VIPs this node owns and can answer for, each with the interfaces to answer ARP/NDP on (never empty).
    pub announce: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Every assigned VIP of ours, owned or not: in the integrated data plane it is bound on `kube-ipvs0` at once, on
    /// every node, as kube-proxy itself would on its next sync.
    pub bind: BTreeSet<IpAddr>,
    /// The Services whose group this node owns, with their IPs.
    pub owned_services: BTreeMap<ServiceKey, Vec<IpAddr>>,
    /// VIPs this node owns but has no usable interface for: an `AnnouncementFailed` Event each.
    pub unannounceable: BTreeSet<IpAddr>,
}

/// The plan of `node`. `owners` comes from [`super::owner::choose_owners`]; the interface constraint of the
/// L2Advertisements travels in each group's `l2_interfaces`.
pub fn node_plan(
    node: &str,
    groups: &[VipGroup],
    owners: &BTreeMap<GroupKey, String>,
    local_interfaces: &[InterfaceFacts],
) -> NodePlan {
    let mut plan = NodePlan::default();
    let usable: Vec<&InterfaceFacts> = local_interfaces.iter().filter(|i| i.is_usable()).collect();
    for group in groups {
        plan.bind.extend(group.ips.iter().copied());
        if owners.get(&group.key).map(String::as_str) != Some(node) {
            continue;
        }
        plan.owned_services.extend(
            group
                .services
                .iter()
                .map(|(k, ips)| (k.clone(), ips.clone())),
        );
        let constraint = group.l2_interfaces.get(node).unwrap_or(&Interfaces::Any);
        for ip in &group.ips {
            let on: BTreeSet<String> = usable
                .iter()
                .filter(|i| match constraint {
                    Interfaces::Any => i.subnets.iter().any(|net| net.contains(ip)),
                    Interfaces::Only(names) => names.contains(&i.name),
                })
                .map(|i| i.name.clone())
                .collect();
            if on.is_empty() {
                plan.unannounceable.insert(*ip);
            } else {
                plan.announce.insert(*ip, on);
            }
        }
    }
    plan
}

/// The value this node publishes in [`super::input::SUBNETS_ANNOTATION`]: the subnets of its usable interfaces,
/// sorted and comma-separated. IPv6 link-local subnets are left out: every link has one and no VIP is ever in one.
pub fn subnets_annotation(local: &[InterfaceFacts]) -> String {
    let nets: BTreeSet<IpNet> = local
        .iter()
        .filter(|i| i.is_usable())
        .flat_map(|i| i.subnets.iter().copied())
        .filter(|net| match net {
            IpNet::V6(v6) => (v6.addr().segments()[0] & 0xffc0) != 0xfe80,
            IpNet::V4(_) => true,
        })
        .collect();
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn link(name: &str, subnets: &[&str]) -> InterfaceFacts {
        InterfaceFacts {
            name: name.into(),
            subnets: subnets
                .iter()
                .map(|s| s.parse().expect("test CIDR"))
                .collect(),
            up: true,
            noarp: false,
            loopback: false,
        }
    }

    pub trait LinkExt {
        fn down(self) -> InterfaceFacts;
        fn noarp(self) -> InterfaceFacts;
        fn loopback(self) -> InterfaceFacts;
    }

    impl LinkExt for InterfaceFacts {
        fn down(mut self) -> InterfaceFacts {
            self.up = false;
            self
        }
        fn noarp(mut self) -> InterfaceFacts {
            self.noarp = true;
            self
        }
        fn loopback(mut self) -> InterfaceFacts {
            self.loopback = true;
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::plan::owner::testing::group;
    use crate::plan::owner::{choose_owners, testing::names};
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn owned_by(groups: &[VipGroup], node: &str) -> BTreeMap<GroupKey, String> {
        groups.iter().map(|g| (g.key, node.to_string())).collect()
    }

    fn dual(nodes: &[&str]) -> VipGroup {
        let mut g = group(0, nodes);
        g.ips = vec![ip("192.0.2.1"), ip("2001:db8::1")];
        g.services = [(ServiceKey::new("default", "s0"), g.ips.clone())].into();
        g
    }

    #[test]
    fn an_owned_vip_is_answered_on_the_interface_whose_subnet_holds_it() {
        let groups = vec![dual(&["n1"])];
        let links = [
            link("eth0", &["192.0.2.11/24", "2001:db8::11/64"]),
            link("eth1", &["198.51.100.11/24"]),
        ];
        let plan = node_plan("n1", &groups, &owned_by(&groups, "n1"), &links);
        let eth0 = BTreeSet::from(["eth0".to_string()]);
        assert_eq!(
            plan.announce,
            BTreeMap::from([(ip("192.0.2.1"), eth0.clone()), (ip("2001:db8::1"), eth0)])
        );
        assert_eq!(plan.owned_services.len(), 1);
        assert!(plan.unannounceable.is_empty());
    }

    #[test]
    fn never_kube_ipvs0_loopback_noarp_or_down_links() {
        let groups = vec![group(0, &["n1"])];
        let subnet = ["192.0.2.0/24"];
        let links = [
            link(KUBE_IPVS0, &subnet),
            link("lo", &subnet).loopback(),
            link("tun0", &subnet).noarp(),
            link("eth9", &subnet).down(),
        ];
        let plan = node_plan("n1", &groups, &owned_by(&groups, "n1"), &links);
        assert!(plan.announce.is_empty());
        assert_eq!(plan.unannounceable, BTreeSet::from([ip("192.0.2.1")]));
    }

    #[test]
    fn listed_interfaces_are_used_when_usable_whatever_their_subnet() {
        let mut g = group(0, &["n1"]);
        g.l2_interfaces.insert(
            "n1".into(),
            Interfaces::Only(
                [
                    "eth1".to_string(),
                    "eth2".to_string(),
                    KUBE_IPVS0.to_string(),
                ]
                .into(),
            ),
        );
        let groups = vec![g];
        let links = [
            link("eth0", &["192.0.2.11/24"]),
            link("eth1", &[]),
            link("eth2", &[]).down(),
            link(KUBE_IPVS0, &["192.0.2.1/32"]),
        ];
        let plan = node_plan("n1", &groups, &owned_by(&groups, "n1"), &links);
        assert_eq!(
            plan.announce[&ip("192.0.2.1")],
            BTreeSet::from(["eth1".to_string()])
        );
    }

    #[test]
    fn every_vip_is_bound_but_only_owned_ones_are_announced() {
        let groups = vec![group(0, &["n1", "n2"]), group(1, &["n1", "n2"])];
        let owners = BTreeMap::from([
            (groups[0].key, "n1".to_string()),
            (groups[1].key, "n2".to_string()),
        ]);
        let links = [link("eth0", &["192.0.2.11/24"])];
        let plan = node_plan("n1", &groups, &owners, &links);
        assert_eq!(
            plan.bind,
            BTreeSet::from([ip("192.0.2.1"), ip("192.0.2.2")])
        );
        assert_eq!(plan.announce.keys().collect::<Vec<_>>(), [&ip("192.0.2.1")]);
        assert_eq!(plan.owned_services.len(), 1);
    }

    #[test]
    fn running_the_plan_twice_gives_the_same_plan() {
        let groups = vec![dual(&["n1"]), group(1, &["n1"])];
        let owners = owned_by(&groups, "n1");
        let links = [link("eth0", &["192.0.2.11/24", "2001:db8::11/64"])];
        assert_eq!(
            node_plan("n1", &groups, &owners, &links),
            node_plan("n1", &groups, &owners, &links)
        );
    }

    #[test]
    fn the_subnets_annotation_lists_usable_global_subnets_sorted() {
        let links = [
            link("eth1", &["198.51.100.11/24", "fe80::1/64"]),
            link("eth0", &["192.0.2.11/24", "2001:db8::11/64"]),
            link(KUBE_IPVS0, &["192.0.2.1/32"]),
            link("lo", &["127.0.0.1/8"]).loopback(),
        ];
        assert_eq!(
            subnets_annotation(&links),
            "192.0.2.11/24,198.51.100.11/24,2001:db8::11/64"
        );
        // And it round-trips through the lenient parser the other agents use.
        let (nets, bad) = super::super::input::parse_subnets(&subnets_annotation(&links));
        assert_eq!(nets.len(), 3);
        assert!(bad.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Across the plans of all nodes, every IP of every owned group, both families of a dual-stack one
        /// included, is announced by exactly one node: its group's owner.
        #[test]
        fn each_vip_is_announced_by_exactly_its_owner(
            eligibility in prop::collection::vec(prop::collection::btree_set(0usize..6, 1..4), 1..40),
        ) {
            let nodes = names(6);
            let links = [link("eth0", &["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/64"])];
            let groups: Vec<VipGroup> = eligibility
                .iter()
                .enumerate()
                .map(|(i, set)| {
                    let refs: Vec<&str> = set.iter().map(|j| nodes[*j].as_str()).collect();
                    let mut g = group(i as u32, &refs);
                    if i % 2 == 0 {
                        let v6: IpAddr = format!("2001:db8::{:x}", i + 1).parse().unwrap();
                        g.ips.push(v6);
                    }
                    g
                })
                .collect();
            let live: BTreeSet<String> = nodes.iter().cloned().collect();
            let owners = choose_owners(&groups, &live);
            let plans: Vec<(String, NodePlan)> = nodes
                .iter()
                .map(|n| (n.clone(), node_plan(n, &groups, &owners, &links)))
                .collect();
            for g in &groups {
                for ip in &g.ips {
                    let announcers: Vec<&String> = plans
                        .iter()
                        .filter(|(_, p)| p.announce.contains_key(ip))
                        .map(|(n, _)| n)
                        .collect();
                    prop_assert_eq!(announcers, vec![&owners[&g.key]]);
                }
            }
        }
    }
}
