//! Registry I/O: the orchestrator's JSON registries, read tolerantly and written under its lock.

pub(crate) mod cas;
pub mod edit;
#[cfg(test)]
mod edit_tests;
pub mod json_doc;
pub mod json_file;
pub mod pyjson;
#[cfg(test)]
mod repair_tests;
pub mod seen;
pub mod sqlite;
pub mod torn;

pub use json_file::{
    ReadOptions, RegistryError, SidecarRecovery, UpdateOptions, UpdateOutcome, read_registry,
    recover_sidecar, rewrite_registry, update_registry,
};
