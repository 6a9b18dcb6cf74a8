//! What kube-proxy's data plane should hold for every LoadBalancer VIP, and where a node's IPVS table and VIP link
//! differ from it: the decisions behind `ironlb verify` and the agent's continuous check of the integrated data
//! plane.
//!
//! [`wanted`] is pure: Services, EndpointSlices and the node name in, the IPVS services and VIP bindings kube-proxy
//! would create out. It follows kube-proxy's IPVS proxier: one virtual service per ingress IP (ipMode unset or
//! `VIP`) and Service port, scheduler `rr` unless configured otherwise, ClientIP affinity as persistence, real
//! servers from the ready endpoints (serving and terminating ones only when none is ready) as Masq with weight 1,
//! and for `externalTrafficPolicy: Local` only this node's endpoints. [`drift`] compares that with the kernel's state.
//!
//! Only services on the wanted VIPs are compared ([`restrict`]), so kube-proxy's ClusterIP and NodePort services are
//! never reported as extra; an IPVS service on a VIP for a port or protocol no Service asks for is. Nothing here
//! reads the kernel or the API: the agent's data-plane worker and the `verify` command read them and pass the state
//! in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::codec::{DestId, DestSpec, FwdMethod, Protocol, SVC_F_PERSISTENT, ServiceId};
use super::programmer::{ActualTable, WantedTable};
use super::render::render_ipvsadm;

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout (`v1.DefaultClientIPServiceAffinitySeconds`).
pub(crate) const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// What the data plane should hold, or holds, for the LoadBalancer VIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPlaneState {
    pub ipvs: WantedTable,
    /// VIPs bound with a host prefix on the VIP link.
    pub bindings: BTreeSet<IpAddr>,
}

impl DataPlaneState {
    /// The VIPs: every bound address and every virtual service address.
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        let mut vips = self.bindings.clone();
        vips.extend(self.ipvs.keys().filter_map(service_addr));
        vips
    }

    /// Two sections: the table in `ipvsadm -Ln` notation, and the addresses on the VIP link.
    pub fn render(&self, vip_link: &str) -> [String; 2] {
        let table: Vec<_> = self
            .ipvs
            .values()
            .map(|(s, ds)| (s.clone(), ds.values().copied().collect()))
            .collect();
        let mut bindings = format!("Addresses on {vip_link}:\n");
        for ip in &self.bindings {
            bindings.push_str(&format!("  {ip}/{}\n", host_prefix(ip)));
        }
        [render_ipvsadm(&table), bindings]
    }
}

pub(crate) fn service_addr(id: &ServiceId) -> Option<IpAddr> {
    match id {
        ServiceId::Addr { addr, .. } => Some(*addr),
        ServiceId::Fwmark { .. } => None,
    }
}

fn host_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

pub(crate) fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The ingress IPs kube-proxy programs: those with `ipMode` unset or `VIP` (it programs nothing for `Proxy`).
fn vip_mode_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// One endpoint address with what kube-proxy looks at.
pub(crate) struct Candidate {
    pub(crate) addr: IpAddr,
    pub(crate) port: u16,
    pub(crate) ready: bool,
    pub(crate) serving_terminating: bool,
}

/// The IPVS services and VIP bindings kube-proxy would create on `node` for every LoadBalancer Service.
pub fn wanted(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &str,
    scheduler: &str,
) -> DataPlaneState {
    let mut plane = DataPlaneState::default();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        let vips = vip_mode_ips(svc);
        if vips.is_empty() {
            continue;
        }
        let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == namespace)
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == name)
            })
            .collect();
        plane.bindings.extend(vips.iter().copied());
        for port in spec.ports.iter().flatten() {
            let Some(proto) = protocol(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(svc_port) = u16::try_from(port.port) else {
                continue;
            };
            let candidates = candidates(&own_slices, port.name.as_deref(), proto, local, node);
            for vip in &vips {
                let dests = real_servers(&candidates, vip);
                let id = ServiceId::Addr {
                    protocol: proto,
                    addr: *vip,
                    port: svc_port,
                };
                let mut s = super::codec::ServiceSpec::new(id, scheduler);
                if let Some(timeout) = affinity {
                    s = s.persistent(timeout);
                }
                plane.ipvs.insert(id, (s, dests));
            }
        }
    }
    plane
}

/// The endpoint addresses of the slice port named like the Service port, with their conditions.
pub(crate) fn candidates(
    slices: &[&EndpointSlice],
    port_name: Option<&str>,
    proto: Protocol,
    local: bool,
    node: &str,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name.unwrap_or("")
                && protocol(p.protocol.as_deref()) == Some(proto)
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            if local && ep.node_name.as_deref() != Some(node) {
                continue;
            }
            let c = ep.conditions.as_ref();
            // An unset condition means ready (and serving), as the EndpointSlice API documents.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for addr in &ep.addresses {
                if let Ok(addr) = addr.parse() {
                    out.push(Candidate {
                        addr,
                        port,
                        ready,
                        serving_terminating: serving && terminating,
                    });
                }
            }
        }
    }
    out
}

/// The kernel's state restricted to the VIPs: services on those addresses, and those addresses when bound.
pub fn restrict(
    actual: &ActualTable,
    bound: &BTreeSet<IpAddr>,
    vips: &BTreeSet<IpAddr>,
) -> DataPlaneState {
    DataPlaneState {
        ipvs: actual
            .iter()
            .filter(|(id, _)| service_addr(id).is_some_and(|a| vips.contains(&a)))
            .map(|(id, (s, ds))| {
                (
                    *id,
                    (
                        s.clone(),
                        ds.iter().map(|(d, dest)| (*d, dest.spec)).collect(),
                    ),
                )
            })
            .collect(),
        bindings: bound.intersection(vips).copied().collect(),
    }
}

/// One difference between the wanted and the actual data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    MissingService(ServiceId),
    ExtraService(ServiceId),
    WrongScheduler {
        service: ServiceId,
        wanted: String,
        actual: String,
    },
    WrongPersistence {
        service: ServiceId,
        wanted: Option<u32>,
        actual: Option<u32>,
    },
    MissingDest(ServiceId, DestId),
    ExtraDest(ServiceId, DestId),
    WrongWeight {
        service: ServiceId,
        dest: DestId,
        wanted: u32,
        actual: u32,
    },
    WrongFwd {
        service: ServiceId,
        dest: DestId,
        wanted: FwdMethod,
        actual: FwdMethod,
    },
    MissingBinding(IpAddr),
}

struct Svc<'a>(&'a ServiceId);

impl fmt::Display for Svc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ServiceId::Addr {
                protocol,
                addr,
                port,
            } => {
                let p = match protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                    Protocol::Sctp => "SCTP",
                };
                write!(f, "{p} {}", std::net::SocketAddr::new(*addr, *port))
            }
            ServiceId::Fwmark { family, mark } => write!(f, "FWM {mark} {family:?}"),
        }
    }
}

struct Dst<'a>(&'a ServiceId, &'a DestId);

impl fmt::Display for Dst<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}",
            Svc(self.0),
            std::net::SocketAddr::new(self.1.addr, self.1.port)
        )
    }
}

fn persistence(p: Option<u32>) -> String {
    p.map_or_else(|| "none".into(), |t| format!("persistent {t}"))
}

impl Drift {
    /// One line, naming the object and, where it differs, both values.
    pub fn describe(&self, vip_link: &str) -> String {
        match self {
            Self::MissingService(s) => format!("missing service {}", Svc(s)),
            Self::ExtraService(s) => format!("extra service {}", Svc(s)),
            Self::WrongScheduler {
                service,
                wanted,
                actual,
            } => format!(
                "wrong scheduler {} (wanted {wanted}, actual {actual})",
                Svc(service)
            ),
            Self::WrongPersistence {
                service,
                wanted,
                actual,
            } => format!(
                "wrong persistence {} (wanted {}, actual {})",
                Svc(service),
                persistence(*wanted),
                persistence(*actual)
            ),
            Self::MissingDest(s, d) => format!("missing destination {}", Dst(s, d)),
            Self::ExtraDest(s, d) => format!("extra destination {}", Dst(s, d)),
            Self::WrongWeight {
                service,
                dest,
                wanted,
                actual,
            } => format!(
                "wrong weight {} (wanted {wanted}, actual {actual})",
                Dst(service, dest)
            ),
            Self::WrongFwd {
                service,
                dest,
                wanted,
                actual,
            } => format!(
                "wrong forwarding method {} (wanted {}, actual {})",
                Dst(service, dest),
                wanted.ipvsadm_name(),
                actual.ipvsadm_name()
            ),
            Self::MissingBinding(ip) => format!("missing binding {ip} on {vip_link}"),
        }
    }
}

fn persistence_of(s: &super::codec::ServiceSpec) -> Option<u32> {
    (s.flags & SVC_F_PERSISTENT != 0).then_some(s.timeout)
}

/// Every difference, in a stable order: services in table order (each with its destinations), then bindings.
pub fn drift(wanted: &DataPlaneState, actual: &DataPlaneState) -> Vec<Drift> {
    let mut out = Vec::new();
    let ids: BTreeSet<&ServiceId> = wanted.ipvs.keys().chain(actual.ipvs.keys()).collect();
    for id in ids {
        let (w, a) = match (wanted.ipvs.get(id), actual.ipvs.get(id)) {
            (Some(_), None) => {
                out.push(Drift::MissingService(*id));
                continue;
            }
            (None, Some(_)) => {
                out.push(Drift::ExtraService(*id));
                continue;
            }
            (Some(w), Some(a)) => (w, a),
            (None, None) => continue,
        };
        if w.0.scheduler != a.0.scheduler {
            out.push(Drift::WrongScheduler {
                service: *id,
                wanted: w.0.scheduler.clone(),
                actual: a.0.scheduler.clone(),
            });
        }
        if persistence_of(&w.0) != persistence_of(&a.0) {
            out.push(Drift::WrongPersistence {
                service: *id,
                wanted: persistence_of(&w.0),
                actual: persistence_of(&a.0),
            });
        }
        let dests: BTreeSet<&DestId> = w.1.keys().chain(a.1.keys()).collect();
        for d in dests {
            match (w.1.get(d), a.1.get(d)) {
                (Some(_), None) => out.push(Drift::MissingDest(*id, *d)),
                (None, Some(_)) => out.push(Drift::ExtraDest(*id, *d)),
                (Some(wd), Some(ad)) => {
                    if wd.fwd != ad.fwd {
                        out.push(Drift::WrongFwd {
                            service: *id,
                            dest: *d,
                            wanted: wd.fwd,
                            actual: ad.fwd,
                        });
                    }
                    if wd.weight != ad.weight {
                        out.push(Drift::WrongWeight {
                            service: *id,
                            dest: *d,
                            wanted: wd.weight,
                            actual: ad.weight,
                        });
                    }
                }
                (None, None) => {}
            }
        }
    }
    out.extend(
        wanted
            .bindings
            .difference(&actual.bindings)
            .map(|ip| Drift::MissingBinding(*ip)),
    );
    out
}

/// Sections of text side by side, left and right, each pair padded to the same height so that rows line up.
pub fn side_by_side(sections: &[(&str, &str)]) -> String {
    let rows: Vec<(Vec<&str>, Vec<&str>)> = sections
        .iter()
        .map(|(l, r)| {
            let l: Vec<&str> = l.lines().map(str::trim_end).collect();
            let r: Vec<&str> = r.lines().map(str::trim_end).collect();
            (l, r)
        })
        .collect();
    let width = rows
        .iter()
        .flat_map(|(l, _)| l.iter().map(|line| line.chars().count()))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (n, (left, right)) in rows.iter().enumerate() {
        if n > 0 {
            out.push_str(&format!("{:width$} |\n", ""));
        }
        for i in 0..left.len().max(right.len()) {
            let l = left.get(i).copied().unwrap_or("");
            let r = right.get(i).copied().unwrap_or("");
            out.push_str(format!("{l:<width$} | {r}").trim_end());
            out.push('\n');
        }
    }
    out
}

/// The full report: both sides, then one line per difference (or "no drift").
pub fn report(
    wanted: &DataPlaneState,
    actual: &DataPlaneState,
    vip_link: &str,
) -> (String, Vec<Drift>) {
    let [want_ipvs, want_bound] = wanted.render(vip_link);
    let [have_ipvs, have_bound] = actual.render(vip_link);
    let mut out = side_by_side(&[
        (
            &format!("wanted (from the cluster)\n{want_ipvs}"),
            &format!("actual (this network namespace)\n{have_ipvs}"),
        ),
        (&want_bound, &have_bound),
    ]);
    let drift = drift(wanted, actual);
    out.push('\n');
    if drift.is_empty() {
        out.push_str("no drift\n");
    }
    for d in &drift {
        out.push_str(&d.describe(vip_link));
        out.push('\n');
    }
    (out, drift)
}

/// Ready endpoints of the VIP's family, or the serving-and-terminating ones when none is ready.
pub(crate) fn real_servers(candidates: &[Candidate], vip: &IpAddr) -> BTreeMap<DestId, DestSpec> {
    let family: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.addr.is_ipv4() == vip.is_ipv4())
        .collect();
    let ready = family.iter().any(|c| c.ready);
    family
        .into_iter()
        .filter(|c| {
            if ready {
                c.ready
            } else {
                c.serving_terminating
            }
        })
        .map(|c| {
            let d = DestSpec::new(c.addr, c.port, FwdMethod::Masq, 1);
            (d.id, d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::codec::{Dest, ServiceSpec, Stats};
    use crate::ipvs::test_fixtures::{ep, slice};
    use serde_json::{Value, json};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A LoadBalancer Service builder.
    struct Svc {
        v: Value,
    }

    fn svc(name: &str) -> Svc {
        Svc {
            v: json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"type": "LoadBalancer", "ports": []},
                "status": {"loadBalancer": {"ingress": []}}
            }),
        }
    }

    impl Svc {
        fn lb_ip(mut self, ip: &str) -> Self {
            self.v["status"]["loadBalancer"]["ingress"]
                .as_array_mut()
                .unwrap()
                .push(json!({"ip": ip}));
            self
        }
        fn proxy_ip(mut self, ip: &str) -> Self {
            self.v["status"]["loadBalancer"]["ingress"]
                .as_array_mut()
                .unwrap()
                .push(json!({"ip": ip, "ipMode": "Proxy"}));
            self
        }
        fn port(mut self, name: Option<&str>, port: u16, protocol: &str) -> Self {
            self.v["spec"]["ports"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": name, "port": port, "protocol": protocol}));
            self
        }
        fn spec(mut self, key: &str, value: Value) -> Self {
            self.v["spec"][key] = value;
            self
        }
        fn build(self) -> Service {
            serde_json::from_value(self.v).unwrap()
        }
    }

    fn dests(plane: &DataPlaneState, id: ServiceId) -> Vec<String> {
        plane.ipvs[&id]
            .1
            .values()
            .map(|d| {
                format!(
                    "{} {:?} {}",
                    std::net::SocketAddr::new(d.id.addr, d.id.port),
                    d.fwd,
                    d.weight
                )
            })
            .collect()
    }

    #[test]
    fn cluster_policy_takes_every_ready_endpoint_of_the_named_port() {
        let services = [svc("web")
            .lb_ip("192.0.2.10")
            .port(Some("http"), 80, "TCP")
            .port(Some("dns"), 53, "UDP")
            .build()];
        let slices = [slice(
            "web",
            "IPv4",
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"},
                   {"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([
                ep("198.51.100.2", "n1", true),
                ep("198.51.100.3", "n2", true),
                ep("198.51.100.4", "n1", false)
            ]),
        )];
        let plane = wanted(&services, &slices, "n1", "rr");
        let web = ServiceId::tcp(ip("192.0.2.10"), 80);
        assert_eq!(plane.ipvs[&web].0, ServiceSpec::new(web, "rr"));
        assert_eq!(
            dests(&plane, web),
            ["198.51.100.2:8080 Masq 1", "198.51.100.3:8080 Masq 1"]
        );
        assert_eq!(
            dests(&plane, ServiceId::udp(ip("192.0.2.10"), 53)),
            ["198.51.100.2:5353 Masq 1", "198.51.100.3:5353 Masq 1"]
        );
        assert_eq!(plane.bindings, BTreeSet::from([ip("192.0.2.10")]));
    }

    #[test]
    fn local_policy_takes_only_this_nodes_endpoints() {
        let services = [svc("web")
            .lb_ip("192.0.2.10")
            .port(None, 80, "TCP")
            .spec("externalTrafficPolicy", json!("Local"))
            .build()];
        let slices = [slice(
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                ep("198.51.100.2", "n1", true),
                ep("198.51.100.3", "n2", true)
            ]),
        )];
        let web = ServiceId::tcp(ip("192.0.2.10"), 80);
        let n1 = wanted(&services, &slices, "n1", "rr");
        assert_eq!(dests(&n1, web), ["198.51.100.2:8080 Masq 1"]);
        // A node without a local endpoint still gets the virtual service, with no real server.
        let n3 = wanted(&services, &slices, "n3", "rr");
        assert_eq!(dests(&n3, web), Vec::<String>::new());
    }

    #[test]
    fn serving_terminating_endpoints_only_when_none_is_ready() {
        let terminating = json!({"addresses": ["198.51.100.5"], "nodeName": "n1",
            "conditions": {"ready": false, "serving": true, "terminating": true}});
        let services = [svc("web").lb_ip("192.0.2.10").port(None, 80, "TCP").build()];
        let web = ServiceId::tcp(ip("192.0.2.10"), 80);
        let only_terminating = [slice(
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([terminating.clone(), ep("198.51.100.4", "n1", false)]),
        )];
        assert_eq!(
            dests(&wanted(&services, &only_terminating, "n1", "rr"), web),
            ["198.51.100.5:8080 Masq 1"]
        );
        let with_ready = [slice(
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([terminating, ep("198.51.100.2", "n1", true)]),
        )];
        assert_eq!(
            dests(&wanted(&services, &with_ready, "n1", "rr"), web),
            ["198.51.100.2:8080 Masq 1"]
        );
    }

    #[test]
    fn each_vip_gets_endpoints_of_its_own_family() {
        let services = [svc("web")
            .lb_ip("192.0.2.10")
            .lb_ip("2001:db8::10")
            .port(None, 80, "TCP")
            .build()];
        let slices = [
            slice(
                "web",
                "IPv4",
                json!([{"port": 8080}]),
                json!([ep("198.51.100.2", "n1", true)]),
            ),
            slice(
                "web",
                "IPv6",
                json!([{"port": 8080}]),
                json!([ep("2001:db8::2", "n1", true)]),
            ),
        ];
        let plane = wanted(&services, &slices, "n1", "wlc");
        assert_eq!(
            dests(&plane, ServiceId::tcp(ip("192.0.2.10"), 80)),
            ["198.51.100.2:8080 Masq 1"]
        );
        let v6 = ServiceId::tcp(ip("2001:db8::10"), 80);
        assert_eq!(dests(&plane, v6), ["[2001:db8::2]:8080 Masq 1"]);
        assert_eq!(plane.ipvs[&v6].0.scheduler, "wlc");
    }

    #[test]
    fn skips_other_types_proxy_mode_and_other_services_slices() {
        let services = [
            svc("web")
                .proxy_ip("192.0.2.11")
                .port(None, 80, "TCP")
                .build(),
            svc("cluster")
                .lb_ip("192.0.2.12")
                .port(None, 80, "TCP")
                .spec("type", json!("ClusterIP"))
                .build(),
            svc("pending").port(None, 80, "TCP").build(),
            svc("api")
                .lb_ip("192.0.2.13")
                .port(None, 443, "TCP")
                .spec("sessionAffinity", json!("ClientIP"))
                .build(),
        ];
        let slices = [slice(
            "web",
            "IPv4",
            json!([{"port": 8443}]),
            json!([ep("198.51.100.9", "n1", true)]),
        )];
        let plane = wanted(&services, &slices, "n1", "rr");
        let api = ServiceId::tcp(ip("192.0.2.13"), 443);
        assert_eq!(plane.ipvs.keys().copied().collect::<Vec<_>>(), [api]);
        assert_eq!(
            plane.ipvs[&api].0,
            ServiceSpec::new(api, "rr").persistent(10800)
        );
        assert!(plane.ipvs[&api].1.is_empty());
        assert_eq!(plane.bindings, BTreeSet::from([ip("192.0.2.13")]));
    }

    fn dest(addr: &str, port: u16, fwd: FwdMethod, weight: u32) -> Dest {
        Dest {
            spec: DestSpec::new(ip(addr), port, fwd, weight),
            active_conns: 0,
            inact_conns: 0,
            persist_conns: 0,
            stats: Stats::default(),
        }
    }

    fn plane(entries: &[(ServiceSpec, Vec<DestSpec>)], bound: &[&str]) -> DataPlaneState {
        DataPlaneState {
            ipvs: entries
                .iter()
                .map(|(s, ds)| (s.id, (s.clone(), ds.iter().map(|d| (d.id, *d)).collect())))
                .collect(),
            bindings: bound.iter().map(|b| ip(b)).collect(),
        }
    }

    #[test]
    fn drift_names_every_difference() {
        let web = ServiceId::tcp(ip("192.0.2.10"), 80);
        let dns = ServiceId::udp(ip("192.0.2.10"), 53);
        let m = |a: &str, w| DestSpec::new(ip(a), 8080, FwdMethod::Masq, w);
        let want = plane(
            &[
                (
                    ServiceSpec::new(web, "rr"),
                    vec![
                        m("198.51.100.2", 1),
                        m("198.51.100.3", 1),
                        m("198.51.100.4", 1),
                    ],
                ),
                (ServiceSpec::new(dns, "rr"), vec![]),
            ],
            &["192.0.2.10", "192.0.2.11"],
        );
        let have = plane(
            &[
                (
                    ServiceSpec::new(web, "wlc"),
                    vec![
                        m("198.51.100.2", 2),
                        DestSpec::new(ip("198.51.100.3"), 8080, FwdMethod::Route, 1),
                        m("198.51.100.9", 1),
                    ],
                ),
                (
                    ServiceSpec::new(ServiceId::tcp(ip("192.0.2.10"), 443), "rr"),
                    vec![],
                ),
            ],
            &["192.0.2.10"],
        );
        let lines: Vec<String> = drift(&want, &have)
            .iter()
            .map(|d| d.describe("kube-ipvs0"))
            .collect();
        assert_eq!(
            lines,
            [
                "wrong scheduler TCP 192.0.2.10:80 (wanted rr, actual wlc)",
                "wrong weight TCP 192.0.2.10:80 -> 198.51.100.2:8080 (wanted 1, actual 2)",
                "wrong forwarding method TCP 192.0.2.10:80 -> 198.51.100.3:8080 (wanted Masq, actual Route)",
                "missing destination TCP 192.0.2.10:80 -> 198.51.100.4:8080",
                "extra destination TCP 192.0.2.10:80 -> 198.51.100.9:8080",
                "extra service TCP 192.0.2.10:443",
                "missing service UDP 192.0.2.10:53",
                "missing binding 192.0.2.11 on kube-ipvs0",
            ]
        );
        assert!(drift(&want, &want).is_empty());
    }

    #[test]
    fn actual_is_restricted_to_the_vips() {
        let web = ServiceId::tcp(ip("192.0.2.10"), 80);
        let cluster_ip = ServiceId::tcp(ip("203.0.113.50"), 443);
        let mut table = ActualTable::new();
        for id in [web, cluster_ip] {
            let d = dest("198.51.100.2", 8080, FwdMethod::Masq, 1);
            table.insert(
                id,
                (ServiceSpec::new(id, "rr"), BTreeMap::from([(d.spec.id, d)])),
            );
        }
        let bound = BTreeSet::from([ip("192.0.2.10"), ip("203.0.113.50")]);
        let got = restrict(&table, &bound, &BTreeSet::from([ip("192.0.2.10")]));
        assert_eq!(got.ipvs.keys().copied().collect::<Vec<_>>(), [web]);
        assert_eq!(got.bindings, BTreeSet::from([ip("192.0.2.10")]));
    }

    #[test]
    fn report_shows_both_sides_and_the_drift() {
        let web = ServiceId::tcp(ip("192.0.2.10"), 80);
        let d = DestSpec::new(ip("198.51.100.2"), 8080, FwdMethod::Masq, 1);
        let want = plane(&[(ServiceSpec::new(web, "rr"), vec![d])], &["192.0.2.10"]);
        let have = plane(&[(ServiceSpec::new(web, "rr"), vec![])], &["192.0.2.10"]);
        let (text, drift) = report(&want, &have, "kube-ipvs0");
        assert_eq!(drift.len(), 1);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("wanted (from the cluster)"), "{text}");
        assert!(
            lines[0].ends_with("| actual (this network namespace)"),
            "{text}"
        );
        assert!(lines[3].starts_with("TCP  192.0.2.10:80 rr"), "{text}");
        assert!(lines[3].ends_with("| TCP  192.0.2.10:80 rr"), "{text}");
        // The address sections line up even though the tables differ in height.
        let at = lines
            .iter()
            .position(|l| l.starts_with("Addresses on"))
            .unwrap();
        assert!(lines[at].ends_with("| Addresses on kube-ipvs0:"), "{text}");
        assert!(lines[at + 1].ends_with("|   192.0.2.10/32"), "{text}");
        assert!(text.contains("  192.0.2.10/32"), "{text}");
        assert!(
            text.ends_with("missing destination TCP 192.0.2.10:80 -> 198.51.100.2:8080\n"),
            "{text}"
        );
        let (text, drift) = report(&want, &want, "kube-ipvs0");
        assert!(drift.is_empty());
        assert!(text.ends_with("\nno drift\n"), "{text}");
    }
}
