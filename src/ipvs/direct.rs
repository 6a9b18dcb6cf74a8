//! The `direct` data plane's wanted state: which IPVS virtual services and real servers this node must hold for
//! the VIPs IronLB allocated, and which of them need source NAT. Pure: Services, EndpointSlices, the node name and
//! the pools in; a [`DirectPlan`] out.
//!
//! - One virtual service per ingress IP (`ipMode: Proxy`, inside one of IronLB's pools) and Service port, for TCP,
//!   UDP and SCTP, IPv4 and IPv6, each VIP taking endpoints of its own family.
//! - Real servers are the ready endpoints (serving-and-terminating ones only when none is ready, as for the
//!   announcement eligibility in `plan`), forwarded with masquerading (`-m`), weight 1.
//! - `externalTrafficPolicy: Local`: only this node's endpoints, and no source NAT, so the pod sees the client's
//!   address. `Cluster`: every endpoint, and the connection is source-NATed to the node ([`netfilter_ruleset`]), as
//!   kube-proxy does for external traffic, so a pod on another node answers through this node.
//! - Scheduler from `ironlb.io/ipvs-scheduler` (default `rr`); persistence from
//!   `ironlb.io/ipvs-persistence-timeout`, else from `sessionAffinity: ClientIP`. An invalid annotation never stops
//!   the Service: it becomes a [`Problem`] naming the Service, and the default is used.
//!
//! Virtual services are keyed by VIP address, not by fwmark, so `ipvsadm -Ln` shows each VIP:port as it is. Where
//! kube-proxy runs in IPVS mode, its cleanup deletes virtual services it did not create unless their address is in
//! `ipvs.excludeCIDRs`; the agent checks that (see `agent::dataplane`) and warns, naming the missing pools.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;

use crate::k8s::index::{Changes, ObjectIndex, ObjectKey};

use super::codec::{DestId, DestSpec, Protocol, ServiceId, ServiceSpec};
use super::verify::{
    DEFAULT_AFFINITY_SECONDS, DataPlaneState, SERVICE_NAME_LABEL, candidates, protocol,
    real_servers,
};

/// Service annotation: the IPVS scheduler of the Service's virtual services.
pub const SCHEDULER_ANNOTATION: &str = "ironlb.io/ipvs-scheduler";
/// Service annotation: IPVS persistence in seconds (`ipvsadm -p`).
pub const PERSISTENCE_ANNOTATION: &str = "ironlb.io/ipvs-persistence-timeout";
/// The scheduler used when the annotation is absent or invalid.
pub const DEFAULT_SCHEDULER: &str = "rr";
/// The schedulers of the mainline kernel (`net/netfilter/ipvs/ip_vs_*.c`).
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];
/// The longest persistence accepted: a day, the same bound as the Service's ClientIP affinity timeout.
pub const MAX_PERSISTENCE_SECONDS: u32 = 86_400;
/// The nftables table that holds the source NAT of `Cluster` VIPs.
pub const NFT_TABLE: &str = "ironlb";

/// A Service, by name, for messages, metric labels and Events.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl ServiceRef {
    pub fn of(svc: &Service) -> Self {
        Self {
            namespace: svc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: svc.metadata.name.clone().unwrap_or_default(),
            uid: svc.metadata.uid.clone(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something wrong with one Service's data-plane settings; the Service is still programmed, with defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub service: ServiceRef,
    /// An Event reason.
    pub reason: &'static str,
    pub message: String,
}

/// What this node must hold in the direct data plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectPlan {
    /// The IPVS table, and the VIPs to bind on the direct-mode device.
    pub plane: DataPlaneState,
    /// The Service each virtual service belongs to.
    pub owners: BTreeMap<ServiceId, ServiceRef>,
    /// Virtual services of `Cluster` Services, whose connections are source-NATed.
    pub snat: BTreeSet<ServiceId>,
    /// Virtual services that accept connections only from these sources (`loadBalancerSourceRanges`).
    pub firewall: BTreeMap<ServiceId, Vec<IpNet>>,
    pub problems: Vec<Problem>,
}

/// Why a Service's IPVS annotation cannot be used; the message names the annotation and the fallback.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// [`SCHEDULER_ANNOTATION`] holds `value` (trimmed), which is not one of [`SCHEDULERS`].
    #[error(
        "{SCHEDULER_ANNOTATION}: {value:?} is not an IPVS scheduler (one of {}); using {DEFAULT_SCHEDULER}",
        SCHEDULERS.join(", ")
    )]
    UnknownScheduler { value: String },
}

/// The scheduler named by the annotation, or why it cannot be used.
pub fn scheduler(svc: &Service) -> Result<String, AnnotationError> {
    let Some(value) = annotation(svc, SCHEDULER_ANNOTATION) else {
        return Ok(DEFAULT_SCHEDULER.into());
    };
    let value = value.trim();
    if SCHEDULERS.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(AnnotationError::UnknownScheduler {
            value: value.to_string(),
        })
    }
}

/// The persistence timeout: the annotation's, else the ClientIP affinity's, else none; or why the annotation
/// cannot be used (then the affinity's, or none, applies).
pub fn persistence(svc: &Service) -> (Option<u32>, Option<String>) {
    let spec = svc.spec.as_ref();
    let affinity = spec
        .filter(|s| s.session_affinity.as_deref() == Some("ClientIP"))
        .map(|s| {
            s.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
    let Some(value) = annotation(svc, PERSISTENCE_ANNOTATION) else {
        return (affinity, None);
    };
    match value.trim().parse::<u32>() {
        Ok(0) => (None, None),
        Ok(t) if t <= MAX_PERSISTENCE_SECONDS => (Some(t), None),
        _ => (
            affinity,
            Some(format!(
                "{PERSISTENCE_ANNOTATION}: {value:?} is not a number of seconds from 0 to \
                 {MAX_PERSISTENCE_SECONDS}; using {}",
                affinity.map_or_else(|| "no persistence".into(), |t| format!("{t} s"))
            )),
        ),
    }
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The ingress IPs IronLB programs: `ipMode: Proxy` (kube-proxy leaves those alone) and inside IronLB's pools.
fn proxy_mode_ips(svc: &Service, owned: &dyn Fn(&IpAddr) -> bool) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() == Some("Proxy"))
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .filter(|ip| owned(ip))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// `spec.loadBalancerSourceRanges` read as kube-proxy reads them: each entry trimmed (validation lets padding
/// through), and the entries that are not CIDRs returned apart, to be reported and ignored.
fn source_ranges(values: &[String]) -> (Vec<IpNet>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for value in values {
        match value.trim().parse::<IpNet>() {
            Ok(net) => good.push(net.trunc()),
            Err(_) => bad.push(value.clone()),
        }
    }
    good.sort();
    good.dedup();
    (good, bad)
}

/// The ranges that restrict virtual service `id`: those of its address's family, none when there is none of that
/// family or one of them is a /0 (kube-proxy's reading: both mean any source).
fn sources_for(ranges: &[IpNet], id: &ServiceId) -> Vec<IpNet> {
    let ServiceId::Addr { addr, .. } = id else {
        return Vec::new();
    };
    let family: Vec<IpNet> = ranges
        .iter()
        .filter(|r| r.addr().is_ipv4() == addr.is_ipv4())
        .copied()
        .collect();
    if family.iter().any(|r| r.prefix_len() == 0) {
        return Vec::new();
    }
    family
}

/// One Service's part of the plan, computed from the Service and its own EndpointSlices alone. The whole plan is
/// the Services' shares in order, where the first Service to claim a virtual service keeps it.
#[derive(Clone, Debug, PartialEq)]
struct Share {
    who: ServiceRef,
    /// The VIPs to bind (every proxy-mode ingress IP in the pools, with or without ports).
    vips: Vec<IpAddr>,
    /// Whether the Service is `externalTrafficPolicy: Local` (no source NAT).
    local: bool,
    /// `spec.loadBalancerSourceRanges` as kube-proxy reads them: trimmed, the unparsable left out (each a
    /// [`Problem`]), and a range of prefix length 0 meaning no restriction for its family.
    sources: Vec<IpNet>,
    /// Problems of the Service as a whole (annotations), reported before its ports'.
    head: Vec<Problem>,
    /// Per port and VIP, in order: a virtual service, or why the port has none.
    items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
enum Item {
    Service(ServiceId, ServiceSpec, BTreeMap<DestId, DestSpec>),
    Problem(Problem),
}

impl Share {
    /// The share of `svc`, given its EndpointSlices; None when the Service is not a LoadBalancer with a
    /// proxy-mode ingress IP in the pools.
    fn of(
        svc: &Service,
        own_slices: &[&EndpointSlice],
        node: &str,
        owned: &dyn Fn(&IpAddr) -> bool,
    ) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return None;
        }
        let vips = proxy_mode_ips(svc, owned);
        if vips.is_empty() {
            return None;
        }
        let who = ServiceRef::of(svc);
        let mut head = Vec::new();
        let scheduler = scheduler(svc).unwrap_or_else(|error| {
            head.push(Problem {
                service: who.clone(),
                reason: "InvalidIPVSScheduler",
                message: error.to_string(),
            });
            DEFAULT_SCHEDULER.into()
        });
        let (persist, bad) = persistence(svc);
        if let Some(message) = bad {
            head.push(Problem {
                service: who.clone(),
                reason: "InvalidIPVSPersistence",
                message,
            });
        }
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let (sources, bad) = source_ranges(
            spec.load_balancer_source_ranges
                .as_deref()
                .unwrap_or_default(),
        );
        for value in bad {
            head.push(Problem {
                service: who.clone(),
                reason: "InvalidLoadBalancerSourceRanges",
                message: format!(
                    "spec.loadBalancerSourceRanges: {value:?} is not a CIDR; ignored, as kube-proxy ignores it"
                ),
            });
        }
        let mut items = Vec::new();
        for port in spec.ports.iter().flatten() {
            let Some(proto) = protocol(port.protocol.as_deref()) else {
                items.push(Item::Problem(Problem {
                    service: who.clone(),
                    reason: "UnsupportedProtocol",
                    message: format!(
                        "port {}: protocol {:?} has no IPVS service; only TCP, UDP and SCTP do",
                        port.port,
                        port.protocol.as_deref().unwrap_or_default()
                    ),
                }));
                continue;
            };
            let Ok(svc_port) = u16::try_from(port.port) else {
                continue;
            };
            let cands = candidates(own_slices, port.name.as_deref(), proto, local, node);
            for vip in &vips {
                let id = ServiceId::Addr {
                    protocol: proto,
                    addr: *vip,
                    port: svc_port,
                };
                let mut s = ServiceSpec::new(id, &scheduler);
                if let Some(timeout) = persist {
                    s = s.persistent(timeout);
                }
                items.push(Item::Service(id, s, real_servers(&cands, vip)));
            }
        }
        Some(Self {
            who,
            vips,
            local,
            sources,
            head,
            items,
        })
    }

    fn ids(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.items.iter().filter_map(|i| match i {
            Item::Service(id, ..) => Some(*id),
            Item::Problem(_) => None,
        })
    }

    /// The virtual service `id` as this Service wants it (its first claim of it).
    fn virtual_service(&self, id: &ServiceId) -> Option<VirtualService> {
        self.items.iter().find_map(|i| match i {
            Item::Service(sid, spec, dests) if sid == id => Some(VirtualService {
                spec: spec.clone(),
                dests: dests.clone(),
                owner: self.who.clone(),
                snat: !self.local,
                sources: sources_for(&self.sources, id),
            }),
            _ => None,
        })
    }
}

fn conflict(who: &ServiceRef, id: &ServiceId, first: &ServiceRef) -> Problem {
    let (proto, vip, port) = match id {
        ServiceId::Addr {
            protocol,
            addr,
            port,
        } => (proto_name(*protocol), addr.to_string(), *port),
        ServiceId::Fwmark { .. } => ("fwmark", String::new(), 0),
    };
    Problem {
        service: who.clone(),
        reason: "IPVSServiceConflict",
        message: format!(
            "{proto} {vip} port {port} is already programmed for {first}; not programming it for this Service"
        ),
    }
}

/// The EndpointSlices of each Service, by the Service's namespace and name.
fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let Some(name) = service_label(slice) else {
            continue;
        };
        by_service
            .entry((namespace(&slice.metadata), name))
            .or_default()
            .push(slice);
    }
    by_service
}

fn service_label(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

fn namespace(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// The direct data plane `node` must hold, computed from scratch. `owned` says whether an address is in one of
/// IronLB's pools. [`DirectIndex`] maintains the same result incrementally.
pub fn wanted<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
    owned: &dyn Fn(&IpAddr) -> bool,
) -> DirectPlan {
    // Index the slices by Service once: every Service then costs only its own slices.
    let by_service = slices_by_service(slices);
    let mut plan = DirectPlan::default();
    for svc in services {
        let key = (
            namespace(&svc.metadata),
            svc.metadata.name.as_deref().unwrap_or_default(),
        );
        let own = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        let Some(share) = Share::of(svc, own, node, owned) else {
            continue;
        };
        plan.problems.extend(share.head);
        plan.plane.bindings.extend(share.vips);
        for item in share.items {
            match item {
                Item::Problem(p) => plan.problems.push(p),
                Item::Service(id, spec, dests) => {
                    if let Some(first) = plan.owners.get(&id) {
                        plan.problems.push(conflict(&share.who, &id, first));
                        continue;
                    }
                    plan.plane.ipvs.insert(id, (spec, dests));
                    plan.owners.insert(id, share.who.clone());
                    if !share.local {
                        plan.snat.insert(id);
                    }
                    let sources = sources_for(&share.sources, &id);
                    if !sources.is_empty() {
                        plan.firewall.insert(id, sources);
                    }
                }
            }
        }
    }
    plan
}

/// One virtual service of the plan, with the Service it belongs to and whether it is source-NATed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub spec: ServiceSpec,
    pub dests: BTreeMap<DestId, DestSpec>,
    pub owner: ServiceRef,
    pub snat: bool,
    /// The sources allowed to connect; empty: any.
    pub sources: Vec<IpNet>,
}

/// What changed in the plan since the last [`DirectIndex::update`]: virtual services set (`Some`) or removed
/// (`None`), and the new set of VIP bindings when it changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub services: BTreeMap<ServiceId, Option<VirtualService>>,
    pub bindings: Option<BTreeSet<IpAddr>>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.bindings.is_none()
    }
}

/// Namespace and name.
type Key = (String, String);

/// The direct plan, maintained incrementally. Each [`update`](Self::update) takes the whole current Services and
/// EndpointSlices (as the agent's indexes hold them), finds the objects whose resourceVersion changed (one pass of
/// comparisons, no copying), recomputes the shares of the Services they belong to, and returns only the virtual
/// services that changed. An object without a resourceVersion always counts as changed. A change of node or of
/// the pools' ranges (which VIPs are IronLB's) recomputes every Service.
///
/// Invariant (tested against [`wanted`]): the plan assembled from the updates equals `wanted` of the same inputs,
/// with Services in namespace/name order (the agent's index order).
#[derive(Debug, Default)]
pub struct DirectIndex {
    node: Option<String>,
    ranges: Option<Vec<crate::config::IpRange>>,
    /// resourceVersion of each Service seen.
    services: BTreeMap<Key, Option<String>>,
    /// resourceVersion and Service name label of each EndpointSlice seen.
    slices: BTreeMap<Key, (Option<String>, Option<String>)>,
    /// Slice names per Service (namespace, Service name).
    slices_of: BTreeMap<Key, BTreeSet<String>>,
    shares: BTreeMap<Key, Share>,
    /// The Services claiming each virtual service; the first in order owns it.
    claims: BTreeMap<ServiceId, BTreeSet<Key>>,
    /// How many Services bind each VIP.
    bindings: BTreeMap<IpAddr, usize>,
}

/// Walks the sorted `seen` map and the sorted `now` list together; returns the entries added, removed or changed
/// (key, old value, position in `now`) without copying unchanged ones.
fn changes<V: Clone, N>(
    seen: &BTreeMap<Key, V>,
    now: &[(&str, &str, N)],
    same: impl Fn(&V, &N) -> bool,
) -> Vec<(Key, Option<V>, Option<usize>)> {
    let mut out = Vec::new();
    let mut old = seen.iter().peekable();
    let mut i = 0;
    loop {
        let next_new = now.get(i).map(|(ns, name, _)| (*ns, *name));
        let next_old = old
            .peek()
            .map(|((ns, name), _)| (ns.as_str(), name.as_str()));
        let order = match (next_old, next_new) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(o), Some(n)) => o.cmp(&n),
        };
        match order {
            // Gone since the last update.
            std::cmp::Ordering::Less => {
                let (k, v) = old.next().expect("peeked");
                out.push((k.clone(), Some(v.clone()), None));
            }
            // New.
            std::cmp::Ordering::Greater => {
                let (ns, name, _) = &now[i];
                out.push(((ns.to_string(), name.to_string()), None, Some(i)));
                i += 1;
            }
            std::cmp::Ordering::Equal => {
                let (k, v) = old.next().expect("peeked");
                if !same(v, &now[i].2) {
                    out.push((k.clone(), Some(v.clone()), Some(i)));
                }
                i += 1;
            }
        }
    }
    out
}

fn same_version(seen: &Option<String>, now: Option<&str>) -> bool {
    seen.is_some() && seen.as_deref() == now
}

impl DirectIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the plan up to date with the current objects; returns what changed and the problems of the
    /// Services that were recomputed (or whose conflicts changed). Finds the changed objects by comparing every
    /// resourceVersion; [`update_changed`](Self::update_changed) is the same when the caller knows them.
    pub fn update<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node: &str,
        ranges: &[crate::config::IpRange],
    ) -> (Delta, Vec<Problem>) {
        type Entry<'a, T> = (&'a str, &'a str, (Option<&'a str>, &'a T));
        /// The objects by namespace and name, sorted, the first of any duplicate kept. The agent's index iterates
        /// in this order already; sorting a sorted list is one pass.
        fn entries<'a, T: Resource>(objects: impl IntoIterator<Item = &'a T>) -> Vec<Entry<'a, T>> {
            let mut list: Vec<Entry<'a, T>> = objects
                .into_iter()
                .map(|o| {
                    let m = o.meta();
                    let name = m.name.as_deref().unwrap_or_default();
                    (namespace(m), name, (m.resource_version.as_deref(), o))
                })
                .collect();
            list.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            list.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
            list
        }
        let svc_now = entries(services);
        let slice_now = entries(slices);
        fn find<'a, T>(list: &[Entry<'a, T>], ns: &str, name: &str) -> Option<&'a T> {
            list.binary_search_by(|(n, m, _)| (*n, *m).cmp(&(ns, name)))
                .ok()
                .map(|i| list[i].2.1)
        }

        let mut touched: BTreeSet<Key> = BTreeSet::new();
        if self.scope_changed(node, ranges) {
            touched.extend(self.shares.keys().cloned());
            touched.extend(
                svc_now
                    .iter()
                    .map(|(ns, n, _)| (ns.to_string(), n.to_string())),
            );
        }
        for (key, _, new) in changes(&self.services, &svc_now, |seen, now| {
            same_version(seen, now.0)
        }) {
            self.note_service(key, new.map(|i| svc_now[i].2.1), &mut touched);
        }
        for (key, _, new) in changes(&self.slices, &slice_now, |seen, now| {
            same_version(&seen.0, now.0)
        }) {
            self.note_slice(key, new.map(|i| slice_now[i].2.1), &mut touched);
        }
        self.recompute(
            touched,
            |ns, name| find(&svc_now, ns, name),
            |ns, name| find(&slice_now, ns, name),
            node,
            ranges,
        )
    }

    /// [`update`](Self::update) for a caller that knows which objects changed: `services` and `slices` are the
    /// agent's indexes, `changed_services` and `changed_slices` what they noted since the last call. Costs in
    /// proportion to the change, not to the cluster (unless the node, the pools or `all` say everything).
    pub fn update_changed(
        &mut self,
        services: &ObjectIndex<Service>,
        slices: &ObjectIndex<EndpointSlice>,
        changed_services: &Changes,
        changed_slices: &Changes,
        node: &str,
        ranges: &[crate::config::IpRange],
    ) -> (Delta, Vec<Problem>) {
        if changed_services.all || changed_slices.all {
            return self.update(services.values(), slices.values(), node, ranges);
        }
        // The index keys by the namespace as written; this plan names an object without one "default".
        fn find<'a, T: Resource + Clone>(
            index: &'a ObjectIndex<T>,
            ns: &str,
            name: &str,
        ) -> Option<&'a T> {
            index.get(&ObjectKey::new(ns, name)).or_else(|| {
                (ns == "default")
                    .then(|| index.get(&ObjectKey::new("", name)))
                    .flatten()
            })
        }
        let key_of = |k: &ObjectKey| -> Key {
            let ns = if k.namespace.is_empty() {
                "default"
            } else {
                k.namespace.as_str()
            };
            (ns.to_string(), k.name.clone())
        };
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        if self.scope_changed(node, ranges) {
            touched.extend(self.shares.keys().cloned());
            touched.extend(services.iter().map(|(k, _)| key_of(k)));
        }
        for k in &changed_services.keys {
            let svc = services.get(k);
            let seen = self.services.get(&key_of(k));
            let unchanged = svc.is_some_and(|s| {
                seen.is_some_and(|v| same_version(v, s.metadata.resource_version.as_deref()))
            });
            if !unchanged && (svc.is_some() || seen.is_some()) {
                self.note_service(key_of(k), svc, &mut touched);
            }
        }
        for k in &changed_slices.keys {
            let slice = slices.get(k);
            let seen = self.slices.get(&key_of(k));
            let unchanged = slice.is_some_and(|s| {
                seen.is_some_and(|v| same_version(&v.0, s.metadata.resource_version.as_deref()))
            });
            if !unchanged && (slice.is_some() || seen.is_some()) {
                self.note_slice(key_of(k), slice, &mut touched);
            }
        }
        self.recompute(
            touched,
            |ns, name| find(services, ns, name),
            |ns, name| find(slices, ns, name),
            node,
            ranges,
        )
    }

    /// Takes the node and the pools' ranges; whether they differ from the last update's (then every Service must be
    /// recomputed).
    fn scope_changed(&mut self, node: &str, ranges: &[crate::config::IpRange]) -> bool {
        let changed = self.node.as_deref() != Some(node) || self.ranges.as_deref() != Some(ranges);
        if changed {
            self.node = Some(node.to_string());
            self.ranges = Some(ranges.to_vec());
        }
        changed
    }

    /// A Service added (`now` is Some), changed or removed (None): remembers its version and marks it.
    fn note_service(&mut self, key: Key, now: Option<&Service>, touched: &mut BTreeSet<Key>) {
        match now {
            Some(svc) => {
                self.services
                    .insert(key.clone(), svc.metadata.resource_version.clone());
            }
            None => {
                self.services.remove(&key);
            }
        }
        touched.insert(key);
    }

    /// An EndpointSlice added, changed or removed: moves it between Services and marks its Service before and
    /// after.
    fn note_slice(&mut self, key: Key, now: Option<&EndpointSlice>, touched: &mut BTreeSet<Key>) {
        if let Some((_, Some(svc))) = self.slices.get(&key) {
            let owner = (key.0.clone(), svc.clone());
            if let Some(set) = self.slices_of.get_mut(&owner) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.slices_of.remove(&owner);
                }
            }
            touched.insert(owner);
        }
        match now {
            Some(slice) => {
                let label = service_label(slice).map(str::to_string);
                if let Some(svc) = &label {
                    let owner = (key.0.clone(), svc.clone());
                    self.slices_of
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.1.clone());
                    touched.insert(owner);
                }
                self.slices
                    .insert(key, (slice.metadata.resource_version.clone(), label));
            }
            None => {
                self.slices.remove(&key);
            }
        }
    }

    /// Recomputes the shares of the `touched` Services from the current objects (found through `service` and
    /// `slice` by namespace and name) and returns the virtual services and bindings that changed.
    fn recompute<'a>(
        &mut self,
        touched: BTreeSet<Key>,
        service: impl Fn(&str, &str) -> Option<&'a Service>,
        slice: impl Fn(&str, &str) -> Option<&'a EndpointSlice>,
        node: &str,
        ranges: &[crate::config::IpRange],
    ) -> (Delta, Vec<Problem>) {
        if touched.is_empty() {
            return (Delta::default(), Vec::new());
        }

        // The new shares of the touched Services.
        let owned = |ip: &IpAddr| ranges.iter().any(|r| r.contains(ip));
        let mut fresh: BTreeMap<Key, Option<Share>> = BTreeMap::new();
        for key in &touched {
            let share = service(&key.0, &key.1).and_then(|svc| {
                let own: Vec<&EndpointSlice> = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|slice_name| slice(&key.0, slice_name))
                    .collect();
                Share::of(svc, &own, node, &owned)
            });
            if share.is_some() || self.shares.contains_key(key) {
                fresh.insert(key.clone(), share);
            }
        }

        // The virtual services whose owner or contents may change, as they are now.
        let mut dirty: BTreeSet<ServiceId> = BTreeSet::new();
        for (key, share) in &fresh {
            dirty.extend(self.shares.get(key).into_iter().flat_map(Share::ids));
            dirty.extend(share.iter().flat_map(Share::ids));
        }
        let before: BTreeMap<ServiceId, Option<VirtualService>> =
            dirty.iter().map(|id| (*id, self.owner_of(id))).collect();
        // The VIPs that may come or go, and whether they are bound now.
        let vips_before: BTreeMap<IpAddr, bool> = fresh
            .iter()
            .flat_map(|(key, share)| {
                let old = self.shares.get(key).map(|s| s.vips.as_slice());
                let new = share.as_ref().map(|s| s.vips.as_slice());
                old.into_iter().chain(new).flatten()
            })
            .map(|ip| (*ip, self.bindings.contains_key(ip)))
            .collect();
        for (key, share) in fresh {
            if let Some(old) = self.shares.remove(&key) {
                for id in old.ids() {
                    if let Some(c) = self.claims.get_mut(&id) {
                        c.remove(&key);
                        if c.is_empty() {
                            self.claims.remove(&id);
                        }
                    }
                }
                for vip in &old.vips {
                    if let Some(n) = self.bindings.get_mut(vip) {
                        *n -= 1;
                        if *n == 0 {
                            self.bindings.remove(vip);
                        }
                    }
                }
            }
            if let Some(share) = share {
                for id in share.ids() {
                    self.claims.entry(id).or_default().insert(key.clone());
                }
                for vip in &share.vips {
                    *self.bindings.entry(*vip).or_insert(0) += 1;
                }
                self.shares.insert(key, share);
            }
        }

        let mut delta = Delta::default();
        let mut report: BTreeSet<Key> = touched;
        for (id, old) in before {
            let new = self.owner_of(&id);
            if let Some(c) = self.claims.get(&id)
                && c.len() > 1
            {
                report.extend(c.iter().cloned());
            }
            if new != old {
                delta.services.insert(id, new);
            }
        }
        if vips_before
            .iter()
            .any(|(ip, was)| self.bindings.contains_key(ip) != *was)
        {
            delta.bindings = Some(self.bindings.keys().copied().collect());
        }
        let problems = report.iter().flat_map(|k| self.problems_of(k)).collect();
        (delta, problems)
    }

    /// The virtual service `id` as its owner (the first Service claiming it) wants it.
    fn owner_of(&self, id: &ServiceId) -> Option<VirtualService> {
        let key = self.claims.get(id)?.first()?;
        self.shares.get(key)?.virtual_service(id)
    }

    /// One Service's problems, in the order [`wanted`] reports them.
    fn problems_of(&self, key: &Key) -> Vec<Problem> {
        let Some(share) = self.shares.get(key) else {
            return Vec::new();
        };
        let mut out = share.head.clone();
        let mut mine = BTreeSet::new();
        for item in &share.items {
            match item {
                Item::Problem(p) => out.push(p.clone()),
                Item::Service(id, ..) => {
                    let first = self.claims.get(id).and_then(|c| c.first());
                    // Another Service owns it, or this Service claims it a second time.
                    if first != Some(key) || !mine.insert(*id) {
                        let owner = first
                            .and_then(|k| self.shares.get(k))
                            .map_or(&share.who, |s| &s.who);
                        out.push(conflict(&share.who, id, owner));
                    }
                }
            }
        }
        out
    }

    /// The whole plan, assembled from the shares (for checks and `verify`; the agent works with the deltas).
    pub fn plan(&self) -> DirectPlan {
        let mut plan = DirectPlan::default();
        for (id, keys) in &self.claims {
            let Some(vs) = keys
                .first()
                .and_then(|k| self.shares.get(k))
                .and_then(|s| s.virtual_service(id))
            else {
                continue;
            };
            plan.plane.ipvs.insert(*id, (vs.spec, vs.dests));
            plan.owners.insert(*id, vs.owner);
            if vs.snat {
                plan.snat.insert(*id);
            }
            if !vs.sources.is_empty() {
                plan.firewall.insert(*id, vs.sources);
            }
        }
        plan.plane.bindings = self.bindings.keys().copied().collect();
        plan.problems = self
            .shares
            .keys()
            .flat_map(|k| self.problems_of(k))
            .collect();
        plan
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Why writing the [`netfilter_ruleset`] to the kernel failed (the agent runs `nft -f -` with it).
#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    /// Writing `1` to `/proc/sys/net/ipv4/vs/conntrack` failed.
    #[error("setting net.ipv4.vs.conntrack=1: {0}")]
    Conntrack(#[source] std::io::Error),
    /// `nft` could not be started.
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// The script could not be written to `nft`'s standard input.
    #[error("writing to nft: {0}")]
    Write(#[source] std::io::Error),
    /// Waiting for `nft` to finish failed.
    #[error("running nft: {0}")]
    Wait(#[source] std::io::Error),
    /// `nft` rejected the script: its exit status and its standard error (trimmed).
    #[error("nft failed: {stderr}")]
    Rejected {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The nftables script (for `nft -f -`) that replaces IronLB's table atomically.
///
/// - Source NAT: connections whose original destination is one of `snat`'s VIP:port/protocol are masqueraded on
///   their way to the real server, after IPVS rewrote the destination. It needs IPVS connection tracking
///   (`net.ipv4.vs.conntrack=1`) so that netfilter sees those connections.
/// - Source ranges: a packet to one of `firewall`'s VIP:port/protocol from a source outside its ranges is dropped
///   on the input hook, at filter priority, before IPVS (which sits after it, at priority 98) sees it.
///
/// With nothing to NAT or filter, the table is removed.
pub fn netfilter_ruleset(
    snat: &BTreeSet<ServiceId>,
    firewall: &BTreeMap<ServiceId, Vec<IpNet>>,
) -> String {
    // Creating the table first makes the delete valid when it does not exist yet; both run in one transaction.
    let mut out = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    let family = |addr: &IpAddr| if addr.is_ipv4() { "ip" } else { "ip6" };
    let nat: Vec<String> = snat
        .iter()
        .filter_map(|id| match id {
            ServiceId::Addr {
                protocol,
                addr,
                port,
            } => {
                // One rule per VIP:port: `ct original proto-dst` has a type only next to an l4proto match.
                Some(format!(
                    "    meta l4proto {} ct original {} daddr {addr} ct original proto-dst {port} masquerade\n",
                    proto_name(*protocol),
                    family(addr)
                ))
            }
            ServiceId::Fwmark { .. } => None,
        })
        .collect();
    let filter: Vec<String> = firewall
        .iter()
        .filter_map(|(id, ranges)| match id {
            ServiceId::Addr {
                protocol,
                addr,
                port,
            } if !ranges.is_empty() => {
                let allowed: Vec<String> = ranges.iter().map(ToString::to_string).collect();
                Some(format!(
                    "    meta l4proto {} {f} daddr {addr} th dport {port} {f} saddr != {{ {} }} drop\n",
                    proto_name(*protocol),
                    allowed.join(", "),
                    f = family(addr),
                ))
            }
            _ => None,
        })
        .collect();
    if nat.is_empty() && filter.is_empty() {
        return out;
    }
    out.push_str(&format!("table inet {NFT_TABLE} {{\n"));
    if !filter.is_empty() {
        out.push_str(
            "  chain input {\n    type filter hook input priority filter; policy accept;\n",
        );
        out.extend(filter);
        out.push_str("  }\n");
    }
    if !nat.is_empty() {
        out.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
        out.extend(nat);
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// Why kube-proxy's `config.conf` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KubeProxyConfigError {
    #[error("config.conf is not YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("ipvs.excludeCIDRs: {value:?} is not a CIDR")]
    ExcludeCidr { value: String },
}

/// What kube-proxy's configuration (`config.conf` of the `kube-system/kube-proxy` ConfigMap) means for direct mode:
/// `Ok(None)` when kube-proxy does not run in IPVS mode (its cleanup leaves foreign IPVS services alone), else the
/// pool ranges not inside any of its `ipvs.excludeCIDRs`, whose virtual services its cleanup would delete.
pub fn kube_proxy_gaps(
    config_conf: &str,
    ranges: &[crate::config::IpRange],
) -> Result<Option<Vec<crate::config::IpRange>>, KubeProxyConfigError> {
    let conf: serde_yaml::Value =
        serde_yaml::from_str(config_conf).map_err(KubeProxyConfigError::Yaml)?;
    let mode = conf.get("mode").and_then(|m| m.as_str()).unwrap_or("");
    if !mode.eq_ignore_ascii_case("ipvs") {
        return Ok(None);
    }
    let mut excluded = Vec::new();
    for cidr in conf
        .get("ipvs")
        .and_then(|i| i.get("excludeCIDRs"))
        .and_then(|e| e.as_sequence())
        .into_iter()
        .flatten()
    {
        let text = cidr.as_str().unwrap_or_default();
        let net: ipnet::IpNet =
            text.trim()
                .parse()
                .map_err(|_| KubeProxyConfigError::ExcludeCidr {
                    value: text.to_string(),
                })?;
        excluded.push(net);
    }
    Ok(Some(
        ranges
            .iter()
            .filter(|r| {
                !excluded
                    .iter()
                    .any(|n| n.contains(&r.start()) && n.contains(&r.end()))
            })
            .copied()
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::test_fixtures::{ep, slice};
    use serde_json::{Value, json};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn in_pool(ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => v4.octets()[..3] == [192, 0, 2],
            IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0xdb8],
        }
    }

    fn svc(name: &str, ips: &[&str], ports: Value, extra: Value) -> Service {
        let ingress: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "Proxy"}))
            .collect();
        let mut v = json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": {}},
            "spec": {"type": "LoadBalancer", "ports": ports},
            "status": {"loadBalancer": {"ingress": ingress}}
        });
        for (k, val) in extra.as_object().unwrap() {
            if let Some(key) = k.strip_prefix("ann:") {
                v["metadata"]["annotations"][key] = val.clone();
            } else {
                v["spec"][k] = val.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn dests(plan: &DirectPlan, id: ServiceId) -> Vec<String> {
        plan.plane.ipvs[&id]
            .1
            .values()
            .map(|d| {
                format!(
                    "{} {:?} {}",
                    std::net::SocketAddr::new(d.id.addr, d.id.port),
                    d.fwd,
                    d.weight
                )
            })
            .collect()
    }

    fn web_slices() -> Vec<EndpointSlice> {
        vec![
            slice(
                "web",
                "IPv4",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                       {"name": "dns", "port": 5353, "protocol": "UDP"},
                       {"name": "sig", "port": 3868, "protocol": "SCTP"}]),
                json!([
                    ep("198.51.100.2", "n1", true),
                    ep("198.51.100.3", "n2", true),
                    ep("198.51.100.4", "n1", false)
                ]),
            ),
            slice(
                "web",
                "IPv6",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                json!([ep("2001:db8:1::2", "n2", true)]),
            ),
        ]
    }

    fn web_ports() -> Value {
        json!([{"name": "http", "port": 80, "protocol": "TCP"},
               {"name": "dns", "port": 53, "protocol": "UDP"},
               {"name": "sig", "port": 3868, "protocol": "SCTP"}])
    }

    #[test]
    fn cluster_policy_programs_every_ready_endpoint_with_snat() {
        let services = [svc(
            "web",
            &["192.0.2.10", "2001:db8::10"],
            web_ports(),
            json!({}),
        )];
        let plan = wanted(&services, &web_slices(), "n1", &in_pool);
        let http = ServiceId::tcp(ip("192.0.2.10"), 80);
        assert_eq!(plan.plane.ipvs[&http].0, ServiceSpec::new(http, "rr"));
        assert_eq!(
            dests(&plan, http),
            ["198.51.100.2:8080 Masq 1", "198.51.100.3:8080 Masq 1"]
        );
        assert_eq!(
            dests(&plan, ServiceId::udp(ip("192.0.2.10"), 53)),
            ["198.51.100.2:5353 Masq 1", "198.51.100.3:5353 Masq 1"]
        );
        let sctp = ServiceId::Addr {
            protocol: Protocol::Sctp,
            addr: ip("192.0.2.10"),
            port: 3868,
        };
        assert_eq!(
            dests(&plan, sctp),
            ["198.51.100.2:3868 Masq 1", "198.51.100.3:3868 Masq 1"]
        );
        let v6 = ServiceId::tcp(ip("2001:db8::10"), 80);
        assert_eq!(dests(&plan, v6), ["[2001:db8:1::2]:8080 Masq 1"]);
        // The IPv6 VIP has no UDP endpoints of its family: the service exists, empty.
        assert!(dests(&plan, ServiceId::udp(ip("2001:db8::10"), 53)).is_empty());
        assert_eq!(plan.plane.ipvs.len(), 6);
        assert_eq!(plan.snat.len(), 6);
        assert_eq!(plan.owners[&http].to_string(), "shop/web");
        assert_eq!(
            plan.plane.bindings,
            BTreeSet::from([ip("192.0.2.10"), ip("2001:db8::10")])
        );
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn local_policy_takes_this_nodes_endpoints_without_snat() {
        let services = [svc(
            "web",
            &["192.0.2.10"],
            web_ports(),
            json!({"externalTrafficPolicy": "Local"}),
        )];
        let http = ServiceId::tcp(ip("192.0.2.10"), 80);
        let n1 = wanted(&services, &web_slices(), "n1", &in_pool);
        assert_eq!(dests(&n1, http), ["198.51.100.2:8080 Masq 1"]);
        assert!(n1.snat.is_empty());
        let n3 = wanted(&services, &web_slices(), "n3", &in_pool);
        assert!(dests(&n3, http).is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let services = [svc(
            "web",
            &["192.0.2.10"],
            json!([{"port": 80}]),
            json!({}),
        )];
        let term = json!({"addresses": ["198.51.100.5"], "nodeName": "n1",
            "conditions": {"ready": false, "serving": true, "terminating": true}});
        let only = [slice(
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([term.clone()]),
        )];
        let http = ServiceId::tcp(ip("192.0.2.10"), 80);
        assert_eq!(
            dests(&wanted(&services, &only, "n1", &in_pool), http),
            ["198.51.100.5:8080 Masq 1"]
        );
        let both = [slice(
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([term, ep("198.51.100.2", "n2", true)]),
        )];
        assert_eq!(
            dests(&wanted(&services, &both, "n1", &in_pool), http),
            ["198.51.100.2:8080 Masq 1"]
        );
    }

    #[test]
    fn annotations_set_scheduler_and_persistence() {
        let services = [
            svc(
                "a",
                &["192.0.2.1"],
                json!([{"port": 80}]),
                json!({"ann:ironlb.io/ipvs-scheduler": "wlc", "ann:ironlb.io/ipvs-persistence-timeout": "300"}),
            ),
            svc(
                "b",
                &["192.0.2.2"],
                json!([{"port": 80}]),
                json!({"sessionAffinity": "ClientIP"}),
            ),
            svc(
                "c",
                &["192.0.2.3"],
                json!([{"port": 80}]),
                json!({"sessionAffinity": "ClientIP", "ann:ironlb.io/ipvs-persistence-timeout": "0"}),
            ),
        ];
        let plan = wanted(&services, &[], "n1", &in_pool);
        let a = ServiceId::tcp(ip("192.0.2.1"), 80);
        let b = ServiceId::tcp(ip("192.0.2.2"), 80);
        let c = ServiceId::tcp(ip("192.0.2.3"), 80);
        assert_eq!(
            plan.plane.ipvs[&a].0,
            ServiceSpec::new(a, "wlc").persistent(300)
        );
        assert_eq!(
            plan.plane.ipvs[&b].0,
            ServiceSpec::new(b, "rr").persistent(DEFAULT_AFFINITY_SECONDS)
        );
        assert_eq!(plan.plane.ipvs[&c].0, ServiceSpec::new(c, "rr"));
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn invalid_annotations_fall_back_and_name_the_service() {
        let services = [svc(
            "bad",
            &["192.0.2.1"],
            json!([{"port": 80}]),
            json!({"ann:ironlb.io/ipvs-scheduler": "fastest", "ann:ironlb.io/ipvs-persistence-timeout": "-5",
                   "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        )];
        let plan = wanted(&services, &[], "n1", &in_pool);
        let id = ServiceId::tcp(ip("192.0.2.1"), 80);
        assert_eq!(
            plan.plane.ipvs[&id].0,
            ServiceSpec::new(id, "rr").persistent(60)
        );
        let reasons: Vec<(&str, String)> = plan
            .problems
            .iter()
            .map(|p| (p.reason, p.service.to_string()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("InvalidIPVSScheduler", "shop/bad".to_string()),
                ("InvalidIPVSPersistence", "shop/bad".to_string())
            ]
        );
        assert_eq!(
            scheduler(&services[0]),
            Err(AnnotationError::UnknownScheduler {
                value: "fastest".into()
            })
        );
        assert_eq!(
            plan.problems[0].message,
            format!(
                "ironlb.io/ipvs-scheduler: \"fastest\" is not an IPVS scheduler (one of {}); using rr",
                SCHEDULERS.join(", ")
            )
        );
        assert!(plan.problems[1].message.contains("using 60 s"));
        for too_long in ["86401", "many", "4294967296"] {
            let s = svc(
                "x",
                &["192.0.2.1"],
                json!([]),
                json!({"ann:ironlb.io/ipvs-persistence-timeout": too_long}),
            );
            assert!(persistence(&s).1.is_some(), "{too_long}");
        }
        for name in SCHEDULERS {
            let s = svc(
                "x",
                &["192.0.2.1"],
                json!([]),
                json!({"ann:ironlb.io/ipvs-scheduler": name}),
            );
            assert_eq!(scheduler(&s).as_deref(), Ok(*name));
        }
        let padded = svc(
            "x",
            &["192.0.2.1"],
            json!([]),
            json!({"ann:ironlb.io/ipvs-scheduler": " RR "}),
        );
        assert_eq!(
            scheduler(&padded),
            Err(AnnotationError::UnknownScheduler { value: "RR".into() })
        );
    }

    #[test]
    fn only_proxy_mode_ips_in_our_pools_are_programmed() {
        let mut vip_mode = svc("vip", &[], json!([{"port": 80}]), json!({}));
        vip_mode.status = serde_json::from_value(
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.5"}, {"ip": "192.0.2.6", "ipMode": "VIP"}]}}),
        )
        .unwrap();
        let services = [
            vip_mode,
            svc(
                "foreign",
                &["203.0.113.9"],
                json!([{"port": 80}]),
                json!({}),
            ),
            svc(
                "clusterip",
                &["192.0.2.7"],
                json!([{"port": 80}]),
                json!({"type": "ClusterIP"}),
            ),
            svc("pending", &[], json!([{"port": 80}]), json!({})),
        ];
        let plan = wanted(&services, &[], "n1", &in_pool);
        assert_eq!(plan, DirectPlan::default());
    }

    #[test]
    fn a_second_service_on_the_same_vip_port_is_a_problem_not_a_takeover() {
        let services = [
            svc("a", &["192.0.2.1"], json!([{"port": 80}]), json!({})),
            svc(
                "b",
                &["192.0.2.1"],
                json!([{"port": 80}, {"port": 443}, {"port": 9, "protocol": "ICMP"}]),
                json!({}),
            ),
        ];
        let plan = wanted(&services, &[], "n1", &in_pool);
        let owners: Vec<String> = plan
            .owners
            .iter()
            .map(|(id, s)| format!("{id:?} {s}"))
            .collect();
        assert_eq!(owners.len(), 2);
        assert_eq!(plan.owners[&ServiceId::tcp(ip("192.0.2.1"), 80)].name, "a");
        assert_eq!(plan.owners[&ServiceId::tcp(ip("192.0.2.1"), 443)].name, "b");
        let reasons: Vec<&str> = plan.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, ["IPVSServiceConflict", "UnsupportedProtocol"]);
    }

    #[test]
    fn the_ruleset_replaces_the_table_with_source_nat_and_source_ranges() {
        let snat = BTreeSet::from([
            ServiceId::tcp(ip("192.0.2.10"), 80),
            ServiceId::udp(ip("2001:db8::10"), 53),
        ]);
        assert_eq!(
            netfilter_ruleset(&snat, &BTreeMap::new()),
            "table inet ironlb\n\
             delete table inet ironlb\n\
             table inet ironlb {\n  chain postrouting {\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   meta l4proto tcp ct original ip daddr 192.0.2.10 ct original proto-dst 80 masquerade\n\
             \x20   meta l4proto udp ct original ip6 daddr 2001:db8::10 ct original proto-dst 53 masquerade\n\
             \x20 }\n}\n"
        );
        assert_eq!(
            netfilter_ruleset(&BTreeSet::new(), &BTreeMap::new()),
            "table inet ironlb\ndelete table inet ironlb\n"
        );
        let firewall = BTreeMap::from([
            (
                ServiceId::tcp(ip("192.0.2.10"), 443),
                vec![
                    "198.51.100.0/24".parse().unwrap(),
                    "203.0.113.7/32".parse().unwrap(),
                ],
            ),
            (
                ServiceId::tcp(ip("2001:db8::10"), 443),
                vec!["2001:db8:5::/48".parse().unwrap()],
            ),
        ]);
        assert_eq!(
            netfilter_ruleset(&BTreeSet::new(), &firewall),
            "table inet ironlb\n\
             delete table inet ironlb\n\
             table inet ironlb {\n  chain input {\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   meta l4proto tcp ip daddr 192.0.2.10 th dport 443 ip saddr != { 198.51.100.0/24, 203.0.113.7/32 } drop\n\
             \x20   meta l4proto tcp ip6 daddr 2001:db8::10 th dport 443 ip6 saddr != { 2001:db8:5::/48 } drop\n\
             \x20 }\n}\n"
        );
    }

    #[test]
    fn source_ranges_are_read_as_kube_proxy_reads_them() {
        let services = [svc(
            "web",
            &["192.0.2.10", "2001:db8::10"],
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
            json!({"loadBalancerSourceRanges": [" 198.51.100.0/24", "203.0.113.9/24", "not-a-cidr"]}),
        )];
        let plan = wanted(&services, &web_slices(), "n1", &in_pool);
        let v4 = ServiceId::tcp(ip("192.0.2.10"), 80);
        // Trimmed, host bits cleared, sorted.
        assert_eq!(
            plan.firewall[&v4],
            [
                "198.51.100.0/24".parse::<IpNet>().unwrap(),
                "203.0.113.0/24".parse().unwrap()
            ]
        );
        // No IPv6 range: the IPv6 VIP takes any source, as kube-proxy's per-family reading has it.
        assert!(
            !plan
                .firewall
                .contains_key(&ServiceId::tcp(ip("2001:db8::10"), 80))
        );
        let problem = plan
            .problems
            .iter()
            .find(|p| p.reason == "InvalidLoadBalancerSourceRanges")
            .expect("the bad entry is reported");
        assert!(
            problem.message.contains("\"not-a-cidr\""),
            "{}",
            problem.message
        );
        assert_eq!(problem.service.to_string(), "shop/web");

        // A /0 of a family opens that family.
        let open = [svc(
            "web",
            &["192.0.2.10"],
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
            json!({"loadBalancerSourceRanges": ["198.51.100.0/24", "0.0.0.0/0"]}),
        )];
        assert!(
            wanted(&open, &web_slices(), "n1", &in_pool)
                .firewall
                .is_empty()
        );

        // The incremental index gives the same ranges.
        let mut index = DirectIndex::new();
        let ranges = [crate::config::IpRange::from_cidr(
            "192.0.2.0/24".parse().unwrap(),
        )];
        let slices = web_slices();
        let (delta, _) = index.update(&services, &slices, "n1", &ranges);
        assert_eq!(
            delta.services[&v4].as_ref().unwrap().sources,
            plan.firewall[&v4]
        );
        assert_eq!(index.plan().firewall, plan.firewall);
    }

    #[test]
    fn snat_errors_say_which_step_failed() {
        use std::error::Error as _;
        use std::os::unix::process::ExitStatusExt;
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let conntrack = SnatError::Conntrack(denied());
        assert_eq!(
            conntrack.to_string(),
            format!("setting net.ipv4.vs.conntrack=1: {}", denied())
        );
        assert!(conntrack.source().is_some());
        assert_eq!(
            SnatError::Spawn(denied()).to_string(),
            format!("running nft: {}", denied())
        );
        assert_eq!(
            SnatError::Write(denied()).to_string(),
            format!("writing to nft: {}", denied())
        );
        let rejected = SnatError::Rejected {
            status: std::process::ExitStatus::from_raw(1 << 8),
            stderr: "Error: syntax error".into(),
        };
        assert_eq!(rejected.to_string(), "nft failed: Error: syntax error");
        assert!(rejected.source().is_none());
    }

    #[test]
    fn kube_proxy_gaps_name_the_pools_outside_exclude_cidrs() {
        use crate::config::IpRange;
        let ranges = [
            IpRange::from_cidr("192.0.2.0/28".parse().unwrap()),
            IpRange::new(ip("198.51.100.10"), ip("198.51.100.20")).unwrap(),
            IpRange::from_cidr("2001:db8::/120".parse().unwrap()),
        ];
        let conf = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
                    ipvs:\n  strictARP: true\n  excludeCIDRs:\n  - 192.0.2.0/24\n  - 2001:db8::/64\n";
        let gaps = kube_proxy_gaps(conf, &ranges).unwrap().unwrap();
        assert_eq!(
            gaps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["198.51.100.10-198.51.100.20"]
        );
        let none = kube_proxy_gaps("mode: ipvs\n", &ranges).unwrap().unwrap();
        assert_eq!(none.len(), 3);
        assert!(matches!(
            kube_proxy_gaps("mode: iptables\n", &ranges),
            Ok(None)
        ));
        assert!(matches!(kube_proxy_gaps("mode: \"\"\n", &ranges), Ok(None)));
        let bad = kube_proxy_gaps("mode: ipvs\nipvs:\n  excludeCIDRs: [nonsense]\n", &ranges)
            .unwrap_err();
        assert!(
            matches!(&bad, KubeProxyConfigError::ExcludeCidr { value } if value == "nonsense"),
            "{bad:?}"
        );
        assert_eq!(
            bad.to_string(),
            "ipvs.excludeCIDRs: \"nonsense\" is not a CIDR"
        );
        assert!(matches!(
            kube_proxy_gaps("mode: [", &ranges),
            Err(KubeProxyConfigError::Yaml(_))
        ));
    }
}
