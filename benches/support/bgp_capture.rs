//! Route arrival at the router, timed from a packet capture: `tcpdump` (microsecond timestamps, taken by the kernel
//! as each frame crosses the router's interface) records the BGP session, and the speaker's byte stream is cut into
//! BGP messages again, so that the instant its `n`-th prefix arrived is read off the capture rather than polled
//! from the router's CLI.
//!
//! Only what a 10,000-route load needs is parsed: Ethernet, IPv4, TCP (in-order segments of one connection, a
//! retransmission recognised by its sequence number), and in UPDATEs the IPv4 NLRI, both the classic field and
//! MP_REACH_NLRI.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tcpdump` of TCP port 179 on `iface` in `netns`.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts the capture and returns once tcpdump says it is listening (at most 5 s).
    pub fn start(netns: &str, iface: &str, path: &Path) -> Result<Capture, String> {
        let log = path.with_extension("log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "tcpdump",
                "-i",
                iface,
                "-U",
                "--immediate-mode",
                "-s",
                "0",
            ])
            .args(["--time-stamp-precision=micro", "-w"])
            .arg(path)
            .args(["tcp", "port", "179"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("tcpdump: {e}"))?;
        let capture = Capture {
            child,
            path: path.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "tcpdump did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(capture)
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns the pcap file's bytes.
    pub fn stop(mut self) -> Result<Vec<u8>, String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        std::fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// When the speaker's routes reached the router, from the capture.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// The speaker's first KEEPALIVE after its OPEN: the router holds the session Established from this frame on.
    pub established: Duration,
    /// The frame that completed the UPDATE carrying the `n`-th prefix.
    pub last_route: Duration,
    /// UPDATE messages the speaker sent until then.
    pub updates: usize,
}

impl Arrival {
    /// From Established at the router to the last of the routes on its interface.
    pub fn load_time(&self) -> Duration {
        self.last_route.saturating_sub(self.established)
    }
}

/// One TCP payload of the speaker's, with its capture timestamp (from the start of the capture).
struct Segment {
    at: Duration,
    seq: u32,
    payload: Vec<u8>,
}

/// Reads the pcap (Ethernet, microsecond or nanosecond timestamps) and returns when `speaker`'s `n`-th IPv4
/// prefix arrived; `None` if the capture does not hold that many.
pub fn route_arrival(pcap: &[u8], speaker: Ipv4Addr, n: usize) -> Option<Arrival> {
    let segments = speaker_segments(pcap, speaker)?;
    // The byte stream in order, each byte's arrival being its segment's timestamp.
    let mut stream: Vec<u8> = Vec::new();
    let mut arrived: Vec<(usize, Duration)> = Vec::new();
    let mut next_seq: Option<u32> = None;
    for s in segments {
        let expected = next_seq.unwrap_or(s.seq);
        let skip = expected.wrapping_sub(s.seq) as usize;
        if skip >= s.payload.len() && next_seq.is_some() {
            continue; // a retransmission of bytes already seen
        }
        if next_seq.is_some() && s.seq.wrapping_sub(expected) as i32 > 0 {
            return None; // a gap the capture missed: the stream cannot be cut reliably
        }
        let fresh = &s.payload[skip.min(s.payload.len())..];
        stream.extend_from_slice(fresh);
        arrived.push((stream.len(), s.at));
        next_seq = Some(expected.wrapping_add(fresh.len() as u32));
    }
    let at = |end: usize| {
        arrived
            .iter()
            .find(|(upto, _)| *upto >= end)
            .map(|(_, t)| *t)
    };
    let (mut offset, mut opened, mut established, mut prefixes, mut updates) =
        (0, false, None, 0, 0);
    while offset + 19 <= stream.len() {
        let length = usize::from(u16::from_be_bytes([
            stream[offset + 16],
            stream[offset + 17],
        ]));
        if !(19..=65535).contains(&length) || offset + length > stream.len() {
            break;
        }
        let message = &stream[offset..offset + length];
        let end = offset + length;
        offset = end;
        match message[18] {
            1 => opened = true,
            4 if opened && established.is_none() => established = at(end),
            2 => {
                updates += 1;
                prefixes += update_prefixes(&message[19..]);
                if prefixes >= n {
                    return Some(Arrival {
                        established: established?,
                        last_route: at(end)?,
                        updates,
                    });
                }
            }
            _ => {}
        }
    }
    None
}

/// The IPv4 prefixes announced in one UPDATE body (classic NLRI and MP_REACH_NLRI for IPv4 unicast).
fn update_prefixes(body: &[u8]) -> usize {
    let count = |mut nlri: &[u8]| {
        let mut n = 0;
        while let Some((&bits, rest)) = nlri.split_first() {
            let bytes = usize::from(bits).div_ceil(8);
            if rest.len() < bytes {
                break;
            }
            nlri = &rest[bytes..];
            n += 1;
        }
        n
    };
    let Some(withdrawn) = body
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return 0;
    };
    let attrs_at = 2 + withdrawn;
    let Some(attrs_len) = body
        .get(attrs_at..attrs_at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return 0;
    };
    let attrs = body
        .get(attrs_at + 2..attrs_at + 2 + attrs_len)
        .unwrap_or_default();
    let mut found = body.get(attrs_at + 2 + attrs_len..).map_or(0, count);
    let mut rest = attrs;
    while rest.len() >= 3 {
        let (flags, kind) = (rest[0], rest[1]);
        let (len, head) = if flags & 0x10 != 0 {
            if rest.len() < 4 {
                break;
            }
            (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
        } else {
            (usize::from(rest[2]), 3)
        };
        let Some(value) = rest.get(head..head + len) else {
            break;
        };
        // MP_REACH_NLRI, AFI 1 (IPv4), SAFI 1 (unicast): next hop, a reserved byte, then the NLRI.
        if kind == 14 && value.len() >= 5 && value[..3] == [0, 1, 1] {
            let hop = usize::from(value[3]);
            found += value.get(4 + hop + 1..).map_or(0, count);
        }
        rest = &rest[head + len..];
    }
    found
}

/// The TCP payloads `speaker` sent on its BGP connection (either end may have opened it), in capture order.
fn speaker_segments(pcap: &[u8], speaker: Ipv4Addr) -> Option<Vec<Segment>> {
    let magic = u32::from_le_bytes(pcap.get(..4)?.try_into().ok()?);
    let nanos = match magic {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        _ => return None,
    };
    let linktype = u32::from_le_bytes(pcap.get(20..24)?.try_into().ok()?);
    if linktype != 1 {
        return None;
    }
    let mut out = Vec::new();
    let mut first: Option<Duration> = None;
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let word = |i: usize| u32::from_le_bytes(pcap[at + i..at + i + 4].try_into().unwrap());
        let (secs, frac, len) = (word(0), word(4), word(8) as usize);
        let frame = pcap.get(at + 16..at + 16 + len)?;
        at += 16 + len;
        let ts = Duration::from_secs(u64::from(secs))
            + if nanos {
                Duration::from_nanos(u64::from(frac))
            } else {
                Duration::from_micros(u64::from(frac))
            };
        let since = ts.saturating_sub(*first.get_or_insert(ts));
        // Ethernet II carrying IPv4.
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 6
            || Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]) != speaker
            || total > ip.len()
        {
            continue;
        }
        let tcp = &ip[ihl..total];
        if tcp.len() < 20 {
            continue;
        }
        let (src_port, dst_port) = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        if src_port != 179 && dst_port != 179 {
            continue;
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let offset = usize::from(tcp[12] >> 4) * 4;
        let payload = tcp.get(offset..).unwrap_or_default();
        if !payload.is_empty() {
            out.push(Segment {
                at: since,
                seq,
                payload: payload.to_vec(),
            });
        }
    }
    Some(out)
}
