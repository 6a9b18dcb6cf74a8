//! Request bodies in Kubernetes' protobuf encoding, which kubectl's typed commands send for built-in kinds
//! (`kubectl create namespace`, `create service`, `create configmap`, `create secret`).
//!
//! The wire format is a four-byte magic `k8s\0`, then a `runtime.Unknown` envelope naming the kind and holding the
//! object's own protobuf bytes. kube-rs's `k8s-pb` crate decodes both; this module turns the decoded object into
//! the JSON the rest of the lab API stores, through k8s-openapi's types so every field keeps its JSON form (byte
//! strings in base64, `IntOrString` as a number or a string). Only the kinds above are decoded; any other kind gets
//! a 415 that names it and says to send JSON (`kubectl apply -f`), which every client can do.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1 as api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;

/// The media type kubectl and client-go use for protobuf.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The prefix of every protobuf-encoded object.
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body was not turned into an object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The body is not protobuf as Kubernetes frames it (400).
    #[error("request body is not a Kubernetes protobuf object: {0}")]
    Malformed(String),
    /// A well-formed body of a kind this server does not decode (415).
    #[error(
        "the lab API server decodes protobuf only for Namespace, Service, ConfigMap and Secret, not {api_version} \
         {kind}; send it as JSON (kubectl apply -f or create -f)"
    )]
    UnsupportedKind { api_version: String, kind: String },
}

/// Whether a `Content-Type` header value is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Decodes a protobuf request body into the object's JSON form, with `apiVersion` and `kind` set.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let framed = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Error::Malformed("it does not start with the k8s\\0 magic".into()))?;
    let unknown = Unknown::decode(framed).map_err(|e| Error::Malformed(e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if let Some(encoding) = text(unknown.content_encoding) {
        return Err(Error::Malformed(format!(
            "content encoding {encoding:?} is not supported"
        )));
    }
    let raw = unknown.raw.unwrap_or_default();
    let malformed = |e: prost::DecodeError| Error::Malformed(format!("{kind}: {e}"));
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => to_json(namespace(
            pb::Namespace::decode(raw.as_slice()).map_err(malformed)?,
        )),
        ("v1", "Service") => to_json(service(
            pb::Service::decode(raw.as_slice()).map_err(malformed)?,
        )),
        ("v1", "ConfigMap") => to_json(config_map(
            pb::ConfigMap::decode(raw.as_slice()).map_err(malformed)?,
        )),
        ("v1", "Secret") => to_json(secret(
            pb::Secret::decode(raw.as_slice()).map_err(malformed)?,
        )),
        _ => return Err(Error::UnsupportedKind { api_version, kind }),
    };
    let mut object = object.map_err(|e| Error::Malformed(format!("{kind}: {e}")))?;
    object["apiVersion"] = api_version.into();
    object["kind"] = kind.into();
    Ok(object)
}

fn to_json(object: impl serde::Serialize) -> serde_json::Result<Value> {
    serde_json::to_value(object)
}

/// `Some` unless empty: Go's protobuf encoding writes every plain string field, so an empty one means unset.
fn text(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `Some` unless empty: protobuf cannot tell an empty list or map from a missing one, and JSON clients omit both.
fn non_empty<T: IsEmpty>(value: T) -> Option<T> {
    (!value.is_empty()).then_some(value)
}

trait IsEmpty {
    fn is_empty(&self) -> bool;
}

impl<T> IsEmpty for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

impl<K, V> IsEmpty for BTreeMap<K, V> {
    fn is_empty(&self) -> bool {
        BTreeMap::is_empty(self)
    }
}

fn object_meta(m: Option<pb_meta::ObjectMeta>) -> meta::ObjectMeta {
    let m = m.unwrap_or_default();
    meta::ObjectMeta {
        name: text(m.name),
        generate_name: text(m.generate_name),
        namespace: text(m.namespace),
        resource_version: text(m.resource_version),
        labels: non_empty(m.labels),
        annotations: non_empty(m.annotations),
        finalizers: non_empty(m.finalizers),
        owner_references: non_empty(
            m.owner_references
                .into_iter()
                .map(|o| meta::OwnerReference {
                    api_version: o.api_version.unwrap_or_default(),
                    kind: o.kind.unwrap_or_default(),
                    name: o.name.unwrap_or_default(),
                    uid: o.uid.unwrap_or_default(),
                    controller: o.controller,
                    block_owner_deletion: o.block_owner_deletion,
                })
                .collect(),
        ),
        ..meta::ObjectMeta::default()
    }
}

fn namespace(ns: pb::Namespace) -> api::Namespace {
    api::Namespace {
        metadata: object_meta(ns.metadata),
        spec: ns.spec.map(|s| api::NamespaceSpec {
            finalizers: non_empty(s.finalizers),
        }),
        status: None,
    }
}

fn int_or_string(v: k8s_pb::apimachinery::pkg::util::intstr::IntOrString) -> IntOrString {
    // type 1 is a string, 0 (or absent) an int, as in k8s.io/apimachinery/pkg/util/intstr.
    match v.r#type {
        Some(1) => IntOrString::String(v.str_val.unwrap_or_default()),
        _ => IntOrString::Int(v.int_val.unwrap_or_default()),
    }
}

fn service(svc: pb::Service) -> api::Service {
    let spec = svc.spec.map(|s| api::ServiceSpec {
        ports: non_empty(
            s.ports
                .into_iter()
                .map(|p| api::ServicePort {
                    name: text(p.name),
                    protocol: text(p.protocol),
                    app_protocol: text(p.app_protocol),
                    port: p.port.unwrap_or_default(),
                    target_port: p.target_port.map(int_or_string),
                    node_port: p.node_port.filter(|&n| n != 0),
                })
                .collect(),
        ),
        selector: non_empty(s.selector),
        cluster_ip: text(s.cluster_ip),
        cluster_ips: non_empty(s.cluster_ips),
        type_: text(s.r#type),
        external_ips: non_empty(s.external_ips),
        session_affinity: text(s.session_affinity),
        load_balancer_ip: text(s.load_balancer_ip),
        load_balancer_source_ranges: non_empty(s.load_balancer_source_ranges),
        external_name: text(s.external_name),
        external_traffic_policy: text(s.external_traffic_policy),
        health_check_node_port: s.health_check_node_port.filter(|&n| n != 0),
        // A plain bool in Go, so always encoded: false means unset.
        publish_not_ready_addresses: s.publish_not_ready_addresses.filter(|&p| p),
        session_affinity_config: s
            .session_affinity_config
            .map(|c| api::SessionAffinityConfig {
                client_ip: c.client_ip.map(|ip| api::ClientIPConfig {
                    timeout_seconds: ip.timeout_seconds,
                }),
            }),
        ip_families: non_empty(s.ip_families),
        ip_family_policy: text(s.ip_family_policy),
        allocate_load_balancer_node_ports: s.allocate_load_balancer_node_ports,
        load_balancer_class: text(s.load_balancer_class),
        internal_traffic_policy: text(s.internal_traffic_policy),
        traffic_distribution: text(s.traffic_distribution),
    });
    // Status is the server's on create and goes through the status subresource after; it is not decoded.
    api::Service {
        metadata: object_meta(svc.metadata),
        spec,
        status: None,
    }
}

fn config_map(cm: pb::ConfigMap) -> api::ConfigMap {
    api::ConfigMap {
        metadata: object_meta(cm.metadata),
        immutable: cm.immutable,
        data: non_empty(cm.data),
        binary_data: non_empty(
            cm.binary_data
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
    }
}

fn secret(s: pb::Secret) -> api::Secret {
    api::Secret {
        metadata: object_meta(s.metadata),
        immutable: s.immutable,
        data: non_empty(
            s.data
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        string_data: non_empty(s.string_data),
        type_: text(s.r#type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Frames an object as client-go does: magic, then the envelope naming the kind.
    fn frame(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let envelope = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(envelope.encode_to_vec());
        out
    }

    fn meta(name: &str) -> Option<pb_meta::ObjectMeta> {
        Some(pb_meta::ObjectMeta {
            name: Some(name.into()),
            labels: [("app".to_owned(), name.to_owned())].into(),
            ..Default::default()
        })
    }

    #[test]
    fn service_as_kubectl_create_service_sends_it() {
        let svc = pb::Service {
            metadata: meta("web"),
            spec: Some(pb::ServiceSpec {
                ports: vec![pb::ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: Some(String::new()),
                    }),
                    ..Default::default()
                }],
                selector: [("app".to_owned(), "web".to_owned())].into(),
                r#type: Some("LoadBalancer".into()),
                cluster_ip: Some(String::new()),
                ..Default::default()
            }),
            status: Some(pb::ServiceStatus::default()),
        };
        let got = decode(&frame("v1", "Service", svc.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"app": "web"},
                    "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                },
            })
        );
    }

    #[test]
    fn named_target_ports_and_secret_bytes_keep_their_json_forms() {
        let svc = pb::Service {
            metadata: meta("named"),
            spec: Some(pb::ServiceSpec {
                ports: vec![pb::ServicePort {
                    port: Some(443),
                    target_port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("https".into()),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let got = decode(&frame("v1", "Service", svc.encode_to_vec())).unwrap();
        assert_eq!(got["spec"]["ports"][0]["targetPort"], "https");

        let secret = pb::Secret {
            metadata: meta("s"),
            data: [("password".to_owned(), b"hunter2".to_vec())].into(),
            r#type: Some("kubernetes.io/basic-auth".into()),
            ..Default::default()
        };
        let got = decode(&frame("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(got["data"]["password"], "aHVudGVyMg==");
        assert_eq!(got["type"], "kubernetes.io/basic-auth");
    }

    #[test]
    fn namespace_and_config_map() {
        let ns = pb::Namespace {
            metadata: meta("team-a"),
            ..Default::default()
        };
        let got = decode(&frame("v1", "Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(got["metadata"]["name"], "team-a");
        assert_eq!(got["kind"], "Namespace");

        let cm = pb::ConfigMap {
            metadata: meta("c"),
            data: [("a".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        };
        let got = decode(&frame("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(got["data"], json!({"a": "b"}));
    }

    #[test]
    fn other_kinds_and_garbage_are_refused_with_what_they_are() {
        let err = decode(&frame("apps/v1", "Deployment", vec![])).unwrap_err();
        assert_eq!(
            err,
            Error::UnsupportedKind {
                api_version: "apps/v1".into(),
                kind: "Deployment".into()
            }
        );
        assert!(err.to_string().contains("apps/v1 Deployment"), "{err}");
        assert!(matches!(
            decode(b"{\"kind\":\"Service\"}"),
            Err(Error::Malformed(_))
        ));
        // The magic, then bytes that are no envelope.
        assert!(matches!(
            decode(b"k8s\0\xff\xff\xff"),
            Err(Error::Malformed(_))
        ));
        // A valid envelope around bytes that are no Service.
        assert!(matches!(
            decode(&frame("v1", "Service", vec![0x0a, 0xff])),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn content_type_match_ignores_parameters_and_case() {
        assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
        assert!(is_protobuf(
            "Application/VND.kubernetes.protobuf; charset=binary"
        ));
        assert!(!is_protobuf("application/json"));
        assert!(!is_protobuf("application/vnd.kubernetes.protobuf+json"));
    }
}
