//! BGP mode: a speaker that originates per-VIP routes to the BGPPeers of a node.
//!
//! - [`codec`]: framing, decode and encode on top of `netgauze-bgp-pkt`;
//! - [`fsm`]: the RFC 4271 session state machine, pure;
//! - [`session`]: one peer's session over tokio TCP (MD5, TTL, timers, route diffs).

pub mod codec;
pub mod fsm;
#[cfg(test)]
mod golden;
pub mod session;

/// The message type of the codec, re-exported for users of [`codec`] and [`fsm`] (the fuzz targets, tests).
pub use netgauze_bgp_pkt::BgpMessage;
