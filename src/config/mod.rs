//! Configuration: the metallb.io CRD types, the legacy ConfigMap, validation, and conversion into the internal
//! [`Config`]. This module reads and checks configuration; it never talks to the API or the kernel.

pub mod check;
pub mod community;
pub mod crd;
pub mod duration;
pub mod legacy;
pub mod load;
pub mod model;
pub mod selector;
pub mod validate;

pub use check::{check, migrate_file};
pub use crd::crd_manifests;
pub use legacy::{migrate, migrate_to_yaml};
pub use load::{Document, LoadError, Sources, load_paths};
pub use model::{
    BfdProfile, BgpAdvertisement, Config, Family, IpRange, L2Advertisement, Labels, Peer,
    PeerEndpoint, PeerPassword, Pool, RangeError, RemoteAsn, ServiceAllocation,
};
pub use selector::{Selector, SelectorError};
pub use validate::{Diagnostic, Validated, validate};
