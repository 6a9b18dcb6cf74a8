//! Unnumbered BGP peers (a BGPPeer with `interface` instead of `peerAddress`): the session runs between the two ends'
//! IPv6 link-local addresses on that interface, and each end learns the other's address from its Router
//! Advertisements, the way FRR's `neighbor <interface> interface` does.
//!
//! - The router's address comes from the Router Advertisements it sends on the link (FRR sends them every 10 s on an
//!   interface with an unnumbered neighbour). A Router Solicitation at start asks for one at once.
//! - IronLB sends its own Router Advertisements, so that the router learns this node's address: FRR refuses a
//!   connection from a link-local address it has not heard an advertisement from. They say "Router Lifetime 0": no
//!   host on the link takes this node as its default router, and they carry no prefix.
//! - Only advertisements with hop limit 255 from a link-local source count (RFC 4861 section 6.1.2), so nothing from
//!   off the link can redirect the session.
//!
//! [`classify`] and the packet builders are pure; [`Discovery`] is the task that owns the ICMPv6 socket of one
//! interface and publishes the router it last heard.

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrIn6, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::task::Task;

/// ICMPv6 types (RFC 4861 section 4).
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// The Source Link-Layer Address option.
const SOURCE_LINK_LAYER: u8 = 1;
/// How often this node advertises itself; FRR's interval on unnumbered links.
pub const ADVERTISE_INTERVAL: Duration = Duration::from_secs(10);
/// The least time between two advertisements sent in answer to solicitations.
const ANSWER_GAP: Duration = Duration::from_secs(1);
/// How often solicitations and advertisements go out until a router is heard: the first ones can be lost, or leave
/// while the link-local address is still tentative (duplicate address detection takes about a second).
const SEARCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long after a failure to open the interface's socket (no such interface yet) it is tried again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// A Router Advertisement that makes nobody route through this node: hop limit, flags, router lifetime, reachable
/// time and retransmission timer all 0 (unspecified), with this node's link-layer address. The kernel fills in the
/// checksum.
pub fn router_advertisement(mac: [u8; 6]) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = ROUTER_ADVERTISEMENT;
    p[16] = SOURCE_LINK_LAYER;
    p[17] = 1; // in units of 8 bytes
    p[18..24].copy_from_slice(&mac);
    p
}

/// A Router Solicitation with this node's link-layer address.
pub fn router_solicitation(mac: [u8; 6]) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ROUTER_SOLICITATION;
    p[8] = SOURCE_LINK_LAYER;
    p[9] = 1;
    p[10..16].copy_from_slice(&mac);
    p
}

/// What a received ICMPv6 packet means to the discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A valid Router Advertisement from this link-local address.
    Router(Ipv6Addr),
    /// A Router Solicitation: a router looking for its neighbours; answered with an advertisement.
    Solicitation,
    /// Anything else, or an advertisement that fails RFC 4861's checks.
    Other,
}

/// Reads one received packet: `from` is its source, `hop_limit` the hop limit it arrived with.
pub fn classify(packet: &[u8], from: Ipv6Addr, hop_limit: Option<i32>) -> Heard {
    // RFC 4861 section 6.1: hop limit 255 proves the sender is on the link; code 0.
    if hop_limit != Some(255) || packet.len() < 8 || packet[1] != 0 {
        return Heard::Other;
    }
    match packet[0] {
        ROUTER_ADVERTISEMENT if packet.len() >= 16 && from.is_unicast_link_local() => {
            Heard::Router(from)
        }
        ROUTER_SOLICITATION => Heard::Solicitation,
        _ => Heard::Other,
    }
}

/// The router on the link, as its advertisements show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkPeer {
    pub address: Ipv6Addr,
    pub ifindex: u32,
}

impl LinkPeer {
    /// The address to connect to: the link-local address scoped to the interface.
    pub fn socket_addr(&self, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(self.address, port, 0, self.ifindex)
    }
}

/// What [`Discovery`] publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStatus {
    /// The router last heard, None until one is.
    pub peer: Option<LinkPeer>,
    /// Why the interface cannot be used now (it does not exist, the socket was refused).
    pub error: Option<String>,
}

/// Learns the router on one interface and advertises this node on it, until dropped.
pub struct Discovery {
    interface: String,
    status: watch::Receiver<DiscoveryStatus>,
    _task: Task<()>,
}

impl Discovery {
    /// Starts on the current runtime.
    pub fn start(interface: &str) -> Discovery {
        let (tx, status) = watch::channel(DiscoveryStatus::default());
        let name = interface.to_string();
        Discovery {
            interface: interface.to_string(),
            status,
            _task: Task::spawn("unnumbered BGP discovery", run(name, tx)),
        }
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn status(&self) -> DiscoveryStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change, for a `select!` arm.
    pub fn watch(&self) -> watch::Receiver<DiscoveryStatus> {
        self.status.clone()
    }
}

/// The interface's index and link-layer address, in the calling thread's network namespace.
fn link_facts(interface: &str) -> io::Result<(u32, [u8; 6])> {
    let index = nix::net::if_::if_nametoindex(interface)
        .map_err(|e| io::Error::other(format!("interface {interface:?}: {e}")))?;
    let mac = nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| {
            a.address
                .and_then(|s| s.as_link_addr().and_then(|l| l.addr()))
        })
        .ok_or_else(|| {
            io::Error::other(format!("interface {interface:?} has no Ethernet address"))
        })?;
    Ok((index, mac))
}

/// A raw ICMPv6 socket bound to `interface`, sending with hop limit 255 and reporting each packet's hop limit.
fn open(interface: &str) -> io::Result<AsyncFd<Socket>> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(|e| {
            io::Error::new(e.kind(), format!("binding to interface {interface:?}: {e}"))
        })?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
    socket.set_nonblocking(true)?;
    crate::sys::register(socket)
}

struct Link {
    socket: AsyncFd<Socket>,
    index: u32,
    mac: [u8; 6],
}

impl Link {
    fn send(&self, packet: &[u8], to: Ipv6Addr) -> io::Result<usize> {
        let addr = SocketAddrV6::new(to, 0, 0, self.index);
        self.socket.get_ref().send_to(packet, &addr.into())
    }

    fn advertise(&self, interface: &str) {
        if let Err(error) = self.send(
            &router_advertisement(self.mac),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        ) {
            tracing::debug!(interface, %error, "Router Advertisement not sent");
        }
    }

    fn solicit(&self, interface: &str) {
        if let Err(error) = self.send(
            &router_solicitation(self.mac),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
        ) {
            tracing::debug!(interface, %error, "Router Solicitation not sent");
        }
    }

    /// One packet: its bytes' length, source and hop limit.
    async fn receive(&self, buf: &mut [u8]) -> io::Result<(usize, Option<Ipv6Addr>, Option<i32>)> {
        loop {
            let mut guard = self.socket.readable().await?;
            let got = guard.try_io(|fd| {
                let mut iov = [io::IoSliceMut::new(buf)];
                let mut cmsg = nix::cmsg_space!(nix::libc::c_int);
                let msg = recvmsg::<SockaddrStorage>(
                    fd.get_ref().as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .map_err(io::Error::from)?;
                let mut hop_limit = None;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::Ipv6HopLimit(h) = c {
                        hop_limit = Some(h);
                    }
                }
                let from = msg
                    .address
                    .and_then(|a| a.as_sockaddr_in6().map(SockaddrIn6::ip));
                Ok((msg.bytes, from, hop_limit))
            });
            match got {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

async fn run(interface: String, status: watch::Sender<DiscoveryStatus>) {
    let fail = |error: String| {
        status.send_if_modified(|s| {
            let changed = s.error.as_ref() != Some(&error);
            if changed {
                tracing::warn!(interface = %interface, %error, "unnumbered BGP cannot use the interface");
            }
            s.error = Some(error);
            changed
        });
    };
    loop {
        let link = match link_facts(&interface).and_then(|(index, mac)| {
            Ok(Link {
                socket: open(&interface)?,
                index,
                mac,
            })
        }) {
            Ok(link) => link,
            Err(error) => {
                fail(error.to_string());
                tokio::time::sleep(REOPEN_AFTER).await;
                continue;
            }
        };
        status.send_if_modified(|s| s.error.take().is_some());
        let mut last_answer: Option<tokio::time::Instant> = None;
        let mut buf = [0u8; 1500];
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    // An interface deleted and made again has a new index: the bound socket hears nothing more.
                    if nix::net::if_::if_nametoindex(interface.as_str()).ok() != Some(link.index) {
                        break;
                    }
                    link.advertise(&interface);
                    if status.borrow().peer.is_none() {
                        link.solicit(&interface);
                        next += SEARCH_INTERVAL;
                    } else {
                        next += ADVERTISE_INTERVAL;
                    }
                    next = next.max(tokio::time::Instant::now());
                }
                got = link.receive(&mut buf) => {
                    let (len, from, hop_limit) = match got {
                        Ok(v) => v,
                        Err(error) => {
                            tracing::debug!(interface = %interface, %error, "ICMPv6 receive failed");
                            break;
                        }
                    };
                    let Some(from) = from else { continue };
                    match classify(&buf[..len], from, hop_limit) {
                        Heard::Router(address) => {
                            let peer = LinkPeer { address, ifindex: link.index };
                            let new = status.send_if_modified(|s| {
                                let changed = s.peer != Some(peer);
                                if changed {
                                    tracing::info!(interface = %interface, router = %address,
                                        "unnumbered BGP: router heard on the link");
                                    s.peer = Some(peer);
                                }
                                changed
                            });
                            // A router new to us may not know us yet: it refuses our connection until it does.
                            if new {
                                link.advertise(&interface);
                            }
                        }
                        Heard::Solicitation => {
                            let now = tokio::time::Instant::now();
                            if last_answer.is_none_or(|t| now.duration_since(t) >= ANSWER_GAP) {
                                last_answer = Some(now);
                                link.advertise(&interface);
                            }
                        }
                        Heard::Other => {}
                    }
                }
            }
        }
        fail(format!(
            "interface {interface:?} changed or went away; opening it again"
        ));
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0x5e, 0, 0x53, 0x01];

    #[test]
    fn advertisement_says_no_default_router_and_carries_the_mac() {
        let ra = router_advertisement(MAC);
        // type 134, code 0, checksum 0 (the kernel's), hop limit 0, flags 0, router lifetime 0, reachable 0,
        // retransmit 0, then the source link-layer option (type 1, one 8-byte unit).
        let want: [u8; 24] = [
            134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x02, 0, 0x5e, 0, 0x53, 0x01,
        ];
        assert_eq!(ra, want);
        let rs = router_solicitation(MAC);
        assert_eq!(
            rs,
            [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x02, 0, 0x5e, 0, 0x53, 0x01]
        );
    }

    #[test]
    fn only_on_link_advertisements_from_link_local_sources_count() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let ra = router_advertisement(MAC);
        assert_eq!(classify(&ra, ll, Some(255)), Heard::Router(ll));
        // Routed from off the link, or no hop limit reported: not proof of a neighbour.
        assert_eq!(classify(&ra, ll, Some(254)), Heard::Other);
        assert_eq!(classify(&ra, ll, None), Heard::Other);
        // RFC 4861: a router advertises from its link-local address.
        assert_eq!(classify(&ra, global, Some(255)), Heard::Other);
        // Truncated, or a non-zero code.
        assert_eq!(classify(&ra[..12], ll, Some(255)), Heard::Other);
        let mut bad = ra;
        bad[1] = 1;
        assert_eq!(classify(&bad, ll, Some(255)), Heard::Other);
        assert_eq!(
            classify(&router_solicitation(MAC), ll, Some(255)),
            Heard::Solicitation
        );
        // A Neighbour Solicitation is not for us.
        assert_eq!(
            classify(&[135, 0, 0, 0, 0, 0, 0, 0], ll, Some(255)),
            Heard::Other
        );
    }

    #[test]
    fn the_session_address_is_scoped_to_the_interface() {
        let p = LinkPeer {
            address: "fe80::1".parse().unwrap(),
            ifindex: 7,
        };
        assert_eq!(p.socket_addr(179).to_string(), "[fe80::1%7]:179");
    }
}
