//! The object-storage settings (`archive_url`, `archive_endpoint`): text → validated values (pure).

use std::fmt;

/// `s3://bucket/prefix`: where uploaded archives go. The prefix may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveUrl {
    pub bucket: String,
    /// Key segments before `<host>/<base>/<task>/<file>`, without slashes at either end.
    pub prefix: String,
}

impl fmt::Display for ArchiveUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

const EXAMPLE: &str = "write e.g. \"s3://my-bucket/agent-archives\"";

/// Parses `s3://bucket[/prefix]`. Bucket names follow S3's rules (3-63 characters of
/// `a-z 0-9 . -`, starting and ending with a letter or digit); prefix segments must not be
/// empty, `.` or `..` (a key the console and the CLI would show differently).
pub fn parse_archive_url(text: &str) -> Result<ArchiveUrl, String> {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("s3://") else {
        return Err(match text.split_once("://") {
            Some((scheme, _)) => {
                format!("scheme {scheme:?} is not supported, only s3://; {EXAMPLE}")
            }
            None => format!("expected an s3:// URL; {EXAMPLE}"),
        });
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(bucket)?;
    let prefix = prefix.trim_matches('/');
    if prefix.contains(['?', '#']) {
        return Err(format!("the prefix must not contain '?' or '#'; {EXAMPLE}"));
    }
    if !prefix.is_empty() {
        for segment in prefix.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(format!(
                    "prefix segment {segment:?} is empty, \".\" or \"..\"; {EXAMPLE}"
                ));
            }
        }
    }
    Ok(ArchiveUrl {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err(format!("no bucket name after s3://; {EXAMPLE}"));
    }
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !ends_ok(bucket.bytes().next())
        || !ends_ok(bucket.bytes().last())
    {
        return Err(format!(
            "bucket name {bucket:?} is not a valid S3 bucket name (3-63 characters of a-z, 0-9, \
             '.' and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// `archive_endpoint`: an `http://` or `https://` URL of an S3-compatible server
/// (MinIO, Ceph, a local test server). Plain http is allowed only when written here.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let host = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("expected an http:// or https:// URL, e.g. \"http://127.0.0.1:9000\"")?;
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(
            "expected scheme://host[:port] with no path, e.g. \"https://s3.example.com\"".into(),
        );
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix_are_split_and_trimmed() {
        let u = parse_archive_url("s3://my-bucket/agents/host-logs/").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "agents/host-logs");
        assert_eq!(u.to_string(), "s3://my-bucket/agents/host-logs");
        let u = parse_archive_url("s3://my-bucket").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("my-bucket", ""));
        assert_eq!(u.to_string(), "s3://my-bucket");
    }

    #[test]
    fn bad_urls_are_refused_with_the_fix() {
        for bad in [
            "my-bucket/x",
            "gs://b/x",
            "s3://",
            "s3://UPPER/x",
            "s3://ab",
            "s3://-bucket",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/x?y",
        ] {
            let err = parse_archive_url(bad).unwrap_err();
            assert!(
                err.contains("s3://") || err.contains("bucket name") || err.contains("prefix"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn endpoints_need_a_scheme_and_no_path() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9000/").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert!(parse_endpoint("127.0.0.1:9000").is_err());
        assert!(parse_endpoint("https://s3.example.com/bucket").is_err());
    }
}
