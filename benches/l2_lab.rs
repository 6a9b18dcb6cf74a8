//! Layer 2 figures from the lab, with real packets: three node namespaces each running a real `ironlb agent`, the lab
//! API server, and a client namespace on the same bridge.
//!
//! - (a) failover: the owner of a VIP is SIGKILLed and its link cut; the time until the client's TCP connect to the
//!   VIP is answered by another node (`ironlb::lab::demo::measure_failover`, which retries every 50 ms with a 100 ms
//!   connect timeout, so its resolution is about 150 ms). The reference is published, not measured here.
//! - (b) Service created → the client's ARP request for its VIP answered, beside Service created → IP in API status
//!   (the allocation part; the rest is announcement). The client probes every 5 ms once the IP is in status.
//! - (c) ARP reply latency and unanswered requests under a flood from the client, for an IronLB VIP and, in the same
//!   run on the same node interface, for the node's own address (answered by its kernel).
//!
//! Run with `cargo bench --bench l2_lab`; under `cargo test --benches` it runs a small smoke version. It needs root
//! (it skips with a printed reason otherwise), prints a table, and asserts no timing. The lab is torn down by its
//! drop, also on panic. The flood runs last: it leaves the nodes' neighbour entries for the client pointing at the
//! flood's made-up sender MACs, which would disturb any TCP measurement after it.
//!
//! Threads of the flood, all in the client namespace (their sockets were opened there):
//!
//! ```text
//!   sender (paced, Layer 2 socket) ── ARP requests, sender MAC 02:<phase>:<counter> ──▶ bridge ──▶ nodes
//!   receiver (ARP-only socket, promiscuous) ◀── replies, target MAC = that sender MAC ◀── IronLB / node kernel
//! ```

#[path = "support/mod.rs"]
mod support;
use support::{ms, percentile};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ironlb::arp::codec::{ArpOp, ArpPacket, Frame, MacAddr};
use ironlb::lab::cluster::{Lab, LabOptions, is_root};
use ironlb::lab::demo::{heal, measure_failover};
use ironlb::lab::netns::in_netns;
use ironlb::lab::topology::{CLIENT_V4, UPLINK};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use pnet::datalink::{self, Channel, ChannelType, DataLinkReceiver, DataLinkSender};

const ETHERTYPE_ARP: u16 = 0x0806;
/// How long any single wait in this benchmark may take before it gives up on that sample.
const SAMPLE_LIMIT: Duration = Duration::from_secs(10);

/// Packet sockets on the client's uplink, opened inside the client namespace.
///
/// Sending uses a Layer 2 socket. Receiving uses a second socket bound to the ARP ethertype only: a socket bound to
/// every protocol would also get a copy of each request we send, doubling what the receiver must keep up with.
struct ClientPort {
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    mac: MacAddr,
}

fn open_client_port(lab: &Lab, read_timeout: Duration) -> ClientPort {
    in_netns(
        &lab.topology.client,
        move || -> Result<ClientPort, String> {
            let iface = datalink::interfaces()
                .into_iter()
                .find(|i| i.name == UPLINK)
                .ok_or_else(|| format!("no {UPLINK} in the client namespace"))?;
            let mac = MacAddr(iface.mac.ok_or("the client uplink has no MAC")?.octets());
            let send_config = datalink::Config {
                promiscuous: false,
                // Its receive side is never read; keep what the kernel queues for it small.
                read_buffer_size: 64,
                ..Default::default()
            };
            let tx = match datalink::channel(&iface, send_config) {
                Ok(Channel::Ethernet(tx, _)) => tx,
                Ok(_) => return Err("unexpected channel type".into()),
                Err(e) => return Err(format!("send socket on {UPLINK}: {e}")),
            };
            let receive_config = datalink::Config {
                channel_type: ChannelType::Layer3(ETHERTYPE_ARP),
                read_timeout: Some(read_timeout),
                // Replies to the flood go to made-up MACs; the bridge floods them, and only a promiscuous socket sees them.
                promiscuous: true,
                ..Default::default()
            };
            let rx = match datalink::channel(&iface, receive_config) {
                Ok(Channel::Ethernet(_, rx)) => rx,
                Ok(_) => return Err("unexpected channel type".into()),
                Err(e) => return Err(format!("receive socket on {UPLINK}: {e}")),
            };
            Ok(ClientPort { tx, rx, mac })
        },
    )
    .expect("enter the client namespace")
    .expect("packet sockets in the client namespace")
}

/// An ARP-only datagram socket delivers the ARP packet without its Ethernet header; give it a neutral one so the
/// project's codec can decode it.
fn decode_arp(payload: &[u8]) -> Option<ArpPacket> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(payload);
    match Frame::decode(&frame) {
        Ok(Frame::Arp(arp)) => Some(arp),
        _ => None,
    }
}

fn request(sender_mac: MacAddr, eth_src: MacAddr, target: Ipv4Addr) -> Vec<u8> {
    Frame::Arp(ArpPacket {
        eth_dst: MacAddr::BROADCAST,
        eth_src,
        op: ArpOp::Request,
        sender_mac,
        sender_ip: CLIENT_V4,
        target_mac: MacAddr::ZERO,
        target_ip: target,
    })
    .encode()
}

/// True for an answer to one of our requests for `target` (not a gratuitous announcement of it).
fn is_answer(arp: &ArpPacket, target: Ipv4Addr) -> bool {
    arp.op == ArpOp::Reply && arp.sender_ip == target && arp.target_ip == CLIENT_V4
}

/// Asks for `vip` every 5 ms until an answer arrives; returns when it arrived and who answered.
fn probe_until_answered(
    port: &mut ClientPort,
    vip: Ipv4Addr,
    limit: Duration,
) -> Option<(Instant, MacAddr)> {
    let frame = request(port.mac, port.mac, vip);
    let start = Instant::now();
    let mut next_send = start;
    while start.elapsed() < limit {
        if Instant::now() >= next_send {
            let _ = port.tx.send_to(&frame, None);
            next_send += Duration::from_millis(5);
        }
        // The read timeout (1 ms) bounds each wait.
        if let Ok(payload) = port.rx.next()
            && let Some(arp) = decode_arp(payload)
            && is_answer(&arp, vip)
            && arp.target_mac == port.mac
        {
            return Some((Instant::now(), arp.sender_mac));
        }
    }
    None
}

/// The flood's sender MAC for request `n` of `phase`: locally administered, unique per request, so that the reply's
/// target MAC names the request it answers.
fn flood_mac(phase: u8, n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, phase, b[0], b[1], b[2], b[3]])
}

fn flood_index(phase: u8, mac: MacAddr) -> Option<usize> {
    let m = mac.0;
    (m[0] == 0x02 && m[1] == phase).then(|| u32::from_be_bytes([m[2], m[3], m[4], m[5]]) as usize)
}

struct FloodResult {
    sent: usize,
    answered: usize,
    duplicates: usize,
    send_errors: usize,
    rate: f64,
    latencies: Vec<Duration>,
}

/// Sends `rate` requests per second for `target` for `duration` from the client, on one paced thread, while another
/// records when each reply arrives. Replies later than 500 ms after the last request count as unanswered.
fn flood(
    port: ClientPort,
    phase: u8,
    target: Ipv4Addr,
    rate: u32,
    duration: Duration,
) -> FloodResult {
    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let ClientPort {
        mut tx,
        mut rx,
        mac,
    } = port;
    let stop = Arc::new(AtomicBool::new(false));
    let receiving = stop.clone();
    let receiver = std::thread::spawn(move || {
        let mut arrived: Vec<Option<Instant>> = vec![None; total];
        let mut duplicates = 0;
        // Bounded by the sender's bounded run plus the grace period; each read waits at most its timeout.
        while !receiving.load(Ordering::Relaxed) {
            let Ok(payload) = rx.next() else { continue };
            let now = Instant::now();
            let Some(arp) = decode_arp(payload) else {
                continue;
            };
            if !is_answer(&arp, target) {
                continue;
            }
            if let Some(slot) = flood_index(phase, arp.target_mac).and_then(|i| arrived.get_mut(i))
            {
                if slot.is_some() {
                    duplicates += 1;
                } else {
                    *slot = Some(now);
                }
            }
        }
        (arrived, duplicates)
    });

    let mut sent_at: Vec<Instant> = Vec::with_capacity(total);
    let mut send_errors = 0;
    let start = Instant::now();
    // Paced by the clock: every wake-up sends what is due by now, so a late wake-up is caught up, not lost. Bounded
    // by count and by time (a slow machine gets a second of slack, then reports the rate it achieved).
    while sent_at.len() < total && start.elapsed() < duration + Duration::from_secs(1) {
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(total);
        while sent_at.len() < due {
            let n = sent_at.len() as u32;
            let frame = request(flood_mac(phase, n), mac, target);
            // Stamped before the send: on a veth the reply can be queued before send_to returns.
            sent_at.push(Instant::now());
            if !matches!(tx.send_to(&frame, None), Some(Ok(()))) {
                send_errors += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let sending = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (arrived, duplicates) = receiver.join().expect("flood receiver thread");

    let mut latencies: Vec<Duration> = sent_at
        .iter()
        .zip(&arrived)
        .filter_map(|(sent, got)| got.map(|g| g.saturating_duration_since(*sent)))
        .collect();
    latencies.sort();
    FloodResult {
        sent: sent_at.len(),
        answered: latencies.len(),
        duplicates,
        send_errors,
        rate: sent_at.len() as f64 / sending.as_secs_f64(),
        latencies,
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Writes one sample per line, in milliseconds, into `$IRONLB_BENCH_DATA/name`, for scripts/plot to draw; nothing
/// when the variable is unset (a plain `cargo bench`).
fn write_samples(name: &str, samples: &[Duration]) {
    let Some(dir) = std::env::var_os("IRONLB_BENCH_DATA") else {
        return;
    };
    let text: String = samples
        .iter()
        .map(|d| format!("{:.3}\n", d.as_secs_f64() * 1000.0))
        .collect();
    let path = std::path::Path::new(&dir).join(name);
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn p50_p99(sorted: &[Duration], unit: fn(Duration) -> String) -> String {
    format!(
        "p50 {} / p99 {}",
        unit(percentile(sorted, 0.5)),
        unit(percentile(sorted, 0.99))
    )
}

fn flood_summary(r: &FloodResult) -> String {
    let unanswered = r.sent - r.answered;
    format!(
        "{}; {} of {} unanswered ({:.2} %); {:.0} requests/s sent{}{}",
        p50_p99(&r.latencies, us),
        unanswered,
        r.sent,
        100.0 * unanswered as f64 / r.sent.max(1) as f64,
        r.rate,
        if r.duplicates > 0 {
            format!("; {} duplicate replies", r.duplicates)
        } else {
            String::new()
        },
        if r.send_errors > 0 {
            format!("; {} send errors", r.send_errors)
        } else {
            String::new()
        },
    )
}

/// The IPv4 VIPs in status with exactly one owner, in Service order.
async fn owned_v4(lab: &Lab) -> Vec<(Ipv4Addr, String)> {
    let rows = lab
        .wait_announced(Duration::from_secs(30))
        .await
        .expect("every Service announced");
    rows.iter()
        .filter(|r| r.owners.len() == 1)
        .filter_map(|r| {
            let ip = r.vips.iter().find_map(|v| v.parse::<Ipv4Addr>().ok())?;
            Some((ip, r.owners[0].clone()))
        })
        .collect()
}

/// Waits (bounded) until TCP to `vip` from the client reaches `owner`, so a trial starts from a settled lab.
async fn settled(lab: &Lab, vip: Ipv4Addr, owner: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < SAMPLE_LIMIT {
        if let Ok(reply) = lab.connect_from_client(IpAddr::V4(vip), Duration::from_millis(200))
            && reply.ends_with(owner)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn ip_in_status(svc: &Service) -> Option<Ipv4Addr> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.as_deref()?.parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too and only wants a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    if !is_root() {
        println!("skipped: needs root to create network namespaces");
        return;
    }
    let (trials, services, flood_for) = if quick {
        (2, 3, Duration::from_secs(1))
    } else {
        (20, 30, Duration::from_secs(3))
    };
    let flood_rate = 20_000;
    let began = Instant::now();
    let prefix = format!("ilb-bl2-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let mut lab = Lab::start(LabOptions::new(
        &prefix,
        dir.clone(),
        env!("CARGO_BIN_EXE_ironlb").into(),
        3,
        3,
    ))
    .await
    .expect("start the lab");
    lab.wait_announced(Duration::from_secs(60))
        .await
        .expect("the demo Services announced");
    // One round of periodic gratuitous ARP (--garp-period 1) with no owner changing, so the client's cache agrees with
    // status.
    lab.wait_settled(Duration::from_millis(1200), Duration::from_secs(30))
        .await
        .expect("the owners settled");
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // (a) Failover, cycling through the demo VIPs, with the owner read fresh from status each trial.
    let mut failovers = Vec::new();
    let (mut incomplete, mut unsettled) = (0, 0);
    for t in 0..trials {
        let vips = owned_v4(&lab).await;
        let (vip, owner) = vips[t % vips.len()].clone();
        if !settled(&lab, vip, &owner).await {
            unsettled += 1;
        }
        match measure_failover(&mut lab, IpAddr::V4(vip), &owner)
            .await
            .expect("failover trial")
        {
            Some((elapsed, reply)) => {
                eprintln!(
                    "failover {t}: {vip} from {owner}: {} ms, {reply}",
                    elapsed.as_millis()
                );
                failovers.push(elapsed);
            }
            None => {
                eprintln!(
                    "failover {t}: {vip} from {owner}: no other node answered TCP within 10 s"
                );
                incomplete += 1;
            }
        }
        heal(&mut lab, &owner).expect("heal the node");
        // The restarted agent rejoins and takes its share back; the next trial starts once that is over and a
        // gratuitous ARP round has passed.
        lab.wait_settled(Duration::from_millis(1200), Duration::from_secs(30))
            .await
            .expect("the owners settled after the heal");
    }
    failovers.sort();
    write_samples("failover_ms.txt", &failovers);
    rows.push((
        format!(
            "(a) Failover: owner's agent SIGKILLed + link cut → client TCP to the VIP answered by another node \
             ({} trials; {incomplete} not within 10 s; {unsettled} started before TCP reached the status owner)",
            trials
        ),
        format!(
            "{} / max {}",
            p50_p99(&failovers, ms),
            ms(failovers.last().copied().unwrap_or_default())
        ),
        "published, not measured here: MetalLB docs \"a few seconds\"; PureLB measured 2.2–6.7 s".into(),
    ));

    // (b) Service created → IP in status → client's ARP answered.
    let api: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let mut port = Some(open_client_port(&lab, Duration::from_millis(1)));
    let (mut to_status, mut to_arp) = (Vec::new(), Vec::new());
    let mut wrong_owner = 0;
    for i in 0..services {
        let name = format!("arp-{i}");
        let created = Instant::now();
        lab.create_demo_service(&name, false, false, None)
            .await
            .expect("create a Service");
        let mut vip = None;
        while vip.is_none() && created.elapsed() < SAMPLE_LIMIT {
            vip = api.get(&name).await.ok().as_ref().and_then(ip_in_status);
            if vip.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let Some(vip) = vip else { continue };
        to_status.push(created.elapsed());
        let mut probe = port.take().expect("the client port is back");
        let (probe, answer) = tokio::task::spawn_blocking(move || {
            let answer = probe_until_answered(&mut probe, vip, SAMPLE_LIMIT);
            (probe, answer)
        })
        .await
        .expect("ARP probe thread");
        port = Some(probe);
        if let Some((at, mac)) = answer {
            to_arp.push(at.duration_since(created));
            // The owner is written to status after announcing, so give it (bounded) time to appear.
            let mut owner = None;
            let asked = Instant::now();
            while owner.is_none() && asked.elapsed() < Duration::from_secs(3) {
                owner = api.get(&name).await.ok().and_then(|s| {
                    let rows = ironlb::k8s::report::rows(&[s]);
                    rows.first()?.owners.first().cloned()
                });
                if owner.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let by = lab
                .topology
                .node_by_mac(&mac.to_string())
                .map(|n| n.name.clone());
            eprintln!(
                "{name}: {vip} in status after {} ms, ARP answered after {} ms by {by:?}; status owner {owner:?}",
                to_status.last().copied().unwrap_or_default().as_millis(),
                at.duration_since(created).as_millis()
            );
            if owner.is_none() || owner != by {
                wrong_owner += 1;
            }
        }
    }
    drop(port);
    to_status.sort();
    to_arp.sort();
    rows.push((
        format!(
            "(b) Service created → client's ARP for its VIP answered ({} Services, {} answered{})",
            services,
            to_arp.len(),
            if wrong_owner > 0 {
                format!(", {wrong_owner} by a node other than the status owner")
            } else {
                String::new()
            }
        ),
        p50_p99(&to_arp, ms),
        format!(
            "created → IP in API status (allocation): {} ({} Services)",
            p50_p99(&to_status, ms),
            to_status.len()
        ),
    ));

    // (c) The flood: an IronLB VIP and its owner's own address, on the same interface of the same node.
    let (vip, owner) = owned_v4(&lab).await[0].clone();
    settled(&lab, vip, &owner).await;
    let node_ip = lab.node(&owner).expect("the owner is a lab node").ipv4;
    let mut results = Vec::new();
    for (phase, target) in [(0xa1u8, vip), (0xa2u8, node_ip)] {
        let port = open_client_port(&lab, Duration::from_millis(2));
        let result =
            tokio::task::spawn_blocking(move || flood(port, phase, target, flood_rate, flood_for))
                .await
                .expect("flood threads");
        results.push(result);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rows.push((
        format!(
            "(c) ARP replies under a flood of {flood_rate} requests/s for {} s from the client: IronLB for VIP \
             {vip} on {owner}, vs {owner}'s kernel for its own {node_ip}, same interface, same run",
            flood_for.as_secs()
        ),
        flood_summary(&results[0]),
        format!("kernel: {}", flood_summary(&results[1])),
    ));

    println!("\n| measurement | IronLB | reference |\n|---|---|---|");
    for (what, value, reference) in rows {
        println!("| {what} | {value} | {reference} |");
    }
    println!(
        "\n(lab of 3 nodes; whole run {:.0} s)",
        began.elapsed().as_secs_f64()
    );
    drop(lab);
    if incomplete == 0 && wrong_owner == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("agent logs kept in {}", dir.display());
    }
}
