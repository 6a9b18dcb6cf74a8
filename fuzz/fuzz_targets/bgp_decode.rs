//! Fuzzes everything the BGP speaker decodes: the byte stream from a peer is cut into messages and decoded exactly
//! as a session does, and every result is fed to a session state machine (in OpenSent and in Established).
//! Nothing may panic; a decoded OPEN or NOTIFICATION must re-encode to bytes that decode to the same value.
#![no_main]

use std::time::Duration;

use ironlb::bgp::codec::{self, Received};
use ironlb::bgp::fsm::{Event, Fsm, FsmConfig, PeerAs};
use libfuzzer_sys::fuzz_target;
use ironlb::bgp::BgpMessage;

fn fsm() -> Fsm {
    Fsm::new(FsmConfig {
        local_asn: 64497,
        peer_as: PeerAs::External,
        router_id: "192.0.2.11".parse().unwrap(),
        hold_time: 90,
        keepalive: None,
        connect_retry: Duration::from_secs(1),
        graceful_restart: Some(120),
        ipv4: true,
        ipv6: true,
        extended_next_hop: false,
        restarted: true,
    })
}

fuzz_target!(|data: &[u8]| {
    for asn4 in [false, true] {
        let (results, used) = codec::decode_stream(data, asn4);
        assert!(used <= data.len());
        let mut opensent = fsm();
        opensent.handle(Event::Start);
        opensent.handle(Event::TcpConnected);
        for r in results {
            let event = match r {
                Ok(Received::Message(m)) => {
                    if matches!(m, BgpMessage::Open(_) | BgpMessage::Notification(_)) {
                        let bytes = codec::encode(&m);
                        if let Ok(Received::Message(again)) = codec::decode(&bytes, asn4) {
                            assert_eq!(again, m);
                        }
                    }
                    Event::Received(m)
                }
                Ok(Received::Update) => Event::ReceivedUpdate,
                Err(e) => Event::DecodeError { message: e.message, notification: e.notification },
            };
            let _ = opensent.handle(event);
        }
    }
});
