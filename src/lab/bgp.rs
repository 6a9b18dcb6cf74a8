//! Real BGP routers for the lab, the interop tests and the benchmarks: GoBGP, BIRD or FRR running in a network
//! namespace with a config this module writes, queried through the daemon's own CLI. Also [`NsSpeaker`], an
//! in-process IronLB BGP session living in a node namespace.
//!
//! Routers are passive: the nodes connect to them. Dropping a [`Router`] kills its daemon.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};

use crate::bgp::session::{RouteSet, Session, SessionConfig, SessionStatus};
use crate::config::community::CommunityValue;

/// Which routing daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Gobgp,
    Bird,
    Frr,
}

impl std::str::FromStr for Daemon {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gobgp" | "gobgpd" => Ok(Daemon::Gobgp),
            "bird" | "bird2" => Ok(Daemon::Bird),
            "frr" => Ok(Daemon::Frr),
            other => Err(format!(
                "unknown BGP daemon {other:?}: expected gobgp, bird or frr"
            )),
        }
    }
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Gobgp => "gobgp",
            Daemon::Bird => "bird",
            Daemon::Frr => "frr",
        }
    }
}

/// One neighbour of the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<String>,
    /// The neighbour is more than one hop away.
    pub multihop: bool,
    /// FRR and BIRD: an unnumbered neighbour on this interface (FRR's `neighbor <if> interface`; BIRD's dynamic
    /// BGP from any link-local address there, with `radv` advertising the router); `address` is then not used.
    pub interface: Option<String>,
}

/// What the router is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<Neighbor>,
    /// Keep a restarting neighbour's routes (RFC 4724 receiving side).
    pub graceful_restart: bool,
    /// FRR and BIRD: a BFD session beside every neighbour, with [`LAB_BFD`]'s intervals (FRR's defaults). GoBGP
    /// has no BFD: [`Router::start`] refuses.
    pub bfd: bool,
}

/// The BFD intervals the lab's routers ask for, and the lab's BFDProfile with them: 300 ms both ways, multiplier 3
/// (FRR's and MetalLB's defaults).
pub const LAB_BFD: BfdIntervals = BfdIntervals {
    receive: Duration::from_millis(300),
    transmit: Duration::from_millis(300),
    multiplier: 3,
};

/// A BFD configuration's intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfdIntervals {
    pub receive: Duration,
    pub transmit: Duration,
    pub multiplier: u8,
}

/// A BFD session as the router shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterBfdSession {
    pub peer: IpAddr,
    /// Up, or the state the daemon names (lowercase).
    pub state: String,
    /// How often the router sends to this peer: the larger of its own desired interval and the peer's required one.
    pub transmit: Duration,
    /// How long the router waits before it declares the peer Down: the peer's multiplier times the peer's interval.
    pub detection: Duration,
}

impl RouterBfdSession {
    pub fn is_up(&self) -> bool {
        self.state == "up"
    }
}

/// A route as the router holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub prefix: IpNet,
    pub next_hop: IpAddr,
    pub local_pref: Option<u32>,
    pub communities: BTreeSet<CommunityValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(String),
    #[error("{command} failed: {stderr}")]
    Cli { command: String, stderr: String },
    #[error("cannot parse {daemon} output: {message}")]
    Parse {
        daemon: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A daemon running in a namespace.
pub struct Router {
    pub daemon: Daemon,
    pub netns: String,
    pub dir: PathBuf,
    pub config: RouterConfig,
    child: Option<Child>,
    frr_pids: Vec<u32>,
}

impl Router {
    /// Writes the config into `dir` and starts the daemon in `netns`; returns once its CLI answers.
    pub fn start(daemon: Daemon, netns: &str, dir: &Path, config: RouterConfig) -> Result<Router> {
        if daemon == Daemon::Gobgp && config.neighbors.iter().any(|n| n.interface.is_some()) {
            return Err(Error::Io(
                "the lab configures unnumbered neighbours for FRR and BIRD only, not gobgp".into(),
            ));
        }
        if config.bfd && daemon == Daemon::Gobgp {
            return Err(Error::Io(
                "gobgpd has no BFD: use bird or frr for a router with BFD".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        let mut r = Router {
            daemon,
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            config,
            child: None,
            frr_pids: Vec::new(),
        };
        r.launch()?;
        Ok(r)
    }

    fn launch(&mut self) -> Result<()> {
        let dir = &self.dir;
        let log = std::fs::File::create(dir.join(format!("{}.log", self.daemon.name())))
            .map_err(|e| Error::Io(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| Error::Io(e.to_string()))?;
        match self.daemon {
            Daemon::Gobgp => {
                let conf = dir.join("gobgpd.toml");
                std::fs::write(&conf, gobgp_config(&self.config))
                    .map_err(|e| Error::Io(e.to_string()))?;
                let child = Command::new("ip")
                    .args(["netns", "exec", &self.netns, "gobgpd", "-t", "toml", "-f"])
                    .arg(&conf)
                    .args(["--api-hosts", "127.0.0.1:50051", "--log-level", "info"])
                    .stdout(log)
                    .stderr(log2)
                    .spawn()
                    .map_err(|e| Error::Io(format!("gobgpd: {e}")))?;
                self.child = Some(child);
            }
            Daemon::Bird => {
                let conf = dir.join("bird.conf");
                std::fs::write(&conf, bird_config(&self.config))
                    .map_err(|e| Error::Io(e.to_string()))?;
                let child = Command::new("ip")
                    .args(["netns", "exec", &self.netns, "bird", "-f", "-c"])
                    .arg(&conf)
                    .arg("-s")
                    .arg(dir.join("bird.ctl"))
                    .arg("-P")
                    .arg(dir.join("bird.pid"))
                    .stdout(log)
                    .stderr(log2)
                    .spawn()
                    .map_err(|e| Error::Io(format!("bird: {e}")))?;
                self.child = Some(child);
            }
            Daemon::Frr => {
                let conf = dir.join("bgpd.conf");
                std::fs::write(&conf, frr_config(&self.config))
                    .map_err(|e| Error::Io(e.to_string()))?;
                // zebra is needed for vtysh; both daemons run with their sockets and pid files in `dir`.
                let _ = std::fs::set_permissions(
                    dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o777),
                );
                let mut daemons = vec![("/usr/lib/frr/zebra", vec![])];
                if self.config.bfd {
                    daemons.push(("/usr/lib/frr/bfdd", vec![]));
                }
                daemons.push((
                    "/usr/lib/frr/bgpd",
                    vec!["-f".to_string(), conf.display().to_string()],
                ));
                for (bin, extra) in daemons {
                    let name = bin.rsplit('/').next().unwrap_or(bin);
                    let status = Command::new("ip")
                        .args(["netns", "exec", &self.netns, bin, "-d", "--vty_socket"])
                        .arg(dir)
                        .arg("-i")
                        .arg(dir.join(format!("{name}.pid")))
                        .arg("-z")
                        .arg(dir.join("zserv.api"))
                        .args(extra)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map_err(|e| Error::Io(format!("{bin}: {e}")))?;
                    if !status.success() {
                        return Err(Error::Io(format!("{bin} did not start ({status})")));
                    }
                    if let Ok(pid) = std::fs::read_to_string(dir.join(format!("{name}.pid")))
                        && let Ok(pid) = pid.trim().parse()
                    {
                        self.frr_pids.push(pid);
                    }
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.cli_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Io(format!(
                    "{} in {} did not answer its CLI within 15 s",
                    self.daemon.name(),
                    self.netns
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli_ok(&self) -> bool {
        let probe: &[&str] = match self.daemon {
            Daemon::Gobgp => &["global"],
            Daemon::Bird => &["show", "status"],
            Daemon::Frr => &["-c", "show bgp summary"],
        };
        self.cli(probe).is_ok()
    }

    /// The command prefix that runs the daemon's CLI against this router.
    pub fn cli_prefix(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.netns.clone(),
        ];
        match self.daemon {
            Daemon::Gobgp => v.extend(["gobgp".into(), "-p".into(), "50051".into()]),
            Daemon::Bird => v.extend([
                "birdc".into(),
                "-s".into(),
                self.dir.join("bird.ctl").display().to_string(),
            ]),
            Daemon::Frr => v.extend([
                "vtysh".into(),
                "--vty_socket".into(),
                self.dir.display().to_string(),
            ]),
        }
        v
    }

    /// Runs the CLI with `args` appended and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let prefix = self.cli_prefix();
        let out = Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Io(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success()
            || (self.daemon == Daemon::Bird && stdout.contains("Unable to connect"))
        {
            return Err(Error::Cli {
                command: format!("{} {}", prefix.join(" "), args.join(" ")),
                stderr: format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout),
            });
        }
        Ok(stdout)
    }

    /// Every route the router holds from its neighbours, all paths (not only the best).
    pub fn routes(&self) -> Result<Vec<PeerRoute>> {
        let mut out = match self.daemon {
            Daemon::Gobgp => {
                let mut v = parse_gobgp(&self.cli(&["-j", "global", "rib", "-a", "ipv4"])?)?;
                v.extend(parse_gobgp(
                    &self.cli(&["-j", "global", "rib", "-a", "ipv6"])?,
                )?);
                v
            }
            Daemon::Bird => parse_bird(&self.cli(&["show", "route", "all"])?)?,
            Daemon::Frr => {
                let mut v = Vec::new();
                for fam in ["ipv4", "ipv6"] {
                    let list: serde_json::Value = serde_json::from_str(
                        &self.cli(&["-c", &format!("show bgp {fam} unicast json")])?,
                    )
                    .map_err(|e| parse_err("frr", e.to_string()))?;
                    for prefix in list["routes"]
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.keys())
                    {
                        v.extend(parse_frr(&self.cli(&[
                            "-c",
                            &format!("show bgp {fam} unicast {prefix} json"),
                        ])?)?);
                    }
                }
                v
            }
        };
        out.sort();
        Ok(out)
    }

    /// The router's BFD sessions (FRR: `show bfd peers json`; BIRD: `show bfd sessions`; GoBGP has none).
    pub fn bfd_sessions(&self) -> Result<Vec<RouterBfdSession>> {
        match self.daemon {
            Daemon::Gobgp => Ok(Vec::new()),
            Daemon::Bird => parse_bird_bfd(&self.cli(&["show", "bfd", "sessions"])?),
            Daemon::Frr => parse_frr_bfd(&self.cli(&["-c", "show bfd peers json"])?),
        }
    }

    /// The command that lists the router's BFD sessions, as a user types it after [`Router::cli_prefix`].
    pub fn bfd_command(&self) -> &'static [&'static str] {
        match self.daemon {
            Daemon::Gobgp => &[],
            Daemon::Bird => &["show", "bfd", "sessions"],
            Daemon::Frr => &["-c", "show bfd peers"],
        }
    }

    /// Waits, at most `limit`, until every address of `peers` has a BFD session Up; returns the sessions last seen.
    pub fn wait_bfd_up(&self, peers: &[IpAddr], limit: Duration) -> (bool, Vec<RouterBfdSession>) {
        let deadline = Instant::now() + limit;
        let mut last = Vec::new();
        loop {
            if let Ok(sessions) = self.bfd_sessions() {
                last = sessions;
                let up = |ip: &IpAddr| last.iter().any(|s| s.peer == *ip && s.is_up());
                if peers.iter().all(up) {
                    return (true, last);
                }
            }
            if Instant::now() > deadline {
                return (false, last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many routes the router holds (cheaper than [`Router::routes`] for large tables).
    pub fn route_count(&self) -> Result<usize> {
        match self.daemon {
            Daemon::Bird => {
                let s = self.cli(&["show", "route", "count"])?;
                // "10000 of 10000 routes for 10000 networks in table master4"
                Ok(s.lines()
                    .filter_map(|l| {
                        l.split_whitespace()
                            .next()
                            .and_then(|n| n.parse::<usize>().ok())
                    })
                    .sum())
            }
            _ => Ok(self.routes()?.len()),
        }
    }

    /// Stops the daemon (as a crash or an operator restart would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.frr_pids.drain(..) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(self.dir.join("bird.ctl"));
    }

    /// Restarts the daemon with the same config.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        // Let the kernel release port 179.
        std::thread::sleep(Duration::from_millis(200));
        self.launch()
    }

    /// Waits until `pred` holds for the router's routes; returns the last routes seen either way.
    pub fn wait_routes(
        &self,
        timeout: Duration,
        pred: impl Fn(&[PeerRoute]) -> bool,
    ) -> (bool, Vec<PeerRoute>) {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            if let Ok(r) = self.routes() {
                last = r;
                if pred(&last) {
                    return (true, last);
                }
            }
            if Instant::now() > deadline {
                return (false, last);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.daemon.name())))
            .unwrap_or_default()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}

fn gobgp_config(c: &RouterConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = 179",
        c.asn, c.router_id
    );
    for n in &c.neighbors {
        let _ = writeln!(
            s,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}",
            n.address, n.asn
        );
        if let Some(p) = &n.password {
            let _ = writeln!(s, "    auth-password = \"{p}\"");
        }
        let _ = writeln!(s, "  [neighbors.transport.config]\n    passive-mode = true");
        if n.multihop {
            let _ = writeln!(
                s,
                "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = 16"
            );
        }
        if c.graceful_restart {
            let _ = writeln!(
                s,
                "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120"
            );
        }
        for fam in ["ipv4-unicast", "ipv6-unicast"] {
            let _ = writeln!(
                s,
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{fam}\""
            );
            if c.graceful_restart {
                let _ = writeln!(
                    s,
                    "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true"
                );
            }
        }
    }
    s
}

fn bird_config(c: &RouterConfig) -> String {
    let mut s = format!(
        "router id {};\nprotocol device {{ scan time 10; }}\nprotocol direct {{ ipv4; ipv6; }}\n",
        c.router_id
    );
    if c.bfd {
        // The BGP protocols ask this one for their sessions (`bfd on`); single-hop and multihop alike.
        let options = format!(
            "min rx interval {} ms; min tx interval {} ms; multiplier {};",
            LAB_BFD.receive.as_millis(),
            LAB_BFD.transmit.as_millis(),
            LAB_BFD.multiplier
        );
        let _ = writeln!(
            s,
            "protocol bfd {{\n  interface \"*\" {{ {options} }};\n  multihop {{ {options} }};\n}}"
        );
    }
    for (i, n) in c.neighbors.iter().enumerate() {
        if let Some(interface) = &n.interface {
            // Unnumbered: BIRD advertises itself on the link (radv, as no default router) and accepts a session
            // from any link-local address there (dynamic BGP), IPv4 routes with an IPv6 next hop (RFC 8950).
            let _ = writeln!(
                s,
                "protocol radv ra{} {{\n  interface \"{interface}\" {{ max ra interval 10; default lifetime 0; }};\n}}",
                i + 1
            );
            let _ = writeln!(
                s,
                "protocol bgp n{} {{\n  local as {};\n  neighbor range fe80::/10 as {};\n  interface \"{interface}\";\n  \
                 dynamic name \"n{}u\";\n  passive on;",
                i + 1,
                c.asn,
                n.asn,
                i + 1
            );
        } else {
            let _ = writeln!(
                s,
                "protocol bgp n{} {{\n  local as {};\n  neighbor {} as {};\n  passive on;",
                i + 1,
                c.asn,
                n.address,
                n.asn
            );
        }
        if let Some(p) = &n.password {
            let _ = writeln!(s, "  password \"{p}\";");
        }
        if n.multihop {
            let _ = writeln!(s, "  multihop 16;");
        } else {
            let _ = writeln!(s, "  direct;");
        }
        if c.graceful_restart {
            let _ = writeln!(s, "  graceful restart on;");
        }
        if c.bfd {
            let _ = writeln!(s, "  bfd on;");
        }
        let enhe = if n.interface.is_some() {
            " extended next hop on;"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  ipv4 {{{enhe} import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}"
        );
    }
    s
}

fn frr_config(c: &RouterConfig) -> String {
    let mut s = format!(
        "hostname ilb-router\n!\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n",
        c.asn, c.router_id
    );
    if c.graceful_restart {
        s.push_str(" bgp graceful-restart\n");
    }
    let key = |n: &Neighbor| n.interface.clone().unwrap_or_else(|| n.address.to_string());
    for n in &c.neighbors {
        let key = key(n);
        match &n.interface {
            Some(i) => {
                let _ = writeln!(s, " neighbor {i} interface remote-as {}", n.asn);
            }
            None => {
                let _ = writeln!(s, " neighbor {key} remote-as {}", n.asn);
            }
        }
        let _ = writeln!(s, " neighbor {key} passive");
        if let Some(p) = &n.password {
            let _ = writeln!(s, " neighbor {key} password {p}");
        }
        if n.multihop {
            let _ = writeln!(s, " neighbor {key} ebgp-multihop 16");
        }
        if c.bfd {
            let _ = writeln!(s, " neighbor {key} bfd");
        }
    }
    for fam in ["ipv4", "ipv6"] {
        let _ = writeln!(s, " address-family {fam} unicast");
        for n in &c.neighbors {
            let _ = writeln!(s, "  neighbor {} activate", key(n));
        }
        s.push_str(" exit-address-family\n");
    }
    s
}

fn parse_err(daemon: &'static str, message: impl Into<String>) -> Error {
    Error::Parse {
        daemon,
        message: message.into(),
    }
}

/// BIRD's `show bfd sessions`: a header line, then `address interface state since interval timeout`, the last two
/// in seconds.
pub fn parse_bird_bfd(text: &str) -> Result<Vec<RouterBfdSession>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(peer) = words.first().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let seconds = |i: usize| -> Result<Duration> {
            words
                .get(i)
                .and_then(|w| w.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| parse_err("bird", format!("BFD session line {line:?}")))
        };
        // The since column is a time of day, or a date and a time: the intervals are the last two words.
        let n = words.len();
        if n < 6 {
            return Err(parse_err("bird", format!("BFD session line {line:?}")));
        }
        out.push(RouterBfdSession {
            peer,
            state: words[2].to_lowercase(),
            transmit: seconds(n - 2)?,
            detection: seconds(n - 1)?,
        });
    }
    Ok(out)
}

/// FRR's `show bfd peers json`: per peer its own configured intervals and the peer's, from which the negotiated ones
/// follow (RFC 5880 §6.8.2 and §6.8.4).
pub fn parse_frr_bfd(text: &str) -> Result<Vec<RouterBfdSession>> {
    let list: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| parse_err("frr", e.to_string()))?;
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        let ms = |key: &str| -> Result<Duration> {
            p[key]
                .as_u64()
                .map(Duration::from_millis)
                .ok_or_else(|| parse_err("frr", format!("BFD peer without {key}: {p}")))
        };
        let peer = p["peer"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| parse_err("frr", format!("BFD peer without an address: {p}")))?;
        let multiplier = p["remote-detect-multiplier"].as_u64().unwrap_or(0);
        out.push(RouterBfdSession {
            peer,
            state: p["status"].as_str().unwrap_or("unknown").to_lowercase(),
            transmit: ms("transmit-interval")?.max(ms("remote-receive-interval")?),
            detection: ms("remote-transmit-interval")?.max(ms("receive-interval")?)
                * u32::try_from(multiplier).unwrap_or(0),
        });
    }
    Ok(out)
}

/// One word of FRR's community string: `asn:value`, or the name FRR prints for a well-known community (RFC 1997,
/// RFC 7999, RFC 8326, RFC 8642).
fn frr_community(word: &str) -> Option<CommunityValue> {
    let value = match word {
        "graceful-shutdown" => 0,
        "accept-own" => 1,
        "blackhole" => 666,
        "no-export" => 0xff01,
        "no-advertise" => 0xff02,
        "local-AS" => 0xff03,
        "no-peer" => 0xff04,
        _ => return word.parse().ok(),
    };
    Some(CommunityValue::Standard { asn: 0xffff, value })
}

/// `gobgp -j global rib -a FAMILY`: `{prefix: [path...]}`, each path with `attrs` by type code.
pub fn parse_gobgp(json: &str) -> Result<Vec<PeerRoute>> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).or_else(|e| {
        if json.trim().is_empty() {
            Ok(serde_json::Value::Null)
        } else {
            Err(parse_err("gobgp", e.to_string()))
        }
    })?;
    let mut out = Vec::new();
    let Some(map) = v.as_object() else {
        return Ok(out);
    };
    for (prefix, paths) in map {
        let prefix: IpNet = prefix
            .parse()
            .map_err(|_| parse_err("gobgp", format!("prefix {prefix}")))?;
        for path in paths.as_array().into_iter().flatten() {
            let mut r = PeerRoute {
                prefix,
                next_hop: IpAddr::from([0, 0, 0, 0]),
                local_pref: None,
                communities: BTreeSet::new(),
            };
            for a in path["attrs"].as_array().into_iter().flatten() {
                match a["type"].as_u64() {
                    Some(3) | Some(14) => {
                        if let Some(nh) = a["nexthop"].as_str().and_then(|s| s.parse().ok()) {
                            r.next_hop = nh;
                        }
                    }
                    Some(5) => r.local_pref = a["value"].as_u64().map(|v| v as u32),
                    Some(8) => {
                        for c in a["communities"].as_array().into_iter().flatten() {
                            if let Some(c) = c.as_u64() {
                                r.communities.insert(CommunityValue::Standard {
                                    asn: (c >> 16) as u16,
                                    value: c as u16,
                                });
                            }
                        }
                    }
                    Some(32) => {
                        for c in a["value"].as_array().into_iter().flatten() {
                            let f = |k: &str| c[k].as_u64().unwrap_or(0) as u32;
                            r.communities.insert(CommunityValue::Large {
                                global: f("ASN"),
                                local1: f("LocalData1"),
                                local2: f("LocalData2"),
                            });
                        }
                    }
                    _ => {}
                }
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// `birdc show route all`.
pub fn parse_bird(text: &str) -> Result<Vec<PeerRoute>> {
    let mut out: Vec<PeerRoute> = Vec::new();
    let mut prefix: Option<IpNet> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || line.starts_with("BIRD ") || line.starts_with("Table ") {
            continue;
        }
        let first = trimmed.split_whitespace().next().unwrap_or("");
        if !line.starts_with(char::is_whitespace)
            && let Ok(p) = first.parse::<IpNet>()
        {
            prefix = Some(p);
            if trimmed.contains('[') {
                out.push(PeerRoute {
                    prefix: p,
                    next_hop: IpAddr::from([0, 0, 0, 0]),
                    local_pref: None,
                    communities: BTreeSet::new(),
                });
            }
            continue;
        }
        if (first == "unicast" || first == "unreachable") && trimmed.contains('[') {
            if let Some(p) = prefix {
                out.push(PeerRoute {
                    prefix: p,
                    next_hop: IpAddr::from([0, 0, 0, 0]),
                    local_pref: None,
                    communities: BTreeSet::new(),
                });
            }
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if let Some(v) = trimmed.strip_prefix("BGP.next_hop:") {
            // `global [link-local]`; a link-local next hop alone shows as `:: fe80::…`.
            if let Some(nh) = v
                .split_whitespace()
                .filter_map(|s| s.parse::<IpAddr>().ok())
                .find(|ip| !ip.is_unspecified())
            {
                r.next_hop = nh;
            }
        } else if let Some(v) = trimmed.strip_prefix("BGP.local_pref:") {
            r.local_pref = v.trim().parse().ok();
        } else if let Some(v) = trimmed.strip_prefix("BGP.community:") {
            for c in v.split(')').filter_map(|c| c.trim().strip_prefix('(')) {
                let mut it = c.split(',').map(|x| x.trim().parse::<u16>());
                if let (Some(Ok(asn)), Some(Ok(value))) = (it.next(), it.next()) {
                    r.communities
                        .insert(CommunityValue::Standard { asn, value });
                }
            }
        } else if let Some(v) = trimmed.strip_prefix("BGP.large_community:") {
            for c in v.split(')').filter_map(|c| c.trim().strip_prefix('(')) {
                let n: Vec<u32> = c.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                if let [global, local1, local2] = n[..] {
                    r.communities.insert(CommunityValue::Large {
                        global,
                        local1,
                        local2,
                    });
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .filter(|r| !r.next_hop.is_unspecified())
        .collect())
}

/// `vtysh -c 'show bgp ipv4 unicast PREFIX json'`: one prefix with all its paths.
pub fn parse_frr(json: &str) -> Result<Vec<PeerRoute>> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| parse_err("frr", e.to_string()))?;
    let mut out = Vec::new();
    {
        let Some(prefix) = v["prefix"].as_str().and_then(|p| p.parse::<IpNet>().ok()) else {
            return Ok(out);
        };
        for path in v["paths"].as_array().into_iter().flatten() {
            let next_hop = path["nexthops"][0]["ip"]
                .as_str()
                .and_then(|s| s.parse().ok());
            let Some(next_hop) = next_hop else { continue };
            let mut communities = BTreeSet::new();
            if let Some(list) = path["community"]["string"].as_str() {
                communities.extend(list.split_whitespace().filter_map(frr_community));
            }
            if let Some(list) = path["largeCommunity"]["string"].as_str() {
                communities.extend(
                    list.split_whitespace()
                        .filter_map(|c| format!("large:{c}").parse::<CommunityValue>().ok()),
                );
            }
            out.push(PeerRoute {
                prefix,
                next_hop,
                local_pref: path["locPrf"]
                    .as_u64()
                    .or(path["localpref"].as_u64())
                    .map(|v| v as u32),
                communities,
            });
        }
    }
    Ok(out)
}

enum Cmd {
    Routes(RouteSet),
    Stop(bool, oneshot::Sender<()>),
}

/// An IronLB BGP session running on its own thread inside a network namespace (sockets belong to the namespace
/// of the thread that opens them).
pub struct NsSpeaker {
    tx: mpsc::UnboundedSender<Cmd>,
    status: watch::Receiver<SessionStatus>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsSpeaker {
    pub fn start(netns: &str, config: SessionConfig, routes: RouteSet) -> Result<NsSpeaker> {
        NsSpeaker::spawn(netns, None, config, routes)
    }

    /// An unnumbered session, as the agent runs one: router discovery on `interface` first (see
    /// [`crate::bgp::unnumbered`]), then the session to the router heard there, on `config.peer`'s port. Fails when
    /// no router is heard within 20 s.
    pub fn start_unnumbered(
        netns: &str,
        interface: &str,
        config: SessionConfig,
        routes: RouteSet,
    ) -> Result<NsSpeaker> {
        NsSpeaker::spawn(netns, Some(interface.to_string()), config, routes)
    }

    fn spawn(
        netns: &str,
        interface: Option<String>,
        mut config: SessionConfig,
        routes: RouteSet,
    ) -> Result<NsSpeaker> {
        let file = std::fs::File::open(format!("/run/netns/{netns}"))
            .map_err(|e| Error::Io(format!("{netns}: {e}")))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        let interface_name = interface.clone();
        let thread = std::thread::spawn(move || {
            if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                // Kept for the session's lifetime: it keeps advertising this node to the router.
                let _discovery = match interface {
                    Some(interface) => {
                        let discovery = crate::bgp::unnumbered::Discovery::start(&interface);
                        let mut status = discovery.watch();
                        let heard = tokio::time::timeout(
                            Duration::from_secs(20),
                            status.wait_for(|s| s.peer.is_some()),
                        )
                        .await;
                        let Ok(Ok(heard)) = heard else { return };
                        if let Some(router) = heard.peer {
                            config.peer = SocketAddr::V6(router.socket_addr(config.peer.port()));
                        }
                        drop(heard);
                        Some(discovery)
                    }
                    None => None,
                };
                let session = Session::spawn(config, routes);
                let _ = status_tx.send(session.watch_status());
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Cmd::Routes(r) => session.set_routes(r),
                        Cmd::Stop(graceful, done) => {
                            session.stop(graceful).await;
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            });
        });
        let status = status_rx
            .recv_timeout(Duration::from_secs(25))
            .map_err(|_| {
                Error::Io(match &interface_name {
                    Some(i) => format!("no router heard on {i} in {netns} within 20 s"),
                    None => format!("speaker thread in {netns} did not start"),
                })
            })?;
        Ok(NsSpeaker {
            tx,
            status,
            thread: Some(thread),
        })
    }

    pub fn set_routes(&self, routes: RouteSet) {
        let _ = self.tx.send(Cmd::Routes(routes));
    }

    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// Waits until the session's status satisfies `pred`.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&SessionStatus) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.status.borrow()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.status.borrow())
    }

    /// Stops the session (`graceful`: no Cease, as an agent restart) and joins the thread.
    pub fn stop(mut self, graceful: bool) {
        let (done_tx, done_rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Stop(graceful, done_tx));
        let _ = done_rx.blocking_recv();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NsSpeaker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let (done_tx, _done_rx) = oneshot::channel();
            let _ = self.tx.send(Cmd::Stop(false, done_tx));
            let _ = t.join();
        }
    }
}

/// One single-hop neighbor per lab node, of AS `asn`, with an MD5 `password` if given.
pub fn node_neighbors(
    lab: &super::cluster::Lab,
    asn: u32,
    password: Option<&str>,
) -> Vec<Neighbor> {
    lab.topology
        .nodes
        .iter()
        .map(|n| Neighbor {
            address: IpAddr::V4(n.ipv4),
            asn,
            password: password.map(str::to_string),
            multihop: false,
            interface: None,
        })
        .collect()
}

/// The lab's BGP side for `ironlb lab --bgp`: a router (AS [`LAB_ROUTER_AS`]) in the switch namespace peering with
/// every node (AS [`LAB_NODE_AS`]), configured in the cluster by one BGPPeer and one BGPAdvertisement for the lab
/// pool. Returns once the router holds a route for every VIP in `vips`, or after `limit`.
pub async fn peer_lab(
    lab: &super::cluster::Lab,
    daemon: Daemon,
    bfd: bool,
    dir: &Path,
    vips: &[IpAddr],
    limit: Duration,
) -> super::cluster::Result<(Router, Vec<PeerRoute>)> {
    use super::cluster::Error as LabError;
    use crate::config::crd::{BFDProfile, BGPAdvertisement, BGPPeer};
    use kube::api::{Api, PostParams};

    let config = RouterConfig {
        asn: LAB_ROUTER_AS,
        router_id: super::topology::SWITCH_V4,
        neighbors: node_neighbors(lab, LAB_NODE_AS, None),
        // Graceful restart keeps a restarting node's routes; BFD is there to drop a dead node's at once. With BFD,
        // the lab shows the latter, so it negotiates no graceful restart.
        graceful_restart: !bfd,
        bfd,
    };
    let netns = lab.topology.switch.clone();
    let dir = dir.to_path_buf();
    let router = tokio::task::spawn_blocking(move || Router::start(daemon, &netns, &dir, config))
        .await
        .map_err(|e| LabError::Setup(e.to_string()))?
        .map_err(|e| LabError::Setup(format!("starting {}: {e}", daemon.name())))?;
    let pp = PostParams::default();
    let mut peer_spec = serde_json::json!({
        "myASN": LAB_NODE_AS, "peerASN": LAB_ROUTER_AS, "peerAddress": super::topology::SWITCH_V4.to_string(),
        "connectTime": "1s", "enableGracefulRestart": !bfd, "dualStackAddressFamily": true,
    });
    if bfd {
        let profile: BFDProfile = serde_json::from_value(serde_json::json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile",
            "metadata": {"name": LAB_BFD_PROFILE, "namespace": "metallb-system"},
            "spec": {"receiveInterval": LAB_BFD.receive.as_millis() as u64,
                     "transmitInterval": LAB_BFD.transmit.as_millis() as u64,
                     "detectMultiplier": LAB_BFD.multiplier},
        }))
        .map_err(|e| LabError::Setup(e.to_string()))?;
        Api::<BFDProfile>::namespaced(lab.client.clone(), "metallb-system")
            .create(&pp, &profile)
            .await?;
        peer_spec["bfdProfile"] = LAB_BFD_PROFILE.into();
    }
    let peer: BGPPeer = serde_json::from_value(serde_json::json!({
        "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
        "metadata": {"name": "lab-router", "namespace": "metallb-system"},
        "spec": peer_spec,
    }))
    .map_err(|e| LabError::Setup(e.to_string()))?;
    Api::<BGPPeer>::namespaced(lab.client.clone(), "metallb-system")
        .create(&pp, &peer)
        .await?;
    let adv: BGPAdvertisement = serde_json::from_value(serde_json::json!({
        "apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
        "metadata": {"name": "lab-router", "namespace": "metallb-system"},
        "spec": {"ipAddressPools": ["lab"], "communities": [format!("{LAB_NODE_AS}:80")]},
    }))
    .map_err(|e| LabError::Setup(e.to_string()))?;
    Api::<BGPAdvertisement>::namespaced(lab.client.clone(), "metallb-system")
        .create(&pp, &adv)
        .await?;
    let want: Vec<IpNet> = vips.iter().map(|ip| IpNet::from(*ip)).collect();
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let r = tokio::task::block_in_place(|| router.routes());
        if let Ok(r) = r {
            seen = r;
            if want.iter().all(|p| seen.iter().any(|r| r.prefix == *p)) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((router, seen))
}

/// The lab's BFDProfile (with `--bfd`), named by its BGPPeer.
pub const LAB_BFD_PROFILE: &str = "lab-bfd";

/// AS numbers of the lab (documentation range).
pub const LAB_ROUTER_AS: u32 = 64496;
pub const LAB_NODE_AS: u32 = 64497;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfd_sessions_are_read_from_bird_and_frr() {
        let bird = "BIRD 2.0.12 ready.\nbfd1:\n\
            IP address                Interface  State      Since         Interval  Timeout\n\
            192.0.2.2                 eth0       Up         20:45:20.203    0.300    0.900\n\
            2001:db8::2               eth0       Down       20:45:19.001    1.000    0.000\n";
        let got = parse_bird_bfd(bird).unwrap();
        assert_eq!(
            got,
            [
                RouterBfdSession {
                    peer: "192.0.2.2".parse().unwrap(),
                    state: "up".into(),
                    transmit: Duration::from_millis(300),
                    detection: Duration::from_millis(900),
                },
                RouterBfdSession {
                    peer: "2001:db8::2".parse().unwrap(),
                    state: "down".into(),
                    transmit: Duration::from_secs(1),
                    detection: Duration::ZERO,
                },
            ]
        );
        assert!(parse_bird_bfd("192.0.2.2 eth0 Up\n").is_err());
        assert_eq!(parse_bird_bfd("BIRD 2.0.12 ready.\n").unwrap(), []);

        // FRR: the router wants 300 ms both ways; the peer asks for 250 ms and a multiplier of 4.
        let frr = r#"[{"peer":"192.0.2.11","status":"up","receive-interval":300,"transmit-interval":300,
            "remote-receive-interval":250,"remote-transmit-interval":250,"remote-detect-multiplier":4}]"#;
        assert_eq!(
            parse_frr_bfd(frr).unwrap(),
            [RouterBfdSession {
                peer: "192.0.2.11".parse().unwrap(),
                state: "up".into(),
                transmit: Duration::from_millis(300),
                detection: Duration::from_millis(1200),
            }]
        );
        assert!(parse_frr_bfd(r#"[{"peer":"192.0.2.11","status":"up"}]"#).is_err());
    }

    #[test]
    fn bird_config_asks_for_bfd_beside_each_neighbour() {
        let config = RouterConfig {
            asn: LAB_ROUTER_AS,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            neighbors: vec![Neighbor {
                address: "192.0.2.11".parse().unwrap(),
                asn: LAB_NODE_AS,
                password: None,
                multihop: false,
                interface: None,
            }],
            graceful_restart: false,
            bfd: true,
        };
        let text = bird_config(&config);
        assert!(text.contains("protocol bfd {"), "{text}");
        assert!(
            text.contains("min rx interval 300 ms; min tx interval 300 ms; multiplier 3;"),
            "{text}"
        );
        assert!(text.contains("  bfd on;"), "{text}");
        assert!(
            !bird_config(&RouterConfig {
                bfd: false,
                ..config
            })
            .contains("bfd")
        );
    }

    #[test]
    fn bird_link_local_next_hops_are_read() {
        let text = "BIRD 2.0.12 ready.\nTable master4:\n203.0.113.31/32      unicast [n1u1 00:45:09.576] * (100) \
                    [AS64497i]\n\tvia fe80::1 on br0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.next_hop: :: fe80::1\n";
        let routes = parse_bird(text).unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].next_hop, "fe80::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn frr_names_of_well_known_communities_are_read() {
        let std = |asn, value| Some(CommunityValue::Standard { asn, value });
        assert_eq!(frr_community("graceful-shutdown"), std(65535, 0));
        assert_eq!(frr_community("no-export"), std(65535, 65281));
        assert_eq!(frr_community("64497:80"), std(64497, 80));
        assert_eq!(frr_community("no-such-name"), None);
    }
}
