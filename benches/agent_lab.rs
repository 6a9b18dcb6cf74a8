//! Lab benchmarks of the agent's control loop, against the lab API server and real `ironlb agent` processes:
//!
//! - Service created → ingress IP in status, p50/p99 over 200 Services, beside the API floor (the same create and
//!   status patch done directly by a client, with no agent in between);
//! - allocator takeover after SIGKILL of the leader (Lease holder change, and first new IP), and after SIGTERM;
//! - agent RSS with 1,000 and 10,000 Services;
//! - API writes per minute in steady state;
//! - in this process, without the lab: the heap one allocation pass over 10,000 Services takes at its peak.
//!
//! Run with `cargo bench --bench agent_lab` (`AGENT_LAB_ONLY=rss` for the last two only). It prints a table; nothing
//! here asserts timing.

#[path = "support/mod.rs"]
mod support;
use support::{ms, percentile};

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Counts the heap in use and its peak, for the in-process measurement of one allocation pass.
struct Counting;
static HEAP: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only the byte counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = HEAP.fetch_add(layout.size(), Relaxed) + layout.size();
        HEAP_PEAK.fetch_max(now, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The heap above what `state` holds that the leader's allocation pass takes at its peak, over `n` Services as the
/// lab API server returns them, on a first pass (every Service new: the pass holds a write for each) and on a
/// repeated one (every Service already allocated: nothing to write).
fn pass_heap(n: usize) -> (f64, f64, f64) {
    use ironlb::k8s::allocation::{AllocationController, Settings};
    use ironlb::k8s::state::ClusterState;
    let mut state = ClusterState::default();
    let pool = serde_yaml::from_str(POOL).expect("the bench pool");
    let mut pool: ironlb::config::crd::IPAddressPool = pool;
    pool.metadata.resource_version = Some("1".into());
    state.apply_config(&pool);
    state.namespaces.apply(
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "default", "resourceVersion": "1",
            "labels": {"kubernetes.io/metadata.name": "default"}}}),
        )
        .expect("a valid Namespace"),
    );
    for i in 0..n {
        let mut svc = lb_service(&format!("load-{i}"));
        svc.metadata.uid = Some(format!("uid-{i}"));
        svc.metadata.resource_version = Some((i + 2).to_string());
        svc.metadata.creation_timestamp =
            serde_json::from_value(json!("2026-11-22T08:00:00Z")).ok();
        state.services.apply(svc);
    }
    let validated = ironlb::config::validate(&state.config_sources());
    let mut controller = AllocationController::new(Settings::default());
    let measure = |controller: &mut AllocationController, state: &ClusterState| {
        let base = HEAP.load(Relaxed);
        HEAP_PEAK.store(base, Relaxed);
        let pass = controller.pass(state, &validated);
        let peak = HEAP_PEAK.load(Relaxed) - base;
        (pass, peak as f64 / (1024.0 * 1024.0))
    };
    let (first, first_peak) = measure(&mut controller, &state);
    // Put the written status and annotations back, as the agent's writer does with the API's reply.
    for action in first.services {
        let mut svc = state
            .services
            .get(&action.service)
            .expect("planned")
            .clone();
        let mut value = serde_json::to_value(&svc).expect("a Service serializes");
        for patch in [action.status, action.metadata].into_iter().flatten() {
            json_patch::merge(&mut value, &patch);
        }
        svc = serde_json::from_value(value).expect("a patched Service");
        svc.metadata.resource_version = Some((n + 10).to_string());
        state.services.apply(svc);
    }
    let (again, again_peak) = measure(&mut controller, &state);
    assert!(again.services.is_empty(), "a repeated pass writes nothing");
    drop(again);
    // What the controller keeps between passes (its plan: requests, rows, the allocator): what dropping it frees.
    let with = HEAP.load(Relaxed);
    drop(controller);
    let kept = with.saturating_sub(HEAP.load(Relaxed));
    (first_peak, again_peak, kept as f64 / (1024.0 * 1024.0))
}

const POOL: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: bench, namespace: metallb-system}
spec:
  addresses: [2001:db8:1::/64]
"#;

struct Agent {
    node: String,
    metrics: u16,
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_agent(kubeconfig: &Path, node: &str, log_dir: &Path) -> Agent {
    let metrics = free_port();
    let log = std::fs::File::create(log_dir.join(format!("{node}.log"))).expect("agent log file");
    let child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["agent", "--node-name", node, "--lease-duration", "2"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ironlb agent");
    Agent {
        node: node.to_string(),
        metrics,
        child,
    }
}

/// A `/proc/PID/status` figure in KiB: `VmRSS:` (resident now) or `VmHWM:` (the peak so far).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return f64::NAN;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn lb_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        // IPv6, so that 10,000 Services fit in a documentation prefix. No NodePorts: the lab API gives them out as
        // kube-apiserver does, and its range (30000-32767) holds fewer than 10,000.
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                 "allocateLoadBalancerNodePorts": false, "selector": {"app": name}, "ports": [{"port": 80}]}
    }))
    .expect("a valid Service")
}

fn has_ip(svc: &Service) -> bool {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

/// Watches Services and records when each first shows an ingress IP.
fn track_allocations(api: Api<Service>) -> tokio::sync::watch::Receiver<BTreeMap<String, Instant>> {
    let (tx, rx) = tokio::sync::watch::channel(BTreeMap::new());
    tokio::spawn(async move {
        // A watch error (the server closing a long watch, a relist) must not end the tracking: with it ended,
        // every later wait reads as "not allocated".
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            let Ok(svc) = item else { continue };
            if has_ip(&svc) {
                let name = svc.metadata.name.clone().unwrap_or_default();
                tx.send_if_modified(|m| match m.entry(name) {
                    std::collections::btree_map::Entry::Occupied(_) => false,
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(Instant::now());
                        true
                    }
                });
            }
        }
    });
    rx
}

async fn wait_allocated(
    seen: &mut tokio::sync::watch::Receiver<BTreeMap<String, Instant>>,
    name: &str,
    limit: Duration,
) -> Option<Instant> {
    let result = tokio::time::timeout(limit, seen.wait_for(|m| m.contains_key(name))).await;
    match result {
        Ok(Ok(m)) => m.get(name).copied(),
        _ => None,
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("ironlb-allocator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder_change(
    leases: &Api<Lease>,
    old: &str,
    limit: Duration,
) -> Option<(String, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(h) = holder(leases).await
            && h != old
        {
            return Some((h, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too and only wants a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    // `AGENT_LAB_ONLY=rss` runs only the memory and steady-state part (3), for work on the leader's memory.
    let only_rss = std::env::var("AGENT_LAB_ONLY").is_ok_and(|v| v == "rss");
    // First, while nothing else runs in this process: the heap counter sees the pass alone.
    let planned = if quick { 200 } else { 10_000 };
    let (first_peak, again_peak, kept) = pass_heap(planned);
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig: PathBuf = dir.path().join("kubeconfig");
    let server = ironlb::lab::api::ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("lab API server");
    ironlb::lab::api::write_kubeconfig(&kubeconfig, &server.url()).expect("kubeconfig");
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&kubeconfig).args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        assert!(child.wait().unwrap().success(), "kubectl {args:?} failed");
    };
    kubectl(
        &[
            "apply",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/metallb.io.yaml"),
        ],
        None,
    );
    kubectl(&["apply", "-f", "-"], Some(POOL));

    let client = ironlb::agent::client(Some(&kubeconfig))
        .await
        .expect("client");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ironlb-system");
    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| start_agent(&kubeconfig, &format!("node-{i}"), dir.path()))
        .collect();
    let mut seen = track_allocations(services.clone());
    let start = Instant::now();
    while holder(&leases).await.is_none() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut rows: Vec<(String, String, String)> = Vec::new();

    // 1. Create → IP, one Service at a time, spaced so queueing does not add to the figure.
    let count = if quick {
        10
    } else if only_rss {
        0
    } else {
        200
    };
    let mut latencies = Vec::new();
    for i in 0..count {
        let name = format!("lat-{i}");
        let created = Instant::now();
        services
            .create(&PostParams::default(), &lb_service(&name))
            .await
            .expect("create");
        if let Some(at) = wait_allocated(&mut seen, &name, Duration::from_secs(10)).await {
            latencies.push(at.duration_since(created));
        }
    }
    latencies.sort();
    // The floor: the same create and status write done directly, no agent involved.
    let mut floor = Vec::new();
    for i in 0..count {
        let name = format!("floor-{i}");
        let mut svc = lb_service(&name);
        svc.spec.as_mut().unwrap().load_balancer_class = Some("example.com/not-ironlb".into());
        let created = Instant::now();
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create");
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "2001:db8:2::1"}]}}});
        services
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch status");
        if let Some(at) = wait_allocated(&mut seen, &name, Duration::from_secs(10)).await {
            floor.push(at.duration_since(created));
        }
    }
    floor.sort();
    // A section that ran and measured nothing is a failed run, not a 0.0 ms figure; one that did not run prints no row.
    assert!(
        count == 0 || (!latencies.is_empty() && !floor.is_empty()),
        "create → IP measured nothing: {} of {count} Services allocated, {} of {count} floor writes seen",
        latencies.len(),
        floor.len()
    );
    if count > 0 {
        rows.push((
            format!(
                "Service create → ingress IP, {} Services (allocated {})",
                count,
                latencies.len()
            ),
            format!(
                "p50 {} / p99 {}",
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99))
            ),
            format!(
                "API floor p50 {} / p99 {}",
                ms(percentile(&floor, 0.5)),
                ms(percentile(&floor, 0.99))
            ),
        ));
    }

    // 2. Takeover after SIGKILL and after SIGTERM.
    let trials = if quick {
        1
    } else if only_rss {
        0
    } else {
        5
    };
    for (signal, label) in [("-KILL", "SIGKILL"), ("-TERM", "SIGTERM")] {
        let mut to_holder = Vec::new();
        let mut to_ip = Vec::new();
        for t in 0..trials {
            let Some(old) = holder(&leases).await else {
                break;
            };
            let idx = agents
                .iter()
                .position(|a| a.node == old)
                .expect("holder is one of ours");
            let killed = Instant::now();
            let _ = Command::new("kill")
                .arg(signal)
                .arg(agents[idx].child.id().to_string())
                .status();
            let _ = agents[idx].child.wait();
            let name = format!("takeover-{label}-{t}");
            services
                .create(&PostParams::default(), &lb_service(&name))
                .await
                .expect("create");
            if let Some((_, d)) = wait_holder_change(&leases, &old, Duration::from_secs(20)).await {
                to_holder.push(d);
            }
            if let Some(at) = wait_allocated(&mut seen, &name, Duration::from_secs(20)).await {
                to_ip.push(at.duration_since(killed));
            }
            agents[idx] = start_agent(&kubeconfig, &old, dir.path());
        }
        to_holder.sort();
        to_ip.sort();
        if trials == 0 {
            continue;
        }
        assert!(
            !to_holder.is_empty() && !to_ip.is_empty(),
            "takeover after {label} measured nothing: {} of {trials} trials saw a new holder, {} a new IP",
            to_holder.len(),
            to_ip.len()
        );
        rows.push((
            format!(
                "Allocator takeover after {label} of the leader ({} trials)",
                to_holder.len()
            ),
            format!(
                "new holder median {} (max {}), first new IP median {}",
                ms(percentile(&to_holder, 0.5)),
                ms(to_holder.last().copied().unwrap_or_default()),
                ms(percentile(&to_ip, 0.5))
            ),
            "Lease duration 2 s (--lease-duration 2)".to_string(),
        ));
    }

    // 3. RSS at 1,000 and 10,000 Services, and steady-state writes.
    let targets: &[usize] = if quick { &[50] } else { &[1_000, 10_000] };
    let mut created = 0usize;
    // The request log's length when the last Service was seen allocated: what the agents wrote after that and before
    // the steady-state window opens is listed too.
    let mut log_at_allocated = 0;
    for &target in targets {
        let batch_start = Instant::now();
        // The allocator Lease's holder, read every 100 creates and at the end of the fill: how often it changed hands.
        let mut last_holder = holder(&leases).await;
        let mut handovers = 0usize;
        while created < target {
            let name = format!("load-{created}");
            services
                .create(&PostParams::default(), &lb_service(&name))
                .await
                .expect("create");
            created += 1;
            if created.is_multiple_of(100) {
                let now = holder(&leases).await;
                if now.is_some() && now != last_holder {
                    handovers += 1;
                    last_holder = now;
                }
            }
        }
        // Creation timestamps have one-second resolution, so the last-created is not always the last allocated.
        let loaded = |m: &BTreeMap<String, Instant>| {
            m.keys().filter(|k| k.starts_with("load-")).count() >= target
        };
        let all_done = tokio::time::timeout(Duration::from_secs(300), seen.wait_for(loaded))
            .await
            .is_ok_and(|r| r.is_ok());
        let fill = batch_start.elapsed();
        let now = holder(&leases).await;
        if now.is_some() && now != last_holder {
            handovers += 1;
        }
        rows.push((
            format!("Allocator Lease changes of hand while filling to {target} Services"),
            handovers.to_string(),
            "target 0 (holder read every 100 creates and at the end)".to_string(),
        ));
        log_at_allocated = server.requests().len();
        // Steady state: the leader hands the memory its last passes freed back to the system once they have been
        // quiet for half a second. The peak stays visible as VmHWM.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = holder(&leases).await.unwrap_or_default();
        let rss: Vec<String> = agents
            .iter()
            .map(|a| {
                let mib = |field| status_kib(a.child.id(), field) as f64 / 1024.0;
                format!(
                    "{}{} {:.1} MiB (peak {:.1})",
                    a.node,
                    if a.node == leader { " (leader)" } else { "" },
                    mib("VmRSS:"),
                    mib("VmHWM:")
                )
            })
            .collect();
        rows.push((
            format!("Agent RSS with {target} Services"),
            rss.join(", "),
            format!(
                "all allocated: {all_done}; filled in {:.1} s",
                fill.as_secs_f64()
            ),
        ));
    }
    let window = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(20)
    };
    let Some(leader) = holder(&leases).await else {
        panic!("no allocator leader at the end of the run")
    };
    let port = agents
        .iter()
        .find(|a| a.node == leader)
        .map(|a| a.metrics)
        .unwrap_or_default();
    // Every write any client sends during the window, from the lab API server's request log, with its time into the
    // window: the agents' counter says how many, the log says which object.
    let logged = |server: &ironlb::lab::api::ApiServer| server.requests().len();
    let mut offset = logged(&server);
    for r in server
        .requests()
        .iter()
        .skip(log_at_allocated)
        .take(offset.saturating_sub(log_at_allocated))
    {
        if r.method != "GET" && !r.path.contains("/leases/") {
            println!(
                "write after the last allocation, before the window: {} {}",
                r.method, r.path
            );
        }
    }
    let before = metric(port, "ironlb_api_writes_total");
    let window_start = Instant::now();
    let mut writes: Vec<(Duration, String)> = Vec::new();
    let mut rotated = false;
    while window_start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = server.requests();
        rotated |= log.len() == ironlb::lab::api::server::RequestLog::CAPACITY;
        let at = window_start.elapsed();
        for r in log.iter().skip(offset) {
            if r.method != "GET" {
                writes.push((at, format!("{} {}", r.method, r.path)));
            }
        }
        offset = log.len();
    }
    let after = metric(port, "ironlb_api_writes_total");
    let per_minute = |n: usize| n as f64 * 60.0 / window.as_secs_f64();
    let is_lease = |w: &str| w.contains("/leases/");
    let others: Vec<&(Duration, String)> = writes.iter().filter(|(_, w)| !is_lease(w)).collect();
    let lease_writes = writes.len() - others.len();
    rows.push((
        "API writes per minute in steady state (Services, Events), leader's counter".to_string(),
        format!("{:.1}", (after - before) * 60.0 / window.as_secs_f64()),
        format!(
            "all clients, request log: {:.1} Service/Event writes, {:.1} Lease writes{}",
            per_minute(others.len()),
            per_minute(lease_writes),
            if rotated {
                " (log rotated: incomplete)"
            } else {
                ""
            }
        ),
    ));
    for (at, what) in &others {
        println!("steady-state write at {:.1} s: {what}", at.as_secs_f64());
    }
    // What the agents wrote after the last status write, in order: the tail of the allocation work.
    let log = server.requests();
    let last_status = log.iter().rposition(|r| {
        r.method == "PATCH" && r.path.contains("/services/") && r.path.ends_with("/status")
    });
    if let Some(last) = last_status {
        println!("last Service status write: {}", log[last].path);
        for r in &log[last + 1..] {
            if r.method != "GET" && !r.path.contains("/leases/") {
                println!("  then: {} {}", r.method, r.path);
            }
        }
    }
    let rss_after: Vec<String> = agents
        .iter()
        .map(|a| {
            let mib = |field| status_kib(a.child.id(), field) as f64 / 1024.0;
            format!(
                "{} {:.1} MiB (peak {:.1})",
                a.node,
                mib("VmRSS:"),
                mib("VmHWM:")
            )
        })
        .collect();
    println!(
        "RSS after the steady-state window: {}",
        rss_after.join(", ")
    );

    rows.push((
        format!("Heap peak of one allocation pass over {planned} Services, in process"),
        format!(
            "repeated pass {again_peak:.1} MiB; first pass (a write for every Service) {first_peak:.1} MiB; kept between \
             passes (the plan) {kept:.1} MiB"
        ),
        "above the ClusterState holding the Services".to_string(),
    ));

    println!("\n| measurement | IronLB | reference |\n|---|---|---|");
    for (what, value, reference) in rows {
        println!("| {what} | {value} | {reference} |");
    }
    drop(agents);
    let _ = server.shutdown().await;
}
