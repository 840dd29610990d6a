//! The registry I/O error: each variant names the file and says what was done about it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file (symlink, FIFO or device); skipped")]
    NotRegular { path: PathBuf },
    #[error(
        "{path}: {size} bytes is over the {limit}-byte limit; skipped (raise max_registry_size in the config to read it)"
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "{path}: lock not granted within {waited:?} (another writer holds it); skipped this round"
    )]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error("{path}: unparsable after {attempts} reads ({reason}); left untouched")]
    Unparsable {
        path: PathBuf,
        attempts: u32,
        reason: String,
    },
    #[error(
        "{path}: a complete document followed by {extra} byte(s) of a longer version this daemon saw (a torn unlocked write); left untouched here, `once` or `run` repair it"
    )]
    Torn { path: PathBuf, extra: usize },
    #[error(
        "{path}: changed by an unlocked writer {rounds} time(s) in a row between our read and our write; skipped this round"
    )]
    Contended { path: PathBuf, rounds: u32 },
    #[error("{path}: top level is not a JSON object; left untouched")]
    NotObject { path: PathBuf },
    #[error("{path}: write failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
