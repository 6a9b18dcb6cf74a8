//! IronLB's BFD sessions against FRR's bfdd, over a veth pair between two network namespaces (192.0.2.2, IronLB;
//! 192.0.2.3, bfdd, single hop, 300 ms both ways, multiplier 3). The session comes up on both sides, the intervals
//! are the profile's, and a cut link takes both sides Down within the detection time (900 ms), measured on
//! IronLB's side and read from bfdd's. Needs root and FRR (scripts/setup); namespaces and daemons are removed on
//! drop, also on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ironlb::bfd::codec::BfdState;
use ironlb::bfd::fsm::Profile;
use ironlb::bfd::transport::{Bfd, BfdPeer, wait_for};
use ironlb::lab::netns::in_netns;

struct Pair {
    a: String,
    b: String,
    dir: tempfile::TempDir,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for name in ["bfdd", "zebra"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(format!("{name}.pid"))) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?}: {status}");
}

fn skip() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: needs root to create network namespaces");
        return true;
    }
    if !Path::new("/usr/lib/frr/bfdd").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "FRR's bfdd is missing (scripts/setup installs frr)"
        );
        println!("skipped: FRR's bfdd is not installed");
        return true;
    }
    false
}

fn vtysh(dir: &Path, command: &str) -> String {
    let out = Command::new("vtysh")
        .arg("--vty_socket")
        .arg(dir)
        .args(["-c", command])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bfdd_peer(dir: &Path) -> serde_json::Value {
    let text = vtysh(dir, "show bfd peers json");
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.as_array()?.first().cloned())
        .unwrap_or_default()
}

fn setup() -> Pair {
    let id = std::process::id();
    let pair = Pair {
        a: format!("ilb-bfd-a-{id}"),
        b: format!("ilb-bfd-b-{id}"),
        dir: tempfile::tempdir().unwrap(),
    };
    let (a, b) = (pair.a.as_str(), pair.b.as_str());
    sh(&["ip", "netns", "add", a]);
    sh(&["ip", "netns", "add", b]);
    sh(&["ip", "-n", a, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", b, "link", "set", "lo", "up"]);
    sh(&[
        "ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
    ]);
    sh(&["ip", "-n", a, "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    sh(&["ip", "-n", b, "addr", "add", "192.0.2.3/24", "dev", "eth0"]);
    sh(&["ip", "-n", a, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", b, "link", "set", "eth0", "up"]);
    let dir: PathBuf = pair.dir.path().to_path_buf();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(
        dir.join("bfdd.conf"),
        "bfd\n peer 192.0.2.2 local-address 192.0.2.3\n  receive-interval 300\n  transmit-interval 300\n  \
         detect-multiplier 3\n !\n!\n",
    )
    .unwrap();
    for daemon in ["zebra", "bfdd"] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", b])
            .arg(format!("/usr/lib/frr/{daemon}"))
            .args(["-d", "--vty_socket"])
            .arg(&dir)
            .arg("-i")
            .arg(dir.join(format!("{daemon}.pid")))
            .arg("-z")
            .arg(dir.join("zserv.api"));
        if daemon == "bfdd" {
            cmd.arg("-f").arg(dir.join("bfdd.conf"));
        }
        assert!(cmd.status().unwrap().success(), "{daemon} did not start");
    }
    pair
}

#[test]
fn session_with_frr_bfdd_comes_up_and_a_cut_link_takes_both_sides_down() {
    if skip() {
        return;
    }
    let pair = setup();
    let a = pair.a.clone();
    // IronLB's side runs in its own runtime on a thread inside namespace a, where its sockets are made.
    let (up_after, timers, down_after) = in_netns(&a.clone(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut bfd = Bfd::start().unwrap();
            let link = bfd
                .session(BfdPeer {
                    peer: "192.0.2.3".parse().unwrap(),
                    local: Some("192.0.2.2".parse().unwrap()),
                    multihop: false,
                    minimum_ttl: 254,
                    profile: Profile::default(),
                })
                .unwrap();
            let start = Instant::now();
            assert!(
                wait_for(&link, BfdState::Up, Duration::from_secs(15)).await,
                "not Up within 15 s: {:?}",
                *link.status().borrow()
            );
            let up_after = start.elapsed();
            // The Poll to 300 ms completes within a few packets.
            let mut status = link.status();
            let timers = tokio::time::timeout(
                Duration::from_secs(5),
                status.wait_for(|s| {
                    s.timers
                        .is_some_and(|t| t.transmit == Duration::from_millis(300))
                }),
            )
            .await
            .ok()
            .and_then(|s| s.ok().map(|s| s.timers));
            // Cut the link from this side.
            let cut = Command::new("ip")
                .args(["link", "set", "eth0", "down"])
                .status()
                .unwrap();
            assert!(cut.success());
            let cut_at = Instant::now();
            assert!(
                wait_for(&link, BfdState::Down, Duration::from_secs(5)).await,
                "not Down within 5 s of the cut"
            );
            (up_after, timers.flatten(), cut_at.elapsed())
        })
    })
    .unwrap();
    println!(
        "IronLB's session with bfdd: Up after {} ms; timers {timers:?}; Down {} ms after the link was cut",
        up_after.as_millis(),
        down_after.as_millis()
    );
    let timers = timers.expect("the intervals never reached 300 ms");
    assert_eq!(timers.transmit, Duration::from_millis(300));
    assert_eq!(timers.detection, Duration::from_millis(900));
    assert!(
        down_after <= Duration::from_millis(900) + Duration::from_millis(100),
        "Down {down_after:?} after the cut, detection time 900 ms"
    );
    // bfdd's side: it saw the session Up with IronLB's intervals, and now Down.
    let dir = pair.dir.path();
    let deadline = Instant::now() + Duration::from_secs(5);
    let peer = loop {
        let peer = bfdd_peer(dir);
        if peer["status"] == "down" || Instant::now() > deadline {
            break peer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(peer["status"], "down", "bfdd's view: {peer:#}");
    assert_eq!(
        peer["diagnostic"], "control detection time expired",
        "{peer:#}"
    );
    assert_eq!(peer["remote-receive-interval"], 300, "{peer:#}");
    assert_eq!(peer["remote-transmit-interval"], 300, "{peer:#}");
    assert_eq!(peer["remote-detect-multiplier"], 3, "{peer:#}");
}
