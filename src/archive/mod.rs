//! Archiving logs: moving a settled log into its one archive (store), appending late
//! bytes (late), settling interrupted copies after a crash (recover), uploading settled
//! archives to object storage (upload). Wiring only.

pub mod late;
pub mod outcome;
pub mod recover;
pub mod store;
pub mod upload;
