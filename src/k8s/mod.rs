//! Everything that talks to the Kubernetes API: the clients, watches, the in-memory index, status and annotation
//! writers, and the allocator's Lease and the per-node Leases. Decisions are made elsewhere; this module carries them
//! in and out.

pub mod allocation;
pub mod announcement;
pub mod client;
pub mod events;
pub mod index;
pub mod leader;
pub mod node_lease;
pub mod report;
pub mod state;
pub mod status;
