//! Label and field selectors as they appear in list and watch query strings (`labelSelector=app in (a,b),!x`).
//!
//! This parses the string grammar of `k8s.io/apimachinery/pkg/labels` and `.../fields`; it is not the structured
//! `LabelSelector` of Service or pool specs, which `crate::config` owns.

use serde_json::Value;
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid label selector {selector:?}: {reason}")]
    Label {
        selector: String,
        reason: &'static str,
    },
    #[error("invalid field selector {selector:?}: {reason}")]
    Field {
        selector: String,
        reason: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self> {
        let err = |reason| Error::Label {
            selector: selector.to_owned(),
            reason,
        };
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(open) = part.find('(') {
                let head = part[..open].trim();
                let list = part[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| err("unclosed value list"))?;
                let values: BTreeSet<String> = list
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect();
                let mut words = head.split_whitespace();
                let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                    return Err(err("expected `key in (...)` or `key notin (...)`"));
                };
                match op {
                    "in" => Requirement::In(key.to_owned(), values),
                    "notin" => Requirement::NotIn(key.to_owned(), values),
                    _ => return Err(err("unknown set operator")),
                }
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                Requirement::Eq(k, v) | Requirement::NotEq(k, v) => (k, vec![v.as_str()]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                    (k, vs.iter().map(String::as_str).collect())
                }
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(err("invalid key"));
            }
            if !values.iter().all(|v| valid_value(v)) {
                return Err(err("invalid value"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector. Any dotted path into the object is accepted (a superset of what Kubernetes allows per
/// resource); a missing field compares as the empty string, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub fn parse(selector: &str) -> Result<Self> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in selector.split(',') {
            let (path, equal, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(Error::Field {
                    selector: selector.to_owned(),
                    reason: "expected `field=value` or `field!=value`",
                });
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(Error::Field {
                    selector: selector.to_owned(),
                    reason: "empty field path",
                });
            }
            reqs.push((path, equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let found = path.iter().try_fold(object, |v, seg| v.get(seg));
            let have = match found {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn equality_forms() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn set_and_existence_forms() {
        let o = obj(json!({"app": "web", "env": "prod"}));
        for (sel, want) in [
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db, cache)", true),
            ("app notin (web)", false),
            ("missing notin (web)", true),
            ("env", true),
            ("missing", false),
            ("!missing", true),
            ("!env", false),
            ("app in (web,db),!missing,env=prod", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_errors() {
        for sel in [
            "app in (web",
            "app foo (x)",
            "a=b,",
            "bad key=x",
            "app=we b",
        ] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selectors_walk_paths() {
        let ev = json!({
            "metadata": {"name": "e1", "namespace": "default"},
            "involvedObject": {"kind": "Service", "name": "web", "namespace": "default", "uid": "u1"},
        });
        let sel = FieldSelector::parse(
            "involvedObject.name=web,involvedObject.namespace=default,involvedObject.kind=Service,involvedObject.uid=u1",
        )
        .unwrap();
        assert!(sel.matches(&ev));
        assert!(
            FieldSelector::parse("metadata.name=e1")
                .unwrap()
                .matches(&ev)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=e1")
                .unwrap()
                .matches(&ev)
        );
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&ev));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
