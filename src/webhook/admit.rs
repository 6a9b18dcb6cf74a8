//! The admission verdict: the objects already in the configuration namespace and one change in, allowed or denied
//! out, with the reasons. Pure; the server lists the objects and carries the answer.
//!
//! The verdict is the one `config check` and the agents reach: the change is applied to the listed objects and the
//! result goes through [`crate::config::validate()`], the same function. A change is denied when the object it
//! writes has an error, or when it gives another object an error that object did not have (a BGPAdvertisement whose
//! `localPref` now conflicts, a BGPPeer whose BFDProfile is being deleted). Errors other objects already had are
//! theirs, and do not block an unrelated change.
//!
//! Objects are often applied together (`kubectl apply -f dir/`) in an order nobody chose, so a reference to an
//! object that does not exist yet (a BGPPeer's `bfdProfile`, a BGPAdvertisement's community alias) is not a reason
//! to deny: the object is judged as if the reference were absent, and the missing reference comes back as a warning,
//! which kubectl prints. MetalLB's webhook blanks those references for the same reason, existing or not; IronLB
//! keeps a reference to an object that exists, so that object's rules (BFD echo mode with an IPv6 peer) still apply.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::load::{Document, decode};
use crate::config::{Diagnostic, Sources, validate};

/// What the request does to one object.
#[derive(Clone, Debug)]
pub enum ConfigChange {
    /// CREATE or UPDATE: the object as it would be stored.
    Put(Value),
    /// DELETE: the object as it is stored.
    Delete(Value),
}

/// The answer to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmissionVerdict {
    pub allowed: bool,
    /// Why it was denied: every error, `Kind/name: field: message`, one after another.
    pub denied_because: Vec<String>,
    /// Shown by kubectl as `Warning:` lines, allowed or not.
    pub warnings: Vec<String>,
}

impl AdmissionVerdict {
    /// The denial as one message, the way the API server passes it on.
    pub fn message(&self) -> String {
        self.denied_because.join("; ")
    }
}

/// The verdict on `change`, given the metallb.io objects now stored in `config_namespace` (as the API lists them,
/// malformed ones included).
pub fn admit(
    existing: &[Value],
    change: &ConfigChange,
    config_namespace: &str,
) -> AdmissionVerdict {
    let (object, deleting) = match change {
        ConfigChange::Put(object) => (object, false),
        ConfigChange::Delete(object) => (object, true),
    };
    let document = decode(object.clone());
    let Some((kind, name)) = identity(&document) else {
        // Not a kind IronLB reads (the webhook is registered for those only): nothing to say about it.
        return AdmissionVerdict {
            allowed: true,
            ..AdmissionVerdict::default()
        };
    };
    if let Document::Malformed(error) = &document {
        return if deleting {
            // Deleting a malformed object can only help.
            AdmissionVerdict {
                allowed: true,
                ..AdmissionVerdict::default()
            }
        } else {
            denied(vec![error.to_string()], Vec::new())
        };
    }
    if !deleting {
        let mut alone = Sources::from_documents([document.clone()]);
        let elsewhere = alone.take_other_namespaces(config_namespace);
        if !elsewhere.is_empty() {
            return denied(
                elsewhere.iter().map(ToString::to_string).collect(),
                Vec::new(),
            );
        }
    }

    let this = |d: &Document| identity(d).is_some_and(|id| id == (kind.clone(), name.clone()));
    let stored: Vec<Document> = existing.iter().map(|v| decode(v.clone())).collect();
    let mut before = Sources::from_documents(stored.iter().cloned());
    let mut after = Sources::from_documents(stored.into_iter().filter(|d| !this(d)));
    let mut warnings = Vec::new();
    if !deleting {
        after.add(document);
        // References not resolved yet become warnings, and the objects are judged without them. What a deletion
        // breaks is judged with every reference as it stands: that is what the agents will read.
        let unresolved = without_dangling_references(&mut after);
        warnings.extend(
            unresolved
                .iter()
                .filter(|d| d.kind == kind && d.name == name)
                .map(ToString::to_string),
        );
        without_dangling_references(&mut before);
    }

    let was = validate(&before);
    let will = validate(&after);
    let had: BTreeSet<&Diagnostic> = was.errors.iter().collect();
    let errors: Vec<String> = will
        .errors
        .iter()
        .filter(|e| (!deleting && e.kind == kind && e.name == name) || !had.contains(e))
        .map(ToString::to_string)
        .collect();
    warnings.extend(
        will.warnings
            .iter()
            .filter(|w| !deleting && w.kind == kind && w.name == name)
            .map(ToString::to_string),
    );
    if errors.is_empty() {
        AdmissionVerdict {
            allowed: true,
            denied_because: Vec::new(),
            warnings,
        }
    } else if deleting {
        let because = errors
            .into_iter()
            .map(|e| format!("deleting {kind}/{name} would leave {e}"))
            .collect();
        denied(because, warnings)
    } else {
        denied(errors, warnings)
    }
}

fn denied(denied_because: Vec<String>, warnings: Vec<String>) -> AdmissionVerdict {
    AdmissionVerdict {
        allowed: false,
        denied_because,
        warnings,
    }
}

/// The kind and name a document is about; `None` for what is not configuration.
fn identity(document: &Document) -> Option<(String, String)> {
    let of = |kind: &str, meta: &kube::core::ObjectMeta| {
        Some((kind.to_string(), meta.name.clone().unwrap_or_default()))
    };
    match document {
        Document::IPAddressPool(o) => of("IPAddressPool", &o.metadata),
        Document::L2Advertisement(o) => of("L2Advertisement", &o.metadata),
        Document::BGPAdvertisement(o) => of("BGPAdvertisement", &o.metadata),
        Document::Community(o) => of("Community", &o.metadata),
        Document::BFDProfile(o) => of("BFDProfile", &o.metadata),
        Document::BGPPeer(o) => of("BGPPeer", &o.metadata),
        Document::BGPPeerV1beta1(o) => of("BGPPeer", &o.metadata),
        Document::Malformed(d) => Some((d.kind.clone(), d.name.clone())),
        Document::Legacy(_) | Document::Ignored(_) => None,
    }
}

/// Drops the references to objects that do not exist among `sources`: a BGPPeer's `bfdProfile` naming no
/// BFDProfile, a BGPAdvertisement's community that is neither a value (it has a `:`) nor a defined alias. Returns a
/// warning for each, on the object that held it.
fn without_dangling_references(sources: &mut Sources) -> Vec<Diagnostic> {
    let profiles: BTreeSet<String> = sources
        .bfd_profiles
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let aliases: BTreeSet<String> = sources
        .communities
        .iter()
        .flat_map(|c| c.spec.communities.iter().flatten())
        .filter_map(|a| a.name.clone())
        .collect();
    let mut found = Vec::new();
    let mut unresolved_profile = |name: &str, profile: &mut Option<String>| {
        if let Some(p) = profile
            .as_deref()
            .filter(|p| !p.is_empty() && !profiles.contains(*p))
        {
            found.push(Diagnostic::new(
                "BGPPeer",
                name,
                "spec.bfdProfile",
                format!(
                    "BFDProfile/{p} does not exist (yet); the agents leave this peer out until it does"
                ),
            ));
            *profile = None;
        }
    };
    for peer in &mut sources.peers {
        let name = peer.metadata.name.clone().unwrap_or_default();
        unresolved_profile(&name, &mut peer.spec.bfd_profile);
    }
    for peer in &mut sources.peers_v1beta1 {
        let name = peer.metadata.name.clone().unwrap_or_default();
        unresolved_profile(&name, &mut peer.spec.bfd_profile);
    }
    for adv in &mut sources.bgp_advertisements {
        let name = adv.metadata.name.clone().unwrap_or_default();
        if let Some(communities) = &mut adv.spec.communities {
            communities.retain(|c| {
                let resolved = c.contains(':') || aliases.contains(c);
                if !resolved {
                    found.push(Diagnostic::new(
                        "BGPAdvertisement",
                        &name,
                        "spec.communities",
                        format!(
                            "community alias {c:?} is not defined in any Community (yet); the agents leave this \
                             advertisement out until it is"
                        ),
                    ));
                }
                resolved
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NS: &str = "metallb-system";

    fn pool(name: &str, addresses: &[&str]) -> Value {
        json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"addresses": addresses},
        })
    }

    fn peer(name: &str, address: &str, bfd: Option<&str>) -> Value {
        let mut spec = json!({"myASN": 64500, "peerASN": 64501, "peerAddress": address});
        if let Some(b) = bfd {
            spec["bfdProfile"] = b.into();
        }
        json!({
            "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": name, "namespace": NS}, "spec": spec,
        })
    }

    fn bfd(name: &str, echo: bool) -> Value {
        json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile",
            "metadata": {"name": name, "namespace": NS}, "spec": {"echoMode": echo},
        })
    }

    fn adv(name: &str, local_pref: u32, communities: &[&str]) -> Value {
        json!({
            "apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"localPref": local_pref, "communities": communities},
        })
    }

    #[test]
    fn a_valid_pool_is_allowed_and_an_invalid_one_denied_with_the_check_message() {
        let ok = admit(&[], &ConfigChange::Put(pool("a", &["192.0.2.0/28"])), NS);
        assert!(ok.allowed && ok.denied_because.is_empty(), "{ok:?}");
        // What `config check` warns about comes back as warnings.
        assert!(
            ok.warnings
                .iter()
                .any(|w| w.starts_with("IPAddressPool/a: no L2Advertisement")),
            "{ok:?}"
        );
        let bad = admit(&[], &ConfigChange::Put(pool("b", &["192.0.2.300/28"])), NS);
        assert!(!bad.allowed);
        assert!(
            bad.message()
                .starts_with("IPAddressPool/b: spec.addresses[0]: "),
            "{}",
            bad.message()
        );
    }

    #[test]
    fn a_pool_overlapping_a_stored_one_is_denied_and_the_stored_one_may_be_updated() {
        let stored = [pool("old", &["192.0.2.0/28"])];
        let overlap = admit(
            &stored,
            &ConfigChange::Put(pool("new", &["192.0.2.8/29"])),
            NS,
        );
        assert!(!overlap.allowed);
        assert!(
            overlap.message().contains("IPAddressPool/new"),
            "{}",
            overlap.message()
        );
        // The same name is an update of that object, not an overlap with itself.
        let update = admit(
            &stored,
            &ConfigChange::Put(pool("old", &["192.0.2.0/29"])),
            NS,
        );
        assert!(update.allowed, "{:?}", update);
    }

    #[test]
    fn objects_outside_the_configuration_namespace_are_denied_as_metallb_does() {
        let mut elsewhere = pool("a", &["192.0.2.0/28"]);
        elsewhere["metadata"]["namespace"] = "default".into();
        let v = admit(&[], &ConfigChange::Put(elsewhere), NS);
        assert!(!v.allowed);
        assert!(
            v.message()
                .contains("resource must be created in metallb-system namespace"),
            "{}",
            v.message()
        );
    }

    #[test]
    fn a_malformed_object_is_denied_naming_the_field() {
        let mut p = pool("a", &["192.0.2.0/28"]);
        p["spec"]["autoAssign"] = "sometimes".into();
        let v = admit(&[], &ConfigChange::Put(p), NS);
        assert!(!v.allowed);
        assert!(
            v.message()
                .starts_with("IPAddressPool/a: spec.autoAssign: "),
            "{}",
            v.message()
        );
    }

    #[test]
    fn a_missing_bfd_profile_is_a_warning_and_an_existing_one_is_checked() {
        let v = admit(
            &[],
            &ConfigChange::Put(peer("p", "2001:db8::1", Some("later"))),
            NS,
        );
        assert!(v.allowed, "{v:?}");
        assert!(
            v.warnings
                .iter()
                .any(|w| w.contains("BFDProfile/later does not exist")),
            "{v:?}"
        );
        // Echo mode toward a peer that gets IPv6 routes is refused when the profile is there to check: the error is
        // the advertisement's, which the peer would break.
        let stored = [
            bfd("echo", true),
            pool("v6", &["2001:db8::/124"]),
            adv("all", 100, &[]),
        ];
        let v = admit(
            &stored,
            &ConfigChange::Put(peer("p", "2001:db8::1", Some("echo"))),
            NS,
        );
        assert!(!v.allowed, "{v:?}");
        assert!(
            v.message()
                .starts_with("BGPAdvertisement/all: spec.peers: "),
            "{}",
            v.message()
        );
        let v = admit(
            &stored,
            &ConfigChange::Put(peer("p", "2001:db8::1", None)),
            NS,
        );
        assert!(v.allowed, "{v:?}");
    }

    #[test]
    fn deleting_a_bfd_profile_a_peer_uses_is_denied_and_an_unused_one_allowed() {
        let stored = [
            bfd("slow", false),
            bfd("unused", false),
            peer("p", "192.0.2.1", Some("slow")),
        ];
        let v = admit(&stored, &ConfigChange::Delete(bfd("slow", false)), NS);
        assert!(!v.allowed);
        assert!(
            v.message()
                .starts_with("deleting BFDProfile/slow would leave BGPPeer/p: spec.bfdProfile"),
            "{}",
            v.message()
        );
        assert!(admit(&stored, &ConfigChange::Delete(bfd("unused", false)), NS).allowed);
    }

    #[test]
    fn a_change_that_breaks_another_object_is_denied_but_an_old_error_elsewhere_does_not_block() {
        // Two advertisements for every peer and node with different localPref: the later name is the one MetalLB's
        // rule refuses, whichever of the two is being written.
        let stored = [pool("p", &["192.0.2.0/28"]), adv("b", 100, &[])];
        let v = admit(&stored, &ConfigChange::Put(adv("a", 200, &[])), NS);
        assert!(!v.allowed, "{v:?}");
        assert!(
            v.message()
                .starts_with("BGPAdvertisement/b: spec.localPref: "),
            "{}",
            v.message()
        );
        assert!(admit(&stored, &ConfigChange::Put(adv("a", 100, &[])), NS).allowed);
        // An unrelated valid pool is allowed next to a stored invalid object.
        let stored = [pool("broken", &["not-an-address"])];
        assert!(
            admit(
                &stored,
                &ConfigChange::Put(pool("fine", &["192.0.2.0/28"])),
                NS
            )
            .allowed
        );
    }

    #[test]
    fn an_undefined_community_alias_is_a_warning_and_a_bad_value_an_error() {
        let v = admit(&[], &ConfigChange::Put(adv("a", 100, &["later-alias"])), NS);
        assert!(v.allowed, "{v:?}");
        assert!(
            v.warnings.iter().any(|w| w.contains("\"later-alias\"")),
            "{v:?}"
        );
        let v = admit(&[], &ConfigChange::Put(adv("a", 100, &["65536:1"])), NS);
        assert!(!v.allowed, "{v:?}");
    }
}
