//! Validation: from the metallb.io objects (and the legacy ConfigMap) to the internal [`Config`].
//!
//! The rule that shapes this module comes from DESIGN.md: an invalid object is left out of the [`Config`] and gets
//! its own error, and every valid object is kept, so an unrelated mistake never drops a working VIP. Checks run
//! kind by kind in dependency order (BFD profiles and communities, then pools, then peers, then advertisements), and
//! each later kind only sees the objects accepted before it. Objects of one kind are taken in name order, so when two
//! conflict (duplicate names) the later name is the one rejected, on every agent alike. Pools are the exception:
//! the older pool (by creationTimestamp, then name) wins an overlap, so that adding a pool can never take the
//! addresses of one already in use, whatever the names.
//!
//! Warnings flag what is accepted but probably not what the user meant, and fields IronLB accepts for MetalLB
//! compatibility but does not act on yet. Nothing here touches the API or the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::community::CommunityValue;
use super::crd;
use super::duration;
use super::legacy;
use super::load::Sources;
use super::model::{
    BfdProfile, BgpAdvertisement, Config, IpRange, L2Advertisement, Labels, Peer, PeerEndpoint,
    PeerPassword, Pool, RemoteAsn, ServiceAllocation, to_u128,
};
use super::selector::Selector;

/// One finding about one object, shown as `Kind/name: field: message`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub kind: String,
    pub name: String,
    /// The path of the offending field, such as `spec.addresses[1]`; empty when the whole object is meant.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(kind: &str, name: &str, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            kind: kind.to_string(),
            name: name.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}/{}: {}", self.kind, self.name, self.message)
        } else {
            write!(
                f,
                "{}/{}: {}: {}",
                self.kind, self.name, self.field, self.message
            )
        }
    }
}

/// The result of [`validate`]: the configuration built from every valid object, and what was found on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validated {
    pub config: Config,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

const NOT_ACTED_ON: &str = "accepted for MetalLB compatibility, but IronLB does not act on it yet";

/// Collects the diagnostics of one object; the object is kept only if it has no error.
struct Findings<'a> {
    kind: &'static str,
    name: &'a str,
    suffix: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Findings<'a> {
    fn new(kind: &'static str, name: &'a str, from_legacy: bool) -> Findings<'a> {
        Findings {
            kind,
            name,
            suffix: if from_legacy {
                " (converted from the legacy ConfigMap)"
            } else {
                ""
            },
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&mut self, field: &str, message: impl fmt::Display) {
        let d = Diagnostic::new(
            self.kind,
            self.name,
            field,
            format!("{message}{}", self.suffix),
        );
        self.errors.push(d);
    }

    fn warn(&mut self, field: &str, message: impl fmt::Display) {
        let d = Diagnostic::new(
            self.kind,
            self.name,
            field,
            format!("{message}{}", self.suffix),
        );
        self.warnings.push(d);
    }

    fn selectors(&mut self, field: &str, selectors: &Option<Vec<LabelSelector>>) -> Vec<Selector> {
        let mut out = Vec::new();
        for (i, s) in selectors.iter().flatten().enumerate() {
            match Selector::compile(s) {
                Ok(sel) => out.push(sel),
                Err(e) => self.error(&format!("{field}[{i}]"), e),
            }
        }
        out
    }

    fn unique(&mut self, field: &str, items: &[String]) {
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item) {
                self.error(
                    &format!("{field}[{i}]"),
                    format!("{item:?} is listed twice"),
                );
            }
        }
    }

    /// Moves the findings into the result; true when the object is valid.
    fn finish(self, out: &mut Validated) -> bool {
        let ok = self.errors.is_empty();
        out.errors.extend(self.errors);
        out.warnings.extend(self.warnings);
        ok
    }
}

/// An object with its name and whether it came from the legacy ConfigMap, taken in name order.
struct Named<'a, T> {
    name: String,
    object: &'a T,
    legacy: bool,
}

fn by_name<'a, T: kube::Resource>(crds: &'a [T], legacy: &'a [T]) -> Vec<Named<'a, T>> {
    let mut all: Vec<Named<'a, T>> = crds
        .iter()
        .map(|o| (o, false))
        .chain(legacy.iter().map(|o| (o, true)))
        .map(|(object, legacy)| Named {
            name: object.meta().name.clone().unwrap_or_default(),
            object,
            legacy,
        })
        .collect();
    // Stable: with equal names, a CRD comes before the legacy object converted to the same name.
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// Validates every object and builds the [`Config`] of the valid ones.
pub fn validate(sources: &Sources) -> Validated {
    let mut out = Validated {
        errors: sources.malformed.clone(),
        ..Default::default()
    };

    let mut converted = legacy::Migration::default();
    if let Some(source) = &sources.legacy {
        let namespace = source.namespace.as_deref().unwrap_or("metallb-system");
        let parsed = legacy::parse_payload(&source.payload)
            .and_then(|c| legacy::convert_config(&c, namespace));
        match parsed {
            Ok(m) => converted = m,
            Err(e) => out.errors.push(Diagnostic::new(
                "ConfigMap",
                &source.name,
                "data.config",
                error_chain(&e),
            )),
        }
        for note in &converted.notes {
            out.warnings.push(Diagnostic::new(
                "ConfigMap",
                &source.name,
                "data.config",
                note,
            ));
        }
        if sources.has_crds() {
            out.warnings.push(Diagnostic::new(
                "ConfigMap",
                &source.name,
                "",
                "the legacy ConfigMap is read alongside metallb.io objects; MetalLB 0.13 and later ignore it. \
                 Convert it with `ironlb migrate` and delete it",
            ));
        }
    }

    bfd_profiles(
        &by_name(&sources.bfd_profiles, &converted.bfd_profiles),
        &mut out,
    );
    communities(
        &by_name(&sources.communities, &converted.communities),
        &mut out,
    );
    let pool_labels = pools(&by_name(&sources.pools, &converted.pools), &mut out);

    let mut all_peers: Vec<crd::BGPPeer> = sources.peers.clone();
    for old in &sources.peers_v1beta1 {
        let name = old.metadata.name.clone().unwrap_or_default();
        out.warnings.push(Diagnostic::new(
            "BGPPeer",
            &name,
            "apiVersion",
            "metallb.io/v1beta1 is deprecated; it is read as v1beta2. Write it as metallb.io/v1beta2",
        ));
        all_peers.push(old.clone().into());
    }
    peers(&by_name(&all_peers, &converted.peers), &mut out);

    l2_advertisements(
        &by_name(&sources.l2_advertisements, &converted.l2_advertisements),
        &pool_labels,
        &mut out,
    );
    bgp_advertisements(
        &by_name(&sources.bgp_advertisements, &converted.bgp_advertisements),
        &pool_labels,
        &mut out,
    );

    let announced: BTreeSet<&String> = out
        .config
        .l2_advertisements
        .values()
        .flat_map(|a| &a.pools)
        .chain(
            out.config
                .bgp_advertisements
                .values()
                .flat_map(|a| &a.pools),
        )
        .collect();
    let unannounced: Vec<String> = out
        .config
        .pools
        .keys()
        .filter(|p| !announced.contains(p))
        .cloned()
        .collect();
    for name in unannounced {
        out.warnings.push(Diagnostic::new(
            "IPAddressPool",
            &name,
            "",
            "no L2Advertisement or BGPAdvertisement selects this pool: its IPs are allocated but never announced",
        ));
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

fn bfd_profiles(objects: &[Named<crd::BFDProfile>], out: &mut Validated) {
    for n in objects {
        let mut f = Findings::new("BFDProfile", &n.name, n.legacy);
        let s = &n.object.spec;
        if out.config.bfd_profiles.contains_key(&n.name) {
            f.error("metadata.name", "another BFDProfile has the same name");
        }
        for (field, value, min, max) in [
            ("spec.detectMultiplier", s.detect_multiplier, 2, 255),
            ("spec.receiveInterval", s.receive_interval, 10, 60000),
            ("spec.transmitInterval", s.transmit_interval, 10, 60000),
            ("spec.echoInterval", s.echo_interval, 10, 60000),
            ("spec.minimumTtl", s.minimum_ttl, 1, 254),
        ] {
            if let Some(v) = value.filter(|v| !(min..=max).contains(v)) {
                f.error(field, format!("{v} is outside {min}..={max}"));
            }
        }
        f.warn(
            "",
            format!("BFD is {NOT_ACTED_ON}: no BFD session is set up"),
        );
        if f.finish(out) {
            let profile = BfdProfile {
                name: n.name.clone(),
                receive_interval: s.receive_interval,
                transmit_interval: s.transmit_interval,
                detect_multiplier: s.detect_multiplier,
                echo_interval: s.echo_interval,
                echo_mode: s.echo_mode.unwrap_or(false),
                passive_mode: s.passive_mode.unwrap_or(false),
                minimum_ttl: s.minimum_ttl,
            };
            out.config.bfd_profiles.insert(n.name.clone(), profile);
        }
    }
}

fn communities(objects: &[Named<crd::Community>], out: &mut Validated) {
    for n in objects {
        let mut f = Findings::new("Community", &n.name, n.legacy);
        let mut aliases = BTreeMap::new();
        for (i, alias) in n.object.spec.communities.iter().flatten().enumerate() {
            let field = format!("spec.communities[{i}]");
            let name = alias.name.clone().unwrap_or_default();
            if name.is_empty() {
                f.error(&format!("{field}.name"), "an alias needs a name");
                continue;
            }
            if out.config.communities.contains_key(&name) || aliases.contains_key(&name) {
                f.error(
                    &format!("{field}.name"),
                    format!("alias {name:?} is already defined"),
                );
                continue;
            }
            match alias
                .value
                .as_deref()
                .unwrap_or_default()
                .parse::<CommunityValue>()
            {
                Ok(v) => {
                    aliases.insert(name, v);
                }
                Err(e) => f.error(&format!("{field}.value"), e),
            }
        }
        if f.finish(out) {
            out.config.communities.extend(aliases);
        }
    }
}

/// Parses one `spec.addresses` entry: a CIDR or an inclusive `start-end` range.
pub fn parse_address(text: &str) -> Result<IpRange, String> {
    if let Some((start, end)) = text.split_once('-') {
        let ip = |s: &str, which: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{text:?}: {which} {:?} is not an IP address", s.trim()))
        };
        return IpRange::new(ip(start, "start")?, ip(end, "end")?).map_err(|e| e.to_string());
    }
    match text.trim().parse::<IpNet>() {
        Ok(net) => Ok(IpRange::from_cidr(net.trunc())),
        Err(_) if text.trim().parse::<IpAddr>().is_ok() => Err(format!(
            "{text:?} is an address, not a CIDR: write {text}/32 (IPv4) or {text}/128 (IPv6)"
        )),
        Err(_) => Err(format!(
            "{text:?} is neither a CIDR (192.0.2.0/24, 2001:db8::/64) nor a range (192.0.2.10-192.0.2.20)"
        )),
    }
}

/// Sorts ranges and merges adjacent ones; overlapping ranges are an error naming both.
fn merge_ranges(mut ranges: Vec<IpRange>) -> Result<Vec<IpRange>, String> {
    ranges.sort();
    let mut merged: Vec<IpRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = merged.last_mut() {
            if last.overlaps(&r) {
                return Err(format!("{r} overlaps {last} of the same pool"));
            }
            if last.family() == r.family() && to_u128(last.end()) + 1 == to_u128(r.start()) {
                let joined = IpRange::new(last.start(), r.end()).map_err(|e| e.to_string())?;
                *last = joined;
                continue;
            }
        }
        merged.push(r);
    }
    Ok(merged)
}

/// Validates pools; returns the labels of the accepted ones, for advertisement pool selectors.
fn pools(objects: &[Named<crd::IPAddressPool>], out: &mut Validated) -> BTreeMap<String, Labels> {
    let mut labels = BTreeMap::new();
    // Oldest first; objects without a timestamp (files, the legacy ConfigMap) after those with one.
    let mut ordered: Vec<&Named<crd::IPAddressPool>> = objects.iter().collect();
    ordered.sort_by_key(|n| {
        let created = n.object.metadata.creation_timestamp.clone();
        (created.is_none(), created, n.name.clone())
    });
    let mut taken = TakenRanges::default();
    for n in ordered {
        let mut f = Findings::new("IPAddressPool", &n.name, n.legacy);
        let spec = &n.object.spec;
        if out.config.pools.contains_key(&n.name) {
            f.error("metadata.name", "another IPAddressPool has the same name");
        }
        if spec.addresses.is_empty() {
            f.error("spec.addresses", "a pool needs at least one CIDR or range");
        }
        let mut ranges = Vec::new();
        for (i, text) in spec.addresses.iter().enumerate() {
            match parse_address(text) {
                Ok(r) => ranges.push(r),
                Err(e) => f.error(&format!("spec.addresses[{i}]"), e),
            }
        }
        let ranges = match merge_ranges(ranges) {
            Ok(r) => r,
            Err(e) => {
                f.error("spec.addresses", e);
                Vec::new()
            }
        };
        for r in &ranges {
            for (other, o) in taken.overlapping(r) {
                f.error(
                    "spec.addresses",
                    format!("{r} overlaps {o} of IPAddressPool/{other}"),
                );
            }
        }
        let service_allocation = spec.service_allocation.as_ref().map(|a| {
            let namespaces = a.namespaces.clone().unwrap_or_default();
            f.unique("spec.serviceAllocation.namespaces", &namespaces);
            ServiceAllocation {
                priority: a.priority,
                namespaces,
                namespace_selectors: f.selectors(
                    "spec.serviceAllocation.namespaceSelectors",
                    &a.namespace_selectors,
                ),
                service_selectors: f.selectors(
                    "spec.serviceAllocation.serviceSelectors",
                    &a.service_selectors,
                ),
            }
        });
        if f.finish(out) {
            let pool = Pool {
                name: n.name.clone(),
                ranges,
                auto_assign: spec.auto_assign.unwrap_or(true),
                avoid_buggy_ips: spec.avoid_buggy_ips.unwrap_or(false),
                service_allocation,
            };
            taken.insert(&pool);
            out.config.pools.insert(n.name.clone(), pool);
            labels.insert(
                n.name.clone(),
                n.object.metadata.labels.clone().unwrap_or_default(),
            );
        }
    }
    labels
}

/// The ranges of the pools accepted so far, by start address. Accepted pools never overlap one another, so the
/// ranges are disjoint, and the ones overlapping a new range are found by walking back from the last range starting
/// at or below its end: O(log n) per range instead of a scan of every pool, which matters with 10^5 and more pools.
#[derive(Default)]
struct TakenRanges(BTreeMap<IpAddr, (IpRange, String)>);

impl TakenRanges {
    fn insert(&mut self, pool: &Pool) {
        for r in &pool.ranges {
            self.0.insert(r.start(), (*r, pool.name.clone()));
        }
    }

    /// Each pool overlapping `r`, in name order, with its first range that overlaps it.
    fn overlapping(&self, r: &IpRange) -> BTreeMap<String, IpRange> {
        let mut found: BTreeMap<String, IpRange> = BTreeMap::new();
        for (other, pool) in self.0.range(..=r.end()).rev().map(|(_, v)| v) {
            if !other.overlaps(r) {
                break;
            }
            // Walking back, a pool's lower ranges come later: keep the lowest.
            found.insert(pool.clone(), *other);
        }
        found
    }
}

fn timer(f: &mut Findings, field: &str, text: &Option<String>) -> Option<Duration> {
    let text = text.as_deref()?;
    match duration::parse(text) {
        Ok(d) => Some(d),
        Err(e) => {
            f.error(field, e);
            None
        }
    }
}

fn peers(objects: &[Named<crd::BGPPeer>], out: &mut Validated) {
    for n in objects {
        let mut f = Findings::new("BGPPeer", &n.name, n.legacy);
        let s = &n.object.spec;
        if out.config.peers.contains_key(&n.name) {
            f.error("metadata.name", "another BGPPeer has the same name");
        }
        if s.my_asn == 0 {
            f.error(
                "spec.myASN",
                "is required: an AS number from 1 to 4294967295",
            );
        }
        // MetalLB reads peerASN 0 as unset.
        let remote_asn = match (s.peer_asn.filter(|a| *a != 0), s.dynamic_asn.as_deref()) {
            (Some(_), Some(_)) => {
                f.error(
                    "spec.dynamicASN",
                    "peerASN and dynamicASN are mutually exclusive",
                );
                None
            }
            (None, None) => {
                f.error("spec.peerASN", "one of peerASN and dynamicASN is required");
                None
            }
            (Some(asn), None) => Some(RemoteAsn::Fixed(asn)),
            (None, Some("internal")) => Some(RemoteAsn::Internal),
            (None, Some("external")) => Some(RemoteAsn::External),
            (None, Some(other)) => {
                f.error(
                    "spec.dynamicASN",
                    format!("{other:?} is neither \"internal\" nor \"external\""),
                );
                None
            }
        };
        if s.local_asn == Some(0) {
            f.error("spec.localASN", "must be from 1 to 4294967295");
        }
        let ibgp = match remote_asn {
            Some(RemoteAsn::Fixed(a)) => a == s.my_asn,
            Some(RemoteAsn::Internal) => true,
            _ => false,
        };
        let ebgp_multi_hop = s.ebgp_multi_hop.unwrap_or(false);
        if ebgp_multi_hop && ibgp {
            f.error(
                "spec.ebgpMultiHop",
                "applies to eBGP sessions only, and this peer is iBGP",
            );
        }
        let address = s.peer_address.as_deref().filter(|a| !a.is_empty());
        let interface = s.interface.as_deref().filter(|i| !i.is_empty());
        let endpoint = match (address, interface) {
            (Some(_), Some(_)) => {
                f.error(
                    "spec.interface",
                    "peerAddress and interface are mutually exclusive",
                );
                None
            }
            (None, None) => {
                f.error(
                    "spec.peerAddress",
                    "one of peerAddress and interface is required",
                );
                None
            }
            (Some(a), None) => match a.parse::<IpAddr>() {
                Ok(ip) => Some(PeerEndpoint::Address(ip)),
                Err(_) => {
                    f.error("spec.peerAddress", format!("{a:?} is not an IP address"));
                    None
                }
            },
            (None, Some(i)) if i.contains(['\n', '\r']) => {
                f.error("spec.interface", "contains a line break");
                None
            }
            (None, Some(i)) => {
                f.warn(
                    "spec.interface",
                    format!("unnumbered BGP is {NOT_ACTED_ON}"),
                );
                Some(PeerEndpoint::Interface(i.to_string()))
            }
        };
        let port = s.peer_port.unwrap_or(179);
        if !(1..=16384).contains(&port) {
            f.error(
                "spec.peerPort",
                format!("{port} is outside 1..=16384, the range MetalLB's CRD allows"),
            );
        }
        let source_address = s
            .source_address
            .as_deref()
            .filter(|a| !a.is_empty())
            .and_then(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| {
                        f.error("spec.sourceAddress", format!("{a:?} is not an IP address"))
                    })
                    .ok()
            });
        let router_id = s.router_id.as_deref().filter(|a| !a.is_empty()).and_then(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| f.error("spec.routerID", format!("{a:?} is not an IPv4 address: BGP identifiers are 32 bits (RFC 6286)")))
                .ok()
        });

        let hold = timer(&mut f, "spec.holdTime", &s.hold_time);
        let keepalive = timer(&mut f, "spec.keepaliveTime", &s.keepalive_time);
        let (hold_time, keepalive_time) = match (hold, keepalive) {
            (Some(h), Some(k)) => (Some(h), Some(k)),
            (Some(h), None) if s.keepalive_time.is_none() => (Some(h), Some(h / 3)),
            (None, Some(k)) if s.hold_time.is_none() => (Some(k * 3), Some(k)),
            _ => (None, None),
        };
        if let Some(h) = hold_time {
            // RFC 4271 4.2: the hold time is zero or at least three seconds; Go rounds down to whole seconds first.
            let whole = Duration::from_secs(h.as_secs());
            if !whole.is_zero() && whole < Duration::from_secs(3) {
                let field = if hold.is_some() {
                    "spec.holdTime"
                } else {
                    "spec.keepaliveTime"
                };
                f.error(
                    field,
                    format!(
                        "hold time {} must be 0 or at least 3s (RFC 4271)",
                        duration::format(h)
                    ),
                );
            }
        }
        if let (Some(h), Some(k)) = (hold_time, keepalive_time)
            && k > h
        {
            f.error(
                "spec.keepaliveTime",
                format!(
                    "{} is above the hold time {}",
                    duration::format(k),
                    duration::format(h)
                ),
            );
        }
        let connect_time = timer(&mut f, "spec.connectTime", &s.connect_time);
        if let Some(c) = connect_time
            && (c.subsec_nanos() != 0 || !(1..=65535).contains(&c.as_secs()))
        {
            f.error(
                "spec.connectTime",
                "must be a whole number of seconds from 1s to 65535s",
            );
        }

        let node_selectors = f.selectors("spec.nodeSelectors", &s.node_selectors);
        let secret = s.password_secret.as_ref().and_then(|r| {
            r.name
                .clone()
                .filter(|n| !n.is_empty())
                .map(|name| PeerPassword::Secret {
                    name,
                    namespace: r.namespace.clone(),
                })
        });
        let inline = s.password.clone().filter(|p| !p.is_empty());
        let password = match (inline, secret) {
            (Some(_), Some(_)) => {
                f.error(
                    "spec.passwordSecret",
                    "password and passwordSecret are mutually exclusive",
                );
                None
            }
            (Some(p), None) if p.contains(['\n', '\r']) => {
                f.error("spec.password", "contains a line break");
                None
            }
            (Some(p), None) => Some(PeerPassword::Inline(p)),
            (None, secret) => secret,
        };
        let bfd_profile = s.bfd_profile.clone().filter(|b| !b.is_empty());
        if let Some(b) = &bfd_profile {
            if out.config.bfd_profiles.contains_key(b) {
                f.warn("spec.bfdProfile", NOT_ACTED_ON);
            } else {
                f.error(
                    "spec.bfdProfile",
                    format!("BFDProfile/{b} does not exist or is invalid"),
                );
            }
        }
        let vrf = s.vrf.clone().filter(|v| !v.is_empty());
        if let Some(v) = &vrf {
            if v.contains(['\n', '\r']) {
                f.error("spec.vrf", "contains a line break");
            } else {
                f.warn("spec.vrf", NOT_ACTED_ON);
            }
        }
        if s.local_asn.is_some() {
            f.warn("spec.localASN", NOT_ACTED_ON);
        }
        if s.dual_stack_address_family == Some(true) {
            f.warn("spec.dualStackAddressFamily", NOT_ACTED_ON);
        }
        if s.disable_mp == Some(true) {
            f.warn(
                "spec.disableMP",
                format!("deprecated by MetalLB, and {NOT_ACTED_ON}"),
            );
        }
        let valid = f.finish(out);
        if let (true, Some(remote_asn), Some(endpoint)) = (valid, remote_asn, endpoint) {
            let peer = Peer {
                name: n.name.clone(),
                my_asn: s.my_asn,
                remote_asn,
                local_asn: s.local_asn,
                endpoint,
                port,
                source_address,
                router_id,
                node_selectors,
                password,
                hold_time,
                keepalive_time,
                connect_time,
                ebgp_multi_hop,
                vrf,
                bfd_profile,
                graceful_restart: s.enable_graceful_restart.unwrap_or(false),
                dual_stack_address_family: s.dual_stack_address_family.unwrap_or(false),
                disable_mp: s.disable_mp.unwrap_or(false),
            };
            out.config.peers.insert(n.name.clone(), peer);
        }
    }
}

/// Resolves an advertisement's pool list and selectors against the accepted pools. Names of missing pools are
/// warnings: MetalLB ignores them, and the pool may simply not be created yet.
fn selected_pools(
    f: &mut Findings,
    names: &[String],
    selectors: &[Selector],
    pool_labels: &BTreeMap<String, Labels>,
) -> BTreeSet<String> {
    if names.is_empty() && selectors.is_empty() {
        return pool_labels.keys().cloned().collect();
    }
    let mut pools = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        if pool_labels.contains_key(name) {
            pools.insert(name.clone());
        } else {
            f.warn(
                &format!("spec.ipAddressPools[{i}]"),
                format!("IPAddressPool/{name} does not exist or is invalid; it is skipped"),
            );
        }
    }
    for (name, labels) in pool_labels {
        if selectors.iter().any(|s| s.matches(labels)) {
            pools.insert(name.clone());
        }
    }
    pools
}

fn l2_advertisements(
    objects: &[Named<crd::L2Advertisement>],
    pool_labels: &BTreeMap<String, Labels>,
    out: &mut Validated,
) {
    for n in objects {
        let mut f = Findings::new("L2Advertisement", &n.name, n.legacy);
        let s = &n.object.spec;
        if out.config.l2_advertisements.contains_key(&n.name) {
            f.error("metadata.name", "another L2Advertisement has the same name");
        }
        let pool_names = s.ip_address_pools.clone().unwrap_or_default();
        f.unique("spec.ipAddressPools", &pool_names);
        let pool_selectors =
            f.selectors("spec.ipAddressPoolSelectors", &s.ip_address_pool_selectors);
        let node_selectors = f.selectors("spec.nodeSelectors", &s.node_selectors);
        let service_selectors = f.selectors("spec.serviceSelectors", &s.service_selectors);
        let mut preferred_nodes = Vec::new();
        for (i, p) in s.preferred_node_selectors.iter().flatten().enumerate() {
            let field = format!("spec.preferredNodeSelectors[{i}]");
            if !(1..=100).contains(&p.weight) {
                f.error(
                    &format!("{field}.weight"),
                    format!("{} is outside 1..=100", p.weight),
                );
            }
            match Selector::compile(&p.preference) {
                Ok(sel) => preferred_nodes.push((p.weight, sel)),
                Err(e) => f.error(&format!("{field}.preference"), e),
            }
        }
        if !preferred_nodes.is_empty() {
            f.warn("spec.preferredNodeSelectors", NOT_ACTED_ON);
        }
        let interfaces = s.interfaces.clone().unwrap_or_default();
        let pools = selected_pools(&mut f, &pool_names, &pool_selectors, pool_labels);
        if f.finish(out) {
            let adv = L2Advertisement {
                name: n.name.clone(),
                pool_names,
                pool_selectors,
                pools,
                node_selectors,
                interfaces,
                service_selectors,
                preferred_nodes,
            };
            out.config.l2_advertisements.insert(n.name.clone(), adv);
        }
    }
}

fn bgp_advertisements(
    objects: &[Named<crd::BGPAdvertisement>],
    pool_labels: &BTreeMap<String, Labels>,
    out: &mut Validated,
) {
    for n in objects {
        let mut f = Findings::new("BGPAdvertisement", &n.name, n.legacy);
        let s = &n.object.spec;
        if out.config.bgp_advertisements.contains_key(&n.name) {
            f.error(
                "metadata.name",
                "another BGPAdvertisement has the same name",
            );
        }
        let length = |f: &mut Findings, field: &str, v: Option<i32>, min: i32, max: i32| -> u8 {
            let v = v.unwrap_or(max);
            if !(min..=max).contains(&v) {
                f.error(field, format!("{v} is outside {min}..={max}"));
                return max as u8;
            }
            v as u8
        };
        let aggregation_length = length(
            &mut f,
            "spec.aggregationLength",
            s.aggregation_length,
            1,
            32,
        );
        let aggregation_length_v6 = length(
            &mut f,
            "spec.aggregationLengthV6",
            s.aggregation_length_v6,
            0,
            128,
        );
        let local_pref = s.local_pref.and_then(|v| {
            let pref = u32::try_from(v).ok();
            if pref.is_none() {
                f.error(
                    "spec.localPref",
                    format!("{v} is not a LOCAL_PREF, which is unsigned 32 bits (0..=4294967295)"),
                );
            }
            pref
        });
        let service_selectors = f.selectors("spec.serviceSelectors", &s.service_selectors);
        if !service_selectors.is_empty()
            && (aggregation_length != 32 || aggregation_length_v6 != 128)
        {
            f.error(
                "spec.serviceSelectors",
                "cannot be combined with aggregation: routes of selected Services must stay /32 and /128",
            );
        }
        let community_texts = s.communities.clone().unwrap_or_default();
        f.unique("spec.communities", &community_texts);
        let mut communities = BTreeSet::new();
        for (i, text) in community_texts.iter().enumerate() {
            let field = format!("spec.communities[{i}]");
            if let Some(v) = out.config.communities.get(text) {
                communities.insert(*v);
                continue;
            }
            match text.parse::<CommunityValue>() {
                Ok(v) => {
                    communities.insert(v);
                }
                Err(e) if e.looks_like_value() => f.error(&field, e),
                Err(_) => f.error(
                    &field,
                    format!(
                        "{text:?} is neither a community value (AA:NN or large:AA:BB:CC) nor an alias defined by \
                         a valid Community object"
                    ),
                ),
            }
        }
        let peers = s.peers.clone().unwrap_or_default();
        f.unique("spec.peers", &peers);
        for (i, p) in peers.iter().enumerate() {
            if !out.config.peers.contains_key(p) {
                f.warn(
                    &format!("spec.peers[{i}]"),
                    format!(
                        "BGPPeer/{p} does not exist or is invalid; nothing is advertised to it"
                    ),
                );
            }
        }
        let pool_names = s.ip_address_pools.clone().unwrap_or_default();
        f.unique("spec.ipAddressPools", &pool_names);
        let pool_selectors =
            f.selectors("spec.ipAddressPoolSelectors", &s.ip_address_pool_selectors);
        let node_selectors = f.selectors("spec.nodeSelectors", &s.node_selectors);
        let pools = selected_pools(&mut f, &pool_names, &pool_selectors, pool_labels);
        if f.finish(out) {
            let adv = BgpAdvertisement {
                name: n.name.clone(),
                aggregation_length,
                aggregation_length_v6,
                local_pref,
                communities,
                pool_names,
                pool_selectors,
                pools,
                node_selectors,
                peers,
                service_selectors,
            };
            out.config.bgp_advertisements.insert(n.name.clone(), adv);
        }
    }
}

impl Validated {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::crd::{
        BFDProfileSpec, BGPAdvertisementSpec, BGPPeerSpec, CommunityAlias, CommunitySpec,
        IPAddressPoolSpec, L2AdvertisementSpec,
    };
    use crate::config::load::LegacySource;
    use k8s_openapi::api::core::v1::SecretReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("metallb-system".into()),
            ..Default::default()
        }
    }

    fn pool(name: &str, addresses: &[&str]) -> crd::IPAddressPool {
        crd::IPAddressPool {
            metadata: meta(name),
            spec: IPAddressPoolSpec {
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
            status: None,
        }
    }

    fn labelled(mut p: crd::IPAddressPool, k: &str, v: &str) -> crd::IPAddressPool {
        p.metadata.labels = Some([(k.to_string(), v.to_string())].into());
        p
    }

    fn l2(name: &str, pools: &[&str]) -> crd::L2Advertisement {
        crd::L2Advertisement {
            metadata: meta(name),
            spec: L2AdvertisementSpec {
                ip_address_pools: (!pools.is_empty())
                    .then(|| pools.iter().map(|p| p.to_string()).collect()),
                ..Default::default()
            },
            status: None,
        }
    }

    fn bgp_adv(name: &str, spec: BGPAdvertisementSpec) -> crd::BGPAdvertisement {
        crd::BGPAdvertisement {
            metadata: meta(name),
            spec,
            status: None,
        }
    }

    fn peer(name: &str) -> crd::BGPPeer {
        crd::BGPPeer {
            metadata: meta(name),
            spec: BGPPeerSpec {
                my_asn: 64500,
                peer_asn: Some(64501),
                peer_address: Some("203.0.113.254".into()),
                ..Default::default()
            },
            status: None,
        }
    }

    fn with(f: impl FnOnce(&mut BGPPeerSpec)) -> crd::BGPPeer {
        let mut p = peer("p");
        f(&mut p.spec);
        p
    }

    fn community(name: &str, aliases: &[(&str, &str)]) -> crd::Community {
        crd::Community {
            metadata: meta(name),
            spec: CommunitySpec {
                communities: Some(
                    aliases
                        .iter()
                        .map(|(n, v)| CommunityAlias {
                            name: Some(n.to_string()),
                            value: Some(v.to_string()),
                        })
                        .collect(),
                ),
            },
            status: None,
        }
    }

    fn bad_selector() -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Equals".into(),
                values: None,
            }]),
            ..Default::default()
        }
    }

    /// The diagnostics as `Kind/name: field: message` lines.
    fn lines(d: &[Diagnostic]) -> Vec<String> {
        d.iter().map(ToString::to_string).collect()
    }

    fn has(d: &[Diagnostic], kind: &str, name: &str, field: &str, needle: &str) -> bool {
        d.iter().any(|d| {
            d.kind == kind && d.name == name && d.field == field && d.message.contains(needle)
        })
    }

    fn peer_errors(p: crd::BGPPeer) -> Vec<Diagnostic> {
        let v = validate(&Sources {
            peers: vec![p],
            ..Default::default()
        });
        assert_eq!(v.config.peers.is_empty(), !v.errors.is_empty());
        v.errors
    }

    #[test]
    fn diagnostics_display_kind_name_field_message() {
        let d = Diagnostic::new("IPAddressPool", "a", "spec.addresses[0]", "bad");
        assert_eq!(d.to_string(), "IPAddressPool/a: spec.addresses[0]: bad");
        assert_eq!(Diagnostic::new("K", "n", "", "m").to_string(), "K/n: m");
    }

    #[test]
    fn pools_sort_and_merge_ranges_and_default_auto_assign() {
        let v = validate(&Sources {
            pools: vec![pool(
                "a",
                &[
                    "192.0.2.64/26",
                    "192.0.2.0/26",
                    "2001:db8::/124",
                    "192.0.2.128-192.0.2.137",
                    "198.51.100.5/24",
                ],
            )],
            l2_advertisements: vec![l2("all", &[])],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        let p = &v.config.pools["a"];
        let ranges: Vec<_> = p.ranges.iter().map(ToString::to_string).collect();
        assert_eq!(
            ranges,
            [
                "192.0.2.0-192.0.2.137",
                "198.51.100.0-198.51.100.255",
                "2001:db8::-2001:db8::f"
            ]
        );
        assert!(p.auto_assign);
        assert!(!p.avoid_buggy_ips);
        assert_eq!(p.size_per_family(), (64 * 2 + 10 + 256, 16));
    }

    #[test]
    fn bad_addresses_are_rejected_per_entry() {
        let v = validate(&Sources {
            pools: vec![
                pool(
                    "bad",
                    &[
                        "192.0.2.0/33",
                        "192.0.2.9-192.0.2.1",
                        "192.0.2.1-2001:db8::1",
                        "192.0.2.7",
                        "x",
                    ],
                ),
                pool("empty", &[]),
                pool("good", &["203.0.113.0/24"]),
            ],
            ..Default::default()
        });
        let e = &v.errors;
        assert!(
            has(
                e,
                "IPAddressPool",
                "bad",
                "spec.addresses[0]",
                "neither a CIDR"
            ),
            "{:?}",
            lines(e)
        );
        assert!(has(
            e,
            "IPAddressPool",
            "bad",
            "spec.addresses[1]",
            "reversed"
        ));
        assert!(has(
            e,
            "IPAddressPool",
            "bad",
            "spec.addresses[2]",
            "different address families"
        ));
        assert!(has(
            e,
            "IPAddressPool",
            "bad",
            "spec.addresses[3]",
            "192.0.2.7/32"
        ));
        assert!(has(
            e,
            "IPAddressPool",
            "bad",
            "spec.addresses[4]",
            "neither a CIDR"
        ));
        assert!(has(
            e,
            "IPAddressPool",
            "empty",
            "spec.addresses",
            "at least one"
        ));
        assert_eq!(v.config.pools.keys().collect::<Vec<_>>(), ["good"]);
    }

    #[test]
    fn overlapping_pools_reject_the_later_name_and_name_the_other() {
        // Given in reverse order: name order decides, not input order.
        let v = validate(&Sources {
            pools: vec![
                pool("b", &["192.0.2.128/25"]),
                pool("a", &["192.0.2.0/24"]),
                pool("c", &["198.51.100.0/24"]),
            ],
            ..Default::default()
        });
        assert_eq!(v.errors.len(), 1, "{:?}", lines(&v.errors));
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "b",
            "spec.addresses",
            "of IPAddressPool/a"
        ));
        assert_eq!(v.config.pools.keys().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn an_older_pool_wins_an_overlap_whatever_the_names() {
        let created = |mut p: crd::IPAddressPool, second: i64| {
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + second).unwrap(),
                ));
            p
        };
        // "public" is in use; "a-new" is added later and overlaps it. The new one is rejected, not "public".
        let v = validate(&Sources {
            pools: vec![
                created(pool("public", &["192.0.2.0/24"]), 0),
                created(pool("a-new", &["192.0.2.0/28"]), 60),
            ],
            ..Default::default()
        });
        assert_eq!(v.errors.len(), 1, "{:?}", lines(&v.errors));
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "a-new",
            "spec.addresses",
            "of IPAddressPool/public"
        ));
        assert_eq!(v.config.pools.keys().collect::<Vec<_>>(), ["public"]);
    }

    #[test]
    fn overlap_inside_one_pool_is_rejected() {
        let v = validate(&Sources {
            pools: vec![pool("a", &["192.0.2.0/24", "192.0.2.5-192.0.2.6"])],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "a",
            "spec.addresses",
            "same pool"
        ));
    }

    #[test]
    fn service_allocation_is_compiled_and_checked() {
        let mut p = pool("a", &["192.0.2.0/24"]);
        p.spec.service_allocation = Some(crd::ServiceAllocationSpec {
            priority: Some(5),
            namespaces: Some(vec!["x".into(), "y".into()]),
            service_selectors: Some(vec![LabelSelector::default()]),
            ..Default::default()
        });
        let v = validate(&Sources {
            pools: vec![p.clone()],
            ..Default::default()
        });
        let a = v.config.pools["a"].service_allocation.as_ref().unwrap();
        assert_eq!(
            (a.priority, a.namespaces.len(), a.service_selectors.len()),
            (Some(5), 2, 1)
        );

        let sa = p.spec.service_allocation.as_mut().unwrap();
        sa.namespaces = Some(vec!["x".into(), "x".into()]);
        sa.namespace_selectors = Some(vec![LabelSelector::default(), bad_selector()]);
        let v = validate(&Sources {
            pools: vec![p],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "a",
            "spec.serviceAllocation.namespaces[1]",
            "twice"
        ));
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "a",
            "spec.serviceAllocation.namespaceSelectors[1]",
            "Equals"
        ));
        assert!(v.config.pools.is_empty());
    }

    #[test]
    fn a_valid_peer_gets_defaults_and_derived_timers() {
        let v = validate(&Sources {
            peers: vec![with(|s| s.hold_time = Some("90s".into()))],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        let p = &v.config.peers["p"];
        assert_eq!(p.port, 179);
        assert_eq!(p.remote_asn, RemoteAsn::Fixed(64501));
        assert_eq!(
            p.endpoint,
            PeerEndpoint::Address("203.0.113.254".parse().unwrap())
        );
        assert_eq!(p.hold_time, Some(Duration::from_secs(90)));
        assert_eq!(p.keepalive_time, Some(Duration::from_secs(30)));

        let v = validate(&Sources {
            peers: vec![with(|s| s.keepalive_time = Some("20s".into()))],
            ..Default::default()
        });
        assert_eq!(v.config.peers["p"].hold_time, Some(Duration::from_secs(60)));
    }

    #[test]
    fn asn_rules() {
        assert!(has(
            &peer_errors(with(|s| s.my_asn = 0)),
            "BGPPeer",
            "p",
            "spec.myASN",
            "required"
        ));
        assert!(has(
            &peer_errors(with(|s| s.peer_asn = None)),
            "BGPPeer",
            "p",
            "spec.peerASN",
            "required"
        ));
        assert!(has(
            &peer_errors(with(|s| s.dynamic_asn = Some("external".into()))),
            "BGPPeer",
            "p",
            "spec.dynamicASN",
            "mutually exclusive"
        ));
        assert!(has(
            &peer_errors(with(|s| {
                s.peer_asn = None;
                s.dynamic_asn = Some("both".into());
            })),
            "BGPPeer",
            "p",
            "spec.dynamicASN",
            "\"both\""
        ));
        assert!(
            peer_errors(with(|s| {
                s.peer_asn = None;
                s.dynamic_asn = Some("internal".into());
            }))
            .is_empty()
        );
        assert!(has(
            &peer_errors(with(|s| {
                s.peer_asn = Some(64500);
                s.ebgp_multi_hop = Some(true);
            })),
            "BGPPeer",
            "p",
            "spec.ebgpMultiHop",
            "iBGP"
        ));
        assert!(peer_errors(with(|s| s.ebgp_multi_hop = Some(true))).is_empty());
        assert!(has(
            &peer_errors(with(|s| s.local_asn = Some(0))),
            "BGPPeer",
            "p",
            "spec.localASN",
            "1"
        ));
    }

    #[test]
    fn endpoint_and_address_rules() {
        let e = peer_errors(with(|s| s.peer_address = None));
        assert!(has(&e, "BGPPeer", "p", "spec.peerAddress", "required"));
        let e = peer_errors(with(|s| s.interface = Some("eth0".into())));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.interface",
            "mutually exclusive"
        ));
        let e = peer_errors(with(|s| s.peer_address = Some("192.0.2.300".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.peerAddress", "not an IP"));
        let e = peer_errors(with(|s| s.source_address = Some("nope".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.sourceAddress", "not an IP"));
        let e = peer_errors(with(|s| s.router_id = Some("2001:db8::1".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.routerID", "IPv4"));
        let e = peer_errors(with(|s| s.peer_port = Some(0)));
        assert!(has(&e, "BGPPeer", "p", "spec.peerPort", "1..=16384"));
    }

    #[test]
    fn timer_rules() {
        let e = peer_errors(with(|s| s.hold_time = Some("2s".into())));
        assert!(
            has(&e, "BGPPeer", "p", "spec.holdTime", "0 or at least 3s"),
            "{:?}",
            lines(&e)
        );
        assert!(peer_errors(with(|s| s.hold_time = Some("0s".into()))).is_empty());
        assert!(peer_errors(with(|s| s.hold_time = Some("3s".into()))).is_empty());
        let e = peer_errors(with(|s| {
            s.hold_time = Some("30s".into());
            s.keepalive_time = Some("31s".into());
        }));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.keepaliveTime",
            "above the hold time 30s"
        ));
        let e = peer_errors(with(|s| s.hold_time = Some("ninety".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.holdTime", "not a duration"));
        let e = peer_errors(with(|s| s.keepalive_time = Some("-1s".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.keepaliveTime", "negative"));
        let e = peer_errors(with(|s| s.keepalive_time = Some("500ms".into())));
        assert!(
            has(&e, "BGPPeer", "p", "spec.keepaliveTime", "0 or at least 3s"),
            "{:?}",
            lines(&e)
        );
        let e = peer_errors(with(|s| s.connect_time = Some("1.5s".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.connectTime", "whole number"));
        assert!(peer_errors(with(|s| s.connect_time = Some("120s".into()))).is_empty());
    }

    #[test]
    fn password_rules() {
        let secret = Some(SecretReference {
            name: Some("s".into()),
            namespace: None,
        });
        let e = peer_errors(with(|s| {
            s.password = Some("pw".into());
            s.password_secret = secret.clone();
        }));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.passwordSecret",
            "mutually exclusive"
        ));
        // An empty reference, as MetalLB's converter writes, is no reference.
        let v = validate(&Sources {
            peers: vec![with(|s| {
                s.password = Some("pw".into());
                s.password_secret = Some(SecretReference::default());
            })],
            ..Default::default()
        });
        assert_eq!(
            v.config.peers["p"].password,
            Some(PeerPassword::Inline("pw".into()))
        );
        assert!(
            !format!("{:?}", v.config.peers["p"]).contains("pw\""),
            "Debug leaks the password"
        );
        let e = peer_errors(with(|s| s.password = Some("a\nb".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.password", "line break"));
    }

    #[test]
    fn peer_selectors_and_bfd_references() {
        let e = peer_errors(with(|s| {
            s.node_selectors = Some(vec![LabelSelector::default(), bad_selector()])
        }));
        assert!(has(&e, "BGPPeer", "p", "spec.nodeSelectors[1]", "Equals"));
        let e = peer_errors(with(|s| s.bfd_profile = Some("missing".into())));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.bfdProfile",
            "BFDProfile/missing does not exist"
        ));

        let profile = crd::BFDProfile {
            metadata: meta("fast"),
            spec: BFDProfileSpec {
                receive_interval: Some(300),
                ..Default::default()
            },
            status: None,
        };
        let v = validate(&Sources {
            bfd_profiles: vec![profile],
            peers: vec![with(|s| {
                s.bfd_profile = Some("fast".into());
                s.vrf = Some("red".into());
            })],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        assert!(has(
            &v.warnings,
            "BGPPeer",
            "p",
            "spec.bfdProfile",
            "does not act on it yet"
        ));
        assert!(has(
            &v.warnings,
            "BGPPeer",
            "p",
            "spec.vrf",
            "does not act on it yet"
        ));
        assert!(has(&v.warnings, "BFDProfile", "fast", "", "no BFD session"));
    }

    #[test]
    fn bfd_ranges_follow_metallb() {
        let profile = crd::BFDProfile {
            metadata: meta("b"),
            spec: BFDProfileSpec {
                detect_multiplier: Some(1),
                transmit_interval: Some(60001),
                minimum_ttl: Some(254),
                ..Default::default()
            },
            status: None,
        };
        let v = validate(&Sources {
            bfd_profiles: vec![profile],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "BFDProfile",
            "b",
            "spec.detectMultiplier",
            "2..=255"
        ));
        assert!(has(
            &v.errors,
            "BFDProfile",
            "b",
            "spec.transmitInterval",
            "10..=60000"
        ));
        assert_eq!(v.errors.len(), 2);
    }

    #[test]
    fn v1beta1_peers_are_read_as_v1beta2_with_a_warning() {
        let old: crd::v1beta1::BGPPeer = serde_json::from_value(serde_json::json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BGPPeer", "metadata": {"name": "old"},
            "spec": {"myASN": 1, "peerASN": 2, "peerAddress": "203.0.113.253"}
        }))
        .unwrap();
        let v = validate(&Sources {
            peers_v1beta1: vec![old],
            ..Default::default()
        });
        assert!(v.config.peers.contains_key("old"));
        assert!(has(
            &v.warnings,
            "BGPPeer",
            "old",
            "apiVersion",
            "deprecated"
        ));
    }

    #[test]
    fn duplicate_names_reject_the_second() {
        let v = validate(&Sources {
            peers: vec![peer("p"), with(|s| s.my_asn = 7)],
            ..Default::default()
        });
        assert!(has(&v.errors, "BGPPeer", "p", "metadata.name", "same name"));
        assert_eq!(v.config.peers["p"].my_asn, 64500, "the first one is kept");
    }

    #[test]
    fn communities_resolve_values_and_aliases() {
        let v = validate(&Sources {
            pools: vec![pool("a", &["192.0.2.0/24"])],
            communities: vec![
                community(
                    "c1",
                    &[("no-export", "65535:65281"), ("big", "large:1:2:3")],
                ),
                community("c2", &[("no-export", "1:1")]),
                community("c3", &[("bad", "70000:1")]),
            ],
            bgp_advertisements: vec![bgp_adv(
                "adv",
                BGPAdvertisementSpec {
                    communities: Some(vec!["no-export".into(), "big".into(), "64512:1".into()]),
                    ..Default::default()
                },
            )],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "Community",
            "c2",
            "spec.communities[0].name",
            "already defined"
        ));
        assert!(has(
            &v.errors,
            "Community",
            "c3",
            "spec.communities[0].value",
            "0 to 65535"
        ));
        let adv = &v.config.bgp_advertisements["adv"];
        let values: Vec<_> = adv.communities.iter().map(ToString::to_string).collect();
        assert_eq!(values, ["64512:1", "65535:65281", "large:1:2:3"]);
        assert_eq!(
            adv.pools,
            BTreeSet::from(["a".to_string()]),
            "no pool list: all pools"
        );
    }

    #[test]
    fn unknown_community_alias_and_out_of_range_value_are_errors() {
        let v = validate(&Sources {
            bgp_advertisements: vec![bgp_adv(
                "adv",
                BGPAdvertisementSpec {
                    communities: Some(vec!["NO_SUCH".into(), "1:65536".into()]),
                    ..Default::default()
                },
            )],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.communities[0]",
            "nor an alias"
        ));
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.communities[1]",
            "0 to 65535"
        ));
        assert!(v.config.bgp_advertisements.is_empty());
    }

    #[test]
    fn bgp_advertisement_lengths_and_selectors() {
        let adv = |spec| {
            validate(&Sources {
                bgp_advertisements: vec![bgp_adv("adv", spec)],
                ..Default::default()
            })
        };
        let v = adv(BGPAdvertisementSpec {
            aggregation_length: Some(33),
            aggregation_length_v6: Some(129),
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.aggregationLength",
            "1..=32"
        ));
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.aggregationLengthV6",
            "0..=128"
        ));
        let v = adv(BGPAdvertisementSpec {
            aggregation_length: Some(24),
            service_selectors: Some(vec![LabelSelector::default()]),
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.serviceSelectors",
            "aggregation"
        ));
        let v = adv(BGPAdvertisementSpec {
            aggregation_length: Some(24),
            local_pref: Some(150),
            peers: Some(vec!["nobody".into()]),
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        let a = &v.config.bgp_advertisements["adv"];
        assert_eq!(
            (a.aggregation_length, a.aggregation_length_v6, a.local_pref),
            (24, 128, Some(150))
        );
        assert!(has(
            &v.warnings,
            "BGPAdvertisement",
            "adv",
            "spec.peers[0]",
            "BGPPeer/nobody"
        ));
        // The schema admits any int32 (and the decoder any integer): the range is checked here, for this object only.
        for bad in [-1, i64::from(u32::MAX) + 1] {
            let v = adv(BGPAdvertisementSpec {
                local_pref: Some(bad),
                ..Default::default()
            });
            assert!(
                has(
                    &v.errors,
                    "BGPAdvertisement",
                    "adv",
                    "spec.localPref",
                    "unsigned 32 bits"
                ),
                "{bad}: {:?}",
                lines(&v.errors)
            );
        }
        let v = adv(BGPAdvertisementSpec {
            local_pref: Some(i64::from(u32::MAX)),
            ..Default::default()
        });
        assert_eq!(
            v.config.bgp_advertisements["adv"].local_pref,
            Some(u32::MAX)
        );
        let v = adv(BGPAdvertisementSpec {
            node_selectors: Some(vec![bad_selector()]),
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.nodeSelectors[0]",
            "Equals"
        ));
    }

    #[test]
    fn advertisements_select_pools_by_list_and_by_label() {
        let mut by_label = l2("by-label", &[]);
        by_label.spec.ip_address_pool_selectors = Some(vec![LabelSelector {
            match_labels: Some([("tier".to_string(), "gold".to_string())].into()),
            ..Default::default()
        }]);
        let v = validate(&Sources {
            pools: vec![
                pool("a", &["192.0.2.0/24"]),
                labelled(pool("b", &["198.51.100.0/24"]), "tier", "gold"),
                pool("c", &["203.0.113.0/24"]),
            ],
            l2_advertisements: vec![l2("by-list", &["a", "missing"]), by_label],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        let names = |a: &str| {
            v.config.l2_advertisements[a]
                .pools
                .iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(names("by-list"), ["a"]);
        assert_eq!(names("by-label"), ["b"]);
        assert!(has(
            &v.warnings,
            "L2Advertisement",
            "by-list",
            "spec.ipAddressPools[1]",
            "IPAddressPool/missing"
        ));
        assert!(has(
            &v.warnings,
            "IPAddressPool",
            "c",
            "",
            "never announced"
        ));
        assert!(!has(
            &v.warnings,
            "IPAddressPool",
            "a",
            "",
            "never announced"
        ));
    }

    #[test]
    fn l2_advertisement_checks() {
        let mut adv = l2("adv", &["a", "a"]);
        adv.spec.node_selectors = Some(vec![bad_selector()]);
        adv.spec.preferred_node_selectors = Some(vec![crd::PreferredNodeSelector {
            preference: LabelSelector::default(),
            weight: 0,
        }]);
        let v = validate(&Sources {
            pools: vec![pool("a", &["192.0.2.0/24"])],
            l2_advertisements: vec![adv],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.ipAddressPools[1]",
            "twice"
        ));
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.nodeSelectors[0]",
            "Equals"
        ));
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.preferredNodeSelectors[0].weight",
            "1..=100"
        ));
        assert!(v.config.l2_advertisements.is_empty());
        assert!(has(
            &v.warnings,
            "IPAddressPool",
            "a",
            "",
            "never announced"
        ));
    }

    #[test]
    fn one_invalid_object_never_drops_the_valid_ones() {
        let v = validate(&Sources {
            pools: vec![pool("good", &["192.0.2.0/24"]), pool("bad", &["nope"])],
            peers: vec![peer("ok"), with(|s| s.my_asn = 0)],
            l2_advertisements: vec![l2("adv", &["good", "bad"])],
            malformed: vec![Diagnostic::new("BGPPeer", "typo", "spec", "invalid type")],
            ..Default::default()
        });
        assert_eq!(v.config.pools.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(v.config.peers.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(
            v.config.l2_advertisements["adv"].pools,
            BTreeSet::from(["good".to_string()])
        );
        assert_eq!(v.errors.len(), 3, "{:?}", lines(&v.errors));
    }

    #[test]
    fn the_legacy_configmap_is_converted_and_validated() {
        let legacy = LegacySource {
            name: "ConfigMap/config".into(),
            namespace: Some("metallb-system".into()),
            payload: "
peers: [{my-asn: 64500, peer-asn: 64500, peer-address: 203.0.113.254, hold-time: 1s}]
address-pools:
- {name: l2, protocol: layer2, addresses: [198.51.100.0/24]}
- {name: other, protocol: l2, addresses: [203.0.113.0/24]}
"
            .into(),
        };
        let v = validate(&Sources {
            legacy: Some(legacy.clone()),
            ..Default::default()
        });
        assert!(v.config.pools.contains_key("l2"));
        assert!(
            v.config.l2_advertisements["l2advertisement1"]
                .pools
                .contains("l2")
        );
        assert!(
            has(
                &v.errors,
                "BGPPeer",
                "peer1",
                "spec.holdTime",
                "legacy ConfigMap"
            ),
            "{:?}",
            lines(&v.errors)
        );
        assert!(has(
            &v.warnings,
            "ConfigMap",
            "ConfigMap/config",
            "data.config",
            "\"l2\""
        ));
        assert!(has(
            &v.warnings,
            "IPAddressPool",
            "other",
            "",
            "never announced"
        ));
        assert!(!v.warnings.iter().any(|w| w.message.contains("alongside")));

        // Beside CRDs it is still read, with a warning, and a CRD wins a name clash.
        let v = validate(&Sources {
            legacy: Some(legacy),
            pools: vec![pool("l2", &["192.0.2.0/24"])],
            ..Default::default()
        });
        assert!(has(
            &v.warnings,
            "ConfigMap",
            "ConfigMap/config",
            "",
            "alongside"
        ));
        assert_eq!(
            v.config.pools["l2"].ranges[0].to_string(),
            "192.0.2.0-192.0.2.255"
        );
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "l2",
            "metadata.name",
            "legacy ConfigMap"
        ));
    }

    #[test]
    fn an_unparseable_legacy_payload_is_one_error() {
        let v = validate(&Sources {
            legacy: Some(LegacySource {
                name: "ConfigMap/config".into(),
                namespace: None,
                payload: "peers: {not: a list}".into(),
            }),
            pools: vec![pool("a", &["192.0.2.0/24"])],
            ..Default::default()
        });
        assert_eq!(v.errors.len(), 1);
        assert_eq!(v.errors[0].field, "data.config");
        assert!(v.config.pools.contains_key("a"));
    }
}
