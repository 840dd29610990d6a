//! Confinement (issue 9) against the real binary, `once` and `run`: folders swapped for
//! symlinks before and during a pass, hard links, symlinks at the names the daemon creates,
//! FIFOs/sockets/devices/folders where files belong, swaps between a check and an open, and
//! `tracked_files` aimed at what is not the agent's. Each test fingerprints a decoy tree
//! outside the workspace before and after, runs under a deadline, and checks that a normal
//! finished agent in the same workspace was still cleaned.

mod files;
mod folders;
mod rule;
mod special;

use crate::common::guard::*;
use crate::common::*;
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
