//! The registry writer against the orchestrator's own locking discipline, in a real python3.

use crate::common::shared;

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

/// `update_agent_progress`'s way: read without a lock, then `open('w')` + `json.dump`. It
/// writes its own round number (not read-and-increment), so its last value must survive.
const UNLOCKED_WRITER: &str = r#"
import json, sys, time
path, rounds = sys.argv[1], int(sys.argv[2])
decode_errors = extra_data = 0
print("ready", flush=True)
for n in range(1, rounds + 1):
    while True:
        try:
            with open(path) as f:
                data = json.load(f)
            break
        except json.JSONDecodeError as e:
            decode_errors += 1
            extra_data += "Extra data" in str(e)
            time.sleep(0.001)
    data["py_count"] = n
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    time.sleep(0.002)
print(json.dumps({"decode_errors": decode_errors, "extra_data": extra_data}))
"#;

#[test]
fn an_unlocked_open_w_writer_keeps_its_last_value_and_nothing_stays_torn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("AGENT_REGISTRY.json");
    let initial = serde_json::json!({"agents": [], "py_count": 0, "rs_count": 0});
    std::fs::write(
        &path,
        agent_reaper::registry::pyjson::to_python_json(&initial),
    )
    .unwrap();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(UNLOCKED_WRITER)
        .arg(&path)
        .arg("400")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 on PATH");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let opts = UpdateOptions {
        lock_timeout: Duration::from_secs(10),
        read: agent_reaper::registry::ReadOptions {
            repair_torn: Some(Duration::from_secs(10)),
            ..Default::default()
        },
    };
    let (mut written, mut skipped, mut unparsable) = (0, 0, 0);
    for i in 0..100u64 {
        // Every other write is much longer: a shorter unlocked write over it would tear.
        let result = update_registry(&path, &opts, |v| {
            let n = v["rs_count"].as_u64().unwrap_or(0);
            v["rs_count"] = (n + 1).into();
            v["pad"] = if i % 2 == 0 {
                "x".repeat(2000).into()
            } else {
                Value::Null
            };
        });
        match result {
            Ok(_) => written += 1,
            Err(agent_reaper::registry::RegistryError::Contended { .. }) => skipped += 1,
            Err(agent_reaper::registry::RegistryError::Unparsable { .. }) => unparsable += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // The last of our writes can still be torn by an unlocked write racing it, and the
    // unlocked writer retries its read until the file parses: as in the daemon, our next
    // read (a later pass) repairs the provable torn tail. Keep reading until the writer ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unlocked writer did not finish: {path:?} stayed unparsable"
        );
        let _ = read_registry(&path, &opts.read);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    line.clear();
    out.read_line(&mut line).unwrap();
    let py: Value = serde_json::from_str(line.trim()).unwrap();

    // Whatever interleaving happened, the file reads (repairing a provable torn tail).
    let value = read_registry(&path, &opts.read).expect("the registry parses at the end");
    println!(
        "unlocked writer vs update_registry: {written} written, {skipped} skipped as contended, \
         {unparsable} met mid-write; python JSONDecodeError {} (Extra data {}); \
         rs_count {} of {written} (the rest wiped by the unlocked writer's stale rewrites)",
        py["decode_errors"], py["extra_data"], value["rs_count"]
    );
    assert_eq!(
        value["py_count"], 400,
        "the unlocked writer's last value survives"
    );
}
