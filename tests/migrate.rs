//! Tier: compatibility of `ironlb migrate` with MetalLB's own ConfigMap converter.
//!
//! Every `*.yaml` in the committed copies of MetalLB's `configmap/` (bare payloads) and `configmap-object/` (whole
//! ConfigMaps) is converted and compared with the `.golden` MetalLB produced from it.
//!
//! The comparison is semantic: both sides are parsed into JSON values, document by document, and the values must be
//! *equal*, in the same order. Nothing is normalised away: `status: {}`, the zeroed `IPAddressPool` status and
//! `passwordSecret: {}` are reproduced because MetalLB's converter writes them and `kubectl apply` accepts them, so
//! treating an empty object as equal to an absent one would only hide a divergence. Only what is not data differs:
//! comments, key order, quoting, and the empty document after MetalLB's trailing `---`.

use std::fs;
use std::path::Path;

use serde::Deserialize;

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("golden is YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML maps to JSON"))
        .collect()
}

fn check_dir(dir: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metallb")
        .join(dir);
    let mut checked = 0;
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    for input in inputs {
        let golden = input.with_extension("golden");
        let want = documents(&fs::read_to_string(&golden).unwrap());
        let text = fs::read_to_string(&input).unwrap();
        let got = ironlb::config::migrate(&text, "metallb-system")
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        assert_eq!(
            got.len(),
            want.len(),
            "{}: object count differs\ngot:  {got:#?}\nwant: {want:#?}",
            input.display()
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{}: document {} differs", input.display(), i + 1);
        }
        // The YAML rendering must carry the same objects.
        let yaml = ironlb::config::migrate_to_yaml(&text, "metallb-system").unwrap();
        assert_eq!(
            documents(&yaml),
            want,
            "{}: YAML output differs",
            input.display()
        );
        checked += 1;
    }
    checked
}

#[test]
fn bare_payloads_match_metallb_goldens() {
    assert_eq!(check_dir("configmap"), 6);
}

#[test]
fn configmap_objects_match_metallb_goldens() {
    assert_eq!(check_dir("configmap-object"), 6);
}
