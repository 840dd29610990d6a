//! The disk's floor for a cleanup: the bare renames and unlinks `once` must do, timed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Threads unlinking prompts beside the one renaming thread: an unlink waits on the disk
/// (block freeing, a discard on `discard` mounts) and those waits overlap; renames across
/// folders take the filesystem's rename lock, so one thread moves them as fast as more.
const UNLINK_THREADS: usize = 4;
/// The prompt threads of a pass acting on a large backlog (`reap::apply::PROMPT_THREADS`).
const PROMPT_THREADS: usize = 4;

/// Moves every log of every task under `base` into the task's `archive/` and unlinks every
/// prompt, with nothing else (no check, no fsync, no registry): a lower bound for what
/// `once` does to the same tree. Returns how long it took.
pub fn rename_unlink_floor(base: &Path) -> Duration {
    floor(base, false)
}

/// [`rename_unlink_floor`] with the checks DESIGN.md asks of every file operation on an
/// agent's files, as `fs/` makes them: each move looks at the file before it (no symlink,
/// FIFO or hard link goes) and at the archive after it (the very file moved), and each
/// prompt is renamed aside to a private name, looked at there and only then unlinked.
/// Still no fsync and no registry: the floor of a cleanup that keeps its promises.
pub fn checked_floor(base: &Path) -> Duration {
    floor(base, true)
}

/// Both floors for the tree `write` makes (bare, checked), each timed on a copy of its own
/// under `dir`.
pub fn floors<T>(dir: &Path, write: impl Fn(&Path) -> T) -> (Duration, Duration) {
    let (bare, checked) = (dir.join("floor"), dir.join("floor-checked"));
    write(&bare);
    let bare = rename_unlink_floor(&bare);
    write(&checked);
    (bare, checked_floor(&checked))
}

fn floor(base: &Path, checked: bool) -> Duration {
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
    let threads = if checked {
        PROMPT_THREADS
    } else {
        UNLINK_THREADS
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for (from, to) in &moves {
                if checked {
                    fs::symlink_metadata(from).unwrap();
                }
                fs::rename(from, to).unwrap();
                if checked {
                    fs::symlink_metadata(to).unwrap();
                }
            }
        });
        for part in prompts.chunks(prompts.len().div_ceil(threads).max(1)) {
            scope.spawn(move || {
                for p in part {
                    if checked {
                        let aside = p.with_extension("reaper-aside");
                        fs::rename(p, &aside).unwrap();
                        fs::symlink_metadata(&aside).unwrap();
                        fs::remove_file(&aside).unwrap();
                    } else {
                        fs::remove_file(p).unwrap();
                    }
                }
            });
        }
    });
    started.elapsed()
}

/// Prints the floors beside a goal: the part of the goal no cleanup on this disk can beat,
/// bare and with the checks a cleanup must make.
pub fn floor_line(what: &str, (bare, checked): (Duration, Duration), goal: Duration) {
    let share = |d: Duration| 100.0 * d.as_secs_f64() / goal.as_secs_f64();
    println!(
        "  floor on this disk: {what}: {:.3} s of bare renames and unlinks ({:.0}% of the {:.3} s goal), {:.3} s with the checks fs/ makes ({:.0}%)",
        bare.as_secs_f64(),
        share(bare),
        goal.as_secs_f64(),
        checked.as_secs_f64(),
        share(checked),
    );
}
