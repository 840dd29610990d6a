//! Confinement (issue 9) against the real binary, `once` and `run`: folders swapped for
//! symlinks before and during a pass, hard links, symlinks at the names the daemon creates,
//! FIFOs/sockets/devices/folders where files belong, swaps between a check and an open, and
//! `tracked_files` aimed at what is not the agent's. Each test fingerprints a decoy tree
//! outside the workspace before and after, runs under a deadline, and checks that a normal
//! finished agent in the same workspace was still cleaned.

mod common;
mod common_sqlite;

use common::guard::*;
use common::*;
use serde_json::{Value, json};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Once,
    Daemon,
}

const FORMS: [Form; 2] = [Form::Once, Form::Daemon];

const VICTIM_TASK: &str = "TASK-20261127-120000-0000dead";

/// Fast settings for tests; `extra` adds keys (a `term_grace` in it replaces the default).
fn config(s: &Sandbox, extra: &str) {
    let term_grace = if extra.contains("term_grace") {
        ""
    } else {
        "term_grace = [\"200ms\"]\n"
    };
    s.write_config(&format!(
        "settle = \"200ms\"\nterminal_grace = \"0s\"\nzombie_grace = \"0s\"\n\
         reconcile_interval = \"1h\"\nsession_poll_interval = \"200ms\"\n\
         shutdown_timeout = \"5s\"\n{term_grace}{extra}"
    ));
}

/// One pass's worth of work in `form`: `once`, or the daemon until the good agent is
/// cleaned and a pass has finished (`ready:`) and `more` holds. Fails if the good agent
/// was not cleaned. Returns the output.
fn pass(s: &Sandbox, form: Form, mut more: impl FnMut(&str) -> bool) -> String {
    match form {
        Form::Once => {
            let text = once_within(s);
            assert!(good_cleaned(s), "good agent not cleaned by once:\n{text}");
            text
        }
        Form::Daemon => {
            let (held, text) = daemon_until(s, |log| {
                good_cleaned(s) && log.contains("ready:") && more(log)
            });
            assert!(
                held,
                "daemon: good agent not cleaned (or condition unmet):\n{text}"
            );
            text
        }
    }
}

/// A finished agent with all four of its files, settled, in `task` (JSON registry entry).
fn finished_files(task: &Path, id: &str) {
    for (rel, text) in [
        (format!("logs/{id}_stream.jsonl"), "{\"type\":\"result\"}\n"),
        (format!("progress/{id}_progress.jsonl"), "{\"n\":1}\n"),
        (format!("findings/{id}_findings.jsonl"), "{\"f\":1}\n"),
        (format!("agent_prompt_{id}.txt"), "prompt"),
    ] {
        let path = task.join(rel);
        if fs::symlink_metadata(path.parent().unwrap()).is_ok_and(|m| m.is_dir()) {
            fs::write(path, text).unwrap();
        }
    }
}

fn completed(id: &str) -> Value {
    let mut e = agent_entry(id, "completed");
    e["completed_at"] = json!("2025-10-29T23:02:51.838962");
    e
}

fn swap_for_symlink(path: &Path, target: &Path) {
    let mut moved = path.as_os_str().to_owned();
    moved.push(".moved");
    fs::rename(path, PathBuf::from(moved)).unwrap();
    symlink(target, path).unwrap();
}

/// Where a folder swap points: the decoy's folder of the same name.
fn decoy_for(decoy: &Decoy, what: &str) -> PathBuf {
    match what {
        "task" => decoy.task(),
        "registry" => decoy.dir.join("registry"),
        sub => decoy.task().join(sub),
    }
}

// ---------------------------------------------------------------- folders swapped before

/// Each folder a pass goes through, replaced by a symlink to the decoy's before the pass.
fn folder_symlinked_before_a_pass(what: &str) {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let ids = ["victim-120000-abcdef", "zombie-120000-abcdef"];
        let decoy = Decoy::new(&s, VICTIM_TASK, &ids);
        good_agent(&s);
        // A finished agent with its files, and a vanished active one whose stream ends
        // in a result (marked completed: a write to both registries).
        write_task(
            &s.base(),
            VICTIM_TASK,
            json!([completed(ids[0]), agent_entry(ids[1], "working")]),
        );
        let task = s.task(VICTIM_TASK);
        fs::create_dir_all(task.join("archive")).unwrap();
        for id in ids {
            finished_files(&task, id);
        }
        global_registry(&s, VICTIM_TASK, &ids);
        age_files(&s.base());
        let target = match what {
            "task" => task.clone(),
            "registry" => s.base().join("registry"),
            sub => task.join(sub),
        };
        swap_for_symlink(&target, &decoy_for(&decoy, what));
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
        assert!(
            fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{form:?}: the symlink itself was replaced"
        );
    }
}

fn global_registry(s: &Sandbox, task_id: &str, ids: &[&str]) {
    let mut agents = serde_json::Map::new();
    for id in ids {
        agents.insert(
            id.to_string(),
            json!({"task_id": task_id, "status": "working", "tmux_session": format!("agent_{id}")}),
        );
    }
    fs::create_dir_all(s.base().join("registry")).unwrap();
    fs::write(
        s.base().join("registry/GLOBAL_REGISTRY.json"),
        serde_json::to_string_pretty(&json!({"tasks": {}, "agents": agents, "active_agents": 2}))
            .unwrap(),
    )
    .unwrap();
}

#[test]
fn task_folder_symlinked_out_before_a_pass() {
    folder_symlinked_before_a_pass("task");
}

#[test]
fn archive_folder_symlinked_out_before_a_pass() {
    folder_symlinked_before_a_pass("archive");
}

#[test]
fn progress_folder_symlinked_out_before_a_pass() {
    folder_symlinked_before_a_pass("progress");
}

#[test]
fn findings_folder_symlinked_out_before_a_pass() {
    folder_symlinked_before_a_pass("findings");
}

#[test]
fn logs_folder_symlinked_out_before_a_pass() {
    folder_symlinked_before_a_pass("logs");
}

#[test]
fn registry_folder_symlinked_out_before_a_pass() {
    folder_symlinked_before_a_pass("registry");
}

/// An SQLite-backed task whose `progress/` points out: the terminal progress line of a
/// vanished agent is not appended to the outside file of the same name.
#[test]
fn progress_folder_symlinked_out_on_an_sqlite_task() {
    use common_sqlite::{TASK_A, WORKING, build_state_db};
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        build_state_db(&s.base());
        let decoy = Decoy::new(&s, TASK_A, &[WORKING]);
        good_agent(&s);
        let progress = s.task(TASK_A).join("progress");
        swap_for_symlink(&progress, &decoy.task().join("progress"));
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
    }
}

// ---------------------------------------------------------------- folders swapped during

/// A finished agent whose session ignores SIGTERM (the trap writes `marker`): the pass
/// waits on it between SIGTERM and SIGKILL, long enough to swap folders under it. Returns
/// once the trap is in place (a SIGTERM before that would simply end it).
fn stubborn_agent(s: &Sandbox, id: &str, marker: &Path) {
    let ready = marker.with_extension("ready");
    s.start_session(
        &format!("agent_{id}"),
        &format!(
            "bash -c 'trap \"echo term >> {}\" TERM; echo ready > {}; while :; do sleep 0.05; done'",
            marker.display(),
            ready.display()
        ),
    );
    assert!(
        wait_until(DEADLINE, || ready.exists()),
        "the stubborn agent never started"
    );
}

/// `what` is swapped for a symlink to the decoy's while the pass waits on a stubborn agent.
fn folder_swapped_during_a_pass(what: &str) {
    for form in FORMS {
        let s = Sandbox::new();
        // The stop waits 3 s after SIGTERM: the swap happens in that window.
        config(&s, "term_grace = [\"3s\"]\n");
        let ids = ["stubborn-120000-abcdef", "zombie-120000-abcdef"];
        let decoy = Decoy::new(&s, VICTIM_TASK, &ids);
        good_agent(&s);
        write_task(
            &s.base(),
            VICTIM_TASK,
            json!([completed(ids[0]), agent_entry(ids[1], "working")]),
        );
        let task = s.task(VICTIM_TASK);
        fs::create_dir_all(task.join("archive")).unwrap();
        for id in ids {
            finished_files(&task, id);
        }
        global_registry(&s, VICTIM_TASK, &ids);
        age_files(&s.base());
        let marker = s.dir.path().join("got-sigterm");
        stubborn_agent(&s, ids[0], &marker);
        let target = match what {
            "task" => task.clone(),
            "registry" => s.base().join("registry"),
            sub => task.join(sub),
        };
        let to = decoy_for(&decoy, what);
        let mut swapped = false;
        let mut swap = || {
            if !swapped && marker.exists() {
                swap_for_symlink(&target, &to);
                swapped = true;
            }
            swapped
        };
        let text = match form {
            Form::Once => {
                let mut run = Run::start(&s, &["once"]);
                let hit = run.poll_until(|_| swap());
                let (_, text) = run.finish_within(DEADLINE);
                assert!(hit, "once never sent SIGTERM to the stubborn agent\n{text}");
                assert!(good_cleaned(&s), "good agent not cleaned by once:\n{text}");
                text
            }
            Form::Daemon => pass(&s, form, |_| {
                swap() && !s.session_exists(&format!("agent_{}", ids[0]))
            }),
        };
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
        assert!(!s.session_exists(&format!("agent_{}", ids[0])));
    }
}

#[test]
fn task_folder_swapped_for_a_symlink_during_a_pass() {
    folder_swapped_during_a_pass("task");
}

#[test]
fn archive_folder_swapped_for_a_symlink_during_a_pass() {
    folder_swapped_during_a_pass("archive");
}

#[test]
fn progress_folder_swapped_for_a_symlink_during_a_pass() {
    folder_swapped_during_a_pass("progress");
}

#[test]
fn findings_folder_swapped_for_a_symlink_during_a_pass() {
    folder_swapped_during_a_pass("findings");
}

#[test]
fn logs_folder_swapped_for_a_symlink_during_a_pass() {
    folder_swapped_during_a_pass("logs");
}

#[test]
fn registry_folder_swapped_for_a_symlink_during_a_pass() {
    folder_swapped_during_a_pass("registry");
}

// ---------------------------------------------------------------- hard links

/// Hard links to outside files as a log, a prompt and an archive that late bytes would be
/// appended to: nothing moved, deleted or appended through them (link counts included).
#[test]
fn hard_links_as_logs_prompts_and_archives() {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let (linked, late) = ("linked-120000-abcdef", "late-120000-abcdef");
        let mut decoy = Decoy::new(&s, VICTIM_TASK, &[linked, late]);
        good_agent(&s);
        let mut recorded = completed(late);
        recorded["auto_cleanup_result"] = json!({"success": true, "log_files_archived": true});
        write_task(&s.base(), VICTIM_TASK, json!([completed(linked), recorded]));
        let task = s.task(VICTIM_TASK);
        fs::create_dir_all(task.join("archive")).unwrap();
        let d = decoy.task();
        for rel in [
            format!("progress/{linked}_progress.jsonl"),
            format!("logs/{linked}_stream.jsonl"),
            format!("agent_prompt_{linked}.txt"),
            // The late agent's archive is a hard link; its new progress bytes come late.
            format!("archive/{late}_progress.jsonl"),
        ] {
            fs::hard_link(d.join(&rel), task.join(&rel)).unwrap();
        }
        // Linking raised the decoy's link counts: that is the baseline to keep.
        decoy.rebaseline();
        fs::write(
            task.join(format!("progress/{late}_progress.jsonl")),
            "{\"late\":1}\n",
        )
        .unwrap();
        age_files(&task);
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
    }
}

// ---------------------------------------------------------------- planted names

/// Symlinks at every name the daemon creates in a workspace: the registry sidecar, the
/// health file and temp names it might use. Their targets stay as they were.
#[test]
fn symlinks_planted_at_the_daemons_own_names() {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
        good_agent(&s);
        // A finished agent in a task whose registry sidecar name is planted.

        let id = "planted-120000-abcdef";
        write_task(&s.base(), VICTIM_TASK, json!([completed(id)]));
        finished_files(&s.task(VICTIM_TASK), id);
        age_files(&s.task(VICTIM_TASK));
        let precious = decoy.dir.join("precious.txt");
        let task = s.task(VICTIM_TASK);
        for planted in [
            task.join("AGENT_REGISTRY.json.reaper"),
            task.join("AGENT_REGISTRY.json.tmp"),
            s.base().join(".daemon_health"),
            s.base().join(".daemon_health.tmp"),
            s.base().join(".daemon_health.tmp-reaper"),
            s.base().join("registry/GLOBAL_REGISTRY.json.reaper"),
        ] {
            fs::create_dir_all(planted.parent().unwrap()).unwrap();
            symlink(&precious, &planted).unwrap();
        }
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
    }
}

/// A symlink at the per-base lock file under `<base>/registry/`: never opened through; the
/// base is still cleaned (a planted name must not stop every cleanup of the base).
#[test]
fn a_symlink_planted_at_the_per_base_lock_file() {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
        good_agent(&s);
        fs::create_dir_all(s.base().join("registry")).unwrap();
        symlink(
            decoy.dir.join("precious.txt"),
            s.base().join("registry/.agent-reaper.lock"),
        )
        .unwrap();
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
    }
}

/// With `archive_dir` on another filesystem, the copy's `.partial` name is a planted
/// symlink to an outside file: the copy never writes through it.
#[test]
fn a_symlink_at_the_partial_name_of_a_cross_filesystem_copy() {
    let Some(shm) = Path::new("/dev/shm").is_dir().then_some("/dev/shm") else {
        println!("skipped: no /dev/shm tmpfs for a cross-filesystem archive_dir");
        return;
    };
    for form in FORMS {
        let s = Sandbox::new();
        let archive_root = tempfile::Builder::new()
            .prefix("reaper-archive-")
            .tempdir_in(shm)
            .unwrap();
        config(
            &s,
            &format!(
                "archive_dir = {:?}\n",
                archive_root.path().display().to_string()
            ),
        );
        let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
        let id = "copied-120000-abcdef";
        write_task(&s.base(), VICTIM_TASK, json!([completed(id)]));
        finished_files(&s.task(VICTIM_TASK), id);
        age_files(&s.task(VICTIM_TASK));
        let dest = archive_root.path().join(VICTIM_TASK);
        fs::create_dir_all(&dest).unwrap();
        for name in [
            format!("{id}_progress.jsonl.partial"),
            format!("{id}_stream.jsonl.partial"),
            format!("{id}_findings.jsonl.partial"),
        ] {
            symlink(decoy.dir.join("precious.txt"), dest.join(name)).unwrap();
        }
        let text = match form {
            Form::Once => once_within(&s),
            Form::Daemon => {
                daemon_until(&s, |log| {
                    log.contains("ready:") && dest.join(format!("{id}_progress.jsonl")).exists()
                })
                .1
            }
        };
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
        assert_eq!(
            fs::read_to_string(dest.join(format!("{id}_progress.jsonl"))).unwrap_or_default(),
            "{\"n\":1}\n",
            "{form:?}: the log was not copied whole beside the planted names\n{text}"
        );
    }
}

// ---------------------------------------------------------------- special files

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

fn bind_socket(path: &Path) -> std::os::unix::net::UnixListener {
    std::os::unix::net::UnixListener::bind(path).unwrap()
}

/// A character device where a log belongs, if this sandbox may make one.
fn mknod_zero(path: &Path) -> bool {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    match mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o644),
        makedev(1, 5),
    ) {
        Ok(()) => true,
        Err(e) => {
            println!("skipped the mknod case: {e} (no CAP_MKNOD here)");
            false
        }
    }
}

/// FIFOs, sockets, devices and folders where logs and registries belong: each costs its
/// own file or task a warning; nothing hangs, nothing grows, the rest is cleaned.
#[test]
fn fifos_sockets_devices_and_folders_in_place_of_logs_and_registries() {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
        good_agent(&s);
        let ids = [
            "fifo-120000-abcdef",
            "zero-120000-abcdef",
            "sock-120000-abcdef",
            "dir-120000-abcdef",
            "chr-120000-abcdef",
        ];
        // Vanished active agents: their stream log's end is read.
        let agents: Vec<Value> = ids.iter().map(|id| agent_entry(id, "working")).collect();
        write_task(&s.base(), VICTIM_TASK, json!(agents));
        let t = s.task(VICTIM_TASK);
        mkfifo(&t.join(format!("logs/{}_stream.jsonl", ids[0])));
        mkfifo(&t.join(format!("progress/{}_progress.jsonl", ids[0])));
        symlink("/dev/zero", t.join(format!("logs/{}_stream.jsonl", ids[1]))).unwrap();
        symlink(
            "/dev/zero",
            t.join(format!("findings/{}_findings.jsonl", ids[1])),
        )
        .unwrap();
        let _sockets = [
            bind_socket(&t.join(format!("logs/{}_stream.jsonl", ids[2]))),
            bind_socket(&t.join(format!("findings/{}_findings.jsonl", ids[2]))),
        ];
        fs::create_dir(t.join(format!("logs/{}_stream.jsonl", ids[3]))).unwrap();
        fs::create_dir(t.join(format!("progress/{}_progress.jsonl", ids[3]))).unwrap();
        mknod_zero(&t.join(format!("logs/{}_stream.jsonl", ids[4])));
        mkfifo(&t.join(format!("agent_prompt_{}.txt", ids[0])));
        // Registries that are not regular files.
        let r = |n: &str| {
            let d = s.base().join(format!("TASK-20261127-120000-0000{n}"));
            fs::create_dir_all(&d).unwrap();
            d.join("AGENT_REGISTRY.json")
        };
        mkfifo(&r("f1f0"));
        let _reg_socket = bind_socket(&r("50c0"));
        fs::create_dir(r("d1d0")).unwrap();
        symlink("/dev/zero", r("2e00")).unwrap();
        if !mknod_zero(&r("c4a0")) {
            fs::remove_dir(s.base().join("TASK-20261127-120000-0000c4a0")).unwrap();
        }
        fs::create_dir_all(s.base().join("registry")).unwrap();
        mkfifo(&s.base().join("registry/GLOBAL_REGISTRY.json"));
        age_files(&s.task(GOOD_TASK));
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
        // Each odd log costs its agent a warning naming it.
        for id in &ids[..4] {
            let name = format!("logs/{id}_stream.jsonl");
            assert!(
                text.lines()
                    .any(|l| l.contains(&name) && l.contains("not a regular file")),
                "{form:?}: no warning names {name}\n{text}"
            );
        }
        for n in ["f1f0", "50c0", "d1d0", "2e00"] {
            assert!(
                text.contains(&format!("TASK-20261127-120000-0000{n}")),
                "{form:?}: no warning names the task whose registry is not a file ({n})\n{text}"
            );
        }
    }
}

/// A log swapped between a regular file and a FIFO in a loop while passes run, for a
/// zombie's stream log (read), a finished agent's progress log (moved) and a cleaned
/// agent's late log (appended to its archive): no pass hangs, the rest is cleaned.
#[test]
fn a_log_swapped_between_a_file_and_a_fifo_in_a_loop() {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
        good_agent(&s);
        let (zombie, done, late) = (
            "zombie-120000-abcdef",
            "done-120000-abcdef",
            "late-120000-abcdef",
        );
        let mut recorded = completed(late);
        recorded["auto_cleanup_result"] = json!({"success": true, "log_files_archived": true});
        write_task(
            &s.base(),
            VICTIM_TASK,
            json!([agent_entry(zombie, "working"), completed(done), recorded]),
        );
        let t = s.task(VICTIM_TASK);
        fs::create_dir_all(t.join("archive")).unwrap();
        fs::write(
            t.join(format!("archive/{late}_progress.jsonl")),
            "{\"n\":0}\n",
        )
        .unwrap();
        let names = [
            t.join(format!("logs/{zombie}_stream.jsonl")),
            t.join(format!("progress/{done}_progress.jsonl")),
            t.join(format!("progress/{late}_progress.jsonl")),
        ];
        age_files(&s.base());
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let names = names.clone();
            std::thread::spawn(move || swap_loop(&names, &stop))
        };
        let text = pass(&s, form, |_| true);
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
    }
}

/// Until `stop`: each name is in turn a regular file (with a line) and a FIFO.
fn swap_loop(names: &[PathBuf], stop: &AtomicBool) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for name in names {
            let fifo = name.with_extension("fifo-swap");
            let file = name.with_extension("file-swap");
            if n.is_multiple_of(2) {
                let _ = fs::write(&file, format!("{{\"swap\":{n}}}\n"));
                let _ = fs::rename(&file, name);
            } else {
                let _ = fs::remove_file(&fifo);
                if nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
                    .is_ok()
                {
                    let _ = fs::rename(&fifo, name);
                }
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------- tracked_files

/// `tracked_files` naming the registry, its sidecar, `output/`, `archive/`, another
/// agent's files and an outside file: none of them is moved or deleted; one warning.
#[test]
fn tracked_files_naming_what_is_not_the_agents_own() {
    for form in FORMS {
        let s = Sandbox::new();
        config(&s, "");
        let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
        good_agent(&s);
        let (greedy, other) = ("greedy-120000-abcdef", "other-120000-abcdef");
        let t = s.task(VICTIM_TASK);
        let p = |rel: &str| t.join(rel).display().to_string();
        let mut e = completed(greedy);
        e["tracked_files"] = json!({
            "log_file": p("AGENT_REGISTRY.json"),
            "progress_file": p("AGENT_REGISTRY.json.reaper"),
            "findings_file": p("output/product.bin"),
            "deploy_log": p("archive"),
            "prompt_file": p(&format!("agent_prompt_{other}.txt")),
            "other_log": p(&format!("progress/{other}_progress.jsonl")),
            "outside": decoy.dir.join("precious.txt").display().to_string(),
        });
        // The other agent is alive in its session: its files are not to be touched.
        write_task(
            &s.base(),
            VICTIM_TASK,
            json!([e, agent_entry(other, "working")]),
        );
        s.start_session(&format!("agent_{other}"), "sleep 600");
        fs::create_dir_all(t.join("output")).unwrap();
        fs::create_dir_all(t.join("archive")).unwrap();
        fs::write(t.join("output/product.bin"), "product").unwrap();
        fs::write(t.join("archive/old.jsonl"), "old\n").unwrap();
        fs::write(t.join(format!("agent_prompt_{other}.txt")), "other prompt").unwrap();
        fs::write(t.join(format!("progress/{other}_progress.jsonl")), "{}\n").unwrap();
        age_files(&t);
        let kept = [
            "output/product.bin".to_string(),
            "archive/old.jsonl".to_string(),
            format!("agent_prompt_{other}.txt"),
            format!("progress/{other}_progress.jsonl"),
        ];
        let before: Vec<Vec<u8>> = kept.iter().map(|k| fs::read(t.join(k)).unwrap()).collect();
        let text = pass(&s, form, |_| true);
        decoy.assert_untouched(&format!("{form:?}\n{text}"));
        for (k, bytes) in kept.iter().zip(before) {
            assert_eq!(
                fs::read(t.join(k)).ok(),
                Some(bytes),
                "{form:?}: {k} moved or changed\n{text}"
            );
        }
        let reg = read_json(&t.join("AGENT_REGISTRY.json"));
        assert_eq!(reg["agents"].as_array().unwrap().len(), 2);
        let warnings = text
            .lines()
            .filter(|l| l.contains("tracked_files") && l.contains(greedy))
            .count();
        assert!(
            warnings >= 1,
            "{form:?}: no warning naming the agent and tracked_files\n{text}"
        );
        if form == Form::Once {
            assert_eq!(
                warnings, 1,
                "one warning per agent, not one per field\n{text}"
            );
        }
    }
}

// ---------------------------------------------------------------- daemon keeps going

/// A FIFO as a vanished agent's stream log does not stop the daemon: the good agent is
/// cleaned, the health file is written, and SIGTERM ends it (checked in `pass`).
#[test]
fn a_fifo_stream_log_does_not_stop_the_daemon_cleaning_the_rest() {
    let s = Sandbox::new();
    config(&s, "");
    let decoy = Decoy::new(&s, VICTIM_TASK, &[]);
    good_agent(&s);
    let id = "fifo-120000-abcdef";
    write_task(&s.base(), VICTIM_TASK, json!([agent_entry(id, "working")]));
    mkfifo(&s.task(VICTIM_TASK).join(format!("logs/{id}_stream.jsonl")));
    let text = pass(&s, Form::Daemon, |_| {
        s.base().join(".daemon_health").is_file()
    });
    decoy.assert_untouched(&text);
}

// ---------------------------------------------------------------- the rule, checkable

/// Files outside `src/fs/` that may touch the filesystem by path, each with why it is not
/// a workspace path. Kept exact: an entry whose file no longer needs it fails too.
const FS_ALLOWED: &[(&str, &str)] = &[
    ("src/config.rs", "reads the config file the user named"),
    (
        "src/logging.rs",
        "opens the optional log file; stats /proc/self/fd/2",
    ),
    (
        "src/instance.rs",
        "the state dir: its lock file and journal",
    ),
    ("src/journal.rs", "the journal file in the state dir"),
    ("src/procs/openfiles.rs", "/proc/<pid>/fd readers"),
    ("src/procs/table.rs", "/proc readers"),
    (
        "src/watch.rs",
        "whether a configured base exists, to watch it or poll",
    ),
    (
        "src/demo.rs",
        "builds its own demo workspace in a temp dir it just created",
    ),
    (
        "src/registry/sqlite/index.rs",
        "the cross-project index in the user's home, not a workspace",
    ),
    (
        "src/dbtasks.rs",
        "an lstat of <base>/<task id> to list DB-backed task folders; the folder itself is \
         only ever opened through TaskDir::handle",
    ),
    (
        "src/registry/sqlite.rs",
        "<base>/registry/state.sqlite3: SQLite opens the DB and its -wal/-shm by path; \
         checked first to be a plain file (not yet through fs/)",
    ),
];

/// Calls that reach the filesystem by path (besides functions of `std::fs`/`rustix::fs`,
/// found by `names_fs_function`).
const FS_CALLS: &[&str] = &[
    "File::open",
    "File::create",
    "File::options",
    "OpenOptions",
    "read_dir(",
    ".exists()",
    "try_exists(",
    "canonicalize(",
    "symlink_metadata(",
    "remove_file(",
    "hard_link(",
];

/// The code of a source file without its unit-test module and comment lines.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push((i + 1, *line));
    }
    out
}

/// Does the line use a function of `std::fs` or `rustix::fs`, or import the module itself
/// (`use std::fs;`, then `fs::read(..)`)? Types alone (`std::fs::File`, `OFlags`) are
/// fine: they describe what is already open.
fn names_fs_function(line: &str) -> bool {
    // Functions of an already-open descriptor reach no path (`statx` is used with
    // AT_EMPTY_PATH on a descriptor, for a birth time).
    const FD_ONLY: &[&str] = &[
        "statx",
        "fstat",
        "fsync",
        "fdatasync",
        "flock",
        "fcntl_getfl",
        "fcntl_setfl",
        "ftruncate",
        "fallocate",
        "fadvise",
        "seek",
    ];
    let lowercase = |name: &str| {
        let name = name.trim();
        name.starts_with(|c: char| c.is_ascii_lowercase())
            && !FD_ONLY.iter().any(|f| {
                name.strip_prefix(f)
                    .is_some_and(|r| !r.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
            })
    };
    ["std::fs", "rustix::fs"].iter().any(|module| {
        line.match_indices(module).any(|(i, _)| {
            let rest = &line[i + module.len()..];
            match rest.strip_prefix("::") {
                Some(items) if items.starts_with('{') => items[1..]
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .any(lowercase),
                Some(item) => lowercase(item),
                // `use std::fs;` or `std::fs` as a path prefix of nothing: the module.
                None => true,
            }
        })
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Nothing outside `src/fs/` reaches the filesystem by path, except the named exceptions.
#[test]
fn nothing_outside_src_fs_touches_files_by_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut offenders = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for path in files {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().unwrap().to_string_lossy();
        if rel.starts_with("src/fs/") || name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let hits: Vec<String> = code_lines(&text)
            .into_iter()
            .filter(|(_, l)| names_fs_function(l) || FS_CALLS.iter().any(|c| l.contains(c)))
            .map(|(n, l)| format!("{rel}:{n}: {}", l.trim()))
            .collect();
        if hits.is_empty() {
            continue;
        }
        if FS_ALLOWED.iter().any(|(f, _)| *f == rel) {
            used.insert(rel);
        } else {
            offenders.extend(hits);
        }
    }
    let stale: Vec<&str> = FS_ALLOWED
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| !used.contains(*f))
        .collect();
    assert!(
        offenders.is_empty(),
        "filesystem calls by path outside src/fs/ (go through crate::fs, or add the file \
         to FS_ALLOWED with the reason it is not a workspace path):\n{}",
        offenders.join("\n")
    );
    assert!(
        stale.is_empty(),
        "FS_ALLOWED names files that no longer need it: {stale:?}"
    );
}

// ---------------------------------------------------------------- bounded reads

/// A vanished agent whose stream log ends in a 10 MB result line finished normally: it is
/// marked completed, not terminated (the tail is read backwards past 1 MB).
#[test]
fn a_ten_megabyte_result_line_is_a_normal_finish() {
    let s = Sandbox::new();
    config(&s, "");
    good_agent(&s);
    let id = "verbose-120000-abcdef";
    let reg = write_task(&s.base(), VICTIM_TASK, json!([agent_entry(id, "working")]));
    let mut text = String::from(
        "{\"type\":\"assistant\"}\n{\"type\":\"result\",\"is_error\":false,\"result\":\"",
    );
    text.push_str(&"x".repeat(10 << 20));
    text.push_str("\"}\n");
    fs::write(
        s.task(VICTIM_TASK).join(format!("logs/{id}_stream.jsonl")),
        text,
    )
    .unwrap();
    age_files(&s.task(VICTIM_TASK));
    let out = pass(&s, Form::Once, |_| true);
    assert_eq!(
        read_json(&reg)["agents"][0]["status"],
        "completed",
        "a normal finish read as something else\n{out}"
    );
}
