//! Reading configuration objects from YAML files, directories and strings, and sorting them by kind.
//!
//! This is the only part of `config` that touches the file system. It turns text into typed objects and nothing
//! else: an object that parses but has bad values is validation's business. An object that does not even fit its
//! type (a string where MetalLB wants a number) is kept as a [`Diagnostic`] for that one object, so one bad
//! document never hides the others. Only unreadable files and YAML syntax errors stop loading.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::crd::{
    self, BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};
use super::validate::Diagnostic;

/// Why files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: document {document}: invalid YAML: {source}", path.display())]
    Yaml {
        path: PathBuf,
        /// 1-based index of the document in its file.
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The legacy ConfigMap payload, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacySource {
    /// `ConfigMap/<name>` for a whole object, or the file name for a bare payload; used in diagnostics.
    pub name: String,
    /// The ConfigMap's namespace, when known.
    pub namespace: Option<String>,
    /// The text under the `config` key.
    pub payload: String,
}

/// One YAML document, classified.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    IPAddressPool(IPAddressPool),
    L2Advertisement(L2Advertisement),
    BGPAdvertisement(BGPAdvertisement),
    Community(Community),
    BFDProfile(BFDProfile),
    BGPPeer(BGPPeer),
    BGPPeerV1beta1(crd::v1beta1::BGPPeer),
    Legacy(LegacySource),
    /// A metallb.io object that does not fit its type; reported as an error for that object only.
    Malformed(Diagnostic),
    /// Any other object (a Namespace, a Deployment, a Service…): not configuration, skipped with this note.
    Ignored(String),
}

/// Reads every file given, and every `*.yaml`/`*.yml` under every directory given (recursively, in sorted order).
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut docs = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| LoadError::Read {
            path: file.clone(),
            source,
        })?;
        docs.extend(parse_documents(&text, &file)?);
    }
    Ok(docs)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(entry);
        }
    }
    Ok(())
}

/// Parses multi-document YAML text; `origin` names it in errors. Empty documents are skipped.
pub fn parse_documents(text: &str, origin: &Path) -> Result<Vec<Document>, LoadError> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml_err = |source| LoadError::Yaml {
            path: origin.to_path_buf(),
            document: i + 1,
            source,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(yaml_err)?;
        if value.is_null() {
            continue;
        }
        let value: Value = serde_yaml::from_value(value).map_err(yaml_err)?;
        classify(value, &origin.display().to_string(), &mut docs);
    }
    Ok(docs)
}

/// Decodes one object (not a `List`) as `config check` does: the one decoder of configuration, which the agent's
/// watches go through too.
pub fn decode(value: Value) -> Document {
    let mut out = Vec::with_capacity(1);
    classify(value, "<object>", &mut out);
    out.pop()
        .unwrap_or_else(|| Document::Ignored("an empty List".into()))
}

/// Sorts one object by apiVersion and kind. `origin` names a bare legacy payload, which has no name of its own.
/// A `List` is opened and each item classified.
pub fn classify(mut value: Value, origin: &str, out: &mut Vec<Document>) {
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    if api_version.is_empty() && kind.is_empty() {
        let legacy_keys = ["peers", "address-pools", "bgp-communities", "bfd-profiles"];
        if legacy_keys.iter().any(|k| value.get(k).is_some()) {
            // A bare legacy payload: keep it as text, as the ConfigMap would hold it.
            let payload = serde_yaml::to_string(&value).unwrap_or_default();
            out.push(Document::Legacy(LegacySource {
                name: origin.to_string(),
                namespace: None,
                payload,
            }));
        } else {
            out.push(Document::Ignored(format!(
                "{origin}: a document without apiVersion and kind is skipped"
            )));
        }
        return;
    }
    if kind == "List" {
        if let Some(Value::Array(items)) = value.get_mut("items").map(Value::take) {
            for item in items {
                classify(item, origin, out);
            }
        }
        return;
    }
    if api_version == "v1" && kind == "ConfigMap" {
        match value["data"]["config"].as_str() {
            Some(payload) => out.push(Document::Legacy(LegacySource {
                name: format!("ConfigMap/{name}"),
                namespace: value["metadata"]["namespace"].as_str().map(str::to_string),
                payload: payload.to_string(),
            })),
            None => out.push(Document::Ignored(format!(
                "ConfigMap/{name}: no `config` key, so not a MetalLB ConfigMap"
            ))),
        }
        return;
    }
    let Some(version) = api_version.strip_prefix("metallb.io/") else {
        out.push(Document::Ignored(format!(
            "{kind}/{name} ({api_version}): not a metallb.io object"
        )));
        return;
    };
    let malformed = |field: &str, message: String| {
        Document::Malformed(Diagnostic::new(&kind, &name, field, message))
    };
    if name.is_empty() {
        out.push(malformed("metadata.name", "is required".into()));
        return;
    }
    // MetalLB lets every kind but the pool and the peer leave `spec` out; serde needs it present.
    let spec_optional = !matches!(kind.as_str(), "IPAddressPool" | "BGPPeer");
    if value.get("spec").is_none_or(Value::is_null) {
        if spec_optional {
            value["spec"] = Value::Object(Default::default());
        } else {
            out.push(malformed("spec", "is required".into()));
            return;
        }
    }
    // The path serde was at names the field; MetalLB's users find `spec.localPref` faster than "invalid value".
    fn typed<T: DeserializeOwned>(value: Value, kind: &str, name: &str) -> Result<T, Diagnostic> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            Diagnostic::new(kind, name, &field, e.into_inner().to_string())
        })
    }
    let doc = match (version, kind.as_str()) {
        ("v1beta1", "IPAddressPool") => typed(value, &kind, &name).map(Document::IPAddressPool),
        ("v1beta1", "L2Advertisement") => typed(value, &kind, &name).map(Document::L2Advertisement),
        ("v1beta1", "BGPAdvertisement") => {
            typed(value, &kind, &name).map(Document::BGPAdvertisement)
        }
        ("v1beta1", "Community") => typed(value, &kind, &name).map(Document::Community),
        ("v1beta1", "BFDProfile") => typed(value, &kind, &name).map(Document::BFDProfile),
        ("v1beta2", "BGPPeer") => typed(value, &kind, &name).map(Document::BGPPeer),
        ("v1beta1", "BGPPeer") => typed(value, &kind, &name).map(Document::BGPPeerV1beta1),
        (_, "ConfigurationState" | "ServiceL2Status" | "ServiceBGPStatus") => {
            Ok(Document::Ignored(format!(
                "{kind}/{name}: a MetalLB status object, not configuration"
            )))
        }
        _ => Ok(Document::Ignored(format!(
            "{kind}/{name}: {api_version} {kind} is not a kind IronLB reads"
        ))),
    };
    out.push(doc.unwrap_or_else(Document::Malformed));
}

/// Every configuration object, by kind: what [`super::validate()`] takes. The agent fills it from API watches; the
/// CLI from files with [`Sources::from_documents`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sources {
    pub pools: Vec<IPAddressPool>,
    pub l2_advertisements: Vec<L2Advertisement>,
    pub bgp_advertisements: Vec<BGPAdvertisement>,
    pub communities: Vec<Community>,
    pub bfd_profiles: Vec<BFDProfile>,
    pub peers: Vec<BGPPeer>,
    /// Read as v1beta2, with a deprecation warning.
    pub peers_v1beta1: Vec<crd::v1beta1::BGPPeer>,
    /// The legacy ConfigMap, if any. A second one is reported as an error in `malformed`.
    pub legacy: Option<LegacySource>,
    /// Objects that could not be typed: each is an error for that object.
    pub malformed: Vec<Diagnostic>,
    /// Notes on documents that are not configuration and were skipped.
    pub ignored: Vec<String>,
}

impl Sources {
    pub fn from_documents(docs: impl IntoIterator<Item = Document>) -> Sources {
        let mut s = Sources::default();
        for doc in docs {
            s.add(doc);
        }
        s
    }

    /// Parses YAML text (one or more documents) into sources.
    pub fn from_yaml(text: &str) -> Result<Sources, LoadError> {
        Ok(Sources::from_documents(parse_documents(
            text,
            Path::new("<input>"),
        )?))
    }

    pub fn add(&mut self, doc: Document) {
        match doc {
            Document::IPAddressPool(o) => self.pools.push(o),
            Document::L2Advertisement(o) => self.l2_advertisements.push(o),
            Document::BGPAdvertisement(o) => self.bgp_advertisements.push(o),
            Document::Community(o) => self.communities.push(o),
            Document::BFDProfile(o) => self.bfd_profiles.push(o),
            Document::BGPPeer(o) => self.peers.push(o),
            Document::BGPPeerV1beta1(o) => self.peers_v1beta1.push(o),
            Document::Legacy(l) => match &self.legacy {
                Some(first) => self.malformed.push(Diagnostic::new(
                    "ConfigMap",
                    &l.name,
                    "data.config",
                    format!(
                        "a second legacy config; only the first ({}) is read",
                        first.name
                    ),
                )),
                None => self.legacy = Some(l),
            },
            Document::Malformed(d) => self.malformed.push(d),
            Document::Ignored(note) => self.ignored.push(note),
        }
    }

    /// Removes the metallb.io objects whose `metadata.namespace` names another namespace than `namespace`, with an
    /// error for each: the agent watches only its configuration namespace, and MetalLB's webhook refuses them. An
    /// object without a namespace is kept, as `kubectl apply -n` would place it.
    pub fn take_other_namespaces(&mut self, namespace: &str) -> Vec<Diagnostic> {
        fn keep<T: kube::Resource>(
            kind: &str,
            objects: &mut Vec<T>,
            namespace: &str,
            out: &mut Vec<Diagnostic>,
        ) {
            objects.retain(|o| match o.meta().namespace.as_deref() {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    out.push(Diagnostic::new(
                        kind,
                        o.meta().name.as_deref().unwrap_or_default(),
                        "metadata.namespace",
                        format!(
                            "{ns:?} is not {namespace}, the namespace the agent reads its configuration from, so the \
                             agent never sees this object (MetalLB: resource must be created in {namespace} namespace)"
                        ),
                    ));
                    false
                }
                _ => true,
            });
        }
        let mut out = Vec::new();
        keep("IPAddressPool", &mut self.pools, namespace, &mut out);
        keep(
            "L2Advertisement",
            &mut self.l2_advertisements,
            namespace,
            &mut out,
        );
        keep(
            "BGPAdvertisement",
            &mut self.bgp_advertisements,
            namespace,
            &mut out,
        );
        keep("Community", &mut self.communities, namespace, &mut out);
        keep("BFDProfile", &mut self.bfd_profiles, namespace, &mut out);
        keep("BGPPeer", &mut self.peers, namespace, &mut out);
        keep("BGPPeer", &mut self.peers_v1beta1, namespace, &mut out);
        if let Some(legacy) = &self.legacy
            && let Some(ns) = legacy
                .namespace
                .as_deref()
                .filter(|ns| !ns.is_empty() && *ns != namespace)
        {
            out.push(Diagnostic::new(
                "ConfigMap",
                &legacy.name,
                "metadata.namespace",
                format!(
                    "{ns:?} is not {namespace}, the namespace the agent reads its configuration from, so the agent \
                     never sees this ConfigMap"
                ),
            ));
            self.legacy = None;
        }
        out
    }

    /// Whether any metallb.io object is present, as opposed to only the legacy ConfigMap.
    pub fn has_crds(&self) -> bool {
        !(self.pools.is_empty()
            && self.l2_advertisements.is_empty()
            && self.bgp_advertisements.is_empty()
            && self.communities.is_empty()
            && self.bfd_profiles.is_empty()
            && self.peers.is_empty()
            && self.peers_v1beta1.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Vec<Document> {
        parse_documents(text, Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn classifies_kinds_and_skips_empty_and_foreign_documents() {
        let d = docs(
            "---\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: empty}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nginx}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: BGPPeer\nmetadata: {name: old}\n\
             spec: {myASN: 1, peerASN: 2, peerAddress: 203.0.113.254}\n",
        );
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(matches!(&d[0], Document::L2Advertisement(a) if a.spec == Default::default()));
        assert!(matches!(&d[1], Document::Ignored(n) if n.contains("Deployment/nginx")));
        assert!(matches!(&d[2], Document::BGPPeerV1beta1(_)));
    }

    #[test]
    fn a_yaml_error_names_the_file_and_document() {
        let err = parse_documents("a: 1\n---\nb: [\n", Path::new("bad.yaml")).unwrap_err();
        assert!(
            matches!(&err, LoadError::Yaml { path, document: 2, .. } if path == Path::new("bad.yaml")),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("bad.yaml: document 2: "),
            "{err}"
        );
    }

    #[test]
    fn a_mistyped_object_is_malformed_alone() {
        let d = docs(
            "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: many}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: ok}\nspec: {addresses: [192.0.2.0/24]}\n",
        );
        let s = Sources::from_documents(d);
        assert_eq!(s.malformed.len(), 1);
        assert_eq!(s.malformed[0].kind, "BGPPeer");
        assert_eq!(s.malformed[0].name, "p");
        assert_eq!(s.pools.len(), 1);
    }

    #[test]
    fn legacy_configmaps_and_bare_payloads_are_recognised() {
        let d = docs(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config, namespace: metallb-system}\n\
             data: {config: 'address-pools: []'}\n---\naddress-pools: []\n",
        );
        let s = Sources::from_documents(d);
        let legacy = s.legacy.as_ref().unwrap();
        assert_eq!(legacy.name, "ConfigMap/config");
        assert_eq!(legacy.namespace.as_deref(), Some("metallb-system"));
        assert_eq!(s.malformed.len(), 1, "the second legacy source is an error");
    }

    #[test]
    fn objects_in_another_namespace_are_named_and_left_out() {
        let mut s = Sources::from_yaml(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: here, namespace: metallb-system}\n\
             spec: {addresses: [192.0.2.0/28]}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: loose}\n\
             spec: {addresses: [192.0.2.16/28]}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: there, namespace: default}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config, namespace: kube-system}\n\
             data: {config: 'address-pools: []'}\n",
        )
        .unwrap();
        let errors = s.take_other_namespaces("metallb-system");
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with(
            "L2Advertisement/there: metadata.namespace: \"default\" is not metallb-system"
        ));
        assert!(
            lines[0].ends_with("(MetalLB: resource must be created in metallb-system namespace)")
        );
        assert!(lines[1].starts_with("ConfigMap/"), "{}", lines[1]);
        let names: Vec<_> = s
            .pools
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["here", "loose"]);
        assert!(s.l2_advertisements.is_empty() && s.legacy.is_none());
    }

    #[test]
    fn lists_are_opened_and_nameless_objects_rejected() {
        let d = docs(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: metallb.io/v1beta1\n  kind: Community\n  \
             metadata: {name: c}\n- apiVersion: metallb.io/v1beta1\n  kind: Community\n  metadata: {}\n",
        );
        assert!(matches!(&d[0], Document::Community(_)));
        assert!(matches!(&d[1], Document::Malformed(m) if m.field == "metadata.name"));
    }

    #[test]
    fn directories_are_read_recursively_in_order() {
        let dir = std::env::temp_dir().join(format!("ironlb-load-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        let pool = |n: &str| {
            format!("apiVersion: metallb.io/v1beta1\nkind: Community\nmetadata: {{name: {n}}}\n")
        };
        fs::write(dir.join("b.yaml"), pool("b")).unwrap();
        fs::write(dir.join("a.yml"), pool("a")).unwrap();
        fs::write(dir.join("sub/c.yaml"), pool("c")).unwrap();
        fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
        let s = Sources::from_documents(load_paths(std::slice::from_ref(&dir)).unwrap());
        let names: Vec<_> = s
            .communities
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
