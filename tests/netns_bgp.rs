//! BGP interop with real routing daemons (BIRD, GoBGP, FRR), each in its own network namespace with a config the
//! test writes, routes checked through the daemon's own CLI. IronLB's side is the real session code, running in
//! node namespaces. Needs root; CI runs as root and installs the daemons (scripts/setup).
//!
//! Topology: the lab's switch namespace (192.0.2.1, 2001:db8::1) is the router and runs the daemon; node-1..3
//! (192.0.2.11..13) are speakers. The multihop test adds a namespace behind the client namespace, which routes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ironlb::bgp::codec::RouteAttrs;
use ironlb::bgp::fsm::{FsmConfig, PeerAs, State};
use ironlb::bgp::session::{RouteSet, SessionConfig};
use ironlb::lab::bgp::{Daemon, Neighbor, NsSpeaker, PeerRoute, Router, RouterConfig};
use ironlb::lab::cluster::is_root;
use ironlb::lab::topology::{Topology, run, run_in};

const ROUTER_AS: u32 = 64496;
const NODE_AS: u32 = 64497;
const WAIT: Duration = Duration::from_secs(20);

fn skip() -> bool {
    let missing: Vec<&str> = ["gobgpd", "bird", "vtysh"]
        .into_iter()
        .filter(|b| run(&["sh", "-c", &format!("command -v {b}")]).is_err())
        .collect();
    if !is_root() {
        println!("skipped: needs root to create network namespaces");
        return true;
    }
    // The daemons are part of the test environment (scripts/setup installs them): their absence is a failure.
    assert!(
        missing.is_empty(),
        "routing daemons missing: {missing:?}; run scripts/setup"
    );
    false
}

fn topo(tag: &str, nodes: usize) -> Topology {
    let t = Topology::create(&format!("ilb-bgp-{}-{tag}", std::process::id()), nodes).unwrap();
    run_in(
        &t.switch,
        &["ip", "addr", "add", "2001:db8::1/64", "dev", "br0", "nodad"],
    )
    .unwrap();
    t
}

fn session(
    name: &str,
    local_asn: u32,
    peer_as: PeerAs,
    node: u8,
    password: Option<&str>,
    ttl: u32,
) -> SessionConfig {
    SessionConfig {
        name: name.into(),
        peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 179),
        source: None,
        password: password.map(str::to_string),
        ttl,
        connect_timeout: Duration::from_secs(2),
        alt_next_hop: Some(format!("2001:db8::{:x}", 0x10 + node).parse().unwrap()),
        vrf: None,
        fsm: FsmConfig {
            local_asn,
            peer_as,
            router_id: Ipv4Addr::new(192, 0, 2, 10 + node),
            hold_time: 9,
            keepalive: None,
            connect_retry: Duration::from_millis(500),
            graceful_restart: Some(120),
            ipv4: true,
            ipv6: true,
            extended_next_hop: false,
            restarted: true,
        },
    }
}

fn attrs(local_pref: Option<u32>) -> RouteAttrs {
    RouteAttrs {
        local_pref,
        communities: [
            "64496:10".parse().unwrap(),
            "large:64496:1:2".parse().unwrap(),
        ]
        .into(),
    }
}

fn routes(a: &RouteAttrs, prefixes: &[&str]) -> RouteSet {
    prefixes
        .iter()
        .map(|p| (p.parse().unwrap(), a.clone()))
        .collect()
}

fn from(routes: &[PeerRoute], prefix: &str, next_hop: &str) -> Option<PeerRoute> {
    let prefix = prefix.parse().unwrap();
    let nh: IpAddr = next_hop.parse().unwrap();
    routes
        .iter()
        .find(|r| r.prefix == prefix && r.next_hop == nh)
        .cloned()
}

fn established(s: &NsSpeaker) -> bool {
    s.wait(WAIT, |st| st.state == State::Established)
}

/// iBGP to BIRD: attributes, ECMP from two nodes, withdrawal, peer restart, graceful restart.
#[test]
fn bird_ibgp_ecmp_withdraw_restart_and_graceful_restart() {
    if skip() {
        return;
    }
    let t = topo("bird", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut router = Router::start(
        Daemon::Bird,
        &t.switch,
        dir.path(),
        RouterConfig {
            asn: ROUTER_AS,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: (1..=2)
                .map(|i| Neighbor {
                    address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + i)),
                    asn: ROUTER_AS,
                    password: None,
                    multihop: false,
                    interface: None,
                })
                .collect(),
            graceful_restart: true,
            bfd: false,
        },
    )
    .unwrap();
    let a = attrs(Some(150));
    let vips = ["203.0.113.5/32", "2001:db8:5::5/128"];
    let s1 = NsSpeaker::start(
        &t.nodes[0].netns,
        session("bird", ROUTER_AS, PeerAs::Internal, 1, None, 255),
        routes(&a, &vips),
    )
    .unwrap();
    let s2 = NsSpeaker::start(
        &t.nodes[1].netns,
        session("bird", ROUTER_AS, PeerAs::Internal, 2, None, 255),
        routes(&a, &vips),
    )
    .unwrap();
    assert!(
        established(&s1),
        "node-1: {:?}\n{}",
        s1.status(),
        router.log()
    );
    assert!(established(&s2), "node-2: {:?}", s2.status());

    // Both nodes' paths arrive (ECMP), with next hop = the node, local-pref and both kinds of communities.
    let want = |r: &[PeerRoute]| {
        from(r, vips[0], "192.0.2.11").is_some()
            && from(r, vips[0], "192.0.2.12").is_some()
            && from(r, vips[1], "2001:db8::11").is_some()
            && from(r, vips[1], "2001:db8::12").is_some()
    };
    let (ok, seen) = router.wait_routes(WAIT, want);
    assert!(ok, "routes at BIRD: {seen:#?}");
    let r = from(&seen, vips[0], "192.0.2.11").unwrap();
    assert_eq!(r.local_pref, Some(150));
    assert_eq!(r.communities, a.communities);
    assert_eq!(
        from(&seen, vips[1], "2001:db8::12").unwrap().communities,
        a.communities
    );

    // Node 2 stops announcing the IPv4 VIP: only its path goes.
    s2.set_routes(routes(&a, &vips[1..]));
    let (ok, seen) = router.wait_routes(WAIT, |r| {
        from(r, vips[0], "192.0.2.12").is_none() && from(r, vips[0], "192.0.2.11").is_some()
    });
    assert!(ok, "after withdrawal: {seen:#?}");
    assert!(from(&seen, vips[1], "2001:db8::12").is_some());

    // The peer restarts: the sessions come back and everything is sent again.
    router.restart().unwrap();
    let (ok, seen) = router.wait_routes(WAIT, |r| {
        from(r, vips[0], "192.0.2.11").is_some()
            && from(r, vips[1], "2001:db8::11").is_some()
            && from(r, vips[1], "2001:db8::12").is_some()
    });
    assert!(
        ok,
        "after BIRD restart: {seen:#?}\nnode-1: {:?}",
        s1.status()
    );
    assert!(s1.status().flaps >= 1);

    // Graceful restart: node 1 goes away without a Cease (an agent restart); BIRD keeps its routes, and they are
    // still there once the new session is up.
    s1.stop(true);
    std::thread::sleep(Duration::from_millis(1500));
    let seen = router.routes().unwrap();
    assert!(
        from(&seen, vips[0], "192.0.2.11").is_some(),
        "BIRD dropped the routes of a gracefully restarting node: {seen:#?}"
    );
    let s1 = NsSpeaker::start(
        &t.nodes[0].netns,
        session("bird", ROUTER_AS, PeerAs::Internal, 1, None, 255),
        routes(&a, &vips),
    )
    .unwrap();
    assert!(established(&s1));
    let (ok, seen) = router.wait_routes(WAIT, |r| from(r, vips[0], "192.0.2.11").is_some());
    assert!(ok, "{seen:#?}");
    // A hard stop (Cease) makes the peer drop the routes at once.
    s1.stop(false);
    let (ok, seen) = router.wait_routes(WAIT, |r| from(r, vips[0], "192.0.2.11").is_none());
    assert!(
        ok,
        "routes of a node that stopped for good are still there: {seen:#?}"
    );
    drop(s2);
}

/// eBGP to GoBGP with TCP MD5, a wrong password that fails cleanly, and a multihop session through a router.
#[test]
fn gobgp_ebgp_md5_wrong_password_and_multihop() {
    if skip() {
        return;
    }
    let t = topo("gobgp", 2);
    // A namespace two hops from the router: far (198.51.100.2) -> client ns (routes) -> switch (the router).
    let far = format!("{}-far", t.prefix);
    let _far_guard = NetnsGuard::add(&far);
    run_in(
        &t.client,
        &[
            "ip", "link", "add", "v-far", "type", "veth", "peer", "name", "eth0", "netns", &far,
        ],
    )
    .unwrap();
    run_in(
        &t.client,
        &["ip", "addr", "add", "198.51.100.1/24", "dev", "v-far"],
    )
    .unwrap();
    run_in(&t.client, &["ip", "link", "set", "v-far", "up"]).unwrap();
    run_in(&t.client, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    run_in(
        &far,
        &["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"],
    )
    .unwrap();
    run_in(&far, &["ip", "link", "set", "eth0", "up"]).unwrap();
    run_in(
        &far,
        &["ip", "route", "add", "default", "via", "198.51.100.1"],
    )
    .unwrap();
    run_in(
        &t.switch,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.100",
        ],
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(
        Daemon::Gobgp,
        &t.switch,
        dir.path(),
        RouterConfig {
            asn: ROUTER_AS,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: vec![
                Neighbor {
                    address: "192.0.2.11".parse().unwrap(),
                    asn: NODE_AS,
                    password: Some("s3cret-md5".into()),
                    multihop: false,
                    interface: None,
                },
                Neighbor {
                    address: "192.0.2.12".parse().unwrap(),
                    asn: NODE_AS,
                    password: Some("s3cret-md5".into()),
                    multihop: false,
                    interface: None,
                },
                Neighbor {
                    address: "198.51.100.2".parse().unwrap(),
                    asn: NODE_AS,
                    password: None,
                    multihop: true,
                    interface: None,
                },
            ],
            graceful_restart: false,
            bfd: false,
        },
    )
    .unwrap();
    let a = attrs(Some(150));
    let good = NsSpeaker::start(
        &t.nodes[0].netns,
        session(
            "gobgp",
            NODE_AS,
            PeerAs::Fixed(ROUTER_AS),
            1,
            Some("s3cret-md5"),
            1,
        ),
        routes(&a, &["203.0.113.7/32", "2001:db8:7::7/128"]),
    )
    .unwrap();
    let bad = NsSpeaker::start(
        &t.nodes[1].netns,
        session(
            "gobgp",
            NODE_AS,
            PeerAs::Fixed(ROUTER_AS),
            2,
            Some("wrong"),
            1,
        ),
        routes(&a, &["203.0.113.8/32"]),
    )
    .unwrap();
    let mut far_session = session(
        "gobgp-multihop",
        NODE_AS,
        PeerAs::Fixed(ROUTER_AS),
        3,
        None,
        255,
    );
    far_session.alt_next_hop = None;
    let multihop = NsSpeaker::start(&far, far_session, routes(&a, &["203.0.113.9/32"])).unwrap();

    assert!(
        established(&good),
        "MD5 session: {:?}\n{}",
        good.status(),
        router.log()
    );
    let (ok, seen) = router.wait_routes(WAIT, |r| {
        from(r, "203.0.113.7/32", "192.0.2.11").is_some()
            && from(r, "2001:db8:7::7/128", "2001:db8::11").is_some()
    });
    assert!(ok, "routes at GoBGP: {seen:#?}");
    let r = from(&seen, "203.0.113.7/32", "192.0.2.11").unwrap();
    assert_eq!(r.communities, a.communities);
    assert_eq!(r.local_pref, None, "LOCAL_PREF is not sent to eBGP peers");

    assert!(
        established(&multihop),
        "multihop session: {:?}",
        multihop.status()
    );
    let (ok, seen) = router.wait_routes(WAIT, |r| {
        from(r, "203.0.113.9/32", "198.51.100.2").is_some()
    });
    assert!(ok, "multihop route: {seen:#?}");

    // The wrong password: the peer's kernel drops our SYNs; the session reports the failure and keeps retrying.
    assert!(
        bad.wait(WAIT, |s| s
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out"))),
        "{:?}",
        bad.status()
    );
    assert_ne!(bad.status().state, State::Established);
    assert!(from(&router.routes().unwrap(), "203.0.113.8/32", "192.0.2.12").is_none());
    let first = bad.status().last_error;
    assert!(
        bad.wait(Duration::from_secs(10), |s| s.state == State::Connect),
        "no retry: {:?} (first error {first:?})",
        bad.status()
    );
}

/// eBGP to FRR: routes with next hop and communities; the session is re-established after FRR restarts.
#[test]
fn frr_ebgp_routes_and_restart() {
    if skip() {
        return;
    }
    let t = topo("frr", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut router = Router::start(
        Daemon::Frr,
        &t.switch,
        dir.path(),
        RouterConfig {
            asn: ROUTER_AS,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: vec![Neighbor {
                address: "192.0.2.11".parse().unwrap(),
                asn: 65540,
                password: None,
                multihop: false,
                interface: None,
            }],
            graceful_restart: true,
            bfd: false,
        },
    )
    .unwrap();
    let a = attrs(None);
    let s = NsSpeaker::start(
        &t.nodes[0].netns,
        session("frr", 65540, PeerAs::External, 1, None, 1),
        routes(&a, &["203.0.113.20/32", "2001:db8:20::1/128"]),
    )
    .unwrap();
    assert!(established(&s), "{:?}", s.status());
    let want = |r: &[PeerRoute]| {
        from(r, "203.0.113.20/32", "192.0.2.11").is_some()
            && from(r, "2001:db8:20::1/128", "2001:db8::11").is_some()
    };
    let (ok, seen) = router.wait_routes(WAIT, want);
    assert!(ok, "routes at FRR: {seen:#?}");
    assert_eq!(
        from(&seen, "203.0.113.20/32", "192.0.2.11")
            .unwrap()
            .communities,
        a.communities
    );
    router.restart().unwrap();
    let (ok, seen) = router.wait_routes(WAIT, want);
    assert!(ok, "after FRR restart: {seen:#?} {:?}", s.status());
}

/// Deletes a namespace the test added outside the topology, also when the test fails.
struct NetnsGuard(String);

impl NetnsGuard {
    fn add(name: &str) -> NetnsGuard {
        run(&["ip", "netns", "add", name]).unwrap();
        run_in(name, &["ip", "link", "set", "lo", "up"]).unwrap();
        NetnsGuard(name.to_string())
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

/// The IPv6 link-local address of `link` in `netns`.
fn link_local(netns: &str, link: &str) -> std::net::Ipv6Addr {
    let out = run_in(
        netns,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", link, "scope", "link",
        ],
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on {link} in {netns}: {text}"))
}

/// Unnumbered eBGP, as MetalLB configures a BGPPeer with `interface`: IronLB finds the router from its Router
/// Advertisements (and advertises itself, which FRR needs before it accepts the connection), the session runs
/// between link-local addresses, and the router holds the IPv4 route with an IPv6 next hop (RFC 8950). Against FRR
/// (`neighbor <if> interface`) the route also reaches zebra's kernel table and carries a ping; against BIRD (dynamic
/// BGP from the link's link-local range, `radv` advertising it) the routes are checked in BIRD's table.
fn unnumbered(daemon: Daemon, tag: &str, vip: &str, vip6: &str) {
    let t = topo(tag, 1);
    let node = &t.nodes[0].netns;
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(
        daemon,
        &t.switch,
        dir.path(),
        RouterConfig {
            asn: ROUTER_AS,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: vec![Neighbor {
                address: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                asn: NODE_AS,
                password: None,
                multihop: false,
                interface: Some("br0".into()),
            }],
            graceful_restart: false,
            bfd: false,
        },
    )
    .unwrap();
    // The VIP, on the node, for the data path check.
    run_in(
        node,
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    )
    .unwrap();
    let mut config = session("unnumbered", NODE_AS, PeerAs::Fixed(ROUTER_AS), 1, None, 1);
    // What the agent's plan gives an `interface` peer: the port only, both families, RFC 8950, no IPv4 next hop.
    config.peer = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 179);
    config.alt_next_hop = None;
    config.fsm.extended_next_hop = true;
    let a = attrs(None);
    let started = std::time::Instant::now();
    let s = NsSpeaker::start_unnumbered(
        node,
        ironlb::lab::topology::UPLINK,
        config,
        routes(&a, &[&format!("{vip}/32"), &format!("{vip6}/128")]),
    )
    .unwrap();
    let heard = started.elapsed();
    assert!(established(&s), "{:?}\n{}", s.status(), router.log());
    println!(
        "{}: router heard after {heard:?}, session Established after {:?}",
        daemon.name(),
        started.elapsed()
    );
    let ours = link_local(node, ironlb::lab::topology::UPLINK).to_string();
    let want = |r: &[PeerRoute]| {
        from(r, &format!("{vip}/32"), &ours).is_some()
            && from(r, &format!("{vip6}/128"), &ours).is_some()
    };
    let (ok, seen) = router.wait_routes(WAIT, want);
    assert!(
        ok,
        "routes at {}, next hop {ours} wanted: {seen:#?}\n{}",
        daemon.name(),
        router.log()
    );
    if daemon == Daemon::Frr {
        // zebra installed the IPv4 route through the IPv6 next hop, and traffic follows it.
        let route = run_in(&t.switch, &["ip", "route", "show", vip]).unwrap();
        let route = String::from_utf8_lossy(&route.stdout).to_string();
        assert!(
            route.contains(&format!("via inet6 {ours}")) && route.contains("dev br0"),
            "kernel route at the router: {route:?}"
        );
        let ping = run_in(&t.switch, &["ping", "-c", "1", "-W", "2", vip]);
        assert!(ping.is_ok(), "ping through the IPv6 next hop: {ping:?}");
    }
    // A withdrawal reaches the router.
    s.set_routes(RouteSet::new());
    let (ok, seen) = router.wait_routes(WAIT, |r| r.is_empty());
    assert!(ok, "after withdrawal: {seen:#?}");
    s.stop(false);
}

#[test]
fn frr_unnumbered_ipv4_over_an_ipv6_next_hop() {
    if skip() {
        return;
    }
    unnumbered(Daemon::Frr, "unfrr", "203.0.113.30", "2001:db8:30::1");
}

#[test]
fn bird_unnumbered_ipv4_over_an_ipv6_next_hop() {
    if skip() {
        return;
    }
    unnumbered(Daemon::Bird, "unbird", "203.0.113.31", "2001:db8:31::1");
}
