//! The one error type of `fs/`: every variant names the path and says what to do.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(
        "{path}: is a symlink or passes through one; refused (nothing below a workspace base is followed). Replace it with a real file or folder"
    )]
    Symlink { path: PathBuf },
    #[error(
        "{path}: is a {kind}, not a regular file; refused, left alone. Remove it or replace it with a regular file"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: is a {kind}, not a folder; refused, left alone. Remove or rename it")]
    NotDir { path: PathBuf, kind: &'static str },
    #[error(
        "{path}: has {links} hard links; refused for a file that is moved, appended to or deleted (one of the links may lie outside the workspace). Replace it with a copy (`cp --remove-destination`)"
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error(
        "{name:?} below {dir}: not a plain relative name (empty, absolute, `.` or `..`, or a NUL byte); refused"
    )]
    BadName { dir: PathBuf, name: String },
    #[error(
        "{path}: lies below none of the configured workspace bases or archive folder; left alone"
    )]
    OutsideRoots { path: PathBuf },
    #[error("{path}: already exists; not replaced")]
    Exists { path: PathBuf },
    #[error("{path}: changed since it was checked ({what}); left alone, retried on a later pass")]
    Changed { path: PathBuf, what: String },
    #[error(
        "{path}: {size} bytes, over the cap of {max} bytes; not read. Raise the cap or trim the file"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        FsError::Io {
            path: path.into(),
            source: source.into(),
        }
    }

    /// The path the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            FsError::Symlink { path }
            | FsError::NotRegular { path, .. }
            | FsError::NotDir { path, .. }
            | FsError::HardLinked { path, .. }
            | FsError::Exists { path }
            | FsError::OutsideRoots { path }
            | FsError::Changed { path, .. }
            | FsError::TooLarge { path, .. }
            | FsError::Io { path, .. } => path,
            FsError::BadName { dir, .. } => dir,
        }
    }

    /// The OS error number, for errors that came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            FsError::Io { source, .. } => source.raw_os_error(),
            FsError::Exists { .. } => Some(libc::EEXIST),
            _ => None,
        }
    }

    /// The path (or one of its parents) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// A rename that would cross filesystems (the caller copies instead).
    pub fn is_cross_device(&self) -> bool {
        self.raw_os_error() == Some(libc::EXDEV)
    }

    /// A refusal on safety grounds (symlink, not regular, hard-linked, bad name): waiting
    /// will not help, the agent's files need a person.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FsError::Symlink { .. }
                | FsError::NotRegular { .. }
                | FsError::NotDir { .. }
                | FsError::HardLinked { .. }
                | FsError::BadName { .. }
                | FsError::OutsideRoots { .. }
        )
    }
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> io::Error {
        let kind = match &e {
            FsError::Io { source, .. } => source.kind(),
            FsError::Exists { .. } => io::ErrorKind::AlreadyExists,
            FsError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}
