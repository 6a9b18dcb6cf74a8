//! What a node writes about its own announcements: its Node annotations, the annotations of the Services it owns,
//! and the `nodeAssigned` / `AnnouncementFailed` Events.
//!
//! Every node writes only about itself: its own Node, and the Services whose VIPs it owns. So no two agents write
//! the same field, and no leader is needed. A new owner overwrites the previous owner's Service annotations. As with
//! allocation, the writes are computed here as values from what the cluster already says, and nothing is written
//! when it already says it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde_json::{Map, Value, json};

use super::allocation::ServiceAction;
use super::events::Note;
use super::index::ObjectKey;
use super::state::ClusterState;
use crate::plan::NodePlan;
use crate::plan::input::{
    CANNOT_ANSWER_ANNOTATION, CANNOT_FORWARD_ANNOTATION, HANDING_OFF_ANNOTATION, SUBNETS_ANNOTATION,
};
use crate::plan::visibility::{
    ANNOUNCED_BY_ANNOTATION, ANNOUNCED_CAUSE_ANNOTATION, ANNOUNCED_ON_ANNOTATION,
    ANNOUNCED_SINCE_ANNOTATION, BGP_PEERS_ANNOTATION, PROXY_MODE_ANNOTATION, VIPS_ANNOTATION,
};

/// What a node says about itself in its Node annotations.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeAnnotations<'a> {
    /// [`VIPS_ANNOTATION`], written even when empty.
    pub vips: &'a str,
    /// [`SUBNETS_ANNOTATION`], written even when empty.
    pub subnets: &'a str,
    /// [`BGP_PEERS_ANNOTATION`]; empty (no session) removes it.
    pub bgp_peers: &'a str,
    /// [`CANNOT_ANSWER_ANNOTATION`]; empty removes it.
    pub cannot_answer: &'a str,
    /// [`CANNOT_FORWARD_ANNOTATION`]; empty removes it.
    pub cannot_forward: &'a str,
    /// [`HANDING_OFF_ANNOTATION`]; empty removes it.
    pub handing_off: &'a str,
    /// [`PROXY_MODE_ANNOTATION`]; empty removes it.
    pub proxy_mode: &'a str,
}

/// The merge patch for this node's own Node object, or None when its annotations already say `wanted`, or when
/// the Node is not (yet) known: there is nothing to annotate then.
pub fn node_patch(node: Option<&Node>, wanted: &NodeAnnotations) -> Option<Value> {
    let annotations = node?.metadata.annotations.as_ref();
    let current = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let mut patch = Map::new();
    for (key, value) in [
        (VIPS_ANNOTATION, wanted.vips),
        (SUBNETS_ANNOTATION, wanted.subnets),
    ] {
        if current(key) != Some(value) {
            patch.insert(key.to_string(), Value::String(value.to_string()));
        }
    }
    // These are absent rather than empty.
    for (key, value) in [
        (BGP_PEERS_ANNOTATION, wanted.bgp_peers),
        (CANNOT_ANSWER_ANNOTATION, wanted.cannot_answer),
        (CANNOT_FORWARD_ANNOTATION, wanted.cannot_forward),
        (HANDING_OFF_ANNOTATION, wanted.handing_off),
        (PROXY_MODE_ANNOTATION, wanted.proxy_mode),
    ] {
        match current(key) {
            // A merge patch removes a key set to null.
            Some(_) if value.is_empty() => {
                patch.insert(key.to_string(), Value::Null);
            }
            None if value.is_empty() => {}
            now if now != Some(value) => {
                patch.insert(key.to_string(), Value::String(value.to_string()));
            }
            _ => {}
        }
    }
    (!patch.is_empty()).then(|| json!({ "metadata": { "annotations": patch } }))
}

/// Remembers which problems were already reported, so Events are not repeated every pass.
#[derive(Debug, Default)]
pub struct AnnouncementNotes {
    failed: BTreeSet<std::net::IpAddr>,
}

/// The Service writes for the Services this node owns: `announced-by` this node, `announced-on` its interfaces, and
/// `announced-since` when it took over, with a `nodeAssigned` Event on takeover. VIPs it owns but cannot announce
/// get one `AnnouncementFailed` Event each.
pub fn service_actions(
    state: &ClusterState,
    node: &str,
    plan: &NodePlan,
    notes: &mut AnnouncementNotes,
    now: Timestamp,
) -> Vec<ServiceAction> {
    let mut actions = Vec::new();
    for (service, ips) in &plan.owned_services {
        let key = ObjectKey::new(service.namespace.clone(), service.name.clone());
        let Some(svc) = state.services.get(&key) else {
            continue;
        };
        let interfaces: BTreeSet<&str> = ips
            .iter()
            .filter_map(|ip| plan.announce.get(ip))
            .flatten()
            .map(String::as_str)
            .collect();
        let failed: Vec<_> = ips
            .iter()
            .filter(|ip| plan.unannounceable.contains(ip))
            .collect();
        let mut action_notes = Vec::new();
        for ip in &failed {
            if notes.failed.insert(**ip) {
                action_notes.push(Note::warning(
                    "AnnouncementFailed",
                    format!(
                        "node {node} owns {ip} but has no usable interface whose subnet contains it"
                    ),
                ));
            }
        }
        if interfaces.is_empty() {
            if !action_notes.is_empty() {
                actions.push(ServiceAction {
                    service: key,
                    reference: svc.object_ref(&()),
                    status: None,
                    metadata: None,
                    notes: action_notes,
                });
            }
            continue;
        }
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let on = interfaces.iter().copied().collect::<Vec<_>>().join(",");
        let takeover = annotations.get(ANNOUNCED_BY_ANNOTATION).map(String::as_str) != Some(node);
        let mut patch = Map::new();
        if takeover {
            patch.insert(ANNOUNCED_BY_ANNOTATION.into(), json!(node));
            patch.insert(ANNOUNCED_SINCE_ANNOTATION.into(), json!(now.to_string()));
            // The agent names the cause of a move from another node in the same write (`Moves::explain`).
            patch.insert(ANNOUNCED_CAUSE_ANNOTATION.into(), json!("new"));
            action_notes.push(Note::normal(
                "nodeAssigned",
                format!("announcing from node {node} on interface {on}"),
            ));
        }
        if annotations.get(ANNOUNCED_ON_ANNOTATION) != Some(&on) {
            patch.insert(ANNOUNCED_ON_ANNOTATION.into(), json!(on));
        }
        if patch.is_empty() && action_notes.is_empty() {
            continue;
        }
        actions.push(ServiceAction {
            service: key,
            reference: svc.object_ref(&()),
            status: None,
            metadata: (!patch.is_empty()).then(|| json!({ "metadata": { "annotations": patch } })),
            notes: action_notes,
        });
    }
    let still_failed: BTreeSet<_> = plan.unannounceable.iter().copied().collect();
    notes.failed.retain(|ip| still_failed.contains(ip));
    actions
}

/// The reference Events about this node are attached to.
pub fn node_reference(node: &str, state: &ClusterState) -> ObjectReference {
    state
        .nodes
        .get(&ObjectKey::new("", node))
        .map(|n| n.object_ref(&()))
        .unwrap_or_else(|| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        })
}

/// Node names whose Ready condition is True, for the membership fallback.
pub fn ready_nodes(state: &ClusterState) -> BTreeSet<String> {
    state
        .nodes
        .values()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// Gossip seeds: every Node's first InternalIP with the gossip port.
pub fn gossip_seeds(state: &ClusterState, port: u16) -> BTreeMap<String, std::net::SocketAddr> {
    state
        .nodes
        .values()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let ip = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<std::net::IpAddr>().ok())?;
            Some((name, std::net::SocketAddr::new(ip, port)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch for the annotations other than the proxy mode, positionally.
    fn node_patch(
        node: Option<&Node>,
        vips: &str,
        subnets: &str,
        bgp_peers: &str,
        cannot_answer: &str,
        handing_off: &str,
    ) -> Option<Value> {
        super::node_patch(
            node,
            &NodeAnnotations {
                vips,
                subnets,
                bgp_peers,
                cannot_answer,
                cannot_forward: "",
                handing_off,
                proxy_mode: "",
            },
        )
    }

    #[test]
    fn a_node_that_cannot_forward_says_why_until_it_can() {
        let why = "the direct data plane has no IPVS in this kernel";
        let mut node: Node =
            serde_json::from_value(json!({"metadata": {"name": "node-1", "annotations": {
            VIPS_ANNOTATION: "", SUBNETS_ANNOTATION: ""}}}))
            .unwrap();
        let wanted = |cannot_forward| NodeAnnotations {
            cannot_forward,
            ..Default::default()
        };
        assert_eq!(
            super::node_patch(Some(&node), &wanted(why)),
            Some(json!({"metadata": {"annotations": {CANNOT_FORWARD_ANNOTATION: why}}}))
        );
        node.metadata
            .annotations
            .get_or_insert_default()
            .insert(CANNOT_FORWARD_ANNOTATION.into(), why.into());
        assert_eq!(super::node_patch(Some(&node), &wanted(why)), None);
        assert_eq!(
            super::node_patch(Some(&node), &wanted("")),
            Some(json!({"metadata": {"annotations": {CANNOT_FORWARD_ANNOTATION: null}}}))
        );
    }

    #[test]
    fn the_proxy_mode_follows_what_the_node_last_saw() {
        let mut node: Node =
            serde_json::from_value(json!({"metadata": {"name": "node-1", "annotations": {
            VIPS_ANNOTATION: "", SUBNETS_ANNOTATION: ""}}}))
            .unwrap();
        let wanted = |proxy_mode| NodeAnnotations {
            proxy_mode,
            ..Default::default()
        };
        assert_eq!(
            super::node_patch(Some(&node), &wanted("ipvs")),
            Some(json!({"metadata": {"annotations": {PROXY_MODE_ANNOTATION: "ipvs"}}}))
        );
        node.metadata
            .annotations
            .get_or_insert_default()
            .insert(PROXY_MODE_ANNOTATION.into(), "ipvs".into());
        assert_eq!(super::node_patch(Some(&node), &wanted("ipvs")), None);
        assert_eq!(
            super::node_patch(Some(&node), &wanted("nftables")),
            Some(json!({"metadata": {"annotations": {PROXY_MODE_ANNOTATION: "nftables"}}})),
            "a node moved off IPVS says so with no restart"
        );
    }
    use crate::alloc::ServiceKey;
    use k8s_openapi::api::core::v1::Service;

    fn service(name: &str, rv: &str, annotations: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv, "annotations": annotations},
        }))
        .unwrap()
    }

    fn plan_owning(name: &str, ip: &str, ifaces: &[&str]) -> NodePlan {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let mut plan = NodePlan::default();
        plan.owned_services
            .insert(ServiceKey::new("shop", name), vec![ip]);
        if ifaces.is_empty() {
            plan.unannounceable.insert(ip);
        } else {
            plan.announce
                .insert(ip, ifaces.iter().map(|s| s.to_string()).collect());
        }
        plan
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn takeover_writes_owner_interface_and_since_with_an_event_once() {
        let mut state = ClusterState::default();
        state.services.apply(service(
            "web",
            "1",
            json!({ANNOUNCED_BY_ANNOTATION: "node-1"}),
        ));
        let plan = plan_owning("web", "192.0.2.10", &["eth0"]);
        let mut notes = AnnouncementNotes::default();
        let actions = service_actions(&state, "node-2", &plan, &mut notes, now());
        assert_eq!(actions.len(), 1);
        let patch = actions[0].metadata.as_ref().unwrap();
        assert_eq!(
            patch["metadata"]["annotations"][ANNOUNCED_BY_ANNOTATION],
            "node-2"
        );
        assert_eq!(
            patch["metadata"]["annotations"][ANNOUNCED_ON_ANNOTATION],
            "eth0"
        );
        assert_eq!(
            patch["metadata"]["annotations"][ANNOUNCED_SINCE_ANNOTATION],
            now().to_string()
        );
        assert_eq!(
            patch["metadata"]["annotations"][ANNOUNCED_CAUSE_ANNOTATION],
            "new"
        );
        assert_eq!(actions[0].notes[0].reason, "nodeAssigned");
        assert_eq!(
            actions[0].notes[0].message,
            "announcing from node node-2 on interface eth0"
        );

        // Once the Service says so, nothing more is written.
        state.services.apply(service(
            "web",
            "2",
            json!({ANNOUNCED_BY_ANNOTATION: "node-2", ANNOUNCED_ON_ANNOTATION: "eth0", ANNOUNCED_SINCE_ANNOTATION: "x"}),
        ));
        assert!(service_actions(&state, "node-2", &plan, &mut notes, now()).is_empty());
    }

    #[test]
    fn an_unannounceable_vip_is_reported_once() {
        let mut state = ClusterState::default();
        state.services.apply(service("web", "1", json!({})));
        let plan = plan_owning("web", "192.0.2.10", &[]);
        let mut notes = AnnouncementNotes::default();
        let first = service_actions(&state, "node-1", &plan, &mut notes, now());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].notes[0].reason, "AnnouncementFailed");
        assert!(
            first[0].metadata.is_none(),
            "nothing is claimed for a VIP that is not announced"
        );
        assert!(service_actions(&state, "node-1", &plan, &mut notes, now()).is_empty());
    }

    #[test]
    fn the_node_patch_carries_only_what_changed() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "node-1", "annotations": {VIPS_ANNOTATION: "192.0.2.10", SUBNETS_ANNOTATION: "192.0.2.0/24"}}
        }))
        .unwrap();
        assert_eq!(
            node_patch(Some(&node), "192.0.2.10", "192.0.2.0/24", "", "", ""),
            None
        );
        assert_eq!(
            node_patch(Some(&node), "", "192.0.2.0/24", "", "", ""),
            Some(json!({"metadata": {"annotations": {VIPS_ANNOTATION: ""}}}))
        );
        assert_eq!(
            node_patch(None, "", "", "", "", ""),
            None,
            "a Node not seen yet is not patched"
        );
    }

    #[test]
    fn the_bgp_peers_annotation_is_written_on_change_and_removed_without_sessions() {
        let node = |peers: Option<&str>| -> Node {
            let mut annotations = json!({VIPS_ANNOTATION: "", SUBNETS_ANNOTATION: ""});
            if let Some(p) = peers {
                annotations[BGP_PEERS_ANNOTATION] = json!(p);
            }
            serde_json::from_value(
                json!({"metadata": {"name": "node-1", "annotations": annotations}}),
            )
            .unwrap()
        };
        let up = "tor=Established";
        assert_eq!(
            node_patch(Some(&node(None)), "", "", up, "", ""),
            Some(json!({"metadata": {"annotations": {BGP_PEERS_ANNOTATION: up}}}))
        );
        assert_eq!(
            node_patch(Some(&node(Some(up))), "", "", up, "", ""),
            None,
            "no write while the value stands"
        );
        assert_eq!(
            node_patch(Some(&node(Some(up))), "", "", "tor=Idle", "", ""),
            Some(json!({"metadata": {"annotations": {BGP_PEERS_ANNOTATION: "tor=Idle"}}}))
        );
        assert_eq!(
            node_patch(Some(&node(Some(up))), "", "", "", "", ""),
            Some(json!({"metadata": {"annotations": {BGP_PEERS_ANNOTATION: null}}})),
            "the last session gone, the annotation goes"
        );
        assert_eq!(node_patch(Some(&node(None)), "", "", "", "", ""), None);
    }

    #[test]
    fn a_node_that_cannot_answer_says_why_until_it_can() {
        let why = "strict ARP is not effective: arp_ignore";
        let mut node: Node =
            serde_json::from_value(json!({"metadata": {"name": "node-1", "annotations": {
            VIPS_ANNOTATION: "", SUBNETS_ANNOTATION: ""}}}))
            .unwrap();
        assert_eq!(
            node_patch(Some(&node), "", "", "", why, ""),
            Some(json!({"metadata": {"annotations": {CANNOT_ANSWER_ANNOTATION: why}}}))
        );
        node.metadata
            .annotations
            .get_or_insert_default()
            .insert(CANNOT_ANSWER_ANNOTATION.into(), why.into());
        assert_eq!(node_patch(Some(&node), "", "", "", why, ""), None);
        assert_eq!(
            node_patch(Some(&node), "", "", "", "", ""),
            Some(json!({"metadata": {"annotations": {CANNOT_ANSWER_ANNOTATION: null}}}))
        );
    }

    #[test]
    fn a_stopping_agent_marks_its_node_handing_off_and_a_new_one_clears_it() {
        let mut node: Node =
            serde_json::from_value(json!({"metadata": {"name": "node-1", "annotations": {
            VIPS_ANNOTATION: "", SUBNETS_ANNOTATION: ""}}}))
            .unwrap();
        let why = "agent stopping";
        assert_eq!(
            node_patch(Some(&node), "", "", "", "", why),
            Some(json!({"metadata": {"annotations": {HANDING_OFF_ANNOTATION: why}}}))
        );
        node.metadata
            .annotations
            .get_or_insert_default()
            .insert(HANDING_OFF_ANNOTATION.into(), why.into());
        assert_eq!(node_patch(Some(&node), "", "", "", "", why), None);
        assert_eq!(
            node_patch(Some(&node), "", "", "", "", ""),
            Some(json!({"metadata": {"annotations": {HANDING_OFF_ANNOTATION: null}}})),
            "the restarted agent takes the node back"
        );
    }
}
