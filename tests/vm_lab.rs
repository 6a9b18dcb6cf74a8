//! VM tier: the direct data plane beside a real kube-proxy in nftables mode (`ironlb lab --api real --kube-proxy
//! nftables --dataplane direct`, through `scripts/vm-lab`).
//!
//! The lab runs as `ironlb lab` builds it: node namespaces on a bridge, the real kube-apiserver and etcd, a real
//! kube-proxy in nftables mode and one real `ironlb agent --dataplane direct` per node, and a pod namespace behind
//! every node with the demo EndpointSlices pointing at the pods. The client connects to the VIPs; what the pods
//! answer shows which pod the owner's IPVS chose and which source address reached it. Every node still runs its own
//! responder on port 80, so a VIP that IPVS did not catch would be answered by the node, not a pod, and the test
//! would fail. It checks:
//! - a `Local` VIP reaches the owner's pod in one hop with the client's address; a `Cluster` one reaches the pods on
//!   both nodes, source-NATed, over IPv4 and IPv6; `loadBalancerSourceRanges` refuses and admits the client;
//! - kube-proxy, once synced (its `service-ips` maps hold the Services' ClusterIPs), holds no rule for any VIP: the
//!   VIPs' `ipMode: Proxy` keeps it off them;
//! - kube-proxy restarted on the `Local` VIP's owner flushes IPVS at its start (its nftables mode cleans up after the
//!   IPVS mode), and the agent puts its virtual services back within its quick check; the client is served by the
//!   owner's pod again, with its address kept. The time from kube-proxy's restart until then is printed.
//!
//! Runs only inside the VM that `scripts/vm-test` boots (`IRONLB_VM=1`). The lab (control plane, kube-proxies,
//! agents, namespaces, pods) is torn down when `Lab` drops, also on failure; its log directory is removed by a guard.

mod netns_support;
mod real_api_support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ironlb::k8s::report::StatusRow;
use ironlb::lab::cluster::{Lab, LabOptions, POD_PORT, PodReply};
use ironlb::lab::topology::CLIENT_V4;

fn in_vm() -> bool {
    if std::env::var("IRONLB_VM").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: needs the VM tier (scripts/vm-test)");
    false
}

/// Removes the lab's log directory on drop.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects from the client to `vip` until a pod answers (an agent programs IPVS right after the Service changes,
/// which may be a moment after the announcement); bounded by `limit`.
fn pod_reply(lab: &Lab, vip: IpAddr, limit: Duration) -> anyhow::Result<PodReply> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match lab.connect_from_client(vip, Duration::from_secs(3)) {
            Ok(text) => match PodReply::parse(&text) {
                Some(reply) => return Ok(reply),
                None => format!("answered {text:?}, not by a pod"),
            },
            Err(e) => format!("{:#}", anyhow::Error::from(e)),
        };
        if Instant::now() >= deadline {
            bail!("no pod answered {vip}:80 within {limit:?}; last attempt: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn row<'a>(rows: &'a [StatusRow], service: &str) -> anyhow::Result<&'a StatusRow> {
    rows.iter()
        .find(|r| r.service == service)
        .with_context(|| format!("{service} is not in the status table: {rows:?}"))
}

fn vip(row: &StatusRow, v4: bool) -> anyhow::Result<IpAddr> {
    row.vips
        .iter()
        .filter_map(|v| v.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == v4)
        .with_context(|| format!("{} has no IPv{} VIP", row.service, if v4 { 4 } else { 6 }))
}

/// The lines of `ipvsadm -Ln` under the virtual service `TCP  <vip>:80`: its real servers.
fn real_servers(table: &str, vip: IpAddr) -> Option<Vec<String>> {
    let head = match vip {
        IpAddr::V4(v) => format!("TCP  {v}:80 "),
        IpAddr::V6(v) => format!("TCP  [{v}]:80 "),
    };
    let mut lines = table.lines().skip_while(|l| !l.starts_with(&head));
    lines.next()?;
    Some(
        lines
            .take_while(|l| l.trim_start().starts_with("->"))
            .map(|l| l.trim().to_string())
            .collect(),
    )
}

async fn check(lab: &Lab) -> anyhow::Result<()> {
    // TCG is slow: the agents are debug builds under emulation.
    let rows = lab.wait_announced(Duration::from_secs(300)).await?;
    for r in &rows {
        println!("{} {:?} owned by {:?}", r.service, r.vips, r.owners);
    }
    let took = lab.wait_forwarding(Duration::from_secs(90)).await?;
    println!(
        "every VIP forwarded to the pods {} ms after the announcement",
        took.as_millis()
    );

    // demo-2: externalTrafficPolicy Local. The owner's IPVS sends the client to the owner's own pod, unNATed.
    // Under emulation the agents' gossip can flap and ownership move for a while, so the owner is read again for
    // each attempt; bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (local_vip, owner, pod) = loop {
        let rows = lab.status().await?;
        let local = row(&rows, "default/demo-2")?;
        let local_vip = vip(local, true)?;
        let owner = local.owners.first().context("demo-2 has no owner")?.clone();
        let pod = lab
            .topology
            .pod_of(&owner)
            .with_context(|| format!("no pod behind {owner}"))?
            .clone();
        let reply = pod_reply(lab, local_vip, Duration::from_secs(30))?;
        println!("Local {local_vip} (owner {owner}): {reply}");
        if reply.pod == pod.name && reply.node == owner && reply.peer == IpAddr::V4(CLIENT_V4) {
            break (local_vip, owner, pod);
        }
        ensure!(
            Instant::now() < deadline,
            "the Local VIP {local_vip} (owner {owner}) was answered by {} on {}, which saw {}; wanted {} on \
             {owner} seeing the client's address {CLIENT_V4}",
            reply.pod,
            reply.node,
            reply.peer,
            pod.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let table = lab.ipvs(&owner)?;
    println!("ipvsadm -Ln in {owner}:\n{table}");
    let servers = real_servers(&table, local_vip)
        .with_context(|| format!("{owner}'s IPVS has no virtual service TCP {local_vip}:80"))?;
    let want = format!("-> {}:{POD_PORT}", pod.ipv4);
    ensure!(
        servers.len() == 1 && servers[0].starts_with(&want) && servers[0].contains("Masq"),
        "{owner}'s real servers for the Local VIP {local_vip}: {servers:?}, wanted only `{want} Masq`"
    );

    // demo-1: Cluster, dual-stack. IPVS spreads connections over both pods, each source-NATed to the forwarding
    // node (its address on the link toward the pod): no pod ever sees the client's address.
    let cluster = row(&rows, "default/demo-1")?;
    let cluster_vip = vip(cluster, true)?;
    let all: BTreeSet<String> = lab.topology.pods.iter().map(|p| p.name.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut pods = BTreeSet::new();
        let mut unnatted = None;
        for _ in 0..6 {
            let reply = pod_reply(lab, cluster_vip, Duration::from_secs(30))?;
            let natted_by = lab
                .topology
                .node_with_addr(reply.peer)
                .map(|n| n.name.clone());
            println!("Cluster {cluster_vip}: {reply} (source NAT by {natted_by:?})");
            if natted_by.is_none() {
                unnatted = Some(reply.clone());
            }
            pods.insert(reply.pod);
        }
        if pods == all && unnatted.is_none() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the Cluster VIP {cluster_vip} reached {pods:?} (wanted every pod {all:?}); a pod saw an address that \
             is no node's: {unnatted:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let v6 = vip(cluster, false)?;
    let reply = pod_reply(lab, v6, Duration::from_secs(60))?;
    let natted_by = lab
        .topology
        .node_with_addr(reply.peer)
        .map(|n| n.name.clone());
    println!("Cluster {v6}: {reply} (source NAT by {natted_by:?})");
    ensure!(
        reply.peer.is_ipv6() && natted_by.is_some(),
        "{} saw {} over IPv6, not a node's address (source NAT)",
        reply.pod,
        reply.peer
    );
    source_ranges(lab, cluster_vip, v6).await
}

/// `loadBalancerSourceRanges` on demo-1, which IronLB forwards itself: a range without the client drops its
/// connections; one with the client serves it again; an IPv4-only list leaves the IPv6 VIP open, as kube-proxy does.
async fn source_ranges(lab: &Lab, vip: IpAddr, v6: IpAddr) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, Patch, PatchParams};
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let set = |ranges: serde_json::Value| {
        let services = services.clone();
        async move {
            let patch = serde_json::json!({"spec": {"loadBalancerSourceRanges": ranges}});
            services
                .patch("demo-1", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    set(serde_json::json!(["203.0.113.0/24"])).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match lab.connect_from_client(vip, Duration::from_secs(2)) {
            Err(e) => {
                println!(
                    "{vip} with loadBalancerSourceRanges [203.0.113.0/24]: the client is refused ({e})"
                );
                break;
            }
            Ok(text) => ensure!(
                Instant::now() < deadline,
                "{vip} still answers the client ({text:?}) 60 s after its source ranges left it out"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let open = pod_reply(lab, v6, Duration::from_secs(30))?;
    println!("{v6}, with no IPv6 source range, still serves the client: {open}");
    set(serde_json::json!([
        format!("{CLIENT_V4}/32"),
        "203.0.113.0/24"
    ]))
    .await?;
    let reply = pod_reply(lab, vip, Duration::from_secs(60))?;
    println!("{vip} with the client's address in its source ranges: {reply}");
    set(serde_json::Value::Null).await?;
    Ok(())
}

/// What `ironlb_ipvs_repairs_total` of `node`'s agent says.
fn repairs(lab: &Lab, node: &str) -> anyhow::Result<u64> {
    let text = lab.metrics(node)?;
    text.lines()
        .find_map(|l| l.strip_prefix("ironlb_ipvs_repairs_total "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{node}'s metrics have no ironlb_ipvs_repairs_total"))
}

/// How long the real control plane and kube-proxy may take under TCG to do one thing (start, sync, restart).
const LIMIT: Duration = Duration::from_secs(300);

/// kube-proxy in nftables mode beside the direct data plane: once synced it holds no rule for a VIP, and its restart
/// (which flushes IPVS) is repaired by the agent.
async fn beside_kube_proxy(lab: &mut Lab) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::Api;
    use netns_support::kube_proxy::service_ips;
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let rows = lab.status().await?;
    let mut cluster_ips = Vec::new();
    for r in &rows {
        let svc = services
            .get(r.service.trim_start_matches("default/"))
            .await?;
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        ensure!(
            !ingress.is_empty()
                && ingress
                    .iter()
                    .all(|i| i.ip_mode.as_deref() == Some("Proxy")),
            "{}: every ingress IP should say ipMode Proxy in the direct data plane: {ingress:?}",
            r.service
        );
        cluster_ips.extend(
            svc.spec
                .and_then(|s| s.cluster_ips)
                .unwrap_or_default()
                .into_iter()
                .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()),
        );
    }
    ensure!(
        !cluster_ips.is_empty(),
        "the demo Services have no ClusterIP"
    );
    let vips: Vec<String> = rows.iter().flat_map(|r| r.vips.clone()).collect();
    let deadline = Instant::now() + LIMIT;
    for node in lab.node_names() {
        loop {
            let rules = service_ips(lab, &node);
            if cluster_ips
                .iter()
                .all(|ip| rules.contains(&format!("{ip} . tcp . 80")))
            {
                for vip in &vips {
                    ensure!(
                        !rules.contains(&format!("{vip} . ")),
                        "{node}'s kube-proxy has a rule for {vip}, whose ipMode is Proxy:\n{rules}"
                    );
                }
                break;
            }
            if Instant::now() >= deadline {
                let log = lab
                    .kube_proxy(&node)
                    .map(|(_, log)| ironlb::lab::kube_proxy::log_tail(log, 30))
                    .unwrap_or_default();
                bail!(
                    "{node}'s kube-proxy has no rule for the ClusterIPs {cluster_ips:?} within {LIMIT:?}:\n{rules}\n\
                     --- its log ---\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    println!(
        "kube-proxy (nftables) synced on every node: rules for the ClusterIPs {cluster_ips:?}, none for the VIPs {vips:?}"
    );

    // kube-proxy restarted on the Local VIP's owner: its start flushes IPVS; the agent puts its services back.
    let local = row(&rows, "default/demo-2")?;
    let (local_vip, owner) = (vip(local, true)?, local.owners[0].clone());
    let pod = lab
        .topology
        .pod_of(&owner)
        .with_context(|| format!("no pod behind {owner}"))?
        .name
        .clone();
    let before = repairs(lab, &owner)?;
    let restarted = Instant::now();
    lab.restart_kube_proxy(&owner, ironlb::lab::kube_proxy::KubeProxyMode::Nftables)?;
    // The client tries every 100 ms; a failure is any attempt the owner's pod did not answer with the client's
    // address kept.
    let (mut attempts, mut failed, mut longest, mut run) =
        (0u32, 0u32, Duration::ZERO, None::<Instant>);
    let mut repaired_at = None;
    let mut last_metrics = Instant::now();
    loop {
        let at = Instant::now();
        let ok = lab
            .connect_from_client(local_vip, Duration::from_secs(1))
            .ok()
            .and_then(|t| PodReply::parse(&t))
            .is_some_and(|r| r.pod == pod && r.peer == IpAddr::V4(CLIENT_V4));
        attempts += 1;
        if ok {
            if let Some(since) = run.take() {
                longest = longest.max(at - since);
            }
        } else {
            failed += 1;
            run.get_or_insert(at);
        }
        if repaired_at.is_none() && last_metrics.elapsed() >= Duration::from_millis(500) {
            last_metrics = Instant::now();
            // Under TCG a busy agent may not answer within the lab's 2 s read timeout; read again later then.
            if repairs(lab, &owner).is_ok_and(|n| n > before) {
                repaired_at = Some(restarted.elapsed());
            }
        }
        if repaired_at.is_some() && ok {
            break;
        }
        if restarted.elapsed() >= LIMIT {
            let log = lab
                .kube_proxy(&owner)
                .map(|(_, log)| ironlb::lab::kube_proxy::log_tail(log, 30))
                .unwrap_or_default();
            bail!(
                "{owner}: no IPVS repair seen, or the Local VIP {local_vip} not served again, within {LIMIT:?} of \
                 kube-proxy's restart (repaired: {repaired_at:?}; {failed} of {attempts} attempts failed)\n--- \
                 kube-proxy's log ---\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(at.elapsed())).await;
    }
    let table = lab.ipvs(&owner)?;
    let servers = real_servers(&table, local_vip).with_context(|| {
        format!("{owner}'s IPVS has no virtual service TCP {local_vip}:80 after the repair")
    })?;
    ensure!(
        servers.len() == 1,
        "{owner}'s real servers for {local_vip} after the repair: {servers:?}"
    );
    println!(
        "kube-proxy restarted on {owner}: its IPVS flush was repaired (seen in the agent's metrics {} ms after the \
         restart, read every 500 ms); the Local VIP {local_vip} was not served by {pod} for at most {} ms ({failed} \
         of {attempts} attempts, one every 100 ms)",
        repaired_at.unwrap_or_default().as_millis(),
        longest.as_millis()
    );
    Ok(())
}

/// The direct data plane beside real kube-proxy in nftables mode: a Local VIP reaches the owner's pod with the
/// client's address kept, and `ipvsadm -Ln` in the owner shows that pod as the only real server; a Cluster VIP
/// reaches the pods on both nodes, over IPv4 and IPv6, source-NATed to the forwarding node; kube-proxy holds no
/// rule for a VIP; its restart's IPVS flush is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_beside_nftables_kube_proxy_forwards_vips_through_ipvs_to_pods() -> anyhow::Result<()>
{
    if !in_vm() {
        return Ok(());
    }
    ensure!(
        ironlb::lab::demo::kernel_has_ipvs(),
        "the VM kernel has no IPVS"
    );
    let options = real_api_support::on_real_api(LabOptions {
        pods: true,
        kube_proxy: Some(ironlb::lab::kube_proxy::KubeProxyMode::Nftables),
        ..netns_support::options("ilb-vmlab", 2, 2, "enforce", &["--dataplane", "direct"])
    })
    .context("the real control plane's binaries are missing")?;
    let _dir = DirGuard(options.dir.clone());
    let started = Instant::now();
    let mut lab = Lab::start(options).await?;
    println!(
        "lab with the real control plane, kube-proxy (nftables) and direct agents up in {} s",
        started.elapsed().as_secs()
    );
    let mut result = check(&lab).await;
    if result.is_ok() {
        result = beside_kube_proxy(&mut lab).await;
    }
    if result.is_err() {
        for node in lab.node_names() {
            let log = std::fs::read_to_string(lab.agent_log(&node)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            println!("--- {node} agent log (last lines, newest first):");
            for line in tail {
                println!("{line}");
            }
        }
    }
    result
}
