//! The BGP session state machine of RFC 4271 section 8, as a pure function of events: no I/O, no clock. The
//! session driver ([`super::session`]) turns sockets and timers into [`Event`]s and carries out the [`Action`]s.
//!
//! The speaker only originates routes: it connects actively, ignores the routes a peer sends, and answers
//! protocol errors with a NOTIFICATION carrying the RFC's code and subcode.

use std::net::Ipv4Addr;
use std::time::Duration;

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, ExtendedNextHopEncoding, ExtendedNextHopEncodingCapability,
    FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
    OpenMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_iana::address_family::{AddressFamily, AddressType};

use super::codec::AS_TRANS;

/// RFC 4271 section 8.2.2: the session states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

/// Which AS numbers the peer may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAs {
    Fixed(u32),
    /// iBGP: the peer's AS equals ours.
    Internal,
    /// eBGP: any AS other than ours.
    External,
}

/// The session parameters taken from the BGPPeer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsmConfig {
    pub local_asn: u32,
    pub peer_as: PeerAs,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds; 0 disables keepalives and the hold timer. Default 90.
    pub hold_time: u16,
    /// Configured keepalive interval; a third of the negotiated hold time when unset or larger than that.
    pub keepalive: Option<Duration>,
    /// ConnectRetryTime: the first reconnect delay. It doubles after each failure up to [`MAX_BACKOFF`] (or the
    /// configured time when that is larger) and resets once a session is Established.
    pub connect_retry: Duration,
    /// Graceful restart (RFC 4724): the restart time announced to the peer, when enabled.
    pub graceful_restart: Option<u16>,
    /// The families to offer: IPv4 unicast, IPv6 unicast.
    pub ipv4: bool,
    pub ipv6: bool,
    /// Offer IPv4 unicast routes with an IPv6 next hop (RFC 8950's Extended Next Hop Encoding capability): for
    /// sessions between link-local addresses (unnumbered peers), where this node has no IPv4 next hop to give.
    pub extended_next_hop: bool,
    /// This is the first session of this process: announce the Restart State bit (RFC 4724 section 3).
    pub restarted: bool,
}

/// The upper bound of the reconnect backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// RFC 4271 section 8.2.2: the hold timer while waiting for the peer's OPEN ("a large value, 4 minutes").
pub const OPEN_HOLD: Duration = Duration::from_secs(240);

/// The timers of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// ManualStart.
    Start,
    /// ManualStop. `graceful`: close without a Cease NOTIFICATION so that a peer that negotiated graceful restart
    /// keeps the routes (the agent is restarting).
    Stop {
        graceful: bool,
    },
    TcpConnected,
    /// The TCP connection attempt failed or the connection closed.
    TcpFailed(String),
    TimerExpired(Timer),
    Received(BgpMessage),
    /// An UPDATE arrived (its content is ignored).
    ReceivedUpdate,
    /// The bytes from the peer could not be decoded.
    DecodeError {
        message: String,
        notification: BgpNotificationMessage,
    },
}

/// What the driver is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Connect,
    /// Close the TCP connection (after sending what came before).
    Disconnect,
    Send(BgpMessage),
    /// Start (or restart) a timer; `None` stops it.
    SetTimer(Timer, Option<Duration>),
    /// The session is up: send the whole route set, then End-of-RIB when graceful restart was negotiated.
    Established(Negotiated),
    /// The peer asked for our routes again (ROUTE-REFRESH).
    ResendRoutes,
    /// The session went down; `reason` is for the log and the flap metric.
    Down {
        reason: String,
    },
}

/// What the OPEN exchange settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_asn: u32,
    pub peer_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: Option<Duration>,
    pub asn4: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Both sides offered IPv4 unicast with an IPv6 next hop (RFC 8950).
    pub extended_next_hop: bool,
    pub route_refresh: bool,
    pub graceful_restart: bool,
    pub ibgp: bool,
}

/// One session.
#[derive(Clone, Debug)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    retry_delay: Duration,
    negotiated: Option<Negotiated>,
    sent_open: bool,
}

impl Fsm {
    pub fn new(config: FsmConfig) -> Fsm {
        let retry_delay = config.connect_retry;
        Fsm {
            config,
            state: State::Idle,
            retry_delay,
            negotiated: None,
            sent_open: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn config(&self) -> &FsmConfig {
        &self.config
    }

    /// The OPEN this speaker sends.
    pub fn open_message(&self) -> BgpMessage {
        let c = &self.config;
        let mut caps = Vec::new();
        if c.ipv4 {
            caps.push(BgpCapability::MultiProtocolExtensions(
                MultiProtocolExtensionsCapability::new(AddressType::Ipv4Unicast),
            ));
        }
        if c.ipv6 {
            caps.push(BgpCapability::MultiProtocolExtensions(
                MultiProtocolExtensionsCapability::new(AddressType::Ipv6Unicast),
            ));
        }
        if c.ipv4 && c.extended_next_hop {
            caps.push(BgpCapability::ExtendedNextHopEncoding(
                ExtendedNextHopEncodingCapability::new(vec![ExtendedNextHopEncoding::new(
                    AddressType::Ipv4Unicast,
                    AddressFamily::IPv6,
                )]),
            ));
        }
        caps.push(BgpCapability::RouteRefresh);
        caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
            c.local_asn,
        )));
        if let Some(time) = c.graceful_restart {
            let mut families = Vec::new();
            // Forwarding state is preserved across an agent restart: IPVS and the VIPs stay in the kernel.
            if c.ipv4 {
                families.push(GracefulRestartAddressFamily::new(
                    true,
                    AddressType::Ipv4Unicast,
                ));
            }
            if c.ipv6 {
                families.push(GracefulRestartAddressFamily::new(
                    true,
                    AddressType::Ipv6Unicast,
                ));
            }
            caps.push(BgpCapability::GracefulRestartCapability(
                GracefulRestartCapability::new(c.restarted, false, time.min(4095), families),
            ));
        }
        let my_as = u16::try_from(c.local_asn).unwrap_or(AS_TRANS);
        BgpMessage::Open(BgpOpenMessage::new(
            my_as,
            c.hold_time,
            c.router_id,
            [BgpOpenMessageParameter::new_capabilities(caps)],
        ))
    }

    /// Feeds one event and returns what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use State::*;
        let mut out = Vec::new();
        match (self.state, event) {
            (Idle, Event::Start) => {
                self.state = Connect;
                out.push(Action::Connect);
            }
            (_, Event::Start) => {}
            (Idle, Event::Stop { .. }) => {}
            (_, Event::Stop { graceful }) => {
                let notify =
                    !graceful && matches!(self.state, OpenSent | OpenConfirm | Established);
                if notify {
                    out.push(Action::Send(BgpMessage::Notification(
                        BgpNotificationMessage::CeaseError(CeaseError::AdministrativeShutdown {
                            value: Box::new([]),
                        }),
                    )));
                }
                self.reset(&mut out, "stopped");
                // A stopped session stays Idle: no reconnect.
                out.retain(|a| !matches!(a, Action::SetTimer(Timer::ConnectRetry, Some(_))));
            }
            (Connect | Active, Event::TcpConnected) => {
                self.state = OpenSent;
                self.sent_open = true;
                out.push(Action::SetTimer(Timer::ConnectRetry, None));
                out.push(Action::Send(self.open_message()));
                out.push(Action::SetTimer(Timer::Hold, Some(OPEN_HOLD)));
            }
            (Connect | Active, Event::TcpFailed(reason)) => {
                self.state = Active;
                out.push(Action::SetTimer(
                    Timer::ConnectRetry,
                    Some(self.retry_delay),
                ));
                self.bump_backoff();
                out.push(Action::Down {
                    reason: format!("connection failed: {reason}"),
                });
            }
            (Connect | Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                self.state = Connect;
                out.push(Action::Connect);
            }
            (OpenSent, Event::Received(BgpMessage::Open(open))) => match self.check_open(&open) {
                Ok(neg) => {
                    self.state = OpenConfirm;
                    out.push(Action::Send(BgpMessage::KeepAlive));
                    self.arm_timers(&neg, &mut out);
                    self.negotiated = Some(neg);
                }
                Err((why, notification)) => {
                    out.push(Action::Send(BgpMessage::Notification(notification)));
                    self.reset(&mut out, &format!("rejected the peer's OPEN: {why}"));
                }
            },
            (OpenConfirm, Event::Received(BgpMessage::KeepAlive)) => {
                self.state = Established;
                self.retry_delay = self.config.connect_retry;
                if let Some(neg) = &self.negotiated {
                    let neg = neg.clone();
                    self.restart_hold(&neg, &mut out);
                    out.push(Action::Established(neg));
                }
            }
            (Established, Event::Received(BgpMessage::KeepAlive) | Event::ReceivedUpdate) => {
                if let Some(neg) = self.negotiated.clone() {
                    self.restart_hold(&neg, &mut out);
                }
            }
            (Established, Event::Received(BgpMessage::Update(_))) => {
                if let Some(neg) = self.negotiated.clone() {
                    self.restart_hold(&neg, &mut out);
                }
            }
            (Established, Event::Received(BgpMessage::RouteRefresh(_))) => {
                out.push(Action::ResendRoutes);
            }
            (OpenConfirm | Established, Event::TimerExpired(Timer::Keepalive)) => {
                out.push(Action::Send(BgpMessage::KeepAlive));
                if let Some(ka) = self.negotiated.as_ref().and_then(|n| n.keepalive) {
                    out.push(Action::SetTimer(Timer::Keepalive, Some(ka)));
                }
            }
            (OpenSent | OpenConfirm | Established, Event::TimerExpired(Timer::Hold)) => {
                out.push(Action::Send(BgpMessage::Notification(
                    BgpNotificationMessage::HoldTimerExpiredError(
                        HoldTimerExpiredError::Unspecific {
                            sub_code: 0,
                            value: Box::new([]),
                        },
                    ),
                )));
                self.reset(&mut out, "hold timer expired");
            }
            (_, Event::Received(BgpMessage::Notification(n))) => {
                let (code, sub) = notification_codes(&n);
                self.reset(
                    &mut out,
                    &format!("peer sent NOTIFICATION code {code} subcode {sub} ({n:?})"),
                );
            }
            (OpenSent | OpenConfirm | Established, Event::TcpFailed(reason)) => {
                self.reset(&mut out, &format!("connection lost: {reason}"));
            }
            (
                OpenSent | OpenConfirm | Established,
                Event::DecodeError {
                    message,
                    notification,
                },
            ) => {
                out.push(Action::Send(BgpMessage::Notification(notification)));
                self.reset(&mut out, &format!("malformed message from peer: {message}"));
            }
            (
                state @ (OpenSent | OpenConfirm | Established),
                Event::Received(_) | Event::ReceivedUpdate,
            ) => {
                let value: Box<[u8]> = Box::new([]);
                let error = match state {
                    OpenSent => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { value }
                    }
                    OpenConfirm => {
                        FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState {
                            value,
                        }
                    }
                    _ => FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState {
                        value,
                    },
                };
                out.push(Action::Send(BgpMessage::Notification(
                    BgpNotificationMessage::FiniteStateMachineError(error),
                )));
                self.reset(
                    &mut out,
                    &format!("unexpected message in state {}", state.as_str()),
                );
            }
            // Stale timers and socket events of a connection already torn down.
            (_, _) => {}
        }
        out
    }

    fn bump_backoff(&mut self) {
        let cap = MAX_BACKOFF.max(self.config.connect_retry);
        self.retry_delay = (self.retry_delay * 2).min(cap);
    }

    /// Tears the connection down and schedules a reconnect.
    fn reset(&mut self, out: &mut Vec<Action>, reason: &str) {
        let was = self.state;
        self.state = State::Active;
        self.negotiated = None;
        self.sent_open = false;
        out.push(Action::Disconnect);
        out.push(Action::SetTimer(Timer::Hold, None));
        out.push(Action::SetTimer(Timer::Keepalive, None));
        out.push(Action::SetTimer(
            Timer::ConnectRetry,
            Some(self.retry_delay),
        ));
        self.bump_backoff();
        out.push(Action::Down {
            reason: format!("{reason} (was {})", was.as_str()),
        });
    }

    fn arm_timers(&self, neg: &Negotiated, out: &mut Vec<Action>) {
        if neg.hold_time == 0 {
            out.push(Action::SetTimer(Timer::Hold, None));
            out.push(Action::SetTimer(Timer::Keepalive, None));
        } else {
            out.push(Action::SetTimer(
                Timer::Hold,
                Some(Duration::from_secs(neg.hold_time.into())),
            ));
            out.push(Action::SetTimer(Timer::Keepalive, neg.keepalive));
        }
    }

    fn restart_hold(&self, neg: &Negotiated, out: &mut Vec<Action>) {
        if neg.hold_time != 0 {
            out.push(Action::SetTimer(
                Timer::Hold,
                Some(Duration::from_secs(neg.hold_time.into())),
            ));
        }
    }

    /// RFC 4271 section 6.2 checks of the peer's OPEN, and the capabilities negotiation.
    fn check_open(
        &self,
        open: &BgpOpenMessage,
    ) -> Result<Negotiated, (String, BgpNotificationMessage)> {
        let c = &self.config;
        if open.version() != 4 {
            return Err((
                format!("unsupported version {}", open.version()),
                BgpNotificationMessage::OpenMessageError(
                    OpenMessageError::UnsupportedVersionNumber {
                        value: Box::new(4u16.to_be_bytes()),
                    },
                ),
            ));
        }
        let caps = open.capabilities();
        let four_octet = caps.iter().find_map(|c| match c {
            BgpCapability::FourOctetAs(f) => Some(f.asn4()),
            _ => None,
        });
        let peer_asn = four_octet.unwrap_or(u32::from(open.my_as()));
        let as_ok = match c.peer_as {
            PeerAs::Fixed(asn) => asn == peer_asn,
            PeerAs::Internal => peer_asn == c.local_asn,
            PeerAs::External => peer_asn != c.local_asn,
        };
        if !as_ok {
            return Err((
                format!(
                    "peer AS {peer_asn} is not the configured one ({:?})",
                    c.peer_as
                ),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs {
                    value: Box::new([]),
                }),
            ));
        }
        let ibgp = peer_asn == c.local_asn;
        let id = open.bgp_id();
        if id.is_unspecified()
            || id.is_broadcast()
            || id.is_multicast()
            || (ibgp && id == c.router_id)
        {
            return Err((
                format!("bad BGP identifier {id}"),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadBgpIdentifier {
                    value: Box::new([]),
                }),
            ));
        }
        let peer_hold = open.hold_time();
        if peer_hold == 1 || peer_hold == 2 {
            return Err((
                format!("unacceptable hold time {peer_hold}"),
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnacceptableHoldTime {
                    value: Box::new([]),
                }),
            ));
        }
        let hold_time = peer_hold.min(c.hold_time);
        let keepalive = (hold_time != 0).then(|| {
            let third = Duration::from_secs(u64::from(hold_time / 3).max(1));
            c.keepalive
                .map_or(third, |k| k.min(third).max(Duration::from_secs(1)))
        });
        let mp: Vec<AddressType> = caps
            .iter()
            .filter_map(|c| match c {
                BgpCapability::MultiProtocolExtensions(m) => Some(m.address_type()),
                _ => None,
            })
            .collect();
        // RFC 4760: a peer that announces no multiprotocol capability speaks IPv4 unicast only.
        let (peer_v4, peer_v6) = if mp.is_empty() {
            (true, false)
        } else {
            (
                mp.contains(&AddressType::Ipv4Unicast),
                mp.contains(&AddressType::Ipv6Unicast),
            )
        };
        let route_refresh = caps.iter().any(|c| {
            matches!(
                c,
                BgpCapability::RouteRefresh | BgpCapability::CiscoRouteRefresh
            )
        });
        let extended_next_hop = c.extended_next_hop
            && caps.iter().any(|c| match c {
                BgpCapability::ExtendedNextHopEncoding(e) => e.encodings().iter().any(|e| {
                    e.address_type() == AddressType::Ipv4Unicast
                        && e.next_hop_afi() == AddressFamily::IPv6
                }),
                _ => false,
            });
        let graceful_restart = c.graceful_restart.is_some()
            && caps
                .iter()
                .any(|c| matches!(c, BgpCapability::GracefulRestartCapability(_)));
        Ok(Negotiated {
            peer_asn,
            peer_id: id,
            hold_time,
            keepalive,
            asn4: four_octet.is_some(),
            ipv4: c.ipv4 && peer_v4,
            ipv6: c.ipv6 && peer_v6,
            extended_next_hop: extended_next_hop && c.ipv4 && peer_v4,
            route_refresh,
            graceful_restart,
            ibgp,
        })
    }
}

/// The (code, subcode) of a NOTIFICATION, for logs.
pub fn notification_codes(n: &BgpNotificationMessage) -> (u8, u8) {
    use BgpNotificationMessage as N;
    let code = match n {
        N::MessageHeaderError(_) => 1,
        N::OpenMessageError(_) => 2,
        N::UpdateMessageError(_) => 3,
        N::HoldTimerExpiredError(_) => 4,
        N::FiniteStateMachineError(_) => 5,
        N::CeaseError(_) => 6,
        N::RouteRefreshError(_) => 7,
    };
    let bytes = super::codec::encode(&BgpMessage::Notification(n.clone()));
    (code, bytes.get(20).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FsmConfig {
        FsmConfig {
            local_asn: 64500,
            peer_as: PeerAs::Fixed(64501),
            router_id: "192.0.2.1".parse().unwrap(),
            hold_time: 90,
            keepalive: None,
            connect_retry: Duration::from_secs(2),
            graceful_restart: Some(120),
            ipv4: true,
            ipv6: true,
            extended_next_hop: false,
            restarted: true,
        }
    }

    fn peer_open(asn: u32, hold: u16, caps: Vec<BgpCapability>) -> BgpMessage {
        let mut caps = caps;
        caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)));
        BgpMessage::Open(BgpOpenMessage::new(
            u16::try_from(asn).unwrap_or(AS_TRANS),
            hold,
            "192.0.2.254".parse().unwrap(),
            [BgpOpenMessageParameter::new_capabilities(caps)],
        ))
    }

    fn mp(t: AddressType) -> BgpCapability {
        BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(t))
    }

    fn established(fsm: &mut Fsm, open: BgpMessage) -> Vec<Action> {
        assert_eq!(fsm.handle(Event::Start), vec![Action::Connect]);
        let a = fsm.handle(Event::TcpConnected);
        assert!(matches!(&a[1], Action::Send(BgpMessage::Open(_))));
        assert_eq!(fsm.state(), State::OpenSent);
        let a = fsm.handle(Event::Received(open));
        assert_eq!(a[0], Action::Send(BgpMessage::KeepAlive), "{a:?}");
        assert_eq!(fsm.state(), State::OpenConfirm);
        fsm.handle(Event::Received(BgpMessage::KeepAlive))
    }

    #[test]
    fn reaches_established_and_negotiates() {
        let mut fsm = Fsm::new(config());
        let a = established(
            &mut fsm,
            peer_open(
                64501,
                30,
                vec![mp(AddressType::Ipv4Unicast), BgpCapability::RouteRefresh],
            ),
        );
        assert_eq!(fsm.state(), State::Established);
        let Some(Action::Established(neg)) = a.last() else {
            panic!("{a:?}")
        };
        assert_eq!(neg.hold_time, 30);
        assert_eq!(neg.keepalive, Some(Duration::from_secs(10)));
        assert!(neg.ipv4 && !neg.ipv6 && neg.asn4 && neg.route_refresh && !neg.ibgp);
        assert!(
            !neg.graceful_restart,
            "the peer did not announce graceful restart"
        );
        assert!(a.contains(&Action::SetTimer(
            Timer::Hold,
            Some(Duration::from_secs(30))
        )));
        // A keepalive restarts the hold timer; a received UPDATE is accepted and ignored.
        assert_eq!(
            fsm.handle(Event::Received(BgpMessage::KeepAlive)),
            vec![Action::SetTimer(Timer::Hold, Some(Duration::from_secs(30)))]
        );
        assert_eq!(fsm.handle(Event::ReceivedUpdate).len(), 1);
        assert_eq!(fsm.state(), State::Established);
        // ROUTE-REFRESH asks for everything again.
        let rr = BgpMessage::RouteRefresh(
            netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage::new(
                AddressType::Ipv4Unicast,
                netgauze_bgp_pkt::iana::RouteRefreshSubcode::NormalRequest,
            ),
        );
        assert_eq!(fsm.handle(Event::Received(rr)), vec![Action::ResendRoutes]);
    }

    #[test]
    fn extended_next_hop_is_used_only_when_both_sides_offer_it() {
        let enhe =
            BgpCapability::ExtendedNextHopEncoding(ExtendedNextHopEncodingCapability::new(vec![
                ExtendedNextHopEncoding::new(AddressType::Ipv4Unicast, AddressFamily::IPv6),
            ]));
        let ours = FsmConfig {
            extended_next_hop: true,
            ..config()
        };
        let BgpMessage::Open(open) = Fsm::new(ours.clone()).open_message() else {
            panic!()
        };
        assert!(open.capabilities().contains(&&enhe));
        let negotiate = |config: FsmConfig, caps: Vec<BgpCapability>| {
            let mut fsm = Fsm::new(config);
            let a = established(&mut fsm, peer_open(64501, 90, caps));
            let Some(Action::Established(neg)) = a.last() else {
                panic!("{a:?}")
            };
            neg.extended_next_hop
        };
        let v4 = mp(AddressType::Ipv4Unicast);
        assert!(negotiate(ours.clone(), vec![v4.clone(), enhe.clone()]));
        // The peer did not offer it: IPv4 routes need an IPv4 next hop.
        assert!(!negotiate(ours.clone(), vec![v4.clone()]));
        // Offered for another family only.
        let other =
            BgpCapability::ExtendedNextHopEncoding(ExtendedNextHopEncodingCapability::new(vec![
                ExtendedNextHopEncoding::new(AddressType::Ipv4Multicast, AddressFamily::IPv6),
            ]));
        assert!(!negotiate(ours, vec![v4.clone(), other]));
        // Not asked for by us: never used, and not offered.
        let BgpMessage::Open(open) = Fsm::new(config()).open_message() else {
            panic!()
        };
        assert!(!open.capabilities().contains(&&enhe));
        assert!(!negotiate(config(), vec![v4, enhe]));
    }

    #[test]
    fn open_carries_capabilities() {
        let fsm = Fsm::new(FsmConfig {
            local_asn: 65540,
            ..config()
        });
        let BgpMessage::Open(open) = fsm.open_message() else {
            panic!()
        };
        assert_eq!(open.my_as(), AS_TRANS);
        assert_eq!(open.my_asn4(), 65540);
        assert_eq!(open.hold_time(), 90);
        let caps = open.capabilities();
        assert!(caps.contains(&&mp(AddressType::Ipv4Unicast)));
        assert!(caps.contains(&&mp(AddressType::Ipv6Unicast)));
        assert!(caps.contains(&&BgpCapability::RouteRefresh));
        let gr = caps
            .iter()
            .find_map(|c| match c {
                BgpCapability::GracefulRestartCapability(g) => Some(g.clone()),
                _ => None,
            })
            .expect("graceful restart capability");
        assert!(gr.restart());
        assert_eq!(gr.time(), 120);
        assert!(gr.address_families().iter().all(|f| f.forwarding_state()));
    }

    #[test]
    fn bad_peer_as_gets_open_error() {
        let mut fsm = Fsm::new(config());
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let a = fsm.handle(Event::Received(peer_open(64999, 90, vec![])));
        assert_eq!(
            a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs {
                    value: Box::new([])
                })
            ))
        );
        assert!(a.contains(&Action::Disconnect));
        assert!(a.contains(&Action::SetTimer(
            Timer::ConnectRetry,
            Some(Duration::from_secs(2))
        )));
        assert_eq!(fsm.state(), State::Active);
        // The retry timer brings it back to Connect.
        assert_eq!(
            fsm.handle(Event::TimerExpired(Timer::ConnectRetry)),
            vec![Action::Connect]
        );
        assert_eq!(fsm.state(), State::Connect);
    }

    #[test]
    fn ibgp_and_external_matching() {
        let mut fsm = Fsm::new(FsmConfig {
            peer_as: PeerAs::Internal,
            ..config()
        });
        let a = established(&mut fsm, peer_open(64500, 90, vec![]));
        let Some(Action::Established(neg)) = a.last() else {
            panic!("{a:?}")
        };
        assert!(
            neg.ibgp && neg.ipv4 && !neg.ipv6,
            "no MP capability means IPv4 only"
        );
        let mut fsm = Fsm::new(FsmConfig {
            peer_as: PeerAs::External,
            ..config()
        });
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let a = fsm.handle(Event::Received(peer_open(64500, 90, vec![])));
        assert!(matches!(
            &a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { .. })
            ))
        ));
    }

    #[test]
    fn hold_time_zero_and_unacceptable() {
        let mut fsm = Fsm::new(config());
        let a = established(&mut fsm, peer_open(64501, 0, vec![]));
        let Some(Action::Established(neg)) = a.last() else {
            panic!()
        };
        assert_eq!((neg.hold_time, neg.keepalive), (0, None));
        assert!(
            !a.iter()
                .any(|x| matches!(x, Action::SetTimer(Timer::Hold, Some(_))))
        );

        let mut fsm = Fsm::new(config());
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let a = fsm.handle(Event::Received(peer_open(64501, 2, vec![])));
        assert!(matches!(
            &a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::OpenMessageError(
                    OpenMessageError::UnacceptableHoldTime { .. }
                )
            ))
        ));
    }

    #[test]
    fn configured_keepalive_is_capped_by_hold() {
        let mut fsm = Fsm::new(FsmConfig {
            keepalive: Some(Duration::from_secs(5)),
            ..config()
        });
        let a = established(&mut fsm, peer_open(64501, 90, vec![]));
        let Some(Action::Established(neg)) = a.last() else {
            panic!()
        };
        assert_eq!(neg.keepalive, Some(Duration::from_secs(5)));
        let mut fsm = Fsm::new(FsmConfig {
            keepalive: Some(Duration::from_secs(50)),
            ..config()
        });
        let a = established(&mut fsm, peer_open(64501, 9, vec![]));
        let Some(Action::Established(neg)) = a.last() else {
            panic!()
        };
        assert_eq!(neg.keepalive, Some(Duration::from_secs(3)));
    }

    #[test]
    fn hold_timer_expiry_notifies_and_reconnects() {
        let mut fsm = Fsm::new(config());
        established(&mut fsm, peer_open(64501, 9, vec![]));
        let a = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert!(matches!(
            &a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::HoldTimerExpiredError(_)
            ))
        ));
        assert!(matches!(a.last(), Some(Action::Down { .. })));
        assert_eq!(fsm.state(), State::Active);
        assert!(fsm.negotiated().is_none());
    }

    #[test]
    fn backoff_doubles_and_resets_on_established() {
        let mut fsm = Fsm::new(config());
        fsm.handle(Event::Start);
        let mut delays = Vec::new();
        for _ in 0..7 {
            let a = fsm.handle(Event::TcpFailed("refused".into()));
            delays.extend(a.iter().filter_map(|x| match x {
                Action::SetTimer(Timer::ConnectRetry, Some(d)) => Some(d.as_secs()),
                _ => None,
            }));
            assert_eq!(
                fsm.handle(Event::TimerExpired(Timer::ConnectRetry)),
                vec![Action::Connect]
            );
        }
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60]);
        fsm.handle(Event::TcpConnected);
        fsm.handle(Event::Received(peer_open(64501, 90, vec![])));
        fsm.handle(Event::Received(BgpMessage::KeepAlive));
        let a = fsm.handle(Event::TcpFailed("reset".into()));
        assert!(a.contains(&Action::SetTimer(
            Timer::ConnectRetry,
            Some(Duration::from_secs(2))
        )));
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let mut fsm = Fsm::new(config());
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpConnected);
        let a = fsm.handle(Event::Received(BgpMessage::KeepAlive));
        assert!(matches!(
            &a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::FiniteStateMachineError(
                    FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { .. }
                )
            ))
        ));
        let mut fsm = Fsm::new(config());
        established(&mut fsm, peer_open(64501, 90, vec![]));
        let a = fsm.handle(Event::Received(peer_open(64501, 90, vec![])));
        assert!(matches!(
            &a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::FiniteStateMachineError(
                    FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { .. }
                )
            ))
        ));
    }

    #[test]
    fn peer_notification_and_decode_errors() {
        let mut fsm = Fsm::new(config());
        established(&mut fsm, peer_open(64501, 90, vec![]));
        let n = BgpNotificationMessage::CeaseError(CeaseError::AdministrativeReset {
            value: Box::new([]),
        });
        assert_eq!(notification_codes(&n), (6, 4));
        let a = fsm.handle(Event::Received(BgpMessage::Notification(n)));
        assert!(
            !a.iter().any(|x| matches!(x, Action::Send(_))),
            "no NOTIFICATION in answer to one"
        );
        assert!(a.contains(&Action::Disconnect));
        let mut fsm = Fsm::new(config());
        established(&mut fsm, peer_open(64501, 90, vec![]));
        let notification = BgpNotificationMessage::CeaseError(CeaseError::OutOfResources {
            value: Box::new([]),
        });
        let a = fsm.handle(Event::DecodeError {
            message: "x".into(),
            notification: notification.clone(),
        });
        assert_eq!(a[0], Action::Send(BgpMessage::Notification(notification)));
    }

    #[test]
    fn stop_graceful_sends_no_cease_and_stays_idle() {
        let mut fsm = Fsm::new(config());
        established(&mut fsm, peer_open(64501, 90, vec![]));
        let a = fsm.handle(Event::Stop { graceful: true });
        assert!(!a.iter().any(|x| matches!(x, Action::Send(_))));
        assert!(
            !a.iter()
                .any(|x| matches!(x, Action::SetTimer(Timer::ConnectRetry, Some(_))))
        );
        let mut fsm = Fsm::new(config());
        established(&mut fsm, peer_open(64501, 90, vec![]));
        let a = fsm.handle(Event::Stop { graceful: false });
        assert!(matches!(
            &a[0],
            Action::Send(BgpMessage::Notification(
                BgpNotificationMessage::CeaseError(CeaseError::AdministrativeShutdown { .. })
            ))
        ));
    }
}
