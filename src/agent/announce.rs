//! The agent's announcement side: membership, owner choice for this node, the ARP/NDP responder, strict ARP, VIP
//! binding and the writes that make ownership visible.
//!
//! ```text
//!  Node objects ──seeds──▶ membership (SWIM/UDP) ──live──┐
//!  ClusterState + Config ─────────────────────────────────┼─▶ Announcer::pass ──Announcements──▶ ArpResponder
//!  rtnetlink: local interfaces ───────────────────────────┤          │ bind set ──▶ AddressReconciler (kube-ipvs0)
//!  /proc: strict ARP sysctls ─────────────────────────────┘          └─ writes ───▶ Node / Service annotations, Events
//! ```
//!
//! Every agent runs the same pure planner on the same inputs, so all agree on each VIP's owner without asking each
//! other; the only thing they exchange is who is alive. A pass runs at once on a membership change, since that is the
//! failover path. Besides gossip, [`Announcer::start`] runs the per-node Lease task ([`node_lease`]), whose view of
//! live nodes the main loop uses while gossip is unhealthy or absent (see [`gossip::live_nodes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Client;
use kube::api::Api;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::metallb_metrics::SpeakerAnnounced;
use super::node_link::{BindRequest, LocalFacts, NodeLink};
use crate::alloc::ServiceKey;
use crate::arp::{
    Announce, Announcements, ArpConfig, ArpMetrics, ArpResponder, ArpResponderHandle,
};
use crate::config::Validated;
use crate::gossip::{self, MembershipConfig, MembershipMetrics};
use crate::k8s::allocation::ServiceAction;
use crate::k8s::announcement::{self, AnnouncementNotes};
use crate::k8s::client::Clients;
use crate::k8s::events::Note;
use crate::k8s::index::ObjectKey;
use crate::k8s::node_lease::{self, NodeLeaseTiming};
use crate::k8s::state::ClusterState;
use crate::netif::StrictArpMode;
use crate::netif::proxy_mode::ProxyMode;
use crate::netif::strict_arp::{self, StrictArpMetrics};
use crate::plan::input::NotAnnounced;
use crate::plan::owner::{Cause, OwnerChoice};
use crate::plan::visibility::ANNOUNCED_CAUSE_ANNOTATION;
use crate::plan::{self, PlanInput, node_plan, node_vips, subnets_annotation};
use crate::task::Task;

/// The key in the membership Secret, as in MetalLB's `memberlist` Secret.
pub const GOSSIP_SECRET_KEY: &str = "secretkey";

#[derive(clap::Args, Clone, Debug)]
pub struct AnnounceArgs {
    /// Strict ARP: `enforce` sets it, `check` refuses to announce without it, `off` ignores it.
    #[arg(long, env = "IRONLB_STRICT_ARP", value_enum, default_value_t = StrictArpMode::Check)]
    pub strict_arp: StrictArpMode,
    /// UDP port of the membership gossip between agents.
    #[arg(long, env = "IRONLB_GOSSIP_PORT", default_value_t = 7946)]
    pub gossip_port: u16,
    /// Secret (in the agent's namespace) whose `secretkey` authenticates the gossip.
    #[arg(
        long,
        env = "IRONLB_GOSSIP_SECRET",
        default_value = "ironlb-memberlist"
    )]
    pub gossip_secret: String,
    /// Seconds between repeated gratuitous ARP / unsolicited NA for owned VIPs; 0 sends them only on takeover.
    #[arg(long, env = "IRONLB_GARP_PERIOD", default_value_t = 3)]
    pub garp_period: u64,
    /// The link the VIPs are bound on in the integrated data plane.
    #[arg(long, env = "IRONLB_VIP_LINK", default_value = "kube-ipvs0")]
    pub vip_link: String,
    /// Set from `--dataplane`: in the direct data plane the VIP link is IronLB's own and always holds the VIPs.
    #[arg(skip)]
    pub direct: bool,
    /// kube-proxy's metrics address on this node, asked for its mode (`GET /proxyMode`) every 2 s for the Node's
    /// `ironlb.io/kube-proxy-mode` and `ironlb status`; `none` asks nothing. kube-proxy's default is
    /// 127.0.0.1:10249.
    #[arg(
        long,
        env = "IRONLB_KUBE_PROXY_METRICS_ADDR",
        default_value = "127.0.0.1:10249",
        value_parser = parse_kube_proxy_addr
    )]
    pub kube_proxy_metrics_addr: KubeProxyAddr,
    /// Seconds between renewals of this node's Lease `ironlb-node-<node>`, the liveness fallback used while gossip
    /// is unhealthy or has no key. Costs one API write per node per period; 0 turns the fallback off (Node Ready
    /// alone then decides without gossip).
    #[arg(long, env = "IRONLB_NODE_LEASE_PERIOD", default_value_t = 1)]
    pub node_lease_period: u64,
    /// Seconds a node counts as live after its Lease was last seen renewed (at least twice the period).
    #[arg(long, env = "IRONLB_NODE_LEASE_DURATION", default_value_t = 3)]
    pub node_lease_duration: u64,
}

/// Where kube-proxy's metrics port is, or None to not ask it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeProxyAddr(pub Option<SocketAddr>);

fn parse_kube_proxy_addr(text: &str) -> Result<KubeProxyAddr, String> {
    if text.is_empty() || text == "none" {
        return Ok(KubeProxyAddr(None));
    }
    text.parse()
        .map(|addr| KubeProxyAddr(Some(addr)))
        .map_err(|e| format!("{e}: expected an address and port like 127.0.0.1:10249, or `none`"))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("cannot start the ARP/NDP responder")]
    Responder(#[source] crate::arp::Error),
}

/// What one announcement pass asks the agent to write.
#[derive(Debug, Default)]
pub struct AnnouncePass {
    pub node_patch: Option<serde_json::Value>,
    pub node_notes: Vec<Note>,
    pub services: Vec<ServiceAction>,
}

pub struct Announcer {
    /// The rtnetlink connection behind `handle`, and the gossip membership when it runs; aborted on drop.
    _netlink: Task<()>,
    _membership: Option<Task<()>>,
    node: String,
    args: AnnounceArgs,
    lb_class: Option<String>,
    announcements: watch::Sender<Announcements>,
    _responder: ArpResponderHandle,
    seeds: watch::Sender<BTreeMap<String, SocketAddr>>,
    /// The node's links and strict ARP verdict, as the node link task last read them.
    facts: watch::Receiver<LocalFacts>,
    /// What the last pass wants bound on the VIP link, for the node link task.
    bind: watch::Sender<Option<BindRequest>>,
    /// The node link task, until the agent takes it to run among its tasks.
    link_task: Option<NodeLink>,
    strict_reported: Option<bool>,
    /// The gossip standing the last pass saw, to log its changes.
    standing_reported: Option<gossip::Standing>,
    notes: AnnouncementNotes,
    /// The groups this node took over from another node, counted and explained once each.
    moves: Moves,
    /// VIPs this node advertises over BGP, listed in its `ironlb.io/vips` with the Layer 2 ones.
    bgp_vips: BTreeSet<IpAddr>,
    /// The Services behind them, for `metallb_speaker_announced`.
    bgp_services: BTreeMap<ServiceKey, Vec<IpAddr>>,
    /// `metallb_speaker_announced`, over Layer 2 and BGP.
    announced: SpeakerAnnounced,
    /// `ironlb_vips_without_owner`: VIPs an L2Advertisement covers that no node announces, by this node's view.
    without_owner: Gauge,
    /// The Services this node announces in Layer 2 mode, with their restricted interfaces, for ServiceL2Status.
    layer2_status: BTreeMap<ServiceKey, Vec<String>>,
    /// This node's `ironlb.io/bgp-peers` value; empty without sessions.
    bgp_peers: String,
    /// Until membership has found the other Ready nodes, or until this deadline, announce nothing: an agent that
    /// starts alone would otherwise claim every VIP for a moment and send gratuitous ARP for them.
    startup_hold: Option<Instant>,
    /// Set once the agent is told to stop: the reason its Node shows in
    /// [`crate::plan::input::HANDING_OFF_ANNOTATION`] while this node's groups move to others.
    stopping: Option<&'static str>,
    /// Why this node cannot forward a VIP (the direct data plane without IPVS): its Node shows it in
    /// [`crate::plan::input::CANNOT_FORWARD_ANNOTATION`], and no group is given to it.
    cannot_forward: Option<String>,
    /// How many groups the last pass saw published as announced by this node.
    published_here: usize,
    /// After the cluster declared this node Down, until when it yields what the others took (see
    /// [`Announcer::rejoined`]).
    rejoin_hold: Option<Instant>,
}

/// The longest a node the cluster declared Down yields the groups the others took, waiting for its API watches to
/// show their new owners (they deliver in milliseconds once the connection is back; the bound covers a slow API).
pub const REJOIN_HOLD: Duration = Duration::from_secs(3);

/// The longest a starting agent waits for membership to find its peers before announcing anyway.
pub const STARTUP_HOLD: Duration = Duration::from_secs(3);

/// Membership as the main loop sees it.
pub struct Liveness {
    pub live: watch::Receiver<BTreeSet<String>>,
    pub healthy: watch::Receiver<bool>,
    /// True while gossip hears from no peer (see [`gossip::published_live`]).
    pub cut_off: watch::Receiver<bool>,
    /// Counts the times the cluster declared this node Down and it rejoined (see [`Announcer::rejoined`]).
    pub rejoined: watch::Receiver<u64>,
    /// Whether gossip runs at all (it needs the key and an address).
    pub gossip: bool,
    /// Nodes with a fresh node Lease; None while that signal is off or unavailable (see [`node_lease`]).
    pub leases: watch::Receiver<Option<BTreeSet<String>>>,
    /// The node Lease task, not yet started: it renews this node's Lease and deletes it once `stop` turns true. The
    /// agent runs it on a thread of its own, among the tasks it awaits before exiting.
    pub lease_task: Option<futures::future::BoxFuture<'static, ()>>,
}

impl Liveness {
    /// Where gossip stands now.
    pub fn standing(&self) -> gossip::Standing {
        gossip::Standing::of(self.gossip, *self.healthy.borrow(), *self.cut_off.borrow())
    }
}

impl Announcer {
    /// Opens netlink, starts the responder and, when the gossip key can be read, the membership.
    pub async fn start(
        node: &str,
        args: AnnounceArgs,
        lb_class: Option<String>,
        namespace: &str,
        clients: &Clients,
        registry: &mut Registry,
        stop: watch::Receiver<bool>,
    ) -> Result<(Announcer, Liveness), Error> {
        let client = &clients.request;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
        let netlink = Task::spawn("rtnetlink connection", connection);
        let (announcements, plan_rx) = watch::channel(Announcements::default());
        let arp_config = ArpConfig {
            garp_period: Duration::from_secs(args.garp_period),
            ..ArpConfig::default()
        };
        let responder = ArpResponder::start(plan_rx, arp_config, ArpMetrics::register(registry))
            .map_err(Error::Responder)?;
        let strict_metrics = StrictArpMetrics::register(registry);
        let (link_task, facts, bind) = NodeLink::start(
            handle.clone(),
            &args.vip_link,
            args.direct,
            args.kube_proxy_metrics_addr.0,
            args.strict_arp,
            strict_metrics,
        )
        .await;

        let (seeds, seeds_rx) = watch::channel(BTreeMap::new());
        let (live_tx, live) = watch::channel(BTreeSet::from([node.to_string()]));
        let (healthy_tx, healthy) = watch::channel(false);
        let (cut_off_tx, cut_off) = watch::channel(false);
        let (rejoined_tx, rejoined) = watch::channel(0);
        let membership_metrics = MembershipMetrics::register(registry);
        let lease_timing =
            NodeLeaseTiming::from_flags(args.node_lease_period, args.node_lease_duration);
        let mut membership_task = None;
        match gossip_key(client, namespace, &args.gossip_secret).await {
            Ok(key) => {
                let advertise = advertise_address(client, node, &handle).await;
                let port = args.gossip_port;
                match advertise {
                    Some(ip) => {
                        let mut config = MembershipConfig::new(
                            node.to_string(),
                            SocketAddr::new(unspecified_like(ip), port),
                            SocketAddr::new(ip, port),
                            key,
                        );
                        config.timing.isolation_grace =
                            gossip::isolation_grace(lease_timing.as_ref().map(|t| t.duration));
                        let mut stop = stop.clone();
                        // The failure detector runs on a thread of its own: a long pass of the agent's loop must
                        // not delay a probe or an ack (SWIM declares a member that stalls for 300 ms Down).
                        let membership = Task::spawn_on_thread("gossip membership", async move {
                            let stopped = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            if let Err(error) = gossip::run(
                                config,
                                seeds_rx,
                                gossip::Published {
                                    live: live_tx,
                                    healthy: healthy_tx,
                                    cut_off: cut_off_tx,
                                    rejoined: rejoined_tx,
                                },
                                membership_metrics,
                                stopped,
                            )
                            .await
                            {
                                tracing::error!(%error, "membership stopped; falling back to Node Ready");
                            }
                        });
                        match membership {
                            Ok(task) => membership_task = Some(task),
                            Err(error) => tracing::error!(
                                %error,
                                "cannot start the gossip thread; falling back to the node Leases and Node Ready"
                            ),
                        }
                    }
                    None => tracing::error!(
                        node,
                        "no address to gossip from (no InternalIP on the Node, no global IPv4 address); \
                         falling back to Node Ready for liveness"
                    ),
                }
            }
            Err(why) => tracing::error!(
                secret = %format!("{namespace}/{}", args.gossip_secret),
                error = ?why,
                "membership disabled: {why}; falling back to the node Leases and Node Ready for liveness, so \
                 failover takes the node Lease duration (or, with --node-lease-period 0, as long as the Node \
                 controller needs to mark a node NotReady)"
            ),
        }
        let (leases_tx, leases) = watch::channel(None);
        let lease_metrics = node_lease::NodeLeaseMetrics::register(registry);
        let lease_task = match lease_timing {
            Some(timing) => {
                tracing::info!(
                    lease = %node_lease::lease_name(node),
                    period = ?timing.period,
                    duration = ?timing.duration,
                    "node lease fallback on"
                );
                // Run on a thread of its own (see `agent::run_with`), so with clients built there.
                let (clients, namespace, node, stop) = (
                    clients.clone(),
                    namespace.to_string(),
                    node.to_string(),
                    stop.clone(),
                );
                Some(FutureExt::boxed(clients.run_anew(
                    "node lease",
                    move |own| {
                        node_lease::run(
                            Api::namespaced(own.request, &namespace),
                            Api::namespaced(own.watch, &namespace),
                            namespace.clone(),
                            node,
                            timing,
                            leases_tx,
                            lease_metrics,
                            stop,
                        )
                    },
                )))
            }
            None => {
                tracing::info!("node lease fallback off (--node-lease-period 0)");
                None
            }
        };
        let gossip_on = membership_task.is_some();
        let announcer = Announcer {
            _netlink: netlink,
            _membership: membership_task,
            node: node.to_string(),
            args,
            lb_class,
            announcements,
            _responder: responder,
            seeds,
            facts,
            bind,
            link_task: Some(link_task),
            strict_reported: None,
            standing_reported: None,
            notes: AnnouncementNotes::default(),
            bgp_vips: BTreeSet::new(),
            bgp_peers: String::new(),
            startup_hold: Some(Instant::now() + STARTUP_HOLD),
            stopping: None,
            cannot_forward: None,
            published_here: 0,
            rejoin_hold: None,
            moves: Moves::register(registry),
            bgp_services: BTreeMap::new(),
            layer2_status: BTreeMap::new(),
            announced: SpeakerAnnounced::register(registry),
            without_owner: {
                let gauge = Gauge::default();
                registry.register(
                    "ironlb_vips_without_owner",
                    "VIPs that an L2Advertisement covers, and no BGPAdvertisement, that no live node can announce \
                     (every agent computes the same from what it sees)",
                    gauge.clone(),
                );
                gauge
            },
        };
        Ok((
            announcer,
            Liveness {
                live,
                healthy,
                cut_off,
                rejoined,
                gossip: gossip_on,
                leases,
                lease_task,
            },
        ))
    }

    /// The node link task, to run among the agent's tasks until `stop` resolves; None after the first call.
    pub fn take_link_task(
        &mut self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.link_task.take().map(|link| link.run(stop))
    }

    /// Resolves when the node's links or strict ARP verdict changed in a way an announcement pass depends on; never
    /// once the node link task is gone (the agent stops on that anyway).
    pub async fn local_changed(&mut self) {
        if self.facts.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether announcements are still held back at startup; the main loop runs passes until they are not.
    pub fn holding(&self) -> bool {
        self.startup_hold.is_some()
    }

    /// Starts the hand-off of a stopping agent: from the next pass on, its Node carries
    /// [`crate::plan::input::HANDING_OFF_ANNOTATION`], so every agent moves this node's groups to others, and this
    /// node claims nothing new. It keeps answering for each group until the new owner publishes it (see
    /// `make_before_break`).
    pub fn begin_hand_off(&mut self) {
        self.stopping = Some("agent stopping");
    }

    /// The cluster declared this node Down (a cut link, a long pause) and it rejoined. The others took its groups
    /// over meanwhile and published them, but this node's API watches may not have caught up yet: gossip comes back
    /// first. Until they have (every group it owns in its own view shows another owner), at most [`REJOIN_HOLD`], it
    /// acts as the others decided while it was Down: it answers only for groups nobody else could take.
    pub fn rejoined(&mut self, now: Instant) {
        tracing::info!(
            node = %self.node,
            "declared Down by the others: yielding the VIPs they took until this node's view catches up, at most \
             {REJOIN_HOLD:?}"
        );
        self.rejoin_hold = Some(now + REJOIN_HOLD);
    }

    /// Records why this node cannot forward a VIP: from the next pass on, its Node says so in
    /// [`crate::plan::input::CANNOT_FORWARD_ANNOTATION`], and the others give it no group while one of them can.
    pub fn set_cannot_forward(&mut self, why: Option<&str>) {
        self.cannot_forward = why.map(str::to_string);
    }

    /// Whether a stopping agent has handed everything over: no group is published as announced by this node.
    pub fn handed_off(&self) -> bool {
        self.stopping.is_some() && self.published_here == 0
    }

    /// Plans this node's announcements and returns the writes that make them visible. `trigger` is when the change
    /// behind this pass was observed: a VIP this pass takes over is measured for failover from then.
    /// The VIPs this node advertises over BGP, for its `ironlb.io/vips` annotation.
    /// The Services this node announced in Layer 2 mode in the last pass, with the interfaces its L2Advertisements
    /// restrict it to (empty: any).
    pub fn layer2_status(&self) -> &BTreeMap<ServiceKey, Vec<String>> {
        &self.layer2_status
    }

    /// The VIPs this node advertises over BGP, and the Services behind them.
    pub fn set_bgp_vips(
        &mut self,
        vips: BTreeSet<IpAddr>,
        services: BTreeMap<ServiceKey, Vec<IpAddr>>,
    ) {
        self.bgp_vips = vips;
        self.bgp_services = services;
    }

    /// This node's BGP sessions as its `ironlb.io/bgp-peers` value (see [`plan::visibility::bgp_peers`]).
    pub fn set_bgp_peers(&mut self, value: String) {
        self.bgp_peers = value;
    }

    pub fn pass(
        &mut self,
        state: &ClusterState,
        validated: &Validated,
        live: &BTreeSet<String>,
        standing: gossip::Standing,
        trigger: Instant,
    ) -> AnnouncePass {
        self.seeds.send_if_modified(|seeds| {
            let fresh = announcement::gossip_seeds(state, self.args.gossip_port);
            let changed = *seeds != fresh;
            *seeds = fresh;
            changed
        });
        let input = PlanInput::from_cluster(state, &validated.config, self.lb_class.as_deref());
        let mut assignments = plan::owner::assign(&input.groups, live);
        self.without_owner.set(
            i64::try_from(vips_without_owner(&input.groups, &assignments)).unwrap_or(i64::MAX),
        );
        let stopping = self.stopping.is_some();
        assignments.retain(|_, a| {
            a.owner != self.node
                || (gossip::may_claim(standing, a.cause) && (!stopping || a.cause == Cause::Kept))
        });
        if let Some(until) = self.rejoin_hold {
            let yielded = yield_after_rejoin(&self.node, &input.groups, &mut assignments);
            if yielded == 0 || Instant::now() >= until {
                tracing::info!(node = %self.node, still_stale = yielded, "rejoin hold over");
                self.rejoin_hold = None;
            }
        }
        // Only groups some node may own in Layer 2 mode: a BGP-only group's `announced-by` lists its advertisers,
        // and a group nobody else can take has nobody to wait for.
        self.published_here = input
            .groups
            .iter()
            .filter(|g| {
                g.published_owner.as_deref() == Some(self.node.as_str())
                    && assignments.contains_key(&g.key)
            })
            .count();
        if self.standing_reported != Some(standing) {
            self.standing_reported = Some(standing);
            match standing {
                gossip::Standing::CutOff => {
                    tracing::warn!(node = %self.node, "gossip hears no peer: keeping the \
                    VIPs this node owns, taking over only those whose owner's node Lease has expired")
                }
                gossip::Standing::Unhealthy => {
                    tracing::warn!(node = %self.node, "gossip unhealthy: liveness from \
                    the node Leases; no VIP moves to level the load")
                }
                gossip::Standing::Connected | gossip::Standing::Off => {}
            }
        }
        let owners = assignments
            .iter()
            .map(|(k, a)| (*k, a.owner.clone()))
            .collect();
        let facts = self.facts.borrow_and_update().clone();
        let local: Vec<plan::InterfaceFacts> =
            facts.interfaces.iter().map(to_plan_interface).collect();
        let held = make_before_break(&self.node, &input.groups, &assignments)
            .map(|kept| node_plan(&self.node, &input.groups, &kept, &local).announce);
        let mut node_plan = node_plan(&self.node, &input.groups, &owners, &local);
        let yielding = yielding(standing, &node_plan.announce, held.as_ref());
        if let Some(announce) = held {
            node_plan.announce = announce;
        }

        let mut pass = AnnouncePass::default();
        let allowed = facts.strict_allowed();
        let cannot_answer = facts.cannot_answer();
        if self.strict_reported != Some(allowed) {
            self.strict_reported = Some(allowed);
            if let Some(why) = &cannot_answer {
                tracing::warn!(node = %self.node, %why, "announcing nothing; other nodes take this node's VIPs");
                pass.node_notes.push(Note::warning(
                    "StrictARPNotEffective",
                    format!(
                        "not announcing any VIP, and other nodes take this node's: {why}. Fix: {} (or kube-proxy \
                         `strictARP: true`), or run the agent with --strict-arp=enforce",
                        strict_arp::FIX_COMMAND
                    ),
                ));
            }
        }
        if let Some(deadline) = self.startup_hold {
            let ready = announcement::ready_nodes(state);
            let others_ready = ready.iter().filter(|n| **n != self.node).count();
            let others_live = live
                .iter()
                .filter(|n| **n != self.node && ready.contains(*n))
                .count();
            if others_live >= others_ready || Instant::now() >= deadline {
                tracing::info!(node = %self.node, ?live, "membership settled; announcing");
                self.startup_hold = None;
            }
        }
        let holding = self.startup_hold.is_some();
        if !allowed || holding {
            node_plan.announce.clear();
            node_plan.owned_services.clear();
            node_plan.unannounceable.clear();
        }

        self.announcements.send_if_modified(|current| {
            let mut next = Announcements::default();
            for (ip, interfaces) in &node_plan.announce {
                let since = match current.vips.get(ip) {
                    Some(existing) => existing.since,
                    None => Some(trigger),
                };
                next.vips.insert(
                    *ip,
                    Announce {
                        interfaces: interfaces.clone(),
                        since,
                        yields: yielding.contains(ip),
                    },
                );
            }
            let changed = *current != next;
            *current = next;
            changed
        });
        let layer2: BTreeMap<ServiceKey, Vec<IpAddr>> = node_plan
            .owned_services
            .iter()
            .map(|(service, ips)| {
                let ips = ips
                    .iter()
                    .copied()
                    .filter(|ip| node_plan.announce.contains_key(ip));
                (service.clone(), ips.collect::<Vec<_>>())
            })
            .filter(|(_, ips)| !ips.is_empty())
            .collect();
        self.announced
            .record(&self.node, &layer2, &self.bgp_services);
        // For ServiceL2Status: the interfaces, only where the L2Advertisements restrict them, as MetalLB lists them.
        self.layer2_status = input
            .groups
            .iter()
            .flat_map(|g| {
                let interfaces: Vec<String> = match g.l2_interfaces.get(&self.node) {
                    Some(plan::Interfaces::Only(names)) => names.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                g.services
                    .keys()
                    .filter(|service| layer2.contains_key(*service))
                    .map(move |service| (service.clone(), interfaces.clone()))
            })
            .collect();

        let vips = if allowed {
            node_vips(&self.node, &input.groups, &owners)
        } else {
            String::new()
        };
        let vips = plan::visibility::merge_vips(&vips, &self.bgp_vips);
        let node_obj: Option<&Node> = state
            .nodes
            .get(&crate::k8s::index::ObjectKey::new("", self.node.clone()));
        pass.node_patch = announcement::node_patch(
            node_obj,
            &announcement::NodeAnnotations {
                vips: &vips,
                subnets: &subnets_annotation(&local),
                bgp_peers: &self.bgp_peers,
                cannot_answer: cannot_answer.as_deref().unwrap_or_default(),
                cannot_forward: self.cannot_forward.as_deref().unwrap_or_default(),
                handing_off: self.stopping.unwrap_or_default(),
                proxy_mode: facts
                    .proxy_mode
                    .as_ref()
                    .map(ProxyMode::name)
                    .unwrap_or_default(),
            },
        );
        pass.services = announcement::service_actions(
            state,
            &self.node,
            &node_plan,
            &mut self.notes,
            k8s_openapi::jiff::Timestamp::now(),
        );
        let handing_off: BTreeSet<&str> = input
            .nodes
            .iter()
            .filter(|n| n.handing_off || n.excluded)
            .map(|n| n.name.as_str())
            .collect();
        self.moves.explain(
            &self.node,
            &input.groups,
            &assignments,
            &handing_off,
            &mut pass.services,
        );
        // Without strict ARP, a VIP bound on kube-ipvs0 would make this node's kernel answer ARP for it, so this
        // node binds nothing either (and removes nothing: what kube-proxy binds is kube-proxy's).
        let request = allowed.then(|| BindRequest {
            wanted: node_plan.bind,
            pools: validated.config.pools.values().cloned().collect(),
        });
        self.bind.send_if_modified(|current| {
            let changed =
                current.as_ref().map(|r| &r.wanted) != request.as_ref().map(|r| &r.wanted);
            *current = request;
            changed
        });
        pass
    }
}

/// The VIPs of the groups an L2Advertisement covers (eligible nodes, or none eligible) and no BGPAdvertisement does,
/// that `assignments` gives to no node: announced by nobody. A group no advertisement covers, or whose Local
/// Service has no serving endpoint, is left unannounced on purpose and is not counted.
fn vips_without_owner(
    groups: &[plan::VipGroup],
    assignments: &BTreeMap<plan::GroupKey, OwnerChoice>,
) -> usize {
    groups
        .iter()
        .filter(|g| {
            matches!(
                g.l2_not_announced,
                None | Some(NotAnnounced::NoEligibleNode { .. })
            ) && g.bgp_nodes.is_empty()
                && !assignments.contains_key(&g.key)
        })
        .map(|g| g.ips.len())
        .sum()
}

/// Make before break. The groups this node is published as announcing whose owner the plan now moves to another
/// node while this node is alive (a hand-off, a lost candidacy, a level move): this node keeps answering for them
/// until the new owner's `announced-by` reaches it, so the VIP is never dark in between. Clients follow the new
/// owner's gratuitous ARP; what still reaches this node meanwhile is served here (every node binds every VIP).
/// Returns the owners to announce by (`assignments` with those groups kept here), or None when there are none.
fn make_before_break(
    node: &str,
    groups: &[plan::VipGroup],
    assignments: &BTreeMap<plan::GroupKey, OwnerChoice>,
) -> Option<BTreeMap<plan::GroupKey, String>> {
    // Most passes keep nothing: find the groups first, and copy the owners only when there are some.
    let kept: BTreeSet<plan::GroupKey> = assignments
        .iter()
        .filter(|(key, a)| {
            a.owner != node
                && matches!(a.cause, Cause::NotCandidate | Cause::Level)
                && groups
                    .binary_search_by_key(*key, |g| g.key)
                    .ok()
                    .is_some_and(|i| groups[i].published_owner.as_deref() == Some(node))
        })
        .map(|(key, _)| *key)
        .collect();
    (!kept.is_empty()).then(|| {
        assignments
            .iter()
            .map(|(key, a)| {
                let owner = if kept.contains(key) {
                    node
                } else {
                    a.owner.as_str()
                };
                (*key, owner.to_string())
            })
            .collect()
    })
}

/// The VIPs this node answers for only until another node announces them (see [`crate::arp::decide::Answering`]):
/// those `held` (make before break) beyond what it `owns`, and, cut off from its peers, everything it answers for,
/// since the others may have confirmed it gone and taken its VIPs over.
fn yielding<V>(
    standing: gossip::Standing,
    owns: &BTreeMap<IpAddr, V>,
    held: Option<&BTreeMap<IpAddr, V>>,
) -> BTreeSet<IpAddr> {
    let answered = held.unwrap_or(owns);
    answered
        .keys()
        .filter(|ip| standing == gossip::Standing::CutOff || !owns.contains_key(*ip))
        .copied()
        .collect()
}

/// After a rejoin: drops from `assignments` this node's claim to every group it is still published as announcing
/// that the plan without this node gives to another node (what the others did while it was Down). Returns how many
/// it dropped: zero once this node's view shows the new owners' `announced-by`.
///
/// The others are every other candidate, not this node's live set: right after a rejoin that set may still be
/// whatever its own silence left (its node Lease view stale), and the others are not gone for having been unheard.
fn yield_after_rejoin(
    node: &str,
    groups: &[plan::VipGroup],
    assignments: &mut BTreeMap<plan::GroupKey, OwnerChoice>,
) -> usize {
    let others: BTreeSet<String> = groups
        .iter()
        .flat_map(|g| g.l2_nodes.iter())
        .filter(|n| n.as_str() != node)
        .cloned()
        .collect();
    let without_me = plan::owner::assign(groups, &others);
    let mut yielded = 0;
    assignments.retain(|key, a| {
        let stale = a.owner == node
            && without_me.contains_key(key)
            && groups
                .binary_search_by_key(key, |g| g.key)
                .ok()
                .is_some_and(|i| groups[i].published_owner.as_deref() == Some(node));
        yielded += usize::from(stale);
        !stale
    });
    yielded
}

fn to_plan_interface(i: &crate::netif::LocalInterface) -> plan::InterfaceFacts {
    plan::InterfaceFacts {
        name: i.name.clone(),
        subnets: i.subnets.clone(),
        up: i.up,
        noarp: i.noarp,
        loopback: i.loopback,
    }
}

/// The wildcard address of `ip`'s family, to listen on.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// Why the gossip key cannot be had.
#[derive(Debug, thiserror::Error)]
enum GossipKeyError {
    #[error("cannot read the Secret")]
    Read(#[source] kube::Error),
    #[error("the Secret does not exist")]
    Missing,
    #[error("the Secret has no non-empty `{GOSSIP_SECRET_KEY}`")]
    NoKey,
}

async fn gossip_key(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<u8>, GossipKeyError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(GossipKeyError::Read)?
        .ok_or(GossipKeyError::Missing)?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(GOSSIP_SECRET_KEY))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(GOSSIP_SECRET_KEY))
                .map(|s| s.as_bytes().to_vec())
        })
        .filter(|k| !k.is_empty())
        .ok_or(GossipKeyError::NoKey)?;
    Ok(key)
}

/// Where peers reach this node: its Node's InternalIP, else its first global IPv4 address.
async fn advertise_address(
    client: &Client,
    node: &str,
    handle: &rtnetlink::Handle,
) -> Option<IpAddr> {
    let from_node = Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.status)
        .and_then(|s| s.addresses)
        .and_then(|a| {
            a.into_iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse().ok())
        });
    if from_node.is_some() {
        return from_node;
    }
    let interfaces = crate::netif::links::list_interfaces(handle).await.ok()?;
    interfaces
        .iter()
        .filter(|i| i.up && !i.loopback)
        .flat_map(|i| i.addresses.iter())
        .map(|a| a.addr())
        .find(|ip| matches!(ip, IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local()))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

/// The VIP groups this node took over from another node: `ironlb_vip_moves_total{cause}`, and the cause added to
/// the takeover's `nodeAssigned` Event on each of the group's Services.
#[derive(Default)]
struct Moves {
    total: prometheus_client::metrics::family::Family<
        CauseLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// The moves counted already, by group, with the node they came from: a pass repeats a takeover until its
    /// write lands.
    counted: BTreeMap<plan::GroupKey, String>,
}

impl Moves {
    fn register(registry: &mut Registry) -> Moves {
        let moves = Moves::default();
        registry.register(
            "ironlb_vip_moves",
            "VIP groups this node took over from another node, by cause (owner-gone, hand-off, not-candidate, level)",
            moves.total.clone(),
        );
        moves
    }

    fn explain(
        &mut self,
        node: &str,
        groups: &[plan::VipGroup],
        assignments: &BTreeMap<plan::GroupKey, OwnerChoice>,
        handing_off: &BTreeSet<&str>,
        actions: &mut [ServiceAction],
    ) {
        let mut now = BTreeMap::new();
        let mut by_service: Option<BTreeMap<ObjectKey, Vec<usize>>> = None;
        for group in groups {
            let Some(a) = assignments.get(&group.key) else {
                continue;
            };
            let Some(from) = group.published_owner.as_deref() else {
                continue;
            };
            if a.owner != node || from == node || a.cause == Cause::Kept {
                continue;
            }
            let hand_off = a.cause == Cause::NotCandidate && handing_off.contains(from);
            let label = if hand_off {
                "hand-off"
            } else {
                a.cause.as_str()
            };
            let why = match a.cause {
                Cause::OwnerGone => format!("took over from node {from}, which is gone"),
                Cause::NotCandidate if hand_off => format!(
                    "took over from node {from}, which hands its VIPs off (cordoned, out of service, excluded \
                     from load balancers, or its agent stopping)"
                ),
                Cause::NotCandidate => {
                    format!("took over from node {from}, which may no longer announce it")
                }
                Cause::Level => format!("moved from node {from} to level the load"),
                Cause::Kept | Cause::New => continue,
            };
            if self.counted.get(&group.key).map(String::as_str) != Some(from) {
                self.total
                    .get_or_create(&CauseLabels {
                        cause: label.to_string(),
                    })
                    .inc();
                tracing::info!(group = %group.key, from, cause = label, "taking over a VIP group");
            }
            now.insert(group.key, from.to_string());
            // Indexed once per pass: a node that dies hands a third of 10^4 groups to each survivor at once.
            let by_service = by_service.get_or_insert_with(|| {
                let mut index: BTreeMap<ObjectKey, Vec<usize>> = BTreeMap::new();
                for (i, act) in actions.iter().enumerate() {
                    index.entry(act.service.clone()).or_default().push(i);
                }
                index
            });
            let positions: Vec<usize> = group
                .services
                .keys()
                .filter_map(|k| by_service.get(&ObjectKey::new(&k.namespace, &k.name)))
                .flatten()
                .copied()
                .collect();
            for i in positions {
                let action = &mut actions[i];
                for note in action
                    .notes
                    .iter_mut()
                    .filter(|n| n.reason == "nodeAssigned")
                {
                    note.message = format!("{}: {why}", note.message);
                }
                // The takeover's own write names the cause too, for `ironlb status` and whoever reads the Service.
                if let Some(annotations) = action
                    .metadata
                    .as_mut()
                    .and_then(|m| m.pointer_mut("/metadata/annotations"))
                    .and_then(serde_json::Value::as_object_mut)
                    .filter(|a| a.contains_key(ANNOUNCED_CAUSE_ANNOTATION))
                {
                    annotations.insert(ANNOUNCED_CAUSE_ANNOTATION.into(), label.into());
                }
            }
        }
        self.counted = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::owner::testing::group;

    fn choice(owner: &str, cause: Cause) -> OwnerChoice {
        OwnerChoice {
            owner: owner.into(),
            cause,
        }
    }

    /// Counted as without an owner: a Layer 2 group given to nobody, whether its nodes are down or none is eligible.
    /// Not counted: an owned group, a group BGP advertises, a group no L2Advertisement covers, a Local Service
    /// without a serving endpoint.
    #[test]
    fn vips_without_owner_are_the_layer2_groups_nobody_announces() {
        let owned = group(1, &["n1"]);
        let nodes_down = group(2, &["n2"]);
        let mut none_eligible = group(3, &[]);
        none_eligible.l2_not_announced = Some(NotAnnounced::NoEligibleNode {
            reasons: "1 cordoned".into(),
        });
        let mut over_bgp = none_eligible.clone();
        over_bgp.key = group(4, &[]).key;
        over_bgp.bgp_nodes = ["n1".to_string()].into();
        let mut not_covered = group(5, &[]);
        not_covered.l2_not_announced = Some(NotAnnounced::NoAdvertisement {
            kind: "L2Advertisement",
            pool: "a".into(),
        });
        let mut no_endpoint = group(6, &[]);
        no_endpoint.l2_not_announced = Some(NotAnnounced::NoServingEndpoint);
        let assignments = BTreeMap::from([(owned.key, choice("n1", Cause::Kept))]);
        let groups = [
            owned,
            nodes_down,
            none_eligible,
            over_bgp,
            not_covered,
            no_endpoint,
        ];
        assert_eq!(vips_without_owner(&groups, &assignments), 2);
        assert_eq!(vips_without_owner(&groups[..1], &assignments), 0);
    }

    /// A takeover's write and Event name why: the patch's `announced-cause` goes from `new` (what the announcement
    /// step writes) to the move's cause, here hand-off from a node that is handing off, and owner-gone otherwise.
    #[test]
    fn a_takeover_names_its_cause_in_the_annotation_and_the_event() {
        use crate::plan::visibility::ANNOUNCED_BY_ANNOTATION;
        let mut moves = Moves::default();
        let mut g1 = group(1, &["n1", "n2"]);
        g1.published_owner = Some("n1".into());
        let mut g2 = group(2, &["n2", "n3"]);
        g2.published_owner = Some("n3".into());
        let action = |g: &plan::VipGroup| {
            let key = g.services.keys().next().unwrap();
            ServiceAction {
                service: crate::k8s::index::ObjectKey {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                },
                reference: Default::default(),
                status: None,
                metadata: Some(serde_json::json!({"metadata": {"annotations": {
                    ANNOUNCED_BY_ANNOTATION: "n2", ANNOUNCED_CAUSE_ANNOTATION: "new"}}})),
                notes: vec![Note::normal(
                    "nodeAssigned",
                    "announcing from node n2".into(),
                )],
            }
        };
        let mut actions = vec![action(&g1), action(&g2)];
        let assignments = BTreeMap::from([
            (g1.key, choice("n2", Cause::NotCandidate)),
            (g2.key, choice("n2", Cause::OwnerGone)),
        ]);
        moves.explain(
            "n2",
            &[g1, g2],
            &assignments,
            &BTreeSet::from(["n1"]),
            &mut actions,
        );
        let cause = |a: &ServiceAction| {
            a.metadata.as_ref().unwrap()["metadata"]["annotations"][ANNOUNCED_CAUSE_ANNOTATION]
                .clone()
        };
        assert_eq!(cause(&actions[0]), "hand-off");
        assert_eq!(cause(&actions[1]), "owner-gone");
        assert!(
            actions[0].notes[0].message.contains("hands its VIPs off"),
            "{:?}",
            actions[0].notes
        );
        assert!(
            actions[1].notes[0].message.contains("which is gone"),
            "{:?}",
            actions[1].notes
        );
    }

    #[test]
    fn a_live_owner_keeps_answering_until_the_new_owner_publishes() {
        let nodes = ["a", "b"];
        let published = |n: u32, by: Option<&str>| plan::VipGroup {
            published_owner: by.map(str::to_string),
            ..group(n, &nodes)
        };
        let groups = vec![
            // Handed off, or levelled, away from a: a keeps it until b's announced-by arrives.
            published(1, Some("a")),
            published(2, Some("a")),
            // Already published by its new owner: a lets go.
            published(3, Some("b")),
            // a is gone in b's view of this one: nothing to keep (a's own view would not say so).
            published(4, Some("a")),
            // Kept by a.
            published(5, Some("a")),
        ];
        let key = |i: usize| groups[i].key;
        let assignments: BTreeMap<_, _> = [
            (key(0), choice("b", Cause::NotCandidate)),
            (key(1), choice("b", Cause::Level)),
            (key(2), choice("b", Cause::Kept)),
            (key(3), choice("b", Cause::OwnerGone)),
            (key(4), choice("a", Cause::Kept)),
        ]
        .into();
        let owners = make_before_break("a", &groups, &assignments).expect("groups to keep");
        let on_a: Vec<_> = owners
            .iter()
            .filter(|(_, o)| *o == "a")
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(on_a, [key(0), key(1), key(4)]);
        assert_eq!(owners[&key(2)], "b");
        assert_eq!(owners[&key(3)], "b");
        // From b's side nothing is held, and once b has published them, a holds nothing either.
        assert_eq!(make_before_break("b", &groups, &assignments), None);
        let published_by_b: Vec<_> = groups
            .iter()
            .map(|g| plan::VipGroup {
                published_owner: Some("b".into()),
                ..g.clone()
            })
            .collect();
        assert_eq!(make_before_break("a", &published_by_b, &assignments), None);
    }

    #[test]
    fn only_vips_being_handed_over_or_kept_while_cut_off_yield_to_another_nodes_claim() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let owns: BTreeMap<IpAddr, ()> = [(ip("192.0.2.10"), ())].into();
        let held: BTreeMap<IpAddr, ()> = [(ip("192.0.2.10"), ()), (ip("192.0.2.11"), ())].into();
        use gossip::Standing::{Connected, CutOff, Off, Unhealthy};
        // Nothing held: nothing yields, unless the node is cut off, where all it keeps does.
        for standing in [Connected, Off, Unhealthy] {
            assert!(yielding(standing, &owns, None).is_empty(), "{standing:?}");
        }
        assert_eq!(yielding(CutOff, &owns, None), [ip("192.0.2.10")].into());
        // Held for make before break: only the VIP on its way out yields.
        assert_eq!(
            yielding(Connected, &owns, Some(&held)),
            [ip("192.0.2.11")].into()
        );
        assert_eq!(
            yielding(CutOff, &owns, Some(&held)),
            [ip("192.0.2.10"), ip("192.0.2.11")].into()
        );
    }

    #[test]
    fn after_a_rejoin_a_node_yields_what_the_others_took_until_it_sees_them() {
        let live: BTreeSet<String> = ["a", "b"].map(String::from).into();
        let published = |n: u32, nodes: &[&str], by: &str| plan::VipGroup {
            published_owner: Some(by.to_string()),
            ..group(n, nodes)
        };
        // a's stale view: it still sees itself published for 1 and 2; 2 has no other candidate.
        let stale = vec![published(1, &["a", "b"], "a"), published(2, &["a"], "a")];
        let mut assignments = plan::owner::assign(&stale, &live);
        assert_eq!(assignments[&stale[0].key].owner, "a");
        assert_eq!(yield_after_rejoin("a", &stale, &mut assignments), 1);
        assert!(
            !assignments.contains_key(&stale[0].key),
            "b took group 1 while a was Down"
        );
        assert_eq!(
            assignments[&stale[1].key].owner, "a",
            "nobody else can take group 2"
        );
        // Right after the rejoin a's live set may hold only itself (its Lease view stale): b took group 1 all the
        // same.
        let alone: BTreeSet<String> = ["a"].map(String::from).into();
        let mut assignments = plan::owner::assign(&stale, &alone);
        assert_eq!(yield_after_rejoin("a", &stale, &mut assignments), 1);
        // Caught up: b's announced-by for group 1 has arrived.
        let fresh = vec![published(1, &["a", "b"], "b"), published(2, &["a"], "a")];
        let mut assignments = plan::owner::assign(&fresh, &live);
        assert_eq!(yield_after_rejoin("a", &fresh, &mut assignments), 0);
        assert_eq!(assignments[&fresh[0].key].owner, "b");
    }
}
