//! The legacy ConfigMap, MetalLB's configuration before 0.13: `config::legacy` converts it to metallb.io objects,
//! which are then checked as any others. This file only reports what the conversion itself found: a payload that
//! does not convert, the notes of the conversion, and a ConfigMap read beside metallb.io objects.

use super::{Diagnostic, Validated};
use crate::config::legacy::{self, Migration};
use crate::config::load::Sources;

/// Converts the legacy ConfigMap of `sources`, if any, recording its diagnostics in `out`. Returns no objects when
/// there is no ConfigMap or its payload does not convert.
pub(super) fn convert(sources: &Sources, out: &mut Validated) -> Migration {
    let mut converted = Migration::default();
    if let Some(source) = &sources.legacy {
        let namespace = source.namespace.as_deref().unwrap_or("metallb-system");
        let parsed = legacy::parse_payload(&source.payload)
            .and_then(|c| legacy::convert_config(&c, namespace));
        match parsed {
            Ok(m) => converted = m,
            Err(e) => out.errors.push(Diagnostic::new(
                "ConfigMap",
                &source.name,
                "data.config",
                crate::error_chain(&e),
            )),
        }
        for note in &converted.notes {
            out.warnings.push(Diagnostic::new(
                "ConfigMap",
                &source.name,
                "data.config",
                note,
            ));
        }
        if sources.has_crds() {
            out.warnings.push(Diagnostic::new(
                "ConfigMap",
                &source.name,
                "",
                "the legacy ConfigMap is read alongside metallb.io objects; MetalLB 0.13 and later ignore it. \
                 Convert it with `ironlb migrate` and delete it",
            ));
        }
    }
    converted
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
        assert!(has(
            &v.warnings,
            "ConfigMap",
            "ConfigMap/config",
            "data.config",
            "\"l2\""
        ));
        assert!(has(
            &v.warnings,
            "IPAddressPool",
            "other",
            "",
            "never announced"
        ));
        assert!(!v.warnings.iter().any(|w| w.message.contains("alongside")));

        // Beside CRDs it is still read, with a warning, and a CRD wins a name clash.
        let v = validate(&Sources {
            legacy: Some(legacy),
            pools: vec![pool("l2", &["192.0.2.0/24"])],
            ..Default::default()
        });
        assert!(has(
            &v.warnings,
            "ConfigMap",
            "ConfigMap/config",
            "",
            "alongside"
        ));
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
}
