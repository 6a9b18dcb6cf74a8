//! The agent's decisions, apart from its I/O: what to do next, and when, given what happened. [`Core`] owns the
//! cluster state and the validated configuration; [`Core::handle`] takes one [`Input`] (watch changes, leadership,
//! liveness, a periodic look at the node, the result of a pass, a timer) and returns the [`Output`]s the shell must
//! carry out, in order. It never waits and never touches the network, so a recorded sequence of inputs replays
//! exactly in a unit test.
//!
//! The rules it keeps:
//! - nothing is allocated or announced before every watch has listed once (an IP not yet seen could be handed out);
//! - only the allocator allocates, and a burst of changes costs one allocation pass (a short settle delay, never more
//!   than [`SETTLE_AT_MOST`] after the first change of the burst);
//! - an allocation pass that failed to write is retried after the delay it asked for, without blocking anything;
//! - every change that can move an announcement asks for an announcement pass, stamped with the time the change was
//!   seen. It runs at once unless the previous pass's writes are still out; then the changes gathered meanwhile cost
//!   one pass when they report (a pass is a full recompute: one per watch event would be quadratic in a burst).
//!   A change of liveness (membership, node Leases in use) never waits: that is the failover path. Others also wait
//!   as long as the last pass took ([`Core::announcement_took`]), so that a stream of changes cannot keep the loop
//!   (and the node's CPU) busy with passes. A pass whose writes failed is retried after [`ANNOUNCE_RETRY`];
//! - a change of BGP passwords asks for an announcement pass only: allocation does not depend on them;
//! - the memory an allocation pass freed goes back to the system once passes have been quiet for [`TRIM_AFTER`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use tokio::time::Instant;

use super::{AllocationMetrics, ConfigReport};
use crate::config::Validated;
use crate::k8s::index::ObjectKey;
use crate::k8s::state::{Change, ClusterState, Touched};
use crate::task::Deadline;

/// How long a burst of changes may go on before the allocation pass runs.
pub const SETTLE: Duration = Duration::from_millis(10);
/// The longest a stream of changes can hold the allocation pass back: it runs at most this long after the first
/// change it has not passed over, however often changes keep coming.
pub const SETTLE_AT_MOST: Duration = Duration::from_millis(100);
/// How long after a failed announcement write the pass runs again.
pub const ANNOUNCE_RETRY: Duration = Duration::from_millis(200);
/// How long allocation passes must have been quiet before freed memory is returned.
pub const TRIM_AFTER: Duration = Duration::from_millis(500);

/// What happened.
#[derive(Debug)]
pub enum Input {
    /// Watch events, in the order they arrived, first seen at `seen`.
    Changes { changes: Vec<Change>, seen: Instant },
    /// Whether this agent holds the allocator Lease now.
    Leadership(bool),
    /// The gossip membership, or its health, changed.
    Membership,
    /// The set of fresh node Leases changed; `in_use` when liveness is read from them now (gossip is not connected).
    NodeLeases { in_use: bool },
    /// The periodic look at the node: whether something there (interfaces, a held announcement, BGP sessions whose
    /// state the Node does not show yet) needs an announcement pass.
    Refresh { node_changed: bool },
    /// An allocation pass's writes are done: whether it had writes, how long to wait before retrying when a write
    /// failed, and the Services as the API returned them.
    Allocated {
        wrote: bool,
        retry: Option<Duration>,
        written: Written,
    },
    /// An announcement pass's writes are done; `ok` is false when one failed.
    Announced { ok: bool, written: Written },
    /// [`Core::next_deadline`] has passed.
    Timer,
}

/// Objects as the API returned them after a write, newer than (or as new as) what the watches delivered so far.
#[derive(Debug, Default)]
pub struct Written {
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Every watch has listed once: report ready.
    Ready,
    /// This agent became (true) or stopped being (false) the allocator.
    Leading(bool),
    /// Run an allocation pass over [`Core::state`] and [`Core::validated`], and report [`Input::Allocated`].
    Allocate,
    /// Run an announcement pass, for a change first seen at `trigger`, and report [`Input::Announced`].
    Announce { trigger: Instant },
    /// Return freed heap memory to the system.
    TrimMemory,
}

pub struct Core {
    pub state: ClusterState,
    validated: Validated,
    config_stale: bool,
    config_report: ConfigReport,
    metrics: AllocationMetrics,
    config_namespace: String,
    ready: bool,
    leading: bool,
    /// Changes the allocator has not passed over yet.
    dirty: bool,
    /// An allocation pass is out and its writes have not reported yet: the next one waits for them.
    allocating: bool,
    /// The first change not yet passed over, while `dirty`.
    dirty_since: Instant,
    /// When the allocation pass runs, once `dirty` and leading and synced.
    allocate: Deadline,
    /// The first unhandled change that needs an announcement pass, if any.
    announce: Option<Instant>,
    /// While set, an announcement pass waits for it (a failed write's retry).
    announce_retry: Deadline,
    /// An announcement pass is out and its writes have not reported yet.
    announcing: bool,
    /// The pending announcement follows a change of liveness: it runs even while writes are out.
    urgent: bool,
    /// Until then the next announcement pass waits, unless urgent: as long as the last one took, so that passes
    /// use at most half of the loop's time during a stream of changes.
    announce_hold: Deadline,
    trim: Deadline,
}

impl Core {
    pub fn new(metrics: AllocationMetrics, config_namespace: &str) -> Core {
        Core {
            state: ClusterState::default(),
            validated: Validated::default(),
            config_stale: true,
            config_report: ConfigReport::default(),
            metrics,
            config_namespace: config_namespace.to_string(),
            ready: false,
            leading: false,
            dirty: false,
            allocating: false,
            dirty_since: Instant::now(),
            allocate: Deadline::default(),
            announce: None,
            announce_retry: Deadline::default(),
            announcing: false,
            urgent: false,
            announce_hold: Deadline::default(),
            trim: Deadline::default(),
        }
    }

    /// The configuration as last validated; current whenever an [`Output::Allocate`] or [`Output::Announce`] is out.
    pub fn validated(&self) -> &Validated {
        &self.validated
    }

    /// The state, for a pass to write its own results into, beside the configuration it ran with.
    pub fn state_and_config(&mut self) -> (&mut ClusterState, &Validated) {
        (&mut self.state, &self.validated)
    }

    /// The earliest instant at which [`Input::Timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        // A pending announcement waits for the later of its retry delay and its CPU share, once its writes are in.
        let announce = self.announce.filter(|_| !self.announcing).and(
            [self.announce_retry.at(), self.announce_hold.at()]
                .into_iter()
                .flatten()
                .max(),
        );
        [self.allocation_due(), announce, self.trim.at()]
            .into_iter()
            .flatten()
            .min()
    }

    fn allocation_due(&self) -> Option<Instant> {
        (self.dirty && self.leading && !self.allocating && self.state.is_synced())
            .then_some(self.allocate.at())
            .flatten()
    }

    /// Takes one input and returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Changes { changes, seen } => {
                let mut moved = false;
                for change in changes {
                    match self.state.handle(change) {
                        Touched::Nothing => {}
                        Touched::Config => {
                            self.config_stale = true;
                            moved = true;
                        }
                        Touched::Services | Touched::Topology => moved = true,
                        Touched::Secrets => self.want_announcement(seen),
                    }
                }
                if moved {
                    self.mark_dirty(now);
                    self.want_announcement(seen);
                }
                if self.state.is_synced() && !self.ready {
                    self.ready = true;
                    out.push(Output::Ready);
                }
            }
            Input::Leadership(leading) => {
                if leading != self.leading {
                    self.leading = leading;
                    out.push(Output::Leading(leading));
                    if leading {
                        // A new allocator recomputes everything from the Services' status; what a follower noted
                        // dirty before counts from now.
                        self.dirty = false;
                        self.mark_dirty(now);
                    }
                }
            }
            Input::Membership => {
                self.urgent = true;
                self.want_announcement(now);
            }
            Input::NodeLeases { in_use } => {
                // With healthy gossip the Leases move nothing.
                if in_use {
                    self.urgent = true;
                    self.want_announcement(now);
                }
            }
            Input::Refresh { node_changed } => {
                if node_changed {
                    self.want_announcement(now);
                }
            }
            Input::Allocated {
                wrote,
                retry,
                written,
            } => {
                self.allocating = false;
                self.fold(written);
                // The allocator puts its own writes into the state, so their watch events change nothing later:
                // announce from the new state now, or a VIP this node owns would wait for the next look.
                if wrote {
                    self.want_announcement(now);
                }
                if let Some(retry) = retry {
                    self.dirty = true;
                    self.allocate.set(now + retry);
                }
                self.trim.set(now + TRIM_AFTER);
            }
            Input::Announced { ok, written } => {
                self.announcing = false;
                self.fold(written);
                if !ok {
                    self.want_announcement(now);
                    self.announce_retry.set(now + ANNOUNCE_RETRY);
                }
            }
            Input::Timer => {
                if self.allocation_due().is_some_and(|at| at <= now) {
                    self.dirty = false;
                    self.allocating = true;
                    self.allocate.clear();
                    self.refresh_config();
                    out.push(Output::Allocate);
                }
                if self.trim.at().is_some_and(|at| at <= now) {
                    self.trim.clear();
                    out.push(Output::TrimMemory);
                }
            }
        }
        if let Some(trigger) = self.announcement_due(now) {
            self.announce = None;
            self.announcing = true;
            self.urgent = false;
            self.announce_retry.clear();
            self.refresh_config();
            out.push(Output::Announce { trigger });
        }
        out
    }

    /// The last announcement pass took `took` of the loop's time, ending at `now`: the next one that is not urgent
    /// waits as long.
    pub fn announcement_took(&mut self, took: Duration, now: Instant) {
        self.announce_hold.set(now + took);
    }

    /// The trigger of an announcement pass that may run now.
    fn announcement_due(&self, now: Instant) -> Option<Instant> {
        let trigger = self.announce?;
        let waiting = self.announcing
            || self.announce_retry.at().is_some_and(|at| at > now)
            || self.announce_hold.at().is_some_and(|at| at > now);
        (self.state.is_synced() && (self.urgent || !waiting)).then_some(trigger)
    }

    /// Takes in what a write returned. An object deleted meanwhile stays deleted, and an older version than the
    /// state holds is ignored (see [`crate::k8s::index::ObjectIndex::apply`]).
    fn fold(&mut self, written: Written) {
        for svc in written.services {
            if self.state.services.get(&ObjectKey::of(&svc)).is_some() {
                self.state.services.apply(svc);
            }
        }
        for node in written.nodes {
            if self.state.nodes.get(&ObjectKey::of(&node)).is_some() {
                self.state.nodes.apply(node);
            }
        }
    }

    fn want_announcement(&mut self, seen: Instant) {
        self.announce.get_or_insert(seen);
    }

    /// A change for the allocator: the pass runs [`SETTLE`] after the last one, unless a retry is already set.
    fn mark_dirty(&mut self, now: Instant) {
        let retrying = self.dirty && self.allocate.at().is_some_and(|at| at > now + SETTLE);
        if !self.dirty {
            self.dirty_since = now;
        }
        self.dirty = true;
        if !retrying {
            self.allocate
                .set((now + SETTLE).min(self.dirty_since + SETTLE_AT_MOST));
        }
    }

    fn refresh_config(&mut self) {
        if self.config_stale {
            self.validated =
                self.config_report
                    .validate(&self.state, &self.metrics, &self.config_namespace);
            self.config_stale = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::state::ConfigKind;
    use k8s_openapi::api::core::v1::{Secret, Service};
    use kube::runtime::watcher::Event;

    /// Every watch listed, empty: what an agent sees on an empty cluster.
    fn synced() -> Vec<Change> {
        let mut all = vec![
            Change::Service(Event::InitDone),
            Change::EndpointSlice(Event::InitDone),
            Change::Node(Event::InitDone),
            Change::Namespace(Event::InitDone),
            Change::ConfigMap(Event::InitDone),
        ];
        all.extend(
            ConfigKind::ALL
                .iter()
                .map(|k| Change::Config(*k, Event::InitDone)),
        );
        all
    }

    fn service(name: &str, rv: &str) -> Change {
        Change::Service(Event::Apply(
            serde_json::from_value::<Service>(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
                "spec": {"type": "LoadBalancer"},
            }))
            .unwrap(),
        ))
    }

    fn secret(name: &str, rv: &str) -> Change {
        Change::Secret(Event::Apply(
            serde_json::from_value::<Secret>(serde_json::json!({
                "metadata": {"name": name, "namespace": "ironlb-system", "resourceVersion": rv},
            }))
            .unwrap(),
        ))
    }

    fn core() -> Core {
        Core::new(AllocationMetrics::default(), "metallb-system")
    }

    fn changes(changes: Vec<Change>, seen: Instant) -> Input {
        Input::Changes { changes, seen }
    }

    /// The announcement writer's report, with nothing written back.
    fn reported(ok: bool) -> Input {
        Input::Announced {
            ok,
            written: Written::default(),
        }
    }

    /// The allocation writer's report, with nothing written back.
    fn allocated(wrote: bool, retry: Option<Duration>) -> Input {
        Input::Allocated {
            wrote,
            retry,
            written: Written::default(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_is_decided_before_every_watch_has_listed() {
        let t0 = Instant::now();
        let mut core = core();
        assert_eq!(
            core.handle(Input::Leadership(true), t0),
            [Output::Leading(true)]
        );
        assert_eq!(core.handle(changes(vec![service("web", "1")], t0), t0), []);
        assert_eq!(
            core.next_deadline(),
            None,
            "no pass may be scheduled unsynced"
        );
        assert_eq!(core.handle(Input::Membership, t0), []);
        let t1 = t0 + ms(5);
        assert_eq!(
            core.handle(changes(synced(), t1), t1),
            [Output::Ready, Output::Announce { trigger: t0 }],
            "the first change seen stamps the announcement"
        );
        assert_eq!(core.next_deadline(), Some(t1 + SETTLE));
        assert_eq!(core.handle(Input::Timer, t1 + SETTLE), [Output::Allocate]);
    }

    #[test]
    fn a_burst_of_changes_costs_one_allocation_pass_and_only_the_leader_allocates() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(reported(true), t0);
        for i in 0..5u64 {
            let t = t0 + ms(i * 2);
            core.handle(changes(vec![service(&format!("s{i}"), "1")], t), t);
        }
        assert_eq!(
            core.next_deadline(),
            None,
            "a follower schedules no allocation"
        );
        assert_eq!(core.handle(Input::Timer, t0 + ms(100)), []);
        let t1 = t0 + ms(100);
        assert_eq!(
            core.handle(Input::Leadership(true), t1),
            [Output::Leading(true)]
        );
        let t2 = t1 + ms(3);
        core.handle(changes(vec![service("late", "1")], t2), t2);
        assert_eq!(
            core.next_deadline(),
            Some(t2 + SETTLE),
            "the settle restarts"
        );
        assert_eq!(core.handle(Input::Timer, t2 + ms(5)), []);
        assert_eq!(core.handle(Input::Timer, t2 + SETTLE), [Output::Allocate]);
        assert_eq!(core.handle(Input::Timer, t2 + SETTLE + ms(1)), []);
        // Losing the Lease stops allocation even with changes pending.
        core.handle(Input::Leadership(false), t2 + ms(20));
        core.handle(
            changes(vec![service("after", "1")], t2 + ms(21)),
            t2 + ms(21),
        );
        assert_eq!(core.handle(Input::Timer, t2 + ms(60)), []);
    }

    #[test]
    fn a_failed_allocation_write_is_retried_after_its_delay_without_blocking_announcements() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(Input::Leadership(true), t0);
        assert_eq!(core.handle(Input::Timer, t0 + SETTLE), [Output::Allocate]);
        let t1 = t0 + ms(50);
        assert_eq!(
            core.handle(allocated(true, Some(Duration::from_secs(1))), t1),
            [Output::Announce { trigger: t1 }]
        );
        core.handle(reported(true), t1 + ms(10));
        // A change during the wait neither hastens the retry nor holds up announcing it.
        let t2 = t1 + ms(100);
        assert_eq!(
            core.handle(changes(vec![service("web", "2")], t2), t2),
            [Output::Announce { trigger: t2 }]
        );
        assert_eq!(core.handle(Input::Timer, t2 + SETTLE), []);
        // The memory of the first pass went back meanwhile (quiet for TRIM_AFTER), as the retry comes due.
        assert_eq!(
            core.handle(Input::Timer, t1 + Duration::from_secs(1)),
            [Output::Allocate, Output::TrimMemory]
        );
        // Then the freed memory is returned once passes are quiet.
        let t3 = t1 + Duration::from_secs(1);
        assert_eq!(core.handle(allocated(false, None), t3), []);
        assert_eq!(core.next_deadline(), Some(t3 + TRIM_AFTER));
        assert_eq!(
            core.handle(Input::Timer, t3 + TRIM_AFTER),
            [Output::TrimMemory]
        );
        assert_eq!(core.next_deadline(), None);
    }

    #[test]
    fn a_failed_announcement_write_is_retried_later_keeping_its_trigger() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        assert_eq!(core.handle(reported(false), t0 + ms(1)), []);
        assert_eq!(core.next_deadline(), Some(t0 + ms(1) + ANNOUNCE_RETRY));
        assert_eq!(
            core.handle(Input::Timer, t0 + ms(1) + ANNOUNCE_RETRY),
            [Output::Announce {
                trigger: t0 + ms(1)
            }]
        );
        assert_eq!(core.handle(reported(false), t0 + ms(250)), []);
        // A membership change does not wait for the retry (it is the failover path), and keeps the older trigger.
        assert_eq!(
            core.handle(Input::Membership, t0 + ms(260)),
            [Output::Announce {
                trigger: t0 + ms(250)
            }]
        );
        assert_eq!(core.handle(Input::Timer, t0 + ms(250) + ANNOUNCE_RETRY), []);
        assert_eq!(core.handle(reported(true), t0 + ms(300)), []);
        assert_eq!(core.next_deadline(), None);
    }

    #[test]
    fn a_password_change_asks_for_an_announcement_pass_only() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(Input::Leadership(true), t0);
        core.handle(changes(synced(), t0), t0);
        core.handle(Input::Timer, t0 + SETTLE);
        core.handle(reported(true), t0 + SETTLE);
        let t2 = t0 + ms(200);
        assert_eq!(
            core.handle(changes(vec![secret("md5", "1")], t2), t2),
            [Output::Announce { trigger: t2 }]
        );
        assert_eq!(
            core.next_deadline(),
            None,
            "no allocation pass for a Secret"
        );
        // The same object again (a relist) changes nothing and asks for nothing.
        assert_eq!(core.handle(changes(vec![secret("md5", "1")], t2), t2), []);
    }

    #[test]
    fn node_leases_count_only_while_gossip_is_unhealthy_and_a_refresh_only_when_the_node_changed() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(reported(true), t0);
        assert_eq!(core.handle(Input::NodeLeases { in_use: false }, t0), []);
        assert_eq!(
            core.handle(
                Input::Refresh {
                    node_changed: false
                },
                t0
            ),
            []
        );
        assert_eq!(
            core.handle(Input::NodeLeases { in_use: true }, t0 + ms(1)),
            [Output::Announce {
                trigger: t0 + ms(1)
            }]
        );
        // A look at the node is no failover: it waits for the pass's writes.
        assert_eq!(
            core.handle(Input::Refresh { node_changed: true }, t0 + ms(2)),
            []
        );
        assert_eq!(
            core.handle(reported(true), t0 + ms(3)),
            [Output::Announce {
                trigger: t0 + ms(2)
            }]
        );
    }

    #[test]
    fn a_new_allocator_recomputes_everything() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(reported(true), t0);
        assert_eq!(core.next_deadline(), None);
        assert_eq!(
            core.handle(Input::Leadership(true), t0),
            [Output::Leading(true)]
        );
        assert_eq!(
            core.handle(Input::Leadership(true), t0),
            [],
            "a renewal is no change"
        );
        assert_eq!(core.handle(Input::Timer, t0 + SETTLE), [Output::Allocate]);
    }

    fn service_object(name: &str, rv: &str) -> Service {
        match service(name, rv) {
            Change::Service(Event::Apply(svc)) => svc,
            _ => unreachable!("service() builds an Apply"),
        }
    }

    fn rv_of(core: &Core, name: &str) -> Option<String> {
        core.state
            .services
            .get(&ObjectKey::new("default", name))
            .and_then(|s| s.metadata.resource_version.clone())
    }

    #[test]
    fn slow_allocation_writes_hold_back_only_the_next_allocation_pass() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(
            changes(vec![service("web", "1"), service("gone", "1")], t0),
            t0,
        );
        core.handle(reported(true), t0);
        core.handle(Input::Leadership(true), t0);
        assert_eq!(core.handle(Input::Timer, t0 + SETTLE), [Output::Allocate]);

        // The pass's writes hang. Changes meanwhile are announced at once; no second allocation pass starts.
        let t1 = t0 + ms(100);
        let gone = Change::Service(Event::Delete(service_object("gone", "2")));
        assert_eq!(
            core.handle(changes(vec![service("db", "1"), gone], t1), t1),
            [Output::Announce { trigger: t1 }]
        );
        core.handle(reported(true), t1);
        assert_eq!(
            core.next_deadline(),
            None,
            "nothing is due while the writes are out"
        );
        assert_eq!(core.handle(Input::Timer, t1 + SETTLE), []);

        // The writes report: what the API returned is folded in, a Service deleted meanwhile stays deleted, and the
        // changes that waited get their pass at once.
        let t2 = t0 + Duration::from_secs(10);
        let written = Written {
            services: vec![service_object("web", "5"), service_object("gone", "3")],
            nodes: vec![],
        };
        assert_eq!(
            core.handle(
                Input::Allocated {
                    wrote: true,
                    retry: None,
                    written,
                },
                t2
            ),
            [Output::Announce { trigger: t2 }]
        );
        assert_eq!(rv_of(&core, "web").as_deref(), Some("5"));
        assert_eq!(
            rv_of(&core, "gone"),
            None,
            "a write's answer does not bring back a deleted Service"
        );
        assert_eq!(
            core.next_deadline(),
            Some(t1 + SETTLE),
            "the waiting pass is overdue"
        );
        assert_eq!(core.handle(Input::Timer, t2), [Output::Allocate]);
    }

    #[test]
    fn an_older_answer_does_not_undo_a_newer_watch_event() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(changes(vec![service("web", "7")], t0), t0);
        core.handle(
            Input::Announced {
                ok: true,
                written: Written {
                    services: vec![service_object("web", "6")],
                    nodes: vec![],
                },
            },
            t0,
        );
        assert_eq!(rv_of(&core, "web").as_deref(), Some("7"));
    }

    /// A core that synced with one Service at `t0` and ran its first announcement pass, whose writes are out.
    fn announcing(t0: Instant) -> Core {
        let mut core = core();
        let mut first = synced();
        first.push(service("web", "1"));
        assert_eq!(
            core.handle(changes(first, t0), t0),
            [Output::Ready, Output::Announce { trigger: t0 }]
        );
        core
    }

    #[test]
    fn changes_while_announcement_writes_are_out_cost_one_pass_but_liveness_never_waits() {
        let t0 = Instant::now();
        let mut core = announcing(t0);
        // The writes are out: a burst of Service changes asks for nothing yet.
        for i in 1..=50u64 {
            let at = t0 + ms(i);
            assert_eq!(
                core.handle(changes(vec![service(&format!("s{i}"), "1")], at), at),
                []
            );
        }
        assert_eq!(
            core.next_deadline(),
            None,
            "the burst waits for the writes, not a timer"
        );
        // They report: one pass for the whole burst, stamped with its first change.
        assert_eq!(
            core.handle(reported(true), t0 + ms(60)),
            [Output::Announce {
                trigger: t0 + ms(1)
            }]
        );
        // A membership change runs at once, writes out or not.
        assert_eq!(
            core.handle(Input::Membership, t0 + ms(61)),
            [Output::Announce {
                trigger: t0 + ms(61)
            }]
        );
    }

    #[test]
    fn a_stream_of_changes_holds_allocation_back_at_most_settle_at_most() {
        let t0 = Instant::now();
        let mut core = core();
        core.handle(changes(synced(), t0), t0);
        core.handle(Input::Leadership(true), t0);
        assert_eq!(core.handle(Input::Timer, t0 + SETTLE), [Output::Allocate]);
        core.handle(allocated(false, None), t0 + SETTLE);
        // A change every 5 ms, each inside the settle delay of the one before.
        let start = t0 + ms(20);
        for i in 0..40u64 {
            let at = start + ms(5 * i);
            core.handle(changes(vec![service(&format!("s{i}"), "1")], at), at);
        }
        assert_eq!(core.next_deadline(), Some(start + SETTLE_AT_MOST));
    }

    #[test]
    fn announcement_passes_take_at_most_half_the_loop_unless_liveness_changed() {
        let t0 = Instant::now();
        let mut core = announcing(t0);
        // That pass took 40 ms of CPU; its writes report at once.
        core.announcement_took(ms(40), t0 + ms(40));
        let t1 = t0 + ms(41);
        core.handle(changes(vec![service("db", "1")], t1), t1);
        assert_eq!(core.handle(reported(true), t1), []);
        assert_eq!(core.next_deadline(), Some(t0 + ms(80)));
        assert_eq!(
            core.handle(Input::Timer, t0 + ms(80)),
            [Output::Announce { trigger: t1 }]
        );
        core.announcement_took(ms(40), t0 + ms(120));
        core.handle(reported(true), t0 + ms(121));
        assert_eq!(
            core.handle(Input::Membership, t0 + ms(122)),
            [Output::Announce {
                trigger: t0 + ms(122)
            }],
            "a change of liveness does not wait"
        );
    }
}
