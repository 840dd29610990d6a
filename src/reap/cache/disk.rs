//! `<state dir>/clean-tasks.bin`: the clean tasks kept across runs, in a small binary form
//! (a cache of 600,000 agents holds 600,000 session hashes: 5 MB, read in milliseconds).
//!
//! Layout, little-endian: magic, version (u32), count (u64), then per task: path (u32
//! length + bytes), agents (u64), their ids (u32 length + lines), the registry's `Seen`, each folder's `Seen`, sessions
//! (u32 count + u64 each); last, the MD5 of everything before it. A file that fails any of
//! this is never trusted: the cache starts empty and the next save replaces it.

use super::CleanTask;
use super::stamp::{FOLDERS, Seen, Stamp};
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// File name inside the state dir.
pub const FILE_NAME: &str = "clean-tasks.bin";
const MAGIC: &[u8; 16] = b"agent-reaper-ct\n";
/// Bumped whenever the layout or the meaning of a field (a hash, a stamp) changes.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading {path}: {source}; starting with an empty clean-task cache")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a clean-task cache this agent-reaper can use ({why}); ignored: every \
         task is read once and the cache rebuilt (delete the file to silence this)"
    )]
    Unusable { path: PathBuf, why: String },
    #[error("writing {path}: {source} (the next run reads every clean task once more)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cached tasks at `path`: empty when missing; empty and the problem when unusable.
pub fn load(path: &Path) -> (HashMap<PathBuf, CleanTask>, Option<CacheError>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (HashMap::new(), None),
        Err(source) => {
            let path = path.to_path_buf();
            return (HashMap::new(), Some(CacheError::Read { path, source }));
        }
    };
    match decode(&bytes) {
        Ok(tasks) => (tasks, None),
        Err(why) => {
            let path = path.to_path_buf();
            (HashMap::new(), Some(CacheError::Unusable { path, why }))
        }
    }
}

/// Writes `tasks` to `path` atomically: temp file, fsync, rename, fsync of the folder.
pub fn save(path: &Path, tasks: &HashMap<PathBuf, CleanTask>) -> Result<(), CacheError> {
    let bytes = encode(tasks);
    crate::state_file::replace(path, &bytes).map_err(|source| CacheError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub fn encode(tasks: &HashMap<PathBuf, CleanTask>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + tasks
            .values()
            .map(|c| 256 + 8 * c.sessions.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tasks.len() as u64).to_le_bytes());
    for (dir, clean) in tasks {
        let path = dir.as_os_str().as_bytes();
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&(clean.agents as u64).to_le_bytes());
        out.extend_from_slice(&(clean.ids.len() as u32).to_le_bytes());
        out.extend_from_slice(clean.ids.as_bytes());
        for seen in std::iter::once(&clean.registry).chain(&clean.folders) {
            put_seen(&mut out, seen);
        }
        out.extend_from_slice(&(clean.sessions.len() as u32).to_le_bytes());
        for h in &clean.sessions {
            out.extend_from_slice(&h.to_le_bytes());
        }
    }
    let sum: [u8; 16] = Md5::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

fn put_seen(out: &mut Vec<u8>, seen: &Seen) {
    out.push(u8::from(seen.stamp.is_some()) | (u8::from(seen.digest.is_some()) << 1));
    if let Some(s) = seen.stamp {
        for v in [s.dev, s.ino, s.size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&s.mtime.0.to_le_bytes());
        out.extend_from_slice(&s.mtime.1.to_le_bytes());
    }
    if let Some(d) = seen.digest {
        out.extend_from_slice(&d);
    }
}

pub fn decode(bytes: &[u8]) -> Result<HashMap<PathBuf, CleanTask>, String> {
    let body_len = bytes
        .len()
        .checked_sub(16)
        .ok_or("shorter than its checksum")?;
    let (body, sum) = bytes.split_at(body_len);
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("no clean-task cache header".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("version {version}, this one reads {VERSION}"));
    }
    if <[u8; 16]>::from(Md5::digest(body)) != sum {
        return Err("checksum mismatch: truncated or damaged".into());
    }
    let count = r.u64()?;
    let mut tasks = HashMap::new();
    for _ in 0..count {
        let len = r.u32()? as usize;
        let dir = PathBuf::from(std::ffi::OsString::from_vec(r.take(len)?.to_vec()));
        let agents = usize::try_from(r.u64()?).map_err(|e| e.to_string())?;
        let len = r.u32()? as usize;
        let ids: Box<str> = std::str::from_utf8(r.take(len)?)
            .map_err(|e| format!("agent ids: {e}"))?
            .into();
        let registry = r.seen()?;
        let mut folders = [Seen::default(); FOLDERS.len()];
        for f in &mut folders {
            *f = r.seen()?;
        }
        let n = r.u32()? as usize;
        let raw = r.take(n.checked_mul(8).ok_or("session count overflows")?)?;
        let sessions: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if !sessions.is_sorted() {
            return Err("session hashes out of order".into());
        }
        let clean = CleanTask {
            registry,
            folders,
            agents,
            ids,
            sessions,
        };
        tasks.insert(dir, clean);
    }
    if !r.0.is_empty() {
        return Err("bytes after the last task".into());
    }
    Ok(tasks)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("ends in the middle of a record".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }

    fn seen(&mut self) -> Result<Seen, String> {
        let flags = self.take(1)?[0];
        if flags & !0b11 != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        let stamp = if flags & 1 != 0 {
            Some(Stamp {
                dev: self.u64()?,
                ino: self.u64()?,
                size: self.u64()?,
                mtime: (self.i64()?, self.i64()?),
            })
        } else {
            None
        };
        let digest = if flags & 2 != 0 {
            Some(self.take(16)?.try_into().expect("16"))
        } else {
            None
        };
        Ok(Seen { stamp, digest })
    }
}
