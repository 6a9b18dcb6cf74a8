//! The internal, validated configuration that the allocator and the planner consume.
//!
//! Nothing here knows about YAML or the metallb.io wire types; `config::validate` builds these values from them,
//! and only values that passed validation exist. Other modules rely on the invariants stated on each type.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::community::CommunityValue;
use super::selector::Selector;

/// The validated, internal configuration. Only objects without errors are here, and every cross-reference in it
/// (advertisement to pool, peer to BFD profile) points to an object that is here too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub pools: BTreeMap<String, Pool>,
    pub l2_advertisements: BTreeMap<String, L2Advertisement>,
    pub bgp_advertisements: BTreeMap<String, BgpAdvertisement>,
    pub peers: BTreeMap<String, Peer>,
    pub bfd_profiles: BTreeMap<String, BfdProfile>,
    /// Community aliases from every `Community` object, by alias name.
    pub communities: BTreeMap<String, CommunityValue>,
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An inclusive range of addresses of one family: `start <= end`, both of the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    start: IpAddr,
    end: IpAddr,
}

/// Why two addresses do not form a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{start} and {end} are of different address families")]
    MixedFamilies { start: IpAddr, end: IpAddr },
    #[error("range {start}-{end} is reversed: its start is above its end")]
    Reversed { start: IpAddr, end: IpAddr },
}

impl IpRange {
    pub fn new(start: IpAddr, end: IpAddr) -> Result<IpRange, RangeError> {
        if Family::of(&start) != Family::of(&end) {
            return Err(RangeError::MixedFamilies { start, end });
        }
        if start > end {
            return Err(RangeError::Reversed { start, end });
        }
        Ok(IpRange { start, end })
    }

    /// The range covering every address of a CIDR, network and broadcast addresses included, as MetalLB does.
    pub fn from_cidr(net: IpNet) -> IpRange {
        IpRange {
            start: net.network(),
            end: net.broadcast(),
        }
    }

    pub fn single(ip: IpAddr) -> IpRange {
        IpRange { start: ip, end: ip }
    }

    /// The shortest prefix length among the CIDRs that exactly cover this range: 24 for `192.0.2.0/24`, 28 for
    /// `192.0.2.200-192.0.2.250` (whose cover is .200/29, .208/28, .224/28, .240/29, .248/31 and .250/32).
    pub fn widest_prefix(&self) -> u8 {
        let widest = match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => ipnet::Ipv4Subnets::new(s, e, 0)
                .map(|n| n.prefix_len())
                .min(),
            (IpAddr::V6(s), IpAddr::V6(e)) => ipnet::Ipv6Subnets::new(s, e, 0)
                .map(|n| n.prefix_len())
                .min(),
            // IpRange::new refuses mixed families.
            _ => None,
        };
        widest.unwrap_or(match self.start {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        })
    }

    pub fn start(&self) -> IpAddr {
        self.start
    }

    pub fn end(&self) -> IpAddr {
        self.end
    }

    pub fn family(&self) -> Family {
        Family::of(&self.start)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family() && self.start <= *ip && *ip <= self.end
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family() == other.family() && self.start <= other.end && other.start <= self.end
    }

    /// The number of addresses in the range, saturating at `u128::MAX` for the whole IPv6 space.
    pub fn size(&self) -> u128 {
        (to_u128(self.end) - to_u128(self.start)).saturating_add(1)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// An address as an integer, for arithmetic on ranges. IPv4 addresses map to 0..2^32.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// How many n in `start..=end` have `n % 256 == r`.
fn count_mod256(start: u128, end: u128, r: u128) -> u128 {
    let upto = |x: u128| if x < r { 0 } else { (x - r) / 256 + 1 };
    upto(end) - if start == 0 { 0 } else { upto(start - 1) }
}

/// The inverse of [`to_u128`] for a given family. `n` must fit the family (below 2^32 for IPv4).
pub fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4((n as u32).into()),
        Family::V6 => IpAddr::V6(n.into()),
    }
}

/// A validated address pool (`IPAddressPool`, or an `address-pools` entry of the legacy ConfigMap).
///
/// Invariants: `ranges` is non-empty and sorted, and no two ranges overlap; no two pools of one [`Config`] overlap
/// either.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<IpRange>,
    /// `spec.autoAssign`, default true: the pool serves Services that do not name it.
    pub auto_assign: bool,
    /// `spec.avoidBuggyIPs`: never hand out addresses ending in .0 or .255 (IPv4 only).
    pub avoid_buggy_ips: bool,
    /// `spec.serviceAllocation`: which Services the pool is limited to, and its priority among pools.
    pub service_allocation: Option<ServiceAllocation>,
}

impl Pool {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn has_family(&self, family: Family) -> bool {
        self.ranges.iter().any(|r| r.family() == family)
    }

    /// The addresses of `family` the pool can hand out: its size, less the .0 and .255 addresses under
    /// `avoidBuggyIPs`. Saturates at `u128::MAX`.
    pub fn usable(&self, family: Family) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.family() == family)
            .map(|r| {
                let (start, end) = (to_u128(r.start()), to_u128(r.end()));
                let buggy = if self.avoid_buggy_ips && family == Family::V4 {
                    count_mod256(start, end, 0) + count_mod256(start, end, 255)
                } else {
                    0
                };
                r.size() - buggy
            })
            .fold(0u128, u128::saturating_add)
    }

    /// The number of addresses per family, for summaries: (IPv4, IPv6).
    pub fn size_per_family(&self) -> (u128, u128) {
        let mut v4 = 0u128;
        let mut v6 = 0u128;
        for r in &self.ranges {
            match r.family() {
                Family::V4 => v4 += r.size(),
                Family::V6 => v6 = v6.saturating_add(r.size()),
            }
        }
        (v4, v6)
    }
}

/// `IPAddressPool.spec.serviceAllocation`.
///
/// A Service is allowed when it matches every non-empty criterion: its namespace is listed in `namespaces` or its
/// namespace's labels match one of `namespace_selectors` (either suffices when both are given), and its labels match
/// one of `service_selectors`. MetalLB reads a lower `priority` as preferred; a pool without one comes after every
/// pool with one.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServiceAllocation {
    pub priority: Option<i64>,
    pub namespaces: Vec<String>,
    pub namespace_selectors: Vec<Selector>,
    pub service_selectors: Vec<Selector>,
}

/// Labels of an object, as Kubernetes stores them.
pub type Labels = BTreeMap<String, String>;

/// A validated `L2Advertisement`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2Advertisement {
    pub name: String,
    /// `spec.ipAddressPools`, as written.
    pub pool_names: Vec<String>,
    /// `spec.ipAddressPoolSelectors`, matched against pool labels.
    pub pool_selectors: Vec<Selector>,
    /// The valid pools it selects: the named ones and those the selectors match, or every pool when neither is
    /// given, as in MetalLB.
    pub pools: BTreeSet<String>,
    /// A node may announce when it matches any selector; every node may when there is none.
    pub node_selectors: Vec<Selector>,
    /// Interfaces to answer ARP/NDP on; empty means all.
    pub interfaces: Vec<String>,
    pub service_selectors: Vec<Selector>,
    /// `spec.preferredNodeSelectors`: weight and selector; owner choice prefers the nodes with the highest sum.
    pub preferred_nodes: Vec<(i32, Selector)>,
}

/// A validated `BGPAdvertisement`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpAdvertisement {
    pub name: String,
    /// Prefix length IPv4 routes are rolled up to (32: none).
    pub aggregation_length: u8,
    /// Prefix length IPv6 routes are rolled up to (128: none).
    pub aggregation_length_v6: u8,
    pub local_pref: Option<u32>,
    /// Aliases already resolved.
    pub communities: BTreeSet<CommunityValue>,
    pub pool_names: Vec<String>,
    pub pool_selectors: Vec<Selector>,
    /// As for [`L2Advertisement::pools`].
    pub pools: BTreeSet<String>,
    pub node_selectors: Vec<Selector>,
    /// Names of the peers to advertise to; empty means all.
    pub peers: Vec<String>,
    pub service_selectors: Vec<Selector>,
}

/// How the remote AS number is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteAsn {
    Fixed(u32),
    /// Any AS equal to ours (iBGP).
    Internal,
    /// Any AS other than ours (eBGP).
    External,
}

/// Where the session goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEndpoint {
    Address(IpAddr),
    /// Unnumbered BGP over this node interface.
    Interface(String),
}

/// The TCP MD5 password of a session.
#[derive(Clone, PartialEq, Eq)]
pub enum PeerPassword {
    Inline(String),
    Secret {
        name: String,
        namespace: Option<String>,
    },
}

impl fmt::Debug for PeerPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A password must not reach logs through a Debug print of the config.
        match self {
            PeerPassword::Inline(_) => f.write_str("Inline(<redacted>)"),
            PeerPassword::Secret { name, namespace } => f
                .debug_struct("Secret")
                .field("name", name)
                .field("namespace", namespace)
                .finish(),
        }
    }
}

/// A validated `BGPPeer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub my_asn: u32,
    pub remote_asn: RemoteAsn,
    pub local_asn: Option<u32>,
    pub endpoint: PeerEndpoint,
    /// 179 unless set.
    pub port: u16,
    pub source_address: Option<IpAddr>,
    pub router_id: Option<Ipv4Addr>,
    pub node_selectors: Vec<Selector>,
    pub password: Option<PeerPassword>,
    /// Effective timers, following MetalLB: a hold time alone implies a keepalive of a third of it, a keepalive
    /// alone implies a hold time of three times it, and none leaves the speaker's defaults.
    pub hold_time: Option<Duration>,
    pub keepalive_time: Option<Duration>,
    pub connect_time: Option<Duration>,
    pub ebgp_multi_hop: bool,
    pub vrf: Option<String>,
    pub bfd_profile: Option<String>,
    pub graceful_restart: bool,
    /// Both address families on this session; otherwise only the routes of its own family.
    pub dual_stack_address_family: bool,
}

/// A validated `BFDProfile`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BfdProfile {
    pub name: String,
    pub receive_interval: Option<u32>,
    pub transmit_interval: Option<u32>,
    pub detect_multiplier: Option<u32>,
    pub echo_interval: Option<u32>,
    pub echo_mode: bool,
    pub passive_mode: bool,
    pub minimum_ttl: Option<u32>,
}
