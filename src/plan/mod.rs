//! Planning: which node announces which VIP, and what this node must do about it.
//!
//! Everything here is a pure function of the cluster's objects (read through [`ClusterObjects`], which the agent's
//! `ClusterState` implements), the validated [`crate::config::Config`], the set of live agents (decided outside, by the
//! `gossip` module and the node Leases) and this node's own links. Every agent runs the same functions on the same
//! inputs and so reaches the same answer without talking to the others; that is what lets an owner be replaced within a
//! second of its death. Nothing here touches the API, a socket or the kernel: the reconcilers and the visibility
//! writers apply what these functions return.
//!
//! ```text
//! ClusterObjects + Config ──▶ input::PlanInput { VipGroup, NodeInfo }      (eligibility, reasons not announced)
//!                                  │
//! gossip, node Leases ──▶ live agents ──▶ owner::choose_owners ──▶ GroupKey → owner node
//!                                  │
//!     local interfaces ──▶ node_plan::node_plan ──▶ NodePlan { announce, bind, owned_services }
//!                                  │
//!                                  ▼
//!                 visibility: ironlb.io/vips, ironlb.io/announced-by, Moved (nodeAssigned, failover)
//! ```

pub mod input;
pub mod node_plan;
pub mod owner;
pub mod visibility;

pub use input::{
    ClusterObjects, GroupKey, Interfaces, NodeInfo, NotAnnounced, PlanInput, VipGroup,
};
pub use node_plan::{InterfaceFacts, NodePlan, node_plan, subnets_annotation};
pub use owner::choose_owners;
pub use visibility::{Moved, announced_by, moved, node_vips};
