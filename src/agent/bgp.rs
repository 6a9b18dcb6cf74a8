//! The agent's BGP side: from the BGPPeers and BGPAdvertisements (validated [`Config`]) and the eligibility the
//! planner computes ([`PlanInput`]: for Local Services only nodes with a serving endpoint), it works out which
//! sessions this node runs and which routes each carries, and keeps the [`Session`]s in step.
//!
//! ```text
//!  ClusterState + Config ──PlanInput──▶ plan() ──per peer: SessionConfig + RouteSet──▶ BgpSpeaker ──▶ Session(s)
//! ```
//!
//! [`plan`] is pure; [`BgpSpeaker`] owns the sessions (and the router discovery of unnumbered peers), reads MD5
//! passwords from the watched Secrets and reports what it cannot do (a missing BFDProfile, an unusable interface)
//! as Warning Events, once per peer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::alloc::ServiceKey;
use crate::bfd::transport::{Bfd, BfdLink, BfdPeer, BfdStatus};
use crate::bgp::fsm::{FsmConfig, PeerAs, State};
use crate::bgp::session::{RouteSet, Session, SessionConfig, SessionStatus};
use crate::bgp::unnumbered::{Discovery, DiscoveryStatus};
use crate::config::community::CommunityValue;
use crate::config::{Config, Labels, PeerEndpoint, PeerPassword, RemoteAsn, Validated};
use crate::k8s::allocation::ServiceAction;
use crate::k8s::events::Note;
use crate::k8s::index::ObjectKey;
use crate::k8s::state::ClusterState;
use crate::plan::PlanInput;
use crate::plan::visibility::{ANNOUNCED_BY_ANNOTATION, BGP_ADVERTISED_BY_ANNOTATION};

/// The key of a `passwordSecret` Secret holding the password (a `kubernetes.io/basic-auth` Secret).
pub const PASSWORD_KEY: &str = "password";
/// Hold time when the BGPPeer sets none.
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// First reconnect delay when the BGPPeer sets no `connectTime`.
pub const DEFAULT_CONNECT_TIME: Duration = Duration::from_secs(5);
/// Restart time announced with graceful restart.
pub const RESTART_TIME: u16 = 120;
/// How long a leaving node's routes carry GRACEFUL_SHUTDOWN before it withdraws them, unless
/// `--bgp-shutdown-grace` says otherwise. With the 3 s hand-off running at the same time, a stopping agent still
/// ends within the manifests' 10 s termination grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A session this node should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPlan {
    pub config: SessionConfig,
    pub routes: RouteSet,
    /// The BFD session beside it, when the BGPPeer names a BFDProfile.
    pub bfd: Option<BfdPeer>,
    /// The password comes from this Secret (namespace, name), to be filled in by the caller.
    pub password_secret: Option<(String, String)>,
    /// An unnumbered peer: the router heard on this interface (see [`crate::bgp::unnumbered`]). Its link-local
    /// address goes into `config.peer` and the BFD peer once known; until then they hold the unspecified address.
    pub interface: Option<String>,
}

/// What [`plan`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpPlan {
    pub peers: BTreeMap<String, PeerPlan>,
    /// Per BGPPeer, the fields that cannot be honoured, one sentence each.
    pub warnings: BTreeMap<String, Vec<String>>,
    /// For every VIP group advertised over BGP by some node: the nodes advertising it.
    pub advertisers: BTreeMap<IpAddr, BTreeSet<String>>,
}

/// This node's addresses as its Node object lists them (InternalIP first, then ExternalIP).
pub fn node_addresses(state: &ClusterState, node: &str) -> Vec<IpAddr> {
    let Some(n) = state.nodes.get(&ObjectKey::new("", node.to_string())) else {
        return Vec::new();
    };
    let mut addrs: Vec<(u8, IpAddr)> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let rank = match a.type_.as_str() {
                "InternalIP" => 0,
                "ExternalIP" => 1,
                _ => return None,
            };
            a.address.parse().ok().map(|ip| (rank, ip))
        })
        .collect();
    addrs.sort_by_key(|(rank, _)| *rank);
    addrs.into_iter().map(|(_, ip)| ip).collect()
}

fn peer_selects(peer: &crate::config::Peer, labels: &Labels) -> bool {
    peer.node_selectors.is_empty() || peer.node_selectors.iter().any(|s| s.matches(labels))
}

/// Sessions and routes of `node`. `agent_namespace` is where a `passwordSecret` without namespace is read.
pub fn plan(
    node: &str,
    state: &ClusterState,
    config: &Config,
    input: &PlanInput,
    agent_namespace: &str,
) -> BgpPlan {
    let mut out = BgpPlan::default();
    let labels_of = |n: &str| {
        input
            .nodes
            .iter()
            .find(|i| i.name == n)
            .map(|i| i.labels.clone())
    };
    let Some(node_labels) = labels_of(node) else {
        return out;
    };
    let addresses = node_addresses(state, node);
    let service_labels = |key: &ServiceKey| -> Labels {
        state
            .services
            .get(&ObjectKey::new(key.namespace.clone(), key.name.clone()))
            .and_then(|s| s.metadata.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    };

    // Peers usable at all, and the warnings for the others.
    let mut usable: Vec<&crate::config::Peer> = Vec::new();
    for peer in config.peers.values() {
        let mut warnings = Vec::new();
        if let Some(name) = &peer.bfd_profile
            && !config.bfd_profiles.contains_key(name)
        {
            warnings.push(format!(
                "spec.bfdProfile {name:?} names no BFDProfile: the session runs without BFD until it exists"
            ));
        }
        if !warnings.is_empty() {
            out.warnings.insert(peer.name.clone(), warnings);
        }
        usable.push(peer);
    }

    // Which nodes advertise which group (for `announced-by`): eligible nodes that run a session to some peer.
    for g in &input.groups {
        let nodes: BTreeSet<String> = g
            .bgp_nodes
            .iter()
            .filter(|n| labels_of(n).is_some_and(|l| usable.iter().any(|p| peer_selects(p, &l))))
            .cloned()
            .collect();
        if !nodes.is_empty() {
            out.advertisers.insert(g.key.0, nodes);
        }
    }

    for peer in usable.into_iter().filter(|p| peer_selects(p, &node_labels)) {
        // An unnumbered peer's address is learned on the link; the session carries both families, IPv4 routes with
        // an IPv6 next hop (RFC 8950), as MetalLB's FRR configuration does for `interface` peers.
        let (address, interface) = match &peer.endpoint {
            PeerEndpoint::Address(a) => (*a, None),
            PeerEndpoint::Interface(i) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), Some(i.clone())),
        };
        let vrf = peer.vrf.clone().filter(|v| !v.is_empty());
        let bfd = peer
            .bfd_profile
            .as_ref()
            .and_then(|name| config.bfd_profiles.get(name))
            .map(|p| {
                let ms = |v: Option<u32>, default: u64| {
                    Duration::from_millis(v.map_or(default, u64::from))
                };
                BfdPeer {
                    peer: address,
                    local: peer.source_address,
                    multihop: peer.ebgp_multi_hop,
                    minimum_ttl: p
                        .minimum_ttl
                        .map_or(254, |t| u8::try_from(t).unwrap_or(255)),
                    profile: crate::bfd::fsm::Profile {
                        transmit_interval: ms(p.transmit_interval, 300),
                        receive_interval: ms(p.receive_interval, 300),
                        detect_mult: p
                            .detect_multiplier
                            .map_or(3, |m| u8::try_from(m).unwrap_or(255).max(1)),
                        passive: p.passive_mode,
                        // MetalLB's echoMode: echo packets every echoInterval (50 ms unless set), both ways.
                        echo_receive_interval: if p.echo_mode {
                            ms(p.echo_interval, 50)
                        } else {
                            Duration::ZERO
                        },
                        echo_transmit_interval: if p.echo_mode {
                            ms(p.echo_interval, 50)
                        } else {
                            Duration::ZERO
                        },
                    },
                    vrf: vrf.clone(),
                    interface: interface.clone(),
                }
            });
        let mut routes = RouteSet::new();
        for g in input.groups.iter().filter(|g| g.bgp_nodes.contains(node)) {
            let services: Vec<Labels> = g.services.keys().map(service_labels).collect();
            for ip in &g.ips {
                let Some(pool) = config.pools.values().find(|p| p.contains(ip)) else {
                    continue;
                };
                for adv in config.bgp_advertisements.values() {
                    let applies = adv.pools.contains(&pool.name)
                        && (adv.node_selectors.is_empty()
                            || adv.node_selectors.iter().any(|s| s.matches(&node_labels)))
                        && (adv.service_selectors.is_empty()
                            || services
                                .iter()
                                .all(|l| adv.service_selectors.iter().any(|s| s.matches(l))))
                        && (adv.peers.is_empty() || adv.peers.contains(&peer.name));
                    if !applies {
                        continue;
                    }
                    let len = match ip {
                        IpAddr::V4(_) => adv.aggregation_length,
                        IpAddr::V6(_) => adv.aggregation_length_v6,
                    };
                    let Ok(prefix) = IpNet::new(*ip, len) else {
                        continue;
                    };
                    let attrs = routes.entry(prefix.trunc()).or_default();
                    attrs.communities.extend(adv.communities.iter().copied());
                    attrs.local_pref = attrs.local_pref.max(adv.local_pref);
                }
            }
        }
        // `localASN` replaces `myASN` on this session, in the OPEN and in the AS path (FRR's `local-as <ASN>
        // no-prepend replace-as`, as MetalLB configures it).
        let local_asn = peer.local_asn.unwrap_or(peer.my_asn);
        let (peer_as, ebgp) = match peer.remote_asn {
            RemoteAsn::Fixed(a) => (PeerAs::Fixed(a), a != local_asn),
            RemoteAsn::Internal => (PeerAs::Internal, false),
            RemoteAsn::External => (PeerAs::External, true),
        };
        let family_match = |ip: &IpAddr| ip.is_ipv4() == address.is_ipv4();
        // As MetalLB (0.15 on) does: a session carries the routes of its own address family only, unless
        // `dualStackAddressFamily` asks for both. The deprecated `disableMP` asks for what is now the default.
        let both_families = peer.dual_stack_address_family || interface.is_some();
        let router_id = peer
            .router_id
            .or_else(|| {
                addresses.iter().find_map(|a| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
            })
            .unwrap_or_else(|| {
                // No IPv4 address to derive it from: any stable non-zero value identifies this node's speaker.
                let h = node.bytes().fold(2166136261u32, |h, b| {
                    (h ^ u32::from(b)).wrapping_mul(16777619)
                });
                Ipv4Addr::from(h | 1)
            });
        let connect_retry = peer
            .connect_time
            .unwrap_or(DEFAULT_CONNECT_TIME)
            .max(Duration::from_secs(1));
        let config = SessionConfig {
            name: peer.name.clone(),
            peer: SocketAddr::new(address, peer.port),
            source: peer.source_address,
            password: match &peer.password {
                Some(PeerPassword::Inline(p)) => Some(p.clone()),
                _ => None,
            },
            ttl: if ebgp && !peer.ebgp_multi_hop { 1 } else { 255 },
            connect_timeout: connect_retry.min(Duration::from_secs(30)),
            // Routes of the other family need a next hop of that family: only when the session carries both.
            alt_next_hop: if both_families && interface.is_none() {
                addresses.iter().find(|a| !family_match(a)).copied()
            } else {
                None
            },
            vrf,
            fsm: FsmConfig {
                local_asn,
                peer_as,
                router_id,
                hold_time: peer
                    .hold_time
                    .map_or(DEFAULT_HOLD_TIME, |d| d.as_secs().min(65535) as u16),
                keepalive: peer.keepalive_time,
                connect_retry,
                graceful_restart: peer.graceful_restart.then_some(RESTART_TIME),
                ipv4: both_families || address.is_ipv4(),
                ipv6: both_families || address.is_ipv6(),
                extended_next_hop: interface.is_some(),
                restarted: true,
            },
        };
        let password_secret = match &peer.password {
            Some(PeerPassword::Secret { name, namespace }) => Some((
                namespace
                    .clone()
                    .unwrap_or_else(|| agent_namespace.to_string()),
                name.clone(),
            )),
            _ => None,
        };
        out.peers.insert(
            peer.name.clone(),
            PeerPlan {
                config,
                routes,
                password_secret,
                bfd,
                interface,
            },
        );
    }
    out
}

/// The annotation writes for BGP-advertised Services: the advertising nodes, comma-separated, written by the first
/// of them, in `announced-by`; for a Service also announced over Layer 2 (whose `announced-by` is its Layer 2
/// owner's), in `bgp-advertised-by`.
pub fn service_actions(
    node: &str,
    state: &ClusterState,
    input: &PlanInput,
    plan: &BgpPlan,
) -> Vec<ServiceAction> {
    let mut actions = Vec::new();
    for g in &input.groups {
        let Some(nodes) = plan.advertisers.get(&g.key.0) else {
            continue;
        };
        if nodes.iter().next().map(String::as_str) != Some(node) {
            continue;
        }
        let annotation = if g.l2_nodes.is_empty() {
            ANNOUNCED_BY_ANNOTATION
        } else {
            BGP_ADVERTISED_BY_ANNOTATION
        };
        let value = nodes.iter().cloned().collect::<Vec<_>>().join(",");
        for key in g.services.keys() {
            let okey = ObjectKey::new(key.namespace.clone(), key.name.clone());
            let Some(svc) = state.services.get(&okey) else {
                continue;
            };
            let current = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotation));
            if current == Some(&value) {
                continue;
            }
            actions.push(ServiceAction {
                service: okey,
                reference: kube::Resource::object_ref(svc, &()),
                status: None,
                metadata: Some(json!({ "metadata": { "annotations": { annotation: value } } })),
                notes: Vec::new(),
            });
        }
    }
    actions
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// BGP metrics, per peer: IronLB's by BGPPeer name, and MetalLB's (`metallb_bgp_*`) by `address:port` as MetalLB
/// labels them, so its dashboards and its session-down alert keep working.
#[derive(Clone, Default)]
pub struct BgpMetrics {
    established: Family<PeerLabels, Gauge>,
    prefixes: Family<PeerLabels, Gauge>,
    updates: Family<PeerLabels, Counter>,
    flaps: Family<PeerLabels, Counter>,
    metallb_session_up: Family<PeerLabels, Gauge>,
    metallb_updates: Family<PeerLabels, Counter>,
    metallb_announced: Family<PeerLabels, Gauge>,
    metallb_pending: Family<PeerLabels, Gauge>,
    bfd_up: Family<PeerLabels, Gauge>,
    bfd_downs: Family<PeerLabels, Counter>,
}

impl BgpMetrics {
    pub fn register(registry: &mut Registry) -> BgpMetrics {
        let m = BgpMetrics::default();
        registry.register(
            "ironlb_bgp_session_up",
            "1 while the session to the peer is Established",
            m.established.clone(),
        );
        registry.register(
            "ironlb_bgp_prefixes_advertised",
            "Prefixes the peer holds from this node",
            m.prefixes.clone(),
        );
        registry.register(
            "ironlb_bgp_updates_sent",
            "UPDATE messages sent to the peer",
            m.updates.clone(),
        );
        registry.register(
            "ironlb_bgp_session_flaps",
            "Times an Established session went down",
            m.flaps.clone(),
        );
        registry.register(
            "ironlb_bfd_session_up",
            "1 while the BFD session beside the BGP session to the peer is Up",
            m.bfd_up.clone(),
        );
        registry.register(
            "ironlb_bfd_session_downs",
            "Times the BFD session to the peer went Down from Up (each one reset the BGP session)",
            m.bfd_downs.clone(),
        );
        registry.register(
            "metallb_bgp_session_up",
            "BGP session state (1 is up, 0 is down)",
            m.metallb_session_up.clone(),
        );
        // A counter: the encoder adds `_total`, giving MetalLB's `metallb_bgp_updates_total`.
        registry.register(
            "metallb_bgp_updates",
            "Number of BGP UPDATE messages sent",
            m.metallb_updates.clone(),
        );
        registry.register(
            "metallb_bgp_announced_prefixes_total",
            "Number of prefixes currently being advertised on the BGP session",
            m.metallb_announced.clone(),
        );
        registry.register(
            "metallb_bgp_pending_prefixes_total",
            "Number of prefixes that should be advertised on the BGP session",
            m.metallb_pending.clone(),
        );
        m
    }

    /// Drops every series of a session that no longer runs, so a removed peer does not read as down for good.
    fn forget(&self, name: &str, peer: SocketAddr) {
        let ours = PeerLabels {
            peer: name.to_string(),
        };
        for family in [&self.established, &self.prefixes] {
            family.remove(&ours);
        }
        for family in [&self.updates, &self.flaps] {
            family.remove(&ours);
        }
        let theirs = metallb_peer(peer);
        for family in [
            &self.metallb_session_up,
            &self.metallb_announced,
            &self.metallb_pending,
        ] {
            family.remove(&theirs);
        }
        self.metallb_updates.remove(&theirs);
    }
}

/// MetalLB's `peer` label: the address and port as `fmt.Sprintf("%s:%d")` writes them (no brackets for IPv6).
fn metallb_peer(peer: SocketAddr) -> PeerLabels {
    PeerLabels {
        peer: format!("{}:{}", peer.ip(), peer.port()),
    }
}

struct Running {
    config: SessionConfig,
    session: Session,
    /// The session's status as it changes, for [`BgpSpeaker::status_changed`].
    status: tokio::sync::watch::Receiver<SessionStatus>,
    /// Counters already added to the metrics.
    seen_updates: u64,
    seen_flaps: u64,
    /// The routes the session has been told to advertise.
    routes: RouteSet,
}

/// The BFD session beside a BGP session: a Down after Up resets the BGP session at once.
struct BfdRun {
    peer: BfdPeer,
    link: BfdLink,
    status: tokio::sync::watch::Receiver<BfdStatus>,
    /// Downs already acted on.
    seen_downs: u64,
}

/// Why a `passwordSecret` gives no password now.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SecretRead {
    /// The agent has not listed the Secrets of its namespace yet (list or watch refused, or the API unreachable).
    #[error(
        "the Secrets of {0} have not been read yet (is list and watch on secrets granted there?)"
    )]
    NotYetRead(String),
    #[error("IronLB reads passwordSecrets only from its own namespace {0}: copy the Secret there")]
    OtherNamespace(String),
    #[error("the Secret does not exist (MetalLB: secret ref not found)")]
    Missing,
    #[error("the Secret is of type {0:?}, not {BASIC_AUTH:?} (MetalLB: secret type mismatch)")]
    WrongType(String),
    #[error(
        "the Secret has no non-empty `{PASSWORD_KEY}` (MetalLB: password not specified in the secret)"
    )]
    NoPassword,
}

/// The Secret type a `passwordSecret` must have, as in MetalLB.
const BASIC_AUTH: &str = "kubernetes.io/basic-auth";

/// The password `(namespace, name)` holds in the agent's watched Secrets. The watch keeps its last state through an
/// API outage, so this never fails because the API is slow or gone once it has been read.
fn password_in(
    secrets: &crate::k8s::index::ObjectIndex<Secret>,
    agent_namespace: &str,
    (namespace, name): &(String, String),
) -> Result<String, SecretRead> {
    if namespace != agent_namespace {
        return Err(SecretRead::OtherNamespace(agent_namespace.to_string()));
    }
    if !secrets.is_synced() {
        return Err(SecretRead::NotYetRead(agent_namespace.to_string()));
    }
    let secret = secrets
        .get(&crate::k8s::index::ObjectKey::new(namespace, name))
        .ok_or(SecretRead::Missing)?;
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != BASIC_AUTH {
        return Err(SecretRead::WrongType(kind.to_string()));
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(PASSWORD_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(PASSWORD_KEY))
                .cloned()
        })
        .filter(|p| !p.is_empty())
        .ok_or(SecretRead::NoPassword)
}

/// This node's sessions.
pub struct BgpSpeaker {
    node: String,
    namespace: String,
    sessions: BTreeMap<String, Running>,
    warned: BTreeMap<String, Vec<String>>,
    metrics: BgpMetrics,
    advertised: BTreeSet<IpAddr>,
    /// The Services whose VIPs this node advertises, with those VIPs.
    services: BTreeMap<ServiceKey, Vec<IpAddr>>,
    /// The same Services, with the BGPPeers their routes go to.
    service_peers: BTreeMap<ServiceKey, Vec<String>>,
    /// Sessions being stopped (a Cease sent, the connection closing); awaited at shutdown, aborted when dropped.
    stopping: Vec<crate::task::Task<()>>,
    /// Set while this node leaves the routers' paths (see [`leaving_reason`]), or its agent stops for good.
    leaving: Option<Leaving>,
    /// The agent is stopping, and the Node says it is not coming back (see [`BgpSpeaker::stop_for_good`]).
    for_good: Option<&'static str>,
    /// How long routes carry GRACEFUL_SHUTDOWN before they are withdrawn (`--bgp-shutdown-grace`).
    shutdown_grace: Duration,
    /// BFD's shared receiving side per VRF (None: the default one), opened with its first BFD session; `Err` with
    /// when opening last failed, tried again on a pass [`BFD_RETRY`] later (a VRF created after the agent started,
    /// another daemon that let go of the ports).
    bfd: BTreeMap<Option<String>, Result<Bfd, tokio::time::Instant>>,
    /// The BFD sessions, by BGPPeer.
    bfd_runs: BTreeMap<String, BfdRun>,
    /// Router discovery on the interfaces of unnumbered peers, by interface.
    unnumbered: BTreeMap<String, RouterDiscovery>,
}

/// Router discovery on one interface, as the speaker follows it.
struct RouterDiscovery {
    /// Held for its task: dropping it stops the discovery.
    _discovery: Discovery,
    /// Kept from the start, so that a change made while no pass was waiting for it still reads as changed.
    status: tokio::sync::watch::Receiver<DiscoveryStatus>,
    /// The status the last pass used (for a Warning once per cause).
    seen: DiscoveryStatus,
}

/// How long after a failed attempt BFD's sockets are tried again.
const BFD_RETRY: Duration = Duration::from_secs(30);

/// Opens BFD's sockets in `vrf` (None: the default VRF). A failure is an error the first time and a debug line on
/// each retry after it.
fn open_bfd(
    vrf: Option<&str>,
    now: tokio::time::Instant,
    first: bool,
) -> Result<Bfd, tokio::time::Instant> {
    Bfd::start_in(vrf).map_err(|error| {
        let vrf = vrf.unwrap_or("default");
        if first {
            tracing::error!(%error, vrf, "BFD cannot open its sockets (UDP 3784, 4784): BGP runs without BFD \
                until they open; retried every {BFD_RETRY:?}");
        } else {
            tracing::debug!(%error, vrf, "BFD's sockets still cannot be opened");
        }
        now
    })
}

/// A node on its way out of the routers' paths, RFC 8326's procedure: from `since`, every route carries
/// [`GRACEFUL_SHUTDOWN`] (and LOCAL_PREF 0 towards iBGP peers), so routers move traffic to other nodes while this one
/// still serves it; the routes each session held at `since` stay advertised until `since + grace` even if the plan
/// drops them (an exclusion label or an out-of-service taint makes the node ineligible at once), and are withdrawn
/// after.
struct Leaving {
    since: tokio::time::Instant,
    held: BTreeMap<String, RouteSet>,
    /// A pass to withdraw the held routes was asked for and has not run yet.
    release_asked: bool,
}

/// Marks a route for RFC 8326: the GRACEFUL_SHUTDOWN community, and LOCAL_PREF 0 (sent to iBGP peers only, where
/// the RFC asks for it).
fn graceful_shutdown(attrs: &mut crate::bgp::codec::RouteAttrs) {
    attrs.communities.insert(GRACEFUL_SHUTDOWN);
    attrs.local_pref = Some(0);
}

/// RFC 8326's GRACEFUL_SHUTDOWN well-known community, 65535:0.
pub const GRACEFUL_SHUTDOWN: CommunityValue = CommunityValue::Standard {
    asn: 65535,
    value: 0,
};

/// Why this node is on its way out of the routers' paths, as its Node shows it: being deleted, labelled
/// `node.kubernetes.io/exclude-from-external-load-balancers`, tainted `node.kubernetes.io/out-of-service`, or cordoned
/// (a drain starts with one). None for a node in service, whose agent merely restarts.
pub fn leaving_reason(state: &ClusterState, node: &str) -> Option<&'static str> {
    let n = state.nodes.get(&ObjectKey::new("", node))?;
    let spec = n.spec.as_ref();
    if n.metadata.deletion_timestamp.is_some() {
        Some("the Node is being deleted")
    } else if n
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(crate::plan::input::EXCLUDE_LABEL))
    {
        Some("the Node is labelled node.kubernetes.io/exclude-from-external-load-balancers")
    } else if spec.and_then(|s| s.taints.as_ref()).is_some_and(|t| {
        t.iter()
            .any(|t| t.key == crate::plan::input::OUT_OF_SERVICE_TAINT)
    }) {
        Some("the Node is tainted node.kubernetes.io/out-of-service")
    } else if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        Some("the Node is cordoned")
    } else {
        None
    }
}

impl BgpSpeaker {
    pub fn new(node: &str, namespace: &str, metrics: BgpMetrics) -> BgpSpeaker {
        BgpSpeaker {
            node: node.to_string(),
            namespace: namespace.to_string(),
            sessions: BTreeMap::new(),
            warned: BTreeMap::new(),
            metrics,
            advertised: BTreeSet::new(),
            services: BTreeMap::new(),
            service_peers: BTreeMap::new(),
            stopping: Vec::new(),
            leaving: None,
            for_good: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            bfd: BTreeMap::new(),
            bfd_runs: BTreeMap::new(),
            unnumbered: BTreeMap::new(),
        }
    }

    /// How long routes carry GRACEFUL_SHUTDOWN before a leaving node withdraws them.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The agent is stopping and its Node says why it is not coming back (`reason`, from [`leaving_reason`]): the
    /// next pass marks every route with GRACEFUL_SHUTDOWN, and [`BgpSpeaker::leave`] withdraws them and closes the
    /// sessions with a Cease. A plain restart does not call this, and keeps graceful restart.
    pub fn stop_for_good(&mut self, reason: &'static str) {
        self.for_good = Some(reason);
    }

    /// Whether [`BgpSpeaker::stop_for_good`] was called.
    pub fn stopping_for_good(&self) -> bool {
        self.for_good.is_some()
    }

    /// When routes held for a leaving node are due for withdrawal: a pass must run then.
    pub fn release_at(&self) -> Option<tokio::time::Instant> {
        let l = self.leaving.as_ref()?;
        (!l.held.is_empty() && !l.release_asked).then_some(l.since + self.shutdown_grace)
    }

    /// The main loop asked for the pass [`BgpSpeaker::release_at`] was waiting for.
    pub fn release_asked(&mut self) {
        if let Some(l) = &mut self.leaving {
            l.release_asked = true;
        }
    }

    /// RFC 8326 for a sessions' routes this node is leaving: GRACEFUL_SHUTDOWN on every route from the moment it
    /// starts leaving, the routes it had then kept until the grace is over.
    fn mark_leaving(&mut self, state: &ClusterState, plan: &mut BgpPlan) {
        let now = tokio::time::Instant::now();
        let reason = self.for_good.or_else(|| leaving_reason(state, &self.node));
        match (reason, &self.leaving) {
            (Some(why), None) => {
                tracing::info!(
                    node = %self.node,
                    why,
                    "leaving: every route carries GRACEFUL_SHUTDOWN (RFC 8326); what would be withdrawn stays for {:?}",
                    self.shutdown_grace
                );
                self.leaving = Some(Leaving {
                    since: now,
                    held: self
                        .sessions
                        .iter()
                        .map(|(name, r)| (name.clone(), r.routes.clone()))
                        .collect(),
                    release_asked: false,
                });
            }
            (None, Some(_)) => {
                tracing::info!(node = %self.node, "no longer leaving: routes without GRACEFUL_SHUTDOWN again");
                self.leaving = None;
            }
            _ => {}
        }
        let Some(leaving) = &mut self.leaving else {
            return;
        };
        if now >= leaving.since + self.shutdown_grace {
            leaving.held.clear();
        }
        leaving.release_asked = false;
        for (name, p) in plan.peers.iter_mut() {
            if let Some(held) = leaving.held.get(name) {
                for (prefix, attrs) in held {
                    p.routes.entry(*prefix).or_insert_with(|| attrs.clone());
                }
            }
            p.routes.values_mut().for_each(graceful_shutdown);
        }
    }

    /// One pass: recomputes the plan, starts, restarts and stops sessions, hands each its routes. Returns the
    /// Warning notes not reported before and the `announced-by` writes. Never waits: a stopping session closes in a
    /// task of its own.
    pub fn sync(
        &mut self,
        state: &ClusterState,
        validated: &Validated,
        lb_class: Option<&str>,
    ) -> (Vec<Note>, Vec<ServiceAction>) {
        let input = PlanInput::from_cluster(state, &validated.config, lb_class);
        let mut plan = plan(
            &self.node,
            state,
            &validated.config,
            &input,
            &self.namespace,
        );
        let mut notes = Vec::new();
        for (peer, warnings) in &plan.warnings {
            if self.warned.get(peer) != Some(warnings) {
                for w in warnings {
                    tracing::warn!(peer = %peer, node = %self.node, "BGPPeer {peer}: {w}");
                    notes.push(Note::warning(
                        "BGPPeerUnsupportedField",
                        format!("BGPPeer {peer}: {w}"),
                    ));
                }
            }
        }
        self.warned = plan.warnings.clone();
        for (name, p) in plan.peers.iter_mut() {
            if let Some(key) = &p.password_secret {
                match password_in(&state.secrets, &self.namespace, key) {
                    Ok(pw) => p.config.password = Some(pw),
                    Err(e) => {
                        let (ns, secret) = key;
                        let msg = format!("BGPPeer {name}: passwordSecret {ns}/{secret}: {e}");
                        if self.warned.entry(name.clone()).or_default().last() != Some(&msg) {
                            tracing::warn!(peer = %name, "{msg}; the session waits for it");
                            self.warned
                                .entry(name.clone())
                                .or_default()
                                .push(msg.clone());
                            notes.push(Note::warning("BGPPeerPasswordMissing", msg));
                        }
                    }
                }
            }
        }
        plan.peers
            .retain(|_, p| p.password_secret.is_none() || p.config.password.is_some());
        notes.extend(self.resolve_unnumbered(&mut plan));
        self.mark_leaving(state, &mut plan);

        // BFD sessions that went Down since the last look: their BGP sessions are reset now, not at the hold time.
        let mut bfd_down = BTreeSet::new();
        for (name, run) in self.bfd_runs.iter_mut() {
            let downs = run.status.borrow_and_update().downs;
            if downs > run.seen_downs {
                self.metrics
                    .bfd_downs
                    .get_or_create(&PeerLabels { peer: name.clone() })
                    .inc_by(downs - run.seen_downs);
                run.seen_downs = downs;
                tracing::warn!(peer = %name, "BFD session Down: resetting the BGP session");
                bfd_down.insert(name.clone());
            }
        }
        // Stop sessions no longer wanted, whose parameters changed, or whose BFD went Down.
        let stale: Vec<String> = self
            .sessions
            .iter()
            .filter(|(name, r)| {
                plan.peers.get(*name).is_none_or(|p| p.config != r.config)
                    || bfd_down.contains(*name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(r) = self.sessions.remove(&name) {
                tracing::info!(peer = %name, "stopping BGP session");
                let same = plan.peers.get(&name).is_some_and(|p| p.config == r.config);
                if same && bfd_down.contains(&name) {
                    // Reset for BFD, restarted below as it was: the series go on, and the reset is a flap.
                    if r.status.borrow().state == State::Established {
                        self.metrics
                            .flaps
                            .get_or_create(&PeerLabels { peer: name.clone() })
                            .inc();
                    }
                } else {
                    // A restarted session (changed parameters) sets them again below.
                    self.metrics.forget(&name, r.config.peer);
                }
                self.stopping.push(crate::task::Task::spawn(
                    "BGP session stop",
                    r.session.stop(false),
                ));
            }
        }
        self.stopping.retain(|t| !t.is_finished());
        let actions = service_actions(&self.node, state, &input, &plan);
        let prefixes: BTreeSet<IpNet> = plan
            .peers
            .values()
            .flat_map(|p| p.routes.keys().copied())
            .collect();
        let wanted_bfd: BTreeMap<String, BfdPeer> = plan
            .peers
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), p.bfd.clone()?)))
            .collect();
        self.sync_bfd(wanted_bfd);
        for (name, p) in plan.peers {
            match self.sessions.get_mut(&name) {
                Some(r) => {
                    r.routes = p.routes.clone();
                    r.session.set_routes(p.routes);
                }
                None => {
                    tracing::info!(peer = %name, address = %p.config.peer, "starting BGP session");
                    let routes = p.routes.clone();
                    let session = Session::spawn(p.config.clone(), p.routes);
                    self.sessions.insert(
                        name,
                        Running {
                            config: p.config,
                            status: session.watch_status(),
                            session,
                            seen_updates: 0,
                            seen_flaps: 0,
                            routes,
                        },
                    );
                }
            }
        }
        // The VIPs themselves for the node annotation, not the aggregates that may carry them.
        let advertised = |ip: &IpAddr| prefixes.iter().any(|p| p.contains(ip));
        let mut services: BTreeMap<ServiceKey, Vec<IpAddr>> = BTreeMap::new();
        let mut service_peers: BTreeMap<ServiceKey, Vec<String>> = BTreeMap::new();
        for group in input
            .groups
            .iter()
            .filter(|g| g.bgp_nodes.contains(&self.node))
        {
            for (service, ips) in &group.services {
                let ips: Vec<IpAddr> = ips.iter().copied().filter(advertised).collect();
                if !ips.is_empty() {
                    // The peers a route of one of its VIPs goes to (a host route or an aggregate holding it).
                    let peers = self
                        .sessions
                        .iter()
                        .filter(|(_, r)| {
                            r.routes
                                .keys()
                                .any(|prefix| ips.iter().any(|ip| prefix.contains(ip)))
                        })
                        .map(|(name, _)| name.clone())
                        .collect();
                    service_peers.insert(service.clone(), peers);
                    services.insert(service.clone(), ips);
                }
            }
        }
        self.advertised = input
            .groups
            .iter()
            .filter(|g| g.bgp_nodes.contains(&self.node))
            .flat_map(|g| g.ips.iter().copied())
            .filter(advertised)
            .collect();
        self.services = services;
        self.service_peers = service_peers;
        self.record();
        (notes, actions)
    }

    /// Unnumbered peers: runs router discovery on their interfaces (and on no other), gives each peer the router
    /// heard on its interface, and leaves out of the plan those whose router has not been heard yet. Returns a
    /// Warning for an interface that cannot be used, once per cause.
    fn resolve_unnumbered(&mut self, plan: &mut BgpPlan) -> Vec<Note> {
        let wanted: BTreeSet<String> = plan
            .peers
            .values()
            .filter_map(|p| p.interface.clone())
            .collect();
        self.unnumbered.retain(|i, _| wanted.contains(i));
        for i in wanted {
            self.unnumbered.entry(i.clone()).or_insert_with(|| {
                tracing::info!(interface = %i, "unnumbered BGP: looking for the router on the interface");
                let discovery = Discovery::start(&i);
                RouterDiscovery {
                    status: discovery.watch(),
                    _discovery: discovery,
                    seen: DiscoveryStatus::default(),
                }
            });
        }
        let mut notes = Vec::new();
        let mut waiting = Vec::new();
        for (name, p) in plan.peers.iter_mut() {
            let Some(interface) = &p.interface else {
                continue;
            };
            let Some(d) = self.unnumbered.get_mut(interface) else {
                continue;
            };
            let status = d.status.borrow_and_update().clone();
            if let Some(error) = &status.error
                && d.seen.error.as_ref() != Some(error)
            {
                let msg = format!("BGPPeer {name}: spec.interface {interface:?}: {error}");
                notes.push(Note::warning("BGPPeerInterfaceUnusable", msg));
            }
            d.seen = status.clone();
            match status.peer {
                Some(router) => {
                    p.config.peer = SocketAddr::V6(router.socket_addr(p.config.peer.port()));
                    if let Some(bfd) = &mut p.bfd {
                        bfd.peer = IpAddr::V6(router.address);
                    }
                }
                None => waiting.push(name.clone()),
            }
        }
        for name in waiting {
            tracing::debug!(peer = %name, "unnumbered BGP: no router heard on the interface yet; the session waits");
            plan.peers.remove(&name);
        }
        notes
    }

    /// Whether router discovery on an unnumbered peer's interface learned something the last pass did not use: a
    /// pass is due to start or move the session.
    pub fn discovery_pending(&self) -> bool {
        self.unnumbered
            .values()
            .any(|d| d.status.has_changed().unwrap_or(false))
    }

    /// Starts, replaces and stops the BFD sessions to match `wanted` (by BGPPeer).
    fn sync_bfd(&mut self, wanted: BTreeMap<String, BfdPeer>) {
        self.bfd_runs
            .retain(|name, run| wanted.get(name) == Some(&run.peer));
        for (name, peer) in wanted {
            if self.bfd_runs.contains_key(&name) {
                continue;
            }
            let now = tokio::time::Instant::now();
            let entry = self.bfd.entry(peer.vrf.clone());
            let bfd = match entry {
                std::collections::btree_map::Entry::Occupied(e) if matches!(e.get(), Err(at) if now.duration_since(*at) < BFD_RETRY) =>
                {
                    continue;
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if e.get().is_err() {
                        *e.get_mut() = open_bfd(peer.vrf.as_deref(), now, false);
                    }
                    e.into_mut()
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(open_bfd(peer.vrf.as_deref(), now, true))
                }
            };
            let Ok(bfd) = bfd else { continue };
            match bfd.session(peer.clone()) {
                Ok(link) => {
                    tracing::info!(peer = %name, address = %peer.peer, "starting BFD session");
                    let status = link.status();
                    self.bfd_runs.insert(
                        name,
                        BfdRun {
                            peer,
                            link,
                            status,
                            seen_downs: 0,
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(peer = %name, %error, "BFD session not started; BGP runs without it");
                }
            }
        }
    }

    /// Resolves when a session's status changed since [`BgpSpeaker::record`] last read it, or a BFD session's since
    /// the last pass; never without sessions. Cancel-safe, for a `select!` arm.
    pub async fn status_changed(&mut self) {
        let bgp = self.sessions.values_mut().map(|r| &mut r.status);
        let mut changes: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> =
            bgp.map(|status| {
                Box::pin(async move {
                    // A session whose task ended publishes nothing more; it is replaced or stopped by a pass.
                    if status.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
            })
            .collect();
        changes.extend(self.unnumbered.values_mut().map(|d| {
            let status = &mut d.status;
            Box::pin(async move {
                if status.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
        }));
        changes.extend(self.bfd_runs.values_mut().map(|run| {
            let status = &mut run.status;
            Box::pin(async move {
                if status.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
        }));
        if changes.is_empty() {
            std::future::pending::<()>().await;
        }
        futures::future::select_all(changes).await;
    }

    /// Updates the per-peer metrics from the sessions' status.
    pub fn record(&mut self) {
        for (name, r) in self.sessions.iter_mut() {
            let s: SessionStatus = r.status.borrow_and_update().clone();
            let labels = PeerLabels { peer: name.clone() };
            let theirs = metallb_peer(r.config.peer);
            let up = i64::from(s.state == State::Established);
            let advertised = i64::try_from(s.advertised).unwrap_or(i64::MAX);
            let new_updates = s.updates_sent.saturating_sub(r.seen_updates);
            let m = &self.metrics;
            m.established.get_or_create(&labels).set(up);
            m.metallb_session_up.get_or_create(&theirs).set(up);
            m.prefixes.get_or_create(&labels).set(advertised);
            m.metallb_announced.get_or_create(&theirs).set(advertised);
            m.metallb_pending
                .get_or_create(&theirs)
                .set(i64::try_from(r.routes.len()).unwrap_or(i64::MAX));
            m.updates.get_or_create(&labels).inc_by(new_updates);
            m.metallb_updates.get_or_create(&theirs).inc_by(new_updates);
            m.flaps
                .get_or_create(&labels)
                .inc_by(s.flaps.saturating_sub(r.seen_flaps));
            r.seen_updates = s.updates_sent;
            r.seen_flaps = s.flaps;
        }
        for (name, run) in &self.bfd_runs {
            let labels = PeerLabels { peer: name.clone() };
            let state = run.link.status().borrow().state;
            self.metrics
                .bfd_up
                .get_or_create(&labels)
                .set(i64::from(state == crate::bfd::codec::BfdState::Up));
        }
    }

    /// Whether a BFD session went Down since the last pass: the next pass resets its BGP session, so one is due.
    pub fn bfd_down_pending(&self) -> bool {
        self.bfd_runs
            .values()
            .any(|run| run.status.borrow().downs > run.seen_downs)
    }

    /// The VIPs this node advertises over BGP (for the node's `ironlb.io/vips`).
    pub fn advertised(&self) -> &BTreeSet<IpAddr> {
        &self.advertised
    }

    /// The Services whose VIPs this node advertises over BGP, with those VIPs.
    pub fn advertised_services(&self) -> &BTreeMap<ServiceKey, Vec<IpAddr>> {
        &self.services
    }

    /// The Services whose VIPs this node advertises over BGP, with the BGPPeers their routes go to.
    pub fn service_peers(&self) -> &BTreeMap<ServiceKey, Vec<String>> {
        &self.service_peers
    }

    /// Each session's peer name and status.
    pub fn statuses(&self) -> Vec<(String, SessionStatus)> {
        self.sessions
            .iter()
            .map(|(n, r)| (n.clone(), r.session.status()))
            .collect()
    }

    /// The node's `ironlb.io/bgp-peers` value for the sessions now, given the value the Node carries.
    pub fn peers_annotation(&self, previous: &str) -> String {
        let states: Vec<(&str, &str)> = self
            .sessions
            .iter()
            .map(|(n, r)| (n.as_str(), r.session.status().state.as_str()))
            .collect();
        crate::plan::visibility::bgp_peers(previous, states)
    }

    /// Leaves for good, the end of RFC 8326's procedure: waits out the rest of the grace in which the routes carried
    /// GRACEFUL_SHUTDOWN, withdraws every route (and waits, at most 1 s, until each peer holds none), then closes
    /// each session with a Cease.
    pub async fn leave(mut self) {
        if self.leaving.is_none() {
            // No pass ran since the agent was told to stop: mark what the sessions hold now.
            for r in self.sessions.values_mut() {
                r.routes.values_mut().for_each(graceful_shutdown);
                r.session.set_routes(r.routes.clone());
            }
            self.leaving = Some(Leaving {
                since: tokio::time::Instant::now(),
                held: BTreeMap::new(),
                release_asked: false,
            });
        }
        if let Some(l) = &self.leaving {
            tokio::time::sleep_until(l.since + self.shutdown_grace).await;
        }
        for r in self.sessions.values() {
            r.session.set_routes(RouteSet::new());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for r in self.sessions.values() {
            let mut status = r.session.watch_status();
            let _ = tokio::time::timeout_at(
                deadline,
                status.wait_for(|s| s.state != State::Established || s.advertised == 0),
            )
            .await;
        }
        tracing::info!(node = %self.node, "routes withdrawn; closing the BGP sessions with a Cease");
        self.shutdown(false).await;
    }

    /// Stops every session. `graceful` (agent restart): no Cease, so peers with graceful restart keep the routes.
    pub async fn shutdown(self, graceful: bool) {
        for (_, r) in self.sessions {
            r.session.stop(graceful).await;
        }
        for stopping in self.stopping {
            stopping
                .join_within(std::time::Duration::from_secs(5))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::state::testing::cluster;
    use crate::plan::input::testing::{Ep, NodeExt, SvcExt, node, slice, svc};

    const BASE: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pool, namespace: metallb-system}\nspec: {addresses: [203.0.113.0/24, '2001:db8:5::/64']}\n---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: router, namespace: metallb-system}\nspec: {myASN: 64497, peerASN: 64496, peerAddress: 192.0.2.1}";

    fn adv(spec: &str) -> String {
        format!(
            "{BASE}\n---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {{name: adv, namespace: metallb-system}}\nspec: {spec}"
        )
    }

    fn config(yaml: &str) -> Config {
        let mut sources = crate::config::Sources::default();
        for doc in yaml.split("\n---\n") {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("test yaml");
            match value["kind"].as_str() {
                Some("IPAddressPool") => sources
                    .pools
                    .push(serde_yaml::from_value(value).expect("pool")),
                Some("BGPAdvertisement") => sources
                    .bgp_advertisements
                    .push(serde_yaml::from_value(value).expect("adv")),
                Some("BGPPeer") => sources
                    .peers
                    .push(serde_yaml::from_value(value).expect("peer")),
                Some("L2Advertisement") => sources
                    .l2_advertisements
                    .push(serde_yaml::from_value(value).expect("l2 adv")),
                Some("BFDProfile") => sources
                    .bfd_profiles
                    .push(serde_yaml::from_value(value).expect("bfd profile")),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        let validated = crate::config::validate(&sources);
        assert!(validated.errors.is_empty(), "{:?}", validated.errors);
        validated.config
    }

    fn plan_for(this: &str, yaml: &str, local: bool, endpoints: &[Ep]) -> BgpPlan {
        setup(this, yaml, local, endpoints).2
    }

    /// The cluster (one Service at 203.0.113.5, nodes n1 and n2), its plan input and `this` node's BGP plan.
    fn setup(
        this: &str,
        yaml: &str,
        local: bool,
        endpoints: &[Ep],
    ) -> (ClusterState, PlanInput, BgpPlan) {
        let cfg = config(yaml);
        let service = if local {
            svc("svc").local("web")
        } else {
            svc("svc")
        }
        .status(&["203.0.113.5"]);
        let state = cluster(
            vec![service],
            vec![slice("svc", endpoints)],
            vec![
                node("n1")
                    .label("kubernetes.io/hostname", "n1")
                    .subnets("203.0.113.11/24"),
                node("n2")
                    .label("kubernetes.io/hostname", "n2")
                    .subnets("203.0.113.12/24"),
            ],
        );
        let input = PlanInput::from_cluster(&state, &cfg, None);
        let plan = plan(this, &state, &cfg, &input, "ironlb-system");
        (state, input, plan)
    }

    /// The annotation and value `node` writes on the Service, if any.
    fn written(node: &str, yaml: &str) -> Vec<(String, String)> {
        let (state, input, plan) = setup(node, yaml, false, &[Ep::Ready("n1")]);
        service_actions(node, &state, &input, &plan)
            .into_iter()
            .flat_map(|a| {
                let annotations = a.metadata.expect("metadata")["metadata"]["annotations"].clone();
                serde_json::from_value::<BTreeMap<String, String>>(annotations).expect("strings")
            })
            .collect()
    }

    #[test]
    fn advertisers_go_to_announced_by_or_beside_the_layer2_owner() {
        let bgp_only = adv("{}");
        assert_eq!(
            written("n1", &bgp_only),
            [(ANNOUNCED_BY_ANNOTATION.to_string(), "n1,n2".to_string())]
        );
        assert!(
            written("n2", &bgp_only).is_empty(),
            "the first advertiser writes"
        );
        // The same pool also announced over Layer 2: announced-by is the Layer 2 owner's.
        let both = format!(
            "{bgp_only}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: l2, namespace: metallb-system}}\nspec: {{}}"
        );
        assert_eq!(
            written("n1", &both),
            [(
                BGP_ADVERTISED_BY_ANNOTATION.to_string(),
                "n1,n2".to_string()
            )]
        );
    }

    const UNNUMBERED: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: pool, namespace: metallb-system}\nspec: {addresses: [203.0.113.0/24, '2001:db8:5::/64']}\n---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor, namespace: metallb-system}\nspec: {myASN: 64497, peerASN: 64496, interface: ilb-nosuch0}\n---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: adv, namespace: metallb-system}\nspec: {}";

    #[test]
    fn an_interface_peer_is_planned_unnumbered_with_both_families() {
        let plan = plan_for("n1", UNNUMBERED, false, &[Ep::Ready("n1")]);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let p = &plan.peers["tor"];
        assert_eq!(p.interface.as_deref(), Some("ilb-nosuch0"));
        // The address is the router's, learned on the link; only the port is known now.
        assert_eq!(p.config.peer, "[::]:179".parse().unwrap());
        assert!(p.config.fsm.ipv4 && p.config.fsm.ipv6 && p.config.fsm.extended_next_hop);
        assert_eq!(p.config.alt_next_hop, None);
        assert!(p.routes.contains_key(&"203.0.113.5/32".parse().unwrap()));
        // A numbered peer offers no extended next hop.
        let plan = plan_for("n1", &adv("{}"), false, &[]);
        assert!(!plan.peers["router"].config.fsm.extended_next_hop);
        assert_eq!(plan.peers["router"].interface, None);
    }

    #[tokio::test]
    async fn an_unnumbered_peer_waits_for_its_router_and_names_an_unusable_interface() {
        let mut speaker = BgpSpeaker::new("n1", "ironlb-system", BgpMetrics::default());
        let mut plan = plan_for("n1", UNNUMBERED, false, &[]);
        let notes = speaker.resolve_unnumbered(&mut plan);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(plan.peers.is_empty(), "no router heard: the session waits");
        // Discovery finds no such interface, and says so; the speaker sees a pass is due.
        let mut status = speaker.unnumbered["ilb-nosuch0"].status.clone();
        tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| s.error.is_some()),
        )
        .await
        .expect("discovery reports the missing interface")
        .expect("discovery runs");
        assert!(speaker.discovery_pending());
        // The change came while nothing waited for it: the agent loop's wait still sees it at once.
        tokio::time::timeout(Duration::from_secs(1), speaker.status_changed())
            .await
            .expect("a discovery change made before the wait wakes it");
        let mut plan = plan_for("n1", UNNUMBERED, false, &[]);
        let notes = speaker.resolve_unnumbered(&mut plan);
        assert!(plan.peers.is_empty());
        assert_eq!(notes.len(), 1, "{notes:?}");
        let text = format!("{:?}", notes[0]);
        assert!(
            text.contains("BGPPeerInterfaceUnusable")
                && text.contains("BGPPeer tor")
                && text.contains("ilb-nosuch0"),
            "{text}"
        );
        assert!(!speaker.discovery_pending());
        // Once a pass used it, the same status wakes nothing (the agent loop would spin otherwise).
        assert!(
            tokio::time::timeout(Duration::from_millis(300), speaker.status_changed())
                .await
                .is_err(),
            "a status the last pass used still wakes the loop"
        );
        // Said once per cause.
        let mut plan = plan_for("n1", UNNUMBERED, false, &[]);
        assert!(speaker.resolve_unnumbered(&mut plan).is_empty());
        // A plan without the peer stops the discovery.
        let mut plan = plan_for("n1", &adv("{}"), false, &[]);
        speaker.resolve_unnumbered(&mut plan);
        assert!(speaker.unnumbered.is_empty());
        assert!(plan.peers.contains_key("router"));
    }

    #[test]
    fn passwords_come_from_the_watched_secrets_and_outlive_a_failed_relist() {
        use crate::k8s::index::ObjectIndex;
        use kube::runtime::watcher::Event;
        let secret = |name: &str, password: &str| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ironlb-system", "resourceVersion": "1"},
                "type": "kubernetes.io/basic-auth",
                "data": {"password": k8s_openapi::ByteString(password.as_bytes().to_vec())},
            }))
            .unwrap()
        };
        let key = |ns: &str, name: &str| (ns.to_string(), name.to_string());
        let mut secrets = ObjectIndex::<Secret>::default();
        let md5 = key("ironlb-system", "md5");
        assert!(matches!(
            password_in(&secrets, "ironlb-system", &md5),
            Err(SecretRead::NotYetRead(_))
        ));
        secrets.handle(Event::Init);
        secrets.handle(Event::InitApply(secret("md5", "s3cret")));
        secrets.handle(Event::InitApply(secret("empty", "")));
        secrets.handle(Event::InitDone);
        assert_eq!(
            password_in(&secrets, "ironlb-system", &md5).unwrap(),
            "s3cret"
        );
        // A relist that never completes (the API refused it, or went away) leaves the last complete list in place.
        secrets.handle(Event::Init);
        assert_eq!(
            password_in(&secrets, "ironlb-system", &md5).unwrap(),
            "s3cret"
        );
        assert_eq!(
            password_in(&secrets, "ironlb-system", &key("ironlb-system", "empty")),
            Err(SecretRead::NoPassword)
        );
        assert_eq!(
            password_in(&secrets, "ironlb-system", &key("ironlb-system", "nope")),
            Err(SecretRead::Missing)
        );
        // A password in a Secret of another type is refused, as MetalLB refuses it.
        let mut opaque = secret("opaque", "s3cret");
        opaque.type_ = Some("Opaque".into());
        secrets.handle(Event::Apply(opaque));
        let refused = password_in(&secrets, "ironlb-system", &key("ironlb-system", "opaque"));
        assert_eq!(refused, Err(SecretRead::WrongType("Opaque".into())));
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("not \"kubernetes.io/basic-auth\"")
        );
        assert_eq!(
            password_in(&secrets, "ironlb-system", &key("metallb-system", "md5")),
            Err(SecretRead::OtherNamespace("ironlb-system".into()))
        );
        // Deleting the Secret does take the password away: the Secret says there is none.
        secrets.handle(Event::Delete(secret("md5", "s3cret")));
        assert_eq!(
            password_in(&secrets, "ironlb-system", &md5),
            Err(SecretRead::Missing)
        );
    }

    #[test]
    fn host_routes_with_communities_and_local_pref() {
        let p = plan_for(
            "n1",
            &adv("{communities: ['64497:1', 'large:64497:2:3'], localPref: 50}"),
            false,
            &[Ep::Ready("n2")],
        );
        let peer = &p.peers["router"];
        assert_eq!(peer.config.peer, "192.0.2.1:179".parse().unwrap());
        assert_eq!(peer.config.ttl, 1, "single-hop eBGP");
        let attrs = &peer.routes[&"203.0.113.5/32".parse::<IpNet>().unwrap()];
        assert_eq!(attrs.local_pref, Some(50));
        assert_eq!(attrs.communities.len(), 2);
        assert_eq!(
            p.advertisers[&"203.0.113.5".parse::<IpAddr>().unwrap()].len(),
            2
        );
    }

    #[test]
    fn local_service_only_from_nodes_with_endpoints() {
        let yaml = adv("{}");
        let p1 = plan_for("n1", &yaml, true, &[Ep::Ready("n2")]);
        let p2 = plan_for("n2", &yaml, true, &[Ep::Ready("n2")]);
        assert!(
            p1.peers["router"].routes.is_empty(),
            "n1 has no local endpoint"
        );
        assert_eq!(p2.peers["router"].routes.len(), 1);
        // The endpoint moves: the route moves with it.
        let p1 = plan_for("n1", &yaml, true, &[Ep::Ready("n1")]);
        let p2 = plan_for("n2", &yaml, true, &[Ep::Ready("n1")]);
        assert_eq!(p1.peers["router"].routes.len(), 1);
        assert!(p2.peers["router"].routes.is_empty());
    }

    #[test]
    fn aggregation_and_peer_selection() {
        let p = plan_for(
            "n1",
            &adv("{aggregationLength: 24, peers: [router]}"),
            false,
            &[Ep::Ready("n1")],
        );
        assert!(
            p.peers["router"]
                .routes
                .contains_key(&"203.0.113.0/24".parse::<IpNet>().unwrap())
        );
        let p = plan_for("n1", &adv("{peers: [other]}"), false, &[Ep::Ready("n1")]);
        assert!(p.peers["router"].routes.is_empty());
    }

    #[test]
    fn local_asn_and_address_families_follow_metallb() {
        let fsm = |peer_spec: &str| {
            let yaml = adv("{}").replace("peerAddress: 192.0.2.1}", peer_spec);
            plan_for("n1", &yaml, false, &[Ep::Ready("n1")]).peers["router"]
                .config
                .fsm
                .clone()
        };
        let plain = fsm("peerAddress: 192.0.2.1}");
        assert_eq!(plain.local_asn, 64497);
        assert!(
            plain.ipv4 && !plain.ipv6,
            "an IPv4 session carries IPv4 routes only"
        );
        let v6 = fsm("peerAddress: '2001:db8::1'}");
        assert!(
            !v6.ipv4 && v6.ipv6,
            "an IPv6 session carries IPv6 routes only"
        );
        let both = fsm("peerAddress: 192.0.2.1, dualStackAddressFamily: true}");
        assert!(both.ipv4 && both.ipv6);
        let old = fsm("peerAddress: 192.0.2.1, disableMP: true}");
        assert!(old.ipv4 && !old.ipv6, "disableMP asks for the default");
        let local = fsm("peerAddress: 192.0.2.1, localASN: 64999}");
        assert_eq!(local.local_asn, 64999, "localASN replaces myASN");
        assert_eq!(
            local.peer_as,
            crate::bgp::fsm::PeerAs::Fixed(64496),
            "the peer's AS is still peerASN"
        );
    }

    #[test]
    fn a_vrf_peer_gets_its_session_and_bfd_bound_to_its_vrf() {
        let yaml = adv("{}").replace(
            "peerAddress: 192.0.2.1}",
            "peerAddress: 192.0.2.1, vrf: red, ebgpMultiHop: true}",
        );
        let p = plan_for("n1", &yaml, false, &[Ep::Ready("n1")]);
        assert_eq!(p.peers["router"].config.vrf.as_deref(), Some("red"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);

        let with_bfd = format!(
            "{}\n---\napiVersion: metallb.io/v1beta1\nkind: BFDProfile\nmetadata: {{name: fast, namespace: \
             metallb-system}}\nspec: {{}}\n",
            yaml.replace("vrf: red,", "vrf: red, bfdProfile: fast,")
        );
        let p = plan_for("n1", &with_bfd, false, &[Ep::Ready("n1")]);
        assert_eq!(p.peers["router"].config.vrf.as_deref(), Some("red"));
        let bfd = p.peers["router"].bfd.as_ref().expect("BFD in the VRF");
        assert_eq!(bfd.vrf.as_deref(), Some("red"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn node_selectors_of_peer() {
        let yaml = adv("{}").replace(
            "peerAddress: 192.0.2.1}",
            "peerAddress: 192.0.2.1, nodeSelectors: [{matchLabels: {kubernetes.io/hostname: n2}}]}",
        );
        let p = plan_for("n1", &yaml, false, &[Ep::Ready("n1")]);
        assert!(p.peers.is_empty());
    }
}
