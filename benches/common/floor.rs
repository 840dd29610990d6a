//! The disk's floor for a cleanup: the bare renames and unlinks `once` must do, timed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Threads unlinking prompts beside the one renaming thread: an unlink waits on the disk
/// (block freeing, a discard on `discard` mounts) and those waits overlap; renames across
/// folders take the filesystem's rename lock, so one thread moves them as fast as more.
const UNLINK_THREADS: usize = 4;

/// Moves every log of every task under `base` into the task's `archive/` and unlinks every
/// prompt, with nothing else (no check, no fsync, no registry): a lower bound for what
/// `once` does to the same tree. Returns how long it took.
pub fn rename_unlink_floor(base: &Path) -> Duration {
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut prompts: Vec<PathBuf> = Vec::new();
    for task in fs::read_dir(base).unwrap().flatten() {
        let dir = task.path();
        if !dir.is_dir() {
            continue;
        }
        let archive = dir.join("archive");
        fs::create_dir_all(&archive).unwrap();
        for sub in ["logs", "progress", "findings"] {
            let Ok(entries) = fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                moves.push((e.path(), archive.join(e.file_name())));
            }
        }
        for e in fs::read_dir(&dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("agent_prompt_") {
                prompts.push(e.path());
            }
        }
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for (from, to) in &moves {
                fs::rename(from, to).unwrap();
            }
        });
        for part in prompts.chunks(prompts.len().div_ceil(UNLINK_THREADS).max(1)) {
            scope.spawn(move || {
                for p in part {
                    fs::remove_file(p).unwrap();
                }
            });
        }
    });
    started.elapsed()
}

/// Prints the floor beside a goal: the part of the goal no cleanup on this disk can beat.
pub fn floor_line(what: &str, floor: Duration, goal: Duration) {
    println!(
        "  floor on this disk: {what}: {:.3} s of bare renames and unlinks ({:.0}% of the {:.3} s goal)",
        floor.as_secs_f64(),
        100.0 * floor.as_secs_f64() / goal.as_secs_f64(),
        goal.as_secs_f64()
    );
}
