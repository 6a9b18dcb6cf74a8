//! Kubernetes label selectors, validated once and then matched without errors.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::model::Labels;

/// A compiled `metav1.LabelSelector`: every requirement must hold. An empty selector matches everything, as in
/// Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Why a label selector is invalid. The message follows the API server's own wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "matchExpressions[{index}]: operator {operator:?} is not one of In, NotIn, Exists, DoesNotExist"
    )]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    MissingValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    UnexpectedValues { index: usize, operator: String },
    #[error("matchExpressions[{index}]: key must not be empty")]
    EmptyKey { index: usize },
}

impl Selector {
    pub fn compile(selector: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::In(
                key.clone(),
                BTreeSet::from([value.clone()]),
            ));
        }
        for (index, expr) in selector.match_expressions.iter().flatten().enumerate() {
            if expr.key.is_empty() {
                return Err(SelectorError::EmptyKey { index });
            }
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let operator = expr.operator.clone();
            let requirement = match operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::MissingValues { index, operator });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues { index, operator });
                }
                "In" => Requirement::In(expr.key.clone(), values),
                "NotIn" => Requirement::NotIn(expr.key.clone(), values),
                "Exists" => Requirement::Exists(expr.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(expr.key.clone()),
                _ => return Err(SelectorError::UnknownOperator { index, operator }),
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// A selector requiring exactly these labels, as `matchLabels` alone would.
    pub fn from_labels(labels: &Labels) -> Selector {
        Selector {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement::In(k.clone(), BTreeSet::from([v.clone()])))
                .collect(),
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::compile(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_all_must_hold() {
        let s = Selector::compile(&LabelSelector {
            match_labels: Some(labels(&[("zone", "a")]).into_iter().collect()),
            match_expressions: Some(vec![
                expr("arch", "In", &["amd64", "arm"]),
                expr("tier", "NotIn", &["db"]),
                expr("gpu", "DoesNotExist", &[]),
            ]),
        })
        .unwrap();
        assert!(s.matches(&labels(&[("zone", "a"), ("arch", "arm")])));
        assert!(!s.matches(&labels(&[("zone", "b"), ("arch", "arm")])));
        assert!(!s.matches(&labels(&[("zone", "a"), ("arch", "s390x")])));
        assert!(!s.matches(&labels(&[("zone", "a"), ("arch", "arm"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("zone", "a"), ("arch", "arm"), ("gpu", "x")])));
    }

    #[test]
    fn bad_operators_and_values_are_rejected_with_their_index() {
        let bad = |e| {
            Selector::compile(&LabelSelector {
                match_expressions: Some(vec![expr("k", "In", &["v"]), e]),
                ..Default::default()
            })
            .unwrap_err()
        };
        assert_eq!(
            bad(expr("k", "Equals", &["v"])),
            SelectorError::UnknownOperator {
                index: 1,
                operator: "Equals".into()
            }
        );
        assert_eq!(
            bad(expr("k", "In", &[])),
            SelectorError::MissingValues {
                index: 1,
                operator: "In".into()
            }
        );
        assert_eq!(
            bad(expr("k", "Exists", &["v"])),
            SelectorError::UnexpectedValues {
                index: 1,
                operator: "Exists".into()
            }
        );
    }
}
