//! `ironlb lab`: builds the lab, shows who owns each VIP, proves it from a client with ARP/NDP and TCP, kills an
//! owner, and prints the measured failover. With `--keep` it then stays up for the user's own `kubectl` and `arping`.

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::cluster::{self, Lab, LabOptions, PodReply};
use super::topology::{CLIENT_V4, CLIENT_V6, UPLINK};

#[derive(clap::Args, Clone, Debug)]
pub struct LabArgs {
    /// Number of node namespaces, each running one real agent.
    #[arg(long, env = "IRONLB_LAB_NODES", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub nodes: u16,
    /// Demo Services to create.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=40))]
    pub services: u16,
    /// Stay up after the demo, until Ctrl-C, and print how to reach the lab.
    #[arg(long)]
    pub keep: bool,
    /// The agents' data plane: `integrated` (kube-proxy's IPVS; the lab has no kube-proxy) or `direct` (each
    /// agent programs its node's IPVS, where the kernel has it).
    #[arg(long, value_enum, default_value_t = crate::agent::dataplane::Mode::Integrated)]
    pub dataplane: crate::agent::dataplane::Mode,
    /// Also run a BGP router (gobgp, bird or frr) in the switch namespace, peering with every node.
    #[arg(long, value_name = "DAEMON")]
    pub bgp: Option<super::bgp::Daemon>,
    /// With `--bgp bird` or `--bgp frr`: BFD beside every BGP session (a BFDProfile of 300 ms both ways, multiplier
    /// 3, on the lab's BGPPeer; the router's BFD configured to match). The demo lists the router's BFD sessions.
    #[arg(long, requires = "bgp")]
    pub bfd: bool,
    /// The Kubernetes API the lab runs on: `embedded` (the lab's own, in-process, starts at once) or `real` (etcd
    /// and kube-apiserver built from their Go modules, RBAC enforced, every agent a ServiceAccount).
    #[arg(long, value_enum, default_value_t = Api::Embedded)]
    pub api: Api,
    /// With `--api real`: the directory holding etcd, kube-apiserver and kubectl, as `scripts/build-control-plane`
    /// prints it (`scripts/lab --api real` builds them and passes this).
    #[arg(long, env = "IRONLB_CONTROL_PLANE_BIN", value_name = "DIR")]
    pub control_plane_bin: Option<std::path::PathBuf>,
    /// With `--api real`: run a real kube-proxy (built with the control plane) in every node, in this mode, and a pod
    /// behind every node for it to forward the Services to. `ipvs` needs a kernel with IPVS (`scripts/vm-lab`).
    #[arg(long, value_enum, value_name = "MODE")]
    pub kube_proxy: Option<super::kube_proxy::KubeProxyMode>,
}

/// The `--api` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    Embedded,
    Real,
}

/// The lab's [`cluster::ApiChoice`] for the arguments, or why they cannot run.
pub fn api_choice(api: Api, bin: Option<&std::path::Path>) -> cluster::Result<cluster::ApiChoice> {
    match (api, bin) {
        (Api::Embedded, _) => Ok(cluster::ApiChoice::Embedded),
        (Api::Real, Some(bin)) => Ok(cluster::ApiChoice::Real {
            bin: bin.to_path_buf(),
            crds: super::control_plane::Crds::Ours,
        }),
        (Api::Real, None) => Err(cluster::Error::Setup(
            "--api real needs the control plane's binaries: run `scripts/lab --api real`, which builds them, or \
             build them with scripts/build-control-plane and pass the directory it prints as --control-plane-bin \
             (or IRONLB_CONTROL_PLANE_BIN)"
                .into(),
        )),
    }
}

/// Whether this kernel has IPVS: its /proc file, or its generic-netlink family (the module loads on demand).
pub fn kernel_has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists() || crate::ipvs::IpvsSocket::connect().is_ok()
}

/// The agents' extra arguments for `mode`, and a note for the user when the kernel cannot do what was asked.
pub fn dataplane_agent_args(
    mode: crate::agent::dataplane::Mode,
    has_ipvs: bool,
) -> (Vec<String>, Option<&'static str>) {
    use crate::agent::dataplane::Mode;
    match (mode, has_ipvs) {
        (Mode::Integrated, _) => (Vec::new(), None),
        (Mode::Direct, true) => (vec!["--dataplane".into(), "direct".into()], None),
        // Without IPVS nothing forwards a VIP bound on ironlb0, so the node's own responder answers on it. (The
        // agent binds on ironlb0 in direct mode even when told kube-ipvs0.)
        (Mode::Direct, false) => (
            vec!["--dataplane".into(), "direct".into()],
            Some(
                "note: --dataplane direct, but this kernel has no IPVS (no /proc/net/ip_vs, no IPVS netlink family): \
                 the agents program no virtual services and keep announcing; each node answers on the VIP itself",
            ),
        ),
    }
}

/// Runs the demo, printing to `out`. Everything is torn down on return, and on Ctrl-C.
pub async fn run(args: LabArgs, out: &mut impl Write) -> cluster::Result<()> {
    run_with_binary(args, cluster::this_binary()?, out).await
}

/// [`run`] with `binary` as the agents' `ironlb` (a test runs the demo from its own binary).
pub async fn run_with_binary(
    args: LabArgs,
    binary: std::path::PathBuf,
    out: &mut impl Write,
) -> cluster::Result<()> {
    let api = api_choice(args.api, args.control_plane_bin.as_deref())?;
    if args.bfd && args.bgp == Some(super::bgp::Daemon::Gobgp) {
        return Err(cluster::Error::Setup(
            "--bfd: gobgpd has no BFD; use --bgp bird or --bgp frr".into(),
        ));
    }
    let prefix = format!("ilb-lab-{}", std::process::id());
    let dir = cluster::default_dir(&prefix);
    let options = LabOptions {
        nodes: usize::from(args.nodes),
        services: usize::from(args.services),
        prefix: prefix.clone(),
        dir: dir.clone(),
        binary,
        strict_arp: "enforce".into(),
        agent_args: Vec::new(),
        pods: false,
        api,
        kube_proxy: args.kube_proxy,
    };
    let has_ipvs = kernel_has_ipvs();
    if args.kube_proxy == Some(super::kube_proxy::KubeProxyMode::Ipvs) && !has_ipvs {
        return Err(cluster::Error::Setup(
            "--kube-proxy ipvs: this kernel has no IPVS (no /proc/net/ip_vs, no IPVS netlink family); run the lab \
             in the VM with scripts/vm-lab, or use --kube-proxy nftables"
                .into(),
        ));
    }
    let (agent_args, note) = dataplane_agent_args(args.dataplane, has_ipvs);
    // Where IPVS or kube-proxy forwards, the VIPs need real backends: a pod behind every node.
    let direct_pods = args.dataplane == crate::agent::dataplane::Mode::Direct && has_ipvs;
    let options = LabOptions {
        agent_args,
        pods: direct_pods || args.kube_proxy.is_some(),
        ..options
    };
    if let Some(note) = note {
        writeln!(out, "{note}")?;
    }
    if let Some(mode) = args.kube_proxy {
        writeln!(
            out,
            "a real kube-proxy in {mode} mode in every node; the VIPs forward to a pod namespace behind each node \
             (pod-N on node-N, port {}); demo-2 is externalTrafficPolicy: Local, the others Cluster",
            cluster::POD_PORT
        )?;
    } else if direct_pods {
        writeln!(
            out,
            "direct data plane with IPVS: every node's agent programs its IPVS; the VIPs forward to a pod namespace \
             behind each node (pod-N on node-N, port {}); demo-2 is externalTrafficPolicy: Local, the others Cluster",
            cluster::POD_PORT
        )?;
    }
    let result = tokio::select! {
        r = demo(options, args.keep, args.bgp.map(|daemon| (daemon, args.bfd)), out) => r,
        // Ctrl-C or SIGTERM: either way the lab must be torn down, not left behind.
        _ = crate::agent::shutdown_signal() => {
            let _ = writeln!(out, "interrupted; tearing the lab down");
            Ok(())
        }
    };
    if result.is_ok() {
        cluster::remove_dir(&dir);
    } else {
        let _ = writeln!(out, "agent logs kept in {}", dir.display());
    }
    result
}

async fn demo(
    options: LabOptions,
    keep: bool,
    bgp: Option<(super::bgp::Daemon, bool)>,
    out: &mut impl Write,
) -> cluster::Result<()> {
    let router_dir = options.dir.join("router");
    let nodes = options.nodes;
    // The `try:` lines name this binary by its path: `ironlb` need not be on PATH (scripts/lab runs it from target/).
    let binary = options.binary.display().to_string();
    let what = match options.api {
        cluster::ApiChoice::Embedded => "the lab API server",
        cluster::ApiChoice::Real { .. } => "a real etcd and kube-apiserver (takes a few seconds)",
    };
    writeln!(
        out,
        "building the lab: {nodes} node namespaces, a client, a bridge, {what}"
    )?;
    let started = Instant::now();
    let mut lab = Lab::start(options).await?;
    if let Some(plane) = lab.api.real() {
        writeln!(
            out,
            "{} at {} ready after {} ms; every agent runs as the ServiceAccount ironlb-system/ironlb-agent with \
             the RBAC of deploy/agent.yaml",
            lab.api.describe(),
            plane.server(),
            started.elapsed().as_millis()
        )?;
    }
    let pods = lab.options().pods;
    if lab.topology.vip_link_kind != "dummy" && lab.options().kube_proxy.is_none() {
        writeln!(
            out,
            "note: this kernel has no dummy links, so kube-ipvs0 (and ironlb0) is an empty bridge in each node (it \
             holds the VIPs the same way); and no IPVS here, so each node's own responder answers on the VIP"
        )?;
    }
    writeln!(
        out,
        "agents started; waiting for allocation and announcement"
    )?;
    let started = Instant::now();
    lab.wait_announced(Duration::from_secs(60)).await?;
    writeln!(
        out,
        "every Service announced after {} ms",
        started.elapsed().as_millis()
    )?;
    if pods {
        // The agents program IPVS and the SNAT table a moment after they announce.
        match lab.wait_forwarding(Duration::from_secs(60)).await {
            Ok(took) => writeln!(
                out,
                "every VIP forwarded to the pods {} ms later",
                took.as_millis()
            )?,
            Err(e) => writeln!(out, "note: {e}; showing what answers now")?,
        }
    }
    writeln!(out)?;
    // Let one round of periodic gratuitous ARP pass with no owner changing, so every cache on the LAN agrees before
    // we look.
    let rows = lab
        .wait_settled(Duration::from_millis(1200), Duration::from_secs(30))
        .await?;
    out.write_all(crate::k8s::report::render_table(&rows).as_bytes())?;
    let loads = crate::k8s::report::node_loads(&rows, &lab.node_names());
    out.write_all(crate::k8s::report::render_loads(&loads).as_bytes())?;

    writeln!(out, "\nfrom the client namespace:")?;
    for row in &rows {
        for vip in &row.vips {
            let Ok(ip) = vip.parse::<IpAddr>() else {
                continue;
            };
            let mac = lab.resolve_from_client(ip);
            let owner = row.owners.first().cloned().unwrap_or_default();
            let expected = lab.node(&owner).map(|n| n.mac.clone());
            let by = mac
                .as_deref()
                .and_then(|m| lab.topology.node_by_mac(m))
                .map(|n| n.name.clone())
                .unwrap_or_else(|| "nobody".into());
            let verdict = if mac.is_some() && mac == expected {
                "ok"
            } else {
                "MISMATCH"
            };
            let proto = if ip.is_ipv4() { "ARP" } else { "NDP" };
            let tcp = match lab.connect_from_client(ip, Duration::from_secs(2)) {
                Ok(reply) => reply,
                Err(e) => format!("TCP failed: {e}"),
            };
            writeln!(
                out,
                "  {vip:<16} {proto} answered by {by} ({verdict}); TCP :80 -> {tcp}"
            )?;
            if pods {
                writeln!(out, "  {:<16} {}", "", explain(&lab, &tcp, &by))?;
            }
        }
    }
    let nft = matches!(
        lab.options().kube_proxy,
        Some(
            super::kube_proxy::KubeProxyMode::Nftables | super::kube_proxy::KubeProxyMode::Iptables
        )
    );
    if nft && !lab.direct() {
        let node = lab
            .topology
            .nodes
            .first()
            .map(|n| n.netns.clone())
            .unwrap_or_default();
        writeln!(
            out,
            "\nkube-proxy forwards the VIPs with its own rules; see them with: ip netns exec {node} nft list ruleset \
             (nftables) or iptables-save (iptables)"
        )?;
    } else if pods
        && let Some((row, owner)) = rows.iter().find_map(|r| Some((r, r.owners.first()?)))
    {
        writeln!(
            out,
            "\nIPVS in {owner}, the owner of {} (ip netns exec {} ipvsadm -Ln):",
            row.vips.join(","),
            lab.node(owner).map(|n| n.netns.as_str()).unwrap_or("?")
        )?;
        match lab.ipvs(owner) {
            Ok(table) => {
                for line in table.lines() {
                    writeln!(out, "  {line}")?;
                }
            }
            Err(e) => writeln!(out, "  ipvsadm failed: {e}")?,
        }
    }

    let mut router = None;
    if let Some((daemon, bfd)) = bgp {
        let vips: Vec<IpAddr> = rows
            .iter()
            .flat_map(|r| r.vips.iter())
            .filter_map(|v| v.parse().ok())
            .collect();
        let (r, routes) = super::bgp::peer_lab(
            &lab,
            daemon,
            bfd,
            &router_dir,
            &vips,
            Duration::from_secs(30),
        )
        .await?;
        writeln!(
            out,
            "\nBGP: {} in {} peers with every node; it holds:",
            daemon.name(),
            r.netns
        )?;
        for route in &routes {
            writeln!(
                out,
                "  {:<22} via {}",
                route.prefix.to_string(),
                route.next_hop
            )?;
        }
        if bfd {
            let nodes: Vec<IpAddr> = lab
                .topology
                .nodes
                .iter()
                .map(|n| IpAddr::V4(n.ipv4))
                .collect();
            let limit = Duration::from_secs(15);
            let (all_up, sessions) = tokio::task::block_in_place(|| r.wait_bfd_up(&nodes, limit));
            writeln!(
                out,
                "BFD: {} lists {} session(s){} (`{}`):",
                daemon.name(),
                sessions.len(),
                if all_up {
                    ", one Up to every node"
                } else {
                    "; NOT every node Up within 15 s"
                },
                r.bfd_command().join(" ")
            )?;
            for s in &sessions {
                writeln!(
                    out,
                    "  {:<22} {:<5} sends every {} ms, declares it Down after {} ms of silence",
                    s.peer.to_string(),
                    s.state,
                    s.transmit.as_millis(),
                    s.detection.as_millis()
                )?;
            }
        }
        router = Some(r);
    }

    // Failover: the owner of the first IPv4 VIP dies (agent killed, link cut), as a node would.
    let Some((vip, owner)) = rows.iter().find_map(|r| {
        let ip = r
            .vips
            .iter()
            .find_map(|v| v.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))?;
        Some((ip, r.owners.first()?.clone()))
    }) else {
        return Ok(());
    };
    let started = k8s_openapi::jiff::Timestamp::now();
    let failover = measure_failover(&mut lab, vip, &owner).await?;
    writeln!(
        out,
        "\nkilled {owner} (agent SIGKILL, link cut), the owner of {vip}"
    )?;
    match failover {
        Some((elapsed, reply)) => {
            writeln!(out, "failover: {} ms", elapsed.as_millis())?;
            writeln!(out, "  {:>5} ms  {owner} lost", 0)?;
            for (after, what) in failover_steps(&lab, vip, &owner, started) {
                writeln!(out, "  {:>5} ms  {what}", after.as_millis())?;
            }
            writeln!(
                out,
                "  {:>5} ms  the client connected to {vip}: {reply} (tried every 50 ms)",
                elapsed.as_millis()
            )?;
        }
        None => writeln!(out, "failover: did not complete within 10 s")?,
    }
    if let (Some(r), Some((_, true))) = (&router, bgp) {
        // Read after the failover above; how fast BFD takes a dead node's routes is measured by
        // tests/netns_bgp_agents.rs (about a second).
        let dead = lab.node(&owner).map(|n| IpAddr::V4(n.ipv4));
        let (gone, _) = tokio::task::block_in_place(|| {
            r.wait_routes(Duration::from_secs(10), |routes| {
                !routes.iter().any(|route| Some(route.next_hop) == dead)
            })
        });
        let session = tokio::task::block_in_place(|| r.bfd_sessions())
            .unwrap_or_default()
            .into_iter()
            .find(|s| Some(s.peer) == dead)
            .map_or("none".to_string(), |s| s.state);
        writeln!(
            out,
            "BGP: {} {} route via {owner}; its BFD session to {owner}: {session}",
            r.daemon.name(),
            if gone {
                "holds no more"
            } else {
                "STILL holds a"
            },
        )?;
    }
    heal(&mut lab, &owner)?;

    if keep {
        // The healed node rejoins and takes its share back, one group per round: the `try:` lines are printed once
        // that is over, so what they show holds still.
        let rows = lab
            .wait_settled(Duration::from_secs(1), Duration::from_secs(30))
            .await?;
        let loads = crate::k8s::report::node_loads(&rows, &lab.node_names());
        write!(out, "\n{owner} restarted and rejoined; ")?;
        out.write_all(crate::k8s::report::render_loads(&loads).as_bytes())?;
        writeln!(out, "\nthe lab stays up until Ctrl-C:")?;
        writeln!(out, "kubeconfig: {}", lab.kubeconfig.display())?;
        // The API's address as seen from inside a node namespace differs from the host's.
        writeln!(out, "node-kubeconfig: {}", lab.node_kubeconfig().display())?;
        writeln!(out, "client-netns: {}", lab.topology.client)?;
        writeln!(out, "client-if: {UPLINK}")?;
        for node in &lab.topology.nodes {
            writeln!(out, "node-netns: {} {}", node.name, node.netns)?;
        }
        for pod in &lab.topology.pods {
            writeln!(out, "pod-netns: {} {}", pod.name, pod.netns)?;
        }
        if let Some(r) = &router {
            writeln!(out, "router-netns: {}", r.netns)?;
            writeln!(out, "router-cli: {}", r.cli_prefix().join(" "))?;
        }
        // Every line under `try:` runs as printed (tests/netns_lab_commands.rs runs each).
        writeln!(out, "\ntry:")?;
        writeln!(
            out,
            "  kubectl --kubeconfig {} get svc -o wide",
            lab.kubeconfig.display()
        )?;
        if let Some(vip) = rows.first().and_then(|r| r.vips.first()) {
            writeln!(
                out,
                "  ip netns exec {} arping -c 1 -I {UPLINK} {vip}",
                lab.topology.client
            )?;
        }
        writeln!(
            out,
            "  {binary} status --watch --kubeconfig {}",
            lab.kubeconfig.display()
        )?;
        if let Some(node) = lab.topology.nodes.first() {
            writeln!(
                out,
                "  ip netns exec {} {binary} verify --node-name {} --kubeconfig {}",
                node.netns,
                node.name,
                lab.node_kubeconfig().display()
            )?;
        }
        out.flush()?;
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Kills `owner`'s agent and cuts its link, then retries TCP to `vip` from the client every 50 ms (each attempt
/// bounded to 100 ms) for at most 10 s. Returns the time to the first success and what answered.
pub async fn measure_failover(
    lab: &mut Lab,
    vip: IpAddr,
    owner: &str,
) -> cluster::Result<Option<(Duration, String)>> {
    let node = lab
        .node(owner)
        .cloned()
        .ok_or_else(|| cluster::Error::Setup(format!("no lab node {owner}")))?;
    let start = Instant::now();
    lab.kill_agent(owner);
    lab.topology.cut(&node)?;
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(reply) = lab.connect_from_client(vip, Duration::from_millis(100))
            && !through(lab, &reply, owner)
        {
            return Ok(Some((start.elapsed(), reply)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

/// What the surviving agents logged after `owner` was lost at `started`, in time order: the first peer to declare it
/// Down (gossip), and the node that took over `vip`'s group from it, each with its time after `started` (the agents'
/// log timestamps, on this host's clock, microsecond resolution).
pub fn failover_steps(
    lab: &Lab,
    vip: IpAddr,
    owner: &str,
    started: k8s_openapi::jiff::Timestamp,
) -> Vec<(Duration, String)> {
    let mut steps = Vec::new();
    let mut down: Option<(Duration, String)> = None;
    for node in lab.topology.nodes.iter().filter(|n| n.name != owner) {
        let text = std::fs::read_to_string(lab.agent_log(&node.name)).unwrap_or_default();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(after) = entry["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .and_then(|t| u64::try_from(t.as_nanosecond() - started.as_nanosecond()).ok())
                .map(Duration::from_nanos)
            else {
                continue;
            };
            let fields = &entry["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            if message == "member down"
                && fields["peer"] == owner
                && down.as_ref().is_none_or(|(d, _)| after < *d)
            {
                down = Some((
                    after,
                    format!("{} declared {owner} Down (gossip)", node.name),
                ));
            }
            if message == "taking over a VIP group"
                && fields["from"] == owner
                && fields["group"].as_str() == Some(vip.to_string().as_str())
            {
                let cause = fields["cause"].as_str().unwrap_or("?");
                steps.push((
                    after,
                    format!(
                        "{} took {vip} over ({cause}) and sent gratuitous ARP",
                        node.name
                    ),
                ));
            }
        }
    }
    steps.extend(down);
    steps.sort();
    steps
}

/// Whether `reply` came through `node`: its own responder answered, or a pod saw the node's address (the node
/// source-NATed the connection to it).
fn through(lab: &Lab, reply: &str, node: &str) -> bool {
    if reply.ends_with(node) {
        return true;
    }
    PodReply::parse(reply)
        .and_then(|r| lab.topology.node_with_addr(r.peer))
        .is_some_and(|n| n.name == node)
}

/// What a pod's reply shows about the path from the client through `owner` (the node that answered ARP/NDP).
fn explain(lab: &Lab, reply: &str, owner: &str) -> String {
    let Some(r) = PodReply::parse(reply) else {
        return "no pod answered: nothing forwarded this connection".into();
    };
    let by = format!(
        "forwarded by {owner}'s {} to {} on {}",
        lab.forwarder(),
        r.pod,
        r.node
    );
    if r.peer == IpAddr::V4(CLIENT_V4) || r.peer == IpAddr::V6(CLIENT_V6) {
        return format!(
            "{by}; the pod saw the client's own address {} (no SNAT)",
            r.peer
        );
    }
    match lab.topology.node_with_addr(r.peer) {
        Some(n) => format!(
            "{by}; the pod saw {}, {}'s address (source-NATed by {})",
            r.peer, n.name, n.name
        ),
        None => format!("{by}; the pod saw {}", r.peer),
    }
}

/// Reconnects a node cut by [`measure_failover`] and restarts its agent.
pub fn heal(lab: &mut Lab, node: &str) -> cluster::Result<()> {
    let lab_node = lab
        .node(node)
        .cloned()
        .ok_or_else(|| cluster::Error::Setup(format!("no lab node {node}")))?;
    lab.topology.heal(&lab_node)?;
    lab.start_agent(node)
}

#[cfg(test)]
mod dataplane_tests {
    use super::*;
    use crate::agent::dataplane::Mode;

    #[test]
    fn direct_without_ipvs_says_so() {
        let (args, note) = dataplane_agent_args(Mode::Direct, false);
        assert_eq!(args, ["--dataplane", "direct"]);
        assert!(note.unwrap().contains("no IPVS"));
        assert_eq!(
            dataplane_agent_args(Mode::Direct, true),
            (vec!["--dataplane".to_string(), "direct".to_string()], None)
        );
        assert_eq!(
            dataplane_agent_args(Mode::Integrated, false),
            (vec![], None)
        );
    }
}
