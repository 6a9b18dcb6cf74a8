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
    let mut session = BfdSession::new(Profile::default(), 1, now);
    let _ = session.receive(&packet, now);
    if let Some(at) = session.next_deadline() {
        let _ = session.timers(at.max(now) + Duration::from_millis(1));
    }
});
