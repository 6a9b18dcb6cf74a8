//! BGP wire format: framing of the TCP byte stream, decoding of what a peer sends, and encoding of what the
//! speaker sends. The message encoding itself is `netgauze-bgp-pkt`'s; this module adds the framing, maps decode
//! failures to the NOTIFICATION they call for (RFC 4271 section 6), and builds the UPDATEs for a route set.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::community::{Community, LargeCommunity};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, MessageHeaderError, OpenMessageError,
};
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, Communities,
    LargeCommunities, LocalPreference, MpReach, MpUnreach, NextHop, Origin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

use crate::config::community::CommunityValue;

/// RFC 4271: the fixed header is 19 bytes and no message exceeds 4096 bytes (no extended messages).
pub const HEADER_LEN: usize = 19;
pub const MAX_MESSAGE_LEN: usize = 4096;
/// RFC 6793: the 2-byte placeholder for a 4-byte AS number.
pub const AS_TRANS: u16 = 23456;

/// A decode failure, with the NOTIFICATION the speaker answers it with (RFC 4271 section 6).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
    pub notification: BgpNotificationMessage,
}

/// What a received message is, as far as the speaker cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Message(BgpMessage),
    /// An UPDATE. Received routes are not used, so its content is not kept; a malformed one is treated as a
    /// withdrawal of its routes (RFC 7606), which for a speaker that keeps nothing means ignoring it.
    Update,
}

/// Checks the header at the start of `buf`: `Ok(None)` when fewer than a whole message is buffered,
/// `Ok(Some(len))` with the length of the first message, or the header error to answer with.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(DecodeError {
            message: "message marker is not all ones: connection not synchronized".into(),
            notification: BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::ConnectionNotSynchronized {
                    value: Box::new([]),
                },
            ),
        });
    }
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(DecodeError {
            message: format!("bad message length {len}"),
            notification: BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::BadMessageLength {
                    value: Box::new((len as u16).to_be_bytes()),
                },
            ),
        });
    }
    Ok((buf.len() >= len).then_some(len))
}

/// Decodes one whole message (`frame` holds exactly the bytes [`frame_len`] counted). `asn4` tells whether 4-byte
/// AS numbers were negotiated.
pub fn decode(frame: &[u8], asn4: bool) -> Result<Received, DecodeError> {
    let len = match frame_len(frame)? {
        Some(len) if len == frame.len() => len,
        _ => {
            return Err(DecodeError {
                message: format!(
                    "frame of {} bytes does not hold exactly one message",
                    frame.len()
                ),
                notification: BgpNotificationMessage::MessageHeaderError(
                    MessageHeaderError::BadMessageLength {
                        value: Box::new([]),
                    },
                ),
            });
        }
    };
    let kind = frame[18];
    if kind == 2 {
        // UPDATE: only its framing matters (see [`Received::Update`]); the minimum length is 23.
        if len < 23 {
            return Err(bad_length(len));
        }
        return Ok(Received::Update);
    }
    let mut ctx = BgpParsingContext::new(
        asn4,
        Default::default(),
        Default::default(),
        false,
        false,
        false,
        false,
    );
    match BgpMessage::parse(&mut SliceReader::new(frame), &mut ctx) {
        Ok(msg) => Ok(Received::Message(msg)),
        Err(e) => {
            let message = e.to_string();
            let notification = match kind {
                1 => BgpNotificationMessage::OpenMessageError(OpenMessageError::Unspecific {
                    value: Box::new([]),
                }),
                3..=5 if kind == 4 && len != HEADER_LEN => return Err(bad_length(len)),
                3..=5 => {
                    BgpNotificationMessage::MessageHeaderError(MessageHeaderError::Unspecific {
                        value: Box::new([]),
                    })
                }
                _ => {
                    BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageType {
                        value: Box::new([kind]),
                    })
                }
            };
            Err(DecodeError {
                message,
                notification,
            })
        }
    }
}

/// Decodes every whole message at the start of `buf` (the bytes read from the peer so far). Returns the results in
/// order and how many bytes they used; decoding stops after the first error, which ends the session.
pub fn decode_stream(buf: &[u8], asn4: bool) -> (Vec<Result<Received, DecodeError>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        match frame_len(&buf[at..]) {
            Ok(None) => break,
            Ok(Some(len)) => {
                let result = decode(&buf[at..at + len], asn4);
                at += len;
                let failed = result.is_err();
                out.push(result);
                if failed {
                    break;
                }
            }
            Err(e) => {
                out.push(Err(e));
                at = buf.len();
                break;
            }
        }
    }
    (out, at)
}

fn bad_length(len: usize) -> DecodeError {
    DecodeError {
        message: format!("bad message length {len}"),
        notification: BgpNotificationMessage::MessageHeaderError(
            MessageHeaderError::BadMessageLength {
                value: Box::new((len as u16).to_be_bytes()),
            },
        ),
    }
}

/// Encodes a message into its wire bytes.
pub fn encode(msg: &BgpMessage) -> Vec<u8> {
    let mut buf = Vec::with_capacity(msg.len());
    // Writing into a Vec fails only for values the constructors in this module never build (e.g. an oversized
    // attribute); such a bug shows as an empty buffer, which the session reports as an error instead of panicking.
    if msg.write(&mut buf).is_err() {
        buf.clear();
    }
    buf
}

/// The attributes a route is advertised with, besides next hop and AS path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteAttrs {
    /// LOCAL_PREF; sent to iBGP peers only.
    pub local_pref: Option<u32>,
    pub communities: BTreeSet<CommunityValue>,
}

/// What an UPDATE needs to know about the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateContext {
    pub local_asn: u32,
    pub ibgp: bool,
    /// The peer announced 4-byte AS support.
    pub asn4: bool,
    /// Next hop for IPv4 routes: an IPv4 address, or an IPv6 one on a session that negotiated RFC 8950's extended
    /// next hop (the routes then go in MP_REACH_NLRI, as the RFC asks).
    pub next_hop_v4: Option<IpAddr>,
    /// Next hop for IPv6 routes: the session's local address when it is IPv6.
    pub next_hop_v6: Option<Ipv6Addr>,
}

/// The type code of an attribute, for sending attributes in ascending order (RFC 4271 section 5).
fn type_code(a: &PathAttribute) -> u8 {
    match a.value() {
        PathAttributeValue::Origin(_) => 1,
        PathAttributeValue::AsPath(_) => 2,
        PathAttributeValue::NextHop(_) => 3,
        PathAttributeValue::MultiExitDiscriminator(_) => 4,
        PathAttributeValue::LocalPreference(_) => 5,
        PathAttributeValue::Communities(_) => 8,
        PathAttributeValue::MpReach(_) => 14,
        PathAttributeValue::MpUnreach(_) => 15,
        PathAttributeValue::As4Path(_) => 17,
        PathAttributeValue::LargeCommunities(_) => 32,
        _ => 255,
    }
}

fn sorted(mut attrs: Vec<PathAttribute>) -> Vec<PathAttribute> {
    attrs.sort_by_key(type_code);
    attrs
}

fn attr(
    optional: bool,
    transitive: bool,
    extended: bool,
    value: PathAttributeValue,
) -> Option<PathAttribute> {
    PathAttribute::from(optional, transitive, false, extended, value).ok()
}

/// The path attributes common to one family's routes with `attrs` (everything but NEXT_HOP/MP_REACH).
fn common_attributes(ctx: &UpdateContext, attrs: &RouteAttrs) -> Vec<PathAttribute> {
    let mut out = Vec::new();
    out.extend(attr(
        false,
        true,
        false,
        PathAttributeValue::Origin(Origin::IGP),
    ));
    // iBGP: empty AS_PATH. eBGP: our AS, in the width the peer reads (RFC 6793 section 4.2.2).
    let as_path = match (ctx.ibgp, ctx.asn4) {
        (true, true) => AsPath::As4PathSegments(Box::new([])),
        (true, false) => AsPath::As2PathSegments(Box::new([])),
        (false, true) => AsPath::As4PathSegments(Box::new([As4PathSegment::new(
            AsPathSegmentType::AsSequence,
            [ctx.local_asn],
        )])),
        (false, false) => {
            let as2 = u16::try_from(ctx.local_asn).unwrap_or(AS_TRANS);
            AsPath::As2PathSegments(Box::new([As2PathSegment::new(
                AsPathSegmentType::AsSequence,
                [as2],
            )]))
        }
    };
    out.extend(attr(
        false,
        true,
        false,
        PathAttributeValue::AsPath(as_path),
    ));
    if !ctx.ibgp && !ctx.asn4 && ctx.local_asn > u32::from(u16::MAX) {
        out.extend(attr(
            true,
            true,
            false,
            PathAttributeValue::As4Path(As4Path::new([As4PathSegment::new(
                AsPathSegmentType::AsSequence,
                [ctx.local_asn],
            )])),
        ));
    }
    if ctx.ibgp {
        out.extend(attr(
            false,
            true,
            false,
            PathAttributeValue::LocalPreference(LocalPreference::new(
                attrs.local_pref.unwrap_or(100),
            )),
        ));
    }
    let standard: Vec<Community> = attrs
        .communities
        .iter()
        .filter_map(|c| match c {
            CommunityValue::Standard { asn, value } => {
                Some(Community::new((u32::from(*asn) << 16) | u32::from(*value)))
            }
            CommunityValue::Large { .. } => None,
        })
        .collect();
    if !standard.is_empty() {
        let extended = standard.len() * 4 > 255;
        out.extend(attr(
            true,
            true,
            extended,
            PathAttributeValue::Communities(Communities::new(standard)),
        ));
    }
    let large: Vec<LargeCommunity> = attrs
        .communities
        .iter()
        .filter_map(|c| match c {
            CommunityValue::Large {
                global,
                local1,
                local2,
            } => Some(LargeCommunity::new(*global, *local1, *local2)),
            CommunityValue::Standard { .. } => None,
        })
        .collect();
    if !large.is_empty() {
        let extended = large.len() * 12 > 255;
        out.extend(attr(
            true,
            true,
            extended,
            PathAttributeValue::LargeCommunities(LargeCommunities::new(large)),
        ));
    }
    out
}

fn v4_nlri(net: &Ipv4Net) -> Option<Ipv4UnicastAddress> {
    Ipv4Unicast::from_net(*net)
        .ok()
        .map(Ipv4UnicastAddress::new_no_path_id)
}

fn v6_nlri(net: &Ipv6Net) -> Option<Ipv6UnicastAddress> {
    Ipv6Unicast::from_net(*net)
        .ok()
        .map(|n| Ipv6UnicastAddress::new(None, n))
}

/// UPDATEs announcing `prefixes` (all with `attrs`), each within the 4096-byte limit. Prefixes of a family the
/// context has no next hop for are left out (the session was not negotiated for that family's transport).
pub fn announce(ctx: &UpdateContext, attrs: &RouteAttrs, prefixes: &[IpNet]) -> Vec<BgpMessage> {
    let common = common_attributes(ctx, attrs);
    let mut out = Vec::new();
    let v4: Vec<Ipv4UnicastAddress> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(n) => v4_nlri(n),
            IpNet::V6(_) => None,
        })
        .collect();
    if let (false, Some(IpAddr::V6(nh))) = (v4.is_empty(), ctx.next_hop_v4) {
        let mp = |nlri: &[Ipv4UnicastAddress]| {
            let mut attrs = common.clone();
            attrs.extend(attr(
                true,
                false,
                true,
                PathAttributeValue::MpReach(MpReach::Ipv4Unicast {
                    next_hop: IpAddr::V6(nh),
                    next_hop_local: None,
                    nlri: nlri.into(),
                }),
            ));
            BgpMessage::Update(BgpUpdateMessage::new([], sorted(attrs), []))
        };
        let base = mp(&[]).len();
        let per_message = ((MAX_MESSAGE_LEN - base) / 5).max(1);
        for chunk in v4.chunks(per_message) {
            out.push(mp(chunk));
        }
    }
    if let (false, Some(IpAddr::V4(nh))) = (v4.is_empty(), ctx.next_hop_v4) {
        let mut attrs = common.clone();
        attrs.extend(attr(
            false,
            true,
            false,
            PathAttributeValue::NextHop(NextHop::new(nh)),
        ));
        let attrs = sorted(attrs);
        let base = BgpMessage::Update(BgpUpdateMessage::new([], attrs.clone(), [])).len();
        // A /32 takes 5 bytes; shorter prefixes take fewer.
        let per_message = ((MAX_MESSAGE_LEN - base) / 5).max(1);
        for chunk in v4.chunks(per_message) {
            out.push(BgpMessage::Update(BgpUpdateMessage::new(
                [],
                attrs.clone(),
                chunk,
            )));
        }
    }
    let v6: Vec<Ipv6UnicastAddress> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V6(n) => v6_nlri(n),
            IpNet::V4(_) => None,
        })
        .collect();
    if let (false, Some(nh)) = (v6.is_empty(), ctx.next_hop_v6) {
        let mp = |nlri: &[Ipv6UnicastAddress]| {
            let mut attrs = common.clone();
            attrs.extend(attr(
                true,
                false,
                true,
                PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                    next_hop_global: nh,
                    next_hop_local: None,
                    nlri: nlri.into(),
                }),
            ));
            BgpMessage::Update(BgpUpdateMessage::new([], sorted(attrs), []))
        };
        let base = mp(&[]).len();
        // A /128 takes 17 bytes.
        let per_message = ((MAX_MESSAGE_LEN - base) / 17).max(1);
        for chunk in v6.chunks(per_message) {
            out.push(mp(chunk));
        }
    }
    out
}

/// UPDATEs withdrawing `prefixes`.
pub fn withdraw(prefixes: &[IpNet]) -> Vec<BgpMessage> {
    let mut out = Vec::new();
    let v4: Vec<Ipv4UnicastAddress> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(n) => v4_nlri(n),
            IpNet::V6(_) => None,
        })
        .collect();
    for chunk in v4.chunks((MAX_MESSAGE_LEN - 23) / 5) {
        out.push(BgpMessage::Update(BgpUpdateMessage::new(chunk, [], [])));
    }
    let v6: Vec<Ipv6UnicastAddress> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V6(n) => v6_nlri(n),
            IpNet::V4(_) => None,
        })
        .collect();
    for chunk in v6.chunks((MAX_MESSAGE_LEN - 23 - 7) / 17) {
        let unreach = attr(
            true,
            false,
            true,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: chunk.into() }),
        );
        out.push(BgpMessage::Update(BgpUpdateMessage::new(
            [],
            Vec::from_iter(unreach),
            [],
        )));
    }
    out
}

/// The End-of-RIB marker for a family (RFC 4724 section 2).
pub fn end_of_rib(v6: bool) -> BgpMessage {
    if v6 {
        let unreach = attr(
            true,
            false,
            true,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: Box::new([]) }),
        );
        BgpMessage::Update(BgpUpdateMessage::new([], Vec::from_iter(unreach), []))
    } else {
        BgpMessage::Update(BgpUpdateMessage::new([], [], []))
    }
}

/// The prefix a VIP is announced as when not aggregated.
pub fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ctx(ibgp: bool, asn4: bool) -> UpdateContext {
        UpdateContext {
            local_asn: 64500,
            ibgp,
            asn4,
            next_hop_v4: Some("192.0.2.10".parse().unwrap()),
            next_hop_v6: Some("2001:db8::10".parse().unwrap()),
        }
    }

    fn parse_back(msg: &BgpMessage, asn4: bool) -> BgpMessage {
        let bytes = encode(msg);
        assert!(
            bytes.len() <= MAX_MESSAGE_LEN,
            "message of {} bytes",
            bytes.len()
        );
        assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
        let mut c = BgpParsingContext::asn2_default();
        c.set_asn4(asn4);
        BgpMessage::parse(&mut SliceReader::new(&bytes), &mut c).unwrap()
    }

    #[test]
    fn announce_roundtrips_with_all_attributes() {
        let attrs = RouteAttrs {
            local_pref: Some(150),
            communities: [
                "64500:10".parse().unwrap(),
                "large:64500:1:2".parse().unwrap(),
            ]
            .into(),
        };
        let prefixes: Vec<IpNet> = vec![
            "203.0.113.5/32".parse().unwrap(),
            "2001:db8:5::1/128".parse().unwrap(),
        ];
        let msgs = announce(&ctx(true, true), &attrs, &prefixes);
        assert_eq!(msgs.len(), 2);
        for m in &msgs {
            assert_eq!(&parse_back(m, true), m);
        }
        let BgpMessage::Update(u) = &msgs[0] else {
            panic!()
        };
        assert_eq!(u.nlri().len(), 1);
        assert!(u.path_attributes().iter().any(
            |a| matches!(a.value(), PathAttributeValue::LocalPreference(l) if l.metric() == 150)
        ));
        assert!(
            u.path_attributes()
                .iter()
                .any(|a| matches!(a.value(), PathAttributeValue::LargeCommunities(_)))
        );
    }

    #[test]
    fn ipv4_routes_with_an_ipv6_next_hop_go_in_mp_reach() {
        let lla: Ipv6Addr = "fe80::1".parse().unwrap();
        let ctx = UpdateContext {
            next_hop_v4: Some(IpAddr::V6(lla)),
            next_hop_v6: Some(lla),
            ..ctx(false, true)
        };
        let prefixes: Vec<IpNet> = vec!["203.0.113.5/32".parse().unwrap()];
        let msgs = announce(&ctx, &RouteAttrs::default(), &prefixes);
        assert_eq!(msgs.len(), 1);
        assert_eq!(&parse_back(&msgs[0], true), &msgs[0]);
        let BgpMessage::Update(u) = &msgs[0] else {
            panic!()
        };
        // RFC 8950: no NEXT_HOP attribute and no NLRI outside MP_REACH_NLRI.
        assert!(u.nlri().is_empty());
        assert!(
            !u.path_attributes()
                .iter()
                .any(|a| matches!(a.value(), PathAttributeValue::NextHop(_)))
        );
        let bytes = encode(&msgs[0]);
        // MP_REACH_NLRI (optional, extended length, type 14), then AFI 1, SAFI 1, a next hop of 16 bytes.
        let at = bytes
            .windows(2)
            .position(|w| w == [0x90, 14])
            .expect("an MP_REACH_NLRI attribute");
        let body = &bytes[at + 4..];
        assert_eq!(&body[..4], &[0, 1, 1, 16]);
        assert_eq!(&body[4..20], &lla.octets());
        // No SNPA, then the /32.
        assert_eq!(&body[20..26], &[0, 32, 203, 0, 113, 5]);
    }

    #[test]
    fn ebgp_has_no_local_pref_and_carries_our_as() {
        let attrs = RouteAttrs {
            local_pref: Some(150),
            communities: BTreeSet::new(),
        };
        let msgs = announce(
            &ctx(false, true),
            &attrs,
            &["203.0.113.5/32".parse().unwrap()],
        );
        let BgpMessage::Update(u) = &msgs[0] else {
            panic!()
        };
        assert!(
            !u.path_attributes()
                .iter()
                .any(|a| matches!(a.value(), PathAttributeValue::LocalPreference(_)))
        );
        assert!(u.path_attributes().iter().any(|a| matches!(a.value(), PathAttributeValue::AsPath(AsPath::As4PathSegments(s)) if s[0].as_numbers() == [64500])));
    }

    #[test]
    fn two_byte_peer_gets_as_trans_and_as4_path() {
        let mut c = ctx(false, false);
        c.local_asn = 65540;
        let msgs = announce(
            &c,
            &RouteAttrs::default(),
            &["203.0.113.5/32".parse().unwrap()],
        );
        let BgpMessage::Update(u) = &parse_back(&msgs[0], false) else {
            panic!()
        };
        assert!(u.path_attributes().iter().any(|a| matches!(a.value(), PathAttributeValue::AsPath(AsPath::As2PathSegments(s)) if s[0].as_numbers() == [AS_TRANS])));
        assert!(
            u.path_attributes()
                .iter()
                .any(|a| matches!(a.value(), PathAttributeValue::As4Path(_)))
        );
    }

    #[test]
    fn many_routes_split_within_size_limit() {
        let prefixes: Vec<IpNet> = (0..3000u32)
            .map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::from(0xc000_0000 + i))))
            .chain(
                (0..1000u128)
                    .map(|i| IpNet::from(IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i)))),
            )
            .collect();
        let msgs = announce(&ctx(true, true), &RouteAttrs::default(), &prefixes);
        let mut v4 = 0;
        let mut v6 = 0;
        for m in &msgs {
            let BgpMessage::Update(u) = parse_back(m, true) else {
                panic!()
            };
            v4 += u.nlri().len();
            for a in u.path_attributes() {
                if let PathAttributeValue::MpReach(MpReach::Ipv6Unicast { nlri, .. }) = a.value() {
                    v6 += nlri.len();
                }
            }
        }
        assert_eq!((v4, v6), (3000, 1000));
        let w = withdraw(&prefixes);
        assert!(w.len() >= 2);
        for m in &w {
            parse_back(m, true);
        }
    }

    #[test]
    fn framing_rejects_bad_marker_and_length() {
        let keepalive = encode(&BgpMessage::KeepAlive);
        assert_eq!(frame_len(&keepalive[..10]).unwrap(), None);
        assert_eq!(frame_len(&keepalive).unwrap(), Some(19));
        assert!(matches!(
            decode(&keepalive, true),
            Ok(Received::Message(BgpMessage::KeepAlive))
        ));
        let mut bad = keepalive.clone();
        bad[3] = 0;
        assert!(frame_len(&bad).is_err());
        let mut long = keepalive.clone();
        long[16..18].copy_from_slice(&5000u16.to_be_bytes());
        let e = frame_len(&long).unwrap_err();
        assert!(matches!(
            e.notification,
            BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength { .. })
        ));
        let mut short_keepalive = keepalive.clone();
        short_keepalive[16..18].copy_from_slice(&20u16.to_be_bytes());
        short_keepalive.push(0);
        assert!(decode(&short_keepalive, true).is_err());
        let mut bad_type = keepalive;
        bad_type[18] = 9;
        assert!(matches!(
            decode(&bad_type, true).unwrap_err().notification,
            BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageType { .. })
        ));
    }

    #[test]
    fn end_of_rib_markers() {
        let v4 = encode(&end_of_rib(false));
        assert_eq!(v4.len(), 23);
        let BgpMessage::Update(u) = parse_back(&end_of_rib(true), true) else {
            panic!()
        };
        assert_eq!(
            u.end_of_rib(),
            Some(netgauze_iana::address_family::AddressType::Ipv6Unicast)
        );
    }
}
