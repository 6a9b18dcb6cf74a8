//! VIP host addresses on one link: `kube-ipvs0` in integrated mode, IronLB's own `ironlb0` in direct mode.
//!
//! The reconciler dumps the link's addresses, [`diff`] computes [`AddressRequest`] values from wanted and actual, and
//! [`execute`] applies each one. EEXIST on add and ENOENT/EADDRNOTAVAIL on delete mean someone (kube-proxy, or our
//! previous pass) already did it, so they count as success: kube-proxy binds the same VIPs on `kube-ipvs0`.
//!
//! Scope: IronLB only ever adds host prefixes (/32, /128), so it only ever deletes host-prefix addresses that the
//! caller's `owned` predicate (normally "inside one of our pools") claims. Every other address on the link, including
//! the ones kube-proxy binds for ClusterIPs and anything an operator added with a wider prefix, is left alone. It
//! never changes an existing link's state; [`ensure_link`] only creates a missing one.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::{AddressMessageBuilder, Handle, LinkBridge, LinkDummy};

use super::{DumpFailure, NETLINK_TIMEOUT, collect_dump, errno, netlink_errno};

/// A kernel change, as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressRequest {
    /// Add `ip` with a host prefix (/32 or /128; IPv6 with `nodad`).
    Add(IpAddr),
    /// Delete the host-prefix address `ip`.
    Del(IpAddr),
}

impl fmt::Display for AddressRequest {
    /// In `ip addr` notation, without the device.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressRequest::Add(ip) => write!(f, "add {ip}/{}", host_prefix(ip)),
            AddressRequest::Del(ip) => write!(f, "del {ip}/{}", host_prefix(ip)),
        }
    }
}

/// 32 for IPv4, 128 for IPv6.
pub fn host_prefix(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Addresses that can never be a VIP, whatever a pool says: unspecified, loopback, multicast and IPv6 link-local.
fn never_a_vip(ip: &IpAddr) -> bool {
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// The requests that turn `actual` (the link's addresses) into one holding `wanted`. Pure.
///
/// - Each wanted address not on the link at any prefix is added as a host route. One already there with a wider
///   prefix is already local, so it is left as it is; adding the /128 beside it would fail with EEXIST for IPv6
///   forever.
/// - Each host-prefix address on the link that `owned` claims and that is not wanted is deleted. Nothing else is.
/// - Addresses that can never be a VIP (unspecified, loopback, multicast, IPv6 link-local) are neither added nor
///   deleted.
///
/// Adds come first, then deletes, each in address order. Applying the result and diffing again yields nothing.
pub fn diff(
    wanted: &BTreeSet<IpAddr>,
    actual: &[IpNet],
    owned: impl Fn(&IpAddr) -> bool,
) -> Vec<AddressRequest> {
    let present: BTreeSet<IpAddr> = actual.iter().map(IpNet::addr).collect();
    let adds = wanted
        .iter()
        .filter(|ip| !never_a_vip(ip) && !present.contains(ip))
        .map(|ip| AddressRequest::Add(*ip));
    let dels: BTreeSet<IpAddr> = actual
        .iter()
        .filter(|net| net.prefix_len() == host_prefix(&net.addr()))
        .map(IpNet::addr)
        .filter(|ip| !wanted.contains(ip) && !never_a_vip(ip) && owned(ip))
        .collect();
    adds.chain(dels.into_iter().map(AddressRequest::Del))
        .collect()
}

/// What the executor did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The kernel made the change.
    Done,
    /// The kernel said it was already so (EEXIST on add, ENOENT/EADDRNOTAVAIL on delete).
    AlreadyDone,
}

/// The kind of link [`ensure_link`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// What kube-proxy uses for `kube-ipvs0`, and what IronLB uses for `ironlb0`: NOARP, no carrier, no traffic.
    Dummy,
    /// An empty bridge. It holds local addresses like a dummy link; a stand-in for kernels without dummy support,
    /// used only by the lab and the tests, and logged as such.
    Bridge,
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkKind::Dummy => "dummy",
            LinkKind::Bridge => "bridge",
        })
    }
}

/// Whether [`ensure_link`] found the link or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsuredLink {
    Existed { index: u32 },
    Created { index: u32 },
}

impl EnsuredLink {
    pub fn index(self) -> u32 {
        match self {
            EnsuredLink::Existed { index } | EnsuredLink::Created { index } => index,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("link {link} does not exist")]
    LinkNotFound { link: String },
    #[error("looking up link {link}: {source}")]
    LinkLookup {
        link: String,
        #[source]
        source: DumpFailure,
    },
    #[error("listing the addresses of {link}: {source}")]
    Addresses {
        link: String,
        #[source]
        source: DumpFailure,
    },
    #[error("{request} on {link}: {source}")]
    Request {
        request: AddressRequest,
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{request} on {link}: no answer within {NETLINK_TIMEOUT:?}")]
    RequestTimedOut {
        request: AddressRequest,
        link: String,
    },
    #[error(
        "this kernel cannot create {kind} links (for {link}); on a lab host use LinkKind::Bridge"
    )]
    KindUnsupported { link: String, kind: LinkKind },
    #[error("creating {kind} link {link}: no answer within {NETLINK_TIMEOUT:?}")]
    CreateLinkTimedOut { link: String, kind: LinkKind },
    #[error("creating {kind} link {link}: {source}")]
    CreateLink {
        link: String,
        kind: LinkKind,
        #[source]
        source: rtnetlink::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The index of the link called `name`, or `None` when there is none.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let lookup = collect_dump(handle.link().get().match_name(name).execute()).await;
    match lookup {
        Ok(links) => Ok(links.first().map(|l| l.header.index)),
        Err(DumpFailure::Netlink(e)) if netlink_errno(&e) == Some(errno::ENODEV) => Ok(None),
        Err(source) => Err(Error::LinkLookup {
            link: name.into(),
            source,
        }),
    }
}

/// Creates the link `name` of `kind`, up, unless a link of that name exists; an existing link is left untouched,
/// whatever its kind and state (kube-proxy keeps `kube-ipvs0` down, and that is its business).
pub async fn ensure_link(handle: &Handle, name: &str, kind: LinkKind) -> Result<EnsuredLink> {
    if let Some(index) = link_index(handle, name).await? {
        return Ok(EnsuredLink::Existed { index });
    }
    let message = match kind {
        LinkKind::Dummy => LinkDummy::new(name).up().build(),
        LinkKind::Bridge => {
            tracing::warn!(
                link = name,
                "creating an empty bridge as a stand-in for a dummy link: this host has no dummy support \
                 (lab and tests only)"
            );
            LinkBridge::new(name).up().build()
        }
    };
    let created = tokio::time::timeout(NETLINK_TIMEOUT, handle.link().add(message).execute()).await;
    match created {
        Ok(Ok(())) => {}
        // Someone created it between our lookup and our add.
        Ok(Err(e)) if netlink_errno(&e) == Some(errno::EEXIST) => {}
        Ok(Err(e)) if netlink_errno(&e) == Some(errno::EOPNOTSUPP) => {
            return Err(Error::KindUnsupported {
                link: name.into(),
                kind,
            });
        }
        Ok(Err(source)) => {
            return Err(Error::CreateLink {
                link: name.into(),
                kind,
                source,
            });
        }
        Err(_) => {
            return Err(Error::CreateLinkTimedOut {
                link: name.into(),
                kind,
            });
        }
    }
    let index = link_index(handle, name)
        .await?
        .ok_or_else(|| Error::LinkNotFound { link: name.into() })?;
    tracing::info!(link = name, %kind, index, "created link");
    Ok(EnsuredLink::Created { index })
}

/// The one executor for [`AddressRequest`]s on the link with index `index` (named `link`, for errors and logs).
pub async fn execute(
    handle: &Handle,
    link: &str,
    index: u32,
    request: AddressRequest,
) -> Result<Applied> {
    let (result, benign) = match request {
        AddressRequest::Add(ip) => {
            let mut add = handle.address().add(index, ip, host_prefix(&ip));
            if ip.is_ipv6() {
                // A VIP is shared by design; duplicate address detection would only delay it or mark it dadfailed.
                let msg = add.message_mut();
                msg.header.flags |= AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            let sent = tokio::time::timeout(NETLINK_TIMEOUT, add.execute()).await;
            (sent, &[errno::EEXIST][..])
        }
        AddressRequest::Del(ip) => {
            let del = handle.address().del(host_address_message(index, ip));
            let sent = tokio::time::timeout(NETLINK_TIMEOUT, del.execute()).await;
            // The kernel answers EADDRNOTAVAIL when the address is gone (inet_rtm_deladdr, inet6_addr_del); ENOENT
            // is what other rtnetlink deletes say.
            (sent, &[errno::ENOENT, errno::EADDRNOTAVAIL][..])
        }
    };
    match result {
        Ok(Ok(())) => Ok(Applied::Done),
        Ok(Err(e)) if netlink_errno(&e).is_some_and(|code| benign.contains(&code)) => {
            Ok(Applied::AlreadyDone)
        }
        Ok(Err(source)) => Err(Error::Request {
            request,
            link: link.into(),
            source,
        }),
        Err(_) => Err(Error::RequestTimedOut {
            request,
            link: link.into(),
        }),
    }
}

/// The message naming exactly the host-prefix address `ip` on `index`: the kernel matches local address and prefix
/// length, so a wider address with the same IP is not hit.
fn host_address_message(index: u32, ip: IpAddr) -> AddressMessage {
    match ip {
        IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(v4, 32)
            .build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(v6, 128)
            .build(),
    }
}

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct ReconcileOutcome {
    /// Every request [`diff`] computed, in order. Empty means the link was already as wanted.
    pub requests: Vec<AddressRequest>,
    /// Requests the kernel reported as already done (a race with kube-proxy or another pass).
    pub already_done: usize,
    /// Requests that failed; the others were still applied. The next reconcile retries them.
    pub failed: Vec<Error>,
}

/// Keeps the VIPs on one link.
pub struct AddressReconciler {
    handle: Handle,
    link: String,
    owned: Box<dyn Fn(&IpAddr) -> bool + Send + Sync>,
}

impl AddressReconciler {
    /// `owned` says which host-prefix addresses on the link IronLB may delete.
    pub fn new(
        handle: Handle,
        link: impl Into<String>,
        owned: impl Fn(&IpAddr) -> bool + Send + Sync + 'static,
    ) -> Self {
        AddressReconciler {
            handle,
            link: link.into(),
            owned: Box::new(owned),
        }
    }

    /// Owns the addresses inside `pools`.
    pub fn for_pools(handle: Handle, link: impl Into<String>, pools: Vec<IpNet>) -> Self {
        AddressReconciler::new(handle, link, move |ip| {
            pools.iter().any(|pool| pool.contains(ip))
        })
    }

    pub fn link(&self) -> &str {
        &self.link
    }

    /// The link's index and its addresses.
    pub async fn actual(&self) -> Result<(u32, Vec<IpNet>)> {
        let index =
            link_index(&self.handle, &self.link)
                .await?
                .ok_or_else(|| Error::LinkNotFound {
                    link: self.link.clone(),
                })?;
        let dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_filter(move |m| futures::future::ready(m.header.index == index));
        let messages = collect_dump(dump)
            .await
            .map_err(|source| Error::Addresses {
                link: self.link.clone(),
                source,
            })?;
        let addresses = messages
            .iter()
            .filter_map(super::links::address_from_message)
            .map(|(_, net)| net)
            .collect();
        Ok((index, addresses))
    }

    /// The requests a reconcile would make now, without making them.
    pub async fn plan(&self, wanted: &BTreeSet<IpAddr>) -> Result<(u32, Vec<AddressRequest>)> {
        let (index, actual) = self.actual().await?;
        Ok((index, diff(wanted, &actual, &self.owned)))
    }

    /// Dumps, diffs and applies. Fails as a whole only when the link or its addresses cannot be read.
    pub async fn reconcile(&self, wanted: &BTreeSet<IpAddr>) -> Result<ReconcileOutcome> {
        let (index, requests) = self.plan(wanted).await?;
        let mut outcome = ReconcileOutcome::default();
        for &request in &requests {
            match execute(&self.handle, &self.link, index, request).await {
                Ok(Applied::Done) => {
                    tracing::info!(link = %self.link, request = %request, "VIP address changed");
                }
                Ok(Applied::AlreadyDone) => outcome.already_done += 1,
                Err(e) => {
                    tracing::warn!(link = %self.link, request = %request, error = %e, "VIP address change failed");
                    outcome.failed.push(e);
                }
            }
        }
        outcome.requests = requests;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn in_pools(ip: &IpAddr) -> bool {
        ["192.0.2.0/24", "2001:db8::/64"]
            .iter()
            .any(|p| p.parse::<IpNet>().unwrap().contains(ip))
    }

    #[test]
    fn adds_what_is_missing_as_host_routes() {
        let reqs = diff(&ips(&["2001:db8::10", "192.0.2.10"]), &[], in_pools);
        assert_eq!(
            reqs,
            [
                AddressRequest::Add(ip("192.0.2.10")),
                AddressRequest::Add(ip("2001:db8::10"))
            ]
        );
        assert_eq!(reqs[0].to_string(), "add 192.0.2.10/32");
        assert_eq!(reqs[1].to_string(), "add 2001:db8::10/128");
    }

    #[test]
    fn nothing_to_do_when_bound() {
        let actual = nets(&["192.0.2.10/32", "2001:db8::10/128", "fe80::1/64"]);
        assert!(diff(&ips(&["192.0.2.10", "2001:db8::10"]), &actual, in_pools).is_empty());
    }

    #[test]
    fn deletes_only_owned_host_addresses() {
        let actual = nets(&[
            "192.0.2.10/32",    // ours, wanted
            "192.0.2.11/32",    // ours, no longer wanted
            "2001:db8::11/128", // ours, no longer wanted
            "203.0.113.99/24",  // someone else's
            "198.51.100.5/32",  // host prefix, but outside our pools (a ClusterIP, say)
            "192.0.2.12/24",    // inside a pool but not a host prefix: not something we add
        ]);
        assert_eq!(
            diff(&ips(&["192.0.2.10"]), &actual, in_pools),
            [
                AddressRequest::Del(ip("192.0.2.11")),
                AddressRequest::Del(ip("2001:db8::11"))
            ]
        );
    }

    #[test]
    fn wanted_address_at_a_wider_prefix_counts_as_bound() {
        let actual = nets(&["192.0.2.10/24", "2001:db8::10/64"]);
        assert!(diff(&ips(&["192.0.2.10", "2001:db8::10"]), &actual, in_pools).is_empty());
    }

    #[test]
    fn never_touches_impossible_vips() {
        let everything = |_: &IpAddr| true;
        let actual = nets(&["fe80::1/128", "127.0.0.2/32", "::1/128"]);
        assert!(diff(&BTreeSet::new(), &actual, everything).is_empty());
        assert!(diff(&ips(&["0.0.0.0", "ff02::1", "fe80::2"]), &[], everything).is_empty());
    }

    /// Applies requests the way the kernel would, for the idempotence property.
    fn apply(actual: &[IpNet], requests: &[AddressRequest]) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = actual.to_vec();
        for r in requests {
            match *r {
                AddressRequest::Add(ip) => out.push(IpNet::new(ip, host_prefix(&ip)).unwrap()),
                AddressRequest::Del(ip) => {
                    out.retain(|n| !(n.addr() == ip && n.prefix_len() == host_prefix(&ip)))
                }
            }
        }
        out
    }

    fn universe() -> Vec<IpNet> {
        nets(&[
            "192.0.2.1/32",
            "192.0.2.2/32",
            "192.0.2.3/24",
            "2001:db8::1/128",
            "2001:db8::2/128",
            "203.0.113.1/32",
            "203.0.113.2/24",
            "2001:db8:1::1/128",
        ])
    }

    proptest! {
        #[test]
        fn second_diff_is_empty_and_foreign_addresses_survive(
            actual_mask in 0u8..=255,
            wanted_mask in 0u8..=255,
        ) {
            let u = universe();
            let actual: Vec<IpNet> = u.iter().enumerate()
                .filter(|(i, _)| actual_mask & (1 << i) != 0).map(|(_, n)| *n).collect();
            let wanted: BTreeSet<IpAddr> = u.iter().enumerate()
                .filter(|(i, _)| wanted_mask & (1 << i) != 0).map(|(_, n)| n.addr()).collect();

            let after = apply(&actual, &diff(&wanted, &actual, in_pools));
            prop_assert!(diff(&wanted, &after, in_pools).is_empty());
            for ip in &wanted {
                prop_assert!(after.iter().any(|n| n.addr() == *ip));
            }
            for net in &actual {
                let ours = in_pools(&net.addr()) && net.prefix_len() == host_prefix(&net.addr());
                if !ours {
                    prop_assert!(after.contains(net), "{net} was removed");
                }
            }
        }
    }
}
