//! IPVS over generic netlink: the codec of the kernel's "IPVS" family, the socket that carries it, and the
//! programmer that reconciles wanted virtual services against the kernel's table. It also owns the data-plane
//! [`Mode`] (who programs IPVS) and the link each mode binds the VIPs on.
//!
//! This module owns only the IPVS services it is scoped to (a predicate over VIPs and fwmarks); kube-proxy's
//! services and anyone else's are read but never changed.

pub mod codec;
pub mod direct;
pub mod golden;
pub mod mode;
pub mod programmer;
pub mod render;
pub mod socket;
pub mod verify;

pub use codec::{
    AddressFamily, Dest, DestId, DestSpec, FwdMethod, IpvsAttr, IpvsCmd, IpvsMessage, Protocol,
    Service, ServiceId, ServiceSpec, Stats, Tunnel,
};
pub use mode::{DIRECT_LINK, KUBE_PROXY_LINK, Mode};
pub use programmer::{
    ActualTable, Calls, Drain, Programmer, Report, TableChange, WantedTable, diff,
};
pub use render::render_ipvsadm;
pub use socket::IpvsSocket;

/// EndpointSlice builders shared by the wanted-state tests of both data planes.
#[cfg(test)]
pub(crate) mod test_fixtures {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::{Value, json};

    use super::verify::SERVICE_NAME_LABEL;

    /// A slice of Service `service` in namespace `shop`, for address family `family` (`IPv4`/`IPv6`).
    pub fn slice(service: &str, family: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-{family}"), "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// One endpoint on `node`.
    pub fn ep(addr: &str, node: &str, ready: bool) -> Value {
        json!({"addresses": [addr], "nodeName": node, "conditions": {"ready": ready}})
    }
}
