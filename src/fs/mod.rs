//! Confinement: every operation on a path below a workspace base goes through this module.
//!
//! Nothing below a base is trusted after discovery. A base is opened once as a directory
//! handle ([`Dir::open_base`]); everything beneath it is reached relative to a handle and
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! or, on kernels without `openat2` (< 5.6, or a seccomp filter that hides it), by a walk
//! that opens one component at a time with `O_NOFOLLOW|O_DIRECTORY`. Either way a symlink
//! anywhere below the base is refused, never followed.
//!
//! Agent-writable files are opened `O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|O_CLOEXEC` (a FIFO never
//! blocks, a tty never becomes ours) and `fstat`ed: only regular files are handed out, and
//! for anything that will be moved, appended to or deleted only with `st_nlink == 1` (a hard
//! link to an outside file is refused). See [`Purpose`].
//!
//! Renames and unlinks take single names relative to directory handles (the kernel would
//! follow symlinks in a longer path): open the parent with [`Dir::open_dir`] first.
//! Files the daemon creates in a workspace go through [`write_new_atomically`] (or
//! [`Dir::create_new`] for a `.partial`): `O_CREAT|O_EXCL|O_NOFOLLOW` under a fresh name,
//! fsync, rename, fsync the folder.
//!
//! Reads of agent-written files are bounded: [`read_capped`] and [`TailChunks`].

mod dir;
mod error;
mod file;
mod id;
mod locate;
mod ops;
mod read;

pub use dir::{Dir, Entry, EntryKind, Listed, Resolve};
pub use error::FsError;
pub use file::{Purpose, RegularFile};
pub use id::{FileId, birth_ns};
pub use locate::{open_parent_below, open_parent_within};
pub use ops::{
    Compare, UnlinkOutcome, link_then_unlink, rename_noreplace, replace_file, replace_file_with,
    sync_dir, unlink_if_same, unlink_regular, write_new_atomically,
};
pub use read::{TailChunks, read_capped, tail_chunks_backwards};

#[cfg(test)]
mod tests;
