//! Fuzzes the BFD Control packet codec with arbitrary UDP payloads: decoding must never panic, anything that
//! decodes must re-encode to bytes that decode to the same packet, and a session must take it (and its timers
//! after it) without panicking.
#![no_main]

use std::time::{Duration, Instant};

use ironlb::bfd::codec::{decode, encode};
use ironlb::bfd::fsm::{Profile, BfdSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = decode(data) else {
        return;
    };
    assert_eq!(decode(&encode(&packet)), Ok(packet));
    let now = Instant::now();
    // With the echo function on, so that the peer's echo interval in the packet drives it too.
    let profile = Profile {
        echo_receive_interval: Duration::from_millis(50),
        echo_transmit_interval: Duration::from_millis(50),
        ..Profile::default()
    };
    let mut session = BfdSession::new(profile, 1, now);
    let _ = session.receive(&packet, now);
    if let Some(at) = session.next_deadline() {
        let _ = session.timers(at.max(now) + Duration::from_millis(1));
    }
});
