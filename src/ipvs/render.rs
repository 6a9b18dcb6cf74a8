//! Renders an IPVS table in `ipvsadm -Ln` notation, for `ironlb verify` to print beside the kernel's own listing.
//!
//! The layout follows ipvsadm's `print_service_entry` (ipvsadm.c): `%s %s` for the service line, `  -> %-28s %-7s
//! %-6d %-10u %-10u` for each real server (trailing spaces included, as ipvsadm prints them), services and servers
//! in libipvs' sort order. The first line, `IP Virtual Server version ... (size=...)`, describes the running kernel
//! and is left out.

use std::fmt::Write;
use std::net::IpAddr;

use super::codec::{
    AddressFamily, DestSpec, Protocol, SVC_F_ONEPACKET, SVC_F_PERSISTENT, ServiceId, ServiceSpec,
};

fn addr_port(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// libipvs' `ipvs_cmp_services`: fwmark, family, protocol, address, port.
fn service_key(s: &ServiceSpec) -> (u32, u8, u16, IpAddr, u16) {
    match s.id {
        ServiceId::Addr {
            protocol,
            addr,
            port,
        } => (0, u8::from(addr.is_ipv6()), protocol.number(), addr, port),
        ServiceId::Fwmark { family, mark } => (
            mark,
            u8::from(family == AddressFamily::V6),
            0,
            IpAddr::from([0, 0, 0, 0]),
            0,
        ),
    }
}

/// `ipvsadm -Ln` for the given table, without the version line.
pub fn render_ipvsadm(table: &[(ServiceSpec, Vec<DestSpec>)]) -> String {
    let mut out = String::from(
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
    );
    let mut services: Vec<&(ServiceSpec, Vec<DestSpec>)> = table.iter().collect();
    services.sort_by_key(|(s, _)| service_key(s));
    for (svc, dests) in services {
        let name = match svc.id {
            ServiceId::Addr {
                protocol,
                addr,
                port,
            } => {
                // ipvsadm pads the protocol to four: "TCP  192.0.2.10:80", "SCTP 192.0.2.12:5060".
                let p = match protocol {
                    Protocol::Tcp => "TCP ",
                    Protocol::Udp => "UDP ",
                    Protocol::Sctp => "SCTP",
                };
                format!("{p} {}", addr_port(&addr, port))
            }
            ServiceId::Fwmark {
                family: AddressFamily::V4,
                mark,
            } => format!("FWM  {mark}"),
            ServiceId::Fwmark {
                family: AddressFamily::V6,
                mark,
            } => format!("FWM  {mark} IPv6"),
        };
        let _ = write!(out, "{name} {}", svc.scheduler);
        if svc.flags & SVC_F_PERSISTENT != 0 {
            let _ = write!(out, " persistent {}", svc.timeout);
            match svc.id.family() {
                AddressFamily::V4 if svc.netmask != u32::MAX => {
                    let _ = write!(
                        out,
                        " mask {}",
                        std::net::Ipv4Addr::from(svc.netmask.to_be_bytes())
                    );
                }
                AddressFamily::V6 if svc.netmask != 128 => {
                    let _ = write!(out, " mask {}", svc.netmask);
                }
                _ => {}
            }
            if let Some(pe) = &svc.pe_name {
                let _ = write!(out, " pe {pe}");
            }
        }
        if svc.flags & SVC_F_ONEPACKET != 0 {
            out.push_str(" ops");
        }
        out.push('\n');
        let mut dests: Vec<&DestSpec> = dests.iter().collect();
        dests.sort_by_key(|d| (d.id.addr.is_ipv6(), d.id.addr, d.id.port));
        for d in dests {
            let _ = writeln!(
                out,
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10}",
                addr_port(&d.id.addr, d.id.port),
                d.fwd.ipvsadm_name(),
                d.weight,
                0,
                0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::codec::FwdMethod;

    #[test]
    fn matches_ipvsadm_notation() {
        let vip = "192.0.2.10".parse().unwrap();
        let table = vec![(
            ServiceSpec::new(ServiceId::tcp(vip, 80), "rr"),
            vec![DestSpec::new(
                "198.51.100.2".parse().unwrap(),
                8080,
                FwdMethod::Masq,
                1,
            )],
        )];
        let text = render_ipvsadm(&table);
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            vec![
                "Prot LocalAddress:Port Scheduler Flags",
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
                "TCP  192.0.2.10:80 rr",
                "  -> 198.51.100.2:8080            Masq    1      0          0",
            ]
        );
    }

    #[test]
    fn persistence_fwmark_and_ipv6() {
        let table = vec![
            (
                ServiceSpec::new(
                    ServiceId::Fwmark {
                        family: AddressFamily::V6,
                        mark: 5,
                    },
                    "sh",
                )
                .persistent(60),
                vec![DestSpec::new(
                    "2001:db8::2".parse().unwrap(),
                    0,
                    FwdMethod::Route,
                    2,
                )],
            ),
            (
                ServiceSpec::new(ServiceId::udp("2001:db8::10".parse().unwrap(), 53), "wrr"),
                vec![],
            ),
        ];
        let text = render_ipvsadm(&table);
        let lines: Vec<&str> = text.lines().skip(2).map(str::trim_end).collect();
        assert_eq!(
            lines,
            vec![
                "UDP  [2001:db8::10]:53 wrr",
                "FWM  5 IPv6 sh persistent 60",
                "  -> [2001:db8::2]:0              Route   2      0          0",
            ]
        );
    }
}
