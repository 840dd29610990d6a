//! Configuration (wiring): TOML text → a validated `Config` (`settings`, pure), the
//! `[[hooks]]` tables (`hooks`), and the layering of file, flags, environment and index
//! (`layer`).

pub mod hooks;
pub mod layer;
mod settings;

pub use settings::*;
