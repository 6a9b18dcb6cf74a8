//! The agent against the real kube-apiserver (etcd + kube-apiserver built from their Go modules, RBAC on, agents
//! running as their ServiceAccount with the shipped manifest's rules) and against the lab API server (`ironlb lab
//! api`, in its own process), side by side in one run, with the same two `ironlb agent` processes per API, started
//! with the same flags (default Lease duration, 5 s):
//!
//! 1. Service create → IP in status, 200 Services created one after another (each waits for its IP before the next is
//!    created), p50/p99, timed from the create call's return to the watch event that carries the status; beside it
//!    the API floor: the same create and a status patch by a client, no agent involved;
//! 2. allocator takeover after SIGKILL and after SIGTERM of the leader, from the signal to the Lease watch event that
//!    shows the other agent holding it (5 trials each; the killed agent is restarted and has settled for 2 s before
//!    the next trial, never during one; the signals are spread evenly over the agents' 1 s renew/retry cycle);
//! 3. steady-state writes per minute over 60 s, counted as resourceVersion changes seen by watches on Services,
//!    Nodes, Events and the Leases of `ironlb-system` (node Leases apart: they renew every second by design), and
//!    by the agents' own `ironlb_api_writes_total`;
//! 4. the RSS of the leader and the follower after the 200 Services.
//!
//! Every timestamp is an `Instant` taken in this process when the watch event or the call's answer arrives.
//!
//! `cargo bench --bench real_api` runs it in full (about four minutes); `IRONLB_BENCH_SMOKE=1`, `--quick`, or a
//! run without `--bench` (`cargo test --benches`) is the smoke run: 20 Services, 1 trial of each takeover, a 10 s
//! window. Either fails, after printing what it has, when a figure came out empty. It prints a markdown table;
//! nothing here asserts a timing. It needs root (the control plane's cache), and says so and stops without it.

#[path = "../tests/real_api_support/cluster.rs"]
mod cluster;
#[path = "../tests/real_api_support/mod.rs"]
mod real_api_support;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{ms, percentile};

const NODES: [&str; 2] = ["node-1", "node-2"];
const ALLOCATOR_LEASE: &str = "ironlb-allocator";
const NODE_LEASE_PREFIX: &str = "ironlb-node-";
/// The allocator Lease duration: the agent's default, passed to neither API's agents.
const LEASE_DURATION: Duration = Duration::from_secs(5);

const POOL: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: bench, namespace: metallb-system}
spec:
  addresses: [203.0.113.0/24]
"#;

struct Settings {
    services: usize,
    trials: usize,
    window: Duration,
}

// ---------------------------------------------------------------------------------------------------------------
// What the watches saw.

/// Every resourceVersion change the bench's watches saw, when each Service first showed an IP, and every change of
/// the allocator Lease, each with the `Instant` its event arrived.
#[derive(Default)]
struct Seen {
    /// Object key → the last resourceVersion seen.
    versions: HashMap<(&'static str, String), String>,
    /// (arrival, kind, namespace/name) of every change after the watch's first list.
    writes: Vec<(Instant, &'static str, String)>,
    first_ip: HashMap<String, Instant>,
    /// (arrival, holder) of every change of the allocator Lease.
    holders: Vec<(Instant, Option<String>)>,
    watch_errors: usize,
}

impl Seen {
    fn holder(&self) -> Option<String> {
        self.holders.last().and_then(|(_, h)| h.clone())
    }
}

#[derive(Default)]
struct Audit {
    seen: Mutex<Seen>,
    changed: tokio::sync::Notify,
}

impl Audit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `check` returns Some, re-checking on every watch event, for at most `limit`.
    async fn wait<T>(
        &self,
        limit: Duration,
        mut check: impl FnMut(&Seen) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.lock()) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Watches `api`, recording each object's resourceVersion changes under the kind `classify` names, and passing
    /// each changed object to `inspect`.
    fn watch<K>(
        self: &Arc<Self>,
        api: Api<K>,
        classify: fn(&K) -> &'static str,
        inspect: fn(&K, Instant, &mut Seen),
    ) where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let audit = self.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            // Changes are counted from the end of the first list on; a later re-list counts what it finds changed.
            let mut listed = false;
            while let Some(event) = stream.next().await {
                let at = Instant::now();
                {
                    let mut seen = audit.lock();
                    let changed_object = match event {
                        Ok(watcher::Event::InitDone) => {
                            listed = true;
                            None
                        }
                        Ok(watcher::Event::Init) => None,
                        Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                            Some((o, false))
                        }
                        Ok(watcher::Event::Delete(o)) => Some((o, true)),
                        Err(_) => {
                            seen.watch_errors += 1;
                            None
                        }
                    };
                    if let Some((object, deleted)) = changed_object {
                        let kind = classify(&object);
                        let key = format!(
                            "{}/{}",
                            object.namespace().unwrap_or_default(),
                            object.name_any()
                        );
                        let version = object.resource_version().unwrap_or_default();
                        let changed = if deleted {
                            seen.versions.remove(&(kind, key.clone()));
                            true
                        } else {
                            seen.versions.insert((kind, key.clone()), version.clone())
                                != Some(version)
                        };
                        if changed {
                            if listed {
                                seen.writes.push((at, kind, key));
                            }
                            if !deleted {
                                inspect(&object, at, &mut seen);
                            }
                        }
                    }
                }
                audit.changed.notify_waiters();
            }
        });
    }

    fn start(client: &Client) -> Arc<Audit> {
        let audit = Arc::new(Audit::default());
        audit.watch(
            Api::<Service>::all(client.clone()),
            |_| "Service",
            |svc, at, seen| {
                if has_ip(svc) {
                    seen.first_ip.entry(svc.name_any()).or_insert(at);
                }
            },
        );
        audit.watch(Api::<Node>::all(client.clone()), |_| "Node", |_, _, _| {});
        audit.watch(Api::<Event>::all(client.clone()), |_| "Event", |_, _, _| {});
        audit.watch(
            Api::<Lease>::namespaced(client.clone(), "ironlb-system"),
            |lease| {
                let name = lease.name_any();
                if name == ALLOCATOR_LEASE {
                    "allocator Lease"
                } else if name.starts_with(NODE_LEASE_PREFIX) {
                    "node Lease"
                } else {
                    "other Lease"
                }
            },
            |lease, at, seen| {
                if lease.name_any() == ALLOCATOR_LEASE {
                    let holder = lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.clone())
                        .filter(|h| !h.is_empty());
                    seen.holders.push((at, holder));
                }
            },
        );
        audit
    }
}

fn has_ip(svc: &Service) -> bool {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .is_some_and(|i| !i.is_empty())
}

// ---------------------------------------------------------------------------------------------------------------
// Agents and the lab API server, as processes.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child that carries a parent-death signal (set by `setpriv` before it execs `program`), with its output in `log`.
fn spawn(program: &Path, args: &[&str], extra: &[&Path], log: &Path) -> Result<Child> {
    let file = File::create(log)?;
    Command::new("setpriv")
        .arg("--pdeathsig=KILL")
        .arg("--")
        .arg(program)
        .args(args)
        .args(extra)
        .env_clear()
        .env("RUST_LOG", "info")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))
}

struct Agent {
    child: Child,
    metrics: u16,
}

/// The `ironlb agent` processes of one API, all started the same way for both APIs.
struct Agents {
    label: &'static str,
    kubeconfig: PathBuf,
    logs: PathBuf,
    running: BTreeMap<String, Agent>,
    log_files: Vec<PathBuf>,
}

impl Agents {
    fn new(label: &'static str, kubeconfig: PathBuf, logs: &Path) -> Agents {
        Agents {
            label,
            kubeconfig,
            logs: logs.to_owned(),
            running: BTreeMap::new(),
            log_files: Vec::new(),
        }
    }

    /// Starts the agent of `node`; returns when it was started.
    fn start(&mut self, node: &str) -> Result<Instant> {
        let metrics = free_port();
        let tag = if self.label.starts_with("real") {
            "real"
        } else {
            "lab"
        };
        let log = self
            .logs
            .join(format!("{tag}-{node}.{}.log", self.log_files.len() + 1));
        let started = Instant::now();
        let child = spawn(
            Path::new(cluster::AGENT),
            &[
                "agent",
                "--node-name",
                node,
                "--metrics-addr",
                &format!("127.0.0.1:{metrics}"),
                "--kubeconfig",
            ],
            &[&self.kubeconfig],
            &log,
        )?;
        self.log_files.push(log);
        self.running
            .insert(node.to_string(), Agent { child, metrics });
        Ok(started)
    }

    /// Sends `signal` to the agent of `node` and waits (bounded) for it to exit; returns when the signal was sent.
    fn signal(&mut self, node: &str, signal: Signal) -> Result<Instant> {
        let mut agent = self.running.remove(node).context("not running")?;
        let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
        let sent = Instant::now();
        nix::sys::signal::kill(pid, signal)?;
        while sent.elapsed() < Duration::from_secs(15) {
            if agent.child.try_wait()?.is_some() {
                return Ok(sent);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = agent.child.kill();
        let _ = agent.child.wait();
        bail!("{node} did not exit within 15 s of {signal}")
    }

    fn pid(&self, node: &str) -> Option<u32> {
        self.running.get(node).map(|a| a.child.id())
    }

    /// The sum over the running agents of their metric `name`; NaN when one could not be read.
    fn metric_sum(&self, name: &str) -> f64 {
        self.running.values().map(|a| metric(a.metrics, name)).sum()
    }

    /// Lines of the agents' logs in which the API server refused a request.
    fn forbidden(&self) -> Vec<String> {
        self.log_files
            .iter()
            .flat_map(|log| {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for agent in self.running.values_mut() {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
    }
}

/// `ironlb lab api` in its own process, as the real API server runs in its own.
struct LabApi {
    child: Child,
    kubeconfig: PathBuf,
}

impl LabApi {
    fn start(dir: &Path) -> Result<LabApi> {
        let kubeconfig = dir.join("lab.kubeconfig");
        let child = spawn(
            Path::new(cluster::AGENT),
            &["lab", "api", "--listen", "127.0.0.1:0", "--kubeconfig"],
            &[&kubeconfig],
            &dir.join("lab-api.log"),
        )?;
        let lab = LabApi { child, kubeconfig };
        // It binds, then writes the kubeconfig, then serves: a readable kubeconfig means it accepts connections.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if kube::config::Kubeconfig::read_from(&lab.kubeconfig).is_ok() {
                return Ok(lab);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("ironlb lab api wrote no kubeconfig within 20 s")
    }
}

impl Drop for LabApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/PID/status` figure in MiB: `VmRSS:` (resident now) or `VmHWM:` (the peak so far); 0 when unreadable.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return f64::NAN;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// What both APIs get before the agents start: the namespaces, a Node for each agent, and the pool; the same objects
/// through the same client calls.
async fn install(client: &Client) -> Result<()> {
    for ns in ["metallb-system", "ironlb-system"] {
        let object: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        match Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await
        {
            Err(e) if !is_conflict(&e) => return Err(e.into()),
            _ => {}
        }
    }
    for node in NODES {
        let object: Node = serde_json::from_value(json!({"metadata": {"name": node}}))?;
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await?;
    }
    let pool: ironlb::config::crd::IPAddressPool = serde_yaml::from_str(POOL)?;
    Api::<ironlb::config::crd::IPAddressPool>::namespaced(client.clone(), "metallb-system")
        .create(&PostParams::default(), &pool)
        .await?;
    Ok(())
}

fn lb_service(name: &str, class: Option<&str>) -> Service {
    let mut svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        // IPv4: the real API server's Service range is IPv4 only.
        "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "selector": {"app": name}, "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .expect("a valid Service");
    if let Some(class) = class {
        svc.spec.as_mut().unwrap().load_balancer_class = Some(class.into());
    }
    svc
}

// ---------------------------------------------------------------------------------------------------------------
// One API under test.

struct Target {
    label: &'static str,
    admin: Client,
    audit: Arc<Audit>,
    agents: Agents,
}

/// Figure 1, the agent: create → IP.
struct Allocation {
    /// From the create call's return to the watch event with the IP.
    latencies: Vec<Duration>,
    /// The create calls themselves.
    calls: Vec<Duration>,
    /// Watch events with the IP that arrived before the create call returned (counted as 0 in `latencies`).
    early: usize,
}

async fn create_to_ip(target: &Target, count: usize) -> Result<Allocation> {
    let services: Api<Service> = Api::namespaced(target.admin.clone(), "default");
    let mut out = Allocation {
        latencies: Vec::new(),
        calls: Vec::new(),
        early: 0,
    };
    for i in 0..count {
        let name = format!("lat-{i}");
        let called = Instant::now();
        services
            .create(&PostParams::default(), &lb_service(&name, None))
            .await?;
        let returned = Instant::now();
        out.calls.push(returned - called);
        let seen = target
            .audit
            .wait(Duration::from_secs(10), |s| s.first_ip.get(&name).copied())
            .await;
        if let Some(at) = seen {
            if at < returned {
                out.early += 1;
            }
            out.latencies.push(at.saturating_duration_since(returned));
        }
    }
    out.latencies.sort();
    out.calls.sort();
    Ok(out)
}

/// The floor: a client creates a Service of another class and writes its status itself, no agent involved; from
/// the create call's return to the watch event with the IP. Each is deleted after, so the real API server's Service
/// range (a /24) is not used up.
async fn floor(target: &Target, count: usize) -> Result<Vec<Duration>> {
    let services: Api<Service> = Api::namespaced(target.admin.clone(), "default");
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
    let mut out = Vec::new();
    for i in 0..count {
        let name = format!("floor-{i}");
        services
            .create(
                &PostParams::default(),
                &lb_service(&name, Some("example.com/not-ironlb")),
            )
            .await?;
        let returned = Instant::now();
        services
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let seen = target
            .audit
            .wait(Duration::from_secs(10), |s| s.first_ip.get(&name).copied())
            .await;
        if let Some(at) = seen {
            out.push(at.saturating_duration_since(returned));
        }
        services.delete(&name, &DeleteParams::default()).await?;
    }
    out.sort();
    Ok(out)
}

/// Figure 4: (leader, follower) as (node, VmRSS MiB, VmHWM MiB).
type Rss = Option<((String, f64, f64), (String, f64, f64))>;

fn rss(target: &Target) -> Rss {
    let leader = target.audit.lock().holder()?;
    let follower = NODES.iter().find(|n| **n != leader)?.to_string();
    let read = |node: String| {
        let pid = target.agents.pid(&node).unwrap_or(0);
        (node, status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"))
    };
    Some((read(leader), read(follower)))
}

/// Figure 3: what the watches counted in the window, by kind, and the agents' counter.
struct Steady {
    window: Duration,
    counts: BTreeMap<&'static str, usize>,
    counter: f64,
    listed: Vec<String>,
}

async fn steady_state(target: &Target, window: Duration) -> Steady {
    // Settled: no Service, Node or Event write seen for 3 s (at most 30 s of waiting).
    let quiet = |s: &Seen| {
        s.writes
            .iter()
            .rev()
            .find(|(_, kind, _)| !kind.ends_with("Lease"))
            .map(|(at, _, _)| at.elapsed())
    };
    let settling = Instant::now();
    while settling.elapsed() < Duration::from_secs(30)
        && quiet(&target.audit.lock()).is_some_and(|d| d < Duration::from_secs(3))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counter_before = target.agents.metric_sum("ironlb_api_writes_total");
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let end = Instant::now();
    let counter_after = target.agents.metric_sum("ironlb_api_writes_total");
    let seen = target.audit.lock();
    let mut counts: BTreeMap<&'static str, usize> = [
        "Service",
        "Node",
        "Event",
        "allocator Lease",
        "node Lease",
        "other Lease",
    ]
    .into_iter()
    .map(|k| (k, 0))
    .collect();
    let mut listed = Vec::new();
    for (at, kind, key) in seen
        .writes
        .iter()
        .filter(|(at, ..)| *at >= start && *at < end)
    {
        *counts.entry(kind).or_default() += 1;
        if !kind.ends_with("Lease") {
            listed.push(format!(
                "{}: steady-state write at {:.1} s: {kind} {key}",
                target.label,
                (*at - start).as_secs_f64()
            ));
        }
    }
    Steady {
        window: end - start,
        counts,
        counter: counter_after - counter_before,
        listed,
    }
}

/// Figure 2: for each trial, (signal → the other agent holds the Lease, signal → a Service created after the signal
/// has an IP). Trial `t` of `n` sends its signal (2t+1)/2n s into a one-second cycle, so the trials sample the
/// agents' 1 s renew and retry cycles evenly rather than at one fixed point.
struct Takeover {
    to_holder: Vec<Duration>,
    to_ip: Vec<Duration>,
    /// From the old leader's last renewal as this bench's watch saw it, plus the Lease duration, to the new holder:
    /// how long after the Lease ran out (as written) the follower took it, in ms (negative: before).
    after_expiry: Vec<f64>,
}

async fn takeover(target: &mut Target, signal: Signal, trials: usize) -> Result<Takeover> {
    let services: Api<Service> = Api::namespaced(target.admin.clone(), "default");
    let mut out = Takeover {
        to_holder: Vec::new(),
        to_ip: Vec::new(),
        after_expiry: Vec::new(),
    };
    for t in 0..trials {
        let Some(old) = target.audit.lock().holder() else {
            bail!("{}: no allocator before trial {t}", target.label);
        };
        let Some(other) = NODES.iter().find(|n| **n != old).map(|n| n.to_string()) else {
            bail!("{}: the Lease holder {old} is none of ours", target.label);
        };
        // The agents renew and retry every 1 s, and the previous trial ended a whole number of seconds after an
        // agent started: without this the signal would land at the same point of their cycles in every trial. The
        // trials' offsets are spread evenly over one cycle instead.
        let phase = Duration::from_secs_f64((2 * t + 1) as f64 / (2 * trials) as f64);
        tokio::time::sleep(phase).await;
        let sent = target.agents.signal(&old, signal)?;
        let name = format!("takeover-{}-{t}", signal.as_str().to_lowercase());
        services
            .create(&PostParams::default(), &lb_service(&name, None))
            .await?;
        let held = target
            .audit
            .wait(Duration::from_secs(20), |s| {
                s.holders
                    .iter()
                    .find(|(at, h)| *at >= sent && h.as_deref() == Some(other.as_str()))
                    .map(|(at, _)| *at)
            })
            .await;
        if let Some(at) = held {
            out.to_holder.push(at - sent);
            let last_renewal = target
                .audit
                .lock()
                .holders
                .iter()
                .rev()
                .find_map(|(seen, h)| {
                    (*seen < sent && h.as_deref() == Some(old.as_str())).then_some(*seen)
                });
            if let Some(renewed) = last_renewal {
                let expiry = renewed + LEASE_DURATION;
                out.after_expiry.push(if at >= expiry {
                    (at - expiry).as_secs_f64() * 1000.0
                } else {
                    -(expiry - at).as_secs_f64() * 1000.0
                });
            }
        }
        if let Some(at) = target
            .audit
            .wait(Duration::from_secs(20), |s| s.first_ip.get(&name).copied())
            .await
        {
            out.to_ip.push(at.saturating_duration_since(sent));
        }
        // Restart the old leader and let it settle before the next trial: its node Lease renewed by the new
        // process, then 2 s in which it sees the allocator Lease renewed, so no agent is starting during a trial.
        let started = target.agents.start(&old)?;
        let key = format!("ironlb-system/{NODE_LEASE_PREFIX}{old}");
        let renewed = target
            .audit
            .wait(Duration::from_secs(20), |s| {
                s.writes
                    .iter()
                    .rev()
                    .take_while(|(at, ..)| *at >= started)
                    .any(|(_, kind, k)| *kind == "node Lease" && *k == key)
                    .then_some(())
            })
            .await;
        if renewed.is_none() {
            bail!(
                "{}: the restarted {old} did not renew its node Lease within 20 s",
                target.label
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    out.to_holder.sort();
    out.to_ip.sort();
    out.after_expiry.sort_by(f64::total_cmp);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------

/// A table row's cell for each API, or None when that figure came out empty.
type Cell = Option<String>;

struct Row {
    figure: String,
    real: Cell,
    lab: Cell,
    note: String,
}

fn p50_p99(sorted: &[Duration]) -> Cell {
    (!sorted.is_empty()).then(|| {
        format!(
            "p50 {} / p99 {}",
            ms(percentile(sorted, 0.5)),
            ms(percentile(sorted, 0.99))
        )
    })
}

fn median_max(sorted: &[Duration]) -> Cell {
    (!sorted.is_empty()).then(|| {
        format!(
            "median {} / max {}",
            ms(percentile(sorted, 0.5)),
            ms(*sorted.last().unwrap())
        )
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = std::env::var("IRONLB_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
        || args.iter().any(|a| a == "--quick")
        || !args.iter().any(|a| a == "--bench");
    let settings = if smoke {
        Settings {
            services: 20,
            trials: 1,
            window: Duration::from_secs(10),
        }
    } else {
        Settings {
            services: 200,
            trials: 5,
            window: Duration::from_secs(60),
        }
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(run(&settings));
    drop(runtime);
    match outcome {
        Ok(None) => {}
        Ok(Some(rows)) => {
            println!("\n| figure | real kube-apiserver | lab API | note |\n|---|---|---|---|");
            let mut empty = Vec::new();
            for row in &rows {
                let mut cell = |c: &Cell, api: &str| {
                    c.clone().unwrap_or_else(|| {
                        empty.push(format!("{} ({api})", row.figure));
                        "**empty**".to_string()
                    })
                };
                let real = cell(&row.real, "real");
                let lab = cell(&row.lab, "lab");
                println!("| {} | {real} | {lab} | {} |", row.figure, row.note);
            }
            println!(
                "\n{} run in {:.0} s",
                if smoke { "smoke" } else { "full" },
                started.elapsed().as_secs_f64()
            );
            if !empty.is_empty() {
                eprintln!(
                    "FAILED: figures that measured nothing: {}",
                    empty.join("; ")
                );
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs everything; None when the real control plane cannot run here (the reason is printed).
async fn run(settings: &Settings) -> Result<Option<Vec<Row>>> {
    let Some(plane) = real_api_support::shared() else {
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;

    // The real API: CRDs and the manifest's RBAC; agents as the ServiceAccount.
    let real_cluster = cluster::RealCluster::start(plane.clone(), cluster::Crds::Ours)?;
    let real_admin = client(plane.kubeconfig_path()).await?;
    // The lab API: the same CRDs through the same kubectl.
    let lab_api = LabApi::start(dir.path())?;
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/metallb.io.yaml");
    let out = plane.kubectl_as(&lab_api.kubeconfig, &["apply", "-f", crds])?;
    if !out.status.success() {
        bail!(
            "kubectl apply of the CRDs to the lab API: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lab_admin = client(&lab_api.kubeconfig).await?;

    let mut targets = [
        Target {
            label: "real kube-apiserver",
            audit: Audit::start(&real_admin),
            admin: real_admin,
            agents: Agents::new(
                "real kube-apiserver",
                real_cluster.agent_kubeconfig.clone(),
                dir.path(),
            ),
        },
        Target {
            label: "lab API",
            audit: Audit::start(&lab_admin),
            admin: lab_admin,
            agents: Agents::new("lab API", lab_api.kubeconfig.clone(), dir.path()),
        },
    ];
    for target in &mut targets {
        install(&target.admin)
            .await
            .with_context(|| format!("installing on the {}", target.label))?;
        for node in NODES {
            target.agents.start(node)?;
        }
    }
    for target in &targets {
        if target
            .audit
            .wait(Duration::from_secs(30), |s| s.holder())
            .await
            .is_none()
        {
            bail!("{}: no allocator Lease holder within 30 s", target.label);
        }
    }

    // 1 and 4: create → IP, one API after the other (the other API's agents idle meanwhile), then the RSS 2 s after
    // the last IP (the leader trims its heap once its passes have been quiet for 500 ms).
    let mut allocations = Vec::new();
    let mut memory = Vec::new();
    for target in &targets {
        eprintln!(
            "{}: {} Services, one after another",
            target.label, settings.services
        );
        allocations.push(create_to_ip(target, settings.services).await?);
        tokio::time::sleep(Duration::from_secs(2)).await;
        memory.push(rss(target));
    }
    let mut floors = Vec::new();
    for target in &targets {
        eprintln!("{}: the API floor", target.label);
        floors.push(floor(target, settings.services).await?);
    }

    // 3: both windows at once (both sides are idle by design; this saves a minute).
    eprintln!(
        "steady state: {} s window on both APIs at once",
        settings.window.as_secs()
    );
    let (real_steady, lab_steady) = tokio::join!(
        steady_state(&targets[0], settings.window),
        steady_state(&targets[1], settings.window)
    );
    for line in real_steady.listed.iter().chain(&lab_steady.listed) {
        println!("{line}");
    }

    // 2: takeovers, one API after the other.
    let mut takeovers = Vec::new();
    for target in &mut targets {
        for signal in [Signal::SIGKILL, Signal::SIGTERM] {
            eprintln!("{}: {} trials of {signal}", target.label, settings.trials);
            takeovers.push(takeover(target, signal, settings.trials).await?);
        }
    }

    let refused = targets[0].agents.forbidden();
    for line in &refused {
        println!("refused by the real API server: {line}");
    }
    let errors: Vec<usize> = targets
        .iter()
        .map(|t| t.audit.lock().watch_errors)
        .collect();
    // For scale, and to show the watches saw these kinds at all: their changes over the whole run.
    let whole_run: Vec<String> = targets
        .iter()
        .map(|t| {
            let seen = t.audit.lock();
            ["Service", "Node", "Event"]
                .map(|k| {
                    seen.writes
                        .iter()
                        .filter(|(_, kind, _)| *kind == k)
                        .count()
                        .to_string()
                })
                .join("/")
        })
        .collect();

    // The table.
    let mut rows = Vec::new();
    let alloc = |i: usize| &allocations[i];
    rows.push(Row {
        figure: format!(
            "Service create → IP in status, {} Services one after another, 2 agents",
            settings.services
        ),
        real: p50_p99(&alloc(0).latencies),
        lab: p50_p99(&alloc(1).latencies),
        note: format!(
            "from the create call's return to the watch event with the IP; IPs seen {} / {} of {}; the create call \
             itself p50 {} / {}{}",
            alloc(0).latencies.len(),
            alloc(1).latencies.len(),
            settings.services,
            ms(percentile(&alloc(0).calls, 0.5)),
            ms(percentile(&alloc(1).calls, 0.5)),
            if alloc(0).early + alloc(1).early > 0 {
                format!(
                    "; IP seen before the create returned (counted 0): {} / {}",
                    alloc(0).early,
                    alloc(1).early
                )
            } else {
                String::new()
            }
        ),
    });
    rows.push(Row {
        figure: format!(
            "API floor: a client's create + status patch, no agent, {} Services",
            settings.services
        ),
        real: p50_p99(&floors[0]),
        lab: p50_p99(&floors[1]),
        note: "reference for the row above: the same watch, from the create's return through the status \
               patch's round trip to its watch event"
            .into(),
    });
    for (k, label) in [(0, "SIGKILL"), (1, "SIGTERM")] {
        let (real, lab) = (&takeovers[k], &takeovers[2 + k]);
        rows.push(Row {
            figure: format!(
                "Allocator takeover after {label} of the leader ({} trials)",
                settings.trials
            ),
            real: median_max(&real.to_holder),
            lab: median_max(&lab.to_holder),
            note: format!(
                "signal → the other agent holds the Lease (watch); trials measured {} / {}; first IP of a Service \
                 created after the signal: median {} / {}; {}",
                real.to_holder.len(),
                lab.to_holder.len(),
                ms(percentile(&real.to_ip, 0.5)),
                ms(percentile(&lab.to_ip, 0.5)),
                if label == "SIGKILL" {
                    let expiry = |v: &[f64]| {
                        v.get(v.len().saturating_sub(1) / 2)
                            .map_or("-".to_string(), |m| format!("{m:.1} ms"))
                    };
                    format!(
                        "reference: the Lease duration, {} s, which the follower counts on its own clock from its \
                         first sight of the last renewal (0-1 s before the kill; the follower looks every 1 s), so \
                         4-6 s from the signal; from the last renewal as this bench's watch saw it + {} s to the \
                         new holder: median {} / {}",
                        LEASE_DURATION.as_secs(),
                        LEASE_DURATION.as_secs(),
                        expiry(&real.after_expiry),
                        expiry(&lab.after_expiry)
                    )
                } else {
                    "the leader releases the Lease; the follower retries every 1 s".into()
                }
            ),
        });
    }
    let per_minute = |s: &Steady, kinds: &[&str]| {
        let n: usize = kinds
            .iter()
            .map(|k| s.counts.get(k).copied().unwrap_or(0))
            .sum();
        n as f64 * 60.0 / s.window.as_secs_f64()
    };
    let window_s = settings.window.as_secs();
    let steady = [&real_steady, &lab_steady];
    let cell = |s: &Steady, kinds: &[&str]| {
        Some(format!(
            "{:.1} ({} in {:.1} s)",
            per_minute(s, kinds),
            kinds
                .iter()
                .map(|k| s.counts.get(k).copied().unwrap_or(0))
                .sum::<usize>(),
            s.window.as_secs_f64()
        ))
    };
    rows.push(Row {
        figure: format!("Steady-state writes per minute: Services, Nodes, Events ({window_s} s window)"),
        real: cell(steady[0], &["Service", "Node", "Event"]),
        lab: cell(steady[1], &["Service", "Node", "Event"]),
        note: format!(
            "resourceVersion changes seen by watches, every client; by kind (Services/Nodes/Events): {} / {} \
             (over the whole run: {} / {}); watch errors {} / {}",
            ["Service", "Node", "Event"]
                .map(|k| real_steady.counts[k].to_string())
                .join("/"),
            ["Service", "Node", "Event"]
                .map(|k| lab_steady.counts[k].to_string())
                .join("/"),
            whole_run[0],
            whole_run[1],
            errors[0],
            errors[1]
        ),
    });
    rows.push(Row {
        figure: "Steady-state writes per minute, the agents' own `ironlb_api_writes_total` (both agents)".into(),
        real: (!real_steady.counter.is_nan())
            .then(|| format!("{:.1}", real_steady.counter * 60.0 / real_steady.window.as_secs_f64())),
        lab: (!lab_steady.counter.is_nan())
            .then(|| format!("{:.1}", lab_steady.counter * 60.0 / lab_steady.window.as_secs_f64())),
        note: "Services, Nodes and Events the agents wrote; Leases are not counted there".into(),
    });
    rows.push(Row {
        figure: "Steady-state allocator Lease writes per minute".into(),
        real: cell(steady[0], &["allocator Lease"]),
        lab: cell(steady[1], &["allocator Lease"]),
        note: "the leader renews every 1 s by design".into(),
    });
    // A watch that saw no node Lease renewal measured nothing: they renew every second by design.
    let renewals = |s: &Steady| {
        (s.counts["node Lease"] > 0)
            .then(|| cell(s, &["node Lease"]))
            .flatten()
    };
    rows.push(Row {
        figure: "Steady-state node Lease writes per minute (2 agents)".into(),
        real: renewals(steady[0]),
        lab: renewals(steady[1]),
        note: format!(
            "each agent renews its own every 1 s by design; other Leases in ironlb-system: {} / {}",
            real_steady.counts["other Lease"], lab_steady.counts["other Lease"]
        ),
    });
    let rss_cell = |r: &Rss, leader: bool| {
        let ((ln, lr, lp), (fnode, fr, fp)) = r.as_ref()?;
        let (node, now, peak) = if leader {
            (ln, lr, lp)
        } else {
            (fnode, fr, fp)
        };
        (*now > 0.0).then(|| format!("{now:.1} MiB (peak {peak:.1}; {node})"))
    };
    rows.push(Row {
        figure: format!("Agent RSS after the {} Services, leader", settings.services),
        real: rss_cell(&memory[0], true),
        lab: rss_cell(&memory[1], true),
        note: "VmRSS 2 s after the last IP (peak: VmHWM)".into(),
    });
    rows.push(Row {
        figure: format!(
            "Agent RSS after the {} Services, follower",
            settings.services
        ),
        real: rss_cell(&memory[0], false),
        lab: rss_cell(&memory[1], false),
        note: if refused.is_empty() {
            "the real API server refused no request of the agents".into()
        } else {
            format!(
                "the real API server refused {} requests of the agents (listed above)",
                refused.len()
            )
        },
    });
    drop(targets);
    // Its agents were ours, not its own: nothing of its to print.
    real_cluster.passed();
    Ok(Some(rows))
}
