//! IronLB: LoadBalancer Services for bare-metal Kubernetes clusters.
#![forbid(unsafe_code)]
pub mod alloc;
pub mod config;
pub mod lab;
