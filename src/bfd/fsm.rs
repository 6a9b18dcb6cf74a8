//! One BFD session in Asynchronous mode (RFC 5880 sections 6.2 and 6.8), as a pure state machine: packets and
//! time go in, packets to send and state changes come out. No socket, no clock: the caller passes `now`.
//!
//! - Before the session is Up, packets go out at most once a second (section 6.8.3), whatever the profile says.
//! - Once Up, a Poll sequence moves both sides to the profile's intervals (section 6.8.3). The transmit interval
//!   follows at once, which the RFC allows for a faster rate (a slower one would wait for the Final; profiles are
//!   never slower than the 1 s start).
//! - The transmit interval is the larger of our desired minimum and the peer's required minimum, less 0 to 25 %
//!   jitter (section 6.8.7; 10 to 25 % with a multiplier of 1).
//! - The detection time is the peer's multiplier times the larger of our required minimum and the peer's desired
//!   minimum (section 6.8.4). Passing it in Init or Up takes the session Down (diag 1).
//! - Passive: nothing is sent until the peer has been heard (section 6.1).
//! - Echo (section 6.8.9, RFC 5881 section 4): with an echo interval in the profile, the session advertises it as
//!   its Required Min Echo RX Interval (the node's forwarding plane loops the peer's echoes back), and once Up, when
//!   the peer advertises a non-zero one too, it asks for an echo packet every max(ours, theirs) and goes Down with
//!   diag 2 (Echo Function Failed) when none came back for the detection multiplier times that interval.

use std::time::{Duration, Instant};

use super::codec::{BfdState, Control, Diag};

/// The slowest a session transmits before it is Up, and the rate it starts from (RFC 5880 section 6.8.3).
pub const SLOW: Duration = Duration::from_secs(1);

/// What a BFDProfile sets for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Desired Min TX Interval once Up.
    pub transmit_interval: Duration,
    /// Required Min RX Interval.
    pub receive_interval: Duration,
    pub detect_mult: u8,
    /// Wait for the peer to speak first.
    pub passive: bool,
    /// Required Min Echo RX Interval to advertise: how often the peer may send echo packets for this node's
    /// forwarding plane to loop back; 0 forbids them.
    pub echo_receive_interval: Duration,
    /// How often to send echo packets once Up, if the peer allows them; 0: no echo function.
    pub echo_transmit_interval: Duration,
}

impl Default for Profile {
    /// MetalLB's BFDProfile defaults (FRR's): 300 ms both ways, multiplier 3, active; no echo.
    fn default() -> Self {
        Profile {
            transmit_interval: Duration::from_millis(300),
            receive_interval: Duration::from_millis(300),
            detect_mult: 3,
            passive: false,
            echo_receive_interval: Duration::ZERO,
            echo_transmit_interval: Duration::ZERO,
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BfdAction {
    Send(Control),
    /// Send one echo packet (its content is the transport's: it must come back to this session).
    SendEcho,
    /// The session changed state; `diag` says why it went Down.
    StateChanged {
        from: BfdState,
        to: BfdState,
        diag: Diag,
    },
}

/// The intervals both ends agreed on, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfdTimers {
    pub transmit: Duration,
    pub detection: Duration,
}

#[derive(Clone, Debug)]
pub struct BfdSession {
    profile: Profile,
    state: BfdState,
    diag: Diag,
    local_disc: u32,
    remote_disc: u32,
    remote_state: BfdState,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_mult: u8,
    /// The intervals we advertise now: the slow rate until Up, the profile's once a Poll has carried them.
    desired_tx: Duration,
    required_rx: Duration,
    /// A Poll sequence in progress: the intervals it carries.
    polling: bool,
    /// The transmit interval in use (changes after a Final).
    tx_interval: Duration,
    next_tx: Option<Instant>,
    detect_at: Option<Instant>,
    heard: bool,
    /// The peer's Required Min Echo RX Interval: 0 forbids echo packets to it.
    remote_min_echo_rx: Duration,
    /// The echo function: the next echo packet, and when missing echoes take the session Down.
    next_echo: Option<Instant>,
    echo_detect_at: Option<Instant>,
    /// Jitter source (xorshift, seeded by the discriminator): deterministic for a given session.
    rng: u32,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl BfdSession {
    /// A session in state Down, identified by `local_disc` (non-zero, unique on this system).
    pub fn new(profile: Profile, local_disc: u32, now: Instant) -> BfdSession {
        let local_disc = local_disc.max(1);
        BfdSession {
            profile,
            state: BfdState::Down,
            diag: Diag::None,
            local_disc,
            remote_disc: 0,
            remote_state: BfdState::Down,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_mult: 0,
            desired_tx: SLOW.max(profile.transmit_interval),
            required_rx: profile.receive_interval,
            polling: false,
            tx_interval: SLOW.max(profile.transmit_interval),
            next_tx: (!profile.passive).then_some(now),
            detect_at: None,
            heard: false,
            remote_min_echo_rx: Duration::ZERO,
            next_echo: None,
            echo_detect_at: None,
            rng: local_disc ^ 0x9e37_79b9,
        }
    }

    pub fn state(&self) -> BfdState {
        self.state
    }

    pub fn local_disc(&self) -> u32 {
        self.local_disc
    }

    pub fn remote_disc(&self) -> u32 {
        self.remote_disc
    }

    pub fn diag(&self) -> Diag {
        self.diag
    }

    /// The state the peer last said it was in.
    pub fn remote_state(&self) -> BfdState {
        self.remote_state
    }

    /// The transmit interval in use and the detection time, once the peer has been heard.
    pub fn negotiated(&self) -> Option<BfdTimers> {
        self.heard.then(|| BfdTimers {
            transmit: self.tx_interval,
            detection: self.detection_time(),
        })
    }

    /// When [`BfdSession::timers`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.next_tx,
            self.detect_at,
            self.next_echo,
            self.echo_detect_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The interval echo packets go out at while the echo function runs: the slower of ours and the peer's
    /// required minimum; None when it does not run (not Up, no echo in the profile, or the peer forbids it).
    pub fn echo_interval(&self) -> Option<Duration> {
        (self.state == BfdState::Up
            && !self.profile.echo_transmit_interval.is_zero()
            && !self.remote_min_echo_rx.is_zero())
        .then(|| {
            self.profile
                .echo_transmit_interval
                .max(self.remote_min_echo_rx)
        })
    }

    /// One of this session's echo packets came back.
    pub fn echo_returned(&mut self, now: Instant) {
        if let Some(interval) = self.echo_interval() {
            self.echo_detect_at = Some(now + interval * u32::from(self.profile.detect_mult.max(1)));
        }
    }

    /// Turns the echo function off for good (no way to send echo packets): control packets alone detect.
    pub fn disable_echo(&mut self) {
        self.profile.echo_transmit_interval = Duration::ZERO;
        self.next_echo = None;
        self.echo_detect_at = None;
    }

    /// Starts or stops the echo function to match [`BfdSession::echo_interval`].
    fn sync_echo(&mut self, now: Instant) {
        match self.echo_interval() {
            Some(interval) if self.next_echo.is_none() => {
                self.next_echo = Some(now);
                // The first echoes get a whole detection time to come back.
                self.echo_detect_at =
                    Some(now + interval * u32::from(self.profile.detect_mult.max(1)));
            }
            Some(_) => {}
            None => {
                self.next_echo = None;
                self.echo_detect_at = None;
            }
        }
    }

    fn detection_time(&self) -> Duration {
        self.required_rx.max(self.remote_desired_tx) * u32::from(self.remote_mult.max(1))
    }

    fn packet(&self, final_: bool) -> Control {
        Control {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            cpi: false,
            demand: false,
            detect_mult: self.profile.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: micros(self.desired_tx),
            required_min_rx: micros(self.required_rx),
            required_min_echo_rx: micros(self.profile.echo_receive_interval),
        }
    }

    fn jittered(&mut self, interval: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        // 75 to 100 % of the interval; 75 to 90 % with a multiplier of 1 (RFC 5880 section 6.8.7).
        let span = if self.profile.detect_mult == 1 {
            15
        } else {
            25
        };
        let pct = 100 - (self.rng % (span + 1)) - if span == 15 { 10 } else { 0 };
        interval * pct / 100
    }

    fn schedule_tx(&mut self, now: Instant) {
        let interval = self.jittered(self.tx_interval);
        self.next_tx = Some(now + interval);
    }

    fn set_state(&mut self, to: BfdState, diag: Diag, now: Instant, out: &mut Vec<BfdAction>) {
        if to == self.state {
            return;
        }
        let from = self.state;
        self.state = to;
        self.diag = diag;
        match to {
            BfdState::Up => {
                // Move to the profile's intervals with a Poll (section 6.8.3).
                self.desired_tx = self.profile.transmit_interval;
                self.required_rx = self.profile.receive_interval;
                self.polling = true;
            }
            _ => {
                self.desired_tx = SLOW.max(self.profile.transmit_interval);
                self.required_rx = self.profile.receive_interval;
                self.tx_interval = self.desired_tx.max(self.remote_min_rx);
                self.polling = false;
            }
        }
        if to == BfdState::Down {
            self.detect_at = None;
        }
        out.push(BfdAction::StateChanged { from, to, diag });
        // A state change is sent at once.
        out.push(BfdAction::Send(self.packet(false)));
        self.schedule_tx(now);
    }

    /// A packet from the peer, already decoded and checked by [`super::codec::decode`] and matched to this session.
    pub fn receive(&mut self, p: &Control, now: Instant) -> Vec<BfdAction> {
        let mut out = Vec::new();
        if p.your_disc != 0 && p.your_disc != self.local_disc {
            return out;
        }
        self.heard = true;
        self.remote_disc = p.my_disc;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx));
        self.remote_desired_tx = Duration::from_micros(u64::from(p.desired_min_tx));
        self.remote_mult = p.detect_mult;
        self.remote_min_echo_rx = Duration::from_micros(u64::from(p.required_min_echo_rx));
        if p.final_ && self.polling {
            self.polling = false;
        }
        // The interval follows the peer's required minimum at once; ours takes effect after the Final.
        let before = self.tx_interval;
        self.tx_interval = self.desired_tx.max(self.remote_min_rx);
        if self.tx_interval < before {
            // A shorter interval applies to the next packet, not to the one after it: the peer computes its
            // detection time from the new interval as soon as it answers our Poll (section 6.8.4), and a packet
            // still scheduled at the slow start rate (up to 1 s away) would arrive after that time had passed.
            let sooner = now + self.jittered(self.tx_interval);
            if self.next_tx.is_some_and(|at| at > sooner) {
                self.next_tx = Some(sooner);
            }
        }
        if self.next_tx.is_none() {
            // Passive, now heard.
            self.next_tx = Some(now);
        }
        if self.state == BfdState::AdminDown {
            return out;
        }
        match (self.state, p.state) {
            (BfdState::Down | BfdState::Init | BfdState::Up, BfdState::AdminDown)
                if self.state != BfdState::Down =>
            {
                self.set_state(BfdState::Down, Diag::NeighborSignaledDown, now, &mut out);
            }
            (BfdState::Down, BfdState::Down) => {
                self.set_state(BfdState::Init, Diag::None, now, &mut out)
            }
            (BfdState::Down, BfdState::Init) => {
                self.set_state(BfdState::Up, Diag::None, now, &mut out)
            }
            (BfdState::Init, BfdState::Init | BfdState::Up) => {
                self.set_state(BfdState::Up, Diag::None, now, &mut out)
            }
            (BfdState::Up, BfdState::Down) => {
                self.set_state(BfdState::Down, Diag::NeighborSignaledDown, now, &mut out)
            }
            _ => {}
        }
        if matches!(self.state, BfdState::Init | BfdState::Up) {
            self.detect_at = Some(now + self.detection_time());
        }
        if p.poll {
            // Answer a Poll at once with a Final (section 6.8.7 allows it outside the schedule).
            out.push(BfdAction::Send(self.packet(true)));
        }
        self.sync_echo(now);
        out
    }

    /// Periodic work due at `now`: the detection time passing, and the next packet.
    pub fn timers(&mut self, now: Instant) -> Vec<BfdAction> {
        let mut out = Vec::new();
        if self.detect_at.is_some_and(|at| now >= at) {
            self.detect_at = None;
            self.remote_disc = 0;
            self.set_state(BfdState::Down, Diag::DetectionTimeExpired, now, &mut out);
        }
        if self.echo_detect_at.is_some_and(|at| now >= at) {
            self.echo_detect_at = None;
            self.set_state(BfdState::Down, Diag::EchoFailed, now, &mut out);
        }
        self.sync_echo(now);
        if let (Some(at), Some(interval)) = (self.next_echo, self.echo_interval())
            && now >= at
        {
            out.push(BfdAction::SendEcho);
            // Echo packets are jittered like control packets (section 6.8.9).
            self.next_echo = Some(now + self.jittered(interval));
        }
        if self.next_tx.is_some_and(|at| now >= at) {
            out.push(BfdAction::Send(self.packet(false)));
            self.schedule_tx(now);
        }
        out
    }

    /// Takes the session administratively down (section 6.8.16): the peer is told, and nothing else happens until
    /// the session is dropped.
    pub fn admin_down(&mut self, now: Instant) -> Vec<BfdAction> {
        let mut out = Vec::new();
        self.set_state(
            BfdState::AdminDown,
            Diag::AdministrativelyDown,
            now,
            &mut out,
        );
        self.detect_at = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(actions: &[BfdAction]) -> Vec<Control> {
        actions
            .iter()
            .filter_map(|a| match a {
                BfdAction::Send(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn changes(actions: &[BfdAction]) -> Vec<(BfdState, BfdState)> {
        actions
            .iter()
            .filter_map(|a| match a {
                BfdAction::StateChanged { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    /// A packet from the peer (discriminator 9, multiplier 3, 300 ms receive), as the tests below need it.
    fn from_peer(
        state: BfdState,
        your_disc: u32,
        desired_ms: u32,
        echo_ms: u32,
        final_: bool,
    ) -> Control {
        Control {
            diag: Diag::None,
            state,
            poll: false,
            final_,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_disc: 9,
            your_disc,
            desired_min_tx: desired_ms * 1000,
            required_min_rx: 300_000,
            required_min_echo_rx: echo_ms * 1000,
        }
    }

    /// Going Up, the session Polls for the profile's 300 ms; once the peer answers, the next packet leaves within
    /// 300 ms, not at the 1 s start rate still scheduled: the peer detects with 3 × 300 ms from its answer on, and
    /// a packet up to 1 s away made it declare the session down (seen against FRR, about one start in three).
    #[test]
    fn after_the_final_the_next_packet_follows_the_new_interval() {
        let t0 = Instant::now();
        let mut s = BfdSession::new(Profile::default(), 1, t0);
        assert_eq!(sent(&s.timers(t0)).len(), 1);
        let peer = |state, your_disc, desired_ms, final_| {
            from_peer(state, your_disc, desired_ms, 0, final_)
        };
        let t1 = t0 + Duration::from_millis(10);
        s.receive(&peer(BfdState::Down, 0, 1000, false), t1);
        let t2 = t1 + Duration::from_millis(10);
        let up = s.receive(&peer(BfdState::Up, 1, 1000, false), t2);
        assert_eq!(s.state(), BfdState::Up);
        let poll = sent(&up);
        assert!(
            poll.iter().any(|p| p.poll && p.desired_min_tx == 300_000),
            "{poll:?}"
        );
        let t3 = t2 + Duration::from_millis(1);
        s.receive(&peer(BfdState::Up, 1, 300, true), t3);
        let next = s.next_deadline().expect("a packet is scheduled");
        assert!(
            next <= t3 + Duration::from_millis(300),
            "next packet {:?} after the Final",
            next - t3
        );
        // And it is a periodic packet at the new interval, no longer a Poll.
        let p = sent(&s.timers(next));
        assert_eq!(p.len(), 1);
        assert!(!p[0].poll && p[0].desired_min_tx == 300_000, "{p:?}");
    }

    /// A session brought Up by a peer that advertises `peer_echo_ms` as its Required Min Echo RX Interval.
    fn up_with_echo(profile: Profile, peer_echo_ms: u32, t0: Instant) -> BfdSession {
        let mut s = BfdSession::new(profile, 1, t0);
        s.timers(t0);
        s.receive(&from_peer(BfdState::Down, 0, 300, peer_echo_ms, false), t0);
        s.receive(&from_peer(BfdState::Up, 1, 300, peer_echo_ms, false), t0);
        assert_eq!(s.state(), BfdState::Up);
        s
    }

    fn echoes(actions: &[BfdAction]) -> usize {
        actions
            .iter()
            .filter(|a| **a == BfdAction::SendEcho)
            .count()
    }

    #[test]
    fn echo_runs_only_when_both_sides_allow_it_and_missing_echoes_take_the_session_down() {
        let t0 = Instant::now();
        let echo = Profile {
            echo_receive_interval: Duration::from_millis(50),
            echo_transmit_interval: Duration::from_millis(50),
            ..Profile::default()
        };
        // Advertised, so the peer may send echoes for our forwarding plane to loop back.
        let s = BfdSession::new(echo, 1, t0);
        assert_eq!(s.packet(false).required_min_echo_rx, 50_000);
        // The peer forbids echoes, or our profile has none: no echo function.
        let mut s = up_with_echo(echo, 0, t0);
        assert_eq!(s.echo_interval(), None);
        assert_eq!(echoes(&s.timers(t0 + Duration::from_secs(1))), 0);
        let mut s = up_with_echo(Profile::default(), 50, t0);
        assert_eq!(s.echo_interval(), None);
        assert_eq!(echoes(&s.timers(t0 + Duration::from_secs(1))), 0);
        // Both allow it: echoes at the slower of the two intervals (the peer's 100 ms here).
        let mut s = up_with_echo(echo, 100, t0);
        assert_eq!(s.echo_interval(), Some(Duration::from_millis(100)));
        let mut now = t0;
        let mut sent = 0;
        // Each echo comes back: the session stays Up for 2 s, sending one about every 75-100 ms.
        while now < t0 + Duration::from_secs(2) {
            now = s.next_deadline().unwrap();
            let n = echoes(&s.timers(now));
            if n > 0 {
                s.echo_returned(now);
            }
            // Control packets from the peer keep the control detection time away.
            s.receive(&from_peer(BfdState::Up, 1, 300, 100, false), now);
            sent += n;
            assert_eq!(s.state(), BfdState::Up);
        }
        assert!((20..=27).contains(&sent), "{sent} echoes in 2 s at 100 ms");
        // Echoes stop coming back, control packets still do: Down within 3 × 100 ms, diag Echo Function Failed.
        let lost = now;
        while s.state() == BfdState::Up {
            now = s.next_deadline().unwrap();
            s.timers(now);
            assert!(
                now - lost <= Duration::from_millis(300),
                "still Up {:?} later",
                now - lost
            );
        }
        assert_eq!(s.diag(), Diag::EchoFailed);
        assert_eq!(s.echo_interval(), None);
        assert_eq!(echoes(&s.timers(now + Duration::from_secs(1))), 0);
    }

    /// Two sessions talking to each other directly: the three-way handshake, the Poll to the profile's
    /// intervals, and detection when one side goes silent.
    #[test]
    fn two_sessions_come_up_negotiate_and_detect_silence() {
        let t0 = Instant::now();
        let profile = Profile::default();
        let mut a = BfdSession::new(profile, 11, t0);
        let mut b = BfdSession::new(profile, 22, t0);
        let mut now = t0;
        let mut a_up = None;
        // Exchange everything either side sends, stepping time to the next deadline, for at most 10 s.
        let mut in_flight: Vec<(bool, Control)> = Vec::new();
        while now < t0 + Duration::from_secs(10) {
            let mut out_a = a.timers(now);
            let mut out_b = b.timers(now);
            for (to_a, p) in std::mem::take(&mut in_flight) {
                if to_a {
                    out_a.extend(a.receive(&p, now));
                } else {
                    out_b.extend(b.receive(&p, now));
                }
            }
            in_flight.extend(sent(&out_a).into_iter().map(|p| (false, p)));
            in_flight.extend(sent(&out_b).into_iter().map(|p| (true, p)));
            if a.state() == BfdState::Up && a_up.is_none() {
                a_up = Some(now);
            }
            if a_up.is_some() && a.negotiated().unwrap().transmit == Duration::from_millis(300) {
                break;
            }
            let next = [a.next_deadline(), b.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            now = if in_flight.is_empty() {
                next.max(now)
            } else {
                now
            };
        }
        assert_eq!((a.state(), b.state()), (BfdState::Up, BfdState::Up));
        assert!(
            a_up.unwrap() - t0 < SLOW * 2,
            "up after {:?}",
            a_up.unwrap() - t0
        );
        let n = a.negotiated().unwrap();
        assert_eq!(
            n.transmit,
            Duration::from_millis(300),
            "after the Poll and Final"
        );
        assert_eq!(n.detection, Duration::from_millis(900));
        assert_eq!((a.remote_disc(), b.remote_disc()), (22, 11));

        // b goes silent: a declares it Down once 900 ms pass without a packet.
        let heard = now;
        let mut went_down = None;
        while now < heard + Duration::from_secs(3) {
            now = a.next_deadline().unwrap();
            let actions = a.timers(now);
            if changes(&actions).contains(&(BfdState::Up, BfdState::Down)) {
                went_down = Some(now - heard);
                break;
            }
        }
        let after = went_down.expect("never detected");
        assert!(
            after <= Duration::from_millis(900) && after > Duration::from_millis(600),
            "detected after {after:?}"
        );
        assert_eq!(a.diag(), Diag::DetectionTimeExpired);
        assert_eq!(a.remote_disc(), 0);
    }

    #[test]
    fn slow_before_up_and_jitter_within_bounds() {
        let t0 = Instant::now();
        let mut s = BfdSession::new(Profile::default(), 5, t0);
        let first = sent(&s.timers(t0));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].state, BfdState::Down);
        assert_eq!(first[0].desired_min_tx, 1_000_000, "1 s until Up");
        assert_eq!(first[0].your_disc, 0);
        for _ in 0..200 {
            let at = s.next_deadline().unwrap();
            assert_eq!(sent(&s.timers(at)).len(), 1);
            let interval = s.next_deadline().unwrap() - at;
            assert!(
                interval >= SLOW * 3 / 4 && interval <= SLOW,
                "interval {interval:?}"
            );
        }
    }

    #[test]
    fn passive_waits_and_neighbor_down_is_followed() {
        let t0 = Instant::now();
        let mut s = BfdSession::new(
            Profile {
                passive: true,
                ..Profile::default()
            },
            7,
            t0,
        );
        assert!(
            s.timers(t0 + Duration::from_secs(5)).is_empty(),
            "passive: silent until heard"
        );
        let peer = |state, your_disc| Control {
            diag: Diag::None,
            state,
            poll: false,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_disc: 99,
            your_disc,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        };
        let out = s.receive(&peer(BfdState::Down, 0), t0);
        assert_eq!(changes(&out), [(BfdState::Down, BfdState::Init)]);
        let out = s.receive(&peer(BfdState::Up, 7), t0);
        assert_eq!(changes(&out), [(BfdState::Init, BfdState::Up)]);
        let out = s.receive(&peer(BfdState::AdminDown, 7), t0);
        assert_eq!(changes(&out), [(BfdState::Up, BfdState::Down)]);
        assert_eq!(s.diag(), Diag::NeighborSignaledDown);
        // A packet for another session is ignored.
        assert!(s.receive(&peer(BfdState::Up, 8), t0).is_empty());
        // A Poll gets a Final.
        let mut poll = peer(BfdState::Down, 7);
        poll.poll = true;
        let out = s.receive(&poll, t0);
        assert!(sent(&out).iter().any(|p| p.final_ && !p.poll));
    }
}
