//! IPVS over generic netlink: the codec of the kernel's "IPVS" family, the socket that carries it, and the
//! programmer that reconciles wanted virtual services against the kernel's table.
//!
//! This module owns only the IPVS services it is scoped to (a predicate over VIPs and fwmarks); kube-proxy's
//! services and anyone else's are read but never changed.

pub mod codec;
pub mod direct;
pub mod golden;
pub mod programmer;
pub mod render;
pub mod socket;
pub mod verify;

pub use codec::{
    Dest, DestId, DestSpec, Family, FwdMethod, IpvsAttr, IpvsCmd, IpvsMessage, Protocol, Service,
    ServiceId, ServiceSpec, Stats, Tunnel,
};
pub use programmer::{ActualTable, Calls, Change, Drain, Programmer, Report, WantedTable, diff};
pub use render::render_ipvsadm;
pub use socket::IpvsSocket;
