//! A real Kubernetes control plane on loopback: etcd and kube-apiserver, built from their Go modules by
//! `scripts/build-control-plane`, run as envtest runs them, with certificates made by the `openssl` CLI,
//! `--authorization-mode=RBAC` and ServiceAccount tokens. The real-API test tier and `ironlb lab --api real` both
//! run on it. It starts no controller-manager: whoever uses it creates EndpointSlices and namespaces itself.
//!
//! A [`ControlPlane`] owns its two processes, its temp dir and the kubeconfigs in it. Every wait is bounded in time,
//! and both processes are stopped when it drops; they also carry a parent-death signal, so a test binary or lab
//! killed outright does not leave them behind.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The Service ClusterIP range the API server allocates from by default: a documentation range, so no address it
/// hands out can reach anything real.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "198.51.100.0/24";

/// How to start a [`ControlPlane`].
#[derive(Clone, Debug)]
pub struct Options {
    /// `--service-cluster-ip-range`: one CIDR, or an IPv4 and an IPv6 one separated by a comma for dual-stack
    /// Services.
    pub service_cidrs: String,
    /// Addresses besides 127.0.0.1 the serving certificate is valid for, where a relay makes the API server
    /// reachable from other network namespaces.
    pub serving_ips: Vec<IpAddr>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            service_cidrs: SERVICE_CLUSTER_IP_RANGE.into(),
            serving_ips: Vec::new(),
        }
    }
}

/// Which CRDs [`ControlPlane::install_ironlb`] installs.
#[derive(Clone, Debug)]
pub enum Crds {
    /// IronLB's own, as `ironlb crds` prints them.
    Ours,
    /// Manifests from files: MetalLB's own, for example, as a user who keeps them would.
    Files(Vec<PathBuf>),
}
/// How long the API server may take to answer `/readyz` once started.
/// `IRONLB_CONTROL_PLANE_READY_SECS` overrides it: the VM tier, whose emulated CPUs take about a minute to bring
/// kube-apiserver up, sets it higher.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// [`READY_LIMIT`], or `IRONLB_CONTROL_PLANE_READY_SECS` when set to a number of seconds.
fn ready_limit() -> Duration {
    std::env::var("IRONLB_CONTROL_PLANE_READY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(READY_LIMIT, Duration::from_secs)
}
/// How long etcd may take to accept connections.
const ETCD_LIMIT: Duration = Duration::from_secs(20);
/// How long one kubectl run may take before it is killed.
pub const KUBECTL_LIMIT: Duration = Duration::from_secs(60);
/// How long a process has to exit after SIGTERM before it gets SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A running etcd and kube-apiserver, and an admin kubeconfig (client certificate in `system:masters`).
pub struct ControlPlane {
    bin: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    spawner: Spawner,
    // Last, so the processes are gone before their files are removed.
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver from `bin` with the default [`Options`].
    pub fn start_with(bin: PathBuf) -> Result<ControlPlane> {
        ControlPlane::start_with_options(bin, &Options::default())
    }

    /// Starts etcd and kube-apiserver from `bin` and waits (bounded) until the API server is ready.
    pub fn start_with_options(bin: PathBuf, options: &Options) -> Result<ControlPlane> {
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            ensure!(
                bin.join(name).is_file(),
                "{} has no {name}: build the control plane with scripts/build-control-plane",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ironlb-real-api-{}-", std::process::id()))
            .tempdir()
            .context("create the control plane's temp dir")?;
        let pki = Pki::generate(dir.path(), &options.serving_ips)
            .context("generate certificates with the openssl CLI")?;
        let [etcd_client, etcd_peer, secure_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = dir.path().join("admin.kubeconfig");
        write_file(
            &kubeconfig,
            &kubeconfig_yaml(
                &server,
                &pki.ca_cert,
                "admin",
                &format!(
                    "client-certificate: {}\n    client-key: {}",
                    pki.admin_cert.display(),
                    pki.admin_key.display()
                ),
            ),
        )?;
        let mut plane = ControlPlane {
            bin,
            server,
            kubeconfig,
            etcd: None,
            apiserver: None,
            spawner: Spawner::new(),
            dir,
        };
        // On failure the logs go into the error; dropping `plane` then stops whatever did start.
        plane
            .launch(
                &pki,
                &options.service_cidrs,
                etcd_client,
                etcd_peer,
                secure_port,
            )
            .map_err(|e| {
                e.context(format!(
                    "--- etcd log ---\n{}\n--- kube-apiserver log ---\n{}",
                    plane.log_tail("etcd", 40),
                    plane.log_tail("kube-apiserver", 60)
                ))
            })?;
        Ok(plane)
    }

    fn launch(
        &mut self,
        pki: &Pki,
        service_cidrs: &str,
        etcd_client: u16,
        etcd_peer: u16,
        secure_port: u16,
    ) -> Result<()> {
        let dir = self.dir.path().to_owned();
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = self.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // A throwaway store: fsync buys nothing and costs every write (envtest turns it off too).
                "--unsafe-no-fsync=true".into(),
            ],
        )?;
        self.etcd = Some(etcd);
        let etcd_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_client));
        self.wait("etcd to accept connections", ETCD_LIMIT, |_| {
            Ok(TcpStream::connect_timeout(&etcd_addr, Duration::from_secs(1)).is_ok())
        })?;

        let apiserver = self.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={client_url}"),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_public_key.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--authorization-mode=RBAC".into(),
                format!("--service-cluster-ip-range={service_cidrs}"),
                // Nothing creates default ServiceAccounts without a controller-manager.
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--secure-port={secure_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
            ],
        )?;
        self.apiserver = Some(apiserver);
        self.wait("kube-apiserver /readyz", ready_limit(), |plane| {
            let out = plane.kubectl(&["get", "--raw=/readyz", "--request-timeout=5s"])?;
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok")
        })
    }

    /// Starts `bin/name` with its output in `name.log` in the temp dir.
    fn spawn(&self, name: &str, args: &[String]) -> Result<Child> {
        self.spawn_logged(&[], name, args, &self.log_path(name))
    }

    /// Starts `bin/name` inside network namespace `netns` (a node's kube-proxy, for example), with its output in
    /// `log`, under the same parent-death signal as the control plane's own processes. Stop it with [`stop`].
    pub fn spawn_in_netns(
        &self,
        netns: &str,
        name: &str,
        args: &[String],
        log: &Path,
    ) -> Result<Child> {
        // `ip netns exec` enters the namespace and execs the binary in the same process, which keeps the signal.
        self.spawn_logged(&["ip", "netns", "exec", netns], name, args, log)
    }

    /// Starts `bin/name` behind the `wrapper` command (none, or one that execs it), its output in `log`.
    fn spawn_logged(
        &self,
        wrapper: &[&str],
        name: &str,
        args: &[String],
        log: &Path,
    ) -> Result<Child> {
        let log = File::create(log).with_context(|| format!("create {}", log.display()))?;
        // setpriv puts a parent-death signal on the process before it execs the binary.
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig=KILL", "--"])
            .args(wrapper)
            .arg(self.bin.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let shown = wrapper
            .iter()
            .map(|w| w.to_string())
            .chain([self.bin.join(name).display().to_string()])
            .collect::<Vec<_>>()
            .join(" ");
        self.spawner
            .spawn(command)
            .with_context(|| format!("start {shown}"))
    }

    /// Polls `check` every 250 ms until it holds, failing after `limit` or as soon as either process has exited.
    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&ControlPlane) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Some(child) = child
                    && let Some(status) = child.try_wait()?
                {
                    bail!("{name} exited ({status}) while waiting for {what}");
                }
            }
            if check(self)? {
                return Ok(());
            }
            if start.elapsed() >= limit {
                bail!("timed out after {limit:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The admin kubeconfig (client certificate, group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA that signed the API server's serving certificate and the admin client certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The directory of the binaries: kube-apiserver, etcd, kube-proxy and kubectl.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The temp dir holding the certificates, kubeconfigs, etcd's data and the logs; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The last `lines` lines of the log of `name` (`"etcd"` or `"kube-apiserver"`), for a failing test to print.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs the bin dir's kubectl (same release as the server) as admin. Fails only when kubectl cannot run or
    /// exceeds [`KUBECTL_LIMIT`]; a non-zero exit is in the returned status.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(&self.kubeconfig, args)
    }

    /// As [`ControlPlane::kubectl`], with another kubeconfig (for example one from
    /// [`ControlPlane::service_account_kubeconfig`]).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        run_bounded(self.kubectl_command(kubeconfig, args), None, KUBECTL_LIMIT)
    }

    /// As [`ControlPlane::kubectl`], with `input` on kubectl's stdin (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Result<Output> {
        run_bounded(
            self.kubectl_command(&self.kubeconfig, args),
            Some(input),
            KUBECTL_LIMIT,
        )
    }

    /// Runs kubectl as admin and returns its stdout, or fails with its stderr when it exits non-zero.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        checked(args, self.kubectl(args)?)
    }

    /// As [`ControlPlane::kubectl_ok`], with another kubeconfig.
    pub fn kubectl_as_ok(&self, kubeconfig: &Path, args: &[&str]) -> Result<String> {
        checked(args, self.kubectl_as(kubeconfig, args)?)
    }

    /// As [`ControlPlane::kubectl_ok`], with `input` on stdin.
    pub fn kubectl_ok_with_input(&self, args: &[&str], input: &str) -> Result<String> {
        checked(args, self.kubectl_with_input(args, input)?)
    }

    fn kubectl_command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            // The user's ~/.kube/kuberc must not change what the tests see.
            .env("KUBECTL_KUBERC", "false")
            .env_remove("KUBECONFIG");
        command
    }

    /// Makes `namespace` and the ServiceAccount `name` in it (both kept if they exist) and writes a kubeconfig that
    /// authenticates with a one-hour token of that ServiceAccount (TokenRequest). It grants nothing: RBAC decides
    /// what the account may do.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        self.service_account_kubeconfig_at(namespace, name, &self.server.clone())
    }

    /// As [`ControlPlane::service_account_kubeconfig`], for the API server reached at `server` (through a relay
    /// on one of [`Options::serving_ips`]).
    pub fn service_account_kubeconfig_at(
        &self,
        namespace: &str,
        name: &str,
        server: &str,
    ) -> Result<PathBuf> {
        self.kubectl_ok_with_input(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n\
                 apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
            ),
        )?;
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        let token = token.trim();
        ensure!(!token.is_empty(), "kubectl create token printed no token");
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        write_file(
            &path,
            &kubeconfig_yaml(
                server,
                &self.ca_path(),
                &format!("{namespace}-{name}"),
                &format!("token: {token}"),
            ),
        )?;
        Ok(path)
    }

    /// Installs what IronLB needs before its agents start, as an operator applying the shipped manifest would: the
    /// namespaces `metallb-system` and `ironlb-system`, the CRDs (waiting until each is Established), and the
    /// ServiceAccount, roles and bindings of `deploy/agent.yaml`, nothing else of it.
    pub fn install_ironlb(&self, crds: &Crds) -> Result<()> {
        self.kubectl_ok_with_input(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb-system}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: ironlb-system}\n",
        )?;
        match crds {
            Crds::Ours => {
                let manifests = crate::config::crd_manifests();
                self.kubectl_ok_with_input(&["apply", "--server-side", "-f", "-"], &manifests)?;
                self.kubectl_ok_with_input(
                    &[
                        "wait",
                        "--for=condition=Established",
                        "--timeout=30s",
                        "-f",
                        "-",
                    ],
                    &manifests,
                )?;
            }
            Crds::Files(files) => {
                for file in files {
                    let file = path_str(file)?;
                    self.kubectl_ok(&["apply", "--server-side", "-f", file])?;
                    self.kubectl_ok(&[
                        "wait",
                        "--for=condition=Established",
                        "--timeout=30s",
                        "-f",
                        file,
                    ])?;
                }
            }
        }
        self.kubectl_ok_with_input(&["apply", "-f", "-"], &manifest_rbac()?)?;
        Ok(())
    }

    /// A serving certificate (and its key) for 127.0.0.1 signed by the plane's CA, for a proxy in front of the API
    /// server that clients trusting the CA should accept. Each call makes its own pair with a serial of its own:
    /// `-CAcreateserial` would share one serial file between proxies started at the same time.
    pub fn issue_serving_certificate(&self) -> Result<(PathBuf, PathBuf)> {
        let plane = self;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = plane.dir();
        let name = format!("api-proxy-{n}");
        let key = new_key(dir, &name)?;
        let csr = dir.join(format!("{name}.csr"));
        let ext = dir.join(format!("{name}.ext"));
        let cert = dir.join(format!("{name}.crt"));
        write_file(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        openssl(&[
            "req",
            "-new",
            "-key",
            path_str(&key)?,
            "-subj",
            "/CN=ironlb-api-proxy",
            "-out",
            path_str(&csr)?,
        ])?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let serial = format!("0x{nanos:016x}{:08x}{n:04x}", std::process::id());
        let ca_cert = plane.ca_path();
        let ca_key = dir.join("ca.key");
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-days",
            "2",
            "-CA",
            path_str(&ca_cert)?,
            "-CAkey",
            path_str(&ca_key)?,
            "-set_serial",
            &serial,
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&cert)?,
        ])?;
        Ok((cert, key))
    }

    /// A kube-rs client from `kubeconfig` (the admin one or a ServiceAccount's).
    pub async fn client(&self, kubeconfig: &Path) -> Result<kube::Client> {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The API server first, so it does not spend the grace period retrying a vanished etcd.
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within 10 s; reaps it either way.
pub fn stop(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < STOP_LIMIT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns children from one thread that lives as long as the control plane. A parent-death signal follows the
/// thread that forked, not the process, and the test thread that started a shared control plane may finish first.
struct Spawner {
    requests: Option<mpsc::Sender<(Command, mpsc::Sender<std::io::Result<Child>>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Spawner {
        let (requests, incoming) =
            mpsc::channel::<(Command, mpsc::Sender<std::io::Result<Child>>)>();
        let thread = std::thread::spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        Spawner {
            requests: Some(requests),
            thread: Some(thread),
        }
    }

    fn spawn(&self, command: Command) -> Result<Child> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .as_ref()
            .context("spawner stopped")?
            .send((command, reply))
            .ok()
            .context("spawner thread gone")?;
        Ok(answer
            .recv_timeout(Duration::from_secs(10))
            .context("spawner thread did not answer")??)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `command` to completion with its output captured and `input` on stdin, killing it after `limit`.
pub fn run_bounded(command: Command, input: Option<&str>, limit: Duration) -> Result<Output> {
    run_bounded_with(command, input, limit, Stdio::piped())
}

/// As [`run_bounded`], with `stderr` given.
pub fn run_bounded_with(
    mut command: Command,
    input: Option<&str>,
    limit: Duration,
    stderr: Stdio,
) -> Result<Output> {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(stderr);
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .spawn()
        .with_context(|| format!("start {program}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes())?;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let (done, result) = mpsc::channel();
    // wait_with_output reads both pipes to the end, so a chatty child cannot block on a full pipe.
    let reader = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match result.recv_timeout(limit) {
        Ok(output) => {
            let _ = reader.join();
            Ok(output?)
        }
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = reader.join();
            bail!("{program} did not finish within {limit:?}; killed")
        }
    }
}

fn checked(args: &[&str], out: Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The RBAC objects (and their namespaces) of the shipped agent manifest, `deploy/agent.yaml`, nothing else of it.
pub fn manifest_rbac() -> Result<String> {
    const AGENT_MANIFEST: &str = include_str!("../../deploy/agent.yaml");
    let keep = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(AGENT_MANIFEST) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if keep.contains(&value["kind"].as_str().unwrap_or_default()) {
            out.push(serde_yaml::to_string(&value)?);
        }
    }
    ensure!(out.len() >= 6, "deploy/agent.yaml holds no RBAC objects?");
    Ok(out.join("---\n"))
}

/// Three distinct free loopback ports, held together while chosen so they differ.
fn free_ports() -> Result<[u16; 3]> {
    let listeners = [(); 3].map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(listeners) {
        *port = listener?.local_addr()?.port();
    }
    Ok(ports)
}

fn kubeconfig_yaml(server: &str, ca: &Path, user: &str, credentials: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: ironlb-real-api
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    {credentials}
contexts:
- name: {user}
  context:
    cluster: ironlb-real-api
    user: {user}
current-context: {user}
",
        ca = ca.display()
    )
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

/// The certificates and keys of one control plane, all P-256 and valid for two days.
struct Pki {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path, serving_ips: &[IpAddr]) -> Result<Pki> {
        let ca_key = new_key(dir, "ca")?;
        let ca_cert = sign(
            dir,
            "ca",
            "/CN=ironlb-real-api-ca",
            &ca_key,
            None,
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
             subjectKeyIdentifier=hash\n",
        )?;
        let issuer = Some((ca_cert.as_path(), ca_key.as_path()));
        let serving_key = new_key(dir, "apiserver")?;
        let mut names = String::from("IP:127.0.0.1,DNS:localhost");
        for ip in serving_ips {
            names.push_str(&format!(",IP:{ip}"));
        }
        let serving_cert = sign(
            dir,
            "apiserver",
            "/CN=kube-apiserver",
            &serving_key,
            issuer,
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName={names}\n"
            ),
        )?;
        // The API server maps a client certificate's CN to the user and each O to a group; system:masters is bound
        // to cluster-admin by the bootstrap RBAC policy.
        let admin_key = new_key(dir, "admin")?;
        let admin_cert = sign(
            dir,
            "admin",
            "/O=system:masters/CN=ironlb-admin",
            &admin_key,
            issuer,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        // --service-account-key-file takes public keys; a PKCS#8 private key there is refused.
        let service_account_key = new_key(dir, "service-account")?;
        let service_account_public_key = dir.join("service-account.pub");
        openssl(&[
            "pkey",
            "-in",
            path_str(&service_account_key)?,
            "-pubout",
            "-out",
            path_str(&service_account_public_key)?,
        ])?;
        Ok(Pki {
            ca_cert,
            serving_cert,
            serving_key,
            admin_cert,
            admin_key,
            service_account_key,
            service_account_public_key,
        })
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let mut command = Command::new("openssl");
    command.args(args);
    let out = run_bounded(command, None, Duration::from_secs(30))?;
    ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn new_key(dir: &Path, name: &str) -> Result<PathBuf> {
    let key = dir.join(format!("{name}.key"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(&key)?,
    ])?;
    Ok(key)
}

/// A certificate for `key` with `subject` and `extensions`, signed by `issuer` (certificate, key) or by itself.
fn sign(
    dir: &Path,
    name: &str,
    subject: &str,
    key: &Path,
    issuer: Option<(&Path, &Path)>,
    extensions: &str,
) -> Result<PathBuf> {
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    let cert = dir.join(format!("{name}.crt"));
    write_file(&ext, extensions)?;
    openssl(&[
        "req",
        "-new",
        "-key",
        path_str(key)?,
        "-subj",
        subject,
        "-out",
        path_str(&csr)?,
    ])?;
    let mut args = vec!["x509", "-req", "-in", path_str(&csr)?, "-days", "2"];
    match issuer {
        Some((ca_cert, ca_key)) => args.extend([
            "-CA",
            path_str(ca_cert)?,
            "-CAkey",
            path_str(ca_key)?,
            "-CAcreateserial",
        ]),
        None => args.extend(["-signkey", path_str(key)?]),
    }
    args.extend(["-extfile", path_str(&ext)?, "-out", path_str(&cert)?]);
    openssl(&args)?;
    Ok(cert)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
