//! Fuzzes the pre-0.13 ConfigMap reader with arbitrary text, bare payload or whole ConfigMap object: it must return
//! an error, never panic, and whatever converts must render to YAML that reads back as metallb.io objects and
//! validates without panicking. Seed corpus: tests/fixtures/metallb/configmap*/ (scripts/fuzz copies them in).
#![no_main]

use ironlb::config::legacy;
use ironlb::config::{Sources, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(migration) = legacy::convert(text, "metallb-system") else {
        return;
    };
    let yaml = legacy::to_yaml(&migration).expect("a converted config renders as YAML");
    let sources = Sources::from_yaml(&yaml).expect("rendered objects read back");
    let _ = validate(&sources);
});
