//! `IPAddressPool`: each `spec.addresses` entry parses as a CIDR or a range, the ranges of one pool do not overlap,
//! no pool overlaps an older one, and `spec.serviceAllocation` compiles.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Findings, Named, Validated};
use crate::config::crd;
use crate::config::model::{IpRange, Labels, Pool, RangeError, ServiceAllocation, to_u128};

/// Why a `spec.addresses` entry is not a range, or why a pool's entries do not form a set of disjoint ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{text:?}: {bound} {value:?} is not an IP address")]
    NotAnAddress {
        text: String,
        /// `start` or `end`.
        bound: &'static str,
        value: String,
    },
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("{text:?} is an address, not a CIDR: write {text}/32 (IPv4) or {text}/128 (IPv6)")]
    NotACidr { text: String },
    #[error(
        "{text:?} is neither a CIDR (192.0.2.0/24, 2001:db8::/64) nor a range (192.0.2.10-192.0.2.20)"
    )]
    Unrecognised { text: String },
    #[error("{range} overlaps {other} of the same pool")]
    Overlap { range: IpRange, other: IpRange },
}

/// Parses one `spec.addresses` entry: a CIDR or an inclusive `start-end` range.
pub fn parse_address(text: &str) -> Result<IpRange, AddressError> {
    if let Some((start, end)) = text.split_once('-') {
        let ip = |s: &str, bound: &'static str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| AddressError::NotAnAddress {
                    text: text.to_string(),
                    bound,
                    value: s.trim().to_string(),
                })
        };
        return Ok(IpRange::new(ip(start, "start")?, ip(end, "end")?)?);
    }
    match text.trim().parse::<IpNet>() {
        Ok(net) => Ok(IpRange::from_cidr(net.trunc())),
        Err(_) if text.trim().parse::<IpAddr>().is_ok() => Err(AddressError::NotACidr {
            text: text.to_string(),
        }),
        Err(_) => Err(AddressError::Unrecognised {
            text: text.to_string(),
        }),
    }
}

/// Sorts ranges and merges adjacent ones; overlapping ranges are an error naming both.
fn merge_ranges(mut ranges: Vec<IpRange>) -> Result<Vec<IpRange>, AddressError> {
    ranges.sort();
    let mut merged: Vec<IpRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = merged.last_mut() {
            if last.overlaps(&r) {
                return Err(AddressError::Overlap {
                    range: r,
                    other: *last,
                });
            }
            if last.family() == r.family() && to_u128(last.end()) + 1 == to_u128(r.start()) {
                *last = IpRange::new(last.start(), r.end())?;
                continue;
            }
        }
        merged.push(r);
    }
    Ok(merged)
}

/// Validates pools; returns the labels of the accepted ones, for advertisement pool selectors.
pub(super) fn pools(
    objects: &[Named<crd::IPAddressPool>],
    out: &mut Validated,
) -> BTreeMap<String, Labels> {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::super::fixtures::*;
    use super::super::validate;
    use super::*;
    use crate::config::load::Sources;

    #[test]
    fn address_errors_say_what_is_wrong() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_address("192.0.2.1-nope"),
            Err(AddressError::NotAnAddress {
                text: "192.0.2.1-nope".into(),
                bound: "end",
                value: "nope".into(),
            })
        );
        assert_eq!(
            parse_address("192.0.2.9-192.0.2.1"),
            Err(AddressError::Range(RangeError::Reversed {
                start: ip("192.0.2.9"),
                end: ip("192.0.2.1"),
            }))
        );
        assert_eq!(
            parse_address("192.0.2.7"),
            Err(AddressError::NotACidr {
                text: "192.0.2.7".into()
            })
        );
        let a = IpRange::new(ip("192.0.2.0"), ip("192.0.2.9")).unwrap();
        let b = IpRange::new(ip("192.0.2.5"), ip("192.0.2.20")).unwrap();
        assert_eq!(
            merge_ranges(vec![b, a]),
            Err(AddressError::Overlap { range: b, other: a })
        );
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
}
