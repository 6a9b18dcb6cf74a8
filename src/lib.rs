//! IronLB: LoadBalancer Services for bare-metal Kubernetes clusters.
#![deny(unsafe_code)]
pub mod agent;
pub mod alloc;
pub mod arp;
pub mod bfd;
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
pub mod sys;
pub mod task;
pub mod telemetry;
pub mod webhook;

/// An error and each of its sources, `outer: inner: innermost`, for messages a user reads whole.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        source = inner.source();
    }
    out
}
