//! Task folder, `archive/`, `progress/`, `findings/`, `logs/` and `registry/` replaced by
//! symlinks to a decoy's, before a pass and while it waits on an agent that ignores SIGTERM.

use super::*;

// ---------------------------------------------------------------- folders swapped before

/// A sandbox with the normal agent, a decoy for `ids`, and the victim task: a finished agent
/// `ids[0]` with its files, and a vanished active one `ids[1]` whose stream ends in a result
/// (marked completed: a write to both registries). Returns the task folder too.
fn victim_task(config_extra: &str, ids: [&str; 2]) -> (Sandbox, Decoy, PathBuf) {
    let s = Sandbox::new();
    config(&s, config_extra);
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
    (s, decoy, task)
}

/// Each folder a pass goes through, replaced by a symlink to the decoy's before the pass.
fn folder_symlinked_before_a_pass(what: &str) {
    for form in FORMS {
        let ids = ["victim-120000-abcdef", "zombie-120000-abcdef"];
        let (s, decoy, task) = victim_task("", ids);
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
    use crate::common_sqlite::{TASK_A, WORKING, build_state_db};
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
        let ids = ["stubborn-120000-abcdef", "zombie-120000-abcdef"];
        // The stop waits 3 s after SIGTERM: the swap happens in that window.
        let (s, decoy, task) = victim_task("term_grace = [\"3s\"]\n", ids);
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
