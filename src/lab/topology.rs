//! The lab's network: one namespace per node, a client namespace, and a switch namespace holding the bridge that
//! joins them, all made with iproute2 and all removed again when [`Topology`] drops.
//!
//! ```text
//!   <p>-client (eth0 192.0.2.100/24, 2001:db8::100/64)
//!        │
//!   <p>-switch: br0 ──┬── <p>-node-1 (eth0 192.0.2.11/24, 2001:db8::11/64, kube-ipvs0)
//!   (192.0.2.1: the   ├── <p>-node-2 (eth0 192.0.2.12/24 ...)
//!    lab API server)  └── ...
//! ```
//!
//! With pods ([`Topology::add_pods`], for the direct data plane where the kernel has IPVS), every node also gets a
//! pod namespace behind it, routed by every node:
//!
//! ```text
//!   <p>-node-N (pod 198.51.100.4N+1/30, 2001:db8:1:N::1/64) ── <p>-pod-N (eth0 198.51.100.4N+2/30,
//!                                                                         2001:db8:1:N::2/64)
//! ```
//!
//! Only documentation prefixes are used, and only inside namespaces this module creates. The host kernel may lack
//! dummy links, so `kube-ipvs0` is an empty bridge when dummy is unavailable: it holds local addresses the same way
//! (the kernel accepts TCP to them) and the lab says which one it used. There the lab also makes the direct data
//! plane's `ironlb0` the same way, since an agent can only create it as a dummy link; where dummy links exist, the
//! agents create `ironlb0` themselves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};

/// Why the lab's network could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The lab's switch address: where the agents in node namespaces reach the lab API server.
pub const SWITCH_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// The interface name every node and the client use toward the switch.
pub const UPLINK: &str = "eth0";

/// Runs a command, failing with its stderr.
pub fn run(args: &[&str]) -> Result<Output> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// Runs a command inside network namespace `ns`.
pub fn run_in(ns: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// One node of the lab.
#[derive(Clone, Debug)]
pub struct LabNode {
    pub name: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub mac: String,
}

/// A pod of the lab: a namespace behind one node, which forwards to it (the direct data plane's real server).
#[derive(Clone, Debug)]
pub struct LabPod {
    /// `pod-N`, behind `node-N`.
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node's addresses on the pod link: the pod's gateways.
    pub gateway4: Ipv4Addr,
    pub gateway6: Ipv6Addr,
}

/// The direct data plane's VIP link, which the lab makes itself only where dummy links are missing.
const DIRECT_LINK: &str = crate::agent::dataplane::DIRECT_LINK;

/// The link in a node namespace that leads to its pod.
pub const POD_LINK: &str = "pod";

/// The lab's namespaces and links. Dropping it deletes every namespace it made, and with them their links.
#[derive(Debug)]
pub struct Topology {
    pub prefix: String,
    pub switch: String,
    pub client: String,
    pub client_mac: String,
    pub nodes: Vec<LabNode>,
    /// One per node once [`Topology::add_pods`] ran, in node order.
    pub pods: Vec<LabPod>,
    /// The link kind of `kube-ipvs0`: `dummy` where the kernel has it, else `bridge`.
    pub vip_link_kind: &'static str,
    made: Vec<String>,
}

impl Topology {
    /// Builds the switch, `nodes` node namespaces and the client namespace under `prefix`.
    pub fn create(prefix: &str, nodes: usize) -> Result<Topology> {
        Topology::create_with(prefix, nodes, true)
    }

    /// [`Topology::create`], with the VIP links in every node (`kube-ipvs0`, and `ironlb0` where dummy links are
    /// missing) only if `vip_links`: a lab running real kube-proxy leaves `kube-ipvs0` to it (its IPVS mode makes
    /// it; its other modes have none).
    pub fn create_with(prefix: &str, nodes: usize, vip_links: bool) -> Result<Topology> {
        let mut topo = Topology {
            prefix: prefix.to_string(),
            switch: format!("{prefix}-switch"),
            client: format!("{prefix}-client"),
            client_mac: String::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            vip_link_kind: "bridge",
            made: Vec::new(),
        };
        topo.add_netns(&topo.switch.clone())?;
        let sw = topo.switch.clone();
        run_in(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        run_in(
            &sw,
            &[
                "ip",
                "addr",
                "add",
                &format!("{SWITCH_V4}/24"),
                "dev",
                "br0",
            ],
        )?;
        run_in(&sw, &["ip", "link", "set", "br0", "up"])?;
        run_in(&sw, &["ip", "link", "set", "lo", "up"])?;

        let client = topo.client.clone();
        topo.add_netns(&client)?;
        topo.plug(&client, "c")?;
        run_in(
            &client,
            &[
                "ip",
                "addr",
                "add",
                &format!("{CLIENT_V4}/24"),
                "dev",
                UPLINK,
            ],
        )?;
        run_in(
            &client,
            &[
                "ip",
                "addr",
                "add",
                &format!("{CLIENT_V6}/64"),
                "dev",
                UPLINK,
                "nodad",
            ],
        )?;
        // Take gratuitous ARP into the neighbour table, as routers and hosts on a real LAN commonly do.
        run_in(
            &client,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{UPLINK}.arp_accept=1"),
            ],
        )?;
        topo.client_mac = mac_of(&client, UPLINK)?;

        let dummy = dummy_supported(&sw);
        topo.vip_link_kind = if dummy { "dummy" } else { "bridge" };
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let netns = format!("{prefix}-{name}");
            topo.add_netns(&netns)?;
            topo.plug(&netns, &format!("n{i}"))?;
            let ipv4 = Ipv4Addr::new(192, 0, 2, 10 + i as u8);
            let ipv6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + i as u16);
            run_in(
                &netns,
                &["ip", "addr", "add", &format!("{ipv4}/24"), "dev", UPLINK],
            )?;
            run_in(
                &netns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{ipv6}/64"),
                    "dev",
                    UPLINK,
                    "nodad",
                ],
            )?;
            let vip_links: &[&str] = match (vip_links, dummy) {
                (false, _) => &[],
                (true, true) => &["kube-ipvs0"],
                (true, false) => &["kube-ipvs0", DIRECT_LINK],
            };
            for link in vip_links {
                run_in(
                    &netns,
                    &["ip", "link", "add", link, "type", topo.vip_link_kind],
                )?;
            }
            // Linux drops global IPv6 addresses when a link goes down (keep_addr_on_down=0), so a node whose cable
            // was cut would come back without its IPv6 subnet; and an IPv6 VIP on a down link is not local.
            for link in std::iter::once(&UPLINK).chain(vip_links) {
                let knob = format!("net.ipv6.conf.{link}.keep_addr_on_down=1");
                run_in(&netns, &["sysctl", "-qw", &knob])?;
            }
            for link in vip_links {
                run_in(&netns, &["ip", "link", "set", link, "up"])?;
            }
            let mac = mac_of(&netns, UPLINK)?;
            topo.nodes.push(LabNode {
                name,
                netns,
                ipv4,
                ipv6,
                mac,
            });
        }
        Ok(topo)
    }

    /// Gives every node a pod namespace behind a veth (`pod` in the node, `eth0` in the pod), makes the nodes
    /// forward, and routes each pod's subnets from every other node over the lab bridge, so that a node's IPVS can
    /// send a connection to any pod.
    pub fn add_pods(&mut self) -> Result<()> {
        for (i, node) in self.nodes.clone().iter().enumerate() {
            let n = i + 1;
            let name = format!("pod-{n}");
            let netns = format!("{}-{name}", self.prefix);
            self.add_netns(&netns)?;
            let (gw4, ipv4) = pod_v4(n);
            let (gw6, ipv6) = pod_v6(n);
            run_in(
                &node.netns,
                &[
                    "ip", "link", "add", POD_LINK, "type", "veth", "peer", "name", UPLINK, "netns",
                    &netns,
                ],
            )?;
            for (ns, link, v4, v6) in [
                (&node.netns, POD_LINK, gw4, gw6),
                (&netns, UPLINK, ipv4, ipv6),
            ] {
                run_in(ns, &["ip", "addr", "add", &format!("{v4}/30"), "dev", link])?;
                run_in(
                    ns,
                    &[
                        "ip",
                        "addr",
                        "add",
                        &format!("{v6}/64"),
                        "dev",
                        link,
                        "nodad",
                    ],
                )?;
                run_in(ns, &["ip", "link", "set", link, "up"])?;
            }
            run_in(
                &netns,
                &["ip", "route", "add", "default", "via", &gw4.to_string()],
            )?;
            run_in(
                &netns,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw6.to_string(),
                ],
            )?;
            for knob in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
                run_in(&node.netns, &["sysctl", "-qw", knob])?;
            }
            self.pods.push(LabPod {
                name,
                node: node.name.clone(),
                netns,
                ipv4,
                ipv6,
                gateway4: gw4,
                gateway6: gw6,
            });
        }
        for node in &self.nodes {
            self.route_pods(node, false)?;
        }
        Ok(())
    }

    /// Routes, in `node`, each other node's pod subnets via that node over the lab bridge. With `replace`, a
    /// route that already exists is replaced rather than refused.
    fn route_pods(&self, node: &LabNode, replace: bool) -> Result<()> {
        let verb = if replace { "replace" } else { "add" };
        for (i, pod) in self.pods.iter().enumerate() {
            if pod.node == node.name {
                continue;
            }
            let via = &self.nodes[i];
            // The subnets' network addresses: the node's side with its host bits cleared.
            let net4 = Ipv4Addr::from(u32::from(pod_v4(i + 1).0) & !3);
            let net6 = Ipv6Addr::from(u128::from(pod_v6(i + 1).0) & !u128::from(u64::MAX));
            let (net4, via4) = (format!("{net4}/30"), via.ipv4.to_string());
            let (net6, via6) = (format!("{net6}/64"), via.ipv6.to_string());
            run_in(&node.netns, &["ip", "route", verb, &net4, "via", &via4])?;
            run_in(
                &node.netns,
                &["ip", "-6", "route", verb, &net6, "via", &via6],
            )?;
        }
        Ok(())
    }

    /// The node that has `ip`: on its uplink, or on its pod link (a node source-NATs to either, by the route).
    pub fn node_with_addr(&self, ip: IpAddr) -> Option<&LabNode> {
        self.nodes.iter().find(|n| {
            ip == IpAddr::V4(n.ipv4)
                || ip == IpAddr::V6(n.ipv6)
                || self
                    .pod_of(&n.name)
                    .is_some_and(|p| ip == IpAddr::V4(p.gateway4) || ip == IpAddr::V6(p.gateway6))
        })
    }

    /// The pod behind `node`, once [`Topology::add_pods`] ran.
    pub fn pod_of(&self, node: &str) -> Option<&LabPod> {
        self.pods.iter().find(|p| p.node == node)
    }

    fn add_netns(&mut self, ns: &str) -> Result<()> {
        run(&["ip", "netns", "add", ns])?;
        self.made.push(ns.to_string());
        run_in(ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth from `ns` (named eth0 there) to the switch's bridge.
    fn plug(&self, ns: &str, tag: &str) -> Result<()> {
        let outer = format!("v-{tag}");
        run_in(
            &self.switch,
            &[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", UPLINK, "netns", ns,
            ],
        )?;
        run_in(
            &self.switch,
            &["ip", "link", "set", &outer, "master", "br0", "up"],
        )?;
        run_in(ns, &["ip", "link", "set", UPLINK, "up"])?;
        Ok(())
    }

    /// Cuts a node off the switch, as a failed NIC or cable would.
    pub fn cut(&self, node: &LabNode) -> Result<()> {
        run_in(&node.netns, &["ip", "link", "set", UPLINK, "down"]).map(|_| ())
    }

    /// Reconnects a node cut with [`Topology::cut`]. The kernel dropped the routes over the uplink when it went
    /// down, and bringing it up restores only its own subnets: the routes to the other nodes' pods are put back, as
    /// a real node's network configuration would, or its IPVS could not reach those pods again.
    pub fn heal(&self, node: &LabNode) -> Result<()> {
        run_in(&node.netns, &["ip", "link", "set", UPLINK, "up"])?;
        self.route_pods(node, true)
    }

    /// The MAC the client's neighbour table holds for `ip`, if any.
    pub fn client_neighbour(&self, ip: IpAddr) -> Option<String> {
        let out = run_in(
            &self.client,
            &["ip", "neigh", "show", &ip.to_string(), "dev", UPLINK],
        )
        .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// The node whose uplink has `mac`.
    pub fn node_by_mac(&self, mac: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.mac.eq_ignore_ascii_case(mac))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            // Deleting a namespace also kills the links in it; processes still inside keep it alive, which is
            // why the lab kills its agents before dropping the topology.
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// Node `n`'s side and pod `n`'s address of the pod link (IPv4, a /30 per node inside 198.51.100.0/24).
fn pod_v4(n: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = 4 * n as u8;
    (
        Ipv4Addr::new(198, 51, 100, base + 1),
        Ipv4Addr::new(198, 51, 100, base + 2),
    )
}

/// The same in IPv6: 2001:db8:1:N::1 and ::2, in a /64 per node.
fn pod_v6(n: usize) -> (Ipv6Addr, Ipv6Addr) {
    let net = n as u16;
    (
        Ipv6Addr::new(0x2001, 0xdb8, 1, net, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 1, net, 0, 0, 0, 2),
    )
}

fn mac_of(ns: &str, link: &str) -> Result<String> {
    let out = run_in(ns, &["cat", &format!("/sys/class/net/{link}/address")])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether this kernel can make dummy links (the host kernels here cannot; the VM tier's can).
fn dummy_supported(ns: &str) -> bool {
    let ok = run_in(ns, &["ip", "link", "add", "ilb-probe0", "type", "dummy"]).is_ok();
    if ok {
        let _ = run_in(ns, &["ip", "link", "del", "ilb-probe0"]);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_topology_connects_nodes_and_client_and_leaves_nothing_behind() {
        if !is_root() {
            println!("skipped: needs root to create network namespaces");
            return;
        }
        let prefix = format!("ilb-topo-{}", std::process::id());
        {
            let topo = Topology::create(&prefix, 2).unwrap();
            assert_eq!(topo.nodes.len(), 2);
            // The client reaches each node over the bridge.
            for node in &topo.nodes {
                run_in(
                    &topo.client,
                    &["ping", "-c", "1", "-W", "2", &node.ipv4.to_string()],
                )
                .unwrap();
                assert_eq!(
                    topo.client_neighbour(IpAddr::V4(node.ipv4)).as_deref(),
                    Some(node.mac.as_str())
                );
            }
            // A cut node is unreachable.
            topo.cut(&topo.nodes[1]).unwrap();
            assert!(
                run_in(
                    &topo.client,
                    &[
                        "ping",
                        "-c",
                        "1",
                        "-W",
                        "1",
                        &topo.nodes[1].ipv4.to_string()
                    ]
                )
                .is_err()
            );
        }
        let left =
            String::from_utf8_lossy(&run(&["ip", "netns", "list"]).unwrap().stdout).to_string();
        assert!(!left.contains(&prefix), "namespaces left behind: {left}");
    }
}
