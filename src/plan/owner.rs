//! Owner choice in Layer 2 mode: which one node answers ARP/NDP for each [`VipGroup`].
//!
//! Every agent computes this on its own from the same groups and the same set of live agents, with no coordination,
//! so the function must be deterministic, down to the hash: [`stable_hash`] is FNV-1a 64 followed by the MurmurHash3
//! 64-bit finaliser, written out here so that no compiler, library or process seed can change it. (std's
//! `RandomState` is seeded per process, and `DefaultHasher`'s algorithm is explicitly unspecified between releases:
//! two agents built by different toolchains during a rolling upgrade would disagree, and two nodes would answer ARP.)
//!
//! The algorithm is rendezvous (highest random weight) hashing with bounded load. Groups are taken in the order of
//! the hash of their key; each goes to its highest-scoring candidate (eligible ∩ live) whose load is below the
//! capacity `ceil(G / N) + 1`, where G counts the groups with at least one candidate and N the live nodes that are a
//! candidate of at least one group. Plain rendezvous hashing moves only the groups of a node that leaves, and only
//! groups to a node that joins, but leaves loads to chance; the capacity bounds the load, and its one slot of slack
//! keeps the bound from pushing many groups off their first choice, which is what would make them move later.
//!
//! With restricted eligibility (Local Services, node selectors, subnets), all of a group's candidates may already be
//! at capacity. The group then goes to its least-loaded candidate (ties to the higher score): a group is never left
//! unowned while it has a live eligible node, and within a set of nodes that only a busy pool can use, load stays
//! level. This is the one case in which a node may exceed `ceil(G / N) + 1`.
//!
//! This module must not read the cluster: eligibility is [`super::input`]'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::input::{GroupKey, VipGroup};

/// FNV-1a 64 of `bytes`, then the MurmurHash3 `fmix64` finaliser. FNV alone mixes short keys that differ in their
/// last byte poorly; the finaliser spreads every input bit over the whole word. Fixed forever: changing it moves VIPs
/// between nodes during an upgrade.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn key_bytes(key: &GroupKey) -> Vec<u8> {
    match key.0 {
        IpAddr::V4(v4) => [&[4u8][..], &v4.octets()].concat(),
        IpAddr::V6(v6) => [&[6u8][..], &v6.octets()].concat(),
    }
}

/// The rendezvous weight of `node` for the group `key`.
pub fn score(key: &GroupKey, node: &str) -> u64 {
    let mut bytes = key_bytes(key);
    // A separator no IP encoding ends with, so that (key, node) pairs cannot collide by shifting bytes.
    bytes.push(0xff);
    bytes.extend_from_slice(node.as_bytes());
    stable_hash(&bytes)
}

/// The owner of every group that has at least one live eligible node (`l2_nodes ∩ live`). Groups without one are
/// absent. Keys are assumed unique, as [`super::input::PlanInput`] makes them; the answer does not depend on the
/// order of `groups`.
pub fn choose_owners(groups: &[VipGroup], live: &BTreeSet<String>) -> BTreeMap<GroupKey, String> {
    let mut work: Vec<(u64, GroupKey, Vec<(u64, &str)>)> = groups
        .iter()
        .filter_map(|g| {
            let mut candidates: Vec<(u64, &str)> = g
                .l2_nodes
                .iter()
                .filter(|n| live.contains(*n))
                .map(|n| (score(&g.key, n), n.as_str()))
                .collect();
            if candidates.is_empty() {
                return None;
            }
            // Highest score first; names break the (astronomically unlikely) tie.
            candidates.sort_by(|a, b| b.cmp(a));
            Some((stable_hash(&key_bytes(&g.key)), g.key, candidates))
        })
        .collect();
    work.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));

    let nodes: BTreeSet<&str> = work
        .iter()
        .flat_map(|(_, _, c)| c.iter().map(|(_, n)| *n))
        .collect();
    if nodes.is_empty() {
        return BTreeMap::new();
    }
    let capacity = capacity(work.len(), nodes.len());
    let mut load: BTreeMap<&str, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut owners = BTreeMap::new();
    for (_, key, candidates) in &work {
        let below = candidates.iter().find(|(_, n)| load[n] < capacity);
        let chosen = match below {
            Some((_, n)) => *n,
            // Every candidate is full: only possible with restricted eligibility. Level the load among them.
            None => {
                candidates
                    .iter()
                    .min_by_key(|(s, n)| (load[n], std::cmp::Reverse(*s)))
                    .expect("candidates is not empty")
                    .1
            }
        };
        *load.get_mut(chosen).expect("every candidate has a load") += 1;
        owners.insert(*key, chosen.to_string());
    }
    owners
}

/// The most groups a node takes before they spill to their next choice: `ceil(groups / nodes) + 1`.
pub fn capacity(groups: usize, nodes: usize) -> usize {
    groups.div_ceil(nodes.max(1)) + 1
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::net::Ipv4Addr;

    /// A group of one IPv4 VIP (numbered inside the documentation ranges) that may go to `nodes`.
    pub fn group(n: u32, nodes: &[&str]) -> VipGroup {
        // 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24, in turn, so that numbers up to 762 stay documentation
        // addresses.
        let base: [u8; 3] = match n / 254 {
            0 => [192, 0, 2],
            1 => [198, 51, 100],
            _ => [203, 0, 113],
        };
        let ip = IpAddr::V4(Ipv4Addr::new(
            base[0],
            base[1],
            base[2],
            (n % 254 + 1) as u8,
        ));
        VipGroup {
            key: GroupKey(ip),
            ips: vec![ip],
            services: [(
                crate::alloc::ServiceKey::new("default", format!("s{n}")),
                vec![ip],
            )]
            .into(),
            pool: "a".into(),
            traffic_local: false,
            serving_nodes: BTreeSet::new(),
            l2_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            l2_interfaces: nodes
                .iter()
                .map(|n| (n.to_string(), super::super::input::Interfaces::Any))
                .collect(),
            l2_not_announced: None,
            bgp_nodes: BTreeSet::new(),
            bgp_not_announced: None,
        }
    }

    pub fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    fn all_eligible(g: usize, nodes: &[String]) -> Vec<VipGroup> {
        let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
        (0..g as u32).map(|i| group(i, &refs)).collect()
    }

    fn loads(owners: &BTreeMap<GroupKey, String>) -> BTreeMap<&str, usize> {
        let mut l = BTreeMap::new();
        for n in owners.values() {
            *l.entry(n.as_str()).or_default() += 1;
        }
        l
    }

    fn moves(a: &BTreeMap<GroupKey, String>, b: &BTreeMap<GroupKey, String>) -> usize {
        a.iter().filter(|(k, n)| b.get(*k) != Some(*n)).count()
    }

    #[test]
    fn the_hash_is_fixed() {
        // Pinned values: if these change, every cluster reshuffles its VIPs on upgrade.
        // Values computed independently (Python) from the definition in the module docs.
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"node-1"), 0x91dd_3f4c_04e1_eb05);
    }

    #[test]
    fn groups_without_live_eligible_nodes_have_no_owner() {
        let groups = vec![group(0, &["n1"]), group(1, &[]), group(2, &["n1", "n2"])];
        let live = BTreeSet::from(["n2".to_string()]);
        let owners = choose_owners(&groups, &live);
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[&groups[2].key], "n2");
    }

    #[test]
    fn many_vips_spread_over_all_nodes() {
        let nodes = names(3);
        let live: BTreeSet<String> = nodes.iter().cloned().collect();
        let owners = choose_owners(&all_eligible(30, &nodes), &live);
        let l = loads(&owners);
        assert_eq!(l.len(), 3);
        assert!(l.values().all(|n| *n <= 11), "{l:?}");
    }

    /// G groups and N nodes, everything eligible everywhere.
    fn sizes() -> impl Strategy<Value = (usize, usize)> {
        (1usize..=80, 1usize..=12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn owners_do_not_depend_on_input_order(
            (g, n) in sizes(),
            seed in any::<u64>(),
        ) {
            let nodes = names(n);
            let live: BTreeSet<String> = nodes.iter().cloned().collect();
            let groups = all_eligible(g, &nodes);
            let mut shuffled = groups.clone();
            // A deterministic shuffle from the seed.
            shuffled.sort_by_key(|grp| stable_hash(&[&seed.to_le_bytes()[..], &key_bytes(&grp.key)].concat()));
            prop_assert_eq!(choose_owners(&groups, &live), choose_owners(&shuffled, &live));
        }

        #[test]
        fn no_node_holds_more_than_ceil_g_over_n_plus_one((g, n) in sizes()) {
            let nodes = names(n);
            let live: BTreeSet<String> = nodes.iter().cloned().collect();
            let owners = choose_owners(&all_eligible(g, &nodes), &live);
            prop_assert_eq!(owners.len(), g);
            let bound = g.div_ceil(n) + 1;
            for (node, l) in loads(&owners) {
                prop_assert!(l <= bound, "{} holds {} > {}", node, l, bound);
            }
        }

        #[test]
        fn removing_a_node_moves_its_groups_and_at_most_ceil_g_over_n_others(
            (g, n) in (1usize..=80, 2usize..=12),
            gone in any::<prop::sample::Index>(),
        ) {
            let nodes = names(n);
            let groups = all_eligible(g, &nodes);
            let live: BTreeSet<String> = nodes.iter().cloned().collect();
            let gone = &nodes[gone.index(n)];
            let mut fewer = live.clone();
            fewer.remove(gone);
            let before = choose_owners(&groups, &live);
            let after = choose_owners(&groups, &fewer);
            let others = before
                .iter()
                .filter(|(k, owner)| *owner != gone && after.get(*k) != Some(*owner))
                .count();
            prop_assert!(others <= g.div_ceil(n), "{} others moved, bound {}", others, g.div_ceil(n));
        }

        #[test]
        fn adding_a_node_moves_at_most_ceil_g_over_n_plus_one(
            (g, n) in sizes(),
        ) {
            let nodes = names(n + 1);
            let groups = all_eligible(g, &nodes);
            let before_live: BTreeSet<String> = nodes[..n].iter().cloned().collect();
            let after_live: BTreeSet<String> = nodes.iter().cloned().collect();
            let before = choose_owners(&groups, &before_live);
            let after = choose_owners(&groups, &after_live);
            let moved = moves(&before, &after);
            prop_assert!(moved <= g.div_ceil(n) + 1, "{} moved, bound {}", moved, g.div_ceil(n) + 1);
        }

        /// Restricted eligibility: every group with a live candidate is owned by one of them, and a node goes above
        /// capacity only when some group had every candidate full.
        #[test]
        fn restricted_eligibility_is_respected_and_overflow_is_forced(
            eligibility in prop::collection::vec(prop::collection::btree_set(0usize..8, 0..4), 1..60),
            live_mask in prop::collection::btree_set(0usize..8, 0..8),
        ) {
            let nodes = names(8);
            let groups: Vec<VipGroup> = eligibility
                .iter()
                .enumerate()
                .map(|(i, set)| {
                    let refs: Vec<&str> = set.iter().map(|j| nodes[*j].as_str()).collect();
                    group(i as u32, &refs)
                })
                .collect();
            let live: BTreeSet<String> = live_mask.iter().map(|j| nodes[*j].clone()).collect();
            let owners = choose_owners(&groups, &live);
            let mut active_nodes = BTreeSet::new();
            let mut active = 0;
            for grp in &groups {
                let cands: BTreeSet<&String> = grp.l2_nodes.intersection(&live).collect();
                match owners.get(&grp.key) {
                    Some(owner) => prop_assert!(cands.contains(owner)),
                    None => prop_assert!(cands.is_empty()),
                }
                if !cands.is_empty() {
                    active += 1;
                    active_nodes.extend(cands);
                }
            }
            let cap = capacity(active, active_nodes.len());
            for (node, l) in loads(&owners) {
                if l > cap {
                    // Some group owned by this node had only full candidates, so all of them are at or above cap.
                    let forced = groups.iter().any(|grp| {
                        owners.get(&grp.key).map(String::as_str) == Some(node)
                            && grp
                                .l2_nodes
                                .intersection(&live)
                                .all(|c| loads(&owners).get(c.as_str()).copied().unwrap_or(0) >= cap)
                    });
                    prop_assert!(forced, "{} holds {} > {} without being forced", node, l, cap);
                }
            }
        }
    }
}
