//! Object storage for fleets: settled archives uploaded to `archive_url` (S3 API), verified,
//! journaled, and only then removed locally.
//!
//! Key layout: `<prefix>/<host>/<base name>/<task id>/<file>` (host: this machine's
//! hostname; base name: the workspace base's folder name; file: the archive's name).
//!
//! One upload, journaled (J = record, fsynced before the next state):
//!
//! ```text
//! J begin{local, key, file id} ─▶ HEAD key ─▶ PUT (create-only) ─▶ HEAD: size + ETag
//!   ─▶ J uploaded ─▶ unlink local if unchanged (or: ledger line, keep_local) ─▶ J done
//! any failure before `uploaded` ─▶ J undone (the local file stays; the next pass retries)
//! ```
//!
//! Recovery needs no network: a step without `uploaded` is undone (the next pass's HEAD
//! finds an object a killed run had stored and verifies it instead of putting a second
//! one); a step with `uploaded` finishes the local side. The key is a function of the
//! file, so a retry never makes a second object.
//!
//! An unreachable bucket stops the stage at the first failing request: one warning per
//! pass, the archives stay local, and the daemon waits (30 s, doubling up to 30 min)
//! before it tries again; `once` simply reports.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use object_store::ObjectStore;
use object_store::path::Path as Key;

use super::outcome::RecoveryAction as Action;
use crate::config::Config;
use crate::config::upload::ArchiveUrl;
use crate::failpoint;
use crate::fs::{self, Compare, FsError, Purpose, UnlinkOutcome};
use crate::journal::{Journal, JournalError, Pending, Step};

mod backoff;
mod candidates;
mod client;
mod ledger;
mod profile;
mod transfer;

use backoff::Backoff;
use candidates::Candidate;
use ledger::Ledger;
use transfer::{Placed, TransferError};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{path}: {source}")]
    Ledger {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: changed while being uploaded; kept, retried once it settles")]
    Changed { path: PathBuf },
    #[error("cannot set up the S3 client for {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot start the upload runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl UploadError {
    /// The bucket (or the way to it) failed, not this one file: stop the stage.
    fn is_remote(&self) -> bool {
        matches!(
            self,
            UploadError::Transfer(TransferError::Remote(_)) | UploadError::Client { .. }
        )
    }
}

/// One archive uploaded this pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadedFile {
    pub local: PathBuf,
    /// `s3://bucket/key`.
    pub object: String,
    pub bytes: u64,
    /// The local copy was kept (`keep_local`).
    pub kept_local: bool,
    /// An earlier, interrupted run had stored the object; it was verified, not put again.
    pub found_stored: bool,
}

/// What the upload stage of one pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UploadReport {
    pub url: String,
    pub uploaded: Vec<UploadedFile>,
    /// Settled archives left local this pass (bucket unreachable, or time budget spent).
    pub left_local: usize,
    /// Why the bucket could not be used this pass (reported once, not per file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// The daemon tries again after this many seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<u64>,
    /// Files that could not be uploaded, one line each (a conflict, a refused file).
    pub problems: Vec<String>,
}

impl UploadReport {
    /// Nothing uploaded, nothing left behind, nothing to say (the steady state).
    pub fn is_quiet(&self) -> bool {
        self.uploaded.is_empty()
            && self.left_local == 0
            && self.unreachable.is_none()
            && self.problems.is_empty()
    }

    /// One line for `once`'s text output.
    pub fn summary(&self) -> String {
        let bytes: u64 = self.uploaded.iter().map(|u| u.bytes).sum();
        let mut s = format!(
            "Uploads to {}: {} archive(s), {} byte(s)",
            self.url,
            self.uploaded.len(),
            bytes
        );
        if self.left_local > 0 {
            s += &format!("; {} left local", self.left_local);
        }
        if let Some(why) = &self.unreachable {
            s += &format!("; bucket unreachable: {why}");
        }
        if let Some(secs) = self.retry_in_secs {
            s += &format!("; next try in {secs}s");
        }
        s
    }
}

/// The daemon spends at most this long per pass uploading; the rest waits for the next.
pub const DAEMON_BUDGET: Duration = Duration::from_secs(60);

/// Long-lived upload state: the client, the backoff, the ledger (built on first use).
pub struct Uploader {
    url: ArchiveUrl,
    endpoint: Option<String>,
    store: Option<Arc<dyn ObjectStore>>,
    host: String,
    backoff: Backoff,
    ledger: Option<Ledger>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader").field("url", &self.url).finish()
    }
}

impl Uploader {
    fn new(url: ArchiveUrl, endpoint: Option<String>) -> Uploader {
        Uploader {
            url,
            endpoint,
            store: None,
            host: host_name(),
            backoff: Backoff::default(),
            ledger: None,
        }
    }
}

/// This machine's hostname (the first key segment after the prefix).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `<prefix>/<host>/<base name>/<task id>/<file>`; a character S3 tools treat specially
/// (`%`, `\`, `{`, ...) is percent-encoded within its segment.
pub fn object_key(url: &ArchiveUrl, host: &str, base_name: &str, task_id: &str, file: &str) -> Key {
    url.prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .chain([host, base_name, task_id, file])
        .collect()
}

/// The upload stage of a full pass. `None` when no `archive_url` is set. `budget`: the
/// daemon's time limit per pass (`once` uploads everything settled).
pub fn run_stage(
    slot: &mut Option<Uploader>,
    config: &Config,
    journal: &Mutex<Journal>,
    budget: Option<Duration>,
) -> Option<UploadReport> {
    let Some(url) = &config.archive_url else {
        *slot = None;
        return None;
    };
    if slot
        .as_ref()
        .is_none_or(|u| u.url != *url || u.endpoint != config.archive_endpoint)
    {
        *slot = Some(Uploader::new(url.clone(), config.archive_endpoint.clone()));
    }
    let up = slot.as_mut().expect("set above");
    let mut report = UploadReport {
        url: url.to_string(),
        ..Default::default()
    };
    let started = Instant::now();
    if !up.backoff.ready(started) {
        report.retry_in_secs = Some(up.backoff.remaining(started).as_secs().max(1));
        return Some(report);
    }
    if let Err(e) = stage(up, config, journal, budget, &mut report) {
        let wait = up.backoff.failed(Instant::now());
        tracing::warn!(
            url = %report.url,
            left_local = report.left_local,
            "bucket unreachable: {e}; {} settled archive(s) kept local, next try in {}s",
            report.left_local,
            wait.as_secs()
        );
        report.unreachable = Some(e.to_string());
        report.retry_in_secs = Some(wait.as_secs());
    } else {
        up.backoff.succeeded();
    }
    for p in &report.problems {
        tracing::warn!(url = %report.url, "upload: {p}");
    }
    Some(report)
}

/// Uploads the settled archives; `Err` is a remote failure that stopped the stage.
fn stage(
    up: &mut Uploader,
    config: &Config,
    journal: &Mutex<Journal>,
    budget: Option<Duration>,
    report: &mut UploadReport,
) -> Result<(), UploadError> {
    let started = Instant::now();
    let (pending, state_dir) = {
        let j = journal.lock().unwrap_or_else(|e| e.into_inner());
        (pending_paths(&j), j.path().parent().map(Path::to_path_buf))
    };
    if up.ledger.is_none() {
        let dir = state_dir.unwrap_or_default();
        up.ledger = Some(Ledger::load(&dir).map_err(|source| UploadError::Ledger {
            path: dir.join(ledger::LEDGER_FILE),
            source,
        })?);
    }
    let ledger = up.ledger.as_ref().expect("loaded above");
    let (found, problems) = candidates::gather(
        config,
        &pending,
        &|p, id| config.keep_local && ledger.has(p, id),
        SystemTime::now(),
    );
    report.problems.extend(problems);
    if found.is_empty() {
        return Ok(());
    }
    let store = match &up.store {
        Some(s) => Arc::clone(s),
        None => {
            let s = client::build(&up.url, up.endpoint.as_deref()).map_err(|source| {
                report.left_local = found.len();
                UploadError::Client {
                    url: up.url.to_string(),
                    source,
                }
            })?;
            up.store = Some(Arc::clone(&s));
            s
        }
    };
    let runtime = Runtime::get().map_err(UploadError::Runtime)?;
    let total = found.len();
    for (i, c) in found.into_iter().enumerate() {
        if budget.is_some_and(|b| started.elapsed() >= b) {
            report.left_local = total - i;
            return Ok(());
        }
        match upload_one(up, store.as_ref(), &runtime, journal, config.keep_local, &c) {
            Ok(done) => {
                tracing::info!(
                    local = %done.local.display(),
                    object = %done.object,
                    bytes = done.bytes,
                    "uploaded archive"
                );
                report.uploaded.push(done);
            }
            Err(e) if e.is_remote() => {
                report.left_local = total - i;
                return Err(e);
            }
            Err(e) => report.problems.push(format!("{}: {e}", c.path.display())),
        }
    }
    Ok(())
}

/// The async side: the daemon's runtime when called from its pass thread, else (`once`) a
/// small one for this stage only.
enum Runtime {
    Daemon(tokio::runtime::Handle),
    Own(tokio::runtime::Runtime),
}

impl Runtime {
    fn get() -> std::io::Result<Runtime> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => Ok(Runtime::Daemon(h)),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(Runtime::Own),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match self {
            Runtime::Daemon(h) => h.block_on(f),
            Runtime::Own(rt) => rt.block_on(f),
        }
    }
}

fn upload_one(
    up: &mut Uploader,
    store: &dyn ObjectStore,
    runtime: &Runtime,
    journal: &Mutex<Journal>,
    keep_local: bool,
    c: &Candidate,
) -> Result<UploadedFile, UploadError> {
    let name = c.name.to_string_lossy();
    let dir = c.open_folder()?;
    let file = dir.open_file(&c.name, Purpose::ReadToMove)?;
    if file.id != c.file {
        return Err(UploadError::Changed {
            path: c.path.clone(),
        });
    }
    let key = object_key(&up.url, &up.host, &c.base_name, &c.task_id, &name);
    let object = format!("s3://{}/{key}", up.url.bucket);
    let lock = || journal.lock().unwrap_or_else(|e| e.into_inner());
    let seq = lock().begin(&[Step::Upload {
        local: c.path.clone(),
        url: object.clone(),
        key: key.to_string(),
        file: file.id,
        keep_local,
    }])?[0];
    failpoint::hit(failpoint::UPLOAD_AFTER_BEGIN);
    let placed = runtime.block_on(transfer::upload(store, &key, &file.file, file.id.size));
    let unchanged = file.current().map(|now| now == file.id);
    let placed = match (placed, unchanged) {
        (Ok(p), Ok(true)) => p,
        (Err(e), _) => {
            lock().undo(&[seq])?;
            return Err(e.into());
        }
        (Ok(_), Ok(false)) => {
            lock().undo(&[seq])?;
            return Err(UploadError::Changed {
                path: c.path.clone(),
            });
        }
        (Ok(_), Err(e)) => {
            lock().undo(&[seq])?;
            return Err(e.into());
        }
    };
    lock().mark_uploaded(&[seq])?;
    failpoint::hit(failpoint::UPLOAD_AFTER_VERIFY);
    if keep_local {
        let ledger = up.ledger.as_mut().expect("loaded by the stage");
        ledger
            .record(&c.path, file.id)
            .map_err(|source| UploadError::Ledger {
                path: ledger.path().to_path_buf(),
                source,
            })?;
    } else {
        drop(file);
        remove_local(&dir, &c.name, &c.path, &c.file)?;
    }
    failpoint::hit(failpoint::UPLOAD_AFTER_UNLINK);
    lock().finish(&[seq])?;
    Ok(UploadedFile {
        local: c.path.clone(),
        object,
        bytes: c.file.size,
        kept_local: keep_local,
        found_stored: placed == Placed::AlreadyThere,
    })
}

/// Unlinks the verified local copy if it is still exactly the file uploaded, and makes the
/// removal durable. A file that changed is kept (`FsError::Changed`).
fn remove_local(
    dir: &fs::Dir,
    name: &std::ffi::OsStr,
    path: &Path,
    file: &fs::FileId,
) -> Result<UnlinkOutcome, UploadError> {
    match fs::unlink_if_same(dir, name, file, Compare::Unchanged) {
        Ok(out) => {
            dir.sync()?;
            Ok(out)
        }
        Err(FsError::Changed { .. }) => Err(UploadError::Changed {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Paths journal steps are working on: every path-like string in a pending step, so that
/// step kinds added later (a compression) hold their files back too.
fn pending_paths(journal: &Journal) -> HashSet<PathBuf> {
    fn walk(v: &serde_json::Value, out: &mut HashSet<PathBuf>) {
        match v {
            serde_json::Value::String(s) if s.starts_with('/') => {
                out.insert(PathBuf::from(s));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = HashSet::new();
    for p in journal.pending() {
        if let Ok(v) = serde_json::to_value(&p.step) {
            walk(&v, &mut out);
        }
    }
    out
}

/// Settles a pending [`Step::Upload`] after a crash, without the network: before
/// `uploaded`, undone (the local file stays; the next pass finds any stored object by
/// `HEAD` and verifies it, never putting a second); after it, the local side is finished.
pub fn recover_upload(journal: &mut Journal, p: &Pending) -> Result<Action, UploadError> {
    let Step::Upload {
        local,
        file,
        keep_local,
        ..
    } = &p.step
    else {
        unreachable!("recover_upload is only called for upload steps");
    };
    if !p.appended {
        journal.undo(&[p.seq])?;
        return Ok(Action::Undone);
    }
    if *keep_local {
        let dir = journal.path().parent().unwrap_or(Path::new("/"));
        let mut ledger = Ledger::load(dir).map_err(|source| UploadError::Ledger {
            path: dir.join(ledger::LEDGER_FILE),
            source,
        })?;
        ledger
            .record(local, *file)
            .map_err(|source| UploadError::Ledger {
                path: ledger.path().to_path_buf(),
                source,
            })?;
        journal.finish(&[p.seq])?;
        return Ok(Action::Completed);
    }
    let (dir, name) = journal.locate(local)?;
    let action = match remove_local(&dir, &name, local, file) {
        Ok(UnlinkOutcome::Unlinked) => Action::Completed,
        Ok(UnlinkOutcome::Gone) => Action::AlreadyDone,
        Err(UploadError::Changed { .. }) => Action::LeftAlone {
            reason: format!(
                "{}: changed after its upload was verified; kept (the object holds the earlier bytes)",
                local.display()
            ),
        },
        Err(e) => return Err(e),
    };
    journal.finish(&[p.seq])?;
    Ok(action)
}

#[cfg(test)]
mod tests;
