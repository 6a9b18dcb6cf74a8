//! The one place that talks to the kernel: a blocking `NETLINK_GENERIC` socket bound to the "IPVS" family.
//!
//! It resolves the family id by name through the genl controller, sends requests, and pairs every ack with its
//! request by sequence number. Batches go out as several netlink messages in one datagram: the kernel's
//! `netlink_rcv_skb` runs them one after another and acks each, so one failing request does not stop the rest.
//! `NETLINK_CAP_ACK` keeps the acks small so a batch of acks fits the receive buffer.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::{
    GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::codec::{IPVS_GENL_NAME, IpvsMessage, decode_frame, encode_frame};

/// Errors of the IPVS socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Io(#[source] std::io::Error),
    #[error("generic netlink family {IPVS_GENL_NAME:?} not found (is the ip_vs module loaded?)")]
    NoFamily,
    #[error("IPVS {cmd:?} failed: {source}")]
    Kernel {
        cmd: super::codec::IpvsCmd,
        #[source]
        source: std::io::Error,
    },
    #[error("undecodable netlink reply")]
    Decode(#[source] netlink_packet_core::DecodeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many requests go out in one datagram.
const BATCH: usize = 128;
const RECV_BUF: usize = 1 << 20;
/// The longest wait for one reply datagram.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connected IPVS generic-netlink socket.
pub struct IpvsSocket {
    socket: Socket,
    family_id: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl IpvsSocket {
    /// Opens the socket and resolves the IPVS family id.
    pub fn connect() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(Error::Io)?;
        socket.bind_auto().map_err(Error::Io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(Error::Io)?;
        // Acks without the echoed request: a batch of acks then fits the receive buffer.
        socket.set_cap_ack(true).map_err(Error::Io)?;
        let _ = socket.set_rx_buf_sz(4 << 20);
        // A lost ack must not hang the agent: every read is bounded.
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(Error::Io)?;
        let mut this = Self {
            socket,
            family_id: 0,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        };
        this.family_id = this.resolve_family()?;
        Ok(this)
    }

    /// The family id the controller gave "IPVS" in this kernel.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    fn resolve_family(&mut self) -> Result<u16> {
        let ctrl = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.to_string())],
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.seq += 1;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(GenlMessage::from_payload(ctrl)),
        );
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0).map_err(Error::Io)?;
        let mut family = None;
        loop {
            let frames = self.recv_frames()?;
            for frame in frames {
                let msg = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&frame)
                    .map_err(Error::Decode)?;
                match msg.payload {
                    NetlinkPayload::InnerMessage(genl) => {
                        for nla in genl.payload.nlas {
                            if let GenlCtrlAttrs::FamilyId(id) = nla {
                                family = Some(id);
                            }
                        }
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(Error::NoFamily),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => {
                        return family.ok_or(Error::NoFamily);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Reads one datagram and splits it into netlink frames.
    fn recv_frames(&mut self) -> Result<Vec<Vec<u8>>> {
        self.buf.clear();
        let n = self.socket.recv(&mut self.buf, 0).map_err(Error::Io)?;
        let data = &self.buf[..n.min(self.buf.len())];
        let mut frames = Vec::new();
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                as usize;
            if len < 16 || off + len > data.len() {
                break;
            }
            frames.push(data[off..off + len].to_vec());
            off += (len + 3) & !3;
        }
        Ok(frames)
    }

    /// Sends each request with `NLM_F_ACK` and returns one outcome per request, in order. Requests are batched;
    /// the kernel handles them in order.
    pub fn execute(&mut self, requests: &[IpvsMessage]) -> Result<Vec<Result<(), std::io::Error>>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(BATCH) {
            let first_seq = self.seq.wrapping_add(1);
            let mut datagram = Vec::new();
            for msg in chunk {
                self.seq = self.seq.wrapping_add(1);
                datagram.extend(encode_frame(
                    msg,
                    self.family_id,
                    NLM_F_REQUEST | NLM_F_ACK,
                    self.seq,
                    0,
                ));
            }
            self.socket.send(&datagram, 0).map_err(Error::Io)?;
            let mut got: Vec<Option<Result<(), std::io::Error>>> =
                (0..chunk.len()).map(|_| None).collect();
            let mut pending = chunk.len();
            while pending > 0 {
                for frame in self.recv_frames()? {
                    let msg = decode_frame(&frame).map_err(Error::Decode)?;
                    let idx = msg.header.sequence_number.wrapping_sub(first_seq) as usize;
                    let Some(slot) = got.get_mut(idx) else {
                        continue;
                    };
                    if let NetlinkPayload::Error(e) = msg.payload {
                        if slot.is_none() {
                            pending -= 1;
                        }
                        *slot = Some(match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        });
                    }
                }
            }
            outcomes.extend(got.into_iter().map(|o| o.unwrap_or(Ok(()))));
        }
        Ok(outcomes)
    }

    /// Sends a dump request and collects every reply message until `NLMSG_DONE`.
    pub fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let frame = encode_frame(request, self.family_id, NLM_F_REQUEST | NLM_F_DUMP, seq, 0);
        self.socket.send(&frame, 0).map_err(Error::Io)?;
        let mut out = Vec::new();
        loop {
            for frame in self.recv_frames()? {
                let msg = decode_frame(&frame).map_err(Error::Decode)?;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(_) => {
                            return Err(Error::Kernel {
                                cmd: request.cmd,
                                source: e.to_io(),
                            });
                        }
                    },
                    _ => {}
                }
            }
        }
    }
}
