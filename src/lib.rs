//! IronLB: LoadBalancer Services for bare-metal Kubernetes clusters.
#![deny(unsafe_code)]
pub mod agent;
pub mod alloc;
pub mod arp;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod gossip;
pub mod ipvs;
pub mod k8s;
#[cfg(feature = "lab")]
pub mod lab;
pub mod netif;
pub mod plan;
pub mod task;
pub mod telemetry;
