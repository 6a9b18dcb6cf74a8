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

/// The VIPs to answer for on each interface.
pub fn per_interface(plan: &Announcements) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for (vip, announce) in &plan.vips {
        for interface in &announce.interfaces {
            out.entry(interface.clone()).or_default().insert(*vip);
        }
    }
    out
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
            },
        );
        plan.vips.insert(
            b,
            Announce {
                interfaces: ["eth1".into()].into(),
                since: None,
            },
        );
        let by_if = per_interface(&plan);
        assert_eq!(by_if["eth0"], [a].into());
        assert_eq!(by_if["eth1"], [a, b].into());
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
