//! `BFDProfile`, `Community` and `BGPAdvertisement`: BFD values within MetalLB's ranges, community aliases defined
//! once with valid values, and advertisements whose aggregation lengths, LOCAL_PREF and communities (values or
//! aliases) are valid and whose pools and peers resolve against the accepted ones.

use std::collections::{BTreeMap, BTreeSet};

use super::{Findings, Named, Validated, selected_pools};
use crate::config::community::CommunityValue;
use crate::config::crd;
use crate::config::model::{BfdProfile, BgpAdvertisement, Family, Labels};
use crate::config::selector::Selector;

pub(super) fn bfd_profiles(objects: &[Named<crd::BFDProfile>], out: &mut Validated) {
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

pub(super) fn communities(objects: &[Named<crd::Community>], out: &mut Validated) {
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

/// What [`against_pools`] needs of an advertisement being checked.
struct Candidate<'a> {
    pools: &'a BTreeSet<String>,
    /// (IPv4, IPv6) aggregation lengths.
    aggregation: (u8, u8),
    local_pref: Option<u32>,
    peers: &'a [String],
    node_selectors: &'a [Selector],
    has_service_selectors: bool,
}

/// MetalLB's rules between an advertisement and the pools it selects, each checked against the pools and the
/// advertisements accepted before it:
/// - an aggregation length shorter than the widest prefix of a pool's address entry would announce addresses
///   outside the pool;
/// - two advertisements that would send the same route (a common pool, the same aggregation, overlapping peers and
///   nodes, neither limited by Service selectors) may not disagree on LOCAL_PREF; MetalLB compares the nodes the
///   node selectors pick, which a configuration alone cannot know, so selectors count as overlapping when one is
///   empty (all nodes) or both are the same;
/// - a peer whose BFD profile has echo mode may not receive IPv6 routes (echo is IPv4 only).
fn against_pools(f: &mut Findings, out: &Validated, adv: &Candidate) {
    let (v4, v6) = adv.aggregation;
    for name in adv.pools {
        let Some(pool) = out.config.pools.get(name) else {
            continue;
        };
        for range in &pool.ranges {
            let (length, field) = match range.family() {
                Family::V4 => (v4, "spec.aggregationLength"),
                Family::V6 => (v6, "spec.aggregationLengthV6"),
            };
            let widest = range.widest_prefix();
            if length < widest {
                f.error(
                    field,
                    format!(
                        "{length} is shorter than the /{widest} prefix of IPAddressPool/{name}'s {range}, so the \
                         aggregate would cover addresses outside the pool (MetalLB: invalid aggregation length \
                         {length}: prefix {widest} in this pool is more specific than the aggregation length)"
                    ),
                );
            }
        }
        if pool.has_family(Family::V6) {
            let peers: Vec<&String> = if adv.peers.is_empty() {
                out.config.peers.keys().collect()
            } else {
                adv.peers.iter().collect()
            };
            for peer in peers {
                let echo = out
                    .config
                    .peers
                    .get(peer)
                    .and_then(|p| p.bfd_profile.as_ref())
                    .and_then(|b| out.config.bfd_profiles.get(b))
                    .filter(|b| b.echo_mode);
                if let Some(profile) = echo {
                    f.error(
                        "spec.peers",
                        format!(
                            "IPAddressPool/{name} has IPv6 addresses and BGPPeer/{peer} uses BFDProfile/{} with \
                             echo mode, which is IPv4 only (MetalLB refuses this)",
                            profile.name
                        ),
                    );
                }
            }
        }
        if adv.has_service_selectors {
            continue;
        }
        for other in out.config.bgp_advertisements.values() {
            if !other.pools.contains(name)
                || !other.service_selectors.is_empty()
                || other.local_pref.unwrap_or(0) == adv.local_pref.unwrap_or(0)
            {
                continue;
            }
            let same_length = match (pool.has_family(Family::V4), pool.has_family(Family::V6)) {
                (true, false) => other.aggregation_length == v4,
                (false, true) => other.aggregation_length_v6 == v6,
                _ => other.aggregation_length == v4 || other.aggregation_length_v6 == v6,
            };
            let peers_meet = adv.peers.is_empty()
                || other.peers.is_empty()
                || adv.peers.iter().any(|p| other.peers.contains(p));
            let (ours, theirs) = (adv.node_selectors, &other.node_selectors[..]);
            let nodes_meet = ours.is_empty() || theirs.is_empty() || ours == theirs;
            if same_length && peers_meet && nodes_meet {
                f.error(
                    "spec.localPref",
                    format!(
                        "{} differs from BGPAdvertisement/{}'s {} for the same routes of IPAddressPool/{name} to \
                         the same peers and nodes (MetalLB: invalid local preference)",
                        adv.local_pref.unwrap_or(0),
                        other.name,
                        other.local_pref.unwrap_or(0)
                    ),
                );
            }
        }
    }
}

pub(super) fn advertisements(
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
        against_pools(
            &mut f,
            out,
            &Candidate {
                pools: &pools,
                aggregation: (aggregation_length, aggregation_length_v6),
                local_pref,
                peers: &peers,
                node_selectors: &node_selectors,
                has_service_selectors: !service_selectors.is_empty(),
            },
        );
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::super::fixtures::*;
    use super::super::validate;
    use super::*;
    use crate::config::crd::{BFDProfileSpec, BGPAdvertisementSpec};
    use crate::config::load::Sources;

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
    fn aggregation_shorter_than_a_pool_prefix_is_refused_as_metallb_does() {
        let check = |addresses: &[&str], v4: i32, v6: i32| {
            validate(&Sources {
                pools: vec![pool("p", addresses)],
                bgp_advertisements: vec![bgp_adv(
                    "adv",
                    BGPAdvertisementSpec {
                        aggregation_length: Some(v4),
                        aggregation_length_v6: Some(v6),
                        ..Default::default()
                    },
                )],
                ..Default::default()
            })
        };
        // MetalLB's own example: 26 against a /28.
        let v = check(&["198.51.100.0/28"], 26, 128);
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.aggregationLength",
            "/28 prefix"
        ));
        assert!(v.config.bgp_advertisements.is_empty());
        // Aggregating to the pool's own prefix, or longer, is fine.
        assert!(check(&["198.51.100.0/28"], 28, 128).errors.is_empty());
        assert!(check(&["198.51.100.0/28"], 30, 128).errors.is_empty());
        // A range counts by the widest CIDR of its exact cover: .200-.250 holds two /28s.
        assert!(
            check(&["192.0.2.200-192.0.2.250"], 28, 128)
                .errors
                .is_empty()
        );
        let v = check(&["192.0.2.200-192.0.2.250"], 27, 128);
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.aggregationLength",
            "/28 prefix"
        ));
        // IPv6 entries are held to aggregationLengthV6.
        let v = check(&["2001:db8::/120"], 32, 112);
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.aggregationLengthV6",
            "/120 prefix"
        ));
        assert!(check(&["2001:db8::/120"], 32, 124).errors.is_empty());
    }

    #[test]
    fn conflicting_local_pref_for_the_same_routes_is_refused() {
        let adv = |name: &str, pref: i64, f: &dyn Fn(&mut BGPAdvertisementSpec)| {
            let mut spec = BGPAdvertisementSpec {
                local_pref: Some(pref),
                ..Default::default()
            };
            f(&mut spec);
            bgp_adv(name, spec)
        };
        let check = |a: crd::BGPAdvertisement, b: crd::BGPAdvertisement| {
            validate(&Sources {
                pools: vec![pool("p", &["198.51.100.0/24"])],
                peers: vec![peer("r1"), peer("r2")],
                bgp_advertisements: vec![a, b],
                ..Default::default()
            })
        };
        let none = |_: &mut BGPAdvertisementSpec| {};
        let v = check(adv("a", 100, &none), adv("b", 200, &none));
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "b",
            "spec.localPref",
            "BGPAdvertisement/a's 100"
        ));
        assert!(v.config.bgp_advertisements.contains_key("a"));
        assert!(!v.config.bgp_advertisements.contains_key("b"));
        // Equal values agree.
        assert!(
            check(adv("a", 100, &none), adv("b", 100, &none))
                .errors
                .is_empty()
        );
        // Different aggregation: different routes.
        let agg = |s: &mut BGPAdvertisementSpec| s.aggregation_length = Some(24);
        assert!(
            check(adv("a", 100, &none), adv("b", 200, &agg))
                .errors
                .is_empty()
        );
        // Disjoint peer lists: different sessions. An empty list means every peer, so it meets any list.
        let r1 = |s: &mut BGPAdvertisementSpec| s.peers = Some(vec!["r1".into()]);
        let r2 = |s: &mut BGPAdvertisementSpec| s.peers = Some(vec!["r2".into()]);
        assert!(
            check(adv("a", 100, &r1), adv("b", 200, &r2))
                .errors
                .is_empty()
        );
        assert!(
            !check(adv("a", 100, &none), adv("b", 200, &r2))
                .errors
                .is_empty()
        );
        // Service selectors exempt an advertisement, as in MetalLB.
        let services = |s: &mut BGPAdvertisementSpec| {
            s.service_selectors = Some(vec![LabelSelector {
                match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..Default::default()
            }])
        };
        assert!(
            check(adv("a", 100, &none), adv("b", 200, &services))
                .errors
                .is_empty()
        );
        // Different node selectors: a configuration alone cannot tell the nodes apart, so no verdict.
        let zone = |z: &'static str| {
            move |s: &mut BGPAdvertisementSpec| {
                s.node_selectors = Some(vec![LabelSelector {
                    match_labels: Some([("zone".to_owned(), z.to_owned())].into()),
                    ..Default::default()
                }])
            }
        };
        assert!(
            check(adv("a", 100, &zone("x")), adv("b", 200, &zone("y")))
                .errors
                .is_empty()
        );
        assert!(
            !check(adv("a", 100, &zone("x")), adv("b", 200, &zone("x")))
                .errors
                .is_empty()
        );
    }

    #[test]
    fn bfd_echo_toward_a_peer_that_gets_ipv6_routes_is_refused() {
        let check = |echo: bool, addresses: &[&str]| {
            let mut p = peer("r1");
            p.spec.bfd_profile = Some("fast".into());
            validate(&Sources {
                pools: vec![pool("p", addresses)],
                peers: vec![p],
                bfd_profiles: vec![crd::BFDProfile {
                    metadata: meta("fast"),
                    spec: BFDProfileSpec {
                        echo_mode: Some(echo),
                        ..Default::default()
                    },
                    status: None,
                }],
                bgp_advertisements: vec![bgp_adv("adv", BGPAdvertisementSpec::default())],
                ..Default::default()
            })
        };
        let v = check(true, &["2001:db8::/120"]);
        assert!(has(
            &v.errors,
            "BGPAdvertisement",
            "adv",
            "spec.peers",
            "BFDProfile/fast with echo mode"
        ));
        assert!(check(false, &["2001:db8::/120"]).errors.is_empty());
        assert!(check(true, &["198.51.100.0/24"]).errors.is_empty());
    }
}
