//! Tests of the observation of one agent: how its stream log ends, what its files are.

use super::*;
use std::fs;

fn end_of(dir: &Path, name: &str) -> StreamEnd {
    stream_end(&Dir::open_base(dir).unwrap(), Path::new(name))
}

#[test]
fn a_ten_megabyte_result_line_is_a_normal_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "{\"type\":\"assistant\"}\n{\"type\":\"result\",\"is_error\":false,\"result\":\"",
    );
    text.push_str(&"r".repeat(10 << 20));
    text.push_str("\"}\n");
    fs::write(dir.path().join("a_stream.jsonl"), text).unwrap();
    assert_eq!(
        end_of(dir.path(), "a_stream.jsonl"),
        StreamEnd::Result { is_error: false }
    );
}

#[test]
fn a_fifo_a_symlink_a_device_or_a_folder_is_no_result_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    assert_eq!(end_of(d, "fifo"), StreamEnd::NoResult);
    fs::write(d.join("real"), "{\"type\":\"result\"}\n").unwrap();
    assert_eq!(end_of(d, "real"), StreamEnd::Result { is_error: false });
    std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
    assert_eq!(end_of(d, "link"), StreamEnd::NoResult);
    std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
    assert_eq!(end_of(d, "zero"), StreamEnd::NoResult);
    fs::create_dir(d.join("folder")).unwrap();
    assert_eq!(end_of(d, "folder"), StreamEnd::NoResult);
    assert_eq!(end_of(d, "missing"), StreamEnd::NoResult);
}

/// A pass keeps every agent's [`DecidedAgent`] from deciding to its report: each byte here
/// is 40 KB of a 40,000-agent pass's peak.
#[test]
fn a_decided_agent_is_small() {
    assert!(std::mem::size_of::<super::DecidedAgent>() <= 96);
}
