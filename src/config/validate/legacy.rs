//! The legacy ConfigMap, MetalLB's configuration before 0.13: `config::legacy` converts it to metallb.io objects,
//! which are then checked as any others. This file only reports what the conversion itself found: a payload that
//! does not convert, the notes of the conversion, and a ConfigMap read beside metallb.io objects.

use super::{Diagnostic, Validated};
use crate::config::legacy::{self, LegacyConfig, LegacyPeer, Migration};
use crate::config::load::Sources;

/// Converts the legacy ConfigMap of `sources`, if any, recording its diagnostics in `out`. Returns no objects when
/// there is no ConfigMap or its payload does not convert.
pub(super) fn convert(sources: &Sources, out: &mut Validated) -> Migration {
    let mut converted = Migration::default();
    if let Some(source) = &sources.legacy {
        let namespace = source.namespace.as_deref().unwrap_or("metallb-system");
        // `source.name` reads `ConfigMap/<name>` for a whole object; the diagnostic adds the kind itself.
        let name = source
            .name
            .strip_prefix("ConfigMap/")
            .unwrap_or(&source.name);
        let parsed = legacy::parse_payload(&source.payload).and_then(|mut c| {
            for refusal in refusals(&mut c) {
                out.errors
                    .push(Diagnostic::new("ConfigMap", name, "data.config", refusal));
            }
            legacy::convert_config(&c, namespace)
        });
        match parsed {
            Ok(m) => converted = m,
            Err(e) => out.errors.push(Diagnostic::new(
                "ConfigMap",
                name,
                "data.config",
                crate::error_chain(&e),
            )),
        }
        for note in &converted.notes {
            out.warnings
                .push(Diagnostic::new("ConfigMap", name, "data.config", note));
        }
        if sources.has_crds() {
            out.warnings.push(Diagnostic::new(
                "ConfigMap",
                name,
                "",
                "the legacy ConfigMap is read alongside metallb.io objects; MetalLB 0.13 and later ignore it. \
                 Convert it with `ironlb migrate` and delete it",
            ));
        }
    }
    converted
}

/// What MetalLB 0.12's parser refuses in a legacy payload, which IronLB refuses too. MetalLB then kept its previous
/// configuration whole; IronLB leaves out only the offending part, so nothing else stops working: a pool with no or
/// an unknown protocol (never announced anyway), the BGP advertisements of a layer2 pool, and the later of two
/// identical peers or advertisements (which change nothing).
fn refusals(config: &mut LegacyConfig) -> Vec<String> {
    let mut out = Vec::new();
    // MetalLB compares peers with its defaults filled in: no hold time is 90s.
    let normal = |p: &LegacyPeer| {
        let mut p = p.clone();
        if p.hold_time.is_empty() {
            p.hold_time = "90s".into();
        }
        p
    };
    let mut kept: Vec<LegacyPeer> = Vec::new();
    for (i, peer) in std::mem::take(&mut config.peers).into_iter().enumerate() {
        if let Some(first) = kept.iter().position(|k| normal(k) == normal(&peer)) {
            out.push(format!(
                "peers[{i}] ({}) repeats peers[{first}] exactly; it is left out (MetalLB 0.12: peer #{} already \
                 exists)",
                peer.peer_address,
                i + 1
            ));
        } else {
            kept.push(peer);
        }
    }
    config.peers = kept;
    config.address_pools.retain(|pool| match pool.protocol.as_str() {
        "bgp" | "layer2" => true,
        "" => {
            out.push(format!(
                "address pool {:?} has no protocol; it is left out (MetalLB 0.12: address pool is missing the \
                 protocol field)",
                pool.name
            ));
            false
        }
        other => {
            out.push(format!(
                "address pool {:?} has protocol {other:?}, which is neither \"bgp\" nor \"layer2\"; it is left \
                 out (MetalLB 0.12: unknown protocol)",
                pool.name
            ));
            false
        }
    });
    for pool in &mut config.address_pools {
        if pool.protocol == "layer2" && !pool.bgp_advertisements.is_empty() {
            out.push(format!(
                "address pool {:?} is layer2 but has bgp-advertisements; they are left out (MetalLB 0.12: cannot \
                 have bgp-advertisements configuration element in a layer2 address pool)",
                pool.name
            ));
            pool.bgp_advertisements.clear();
        }
        let mut kept: Vec<legacy::LegacyBgpAdvertisement> = Vec::new();
        for (j, adv) in std::mem::take(&mut pool.bgp_advertisements)
            .into_iter()
            .enumerate()
        {
            if let Some(first) = kept.iter().position(|k| *k == adv) {
                out.push(format!(
                    "address pool {:?}: bgp-advertisements[{j}] repeats bgp-advertisements[{first}] exactly; it is \
                     left out (MetalLB 0.12: duplicate definition of bgpadvertisements)",
                    pool.name
                ));
            } else {
                kept.push(adv);
            }
        }
        pool.bgp_advertisements = kept;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::validate;
    use super::*;
    use crate::config::load::LegacySource;

    #[test]
    fn the_legacy_configmap_is_converted_and_validated() {
        let legacy = LegacySource {
            name: "ConfigMap/config".into(),
            namespace: Some("metallb-system".into()),
            payload: "
peers: [{my-asn: 64500, peer-asn: 64500, peer-address: 203.0.113.254, hold-time: 1s}]
address-pools:
- {name: l2, protocol: layer2, addresses: [198.51.100.0/24]}
- {name: other, protocol: l2, addresses: [203.0.113.0/24]}
"
            .into(),
        };
        let v = validate(&Sources {
            legacy: Some(legacy.clone()),
            ..Default::default()
        });
        assert!(v.config.pools.contains_key("l2"));
        assert!(
            v.config.l2_advertisements["l2advertisement1"]
                .pools
                .contains("l2")
        );
        assert!(
            has(
                &v.errors,
                "BGPPeer",
                "peer1",
                "spec.holdTime",
                "legacy ConfigMap"
            ),
            "{:?}",
            lines(&v.errors)
        );
        // A pool of an unknown protocol is refused as MetalLB 0.12 refused it, and left out alone.
        assert!(has(
            &v.errors,
            "ConfigMap",
            "config",
            "data.config",
            "address pool \"other\" has protocol \"l2\""
        ));
        assert!(!v.config.pools.contains_key("other"));
        assert!(!v.warnings.iter().any(|w| w.message.contains("alongside")));

        // Beside CRDs it is still read, with a warning, and a CRD wins a name clash.
        let v = validate(&Sources {
            legacy: Some(legacy),
            pools: vec![pool("l2", &["192.0.2.0/24"])],
            ..Default::default()
        });
        assert!(has(&v.warnings, "ConfigMap", "config", "", "alongside"));
        assert_eq!(
            v.config.pools["l2"].ranges[0].to_string(),
            "192.0.2.0-192.0.2.255"
        );
        assert!(has(
            &v.errors,
            "IPAddressPool",
            "l2",
            "metadata.name",
            "legacy ConfigMap"
        ));
    }

    #[test]
    fn an_unparseable_legacy_payload_is_one_error() {
        let v = validate(&Sources {
            legacy: Some(LegacySource {
                name: "ConfigMap/config".into(),
                namespace: None,
                payload: "peers: {not: a list}".into(),
            }),
            pools: vec![pool("a", &["192.0.2.0/24"])],
            ..Default::default()
        });
        assert_eq!(v.errors.len(), 1);
        assert_eq!(v.errors[0].field, "data.config");
        assert!(v.config.pools.contains_key("a"));
    }

    #[test]
    fn metallb_0_12_refusals_leave_out_only_the_offending_part() {
        let v = validate(&Sources {
            legacy: Some(LegacySource {
                name: "ConfigMap/config".into(),
                namespace: None,
                payload: "
peers:
- {my-asn: 64500, peer-asn: 64501, peer-address: 203.0.113.254}
- {my-asn: 64500, peer-asn: 64501, peer-address: 203.0.113.254, hold-time: 90s}
- {my-asn: 64500, peer-asn: 64501, peer-address: 203.0.113.253}
address-pools:
- {name: l2, protocol: layer2, addresses: [192.0.2.0/28], bgp-advertisements: [{aggregation-length: 32}]}
- {name: none, addresses: [192.0.2.16/28]}
- {name: dup, protocol: bgp, addresses: [192.0.2.64/28], bgp-advertisements: [{localpref: 5}, {localpref: 5}]}
"
                .into(),
            }),
            ..Default::default()
        });
        let errors = lines(&v.errors);
        let expect = [
            "peers[1] (203.0.113.254) repeats peers[0] exactly",
            "address pool \"none\" has no protocol",
            "address pool \"l2\" is layer2 but has bgp-advertisements",
            "address pool \"dup\": bgp-advertisements[1] repeats bgp-advertisements[0]",
        ];
        for needle in expect {
            assert!(
                has(&v.errors, "ConfigMap", "config", "data.config", needle),
                "{needle}: {errors:?}"
            );
        }
        assert_eq!(v.errors.len(), expect.len(), "{errors:?}");
        // What is left works: two distinct peers, the layer2 pool announced in Layer 2 only, one advertisement.
        assert_eq!(v.config.peers.len(), 2);
        assert!(v.config.pools.contains_key("l2") && !v.config.pools.contains_key("none"));
        assert_eq!(v.config.l2_advertisements.len(), 1);
        let bgp: Vec<_> = v.config.bgp_advertisements.values().collect();
        assert_eq!(bgp.len(), 1);
        assert!(bgp[0].pools.contains("dup"));
    }
}
