//! `IPAddressPool.status`, written as MetalLB's controller writes it: the addresses of each family assigned to
//! Services and still available (`assignedIPv4`, `assignedIPv6`, `availableIPv4`, `availableIPv6`), so that
//! `kubectl get ipaddresspools -o yaml` shows how full each pool is.
//!
//! Only the allocator writes it, and only while it can prove it holds the allocator Lease: each patch is bounded by
//! the deadline the elector publishes, as the allocation writer's are ([`crate::k8s::leader`]). The task keeps its
//! own watch of the pools and patches only a pool whose status differs; a failed round is retried after a backoff
//! (1 s doubling to 30 s), and at once when something changes. Like MetalLB, a pool too large to count in an int64
//! (an IPv6 /64) reports `i64::MAX` usable addresses.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::metallb_metrics::PoolCounts;
use crate::config::crd::{IPAddressPool, IPAddressPoolStatus};

/// The longest wait before a failed round is tried again.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The status MetalLB writes for a pool with these counts.
pub fn status_of(counts: &PoolCounts) -> IPAddressPoolStatus {
    let int = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
    let assigned = counts.in_use.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let usable = counts.usable.map(int);
    IPAddressPoolStatus {
        assigned_ipv4: assigned[0],
        assigned_ipv6: assigned[1],
        available_ipv4: usable[0].saturating_sub(assigned[0]).max(0),
        available_ipv6: usable[1].saturating_sub(assigned[1]).max(0),
    }
}

/// The pools whose status differs from `wanted`, with the status to write. Pools the watch does not show (not yet
/// listed, or deleted) are left alone.
fn stale(
    wanted: &BTreeMap<String, IPAddressPoolStatus>,
    seen: &BTreeMap<String, Option<IPAddressPoolStatus>>,
) -> Vec<(String, IPAddressPoolStatus)> {
    wanted
        .iter()
        .filter(|(name, status)| seen.get(*name).is_some_and(|s| s.as_ref() != Some(*status)))
        .map(|(name, status)| (name.clone(), status.clone()))
        .collect()
}

/// Writes the pools' status while this agent allocates; see the module.
pub struct PoolStatusWriter {
    request: Client,
    watch: Client,
    /// The configuration namespace, where the pools are.
    namespace: String,
    /// Until when this agent may write as the allocator.
    leader: watch::Receiver<Option<Instant>>,
}

impl PoolStatusWriter {
    pub fn new(
        request: Client,
        watch: Client,
        namespace: &str,
        leader: watch::Receiver<Option<Instant>>,
    ) -> PoolStatusWriter {
        PoolStatusWriter {
            request,
            watch,
            namespace: namespace.to_string(),
            leader,
        }
    }

    /// Runs until `stop` resolves. `wanted` is the status of every pool while this agent allocates, None otherwise.
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<Option<BTreeMap<String, IPAddressPoolStatus>>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let api: Api<IPAddressPool> = Api::namespaced(self.watch.clone(), &self.namespace);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut seen: BTreeMap<String, Option<IPAddressPoolStatus>> = BTreeMap::new();
        let mut listing: BTreeMap<String, Option<IPAddressPoolStatus>> = BTreeMap::new();
        let mut synced = false;
        let mut retry = crate::task::Backoff::new(Duration::from_secs(1), BACKOFF_MAX);
        let mut dirty = true;
        // The elector's channel closes only when the agent stops; a closed one must not wake this loop again.
        let mut leader_open = true;
        tokio::pin!(stop);
        loop {
            let now = wanted.borrow().clone();
            if let Some(now) = now.filter(|_| dirty && synced && retry.due()) {
                match self.round(&now, &mut seen).await {
                    Ok(()) => {
                        dirty = false;
                        retry.succeeded();
                    }
                    Err(error) => {
                        let wait = retry.failed();
                        tracing::warn!(%error, "writing IPAddressPool status failed; trying again in {wait:?}");
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    dirty = true;
                }
                changed = self.leader.changed(), if leader_open => {
                    leader_open = changed.is_ok();
                    dirty = true;
                }
                Some(event) = events.next() => {
                    let name = |p: &IPAddressPool| p.metadata.name.clone().unwrap_or_default();
                    match event {
                        Ok(watcher::Event::Apply(p)) => {
                            seen.insert(name(&p), p.status);
                        }
                        Ok(watcher::Event::Delete(p)) => {
                            seen.remove(&name(&p));
                        }
                        Ok(watcher::Event::Init) => listing.clear(),
                        Ok(watcher::Event::InitApply(p)) => {
                            listing.insert(name(&p), p.status);
                        }
                        Ok(watcher::Event::InitDone) => {
                            seen = std::mem::take(&mut listing);
                            synced = true;
                        }
                        Err(error) => tracing::warn!(%error, "watch of IPAddressPools failed; retrying"),
                    }
                    dirty = true;
                }
                _ = retry.elapsed() => {}
            }
        }
    }

    /// Patches every pool whose status differs, while leadership lasts; records what the API returned.
    async fn round(
        &self,
        wanted: &BTreeMap<String, IPAddressPoolStatus>,
        seen: &mut BTreeMap<String, Option<IPAddressPoolStatus>>,
    ) -> kube::Result<()> {
        let api: Api<IPAddressPool> = Api::namespaced(self.request.clone(), &self.namespace);
        for (name, status) in stale(wanted, seen) {
            let Some(until) = (*self.leader.borrow()).filter(|u| Instant::now() < *u) else {
                // No longer provably the allocator: the next one writes.
                return Ok(());
            };
            let patch = json!({ "status": status });
            let written = tokio::time::timeout_at(
                until,
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
            .map_err(|_| {
                kube::Error::Service("no answer before this agent's leadership deadline".into())
            })?;
            match written {
                Ok(pool) => {
                    seen.insert(name, pool.status);
                }
                // Deleted meanwhile: the watch will say so.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(a4: i64, a6: i64, v4: i64, v6: i64) -> IPAddressPoolStatus {
        IPAddressPoolStatus {
            assigned_ipv4: a4,
            assigned_ipv6: a6,
            available_ipv4: v4,
            available_ipv6: v6,
        }
    }

    #[test]
    fn the_counts_are_metallbs_and_a_huge_pool_saturates() {
        let counts = PoolCounts {
            usable: [254, u128::from(u64::MAX)],
            in_use: [3, 1],
            services: 3,
        };
        assert_eq!(status_of(&counts), status(3, 1, 251, i64::MAX - 1));
    }

    #[test]
    fn only_pools_whose_status_differs_are_written() {
        let wanted: BTreeMap<String, IPAddressPoolStatus> = [
            ("same".to_string(), status(1, 0, 9, 0)),
            ("changed".to_string(), status(2, 0, 8, 0)),
            ("never-written".to_string(), status(0, 0, 10, 0)),
            ("not-listed".to_string(), status(0, 0, 10, 0)),
        ]
        .into();
        let seen: BTreeMap<String, Option<IPAddressPoolStatus>> = [
            ("same".to_string(), Some(status(1, 0, 9, 0))),
            ("changed".to_string(), Some(status(1, 0, 9, 0))),
            ("never-written".to_string(), None),
        ]
        .into();
        let names: Vec<String> = stale(&wanted, &seen).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["changed", "never-written"]);
    }
}
