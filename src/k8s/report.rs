//! The report of `ironlb status`: where every VIP is announced, read back from the annotations the agents write.
//!
//! The owner of a VIP writes `ironlb.io/announced-by`, `ironlb.io/announced-on` and `ironlb.io/announced-since` on
//! its Service when it takes the VIP over, so this report needs nothing but the Services: it shows what the cluster
//! records, the same thing `kubectl get svc -o yaml` would. BGP sessions come from each Node's `ironlb.io/bgp-peers`,
//! which its agent keeps current. It is a pure function of the objects it is given; the command that lists them
//! from the API lives with the other command entry points (`cli::status`).

use k8s_openapi::api::core::v1::{Node, Service};
use serde::Serialize;

use super::status::{POOL_ANNOTATION, ingress_ips};

use crate::plan::visibility::{
    ANNOUNCED_BY_ANNOTATION as ANNOUNCED_BY, ANNOUNCED_CAUSE_ANNOTATION as ANNOUNCED_CAUSE,
    ANNOUNCED_ON_ANNOTATION as ANNOUNCED_ON, ANNOUNCED_SINCE_ANNOTATION as ANNOUNCED_SINCE,
    BGP_ADVERTISED_BY_ANNOTATION as BGP_ADVERTISED_BY, BGP_PEERS_ANNOTATION, PROXY_MODE_ANNOTATION,
    parse_bgp_peers,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub service: String,
    pub vips: Vec<String>,
    pub pool: Option<String>,
    pub owners: Vec<String>,
    /// For a Service announced over both Layer 2 and BGP: the nodes advertising it over BGP (`owners` is then the
    /// Layer 2 owner).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bgp_advertisers: Vec<String>,
    pub interfaces: Vec<String>,
    pub since: Option<String>,
    /// Why the owner took the VIP over (`ironlb.io/announced-cause`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

fn list(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// One row per Service holding an ingress IP, in namespace/name order.
pub fn rows(services: &[Service]) -> Vec<StatusRow> {
    let mut rows: Vec<StatusRow> = services
        .iter()
        .filter_map(|svc| {
            let ips = ingress_ips(svc);
            if ips.is_empty() {
                return None;
            }
            let annotations = svc.metadata.annotations.clone().unwrap_or_default();
            Some(StatusRow {
                service: format!(
                    "{}/{}",
                    svc.metadata.namespace.as_deref().unwrap_or("default"),
                    svc.metadata.name.as_deref().unwrap_or("")
                ),
                vips: ips.iter().map(ToString::to_string).collect(),
                pool: annotations.get(POOL_ANNOTATION).cloned(),
                owners: list(annotations.get(ANNOUNCED_BY)),
                bgp_advertisers: list(annotations.get(BGP_ADVERTISED_BY)),
                interfaces: list(annotations.get(ANNOUNCED_ON)),
                since: annotations.get(ANNOUNCED_SINCE).cloned(),
                cause: annotations.get(ANNOUNCED_CAUSE).cloned(),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service));
    rows
}

/// The rows as an aligned table.
pub fn render_table(rows: &[StatusRow]) -> String {
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let mut lines = vec![
        ["SERVICE", "VIP", "POOL", "OWNER", "INTERFACE", "SINCE"]
            .map(str::to_string)
            .to_vec(),
    ];
    for r in rows {
        lines.push(vec![
            r.service.clone(),
            r.vips.join(","),
            r.pool.clone().unwrap_or_else(|| "-".into()),
            match (r.owners.is_empty(), r.bgp_advertisers.is_empty()) {
                (true, true) => "(not announced)".into(),
                (_, true) => r.owners.join(","),
                (true, false) => format!("bgp:{}", r.bgp_advertisers.join(",")),
                (false, false) => {
                    format!("{} bgp:{}", r.owners.join(","), r.bgp_advertisers.join(","))
                }
            },
            dash(&r.interfaces),
            r.since.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    aligned(&lines)
}

/// One BGP session of one node, as its agent last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BgpPeerRow {
    pub node: String,
    pub peer: String,
    pub state: String,
}

/// Every node's sessions, in node then peer order.
pub fn bgp_peer_rows(nodes: &[Node]) -> Vec<BgpPeerRow> {
    let mut rows: Vec<BgpPeerRow> = nodes
        .iter()
        .flat_map(|n| {
            let node = n.metadata.name.clone().unwrap_or_default();
            let value = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(BGP_PEERS_ANNOTATION))
                .map(String::as_str)
                .unwrap_or("");
            parse_bgp_peers(value)
                .into_iter()
                .map(move |(peer, state)| BgpPeerRow {
                    node: node.clone(),
                    peer,
                    state,
                })
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, &a.peer).cmp(&(&b.node, &b.peer)));
    rows
}

/// The sessions as an aligned table; empty when no node has a session.
pub fn render_bgp_peers(rows: &[BgpPeerRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut lines = vec![["NODE", "PEER", "STATE"].map(str::to_string).to_vec()];
    lines.extend(
        rows.iter()
            .map(|r| vec![r.node.clone(), r.peer.clone(), r.state.clone()]),
    );
    aligned(&lines)
}

/// How many Layer 2 VIP groups one node answers for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeLoad {
    pub node: String,
    pub vips: usize,
}

/// The Layer 2 load of every node: the distinct VIP sets whose Services name it in `announced-by` (Services sharing
/// a VIP count once), every one of `nodes` listed even at zero, in node order.
pub fn node_loads(rows: &[StatusRow], nodes: &[String]) -> Vec<NodeLoad> {
    let mut groups: std::collections::BTreeMap<&str, std::collections::BTreeSet<&[String]>> = nodes
        .iter()
        .map(|n| (n.as_str(), Default::default()))
        .collect();
    for row in rows {
        if let [owner] = row.owners.as_slice() {
            groups
                .entry(owner.as_str())
                .or_default()
                .insert(row.vips.as_slice());
        }
    }
    groups
        .into_iter()
        .map(|(node, vips)| NodeLoad {
            node: node.to_string(),
            vips: vips.len(),
        })
        .collect()
}

/// The loads as one line: `node-1 2, node-2 2, node-3 2 (spread 0)`.
pub fn render_loads(loads: &[NodeLoad]) -> String {
    let counts: Vec<usize> = loads.iter().map(|l| l.vips).collect();
    let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
    let each: Vec<String> = loads
        .iter()
        .map(|l| format!("{} {}", l.node, l.vips))
        .collect();
    format!(
        "Layer 2 VIPs per node: {} (spread {spread})\n",
        each.join(", ")
    )
}

/// kube-proxy's mode on one node, as its agent publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeProxyMode {
    pub node: String,
    pub mode: String,
}

/// Every node whose agent published kube-proxy's mode, in node order.
pub fn proxy_modes(nodes: &[Node]) -> Vec<NodeProxyMode> {
    let mut modes: Vec<NodeProxyMode> = nodes
        .iter()
        .filter_map(|n| {
            let mode = n
                .metadata
                .annotations
                .as_ref()?
                .get(PROXY_MODE_ANNOTATION)?;
            Some(NodeProxyMode {
                node: n.metadata.name.clone()?,
                mode: mode.clone(),
            })
        })
        .collect();
    modes.sort_by(|a, b| a.node.cmp(&b.node));
    modes
}

/// The modes as one line, `kube-proxy mode per node: node-1 ipvs, node-2 nftables`; empty when none is known.
pub fn render_proxy_modes(modes: &[NodeProxyMode]) -> String {
    if modes.is_empty() {
        return String::new();
    }
    let each: Vec<String> = modes
        .iter()
        .map(|m| format!("{} {}", m.node, m.mode))
        .collect();
    format!("kube-proxy mode per node: {}\n", each.join(", "))
}

/// The whole `ironlb status` report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub services: Vec<StatusRow>,
    pub node_loads: Vec<NodeLoad>,
    pub bgp_peers: Vec<BgpPeerRow>,
    /// kube-proxy's mode per node, where the agents published it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_modes: Vec<NodeProxyMode>,
}

impl StatusReport {
    pub fn new(services: &[Service], nodes: &[Node]) -> StatusReport {
        let services = rows(services);
        let names: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        StatusReport {
            node_loads: node_loads(&services, &names),
            services,
            bgp_peers: bgp_peer_rows(nodes),
            proxy_modes: proxy_modes(nodes),
        }
    }

    /// The VIP table, the load per node, kube-proxy's mode per node, then the BGP session table after a blank line
    /// when any node has a session.
    pub fn render_table(&self) -> String {
        let mut out = render_table(&self.services);
        if !self.node_loads.is_empty() {
            out.push_str(&render_loads(&self.node_loads));
        }
        out.push_str(&render_proxy_modes(&self.proxy_modes));
        let peers = render_bgp_peers(&self.bgp_peers);
        if !peers.is_empty() {
            out.push('\n');
            out.push_str(&peers);
        }
        out
    }
}

/// One change between two reports, as `ironlb status --watch` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "camelCase")]
pub enum StatusChange {
    /// A Service got its first VIP.
    Added {
        service: String,
        vips: Vec<String>,
        owners: Vec<String>,
    },
    /// A Service no longer holds a VIP (deleted, or its IP released).
    Removed { service: String, vips: Vec<String> },
    /// A Service's VIPs changed.
    Readdressed {
        service: String,
        from: Vec<String>,
        to: Vec<String>,
    },
    /// The node announcing a Service's VIPs changed.
    Moved {
        service: String,
        vips: Vec<String>,
        from: Vec<String>,
        to: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// kube-proxy's mode on a node changed (`None`: not known).
    ProxyMode {
        node: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// A BGP session appeared, changed state or went away (`None`).
    BgpPeer {
        node: String,
        peer: String,
        from: Option<String>,
        to: Option<String>,
    },
}

impl std::fmt::Display for StatusChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let owners = |o: &[String]| {
            if o.is_empty() {
                "(not announced)".to_string()
            } else {
                o.join(",")
            }
        };
        match self {
            StatusChange::Added {
                service,
                vips,
                owners: o,
            } => write!(f, "added    {service}  {}  {}", vips.join(","), owners(o)),
            StatusChange::Removed { service, vips } => {
                write!(f, "removed  {service}  {}", vips.join(","))
            }
            StatusChange::Readdressed { service, from, to } => {
                write!(
                    f,
                    "vips     {service}  {} -> {}",
                    from.join(","),
                    to.join(",")
                )
            }
            StatusChange::Moved {
                service,
                vips,
                from,
                to,
                cause,
            } => {
                write!(
                    f,
                    "moved    {service}  {}  {} -> {}",
                    vips.join(","),
                    owners(from),
                    owners(to)
                )?;
                match cause {
                    Some(cause) if !to.is_empty() => write!(f, "  ({cause})"),
                    _ => Ok(()),
                }
            }
            StatusChange::ProxyMode { node, from, to } => {
                let mode = |s: &Option<String>| s.clone().unwrap_or_else(|| "(unknown)".into());
                write!(
                    f,
                    "proxy    {node}  kube-proxy {} -> {}",
                    mode(from),
                    mode(to)
                )
            }
            StatusChange::BgpPeer {
                node,
                peer,
                from,
                to,
            } => {
                let state = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".into());
                write!(
                    f,
                    "bgp      {node}  {peer}  {} -> {}",
                    state(from),
                    state(to)
                )
            }
        }
    }
}

/// What changed from `before` to `after`: Services first, in name order, then kube-proxy's mode per node, then BGP
/// sessions, in node and peer order.
pub fn changes(before: &StatusReport, after: &StatusReport) -> Vec<StatusChange> {
    use std::collections::BTreeMap;
    let mut out = Vec::new();
    let old: BTreeMap<&str, &StatusRow> = before
        .services
        .iter()
        .map(|r| (r.service.as_str(), r))
        .collect();
    let new: BTreeMap<&str, &StatusRow> = after
        .services
        .iter()
        .map(|r| (r.service.as_str(), r))
        .collect();
    let names: std::collections::BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for name in names {
        match (old.get(name), new.get(name)) {
            (None, Some(row)) => out.push(StatusChange::Added {
                service: name.to_string(),
                vips: row.vips.clone(),
                owners: row.owners.clone(),
            }),
            (Some(row), None) => out.push(StatusChange::Removed {
                service: name.to_string(),
                vips: row.vips.clone(),
            }),
            (Some(was), Some(now)) => {
                if was.vips != now.vips {
                    out.push(StatusChange::Readdressed {
                        service: name.to_string(),
                        from: was.vips.clone(),
                        to: now.vips.clone(),
                    });
                }
                if was.owners != now.owners {
                    out.push(StatusChange::Moved {
                        service: name.to_string(),
                        vips: now.vips.clone(),
                        from: was.owners.clone(),
                        to: now.owners.clone(),
                        cause: now.cause.clone(),
                    });
                }
            }
            (None, None) => {}
        }
    }
    let modes = |r: &StatusReport| -> BTreeMap<String, String> {
        r.proxy_modes
            .iter()
            .map(|m| (m.node.clone(), m.mode.clone()))
            .collect()
    };
    let (old, new) = (modes(before), modes(after));
    let nodes: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for node in nodes {
        let (from, to) = (old.get(node).cloned(), new.get(node).cloned());
        if from != to {
            out.push(StatusChange::ProxyMode {
                node: node.clone(),
                from,
                to,
            });
        }
    }
    let sessions = |r: &StatusReport| -> BTreeMap<(String, String), String> {
        r.bgp_peers
            .iter()
            .map(|p| ((p.node.clone(), p.peer.clone()), p.state.clone()))
            .collect()
    };
    let (old, new) = (sessions(before), sessions(after));
    let keys: std::collections::BTreeSet<&(String, String)> =
        old.keys().chain(new.keys()).collect();
    for key in keys {
        let (from, to) = (old.get(key).cloned(), new.get(key).cloned());
        if from != to {
            out.push(StatusChange::BgpPeer {
                node: key.0.clone(),
                peer: key.1.clone(),
                from,
                to,
            });
        }
    }
    out
}

/// Rows of cells as left-aligned columns two spaces apart.
fn aligned(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ips: &[&str], annotations: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "status": {"loadBalancer": {"ingress": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}}
        }))
        .unwrap()
    }

    #[test]
    fn rows_show_owner_interface_and_since_from_annotations() {
        let services = vec![
            svc(
                "web",
                &["192.0.2.10", "2001:db8::10"],
                json!({POOL_ANNOTATION: "public", ANNOUNCED_BY: "node-2", ANNOUNCED_ON: "eth0",
                       ANNOUNCED_SINCE: "2026-11-22T03:00:00Z"}),
            ),
            svc("idle", &["192.0.2.11"], json!({POOL_ANNOTATION: "public"})),
            svc("pending", &[], json!({})),
        ];
        let rows = rows(&services);
        assert_eq!(rows.len(), 2, "a Service without an IP has no row");
        assert_eq!(rows[0].service, "shop/idle");
        assert!(rows[0].owners.is_empty());
        assert_eq!(rows[1].vips, vec!["192.0.2.10", "2001:db8::10"]);
        assert_eq!(rows[1].owners, vec!["node-2"]);
        assert_eq!(rows[1].interfaces, vec!["eth0"]);
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[1].contains("(not announced)"));
        assert!(
            lines[2].contains("node-2") && lines[2].contains("2026-11-22T03:00:00Z"),
            "{table}"
        );
        let parsed: serde_json::Value = serde_json::to_value(&rows).unwrap();
        assert_eq!(parsed[1]["owners"][0], "node-2");
    }

    #[test]
    fn changes_name_additions_moves_with_their_cause_removals_and_bgp_states() {
        let node = |name: &str, peers: &str| -> Node {
            serde_json::from_value(
                json!({"metadata": {"name": name, "annotations": {BGP_PEERS_ANNOTATION: peers}}}),
            )
            .unwrap()
        };
        let before = StatusReport::new(
            &[
                svc("web", &["192.0.2.10"], json!({ANNOUNCED_BY: "node-1"})),
                svc("old", &["192.0.2.11"], json!({ANNOUNCED_BY: "node-2"})),
                svc(
                    "renumbered",
                    &["192.0.2.12"],
                    json!({ANNOUNCED_BY: "node-2"}),
                ),
                svc("steady", &["192.0.2.13"], json!({ANNOUNCED_BY: "node-3"})),
            ],
            &[node("node-1", "192.0.2.1=Active")],
        );
        let after = StatusReport::new(
            &[
                svc(
                    "web",
                    &["192.0.2.10"],
                    json!({ANNOUNCED_BY: "node-2", ANNOUNCED_CAUSE: "owner-gone"}),
                ),
                svc("new", &["192.0.2.14"], json!({})),
                svc(
                    "renumbered",
                    &["192.0.2.15"],
                    json!({ANNOUNCED_BY: "node-2"}),
                ),
                svc("steady", &["192.0.2.13"], json!({ANNOUNCED_BY: "node-3"})),
            ],
            &[node("node-1", "192.0.2.1=Established,192.0.2.2=Idle")],
        );
        let lines: Vec<String> = changes(&before, &after)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "added    shop/new  192.0.2.14  (not announced)",
                "removed  shop/old  192.0.2.11",
                "vips     shop/renumbered  192.0.2.12 -> 192.0.2.15",
                "moved    shop/web  192.0.2.10  node-1 -> node-2  (owner-gone)",
                "bgp      node-1  192.0.2.1  Active -> Established",
                "bgp      node-1  192.0.2.2  (none) -> Idle",
            ]
        );
        assert!(changes(&after, &after).is_empty());
        let json = serde_json::to_value(&changes(&before, &after)[3]).unwrap();
        assert_eq!(json["change"], "moved");
        assert_eq!(json["cause"], "owner-gone");
    }

    #[test]
    fn a_service_in_layer2_and_bgp_shows_both() {
        let services = vec![svc(
            "web",
            &["192.0.2.10"],
            json!({ANNOUNCED_BY: "node-2", BGP_ADVERTISED_BY: "node-1,node-3"}),
        )];
        let rows = rows(&services);
        assert_eq!(rows[0].owners, vec!["node-2"]);
        assert_eq!(rows[0].bgp_advertisers, vec!["node-1", "node-3"]);
        let table = render_table(&rows);
        assert!(table.contains("node-2 bgp:node-1,node-3"), "{table}");
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["bgp_advertisers"][1], "node-3");
    }

    #[test]
    fn the_load_per_node_counts_shared_vips_once_and_idle_nodes_at_zero() {
        let services = vec![
            svc("a", &["192.0.2.10"], json!({ANNOUNCED_BY: "node-1"})),
            svc("a-shared", &["192.0.2.10"], json!({ANNOUNCED_BY: "node-1"})),
            svc("b", &["192.0.2.11"], json!({ANNOUNCED_BY: "node-2"})),
            svc(
                "bgp",
                &["192.0.2.12"],
                json!({ANNOUNCED_BY: "node-1,node-2"}),
            ),
        ];
        let report = StatusReport::new(
            &services,
            &[
                node("node-1", None),
                node("node-2", None),
                node("node-3", None),
            ],
        );
        let loads: Vec<(String, usize)> = report
            .node_loads
            .iter()
            .map(|l| (l.node.clone(), l.vips))
            .collect();
        assert_eq!(
            loads,
            [
                ("node-1".into(), 1),
                ("node-2".into(), 1),
                ("node-3".into(), 0)
            ]
        );
        assert!(
            report
                .render_table()
                .contains("Layer 2 VIPs per node: node-1 1, node-2 1, node-3 0 (spread 1)"),
            "{}",
            report.render_table()
        );
    }

    fn node(name: &str, peers: Option<&str>) -> Node {
        let annotations = match peers {
            Some(p) => json!({BGP_PEERS_ANNOTATION: p}),
            None => json!({}),
        };
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
            .unwrap()
    }

    #[test]
    fn bgp_sessions_follow_the_vip_table() {
        let services = vec![svc("web", &["192.0.2.10"], json!({ANNOUNCED_BY: "node-2"}))];
        let nodes = vec![
            node("node-2", Some("tor-b=Active,tor-a=Established")),
            node("node-1", Some("tor-a=Established")),
            node("node-3", None),
        ];
        let report = StatusReport::new(&services, &nodes);
        assert_eq!(
            report
                .bgp_peers
                .iter()
                .map(|r| format!("{} {} {}", r.node, r.peer, r.state))
                .collect::<Vec<_>>(),
            vec![
                "node-1 tor-a Established",
                "node-2 tor-a Established",
                "node-2 tor-b Active"
            ]
        );
        let table = report.render_table();
        let (vips, peers) = table
            .split_once("\n\n")
            .expect("a blank line between tables");
        assert!(vips.starts_with("SERVICE"), "{table}");
        let peers: Vec<&str> = peers.lines().collect();
        assert_eq!(peers[0], "NODE    PEER   STATE");
        assert_eq!(peers[3], "node-2  tor-b  Active");
        let parsed = serde_json::to_value(&report).unwrap();
        assert_eq!(parsed["services"][0]["owners"][0], "node-2");
        assert_eq!(parsed["bgpPeers"][2]["state"], "Active");

        // Without sessions there is no second table, but JSON still has the (empty) list.
        let report = StatusReport::new(&services, &[node("node-1", None)]);
        assert_eq!(
            report.render_table(),
            render_table(&report.services) + &render_loads(&report.node_loads)
        );
        assert_eq!(
            serde_json::to_value(&report).unwrap()["bgpPeers"],
            json!([])
        );
    }

    #[test]
    fn each_nodes_proxy_mode_is_listed_and_its_change_is_a_line_of_the_watch() {
        let moded = |name: &str, mode: Option<&str>| -> Node {
            let annotations = match mode {
                Some(m) => json!({PROXY_MODE_ANNOTATION: m}),
                None => json!({}),
            };
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
                .unwrap()
        };
        let services = vec![svc("web", &["192.0.2.10"], json!({ANNOUNCED_BY: "node-1"}))];
        let before = StatusReport::new(
            &services,
            &[
                moded("node-2", Some("ipvs")),
                moded("node-1", Some("ipvs")),
                moded("node-3", None),
            ],
        );
        assert!(
            before
                .render_table()
                .contains("kube-proxy mode per node: node-1 ipvs, node-2 ipvs\n"),
            "{}",
            before.render_table()
        );
        assert_eq!(
            serde_json::to_value(&before).unwrap()["proxyModes"][1],
            json!({"node": "node-2", "mode": "ipvs"})
        );
        let after = StatusReport::new(
            &services,
            &[
                moded("node-2", Some("nftables")),
                moded("node-1", Some("ipvs")),
                moded("node-3", None),
            ],
        );
        let lines: Vec<String> = changes(&before, &after)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines, vec!["proxy    node-2  kube-proxy ipvs -> nftables"]);
        // Without any published mode, the line is left out, and so is the JSON field.
        let none = StatusReport::new(&services, &[moded("node-1", None)]);
        assert!(!none.render_table().contains("kube-proxy"));
        assert!(
            serde_json::to_value(&none)
                .unwrap()
                .get("proxyModes")
                .is_none()
        );
    }
}
