//! BFD figures against FRR 8 (bgpd, bfdd and zebra as the router), in network namespaces (needs root and FRR):
//!
//! - (a) a node's link cut → FRR no longer routes to it: IronLB's BGP session advertises one route, with a BFD
//!   session at the default profile (300 ms × 3) and the BGP hold time left at 90 s, then without BFD with hold time
//!   9 s. The cut drops every packet in the node's namespace (nftables), so the router's interface stays up and
//!   only BFD or the hold timer can notice. The end is read from the router's kernel: `ip -tshort monitor route`
//!   prints the instant zebra deletes the route, in microseconds of the same clock the cut was taken on.
//! - (b) BFD session start → Up at the router, IronLB's session beside an FRR bfdd on another node (the reference),
//!   both timed from the start of the session to the router's `show bfd peer` saying up, polled through vtysh (the
//!   resolution is one vtysh round trip, printed beside).
//! - (c) CPU for 100 BFD sessions at 300 ms: IronLB's BFD thread (one per agent) beside the router's bfdd serving
//!   the same 100 sessions, from `/proc` (clock ticks of 10 ms, over a window long enough to make that small).
//!
//! `cargo bench --bench bfd_lab` prints a table; under `cargo test --benches` a smaller smoke run (two trials each,
//! hold time 3 s, 10 sessions for 3 s) fails when it measured nothing. Nothing is asserted about timings.

#[path = "support/mod.rs"]
mod support;
use support::{ms, percentile};

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ironlb::bfd::codec::BfdState;
use ironlb::bfd::fsm::Profile;
use ironlb::bfd::transport::{Bfd, BfdLink, BfdPeer, BfdStatus};
use ironlb::bgp::codec::RouteAttrs;
use ironlb::bgp::fsm::{FsmConfig, PeerAs};
use ironlb::bgp::session::{RouteSet, SessionConfig};
use ironlb::lab::bgp::{Daemon, Neighbor, NsSpeaker, Router, RouterConfig};
use ironlb::lab::cluster::is_root;
use ironlb::lab::topology::{Topology, run_in};

const ROUTER_AS: u32 = 64496;
const NODE_AS: u32 = 64497;
const REFERENCE_AS: u32 = 64498;
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const REFERENCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const VIP: &str = "198.51.100.7";

/// IronLB's BFD, on a thread inside the node's namespace (sockets belong to the namespace that opens them).
struct NodeBfd {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    /// Starts sessions; their status receivers go back on the channel.
    Start(
        Vec<BfdPeer>,
        mpsc::Sender<Vec<tokio::sync::watch::Receiver<BfdStatus>>>,
    ),
    /// Ends every session.
    StopAll(mpsc::Sender<()>),
}

impl NodeBfd {
    fn start(netns: &str) -> NodeBfd {
        let file = std::fs::File::open(format!("/run/netns/{netns}")).expect("node namespace");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut bfd = Bfd::start().expect("BFD sockets");
                let mut links: Vec<BfdLink> = Vec::new();
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Cmd::Start(peers, reply) => {
                            let mut status = Vec::new();
                            for p in peers {
                                let link = bfd.session(p).expect("BFD session");
                                status.push(link.status());
                                links.push(link);
                            }
                            let _ = reply.send(status);
                        }
                        Cmd::StopAll(reply) => {
                            links.clear();
                            let _ = reply.send(());
                        }
                    }
                }
            });
        });
        NodeBfd { tx }
    }

    fn sessions(&self, peers: Vec<BfdPeer>) -> Vec<tokio::sync::watch::Receiver<BfdStatus>> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Cmd::Start(peers, tx)).expect("BFD thread");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("BFD sessions started")
    }

    fn stop_all(&self) {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Cmd::StopAll(tx)).expect("BFD thread");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("BFD sessions stopped");
    }
}

fn bfd_peer(peer: Ipv4Addr, local: Ipv4Addr) -> BfdPeer {
    BfdPeer {
        peer: IpAddr::V4(peer),
        local: Some(IpAddr::V4(local)),
        multihop: false,
        interface: None,
        minimum_ttl: 254,
        profile: Profile::default(),
        vrf: None,
    }
}

fn bgp(hold_time: u16) -> SessionConfig {
    SessionConfig {
        name: "router".into(),
        peer: SocketAddr::new(IpAddr::V4(ROUTER), 179),
        source: None,
        password: None,
        ttl: 1,
        connect_timeout: Duration::from_secs(2),
        alt_next_hop: None,
        vrf: None,
        fsm: FsmConfig {
            local_asn: NODE_AS,
            peer_as: PeerAs::Fixed(ROUTER_AS),
            router_id: NODE,
            hold_time,
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

/// `[2026-12-08T00:24:06.887622]`, as `ip -tshort` prints it with TZ=UTC, in microseconds since the epoch.
fn parse_stamp(line: &str) -> Option<u64> {
    let s = line.strip_prefix('[')?.get(..26)?;
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + us).ok()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The instants (µs since the epoch) at which the router's kernel deleted the VIP's route.
fn watch_deletions(switch: &str) -> (std::process::Child, mpsc::Receiver<u64>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", switch, "ip", "-tshort", "monitor", "route"])
        .env("TZ", "UTC")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip monitor");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains(&format!("Deleted {VIP} "))
                && let Some(at) = parse_stamp(&line)
                && tx.send(at).is_err()
            {
                break;
            }
        }
    });
    (child, rx)
}

fn kernel_route(switch: &str) -> bool {
    run_in(switch, &["ip", "route", "show", VIP])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("via {NODE}")))
}

/// The router's bfdd's view of `peer` (and, with `local`, of the session from that local address).
fn router_bfd_up(router: &Router, peer: Ipv4Addr) -> bool {
    router
        .bfd_sessions()
        .is_ok_and(|s| s.iter().any(|s| s.peer == IpAddr::V4(peer) && s.is_up()))
}

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn set_cut(node: &str, cut: bool) {
    if cut {
        let rules = "table inet ilb_cut {\n chain i { type filter hook input priority -300; policy drop; }\n \
                     chain o { type filter hook output priority -300; policy drop; }\n}\n";
        let mut child = Command::new("ip")
            .args(["netns", "exec", node, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("rules");
        assert!(child.wait().expect("nft").success(), "nft refused the cut");
    } else {
        let _ = run_in(node, &["nft", "delete", "table", "inet", "ilb_cut"]);
    }
}

/// (a): `trials` cuts, each with a fresh BGP session (and BFD session when `with_bfd`); the time from the cut to the
/// router's kernel deleting the route.
fn cut_trials(
    t: &Topology,
    router: &Router,
    bfd: &NodeBfd,
    deleted: &mpsc::Receiver<u64>,
    with_bfd: bool,
    hold: u16,
    trials: usize,
) -> Vec<Duration> {
    let node = &t.nodes[0].netns;
    let routes: RouteSet = [(format!("{VIP}/32").parse().unwrap(), RouteAttrs::default())].into();
    let limit = Duration::from_secs(u64::from(hold) * 2 + 10);
    let mut out = Vec::new();
    for trial in 0..trials {
        let speaker = NsSpeaker::start(node, bgp(hold), routes.clone()).expect("speaker");
        if with_bfd {
            bfd.sessions(vec![bfd_peer(ROUTER, NODE)]);
        }
        let ready = wait(Duration::from_secs(30), || {
            kernel_route(&t.switch) && (!with_bfd || router_bfd_up(router, NODE))
        });
        if ready.is_none() {
            eprintln!("trial {trial}: the route (and BFD) never came up at the router");
            bfd.stop_all();
            speaker.stop(false);
            continue;
        }
        while deleted.try_recv().is_ok() {}
        let cut_at = now_us();
        set_cut(node, true);
        let gone = deleted.recv_timeout(limit);
        set_cut(node, false);
        match gone {
            Ok(at) => out.push(Duration::from_micros(at.saturating_sub(cut_at))),
            Err(_) => eprintln!("trial {trial}: the route stayed at the router for {limit:?}"),
        }
        bfd.stop_all();
        speaker.stop(false);
        // The router's side of the old session is gone before the next trial starts.
        let _ = wait(Duration::from_secs(5), || !kernel_route(&t.switch));
    }
    out
}

/// (b): `trials` starts of a BFD session, from `start` to the router's bfdd showing `peer` up; `stop` ends it and
/// the router's side is Down again before the next.
fn up_trials(
    router: &Router,
    peer: Ipv4Addr,
    trials: usize,
    mut start: impl FnMut(),
    mut stop: impl FnMut(),
) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..trials {
        stop();
        if wait(Duration::from_secs(10), || !router_bfd_up(router, peer)).is_none() {
            eprintln!("the router still shows {peer} up after its session ended");
            continue;
        }
        let begin = Instant::now();
        start();
        if wait(Duration::from_secs(10), || router_bfd_up(router, peer)).is_some() {
            out.push(begin.elapsed());
        }
    }
    out
}

fn vtysh(dir: &std::path::Path, netns: &str, commands: &[String]) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "vtysh", "--vty_socket"])
        .arg(dir);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.output().expect("vtysh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains('%'),
        "vtysh {commands:?}: {out:?}"
    );
}

/// CPU time (user + system) in clock ticks of a process (`/proc/<pid>/stat`) or thread (`.../task/<tid>/stat`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based), so 11 and 12 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn bfd_thread_stat() -> Option<String> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "ironlb-bfd").then(|| e.path().join("stat").display().to_string())
        })
}

/// The router's `show bfd peers brief`, for a failure message.
fn router_view(t: &Topology, router_dir: &std::path::Path) -> String {
    let dir = router_dir.display().to_string();
    run_in(
        &t.switch,
        &["vtysh", "--vty_socket", &dir, "-c", "show bfd peers brief"],
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    .unwrap_or_default()
}

/// (c): IronLB's BFD thread and the router's bfdd, CPU per second over `window` with `n` sessions Up.
fn cpu(
    t: &Topology,
    router_dir: &std::path::Path,
    bfd: &NodeBfd,
    n: u8,
    window: Duration,
) -> Option<(f64, f64)> {
    // Session i: the router's 203.0.113.(i+1) and the node's 203.0.113.(i+101), each pair its own session on both
    // sides (IronLB tells sessions apart by the router's address, bfdd by both).
    let router_addr = |i: u8| Ipv4Addr::new(203, 0, 113, i + 1);
    let node_addr = |i: u8| Ipv4Addr::new(203, 0, 113, i + 101);
    for (netns, link, addr) in [
        (&t.switch, "br0", &router_addr as &dyn Fn(u8) -> Ipv4Addr),
        (&t.nodes[0].netns, "eth0", &node_addr),
    ] {
        let batch: String = (0..n)
            .map(|i| format!("address add {}/24 dev {link}\n", addr(i)))
            .collect();
        let path = router_dir.join(format!("addresses-{link}.batch"));
        std::fs::write(&path, batch).ok()?;
        run_in(netns, &["ip", "-batch", &path.display().to_string()]).ok()?;
    }
    let mut config = vec!["configure terminal".to_string(), "bfd".to_string()];
    for i in 0..n {
        config.push(format!(
            "peer {} local-address {}",
            node_addr(i),
            router_addr(i)
        ));
        config.push("exit".into());
    }
    vtysh(router_dir, &t.switch, &config);
    let status = bfd.sessions(
        (0..n)
            .map(|i| bfd_peer(router_addr(i), node_addr(i)))
            .collect(),
    );
    let up = wait(Duration::from_secs(30), || {
        status.iter().all(|s| s.borrow().state == BfdState::Up)
    });
    if up.is_none() {
        let n_up = status
            .iter()
            .filter(|s| s.borrow().state == BfdState::Up)
            .count();
        eprintln!(
            "only {n_up} of {n} BFD sessions came up; the router's view:\n{}",
            router_view(t, router_dir)
        );
        return None;
    }
    let ours = bfd_thread_stat()?;
    let bfdd_pid = std::fs::read_to_string(router_dir.join("bfdd.pid")).ok()?;
    let theirs = format!("/proc/{}/stat", bfdd_pid.trim());
    let (a0, b0) = (cpu_ticks(&ours)?, cpu_ticks(&theirs)?);
    std::thread::sleep(window);
    let (a1, b1) = (cpu_ticks(&ours)?, cpu_ticks(&theirs)?);
    let downs = status.iter().filter(|s| s.borrow().downs > 0).count();
    if downs > 0 {
        eprintln!(
            "{downs} sessions went Down since they started; the router's view:\n{}",
            router_view(t, router_dir)
        );
        return None;
    }
    // Clock ticks are 10 ms (USER_HZ 100); as milliseconds of CPU per second of wall time.
    let per_second = |ticks: u64| ticks as f64 * 10.0 / window.as_secs_f64();
    Some((per_second(a1 - a0), per_second(b1 - b0)))
}

fn main() {
    if !is_root() {
        println!("skipped: the BFD benchmarks need root to create network namespaces");
        return;
    }
    if !std::path::Path::new("/usr/lib/frr/bfdd").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "FRR's bfdd is missing (scripts/setup installs frr)"
        );
        println!("skipped: FRR is not installed");
        return;
    }
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (trials, hold, sessions, window) = if smoke {
        (2, 3, 10, Duration::from_secs(3))
    } else {
        (10, 9, 100, Duration::from_secs(30))
    };
    let t = Topology::create(&format!("ilb-bfdb-{}", std::process::id()), 2).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let neighbor = |address: Ipv4Addr, asn: u32| Neighbor {
        address: IpAddr::V4(address),
        asn,
        password: None,
        multihop: false,
        interface: None,
    };
    let router = Router::start(
        Daemon::Frr,
        &t.switch,
        dir.path(),
        RouterConfig {
            asn: ROUTER_AS,
            router_id: ROUTER,
            neighbors: vec![neighbor(NODE, NODE_AS), neighbor(REFERENCE, REFERENCE_AS)],
            graceful_restart: false,
            bfd: true,
        },
    )
    .expect("FRR router");
    // The reference: FRR's bfdd on node 2, peering with the router's bfdd.
    let ref_dir = tempfile::tempdir().expect("tempdir");
    let reference = Router::start(
        Daemon::Frr,
        &t.nodes[1].netns,
        ref_dir.path(),
        RouterConfig {
            asn: REFERENCE_AS,
            router_id: REFERENCE,
            neighbors: vec![neighbor(ROUTER, ROUTER_AS)],
            graceful_restart: false,
            bfd: true,
        },
    )
    .expect("FRR reference node");
    let bfd = NodeBfd::start(&t.nodes[0].netns);
    let (mut monitor, deleted) = watch_deletions(&t.switch);

    println!("| measurement | IronLB | reference | note |");
    println!("|---|---|---|---|");
    let mut with_bfd = cut_trials(&t, &router, &bfd, &deleted, true, 90, trials);
    let mut without = cut_trials(&t, &router, &bfd, &deleted, false, hold, trials);
    with_bfd.sort();
    without.sort();
    let row = |s: &[Duration]| {
        if s.is_empty() {
            "none measured".to_string()
        } else {
            format!(
                "min {} / p50 {} / max {} ({} trials)",
                ms(s[0]),
                ms(percentile(s, 0.5)),
                ms(*s.last().unwrap()),
                s.len()
            )
        }
    };
    println!(
        "| (a) link cut → FRR's kernel deletes the route, BFD 300 ms × 3 | {} | without BFD, hold time {hold} s: {} | \
         zebra's deletion, from `ip -tshort monitor route` (µs) |",
        row(&with_bfd),
        row(&without)
    );

    let mut ours = up_trials(
        &router,
        NODE,
        trials,
        || {
            bfd.sessions(vec![bfd_peer(ROUTER, NODE)]);
        },
        || bfd.stop_all(),
    );
    let ref_bfd = |on: bool| {
        let no = if on { "" } else { "no " };
        vtysh(
            ref_dir.path(),
            &t.nodes[1].netns,
            &[
                "configure terminal".into(),
                format!("router bgp {REFERENCE_AS}"),
                format!("{no}neighbor {ROUTER} bfd"),
            ],
        );
    };
    let mut theirs = up_trials(
        &router,
        REFERENCE,
        trials,
        || ref_bfd(true),
        || ref_bfd(false),
    );
    ours.sort();
    theirs.sort();
    let mut rtt: Vec<Duration> = (0..10)
        .map(|_| {
            let s = Instant::now();
            let _ = router.bfd_sessions();
            s.elapsed()
        })
        .collect();
    rtt.sort();
    println!(
        "| (b) BFD session start → Up at the router | {} | FRR bfdd on a node: {} | polled; one vtysh call takes {} |",
        row(&ours),
        row(&theirs),
        ms(percentile(&rtt, 0.5))
    );
    bfd.stop_all();

    let used = cpu(&t, dir.path(), &bfd, sessions, window);
    match used {
        Some((a, b)) => println!(
            "| (c) CPU for {sessions} BFD sessions at 300 ms | {a:.1} ms/s (IronLB's BFD thread) | {b:.1} ms/s (the \
             router's bfdd, same sessions) | {}-s window, 10 ms clock ticks |",
            window.as_secs()
        ),
        None => println!("| (c) CPU for {sessions} BFD sessions | not measured | | |"),
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    drop(reference);
    drop(router);
    // The smoke run must fail when it measured nothing.
    assert!(
        !with_bfd.is_empty()
            && !without.is_empty()
            && !ours.is_empty()
            && !theirs.is_empty()
            && used.is_some(),
        "the BFD benchmark measured nothing in at least one row (see above)"
    );
}
