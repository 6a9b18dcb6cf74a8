//! Per-node Leases: the liveness signal the agents fall back to when gossip is unhealthy or absent.
//!
//! Every agent renews its own `coordination.k8s.io/v1` Lease, `ironlb-node-<node>` in the agent's namespace, with
//! `holderIdentity` the node and `leaseDurationSeconds` the configured duration, and every agent watches all of them
//! (selected by the label [`LABEL`]). A dead agent stops renewing, and the others drop its node a few seconds later,
//! where the Node's Ready condition would take the kubelet's 40 s grace.
//!
//! # Freshness without comparing clocks
//!
//! `renewTime` is the writer's wall clock, which may be skewed against ours. So, as client-go's leader election does,
//! a Lease's `renewTime` is never compared with our clock: it only tells us *that* the holder renewed, and a Lease is
//! judged by when *this* agent observed its record change, on our monotonic clock ([`Observations::observe`]).
//!
//! One more step makes the judgement safe when the API itself is the problem: a node is declared dead only once this
//! agent has seen its *own* renewal arrive through the same watch after that node's deadline ([`Observations::live`]).
//! While the watch or our writes are stalled, that evidence stops, so nobody is declared dead for it; and once our own
//! Lease has not been seen renewed for its duration, the signal is reported unavailable (None), and callers fall back
//! to Node Ready instead of dropping every node at once.
//!
//! # Cost
//!
//! One write per node per period (1 s by default), so `N` writes/s for `N` nodes, and the API server fans every
//! write out to every agent's watch: `N²` watch events/s (10,000/s for 100 nodes, each a few hundred bytes).
//! `--node-lease-period 0` turns the whole signal off (no writes, no watch).
//!
//! # Stopping
//!
//! On a clean stop the agent deletes its Lease: the others see the Delete at once and hand its VIPs over, instead
//! of waiting out the duration with nobody announcing them (the stopping agent withdraws its announcements).
//!
//! The decisions are the pure [`Observations`]; [`run`] is the I/O shell, and the result leaves this module only as
//! a `watch::Receiver<Option<BTreeSet<String>>>`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

/// Every node Lease's name starts with this.
pub const LEASE_PREFIX: &str = "ironlb-node-";
/// The label every node Lease carries (value `"true"`), which the agents' watch selects on.
pub const LABEL: &str = "ironlb.io/node-lease";
/// Longest object name the API accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The Lease name of `node`: [`LEASE_PREFIX`] plus the node name; a name that would exceed 253 characters is cut and
/// suffixed with a hash of the whole node name, so it stays unique.
pub fn lease_name(node: &str) -> String {
    let name = format!("{LEASE_PREFIX}{node}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let digest = Sha256::digest(node.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Node names are ASCII (DNS subdomains), so any byte index is a char boundary; be safe anyway.
    let mut keep = MAX_NAME - LEASE_PREFIX.len() - 1 - hash.len();
    while !node.is_char_boundary(keep) {
        keep -= 1;
    }
    let head = node[..keep].trim_end_matches(['-', '.']);
    format!("{LEASE_PREFIX}{head}-{hash}")
}

/// How the node Lease is renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLeaseTiming {
    /// How often the agent renews its Lease.
    pub period: Duration,
    /// `leaseDurationSeconds`: how long after its last observed renewal a node counts as live.
    pub duration: Duration,
}

impl NodeLeaseTiming {
    /// The timing for the agent's flags, or None when `period_secs` is 0 (the fallback is off). A duration that
    /// leaves no room for a late renewal is raised to twice the period.
    pub fn from_flags(period_secs: u64, duration_secs: u64) -> Option<NodeLeaseTiming> {
        if period_secs == 0 {
            return None;
        }
        let period = Duration::from_secs(period_secs);
        let duration = Duration::from_secs(duration_secs).max(period * 2);
        Some(NodeLeaseTiming { period, duration })
    }
}

/// Node Lease metrics.
#[derive(Clone, Debug, Default)]
pub struct NodeLeaseMetrics {
    available: Gauge,
    live: Gauge,
    renew_failures: Counter,
}

impl NodeLeaseMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = NodeLeaseMetrics::default();
        registry.register(
            "ironlb_node_lease_available",
            "1 while this agent sees its own node Lease renewed through the API, so the Lease signal can be used",
            m.available.clone(),
        );
        registry.register(
            "ironlb_node_lease_live_nodes",
            "Nodes whose Lease this agent considers fresh (0 while the signal is unavailable)",
            m.live.clone(),
        );
        registry.register(
            "ironlb_node_lease_renew_failures",
            "Renewals of this node's Lease that failed or timed out",
            m.renew_failures.clone(),
        );
        m
    }

    fn record(&self, verdict: Option<&BTreeSet<String>>) {
        self.available.set(i64::from(verdict.is_some()));
        self.live
            .set(verdict.map_or(0, |v| i64::try_from(v.len()).unwrap_or(i64::MAX)));
    }
}

/// What makes a node Lease unusable for liveness.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("no spec")]
    NoSpec,
    #[error("no holderIdentity")]
    NoHolder,
    /// The holder's Lease would have another name: the Lease cannot vouch for that node.
    #[error("holderIdentity {holder:?} does not match the name (expected {expected})")]
    HolderMismatch { holder: String, expected: String },
    #[error("no renewTime")]
    NoRenewTime,
    /// `leaseDurationSeconds` as the Lease holds it (absent, zero or negative).
    #[error("leaseDurationSeconds is missing or not positive")]
    BadDuration { seconds: Option<i32> },
}

/// Why [`Observations::observe`] dropped a Lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("Lease {namespace}/{name}: {reason}")]
    Unusable {
        namespace: String,
        name: String,
        #[source]
        reason: Unusable,
    },
}

/// Why renewing this node's Lease failed.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    /// A read or write of the Lease failed.
    #[error(transparent)]
    Api(kube::Error),
    /// The renewal did not finish within the Lease's duration.
    #[error("no answer within {limit:?}")]
    Timeout { limit: Duration },
}

/// What this agent last saw of one node's Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    holder: String,
    renew: MicroTime,
    duration: Duration,
    /// When this agent saw the record change, on its own monotonic clock.
    observed: Instant,
}

/// Node Leases as this agent has observed them, and the liveness they imply. Pure: the caller supplies `now`.
#[derive(Debug)]
pub struct Observations {
    own: String,
    by_lease: BTreeMap<String, Seen>,
    /// During a relist, the Leases listed so far.
    relisted: Option<BTreeSet<String>>,
}

impl Observations {
    /// Observations for the agent of node `own`.
    pub fn new(own: &str) -> Observations {
        Observations {
            own: lease_name(own),
            by_lease: BTreeMap::new(),
            relisted: None,
        }
    }

    /// Records `lease` as seen at `now`. A Lease whose holder, renew time and duration are unchanged keeps the time
    /// it was first seen that way. A Lease this agent cannot use (no holder, a holder that does not match its name,
    /// no renew time, no positive duration) is dropped, so its node does not count as live, and the error names it.
    pub fn observe(&mut self, lease: &Lease, now: Instant) -> Result<(), Error> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        if let Some(relisted) = &mut self.relisted {
            relisted.insert(name.clone());
        }
        let seen = match parse(&name, lease.spec.as_ref(), now) {
            Ok(seen) => seen,
            Err(reason) => {
                self.by_lease.remove(&name);
                let namespace = lease.metadata.namespace.clone().unwrap_or_default();
                return Err(Error::Unusable {
                    namespace,
                    name,
                    reason,
                });
            }
        };
        match self.by_lease.get_mut(&name) {
            Some(old)
                if old.holder == seen.holder
                    && old.renew == seen.renew
                    && old.duration == seen.duration => {}
            _ => {
                self.by_lease.insert(name, seen);
            }
        }
        Ok(())
    }

    /// A Lease was deleted: its node is no longer live.
    pub fn forget(&mut self, name: &str) {
        self.by_lease.remove(name);
    }

    /// A relist begins: the Leases it does not list again are forgotten when it ends.
    pub fn relist_begin(&mut self) {
        self.relisted = Some(BTreeSet::new());
    }

    /// Whether a relist is under way: until it ends, [`Observations::live`] may lack Leases not yet listed again.
    pub fn relisting(&self) -> bool {
        self.relisted.is_some()
    }

    /// A relist ended.
    pub fn relist_end(&mut self) {
        if let Some(listed) = self.relisted.take() {
            self.by_lease.retain(|name, _| listed.contains(name));
        }
    }

    /// The live nodes at `now`, or None when the signal says nothing: this agent has not seen its own Lease renewed
    /// within that Lease's duration (its writes or its watch are failing, or it has just started).
    ///
    /// A node is live unless this agent has observed its own renewal at or after the node's deadline (observed +
    /// duration): that observation proves the API and the watch were working when the node should have renewed.
    pub fn live(&self, now: Instant) -> Option<BTreeSet<String>> {
        let own = self.by_lease.get(&self.own)?;
        if now >= own.observed + own.duration {
            return None;
        }
        let evidence = own.observed;
        Some(
            self.by_lease
                .values()
                .filter(|seen| seen.observed + seen.duration > evidence)
                .map(|seen| seen.holder.clone())
                .collect(),
        )
    }

    /// When [`Observations::live`] next changes without a new observation: when the own Lease goes stale.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let own = self.by_lease.get(&self.own)?;
        let at = own.observed + own.duration;
        (at > now).then_some(at)
    }
}

fn parse(name: &str, spec: Option<&LeaseSpec>, now: Instant) -> Result<Seen, Unusable> {
    let spec = spec.ok_or(Unusable::NoSpec)?;
    let holder = spec
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or(Unusable::NoHolder)?;
    let expected = lease_name(holder);
    if expected != name {
        return Err(Unusable::HolderMismatch {
            holder: holder.to_string(),
            expected,
        });
    }
    let renew = spec.renew_time.clone().ok_or(Unusable::NoRenewTime)?;
    let seconds = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .ok_or(Unusable::BadDuration {
            seconds: spec.lease_duration_seconds,
        })?;
    Ok(Seen {
        holder: holder.to_string(),
        renew,
        duration: Duration::from_secs(u64::try_from(seconds).unwrap_or(1)),
        observed: now,
    })
}

/// The spec this agent writes for its own Lease at `now`.
pub fn own_spec(
    node: &str,
    timing: &NodeLeaseTiming,
    current: Option<&LeaseSpec>,
    now: Timestamp,
) -> LeaseSpec {
    let ours = current.is_some_and(|s| s.holder_identity.as_deref() == Some(node));
    LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(
            i32::try_from(timing.duration.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        renew_time: Some(MicroTime(now)),
        acquire_time: match current {
            Some(spec) if ours => spec.acquire_time.clone(),
            _ => Some(MicroTime(now)),
        },
        ..LeaseSpec::default()
    }
}

/// Runs the node Lease of `node` until `stop` turns true: renews it every period, watches every node Lease, and
/// publishes the live nodes on `live` (None while the signal is unavailable). On stop it deletes its own Lease.
/// Renews this node's Lease through `api` and watches every node's through `watch_api` (a client without a
/// request timeout: a watch is a long poll).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    api: Api<Lease>,
    watch_api: Api<Lease>,
    namespace: String,
    node: String,
    timing: NodeLeaseTiming,
    live: watch::Sender<Option<BTreeSet<String>>>,
    metrics: NodeLeaseMetrics,
    stop: watch::Receiver<bool>,
) {
    let renewer = renew(api, &namespace, &node, &timing, &metrics, stop.clone());
    let observer = observe(watch_api, &node, live, &metrics, stop);
    tokio::join!(renewer, observer);
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn renew(
    api: Api<Lease>,
    namespace: &str,
    node: &str,
    timing: &NodeLeaseTiming,
    metrics: &NodeLeaseMetrics,
    stop: watch::Receiver<bool>,
) {
    let name = lease_name(node);
    let stop_signal = stopped(stop);
    tokio::pin!(stop_signal);
    let mut ticks = tokio::time::interval(timing.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The Lease as our last write returned it, so a renewal is one PUT with its resourceVersion.
    let mut current: Option<Lease> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = &mut stop_signal => break,
            _ = ticks.tick() => {}
        }
        // A write that hangs longer than the duration is as good as failed; the next tick tries again.
        let write = renew_once(&api, namespace, node, &name, timing, &mut current);
        let result = match tokio::time::timeout(timing.duration, write).await {
            Ok(result) => result,
            Err(_) => {
                current = None;
                Err(RenewError::Timeout {
                    limit: timing.duration,
                })
            }
        };
        if result.is_err() {
            metrics.renew_failures.inc();
        }
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(lease = %name, "node lease renewed again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(lease = %format!("{namespace}/{name}"), %error, "renewing the node lease failed; retrying every period");
            }
            Err(_) => {}
        }
    }
    // Bounded, so an unreachable API cannot hold up the agent's exit: the Lease then expires on its own.
    let params = DeleteParams::default();
    let delete = api.delete(&name, &params);
    match tokio::time::timeout(timing.duration, delete).await {
        Ok(Ok(_)) => tracing::info!(lease = %name, "deleted the node lease"),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, lease = %name, "could not delete the node lease; it expires on its own")
        }
        Err(_) => {
            tracing::warn!(lease = %name, "deleting the node lease timed out; it expires on its own")
        }
    }
}

async fn renew_once(
    api: &Api<Lease>,
    namespace: &str,
    node: &str,
    name: &str,
    timing: &NodeLeaseTiming,
    current: &mut Option<Lease>,
) -> Result<(), RenewError> {
    let existing = match current.take() {
        Some(lease) => Some(lease),
        None => api.get_opt(name).await.map_err(RenewError::Api)?,
    };
    let now = Timestamp::now();
    let result = match existing {
        Some(mut lease) => {
            lease.spec = Some(own_spec(node, timing, lease.spec.as_ref(), now));
            lease
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(LABEL.into(), "true".into());
            api.replace(name, &PostParams::default(), &lease).await
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(BTreeMap::from([(LABEL.to_string(), "true".to_string())])),
                    ..ObjectMeta::default()
                },
                spec: Some(own_spec(node, timing, None, now)),
            };
            api.create(&PostParams::default(), &lease).await
        }
    };
    // On any error (a 409 after someone else wrote it, a 404 after a delete) the next renewal reads it afresh.
    *current = Some(result.map_err(RenewError::Api)?);
    Ok(())
}

async fn observe(
    api: Api<Lease>,
    node: &str,
    live: watch::Sender<Option<BTreeSet<String>>>,
    metrics: &NodeLeaseMetrics,
    stop: watch::Receiver<bool>,
) {
    let config = watcher::Config::default().labels(&format!("{LABEL}=true"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen = Observations::new(node);
    // Complaints already logged, so a bad Lease is named once, not at every renewal.
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let stop_signal = stopped(stop);
    tokio::pin!(stop_signal);
    loop {
        let now = Instant::now();
        let verdict = seen.live(now);
        // A relist delivers the Leases one by one: publish only complete views (an unavailable signal is complete:
        // it must not wait for a relist that the API may never finish).
        let complete = !seen.relisting() || verdict.is_none();
        if complete {
            metrics.record(verdict.as_ref());
        }
        live.send_if_modified(|current| {
            if !complete {
                return false;
            }
            if *current == verdict {
                return false;
            }
            match &verdict {
                Some(nodes) => tracing::info!(live = ?nodes, "node leases: live nodes changed"),
                None => tracing::warn!(
                    "node leases: this agent's own lease is not being renewed through the API; the lease signal \
                     is unavailable and liveness falls back to Node Ready"
                ),
            }
            *current = verdict.clone();
            true
        });
        let wake = seen.next_change(now);
        tokio::select! {
            _ = &mut stop_signal => return,
            // No deadline: nothing to wake for until the next watch event.
            _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            item = stream.next() => {
                let Some(item) = item else { return };
                let now = Instant::now();
                let result = match item {
                    Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => seen.observe(&lease, now),
                    Ok(watcher::Event::Delete(lease)) => {
                        seen.forget(lease.metadata.name.as_deref().unwrap_or(""));
                        Ok(())
                    }
                    Ok(watcher::Event::Init) => {
                        seen.relist_begin();
                        Ok(())
                    }
                    Ok(watcher::Event::InitDone) => {
                        seen.relist_end();
                        Ok(())
                    }
                    Err(error) => {
                        tracing::warn!(%error, "node lease watch failed; retrying with backoff");
                        Ok(())
                    }
                };
                if let Err(why) = result
                    && reported.insert(why.to_string())
                {
                    tracing::warn!("ignoring a node lease: {why}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, renew_secs: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(node)),
                namespace: Some("ironlb-system".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.into()),
                renew_time: Some(MicroTime(wall(renew_secs))),
                lease_duration_seconds: Some(duration),
                ..LeaseSpec::default()
            }),
        }
    }

    fn wall(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn lease_names_are_prefixed_and_never_too_long() {
        assert_eq!(lease_name("node-1"), "ironlb-node-node-1");
        let long = "n".repeat(253);
        let name = lease_name(&long);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.starts_with(LEASE_PREFIX));
        let other = format!("{}m", "n".repeat(252));
        assert_ne!(lease_name(&other), name, "cut names stay distinct");
    }

    #[test]
    fn timing_zero_period_is_off_and_duration_leaves_room() {
        assert_eq!(NodeLeaseTiming::from_flags(0, 3), None);
        let t = NodeLeaseTiming::from_flags(1, 3).unwrap();
        assert_eq!((t.period, t.duration), (s(1.0), s(3.0)));
        let t = NodeLeaseTiming::from_flags(2, 1).unwrap();
        assert_eq!(t.duration, s(4.0));
    }

    #[test]
    fn unavailable_until_the_own_lease_is_seen() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        assert_eq!(seen.live(t0), None);
        seen.observe(&lease("b", 0, 3), t0).unwrap();
        assert_eq!(seen.live(t0), None, "others alone say nothing");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        assert_eq!(seen.live(t0), Some(names(&["a", "b"])));
    }

    #[test]
    fn a_node_that_stops_renewing_is_dropped_once_our_own_renewal_shows_the_api_works() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        seen.observe(&lease("b", 0, 3), t0).unwrap();
        // a keeps renewing every second; b stops after its first renewal.
        for i in 1..=2 {
            seen.observe(&lease("a", i, 3), t0 + s(i as f64)).unwrap();
            assert_eq!(seen.live(t0 + s(i as f64)), Some(names(&["a", "b"])));
        }
        seen.observe(&lease("a", 3, 3), t0 + s(3.0)).unwrap();
        assert_eq!(seen.live(t0 + s(3.0)), Some(names(&["a"])));
    }

    #[test]
    fn an_unchanged_record_keeps_its_first_observation() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        seen.observe(&lease("b", 0, 3), t0).unwrap();
        // A relist re-delivers b unchanged: that is not a renewal.
        seen.relist_begin();
        seen.observe(&lease("b", 0, 3), t0 + s(2.0)).unwrap();
        seen.observe(&lease("a", 2, 3), t0 + s(2.0)).unwrap();
        seen.relist_end();
        seen.observe(&lease("a", 3, 3), t0 + s(3.0)).unwrap();
        assert_eq!(seen.live(t0 + s(3.0)), Some(names(&["a"])));
    }

    #[test]
    fn renew_times_from_a_skewed_clock_do_not_matter() {
        // b's clock is an hour behind and c's an hour ahead; both renew, so both are live.
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        for i in 0..10 {
            let now = t0 + s(i as f64);
            seen.observe(&lease("a", i, 3), now).unwrap();
            seen.observe(&lease("b", i - 3600, 3), now).unwrap();
            seen.observe(&lease("c", i + 3600, 3), now).unwrap();
            assert_eq!(seen.live(now), Some(names(&["a", "b", "c"])));
        }
    }

    #[test]
    fn a_stalled_watch_drops_nobody_and_then_reports_unavailable() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        seen.observe(&lease("b", 0, 3), t0 + s(0.5)).unwrap();
        seen.observe(&lease("a", 1, 3), t0 + s(1.0)).unwrap();
        // Nothing arrives after t0+1: no evidence that b missed its deadline.
        assert_eq!(seen.live(t0 + s(3.9)), Some(names(&["a", "b"])));
        assert_eq!(seen.next_change(t0 + s(3.9)), Some(t0 + s(4.0)));
        assert_eq!(seen.live(t0 + s(4.0)), None);
        assert_eq!(seen.next_change(t0 + s(4.0)), None);
    }

    #[test]
    fn a_deleted_lease_drops_its_node_at_once() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        seen.observe(&lease("b", 0, 3), t0).unwrap();
        seen.forget(&lease_name("b"));
        assert_eq!(seen.live(t0), Some(names(&["a"])));
    }

    #[test]
    fn a_relist_forgets_leases_that_are_gone() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        seen.observe(&lease("b", 0, 3), t0).unwrap();
        seen.relist_begin();
        assert!(seen.relisting());
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        assert_eq!(
            seen.live(t0),
            Some(names(&["a", "b"])),
            "not before the end"
        );
        seen.relist_end();
        assert!(!seen.relisting());
        assert_eq!(seen.live(t0), Some(names(&["a"])));
    }

    #[test]
    fn unusable_leases_are_named_and_do_not_count() {
        let t0 = Instant::now();
        let mut seen = Observations::new("a");
        seen.observe(&lease("a", 0, 3), t0).unwrap();
        seen.observe(&lease("b", 0, 3), t0).unwrap();

        let unusable = |reason| Error::Unusable {
            namespace: "ironlb-system".into(),
            name: lease_name("b"),
            reason,
        };

        let mut wrong_holder = lease("b", 1, 3);
        wrong_holder.spec.as_mut().unwrap().holder_identity = Some("c".into());
        let err = seen.observe(&wrong_holder, t0).unwrap_err();
        assert_eq!(
            err,
            unusable(Unusable::HolderMismatch {
                holder: "c".into(),
                expected: lease_name("c"),
            })
        );
        assert_eq!(
            err.to_string(),
            "Lease ironlb-system/ironlb-node-b: holderIdentity \"c\" does not match the name \
             (expected ironlb-node-c)"
        );
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(seen.live(t0), Some(names(&["a"])));

        let mut no_holder = lease("b", 1, 3);
        no_holder.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(
            seen.observe(&no_holder, t0),
            Err(unusable(Unusable::NoHolder))
        );
        no_holder.spec.as_mut().unwrap().holder_identity = Some(String::new());
        assert_eq!(
            seen.observe(&no_holder, t0),
            Err(unusable(Unusable::NoHolder))
        );
        let mut zero = lease("b", 1, 0);
        let err = seen.observe(&zero, t0).unwrap_err();
        assert_eq!(err, unusable(Unusable::BadDuration { seconds: Some(0) }));
        assert_eq!(
            err.to_string(),
            "Lease ironlb-system/ironlb-node-b: leaseDurationSeconds is missing or not positive"
        );
        zero.spec.as_mut().unwrap().lease_duration_seconds = Some(-5);
        assert_eq!(
            seen.observe(&zero, t0),
            Err(unusable(Unusable::BadDuration { seconds: Some(-5) }))
        );
        zero.spec.as_mut().unwrap().lease_duration_seconds = None;
        assert_eq!(
            seen.observe(&zero, t0),
            Err(unusable(Unusable::BadDuration { seconds: None }))
        );
        let mut no_renew = lease("b", 1, 3);
        no_renew.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(
            seen.observe(&no_renew, t0),
            Err(unusable(Unusable::NoRenewTime))
        );
        let no_spec = Lease {
            spec: None,
            ..lease("b", 1, 3)
        };
        let err = seen.observe(&no_spec, t0).unwrap_err();
        assert_eq!(err, unusable(Unusable::NoSpec));
        assert_eq!(
            err.to_string(),
            "Lease ironlb-system/ironlb-node-b: no spec"
        );
        assert_eq!(seen.live(t0), Some(names(&["a"])));
    }

    #[test]
    fn a_renewal_timeout_names_the_limit() {
        let timeout = RenewError::Timeout { limit: s(3.0) };
        assert_eq!(timeout.to_string(), "no answer within 3s");
    }

    #[test]
    fn own_spec_keeps_the_acquire_time_while_ours() {
        let timing = NodeLeaseTiming::from_flags(1, 3).unwrap();
        let first = own_spec("a", &timing, None, wall(0));
        assert_eq!(first.holder_identity.as_deref(), Some("a"));
        assert_eq!(first.lease_duration_seconds, Some(3));
        assert_eq!(first.acquire_time, Some(MicroTime(wall(0))));
        let next = own_spec("a", &timing, Some(&first), wall(5));
        assert_eq!(next.renew_time, Some(MicroTime(wall(5))));
        assert_eq!(next.acquire_time, Some(MicroTime(wall(0))));
        let foreign = own_spec("b", &timing, Some(&first), wall(6));
        assert_eq!(foreign.acquire_time, Some(MicroTime(wall(6))));
    }
}
