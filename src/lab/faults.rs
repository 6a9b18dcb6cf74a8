//! What a client on the lab's LAN sees while a fault scenario runs: who answers ARP for each VIP, and whether TCP
//! connects to it succeed. The fault-scenario tests and the `faults_lab` benchmark read their figures from here.
//!
//! Both observers run on their own thread with sockets opened in the client namespace, so they keep sampling while
//! the test kills agents, cuts links or blocks the API:
//!
//! ```text
//!   ArpWatch: every period, one ARP request per VIP ──▶ bridge ──▶ nodes
//!             every ARP reply or gratuitous announcement of a VIP ◀── whichever node claims it   → ArpLog
//!   TcpWatch: every period, one connect per VIP (bounded timeout), the responder's "hello from node-N"  → TcpLog
//! ```
//!
//! The analysis is pure ([`summarize_arp`], [`summarize_tcp`]) and unit-tested. Nothing here asserts timing: the
//! callers print the summaries and assert only what must hold (one owner at the end, no unanswered stretch beyond a
//! generous bound).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnet::datalink::{self, Channel, ChannelType};

use super::cluster::{DEMO_PORT, Error, Lab, Result};
use super::netns::in_netns;
use super::topology::{CLIENT_V4, UPLINK};
use crate::arp::codec::{ArpOp, ArpPacket, Frame, MacAddr};

const ETHERTYPE_ARP: u16 = 0x0806;

/// One probe round of an [`ArpWatch`]: when the requests went out, and for each VIP the MACs that answered or
/// announced it before the next round.
#[derive(Clone, Debug, Default)]
pub struct ArpRound {
    pub at: Duration,
    pub answers: BTreeMap<Ipv4Addr, BTreeSet<String>>,
}

/// Everything an [`ArpWatch`] saw.
#[derive(Clone, Debug, Default)]
pub struct ArpLog {
    pub period: Duration,
    pub rounds: Vec<ArpRound>,
}

/// What one VIP looked like over a stretch of rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArpSummary {
    pub rounds: usize,
    /// Rounds in which nobody answered.
    pub unanswered: usize,
    /// The longest run of unanswered rounds, as time (rounds × period).
    pub longest_unanswered: Duration,
    /// Rounds in which two or more MACs answered or announced the VIP.
    pub split_rounds: usize,
    /// Split-brain time: split rounds × period.
    pub split_brain: Duration,
    /// From the first split round to the last one (zero if none).
    pub split_span: Duration,
    /// The longest run of consecutive split rounds: one overlap, where `split_rounds` adds up several.
    pub longest_split: usize,
    /// The succession of sole answerers, with repeats collapsed: `[a, b, a]` is two flaps.
    pub owners: Vec<String>,
    /// Changes of sole answerer: `owners.len() - 1`.
    pub flaps: usize,
}

impl ArpLog {
    /// The rounds whose requests went out within `[from, to)` of the watch's start.
    pub fn between(&self, from: Duration, to: Duration) -> Vec<&ArpRound> {
        self.rounds
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .collect()
    }

    pub fn summary(&self, vip: Ipv4Addr, from: Duration, to: Duration) -> ArpSummary {
        let sets: Vec<BTreeSet<String>> = self
            .between(from, to)
            .into_iter()
            .map(|r| r.answers.get(&vip).cloned().unwrap_or_default())
            .collect();
        summarize_arp(&sets, self.period)
    }

    /// The MACs that answered for `vip` in the last `n` rounds.
    pub fn last_answerers(&self, vip: Ipv4Addr, n: usize) -> BTreeSet<String> {
        self.rounds
            .iter()
            .rev()
            .take(n)
            .flat_map(|r| r.answers.get(&vip).cloned().unwrap_or_default())
            .collect()
    }
}

/// Summarizes one VIP's answerer sets, one per round of `period`.
pub fn summarize_arp(rounds: &[BTreeSet<String>], period: Duration) -> ArpSummary {
    let mut s = ArpSummary {
        rounds: rounds.len(),
        ..Default::default()
    };
    let mut run = 0u32;
    let mut longest = 0u32;
    let mut split_run = 0usize;
    let mut first_split = None;
    let mut last_split = 0;
    for (i, macs) in rounds.iter().enumerate() {
        if macs.len() > 1 {
            split_run += 1;
            s.longest_split = s.longest_split.max(split_run);
        } else {
            split_run = 0;
        }
        if macs.is_empty() {
            s.unanswered += 1;
            run += 1;
            longest = longest.max(run);
            continue;
        }
        run = 0;
        if macs.len() > 1 {
            s.split_rounds += 1;
            first_split.get_or_insert(i);
            last_split = i;
            continue;
        }
        let mac = macs.iter().next().cloned().unwrap_or_default();
        if s.owners.last() != Some(&mac) {
            s.owners.push(mac);
        }
    }
    s.longest_unanswered = period * longest;
    s.split_brain = period * s.split_rounds as u32;
    s.split_span = first_split
        .map(|f| period * (last_split - f + 1) as u32)
        .unwrap_or_default();
    s.flaps = s.owners.len().saturating_sub(1);
    s
}

/// Asks the LAN, from the client, who has each VIP, every `period`, and records every answer and announcement.
pub struct ArpWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ArpLog>>,
    started: Instant,
}

impl ArpWatch {
    pub fn start(lab: &Lab, vips: Vec<Ipv4Addr>, period: Duration) -> Result<ArpWatch> {
        let (mut tx, mut rx, mac) = in_netns(
            &lab.topology.client,
            || -> std::result::Result<_, String> {
                let iface = datalink::interfaces()
                    .into_iter()
                    .find(|i| i.name == UPLINK)
                    .ok_or_else(|| format!("no {UPLINK} in the client namespace"))?;
                let mac = MacAddr(iface.mac.ok_or("the client uplink has no MAC")?.octets());
                let tx = match datalink::channel(&iface, datalink::Config::default()) {
                    Ok(Channel::Ethernet(tx, _)) => tx,
                    Ok(_) => return Err("unexpected channel type".into()),
                    Err(e) => return Err(format!("send socket on {UPLINK}: {e}")),
                };
                let config = datalink::Config {
                    channel_type: ChannelType::Layer3(ETHERTYPE_ARP),
                    read_timeout: Some(Duration::from_millis(5)),
                    ..Default::default()
                };
                let rx = match datalink::channel(&iface, config) {
                    Ok(Channel::Ethernet(_, rx)) => rx,
                    Ok(_) => return Err("unexpected channel type".into()),
                    Err(e) => return Err(format!("receive socket on {UPLINK}: {e}")),
                };
                Ok((tx, rx, mac))
            },
        )?
        .map_err(Error::Setup)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let requests: Vec<(Ipv4Addr, Vec<u8>)> = vips
            .iter()
            .map(|vip| {
                let frame = Frame::Arp(ArpPacket {
                    eth_dst: MacAddr::BROADCAST,
                    eth_src: mac,
                    op: ArpOp::Request,
                    sender_mac: mac,
                    sender_ip: CLIENT_V4,
                    target_mac: MacAddr::ZERO,
                    target_ip: *vip,
                });
                (*vip, frame.encode())
            })
            .collect();
        let thread = std::thread::spawn(move || {
            let mut log = ArpLog {
                period,
                rounds: Vec::new(),
            };
            let mut next = started;
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    log.rounds.push(ArpRound {
                        at: started.elapsed(),
                        answers: BTreeMap::new(),
                    });
                    for (_, frame) in &requests {
                        let _ = tx.send_to(frame, None);
                    }
                    next += period;
                }
                let Ok(payload) = rx.next() else { continue };
                let Some(arp) = decode_arp(payload) else {
                    continue;
                };
                if arp.sender_mac == mac || !vips.contains(&arp.sender_ip) {
                    continue;
                }
                // A reply, or a gratuitous announcement: either way that station claims the VIP.
                if (arp.op == ArpOp::Reply || arp.is_gratuitous())
                    && let Some(round) = log.rounds.last_mut()
                {
                    round
                        .answers
                        .entry(arp.sender_ip)
                        .or_default()
                        .insert(arp.sender_mac.to_string());
                }
            }
            log
        });
        Ok(ArpWatch {
            stop,
            thread: Some(thread),
            started,
        })
    }

    /// Time since the watch started, on the same clock as [`ArpRound::at`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(mut self) -> ArpLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ArpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An ARP-only datagram socket delivers the ARP packet without its Ethernet header; give it a neutral one so the
/// project's codec can decode it.
fn decode_arp(payload: &[u8]) -> Option<ArpPacket> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(payload);
    match Frame::decode(&frame) {
        Ok(Frame::Arp(arp)) => Some(arp),
        _ => None,
    }
}

/// One TCP connect attempt of a [`TcpWatch`]: when it started, and the node that answered or the error.
#[derive(Clone, Debug)]
pub struct TcpAttempt {
    pub at: Duration,
    pub vip: IpAddr,
    pub outcome: std::result::Result<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct TcpLog {
    pub attempts: Vec<TcpAttempt>,
}

/// What one VIP's TCP connects looked like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpSummary {
    pub attempts: usize,
    pub failures: usize,
    /// The longest outage: from the first failed attempt of a streak to the next successful one (or to the last
    /// attempt, if none succeeded after it).
    pub longest_outage: Duration,
    /// The succession of answering nodes, repeats collapsed.
    pub answered_by: Vec<String>,
}

impl TcpLog {
    pub fn summary(&self, vip: IpAddr, from: Duration, to: Duration) -> TcpSummary {
        let attempts: Vec<(Duration, Option<&str>)> = self
            .attempts
            .iter()
            .filter(|a| a.vip == vip && a.at >= from && a.at < to)
            .map(|a| (a.at, a.outcome.as_deref().ok()))
            .collect();
        summarize_tcp(&attempts)
    }

    /// The first few failures, for messages.
    pub fn failures(&self, vip: IpAddr, n: usize) -> Vec<&TcpAttempt> {
        self.attempts
            .iter()
            .filter(|a| a.vip == vip && a.outcome.is_err())
            .take(n)
            .collect()
    }
}

/// Summarizes attempts in time order: `(started at, Some(answering node) or None for a failure)`.
pub fn summarize_tcp(attempts: &[(Duration, Option<&str>)]) -> TcpSummary {
    let mut s = TcpSummary {
        attempts: attempts.len(),
        ..Default::default()
    };
    let mut streak_start: Option<Duration> = None;
    for (at, outcome) in attempts {
        match outcome {
            None => {
                s.failures += 1;
                streak_start.get_or_insert(*at);
            }
            Some(node) => {
                if let Some(start) = streak_start.take() {
                    s.longest_outage = s.longest_outage.max(*at - start);
                }
                if s.answered_by.last().map(String::as_str) != Some(*node) {
                    s.answered_by.push(node.to_string());
                }
            }
        }
    }
    if let (Some(start), Some((last, _))) = (streak_start, attempts.last()) {
        s.longest_outage = s.longest_outage.max(*last - start);
    }
    s
}

/// Connects from the client to each VIP's demo port every `period`, each attempt bounded by `timeout`.
pub struct TcpWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<TcpLog>>,
    started: Instant,
}

impl TcpWatch {
    pub fn start(
        lab: &Lab,
        vips: Vec<IpAddr>,
        period: Duration,
        timeout: Duration,
    ) -> Result<TcpWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        // The thread is spawned from inside the client namespace, so it (and every socket it opens) lives there.
        let thread = in_netns(&lab.topology.client, move || {
            std::thread::spawn(move || {
                let mut log = TcpLog::default();
                let mut next = started;
                while !flag.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(20)));
                        continue;
                    }
                    next += period;
                    for vip in &vips {
                        let at = started.elapsed();
                        let outcome = connect_once(SocketAddr::new(*vip, DEMO_PORT), timeout);
                        log.attempts.push(TcpAttempt {
                            at,
                            vip: *vip,
                            outcome,
                        });
                    }
                }
                log
            })
        })?;
        Ok(TcpWatch {
            stop,
            thread: Some(thread),
            started,
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(mut self) -> TcpLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for TcpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect_once(addr: SocketAddr, timeout: Duration) -> std::result::Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let text = text.trim();
    match text.strip_prefix("hello from ") {
        Some(node) => Ok(node.to_string()),
        None => Err(format!("unexpected reply {text:?}")),
    }
}

/// The resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The value of an unlabelled counter or gauge in Prometheus text (`name value` or `name_total value`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name || key == format!("{name}_total"))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(macs: &[&str]) -> BTreeSet<String> {
        macs.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn arp_rounds_give_flaps_split_brain_and_gaps() {
        let ms = Duration::from_millis;
        let rounds = vec![
            set(&["a"]),
            set(&["a"]),
            set(&[]),
            set(&[]),
            set(&[]),
            set(&["b"]),
            set(&["a", "b"]),
            set(&["a", "b"]),
            set(&["a"]),
            set(&[]),
            set(&["a"]),
        ];
        let s = summarize_arp(&rounds, ms(100));
        assert_eq!(s.rounds, 11);
        assert_eq!(s.unanswered, 4);
        assert_eq!(s.longest_unanswered, ms(300));
        assert_eq!(s.split_rounds, 2);
        assert_eq!(s.split_brain, ms(200));
        assert_eq!(s.split_span, ms(200));
        assert_eq!(s.longest_split, 2);
        assert_eq!(s.owners, vec!["a", "b", "a"]);
        assert_eq!(s.flaps, 2);
    }

    #[test]
    fn a_steady_owner_has_no_flap_and_no_split() {
        let rounds = vec![set(&["a"]); 5];
        let s = summarize_arp(&rounds, Duration::from_millis(50));
        assert_eq!(s.flaps, 0);
        assert_eq!(s.split_brain, Duration::ZERO);
        assert_eq!(s.longest_unanswered, Duration::ZERO);
        assert_eq!(summarize_arp(&[], Duration::from_millis(50)).flaps, 0);
    }

    #[test]
    fn tcp_outages_run_from_the_first_failure_to_the_next_success() {
        let ms = Duration::from_millis;
        let attempts = [
            (ms(0), Some("node-1")),
            (ms(100), None),
            (ms(200), None),
            (ms(350), Some("node-2")),
            (ms(400), None),
            (ms(450), Some("node-2")),
            (ms(500), Some("node-1")),
            (ms(600), None),
            (ms(700), None),
        ];
        let s = summarize_tcp(&attempts);
        assert_eq!(s.attempts, 9);
        assert_eq!(s.failures, 5);
        assert_eq!(s.longest_outage, ms(250));
        assert_eq!(s.answered_by, vec!["node-1", "node-2", "node-1"]);
    }

    #[test]
    fn metrics_are_read_from_prometheus_text() {
        let text = "# HELP x\nironlb_arp_malformed_frames_total 42\nironlb_vips_owned 3\n";
        assert_eq!(metric(text, "ironlb_arp_malformed_frames"), Some(42.0));
        assert_eq!(metric(text, "ironlb_vips_owned"), Some(3.0));
        assert_eq!(metric(text, "missing"), None);
    }
}
