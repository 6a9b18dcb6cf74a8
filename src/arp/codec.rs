//! The wire codec for the frames the responder reads and writes: Ethernet II carrying ARP (RFC 826, including the
//! gratuitous forms of RFC 5227 §3) or IPv6 ICMPv6 neighbour solicitation / advertisement (RFC 4861 §4.3, §4.4).
//!
//! It is pure: bytes in, values out, and back. It never touches a socket and never panics on input; every read is
//! bounds-checked and anything short or inconsistent is a [`DecodeError`]. Frames that are simply not ARP or NDP
//! (IPv4 traffic, other ICMPv6 types) are errors too, but [`DecodeError::is_malformed`] tells them apart from
//! broken ones, so the responder counts only the latter.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETH_HEADER_LEN: usize = 14;
/// ARP for Ethernet/IPv4: 8 bytes of fixed header, two 6-byte MACs and two 4-byte addresses.
const ARP_LEN: usize = 28;
const IPV6_HEADER_LEN: usize = 40;
const NEXT_HEADER_ICMPV6: u8 = 58;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
/// Type, code, checksum, 4 bytes of reserved/flags, 16 bytes of target address.
const ND_FIXED_LEN: usize = 24;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// Hop limit every NDP message must carry (RFC 4861 §7.1.1); a router would have decremented it.
pub const NDP_HOP_LIMIT: u8 = 255;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The Ethernet group address an IPv6 multicast address maps to (RFC 2464 §7): 33:33 and the low 32 bits.
    pub fn ipv6_multicast(ip: Ipv6Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The solicited-node multicast address of `ip` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX with its low 24 bits.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The all-nodes multicast address, destination of unsolicited advertisements (RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Why a byte string is not a frame this codec understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{layer} truncated: need {need} bytes, have {have}")]
    Truncated {
        layer: &'static str,
        need: usize,
        have: usize,
    },
    #[error("ethertype {0:#06x} is neither ARP nor IPv6")]
    OtherEtherType(u16),
    #[error(
        "ARP for hardware type {htype}, protocol {ptype:#06x}, lengths {hlen}/{plen}: only Ethernet/IPv4"
    )]
    UnsupportedArp {
        htype: u16,
        ptype: u16,
        hlen: u8,
        plen: u8,
    },
    #[error("ARP operation {0} is neither request (1) nor reply (2)")]
    ArpOperation(u16),
    #[error("IP version {0} in an IPv6 ethertype frame")]
    IpVersion(u8),
    #[error("IPv6 next header {0} is not ICMPv6")]
    NotIcmpv6(u8),
    #[error("ICMPv6 type {0} is not a neighbour solicitation or advertisement")]
    NotNdp(u8),
    #[error("ICMPv6 code {0} on an NDP message; it must be 0 (RFC 4861 §7.1)")]
    NdpCode(u8),
    #[error("ICMPv6 checksum {found:#06x}, computed {computed:#06x}")]
    Checksum { found: u16, computed: u16 },
    #[error("NDP option of length zero (RFC 4861 §4.6 says discard)")]
    ZeroLengthOption,
    #[error("NDP option type {kind} overruns the message")]
    OptionOverrun { kind: u8 },
}

impl DecodeError {
    /// True when the frame claimed to be ARP or NDP but is broken; false when it is just some other traffic that a
    /// promiscuous packet socket also sees.
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            DecodeError::OtherEtherType(_) | DecodeError::NotIcmpv6(_) | DecodeError::NotNdp(_)
        )
    }
}

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An ARP packet for Ethernet/IPv4 with its Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArpPacket {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub op: ArpOp,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// A gratuitous request (RFC 5227 §3 "ARP Announcement"): broadcast, sender and target IP both the VIP. The target
    /// MAC is broadcast, as `arping -U` sends it and Linux accepts it.
    pub fn gratuitous_request(mac: MacAddr, ip: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            eth_dst: MacAddr::BROADCAST,
            eth_src: mac,
            op: ArpOp::Request,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: MacAddr::BROADCAST,
            target_ip: ip,
        }
    }

    /// A gratuitous reply, as `arping -A` sends it: broadcast, sender and target both this node's MAC and the VIP.
    pub fn gratuitous_reply(mac: MacAddr, ip: Ipv4Addr) -> ArpPacket {
        ArpPacket {
            eth_dst: MacAddr::BROADCAST,
            eth_src: mac,
            op: ArpOp::Reply,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: mac,
            target_ip: ip,
        }
    }

    /// True for the announcement forms: a host telling everyone its own binding rather than asking.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// The reply `mac` gives to this request: unicast back to the asker, as the kernel answers.
    pub fn reply_from(&self, mac: MacAddr) -> ArpPacket {
        ArpPacket {
            eth_dst: self.sender_mac,
            eth_src: mac,
            op: ArpOp::Reply,
            sender_mac: mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }
}

/// Flags of a neighbour advertisement (RFC 4861 §4.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NaFlags {
    pub router: bool,
    pub solicited: bool,
    pub override_: bool,
}

/// The ICMPv6 body of an NDP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NdpMessage {
    Solicitation {
        target: Ipv6Addr,
        /// The source link-layer address option, absent in DAD probes.
        source_mac: Option<MacAddr>,
    },
    Advertisement {
        flags: NaFlags,
        target: Ipv6Addr,
        /// The target link-layer address option.
        target_mac: Option<MacAddr>,
    },
}

/// An NDP packet with its Ethernet and IPv6 headers. Options other than the link-layer ones (nonce, MTU) are skipped
/// when decoding and never written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NdpPacket {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub traffic_class: u8,
    /// 20 bits; higher bits are dropped when encoding.
    pub flow_label: u32,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub message: NdpMessage,
}

impl NdpPacket {
    /// The target of the solicitation or advertisement.
    pub fn target(&self) -> Ipv6Addr {
        match self.message {
            NdpMessage::Solicitation { target, .. } | NdpMessage::Advertisement { target, .. } => {
                target
            }
        }
    }

    /// An unsolicited advertisement with Override set to all-nodes (RFC 4861 §7.2.6), the IPv6 analogue of a
    /// gratuitous ARP.
    pub fn unsolicited_advertisement(mac: MacAddr, ip: Ipv6Addr) -> NdpPacket {
        NdpPacket {
            eth_dst: MacAddr::ipv6_multicast(ALL_NODES),
            eth_src: mac,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: NDP_HOP_LIMIT,
            src: ip,
            dst: ALL_NODES,
            message: NdpMessage::Advertisement {
                flags: NaFlags {
                    router: false,
                    solicited: false,
                    override_: true,
                },
                target: ip,
                target_mac: Some(mac),
            },
        }
    }

    /// The advertisement `mac` sends in answer to this solicitation (RFC 4861 §7.2.4): unicast with Solicited and
    /// Override to the asker, or, for a DAD probe from the unspecified address, to all-nodes without Solicited.
    /// Returns `None` when `self` is not a solicitation.
    pub fn advertisement_from(&self, mac: MacAddr) -> Option<NdpPacket> {
        let NdpMessage::Solicitation { target, source_mac } = self.message else {
            return None;
        };
        let (dst, eth_dst, solicited) = if self.src.is_unspecified() {
            (ALL_NODES, MacAddr::ipv6_multicast(ALL_NODES), false)
        } else {
            (self.src, source_mac.unwrap_or(self.eth_src), true)
        };
        Some(NdpPacket {
            eth_dst,
            eth_src: mac,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: NDP_HOP_LIMIT,
            src: target,
            dst,
            message: NdpMessage::Advertisement {
                flags: NaFlags {
                    router: false,
                    solicited,
                    override_: true,
                },
                target,
                target_mac: Some(mac),
            },
        })
    }
}

/// A frame the responder understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    Arp(ArpPacket),
    Ndp(NdpPacket),
}

impl Frame {
    /// Decodes an Ethernet II frame. Trailing bytes (Ethernet padding) are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        let eth = take(bytes, 0, ETH_HEADER_LEN, "Ethernet header")?;
        let eth_dst = mac_at(eth, 0);
        let eth_src = mac_at(eth, 6);
        let ethertype = u16_at(eth, 12);
        let payload = bytes.get(ETH_HEADER_LEN..).unwrap_or_default();
        match ethertype {
            ETHERTYPE_ARP => decode_arp(eth_dst, eth_src, payload).map(Frame::Arp),
            ETHERTYPE_IPV6 => decode_ndp(eth_dst, eth_src, payload).map(Frame::Ndp),
            other => Err(DecodeError::OtherEtherType(other)),
        }
    }

    /// Encodes the frame, without Ethernet padding (the kernel sends 42-byte ARP frames the same way).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Arp(arp) => encode_arp(arp),
            Frame::Ndp(ndp) => encode_ndp(ndp),
        }
    }

    /// The Ethernet source address.
    pub fn eth_src(&self) -> MacAddr {
        match self {
            Frame::Arp(a) => a.eth_src,
            Frame::Ndp(n) => n.eth_src,
        }
    }
}

/// A cheap test on the ethertype, so the receive loop skips ordinary traffic without decoding it.
pub fn may_be_arp_or_ndp(bytes: &[u8]) -> bool {
    matches!(bytes.get(12..14), Some([0x08, 0x06]) | Some([0x86, 0xdd]))
}

fn take<'a>(
    bytes: &'a [u8],
    at: usize,
    len: usize,
    layer: &'static str,
) -> Result<&'a [u8], DecodeError> {
    bytes
        .get(at..at.saturating_add(len))
        .ok_or(DecodeError::Truncated {
            layer,
            need: at.saturating_add(len),
            have: bytes.len(),
        })
}

// The helpers below index slices whose length the caller has already checked with `take`.
fn mac_at(b: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    MacAddr(m)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

fn decode_arp(
    eth_dst: MacAddr,
    eth_src: MacAddr,
    payload: &[u8],
) -> Result<ArpPacket, DecodeError> {
    let p = take(payload, 0, ARP_LEN, "ARP packet")?;
    let (htype, ptype, hlen, plen) = (u16_at(p, 0), u16_at(p, 2), p[4], p[5]);
    if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4) {
        return Err(DecodeError::UnsupportedArp {
            htype,
            ptype,
            hlen,
            plen,
        });
    }
    let op = match u16_at(p, 6) {
        1 => ArpOp::Request,
        2 => ArpOp::Reply,
        other => return Err(DecodeError::ArpOperation(other)),
    };
    Ok(ArpPacket {
        eth_dst,
        eth_src,
        op,
        sender_mac: mac_at(p, 8),
        sender_ip: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
        target_mac: mac_at(p, 18),
        target_ip: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
    })
}

fn decode_ndp(
    eth_dst: MacAddr,
    eth_src: MacAddr,
    payload: &[u8],
) -> Result<NdpPacket, DecodeError> {
    let ip = take(payload, 0, IPV6_HEADER_LEN, "IPv6 header")?;
    let version = ip[0] >> 4;
    if version != 6 {
        return Err(DecodeError::IpVersion(version));
    }
    let traffic_class = (ip[0] << 4) | (ip[1] >> 4);
    let flow_label = (u32::from(ip[1] & 0x0f) << 16) | (u32::from(ip[2]) << 8) | u32::from(ip[3]);
    let payload_len = usize::from(u16_at(ip, 4));
    let next_header = ip[6];
    let hop_limit = ip[7];
    let src = ipv6_at(ip, 8);
    let dst = ipv6_at(ip, 24);
    if next_header != NEXT_HEADER_ICMPV6 {
        return Err(DecodeError::NotIcmpv6(next_header));
    }
    let icmp = take(payload, IPV6_HEADER_LEN, payload_len, "IPv6 payload")?;
    let kind = *icmp.first().ok_or(DecodeError::Truncated {
        layer: "ICMPv6",
        need: 1,
        have: 0,
    })?;
    if kind != ICMPV6_NS && kind != ICMPV6_NA {
        return Err(DecodeError::NotNdp(kind));
    }
    let fixed = take(icmp, 0, ND_FIXED_LEN, "NDP message")?;
    if fixed[1] != 0 {
        return Err(DecodeError::NdpCode(fixed[1]));
    }
    let found = u16_at(fixed, 2);
    let computed = icmpv6_checksum(src, dst, icmp);
    // Summing a message that carries a correct checksum yields zero after the final complement.
    if computed != 0 {
        let mut zeroed = icmp.to_vec();
        zeroed[2] = 0;
        zeroed[3] = 0;
        return Err(DecodeError::Checksum {
            found,
            computed: icmpv6_checksum(src, dst, &zeroed),
        });
    }
    let target = ipv6_at(fixed, 8);
    let wanted_option = if kind == ICMPV6_NS {
        OPT_SOURCE_LL
    } else {
        OPT_TARGET_LL
    };
    let mac = link_layer_option(icmp.get(ND_FIXED_LEN..).unwrap_or_default(), wanted_option)?;
    let message = if kind == ICMPV6_NS {
        NdpMessage::Solicitation {
            target,
            source_mac: mac,
        }
    } else {
        let f = fixed[4];
        NdpMessage::Advertisement {
            flags: NaFlags {
                router: f & 0x80 != 0,
                solicited: f & 0x40 != 0,
                override_: f & 0x20 != 0,
            },
            target,
            target_mac: mac,
        }
    };
    Ok(NdpPacket {
        eth_dst,
        eth_src,
        traffic_class,
        flow_label,
        hop_limit,
        src,
        dst,
        message,
    })
}

/// Walks the options (RFC 4861 §4.6), bounded by their length, and returns the first link-layer address option of
/// `wanted` type. Options whose length is not the 8 bytes of an Ethernet address are skipped, as foreign link types.
fn link_layer_option(mut options: &[u8], wanted: u8) -> Result<Option<MacAddr>, DecodeError> {
    let mut found = None;
    while !options.is_empty() {
        let head = take(options, 0, 2, "NDP option")?;
        let (kind, units) = (head[0], usize::from(head[1]));
        if units == 0 {
            return Err(DecodeError::ZeroLengthOption);
        }
        let opt = options
            .get(..units * 8)
            .ok_or(DecodeError::OptionOverrun { kind })?;
        if kind == wanted && units == 1 && found.is_none() {
            found = Some(mac_at(opt, 2));
        }
        options = &options[units * 8..];
    }
    Ok(found)
}

/// The ICMPv6 checksum (RFC 4443 §2.3) over the pseudo-header of RFC 8200 §8.1 and `message` as given.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = match pair {
                [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                [hi] => u16::from_be_bytes([*hi, 0]),
                _ => 0,
            };
            sum = sum.wrapping_add(u32::from(word));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer length fits 16 bits here: the message came from a 16-bit payload length or from `encode`.
    add(&(message.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(message);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn push_eth(out: &mut Vec<u8>, dst: MacAddr, src: MacAddr, ethertype: u16) {
    out.extend_from_slice(&dst.0);
    out.extend_from_slice(&src.0);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn encode_arp(a: &ArpPacket) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HEADER_LEN + ARP_LEN);
    push_eth(&mut out, a.eth_dst, a.eth_src, ETHERTYPE_ARP);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out.extend_from_slice(&[6, 4]);
    let op: u16 = match a.op {
        ArpOp::Request => 1,
        ArpOp::Reply => 2,
    };
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(&a.sender_mac.0);
    out.extend_from_slice(&a.sender_ip.octets());
    out.extend_from_slice(&a.target_mac.0);
    out.extend_from_slice(&a.target_ip.octets());
    out
}

fn encode_ndp(n: &NdpPacket) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(ND_FIXED_LEN + 8);
    let (kind, first_word, target, option) = match n.message {
        NdpMessage::Solicitation { target, source_mac } => (
            ICMPV6_NS,
            0u8,
            target,
            source_mac.map(|m| (OPT_SOURCE_LL, m)),
        ),
        NdpMessage::Advertisement {
            flags,
            target,
            target_mac,
        } => {
            let f = (u8::from(flags.router) << 7)
                | (u8::from(flags.solicited) << 6)
                | (u8::from(flags.override_) << 5);
            (ICMPV6_NA, f, target, target_mac.map(|m| (OPT_TARGET_LL, m)))
        }
    };
    icmp.extend_from_slice(&[kind, 0, 0, 0, first_word, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    if let Some((opt, mac)) = option {
        icmp.extend_from_slice(&[opt, 1]);
        icmp.extend_from_slice(&mac.0);
    }
    let checksum = icmpv6_checksum(n.src, n.dst, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut out = Vec::with_capacity(ETH_HEADER_LEN + IPV6_HEADER_LEN + icmp.len());
    push_eth(&mut out, n.eth_dst, n.eth_src, ETHERTYPE_IPV6);
    let flow = n.flow_label & 0x000f_ffff;
    out.push(0x60 | (n.traffic_class >> 4));
    out.push((n.traffic_class << 4) | (flow >> 16) as u8);
    out.extend_from_slice(&(flow as u16).to_be_bytes());
    // At most 24 + 8 bytes.
    out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    out.extend_from_slice(&[NEXT_HEADER_ICMPV6, n.hop_limit]);
    out.extend_from_slice(&n.src.octets());
    out.extend_from_slice(&n.dst.octets());
    out.extend_from_slice(&icmp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden frames, captured on this project's Debian 12 machines (iputils-arping 20221126, ndisc6 1.0.5, Linux
    // 6.18) in a pair of namespaces joined by a veth, the "client" end with MAC 02:00:00:00:00:01 and addresses
    // 192.0.2.1/24 and 2001:db8::1/64, the "node" end with 02:00:00:00:00:02, 192.0.2.2/24, 2001:db8::2/64 (nodad):
    //
    //   ip netns exec CLIENT tcpdump -i veth-c -n -xx 'arp or (icmp6 and (ip6[40]==135 or ip6[40]==136))'
    //   ip netns exec CLIENT arping -c 1 -w 2 -I veth-c 192.0.2.2     # ARPING_REQUEST, KERNEL_ARP_REPLY
    //   ip netns exec CLIENT ndisc6 -1 2001:db8::2 veth-c              # NDISC6_NS, KERNEL_NA
    //   ip netns exec NODE arping -U -c 1 -I veth-n 192.0.2.2         # ARPING_GARP_REQUEST
    //   ip netns exec NODE arping -A -c 1 -I veth-n 192.0.2.2         # ARPING_GARP_REPLY
    //   (then the kernel's own neighbour probe)                        # KERNEL_UNICAST_NS, KERNEL_NA_NO_OPTION
    const ARPING_REQUEST: &str =
        "ffffffffffff02000000000108060001080006040001020000000001c0000201ffffffffffffc0000202";
    const KERNEL_ARP_REPLY: &str =
        "02000000000102000000000208060001080006040002020000000002c0000202020000000001c0000201";
    const NDISC6_NS: &str = concat!(
        "3333ff00000202000000000186dd",
        "60026f5300203afffe80000000000000000000fffe000001ff0200000000000000000001ff000002",
        "87004c5f0000000020010db80000000000000000000000020101020000000001"
    );
    const KERNEL_NA: &str = concat!(
        "02000000000102000000000286dd",
        "6000000000203aff20010db8000000000000000000000002fe80000000000000000000fffe000001",
        "8800baa96000000020010db80000000000000000000000020201020000000002"
    );
    const ARPING_GARP_REQUEST: &str =
        "ffffffffffff02000000000208060001080006040001020000000002c0000202ffffffffffffc0000202";
    const ARPING_GARP_REPLY: &str =
        "ffffffffffff02000000000208060001080006040002020000000002c0000202020000000002c0000202";
    const KERNEL_UNICAST_NS: &str = concat!(
        "02000000000102000000000286dd",
        "6000000000203afffe80000000000000000000fffe000002fe80000000000000000000fffe000001",
        "87007d1b00000000fe80000000000000000000fffe0000010101020000000002"
    );
    const KERNEL_NA_NO_OPTION: &str = concat!(
        "02000000000202000000000186dd",
        "6000000000183afffe80000000000000000000fffe000001fe80000000000000000000fffe000002",
        "88003f2640000000fe80000000000000000000fffe000001"
    );

    const CLIENT: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const NODE: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn round_trip(golden: &str) -> Frame {
        let bytes = hex(golden);
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.encode(), bytes, "re-encoding {frame:?}");
        frame
    }

    #[test]
    fn arping_request_decodes_and_our_reply_matches_the_kernels_byte_for_byte() {
        let Frame::Arp(req) = round_trip(ARPING_REQUEST) else {
            panic!("not ARP")
        };
        assert_eq!(
            req,
            ArpPacket {
                eth_dst: MacAddr::BROADCAST,
                eth_src: CLIENT,
                op: ArpOp::Request,
                sender_mac: CLIENT,
                sender_ip: Ipv4Addr::new(192, 0, 2, 1),
                target_mac: MacAddr::BROADCAST,
                target_ip: Ipv4Addr::new(192, 0, 2, 2),
            }
        );
        assert!(!req.is_gratuitous());
        assert_eq!(
            Frame::Arp(req.reply_from(NODE)).encode(),
            hex(KERNEL_ARP_REPLY)
        );
    }

    #[test]
    fn gratuitous_forms_match_arping_byte_for_byte() {
        let ip = Ipv4Addr::new(192, 0, 2, 2);
        assert_eq!(
            round_trip(ARPING_GARP_REQUEST),
            Frame::Arp(ArpPacket::gratuitous_request(NODE, ip))
        );
        assert_eq!(
            round_trip(ARPING_GARP_REPLY),
            Frame::Arp(ArpPacket::gratuitous_reply(NODE, ip))
        );
        assert!(ArpPacket::gratuitous_request(NODE, ip).is_gratuitous());
    }

    #[test]
    fn ndisc6_solicitation_decodes_with_flow_label_and_source_option() {
        let Frame::Ndp(ns) = round_trip(NDISC6_NS) else {
            panic!("not NDP")
        };
        assert_eq!(ns.flow_label, 0x26f53);
        assert_eq!(ns.hop_limit, 255);
        assert_eq!(ns.src, v6("fe80::ff:fe00:1"));
        assert_eq!(ns.dst, solicited_node(v6("2001:db8::2")));
        assert_eq!(ns.eth_dst, MacAddr::ipv6_multicast(ns.dst));
        assert_eq!(
            ns.message,
            NdpMessage::Solicitation {
                target: v6("2001:db8::2"),
                source_mac: Some(CLIENT)
            }
        );
    }

    #[test]
    fn our_solicited_advertisement_matches_the_kernels_byte_for_byte() {
        let Frame::Ndp(ns) = Frame::decode(&hex(NDISC6_NS)).unwrap() else {
            panic!("not NDP")
        };
        let na = ns.advertisement_from(NODE).unwrap();
        assert_eq!(Frame::Ndp(na).encode(), hex(KERNEL_NA));
        assert_eq!(round_trip(KERNEL_NA), Frame::Ndp(na));
    }

    #[test]
    fn kernel_probe_and_flag_only_advertisement_round_trip() {
        let Frame::Ndp(ns) = round_trip(KERNEL_UNICAST_NS) else {
            panic!("not NDP")
        };
        assert_eq!(
            ns.message,
            NdpMessage::Solicitation {
                target: v6("fe80::ff:fe00:1"),
                source_mac: Some(NODE)
            }
        );
        let Frame::Ndp(na) = round_trip(KERNEL_NA_NO_OPTION) else {
            panic!("not NDP")
        };
        assert_eq!(
            na.message,
            NdpMessage::Advertisement {
                flags: NaFlags {
                    router: false,
                    solicited: true,
                    override_: false
                },
                target: v6("fe80::ff:fe00:1"),
                target_mac: None,
            }
        );
    }

    #[test]
    fn unsolicited_advertisement_goes_to_all_nodes_with_override_and_a_valid_checksum() {
        let na = NdpPacket::unsolicited_advertisement(NODE, v6("2001:db8::2"));
        let bytes = Frame::Ndp(na).encode();
        assert_eq!(&bytes[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(Frame::decode(&bytes).unwrap(), Frame::Ndp(na));
        let NdpMessage::Advertisement { flags, .. } = na.message else {
            panic!()
        };
        assert!(flags.override_ && !flags.solicited && !flags.router);
    }

    #[test]
    fn dad_probe_is_answered_to_all_nodes_without_solicited() {
        let probe = NdpPacket {
            eth_dst: MacAddr::ipv6_multicast(solicited_node(v6("2001:db8::2"))),
            eth_src: CLIENT,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 255,
            src: Ipv6Addr::UNSPECIFIED,
            dst: solicited_node(v6("2001:db8::2")),
            message: NdpMessage::Solicitation {
                target: v6("2001:db8::2"),
                source_mac: None,
            },
        };
        let na = probe.advertisement_from(NODE).unwrap();
        assert_eq!(na.dst, ALL_NODES);
        assert_eq!(
            na,
            NdpPacket::unsolicited_advertisement(NODE, v6("2001:db8::2"))
        );
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut bytes = hex(ARPING_REQUEST);
        bytes.resize(60, 0);
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::decode(&hex(ARPING_REQUEST)).unwrap()
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for golden in [ARPING_REQUEST, NDISC6_NS, KERNEL_NA, KERNEL_NA_NO_OPTION] {
            let bytes = hex(golden);
            for len in 0..bytes.len() {
                let err = Frame::decode(&bytes[..len]).unwrap_err();
                assert!(err.is_malformed(), "{len}: {err}");
            }
        }
    }

    #[test]
    fn corrupt_checksum_is_rejected() {
        let mut bytes = hex(KERNEL_NA);
        bytes[14 + 40 + 3] ^= 1;
        assert_eq!(
            Frame::decode(&bytes).unwrap_err(),
            DecodeError::Checksum {
                found: 0xbaa8,
                computed: 0xbaa9
            }
        );
    }

    #[test]
    fn bad_fields_are_malformed_and_other_traffic_is_not() {
        let mut bytes = hex(ARPING_REQUEST);
        bytes[21] = 3;
        assert_eq!(
            Frame::decode(&bytes).unwrap_err(),
            DecodeError::ArpOperation(3)
        );
        let mut bytes = hex(ARPING_REQUEST);
        bytes[19] = 6;
        assert!(matches!(
            Frame::decode(&bytes),
            Err(DecodeError::UnsupportedArp {
                hlen: 6,
                plen: 6,
                ..
            })
        ));

        let mut ipv4 = hex(ARPING_REQUEST);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(!Frame::decode(&ipv4).unwrap_err().is_malformed());
        assert!(!may_be_arp_or_ndp(&ipv4));
        assert!(may_be_arp_or_ndp(&hex(ARPING_REQUEST)) && may_be_arp_or_ndp(&hex(NDISC6_NS)));

        let mut echo = hex(KERNEL_NA);
        echo[54] = 128;
        assert_eq!(Frame::decode(&echo).unwrap_err(), DecodeError::NotNdp(128));
        assert!(!DecodeError::NotNdp(128).is_malformed());
    }

    #[test]
    fn zero_length_and_overrunning_options_are_rejected() {
        let mut opt_zero = hex(KERNEL_NA);
        opt_zero[14 + 40 + 25] = 0;
        // Recompute nothing: the checksum check runs first, so fix it the way an attacker would.
        let Frame::Ndp(na) = Frame::decode(&hex(KERNEL_NA)).unwrap() else {
            panic!()
        };
        let icmp_len = opt_zero.len() - 54;
        let mut icmp = opt_zero[54..].to_vec();
        icmp[2] = 0;
        icmp[3] = 0;
        let sum = icmpv6_checksum(na.src, na.dst, &icmp);
        opt_zero[56..58].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(icmp_len, 32);
        assert_eq!(
            Frame::decode(&opt_zero).unwrap_err(),
            DecodeError::ZeroLengthOption
        );

        let mut overrun = opt_zero.clone();
        overrun[14 + 40 + 25] = 2;
        let mut icmp = overrun[54..].to_vec();
        icmp[2] = 0;
        icmp[3] = 0;
        let sum = icmpv6_checksum(na.src, na.dst, &icmp);
        overrun[56..58].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            Frame::decode(&overrun).unwrap_err(),
            DecodeError::OptionOverrun { kind: 2 }
        );
    }

    #[test]
    fn solicited_node_and_multicast_mac() {
        assert_eq!(solicited_node(v6("2001:db8::1:2:3")), v6("ff02::1:ff02:3"));
        assert_eq!(
            MacAddr::ipv6_multicast(v6("ff02::1:ff02:3")),
            MacAddr([0x33, 0x33, 0xff, 0x02, 0, 3])
        );
        assert_eq!(NODE.to_string(), "02:00:00:00:00:02");
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = Frame::decode(&bytes);
        }

        #[test]
        fn arp_round_trips(op in proptest::bool::ANY, a in proptest::array::uniform6(0u8..), b in proptest::array::uniform4(0u8..),
                           c in proptest::array::uniform6(0u8..), d in proptest::array::uniform4(0u8..)) {
            let pkt = ArpPacket {
                eth_dst: MacAddr(c), eth_src: MacAddr(a),
                op: if op { ArpOp::Request } else { ArpOp::Reply },
                sender_mac: MacAddr(a), sender_ip: Ipv4Addr::from(b), target_mac: MacAddr(c), target_ip: Ipv4Addr::from(d),
            };
            proptest::prop_assert_eq!(Frame::decode(&Frame::Arp(pkt).encode()).unwrap(), Frame::Arp(pkt));
        }

        #[test]
        fn ndp_round_trips(src in proptest::array::uniform16(0u8..), target in proptest::array::uniform16(0u8..),
                           mac in proptest::option::of(proptest::array::uniform6(0u8..)), flags in 0u8..8, ns in proptest::bool::ANY,
                           flow in 0u32..0x10_0000, tc in proptest::num::u8::ANY) {
            let message = if ns {
                NdpMessage::Solicitation { target: target.into(), source_mac: mac.map(MacAddr) }
            } else {
                NdpMessage::Advertisement {
                    flags: NaFlags { router: flags & 4 != 0, solicited: flags & 2 != 0, override_: flags & 1 != 0 },
                    target: target.into(), target_mac: mac.map(MacAddr),
                }
            };
            let pkt = NdpPacket { eth_dst: NODE, eth_src: CLIENT, traffic_class: tc, flow_label: flow, hop_limit: 255,
                                  src: src.into(), dst: ALL_NODES, message };
            proptest::prop_assert_eq!(Frame::decode(&Frame::Ndp(pkt).encode()).unwrap(), Frame::Ndp(pkt));
        }
    }
}
