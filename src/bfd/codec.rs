//! The BFD Control packet (RFC 5880 section 4.1), decoded and encoded without I/O.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```
//!
//! [`decode`] applies the reception checks of RFC 5880 section 6.8.6 that need nothing but the packet; the
//! session applies the rest. Authentication (the A bit) is not supported: such a packet is refused, as the RFC
//! asks of an implementation that does not use it.

use std::fmt;

/// The length of a Control packet without authentication.
pub const LEN: usize = 24;

/// The session states, as the packet carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BfdState {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl BfdState {
    fn from_bits(bits: u8) -> BfdState {
        match bits & 3 {
            0 => BfdState::AdminDown,
            1 => BfdState::Down,
            2 => BfdState::Init,
            _ => BfdState::Up,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BfdState::AdminDown => "AdminDown",
            BfdState::Down => "Down",
            BfdState::Init => "Init",
            BfdState::Up => "Up",
        }
    }
}

impl fmt::Display for BfdState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the local system last changed state (RFC 5880 section 4.1, the Diag field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Diag {
    #[default]
    None,
    DetectionTimeExpired,
    EchoFailed,
    NeighborSignaledDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    /// A value RFC 5880 reserves.
    Reserved(u8),
}

impl Diag {
    fn from_bits(bits: u8) -> Diag {
        match bits & 0x1f {
            0 => Diag::None,
            1 => Diag::DetectionTimeExpired,
            2 => Diag::EchoFailed,
            3 => Diag::NeighborSignaledDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            other => Diag::Reserved(other),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::DetectionTimeExpired => 1,
            Diag::EchoFailed => 2,
            Diag::NeighborSignaledDown => 3,
            Diag::ForwardingPlaneReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdministrativelyDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(v) => v & 0x1f,
        }
    }
}

/// A BFD Control packet. Intervals are in microseconds, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub diag: Diag,
    pub state: BfdState,
    /// Poll: the sender asks for a Final (a parameter change).
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub final_: bool,
    /// Control Plane Independent.
    pub cpi: bool,
    /// Demand mode.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet is discarded (RFC 5880 section 6.8.6).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes, shorter than a BFD Control packet (24)")]
    Short(usize),
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("length field {length} outside 24..={received} (the bytes received)")]
    Length { length: usize, received: usize },
    #[error("authentication present (the A bit); IronLB's BFD sessions use none")]
    Authenticated,
    #[error("detect multiplier 0")]
    ZeroMultiplier,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator 0")]
    ZeroMyDisc,
    #[error("your discriminator 0 in state {0}")]
    ZeroYourDisc(BfdState),
}

/// Decodes a Control packet from a UDP payload, with the checks of RFC 5880 section 6.8.6 that need no session.
pub fn decode(bytes: &[u8]) -> Result<Control, DecodeError> {
    if bytes.len() < LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    let version = bytes[0] >> 5;
    if version != 1 {
        return Err(DecodeError::Version(version));
    }
    let length = usize::from(bytes[3]);
    if length < LEN || length > bytes.len() {
        return Err(DecodeError::Length {
            length,
            received: bytes.len(),
        });
    }
    let flags = bytes[1];
    if flags & 0x04 != 0 {
        return Err(DecodeError::Authenticated);
    }
    if flags & 0x01 != 0 {
        return Err(DecodeError::Multipoint);
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let packet = Control {
        diag: Diag::from_bits(bytes[0]),
        state: BfdState::from_bits(flags >> 6),
        poll: flags & 0x20 != 0,
        final_: flags & 0x10 != 0,
        cpi: flags & 0x08 != 0,
        demand: flags & 0x02 != 0,
        detect_mult: bytes[2],
        my_disc: word(4),
        your_disc: word(8),
        desired_min_tx: word(12),
        required_min_rx: word(16),
        required_min_echo_rx: word(20),
    };
    if packet.detect_mult == 0 {
        return Err(DecodeError::ZeroMultiplier);
    }
    if packet.my_disc == 0 {
        return Err(DecodeError::ZeroMyDisc);
    }
    if packet.your_disc == 0 && matches!(packet.state, BfdState::Init | BfdState::Up) {
        return Err(DecodeError::ZeroYourDisc(packet.state));
    }
    Ok(packet)
}

/// Encodes a Control packet without authentication.
pub fn encode(p: &Control) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[0] = (1 << 5) | p.diag.bits();
    out[1] = ((p.state as u8) << 6)
        | (u8::from(p.poll) << 5)
        | (u8::from(p.final_) << 4)
        | (u8::from(p.cpi) << 3)
        | (u8::from(p.demand) << 1);
    out[2] = p.detect_mult;
    out[3] = LEN as u8;
    for (i, v) in [
        p.my_disc,
        p.your_disc,
        p.desired_min_tx,
        p.required_min_rx,
        p.required_min_echo_rx,
    ]
    .into_iter()
    .enumerate()
    {
        out[4 + 4 * i..8 + 4 * i].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let t = text.trim();
        (0..t.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&t[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// FRR's bfdd, captured by `scripts/bfd-golden`: its first packet, Down, at the slow 1 s rate RFC 5880 asks for
    /// before a session is Up.
    #[test]
    fn decodes_and_reencodes_frr_down() {
        let bytes = hex(include_str!("../../tests/fixtures/bfd/frr_down.hex"));
        let p = decode(&bytes).unwrap();
        assert_eq!(p.state, BfdState::Down);
        assert_eq!(p.diag, Diag::None);
        assert!(!p.poll && !p.final_ && !p.demand);
        assert_eq!(p.detect_mult, 3);
        assert_ne!(p.my_disc, 0);
        assert_eq!(p.your_disc, 0);
        assert_eq!(
            (p.desired_min_tx, p.required_min_rx),
            (1_000_000, 1_000_000)
        );
        assert_eq!(p.required_min_echo_rx, 50_000);
        assert_eq!(encode(&p).as_slice(), bytes.as_slice());
    }

    /// FRR's bfdd once Up: the Poll that moves it from the slow rate to the configured 300 ms.
    #[test]
    fn decodes_and_reencodes_frr_up_with_poll() {
        let bytes = hex(include_str!("../../tests/fixtures/bfd/frr_up.hex"));
        let p = decode(&bytes).unwrap();
        assert_eq!(p.state, BfdState::Up);
        assert!(p.poll && !p.final_);
        assert_ne!(p.your_disc, 0);
        assert_eq!((p.desired_min_tx, p.required_min_rx), (300_000, 300_000));
        assert_eq!(encode(&p).as_slice(), bytes.as_slice());
    }

    #[test]
    fn refuses_what_rfc_5880_discards() {
        let good = hex(include_str!("../../tests/fixtures/bfd/frr_up.hex"));
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            decode(&b)
        };
        assert_eq!(decode(&good[..20]), Err(DecodeError::Short(20)));
        assert_eq!(with(0, 0x40), Err(DecodeError::Version(2)));
        assert!(matches!(with(3, 23), Err(DecodeError::Length { .. })));
        assert!(matches!(with(3, 25), Err(DecodeError::Length { .. })));
        assert_eq!(with(1, good[1] | 0x04), Err(DecodeError::Authenticated));
        assert_eq!(with(1, good[1] | 0x01), Err(DecodeError::Multipoint));
        assert_eq!(with(2, 0), Err(DecodeError::ZeroMultiplier));
        let mut no_disc = good.clone();
        no_disc[4..8].fill(0);
        assert_eq!(decode(&no_disc), Err(DecodeError::ZeroMyDisc));
        let mut no_yours = good.clone();
        no_yours[8..12].fill(0);
        assert_eq!(
            decode(&no_yours),
            Err(DecodeError::ZeroYourDisc(BfdState::Up))
        );
        // Trailing bytes beyond the length field are ignored.
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_ok());
    }
}
