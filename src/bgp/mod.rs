//! BGP mode: a speaker that originates per-VIP routes to the BGPPeers of a node.
//!
//! - [`codec`]: framing, decode and encode on top of `netgauze-bgp-pkt`;
//! - [`fsm`]: the RFC 4271 session state machine, pure;
//! - [`session`]: one peer's session over tokio TCP (MD5, TTL, timers, route diffs);
//! - [`unnumbered`]: finding an unnumbered peer's link-local address from its Router Advertisements.

pub mod codec;
pub mod fsm;
#[cfg(test)]
mod golden;
pub mod session;
pub mod unnumbered;

/// The message type of the codec, re-exported for users of [`codec`] and [`fsm`] (the fuzz targets, tests).
pub use netgauze_bgp_pkt::BgpMessage;
