//! [`FreeSet`]: the free addresses of one family of one pool, as disjoint intervals.
//!
//! A pool may hold 2^20 IPv4 addresses or a whole IPv6 /64, so a bitmap over the range is out of the question. The
//! set stores maximal runs of free addresses as `start -> end` (inclusive) in a `BTreeMap`; its size grows with the
//! number of holes punched by allocations, not with the size of the pool. Every operation is O(log k) for k runs.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

/// A set of `u128` address numbers, stored as disjoint, non-adjacent inclusive runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FreeSet {
    runs: BTreeMap<u128, u128>,
}

impl FreeSet {
    /// Adds `start..=end`, merging with neighbouring runs. Addresses already in the set are fine.
    pub fn insert_range(&mut self, mut start: u128, mut end: u128) {
        debug_assert!(start <= end);
        // Absorb every run that overlaps or touches start..=end.
        if let Some((&s, &e)) = self.runs.range(..=start).next_back()
            && e.saturating_add(1) >= start
        {
            start = s;
            end = end.max(e);
        }
        loop {
            let next = match end.checked_add(1) {
                Some(bound) => self
                    .runs
                    .range((Excluded(start), std::ops::Bound::Included(bound)))
                    .next(),
                None => self.runs.range((Excluded(start), Unbounded)).next(),
            };
            let Some((&s, &e)) = next else { break };
            self.runs.remove(&s);
            end = end.max(e);
        }
        self.runs.insert(start, end);
    }

    pub fn insert(&mut self, n: u128) {
        self.insert_range(n, n);
    }

    /// Takes `n` out of the set; returns whether it was there.
    pub fn remove(&mut self, n: u128) -> bool {
        let Some((&s, &e)) = self.runs.range(..=n).next_back() else {
            return false;
        };
        if e < n {
            return false;
        }
        self.runs.remove(&s);
        if s < n {
            self.runs.insert(s, n - 1);
        }
        if n < e {
            self.runs.insert(n + 1, e);
        }
        true
    }

    #[cfg(test)]
    pub fn contains(&self, n: u128) -> bool {
        self.runs
            .range(..=n)
            .next_back()
            .is_some_and(|(_, &e)| n <= e)
    }

    /// The lowest address in the set.
    pub fn first(&self) -> Option<u128> {
        self.runs.keys().next().copied()
    }

    /// The number of runs, a measure of fragmentation (and of memory use).
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn runs_split_and_merge() {
        let mut f = FreeSet::default();
        f.insert_range(10, 20);
        assert!(f.remove(10));
        assert_eq!(f.first(), Some(11));
        assert!(f.remove(15));
        assert_eq!(f.runs(), 2);
        assert!(!f.contains(15));
        assert!(!f.remove(15));
        f.insert(15);
        assert_eq!(f.runs(), 1);
        f.insert(10);
        f.insert_range(21, 30);
        assert_eq!(f.runs(), 1);
        assert!(f.contains(30) && !f.contains(31) && !f.contains(9));
    }

    #[test]
    fn extremes_of_the_address_space_do_not_overflow() {
        let mut f = FreeSet::default();
        f.insert_range(u128::MAX - 1, u128::MAX);
        f.insert(0);
        assert!(f.remove(u128::MAX));
        f.insert(u128::MAX);
        assert!(f.contains(u128::MAX));
        assert!(f.remove(0));
        assert_eq!(f.first(), Some(u128::MAX - 1));
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in prop::collection::vec((any::<bool>(), 0u128..64, 0u128..4), 0..60)) {
            let mut f = FreeSet::default();
            let mut model = BTreeSet::new();
            for (add, n, len) in ops {
                if add {
                    f.insert_range(n, n + len);
                    model.extend(n..=n + len);
                } else {
                    prop_assert_eq!(f.remove(n), model.remove(&n));
                }
                prop_assert_eq!(f.first(), model.first().copied());
                for k in 0..70 {
                    prop_assert_eq!(f.contains(k), model.contains(&k));
                }
                // Runs stay maximal: no two runs touch.
                let runs: Vec<_> = f.runs.iter().map(|(&s, &e)| (s, e)).collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0);
                }
            }
        }
    }
}
