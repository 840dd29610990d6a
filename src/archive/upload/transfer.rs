//! One file to one object: put (single or multipart), then verify length and checksum.
//!
//! Verification compares the object's size (`HEAD`) with the local length, and its ETag
//! with the one S3 gives those bytes when put the way they were put: the MD5 of the
//! content for a single `PUT`, `md5(md5(part 1) ‖ … ‖ md5(part n))-n` for a multipart
//! upload in [`PART_SIZE`] parts. Both are computed from the local file while it is read,
//! so a verified upload costs one `HEAD`, not a download. Where the ETag is not an MD5
//! (SSE-KMS or SSE-C buckets, some S3-compatible servers), the object is read back and
//! compared byte for byte with the local file instead.
//!
//! Never two objects, never a silent overwrite: the key is deterministic; a `HEAD` first
//! finds an object an earlier run stored (a crash after the put), which then counts as
//! uploaded if it verifies and is reported as a conflict otherwise; a single put is
//! `PutMode::Create` (`If-None-Match: *`), so a racing writer cannot be overwritten either.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use futures_util::StreamExt;
use md5::{Digest, Md5};
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::failpoint;

/// Files up to this size go up in one `PUT`; larger ones as a multipart upload.
pub(crate) const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of multipart uploads (S3 needs at least 5 MiB per part but the last).
pub(crate) const PART_SIZE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The bucket did not answer as it should (unreachable, refused, throttled).
    #[error("{0}")]
    Remote(#[from] object_store::Error),
    #[error("reading the local file: {0}")]
    Local(#[from] io::Error),
    /// The key already holds an object that is not this file.
    #[error(
        "the bucket already holds a different object at this key ({size} bytes, ETag {etag}); \
         the local file is kept and the object left as it is"
    )]
    Conflict { size: u64, etag: String },
    /// The object was stored but does not verify against the local file.
    #[error(
        "the stored object does not match the local file ({size} bytes, ETag {etag}); the local file is kept"
    )]
    Mismatch { size: u64, etag: String },
}

/// How the object came to hold the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Put now, then verified.
    Stored,
    /// An earlier run had stored it (found by `HEAD`), verified now.
    AlreadyThere,
}

/// Uploads the first `len` bytes of `file` to `key` and verifies the object.
pub(crate) async fn upload(
    store: &dyn ObjectStore,
    key: &Key,
    file: &File,
    len: u64,
) -> Result<Placed, TransferError> {
    match store.head(key).await {
        Ok(meta) => {
            return match verify(store, key, file, len, &meta, None).await? {
                true => Ok(Placed::AlreadyThere),
                false => Err(conflict(&meta)),
            };
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let etag = if len <= SINGLE_PUT_MAX {
        let bytes = read_range(file, 0, len)?;
        let etag = hex(&Md5::digest(&bytes));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store.put_opts(key, PutPayload::from(bytes), opts).await {
            Ok(_) => {}
            // Someone stored it between our HEAD and PUT: judged like any object found.
            Err(object_store::Error::AlreadyExists { .. }) => {
                let meta = store.head(key).await?;
                return match verify(store, key, file, len, &meta, Some(&etag)).await? {
                    true => Ok(Placed::AlreadyThere),
                    false => Err(conflict(&meta)),
                };
            }
            Err(e) => return Err(e.into()),
        }
        etag
    } else {
        put_multipart(store, key, file, len).await?
    };
    failpoint::hit(failpoint::UPLOAD_AFTER_PUT);
    let meta = store.head(key).await?;
    match verify(store, key, file, len, &meta, Some(&etag)).await? {
        true => Ok(Placed::Stored),
        false => Err(TransferError::Mismatch {
            size: meta.size,
            etag: meta.e_tag.clone().unwrap_or_default(),
        }),
    }
}

/// Parts read one at a time (memory: one part), each hashed for the expected ETag.
async fn put_multipart(
    store: &dyn ObjectStore,
    key: &Key,
    file: &File,
    len: u64,
) -> Result<String, TransferError> {
    let mut upload = store.put_multipart(key).await?;
    let mut part_md5s = Vec::new();
    let mut off = 0;
    let result: Result<(), TransferError> = async {
        while off < len {
            let n = PART_SIZE.min(len - off);
            let part = read_range(file, off, n)?;
            part_md5s.extend_from_slice(&Md5::digest(&part));
            upload.put_part(PutPayload::from(part)).await?;
            off += n;
        }
        upload.complete().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Leave no parts behind (they are billed until aborted).
        let _ = upload.abort().await;
        return Err(e);
    }
    let parts = part_md5s.len() / 16;
    Ok(format!("{}-{parts}", hex(&Md5::digest(&part_md5s))))
}

/// The ETag S3 gives the first `len` bytes of `file` when uploaded as [`upload`] does.
pub(crate) fn expected_etag(file: &File, len: u64) -> io::Result<String> {
    if len <= SINGLE_PUT_MAX {
        return Ok(hex(&Md5::digest(read_range(file, 0, len)?)));
    }
    let mut part_md5s = Vec::new();
    let mut off = 0;
    while off < len {
        let n = PART_SIZE.min(len - off);
        part_md5s.extend_from_slice(&Md5::digest(read_range(file, off, n)?));
        off += n;
    }
    Ok(format!(
        "{}-{}",
        hex(&Md5::digest(&part_md5s)),
        part_md5s.len() / 16
    ))
}

/// Whether `meta` (the object at `key`) holds exactly the first `len` bytes of `file`:
/// same size, and the expected ETag, else the same bytes read back.
async fn verify(
    store: &dyn ObjectStore,
    key: &Key,
    file: &File,
    len: u64,
    meta: &ObjectMeta,
    etag: Option<&str>,
) -> Result<bool, TransferError> {
    if meta.size != len {
        return Ok(false);
    }
    let expected = match etag {
        Some(e) => e.to_string(),
        None => expected_etag(file, len)?,
    };
    let got = meta.e_tag.as_deref().unwrap_or("").trim_matches('"');
    if got.eq_ignore_ascii_case(&expected) {
        return Ok(true);
    }
    same_bytes(store, key, file, len).await
}

/// Reads the object back and compares it with the local file, chunk by chunk.
async fn same_bytes(
    store: &dyn ObjectStore,
    key: &Key,
    file: &File,
    len: u64,
) -> Result<bool, TransferError> {
    let mut stream = store.get(key).await?.into_stream();
    let mut off = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let n = chunk.len() as u64;
        if off + n > len || read_range(file, off, n)? != chunk.as_ref() {
            return Ok(false);
        }
        off += n;
    }
    Ok(off == len)
}

/// Exactly `len` bytes at `off`; a file shorter than that changed under us.
fn read_range(file: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

fn conflict(meta: &ObjectMeta) -> TransferError {
    TransferError::Conflict {
        size: meta.size,
        etag: meta.e_tag.clone().unwrap_or_default(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::io::Write;

    fn temp_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn single_put_md5_and_multipart_etag_are_computed_like_s3() {
        let f = temp_with(b"hello\n");
        assert_eq!(
            expected_etag(&f, 6).unwrap(),
            "b1946ac92492d2347c6235b4d2611184"
        );
        // Above SINGLE_PUT_MAX: parts of PART_SIZE, the ETag is the MD5 of their MD5s.
        let huge = vec![b'b'; SINGLE_PUT_MAX as usize + 1];
        let f = temp_with(&huge);
        let mut md5s = Vec::new();
        for part in huge.chunks(PART_SIZE as usize) {
            md5s.extend_from_slice(&Md5::digest(part));
        }
        let want = format!("{}-3", hex(&Md5::digest(&md5s)));
        assert_eq!(expected_etag(&f, huge.len() as u64).unwrap(), want);
    }

    #[test]
    fn a_second_upload_finds_the_object_and_a_different_file_is_a_conflict() {
        // InMemory's ETags are counters, not MD5s: verification reads the object back.
        let store = InMemory::new();
        let key = Key::from("h/base/TASK-1/a_stream.jsonl");
        let f = temp_with(b"line 1\nline 2\n");
        let first = block_on(upload(&store, &key, &f, 14)).unwrap();
        assert_eq!(first, Placed::Stored);
        let again = block_on(upload(&store, &key, &f, 14)).unwrap();
        assert_eq!(
            again,
            Placed::AlreadyThere,
            "no second object, no second put"
        );
        let other = temp_with(b"line 1\nLINE 2\n");
        let err = block_on(upload(&store, &key, &other, 14)).unwrap_err();
        assert!(matches!(err, TransferError::Conflict { .. }), "{err}");
        let stored = block_on(async { store.get(&key).await.unwrap().bytes().await.unwrap() });
        assert_eq!(stored.as_ref(), b"line 1\nline 2\n", "never overwritten");
    }
}
