//! Unit tests of the upload stage: key layout, runtime choice, crash recovery without the network.

use super::*;

#[test]
fn keys_are_prefix_host_base_task_file() {
    let url = crate::config::upload::parse_archive_url("s3://bkt/fleet/agents").unwrap();
    let key = object_key(
        &url,
        "build-7",
        ".agent-workspace",
        "TASK-1",
        "a_stream.jsonl",
    );
    assert_eq!(
        key.as_ref(),
        "fleet/agents/build-7/.agent-workspace/TASK-1/a_stream.jsonl"
    );
    let bare = crate::config::upload::parse_archive_url("s3://bkt").unwrap();
    assert_eq!(
        object_key(&bare, "h", "w", "TASK-2", "deploy_x.json").as_ref(),
        "h/w/TASK-2/deploy_x.json"
    );
}

#[test]
fn the_daemon_runtime_drives_uploads_from_its_pass_thread() {
    // The daemon runs passes in spawn_blocking: the stage must use that runtime, not
    // start a nested one (which would panic).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        tokio::task::spawn_blocking(|| {
            let r = Runtime::get().unwrap();
            assert!(matches!(r, Runtime::Daemon(_)));
            r.block_on(async { 7 })
        })
        .await
        .unwrap()
    });
    assert_eq!(got, 7);
    let own = Runtime::get().unwrap();
    assert!(matches!(own, Runtime::Own(_)));
}

fn file_id(path: &Path) -> crate::fs::FileId {
    crate::fs::FileId::of_metadata(&std::fs::metadata(path).unwrap())
}

fn upload_step(local: &Path, keep_local: bool) -> Step {
    Step::Upload {
        local: local.to_path_buf(),
        url: "s3://bkt/h/w/TASK-1/a_stream.jsonl".into(),
        key: "h/w/TASK-1/a_stream.jsonl".into(),
        file: file_id(local),
        keep_local,
    }
}

/// A workspace archive folder and a state dir; the journal trusts the workspace.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let archive = ws.join("TASK-1/archive");
    std::fs::create_dir_all(&archive).unwrap();
    let local = archive.join("a_stream.jsonl");
    std::fs::write(&local, b"line\n").unwrap();
    (tmp, ws, local)
}

fn reopen(state: &Path, ws: &Path) -> (Journal, Vec<Pending>) {
    let (mut j, pending) = Journal::open(state).unwrap();
    j.set_roots(vec![ws.to_path_buf()]);
    (j, pending)
}

#[test]
fn a_crash_before_verification_is_undone_and_the_local_file_stays() {
    let (tmp, ws, local) = setup();
    let state = tmp.path().join("state");
    let (mut j, _) = reopen(&state, &ws);
    j.begin(&[upload_step(&local, false)]).unwrap();
    drop(j);
    let (mut j, pending) = reopen(&state, &ws);
    assert_eq!(pending.len(), 1);
    let action = recover_upload(&mut j, &pending[0]).unwrap();
    assert_eq!(action, Action::Undone);
    assert_eq!(std::fs::read(&local).unwrap(), b"line\n");
    assert_eq!(j.pending().count(), 0);
}

#[test]
fn a_crash_after_verification_removes_the_unchanged_local_file_only() {
    let (tmp, ws, local) = setup();
    let state = tmp.path().join("state");
    let (mut j, _) = reopen(&state, &ws);
    let seq = j.begin(&[upload_step(&local, false)]).unwrap();
    j.mark_uploaded(&seq).unwrap();
    drop(j);
    let (mut j, pending) = reopen(&state, &ws);
    assert!(
        pending[0].appended,
        "the uploaded record survives a restart"
    );
    assert_eq!(
        recover_upload(&mut j, &pending[0]).unwrap(),
        Action::Completed
    );
    assert!(!local.exists());

    // A file that changed after its upload was verified is kept.
    std::fs::write(&local, b"line\n").unwrap();
    let (mut j, _) = reopen(&state, &ws);
    let seq = j.begin(&[upload_step(&local, false)]).unwrap();
    j.mark_uploaded(&seq).unwrap();
    std::fs::write(&local, b"line\nlate\n").unwrap();
    drop(j);
    let (mut j, pending) = reopen(&state, &ws);
    let action = recover_upload(&mut j, &pending[0]).unwrap();
    assert!(matches!(action, Action::LeftAlone { .. }), "{action:?}");
    assert_eq!(std::fs::read(&local).unwrap(), b"line\nlate\n");
}

#[test]
fn a_crash_after_verification_with_keep_local_records_the_upload() {
    let (tmp, ws, local) = setup();
    let state = tmp.path().join("state");
    let (mut j, _) = reopen(&state, &ws);
    let seq = j.begin(&[upload_step(&local, true)]).unwrap();
    j.mark_uploaded(&seq).unwrap();
    drop(j);
    let (mut j, pending) = reopen(&state, &ws);
    assert_eq!(
        recover_upload(&mut j, &pending[0]).unwrap(),
        Action::Completed
    );
    assert!(local.exists(), "kept");
    let ledger = Ledger::load(&state).unwrap();
    assert!(ledger.has(&local, &file_id(&local)), "never uploaded again");
}
