//! Gossip membership: which IronLB agents are alive right now, decided by a SWIM failure detector among the agents.
//!
//! Why a detector of our own: L2 failover must hand a VIP to a new ARP owner in under a second after a node's agent
//! dies. The API server's signals (the Node's Ready condition, a per-node Lease) take tens of seconds to turn, so the
//! agents watch each other directly, with [`foca`] (SWIM with infection-style dissemination and suspicion) over UDP.
//!
//! This module owns the gossip socket, the foca instance and its timers, and nothing else: it never talks to the API,
//! never touches the kernel's addresses and never chooses owners. Its output is a `watch` of live node names (self
//! included), which owner choice in `plan` reads as an input like any other; it is a module of its own, not part of
//! `plan`, because planning never touches a socket.
//!
//! Every datagram is sealed with HMAC-SHA256 under a key shared by all agents (read by the agent from a Secret); a
//! datagram whose MAC does not verify is counted and dropped before any byte of it is parsed, so only key holders can
//! join, refute a suspicion or declare anyone down. There is no encryption and no replay window: a replayed datagram
//! can only repeat old SWIM state, which incarnation numbers and generations already order.
//!
//! # Tasks and channels
//!
//! One task, [`run`] (or [`serve`] on a socket the caller bound), owns everything:
//!
//! ```text
//!  seeds: watch<BTreeMap<node, SocketAddr>> ──┐      (Node InternalIPs + gossip port, filled by the agent)
//!  shutdown: impl Future ─────────────────────┤
//!                                             ▼
//!          UDP socket ◄── seal/open ──► [ run: Foca + timer heap ] ──► live: watch<BTreeSet<node>>
//!       (HMAC-SHA256 envelopes)                     │                ──► healthy: watch<bool>
//!                                                   └──────────────► MembershipMetrics
//! ```
//!
//! Dropping the future (a crash, an aborted task) sends nothing: the others find out through failed probes and
//! suspicion. Resolving `shutdown` is a graceful leave: the member gossips its own Down state first, so the others
//! drop it at once instead of waiting for suspicion to expire.
//!
//! # Timing (see [`Timing::lan`])
//!
//! | knob | value | why |
//! |---|---|---|
//! | probe period `P` | 100 ms | every member probes one other per period |
//! | probe RTT | 40 ms | a LAN round trip is well under 1 ms; the rest is scheduling slack, and 60 ms stay for the indirect probes |
//! | indirect probes | 3 | ping-req fan-out when the direct ack is late |
//! | suspicion `S` | 200 ms | two gossip rounds for a live member to refute a false suspicion |
//! | gossip `G` | every 50 ms to 3 members, only while updates are pending | spreads a Down within a round or two |
//!
//! A crashed member is declared Down when some survivor's probe of it fails (the probe is judged at the end of its
//! period) and the suspicion expires. With `N - 1` survivors each probing one member per period, the dead member is
//! probed about once per period, so the typical bound is `P` (wait for a probe) + `P` (the probe) + `S` + `G` =
//! 450 ms ([`Timing::expected_detection`]); the worst case, every survivor's shuffled round-robin reaching it last,
//! is `(2N - 3)·P + P + S + G` (650 ms for three nodes).
//!
//! Measured on loopback with three members (tests below, 24 crashes): p50 about 390 ms, max 566 ms from the crash
//! until both survivors dropped the member; a graceful leave is seen in under 2 ms.
//!
//! Background traffic is constant per node, whatever `N`: per period a member sends one ping and answers about one,
//! so ~22 datagrams/s out and as many in. Each is 33 bytes of envelope plus a header naming source and destination;
//! with one-letter node names that measured 66 bytes (UDP payload), i.e. 1.5 kB/s sent per node, and each node name
//! character adds 2 bytes per datagram (about 45 B/s). So a cluster of `N` nodes with 20-character names sends about
//! `N` × 2.4 kB/s in total; `sent_bytes` in [`MembershipMetrics`] measures it. Gossip adds traffic only while
//! membership changes.
//!
//! A member that stalls longer than `P + S` (a long pause, a process frozen) is declared Down falsely; foca then
//! renews its identity (foca's `renew`) and it rejoins within a round trip. The agent runs this module on a thread of
//! its own, so its own passes never stall it, and CPU throttling alone did not: with one agent limited to 5 % of a
//! CPU and 1,000 Services churning for 60 s, the others saw no Down (`benches/starvation.rs`, BENCHMARKS.md). foca
//! does not implement Lifeguard's local-health multiplier, which would soften longer stalls.
//!
//! A member that hears no peer at all (a firewall dropping its inbound gossip, a one-way fault) would otherwise
//! declare every peer Down and, since it can still send, tell the others, who cannot refute a Down: a healthy node
//! would drop out on the word of the one node that cannot hear. So a member that hears no one convicts no one: its
//! suspicions expire into Down verdicts only once it hears a peer again, a suspicion period later
//! (`Shell::due_timers`). `ironlb_membership_member_downs_total` counts the Downs each agent sees.
//!
//! # Fallback
//!
//! Gossip is never the only signal (docs/design.md#liveness). The agent intersects gossip membership with the Nodes
//! whose Ready condition is true, and falls back when gossip itself is unhealthy: the socket cannot be bound ([`run`]
//! returns an error), there is no key, or peers are expected but none has been reachable for
//! [`Timing::isolation_grace`] (5 s with the node Leases on, 60 s without: [`isolation_grace`]). The fallback is the
//! per-node Leases ([`crate::k8s::node_lease`], seconds) combined with Ready, or Ready alone (the kubelet's tens of
//! seconds) when the Lease signal is off or unavailable. See [`live_nodes`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{Foca, Notification, PostcardCodec, Timer};
use hmac::{Hmac, KeyInit, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

type HmacSha256 = Hmac<Sha256>;

/// Largest datagram sent or accepted, envelope included. Below a 1500-byte Ethernet MTU minus IP and UDP headers, so
/// gossip is never fragmented (RFC 8085 §3.2).
pub const MAX_DATAGRAM: usize = 1400;

/// Envelope format version, the first byte of every datagram.
const VERSION: u8 = 1;
/// Bound into every MAC so the Secret's key cannot be replayed against another protocol that uses the same key.
const DOMAIN: &[u8] = b"ironlb-membership-v1";
const TAG_LEN: usize = 32;
/// Version byte plus tag.
const OVERHEAD: usize = 1 + TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("membership key is empty: gossip must be authenticated")]
    EmptyKey,
    #[error("membership timing: {0}")]
    Timing(&'static str),
    #[error("binding gossip socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who a member is: its node name, where it listens, and which incarnation of the agent process it is.
///
/// foca keys members by [`foca::Identity::addr`], which here is the node name: an agent that restarts on the same
/// node (same name, possibly another IP) comes back with a larger `generation` and replaces its old self instead of
/// waiting for it to be forgotten.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node: String,
    pub addr: SocketAddr,
    pub generation: u64,
}

impl foca::Identity for MemberId {
    type Addr = String;

    /// A member declared Down (falsely: it is still running) rejoins at once under the next generation.
    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Why a datagram was dropped before foca saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("datagram of {0} bytes or more exceeds {MAX_DATAGRAM}")]
    Oversized(usize),
    #[error("datagram of {0} bytes is shorter than an envelope")]
    Truncated(usize),
    #[error("MAC does not verify")]
    BadMac,
    #[error("authenticated datagram has unknown envelope version {0}")]
    Version(u8),
}

impl Rejected {
    /// The `reason` label of the rejected-datagrams counter. A datagram that fails authentication in any way counts
    /// as `bad_mac`: without the key nothing else about it can be trusted.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Oversized(_) => "oversized",
            Rejected::Truncated(_) | Rejected::BadMac => "bad_mac",
            Rejected::Version(_) => "version",
        }
    }
}

/// The shared gossip key, and the envelope it seals: `version (1) ‖ payload ‖ HMAC-SHA256(key, DOMAIN ‖ version ‖
/// payload) (32)`.
#[derive(Clone)]
pub struct GossipKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    pub fn new(key: &[u8]) -> Result<Self> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let mut mac = HmacSha256::new_from_slice(key).map_err(|_| Error::EmptyKey)?;
        mac.update(DOMAIN);
        Ok(GossipKey { mac })
    }

    /// Wraps a foca payload for the wire.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(payload);
        let mut mac = self.mac.clone();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Returns the payload of an authentic datagram. The tag is compared in constant time, and nothing but the
    /// length is looked at before it verifies.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], Rejected> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Rejected::Oversized(datagram.len()));
        }
        let Some(body_len) = datagram.len().checked_sub(TAG_LEN).filter(|&n| n >= 1) else {
            return Err(Rejected::Truncated(datagram.len()));
        };
        let (body, tag) = datagram.split_at(body_len);
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| Rejected::BadMac)?;
        match body[0] {
            VERSION => Ok(&body[1..]),
            other => Err(Rejected::Version(other)),
        }
    }
}

/// Failure-detector timing. [`Timing::lan`] is the default; the module docs explain each number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Each member probes one other member per period.
    pub probe_period: Duration,
    /// How long a direct ack may take before indirect probes go out. Must be below `probe_period`.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: NonZeroUsize,
    /// How long a suspected member has to refute before it is declared Down.
    pub suspect_to_down_after: Duration,
    /// How often pending updates are pushed to `gossip_fanout` members, on top of piggybacking on probes.
    pub gossip_period: Duration,
    pub gossip_fanout: NonZeroUsize,
    /// How many times each update is sent. SWIM needs about λ·log(N); 10 covers a few hundred nodes.
    pub max_transmissions: NonZeroU8,
    /// How often seeds that are not live members are announced to again (partition healing, late starters).
    pub reannounce_period: Duration,
    /// How long peers may be expected yet unreachable before gossip reports itself unhealthy. Without the node
    /// Lease fallback, longer than kube-controller-manager's node-monitor grace period (40 s), so that by the time
    /// callers fall back to Node Ready, a node that really died is no longer Ready; see [`isolation_grace`].
    pub isolation_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing::lan()
    }
}

impl Timing {
    /// Tuned for a LAN: a crashed agent is declared Down in about 450 ms.
    pub fn lan() -> Self {
        Timing {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            indirect_probes: NonZeroUsize::new(3).expect("non-zero"),
            suspect_to_down_after: Duration::from_millis(200),
            gossip_period: Duration::from_millis(50),
            gossip_fanout: NonZeroUsize::new(3).expect("non-zero"),
            max_transmissions: NonZeroU8::new(10).expect("non-zero"),
            reannounce_period: Duration::from_secs(1),
            isolation_grace: Duration::from_secs(60),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            self.probe_period,
            self.probe_rtt,
            self.suspect_to_down_after,
            self.gossip_period,
            self.reannounce_period,
        ];
        if nonzero.iter().any(Duration::is_zero) {
            return Err(Error::Timing("periods and timeouts must not be zero"));
        }
        if self.probe_rtt >= self.probe_period {
            return Err(Error::Timing("probe_rtt must be below probe_period"));
        }
        Ok(())
    }

    /// How long this member may hear from no peer before it counts itself cut off: then it drops no member from the
    /// live set it publishes (see [`published_live`]). Below the shortest time to declare a member Down after its
    /// last ack (`probe_period + suspect_to_down_after`), so that a member cut off from everyone knows it before its
    /// failure detector declares the first peer Down; above the usual gap between datagrams from live peers (a probe
    /// or an ack every period or two).
    pub fn heard_within(&self) -> Duration {
        self.probe_period * 2
    }

    /// Typical time from a crash to every survivor seeing it: wait for a probe, the probe itself, suspicion, one
    /// gossip round.
    pub fn expected_detection(&self) -> Duration {
        self.probe_period * 2 + self.suspect_to_down_after + self.gossip_period
    }

    /// Worst case for `nodes` members: every survivor's shuffled round-robin reaches the dead member last.
    pub fn worst_detection(&self, nodes: u32) -> Duration {
        let rounds = (2 * nodes.max(2)).saturating_sub(3).max(1);
        self.probe_period * rounds
            + self.probe_period
            + self.suspect_to_down_after
            + self.gossip_period
    }

    fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = self.indirect_probes;
        config.max_transmissions = self.max_transmissions;
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD).expect("non-zero");
        // Tell a member that we consider Down so it renews its identity and rejoins (false-positive recovery).
        config.notify_down_members = true;
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: self.gossip_fanout,
        });
        // Anti-entropy for the member list itself; cheap at this rate.
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::new(1).expect("non-zero"),
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::new(2).expect("non-zero"),
        });
        config
    }
}

/// What one agent needs to take part in gossip.
#[derive(Clone)]
pub struct MembershipConfig {
    /// This node's name, as in the Node object.
    pub node: String,
    /// Where the gossip socket listens.
    pub bind: SocketAddr,
    /// Where peers reach us: the Node's InternalIP and the gossip port.
    pub advertise: SocketAddr,
    /// The shared HMAC key, from a Secret.
    pub key: Vec<u8>,
    /// Larger on every start of the agent on this node, so a restarted agent replaces its old self.
    pub generation: u64,
    pub timing: Timing,
}

impl std::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("node", &self.node)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("generation", &self.generation)
            .field("timing", &self.timing)
            .finish()
    }
}

impl MembershipConfig {
    /// LAN timing, and a generation from the wall clock in microseconds: it grows across restarts as long as the
    /// clock does not step back by more than the restart takes.
    pub fn new(
        node: impl Into<String>,
        bind: SocketAddr,
        advertise: SocketAddr,
        key: Vec<u8>,
    ) -> Self {
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        MembershipConfig {
            node: node.into(),
            bind,
            advertise,
            key,
            generation,
            timing: Timing::lan(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Gossip metrics.
#[derive(Clone, Debug, Default)]
pub struct MembershipMetrics {
    members: Gauge,
    healthy: Gauge,
    received: Counter,
    sent: Counter,
    sent_bytes: Counter,
    rejected: Family<ReasonLabels, Counter>,
    member_downs: Counter,
    local_health: Gauge,
}

impl MembershipMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = MembershipMetrics::default();
        registry.register(
            "ironlb_membership_members",
            "Live members seen by this agent's failure detector, itself included",
            m.members.clone(),
        );
        registry.register(
            "ironlb_membership_healthy",
            "1 while gossip works; 0 when isolated from every expected peer, or stopped",
            m.healthy.clone(),
        );
        registry.register(
            "ironlb_membership_datagrams_received",
            "Gossip datagrams received, before authentication",
            m.received.clone(),
        );
        registry.register(
            "ironlb_membership_datagrams_sent",
            "Gossip datagrams sent",
            m.sent.clone(),
        );
        registry.register(
            "ironlb_membership_sent_bytes",
            "Gossip bytes sent (UDP payload)",
            m.sent_bytes.clone(),
        );
        registry.register(
            "ironlb_membership_member_downs",
            "Times this agent's failure detector declared a member Down, or accepted a peer's word that one is",
            m.member_downs.clone(),
        );
        registry.register(
            "ironlb_membership_local_health",
            "Lifeguard-style local health score: 0 healthy, up to 8 while this agent's own gossip timers run late \
             (its process starved of CPU); above 0 it probes more slowly and holds back Down verdicts",
            m.local_health.clone(),
        );
        registry.register(
            "ironlb_membership_datagrams_rejected",
            "Gossip datagrams dropped, by reason: bad_mac, oversized, version, invalid (authentic but refused by SWIM)",
            m.rejected.clone(),
        );
        m
    }

    pub fn members(&self) -> i64 {
        self.members.get()
    }

    pub fn received(&self) -> u64 {
        self.received.get()
    }

    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.get()
    }

    pub fn local_health(&self) -> i64 {
        self.local_health.get()
    }

    pub fn member_downs(&self) -> u64 {
        self.member_downs.get()
    }

    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .get()
    }

    fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// How long gossip may be cut off from every expected peer before it reports itself unhealthy, given the node Lease
/// fallback's duration (None: the fallback is off).
///
/// Until then a cut-off agent keeps its last view and claims only what the node Leases show orphaned
/// ([`Standing::CutOff`]); after it, the Leases decide alone and nothing moves to level ([`Standing::Unhealthy`]).
/// The fallback must know about dead nodes by the time it decides: Node Ready needs the kubelet's 40 s grace, hence
/// 60 s without Leases. With them, a dead node's Lease is stale a duration after it died, so the grace only has to
/// outlast a gossip hiccup and a rejoin (detection takes under a second): 5 s, or the Lease duration if longer.
pub fn isolation_grace(lease_duration: Option<Duration>) -> Duration {
    match lease_duration {
        Some(duration) => duration.max(Duration::from_secs(5)),
        None => Timing::lan().isolation_grace,
    }
}

/// The nodes owner choice may use.
///
/// - Connected: nodes live in gossip **and** Ready. Gossip catches a dead agent in under a second, Ready catches a
///   node whose kubelet the API has given up on. The node Leases are not consulted, so an API outage cannot move VIPs
///   while gossip works.
/// - Otherwise gossip says nothing reliable about the others. Then, if the per-node Lease signal is available
///   (`leases` is Some: this agent sees its own Lease renewed through the API), a node must be Ready and hold a fresh
///   Lease (see [`crate::k8s::node_lease`]): a dead agent drops out within the Lease duration instead of the kubelet's
///   grace.
/// - Without the Lease signal: cut off, the gossip view this node kept (it drops no one); unhealthy or off, Ready
///   alone.
pub fn live_nodes(
    gossip: &BTreeSet<String>,
    ready: &BTreeSet<String>,
    standing: Standing,
    leases: Option<&BTreeSet<String>>,
) -> BTreeSet<String> {
    match (standing, leases) {
        (Standing::Connected, _) => gossip.intersection(ready).cloned().collect(),
        (_, Some(fresh)) => fresh.intersection(ready).cloned().collect(),
        (Standing::CutOff, None) => gossip.intersection(ready).cloned().collect(),
        (Standing::Unhealthy | Standing::Off, None) => ready.clone(),
    }
}

/// Where this agent's gossip stands, which decides whose view of liveness it uses ([`live_nodes`]) and what it may
/// claim ([`may_claim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Gossip is healthy and this node hears its peers.
    Connected,
    /// Gossip is healthy, but this node has heard from no peer lately (see [`published_live`]): its peers' Downs
    /// are its own silence, not evidence.
    CutOff,
    /// Gossip runs but has reached no peer for its isolation grace: the node Leases decide.
    Unhealthy,
    /// No gossip at all (no key, no address): every agent uses the node Leases, or Node Ready.
    Off,
}

impl Standing {
    pub fn of(enabled: bool, healthy: bool, cut_off: bool) -> Standing {
        match (enabled, healthy, cut_off) {
            (false, _, _) => Standing::Off,
            (true, false, _) => Standing::Unhealthy,
            (true, true, true) => Standing::CutOff,
            (true, true, false) => Standing::Connected,
        }
    }
}

/// Whether this node may take a VIP group for `cause`, standing as it does. Connected, or without gossip at all,
/// every agent sees the same liveness, so every rule applies. Cut off, only its own groups and those whose owner's
/// node Lease shows it gone: a second vantage point (the API), so that a node cut off from gossip claims no VIP
/// another node still serves. With gossip unhealthy, no levelling: the agents still connected see this node Down
/// and would move the group straight back.
pub fn may_claim(standing: Standing, cause: crate::plan::owner::Cause) -> bool {
    use crate::plan::owner::Cause;
    match standing {
        Standing::Connected | Standing::Off => true,
        Standing::CutOff => matches!(cause, Cause::Kept | Cause::OwnerGone),
        Standing::Unhealthy => cause != Cause::Level,
    }
}

/// The live set to publish, given the failure detector's (`detected`) and the one published before: the detector's,
/// except that while this node is cut off (it has heard from no peer lately) no member leaves it. A member that stops
/// hearing everyone would otherwise see every peer declared Down one after another, and while it still saw some
/// peer it would take over the groups of the others; cut off, it keeps its view, so its peers keep their groups in
/// its eyes and it claims nothing, until gossip turns unhealthy and the node Leases decide.
pub fn published_live(
    detected: &BTreeSet<String>,
    previous: &BTreeSet<String>,
    cut_off: bool,
) -> BTreeSet<String> {
    if cut_off {
        detected.union(previous).cloned().collect()
    } else {
        detected.clone()
    }
}

/// Self plus every member foca considers active (Alive or Suspect: a suspect still owns its VIPs until it is Down).
fn live_set<'a>(node: &'a str, active: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    active
        .into_iter()
        .chain(std::iter::once(node))
        .map(str::to_owned)
        .collect()
}

/// Seeds worth announcing to: not ourselves, and not already live.
fn announce_targets(
    node: &str,
    advertise: SocketAddr,
    seeds: &BTreeMap<String, SocketAddr>,
    live: &BTreeSet<String>,
) -> Vec<(String, SocketAddr)> {
    seeds
        .iter()
        .filter(|(name, addr)| {
            name.as_str() != node && **addr != advertise && !live.contains(*name)
        })
        .map(|(name, addr)| (name.clone(), *addr))
        .collect()
}

/// Tracks how long we have been cut off from every peer we expect.
#[derive(Debug, Default)]
struct Isolation {
    since: Option<Instant>,
}

impl Isolation {
    /// Returns whether gossip is healthy at `now`.
    fn observe(
        &mut self,
        now: Instant,
        peers_expected: bool,
        peers_live: bool,
        grace: Duration,
    ) -> bool {
        if !peers_expected || peers_live {
            self.since = None;
            return true;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) < grace
    }
}

/// Lifeguard's local health multiplier (Dadgar, Phillips and Currey, 2018), fed by the one sign of a slow process
/// that the process cannot miss: its own timers firing late.
///
/// A member whose thread is starved (a CPU quota, a noisy neighbour, a long stall) reads its socket late, so its
/// probes look unanswered and its suspicions expire before it has read the refutations queued for it. Such a member
/// should doubt itself before it doubts others. While its score is above 0 it probes `score + 1` times more slowly,
/// waits as much longer for acks and suspicions, and holds back every Down verdict that comes due for a suspicion
/// period per point, long enough to read what queued up. The score rises by one each time due timers run later than
/// `probe_rtt` (the thread did not run for that long), and falls by one each time the probe timer runs on time, up to
/// [`LocalHealth::MAX`] as in Lifeguard. Others' view of this member is not changed: if it is too slow to refute a
/// suspicion in time, they still declare it Down.
#[derive(Debug, Default)]
struct LocalHealth {
    score: u32,
}

impl LocalHealth {
    const MAX: u32 = 8;

    /// Due timers ran `late` after the earliest of them was due; `probed` is whether the probe timer was among them.
    /// Returns whether the score changed.
    fn observe(&mut self, late: Duration, probed: bool, tolerance: Duration) -> bool {
        let before = self.score;
        if late > tolerance {
            self.score = (self.score + 1).min(Self::MAX);
        } else if probed {
            self.score = self.score.saturating_sub(1);
        }
        self.score != before
    }

    fn degraded(&self) -> bool {
        self.score > 0
    }

    /// How long to wait for a probe or suspicion timer foca asked for `after`.
    fn stretch(&self, after: Duration) -> Duration {
        after * (self.score + 1)
    }
}

/// foca's window on the world: collects what one call into foca wants sent and scheduled.
struct Outbox {
    node: String,
    key: GossipKey,
    sends: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Duration, Timer<MemberId>)>,
    changed: bool,
    member_downs: Counter,
    /// Set when foca rejoined after the cluster declared this node Down.
    rejoined: bool,
}

impl foca::Runtime<MemberId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        let node = self.node.as_str();
        match notification {
            Notification::MemberUp(id) => {
                tracing::info!(node, peer = %id.node, addr = %id.addr, generation = id.generation, "member up");
            }
            Notification::MemberDown(id) => {
                self.member_downs.inc();
                tracing::info!(node, peer = %id.node, generation = id.generation, "member down");
            }
            Notification::Rename(old, new) => {
                tracing::info!(node, peer = %new.node, old = old.generation, new = new.generation, "member restarted");
            }
            Notification::Active => tracing::info!(node, "joined the gossip cluster"),
            Notification::Idle => tracing::warn!(node, "no live gossip peers"),
            Notification::Defunct => tracing::warn!(node, "declared down by the gossip cluster"),
            Notification::Rejoin(id) => {
                self.rejoined = true;
                tracing::warn!(
                    node,
                    generation = id.generation,
                    "declared down by the gossip cluster; rejoined"
                )
            }
        }
        self.changed = true;
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to.addr, self.key.seal(data)));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((after, event));
    }
}

type Swim = Foca<MemberId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>;

/// The I/O shell's state between two events.
struct Shell {
    node: String,
    advertise: SocketAddr,
    timing: Timing,
    foca: Swim,
    outbox: Outbox,
    timers: BinaryHeap<Reverse<(Instant, Timer<MemberId>)>>,
    seeds: BTreeMap<String, SocketAddr>,
    /// The members the failure detector holds alive, this node included.
    members: BTreeSet<String>,
    /// When an authenticated datagram from a peer last arrived.
    last_heard: Option<Instant>,
    /// Whether the last publish found this node cut off (nothing heard within [`Timing::heard_within`]).
    cut_off: bool,
    /// Suspicions that expired while this node heard no one, held back instead of declaring the member Down (see
    /// [`Shell::due_timers`]); rescheduled once a peer is heard again.
    deferred_downs: Vec<Timer<MemberId>>,
    isolation: Isolation,
    health: LocalHealth,
    live: watch::Sender<BTreeSet<String>>,
    healthy: watch::Sender<bool>,
    /// True while this node has heard from no peer within [`Timing::heard_within`] (see [`published_live`]).
    cut_off_tx: watch::Sender<bool>,
    rejoined_tx: watch::Sender<u64>,
    metrics: MembershipMetrics,
}

impl Shell {
    fn datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        self.metrics.received.inc();
        match self.outbox.key.open(datagram) {
            Err(rejected) => {
                self.metrics.reject(rejected.reason());
                tracing::debug!(node = %self.node, peer = %from, "dropped gossip datagram: {rejected}");
            }
            Ok(payload) => {
                if let Err(error) = self.foca.handle_data(payload, &mut self.outbox) {
                    self.metrics.reject("invalid");
                    tracing::debug!(node = %self.node, peer = %from, %error, "refused gossip datagram");
                } else {
                    self.last_heard = Some(Instant::now());
                }
            }
        }
    }

    /// Whether this node has heard from no peer within [`Timing::heard_within`] at `now`.
    fn hears_no_one(&self, now: Instant) -> bool {
        self.last_heard
            .is_none_or(|at| now.saturating_duration_since(at) > self.timing.heard_within())
    }

    /// Runs foca's due timers, except one: a suspicion that expires while this node hears no one is held back.
    ///
    /// A member that cannot receive (a firewall dropping its inbound gossip, a one-way link fault) sees every peer's
    /// probe fail. Left to itself, foca declares each peer Down and, since the member can still send, tells the
    /// others, who believe it: Down is final in SWIM, so they drop a healthy node on the word of the one node that
    /// cannot hear, and its VIPs move. So a member that hears no one convicts no one. Its suspicions still go out
    /// (a suspicion is refutable: the suspect answers with a higher incarnation), but the Down waits until a peer
    /// is heard again, and then a full suspicion period more, so that the refutations it missed can arrive first.
    fn due_timers(&mut self, now: Instant) {
        let deaf = self.hears_no_one(now);
        self.observe_health(now);
        while let Some(Reverse((at, _))) = self.timers.peek()
            && *at <= now
        {
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            if deaf && matches!(timer, Timer::ChangeSuspectToDown { .. }) {
                if self.deferred_downs.is_empty() {
                    tracing::info!(node = %self.node, "hearing no peer: holding back Down verdicts until one is heard");
                }
                self.deferred_downs.push(timer);
                continue;
            }
            if self.health.degraded() && matches!(timer, Timer::ChangeSuspectToDown { .. }) {
                // Read what queued up while this node was stalled (a refutation cancels the verdict) before judging.
                let at = now + self.timing.suspect_to_down_after * self.health.score;
                self.timers.push(Reverse((at, timer)));
                continue;
            }
            if let Err(error) = self.foca.handle_timer(timer, &mut self.outbox) {
                tracing::warn!(node = %self.node, %error, "gossip timer");
            }
        }
    }

    /// Scores this node's own health from how late its due timers run (see [`LocalHealth`]).
    fn observe_health(&mut self, now: Instant) {
        let mut earliest = None;
        let mut probed = false;
        for Reverse((at, timer)) in self.timers.iter().filter(|Reverse((at, _))| *at <= now) {
            earliest = Some(earliest.map_or(*at, |e: Instant| e.min(*at)));
            probed |= matches!(timer, Timer::ProbeRandomMember(_));
        }
        let Some(earliest) = earliest else {
            return;
        };
        let was = self.health.degraded();
        if self
            .health
            .observe(now - earliest, probed, self.timing.probe_rtt)
        {
            self.metrics.local_health.set(i64::from(self.health.score));
            if self.health.degraded() != was {
                if was {
                    tracing::info!(node = %self.node, "gossip timers on time again: local health restored");
                } else {
                    tracing::warn!(node = %self.node, late = ?(now - earliest), "gossip timers ran late (this \
                        process was starved of CPU): probing more slowly and holding back Down verdicts");
                }
            }
        }
    }

    fn announce_to_seeds(&mut self) {
        for (node, addr) in announce_targets(&self.node, self.advertise, &self.seeds, &self.members)
        {
            // The seed's generation is unknown; foca does not check the destination of an Announce, and the reply
            // carries the real identity.
            let stub = MemberId {
                node,
                addr,
                generation: 0,
            };
            if let Err(error) = self.foca.announce(stub, &mut self.outbox) {
                tracing::warn!(node = %self.node, peer = %addr, %error, "gossip announce");
            }
        }
    }

    async fn flush(&mut self, socket: &UdpSocket) {
        for (addr, datagram) in std::mem::take(&mut self.outbox.sends) {
            match socket.send_to(&datagram, addr).await {
                Ok(n) => {
                    self.metrics.sent.inc();
                    self.metrics.sent_bytes.inc_by(n as u64);
                }
                Err(error) => {
                    tracing::debug!(node = %self.node, peer = %addr, %error, "gossip send")
                }
            }
        }
        let now = Instant::now();
        for (after, timer) in self.outbox.timers.drain(..) {
            let after = match timer {
                Timer::ProbeRandomMember(_)
                | Timer::SendIndirectProbe { .. }
                | Timer::ChangeSuspectToDown { .. } => self.health.stretch(after),
                _ => after,
            };
            self.timers.push(Reverse((now + after, timer)));
        }
    }

    fn publish(&mut self, now: Instant) {
        if std::mem::take(&mut self.outbox.rejoined) {
            self.rejoined_tx.send_modify(|n| *n += 1);
        }
        let cut_off = self.hears_no_one(now);
        if !cut_off && !self.deferred_downs.is_empty() {
            let at = now + self.timing.suspect_to_down_after;
            for timer in self.deferred_downs.drain(..) {
                self.timers.push(Reverse((at, timer)));
            }
        }
        let changed = std::mem::take(&mut self.outbox.changed);
        if changed {
            self.members = live_set(
                &self.node,
                self.foca.iter_members().map(|m| m.id().node.as_str()),
            );
            self.metrics.members.set(self.members.len() as i64);
        }
        if changed || cut_off != self.cut_off {
            self.cut_off = cut_off;
            let members = &self.members;
            self.live.send_if_modified(|current| {
                let next = published_live(members, current, cut_off);
                if *current != next {
                    *current = next;
                    true
                } else {
                    false
                }
            });
            // Cut off means something only with peers to hear from.
            let cut_off = cut_off && self.live.borrow().len() > 1;
            if cut_off != *self.cut_off_tx.borrow() {
                if cut_off {
                    tracing::warn!(node = %self.node, "no gossip from any peer within {:?}: dropping no member and \
                        claiming no VIP until one is heard again", self.timing.heard_within());
                } else {
                    tracing::info!(node = %self.node, "gossip heard again");
                }
                self.cut_off_tx.send_replace(cut_off);
            }
        }
        let peers_expected = self.seeds.keys().any(|name| *name != self.node);
        // Peers count as reachable only while they are heard: a member that hears no one convicts no one, so its
        // detector may keep counting them alive.
        let healthy = self.isolation.observe(
            now,
            peers_expected,
            self.members.len() > 1 && !cut_off,
            self.timing.isolation_grace,
        );
        self.set_healthy(healthy);
    }

    fn set_healthy(&self, healthy: bool) {
        self.metrics.healthy.set(i64::from(healthy));
        self.healthy
            .send_if_modified(|current| std::mem::replace(current, healthy) != healthy);
    }
}

/// What the membership publishes.
pub struct Published {
    /// This node plus every member held alive (see [`published_live`]).
    pub live: watch::Sender<BTreeSet<String>>,
    /// False once peers are expected but none has been reachable for [`Timing::isolation_grace`], and on return.
    pub healthy: watch::Sender<bool>,
    /// True while this node hears from no peer (see [`published_live`]).
    pub cut_off: watch::Sender<bool>,
    /// How many times the cluster declared this node Down and it rejoined: each time, the others have taken over
    /// what it owned, whatever its own view of the API still says.
    pub rejoined: watch::Sender<u64>,
}

/// Binds the gossip socket and runs the failure detector until `shutdown` resolves, then leaves gracefully.
///
/// `live` always holds this node plus every member gossip considers alive; `healthy` turns false when peers are
/// expected (seeds other than ourselves) but none has been reachable for [`Timing::isolation_grace`], and on return.
pub async fn run(
    config: MembershipConfig,
    seeds: watch::Receiver<BTreeMap<String, SocketAddr>>,
    out: Published,
    metrics: MembershipMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let socket = match UdpSocket::bind(config.bind).await {
        Ok(socket) => socket,
        Err(source) => {
            metrics.healthy.set(0);
            out.healthy.send_replace(false);
            return Err(Error::Bind {
                addr: config.bind,
                source,
            });
        }
    };
    serve(socket, config, seeds, out, metrics, shutdown).await
}

/// [`run`] on a socket the caller bound (`config.bind` is not used): for tests, or a socket handed over at start.
pub async fn serve(
    socket: UdpSocket,
    config: MembershipConfig,
    mut seeds: watch::Receiver<BTreeMap<String, SocketAddr>>,
    out: Published,
    metrics: MembershipMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.timing.validate()?;
    let key = GossipKey::new(&config.key)?;
    let identity = MemberId {
        node: config.node.clone(),
        addr: config.advertise,
        generation: config.generation,
    };
    // The RNG only picks probe targets; it need not be secret, only different per member.
    let mut hasher = std::hash::DefaultHasher::new();
    identity.hash(&mut hasher);
    let rng = SmallRng::seed_from_u64(hasher.finish());
    let foca = Foca::new(identity, config.timing.foca_config(), rng, PostcardCodec);

    let members = live_set(&config.node, []);
    metrics.members.set(members.len() as i64);
    out.live.send_replace(members.clone());
    let mut shell = Shell {
        node: config.node.clone(),
        advertise: config.advertise,
        timing: config.timing.clone(),
        foca,
        outbox: Outbox {
            node: config.node.clone(),
            key,
            sends: Vec::new(),
            timers: Vec::new(),
            changed: false,
            member_downs: metrics.member_downs.clone(),
            rejoined: false,
        },
        timers: BinaryHeap::new(),
        seeds: seeds.borrow_and_update().clone(),
        members,
        last_heard: None,
        cut_off: false,
        deferred_downs: Vec::new(),
        isolation: Isolation::default(),
        health: LocalHealth::default(),
        live: out.live,
        healthy: out.healthy,
        cut_off_tx: out.cut_off,
        rejoined_tx: out.rejoined,
        metrics,
    };
    shell.set_healthy(true);
    tracing::info!(node = %shell.node, addr = %config.advertise, generation = config.generation, "gossip started");

    let mut shutdown = std::pin::pin!(shutdown);
    let mut seeds_open = true;
    let mut reannounce = tokio::time::interval(config.timing.reannounce_period);
    reannounce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One byte more than accepted, so an oversized datagram shows as such instead of being silently truncated.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];

    loop {
        let next_timer = shell.timers.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            // Timers before the socket, so a flood of datagrams cannot starve our own probes.
            biased;
            () = &mut shutdown => {
                if let Err(error) = shell.foca.leave_cluster(&mut shell.outbox) {
                    tracing::warn!(node = %shell.node, %error, "gossip leave");
                }
                shell.flush(&socket).await;
                shell.set_healthy(false);
                tracing::info!(node = %shell.node, "left the gossip cluster");
                return Ok(());
            }
            () = crate::task::sleep_until(next_timer) => shell.due_timers(Instant::now()),
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => shell.datagram(&buf[..len], from),
                // Unconnected UDP sockets surface little besides ICMP errors here; none is fatal.
                Err(error) => tracing::debug!(node = %shell.node, %error, "gossip receive"),
            },
            changed = seeds.changed(), if seeds_open => match changed {
                Ok(()) => {
                    shell.seeds = seeds.borrow_and_update().clone();
                    shell.announce_to_seeds();
                }
                Err(_) => seeds_open = false,
            },
            _ = reannounce.tick() => shell.announce_to_seeds(),
        }
        shell.flush(&socket).await;
        shell.publish(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_member_cut_off_from_everyone_drops_no_one_but_still_adds() {
        let set = |names: &[&str]| -> std::collections::BTreeSet<String> {
            names.iter().map(|n| n.to_string()).collect()
        };
        let before = set(&["a", "b", "c"]);
        // Hearing from peers: the detector's verdict stands.
        assert_eq!(
            super::published_live(&set(&["a", "b"]), &before, false),
            set(&["a", "b"])
        );
        // Cut off: c's Down is this node's own silence, not evidence; a joiner is still added.
        assert_eq!(
            super::published_live(&set(&["a", "b"]), &before, true),
            before
        );
        assert_eq!(
            super::published_live(&set(&["a", "b", "c", "d"]), &before, true),
            set(&["a", "b", "c", "d"])
        );
        assert!(
            super::Timing::lan().heard_within()
                < super::Timing::lan().probe_period + super::Timing::lan().suspect_to_down_after,
            "a cut-off member must know it before the first peer is declared Down"
        );
    }

    #[test]
    fn a_cut_off_node_claims_only_its_own_and_what_the_leases_show_orphaned() {
        use super::Standing;
        use crate::plan::owner::Cause::*;
        let all = [Kept, New, OwnerGone, NotCandidate, Level];
        let allowed = |s: Standing| -> Vec<_> {
            all.into_iter()
                .filter(|c| super::may_claim(s, *c))
                .collect()
        };
        assert_eq!(allowed(Standing::Connected), all);
        assert_eq!(allowed(Standing::Off), all);
        assert_eq!(allowed(Standing::CutOff), [Kept, OwnerGone]);
        assert_eq!(
            allowed(Standing::Unhealthy),
            [Kept, New, OwnerGone, NotCandidate]
        );
        assert_eq!(Standing::of(true, true, true), Standing::CutOff);
        assert_eq!(Standing::of(true, false, true), Standing::Unhealthy);
        assert_eq!(Standing::of(false, true, false), Standing::Off);
    }

    use super::*;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // ---- pure parts ----

    #[test]
    fn local_health_rises_when_timers_run_late_and_falls_with_each_probe_on_time() {
        let tolerance = Duration::from_millis(40);
        let mut health = super::LocalHealth::default();
        assert!(!health.observe(Duration::from_millis(5), true, tolerance));
        assert_eq!(
            health.stretch(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        // Late twice: the score climbs, and the probe timers stretch with it.
        assert!(health.observe(Duration::from_millis(90), true, tolerance));
        assert!(health.observe(Duration::from_millis(41), false, tolerance));
        assert!(health.degraded());
        assert_eq!(
            health.stretch(Duration::from_millis(100)),
            Duration::from_millis(300)
        );
        // On time without a probe tick: no evidence of health yet.
        assert!(!health.observe(Duration::ZERO, false, tolerance));
        assert!(health.observe(Duration::ZERO, true, tolerance));
        assert!(health.observe(Duration::ZERO, true, tolerance));
        assert!(!health.degraded());
        // Capped, as in Lifeguard.
        for _ in 0..20 {
            health.observe(Duration::from_secs(1), true, tolerance);
        }
        assert_eq!(health.score, super::LocalHealth::MAX);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn envelope_golden_bytes() {
        // Computed independently with Python's hmac module:
        // hmac.new(b'k8s-secret', b'ironlb-membership-v1' + b'\x01\x00\x01ping', sha256)
        let key = GossipKey::new(b"k8s-secret").unwrap();
        let sealed = key.seal(b"\x00\x01ping");
        assert_eq!(
            hex(&sealed),
            "01000170696e6767a53ff90ce60cdcdf2a9841f864efa23e813ea35a862ae173fa3a298cfcdabd"
        );
        assert_eq!(key.open(&sealed), Ok(&b"\x00\x01ping"[..]));
    }

    #[test]
    fn envelope_rejects_what_it_did_not_seal() {
        let key = GossipKey::new(b"right").unwrap();
        let sealed = key.seal(b"payload");
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x40;
            assert_eq!(key.open(&flipped), Err(Rejected::BadMac), "bit flip at {i}");
        }
        let wrong = GossipKey::new(b"wrong").unwrap();
        assert_eq!(wrong.open(&sealed), Err(Rejected::BadMac));
        assert_eq!(key.open(&[]), Err(Rejected::Truncated(0)));
        assert_eq!(
            key.open(&sealed[..TAG_LEN]),
            Err(Rejected::Truncated(TAG_LEN))
        );
        assert_eq!(key.open(&sealed[1..]), Err(Rejected::BadMac));
        let big = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(key.open(&big), Err(Rejected::Oversized(MAX_DATAGRAM + 1)));
        assert!(matches!(GossipKey::new(b""), Err(Error::EmptyKey)));
    }

    #[test]
    fn envelope_checks_version_only_after_the_mac() {
        let key = GossipKey::new(b"k").unwrap();
        let mut body = vec![2u8];
        body.extend_from_slice(b"future");
        let mut mac = key.mac.clone();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(key.open(&body), Err(Rejected::Version(2)));
        assert_eq!(Rejected::Version(2).reason(), "version");
        // Without the key, a version byte is never reached.
        body[0] = 3;
        assert_eq!(key.open(&body), Err(Rejected::BadMac));
    }

    #[test]
    fn envelope_never_panics_on_any_length() {
        let key = GossipKey::new(b"k").unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..MAX_DATAGRAM + 40 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(key.open(&bytes).is_err());
        }
    }

    #[test]
    fn identity_renews_with_a_larger_generation() {
        use foca::Identity;
        let id = MemberId {
            node: "a".into(),
            addr: "192.0.2.1:7946".parse().unwrap(),
            generation: 7,
        };
        let renewed = id.renew().unwrap();
        assert_eq!(renewed.generation, 8);
        assert_eq!(renewed.addr(), id.addr());
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
    }

    #[test]
    fn live_nodes_intersects_with_ready_unless_gossip_is_unhealthy() {
        let gossip = names(&["a", "b", "c"]);
        let ready = names(&["b", "c", "d"]);
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::Connected, None),
            names(&["b", "c"])
        );
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::Unhealthy, None),
            ready
        );
        assert_eq!(
            live_nodes(&names(&["a"]), &ready, Standing::Connected, None),
            names(&[])
        );
    }

    #[test]
    fn isolation_grace_is_short_only_with_the_lease_fallback() {
        assert_eq!(isolation_grace(None), Duration::from_secs(60));
        assert_eq!(
            isolation_grace(Some(Duration::from_secs(3))),
            Duration::from_secs(5)
        );
        assert_eq!(
            isolation_grace(Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn node_leases_decide_with_ready_only_while_gossip_is_unhealthy() {
        let gossip = names(&["a", "b", "c"]);
        let ready = names(&["a", "b", "c", "d"]);
        // b's agent died: its Lease went stale, though the Node is still Ready.
        let leases = names(&["a", "c", "d", "e"]);
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::Unhealthy, Some(&leases)),
            names(&["a", "c", "d"]),
            "fresh Lease and Ready (e has a Lease but is not Ready)"
        );
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::Connected, Some(&leases)),
            names(&["a", "b", "c"]),
            "healthy gossip ignores the Leases"
        );
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::Unhealthy, None),
            ready,
            "no Lease signal: Ready alone"
        );
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::Unhealthy, Some(&names(&[]))),
            names(&[])
        );
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::CutOff, Some(&leases)),
            names(&["a", "c", "d"]),
            "cut off: the Leases, at once"
        );
        assert_eq!(
            live_nodes(&gossip, &ready, Standing::CutOff, None),
            names(&["a", "b", "c"]),
            "cut off without Leases: the kept gossip view"
        );
    }

    #[test]
    fn live_set_always_holds_self() {
        assert_eq!(live_set("a", []), names(&["a"]));
        assert_eq!(live_set("a", ["c", "b", "a"]), names(&["a", "b", "c"]));
    }

    #[test]
    fn announces_only_to_seeds_not_yet_live() {
        let me: SocketAddr = "192.0.2.1:7946".parse().unwrap();
        let seeds: BTreeMap<String, SocketAddr> = [
            ("a", "192.0.2.1:7946"),
            ("b", "192.0.2.2:7946"),
            ("c", "192.0.2.3:7946"),
            ("alias", "192.0.2.1:7946"),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect();
        let targets = announce_targets("a", me, &seeds, &names(&["a", "b"]));
        assert_eq!(
            targets,
            vec![("c".to_string(), "192.0.2.3:7946".parse().unwrap())]
        );
        assert!(announce_targets("a", me, &seeds, &names(&["a", "b", "c"])).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn isolation_turns_unhealthy_only_after_the_grace() {
        let grace = Duration::from_secs(60);
        let mut isolation = Isolation::default();
        let start = Instant::now();
        // Alone by design (no other seeds): always healthy.
        assert!(isolation.observe(start, false, false, grace));
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(isolation.observe(Instant::now(), false, false, grace));
        // Peers expected, none live: healthy during the grace, then not.
        let cut = Instant::now();
        assert!(isolation.observe(cut, true, false, grace));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(isolation.observe(Instant::now(), true, false, grace));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!isolation.observe(Instant::now(), true, false, grace));
        // One peer back: healthy at once, and the clock restarts.
        assert!(isolation.observe(Instant::now(), true, true, grace));
        assert!(isolation.observe(Instant::now(), true, false, grace));
    }

    #[test]
    fn lan_timing_detects_well_under_a_second() {
        let t = Timing::lan();
        t.validate().unwrap();
        assert_eq!(t.expected_detection(), Duration::from_millis(450));
        assert_eq!(t.worst_detection(3), Duration::from_millis(650));
        let config = t.foca_config();
        assert_eq!(config.probe_period, t.probe_period);
        assert_eq!(config.max_packet_size.get() + OVERHEAD, MAX_DATAGRAM);
        let bad = Timing {
            probe_rtt: t.probe_period,
            ..t.clone()
        };
        assert!(matches!(bad.validate(), Err(Error::Timing(_))));
        let zero = Timing {
            suspect_to_down_after: Duration::ZERO,
            ..t
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn metrics_register_under_their_names() {
        let mut registry = Registry::default();
        let metrics = MembershipMetrics::register(&mut registry);
        metrics.reject("bad_mac");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "ironlb_membership_members",
            "ironlb_membership_healthy",
            "ironlb_membership_datagrams_received_total",
            "ironlb_membership_datagrams_sent_total",
            "ironlb_membership_sent_bytes_total",
            "ironlb_membership_datagrams_rejected_total{reason=\"bad_mac\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn config_debug_hides_the_key() {
        let addr: SocketAddr = "192.0.2.1:7946".parse().unwrap();
        let config = MembershipConfig::new("a", addr, addr, b"hunter2".to_vec());
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && text.contains("<7 bytes>"),
            "{text}"
        );
        assert!(config.generation > 0);
    }

    // ---- real UDP on loopback ----

    const KEY: &[u8] = b"membership-test-key";
    const BOUND: Duration = Duration::from_secs(3);

    type Seeds = watch::Sender<BTreeMap<String, SocketAddr>>;

    struct Agent {
        name: String,
        addr: SocketAddr,
        generation: u64,
        live: watch::Receiver<BTreeSet<String>>,
        healthy: watch::Receiver<bool>,
        rejoined: watch::Receiver<u64>,
        metrics: MembershipMetrics,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<()>>,
    }

    impl Agent {
        /// Kills the task: no leave message, the socket closes, as when the process dies.
        async fn crash(self) {
            self.task.abort();
            let _ = self.task.await;
        }

        async fn leave(mut self) {
            let _ = self.stop.take().unwrap().send(());
            let result = tokio::time::timeout(BOUND, self.task).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "graceful stop: {result:?}"
            );
        }
    }

    async fn start(
        seeds: &Seeds,
        name: &str,
        key: &[u8],
        at: Option<SocketAddr>,
        generation: u64,
    ) -> Agent {
        let bind = at.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        spawn_member(seeds, name, key, socket, addr, generation, Timing::lan())
    }

    /// Runs a member on `socket` that tells its peers to reach it at `addr`.
    fn spawn_member(
        seeds: &Seeds,
        name: &str,
        key: &[u8],
        socket: UdpSocket,
        addr: SocketAddr,
        generation: u64,
        timing: Timing,
    ) -> Agent {
        seeds.send_modify(|s| {
            s.insert(name.to_string(), addr);
        });
        let config = MembershipConfig {
            node: name.to_string(),
            bind: addr,
            advertise: addr,
            key: key.to_vec(),
            generation,
            timing,
        };
        let config = MembershipConfig {
            bind: socket.local_addr().unwrap(),
            ..config
        };
        let (rejoined_tx, rejoined) = watch::channel(0);
        let (live_tx, live) = watch::channel(BTreeSet::new());
        let (healthy_tx, healthy) = watch::channel(false);
        let metrics = MembershipMetrics::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            socket,
            config,
            seeds.subscribe(),
            Published {
                live: live_tx,
                healthy: healthy_tx,
                cut_off: watch::channel(false).0,
                rejoined: rejoined_tx,
            },
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Agent {
            name: name.to_string(),
            addr,
            generation,
            live,
            healthy,
            rejoined,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Waits until every agent sees exactly `want`; returns how long that took, or panics after `bound`.
    async fn converge(agents: &mut [&mut Agent], want: &[&str], bound: Duration) -> Duration {
        let want = names(want);
        let start = Instant::now();
        for agent in agents.iter_mut() {
            let seen =
                tokio::time::timeout_at(start + bound, agent.live.wait_for(|live| *live == want))
                    .await
                    .is_ok_and(|waited| waited.is_ok());
            assert!(
                seen,
                "{} sees {:?}, want {want:?} within {bound:?}",
                agent.name,
                *agent.live.borrow()
            );
        }
        start.elapsed()
    }

    async fn three(seeds: &Seeds) -> (Agent, Agent, Agent) {
        let mut a = start(seeds, "a", KEY, None, 1).await;
        let mut b = start(seeds, "b", KEY, None, 1).await;
        let mut c = start(seeds, "c", KEY, None, 1).await;
        converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;
        (a, b, c)
    }

    /// A member whose peers reach it through a relay that drops everything while `deaf` is set: it can still send,
    /// but hears nothing, as behind a firewall that drops its inbound gossip.
    async fn start_deafenable(
        seeds: &Seeds,
        name: &str,
    ) -> (
        Agent,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        JoinHandle<()>,
    ) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let inner = socket.local_addr().unwrap();
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let front = relay.local_addr().unwrap();
        let deaf = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relay_deaf = deaf.clone();
        let relay_task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            while let Ok((len, _)) = relay.recv_from(&mut buf).await {
                if !relay_deaf.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = relay.send_to(&buf[..len], inner).await;
                }
            }
        });
        (
            // A short isolation grace, to see it turn unhealthy while deaf.
            spawn_member(
                seeds,
                name,
                KEY,
                socket,
                front,
                1,
                Timing {
                    isolation_grace: DEAF_GRACE,
                    ..Timing::lan()
                },
            ),
            deaf,
            relay_task,
        )
    }

    const DEAF_GRACE: Duration = Duration::from_millis(500);

    async fn spawn_patient(seeds: &Seeds, name: &str, timing: &Timing) -> Agent {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        spawn_member(seeds, name, KEY, socket, addr, 1, timing.clone())
    }

    /// Runs a member on a thread of its own whose runtime a hog blocks for `stall` out of every `stall + run`, as a
    /// CPU quota or a noisy neighbour would: the member's timers fire late and its socket is read late.
    fn spawn_starved(
        seeds: &Seeds,
        name: &str,
        stall: Duration,
        run: Duration,
    ) -> (Agent, std::thread::JoinHandle<()>) {
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_socket.set_nonblocking(true).unwrap();
        let addr = std_socket.local_addr().unwrap();
        let (agent_tx, agent_rx) = std::sync::mpsc::channel();
        let seeds = seeds.clone();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let socket = UdpSocket::from_std(std_socket).unwrap();
                let mut agent = spawn_member(&seeds, &name, KEY, socket, addr, 1, Timing::lan());
                let (done_tx, mut done) = oneshot::channel::<()>();
                let stop = agent.stop.replace(done_tx);
                let task = std::mem::replace(&mut agent.task, tokio::spawn(async { Ok(()) }));
                agent_tx.send(agent).unwrap();
                let hog = async {
                    loop {
                        tokio::time::sleep(run).await;
                        std::thread::sleep(stall);
                    }
                };
                tokio::select! {
                    () = hog => {}
                    _ = &mut done => {}
                }
                let _ = stop.unwrap().send(());
                let _ = task.await;
            });
        });
        (agent_rx.recv().unwrap(), thread)
    }

    /// c's and d's threads are stalled most of the time (260 of every 290 ms, 230 of every 270 ms). Their timers
    /// fire late, after acks and refutations have queued up in their sockets unread. a and b are healthy: neither
    /// may ever see the other Down, whatever a starved detector concluded (c and d themselves may be dropped for a
    /// while: they are unresponsive). The starved members' local health must turn degraded, the healthy ones' not.
    #[tokio::test]
    async fn starved_members_doubt_themselves_and_convict_no_healthy_peer() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        let mut a = start(&seeds, "a", KEY, None, 1).await;
        let mut b = start(&seeds, "b", KEY, None, 1).await;
        let (mut c, c_thread) = spawn_starved(
            &seeds,
            "c",
            Duration::from_millis(260),
            Duration::from_millis(30),
        );
        let (mut d, d_thread) = spawn_starved(
            &seeds,
            "d",
            Duration::from_millis(230),
            Duration::from_millis(40),
        );
        let all = ["a", "b", "c", "d"];
        converge(
            &mut [&mut a, &mut b, &mut c, &mut d],
            &all,
            Duration::from_secs(10),
        )
        .await;
        let run = Duration::from_secs(6);
        let watch_pair = |agent: &Agent, other: &'static str| {
            let mut live = agent.live.clone();
            tokio::spawn(async move {
                let mut lost = 0u32;
                let until = Instant::now() + run;
                while let Ok(Ok(())) = tokio::time::timeout_at(until, live.changed()).await {
                    if !live.borrow_and_update().contains(other) {
                        lost += 1;
                    }
                }
                lost
            })
        };
        let (a_lost_b, b_lost_a) = (watch_pair(&a, "b"), watch_pair(&b, "a"));
        // The highest local health score each member reached, sampled every 10 ms.
        let mut worst = [0i64; 4];
        let until = Instant::now() + run;
        while Instant::now() < until {
            for (w, agent) in worst.iter_mut().zip([&a, &b, &c, &d]) {
                *w = (*w).max(agent.metrics.local_health());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (a_lost_b, b_lost_a) = (a_lost_b.await.unwrap(), b_lost_a.await.unwrap());
        for (agent, thread) in [(&mut c, c_thread), (&mut d, d_thread)] {
            let _ = agent.stop.take().unwrap().send(());
            thread.join().unwrap();
        }
        let downs: Vec<u64> = [&a, &b, &c, &d]
            .iter()
            .map(|m| m.metrics.member_downs())
            .collect();
        assert_eq!(
            (a_lost_b, b_lost_a),
            (0, 0),
            "times a lost b and b lost a from their live sets beside starved members; Downs seen {downs:?}"
        );
        assert_eq!(
            worst[..2],
            [0, 0],
            "the healthy members' local health scores"
        );
        assert!(
            worst[2] > 0 && worst[3] > 0,
            "the starved members never doubted themselves: highest scores {worst:?}"
        );
    }

    /// c can send but not hear, for well over the time its detector needs to suspect and convict a and b. a and b
    /// drop c (it acks nothing), but never each other: c holds its Down verdicts back while it hears no one. Before,
    /// c declared both Down and told them so, and each dropped the other until it rejoined.
    #[tokio::test]
    async fn a_member_that_cannot_hear_convicts_no_one() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        // a and b take longer to convict than c, so that c's verdicts reach them while they still count c alive:
        // the order a real run can have (the member that cannot hear convicted first by 5 ms in one).
        let patient = Timing {
            suspect_to_down_after: Duration::from_millis(1200),
            ..Timing::lan()
        };
        let mut a = spawn_patient(&seeds, "a", &patient).await;
        let mut b = spawn_patient(&seeds, "b", &patient).await;
        let (mut c, deaf, relay) = start_deafenable(&seeds, "c").await;
        converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;
        // Every Down a and b see is counted; each round, the one right one is c's.
        let downs = |agent: &Agent| agent.metrics.member_downs();
        let (a0, b0) = (downs(&a), downs(&b));
        // Several rounds, each deaf at another phase of the probe period.
        for round in 1..=4u64 {
            deaf.store(true, std::sync::atomic::Ordering::SeqCst);
            // Well past c's probe period plus suspicion (300 ms): its detector has long suspected a and b.
            tokio::time::sleep(Duration::from_millis(700 + round * 37)).await;
            converge(&mut [&mut a, &mut b], &["a", "b"], BOUND).await;
            // c counts its peers alive (it convicted no one) yet knows it is isolated: past its grace, unhealthy.
            assert!(
                !*c.healthy.borrow(),
                "round {round}: c hears no one for over {DEAF_GRACE:?} and still reports gossip healthy"
            );
            assert_eq!(
                (downs(&a) - a0, downs(&b) - b0),
                (round, round),
                "round {round}: Downs seen by a and b; more than one each means a peer was dropped on the word of a \
                 member that hears no one"
            );
            // c hears again: it rejoins, and the verdicts it held back find a and b alive.
            deaf.store(false, std::sync::atomic::Ordering::SeqCst);
            converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            converge(
                &mut [&mut a, &mut b, &mut c],
                &["a", "b", "c"],
                Duration::ZERO,
            )
            .await;
            assert_eq!(
                (downs(&a) - a0, downs(&b) - b0),
                (round, round),
                "round {round}: a or b saw a Down after c came back"
            );
            assert_eq!(
                *c.rejoined.borrow(),
                round,
                "round {round}: c was declared Down and rejoined; the agent must be told, to yield what it owned"
            );
            assert!(
                *c.healthy.borrow(),
                "round {round}: c hears its peers again but reports gossip unhealthy"
            );
        }
        relay.abort();
        for agent in [a, b, c] {
            agent.crash().await;
        }
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    #[tokio::test]
    async fn three_members_converge() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        let (a, b, c) = three(&seeds).await;
        assert!(*a.healthy.borrow() && *b.healthy.borrow() && *c.healthy.borrow());
        assert_eq!(a.metrics.members(), 3);
        for agent in [&a, &b, &c] {
            assert_eq!(agent.metrics.rejected("bad_mac"), 0);
            assert!(agent.metrics.sent() > 0 && agent.metrics.received() > 0);
        }
        // Steady-state background traffic, for the module docs.
        let (sent, bytes) = (a.metrics.sent(), a.metrics.sent_bytes());
        let window = Duration::from_secs(2);
        tokio::time::sleep(window).await;
        let datagrams = (a.metrics.sent() - sent) as f64 / window.as_secs_f64();
        let rate = (a.metrics.sent_bytes() - bytes) as f64 / window.as_secs_f64();
        println!(
            "steady state, 3 members: {datagrams:.1} datagrams/s and {rate:.0} bytes/s sent per node"
        );
        assert_eq!(*a.live.borrow(), names(&["a", "b", "c"]));
        for agent in [a, b, c] {
            agent.crash().await;
        }
    }

    #[tokio::test]
    async fn crashed_member_is_declared_down() {
        let mut times = Vec::new();
        for trial in 0..8u64 {
            let (seeds, _) = watch::channel(BTreeMap::new());
            let (mut a, mut b, c) = three(&seeds).await;
            // Let probing settle, then crash at a different phase of the probe period each trial: the members'
            // timers start together, so a fixed delay would always measure the same phase.
            tokio::time::sleep(Duration::from_millis(300 + trial * 37 % 100)).await;
            c.crash().await;
            let took = converge(&mut [&mut a, &mut b], &["a", "b"], BOUND).await;
            // Only a leave message could beat the suspicion timeout: a crash must not send one.
            assert!(
                took >= Timing::lan().suspect_to_down_after,
                "crash seen after {took:?}, before suspicion could expire"
            );
            times.push(took);
            a.crash().await;
            b.crash().await;
        }
        times.sort();
        println!(
            "crash detection over {} trials: p50 {:?}, max {:?}, all {times:?}",
            times.len(),
            percentile(&times, 0.5),
            times[times.len() - 1]
        );
    }

    #[tokio::test]
    async fn graceful_leave_is_seen_at_once() {
        let mut times = Vec::new();
        for _ in 0..3 {
            let (seeds, _) = watch::channel(BTreeMap::new());
            let (mut a, mut b, c) = three(&seeds).await;
            c.leave().await;
            times.push(converge(&mut [&mut a, &mut b], &["a", "b"], BOUND).await);
            a.crash().await;
            b.crash().await;
        }
        times.sort();
        println!(
            "graceful leave: p50 {:?}, max {:?}",
            percentile(&times, 0.5),
            times[times.len() - 1]
        );
    }

    #[tokio::test]
    async fn restarted_member_rejoins() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        let (mut a, mut b, c) = three(&seeds).await;
        let (name, addr, generation) = (c.name.clone(), c.addr, c.generation);
        c.crash().await;
        converge(&mut [&mut a, &mut b], &["a", "b"], BOUND).await;
        let mut c = start(&seeds, &name, KEY, Some(addr), generation + 1).await;
        converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;

        // A restart faster than detection: the new generation replaces the old one in place.
        let addr = c.addr;
        c.crash().await;
        let mut c = start(&seeds, "c", KEY, Some(addr), generation + 2).await;
        converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;
        // And it stays up: nobody holds on to the crashed generation.
        tokio::time::sleep(Duration::from_secs(1)).await;
        converge(
            &mut [&mut a, &mut b, &mut c],
            &["a", "b", "c"],
            Duration::ZERO,
        )
        .await;

        // The node comes back at another address (a new InternalIP): same name, newer generation.
        c.crash().await;
        let mut c = start(&seeds, "c", KEY, None, generation + 3).await;
        assert_ne!(c.addr, addr);
        converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;
        for agent in [a, b, c] {
            agent.crash().await;
        }
    }

    #[tokio::test]
    async fn member_with_the_wrong_key_never_joins() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        let mut a = start(&seeds, "a", KEY, None, 1).await;
        let mut b = start(&seeds, "b", KEY, None, 1).await;
        converge(&mut [&mut a, &mut b], &["a", "b"], BOUND).await;
        let mut intruder = start(&seeds, "x", b"not-the-key", None, 1).await;
        // The intruder announces at once and is re-announced to every second: wait for both directions.
        let deadline = Instant::now() + BOUND;
        while a.metrics.rejected("bad_mac") == 0 || intruder.metrics.rejected("bad_mac") == 0 {
            assert!(Instant::now() < deadline, "no rejected datagrams counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        converge(&mut [&mut a, &mut b], &["a", "b"], Duration::ZERO).await;
        converge(&mut [&mut intruder], &["x"], Duration::ZERO).await;
        assert!(a.metrics.rejected("bad_mac") + b.metrics.rejected("bad_mac") >= 2);
        assert_eq!(a.metrics.rejected("invalid"), 0);
        for agent in [a, b, intruder] {
            agent.crash().await;
        }
    }

    #[tokio::test]
    async fn garbage_datagrams_are_dropped_and_counted() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        let mut a = start(&seeds, "a", KEY, None, 1).await;
        let mut b = start(&seeds, "b", KEY, None, 1).await;
        converge(&mut [&mut a, &mut b], &["a", "b"], BOUND).await;

        let key = GossipKey::new(KEY).unwrap();
        let mut versioned = vec![9u8, 1, 2, 3];
        let mut mac = key.mac.clone();
        mac.update(&versioned);
        versioned.extend_from_slice(&mac.finalize().into_bytes());
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let garbage: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "bad_mac"),
            (vec![1], "bad_mac"),
            (vec![0xff; OVERHEAD], "bad_mac"),
            ((0..=255).collect(), "bad_mac"),
            (vec![0; 9000], "oversized"),
            (vec![0; MAX_DATAGRAM + 1], "oversized"),
            (key.seal(b"\xff\xff\xff\xff not a foca header"), "invalid"),
            (key.seal(&[]), "invalid"),
            (versioned, "version"),
        ];
        let mut want: BTreeMap<&str, u64> = BTreeMap::new();
        for (datagram, reason) in &garbage {
            attacker.send_to(datagram, a.addr).await.unwrap();
            *want.entry(reason).or_default() += 1;
        }
        let deadline = Instant::now() + BOUND;
        while want
            .iter()
            .any(|(reason, n)| a.metrics.rejected(reason) < *n)
        {
            assert!(
                Instant::now() < deadline,
                "rejections not counted: want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!a.task.is_finished(), "garbage stopped the agent");
        // Still a working member: a newcomer joins.
        let mut c = start(&seeds, "c", KEY, None, 1).await;
        converge(&mut [&mut a, &mut b, &mut c], &["a", "b", "c"], BOUND).await;
        for agent in [a, b, c] {
            agent.crash().await;
        }
    }

    #[tokio::test]
    async fn run_reports_a_bind_failure_as_unhealthy() {
        let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let (_seeds_tx, seeds) = watch::channel(BTreeMap::new());
        let (live_tx, _live) = watch::channel(BTreeSet::new());
        let (healthy_tx, healthy) = watch::channel(true);
        let config = MembershipConfig::new("a", addr, addr, KEY.to_vec());
        let result = run(
            config,
            seeds,
            Published {
                live: live_tx,
                healthy: healthy_tx,
                cut_off: watch::channel(false).0,
                rejoined: watch::channel(0).0,
            },
            MembershipMetrics::default(),
            std::future::pending(),
        )
        .await;
        assert!(matches!(result, Err(Error::Bind { .. })), "{result:?}");
        assert!(!*healthy.borrow());
    }

    #[tokio::test]
    async fn lone_member_without_peers_stays_healthy() {
        let (seeds, _) = watch::channel(BTreeMap::new());
        let a = start(&seeds, "a", KEY, None, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*a.live.borrow(), names(&["a"]));
        assert!(*a.healthy.borrow());
        a.leave().await;
    }
}
