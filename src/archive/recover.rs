//! Recovery after a crash: settles each step the journal found pending (appends through
//! `late`, cross-filesystem copies here, with the recorded paths reopened beneath the
//! journal's roots).

use crate::archive::late::{self, LateError};
use crate::archive::outcome::RecoveryAction;
use crate::journal::{Journal, JournalError, Pending, Step};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Late(#[from] LateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fs(#[from] crate::fs::FsError),
    #[error(transparent)]
    Compress(#[from] crate::archive::compress::CompressError),
    #[error(transparent)]
    Upload(#[from] super::upload::UploadError),
}

/// One recovered step. On `Err` the step stays pending (and is retried at the next
/// start) unless it was already rolled back before a redo failed.
#[derive(Debug)]
pub struct Recovered {
    pub seq: u64,
    pub step: Step,
    pub outcome: Result<RecoveryAction, RecoverError>,
}

/// Finishes or undoes each pending step (oldest first), recording the result in the
/// journal. Call once after [`Journal::open`], before anything else touches the files.
pub fn recover(journal: &mut Journal, pending: Vec<Pending>) -> Vec<Recovered> {
    pending
        .into_iter()
        .map(|p| {
            let outcome = match &p.step {
                Step::Append(_) => late::recover_append(journal, &p).map_err(Into::into),
                Step::Copy { .. } => recover_copy(journal, &p),
                Step::Compress { .. } => {
                    crate::archive::compress::recover_compress(journal, &p).map_err(Into::into)
                }
                Step::AppendFrame(_) => {
                    crate::archive::compress::frame::recover_frame(journal, &p).map_err(Into::into)
                }
                Step::Upload { .. } => {
                    super::upload::recover_upload(journal, &p).map_err(Into::into)
                }
                Step::RegistryWrite { .. } => journal
                    .finish(&[p.seq])
                    .map(|()| RecoveryAction::Noted)
                    .map_err(Into::into),
            };
            match &outcome {
                Ok(action) => tracing::info!(seq = p.seq, step = ?p.step, ?action, "recovered"),
                Err(e) => tracing::error!(seq = p.seq, error = %e, "recovery failed"),
            }
            Recovered {
                seq: p.seq,
                step: p.step,
                outcome,
            }
        })
        .collect()
}

/// Copy steps: the source goes only once `dest` holds exactly its bytes; a `.partial`
/// is dropped only while the source still exists. Paths are reopened beneath the
/// journal's roots ([`Journal::locate`]).
fn recover_copy(journal: &mut Journal, p: &Pending) -> Result<RecoveryAction, RecoverError> {
    let Step::Copy {
        src,
        partial,
        dest,
        src_len,
    } = &p.step
    else {
        unreachable!("recover_copy called with {:?}", p.step);
    };
    let src = Place::locate(journal, src)?;
    let partial = Place::locate(journal, partial)?;
    let dest = Place::locate(journal, dest)?;
    let src_here = src.is_present()?;
    let (action, done) = if dest.is_present()? {
        // A `.partial` beside a finished copy is left by the link fallback.
        partial.remove_if_exists()?;
        match src_here {
            false => (RecoveryAction::AlreadyDone, true),
            true => {
                let (s, d) = (src.open_ro()?, dest.open_ro()?);
                let (sl, dl) = (s.id.size, d.id.size);
                let same = |len| {
                    late::same_bytes(&s.file, 0, &d.file, 0, len).map_err(|e| ioe(&dest.path, e))
                };
                if sl == dl && same(sl)? {
                    src.unlink_durably(&s.id)?;
                    (RecoveryAction::Completed, true)
                } else if dl == *src_len && sl > dl && same(dl)? {
                    // Our copy of a source that grew before its unlink: drop the copy so
                    // the retry archives the whole file once.
                    dest.unlink_durably(&d.id)?;
                    (RecoveryAction::Undone, false)
                } else {
                    let reason = format!(
                        "{} differs from {}; both kept",
                        dest.path.display(),
                        src.path.display()
                    );
                    (RecoveryAction::LeftAlone { reason }, false)
                }
            }
        }
    } else if src_here {
        partial.remove_if_exists()?;
        (RecoveryAction::Undone, false)
    } else {
        let reason = match partial.is_present()? {
            // The source never goes before the rename, so this is someone else's doing;
            // the partial copy may be all that is left of it.
            true => format!(
                "{} gone; partial copy {} kept",
                src.path.display(),
                partial.path.display()
            ),
            false => format!(
                "neither {} nor {} found",
                src.path.display(),
                dest.path.display()
            ),
        };
        (RecoveryAction::LeftAlone { reason }, false)
    };
    if done {
        journal.finish(&[p.seq])?;
    } else {
        journal.undo(&[p.seq])?;
    }
    Ok(action)
}

/// A recorded path, reopened beneath the journal's roots: its folder (absent when the
/// folder itself is gone) and its name.
struct Place {
    dir: Option<crate::fs::Dir>,
    name: std::ffi::OsString,
    path: PathBuf,
}

impl Place {
    fn locate(journal: &Journal, path: &Path) -> Result<Place, RecoverError> {
        let (dir, name) = match journal.locate(path) {
            Ok((dir, name)) => (Some(dir), name),
            Err(e) if e.is_not_found() => (None, std::ffi::OsString::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(Place {
            dir,
            name,
            path: path.to_path_buf(),
        })
    }

    fn is_present(&self) -> Result<bool, RecoverError> {
        match &self.dir {
            Some(dir) => Ok(dir.exists(&self.name)?),
            None => Ok(false),
        }
    }

    fn dir(&self) -> Result<&crate::fs::Dir, RecoverError> {
        self.dir.as_ref().ok_or_else(|| {
            ioe(
                &self.path,
                io::Error::new(io::ErrorKind::NotFound, "folder missing"),
            )
        })
    }

    fn open_ro(&self) -> Result<crate::fs::RegularFile, RecoverError> {
        Ok(self
            .dir()?
            .open_file(&self.name, crate::fs::Purpose::ReadToMove)?)
    }

    fn remove_if_exists(&self) -> Result<(), RecoverError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        match dir.unlink(&self.name) {
            Ok(()) => Ok(dir.sync()?),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Unlinks (only the file checked, unchanged) and fsyncs the folder, so the `done`
    /// written next cannot outlive the name.
    fn unlink_durably(&self, checked: &crate::fs::FileId) -> Result<(), RecoverError> {
        let dir = self.dir()?;
        crate::fs::unlink_if_same(dir, &self.name, checked, crate::fs::Compare::Unchanged)?;
        Ok(dir.sync()?)
    }
}

fn ioe(path: &Path, source: io::Error) -> RecoverError {
    RecoverError::Io {
        path: path.to_path_buf(),
        source,
    }
}
