//! ENOSPC, EROFS and EACCES while archiving or writing a registry: the original stays
//! intact, the error is reported, and the next pass (space/permission back) finishes.
//!
//! Needs root and `mount` (tmpfs, remount ro); EACCES needs `setpriv` to drop
//! CAP_DAC_OVERRIDE (tests run as root, which chmod alone does not stop). Each test
//! prints SKIPPED and passes when its tool is not allowed here.

use crate::common::*;
use serde_json::{Value, json};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ID: &str = "worker-120000-abcdef";
const TASK: &str = "TASK-20261127-120000-0000abcd";

/// A tmpfs mounted for one test; unmounted on drop, even after a failed assertion.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "SKIPPED: cannot mount tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Mount(at.to_path_buf()))
    }

    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opts}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn once(s: &Sandbox) -> String {
    let out = s.run(&["once"]);
    report(out)
}

fn report(out: Output) -> String {
    assert!(out.status.success(), "once exited {}", out.status);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn recorded(reg: &Path) -> bool {
    let v: Value = serde_json::from_slice(&fs::read(reg).unwrap()).unwrap();
    v["agents"][0]["auto_cleanup_result"]["success"] == true
}

/// A finished agent whose progress log holds `log_bytes` of lines, settled long ago.
fn finished_agent(s: &Sandbox, log_bytes: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let reg = write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    let log = s.task(TASK).join(format!("progress/{ID}_progress.jsonl"));
    let mut text = Vec::new();
    let mut n = 0;
    while text.len() < log_bytes {
        writeln!(text, "{{\"seq\":{n},\"pad\":\"{}\"}}", "x".repeat(100)).unwrap();
        n += 1;
    }
    fs::write(&log, &text).unwrap();
    age_files(&s.task(TASK));
    (reg, log, text)
}

/// Files anywhere under `dir` whose name ends in `.partial`.
fn partials(dir: &Path) -> Vec<PathBuf> {
    snapshot_tree(dir)
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect()
}

/// Fills a filesystem to the last byte with one file.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
}

#[test]
fn enospc_on_a_cross_filesystem_archive_keeps_the_log_and_retries() {
    let s = Sandbox::new();
    let Some(archive) = Mount::tmpfs(&s.dir.path().join("archive-fs"), "64k") else {
        return;
    };
    s.write_config(&format!(
        "settle = \"200ms\"\narchive_dir = {:?}\n",
        archive.0.display().to_string()
    ));
    let (reg, log, text) = finished_agent(&s, 200_000);
    let out = once(&s);
    assert_eq!(fs::read(&log).unwrap(), text, "log changed: {out}");
    assert!(
        out.contains("No space left") || out.contains("ENOSPC") || out.contains("space"),
        "ENOSPC not reported: {out}"
    );
    assert!(
        partials(&archive.0).is_empty(),
        "partial copy left: {:?}",
        partials(&archive.0)
    );
    assert!(!recorded(&reg), "recorded success without archiving: {out}");
    // Space back: the next pass archives it, byte for byte.
    archive.remount("size=4m");
    let out = once(&s);
    let archived = archive.0.join(TASK).join(format!("{ID}_progress.jsonl"));
    assert_eq!(fs::read(&archived).unwrap(), text, "{out}");
    assert!(!log.exists());
    assert!(recorded(&reg), "{out}");
}

#[test]
fn enospc_writing_the_registry_keeps_it_intact_and_retries() {
    let s = Sandbox::new();
    let Some(ws) = Mount::tmpfs(&s.base(), "256k") else {
        return;
    };
    s.write_config("settle = \"200ms\"\ndelete_prompt_files = false\n");
    // No logs: recording the cleanup is the only write.
    let reg = write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    let before = fs::read(&reg).unwrap();
    let filler = ws.0.join("filler");
    fill(&filler);
    let out = once(&s);
    assert_eq!(fs::read(&reg).unwrap(), before, "registry changed: {out}");
    assert!(out.contains("No space left"), "ENOSPC not reported: {out}");
    fs::remove_file(&filler).unwrap();
    let out = once(&s);
    assert!(recorded(&reg), "{out}");
    assert!(!reg.with_extension("json.reaper").exists());
}

/// The sidecar fits but the registry's growth does not: the in-place write must not leave
/// a torn registry behind.
#[test]
fn enospc_growing_the_registry_in_place_does_not_tear_it() {
    let s = Sandbox::new();
    let Some(ws) = Mount::tmpfs(&s.base(), "256k") else {
        return;
    };
    s.write_config("settle = \"200ms\"\ndelete_prompt_files = false\n");
    // A registry just under one page, so the recorded result needs a second one.
    let mut entry = agent_entry(ID, "completed");
    let reg = write_task(&s.base(), TASK, json!([entry.clone()]));
    let len = fs::metadata(&reg).unwrap().len() as usize;
    entry["prompt"] = json!("p".repeat(4000 - len));
    let reg = write_task(&s.base(), TASK, json!([entry]));
    let before = fs::read(&reg).unwrap();
    assert!(before.len() <= 4096);
    let filler = ws.0.join("filler");
    fill(&filler);
    // Free exactly two pages: room for the (two-page) sidecar, none for the growth.
    let f = fs::OpenOptions::new().write(true).open(&filler).unwrap();
    let size = f.metadata().unwrap().len();
    f.set_len(size - size % 4096 - 8192).unwrap();
    drop(f);
    let out = once(&s);
    let now = fs::read(&reg).unwrap();
    let parses = serde_json::from_slice::<Value>(&now).is_ok();
    assert!(
        parses,
        "registry torn by ENOSPC mid-write ({} bytes, was {}): {out}",
        now.len(),
        before.len()
    );
    fs::remove_file(&filler).unwrap();
    let out = once(&s);
    assert!(recorded(&reg), "{out}");
    assert!(!reg.with_extension("json.reaper").exists());
}

#[test]
fn erofs_keeps_everything_and_the_next_pass_finishes() {
    let s = Sandbox::new();
    let Some(ws) = Mount::tmpfs(&s.base(), "4m") else {
        return;
    };
    s.write_config("settle = \"200ms\"\n");
    let (reg, log, text) = finished_agent(&s, 10_000);
    fs::write(s.task(TASK).join(format!("agent_prompt_{ID}.txt")), "p").unwrap();
    let before = snapshot_tree(&ws.0);
    ws.remount("ro");
    let out = once(&s);
    assert_eq!(snapshot_tree(&ws.0), before, "read-only fs changed?: {out}");
    assert!(out.contains("Read-only"), "EROFS not reported: {out}");
    ws.remount("rw");
    let out = once(&s);
    assert_eq!(
        fs::read(s.task(TASK).join(format!("archive/{ID}_progress.jsonl"))).unwrap(),
        text,
        "{out}"
    );
    assert!(!log.exists());
    assert!(recorded(&reg), "{out}");
}

/// `once` as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so modes apply.
fn once_without_dac(s: &Sandbox) -> Option<String> {
    let probe = Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "true"])
        .status();
    if !probe.is_ok_and(|st| st.success()) {
        println!("SKIPPED: setpriv cannot drop CAP_DAC_OVERRIDE here");
        return None;
    }
    let inner = s.cmd(&["once"]);
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
        "--",
    ])
    .arg(inner.get_program())
    .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    let text = report(out);
    eprintln!("$ setpriv … agent-reaper once\n{text}");
    Some(text)
}

#[test]
fn eacces_on_the_archive_folder_and_the_registry_keeps_originals_and_retries() {
    let s = Sandbox::new();
    s.write_config("settle = \"200ms\"\n");
    let (reg, log, text) = finished_agent(&s, 10_000);
    let task = s.task(TASK);
    // The archive folder exists but cannot be written; the registry is read-only.
    fs::create_dir_all(task.join("archive")).unwrap();
    fs::set_permissions(task.join("archive"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(&reg, fs::Permissions::from_mode(0o444)).unwrap();
    let before = snapshot_tree(&task);
    let Some(out) = once_without_dac(&s) else {
        return;
    };
    assert_eq!(snapshot_tree(&task), before, "{out}");
    assert!(
        out.contains("Permission denied"),
        "EACCES not reported: {out}"
    );
    fs::set_permissions(task.join("archive"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&reg, fs::Permissions::from_mode(0o644)).unwrap();
    let out = once_without_dac(&s).unwrap();
    assert_eq!(
        fs::read(task.join(format!("archive/{ID}_progress.jsonl"))).unwrap(),
        text,
        "{out}"
    );
    assert!(!log.exists());
    assert!(recorded(&reg), "{out}");
}
