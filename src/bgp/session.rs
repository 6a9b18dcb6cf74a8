//! One BGP session over tokio TCP: it connects actively to the peer (source address, TTL, TCP MD5), runs the
//! [`Fsm`], and keeps the peer's view of our routes equal to the route set it is given, sending only differences.
//!
//! Every failure is logged with the peer's name and leads to a reconnect with backoff; nothing here panics on
//! what the network sends.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::codec::{self, Received, RouteAttrs, UpdateContext};
use super::fsm::{Action, Event, Fsm, FsmConfig, Negotiated, State, Timer};

/// The routes a session advertises: prefix → attributes.
pub type RouteSet = BTreeMap<IpNet, RouteAttrs>;

/// How to reach the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// The BGPPeer's name, for logs and metrics.
    pub name: String,
    pub peer: SocketAddr,
    pub source: Option<IpAddr>,
    /// TCP MD5 signature key (RFC 2385).
    pub password: Option<String>,
    /// IP TTL / hop limit of the session's packets: 1 for single-hop eBGP, 255 otherwise.
    pub ttl: u32,
    pub connect_timeout: Duration,
    /// The next hop of IPv6 routes sent over an IPv4 session: the node's IPv6 address toward the peer. Without
    /// it such a session carries IPv4 routes only (and the other way round for IPv4 routes over IPv6).
    pub alt_next_hop: Option<IpAddr>,
    /// The VRF device the session's socket is bound to (`SO_BINDTODEVICE`): the VRF's routing table then reaches
    /// the peer and picks the source address, which is also the routes' next hop.
    pub vrf: Option<String>,
    pub fsm: FsmConfig,
}

impl std::fmt::Debug for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStatus")
            .field("state", &self.state)
            .field("advertised", &self.advertised)
            .field("updates_sent", &self.updates_sent)
            .field("flaps", &self.flaps)
            .field("last_error", &self.last_error)
            .finish()
    }
}

/// What a session reports about itself.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub state: State,
    /// Prefixes the peer currently holds from us.
    pub advertised: usize,
    pub updates_sent: u64,
    /// Times an Established session went down.
    pub flaps: u64,
    pub last_error: Option<String>,
}

/// A running session. Dropping it aborts the task (the peer sees the connection close).
pub struct Session {
    name: String,
    routes: watch::Sender<Arc<RouteSet>>,
    status: watch::Receiver<SessionStatus>,
    stop: Option<oneshot::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts the session task on the current tokio runtime.
    pub fn spawn(config: SessionConfig, routes: RouteSet) -> Session {
        let (routes_tx, routes_rx) = watch::channel(Arc::new(routes));
        let (status_tx, status_rx) = watch::channel(SessionStatus {
            state: State::Idle,
            advertised: 0,
            updates_sent: 0,
            flaps: 0,
            last_error: None,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let name = config.name.clone();
        let task = tokio::spawn(run(config, routes_rx, status_tx, stop_rx));
        Session {
            name,
            routes: routes_tx,
            status: status_rx,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the route set; the session sends the difference when Established.
    pub fn set_routes(&self, routes: RouteSet) {
        self.routes.send_if_modified(|current| {
            if **current == routes {
                false
            } else {
                *current = Arc::new(routes);
                true
            }
        });
    }

    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Stops the session. `graceful`: close the connection without a Cease NOTIFICATION, so that a peer with
    /// graceful restart keeps our routes until we are back (agent restart); otherwise tell the peer we are gone.
    pub async fn stop(mut self, graceful: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(graceful);
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    local: SocketAddr,
    buf: Vec<u8>,
}

struct Driver {
    config: SessionConfig,
    fsm: Fsm,
    conn: Option<Conn>,
    connecting: Option<std::pin::Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>>,
    timers: BTreeMap<TimerKey, Instant>,
    /// What the peer holds from us (valid while Established).
    sent: RouteSet,
    negotiated: Option<Negotiated>,
    status: watch::Sender<SessionStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    ConnectRetry,
    Hold,
    Keepalive,
}

impl From<Timer> for TimerKey {
    fn from(t: Timer) -> Self {
        match t {
            Timer::ConnectRetry => TimerKey::ConnectRetry,
            Timer::Hold => TimerKey::Hold,
            Timer::Keepalive => TimerKey::Keepalive,
        }
    }
}

impl From<TimerKey> for Timer {
    fn from(t: TimerKey) -> Self {
        match t {
            TimerKey::ConnectRetry => Timer::ConnectRetry,
            TimerKey::Hold => Timer::Hold,
            TimerKey::Keepalive => Timer::Keepalive,
        }
    }
}

async fn run(
    config: SessionConfig,
    mut routes: watch::Receiver<Arc<RouteSet>>,
    status: watch::Sender<SessionStatus>,
    mut stop: oneshot::Receiver<bool>,
) {
    let mut d = Driver {
        fsm: Fsm::new(config.fsm.clone()),
        config,
        conn: None,
        connecting: None,
        timers: BTreeMap::new(),
        sent: RouteSet::new(),
        negotiated: None,
        status,
    };
    let mut current = routes.borrow_and_update().clone();
    d.event(Event::Start, &current).await;
    loop {
        let deadline = d
            .timers
            .iter()
            .min_by_key(|(_, at)| **at)
            .map(|(k, at)| (*k, *at));
        let event = tokio::select! {
            graceful = &mut stop => {
                d.event(Event::Stop { graceful: graceful.unwrap_or(true) }, &current).await;
                return;
            }
            res = async { d.connecting.as_mut().expect("guarded").await }, if d.connecting.is_some() => {
                d.connecting = None;
                match res {
                    Ok(stream) => match d.attach(stream) {
                        Ok(()) => Event::TcpConnected,
                        Err(e) => Event::TcpFailed(e.to_string()),
                    },
                    Err(e) => Event::TcpFailed(e.to_string()),
                }
            }
            res = read_some(d.conn.as_mut()), if d.conn.is_some() => match res {
                Ok(0) => Event::TcpFailed("connection closed by peer".into()),
                Ok(_) => {
                    for event in d.frames() {
                        let stop_reading = matches!(event, Event::DecodeError { .. });
                        d.event(event, &current).await;
                        if stop_reading || d.conn.is_none() {
                            break;
                        }
                    }
                    continue;
                }
                Err(e) => Event::TcpFailed(e.to_string()),
            },
            _ = async { tokio::time::sleep_until(deadline.expect("guarded").1).await }, if deadline.is_some() => {
                let key = deadline.expect("guarded").0;
                d.timers.remove(&key);
                Event::TimerExpired(key.into())
            }
            changed = routes.changed() => {
                if changed.is_err() {
                    // The owner is gone without stopping us: close quietly.
                    d.event(Event::Stop { graceful: true }, &current).await;
                    return;
                }
                current = routes.borrow_and_update().clone();
                if d.fsm.state() == State::Established {
                    d.sync_routes(&current).await;
                }
                continue;
            }
        };
        d.event(event, &current).await;
    }
}

async fn read_some(conn: Option<&mut Conn>) -> io::Result<usize> {
    let Some(conn) = conn else { return Ok(0) };
    let mut chunk = [0u8; 8192];
    let n = conn.reader.read(&mut chunk).await?;
    conn.buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

impl Driver {
    fn attach(&mut self, stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let (reader, writer) = stream.into_split();
        self.conn = Some(Conn {
            reader,
            writer,
            local,
            buf: Vec::new(),
        });
        Ok(())
    }

    /// Cuts the buffered bytes into events.
    fn frames(&mut self) -> Vec<Event> {
        let asn4 = self.fsm.negotiated().is_none_or(|n| n.asn4);
        let Some(conn) = self.conn.as_mut() else {
            return Vec::new();
        };
        let (results, at) = codec::decode_stream(&conn.buf, asn4);
        let events = results
            .into_iter()
            .map(|r| match r {
                Ok(Received::Message(m)) => Event::Received(m),
                Ok(Received::Update) => Event::ReceivedUpdate,
                Err(e) => Event::DecodeError {
                    message: e.message,
                    notification: e.notification,
                },
            })
            .collect();
        conn.buf.drain(..at);
        events
    }

    async fn event(&mut self, event: Event, routes: &RouteSet) {
        let mut queue: std::collections::VecDeque<Action> = self.fsm.handle(event).into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Connect => {
                    let config = self.config.clone();
                    self.connecting = Some(Box::pin(async move {
                        match tokio::time::timeout(config.connect_timeout, connect(&config)).await {
                            Ok(res) => res,
                            Err(_) => {
                                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                            }
                        }
                    }));
                    self.publish(None);
                }
                Action::Disconnect => {
                    if let Some(mut conn) = self.conn.take() {
                        let _ = conn.writer.shutdown().await;
                    }
                    self.connecting = None;
                    self.sent.clear();
                    self.negotiated = None;
                }
                Action::Send(msg) => {
                    if let Err(e) = self.write(&[msg]).await {
                        queue.extend(
                            self.fsm
                                .handle(Event::TcpFailed(format!("write failed: {e}"))),
                        );
                    }
                }
                Action::SetTimer(t, Some(after)) => {
                    self.timers.insert(t.into(), Instant::now() + after);
                }
                Action::SetTimer(t, None) => {
                    self.timers.remove(&t.into());
                }
                Action::Established(neg) => {
                    info!(peer = %self.config.name, address = %self.config.peer, peer_asn = neg.peer_asn,
                          hold_time = neg.hold_time, ipv4 = neg.ipv4, ipv6 = neg.ipv6,
                          graceful_restart = neg.graceful_restart, "BGP session established");
                    self.negotiated = Some(neg.clone());
                    self.sent.clear();
                    self.sync_routes(routes).await;
                    if neg.graceful_restart && self.conn.is_some() {
                        let mut eor = Vec::new();
                        if neg.ipv4 {
                            eor.push(codec::end_of_rib(false));
                        }
                        if neg.ipv6 {
                            eor.push(codec::end_of_rib(true));
                        }
                        if let Err(e) = self.write(&eor).await {
                            queue.extend(
                                self.fsm
                                    .handle(Event::TcpFailed(format!("write failed: {e}"))),
                            );
                        }
                    }
                    self.publish(None);
                }
                Action::ResendRoutes => {
                    debug!(peer = %self.config.name, "route refresh requested");
                    self.sent.clear();
                    self.sync_routes(routes).await;
                }
                Action::Down { reason } => {
                    let was_up = self.status.borrow().state == State::Established;
                    warn!(peer = %self.config.name, address = %self.config.peer, %reason, "BGP session down");
                    self.status.send_modify(|s| {
                        if was_up {
                            s.flaps += 1;
                        }
                    });
                    self.publish(Some(reason));
                }
            }
        }
        self.publish(None);
    }

    fn publish(&self, error: Option<String>) {
        let state = self.fsm.state();
        let advertised = self.sent.len();
        self.status.send_if_modified(|s| {
            let mut changed = false;
            if s.state != state {
                s.state = state;
                changed = true;
            }
            if s.advertised != advertised {
                s.advertised = advertised;
                changed = true;
            }
            if let Some(e) = &error {
                s.last_error = Some(e.clone());
                changed = true;
            }
            changed
        });
    }

    async fn write(&mut self, msgs: &[BgpMessage]) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        for m in msgs {
            let encoded = codec::encode(m);
            if encoded.is_empty() {
                return Err(io::Error::other("message could not be encoded"));
            }
            bytes.extend_from_slice(&encoded);
        }
        let updates = msgs
            .iter()
            .filter(|m| matches!(m, BgpMessage::Update(_)))
            .count() as u64;
        tokio::time::timeout(Duration::from_secs(30), conn.writer.write_all(&bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        if updates > 0 {
            self.status.send_modify(|s| s.updates_sent += updates);
        }
        Ok(())
    }

    /// Sends what changed between what the peer holds and `routes`.
    async fn sync_routes(&mut self, routes: &RouteSet) {
        let (Some(neg), Some(conn)) = (self.negotiated.clone(), self.conn.as_ref()) else {
            return;
        };
        let local = conn.local.ip();
        let ctx = UpdateContext {
            local_asn: self.config.fsm.local_asn,
            ibgp: neg.ibgp,
            asn4: neg.asn4,
            // The next hop is the session's own source address; routes of the other family need the node's
            // address of that family (`alt_next_hop`).
            // RFC 8950: over IPv6 with no IPv4 next hop to give (an unnumbered peer), IPv4 routes may name the
            // session's IPv6 address when both sides offered it.
            next_hop_v4: match (local, self.config.alt_next_hop) {
                (IpAddr::V4(a), _) => Some(IpAddr::V4(a)),
                (_, Some(IpAddr::V4(a))) => Some(IpAddr::V4(a)),
                (IpAddr::V6(a), _) if neg.extended_next_hop => Some(IpAddr::V6(a)),
                (IpAddr::V6(a), _) => a.to_ipv4_mapped().map(IpAddr::V4),
            },
            next_hop_v6: match (local, self.config.alt_next_hop) {
                (IpAddr::V6(a), _) => Some(a),
                (_, Some(IpAddr::V6(a))) => Some(a),
                _ => None,
            },
        };
        let usable = |p: &IpNet| match p {
            IpNet::V4(_) => neg.ipv4 && ctx.next_hop_v4.is_some(),
            IpNet::V6(_) => neg.ipv6 && ctx.next_hop_v6.is_some(),
        };
        let withdrawn: Vec<IpNet> = self
            .sent
            .keys()
            .filter(|p| !routes.contains_key(p) || !usable(p))
            .copied()
            .collect();
        let mut by_attrs: BTreeMap<RouteAttrs, Vec<IpNet>> = BTreeMap::new();
        for (prefix, attrs) in routes {
            if usable(prefix) && self.sent.get(prefix) != Some(attrs) {
                by_attrs.entry(attrs.clone()).or_default().push(*prefix);
            }
        }
        let skipped: BTreeSet<IpNet> = routes.keys().filter(|p| !usable(p)).copied().collect();
        if !skipped.is_empty() {
            debug!(peer = %self.config.name, count = skipped.len(), "routes of a family the session does not carry are not sent");
        }
        let mut msgs = codec::withdraw(&withdrawn);
        for (attrs, prefixes) in &by_attrs {
            msgs.extend(codec::announce(&ctx, attrs, prefixes));
        }
        if msgs.is_empty() {
            return;
        }
        match self.write(&msgs).await {
            Ok(()) => {
                for p in &withdrawn {
                    self.sent.remove(p);
                }
                for (attrs, prefixes) in by_attrs {
                    for p in prefixes {
                        self.sent.insert(p, attrs.clone());
                    }
                }
                self.publish(None);
            }
            Err(e) => {
                let actions = self
                    .fsm
                    .handle(Event::TcpFailed(format!("write failed: {e}")));
                // Only teardown follows a failed write; run it without recursing into route sync.
                for a in actions {
                    match a {
                        Action::Disconnect => {
                            self.conn = None;
                            self.sent.clear();
                            self.negotiated = None;
                        }
                        Action::SetTimer(t, Some(after)) => {
                            self.timers.insert(t.into(), Instant::now() + after);
                        }
                        Action::SetTimer(t, None) => {
                            self.timers.remove(&t.into());
                        }
                        Action::Down { reason } => {
                            warn!(peer = %self.config.name, %reason, "BGP session down");
                            self.status.send_modify(|s| s.flaps += 1);
                            self.publish(Some(reason));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Opens the TCP connection with the session's socket options.
async fn connect(config: &SessionConfig) -> io::Result<TcpStream> {
    let socket = match config.peer {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    {
        let sock = socket2::SockRef::from(&socket);
        match config.peer {
            SocketAddr::V4(_) => sock.set_ttl_v4(config.ttl)?,
            SocketAddr::V6(_) => sock.set_unicast_hops_v6(config.ttl)?,
        }
    }
    if let Some(password) = &config.password {
        set_md5(&socket, config.peer.ip(), password)?;
    }
    if let Some(vrf) = &config.vrf {
        socket
            .bind_device(Some(vrf.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("binding to VRF device {vrf:?}: {e}")))?;
    }
    if let Some(source) = config.source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(config.peer).await
}

/// Sets the TCP MD5 signature key (RFC 2385) for segments to and from `peer`.
#[allow(unsafe_code)]
pub fn set_md5(socket: &impl std::os::fd::AsRawFd, peer: IpAddr, key: &str) -> io::Result<()> {
    // struct tcp_md5sig of <linux/tcp.h>.
    #[repr(C)]
    struct TcpMd5Sig {
        addr: libc::sockaddr_storage,
        flags: u8,
        prefixlen: u8,
        keylen: u16,
        ifindex: u32,
        key: [u8; 80],
    }
    let key = key.as_bytes();
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 password longer than 80 bytes",
        ));
    }
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut sig.addr).cast::<libc::sockaddr_in>(), sin) };
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut sig.addr).cast::<libc::sockaddr_in6>(), sin6) };
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: the pointer and length describe `sig`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
