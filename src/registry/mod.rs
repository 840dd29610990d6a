//! Registry I/O: the orchestrator's JSON registries, read tolerantly and written under its lock.

pub(crate) mod cas;
pub mod edit;
#[cfg(test)]
mod edit_tests;
mod error;
pub mod json_doc;
pub mod json_file;
pub mod pyjson;
#[cfg(test)]
mod repair_tests;
pub mod seen;
pub mod sqlite;
pub mod torn;

pub use cas::UpdateOutcome;
pub use error::RegistryError;
pub use json_file::{
    ReadOptions, SidecarRecovery, UpdateOptions, read_registry, recover_sidecar, rewrite_registry,
    update_registry,
};
