//! Tier: `ironlb check` and `ironlb migrate` on whole files, over MetalLB's compatibility corpus.

use std::path::{Path, PathBuf};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn run(paths: &[PathBuf]) -> (bool, String) {
    let mut out = Vec::new();
    let ok = ironlb::config::check(paths, "metallb-system", &mut out).unwrap();
    (ok, String::from_utf8(out).unwrap())
}

#[test]
fn every_metallb_sample_is_accepted() {
    // One file at a time: the samples reuse names (several `example` pools overlap), as separate examples do.
    let mut files: Vec<_> = std::fs::read_dir(fixture("metallb/configsamples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 18);
    for file in files {
        let (ok, out) = run(std::slice::from_ref(&file));
        assert!(ok, "{} rejected:\n{out}", file.display());
    }
}

#[test]
fn samples_print_a_summary_and_skip_foreign_kinds() {
    let (ok, out) = run(&[fixture("metallb/configsamples/deployment_bgp.yaml")]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "  example: 192.168.10.0-192.168.10.255, fc00:f853:ccd:e799::-fc00:f853:ccd:e799::f; \
             IPv4 addresses: 256, IPv6 addresses: 16; autoAssign: true"
        ),
        "{out}"
    );
    assert!(out.contains("  empty: pools: example;"), "{out}");
    assert!(
        out.contains("  peerv6: AS64512 -> AS64512 at [fc00:f853:ccd:e793::5]:179"),
        "{out}"
    );
    assert!(out.contains("skipped: Deployment/nginx"), "{out}");
    assert!(out.contains("skipped: Service/nginx"), "{out}");
}

#[test]
fn the_vrf_sample_is_accepted_without_a_warning() {
    let (ok, out) = run(&[fixture("metallb/configsamples/bgppeer_with_vrf.yaml")]);
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "{out}");
    assert!(
        out.contains("  peer: AS64512 -> AS64512 at 172.30.0.3:179 in VRF red"),
        "{out}"
    );
}

/// Every legacy ConfigMap of MetalLB's converter corpus passes, but the two forms of `config-data-full`: its pool
/// `my-l2-space` has `protocol: l2`, which MetalLB's converter copies but MetalLB 0.12's parser refused (unknown
/// protocol). That verdict, and only it, is given, and the rest of the file still validates.
#[test]
fn every_legacy_configmap_gets_metallb_0_12s_verdict() {
    for dir in ["metallb/configmap", "metallb/configmap-object"] {
        for e in std::fs::read_dir(fixture(dir)).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let (ok, out) = run(std::slice::from_ref(&path));
            let file = path.file_name().unwrap().to_string_lossy();
            if file.ends_with("-full.yaml") {
                assert!(!ok, "{file} accepted:\n{out}");
                assert!(out.starts_with("1 error(s):\n"), "{file}:\n{out}");
                assert!(
                    out.contains(
                        "data.config: address pool \"my-l2-space\" has protocol \"l2\", which is neither \"bgp\" \
                         nor \"layer2\"; it is left out (MetalLB 0.12: unknown protocol)"
                    ),
                    "{file}:\n{out}"
                );
            } else {
                assert!(ok, "{file} rejected:\n{out}");
            }
        }
    }
}

#[test]
fn a_broken_config_is_rejected_with_each_field_named() {
    let (ok, out) = run(&[fixture("broken")]);
    assert!(!ok);
    for line in [
        "IPAddressPool/overlapping: spec.addresses: 192.0.2.128-192.0.2.255 overlaps \
         192.0.2.0-192.0.2.255 of IPAddressPool/good",
        "IPAddressPool/reversed: spec.addresses[0]: range 198.51.100.9-198.51.100.1 is reversed",
        "BGPPeer/peer-bad: spec.dynamicASN: peerASN and dynamicASN are mutually exclusive",
        "BGPPeer/peer-bad: spec.holdTime: hold time 2s must be 0 or at least 3s",
        "BGPPeer/peer-bad: spec.passwordSecret: password and passwordSecret are mutually exclusive",
        "BGPAdvertisement/adv: spec.communities[0]: \"NO_SUCH_ALIAS\" is neither",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{out}"
        );
    }
    assert!(out.starts_with("6 error(s):"), "{out}");
}

#[test]
fn a_yaml_syntax_error_names_file_and_document() {
    let dir = std::env::temp_dir().join(format!("ironlb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "kind: A\n---\nkind: [\n").unwrap();
    let err = ironlb::config::check(
        std::slice::from_ref(&file),
        "metallb-system",
        &mut Vec::new(),
    )
    .unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    let msg = err.to_string();
    assert!(msg.contains("bad.yaml: document 2: invalid YAML"), "{msg}");
}

#[test]
fn migrate_file_writes_appliable_yaml() {
    let mut out = Vec::new();
    let ok = ironlb::config::migrate_file(
        &fixture("metallb/configmap-object/config-yaml-full.yaml"),
        "metallb-system",
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(ok, "{out}");
    // The `l2` protocol is not one MetalLB knows: the pool gets no advertisement, and the user is told.
    assert!(
        out.contains("# warning: ConfigMap") || out.contains("# note:"),
        "{out}"
    );
    assert!(
        out.contains("# warning: IPAddressPool/my-l2-space: no L2Advertisement"),
        "{out}"
    );
    let sources = ironlb::config::Sources::from_yaml(&out).unwrap();
    assert_eq!(sources.peers.len(), 1);
    assert_eq!(sources.pools.len(), 2);
}
