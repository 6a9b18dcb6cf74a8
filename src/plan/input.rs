//! What the planner needs to know, read once from the cluster: [`PlanInput`], made of [`VipGroup`]s and
//! [`NodeInfo`]s.
//!
//! This module owns the eligibility rules (`docs/design.md#eligibility`): which nodes may announce a VIP in Layer 2
//! mode and which may advertise it over BGP, and, when none may, why not, in words fit for an Event. It reads
//! Services, EndpointSlices, Nodes and the validated [`Config`]; it never chooses an owner (that is
//! [`super::owner`]) and never looks at this node's links (that is [`super::node_plan()`]). Nothing from the API can
//! make it panic: a malformed annotation entry is skipped and reported in [`PlanInput::warnings`].
//!
//! A VIP group is the unit of ownership. The IPs of a dual-stack Service form one group, so that the node answering
//! ARP for its IPv4 address also answers NDP for its IPv6 one. Services sharing a VIP (`allow-shared-ip`) are merged
//! into one group too: two owners for one IP would mean two nodes answering ARP for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::alloc::{LbRequest, ServiceKey};
use crate::config::{Config, Labels, Selector};

/// Node annotation in which every agent publishes the CIDRs of its usable interfaces, comma-separated, e.g.
/// `192.0.2.11/24,2001:db8::11/64`. The other agents read it to know which nodes can reach a VIP's subnet.
pub const SUBNETS_ANNOTATION: &str = "ironlb.io/subnets";
/// Set by a node's agent while it cannot answer ARP/NDP at all (strict ARP not effective), to the reason: no group
/// is given to it in Layer 2 mode meanwhile.
pub const CANNOT_ANSWER_ANNOTATION: &str = "ironlb.io/cannot-answer";
/// Set by a node's agent while it runs the direct data plane on a kernel without IPVS, to the reason: nothing on the
/// node forwards a VIP, so no group (Layer 2 or BGP) is given to it, and while no node can forward, the allocator
/// does not report `ipMode: Proxy` (see [`nothing_forwards`]).
pub const CANNOT_FORWARD_ANNOTATION: &str = "ironlb.io/cannot-forward";
/// Set by a node's agent from the moment it is told to stop (SIGTERM) until it exits, to the reason; cleared by the
/// next agent on the node. Like a cordon, it makes the node hand its Layer 2 groups over before it goes.
pub const HANDING_OFF_ANNOTATION: &str = "ironlb.io/handing-off";
/// The taint an operator sets on a node that is shut down or out of service.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";
/// The well-known label that takes a node out of every external load balancer (KEP-1143).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Identity of a [`VipGroup`]: its lowest IP. Groups never share an IP, so this is unique; and because `IpAddr`
/// orders IPv4 before IPv6, a Service that gains a second family keeps its key, and its owner with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(pub IpAddr);

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The interfaces an L2Advertisement lets a node answer ARP/NDP on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// No `interfaces` list: any usable interface whose subnet contains the VIP.
    Any,
    /// Only these, and only where they are usable on the node.
    Only(BTreeSet<String>),
}

/// One announced unit: the IPs of one Service, or of the Services sharing them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipGroup {
    pub key: GroupKey,
    /// Every IP of the group, sorted, never empty.
    pub ips: Vec<IpAddr>,
    /// The Services holding these IPs, each with its own IPs; more than one only when a VIP is shared.
    pub services: BTreeMap<ServiceKey, Vec<IpAddr>>,
    /// The pool containing the group's lowest IP; empty when no pool contains it.
    pub pool: String,
    /// Some Service of the group has `externalTrafficPolicy: Local`.
    pub traffic_local: bool,
    /// Nodes with a serving endpoint of the group's Services: a ready one, or a serving and terminating one when
    /// no endpoint is ready.
    pub serving_nodes: BTreeSet<String>,
    /// Nodes that may own the group in Layer 2 mode.
    pub l2_nodes: BTreeSet<String>,
    /// For each node of `l2_nodes`, where it may answer: the union of the `interfaces` of the L2Advertisements that
    /// select it, enforced by [`super::node_plan()`] on the node itself.
    pub l2_interfaces: BTreeMap<String, Interfaces>,
    /// Why no node may announce it in Layer 2 mode; `None` when `l2_nodes` is not empty.
    pub l2_not_announced: Option<NotAnnounced>,
    /// For the nodes of `l2_nodes` that an applying L2Advertisement's `preferredNodeSelectors` match: the summed
    /// weights, as MetalLB sums them. Owner choice takes the live candidates with the highest score; nodes absent
    /// score zero.
    pub l2_preferred: BTreeMap<String, i64>,
    /// Nodes that may advertise it over BGP: the same rules, with BGPAdvertisements, and no subnet condition.
    pub bgp_nodes: BTreeSet<String>,
    pub bgp_not_announced: Option<NotAnnounced>,
    /// The Layer 2 owner the group's Services name as published by it (`ironlb.io/announced-by`); the first in
    /// Service order when they disagree. Owner choice keeps it while it may still own the group
    /// (see [`super::owner`]).
    pub published_owner: Option<String>,
}

/// A node as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    /// From [`SUBNETS_ANNOTATION`]; empty until the node's agent has published it.
    pub subnets: Vec<IpNet>,
    /// Carries [`EXCLUDE_LABEL`].
    pub excluded: bool,
    /// Its `NetworkUnavailable` condition is True.
    pub network_unavailable: bool,
    /// From [`CANNOT_ANSWER_ANNOTATION`]: why its agent cannot answer ARP/NDP now.
    pub cannot_answer: Option<String>,
    /// From [`CANNOT_FORWARD_ANNOTATION`]: why its agent cannot forward a VIP (direct data plane without IPVS).
    pub cannot_forward: Option<String>,
    /// Cordoned (`spec.unschedulable`), tainted [`OUT_OF_SERVICE_TAINT`], or its agent stopping
    /// ([`HANDING_OFF_ANNOTATION`]): its Layer 2 VIPs move to other nodes before it is drained or shut down.
    pub handing_off: bool,
}

impl NodeInfo {
    /// Whether the node may take part in any announcement at all.
    pub fn is_usable(&self) -> bool {
        !self.excluded && !self.network_unavailable
    }

    pub fn has_subnet_for(&self, ip: &IpAddr) -> bool {
        self.subnets.iter().any(|net| net.contains(ip))
    }
}

/// Why a group is announced by no node, worded for an Event or `ironlb status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnnounced {
    #[error("{ip} is in no configured pool")]
    NoPool { ip: IpAddr },
    #[error("no {kind} selects pool {pool}")]
    NoAdvertisement { kind: &'static str, pool: String },
    #[error("no {kind} selecting pool {pool} matches the labels of {service}")]
    ServiceNotSelected {
        kind: &'static str,
        pool: String,
        service: ServiceKey,
    },
    #[error("no serving endpoint")]
    NoServingEndpoint,
    #[error("no eligible node ({reasons})")]
    NoEligibleNode { reasons: String },
}

/// The cluster objects the planner reads. The agent's `ClusterState` is one and a test's plain vectors are another:
/// planning takes this rather than the agent's state, so that it depends on nothing that talks to the API.
pub trait ClusterObjects {
    fn services(&self) -> impl Iterator<Item = &Service>;
    /// Walked once per planning pass.
    fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice>;
    fn nodes(&self) -> impl Iterator<Item = &Node>;
    /// The labels of every Namespace, by name: advertisements select Services by them too.
    fn namespace_labels(&self) -> BTreeMap<String, Labels>;
}

/// Everything the planner needs, read from the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanInput {
    /// Sorted by name.
    pub nodes: Vec<NodeInfo>,
    /// Sorted by key.
    pub groups: Vec<VipGroup>,
    /// Malformed inputs that were skipped, one sentence each.
    pub warnings: Vec<String>,
}

/// One advertisement, L2 or BGP, reduced to what eligibility reads.
struct Advertisement<'a> {
    pools: &'a BTreeSet<String>,
    node_selectors: &'a [Selector],
    service_selectors: &'a [Selector],
    interfaces: &'a [String],
    /// `preferredNodeSelectors` (Layer 2 only): weight and selector.
    preferred: &'a [(i32, Selector)],
}

/// A Service of ours with IPs in its status, before groups are merged.
struct Holder {
    key: ServiceKey,
    ips: Vec<IpAddr>,
    labels: Labels,
    traffic_local: bool,
    endpoints: Endpoints,
    /// The node its `ironlb.io/announced-by` names: the Layer 2 owner that last published itself.
    announced_by: Option<String>,
}

/// Where a Service's endpoints serve. `nodes` are those whose endpoints count for `externalTrafficPolicy: Local`.
#[derive(Default)]
struct Endpoints {
    serving_anywhere: bool,
    nodes: BTreeSet<String>,
}

impl PlanInput {
    /// Reads the plan inputs of every LoadBalancer Service of ours (nil class, or exactly `lb_class`) that has
    /// ingress IPs in its status. Pure: the same state and config give the same value on every node.
    pub fn from_cluster(
        cluster: &impl ClusterObjects,
        config: &Config,
        lb_class: Option<&str>,
    ) -> PlanInput {
        let mut warnings = Vec::new();
        let mut nodes: Vec<NodeInfo> = cluster
            .nodes()
            .filter_map(|n| node_info(n, &mut warnings))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        // When no node can forward, they all announce anyway: the allocator then writes no `ipMode: Proxy`, so
        // kube-proxy forwards the VIPs (see [`nothing_forwards`]).
        if nothing_forwards(cluster.nodes()) {
            for node in &mut nodes {
                node.cannot_forward = None;
            }
        }
        let namespace_labels = cluster.namespace_labels();
        let no_labels = Labels::new();
        let slices = slices_by_service(cluster.endpoint_slices());

        let mut holders = Vec::new();
        for svc in cluster.services() {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let ns_labels = namespace_labels.get(ns).unwrap_or(&no_labels);
            // Adoption reading: a broken IP annotation must not stop a VIP the Service already holds from being
            // announced, just as the allocator keeps it.
            let request = match LbRequest::for_adoption(svc, ns_labels, lb_class) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    warnings.push(format!("Service skipped: {e}"));
                    continue;
                }
            };
            if request.status_ips.is_empty() {
                continue;
            }
            let mut ips = request.status_ips.clone();
            ips.sort();
            ips.dedup();
            holders.push(Holder {
                endpoints: endpoints(
                    slices
                        .get(&(
                            request.service.namespace.as_str(),
                            request.service.name.as_str(),
                        ))
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                ),
                key: request.service,
                ips,
                labels: request.labels,
                traffic_local: request.traffic_local,
                announced_by: svc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(super::visibility::ANNOUNCED_BY_ANNOTATION))
                    .filter(|n| !n.is_empty() && !n.contains(','))
                    .cloned(),
            });
        }

        let l2: Vec<Advertisement> = config
            .l2_advertisements
            .values()
            .map(|a| Advertisement {
                pools: &a.pools,
                node_selectors: &a.node_selectors,
                service_selectors: &a.service_selectors,
                interfaces: &a.interfaces,
                preferred: &a.preferred_nodes,
            })
            .collect();
        let bgp: Vec<Advertisement> = config
            .bgp_advertisements
            .values()
            .map(|a| Advertisement {
                pools: &a.pools,
                node_selectors: &a.node_selectors,
                service_selectors: &a.service_selectors,
                interfaces: &[],
                preferred: &[],
            })
            .collect();

        let groups = merge_shared(holders)
            .into_iter()
            .map(|members| group(&members, &nodes, config, &l2, &bgp))
            .collect();
        PlanInput {
            nodes,
            groups,
            warnings,
        }
    }
}

fn node_info(node: &Node, warnings: &mut Vec<String>) -> Option<NodeInfo> {
    let name = node.metadata.name.clone()?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let annotation = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SUBNETS_ANNOTATION))
        .map(String::as_str)
        .unwrap_or_default();
    let (subnets, bad) = parse_subnets(annotation);
    warnings.extend(bad.into_iter().map(|entry| {
        format!("Node {name}: {SUBNETS_ANNOTATION}: {entry:?} is not a CIDR; skipped")
    }));
    let network_unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True");
    let reason = |key: &str| {
        node.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|why| !why.is_empty())
            .cloned()
    };
    let cannot_answer = reason(CANNOT_ANSWER_ANNOTATION);
    let cannot_forward = reason(CANNOT_FORWARD_ANNOTATION);
    let spec = node.spec.as_ref();
    let stopping = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HANDING_OFF_ANNOTATION))
        .is_some_and(|why| !why.is_empty());
    let handing_off = stopping
        || spec.and_then(|s| s.unschedulable).unwrap_or(false)
        || spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
    Some(NodeInfo {
        name,
        excluded: labels.contains_key(EXCLUDE_LABEL),
        labels,
        subnets,
        network_unavailable,
        cannot_answer,
        cannot_forward,
        handing_off,
    })
}

/// Whether no node can forward a VIP: some node runs an agent (it published [`SUBNETS_ANNOTATION`]) and every such
/// node says it cannot forward ([`CANNOT_FORWARD_ANNOTATION`]). The allocator then writes ingress IPs without
/// `ipMode: Proxy`, so that kube-proxy forwards them (its nftables and iptables modes need no IPVS), and every node
/// is eligible again: with some node able to forward, those that cannot are never chosen.
pub fn nothing_forwards<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> bool {
    let mut agents = 0usize;
    for node in nodes {
        let Some(annotations) = node.metadata.annotations.as_ref() else {
            continue;
        };
        if !annotations.contains_key(SUBNETS_ANNOTATION) {
            continue;
        }
        agents += 1;
        if annotations
            .get(CANNOT_FORWARD_ANNOTATION)
            .is_none_or(|why| why.is_empty())
        {
            return false;
        }
    }
    agents > 0
}

/// Parses the [`SUBNETS_ANNOTATION`] value leniently: the valid CIDRs, and the entries that are not. Blank entries
/// (a trailing comma) are neither.
pub fn parse_subnets(value: &str) -> (Vec<IpNet>, Vec<String>) {
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<IpNet>() {
            Ok(net) => nets.push(net),
            Err(_) => bad.push(entry.to_string()),
        }
    }
    (nets, bad)
}

/// The EndpointSlices of each Service, by namespace and the Service name their `kubernetes.io/service-name` label
/// gives: one walk over the slices per pass, not one per Service.
fn slices_by_service<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.as_deref();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(service)) = (namespace, service) {
            out.entry((namespace, service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    out
}

/// Where the endpoints in a Service's `slices` serve, per the EndpointSlice conditions: an endpoint serves when it
/// is ready (a missing `ready` means ready, as Kubernetes reads it), or, when no endpoint of the Service is ready,
/// when it is serving and terminating, so that connections keep flowing during a rolling update that has nothing
/// ready yet.
fn endpoints(slices: &[&EndpointSlice]) -> Endpoints {
    let mut ready = Endpoints::default();
    let mut terminating = Endpoints::default();
    for slice in slices {
        for ep in &slice.endpoints {
            let cond = ep.conditions.clone().unwrap_or_default();
            let is_ready = cond.ready.unwrap_or(true);
            let is_serving = cond.serving.unwrap_or(is_ready);
            let is_terminating = cond.terminating.unwrap_or(false);
            let target = if is_ready {
                &mut ready
            } else if is_serving && is_terminating {
                &mut terminating
            } else {
                continue;
            };
            target.serving_anywhere = true;
            target.nodes.extend(ep.node_name.clone());
        }
    }
    if ready.serving_anywhere {
        ready
    } else {
        terminating
    }
}

/// Groups the holders so that Services sharing any IP end up together. Output sorted by lowest IP.
///
/// A union-find over the holders, joined through the first holder seen for each IP: linear in the IPs (up to the
/// inverse Ackermann factor), where comparing every holder with every group was quadratic in the Services.
fn merge_shared(holders: Vec<Holder>) -> Vec<Vec<Holder>> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..holders.len()).collect();
    let mut first_holder: HashMap<IpAddr, usize> = HashMap::new();
    for (i, holder) in holders.iter().enumerate() {
        for ip in &holder.ips {
            let first = *first_holder.entry(*ip).or_insert(i);
            let (a, b) = (root(&mut parent, first), root(&mut parent, i));
            if a != b {
                parent[b.max(a)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<Holder>> = BTreeMap::new();
    for (i, holder) in holders.into_iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(holder);
    }
    let lowest = |members: &[Holder]| members.iter().filter_map(|m| m.ips.first()).min().copied();
    let mut groups: Vec<Vec<Holder>> = groups.into_values().collect();
    groups.sort_by_cached_key(|members| lowest(members));
    for members in &mut groups {
        members.sort_by(|a, b| a.key.cmp(&b.key));
    }
    groups
}

fn group(
    members: &[Holder],
    nodes: &[NodeInfo],
    config: &Config,
    l2: &[Advertisement],
    bgp: &[Advertisement],
) -> VipGroup {
    let ips: Vec<IpAddr> = members
        .iter()
        .flat_map(|m| m.ips.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let key = GroupKey(ips[0]);
    let pool_of = |ip: &IpAddr| {
        config
            .pools
            .values()
            .find(|p| p.contains(ip))
            .map(|p| p.name.clone())
    };
    let pools: Result<BTreeSet<String>, NotAnnounced> = ips
        .iter()
        .map(|ip| pool_of(ip).ok_or(NotAnnounced::NoPool { ip: *ip }))
        .collect();

    // A shared VIP is served by the Services that have endpoints; for Local ones, only from nodes serving each of
    // them (they share a selector, so in practice these are the same nodes).
    let serving: Vec<&Holder> = members
        .iter()
        .filter(|m| m.endpoints.serving_anywhere)
        .collect();
    let serving_nodes = serving
        .iter()
        .map(|m| m.endpoints.nodes.clone())
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .unwrap_or_default();
    let traffic_local = members.iter().any(|m| m.traffic_local);

    let decide = |kind: &'static str, advs: &[Advertisement], need_subnet: bool| {
        let pools = match &pools {
            Ok(p) => p,
            Err(e) => return Eligible::none(e.clone()),
        };
        // Advertisements that may carry this group: they select the pool of every IP and match every Service.
        let mut usable: Vec<&Advertisement> = Vec::new();
        for pool in pools {
            let selecting: Vec<&Advertisement> =
                advs.iter().filter(|a| a.pools.contains(pool)).collect();
            if selecting.is_empty() {
                return Eligible::none(NotAnnounced::NoAdvertisement {
                    kind,
                    pool: pool.clone(),
                });
            }
            let mut matching = selecting.clone();
            for m in members {
                matching.retain(|a| {
                    a.service_selectors.is_empty()
                        || a.service_selectors.iter().any(|s| s.matches(&m.labels))
                });
                if matching.is_empty() {
                    return Eligible::none(NotAnnounced::ServiceNotSelected {
                        kind,
                        pool: pool.clone(),
                        service: m.key.clone(),
                    });
                }
            }
            // A group over two pools (dual stack) may reach one advertisement through both: count it once.
            for a in matching {
                if !usable.iter().any(|u| std::ptr::eq(*u, a)) {
                    usable.push(a);
                }
            }
        }
        if serving.is_empty() {
            return Eligible::none(NotAnnounced::NoServingEndpoint);
        }
        let mut rejected = Rejections::default();
        let mut eligible = Eligible::default();
        for node in nodes {
            let on_node: Vec<&&Advertisement> = usable
                .iter()
                .filter(|a| {
                    a.node_selectors.is_empty()
                        || a.node_selectors.iter().any(|s| s.matches(&node.labels))
                })
                .collect();
            let every_pool = pools
                .iter()
                .all(|p| on_node.iter().any(|a| a.pools.contains(p)));
            if !every_pool {
                rejected.node_selectors += 1;
            } else if node.excluded {
                rejected.excluded += 1;
            } else if node.network_unavailable {
                rejected.network_unavailable += 1;
            } else if node.cannot_forward.is_some() {
                rejected.cannot_forward += 1;
            } else if need_subnet && node.cannot_answer.is_some() {
                rejected.cannot_answer += 1;
            } else if need_subnet && node.handing_off {
                rejected.handing_off += 1;
            } else if need_subnet && !ips.iter().all(|ip| node.has_subnet_for(ip)) {
                rejected.no_subnet += 1;
            } else if traffic_local && !serving_nodes.contains(&node.name) {
                rejected.no_local_endpoint += 1;
            } else {
                let interfaces = if on_node.iter().any(|a| a.interfaces.is_empty()) {
                    Interfaces::Any
                } else {
                    Interfaces::Only(
                        on_node
                            .iter()
                            .flat_map(|a| a.interfaces.iter().cloned())
                            .collect(),
                    )
                };
                let preference: i64 = on_node
                    .iter()
                    .flat_map(|a| a.preferred.iter())
                    .filter(|(_, selector)| selector.matches(&node.labels))
                    .map(|(weight, _)| i64::from(*weight))
                    .sum();
                if preference > 0 {
                    eligible.preferred.insert(node.name.clone(), preference);
                }
                eligible.nodes.insert(node.name.clone());
                eligible.interfaces.insert(node.name.clone(), interfaces);
            }
        }
        if eligible.nodes.is_empty() {
            eligible.not_announced = Some(NotAnnounced::NoEligibleNode {
                reasons: rejected.to_string(),
            });
        }
        eligible
    };
    let l2 = decide("L2Advertisement", l2, true);
    let bgp = decide("BGPAdvertisement", bgp, false);
    VipGroup {
        key,
        services: members
            .iter()
            .map(|m| (m.key.clone(), m.ips.clone()))
            .collect(),
        pool: pools
            .as_ref()
            .ok()
            .and_then(|_| pool_of(&ips[0]))
            .unwrap_or_default(),
        ips,
        traffic_local,
        serving_nodes,
        l2_nodes: l2.nodes,
        l2_interfaces: l2.interfaces,
        l2_not_announced: l2.not_announced,
        l2_preferred: l2.preferred,
        bgp_nodes: bgp.nodes,
        bgp_not_announced: bgp.not_announced,
        published_owner: members.iter().find_map(|m| m.announced_by.clone()),
    }
}

#[derive(Default)]
struct Eligible {
    nodes: BTreeSet<String>,
    interfaces: BTreeMap<String, Interfaces>,
    preferred: BTreeMap<String, i64>,
    not_announced: Option<NotAnnounced>,
}

impl Eligible {
    fn none(reason: NotAnnounced) -> Eligible {
        Eligible {
            not_announced: Some(reason),
            ..Eligible::default()
        }
    }
}

/// How many nodes each rule turned away, the first failing rule counting for each node.
#[derive(Default)]
struct Rejections {
    node_selectors: usize,
    excluded: usize,
    network_unavailable: usize,
    cannot_answer: usize,
    cannot_forward: usize,
    handing_off: usize,
    no_subnet: usize,
    no_local_endpoint: usize,
}

impl fmt::Display for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.node_selectors, "not matched by nodeSelectors"),
            (self.excluded, "excluded by label"),
            (self.network_unavailable, "NetworkUnavailable"),
            (
                self.cannot_answer,
                "unable to answer ARP/NDP (see ironlb.io/cannot-answer)",
            ),
            (
                self.cannot_forward,
                "unable to forward: no IPVS (see ironlb.io/cannot-forward)",
            ),
            (
                self.handing_off,
                "cordoned, out of service or its agent stopping",
            ),
            (self.no_subnet, "without a subnet containing the VIP"),
            (self.no_local_endpoint, "without a serving local endpoint"),
        ];
        let text: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, why)| format!("{n} {why}"))
            .collect();
        if text.is_empty() {
            f.write_str("no nodes")
        } else {
            f.write_str(&text.join(", "))
        }
    }
}

/// Builders for plan tests: nodes, endpoint slices and configs in documentation address ranges.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::crd::{IPAddressPool, L2Advertisement as L2Crd};
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, Service};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    pub use crate::alloc::service::testing::{SvcExt, svc};

    pub fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    pub trait NodeExt {
        fn label(self, key: &str, value: &str) -> Node;
        fn subnets(self, value: &str) -> Node;
        fn network_unavailable(self) -> Node;
        fn cordoned(self) -> Node;
        fn out_of_service(self) -> Node;
        fn cannot_forward(self, why: &str) -> Node;
    }

    impl NodeExt for Node {
        fn label(mut self, key: &str, value: &str) -> Node {
            self.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        fn subnets(mut self, value: &str) -> Node {
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(SUBNETS_ANNOTATION.into(), value.into());
            self
        }
        fn cannot_forward(mut self, why: &str) -> Node {
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(CANNOT_FORWARD_ANNOTATION.into(), why.into());
            self
        }
        fn cordoned(mut self) -> Node {
            self.spec.get_or_insert_default().unschedulable = Some(true);
            self
        }
        fn out_of_service(mut self) -> Node {
            self.spec.get_or_insert_default().taints =
                Some(vec![k8s_openapi::api::core::v1::Taint {
                    key: OUT_OF_SERVICE_TAINT.into(),
                    effect: "NoExecute".into(),
                    ..Default::default()
                }]);
            self
        }
        fn network_unavailable(mut self) -> Node {
            self.status = Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "NetworkUnavailable".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            self
        }
    }

    /// An endpoint's state, as `(node, ready, serving, terminating)` conditions would say.
    #[derive(Clone, Copy)]
    pub enum Ep {
        Ready(&'static str),
        NotReady(&'static str),
        Terminating(&'static str),
        /// No conditions at all: ready, as Kubernetes reads it.
        Bare(&'static str),
    }

    /// An EndpointSlice of `default/<service>`.
    pub fn slice(service: &str, endpoints: &[Ep]) -> EndpointSlice {
        let mut s = EndpointSlice {
            address_type: "IPv4".into(),
            ..Default::default()
        };
        s.metadata.name = Some(format!("{service}-{}", endpoints.len()));
        s.metadata.namespace = Some("default".into());
        s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into());
        s.endpoints = endpoints
            .iter()
            .map(|ep| {
                let (node, conditions) = match *ep {
                    Ep::Ready(n) => (n, Some((true, true, false))),
                    Ep::NotReady(n) => (n, Some((false, false, false))),
                    Ep::Terminating(n) => (n, Some((false, true, true))),
                    Ep::Bare(n) => (n, None),
                };
                Endpoint {
                    addresses: vec!["198.51.100.100".into()],
                    node_name: Some(node.into()),
                    conditions: conditions.map(|(ready, serving, terminating)| {
                        EndpointConditions {
                            ready: Some(ready),
                            serving: Some(serving),
                            terminating: Some(terminating),
                        }
                    }),
                    ..Default::default()
                }
            })
            .collect();
        s
    }

    /// Builds a validated config from CRD YAML documents.
    pub fn config(yaml: &str) -> Config {
        let mut sources = crate::config::Sources::default();
        for doc in yaml.split("\n---\n") {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("test yaml");
            match value["kind"].as_str() {
                Some("IPAddressPool") => sources
                    .pools
                    .push(serde_yaml::from_value::<IPAddressPool>(value).expect("pool")),
                Some("L2Advertisement") => sources
                    .l2_advertisements
                    .push(serde_yaml::from_value::<L2Crd>(value).expect("l2adv")),
                Some("BGPAdvertisement") => sources.bgp_advertisements.push(
                    serde_yaml::from_value::<crate::config::crd::BGPAdvertisement>(value)
                        .expect("bgpadv"),
                ),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        let validated = crate::config::validate(&sources);
        assert!(validated.errors.is_empty(), "{:?}", validated.errors);
        validated.config
    }

    /// Pool `a` (192.0.2.0/24, 2001:db8::/64) and pool `b` (198.51.100.0/24), with one L2Advertisement for every
    /// pool and every node.
    pub const POOLS: &str = "
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: a, namespace: metallb-system}
spec: {addresses: [192.0.2.0/24, '2001:db8::/64']}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: b, namespace: metallb-system}
spec: {addresses: [198.51.100.0/24]}";

    pub fn with_l2(spec: &str) -> Config {
        config(&format!(
            "{POOLS}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: l2, namespace: metallb-system}}\nspec: {spec}"
        ))
    }

    /// A cluster of Services, EndpointSlices and Nodes, and no Namespace labels.
    pub struct Objects {
        pub services: Vec<Service>,
        pub slices: Vec<EndpointSlice>,
        pub nodes: Vec<Node>,
    }

    impl ClusterObjects for Objects {
        fn services(&self) -> impl Iterator<Item = &Service> {
            self.services.iter()
        }

        fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
            self.slices.iter()
        }

        fn nodes(&self) -> impl Iterator<Item = &Node> {
            self.nodes.iter()
        }

        fn namespace_labels(&self) -> BTreeMap<String, Labels> {
            BTreeMap::new()
        }
    }

    /// A cluster holding exactly these objects.
    pub fn cluster(
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        nodes: Vec<Node>,
    ) -> Objects {
        Objects {
            services,
            slices,
            nodes,
        }
    }

    /// The two-node, one-subnet cluster most tests start from.
    pub fn two_nodes() -> Vec<Node> {
        vec![
            node("n1").subnets("192.0.2.11/24,2001:db8::11/64"),
            node("n2").subnets("192.0.2.12/24,2001:db8::12/64"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn nodes_of(g: &VipGroup) -> Vec<&str> {
        g.l2_nodes.iter().map(String::as_str).collect()
    }

    fn only(input: &PlanInput) -> &VipGroup {
        assert_eq!(input.groups.len(), 1, "{:?}", input.groups);
        &input.groups[0]
    }

    fn plan(
        svcs: Vec<Service>,
        slices: Vec<EndpointSlice>,
        nodes: Vec<Node>,
        cfg: &Config,
    ) -> PlanInput {
        PlanInput::from_cluster(&cluster(svcs, slices, nodes), cfg, None)
    }

    #[test]
    fn a_cluster_service_with_an_ip_is_announceable_from_every_node_on_its_subnet() {
        let cfg = with_l2("{}");
        let nodes = vec![
            node("n1").subnets("192.0.2.11/24"),
            node("n2").subnets("198.51.100.12/24"),
        ];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("n2")])],
            nodes,
            &cfg,
        );
        let g = only(&input);
        assert_eq!(g.key, GroupKey("192.0.2.1".parse().unwrap()));
        assert_eq!(g.pool, "a");
        assert!(!g.traffic_local);
        assert_eq!(nodes_of(g), ["n1"]);
        assert_eq!(g.l2_interfaces["n1"], Interfaces::Any);
        assert_eq!(g.l2_not_announced, None);
    }

    /// preferredNodeSelectors as MetalLB scores them: per node, the weights of every matching preference of every
    /// applying L2Advertisement that selects the node, summed; only eligible nodes score; an advertisement reached
    /// through both pools of a dual-stack group counts once.
    #[test]
    fn preferred_node_weights_are_summed_over_the_advertisements_that_apply() {
        let cfg = config(&format!(
            "{POOLS}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {{name: prefer-fast, namespace: metallb-system}}
spec:
  preferredNodeSelectors:
  - {{weight: 10, preference: {{matchLabels: {{disk: fast}}}}}}
  - {{weight: 5, preference: {{}}}}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {{name: prefer-rack1, namespace: metallb-system}}
spec:
  nodeSelectors: [{{matchLabels: {{rack: '1'}}}}]
  preferredNodeSelectors:
  - {{weight: 20, preference: {{matchLabels: {{rack: '1'}}}}}}"
        ));
        let nodes = vec![
            node("n1")
                .subnets("192.0.2.11/24,2001:db8::11/64")
                .label("disk", "fast"),
            node("n2")
                .subnets("192.0.2.12/24,2001:db8::12/64")
                .label("rack", "1"),
            node("n3")
                .subnets("192.0.2.13/24,2001:db8::13/64")
                .label("disk", "fast")
                .label("rack", "1"),
            // Matches every preference but cannot answer: no subnet, so not eligible, so no score.
            node("n4").label("disk", "fast").label("rack", "1"),
        ];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1", "2001:db8::1"])],
            vec![slice("a", &[Ep::Ready("n1")])],
            nodes,
            &cfg,
        );
        let g = only(&input);
        assert_eq!(nodes_of(g), ["n1", "n2", "n3"]);
        let want: BTreeMap<String, i64> = [("n1", 15), ("n2", 25), ("n3", 35)]
            .map(|(n, w)| (n.to_string(), w))
            .into();
        assert_eq!(g.l2_preferred, want);
    }

    #[test]
    fn services_without_status_ips_or_not_ours_are_not_planned() {
        let cfg = with_l2("{}");
        let input = plan(
            vec![
                svc("pending"),
                svc("other-class")
                    .class("example.com/lb")
                    .status(&["192.0.2.2"]),
                svc("cluster-ip").kind("ClusterIP").status(&["192.0.2.3"]),
            ],
            vec![],
            two_nodes(),
            &cfg,
        );
        assert!(input.groups.is_empty());
    }

    #[test]
    fn a_dual_stack_service_is_one_group_and_needs_a_node_on_both_subnets() {
        let cfg = with_l2("{}");
        let nodes = vec![
            node("n1").subnets("192.0.2.11/24,2001:db8::11/64"),
            node("n2").subnets("192.0.2.12/24"),
        ];
        let input = plan(
            vec![svc("a").status(&["2001:db8::1", "192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("n2")])],
            nodes,
            &cfg,
        );
        let g = only(&input);
        assert_eq!(g.ips.len(), 2);
        assert_eq!(g.key.0, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(nodes_of(g), ["n1"]);
    }

    #[test]
    fn services_sharing_a_vip_are_one_group() {
        let cfg = with_l2("{}");
        let input = plan(
            vec![
                svc("a").status(&["192.0.2.1"]),
                svc("b").status(&["192.0.2.1"]),
                svc("c").status(&["192.0.2.2"]),
            ],
            vec![
                slice("a", &[Ep::Ready("n1")]),
                slice("c", &[Ep::Ready("n1")]),
            ],
            two_nodes(),
            &cfg,
        );
        assert_eq!(input.groups.len(), 2);
        let shared = &input.groups[0];
        assert_eq!(shared.services.len(), 2);
        assert_eq!(nodes_of(shared), ["n1", "n2"]);
    }

    #[test]
    fn no_advertisement_for_the_pool_means_not_announced_with_the_pool_named() {
        let cfg = with_l2("{ipAddressPools: [b]}");
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("n1")])],
            two_nodes(),
            &cfg,
        );
        let g = only(&input);
        assert!(g.l2_nodes.is_empty());
        let reason = g.l2_not_announced.clone().unwrap();
        assert_eq!(reason.to_string(), "no L2Advertisement selects pool a");
        assert_eq!(
            g.bgp_not_announced.clone().unwrap().to_string(),
            "no BGPAdvertisement selects pool a"
        );
    }

    #[test]
    fn an_ip_outside_every_pool_is_not_announced() {
        let cfg = with_l2("{}");
        let input = plan(
            vec![svc("a").status(&["203.0.113.1"])],
            vec![slice("a", &[Ep::Ready("n1")])],
            two_nodes(),
            &cfg,
        );
        let g = only(&input);
        assert_eq!(
            g.l2_not_announced.clone().unwrap().to_string(),
            "203.0.113.1 is in no configured pool"
        );
        assert_eq!(g.pool, "");
    }

    #[test]
    fn service_selectors_must_match_the_service() {
        let cfg = with_l2("{serviceSelectors: [{matchLabels: {tier: edge}}]}");
        let slices = || vec![slice("a", &[Ep::Ready("n1")])];
        let plain = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            slices(),
            two_nodes(),
            &cfg,
        );
        assert!(matches!(
            only(&plain).l2_not_announced,
            Some(NotAnnounced::ServiceNotSelected { .. })
        ));
        let edge = plan(
            vec![svc("a").label("tier", "edge").status(&["192.0.2.1"])],
            slices(),
            two_nodes(),
            &cfg,
        );
        assert_eq!(nodes_of(only(&edge)), ["n1", "n2"]);
    }

    #[test]
    fn node_selectors_limit_the_nodes_and_interfaces_come_along() {
        let cfg = with_l2("{nodeSelectors: [{matchLabels: {edge: 'true'}}], interfaces: [eth1]}");
        let nodes = vec![
            node("n1").label("edge", "true").subnets("192.0.2.11/24"),
            node("n2").subnets("192.0.2.12/24"),
        ];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("n2")])],
            nodes,
            &cfg,
        );
        let g = only(&input);
        assert_eq!(nodes_of(g), ["n1"]);
        assert_eq!(
            g.l2_interfaces["n1"],
            Interfaces::Only(["eth1".to_string()].into())
        );
    }

    #[test]
    fn excluded_unreachable_and_subnetless_nodes_are_not_eligible() {
        let cfg = with_l2("{}");
        let nodes = vec![
            node("excluded")
                .label(EXCLUDE_LABEL, "")
                .subnets("192.0.2.11/24"),
            node("down").network_unavailable().subnets("192.0.2.12/24"),
            node("elsewhere").subnets("198.51.100.13/24"),
            node("unpublished"),
            node("ok").subnets("192.0.2.14/24"),
            node("cordoned").cordoned().subnets("192.0.2.15/24"),
            node("tainted").out_of_service().subnets("192.0.2.16/24"),
        ];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("ok")])],
            nodes,
            &cfg,
        );
        assert_eq!(nodes_of(only(&input)), ["ok"]);
    }

    #[test]
    fn a_node_that_cannot_forward_is_chosen_only_while_no_node_can() {
        let cfg = with_l2("{}");
        let no_ipvs = "no IPVS";
        let mixed = vec![
            node("direct").subnets("192.0.2.11/24"),
            node("no-ipvs")
                .subnets("192.0.2.12/24")
                .cannot_forward(no_ipvs),
            // No agent: it says nothing about forwarding and does not count.
            node("bare"),
        ];
        assert!(!nothing_forwards(&mixed));
        let serving = || vec![slice("a", &[Ep::Ready("direct"), Ep::Ready("no-ipvs")])];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            serving(),
            mixed,
            &cfg,
        );
        assert_eq!(nodes_of(only(&input)), ["direct"]);

        let only_no_ipvs = vec![
            node("direct")
                .subnets("192.0.2.11/24")
                .cannot_forward(no_ipvs),
            node("no-ipvs")
                .subnets("192.0.2.12/24")
                .cannot_forward(no_ipvs),
            node("bare"),
        ];
        assert!(nothing_forwards(&only_no_ipvs));
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            serving(),
            only_no_ipvs,
            &cfg,
        );
        assert_eq!(nodes_of(only(&input)), ["direct", "no-ipvs"]);
        assert!(
            !nothing_forwards(&[node("bare")]),
            "without agents, nothing is known"
        );
    }

    #[test]
    fn with_no_eligible_node_the_reason_counts_each_rule() {
        let cfg = with_l2("{}");
        let nodes = vec![
            node("excluded")
                .label(EXCLUDE_LABEL, "")
                .subnets("192.0.2.11/24"),
            node("elsewhere").subnets("198.51.100.13/24"),
        ];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("elsewhere")])],
            nodes,
            &cfg,
        );
        assert_eq!(
            only(&input).l2_not_announced.clone().unwrap().to_string(),
            "no eligible node (1 excluded by label, 1 without a subnet containing the VIP)"
        );
        // BGP has no subnet rule.
        assert_eq!(
            only(&input).bgp_not_announced.clone().unwrap().to_string(),
            "no BGPAdvertisement selects pool a"
        );
    }

    #[test]
    fn local_services_are_announced_only_from_nodes_with_a_ready_endpoint() {
        let cfg = with_l2("{}");
        let input = plan(
            vec![svc("a").local("web").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("n2"), Ep::NotReady("n1")])],
            two_nodes(),
            &cfg,
        );
        let g = only(&input);
        assert!(g.traffic_local);
        assert_eq!(nodes_of(g), ["n2"]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let cfg = with_l2("{}");
        let svcs = || vec![svc("a").local("web").status(&["192.0.2.1"])];
        let draining = plan(
            svcs(),
            vec![slice("a", &[Ep::Terminating("n1"), Ep::NotReady("n2")])],
            two_nodes(),
            &cfg,
        );
        assert_eq!(nodes_of(only(&draining)), ["n1"]);
        let rolling = plan(
            svcs(),
            vec![slice("a", &[Ep::Terminating("n1"), Ep::Ready("n2")])],
            two_nodes(),
            &cfg,
        );
        assert_eq!(nodes_of(only(&rolling)), ["n2"]);
    }

    #[test]
    fn a_missing_ready_condition_counts_as_ready() {
        let cfg = with_l2("{}");
        let input = plan(
            vec![svc("a").local("web").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Bare("n1")])],
            two_nodes(),
            &cfg,
        );
        assert_eq!(nodes_of(only(&input)), ["n1"]);
    }

    #[test]
    fn without_any_serving_endpoint_nothing_is_announced_cluster_or_local() {
        let cfg = with_l2("{}");
        for service in [svc("a"), svc("a").local("web")] {
            let input = plan(
                vec![service.status(&["192.0.2.1"])],
                vec![slice("a", &[Ep::NotReady("n1")])],
                two_nodes(),
                &cfg,
            );
            let g = only(&input);
            assert!(g.l2_nodes.is_empty());
            assert_eq!(g.l2_not_announced, Some(NotAnnounced::NoServingEndpoint));
        }
    }

    #[test]
    fn endpoint_slices_of_other_services_do_not_count() {
        let cfg = with_l2("{}");
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("b", &[Ep::Ready("n1")])],
            two_nodes(),
            &cfg,
        );
        assert_eq!(
            only(&input).l2_not_announced,
            Some(NotAnnounced::NoServingEndpoint)
        );
    }

    #[test]
    fn bgp_eligibility_uses_bgp_advertisements_and_ignores_subnets() {
        let cfg = config(&format!(
            "{POOLS}\n---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: bgp, namespace: metallb-system}}\nspec: {{nodeSelectors: [{{matchLabels: {{rack: r1}}}}]}}"
        ));
        let nodes = vec![node("n1").label("rack", "r1"), node("n2")];
        let input = plan(
            vec![svc("a").status(&["192.0.2.1"])],
            vec![slice("a", &[Ep::Ready("n2")])],
            nodes,
            &cfg,
        );
        let g = only(&input);
        assert_eq!(g.bgp_nodes, BTreeSet::from(["n1".to_string()]));
        assert!(g.l2_nodes.is_empty());
    }

    #[test]
    fn subnet_annotations_are_parsed_leniently() {
        let (nets, bad) = parse_subnets("192.0.2.11/24, bogus,,2001:db8::11/64,198.51.100.1");
        assert_eq!(
            nets,
            vec![
                "192.0.2.11/24".parse::<IpNet>().unwrap(),
                "2001:db8::11/64".parse().unwrap()
            ]
        );
        assert_eq!(bad, ["bogus", "198.51.100.1"]);
        let input = plan(
            vec![],
            vec![],
            vec![node("n1").subnets("bogus,192.0.2.11/24")],
            &with_l2("{}"),
        );
        assert_eq!(input.nodes[0].subnets.len(), 1);
        assert_eq!(input.warnings.len(), 1);
        assert!(input.warnings[0].contains("n1"));
    }

    mod merging {
        use super::super::{Endpoints, Holder, merge_shared};
        use crate::alloc::ServiceKey;
        use proptest::prelude::*;
        use std::collections::BTreeSet;
        use std::net::{IpAddr, Ipv4Addr};

        fn holder(i: usize, ips: &BTreeSet<u8>) -> Holder {
            Holder {
                key: ServiceKey {
                    namespace: "ns".into(),
                    name: format!("s{i:03}"),
                },
                ips: ips
                    .iter()
                    .map(|o| IpAddr::V4(Ipv4Addr::new(192, 0, 2, *o)))
                    .collect(),
                labels: Default::default(),
                traffic_local: false,
                endpoints: Endpoints::default(),
                announced_by: None,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Two Services are in one group exactly when a chain of shared IPs links them; groups come sorted by
            /// their lowest IP and members by name.
            #[test]
            fn groups_are_the_components_of_shared_ips(
                sets in prop::collection::vec(prop::collection::btree_set(0u8..24, 1..3), 0..40),
            ) {
                let groups = merge_shared(sets.iter().enumerate().map(|(i, s)| holder(i, s)).collect());
                // The reference: grow each component to its closure, comparing every pair.
                let n = sets.len();
                let mut component: Vec<usize> = (0..n).collect();
                let mut changed = true;
                while changed {
                    changed = false;
                    for a in 0..n {
                        for b in 0..n {
                            if !sets[a].is_disjoint(&sets[b]) && component[b] > component[a] {
                                component[b] = component[a];
                                changed = true;
                            }
                        }
                    }
                }
                let name = |i: usize| format!("s{i:03}");
                let mut expected: Vec<Vec<String>> = Vec::new();
                for c in component.iter().copied().collect::<BTreeSet<_>>() {
                    expected.push((0..n).filter(|i| component[*i] == c).map(name).collect());
                }
                let lowest = |names: &Vec<String>| {
                    names.iter().map(|m| *sets[m[1..].parse::<usize>().unwrap()].first().unwrap()).min()
                };
                expected.sort_by_key(lowest);
                let got: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| g.iter().map(|h| h.key.name.clone()).collect())
                    .collect();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
