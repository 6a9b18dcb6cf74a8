//! Validation: from the metallb.io objects (and the legacy ConfigMap) to the internal [`Config`].
//!
//! An invalid object is left out of the [`Config`] and gets its own error, and every valid object is kept, so an
//! unrelated mistake never drops a working VIP. Checks run kind by kind in dependency order (BFD profiles and
//! communities, then pools, then peers, then advertisements), and each later kind only sees the objects accepted
//! before it. Objects of one kind are taken in name order, so when two conflict (duplicate names) the later name is
//! the one rejected, on every agent alike. Pools are the exception: the older pool (by creationTimestamp, then name)
//! wins an overlap, so that adding a pool can never take the addresses of one already in use, whatever the names.
//!
//! Warnings flag what is accepted but probably not what the user meant, and fields IronLB accepts for MetalLB
//! compatibility but does not act on yet. Nothing here touches the API or the file system.
//!
//! This file holds the entry point, the diagnostics and what every kind shares; the checks of each kind live in
//! `pool` (IPAddressPool), `l2` (L2Advertisement), `peer` (BGPPeer), `bgp` (BGPAdvertisement, BFDProfile,
//! Community) and `legacy` (the ConfigMap, read through its conversion to those kinds).

mod bgp;
#[cfg(test)]
mod fixtures;
mod l2;
mod legacy;
mod peer;
mod pool;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::load::Sources;
use super::model::{Config, Labels};
use super::selector::Selector;

pub use pool::{AddressError, parse_address};

/// One finding about one object, shown as `Kind/name: field: message`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub kind: String,
    pub name: String,
    /// The path of the offending field, such as `spec.addresses[1]`; empty when the whole object is meant.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(kind: &str, name: &str, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            kind: kind.to_string(),
            name: name.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}/{}: {}", self.kind, self.name, self.message)
        } else {
            write!(
                f,
                "{}/{}: {}: {}",
                self.kind, self.name, self.field, self.message
            )
        }
    }
}

/// The result of [`validate`]: the configuration built from every valid object, and what was found on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validated {
    pub config: Config,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Validated {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A label selector as MetalLB compares two for equality: its labels, and its expressions in order, each with its
/// values as a set.
type SelectorKey = (
    BTreeMap<String, String>,
    Vec<(String, String, BTreeSet<String>)>,
);

/// Collects the diagnostics of one object; the object is kept only if it has no error.
struct Findings<'a> {
    kind: &'static str,
    name: &'a str,
    suffix: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Findings<'a> {
    fn new(kind: &'static str, name: &'a str, from_legacy: bool) -> Findings<'a> {
        Findings {
            kind,
            name,
            suffix: if from_legacy {
                " (converted from the legacy ConfigMap)"
            } else {
                ""
            },
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&mut self, field: &str, message: impl fmt::Display) {
        let d = Diagnostic::new(
            self.kind,
            self.name,
            field,
            format!("{message}{}", self.suffix),
        );
        self.errors.push(d);
    }

    fn warn(&mut self, field: &str, message: impl fmt::Display) {
        let d = Diagnostic::new(
            self.kind,
            self.name,
            field,
            format!("{message}{}", self.suffix),
        );
        self.warnings.push(d);
    }

    /// Compiles a list of label selectors, refusing what MetalLB refuses in one: a value twice in one expression,
    /// the same expression twice in one selector, and the same selector twice in the list (labels in any order,
    /// expression values in any order, expressions in the same order, as MetalLB compares them).
    fn selectors(&mut self, field: &str, selectors: &Option<Vec<LabelSelector>>) -> Vec<Selector> {
        let mut out = Vec::new();
        let mut seen: Vec<(SelectorKey, usize)> = Vec::new();
        for (i, s) in selectors.iter().flatten().enumerate() {
            let at = format!("{field}[{i}]");
            let mut expressions: Vec<(&str, &str, BTreeSet<&str>)> = Vec::new();
            for (j, e) in s.match_expressions.iter().flatten().enumerate() {
                let mut values = BTreeSet::new();
                for v in e.values.iter().flatten() {
                    if !values.insert(v.as_str()) {
                        self.error(
                            &format!("{at}.matchExpressions[{j}].values"),
                            format!("{v:?} is listed twice (MetalLB: duplicate definition of match expression value)"),
                        );
                    }
                }
                let expression = (e.key.as_str(), e.operator.as_str(), values);
                if let Some(k) = expressions.iter().position(|x| *x == expression) {
                    self.error(
                        &format!("{at}.matchExpressions[{j}]"),
                        format!(
                            "the same expression as matchExpressions[{k}] (MetalLB: duplicate definition of match \
                             expressions)"
                        ),
                    );
                }
                expressions.push(expression);
            }
            let key: SelectorKey = (
                s.match_labels.clone().unwrap_or_default(),
                expressions
                    .iter()
                    .map(|(k, o, v)| {
                        (
                            k.to_string(),
                            o.to_string(),
                            v.iter().map(|s| s.to_string()).collect(),
                        )
                    })
                    .collect(),
            );
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                let kind = field.rsplit('.').next().unwrap_or(field);
                self.error(
                    &at,
                    format!("the same selector as {field}[{first}] (MetalLB: duplicate definition of {kind})"),
                );
            }
            seen.push((key, i));
            match Selector::compile(s) {
                Ok(sel) => out.push(sel),
                Err(e) => self.error(&at, e),
            }
        }
        out
    }

    fn unique(&mut self, field: &str, items: &[String]) {
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item) {
                self.error(
                    &format!("{field}[{i}]"),
                    format!("{item:?} is listed twice"),
                );
            }
        }
    }

    /// Moves the findings into the result; true when the object is valid.
    fn finish(self, out: &mut Validated) -> bool {
        let ok = self.errors.is_empty();
        out.errors.extend(self.errors);
        out.warnings.extend(self.warnings);
        ok
    }
}

/// An object with its name and whether it came from the legacy ConfigMap, taken in name order.
struct Named<'a, T> {
    name: String,
    object: &'a T,
    legacy: bool,
}

fn by_name<'a, T: kube::Resource>(crds: &'a [T], legacy: &'a [T]) -> Vec<Named<'a, T>> {
    let mut all: Vec<Named<'a, T>> = crds
        .iter()
        .map(|o| (o, false))
        .chain(legacy.iter().map(|o| (o, true)))
        .map(|(object, legacy)| Named {
            name: object.meta().name.clone().unwrap_or_default(),
            object,
            legacy,
        })
        .collect();
    // Stable: with equal names, a CRD comes before the legacy object converted to the same name.
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// Validates every object and builds the [`Config`] of the valid ones.
pub fn validate(sources: &Sources) -> Validated {
    let mut out = Validated {
        errors: sources.malformed.clone(),
        ..Default::default()
    };

    let converted = legacy::convert(sources, &mut out);

    bgp::bfd_profiles(
        &by_name(&sources.bfd_profiles, &converted.bfd_profiles),
        &mut out,
    );
    bgp::communities(
        &by_name(&sources.communities, &converted.communities),
        &mut out,
    );
    let pool_labels = pool::pools(&by_name(&sources.pools, &converted.pools), &mut out);

    let all_peers = peer::with_v1beta1(sources, &mut out);
    peer::peers(&by_name(&all_peers, &converted.peers), &mut out);

    l2::advertisements(
        &by_name(&sources.l2_advertisements, &converted.l2_advertisements),
        &pool_labels,
        &mut out,
    );
    bgp::advertisements(
        &by_name(&sources.bgp_advertisements, &converted.bgp_advertisements),
        &pool_labels,
        &mut out,
    );

    let announced: BTreeSet<&String> = out
        .config
        .l2_advertisements
        .values()
        .flat_map(|a| &a.pools)
        .chain(
            out.config
                .bgp_advertisements
                .values()
                .flat_map(|a| &a.pools),
        )
        .collect();
    let unannounced: Vec<String> = out
        .config
        .pools
        .keys()
        .filter(|p| !announced.contains(p))
        .cloned()
        .collect();
    for name in unannounced {
        out.warnings.push(Diagnostic::new(
            "IPAddressPool",
            &name,
            "",
            "no L2Advertisement or BGPAdvertisement selects this pool: its IPs are allocated but never announced",
        ));
    }
    out
}

/// Resolves an advertisement's pool list and selectors against the accepted pools. Names of missing pools are
/// warnings: MetalLB ignores them, and the pool may simply not be created yet.
fn selected_pools(
    f: &mut Findings,
    names: &[String],
    selectors: &[Selector],
    pool_labels: &BTreeMap<String, Labels>,
) -> BTreeSet<String> {
    if names.is_empty() && selectors.is_empty() {
        return pool_labels.keys().cloned().collect();
    }
    let mut pools = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        if pool_labels.contains_key(name) {
            pools.insert(name.clone());
        } else {
            f.warn(
                &format!("spec.ipAddressPools[{i}]"),
                format!("IPAddressPool/{name} does not exist or is invalid; it is skipped"),
            );
        }
    }
    for (name, labels) in pool_labels {
        if selectors.iter().any(|s| s.matches(labels)) {
            pools.insert(name.clone());
        }
    }
    pools
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn diagnostics_display_kind_name_field_message() {
        let d = Diagnostic::new("IPAddressPool", "a", "spec.addresses[0]", "bad");
        assert_eq!(d.to_string(), "IPAddressPool/a: spec.addresses[0]: bad");
        assert_eq!(Diagnostic::new("K", "n", "", "m").to_string(), "K/n: m");
    }

    #[test]
    fn advertisements_select_pools_by_list_and_by_label() {
        let mut by_label = l2("by-label", &[]);
        by_label.spec.ip_address_pool_selectors = Some(vec![LabelSelector {
            match_labels: Some([("tier".to_string(), "gold".to_string())].into()),
            ..Default::default()
        }]);
        let v = validate(&Sources {
            pools: vec![
                pool("a", &["192.0.2.0/24"]),
                labelled(pool("b", &["198.51.100.0/24"]), "tier", "gold"),
                pool("c", &["203.0.113.0/24"]),
            ],
            l2_advertisements: vec![l2("by-list", &["a", "missing"]), by_label],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        let names = |a: &str| {
            v.config.l2_advertisements[a]
                .pools
                .iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(names("by-list"), ["a"]);
        assert_eq!(names("by-label"), ["b"]);
        assert!(has(
            &v.warnings,
            "L2Advertisement",
            "by-list",
            "spec.ipAddressPools[1]",
            "IPAddressPool/missing"
        ));
        assert!(has(
            &v.warnings,
            "IPAddressPool",
            "c",
            "",
            "never announced"
        ));
        assert!(!has(
            &v.warnings,
            "IPAddressPool",
            "a",
            "",
            "never announced"
        ));
    }

    #[test]
    fn one_invalid_object_never_drops_the_valid_ones() {
        let v = validate(&Sources {
            pools: vec![pool("good", &["192.0.2.0/24"]), pool("bad", &["nope"])],
            peers: vec![peer("ok"), with(|s| s.my_asn = 0)],
            l2_advertisements: vec![l2("adv", &["good", "bad"])],
            malformed: vec![Diagnostic::new("BGPPeer", "typo", "spec", "invalid type")],
            ..Default::default()
        });
        assert_eq!(v.config.pools.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(v.config.peers.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(
            v.config.l2_advertisements["adv"].pools,
            BTreeSet::from(["good".to_string()])
        );
        assert_eq!(v.errors.len(), 3, "{:?}", lines(&v.errors));
    }
}
