//! The embedded lab: a whole small cluster on one Linux machine, with no Kubernetes installed.
//!
//! It exists so that IronLB can be demonstrated and tested end to end without a real cluster. Nothing here is ever
//! used by `ironlb agent` in a real cluster; the agent only ever sees the lab through the Kubernetes API it serves.
//!
//! It is compiled only with the `lab` cargo feature. The feature is on by default, so tests, benches and `scripts/lab`
//! have it; the release image builds the agent with `--no-default-features` and ships without it.

pub mod api;
pub mod bgp;
pub mod cluster;
pub mod control_plane;
pub mod demo;
pub mod faults;
pub mod kube_proxy;
pub mod netns;
pub mod topology;
