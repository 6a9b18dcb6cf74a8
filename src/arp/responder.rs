//! The responder's I/O shell: pnet packet sockets, one blocking receive thread per interface in use, and a tokio task
//! that follows the plan and sends the gratuitous announcements. Every choice is made in [`super::decide`].
//!
//! Sockets are opened by the control task, so in the network namespace of the thread that runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnet::datalink::{self, Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::codec::{ArpPacket, Frame, MacAddr, NdpMessage, NdpPacket, may_be_arp_or_ndp};
use super::decide::{self, Answering, LinkFacts, LinkRefusal, LogLimiter, Verdict};
use super::{Announcements, ArpConfig, ArpMetrics, Error, Result};

/// Consecutive socket errors after which a receive thread gives up on its interface.
const MAX_CONSECUTIVE_ERRORS: u32 = 50;
/// Log lines about bad frames or conflicts admitted per interface per window.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// The ARP/NDP responder. See the module documentation of [`crate::arp`].
pub struct ArpResponder;

/// Keeps the responder running; dropping it stops the control task and every receive thread, and waits for the
/// threads (each notices within `read_timeout`), so no socket outlives the handle.
pub struct ArpResponderHandle {
    stop: Arc<AtomicBool>,
    task: AbortHandle,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Drop for ArpResponderHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl ArpResponder {
    /// Starts answering for the VIPs in `plan`. Must be called inside a tokio runtime; sockets are opened in the
    /// network namespace of the runtime thread that runs the control task.
    pub fn start(
        plan: watch::Receiver<Announcements>,
        config: ArpConfig,
        metrics: ArpMetrics,
    ) -> Result<ArpResponderHandle> {
        if config.read_timeout < Duration::from_millis(1)
            || config.read_timeout > Duration::from_secs(5)
        {
            return Err(Error::ReadTimeout(config.read_timeout));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let control = Control {
            config,
            metrics,
            stop: stop.clone(),
            threads: threads.clone(),
            ports: BTreeMap::new(),
            refused: BTreeMap::new(),
            announced: BTreeSet::new(),
        };
        let task = runtime.spawn(control.run(plan)).abort_handle();
        Ok(ArpResponderHandle {
            stop,
            task,
            threads,
        })
    }
}

struct Control {
    config: ArpConfig,
    metrics: ArpMetrics,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    ports: BTreeMap<String, Port>,
    /// Interfaces the plan names that we cannot use, with the reason last logged.
    refused: BTreeMap<String, String>,
    /// VIPs announced at least once since they entered the plan; the failover histogram is observed on entry here.
    announced: BTreeSet<IpAddr>,
}

impl Control {
    async fn run(mut self, mut plan: watch::Receiver<Announcements>) {
        let period = self.config.garp_period;
        let mut repeat = (!period.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut current = plan.borrow_and_update().clone();
        self.apply(&current);
        loop {
            tokio::select! {
                changed = plan.changed() => {
                    if changed.is_err() {
                        tracing::info!("announcement plan closed; stopping ARP/NDP responder");
                        break;
                    }
                    current = plan.borrow_and_update().clone();
                    self.apply(&current);
                }
                scheduled = next_tick(&mut repeat) => {
                    // A tick this late means the process was stopped: what it owned then may have moved meanwhile,
                    // and announcing it now would point clients back here. The agent catches up first.
                    if scheduled.elapsed() <= STALL_MARGIN {
                        self.repeat_announcements();
                    }
                    // A tick is also the moment to retry interfaces that were missing.
                    self.apply(&current);
                }
            }
        }
    }

    /// Brings ports and owned sets in line with `plan`, announcing every (interface, VIP) pair that is new.
    fn apply(&mut self, plan: &Announcements) {
        let wanted = decide::per_interface(plan);
        // Release first: a VIP gone from the plan stops being answered before anything else happens.
        self.ports.retain(|name, _| wanted.contains_key(name));
        self.refused.retain(|name, _| wanted.contains_key(name));
        self.announced.retain(|vip| plan.vips.contains_key(vip));
        let now = Instant::now();
        for port in self.ports.values() {
            let keep = &wanted[&port.name];
            port.answering
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .release(keep);
        }

        for (name, vips) in &wanted {
            if !self.ports.contains_key(name) {
                match Port::open(name, &self.config, &self.metrics, &self.stop) {
                    Ok((port, thread)) => {
                        tracing::info!(interface = %name, mac = %port.mac, "answering ARP/NDP on interface");
                        self.refused.remove(name);
                        let mut threads =
                            self.threads.lock().unwrap_or_else(PoisonError::into_inner);
                        threads.retain(|t| !t.is_finished());
                        threads.push(thread);
                        self.ports.insert(name.clone(), port);
                    }
                    Err(err) => {
                        let reason = crate::error_chain(&err);
                        if self.refused.get(name) != Some(&reason) {
                            tracing::warn!(interface = %name, reason = %reason, "not announcing on interface");
                            self.refused.insert(name.clone(), reason);
                        }
                        continue;
                    }
                }
            }
            let Some(port) = self.ports.get(name) else {
                continue;
            };
            let new = port
                .answering
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .follow(vips, now);
            for vip in new {
                if port.announce(vip, &self.metrics) && self.announced.insert(vip) {
                    if let Some(since) = plan.vips.get(&vip).and_then(|a| a.since) {
                        self.metrics
                            .failover_seconds
                            .observe(since.elapsed().as_secs_f64());
                    }
                    tracing::info!(vip = %vip, interface = %name, "took over VIP");
                }
            }
        }
    }

    fn repeat_announcements(&self) {
        for port in self.ports.values() {
            let owned: Vec<IpAddr> = port
                .answering
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .owned
                .iter()
                .copied()
                .collect();
            for vip in owned {
                port.announce(vip, &self.metrics);
            }
        }
    }
}

/// The next repeat tick (when it was due), or never when repeats are disabled.
async fn next_tick(repeat: &mut Option<tokio::time::Interval>) -> tokio::time::Instant {
    match repeat {
        Some(interval) => interval.tick().await,
        None => std::future::pending().await,
    }
}

/// One interface in use: its sender, shared with its receive thread, and the VIPs it answers for.
struct Port {
    name: String,
    mac: MacAddr,
    answering: Arc<RwLock<Answering>>,
    tx: Arc<Mutex<Box<dyn DataLinkSender>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Port {
    fn drop(&mut self) {
        // The owned set empties at once, so the thread answers nothing more even before it sees the flag.
        self.answering
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn link_facts(iface: &NetworkInterface) -> LinkFacts<'_> {
    LinkFacts {
        name: &iface.name,
        loopback: iface.is_loopback(),
        flags: iface.flags,
        mac: iface.mac.map(|m| MacAddr([m.0, m.1, m.2, m.3, m.4, m.5])),
    }
}

impl Port {
    fn open(
        name: &str,
        config: &ArpConfig,
        metrics: &ArpMetrics,
        global_stop: &Arc<AtomicBool>,
    ) -> Result<(Port, JoinHandle<()>)> {
        let refused = |reason| Error::Refused {
            interface: name.to_owned(),
            reason,
        };
        // Checked by name before looking anything up, so kube-ipvs0 is refused even where it is missing.
        if name == decide::KUBE_IPVS {
            return Err(refused(LinkRefusal::KubeIpvs));
        }
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or(refused(LinkRefusal::NotFound))?;
        let mac = decide::check_link(&link_facts(&iface)).map_err(refused)?;
        let channel_config = datalink::Config {
            read_timeout: Some(config.read_timeout),
            write_timeout: Some(config.read_timeout),
            // Neighbour solicitations go to solicited-node groups; promiscuous mode receives them without joining.
            promiscuous: true,
            ..Default::default()
        };
        let channel_error = |source| Error::Channel {
            interface: name.to_owned(),
            source,
        };
        let (tx, rx) = match datalink::channel(&iface, channel_config).map_err(channel_error)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => return Err(channel_error(io::Error::other("not an Ethernet channel"))),
        };
        let port = Port {
            name: name.to_owned(),
            mac,
            answering: Arc::new(RwLock::new(Answering::default())),
            tx: Arc::new(Mutex::new(tx)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let receiver = Receiver {
            name: port.name.clone(),
            mac,
            answering: port.answering.clone(),
            tx: port.tx.clone(),
            stop: port.stop.clone(),
            global_stop: global_stop.clone(),
            metrics: metrics.clone(),
            read_timeout: config.read_timeout,
            bad_frames: LogLimiter::new(LOG_BURST, LOG_WINDOW),
            conflicts: LogLimiter::new(LOG_BURST, LOG_WINDOW),
        };
        let thread = std::thread::Builder::new()
            .name(format!("arp-{name}"))
            .spawn(move || receiver.run(rx))
            .map_err(|source| Error::Thread {
                interface: name.to_owned(),
                source,
            })?;
        Ok((port, thread))
    }

    /// Sends the takeover announcement for `vip`; true when at least one packet left.
    fn announce(&self, vip: IpAddr, metrics: &ArpMetrics) -> bool {
        let frames = match vip {
            IpAddr::V4(ip) => vec![
                Frame::Arp(ArpPacket::gratuitous_request(self.mac, ip)),
                Frame::Arp(ArpPacket::gratuitous_reply(self.mac, ip)),
            ],
            IpAddr::V6(ip) => vec![Frame::Ndp(NdpPacket::unsolicited_advertisement(
                self.mac, ip,
            ))],
        };
        let mut sent = false;
        for frame in frames {
            match send(&self.tx, &frame) {
                Ok(()) => {
                    metrics.gratuitous_sent(vip);
                    sent = true;
                }
                Err(err) => {
                    tracing::warn!(interface = %self.name, vip = %vip, error = %err, "gratuitous announcement failed")
                }
            }
        }
        sent
    }
}

/// The VIP an answer speaks for: the sender of an ARP reply, the target of a neighbour advertisement.
fn answered_vip(answer: &Frame) -> IpAddr {
    match answer {
        Frame::Arp(arp) => IpAddr::V4(arp.sender_ip),
        Frame::Ndp(ndp) => match ndp.message {
            NdpMessage::Advertisement { target, .. } | NdpMessage::Solicitation { target, .. } => {
                IpAddr::V6(target)
            }
        },
    }
}

fn send(tx: &Mutex<Box<dyn DataLinkSender>>, frame: &Frame) -> io::Result<()> {
    let bytes = frame.encode();
    let mut tx = tx.lock().unwrap_or_else(PoisonError::into_inner);
    tx.send_to(&bytes, None)
        .unwrap_or_else(|| Err(io::Error::other("sender returned nothing")))
}

/// How much later than its read timeout a read may return before the thread counts as having been stopped.
const STALL_MARGIN: Duration = Duration::from_millis(100);
/// After a stop, how long the responder stays silent while the VIPs it answers for are the ones it had before the
/// stop: the time the agent needs to read what happened meanwhile (measured at 40 to 80 ms in the lab).
const STALL_HOLD: Duration = Duration::from_millis(250);

/// Whether a frame read from the socket is worth answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freshness {
    Fresh,
    /// The first frame after the thread did not run for this long: dropped, and the queue behind it too.
    StalledFor(Duration),
    /// Queued behind such a frame: dropped.
    Stale,
    /// New, but it arrived while the VIPs answered for are still those of before the stop: dropped.
    Held,
}

/// Keeps a responder that was stopped (SIGSTOP, a VM paused, a debugger) from answering with a stale view: meanwhile
/// other nodes declared this one gone and took its VIPs over, and an answer from it would point clients back at it.
///
/// - **Queued frames.** A read blocks for at most its timeout, so when more than `limit` (the timeout and a margin)
///   passed since the previous read returned, the thread was not running. From then on every frame that is read at
///   once was already queued; the first read that has to wait (1 ms or more), or that times out, finds the queue
///   empty and ends the drop.
/// - **The owned VIPs of before.** The agent needs a moment after resuming to read what happened (its backlog of
///   watch events and gossip) and to give up the VIPs others took. Until the set of VIPs answered for changes, or for
///   at most `hold`, new requests are dropped too. A VIP that is still this node's goes unanswered for that long
///   after a stop that already lasted longer than `limit`.
///
/// Senders retry dropped requests; by then the agent's view has caught up.
#[derive(Debug)]
struct StallFilter {
    limit: Duration,
    hold: Duration,
    last_return: Option<Instant>,
    draining: bool,
    /// Until when, and the owned VIPs at the stop.
    holding: Option<(Instant, BTreeSet<IpAddr>)>,
}

impl StallFilter {
    const QUEUED: Duration = Duration::from_millis(1);

    fn new(limit: Duration, hold: Duration) -> StallFilter {
        StallFilter {
            limit,
            hold,
            last_return: None,
            draining: false,
            holding: None,
        }
    }

    /// A read returned a frame at `now`, having blocked for `waited`, while the VIPs answered for are `owned`.
    fn frame(&mut self, now: Instant, waited: Duration, owned: &BTreeSet<IpAddr>) -> Freshness {
        let gap = self
            .last_return
            .map(|last| now.saturating_duration_since(last));
        self.last_return = Some(now);
        if let Some(gap) = gap.filter(|g| *g > self.limit) {
            self.draining = true;
            self.holding = Some((now + self.hold, owned.clone()));
            return Freshness::StalledFor(gap);
        }
        if self.draining && waited < Self::QUEUED {
            return Freshness::Stale;
        }
        self.draining = false;
        if let Some((until, before)) = &self.holding {
            if now < *until && before == owned {
                return Freshness::Held;
            }
            self.holding = None;
        }
        Freshness::Fresh
    }

    /// A read timed out at `now`: the queue is empty.
    fn empty(&mut self, now: Instant) {
        self.last_return = Some(now);
        self.draining = false;
    }
}

/// The state a receive thread owns.
struct Receiver {
    name: String,
    mac: MacAddr,
    answering: Arc<RwLock<Answering>>,
    tx: Arc<Mutex<Box<dyn DataLinkSender>>>,
    stop: Arc<AtomicBool>,
    global_stop: Arc<AtomicBool>,
    metrics: ArpMetrics,
    read_timeout: Duration,
    bad_frames: LogLimiter,
    conflicts: LogLimiter,
}

impl Receiver {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.global_stop.load(Ordering::SeqCst)
    }

    /// Runs until a stop flag is set (seen within one read timeout) or the socket keeps failing.
    fn run(mut self, mut rx: Box<dyn DataLinkReceiver>) {
        let mut consecutive_errors = 0u32;
        let mut stall = StallFilter::new(self.read_timeout + STALL_MARGIN, STALL_HOLD);
        while !self.stopped() {
            let started = Instant::now();
            match rx.next() {
                Ok(bytes) => {
                    consecutive_errors = 0;
                    let now = Instant::now();
                    let freshness = {
                        let answering = self
                            .answering
                            .read()
                            .unwrap_or_else(PoisonError::into_inner);
                        stall.frame(now, now - started, &answering.owned)
                    };
                    match freshness {
                        Freshness::Fresh => {
                            if may_be_arp_or_ndp(bytes) {
                                self.handle(bytes);
                            }
                        }
                        Freshness::StalledFor(gap) => {
                            self.metrics.stale.inc();
                            tracing::info!(interface = %self.name, stopped_ms = gap.as_millis() as u64,
                                "this agent was stopped; dropping the requests that queued meanwhile, as the VIPs may \
                                 have moved");
                        }
                        Freshness::Stale | Freshness::Held => {
                            self.metrics.stale.inc();
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                    consecutive_errors = 0;
                    stall.empty(Instant::now());
                }
                Err(err) => {
                    consecutive_errors += 1;
                    if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                        tracing::error!(interface = %self.name, error = %err, "packet socket keeps failing; no longer answering on interface");
                        return;
                    }
                    if let Some(suppressed) = self.bad_frames.admit(Instant::now()) {
                        tracing::warn!(interface = %self.name, error = %err, suppressed, "packet socket read failed");
                    }
                    std::thread::sleep(self.read_timeout);
                }
            }
        }
    }

    fn handle(&mut self, bytes: &[u8]) {
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(err) if err.is_malformed() => {
                self.metrics.malformed.inc();
                if let Some(suppressed) = self.bad_frames.admit(Instant::now()) {
                    tracing::debug!(interface = %self.name, error = %err, suppressed, "dropped malformed frame");
                }
                return;
            }
            Err(_) => return,
        };
        let verdict = {
            let answering = self
                .answering
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            decide::decide(&frame, self.mac, &answering.owned)
        };
        match verdict {
            Verdict::Ignore => {}
            Verdict::Answer(answer) => {
                let vip = answered_vip(&answer);
                match send(&self.tx, &answer) {
                    Ok(()) => self.metrics.request_for(vip, true),
                    Err(err) => {
                        self.metrics.request_for(vip, false);
                        if let Some(suppressed) = self.bad_frames.admit(Instant::now()) {
                            tracing::warn!(interface = %self.name, error = %err, suppressed, "sending an answer failed");
                        }
                    }
                }
            }
            Verdict::Conflict { vip, mac } => {
                let yielded = self
                    .answering
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .claimed(vip, Instant::now());
                if yielded {
                    self.metrics.yielded.inc();
                    tracing::info!(interface = %self.name, vip = %vip, new_mac = %mac,
                        "the node taking this VIP over announced it; no longer answering for it");
                } else if let Some(suppressed) = self.conflicts.admit(Instant::now()) {
                    tracing::warn!(interface = %self.name, vip = %vip, other_mac = %mac, suppressed,
                        "another station claims a VIP this node announces; still answering");
                }
            }
            Verdict::Invalid(why) => {
                self.metrics.malformed.inc();
                if let Some(suppressed) = self.bad_frames.admit(Instant::now()) {
                    tracing::debug!(interface = %self.name, reason = why, suppressed, "dropped invalid frame");
                }
            }
        }
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn frames_queued_while_stopped_are_dropped_until_a_read_waits() {
        let t0 = Instant::now();
        let owned: BTreeSet<IpAddr> = ["192.0.2.1".parse().unwrap()].into();
        let mut f = StallFilter::new(MS(300), Duration::ZERO);
        assert_eq!(f.frame(t0, MS(5), &owned), Freshness::Fresh);
        // Steady reads, some of them after a full timeout with nothing to read.
        f.empty(t0 + MS(205));
        assert_eq!(f.frame(t0 + MS(300), MS(95), &owned), Freshness::Fresh);
        // Stopped for a second: the frame that ends the read, and those read at once after it, are dropped.
        assert_eq!(
            f.frame(t0 + MS(1300), MS(1000), &owned),
            Freshness::StalledFor(MS(1000))
        );
        assert_eq!(
            f.frame(t0 + MS(1300), Duration::ZERO, &owned),
            Freshness::Stale
        );
        assert_eq!(
            f.frame(t0 + MS(1300), Duration::from_micros(200), &owned),
            Freshness::Stale
        );
        // The first read that had to wait found the queue empty: its frame is new.
        assert_eq!(f.frame(t0 + MS(1320), MS(20), &owned), Freshness::Fresh);
        assert_eq!(
            f.frame(t0 + MS(1320), Duration::ZERO, &owned),
            Freshness::Fresh
        );
        // Stopped again while not reading, then a timeout: the drop ends with it.
        assert_eq!(
            f.frame(t0 + MS(6000), Duration::ZERO, &owned),
            Freshness::StalledFor(MS(4680))
        );
        f.empty(t0 + MS(6200));
        assert_eq!(
            f.frame(t0 + MS(6210), Duration::ZERO, &owned),
            Freshness::Fresh
        );
    }

    #[test]
    fn after_a_stop_new_requests_wait_until_the_owned_vips_change_or_the_hold_ends() {
        let t0 = Instant::now();
        let before: BTreeSet<IpAddr> =
            ["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()].into();
        let after: BTreeSet<IpAddr> = ["192.0.2.2".parse().unwrap()].into();
        let mut f = StallFilter::new(MS(300), MS(250));
        assert_eq!(f.frame(t0, MS(5), &before), Freshness::Fresh);
        assert_eq!(
            f.frame(t0 + MS(1000), MS(200), &before),
            Freshness::StalledFor(MS(1000))
        );
        // Fresh requests, but the agent has not caught up yet.
        assert_eq!(f.frame(t0 + MS(1030), MS(30), &before), Freshness::Held);
        // It gave up 192.0.2.1: answering resumes with what it still owns.
        assert_eq!(f.frame(t0 + MS(1060), MS(30), &after), Freshness::Fresh);
        // Another stop after which nothing changes: the hold ends on its own.
        assert_eq!(
            f.frame(t0 + MS(3000), MS(100), &after),
            Freshness::StalledFor(MS(1940))
        );
        assert_eq!(f.frame(t0 + MS(3200), MS(200), &after), Freshness::Held);
        assert_eq!(f.frame(t0 + MS(3260), MS(60), &after), Freshness::Fresh);
    }
}
