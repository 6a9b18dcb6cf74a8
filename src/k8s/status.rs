//! What the allocator writes onto a Service: `status.loadBalancer.ingress` and the pool annotations.
//!
//! Patches are computed here as pure values from the Service as last seen and the wanted assignment; `None` means
//! the Service already says what we want, so nothing is written. Only the leader sends them.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

/// The annotation naming the pool an IP came from.
pub const POOL_ANNOTATION: &str = "ironlb.io/pool";
/// MetalLB's name for the same, kept so that tools written for MetalLB keep working.
pub const METALLB_POOL_ANNOTATION: &str = "metallb.io/ip-allocated-from-pool";

/// The IPs in `status.loadBalancer.ingress`, in order, skipping hostname-only entries and unparsable text.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// How ingress entries are written: `ipMode` is left unset in the integrated data plane (kube-proxy treats that as
/// `VIP`), and set to `Proxy` in the direct one so kube-proxy programs nothing for the IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IngressMode {
    #[default]
    Vip,
    Proxy,
    /// `Proxy` on an API server that drops `ipMode` (before Kubernetes 1.30, or with the `LoadBalancerIPMode`
    /// feature gate off): written as `Proxy` still, but a status without it counts as written, so that the agent
    /// does not rewrite it on every pass ([`ip_mode_dropped`] tells).
    ProxyNotKept,
}

/// Whether the API server dropped the `ipMode` a status `patch` asked for: `returned`, the Service it answered
/// with, holds an ingress IP the patch set with an `ipMode`, but without one.
pub fn ip_mode_dropped(patch: &Value, returned: &Service) -> bool {
    let asked = patch["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.get("ipMode").is_some())
        .filter_map(|e| e["ip"].as_str());
    let ingress = returned
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    asked.into_iter().any(|ip| {
        ingress
            .into_iter()
            .flatten()
            .any(|i| i.ip.as_deref() == Some(ip) && i.ip_mode.is_none())
    })
}

/// The merge patch for the status subresource that makes the ingress list exactly `wanted`, or None when it already
/// is. An empty `wanted` clears the ingress list.
pub fn status_patch(svc: &Service, wanted: &[IpAddr], mode: IngressMode) -> Option<Value> {
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let entries: Vec<Value> = wanted
        .iter()
        .map(|ip| match mode {
            IngressMode::Vip => json!({ "ip": ip.to_string() }),
            IngressMode::Proxy | IngressMode::ProxyNotKept => {
                json!({ "ip": ip.to_string(), "ipMode": "Proxy" })
            }
        })
        .collect();
    let same = match current {
        None => wanted.is_empty(),
        Some(list) => {
            list.len() == wanted.len()
                && list.iter().zip(wanted).all(|(have, want)| {
                    have.ip.as_deref() == Some(want.to_string().as_str())
                        && have.hostname.is_none()
                        && match mode {
                            IngressMode::Vip => {
                                have.ip_mode.is_none() || have.ip_mode.as_deref() == Some("VIP")
                            }
                            IngressMode::Proxy => have.ip_mode.as_deref() == Some("Proxy"),
                            IngressMode::ProxyNotKept => {
                                have.ip_mode.is_none() || have.ip_mode.as_deref() == Some("Proxy")
                            }
                        }
                })
        }
    };
    if same {
        return None;
    }
    let ingress = if entries.is_empty() {
        Value::Null
    } else {
        Value::Array(entries)
    };
    Some(json!({ "status": { "loadBalancer": { "ingress": ingress } } }))
}

/// The merge patch for the Service's metadata that names `pool` in both annotations (or removes them for None), or
/// None when they already say so.
pub fn pool_annotation_patch(svc: &Service, pool: Option<&str>) -> Option<Value> {
    let annotations = svc.metadata.annotations.as_ref();
    let current = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    if current(POOL_ANNOTATION) == pool && current(METALLB_POOL_ANNOTATION) == pool {
        return None;
    }
    let value = pool.map_or(Value::Null, |p| Value::String(p.to_string()));
    Some(json!({ "metadata": { "annotations": {
        POOL_ANNOTATION: value.clone(),
        METALLB_POOL_ANNOTATION: value,
    } } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    fn svc_with(ingress: &[(&str, Option<&str>)], annotations: &[(&str, &str)]) -> Service {
        let mut svc = Service::default();
        if !ingress.is_empty() {
            svc.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ingress
                            .iter()
                            .map(|(ip, mode)| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ip_mode: mode.map(str::to_string),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            });
        }
        if !annotations.is_empty() {
            svc.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        svc
    }

    #[test]
    fn a_dropped_ip_mode_is_noticed_and_then_not_rewritten() {
        let patch =
            status_patch(&svc_with(&[], &[]), &[ip("192.0.2.1")], IngressMode::Proxy).unwrap();
        // An old API server answers without ipMode.
        let old = svc_with(&[("192.0.2.1", None)], &[]);
        assert!(ip_mode_dropped(&patch, &old));
        assert!(!ip_mode_dropped(
            &patch,
            &svc_with(&[("192.0.2.1", Some("Proxy"))], &[])
        ));
        let vip = status_patch(&svc_with(&[], &[]), &[ip("192.0.2.1")], IngressMode::Vip).unwrap();
        assert!(
            !ip_mode_dropped(&vip, &old),
            "nothing asked, nothing dropped"
        );
        // Proxy would write again and again; ProxyNotKept takes the status as written.
        assert!(status_patch(&old, &[ip("192.0.2.1")], IngressMode::Proxy).is_some());
        assert_eq!(
            status_patch(&old, &[ip("192.0.2.1")], IngressMode::ProxyNotKept),
            None
        );
        assert_eq!(
            status_patch(
                &svc_with(&[("192.0.2.1", Some("Proxy"))], &[]),
                &[ip("192.0.2.1")],
                IngressMode::ProxyNotKept
            ),
            None
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nothing_is_written_when_status_already_matches() {
        let svc = svc_with(&[("192.0.2.1", None), ("2001:db8::1", None)], &[]);
        assert_eq!(ingress_ips(&svc), vec![ip("192.0.2.1"), ip("2001:db8::1")]);
        assert_eq!(
            status_patch(
                &svc,
                &[ip("192.0.2.1"), ip("2001:db8::1")],
                IngressMode::Vip
            ),
            None
        );
        assert_eq!(
            status_patch(&Service::default(), &[], IngressMode::Vip),
            None
        );
    }

    #[test]
    fn a_new_or_changed_ip_is_written_in_full() {
        let svc = svc_with(&[("192.0.2.1", None)], &[]);
        assert_eq!(
            status_patch(&svc, &[ip("192.0.2.2")], IngressMode::Vip),
            Some(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}}))
        );
        assert_eq!(
            status_patch(&svc, &[], IngressMode::Vip),
            Some(json!({"status": {"loadBalancer": {"ingress": null}}}))
        );
    }

    #[test]
    fn the_ip_mode_is_part_of_the_wanted_status() {
        let vip = svc_with(&[("192.0.2.1", None)], &[]);
        assert_eq!(
            status_patch(&vip, &[ip("192.0.2.1")], IngressMode::Proxy),
            Some(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "Proxy"}]}}})
            )
        );
        let proxy = svc_with(&[("192.0.2.1", Some("Proxy"))], &[]);
        assert_eq!(
            status_patch(&proxy, &[ip("192.0.2.1")], IngressMode::Proxy),
            None
        );
        assert!(status_patch(&proxy, &[ip("192.0.2.1")], IngressMode::Vip).is_some());
    }

    #[test]
    fn pool_annotations_are_written_only_when_they_differ() {
        let both = svc_with(
            &[],
            &[(POOL_ANNOTATION, "a"), (METALLB_POOL_ANNOTATION, "a")],
        );
        assert_eq!(pool_annotation_patch(&both, Some("a")), None);
        let only_metallb = svc_with(&[], &[(METALLB_POOL_ANNOTATION, "a")]);
        assert_eq!(
            pool_annotation_patch(&only_metallb, Some("a")),
            Some(
                json!({"metadata": {"annotations": {POOL_ANNOTATION: "a", METALLB_POOL_ANNOTATION: "a"}}})
            )
        );
        assert_eq!(
            pool_annotation_patch(&both, None),
            Some(
                json!({"metadata": {"annotations": {POOL_ANNOTATION: null, METALLB_POOL_ANNOTATION: null}}})
            )
        );
        assert_eq!(pool_annotation_patch(&Service::default(), None), None);
    }
}
