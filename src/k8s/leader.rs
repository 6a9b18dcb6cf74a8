//! Leader election for allocation, over one `coordination.k8s.io/v1` Lease.
//!
//! The protocol is client-go's: read the Lease, decide, and write it back with its `resourceVersion`, so that the API
//! server's optimistic concurrency (409 Conflict) picks exactly one winner. It needs nothing from the server beyond
//! resourceVersion checks, which every API server, the lab's included, provides. (Crates that take the lock with
//! server-side apply rely on managed-field conflicts instead.)
//!
//! The decision is the pure [`decide`]; [`Elector::run`] is the I/O shell. Leadership leaves this module only as a
//! `watch::Receiver<bool>`.
//!
//! Safety margin: a leader that cannot renew steps down once `renew_deadline` has passed since its last successful
//! renewal, which is before the Lease expires for everyone else, so two allocators never overlap.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
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
    /// Someone else holds it and it is valid until `expires`.
    Follow { holder: String, expires: Timestamp },
}

/// Decides from the Lease's spec alone. A Lease without holder, renew time or duration counts as free: that is how a
/// holder releases it.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
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
    let (Some(renew), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return Decision::Acquire;
    };
    let expires = renew
        .0
        .checked_add(SignedDuration::from_secs(i64::from(seconds.max(0))))
        .unwrap_or(renew.0);
    if now >= expires {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_string(),
            expires,
        }
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the election for one identity until `shutdown` resolves; then releases the Lease if held.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    timing: LeaseTiming,
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
        }
    }

    /// Runs the loop, publishing leadership on `leader`. It never returns an error: API failures are logged and
    /// retried, and a leader that cannot renew in time steps down.
    pub async fn run(self, leader: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_renewal: Option<Instant> = None;
        loop {
            let outcome = self.try_once().await;
            let now = Instant::now();
            let lost_race = matches!(outcome, Ok(Outcome::Lost));
            let leading = match outcome {
                Ok(Outcome::Leading) => {
                    last_renewal = Some(now);
                    true
                }
                Ok(Outcome::Following) | Ok(Outcome::Lost) => {
                    last_renewal = None;
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, lease = %self.name, "lease update failed");
                    last_renewal.is_some_and(|t| now.duration_since(t) < self.timing.renew_deadline)
                }
            };
            if *leader.borrow() != leading {
                tracing::info!(lease = %self.name, identity = %self.identity, leading, "allocator leadership changed");
                leader.send_replace(leading);
            }
            let wait = if lost_race {
                Duration::ZERO
            } else if leading {
                self.timing.renew_period
            } else {
                self.timing.retry_period
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            match self.release().await {
                Ok(()) => tracing::info!(lease = %self.name, "released the allocator lease"),
                Err(error) => {
                    tracing::warn!(%error, "could not release the allocator lease; it expires on its own")
                }
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

    async fn try_once(&self) -> Result<Outcome> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, now);
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

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(decide(None, "a", t(0)), Decision::Acquire);
        let released = released_spec(&held_by("b", t(0), 5));
        assert_eq!(decide(Some(&released), "a", t(0)), Decision::Acquire);
    }

    #[test]
    fn a_valid_lease_of_another_is_followed_until_it_expires() {
        let spec = held_by("b", t(0), 5);
        assert_eq!(
            decide(Some(&spec), "a", t(4)),
            Decision::Follow {
                holder: "b".into(),
                expires: t(5)
            }
        );
        assert_eq!(decide(Some(&spec), "a", t(5)), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews_even_after_expiry() {
        let spec = held_by("a", t(0), 5);
        assert_eq!(decide(Some(&spec), "a", t(1)), Decision::Renew);
        assert_eq!(decide(Some(&spec), "a", t(60)), Decision::Renew);
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
            expires: t(5),
        };
        assert_eq!(next_spec(None, &follow, "a", &timing, t(0)), None);
    }
}
