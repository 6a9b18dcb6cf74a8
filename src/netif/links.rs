//! The node's interfaces as the planner sees them: name, index, MAC, flags, kind and addresses.
//!
//! Read-only: one link dump and one address dump over rtnetlink, joined by interface index by a pure function. The
//! planner consumes the name, subnets, `up`, `noarp` and `loopback` of each [`LocalInterface`] (as
//! `plan::InterfaceFacts`); the other fields are for logs, `ironlb status` and the ARP responder (which needs the MAC).

use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};

use super::{DumpFailure, collect_dump};
use crate::arp::MacAddr;

/// One link of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInterface {
    pub name: String,
    pub index: u32,
    /// `None` for links without a 6-byte hardware address (tunnels, for example).
    pub mac: Option<MacAddr>,
    /// The rtnetlink kind (`veth`, `bridge`, `dummy`, ...); `None` for physical NICs and `lo`, which have none.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFF_NOARP`: the kernel does no ARP here, and neither may the responder.
    pub noarp: bool,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
    /// Each local address with its prefix length, as `ip addr` shows it (`192.0.2.1/24`), sorted.
    pub addresses: Vec<IpNet>,
    /// The networks of `addresses` (`192.0.2.0/24`), sorted and deduplicated: what a VIP must fall into for this
    /// interface to be usable for it.
    pub subnets: Vec<IpNet>,
}

/// The interface a link message describes, without addresses; `None` when the kernel sent no name.
pub fn interface_from_link(msg: &LinkMessage) -> Option<LocalInterface> {
    let mut name = None;
    let mut mac = None;
    let mut kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    let flags = msg.header.flags;
    Some(LocalInterface {
        name: name?,
        index: msg.header.index,
        mac,
        kind,
        up: flags.contains(LinkFlags::Up),
        noarp: flags.contains(LinkFlags::Noarp),
        loopback: flags.contains(LinkFlags::Loopback),
        addresses: Vec::new(),
        subnets: Vec::new(),
    })
}

/// The interface index and local address of an address message.
///
/// For IPv4, `IFA_LOCAL` is the local address and `IFA_ADDRESS` the peer on point-to-point links; IPv6 sends only
/// `IFA_ADDRESS` (`rtnetlink(7)`). So `IFA_LOCAL` wins when present.
pub fn address_from_message(msg: &AddressMessage) -> Option<(u32, IpNet)> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip: IpAddr = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some((msg.header.index, net))
}

/// Joins a link dump and an address dump. Pure. Sorted by index; addresses of unknown links are dropped.
pub fn assemble(links: &[LinkMessage], addresses: &[AddressMessage]) -> Vec<LocalInterface> {
    let mut interfaces: Vec<LocalInterface> =
        links.iter().filter_map(interface_from_link).collect();
    interfaces.sort_by_key(|i| i.index);
    for (index, net) in addresses.iter().filter_map(address_from_message) {
        if let Ok(pos) = interfaces.binary_search_by_key(&index, |i| i.index) {
            interfaces[pos].addresses.push(net);
        }
    }
    for iface in &mut interfaces {
        iface.addresses.sort();
        iface.addresses.dedup();
        iface.subnets = iface.addresses.iter().map(IpNet::trunc).collect();
        iface.subnets.sort();
        iface.subnets.dedup();
    }
    interfaces
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing {what}: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: DumpFailure,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every link of the handle's network namespace, with its addresses.
pub async fn list_interfaces(handle: &Handle) -> Result<Vec<LocalInterface>> {
    let links = collect_dump(handle.link().get().execute())
        .await
        .map_err(|source| Error::Dump {
            what: "links",
            source,
        })?;
    let addresses = collect_dump(handle.address().get().execute())
        .await
        .map_err(|source| Error::Dump {
            what: "addresses",
            source,
        })?;
    Ok(assemble(&links, &addresses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::link::InfoKind;

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    fn addr(index: u32, net: &str) -> AddressMessage {
        let net: IpNet = net.parse().unwrap();
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = net.prefix_len();
        m.header.family = match net {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        if net.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Local(net.addr()));
        }
        m.attributes.push(AddressAttribute::Address(net.addr()));
        m
    }

    #[test]
    fn link_fields_come_from_flags_and_attributes() {
        let mut veth = link(3, "v0");
        veth.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        veth.attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]));
        veth.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        let i = interface_from_link(&veth).unwrap();
        assert_eq!(i.name, "v0");
        assert_eq!(i.index, 3);
        assert_eq!(i.mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!(i.kind.as_deref(), Some("veth"));
        assert!(i.up && !i.noarp && !i.loopback);

        let mut lo = link(1, "lo");
        lo.header.flags = LinkFlags::Up | LinkFlags::Loopback;
        let i = interface_from_link(&lo).unwrap();
        assert!(i.loopback && i.kind.is_none() && i.mac.is_none());

        let mut tun = link(4, "ipip0");
        tun.header.flags = LinkFlags::Noarp;
        tun.attributes
            .push(LinkAttribute::Address(vec![0, 0, 0, 0]));
        let i = interface_from_link(&tun).unwrap();
        assert!(i.noarp && !i.up && i.mac.is_none());

        assert!(interface_from_link(&LinkMessage::default()).is_none());
    }

    #[test]
    fn ipv4_local_wins_over_peer_address() {
        let mut m = addr(5, "192.0.2.1/32");
        m.attributes = vec![
            AddressAttribute::Address("192.0.2.2".parse().unwrap()),
            AddressAttribute::Local("192.0.2.1".parse().unwrap()),
        ];
        assert_eq!(
            address_from_message(&m),
            Some((5, "192.0.2.1/32".parse().unwrap()))
        );
    }

    #[test]
    fn assemble_joins_by_index_and_derives_subnets() {
        let links = [link(7, "eth1"), link(2, "eth0")];
        let addrs = [
            addr(2, "198.51.100.7/24"),
            addr(2, "2001:db8:1::7/64"),
            addr(2, "198.51.100.8/24"),
            addr(7, "203.0.113.1/25"),
            addr(99, "192.0.2.1/24"),
        ];
        let got = assemble(&links, &addrs);
        assert_eq!(
            got.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["eth0", "eth1"]
        );
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        assert_eq!(
            got[0].addresses,
            nets(&["198.51.100.7/24", "198.51.100.8/24", "2001:db8:1::7/64"])
        );
        assert_eq!(
            got[0].subnets,
            nets(&["198.51.100.0/24", "2001:db8:1::/64"])
        );
        assert_eq!(got[1].subnets, nets(&["203.0.113.0/25"]));
    }
}
