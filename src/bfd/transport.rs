//! BFD over UDP: RFC 5881 (single hop, port 3784) and RFC 5883 (multihop, port 4784).
//!
//! ```text
//!  Bfd (one per agent) ── receive task per port and family ──(source address)──▶ session task ──▶ watch<BfdStatus>
//!                                                                                  │  fsm::BfdSession
//!                                                                                  └──▶ its own UDP socket ──▶ peer
//! ```
//!
//! - Receiving: one socket per port and address family, shared by every session, with `IP_RECVTTL` /
//!   `IPV6_RECVHOPLIMIT`, so that each packet's TTL is checked: 255 for single hop (RFC 5881's GTSM), at least the
//!   profile's `minimumTtl` for multihop. A packet goes to the session of its source address; one from an address
//!   with no session, or failing the checks, is dropped and counted.
//! - Sending: each session has its own socket, bound to a source port in 49152..=65535 (RFC 5881), TTL 255.
//! - Nothing here blocks: sessions are tasks, and their state is a `watch`. They run on a runtime and thread of their
//!   own, so that a long pass of the agent's main loop delays no packet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};

use super::codec::{self, BfdState, Control, Diag};
use super::echo::EchoLink;
use super::fsm::{BfdAction, BfdSession, BfdTimers, Profile};
use crate::task::Task;

/// RFC 5881's destination port for single-hop Control packets.
pub const SINGLE_HOP_PORT: u16 = 3784;
/// RFC 5883's destination port for multihop Control packets.
pub const MULTIHOP_PORT: u16 = 4784;

/// One BFD session to set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdPeer {
    pub peer: IpAddr,
    /// The source address; None lets the kernel choose.
    pub local: Option<IpAddr>,
    pub multihop: bool,
    /// Multihop only: the lowest TTL accepted (MetalLB's `minimumTtl`, 254 by default).
    pub minimum_ttl: u8,
    pub profile: Profile,
    /// The VRF device the session runs in; it must be the one its [`Bfd`] was started in.
    pub vrf: Option<String>,
    /// The interface a link-local `peer` is reached on (an unnumbered BGP peer): packets are sent on it alone.
    pub interface: Option<String>,
}

/// What a session shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdStatus {
    pub state: BfdState,
    pub diag: Diag,
    /// The intervals in use, once the peer has been heard.
    pub timers: Option<BfdTimers>,
    /// Echo packets of this session that came back through the peer's forwarding plane.
    pub echoes: u64,
    /// Times the session went from Up to Down because the path failed (detection time expired, or the peer said
    /// Down); not when the peer took it administratively down.
    pub downs: u64,
}

type Inbox = mpsc::UnboundedSender<Control>;

/// The receiving side shared by the sessions of one agent.
pub struct Bfd {
    /// BFD's own runtime, on a thread of its own: a long pass on the agent's main loop must not delay a packet,
    /// or the peer would declare the session Down and take the node's routes with it.
    runtime: tokio::runtime::Handle,
    sessions: Arc<Mutex<HashMap<(IpAddr, bool), Inbox>>>,
    /// Multihop peers' lowest accepted TTL.
    minimum_ttl: Arc<Mutex<HashMap<IpAddr, u8>>>,
    _receivers: Vec<Task<()>>,
    next_disc: u32,
    /// The VRF device every socket is bound to, or None for the default VRF.
    vrf: Option<String>,
}

/// A running session; dropping it stops the session (the peer detects it).
pub struct BfdLink {
    status: watch::Receiver<BfdStatus>,
    sessions: Arc<Mutex<HashMap<(IpAddr, bool), Inbox>>>,
    key: (IpAddr, bool),
    _task: Task<()>,
}

impl BfdLink {
    pub fn status(&self) -> watch::Receiver<BfdStatus> {
        self.status.clone()
    }
}

impl Drop for BfdLink {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(&self.key);
        }
    }
}

/// Binds `socket` to the VRF device `vrf`, if any, naming it in the error.
fn bind_vrf(socket: &Socket, vrf: Option<&str>) -> io::Result<()> {
    match vrf {
        Some(vrf) => setsockopt(
            socket,
            sockopt::BindToDevice,
            &std::ffi::OsString::from(vrf),
        )
        .map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("binding to device {vrf:?}: {e}"))
        }),
        None => Ok(()),
    }
}

fn receive_socket(addr: SocketAddr, vrf: Option<&str>) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    bind_vrf(&socket, vrf)?;
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::Ipv4RecvTtl, &true).map_err(io::Error::from)?;
    } else {
        setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
    }
    Ok(socket)
}

/// Receives on `socket` until the task is dropped, handing each packet that passes the checks to its session.
async fn receive(
    socket: tokio::net::UdpSocket,
    multihop: bool,
    sessions: Arc<Mutex<HashMap<(IpAddr, bool), Inbox>>>,
    minimum_ttl: Arc<Mutex<HashMap<IpAddr, u8>>>,
) {
    let mut buf = [0u8; 512];
    loop {
        let fd = socket.as_raw_fd();
        let got = socket
            .async_io(tokio::io::Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(nix::libc::c_int);
                let msg =
                    recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                        .map_err(io::Error::from)?;
                let mut ttl = None;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    match c {
                        ControlMessageOwned::Ipv4Ttl(t) => ttl = Some(t),
                        ControlMessageOwned::Ipv6HopLimit(t) => ttl = Some(t),
                        _ => {}
                    }
                }
                let from = msg.address.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                });
                Ok((msg.bytes, ttl, from))
            })
            .await;
        let (len, ttl, from) = match got {
            Ok(v) => v,
            Err(error) => {
                tracing::debug!(%error, "BFD receive failed");
                continue;
            }
        };
        let Some(from) = from.map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }) else {
            continue;
        };
        let ttl = ttl.unwrap_or(0);
        let wanted = if multihop {
            minimum_ttl
                .lock()
                .ok()
                .and_then(|m| m.get(&from).copied())
                .map_or(254, i32::from)
        } else {
            255
        };
        if ttl < wanted {
            tracing::debug!(%from, ttl, wanted, "BFD packet with too low a TTL; dropped");
            continue;
        }
        let packet = match codec::decode(&buf[..len]) {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%from, %error, "BFD packet dropped");
                continue;
            }
        };
        let inbox = sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&(from, multihop)).cloned());
        if let Some(inbox) = inbox {
            let _ = inbox.send(packet);
        }
    }
}

/// A sending socket for one session: source port in 49152..=65535, TTL 255, connected to the peer.
fn send_socket(peer: &BfdPeer, seed: u32) -> io::Result<UdpSocket> {
    let port = if peer.multihop {
        MULTIHOP_PORT
    } else {
        SINGLE_HOP_PORT
    };
    let local = peer.local.unwrap_or(match peer.peer {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let domain = if peer.peer.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let mut last = io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free source port in 49152..=65535",
    );
    for i in 0..64u32 {
        let source =
            49152 + ((seed.wrapping_mul(2654435761).wrapping_add(i * 7919)) % 16384) as u16;
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        // A link-local peer is reached on its interface, which is in the VRF if there is one.
        bind_vrf(&socket, peer.interface.as_deref().or(peer.vrf.as_deref()))?;
        if peer.peer.is_ipv4() {
            socket.set_ttl_v4(255)?;
        } else {
            socket.set_unicast_hops_v6(255)?;
        }
        match socket.bind(&SocketAddr::new(local, source).into()) {
            Ok(()) => {
                let to = match (peer.peer, &peer.interface) {
                    (IpAddr::V6(v6), Some(interface)) => {
                        let index =
                            nix::net::if_::if_nametoindex(interface.as_str()).map_err(|e| {
                                io::Error::other(format!("interface {interface:?}: {e}"))
                            })?;
                        SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, index))
                    }
                    (ip, _) => SocketAddr::new(ip, port),
                };
                socket.connect(&to.into())?;
                socket.set_nonblocking(true)?;
                return Ok(socket.into());
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Bfd {
    /// Opens the receiving sockets (single hop and multihop, IPv4 and IPv6) in the calling thread's network
    /// namespace and starts their tasks on the current runtime. A family the system lacks is skipped; no socket at
    /// all is an error.
    pub fn start() -> io::Result<Bfd> {
        Bfd::start_in(None)
    }

    /// [`Bfd::start`] inside the VRF device `vrf`: every socket is bound to it, so packets come and go through the
    /// VRF's interfaces and routing table. Sockets in the default VRF do not receive what arrives in a VRF, so one
    /// `Bfd` per VRF runs beside the default one on the same ports.
    pub fn start_in(vrf: Option<&str>) -> io::Result<Bfd> {
        let sessions = Arc::new(Mutex::new(HashMap::new()));
        let minimum_ttl = Arc::new(Mutex::new(HashMap::new()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("ironlb-bfd".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        let _on_bfd_runtime = handle.enter();
        let mut receivers = Vec::new();
        let mut last_error = None;
        for (port, multihop) in [(SINGLE_HOP_PORT, false), (MULTIHOP_PORT, true)] {
            for ip in [
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ] {
                match receive_socket(SocketAddr::new(ip, port), vrf)
                    .and_then(tokio::net::UdpSocket::from_std)
                {
                    Ok(socket) => receivers.push(Task::spawn(
                        "BFD receive",
                        receive(socket, multihop, sessions.clone(), minimum_ttl.clone()),
                    )),
                    Err(error) => last_error = Some(error),
                }
            }
        }
        if receivers.is_empty() {
            return Err(last_error.unwrap_or_else(|| io::Error::other("no BFD socket")));
        }
        Ok(Bfd {
            sessions,
            minimum_ttl,
            _receivers: receivers,
            next_disc: 1,
            runtime: handle.clone(),
            vrf: vrf.map(str::to_string),
        })
    }

    /// Starts a session to `peer`. One session per peer address and hop kind.
    pub fn session(&mut self, peer: BfdPeer) -> io::Result<BfdLink> {
        if peer.vrf != self.vrf {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a session in VRF {:?} on the BFD sockets of VRF {:?}",
                    peer.vrf, self.vrf
                ),
            ));
        }
        let disc = self.next_disc;
        self.next_disc = self.next_disc.wrapping_add(1).max(1);
        let socket = send_socket(&peer, disc ^ std::process::id())?;
        let key = (peer.peer, peer.multihop);
        let (inbox, mut packets) = mpsc::unbounded_channel();
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(key, inbox);
        }
        if peer.multihop
            && let Ok(mut m) = self.minimum_ttl.lock()
        {
            m.insert(peer.peer, peer.minimum_ttl);
        }
        let now = tokio::time::Instant::now().into_std();
        let mut fsm = BfdSession::new(echo_profile(&peer), disc, now);
        let (status_tx, status) = watch::channel(BfdStatus {
            state: BfdState::Down,
            diag: Diag::None,
            timers: None,
            echoes: 0,
            downs: 0,
        });
        let local = socket.local_addr().ok().map(|a| a.ip());
        let _on_bfd_runtime = self.runtime.enter();
        let task = Task::spawn("BFD session", async move {
            let mut echo: Option<EchoLink> = None;
            loop {
                let deadline = fsm.next_deadline().map(tokio::time::Instant::from_std);
                let echo_back = async {
                    match &echo {
                        Some(link) => link.returned().await,
                        None => std::future::pending().await,
                    }
                };
                let actions = tokio::select! {
                    packet = packets.recv() => {
                        let Some(packet) = packet else { return };
                        fsm.receive(&packet, std::time::Instant::now())
                    }
                    _ = crate::task::sleep_until(deadline) => fsm.timers(std::time::Instant::now()),
                    back = echo_back => {
                        match back {
                            Ok(()) => {
                                fsm.echo_returned(std::time::Instant::now());
                                status_tx.send_modify(|s| s.echoes += 1);
                            }
                            Err(error) => {
                                tracing::warn!(peer = %peer.peer, %error, "BFD echo socket failed: control \
                                    packets alone detect from now on");
                                echo = None;
                                fsm.disable_echo();
                            }
                        }
                        Vec::new()
                    }
                };
                for action in actions {
                    match action {
                        BfdAction::SendEcho => {
                            if echo.is_none() {
                                let opened = match (peer.peer, local) {
                                    (IpAddr::V4(to), Some(IpAddr::V4(from))) => {
                                        EchoLink::open(to, from, disc)
                                    }
                                    _ => Err(io::Error::other("echo runs over IPv4 only")),
                                };
                                match opened {
                                    Ok(link) => echo = Some(link),
                                    Err(error) => {
                                        tracing::warn!(peer = %peer.peer, %error, "BFD echo function unavailable: \
                                            control packets alone detect");
                                        fsm.disable_echo();
                                    }
                                }
                            }
                            if let Some(link) = &mut echo {
                                link.send();
                            }
                        }
                        BfdAction::Send(p) => {
                            let bytes = codec::encode(&p);
                            // A full send buffer or an unreachable peer loses one packet; the next one follows.
                            let _ = socket.send(&bytes);
                        }
                        BfdAction::StateChanged { from, to, diag } => {
                            tracing::info!(peer = %peer.peer, %from, %to, ?diag, "BFD session state");
                            // RFC 5882 section 3.2: a peer taking the session administratively down is not a
                            // failure of the path, and must not take the BGP session down with it.
                            let failed = from == BfdState::Up
                                && to != BfdState::Up
                                && fsm.remote_state() != BfdState::AdminDown;
                            if from == BfdState::Up && !failed {
                                tracing::info!(peer = %peer.peer, "the peer took the BFD session administratively \
                                    down: not counted as a failure (RFC 5882)");
                            }
                            status_tx.send_modify(|s| {
                                s.state = to;
                                s.diag = diag;
                                if failed {
                                    s.downs += 1;
                                }
                            });
                            if to != BfdState::Up {
                                // Opened again on the next Up: the peer's link-layer address may have changed.
                                echo = None;
                            }
                        }
                    }
                }
                let timers = fsm.negotiated();
                status_tx.send_if_modified(|s| {
                    let changed = s.timers != timers;
                    s.timers = timers;
                    changed
                });
            }
        });
        Ok(BfdLink {
            status,
            sessions: self.sessions.clone(),
            key,
            _task: task,
        })
    }
}

/// The session's profile as echo can run here: RFC 5881's echo is for single-hop sessions (and IronLB's for IPv4),
/// and this node loops the peer's echo packets back only if it forwards IPv4; otherwise it advertises none.
fn echo_profile(peer: &BfdPeer) -> Profile {
    let mut profile = peer.profile;
    let usable = !peer.multihop && peer.peer.is_ipv4();
    if !usable {
        profile.echo_transmit_interval = Duration::ZERO;
        profile.echo_receive_interval = Duration::ZERO;
    }
    if !profile.echo_receive_interval.is_zero() && !forwards_ipv4() {
        tracing::warn!(peer = %peer.peer, "BFD echo: this node does not forward IPv4 \
            (net.ipv4.conf.all.forwarding is 0), so it cannot loop the peer's echo packets back: it advertises none");
        profile.echo_receive_interval = Duration::ZERO;
    }
    profile
}

/// Whether the calling thread's network namespace forwards IPv4.
fn forwards_ipv4() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/forwarding").is_ok_and(|v| v.trim() == "1")
}

/// How long to wait, at most, for a session to reach `state`.
pub async fn wait_for(link: &BfdLink, state: BfdState, limit: Duration) -> bool {
    let mut status = link.status();
    tokio::time::timeout(limit, status.wait_for(|s| s.state == state))
        .await
        .is_ok_and(|r| r.is_ok())
}
