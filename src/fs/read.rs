//! Bounded reads of agent-written files: a whole small file, or a large one's tail backwards.

use super::error::FsError;
use super::file::RegularFile;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The whole file, if it is at most `max` bytes (read from offset 0 whatever the file
/// position); [`FsError::TooLarge`] otherwise, without reading past `max + 1` bytes.
pub fn read_capped(file: &RegularFile, max: u64) -> Result<Vec<u8>, FsError> {
    let hint = file.id.size.min(max).saturating_add(1);
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(usize::MAX).min(1 << 20));
    let mut chunk = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let want = chunk.len() as u64;
        let got = match file.file.read_at(&mut chunk[..want as usize], off) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::io(&file.path, e)),
        };
        if got == 0 {
            return Ok(buf);
        }
        off += got as u64;
        if off > max {
            let size = file.current().map(|id| id.size).unwrap_or(off).max(off);
            return Err(FsError::TooLarge {
                path: file.path.clone(),
                size,
                max,
            });
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Chunks of a file from its end towards its start: `(offset, bytes)`, each at most
/// `chunk` bytes, at most `cap` bytes in all. The end is the file's size when created
/// (bytes appended later are not read).
pub struct TailChunks<'a> {
    file: &'a File,
    pos: u64,
    chunk: u64,
    left: u64,
}

/// See [`TailChunks`].
pub fn tail_chunks_backwards(file: &File, chunk: usize, cap: u64) -> io::Result<TailChunks<'_>> {
    let end = file.metadata()?.len();
    Ok(TailChunks {
        file,
        pos: end,
        chunk: chunk.max(1) as u64,
        left: cap,
    })
}

impl TailChunks<'_> {
    /// Whether the chunks returned so far reach offset 0 (else the cap cut them short).
    pub fn reached_start(&self) -> bool {
        self.pos == 0
    }

    /// The offset of the first byte returned so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl Iterator for TailChunks<'_> {
    type Item = io::Result<(u64, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos == 0 || self.left == 0 {
            return None;
        }
        let len = self.chunk.min(self.pos).min(self.left);
        let start = self.pos - len;
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = self.file.read_exact_at(&mut buf, start) {
            // Truncated under us: stop here rather than return a hole.
            self.left = 0;
            return Some(Err(e));
        }
        self.pos = start;
        self.left -= len;
        Some(Ok((start, buf)))
    }
}
