//! The responder's decisions, as pure functions: which interfaces may be used, what a received frame calls for, what a
//! plan change means for each interface, and when a log line about bad input may be written. No sockets here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::Announcements;
use super::codec::{ArpOp, Frame, MacAddr, NDP_HOP_LIMIT, NdpMessage, solicited_node};

/// kube-proxy binds every VIP on this dummy device on every node; answering there would make all nodes claim it.
pub const KUBE_IPVS: &str = "kube-ipvs0";
/// `IFF_NOARP` from `<net/if.h>`.
const IFF_NOARP: u32 = 0x80;

/// Why an interface is never used for announcements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkRefusal {
    KubeIpvs,
    Loopback,
    NoArp,
    NoMac,
    NotFound,
}

impl fmt::Display for LinkRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkRefusal::KubeIpvs => {
                "kube-ipvs0 holds every VIP on every node; announcing there would break strict ARP"
            }
            LinkRefusal::Loopback => "a loopback interface has no link to announce on",
            LinkRefusal::NoArp => "the link is NOARP, so its neighbours do not resolve addresses",
            LinkRefusal::NoMac => "the link has no Ethernet address",
            LinkRefusal::NotFound => "no such interface in this network namespace",
        })
    }
}

/// What the responder knows about a link when it chooses whether to use it.
#[derive(Clone, Debug)]
pub struct LinkFacts<'a> {
    pub name: &'a str,
    pub loopback: bool,
    pub flags: u32,
    pub mac: Option<MacAddr>,
}

/// Returns the MAC to answer with, or why the link must not be used.
pub fn check_link(link: &LinkFacts<'_>) -> Result<MacAddr, LinkRefusal> {
    if link.name == KUBE_IPVS {
        return Err(LinkRefusal::KubeIpvs);
    }
    if link.loopback {
        return Err(LinkRefusal::Loopback);
    }
    if link.flags & IFF_NOARP != 0 {
        return Err(LinkRefusal::NoArp);
    }
    match link.mac {
        Some(mac) if mac != MacAddr::ZERO => Ok(mac),
        _ => Err(LinkRefusal::NoMac),
    }
}

/// What a received frame calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not about a VIP owned on this interface, or our own frame seen on the way out.
    Ignore,
    /// A request for an owned VIP: send this answer.
    Answer(Frame),
    /// Another station claims an owned VIP. We keep answering: a spoofed frame must not silence the owner.
    Conflict { vip: IpAddr, mac: MacAddr },
    /// Fails a validity rule of RFC 4861 §7.1 although it decoded.
    Invalid(&'static str),
}

fn is_group(mac: MacAddr) -> bool {
    mac.0[0] & 1 == 1
}

/// Decides what `frame`, received on an interface with address `own` that announces `owned`, calls for.
pub fn decide(frame: &Frame, own: MacAddr, owned: &BTreeSet<IpAddr>) -> Verdict {
    if frame.eth_src() == own {
        return Verdict::Ignore;
    }
    match frame {
        Frame::Arp(arp) => {
            if arp.op == ArpOp::Request
                && !arp.is_gratuitous()
                && owned.contains(&IpAddr::V4(arp.target_ip))
            {
                if is_group(arp.sender_mac) {
                    return Verdict::Invalid("ARP request from a group MAC");
                }
                return Verdict::Answer(Frame::Arp(arp.reply_from(own)));
            }
            // A gratuitous request or any reply whose sender binding names an owned VIP is a competing claim.
            let claims = arp.is_gratuitous() || arp.op == ArpOp::Reply;
            if claims && owned.contains(&IpAddr::V4(arp.sender_ip)) && arp.sender_mac != own {
                return Verdict::Conflict {
                    vip: IpAddr::V4(arp.sender_ip),
                    mac: arp.sender_mac,
                };
            }
            Verdict::Ignore
        }
        Frame::Ndp(ndp) => {
            if !owned.contains(&IpAddr::V6(ndp.target())) {
                return Verdict::Ignore;
            }
            if ndp.hop_limit != NDP_HOP_LIMIT {
                return Verdict::Invalid("NDP hop limit is not 255");
            }
            match ndp.message {
                NdpMessage::Solicitation { target, source_mac } => {
                    if ndp.src.is_unspecified() {
                        // RFC 4861 §7.1.1: a DAD probe goes to the solicited-node group and carries no source option.
                        if source_mac.is_some() {
                            return Verdict::Invalid("DAD probe with a source link-layer option");
                        }
                        if ndp.dst != solicited_node(target) {
                            return Verdict::Invalid(
                                "DAD probe not sent to the solicited-node group",
                            );
                        }
                    } else if is_group(source_mac.unwrap_or(ndp.eth_src)) {
                        return Verdict::Invalid("solicitation from a group MAC");
                    }
                    match ndp.advertisement_from(own) {
                        Some(na) => Verdict::Answer(Frame::Ndp(na)),
                        None => Verdict::Ignore,
                    }
                }
                NdpMessage::Advertisement {
                    target, target_mac, ..
                } => {
                    let mac = target_mac.unwrap_or(ndp.eth_src);
                    if mac != own {
                        Verdict::Conflict {
                            vip: IpAddr::V6(target),
                            mac,
                        }
                    } else {
                        Verdict::Ignore
                    }
                }
            }
        }
    }
}

/// The VIPs to answer for on each interface, each with whether it gives way to another station's claim
/// ([`super::Announce::yields`]).
pub fn per_interface(plan: &Announcements) -> BTreeMap<String, BTreeMap<IpAddr, bool>> {
    let mut out: BTreeMap<String, BTreeMap<IpAddr, bool>> = BTreeMap::new();
    for (vip, announce) in &plan.vips {
        for interface in &announce.interfaces {
            out.entry(interface.clone())
                .or_default()
                .insert(*vip, announce.yields);
        }
    }
    out
}

/// How long a claim by another station is remembered. A node handing a VIP over and the node taking it decide
/// from the same event, each in its own pass: the new owner's gratuitous announcement may arrive a little before the
/// old owner's plan lets the VIP go. Short, so that a stale claim (a node resuming from a pause) is not held
/// against a hand-off that comes later.
pub const CLAIM_MEMORY: Duration = Duration::from_millis(300);

/// What one interface answers for, shared by the control task (which follows the plan) and the receive thread
/// (which sees other stations' claims).
///
/// A VIP that *yields* is one this node still answers for while another node takes it (make before break), or
/// one it keeps only for want of news (cut off from gossip). It stops answering for it the moment another station
/// claims it with a gratuitous ARP or an unsolicited neighbour advertisement: that is the new owner taking over, seen
/// on the wire, well before the new owner's `announced-by` reaches this node through the API. Two nodes then answer
/// for one VIP for well under a millisecond instead of a round trip through the API. A spoofed claim can make it
/// stop early, which costs only that head start: the VIP is leaving this node anyway. A VIP that does not yield keeps
/// being answered whatever is claimed, so a spoofed frame cannot silence its owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answering {
    /// The VIPs answered for.
    pub owned: BTreeSet<IpAddr>,
    /// Of the VIPs the plan lists, those that yield to a claim.
    yielding: BTreeSet<IpAddr>,
    /// Yielding VIPs another station claimed: not answered while the plan still lists them as yielding.
    yielded: BTreeSet<IpAddr>,
    /// The latest claim by another station to each VIP of the plan, for [`CLAIM_MEMORY`].
    claims: BTreeMap<IpAddr, Instant>,
}

impl Answering {
    /// Follows the plan for this interface (`wanted`: each VIP and whether it yields). Returns the VIPs answered for
    /// now that were not before: they get a gratuitous announcement.
    pub fn follow(&mut self, wanted: &BTreeMap<IpAddr, bool>, now: Instant) -> Vec<IpAddr> {
        self.claims.retain(|vip, at| {
            wanted.contains_key(vip) && now.saturating_duration_since(*at) < CLAIM_MEMORY
        });
        self.yielding = wanted
            .iter()
            .filter(|(_, y)| **y)
            .map(|(v, _)| *v)
            .collect();
        // A VIP the plan no longer lists, or lists as plainly owned again, forgets that it yielded.
        self.yielded.retain(|vip| self.yielding.contains(vip));
        let claimed: Vec<IpAddr> = self
            .yielding
            .iter()
            .filter(|vip| self.claims.contains_key(vip))
            .copied()
            .collect();
        self.yielded.extend(claimed);
        let next: BTreeSet<IpAddr> = wanted
            .keys()
            .filter(|vip| !self.yielded.contains(vip))
            .copied()
            .collect();
        let new = next.difference(&self.owned).copied().collect();
        self.owned = next;
        new
    }

    /// Stops answering for the VIPs `wanted` no longer lists, and only that: done first, before any socket is opened.
    pub fn release(&mut self, wanted: &BTreeMap<IpAddr, bool>) {
        self.owned.retain(|vip| wanted.contains_key(vip));
    }

    /// Another station claimed `vip`. Returns true when this interface stopped answering for it.
    pub fn claimed(&mut self, vip: IpAddr, now: Instant) -> bool {
        if !self.owned.contains(&vip) {
            return false;
        }
        self.claims.insert(vip, now);
        if !self.yielding.contains(&vip) {
            return false;
        }
        self.owned.remove(&vip);
        self.yielded.insert(vip);
        true
    }

    /// Stops answering for everything (the interface is going away).
    pub fn clear(&mut self) {
        *self = Answering::default();
    }
}

/// Admits at most `burst` log lines per `window` and counts the rest, so a flood of bad frames cannot flood the logs.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        LogLimiter {
            burst,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were suppressed since the last one written.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let expired = match self.window_start {
            Some(start) => now.saturating_duration_since(start) >= self.window,
            None => true,
        };
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arp::Announce;
    use crate::arp::codec::{ALL_NODES, ArpPacket, NaFlags, NdpPacket};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NODE: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const CLIENT: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const ATTACKER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x66]);
    const VIP4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

    fn owned() -> BTreeSet<IpAddr> {
        [IpAddr::V4(VIP4), IpAddr::V6(VIP6)].into()
    }

    fn request(target: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            eth_dst: MacAddr::BROADCAST,
            eth_src: CLIENT,
            op: ArpOp::Request,
            sender_mac: CLIENT,
            sender_ip: Ipv4Addr::new(198, 51, 100, 1),
            target_mac: MacAddr::ZERO,
            target_ip: target,
        }
    }

    fn solicitation(src: Ipv6Addr, source_mac: Option<MacAddr>) -> NdpPacket {
        NdpPacket {
            eth_dst: MacAddr::ipv6_multicast(solicited_node(VIP6)),
            eth_src: CLIENT,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 255,
            src,
            dst: solicited_node(VIP6),
            message: NdpMessage::Solicitation {
                target: VIP6,
                source_mac,
            },
        }
    }

    #[test]
    fn answers_arp_for_owned_vip_only() {
        let Verdict::Answer(Frame::Arp(reply)) = decide(&Frame::Arp(request(VIP4)), NODE, &owned())
        else {
            panic!("no answer")
        };
        assert_eq!(
            (reply.op, reply.eth_dst, reply.sender_mac, reply.sender_ip),
            (ArpOp::Reply, CLIENT, NODE, VIP4)
        );
        let other = Ipv4Addr::new(198, 51, 100, 11);
        assert_eq!(
            decide(&Frame::Arp(request(other)), NODE, &owned()),
            Verdict::Ignore
        );
        assert_eq!(
            decide(&Frame::Arp(request(VIP4)), NODE, &BTreeSet::new()),
            Verdict::Ignore
        );
    }

    #[test]
    fn rfc5227_probe_is_answered() {
        let mut probe = request(VIP4);
        probe.sender_ip = Ipv4Addr::UNSPECIFIED;
        let Verdict::Answer(Frame::Arp(reply)) = decide(&Frame::Arp(probe), NODE, &owned()) else {
            panic!()
        };
        assert_eq!(
            (reply.target_ip, reply.target_mac),
            (Ipv4Addr::UNSPECIFIED, CLIENT)
        );
    }

    #[test]
    fn own_frames_are_ignored() {
        let garp = ArpPacket::gratuitous_request(NODE, VIP4);
        assert_eq!(decide(&Frame::Arp(garp), NODE, &owned()), Verdict::Ignore);
        let na = NdpPacket::unsolicited_advertisement(NODE, VIP6);
        assert_eq!(decide(&Frame::Ndp(na), NODE, &owned()), Verdict::Ignore);
    }

    #[test]
    fn spoofed_claims_are_conflicts_and_do_not_change_later_answers() {
        let vip = IpAddr::V4(VIP4);
        for spoof in [
            ArpPacket::gratuitous_request(ATTACKER, VIP4),
            ArpPacket::gratuitous_reply(ATTACKER, VIP4),
        ] {
            assert_eq!(
                decide(&Frame::Arp(spoof), NODE, &owned()),
                Verdict::Conflict { vip, mac: ATTACKER }
            );
        }
        let na = NdpPacket::unsolicited_advertisement(ATTACKER, VIP6);
        assert_eq!(
            decide(&Frame::Ndp(na), NODE, &owned()),
            Verdict::Conflict {
                vip: IpAddr::V6(VIP6),
                mac: ATTACKER
            }
        );
        // decide keeps no state, so the next request is answered as before.
        assert!(matches!(
            decide(&Frame::Arp(request(VIP4)), NODE, &owned()),
            Verdict::Answer(_)
        ));
    }

    #[test]
    fn requests_from_group_macs_are_not_answered() {
        let mut req = request(VIP4);
        req.sender_mac = MacAddr::BROADCAST;
        assert!(matches!(
            decide(&Frame::Arp(req), NODE, &owned()),
            Verdict::Invalid(_)
        ));
    }

    #[test]
    fn solicitation_is_answered_unicast_with_solicited_and_override() {
        let ns = solicitation("fe80::1".parse().unwrap(), Some(CLIENT));
        let Verdict::Answer(Frame::Ndp(na)) = decide(&Frame::Ndp(ns), NODE, &owned()) else {
            panic!()
        };
        assert_eq!((na.eth_dst, na.dst, na.src), (CLIENT, ns.src, VIP6));
        assert_eq!(
            na.message,
            NdpMessage::Advertisement {
                flags: NaFlags {
                    router: false,
                    solicited: true,
                    override_: true
                },
                target: VIP6,
                target_mac: Some(NODE),
            }
        );
    }

    #[test]
    fn ndp_validity_rules() {
        let mut ns = solicitation("fe80::1".parse().unwrap(), Some(CLIENT));
        ns.hop_limit = 254;
        assert!(matches!(
            decide(&Frame::Ndp(ns), NODE, &owned()),
            Verdict::Invalid(_)
        ));

        let dad_with_option = solicitation(Ipv6Addr::UNSPECIFIED, Some(CLIENT));
        assert!(matches!(
            decide(&Frame::Ndp(dad_with_option), NODE, &owned()),
            Verdict::Invalid(_)
        ));

        let mut dad_unicast = solicitation(Ipv6Addr::UNSPECIFIED, None);
        dad_unicast.dst = VIP6;
        assert!(matches!(
            decide(&Frame::Ndp(dad_unicast), NODE, &owned()),
            Verdict::Invalid(_)
        ));

        let dad = solicitation(Ipv6Addr::UNSPECIFIED, None);
        let Verdict::Answer(Frame::Ndp(na)) = decide(&Frame::Ndp(dad), NODE, &owned()) else {
            panic!()
        };
        assert_eq!(na.dst, ALL_NODES);
    }

    #[test]
    fn refused_links() {
        let link = |name, loopback, flags, mac| LinkFacts {
            name,
            loopback,
            flags,
            mac,
        };
        assert_eq!(
            check_link(&link("kube-ipvs0", false, 0, Some(NODE))),
            Err(LinkRefusal::KubeIpvs)
        );
        assert_eq!(
            check_link(&link("lo", true, 0, Some(MacAddr::ZERO))),
            Err(LinkRefusal::Loopback)
        );
        assert_eq!(
            check_link(&link("wg0", false, IFF_NOARP, None)),
            Err(LinkRefusal::NoArp)
        );
        assert_eq!(
            check_link(&link("tun0", false, 0, None)),
            Err(LinkRefusal::NoMac)
        );
        assert_eq!(
            check_link(&link("eth0", false, 0x1003, Some(NODE))),
            Ok(NODE)
        );
    }

    #[test]
    fn plan_is_grouped_by_interface() {
        let mut plan = Announcements::default();
        let a = IpAddr::V4(VIP4);
        let b = IpAddr::V6(VIP6);
        plan.vips.insert(
            a,
            Announce {
                interfaces: ["eth0".into(), "eth1".into()].into(),
                since: None,
                yields: false,
            },
        );
        plan.vips.insert(
            b,
            Announce {
                interfaces: ["eth1".into()].into(),
                since: None,
                yields: true,
            },
        );
        let by_if = per_interface(&plan);
        assert_eq!(by_if["eth0"], [(a, false)].into());
        assert_eq!(by_if["eth1"], [(a, false), (b, true)].into());
    }

    fn wanted(list: &[(IpAddr, bool)]) -> BTreeMap<IpAddr, bool> {
        list.iter().copied().collect()
    }

    #[test]
    fn a_yielding_vip_stops_being_answered_at_the_first_claim_and_a_plain_one_never() {
        let t0 = Instant::now();
        let (kept, leaving) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6));
        let mut a = Answering::default();
        assert_eq!(
            a.follow(&wanted(&[(kept, false), (leaving, false)]), t0),
            [kept, leaving]
        );
        // The plan hands `leaving` over: still answered (make before break), nothing new to announce.
        assert!(
            a.follow(&wanted(&[(kept, false), (leaving, true)]), t0)
                .is_empty()
        );
        assert_eq!(a.owned, [kept, leaving].into());
        // Claims: the plain VIP stays, the yielding one goes at once.
        assert!(!a.claimed(kept, t0));
        assert!(a.claimed(leaving, t0));
        assert_eq!(a.owned, [kept].into());
        // Later passes that still list it as yielding do not bring it back, even after the claim is forgotten.
        let later = t0 + CLAIM_MEMORY * 2;
        assert!(
            a.follow(&wanted(&[(kept, false), (leaving, true)]), later)
                .is_empty()
        );
        assert_eq!(a.owned, [kept].into());
        // The new owner's `announced-by` arrives: the plan drops it, and nothing is left of it.
        assert!(a.follow(&wanted(&[(kept, false)]), later).is_empty());
        assert_eq!(
            a,
            Answering {
                owned: [kept].into(),
                ..Answering::default()
            }
        );
        // A claim to a VIP not answered for changes nothing.
        assert!(!a.claimed(leaving, later));
        assert!(a.follow(&wanted(&[(kept, false)]), later).is_empty());
        assert_eq!(a.owned, [kept].into());
    }

    #[test]
    fn a_claim_seen_just_before_the_plan_lets_go_yields_at_once_and_an_old_one_does_not() {
        let t0 = Instant::now();
        let vip = IpAddr::V4(VIP4);
        let mut a = Answering::default();
        assert_eq!(a.follow(&wanted(&[(vip, false)]), t0), [vip]);
        // The new owner's announcement arrives first: kept, as it is plainly owned...
        assert!(!a.claimed(vip, t0));
        // ...and the pass that hands it over comes shortly after: given up at once.
        assert!(
            a.follow(&wanted(&[(vip, true)]), t0 + CLAIM_MEMORY / 2)
                .is_empty()
        );
        assert!(a.owned.is_empty());
        // The move is undone (the plan owns it plainly again): answered, and announced again.
        assert_eq!(a.follow(&wanted(&[(vip, false)]), t0 + CLAIM_MEMORY), [vip]);

        // A claim older than the memory (a node that resumed from a pause and announced what it no longer owns)
        // does not cut a later hand-off short.
        let mut b = Answering::default();
        b.follow(&wanted(&[(vip, false)]), t0);
        assert!(!b.claimed(vip, t0));
        assert!(
            b.follow(&wanted(&[(vip, true)]), t0 + CLAIM_MEMORY)
                .is_empty()
        );
        assert_eq!(b.owned, [vip].into());
    }

    #[test]
    fn log_limiter_admits_a_burst_per_window_and_reports_what_it_held_back() {
        let t0 = Instant::now();
        let mut limiter = LogLimiter::new(2, Duration::from_secs(10));
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(limiter.admit(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(limiter.admit(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(limiter.admit(t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(limiter.admit(t0 + Duration::from_secs(11)), None);
    }
}
