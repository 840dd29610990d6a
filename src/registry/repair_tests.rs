//! Torn-tail repair and compare-and-swap through the real registry functions, on real files.

use super::json_file::*;
use super::seen::{global, seen_path};
use super::{RegistryError, UpdateOutcome};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn opts(repair: bool) -> UpdateOptions {
    UpdateOptions {
        read: ReadOptions {
            attempts: 2,
            retry_delay: Duration::from_millis(1),
            max_bytes: 1 << 20,
            repair_torn: repair.then_some(Duration::from_millis(300)),
        },
        lock_timeout: Duration::from_millis(300),
    }
}

fn registry(dir: &tempfile::TempDir, value: &Value) -> PathBuf {
    let path = dir.path().join("AGENT_REGISTRY.json");
    std::fs::write(&path, super::pyjson::to_python_json(value)).unwrap();
    path
}

fn doc(status: &str, progress: u64) -> Value {
    json!({"agents": [{"id": "a", "status": status, "progress": progress}], "active_count": 1})
}

/// What the orchestrator's `open('w')` leaves when our longer in-place write lands between
/// its truncate and its write: its document, then the rest of ours.
fn tear(path: &Path, shorter: &Value) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let short = super::pyjson::to_python_json(shorter);
    assert!(short.len() < bytes.len());
    bytes[..short.len()].copy_from_slice(short.as_bytes());
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn a_torn_tail_of_our_own_write_is_cut_under_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &doc("working", 10));
    update_registry(&path, &opts(true), |v| {
        v["agents"][0]["auto_cleanup_result"] = json!({"success": true});
    })
    .unwrap();
    let orchestrators = doc("working", 20);
    tear(&path, &orchestrators);

    // Plan mode (no repair) reports it and changes nothing.
    let before = std::fs::read(&path).unwrap();
    let err = read_registry(&path, &opts(false).read).unwrap_err();
    assert!(matches!(err, RegistryError::Torn { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let value = read_registry(&path, &opts(true).read).unwrap();
    assert_eq!(value, orchestrators);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, super::pyjson::to_python_json(&orchestrators));
}

#[test]
fn a_torn_tail_is_cut_before_an_edit_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &doc("working", 10));
    update_registry(&path, &opts(false), |v| {
        v["agents"][0]["auto_cleanup_result"] =
            json!({"errors": ["x", "y", "z", "some longer text"]});
    })
    .unwrap();
    assert!(
        seen_path(&path).exists(),
        "written versions are kept on disk"
    );
    tear(&path, &doc("blocked", 30));
    // A restarted daemon: memory empty, the persisted versions still prove it.
    let restarted = super::seen::SeenVersions::with_budget(1 << 20);
    let tails = restarted.versions_with_persisted(&path);
    assert!(super::torn::find_torn_tail(&std::fs::read(&path).unwrap(), &tails).is_some());
    let (outcome, ()) = update_registry(&path, &opts(false), |v| {
        v["agents"][0]["status"] = "terminated".into();
    })
    .unwrap();
    assert_eq!(outcome, UpdateOutcome::Written);
    let now: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        now["agents"][0]["progress"], 30,
        "the orchestrator's document kept"
    );
    assert_eq!(now["agents"][0]["status"], "terminated");
}

#[test]
fn an_extra_tail_nobody_we_know_wrote_stays_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &doc("working", 10));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\n  }\n]}");
    std::fs::write(&path, &bytes).unwrap();
    let err = read_registry(&path, &opts(true).read).unwrap_err();
    assert!(matches!(err, RegistryError::Unparsable { .. }), "{err}");
    let err = update_registry(&path, &opts(true), |v| v["x"] = 1.into()).unwrap_err();
    assert!(matches!(err, RegistryError::Unparsable { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_registry_over_max_registry_size_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &doc("working", 10));
    let mut o = opts(true);
    o.read.max_bytes = 16;
    let err = read_registry(&path, &o.read).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("max_registry_size") && msg.contains("16-byte"),
        "{msg}"
    );
    let err = update_registry(&path, &o, |v| v["x"] = 1.into()).unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
}

#[test]
fn an_unlocked_rewrite_during_the_edit_is_kept_and_the_edit_redone() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &doc("working", 10));
    let mut runs = 0;
    let (outcome, ()) = update_registry(&path, &opts(false), |v| {
        runs += 1;
        if runs == 1 {
            // An unlocked `open('w')` writer lands after our read, before our write.
            std::fs::write(&path, super::pyjson::to_python_json(&doc("working", 77))).unwrap();
        }
        v["agents"][0]["status"] = "terminated".into();
    })
    .unwrap();
    assert_eq!(outcome, UpdateOutcome::Written);
    assert_eq!(runs, 2, "the edit ran again on the new bytes");
    let now: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(now["agents"][0]["progress"], 77);
    assert_eq!(now["agents"][0]["status"], "terminated");
    assert!(!sidecar_path(&path).exists());
    let _ = global();
}

#[test]
fn a_shorter_document_ends_exactly_where_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut long = doc("working", 10);
    long["pad"] = "x".repeat(5000).into();
    let path = registry(&dir, &long);
    update_registry(&path, &opts(false), |v| {
        v.as_object_mut().unwrap().remove("pad");
    })
    .unwrap();
    // The padding spaces written before the cut are gone: exactly Python's document.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        super::pyjson::to_python_json(&doc("working", 10))
    );
}

#[test]
fn nul_bytes_after_a_document_are_cut_without_any_version_seen() {
    // What the orchestrator's LockedRegistryFile truncate() leaves when it lengthens a
    // registry its own unlocked open('w') had just emptied: a document, then NULs.
    let dir = tempfile::tempdir().unwrap();
    let orchestrators = doc("working", 30);
    let path = registry(&dir, &orchestrators);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.resize(bytes.len() + 700, 0);
    std::fs::write(&path, &bytes).unwrap();

    let err = read_registry(&path, &opts(false).read).unwrap_err();
    assert!(
        matches!(err, RegistryError::Torn { extra: 700, .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "plan mode writes nothing"
    );

    assert_eq!(
        read_registry(&path, &opts(true).read).unwrap(),
        orchestrators
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        super::pyjson::to_python_json(&orchestrators)
    );
}
