//! The confinement rule made checkable: nothing outside `src/fs/` reaches the filesystem
//! by path, apart from a named allow-list.

use super::*;

// ---------------------------------------------------------------- the rule, checkable

/// Files outside `src/fs/` that may touch the filesystem by path, each with why it is not
/// a workspace path. Kept exact: an entry whose file no longer needs it fails too.
const FS_ALLOWED: &[(&str, &str)] = &[
    (
        "src/config/settings.rs",
        "reads the config file the user named",
    ),
    (
        "src/logging.rs",
        "opens the optional log file; stats /proc/self/fd/2",
    ),
    ("src/state.rs", "the state dir: its lock file and journal"),
    ("src/journal.rs", "the journal file in the state dir"),
    ("src/procs/openfiles.rs", "/proc/<pid>/fd readers"),
    ("src/procs/table.rs", "/proc readers"),
    ("src/procs/environ.rs", "/proc/<pid>/environ readers"),
    (
        "src/procs/cgroup.rs",
        "/proc/<pid>/cgroup and the cgroup filesystem (cgroup.procs, cgroup.kill)",
    ),
    ("src/procs/panemap.rs", "<state dir>/pane-map.json"),
    ("src/reap/cache/disk.rs", "<state dir>/clean-tasks.bin"),
    (
        "src/state_file.rs",
        "replaces a state-dir file (pane map, clean-task cache) atomically",
    ),
    (
        "src/reap/pass/phases.rs",
        "/proc/self/status: the daemon's own memory, for the debug log",
    ),
    (
        "src/archive/upload/ledger.rs",
        "<state dir>/uploaded.jsonl (uploads kept local)",
    ),
    (
        "src/archive/upload/profile.rs",
        "the AWS profile files in the user's home (~/.aws/credentials, ~/.aws/config)",
    ),
    ("src/hooks/pending.rs", "<state dir>/hooks-pending.json"),
    (
        "src/config/hooks.rs",
        "finds a hook program on $PATH (the admin's config, not a workspace)",
    ),
    (
        "src/watch.rs",
        "whether a configured base exists, to watch it or poll",
    ),
    (
        "src/watch/inotify.rs",
        "inotify_add_watch takes a path: a watch only, nothing opened, read or written; the \
         last component is not followed, and an event only ever asks for a confined pass",
    ),
    (
        "src/cli/demo.rs",
        "builds its own demo workspace in a temp dir it just created",
    ),
    (
        "src/registry/sqlite/index.rs",
        "the cross-project index in the user's home, not a workspace",
    ),
    (
        "src/registry/sqlite/dbfile.rs",
        "/proc/self/fd: proof that SQLite, which opens <base>/registry/state.sqlite3 by path, \
         holds the file the confined open (through fs/) found",
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
