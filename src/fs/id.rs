//! A file's identity: which inode it is and what it looked like when checked.

use rustix::fs::Stat;
use std::fs::File;

/// Which file a handle is, and what it looked like when checked: the crate's one file
/// identity (settling, copy verification, unlink-if-unchanged, journal records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// (seconds, nanoseconds) since the epoch.
    pub mtime: (i64, i64),
}

impl FileId {
    // The field types differ between architectures; the casts are no-ops on x86_64 only.
    #[allow(clippy::unnecessary_cast)]
    pub fn of_stat(st: &Stat) -> FileId {
        FileId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        }
    }

    pub fn of_metadata(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }

    /// The same inode (whatever its content now).
    pub fn same_file(&self, other: &FileId) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// Birth time of an open file in ns since the epoch (`statx` on the descriptor), where
/// the filesystem keeps one: tells a file from a newer one that reused its inode number.
pub fn birth_ns(f: &File) -> Option<u64> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let st = statx(f, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME).ok()?;
    if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME) {
        return None;
    }
    let secs = u64::try_from(st.stx_btime.tv_sec).ok()?;
    Some(secs * 1_000_000_000 + u64::from(st.stx_btime.tv_nsec))
}
