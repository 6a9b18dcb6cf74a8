//! Hostile ARP and NDP from the LAN, against real agents in the lab: truncated and malformed frames, spoofed claims
//! of a VIP the owner announces, and a flood of both. The owner must keep its VIPs and answer only with its own MAC;
//! its memory must stay bounded and its log rate-limited. Needs root; CI runs as root.
//!
//! The attack is sent from the client namespace on a packet socket; the client's watchers (`ironlb::lab::faults`)
//! see the attacker's frames too, so the analysis leaves the attacker's MAC out.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ironlb::arp::codec::{ArpOp, ArpPacket, Frame, MacAddr, NdpMessage, NdpPacket, solicited_node};
use ironlb::lab::cluster::{Lab, LabOptions, is_root};
use ironlb::lab::faults::{ArpWatch, metric, rss_kib};
use ironlb::lab::netns::in_netns;
use ironlb::lab::topology::{CLIENT_V4, CLIENT_V6, UPLINK, run_in};
use pnet::datalink::{self, Channel, DataLinkSender};

/// One lab at a time: the flood's figures must not share the two cores with another lab.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ATTACKER: MacAddr = MacAddr([0x02, 0x66, 0x66, 0x66, 0x66, 0x66]);

fn skip() -> bool {
    if !is_root() {
        println!("skipped: needs root to create network namespaces");
        return true;
    }
    false
}

fn sender(lab: &Lab) -> Box<dyn DataLinkSender> {
    in_netns(&lab.topology.client, || {
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.name == UPLINK)
            .expect("the client uplink");
        match datalink::channel(&iface, datalink::Config::default()) {
            Ok(Channel::Ethernet(tx, _)) => tx,
            _ => panic!("a packet socket on the client uplink"),
        }
    })
    .unwrap()
}

/// Frames that must be dropped as malformed: every truncation of a valid ARP request and NDP solicitation, and ARP
/// with wrong hardware or protocol lengths.
fn malformed(v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<Vec<u8>> {
    let arp = Frame::Arp(ArpPacket {
        eth_dst: MacAddr::BROADCAST,
        eth_src: ATTACKER,
        op: ArpOp::Request,
        sender_mac: ATTACKER,
        sender_ip: CLIENT_V4,
        target_mac: MacAddr::ZERO,
        target_ip: v4,
    })
    .encode();
    let ns = Frame::Ndp(NdpPacket {
        eth_dst: MacAddr::ipv6_multicast(solicited_node(v6)),
        eth_src: ATTACKER,
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 255,
        src: CLIENT_V6,
        dst: solicited_node(v6),
        message: NdpMessage::Solicitation {
            target: v6,
            source_mac: Some(ATTACKER),
        },
    })
    .encode();
    let mut frames = Vec::new();
    // Past the Ethernet header, every shorter length.
    for len in 15..arp.len() {
        frames.push(arp[..len].to_vec());
    }
    for len in 15..ns.len() {
        frames.push(ns[..len].to_vec());
    }
    // ARP hardware length 8, protocol length 16.
    let mut bad = arp.clone();
    bad[14 + 4] = 8;
    frames.push(bad);
    let mut bad = arp.clone();
    bad[14 + 5] = 16;
    frames.push(bad);
    // A solicitation with a corrupted ICMPv6 checksum.
    let mut bad = ns.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    frames.push(bad);
    frames
}

/// Frames claiming the VIPs for the attacker: gratuitous ARP, an unsolicited reply, an unsolicited NA.
fn spoofed(v4: Ipv4Addr, v6: Ipv6Addr) -> Vec<Vec<u8>> {
    let mut reply = ArpPacket::gratuitous_reply(ATTACKER, v4);
    reply.eth_src = ATTACKER;
    vec![
        Frame::Arp(ArpPacket::gratuitous_request(ATTACKER, v4)).encode(),
        Frame::Arp(reply).encode(),
        Frame::Ndp(NdpPacket::unsolicited_advertisement(ATTACKER, v6)).encode(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arp_and_ndp_neither_take_a_vip_nor_grow_the_agent() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let prefix = format!("ilb-h-{}", std::process::id());
    let lab = Lab::start(LabOptions {
        nodes: 2,
        services: 2,
        dir: std::env::temp_dir().join(&prefix),
        prefix,
        binary: env!("CARGO_BIN_EXE_ironlb").into(),
        strict_arp: "enforce".into(),
        agent_args: Vec::new(),
        pods: false,
        api: Default::default(),
        kube_proxy: None,
    })
    .await
    .unwrap();
    let dir = lab.options().dir.clone();
    // Where br_netfilter is loaded (it is on these hosts), the lab's bridge validates IPv6 and ARP headers and drops
    // truncated frames before any node sees them. A plain switch forwards them, so turn that off in the lab's switch
    // namespace (the knobs are per namespace) and let the agents face them.
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        for knob in ["arptables", "ip6tables", "iptables"] {
            let knob = format!("net.bridge.bridge-nf-call-{knob}=0");
            run_in(&lab.topology.switch, &["sysctl", "-qw", &knob]).unwrap();
        }
    }
    // Multicast snooping, too, drops malformed IPv6 multicast (a truncated solicitation) at the bridge.
    run_in(
        &lab.topology.switch,
        &[
            "ip",
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )
    .unwrap();
    lab.wait_announced(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rows = lab.status().await.unwrap();
    let dual = rows
        .iter()
        .find(|r| r.vips.len() == 2)
        .expect("the dual-stack Service");
    let owner = dual.owners[0].clone();
    let owner_mac = lab.node(&owner).unwrap().mac.clone();
    let v4: Ipv4Addr = dual.vips.iter().find_map(|v| v.parse().ok()).unwrap();
    let v6: Ipv6Addr = dual.vips.iter().find_map(|v| v.parse().ok()).unwrap();
    let all_v4: Vec<Ipv4Addr> = rows
        .iter()
        .flat_map(|r| r.vips.iter().filter_map(|v| v.parse().ok()))
        .collect();
    let pid = lab.agent_pid(&owner).unwrap();
    let log_lines = || {
        std::fs::read_to_string(lab.agent_log(&owner))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let counter = |name: &str| {
        let text = lab.metrics(&owner).unwrap();
        metric(&text, name).unwrap_or(0.0)
    };
    let rss_before = rss_kib(pid).unwrap();
    let lines_before = log_lines();
    let malformed_before = counter("ironlb_arp_malformed_frames");

    let bad = malformed(v4, v6);
    let claims = spoofed(v4, v6);
    let mut tx = sender(&lab);
    // Once each, then check the owner still answers alone.
    for frame in bad.iter().chain(&claims) {
        tx.send_to(frame, None).unwrap().unwrap();
        // Paced, so that what is measured is the responder's verdict, not a receive queue overflowing.
        std::thread::sleep(Duration::from_millis(2));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let malformed_once = counter("ironlb_arp_malformed_frames") - malformed_before;
    // What the codec itself calls malformed. A frame cut inside its IPv6 header cannot be told from other IPv6
    // traffic, so it is ignored rather than counted.
    let expected = bad
        .iter()
        .filter(|f| Frame::decode(f).is_err_and(|e| e.is_malformed()))
        .count();
    println!(
        "{} malformed frames sent once, {expected} of them malformed ARP/NDP by the codec, {malformed_once} counted",
        bad.len()
    );
    assert!(
        malformed_once >= expected as f64,
        "every malformed frame counted: {malformed_once} of {expected}"
    );
    assert_eq!(
        lab.resolve_from_client(IpAddr::V6(v6)).as_deref(),
        Some(owner_mac.as_str()),
        "NDP for {v6} after the spoofed advertisement"
    );

    // The flood: malformed frames and spoofed claims, paced at about 20,000 frames/s for 3 s, while the client asks
    // for every VIP every 100 ms.
    let watch = ArpWatch::start(&lab, all_v4.clone(), Duration::from_millis(100)).unwrap();
    let flood_at = watch.elapsed();
    let frames: Vec<Vec<u8>> = bad.iter().chain(&claims).cloned().collect();
    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            for frame in &frames {
                if let Some(Ok(())) = tx.send_to(frame, None) {
                    sent += 1;
                }
            }
            // Pace: one batch of ~60 frames every 3 ms.
            std::thread::sleep(Duration::from_millis(3));
        }
        (sent, start.elapsed())
    });
    let (sent, took) = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    let flood_end = watch.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = watch.finish();
    let rss_after = rss_kib(pid).unwrap();
    let lines_after = log_lines();
    let malformed_total = counter("ironlb_arp_malformed_frames") - malformed_before;

    let attacker = ATTACKER.to_string();
    let mut answered_rounds = 0;
    let mut rounds = 0;
    for round in log.between(flood_at, flood_end) {
        rounds += 1;
        let macs: BTreeSet<&String> = round
            .answers
            .get(&v4)
            .map(|m| m.iter().filter(|m| **m != attacker).collect())
            .unwrap_or_default();
        assert!(
            macs.iter().all(|m| **m == owner_mac),
            "only the owner answers for {v4}: {macs:?}"
        );
        if !macs.is_empty() {
            answered_rounds += 1;
        }
    }
    println!(
        "flood: {sent} frames in {took:?} ({:.0}/s), {malformed_total} counted malformed by the owner; \
         owner answered {v4} in {answered_rounds} of {rounds} rounds during it; \
         owner RSS {rss_before} KiB -> {rss_after} KiB; its log grew by {} lines",
        sent as f64 / took.as_secs_f64(),
        lines_after - lines_before
    );
    assert!(
        answered_rounds * 10 >= rounds * 9,
        "the owner kept answering during the flood: {answered_rounds} of {rounds} rounds"
    );
    // Logging is rate-limited: the flood is tens of thousands of frames; a few lines per second at most.
    assert!(
        lines_after - lines_before < 100,
        "{} log lines for the flood",
        lines_after - lines_before
    );
    // Bounded memory: nothing per frame is kept.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The owner kept its VIPs, answers with its own MAC, and still serves TCP; the other Service did not move.
    let replies: BTreeSet<String> = (0..3)
        .filter_map(|_| lab.resolve_from_client(IpAddr::V4(v4)))
        .collect();
    assert_eq!(replies, BTreeSet::from([owner_mac.clone()]));
    assert_eq!(
        lab.resolve_from_client(IpAddr::V6(v6)).as_deref(),
        Some(owner_mac.as_str())
    );
    let reply = lab
        .connect_from_client(IpAddr::V4(v4), Duration::from_secs(2))
        .unwrap();
    assert_eq!(reply, format!("hello from {owner}"));
    assert_eq!(lab.status().await.unwrap(), rows, "no VIP moved");
    drop(lab);
    let _ = std::fs::remove_dir_all(dir);
}

/// Absurd objects applied to a running lab: a /0 pool (it overlaps the lab's pool, which is older, so it is
/// rejected with an InvalidConfiguration Event naming both), a Service with a 64 KiB loadBalancerIPs annotation (an
/// AllocationFailed Event of at most 1 KiB naming it), and a Service with 10^4 ports (served). The demo VIPs keep
/// answering from their owners, and every TCP connect to them succeeds, throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_objects_get_events_and_leave_working_vips_alone() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let prefix = format!("ilb-hc-{}", std::process::id());
    let lab = Lab::start(LabOptions {
        nodes: 2,
        services: 2,
        dir: std::env::temp_dir().join(&prefix),
        prefix,
        binary: env!("CARGO_BIN_EXE_ironlb").into(),
        strict_arp: "enforce".into(),
        agent_args: Vec::new(),
        pods: false,
        api: Default::default(),
        kube_proxy: None,
    })
    .await
    .unwrap();
    let dir = lab.options().dir.clone();
    lab.wait_announced(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rows = lab.status().await.unwrap();
    let vips: Vec<IpAddr> = rows
        .iter()
        .flat_map(|r| r.vips.iter().filter_map(|v| v.parse().ok()))
        .collect();
    let v4: Vec<Ipv4Addr> = vips
        .iter()
        .filter_map(|v| match v {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect();
    for vip in &vips {
        // First contact (neighbour resolution) before measuring.
        let _ = lab.connect_from_client(*vip, Duration::from_secs(2));
    }
    let arp = ArpWatch::start(&lab, v4.clone(), Duration::from_millis(100)).unwrap();
    let tcp = ironlb::lab::faults::TcpWatch::start(
        &lab,
        vips.clone(),
        Duration::from_millis(200),
        Duration::from_secs(1),
    )
    .unwrap();

    let client = lab.client.clone();
    let pp = kube::api::PostParams::default();
    let pool: ironlb::config::crd::IPAddressPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "everything", "namespace": "metallb-system"},
        "spec": {"addresses": ["0.0.0.0/0", "::/0"]},
    }))
    .unwrap();
    kube::Api::<ironlb::config::crd::IPAddressPool>::namespaced(client.clone(), "metallb-system")
        .create(&pp, &pool)
        .await
        .unwrap();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), "default");
    let junk = "x".repeat(64 * 1024);
    let bad: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "junk", "namespace": "default",
                     "annotations": {"metallb.io/loadBalancerIPs": junk}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
    .unwrap();
    services.create(&pp, &bad).await.unwrap();
    let ports: Vec<serde_json::Value> = (0..10_000)
        .map(
            |i| serde_json::json!({"name": format!("p{i}"), "port": 10_000 + i, "protocol": "TCP"}),
        )
        .collect();
    let big: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "many-ports", "namespace": "default"},
        // More ports than the NodePort range holds: as on a real API server, only without NodePorts.
        "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": ports},
    }))
    .unwrap();
    services.create(&pp, &big).await.unwrap();

    let events = |ns: &'static str| {
        let client = client.clone();
        async move {
            kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(client, ns)
                .list(&kube::api::ListParams::default())
                .await
                .unwrap()
                .items
        }
    };
    let start = Instant::now();
    let (pool_event, junk_event) = loop {
        let pool_event = events("metallb-system").await.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some("everything")
                && e.reason.as_deref() == Some("InvalidConfiguration")
        });
        let junk_event = events("default").await.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some("junk")
                && e.reason.as_deref() == Some("AllocationFailed")
        });
        let many_served = lab
            .status()
            .await
            .unwrap()
            .iter()
            .any(|r| r.service == "default/many-ports" && !r.vips.is_empty());
        if let (Some(p), Some(j), true) = (&pool_event, &junk_event, many_served) {
            break (p.clone(), j.clone());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Events for the /0 pool ({pool_event:?}) and the junk Service ({:?}), and an IP for many-ports",
            junk_event.map(|e| e.reason)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let arp = arp.finish();
    let tcp = tcp.finish();
    let pool_message = pool_event.message.unwrap_or_default();
    let junk_message = junk_event.message.unwrap_or_default();
    println!("/0 pool: {pool_message}");
    println!(
        "64 KiB annotation ({} bytes): {junk_message}",
        junk_message.len()
    );
    assert!(pool_message.contains("IPAddressPool/lab"), "{pool_message}");
    assert!(junk_message.contains("default/junk"), "{junk_message}");
    assert!(junk_message.len() <= 1024, "{} bytes", junk_message.len());
    for row in &rows {
        let owner_mac = lab.node(&row.owners[0]).unwrap().mac.clone();
        for vip in row.vips.iter().filter_map(|v| v.parse::<Ipv4Addr>().ok()) {
            let s = arp.summary(vip, Duration::ZERO, Duration::MAX);
            assert_eq!(s.owners, vec![owner_mac.clone()], "{vip}: {s:?}");
            assert!(
                s.longest_unanswered < Duration::from_secs(1),
                "{vip}: {s:?}"
            );
        }
    }
    for vip in &vips {
        let s = tcp.summary(*vip, Duration::ZERO, Duration::MAX);
        assert_eq!(s.failures, 0, "{vip}: {:?}", tcp.failures(*vip, 5));
    }
    let after = lab.status().await.unwrap();
    for row in &rows {
        let now = after.iter().find(|r| r.service == row.service).unwrap();
        assert_eq!((&now.vips, &now.owners), (&row.vips, &row.owners));
    }
    drop(lab);
    let _ = std::fs::remove_dir_all(dir);
}
