//! Torn-tail detection (pure): a registry that is one complete JSON document followed by bytes
//! that provably belong to a longer version of the same file, the mark of a shorter unlocked
//! `open('w')` write landing over a longer in-place one.

use serde_json::Value;

/// What the bytes of one known version of a registry keep for torn-tail proofs: its length
/// and its last `suffix.len()` bytes. A tail is provable when it lies inside that suffix,
/// so memory per version is bounded whatever the registry's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionTail {
    /// Length of the whole version.
    pub len: u64,
    /// Its last bytes: `version[len - suffix.len() .. len]`.
    pub suffix: Vec<u8>,
}

impl VersionTail {
    /// Keeps the last `keep` bytes of `bytes`.
    pub fn of(bytes: &[u8], keep: usize) -> VersionTail {
        let start = bytes.len().saturating_sub(keep);
        VersionTail {
            len: bytes.len() as u64,
            suffix: bytes[start..].to_vec(),
        }
    }

    /// `version[from..to]`, when that range is inside what is kept.
    fn range(&self, from: u64, to: u64) -> Option<&[u8]> {
        let kept_from = self.len - self.suffix.len() as u64;
        if from < kept_from || to > self.len || from > to {
            return None;
        }
        Some(&self.suffix[(from - kept_from) as usize..(to - kept_from) as usize])
    }
}

/// A proven torn registry: `bytes[..keep]` is the complete document (with any whitespace
/// its writer put after it); `bytes[keep..]` equals the same range of a known version.
#[derive(Debug, Clone, PartialEq)]
pub struct TornTail {
    pub keep: usize,
    pub extra: usize,
    pub document: Value,
}

/// How `bytes` splits into a first document and what follows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Parses as one document (trailing whitespace allowed, as Python's `json.load` does).
    Whole,
    /// One complete object ending at `end`, then `bytes[extra_at..]` (`extra_at >= end`,
    /// whitespace between), which starts with a non-space byte.
    Extra {
        end: usize,
        extra_at: usize,
        document: Value,
    },
    /// No complete first object: empty, half written, or not an object at all.
    Broken,
}

/// Splits `bytes` into its first JSON object and whatever follows.
pub fn shape(bytes: &[u8]) -> Shape {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    let document = match stream.next() {
        Some(Ok(v @ Value::Object(_))) => v,
        _ => return Shape::Broken,
    };
    let end = stream.byte_offset();
    match bytes[end..].iter().position(|b| !b.is_ascii_whitespace()) {
        None => Shape::Whole,
        Some(n) => Shape::Extra {
            end,
            extra_at: end + n,
            document,
        },
    }
}

/// The torn tail in `bytes`, if one of `versions` proves it: the bytes after the first
/// document equal the same byte range of that version. The cut is right after the
/// document when the whitespace there is the version's too, else after that whitespace
/// (the shorter writer's own). A tail of NUL bytes only is proof too: no writer writes
/// them; they are what `ftruncate` leaves when an in-place writer (the orchestrator's
/// `LockedRegistryFile`, an older agent-reaper) lengthens a file an unlocked `open('w')`
/// had just emptied, so cutting them loses no one's data. Anything else (no first
/// document, a tail nobody we know wrote there) is `None`: not ours to cut.
pub fn find_torn_tail<'a>(
    bytes: &[u8],
    versions: impl IntoIterator<Item = &'a VersionTail> + Clone,
) -> Option<TornTail> {
    let Shape::Extra {
        end,
        extra_at,
        document,
    } = shape(bytes)
    else {
        return None;
    };
    let to = bytes.len() as u64;
    let keep = [end, extra_at].into_iter().find(|&from| {
        versions
            .clone()
            .into_iter()
            .any(|v| v.range(from as u64, to) == Some(&bytes[from..]))
    });
    let keep = keep.or_else(|| {
        bytes[extra_at..]
            .iter()
            .all(|&b| b == 0)
            .then_some(extra_at)
    })?;
    Some(TornTail {
        keep,
        extra: bytes.len() - keep,
        document,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &str = "{\n  \"agents\": [\n    {\n      \"id\": \"a\",\n      \"status\": \"terminated\",\n      \"auto_cleanup_result\": {\"success\": true}\n    }\n  ],\n  \"active_count\": 0\n}";
    const SHORT: &str = "{\n  \"agents\": [\n    {\n      \"id\": \"a\",\n      \"status\": \"working\",\n      \"progress\": 40\n    }\n  ],\n  \"active_count\": 1\n}";

    /// What a shorter `open('w')` write over a longer file leaves: its bytes, then the rest.
    fn torn(short: &str, long: &str) -> Vec<u8> {
        let mut bytes = long.as_bytes().to_vec();
        bytes[..short.len()].copy_from_slice(short.as_bytes());
        bytes
    }

    #[test]
    fn a_shorter_write_over_a_version_we_wrote_is_provably_torn() {
        let bytes = torn(SHORT, LONG);
        assert!(
            serde_json::from_slice::<Value>(&bytes).is_err(),
            "extra data"
        );
        let seen = [VersionTail::of(LONG.as_bytes(), 1 << 20)];
        let t = find_torn_tail(&bytes, &seen).expect("provable");
        assert_eq!(t.keep, SHORT.len());
        assert_eq!(t.extra, LONG.len() - SHORT.len());
        assert_eq!(t.document["agents"][0]["progress"], 40);
    }

    #[test]
    fn a_tail_no_known_version_holds_there_is_not_ours_to_cut() {
        let bytes = torn(SHORT, LONG);
        // Another version, or the same bytes at another offset, proves nothing.
        let other = LONG.replace("\"active_count\": 0", "\"active_count\": 9");
        let shifted = format!(" {LONG}");
        for seen in [
            vec![VersionTail::of(other.as_bytes(), 1 << 20)],
            vec![VersionTail::of(shifted.as_bytes(), 1 << 20)],
            vec![],
        ] {
            assert_eq!(find_torn_tail(&bytes, &seen), None);
        }
        // Garbage after a document, half documents, non-objects and whole documents.
        let seen = [VersionTail::of(LONG.as_bytes(), 1 << 20)];
        for bytes in [
            format!("{SHORT}garbage"),
            LONG[..40].to_string(),
            String::new(),
            format!("[1] {}", &LONG[3..]),
            format!("{LONG}\n  \n"),
        ] {
            assert_eq!(find_torn_tail(bytes.as_bytes(), &seen), None, "{bytes:?}");
        }
    }

    #[test]
    fn whitespace_after_the_document_is_the_writers_and_is_kept() {
        let short = format!("{SHORT}\n");
        let bytes = torn(&short, LONG);
        let seen = [VersionTail::of(LONG.as_bytes(), 1 << 20)];
        let t = find_torn_tail(&bytes, &seen).expect("provable");
        // The cut is at the first byte that is not whitespace: the newline stays.
        assert_eq!(t.keep, short.len());
        assert_eq!(&bytes[..t.keep], short.as_bytes());
    }

    #[test]
    fn a_tail_beyond_the_kept_suffix_is_not_provable() {
        let bytes = torn(SHORT, LONG);
        let extra = LONG.len() - SHORT.len();
        let exact = [VersionTail::of(LONG.as_bytes(), extra)];
        assert!(find_torn_tail(&bytes, &exact).is_some());
        let spaces = bytes[SHORT.len()..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let short_keep = [VersionTail::of(LONG.as_bytes(), extra - spaces - 1)];
        assert_eq!(find_torn_tail(&bytes, &short_keep), None);
    }

    #[test]
    fn a_file_shorter_than_the_version_still_matches_its_range() {
        // The shorter writer's data landed, then its truncate never came (or another
        // truncate cut the longer version short): the extra is a middle range.
        let mut bytes = torn(SHORT, LONG);
        bytes.truncate(bytes.len() - 5);
        let seen = [VersionTail::of(LONG.as_bytes(), 1 << 20)];
        let t = find_torn_tail(&bytes, &seen).expect("provable");
        assert_eq!(t.keep, SHORT.len());
    }

    #[test]
    fn nul_bytes_after_the_document_are_nobodys_data_and_are_cut() {
        // An unlocked writer emptied the file, an in-place writer's ftruncate lengthened it
        // back to its own length, the unlocked writer's document landed in front.
        let mut bytes = format!("{SHORT}\n").into_bytes();
        let keep = bytes.len();
        bytes.resize(LONG.len(), 0);
        let t = find_torn_tail(&bytes, &[]).expect("NULs prove it");
        assert_eq!((t.keep, t.extra), (keep, LONG.len() - keep));
        assert_eq!(t.document["agents"][0]["progress"], 40);
        // NULs with anything else after the document prove nothing.
        for tail in [&b"\0\0x\0"[..], b"x\0\0", b"\0 }"] {
            let mut bytes = SHORT.as_bytes().to_vec();
            bytes.extend_from_slice(tail);
            assert_eq!(find_torn_tail(&bytes, &[]), None, "{tail:?}");
        }
    }

    #[test]
    fn shape_tells_whole_extra_and_broken_apart() {
        assert_eq!(shape(b"{\"a\": 1}\n"), Shape::Whole);
        assert_eq!(shape(b"{\"a\": 1"), Shape::Broken);
        assert_eq!(shape(b"[1]"), Shape::Broken);
        assert!(matches!(
            shape(b"{\"a\": 1}  x"),
            Shape::Extra {
                end: 8,
                extra_at: 10,
                ..
            }
        ));
    }
}
