//! Layer 2 announcement: a userspace ARP (IPv4) and NDP (IPv6) responder on raw packet sockets, built on pnet.
//!
//! It owns the answers this node gives for the VIPs it announces, on the interfaces the plan names, and the
//! gratuitous ARP / unsolicited neighbour advertisements sent when it takes a VIP over. It must not touch addresses,
//! sysctls or routes (that is `netif`'s job) and never decides who owns a VIP: the plan arrives on a watch channel.
//!
//! ```text
//!  watch::Receiver<Announcements>
//!            │ changed()
//!            ▼
//!  control task (tokio) ── opens/closes one Port per interface in use ──┐
//!   │  • diffs the plan: new (interface, VIP) pairs → gratuitous now     │
//!   │  • every garp_period → gratuitous for all VIPs                     │
//!   │  • writes each Port's owned-VIP set (release is immediate)         ▼
//!   │    (a VIP that yields is dropped by the thread at another's claim)  │
//!   └──────────── send via Port's sender (Mutex) ◀──── receive thread per Port (std, blocking pnet,
//!                                                       read timeout so it sees stop flags):
//!                                                       decode → decide (pure) → reply
//! ```
//!
//! [`codec`] is the pure wire format, [`decide`] the pure choice of what to answer, [`responder`] the I/O shell.

pub mod codec;
pub mod decide;
pub mod metrics;
pub mod responder;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use codec::{ArpOp, ArpPacket, DecodeError, Frame, MacAddr, NaFlags, NdpMessage, NdpPacket};
pub use decide::LinkRefusal;
pub use metrics::ArpMetrics;
pub use responder::{ArpResponder, ArpResponderHandle};

/// What this node announces: every VIP it owns, with the interfaces to answer on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announcements {
    pub vips: BTreeMap<IpAddr, Announce>,
}

/// How one VIP is announced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    /// The interfaces to answer ARP/NDP on for this VIP.
    pub interfaces: BTreeSet<String>,
    /// When the change leading to this node owning the VIP was observed (for the failover histogram).
    pub since: Option<Instant>,
    /// Whether answering stops as soon as another station claims the VIP: true while the VIP is being handed to
    /// another node, or kept only for want of news (see [`decide::Answering`]).
    pub yields: bool,
}

/// How the responder behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpConfig {
    /// How often every owned VIP is announced again after the takeover announcement. Zero disables repeats.
    pub garp_period: Duration,
    /// How long a receive thread blocks before it checks whether it should stop; also the bound on how long
    /// dropping the handle waits for those threads.
    pub read_timeout: Duration,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            garp_period: Duration::from_secs(10),
            read_timeout: Duration::from_millis(200),
        }
    }
}

/// Errors of the ARP/NDP responder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the ARP responder must be started inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("read timeout {0:?} must be between 1 ms and 5 s")]
    ReadTimeout(Duration),
    #[error("interface {interface}: {reason}")]
    Refused {
        interface: String,
        reason: LinkRefusal,
    },
    #[error("interface {interface}: cannot open a packet socket")]
    Channel {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {interface}: cannot start its receive thread")]
    Thread {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
