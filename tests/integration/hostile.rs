//! Hostile workspaces under `agent-reaper once`: symlinks pointing out, ids that climb or
//! carry NUL/newlines, tracked_files naming system files, registries that are symlinks,
//! FIFOs or 50 MB. Each gets a warning, and nothing outside the workspace changes.

use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const GOOD: &str = "good-120000-abcdef";

/// Files outside the workspace that hostile entries aim at.
struct Sentinel {
    dir: PathBuf,
    before: BTreeMap<PathBuf, Vec<u8>>,
    passwd: Vec<u8>,
}

impl Sentinel {
    fn new(s: &Sandbox) -> Sentinel {
        let dir = s.dir.path().join("outside");
        for sub in ["logs", "archive", "x"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for (name, text) in [
            ("precious.jsonl", "precious\n"),
            (&format!("logs/{GOOD}_stream.jsonl") as &str, "not yours\n"),
            ("x/y_progress.jsonl", "also precious\n"),
            ("AGENT_REGISTRY.json", "{\"agents\": []}"),
        ] {
            fs::write(dir.join(name), text).unwrap();
        }
        age_files(&dir);
        Sentinel {
            before: snapshot_tree(&dir),
            passwd: fs::read("/etc/passwd").unwrap(),
            dir,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            snapshot_tree(&self.dir),
            self.before,
            "something outside the workspace changed"
        );
        assert_eq!(fs::read("/etc/passwd").unwrap(), self.passwd);
    }
}

/// A finished agent with settled logs and a prompt: what a pass would clean.
fn finished(task: &Path, id: &str) {
    fs::write(
        task.join(format!("progress/{id}_progress.jsonl")),
        "{\"n\":1}\n",
    )
    .unwrap();
    fs::write(task.join(format!("agent_prompt_{id}.txt")), "prompt").unwrap();
}

/// `once` with a deadline (a FIFO must not hang it); stdout + stderr.
fn once(s: &Sandbox) -> String {
    let mut child = s
        .cmd(&["once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`once` hung for 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ agent-reaper once\n{text}");
    assert!(out.status.success(), "once failed: {text}");
    text
}

fn entry_of<'a>(reg: &'a Value, id: &str) -> &'a Value {
    reg["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap()
}

#[test]
fn symlinked_log_folder_and_log_pointing_outside_are_left_alone() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    let task_id = "TASK-20261127-120000-0000aaaa";
    let bad = "bad-120000-abcdef";
    write_task(
        &s.base(),
        task_id,
        json!([
            agent_entry(GOOD, "completed"),
            agent_entry(bad, "completed")
        ]),
    );
    let task = s.task(task_id);
    finished(&task, GOOD);
    age_files(&task);
    // logs/ itself is a symlink to a folder outside holding a stream log of that name.
    fs::remove_dir(task.join("logs")).unwrap();
    symlink(out_side.dir.join("logs"), task.join("logs")).unwrap();
    // A findings log that is a symlink to a file outside.
    symlink(
        out_side.dir.join("precious.jsonl"),
        task.join(format!("findings/{bad}_findings.jsonl")),
    )
    .unwrap();
    let text = once(&s);
    assert!(
        text.contains("symlink"),
        "no warning about the symlinks: {text}"
    );
    out_side.assert_untouched();
    assert!(
        fs::symlink_metadata(task.join(format!("findings/{bad}_findings.jsonl")))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The ordinary log of the good agent is still archived.
    assert!(task.join(format!("archive/{GOOD}_progress.jsonl")).exists());
}

#[test]
fn symlinked_archive_folder_is_not_archived_through() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    let task_id = "TASK-20261127-120000-0000bbbb";
    write_task(&s.base(), task_id, json!([agent_entry(GOOD, "completed")]));
    let task = s.task(task_id);
    finished(&task, GOOD);
    age_files(&task);
    symlink(out_side.dir.join("archive"), task.join("archive")).unwrap();
    let text = once(&s);
    out_side.assert_untouched();
    // The log stays where it was: no line lost, nothing written outside.
    assert_eq!(
        fs::read_to_string(task.join(format!("progress/{GOOD}_progress.jsonl"))).unwrap(),
        "{\"n\":1}\n",
        "{text}"
    );
    assert!(
        text.contains("archive"),
        "no warning about the archive folder: {text}"
    );
    let reg = read_json(&task.join("AGENT_REGISTRY.json"));
    assert_ne!(
        entry_of(&reg, GOOD)["auto_cleanup_result"]["log_files_archived"],
        true,
        "claims logs archived through a symlink"
    );
}

#[test]
fn hostile_ids_are_skipped_with_a_warning_and_the_rest_is_cleaned() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    let task_id = "TASK-20261127-120000-0000cccc";
    let long = "a".repeat(10_000);
    let ids: Vec<String> = vec![
        "../outside/x".into(),
        "..".into(),
        "a/b".into(),
        "nul\0id-120000-abcdef".into(),
        "new\nline-120000-abcdef".into(),
        "dots..x-120000-abcdef".into(),
        long.clone(),
    ];
    let mut agents: Vec<Value> = ids.iter().map(|id| agent_entry(id, "completed")).collect();
    agents.push(agent_entry(GOOD, "completed"));
    let reg_path = write_task(&s.base(), task_id, json!(agents));
    let task = s.task(task_id);
    finished(&task, GOOD);
    age_files(&task);
    let text = once(&s);
    out_side.assert_untouched();
    let reg = read_json(&reg_path);
    for id in &ids {
        let e = entry_of(&reg, id);
        assert!(
            e.get("auto_cleanup_result").is_none(),
            "hostile id {:?} was acted on",
            &id[..id.len().min(40)]
        );
        assert_eq!(e["status"], "completed");
    }
    assert_eq!(
        entry_of(&reg, GOOD)["auto_cleanup_result"]["success"],
        true,
        "{text}"
    );
    assert!(
        text.contains("skipped") || text.contains("agent id"),
        "{text}"
    );
    // The warning for the 10,000-character id does not print all of it... at least
    // does not print it more than once per pass.
    assert!(
        text.matches(&long).count() <= 1,
        "10k id repeated in the output"
    );
}

#[test]
fn tracked_files_naming_system_files_are_never_touched() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    let task_id = "TASK-20261127-120000-0000dddd";
    let mut e = agent_entry(GOOD, "completed");
    e["tracked_files"] = json!({
        "prompt_file": "/etc/passwd",
        "log_file": out_side.dir.join("precious.jsonl").to_string_lossy(),
        "progress_file": "/etc/passwd",
        "findings_file": out_side.dir.join("x/y_progress.jsonl").to_string_lossy(),
        "deploy_log": "/etc/shadow",
    });
    write_task(&s.base(), task_id, json!([e]));
    let task = s.task(task_id);
    finished(&task, GOOD);
    age_files(&task);
    let text = once(&s);
    out_side.assert_untouched();
    assert!(Path::new("/etc/shadow").exists());
    assert!(text.contains("tracked_files"), "no warning: {text}");
}

#[test]
fn a_registry_that_is_a_symlink_or_a_fifo_is_refused_without_hanging() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    // A registry that is a symlink to one outside.
    let t1 = s.task("TASK-20261127-120000-0000eeee");
    fs::create_dir_all(t1.join("progress")).unwrap();
    symlink(
        out_side.dir.join("AGENT_REGISTRY.json"),
        t1.join("AGENT_REGISTRY.json"),
    )
    .unwrap();
    // A registry that is a FIFO: opening it for reading would block forever.
    let t2 = s.task("TASK-20261127-120000-0000ffff");
    fs::create_dir_all(&t2).unwrap();
    nix::unistd::mkfifo(
        &t2.join("AGENT_REGISTRY.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // And a good task beside them still gets cleaned.
    let t3 = "TASK-20261127-120000-00001111";
    let reg3 = write_task(&s.base(), t3, json!([agent_entry(GOOD, "completed")]));
    finished(&s.task(t3), GOOD);
    age_files(&s.task(t3));
    let text = once(&s);
    out_side.assert_untouched();
    assert!(
        fs::symlink_metadata(t1.join("AGENT_REGISTRY.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(text.contains("TASK-20261127-120000-0000eeee"), "{text}");
    assert!(text.contains("TASK-20261127-120000-0000ffff"), "{text}");
    assert_eq!(
        entry_of(&read_json(&reg3), GOOD)["auto_cleanup_result"]["success"],
        true
    );
}

#[test]
fn a_50_mb_registry_is_handled_and_kept_whole() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    let task_id = "TASK-20261127-120000-00002222";
    let mut agents = vec![agent_entry(GOOD, "completed")];
    // 500 agents with 100 kB prompts: 50 MB of registry.
    for i in 0..500 {
        let mut a = agent_entry(&format!("big{i}-120000-abcdef"), "working");
        a["prompt"] = json!("p".repeat(100_000));
        agents.push(a);
    }
    let reg = write_task(&s.base(), task_id, json!(agents));
    assert!(fs::metadata(&reg).unwrap().len() > 50_000_000);
    let task = s.task(task_id);
    finished(&task, GOOD);
    age_files(&task);
    let started = Instant::now();
    let text = once(&s);
    eprintln!("50 MB registry pass took {:?}", started.elapsed());
    out_side.assert_untouched();
    let after = read_json(&reg);
    assert_eq!(after["agents"].as_array().unwrap().len(), 501);
    for a in &after["agents"].as_array().unwrap()[1..] {
        assert_eq!(a["prompt"].as_str().unwrap().len(), 100_000);
    }
    // Either cleaned, or refused with a warning naming the registry.
    let cleaned = entry_of(&after, GOOD)["auto_cleanup_result"]["success"] == true;
    assert!(cleaned || text.contains(task_id), "{text}");
}

#[test]
fn a_symlinked_task_folder_under_archive_dir_is_not_archived_through() {
    let s = Sandbox::new();
    let out_side = Sentinel::new(&s);
    let archive_root = s.dir.path().join("archive-root");
    fs::create_dir_all(&archive_root).unwrap();
    s.write_config(&format!(
        "settle = \"200ms\"\narchive_dir = {:?}\n",
        archive_root.display().to_string()
    ));
    let task_id = "TASK-20261127-120000-00003333";
    write_task(&s.base(), task_id, json!([agent_entry(GOOD, "completed")]));
    let task = s.task(task_id);
    finished(&task, GOOD);
    age_files(&task);
    // <archive_dir>/<task id> points outside.
    symlink(out_side.dir.join("archive"), archive_root.join(task_id)).unwrap();
    let text = once(&s);
    out_side.assert_untouched();
    assert_eq!(
        fs::read_to_string(task.join(format!("progress/{GOOD}_progress.jsonl"))).unwrap(),
        "{\"n\":1}\n",
        "{text}"
    );
}
