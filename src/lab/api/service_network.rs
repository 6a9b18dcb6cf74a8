//! What kube-apiserver's Service REST storage fills in: ClusterIPs from the service CIDRs, IP families and family
//! policy, NodePorts and the health-check NodePort, and the traffic-policy defaults.
//!
//! The store calls [`ServiceNetwork::create`] under its lock for every new Service, [`ServiceNetwork::update`] for
//! every replaced one and [`ServiceNetwork::release`] for every deleted one (also when a namespace takes it along),
//! so two Services never hold the same ClusterIP or NodePort. As in Kubernetes, a ClusterIP may not change once
//! set, an update that leaves allocated values out keeps them, a requested address or port must be free and in
//! range, and a full range is an internal error. Addresses are handed out in order from the start of each range,
//! not at random: the lab's output reads the same on every run.

use ipnet::IpNet;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// The NodePort range kube-apiserver uses unless told otherwise (`--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// The lab API server's service CIDRs unless told otherwise: documentation ranges, so no ClusterIP it hands out can
/// reach anything real, and an IPv6 range as large as Kubernetes allows (/108), for the benches' 10,000 Services.
pub const DEFAULT_SERVICE_CIDRS: &str = "198.51.100.0/24,2001:db8:ffff::/108";

/// Why a Service was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A field error, as kube-apiserver's validation reports it (422 Invalid).
    #[error("{0}")]
    Invalid(String),
    /// A range is exhausted (500 InternalError, as in Kubernetes).
    #[error("{0}")]
    Full(String),
}

/// Why a service CIDR list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid service CIDRs {given:?}: {reason}")]
pub struct CidrError {
    given: String,
    reason: String,
}

/// The ClusterIP ranges and the NodePorts in use.
#[derive(Debug)]
pub struct ServiceNetwork {
    /// One range per family, the primary family first.
    ranges: Vec<Range>,
    used_ips: HashSet<IpAddr>,
    used_ports: BTreeSet<u16>,
    next_port: u16,
}

#[derive(Debug)]
struct Range {
    net: IpNet,
    /// The next offset from the network address to try.
    next: u128,
}

impl Range {
    fn family(&self) -> &'static str {
        family(&self.net.network())
    }

    /// Usable offsets: the network address is never handed out, nor IPv4's broadcast address.
    fn offsets(&self) -> std::ops::Range<u128> {
        let bits = self.net.max_prefix_len() - self.net.prefix_len();
        let size = 1u128.checked_shl(u32::from(bits)).unwrap_or(u128::MAX);
        match self.net {
            IpNet::V4(_) => 1..size.saturating_sub(1),
            IpNet::V6(_) => 1..size,
        }
    }

    fn at(&self, offset: u128) -> IpAddr {
        match self.net {
            IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + offset as u32).into()),
            IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + offset).into()),
        }
    }
}

fn family(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        Self::parse(DEFAULT_SERVICE_CIDRS).expect("the default service CIDRs parse")
    }
}

/// What one call claimed, so that a refusal part way gives it all back.
#[derive(Default)]
struct Claims {
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
}

impl ServiceNetwork {
    /// Parses `--service-cluster-ip-range` syntax: one CIDR, or one of each family separated by a comma.
    pub fn parse(cidrs: &str) -> Result<Self, CidrError> {
        let fail = |reason: String| CidrError {
            given: cidrs.to_owned(),
            reason,
        };
        let mut ranges: Vec<Range> = Vec::new();
        for part in cidrs.split(',').map(str::trim) {
            let net: IpNet = part
                .parse()
                .map_err(|e| fail(format!("{part:?} is not a CIDR: {e}")))?;
            let range = Range {
                net: net.trunc(),
                next: 1,
            };
            if range.offsets().is_empty() {
                return Err(fail(format!("{part} holds no usable address")));
            }
            if ranges.iter().any(|r| r.family() == range.family()) {
                return Err(fail(format!("two {} ranges", range.family())));
            }
            ranges.push(range);
        }
        Ok(ServiceNetwork {
            ranges,
            used_ips: HashSet::new(),
            used_ports: BTreeSet::new(),
            next_port: *NODE_PORTS.start(),
        })
    }

    /// Fills in and claims what a new Service gets. On error nothing is claimed.
    pub fn create(&mut self, svc: &mut Value) -> Result<(), Error> {
        let mut claims = Claims::default();
        let result = self.fill(svc, &mut claims);
        if result.is_err() {
            self.give_back(claims);
        }
        result
    }

    /// Fills in and claims what a replaced Service gets: values the update leaves out are kept from `old`, what
    /// `old` held and `new` does not is released. On error `old` keeps everything it held.
    pub fn update(&mut self, old: &Value, new: &mut Value) -> Result<(), Error> {
        let (old_ip, new_ip) = (
            old.pointer("/spec/clusterIP").and_then(Value::as_str),
            new.pointer("/spec/clusterIP").and_then(Value::as_str),
        );
        let old_type = service_type(old);
        let new_type = service_type(new);
        if let (Some(o), Some(n)) = (old_ip, new_ip)
            && !o.is_empty()
            && !n.is_empty()
            && o != n
            && old_type != "ExternalName"
            && new_type != "ExternalName"
        {
            return Err(Error::Invalid(format!(
                "spec.clusterIPs[0]: Invalid value: {n:?}: may not change once set"
            )));
        }
        carry_over(old, new);
        self.release(old);
        let mut claims = Claims::default();
        match self.fill(new, &mut claims) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.give_back(claims);
                // Everything old held was free a moment ago and nothing else ran since: this cannot fail.
                let mut again = old.clone();
                let mut unused = Claims::default();
                let _ = self.fill(&mut again, &mut unused);
                Err(e)
            }
        }
    }

    /// Gives back what a deleted Service held.
    pub fn release(&mut self, svc: &Value) {
        for ip in cluster_ips(svc).iter().filter_map(|s| s.parse().ok()) {
            self.used_ips.remove(&ip);
        }
        for port in node_ports(svc) {
            self.used_ports.remove(&port);
        }
    }

    fn give_back(&mut self, claims: Claims) {
        for ip in claims.ips {
            self.used_ips.remove(&ip);
        }
        for port in claims.ports {
            self.used_ports.remove(&port);
        }
    }

    fn fill(&mut self, svc: &mut Value, claims: &mut Claims) -> Result<(), Error> {
        if !svc["spec"].is_object() {
            svc["spec"] = json!({});
        }
        let ty = service_type(svc).to_owned();
        let spec = &mut svc["spec"];
        if ty != "ExternalName" && spec.get("internalTrafficPolicy").is_none() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer")
            && spec.get("externalTrafficPolicy").is_none()
        {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if ty == "LoadBalancer" && spec.get("allocateLoadBalancerNodePorts").is_none() {
            spec["allocateLoadBalancerNodePorts"] = json!(true);
        }
        if ty == "ExternalName" {
            return Ok(());
        }
        self.fill_cluster_ips(spec, claims)?;
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer" && spec["allocateLoadBalancerNodePorts"] != json!(false));
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, port) in ports.iter_mut().enumerate() {
                let given = port.get("nodePort").and_then(Value::as_u64);
                match given {
                    Some(p) if wants_node_ports || ty == "LoadBalancer" => {
                        self.claim_port(p, &format!("spec.ports[{i}].nodePort"), claims)?;
                    }
                    Some(_) => {
                        return Err(Error::Invalid(format!(
                            "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is '{ty}'"
                        )));
                    }
                    None if wants_node_ports => {
                        port["nodePort"] = json!(self.next_free_port(claims)?);
                    }
                    None => {}
                }
            }
        }
        let local = spec.get("externalTrafficPolicy") == Some(&json!("Local"));
        if ty == "LoadBalancer" && local {
            match spec.get("healthCheckNodePort").and_then(Value::as_u64) {
                Some(p) => self.claim_port(p, "spec.healthCheckNodePort", claims)?,
                None => spec["healthCheckNodePort"] = json!(self.next_free_port(claims)?),
            }
        }
        Ok(())
    }

    fn fill_cluster_ips(&mut self, spec: &mut Value, claims: &mut Claims) -> Result<(), Error> {
        let requested: Vec<String> = match spec.get("clusterIPs").and_then(Value::as_array) {
            Some(ips) if !ips.is_empty() => ips
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .filter(|ip| !ip.is_empty())
                .map(|ip| vec![ip.to_owned()])
                .unwrap_or_default(),
        };
        let headless = requested.first().is_some_and(|ip| ip == "None");
        let policy = spec
            .get("ipFamilyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("SingleStack")
            .to_owned();
        if !matches!(
            policy.as_str(),
            "SingleStack" | "PreferDualStack" | "RequireDualStack"
        ) {
            return Err(Error::Invalid(format!(
                "spec.ipFamilyPolicy: Unsupported value: {policy:?}: supported values: \"PreferDualStack\", \
                 \"RequireDualStack\", \"SingleStack\""
            )));
        }
        let mut families: Vec<String> = match spec.get("ipFamilies").and_then(Value::as_array) {
            Some(f) if !f.is_empty() => f
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ if !headless => requested
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| family(&ip).to_owned())
                .collect(),
            _ => Vec::new(),
        };
        if families.is_empty() {
            families.push(self.ranges[0].family().to_owned());
        }
        for (i, f) in families.iter().enumerate() {
            if !self.ranges.iter().any(|r| r.family() == f) {
                return Err(Error::Invalid(format!(
                    "spec.ipFamilies[{i}]: Invalid value: {f:?}: not configured on this cluster"
                )));
            }
        }
        if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
            return Err(Error::Invalid(format!(
                "spec.ipFamilies: Invalid value: {families:?}: must hold at most one entry per family"
            )));
        }
        if policy == "SingleStack" && families.len() > 1 {
            return Err(Error::Invalid(
                "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or \
                 'PreferDualStack' when multiple IP families are specified"
                    .into(),
            ));
        }
        if policy != "SingleStack" && families.len() == 1 {
            let other = self.ranges.iter().find(|r| r.family() != families[0]);
            match other {
                Some(r) => families.push(r.family().to_owned()),
                None if policy == "RequireDualStack" => {
                    return Err(Error::Invalid(
                        "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not \
                         configured for dual-stack services"
                            .into(),
                    ));
                }
                None => {}
            }
        }
        let ips: Vec<String> = if headless {
            vec!["None".into()]
        } else {
            let mut ips = Vec::new();
            for (i, fam) in families.iter().enumerate() {
                let ip = match requested.get(i) {
                    Some(given) => {
                        self.claim_ip(given, fam, claims)?;
                        given.clone()
                    }
                    None => self.next_free_ip(fam, claims)?.to_string(),
                };
                ips.push(ip);
            }
            ips
        };
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
        spec["ipFamilies"] = json!(families);
        spec["ipFamilyPolicy"] = json!(policy);
        Ok(())
    }

    fn claim_ip(&mut self, given: &str, fam: &str, claims: &mut Claims) -> Result<(), Error> {
        let invalid = |why: &str| {
            Error::Invalid(format!(
                "spec.clusterIPs: Invalid value: [{given:?}]: failed to allocate IP {given}: {why}"
            ))
        };
        let ip: IpAddr = given
            .parse()
            .map_err(|_| invalid("must be a valid IP address"))?;
        if family(&ip) != fam {
            return Err(invalid(&format!(
                "expected an {fam} value as indicated by `ipFamilies[{fam}]`"
            )));
        }
        let range = self
            .ranges
            .iter()
            .find(|r| r.family() == fam)
            .ok_or_else(|| invalid("no range of its family"))?;
        if !range.net.contains(&ip) || ip == range.net.network() {
            return Err(invalid(&format!(
                "provided IP is not in the valid range. The range of valid IPs is {}",
                range.net
            )));
        }
        if !self.used_ips.insert(ip) {
            return Err(invalid("provided IP is already allocated"));
        }
        claims.ips.push(ip);
        Ok(())
    }

    fn next_free_ip(&mut self, fam: &str, claims: &mut Claims) -> Result<IpAddr, Error> {
        let range = self
            .ranges
            .iter_mut()
            .find(|r| r.family() == fam)
            .ok_or_else(|| Error::Invalid(format!("no {fam} service range")))?;
        let offsets = range.offsets();
        let span = offsets.end - offsets.start;
        // Bounded by the range's size; a full /108 is a million steps, once, on the way to an error.
        for step in 0..span {
            let offset = offsets.start + (range.next - offsets.start + step) % span;
            let ip = range.at(offset);
            if self.used_ips.insert(ip) {
                range.next = if offset + 1 >= offsets.end {
                    offsets.start
                } else {
                    offset + 1
                };
                claims.ips.push(ip);
                return Ok(ip);
            }
        }
        Err(Error::Full(format!(
            "Internal error occurred: failed to allocate a serviceIP: range is full ({})",
            range.net
        )))
    }

    fn claim_port(&mut self, port: u64, field: &str, claims: &mut Claims) -> Result<(), Error> {
        let p = u16::try_from(port)
            .ok()
            .filter(|p| NODE_PORTS.contains(p))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{field}: Invalid value: {port}: provided port is not in the valid range. The range of valid \
                     ports is {}-{}",
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                ))
            })?;
        if !self.used_ports.insert(p) {
            return Err(Error::Invalid(format!(
                "{field}: Invalid value: {port}: provided port is already allocated"
            )));
        }
        claims.ports.push(p);
        Ok(())
    }

    fn next_free_port(&mut self, claims: &mut Claims) -> Result<u16, Error> {
        let (start, end) = (*NODE_PORTS.start(), *NODE_PORTS.end());
        let span = end - start + 1;
        for step in 0..span {
            let p = start + (self.next_port - start + step) % span;
            if self.used_ports.insert(p) {
                self.next_port = if p == end { start } else { p + 1 };
                claims.ports.push(p);
                return Ok(p);
            }
        }
        Err(Error::Full(format!(
            "Internal error occurred: failed to allocate a nodePort: range is full ({start}-{end})"
        )))
    }
}

fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn cluster_ips(svc: &Value) -> Vec<String> {
    let spec = &svc["spec"];
    let mut ips: Vec<String> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if let Some(ip) = spec.get("clusterIP").and_then(Value::as_str)
        && !ips.iter().any(|i| i == ip)
    {
        ips.push(ip.to_owned());
    }
    ips
}

fn node_ports(svc: &Value) -> Vec<u16> {
    let spec = &svc["spec"];
    spec.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort"))
        .chain(spec.get("healthCheckNodePort"))
        .filter_map(Value::as_u64)
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

/// Keeps what an update leaves out, as kube-apiserver does: the ClusterIPs and families while the Service keeps a
/// ClusterIP, each port's NodePort (matched by port and protocol) while it keeps NodePorts, and the health-check
/// port while it keeps one.
fn carry_over(old: &Value, new: &mut Value) {
    let (old_type, new_type) = (service_type(old).to_owned(), service_type(new).to_owned());
    if !new["spec"].is_object() {
        new["spec"] = json!({});
    }
    let (o, n) = (&old["spec"], &mut new["spec"]);
    let unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || *v == json!(""));
    if old_type != "ExternalName" && new_type != "ExternalName" && unset(n.get("clusterIP")) {
        for field in ["clusterIP", "clusterIPs", "ipFamilies"] {
            if let Some(v) = o.get(field) {
                n[field] = v.clone();
            }
        }
        if unset(n.get("ipFamilyPolicy"))
            && let Some(v) = o.get("ipFamilyPolicy")
        {
            n["ipFamilyPolicy"] = v.clone();
        }
    }
    let keeps_node_ports = |t: &str| matches!(t, "NodePort" | "LoadBalancer");
    if keeps_node_ports(&old_type) && !keeps_node_ports(&new_type) {
        // As kube-apiserver's dropTypeDependentFields: leaving NodePort or LoadBalancer drops the NodePorts the
        // Service held, when the update still carries them unchanged.
        let old_ports = node_ports(old);
        if let Some(ports) = n.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut() {
                let held = port
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .is_some_and(|p| old_ports.contains(&p));
                if held && let Value::Object(m) = port {
                    m.remove("nodePort");
                }
            }
        }
        if n.get("healthCheckNodePort") == o.get("healthCheckNodePort")
            && let Value::Object(m) = n
        {
            m.remove("healthCheckNodePort");
        }
    }
    if keeps_node_ports(&old_type) && keeps_node_ports(&new_type) {
        let old_ports = o.get("ports").and_then(Value::as_array).cloned();
        if let (Some(old_ports), Some(ports)) =
            (old_ports, n.get_mut("ports").and_then(Value::as_array_mut))
        {
            for port in ports.iter_mut().filter(|p| unset(p.get("nodePort"))) {
                let same = old_ports.iter().find(|op| {
                    op.get("port") == port.get("port")
                        && op.get("protocol").unwrap_or(&json!("TCP"))
                            == port.get("protocol").unwrap_or(&json!("TCP"))
                });
                if let Some(np) = same.and_then(|op| op.get("nodePort")) {
                    port["nodePort"] = np.clone();
                }
            }
        }
        if unset(n.get("healthCheckNodePort"))
            && n.get("externalTrafficPolicy") == o.get("externalTrafficPolicy")
            && let Some(v) = o.get("healthCheckNodePort")
        {
            n["healthCheckNodePort"] = v.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn a_load_balancer_gets_what_kube_apiserver_fills_in() {
        let mut net = ServiceNetwork::default();
        let mut s =
            svc(json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}));
        net.create(&mut s).unwrap();
        let spec = &s["spec"];
        assert_eq!(spec["clusterIP"], "198.51.100.1");
        assert_eq!(spec["clusterIPs"], json!(["198.51.100.1"]));
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ports"][0]["nodePort"], 30000);
        assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert!(spec.get("healthCheckNodePort").is_none());

        let mut local = svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        );
        net.create(&mut local).unwrap();
        assert_eq!(
            local["spec"]["clusterIPs"],
            json!(["198.51.100.2", "2001:db8:ffff::1"])
        );
        assert_eq!(local["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(local["spec"]["healthCheckNodePort"], 30002);
    }

    #[test]
    fn requested_values_are_checked_and_refusals_claim_nothing() {
        let mut net = ServiceNetwork::parse("198.51.100.0/30").unwrap();
        let mut a = svc(json!({"clusterIP": "198.51.100.2"}));
        net.create(&mut a).unwrap();
        let mut taken = svc(json!({"clusterIP": "198.51.100.2"}));
        let err = net.create(&mut taken).unwrap_err();
        assert!(
            err.to_string().contains("provided IP is already allocated"),
            "{err}"
        );
        let mut outside = svc(json!({"clusterIP": "203.0.113.9"}));
        let err = net.create(&mut outside).unwrap_err();
        assert!(err.to_string().contains("not in the valid range"), "{err}");
        let mut v6 = svc(json!({"ipFamilies": ["IPv6"]}));
        let err = net.create(&mut v6).unwrap_err();
        assert!(
            err.to_string().contains("not configured on this cluster"),
            "{err}"
        );
        let mut dual = svc(json!({"ipFamilyPolicy": "RequireDualStack"}));
        assert!(net.create(&mut dual).is_err());
        // A port request that fails gives back the address the same call took.
        let mut bad_port = svc(json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}));
        let err = net.create(&mut bad_port).unwrap_err();
        assert!(err.to_string().contains("spec.ports[0].nodePort"), "{err}");
        // A /30 has two usable addresses: .1 is still free after all the refusals, then the range is full.
        let mut b = svc(json!({}));
        net.create(&mut b).unwrap();
        assert_eq!(b["spec"]["clusterIP"], "198.51.100.1");
        let mut c = svc(json!({}));
        assert!(matches!(net.create(&mut c), Err(Error::Full(_))));
        net.release(&a);
        net.create(&mut c).unwrap();
        assert_eq!(c["spec"]["clusterIP"], "198.51.100.2");
    }

    #[test]
    fn updates_keep_what_they_leave_out_and_may_not_move_the_cluster_ip() {
        let mut net = ServiceNetwork::default();
        let mut old = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}));
        net.create(&mut old).unwrap();
        // A client that PUTs what it wrote at first (no ClusterIP, no NodePorts), with one port dropped.
        let mut new = svc(json!({"type": "LoadBalancer", "ports": [{"port": 443}]}));
        net.update(&old, &mut new).unwrap();
        assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
        assert_eq!(
            new["spec"]["ports"][0]["nodePort"],
            old["spec"]["ports"][1]["nodePort"]
        );
        // Port 80's NodePort went back to the pool: another Service may ask for it.
        let freed = old["spec"]["ports"][0]["nodePort"].clone();
        let mut next =
            svc(json!({"type": "NodePort", "ports": [{"port": 8080, "nodePort": freed}]}));
        net.create(&mut next).unwrap();

        let mut moved = new.clone();
        moved["spec"]["clusterIP"] = json!("198.51.100.77");
        moved["spec"]["clusterIPs"] = json!(["198.51.100.77"]);
        let err = net.update(&new, &mut moved).unwrap_err();
        assert!(err.to_string().contains("may not change once set"), "{err}");
        // The refused update left everything with `new`: its address is still taken.
        let mut same = svc(json!({"clusterIP": new["spec"]["clusterIP"].clone()}));
        assert!(net.create(&mut same).is_err());

        // Becoming ClusterIP drops the NodePorts it still carries, and gives them back.
        let mut lb = svc(json!({"type": "LoadBalancer", "ports": [{"port": 81}]}));
        net.create(&mut lb).unwrap();
        let mut cluster = lb.clone();
        cluster["spec"]["type"] = json!("ClusterIP");
        net.update(&lb, &mut cluster).unwrap();
        assert!(
            cluster["spec"]["ports"][0].get("nodePort").is_none(),
            "{cluster}"
        );
        let port = lb["spec"]["ports"][0]["nodePort"].clone();
        let mut reuse = svc(json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": port}]}));
        net.create(&mut reuse).unwrap();

        // Becoming ExternalName gives the ClusterIP back.
        let mut external = svc(json!({"type": "ExternalName", "externalName": "example.com"}));
        net.update(&new, &mut external).unwrap();
        assert!(external["spec"].get("clusterIP").is_none());
        net.create(&mut same).unwrap();
    }

    #[test]
    fn headless_services_and_cidr_errors() {
        let mut net = ServiceNetwork::default();
        let mut h = svc(json!({"clusterIP": "None"}));
        net.create(&mut h).unwrap();
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
        assert_eq!(h["spec"]["ipFamilies"], json!(["IPv4"]));
        assert!(ServiceNetwork::parse("198.51.100.0/24,203.0.113.0/24").is_err());
        assert!(ServiceNetwork::parse("nonsense").is_err());
        assert!(ServiceNetwork::parse("198.51.100.1/32").is_err());
    }
}
