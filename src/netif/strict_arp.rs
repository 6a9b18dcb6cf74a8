//! Strict ARP: the `arp_ignore` / `arp_announce` sysctls of the node's announcing interfaces.
//!
//! In integrated mode kube-proxy binds every LoadBalancer IP on `kube-ipvs0` on *every* node. Linux treats an address
//! on any interface as local to the whole host, so with the default sysctls (`arp_ignore=0`) every node answers ARP
//! for every VIP on every interface, and every node may use a VIP as the source of its own ARP requests
//! (`arp_announce=0`), poisoning its neighbours' caches. Only the owner of a VIP may be heard, and it speaks through
//! IronLB's userspace responder, not through the kernel.
//!
//! kube-proxy's `strictARP: true` fixes this by writing `net.ipv4.conf.all.arp_ignore=1` and
//! `net.ipv4.conf.all.arp_announce=2`. IronLB checks the same thing (`--strict-arp=check`, the default) or writes it
//! itself (`--strict-arp=enforce`), and refuses to announce while it does not hold.
//!
//! # The rule
//!
//! The kernel reads both knobs as the maximum of `conf/all` and `conf/<interface>` (`IN_DEV_MAXCONF` in
//! `include/linux/inetdevice.h`); [`effective`] computes that. For each announcing interface (the interfaces on which
//! ARP requests for a VIP arrive; they are the same on owners and non-owners, because every node holds every VIP on
//! `kube-ipvs0`), strict ARP holds when:
//!
//! - the effective `arp_ignore` is 1, 2 or 8. 1 and 2 reply only for addresses configured on the incoming interface,
//!   so a VIP that sits on `kube-ipvs0` never gets a kernel reply on `eth0`; 8 never replies. The other values do
//!   reply: 0 always, 3 for every global-scope address of the host, and 4–7 and anything above 8 fall through to
//!   "reply" in `arp_ignore()` (`net/ipv4/arp.c`). kube-proxy's "≥ 1" is therefore not quite the kernel's rule.
//! - the effective `arp_announce` is exactly 2: the kernel picks the interface's own primary address as the source of
//!   its ARP requests, never a VIP. Values above 2 hit the `default:` label of `arp_solicit()`, which shares its code
//!   with 0.
//!
//! When no interface is named, the `all` values alone are checked, as for an interface at the defaults (0/0).
//!
//! This module reads and writes procfs of the calling thread's network namespace and nothing else. `enforce` writes
//! only `conf/all`, and never replaces a value that is already strict (an `all.arp_ignore` of 2 or 8 stays); a
//! per-interface value that keeps an interface loose is reported with its own fix, not overwritten.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `arp_ignore` value IronLB writes: reply only for addresses on the incoming interface.
pub const ARP_IGNORE_STRICT: u8 = 1;
/// The `arp_announce` value IronLB writes: always use the best local address of the outgoing interface.
pub const ARP_ANNOUNCE_STRICT: u8 = 2;
/// The command that makes strict ARP effective on every interface, as kube-proxy's `strictARP: true` does.
pub const FIX_COMMAND: &str =
    "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2";
/// The kube-proxy side of the same fix.
pub const FIX_KUBE_PROXY: &str = "kube-proxy `strictARP: true` (ipvs section of its configuration)";
/// Where the current network namespace's IPv4 per-interface sysctls live.
pub const PROC_IPV4_CONF: &str = "/proc/sys/net/ipv4/conf";

/// `--strict-arp`: what the agent does about the ARP sysctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StrictArpMode {
    /// Raise `conf/all` to strict values, then check.
    Enforce,
    /// Only check; report problems with the fix and refuse to announce.
    #[default]
    Check,
    /// Neither read nor write; announce regardless (for nodes whose ARP is handled some other way).
    Off,
}

impl fmt::Display for StrictArpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrictArpMode::Enforce => "enforce",
            StrictArpMode::Check => "check",
            StrictArpMode::Off => "off",
        })
    }
}

/// The value the kernel uses on an interface: `max(conf/all, conf/<interface>)`, for both knobs.
pub fn effective(all: u8, iface: u8) -> u8 {
    all.max(iface)
}

/// Whether an effective `arp_ignore` keeps the kernel from replying for an address held on another interface.
pub fn arp_ignore_is_strict(value: u8) -> bool {
    matches!(value, 1 | 2 | 8)
}

/// Whether an effective `arp_announce` keeps VIPs out of the source of the kernel's ARP requests.
pub fn arp_announce_is_strict(value: u8) -> bool {
    value == ARP_ANNOUNCE_STRICT
}

/// The sysctls as read: `conf/all` and the named interfaces' own `(arp_ignore, arp_announce)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysctlValues {
    pub all_ignore: u8,
    pub all_announce: u8,
    /// Interfaces whose `conf/<name>` directory exists; a missing interface is absent here.
    pub per_iface: BTreeMap<String, (u8, u8)>,
}

/// One of the two knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ArpKnob {
    ArpIgnore,
    ArpAnnounce,
}

impl ArpKnob {
    pub fn file_name(self) -> &'static str {
        match self {
            ArpKnob::ArpIgnore => "arp_ignore",
            ArpKnob::ArpAnnounce => "arp_announce",
        }
    }
}

/// A sysctl write, as a value: `conf` is `all` or an interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SysctlWrite {
    pub conf: String,
    pub knob: ArpKnob,
    pub value: u8,
}

impl fmt::Display for SysctlWrite {
    /// `net.ipv4.conf.<conf>.<knob>=<value>`, as `sysctl -w` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", sysctl_key(&self.conf, self.knob), self.value)
    }
}

/// The dotted sysctl name. sysctl(8) writes a `.` inside an interface name (`eth0.100`) as `/`.
fn sysctl_key(conf: &str, knob: ArpKnob) -> String {
    format!(
        "net.ipv4.conf.{}.{}",
        conf.replace('.', "/"),
        knob.file_name()
    )
}

/// The outcome of a check: `ok`, or one line per problem, each ending in the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StrictArpStatus {
    pub ok: bool,
    pub problems: Vec<String>,
}

impl StrictArpStatus {
    /// Applies the rule in the module documentation to each of `interfaces` (or to `all` alone when none is named).
    pub fn evaluate(values: &SysctlValues, interfaces: &[&str]) -> StrictArpStatus {
        let mut problems = Vec::new();
        if interfaces.is_empty() {
            check_interface(values, "all", (0, 0), &mut problems);
        }
        for &name in interfaces {
            match values.per_iface.get(name) {
                Some(&own) => check_interface(values, name, own, &mut problems),
                None => problems.push(format!(
                    "{name}: no {PROC_IPV4_CONF}/{name}: the interface does not exist in this network namespace"
                )),
            }
        }
        StrictArpStatus {
            ok: problems.is_empty(),
            problems,
        }
    }
}

fn check_interface(values: &SysctlValues, name: &str, own: (u8, u8), problems: &mut Vec<String>) {
    let knobs = [
        (
            ArpKnob::ArpIgnore,
            values.all_ignore,
            own.0,
            arp_ignore_is_strict as fn(u8) -> bool,
            ARP_IGNORE_STRICT,
            "1, 2 or 8",
        ),
        (
            ArpKnob::ArpAnnounce,
            values.all_announce,
            own.1,
            arp_announce_is_strict,
            ARP_ANNOUNCE_STRICT,
            "2",
        ),
    ];
    for (knob, all, iface, strict, strict_value, wanted) in knobs {
        let eff = effective(all, iface);
        if strict(eff) {
            continue;
        }
        // Fixing `all` is the usual cure; an interface's own value above it keeps winning the max, and then that
        // value needs its own write.
        let all_after = if strict(all) { all } else { strict_value };
        let mut fixes = Vec::new();
        if !strict(all) {
            fixes.push(format!("{FIX_COMMAND} (or {FIX_KUBE_PROXY})"));
        }
        if name != "all" && !strict(effective(all_after, iface)) {
            fixes.push(format!(
                "sysctl -w {}={strict_value}",
                sysctl_key(name, knob)
            ));
        }
        problems.push(format!(
            "{name}: effective {} is {eff} (max of all={all}, {name}={iface}); it must be {wanted} so that nodes \
             holding a VIP on kube-ipvs0 without owning it stay silent; fix: {}",
            knob.file_name(),
            fixes.join(" and "),
        ));
    }
}

/// The writes `enforce` makes: `conf/all` raised to strict values where it is not strict already.
///
/// "Raised" is about strictness, not the number: an `all.arp_ignore` of 2 or 8 is stricter than 1 and stays, while
/// 3–7 and anything above 8 make the kernel reply, so they become 1. Pure. Applying the result and computing it again yields nothing.
pub fn enforce_writes(values: &SysctlValues) -> Vec<SysctlWrite> {
    let mut writes = Vec::new();
    if !arp_ignore_is_strict(values.all_ignore) {
        writes.push(SysctlWrite {
            conf: "all".into(),
            knob: ArpKnob::ArpIgnore,
            value: ARP_IGNORE_STRICT,
        });
    }
    if !arp_announce_is_strict(values.all_announce) {
        writes.push(SysctlWrite {
            conf: "all".into(),
            knob: ArpKnob::ArpAnnounce,
            value: ARP_ANNOUNCE_STRICT,
        });
    }
    writes
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {value:?}, not an integer")]
    Parse { path: PathBuf, value: String },
    #[error("writing {write} to {path}: {source}")]
    Write {
        write: SysctlWrite,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name:?} is not an interface name")]
    InvalidInterface { name: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `net/ipv4/conf` directory of one network namespace: procfs resolves `/proc/sys/net` against the network
/// namespace of the thread that opens the file.
#[derive(Debug, Clone)]
pub struct Ipv4Conf {
    root: PathBuf,
}

impl Ipv4Conf {
    /// `/proc/sys/net/ipv4/conf` of the calling thread's network namespace.
    pub fn current_netns() -> Self {
        Ipv4Conf::at(PROC_IPV4_CONF)
    }

    /// Another directory with the same layout (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Ipv4Conf { root: root.into() }
    }

    /// Reads `all` and each of `interfaces`; an interface without a directory is left out of `per_iface`.
    pub fn read(&self, interfaces: &[&str]) -> Result<SysctlValues> {
        let all = self.root.join("all");
        let mut values = SysctlValues {
            all_ignore: read_knob(&all, ArpKnob::ArpIgnore)?,
            all_announce: read_knob(&all, ArpKnob::ArpAnnounce)?,
            per_iface: BTreeMap::new(),
        };
        for &name in interfaces {
            let dir = self.root.join(valid_name(name)?);
            if !dir.is_dir() {
                continue;
            }
            let own = (
                read_knob(&dir, ArpKnob::ArpIgnore)?,
                read_knob(&dir, ArpKnob::ArpAnnounce)?,
            );
            values.per_iface.insert(name.to_string(), own);
        }
        Ok(values)
    }

    /// The one executor for [`SysctlWrite`]s.
    pub fn write(&self, write: &SysctlWrite) -> Result<()> {
        let path = self
            .root
            .join(valid_name(&write.conf)?)
            .join(write.knob.file_name());
        std::fs::write(&path, format!("{}\n", write.value)).map_err(|source| Error::Write {
            write: write.clone(),
            path,
            source,
        })
    }
}

/// Interface names come from configuration and end up in a path: refuse anything that is not a kernel name.
fn valid_name(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(name)
    } else {
        Err(Error::InvalidInterface { name: name.into() })
    }
}

fn read_knob(dir: &Path, knob: ArpKnob) -> Result<u8> {
    let path = dir.join(knob.file_name());
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let value: i64 = text.trim().parse().map_err(|_| Error::Parse {
        path,
        value: text.trim().to_string(),
    })?;
    // The files are ints. Negative values behave as 0 in both switch statements, and anything above 255 is as loose
    // as 255, so clamping keeps both the verdict and the max.
    Ok(value.clamp(0, 255) as u8)
}

/// What one pass did: the mode, the verdict after any writes, and the writes made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictArpReport {
    pub mode: StrictArpMode,
    pub status: StrictArpStatus,
    pub applied: Vec<SysctlWrite>,
}

impl StrictArpReport {
    /// Whether the agent may announce: always with `off`, otherwise only when strict ARP holds.
    pub fn announce_allowed(&self) -> bool {
        self.mode == StrictArpMode::Off || self.status.ok
    }
}

/// One pass of `--strict-arp` over the announcing `interfaces`.
pub fn run(mode: StrictArpMode, conf: &Ipv4Conf, interfaces: &[&str]) -> Result<StrictArpReport> {
    let mut applied = Vec::new();
    let status = match mode {
        StrictArpMode::Off => StrictArpStatus {
            ok: true,
            problems: Vec::new(),
        },
        StrictArpMode::Check => StrictArpStatus::evaluate(&conf.read(interfaces)?, interfaces),
        StrictArpMode::Enforce => {
            for write in enforce_writes(&conf.read(interfaces)?) {
                conf.write(&write)?;
                tracing::info!(sysctl = %write, "strict ARP: raised");
                applied.push(write);
            }
            // Read back: the kernel, not our write, is the truth.
            StrictArpStatus::evaluate(&conf.read(interfaces)?, interfaces)
        }
    };
    for problem in &status.problems {
        tracing::warn!(%mode, problem = %problem, "strict ARP does not hold");
    }
    Ok(StrictArpReport {
        mode,
        status,
        applied,
    })
}

/// Metrics of the strict-ARP check.
#[derive(Debug, Clone, Default)]
pub struct StrictArpMetrics {
    ok: Gauge,
    problems: Gauge,
    writes: Counter,
}

impl StrictArpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = StrictArpMetrics::default();
        registry.register(
            "ironlb_strict_arp_ok",
            "1 while strict ARP holds on every announcing interface (or --strict-arp=off)",
            m.ok.clone(),
        );
        registry.register(
            "ironlb_strict_arp_problems",
            "Announcing interfaces' ARP sysctls that are not strict, per knob",
            m.problems.clone(),
        );
        registry.register(
            "ironlb_strict_arp_writes",
            "ARP sysctls written by --strict-arp=enforce",
            m.writes.clone(),
        );
        m
    }

    pub fn record(&self, report: &StrictArpReport) {
        self.ok.set(i64::from(report.status.ok));
        self.problems.set(report.status.problems.len() as i64);
        self.writes.inc_by(report.applied.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(all: (u8, u8)) -> SysctlValues {
        SysctlValues {
            all_ignore: all.0,
            all_announce: all.1,
            per_iface: BTreeMap::new(),
        }
    }

    fn with(mut v: SysctlValues, name: &str, own: (u8, u8)) -> SysctlValues {
        v.per_iface.insert(name.into(), own);
        v
    }

    #[test]
    fn effective_is_the_max() {
        assert_eq!(effective(0, 0), 0);
        assert_eq!(effective(1, 0), 1);
        assert_eq!(effective(0, 2), 2);
        assert_eq!(effective(2, 1), 2);
    }

    #[test]
    fn kube_proxy_values_are_strict() {
        let v = with(values((1, 2)), "eth0", (0, 0));
        let status = StrictArpStatus::evaluate(&v, &["eth0"]);
        assert_eq!(
            status,
            StrictArpStatus {
                ok: true,
                problems: vec![]
            }
        );
    }

    #[test]
    fn defaults_are_not_strict_and_name_the_fix() {
        let v = with(values((0, 0)), "eth0", (0, 0));
        let status = StrictArpStatus::evaluate(&v, &["eth0"]);
        assert!(!status.ok);
        assert_eq!(status.problems.len(), 2, "{:?}", status.problems);
        assert!(status.problems[0].starts_with("eth0: effective arp_ignore is 0"));
        assert!(status.problems[1].starts_with("eth0: effective arp_announce is 0"));
        for p in &status.problems {
            assert!(p.contains(FIX_COMMAND), "{p}");
            assert!(p.contains("strictARP: true"), "{p}");
        }
    }

    #[test]
    fn per_interface_value_alone_makes_that_interface_strict() {
        let v = with(with(values((0, 0)), "eth0", (1, 2)), "eth1", (0, 0));
        assert!(StrictArpStatus::evaluate(&v, &["eth0"]).ok);
        let status = StrictArpStatus::evaluate(&v, &["eth0", "eth1"]);
        assert_eq!(status.problems.len(), 2);
        assert!(status.problems.iter().all(|p| p.starts_with("eth1:")));
    }

    #[test]
    fn loose_values_above_strict_ones_win_the_max() {
        // arp_ignore 3 replies for every global address; arp_announce 3 behaves as 0.
        let v = with(values((1, 2)), "eth0.100", (3, 3));
        let status = StrictArpStatus::evaluate(&v, &["eth0.100"]);
        assert_eq!(status.problems.len(), 2, "{:?}", status.problems);
        assert!(status.problems[0].contains("sysctl -w net.ipv4.conf.eth0/100.arp_ignore=1"));
        assert!(!status.problems[0].contains(FIX_COMMAND));
        assert!(status.problems[1].contains("sysctl -w net.ipv4.conf.eth0/100.arp_announce=2"));
    }

    #[test]
    fn both_fixes_when_all_and_interface_are_loose() {
        let v = with(values((0, 0)), "eth0", (4, 0));
        let status = StrictArpStatus::evaluate(&v, &["eth0"]);
        assert!(status.problems[0].contains(FIX_COMMAND));
        assert!(status.problems[0].contains("net.ipv4.conf.eth0.arp_ignore=1"));
        // arp_announce: fixing all is enough.
        assert!(!status.problems[1].contains("net.ipv4.conf.eth0.arp_announce"));
    }

    #[test]
    fn stricter_ignore_values_pass() {
        for ignore in [1, 2, 8] {
            assert!(
                StrictArpStatus::evaluate(&values((ignore, 2)), &[]).ok,
                "{ignore}"
            );
        }
        for ignore in [0, 3, 4, 7, 9, 255] {
            assert!(
                !StrictArpStatus::evaluate(&values((ignore, 2)), &[]).ok,
                "{ignore}"
            );
        }
        for announce in [0, 1, 3] {
            assert!(
                !StrictArpStatus::evaluate(&values((1, announce)), &[]).ok,
                "{announce}"
            );
        }
    }

    #[test]
    fn missing_interface_is_a_problem() {
        let status = StrictArpStatus::evaluate(&values((1, 2)), &["eth9"]);
        assert!(!status.ok);
        assert!(status.problems[0].starts_with("eth9: no /proc/sys/net/ipv4/conf/eth9"));
    }

    #[test]
    fn enforce_raises_only_what_is_loose() {
        assert_eq!(
            enforce_writes(&values((0, 0))),
            vec![
                SysctlWrite {
                    conf: "all".into(),
                    knob: ArpKnob::ArpIgnore,
                    value: 1
                },
                SysctlWrite {
                    conf: "all".into(),
                    knob: ArpKnob::ArpAnnounce,
                    value: 2
                },
            ]
        );
        // 2 and 8 are stricter than 1: never lowered.
        assert!(enforce_writes(&values((2, 2))).is_empty());
        assert!(enforce_writes(&values((8, 2))).is_empty());
        assert_eq!(enforce_writes(&values((8, 1))).len(), 1);
        // 3 is not stricter, it replies for global addresses: replaced.
        assert_eq!(enforce_writes(&values((3, 2)))[0].value, 1);
    }

    #[test]
    fn display_is_the_sysctl_argument() {
        let w = SysctlWrite {
            conf: "all".into(),
            knob: ArpKnob::ArpAnnounce,
            value: 2,
        };
        assert_eq!(w.to_string(), "net.ipv4.conf.all.arp_announce=2");
    }

    fn fake_proc(all: (u8, u8), ifaces: &[(&str, (u8, u8))]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let put = |conf: &str, (ignore, announce): (u8, u8)| {
            let d = dir.path().join(conf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("arp_ignore"), format!("{ignore}\n")).unwrap();
            std::fs::write(d.join("arp_announce"), format!("{announce}\n")).unwrap();
        };
        put("all", all);
        for &(name, own) in ifaces {
            put(name, own);
        }
        dir
    }

    #[test]
    fn read_skips_missing_interfaces_and_rejects_bad_names() {
        let dir = fake_proc((0, 1), &[("eth0", (2, 0))]);
        let conf = Ipv4Conf::at(dir.path());
        let v = conf.read(&["eth0", "eth9"]).unwrap();
        assert_eq!(v, with(values((0, 1)), "eth0", (2, 0)));
        assert!(matches!(
            conf.read(&["../x"]),
            Err(Error::InvalidInterface { .. })
        ));
    }

    #[test]
    fn check_reports_and_enforce_fixes_then_does_nothing() {
        let dir = fake_proc((0, 0), &[("eth0", (0, 0))]);
        let conf = Ipv4Conf::at(dir.path());

        let check = run(StrictArpMode::Check, &conf, &["eth0"]).unwrap();
        assert!(!check.announce_allowed());
        assert!(check.applied.is_empty());

        let first = run(StrictArpMode::Enforce, &conf, &["eth0"]).unwrap();
        assert!(first.status.ok, "{:?}", first.status.problems);
        assert_eq!(first.applied.len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("all/arp_ignore")).unwrap(),
            "1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("all/arp_announce")).unwrap(),
            "2\n"
        );

        let second = run(StrictArpMode::Enforce, &conf, &["eth0"]).unwrap();
        assert!(second.status.ok);
        assert!(second.applied.is_empty());
    }

    #[test]
    fn off_allows_announcing_without_reading() {
        let conf = Ipv4Conf::at("/nonexistent/ironlb");
        let report = run(StrictArpMode::Off, &conf, &["eth0"]).unwrap();
        assert!(report.announce_allowed());
        assert!(matches!(
            run(StrictArpMode::Check, &conf, &["eth0"]),
            Err(Error::Read { .. })
        ));
    }

    #[test]
    fn metrics_follow_the_report() {
        let mut registry = Registry::default();
        let metrics = StrictArpMetrics::register(&mut registry);
        metrics.record(&StrictArpReport {
            mode: StrictArpMode::Check,
            status: StrictArpStatus {
                ok: false,
                problems: vec!["a".into(), "b".into()],
            },
            applied: vec![],
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("ironlb_strict_arp_ok 0"), "{text}");
        assert!(text.contains("ironlb_strict_arp_problems 2"), "{text}");
    }
}
