//! IronLB: LoadBalancer Services for bare-metal Kubernetes clusters.
#![forbid(unsafe_code)]
pub mod agent;
pub mod alloc;
pub mod config;
pub mod ipvs;
pub mod k8s;
pub mod lab;
pub mod telemetry;
