//! Golden tests against bytes a real BGP speaker sent: gobgpd's OPEN and UPDATE, captured with tcpdump by
//! `scripts/bgp-golden` (gobgpd, AS 64496, 192.0.2.2, originating 203.0.113.5/32 with origin IGP, community
//! 64496:10 and large community 64496:1:2, to an eBGP peer).

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::BgpCapability;
use netgauze_iana::address_family::AddressType;

use super::codec::{self, Received, RouteAttrs, UpdateContext};

fn hex(text: &str) -> Vec<u8> {
    let t = text.trim();
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).expect("hex"))
        .collect()
}

fn open_bytes() -> Vec<u8> {
    hex(include_str!("../../tests/fixtures/bgp/gobgp_open.hex"))
}

fn update_bytes() -> Vec<u8> {
    hex(include_str!("../../tests/fixtures/bgp/gobgp_update.hex"))
}

#[test]
fn decodes_a_real_open() {
    let bytes = open_bytes();
    assert_eq!(codec::frame_len(&bytes).unwrap(), Some(bytes.len()));
    let Ok(Received::Message(BgpMessage::Open(open))) = codec::decode(&bytes, false) else {
        panic!("not an OPEN")
    };
    assert_eq!(open.my_asn4(), 64496);
    assert_eq!(open.bgp_id(), std::net::Ipv4Addr::new(192, 0, 2, 2));
    let caps = open.capabilities();
    assert!(caps.iter().any(|c| matches!(c, BgpCapability::MultiProtocolExtensions(m) if m.address_type() == AddressType::Ipv4Unicast)));
    assert!(
        caps.iter()
            .any(|c| matches!(c, BgpCapability::FourOctetAs(_)))
    );
    assert!(
        caps.iter()
            .any(|c| matches!(c, BgpCapability::RouteRefresh))
    );
    // The OPEN re-encodes to the same bytes.
    assert_eq!(codec::encode(&BgpMessage::Open(open)), bytes);
}

#[test]
fn encodes_the_same_update_as_a_real_speaker() {
    let ctx = UpdateContext {
        local_asn: 64496,
        ibgp: false,
        asn4: true,
        next_hop_v4: Some(std::net::Ipv4Addr::new(192, 0, 2, 2).into()),
        next_hop_v6: None,
    };
    let attrs = RouteAttrs {
        local_pref: None,
        communities: [
            "64496:10".parse().unwrap(),
            "large:64496:1:2".parse().unwrap(),
        ]
        .into(),
    };
    let ours = codec::announce(&ctx, &attrs, &["203.0.113.5/32".parse().unwrap()]);
    assert_eq!(ours.len(), 1);
    assert_eq!(
        codec::encode(&ours[0]),
        update_bytes(),
        "our UPDATE differs from gobgpd's"
    );
    // And the speaker accepts gobgpd's UPDATE as a well-framed UPDATE.
    assert_eq!(codec::decode(&update_bytes(), true), Ok(Received::Update));
}
