//! Fuzzes the ARP/NDP codec with arbitrary frames: decoding must never panic, anything that decodes must re-encode
//! to a frame that decodes to the same value, and the answer rules must not panic on it either.
#![no_main]

use std::collections::BTreeSet;
use std::net::IpAddr;

use ironlb::arp::codec::{Frame, MacAddr};
use ironlb::arp::decide::decide;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let again = Frame::decode(&frame.encode()).expect("an encoded frame decodes");
    assert_eq!(again, frame);
    let owned: BTreeSet<IpAddr> = [
        "192.0.2.10".parse().unwrap(),
        "2001:db8::10".parse().unwrap(),
    ]
    .into();
    let _ = decide(&frame, MacAddr([2, 0, 0, 0, 0, 2]), &owned);
});
