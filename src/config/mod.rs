//! Configuration: the metallb.io CRD types, the legacy ConfigMap, validation, and conversion into the internal
//! [`Config`]. This module reads and checks configuration; it never talks to the API or the kernel.

pub mod model;
pub mod selector;

pub use model::{Family, IpRange, Labels, Pool, RangeError, ServiceAllocation};
pub use selector::{Selector, SelectorError};
