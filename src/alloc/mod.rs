//! Allocation: which Service gets which VIP, from which pool.
//!
//! This module owns the reading of a Service's allocation inputs ([`LbRequest`]), the pure [`Allocator`], and the
//! offline migration [`plan`]. It does no I/O: it never reads the API, writes a status or emits an Event; the
//! Kubernetes shell does that with the values returned here. It must not touch `config`, whose types it only reads.

mod allocator;
mod free_set;
pub mod plan;
#[cfg(test)]
mod plan_proptests;
#[cfg(test)]
mod proptests;
pub mod service;

pub use allocator::{Allocator, Assignment, Eviction, Ips, PoolUsage, Refusal};
pub use service::{FamilyPolicy, LbRequest, RequestError, ServiceKey, ServicePort, Sharing, Shown};
