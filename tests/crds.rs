//! Tier: the CRDs IronLB ships, against its own types and against MetalLB's schemas.
//!
//! - `deploy/crds/metallb.io.yaml` must be exactly what the types generate. To regenerate it after changing a type,
//!   run `IRONLB_BLESS=1 cargo test --test crds` and commit the file.
//! - Every property path of MetalLB's schemas (committed copies in `tests/fixtures/metallb/crds/`) must exist in our
//!   schema for the same kind and version, so that every object MetalLB accepts is stored unpruned.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// MetalLB kinds we deliberately do not ship, and why.
const OUT_OF_SCOPE: &[(&str, &str)] = &[];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

#[test]
fn checked_in_crds_match_the_types() {
    let generated = ironlb::config::crd_manifests();
    let path = root().join("deploy/crds/metallb.io.yaml");
    if std::env::var_os("IRONLB_BLESS").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &generated).unwrap();
    }
    let checked_in = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date with src/config/crd.rs; regenerate it with \
         `IRONLB_BLESS=1 cargo test --test crds` and commit it",
        path.display()
    );
}

/// Every `properties`/`items` path of a schema: `spec.nodeSelectors[].matchLabels`, …
fn paths(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            out.insert(path.clone());
            paths(sub, &path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        let path = format!("{prefix}[]");
        out.insert(path.clone());
        paths(items, &path, out);
    }
}

/// kind -> version -> paths.
fn schema_paths(crds: &[Value]) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for crd in crds {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let mut p = BTreeSet::new();
            paths(&version["schema"]["openAPIV3Schema"], "", &mut p);
            out.entry(kind.clone())
                .or_insert_with(BTreeMap::new)
                .insert(version["name"].as_str().unwrap().to_string(), p);
        }
    }
    out
}

#[test]
fn every_metallb_property_exists_in_our_schema() {
    let ours = schema_paths(&documents(&ironlb::config::crd_manifests()));
    let dir = root().join("tests/fixtures/metallb/crds");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut missing = Vec::new();
    let mut kinds_seen = BTreeSet::new();
    let mut compared = 0;
    for file in files {
        let theirs = schema_paths(&documents(&fs::read_to_string(&file).unwrap()));
        for (kind, versions) in theirs {
            kinds_seen.insert(kind.clone());
            if OUT_OF_SCOPE.iter().any(|(k, _)| *k == kind) {
                assert!(
                    !ours.contains_key(&kind),
                    "{kind} is listed out of scope but shipped"
                );
                continue;
            }
            for (version, paths) in versions {
                let Some(our_paths) = ours.get(&kind).and_then(|v| v.get(&version)) else {
                    missing.push(format!("{kind} {version}: the whole version"));
                    continue;
                };
                compared += paths.len();
                for path in paths.difference(our_paths) {
                    missing.push(format!("{kind} {version}: {path}"));
                }
            }
        }
    }
    // Guards against a walker that silently finds nothing.
    assert!(compared > 150, "only {compared} MetalLB paths compared");
    assert!(
        missing.is_empty(),
        "missing from our CRDs:\n{}",
        missing.join("\n")
    );
    // Every out-of-scope kind must really exist in MetalLB's set, so the list cannot go stale silently.
    for (kind, reason) in OUT_OF_SCOPE {
        assert!(
            kinds_seen.contains(*kind),
            "{kind} ({reason}) is not a MetalLB kind any more"
        );
    }
    assert_eq!(kinds_seen.len(), ours.len() + OUT_OF_SCOPE.len());
}

#[test]
fn unknown_fields_are_preserved_only_where_metallb_preserves_them() {
    // MetalLB's schemas never set x-kubernetes-preserve-unknown-fields, so neither do ours.
    assert!(!ironlb::config::crd_manifests().contains("x-kubernetes-preserve-unknown-fields"));
    let dir = root().join("tests/fixtures/metallb/crds");
    for e in fs::read_dir(dir).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains("x-kubernetes-preserve-unknown-fields"));
    }
}

#[test]
fn every_sample_object_passes_our_schema_structure() {
    // A structural check without an API server: every field set in MetalLB's samples is a path of our schema.
    let ours = schema_paths(&documents(&ironlb::config::crd_manifests()));
    let dir = root().join("tests/fixtures/metallb/configsamples");
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        for doc in documents(&fs::read_to_string(&path).unwrap()) {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let Some(version) = api_version.strip_prefix("metallb.io/") else {
                continue;
            };
            let kind = doc["kind"].as_str().unwrap();
            let schema = &ours[kind][version];
            let mut used = BTreeSet::new();
            value_paths(&doc, "", &mut used);
            for p in used {
                if p.starts_with("metadata.") || p.contains("matchLabels.") {
                    continue; // metadata is the API server's; matchLabels is a free-form map
                }
                assert!(
                    schema.contains(&p),
                    "{}: {kind} {version}: {p}",
                    path.display()
                );
            }
        }
    }
}

fn value_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, sub) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                value_paths(sub, &p, out);
            }
        }
        Value::Array(items) => {
            let p = format!("{prefix}[]");
            for item in items {
                if item.is_object() || item.is_array() {
                    out.insert(p.clone());
                }
                value_paths(item, &p, out);
            }
        }
        _ => {}
    }
}
