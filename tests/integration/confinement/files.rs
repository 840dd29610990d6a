//! Hard links to outside files as logs, prompts and archives; symlinks planted at every
//! name agent-reaper creates in a workspace.

use super::*;

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
