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

const TASK_DONE: &str = "TASK-20261128-140000-0000dddd";
const TASK_BUSY: &str = "TASK-20261128-150000-0000eeee";

/// Sets `path`'s mtime to `days` before `now` (one `now` for the whole test: files of
/// one age tie, and go in name order).
fn set_age(path: &Path, now: std::time::SystemTime, days: u64) {
    let when = now - std::time::Duration::from_secs(days * 86_400);
    fs::File::options()
        .append(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// Every file in the archive folders of both tasks.
fn archived(s: &Sandbox) -> std::collections::BTreeSet<String> {
    [TASK_DONE, TASK_BUSY]
        .iter()
        .flat_map(|t| {
            let dir = s.task(t).join("archive");
            names(&dir)
                .into_iter()
                .map(move |n| dir.join(n).to_string_lossy().into_owned())
        })
        .collect()
}

fn planned_removals(s: &Sandbox) -> std::collections::BTreeSet<String> {
    let plan: serde_json::Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
    plan["archives"]["bases"][0]["remove"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn retention_removes_exactly_what_plan_listed_and_never_touches_a_task_with_an_active_agent() {
    let s = Sandbox::new();
    // Three cleaned agents in one task; in another, one cleaned agent beside an active one.
    let done_ids = [
        "worker-140001-aaaaaa",
        "worker-140002-bbbbbb",
        "worker-140003-cccccc",
    ];
    let (busy_done, busy_live) = ("worker-150001-dddddd", "worker-150002-eeeeee");
    write_task(
        &s.base(),
        TASK_DONE,
        json!(
            done_ids
                .iter()
                .map(|id| agent_entry(id, "completed"))
                .collect::<Vec<_>>()
        ),
    );
    write_task(
        &s.base(),
        TASK_BUSY,
        json!([
            agent_entry(busy_done, "completed"),
            agent_entry(busy_live, "working")
        ]),
    );
    s.start_session(&format!("agent_{busy_live}"), "sleep 600");
    for (task, id, kb) in [
        (TASK_DONE, done_ids[0], 40),
        (TASK_DONE, done_ids[1], 30),
        (TASK_DONE, done_ids[2], 20),
        (TASK_BUSY, busy_done, 50),
    ] {
        let t = s.task(task);
        fs::write(
            t.join(format!("logs/{id}_stream.jsonl")),
            vec![b'x'; kb * 1024],
        )
        .unwrap();
        fs::write(
            t.join(format!("progress/{id}_progress.jsonl")),
            "{\"n\":1}\n",
        )
        .unwrap();
        age_files(&t.join("logs"));
        age_files(&t.join("progress"));
    }
    s.run_ok(&["once"]);
    let before = archived(&s);
    assert_eq!(before.len(), 8, "{before:?}");
    // Ages: the busy task's archives are the oldest of all.
    let ages = [
        (TASK_DONE, done_ids[0], 45),
        (TASK_DONE, done_ids[1], 20),
        (TASK_DONE, done_ids[2], 10),
        (TASK_BUSY, busy_done, 90),
    ];
    let now = std::time::SystemTime::now();
    for (task, id, days) in ages {
        for name in [format!("{id}_stream.jsonl"), format!("{id}_progress.jsonl")] {
            set_age(&s.task(task).join("archive").join(name), now, days);
        }
    }
    // 30 days takes the 45-day-old agent's; 80 KiB in all (busy task included) then
    // takes the next oldest cleaned one (20 days).
    s.write_config(
        "settle = \"300ms\"\n[retention]\nmax_age = \"30d\"\nmax_total_size = \"80KiB\"\n",
    );
    let status = s.run_ok(&["status"]);
    assert!(
        status.contains("Archives in")
            && status.contains(TASK_DONE)
            && status.contains("agents not all cleaned"),
        "{status}"
    );
    let planned = planned_removals(&s);
    let in_archive = |task: &str, name: String| {
        s.task(task)
            .join("archive")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    let expected: std::collections::BTreeSet<String> = [done_ids[0], done_ids[1]]
        .iter()
        .flat_map(|id| {
            [
                in_archive(TASK_DONE, format!("{id}_stream.jsonl")),
                in_archive(TASK_DONE, format!("{id}_progress.jsonl")),
            ]
        })
        .collect();
    assert_eq!(planned, expected);
    assert_eq!(archived(&s), before, "plan changes nothing");
    s.run_ok(&["once"]);
    let gone: std::collections::BTreeSet<String> =
        before.difference(&archived(&s)).cloned().collect();
    assert_eq!(gone, planned, "once removed exactly what plan listed");

    // However small the limit, the task with an active agent keeps its archives.
    s.write_config("settle = \"300ms\"\n[retention]\nmax_total_size = 1\n");
    let planned = planned_removals(&s);
    assert!(planned.iter().all(|p| p.contains(TASK_DONE)), "{planned:?}");
    assert_eq!(planned.len(), 2, "{planned:?}");
    s.run_ok(&["once"]);
    let left = archived(&s);
    assert!(
        names(&s.task(TASK_DONE).join("archive")).is_empty(),
        "{left:?}"
    );
    assert_eq!(
        names(&s.task(TASK_BUSY).join("archive")),
        [
            format!("{busy_done}_progress.jsonl"),
            format!("{busy_done}_stream.jsonl")
        ]
    );
    assert!(
        s.session_exists(&format!("agent_{busy_live}")),
        "the active agent was left alone"
    );
}

#[test]
fn compress_kinds_choose_which_logs_are_compressed_and_findings_stay_readable() {
    let s = Sandbox::new();
    s.write_config("settle = \"300ms\"\ncompress = true\ncompress_kinds = [\"progress\"]\n");
    let task = finished_agent(&s, &stream_bytes(0, 100));
    fs::write(
        task.join(format!("findings/{ID}_findings.jsonl")),
        "{\"finding\":1}\n",
    )
    .unwrap();
    age_files(&task);
    s.run_ok(&["once"]);
    let archive = task.join("archive");
    assert_eq!(
        names(&archive),
        [
            format!("{ID}_findings.jsonl"),
            format!("{ID}_progress.jsonl.zst"),
            format!("{ID}_stream.jsonl"),
        ]
    );
    assert_eq!(
        decode(&archive.join(format!("{ID}_progress.jsonl.zst"))),
        b"{\"n\":1}\n"
    );
    // The orchestrator reads findings by name: still there, plain.
    assert_eq!(
        fs::read_to_string(archive.join(format!("{ID}_findings.jsonl"))).unwrap(),
        "{\"finding\":1}\n"
    );
}

#[test]
fn the_daemon_applies_retention_on_its_full_reconcile() {
    let s = Sandbox::new();
    let task = finished_agent(&s, &stream_bytes(0, 10));
    s.run_ok(&["once"]);
    let (old, young) = (
        task.join("archive").join(format!("{ID}_stream.jsonl")),
        task.join("archive").join(format!("{ID}_progress.jsonl")),
    );
    set_age(&old, std::time::SystemTime::now(), 40);
    s.write_config("settle = \"300ms\"\n[retention]\nmax_age = \"30d\"\n");
    let (held, log) = crate::common::guard::daemon_until(&s, |_| !old.exists());
    assert!(held, "the 40-day-old archive went: {log}");
    assert!(young.exists(), "the young one stays");
    assert!(log.contains("retention removed archive"), "{log}");
}
