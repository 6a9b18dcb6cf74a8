//! `BGPPeer`: AS numbers, endpoint and addresses, timers (RFC 4271), the MD5 password, node selectors and the
//! reference to a BFD profile. v1beta1 peers are read as v1beta2.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{Diagnostic, Findings, Named, Validated};
use crate::config::crd;
use crate::config::duration;
use crate::config::load::Sources;
use crate::config::model::{Peer, PeerEndpoint, PeerPassword, RemoteAsn};

/// The v1beta2 peers and the v1beta1 ones, read as v1beta2 with a warning each.
pub(super) fn with_v1beta1(sources: &Sources, out: &mut Validated) -> Vec<crd::BGPPeer> {
    let mut all_peers: Vec<crd::BGPPeer> = sources.peers.clone();
    for old in &sources.peers_v1beta1 {
        let name = old.metadata.name.clone().unwrap_or_default();
        out.warnings.push(Diagnostic::new(
            "BGPPeer",
            &name,
            "apiVersion",
            "metallb.io/v1beta1 is deprecated; it is read as v1beta2. Write it as metallb.io/v1beta2",
        ));
        all_peers.push(old.clone().into());
    }
    all_peers
}

fn timer(f: &mut Findings, field: &str, text: &Option<String>) -> Option<Duration> {
    let text = text.as_deref()?;
    match duration::parse(text) {
        Ok(d) => Some(d),
        Err(e) => {
            f.error(field, e);
            None
        }
    }
}

pub(super) fn peers(objects: &[Named<crd::BGPPeer>], out: &mut Validated) {
    for n in objects {
        let mut f = Findings::new("BGPPeer", &n.name, n.legacy);
        let s = &n.object.spec;
        if out.config.peers.contains_key(&n.name) {
            f.error("metadata.name", "another BGPPeer has the same name");
        }
        if s.my_asn == 0 {
            f.error(
                "spec.myASN",
                "is required: an AS number from 1 to 4294967295",
            );
        }
        // MetalLB reads peerASN 0 as unset.
        let remote_asn = match (s.peer_asn.filter(|a| *a != 0), s.dynamic_asn.as_deref()) {
            (Some(_), Some(_)) => {
                f.error(
                    "spec.dynamicASN",
                    "peerASN and dynamicASN are mutually exclusive",
                );
                None
            }
            (None, None) => {
                f.error("spec.peerASN", "one of peerASN and dynamicASN is required");
                None
            }
            (Some(asn), None) => Some(RemoteAsn::Fixed(asn)),
            (None, Some("internal")) => Some(RemoteAsn::Internal),
            (None, Some("external")) => Some(RemoteAsn::External),
            (None, Some(other)) => {
                f.error(
                    "spec.dynamicASN",
                    format!("{other:?} is neither \"internal\" nor \"external\""),
                );
                None
            }
        };
        if s.local_asn == Some(0) {
            f.error("spec.localASN", "must be from 1 to 4294967295");
        }
        let ibgp = match remote_asn {
            Some(RemoteAsn::Fixed(a)) => a == s.my_asn,
            Some(RemoteAsn::Internal) => true,
            _ => false,
        };
        let ebgp_multi_hop = s.ebgp_multi_hop.unwrap_or(false);
        if ebgp_multi_hop && ibgp {
            f.error(
                "spec.ebgpMultiHop",
                "applies to eBGP sessions only, and this peer is iBGP",
            );
        }
        let address = s.peer_address.as_deref().filter(|a| !a.is_empty());
        let interface = s.interface.as_deref().filter(|i| !i.is_empty());
        let endpoint = match (address, interface) {
            (Some(_), Some(_)) => {
                f.error(
                    "spec.interface",
                    "peerAddress and interface are mutually exclusive",
                );
                None
            }
            (None, None) => {
                f.error(
                    "spec.peerAddress",
                    "one of peerAddress and interface is required",
                );
                None
            }
            (Some(a), None) => match a.parse::<IpAddr>() {
                Ok(ip) => Some(PeerEndpoint::Address(ip)),
                Err(_) => {
                    f.error("spec.peerAddress", format!("{a:?} is not an IP address"));
                    None
                }
            },
            (None, Some(i)) if !is_device_name(i) => {
                f.error(
                    "spec.interface",
                    format!("{i:?} is not a network device name {DEVICE_NAME_RULE}"),
                );
                None
            }
            (None, Some(i)) => Some(PeerEndpoint::Interface(i.to_string())),
        };
        let port = s.peer_port.unwrap_or(179);
        if !(1..=16384).contains(&port) {
            f.error(
                "spec.peerPort",
                format!("{port} is outside 1..=16384, the range MetalLB's CRD allows"),
            );
        }
        let source_address = s
            .source_address
            .as_deref()
            .filter(|a| !a.is_empty())
            .and_then(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| {
                        f.error("spec.sourceAddress", format!("{a:?} is not an IP address"))
                    })
                    .ok()
            });
        let router_id = s.router_id.as_deref().filter(|a| !a.is_empty()).and_then(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| f.error("spec.routerID", format!("{a:?} is not an IPv4 address: BGP identifiers are 32 bits (RFC 6286)")))
                .ok()
        });

        let hold = timer(&mut f, "spec.holdTime", &s.hold_time);
        let keepalive = timer(&mut f, "spec.keepaliveTime", &s.keepalive_time);
        let (hold_time, keepalive_time) = match (hold, keepalive) {
            (Some(h), Some(k)) => (Some(h), Some(k)),
            (Some(h), None) if s.keepalive_time.is_none() => (Some(h), Some(h / 3)),
            (None, Some(k)) if s.hold_time.is_none() => (Some(k * 3), Some(k)),
            _ => (None, None),
        };
        if let Some(h) = hold_time {
            // RFC 4271 4.2: the hold time is zero or at least three seconds; Go rounds down to whole seconds first.
            let whole = Duration::from_secs(h.as_secs());
            if !whole.is_zero() && whole < Duration::from_secs(3) {
                let field = if hold.is_some() {
                    "spec.holdTime"
                } else {
                    "spec.keepaliveTime"
                };
                f.error(
                    field,
                    format!(
                        "hold time {} must be 0 or at least 3s (RFC 4271)",
                        duration::format(h)
                    ),
                );
            }
        }
        if let (Some(h), Some(k)) = (hold_time, keepalive_time)
            && k > h
        {
            f.error(
                "spec.keepaliveTime",
                format!(
                    "{} is above the hold time {}",
                    duration::format(k),
                    duration::format(h)
                ),
            );
        }
        let connect_time = timer(&mut f, "spec.connectTime", &s.connect_time);
        if let Some(c) = connect_time
            && (c.subsec_nanos() != 0 || !(1..=65535).contains(&c.as_secs()))
        {
            f.error(
                "spec.connectTime",
                "must be a whole number of seconds from 1s to 65535s",
            );
        }

        let node_selectors = f.selectors("spec.nodeSelectors", &s.node_selectors);
        let secret = s.password_secret.as_ref().and_then(|r| {
            r.name
                .clone()
                .filter(|n| !n.is_empty())
                .map(|name| PeerPassword::Secret {
                    name,
                    namespace: r.namespace.clone(),
                })
        });
        let inline = s.password.clone().filter(|p| !p.is_empty());
        let password = match (inline, secret) {
            (Some(_), Some(_)) => {
                f.error(
                    "spec.passwordSecret",
                    "password and passwordSecret are mutually exclusive",
                );
                None
            }
            (Some(p), None) if p.contains(['\n', '\r']) => {
                f.error("spec.password", "contains a line break");
                None
            }
            (Some(p), None) => Some(PeerPassword::Inline(p)),
            (None, secret) => secret,
        };
        let bfd_profile = s.bfd_profile.clone().filter(|b| !b.is_empty());
        if let Some(b) = &bfd_profile
            && !out.config.bfd_profiles.contains_key(b)
        {
            f.error(
                "spec.bfdProfile",
                format!("BFDProfile/{b} does not exist or is invalid"),
            );
        }
        let vrf = s.vrf.clone().filter(|v| !v.is_empty());
        if let Some(v) = &vrf
            && !is_device_name(v)
        {
            f.error(
                "spec.vrf",
                format!("{v:?} is not a network device name {DEVICE_NAME_RULE}"),
            );
        }
        if s.disable_mp == Some(true) {
            f.warn(
                "spec.disableMP",
                if s.dual_stack_address_family == Some(true) {
                    "deprecated by MetalLB, and ignored: dualStackAddressFamily is set, so the session carries both \
                     address families (as in MetalLB)"
                } else {
                    "deprecated by MetalLB in favour of dualStackAddressFamily; not needed: a session carries only \
                     the routes of its own address family unless dualStackAddressFamily is set"
                },
            );
        }
        let valid = f.finish(out);
        if let (true, Some(remote_asn), Some(endpoint)) = (valid, remote_asn, endpoint) {
            let peer = Peer {
                name: n.name.clone(),
                my_asn: s.my_asn,
                remote_asn,
                local_asn: s.local_asn,
                endpoint,
                port,
                source_address,
                router_id,
                node_selectors,
                password,
                hold_time,
                keepalive_time,
                connect_time,
                ebgp_multi_hop,
                vrf,
                bfd_profile,
                graceful_restart: s.enable_graceful_restart.unwrap_or(false),
                dual_stack_address_family: s.dual_stack_address_family.unwrap_or(false),
            };
            out.config.peers.insert(n.name.clone(), peer);
        }
    }
}

/// What a Linux network device name may be, as the error says it.
const DEVICE_NAME_RULE: &str = "(at most 15 bytes, no '/', no whitespace)";

/// Whether `name` can name a Linux network device (`dev_valid_name`): 1 to 15 bytes, no '/', no whitespace, not
/// "." or "..".
fn is_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.contains('/')
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != ".."
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::SecretReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::super::fixtures::*;
    use super::super::validate;
    use super::*;
    use crate::config::crd::BFDProfileSpec;

    #[test]
    fn a_valid_peer_gets_defaults_and_derived_timers() {
        let v = validate(&Sources {
            peers: vec![with(|s| s.hold_time = Some("90s".into()))],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        let p = &v.config.peers["p"];
        assert_eq!(p.port, 179);
        assert_eq!(p.remote_asn, RemoteAsn::Fixed(64501));
        assert_eq!(
            p.endpoint,
            PeerEndpoint::Address("203.0.113.254".parse().unwrap())
        );
        assert_eq!(p.hold_time, Some(Duration::from_secs(90)));
        assert_eq!(p.keepalive_time, Some(Duration::from_secs(30)));

        let v = validate(&Sources {
            peers: vec![with(|s| s.keepalive_time = Some("20s".into()))],
            ..Default::default()
        });
        assert_eq!(v.config.peers["p"].hold_time, Some(Duration::from_secs(60)));
    }

    #[test]
    fn asn_rules() {
        assert!(has(
            &peer_errors(with(|s| s.my_asn = 0)),
            "BGPPeer",
            "p",
            "spec.myASN",
            "required"
        ));
        assert!(has(
            &peer_errors(with(|s| s.peer_asn = None)),
            "BGPPeer",
            "p",
            "spec.peerASN",
            "required"
        ));
        assert!(has(
            &peer_errors(with(|s| s.dynamic_asn = Some("external".into()))),
            "BGPPeer",
            "p",
            "spec.dynamicASN",
            "mutually exclusive"
        ));
        assert!(has(
            &peer_errors(with(|s| {
                s.peer_asn = None;
                s.dynamic_asn = Some("both".into());
            })),
            "BGPPeer",
            "p",
            "spec.dynamicASN",
            "\"both\""
        ));
        assert!(
            peer_errors(with(|s| {
                s.peer_asn = None;
                s.dynamic_asn = Some("internal".into());
            }))
            .is_empty()
        );
        assert!(has(
            &peer_errors(with(|s| {
                s.peer_asn = Some(64500);
                s.ebgp_multi_hop = Some(true);
            })),
            "BGPPeer",
            "p",
            "spec.ebgpMultiHop",
            "iBGP"
        ));
        assert!(peer_errors(with(|s| s.ebgp_multi_hop = Some(true))).is_empty());
        assert!(has(
            &peer_errors(with(|s| s.local_asn = Some(0))),
            "BGPPeer",
            "p",
            "spec.localASN",
            "1"
        ));
    }

    #[test]
    fn an_interface_peer_is_unnumbered_and_its_name_a_device_name() {
        let unnumbered = |name: &str| {
            with(|s| {
                s.peer_address = None;
                s.interface = Some(name.into());
            })
        };
        let e = peer_errors(unnumbered("eth0"));
        assert!(e.is_empty(), "{e:?}");
        let v = validate(&Sources {
            peers: vec![unnumbered("eth0")],
            ..Default::default()
        });
        assert!(
            v.warnings.is_empty(),
            "acted on, so no warning: {:?}",
            v.warnings
        );
        assert_eq!(
            v.config.peers.get("p").map(|p| &p.endpoint),
            Some(&PeerEndpoint::Interface("eth0".into()))
        );
        for bad in ["eth0\nx", "a/b", "sixteen-bytes-xx", "has space"] {
            let e = peer_errors(unnumbered(bad));
            assert!(
                has(
                    &e,
                    "BGPPeer",
                    "p",
                    "spec.interface",
                    "not a network device name"
                ),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn endpoint_and_address_rules() {
        let e = peer_errors(with(|s| s.peer_address = None));
        assert!(has(&e, "BGPPeer", "p", "spec.peerAddress", "required"));
        let e = peer_errors(with(|s| s.interface = Some("eth0".into())));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.interface",
            "mutually exclusive"
        ));
        let e = peer_errors(with(|s| s.peer_address = Some("192.0.2.300".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.peerAddress", "not an IP"));
        let e = peer_errors(with(|s| s.source_address = Some("nope".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.sourceAddress", "not an IP"));
        let e = peer_errors(with(|s| s.router_id = Some("2001:db8::1".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.routerID", "IPv4"));
        let e = peer_errors(with(|s| s.peer_port = Some(0)));
        assert!(has(&e, "BGPPeer", "p", "spec.peerPort", "1..=16384"));
    }

    #[test]
    fn timer_rules() {
        let e = peer_errors(with(|s| s.hold_time = Some("2s".into())));
        assert!(
            has(&e, "BGPPeer", "p", "spec.holdTime", "0 or at least 3s"),
            "{:?}",
            lines(&e)
        );
        assert!(peer_errors(with(|s| s.hold_time = Some("0s".into()))).is_empty());
        assert!(peer_errors(with(|s| s.hold_time = Some("3s".into()))).is_empty());
        let e = peer_errors(with(|s| {
            s.hold_time = Some("30s".into());
            s.keepalive_time = Some("31s".into());
        }));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.keepaliveTime",
            "above the hold time 30s"
        ));
        let e = peer_errors(with(|s| s.hold_time = Some("ninety".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.holdTime", "not a duration"));
        let e = peer_errors(with(|s| s.keepalive_time = Some("-1s".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.keepaliveTime", "negative"));
        let e = peer_errors(with(|s| s.keepalive_time = Some("500ms".into())));
        assert!(
            has(&e, "BGPPeer", "p", "spec.keepaliveTime", "0 or at least 3s"),
            "{:?}",
            lines(&e)
        );
        let e = peer_errors(with(|s| s.connect_time = Some("1.5s".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.connectTime", "whole number"));
        assert!(peer_errors(with(|s| s.connect_time = Some("120s".into()))).is_empty());
    }

    #[test]
    fn password_rules() {
        let secret = Some(SecretReference {
            name: Some("s".into()),
            namespace: None,
        });
        let e = peer_errors(with(|s| {
            s.password = Some("pw".into());
            s.password_secret = secret.clone();
        }));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.passwordSecret",
            "mutually exclusive"
        ));
        // An empty reference, as MetalLB's converter writes, is no reference.
        let v = validate(&Sources {
            peers: vec![with(|s| {
                s.password = Some("pw".into());
                s.password_secret = Some(SecretReference::default());
            })],
            ..Default::default()
        });
        assert_eq!(
            v.config.peers["p"].password,
            Some(PeerPassword::Inline("pw".into()))
        );
        assert!(
            !format!("{:?}", v.config.peers["p"]).contains("pw\""),
            "Debug leaks the password"
        );
        let e = peer_errors(with(|s| s.password = Some("a\nb".into())));
        assert!(has(&e, "BGPPeer", "p", "spec.password", "line break"));
    }

    #[test]
    fn peer_selectors_and_bfd_references() {
        let e = peer_errors(with(|s| {
            s.node_selectors = Some(vec![LabelSelector::default(), bad_selector()])
        }));
        assert!(has(&e, "BGPPeer", "p", "spec.nodeSelectors[1]", "Equals"));
        let e = peer_errors(with(|s| s.bfd_profile = Some("missing".into())));
        assert!(has(
            &e,
            "BGPPeer",
            "p",
            "spec.bfdProfile",
            "BFDProfile/missing does not exist"
        ));

        let profile = crd::BFDProfile {
            metadata: meta("fast"),
            spec: BFDProfileSpec {
                receive_interval: Some(300),
                ..Default::default()
            },
            status: None,
        };
        let v = validate(&Sources {
            bfd_profiles: vec![profile.clone()],
            peers: vec![with(|s| s.bfd_profile = Some("fast".into()))],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        assert!(
            v.warnings.is_empty(),
            "BFD is acted on: {:?}",
            lines(&v.warnings)
        );
        // A VRF is acted on, BFD inside one too.
        let v = validate(&Sources {
            bfd_profiles: vec![profile],
            peers: vec![with(|s| {
                s.bfd_profile = Some("fast".into());
                s.vrf = Some("red".into());
            })],
            ..Default::default()
        });
        assert!(v.errors.is_empty(), "{:?}", lines(&v.errors));
        assert!(v.warnings.is_empty(), "{:?}", lines(&v.warnings));
        for bad in ["a/b", "sixteen-bytes-xx", "re d"] {
            let e = peer_errors(with(|s| s.vrf = Some(bad.into())));
            assert!(
                has(&e, "BGPPeer", "p", "spec.vrf", "not a network device name"),
                "{bad}: {:?}",
                lines(&e)
            );
        }
    }

    #[test]
    fn v1beta1_peers_are_read_as_v1beta2_with_a_warning() {
        let old: crd::v1beta1::BGPPeer = serde_json::from_value(serde_json::json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BGPPeer", "metadata": {"name": "old"},
            "spec": {"myASN": 1, "peerASN": 2, "peerAddress": "203.0.113.253"}
        }))
        .unwrap();
        let v = validate(&Sources {
            peers_v1beta1: vec![old],
            ..Default::default()
        });
        assert!(v.config.peers.contains_key("old"));
        assert!(has(
            &v.warnings,
            "BGPPeer",
            "old",
            "apiVersion",
            "deprecated"
        ));
    }

    #[test]
    fn duplicate_names_reject_the_second() {
        let v = validate(&Sources {
            peers: vec![peer("p"), with(|s| s.my_asn = 7)],
            ..Default::default()
        });
        assert!(has(&v.errors, "BGPPeer", "p", "metadata.name", "same name"));
        assert_eq!(v.config.peers["p"].my_asn, 64500, "the first one is kept");
    }
}
