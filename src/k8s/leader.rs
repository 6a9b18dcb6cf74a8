//! Leader election for allocation, over one `coordination.k8s.io/v1` Lease.
//!
//! The protocol is client-go's: read the Lease, decide, and write it back with its `resourceVersion`, so that the API
//! server's optimistic concurrency (409 Conflict) picks exactly one winner. It needs nothing from the server beyond
//! resourceVersion checks, which every API server, the lab's included, provides. (Crates that take the lock with
//! server-side apply rely on managed-field conflicts instead.)
//!
//! The decision is the pure [`decide`]; [`Elector::run`] is the I/O shell. Leadership leaves this module only as a
//! `watch::Receiver<Option<Instant>>`: while this agent leads, the instant on its own monotonic clock after which it
//! may no longer write as the allocator.
//!
//! Safety margin, all on local monotonic clocks, never by comparing one node's wall clock with another's:
//! - a leader steps down `renew_deadline` after the start of its last successful renewal, even while a renewal
//!   call is still hanging (each attempt is cut off at that instant), and its writers stop at that instant too;
//! - a follower takes an unreleased Lease only after it has seen the same holder and renewTime unchanged for the
//!   whole `duration` (client-go's observed-time rule), which starts after the renewal the leader counts from.
//!
//! With `renew_deadline` below `duration`, the old leader's last write is cut off before anyone else can acquire.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How the lock is held: see the README for why these defaults.
#[derive(Clone, Debug)]
pub struct LeaseTiming {
    /// `spec.leaseDurationSeconds`: how long a holder that stops renewing blocks the others.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_period: Duration,
    /// A holder that has not renewed for this long steps down. Must be below `duration`.
    pub renew_deadline: Duration,
    /// How often a follower looks at the Lease.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            duration: Duration::from_secs(5),
            renew_period: Duration::from_secs(1),
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// What to do with the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: write a new `renewTime`.
    Renew,
    /// It is free, released or expired: take it.
    Acquire,
    /// Someone else holds it, valid for `remaining` more by this agent's clock.
    Follow { holder: String, remaining: Duration },
}

/// Decides from the Lease's spec and from how long this agent has seen its holder and renewTime unchanged. A Lease
/// without holder, renew time or duration counts as free: that is how a holder releases it.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let (Some(_), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return Decision::Acquire;
    };
    let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    match duration.checked_sub(unchanged_for) {
        Some(remaining) if !remaining.is_zero() => Decision::Follow {
            holder: holder.to_string(),
            remaining,
        },
        _ => Decision::Acquire,
    }
}

/// The spec to write for `decision`, or None when nothing is to be written.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    identity: &str,
    timing: &LeaseTiming,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let mut spec = current.cloned().unwrap_or_default();
    let duration = i32::try_from(timing.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    match decision {
        Decision::Follow { .. } => return None,
        Decision::Renew => {}
        Decision::Acquire => {
            spec.holder_identity = Some(identity.to_string());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(current.is_some()));
        }
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration);
    Some(spec)
}

/// The spec that hands the Lease back, so a follower takes over at its next look rather than at expiry.
pub fn released_spec(current: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        renew_time: None,
        acquire_time: None,
        lease_duration_seconds: Some(1),
        ..current.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease {namespace}/{name}: no answer within {limit:?}")]
    Timeout {
        namespace: String,
        name: String,
        limit: Duration,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the election for one identity until `shutdown` resolves; then releases the Lease if held.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    timing: LeaseTiming,
    /// The holder and renewTime last seen, and when they were first seen so on this agent's clock.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

enum Outcome {
    Leading,
    Following,
    /// The write lost a race; look again at once.
    Lost,
}

impl Elector {
    pub fn new(
        api: Api<Lease>,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        Elector {
            api,
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
        }
    }

    /// Runs the loop, publishing on `leader` the instant until which this agent may write as the allocator (None
    /// while following). It never returns an error: API failures are logged and retried, and a leader that cannot
    /// renew in time steps down at its deadline, whether or not its last call has answered.
    pub async fn run(
        mut self,
        leader: watch::Sender<Option<Instant>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // When the last successful renewal was sent: the deadline counts from then, not from its answer.
        let mut last_renewal: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // A leader's attempt may last until its deadline; a follower's as long as a leader's may.
            let cutoff = last_renewal
                .map(|t| t + self.timing.renew_deadline)
                .unwrap_or(started + self.timing.renew_deadline);
            let outcome = match tokio::time::timeout_at(cutoff, self.try_once()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Timeout {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    limit: cutoff - started,
                }),
            };
            let now = Instant::now();
            let lost_race = matches!(outcome, Ok(Outcome::Lost));
            match outcome {
                Ok(Outcome::Leading) => last_renewal = Some(started),
                Ok(Outcome::Following) | Ok(Outcome::Lost) => last_renewal = None,
                Err(error) => {
                    tracing::warn!(%error, lease = %self.name, "lease update failed");
                    last_renewal = last_renewal.filter(|t| now < *t + self.timing.renew_deadline);
                }
            }
            let until = last_renewal.map(|t| t + self.timing.renew_deadline);
            if leader.borrow().is_some() != until.is_some() {
                tracing::info!(lease = %self.name, identity = %self.identity, leading = until.is_some(), "allocator leadership changed");
            }
            leader.send_replace(until);
            let wait = if lost_race {
                Duration::ZERO
            } else if until.is_some() {
                self.timing.renew_period
            } else {
                self.timing.retry_period
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if leader.borrow().is_some() {
            leader.send_replace(None);
            let limit = self.timing.renew_deadline;
            match tokio::time::timeout(limit, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.name, "released the allocator lease"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not release the allocator lease; it expires on its own")
                }
                Err(_) => tracing::warn!(
                    ?limit,
                    "releasing the allocator lease got no answer; it expires on its own"
                ),
            }
        }
    }

    /// How long the Lease's holder and renewTime have stood unchanged, as this agent saw them.
    fn unchanged_for(&mut self, spec: Option<&LeaseSpec>, now: Instant) -> Duration {
        let holder = spec.and_then(|s| s.holder_identity.clone());
        let renewed = spec.and_then(|s| s.renew_time.clone());
        match &self.observed {
            Some((h, r, since)) if *h == holder && *r == renewed => now.duration_since(*since),
            _ => {
                self.observed = Some((holder, renewed, now));
                Duration::ZERO
            }
        }
    }

    fn api_error(&self, source: kube::Error) -> Error {
        Error::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    async fn try_once(&mut self) -> Result<Outcome> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let unchanged_for = self.unchanged_for(spec, Instant::now());
        let decision = decide(spec, &self.identity, unchanged_for);
        let now = Timestamp::now();
        let Some(next) = next_spec(spec, &decision, &self.identity, &self.timing, now) else {
            return Ok(Outcome::Following);
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(next),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(next);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(Outcome::Leading),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::Lost),
            Err(e) => Err(self.api_error(e)),
        }
    }

    async fn release(&self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released_spec(spec));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.api_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};

    use axum::http::{Request, Response};
    use kube::client::Body;

    /// One Lease behind an API that answers, with resourceVersion concurrency, until `stall` is set, and from then
    /// on accepts requests but never answers them, as an API server behind a dead link.
    fn lease_api(stall: Arc<AtomicBool>) -> Api<Lease> {
        let stored: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
        let service = tower::service_fn(move |req: Request<Body>| {
            let (stall, stored) = (stall.clone(), stored.clone());
            async move {
                if stall.load(SeqCst) {
                    std::future::pending::<()>().await;
                }
                let method = req.method().clone();
                let body = req.into_body().collect_bytes().await?;
                let mut stored = stored.lock().unwrap();
                let (code, answer) = match (method.as_str(), stored.as_ref()) {
                    ("GET", None) => (
                        404,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                    ("GET", Some(lease)) => (200, lease.clone()),
                    _ => {
                        let mut lease: serde_json::Value = serde_json::from_slice(&body)?;
                        let version = stored
                            .as_ref()
                            .and_then(|l| l["metadata"]["resourceVersion"].as_str())
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0);
                        lease["metadata"]["resourceVersion"] = (version + 1).to_string().into();
                        *stored = Some(lease.clone());
                        (200, lease)
                    }
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer)?))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
            }
        });
        Api::namespaced(kube::Client::new(service, "ironlb-system"), "ironlb-system")
    }

    /// The leader's API stops answering: it steps down at its renew deadline, counted from the start of its last
    /// successful renewal, although its renewal call never returns; and it never publishes a deadline beyond that.
    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_hangs_steps_down_at_its_deadline() {
        let stall = Arc::new(AtomicBool::new(false));
        let timing = LeaseTiming::default();
        let elector = Elector::new(
            lease_api(stall.clone()),
            "ironlb-system",
            "ironlb-allocator",
            "node-1",
            timing.clone(),
        );
        let (tx, mut rx) = watch::channel(None);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(elector.run(tx, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        rx.wait_for(Option::is_some).await.unwrap();
        // Renewals go on for a while; then the API hangs.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let last_deadline = rx.borrow().expect("still leading");
        stall.store(true, SeqCst);
        let stalled_at = Instant::now();
        tokio::time::timeout(timing.duration * 3, rx.wait_for(Option::is_none))
            .await
            .expect("the leader steps down while its renewal hangs")
            .unwrap();
        let stepped_down = Instant::now();
        assert!(
            stepped_down <= last_deadline,
            "stepped down {:?} after the deadline it had published",
            stepped_down - last_deadline
        );
        assert!(
            stepped_down - stalled_at <= timing.renew_deadline,
            "stepped down {:?} after the API stalled",
            stepped_down - stalled_at
        );
        stop_tx.send_replace(true);
        tokio::time::timeout(timing.duration * 2, task)
            .await
            .expect("the elector stops even with the API gone")
            .unwrap();
    }

    fn held_by(holder: &str, renewed: Timestamp, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "a", secs(0)), Decision::Acquire);
        let released = released_spec(&held_by("b", t(0), 5));
        assert_eq!(decide(Some(&released), "a", secs(0)), Decision::Acquire);
    }

    #[test]
    fn another_holders_lease_is_followed_until_seen_unchanged_for_its_duration() {
        let spec = held_by("b", t(0), 5);
        assert_eq!(
            decide(Some(&spec), "a", secs(4)),
            Decision::Follow {
                holder: "b".into(),
                remaining: secs(1)
            }
        );
        assert_eq!(decide(Some(&spec), "a", secs(5)), Decision::Acquire);
        // The renewTime itself is never compared with this agent's wall clock: a holder whose clock is an hour
        // behind ours is still followed while it renews.
        let skewed = held_by("b", t(-3600), 5);
        assert!(matches!(
            decide(Some(&skewed), "a", secs(0)),
            Decision::Follow { .. }
        ));
    }

    #[test]
    fn the_holder_renews_even_after_expiry() {
        let spec = held_by("a", t(0), 5);
        assert_eq!(decide(Some(&spec), "a", secs(1)), Decision::Renew);
        assert_eq!(decide(Some(&spec), "a", secs(60)), Decision::Renew);
    }

    #[test]
    fn acquiring_counts_a_transition_and_renewing_does_not() {
        let timing = LeaseTiming::default();
        let spec = held_by("b", t(0), 5);
        let taken = next_spec(Some(&spec), &Decision::Acquire, "a", &timing, t(9)).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(t(9))));
        let renewed = next_spec(Some(&taken), &Decision::Renew, "a", &timing, t(10)).unwrap();
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.renew_time, Some(MicroTime(t(10))));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(9))));
        let first = next_spec(None, &Decision::Acquire, "a", &timing, t(0)).unwrap();
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(5));
    }

    #[test]
    fn followers_write_nothing() {
        let timing = LeaseTiming::default();
        let follow = Decision::Follow {
            holder: "b".into(),
            remaining: secs(5),
        };
        assert_eq!(next_spec(None, &follow, "a", &timing, t(0)), None);
    }
}
