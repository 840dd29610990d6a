//! Confinement test support: a decoy tree outside the workspace fingerprinted before and
//! after, the real binary run under a deadline (`once`, or `run` stopped by SIGTERM), and a
//! normal finished agent whose cleanup proves the pass went on.

use super::*;
use serde_json::json;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};

/// The finished agent every confinement test expects cleaned, in its own task.
pub const GOOD_TASK: &str = "TASK-20261127-120000-0000900d";
pub const GOOD: &str = "good-120000-abcdef";

/// What one entry of the decoy tree is: any change of bytes, type, identity or link count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Print {
    Dir,
    File {
        len: u64,
        hash: u64,
        ino: u64,
        nlink: u64,
    },
    Symlink(PathBuf),
    Other(u32),
}

/// Files outside the workspace that a confused reaper would act on: a full task folder
/// (`task/`) whose names match the attacked agents', a `registry/` folder, loose files.
pub struct Decoy {
    pub dir: PathBuf,
    before: BTreeMap<PathBuf, Print>,
}

impl Decoy {
    /// Builds the decoy beside the workspace, mirroring agents `ids` of task `task_id`.
    pub fn new(s: &Sandbox, task_id: &str, ids: &[&str]) -> Decoy {
        let dir = s.dir.path().join("decoy");
        let task = dir.join("task");
        for sub in ["logs", "progress", "findings", "archive", "output"] {
            fs::create_dir_all(task.join(sub)).unwrap();
        }
        fs::create_dir_all(dir.join("registry")).unwrap();
        let mut agents = Vec::new();
        let mut global = serde_json::Map::new();
        for id in ids {
            let mut e = agent_entry(id, "working");
            e["completed_at"] = json!("2025-10-29T23:02:51.838962");
            agents.push(e);
            global.insert(
                id.to_string(),
                json!({"task_id": task_id, "status": "working", "tmux_session": format!("agent_{id}")}),
            );
            for (rel, text) in [
                (format!("logs/{id}_stream.jsonl"), "{\"type\":\"result\"}\n"),
                (format!("logs/deploy_{id}.json"), "{}\n"),
                (format!("progress/{id}_progress.jsonl"), "{\"decoy\":1}\n"),
                (format!("findings/{id}_findings.jsonl"), "{\"decoy\":2}\n"),
                (format!("archive/{id}_progress.jsonl"), "{\"decoy\":3}\n"),
                (format!("archive/{id}_stream.jsonl"), "{\"decoy\":4}\n"),
                (format!("agent_prompt_{id}.txt"), "decoy prompt"),
            ] {
                fs::write(task.join(rel), text).unwrap();
            }
        }
        let registry = json!({"task_id": task_id, "agents": agents, "active_count": ids.len()});
        let text = serde_json::to_string_pretty(&registry).unwrap();
        fs::write(task.join("AGENT_REGISTRY.json"), &text).unwrap();
        fs::write(task.join("output/product.bin"), "decoy product").unwrap();
        let global = json!({"tasks": {}, "agents": global, "active_agents": ids.len()});
        fs::write(
            dir.join("registry/GLOBAL_REGISTRY.json"),
            serde_json::to_string_pretty(&global).unwrap(),
        )
        .unwrap();
        fs::write(dir.join("precious.txt"), "precious\n").unwrap();
        age_files(&dir);
        Decoy {
            before: fingerprint(&dir),
            dir,
        }
    }

    /// Takes the fingerprint again, after a test's own setup linked to decoy files.
    pub fn rebaseline(&mut self) {
        self.before = fingerprint(&self.dir);
    }

    pub fn task(&self) -> PathBuf {
        self.dir.join("task")
    }

    pub fn assert_untouched(&self, context: &str) {
        let after = fingerprint(&self.dir);
        let mut diff = Vec::new();
        for (path, print) in &self.before {
            match after.get(path) {
                None => diff.push(format!("removed or renamed: {}", path.display())),
                Some(now) if now != print => {
                    diff.push(format!("changed: {} {print:?} -> {now:?}", path.display()))
                }
                Some(_) => {}
            }
        }
        for path in after.keys().filter(|p| !self.before.contains_key(*p)) {
            diff.push(format!("added: {}", path.display()));
        }
        assert!(
            diff.is_empty(),
            "the decoy outside the workspace changed:\n{}\n--- output\n{context}",
            diff.join("\n")
        );
    }
}

/// Every entry under `root` (not following symlinks) with what it is.
pub fn fingerprint(root: &Path) -> BTreeMap<PathBuf, Print> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Print>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let ft = meta.file_type();
            let print = if ft.is_dir() {
                walk(&path, root, out);
                Print::Dir
            } else if ft.is_symlink() {
                Print::Symlink(fs::read_link(&path).unwrap())
            } else if ft.is_file() {
                let mut h = DefaultHasher::new();
                fs::read(&path).unwrap().hash(&mut h);
                Print::File {
                    len: meta.len(),
                    hash: h.finish(),
                    ino: meta.ino(),
                    nlink: meta.nlink(),
                }
            } else {
                Print::Other(meta.mode())
            };
            out.insert(rel, print);
        }
    }
    walk(root, root, &mut out);
    out
}

/// The normal finished agent (settled progress log, prompt) in its own task.
pub fn good_agent(s: &Sandbox) {
    write_task(
        &s.base(),
        GOOD_TASK,
        json!([agent_entry(GOOD, "completed")]),
    );
    let task = s.task(GOOD_TASK);
    fs::write(
        task.join(format!("progress/{GOOD}_progress.jsonl")),
        "{\"n\":1}\n",
    )
    .unwrap();
    fs::write(task.join(format!("agent_prompt_{GOOD}.txt")), "prompt").unwrap();
    age_files(&task);
}

/// The good agent's log is archived, its prompt gone and its cleanup recorded.
pub fn good_cleaned(s: &Sandbox) -> bool {
    let task = s.task(GOOD_TASK);
    let recorded = fs::read(task.join("AGENT_REGISTRY.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|r| r["agents"][0]["auto_cleanup_result"]["success"] == true);
    recorded
        && task.join(format!("archive/{GOOD}_progress.jsonl")).exists()
        && !task.join(format!("agent_prompt_{GOOD}.txt")).exists()
}

/// How long any one run may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The binary as a child with its output in files (readable while it runs).
pub struct Run {
    child: Child,
    out: PathBuf,
    pub what: String,
}

impl Run {
    pub fn start(s: &Sandbox, args: &[&str]) -> Run {
        let out = s.dir.path().join(format!(
            "{}-{}.out",
            args.join("-"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = fs::File::create(&out).unwrap();
        let child = s
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Run {
            child,
            out,
            what: format!("agent-reaper {}", args.join(" ")),
        }
    }

    pub fn text(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Polls `f` with the output so far until it holds (true), the binary exits or the
    /// deadline passes (false).
    pub fn poll_until(&mut self, mut f: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if f(&self.text()) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return f(&self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `sig` to the binary while its pid is its own (see `common::pinned::signal_child`).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        crate::common::pinned::signal_child(&self.child, sig);
    }

    /// Waits for the exit; kills the binary and fails the test if it hangs past `limit`.
    pub fn finish_within(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let text = self.text();
                eprintln!("$ {} -> {status}\n{text}", self.what);
                return (status, text);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} hung for {limit:?}\n{}", self.what, self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `once` under the deadline; its output. It must exit (any code: a refusal is fine).
pub fn once_within(s: &Sandbox) -> String {
    Run::start(s, &["once"]).finish_within(DEADLINE).1
}

/// The daemon, until `done` holds for its log so far (or the deadline passes), then
/// SIGTERM; it must exit 0 within the deadline. Returns its log and whether `done` held.
pub fn daemon_until(s: &Sandbox, done: impl FnMut(&str) -> bool) -> (bool, String) {
    let mut run = Run::start(s, &["run"]);
    let held = run.poll_until(done);
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, text) = run.finish_within(DEADLINE);
    assert_eq!(status.code(), Some(0), "daemon exit: {text}");
    (held, text)
}
