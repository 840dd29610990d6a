//! Registry I/O: the orchestrator's JSON registries, read tolerantly and written under its lock.

pub mod json_file;
pub mod pyjson;
pub mod sqlite;

pub use json_file::{
    ReadOptions, RegistryError, SidecarRecovery, UpdateOptions, UpdateOutcome, read_registry,
    recover_sidecar, update_registry,
};
