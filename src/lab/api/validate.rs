//! Decoding checks for the built-in kinds, as kube-apiserver makes them before anything is stored: an object that
//! does not decode as its kind (a number where a string belongs, bad base64 in a Secret, a list where an object
//! belongs)
//! is refused with 400 BadRequest, and with `fieldValidation=Strict` (kubectl's default) so is a field the kind does
//! not have. The decoding is k8s-openapi's, the same types the agent reads with.
//!
//! Custom resources are stored as sent: the lab does not read CRD schemas (a known difference in
//! tests/api_conformance.rs), and the agent's own config decoding is what names a bad MetalLB object.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Checks `obj`, written to the built-in resource `(group, plural)`, as its kind; other resources pass. The error
/// reads as kube-apiserver's: `ConfigMap in version "v1" cannot be handled as a ConfigMap: data.x: ...`.
pub fn check(group: &str, plural: &str, obj: &Value, strict: bool) -> Result<(), String> {
    match (group, plural) {
        ("", "namespaces") => typed::<Namespace>("Namespace", "v1", obj, strict),
        ("", "services") => typed::<Service>("Service", "v1", obj, strict),
        ("", "endpoints") => typed::<Endpoints>("Endpoints", "v1", obj, strict),
        ("", "nodes") => typed::<Node>("Node", "v1", obj, strict),
        ("", "configmaps") => typed::<ConfigMap>("ConfigMap", "v1", obj, strict),
        ("", "secrets") => typed::<Secret>("Secret", "v1", obj, strict),
        ("", "events") => typed::<Event>("Event", "v1", obj, strict),
        ("", "pods") => typed::<Pod>("Pod", "v1", obj, strict),
        ("discovery.k8s.io", "endpointslices") => {
            typed::<EndpointSlice>("EndpointSlice", "discovery.k8s.io/v1", obj, strict)
        }
        ("coordination.k8s.io", "leases") => {
            typed::<Lease>("Lease", "coordination.k8s.io/v1", obj, strict)
        }
        ("events.k8s.io", "events") => {
            typed::<EventsV1Event>("Event", "events.k8s.io/v1", obj, strict)
        }
        _ => Ok(()),
    }
}

fn typed<T: DeserializeOwned + Serialize>(
    kind: &str,
    version: &str,
    obj: &Value,
    strict: bool,
) -> Result<(), String> {
    let refuse =
        |why: String| format!("{kind} in version {version:?} cannot be handled as a {kind}: {why}");
    // apiVersion and kind are the server's to set from the URL; the typed decoders insist on their own values.
    let mut body = obj.clone();
    if let Value::Object(m) = &mut body {
        m.remove("apiVersion");
        m.remove("kind");
    }
    let decoded: T = serde_path_to_error::deserialize(body.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            refuse(inner.to_string())
        } else {
            refuse(format!("{path}: {inner}"))
        }
    })?;
    if strict {
        let known = serde_json::to_value(&decoded).map_err(|e| refuse(e.to_string()))?;
        let mut unknown = Vec::new();
        unknown_fields(&body, &known, String::new(), &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(refuse(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

/// Paths of the fields set in `sent` that the typed round trip `known` dropped: fields the kind does not have.
fn unknown_fields(sent: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (sent, known) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, value) in s {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    _ if value.is_null() => {}
                    None => out.push(here),
                    Some(kv) => unknown_fields(value, kv, here, out),
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (sv, kv)) in s.iter().zip(k).enumerate() {
                unknown_fields(sv, kv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_wrong_type_is_refused_with_its_path() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": 1}});
        let err = check("", "configmaps", &cm, false).unwrap_err();
        assert!(
            err.starts_with(
                "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: data.x: invalid type"
            ),
            "{err}"
        );
        let secret = json!({"metadata": {"name": "s"}, "data": {"password": "not base64!"}});
        assert!(check("", "secrets", &secret, false).is_err());
        let slice = json!({"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": [{"addresses": "x"}]});
        let err = check("discovery.k8s.io", "endpointslices", &slice, false).unwrap_err();
        assert!(
            err.contains("endpoints[0].addresses: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_only_when_strict() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodeport": 30080}], "colour": "blue"}});
        check("", "services", &svc, false).unwrap();
        let err = check("", "services", &svc, true).unwrap_err();
        assert!(err.contains("unknown field \"spec.colour\""), "{err}");
        assert!(
            err.contains("unknown field \"spec.ports[0].nodeport\""),
            "{err}"
        );
        // Nulls, empty maps and every field the kind has pass.
        let good = json!({"metadata": {"name": "web", "labels": {}, "annotations": null},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": "http"}],
                     "ipFamilies": ["IPv4"], "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}});
        check("", "services", &good, true).unwrap();
    }

    #[test]
    fn custom_resources_pass_as_sent() {
        let pool = json!({"spec": {"addresses": 7}});
        check("metallb.io", "ipaddresspools", &pool, true).unwrap();
    }
}
