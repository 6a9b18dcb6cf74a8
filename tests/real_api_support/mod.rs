//! The real control plane for the real-API tier: etcd and kube-apiserver built from their Go modules by
//! `scripts/build-control-plane`, run on loopback as envtest runs them, with certificates made by the `openssl` CLI.
//! It owns those two processes, their temp dir and the kubeconfigs in it; it starts no controller-manager, so tests
//! create EndpointSlices themselves and use a fresh namespace each (a namespace's deletion never finishes).
//!
//! Every wait is bounded in time, and every child process is killed when the [`ControlPlane`] drops, even when a test
//! panics. The processes also carry a parent-death signal, so a test binary killed outright does not leave them
//! behind.

#![allow(dead_code)]

pub mod fault_proxy;

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The Service ClusterIP range the API server allocates from: a documentation range, so no address it hands out can
/// reach anything real.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "198.51.100.0/24";
/// How long the API server may take to answer `/readyz` once started.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How long etcd may take to accept connections.
const ETCD_LIMIT: Duration = Duration::from_secs(20);
/// How long one kubectl run may take before it is killed.
pub const KUBECTL_LIMIT: Duration = Duration::from_secs(60);
/// How long a process has to exit after SIGTERM before it gets SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How long a build of the binaries may take, when the test has to run it itself (scripts/setup normally has).
const BUILD_LIMIT: Duration = Duration::from_secs(60 * 60);

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

/// The control plane the tests of one binary share while any of them holds it, or `None` (with the reason printed)
/// when the tier cannot run here: not root, so the cache in /var/cache is out of reach, and no
/// `IRONLB_CONTROL_PLANE_BIN` or `IRONLB_CONTROL_PLANE_DIR` to use instead; or the binaries cannot be built. In CI
/// (`CI=true`) either panics instead: CI runs as root and scripts/setup builds the binaries.
///
/// Tests that run at the same time get the same control plane; one that starts after the last holder finished gets a
/// new one. Tests must therefore not rely on each other's objects, and should use their own namespaces.
pub fn shared() -> Option<Arc<ControlPlane>> {
    static SHARED: Mutex<Weak<ControlPlane>> = Mutex::new(Weak::new());
    let mut slot = SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(running) = slot.upgrade() {
        return Some(running);
    }
    let bin = bin_dir_or_skip()?;
    let started = Arc::new(ControlPlane::start_with(bin).expect("start the real control plane"));
    *slot = Arc::downgrade(&started);
    Some(started)
}

/// The bin dir, or `None` with the reason printed when the tier may be skipped (see [`shared`]).
fn bin_dir_or_skip() -> Option<PathBuf> {
    let overridden = std::env::var_os("IRONLB_CONTROL_PLANE_BIN").is_some()
        || std::env::var_os("IRONLB_CONTROL_PLANE_DIR").is_some();
    let found = if !nix::unistd::geteuid().is_root() && !overridden {
        Err(anyhow::anyhow!(
            "needs root for the control-plane cache in /var/cache (or set IRONLB_CONTROL_PLANE_DIR or \
             IRONLB_CONTROL_PLANE_BIN)"
        ))
    } else {
        bin_dir().context("the real control plane's binaries cannot be built here")
    };
    match found {
        Ok(bin) => Some(bin),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI runs the real-API tier, but: {e:#}")
        }
        Err(e) => {
            println!("skipped: {e:#}");
            None
        }
    }
}

/// The directory holding kube-apiserver, etcd, kube-proxy and kubectl: `IRONLB_CONTROL_PLANE_BIN`, or the last line
/// of what `scripts/build-control-plane` prints (which builds them on the first run and reuses them after).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("IRONLB_CONTROL_PLANE_BIN") {
        return Ok(bin.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane");
    // Its stderr (a line per binary built, the log's tail on failure) goes straight to the terminal: a cold build
    // takes minutes and should say so as it goes.
    let out = run_bounded_with(Command::new(&script), None, BUILD_LIMIT, Stdio::inherit())
        .with_context(|| format!("run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let bin = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .context("scripts/build-control-plane printed no bin dir")?;
    ensure!(
        bin.join("kube-apiserver").is_file(),
        "{} has no kube-apiserver",
        bin.display()
    );
    Ok(bin)
}

impl ControlPlane {
    /// Finds (or builds) the binaries and starts a control plane of its own.
    pub fn start() -> Result<ControlPlane> {
        ControlPlane::start_with(bin_dir()?)
    }

    /// Starts etcd and kube-apiserver from `bin` and waits (bounded) until the API server is ready.
    pub fn start_with(bin: PathBuf) -> Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ironlb-real-api-{}-", std::process::id()))
            .tempdir()
            .context("create the control plane's temp dir")?;
        let pki =
            Pki::generate(dir.path()).context("generate certificates with the openssl CLI")?;
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
            .launch(&pki, etcd_client, etcd_peer, secure_port)
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
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                // Nothing creates default ServiceAccounts without a controller-manager.
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--secure-port={secure_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
            ],
        )?;
        self.apiserver = Some(apiserver);
        self.wait("kube-apiserver /readyz", READY_LIMIT, |plane| {
            let out = plane.kubectl(&["get", "--raw=/readyz", "--request-timeout=5s"])?;
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok")
        })
    }

    /// Starts `bin/name` with its output in `name.log` in the temp dir.
    fn spawn(&self, name: &str, args: &[String]) -> Result<Child> {
        let log = File::create(self.log_path(name))?;
        // setpriv puts a parent-death signal on the process before it execs the binary.
        let mut command = Command::new("setpriv");
        command
            .arg("--pdeathsig=KILL")
            .arg("--")
            .arg(self.bin.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.spawner
            .spawn(command)
            .with_context(|| format!("start {}", self.bin.join(name).display()))
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
                &self.server,
                &self.ca_path(),
                &format!("{namespace}-{name}"),
                &format!("token: {token}"),
            ),
        )?;
        Ok(path)
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

/// SIGTERM, then SIGKILL if the process has not exited within [`STOP_LIMIT`]; reaps it either way.
fn stop(mut child: Child) {
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
fn run_bounded(command: Command, input: Option<&str>, limit: Duration) -> Result<Output> {
    run_bounded_with(command, input, limit, Stdio::piped())
}

/// As [`run_bounded`], with `stderr` given.
fn run_bounded_with(
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
    fn generate(dir: &Path) -> Result<Pki> {
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
        let serving_cert = sign(
            dir,
            "apiserver",
            "/CN=kube-apiserver",
            &serving_key,
            issuer,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
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
