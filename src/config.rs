//! Configuration (wiring): TOML text → a validated `Config` (`settings`, pure), the
//! `[[hooks]]` tables (`hooks`), the object-storage settings (`upload`), and the layering
//! of file, flags, environment and index (`layer`).

pub mod hooks;
pub mod layer;
mod settings;
pub mod upload;

pub use settings::*;
