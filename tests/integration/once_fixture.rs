//! `once`, `plan` and `status` on a copy of the real October 2025 orchestrator workspace.

use crate::common::*;
use serde_json::Value;
use std::fs;

/// Fields we may change on an agent we transition or clean up.
const OWNED: &[&str] = &[
    "status",
    "last_update",
    "completed_at",
    "terminated_at",
    "termination_reason",
    "auto_cleanup_result",
    "auto_cleanup_timestamp",
];

fn registries(s: &Sandbox) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(s.base())
        .unwrap()
        .map(|e| e.unwrap().path().join("AGENT_REGISTRY.json"))
        .filter(|p| p.exists())
        .collect();
    out.push(s.base().join("registry/GLOBAL_REGISTRY.json"));
    out.sort();
    out
}

/// Every key that was in `before` is in `after` with the same value, unless we own it.
fn assert_preserved(before: &Value, after: &Value, path: &str) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in b {
                let inner = format!("{path}.{k}");
                let av = a.get(k).unwrap_or_else(|| panic!("{inner} disappeared"));
                if OWNED.contains(&k.as_str()) || k == "active_count" || k == "active_agents" {
                    continue;
                }
                assert_preserved(v, av, &inner);
            }
            let bk: Vec<_> = b.keys().collect();
            let ak: Vec<_> = a.keys().filter(|k| b.contains_key(*k)).collect();
            assert_eq!(bk, ak, "{path}: key order changed");
        }
        (Value::Array(b), Value::Array(a)) => {
            assert_eq!(b.len(), a.len(), "{path}: length changed");
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                assert_preserved(bv, av, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(before, after, "{path} changed"),
    }
}

#[test]
fn once_cleans_the_real_workspace_and_a_second_once_changes_nothing() {
    let Some(s) = Sandbox::with_fixture() else {
        return;
    };
    let before_tree = snapshot_tree(&s.base());
    let before: Vec<Value> = registries(&s).iter().map(|p| read_json(p)).collect();

    let out = s.run_ok(&["once"]);
    assert!(out.contains("Summary:"), "{out}");

    // The zombie: working, no session anywhere.
    let task = s.task(FIXTURE_TASK_ZOMBIE);
    let reg = read_json(&task.join("AGENT_REGISTRY.json"));
    let zombie = reg["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == FIXTURE_ZOMBIE_ID)
        .unwrap();
    assert_eq!(zombie["status"], "terminated");
    assert_eq!(zombie["termination_reason"], "session_not_found");
    assert!(zombie["terminated_at"].is_string());
    assert_eq!(zombie["auto_cleanup_result"]["success"], true);
    assert_eq!(reg["active_count"], 0);

    // Every field that was there is still there with the same value.
    for (path, old) in registries(&s).iter().zip(&before) {
        assert_preserved(old, &read_json(path), &path.display().to_string());
    }
    let global = read_json(&s.base().join("registry/GLOBAL_REGISTRY.json"));
    assert_eq!(global["active_agents"], 0);
    assert_eq!(global["agents"][FIXTURE_ZOMBIE_ID]["status"], "terminated");

    // Progress and findings moved to archive/ byte for byte; prompts gone.
    let mut moved = 0;
    for (rel, bytes) in &before_tree {
        let name = rel.file_name().unwrap().to_str().unwrap();
        let parent = rel.parent().unwrap();
        if name.ends_with("_progress.jsonl") || name.ends_with("_findings.jsonl") {
            let task_dir = s.base().join(parent.parent().unwrap());
            assert!(!s.base().join(rel).exists(), "{rel:?} still in place");
            assert_eq!(
                &fs::read(task_dir.join("archive").join(name)).unwrap(),
                bytes,
                "{rel:?} archived copy differs"
            );
            moved += 1;
        }
        if name.starts_with("agent_prompt_") {
            assert!(!s.base().join(rel).exists(), "{rel:?} not deleted");
        }
    }
    assert_eq!(moved, 54);
    for agent in reg["agents"].as_array().unwrap() {
        assert_eq!(agent["auto_cleanup_result"]["success"], true, "{agent:#}");
    }

    // A second pass finds nothing to do and rewrites nothing.
    let after_first = snapshot_tree(&s.base());
    let out = s.run_ok(&["once"]);
    assert!(out.contains("0 file(s) archived"), "{out}");
    assert_eq!(snapshot_tree(&s.base()), after_first);
}

#[test]
fn plan_and_status_change_nothing_and_name_every_action() {
    let Some(s) = Sandbox::with_fixture() else {
        return;
    };
    let before = snapshot_tree(&s.base());
    let plan = s.run_ok(&["plan"]);
    assert!(plan.contains(FIXTURE_ZOMBIE_ID), "{plan}");
    assert!(
        plan.contains("mark terminated (session_not_found)"),
        "{plan}"
    );
    assert!(plan.contains("archive progress/"), "{plan}");
    assert!(plan.contains("delete agent_prompt_"), "{plan}");
    assert!(plan.contains("Nothing was changed"), "{plan}");

    let json: Value = serde_json::from_str(&s.run_ok(&["plan", "--json"])).unwrap();
    let agents: usize = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["agents"].as_array().unwrap().len())
        .sum();
    assert_eq!(agents, 27);
    assert_eq!(json["totals"]["zombies"], 1);
    // Scripts act on the planned files: whole paths, inside their task folder, there now.
    let mut file_actions = 0;
    for task in json["tasks"].as_array().unwrap() {
        let dir = std::path::Path::new(task["dir"].as_str().unwrap());
        for agent in task["agents"].as_array().unwrap() {
            for action in agent["actions"].as_array().unwrap() {
                if let Some(path) = action["path"].as_str() {
                    let path = std::path::Path::new(path);
                    assert!(path.is_absolute() && path.starts_with(dir), "{action}");
                    assert!(path.is_file(), "{action}");
                    file_actions += 1;
                }
            }
        }
    }
    assert!(file_actions > 0, "{json}");

    let status = s.run_ok(&["status"]);
    assert!(status.contains("TOTAL"), "{status}");
    assert!(status.contains("zombie"), "{status}");
    let status: Value = serde_json::from_str(&s.run_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["totals"]["agents_seen"], 27);

    assert_eq!(snapshot_tree(&s.base()), before);
}

#[test]
fn missing_workspace_is_a_clear_fatal_error() {
    let s = Sandbox::new();
    fs::remove_dir(s.base()).unwrap();
    let out = s.run(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workspace-base"), "{err}");
}

#[test]
fn bad_config_names_file_and_line() {
    let s = Sandbox::new();
    s.write_config("settle = \"2s\"\nmax_inactivity = \"soon\"\n");
    let out = s.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent-reaper.toml") && err.contains("max_inactivity"),
        "{err}"
    );
}
