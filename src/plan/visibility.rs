//! What the cluster is told about announcements, answering "where is my VIP?": the node annotation
//! `ironlb.io/vips`, the Service annotation `ironlb.io/announced-by`, and [`Moved`], the owner changes behind the
//! `nodeAssigned` Events and the failover measurement.
//!
//! Values only: the writers compare them with what the objects carry and write only on change
//! (`docs/design.md#visibility`). Computed from the owner map, so that every agent agrees on them whichever one writes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::input::{GroupKey, VipGroup};
use crate::alloc::ServiceKey;

/// Node annotation: the VIPs the node announces.
pub const VIPS_ANNOTATION: &str = "ironlb.io/vips";
/// Service annotation: the node announcing the Service's VIPs.
pub const ANNOUNCED_BY_ANNOTATION: &str = "ironlb.io/announced-by";
/// Service annotation, for a Service announced over both Layer 2 and BGP: the nodes advertising it over BGP,
/// comma-separated (`announced-by` names its Layer 2 owner). A BGP-only Service has them in `announced-by`.
pub const BGP_ADVERTISED_BY_ANNOTATION: &str = "ironlb.io/bgp-advertised-by";
/// The interfaces the owner answers ARP/NDP on, comma-separated.
pub const ANNOUNCED_ON_ANNOTATION: &str = "ironlb.io/announced-on";
/// When the current owner took the VIP over, RFC 3339.
pub const ANNOUNCED_SINCE_ANNOTATION: &str = "ironlb.io/announced-since";
/// Why the current owner took the VIP over: `new` (nobody announced it), `owner-gone`, `hand-off`, `not-candidate`
/// (the previous owner may no longer announce it) or `level`; the cause of `ironlb_vip_moves_total`.
pub const ANNOUNCED_CAUSE_ANNOTATION: &str = "ironlb.io/announced-cause";
/// Node annotation: the node's BGP sessions, `PEER=STATE` comma-separated in peer order (RFC 4271 state names).
/// Absent when the node has no session.
pub const BGP_PEERS_ANNOTATION: &str = "ironlb.io/bgp-peers";
/// Node annotation: the mode kube-proxy runs in on the node (`ipvs`, `nftables`, `iptables`, or `unknown`), as its
/// agent last read it (see `netif::proxy_mode`). `ironlb status` lists it per node.
pub const PROXY_MODE_ANNOTATION: &str = "ironlb.io/kube-proxy-mode";

/// The [`BGP_PEERS_ANNOTATION`] value for `sessions` (BGPPeer name, RFC 4271 state), given the `previous` value.
///
/// A session that cannot reach its peer cycles through Idle, Connect and Active on every retry; writing each of
/// those would rewrite the Node every few seconds for as long as the peer is down. So a peer that was not
/// Established and still is not keeps its previous state; the value changes when a session appears, goes away,
/// or reaches or leaves Established.
pub fn bgp_peers<'a>(
    previous: &str,
    sessions: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let before: BTreeMap<String, String> = parse_bgp_peers(previous).into_iter().collect();
    let now: BTreeMap<&str, &str> = sessions
        .into_iter()
        .map(|(peer, state)| {
            let kept = before
                .get(peer)
                .filter(|was| *was != ESTABLISHED && state != ESTABLISHED);
            (peer, kept.map_or(state, String::as_str))
        })
        .collect();
    now.iter()
        .map(|(peer, state)| format!("{peer}={state}"))
        .collect::<Vec<_>>()
        .join(",")
}

const ESTABLISHED: &str = "Established";

/// The (peer, state) pairs of a [`BGP_PEERS_ANNOTATION`] value, in its order. Entries without `=` or with an
/// empty name are skipped: the value is read back from the API, where anyone with Node write access may edit it.
pub fn parse_bgp_peers(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(peer, state)| (peer.trim().to_string(), state.trim().to_string()))
        .filter(|(peer, _)| !peer.is_empty())
        .collect()
}

/// The [`VIPS_ANNOTATION`] value of `node`: every IP of the groups it owns, sorted (IPv4 first, then numerically),
/// comma-separated; empty when it owns none.
pub fn node_vips(node: &str, groups: &[VipGroup], owners: &BTreeMap<GroupKey, String>) -> String {
    let ips: BTreeSet<IpAddr> = groups
        .iter()
        .filter(|g| owners.get(&g.key).map(String::as_str) == Some(node))
        .flat_map(|g| g.ips.iter().copied())
        .collect();
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A [`VIPS_ANNOTATION`] value with `more` VIPs added (those a node advertises over BGP), in the same order.
pub fn merge_vips(value: &str, more: &BTreeSet<IpAddr>) -> String {
    let mut ips: BTreeSet<IpAddr> = value.split(',').filter_map(|s| s.parse().ok()).collect();
    ips.extend(more.iter().copied());
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The [`ANNOUNCED_BY_ANNOTATION`] value of every Service whose group has an owner. A Service missing here is
/// announced by no node, and its annotation is removed.
pub fn announced_by(
    groups: &[VipGroup],
    owners: &BTreeMap<GroupKey, String>,
) -> BTreeMap<ServiceKey, String> {
    groups
        .iter()
        .filter_map(|g| owners.get(&g.key).map(|owner| (g, owner)))
        .flat_map(|(g, owner)| g.services.keys().map(|s| (s.clone(), owner.clone())))
        .collect()
}

/// A group whose owner changed between two owner maps. `from: None` is a group newly announced, `to: None` one no
/// longer announced by anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub group: GroupKey,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Every group whose owner differs between `before` and `after`, in key order.
pub fn moved(
    before: &BTreeMap<GroupKey, String>,
    after: &BTreeMap<GroupKey, String>,
) -> Vec<Moved> {
    let keys: BTreeSet<&GroupKey> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (from, to) = (before.get(k), after.get(k));
            (from != to).then(|| Moved {
                group: *k,
                from: from.cloned(),
                to: to.cloned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::owner::testing::group;

    fn owners(pairs: &[(&VipGroup, &str)]) -> BTreeMap<GroupKey, String> {
        pairs.iter().map(|(g, n)| (g.key, n.to_string())).collect()
    }

    #[test]
    fn the_node_annotation_lists_the_owned_vips_sorted() {
        let mut dual = group(5, &["n1"]);
        dual.ips.push("2001:db8::5".parse().unwrap());
        let groups = vec![
            dual,
            group(0, &["n1"]),
            group(300, &["n1"]),
            group(1, &["n2"]),
        ];
        let o = owners(&[
            (&groups[0], "n1"),
            (&groups[1], "n1"),
            (&groups[2], "n1"),
            (&groups[3], "n2"),
        ]);
        assert_eq!(
            node_vips("n1", &groups, &o),
            "192.0.2.1,192.0.2.6,198.51.100.47,2001:db8::5"
        );
        assert_eq!(node_vips("n3", &groups, &o), "");
    }

    #[test]
    fn bgp_peers_are_sorted_and_read_back() {
        let value = bgp_peers("", [("tor-b", "Active"), ("tor-a", "Established")]);
        assert_eq!(value, "tor-a=Established,tor-b=Active");
        assert_eq!(
            parse_bgp_peers(&value),
            vec![
                ("tor-a".to_string(), "Established".to_string()),
                ("tor-b".to_string(), "Active".to_string())
            ]
        );
        assert_eq!(bgp_peers(&value, []), "", "no session, no value");
        assert_eq!(
            parse_bgp_peers("=Idle,garbage, tor = Connect"),
            vec![("tor".to_string(), "Connect".to_string())]
        );
    }

    #[test]
    fn a_retrying_session_keeps_its_first_down_state() {
        // Connect and Active alternate while the peer is unreachable: no new value, so no Node write.
        assert_eq!(bgp_peers("tor=Active", [("tor", "Connect")]), "tor=Active");
        assert_eq!(bgp_peers("tor=Connect", [("tor", "Idle")]), "tor=Connect");
        // Reaching or leaving Established is always written.
        assert_eq!(
            bgp_peers("tor=Active", [("tor", "Established")]),
            "tor=Established"
        );
        assert_eq!(bgp_peers("tor=Established", [("tor", "Idle")]), "tor=Idle");
        // A new peer shows its own state.
        assert_eq!(
            bgp_peers("tor=Active", [("tor", "Connect"), ("spine", "OpenSent")]),
            "spine=OpenSent,tor=Active"
        );
    }

    #[test]
    fn every_service_of_an_owned_group_names_its_owner() {
        let mut shared = group(0, &["n1"]);
        shared
            .services
            .insert(ServiceKey::new("default", "other"), shared.ips.clone());
        let unowned = group(1, &[]);
        let groups = vec![shared, unowned];
        let o = owners(&[(&groups[0], "n2")]);
        let by = announced_by(&groups, &o);
        assert_eq!(by.len(), 2);
        assert!(by.values().all(|n| n == "n2"));
    }

    #[test]
    fn moved_lists_changed_new_and_dropped_owners() {
        let (a, b, c, d) = (group(0, &[]), group(1, &[]), group(2, &[]), group(3, &[]));
        let before = owners(&[(&a, "n1"), (&b, "n1"), (&c, "n2")]);
        let after = owners(&[(&a, "n1"), (&b, "n2"), (&d, "n3")]);
        assert_eq!(
            moved(&before, &after),
            vec![
                Moved {
                    group: b.key,
                    from: Some("n1".into()),
                    to: Some("n2".into())
                },
                Moved {
                    group: c.key,
                    from: Some("n2".into()),
                    to: None
                },
                Moved {
                    group: d.key,
                    from: None,
                    to: Some("n3".into())
                },
            ]
        );
        assert!(moved(&after, &after).is_empty());
    }
}
