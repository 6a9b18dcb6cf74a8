//! Tier: the webhook's verdicts against `config check`'s, over whole files (the library's `admit`, no server; the
//! real API server calling the webhook is tests/real_api_webhook.rs).
//!
//! - Every object `config check` refuses is refused when written through the webhook with the rest of its file in
//!   place, with every error `config check` gives it; the one deliberate exception is a reference to an object
//!   that does not exist, which the webhook turns into a warning (objects applied together arrive in any order).
//! - Every configuration `config check` accepts (MetalLB's samples and documented configurations) passes the webhook
//!   object by object, in file order, as `kubectl apply -f` would send it.

use std::path::{Path, PathBuf};

use ironlb::webhook::admit::{ConfigChange, admit};
use serde_json::Value;

const NS: &str = "metallb-system";

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

/// The metallb.io objects of a file, in order.
fn objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| {
            v["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("metallb.io/"))
        })
        .collect()
}

/// `config check`'s error lines for `path`.
fn check_errors(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    ironlb::config::check(&[path.to_path_buf()], NS, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let mut lines = out.lines();
    if !lines.next().is_some_and(|l| l.ends_with("error(s):")) {
        return Vec::new();
    }
    lines
        .take_while(|l| !l.ends_with("warning(s):"))
        .map(str::to_string)
        .collect()
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap(),
        v["metadata"]["name"].as_str().unwrap()
    )
}

/// Writes each refused object through the webhook with the rest of the file stored; returns the error lines the
/// webhook reproduced and the objects it let through.
fn through_the_webhook(path: &Path) -> (Vec<String>, Vec<String>) {
    let all = objects(path);
    let errors = check_errors(path);
    assert!(
        !errors.is_empty(),
        "{} is accepted by config check",
        path.display()
    );
    let mut reproduced = Vec::new();
    let mut allowed = Vec::new();
    for object in &all {
        let id = key(object);
        let own: Vec<&String> = errors
            .iter()
            .filter(|e| e.starts_with(&format!("{id}: ")))
            .collect();
        if own.is_empty() {
            continue;
        }
        let rest: Vec<Value> = all.iter().filter(|o| key(o) != id).cloned().collect();
        let verdict = admit(&rest, &ConfigChange::Put(object.clone()), NS);
        if verdict.allowed {
            allowed.push(id);
            continue;
        }
        for e in own {
            assert!(
                verdict.denied_because.contains(e),
                "the webhook denied {id} without config check's {e:?}: {:?}",
                verdict.denied_because
            );
            reproduced.push(e.clone());
        }
    }
    (reproduced, allowed)
}

#[test]
fn every_metallb_refusal_family_is_refused_by_the_webhook_with_config_checks_words() {
    let path = fixture("metallb-verdicts/refused.yaml");
    let (reproduced, allowed) = through_the_webhook(&path);
    assert_eq!(allowed, Vec::<String>::new());
    assert_eq!(reproduced.len(), check_errors(&path).len());
    // The families, each named the way MetalLB names it.
    for family in [
        "resource must be created in metallb-system namespace",
        "duplicate definition of ipAddressPoolSelectors",
        "duplicate definition of match expression value",
        "invalid local preference",
        "invalid aggregation length",
        "echo mode, which is IPv4 only",
    ] {
        assert!(
            reproduced.iter().any(|e| e.contains(family)),
            "no refusal for {family:?}: {reproduced:#?}"
        );
    }
}

#[test]
fn the_broken_fixture_is_refused_but_for_the_reference_to_a_missing_alias() {
    let path = fixture("broken/broken.yaml");
    let (reproduced, allowed) = through_the_webhook(&path);
    let errors = check_errors(&path);
    // The advertisement's only error is its undefined community alias: a warning at admission, an error in the
    // agent (which leaves the advertisement out until the alias exists).
    assert_eq!(allowed, ["BGPAdvertisement/adv"]);
    let missed: Vec<&String> = errors.iter().filter(|e| !reproduced.contains(e)).collect();
    assert!(
        missed
            .iter()
            .all(|e| e.starts_with("BGPAdvertisement/adv: spec.communities")),
        "{missed:#?}"
    );
    let adv = objects(&path)
        .into_iter()
        .find(|o| key(o) == "BGPAdvertisement/adv")
        .unwrap();
    let verdict = admit(&[], &ConfigChange::Put(adv), NS);
    assert!(
        verdict.warnings.iter().any(|w| w.contains("NO_SUCH_ALIAS")),
        "{verdict:?}"
    );
}

#[test]
fn every_accepted_sample_passes_the_webhook_object_by_object_in_file_order() {
    let mut files = Vec::new();
    for dir in ["metallb/configsamples", "metallb-docs"] {
        for entry in std::fs::read_dir(fixture(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 52, "{} sample files", files.len());
    let mut objects_seen = 0;
    for file in files {
        assert_eq!(
            check_errors(&file),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
        let mut stored: Vec<Value> = Vec::new();
        for object in objects(&file) {
            let verdict = admit(&stored, &ConfigChange::Put(object.clone()), NS);
            assert!(
                verdict.allowed,
                "{}: {} refused: {}",
                file.display(),
                key(&object),
                verdict.message()
            );
            stored.retain(|o| key(o) != key(&object));
            stored.push(object);
            objects_seen += 1;
        }
    }
    assert!(
        objects_seen >= 66,
        "only {objects_seen} objects went through"
    );
}
