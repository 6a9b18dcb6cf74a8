//! The four PATCH flavours Kubernetes clients send, applied to one stored JSON object.
//!
//! JSON patch and JSON merge patch are exact, via the `json-patch` crate. Strategic merge patch is approximated: it
//! is applied as a merge patch after its `$`-directives are honoured or dropped, and lists of objects are merged by
//! key only for a few well-known list fields (see [`MERGE_KEYS`]); every other list is replaced whole. Server-side
//! apply is create-or-merge: field ownership is not tracked, so `fieldManager` and `force` are ignored, and a field
//! removed from an applied configuration is not removed from the object.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported patch content type {0:?}")]
    UnsupportedType(String),
    #[error("patch body is not valid {kind}: {source}")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("apply patch body is not valid YAML or JSON: {0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("json patch failed: {0}")]
    JsonPatch(#[source] json_patch::PatchError),
    #[error("patch must be a JSON object")]
    NotAnObject,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The patch flavour, named by the request's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self> {
        let mime = content_type.split(';').next().unwrap_or("").trim();
        match mime {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(Error::UnsupportedType(other.to_owned())),
        }
    }
}

/// List fields whose items strategic merge patch merges by a key field instead of replacing the list, as the
/// `patchMergeKey` tags of the core types declare. This covers what `kubectl apply` changes on Services, Pods and
/// Nodes; any other list is replaced.
pub const MERGE_KEYS: &[(&str, &str)] = &[
    ("ports", "port"),
    ("containers", "name"),
    ("initContainers", "name"),
    ("env", "name"),
    ("volumes", "name"),
    ("volumeMounts", "mountPath"),
    ("conditions", "type"),
    ("finalizers", ""),
];

/// Applies `body` of the given type to `current` and returns the patched object.
pub fn apply(kind: PatchType, current: &Value, body: &[u8]) -> Result<Value> {
    let mut doc = current.clone();
    match kind {
        PatchType::Json => {
            let p: json_patch::Patch =
                serde_json::from_slice(body).map_err(|source| Error::Json {
                    kind: "JSON patch",
                    source,
                })?;
            json_patch::patch(&mut doc, &p).map_err(Error::JsonPatch)?;
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body).map_err(|source| Error::Json {
                kind: "JSON merge patch",
                source,
            })?;
            if !p.is_object() {
                return Err(Error::NotAnObject);
            }
            json_patch::merge(&mut doc, &p);
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body).map_err(|source| Error::Json {
                kind: "strategic merge patch",
                source,
            })?;
            let Value::Object(p) = p else {
                return Err(Error::NotAnObject);
            };
            strategic_merge(&mut doc, p);
        }
        PatchType::Apply => {
            let text = std::str::from_utf8(body).map_err(|_| Error::NotAnObject)?;
            let p: Value = serde_yaml::from_str(text).map_err(Error::Yaml)?;
            if !p.is_object() {
                return Err(Error::NotAnObject);
            }
            json_patch::merge(&mut doc, &p);
        }
    }
    Ok(doc)
}

/// Strategic merge of a patch map into `target`.
fn strategic_merge(target: &mut Value, mut patch: Map<String, Value>) {
    match patch.remove("$patch").as_ref().and_then(Value::as_str) {
        Some("replace") => {
            strip_directives(&mut patch);
            *target = Value::Object(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(obj) = target else {
        return;
    };
    for (key, value) in patch {
        // `$setElementOrder/...`, `$retainKeys` and `$deleteFromPrimitiveList/...` only order or prune lists;
        // dropping them keeps the patch's data intact.
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                obj.remove(&key);
            }
            Value::Object(sub) => {
                let entry = obj.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(entry, sub);
                if entry.is_null() {
                    // `$patch: delete` on a map removes it.
                    obj.remove(&key);
                }
            }
            Value::Array(items) => {
                let merge_key = MERGE_KEYS.iter().find(|(f, _)| *f == key).map(|(_, k)| *k);
                match (merge_key, obj.get_mut(&key)) {
                    (Some(mk), Some(Value::Array(existing))) if !mk.is_empty() => {
                        merge_keyed_list(existing, items, mk);
                    }
                    (Some(""), Some(Value::Array(existing))) => {
                        // A set of primitives (finalizers): union, keeping order.
                        for item in items {
                            if !existing.contains(&item) {
                                existing.push(item);
                            }
                        }
                    }
                    _ => {
                        let mut items = Value::Array(items);
                        strip_value(&mut items);
                        obj.insert(key, items);
                    }
                }
            }
            other => {
                obj.insert(key, other);
            }
        }
    }
}

fn merge_keyed_list(existing: &mut Vec<Value>, patch: Vec<Value>, merge_key: &str) {
    for item in patch {
        let Value::Object(mut item) = item else {
            // Not a list of objects after all: fall back to replacing.
            existing.clear();
            continue;
        };
        let key = item.get(merge_key).cloned();
        let pos = key
            .as_ref()
            .and_then(|k| existing.iter().position(|e| e.get(merge_key) == Some(k)));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut existing[i], item),
            (None, false) => {
                strip_directives(&mut item);
                existing.push(Value::Object(item));
            }
        }
    }
}

fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
    for v in map.values_mut() {
        strip_value(v);
    }
}

fn strip_value(v: &mut Value) {
    match v {
        Value::Object(m) => strip_directives(m),
        Value::Array(a) => a.iter_mut().for_each(strip_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"a": "1", "b": "2"}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}, {"port": 443, "protocol": "TCP"}]},
        })
    }

    #[test]
    fn merge_patch_sets_and_removes() {
        let out = apply(
            PatchType::Merge,
            &svc(),
            br#"{"metadata":{"labels":{"a":null,"c":"3"}}}"#,
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(out["spec"], svc()["spec"]);
    }

    #[test]
    fn json_patch_applies_operations_and_reports_failed_tests() {
        let out = apply(
            PatchType::Json,
            &svc(),
            br#"[{"op":"replace","path":"/spec/ports/0/port","value":8080}]"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"][0]["port"], 8080);
        let failed = apply(
            PatchType::Json,
            &svc(),
            br#"[{"op":"test","path":"/metadata/name","value":"other"}]"#,
        );
        assert!(matches!(failed, Err(Error::JsonPatch(_))));
    }

    #[test]
    fn strategic_patch_merges_ports_by_key_and_drops_directives() {
        let body = br#"{"spec":{"$setElementOrder/ports":[{"port":80},{"port":443}],
            "ports":[{"port":80,"targetPort":8080},{"port":53,"$patch":"delete"}]}}"#;
        let out = apply(PatchType::Strategic, &svc(), body).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "name": "http", "targetPort": 8080}, {"port": 443, "protocol": "TCP"}])
        );
        assert!(out["spec"].get("$setElementOrder/ports").is_none());
        let deleted = apply(
            PatchType::Strategic,
            &svc(),
            br#"{"spec":{"ports":[{"port":443,"$patch":"delete"}]}}"#,
        )
        .unwrap();
        assert_eq!(deleted["spec"]["ports"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn apply_patch_accepts_yaml_and_json() {
        let out = apply(
            PatchType::Apply,
            &json!({}),
            b"metadata:\n  name: x\nspec:\n  a: 1\n",
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"name": "x"}, "spec": {"a": 1}}));
        let out = apply(PatchType::Apply, &out, br#"{"spec":{"b":2}}"#).unwrap();
        assert_eq!(out["spec"], json!({"a": 1, "b": 2}));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for kind in [
            PatchType::Json,
            PatchType::Merge,
            PatchType::Strategic,
            PatchType::Apply,
        ] {
            assert!(apply(kind, &svc(), b"\xff{[").is_err(), "{kind:?}");
            assert!(apply(kind, &svc(), b"42").is_err(), "{kind:?}");
        }
        assert!(PatchType::from_content_type("text/plain").is_err());
    }
}
