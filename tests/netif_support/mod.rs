//! Shared by the netns and VM tiers of `netif`: throwaway network namespaces, entered from a thread.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace named `ilb-netif-<pid>-<n>`, deleted on drop (also when the test panics).
pub struct Netns {
    pub at: NsRef,
}

/// The name of a namespace, for use inside it; the [`Netns`] guard owns its lifetime.
#[derive(Clone)]
pub struct NsRef {
    pub name: String,
}

impl std::ops::Deref for Netns {
    type Target = NsRef;
    fn deref(&self) -> &NsRef {
        &self.at
    }
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "ilb-netif-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Netns { at: NsRef { name } }
    }
}

impl NsRef {
    /// `ip -n <ns> args...`; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The addresses on `dev` as `ip -j addr show` reports them, without IPv6 link-local ones.
    pub fn addresses(&self, dev: &str) -> BTreeSet<IpNet> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ip(&["-j", "addr", "show", "dev", dev])).unwrap();
        json[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let ip: IpAddr = a["local"].as_str().unwrap().parse().unwrap();
                IpNet::new(ip, a["prefixlen"].as_u64().unwrap() as u8).unwrap()
            })
            .filter(|n| !matches!(n, IpNet::V6(v6) if v6.addr().is_unicast_link_local()))
            .collect()
    }

    /// Runs `body` on a thread that has entered this namespace, on a current-thread runtime, so that every rtnetlink
    /// socket and every procfs open of the body belongs to the namespace. Refuses to run if the thread is not
    /// provably inside it, so a failed `setns` cannot touch the host.
    pub fn enter<F, Fut, T>(&self, body: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ours = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            assert_eq!(
                ours,
                ns.metadata().unwrap().ino(),
                "thread is not in {path}"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Bounded: nothing in these bodies should take more than a few hundred milliseconds.
                tokio::time::timeout(Duration::from_secs(60), body())
                    .await
                    .expect("test body timed out")
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes every link in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn is_root() -> bool {
    // The effective uid is the second field of `Uid:` in /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid == Some("0") {
        return true;
    }
    eprintln!("skipped: netns tests need root");
    false
}

/// A handle on the calling thread's network namespace.
pub fn handle() -> rtnetlink::Handle {
    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    handle
}

pub fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

pub fn nets(v: &[&str]) -> BTreeSet<IpNet> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
