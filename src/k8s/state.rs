//! `ClusterState`: everything the agent knows about the cluster, as one synchronous value.
//!
//! Watchers feed it through [`ClusterState::handle`]; decisions read it. It holds objects exactly as the API returned
//! them and derives nothing, so that a test can build any cluster with plain values and no server.
//!
//! The metallb.io objects are held untyped, as [`DynamicObject`]s, and typed only in [`ClusterState::config_sources`]
//! by the same decoder `ironlb config check` uses ([`crate::config::load::decode`]). A typed watch would fail its
//! whole list on one object it cannot decode, and keep the agent from ever becoming ready; here such an object is
//! one diagnostic among valid objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;

use super::index::ObjectIndex;
use crate::config::Labels;
use crate::config::crd::{
    BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};
use crate::config::load::{LegacySource, Sources, decode};
use crate::config::validate::Diagnostic;
use crate::plan::ClusterObjects;

/// The metallb.io kinds the agent reads, at the version it watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigKind {
    IPAddressPool,
    L2Advertisement,
    BGPAdvertisement,
    BGPPeer,
    Community,
    BFDProfile,
}

impl ConfigKind {
    pub const ALL: [ConfigKind; 6] = [
        ConfigKind::IPAddressPool,
        ConfigKind::L2Advertisement,
        ConfigKind::BGPAdvertisement,
        ConfigKind::BGPPeer,
        ConfigKind::Community,
        ConfigKind::BFDProfile,
    ];

    /// Group, version, kind and plural, from the typed CRDs, so the watch asks for what the decoder reads.
    pub fn api_resource(self) -> ApiResource {
        match self {
            ConfigKind::IPAddressPool => ApiResource::erase::<IPAddressPool>(&()),
            ConfigKind::L2Advertisement => ApiResource::erase::<L2Advertisement>(&()),
            ConfigKind::BGPAdvertisement => ApiResource::erase::<BGPAdvertisement>(&()),
            ConfigKind::BGPPeer => ApiResource::erase::<BGPPeer>(&()),
            ConfigKind::Community => ApiResource::erase::<Community>(&()),
            ConfigKind::BFDProfile => ApiResource::erase::<BFDProfile>(&()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConfigKind::IPAddressPool => "IPAddressPool",
            ConfigKind::L2Advertisement => "L2Advertisement",
            ConfigKind::BGPAdvertisement => "BGPAdvertisement",
            ConfigKind::BGPPeer => "BGPPeer",
            ConfigKind::Community => "Community",
            ConfigKind::BFDProfile => "BFDProfile",
        }
    }

    fn of(kind: &str) -> Option<ConfigKind> {
        ConfigKind::ALL.into_iter().find(|k| k.name() == kind)
    }
}

/// One change reported by a watcher, tagged with its kind.
// Changes live only in the watch channel (at most 1024 of them) on their way into the indexes, so an unboxed
// Service event costs little, and boxing would cost an allocation per event on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Change {
    Service(watcher::Event<Service>),
    EndpointSlice(watcher::Event<EndpointSlice>),
    Node(watcher::Event<Node>),
    Namespace(watcher::Event<Namespace>),
    ConfigMap(watcher::Event<ConfigMap>),
    /// A metallb.io object, undecoded.
    Config(ConfigKind, watcher::Event<DynamicObject>),
    /// A Secret of the agent's own namespace (BGP passwords).
    Secret(watcher::Event<Secret>),
}

#[derive(Debug, Default)]
pub struct ClusterState {
    pub services: ObjectIndex<Service>,
    pub endpoint_slices: ObjectIndex<EndpointSlice>,
    pub nodes: ObjectIndex<Node>,
    pub namespaces: ObjectIndex<Namespace>,
    /// Only the legacy MetalLB ConfigMap is watched.
    pub config_maps: ObjectIndex<ConfigMap>,
    /// The metallb.io objects by kind, as the API returned them; see the module's note.
    pub config: BTreeMap<ConfigKind, ObjectIndex<DynamicObject>>,
    /// The Secrets of the agent's namespace, for `passwordSecret`. Not part of [`ClusterState::is_synced`]: a
    /// Secret the agent cannot list holds back only the BGP sessions that need it, never allocation or Layer 2.
    /// A watch that fails keeps what it had, so an API outage takes no password away from a running session.
    pub secrets: ObjectIndex<Secret>,
}

/// Which part of the state a change touched, so that work that depends on neither can be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touched {
    Nothing,
    Services,
    Config,
    Topology,
    /// Only BGP passwords: the sessions need a look, allocation and Layer 2 do not.
    Secrets,
}

impl ClusterState {
    /// Applies a watcher event and says what it changed.
    pub fn handle(&mut self, change: Change) -> Touched {
        let touched = |changed: bool, what: Touched| if changed { what } else { Touched::Nothing };
        match change {
            Change::Service(e) => touched(self.services.handle(e), Touched::Services),
            Change::Namespace(e) => touched(self.namespaces.handle(e), Touched::Services),
            Change::EndpointSlice(e) => touched(self.endpoint_slices.handle(e), Touched::Topology),
            Change::Node(e) => touched(self.nodes.handle(e), Touched::Topology),
            Change::ConfigMap(e) => touched(self.config_maps.handle(e), Touched::Config),
            Change::Config(kind, e) => {
                let index = self.config.entry(kind).or_default();
                // A status write (the allocator's pool counts) changes nothing the configuration says.
                let status_only = match &e {
                    watcher::Event::Apply(new) => index
                        .get(&super::index::ObjectKey::of(new))
                        .is_some_and(|old| differs_in_status_only(old, new)),
                    _ => false,
                };
                let changed = index.handle(e);
                touched(changed && !status_only, Touched::Config)
            }
            Change::Secret(e) => touched(self.secrets.handle(e), Touched::Secrets),
        }
    }

    /// Whether every watch has delivered a complete list once: before that, allocating could hand out an IP that a
    /// Service not yet seen already holds.
    pub fn is_synced(&self) -> bool {
        self.services.is_synced()
            && self.endpoint_slices.is_synced()
            && self.nodes.is_synced()
            && self.namespaces.is_synced()
            && self.config_maps.is_synced()
            && ConfigKind::ALL
                .iter()
                .all(|k| self.config.get(k).is_some_and(ObjectIndex::is_synced))
    }

    /// Labels of every namespace, for `serviceAllocation.namespaceSelectors`.
    pub fn namespace_labels(&self) -> BTreeMap<String, Labels> {
        self.namespaces
            .values()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                Some((name, ns.metadata.labels.clone().unwrap_or_default()))
            })
            .collect()
    }
}

/// The planner reads the cluster from here in the agent.
impl ClusterObjects for ClusterState {
    fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices.values()
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    fn namespace_labels(&self) -> BTreeMap<String, Labels> {
        ClusterState::namespace_labels(self)
    }
}

impl ClusterState {
    /// The configuration objects as the validator takes them. A legacy ConfigMap without a `config` key is reported
    /// as malformed rather than ignored, so its owner learns why nothing happened.
    pub fn config_sources(&self) -> Sources {
        let mut sources = Sources::default();
        for (kind, index) in &self.config {
            let resource = kind.api_resource();
            for obj in index.values() {
                sources.add(decode(config_value(obj, &resource)));
            }
        }
        if let Some(cm) = self.config_maps.values().next() {
            let name = cm.metadata.name.clone().unwrap_or_default();
            match cm.data.as_ref().and_then(|d| d.get("config")) {
                Some(payload) => {
                    sources.legacy = Some(LegacySource {
                        name: format!("ConfigMap/{name}"),
                        namespace: cm.metadata.namespace.clone(),
                        payload: payload.clone(),
                    })
                }
                None => sources.malformed.push(Diagnostic {
                    kind: "ConfigMap".into(),
                    name,
                    field: "data.config".into(),
                    message: "the legacy MetalLB ConfigMap has no `config` key".into(),
                }),
            }
        }
        sources
    }
}

impl ClusterState {
    /// Puts a typed configuration object in, as a watch would deliver it; for tests and benchmarks that build a
    /// cluster from values.
    pub fn apply_config<K>(&mut self, obj: &K) -> bool
    where
        K: Resource<DynamicType = ()> + serde::Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let Some(kind) = ConfigKind::of(&resource.kind) else {
            return false;
        };
        let value = serde_json::to_value(obj).unwrap_or_default();
        let Ok(obj) = serde_json::from_value::<DynamicObject>(value) else {
            return false;
        };
        self.config.entry(kind).or_default().apply(obj)
    }

    /// A reference to the configuration object of this kind and name, for an Event about it.
    pub fn config_reference(&self, kind: &str, name: &str) -> Option<ObjectReference> {
        let kind = ConfigKind::of(kind)?;
        let resource = kind.api_resource();
        self.config
            .get(&kind)?
            .values()
            .find(|o| o.metadata.name.as_deref() == Some(name))
            .map(|o| o.object_ref(&resource))
    }
}

/// The object as JSON, with the apiVersion and kind of the watch it came from: items of a list may leave them out.
pub fn config_value(obj: &DynamicObject, resource: &ApiResource) -> serde_json::Value {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    value["apiVersion"] = resource.api_version.clone().into();
    value["kind"] = resource.kind.clone().into();
    value
}

/// Builders for tests of the agent's consumers of the state.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A state holding exactly these objects.
    pub fn cluster(
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
        nodes: Vec<Node>,
    ) -> ClusterState {
        let mut state = ClusterState::default();
        state.services.reset(services);
        state.endpoint_slices.reset(slices);
        state.nodes.reset(nodes);
        state
    }
}

/// Whether two versions of a configuration object differ only in their `status` (and resource version).
fn differs_in_status_only(old: &DynamicObject, new: &DynamicObject) -> bool {
    let without_status = |o: &DynamicObject| {
        let mut data = o.data.clone();
        if let Some(map) = data.as_object_mut() {
            map.remove("status");
        }
        data
    };
    old.metadata.labels == new.metadata.labels
        && old.metadata.annotations == new.metadata.annotations
        && old.metadata.deletion_timestamp == new.metadata.deletion_timestamp
        && without_status(old) == without_status(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The allocator's own pool status writes come back through the watch; they must not count as a configuration
    /// change (each would start another allocation and announcement pass), while a spec or label change does.
    #[test]
    fn a_status_write_is_not_a_configuration_change() {
        let mut state = ClusterState::default();
        let pool = |rv: &str, spec: serde_json::Value, status: serde_json::Value| {
            event(
                ConfigKind::IPAddressPool,
                json!({"metadata": {"name": "p", "namespace": "metallb-system", "resourceVersion": rv},
                       "spec": spec, "status": status}),
            )
        };
        let spec = json!({"addresses": ["192.0.2.0/24"]});
        assert_eq!(
            state.handle(pool("1", spec.clone(), json!({}))),
            Touched::Config
        );
        let counts =
            json!({"assignedIPv4": 1, "assignedIPv6": 0, "availableIPv4": 255, "availableIPv6": 0});
        assert_eq!(
            state.handle(pool("2", spec, counts.clone())),
            Touched::Nothing
        );
        assert_eq!(
            state.handle(pool("3", json!({"addresses": ["192.0.2.0/25"]}), counts)),
            Touched::Config
        );
    }

    fn event(kind: ConfigKind, object: serde_json::Value) -> Change {
        let obj: DynamicObject = serde_json::from_value(object).expect("an object");
        Change::Config(kind, watcher::Event::Apply(obj))
    }

    fn meta(name: &str) -> serde_json::Value {
        json!({"name": name, "namespace": "metallb-system", "resourceVersion": "1"})
    }

    /// What the API server returns for MetalLB's documented L2Advertisement (no `spec`), and an object the schema
    /// admits but IronLB cannot use, among valid ones: the valid ones are used, the others named.
    #[test]
    fn config_objects_are_decoded_one_by_one_as_config_check_does() {
        let mut state = ClusterState::default();
        state.handle(event(
            ConfigKind::IPAddressPool,
            json!({"metadata": meta("lab"), "spec": {"addresses": ["198.51.100.10-198.51.100.40"]}}),
        ));
        state.handle(event(
            ConfigKind::L2Advertisement,
            json!({"metadata": meta("lab")}),
        ));
        state.handle(event(
            ConfigKind::IPAddressPool,
            json!({"metadata": meta("broken"), "spec": {"addresses": "198.51.100.50"}}),
        ));
        state.handle(event(
            ConfigKind::BGPAdvertisement,
            json!({"metadata": meta("pref"), "spec": {"localPref": -1}}),
        ));
        let sources = state.config_sources();
        assert_eq!(sources.pools.len(), 1);
        assert_eq!(sources.l2_advertisements.len(), 1);
        assert_eq!(sources.l2_advertisements[0].spec, Default::default());
        assert_eq!(sources.malformed.len(), 1, "{:?}", sources.malformed);
        let broken = &sources.malformed[0];
        assert_eq!(
            (
                broken.kind.as_str(),
                broken.name.as_str(),
                broken.field.as_str()
            ),
            ("IPAddressPool", "broken", "spec.addresses")
        );
        let validated = crate::config::validate(&sources);
        assert!(validated.config.pools.contains_key("lab"));
        assert!(validated.config.l2_advertisements.contains_key("lab"));
        assert!(
            validated
                .errors
                .iter()
                .any(|d| d.name == "pref" && d.field == "spec.localPref"),
            "{:?}",
            validated.errors
        );
        assert!(
            state.config_reference("IPAddressPool", "broken").is_some(),
            "an Event can name the undecodable object"
        );
    }

    #[test]
    fn every_config_kind_must_list_before_the_state_is_synced() {
        let mut state = ClusterState::default();
        for change in [
            Change::Service(watcher::Event::InitDone),
            Change::EndpointSlice(watcher::Event::InitDone),
            Change::Node(watcher::Event::InitDone),
            Change::Namespace(watcher::Event::InitDone),
            Change::ConfigMap(watcher::Event::InitDone),
        ] {
            state.handle(change);
        }
        for kind in ConfigKind::ALL {
            assert!(!state.is_synced(), "synced before {kind:?} listed");
            state.handle(Change::Config(kind, watcher::Event::InitDone));
        }
        assert!(state.is_synced());
    }
}
