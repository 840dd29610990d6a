//! `<base>/.daemon_health`: epoch seconds after each pass, for monitors of the old shell
//! daemon; written relative to the base's directory handle, never through a planted name.

use crate::config::Config;
use crate::fs::{Dir, FsError, write_new_atomically};
use std::time::SystemTime;

pub const HEALTH_FILE: &str = ".daemon_health";

/// Writes the health file in every base; a base where it fails gets a warning, nothing more.
pub fn write_all(config: &Config) {
    if !config.health_file {
        return;
    }
    let text = format!("{}\n", crate::model::epoch_secs(SystemTime::now()));
    for base in &config.workspace_bases {
        if let Err(e) = replace_in_base(base, HEALTH_FILE, text.as_bytes()) {
            tracing::warn!("{}: health file not written: {e}", base.display());
        }
    }
}

/// Through `fs/`: the base opened as a handle, a fresh `O_CREAT|O_EXCL|O_NOFOLLOW` name
/// beside `name` written, fsynced and renamed over it. A symlink, FIFO or file planted at
/// either name is replaced or refused, never followed.
fn replace_in_base(base: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    let dir = Dir::open_base(base)?;
    write_new_atomically(&dir, name, bytes, 0o644)
}
