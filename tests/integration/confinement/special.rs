//! FIFOs, sockets, devices and folders where files belong (and swapped in between a check
//! and an open), `tracked_files` aimed elsewhere, and reads that stay bounded.

use super::*;

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
