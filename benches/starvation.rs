//! False failovers under CPU starvation, in the lab: three node namespaces each running a real `ironlb agent` with
//! gossip, the lab API server, Services churning; one agent is put in a cgroup (v1 `cpu` controller) limited to a
//! share of one CPU, the way a tight `resources.limits.cpu` throttles a pod. Nothing dies, so every Down the other
//! agents see (`ironlb_membership_member_downs_total`) and every VIP they take over because its owner is gone
//! (`ironlb_vip_moves_total{cause="owner-gone"}`) is false. The reference, in the same run: the same churn for the
//! same time with no limit.
//!
//! Run with `cargo bench --bench starvation` (`STARVE_SECS`, default 60; `STARVE_PERCENT`, default 5; the issue's
//! figure is 300 s at 5 %). Under `cargo test --benches` it runs a 5 s smoke version with 50 Services. Needs root and
//! a writable cgroup v1 `cpu` hierarchy (it skips with a printed reason otherwise); prints a table and asserts no
//! timing. The cgroup is removed and the lab torn down by their drops, also on panic.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironlb::config::crd::{IPAddressPool, L2Advertisement};
use ironlb::lab::cluster::{Lab, LabOptions, is_root};
use ironlb::lab::faults::metric;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";
/// The churn pool: inside the lab nodes' 2001:db8::/64, away from the lab's own pool.
const CHURN_POOL: &str = "2001:db8::1000-2001:db8::1fff";

/// A cgroup v1 `cpu` group with a quota; the processes put in it go back to the root group on drop.
struct CpuLimit {
    dir: PathBuf,
    pids: Vec<u32>,
}

impl CpuLimit {
    fn new(name: &str, percent: u64) -> std::io::Result<CpuLimit> {
        let dir = PathBuf::from(CPU_ROOT).join(name);
        std::fs::create_dir(&dir)?;
        let limit = CpuLimit {
            dir,
            pids: Vec::new(),
        };
        std::fs::write(limit.dir.join("cpu.cfs_period_us"), "100000")?;
        std::fs::write(
            limit.dir.join("cpu.cfs_quota_us"),
            (percent * 1000).to_string(),
        )?;
        Ok(limit)
    }

    fn add(&mut self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())?;
        self.pids.push(pid);
        Ok(())
    }

    /// `nr_periods`, `nr_throttled` and `throttled_time` (ns) from `cpu.stat`.
    fn stat(&self) -> (u64, u64, u64) {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (
            field("nr_periods"),
            field("nr_throttled"),
            field("throttled_time"),
        )
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = std::fs::write(
                PathBuf::from(CPU_ROOT).join("cgroup.procs"),
                pid.to_string(),
            );
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// What the unthrottled agents saw over one window: Downs and owner-gone takeovers.
fn false_failovers(lab: &Lab, nodes: &[String]) -> (f64, f64) {
    let mut downs = 0.0;
    let mut gone = 0.0;
    for node in nodes {
        let text = lab.metrics(node).unwrap_or_default();
        downs += metric(&text, "ironlb_membership_member_downs").unwrap_or(0.0);
        gone += metric(&text, "ironlb_vip_moves_total{cause=\"owner-gone\"}").unwrap_or(0.0);
    }
    (downs, gone)
}

fn churn_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"metallb.io/address-pool": "churn"}},
        "spec": {
            "type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "ipFamilies": ["IPv6"],
            "ipFamilyPolicy": "SingleStack",
        },
    }))
    .expect("a Service")
}

/// Patches `per_tick` Services' annotation every 100 ms for `window`: every agent sees a stream of changes and runs
/// its passes. Returns the number of patches.
async fn churn(services: &Api<Service>, total: usize, per_tick: usize, window: Duration) -> usize {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0usize;
    while started.elapsed() < window {
        tick.tick().await;
        for _ in 0..per_tick {
            let name = format!("churn-{}", n % total);
            let patch = json!({"metadata": {"annotations": {"bench/churn": n.to_string()}}});
            let _ = services
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            n += 1;
        }
    }
    n
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    if !is_root() {
        println!("skipped: needs root to create network namespaces and cgroups");
        return;
    }
    if !std::path::Path::new(CPU_ROOT)
        .join("cpu.cfs_quota_us")
        .exists()
    {
        println!("skipped: no cgroup v1 cpu controller at {CPU_ROOT}");
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (window, services_n) = if quick {
        (Duration::from_secs(5), 50)
    } else {
        (Duration::from_secs(env("STARVE_SECS", 60)), 1_000)
    };
    let percent = env("STARVE_PERCENT", 5);
    let prefix = format!("ilb-bst-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let lab = Lab::start(LabOptions::new(
        &prefix,
        dir.clone(),
        env!("CARGO_BIN_EXE_ironlb").into(),
        3,
        2,
    ))
    .await
    .expect("start the lab");
    lab.wait_announced(Duration::from_secs(60))
        .await
        .expect("the demo Services announced");
    let pool: IPAddressPool = serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "churn", "namespace": "metallb-system"},
        "spec": {"addresses": [CHURN_POOL], "autoAssign": false},
    }))
    .expect("a pool");
    Api::<IPAddressPool>::namespaced(lab.client.clone(), "metallb-system")
        .create(&PostParams::default(), &pool)
        .await
        .expect("create the churn pool");
    let l2: L2Advertisement = serde_json::from_value(json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
        "metadata": {"name": "churn", "namespace": "metallb-system"},
        "spec": {"ipAddressPools": ["churn"]},
    }))
    .expect("an L2Advertisement");
    Api::<L2Advertisement>::namespaced(lab.client.clone(), "metallb-system")
        .create(&PostParams::default(), &l2)
        .await
        .expect("create the churn L2Advertisement");
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let fill = Instant::now();
    for i in 0..services_n {
        services
            .create(
                &PostParams::default(),
                &churn_service(&format!("churn-{i}")),
            )
            .await
            .expect("create a churn Service");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = services.list(&Default::default()).await.expect("list");
        let with_ip = list
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .is_some_and(|i| !i.is_empty())
            })
            .count();
        if with_ip >= services_n + 2 || Instant::now() > deadline {
            println!(
                "{with_ip} Services with an IP {:.1} s after the first create",
                fill.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let ownership settle before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes = lab.node_names();
    let starved = nodes[0].clone();
    let others: Vec<String> = nodes[1..].to_vec();
    let per_tick = 10;

    // Reference: the same churn, nobody limited.
    let before = false_failovers(&lab, &others);
    let patched = churn(&services, services_n, per_tick, window).await;
    let after = false_failovers(&lab, &others);
    let reference = (after.0 - before.0, after.1 - before.1);

    // Starved: the first node's agent in a cgroup with `percent` % of one CPU.
    let pid = lab.agent_pid(&starved).expect("the agent's pid");
    let mut limit =
        CpuLimit::new(&format!("{prefix}-starved"), percent).expect("create the cpu cgroup");
    limit.add(pid).expect("move the agent into the cgroup");
    let before = false_failovers(&lab, &others);
    let patched_starved = churn(&services, services_n, per_tick, window).await;
    let after = false_failovers(&lab, &others);
    let (periods, throttled, throttled_ns) = limit.stat();
    drop(limit);
    let starved_counts = (after.0 - before.0, after.1 - before.1);

    println!(
        "\n| measurement ({services_n} Services, {} patches/s, {} s each) | {starved}'s agent at {percent} % of a \
         CPU | no limit (same run) |",
        per_tick * 10,
        window.as_secs()
    );
    println!("|---|---|---|");
    println!(
        "| Downs seen by the other agents (all false: nothing died) | {} | {} |",
        starved_counts.0, reference.0
    );
    println!(
        "| VIPs taken over as owner-gone by the other agents (false failovers) | {} | {} |",
        starved_counts.1, reference.1
    );
    println!("| Service patches applied | {patched_starved} | {patched} |");
    println!(
        "| throttled periods of the starved agent | {throttled} of {periods} ({:.1} s throttled) | n/a |",
        throttled_ns as f64 / 1e9
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
