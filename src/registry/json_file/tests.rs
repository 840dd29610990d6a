//! Unit tests of `json_file`: reads, locked in-place writes, sidecar recovery, on real files.

use super::locked::{cut_tore_theirs, end_of};
use super::*;
use std::time::SystemTime;

const SAMPLE: &str = "{\n  \"task_id\": \"TASK-1\",\n  \"agents\": [\n    {\n      \"id\": \"a-1\",\n      \"status\": \"working\",\n      \"progress\": 32.690331,\n      \"note\": \"\\u26a0 caf\\u00e9\"\n    }\n  ],\n  \"active_count\": 1,\n  \"zeta\": {}\n}";

fn fast() -> UpdateOptions {
    UpdateOptions {
        read: ReadOptions {
            attempts: 3,
            retry_delay: Duration::from_millis(5),
            max_bytes: 1 << 20,
            repair_torn: None,
        },
        lock_timeout: Duration::from_millis(300),
    }
}

fn registry(dir: &tempfile::TempDir, content: &str) -> PathBuf {
    let path = dir.path().join("AGENT_REGISTRY.json");
    std::fs::write(&path, content).unwrap();
    path
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn empty_and_half_written_are_unparsable_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for content in ["", "  \n", &SAMPLE[..SAMPLE.len() / 2]] {
        let path = registry(&dir, content);
        let err = read_registry(&path, &fast().read).unwrap_err();
        assert!(
            matches!(err, RegistryError::Unparsable { attempts: 3, .. }),
            "{err}"
        );
        let err = update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap_err();
        assert!(matches!(err, RegistryError::Unparsable { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        assert!(!sidecar_path(&path).exists());
    }
}

#[test]
fn read_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, SAMPLE);
    let value = read_registry(&path, &fast().read).unwrap();
    assert_eq!(value["agents"][0]["status"], "working");
    assert_eq!(
        recover_sidecar(&path, &fast()).unwrap(),
        SidecarRecovery::NoSidecar
    );

    let path = registry(&dir, "[1, 2]");
    let err = read_registry(&path, &fast().read).unwrap_err();
    assert!(matches!(err, RegistryError::NotObject { .. }), "{err}");

    let path = registry(&dir, SAMPLE);
    let opts = ReadOptions {
        max_bytes: 10,
        ..fast().read
    };
    let err = read_registry(&path, &opts).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLarge { limit: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("AGENT_REGISTRY.json"));
}

#[test]
fn symlink_and_fifo_are_not_regular() {
    let dir = tempfile::tempdir().unwrap();
    let target = registry(&dir, SAMPLE);
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let dev_null = Path::new("/dev/null");

    for path in [
        &link,
        &fifo,
        &dir.path().to_path_buf(),
        &dev_null.to_path_buf(),
    ] {
        let err = read_registry(path, &fast().read).unwrap_err();
        assert!(matches!(err, RegistryError::NotRegular { .. }), "{err}");
    }
    for path in [&link, &fifo] {
        let err = update_registry(path, &fast(), |v| v["x"] = 1.into()).unwrap_err();
        assert!(matches!(err, RegistryError::NotRegular { .. }), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), SAMPLE);
}

#[test]
fn update_changes_one_field_and_keeps_the_rest_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, SAMPLE);
    let (outcome, ret) = update_registry(&path, &fast(), |v| {
        v["agents"][0]["status"] = "completed".into();
        v["active_count"] = 0.into();
        7
    })
    .unwrap();
    assert_eq!((outcome, ret), (UpdateOutcome::Written, 7));
    let expected = SAMPLE
        .replace("\"working\"", "\"completed\"")
        .replace("\"active_count\": 1", "\"active_count\": 0");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    assert!(!sidecar_path(&path).exists());
}

#[test]
fn update_keeps_a_trailing_newline_only_if_there_was_one() {
    let dir = tempfile::tempdir().unwrap();
    for ending in ["", "\n"] {
        let path = registry(&dir, &format!("{SAMPLE}{ending}"));
        update_registry(&path, &fast(), |v| v["new"] = true.into()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!("\"new\": true\n}}{ending}")),
            "{text:?}"
        );
    }
}

#[test]
fn unchanged_edit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Compact, non-Python formatting: a rewrite would show.
    let content = r#"{"b":1,"a":[1.50,"x"]}"#;
    let path = registry(&dir, content);
    let before = mtime(&path);
    std::thread::sleep(Duration::from_millis(20));
    let (outcome, ()) = update_registry(&path, &fast(), |v| {
        v["a"][1] = "x".into();
    })
    .unwrap();
    assert_eq!(outcome, UpdateOutcome::Unchanged);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    assert_eq!(mtime(&path), before);
    assert!(!sidecar_path(&path).exists());
}

#[test]
fn lock_held_elsewhere_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, SAMPLE);
    // flock belongs to the open file description, so a second open conflicts even here.
    let holder = File::open(&path).unwrap();
    flock(&holder, FlockOperation::LockExclusive).unwrap();
    let err = update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap_err();
    match &err {
        RegistryError::LockTimeout { waited, .. } => {
            assert!(*waited >= fast().lock_timeout)
        }
        other => panic!("expected LockTimeout, got {other}"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), SAMPLE);
    drop(holder);
    let (outcome, ()) = update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap();
    assert_eq!(outcome, UpdateOutcome::Written);
}

#[test]
fn recover_restores_an_unparsable_registry() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &SAMPLE[..40]);
    let restored = SAMPLE.replace("working", "completed");
    std::fs::write(sidecar_path(&path), &restored).unwrap();
    assert_eq!(
        recover_sidecar(&path, &fast()).unwrap(),
        SidecarRecovery::Restored
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), restored);
    assert!(!sidecar_path(&path).exists());
}

#[test]
fn recover_removes_a_stale_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, SAMPLE);
    std::fs::write(sidecar_path(&path), "{\"other\": 1}").unwrap();
    let before = mtime(&path);
    assert_eq!(
        recover_sidecar(&path, &fast()).unwrap(),
        SidecarRecovery::StaleSidecarRemoved
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), SAMPLE);
    assert_eq!(mtime(&path), before);
    assert!(!sidecar_path(&path).exists());
}

#[test]
fn recover_leaves_alone_when_nothing_parses_or_sidecar_is_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, "{\"half");
    std::fs::write(sidecar_path(&path), "{\"also half").unwrap();
    assert_eq!(
        recover_sidecar(&path, &fast()).unwrap(),
        SidecarRecovery::LeftAlone
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"half");
    assert!(sidecar_path(&path).exists());

    std::fs::remove_file(sidecar_path(&path)).unwrap();
    let elsewhere = dir.path().join("elsewhere.json");
    std::fs::write(&elsewhere, SAMPLE).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sidecar_path(&path)).unwrap();
    assert_eq!(
        recover_sidecar(&path, &fast()).unwrap(),
        SidecarRecovery::LeftAlone
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"half");
}

#[test]
fn update_refuses_a_symlinked_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, SAMPLE);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, sidecar_path(&path)).unwrap();
    // The sidecar is written under a fresh O_EXCL name and renamed over the planted
    // link: the link is replaced, never written through, and the update goes on.
    update_registry(&path, &fast(), |v| v["x"] = 1.into()).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert_ne!(std::fs::read_to_string(&path).unwrap(), SAMPLE);
    assert!(std::fs::symlink_metadata(sidecar_path(&path)).is_err());

    // A stale regular sidecar is replaced the same way.
    std::fs::write(sidecar_path(&path), "junk").unwrap();
    update_registry(&path, &fast(), |v| v["x"] = 2.into()).unwrap();
    assert!(!sidecar_path(&path).exists());
    // Nothing but the registry, the versions kept for torn-tail proofs and the victim
    // is left (no temporary names).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "AGENT_REGISTRY.json",
            "AGENT_REGISTRY.json.reaper-seen",
            "victim"
        ]
    );
}

#[test]
fn fixture_registries_survive_an_update_round_trip() {
    let Some(base) = crate::test_shared::fixture_workspace() else {
        return;
    };
    let src = base.join("TASK-20251017-215604-df6a3cbd/AGENT_REGISTRY.json");
    let original = std::fs::read_to_string(src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, &original);
    update_registry(&path, &fast(), |v| v["active_count"] = 12345.into()).unwrap();
    update_registry(&path, &fast(), |v| {
        v["active_count"] =
            serde_json::from_str::<Value>(&original).unwrap()["active_count"].clone()
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}

#[test]
fn the_cut_after_a_write_never_lengthens_the_file() {
    // Shorter than what we wrote: an unlocked open('w') emptied it meanwhile. Lengthening
    // it would put NUL bytes after that writer's document.
    let dir = tempfile::tempdir().unwrap();
    let path = registry(&dir, "{\"a\": 1}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    cut_to(&file, 100).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 1}");
    cut_to(&file, 4).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\"");
}

/// After our cut: another writer's document cut to our length (its `json.dump` landed
/// between our write and our cut) is told from ours, from a document that parses, and from
/// a file of another length (a writer's `open('w')` since the cut).
#[test]
fn a_cut_that_tore_another_writers_document_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let ours = "{\n  \"py_count\": 52,\n  \"rs_count\": 6\n}";
    let sidecar = dir.path().join("ours");
    std::fs::write(&sidecar, ours).unwrap();
    let sidecar = std::fs::File::open(&sidecar).unwrap();
    let len = ours.len() as u64;
    let ours_end = end_of(&sidecar, len).unwrap();
    let theirs = "{\n  \"py_count\": 53,\n  \"rs_count\": 6,\n  \"pad\": \"xxxxxxxx\"\n}";
    let torn_by = |text: &str| {
        let path = registry(&dir, text);
        let file = std::fs::File::open(&path).unwrap();
        cut_tore_theirs(&file, &ours_end, len).unwrap()
    };
    assert!(
        torn_by(&theirs[..ours.len()]),
        "their document cut to our length"
    );
    assert!(!torn_by(ours), "ours");
    let same_length = "{\n  \"py_count\": 53,\n  \"rs_count\": 7\n}";
    assert_eq!(same_length.len(), ours.len());
    assert!(!torn_by(same_length), "a whole document of our length");
    assert!(!torn_by(theirs), "another length");
}

/// A cut (the torn-tail repair's, the sidecar restore's, a write's) that tore another
/// writer's document is followed by ours, written again over it: the registry parses and is
/// ours. A whole document of another writer after the cut is left as it is.
#[test]
fn after_a_cut_that_tore_theirs_ours_is_written_again() {
    use super::locked::{end_of_bytes, keep_ours_after_cut, write_padded};
    let dir = tempfile::tempdir().unwrap();
    let ours = "{\n  \"py_count\": 52,\n  \"rs_count\": 6\n}";
    let theirs = "{\n  \"py_count\": 53,\n  \"rs_count\": 6,\n  \"pad\": \"xxxxxxxx\"\n}";
    let len = ours.len() as u64;
    let after_cut = |left: &str| {
        let path = registry(&dir, left);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let write_ours = |old_len: u64| write_padded(&file, ours.as_bytes(), old_len);
        keep_ours_after_cut(&file, &path, end_of_bytes(ours.as_bytes()), len, write_ours).unwrap();
        std::fs::read_to_string(&path).unwrap()
    };
    assert_eq!(
        after_cut(&theirs[..ours.len()]),
        ours,
        "theirs cut to our length"
    );
    assert_eq!(after_cut(theirs), theirs, "theirs whole, of another length");
    assert_eq!(after_cut(ours), ours, "ours");
}
