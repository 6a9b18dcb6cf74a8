//! A whole small cluster on one Linux machine: the [`Topology`] of namespaces, the lab API server, one real
//! `ironlb agent` process per node namespace, demo Services with EndpointSlices, and a TCP responder in every node
//! namespace standing in for the pods. `ironlb lab` drives it, and so do the netns tests and the benchmarks.
//!
//! With [`LabOptions::pods`] (the direct data plane, where the kernel has IPVS) the EndpointSlices point at real
//! backends instead: a pod namespace behind every node ([`Topology::add_pods`]) whose server answers
//! `hello from pod-N on node-N to <the address it saw>` on [`POD_PORT`], so a client sees which pod its connection
//! reached through the owner's IPVS and whether its own address arrived ([`PodReply`]).
//!
//! The lab API server listens twice over the same objects: inside the switch namespace, where the agents reach it
//! over the lab bridge, and on the host's loopback, for the user's `kubectl`. With [`ApiChoice::Real`] the API is a
//! real etcd and kube-apiserver ([`super::control_plane`]) on the host's loopback instead, with RBAC enforced: the
//! user's kubeconfig is an admin's, every agent runs as the shipped manifest's ServiceAccount, and a [`Relay`] in
//! the switch namespace carries the agents' connections to it. Everything is torn down on drop: agents killed,
//! responders stopped, the API server stopped, namespaces deleted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::api::ApiServer;
use super::api::service_network::ServiceNetwork;
use super::control_plane::{self, ControlPlane};
use super::kube_proxy::{self, KubeProxy};
use super::netns::in_netns;
use super::topology::{self, LabNode, LabPod, SWITCH_V4, Topology, UPLINK};
use crate::config::crd::{IPAddressPool, L2Advertisement};
use crate::k8s::report::{StatusRow, rows};

/// The lab API server's port inside the switch namespace.
pub const API_PORT: u16 = 6443;
/// The port every demo Service and node responder uses.
pub const DEMO_PORT: u16 = 80;
/// The port the pods listen on (the demo Services' targetPort when the lab has pods).
pub const POD_PORT: u16 = 8080;
/// The lab's pool: inside the lab subnet, so that clients resolve the VIPs with ARP and NDP.
pub const POOL_V4: &str = "192.0.2.200-192.0.2.250";
pub const POOL_V6: &str = "2001:db8::200-2001:db8::250";
/// The real API server's Service CIDRs in the lab: documentation ranges the lab uses for nothing else, so a
/// ClusterIP never collides with a node, pod or VIP address.
pub const SERVICE_CIDRS: &str = "203.0.113.0/24,2001:db8:ffff::/112";

/// Which Kubernetes API server the lab runs on.
#[derive(Clone, Debug, Default)]
pub enum ApiChoice {
    /// The lab's own in-process API server: starts in milliseconds and needs nothing installed.
    #[default]
    Embedded,
    /// A real etcd and kube-apiserver from the binaries in `bin` (`scripts/build-control-plane` builds them), with
    /// RBAC enforced on every agent, and `crds` installed: IronLB's own, or MetalLB's manifests as a user keeping
    /// them would have.
    Real {
        bin: PathBuf,
        crds: control_plane::Crds,
    },
}

/// The lab's API server, as it runs.
pub enum LabApi {
    Embedded(ApiServer),
    Real {
        // The relay first, so no agent connection outlives the API server behind it.
        relay: Relay,
        plane: ControlPlane,
    },
}

impl LabApi {
    /// The embedded API server, which records requests and injects faults; `None` on the real one.
    pub fn embedded(&self) -> Option<&ApiServer> {
        match self {
            LabApi::Embedded(api) => Some(api),
            LabApi::Real { .. } => None,
        }
    }

    /// The real control plane, when the lab runs on one.
    pub fn real(&self) -> Option<&ControlPlane> {
        match self {
            LabApi::Embedded(_) => None,
            LabApi::Real { plane, .. } => Some(plane),
        }
    }

    /// The relay carrying the agents' connections to the real control plane.
    pub fn relay(&self) -> Option<&Relay> {
        match self {
            LabApi::Embedded(_) => None,
            LabApi::Real { relay, .. } => Some(relay),
        }
    }

    /// What to call it in messages to the user.
    pub fn describe(&self) -> &'static str {
        match self {
            LabApi::Embedded(_) => "the lab API server",
            LabApi::Real { .. } => "a real etcd and kube-apiserver (RBAC enforced)",
        }
    }
}

/// Forwards the TCP connections accepted on a listener to `target`. The lab listens inside the switch namespace, on
/// the address the agents' kubeconfig names, and connects from the host's namespace to the real API server on
/// loopback: a socket stays in the namespace it was made in. TLS passes through untouched. Aborts every connection
/// when dropped, and on [`Relay::reset`].
pub struct Relay {
    task: tokio::task::JoinHandle<()>,
    resets: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    pub fn start(listener: tokio::net::TcpListener, target: SocketAddr) -> Relay {
        let (resets, reset_rx) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        connections.spawn(relay(inbound, target, reset_rx.clone()));
                    }
                    // Reap finished connections so the set stays as large as the open ones.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Relay { task, resets }
    }

    /// Closes every connection open now, as a load balancer in front of an API server does when it restarts: each
    /// client's requests and watches fail, and it must connect again.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

/// Carries one connection until either side closes it or the relay is reset.
async fn relay(
    mut inbound: tokio::net::TcpStream,
    target: SocketAddr,
    mut reset: tokio::sync::watch::Receiver<u64>,
) {
    reset.mark_unchanged();
    let connect = tokio::net::TcpStream::connect(target);
    let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = reset.changed() => {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the lab needs root to create network namespaces (run it with sudo)")]
    NotRoot,
    #[error("building the lab network")]
    Topology(#[from] topology::Error),
    #[error("working inside a lab namespace")]
    Netns(#[from] super::netns::Error),
    #[error("the lab API server")]
    Api(#[from] super::api::Error),
    #[error("talking to the lab API server")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{0}")]
    Setup(String),
    #[error("the real control plane")]
    ControlPlane(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to build the lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub nodes: usize,
    /// Demo Services to create (each gets one VIP; the first is dual-stack).
    pub services: usize,
    /// Prefix of every namespace name; unique per run.
    pub prefix: String,
    /// Where kubeconfigs and agent logs go.
    pub dir: PathBuf,
    /// The `ironlb` binary to run as agents.
    pub binary: PathBuf,
    /// `--strict-arp` for every agent: the lab uses `enforce`, a test of `check` sets it.
    pub strict_arp: String,
    /// Extra flags for every agent.
    pub agent_args: Vec<String>,
    /// Give every node a pod namespace and point the demo EndpointSlices at the pods (IPv4 and IPv6) instead of
    /// the nodes' own responders; the second demo Service becomes `externalTrafficPolicy: Local`. For the direct
    /// data plane where the kernel has IPVS: the nodes' IPVS then forwards the VIPs to the pods.
    pub pods: bool,
    /// The embedded API server, or a real control plane.
    pub api: ApiChoice,
    /// Run a real kube-proxy in this mode in every node (needs the real control plane; implies `pods`, which
    /// kube-proxy then forwards the Services to). The nodes then have no `kube-ipvs0` but the one kube-proxy's IPVS
    /// mode makes.
    pub kube_proxy: Option<super::kube_proxy::KubeProxyMode>,
}

impl LabOptions {
    /// `nodes` nodes and `services` demo Services on the embedded API server, agents run from `binary` with strict ARP
    /// enforced and no extra flags, no pods; kubeconfigs and logs under `dir`.
    pub fn new(
        prefix: &str,
        dir: PathBuf,
        binary: PathBuf,
        nodes: usize,
        services: usize,
    ) -> LabOptions {
        LabOptions {
            nodes,
            services,
            prefix: prefix.to_string(),
            dir,
            binary,
            strict_arp: "enforce".into(),
            agent_args: Vec::new(),
            pods: false,
            api: Default::default(),
            kube_proxy: None,
        }
    }
}

struct AgentProcess {
    child: Child,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running TCP responder in a node namespace; stops on drop.
struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The running lab. Fields drop in order: kube-proxies, agents and responders first, then the API server, then the
/// namespaces.
pub struct Lab {
    kube_proxies: BTreeMap<String, KubeProxy>,
    kube_proxy_kubeconfig: Option<PathBuf>,
    agents: BTreeMap<String, AgentProcess>,
    responders: Vec<Responder>,
    pub api: LabApi,
    pub client: Client,
    pub kubeconfig: PathBuf,
    agent_kubeconfig: PathBuf,
    options: LabOptions,
    pub topology: Topology,
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Lab {
    /// The kubeconfig that reaches the lab's API server from inside a node namespace (the agents use it too).
    pub fn node_kubeconfig(&self) -> &std::path::Path {
        &self.agent_kubeconfig
    }

    /// Builds the network, starts the API server, applies the configuration and demo objects, and starts the agents.
    pub async fn start(mut options: LabOptions) -> Result<Lab> {
        if !is_root() {
            return Err(Error::NotRoot);
        }
        if options.kube_proxy.is_some() {
            if matches!(options.api, ApiChoice::Embedded) {
                return Err(Error::Setup(
                    "real kube-proxy needs the real control plane (--api real)".into(),
                ));
            }
            options.pods = true;
        }
        std::fs::create_dir_all(&options.dir)?;
        let mut topology =
            Topology::create_with(&options.prefix, options.nodes, options.kube_proxy.is_none())?;
        if options.pods {
            topology.add_pods()?;
        }

        let inside = in_netns(&topology.switch, || {
            StdListener::bind((SWITCH_V4, API_PORT))
        })??;
        inside.set_nonblocking(true)?;
        let inside = tokio::net::TcpListener::from_std(inside)?;
        let kubeconfig = options.dir.join("kubeconfig");
        let agent_kubeconfig = options.dir.join("agents.kubeconfig");
        let api = match &options.api {
            ApiChoice::Embedded => {
                let outside = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                outside.set_nonblocking(true)?;
                // The same Service ranges as the real control plane's below.
                let network = ServiceNetwork::parse(SERVICE_CIDRS)
                    .map_err(|e| Error::Setup(e.to_string()))?;
                let api = ApiServer::from_listeners_with(
                    vec![tokio::net::TcpListener::from_std(outside)?, inside],
                    network,
                )?;
                super::api::write_kubeconfig(&kubeconfig, &api.url())?;
                super::api::write_kubeconfig(
                    &agent_kubeconfig,
                    &format!("http://{SWITCH_V4}:{API_PORT}"),
                )?;
                LabApi::Embedded(api)
            }
            ApiChoice::Real { bin, crds } => {
                let (bin, crds) = (bin.clone(), crds.clone());
                let (user, agents) = (kubeconfig.clone(), agent_kubeconfig.clone());
                // Starting it and applying the manifest run processes and wait for them: off the async threads.
                let plane =
                    tokio::task::spawn_blocking(move || start_real_api(bin, &crds, &user, &agents))
                        .await
                        .map_err(|e| Error::Setup(format!("starting the control plane: {e}")))?
                        .map_err(Error::ControlPlane)?;
                let target = plane
                    .server()
                    .trim_start_matches("https://")
                    .parse::<SocketAddr>()
                    .map_err(|e| Error::Setup(format!("the API server's address: {e}")))?;
                LabApi::Real {
                    relay: Relay::start(inside, target),
                    plane,
                }
            }
        };
        let client = crate::agent::client(Some(&kubeconfig))
            .await
            .map_err(|e| Error::Setup(format!("lab API client: {e}")))?;

        let mut lab = Lab {
            kube_proxies: BTreeMap::new(),
            kube_proxy_kubeconfig: None,
            agents: BTreeMap::new(),
            responders: Vec::new(),
            api,
            client,
            kubeconfig,
            agent_kubeconfig,
            options,
            topology,
        };
        lab.apply_cluster_objects().await?;
        if let Some(mode) = lab.options.kube_proxy {
            lab.start_kube_proxies(mode).await?;
        }
        for pod in lab.topology.pods.clone() {
            lab.responders.push(start_pod_server(&pod)?);
        }
        for node in lab.topology.nodes.clone() {
            lab.responders.push(start_responder(&node)?);
            lab.start_agent(&node.name)?;
        }
        Ok(lab)
    }

    async fn apply_cluster_objects(&self) -> Result<()> {
        let pp = PostParams::default();
        // The real control plane has them already, installed with the manifest's RBAC.
        if self.api.real().is_none() {
            let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
            for crd in crate::config::crd::crds()
                .map_err(|e| Error::Setup(format!("generating CRDs: {e}")))?
            {
                crds.create(&pp, &crd).await?;
            }
        }
        // A fresh gossip key for every lab, as an operator would make one with `openssl rand`.
        let mut key = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("ironlb-memberlist".into()),
                namespace: Some("ironlb-system".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                crate::agent::announce::GOSSIP_SECRET_KEY.to_string(),
                k8s_openapi::ByteString(key),
            )])),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), "ironlb-system")
            .create(&pp, &secret)
            .await?;
        self.apply_pool("lab", &[POOL_V4, POOL_V6]).await?;
        let l2: L2Advertisement = serde_json::from_value(json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": "lab", "namespace": "metallb-system"},
            "spec": {"ipAddressPools": ["lab"]},
        }))
        .map_err(|e| Error::Setup(e.to_string()))?;
        Api::<L2Advertisement>::namespaced(self.client.clone(), "metallb-system")
            .create(&pp, &l2)
            .await?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        for node in &self.topology.nodes {
            nodes.create(&pp, &node_object(node)).await?;
        }
        for i in 1..=self.options.services {
            let local = self.options.pods && i == 2;
            self.create_demo_service(&format!("demo-{i}"), i == 1, local, None)
                .await?;
        }
        Ok(())
    }

    /// Creates the IPAddressPool `name` in metallb-system with `addresses`, announced by the lab's L2Advertisement
    /// only if it selects the pool (it selects `lab`).
    pub async fn apply_pool(&self, name: &str, addresses: &[&str]) -> Result<()> {
        let pool: IPAddressPool = serde_json::from_value(json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system"},
            "spec": {"addresses": addresses},
        }))
        .map_err(|e| Error::Setup(e.to_string()))?;
        Api::<IPAddressPool>::namespaced(self.client.clone(), "metallb-system")
            .create(&PostParams::default(), &pool)
            .await?;
        Ok(())
    }

    /// Creates a demo Service (dual-stack if asked, `externalTrafficPolicy: Local` if asked) with an EndpointSlice
    /// holding one endpoint on each node in `on_nodes` (all nodes when None).
    pub async fn create_demo_service(
        &self,
        name: &str,
        dual_stack: bool,
        local: bool,
        on_nodes: Option<&[&str]>,
    ) -> Result<()> {
        let families = if dual_stack {
            json!(["IPv4", "IPv6"])
        } else {
            json!(["IPv4"])
        };
        let mut port = json!({"name": "http", "port": DEMO_PORT, "protocol": "TCP"});
        if self.options.pods {
            port["targetPort"] = json!(POD_PORT);
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": name},
                "ports": [port],
                "ipFamilies": families,
                "ipFamilyPolicy": if dual_stack { "PreferDualStack" } else { "SingleStack" },
                "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
            },
        }))
        .map_err(|e| Error::Setup(e.to_string()))?;
        Api::<Service>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &svc)
            .await?;
        self.set_endpoints(
            name,
            on_nodes.unwrap_or(
                &self
                    .node_names()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        )
        .await
    }

    /// Replaces a demo Service's EndpointSlice with one ready endpoint per listed node: the node itself, or with
    /// pods its pod (then in an IPv4 and an IPv6 slice).
    pub async fn set_endpoints(&self, service: &str, nodes: &[&str]) -> Result<()> {
        let ready = |addr: String, node: &str| {
            json!({
                "addresses": [addr],
                "nodeName": node,
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })
        };
        if !self.options.pods {
            let endpoints = self
                .topology
                .nodes
                .iter()
                .filter(|n| nodes.contains(&n.name.as_str()))
                .map(|n| ready(n.ipv4.to_string(), &n.name))
                .collect();
            return self
                .put_slice(service, "lab", "IPv4", endpoints, DEMO_PORT)
                .await;
        }
        let pods: Vec<_> = self
            .topology
            .pods
            .iter()
            .filter(|p| nodes.contains(&p.node.as_str()))
            .collect();
        let v4 = pods.iter().map(|p| ready(p.ipv4.to_string(), &p.node));
        self.put_slice(service, "lab", "IPv4", v4.collect(), POD_PORT)
            .await?;
        let v6 = pods.iter().map(|p| ready(p.ipv6.to_string(), &p.node));
        self.put_slice(service, "lab-v6", "IPv6", v6.collect(), POD_PORT)
            .await
    }

    /// Creates or replaces the EndpointSlice `<service>-<suffix>`.
    async fn put_slice(
        &self,
        service: &str,
        suffix: &str,
        family: &str,
        endpoints: Vec<serde_json::Value>,
        port: u16,
    ) -> Result<()> {
        let name = format!("{service}-{suffix}");
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }))
        .map_err(|e| Error::Setup(e.to_string()))?;
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "default");
        match api.get_opt(&name).await? {
            Some(existing) => {
                let mut slice = slice;
                slice.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &slice).await?;
            }
            None => {
                api.create(&PostParams::default(), &slice).await?;
            }
        }
        Ok(())
    }

    pub fn node_names(&self) -> Vec<String> {
        self.topology.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.topology.nodes.iter().find(|n| n.name == name)
    }

    /// Starts (or restarts) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let lab_node = self
            .node(node)
            .ok_or_else(|| Error::Setup(format!("no lab node {node}")))?
            .clone();
        self.agents.remove(node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log(node))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab_node.netns])
            .arg(&self.options.binary)
            .args(["agent", "--node-name", node])
            .arg("--kubeconfig")
            .arg(&self.agent_kubeconfig)
            .args(["--metrics-addr", &format!("{}:7472", lab_node.ipv4)])
            .args([
                "--strict-arp",
                &self.options.strict_arp,
                "--garp-period",
                "1",
            ])
            .args(&self.options.agent_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.agents.insert(node.to_string(), AgentProcess { child });
        Ok(())
    }

    /// Starts a real kube-proxy in `mode` in every node, once its ServiceAccount and binding exist.
    async fn start_kube_proxies(&mut self, mode: kube_proxy::KubeProxyMode) -> Result<()> {
        let plane = self
            .api
            .real()
            .ok_or_else(|| Error::Setup("real kube-proxy needs the real control plane".into()))?;
        let server = format!("https://{SWITCH_V4}:{API_PORT}");
        let dir = self.options.dir.clone();
        // A few kubectl runs, well under a second: not worth a blocking thread.
        let kubeconfig = kube_proxy::prepare(plane, &server, &dir).map_err(Error::ControlPlane)?;
        self.kube_proxy_kubeconfig = Some(kubeconfig);
        for node in self.node_names() {
            self.restart_kube_proxy(&node, mode)?;
        }
        Ok(())
    }

    /// Stops `node`'s kube-proxy, if one runs, and starts it again in `mode`, as an operator switching the node's
    /// mode does: the new one cleans up after the old one's mode itself, as kube-proxy does at every start.
    pub fn restart_kube_proxy(
        &mut self,
        node: &str,
        mode: kube_proxy::KubeProxyMode,
    ) -> Result<()> {
        let lab_node = self
            .node(node)
            .ok_or_else(|| Error::Setup(format!("no lab node {node}")))?
            .clone();
        let (Some(plane), Some(kubeconfig)) = (self.api.real(), &self.kube_proxy_kubeconfig) else {
            return Err(Error::Setup(
                "this lab runs no kube-proxy (it needs --api real and --kube-proxy)".into(),
            ));
        };
        // Stopped first: two kube-proxies in one node would fight over its rules.
        self.kube_proxies.remove(node);
        let proxy = kube_proxy::start(plane, &lab_node, mode, kubeconfig, &self.options.dir)
            .map_err(Error::ControlPlane)?;
        self.kube_proxies.insert(node.to_string(), proxy);
        Ok(())
    }

    /// The mode `node`'s kube-proxy was started in, and its log; None when the lab runs none there.
    pub fn kube_proxy(&self, node: &str) -> Option<(kube_proxy::KubeProxyMode, &Path)> {
        self.kube_proxies
            .get(node)
            .map(|p| (p.mode, p.log.as_path()))
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.options.dir.join(format!("{node}.log"))
    }

    /// SIGKILLs the agent of `node`, as a crash would.
    pub fn kill_agent(&mut self, node: &str) {
        self.agents.remove(node);
    }

    /// SIGTERMs the agent of `node`, as a rolling restart would, and waits (bounded by `limit`) for it to exit;
    /// SIGKILLs it if it does not. Returns whether it exited on its own.
    pub fn stop_agent(&mut self, node: &str, limit: Duration) -> Result<bool> {
        let Some(mut agent) = self.agents.remove(node) else {
            return Err(Error::Setup(format!("the agent of {node} is not running")));
        };
        let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| Error::Setup(format!("SIGTERM to the agent of {node}: {e}")))?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if agent.child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Dropping it SIGKILLs and reaps it.
        Ok(false)
    }

    /// The process id of `node`'s agent (`ip netns exec` execs the agent, so it is the agent itself).
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node).map(|a| a.child.id())
    }

    /// Makes the lab API server unreachable from `node` (or reachable again): a blackhole route to the switch's
    /// address in the node's namespace, which drops every packet the node sends to the API, on new and on open
    /// connections alike, as a firewall rule would. Gossip between nodes and the client's traffic are untouched.
    pub fn block_api(&self, node: &str, blocked: bool) -> Result<()> {
        let lab_node = self
            .node(node)
            .ok_or_else(|| Error::Setup(format!("no lab node {node}")))?;
        let route = format!("{SWITCH_V4}/32");
        let verb = if blocked { "add" } else { "del" };
        topology::run_in(&lab_node.netns, &["ip", "route", verb, "blackhole", &route])?;
        Ok(())
    }

    /// The node holding the allocator Lease, if any.
    pub async fn lease_holder(&self) -> Result<Option<String>> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "ironlb-system");
        Ok(leases
            .get_opt(crate::agent::ALLOCATOR_LEASE)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity))
    }

    /// The Prometheus text of `node`'s agent, fetched from inside the node's namespace (so it works while the node is
    /// cut off).
    pub fn metrics(&self, node: &str) -> Result<String> {
        let lab_node = self
            .node(node)
            .ok_or_else(|| Error::Setup(format!("no lab node {node}")))?;
        let addr = SocketAddr::new(IpAddr::V4(lab_node.ipv4), 7472);
        let text = in_netns(&lab_node.netns, move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })??;
        Ok(text)
    }

    /// The status table as `ironlb status` would print it.
    pub async fn status(&self) -> Result<Vec<StatusRow>> {
        let services = Api::<Service>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        Ok(rows(&services))
    }

    /// Every Service; None (after a short pause) when the list failed but `limit` since `start` has not passed, so
    /// the caller tries again: an API server slowed down by the VM's emulated CPUs times a list out now and then.
    async fn list_services_until(
        &self,
        start: Instant,
        limit: Duration,
    ) -> Result<Option<Vec<Service>>> {
        match Api::<Service>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => Ok(Some(list.items)),
            Err(_) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until every LoadBalancer Service has an IP and an announcing node.
    pub async fn wait_announced(&self, limit: Duration) -> Result<Vec<StatusRow>> {
        let start = Instant::now();
        loop {
            let Some(services) = self.list_services_until(start, limit).await? else {
                continue;
            };
            let lb = services
                .iter()
                .filter(|s| {
                    s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
                })
                .count();
            let status = rows(&services);
            if status.len() == lb && status.iter().all(|r| !r.owners.is_empty()) {
                return Ok(status);
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout(
                    limit,
                    "every Service to be announced".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every Service is announced, the lab's nodes hold loads that differ by at most one, and no owner
    /// has changed for `quiet`. After a node rejoins, the agents level the load one group per round (a move keeps the
    /// old owner answering until the new owner's `announced-by` arrives), so a lab shown to a user, or probed by a
    /// test, waits for this rather than for the first announcement.
    pub async fn wait_settled(&self, quiet: Duration, limit: Duration) -> Result<Vec<StatusRow>> {
        let start = Instant::now();
        let nodes = self.node_names();
        let mut last: Option<(Vec<StatusRow>, Instant)> = None;
        loop {
            let left = limit.saturating_sub(start.elapsed());
            let rows = self.wait_announced(left).await?;
            let loads = crate::k8s::report::node_loads(&rows, &nodes);
            let counts = loads.iter().map(|l| l.vips);
            let level = counts.clone().max().unwrap_or(0) - counts.min().unwrap_or(0) <= 1;
            let since = match &last {
                Some((before, since)) if *before == rows => *since,
                _ => Instant::now(),
            };
            if level && since.elapsed() >= quiet {
                return Ok(rows);
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout(
                    limit,
                    format!("the owners to settle, level and unchanged for {quiet:?}"),
                ));
            }
            last = Some((rows, since));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// With pods: waits until the client's connection to every VIP is answered by a pod as the Service's policy
    /// says: with the client's own address (`Local`), or source-NATed to a node (`Cluster`). The agents program
    /// IPVS and the SNAT table a moment after they announce. Returns how long it took.
    pub async fn wait_forwarding(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let Some(services) = self.list_services_until(start, limit).await? else {
                continue;
            };
            let mut pending = Vec::new();
            for svc in &services {
                let local = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.external_traffic_policy.as_deref())
                    == Some("Local");
                for vip in crate::k8s::status::ingress_ips(svc) {
                    let answer = self.connect_from_client(vip, Duration::from_secs(1));
                    let reply = answer.as_ref().ok().and_then(|text| PodReply::parse(text));
                    let client = match vip {
                        IpAddr::V4(_) => IpAddr::V4(topology::CLIENT_V4),
                        IpAddr::V6(_) => IpAddr::V6(topology::CLIENT_V6),
                    };
                    let ok = reply.is_some_and(|r| {
                        if local {
                            r.peer == client
                        } else {
                            self.topology.node_with_addr(r.peer).is_some()
                        }
                    });
                    if !ok {
                        let got = match answer {
                            Ok(text) => format!("answered {:?}", text.trim()),
                            Err(e) => format!("no answer: {e}"),
                        };
                        let policy = if local { "Local" } else { "Cluster" };
                        pending.push((vip, format!("{policy}, {got}")));
                    }
                }
            }
            if pending.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                // What the client sees, for the one reading the failure: who answers ARP/NDP for each VIP left, and
                // what its connection got.
                let seen: Vec<String> = pending
                    .iter()
                    .map(|(vip, got)| {
                        let by = self
                            .resolve_from_client(*vip)
                            .map(|mac| {
                                self.topology
                                    .node_by_mac(&mac)
                                    .map_or(mac.clone(), |n| n.name.clone())
                            })
                            .unwrap_or_else(|| "nobody".into());
                        format!("{vip} (resolved to {by}; {got})")
                    })
                    .collect();
                return Err(Error::Timeout(
                    limit,
                    format!(
                        "pods to answer as the Services' policies say on {}",
                        seen.join("; ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The MAC that answers ARP (or NDP) for `vip` from the client, as `arping` / `ndisc6` see it.
    pub fn resolve_from_client(&self, vip: IpAddr) -> Option<String> {
        let out = match vip {
            IpAddr::V4(_) => topology::run_in(
                &self.topology.client,
                &[
                    "arping",
                    "-c",
                    "1",
                    "-w",
                    "2",
                    "-I",
                    UPLINK,
                    &vip.to_string(),
                ],
            ),
            IpAddr::V6(_) => topology::run_in(
                &self.topology.client,
                &[
                    "ndisc6",
                    "-1",
                    "-r",
                    "3",
                    "-w",
                    "500",
                    &vip.to_string(),
                    UPLINK,
                ],
            ),
        }
        .ok()?;
        parse_mac(&String::from_utf8_lossy(&out.stdout))
    }

    /// Connects from the client to `vip`:80 and returns what the responder says ("hello from node-N").
    pub fn connect_from_client(&self, vip: IpAddr, timeout: Duration) -> Result<String> {
        let addr = SocketAddr::new(vip, DEMO_PORT);
        let reply = in_netns(&self.topology.client, move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text.trim().to_string())
        })??;
        Ok(reply)
    }

    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    /// Whether the agents run the direct data plane.
    pub fn direct(&self) -> bool {
        self.options
            .agent_args
            .windows(2)
            .any(|w| w[0] == "--dataplane" && w[1] == "direct")
    }

    /// What forwards a VIP's connections to the pods in this lab, in words: IronLB's IPVS in the direct data plane,
    /// else kube-proxy in its mode (IPVS when the lab runs none: the lab's stand-in for kube-proxy's IPVS).
    pub fn forwarder(&self) -> String {
        match self.options.kube_proxy {
            _ if self.direct() => "IPVS (programmed by IronLB)".into(),
            Some(mode) => format!("kube-proxy ({mode} mode)"),
            None => "IPVS".into(),
        }
    }

    /// `ipvsadm -Ln` inside `node`'s namespace: the virtual services its agent programmed.
    pub fn ipvs(&self, node: &str) -> Result<String> {
        let lab_node = self
            .node(node)
            .ok_or_else(|| Error::Setup(format!("no lab node {node}")))?;
        let out = topology::run_in(&lab_node.netns, &["ipvsadm", "-Ln"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Agents and kube-proxies run inside the namespaces; they must be gone before the namespaces are deleted.
        self.kube_proxies.clear();
        self.agents.clear();
        self.responders.clear();
    }
}

/// A responder in `node`'s namespace that answers every TCP connection on port 80 with "hello from <node>".
fn start_responder(node: &LabNode) -> Result<Responder> {
    let greeting = format!("hello from {}\n", node.name);
    serve(&node.netns, DEMO_PORT, move |_| greeting.clone())
}

/// The server of a pod: answers every TCP connection on [`POD_PORT`] with "hello from pod-N on node-N to <peer>".
fn start_pod_server(pod: &LabPod) -> Result<Responder> {
    let (name, node) = (pod.name.clone(), pod.node.clone());
    serve(&pod.netns, POD_PORT, move |peer| {
        PodReply {
            pod: name.clone(),
            node: node.clone(),
            peer: peer.ip().to_canonical(),
        }
        .to_string()
            + "\n"
    })
}

/// A TCP server in namespace `ns` on `port` that writes `reply(peer)` to every connection and closes it.
fn serve(
    ns: &str,
    port: u16,
    reply: impl Fn(SocketAddr) -> String + Send + 'static,
) -> Result<Responder> {
    let listener = in_netns(ns, move || -> std::io::Result<StdListener> {
        // [::] with the default dual-stack socket accepts IPv4 too.
        let listener = StdListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })??;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write_all(reply(peer).as_bytes());
                }
                // A short nap: a connection waits at most this long to be served, and one that straddles a move
                // of its VIP (its handshake to the old owner, its next packet to the new one) is reset, so a long
                // nap would count the lab server's latency as failovers.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Ok(Responder {
        stop,
        thread: Some(thread),
    })
}

/// What a pod's server answers: which pod, on which node, and the source address the connection arrived with
/// (the client's own with `externalTrafficPolicy: Local`; the forwarding node's with `Cluster`, source-NATed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReply {
    pub pod: String,
    pub node: String,
    pub peer: IpAddr,
}

impl PodReply {
    /// Parses `hello from pod-N on node-N to <peer>`; None for anything else (a node responder's reply).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.trim().strip_prefix("hello from ")?;
        let (pod, rest) = rest.split_once(" on ")?;
        let (node, peer) = rest.split_once(" to ")?;
        Some(Self {
            pod: pod.to_string(),
            node: node.to_string(),
            peer: peer.parse().ok()?,
        })
    }
}

impl std::fmt::Display for PodReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hello from {} on {} to {}",
            self.pod, self.node, self.peer
        )
    }
}

fn node_object(node: &LabNode) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ipv4.to_string()},
                {"type": "InternalIP", "address": node.ipv6.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .expect("a valid Node")
}

/// The first MAC address in a tool's output (`arping` prints `[02:..]`, `ndisc6` `Target link-layer address: 02:..`).
pub fn parse_mac(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .find(|w| {
            w.len() == 17
                && w.split(':').count() == 6
                && w.split(':')
                    .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .map(str::to_ascii_lowercase)
}

/// Starts the real control plane with a serving certificate for the switch's address, installs the CRDs and
/// the manifest's RBAC, and writes the user's (admin) kubeconfig to `user` and the agents' (the ServiceAccount's
/// token, through the relay) to `agents`.
fn start_real_api(
    bin: PathBuf,
    crds: &control_plane::Crds,
    user: &Path,
    agents: &Path,
) -> anyhow::Result<ControlPlane> {
    let plane = ControlPlane::start_with_options(
        bin,
        &control_plane::Options {
            service_cidrs: SERVICE_CIDRS.into(),
            serving_ips: vec![IpAddr::V4(SWITCH_V4)],
        },
    )?;
    plane.install_ironlb(crds)?;
    let token = plane.service_account_kubeconfig_at(
        "ironlb-system",
        "ironlb-agent",
        &format!("https://{SWITCH_V4}:{API_PORT}"),
    )?;
    std::fs::copy(plane.kubeconfig_path(), user)?;
    std::fs::copy(token, agents)?;
    Ok(plane)
}

/// Where the lab keeps its files: a fresh directory under the system temp dir.
pub fn default_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(prefix)
}

/// The running binary, used as the agents' binary.
pub fn this_binary() -> Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

/// Removes a directory the lab made, ignoring errors.
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_found_in_arping_and_ndisc6_output() {
        let arping = "ARPING 192.0.2.200 from 192.0.2.100 eth0\nUnicast reply from 192.0.2.200 [02:AB:cd:00:11:22]  0.6ms\n";
        assert_eq!(parse_mac(arping).as_deref(), Some("02:ab:cd:00:11:22"));
        let ndisc = "Soliciting 2001:db8::200 (2001:db8::200) on eth0...\nTarget link-layer address: 02:AB:CD:00:11:22\n from 2001:db8::11\n";
        assert_eq!(parse_mac(ndisc).as_deref(), Some("02:ab:cd:00:11:22"));
        assert_eq!(parse_mac("no reply"), None);
    }

    #[test]
    fn pod_replies_round_trip_and_node_replies_are_not_pod_replies() {
        let reply = PodReply {
            pod: "pod-2".into(),
            node: "node-2".into(),
            peer: "192.0.2.100".parse().unwrap(),
        };
        assert_eq!(
            reply.to_string(),
            "hello from pod-2 on node-2 to 192.0.2.100"
        );
        assert_eq!(PodReply::parse(&format!("{reply}\n")), Some(reply));
        let v6 = PodReply::parse("hello from pod-1 on node-1 to 2001:db8::12").unwrap();
        assert_eq!(v6.peer, "2001:db8::12".parse::<IpAddr>().unwrap());
        assert_eq!(PodReply::parse("hello from node-2"), None);
        assert_eq!(
            PodReply::parse("hello from pod-1 on node-1 to nowhere"),
            None
        );
    }
}
