//! `once` against broken, hostile and busy workspaces: nothing lost, nothing outside touched.

use crate::common::*;
use serde_json::{Value, json};
use std::fs;
use std::process::{Command, Stdio};

const ID: &str = "worker-120000-abcdef";
const TASK: &str = "TASK-20261127-120000-0000aaaa";

/// A finished agent with a progress log and a prompt, its files settled long ago.
fn finished_agent(s: &Sandbox) -> std::path::PathBuf {
    let reg = write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    let task = s.task(TASK);
    fs::write(
        task.join(format!("progress/{ID}_progress.jsonl")),
        "{\"n\":1}\n",
    )
    .unwrap();
    fs::write(task.join(format!("agent_prompt_{ID}.txt")), "prompt").unwrap();
    age_files(&task);
    reg
}

#[test]
fn empty_and_half_written_registries_are_skipped_and_never_rewritten() {
    let s = Sandbox::new();
    let empty = write_task(&s.base(), "TASK-1", json!([agent_entry(ID, "working")]));
    fs::write(&empty, "").unwrap();
    let half = write_task(&s.base(), "TASK-2", json!([agent_entry(ID, "working")]));
    let text = fs::read_to_string(&half).unwrap();
    fs::write(&half, &text[..text.len() / 2]).unwrap();
    let out = s.run_ok(&["once"]);
    assert!(out.contains("TASK-1") && out.contains("skipped"), "{out}");
    assert!(out.contains("TASK-2"), "{out}");
    assert_eq!(fs::read(&empty).unwrap(), b"");
    assert_eq!(fs::read_to_string(&half).unwrap(), text[..text.len() / 2]);
}

#[test]
fn a_sidecar_left_by_a_crash_restores_the_registry() {
    let s = Sandbox::new();
    let reg = finished_agent(&s);
    let good = fs::read(&reg).unwrap();
    let mut sidecar = reg.clone().into_os_string();
    sidecar.push(".reaper");
    fs::write(&sidecar, &good).unwrap();
    fs::write(&reg, &good[..good.len() / 3]).unwrap();
    s.run_ok(&["once"]);
    let restored = read_json(&reg);
    assert_eq!(restored["agents"][0]["id"], ID);
    assert_eq!(
        restored["agents"][0]["auto_cleanup_result"]["success"],
        true
    );
    assert!(!std::path::Path::new(&sidecar).exists());
}

#[test]
fn unknown_status_is_left_alone() {
    let s = Sandbox::new();
    let reg = write_task(&s.base(), TASK, json!([agent_entry(ID, "paused")]));
    let task = s.task(TASK);
    let log = task.join(format!("progress/{ID}_progress.jsonl"));
    fs::write(&log, "{}\n").unwrap();
    fs::write(task.join(format!("agent_prompt_{ID}.txt")), "p").unwrap();
    age_files(&task);
    let before = snapshot_tree(&s.base());
    let out = s.run_ok(&["once"]);
    assert!(out.contains("unknown status"), "{out}");
    assert_eq!(snapshot_tree(&s.base()), before);
    assert_eq!(read_json(&reg)["agents"][0]["status"], "paused");
}

#[test]
fn hostile_ids_and_tracked_files_touch_nothing_outside() {
    let s = Sandbox::new();
    // A file outside the task that a hostile entry points at.
    let outside = s.dir.path().join("outside.jsonl");
    fs::write(&outside, "precious\n").unwrap();
    let victim_dir = s.dir.path().join("x");
    fs::create_dir_all(&victim_dir).unwrap();
    fs::write(victim_dir.join("y_progress.jsonl"), "also precious\n").unwrap();
    let mut tracked = agent_entry(ID, "completed");
    tracked["tracked_files"] = json!({
        "log_file": outside.to_string_lossy(),
        "progress_file": "/etc/passwd",
        "prompt_file": outside.to_string_lossy(),
    });
    let reg = write_task(
        &s.base(),
        TASK,
        json!([
            agent_entry("../../x", "completed"),
            agent_entry("../x/y", "working"),
            tracked
        ]),
    );
    let task = s.task(TASK);
    // A symlinked log pointing outside must not be archived through.
    std::os::unix::fs::symlink(&outside, task.join(format!("logs/{ID}_stream.jsonl"))).unwrap();
    age_files(&task);
    let out = s.run_ok(&["once"]);
    assert!(out.contains("skipped"), "{out}");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
    assert_eq!(
        fs::read_to_string(victim_dir.join("y_progress.jsonl")).unwrap(),
        "also precious\n"
    );
    assert!(fs::symlink_metadata(task.join(format!("logs/{ID}_stream.jsonl"))).is_ok());
    let reg = read_json(&reg);
    // Entries with unsafe ids are not rewritten.
    assert_eq!(reg["agents"][0]["id"], "../../x");
    assert!(reg["agents"][0].get("auto_cleanup_result").is_none());
    assert_eq!(reg["agents"][1]["status"], "working");
}

#[test]
fn an_existing_archive_name_is_never_overwritten() {
    let s = Sandbox::new();
    finished_agent(&s);
    let archive = s.task(TASK).join("archive");
    fs::create_dir_all(&archive).unwrap();
    let name = format!("{ID}_progress.jsonl");
    fs::write(archive.join(&name), "older archive\n").unwrap();
    s.run_ok(&["once"]);
    // One log, one archive: the new bytes go to its end (the older bytes kept), never
    // to a numbered sibling the orchestrator would not read.
    assert_eq!(
        fs::read_to_string(archive.join(&name)).unwrap(),
        "older archive\n{\"n\":1}\n"
    );
    assert!(!archive.join(format!("{ID}_progress.1.jsonl")).exists());
}

#[test]
fn a_log_held_open_for_writing_is_not_archived() {
    let s = Sandbox::new();
    finished_agent(&s);
    let log = s.task(TASK).join(format!("progress/{ID}_progress.jsonl"));
    // A writer that holds the log open but writes nothing more, in a user's own tmux
    // session: not the agent's process (another session's pane tree), so it is left
    // running and the log waits for it. (A writer outside any other session would be in
    // the agent's process set and stopped first.)
    let ready = s.dir.path().join("ready");
    s.start_session(
        "user-shell",
        &format!(
            "exec 3>>'{}'; : > '{}'; exec sleep 60",
            log.display(),
            ready.display()
        ),
    );
    assert!(wait_until(std::time::Duration::from_secs(10), || ready.exists()));
    age_files(&s.task(TASK));
    let out = s.run_ok(&["once"]);
    assert!(
        s.tmux()
            .args(["kill-session", "-t", "=user-shell"])
            .status()
            .unwrap()
            .success()
    );
    assert!(log.exists(), "archived while open for writing");
    assert!(out.contains("open for writing"), "{out}");
    let reg = read_json(&s.task(TASK).join("AGENT_REGISTRY.json"));
    assert!(reg["agents"][0].get("auto_cleanup_result").is_none());
    // Once the writer is gone, the next pass archives it.
    let id = agent_reaper::procs::openfiles::file_id(&log).unwrap();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        agent_reaper::procs::openfiles::writers_of(&std::collections::HashSet::from([id]))
            .is_empty()
    }));
    s.run_ok(&["once"]);
    assert!(!log.exists());
}

const PY_WRITER: &str = r#"
import fcntl, json, os, sys, time
path, stop = sys.argv[1], sys.argv[2]
print("ready", flush=True)
n = 0
while not os.path.exists(stop) or n < 50:
    with open(path, "r+") as f:
        deadline = time.time() + 10
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise
                time.sleep(0.01)
        data = json.load(f)
        n += 1
        data["py_updates"] = data.get("py_updates", 0) + 1
        data["agents"][1]["progress"] = n
        f.seek(0)
        json.dump(data, f, indent=2)
        f.truncate()
print(n, flush=True)
"#;

#[test]
fn locked_python_updates_interleave_with_once_without_loss() {
    let s = Sandbox::new();
    let mut agents = vec![agent_entry(ID, "completed")];
    agents.push(agent_entry("other-120001-abcdef", "working"));
    // Its session is gone too: it becomes a zombie, a second owned write.
    let reg = write_task(&s.base(), TASK, Value::Array(agents));
    let task = s.task(TASK);
    fs::write(task.join(format!("progress/{ID}_progress.jsonl")), "{}\n").unwrap();
    age_files(&task);
    let stop = s.dir.path().join("stop");
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(PY_WRITER)
        .arg(&reg)
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(py.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // Several passes while Python writes, so the lock changes hands both ways.
    for _ in 0..3 {
        s.run_ok(&["once"]);
    }
    fs::write(&stop, "").unwrap();
    let written: u64 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    assert!(py.wait().unwrap().success());
    let data = read_json(&reg);
    assert_eq!(data["py_updates"], written);
    assert_eq!(data["agents"][1]["progress"], written);
    assert_eq!(data["agents"][0]["auto_cleanup_result"]["success"], true);
    assert_eq!(data["agents"][1]["status"], "terminated");
    assert_eq!(data["active_count"], 0);
}

#[test]
fn an_archive_dir_on_another_filesystem_gets_a_verified_copy() {
    let s = Sandbox::new();
    let shm = tempfile::Builder::new()
        .prefix("reaper-archive-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let same_fs = nix::sys::statfs::statfs(shm.path())
        .unwrap()
        .filesystem_type()
        == nix::sys::statfs::statfs(s.dir.path())
            .unwrap()
            .filesystem_type();
    if same_fs {
        eprintln!("skipped: /dev/shm and the temp dir are on the same kind of filesystem");
        return;
    }
    s.write_config(&format!(
        "settle = \"300ms\"\narchive_dir = \"{}\"\n",
        shm.path().display()
    ));
    finished_agent(&s);
    let log = s.task(TASK).join(format!("progress/{ID}_progress.jsonl"));
    s.run_ok(&["once"]);
    assert!(!log.exists());
    let archived = shm.path().join(TASK).join(format!("{ID}_progress.jsonl"));
    assert_eq!(fs::read_to_string(&archived).unwrap(), "{\"n\":1}\n");
    let leftovers: Vec<_> = fs::read_dir(shm.path().join(TASK))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The copy was journaled and the step closed: nothing pending for the next start.
    let journal = s.dir.path().join("state/journal.jsonl");
    let text = fs::read_to_string(&journal).unwrap_or_default();
    let begun = text.matches("\"begin\"").count();
    let closed = text.matches("\"done\"").count() + text.matches("\"undone\"").count();
    assert_eq!((begun, closed), (1, 1), "{text}");
}

/// `n` numbered JSONL lines, `from` on.
fn lines(tag: &str, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{{\"{tag}\":{i}}}\n"))
        .collect()
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// The archive folder's files, by name.
fn archive_names(task: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(task.join("archive"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One archive per log, holding every line written to it exactly once, in order; and a
/// record that lists both archives.
fn assert_one_archive_each_line_once(s: &Sandbox, progress: &str, stream: &str) {
    let task = s.task(TASK);
    assert_eq!(
        archive_names(&task),
        [format!("{ID}_progress.jsonl"), format!("{ID}_stream.jsonl")],
        "one archive file per log, no numbered sibling"
    );
    let archived = |name: &str| fs::read_to_string(task.join("archive").join(name)).unwrap();
    assert_eq!(archived(&format!("{ID}_progress.jsonl")), progress);
    assert_eq!(archived(&format!("{ID}_stream.jsonl")), stream);
    let reg = read_json(&task.join("AGENT_REGISTRY.json"));
    let record = &reg["agents"][0]["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(record["log_files_archived"], true, "{record}");
    let listed: Vec<&str> = record["archived_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for name in ["progress", "stream"] {
        let path = task.join(format!("archive/{ID}_{name}.jsonl"));
        assert!(
            listed.contains(&path.to_str().unwrap()),
            "record lists {path:?}: {record}"
        );
    }
    assert_eq!(listed.len(), 2, "{record}");
}

#[test]
fn progress_arriving_while_the_stream_settles_ends_in_one_archive_per_log() {
    let s = Sandbox::new();
    s.write_config("settle = \"300ms\"\n");
    finished_agent(&s);
    let task = s.task(TASK);
    let progress_log = task.join(format!("progress/{ID}_progress.jsonl"));
    let stream_log = task.join(format!("logs/{ID}_stream.jsonl"));
    fs::write(&progress_log, lines("p", 0, 3)).unwrap();
    age_files(&task);
    // The stream log is still being written (never settled during the first pass)...
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, stream_log) = (stop.clone(), stream_log.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                append(&stream_log, &lines("s", n, 1));
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
            n
        })
    };
    wait_until(std::time::Duration::from_secs(5), || stream_log.exists());
    let out = s.run_ok(&["once"]);
    assert!(
        task.join(format!("archive/{ID}_progress.jsonl")).exists(),
        "the settled progress log went first: {out}"
    );
    let reg = read_json(&task.join("AGENT_REGISTRY.json"));
    assert!(
        reg["agents"][0].get("auto_cleanup_result").is_none(),
        "no record while a log still settles: {reg}"
    );
    // ...and the orchestrator appends more progress meanwhile (a new file at the old name).
    append(&progress_log, &lines("p", 3, 2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let streamed = writer.join().unwrap();
    age_files(&task);
    s.run_ok(&["once"]);
    assert_one_archive_each_line_once(&s, &lines("p", 0, 5), &lines("s", 0, streamed));
    // A third pass has nothing left to add.
    s.run_ok(&["once"]);
    assert_one_archive_each_line_once(&s, &lines("p", 0, 5), &lines("s", 0, streamed));
}

#[test]
fn a_kill_between_archive_and_record_ends_in_one_archive_per_log_and_a_full_record() {
    let s = Sandbox::new();
    finished_agent(&s);
    let task = s.task(TASK);
    let progress_log = task.join(format!("progress/{ID}_progress.jsonl"));
    fs::write(&progress_log, lines("p", 0, 3)).unwrap();
    fs::write(
        task.join(format!("logs/{ID}_stream.jsonl")),
        lines("s", 0, 4),
    )
    .unwrap();
    age_files(&task);
    let out = s
        .cmd(&["once"])
        .env("AGENT_REAPER_FAILPOINT", "after-archive")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed at the failpoint: {out:?}"
    );
    assert_eq!(archive_names(&task).len(), 2, "archived before the kill");
    let reg = read_json(&task.join("AGENT_REGISTRY.json"));
    assert!(reg["agents"][0].get("auto_cleanup_result").is_none());
    // The orchestrator appends one more progress line before the reaper comes back.
    append(&progress_log, &lines("p", 3, 1));
    age_files(&task);
    s.run_ok(&["once"]);
    assert_one_archive_each_line_once(&s, &lines("p", 0, 4), &lines("s", 0, 4));
}

#[test]
fn a_torn_tail_of_our_own_write_is_repaired_by_a_later_process() {
    let s = Sandbox::new();
    let reg = finished_agent(&s);
    let before_ours = read_json(&reg);
    s.run_ok(&["once"]);
    let ours = fs::read(&reg).unwrap();
    assert!(read_json(&reg)["agents"][0]["auto_cleanup_result"].is_object());
    // The orchestrator's unlocked open('w') + json.dump of what it read before our write,
    // its truncate landing before our in-place write and its data after: its shorter
    // document, then the rest of ours.
    let mut theirs = before_ours.clone();
    theirs["agents"][0]["progress"] = json!(99);
    let short = agent_reaper::registry::pyjson::to_python_json(&theirs);
    assert!(short.len() < ours.len());
    let mut torn = ours.clone();
    torn[..short.len()].copy_from_slice(short.as_bytes());
    fs::write(&reg, &torn).unwrap();
    assert!(
        serde_json::from_slice::<Value>(&torn).is_err(),
        "Extra data"
    );

    // `plan` says so and changes nothing.
    let out = s.run(&["plan"]);
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("torn"), "{said}");
    assert_eq!(fs::read(&reg).unwrap(), torn);

    // A new process (memory empty) proves it from `<registry>.reaper-seen` and cuts it.
    let out = s.run(&["once"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("repaired torn registry"), "{stderr}");
    let now = read_json(&reg);
    assert_eq!(
        now["agents"][0]["progress"], 99,
        "the orchestrator's document kept"
    );
    // Its rewrite dropped our record; the new one lists what is on disk.
    let record = &now["agents"][0]["auto_cleanup_result"];
    assert_eq!(record["success"], true, "{record}");
    assert_eq!(
        record["archived_files"],
        json!([s
            .task(TASK)
            .join(format!("archive/{ID}_progress.jsonl"))
            .to_string_lossy()]),
        "{record}"
    );
}

#[test]
fn a_registry_over_max_registry_size_is_reported_with_the_key_to_raise() {
    let s = Sandbox::new();
    let reg = finished_agent(&s);
    let before = fs::read(&reg).unwrap();
    s.write_config("max_registry_size = 100\n");
    let out = s.run(&["once"]);
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("max_registry_size") && said.contains(&format!("{} bytes", before.len())),
        "{said}"
    );
    assert_eq!(fs::read(&reg).unwrap(), before);
    assert!(
        s.task(TASK)
            .join(format!("progress/{ID}_progress.jsonl"))
            .exists()
    );
}

#[test]
fn a_later_pass_appends_to_the_one_archive_of_a_log() {
    let s = Sandbox::new();
    let reg = finished_agent(&s);
    let task = s.task(TASK);
    s.run_ok(&["once"]);
    let name = format!("{ID}_progress.jsonl");
    let archive = task.join("archive");
    assert_eq!(
        fs::read_to_string(archive.join(&name)).unwrap(),
        "{\"n\":1}\n"
    );
    // The orchestrator appends once more after the cleanup was recorded.
    fs::write(task.join("progress").join(&name), "{\"n\":2}\n").unwrap();
    age_files(&task);
    s.run_ok(&["once"]);
    assert_eq!(
        fs::read_to_string(archive.join(&name)).unwrap(),
        "{\"n\":1}\n{\"n\":2}\n"
    );
    assert!(!task.join("progress").join(&name).exists());
    let mut names: Vec<String> = fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, std::slice::from_ref(&name), "one archive per log");
    let record = &read_json(&reg)["agents"][0]["auto_cleanup_result"];
    let listed = record["archived_files"].to_string();
    assert!(listed.contains(&name), "{record}");
}

#[test]
fn a_hard_linked_archive_costs_that_agent_only() {
    let s = Sandbox::new();
    let other = "worker-120001-bbbbbb";
    let reg = write_task(
        &s.base(),
        TASK,
        json!([
            agent_entry(ID, "completed"),
            agent_entry(other, "completed")
        ]),
    );
    let task = s.task(TASK);
    for id in [ID, other] {
        fs::write(
            task.join(format!("progress/{id}_progress.jsonl")),
            format!("{{\"agent\":\"{id}\"}}\n"),
        )
        .unwrap();
    }
    // The archive name of the first agent's log is a hard link to a file outside.
    let outside = s.base().parent().unwrap().join("outside-victim.jsonl");
    fs::write(&outside, "precious\n").unwrap();
    fs::create_dir_all(task.join("archive")).unwrap();
    fs::hard_link(&outside, task.join(format!("archive/{ID}_progress.jsonl"))).unwrap();
    age_files(&task);
    let out = s.run(&["once"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
    assert!(text.contains("hard links"), "{text}");
    // Its log stays where it was, whole.
    assert_eq!(
        fs::read_to_string(task.join(format!("progress/{ID}_progress.jsonl"))).unwrap(),
        format!("{{\"agent\":\"{ID}\"}}\n")
    );
    // The other agent in the same task is cleaned in the same pass.
    assert_eq!(
        fs::read_to_string(task.join(format!("archive/{other}_progress.jsonl"))).unwrap(),
        format!("{{\"agent\":\"{other}\"}}\n")
    );
    let agents = read_json(&reg)["agents"].clone();
    assert_eq!(
        agents[1]["auto_cleanup_result"]["success"], true,
        "{agents}"
    );
    assert_ne!(
        agents[0]["auto_cleanup_result"]["success"], true,
        "{agents}"
    );
}

/// `plan | head` and the like: a reader that closed the pipe before the report was written
/// ends the command quietly, with success, in text and in JSON (it was a panic, exit 101).
#[test]
fn a_reader_that_stops_early_is_no_error() {
    let s = Sandbox::new();
    finished_agent(&s);
    for args in [&["plan"][..], &["plan", "--json"], &["status"]] {
        let mut child = s
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Gone before the pass has even started: every write meets a closed pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("error"),
            "{args:?}: {err}"
        );
    }
}
