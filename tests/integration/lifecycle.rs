//! Archive lifecycle against the real binary: zstd compression (exact bytes, late bytes as a
//! further frame, a SIGKILL at each step), retention (exactly what `plan` listed, never a
//! task with an active agent).

use crate::common::*;
use serde_json::json;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

const ID: &str = "worker-130000-c0ffee";
const TASK: &str = "TASK-20261128-130000-0000cccc";

const COMPRESS: &str = "settle = \"300ms\"\ncompress = true\n";

/// Real-looking stream lines, with a last line that has no newline (bytes, not lines).
fn stream_bytes(from: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in from..from + n {
        out.extend_from_slice(
            format!(
                "{{\"type\":\"assistant\",\"message\":{{\"content\":[{{\"type\":\"text\",\"text\":\"step {i}: {}\"}}]}}}}\n",
                "x".repeat(i % 97)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(format!("{{\"partial\":{from}").as_bytes());
    out
}

/// A finished agent with a stream log and a progress log, settled long ago.
fn finished_agent(s: &Sandbox, stream: &[u8]) -> PathBuf {
    write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    let task = s.task(TASK);
    fs::write(task.join(format!("logs/{ID}_stream.jsonl")), stream).unwrap();
    fs::write(
        task.join(format!("progress/{ID}_progress.jsonl")),
        "{\"n\":1}\n",
    )
    .unwrap();
    age_files(&task);
    task
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn decode(path: &Path) -> Vec<u8> {
    zstd::stream::decode_all(fs::File::open(path).unwrap()).unwrap()
}

fn record_lists(task: &Path) -> Vec<String> {
    let reg = read_json(&task.join("AGENT_REGISTRY.json"));
    let record = &reg["agents"][0]["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record}");
    let mut listed: Vec<String> = record["archived_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    listed
}

/// The stream log is exactly one `.zst` decoding to `want`, progress stays plain, nothing
/// else (no `.partial`, no plain twin) in the archive, and the record names what is on disk.
fn assert_compressed_once(task: &Path, want: &[u8]) {
    let archive = task.join("archive");
    assert_eq!(
        names(&archive),
        [
            format!("{ID}_progress.jsonl"),
            format!("{ID}_stream.jsonl.zst")
        ],
        "one archive per log, the stream log compressed"
    );
    let zst = archive.join(format!("{ID}_stream.jsonl.zst"));
    assert!(decode(&zst) == want, "the .zst decodes to the exact bytes");
    assert_eq!(
        record_lists(task),
        [
            archive
                .join(format!("{ID}_progress.jsonl"))
                .to_string_lossy()
                .into_owned(),
            zst.to_string_lossy().into_owned()
        ]
    );
}

#[test]
fn compressed_archives_decode_to_the_exact_bytes_late_bytes_included() {
    let s = Sandbox::new();
    s.write_config(COMPRESS);
    let first = stream_bytes(0, 3000);
    let task = finished_agent(&s, &first);
    s.run_ok(&["once"]);
    assert_compressed_once(&task, &first);
    // The orchestrator writes to the stream log again after the archive was compressed.
    let late = stream_bytes(3000, 40);
    let log = task.join(format!("logs/{ID}_stream.jsonl"));
    fs::write(&log, &late).unwrap();
    age_files(&task);
    s.run_ok(&["once"]);
    assert!(!log.exists(), "the late write went into the archive");
    assert_compressed_once(&task, &[first.clone(), late.clone()].concat());
    // A third pass has nothing left to add.
    s.run_ok(&["once"]);
    assert_compressed_once(&task, &[first, late].concat());
}

fn killed_at(s: &Sandbox, point: &str) {
    let out = s
        .cmd(&["once"])
        .env("AGENT_REAPER_FAILPOINT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_sigkill_at_each_step_of_compression_loses_and_duplicates_nothing() {
    for point in [
        "compress-begun",
        "compress-torn",
        "compress-written",
        "compress-renamed",
        "compress-unlinked",
    ] {
        let s = Sandbox::new();
        s.write_config(COMPRESS);
        let bytes = stream_bytes(0, 2000);
        let task = finished_agent(&s, &bytes);
        killed_at(&s, point);
        // Never neither: the original or the .zst (or both, right after the rename).
        let archive = task.join("archive");
        let plain = archive.join(format!("{ID}_stream.jsonl"));
        let zst = archive.join(format!("{ID}_stream.jsonl.zst"));
        assert!(
            plain.exists() || zst.exists(),
            "{point}: {:?}",
            names(&archive)
        );
        if plain.exists() {
            assert!(
                fs::read(&plain).unwrap() == bytes,
                "{point}: original whole"
            );
        }
        s.run_ok(&["once"]);
        assert_compressed_once(&task, &bytes);
    }
}

#[test]
fn a_sigkill_at_each_step_of_a_late_frame_loses_and_duplicates_nothing() {
    for point in [
        "frame-begun",
        "frame-torn",
        "frame-written",
        "frame-marked",
        "frame-unlinked",
    ] {
        let s = Sandbox::new();
        s.write_config(COMPRESS);
        let first = stream_bytes(0, 500);
        let task = finished_agent(&s, &first);
        s.run_ok(&["once"]);
        let late = stream_bytes(500, 30);
        fs::write(task.join(format!("logs/{ID}_stream.jsonl")), &late).unwrap();
        age_files(&task);
        killed_at(&s, point);
        s.run_ok(&["once"]);
        assert!(
            !task.join(format!("logs/{ID}_stream.jsonl")).exists(),
            "{point}"
        );
        assert_compressed_once(&task, &[first.clone(), late.clone()].concat());
    }
}
