//! Hostile BGP peers against the real session driver ([`ironlb::bgp::session::Session`]), over loopback TCP: no
//! root, no namespaces. Each "peer" is a `TcpListener` of the test (port from the OS) that speaks raw bytes and
//! misbehaves: garbage, an oversized message, an OPEN with the wrong AS, a truncated message. The speaker must
//! answer with the RFC 4271 NOTIFICATION, close, reconnect with a growing backoff, and never panic, while a second,
//! well-behaved session of the same runtime stays Established with its route.
//!
//! Every wait is bounded by a tokio timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use ironlb::bgp::BgpMessage;
use ironlb::bgp::codec::{self, Received, RouteAttrs};
use ironlb::bgp::fsm::{Fsm, FsmConfig, PeerAs, State};
use ironlb::bgp::session::{RouteSet, Session, SessionConfig, SessionStatus};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, MessageHeaderError, OpenMessageError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const LOCAL_ASN: u32 = 64496;
const PEER_ASN: u32 = 64497;
const WRONG_ASN: u32 = 64499;
/// The first reconnect delay of the speaker; it doubles after each failure.
const RETRY: Duration = Duration::from_millis(300);
/// Generous bound of every single wait.
const WAIT: Duration = Duration::from_secs(10);

fn speaker_config(name: &str, port: u16) -> SessionConfig {
    SessionConfig {
        name: name.into(),
        peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        source: None,
        password: None,
        ttl: 255,
        connect_timeout: Duration::from_secs(2),
        alt_next_hop: None,
        vrf: None,
        fsm: FsmConfig {
            local_asn: LOCAL_ASN,
            peer_as: PeerAs::Fixed(PEER_ASN),
            router_id: Ipv4Addr::new(192, 0, 2, 10),
            hold_time: 9,
            keepalive: None,
            connect_retry: RETRY,
            graceful_restart: None,
            ipv4: true,
            ipv6: false,
            extended_next_hop: false,
            restarted: false,
        },
    }
}

fn routes(vip: Ipv4Addr) -> RouteSet {
    let prefix = IpNet::new(IpAddr::V4(vip), 32).expect("valid /32");
    [(prefix, RouteAttrs::default())].into()
}

/// The wire bytes of an OPEN from a peer with AS `asn` (built by the speaker's own FSM, configured as that peer).
fn peer_open(asn: u32) -> Vec<u8> {
    let fsm = Fsm::new(FsmConfig {
        local_asn: asn,
        peer_as: PeerAs::Fixed(LOCAL_ASN),
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        hold_time: 9,
        keepalive: None,
        connect_retry: RETRY,
        graceful_restart: None,
        ipv4: true,
        ipv6: false,
        extended_next_hop: false,
        restarted: false,
    });
    let bytes = codec::encode(&fsm.open_message());
    assert!(!bytes.is_empty(), "OPEN encodes");
    bytes
}

fn keepalive() -> Vec<u8> {
    codec::encode(&BgpMessage::KeepAlive)
}

/// A raw connection to the speaker with its receive buffer.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// The next whole message from the speaker; `None` when it closed the connection.
    async fn next(&mut self) -> Option<Received> {
        loop {
            match codec::frame_len(&self.buf) {
                Ok(Some(len)) => {
                    let msg = codec::decode(&self.buf[..len], true)
                        .unwrap_or_else(|e| panic!("the speaker sent an undecodable message: {e}"));
                    self.buf.drain(..len);
                    return Some(msg);
                }
                Ok(None) => {}
                Err(e) => panic!("the speaker sent a bad header: {e}"),
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the speaker neither sent nor closed within the deadline")
                .unwrap_or(0);
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "the speaker closed mid-message ({} bytes left)",
                    self.buf.len()
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the speaker's OPEN, which it sends first on every connection.
    async fn expect_open(&mut self) {
        match self.next().await {
            Some(Received::Message(BgpMessage::Open(open))) => {
                assert_eq!(open.my_as(), LOCAL_ASN as u16, "the speaker's OPEN");
            }
            other => panic!("expected the speaker's OPEN, got {other:?}"),
        }
    }

    /// Reads the NOTIFICATION the speaker answers with, then the close that must follow it.
    async fn expect_notification_and_close(&mut self) -> BgpNotificationMessage {
        let notification = match self.next().await {
            Some(Received::Message(BgpMessage::Notification(n))) => n,
            other => panic!("expected a NOTIFICATION, got {other:?}"),
        };
        assert!(
            self.next().await.is_none(),
            "the speaker must close the connection after its NOTIFICATION"
        );
        notification
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write within the deadline")
            .expect("write to the speaker");
    }
}

/// Accepts the speaker's next connection attempt; returns it with the time it was accepted.
async fn accept(listener: &TcpListener) -> (Wire, Instant) {
    let (stream, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the speaker (re)connects within the deadline")
        .expect("accept");
    (
        Wire {
            stream,
            buf: Vec::new(),
        },
        Instant::now(),
    )
}

/// What the well-behaved peer saw.
#[derive(Debug, Default)]
struct GoodLog {
    connections: u32,
    updates: u32,
    notifications: Vec<String>,
    closed: bool,
}

/// A well-behaved peer: answers the OPEN, sends KEEPALIVEs every second, counts what arrives.
fn spawn_good_peer(listener: TcpListener) -> (Arc<Mutex<GoodLog>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(GoodLog::default()));
    let task_log = log.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            task_log.lock().unwrap().connections += 1;
            let mut wire = Wire {
                stream,
                buf: Vec::new(),
            };
            wire.expect_open().await;
            wire.send(&peer_open(PEER_ASN)).await;
            wire.send(&keepalive()).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => wire.send(&keepalive()).await,
                    msg = async {
                        // No deadline of its own here: the test bounds its checks of this log.
                        loop {
                            match codec::frame_len(&wire.buf) {
                                Ok(Some(len)) => {
                                    let m = codec::decode(&wire.buf[..len], true);
                                    wire.buf.drain(..len);
                                    return Some(m);
                                }
                                Ok(None) => {}
                                Err(e) => return Some(Err(e)),
                            }
                            let mut chunk = [0u8; 4096];
                            match wire.stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return None,
                                Ok(n) => wire.buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                    } => {
                        let mut log = task_log.lock().unwrap();
                        match msg {
                            None => {
                                log.closed = true;
                                break;
                            }
                            Some(Ok(Received::Update)) => log.updates += 1,
                            Some(Ok(Received::Message(BgpMessage::Notification(n)))) => {
                                log.notifications.push(format!("{n:?}"))
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => log.notifications.push(format!("undecodable: {e}")),
                        }
                    }
                }
            }
        }
    });
    (log, task)
}

/// Waits (bounded) until the session's status satisfies `f`.
async fn wait_status(
    session: &Session,
    what: &str,
    f: impl Fn(&SessionStatus) -> bool,
) -> SessionStatus {
    let mut rx = session.watch_status();
    let res = timeout(WAIT, async {
        loop {
            let status = rx.borrow_and_update().clone();
            if f(&status) {
                return status;
            }
            if rx.changed().await.is_err() {
                panic!(
                    "session {} task ended (panicked?) while waiting for {what}",
                    session.name()
                );
            }
        }
    })
    .await;
    res.unwrap_or_else(|_| panic!("{what}: not reached in time; status {:?}", session.status()))
}

/// The speaker with two sessions: one to a well-behaved peer (Established, one route), one to the hostile
/// listener of the test.
struct Bench {
    good: Session,
    good_log: Arc<Mutex<GoodLog>>,
    good_task: tokio::task::JoinHandle<()>,
    hostile: Session,
    listener: TcpListener,
}

impl Bench {
    async fn start() -> Bench {
        let good_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let good_port = good_listener.local_addr().unwrap().port();
        let (good_log, good_task) = spawn_good_peer(good_listener);
        let good = Session::spawn(
            speaker_config("good-peer", good_port),
            routes(Ipv4Addr::new(203, 0, 113, 10)),
        );
        wait_status(&good, "good session Established with its route", |s| {
            s.state == State::Established && s.advertised == 1
        })
        .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let hostile = Session::spawn(
            speaker_config("hostile-peer", port),
            routes(Ipv4Addr::new(203, 0, 113, 20)),
        );
        Bench {
            good,
            good_log,
            good_task,
            hostile,
            listener,
        }
    }

    /// The hostile session reports `needle` as its last error (a clear message), and its task is alive.
    async fn hostile_reported(&self, needle: &str) {
        wait_status(&self.hostile, "the hostile session's error", |s| {
            s.last_error.as_deref().is_some_and(|e| e.contains(needle))
        })
        .await;
    }

    /// The hostile session's task is still running, and the good session kept its route without a flap.
    async fn check_unaffected(self) {
        assert!(
            self.hostile.watch_status().has_changed().is_ok(),
            "the hostile session's task ended (panic?)"
        );
        assert!(
            self.good.watch_status().has_changed().is_ok(),
            "the good session's task ended (panic?)"
        );
        let status = self.good.status();
        assert_eq!(status.state, State::Established, "good session: {status:?}");
        assert_eq!(status.advertised, 1, "good session: {status:?}");
        assert_eq!(status.flaps, 0, "good session: {status:?}");
        {
            let log = self.good_log.lock().unwrap();
            assert_eq!(log.connections, 1, "good peer: {log:?}");
            assert!(log.updates >= 1, "good peer got its route: {log:?}");
            assert!(log.notifications.is_empty(), "good peer: {log:?}");
            assert!(!log.closed, "good peer: {log:?}");
        }
        self.hostile.stop(false).await;
        self.good.stop(false).await;
        self.good_task.abort();
    }
}

#[tokio::test]
async fn garbage_gets_not_synchronized_and_backoff_grows() {
    let bench = Bench::start().await;
    let garbage = [0x5au8; 40];
    let mut accepted = Vec::new();
    for attempt in 1..=2 {
        let (mut wire, at) = accept(&bench.listener).await;
        accepted.push(at);
        wire.expect_open().await;
        wire.send(&garbage).await;
        let n = wire.expect_notification_and_close().await;
        assert!(
            matches!(
                n,
                BgpNotificationMessage::MessageHeaderError(
                    MessageHeaderError::ConnectionNotSynchronized { .. }
                )
            ),
            "attempt {attempt}: {n:?}"
        );
    }
    bench.hostile_reported("not synchronized").await;
    let (mut third, at) = accept(&bench.listener).await;
    accepted.push(at);
    third.expect_open().await;
    let gap1 = accepted[1] - accepted[0];
    let gap2 = accepted[2] - accepted[1];
    // Lower bounds only (timers never fire early): the first reconnect waits the retry time, the second twice it.
    // Without backoff the second gap would be about RETRY.
    assert!(gap1 >= RETRY, "first reconnect after {gap1:?}");
    assert!(
        gap2 >= RETRY * 2,
        "second reconnect after {gap2:?}, first after {gap1:?}"
    );
    drop(third);
    bench.check_unaffected().await;
}

#[tokio::test]
async fn oversized_message_gets_bad_message_length() {
    let bench = Bench::start().await;
    let (mut wire, _) = accept(&bench.listener).await;
    wire.expect_open().await;
    // A valid marker and an UPDATE type, but a length of 5000 > 4096, followed by some of its body.
    let mut msg = vec![0xffu8; 16];
    msg.extend_from_slice(&5000u16.to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(&[0u8; 100]);
    wire.send(&msg).await;
    let n = wire.expect_notification_and_close().await;
    match &n {
        BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength {
            value,
        }) => assert_eq!(&value[..], &5000u16.to_be_bytes(), "the erroneous length"),
        other => panic!("expected Bad Message Length, got {other:?}"),
    }
    bench.hostile_reported("bad message length 5000").await;
    let (mut again, _) = accept(&bench.listener).await;
    again.expect_open().await;
    drop(again);
    bench.check_unaffected().await;
}

#[tokio::test]
async fn open_with_wrong_asn_gets_bad_peer_as() {
    let bench = Bench::start().await;
    let (mut wire, _) = accept(&bench.listener).await;
    wire.expect_open().await;
    wire.send(&peer_open(WRONG_ASN)).await;
    let n = wire.expect_notification_and_close().await;
    assert!(
        matches!(
            n,
            BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { .. })
        ),
        "expected Bad Peer AS, got {n:?}"
    );
    bench
        .hostile_reported(&format!("peer AS {WRONG_ASN}"))
        .await;
    assert_ne!(bench.hostile.status().state, State::Established);
    let (mut again, _) = accept(&bench.listener).await;
    again.expect_open().await;
    drop(again);
    bench.check_unaffected().await;
}

#[tokio::test]
async fn truncated_message_then_close_reconnects() {
    let bench = Bench::start().await;
    let (mut wire, _) = accept(&bench.listener).await;
    wire.expect_open().await;
    // The first 30 bytes of a valid OPEN, then the connection closes.
    let open = peer_open(PEER_ASN);
    wire.send(&open[..30]).await;
    drop(wire);
    bench.hostile_reported("connection closed by peer").await;
    let (mut again, _) = accept(&bench.listener).await;
    again.expect_open().await;
    // The reconnected session is not stuck on the old partial bytes: a whole handshake now succeeds.
    again.send(&open).await;
    again.send(&keepalive()).await;
    wait_status(
        &bench.hostile,
        "hostile session Established after the retry",
        |s| s.state == State::Established,
    )
    .await;
    drop(again);
    bench.check_unaffected().await;
}
