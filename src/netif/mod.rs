//! Links, addresses and ARP sysctls of this node, over rtnetlink and procfs.
//!
//! This module owns four things and nothing else:
//!
//! - [`strict_arp`]: the `arp_ignore`/`arp_announce` sysctls that keep nodes which hold a VIP on `kube-ipvs0`, but do
//!   not own it, silent on the wire (`--strict-arp=enforce|check|off`);
//! - [`links`]: a read-only listing of the node's interfaces, for the planner;
//! - [`bind`]: the VIP host addresses on one link (`kube-ipvs0` in integrated mode, `ironlb0` in direct mode);
//! - [`proxy_mode`]: which mode kube-proxy runs in on this node, as it says itself, or as its links show.
//!
//! It never touches addresses it did not add (anything outside the caller's pools, anything that is not a /32 or
//! /128), never changes an existing link's state, and never answers ARP itself: that is `arp`'s job.
//!
//! Every kernel change is a value first ([`bind::AddressRequest`], [`strict_arp::SysctlWrite`]): a pure function
//! computes it from wanted and actual state, and one executor per kind applies it.

pub mod bind;
pub mod links;
pub mod proxy_mode;
pub mod strict_arp;

pub use bind::{AddressReconciler, AddressRequest, LinkKind};
pub use links::LocalInterface;
pub use strict_arp::{StrictArpMode, StrictArpStatus, SysctlValues};

/// Returns the positive errno of a netlink NACK, if `err` is one.
///
/// The kernel answers a failed request with `NLMSG_ERROR` carrying a negative errno; rtnetlink hands it back as
/// `Error::NetlinkError`, whose `raw_code()` is that negative number.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => Some(-msg.raw_code()),
        _ => None,
    }
}

/// errno values the executors interpret. Taken from `asm-generic/errno-base.h` / `errno.h` (identical on every
/// architecture Linux runs IronLB on).
pub(crate) mod errno {
    pub const ENOENT: i32 = 2;
    pub const ENODEV: i32 = 19;
    pub const EEXIST: i32 = 17;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EADDRNOTAVAIL: i32 = 99;
}

/// Upper bounds of one netlink dump: a node with more links or addresses than this is not one IronLB runs on, and a
/// kernel that does not finish a dump in this time is stuck.
pub const DUMP_MAX_ITEMS: usize = 1 << 16;
pub const NETLINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a netlink dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpFailure {
    #[error("netlink: {0}")]
    Netlink(#[source] rtnetlink::Error),
    #[error("no answer within {NETLINK_TIMEOUT:?}")]
    TimedOut,
    #[error("more than {DUMP_MAX_ITEMS} entries")]
    TooMany,
}

/// Collects a dump, bounded in count and in time.
pub(crate) async fn collect_dump<T>(
    stream: impl futures::Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>, DumpFailure> {
    use futures::TryStreamExt;
    let collect = async {
        let mut stream = std::pin::pin!(stream);
        let mut items = Vec::new();
        while let Some(item) = stream.try_next().await.map_err(DumpFailure::Netlink)? {
            if items.len() == DUMP_MAX_ITEMS {
                return Err(DumpFailure::TooMany);
            }
            items.push(item);
        }
        Ok(items)
    };
    tokio::time::timeout(NETLINK_TIMEOUT, collect)
        .await
        .map_err(|_| DumpFailure::TimedOut)?
}
