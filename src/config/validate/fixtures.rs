//! Builders of metallb.io objects and matchers of diagnostics, shared by the validation unit tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use super::{Diagnostic, validate};
use crate::config::crd::{
    self, BGPAdvertisementSpec, BGPPeerSpec, CommunityAlias, CommunitySpec, IPAddressPoolSpec,
    L2AdvertisementSpec,
};
use crate::config::load::Sources;

pub(super) fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("metallb-system".into()),
        ..Default::default()
    }
}

pub(super) fn pool(name: &str, addresses: &[&str]) -> crd::IPAddressPool {
    crd::IPAddressPool {
        metadata: meta(name),
        spec: IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
        status: None,
    }
}

pub(super) fn labelled(mut p: crd::IPAddressPool, k: &str, v: &str) -> crd::IPAddressPool {
    p.metadata.labels = Some([(k.to_string(), v.to_string())].into());
    p
}

pub(super) fn l2(name: &str, pools: &[&str]) -> crd::L2Advertisement {
    crd::L2Advertisement {
        metadata: meta(name),
        spec: L2AdvertisementSpec {
            ip_address_pools: (!pools.is_empty())
                .then(|| pools.iter().map(|p| p.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    }
}

pub(super) fn bgp_adv(name: &str, spec: BGPAdvertisementSpec) -> crd::BGPAdvertisement {
    crd::BGPAdvertisement {
        metadata: meta(name),
        spec,
        status: None,
    }
}

pub(super) fn peer(name: &str) -> crd::BGPPeer {
    crd::BGPPeer {
        metadata: meta(name),
        spec: BGPPeerSpec {
            my_asn: 64500,
            peer_asn: Some(64501),
            peer_address: Some("203.0.113.254".into()),
            ..Default::default()
        },
        status: None,
    }
}

pub(super) fn with(f: impl FnOnce(&mut BGPPeerSpec)) -> crd::BGPPeer {
    let mut p = peer("p");
    f(&mut p.spec);
    p
}

pub(super) fn community(name: &str, aliases: &[(&str, &str)]) -> crd::Community {
    crd::Community {
        metadata: meta(name),
        spec: CommunitySpec {
            communities: Some(
                aliases
                    .iter()
                    .map(|(n, v)| CommunityAlias {
                        name: Some(n.to_string()),
                        value: Some(v.to_string()),
                    })
                    .collect(),
            ),
        },
        status: None,
    }
}

pub(super) fn bad_selector() -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "k".into(),
            operator: "Equals".into(),
            values: None,
        }]),
        ..Default::default()
    }
}

/// The diagnostics as `Kind/name: field: message` lines.
pub(super) fn lines(d: &[Diagnostic]) -> Vec<String> {
    d.iter().map(ToString::to_string).collect()
}

pub(super) fn has(d: &[Diagnostic], kind: &str, name: &str, field: &str, needle: &str) -> bool {
    d.iter()
        .any(|d| d.kind == kind && d.name == name && d.field == field && d.message.contains(needle))
}

pub(super) fn peer_errors(p: crd::BGPPeer) -> Vec<Diagnostic> {
    let v = validate(&Sources {
        peers: vec![p],
        ..Default::default()
    });
    assert_eq!(v.config.peers.is_empty(), !v.errors.is_empty());
    v.errors
}
