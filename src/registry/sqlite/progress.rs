//! The terminal line we append to `progress/<id>_progress.jsonl`, so the orchestrator's own health checks agree with the DB.

use super::SqliteError;
use crate::registry::pyjson::to_python_json;
use serde_json::Value;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The message we store for a transition: who did it and why, since the DB has no reason column.
pub fn terminal_message(status: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("agent-reaper: marked {status} ({reason})"),
        None => format!("agent-reaper: marked {status}"),
    }
}

/// One progress line, as the orchestrator's `json.dumps` writes it: the same keys in the same
/// order, `", "`/`": "` separators, non-ASCII escaped, a trailing newline.
pub fn progress_line(
    timestamp: &str,
    agent_id: &str,
    status: &str,
    message: &str,
    progress: i64,
) -> String {
    let s = |v: &str| to_python_json(&Value::String(v.to_string()));
    format!(
        "{{\"timestamp\": {}, \"agent_id\": {}, \"status\": {}, \"message\": {}, \"progress\": {}}}\n",
        s(timestamp),
        s(agent_id),
        s(status),
        s(message),
        progress
    )
}

/// Appends `line` to the progress file at `path`: `<base>/<task>/progress/<id>_progress.jsonl`,
/// reached beneath the base without following a symlink (see [`append_progress_line_in`]).
pub fn append_progress_line(path: &Path, line: &str) -> Result<(), SqliteError> {
    // The base is three levels up: <base>/<task>/progress/<file>.
    let (dir, name) = crate::fs::open_parent_below(path, 3).map_err(|e| SqliteError::Append {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    append_progress_line_in(&dir, &name, line)
}

/// Appends `line` to `dir/name` (the task's `progress/` handle).
///
/// `O_APPEND` with one write, as the agents' own `open(..., 'a')` writers do, so lines do
/// not interleave; created if the agent never reported; a symlink, FIFO, device or a file
/// with another hard link is refused (`crate::fs`). If the file ends in a torn line (a
/// writer died mid-line), a newline first keeps ours parseable.
pub fn append_progress_line_in(
    dir: &crate::fs::Dir,
    name: &OsStr,
    line: &str,
) -> Result<(), SqliteError> {
    let path = dir.display(name);
    let fail = |source| SqliteError::Append {
        path: path.clone(),
        source,
    };
    // Readable too: the last byte tells whether the file ends in a torn line.
    let opened = dir
        .open_file(name, crate::fs::Purpose::AppendOrCreate)
        .map_err(|e| fail(e.into()))?;
    let file = opened.file;
    let len = opened.id.size;
    let mut buf = Vec::with_capacity(line.len() + 1);
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1).map_err(fail)?;
        if last[0] != b'\n' {
            buf.push(b'\n');
        }
    }
    buf.extend_from_slice(line.as_bytes());
    (&file).write_all(&buf).map_err(fail)?;
    file.sync_data().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_matches_the_orchestrators_shape() {
        let line = progress_line(
            "2026-11-27T10:00:00.000000",
            "fixer-100000-abcdef",
            "terminated",
            "gone \u{26a0} \"quoted\"",
            40,
        );
        assert_eq!(
            line,
            "{\"timestamp\": \"2026-11-27T10:00:00.000000\", \"agent_id\": \"fixer-100000-abcdef\", \
             \"status\": \"terminated\", \"message\": \"gone \\u26a0 \\\"quoted\\\"\", \"progress\": 40}\n"
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["message"], "gone \u{26a0} \"quoted\"");
    }

    #[test]
    fn a_torn_last_line_gets_a_newline_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a_progress.jsonl");
        std::fs::write(&path, "{\"timestamp\": \"x\"").unwrap();
        append_progress_line(&path, "{\"b\": 1}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"timestamp\": \"x\"\n{\"b\": 1}\n"
        );
        let fresh = dir.path().join("new_progress.jsonl");
        append_progress_line(&fresh, "{\"b\": 1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "{\"b\": 1}\n");
    }

    #[test]
    fn a_symlinked_progress_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("a_progress.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(append_progress_line(&link, "{}\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
    }

    #[test]
    fn messages_carry_the_reason() {
        assert_eq!(
            terminal_message("terminated", Some("session_not_found")),
            "agent-reaper: marked terminated (session_not_found)"
        );
    }

    #[test]
    fn a_symlinked_progress_folder_or_hard_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let task = dir.path().join("base/TASK-1");
        std::fs::create_dir_all(&task).unwrap();
        std::os::unix::fs::symlink(&outside, task.join("progress")).unwrap();
        let err = append_progress_line(&task.join("progress/a_progress.jsonl"), "{}\n");
        assert!(err.unwrap_err().to_string().contains("symlink"));
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // A hard link to an outside file in place of the progress file.
        std::fs::remove_file(task.join("progress")).unwrap();
        std::fs::create_dir(task.join("progress")).unwrap();
        std::fs::write(outside.join("victim"), "keep\n").unwrap();
        std::fs::hard_link(
            outside.join("victim"),
            task.join("progress/a_progress.jsonl"),
        )
        .unwrap();
        let err = append_progress_line(&task.join("progress/a_progress.jsonl"), "{}\n");
        assert!(err.unwrap_err().to_string().contains("hard links"));
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep\n"
        );
    }
}
