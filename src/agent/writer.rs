//! The agent's writes to the API, in two tasks of their own, so that no decision of the agent waits on the API:
//!
//! ```text
//!  Output::Allocate ─▶ allocation pass ──Pass──▶ allocation writer ──Input::Allocated──▶ Core
//!  Output::Announce ─▶ announcement pass ─OwnWrites─▶ announcement writer ──Input::Announced──▶ Core
//!                                      (each retries its queued Events every 2 s on its own)
//! ```
//!
//! The allocation writer takes one pass at a time (the core never asks for a second before the first reported), and
//! writes only while this agent holds the allocator Lease: it checks the deadline the elector published before every
//! Service write and abandons one still unanswered then (see [`crate::k8s::leader`]). The announcement writer needs no
//! leadership (a node writes only its own Node and the Services it owns), and runs the newest pass's writes: a pass
//! queued behind a slow write is replaced by the one after it, which was planned from the same state and knows
//! better, keeping only the Events of the one it replaces. Both report the objects the API returned, for the core to
//! fold into its state; every request times out ([`crate::k8s::client::REQUEST_TIMEOUT`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::{mpsc, watch};

use super::AllocationMetrics;
use super::announce::AnnouncePass;
use super::core::{Input, Written};
use crate::k8s::allocation::{Pass, ServiceAction};
use crate::k8s::events::{Note, Outbox};

/// How often Events the API refused are sent again.
pub const EVENT_RETRY: Duration = Duration::from_secs(2);

/// One announcement pass's writes, and the Node they are about (for its Events).
#[derive(Debug)]
pub struct OwnWrites {
    pub pass: AnnouncePass,
    pub node_reference: ObjectReference,
}

impl OwnWrites {
    /// The writes of `next`, a later pass, with the Events of these that would otherwise be lost: this pass's Node
    /// Events, and the Events of each Service action `next` replaces. An action `next` no longer has is dropped with
    /// its Events: the later pass, planned from the same state, found nothing to do for that Service.
    /// A note the later pass repeats (the same takeover, seen again before it was written) is kept once.
    fn superseded_by(self, mut next: OwnWrites) -> OwnWrites {
        next.pass.node_notes = earlier_first(self.pass.node_notes, next.pass.node_notes);
        for old in self.pass.services {
            if let Some(new) = next
                .pass
                .services
                .iter_mut()
                .find(|a| a.service == old.service)
            {
                new.notes = earlier_first(old.notes, std::mem::take(&mut new.notes));
            }
        }
        next
    }
}

/// `earlier` then `later`, leaving out each note of `earlier` that `later` repeats.
fn earlier_first(earlier: Vec<Note>, later: Vec<Note>) -> Vec<Note> {
    let mut notes: Vec<Note> = earlier.into_iter().filter(|n| !later.contains(n)).collect();
    notes.extend(later);
    notes
}

/// Sends writes and Events for one of the writer tasks.
pub struct Writer {
    client: Client,
    node: String,
    metrics: AllocationMetrics,
    /// Until when this agent may write as the allocator; see [`crate::k8s::leader`].
    leader: watch::Receiver<Option<tokio::time::Instant>>,
    /// Events not yet accepted by the API, oldest first.
    outbox: Outbox,
    /// Set once the API server is seen dropping the `ipMode` of a status write (shared with the allocation pass's
    /// settings, which then stop expecting it).
    ip_mode_dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    pub fn new(
        client: Client,
        node: &str,
        metrics: AllocationMetrics,
        leader: watch::Receiver<Option<tokio::time::Instant>>,
        ip_mode_dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Writer {
        Writer {
            client,
            node: node.to_string(),
            metrics,
            leader,
            outbox: Outbox::default(),
            ip_mode_dropped,
        }
    }

    /// The allocation writer: one pass at a time, each reported as [`Input::Allocated`], until `stop` resolves or
    /// the agent stops listening.
    pub async fn run_allocation(
        mut self,
        mut passes: mpsc::UnboundedReceiver<Pass>,
        results: mpsc::UnboundedSender<Input>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut retry = crate::task::interval(EVENT_RETRY);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                pass = passes.recv() => {
                    let Some(pass) = pass else { return };
                    let wrote = !pass.services.is_empty();
                    let (written, retry) = self.apply(pass).await;
                    if results.send(Input::Allocated { wrote, retry, written }).is_err() {
                        return;
                    }
                }
                _ = retry.tick() => self.flush_events().await,
            }
        }
    }

    /// The announcement writer: the newest pass's writes, each reported as [`Input::Announced`].
    pub async fn run_announcement(
        mut self,
        mut passes: mpsc::UnboundedReceiver<OwnWrites>,
        results: mpsc::UnboundedSender<Input>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut retry = crate::task::interval(EVENT_RETRY);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                writes = passes.recv() => {
                    let Some(mut writes) = writes else { return };
                    while let Ok(next) = passes.try_recv() {
                        writes = writes.superseded_by(next);
                    }
                    let (written, ok) = self.apply_own(writes).await;
                    if results.send(Input::Announced { ok, written }).is_err() {
                        return;
                    }
                }
                _ = retry.tick() => self.flush_events().await,
            }
        }
    }

    /// Applies every action of an allocation pass while leading. Returns the Services as written and, on an API
    /// error, how long to wait before the next pass.
    async fn apply(&mut self, pass: Pass) -> (Written, Option<Duration>) {
        let mut written = Written::default();
        let mut retry = None;
        self.flush_events().await;
        for note in pass.config {
            if self.gate().is_some() {
                self.publish(&note.note, &note.reference).await;
            }
        }
        for action in pass.services {
            let Some(until) = self.gate() else {
                continue;
            };
            // A write still unanswered when leadership ends is abandoned: the next allocator may be writing by then.
            let result = tokio::time::timeout_at(until, self.write_service(&action, &mut written))
                .await
                .unwrap_or_else(|_| {
                    self.metrics.dropped_writes.inc();
                    Err(kube::Error::Service(
                        "no answer before this agent's leadership deadline".into(),
                    ))
                });
            match result {
                Ok(extra) => {
                    for note in action.notes.iter().chain(&extra) {
                        if note.reason == "IPAllocated" {
                            self.metrics.allocations.inc();
                        }
                        self.publish(note, &action.reference).await;
                    }
                }
                Err(error) => {
                    let conflict = matches!(&error, kube::Error::Api(s) if s.code == 409);
                    tracing::warn!(service = %action.service, %error, "writing Service failed; will retry");
                    let wait = if conflict {
                        Duration::from_millis(50)
                    } else {
                        Duration::from_secs(1)
                    };
                    retry = Some(retry.map_or(wait, |r: Duration| r.min(wait)));
                }
            }
        }
        (written, retry)
    }

    /// Applies this node's own announcement writes, which need no leadership. Returns what the API returned, and
    /// whether every write went through.
    async fn apply_own(&mut self, writes: OwnWrites) -> (Written, bool) {
        let OwnWrites {
            pass,
            node_reference,
        } = writes;
        let mut written = Written::default();
        let mut ok = true;
        if let Some(patch) = &pass.node_patch {
            let nodes: Api<Node> = Api::all(self.client.clone());
            match nodes
                .patch(&self.node, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(updated) => {
                    self.metrics.api_writes.inc();
                    written.nodes.push(updated);
                }
                Err(error) => {
                    tracing::warn!(%error, node = %self.node, "writing the Node annotations failed; will retry");
                    ok = false;
                }
            }
        }
        for note in &pass.node_notes {
            self.publish(note, &node_reference).await;
        }
        for action in pass.services {
            match self.write_service(&action, &mut written).await {
                Ok(extra) => {
                    for note in action.notes.iter().chain(&extra) {
                        self.publish(note, &action.reference).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(service = %action.service, %error, "writing Service annotations failed; will retry");
                    ok = false;
                }
            }
        }
        (written, ok)
    }

    /// While leading, the instant this agent's leadership ends; otherwise None, and a dropped write is counted. The
    /// deadline is checked here on this agent's own clock, not only when the elector last published: an elector
    /// stuck in a call has already published the deadline it will step down at.
    fn gate(&mut self) -> Option<tokio::time::Instant> {
        let until = (*self.leader.borrow()).filter(|u| tokio::time::Instant::now() < *u);
        if until.is_none() {
            self.metrics.dropped_writes.inc();
        }
        until
    }

    /// Writes one Service's metadata and status patches. Returns the Events the writes themselves call for (the
    /// API server dropping `ipMode`).
    async fn write_service(
        &self,
        action: &ServiceAction,
        written: &mut Written,
    ) -> Result<Vec<Note>, kube::Error> {
        let mut dropped = Vec::new();
        let api: Api<Service> = Api::namespaced(self.client.clone(), &action.service.namespace);
        let params = PatchParams::default();
        if let Some(patch) = &action.metadata {
            let svc = api
                .patch(&action.service.name, &params, &Patch::Merge(patch))
                .await?;
            self.metrics.api_writes.inc();
            written.services.push(svc);
        }
        if let Some(patch) = &action.status {
            let svc = api
                .patch_status(&action.service.name, &params, &Patch::Merge(patch))
                .await?;
            self.metrics.api_writes.inc();
            tracing::info!(service = %action.service, status = %patch, "wrote Service status");
            if crate::k8s::status::ip_mode_dropped(patch, &svc)
                && !self
                    .ip_mode_dropped
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let message = "the API server did not keep ipMode: Proxy in this Service's status (Kubernetes \
                               before 1.30, or the LoadBalancerIPMode feature gate off): kube-proxy programs this VIP \
                               too, beside IronLB's direct data plane. IronLB stops rewriting the status for it; \
                               upgrade the control plane, or run the integrated data plane";
                tracing::warn!(service = %action.service, "{message}");
                dropped.push(Note::warning("IPModeNotKept", message.to_string()));
            }
            written.services.push(svc);
        }
        Ok(dropped)
    }

    /// Queues the Event and, unless others already wait, sends it. A refused Event stays queued with its name and
    /// goes out at the next retry; once the API recovers it arrives once (AlreadyExists means an earlier try
    /// landed).
    async fn publish(&mut self, note: &Note, reference: &ObjectReference) {
        // While earlier Events wait, the API is refusing or slow: queue behind them and leave the retry to the
        // timer, so that a pass's writes never wait on one failing post per note.
        let waiting = !self.outbox.is_empty();
        self.outbox.push(note, reference, &self.node);
        if !waiting {
            self.flush_events().await;
        }
    }

    /// Sends queued Events, oldest first, until one fails.
    async fn flush_events(&mut self) {
        let sent = self.outbox.flush(&self.client).await;
        for _ in 0..sent {
            self.metrics.api_writes.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::index::ObjectKey;

    fn action(name: &str, reason: &'static str) -> ServiceAction {
        ServiceAction {
            service: ObjectKey::new("default", name),
            reference: ObjectReference::default(),
            status: None,
            metadata: Some(serde_json::json!({"metadata": {"annotations": {"a": name}}})),
            notes: vec![Note::normal(reason, format!("{name} {reason}"))],
        }
    }

    fn writes(node_note: &'static str, services: Vec<ServiceAction>) -> OwnWrites {
        OwnWrites {
            pass: AnnouncePass {
                node_patch: Some(serde_json::json!({"n": node_note})),
                node_notes: vec![Note::warning(node_note, node_note.to_string())],
                services,
            },
            node_reference: ObjectReference::default(),
        }
    }

    #[test]
    fn a_queued_pass_gives_way_to_the_next_and_keeps_its_events() {
        let older = writes("first", vec![action("a", "old-a"), action("b", "old-b")]);
        let mut newer = writes("second", vec![action("a", "new-a")]);
        // The same takeover seen again before it was written: one Event, not two.
        newer.pass.services[0]
            .notes
            .push(action("a", "old-a").notes.remove(0));
        let merged = older.superseded_by(newer);
        assert_eq!(
            merged.pass.node_patch,
            Some(serde_json::json!({"n": "second"})),
            "the newest Node patch wins"
        );
        let node_reasons: Vec<&str> = merged.pass.node_notes.iter().map(|n| n.reason).collect();
        assert_eq!(
            node_reasons,
            ["first", "second"],
            "Node Events are kept, in order"
        );
        assert_eq!(
            merged.pass.services.len(),
            1,
            "b is no longer the newest pass's to write"
        );
        let a_reasons: Vec<&str> = merged.pass.services[0]
            .notes
            .iter()
            .map(|n| n.reason)
            .collect();
        assert_eq!(a_reasons, ["new-a", "old-a"]);
    }
}
