//! BFD (RFC 5880), Asynchronous mode, for the BGP sessions whose BGPPeer names a BFDProfile.
//!
//! - [`codec`]: the Control packet, decode (with RFC 5880's reception checks) and encode, golden bytes from FRR's
//!   bfdd;
//! - [`fsm`]: one session's state machine, pure: packets and time in, packets and state changes out;
//! - [`transport`]: the sessions over UDP (RFC 5881 single hop, RFC 5883 multihop), with the TTL checks;
//! - [`echo`]: the Echo function's packets (IPv4 single hop), looped back by the peer's forwarding plane.
//!
//! The BGP speaker (`agent::bgp`) runs a session beside each BGP session whose BGPPeer names a BFDProfile, and
//! resets the BGP session when it goes Down.

pub mod codec;
pub mod echo;
pub mod fsm;
pub mod transport;
