//! VM tier: a BGPPeer with `vrf`, against FRR and against BIRD. The node namespace holds a Linux VRF device `red` (table 10) with the
//! link to the router enslaved to it, so the router's subnet is reachable only through the VRF: the default table
//! has no route to it. IronLB's session, bound to `red`, comes up, and FRR receives the route with the node's
//! address in the VRF as its next hop; the same session without the VRF cannot reach the router at all. BFD runs in
//! the VRF too: IronLB's session and the router's BFD (FRR's bfdd, BIRD's `protocol bfd`) both see it Up.
//!
//! Runs only inside the VM that `scripts/vm-test` boots (`IRONLB_VM=1`): the host kernel has no VRF devices.
//! Namespaces and daemons are removed on drop, also on failure.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use ironlb::bfd::codec::BfdState;
use ironlb::bfd::fsm::Profile;
use ironlb::bfd::transport::{Bfd, BfdPeer, wait_for};
use ironlb::bgp::codec::RouteAttrs;
use ironlb::bgp::fsm::{FsmConfig, PeerAs, State};
use ironlb::bgp::session::{RouteSet, SessionConfig};
use ironlb::lab::bgp::{
    Daemon, Neighbor, NsSpeaker, Router, RouterConfig, parse_bird_bfd, parse_frr_bfd,
};
use ironlb::lab::netns::in_netns;

fn in_vm() -> bool {
    if std::env::var("IRONLB_VM").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: needs the VM tier (scripts/vm-test)");
    false
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?}: {status}");
}

/// The node and router namespaces; deleted on drop.
struct Namespaces {
    node: String,
    router: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.node, &self.router] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `tag` tells apart the tests of this file, which run at the same time.
fn namespaces(tag: &str) -> Namespaces {
    let id = std::process::id();
    let ns = Namespaces {
        node: format!("ilb-vrf{tag}-node-{id}"),
        router: format!("ilb-vrf{tag}-rtr-{id}"),
    };
    let (node, router) = (ns.node.as_str(), ns.router.as_str());
    // The VRF driver is a module in the VM's kernel.
    let _ = Command::new("modprobe").arg("vrf").status();
    sh(&["ip", "netns", "add", node]);
    sh(&["ip", "netns", "add", router]);
    for n in [node, router] {
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip", "-n", node, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns",
        router,
    ]);
    sh(&[
        "ip", "-n", node, "link", "add", "red", "type", "vrf", "table", "10",
    ]);
    sh(&["ip", "-n", node, "link", "set", "red", "up"]);
    sh(&["ip", "-n", node, "link", "set", "eth1", "master", "red"]);
    sh(&[
        "ip",
        "-n",
        node,
        "addr",
        "add",
        "192.0.2.2/24",
        "dev",
        "eth1",
    ]);
    sh(&["ip", "-n", node, "link", "set", "eth1", "up"]);
    sh(&[
        "ip",
        "-n",
        router,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", router, "link", "set", "eth0", "up"]);
    ns
}

fn session(vrf: Option<&str>) -> SessionConfig {
    SessionConfig {
        name: "router".into(),
        peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 179),
        source: None,
        password: None,
        ttl: 1,
        connect_timeout: Duration::from_secs(2),
        alt_next_hop: None,
        vrf: vrf.map(str::to_string),
        fsm: FsmConfig {
            local_asn: 64497,
            peer_as: PeerAs::Fixed(64496),
            router_id: Ipv4Addr::new(192, 0, 2, 2),
            hold_time: 9,
            keepalive: None,
            connect_retry: Duration::from_millis(500),
            graceful_restart: None,
            ipv4: true,
            ipv6: false,
            extended_next_hop: false,
            restarted: true,
        },
    }
}

#[test]
fn a_session_bound_to_its_vrf_reaches_frr_and_the_route_has_the_vrf_address_as_next_hop() {
    if !in_vm() {
        return;
    }
    in_vrf_against(Daemon::Frr, "f");
}

#[test]
fn a_session_bound_to_its_vrf_reaches_bird_and_the_route_has_the_vrf_address_as_next_hop() {
    if !in_vm() {
        return;
    }
    in_vrf_against(Daemon::Bird, "b");
}

fn in_vrf_against(daemon: Daemon, tag: &str) {
    let ns = namespaces(tag);
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(
        daemon,
        &ns.router,
        dir.path(),
        RouterConfig {
            asn: 64496,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: vec![Neighbor {
                address: "192.0.2.2".parse().unwrap(),
                asn: 64497,
                password: None,
                multihop: false,
                interface: None,
            }],
            graceful_restart: false,
            bfd: true,
        },
    )
    .expect("the router starts in its namespace");
    let routes: RouteSet = [(
        "198.51.100.10/32".parse().unwrap(),
        RouteAttrs {
            local_pref: None,
            communities: Default::default(),
        },
    )]
    .into_iter()
    .collect();

    // Without the VRF, the default table has no route to the router: the session never comes up.
    let outside = NsSpeaker::start(&ns.node, session(None), routes.clone()).unwrap();
    let established = outside.wait(Duration::from_secs(3), |s| s.state == State::Established);
    let status = outside.status();
    drop(outside);
    println!("without the VRF: {status:?}");
    assert!(!established, "the session came up outside the VRF");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("unreachable")),
        "{status:?}"
    );

    // Bound to `red`: Established, and the route arrives with the node's VRF address as next hop.
    let inside = NsSpeaker::start(&ns.node, session(Some("red")), routes).unwrap();
    assert!(
        inside.wait(Duration::from_secs(60), |s| s.state == State::Established),
        "the session in VRF red did not come up: {:?}\n{}",
        inside.status(),
        router.log()
    );
    let want: IpAddr = "192.0.2.2".parse().unwrap();
    let (ok, seen) = router.wait_routes(Duration::from_secs(30), |r| {
        r.iter()
            .any(|r| r.prefix == "198.51.100.10/32".parse().unwrap() && r.next_hop == want)
    });
    println!("{} holds: {seen:?}", daemon.name());
    assert!(
        ok,
        "198.51.100.10/32 via 192.0.2.2 never reached {}: {seen:#?}",
        daemon.name()
    );

    // BFD in the VRF: IronLB's sockets bound to `red`, the router's BFD on the far side (FRR's `neighbor ... bfd`,
    // BIRD's `bfd on`).
    let prefix = router.cli_prefix();
    // The list as JSON from FRR (`show bfd peers json`), as text from BIRD.
    let list: Vec<String> = match daemon {
        Daemon::Bird => router.bfd_command().iter().map(|s| s.to_string()).collect(),
        _ => vec!["-c".into(), "show bfd peers json".into()],
    };
    let (up, frr) = in_netns(&ns.node, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut bfd = Bfd::start_in(Some("red")).unwrap();
            let link = bfd
                .session(BfdPeer {
                    peer: "192.0.2.1".parse().unwrap(),
                    local: None,
                    multihop: false,
                    interface: None,
                    minimum_ttl: 254,
                    profile: Profile::default(),
                    vrf: Some("red".into()),
                })
                .unwrap();
            let up = wait_for(&link, BfdState::Up, Duration::from_secs(60)).await;
            // bfdd's view, read while IronLB's side is still up.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let frr = loop {
                let out = Command::new(&prefix[0])
                    .args(&prefix[1..])
                    .args(&list)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let sessions = match daemon {
                    Daemon::Bird => parse_bird_bfd(&text),
                    _ => parse_frr_bfd(&text),
                }
                .unwrap_or_default();
                let seen = sessions
                    .iter()
                    .any(|s| s.peer.to_string() == "192.0.2.2" && s.is_up());
                if seen || std::time::Instant::now() > deadline {
                    break sessions;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            (up, frr)
        })
    })
    .unwrap();
    println!(
        "BFD in VRF red: IronLB's side Up: {up}; {}: {frr:?}",
        daemon.name()
    );
    assert!(up, "IronLB's BFD session in VRF red did not come up");
    assert!(
        frr.iter()
            .any(|s| s.peer.to_string() == "192.0.2.2" && s.is_up()),
        "{} does not list 192.0.2.2 Up: {frr:?}",
        daemon.name()
    );

    // A VRF that does not exist: the error names it.
    let missing = NsSpeaker::start(&ns.node, session(Some("blue")), RouteSet::new()).unwrap();
    missing.wait(Duration::from_secs(3), |s| s.last_error.is_some());
    let status = missing.status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("VRF device \"blue\"")),
        "{status:?}"
    );
}
