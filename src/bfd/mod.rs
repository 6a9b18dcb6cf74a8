//! BFD (RFC 5880), Asynchronous mode, for the BGP sessions whose BGPPeer names a BFDProfile.
//!
//! - [`codec`]: the Control packet, decode (with RFC 5880's reception checks) and encode, golden bytes from FRR's
//!   bfdd;
//! - [`fsm`]: one session's state machine, pure: packets and time in, packets and state changes out.
//!
//! Not yet here: the UDP transport (RFC 5881 single hop, RFC 5883 multihop), the echo function, and the link to
//! the BGP sessions; until they are, a BGPPeer's `bfdProfile` is accepted and warned about as not acted on.

pub mod codec;
pub mod fsm;
