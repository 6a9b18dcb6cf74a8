//! The few socket operations that the crates IronLB uses offer no safe call for, each in one small function with
//! its safety argument: handing a raw socket to tokio's reactor, and the link-layer address of a packet socket.

use std::io;

use socket2::{SockAddr, SockAddrStorage, Socket};
use tokio::io::unix::AsyncFd;

/// Hands `socket` (non-blocking) to tokio's reactor.
#[allow(unsafe_code)]
pub fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `AsyncFd` owns the `Socket`, which owns its open descriptor until it is dropped with the
    // `AsyncFd`; `as_raw_fd` always returns that one descriptor.
    unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

/// The `AF_PACKET` address of interface `ifindex` for IPv4 frames to `mac` (all zeros to bind a socket to the
/// interface).
#[allow(unsafe_code)]
pub fn link_address(ifindex: u32, mac: [u8; 6]) -> SockAddr {
    const ETH_P_IP: u16 = 0x0800;
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: a `sockaddr_storage` is large enough and aligned for any socket address, `sockaddr_ll` included, and
    // every bit pattern is a valid `sockaddr_ll` (plain integers and arrays).
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_IP.to_be();
    ll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&mac);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised `sockaddr_ll` of `len` bytes, with its family set.
    unsafe { SockAddr::new(storage, len) }
}
