//! The IPVS generic-netlink family ("IPVS", `include/uapi/linux/ip_vs.h`) as values.
//!
//! Shaped like netlink-packet-wireguard: [`IpvsMessage`] implements `GenlFamily`, `Emitable` and
//! `ParseableParametrized<[u8], GenlHeader>`, so it rides inside `GenlMessage` / `NetlinkMessage`. On top of the
//! attribute enums sit the typed [`Service`] and [`Dest`] that the programmer works with. Nothing here touches a
//! socket. Every parser returns `DecodeError` on malformed input; nothing panics on kernel or fuzz bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorContext, NLA_F_NESTED, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, emit_u16,
    emit_u16_be, emit_u32, emit_u64, parse_string, parse_u8, parse_u16, parse_u16_be, parse_u32,
    parse_u64,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// `IPVS_GENL_NAME`, resolved to a family id through the genl controller.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const IPVS_GENL_VERSION: u8 = 1;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_SCTP: u16 = 132;

// enum IPVS_CMD_*
const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;
const CMD_SET_INFO: u8 = 14;
const CMD_GET_INFO: u8 = 15;
const CMD_ZERO: u8 = 16;
const CMD_FLUSH: u8 = 17;

// IPVS_CMD_ATTR_*
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
// IPVS_INFO_ATTR_*: top-level in SET_INFO / GET_INFO messages, where they reuse the numbers above.
const INFO_ATTR_VERSION: u16 = 1;
const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

// IPVS_SVC_ATTR_*
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;
const SVC_ATTR_STATS: u16 = 10;
const SVC_ATTR_PE_NAME: u16 = 11;
const SVC_ATTR_STATS64: u16 = 12;

// IPVS_DEST_ATTR_*
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_PERSIST_CONNS: u16 = 9;
const DEST_ATTR_STATS: u16 = 10;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_STATS64: u16 = 12;
const DEST_ATTR_TUN_TYPE: u16 = 13;
const DEST_ATTR_TUN_PORT: u16 = 14;
const DEST_ATTR_TUN_FLAGS: u16 = 15;

// IPVS_STATS_ATTR_*
const STATS_CONNS: u16 = 1;
const STATS_INPKTS: u16 = 2;
const STATS_OUTPKTS: u16 = 3;
const STATS_INBYTES: u16 = 4;
const STATS_OUTBYTES: u16 = 5;
const STATS_CPS: u16 = 6;
const STATS_INPPS: u16 = 7;
const STATS_OUTPPS: u16 = 8;
const STATS_INBPS: u16 = 9;
const STATS_OUTBPS: u16 = 10;
const STATS_PAD: u16 = 11;

/// `IP_VS_SVC_F_PERSISTENT`.
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED`: kernel-internal, reported in dumps, never part of what we want.
pub const SVC_F_HASHED: u32 = 0x2;
/// `IP_VS_SVC_F_ONEPACKET`.
pub const SVC_F_ONEPACKET: u32 = 0x4;
/// `IP_VS_SVC_F_SCHED1..3`: scheduler flags (sh-fallback, sh-port, mh-*).
pub const SVC_F_SCHED1: u32 = 0x8;
pub const SVC_F_SCHED2: u32 = 0x10;
pub const SVC_F_SCHED3: u32 = 0x20;

fn ctx(what: &'static str) -> impl FnOnce() -> String {
    move || format!("invalid IPVS attribute {what}")
}

// ---------------------------------------------------------------------------------------------------------------
// Commands and messages

/// `IPVS_CMD_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    SetInfo,
    GetInfo,
    Zero,
    Flush,
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        match cmd {
            IpvsCmd::NewService => CMD_NEW_SERVICE,
            IpvsCmd::SetService => CMD_SET_SERVICE,
            IpvsCmd::DelService => CMD_DEL_SERVICE,
            IpvsCmd::GetService => CMD_GET_SERVICE,
            IpvsCmd::NewDest => CMD_NEW_DEST,
            IpvsCmd::SetDest => CMD_SET_DEST,
            IpvsCmd::DelDest => CMD_DEL_DEST,
            IpvsCmd::GetDest => CMD_GET_DEST,
            IpvsCmd::SetInfo => CMD_SET_INFO,
            IpvsCmd::GetInfo => CMD_GET_INFO,
            IpvsCmd::Zero => CMD_ZERO,
            IpvsCmd::Flush => CMD_FLUSH,
            IpvsCmd::Other(c) => c,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(v: u8) -> Self {
        match v {
            CMD_NEW_SERVICE => Self::NewService,
            CMD_SET_SERVICE => Self::SetService,
            CMD_DEL_SERVICE => Self::DelService,
            CMD_GET_SERVICE => Self::GetService,
            CMD_NEW_DEST => Self::NewDest,
            CMD_SET_DEST => Self::SetDest,
            CMD_DEL_DEST => Self::DelDest,
            CMD_GET_DEST => Self::GetDest,
            CMD_SET_INFO => Self::SetInfo,
            CMD_GET_INFO => Self::GetInfo,
            CMD_ZERO => Self::Zero,
            CMD_FLUSH => Self::Flush,
            c => Self::Other(c),
        }
    }
}

/// One IPVS generic-netlink message: a command and its top-level attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attributes: Vec<IpvsAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
    fn command(&self) -> u8 {
        self.cmd.into()
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attributes.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attributes.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from(header.cmd);
        // GET_INFO replies come back as SET_INFO; their attribute numbers are the IPVS_INFO_ATTR_* space.
        let info = matches!(cmd, IpvsCmd::SetInfo | IpvsCmd::GetInfo);
        let mut attributes = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla.context("failed to parse IPVS netlink attributes")?;
            attributes.push(if info {
                IpvsAttr::parse_info(&nla)?
            } else {
                IpvsAttr::parse(&nla)?
            });
        }
        Ok(Self { cmd, attributes })
    }
}

impl IpvsMessage {
    pub fn new(cmd: IpvsCmd, attributes: Vec<IpvsAttr>) -> Self {
        Self { cmd, attributes }
    }

    /// The generic-netlink payload: genl header followed by the attributes.
    pub fn encode(&self) -> Vec<u8> {
        let msg = GenlMessage::from_payload(self.clone());
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    /// Parses a generic-netlink payload (genl header + attributes).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let header = GenlHeader::parse(buf)?;
        // GenlHeader::parse checked that the 4-byte header is present.
        Self::parse_with_param(&buf[4..], header)
    }

    /// The first service attribute set, if any.
    pub fn service(&self) -> Option<&[SvcAttr]> {
        self.attributes.iter().find_map(|a| match a {
            IpvsAttr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// The first destination attribute set, if any.
    pub fn dest(&self) -> Option<&[DestAttr]> {
        self.attributes.iter().find_map(|a| match a {
            IpvsAttr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

/// A whole netlink frame carrying an IPVS message: `nlmsghdr` + genl header + attributes.
pub fn encode_frame(msg: &IpvsMessage, family_id: u16, flags: u16, seq: u32, port: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    header.port_number = port;
    let mut nl = NetlinkMessage::new(
        header,
        NetlinkPayload::from(GenlMessage::new(
            GenlHeader {
                cmd: msg.cmd.into(),
                version: IPVS_GENL_VERSION,
            },
            msg.clone(),
            family_id,
        )),
    );
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Parses one netlink frame carrying an IPVS message (or an error/ack/done).
pub fn decode_frame(buf: &[u8]) -> Result<NetlinkMessage<GenlMessage<IpvsMessage>>, DecodeError> {
    NetlinkMessage::deserialize(buf)
}

// ---------------------------------------------------------------------------------------------------------------
// Top-level attributes

/// `IPVS_CMD_ATTR_*`, or `IPVS_INFO_ATTR_*` in info messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    InfoVersion(u32),
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Service(v) => v.as_slice().buffer_len(),
            Self::Dest(v) => v.as_slice().buffer_len(),
            Self::InfoVersion(_) | Self::InfoConnTabSize(_) => 4,
            Self::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            Self::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            Self::InfoVersion(_) => INFO_ATTR_VERSION,
            Self::InfoConnTabSize(_) => INFO_ATTR_CONN_TAB_SIZE,
            Self::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Service(v) => v.as_slice().emit(buffer),
            Self::Dest(v) => v.as_slice().emit(buffer),
            Self::InfoVersion(v) | Self::InfoConnTabSize(v) => put_u32(buffer, *v),
            Self::Other(n) => n.emit_value(buffer),
        }
    }
}

fn nested<T>(
    payload: &[u8],
    what: &'static str,
    parse: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(payload) {
        let nla = nla.with_context(ctx(what))?;
        out.push(parse(&nla)?);
    }
    Ok(out)
}

impl IpvsAttr {
    fn parse<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            CMD_ATTR_SERVICE => Self::Service(nested(payload, "SERVICE", SvcAttr::parse)?),
            CMD_ATTR_DEST => Self::Dest(nested(payload, "DEST", DestAttr::parse)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }

    fn parse_info<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            INFO_ATTR_VERSION => {
                Self::InfoVersion(parse_u32(payload).with_context(ctx("INFO_VERSION"))?)
            }
            INFO_ATTR_CONN_TAB_SIZE => {
                Self::InfoConnTabSize(parse_u32(payload).with_context(ctx("INFO_CONN_TAB_SIZE"))?)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn put_u16(buf: &mut [u8], v: u16) {
    // Nla::emit_value hands us a slice of exactly value_len() bytes.
    let _ = emit_u16(buf, v);
}
fn put_u16_be(buf: &mut [u8], v: u16) {
    let _ = emit_u16_be(buf, v);
}
fn put_u32(buf: &mut [u8], v: u32) {
    let _ = emit_u32(buf, v);
}
fn put_u64(buf: &mut [u8], v: u64) {
    let _ = emit_u64(buf, v);
}
fn put_str(buf: &mut [u8], s: &str) {
    if let Some(dst) = buf.get_mut(..s.len()) {
        dst.copy_from_slice(s.as_bytes());
    }
    if let Some(nul) = buf.get_mut(s.len()) {
        *nul = 0;
    }
}

/// `union nf_inet_addr` is always 16 bytes on the wire (ipvsadm and the kernel both send the whole union); an IPv4
/// address sits in the first four.
fn put_addr(buf: &mut [u8], addr: &IpAddr) {
    buf.fill(0);
    match addr {
        IpAddr::V4(a) => buf[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => buf[..16].copy_from_slice(&a.octets()),
    }
}

/// The raw address bytes; their family is decided by the AF attribute, so it is resolved later.
fn parse_raw_addr(payload: &[u8]) -> Result<[u8; 16], DecodeError> {
    match payload.len() {
        4 | 16 => {
            let mut a = [0; 16];
            a[..payload.len()].copy_from_slice(payload);
            Ok(a)
        }
        n => Err(DecodeError::from(format!("IPVS address of {n} bytes"))),
    }
}

fn addr_for(af: u16, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match af {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*raw))),
        af => Err(DecodeError::from(format!("unknown address family {af}"))),
    }
}

fn af_of(addr: &IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Service attributes

/// `IPVS_SVC_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvcAttr {
    Af(u16),
    Protocol(u16),
    Addr([u8; 16]),
    /// Network byte order on the wire.
    Port(u16),
    Fwmark(u32),
    SchedName(String),
    Flags {
        flags: u32,
        mask: u32,
    },
    Timeout(u32),
    Netmask(u32),
    PeName(String),
    Stats(Vec<StatsAttr>),
    Stats64(Vec<StatsAttr>),
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Af(_) | Self::Protocol(_) | Self::Port(_) => 2,
            Self::Addr(_) => 16,
            Self::Fwmark(_) | Self::Timeout(_) | Self::Netmask(_) => 4,
            Self::SchedName(s) | Self::PeName(s) => s.len() + 1,
            Self::Flags { .. } => 8,
            Self::Stats(v) | Self::Stats64(v) => v.as_slice().buffer_len(),
            Self::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Af(_) => SVC_ATTR_AF,
            Self::Protocol(_) => SVC_ATTR_PROTOCOL,
            Self::Addr(_) => SVC_ATTR_ADDR,
            Self::Port(_) => SVC_ATTR_PORT,
            Self::Fwmark(_) => SVC_ATTR_FWMARK,
            Self::SchedName(_) => SVC_ATTR_SCHED_NAME,
            Self::Flags { .. } => SVC_ATTR_FLAGS,
            Self::Timeout(_) => SVC_ATTR_TIMEOUT,
            Self::Netmask(_) => SVC_ATTR_NETMASK,
            Self::PeName(_) => SVC_ATTR_PE_NAME,
            Self::Stats(_) => SVC_ATTR_STATS | NLA_F_NESTED,
            Self::Stats64(_) => SVC_ATTR_STATS64 | NLA_F_NESTED,
            Self::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Af(v) | Self::Protocol(v) => put_u16(buffer, *v),
            Self::Port(v) => put_u16_be(buffer, *v),
            Self::Addr(a) => buffer[..16].copy_from_slice(a),
            Self::Fwmark(v) | Self::Timeout(v) | Self::Netmask(v) => put_u32(buffer, *v),
            Self::SchedName(s) | Self::PeName(s) => put_str(buffer, s),
            Self::Flags { flags, mask } => {
                put_u32(&mut buffer[..4], *flags);
                put_u32(&mut buffer[4..8], *mask);
            }
            Self::Stats(v) | Self::Stats64(v) => v.as_slice().emit(buffer),
            Self::Other(n) => n.emit_value(buffer),
        }
    }
}

impl SvcAttr {
    fn parse<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            SVC_ATTR_AF => Self::Af(parse_u16(p).with_context(ctx("SVC_AF"))?),
            SVC_ATTR_PROTOCOL => Self::Protocol(parse_u16(p).with_context(ctx("SVC_PROTOCOL"))?),
            SVC_ATTR_ADDR => Self::Addr(parse_raw_addr(p).with_context(ctx("SVC_ADDR"))?),
            SVC_ATTR_PORT => Self::Port(parse_u16_be(p).with_context(ctx("SVC_PORT"))?),
            SVC_ATTR_FWMARK => Self::Fwmark(parse_u32(p).with_context(ctx("SVC_FWMARK"))?),
            SVC_ATTR_SCHED_NAME => {
                Self::SchedName(parse_string(p).with_context(ctx("SVC_SCHED_NAME"))?)
            }
            SVC_ATTR_FLAGS => {
                if p.len() != 8 {
                    return Err(DecodeError::from(
                        "invalid IPVS attribute SVC_FLAGS: not 8 bytes",
                    ));
                }
                Self::Flags {
                    flags: parse_u32(&p[..4])?,
                    mask: parse_u32(&p[4..])?,
                }
            }
            SVC_ATTR_TIMEOUT => Self::Timeout(parse_u32(p).with_context(ctx("SVC_TIMEOUT"))?),
            SVC_ATTR_NETMASK => Self::Netmask(parse_u32(p).with_context(ctx("SVC_NETMASK"))?),
            SVC_ATTR_PE_NAME => Self::PeName(parse_string(p).with_context(ctx("SVC_PE_NAME"))?),
            SVC_ATTR_STATS => Self::Stats(nested(p, "SVC_STATS", StatsAttr::parse)?),
            SVC_ATTR_STATS64 => Self::Stats64(nested(p, "SVC_STATS64", StatsAttr::parse)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Destination attributes

/// `IPVS_DEST_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; 16]),
    /// Network byte order on the wire.
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    PersistConns(u32),
    Stats(Vec<StatsAttr>),
    Stats64(Vec<StatsAttr>),
    AddrFamily(u16),
    TunType(u8),
    /// Network byte order on the wire.
    TunPort(u16),
    TunFlags(u16),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Addr(_) => 16,
            Self::Port(_) | Self::AddrFamily(_) | Self::TunPort(_) | Self::TunFlags(_) => 2,
            Self::TunType(_) => 1,
            Self::FwdMethod(_)
            | Self::Weight(_)
            | Self::UThresh(_)
            | Self::LThresh(_)
            | Self::ActiveConns(_)
            | Self::InactConns(_)
            | Self::PersistConns(_) => 4,
            Self::Stats(v) | Self::Stats64(v) => v.as_slice().buffer_len(),
            Self::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Addr(_) => DEST_ATTR_ADDR,
            Self::Port(_) => DEST_ATTR_PORT,
            Self::FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            Self::Weight(_) => DEST_ATTR_WEIGHT,
            Self::UThresh(_) => DEST_ATTR_U_THRESH,
            Self::LThresh(_) => DEST_ATTR_L_THRESH,
            Self::ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            Self::InactConns(_) => DEST_ATTR_INACT_CONNS,
            Self::PersistConns(_) => DEST_ATTR_PERSIST_CONNS,
            Self::Stats(_) => DEST_ATTR_STATS | NLA_F_NESTED,
            Self::Stats64(_) => DEST_ATTR_STATS64 | NLA_F_NESTED,
            Self::AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            Self::TunType(_) => DEST_ATTR_TUN_TYPE,
            Self::TunPort(_) => DEST_ATTR_TUN_PORT,
            Self::TunFlags(_) => DEST_ATTR_TUN_FLAGS,
            Self::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Addr(a) => buffer[..16].copy_from_slice(a),
            Self::Port(v) | Self::TunPort(v) => put_u16_be(buffer, *v),
            Self::AddrFamily(v) | Self::TunFlags(v) => put_u16(buffer, *v),
            Self::TunType(v) => buffer[0] = *v,
            Self::FwdMethod(v)
            | Self::Weight(v)
            | Self::UThresh(v)
            | Self::LThresh(v)
            | Self::ActiveConns(v)
            | Self::InactConns(v)
            | Self::PersistConns(v) => put_u32(buffer, *v),
            Self::Stats(v) | Self::Stats64(v) => v.as_slice().emit(buffer),
            Self::Other(n) => n.emit_value(buffer),
        }
    }
}

impl DestAttr {
    fn parse<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        Ok(match buf.kind() {
            DEST_ATTR_ADDR => Self::Addr(parse_raw_addr(p).with_context(ctx("DEST_ADDR"))?),
            DEST_ATTR_PORT => Self::Port(parse_u16_be(p).with_context(ctx("DEST_PORT"))?),
            DEST_ATTR_FWD_METHOD => {
                Self::FwdMethod(parse_u32(p).with_context(ctx("DEST_FWD_METHOD"))?)
            }
            DEST_ATTR_WEIGHT => Self::Weight(parse_u32(p).with_context(ctx("DEST_WEIGHT"))?),
            DEST_ATTR_U_THRESH => Self::UThresh(parse_u32(p).with_context(ctx("DEST_U_THRESH"))?),
            DEST_ATTR_L_THRESH => Self::LThresh(parse_u32(p).with_context(ctx("DEST_L_THRESH"))?),
            DEST_ATTR_ACTIVE_CONNS => {
                Self::ActiveConns(parse_u32(p).with_context(ctx("DEST_ACTIVE_CONNS"))?)
            }
            DEST_ATTR_INACT_CONNS => {
                Self::InactConns(parse_u32(p).with_context(ctx("DEST_INACT_CONNS"))?)
            }
            DEST_ATTR_PERSIST_CONNS => {
                Self::PersistConns(parse_u32(p).with_context(ctx("DEST_PERSIST_CONNS"))?)
            }
            DEST_ATTR_STATS => Self::Stats(nested(p, "DEST_STATS", StatsAttr::parse)?),
            DEST_ATTR_STATS64 => Self::Stats64(nested(p, "DEST_STATS64", StatsAttr::parse)?),
            DEST_ATTR_ADDR_FAMILY => {
                Self::AddrFamily(parse_u16(p).with_context(ctx("DEST_ADDR_FAMILY"))?)
            }
            DEST_ATTR_TUN_TYPE => Self::TunType(parse_u8(p).with_context(ctx("DEST_TUN_TYPE"))?),
            DEST_ATTR_TUN_PORT => {
                Self::TunPort(parse_u16_be(p).with_context(ctx("DEST_TUN_PORT"))?)
            }
            DEST_ATTR_TUN_FLAGS => {
                Self::TunFlags(parse_u16(p).with_context(ctx("DEST_TUN_FLAGS"))?)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics

/// One `IPVS_STATS_ATTR_*` counter. In `STATS` the rate and packet counters are u32 and the byte counters u64; in
/// `STATS64` every counter is u64. `wide` remembers which, so a decoded counter re-encodes to the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsAttr {
    pub kind: u16,
    pub value: u64,
    pub wide: bool,
}

impl StatsAttr {
    pub fn new(kind: u16, value: u64, wide: bool) -> Self {
        Self { kind, value, wide }
    }
    fn is_wide(&self) -> bool {
        self.wide
    }
    fn parse<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let p = buf.value();
        let value = match p.len() {
            // IPVS_STATS_ATTR_PAD: empty, aligns the next u64 on architectures that need it.
            0 if buf.kind() == STATS_PAD => 0,
            8 => parse_u64(p)?,
            4 => u64::from(parse_u32(p)?),
            n => {
                return Err(DecodeError::from(format!(
                    "IPVS stats counter of {n} bytes"
                )));
            }
        };
        Ok(Self::new(buf.kind(), value, p.len() == 8))
    }
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match (self.kind, self.is_wide()) {
            (STATS_PAD, _) => 0,
            (_, true) => 8,
            (_, false) => 4,
        }
    }
    fn kind(&self) -> u16 {
        self.kind
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        if self.kind == STATS_PAD {
        } else if self.is_wide() {
            put_u64(buffer, self.value)
        } else {
            put_u32(buffer, self.value as u32)
        }
    }
}

/// The counters of a service or destination, from `STATS64` when present, else `STATS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

impl Stats {
    fn from_attrs(attrs: &[StatsAttr]) -> Self {
        let mut s = Self::default();
        for a in attrs {
            let slot = match a.kind {
                STATS_CONNS => &mut s.conns,
                STATS_INPKTS => &mut s.inpkts,
                STATS_OUTPKTS => &mut s.outpkts,
                STATS_INBYTES => &mut s.inbytes,
                STATS_OUTBYTES => &mut s.outbytes,
                STATS_CPS => &mut s.cps,
                STATS_INPPS => &mut s.inpps,
                STATS_OUTPPS => &mut s.outpps,
                STATS_INBPS => &mut s.inbps,
                STATS_OUTBPS => &mut s.outbps,
                _ => continue,
            };
            *slot = a.value;
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Typed services and destinations

/// `IPPROTO_*` of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u16 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
            Self::Sctp => IPPROTO_SCTP,
        }
    }
    pub fn from_number(n: u16) -> Result<Self, DecodeError> {
        match n {
            IPPROTO_TCP => Ok(Self::Tcp),
            IPPROTO_UDP => Ok(Self::Udp),
            IPPROTO_SCTP => Ok(Self::Sctp),
            n => Err(DecodeError::from(format!("unsupported IPVS protocol {n}"))),
        }
    }
}

/// Address family of a fwmark service (an address service takes it from its address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressFamily {
    V4,
    V6,
}

impl AddressFamily {
    fn af(self) -> u16 {
        match self {
            Self::V4 => AF_INET,
            Self::V6 => AF_INET6,
        }
    }
    fn from_af(af: u16) -> Result<Self, DecodeError> {
        match af {
            AF_INET => Ok(Self::V4),
            AF_INET6 => Ok(Self::V6),
            af => Err(DecodeError::from(format!("unknown address family {af}"))),
        }
    }
}

/// What identifies a virtual service to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceId {
    Addr {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    Fwmark {
        family: AddressFamily,
        mark: u32,
    },
}

impl ServiceId {
    pub fn tcp(addr: IpAddr, port: u16) -> Self {
        Self::Addr {
            protocol: Protocol::Tcp,
            addr,
            port,
        }
    }
    pub fn udp(addr: IpAddr, port: u16) -> Self {
        Self::Addr {
            protocol: Protocol::Udp,
            addr,
            port,
        }
    }
    pub fn family(&self) -> AddressFamily {
        match self {
            Self::Addr {
                addr: IpAddr::V4(_),
                ..
            } => AddressFamily::V4,
            Self::Addr {
                addr: IpAddr::V6(_),
                ..
            } => AddressFamily::V6,
            Self::Fwmark { family, .. } => *family,
        }
    }

    /// The attributes that name this service; enough for DEL_SERVICE and GET_DEST.
    pub fn to_attrs(&self) -> Vec<SvcAttr> {
        match self {
            Self::Addr {
                protocol,
                addr,
                port,
            } => {
                let mut raw = [0; 16];
                put_addr(&mut raw, addr);
                vec![
                    SvcAttr::Af(af_of(addr)),
                    SvcAttr::Protocol(protocol.number()),
                    SvcAttr::Addr(raw),
                    SvcAttr::Port(*port),
                ]
            }
            Self::Fwmark { family, mark } => vec![SvcAttr::Af(family.af()), SvcAttr::Fwmark(*mark)],
        }
    }
}

/// A virtual service as IronLB wants it, and as read back with the kernel-internal bits removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub id: ServiceId,
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` without `HASHED`.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with `SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask: a dotted mask as u32 for IPv4 (ipvsadm's default 255.255.255.255), a prefix length for
    /// IPv6 (default 128).
    pub netmask: u32,
    pub pe_name: Option<String>,
}

impl ServiceSpec {
    /// A service with ipvsadm's defaults: no persistence, full netmask.
    pub fn new(id: ServiceId, scheduler: &str) -> Self {
        let netmask = match id.family() {
            AddressFamily::V4 => u32::MAX,
            AddressFamily::V6 => 128,
        };
        Self {
            id,
            scheduler: scheduler.to_string(),
            flags: 0,
            timeout: 0,
            netmask,
            pe_name: None,
        }
    }

    /// Persistence, as `ipvsadm -p SECONDS`.
    pub fn persistent(mut self, timeout: u32) -> Self {
        self.flags |= SVC_F_PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// The full attribute set NEW_SERVICE / SET_SERVICE needs (the kernel rejects a partial one with EINVAL).
    pub fn to_attrs(&self) -> Vec<SvcAttr> {
        let mut attrs = self.id.to_attrs();
        attrs.push(SvcAttr::SchedName(self.scheduler.clone()));
        if let Some(pe) = &self.pe_name {
            attrs.push(SvcAttr::PeName(pe.clone()));
        }
        attrs.push(SvcAttr::Flags {
            flags: self.flags,
            mask: u32::MAX,
        });
        attrs.push(SvcAttr::Timeout(self.timeout));
        attrs.push(SvcAttr::Netmask(self.netmask));
        attrs
    }
}

/// A virtual service as dumped by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub spec: ServiceSpec,
    pub stats: Stats,
}

impl Service {
    pub fn from_attrs(attrs: &[SvcAttr]) -> Result<Self, DecodeError> {
        let (mut af, mut proto, mut addr, mut port, mut mark) = (None, None, None, None, None);
        let mut spec_sched = None;
        let (mut flags, mut timeout, mut netmask, mut pe) = (0, 0, 0, None);
        let (mut stats, mut stats64) = (None, None);
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(*v),
                SvcAttr::Protocol(v) => proto = Some(*v),
                SvcAttr::Addr(v) => addr = Some(*v),
                SvcAttr::Port(v) => port = Some(*v),
                SvcAttr::Fwmark(v) => mark = Some(*v),
                SvcAttr::SchedName(v) => spec_sched = Some(v.clone()),
                SvcAttr::Flags { flags: f, mask } => flags = f & mask & !SVC_F_HASHED,
                SvcAttr::Timeout(v) => timeout = *v,
                SvcAttr::Netmask(v) => netmask = *v,
                SvcAttr::PeName(v) => pe = Some(v.clone()).filter(|s| !s.is_empty()),
                SvcAttr::Stats(v) => stats = Some(Stats::from_attrs(v)),
                SvcAttr::Stats64(v) => stats64 = Some(Stats::from_attrs(v)),
                SvcAttr::Other(_) => {}
            }
        }
        let af = af.ok_or_else(|| DecodeError::from("IPVS service without AF"))?;
        let id = match mark {
            Some(mark) if mark != 0 => ServiceId::Fwmark {
                family: AddressFamily::from_af(af)?,
                mark,
            },
            _ => ServiceId::Addr {
                protocol: Protocol::from_number(
                    proto.ok_or_else(|| DecodeError::from("IPVS service without PROTOCOL"))?,
                )?,
                addr: addr_for(
                    af,
                    &addr.ok_or_else(|| DecodeError::from("IPVS service without ADDR"))?,
                )?,
                port: port.ok_or_else(|| DecodeError::from("IPVS service without PORT"))?,
            },
        };
        Ok(Self {
            spec: ServiceSpec {
                id,
                scheduler: spec_sched.unwrap_or_default(),
                flags,
                timeout,
                netmask,
                pe_name: pe,
            },
            stats: stats64.or(stats).unwrap_or_default(),
        })
    }
}

/// `IP_VS_CONN_F_FWD_MASK` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FwdMethod {
    /// NAT (`-m`).
    Masq,
    /// Local node.
    Local,
    /// IP-in-IP tunnel (`-i`).
    Tunnel,
    /// Direct routing (`-g`).
    Route,
    Bypass,
}

impl FwdMethod {
    pub fn number(self) -> u32 {
        match self {
            Self::Masq => 0,
            Self::Local => 1,
            Self::Tunnel => 2,
            Self::Route => 3,
            Self::Bypass => 4,
        }
    }
    pub fn from_number(n: u32) -> Result<Self, DecodeError> {
        Ok(match n & 0x7 {
            0 => Self::Masq,
            1 => Self::Local,
            2 => Self::Tunnel,
            3 => Self::Route,
            4 => Self::Bypass,
            n => {
                return Err(DecodeError::from(format!(
                    "unknown IPVS forwarding method {n}"
                )));
            }
        })
    }
    /// ipvsadm's name in `-L` output.
    pub fn ipvsadm_name(self) -> &'static str {
        match self {
            Self::Masq => "Masq",
            Self::Local => "Local",
            Self::Tunnel => "Tunnel",
            Self::Route => "Route",
            Self::Bypass => "Bypass",
        }
    }
}

/// Tunnel encapsulation of a `Tunnel` destination (`IP_VS_CONN_F_TUNNEL_TYPE_*`, `IP_VS_TUNNEL_ENCAP_FLAG_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tunnel {
    /// 0 ipip, 1 gue, 2 gre.
    pub kind: u8,
    pub port: u16,
    pub flags: u16,
}

/// What identifies a real server within its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestId {
    pub addr: IpAddr,
    pub port: u16,
}

impl DestId {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Self { addr, port }
    }
}

/// A real server as IronLB wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestSpec {
    pub id: DestId,
    pub fwd: FwdMethod,
    pub weight: u32,
    pub u_thresh: u32,
    pub l_thresh: u32,
    pub tunnel: Option<Tunnel>,
}

impl DestSpec {
    pub fn new(addr: IpAddr, port: u16, fwd: FwdMethod, weight: u32) -> Self {
        Self {
            id: DestId::new(addr, port),
            fwd,
            weight,
            u_thresh: 0,
            l_thresh: 0,
            tunnel: None,
        }
    }

    /// The identity only; enough for DEL_DEST.
    pub fn id_attrs(id: &DestId) -> Vec<DestAttr> {
        let mut raw = [0; 16];
        put_addr(&mut raw, &id.addr);
        vec![
            DestAttr::AddrFamily(af_of(&id.addr)),
            DestAttr::Addr(raw),
            DestAttr::Port(id.port),
        ]
    }

    /// The full attribute set NEW_DEST / SET_DEST needs, in ipvsadm's order.
    pub fn to_attrs(&self) -> Vec<DestAttr> {
        let mut attrs = Self::id_attrs(&self.id);
        attrs.push(DestAttr::FwdMethod(self.fwd.number()));
        attrs.push(DestAttr::Weight(self.weight));
        // ipvsadm always sends the tunnel attributes, zero unless tunnelling; so do we, in its order.
        let t = self.tunnel.unwrap_or(Tunnel {
            kind: 0,
            port: 0,
            flags: 0,
        });
        attrs.push(DestAttr::TunType(t.kind));
        attrs.push(DestAttr::TunPort(t.port));
        attrs.push(DestAttr::TunFlags(t.flags));
        attrs.push(DestAttr::UThresh(self.u_thresh));
        attrs.push(DestAttr::LThresh(self.l_thresh));
        attrs
    }
}

/// A real server as dumped by the kernel, with its connection counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub spec: DestSpec,
    pub active_conns: u32,
    pub inact_conns: u32,
    pub persist_conns: u32,
    pub stats: Stats,
}

impl Dest {
    /// `service_family` is used when the kernel omits `ADDR_FAMILY` (kernels before 4.x).
    pub fn from_attrs(
        attrs: &[DestAttr],
        service_family: AddressFamily,
    ) -> Result<Self, DecodeError> {
        let (mut addr, mut port, mut af, mut fwd, mut weight) = (None, None, None, None, 0);
        let (mut u, mut l, mut act, mut inact, mut pers) = (0, 0, 0, 0, 0);
        let (mut tun_type, mut tun_port, mut tun_flags) = (None, 0, 0);
        let (mut stats, mut stats64) = (None, None);
        for a in attrs {
            match a {
                DestAttr::Addr(v) => addr = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::FwdMethod(v) => fwd = Some(FwdMethod::from_number(*v)?),
                DestAttr::Weight(v) => weight = *v,
                DestAttr::UThresh(v) => u = *v,
                DestAttr::LThresh(v) => l = *v,
                DestAttr::ActiveConns(v) => act = *v,
                DestAttr::InactConns(v) => inact = *v,
                DestAttr::PersistConns(v) => pers = *v,
                DestAttr::Stats(v) => stats = Some(Stats::from_attrs(v)),
                DestAttr::Stats64(v) => stats64 = Some(Stats::from_attrs(v)),
                DestAttr::AddrFamily(v) => af = Some(*v),
                DestAttr::TunType(v) => tun_type = Some(*v),
                DestAttr::TunPort(v) => tun_port = *v,
                DestAttr::TunFlags(v) => tun_flags = *v,
                DestAttr::Other(_) => {}
            }
        }
        let af = af.unwrap_or(service_family.af());
        let fwd = fwd.ok_or_else(|| DecodeError::from("IPVS destination without FWD_METHOD"))?;
        // The kernel reports tunnel attributes for every destination; they only mean something for tunnels.
        let tunnel = match (fwd, tun_type) {
            (FwdMethod::Tunnel, Some(kind)) => Some(Tunnel {
                kind,
                port: tun_port,
                flags: tun_flags,
            }),
            _ => None,
        };
        Ok(Self {
            spec: DestSpec {
                id: DestId {
                    addr: addr_for(
                        af,
                        &addr.ok_or_else(|| DecodeError::from("IPVS destination without ADDR"))?,
                    )?,
                    port: port.ok_or_else(|| DecodeError::from("IPVS destination without PORT"))?,
                },
                fwd,
                weight,
                u_thresh: u,
                l_thresh: l,
                tunnel,
            },
            active_conns: act,
            inact_conns: inact,
            persist_conns: pers,
            stats: stats64.or(stats).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::golden;

    const FAMILY: u16 = 32;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    /// Splits a datagram into its netlink frames.
    fn frames(buf: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            out.push(&buf[off..off + len]);
            off += (len + 3) & !3;
        }
        out
    }
    fn header(frame: &[u8]) -> (u16, u32, u32) {
        let flags = u16::from_ne_bytes(frame[6..8].try_into().unwrap());
        let seq = u32::from_ne_bytes(frame[8..12].try_into().unwrap());
        let port = u32::from_ne_bytes(frame[12..16].try_into().unwrap());
        (flags, seq, port)
    }
    fn ipvs(frame: &[u8]) -> IpvsMessage {
        match decode_frame(frame).unwrap().payload {
            NetlinkPayload::InnerMessage(genl) => genl.payload,
            other => panic!("not an IPVS message: {other:?}"),
        }
    }
    /// Our encoding of `msg` with the header fields ipvsadm chose must be ipvsadm's bytes exactly.
    fn assert_encodes_as(msg: &IpvsMessage, golden: &str) {
        let want = hex(golden);
        let (flags, seq, port) = header(&want);
        assert_eq!(encode_frame(msg, FAMILY, flags, seq, port), want, "{msg:?}");
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn tcp4() -> ServiceSpec {
        ServiceSpec::new(ServiceId::tcp(ip("192.0.2.10"), 80), "rr")
    }
    fn udp6() -> ServiceSpec {
        ServiceSpec::new(ServiceId::udp(ip("2001:db8::10"), 53), "wrr").persistent(300)
    }
    fn fwm7() -> ServiceSpec {
        ServiceSpec::new(
            ServiceId::Fwmark {
                family: AddressFamily::V4,
                mark: 7,
            },
            "sh",
        )
    }

    #[test]
    fn new_service_requests_match_ipvsadm() {
        for (spec, golden) in [
            (tcp4(), golden::NEW_SERVICE_TCP4),
            (udp6(), golden::NEW_SERVICE_UDP6_PERSISTENT),
            (fwm7(), golden::NEW_SERVICE_FWMARK),
        ] {
            let msg = IpvsMessage::new(
                IpvsCmd::NewService,
                vec![IpvsAttr::Service(spec.to_attrs())],
            );
            assert_encodes_as(&msg, golden);
            assert_eq!(
                Service::from_attrs(ipvs(&hex(golden)).service().unwrap())
                    .unwrap()
                    .spec,
                spec
            );
        }
    }

    #[test]
    fn dump_flush_and_info_requests_match_ipvsadm() {
        assert_encodes_as(
            &IpvsMessage::new(IpvsCmd::GetService, vec![]),
            golden::GET_SERVICE_DUMP,
        );
        assert_encodes_as(
            &IpvsMessage::new(IpvsCmd::GetInfo, vec![]),
            golden::GET_INFO,
        );
        assert_encodes_as(&IpvsMessage::new(IpvsCmd::Flush, vec![]), golden::FLUSH);
        assert_encodes_as(
            &IpvsMessage::new(
                IpvsCmd::GetDest,
                vec![IpvsAttr::Service(udp6().id.to_attrs())],
            ),
            golden::GET_DEST_DUMP_UDP6,
        );
        assert_encodes_as(
            &IpvsMessage::new(
                IpvsCmd::GetDest,
                vec![IpvsAttr::Service(fwm7().id.to_attrs())],
            ),
            golden::GET_DEST_DUMP_FWMARK,
        );
    }

    #[test]
    fn new_dest_attributes_match_ipvsadm() {
        let cases = [
            (
                DestSpec::new(ip("198.51.100.2"), 8080, FwdMethod::Masq, 1),
                golden::NEW_DEST_MASQ,
            ),
            (
                DestSpec::new(ip("2001:db8::2"), 53, FwdMethod::Route, 2),
                golden::NEW_DEST_ROUTE6,
            ),
            (
                DestSpec::new(ip("198.51.100.3"), 0, FwdMethod::Tunnel, 3),
                golden::NEW_DEST_TUNNEL,
            ),
            (
                DestSpec::new(ip("203.0.113.1"), 8080, FwdMethod::Masq, 4),
                golden::NEW_DEST_LOCAL_ADDR,
            ),
        ];
        for (spec, golden) in cases {
            let msg = ipvs(&hex(golden));
            assert_eq!(msg.cmd, IpvsCmd::NewDest);
            // ipvsadm sends the whole service with a destination; the destination part is ours byte for byte.
            let mut spec = spec;
            if spec.fwd == FwdMethod::Tunnel {
                spec.tunnel = Some(Tunnel {
                    kind: 0,
                    port: 0,
                    flags: 0,
                });
            }
            assert_eq!(msg.dest().unwrap(), spec.to_attrs().as_slice());
            // And the decoded message re-encodes to the same bytes.
            let (flags, seq, port) = header(&hex(golden));
            assert_eq!(encode_frame(&msg, FAMILY, flags, seq, port), hex(golden));
        }
        // ipvsadm's DEL_SERVICE names the service; the kernel's key is the identity we send.
        let del = ipvs(&hex(golden::DEL_SERVICE));
        assert_eq!(del.cmd, IpvsCmd::DelService);
        assert_eq!(
            Service::from_attrs(del.service().unwrap()).unwrap().spec.id,
            tcp4().id
        );
    }

    #[test]
    fn kernel_dump_replies_decode() {
        let datagram = hex(golden::GET_SERVICE_REPLY);
        let services: Vec<Service> = frames(&datagram)
            .into_iter()
            .map(|f| {
                let m = ipvs(f);
                assert_eq!(m.cmd, IpvsCmd::NewService);
                Service::from_attrs(m.service().unwrap()).unwrap()
            })
            .collect();
        // HASHED is masked off; everything else is what ipvsadm created.
        assert_eq!(
            services.iter().map(|s| s.spec.clone()).collect::<Vec<_>>(),
            vec![udp6(), fwm7()]
        );
        assert_eq!(services[0].stats, Stats::default());

        let route = ipvs(&hex(golden::GET_DEST_REPLY_ROUTE6));
        let d = Dest::from_attrs(route.dest().unwrap(), AddressFamily::V6).unwrap();
        assert_eq!(
            d.spec,
            DestSpec::new(ip("2001:db8::2"), 53, FwdMethod::Route, 2)
        );
        assert_eq!((d.active_conns, d.inact_conns, d.persist_conns), (0, 0, 0));

        let tun = ipvs(&hex(golden::GET_DEST_REPLY_TUNNEL));
        let d = Dest::from_attrs(tun.dest().unwrap(), AddressFamily::V4).unwrap();
        let mut want = DestSpec::new(ip("198.51.100.3"), 0, FwdMethod::Tunnel, 3);
        want.tunnel = Some(Tunnel {
            kind: 0,
            port: 0,
            flags: 0,
        });
        assert_eq!(d.spec, want);
    }

    #[test]
    fn info_reply_decodes() {
        let m = ipvs(&hex(golden::GET_INFO_REPLY));
        assert_eq!(m.cmd, IpvsCmd::SetInfo);
        // IP Virtual Server version 1.2.1 (size=4096)
        assert_eq!(
            m.attributes,
            vec![
                IpvsAttr::InfoVersion(0x010201),
                IpvsAttr::InfoConnTabSize(4096)
            ]
        );
    }

    #[test]
    fn every_forwarding_method_and_protocol_round_trips() {
        for fwd in [
            FwdMethod::Masq,
            FwdMethod::Local,
            FwdMethod::Tunnel,
            FwdMethod::Route,
            FwdMethod::Bypass,
        ] {
            for addr in ["198.51.100.7", "2001:db8::7"] {
                let mut d = DestSpec::new(ip(addr), 9000, fwd, 5);
                d.u_thresh = 100;
                d.l_thresh = 10;
                if fwd == FwdMethod::Tunnel {
                    d.tunnel = Some(Tunnel {
                        kind: 1,
                        port: 6080,
                        flags: 2,
                    });
                }
                let family = if addr.contains(':') {
                    AddressFamily::V6
                } else {
                    AddressFamily::V4
                };
                let msg = IpvsMessage::new(IpvsCmd::NewDest, vec![IpvsAttr::Dest(d.to_attrs())]);
                let back = IpvsMessage::decode(&msg.encode()).unwrap();
                assert_eq!(
                    Dest::from_attrs(back.dest().unwrap(), family).unwrap().spec,
                    d
                );
            }
        }
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            let mut s = ServiceSpec::new(
                ServiceId::Addr {
                    protocol,
                    addr: ip("2001:db8::1"),
                    port: 443,
                },
                "sh",
            );
            s.pe_name = Some("sip".into());
            s.flags = SVC_F_PERSISTENT | SVC_F_ONEPACKET | SVC_F_SCHED1;
            s.timeout = 60;
            s.netmask = 64;
            let msg = IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::Service(s.to_attrs())]);
            let back = IpvsMessage::decode(&msg.encode()).unwrap();
            assert_eq!(
                Service::from_attrs(back.service().unwrap()).unwrap().spec,
                s
            );
        }
    }

    #[test]
    fn stats_round_trip_with_their_widths() {
        let attrs = vec![
            SvcAttr::Stats(vec![
                StatsAttr::new(STATS_CONNS, 3, false),
                StatsAttr::new(STATS_INBYTES, 1 << 40, true),
            ]),
            SvcAttr::Stats64(vec![StatsAttr::new(STATS_CONNS, 1 << 33, true)]),
        ];
        let msg = IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::Service(attrs.clone())]);
        assert_eq!(
            IpvsMessage::decode(&msg.encode())
                .unwrap()
                .service()
                .unwrap(),
            attrs.as_slice()
        );
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let all = [
            golden::NEW_SERVICE_TCP4,
            golden::NEW_DEST_MASQ,
            golden::NEW_DEST_ROUTE6,
            golden::GET_SERVICE_REPLY,
            golden::GET_DEST_REPLY_ROUTE6,
            golden::GET_DEST_REPLY_TUNNEL,
            golden::GET_INFO_REPLY,
        ];
        let mut seed = 0x9e37_79b9_u32;
        for g in all {
            let bytes = hex(g);
            for cut in 0..bytes.len() {
                let _ = decode_frame(&bytes[..cut]);
                let _ = IpvsMessage::decode(bytes.get(16..cut).unwrap_or(&[]));
            }
            for _ in 0..2000 {
                let mut b = bytes.clone();
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let i = seed as usize % b.len();
                b[i] = (seed >> 8) as u8;
                if let Ok(m) = decode_frame(&b)
                    && let NetlinkPayload::InnerMessage(genl) = m.payload
                {
                    if let Some(s) = genl.payload.service() {
                        let _ = Service::from_attrs(s);
                    }
                    if let Some(d) = genl.payload.dest() {
                        let _ = Dest::from_attrs(d, AddressFamily::V4);
                    }
                }
            }
        }
        assert!(IpvsMessage::decode(&[1]).is_err());
        assert!(Service::from_attrs(&[SvcAttr::Af(99)]).is_err());
    }
}
