//! The last line of a stream log, read backwards in growing chunks up to a cap, so a 10 MB
//! result line is found and a 1 GB line without a newline costs at most the cap.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Enough for a 10 MB result line with room to spare; the most one stream log ever costs.
pub const STREAM_TAIL_CAP: u64 = 16 << 20;

/// Most result lines are short: the first chunk is small, each next one twice the last.
const FIRST_CHUNK: u64 = 64 << 10;

/// What the end of a file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum LastLine {
    /// The last non-blank line, without its trailing whitespace.
    Line(Vec<u8>),
    /// Empty or only whitespace.
    Empty,
    /// The last line (with any whitespace after it) is longer than the cap.
    TooLong,
}

/// Reads the last line of the first `len` bytes of `file` backwards, never more than `cap`
/// bytes. Reads with `pread`, so the file position does not matter.
pub fn last_line(file: &File, len: u64, cap: u64) -> io::Result<LastLine> {
    // Chunks from the end backwards; the line is their reversed concatenation from `cut`.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut end = len;
    let mut chunk = FIRST_CHUNK;
    let mut seen_content = false;
    let cut = loop {
        if end == 0 {
            break 0;
        }
        let read_so_far = len - end;
        if read_so_far >= cap {
            return Ok(LastLine::TooLong);
        }
        let size = chunk.min(end).min(cap - read_so_far);
        let start = end - size;
        let mut buf = vec![0; size as usize];
        file.read_exact_at(&mut buf, start)?;
        let found = newline_before_content(&buf, &mut seen_content);
        chunks.push(buf);
        end = start;
        if let Some(i) = found {
            break i + 1;
        }
        chunk = chunk.saturating_mul(2);
    };
    if !seen_content {
        return Ok(LastLine::Empty);
    }
    let mut line = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    let mut chunks = chunks.into_iter().rev();
    if let Some(first) = chunks.next() {
        line.extend_from_slice(&first[cut..]);
    }
    for c in chunks {
        line.extend_from_slice(&c);
    }
    let trimmed = line.trim_ascii_end().len();
    line.truncate(trimmed);
    Ok(LastLine::Line(line))
}

/// Scans `buf` backwards: skips trailing whitespace until the first other byte (tracked
/// across chunks in `seen_content`), then returns the index of the newline before it.
fn newline_before_content(buf: &[u8], seen_content: &mut bool) -> Option<usize> {
    for (i, &b) in buf.iter().enumerate().rev() {
        if !*seen_content {
            *seen_content = !b.is_ascii_whitespace();
        } else if b == b'\n' {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (File, u64) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    fn last(bytes: &[u8], cap: u64) -> LastLine {
        let (f, len) = file_with(bytes);
        last_line(&f, len, cap).unwrap()
    }

    #[test]
    fn short_lines_and_blank_tails() {
        assert_eq!(last(b"", 1 << 20), LastLine::Empty);
        assert_eq!(last(b" \n\n\t", 1 << 20), LastLine::Empty);
        assert_eq!(last(b"only", 1 << 20), LastLine::Line(b"only".to_vec()));
        assert_eq!(
            last(b"a\nb\nlast  \n\n", 1 << 20),
            LastLine::Line(b"last".to_vec())
        );
    }

    #[test]
    fn a_line_across_many_chunks_comes_back_whole() {
        // 300 kB: spans the 64 kB, 128 kB and 256 kB chunks.
        let long: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut bytes = b"{\"first\":1}\n".to_vec();
        bytes.extend_from_slice(&long);
        bytes.push(b'\n');
        assert_eq!(last(&bytes, STREAM_TAIL_CAP), LastLine::Line(long));
    }

    #[test]
    fn a_ten_megabyte_result_line_is_found() {
        let mut line = b"{\"type\":\"result\",\"is_error\":false,\"result\":\"".to_vec();
        line.extend(std::iter::repeat_n(b'x', 10 << 20));
        line.extend_from_slice(b"\"}");
        let mut bytes = b"{\"type\":\"assistant\"}\n".to_vec();
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
        assert_eq!(last(&bytes, STREAM_TAIL_CAP), LastLine::Line(line));
    }

    #[test]
    fn a_line_longer_than_the_cap_is_too_long_after_reading_the_cap_only() {
        let bytes = vec![b'y'; 3 << 20];
        assert_eq!(last(&bytes, 1 << 20), LastLine::TooLong);
        // Trailing whitespace counts towards the cap too: a blank gigabyte costs the cap.
        let mut blank = b"{\"a\":1}\n".to_vec();
        blank.extend(std::iter::repeat_n(b' ', 2 << 20));
        assert_eq!(last(&blank, 1 << 20), LastLine::TooLong);
    }

    #[test]
    fn a_sparse_gigabyte_without_a_newline_is_too_long_not_a_hang() {
        // A 1 GiB hole: costs a read of the cap, no more (no 1 GiB buffer).
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 30).unwrap();
        assert_eq!(
            last_line(&f, 1 << 30, STREAM_TAIL_CAP).unwrap(),
            LastLine::TooLong
        );
    }

    #[test]
    fn a_file_that_shrank_since_its_stat_is_an_error_not_garbage() {
        let (f, len) = file_with(b"abc\ndef\n");
        f.set_len(2).unwrap();
        assert!(last_line(&f, len, 1 << 20).is_err());
    }
}
