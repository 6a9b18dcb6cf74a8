//! VM tier: IronLB beside a real kube-proxy in IPVS mode (`ironlb lab --api real --kube-proxy ipvs`, through
//! `scripts/vm-lab`). The kernel here has IPVS, so kube-proxy programs it itself: the real control plane, a real
//! kube-proxy and an IronLB agent in every node namespace, a pod behind every node, a client on the LAN.
//!
//! It checks, against what kube-proxy itself did, the statements DESIGN and the README make about its IPVS mode:
//! - it makes `kube-ipvs0` (a dummy link) and binds every LoadBalancer ingress IP on it, on every node;
//! - its `strictARP: true` raises `arp_ignore` to 1 and `arp_announce` to 2 (the agents here only check, with
//!   `--strict-arp=check`, so the values are kube-proxy's), and with them only the owner answers ARP;
//! - it programs a virtual service per VIP and port: a `Cluster` Service with every pod as a real server and the
//!   connection source-NATed by the node that received it, a `Local` one with the node's own pod only and the
//!   client's address kept;
//! - `ironlb verify` agrees with what kube-proxy programmed, and reports drift when a real server is removed behind
//!   its back;
//! - at a sync it removes from `kube-ipvs0` an address it did not bind and deletes a virtual server it did not make
//!   (why the direct data plane binds on `ironlb0` and asks for `ipvs.excludeCIDRs`);
//! - it programs nothing, and binds nothing, for an ingress IP whose `ipMode` is `Proxy`, and does both for the same
//!   kind of Service whose ingress IP has no `ipMode`.
//!
//! Then the way off IPVS, as a benchmark on a cluster of its own: a client connects to every VIP every 20 ms (aiming
//! at 50 connections a second per VIP; the VM's emulated CPUs allow fewer, and the output says how many) while each
//! node in turn has its kube-proxy restarted in nftables mode (whose start flushes IPVS and deletes `kube-ipvs0`,
//! kube-proxy's own cleanup). No Service's IP and no VIP's owner may change, no connection may fail outside a
//! node's kube-proxy restart window (from its stop until its nftables rules hold every VIP), and the failures inside
//! it are counted and printed for BENCHMARKS.md.
//!
//! Runs only inside the VM that `scripts/vm-test` boots (`IRONLB_VM=1`).

mod netns_support;
mod real_api_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironlb::k8s::report::StatusRow;
use ironlb::lab::cluster::{Lab, LabOptions};
use ironlb::lab::kube_proxy::KubeProxyMode;
use ironlb::lab::topology;
use kube::api::Api;
use netns_support::kube_proxy::{
    check_paths, nft_has, placement, published_mode, quiet, wait_all_published,
};
use netns_support::{Logs, wait_until};

fn in_vm() -> bool {
    if std::env::var("IRONLB_VM").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: needs the VM tier (scripts/vm-test)");
    false
}

fn sysctl(netns: &str, key: &str) -> String {
    let out = topology::run_in(netns, &["sysctl", "-n", key]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ironlb verify` in `node`'s namespace, as the agent's ServiceAccount: its exit status and output.
fn verify(lab: &Lab, node: &str) -> (bool, String) {
    let netns = &lab.node(node).unwrap().netns;
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            env!("CARGO_BIN_EXE_ironlb"),
            "verify",
            "--node-name",
            node,
        ])
        .arg("--kubeconfig")
        .arg(lab.node_kubeconfig())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// One connection attempt of the client: when, to which VIP, and whether a pod answered.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    at: Instant,
    vip: IpAddr,
    ok: bool,
    /// Why it failed: no connection within the timeout, refused, or an answer that was not a pod's.
    why: Option<&'static str>,
}

/// A client in the lab's client namespace that connects to every VIP every 20 ms (50 connections a second per VIP)
/// until dropped, and records each attempt.
struct Load {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab, vips: Vec<IpAddr>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let client = lab.topology.client.clone();
        let (flag, log) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let _ = ironlb::lab::netns::in_netns(&client, move || {
                while !flag.load(Ordering::Relaxed) {
                    let round = Instant::now();
                    for vip in &vips {
                        let at = Instant::now();
                        let why = connect(*vip).err();
                        log.lock().unwrap().push(Attempt {
                            at,
                            vip: *vip,
                            ok: why.is_none(),
                            why,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20).saturating_sub(round.elapsed()));
                }
            });
        });
        Load {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection to `vip`:80 that a pod answers, within 3 s (the VM's emulated CPUs are slow while kube-proxy
/// restarts), or why not.
fn connect(vip: IpAddr) -> Result<(), &'static str> {
    use std::io::{ErrorKind, Read};
    let limit = Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&SocketAddr::new(vip, 80), limit)
        .map_err(|e| match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => "no connection within 3 s",
            ErrorKind::ConnectionRefused => "refused",
            _ => "connect failed",
        })?;
    let _ = stream.set_read_timeout(Some(limit));
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|_| "reset or no answer")?;
    ironlb::lab::cluster::PodReply::parse(&text)
        .map(|_| ())
        .ok_or("answered, but not by a pod")
}

/// Whether `node`'s IPVS has a virtual service on `vip`:80, and whether `kube-ipvs0` holds `vip`.
fn programmed(lab: &Lab, node: &str, vip: &str) -> (bool, bool) {
    let netns = &lab.node(node).unwrap().netns;
    let table = lab.ipvs(node).unwrap();
    let addrs =
        topology::run_in(netns, &["ip", "-o", "addr", "show", "dev", "kube-ipvs0"]).unwrap();
    (
        table.contains(&format!("{vip}:80 ")),
        String::from_utf8_lossy(&addrs.stdout).contains(&format!(" {vip}/")),
    )
}

/// kube-proxy's cleanup at a sync, and its treatment of `ipMode: Proxy`, on `node`, with Services IronLB does not
/// handle (their `loadBalancerClass` is another's) and whose status the test writes itself.
async fn kube_proxy_cleanup_and_ip_mode(lab: &Lab, node: &str, limit: Duration) {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Patch, PatchParams, PostParams};
    let netns = lab.node(node).unwrap().netns.clone();
    // Outside the pools, so IronLB's binder leaves it: only kube-proxy may remove it.
    let stray = "192.0.2.99";
    topology::run_in(
        &netns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{stray}/32"),
            "dev",
            "kube-ipvs0",
        ],
    )
    .unwrap();
    topology::run_in(
        &netns,
        &["ipvsadm", "-A", "-t", &format!("{stray}:80"), "-s", "rr"],
    )
    .unwrap();
    assert_eq!(programmed(lab, node, stray), (true, true));

    // Two Services of another load balancer's class, one with ipMode Proxy: creating them makes kube-proxy sync.
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    for (name, ip, mode) in [
        ("other-vip", "192.0.2.97", None),
        ("other-proxy", "192.0.2.98", Some("Proxy")),
    ] {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "type": "LoadBalancer", "loadBalancerClass": "example.com/other",
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }))
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
        lab.set_endpoints(
            name,
            &lab.node_names()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        let mut ingress = serde_json::json!({"ip": ip});
        if let Some(mode) = mode {
            ingress["ipMode"] = mode.into();
        }
        let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [ingress]}}});
        services
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    wait_until(
        "kube-proxy to program the VIP-mode Service and remove what it did not make",
        limit,
        || async {
            tokio::task::block_in_place(|| {
                programmed(lab, node, "192.0.2.97") == (true, true)
                    && programmed(lab, node, stray) == (false, false)
            })
        },
    )
    .await;
    // Synced past both Services: the Proxy-mode IP has neither a virtual service nor a binding.
    assert_eq!(
        tokio::task::block_in_place(|| programmed(lab, node, "192.0.2.98")),
        (false, false),
        "kube-proxy leaves an ipMode: Proxy ingress IP alone"
    );
    for name in ["other-vip", "other-proxy"] {
        services.delete(name, &Default::default()).await.unwrap();
    }
}

/// Generous: under the VM's emulated CPUs one iptables-restore of kube-proxy has taken 12 s, and a kube-proxy
/// restart in another mode minutes.
const LIMIT: Duration = Duration::from_secs(300);

/// A two-node lab on the real control plane with kube-proxy in IPVS mode in every node, once every VIP is announced
/// and forwarded and the owners hold still; None outside the VM.
async fn ipvs_lab(tag: &str) -> Option<(Lab, Vec<StatusRow>, Vec<IpAddr>)> {
    if !in_vm() {
        return None;
    }
    let options = real_api_support::on_real_api(LabOptions {
        kube_proxy: Some(KubeProxyMode::Ipvs),
        ..netns_support::options(tag, 2, 2, "check", &[])
    })?;
    let started = Instant::now();
    let lab = Lab::start(options).await.expect("lab starts");
    println!(
        "lab with the real control plane and kube-proxy up in {} s",
        started.elapsed().as_secs()
    );
    lab.wait_announced(LIMIT).await.unwrap();
    lab.wait_forwarding(LIMIT).await.unwrap_or_else(|e| {
        let (_, log) = lab.kube_proxy("node-1").unwrap();
        panic!(
            "{e}\n--- kube-proxy of node-1 ---\n{}",
            ironlb::lab::kube_proxy::log_tail(log, 40)
        )
    });
    let rows = quiet(&lab, LIMIT).await;
    let vips: Vec<IpAddr> = rows
        .iter()
        .flat_map(|r| r.vips.iter().map(|v| v.parse().unwrap()))
        .collect();
    println!(
        "every VIP forwarded by kube-proxy {} s after the start",
        started.elapsed().as_secs()
    );
    Some((lab, rows, vips))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipvs_kube_proxy_binds_every_vip_programs_ipvs_and_verify_agrees() {
    let Some((lab, rows, vips)) = ipvs_lab("ilb-vkp").await else {
        return;
    };
    let _logs = Logs::of(&lab);
    let limit = LIMIT;
    for node in lab.topology.nodes.clone() {
        let link = topology::run_in(
            &node.netns,
            &["ip", "-d", "-o", "addr", "show", "dev", "kube-ipvs0"],
        )
        .expect("kube-proxy's IPVS mode makes kube-ipvs0");
        let link = String::from_utf8_lossy(&link.stdout).to_string();
        let kind = topology::run_in(
            &node.netns,
            &["ip", "-d", "-o", "link", "show", "dev", "kube-ipvs0"],
        )
        .unwrap();
        assert!(
            String::from_utf8_lossy(&kind.stdout).contains("dummy"),
            "kube-ipvs0 is a dummy link"
        );
        for vip in &vips {
            assert!(
                link.contains(&format!(" {vip}/")),
                "{}: kube-proxy binds {vip} on kube-ipvs0: {link}",
                node.name
            );
        }
        assert_eq!(
            sysctl(&node.netns, "net.ipv4.conf.all.arp_ignore"),
            "1",
            "kube-proxy's strictARP"
        );
        assert_eq!(
            sysctl(&node.netns, "net.ipv4.conf.all.arp_announce"),
            "2",
            "kube-proxy's strictARP"
        );
    }
    wait_all_published(&lab, "ipvs", limit).await;
    tokio::task::block_in_place(|| check_paths(&lab, &rows, "default/demo-2"));

    // What kube-proxy programmed for the Local Service: only the owner's own pod.
    let local = rows.iter().find(|r| r.service == "default/demo-2").unwrap();
    let owner = local.owners[0].clone();
    let table = lab.ipvs(&owner).unwrap();
    let pod = lab.topology.pod_of(&owner).unwrap().clone();
    let other = lab
        .topology
        .pods
        .iter()
        .find(|p| p.node != owner)
        .unwrap()
        .clone();
    let service = table
        .split("\nTCP")
        .find(|s| s.trim_start().starts_with(&format!("{}:80", local.vips[0])))
        .unwrap_or_else(|| {
            panic!(
                "no virtual service for {} in {owner}:\n{table}",
                local.vips[0]
            )
        });
    assert!(service.contains(&format!("{}:8080", pod.ipv4)), "{service}");
    assert!(
        !service.contains(&format!("{}:8080", other.ipv4)),
        "Local has only local pods: {service}"
    );

    // `ironlb verify` agrees with kube-proxy, and sees a real server removed behind its back.
    let (ok, text) = tokio::task::block_in_place(|| verify(&lab, &owner));
    assert!(ok, "verify agrees with what kube-proxy programmed:\n{text}");
    let cluster = rows.iter().find(|r| r.service == "default/demo-1").unwrap();
    let vip = cluster.vips[0].clone();
    let removed = lab.topology.pods[0].ipv4;
    // kube-proxy puts the real server back at its next sync, which can come before verify has read the table on the
    // VM's emulated CPUs (one verify takes seconds there, and CI saw the table restored in time): each attempt
    // removes it again, and verify must report it in an attempt where it read the table first. Five attempts in a
    // row that all found the table restored fail the test.
    let mut last = (true, String::new());
    for attempt in 1..=5 {
        topology::run_in(
            &lab.node(&owner).unwrap().netns,
            &[
                "ipvsadm",
                "-d",
                "-t",
                &format!("{vip}:80"),
                "-r",
                &format!("{removed}:8080"),
            ],
        )
        .unwrap();
        last = tokio::task::block_in_place(|| verify(&lab, &owner));
        if !last.0 {
            println!("verify reported the removed real server at attempt {attempt}");
            break;
        }
    }
    let (ok, text) = last;
    assert!(!ok, "verify reports the missing real server:\n{text}");
    assert!(text.contains(&removed.to_string()), "{text}");

    kube_proxy_cleanup_and_ip_mode(&lab, &owner, limit).await;
}

/// The way off IPVS, as a benchmark: minutes under the VM's emulated CPUs (each kube-proxy restart takes two to four),
/// so `scripts/bench` runs it (`IRONLB_VM_BENCH=1 VM_TEST_BINS=vm_kube_proxy scripts/vm-test`), not every CI run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench runs it in the VM"]
async fn leaving_ipvs_node_by_node_moves_no_vip_and_fails_only_inside_kube_proxys_restarts() {
    let Some((mut lab, rows, vips)) = ipvs_lab("ilb-vkpm").await else {
        return;
    };
    let _logs = Logs::of(&lab);
    let limit = LIMIT;
    // Leaving IPVS, node by node, under load.
    let before = placement(&rows);
    let load = Load::start(&lab, vips.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut windows = Vec::new();
    for node in lab.node_names() {
        let stopped = Instant::now();
        lab.restart_kube_proxy(&node, KubeProxyMode::Nftables)
            .unwrap();
        wait_until(
            &format!("{node}'s nftables rules for every VIP"),
            limit,
            || async { tokio::task::block_in_place(|| nft_has(&lab, &node, &vips)) },
        )
        .await;
        let ready = Instant::now();
        windows.push((node.clone(), stopped, ready));
        wait_until(
            &format!("{node} to publish nftables mode"),
            limit,
            || async { published_mode(&lab, &node).await.as_deref() == Some("nftables") },
        )
        .await;
        let links =
            topology::run_in(&lab.node(&node).unwrap().netns, &["ip", "-o", "link"]).unwrap();
        assert!(
            !String::from_utf8_lossy(&links.stdout).contains("kube-ipvs0"),
            "nftables kube-proxy deletes kube-ipvs0 at its start"
        );
        // Some traffic after the window, so a failure that comes late is seen.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let attempts = load.attempts();
    drop(load);
    let rows = lab.status().await.unwrap();
    let after = placement(&rows);
    assert_eq!(
        after, before,
        "no Service IP and no owner changes while the nodes leave IPVS"
    );
    // An attempt is stamped when it starts and lasts up to 3 s, so one started just before a window's end is still
    // inside it.
    let inside = |a: &Attempt| {
        windows
            .iter()
            .find(|(_, from, to)| a.at >= *from && a.at <= *to + Duration::from_secs(3))
            .map(|(node, _, _)| node.clone())
    };
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    let outside: Vec<&&Attempt> = failed.iter().filter(|a| inside(a).is_none()).collect();
    let span = match (attempts.first(), attempts.last()) {
        (Some(a), Some(b)) => (b.at - a.at).as_secs_f64().max(1.0),
        _ => 1.0,
    };
    println!(
        "leaving IPVS: {} connection attempts to {} VIPs ({:.1} per second per VIP), {} failed, {} outside \
         kube-proxy's restart windows",
        attempts.len(),
        vips.len(),
        attempts.len() as f64 / span / vips.len() as f64,
        failed.len(),
        outside.len()
    );
    for (node, from, to) in &windows {
        let here = failed
            .iter()
            .filter(|a| inside(a).as_deref() == Some(node.as_str()))
            .count();
        let total = attempts
            .iter()
            .filter(|a| a.at >= *from && a.at <= *to + Duration::from_secs(3))
            .count();
        println!(
            "  {node}: restart window {} ms (stop to nftables rules for every VIP), {here} of {total} attempts failed",
            (*to - *from).as_millis()
        );
    }
    let by_vip: std::collections::BTreeMap<IpAddr, usize> =
        failed.iter().fold(Default::default(), |mut m, a| {
            *m.entry(a.vip).or_default() += 1;
            m
        });
    println!("  failed attempts per VIP: {by_vip:?}");
    let first = attempts.first().map(|a| a.at).unwrap_or_else(Instant::now);
    for a in &outside {
        println!(
            "  outside: {} at {} ms after the load started: {}",
            a.vip,
            (a.at - first).as_millis(),
            a.why.unwrap_or_default()
        );
    }
    for (node, from, to) in &windows {
        println!(
            "  window of {node}: {} to {} ms",
            (*from - first).as_millis(),
            (*to - first).as_millis()
        );
    }
    assert!(
        outside.is_empty(),
        "connections failed outside any restart window: {outside:?}"
    );
    assert!(
        attempts.len() > 100,
        "the client made {} attempts",
        attempts.len()
    );
    tokio::task::block_in_place(|| check_paths(&lab, &rows, "default/demo-2"));
    for node in lab.node_names() {
        assert_eq!(
            published_mode(&lab, &node).await.as_deref(),
            Some("nftables")
        );
    }
}

/// One data plane beside one kube-proxy mode, for the figures below.
struct Setup {
    mode: KubeProxyMode,
    direct: bool,
}

impl Setup {
    fn name(&self) -> String {
        format!(
            "kube-proxy {}, {} data plane",
            self.mode,
            if self.direct { "direct" } else { "integrated" }
        )
    }
}

/// Trials of each figure per setup.
const TRIALS: usize = 3;

/// Creates a `Cluster` Service with a pod behind every node and times, from the create call, until its VIP is in its
/// status and until a pod first answers the client on it (tries every 50 ms, each bounded to 200 ms). None when
/// either takes longer than [`LIMIT`].
async fn create_to_connection(lab: &Lab, name: &str) -> Option<(Duration, Duration)> {
    use k8s_openapi::api::core::v1::Service;
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let start = Instant::now();
    lab.create_demo_service(name, false, false, None)
        .await
        .unwrap();
    let (vip, got_ip) = loop {
        let svc = services.get(name).await.unwrap();
        let ip = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .and_then(|i| i.first().and_then(|i| i.ip.clone()));
        if let Some(ip) = ip {
            break (ip.parse::<IpAddr>().unwrap(), start.elapsed());
        }
        if start.elapsed() > LIMIT {
            println!("{name} got no IP within {LIMIT:?}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let answered = tokio::task::block_in_place(|| {
            lab.connect_from_client(vip, Duration::from_millis(200))
                .ok()
                .and_then(|t| ironlb::lab::cluster::PodReply::parse(&t))
                .is_some()
        });
        if answered {
            return Some((got_ip, start.elapsed()));
        }
        if start.elapsed() > LIMIT {
            println!("no pod answered {name}'s VIP {vip} within {LIMIT:?}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spread(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no sample".into();
    }
    samples.sort();
    format!(
        "median {} ms, min {} ms, max {} ms (n={})",
        samples[samples.len() / 2].as_millis(),
        samples[0].as_millis(),
        samples[samples.len() - 1].as_millis(),
        samples.len()
    )
}

/// Benchmark (figures printed for BENCHMARKS.md; no timing is asserted): for kube-proxy in IPVS mode and in nftables
/// mode with the integrated data plane, and nftables mode with the direct one, on a lab of its own each: Service
/// create to first connection answered by a pod, and failover after the owner's death (agent SIGKILLed and link cut;
/// `ironlb::lab::demo::measure_failover`, TCP every 50 ms), the same trial count for each. Under TCG (scripts/bench
/// builds it in release) the
/// figures compare the setups with each other, not with real hardware.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench runs it in the VM"]
async fn bench_failover_and_create_to_connection_per_kube_proxy_mode() {
    if !in_vm() {
        return;
    }
    let setups = [
        Setup {
            mode: KubeProxyMode::Ipvs,
            direct: false,
        },
        Setup {
            mode: KubeProxyMode::Nftables,
            direct: false,
        },
        Setup {
            mode: KubeProxyMode::Nftables,
            direct: true,
        },
    ];
    let mut lines = Vec::new();
    for (n, setup) in setups.iter().enumerate() {
        let args: &[&str] = if setup.direct {
            &["--dataplane", "direct"]
        } else {
            &[]
        };
        let options = real_api_support::on_real_api(LabOptions {
            kube_proxy: Some(setup.mode),
            ..netns_support::options(&format!("ilb-vkb{n}"), 2, 2, "enforce", args)
        })
        .expect("the control plane's binaries");
        let mut lab = Lab::start(options).await.expect("lab starts");
        let _logs = Logs::of(&lab);
        let ready = match lab.wait_announced(LIMIT).await {
            Ok(_) => lab.wait_forwarding(LIMIT).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            lines.push(format!(
                "bench kube-proxy: {}: the lab never forwarded: {e}",
                setup.name()
            ));
            continue;
        }
        let (mut to_ip, mut to_connection) = (Vec::new(), Vec::new());
        for t in 0..TRIALS {
            let Some((ip, connected)) = create_to_connection(&lab, &format!("bench-{t}")).await
            else {
                continue;
            };
            println!(
                "{}: bench-{t} IP after {} ms, first connection after {} ms",
                setup.name(),
                ip.as_millis(),
                connected.as_millis()
            );
            to_ip.push(ip);
            to_connection.push(connected);
        }
        let (mut failovers, mut incomplete) = (Vec::new(), 0);
        for t in 0..TRIALS {
            let rows = quiet(&lab, LIMIT).await;
            let row = rows.iter().find(|r| r.service == "default/demo-1").unwrap();
            let vip: IpAddr = row
                .vips
                .iter()
                .find_map(|v| v.parse().ok().filter(IpAddr::is_ipv4))
                .unwrap();
            let owner = row.owners[0].clone();
            match ironlb::lab::demo::measure_failover(&mut lab, vip, &owner)
                .await
                .unwrap()
            {
                Some((took, reply)) => {
                    println!(
                        "{}: failover {t} of {vip} from {owner}: {} ms, {reply}",
                        setup.name(),
                        took.as_millis()
                    );
                    failovers.push(took);
                }
                None => {
                    println!(
                        "{}: failover {t} of {vip} from {owner}: nothing answered within 10 s",
                        setup.name()
                    );
                    incomplete += 1;
                }
            }
            ironlb::lab::demo::heal(&mut lab, &owner).unwrap();
            // Under TCG a healed node can take minutes to serve again: a trial that never recovers ends this
            // setup's failovers (said in its line), and the next setup still runs.
            if let Err(e) = lab.wait_forwarding(LIMIT).await {
                println!(
                    "{}: after failover {t}, not forwarding again: {e}",
                    setup.name()
                );
                break;
            }
        }
        lines.push(format!(
            "bench kube-proxy: {}: create to IP {}; create to first connection {}; failover {} ({incomplete} not within \
             10 s)",
            setup.name(),
            spread(&mut to_ip),
            spread(&mut to_connection),
            spread(&mut failovers)
        ));
    }
    for line in lines {
        println!("{line}");
    }
}
