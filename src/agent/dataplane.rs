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
//! - `direct`: the worker owns the virtual services of IronLB's pools ([`crate::ipvs::direct`]). Each change is
//!   applied at once and incrementally (only the changed services are read back); every sync period the whole
//!   table is dumped, compared with the last applied state (any difference is drift: someone changed it behind
//!   the agent's back), and repaired.
//!
//! The netlink calls are blocking, so they run on their own thread; the main loop never waits for the kernel.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::ipvs::direct::{self, DirectPlan, ServiceRef};
use crate::ipvs::verify::{self, DataPlane as Plane, Drift};
use crate::ipvs::{IpvsSocket, Programmer, ServiceId, WantedTable};
use crate::k8s::events::Note;
use crate::k8s::state::ClusterState;

/// IronLB's own dummy device for VIPs in direct mode (kube-proxy prunes `kube-ipvs0` of addresses it did not add).
pub const DIRECT_LINK: &str = "ironlb0";
/// The link kube-proxy creates in IPVS mode.
pub const KUBE_PROXY_LINK: &str = "kube-ipvs0";

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// kube-proxy programs IPVS (ingress ipMode VIP); IronLB binds the VIPs on kube-ipvs0 and verifies.
    #[default]
    Integrated,
    /// IronLB programs IPVS itself (ingress ipMode Proxy) and binds the VIPs on ironlb0.
    Direct,
}

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
        m
    }
}

/// What the worker is asked to hold (direct) or check (integrated).
#[derive(Debug, Default, PartialEq)]
pub struct Target {
    pub table: WantedTable,
    pub owners: BTreeMap<ServiceId, ServiceRef>,
    pub snat: BTreeSet<ServiceId>,
    /// The addresses whose services are in scope: IronLB's pools' VIPs (direct) or the wanted VIPs (integrated).
    pub vips: BTreeSet<IpAddr>,
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
            let DirectPlan {
                plane,
                owners,
                snat,
                problems,
            } = direct::wanted(
                state.services.values(),
                state.endpoint_slices.values(),
                node,
                &owned,
            );
            let vips = plane.vips();
            (
                Target {
                    table: plane.ipvs,
                    owners,
                    snat,
                    vips,
                },
                problems,
            )
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
                    vips,
                },
                Vec::new(),
            )
        }
    }
}

/// The Service of each virtual service kube-proxy would create: the one whose ingress holds the VIP and which has
/// the port.
fn owners_of(
    plane: &Plane,
    services: &[k8s_openapi::api::core::v1::Service],
) -> BTreeMap<ServiceId, ServiceRef> {
    let mut out = BTreeMap::new();
    for id in plane.ipvs.keys() {
        let ServiceId::Addr { addr, port, .. } = id else {
            continue;
        };
        if let Some(svc) = services.iter().find(|s| {
            crate::k8s::status::ingress_ips(s).contains(addr)
                && s.spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(*port)))
        }) {
            out.insert(*id, ServiceRef::of(svc));
        }
    }
    out
}

/// The agent's handle on the data plane.
pub struct DataPlane {
    args: DataPlaneArgs,
    node: String,
    tx: Option<std_mpsc::Sender<Arc<Target>>>,
    last: Option<Arc<Target>>,
    notes: mpsc::UnboundedSender<(Note, ObjectReference)>,
    /// Problems already reported, so an Event is sent once per problem.
    reported: BTreeSet<(ServiceRef, &'static str, String)>,
    /// Pool ranges last checked against kube-proxy's configuration.
    checked_ranges: Option<Vec<crate::config::IpRange>>,
    client: Client,
    metrics: DataPlaneMetrics,
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
        if args.dataplane == Mode::Direct {
            ensure_link(vip_link).await;
        }
        let tx = match IpvsSocket::connect() {
            Ok(socket) => {
                let (tx, rx) = std_mpsc::channel();
                let worker = Worker::new(&args, socket, notes.clone(), metrics.clone());
                std::thread::Builder::new()
                    .name("ironlb-ipvs".into())
                    .spawn(move || worker.run(rx))
                    .ok()
                    .map(|_| tx)
            }
            Err(error) => {
                if args.dataplane == Mode::Direct {
                    tracing::error!(%error, "direct data plane: IPVS is not available; VIPs are announced and \
                        bound but nothing forwards them (load the ip_vs module)");
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
            notes,
            reported: BTreeSet::new(),
            checked_ranges: None,
            client: client.clone(),
            metrics,
        }
    }

    /// Whether a worker is programming or verifying IPVS.
    pub fn active(&self) -> bool {
        self.tx.is_some()
    }

    /// Recomputes the wanted state and hands it to the worker when it changed. Cheap when nothing changed.
    pub fn update(&mut self, state: &ClusterState, validated: &Validated) {
        let (target, problems) = target(
            self.args.dataplane,
            state,
            validated,
            &self.node,
            &self.args.kube_proxy_scheduler,
        );
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
        if self.last.as_deref() == Some(&target) {
            return;
        }
        let target = Arc::new(target);
        self.last = Some(target.clone());
        if let Some(tx) = &self.tx
            && tx.send(target).is_err()
        {
            tracing::error!("the IPVS worker stopped; the data plane is no longer programmed");
            self.tx = None;
        }
    }

    /// Reads kube-proxy's configuration when the pools changed, and warns when its IPVS cleanup would delete
    /// IronLB's virtual services.
    fn check_kube_proxy(&mut self, validated: &Validated) {
        let ranges: Vec<crate::config::IpRange> = validated
            .config
            .pools
            .values()
            .flat_map(|p| p.ranges.iter().copied())
            .collect();
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

/// Creates the direct-mode dummy link when it is missing (and brings it up).
pub async fn ensure_link(name: &str) {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        tracing::error!(link = name, "cannot open rtnetlink to create the VIP link");
        return;
    };
    let conn = tokio::spawn(connection);
    match crate::netif::bind::ensure_link(&handle, name, crate::netif::bind::LinkKind::Dummy).await
    {
        Ok(_) => tracing::info!(link = name, "VIP link present"),
        Err(error) => tracing::error!(%error, link = name, "cannot create the VIP link"),
    }
    conn.abort();
}

/// Applies the SNAT table with `nft -f -`.
fn apply_snat(snat: &BTreeSet<ServiceId>) -> Result<(), String> {
    use std::io::Write;
    if !snat.is_empty() {
        // netfilter sees IPVS connections (and so can NAT them) only with IPVS connection tracking.
        std::fs::write("/proc/sys/net/ipv4/vs/conntrack", "1")
            .map_err(|e| format!("setting net.ipv4.vs.conntrack=1: {e}"))?;
    }
    let script = direct::snat_ruleset(snat);
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    child
        .stdin
        .take()
        .map(|mut i| i.write_all(script.as_bytes()))
        .transpose()
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
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
    /// What the last pass applied without a failure (direct), for incremental passes and drift.
    applied: Option<Arc<Target>>,
    snat_applied: Option<BTreeSet<ServiceId>>,
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
            applied: None,
            snat_applied: None,
        }
    }

    /// Runs until the sender is dropped: applies each new target at once, and verifies every period.
    pub fn run(mut self, rx: std_mpsc::Receiver<Arc<Target>>) {
        let mut current: Option<Arc<Target>> = None;
        let mut changed_at = Instant::now();
        let mut next_full = Instant::now() + self.period;
        loop {
            let wait = next_full.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(mut target) => {
                    while let Ok(newer) = rx.try_recv() {
                        target = newer;
                    }
                    changed_at = Instant::now();
                    current = Some(target.clone());
                    if self.mode == Mode::Direct {
                        self.program(&target);
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(target) = current.clone() {
                        self.verify(&target, changed_at);
                    }
                    next_full = Instant::now() + self.period;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn set_scope(&self, target: &Target) {
        if let Ok(mut s) = self.scope.write() {
            // In direct mode the scope keeps the VIPs programmed before, so that a VIP that goes away is removed.
            if self.mode == Mode::Direct {
                s.extend(target.vips.iter().copied());
                s.extend(
                    target
                        .table
                        .keys()
                        .filter_map(verify::service_addr)
                        .collect::<Vec<_>>(),
                );
            } else {
                *s = target.vips.clone();
            }
        }
    }

    /// Direct mode, on a change: incremental when the last pass succeeded, else a full reconcile.
    pub fn program(&mut self, target: &Arc<Target>) {
        self.set_scope(target);
        let now = Instant::now();
        let report = match &self.applied {
            Some(prev) => self
                .programmer
                .reconcile_changed(&target.table, &prev.table, now),
            None => self.programmer.reconcile(&target.table, now),
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
        if !ok && self.applied.is_some() {
            // The incremental pass met a table that is not what we left: read it all and repair.
            ok = match self.programmer.reconcile(&target.table, now) {
                Ok(r) => {
                    self.metrics.changes.inc_by(r.changes.len() as u64);
                    r.failed.is_empty()
                }
                Err(_) => false,
            };
        }
        if self.snat_applied.as_ref() != Some(&target.snat) {
            match apply_snat(&target.snat) {
                Ok(()) => self.snat_applied = Some(target.snat.clone()),
                Err(error) => {
                    tracing::warn!(%error, "applying the SNAT table failed; will retry");
                    ok = false;
                }
            }
        }
        if !ok {
            self.metrics.errors.inc();
        }
        self.applied = ok.then(|| target.clone());
    }

    /// Every period: dump everything in scope, report drift, and in direct mode repair it.
    pub fn verify(&mut self, target: &Arc<Target>, changed_at: Instant) {
        self.set_scope(target);
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
            Mode::Direct => self
                .applied
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, target)),
            Mode::Integrated => changed_at.elapsed() >= self.settle && link_exists(KUBE_PROXY_LINK),
        };
        if settled {
            let wanted = Plane {
                ipvs: target.table.clone(),
                bindings: BTreeSet::new(),
            };
            let draining: BTreeSet<_> = self.programmer.draining().copied().collect();
            let have = verify::restrict(&actual, &BTreeSet::new(), &target.vips);
            drift = verify::drift(&wanted, &have)
                .into_iter()
                .filter(
                    |d| !matches!(d, Drift::ExtraDest(s, dst) if draining.contains(&(*s, *dst))),
                )
                .collect();
        }
        self.report(target, &drift);
        if self.mode == Mode::Direct {
            if !drift.is_empty() {
                self.metrics.repairs.inc();
                tracing::warn!(
                    differences = drift.len(),
                    "IPVS drifted from the applied state; repairing"
                );
            }
            // The full pass also finishes drains and retries what failed before.
            self.applied = None;
            self.snat_applied = None;
            self.program(target);
        }
    }

    fn report(&mut self, target: &Target, drift: &[Drift]) {
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
                .entry(target.owners.get(id).cloned())
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
