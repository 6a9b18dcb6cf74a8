//! Configuration: the metallb.io CRD types, the legacy ConfigMap, validation, and conversion into the internal
//! [`Config`]. This module reads and checks configuration; it never talks to the API or the kernel.

pub mod community;
pub mod crd;
pub mod duration;
pub mod legacy;
pub mod model;
pub mod selector;

pub use crd::crd_manifests;
pub use legacy::{migrate, migrate_to_yaml};
pub use model::{Family, IpRange, Labels, Pool, RangeError, ServiceAllocation};
pub use selector::{Selector, SelectorError};
