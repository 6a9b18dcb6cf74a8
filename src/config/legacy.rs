//! The pre-0.13 MetalLB ConfigMap (`metallb-system/config`, key `config`) and its conversion into metallb.io objects.
//!
//! Old clusters and most tutorials still configure MetalLB this way. IronLB reads such a ConfigMap as a live source by
//! converting it with [`convert`] and validating the result like any CRDs, and `ironlb migrate` prints the same
//! conversion as YAML. The conversion follows MetalLB's own converter, so that users get the objects they would get
//! from it: peers become `peer1`, `peer2`…, per-pool BGP settings become `bgpadvertisement1`…, every `layer2` pool
//! gets an `l2advertisement<N>`, all community aliases go into one `Community` named `communities`, and names that
//! are not valid Kubernetes names are rewritten. Values are carried over as written; checking them is validation's
//! job, so a bad value is reported on the object it ends up in.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use serde::Deserialize;

use super::crd::{
    BFDProfile, BFDProfileSpec, BFDProfileStatus, BGPAdvertisement, BGPAdvertisementSpec,
    BGPAdvertisementStatus, BGPPeer, BGPPeerSpec, BGPPeerStatus, Community, CommunityAlias,
    CommunitySpec, CommunityStatus, IPAddressPool, IPAddressPoolSpec, IPAddressPoolStatus,
    L2Advertisement, L2AdvertisementSpec, L2AdvertisementStatus,
};
use super::duration;

/// Why a ConfigMap or payload cannot be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not valid YAML")]
    Yaml(#[source] serde_yaml::Error),
    #[error("the ConfigMap has no `config` key in `data`")]
    NoConfigKey,
    #[error("{kind} name {name:?} has no letter, so it cannot be made a Kubernetes name")]
    Unnameable { kind: &'static str, name: String },
    #[error("cannot serialize the converted objects")]
    Serialize(#[source] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `config` payload of the legacy ConfigMap. Keys we do not know are ignored, as MetalLB ignored them.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LegacyConfig {
    #[serde(default)]
    pub peers: Vec<LegacyPeer>,
    #[serde(default)]
    pub bgp_communities: BTreeMap<String, String>,
    #[serde(default)]
    pub address_pools: Vec<LegacyPool>,
    #[serde(default)]
    pub bfd_profiles: Vec<LegacyBfdProfile>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LegacyPeer {
    #[serde(default)]
    pub my_asn: u32,
    #[serde(default)]
    pub peer_asn: u32,
    #[serde(default)]
    pub peer_address: String,
    #[serde(default)]
    pub source_address: String,
    #[serde(default)]
    pub peer_port: u16,
    #[serde(default)]
    pub hold_time: String,
    #[serde(default)]
    pub keepalive_time: String,
    #[serde(default)]
    pub router_id: String,
    #[serde(default)]
    pub node_selectors: Vec<LegacyNodeSelector>,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub bfd_profile: String,
    #[serde(default)]
    pub ebgp_multihop: bool,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LegacyNodeSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LegacyRequirement>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LegacyRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LegacyPool {
    pub name: String,
    /// `bgp` or `layer2`; anything else gets no advertisement, as in MetalLB's converter.
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    pub auto_assign: Option<bool>,
    pub avoid_buggy_ips: Option<bool>,
    #[serde(default)]
    pub bgp_advertisements: Vec<LegacyBgpAdvertisement>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LegacyBgpAdvertisement {
    pub aggregation_length: Option<i32>,
    pub aggregation_length_v6: Option<i32>,
    #[serde(default, rename = "localpref")]
    pub local_pref: u32,
    #[serde(default)]
    pub communities: Vec<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LegacyBfdProfile {
    pub name: String,
    pub receive_interval: Option<u32>,
    pub transmit_interval: Option<u32>,
    pub detect_multiplier: Option<u32>,
    pub echo_interval: Option<u32>,
    #[serde(default)]
    pub echo_mode: bool,
    #[serde(default)]
    pub passive_mode: bool,
    pub minimum_ttl: Option<u32>,
}

/// The objects a legacy config converts to, plus notes on what the conversion changed or dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Migration {
    pub peers: Vec<BGPPeer>,
    pub pools: Vec<IPAddressPool>,
    pub bgp_advertisements: Vec<BGPAdvertisement>,
    pub l2_advertisements: Vec<L2Advertisement>,
    pub bfd_profiles: Vec<BFDProfile>,
    pub communities: Vec<Community>,
    /// Human-readable remarks, such as renamed objects or pools whose protocol is unknown.
    pub notes: Vec<String>,
}

impl Migration {
    /// The objects as JSON values, in the order MetalLB's converter writes them.
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        let mut push = |v: serde_json::Result<serde_json::Value>| -> Result<()> {
            out.push(v.map_err(Error::Serialize)?);
            Ok(())
        };
        for o in &self.peers {
            push(serde_json::to_value(o))?;
        }
        for o in &self.pools {
            push(serde_json::to_value(o))?;
        }
        for o in &self.bgp_advertisements {
            push(serde_json::to_value(o))?;
        }
        for o in &self.l2_advertisements {
            push(serde_json::to_value(o))?;
        }
        for o in &self.bfd_profiles {
            push(serde_json::to_value(o))?;
        }
        for o in &self.communities {
            push(serde_json::to_value(o))?;
        }
        Ok(out)
    }
}

/// Where the payload came from: the ConfigMap's own namespace, if it is a whole object.
struct Payload {
    text: String,
    namespace: Option<String>,
}

/// Accepts either the bare `config` payload or a whole `v1/ConfigMap` object holding it under `data.config`.
fn payload(input: &str) -> Result<Payload> {
    let value: serde_yaml::Value = serde_yaml::from_str(input).map_err(Error::Yaml)?;
    let is_configmap = value.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap");
    if !is_configmap {
        return Ok(Payload {
            text: input.to_string(),
            namespace: None,
        });
    }
    let text = value
        .get("data")
        .and_then(|d| d.get("config"))
        .and_then(|c| c.as_str())
        .filter(|c| !c.trim().is_empty())
        .ok_or(Error::NoConfigKey)?;
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    Ok(Payload {
        text: text.to_string(),
        namespace,
    })
}

/// Parses the legacy payload text itself (the value of the `config` key).
pub fn parse_payload(text: &str) -> Result<LegacyConfig> {
    if text.trim().is_empty() {
        return Ok(LegacyConfig::default());
    }
    serde_yaml::from_str(text).map_err(Error::Yaml)
}

/// Converts a legacy ConfigMap object or bare payload into metallb.io objects.
///
/// The objects go into `namespace`, unless the input is a whole ConfigMap with a namespace of its own: MetalLB's
/// converter puts them beside their ConfigMap, and so do we.
pub fn convert(input: &str, namespace: &str) -> Result<Migration> {
    let payload = payload(input)?;
    let config = parse_payload(&payload.text)?;
    let namespace = payload.namespace.as_deref().unwrap_or(namespace);
    convert_config(&config, namespace)
}

/// Converts an already parsed payload into metallb.io objects in `namespace`.
pub fn convert_config(config: &LegacyConfig, namespace: &str) -> Result<Migration> {
    let mut m = Migration::default();
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        ..Default::default()
    };

    let mut pool_names = Vec::with_capacity(config.address_pools.len());
    for pool in &config.address_pools {
        let name = kubernetes_name(&pool.name, "address pool", &mut m.notes)?;
        pool_names.push(name);
    }

    for (i, peer) in config.peers.iter().enumerate() {
        let bfd_profile = if peer.bfd_profile.is_empty() {
            None
        } else {
            Some(kubernetes_name(
                &peer.bfd_profile,
                "BFD profile",
                &mut m.notes,
            )?)
        };
        let spec = BGPPeerSpec {
            my_asn: peer.my_asn,
            peer_asn: Some(peer.peer_asn),
            peer_address: Some(peer.peer_address.clone()),
            source_address: non_empty(&peer.source_address),
            peer_port: (peer.peer_port != 0).then_some(peer.peer_port),
            // MetalLB's converter always writes a hold time, 90s when none was given, rounded to whole seconds.
            hold_time: Some(legacy_timer(&peer.hold_time, Duration::from_secs(90))),
            keepalive_time: (!peer.keepalive_time.is_empty())
                .then(|| legacy_timer(&peer.keepalive_time, Duration::ZERO)),
            router_id: non_empty(&peer.router_id),
            node_selectors: (!peer.node_selectors.is_empty())
                .then(|| peer.node_selectors.iter().map(label_selector).collect()),
            password: non_empty(&peer.password),
            // Always written, empty, by MetalLB's converter; kept so the output matches it.
            password_secret: Some(SecretReference::default()),
            bfd_profile,
            ebgp_multi_hop: peer.ebgp_multihop.then_some(true),
            ..Default::default()
        };
        m.peers.push(BGPPeer {
            metadata: meta(format!("peer{}", i + 1)),
            spec,
            status: Some(BGPPeerStatus {}),
        });
    }

    for (pool, name) in config.address_pools.iter().zip(&pool_names) {
        m.pools.push(IPAddressPool {
            metadata: meta(name.clone()),
            spec: IPAddressPoolSpec {
                addresses: pool.addresses.clone(),
                auto_assign: pool.auto_assign,
                avoid_buggy_ips: (pool.avoid_buggy_ips == Some(true)).then_some(true),
                service_allocation: None,
            },
            status: Some(IPAddressPoolStatus::default()),
        });
    }

    let mut index = 1;
    for (pool, name) in config.address_pools.iter().zip(&pool_names) {
        let mut push = |spec: BGPAdvertisementSpec| {
            m.bgp_advertisements.push(BGPAdvertisement {
                metadata: meta(format!("bgpadvertisement{index}")),
                spec,
                status: Some(BGPAdvertisementStatus {}),
            });
            index += 1;
        };
        for adv in &pool.bgp_advertisements {
            push(BGPAdvertisementSpec {
                aggregation_length: adv.aggregation_length,
                aggregation_length_v6: adv.aggregation_length_v6,
                local_pref: (adv.local_pref != 0).then_some(i64::from(adv.local_pref)),
                communities: (!adv.communities.is_empty()).then(|| adv.communities.clone()),
                ip_address_pools: Some(vec![name.clone()]),
                ..Default::default()
            });
        }
        if pool.bgp_advertisements.is_empty() && pool.protocol == "bgp" {
            push(BGPAdvertisementSpec {
                ip_address_pools: Some(vec![name.clone()]),
                ..Default::default()
            });
        }
    }

    let mut l2_index = 1;
    for (pool, name) in config.address_pools.iter().zip(&pool_names) {
        match pool.protocol.as_str() {
            "layer2" => {
                m.l2_advertisements.push(L2Advertisement {
                    metadata: meta(format!("l2advertisement{l2_index}")),
                    spec: L2AdvertisementSpec {
                        ip_address_pools: Some(vec![name.clone()]),
                        ..Default::default()
                    },
                    status: Some(L2AdvertisementStatus {}),
                });
                l2_index += 1;
            }
            "bgp" => {}
            other => m.notes.push(format!(
                "address pool {:?} has protocol {other:?}, which is neither \"bgp\" nor \"layer2\": it gets no \
                 advertisement, so its addresses are allocated but not announced",
                pool.name
            )),
        }
    }

    for profile in &config.bfd_profiles {
        m.bfd_profiles.push(BFDProfile {
            metadata: meta(kubernetes_name(&profile.name, "BFD profile", &mut m.notes)?),
            spec: BFDProfileSpec {
                receive_interval: profile.receive_interval,
                transmit_interval: profile.transmit_interval,
                detect_multiplier: profile.detect_multiplier,
                echo_interval: profile.echo_interval,
                echo_mode: Some(profile.echo_mode),
                passive_mode: Some(profile.passive_mode),
                minimum_ttl: profile.minimum_ttl,
            },
            status: Some(BFDProfileStatus {}),
        });
    }

    if !config.bgp_communities.is_empty() {
        // A BTreeMap iterates sorted by alias, which is the stable order MetalLB's converter writes.
        let aliases = config
            .bgp_communities
            .iter()
            .map(|(name, value)| CommunityAlias {
                name: Some(name.clone()),
                value: Some(value.clone()),
            })
            .collect();
        m.communities.push(Community {
            metadata: meta("communities".to_string()),
            spec: CommunitySpec {
                communities: Some(aliases),
            },
            status: Some(CommunityStatus {}),
        });
    }
    Ok(m)
}

/// Converts legacy input into the metallb.io objects as JSON values, in MetalLB's converter's order.
pub fn migrate(input: &str, namespace: &str) -> Result<Vec<serde_json::Value>> {
    convert(input, namespace)?.to_values()
}

/// Converts legacy input into multi-document metallb.io YAML, ready for `kubectl apply -f`.
pub fn migrate_to_yaml(input: &str, namespace: &str) -> Result<String> {
    let migration = convert(input, namespace)?;
    to_yaml(&migration)
}

/// Renders a migration as YAML, with its notes as leading comments.
pub fn to_yaml(migration: &Migration) -> Result<String> {
    let mut out =
        String::from("# Converted from the legacy MetalLB ConfigMap by ironlb migrate.\n");
    for note in &migration.notes {
        out.push_str(&format!("# note: {note}\n"));
    }
    for value in migration.to_values()? {
        out.push_str("---\n");
        let yaml = serde_yaml::to_string(&value).map_err(Error::Yaml)?;
        out.push_str(&yaml);
    }
    Ok(out)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A legacy timer as MetalLB's converter writes it: rounded down to whole seconds, in Go's notation. A value that
/// does not parse is kept as written, so that validation reports it on the peer.
fn legacy_timer(text: &str, default: Duration) -> String {
    if text.is_empty() {
        return duration::format(default);
    }
    match duration::parse(text) {
        Ok(d) => duration::format(Duration::from_secs(d.as_secs())),
        Err(_) => text.to_string(),
    }
}

fn label_selector(sel: &LegacyNodeSelector) -> LabelSelector {
    LabelSelector {
        match_labels: (!sel.match_labels.is_empty()).then(|| sel.match_labels.clone()),
        match_expressions: (!sel.match_expressions.is_empty()).then(|| {
            sel.match_expressions
                .iter()
                .map(|e| LabelSelectorRequirement {
                    key: e.key.clone(),
                    operator: e.operator.clone(),
                    values: (!e.values.is_empty()).then(|| e.values.clone()),
                })
                .collect()
        }),
    }
}

/// Makes a legacy name usable as an object name, with MetalLB's converter's rule: a name that is already a DNS-1035
/// label is kept; otherwise it is cut to 63 characters, lowercased, `_` becomes `-`, and everything before the
/// first letter is dropped. We also turn any other character Kubernetes refuses into `-` and drop trailing dashes,
/// where MetalLB would emit a name the API server rejects.
pub fn kubernetes_name(name: &str, kind: &'static str, notes: &mut Vec<String>) -> Result<String> {
    if is_dns1035_label(name) {
        return Ok(name.to_string());
    }
    let truncated: String = name.chars().take(63).collect();
    let cleaned: String = truncated
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let Some(first_letter) = cleaned.find(|c: char| c.is_ascii_lowercase()) else {
        return Err(Error::Unnameable {
            kind,
            name: name.to_string(),
        });
    };
    let converted = cleaned[first_letter..].trim_end_matches('-').to_string();
    if converted != name {
        notes.push(format!("{kind} {name:?} is renamed {converted:?}"));
    }
    Ok(converted)
}

fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(input: &str) -> Vec<(String, String)> {
        migrate(input, "metallb-system")
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn names_follow_metallbs_converter() {
        let mut notes = vec![];
        assert_eq!(
            kubernetes_name("ok-name", "x", &mut notes).unwrap(),
            "ok-name"
        );
        assert!(notes.is_empty());
        assert_eq!(
            kubernetes_name("01-numbered", "x", &mut notes).unwrap(),
            "numbered"
        );
        assert_eq!(
            kubernetes_name("Capital_Name", "x", &mut notes).unwrap(),
            "capital-name"
        );
        assert_eq!(
            kubernetes_name("dotted.name-", "x", &mut notes).unwrap(),
            "dotted-name"
        );
        let long = "a".repeat(80);
        assert_eq!(kubernetes_name(&long, "x", &mut notes).unwrap().len(), 63);
        assert_eq!(notes.len(), 4);
        assert!(matches!(
            kubernetes_name("0123", "x", &mut notes),
            Err(Error::Unnameable { .. })
        ));
    }

    #[test]
    fn advertisements_are_numbered_across_pools() {
        let input = "
address-pools:
- {name: a, protocol: bgp, addresses: [192.0.2.0/26], bgp-advertisements: [{localpref: 1}, {localpref: 2}]}
- {name: b, protocol: bgp, addresses: [192.0.2.64/26]}
- {name: c, protocol: layer2, addresses: [192.0.2.128/26]}
- {name: d, protocol: layer2, addresses: [192.0.2.192/26]}
";
        let kinds: Vec<_> = names(input)
            .into_iter()
            .filter(|(k, _)| k.ends_with("Advertisement"))
            .map(|(_, n)| n)
            .collect();
        assert_eq!(
            kinds,
            [
                "bgpadvertisement1",
                "bgpadvertisement2",
                "bgpadvertisement3",
                "l2advertisement1",
                "l2advertisement2"
            ]
        );
    }

    #[test]
    fn renamed_pools_and_profiles_are_renamed_where_referenced() {
        let input = "
peers: [{my-asn: 1, peer-asn: 2, peer-address: 203.0.113.254, bfd-profile: My_Profile}]
address-pools: [{name: 1-Pool, protocol: layer2, addresses: [192.0.2.0/24]}]
bfd-profiles: [{name: My_Profile}]
";
        let values = migrate(input, "ns").unwrap();
        assert_eq!(values[0]["spec"]["bfdProfile"], "my-profile");
        assert_eq!(values[1]["metadata"]["name"], "pool");
        assert_eq!(values[2]["spec"]["ipAddressPools"][0], "pool");
        assert_eq!(values[3]["metadata"]["name"], "my-profile");
    }

    #[test]
    fn a_configmap_namespace_wins_and_unknown_protocols_are_noted() {
        let input = "
apiVersion: v1
kind: ConfigMap
metadata: {name: config, namespace: lb}
data:
  config: |
    address-pools: [{name: p, protocol: l2, addresses: [192.0.2.0/24]}]
";
        let m = convert(input, "metallb-system").unwrap();
        assert_eq!(m.pools[0].metadata.namespace.as_deref(), Some("lb"));
        assert!(m.l2_advertisements.is_empty());
        assert!(m.notes[0].contains("\"l2\""), "{:?}", m.notes);
    }

    #[test]
    fn timers_are_rounded_and_bad_ones_kept_for_validation() {
        let input = "peers: [{my-asn: 1, peer-asn: 2, peer-address: a, hold-time: 4.7s, keepalive-time: soon}]";
        let m = convert(input, "ns").unwrap();
        assert_eq!(m.peers[0].spec.hold_time.as_deref(), Some("4s"));
        assert_eq!(m.peers[0].spec.keepalive_time.as_deref(), Some("soon"));
    }

    #[test]
    fn configmap_without_config_key_is_an_error() {
        let input = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config}\ndata: {other: x}\n";
        assert!(matches!(convert(input, "ns"), Err(Error::NoConfigKey)));
    }
}
