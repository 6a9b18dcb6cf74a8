//! Property tests of the allocator against an independent oracle, over random histories of pool edits, Service
//! creates, updates and deletes, restarts and leader changes.
//!
//! The harness plays the leader's controller: after every step it reconciles every Service and writes the result
//! into a simulated `status`. A restart or leader change throws the allocator away and rebuilds one from those
//! statuses alone (adopt all, then allocate), which is exactly what a new leader has to work with.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;

use crate::config::{Family, IpRange, Labels, Pool, Selector, ServiceAllocation};

use super::allocator::Allocator;
use super::service::{FamilyPolicy, LbRequest, ServiceKey, ServicePort};

const POOL_NAMES: [&str; 3] = ["a", "b", "c"];

/// Address slots a pool can own: small IPv4 ranges that straddle a .255/.0 boundary, and small IPv6 ranges.
fn slot(i: usize, len: u8) -> IpRange {
    let len = len.clamp(1, 8);
    let (start, end): (IpAddr, IpAddr) = if i < 4 {
        let s = u32::from_be_bytes([10, 0, i as u8 * 2, 252]);
        (
            IpAddr::V4(s.into()),
            IpAddr::V4((s + u32::from(len) - 1).into()),
        )
    } else {
        let s = u128::from_be_bytes([
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8, 0, 0,
        ]);
        (
            IpAddr::V6(s.into()),
            IpAddr::V6((s + u128::from(len) - 1).into()),
        )
    };
    IpRange::new(start, end).expect("slot")
}

/// Every address a Service may ask for, in or out of the slots.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    (0usize..6, 0u8..10).prop_map(|(i, k)| {
        let r = slot(i, 8);
        match r.start() {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + u32::from(k)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + u128::from(k)).into()),
        }
    })
}

#[derive(Clone, Debug)]
struct PoolAttrs {
    auto_assign: bool,
    avoid_buggy: bool,
    /// 0: no serviceAllocation; 1: namespace ns1; 2: Services labelled team=blue.
    allocation: u8,
    priority: Option<i64>,
}

fn pools_strategy() -> impl Strategy<Value = Vec<Pool>> {
    let attrs = (
        prop::bool::weighted(0.85),
        any::<bool>(),
        0u8..3,
        prop::option::of(1i64..3),
    )
        .prop_map(
            |(auto_assign, avoid_buggy, allocation, priority)| PoolAttrs {
                auto_assign,
                avoid_buggy,
                allocation,
                priority,
            },
        );
    // Each slot is owned by no pool or one of three; pools never overlap, as validation guarantees.
    let owners = prop::collection::vec((0usize..4, 1u8..9), 6);
    (owners, prop::collection::vec(attrs, 3)).prop_map(|(owners, attrs)| {
        let mut pools = Vec::new();
        for (p, name) in POOL_NAMES.iter().enumerate() {
            let mut ranges: Vec<IpRange> = owners
                .iter()
                .enumerate()
                .filter(|(_, (owner, _))| *owner == p + 1)
                .map(|(i, (_, len))| slot(i, *len))
                .collect();
            if ranges.is_empty() {
                continue;
            }
            ranges.sort();
            let a = &attrs[p];
            let service_allocation = match a.allocation {
                0 => None,
                1 => Some(ServiceAllocation {
                    priority: a.priority,
                    namespaces: vec!["ns1".into()],
                    ..Default::default()
                }),
                _ => Some(ServiceAllocation {
                    priority: a.priority,
                    service_selectors: vec![Selector::from_labels(
                        &[("team".into(), "blue".into())].into(),
                    )],
                    ..Default::default()
                }),
            };
            pools.push(Pool {
                name: name.to_string(),
                ranges,
                auto_assign: a.auto_assign,
                avoid_buggy_ips: a.avoid_buggy,
                service_allocation,
            });
        }
        pools
    })
}

/// A Service's spec, without status.
fn request_strategy(index: usize) -> impl Strategy<Value = LbRequest> {
    let ports = prop::sample::subsequence(vec![("TCP", 80), ("TCP", 443), ("UDP", 53)], 1..=2);
    let stack = prop_oneof![
        4 => Just((FamilyPolicy::SingleStack, vec![Family::V4])),
        2 => Just((FamilyPolicy::SingleStack, vec![Family::V6])),
        2 => Just((FamilyPolicy::PreferDualStack, vec![Family::V4, Family::V6])),
        1 => Just((FamilyPolicy::PreferDualStack, vec![Family::V6, Family::V4])),
        1 => Just((FamilyPolicy::RequireDualStack, vec![Family::V4, Family::V6])),
    ];
    (
        prop::option::weighted(0.2, any_ip()),
        prop::option::weighted(0.25, prop::sample::select(vec!["a", "b", "c", "zz"])),
        prop::option::weighted(0.5, prop::sample::select(vec!["k1", "k2"])),
        ports,
        prop::option::weighted(0.3, prop::sample::select(vec!["x", "y"])),
        stack,
        any::<bool>(),
    )
        .prop_map(
            move |(requested, pool, sharing, ports, local, (policy, families), blue)| {
                let requested_ips: Vec<IpAddr> = requested.into_iter().collect();
                LbRequest {
                    service: ServiceKey::new(format!("ns{}", index % 2), format!("s{index}")),
                    requested_ips,
                    pool: pool.map(str::to_string),
                    sharing_key: sharing.map(str::to_string),
                    ports: ports
                        .into_iter()
                        .map(|(protocol, port)| ServicePort {
                            protocol: protocol.into(),
                            port,
                        })
                        .collect(),
                    traffic_local: local.is_some(),
                    selector: local
                        .map(|app| [("app".to_string(), app.to_string())].into())
                        .unwrap_or_default(),
                    family_policy: policy,
                    families,
                    labels: [(
                        "team".to_string(),
                        if blue { "blue" } else { "red" }.to_string(),
                    )]
                    .into(),
                    namespace_labels: Labels::new(),
                    status_ips: vec![],
                    deprecated_annotations: vec![],
                }
            },
        )
}

const SERVICES: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    SetPools(Vec<Pool>),
    Upsert(Box<LbRequest>),
    Delete(usize),
    Restart,
    LeaderChange,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => pools_strategy().prop_map(Op::SetPools),
        6 => (0..SERVICES).prop_flat_map(request_strategy).prop_map(|r| Op::Upsert(Box::new(r))),
        2 => (0..SERVICES).prop_map(Op::Delete),
        1 => Just(Op::Restart),
        1 => Just(Op::LeaderChange),
    ]
}

// ---- The oracle: the rules restated plainly, without the allocator's indexes. ----

fn buggy(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

fn offering_pool<'a>(pools: &'a [Pool], ip: &IpAddr) -> Option<&'a Pool> {
    pools
        .iter()
        .find(|p| p.ranges.iter().any(|r| r.contains(ip)) && !(p.avoid_buggy_ips && buggy(ip)))
}

fn pool_serves(pool: &Pool, r: &LbRequest) -> bool {
    match &pool.service_allocation {
        None => true,
        Some(sa) => {
            (sa.namespaces.is_empty() || sa.namespaces.contains(&r.service.namespace))
                && (sa.service_selectors.is_empty()
                    || sa.service_selectors.iter().any(|s| s.matches(&r.labels)))
        }
    }
}

/// Whether a Service may hold `ips` under `pools`, sharing aside.
fn valid(pools: &[Pool], r: &LbRequest, ips: &[IpAddr]) -> bool {
    let Some(first) = ips.first() else {
        return false;
    };
    let Some(pool) = offering_pool(pools, first) else {
        return false;
    };
    let families: BTreeSet<Family> = ips.iter().map(Family::of).collect();
    let family_ok = families.len() == ips.len()
        && match r.family_policy {
            FamilyPolicy::SingleStack => ips.len() == 1 && families.contains(&r.families[0]),
            FamilyPolicy::PreferDualStack => true,
            FamilyPolicy::RequireDualStack => ips.len() == 2,
        };
    let requested_ok = r.requested_ips.is_empty()
        || r.requested_ips.iter().collect::<BTreeSet<_>>() == ips.iter().collect::<BTreeSet<_>>();
    ips.iter()
        .all(|ip| offering_pool(pools, ip).is_some_and(|p| p.name == pool.name))
        && pool_serves(pool, r)
        && family_ok
        && requested_ok
        && r.pool.as_ref().is_none_or(|p| *p == pool.name)
}

struct Cluster {
    pools: Vec<Pool>,
    specs: BTreeMap<usize, LbRequest>,
    status: BTreeMap<usize, Vec<IpAddr>>,
    allocator: Allocator,
}

impl Cluster {
    fn request(&self, i: usize) -> LbRequest {
        let mut r = self.specs[&i].clone();
        r.status_ips = self.status.get(&i).cloned().unwrap_or_default();
        r
    }

    /// The leader's reconcile loop over every Service, repeated as the controller retries pending Services, until
    /// nothing changes. The first pass may change what the allocator knows without changing any status (a Service
    /// that starts allowing sharing), so at least two passes run.
    fn reconcile(&mut self) {
        for pass in 0..8 {
            let before = self.status.clone();
            let keys: Vec<usize> = self.specs.keys().copied().collect();
            for i in keys {
                let r = self.request(i);
                let ips = self
                    .allocator
                    .allocate(&r)
                    .map(|a| a.ips)
                    .unwrap_or_default();
                self.status.insert(i, ips);
            }
            if pass > 0 && before == self.status {
                return;
            }
        }
    }

    /// A new leader: only the statuses survive. Adoption goes in `order`.
    fn rebuild(&mut self, reverse: bool) -> Result<(), TestCaseError> {
        self.allocator = Allocator::new(self.pools.clone());
        let mut keys: Vec<usize> = self.specs.keys().copied().collect();
        if reverse {
            keys.reverse();
        }
        let before = self.status.clone();
        for &i in &keys {
            let r = self.request(i);
            let adopted = self.allocator.adopt(&r);
            if valid(&self.pools, &r, &r.status_ips) {
                let kept = adopted
                    .as_ref()
                    .ok()
                    .and_then(|a| a.as_ref())
                    .map(|a| a.ips.clone());
                prop_assert_eq!(
                    kept,
                    Some(r.status_ips.clone()),
                    "valid status of {} not adopted",
                    r.service
                );
            }
        }
        self.reconcile();
        for i in keys {
            let r = self.request(i);
            let old = &before[&i];
            if valid(&self.pools, &r, old) {
                prop_assert!(
                    old.iter().all(|ip| self.status[&i].contains(ip)),
                    "{} moved from {:?} to {:?} across a restart",
                    r.service,
                    old,
                    self.status[&i]
                );
            }
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let mut holders: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
        for (&i, ips) in &self.status {
            let r = self.request(i);
            prop_assert_eq!(
                self.allocator
                    .assignment(&r.service)
                    .map(|a| a.ips.clone())
                    .unwrap_or_default(),
                ips.clone()
            );
            if ips.is_empty() {
                continue;
            }
            prop_assert!(
                valid(&self.pools, &r, ips),
                "{} holds {:?}, not valid under the pools",
                r.service,
                ips
            );
            for ip in ips {
                holders.entry(*ip).or_default().push(i);
            }
        }
        for (ip, users) in &holders {
            for (n, &a) in users.iter().enumerate() {
                for &b in &users[n + 1..] {
                    let (ra, rb) = (&self.specs[&a], &self.specs[&b]);
                    let (sa, sb) = (ra.sharing(), rb.sharing());
                    prop_assert!(
                        sa.is_some() && sa == sb,
                        "{ip} held by {} and {} without a common key",
                        a,
                        b
                    );
                    prop_assert!(
                        ra.ports.iter().all(|p| !rb.ports.contains(p)),
                        "{ip} shared by {a} and {b} on one port"
                    );
                }
            }
        }
        // Pool usage counts each held address once.
        for u in self.allocator.usage() {
            let held = holders
                .keys()
                .filter(|ip| {
                    Family::of(ip) == u.family
                        && offering_pool(&self.pools, ip).is_some_and(|p| p.name == u.pool)
                })
                .count() as u128;
            prop_assert_eq!(u.used, held, "usage of pool {} {}", u.pool, u.family);
            prop_assert_eq!(u.used + u.free, u.size);
        }
        Ok(())
    }
}

fn run(pools: Vec<Pool>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut c = Cluster {
        allocator: Allocator::new(pools.clone()),
        pools,
        specs: BTreeMap::new(),
        status: BTreeMap::new(),
    };
    for op in ops {
        match op {
            Op::SetPools(pools) => {
                let before = c.status.clone();
                c.pools = pools;
                let evictions = c.allocator.set_pools(c.pools.clone());
                let evicted: BTreeSet<ServiceKey> =
                    evictions.iter().map(|e| e.service.clone()).collect();
                for (&i, ips) in &before {
                    let r = c.request(i);
                    if ips.is_empty() {
                        continue;
                    }
                    // Evicted exactly when the held IPs are no longer valid for the Service.
                    prop_assert_eq!(
                        evicted.contains(&r.service),
                        !valid(&c.pools, &r, ips),
                        "eviction of {} holding {:?}",
                        r.service,
                        ips
                    );
                    if evicted.contains(&r.service) {
                        c.status.insert(i, vec![]);
                    }
                }
                c.check_invariants()?;
                c.reconcile();
                for (&i, ips) in &before {
                    if valid(&c.pools, &c.request(i), ips) {
                        prop_assert!(
                            ips.iter().all(|ip| c.status[&i].contains(ip)),
                            "pool edit moved s{i}"
                        );
                    }
                }
            }
            Op::Upsert(r) => {
                let i: usize = r.service.name[1..].parse().expect("s<n>");
                c.specs.insert(i, *r);
                c.reconcile();
            }
            Op::Delete(i) => {
                if let Some(r) = c.specs.remove(&i) {
                    c.allocator.release(&r.service);
                    c.status.remove(&i);
                }
                c.reconcile();
            }
            Op::Restart => c.rebuild(false)?,
            Op::LeaderChange => c.rebuild(true)?,
        }
        c.check_invariants()?;
        // Reconciling again changes nothing.
        let status = c.status.clone();
        c.reconcile();
        prop_assert_eq!(&status, &c.status, "reconcile is not idempotent");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn allocator_invariants_hold_over_random_histories(
        pools in pools_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..16),
    ) {
        run(pools, ops)?;
    }
}
