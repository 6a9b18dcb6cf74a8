//! `ClusterState`: everything the agent knows about the cluster, as one synchronous value.
//!
//! Watchers feed it through [`ClusterState::handle`]; decisions read it. It holds objects exactly as the API returned
//! them and derives nothing, so that a test can build any cluster with plain values and no server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

use super::index::ObjectIndex;
use crate::config::Labels;
use crate::config::crd::{
    BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};
use crate::config::load::{LegacySource, Sources};
use crate::config::validate::Diagnostic;

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
    Pool(watcher::Event<IPAddressPool>),
    L2Advertisement(watcher::Event<L2Advertisement>),
    BgpAdvertisement(watcher::Event<BGPAdvertisement>),
    BgpPeer(watcher::Event<BGPPeer>),
    Community(watcher::Event<Community>),
    BfdProfile(watcher::Event<BFDProfile>),
}

#[derive(Debug, Default)]
pub struct ClusterState {
    pub services: ObjectIndex<Service>,
    pub endpoint_slices: ObjectIndex<EndpointSlice>,
    pub nodes: ObjectIndex<Node>,
    pub namespaces: ObjectIndex<Namespace>,
    /// Only the legacy MetalLB ConfigMap is watched.
    pub config_maps: ObjectIndex<ConfigMap>,
    pub pools: ObjectIndex<IPAddressPool>,
    pub l2_advertisements: ObjectIndex<L2Advertisement>,
    pub bgp_advertisements: ObjectIndex<BGPAdvertisement>,
    pub bgp_peers: ObjectIndex<BGPPeer>,
    pub communities: ObjectIndex<Community>,
    pub bfd_profiles: ObjectIndex<BFDProfile>,
}

/// Which part of the state a change touched, so that work that depends on neither can be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touched {
    Nothing,
    Services,
    Config,
    Topology,
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
            Change::Pool(e) => touched(self.pools.handle(e), Touched::Config),
            Change::L2Advertisement(e) => {
                touched(self.l2_advertisements.handle(e), Touched::Config)
            }
            Change::BgpAdvertisement(e) => {
                touched(self.bgp_advertisements.handle(e), Touched::Config)
            }
            Change::BgpPeer(e) => touched(self.bgp_peers.handle(e), Touched::Config),
            Change::Community(e) => touched(self.communities.handle(e), Touched::Config),
            Change::BfdProfile(e) => touched(self.bfd_profiles.handle(e), Touched::Config),
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
            && self.pools.is_synced()
            && self.l2_advertisements.is_synced()
            && self.bgp_advertisements.is_synced()
            && self.bgp_peers.is_synced()
            && self.communities.is_synced()
            && self.bfd_profiles.is_synced()
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

impl ClusterState {
    /// The configuration objects as the validator takes them. A legacy ConfigMap without a `config` key is reported
    /// as malformed rather than ignored, so its owner learns why nothing happened.
    pub fn config_sources(&self) -> Sources {
        let mut sources = Sources {
            pools: self.pools.values().cloned().collect(),
            l2_advertisements: self.l2_advertisements.values().cloned().collect(),
            bgp_advertisements: self.bgp_advertisements.values().cloned().collect(),
            communities: self.communities.values().cloned().collect(),
            bfd_profiles: self.bfd_profiles.values().cloned().collect(),
            peers: self.bgp_peers.values().cloned().collect(),
            ..Sources::default()
        };
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
