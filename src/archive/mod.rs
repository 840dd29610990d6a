//! Archiving logs: moving a settled log into its one archive (store), appending late
//! bytes (late), compressing archives with zstd (compress), removing old archives of
//! cleaned agents (retention), uploading settled archives to object storage (upload),
//! settling interrupted copies after a crash (recover). Wiring only.

pub mod compress;
pub mod late;
pub mod outcome;
pub mod recover;
pub(crate) mod retention;
pub(crate) mod store;
pub mod upload;
