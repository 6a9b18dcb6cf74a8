//! What a Service asks of the allocator: [`LbRequest`], read from a `core/v1` Service.
//!
//! This module owns the reading of the Service fields and MetalLB annotations that steer allocation. It never
//! decides anything about pools or addresses; that is [`super::Allocator`]'s job.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use crate::config::{Family, Labels};

/// Annotation naming the IPs a Service asks for, comma-separated.
pub const ANNOTATION_LB_IPS: &str = "metallb.io/loadBalancerIPs";
/// Annotation naming the pool a Service wants its IPs from.
pub const ANNOTATION_POOL: &str = "metallb.io/address-pool";
/// Annotation carrying the sharing key.
pub const ANNOTATION_SHARING: &str = "metallb.io/allow-shared-ip";
/// The pre-0.13 forms of the three annotations above. Where both forms are set, the `metallb.io/` one wins.
pub const DEPRECATED_ANNOTATION_LB_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
pub const DEPRECATED_ANNOTATION_POOL: &str = "metallb.universe.tf/address-pool";
pub const DEPRECATED_ANNOTATION_SHARING: &str = "metallb.universe.tf/allow-shared-ip";

/// `namespace/name` of a Service: the identity the allocator tracks assignments under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One `spec.ports[]` entry as far as sharing cares: two Services may share a VIP only if no (protocol, port) pair
/// appears in both.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub protocol: String,
    pub port: i32,
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// Who may share a VIP with whom. MetalLB calls the two halves the sharing key and the backend key.
///
/// `backend` is the pod selector of an `externalTrafficPolicy: Local` Service and `None` otherwise: a Local VIP is
/// announced only from nodes with local endpoints, so every Service on it must select the same pods. MetalLB
/// compares the rendered selector string, so a Local Service with an empty selector compares equal to a Cluster
/// Service; we keep that, since a drop-in must not refuse a sharing MetalLB accepted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sharing {
    pub key: String,
    pub backend: Option<Labels>,
}

/// Everything the allocator needs to know about one LoadBalancer Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbRequest {
    pub service: ServiceKey,
    /// IPs the Service asks for, from the `loadBalancerIPs` annotation or `spec.loadBalancerIP`.
    pub requested_ips: Vec<IpAddr>,
    /// The pool named in the `address-pool` annotation.
    pub pool: Option<String>,
    /// The `allow-shared-ip` key; `None` (or an empty annotation) means the Service wants its VIP to itself.
    pub sharing_key: Option<String>,
    pub ports: Vec<ServicePort>,
    /// `spec.externalTrafficPolicy: Local`.
    pub traffic_local: bool,
    /// `spec.selector`, kept only where it is read: for a Local Service that may share its VIP (empty otherwise).
    pub selector: Labels,
    pub family_policy: FamilyPolicy,
    /// `spec.ipFamilies` in order (the first one is the primary family); never empty.
    pub families: Vec<Family>,
    /// The Service's labels, for `serviceAllocation.serviceSelectors`.
    pub labels: Labels,
    /// Its namespace's labels, for `serviceAllocation.namespaceSelectors`.
    pub namespace_labels: Labels,
    /// `status.loadBalancer.ingress[].ip`: what the Service holds now, whoever wrote it.
    pub status_ips: Vec<IpAddr>,
    /// The `metallb.universe.tf/*` annotations present on the Service, for a `deprecatedAnnotation` Event.
    pub deprecated_annotations: Vec<&'static str>,
}

/// Why a Service's allocation inputs cannot be read. Each variant names the Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Service has no metadata.name")]
    Unnamed,
    #[error("{service}: annotation {annotation}: {} is not an IP address", Shown(.value))]
    BadAnnotationIp {
        service: ServiceKey,
        annotation: &'static str,
        value: String,
    },
    #[error("{service}: spec.loadBalancerIP {} is not an IP address", Shown(.value))]
    BadSpecIp { service: ServiceKey, value: String },
    #[error("{service}: {annotation} lists {count} IPs; at most one per family is allowed")]
    TooManyIps {
        service: ServiceKey,
        annotation: &'static str,
        count: usize,
    },
    #[error(
        "{service}: {annotation} lists two {family} addresses; at most one per family is allowed"
    )]
    DuplicateFamily {
        service: ServiceKey,
        annotation: &'static str,
        family: Family,
    },
    // MetalLB refuses this combination rather than guess which one the user meant.
    #[error(
        "{service}: both {annotation} and spec.loadBalancerIP are set; use only the annotation"
    )]
    ConflictingIpRequests {
        service: ServiceKey,
        annotation: &'static str,
    },
    #[error("{service}: spec.ipFamilies has unknown family {}", Shown(.value))]
    UnknownFamily { service: ServiceKey, value: String },
    #[error("{service}: spec.ipFamilyPolicy has unknown value {}", Shown(.value))]
    UnknownFamilyPolicy { service: ServiceKey, value: String },
}

pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// A value taken from a Service (an annotation, a field), quoted for a message and cut to its first
/// [`Shown::LIMIT`] characters, with its full length: annotations are unbounded (up to 256 KiB in total), and the
/// message goes into an Event, whose note the API server limits to 1 KiB, and into the log.
pub struct Shown<'a>(pub &'a str);

impl Shown<'_> {
    pub const LIMIT: usize = 100;
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(Self::LIMIT) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

impl LbRequest {
    /// Reads the request of `svc`, or `None` when IronLB must leave the Service alone: it is not
    /// `type: LoadBalancer`, or its `spec.loadBalancerClass` is not ours (ours is the nil class when `lb_class` is
    /// `None`, else exactly `lb_class`).
    ///
    /// Requested IPs come from the `loadBalancerIPs` annotation (`metallb.io/` over `metallb.universe.tf/`) or from
    /// `spec.loadBalancerIP`. Setting both the annotation and the field is an error, as in MetalLB.
    pub fn from_service(
        svc: &Service,
        namespace_labels: &Labels,
        lb_class: Option<&str>,
    ) -> Result<Option<LbRequest>> {
        match read(svc, namespace_labels, lb_class)? {
            None => Ok(None),
            Some((request, errors)) => match errors.into_iter().next() {
                Some(e) => Err(e),
                None => Ok(Some(request)),
            },
        }
    }

    /// Like [`LbRequest::from_service`], but a malformed IP request is dropped instead of failing the whole read.
    ///
    /// Used to adopt the status IPs of a Service whose annotation is broken: MetalLB keeps such a Service's VIP
    /// while it reports the error, and so must we, or another Service could be handed that VIP.
    pub fn for_adoption(
        svc: &Service,
        namespace_labels: &Labels,
        lb_class: Option<&str>,
    ) -> Result<Option<LbRequest>> {
        Ok(read(svc, namespace_labels, lb_class)?.map(|(request, _)| request))
    }

    /// The sharing half of the request, or `None` when the Service does not allow sharing.
    pub fn sharing(&self) -> Option<Sharing> {
        let key = self.sharing_key.clone().filter(|k| !k.is_empty())?;
        let backend =
            (self.traffic_local && !self.selector.is_empty()).then(|| self.selector.clone());
        Some(Sharing { key, backend })
    }

    /// The families the Service must get an address of, and those it would like. `RequireDualStack` with a single
    /// family listed (a single-stack cluster) requires both anyway, and is refused by the allocator.
    pub fn wanted_families(&self) -> (Vec<Family>, Vec<Family>) {
        let primary = self.families.first().copied().unwrap_or(Family::V4);
        let other = match primary {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        match self.family_policy {
            FamilyPolicy::SingleStack => (vec![primary], vec![]),
            FamilyPolicy::PreferDualStack if self.families.len() >= 2 => {
                (vec![], vec![primary, other])
            }
            FamilyPolicy::PreferDualStack => (vec![primary], vec![]),
            FamilyPolicy::RequireDualStack => (vec![primary, other], vec![]),
        }
    }
}

/// The annotation value, the newer form first. An empty value counts as unset, as in MetalLB.
fn annotation<'a>(
    annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    newer: &'static str,
    older: &'static str,
) -> Option<(&'static str, &'a str)> {
    let annotations = annotations?;
    if let Some(v) = annotations.get(newer) {
        return (!v.trim().is_empty()).then_some((newer, v.as_str()));
    }
    annotations
        .get(older)
        .filter(|v| !v.trim().is_empty())
        .map(|v| (older, v.as_str()))
}

type Read = (LbRequest, Vec<RequestError>);

fn read(svc: &Service, namespace_labels: &Labels, lb_class: Option<&str>) -> Result<Option<Read>> {
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.load_balancer_class.as_deref() != lb_class
    {
        return Ok(None);
    }
    let meta = &svc.metadata;
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(RequestError::Unnamed)?;
    // A manifest without a namespace lands in `default`, as `kubectl apply` would put it.
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let service = ServiceKey { namespace, name };
    let annotations = meta.annotations.as_ref();
    let mut errors = Vec::new();

    let deprecated_annotations = [
        DEPRECATED_ANNOTATION_LB_IPS,
        DEPRECATED_ANNOTATION_POOL,
        DEPRECATED_ANNOTATION_SHARING,
    ]
    .into_iter()
    .filter(|a| annotations.is_some_and(|m| m.contains_key(*a)))
    .collect();

    let mut requested_ips = Vec::new();
    let spec_ip = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    match (
        annotation(annotations, ANNOTATION_LB_IPS, DEPRECATED_ANNOTATION_LB_IPS),
        spec_ip,
    ) {
        (Some((annotation, _)), Some(_)) => errors.push(RequestError::ConflictingIpRequests {
            service: service.clone(),
            annotation,
        }),
        (Some((annotation, value)), None) => match parse_ip_list(&service, annotation, value) {
            Ok(ips) => requested_ips = ips,
            Err(e) => errors.push(e),
        },
        (None, Some(value)) => match value.parse() {
            Ok(ip) => requested_ips = vec![ip],
            Err(_) => errors.push(RequestError::BadSpecIp {
                service: service.clone(),
                value: value.to_string(),
            }),
        },
        (None, None) => {}
    }

    let pool = annotation(annotations, ANNOTATION_POOL, DEPRECATED_ANNOTATION_POOL)
        .map(|(_, v)| v.trim().to_string());
    let sharing_key = annotation(
        annotations,
        ANNOTATION_SHARING,
        DEPRECATED_ANNOTATION_SHARING,
    )
    .map(|(_, v)| v.to_string());

    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePort {
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            port: p.port,
        })
        .collect();

    let family_policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => FamilyPolicy::SingleStack,
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(other) => {
            return Err(RequestError::UnknownFamilyPolicy {
                service,
                value: other.into(),
            });
        }
    };

    let mut families = Vec::new();
    for value in spec.ip_families.iter().flatten() {
        let family = match value.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => {
                return Err(RequestError::UnknownFamily {
                    service,
                    value: value.clone(),
                });
            }
        };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    // The API server always fills ipFamilies; older objects and hand-written manifests may not have it, so fall back
    // on the cluster IPs, then the requested IPs, then IPv4.
    if families.is_empty() {
        let cluster_ips = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter());
        for ip in cluster_ips.filter_map(|s| s.parse::<IpAddr>().ok()) {
            if !families.contains(&Family::of(&ip)) {
                families.push(Family::of(&ip));
            }
        }
    }
    if families.is_empty() {
        families.extend(requested_ips.first().map(Family::of));
    }
    if families.is_empty() {
        families.push(Family::V4);
    }

    // The status is ours (or MetalLB's) to write, so a garbage entry is dropped and the Service gets a new VIP,
    // rather than making the Service unreadable.
    let status_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.trim().parse().ok())
        .collect();

    let traffic_local = spec.external_traffic_policy.as_deref() == Some("Local");
    // The selector is read only by the sharing rule for Local Services ([`LbRequest::sharing`]); the allocator keeps
    // every request, so the others keep no copy of it.
    let selector = if traffic_local && sharing_key.as_deref().is_some_and(|k| !k.is_empty()) {
        spec.selector.clone().unwrap_or_default()
    } else {
        Labels::new()
    };
    let request = LbRequest {
        service,
        requested_ips,
        pool,
        sharing_key,
        ports,
        traffic_local,
        selector,
        family_policy,
        families,
        labels: meta.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        status_ips,
        deprecated_annotations,
    };
    Ok(Some((request, errors)))
}

fn parse_ip_list(
    service: &ServiceKey,
    annotation: &'static str,
    value: &str,
) -> Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for part in value.split(',') {
        let ip = part
            .trim()
            .parse()
            .map_err(|_| RequestError::BadAnnotationIp {
                service: service.clone(),
                annotation,
                value: part.trim().to_string(),
            })?;
        if let Some(family) = ips.iter().map(Family::of).find(|f| *f == Family::of(&ip)) {
            return Err(RequestError::DuplicateFamily {
                service: service.clone(),
                annotation,
                family,
            });
        }
        ips.push(ip);
    }
    if ips.len() > 2 {
        return Err(RequestError::TooManyIps {
            service: service.clone(),
            annotation,
            count: ips.len(),
        });
    }
    Ok(ips)
}

/// Builders for Services and requests, shared by the tests of every allocation module.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort as K8sPort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A `type: LoadBalancer` Service `default/<name>`, IPv4 single stack, with no ports.
    pub fn svc(name: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.spec = Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_families: Some(vec!["IPv4".into()]),
            ..Default::default()
        });
        s
    }

    /// Chainable setters on a Service.
    pub trait SvcExt {
        fn ns(self, ns: &str) -> Service;
        fn annotate(self, key: &str, value: &str) -> Service;
        fn label(self, key: &str, value: &str) -> Service;
        fn created(self, secs: i64) -> Service;
        fn lb_ip(self, ip: &str) -> Service;
        fn lb_ips(self, ips: &str) -> Service;
        fn pool(self, pool: &str) -> Service;
        fn share(self, key: &str) -> Service;
        fn port(self, port: i32) -> Service;
        fn proto_port(self, protocol: &str, port: i32) -> Service;
        /// `externalTrafficPolicy: Local` with selector `app=<app>`.
        fn local(self, app: &str) -> Service;
        fn class(self, class: &str) -> Service;
        fn kind(self, kind: &str) -> Service;
        /// `ipFamilyPolicy` and `ipFamilies`, e.g. `.stack("RequireDualStack", &["IPv6", "IPv4"])`.
        fn stack(self, policy: &str, families: &[&str]) -> Service;
        fn status(self, ips: &[&str]) -> Service;
    }

    fn spec_mut(s: &mut Service) -> &mut ServiceSpec {
        s.spec.get_or_insert_with(Default::default)
    }

    impl SvcExt for Service {
        fn ns(mut self, ns: &str) -> Service {
            self.metadata.namespace = Some(ns.into());
            self
        }
        fn annotate(mut self, key: &str, value: &str) -> Service {
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        fn label(mut self, key: &str, value: &str) -> Service {
            self.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            self
        }
        fn created(mut self, secs: i64) -> Service {
            self.metadata.creation_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).expect("test timestamp"),
            ));
            self
        }
        fn lb_ip(mut self, ip: &str) -> Service {
            spec_mut(&mut self).load_balancer_ip = Some(ip.into());
            self
        }
        fn lb_ips(self, ips: &str) -> Service {
            self.annotate(ANNOTATION_LB_IPS, ips)
        }
        fn pool(self, pool: &str) -> Service {
            self.annotate(ANNOTATION_POOL, pool)
        }
        fn share(self, key: &str) -> Service {
            self.annotate(ANNOTATION_SHARING, key)
        }
        fn port(self, port: i32) -> Service {
            self.proto_port("TCP", port)
        }
        fn proto_port(mut self, protocol: &str, port: i32) -> Service {
            spec_mut(&mut self)
                .ports
                .get_or_insert_with(Vec::new)
                .push(K8sPort {
                    protocol: Some(protocol.into()),
                    port,
                    ..Default::default()
                });
            self
        }
        fn local(mut self, app: &str) -> Service {
            let spec = spec_mut(&mut self);
            spec.external_traffic_policy = Some("Local".into());
            spec.selector = Some([("app".to_string(), app.to_string())].into());
            self
        }
        fn class(mut self, class: &str) -> Service {
            spec_mut(&mut self).load_balancer_class = Some(class.into());
            self
        }
        fn kind(mut self, kind: &str) -> Service {
            spec_mut(&mut self).type_ = Some(kind.into());
            self
        }
        fn stack(mut self, policy: &str, families: &[&str]) -> Service {
            let spec = spec_mut(&mut self);
            spec.ip_family_policy = Some(policy.into());
            spec.ip_families = Some(families.iter().map(|f| f.to_string()).collect());
            self
        }
        fn status(mut self, ips: &[&str]) -> Service {
            let ingress = ips
                .iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ..Default::default()
                })
                .collect();
            self.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..Default::default()
            });
            self
        }
    }

    /// The request of a test Service, in a namespace without labels.
    pub fn req(s: Service) -> LbRequest {
        LbRequest::from_service(&s, &Labels::new(), None)
            .expect("test Service is valid")
            .expect("test Service is a LoadBalancer")
    }

    pub fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn read(s: Service) -> Result<Option<LbRequest>> {
        LbRequest::from_service(&s, &Labels::new(), None)
    }

    #[test]
    fn only_load_balancers_of_our_class_are_read() {
        assert!(read(svc("a").kind("ClusterIP")).unwrap().is_none());
        assert!(read(svc("a").class("other")).unwrap().is_none());
        assert!(read(svc("a")).unwrap().is_some());
        let mine = svc("a").class("ironlb");
        assert!(
            LbRequest::from_service(&mine, &Labels::new(), Some("ironlb"))
                .unwrap()
                .is_some()
        );
        assert!(
            LbRequest::from_service(&svc("a"), &Labels::new(), Some("ironlb"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn newer_annotations_win_and_deprecated_ones_are_reported() {
        let r = req(svc("a")
            .annotate(DEPRECATED_ANNOTATION_LB_IPS, "192.0.2.9")
            .lb_ips("192.0.2.1, 2001:db8::1")
            .annotate(DEPRECATED_ANNOTATION_POOL, "old")
            .annotate(DEPRECATED_ANNOTATION_SHARING, "k"));
        assert_eq!(r.requested_ips, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
        assert_eq!(r.pool.as_deref(), Some("old"));
        assert_eq!(r.sharing_key.as_deref(), Some("k"));
        assert_eq!(
            r.deprecated_annotations,
            vec![
                DEPRECATED_ANNOTATION_LB_IPS,
                DEPRECATED_ANNOTATION_POOL,
                DEPRECATED_ANNOTATION_SHARING
            ]
        );
        assert!(req(svc("b").pool("p")).deprecated_annotations.is_empty());
    }

    #[test]
    fn spec_ip_is_read_and_conflicts_with_the_annotation() {
        assert_eq!(
            req(svc("a").lb_ip("192.0.2.7")).requested_ips,
            vec![ip("192.0.2.7")]
        );
        let both = svc("a").lb_ip("192.0.2.7").lb_ips("192.0.2.8");
        assert!(matches!(
            read(both.clone()),
            Err(RequestError::ConflictingIpRequests { .. })
        ));
        // Adoption still reads the rest of the Service, so its VIP stays protected.
        let adopt = LbRequest::for_adoption(&both.status(&["192.0.2.7"]), &Labels::new(), None)
            .unwrap()
            .unwrap();
        assert_eq!(adopt.status_ips, vec![ip("192.0.2.7")]);
        assert!(adopt.requested_ips.is_empty());
    }

    #[test]
    fn malformed_ips_are_errors_naming_service_and_annotation() {
        let e = read(svc("web").ns("shop").lb_ips("192.0.2.1,bogus")).unwrap_err();
        assert_eq!(
            e,
            RequestError::BadAnnotationIp {
                service: ServiceKey::new("shop", "web"),
                annotation: ANNOTATION_LB_IPS,
                value: "bogus".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "shop/web: annotation metallb.io/loadBalancerIPs: \"bogus\" is not an IP address"
        );
        let e = read(svc("a").annotate(DEPRECATED_ANNOTATION_LB_IPS, "300.1.1.1")).unwrap_err();
        assert!(e.to_string().contains(DEPRECATED_ANNOTATION_LB_IPS), "{e}");
        assert!(matches!(
            read(svc("a").lb_ip("x")),
            Err(RequestError::BadSpecIp { .. })
        ));
        assert!(matches!(
            read(svc("a").lb_ips("192.0.2.1,192.0.2.2")),
            Err(RequestError::DuplicateFamily { .. })
        ));
        assert!(matches!(
            read(svc("a").stack("Sometimes", &["IPv4"])),
            Err(RequestError::UnknownFamilyPolicy { .. })
        ));
    }

    #[test]
    fn ports_policy_families_labels_and_status_are_read() {
        let s = svc("a")
            .port(80)
            .proto_port("UDP", 53)
            .local("web")
            .stack("PreferDualStack", &["IPv6", "IPv4"])
            .label("tier", "front")
            .share("k")
            .status(&["192.0.2.1", "not-an-ip", "2001:db8::1"]);
        let ns: Labels = [("team".to_string(), "x".to_string())].into();
        let r = LbRequest::from_service(&s, &ns, None).unwrap().unwrap();
        assert_eq!(
            r.ports,
            vec![
                ServicePort {
                    protocol: "TCP".into(),
                    port: 80
                },
                ServicePort {
                    protocol: "UDP".into(),
                    port: 53
                }
            ]
        );
        assert!(r.traffic_local);
        assert_eq!(r.family_policy, FamilyPolicy::PreferDualStack);
        assert_eq!(r.families, vec![Family::V6, Family::V4]);
        assert_eq!(r.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(r.namespace_labels, ns);
        assert_eq!(r.status_ips, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
        let sharing = r.sharing().unwrap();
        assert_eq!(sharing.key, "k");
        assert_eq!(sharing.backend, Some(r.selector.clone()));
        assert_eq!(r.wanted_families(), (vec![], vec![Family::V6, Family::V4]));
    }

    #[test]
    fn cluster_services_share_regardless_of_selector() {
        assert_eq!(req(svc("a").share("k")).sharing().unwrap().backend, None);
        assert_eq!(req(svc("a").share("")).sharing(), None);
        assert_eq!(req(svc("a")).sharing(), None);
    }
}
