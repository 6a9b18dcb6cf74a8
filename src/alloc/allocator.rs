//! The [`Allocator`]: which Service holds which VIP, and the choice of a VIP for a new Service.
//!
//! It is pure state: requests in, assignments or refusals out, no I/O and no clock. The caller (the leader's status
//! writer, or `ironlb migrate`'s planner) persists the result in `status.loadBalancer.ingress`; after a restart it
//! rebuilds an allocator by [`Allocator::adopt`]ing every Service's status before it [`Allocator::allocate`]s
//! anything, so no VIP is ever handed to a second Service or moved.
//!
//! # Data structures and cost
//!
//! - `ips`: a `BTreeMap` from each held VIP to its holders (Services, their ports, the sharing key), so sharing and
//!   conflict checks are O(log n) for n held VIPs.
//! - per pool and family, a [`FreeSet`] of free address runs: the lowest free address is the first run's start,
//!   O(log k) for k runs, whatever the size of the pool (an IPv6 /64 costs one run). Addresses that `avoidBuggyIPs`
//!   forbids are dropped from the set lazily, the first time they reach its front, so each costs O(log k) once.
//! - per pool, the VIPs held under each sharing key, so a Service that may share finds the lowest compatible shared
//!   VIP by walking only the VIPs of its own key.
//!
//! An allocation thus costs O(p·(log n + log k) + s) for p pools and s VIPs with the Service's sharing key; a release
//! O(log n + log k); [`Allocator::set_pools`] O(r + n log n) for r ranges. Nothing ever scans a pool.

// A Refusal carries the Services and port it is about, as the Event needs them; it is the cold path, so its size
// does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::model::{from_u128, to_u128};
use crate::config::{Family, Pool};

use super::free_set::FreeSet;
use super::service::{LbRequest, ServiceKey, ServicePort, Sharing, Shown};

/// The VIPs a Service holds, all from one pool: one address, or one per family for dual stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub ips: Vec<IpAddr>,
    pub pool: String,
}

/// Why a Service gets no VIP (or cannot keep the one it has). Every variant names the Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{service}: {ip} is not in any pool")]
    NotInAnyPool { service: ServiceKey, ip: IpAddr },
    #[error("{service}: {ips} are not all in one pool", ips = Ips(.ips))]
    SplitAcrossPools {
        service: ServiceKey,
        ips: Vec<IpAddr>,
    },
    #[error(
        "{service}: {ip} is in use by {holder}, which does not share it with this Service ({why})"
    )]
    IpInUse {
        service: ServiceKey,
        ip: IpAddr,
        holder: ServiceKey,
        why: &'static str,
    },
    #[error("{service}: {ip} is shared with {holder}, which already uses port {port}")]
    PortConflict {
        service: ServiceKey,
        ip: IpAddr,
        holder: ServiceKey,
        port: ServicePort,
    },
    #[error("{service}: pool {} does not exist", Shown(.pool))]
    UnknownPool { service: ServiceKey, pool: String },
    #[error(
        "{service}: pool {} does not serve this Service (its serviceAllocation does not match)", Shown(.pool)
    )]
    PoolNotAllowed { service: ServiceKey, pool: String },
    #[error("{service}: {ips} are in pool {actual:?}, but the Service asks for pool {}", Shown(.pool), ips = Ips(.ips))]
    WrongPool {
        service: ServiceKey,
        ips: Vec<IpAddr>,
        pool: String,
        actual: String,
    },
    #[error("{service}: holds {ips} but asks for {requested}", ips = Ips(.ips), requested = Ips(.requested))]
    NotRequested {
        service: ServiceKey,
        ips: Vec<IpAddr>,
        requested: Vec<IpAddr>,
    },
    #[error("{service}: {ips} do not fit the Service's IP families and ipFamilyPolicy", ips = Ips(.ips))]
    FamilyMismatch {
        service: ServiceKey,
        ips: Vec<IpAddr>,
    },
    #[error("{service}: pool {pool:?} has no free {family} address")]
    PoolExhausted {
        service: ServiceKey,
        pool: String,
        family: Family,
    },
    #[error("{service}: no pool that may serve this Service has a free address of the families it needs{}",
        tried(.pools))]
    NoFreeAddress {
        service: ServiceKey,
        pools: Vec<String>,
    },
    #[error("{service}: the Service needs an {family} address, and {}", match .pool {
        Some(p) => format!("pool {p:?} has no {family} range"),
        None => format!("no pool that may serve it has both families or any {family} range"),
    })]
    FamilyUnavailable {
        service: ServiceKey,
        family: Family,
        pool: Option<String>,
    },
}

impl Refusal {
    pub fn service(&self) -> &ServiceKey {
        match self {
            Refusal::NotInAnyPool { service, .. }
            | Refusal::SplitAcrossPools { service, .. }
            | Refusal::IpInUse { service, .. }
            | Refusal::PortConflict { service, .. }
            | Refusal::UnknownPool { service, .. }
            | Refusal::PoolNotAllowed { service, .. }
            | Refusal::WrongPool { service, .. }
            | Refusal::NotRequested { service, .. }
            | Refusal::FamilyMismatch { service, .. }
            | Refusal::PoolExhausted { service, .. }
            | Refusal::NoFreeAddress { service, .. }
            | Refusal::FamilyUnavailable { service, .. } => service,
        }
    }

    /// The other Service that holds what this one asked for, when that is the reason.
    pub fn holder(&self) -> Option<&ServiceKey> {
        match self {
            Refusal::IpInUse { holder, .. } | Refusal::PortConflict { holder, .. } => Some(holder),
            _ => None,
        }
    }
}

fn tried(pools: &[String]) -> String {
    if pools.is_empty() {
        " (no pool may serve it)".into()
    } else {
        format!(" (tried {})", pools.join(", "))
    }
}

/// Comma-separated IPs, for messages.
pub struct Ips<'a>(pub &'a [IpAddr]);

impl fmt::Display for Ips<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ip) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{ip}")?;
        }
        Ok(())
    }
}

/// A Service that lost its VIPs because a pool edit took them away. The caller clears its status and emits an
/// Event with [`Eviction::reason`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    pub service: ServiceKey,
    pub ips: Vec<IpAddr>,
    /// The pool the VIPs came from.
    pub pool: String,
    pub reason: Refusal,
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "released {} (pool {:?}) after a pool change: {}",
            Ips(&self.ips),
            self.pool,
            self.reason
        )
    }
}

/// How full one family of one pool is, for the pool-usage metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    pub pool: String,
    pub family: Family,
    /// Assignable addresses: the pool's addresses of this family, minus .0/.255 ones under `avoidBuggyIPs`.
    pub size: u128,
    /// Distinct addresses held (a shared VIP counts once).
    pub used: u128,
    pub free: u128,
}

#[derive(Clone, Debug)]
struct PoolIndex {
    pool: Pool,
    /// Free addresses, indexed by [`fam`].
    free: [FreeSet; 2],
    size: [u128; 2],
    used: [u128; 2],
    /// Held VIPs of this pool by sharing key.
    shared: BTreeMap<Sharing, BTreeSet<IpAddr>>,
}

#[derive(Clone, Debug)]
struct IpHold {
    pool: String,
    sharing: Option<Sharing>,
    /// The Services on the VIP and their ports, sorted by Service. A Vec, not a map: most VIPs have one user, and
    /// an empty-but-allocated B-tree node per VIP would triple the memory of a large pool.
    users: Vec<(ServiceKey, Vec<ServicePort>)>,
}

#[derive(Clone, Debug)]
struct Held {
    /// Shared with the caller when it used the `_shared` entry points, so that a pass over every Service keeps one
    /// copy of each request.
    request: Arc<LbRequest>,
    assignment: Assignment,
}

/// VIP assignments for every Service, over a set of pools. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, PoolIndex>,
    /// The names of the pools that serve any Service (autoAssign, no serviceAllocation), in name order: the last
    /// tier of every allocation. Kept with the pools, so that an allocation does not list 10^6 pools to find them.
    open: std::sync::Arc<[String]>,
    /// The names of the autoAssign pools with a serviceAllocation, which serve only the Services they select: the
    /// first tier, filtered per Service.
    selective: std::sync::Arc<[String]>,
    ips: BTreeMap<IpAddr, IpHold>,
    services: BTreeMap<ServiceKey, Held>,
}

/// The open and the selective autoAssign pools' names (see [`Allocator::open`]), in name order.
fn auto_assign_tiers(
    pools: &BTreeMap<String, PoolIndex>,
) -> (std::sync::Arc<[String]>, std::sync::Arc<[String]>) {
    let (selective, open): (Vec<&PoolIndex>, Vec<&PoolIndex>) = pools
        .values()
        .filter(|p| p.pool.auto_assign)
        .partition(|p| p.pool.service_allocation.is_some());
    let names = |v: Vec<&PoolIndex>| v.into_iter().map(|p| p.pool.name.clone()).collect();
    (names(open), names(selective))
}

fn fam(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// An IPv4 address ending in .0 or .255, which some consumer routers' smurf protection drops.
fn buggy(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

/// Whether `pool`'s `serviceAllocation` lets it serve the Service. The namespace criteria (names or selectors,
/// either suffices) and the Service selectors must each hold when given.
fn allows(pool: &Pool, req: &LbRequest) -> bool {
    let Some(sa) = &pool.service_allocation else {
        return true;
    };
    let ns_given = !sa.namespaces.is_empty() || !sa.namespace_selectors.is_empty();
    let ns_ok = !ns_given
        || sa.namespaces.contains(&req.service.namespace)
        || sa
            .namespace_selectors
            .iter()
            .any(|s| s.matches(&req.namespace_labels));
    let svc_ok = sa.service_selectors.is_empty()
        || sa.service_selectors.iter().any(|s| s.matches(&req.labels));
    ns_ok && svc_ok
}

/// The family that makes `pools` unable to ever serve the request, whatever is free: a required family that no
/// pool has alongside the other required ones, or, for PreferDualStack, the primary family when no pool has either.
fn missing_family(pools: &[&Pool], required: &[Family], preferred: &[Family]) -> Option<Family> {
    if !required.is_empty()
        && !pools
            .iter()
            .any(|p| required.iter().all(|f| p.has_family(*f)))
    {
        return required
            .iter()
            .copied()
            .find(|f| !pools.iter().any(|p| p.has_family(*f)))
            .or(required.last().copied());
    }
    if !preferred.is_empty()
        && !pools
            .iter()
            .any(|p| preferred.iter().any(|f| p.has_family(*f)))
    {
        return preferred.first().copied();
    }
    None
}

/// Sort rank among `serviceAllocation` pools: a lower priority first, pools without one after. MetalLB reads a
/// priority of 0 as unset, and so do we.
fn priority_rank(pool: &Pool) -> (u8, i64) {
    match pool.service_allocation.as_ref().and_then(|sa| sa.priority) {
        Some(p) if p > 0 => (0, p),
        _ => (1, 0),
    }
}

impl PoolIndex {
    fn new(pool: Pool) -> PoolIndex {
        let mut free = [FreeSet::default(), FreeSet::default()];
        for range in &pool.ranges {
            free[fam(range.family())].insert_range(to_u128(range.start()), to_u128(range.end()));
        }
        let size = [pool.usable(Family::V4), pool.usable(Family::V6)];
        PoolIndex {
            pool,
            free,
            size,
            used: [0; 2],
            shared: BTreeMap::new(),
        }
    }

    /// Whether this pool hands out `ip`.
    fn offers(&self, ip: &IpAddr) -> bool {
        self.pool.contains(ip) && !(self.pool.avoid_buggy_ips && buggy(ip))
    }

    /// The lowest free address of `family`, dropping from the set the addresses it must never hand out.
    fn lowest_free(&mut self, family: Family, held: &BTreeMap<IpAddr, IpHold>) -> Option<IpAddr> {
        let free = &mut self.free[fam(family)];
        loop {
            let n = free.first()?;
            let ip = from_u128(family, n);
            // A held address can only be here if another pool overlaps this one; never hand it out twice.
            if (self.pool.avoid_buggy_ips && buggy(&ip)) || held.contains_key(&ip) {
                free.remove(n);
                continue;
            }
            return Some(ip);
        }
    }

    /// The lowest address of `family` that `req` may take: a free one, or a VIP it may share.
    fn candidate(
        &mut self,
        family: Family,
        req: &LbRequest,
        held: &BTreeMap<IpAddr, IpHold>,
    ) -> Option<IpAddr> {
        let free = self.lowest_free(family, held);
        let shared = req.sharing().and_then(|sharing| {
            self.shared.get(&sharing)?.iter().copied().find(|ip| {
                Family::of(ip) == family
                    && held
                        .get(ip)
                        .is_some_and(|hold| ports_fit(hold, req).is_ok())
            })
        });
        match (free, shared) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Whether `req`'s ports collide with those of the other holders of a VIP.
fn ports_fit(hold: &IpHold, req: &LbRequest) -> Result<(), (ServiceKey, ServicePort)> {
    for (user, ports) in &hold.users {
        if *user == req.service {
            continue;
        }
        if let Some(p) = req.ports.iter().find(|p| ports.contains(p)) {
            return Err((user.clone(), p.clone()));
        }
    }
    Ok(())
}

impl Allocator {
    pub fn new(pools: impl IntoIterator<Item = Pool>) -> Allocator {
        let pools = pools
            .into_iter()
            .map(|p| (p.name.clone(), PoolIndex::new(p)))
            .collect();
        let (open, selective) = auto_assign_tiers(&pools);
        Allocator {
            open,
            selective,
            pools,
            ..Allocator::default()
        }
    }

    /// What `service` holds now.
    pub fn assignment(&self, service: &ServiceKey) -> Option<&Assignment> {
        self.services.get(service).map(|h| &h.assignment)
    }

    /// Every assignment, in Service order.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &Assignment)> {
        self.services.iter().map(|(k, h)| (k, &h.assignment))
    }

    /// The Services holding `ip`, in name order.
    pub fn holders(&self, ip: &IpAddr) -> Vec<&ServiceKey> {
        self.ips
            .get(ip)
            .map(|h| h.users.iter().map(|(k, _)| k).collect())
            .unwrap_or_default()
    }

    /// The pool that hands out `ip`, if any.
    pub fn pool_of(&self, ip: &IpAddr) -> Option<&str> {
        self.pools
            .values()
            .find(|p| p.offers(ip))
            .map(|p| p.pool.name.as_str())
    }

    /// Usage of every pool, one row per family the pool has, in pool name order.
    pub fn usage(&self) -> Vec<PoolUsage> {
        let mut rows = Vec::new();
        for index in self.pools.values() {
            for family in [Family::V4, Family::V6] {
                if !index.pool.has_family(family) {
                    continue;
                }
                let f = fam(family);
                rows.push(PoolUsage {
                    pool: index.pool.name.clone(),
                    family,
                    size: index.size[f],
                    used: index.used[f],
                    free: index.size[f].saturating_sub(index.used[f]),
                });
            }
        }
        rows
    }

    /// Keeps the VIPs in `req.status_ips` for the Service, if they are still valid: all in one pool that serves the
    /// Service, matching its families, its requested IPs and pool, and not conflicting with a VIP adopted before.
    /// `Ok(None)` when the status holds no IP. On refusal nothing changes.
    ///
    /// Call it for every Service before the first [`Allocator::allocate`]: an allocation made before all adoptions
    /// could take a VIP that a not-yet-adopted Service still uses.
    pub fn adopt(&mut self, req: &LbRequest) -> Result<Option<Assignment>, Refusal> {
        if req.status_ips.is_empty() {
            return Ok(None);
        }
        self.adopt_shared(&Arc::new(req.clone()))
    }

    /// [`Allocator::adopt`], keeping `req` itself rather than a copy.
    pub fn adopt_shared(&mut self, req: &Arc<LbRequest>) -> Result<Option<Assignment>, Refusal> {
        if req.status_ips.is_empty() {
            return Ok(None);
        }
        let pool = self.check(req, &req.status_ips)?;
        self.release(&req.service);
        Ok(Some(self.register(req, req.status_ips.clone(), pool)))
    }

    /// Gives the Service its VIPs, keeping what it holds when that is still valid for `req` (so calling it again
    /// changes nothing), and choosing anew when the request changed (other requested IPs, another pool, ...).
    ///
    /// The order of choice: the requested IPs; else the annotated pool; else the `serviceAllocation` pools that
    /// match the Service, by priority; else the other `autoAssign` pools. Ties break in pool name order, and a pool
    /// gives its lowest free address (or the lowest VIP the Service may share).
    pub fn allocate(&mut self, req: &LbRequest) -> Result<Assignment, Refusal> {
        self.allocate_shared(&Arc::new(req.clone()))
    }

    /// [`Allocator::allocate`], keeping `req` itself rather than a copy.
    pub fn allocate_shared(&mut self, req: &Arc<LbRequest>) -> Result<Assignment, Refusal> {
        if let Some(held) = self.services.get(&req.service) {
            let ips = held.assignment.ips.clone();
            match self.check(req, &ips) {
                Ok(pool) => {
                    self.release(&req.service);
                    self.register(req, ips, pool);
                    return Ok(self.complete_dual_stack(req));
                }
                // What it holds no longer fits the request: choose afresh, as MetalLB does.
                Err(_) => self.release(&req.service),
            }
        }
        if !req.requested_ips.is_empty() {
            let pool = self.check(req, &req.requested_ips)?;
            return Ok(self.register(req, req.requested_ips.clone(), pool));
        }
        let (required, preferred) = req.wanted_families();
        if let Some(name) = &req.pool {
            let Some(index) = self.pools.get(name) else {
                return Err(Refusal::UnknownPool {
                    service: req.service.clone(),
                    pool: name.clone(),
                });
            };
            if !allows(&index.pool, req) {
                return Err(Refusal::PoolNotAllowed {
                    service: req.service.clone(),
                    pool: name.clone(),
                });
            }
            if let Some(ips) = self.choose_in(name, req, &required, &preferred) {
                return Ok(self.register(req, ips, name.clone()));
            }
            let index = &self.pools[name];
            if let Some(family) = missing_family(&[&index.pool], &required, &preferred) {
                return Err(Refusal::FamilyUnavailable {
                    service: req.service.clone(),
                    family,
                    pool: Some(name.clone()),
                });
            }
            let family = required
                .iter()
                .chain(preferred.iter())
                .copied()
                .find(|f| index.pool.has_family(*f))
                .unwrap_or(Family::V4);
            return Err(Refusal::PoolExhausted {
                service: req.service.clone(),
                pool: name.clone(),
                family,
            });
        }

        let mut pinned: Vec<&PoolIndex> = self
            .selective
            .iter()
            .map(|name| &self.pools[name])
            .filter(|p| allows(&p.pool, req))
            .collect();
        pinned.sort_by_key(|p| priority_rank(&p.pool));
        let pinned: Vec<String> = pinned.into_iter().map(|p| p.pool.name.clone()).collect();
        // A pool with a serviceAllocation serves only the Services it selects, as in MetalLB.
        let open = self.open.clone();
        for tier in [&pinned[..], &open[..]] {
            if let Some((pool, ips)) = self.choose(tier, req, &required, &preferred) {
                return Ok(self.register(req, ips, pool));
            }
        }
        let tried: Vec<String> = pinned.into_iter().chain(open.iter().cloned()).collect();
        let tried_pools: Vec<&Pool> = tried.iter().map(|p| &self.pools[p].pool).collect();
        if let Some(family) = missing_family(&tried_pools, &required, &preferred)
            && !tried_pools.is_empty()
        {
            return Err(Refusal::FamilyUnavailable {
                service: req.service.clone(),
                family,
                pool: None,
            });
        }
        Err(Refusal::NoFreeAddress {
            service: req.service.clone(),
            pools: tried,
        })
    }

    /// Frees the Service's VIPs (a shared VIP stays held by its other Services). Unknown Services are ignored.
    pub fn release(&mut self, service: &ServiceKey) {
        let Some(held) = self.services.remove(service) else {
            return;
        };
        for ip in held.assignment.ips {
            self.drop_user(&ip, service, true);
        }
    }

    /// Replaces the pools. A Service keeps its VIPs unless they left every pool, or their pool may no longer serve
    /// it (serviceAllocation, its named pool, `avoidBuggyIPs`); those Services lose them and are returned, in
    /// Service order. Nothing else moves, even when a better pool appears.
    pub fn set_pools(&mut self, pools: impl IntoIterator<Item = Pool>) -> Vec<Eviction> {
        self.pools = pools
            .into_iter()
            .map(|p| (p.name.clone(), PoolIndex::new(p)))
            .collect();
        (self.open, self.selective) = auto_assign_tiers(&self.pools);
        let mut evictions = Vec::new();
        let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
        for key in &keys {
            let held = &self.services[key];
            if let Err(reason) = self.check(&held.request, &held.assignment.ips) {
                let held = self.services.remove(key).expect("key taken from the map");
                for ip in &held.assignment.ips {
                    self.drop_user(ip, key, false);
                }
                evictions.push(Eviction {
                    service: key.clone(),
                    ips: held.assignment.ips,
                    pool: held.assignment.pool,
                    reason,
                });
            }
        }
        // The fresh pool indexes have every address free: take out what is held, and re-point the holds.
        for (ip, hold) in self.ips.iter_mut() {
            let Some(index) = self.pools.values_mut().find(|p| p.offers(ip)) else {
                continue; // unreachable: every survivor passed `check`
            };
            hold.pool = index.pool.name.clone();
            index.free[fam(Family::of(ip))].remove(to_u128(*ip));
            index.used[fam(Family::of(ip))] += 1;
            if let Some(sharing) = &hold.sharing {
                index.shared.entry(sharing.clone()).or_default().insert(*ip);
            }
        }
        for held in self.services.values_mut() {
            if let Some(hold) = held.assignment.ips.first().and_then(|ip| self.ips.get(ip)) {
                held.assignment.pool = hold.pool.clone();
            }
        }
        evictions
    }

    /// Whether `ips` may be held by the Service of `req`, and from which pool.
    fn check(&self, req: &LbRequest, ips: &[IpAddr]) -> Result<String, Refusal> {
        let service = || req.service.clone();
        let mut pool: Option<&PoolIndex> = None;
        for ip in ips {
            let Some(p) = self.pools.values().find(|p| p.offers(ip)) else {
                return Err(Refusal::NotInAnyPool {
                    service: service(),
                    ip: *ip,
                });
            };
            if pool.is_some_and(|q| q.pool.name != p.pool.name) {
                return Err(Refusal::SplitAcrossPools {
                    service: service(),
                    ips: ips.to_vec(),
                });
            }
            pool = Some(p);
        }
        let Some(pool) = pool else {
            return Err(Refusal::FamilyMismatch {
                service: service(),
                ips: vec![],
            });
        };
        let name = pool.pool.name.clone();
        if !allows(&pool.pool, req) {
            return Err(Refusal::PoolNotAllowed {
                service: service(),
                pool: name,
            });
        }
        let families: BTreeSet<Family> = ips.iter().map(Family::of).collect();
        let (required, preferred) = req.wanted_families();
        let fits = families.len() == ips.len()
            && required.iter().all(|f| families.contains(f))
            && families
                .iter()
                .all(|f| required.contains(f) || preferred.contains(f));
        if !fits {
            return Err(Refusal::FamilyMismatch {
                service: service(),
                ips: ips.to_vec(),
            });
        }
        if let Some(wanted) = &req.pool
            && *wanted != name
        {
            return Err(Refusal::WrongPool {
                service: service(),
                ips: ips.to_vec(),
                pool: wanted.clone(),
                actual: name,
            });
        }
        if !req.requested_ips.is_empty() {
            let requested: BTreeSet<&IpAddr> = req.requested_ips.iter().collect();
            if requested != ips.iter().collect() {
                return Err(Refusal::NotRequested {
                    service: service(),
                    ips: ips.to_vec(),
                    requested: req.requested_ips.clone(),
                });
            }
        }
        for ip in ips {
            self.check_sharing(req, ip)?;
        }
        Ok(name)
    }

    fn check_sharing(&self, req: &LbRequest, ip: &IpAddr) -> Result<(), Refusal> {
        let Some(hold) = self.ips.get(ip) else {
            return Ok(());
        };
        let Some(other) = hold
            .users
            .iter()
            .map(|(k, _)| k)
            .find(|u| **u != req.service)
        else {
            return Ok(()); // the Service alone holds it and may change how it shares it
        };
        let why = match (&hold.sharing, req.sharing()) {
            (None, _) => Some("it does not allow sharing"),
            (_, None) => Some("this Service does not allow sharing"),
            (Some(a), Some(b)) if a.key != b.key => Some("their sharing keys differ"),
            (Some(a), Some(b)) if a.backend != b.backend => Some(
                "externalTrafficPolicy Local requires the same traffic policy and pod selector",
            ),
            _ => None,
        };
        if let Some(why) = why {
            return Err(Refusal::IpInUse {
                service: req.service.clone(),
                ip: *ip,
                holder: other.clone(),
                why,
            });
        }
        ports_fit(hold, req).map_err(|(holder, port)| Refusal::PortConflict {
            service: req.service.clone(),
            ip: *ip,
            holder,
            port,
        })
    }

    /// The first pool of `pools` (in order) that satisfies the families: every required one, else both preferred,
    /// else the primary one alone, else the secondary one alone (MetalLB's PreferDualStack fallback).
    fn choose(
        &mut self,
        pools: &[String],
        req: &LbRequest,
        required: &[Family],
        preferred: &[Family],
    ) -> Option<(String, Vec<IpAddr>)> {
        if preferred.is_empty() {
            return pools
                .iter()
                .find_map(|p| Some((p.clone(), self.pick(p, req, required)?)));
        }
        for families in [preferred, &preferred[..1], &preferred[1..]] {
            if let Some(found) = pools
                .iter()
                .find_map(|p| Some((p.clone(), self.pick(p, req, families)?)))
            {
                return Some(found);
            }
        }
        None
    }

    fn choose_in(
        &mut self,
        pool: &str,
        req: &LbRequest,
        required: &[Family],
        preferred: &[Family],
    ) -> Option<Vec<IpAddr>> {
        self.choose(&[pool.to_string()], req, required, preferred)
            .map(|(_, ips)| ips)
    }

    /// One address of each of `families` from `pool`, or `None` if any family has none.
    fn pick(&mut self, pool: &str, req: &LbRequest, families: &[Family]) -> Option<Vec<IpAddr>> {
        let index = self.pools.get_mut(pool)?;
        families
            .iter()
            .map(|&f| index.candidate(f, req, &self.ips))
            .collect()
    }

    /// PreferDualStack Service holding one family: add the other from the same pool when it has one free, as MetalLB
    /// does, never moving the address it has.
    fn complete_dual_stack(&mut self, req: &Arc<LbRequest>) -> Assignment {
        let held = &self.services[&req.service].assignment;
        let (_, preferred) = req.wanted_families();
        if preferred.is_empty() || held.ips.len() != 1 || !req.requested_ips.is_empty() {
            return held.clone();
        }
        let (pool, have) = (held.pool.clone(), Family::of(&held.ips[0]));
        let missing = if have == Family::V4 {
            Family::V6
        } else {
            Family::V4
        };
        let mut ips = held.ips.clone();
        match self.pick(&pool, req, &[missing]) {
            Some(more) => {
                ips.extend(more);
                // Keep the Service's primary family first.
                ips.sort_by_key(|ip| Family::of(ip) != preferred[0]);
                self.release(&req.service);
                self.register(req, ips, pool)
            }
            None => self.services[&req.service].assignment.clone(),
        }
    }

    /// Records the assignment; the caller checked it.
    fn register(&mut self, req: &Arc<LbRequest>, ips: Vec<IpAddr>, pool: String) -> Assignment {
        let sharing = req.sharing();
        for ip in &ips {
            let index = self.pools.get_mut(&pool);
            let hold = self.ips.entry(*ip).or_insert_with(|| IpHold {
                pool: pool.clone(),
                sharing: None,
                users: Vec::new(),
            });
            if let Some(index) = index {
                if hold.users.is_empty() {
                    index.free[fam(Family::of(ip))].remove(to_u128(*ip));
                    index.used[fam(Family::of(ip))] += 1;
                }
                if hold.sharing != sharing {
                    if let Some(old) = &hold.sharing
                        && let Some(set) = index.shared.get_mut(old)
                    {
                        set.remove(ip);
                    }
                    if let Some(new) = &sharing {
                        index.shared.entry(new.clone()).or_default().insert(*ip);
                    }
                }
            }
            hold.sharing = sharing.clone();
            match hold.users.binary_search_by(|(k, _)| k.cmp(&req.service)) {
                Ok(i) => hold.users[i].1 = req.ports.clone(),
                Err(i) => hold
                    .users
                    .insert(i, (req.service.clone(), req.ports.clone())),
            }
        }
        let assignment = Assignment { ips, pool };
        self.services.insert(
            req.service.clone(),
            Held {
                request: Arc::clone(req),
                assignment: assignment.clone(),
            },
        );
        assignment
    }

    /// Removes one user of `ip`; when it was the last, the address goes back to its pool (if `to_pool`).
    fn drop_user(&mut self, ip: &IpAddr, service: &ServiceKey, to_pool: bool) {
        let Some(hold) = self.ips.get_mut(ip) else {
            return;
        };
        hold.users.retain(|(k, _)| k != service);
        if !hold.users.is_empty() {
            return;
        }
        let hold = self.ips.remove(ip).expect("present above");
        if !to_pool {
            return;
        }
        if let Some(index) = self.pools.get_mut(&hold.pool) {
            if let Some(sharing) = &hold.sharing
                && let Some(set) = index.shared.get_mut(sharing)
            {
                set.remove(ip);
                if set.is_empty() {
                    index.shared.remove(sharing);
                }
            }
            let f = fam(Family::of(ip));
            index.used[f] = index.used[f].saturating_sub(1);
            if index.offers(ip) {
                index.free[f].insert(to_u128(*ip));
            }
        }
    }
}

/// Builders for pools, shared by the tests of every allocation module.
#[cfg(test)]
pub(crate) mod testing {
    use crate::config::{IpRange, Pool, Selector, ServiceAllocation};

    /// An auto-assign pool over `ranges`, each a CIDR or `start-end`.
    pub fn pool(name: &str, ranges: &[&str]) -> Pool {
        let mut ranges: Vec<IpRange> = ranges
            .iter()
            .map(|r| match r.split_once('-') {
                Some((a, b)) => IpRange::new(a.parse().unwrap(), b.parse().unwrap()).unwrap(),
                None if r.contains('/') => IpRange::from_cidr(r.parse().unwrap()),
                None => IpRange::single(r.parse().unwrap()),
            })
            .collect();
        ranges.sort();
        Pool {
            name: name.into(),
            ranges,
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        }
    }

    pub trait PoolExt {
        fn manual(self) -> Pool;
        fn avoid_buggy(self) -> Pool;
        fn priority(self, p: i64) -> Pool;
        fn for_namespaces(self, ns: &[&str]) -> Pool;
        fn for_service_label(self, key: &str, value: &str) -> Pool;
        fn for_namespace_label(self, key: &str, value: &str) -> Pool;
    }

    fn sa(p: &mut Pool) -> &mut ServiceAllocation {
        p.service_allocation.get_or_insert_with(Default::default)
    }

    impl PoolExt for Pool {
        fn manual(mut self) -> Pool {
            self.auto_assign = false;
            self
        }
        fn avoid_buggy(mut self) -> Pool {
            self.avoid_buggy_ips = true;
            self
        }
        fn priority(mut self, p: i64) -> Pool {
            sa(&mut self).priority = Some(p);
            self
        }
        fn for_namespaces(mut self, ns: &[&str]) -> Pool {
            sa(&mut self).namespaces = ns.iter().map(|n| n.to_string()).collect();
            self
        }
        fn for_service_label(mut self, key: &str, value: &str) -> Pool {
            let labels = [(key.to_string(), value.to_string())].into();
            sa(&mut self)
                .service_selectors
                .push(Selector::from_labels(&labels));
            self
        }
        fn for_namespace_label(mut self, key: &str, value: &str) -> Pool {
            let labels = [(key.to_string(), value.to_string())].into();
            sa(&mut self)
                .namespace_selectors
                .push(Selector::from_labels(&labels));
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::alloc::service::testing::*;
    use crate::config::Labels;

    fn ips(a: &Result<Assignment, Refusal>) -> Vec<String> {
        a.as_ref()
            .expect("assigned")
            .ips
            .iter()
            .map(|i| i.to_string())
            .collect()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", name)
    }

    #[test]
    fn lowest_free_address_first_and_reused_after_release() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/30"])]);
        for (n, want) in ["x", "y", "z"]
            .iter()
            .zip(["192.0.2.0", "192.0.2.1", "192.0.2.2"])
        {
            assert_eq!(ips(&a.allocate(&req(svc(n)))), vec![want]);
        }
        a.release(&key("y"));
        assert_eq!(ips(&a.allocate(&req(svc("w")))), vec!["192.0.2.1"]);
        assert_eq!(ips(&a.allocate(&req(svc("v")))), vec!["192.0.2.3"]);
        assert!(matches!(
            a.allocate(&req(svc("u"))),
            Err(Refusal::NoFreeAddress { pools, .. }) if pools == ["p"]
        ));
    }

    #[test]
    fn allocate_is_idempotent() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/29"])]);
        let r = req(svc("x").port(80));
        let first = a.allocate(&r).unwrap();
        assert_eq!(a.allocate(&r).unwrap(), first);
        assert_eq!(a.assignment(&key("x")), Some(&first));
        assert_eq!(a.usage()[0].used, 1);
    }

    #[test]
    fn requested_ip_is_honoured_or_refused_with_the_reason() {
        let mut a = Allocator::new([
            pool("p", &["192.0.2.0/29"]),
            pool("q", &["198.51.100.0/29"]).manual(),
        ]);
        assert_eq!(
            ips(&a.allocate(&req(svc("x").lb_ip("192.0.2.5")))),
            vec!["192.0.2.5"]
        );
        // A requested IP may come from a pool that is not auto-assigned.
        assert_eq!(
            ips(&a.allocate(&req(svc("m").lb_ips("198.51.100.3")))),
            vec!["198.51.100.3"]
        );
        assert_eq!(
            a.allocate(&req(svc("y").lb_ip("192.0.2.5"))),
            Err(Refusal::IpInUse {
                service: key("y"),
                ip: ip("192.0.2.5"),
                holder: key("x"),
                why: "it does not allow sharing"
            })
        );
        assert_eq!(
            a.allocate(&req(svc("z").lb_ip("203.0.113.250"))),
            Err(Refusal::NotInAnyPool {
                service: key("z"),
                ip: ip("203.0.113.250")
            })
        );
        let e = a
            .allocate(&req(svc("w").lb_ip("192.0.2.6").pool("q")))
            .unwrap_err();
        assert!(matches!(e, Refusal::WrongPool { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "default/w: 192.0.2.6 are in pool \"p\", but the Service asks for pool \"q\""
        );
    }

    #[test]
    fn changing_the_requested_ip_moves_the_service() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/29"])]);
        a.allocate(&req(svc("x"))).unwrap();
        assert_eq!(
            ips(&a.allocate(&req(svc("x").lb_ip("192.0.2.4")))),
            vec!["192.0.2.4"]
        );
        assert!(a.holders(&ip("192.0.2.0")).is_empty());
        assert_eq!(
            ips(&a.allocate(&req(svc("x").pool("p")))),
            vec!["192.0.2.4"]
        );
    }

    #[test]
    fn annotated_pool_is_used_and_must_exist_and_allow_the_service() {
        let mut a = Allocator::new([
            pool("a", &["192.0.2.0/30"]),
            pool("b", &["198.51.100.0/30"]).manual(),
            pool("c", &["203.0.113.0/30"])
                .manual()
                .for_namespaces(&["prod"]),
        ]);
        assert_eq!(
            ips(&a.allocate(&req(svc("x").pool("b")))),
            vec!["198.51.100.0"]
        );
        assert_eq!(
            a.allocate(&req(svc("y").pool("nope"))),
            Err(Refusal::UnknownPool {
                service: key("y"),
                pool: "nope".into()
            })
        );
        assert_eq!(
            a.allocate(&req(svc("y").pool("c"))),
            Err(Refusal::PoolNotAllowed {
                service: key("y"),
                pool: "c".into()
            })
        );
        assert_eq!(
            ips(&a.allocate(&req(svc("y").ns("prod").pool("c")))),
            vec!["203.0.113.0"]
        );
        // Manual pools are never picked automatically.
        assert_eq!(ips(&a.allocate(&req(svc("z")))), vec!["192.0.2.0"]);
    }

    #[test]
    fn annotated_pool_exhaustion_and_missing_family_are_told_apart() {
        let mut a = Allocator::new([pool("a", &["192.0.2.1"])]);
        a.allocate(&req(svc("x").pool("a"))).unwrap();
        assert_eq!(
            a.allocate(&req(svc("y").pool("a"))),
            Err(Refusal::PoolExhausted {
                service: key("y"),
                pool: "a".into(),
                family: Family::V4
            })
        );
        assert_eq!(
            a.allocate(&req(svc("z").pool("a").stack("SingleStack", &["IPv6"]))),
            Err(Refusal::FamilyUnavailable {
                service: key("z"),
                family: Family::V6,
                pool: Some("a".into())
            })
        );
    }

    #[test]
    fn matching_service_allocation_pools_come_first_by_priority_then_name() {
        let mut a = Allocator::new([
            pool("open", &["203.0.113.192/30"]),
            pool("p-none", &["203.0.113.64/30"]).for_namespaces(&["prod"]),
            pool("p2", &["203.0.113.0/30"])
                .for_namespaces(&["prod"])
                .priority(2),
            pool("p1", &["198.51.100.0/31"])
                .for_namespaces(&["prod"])
                .priority(1),
            pool("p1b", &["203.0.113.128/32"])
                .for_namespaces(&["prod"])
                .priority(1),
        ]);
        let got: Vec<_> = (0..6)
            .map(|i| {
                a.allocate(&req(svc(&format!("s{i}")).ns("prod")))
                    .unwrap()
                    .pool
            })
            .collect();
        // p1 (two addresses), then p1b (same priority, later name), then p2, ...
        assert_eq!(got, ["p1", "p1", "p1b", "p2", "p2", "p2"]);
        // A Service of another namespace never gets a serviceAllocation pool.
        assert_eq!(a.allocate(&req(svc("other"))).unwrap().pool, "open");
    }

    #[test]
    fn service_allocation_pools_are_exclusive() {
        let mut a = Allocator::new([
            pool("a", &["192.0.2.0/32"]).for_service_label("team", "blue"),
            pool("b", &["198.51.100.0/32"]).for_namespace_label("env", "prod"),
        ]);
        let e = a.allocate(&req(svc("x"))).unwrap_err();
        assert_eq!(
            e,
            Refusal::NoFreeAddress {
                service: key("x"),
                pools: vec![]
            }
        );
        assert_eq!(
            a.allocate(&req(svc("y").label("team", "blue")))
                .unwrap()
                .pool,
            "a"
        );
        let prod: Labels = [("env".to_string(), "prod".to_string())].into();
        let r = LbRequest::from_service(&svc("z").ns("p"), &prod, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.allocate(&r).unwrap().pool, "b");
        // Requesting an IP of a pool that does not serve the Service is refused too.
        assert!(matches!(
            a.allocate(&req(svc("w").lb_ip("198.51.100.0"))),
            Err(Refusal::PoolNotAllowed { .. })
        ));
    }

    #[test]
    fn pools_without_priority_order_by_name() {
        let mut a = Allocator::new([
            pool("b", &["192.0.2.0/32"]),
            pool("a", &["198.51.100.0/32"]),
        ]);
        assert_eq!(a.allocate(&req(svc("x"))).unwrap().pool, "a");
        assert_eq!(a.allocate(&req(svc("y"))).unwrap().pool, "b");
    }

    #[test]
    fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
        // Two ranges, so that both a .255 and a .0 are in the pool (no two documentation /24s are adjacent).
        let mut a = Allocator::new([pool(
            "p",
            &["192.0.2.254-192.0.2.255", "198.51.100.0-198.51.100.1"],
        )
        .avoid_buggy()]);
        assert_eq!(ips(&a.allocate(&req(svc("x")))), vec!["192.0.2.254"]);
        assert_eq!(ips(&a.allocate(&req(svc("y")))), vec!["198.51.100.1"]);
        assert!(a.allocate(&req(svc("z"))).is_err());
        assert!(matches!(
            a.allocate(&req(svc("w").lb_ip("198.51.100.0"))),
            Err(Refusal::NotInAnyPool { .. })
        ));
        assert_eq!(
            a.usage(),
            vec![PoolUsage {
                pool: "p".into(),
                family: Family::V4,
                size: 2,
                used: 2,
                free: 0
            }]
        );
        // Released addresses come back; skipped ones stay out.
        a.release(&key("x"));
        assert_eq!(ips(&a.allocate(&req(svc("z")))), vec!["192.0.2.254"]);
    }

    #[test]
    fn services_with_one_sharing_key_share_the_lowest_vip_when_ports_differ() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/29"])]);
        let tcp = a.allocate(&req(svc("tcp").share("k").port(53))).unwrap();
        let udp = a
            .allocate(&req(svc("udp").share("k").proto_port("UDP", 53)))
            .unwrap();
        assert_eq!(tcp.ips, udp.ips);
        assert_eq!(a.holders(&tcp.ips[0]), vec![&key("tcp"), &key("udp")]);
        // Same port: a new address, or a refusal naming the holder and port when the IP is requested.
        assert_eq!(
            ips(&a.allocate(&req(svc("dup").share("k").port(53)))),
            vec!["192.0.2.1"]
        );
        assert_eq!(
            a.allocate(&req(svc("dup2").share("k").port(53).lb_ip("192.0.2.0"))),
            Err(Refusal::PortConflict {
                service: key("dup2"),
                ip: ip("192.0.2.0"),
                holder: key("tcp"),
                port: ServicePort {
                    protocol: "TCP".into(),
                    port: 53
                }
            })
        );
        let e = a
            .allocate(&req(svc("other").share("j").port(1).lb_ip("192.0.2.0")))
            .unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::IpInUse {
                    why: "their sharing keys differ",
                    ..
                }
            ),
            "{e}"
        );
        // The VIP stays held while one sharer remains.
        a.release(&key("tcp"));
        assert_eq!(a.holders(&ip("192.0.2.0")), vec![&key("udp")]);
        assert_eq!(a.usage()[0].used, 2);
    }

    #[test]
    fn local_services_share_only_with_the_same_selector() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/29"])]);
        let web = a
            .allocate(&req(svc("a").share("k").local("web").port(80)))
            .unwrap();
        let same = a
            .allocate(&req(svc("b").share("k").local("web").port(443)))
            .unwrap();
        assert_eq!(web.ips, same.ips);
        let other = a
            .allocate(&req(svc("c").share("k").local("db").port(5432)))
            .unwrap();
        assert_ne!(other.ips, web.ips);
        let e = a
            .allocate(&req(svc("d")
                .share("k")
                .local("db")
                .port(1)
                .lb_ip("192.0.2.0")))
            .unwrap_err();
        assert!(matches!(e, Refusal::IpInUse { .. }), "{e}");
        // A Cluster Service does not join a Local VIP either.
        let e = a
            .allocate(&req(svc("e").share("k").port(2).lb_ip("192.0.2.0")))
            .unwrap_err();
        assert!(e.to_string().contains("pod selector"), "{e}");
    }

    #[test]
    fn dual_stack_policies() {
        let v4 = pool("a-v4", &["192.0.2.0/30"]);
        let dual = pool("b-dual", &["198.51.100.0/30", "2001:db8::/126"]);
        let mut a = Allocator::new([v4.clone(), dual.clone()]);
        assert_eq!(
            ips(&a.allocate(&req(svc("single6").stack("SingleStack", &["IPv6", "IPv4"])))),
            vec!["2001:db8::"]
        );
        let r = a.allocate(&req(svc("req").stack("RequireDualStack", &["IPv6", "IPv4"])));
        assert_eq!(ips(&r), vec!["2001:db8::1", "198.51.100.0"]);
        assert_eq!(r.unwrap().pool, "b-dual");
        let r = a.allocate(&req(svc("pref").stack("PreferDualStack", &["IPv4", "IPv6"])));
        assert_eq!(ips(&r), vec!["198.51.100.1", "2001:db8::2"]);
        // No pool with both: RequireDualStack is refused, PreferDualStack takes its primary family.
        let mut a = Allocator::new([v4.clone()]);
        assert_eq!(
            a.allocate(&req(svc("req").stack("RequireDualStack", &["IPv4", "IPv6"]))),
            Err(Refusal::FamilyUnavailable {
                service: key("req"),
                family: Family::V6,
                pool: None
            })
        );
        assert_eq!(
            ips(&a.allocate(&req(svc("pref").stack("PreferDualStack", &["IPv6", "IPv4"])))),
            vec!["192.0.2.0"]
        );
        // Once a pool edit gives the pool the other family, the Service gains it and keeps its first address.
        let mut grown = v4.clone();
        grown.ranges.push(pool("x", &["2001:db8::/126"]).ranges[0]);
        assert!(a.set_pools([grown]).is_empty());
        assert_eq!(
            ips(&a.allocate(&req(svc("pref").stack("PreferDualStack", &["IPv6", "IPv4"])))),
            vec!["2001:db8::", "192.0.2.0"]
        );
    }

    #[test]
    fn adoption_keeps_valid_status_ips_and_refuses_conflicts() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/29"])]);
        let first = req(svc("x").status(&["192.0.2.5"]));
        assert_eq!(
            a.adopt(&first).unwrap(),
            Some(Assignment {
                ips: vec![ip("192.0.2.5")],
                pool: "p".into()
            })
        );
        assert_eq!(a.adopt(&req(svc("n"))), Ok(None));
        let e = a.adopt(&req(svc("y").status(&["192.0.2.5"]))).unwrap_err();
        assert!(matches!(e, Refusal::IpInUse { .. }), "{e}");
        assert!(matches!(
            a.adopt(&req(svc("z").status(&["203.0.113.240"]))),
            Err(Refusal::NotInAnyPool { .. })
        ));
        // A changed request invalidates the old status.
        assert!(matches!(
            a.adopt(&req(svc("w").status(&["192.0.2.6"]).lb_ip("192.0.2.7"))),
            Err(Refusal::NotRequested { .. })
        ));
        // Allocation afterwards keeps the adopted address and fills the others around it.
        assert_eq!(ips(&a.allocate(&first)), vec!["192.0.2.5"]);
        assert_eq!(ips(&a.allocate(&req(svc("y")))), vec!["192.0.2.0"]);
    }

    #[test]
    fn pool_edits_evict_only_services_whose_ip_left_or_is_no_longer_allowed() {
        let mut a = Allocator::new([
            pool("a", &["192.0.2.0/29"]),
            pool("b", &["198.51.100.0/30"]),
        ]);
        for n in ["s0", "s1", "s2"] {
            a.allocate(&req(svc(n).pool("a"))).unwrap();
        }
        a.allocate(&req(svc("t").label("team", "red").pool("b")))
            .unwrap();
        // Shrink a to 192.0.2.0-192.0.2.1, split b into "b" limited to team=blue.
        let ev = a.set_pools([
            pool("a", &["192.0.2.0/31"]),
            pool("b", &["198.51.100.0/30"]).for_service_label("team", "blue"),
        ]);
        let evicted: Vec<_> = ev.iter().map(|e| e.service.name.as_str()).collect();
        assert_eq!(evicted, ["s2", "t"]);
        assert!(matches!(ev[0].reason, Refusal::NotInAnyPool { .. }));
        assert!(matches!(ev[1].reason, Refusal::PoolNotAllowed { .. }));
        assert!(ev[0].to_string().contains("192.0.2.2"), "{}", ev[0]);
        assert_eq!(
            ips(&Ok(a.assignment(&key("s1")).unwrap().clone())),
            vec!["192.0.2.1"]
        );
        assert!(a.assignment(&key("s2")).is_none());
        // The freed address of b is usable again; a is full.
        assert_eq!(a.usage()[0].used, 2);
        assert_eq!(a.usage()[1].used, 0);
        // Renaming a pool keeps its Services' addresses (and updates the pool they came from).
        let ev = a.set_pools([pool("a2", &["192.0.2.0/31"])]);
        assert_eq!(ev.len(), 2, "{ev:?}"); // s0 and s1 asked for pool a by name
        let mut a = Allocator::new([pool("a", &["192.0.2.0/31"])]);
        a.allocate(&req(svc("x"))).unwrap();
        assert!(a.set_pools([pool("a2", &["192.0.2.0/30"])]).is_empty());
        assert_eq!(a.assignment(&key("x")).unwrap().pool, "a2");
        assert_eq!(ips(&a.allocate(&req(svc("y")))), vec!["192.0.2.1"]);
    }

    #[test]
    fn turning_on_avoid_buggy_ips_evicts_dot_zero_holders() {
        let mut a = Allocator::new([pool("p", &["192.0.2.0/30"])]);
        a.allocate(&req(svc("x"))).unwrap();
        a.allocate(&req(svc("y"))).unwrap();
        let ev = a.set_pools([pool("p", &["192.0.2.0/30"]).avoid_buggy()]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].service, key("x"));
        assert_eq!(ips(&a.allocate(&req(svc("x")))), vec!["192.0.2.2"]);
    }

    #[test]
    fn huge_ipv6_pools_cost_nothing() {
        let mut a = Allocator::new([pool("v6", &["2001:db8::/64"])]);
        let r = a.allocate(&req(svc("x").stack("SingleStack", &["IPv6"])));
        assert_eq!(ips(&r), vec!["2001:db8::"]);
        let u = &a.usage()[0];
        assert_eq!((u.size, u.used, u.free), (1 << 64, 1, (1 << 64) - 1));
    }
}
