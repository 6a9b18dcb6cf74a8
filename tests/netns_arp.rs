//! netns tier: the ARP/NDP responder on real packet sockets, checked with the real clients (`arping`, `ndisc6`,
//! `ip neigh`) from another network namespace.
//!
//! Topology, built per test with namespaces named `ilb-arp-<pid>-<n>`:
//!
//! ```text
//!   client ns                         node ns (responder runs here)
//!   c0 192.0.2.1/24, 2001:db8:1::1 ── n0 02:00:00:00:0a:00, 2001:db8:1::2
//!   c1 198.51.100.1/24            ── n1 02:00:00:00:0a:01
//!                                     kube-ipvs0 (an empty bridge) holding the VIPs, arp_ignore=1, arp_announce=2,
//!                                     as kube-proxy in IPVS mode leaves a node: the kernel must stay silent.
//! ```
//!
//! Needs root; skips with a printed reason otherwise.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ironlb::arp::{Announce, Announcements, ArpConfig, ArpMetrics, ArpResponder};
use nix::sched::{CloneFlags, setns};
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};

const N0_MAC: &str = "02:00:00:00:0a:00";
const N1_MAC: &str = "02:00:00:00:0a:01";
const STALE_MAC: &str = "02:00:00:00:00:99";
const VIP_A: &str = "192.0.2.10";
const VIP_B: &str = "198.51.100.10";
const VIP_6: &str = "2001:db8:1::10";

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs a client tool in `ns`, killing it if it outlives `limit`.
fn run_in(ns: &str, args: &[&str], limit: Duration) -> Result<Output> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {args:?}"))?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// A network namespace, deleted (with the links inside it) on drop, even when the test panics.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Netns> {
        let name = format!(
            "ilb-arp-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name])?;
        Ok(Netns { name })
    }

    fn ip(&self, args: &str) -> Result<()> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend(args.split_whitespace());
        run(&full)
    }

    fn sysctl(&self, setting: &str) -> Result<()> {
        run(&[
            "ip", "netns", "exec", &self.name, "sysctl", "-q", "-w", setting,
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Lab {
    // The node thread goes first so the responder closes its sockets before the namespaces disappear.
    node: Option<NodeThread>,
    plan: watch::Sender<Announcements>,
    registry: Registry,
    client: Netns,
    _node_ns: Netns,
}

/// The responder, running on a thread that entered the node namespace; stopped and joined on drop.
struct NodeThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Lab {
    fn new(config: ArpConfig) -> Result<Lab> {
        let client = Netns::new()?;
        let node = Netns::new()?;
        for ns in [&client, &node] {
            // No DAD: link-local and global addresses are usable at once, so ndisc6 can send right away.
            ns.sysctl("net.ipv6.conf.default.accept_dad=0")?;
            ns.sysctl("net.ipv6.conf.all.accept_dad=0")?;
        }
        for (c, n, mac) in [("c0", "n0", N0_MAC), ("c1", "n1", N1_MAC)] {
            run(&[
                "ip",
                "link",
                "add",
                c,
                "netns",
                &client.name,
                "type",
                "veth",
                "peer",
                "name",
                n,
                "netns",
                &node.name,
            ])?;
            node.ip(&format!("link set {n} address {mac} up"))?;
            client.ip(&format!("link set {c} up"))?;
        }
        client.ip("addr add 192.0.2.1/24 dev c0")?;
        client.ip("addr add 198.51.100.1/24 dev c1")?;
        client.ip("addr add 2001:db8:1::1/64 dev c0 nodad")?;
        node.ip("addr add 2001:db8:1::2/64 dev n0 nodad")?;
        // Gratuitous ARP must update the client's entries: accept it, and no lock time against quick overrides.
        client.sysctl("net.ipv4.conf.c0.arp_accept=1")?;
        client.sysctl("net.ipv4.neigh.c0.locktime=0")?;
        // What kube-proxy in IPVS mode leaves on a node: every VIP on kube-ipvs0, strict ARP.
        node.ip("link add kube-ipvs0 type bridge")?;
        for vip in [VIP_A, VIP_B] {
            node.ip(&format!("addr add {vip}/32 dev kube-ipvs0"))?;
        }
        node.ip(&format!("addr add {VIP_6}/128 dev kube-ipvs0 nodad"))?;
        node.sysctl("net.ipv4.conf.all.arp_ignore=1")?;
        node.sysctl("net.ipv4.conf.all.arp_announce=2")?;

        let mut registry = Registry::default();
        let metrics = ArpMetrics::register(&mut registry);
        let (plan, rx) = watch::channel(Announcements::default());
        let (stop, stopped) = oneshot::channel();
        let ns_path = format!("/var/run/netns/{}", node.name);
        let thread_metrics = metrics.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<()> {
            let result = (|| -> Result<tokio::runtime::Runtime> {
                let ns = File::open(&ns_path)?;
                // Only this thread moves; threads it starts (the receive threads) inherit the namespace.
                setns(ns, CloneFlags::CLONE_NEWNET)?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            })();
            let runtime = match result {
                Ok(rt) => rt,
                Err(err) => {
                    let _ = started_tx.send(Err(err.to_string()));
                    return Err(err);
                }
            };
            runtime.block_on(async move {
                match ArpResponder::start(rx, config, thread_metrics) {
                    Ok(handle) => {
                        let _ = started_tx.send(Ok(()));
                        let _ = stopped.await;
                        drop(handle);
                        Ok(())
                    }
                    Err(err) => {
                        let _ = started_tx.send(Err(err.to_string()));
                        Err(err.into())
                    }
                }
            })
        });
        let node_thread = NodeThread {
            stop: Some(stop),
            thread: Some(thread),
        };
        match started_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => bail!("responder did not start: {err}"),
            Err(_) => bail!("responder did not start within 10 s"),
        }
        Ok(Lab {
            node: Some(node_thread),
            plan,
            registry,
            client,
            _node_ns: node,
        })
    }

    fn announce(&self, vips: &[(&str, &[&str])], since: Option<Instant>) {
        self.announce_yielding(vips, since, &[]);
    }

    /// As [`Lab::announce`], with the VIPs in `yielding` given up at another station's claim.
    fn announce_yielding(
        &self,
        vips: &[(&str, &[&str])],
        since: Option<Instant>,
        yielding: &[&str],
    ) {
        let vips: BTreeMap<IpAddr, Announce> = vips
            .iter()
            .map(|(vip, ifs)| {
                let interfaces = ifs.iter().map(|s| s.to_string()).collect();
                let yields = yielding.contains(vip);
                (
                    vip.parse().unwrap(),
                    Announce {
                        interfaces,
                        since,
                        yields,
                    },
                )
            })
            .collect();
        self.plan.send_replace(Announcements { vips });
    }

    /// The client claims `vip` on c0 with gratuitous ARP requests and replies from its own MAC, as a node taking it
    /// over does (arping needs the source address to be local, so the client holds it on c1 meanwhile).
    fn claim_from_client(&self, vip: &str) -> Result<()> {
        self.client.ip(&format!("addr add {vip}/32 dev c1"))?;
        for mode in ["-U", "-A"] {
            run_in(
                &self.client.name,
                &["arping", mode, "-c", "2", "-I", "c0", "-s", vip, vip],
                Duration::from_secs(10),
            )?;
        }
        self.client.ip(&format!("addr del {vip}/32 dev c1"))
    }

    fn metric(&self, name: &str) -> Option<String> {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
    }

    fn gratuitous_sent(&self) -> u64 {
        let text = self.metrics_text();
        text.lines()
            .filter(|l| l.starts_with("ironlb_gratuitous_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// Waits, bounded, until the responder has sent at least `n` gratuitous packets: the plan has been applied.
    fn wait_gratuitous(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.gratuitous_sent() < n {
            ensure!(
                Instant::now() < deadline,
                "only {} gratuitous packets after 5 s",
                self.gratuitous_sent()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Runs `arping -c 1 -w 2` from the client and returns the MACs of the replies it printed.
    fn arping(&self, iface: &str, source: &str, vip: &str) -> Result<Vec<String>> {
        let out = run_in(
            &self.client.name,
            &[
                "arping", "-c", "1", "-w", "2", "-I", iface, "-s", source, vip,
            ],
            Duration::from_secs(10),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let macs: Vec<String> = stdout
            .lines()
            .filter(|l| l.contains("reply from"))
            .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_lowercase()))
            .collect();
        Ok(macs)
    }

    /// Runs `ndisc6` from the client and returns the link-layer address it resolved, if any.
    fn ndisc6(&self, vip: &str) -> Result<Option<String>> {
        let out = run_in(
            &self.client.name,
            &["ndisc6", "-1", "-r", "2", "-w", "1000", vip, "c0"],
            Duration::from_secs(10),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        Ok(stdout
            .lines()
            .find_map(|l| l.strip_prefix("Target link-layer address: "))
            .map(|mac| mac.trim().to_lowercase()))
    }

    fn neighbour(&self, vip: &str) -> Result<String> {
        let out = run_in(
            &self.client.name,
            &["ip", "neigh", "show", vip, "dev", "c0"],
            Duration::from_secs(5),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).to_lowercase())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.node.take();
    }
}

fn no_repeats() -> ArpConfig {
    ArpConfig {
        garp_period: Duration::ZERO,
        read_timeout: Duration::from_millis(100),
    }
}

#[test]
fn answers_arp_and_ndp_for_owned_vips_on_selected_interfaces_only() -> Result<()> {
    if !is_root() {
        eprintln!("skipping netns_arp: needs root to create network namespaces");
        return Ok(());
    }
    let lab = Lab::new(no_repeats())?;

    // Before any plan, the node is silent: the kernel holds the VIP but strict ARP keeps it quiet.
    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        Vec::<String>::new(),
        "kernel or responder answered unowned VIP"
    );

    // kube-ipvs0 and lo are refused (logged), and must not stop n0 from working.
    lab.announce(
        &[
            (VIP_A, &["n0", "kube-ipvs0", "lo"]),
            (VIP_B, &["n1"]),
            (VIP_6, &["n0"]),
        ],
        None,
    );
    lab.wait_gratuitous(5)?;

    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        vec![N0_MAC.to_string()],
        "exactly one reply, from n0's MAC"
    );
    assert_eq!(lab.ndisc6(VIP_6)?, Some(N0_MAC.to_string()));
    // n1 answers for its own VIP but not for VIP_A, which is selected on n0 only.
    assert_eq!(
        lab.arping("c1", "198.51.100.1", VIP_B)?,
        vec![N1_MAC.to_string()]
    );
    assert_eq!(
        lab.arping("c1", "198.51.100.1", VIP_A)?,
        Vec::<String>::new(),
        "VIP answered on an unselected interface"
    );

    // Hostile input: the client claims VIP_A with gratuitous requests and replies from its own MAC. The responder
    // must keep answering.
    lab.claim_from_client(VIP_A)?;
    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        vec![N0_MAC.to_string()],
        "spoofed claims silenced the owner"
    );

    let text = lab.metrics_text();
    for line in [
        "ironlb_arp_requests_total 3",
        "ironlb_arp_replies_total 3",
        "ironlb_ndp_solicitations_total 1",
        "ironlb_ndp_advertisements_total 1",
        "ironlb_gratuitous_total{family=\"ipv4\"} 4",
        "ironlb_gratuitous_total{family=\"ipv6\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    // Release: VIP_A leaves the plan and is no longer answered; the others still are.
    lab.announce(&[(VIP_B, &["n1"]), (VIP_6, &["n0"])], None);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        Vec::<String>::new(),
        "released VIP still answered"
    );
    assert_eq!(
        lab.arping("c1", "198.51.100.1", VIP_B)?,
        vec![N1_MAC.to_string()]
    );

    // Everything released: n0's port closes, and NDP for the VIP goes unanswered too.
    lab.announce(&[], None);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(lab.ndisc6(VIP_6)?, None, "released IPv6 VIP still answered");
    Ok(())
}

#[test]
fn a_vip_being_handed_over_goes_quiet_when_another_station_announces_it() -> Result<()> {
    if !is_root() {
        eprintln!("skipping netns_arp: needs root to create network namespaces");
        return Ok(());
    }
    let lab = Lab::new(no_repeats())?;
    lab.announce(&[(VIP_A, &["n0"]), (VIP_B, &["n1"])], None);
    lab.wait_gratuitous(4)?;
    // The agent hands VIP_A over: still answered until the new owner shows itself (make before break).
    lab.announce_yielding(&[(VIP_A, &["n0"]), (VIP_B, &["n1"])], None, &[VIP_A]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        vec![N0_MAC.to_string()],
        "a VIP being handed over must be answered until another station announces it"
    );
    // The new owner (here the client's MAC) announces it: no more answers, while VIP_B is untouched.
    lab.claim_from_client(VIP_A)?;
    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        Vec::<String>::new(),
        "still answering for a VIP another station took over"
    );
    assert_eq!(
        lab.arping("c1", "198.51.100.1", VIP_B)?,
        vec![N1_MAC.to_string()]
    );
    assert_eq!(lab.metric("ironlb_arp_yielded_total").as_deref(), Some("1"));
    // Later passes that still hand it over do not bring it back.
    lab.announce_yielding(
        &[(VIP_A, &["n0"]), (VIP_B, &["n1"]), (VIP_6, &["n0"])],
        None,
        &[VIP_A],
    );
    lab.wait_gratuitous(5)?;
    assert_eq!(lab.arping("c0", "192.0.2.1", VIP_A)?, Vec::<String>::new());
    // The move is undone (the plan owns it plainly again): answered and announced again.
    let before = lab.gratuitous_sent();
    lab.announce(
        &[(VIP_A, &["n0"]), (VIP_B, &["n1"]), (VIP_6, &["n0"])],
        None,
    );
    lab.wait_gratuitous(before + 2)?;
    assert_eq!(
        lab.arping("c0", "192.0.2.1", VIP_A)?,
        vec![N0_MAC.to_string()]
    );
    Ok(())
}

#[test]
fn takeover_announcement_updates_client_neighbour_entries() -> Result<()> {
    if !is_root() {
        eprintln!("skipping netns_arp: needs root to create network namespaces");
        return Ok(());
    }
    let lab = Lab::new(ArpConfig {
        garp_period: Duration::from_millis(300),
        read_timeout: Duration::from_millis(100),
    })?;
    // The client believes another station holds the VIPs, as after the old owner died.
    for vip in [VIP_A, VIP_6] {
        run_in(
            &lab.client.name,
            &[
                "ip", "neigh", "replace", vip, "lladdr", STALE_MAC, "dev", "c0", "nud", "stale",
            ],
            Duration::from_secs(5),
        )?;
        assert!(lab.neighbour(vip)?.contains(STALE_MAC));
    }

    let since = Instant::now();
    lab.announce(&[(VIP_A, &["n0"]), (VIP_6, &["n0"])], Some(since));
    lab.wait_gratuitous(3)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (a, six) = (lab.neighbour(VIP_A)?, lab.neighbour(VIP_6)?);
        if a.contains(N0_MAC) && six.contains(N0_MAC) {
            // A figure, not an assertion: plan change to both client entries seen updated, including `ip` runs.
            eprintln!(
                "takeover: client neighbour entries updated {:?} after the plan change",
                since.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client neighbours not updated by the takeover: {a:?} {six:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // One failover observation per VIP, at its first announcement, and well under the one-second budget here.
    let text = lab.metrics_text();
    assert!(text.contains("ironlb_failover_seconds_count 2"), "{text}");
    if let Some(sum) = text
        .lines()
        .find(|l| l.starts_with("ironlb_failover_seconds_sum"))
    {
        eprintln!("takeover: {sum} over 2 VIPs (plan change to first announcement)");
    }
    assert!(
        text.contains("ironlb_failover_seconds_bucket{le=\"1.0\"} 2"),
        "{text}"
    );

    // Repeats: within a bounded wait the periodic announcements add to the takeover ones (3 packets per round).
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.gratuitous_sent() < 9 {
        assert!(
            Instant::now() < deadline,
            "no periodic announcements: {}",
            lab.gratuitous_sent()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lab.metrics_text()
            .contains("ironlb_failover_seconds_count 2"),
        "repeats must not be observed as failovers"
    );
    Ok(())
}
