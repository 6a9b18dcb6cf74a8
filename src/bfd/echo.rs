//! The BFD Echo function's packets (RFC 5880 section 6.4, RFC 5881 section 4), for IPv4 single-hop sessions.
//!
//! An echo packet goes to the peer's link-layer address with this node's own address as both source and
//! destination, so the peer's forwarding plane routes it straight back; no BFD process on the peer sees it. It is
//! sent and received on an `AF_PACKET` socket bound to the interface toward the peer: the kernel would drop a
//! returning packet whose source is a local address ("martian source") before any UDP socket saw it. A BPF filter
//! keeps everything but UDP to port 3785 out of the socket.
//!
//! Our packets carry a magic, the session's discriminator and a sequence number; one counts as returned when it
//! comes back with that content, both addresses ours, and TTL 254 (sent with 255, forwarded once). The peer's own
//! echo packets, which this node's kernel forwards back to it, cross the same socket and are ignored.
//!
//! [`build`] and [`returned`] are pure; [`EchoLink`] owns the socket of one session.

use std::io;
use std::net::Ipv4Addr;

use pnet::packet::MutablePacket;
use pnet::packet::Packet;
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet::packet::udp::{MutableUdpPacket, UdpPacket};
use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

/// RFC 5881: echo packets go to UDP port 3785.
pub const ECHO_PORT: u16 = 3785;
/// What our echo payload starts with.
const MAGIC: [u8; 4] = *b"ILBE";
const PAYLOAD_LEN: usize = 16;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const PACKET_LEN: usize = IP_LEN + UDP_LEN + PAYLOAD_LEN;
const ETH_P_IP: u16 = 0x0800;

/// An echo packet from `local` to itself for session `disc`: IPv4 header (TTL 255, DSCP CS6 as BFD control
/// packets), UDP 3785 to 3785, then our payload.
pub fn build(local: Ipv4Addr, disc: u32, seq: u64) -> [u8; PACKET_LEN] {
    let mut buf = [0u8; PACKET_LEN];
    {
        let mut ip = MutableIpv4Packet::new(&mut buf).expect("buffer fits an IPv4 header");
        ip.set_version(4);
        ip.set_header_length(5);
        ip.set_dscp(48);
        ip.set_total_length(PACKET_LEN as u16);
        ip.set_identification((seq & 0xffff) as u16);
        ip.set_ttl(255);
        ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
        ip.set_source(local);
        ip.set_destination(local);
        let mut udp = MutableUdpPacket::new(ip.payload_mut()).expect("buffer fits a UDP header");
        udp.set_source(ECHO_PORT);
        udp.set_destination(ECHO_PORT);
        udp.set_length((UDP_LEN + PAYLOAD_LEN) as u16);
        let payload = udp.payload_mut();
        payload[..4].copy_from_slice(&MAGIC);
        payload[4..8].copy_from_slice(&disc.to_be_bytes());
        payload[8..16].copy_from_slice(&seq.to_be_bytes());
        let checksum = pnet::packet::udp::ipv4_checksum(&udp.to_immutable(), &local, &local);
        udp.set_checksum(checksum);
        let checksum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(checksum);
    }
    buf
}

/// The discriminator of one of our echo packets that came back through the peer: addressed from and to `local`,
/// TTL 254, our magic. None for anything else (the peer's echoes, our own on their way out).
pub fn returned(packet: &[u8], local: Ipv4Addr) -> Option<u32> {
    let ip = Ipv4Packet::new(packet)?;
    if ip.get_version() != 4
        || ip.get_source() != local
        || ip.get_destination() != local
        || ip.get_ttl() != 254
        || ip.get_next_level_protocol() != IpNextHeaderProtocols::Udp
    {
        return None;
    }
    let udp = UdpPacket::new(ip.payload())?;
    let payload = udp.payload();
    if udp.get_destination() != ECHO_PORT || payload.len() < PAYLOAD_LEN || payload[..4] != MAGIC {
        return None;
    }
    Some(u32::from_be_bytes(payload[4..8].try_into().ok()?))
}

/// Classic BPF over the IPv4 packet: unfragmented UDP to port 3785 passes, the rest is dropped in the kernel.
fn filter() -> [SockFilter; 9] {
    const LD_B_ABS: u16 = 0x30;
    const LD_H_ABS: u16 = 0x28;
    const LD_H_IND: u16 = 0x48;
    const LDX_B_MSH: u16 = 0xb1;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    [
        SockFilter::new(LD_B_ABS, 0, 0, 9),    // protocol
        SockFilter::new(JEQ_K, 0, 6, 17),      // UDP, else drop
        SockFilter::new(LD_H_ABS, 0, 0, 6),    // flags and fragment offset
        SockFilter::new(JSET_K, 4, 0, 0x1fff), // a later fragment: drop
        SockFilter::new(LDX_B_MSH, 0, 0, 0),   // X = header length
        SockFilter::new(LD_H_IND, 0, 0, 2),    // UDP destination port
        SockFilter::new(JEQ_K, 0, 1, u32::from(ECHO_PORT)),
        SockFilter::new(RET_K, 0, 0, 0xffff),
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}

/// Where the peer is on the link, from the kernel's neighbour table (`/proc/thread-self/net/arp`, the calling
/// thread's network namespace): its Ethernet address and the interface.
fn neighbour(peer: Ipv4Addr) -> io::Result<([u8; 6], String)> {
    let table = std::fs::read_to_string("/proc/thread-self/net/arp")?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0].parse::<Ipv4Addr>().ok() != Some(peer) {
            continue;
        }
        let mut mac = [0u8; 6];
        let octets: Vec<u8> = f[3]
            .split(':')
            .filter_map(|o| u8::from_str_radix(o, 16).ok())
            .collect();
        if octets.len() == 6 && octets.iter().any(|o| *o != 0) {
            mac.copy_from_slice(&octets);
            return Ok((mac, f[5].to_string()));
        }
    }
    Err(io::Error::other(format!(
        "no link-layer address for {peer} in the neighbour table"
    )))
}

/// One session's echo socket.
pub struct EchoLink {
    socket: AsyncFd<Socket>,
    to: SockAddr,
    local: Ipv4Addr,
    disc: u32,
    seq: u64,
}

impl EchoLink {
    /// Opens the socket toward `peer` for the session `disc` whose address is `local`.
    pub fn open(peer: Ipv4Addr, local: Ipv4Addr, disc: u32) -> io::Result<EchoLink> {
        let (mac, interface) = neighbour(peer)?;
        let index = nix::net::if_::if_nametoindex(interface.as_str())
            .map_err(|e| io::Error::other(format!("interface {interface:?}: {e}")))?;
        let socket = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(ETH_P_IP.to_be()))),
        )?;
        socket.attach_filter(&filter())?;
        socket.bind(&crate::sys::link_address(index, [0; 6]))?;
        socket.set_nonblocking(true)?;
        Ok(EchoLink {
            socket: crate::sys::register(socket)?,
            to: crate::sys::link_address(index, mac),
            local,
            disc,
            seq: 0,
        })
    }

    /// Sends the next echo packet. A full buffer loses it, as a lost packet on the wire would.
    pub fn send(&mut self) {
        self.seq += 1;
        let packet = build(self.local, self.disc, self.seq);
        if let Err(error) = self.socket.get_ref().send_to(&packet, &self.to) {
            tracing::debug!(%error, "BFD echo packet not sent");
        }
    }

    /// Resolves when one of this session's echo packets has come back.
    pub async fn returned(&self) -> io::Result<()> {
        use std::io::Read;
        let mut buf = [0u8; 256];
        loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|fd| {
                let mut socket: &Socket = fd.get_ref();
                socket.read(&mut buf)
            }) {
                Ok(Ok(len)) => {
                    if returned(&buf[..len], self.local) == Some(self.disc) {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn an_echo_packet_is_addressed_to_ourselves_and_recognised_when_forwarded_back() {
        let p = build(LOCAL, 7, 1);
        let ip = Ipv4Packet::new(&p).unwrap();
        assert_eq!(
            (ip.get_source(), ip.get_destination(), ip.get_ttl()),
            (LOCAL, LOCAL, 255)
        );
        assert_eq!(ipv4::checksum(&ip), ip.get_checksum());
        let udp = UdpPacket::new(ip.payload()).unwrap();
        assert_eq!((udp.get_source(), udp.get_destination()), (3785, 3785));
        assert_eq!(
            pnet::packet::udp::ipv4_checksum(&udp, &LOCAL, &LOCAL),
            udp.get_checksum()
        );
        // On its way out (TTL 255) it is not a returned echo; forwarded back once (TTL 254) it is.
        assert_eq!(returned(&p, LOCAL), None);
        let mut back = p;
        back[8] = 254;
        assert_eq!(returned(&back, LOCAL), Some(7));
        // Someone else's address, or not our magic: not ours.
        assert_eq!(returned(&back, Ipv4Addr::new(192, 0, 2, 3)), None);
        let mut other = back;
        other[IP_LEN + UDP_LEN] = b'X';
        assert_eq!(returned(&other, LOCAL), None);
        assert_eq!(returned(&back[..30], LOCAL), None);
    }
}
