//! The multi-agent lab harness: the lab API server in-process, real `ironlb agent` child processes against it, and
//! the real `kubectl`.
//!
//! Everything is on loopback and in a temp dir. Agents are killed when the [`Lab`] drops, even when the test panics,
//! and their logs are printed then. Every wait is bounded in time and in iterations.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ironlb::lab::api::{ApiServer, write_kubeconfig};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::process::Command;

pub const KUBECTL: &str = "/usr/bin/kubectl";
pub const AGENT: &str = env!("CARGO_BIN_EXE_ironlb");
/// The User-Agent of the test's own kube-rs client, so that request logs can tell it from the agents'.
pub const TEST_USER_AGENT: &str = "ironlb-test-harness";
const KUBECTL_LIMIT: Duration = Duration::from_secs(30);

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Polls `check` every `poll` until it returns `Some`, at most `timeout` long (and so at most timeout/poll + 1
/// times). Errors from `check` count as "not yet"; the last one is reported on timeout.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let max_tries = (timeout.as_millis() / poll.as_millis().max(1)) as usize + 1;
    let mut last_error = None;
    for _ in 0..max_tries {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    match last_error {
        Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Checks for `duration` that `check` keeps returning true, polling every `poll`.
pub async fn holds_for<F, Fut>(
    what: &str,
    duration: Duration,
    poll: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let max_tries = (duration.as_millis() / poll.as_millis().max(1)) as usize + 1;
    for _ in 0..max_tries {
        ensure!(
            check().await?,
            "{what} stopped holding after {:?}",
            start.elapsed()
        );
        if start.elapsed() >= duration {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
    Ok(())
}

/// One `ironlb agent` child process.
pub struct Agent {
    pub node: String,
    pub log: PathBuf,
    child: Option<Child>,
    /// How many times this node's agent was started, so every start gets its own log file.
    starts: usize,
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (bounded); SIGKILL if it does not come.
    pub fn terminate(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent {} is not running", self.node);
        };
        let status = StdCommand::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM failed: {status}");
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(exit) = child.try_wait()? {
                return Ok(exit);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "agent {} did not exit within {limit:?} of SIGTERM",
            self.node
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of one kubectl run.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The lab: API server, kubeconfig, test client and agents.
pub struct Lab {
    pub server: ApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub client: Client,
    pub agents: Vec<Agent>,
    agent_args: Vec<String>,
    /// Set by [`Lab::passed`] at a test's end; without it, dropping the lab prints the agents' logs, which covers
    /// both panics and tests returning `Err`.
    passed: bool,
}

impl Lab {
    /// Starts the API server and applies the metallb.io CRDs. No agents run yet.
    pub async fn start() -> Result<Self> {
        let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server.url())?;
        let kc = Kubeconfig::read_from(&kubeconfig)?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        config.headers.push((
            axum::http::header::USER_AGENT,
            axum::http::HeaderValue::from_static(TEST_USER_AGENT),
        ));
        let client = Client::try_from(config)?;
        let lab = Lab {
            server,
            dir,
            kubeconfig,
            client,
            agents: Vec::new(),
            agent_args: Vec::new(),
            passed: false,
        };
        let crds = repo_path("deploy/crds/metallb.io.yaml");
        lab.kubectl_ok(&["apply", "-f", crds.to_str().context("path")?])
            .await?;
        Ok(lab)
    }

    /// Starts the lab, applies `examples/metallb-config.yaml` and starts `n` agents with `extra` flags.
    pub async fn with_agents(n: usize, extra: &[&str]) -> Result<Self> {
        let mut lab = Lab::start().await?;
        lab.apply_file(&repo_path("examples/metallb-config.yaml"))
            .await?;
        lab.start_agents(n, extra)?;
        Ok(lab)
    }

    /// Sets the extra flags of every agent started from now on, and starts agents node-1..node-n.
    pub fn start_agents(&mut self, n: usize, extra: &[&str]) -> Result<()> {
        self.agent_args = extra.iter().map(|s| s.to_string()).collect();
        for i in 1..=n {
            let node = format!("node-{i}");
            if self.agents.iter().all(|a| a.node != node) {
                self.agents.push(Agent {
                    node,
                    log: PathBuf::new(),
                    child: None,
                    starts: 0,
                });
            }
            self.start_agent(&format!("node-{i}"))?;
        }
        Ok(())
    }

    /// Starts (or restarts, after a kill) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let kubeconfig = self.kubeconfig.clone();
        let dir = self.dir.path().to_path_buf();
        let args = self.agent_args.clone();
        let agent = self
            .agents
            .iter_mut()
            .find(|a| a.node == node)
            .with_context(|| format!("no agent {node}"))?;
        ensure!(agent.child.is_none(), "agent {node} is already running");
        agent.starts += 1;
        agent.log = dir.join(format!("agent-{node}.{}.log", agent.starts));
        let log = File::create(&agent.log)?;
        let child = StdCommand::new(AGENT)
            .arg("agent")
            .arg("--node-name")
            .arg(node)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(&args)
            .env_clear()
            .env("RUST_LOG", "info")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {AGENT}"))?;
        agent.child = Some(child);
        Ok(())
    }

    pub fn agent(&mut self, node: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent {node}"))
    }

    pub fn kill_all(&mut self) {
        for a in &mut self.agents {
            a.kill();
        }
    }

    /// The allocator Lease's holder, if any.
    pub async fn lease_holder(&self) -> Result<Option<String>> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "ironlb-system");
        Ok(api
            .get_opt(ironlb::agent::ALLOCATOR_LEASE)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// Waits until a running agent holds the Lease and returns its node name.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<String> {
        let running: Vec<String> = self
            .agents
            .iter()
            .filter(|a| a.is_running())
            .map(|a| a.node.clone())
            .collect();
        wait_for(
            "a running agent to hold the Lease",
            timeout,
            Duration::from_millis(20),
            || async { Ok(self.lease_holder().await?.filter(|h| running.contains(h))) },
        )
        .await
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion within a time limit.
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output> {
        let out = tokio::time::timeout(KUBECTL_LIMIT, self.kubectl_command(args).output())
            .await
            .with_context(|| format!("kubectl {args:?} timed out"))??;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl and requires success; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args).await?;
        ensure!(
            out.code == Some(0),
            "kubectl {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.code,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    pub async fn apply_file(&self, path: &Path) -> Result<String> {
        self.kubectl_ok(&["apply", "-f", path.to_str().context("path")?])
            .await
    }

    /// `kubectl apply` of YAML text, written to a file in the temp dir first.
    pub async fn apply_yaml(&self, name: &str, yaml: &str) -> Result<String> {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        self.apply_file(&path).await
    }

    pub fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn create_service(&self, svc: &Service) -> Result<Service> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        Ok(self
            .services(ns)
            .create(&PostParams::default(), svc)
            .await?)
    }

    /// The Service's ingress IPs, in order.
    pub async fn ingress(&self, ns: &str, name: &str) -> Result<Vec<String>> {
        let svc = self.services(ns).get(name).await?;
        Ok(ingress_of(&svc))
    }

    /// Waits until the Service has at least one ingress IP, and returns them.
    pub async fn wait_for_ip(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        wait_for(
            &format!("Service {ns}/{name} to get an IP"),
            timeout,
            Duration::from_millis(20),
            || async {
                let ips = self.ingress(ns, name).await?;
                Ok((!ips.is_empty()).then_some(ips))
            },
        )
        .await
    }

    /// core/v1 Events about the object `name` in `ns`, listed with a field selector as kubectl describe does.
    pub async fn events_for(&self, ns: &str, name: &str) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
        Ok(api.list(&lp).await?.items)
    }

    /// Waits for an Event with `reason` about `name`, and returns it.
    pub async fn wait_for_event(
        &self,
        ns: &str,
        name: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<Event> {
        wait_for(
            &format!("a {reason} Event about {ns}/{name}"),
            timeout,
            Duration::from_millis(50),
            || async {
                Ok(self
                    .events_for(ns, name)
                    .await?
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some(reason)))
            },
        )
        .await
    }

    /// The resourceVersion of every Service, by namespace/name.
    pub async fn service_versions(&self) -> Result<BTreeMap<String, String>> {
        let api: Api<Service> = Api::all(self.client.clone());
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|s| {
                (
                    format!(
                        "{}/{}",
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default()
                    ),
                    s.metadata.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Marks the test as passed, so the logs are not printed.
    pub fn passed(mut self) {
        self.passed = true;
    }

    /// Prints every agent log, for a failing test.
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The tail is what explains a failure; keep the output bounded.
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "===== {} ({} lines, last {}) =====",
                log.display(),
                lines.len(),
                tail.len()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_all();
        if !self.passed || std::thread::panicking() {
            self.dump_logs();
        }
    }
}

pub fn ingress_of(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// A LoadBalancer Service builder.
pub struct Svc {
    value: Value,
}

pub fn svc(ns: &str, name: &str) -> Svc {
    Svc {
        value: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        }),
    }
}

impl Svc {
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        let meta = self.value["metadata"].as_object_mut().expect("metadata");
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        annotations[key] = json!(value);
        self
    }

    pub fn class(mut self, class: &str) -> Self {
        self.value["spec"]["loadBalancerClass"] = json!(class);
        self
    }

    pub fn dual_stack(mut self) -> Self {
        self.value["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
        self.value["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
        self
    }

    pub fn build(self) -> Service {
        serde_json::from_value(self.value).expect("a valid Service")
    }
}
