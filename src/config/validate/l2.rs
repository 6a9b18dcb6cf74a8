//! `L2Advertisement`: its pool list and selectors resolve against the accepted pools, its node, Service and pool
//! selectors compile, and `spec.preferredNodeSelectors` weights are within MetalLB's range.

use std::collections::BTreeMap;

use super::{Findings, Named, Validated, selected_pools};
use crate::config::crd;
use crate::config::model::{L2Advertisement, Labels};
use crate::config::selector::Selector;

/// Checks each L2Advertisement against the accepted pools.
pub(super) fn advertisements(
    objects: &[Named<crd::L2Advertisement>],
    pool_labels: &BTreeMap<String, Labels>,
    out: &mut Validated,
) {
    for n in objects {
        let mut f = Findings::new("L2Advertisement", &n.name, n.legacy);
        let s = &n.object.spec;
        if out.config.l2_advertisements.contains_key(&n.name) {
            f.error("metadata.name", "another L2Advertisement has the same name");
        }
        let pool_names = s.ip_address_pools.clone().unwrap_or_default();
        f.unique("spec.ipAddressPools", &pool_names);
        let pool_selectors =
            f.selectors("spec.ipAddressPoolSelectors", &s.ip_address_pool_selectors);
        let node_selectors = f.selectors("spec.nodeSelectors", &s.node_selectors);
        let service_selectors = f.selectors("spec.serviceSelectors", &s.service_selectors);
        let mut preferred_nodes = Vec::new();
        for (i, p) in s.preferred_node_selectors.iter().flatten().enumerate() {
            let field = format!("spec.preferredNodeSelectors[{i}]");
            if !(1..=100).contains(&p.weight) {
                f.error(
                    &format!("{field}.weight"),
                    format!("{} is outside 1..=100", p.weight),
                );
            }
            match Selector::compile(&p.preference) {
                Ok(sel) => preferred_nodes.push((p.weight, sel)),
                Err(e) => f.error(&format!("{field}.preference"), e),
            }
        }
        let interfaces = s.interfaces.clone().unwrap_or_default();
        let pools = selected_pools(&mut f, &pool_names, &pool_selectors, pool_labels);
        if f.finish(out) {
            let adv = L2Advertisement {
                name: n.name.clone(),
                pool_names,
                pool_selectors,
                pools,
                node_selectors,
                interfaces,
                service_selectors,
                preferred_nodes,
            };
            out.config.l2_advertisements.insert(n.name.clone(), adv);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::super::fixtures::*;
    use super::super::validate;
    use super::*;
    use crate::config::load::Sources;

    #[test]
    fn l2_advertisement_checks() {
        let mut adv = l2("adv", &["a", "a"]);
        adv.spec.node_selectors = Some(vec![bad_selector()]);
        adv.spec.preferred_node_selectors = Some(vec![crd::PreferredNodeSelector {
            preference: LabelSelector::default(),
            weight: 0,
        }]);
        let v = validate(&Sources {
            pools: vec![pool("a", &["192.0.2.0/24"])],
            l2_advertisements: vec![adv],
            ..Default::default()
        });
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.ipAddressPools[1]",
            "twice"
        ));
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.nodeSelectors[0]",
            "Equals"
        ));
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.preferredNodeSelectors[0].weight",
            "1..=100"
        ));
        assert!(v.config.l2_advertisements.is_empty());
        assert!(has(
            &v.warnings,
            "IPAddressPool",
            "a",
            "",
            "never announced"
        ));
    }

    #[test]
    fn duplicate_selectors_expressions_and_values_are_refused_as_metallb_does() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels = |pairs: &[(&str, &str)]| LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let expr = |key: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: "In".into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let check = |selectors: Vec<LabelSelector>| {
            let mut adv = l2("adv", &[]);
            adv.spec.node_selectors = Some(selectors);
            validate(&Sources {
                l2_advertisements: vec![adv],
                ..Default::default()
            })
        };
        // The same labels twice, written in another order.
        let v = check(vec![
            labels(&[("a", "1"), ("b", "2")]),
            labels(&[("b", "2"), ("a", "1")]),
        ]);
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.nodeSelectors[1]",
            "the same selector as spec.nodeSelectors[0] (MetalLB: duplicate definition of nodeSelectors)"
        ));
        assert!(v.config.l2_advertisements.is_empty());
        // A value twice in one expression, and one expression twice in one selector (values in any order).
        let v = check(vec![LabelSelector {
            match_expressions: Some(vec![
                expr("zone", &["x", "y"]),
                expr("zone", &["y", "x", "x"]),
            ]),
            ..Default::default()
        }]);
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.nodeSelectors[0].matchExpressions[1].values",
            "\"x\" is listed twice"
        ));
        assert!(has(
            &v.errors,
            "L2Advertisement",
            "adv",
            "spec.nodeSelectors[0].matchExpressions[1]",
            "the same expression as matchExpressions[0]"
        ));
        // Different selectors, and expressions in another order (MetalLB compares them in order), pass.
        let v = check(vec![
            labels(&[("a", "1")]),
            labels(&[("a", "2")]),
            LabelSelector {
                match_expressions: Some(vec![expr("k", &["1"]), expr("j", &["1"])]),
                ..Default::default()
            },
            LabelSelector {
                match_expressions: Some(vec![expr("j", &["1"]), expr("k", &["1"])]),
                ..Default::default()
            },
        ]);
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
    }
}
