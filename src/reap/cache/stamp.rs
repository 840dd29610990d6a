//! What a clean task's files looked like: stamps (identity, size, mtime) taken beneath the
//! base handle through `crate::fs` (no symlink followed), and for a stamp too recent to
//! vouch for its content, a digest of that content.
//!
//! Why the digest: a file system stamps a change with the kernel's coarse clock (a tick of
//! up to 10 ms; whole seconds on some file systems), so a name added to a folder, or a
//! same-size rewrite of a registry, within the tick of the last change keeps the mtime. A
//! stamp whose mtime is [`RACY`] or less before the moment it was taken is only trusted
//! together with its content (the folder's sorted names, the registry's bytes); the first
//! check after `RACY` has passed compares the content once more and drops the digest.

use crate::fs::{Dir, Entry, EntryKind, FileId};
use crate::reap::lean::{self, LeanRegistry};
use crate::reap::read::{READ_ALONE_ABOVE, ReadTurn, open_registry};
use crate::workspace::{TASK_REGISTRY, TaskDir};
use md5::{Digest, Md5};
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The folders whose names can bring work to a clean task: the task folder itself (prompt
/// files, and the three below appearing) and the three log folders.
pub const FOLDERS: [&str; 4] = ["", "logs", "progress", "findings"];

/// How old an mtime must be, when its stamp is taken, to tell any later change by.
pub const RACY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

impl Stamp {
    fn of(id: &FileId) -> Stamp {
        Stamp {
            dev: id.dev,
            ino: id.ino,
            size: id.size,
            mtime: id.mtime,
        }
    }
}

/// One folder or file as seen: absent (`stamp: None`), or its stamp and, while that was
/// too recent, the digest of its content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub stamp: Option<Stamp>,
    pub digest: Option<[u8; 16]>,
}

/// The mtime is too recent at `now` to tell a later change by (or lies ahead of it).
fn racy(now: SystemTime, (sec, nsec): (i64, i64)) -> bool {
    let Ok(sec) = u64::try_from(sec) else {
        return false;
    };
    let mtime = UNIX_EPOCH + Duration::new(sec, nsec.clamp(0, 999_999_999) as u32);
    now.duration_since(mtime).map_or(true, |age| age < RACY)
}

/// The folder's names, sorted, digested.
fn listing_digest(dir: &Dir) -> Option<[u8; 16]> {
    let mut names = Vec::new();
    dir.for_each_name(|name, _| names.push(name.to_os_string()))
        .ok()?;
    names.sort_unstable();
    let mut md5 = Md5::new();
    for name in &names {
        md5.update(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()));
        md5.update([0]);
    }
    Some(md5.finalize().into())
}

/// The task folder (checked against the handle discovery pinned) and its handle.
fn task_folder(task: &TaskDir) -> Option<(Entry, std::sync::Arc<Dir>)> {
    let top = task.base_handle().ok()?.metadata(&task.task_id).ok()??;
    if top.kind != EntryKind::Dir {
        return None;
    }
    let dir = task.handle().ok()?;
    (dir.identity().ok()? == (top.id.dev, top.id.ino)).then_some((top, dir))
}

/// What is at `name` in the task folder, `None` inside when nothing; `None` outside when it
/// cannot be told (an error, or anything but a folder: such a task is not cached).
fn subfolder(dir: &Dir, name: &str) -> Option<Option<Entry>> {
    match dir.metadata(name).ok()? {
        None => Some(None),
        Some(e) if e.kind == EntryKind::Dir => Some(Some(e)),
        Some(_) => None,
    }
}

/// Stamps of the task's folders, taken at `now` (before the look that judges the task).
pub fn take_folders(task: &TaskDir, now: SystemTime) -> Option<[Seen; FOLDERS.len()]> {
    let (top, dir) = task_folder(task)?;
    let mut out = [Seen::default(); FOLDERS.len()];
    for (seen, name) in out.iter_mut().zip(FOLDERS) {
        let (entry, opened) = if name.is_empty() {
            (top, None)
        } else {
            match subfolder(&dir, name)? {
                None => continue,
                Some(e) => (e, Some(())),
            }
        };
        seen.stamp = Some(Stamp::of(&entry.id));
        if racy(now, entry.id.mtime) {
            seen.digest = Some(match opened {
                None => listing_digest(&dir)?,
                Some(()) => {
                    let sub = dir.open_dir(name).ok()?;
                    // The folder listed is the one stamped.
                    if sub.identity().ok()? != (entry.id.dev, entry.id.ino) {
                        return None;
                    }
                    listing_digest(&sub)?
                }
            });
        }
    }
    Some(out)
}

/// The registry (a regular file within `max_bytes`) parsed, and its stamp, taken from the
/// descriptor before the bytes are read; with the registry's read turn, for the caller to
/// hold while it builds the task's view (as large as the text). A large registry is parsed
/// as it is read, its digest taken of the bytes as they pass: the look after a pass that
/// wrote 40,000 records held the 42.8 MB text beside the pass (peak 191 MB, 168 MB without).
pub fn parse_registry(
    task: &TaskDir,
    now: SystemTime,
    max_bytes: u64,
) -> Option<(Seen, LeanRegistry, ReadTurn)> {
    let dir = task.handle().ok()?;
    let opened = open_registry(&dir, TASK_REGISTRY, max_bytes)?;
    let mut bytes = Digesting::new(opened.reader, max_bytes, racy(now, opened.id.mtime));
    let root = if opened.id.size >= READ_ALONE_ABOVE {
        lean::parse_reader(&mut bytes)
    } else {
        let mut text = Vec::with_capacity(opened.id.size as usize + 1);
        bytes.read_to_end(&mut text).ok()?;
        lean::parse(&text)
    };
    let root = root.ok()?;
    let digest = bytes.finish()?;
    Some((
        Seen {
            stamp: Some(Stamp::of(&opened.id)),
            digest,
        },
        root,
        opened.turn,
    ))
}

/// The registry's stamp at open and the digest of its bytes (at most `max_bytes`), read
/// in pieces.
fn registry_digest(dir: &Dir, max_bytes: u64) -> Option<(Stamp, [u8; 16])> {
    let opened = open_registry(dir, TASK_REGISTRY, max_bytes)?;
    let bytes = Digesting::new(opened.reader, max_bytes, true);
    Some((Stamp::of(&opened.id), bytes.finish()??))
}

/// A registry's bytes as read (at most a cap), digested on the way when asked.
struct Digesting<R> {
    inner: std::io::Take<R>,
    md5: Option<Md5>,
    len: u64,
    max_bytes: u64,
}

impl<R: Read> Digesting<R> {
    fn new(file: R, max_bytes: u64, digest: bool) -> Digesting<R> {
        Digesting {
            inner: file.take(max_bytes + 1),
            md5: digest.then(Md5::new),
            len: 0,
            max_bytes,
        }
    }

    /// Reads what is left (after a parse's end: nothing); the digest when one was asked,
    /// `None` when the bytes were more than the cap or could not be read.
    fn finish(mut self) -> Option<Option<[u8; 16]>> {
        std::io::copy(&mut self, &mut std::io::sink()).ok()?;
        (self.len <= self.max_bytes).then(|| self.md5.map(|m| m.finalize().into()))
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(md5) = &mut self.md5 {
            md5.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Same,
    /// Same, and a digest was dropped: its stamp is now old enough to vouch alone.
    SameSettled,
    Changed,
}

/// Whether the task's registry and folders are as seen: one `fstatat` each (the task
/// folder's through the base handle, the rest through the task handle), plus for a stamp
/// still carrying a digest, its content once more.
pub fn verify(
    task: &TaskDir,
    registry: &mut Seen,
    folders: &mut [Seen; FOLDERS.len()],
) -> Verified {
    let now = SystemTime::now();
    let Some((top, dir)) = task_folder(task) else {
        return Verified::Changed;
    };
    let mut entries: [Option<Entry>; FOLDERS.len()] = [Some(top), None, None, None];
    for (i, name) in FOLDERS.iter().enumerate().skip(1) {
        match subfolder(&dir, name) {
            Some(e) => entries[i] = e,
            None => return Verified::Changed,
        }
    }
    let same = |seen: &Seen, entry: &Option<Entry>| seen.stamp == entry.map(|e| Stamp::of(&e.id));
    if !folders.iter().zip(&entries).all(|(s, e)| same(s, e)) {
        return Verified::Changed;
    }
    match dir.metadata(TASK_REGISTRY) {
        Ok(Some(e)) if e.kind == EntryKind::File && registry.stamp == Some(Stamp::of(&e.id)) => {}
        _ => return Verified::Changed,
    }
    // Stamps alike; contents too where a stamp cannot vouch alone (yet).
    let mut settled = false;
    for (seen, name) in folders.iter_mut().zip(FOLDERS) {
        let (Some(digest), Some(stamp)) = (seen.digest, seen.stamp) else {
            continue;
        };
        let now_digest = if name.is_empty() {
            listing_digest(&dir)
        } else {
            dir.open_dir(name)
                .ok()
                .filter(|sub| sub.identity().ok() == Some((stamp.dev, stamp.ino)))
                .and_then(|sub| listing_digest(&sub))
        };
        if now_digest != Some(digest) {
            return Verified::Changed;
        }
        if !racy(now, stamp.mtime) {
            seen.digest = None;
            settled = true;
        }
    }
    if let (Some(digest), Some(stamp)) = (registry.digest, registry.stamp) {
        let now_digest = registry_digest(&dir, stamp.size)
            .filter(|(now, _)| *now == stamp)
            .map(|(_, digest)| digest);
        if now_digest != Some(digest) {
            return Verified::Changed;
        }
        if !racy(now, stamp.mtime) {
            registry.digest = None;
            settled = true;
        }
    }
    if settled {
        Verified::SameSettled
    } else {
        Verified::Same
    }
}
