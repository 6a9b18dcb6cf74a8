//! The metallb.io custom resources, as Rust types, and the CRD manifests generated from them.
//!
//! IronLB reads MetalLB's objects unchanged, so these types mirror MetalLB's schemas field for field, with the same
//! camelCase names. They hold what the user wrote and nothing more: every field is optional where MetalLB's is, and
//! no value is checked here. Meaning and checks belong to [`super::validate()`]; a field we do not act on yet still
//! has to round-trip, so it is modelled here and warned about there.

// Several `printcolumn(...)` groups in one `#[kube]` attribute repeat `type_ = "string"`; clippy reads those as
// duplicated attributes, but each belongs to its own column.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group MetalLB's objects live in.
pub const GROUP: &str = "metallb.io";

/// `IPAddressPool.spec`: a set of addresses the allocator may hand to Services.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "IPAddressPool",
    namespaced,
    status = "IPAddressPoolStatus",
    derive = "PartialEq",
    doc = "IPAddressPool represents a pool of IP addresses that can be allocated to LoadBalancer services.",
    printcolumn(
        name = "Auto Assign",
        type_ = "boolean",
        json_path = ".spec.autoAssign"
    ),
    printcolumn(
        name = "Avoid Buggy IPs",
        type_ = "boolean",
        json_path = ".spec.avoidBuggyIPs"
    ),
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses")
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// CIDR prefixes (`192.0.2.0/24`) or explicit ranges (`198.51.100.1-198.51.100.5`).
    pub addresses: Vec<String>,
    /// Whether the pool serves Services that do not ask for it by name. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub auto_assign: Option<bool>,
    /// Never hand out addresses ending in .0 or .255.
    #[serde(
        rename = "avoidBuggyIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("default" = false))]
    pub avoid_buggy_ips: Option<bool>,
    /// Limits the pool to some namespaces or Services, and orders it among pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocationSpec>,
}

/// `IPAddressPool.spec.serviceAllocation`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocationSpec {
    /// Lower numbers are preferred; pools without a priority come last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selectors: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selectors: Option<Vec<LabelSelector>>,
}

/// `IPAddressPool.status`, which MetalLB's controller fills with usage counters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct IPAddressPoolStatus {
    #[serde(rename = "assignedIPv4")]
    #[schemars(extend("format" = "int64"))]
    pub assigned_ipv4: i64,
    #[serde(rename = "assignedIPv6")]
    #[schemars(extend("format" = "int64"))]
    pub assigned_ipv6: i64,
    #[serde(rename = "availableIPv4")]
    #[schemars(extend("format" = "int64"))]
    pub available_ipv4: i64,
    #[serde(rename = "availableIPv6")]
    #[schemars(extend("format" = "int64"))]
    pub available_ipv6: i64,
}

/// `L2Advertisement.spec`: which pools are announced with ARP/NDP, from which nodes and interfaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "L2Advertisement",
    namespaced,
    status = "L2AdvertisementStatus",
    derive = "PartialEq",
    doc = "L2Advertisement allows to advertise the LoadBalancer IPs provided by the selected pools via L2.",
    printcolumn(
        name = "IPAddressPools",
        type_ = "string",
        json_path = ".spec.ipAddressPools"
    ),
    printcolumn(
        name = "IPAddressPool Selectors",
        type_ = "string",
        json_path = ".spec.ipAddressPoolSelectors"
    ),
    printcolumn(name = "Interfaces", type_ = "string", json_path = ".spec.interfaces"),
    printcolumn(
        name = "Node Selectors",
        type_ = "string",
        json_path = ".spec.nodeSelectors",
        priority = 10
    )
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address_pools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address_pool_selectors: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selectors: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selectors: Option<Vec<LabelSelector>>,
    /// Interfaces to announce from; all of them when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_node_selectors: Option<Vec<PreferredNodeSelector>>,
}

/// A weighted soft preference for announcing nodes, shaped like Kubernetes' `PreferredSchedulingTerm`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PreferredNodeSelector {
    pub preference: LabelSelector,
    #[schemars(range(min = 1, max = 100), extend("format" = "int32"))]
    pub weight: i32,
}

/// `L2Advertisement.status`: empty in MetalLB too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct L2AdvertisementStatus {}

/// `BGPAdvertisement.spec`: which pools are announced over BGP, to which peers, with which attributes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "BGPAdvertisement",
    namespaced,
    status = "BGPAdvertisementStatus",
    derive = "PartialEq",
    doc = "BGPAdvertisement allows to advertise the IPs coming from the selected IPAddressPools via BGP.",
    printcolumn(
        name = "IPAddressPools",
        type_ = "string",
        json_path = ".spec.ipAddressPools"
    ),
    printcolumn(
        name = "IPAddressPool Selectors",
        type_ = "string",
        json_path = ".spec.ipAddressPoolSelectors"
    ),
    printcolumn(name = "Peers", type_ = "string", json_path = ".spec.peers"),
    printcolumn(
        name = "Node Selectors",
        type_ = "string",
        json_path = ".spec.nodeSelectors",
        priority = 10
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// Prefix length IPv4 routes are rolled up to; 32 (no aggregation) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1), extend("default" = 32, "format" = "int32"))]
    pub aggregation_length: Option<i32>,
    /// Prefix length IPv6 routes are rolled up to; 128 when unset.
    #[serde(
        rename = "aggregationLengthV6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("default" = 128, "format" = "int32"))]
    pub aggregation_length_v6: Option<i32>,
    /// LOCAL_PREF for iBGP peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int32"))]
    // MetalLB's schema admits any integer here (int32 with no bounds), so decoding must too; a value that is not a
    // LOCAL_PREF (RFC 4271: unsigned 32 bits) is an error of validation, for this object alone.
    pub local_pref: Option<i64>,
    /// Community values (`AA:NN`, `large:AA:BB:CC`) or names of aliases defined by `Community` objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address_pools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address_pool_selectors: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selectors: Option<Vec<LabelSelector>>,
    /// Names of `BGPPeer` objects to advertise to; all peers when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selectors: Option<Vec<LabelSelector>>,
}

/// `BGPAdvertisement.status`: empty in MetalLB too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BGPAdvertisementStatus {}

/// `Community.spec`: named aliases for community values.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "Community",
    plural = "communities",
    namespaced,
    status = "CommunityStatus",
    derive = "PartialEq",
    doc = "Community is a collection of aliases for communities."
)]
pub struct CommunitySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<Vec<CommunityAlias>>,
}

/// One alias: `name` stands for `value` in `BGPAdvertisement.spec.communities`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CommunityAlias {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `Community.status`: empty in MetalLB too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CommunityStatus {}

/// `BFDProfile.spec`: BFD session parameters, in milliseconds where they are intervals.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "BFDProfile",
    namespaced,
    status = "BFDProfileStatus",
    derive = "PartialEq",
    doc = "BFDProfile represents the settings of the bfd session that can be optionally associated with a BGP session.",
    printcolumn(
        name = "Passive Mode",
        type_ = "boolean",
        json_path = ".spec.passiveMode"
    ),
    printcolumn(
        name = "Transmit Interval",
        type_ = "integer",
        json_path = ".spec.transmitInterval"
    ),
    printcolumn(
        name = "Receive Interval",
        type_ = "integer",
        json_path = ".spec.receiveInterval"
    ),
    printcolumn(
        name = "Multiplier",
        type_ = "integer",
        json_path = ".spec.detectMultiplier"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BFDProfileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255), extend("format" = "int32"))]
    pub detect_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000), extend("format" = "int32"))]
    pub echo_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_mode: Option<bool>,
    #[serde(
        rename = "minimumTtl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 254), extend("format" = "int32"))]
    pub minimum_ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000), extend("format" = "int32"))]
    pub receive_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000), extend("format" = "int32"))]
    pub transmit_interval: Option<u32>,
}

/// `BFDProfile.status`: empty in MetalLB too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BFDProfileStatus {}

/// `BGPPeer.spec` at metallb.io/v1beta2, the storage version: one BGP session per selected node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta2",
    kind = "BGPPeer",
    namespaced,
    status = "BGPPeerStatus",
    derive = "PartialEq",
    doc = "BGPPeer is the Schema for the peers API.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.peerAddress"),
    printcolumn(name = "ASN", type_ = "string", json_path = ".spec.peerASN"),
    printcolumn(name = "BFD Profile", type_ = "string", json_path = ".spec.bfdProfile"),
    printcolumn(
        name = "Multi Hops",
        type_ = "string",
        json_path = ".spec.ebgpMultiHop"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The local AS number; required.
    #[serde(rename = "myASN")]
    #[schemars(range(max = 4294967295u32), extend("format" = "int64"))]
    pub my_asn: u32,
    /// The remote AS number; exactly one of `peerASN` and `dynamicASN` must be set.
    #[serde(rename = "peerASN", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 4294967295u32), extend("format" = "int64"))]
    pub peer_asn: Option<u32>,
    /// `internal` or `external`: accept any remote ASN of that relation.
    #[serde(
        rename = "dynamicASN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("enum" = ["internal", "external"]))]
    pub dynamic_asn: Option<String>,
    /// The AS number announced to this peer instead of `myASN` (FRR's `local-as`).
    #[serde(rename = "localASN", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295u32), extend("format" = "int64"))]
    pub local_asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    /// The node interface for unnumbered BGP; exclusive with `peerAddress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384), extend("default" = 179, "format" = "int32"))]
    pub peer_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    #[serde(rename = "routerID", default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// Go duration string, per RFC 4271 0 or at least 3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<String>,
    /// Go duration string, at most the hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    /// Go duration string: how long to wait between connection attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selectors: Option<Vec<LabelSelector>>,
    /// TCP MD5 password in clear; exclusive with `passwordSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A `kubernetes.io/basic-auth` Secret holding the TCP MD5 password under `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_graceful_restart: Option<bool>,
    #[serde(
        rename = "ebgpMultiHop",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ebgp_multi_hop: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrf: Option<String>,
    /// Deprecated by MetalLB in favour of `dualStackAddressFamily`.
    #[serde(rename = "disableMP", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub disable_mp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub dual_stack_address_family: Option<bool>,
}

/// `BGPPeer.status`: empty in MetalLB too.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BGPPeerStatus {}

/// The deprecated metallb.io/v1beta1 `BGPPeer`, still served by MetalLB and still found in clusters.
pub mod v1beta1 {
    use super::*;

    /// `BGPPeer.spec` at metallb.io/v1beta1: a subset of v1beta2 with a mandatory `peerASN` and `peerAddress`.
    #[derive(
        CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema,
    )]
    #[kube(
        group = "metallb.io",
        version = "v1beta1",
        kind = "BGPPeer",
        namespaced,
        status = "super::BGPPeerStatus",
        derive = "PartialEq",
        storage = false,
        deprecated = "v1beta1 is deprecated, please use v1beta2",
        doc = "BGPPeer is the Schema for the peers API.",
        printcolumn(name = "Address", type_ = "string", json_path = ".spec.peerAddress"),
        printcolumn(name = "ASN", type_ = "string", json_path = ".spec.peerASN"),
        printcolumn(name = "BFD Profile", type_ = "string", json_path = ".spec.bfdProfile"),
        printcolumn(
            name = "Multi Hops",
            type_ = "string",
            json_path = ".spec.ebgpMultiHop"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct BGPPeerSpec {
        #[serde(rename = "myASN")]
        #[schemars(range(max = 4294967295u32), extend("format" = "int64"))]
        pub my_asn: u32,
        #[serde(rename = "peerASN")]
        #[schemars(range(max = 4294967295u32), extend("format" = "int64"))]
        pub peer_asn: u32,
        pub peer_address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(max = 16384), extend("format" = "int32"))]
        pub peer_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source_address: Option<String>,
        #[serde(rename = "routerID", default, skip_serializing_if = "Option::is_none")]
        pub router_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub hold_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub keepalive_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node_selectors: Option<Vec<LabelSelector>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bfd_profile: Option<String>,
        #[serde(
            rename = "ebgpMultiHop",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub ebgp_multi_hop: Option<bool>,
    }

    impl From<BGPPeer> for super::BGPPeer {
        /// The same conversion MetalLB's webhook makes: every v1beta1 field has a v1beta2 field of the same name.
        fn from(old: BGPPeer) -> super::BGPPeer {
            let s = old.spec;
            super::BGPPeer {
                metadata: old.metadata,
                spec: super::BGPPeerSpec {
                    my_asn: s.my_asn,
                    peer_asn: Some(s.peer_asn),
                    peer_address: Some(s.peer_address),
                    peer_port: s.peer_port,
                    source_address: s.source_address,
                    router_id: s.router_id,
                    hold_time: s.hold_time,
                    keepalive_time: s.keepalive_time,
                    node_selectors: s.node_selectors,
                    password: s.password,
                    bfd_profile: s.bfd_profile,
                    ebgp_multi_hop: s.ebgp_multi_hop,
                    ..Default::default()
                },
                status: old.status,
            }
        }
    }
}

/// Empty: the status says which node announces a Service in Layer 2 mode, and on which interfaces. Each agent writes
/// one object per Service it announces, as MetalLB's speaker does.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ServiceL2Status",
    namespaced,
    status = "MetalLBServiceL2Status",
    derive = "PartialEq",
    doc = "ServiceL2Status reveals the actual traffic status of loadbalancer services in layer2 mode.",
    printcolumn(name = "Allocated Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Service Name",
        type_ = "string",
        json_path = ".status.serviceName"
    ),
    printcolumn(
        name = "Service Namespace",
        type_ = "string",
        json_path = ".status.serviceNamespace"
    )
)]
pub struct ServiceL2StatusSpec {}

/// Which node announces the Service, and on which interfaces.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetalLBServiceL2Status {
    /// The node announcing the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"message": "Value is immutable", "rule": "self == oldSelf"}]))]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"message": "Value is immutable", "rule": "self == oldSelf"}]))]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"message": "Value is immutable", "rule": "self == oldSelf"}]))]
    pub service_namespace: Option<String>,
    /// The interfaces the node answers ARP/NDP on for the Service's VIPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<InterfaceInfo>>,
}

/// One interface of a ServiceL2Status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct InterfaceInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Empty: the status says which node advertises a Service over BGP, and to which BGPPeers. Each agent writes one
/// object per Service it advertises, as MetalLB's speaker does.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ServiceBGPStatus",
    namespaced,
    status = "MetalLBServiceBGPStatus",
    derive = "PartialEq",
    doc = "ServiceBGPStatus exposes the BGP peers a service is configured to be advertised to, per relevant node.",
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Service Name",
        type_ = "string",
        json_path = ".status.serviceName"
    ),
    printcolumn(
        name = "Service Namespace",
        type_ = "string",
        json_path = ".status.serviceNamespace"
    )
)]
pub struct ServiceBGPStatusSpec {}

/// Which node advertises the Service, and to which BGPPeers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetalLBServiceBGPStatus {
    /// The node advertising the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"message": "Value is immutable", "rule": "self == oldSelf"}]))]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"message": "Value is immutable", "rule": "self == oldSelf"}]))]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"message": "Value is immutable", "rule": "self == oldSelf"}]))]
    pub service_namespace: Option<String>,
    /// The BGPPeers the Service is advertised to from the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
}

/// Empty: the status says whether an agent accepted the configuration. Each agent writes one, named
/// `speaker-<node>`, as MetalLB's speakers do.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metallb.io",
    version = "v1beta1",
    kind = "ConfigurationState",
    namespaced,
    status = "ConfigurationStateStatus",
    derive = "PartialEq",
    doc = "ConfigurationState is a status-only CRD that reports configuration validation results from MetalLB \
           components.",
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result"),
    printcolumn(
        name = "ErrorSummary",
        type_ = "string",
        json_path = ".status.errorSummary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ConfigurationStateSpec {}

/// Whether the agent accepted the configuration: `Valid`, `Invalid` (some objects are left out; `errorSummary` names
/// them) or `Unknown`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Valid", "Invalid", "Unknown"]))]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
}

/// Why the CRD manifests could not be built. Only a programming error in this module can cause one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot merge the BGPPeer versions")]
    Merge(#[source] kube::core::crd::MergeError),
    #[error("cannot serialize a CRD to YAML")]
    Yaml(#[source] serde_yaml::Error),
}

/// Every CRD IronLB reads, in a stable order, BGPPeer carrying both versions with v1beta2 stored.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, Error> {
    let peer =
        kube::core::crd::merge_crds(vec![v1beta1::BGPPeer::crd(), BGPPeer::crd()], "v1beta2")
            .map_err(Error::Merge)?;
    let mut crds = vec![
        BFDProfile::crd(),
        BGPAdvertisement::crd(),
        peer,
        Community::crd(),
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        ServiceL2Status::crd(),
        ServiceBGPStatus::crd(),
        ConfigurationState::crd(),
    ];
    for crd in &mut crds {
        let spec_required = crd.spec.names.kind == "IPAddressPool";
        for version in &mut crd.spec.versions {
            let Some(root) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            else {
                continue;
            };
            // kube-derive makes `spec` mandatory, but MetalLB lets an advertisement or peer omit it (its samples
            // include `L2Advertisement` objects with no spec at all), so only the pool keeps it required.
            if !spec_required {
                root.required = None;
            }
            // The API server validates these three itself, and kube-derive leaves them out; MetalLB's schemas
            // list them, and stating them keeps `kubectl explain` identical.
            let properties = root.properties.get_or_insert_with(Default::default);
            for (name, type_) in [
                ("apiVersion", "string"),
                ("kind", "string"),
                ("metadata", "object"),
            ] {
                properties
                    .entry(name.to_string())
                    .or_insert_with(|| JSONSchemaProps {
                        type_: Some(type_.to_string()),
                        ..Default::default()
                    });
            }
        }
    }
    Ok(crds)
}

/// The multi-document YAML of [`crds`], as checked in at `deploy/crds/metallb.io.yaml`.
///
/// The CRDs come from compile-time types, so a failure here is a bug in this module, caught by its tests; it
/// never depends on input.
pub fn crd_manifests() -> String {
    try_crd_manifests().expect("the CRDs generated from IronLB's own types always serialize")
}

/// [`crd_manifests`], with the (impossible in practice) failure returned instead.
pub fn try_crd_manifests() -> Result<String, Error> {
    let mut out = String::from(
        "# Generated by IronLB from its Rust types (src/config/crd.rs). Do not edit.\n\
         # Regenerate with: IRONLB_BLESS=1 cargo test --test crds\n",
    );
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).map_err(Error::Yaml)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgppeer_crd_serves_both_versions_and_stores_v1beta2() {
        let peer = crds()
            .unwrap()
            .into_iter()
            .find(|c| c.spec.names.kind == "BGPPeer")
            .unwrap();
        let versions: Vec<_> = peer
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage, v.deprecated))
            .collect();
        assert!(versions.contains(&("v1beta1", true, false, Some(true))));
        assert!(versions.contains(&("v1beta2", true, true, None)));
    }

    #[test]
    fn only_the_pool_requires_a_spec() {
        for crd in crds().unwrap() {
            let root = crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            let requires_spec = root
                .required
                .as_ref()
                .is_some_and(|r| r.iter().any(|f| f == "spec"));
            assert_eq!(
                requires_spec,
                crd.spec.names.kind == "IPAddressPool",
                "{}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn v1beta1_peer_converts_field_by_field() {
        let old: v1beta1::BGPPeer = serde_json::from_value(serde_json::json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BGPPeer",
            "metadata": {"name": "old", "namespace": "metallb-system"},
            "spec": {"myASN": 64500, "peerASN": 64501, "peerAddress": "203.0.113.254", "holdTime": "90s",
                     "ebgpMultiHop": true, "routerID": "1.2.3.4"}
        }))
        .unwrap();
        let new = BGPPeer::from(old);
        assert_eq!(new.metadata.name.as_deref(), Some("old"));
        assert_eq!(new.spec.peer_asn, Some(64501));
        assert_eq!(new.spec.peer_address.as_deref(), Some("203.0.113.254"));
        assert_eq!(new.spec.hold_time.as_deref(), Some("90s"));
        assert_eq!(new.spec.ebgp_multi_hop, Some(true));
        assert_eq!(new.spec.router_id.as_deref(), Some("1.2.3.4"));
        assert_eq!(new.spec.dynamic_asn, None);
    }
}
