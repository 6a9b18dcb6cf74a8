//! Fuzzes the CRD-to-config path with arbitrary YAML: metallb.io objects (and a legacy ConfigMap, if present) are
//! typed, validated into one config, and the valid pools then allocate IPs for the Services that follow a
//! `--- services ---` line. Nothing on this path may panic, whatever the objects hold. Seed corpus:
//! tests/fixtures/metallb/configsamples/ (scripts/fuzz copies them in).
#![no_main]

use std::collections::BTreeMap;

use ironlb::alloc::plan::{parse_services_yaml, plan_services};
use ironlb::config::{Sources, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (config, services) = text
        .split_once("\n--- services ---\n")
        .unwrap_or((text, ""));
    let Ok(sources) = Sources::from_yaml(config) else {
        return;
    };
    let validated = validate(&sources);
    let Ok(services) = parse_services_yaml(services) else {
        return;
    };
    let _ = plan_services(
        validated.config.pools.into_values().collect(),
        services.iter(),
        &BTreeMap::new(),
        None,
    );
});
