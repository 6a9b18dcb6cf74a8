//! The entry points of the commands that read the cluster (and, for `verify`, this node's kernel) and print what
//! they find: each owns its clap arguments and its `run`, and does its I/O here, so that the modules it reads
//! through never depend on a command. Nothing else in the crate imports this module.
//!
//! `main.rs` parses the arguments and calls these; the agent and the offline commands (`config check`, `plan`,
//! `migrate`, `crds`) keep their entry points in their own modules.

pub mod status;
pub mod verify;
