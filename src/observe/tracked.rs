//! The `tracked_files` rule: a registry field can only confirm one of the agent's own files,
//! never add another (a registry, a sidecar, `output/`, `archive/`, another agent's file).

use crate::workspace::AgentFiles;
use serde_json::Value;
use std::path::Path;

/// The most of a hostile path a warning repeats.
const SHOWN: usize = 120;

/// Checks `tracked_files` (`tracked`, not null) of one agent against its own files (`files`, in `task_dir` of a
/// task called `task_id`). Returns one warning naming the agent and every field that named
/// something else, or `None` when all fields confirm (or there are none). Nothing it names
/// is ever used: the agent's files are always its conventional ones.
pub fn check(
    agent: &str,
    tracked: &Value,
    task_id: &str,
    task_dir: &Path,
    files: &AgentFiles,
) -> Option<String> {
    let Some(fields) = tracked.as_object() else {
        return (!tracked.is_null())
            .then(|| format!("agent {agent}: tracked_files is not an object; ignored"));
    };
    let own: Vec<&Path> = std::iter::once(files.prompt.as_path())
        .chain(files.logs.iter().map(|(_, p)| p.as_path()))
        .collect();
    let mut refused = Vec::new();
    for (field, value) in fields {
        let confirms = match value {
            Value::Null => true,
            Value::String(raw) => own
                .iter()
                .any(|p| names_own_file(raw, p, task_id, task_dir)),
            _ => false,
        };
        if !confirms {
            refused.push(format!(
                "tracked_files.{} = {}",
                shorten(field),
                show(value)
            ));
        }
    }
    (!refused.is_empty()).then(|| {
        format!(
            "agent {agent}: {} not one of the agent's own files; ignored",
            refused.join(", ")
        )
    })
}

/// Does `raw` name `own` (a file directly below `task_dir`, or one folder down)? Either
/// exactly, relative to the task, or as any path ending in `<task id>/<the same names>`:
/// the orchestrator writes absolute paths, and a workspace may have moved since.
fn names_own_file(raw: &str, own: &Path, task_id: &str, task_dir: &Path) -> bool {
    if raw.contains('\0') {
        return false;
    }
    let Ok(rel) = own.strip_prefix(task_dir) else {
        return false;
    };
    let candidate = crate::workspace::normalize(&task_dir.join(raw));
    candidate == crate::workspace::normalize(own)
        || candidate.ends_with(Path::new(task_id).join(rel))
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", shorten(s)),
        other => shorten(&other.to_string()),
    }
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AgentId;
    use crate::workspace::{TaskDir, agent_files};
    use serde_json::json;

    const ID: &str = "worker-120000-abcdef";
    const TASK: &str = "TASK-20261127-120000-0000aaaa";

    fn setup() -> (TaskDir, AgentFiles) {
        let task = TaskDir::new(Path::new("/ws"), TASK);
        let files = agent_files(&task, &AgentId::parse(ID).unwrap());
        (task, files)
    }

    fn warn(tracked: Value) -> Option<String> {
        let (task, files) = setup();
        check(ID, &tracked, TASK, &task.dir, &files)
    }

    #[test]
    fn the_orchestrators_own_fields_confirm_quietly() {
        // As real_mcp_server.py writes them, on this machine and on one the workspace left.
        for ws in [
            format!("/ws/{TASK}"),
            format!("/home/old/.agent-workspace/{TASK}"),
        ] {
            let tracked = json!({
                "prompt_file": format!("{ws}/agent_prompt_{ID}.txt"),
                "log_file": format!("{ws}/logs/{ID}_stream.jsonl"),
                "progress_file": format!("{ws}/progress/{ID}_progress.jsonl"),
                "findings_file": format!("{ws}/findings/{ID}_findings.jsonl"),
                "deploy_log": format!("{ws}/logs/deploy_{ID}.json"),
            });
            assert_eq!(warn(tracked), None, "{ws}");
        }
        assert_eq!(
            warn(json!({ "log_file": format!("./logs/../logs/{ID}_stream.jsonl") })),
            None
        );
        assert_eq!(warn(json!({ "log_file": null })), None);
    }

    #[test]
    fn anything_else_is_one_warning_naming_the_agent_and_each_field() {
        let other = "other-120000-abcdef";
        let text = warn(json!({
            "log_file": "AGENT_REGISTRY.json",
            "progress_file": "AGENT_REGISTRY.json.reaper",
            "findings_file": format!("/ws/{TASK}/output/product.bin"),
            "deploy_log": "archive",
            "prompt_file": format!("agent_prompt_{other}.txt"),
            "extra": format!("logs/{other}_stream.jsonl"),
            "weird": 42,
        }))
        .expect("a warning");
        assert!(text.starts_with(&format!("agent {ID}:")), "{text}");
        for field in [
            "log_file",
            "progress_file",
            "findings_file",
            "deploy_log",
            "prompt_file",
            "extra",
            "weird",
        ] {
            assert!(text.contains(&format!("tracked_files.{field}")), "{text}");
        }
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn a_path_of_another_task_or_a_climb_does_not_confirm() {
        for raw in [
            format!("/ws/TASK-other/logs/{ID}_stream.jsonl"),
            format!("../{TASK}x/logs/{ID}_stream.jsonl"),
            format!("logs/{ID}_stream.jsonl\0"),
            format!("/etc/{ID}_stream.jsonl"),
        ] {
            assert!(warn(json!({ "log_file": raw })).is_some(), "{raw:?}");
        }
        // A prompt path is not the stream log's confirmation, but it is still own file:
        // swapped fields confirm the file named, which is harmless.
        assert_eq!(
            warn(json!({ "log_file": format!("agent_prompt_{ID}.txt") })),
            None
        );
    }

    #[test]
    fn a_huge_hostile_value_is_shortened() {
        let text = warn(json!({ "log_file": "z".repeat(100_000) })).unwrap();
        assert!(text.len() < 400, "{}", text.len());
        assert!(warn(json!("not an object")).is_some());
    }
}
