//! Layer 2 owner choice (`plan::owner::assign`), in process, beside plain rendezvous hashing (each group to its
//! highest-weight live candidate, the textbook way to agree on owners without coordination) as the reference.
//!
//! Figures, one run each, printed as table rows:
//! - the load spread (most minus fewest groups on a node) for 3 nodes × 6 groups, 5 × 40 and 20 × 1,000, settled
//!   from nothing published (each round's owners published before the next, as the agents' writes do);
//! - groups moved by 1,000 groups created one at a time on a settled 20-node cluster holding 1,000;
//! - groups moved when a 21st node joins that cluster, and the rounds it takes.
//!
//! The invariants (level, no move on creation, the join bound) are asserted in every run; `cargo test --benches`
//! runs a smaller version (6 nodes, 60 groups, timing over 1,000).
//! - the time of one owner choice over 10,000 groups and 100 nodes (median of 21 runs, measured with
//!   `Instant`, whose resolution on Linux is nanoseconds, far below the figures).

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ironlb::alloc::ServiceKey;
use ironlb::plan::owner::{assign, choose_owners, score};
use ironlb::plan::{GroupKey, Interfaces, VipGroup};

fn group(id: u64, nodes: &BTreeSet<String>) -> VipGroup {
    // Addresses of 2001:db8::/32, the IPv6 documentation range; only data here.
    let ip = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(id)));
    VipGroup {
        key: GroupKey(ip),
        ips: vec![ip],
        services: [(ServiceKey::new("bench", format!("s-{id}")), vec![ip])].into(),
        pool: "bench".into(),
        traffic_local: false,
        serving_nodes: BTreeSet::new(),
        l2_nodes: nodes.clone(),
        l2_interfaces: nodes.iter().map(|n| (n.clone(), Interfaces::Any)).collect(),
        l2_not_announced: None,
        l2_preferred: Default::default(),
        bgp_nodes: BTreeSet::new(),
        bgp_not_announced: None,
        published_owner: None,
    }
}

fn nodes(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn groups(ids: std::ops::Range<u64>, eligible: &BTreeSet<String>) -> Vec<VipGroup> {
    ids.map(|id| group(id.wrapping_mul(0x9e37_79b9_7f4a_7c15), eligible))
        .collect()
}

/// Rounds of owner choice, each published before the next, until nothing changes. Returns the published groups,
/// the owners, the groups that changed owner on the way, and the rounds taken.
fn settle(
    mut groups: Vec<VipGroup>,
    live: &BTreeSet<String>,
) -> (Vec<VipGroup>, BTreeMap<GroupKey, String>, usize, usize) {
    let mut moved = 0;
    for round in 1..=100_000 {
        let owners = choose_owners(&groups, live);
        let mut changed = false;
        for g in &mut groups {
            let owner = owners.get(&g.key).cloned();
            if g.published_owner != owner {
                if g.published_owner.is_some() {
                    moved += 1;
                }
                changed = true;
                g.published_owner = owner;
            }
        }
        if !changed {
            return (groups, owners, moved, round - 1);
        }
    }
    panic!("owner choice did not settle");
}

/// The reference: every group to its highest-weight live candidate.
fn rendezvous(groups: &[VipGroup], live: &BTreeSet<String>) -> BTreeMap<GroupKey, String> {
    groups
        .iter()
        .filter_map(|g| {
            g.l2_nodes
                .iter()
                .filter(|n| live.contains(*n))
                .max_by_key(|n| (score(&g.key, n), std::cmp::Reverse(*n)))
                .map(|n| (g.key, n.clone()))
        })
        .collect()
}

fn spread(owners: &BTreeMap<GroupKey, String>, live: &BTreeSet<String>) -> usize {
    let mut load: BTreeMap<&str, usize> = live.iter().map(|n| (n.as_str(), 0)).collect();
    for o in owners.values() {
        *load.entry(o).or_default() += 1;
    }
    load.values().max().unwrap_or(&0) - load.values().min().unwrap_or(&0)
}

fn moved(a: &BTreeMap<GroupKey, String>, b: &BTreeMap<GroupKey, String>) -> usize {
    a.iter()
        .filter(|(k, o)| b.get(*k).is_some_and(|n| n != *o))
        .count()
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: a smaller run then, its invariants still checked.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (big_nodes, big_groups, timing_groups) = if quick {
        (6, 60, 1_000)
    } else {
        (20, 1_000, 10_000)
    };
    println!("| owner choice | IronLB | rendezvous reference |");
    println!("|---|---|---|");
    for (n, g) in [(3, 6), (5, 40), (big_nodes, big_groups)] {
        let live = nodes(n);
        let (_, owners, _, rounds) = settle(groups(0..g, &live), &live);
        assert!(spread(&owners, &live) <= 1, "not level");
        let reference = rendezvous(&groups(0..g, &live), &live);
        println!(
            "| load spread, {n} nodes × {g} groups (max − min) | {} (settled in {rounds} rounds) | {} |",
            spread(&owners, &live),
            spread(&reference, &live)
        );
    }

    let live = nodes(big_nodes);
    let (mut settled, before, _, _) = settle(groups(0..big_groups, &live), &live);
    let reference_before = rendezvous(&settled, &live);
    for id in big_groups..2 * big_groups {
        settled.push(group(id.wrapping_mul(0x9e37_79b9_7f4a_7c15), &live));
        let owners = choose_owners(&settled, &live);
        for g in &mut settled {
            g.published_owner = owners.get(&g.key).cloned();
        }
    }
    let after = choose_owners(&settled, &live);
    let reference_after = rendezvous(&settled, &live);
    assert_eq!(moved(&before, &after), 0, "a creation moved a group");
    println!(
        "| groups moved by {big_groups} creations on {big_nodes} nodes × {big_groups} groups | {} (spread after: {}) \
         | {} (spread after: {}) |",
        moved(&before, &after),
        spread(&after, &live),
        moved(&reference_before, &reference_after),
        spread(&reference_after, &live)
    );

    let mut joined = live.clone();
    joined.insert(format!("node-{big_nodes}"));
    let with_joiner: Vec<VipGroup> = settled
        .iter()
        .cloned()
        .map(|mut g| {
            g.l2_nodes = joined.clone();
            g
        })
        .collect();
    let (_, joined_owners, join_moved, rounds) = settle(with_joiner.clone(), &joined);
    let reference_join = rendezvous(&with_joiner, &joined);
    let total = settled.len();
    let bound = total.div_ceil(joined.len());
    assert!(
        join_moved <= bound,
        "{join_moved} moved on a join, bound {bound}"
    );
    println!(
        "| groups moved when node {} joins {big_nodes} nodes × {total} groups (bound ceil(G/N) = {bound}) | {join_moved} \
         in {rounds} rounds (spread after: {}) | {} (spread after: {}) |",
        joined.len(),
        spread(&joined_owners, &joined),
        moved(&reference_after, &reference_join),
        spread(&reference_join, &joined)
    );

    let live = nodes(100);
    let (settled, _, _, _) = settle(groups(0..timing_groups, &live), &live);
    let mut ours = Vec::new();
    let mut reference = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        black_box(assign(black_box(&settled), &live));
        ours.push(t.elapsed());
        let t = Instant::now();
        black_box(rendezvous(black_box(&settled), &live));
        reference.push(t.elapsed());
    }
    println!(
        "| one owner choice, {timing_groups} groups × 100 nodes (median of 21) | {:.2} ms | {:.2} ms |",
        median(ours).as_secs_f64() * 1e3,
        median(reference).as_secs_f64() * 1e3
    );
}
