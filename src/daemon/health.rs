//! `<base>/.daemon_health`: epoch seconds after each pass, for monitors of the old shell
//! daemon; written relative to the base's directory handle, never through a planted name.

use crate::config::Config;
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

/// Fresh `O_CREAT|O_EXCL|O_NOFOLLOW` temp name beside `name`, written, fsynced, renamed over
/// it: a symlink, FIFO or file planted at either name is replaced or refused, never followed.
fn replace_in_base(base: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags, fsync, openat, renameat, unlinkat};
    let dir = openat(
        rustix::fs::CWD,
        base,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = format!("{name}.{}.{nanos:09}.tmp-reaper", std::process::id());
    let file = openat(
        &dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let written = std::fs::File::from(file);
    let result = (|| {
        use std::io::Write;
        (&written).write_all(bytes)?;
        fsync(&written)?;
        renameat(&dir, tmp.as_str(), &dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    }
    result
}
