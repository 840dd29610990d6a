//! Late bytes into a compressed archive: the recreated log becomes one more zstd frame at the `.zst`'s end.
//!
//! The same journaled protocol as an uncompressed late append (`crate::archive::late`), with
//! "the archive's tail equals the source" read as "the frames from `archive_len` on
//! decode to the source":
//!
//! ```text
//! S0 ──J begin{archive_len, src dev/ino/len}──▶ S1 ──frame appended, fsync, decoded back──▶ S2
//! S2 ──J appended──▶ S3 ──unlink src, fsync its folder, rescue tail as a frame──▶ S4 ──J done──▶ end
//! S1/S2/S3 with src changed or verify failed ──truncate .zst to archive_len, fsync──▶ J undone
//! ```
//!
//! Recovery: without `appended`, bytes past `archive_len` can only be our (maybe torn)
//! frame: cut back, undone, the source is handled again. With `appended`: source gone →
//! done; same source, same length, frames decode to it → unlink it, done; grown → cut
//! back, undone. Anything else is left alone, nothing removed.

use super::{CompressError, busy, decodes_to, encode_range, io_err};
use crate::archive::late;
use crate::archive::outcome::AppendOutcome;
use crate::archive::outcome::RecoveryAction as Action;
use crate::failpoint;
use crate::fs::{self as cfs, Compare, Dir, FsError, Purpose, RegularFile, UnlinkOutcome};
use crate::journal::{Journal, LateAppend, Pending, Step};
use std::ffi::OsStr;

/// What recovery logs as left alone.
const WHAT: &str = "late frame";

pub const FP_BEGUN: &str = "frame-begun";
/// Half of the new frame on disk, fsynced (a torn write).
pub const FP_TORN: &str = "frame-torn";
pub const FP_WRITTEN: &str = "frame-written";
pub const FP_MARKED: &str = "frame-marked";
pub const FP_UNLINKED: &str = "frame-unlinked";

/// Appends the settled late write `src_dir/src_name` to the compressed archive
/// `zst_dir/zst_name` as one more frame and unlinks the source (journaled).
pub fn append_frame(
    src_dir: &Dir,
    src_name: &OsStr,
    zst_dir: &Dir,
    zst_name: &OsStr,
    level: i32,
    journal: &mut Journal,
) -> Result<AppendOutcome, CompressError> {
    let sf = src_dir.open_file(src_name, Purpose::Read)?;
    let start = sf.id;
    let archive = zst_dir.display(zst_name);
    if let Some(seq) = busy(journal, std::slice::from_ref(&archive)) {
        return Err(CompressError::Pending { archive, seq });
    }
    let af = zst_dir.open_file(zst_name, Purpose::Append)?;
    if af.id.same_file(&start) {
        return Err(CompressError::SameFile {
            src: sf.path,
            archive,
        });
    }
    if sf.links != 1 {
        return Err(FsError::HardLinked {
            path: sf.path.clone(),
            links: sf.links,
        }
        .into());
    }
    let archive_len = af.id.size;
    let step = Step::AppendFrame(LateAppend::new(&sf, archive, archive_len));
    let seq = journal.begin(&[step])?[0];
    failpoint::hit(FP_BEGUN);
    let undo = |journal: &mut Journal| -> Result<(), CompressError> {
        af.file
            .set_len(archive_len)
            .and_then(|()| af.file.sync_all())
            .map_err(|e| io_err(&af.path, e))?;
        journal.undo(&[seq])?;
        Ok(())
    };
    let written = encode_range(&sf.file, 0, start.size, &af.file, level)
        .and_then(|n| af.file.sync_all().map(|()| n))
        .map_err(|e| io_err(&af.path, e));
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            undo(journal)?;
            return Err(e);
        }
    };
    if failpoint::armed(FP_TORN) {
        let _ = af.file.set_len(archive_len + written / 2);
        let _ = af.file.sync_all();
        failpoint::hit(FP_TORN);
    }
    failpoint::hit(FP_WRITTEN);
    let same =
        decodes_to(&af.file, archive_len, &sf.file, start.size).map_err(|e| io_err(&af.path, e));
    if sf.current()? != start {
        undo(journal)?;
        return Ok(AppendOutcome::Changed);
    }
    match same {
        Ok(true) => {}
        Ok(false) => {
            undo(journal)?;
            return Err(CompressError::VerifyFailed { path: af.path });
        }
        Err(e) => {
            undo(journal)?;
            return Err(e);
        }
    }
    journal.mark_appended(&[seq])?;
    failpoint::hit(FP_MARKED);
    if sf.current()? != start {
        undo(journal)?;
        return Ok(AppendOutcome::Changed);
    }
    match cfs::unlink_if_same(src_dir, src_name, &start, Compare::Inode) {
        Ok(UnlinkOutcome::Unlinked | UnlinkOutcome::Gone) => {}
        Err(FsError::Changed { .. }) => {
            tracing::warn!(path = %sf.path.display(), "late write replaced during append; left alone")
        }
        // The source is still there: undoing is right.
        Err(e) => {
            undo(journal)?;
            return Err(e.into());
        }
    }
    // `done` must not be durable before the unlink is, or the bytes could come back twice.
    src_dir.sync()?;
    failpoint::hit(FP_UNLINKED);
    let rescued = rescue_tail(&sf, start.size, &af, level);
    journal.finish(&[seq])?;
    Ok(AppendOutcome::Appended {
        bytes: start.size,
        rescued,
    })
}

/// Bytes an `open('a')` writer put into the source between our check and our unlink
/// (the inode we still hold) become one more frame; logged, not returned: the name is gone.
fn rescue_tail(sf: &RegularFile, copied: u64, af: &RegularFile, level: i32) -> u64 {
    let len = match sf.current() {
        Ok(id) => id.size,
        Err(_) => return 0,
    };
    if len <= copied {
        return 0;
    }
    let extra = len - copied;
    match encode_range(&sf.file, copied, extra, &af.file, level).and_then(|_| af.file.sync_all()) {
        Ok(()) => {
            tracing::warn!(bytes = extra, "appended bytes written during unlink");
            extra
        }
        Err(e) => {
            tracing::error!(path = %af.path.display(), error = %e, "could not carry over bytes written during unlink");
            0
        }
    }
}

/// Settles one pending [`Step::AppendFrame`] after a crash (see the module doc).
pub fn recover_frame(journal: &mut Journal, p: &Pending) -> Result<Action, CompressError> {
    let Step::AppendFrame(step) = &p.step else {
        unreachable!("recover_frame called with {:?}", p.step);
    };
    let (src, archive) = (&step.src, &step.archive);
    let (archive_len, src_len) = (step.archive_len, step.src_len);
    let left_alone = |journal: &mut Journal, reason: String| -> Result<Action, CompressError> {
        Ok(late::left_alone(journal, p.seq, WHAT, reason)?)
    };
    let Some((_, _, af)) = late::open_recorded_archive(journal, step)? else {
        return left_alone(journal, format!("{} missing", archive.display()));
    };
    let alen = af.id.size;
    let source = match late::locate_source(journal, step)? {
        Some((d, n)) => late::open_source(step, &d, &n)?.map(|f| (d, n, f)),
        None => None,
    };
    let cut_back = |journal: &mut Journal| -> Result<Action, CompressError> {
        af.file
            .set_len(archive_len)
            .and_then(|()| af.file.sync_all())
            .map_err(|e| io_err(&af.path, e))?;
        journal.undo(&[p.seq])?;
        Ok(Action::Undone)
    };
    if alen < archive_len {
        return left_alone(
            journal,
            format!("{} is shorter than recorded", archive.display()),
        );
    }
    if !p.appended {
        // Past `archive_len` there can only be our frame, whole or torn; the source
        // was not unlinked (that needs `appended`).
        return cut_back(journal);
    }
    let Some((sdir, sname, sf)) = source else {
        journal.finish(&[p.seq])?;
        return Ok(Action::AlreadyDone);
    };
    let holds = sf.id.size >= src_len
        && decodes_to(&af.file, archive_len, &sf.file, src_len).map_err(|e| io_err(&af.path, e))?;
    if holds && sf.id.size == src_len {
        return late::unlink_source(journal, p.seq, WHAT, step, (&sdir, &sname), &sf);
    }
    if holds || alen == archive_len {
        // Grown before the unlink (or already cut back): the source holds it all.
        return cut_back(journal);
    }
    left_alone(
        journal,
        format!(
            "{} does not end with a frame of {}; both kept",
            archive.display(),
            src.display()
        ),
    )
}
