//! The agent's data plane: programming IPVS in `direct` mode, and verifying it continuously in both modes.
//!
//! ```text
//!  main loop ──ClusterState──▶ DataPlane::update ──Target (pure wanted state)──▶ worker thread ──genetlink──▶ IPVS
//!                                   │                                             │  └──nft -f──▶ SNAT table
//!                                   └── Events for bad annotations                └──drift──▶ metric, Warning Event
//! ```
//!
//! - `integrated`: kube-proxy programs IPVS; the worker only compares it with what kube-proxy should hold
//!   ([`crate::ipvs::verify::wanted`]) every sync period, when `kube-ipvs0` exists (kube-proxy runs in IPVS mode).
//!   A difference counts as drift once the wanted state has been unchanged for kube-proxy's sync period, so a
//!   change kube-proxy has not applied yet is not reported.
//! - `direct`: the worker owns the virtual services of IronLB's pools ([`crate::ipvs::direct`]). The wanted
//!   state is maintained incrementally ([`direct::DirectIndex`]): a change recomputes only the Services whose
//!   Service object or EndpointSlices changed, and the worker gets only the virtual services that changed
//!   ([`direct::Delta`]), reads back just those and applies the difference at once. Every sync period the whole
//!   table is dumped, compared with the last applied state (any difference is drift: someone changed it behind
//!   the agent's back), and repaired.
//!
//! The netlink calls are blocking, so they run on their own thread; the main loop never waits for the kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::Client;
use kube::api::Api;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::config::Validated;
use crate::ipvs::direct::{self, Delta, DirectIndex, DirectPlan, ServiceRef};
use crate::ipvs::verify::{self, DataPlaneState, Drift};
use crate::ipvs::{IpvsSocket, KUBE_PROXY_LINK, Programmer, ServiceId, ServiceSpec, WantedTable};
use crate::k8s::events::Note;
use crate::k8s::index::Cursor;
use crate::k8s::state::ClusterState;

// The lab (and tests/vm_direct.rs) still import the data-plane mode and IronLB's link from here.
pub use crate::ipvs::{DIRECT_LINK, Mode};

#[derive(clap::Args, Clone, Debug)]
pub struct DataPlaneArgs {
    /// Who programs IPVS for the VIPs: kube-proxy (`integrated`) or IronLB (`direct`).
    #[arg(long, env = "IRONLB_DATAPLANE", value_enum, default_value_t = Mode::Integrated)]
    pub dataplane: Mode,
    /// Seconds between full IPVS verifications (and, in direct mode, repairs).
    #[arg(long, env = "IRONLB_IPVS_SYNC_PERIOD", default_value_t = 10)]
    pub ipvs_sync_period: u64,
    /// Seconds a removed real server that still has connections keeps draining at weight 0 (direct mode).
    #[arg(long, env = "IRONLB_IPVS_DRAIN_GRACE", default_value_t = 30)]
    pub ipvs_drain_grace: u64,
    /// kube-proxy's IPVS scheduler (`ipvs.scheduler`), for verifying the integrated data plane.
    #[arg(long, env = "IRONLB_KUBE_PROXY_SCHEDULER", default_value = "rr")]
    pub kube_proxy_scheduler: String,
    /// Seconds kube-proxy may take to apply a change before a difference counts as drift (integrated mode).
    #[arg(long, env = "IRONLB_KUBE_PROXY_SYNC", default_value_t = 35)]
    pub kube_proxy_sync: u64,
}

impl Default for DataPlaneArgs {
    fn default() -> Self {
        Self {
            dataplane: Mode::Integrated,
            ipvs_sync_period: 10,
            ipvs_drain_grace: 30,
            kube_proxy_scheduler: "rr".into(),
            kube_proxy_sync: 35,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// The data plane's metrics.
#[derive(Clone, Default)]
pub struct DataPlaneMetrics {
    drift: Family<ServiceLabels, Gauge>,
    drift_total: Gauge,
    repairs: Counter,
    changes: Counter,
    errors: Counter,
    kube_proxy_gaps: Gauge,
    available: Gauge,
}

impl DataPlaneMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "ironlb_ipvs_drift",
            "Differences between the wanted and the kernel's IPVS state, per Service (empty service: not a Service's)",
            m.drift.clone(),
        );
        registry.register(
            "ironlb_ipvs_drift_all",
            "Differences between the wanted and the kernel's IPVS state at the last verification",
            m.drift_total.clone(),
        );
        registry.register(
            "ironlb_ipvs_repairs",
            "Verifications in direct mode that found drift and repaired it",
            m.repairs.clone(),
        );
        registry.register(
            "ironlb_ipvs_changes",
            "IPVS changes sent to the kernel",
            m.changes.clone(),
        );
        registry.register(
            "ironlb_ipvs_errors",
            "IPVS or SNAT programming passes that failed",
            m.errors.clone(),
        );
        registry.register(
            "ironlb_kube_proxy_exclude_gaps",
            "Pool ranges outside kube-proxy's ipvs.excludeCIDRs while kube-proxy runs IPVS mode (direct mode)",
            m.kube_proxy_gaps.clone(),
        );
        registry.register(
            "ironlb_ipvs_available",
            "1 while the agent can program and read IPVS; 0 on a kernel without it (direct mode: this node forwards \
             no VIP, see the Node's ironlb.io/cannot-forward)",
            m.available.clone(),
        );
        m
    }
}

/// How often the direct data plane looks for its virtual services gone from the kernel (see [`Worker::run`]).
pub const QUICK_CHECK: Duration = Duration::from_secs(1);

/// What the worker is asked to hold (direct) or check (integrated).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target {
    pub table: WantedTable,
    pub owners: BTreeMap<ServiceId, ServiceRef>,
    pub snat: BTreeSet<ServiceId>,
    /// The sources each virtual service accepts (`loadBalancerSourceRanges`); absent: any.
    pub firewall: BTreeMap<ServiceId, Vec<ipnet::IpNet>>,
    /// The addresses whose services are in scope: IronLB's pools' VIPs (direct) or the wanted VIPs (integrated).
    pub vips: BTreeSet<IpAddr>,
}

impl Target {
    /// The direct-mode target of a whole plan.
    pub fn of_plan(plan: DirectPlan) -> Self {
        let vips = plan.plane.vips();
        Self {
            table: plan.plane.ipvs,
            owners: plan.owners,
            snat: plan.snat,
            firewall: plan.firewall,
            vips,
        }
    }

    /// Applies a direct-mode delta in place. Returns each virtual service it changed with the spec it had before
    /// (None: it did not exist), and whether the netfilter side (source NAT, source ranges) changed.
    pub fn apply(&mut self, delta: Delta) -> (BTreeMap<ServiceId, Option<ServiceSpec>>, bool) {
        let mut before = BTreeMap::new();
        let mut snat_changed = false;
        for (id, vs) in delta.services {
            let old = match vs {
                Some(vs) => {
                    self.owners.insert(id, vs.owner);
                    snat_changed |= if vs.snat {
                        self.snat.insert(id)
                    } else {
                        self.snat.remove(&id)
                    };
                    snat_changed |= if vs.sources.is_empty() {
                        self.firewall.remove(&id).is_some()
                    } else {
                        self.firewall.insert(id, vs.sources.clone()).as_ref() != Some(&vs.sources)
                    };
                    self.table.insert(id, (vs.spec, vs.dests))
                }
                None => {
                    self.owners.remove(&id);
                    snat_changed |= self.snat.remove(&id);
                    snat_changed |= self.firewall.remove(&id).is_some();
                    self.table.remove(&id)
                }
            };
            before.insert(id, old.map(|(spec, _)| spec));
        }
        // In direct mode every virtual service's address is one of the bound VIPs, so the bindings are the VIPs.
        if let Some(bindings) = delta.bindings {
            self.vips = bindings;
        }
        (before, snat_changed)
    }
}

/// A message to the worker.
#[derive(Debug)]
pub enum Work {
    /// A whole new target (integrated mode, or a caller without an index).
    Full(Arc<Target>),
    /// What changed in the direct-mode target.
    Delta(Delta),
}

/// Drift found for one Service by a verification, as one line per difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftReport {
    pub service: Option<ServiceRef>,
    pub lines: Vec<String>,
}

/// The wanted state in `mode` for `node`: pure.
pub fn target(
    mode: Mode,
    state: &ClusterState,
    validated: &Validated,
    node: &str,
    kube_proxy_scheduler: &str,
) -> (Target, Vec<direct::Problem>) {
    match mode {
        Mode::Direct => {
            let pools: Vec<&crate::config::Pool> = validated.config.pools.values().collect();
            let owned = |ip: &IpAddr| pools.iter().any(|p| p.contains(ip));
            let mut plan = direct::wanted(
                state.services.values(),
                state.endpoint_slices.values(),
                node,
                &owned,
            );
            let problems = std::mem::take(&mut plan.problems);
            (Target::of_plan(plan), problems)
        }
        Mode::Integrated => {
            let services: Vec<_> = state.services.values().cloned().collect();
            let slices: Vec<_> = state.endpoint_slices.values().cloned().collect();
            let plane = verify::wanted(&services, &slices, node, kube_proxy_scheduler);
            let owners = owners_of(&plane, &services);
            let vips = plane.vips();
            (
                Target {
                    table: plane.ipvs,
                    owners,
                    snat: BTreeSet::new(),
                    firewall: BTreeMap::new(),
                    vips,
                },
                Vec::new(),
            )
        }
    }
}

/// The Service of each virtual service kube-proxy would create: the one whose ingress holds the VIP and which has
/// the port. The Services are indexed by ingress IP first, so each one's status is read once.
fn owners_of(
    plane: &DataPlaneState,
    services: &[k8s_openapi::api::core::v1::Service],
) -> BTreeMap<ServiceId, ServiceRef> {
    let mut by_ip: HashMap<IpAddr, Vec<&k8s_openapi::api::core::v1::Service>> = HashMap::new();
    for svc in services {
        for ip in crate::k8s::status::ingress_ips(svc) {
            by_ip.entry(ip).or_default().push(svc);
        }
    }
    let mut out = BTreeMap::new();
    for id in plane.ipvs.keys() {
        let ServiceId::Addr { addr, port, .. } = id else {
            continue;
        };
        let has_port = |s: &&k8s_openapi::api::core::v1::Service| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.ports.as_ref())
                .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(*port)))
        };
        if let Some(svc) = by_ip
            .get(addr)
            .and_then(|svcs| svcs.iter().copied().find(has_port))
        {
            out.insert(*id, ServiceRef::of(svc));
        }
    }
    out
}

/// The agent's handle on the data plane.
pub struct DataPlane {
    args: DataPlaneArgs,
    node: String,
    tx: Option<std_mpsc::Sender<Work>>,
    /// The last target sent (integrated mode).
    last: Option<Arc<Target>>,
    /// The wanted state, maintained incrementally (direct mode).
    index: DirectIndex,
    /// Where this consumer stands in the Service and EndpointSlice journals.
    seen: (Cursor, Cursor),
    /// Whether a delta went to the worker yet (direct mode).
    sent: bool,
    notes: mpsc::UnboundedSender<(Note, ObjectReference)>,
    /// Problems already reported, so an Event is sent once per problem.
    reported: BTreeSet<(ServiceRef, &'static str, String)>,
    /// Pool ranges last checked against kube-proxy's configuration.
    checked_ranges: Option<Vec<crate::config::IpRange>>,
    client: Client,
    metrics: DataPlaneMetrics,
    /// See [`DataPlane::cannot_forward`].
    cannot_forward: Option<String>,
}

impl DataPlane {
    /// Starts the worker thread and the Event publisher. In direct mode, creates `vip_link` when it is missing.
    pub async fn start(
        args: DataPlaneArgs,
        node: &str,
        vip_link: &str,
        client: &Client,
        registry: &mut Registry,
    ) -> Self {
        let metrics = DataPlaneMetrics::register(registry);
        let (notes, mut notes_rx) = mpsc::unbounded_channel::<(Note, ObjectReference)>();
        {
            let client = client.clone();
            let node = node.to_string();
            tokio::spawn(async move {
                while let Some((note, reference)) = notes_rx.recv().await {
                    if let Err(error) =
                        crate::k8s::events::publish(&client, &note, &reference, &node).await
                    {
                        tracing::warn!(%error, reason = note.reason, "publishing an Event failed");
                    }
                }
            });
        }
        // In direct mode, the VIPs an earlier run left on the link (only on IronLB's own link: another one may hold
        // addresses that are not IronLB's).
        let leftover = match args.dataplane {
            Mode::Direct if vip_link == DIRECT_LINK => prepare_link(vip_link).await,
            Mode::Direct => {
                prepare_link(vip_link).await;
                BTreeSet::new()
            }
            Mode::Integrated => BTreeSet::new(),
        };
        let mut cannot_forward = None;
        let tx = match IpvsSocket::connect() {
            Ok(socket) => {
                metrics.available.set(1);
                let (tx, rx) = std_mpsc::channel();
                let mut worker = Worker::new(&args, socket, notes.clone(), metrics.clone());
                worker.widen_scope(leftover);
                std::thread::Builder::new()
                    .name("ironlb-ipvs".into())
                    .spawn(move || worker.run(rx))
                    .ok()
                    .map(|_| tx)
            }
            Err(error) => {
                metrics.available.set(0);
                if args.dataplane == Mode::Direct {
                    let why = format!(
                        "the direct data plane needs IPVS and this kernel has none ({error}); load the ip_vs module \
                         and restart the agent"
                    );
                    tracing::error!(
                        "{why}. Other nodes take this node's VIPs; while no node can forward, VIPs are reported \
                         without ipMode: Proxy so that kube-proxy forwards them"
                    );
                    let _ = notes.send((
                        Note::warning(
                            "CannotForward",
                            format!(
                                "{why}. No VIP is given to this node while another can forward; while none can, \
                                 VIPs are reported without ipMode: Proxy so that kube-proxy forwards them"
                            ),
                        ),
                        node_reference(node),
                    ));
                    cannot_forward = Some(why);
                } else {
                    tracing::info!(%error, "IPVS is not available; data-plane verification is off");
                }
                None
            }
        };
        Self {
            args,
            node: node.to_string(),
            tx,
            last: None,
            index: DirectIndex::new(),
            seen: (Cursor::default(), Cursor::default()),
            sent: false,
            notes,
            reported: BTreeSet::new(),
            checked_ranges: None,
            client: client.clone(),
            metrics,
            cannot_forward,
        }
    }

    /// Why this node forwards no VIP (the direct data plane on a kernel without IPVS), for its Node to show.
    pub fn cannot_forward(&self) -> Option<&str> {
        self.cannot_forward.as_deref()
    }

    /// Whether a worker is programming or verifying IPVS.
    pub fn active(&self) -> bool {
        self.tx.is_some()
    }

    /// Brings the wanted state up to date and hands what changed to the worker. In direct mode only the Services
    /// whose objects the watches changed (as the state's indexes noted them) are recomputed: the cost follows the
    /// change, not the size of the cluster.
    pub fn update(&mut self, state: &mut ClusterState, validated: &Validated) {
        // What the watches changed since the last update; integrated mode recomputes its target whole.
        let changed_services = state.services.changes_since(&mut self.seen.0);
        let changed_slices = state.endpoint_slices.changes_since(&mut self.seen.1);
        let (work, problems) = match self.args.dataplane {
            Mode::Direct => {
                let ranges = pool_ranges(validated);
                let (delta, problems) = self.index.update_changed(
                    &state.services,
                    &state.endpoint_slices,
                    &changed_services,
                    &changed_slices,
                    &self.node,
                    &ranges,
                );
                // The first update goes to the worker even when empty: its first pass is a full one, which
                // removes what an earlier run left behind.
                let first = !std::mem::replace(&mut self.sent, true);
                (
                    (first || !delta.is_empty()).then_some(Work::Delta(delta)),
                    problems,
                )
            }
            Mode::Integrated => {
                let (target, problems) = target(
                    self.args.dataplane,
                    state,
                    validated,
                    &self.node,
                    &self.args.kube_proxy_scheduler,
                );
                if self.last.as_deref() == Some(&target) {
                    (None, problems)
                } else {
                    let target = Arc::new(target);
                    self.last = Some(target.clone());
                    (Some(Work::Full(target)), problems)
                }
            }
        };
        for p in problems {
            let key = (p.service.clone(), p.reason, p.message.clone());
            if self.reported.insert(key) {
                tracing::warn!(service = %p.service, reason = p.reason, "{}", p.message);
                let _ = self.notes.send((
                    Note::warning(p.reason, p.message),
                    service_reference(&p.service),
                ));
            }
        }
        if self.args.dataplane == Mode::Direct {
            self.check_kube_proxy(validated);
        }
        let Some(work) = work else {
            return;
        };
        if let Some(tx) = &self.tx
            && tx.send(work).is_err()
        {
            tracing::error!("the IPVS worker stopped; the data plane is no longer programmed");
            self.tx = None;
        }
    }

    /// Reads kube-proxy's configuration when the pools changed, and warns when its IPVS cleanup would delete
    /// IronLB's virtual services.
    fn check_kube_proxy(&mut self, validated: &Validated) {
        let ranges = pool_ranges(validated);
        if self.checked_ranges.as_ref() == Some(&ranges) {
            return;
        }
        self.checked_ranges = Some(ranges.clone());
        let client = self.client.clone();
        let notes = self.notes.clone();
        let node = self.node.clone();
        let gauge = self.metrics.kube_proxy_gaps.clone();
        tokio::spawn(async move {
            let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
            let conf = match api.get_opt("kube-proxy").await {
                Ok(Some(cm)) => cm.data.and_then(|d| d.get("config.conf").cloned()),
                Ok(None) => None,
                Err(error) => {
                    tracing::info!(%error, "cannot read kube-system/kube-proxy; not checking ipvs.excludeCIDRs");
                    return;
                }
            };
            let Some(conf) = conf else {
                tracing::info!(
                    "no kube-system/kube-proxy config.conf; not checking ipvs.excludeCIDRs"
                );
                return;
            };
            match direct::kube_proxy_gaps(&conf, &ranges) {
                Ok(Some(gaps)) if !gaps.is_empty() => {
                    let list: Vec<String> = gaps.iter().map(ToString::to_string).collect();
                    let message = format!(
                        "kube-proxy runs in IPVS mode and its cleanup deletes IPVS services outside \
                         ipvs.excludeCIDRs: add {} to ipvs.excludeCIDRs in kube-system/kube-proxy, or the direct \
                         data plane's virtual services will be deleted on every kube-proxy sync (and restored \
                         by IronLB at its next verification)",
                        list.join(", ")
                    );
                    tracing::warn!(missing = %list.join(","), "{message}");
                    gauge.set(i64::try_from(gaps.len()).unwrap_or(i64::MAX));
                    let _ = notes.send((
                        Note::warning("KubeProxyExcludeCIDRs", message),
                        node_reference(&node),
                    ));
                }
                Ok(_) => {
                    gauge.set(0);
                }
                Err(why) => tracing::warn!("kube-system/kube-proxy: {why}"),
            }
        });
    }
}

/// Every range of every pool: the addresses whose virtual services IronLB owns in direct mode.
fn pool_ranges(validated: &Validated) -> Vec<crate::config::IpRange> {
    validated
        .config
        .pools
        .values()
        .flat_map(|p| p.ranges.iter().copied())
        .collect()
}

fn service_reference(s: &ServiceRef) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(s.namespace.clone()),
        name: Some(s.name.clone()),
        uid: s.uid.clone(),
        ..Default::default()
    }
}

fn node_reference(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        ..Default::default()
    }
}

/// Creates the direct-mode dummy link when it is missing (and brings it up), and returns the host-prefix
/// addresses already on it. Everything on IronLB's own link was bound by an earlier run, so the worker takes these
/// addresses into its scope: a virtual service left behind for a VIP that is no longer wanted (its pool was deleted
/// while the agent was down) is then removed by the first pass, as the binding is by the announcer.
pub async fn prepare_link(name: &str) -> BTreeSet<IpAddr> {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        tracing::error!(link = name, "cannot open rtnetlink to create the VIP link");
        return BTreeSet::new();
    };
    let conn = tokio::spawn(connection);
    let mut found = BTreeSet::new();
    match crate::netif::bind::ensure_link(&handle, name, crate::netif::bind::LinkKind::Dummy).await
    {
        Ok(_) => {
            tracing::info!(link = name, "VIP link present");
            let link = crate::netif::bind::AddressReconciler::new(handle, name, |_| false);
            match link.actual().await {
                Ok((_, addresses)) => {
                    found = addresses
                        .iter()
                        .filter(|net| {
                            net.prefix_len() == crate::netif::bind::host_prefix(&net.addr())
                        })
                        .map(|net| net.addr())
                        .collect();
                    if !found.is_empty() {
                        tracing::info!(link = name, addresses = ?found, "VIPs bound by an earlier run; their \
                            virtual services are in scope until the first pass settles them");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, link = name, "cannot list the VIP link's addresses")
                }
            }
        }
        Err(error) => tracing::error!(%error, link = name, "cannot create the VIP link"),
    }
    conn.abort();
    found
}

/// Replaces IronLB's nftables table with the source NAT and source ranges of `target`.
fn apply_netfilter(target: &Target) -> Result<(), direct::SnatError> {
    let snat = &target.snat;
    use std::io::Write;
    if !snat.is_empty() {
        // netfilter sees IPVS connections (and so can NAT them) only with IPVS connection tracking.
        std::fs::write("/proc/sys/net/ipv4/vs/conntrack", "1")
            .map_err(direct::SnatError::Conntrack)?;
    }
    let script = direct::netfilter_ruleset(snat, &target.firewall);
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(direct::SnatError::Spawn)?;
    child
        .stdin
        .take()
        .map(|mut i| i.write_all(script.as_bytes()))
        .transpose()
        .map_err(direct::SnatError::Write)?;
    let out = child.wait_with_output().map_err(direct::SnatError::Wait)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(direct::SnatError::Rejected {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The blocking side: owns the IPVS socket.
pub struct Worker {
    mode: Mode,
    programmer: Programmer,
    scope: Arc<std::sync::RwLock<BTreeSet<IpAddr>>>,
    period: Duration,
    settle: Duration,
    notes: mpsc::UnboundedSender<(Note, ObjectReference)>,
    metrics: DataPlaneMetrics,
    /// The drift lines last reported per Service, so an Event goes out only when they change.
    reported: BTreeMap<Option<ServiceRef>, Vec<String>>,
    /// What the worker is asked to hold, kept up to date in place.
    wanted: Target,
    /// Whether any target has arrived yet.
    started: bool,
    /// Direct mode: the virtual services changed since the last pass, with the spec the kernel held for each
    /// after that pass (None: it had none).
    pending: BTreeMap<ServiceId, Option<ServiceSpec>>,
    /// Direct mode: the last pass applied everything without a failure, so the kernel holds `wanted` apart from
    /// `pending`, and the next pass can be incremental.
    in_sync: bool,
    /// Direct mode: the SNAT table must be written again.
    netfilter_dirty: bool,
}

impl Worker {
    pub fn new(
        args: &DataPlaneArgs,
        socket: IpvsSocket,
        notes: mpsc::UnboundedSender<(Note, ObjectReference)>,
        metrics: DataPlaneMetrics,
    ) -> Self {
        let scope = Arc::new(std::sync::RwLock::new(BTreeSet::new()));
        let in_scope = scope.clone();
        let programmer = Programmer::new(
            socket,
            Box::new(move |id| {
                verify::service_addr(id)
                    .is_some_and(|a| in_scope.read().map(|s| s.contains(&a)).unwrap_or(false))
            }),
            Duration::from_secs(args.ipvs_drain_grace),
        );
        Self {
            mode: args.dataplane,
            programmer,
            scope,
            period: Duration::from_secs(args.ipvs_sync_period.max(1)),
            settle: match args.dataplane {
                Mode::Direct => Duration::ZERO,
                Mode::Integrated => Duration::from_secs(args.kube_proxy_sync),
            },
            notes,
            metrics,
            reported: BTreeMap::new(),
            wanted: Target::default(),
            started: false,
            pending: BTreeMap::new(),
            in_sync: false,
            netfilter_dirty: true,
        }
    }

    /// Runs until the sender is dropped: applies each change at once, and verifies every period. In direct mode it
    /// also looks every [`QUICK_CHECK`] for a virtual service gone from the kernel, and then verifies and repairs at
    /// once rather than at the period's end.
    pub fn run(mut self, rx: std_mpsc::Receiver<Work>) {
        let mut changed_at = Instant::now();
        let mut next_full = Instant::now() + self.period;
        let mut next_quick = Instant::now() + QUICK_CHECK;
        loop {
            let now = Instant::now();
            if self.mode == Mode::Direct && now >= next_quick {
                next_quick = now + QUICK_CHECK;
                if self.started && self.emptied_behind_our_back() {
                    self.verify(changed_at);
                    next_full = Instant::now() + self.period;
                }
            }
            let until = match self.mode {
                Mode::Direct => next_full.min(next_quick),
                Mode::Integrated => next_full,
            };
            let wait = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(work) => {
                    // Everything queued goes into one pass.
                    self.accept(work);
                    while let Ok(more) = rx.try_recv() {
                        self.accept(more);
                    }
                    changed_at = Instant::now();
                    if self.mode == Mode::Direct {
                        self.pass();
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) if Instant::now() >= next_full => {
                    if self.started {
                        self.verify(changed_at);
                    }
                    next_full = Instant::now() + self.period;
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Direct mode, after a successful pass: whether a wanted virtual service is missing from the kernel (one dump of
    /// the services, no real servers). A failed read says no: the periodic verification reports it.
    fn emptied_behind_our_back(&mut self) -> bool {
        if !self.in_sync || !self.pending.is_empty() {
            return false;
        }
        let Ok(present) = self.programmer.service_ids() else {
            return false;
        };
        let missing = self
            .wanted
            .table
            .keys()
            .filter(|id| !present.contains(id))
            .count();
        if missing > 0 {
            tracing::warn!(
                missing,
                "virtual services of IronLB vanished from IPVS (kube-proxy's start in nftables or iptables mode \
                 flushes IPVS); repairing now"
            );
        }
        missing > 0
    }

    /// Takes a change into the wanted state and notes which virtual services it touched.
    fn accept(&mut self, work: Work) {
        self.started = true;
        let (before, snat_changed) = match work {
            Work::Full(target) => {
                let old = std::mem::replace(&mut self.wanted, Target::clone(&target));
                let before: BTreeMap<ServiceId, Option<ServiceSpec>> = old
                    .table
                    .keys()
                    .chain(self.wanted.table.keys())
                    .filter(|id| old.table.get(id) != self.wanted.table.get(id))
                    .map(|id| (*id, old.table.get(id).map(|(spec, _)| spec.clone())))
                    .collect();
                self.set_scope(self.wanted.vips.iter().copied());
                self.set_scope(self.wanted.table.keys().filter_map(verify::service_addr));
                (
                    before,
                    old.snat != self.wanted.snat || old.firewall != self.wanted.firewall,
                )
            }
            Work::Delta(delta) => {
                if let Some(b) = &delta.bindings {
                    self.set_scope(b.iter().copied());
                }
                self.set_scope(delta.services.keys().filter_map(verify::service_addr));
                self.wanted.apply(delta)
            }
        };
        if self.mode == Mode::Direct {
            for (id, spec) in before {
                // The first change since the last pass knows what the kernel holds.
                self.pending.entry(id).or_insert(spec);
            }
        }
        self.netfilter_dirty |= snat_changed;
    }

    /// Widens the programmer's scope. In integrated mode the scope is exactly the wanted VIPs; in direct mode it
    /// keeps the VIPs programmed before, so that a VIP that goes away is removed.
    fn set_scope(&self, addrs: impl Iterator<Item = IpAddr>) {
        if let Ok(mut s) = self.scope.write() {
            if self.mode == Mode::Direct {
                s.extend(addrs);
            } else {
                *s = self.wanted.vips.clone();
            }
        }
    }

    /// Direct mode: also owns the virtual services of `addrs` (VIPs an earlier run bound), so that the next full
    /// pass removes them unless they are wanted.
    pub fn widen_scope(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        if self.mode == Mode::Direct {
            self.set_scope(addrs.into_iter());
        }
    }

    /// Direct mode: holds `target` from now on, and programs it (incrementally when the last pass succeeded).
    pub fn program(&mut self, target: &Arc<Target>) {
        self.accept(Work::Full(target.clone()));
        self.pass();
    }

    /// Direct mode: applies a change to the wanted state, and programs it (incrementally when the last pass
    /// succeeded: only the changed virtual services are read back).
    pub fn program_delta(&mut self, delta: Delta) {
        self.accept(Work::Delta(delta));
        self.pass();
    }

    /// What the worker holds as wanted.
    pub fn wanted(&self) -> &Target {
        &self.wanted
    }

    /// Direct mode, on a change: incremental when the last pass succeeded, else a full reconcile.
    fn pass(&mut self) {
        let now = Instant::now();
        let table = &self.wanted.table;
        let report = if self.in_sync {
            self.programmer
                .reconcile_services(table, &self.pending, now)
        } else {
            self.programmer.reconcile(table, now)
        };
        let mut ok = match report {
            Ok(r) => {
                self.metrics.changes.inc_by(r.changes.len() as u64);
                for (change, error) in &r.failed {
                    tracing::warn!(?change, %error, "IPVS refused a change; will reconcile fully");
                }
                r.failed.is_empty()
            }
            Err(error) => {
                tracing::warn!(%error, "programming IPVS failed; will retry");
                false
            }
        };
        if !ok && self.in_sync {
            // The incremental pass met a table that is not what we left: read it all and repair.
            ok = match self.programmer.reconcile(table, now) {
                Ok(r) => {
                    self.metrics.changes.inc_by(r.changes.len() as u64);
                    r.failed.is_empty()
                }
                Err(_) => false,
            };
        }
        self.pending.clear();
        if self.netfilter_dirty {
            match apply_netfilter(&self.wanted) {
                Ok(()) => self.netfilter_dirty = false,
                Err(error) => {
                    tracing::warn!(%error, "applying the SNAT table failed; will retry");
                    ok = false;
                }
            }
        }
        if !ok {
            self.metrics.errors.inc();
        }
        self.in_sync = ok;
    }

    /// Every period: dump everything in scope, report drift, and in direct mode repair it.
    pub fn verify(&mut self, changed_at: Instant) {
        self.set_scope(self.wanted.vips.iter().copied());
        self.set_scope(self.wanted.table.keys().filter_map(verify::service_addr));
        let actual = match self.programmer.actual() {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "reading IPVS failed");
                self.metrics.errors.inc();
                return;
            }
        };
        let mut drift = Vec::new();
        let settled = match self.mode {
            // Drift is a difference from what was applied successfully; before that, it is just work to do.
            Mode::Direct => self.in_sync && self.pending.is_empty(),
            Mode::Integrated => changed_at.elapsed() >= self.settle && link_exists(KUBE_PROXY_LINK),
        };
        if settled {
            let wanted = DataPlaneState {
                ipvs: self.wanted.table.clone(),
                bindings: BTreeSet::new(),
            };
            let draining: BTreeSet<_> = self.programmer.draining().copied().collect();
            let have = verify::restrict(&actual, &BTreeSet::new(), &self.wanted.vips);
            drift = verify::drift(&wanted, &have)
                .into_iter()
                .filter(
                    |d| !matches!(d, Drift::ExtraDest(s, dst) if draining.contains(&(*s, *dst))),
                )
                .collect();
        }
        self.report(&drift);
        if self.mode == Mode::Direct {
            if !drift.is_empty() {
                self.metrics.repairs.inc();
                tracing::warn!(
                    differences = drift.len(),
                    "IPVS drifted from the applied state; repairing"
                );
            }
            // The full pass also finishes drains and retries what failed before.
            self.in_sync = false;
            self.netfilter_dirty = true;
            self.pass();
        }
    }

    fn report(&mut self, drift: &[Drift]) {
        let mut by_service: BTreeMap<Option<ServiceRef>, Vec<String>> = BTreeMap::new();
        for d in drift {
            let id = match d {
                Drift::MissingService(s) | Drift::ExtraService(s) | Drift::MissingDest(s, _) => s,
                Drift::ExtraDest(s, _) => s,
                Drift::WrongScheduler { service, .. }
                | Drift::WrongPersistence { service, .. }
                | Drift::WrongWeight { service, .. }
                | Drift::WrongFwd { service, .. } => service,
                Drift::MissingBinding(_) => continue,
            };
            by_service
                .entry(self.wanted.owners.get(id).cloned())
                .or_default()
                .push(d.describe(""));
        }
        self.metrics.drift.clear();
        self.metrics
            .drift_total
            .set(i64::try_from(drift.len()).unwrap_or(i64::MAX));
        for (svc, lines) in &by_service {
            self.metrics
                .drift
                .get_or_create(&ServiceLabels {
                    service: svc.as_ref().map(ToString::to_string).unwrap_or_default(),
                })
                .set(i64::try_from(lines.len()).unwrap_or(i64::MAX));
            if self.reported.get(svc) == Some(lines) {
                continue;
            }
            tracing::warn!(service = ?svc.as_ref().map(ToString::to_string), drift = ?lines, "IPVS drift");
            if let Some(s) = svc {
                let action = match self.mode {
                    Mode::Direct => "; IronLB repairs it",
                    Mode::Integrated => "; kube-proxy programs it: check its logs",
                };
                let _ = self.notes.send((
                    Note::warning("IPVSDrift", format!("{}{action}", lines.join("; "))),
                    service_reference(s),
                ));
            }
        }
        self.reported = by_service;
    }
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpRange;
    use crate::ipvs::verify::SERVICE_NAME_LABEL;
    use crate::k8s::index::{Cursor, ObjectIndex, ObjectKey};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[derive(Clone, Debug)]
    enum Op {
        /// Service `i` written with variant bits.
        Service(usize, u32),
        DeleteService(usize),
        /// Slice `j`, labelled for Service `k`, with endpoint variant bits.
        Slice(usize, usize, u32),
        /// Slice `j` in the namespace of Service `k`.
        DeleteSlice(usize, usize),
        /// Pool ranges variant.
        Pools(u8),
        /// Hand the current objects to the index (the agent batches several events into one update).
        Update,
        /// The watches list everything again (after a watch restart).
        Relist,
    }

    const NAMES: [(&str, &str); 4] = [("shop", "a"), ("shop", "b"), ("shop", "c"), ("tools", "a")];

    fn service(i: usize, bits: u32, rv: Option<u64>) -> Service {
        let (ns, name) = NAMES[i];
        let pick = |bit: u32| bits & (1 << bit) != 0;
        let mut ingress = Vec::new();
        for (bit, ip) in [
            (0, "192.0.2.1"),
            (1, "192.0.2.2"),
            (2, "2001:db8::1"),
            (3, "203.0.113.1"),
        ] {
            if pick(bit) {
                let mode = if pick(4) && bit == 1 { "VIP" } else { "Proxy" };
                ingress.push(json!({"ip": ip, "ipMode": mode}));
            }
        }
        let mut ports = Vec::new();
        if pick(5) {
            ports.push(json!({"name": "http", "port": 80, "protocol": "TCP"}));
        }
        if pick(6) {
            // The same VIP port again: a conflict within the Service.
            ports.push(json!({"name": "alt", "port": 80, "protocol": "TCP"}));
        }
        if pick(7) {
            ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP"}));
        }
        if pick(8) {
            ports.push(json!({"name": "ping", "port": 9, "protocol": "ICMP"}));
        }
        let mut annotations = serde_json::Map::new();
        if pick(9) {
            annotations.insert(
                direct::SCHEDULER_ANNOTATION.into(),
                json!(if pick(10) { "wlc" } else { "bogus" }),
            );
        }
        if pick(11) {
            annotations.insert(direct::PERSISTENCE_ANNOTATION.into(), json!("300"));
        }
        let mut meta = json!({"name": name, "namespace": ns, "uid": format!("uid-{i}"),
                              "annotations": annotations});
        if let Some(rv) = rv {
            meta["resourceVersion"] = json!(rv.to_string());
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {
                "type": if pick(12) { "ClusterIP" } else { "LoadBalancer" },
                "externalTrafficPolicy": if pick(13) { "Local" } else { "Cluster" },
                "ports": ports,
            },
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap()
    }

    fn slice(j: usize, k: usize, bits: u32, rv: Option<u64>) -> EndpointSlice {
        let (ns, svc) = NAMES[k];
        let pick = |bit: u32| bits & (1 << bit) != 0;
        let v6 = pick(0);
        let endpoints: Vec<Value> = (0..4u32)
            .filter(|e| pick(1 + e))
            .map(|e| {
                let addr = if v6 {
                    format!("2001:db8:1::{}", e + 1)
                } else {
                    format!("198.51.100.{}", e + 1)
                };
                json!({"addresses": [addr], "nodeName": if pick(5 + e) { "n1" } else { "n2" },
                       "conditions": {"ready": !pick(9 + e), "serving": true, "terminating": pick(9 + e)}})
            })
            .collect();
        let mut ports =
            vec![json!({"name": "http", "port": 8080 + (bits >> 13) % 2, "protocol": "TCP"})];
        if pick(13) {
            ports.push(json!({"name": "dns", "port": 5353, "protocol": "UDP"}));
        }
        // Slice names are per namespace: slice j of Service k lives in k's namespace.
        let mut meta = json!({"name": format!("slice-{j}"), "namespace": ns,
                              "labels": {SERVICE_NAME_LABEL: svc}});
        if let Some(rv) = rv {
            meta["resourceVersion"] = json!(rv.to_string());
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "addressType": if v6 { "IPv6" } else { "IPv4" },
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn pools(variant: u8) -> Vec<IpRange> {
        let cidr = |s: &str| IpRange::from_cidr(s.parse().unwrap());
        match variant % 3 {
            0 => vec![cidr("192.0.2.0/24"), cidr("2001:db8::/64")],
            1 => vec![cidr("192.0.2.1/32")],
            _ => vec![cidr("192.0.2.0/24"), cidr("203.0.113.0/24")],
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..NAMES.len(), any::<u32>()).prop_map(|(i, b)| Op::Service(i, b)),
            1 => (0..NAMES.len()).prop_map(Op::DeleteService),
            4 => (0..5usize, 0..NAMES.len(), any::<u32>()).prop_map(|(j, k, b)| Op::Slice(j, k, b)),
            1 => (0..5usize, 0..NAMES.len()).prop_map(|(j, k)| Op::DeleteSlice(j, k)),
            1 => any::<u8>().prop_map(Op::Pools),
            3 => Just(Op::Update),
            1 => Just(Op::Relist),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// After any sequence of Service, EndpointSlice and pool edits, the incrementally maintained plan, and the
        /// worker's target built from the deltas alone, equal a from-scratch `direct::wanted` of the same objects:
        /// whether the index finds the changes itself (`update`) or is told them by the agent's object indexes
        /// (`update_changed`, as the agent does).
        #[test]
        fn incremental_plan_equals_from_scratch(ops in proptest::collection::vec(op(), 1..60),
                                                without_versions in any::<bool>(),
                                                keyed in any::<bool>()) {
            let mut services: ObjectIndex<Service> = ObjectIndex::default();
            let mut slices: ObjectIndex<EndpointSlice> = ObjectIndex::default();
            let mut cursors = (Cursor::default(), Cursor::default());
            let mut update = |index: &mut DirectIndex,
                          services: &mut ObjectIndex<Service>,
                          slices: &mut ObjectIndex<EndpointSlice>,
                          ranges: &[IpRange]| {
                if keyed {
                    let (a, b) = (services.changes_since(&mut cursors.0), slices.changes_since(&mut cursors.1));
                    index.update_changed(services, slices, &a, &b, "n1", ranges)
                } else {
                    index.update(services.values(), slices.values(), "n1", ranges)
                }
            };
            let mut ranges = pools(0);
            let mut rv = 0u64;
            let mut index = DirectIndex::new();
            let mut target = Target::default();
            let mut ops = ops;
            ops.push(Op::Update);
            for op in ops {
                rv += 1;
                // Objects without a resourceVersion (never from the API) must still come out right.
                let version = (!without_versions || !rv.is_multiple_of(3)).then_some(rv);
                match op {
                    Op::Service(i, bits) => {
                        services.apply(service(i, bits, version));
                    }
                    Op::DeleteService(i) => {
                        let (ns, name) = NAMES[i];
                        if let Some(old) = services.get(&ObjectKey::new(ns, name)).cloned() {
                            services.delete(&old);
                        }
                    }
                    Op::Slice(j, k, bits) => {
                        // A slice keeps its namespace: rewriting it in another one is another object.
                        slices.apply(slice(j, k, bits, version));
                    }
                    Op::DeleteSlice(j, k) => {
                        let key = ObjectKey::new(NAMES[k].0, format!("slice-{j}"));
                        if let Some(old) = slices.get(&key).cloned() {
                            slices.delete(&old);
                        }
                    }
                    Op::Pools(v) => ranges = pools(v),
                    Op::Relist => {
                        let listed: Vec<Service> = services.values().cloned().collect();
                        services.reset(listed);
                        let listed: Vec<EndpointSlice> = slices.values().cloned().collect();
                        slices.reset(listed);
                    }
                    Op::Update => {
                        let (delta, problems) = update(&mut index, &mut services, &mut slices, &ranges);
                        let owned = |ip: &IpAddr| ranges.iter().any(|r| r.contains(ip));
                        let scratch = direct::wanted(services.values(), slices.values(), "n1", &owned);
                        for p in &problems {
                            prop_assert!(scratch.problems.contains(p), "reported {p:?} is not a problem");
                        }
                        if let Some(b) = &delta.bindings {
                            prop_assert_ne!(b, &target.vips, "bindings sent unchanged");
                        }
                        target.apply(delta);
                        prop_assert_eq!(&index.plan(), &scratch);
                        prop_assert_eq!(&target, &Target::of_plan(scratch));
                        // A second update with nothing changed is empty, unless some object has no version (and
                        // the index must find the changes itself).
                        let (again, _) = update(&mut index, &mut services, &mut slices, &ranges);
                        if keyed || !without_versions {
                            prop_assert!(again.is_empty(), "{again:?}");
                        }
                        target.apply(again);
                    }
                }
            }
        }
    }

    #[test]
    fn one_changed_slice_yields_only_its_virtual_service() {
        let mut services = BTreeMap::new();
        let mut slices = BTreeMap::new();
        for (i, name) in NAMES.iter().enumerate().take(3) {
            let s = service(i, 0b10_0000 | 1 << i, Some(i as u64 + 1));
            services.insert(*name, s);
            slices.insert(i, slice(i, i, 0b1_1110, Some(10 + i as u64)));
        }
        let ranges = pools(0);
        let mut index = DirectIndex::new();
        let (first, problems) = index.update(services.values(), slices.values(), "n1", &ranges);
        assert!(problems.is_empty());
        assert_eq!(first.services.len(), 3);
        assert!(first.bindings.is_some());
        // Slice 1 (Service shop/b, VIP 192.0.2.2) loses an endpoint.
        slices.insert(1, slice(1, 1, 0b0_1110, Some(20)));
        let (delta, _) = index.update(services.values(), slices.values(), "n1", &ranges);
        let b = ServiceId::tcp("192.0.2.2".parse().unwrap(), 80);
        assert_eq!(delta.services.keys().collect::<Vec<_>>(), [&b]);
        assert_eq!(delta.bindings, None);
        let vs = delta.services[&b].as_ref().unwrap();
        assert_eq!(vs.owner.to_string(), "shop/b");
        assert_eq!(vs.dests.len(), 3);
        // Deleting the Service removes its virtual service and its binding.
        services.remove(&NAMES[1]);
        let (delta, _) = index.update(services.values(), slices.values(), "n1", &ranges);
        assert_eq!(delta.services, BTreeMap::from([(b, None)]));
        assert_eq!(
            delta
                .bindings
                .unwrap()
                .into_iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.1", "2001:db8::1"]
        );
    }
}
