//! BGP mode end to end: two real `ironlb agent` processes in the lab (node namespaces, lab API server) peer with a
//! real BIRD in the switch namespace, configured by BGPPeer and BGPAdvertisement objects. A Local Service's route
//! comes only from the node with its endpoint and follows the endpoint when it moves; the visibility annotations
//! list the BGP-advertised VIP and the sessions `ironlb status` shows. Needs root and bird2 (scripts/setup).

mod netns_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ironlb::config::crd::{BFDProfile, BGPAdvertisement, BGPPeer};
use ironlb::lab::bgp::{Daemon, PeerRoute, Router, RouterConfig, node_neighbors};
use ironlb::lab::cluster::Lab;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use netns_support::{Logs, skip};
use serde_json::json;

type RoutePred = dyn Fn(&[PeerRoute]) -> bool + Send;

fn from(routes: &[PeerRoute], vip: IpAddr, next_hop: &str) -> bool {
    let nh: IpAddr = next_hop.parse().unwrap();
    routes
        .iter()
        .any(|r| r.prefix == ipnet::IpNet::from(vip) && r.next_hop == nh)
}

/// A router of `daemon` in the lab's switch namespace (AS 64496, 192.0.2.1) expecting every node in AS `node_as`,
/// with a BFD session beside each (FRR) when `bfd`.
fn router(lab: &Lab, daemon: Daemon, dir: &std::path::Path, node_as: u32, bfd: bool) -> Router {
    tokio::task::block_in_place(|| {
        Router::start(
            daemon,
            &lab.topology.switch,
            dir,
            RouterConfig {
                asn: 64496,
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                neighbors: node_neighbors(lab, node_as, None),
                graceful_restart: false,
                bfd,
            },
        )
    })
    .unwrap()
}

/// The BGPPeer `router` (to 192.0.2.1, AS 64496) with `spec` merged into its spec, and the BGPAdvertisement
/// `router` of the lab pool with `adv_spec`.
async fn configure_bgp(lab: &Lab, spec: serde_json::Value, adv_spec: serde_json::Value) {
    let pp = PostParams::default();
    let mut peer_spec = json!({"peerASN": 64496, "peerAddress": "192.0.2.1", "connectTime": "1s"});
    for (k, v) in spec.as_object().unwrap() {
        peer_spec[k] = v.clone();
    }
    let peer: BGPPeer = serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
        "metadata": {"name": "router", "namespace": "metallb-system"},
        "spec": peer_spec,
    }))
    .unwrap();
    Api::<BGPPeer>::namespaced(lab.client.clone(), "metallb-system")
        .create(&pp, &peer)
        .await
        .unwrap();
    let mut adv_spec = adv_spec;
    adv_spec["ipAddressPools"] = json!(["lab"]);
    let adv: BGPAdvertisement = serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
        "metadata": {"name": "router", "namespace": "metallb-system"},
        "spec": adv_spec,
    }))
    .unwrap();
    Api::<BGPAdvertisement>::namespaced(lab.client.clone(), "metallb-system")
        .create(&pp, &adv)
        .await
        .unwrap();
}

/// The BFDProfile `fast` with `spec`.
async fn bfd_profile(lab: &Lab, spec: serde_json::Value) {
    let bfd: BFDProfile = serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile",
        "metadata": {"name": "fast", "namespace": "metallb-system"},
        "spec": spec,
    }))
    .unwrap();
    Api::<BFDProfile>::namespaced(lab.client.clone(), "metallb-system")
        .create(&PostParams::default(), &bfd)
        .await
        .unwrap();
}

/// The ingress IPs of `default/<name>` once it has `count` of them (at most 30 s).
async fn service_ips(lab: &Lab, name: &str, count: usize) -> Vec<IpAddr> {
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ips: Vec<IpAddr> = services
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.ip.as_ref()?.parse().ok())
            .collect();
        if ips.len() >= count {
            return ips;
        }
        assert!(Instant::now() < deadline, "{name} got {ips:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_service_route_follows_its_endpoint() {
    if skip() {
        return;
    }
    let lab = Lab::start(netns_support::options("ilb-bgpa", 2, 0, "enforce", &[]))
        .await
        .unwrap();
    let _logs = Logs::of(&lab);
    let dir = tempfile::tempdir().unwrap();
    let router = router(&lab, Daemon::Bird, dir.path(), 64497, false);
    bfd_profile(&lab, json!({})).await;
    configure_bgp(
        &lab,
        json!({"myASN": 64497, "bfdProfile": "fast"}),
        json!({"communities": ["64497:7"]}),
    )
    .await;
    lab.create_demo_service("web", false, true, Some(&["node-1"]))
        .await
        .unwrap();
    let vip = service_ips(&lab, "web", 1).await[0];

    let wait = |pred: Box<RoutePred>| {
        tokio::task::block_in_place(|| router.wait_routes(Duration::from_secs(30), pred))
    };
    let (ok, seen) = wait(Box::new(move |r| {
        from(r, vip, "192.0.2.11") && !from(r, vip, "192.0.2.12")
    }));
    assert!(
        ok,
        "route of {vip} from node-1 only: {seen:#?}\n{}",
        router.log()
    );
    let route = seen
        .iter()
        .find(|r| r.prefix == ipnet::IpNet::from(vip))
        .unwrap();
    assert!(route.communities.contains(&"64497:7".parse().unwrap()));

    // Visibility: node-1 lists the VIP in ironlb.io/vips.
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = nodes.get("node-1").await.unwrap();
        let vips = n
            .metadata
            .annotations
            .unwrap_or_default()
            .get("ironlb.io/vips")
            .cloned()
            .unwrap_or_default();
        if vips.split(',').any(|v| v == vip.to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-1 ironlb.io/vips is {vips:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `ironlb status` shows both nodes' sessions to the router as Established, read back from the Nodes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = nodes.list(&Default::default()).await.unwrap().items;
        let report = ironlb::k8s::report::StatusReport::new(&[], &listed);
        let peers: Vec<String> = report
            .bgp_peers
            .iter()
            .map(|r| format!("{} {} {}", r.node, r.peer, r.state))
            .collect();
        if peers == ["node-1 router Established", "node-2 router Established"] {
            assert!(
                report.render_table().contains("NODE    PEER    STATE"),
                "{}",
                report.render_table()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BGP sessions in ironlb status: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // MetalLB's BGP and speaker metrics say the same: both sessions up, the route announced from node-1 alone.
    let up = "metallb_bgp_session_up{peer=\"192.0.2.1:179\"} 1";
    let announced = format!(
        "metallb_speaker_announced{{service=\"default/web\",protocol=\"bgp\",node=\"node-1\",ip=\"{vip}\"}} 1"
    );
    let prefixes = "metallb_bgp_announced_prefixes_total{peer=\"192.0.2.1:179\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (one, two) = (
            lab.metrics("node-1").unwrap(),
            lab.metrics("node-2").unwrap(),
        );
        let lines = |t: &str, l: &str| t.lines().any(|x| x == l);
        if lines(&one, up) && lines(&two, up) && lines(&one, &announced) && lines(&one, prefixes) {
            assert!(
                !two.contains("service=\"default/web\""),
                "node-2 announces web:\n{two}"
            );
            assert!(
                one.contains("metallb_bgp_updates_total{peer=\"192.0.2.1:179\"}"),
                "{one}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "MetalLB's metrics on node-1:\n{one}\non node-2:\n{two}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // MetalLB's ServiceBGPStatus: node-1 advertises web to the BGPPeer router.
    bgp_status_is(&lab, &[("node-1", "router")]).await;

    // The endpoint moves to node-2: node-1 withdraws, node-2 advertises.
    lab.set_endpoints("web", &["node-2"]).await.unwrap();
    let (ok, seen) = wait(Box::new(move |r| {
        from(r, vip, "192.0.2.12") && !from(r, vip, "192.0.2.11")
    }));
    assert!(ok, "after the endpoint moved: {seen:#?}");
    bgp_status_is(&lab, &[("node-2", "router")]).await;

    // The bfdProfile started a BFD session; BIRD here runs no BFD, so it never comes Up, and BGP runs regardless
    // (only a Down after Up resets a BGP session).
    let log = std::fs::read_to_string(lab.agent_log("node-1")).unwrap_or_default();
    assert!(
        log.contains("starting BFD session"),
        "no BFD session started for the bfdProfile"
    );
}

/// Waits (10 s at most) until the ServiceBGPStatus objects of `default/web` are exactly one per `(node, peer)` given.
async fn bgp_status_is(lab: &Lab, want: &[(&str, &str)]) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        lab.client.clone(),
        "ironlb-system",
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "metallb.io",
            "v1beta1",
            "ServiceBGPStatus",
        )),
    );
    let want: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|(n, p)| (n.to_string(), vec![p.to_string()]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut have: Vec<(String, Vec<String>)> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|o| o.data["status"]["serviceName"] == "web")
            .map(|o| {
                let status = &o.data["status"];
                let peers = status["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect();
                (status["node"].as_str().unwrap_or("?").to_string(), peers)
            })
            .collect();
        have.sort();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ServiceBGPStatus of web: {have:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `localASN` and the address families as MetalLB defines them, against FRR. FRR expects the nodes in AS 64999, the
/// BGPPeer's `localASN`, not its `myASN` 64497: the sessions come up only if IronLB presents it, and FRR's default
/// enforce-first-as also checks the AS path of every route. A dual-stack Service over the IPv4 sessions: only its
/// IPv4 route arrives, until `dualStackAddressFamily` brings the IPv6 one, with each node's IPv6 address as next hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_asn_and_address_families_against_frr() {
    if skip() {
        return;
    }
    let lab = Lab::start(netns_support::options("ilb-bgpl", 2, 0, "enforce", &[]))
        .await
        .unwrap();
    let _logs = Logs::of(&lab);
    let dir = tempfile::tempdir().unwrap();
    let router = router(&lab, Daemon::Frr, dir.path(), 64999, false);
    configure_bgp(&lab, json!({"myASN": 64497, "localASN": 64999}), json!({})).await;
    let peers: Api<BGPPeer> = Api::namespaced(lab.client.clone(), "metallb-system");
    lab.create_demo_service("dual", true, false, None)
        .await
        .unwrap();
    let vips = service_ips(&lab, "dual", 2).await;
    let v4 = *vips.iter().find(|ip| ip.is_ipv4()).unwrap();
    let v6 = *vips.iter().find(|ip| ip.is_ipv6()).unwrap();
    let wait = |pred: Box<RoutePred>, limit: Duration| {
        tokio::task::block_in_place(|| router.wait_routes(limit, pred))
    };
    let (ok, seen) = wait(
        Box::new(move |r| from(r, v4, "192.0.2.11") && from(r, v4, "192.0.2.12")),
        Duration::from_secs(30),
    );
    assert!(
        ok,
        "{v4} from both nodes, whose sessions present AS 64999: {seen:#?}\n{}",
        router.log()
    );
    // The same-family default: the IPv6 route stays off the IPv4 sessions (watched for 3 s after the IPv4 route
    // came, which took the same sessions and pass).
    let (leaked, seen) = wait(
        Box::new(move |r| r.iter().any(|r| r.prefix == ipnet::IpNet::from(v6))),
        Duration::from_secs(3),
    );
    assert!(!leaked, "{v6} reached FRR over an IPv4 session: {seen:#?}");

    let patch = json!({"spec": {"dualStackAddressFamily": true}});
    peers
        .patch(
            "router",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let (ok, seen) = wait(
        Box::new(move |r| {
            from(r, v4, "192.0.2.11") && from(r, v6, "2001:db8::11") && from(r, v6, "2001:db8::12")
        }),
        Duration::from_secs(30),
    );
    assert!(
        ok,
        "with dualStackAddressFamily, {v6} from both nodes over IPv4 sessions: {seen:#?}\n{}",
        router.log()
    );
}

/// FRR's view of the session with `node_ip`: `show bgp neighbors <ip> json`.
fn frr_neighbor(router: &Router, node_ip: &str) -> serde_json::Value {
    let text = router
        .cli(&["-c", &format!("show bgp neighbors {node_ip} json")])
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()[node_ip].clone()
}

/// Leaving gracefully (RFC 8326), against FRR. A cordoned node's routes carry GRACEFUL_SHUTDOWN (65535:0) while it
/// still advertises them, and lose it when uncordoned; a node labelled exclude-from-external-load-balancers marks
/// its routes first and withdraws them after `--bgp-shutdown-grace`; the agent of a cordoned node told to stop
/// withdraws its routes before it closes the session with a Cease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_nodes_mark_their_routes_graceful_shutdown_then_withdraw() {
    if skip() {
        return;
    }
    leaving_gracefully(Daemon::Frr, "ilb-bgpg").await;
}

/// The same against BIRD, which reads the community the same way; the session's end is read from BIRD's
/// `show protocols all` ("Received: Administrative shutdown").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_nodes_mark_their_routes_graceful_shutdown_then_withdraw_against_bird() {
    if skip() {
        return;
    }
    leaving_gracefully(Daemon::Bird, "ilb-bgpgb").await;
}

async fn leaving_gracefully(daemon: Daemon, prefix: &str) {
    let mut lab = Lab::start(netns_support::options(prefix, 2, 0, "enforce", &[]))
        .await
        .unwrap();
    let _logs = Logs::of(&lab);
    let dir = tempfile::tempdir().unwrap();
    let router = router(&lab, daemon, dir.path(), 64497, false);
    configure_bgp(&lab, json!({"myASN": 64497}), json!({})).await;
    lab.create_demo_service("web", false, false, None)
        .await
        .unwrap();
    let vip = service_ips(&lab, "web", 1).await[0];
    let gshut: ironlb::config::community::CommunityValue = "65535:0".parse().unwrap();
    // Whether the route via `next_hop` is there, and whether it carries GRACEFUL_SHUTDOWN.
    let via = move |r: &[PeerRoute], next_hop: &str| -> Option<bool> {
        let nh: IpAddr = next_hop.parse().unwrap();
        r.iter()
            .find(|r| r.prefix == ipnet::IpNet::from(vip) && r.next_hop == nh)
            .map(|r| r.communities.contains(&gshut))
    };
    let wait = |pred: Box<RoutePred>, limit: Duration| {
        tokio::task::block_in_place(|| router.wait_routes(limit, pred))
    };
    let (ok, seen) = wait(
        Box::new(move |r| {
            via(r, "192.0.2.11") == Some(false) && via(r, "192.0.2.12") == Some(false)
        }),
        Duration::from_secs(30),
    );
    assert!(
        ok,
        "{vip} from both nodes, unmarked: {seen:#?}\n{}",
        router.log()
    );

    let nodes: Api<Node> = Api::all(lab.client.clone());
    let set = |node: &'static str, patch: serde_json::Value| {
        let nodes = nodes.clone();
        async move {
            nodes
                .patch(
                    node,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .unwrap();
        }
    };
    // Cordoned: node-1 still advertises, marked; node-2 is not.
    set("node-1", json!({"spec": {"unschedulable": true}})).await;
    let (ok, seen) = wait(
        Box::new(move |r| {
            via(r, "192.0.2.11") == Some(true) && via(r, "192.0.2.12") == Some(false)
        }),
        Duration::from_secs(10),
    );
    assert!(ok, "cordoned node-1's route marked 65535:0: {seen:#?}");
    set("node-1", json!({"spec": {"unschedulable": false}})).await;
    let (ok, seen) = wait(
        Box::new(move |r| via(r, "192.0.2.11") == Some(false)),
        Duration::from_secs(10),
    );
    assert!(ok, "uncordoned node-1's route unmarked again: {seen:#?}");

    // Excluded: node-2 marks its route first, and withdraws it after the grace (3 s by default).
    let label = "node.kubernetes.io/exclude-from-external-load-balancers";
    let excluded_at = Instant::now();
    set("node-2", json!({"metadata": {"labels": {label: ""}}})).await;
    let (ok, seen) = wait(
        Box::new(move |r| via(r, "192.0.2.12") == Some(true)),
        Duration::from_secs(10),
    );
    assert!(
        ok,
        "excluded node-2's route marked before it goes: {seen:#?}"
    );
    let marked = excluded_at.elapsed();
    let (ok, seen) = wait(
        Box::new(move |r| via(r, "192.0.2.12").is_none() && via(r, "192.0.2.11") == Some(false)),
        Duration::from_secs(15),
    );
    assert!(
        ok,
        "excluded node-2's route withdrawn after the grace: {seen:#?}"
    );
    let withdrawn = excluded_at.elapsed();
    assert!(
        withdrawn >= Duration::from_secs(3),
        "withdrawn {withdrawn:?} after the exclusion, before the 3 s grace"
    );
    println!(
        "excluded node-2: route marked 65535:0 at {} {} ms after the label, withdrawn {} ms after it (polled)",
        daemon.name(),
        marked.as_millis(),
        withdrawn.as_millis()
    );

    // Drained: a cordoned node's agent told to stop withdraws, then closes with a Cease.
    set("node-1", json!({"spec": {"unschedulable": true}})).await;
    let (ok, seen) = wait(
        Box::new(move |r| via(r, "192.0.2.11") == Some(true)),
        Duration::from_secs(10),
    );
    assert!(ok, "cordoned node-1's route marked again: {seen:#?}");
    if daemon == Daemon::Bird {
        let stopped =
            tokio::task::block_in_place(|| lab.stop_agent("node-1", Duration::from_secs(15)));
        assert!(stopped.unwrap(), "node-1's agent did not stop within 15 s");
        let (ok, seen) = wait(
            Box::new(move |r| via(r, "192.0.2.11").is_none()),
            Duration::from_secs(10),
        );
        assert!(ok, "node-1's route gone after its agent stopped: {seen:#?}");
        // BIRD names its protocols after the neighbours in order: n1 is node-1.
        let protocol = tokio::task::block_in_place(|| {
            router
                .cli(&["show", "protocols", "all", "n1"])
                .unwrap_or_default()
        });
        assert!(
            protocol.contains("Administrative shutdown"),
            "the session did not end with a Cease (administrative shutdown): {protocol}"
        );
        return;
    }
    let updates = |n: &serde_json::Value| n["messageStats"]["updatesRecv"].as_u64().unwrap_or(0);
    let before = tokio::task::block_in_place(|| updates(&frr_neighbor(&router, "192.0.2.11")));
    let stopped = tokio::task::block_in_place(|| lab.stop_agent("node-1", Duration::from_secs(15)));
    assert!(stopped.unwrap(), "node-1's agent did not stop within 15 s");
    let (ok, seen) = wait(
        Box::new(move |r| via(r, "192.0.2.11").is_none()),
        Duration::from_secs(10),
    );
    assert!(ok, "node-1's route gone after its agent stopped: {seen:#?}");
    let neighbor = tokio::task::block_in_place(|| frr_neighbor(&router, "192.0.2.11"));
    assert!(
        updates(&neighbor) > before,
        "no UPDATE (the withdrawal) reached FRR between the stop and the session's end: {neighbor:#}"
    );
    println!(
        "FRR on node-1 after the stop: lastResetDueTo {}, lastNotificationReason {}",
        neighbor["lastResetDueTo"], neighbor["lastNotificationReason"]
    );
    assert!(
        neighbor["lastResetDueTo"]
            .as_str()
            .is_some_and(|r| r.contains("Notification received"))
            && neighbor["lastNotificationReason"]
                .as_str()
                .is_some_and(|r| r.contains("Cease")),
        "the session did not end with a Cease: {neighbor:#}"
    );
}

/// Waits (5 s at most) until `node`'s counter `name` for peer `router` is at least 1, and returns it.
async fn wait_counter(lab: &Lab, node: &str, name: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = lab.metrics(node).unwrap();
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{peer=\"router\"}} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if value >= 1.0 {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{node}'s {name} stayed 0:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// BFD beside the BGP sessions, against FRR's bgpd and bfdd: with a BFDProfile of 300 ms both ways and multiplier 3,
/// bfdd lists a session Up to every node with those intervals, and a node that dies (link cut, agent SIGKILLed)
/// loses its route at FRR within about a second, where BGP alone would keep it for the 90 s hold time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bfd_takes_a_dead_nodes_route_away_within_a_second() {
    if skip() {
        return;
    }
    let mut lab = Lab::start(netns_support::options("ilb-bgpf", 2, 0, "enforce", &[]))
        .await
        .unwrap();
    let _logs = Logs::of(&lab);
    let dir = tempfile::tempdir().unwrap();
    let router = router(&lab, Daemon::Frr, dir.path(), 64497, true);
    bfd_profile(
        &lab,
        json!({"receiveInterval": 300, "transmitInterval": 300, "detectMultiplier": 3}),
    )
    .await;
    configure_bgp(
        &lab,
        json!({"myASN": 64497, "bfdProfile": "fast"}),
        json!({}),
    )
    .await;
    lab.create_demo_service("web", false, false, None)
        .await
        .unwrap();
    let vip = service_ips(&lab, "web", 1).await[0];
    let wait = |pred: Box<RoutePred>, limit: Duration| {
        tokio::task::block_in_place(|| router.wait_routes(limit, pred))
    };
    let (ok, seen) = wait(
        Box::new(move |r| from(r, vip, "192.0.2.11") && from(r, vip, "192.0.2.12")),
        Duration::from_secs(30),
    );
    assert!(ok, "{vip} from both nodes: {seen:#?}\n{}", router.log());

    // bfdd's view: a session Up to each node, with the profile's intervals.
    let deadline = Instant::now() + Duration::from_secs(15);
    let peers = loop {
        let text = tokio::task::block_in_place(|| router.cli(&["-c", "show bfd peers json"]))
            .unwrap_or_default();
        let peers: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let up = |ip: &str| {
            peers.iter().any(|p| {
                p["peer"] == ip
                    && p["status"] == "up"
                    && p["remote-receive-interval"] == 300
                    && p["remote-transmit-interval"] == 300
                    && p["remote-detect-multiplier"] == 3
            })
        };
        if up("192.0.2.11") && up("192.0.2.12") {
            break peers;
        }
        assert!(
            Instant::now() < deadline,
            "bfdd's sessions to the nodes: {peers:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("bfdd: {} sessions Up with 300 ms / 300 ms / 3", peers.len());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab
        .metrics("node-1")
        .unwrap()
        .lines()
        .any(|l| l == "ironlb_bfd_session_up{peer=\"router\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "node-1's metrics lack ironlb_bfd_session_up 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // IronLB's side acts on BFD too: BFD alone cut on node-2 (its BGP session's TCP still flows) takes node-2's
    // BFD session Down, and its agent resets the BGP session at once, counting it; with BFD back, so is the route.
    let node2 = lab.node("node-2").unwrap().netns.clone();
    // One nft command per line, its words split at spaces (nft joins its arguments).
    let nft = |command: &str| {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &node2, "nft"])
            .args(command.split_whitespace())
            .status()
            .unwrap();
        assert!(status.success(), "nft {command}");
    };
    nft("add table inet ilb_bfd_cut");
    for (chain, hook) in [("i", "input"), ("o", "output")] {
        nft(&format!(
            "add chain inet ilb_bfd_cut {chain} {{ type filter hook {hook} priority 0 ; }}"
        ));
        for port in ["dport", "sport"] {
            nft(&format!(
                "add rule inet ilb_bfd_cut {chain} udp {port} {{ 3784, 4784 }} drop"
            ));
        }
    }
    let downs = wait_counter(&lab, "node-2", "ironlb_bfd_session_downs_total").await;
    nft("delete table inet ilb_bfd_cut");
    assert_eq!(downs, 1.0, "one BFD Down counted");
    // The reset counts as a flap of the session.
    wait_counter(&lab, "node-2", "ironlb_bgp_session_flaps_total").await;
    // The reset, in the agent's words: the BFD Down, the session stopped, and a new one started after it.
    let log = std::fs::read_to_string(lab.agent_log("node-2")).unwrap_or_default();
    let down = log
        .find("BFD session Down: resetting the BGP session")
        .expect("node-2's agent did not log the BFD Down");
    let after = &log[down..];
    assert!(
        after.contains("stopping BGP session") && after.contains("starting BGP session"),
        "node-2's agent did not restart its BGP session after the BFD Down:\n{after}"
    );
    let (ok, seen) = wait(
        Box::new(move |r| from(r, vip, "192.0.2.11") && from(r, vip, "192.0.2.12")),
        Duration::from_secs(30),
    );
    assert!(ok, "node-2's route back after BFD came back: {seen:#?}");
    println!(
        "BFD cut on node-2: its agent counted the Down and reset its BGP session; the route came back"
    );

    // node-1 dies: its link cut, then its agent SIGKILLed (after the cut, so that the kernel's FIN for the agent's
    // TCP socket cannot tell FRR either: only BFD or the hold time can).
    let node = lab.node("node-1").unwrap().clone();
    let cut = Instant::now();
    lab.topology.cut(&node).unwrap();
    lab.kill_agent("node-1");
    let (ok, seen) = wait(
        Box::new(move |r| !from(r, vip, "192.0.2.11") && from(r, vip, "192.0.2.12")),
        Duration::from_secs(10),
    );
    let gone = cut.elapsed();
    assert!(
        ok,
        "node-1's route still at FRR 10 s after its death: {seen:#?}"
    );
    println!(
        "node-1 killed and cut: its route gone from FRR {} ms later (BFD detection 900 ms; polled)",
        gone.as_millis()
    );
    assert!(
        gone < Duration::from_secs(3),
        "the route went after {gone:?}: BFD should take it within about a second"
    );
}

/// `ironlb lab --bgp bird --bfd`, as a user runs it: the demo lists BIRD's BFD sessions, one Up to every node with
/// the lab profile's intervals (300 ms, multiplier 3), and after it kills a node, BIRD holds no route via it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_with_bird_and_bfd_shows_every_node_up_and_drops_a_dead_nodes_routes() {
    if skip() {
        return;
    }
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args([
            "lab",
            "--nodes",
            "2",
            "--services",
            "2",
            "--bgp",
            "bird",
            "--bfd",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the lab ran for more than 240 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "the lab failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("BFD: bird lists 2 session(s), one Up to every node (`show bfd sessions`):"),
        "no BFD summary with every node Up"
    );
    for node in ["192.0.2.11", "192.0.2.12"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(node) && l.contains("sends every"))
            .unwrap_or_else(|| panic!("no BFD session line for {node}"));
        assert!(
            line.contains(" up ")
                && line.contains("sends every 300 ms, declares it Down after 900 ms"),
            "{line}"
        );
    }
    let after = text
        .lines()
        .find(|l| l.starts_with("BGP: bird ") && l.contains("its BFD session to"))
        .expect("no line on the dead node's routes");
    assert!(
        after.contains("holds no more route via node-") && after.ends_with(": down"),
        "{after}"
    );
}
