//! The registry writer against the orchestrator's own locking discipline, in a real python3.

#[path = "common/shared.rs"]
mod shared;

use agent_reaper::registry::{UpdateOptions, UpdateOutcome, read_registry, update_registry};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROUNDS: u64 = 200;

/// LockedRegistryFile as the orchestrator writes it: open r+, flock LOCK_EX|LOCK_NB retried
/// every 100 ms, json.load, change, seek(0), json.dump(indent=2), truncate, close.
const PYTHON_WRITER: &str = r#"
import fcntl, json, sys, time
path, rounds = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
for _ in range(rounds):
    with open(path, "r+") as f:
        deadline = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    sys.exit("lock timeout")
                time.sleep(0.1)
        data = json.load(f)
        data["py_count"] += 1
        f.seek(0)
        json.dump(data, f, indent=2)
        f.truncate()
"#;

#[test]
fn python_and_rust_writers_interleave_without_losing_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("AGENT_REGISTRY.json");
    let Some(workspace) = shared::fixture_workspace() else {
        return;
    };
    let fixture = workspace.join("TASK-20251018-213115-d9cfa244/AGENT_REGISTRY.json");
    let mut initial: Value = serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
    initial["py_count"] = 0.into();
    initial["rs_count"] = 0.into();
    std::fs::write(
        &path,
        agent_reaper::registry::pyjson::to_python_json(&initial),
    )
    .unwrap();

    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_WRITER)
        .arg(&path)
        .arg(ROUNDS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 on PATH");
    // Start only once python is running, so the two loops overlap.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");

    let opts = UpdateOptions {
        lock_timeout: Duration::from_secs(60),
        ..UpdateOptions::default()
    };
    for _ in 0..ROUNDS {
        let (outcome, ()) = update_registry(&path, &opts, |v| {
            let n = v["rs_count"].as_u64().unwrap();
            v["rs_count"] = (n + 1).into();
        })
        .unwrap();
        assert_eq!(outcome, UpdateOutcome::Written);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "python writer failed: {status}");

    let value = read_registry(&path, &opts.read).unwrap();
    assert_eq!(value["py_count"], ROUNDS);
    assert_eq!(value["rs_count"], ROUNDS);
    // Every other field came through both writers untouched, in order.
    let mut expected = initial;
    expected["py_count"] = ROUNDS.into();
    expected["rs_count"] = ROUNDS.into();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&value), keys(&expected));
    assert_eq!(value, expected);
    assert!(!agent_reaper::registry::json_file::sidecar_path(&path).exists());
}
