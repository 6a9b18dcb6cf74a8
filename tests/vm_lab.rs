//! VM tier: the lab in direct mode really forwards through IPVS (`ironlb lab --dataplane direct`).
//!
//! The whole lab runs here as `ironlb lab` builds it: node namespaces on a bridge, the lab API server, one real
//! `ironlb agent --dataplane direct` per node, and, because this kernel has IPVS, a pod namespace behind every node
//! with the demo EndpointSlices pointing at the pods. The client connects to the VIPs; what the pods answer shows
//! which pod the owner's IPVS chose and which source address reached it. Every node still runs its own responder on
//! port 80, so a VIP that IPVS did not catch would be answered by the node, not a pod, and the test would fail.
//!
//! Runs only inside the VM that `scripts/vm-test` boots (`IRONLB_VM=1`). The lab (agents, namespaces, pods) is
//! torn down when `Lab` drops, also on failure; its log directory is removed by a guard.

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
    let rows = lab.wait_announced(Duration::from_secs(120)).await?;
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

/// The lab in direct mode: a Local VIP reaches the owner's pod with the client's address kept, and `ipvsadm -Ln`
/// in the owner shows that pod as the only real server; a Cluster VIP reaches the pods on both nodes, over IPv4 and
/// IPv6, source-NATed to the forwarding node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_lab_forwards_vips_through_ipvs_to_pods() -> anyhow::Result<()> {
    if !in_vm() {
        return Ok(());
    }
    ensure!(
        ironlb::lab::demo::kernel_has_ipvs(),
        "the VM kernel has no IPVS"
    );
    let prefix = format!("ilb-vmlab-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let _dir = DirGuard(dir.clone());
    let lab = Lab::start(LabOptions {
        nodes: 2,
        services: 2,
        prefix,
        dir,
        binary: env!("CARGO_BIN_EXE_ironlb").into(),
        strict_arp: "enforce".into(),
        agent_args: vec!["--dataplane".into(), "direct".into()],
        pods: true,
        api: Default::default(),
        kube_proxy: None,
    })
    .await?;
    let result = check(&lab).await;
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
