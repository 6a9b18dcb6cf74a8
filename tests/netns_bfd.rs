//! IronLB's BFD sessions against FRR's bfdd and BIRD's BFD, over a veth pair between two network namespaces
//! (192.0.2.2, IronLB; 192.0.2.3, the daemon; single hop). The session comes up on both sides, the intervals are
//! the ones the profiles negotiate, and a cut link takes both sides Down within the detection time, measured on
//! IronLB's side and read from the daemon's. Needs root, FRR and BIRD (scripts/setup); namespaces and daemons are
//! removed on drop, also on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ironlb::bfd::codec::BfdState;
use ironlb::bfd::fsm::BfdTimers;
use ironlb::bfd::fsm::Profile;
use ironlb::bfd::transport::{Bfd, BfdPeer, wait_for};
use ironlb::lab::bgp::{RouterBfdSession, parse_bird_bfd};
use ironlb::lab::netns::in_netns;

struct Pair {
    a: String,
    b: String,
    dir: tempfile::TempDir,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for name in ["bfdd", "zebra", "bird"] {
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

fn skip_bird() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: needs root to create network namespaces");
        return true;
    }
    if Command::new("bird").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "BIRD is missing (scripts/setup installs bird2)"
        );
        println!("skipped: BIRD is not installed");
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

/// Two namespaces joined by a veth pair: IronLB's side `a` (192.0.2.2), the daemon's side `b` (192.0.2.3).
/// `tag` tells apart the tests of this file, which run at the same time in one process.
fn namespaces(tag: &str) -> Pair {
    let id = std::process::id();
    let pair = Pair {
        a: format!("ilb-bfd{tag}-a-{id}"),
        b: format!("ilb-bfd{tag}-b-{id}"),
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
    std::fs::set_permissions(
        pair.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    pair
}

/// The namespaces, with FRR's zebra and bfdd in `b` expecting 192.0.2.2 at 300 ms both ways, multiplier 3.
fn setup() -> Pair {
    let pair = namespaces("f");
    start_bfdd(pair, "peer 192.0.2.2 local-address 192.0.2.3")
}

/// Starts FRR's zebra and bfdd in `pair.b` with one peer (`peer`, bfdd's line for it) at 300 ms both ways,
/// multiplier 3.
fn start_bfdd(pair: Pair, peer: &str) -> Pair {
    let dir: PathBuf = pair.dir.path().to_path_buf();
    std::fs::write(
        dir.join("bfdd.conf"),
        format!(
            "bfd\n {peer}\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n !\n!\n"
        ),
    )
    .unwrap();
    for daemon in ["zebra", "bfdd"] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.b])
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

/// Runs the future `f` makes on a single-threaded runtime, in a thread inside namespace `ns` (sockets belong to the
/// namespace of the thread that opens them).
fn on_runtime_in<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    in_netns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .unwrap()
}

/// What IronLB's side saw: how long until Up, the timers once they reached `transmit`, and how long after the cut
/// it went Down.
struct Seen {
    up_after: Duration,
    timers: Option<BfdTimers>,
    down_after: Duration,
}

/// IronLB's side of the single-hop session to 192.0.2.3 with `profile`.
fn numbered(profile: Profile) -> BfdPeer {
    BfdPeer {
        peer: "192.0.2.3".parse().unwrap(),
        local: Some("192.0.2.2".parse().unwrap()),
        multihop: false,
        interface: None,
        minimum_ttl: 254,
        profile,
        vrf: None,
    }
}

/// Runs IronLB's side of `peer` in namespace `a`: waits for Up and for the transmit interval to reach `transmit`,
/// then cuts the link from this side and waits for Down.
fn ironlb_side(a: &str, peer: BfdPeer, transmit: Duration) -> Seen {
    on_runtime_in(a, move || async move {
        let mut bfd = Bfd::start().unwrap();
        let link = bfd.session(peer).unwrap();
        let start = Instant::now();
        assert!(
            wait_for(&link, BfdState::Up, Duration::from_secs(15)).await,
            "not Up within 15 s: {:?}",
            *link.status().borrow()
        );
        let up_after = start.elapsed();
        // The Poll to the profile's intervals completes within a few packets.
        let mut status = link.status();
        let timers = tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| s.timers.is_some_and(|t| t.transmit == transmit)),
        )
        .await
        .ok()
        .and_then(|s| s.ok().map(|s| s.timers));
        // Hold the settled session a moment, for a watcher of the daemon's side to read it, then cut the link from
        // this side.
        tokio::time::sleep(Duration::from_millis(300)).await;
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
        Seen {
            up_after,
            timers: timers.flatten(),
            down_after: cut_at.elapsed(),
        }
    })
}

#[test]
fn session_with_frr_bfdd_comes_up_and_a_cut_link_takes_both_sides_down() {
    if skip() {
        return;
    }
    let pair = setup();
    let seen = ironlb_side(
        &pair.a,
        numbered(Profile::default()),
        Duration::from_millis(300),
    );
    println!(
        "IronLB's session with bfdd: Up after {} ms; timers {:?}; Down {} ms after the link was cut",
        seen.up_after.as_millis(),
        seen.timers,
        seen.down_after.as_millis()
    );
    let timers = seen.timers.expect("the intervals never reached 300 ms");
    assert_eq!(timers.transmit, Duration::from_millis(300));
    assert_eq!(timers.detection, Duration::from_millis(900));
    assert!(
        seen.down_after <= Duration::from_millis(900) + Duration::from_millis(100),
        "Down {:?} after the cut, detection time 900 ms",
        seen.down_after
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

/// BFD beside an unnumbered BGP peer: between the link-local addresses of the link (IronLB fe80::2, bfdd fe80::3,
/// the only ones there), sent on the named interface, as the agent runs it once the router is heard there.
#[test]
fn session_to_a_link_local_peer_on_an_interface_with_frr_bfdd() {
    if skip() {
        return;
    }
    let pair = namespaces("u");
    for (ns, ll) in [(&pair.a, "fe80::2/64"), (&pair.b, "fe80::3/64")] {
        sh(&[
            "ip", "-n", ns, "-6", "addr", "flush", "dev", "eth0", "scope", "link",
        ]);
        sh(&["ip", "-n", ns, "addr", "add", ll, "dev", "eth0", "nodad"]);
    }
    let pair = start_bfdd(pair, "peer fe80::2 interface eth0");
    let peer = BfdPeer {
        peer: "fe80::3".parse().unwrap(),
        local: None,
        interface: Some("eth0".into()),
        ..numbered(Profile::default())
    };
    let seen = ironlb_side(&pair.a, peer, Duration::from_millis(300));
    println!(
        "link-local session with bfdd: Up after {} ms; timers {:?}; Down {} ms after the cut",
        seen.up_after.as_millis(),
        seen.timers,
        seen.down_after.as_millis()
    );
    assert_eq!(
        seen.timers.map(|t| t.detection),
        Some(Duration::from_millis(900))
    );
    assert!(
        seen.down_after <= Duration::from_millis(1000),
        "{:?}",
        seen.down_after
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let peer = loop {
        let peer = bfdd_peer(pair.dir.path());
        if peer["status"] == "down" || Instant::now() > deadline {
            break peer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(peer["status"], "down", "bfdd's view: {peer:#}");
    assert_eq!(peer["peer"], "fe80::2", "{peer:#}");
    assert_eq!(peer["remote-receive-interval"], 300, "{peer:#}");
}

/// RFC 5882 section 3.2: bfdd taking the session administratively down takes IronLB's side Down without counting
/// a failure (the count is what resets the BGP session), and the session comes back when bfdd lets it; a real
/// failure after that is counted.
#[test]
fn a_peer_taking_the_session_administratively_down_is_not_a_failure() {
    if skip() {
        return;
    }
    let pair = start_bfdd(namespaces("s"), "peer 192.0.2.2 local-address 192.0.2.3");
    let dir = pair.dir.path().to_path_buf();
    let b = pair.b.clone();
    let admin = move |shutdown: bool| {
        let no = if shutdown { "" } else { "no " };
        let out = Command::new("ip")
            .args(["netns", "exec", &b, "vtysh", "--vty_socket"])
            .arg(&dir)
            .args(["-c", "configure terminal", "-c", "bfd"])
            .args(["-c", "peer 192.0.2.2 local-address 192.0.2.3"])
            .args(["-c", &format!("{no}shutdown")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let seen = on_runtime_in(&pair.a, move || async move {
        let mut bfd = Bfd::start().unwrap();
        let link = bfd.session(numbered(Profile::default())).unwrap();
        let limit = Duration::from_secs(15);
        assert!(wait_for(&link, BfdState::Up, limit).await, "never Up");
        admin(true);
        assert!(
            wait_for(&link, BfdState::Down, limit).await,
            "not Down after bfdd's shutdown"
        );
        let after_admin = link.status().borrow().clone();
        admin(false);
        assert!(
            wait_for(&link, BfdState::Up, limit).await,
            "not Up again after no shutdown"
        );
        let cut = Command::new("ip")
            .args(["link", "set", "eth0", "down"])
            .status()
            .unwrap();
        assert!(cut.success());
        assert!(
            wait_for(&link, BfdState::Down, limit).await,
            "not Down after the cut"
        );
        let after_cut = link.status().borrow().clone();
        (after_admin, after_cut)
    });
    let (after_admin, after_cut) = seen;
    assert_eq!(
        after_admin.diag,
        ironlb::bfd::codec::Diag::NeighborSignaledDown,
        "{after_admin:?}"
    );
    assert_eq!(
        after_admin.downs, 0,
        "an administrative down counted as a failure: {after_admin:?}"
    );
    assert_eq!(after_cut.downs, 1, "the cut is a failure: {after_cut:?}");
}

/// The Echo function against FRR's bfdd, both sides in echo mode at 50 ms with IPv4 forwarding on (each side's
/// echo packets are looped back by the other's forwarding plane): IronLB's echoes come back, bfdd's too, and when
/// the router stops forwarding IronLB's echoes (control packets still flowing) IronLB's session goes Down with
/// diag 2, Echo Function Failed, within 3 × 50 ms, far sooner than its 900 ms control detection time.
#[test]
fn echo_function_with_frr_bfdd() {
    if skip() {
        return;
    }
    let pair = namespaces("e");
    for ns in [&pair.a, &pair.b] {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }
    let pair = start_bfdd(
        pair,
        "peer 192.0.2.2 local-address 192.0.2.3\n  echo-mode\n  echo transmit-interval 50\n  echo receive-interval 50",
    );
    let dir = pair.dir.path().to_path_buf();
    let b = pair.b.clone();
    let profile = Profile {
        echo_receive_interval: Duration::from_millis(50),
        echo_transmit_interval: Duration::from_millis(50),
        ..Profile::default()
    };
    let seen = on_runtime_in(&pair.a, move || async move {
        let mut bfd = Bfd::start().unwrap();
        let link = bfd.session(numbered(profile)).unwrap();
        let limit = Duration::from_secs(15);
        assert!(wait_for(&link, BfdState::Up, limit).await, "never Up");
        let mut status = link.status();
        // A bool at once: a held `Ref` would block the session's next status update.
        let echoed = tokio::time::timeout(limit, status.wait_for(|s| s.echoes >= 20))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            echoed,
            "IronLB's echo packets did not come back: {:?}",
            *link.status().borrow()
        );
        let frr = vtysh(
            &dir,
            "show bfd peer 192.0.2.2 local-address 192.0.2.3 counters json",
        );
        // The router stops forwarding IronLB's echo packets; control packets still pass.
        for rule in [
            "add table inet ilb_echo",
            "add chain inet ilb_echo f { type filter hook forward priority 0 ; }",
            "add rule inet ilb_echo f udp dport 3785 ip saddr 192.0.2.2 drop",
        ] {
            sh(&["ip", "netns", "exec", &b, "nft", rule]);
        }
        let cut = std::time::Instant::now();
        assert!(
            wait_for(&link, BfdState::Down, Duration::from_secs(5)).await,
            "still Up with its echoes dropped"
        );
        (frr, link.status().borrow().clone(), cut.elapsed())
    });
    let (frr, down, after) = seen;
    println!(
        "echo: bfdd's counters {frr}; IronLB Down {} ms after its echoes were dropped",
        after.as_millis()
    );
    let counters: serde_json::Value = serde_json::from_str(&frr).unwrap_or_default();
    assert!(
        counters["echo-packet-output"].as_u64().unwrap_or(0) > 0
            && counters["echo-packet-input"].as_u64().unwrap_or(0) > 0,
        "bfdd's echo packets did not come back through IronLB's node: {frr}"
    );
    assert_eq!(down.diag, ironlb::bfd::codec::Diag::EchoFailed, "{down:?}");
    assert!(
        after < Duration::from_millis(400),
        "Down only {after:?} after the echoes stopped"
    );
}

/// BIRD's side as `birdc show bfd sessions` prints it for 192.0.2.2.
fn bird_session(dir: &Path) -> Option<RouterBfdSession> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .args(["show", "bfd", "sessions"])
        .output()
        .ok()?;
    parse_bird_bfd(&String::from_utf8_lossy(&out.stdout))
        .ok()?
        .into_iter()
        .find(|s| s.peer.to_string() == "192.0.2.2")
}

/// Against BIRD's BFD, with intervals that differ on the two sides: BIRD asks for 100 ms and a multiplier of 3,
/// IronLB's profile for 250 ms and 4. Each side sends at the slower of its own wish and the other's requirement
/// (250 ms both ways) and waits its peer's multiplier times that: IronLB 750 ms, BIRD 1 s. A cut link takes both
/// Down.
#[test]
fn session_with_bird_negotiates_the_profiles_intervals_and_a_cut_link_takes_both_sides_down() {
    if skip_bird() {
        return;
    }
    let pair = namespaces("b");
    let dir = pair.dir.path().to_path_buf();
    std::fs::write(
        dir.join("bird.conf"),
        "router id 192.0.2.3;\nprotocol device { scan time 10; }\nprotocol bfd {\n  interface \"*\" { min rx \
         interval 100 ms; min tx interval 100 ms; multiplier 3; };\n  neighbor 192.0.2.2 local 192.0.2.3;\n}\n",
    )
    .unwrap();
    let status = Command::new("ip")
        .args(["netns", "exec", &pair.b, "bird", "-c"])
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .status()
        .unwrap();
    assert!(status.success(), "bird did not start");
    let profile = Profile {
        transmit_interval: Duration::from_millis(250),
        receive_interval: Duration::from_millis(250),
        detect_mult: 4,
        ..Profile::default()
    };
    // BIRD's view while Up, read from a thread beside IronLB's side before the cut.
    let watcher = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let session = bird_session(&dir);
                let settled = session.as_ref().is_some_and(|s| {
                    // BIRD's detection time follows IronLB's Poll, which may come a packet after its transmit
                    // interval settled (that follows IronLB's required interval, known from the start).
                    s.is_up()
                        && s.transmit == Duration::from_millis(250)
                        && s.detection == Duration::from_secs(1)
                });
                if settled || Instant::now() > deadline {
                    return session;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // IronLB's side holds the session Up long enough for the watcher to read it: it cuts only once the timers have
    // settled, and BIRD's view settles at the same Poll.
    let seen = ironlb_side(&pair.a, numbered(profile), Duration::from_millis(250));
    let bird_up = watcher.join().unwrap();
    println!(
        "IronLB's session with BIRD: Up after {} ms; timers {:?}; Down {} ms after the link was cut; BIRD while Up: \
         {bird_up:?}",
        seen.up_after.as_millis(),
        seen.timers,
        seen.down_after.as_millis()
    );
    let timers = seen.timers.expect("the intervals never reached 250 ms");
    assert_eq!(timers.transmit, Duration::from_millis(250));
    assert_eq!(timers.detection, Duration::from_millis(750));
    assert!(
        seen.down_after <= Duration::from_millis(750) + Duration::from_millis(100),
        "Down {:?} after the cut, detection time 750 ms",
        seen.down_after
    );
    let bird_up = bird_up.expect("BIRD lists no session to 192.0.2.2");
    assert!(bird_up.is_up(), "BIRD's view: {bird_up:?}");
    assert_eq!(bird_up.transmit, Duration::from_millis(250), "{bird_up:?}");
    assert_eq!(bird_up.detection, Duration::from_secs(1), "{bird_up:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let session = bird_session(&dir);
        if session.as_ref().is_some_and(|s| !s.is_up()) || Instant::now() > deadline {
            break session;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        after.as_ref().is_some_and(|s| s.state == "down"),
        "BIRD's view after the cut: {after:?}"
    );
}
