//! Fuzzes the IPVS generic-netlink decoder with whole netlink frames, as the kernel would send them: decoding
//! must return an error, never panic, and a decoded service or destination must convert without panicking.
//! Seed corpus: the golden frames in src/ipvs/golden.rs (hex-decode them into corpus/ipvs_decode/).
#![no_main]

use ironlb::ipvs::codec::{AddressFamily, Dest, IpvsMessage, Service, decode_frame};
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::NetlinkPayload;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data)
        && let NetlinkPayload::InnerMessage(genl) = frame.payload
    {
        inspect(&genl.payload);
    }
    // The generic-netlink payload alone, as `IpvsMessage::decode` takes it.
    if let Ok(msg) = IpvsMessage::decode(data) {
        inspect(&msg);
        // What decodes must encode again.
        let _ = msg.encode();
    }
});

fn inspect(msg: &IpvsMessage) {
    if let Some(attrs) = msg.service() {
        let _ = Service::from_attrs(attrs);
    }
    if let Some(attrs) = msg.dest() {
        let _ = Dest::from_attrs(attrs, AddressFamily::V4);
        let _ = Dest::from_attrs(attrs, AddressFamily::V6);
    }
}
