//! `ironlb agent`: the DaemonSet process. This module wires the agent's tasks to its decision core
//! ([`core::Core`]) and carries out what the core decides; each part lives in its own module and is tested there.
//!
//! ```text
//!  tasks (crate::task::Tasks; one ending stops the agent, non-zero)
//!  ├─ watch × 12 (Service, EndpointSlice, Node, Namespace, ConfigMap, Secret, 6 metallb.io kinds) ─mpsc<Change>──┐
//!  ├─ elector (k8s::leader) ────── watch<Option<Instant>>: the end of leadership on this clock ─────┬─────────────┤
//!  ├─ node lease (k8s::node_lease) ─ watch<Option<live nodes>> ─────────────────────────────────────┼─────────────┤
//!  ├─ node link (node_link) ──────── watch<LocalFacts>: links, strict ARP ──────────────────────────┼─────────────┤
//!  │        ▲ watch<BindRequest> (binds on the VIP link)                                          │             │
//!  ├─ allocation writer (writer) ◀── Pass ── leadership-gated Service writes, Events ──┐ (gate) ◀─┘             │
//!  ├─ announcement writer (writer) ◀─ OwnWrites ── Node and owned Service writes ──────┤─ mpsc<Input> results ─┤
//!  ├─ pool status (pool_status) ◀── watch<pool statuses> (allocator only), gated by the elector's deadline      │
//!  ├─ status objects (status_objects) ◀── watch<Wanted>: ServiceL2Status, ServiceBGPStatus, ConfigurationState  │
//!  └─ metrics listener (telemetry) ◀── watch<bool> ready                                │                       │
//!  owned by the announcer: gossip membership ── watch<live, healthy, cut_off, rejoined>┼───────────────────────┤
//!                          ARP/NDP responder ◀── watch<Announcements> ◀─┐              │                       ▼
//!  owned by the BGP speaker: one session task per peer ◀─ routes ───────┤     run_with loop ─── Input ───▶ Core
//!                           ── watch<SessionStatus> (pushed) ──────────┼───────────▶ (computes passes,  ◀Output─ (state,
//!  owned by the data plane: the IPVS worker ◀─ work ────────────────────┘   hands their I/O to tasks)       config,
//!  refresh tick (2 s): startup hold, BGP metrics ─────────────────────────────────▶                         timers)
//! ```
//!
//! The elector publishes, while this agent leads, the instant its leadership ends on this agent's own clock; the
//! allocation writer checks it before every Service write and abandons one still unanswered then (see
//! [`crate::k8s::leader`]). Watches use a client without a request timeout (long polls); every other request times
//! out after [`crate::k8s::client::REQUEST_TIMEOUT`].
//!
//! The core decides when passes run (see its rules); this loop computes them (CPU only) and hands their writes to the
//! writers, their bindings to the node link, their routes to the BGP sessions and their plan to the responder. No
//! arm awaits the API or netlink, so a slow API never delays a failover. The loop and these tasks share one thread;
//! gossip membership and the ARP/NDP responder have threads of their own, so a long pass delays neither a probe nor
//! an answer. A pass waits for the previous one's writes
//! to report (an announcement pass also for as long as the last one took), except an announcement pass after a
//! change of liveness, which runs at once; the announcement writer then runs the newest writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

pub mod announce;
pub mod bgp;
pub mod core;
pub mod dataplane;
pub mod metallb_metrics;
pub mod node_link;
pub mod pool_status;
pub mod status_objects;
pub mod writer;

use self::core::{Core, Input, Output};
use self::writer::{OwnWrites, Writer};
use crate::ipvs::Mode;
use crate::k8s::allocation::{AllocationController, Settings};
use crate::k8s::client::Clients;
use crate::k8s::leader::{Elector, LeaseTiming};
use crate::k8s::state::{Change, ClusterState, ConfigKind};
use crate::k8s::status::IngressMode;
use crate::task::{Tasks, sleep_until};
use std::collections::VecDeque;
use tokio::time::Instant;

/// The name of the legacy MetalLB ConfigMap, read from the config namespace.
pub const LEGACY_CONFIGMAP: &str = "config";
/// The Lease that elects the allocator.
pub const ALLOCATOR_LEASE: &str = "ironlb-allocator";

// The lab (and the vm tests and benches/agent_lab.rs) still import the client constructor from here.
pub use crate::k8s::client::client;
// tests/agent_lab.rs still imports the agent's User-Agent from here.
pub use crate::k8s::client::USER_AGENT;

#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// This node's name, from the downward API.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// A kubeconfig to use instead of the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The agent's own namespace, holding its Lease and Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironlb-system")]
    pub namespace: String,
    /// The agent's Pod, from the downward API: its ServiceL2Status, ServiceBGPStatus and ConfigurationState objects
    /// are owned by it (with `--pod-uid`), so they go with the Pod.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// Where the metallb.io objects and the legacy ConfigMap are read.
    #[arg(
        long,
        env = "IRONLB_CONFIG_NAMESPACE",
        default_value = "metallb-system"
    )]
    pub config_namespace: String,
    /// Handle only Services of this loadBalancerClass. Without it, Services with no class.
    #[arg(long, env = "IRONLB_LB_CLASS")]
    pub lb_class: Option<String>,
    /// The metrics and health listener.
    #[arg(long, env = "IRONLB_METRICS_ADDR", default_value = "0.0.0.0:7472")]
    pub metrics_addr: SocketAddr,
    /// Seconds a leaving node's BGP routes carry the GRACEFUL_SHUTDOWN community (RFC 8326) before it withdraws them:
    /// when its Node is cordoned, tainted out-of-service, excluded from load balancers or deleted, and when its agent
    /// stops on such a Node. Raise the Pod's terminationGracePeriodSeconds with it.
    #[arg(long, env = "IRONLB_BGP_SHUTDOWN_GRACE", default_value_t = 3)]
    pub bgp_shutdown_grace: u64,
    /// How long a dead allocator blocks the others, in seconds.
    #[arg(long, env = "IRONLB_LEASE_DURATION", default_value_t = 5)]
    pub lease_duration: u64,
    #[command(flatten)]
    pub announce: announce::AnnounceArgs,
    #[command(flatten)]
    pub dataplane: dataplane::DataPlaneArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start announcing")]
    Announce(#[from] announce::Error),
    #[error(transparent)]
    Client(#[from] crate::k8s::client::Error),
    #[error("the agent's task `{0}` ended while the agent ran")]
    TaskDied(&'static str),
    #[error("cannot start a thread for one of the agent's tasks")]
    Thread(#[source] std::io::Error),
    #[error("cannot listen on {addr} for metrics")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds the clients and runs until SIGTERM or Ctrl-C.
pub async fn run(args: AgentArgs) -> Result<()> {
    let clients = Clients::new(args.kubeconfig.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: args.metrics_addr,
            source,
        })?;
    run_with(args, clients, listener, shutdown_signal()).await
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The allocator's metrics.
#[derive(Clone, Default)]
pub struct AllocationMetrics {
    // f64, because an IPv6 pool easily holds more addresses than an i64 counts.
    pool_size: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pool_used: Family<PoolLabels, Gauge>,
    pool_free: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    allocations: Counter,
    failures: Family<ReasonLabels, Gauge>,
    leader: Gauge,
    watch_restarts: Family<KindLabels, Counter>,
    api_writes: Counter,
    dropped_writes: Counter,
    invalid_config: Family<KindLabels, Gauge>,
    /// MetalLB's allocator families; only while this agent allocates.
    metallb_allocator: metallb_metrics::AllocatorFamilies,
    /// MetalLB's Kubernetes client families.
    metallb_client: metallb_metrics::ClientFamilies,
}

impl AllocationMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut m = AllocationMetrics::default();
        registry.register(
            "ironlb_pool_addresses",
            "Addresses in each pool",
            m.pool_size.clone(),
        );
        registry.register(
            "ironlb_pool_addresses_used",
            "Addresses of each pool held by Services",
            m.pool_used.clone(),
        );
        registry.register(
            "ironlb_pool_addresses_free",
            "Addresses of each pool still free",
            m.pool_free.clone(),
        );
        registry.register(
            "ironlb_allocations",
            "IPs assigned to Services by this agent",
            m.allocations.clone(),
        );
        registry.register(
            "ironlb_allocation_failures",
            "Services currently without an IP, by reason",
            m.failures.clone(),
        );
        registry.register(
            "ironlb_allocator_leader",
            "1 while this agent is the allocator",
            m.leader.clone(),
        );
        registry.register(
            "ironlb_watch_restarts",
            "Watch streams that failed and restarted",
            m.watch_restarts.clone(),
        );
        registry.register(
            "ironlb_api_writes",
            "Writes sent to the Kubernetes API",
            m.api_writes.clone(),
        );
        registry.register(
            "ironlb_dropped_writes",
            "Writes dropped because this agent was no longer the allocator",
            m.dropped_writes.clone(),
        );
        registry.register(
            "ironlb_config_objects_invalid",
            "Configuration objects left out because they are invalid or cannot be decoded, by kind",
            m.invalid_config.clone(),
        );
        m.metallb_allocator = metallb_metrics::AllocatorFamilies::register(registry);
        m.metallb_client = metallb_metrics::ClientFamilies::register(registry);
        m
    }

    /// Drops the pool usage series, IronLB's and MetalLB's: this agent no longer allocates.
    fn clear_pool_usage(&self) {
        self.pool_size.clear();
        self.pool_used.clear();
        self.pool_free.clear();
        self.failures.clear();
        self.metallb_allocator.clear();
    }
}

/// Validates the configuration the way `ironlb config check` does, and says what it left out on every agent, not
/// only the allocator: a log line for each new error (naming the object, its namespace and the field) and the count
/// per kind as a metric. The allocator also posts each as a Warning Event on the object.
#[derive(Default)]
struct ConfigReport {
    logged: BTreeSet<String>,
}

impl ConfigReport {
    fn validate(
        &mut self,
        state: &ClusterState,
        metrics: &AllocationMetrics,
        namespace: &str,
    ) -> crate::config::Validated {
        let validated = crate::config::validate(&state.config_sources());
        let mut per_kind: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for d in &validated.errors {
            per_kind.entry(&d.kind).or_default().insert(&d.name);
        }
        metrics.invalid_config.clear();
        for (kind, names) in &per_kind {
            metrics
                .invalid_config
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .set(i64::try_from(names.len()).unwrap_or(i64::MAX));
        }
        let now: BTreeSet<String> = validated.errors.iter().map(|d| d.to_string()).collect();
        for d in &validated.errors {
            if !self.logged.contains(&d.to_string()) {
                tracing::warn!(
                    kind = %d.kind, namespace, name = %d.name, field = %d.field, message = %d.message,
                    "configuration object left out: {d}"
                );
            }
        }
        self.logged = now;
        metrics
            .metallb_client
            .config_read(per_kind.values().map(BTreeSet::len).sum());
        validated
    }
}

/// Runs the agent with its dependencies handed in, until `shutdown` resolves.
pub async fn run_with(
    mut args: AgentArgs,
    clients: Clients,
    metrics_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let client = clients.request.clone();
    let mut registry = Registry::default();
    let metrics = AllocationMetrics::register(&mut registry);
    let direct = args.dataplane.dataplane == Mode::Direct;
    args.announce.direct = direct;
    args.announce.vip_link = args
        .dataplane
        .dataplane
        .vip_link(&args.announce.vip_link)
        .to_string();
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (mut announcer, mut liveness) = announce::Announcer::start(
        &args.node_name,
        args.announce.clone(),
        args.lb_class.clone(),
        &args.namespace,
        &clients,
        &mut registry,
        stop_rx.clone(),
    )
    .await?;
    let mut dataplane = dataplane::DataPlane::start(
        args.dataplane.clone(),
        &args.node_name,
        &args.announce.vip_link,
        &client,
        &mut registry,
    )
    .await;
    announcer.set_cannot_forward(dataplane.cannot_forward());
    let bgp_metrics = bgp::BgpMetrics::register(&mut registry);
    let mut bgp = bgp::BgpSpeaker::new(&args.node_name, &args.namespace, bgp_metrics)
        .with_shutdown_grace(Duration::from_secs(args.bgp_shutdown_grace));
    let mut refresh = crate::task::interval(Duration::from_secs(2));

    // The tasks the agent depends on: told to stop at shutdown and awaited (a bounded time), and the watches, aborted
    // then. If one ends before, the agent stops and exits non-zero, for the kubelet to restart it.
    let mut tasks = Tasks::new();
    let mut watches = Tasks::new();
    let registry = Arc::new(registry);
    let serve_stopped = stopped(stop_rx.clone());
    tasks.spawn("metrics listener", async move {
        if let Err(error) =
            crate::telemetry::serve(metrics_listener, registry, ready_rx, serve_stopped).await
        {
            tracing::error!(%error, "the metrics and health listener failed");
        }
    });
    if let Some(lease) = liveness.lease_task.take() {
        tasks
            .spawn_on_thread("node lease", lease)
            .map_err(Error::Thread)?;
    }

    let (changes_tx, mut changes) = mpsc::channel::<Change>(1024);
    spawn_watches(&mut watches, &clients.watch, &args, changes_tx, &metrics);

    let (leader_tx, mut leader) = watch::channel(None);
    let timing = LeaseTiming {
        duration: Duration::from_secs(args.lease_duration.max(2)),
        renew_deadline: Duration::from_secs(args.lease_duration.max(2)) * 4 / 5,
        ..LeaseTiming::default()
    };
    // The elector renews on a thread of its own, with clients built there: an allocation or announcement pass on
    // this thread must not hold a renewal past its deadline.
    let (elector_clients, elector_namespace, elector_node) = (
        clients.clone(),
        args.namespace.clone(),
        args.node_name.clone(),
    );
    let elector_stopped = stopped(stop_rx.clone());
    tasks
        .spawn_on_thread(
            "elector",
            elector_clients.run_anew("elector", move |own| {
                let elector = Elector::new(
                    Api::<Lease>::namespaced(own.request, &elector_namespace),
                    &elector_namespace,
                    ALLOCATOR_LEASE,
                    &elector_node,
                    timing,
                );
                elector.run(leader_tx, elector_stopped)
            }),
        )
        .map_err(Error::Thread)?;

    // The writers: their results come back as inputs, beside the watches'.
    let (results_tx, mut results) = mpsc::unbounded_channel::<Input>();
    let (passes_tx, passes_rx) = mpsc::unbounded_channel();
    // Shared by the allocation writer, which notices an API server dropping `ipMode`, and the allocation pass.
    let ip_mode_dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let allocation_writer = Writer::new(
        client.clone(),
        &args.node_name,
        metrics.clone(),
        leader.clone(),
        ip_mode_dropped.clone(),
    );
    tasks.spawn(
        "allocation writer",
        allocation_writer.run_allocation(passes_rx, results_tx.clone(), stopped(stop_rx.clone())),
    );
    let (own_tx, own_rx) = mpsc::unbounded_channel();
    let own_writer = Writer::new(
        client.clone(),
        &args.node_name,
        metrics.clone(),
        leader.clone(),
        ip_mode_dropped.clone(),
    );
    tasks.spawn(
        "announcement writer",
        own_writer.run_announcement(own_rx, results_tx, stopped(stop_rx.clone())),
    );
    if let Some(link) = announcer.take_link_task(stopped(stop_rx.clone())) {
        tasks.spawn("node link", link);
    }
    // IPAddressPool status, from the allocator's pool usage, while this agent allocates.
    let (pools_tx, pools_rx) = watch::channel(None);
    tasks.spawn(
        "pool status",
        pool_status::PoolStatusWriter::new(
            client.clone(),
            clients.watch.clone(),
            &args.config_namespace,
            leader.clone(),
        )
        .run(pools_rx, stopped(stop_rx.clone())),
    );
    // MetalLB's ServiceL2Status and ServiceBGPStatus objects, from what each announcement pass publishes.
    let (status_tx, status_rx) = watch::channel(None);
    let status_objects = status_objects::StatusObjects::new(
        client.clone(),
        clients.watch.clone(),
        &args.namespace,
        &args.node_name,
        status_objects::pod_owner(args.pod_name.as_deref(), args.pod_uid.as_deref()),
    );
    tasks.spawn(
        "status objects",
        status_objects.run(status_rx, stopped(stop_rx.clone())),
    );

    let mut controller = AllocationController::new(Settings {
        lb_class: args.lb_class.clone(),
        ingress_mode: if direct {
            IngressMode::Proxy
        } else {
            IngressMode::Vip
        },
        ip_mode_dropped,
    });
    // The decisions live in the core; this loop turns what happens into its inputs and carries out its outputs, in
    // order. Carrying out is computing a pass and handing its I/O to a task: nothing here waits on the API or netlink.
    let mut core = Core::new(metrics.clone(), &args.config_namespace);
    let mut todo: VecDeque<Output> = VecDeque::new();
    let (mut live_open, mut healthy_open, mut cut_off_open, mut leases_open, mut rejoined_open) =
        (true, true, true, true, true);
    // The reasons Services got no IP in the pass whose writes are out, for the metrics once they report.
    let mut failures = BTreeMap::new();
    // The task whose end stopped the agent, if one did.
    let mut died: Option<&'static str> = None;
    // Once told to stop: until when this node hands its VIPs over before it goes.
    let mut hand_off: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if hand_off.is_some() && announcer.handed_off() {
            tracing::info!(node = %args.node_name, "every VIP of this node is announced by another; stopping");
            break;
        }
        while let Some(output) = todo.pop_front() {
            match output {
                Output::Ready => {
                    tracing::info!(node = %args.node_name, "all watches synced");
                    ready_tx.send_replace(true);
                }
                Output::Leading(leading) => {
                    metrics.leader.set(i64::from(leading));
                    if !leading {
                        // Pool usage is the allocator's to report; a follower's figures would only go stale.
                        metrics.clear_pool_usage();
                        pools_tx.send_replace(None);
                    }
                    if leading {
                        // A new leader reports current problems itself.
                        controller.reset_notes();
                    }
                }
                Output::Allocate => {
                    let pass = controller.pass(&core.state, core.validated());
                    failures = pass.failures.clone();
                    // The writer only ends when the agent stops; then the pass is moot.
                    let _ = passes_tx.send(pass);
                }
                Output::Announce { trigger } => {
                    let started = Instant::now();
                    let writes = announce(
                        &mut core,
                        &args,
                        &mut announcer,
                        &liveness,
                        &mut dataplane,
                        &mut bgp,
                        trigger.into_std(),
                    );
                    status_tx.send_if_modified(|current| {
                        let next = Some(status_objects::Wanted {
                            layer2: announcer.layer2_status().clone(),
                            bgp: bgp.service_peers().clone(),
                            config_errors: core
                                .validated()
                                .errors
                                .iter()
                                .map(ToString::to_string)
                                .collect(),
                        });
                        let changed = *current != next;
                        *current = next;
                        changed
                    });
                    let _ = own_tx.send(writes);
                    let now = Instant::now();
                    core.announcement_took(now - started, now);
                }
                Output::TrimMemory => return_freed_memory(),
            }
        }
        let input = tokio::select! {
            biased;
            _ = &mut shutdown, if hand_off.is_none() => {
                // Make before break: the Node says this agent is going, every agent moves its groups, and it keeps
                // answering for each until the new owner announces it (or the time is up).
                tracing::info!(
                    node = %args.node_name,
                    "stopping: handing this node's VIPs over first, for at most {HAND_OFF_LIMIT:?}"
                );
                announcer.begin_hand_off();
                // The Node says whether this node comes back: a cordon, an out-of-service taint, an exclusion or a
                // deletion means it does not, and its routes leave the routers gracefully (RFC 8326) rather than
                // being kept for a restart.
                if let Some(why) = bgp::leaving_reason(&core.state, &args.node_name) {
                    tracing::info!(node = %args.node_name, why, "stopping for good: BGP routes leave gracefully");
                    bgp.stop_for_good(why);
                }
                hand_off = Some(Instant::now() + HAND_OFF_LIMIT);
                Input::Refresh { node_changed: true }
            }
            _ = sleep_until(hand_off), if hand_off.is_some() => {
                tracing::warn!(
                    node = %args.node_name,
                    "VIPs not all handed over within {HAND_OFF_LIMIT:?}; stopping anyway (the others take them when \
                     this agent leaves gossip)"
                );
                break;
            }
            task = tasks.died() => {
                tracing::error!(task, "a task the agent depends on ended; stopping");
                died = Some(task);
                break;
            }
            task = watches.died() => {
                tracing::error!(task, "a watch ended; stopping");
                died = Some(task);
                break;
            }
            // Without membership (no gossip key) these channels are closed; the last value stands.
            changed = liveness.live.changed(), if live_open => {
                live_open = changed.is_ok();
                tracing::info!(live = ?*liveness.live.borrow(), "membership changed");
                Input::Membership
            }
            changed = liveness.healthy.changed(), if healthy_open => {
                healthy_open = changed.is_ok();
                Input::Membership
            }
            changed = liveness.cut_off.changed(), if cut_off_open => {
                cut_off_open = changed.is_ok();
                Input::Membership
            }
            changed = liveness.rejoined.changed(), if rejoined_open => {
                rejoined_open = changed.is_ok();
                if rejoined_open {
                    announcer.rejoined(Instant::now().into_std());
                }
                Input::Membership
            }
            changed = liveness.leases.changed(), if leases_open => {
                leases_open = changed.is_ok();
                Input::NodeLeases { in_use: liveness.standing() != crate::gossip::Standing::Connected }
            }
            // Before the watches: a flood of changes must not starve the results that let passes run again.
            Some(result) = results.recv() => {
                if matches!(result, Input::Allocated { .. }) {
                    todo.extend(core.handle(result, Instant::now()));
                    let usage = record_usage(&metrics, &core.state, core.validated(), &failures);
                    let statuses: BTreeMap<String, crate::config::crd::IPAddressPoolStatus> = usage
                        .iter()
                        .map(|(pool, counts)| (pool.clone(), pool_status::status_of(counts)))
                        .collect();
                    pools_tx.send_if_modified(|current| {
                        let changed = current.as_ref() != Some(&statuses);
                        *current = Some(statuses);
                        changed
                    });
                    continue;
                }
                result
            }
            // A due pass must not wait for a quiet moment either.
            _ = sleep_until(core.next_deadline()) => Input::Timer,
            // The routes a leaving node kept through its graceful-shutdown grace are due for withdrawal.
            _ = sleep_until(bgp.release_at()) => {
                bgp.release_asked();
                Input::Refresh { node_changed: true }
            }
            change = changes.recv() => {
                let Some(change) = change else { break };
                let seen = Instant::now();
                // Drain what is already queued before deciding anything.
                let changes = std::iter::once(change)
                    .chain(std::iter::from_fn(|| changes.try_recv().ok()))
                    .collect();
                Input::Changes { changes, seen }
            }
            _ = announcer.local_changed() => Input::Refresh { node_changed: true },
            _ = bgp.status_changed() => {
                bgp.record();
                // A session changed state: a new value for the Node needs a pass to write it.
                let shown = node_bgp_peers(&core.state, &args.node_name);
                Input::Refresh {
                    node_changed: bgp.peers_annotation(&shown) != shown
                        || bgp.bfd_down_pending()
                        || bgp.discovery_pending(),
                }
            }
            _ = refresh.tick() => {
                bgp.record();
                Input::Refresh { node_changed: announcer.holding() }
            }
            changed = leader.changed() => {
                if changed.is_err() { break }
                // Every renewal moves the deadline; the core acts on a change of role only.
                Input::Leadership(leader.borrow_and_update().is_some())
            }
        };
        todo.extend(core.handle(input, Instant::now()));
    }
    stop_tx.send_replace(true);
    if bgp.stopping_for_good() {
        bgp.leave().await;
    } else {
        // Close the sessions without a Cease: peers with graceful restart keep the routes while the agent restarts.
        bgp.shutdown(true).await;
    }
    drop(watches);
    // The elector releases the allocator Lease and the node lease task deletes this node's Lease, within STOP_LIMIT.
    let late = tasks.shutdown(STOP_LIMIT).await;
    if !late.is_empty() {
        tracing::warn!(tasks = ?late, "tasks did not stop within {STOP_LIMIT:?}; aborted");
    }
    match died {
        Some(task) => Err(Error::TaskDied(task)),
        None => Ok(()),
    }
}

/// How long a stopping agent waits for its VIPs to be announced by other nodes before it stops anyway. A hand-off
/// takes one write and one watch event on each side, milliseconds; the bound covers an API that does not answer.
/// With [`STOP_LIMIT`] it leaves 3 s of the DaemonSet's 10 s termination grace for closing BGP sessions.
const HAND_OFF_LIMIT: Duration = Duration::from_secs(3);

/// How long the agent's tasks have, together, to finish after it is told to stop. With an API that answers they
/// take milliseconds (one Lease release, one Lease delete); with one that does not, their requests would wait for
/// the 10 s request timeout, and the kubelet's SIGKILL would come first. Aborted, they leave the allocator Lease to
/// expire (the followers wait out its duration) and the node Lease to expire (gossip has seen the node leave).
const STOP_LIMIT: Duration = Duration::from_secs(4);

/// One announcement pass, for a change first seen at `trigger`: liveness, the data plane, BGP, the Layer 2 plan (the
/// responder and the bind request take it at once), then this node's own writes, for the announcement writer.
fn announce(
    core: &mut Core,
    args: &AgentArgs,
    announcer: &mut announce::Announcer,
    liveness: &announce::Liveness,
    dataplane: &mut dataplane::DataPlane,
    bgp: &mut bgp::BgpSpeaker,
    trigger: std::time::Instant,
) -> OwnWrites {
    let ready = crate::k8s::announcement::ready_nodes(&core.state);
    let leases = liveness.leases.borrow().clone();
    let standing = liveness.standing();
    let live =
        crate::gossip::live_nodes(&liveness.live.borrow(), &ready, standing, leases.as_ref());
    let (state, validated) = core.state_and_config();
    dataplane.update(state, validated);
    let (bgp_notes, bgp_actions) = bgp.sync(state, validated, args.lb_class.as_deref());
    announcer.set_bgp_vips(bgp.advertised().clone(), bgp.advertised_services().clone());
    announcer.set_bgp_peers(bgp.peers_annotation(&node_bgp_peers(state, &args.node_name)));
    let mut pass = announcer.pass(state, validated, &live, standing, trigger);
    pass.node_notes.extend(bgp_notes);
    pass.services.extend(bgp_actions);
    OwnWrites {
        pass,
        node_reference: crate::k8s::announcement::node_reference(&args.node_name, state),
    }
}

/// The `ironlb.io/bgp-peers` value this node's Node carries now; empty when absent.
fn node_bgp_peers(state: &ClusterState, node: &str) -> String {
    state
        .nodes
        .get(&crate::k8s::index::ObjectKey::new("", node))
        .and_then(|n| n.metadata.annotations.as_ref())
        .and_then(|a| a.get(crate::plan::visibility::BGP_PEERS_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

/// Returns the heap memory the process has freed to the system. An allocation pass over every Service is a transient
/// peak (tens of MiB at 10,000 Services); glibc keeps what it frees in its per-thread arenas, so without this the
/// leader's resident memory would stay at that peak for good. Costs a walk of the free lists: 6 to 54 ms at
/// 10,000 Services (BENCHMARKS.md), once passes have been quiet for 500 ms. A no-op on musl, whose allocator
/// returns memory itself.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only releases free pages; it is safe to call at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Pool usage as the Services' status says it now, per pool and family, under IronLB's names and MetalLB's.
/// Returns it, for the pools' status.
fn record_usage(
    metrics: &AllocationMetrics,
    state: &ClusterState,
    validated: &crate::config::Validated,
    failures: &BTreeMap<String, u64>,
) -> BTreeMap<String, metallb_metrics::PoolCounts> {
    let usage = metallb_metrics::pool_usage(
        validated.config.pools.values(),
        state.services.values().map(crate::k8s::status::ingress_ips),
    );
    for pool in validated.config.pools.values() {
        let counts = &usage[&pool.name];
        for (i, family) in [crate::config::Family::V4, crate::config::Family::V6]
            .into_iter()
            .enumerate()
        {
            if !pool.has_family(family) {
                continue;
            }
            let (size, used) = (counts.usable[i] as f64, counts.in_use[i]);
            let labels = PoolLabels {
                pool: pool.name.clone(),
                family: family.to_string(),
            };
            metrics.pool_size.get_or_create(&labels).set(size);
            metrics
                .pool_used
                .get_or_create(&labels)
                .set(i64::try_from(used).unwrap_or(i64::MAX));
            metrics
                .pool_free
                .get_or_create(&labels)
                .set(size - used as f64);
        }
    }
    metrics.metallb_allocator.record(&usage);
    metrics.failures.clear();
    for (reason, count) in failures {
        metrics
            .failures
            .get_or_create(&ReasonLabels {
                reason: reason.clone(),
            })
            .set(i64::try_from(*count).unwrap_or(i64::MAX));
    }
    usage
}

fn spawn_watches(
    tasks: &mut Tasks,
    client: &Client,
    args: &AgentArgs,
    tx: mpsc::Sender<Change>,
    metrics: &AllocationMetrics,
) {
    let cfg_ns = args.config_namespace.as_str();
    let all = || watcher::Config::default();
    spawn_watch(
        tasks,
        Api::<Service>::all(client.clone()),
        all(),
        &tx,
        metrics,
        "Service",
        Change::Service,
    );
    spawn_watch(
        tasks,
        Api::<EndpointSlice>::all(client.clone()),
        all(),
        &tx,
        metrics,
        "EndpointSlice",
        Change::EndpointSlice,
    );
    spawn_watch(
        tasks,
        Api::<Node>::all(client.clone()),
        all(),
        &tx,
        metrics,
        "Node",
        // A Node's status lists every container image on it (often tens of KiB): no consumer reads it.
        |event: watcher::Event<Node>| {
            Change::Node(event.modify(|node| {
                if let Some(status) = node.status.as_mut() {
                    status.images = None;
                }
            }))
        },
    );
    spawn_watch(
        tasks,
        Api::<Namespace>::all(client.clone()),
        all(),
        &tx,
        metrics,
        "Namespace",
        Change::Namespace,
    );
    spawn_watch(
        tasks,
        Api::<ConfigMap>::namespaced(client.clone(), cfg_ns),
        all().fields(&format!("metadata.name={LEGACY_CONFIGMAP}")),
        &tx,
        metrics,
        "ConfigMap",
        Change::ConfigMap,
    );
    // BGP passwords: a watched cache, so no pass waits on the API and an outage takes no password away.
    spawn_watch(
        tasks,
        Api::<Secret>::namespaced(client.clone(), &args.namespace),
        all(),
        &tx,
        metrics,
        "Secret",
        Change::Secret,
    );
    // The metallb.io kinds are watched untyped: an object this agent cannot decode must not fail its kind's list.
    for kind in ConfigKind::ALL {
        let resource = kind.api_resource();
        spawn_watch(
            tasks,
            Api::<DynamicObject>::namespaced_with(client.clone(), cfg_ns, &resource),
            all(),
            &tx,
            metrics,
            kind.name(),
            move |event| Change::Config(kind, event),
        );
    }
}

/// kubectl's copy of the object as last applied, kept in an annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what every object carries and no consumer reads, before it is kept: `managedFields` (server-side apply's
/// bookkeeping, often larger than the rest of the metadata) and kubectl's last-applied copy of the object. The
/// agent keeps every Service, EndpointSlice and Node of the cluster, so these would be kept for each.
fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

fn spawn_watch<K>(
    tasks: &mut Tasks,
    api: Api<K>,
    config: watcher::Config,
    tx: &mpsc::Sender<Change>,
    metrics: &AllocationMetrics,
    kind: &'static str,
    wrap: impl Fn(watcher::Event<K>) -> Change + Send + 'static,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let tx = tx.clone();
    let restarts = metrics
        .watch_restarts
        .get_or_create(&KindLabels { kind: kind.into() })
        .clone();
    let (updates, errors) = (
        metrics.metallb_client.updates.clone(),
        metrics.metallb_client.update_errors.clone(),
    );
    tasks.spawn(kind, async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    updates.inc();
                    if tx.send(wrap(event.modify(strip))).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    restarts.inc();
                    errors.inc();
                    tracing::warn!(%error, kind, "watch failed; retrying with backoff");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn kept_objects_lose_managed_fields_and_the_last_applied_copy_only() {
        let mut svc = Service::default();
        svc.metadata.name = Some("web".into());
        svc.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        svc.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{\"big\":\"copy\"}".to_string()),
                (
                    "metallb.io/loadBalancerIPs".to_string(),
                    "192.0.2.10".to_string(),
                ),
            ]
            .into(),
        );
        let event = watcher::Event::Apply(svc).modify(strip);
        let watcher::Event::Apply(svc) = event else {
            panic!("the event changed kind")
        };
        assert_eq!(svc.metadata.managed_fields, None);
        assert_eq!(
            svc.metadata.annotations,
            Some(
                [(
                    "metallb.io/loadBalancerIPs".to_string(),
                    "192.0.2.10".to_string()
                )]
                .into()
            )
        );
        assert_eq!(svc.metadata.name.as_deref(), Some("web"));
    }
}
