//! Object storage (`archive_url`): the real binary against a local S3-compatible server
//! (moto): keys and bytes, verification before removal, keep_local, crashes at each upload
//! step, an unreachable bucket.

use crate::common::moto::{Moto, free_port, moto_or_skip, s3_env};
use crate::common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

const TASK: &str = "TASK-20251029-230251-upload01";
const ID: &str = "impl-upload-1a2b3c";
const BUCKET: &str = "reaper-archives";

/// A finished agent whose three logs the pass archives; returns (archive name, bytes).
/// The stream log is larger than one PUT (16 MiB), so it goes up as a multipart upload.
fn finished_agent(s: &Sandbox, big_stream: bool) -> BTreeMap<String, Vec<u8>> {
    write_task(&s.base(), TASK, json!([agent_entry(ID, "completed")]));
    let task = s.task(TASK);
    let line = b"{\"type\":\"assistant\",\"message\":\"working on it\"}\n";
    let mut stream = Vec::new();
    let target = if big_stream { 17 << 20 } else { 4096 };
    while stream.len() < target {
        stream.extend_from_slice(line);
    }
    stream.extend_from_slice(b"{\"type\":\"result\",\"subtype\":\"success\"}\n");
    let files = BTreeMap::from([
        (format!("{ID}_stream.jsonl"), stream),
        (
            format!("{ID}_progress.jsonl"),
            b"{\"n\":1}\n{\"n\":2}\n".to_vec(),
        ),
        (
            format!("{ID}_findings.jsonl"),
            b"{\"finding\":\"x\"}\n".to_vec(),
        ),
    ]);
    for (name, bytes) in &files {
        let folder = if name.ends_with("_stream.jsonl") {
            "logs"
        } else if name.ends_with("_progress.jsonl") {
            "progress"
        } else {
            "findings"
        };
        fs::write(task.join(folder).join(name), bytes).unwrap();
    }
    age_files(&task);
    files
}

fn config(s: &Sandbox, endpoint: &str, extra: &str) {
    s.write_config(&format!(
        "settle = \"300ms\"\narchive_url = \"s3://{BUCKET}/fleet\"\n\
         archive_endpoint = \"{endpoint}\"\nupload_after = \"0s\"\n{extra}"
    ));
}

fn once(s: &Sandbox, failpoint: Option<&str>) -> Output {
    let mut cmd = s.cmd(&["once"]);
    s3_env(&mut cmd);
    if let Some(fp) = failpoint {
        cmd.env("AGENT_REAPER_FAILPOINT", fp);
    }
    run_logged(cmd, &["once"])
}

fn once_ok(s: &Sandbox) -> String {
    let out = once(s, None);
    stdout_of_success(out, &["once"])
}

/// `fleet/<host>/<base name>/<task>/<file>` for each archived file, with its bytes.
fn expected_objects(s: &Sandbox, files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    let host = agent_reaper::archive::upload::host_name();
    let base = s.base();
    let base_name = base.file_name().unwrap().to_str().unwrap();
    files
        .iter()
        .map(|(name, bytes)| {
            (
                format!("fleet/{host}/{base_name}/{TASK}/{name}"),
                bytes.clone(),
            )
        })
        .collect()
}

fn archived(s: &Sandbox) -> Vec<String> {
    let dir = s.task(TASK).join("archive");
    let mut names: Vec<String> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Steps begun and never ended in the state dir's journal.
fn journal_pending(s: &Sandbox) -> usize {
    let text = fs::read_to_string(s.dir.path().join("state/journal.jsonl")).unwrap_or_default();
    let mut open = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        match v["op"].as_str().unwrap() {
            "begin" => {
                open.insert(seq);
            }
            "done" | "undone" => {
                open.remove(&seq);
            }
            _ => {}
        }
    }
    open.len()
}

fn assert_no_local_copies(s: &Sandbox) {
    assert_eq!(archived(s), Vec::<String>::new(), "local copies removed");
    for folder in ["logs", "progress", "findings"] {
        let left: Vec<_> = fs::read_dir(s.task(TASK).join(folder)).unwrap().collect();
        assert!(left.is_empty(), "{folder}/ emptied by archiving: {left:?}");
    }
}

#[test]
fn settled_archives_go_to_host_base_task_file_and_the_local_copy_goes_after_verification() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    moto.create_bucket(BUCKET);
    let s = Sandbox::new();
    let files = finished_agent(&s, true);
    config(&s, &moto.endpoint(), "");
    let out = once_ok(&s);
    assert!(
        out.contains(&format!("Uploads to s3://{BUCKET}/fleet: 3 archive(s)")),
        "{out}"
    );
    let objects = moto.objects(BUCKET);
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        expected_objects(&s, &files).keys().collect::<Vec<_>>()
    );
    assert!(
        objects == expected_objects(&s, &files),
        "same bytes, byte for byte"
    );
    assert_eq!(moto.open_multipart_uploads(BUCKET), 0);
    assert_no_local_copies(&s);
    assert_eq!(journal_pending(&s), 0);
    // A second pass finds nothing left to upload.
    let out = once_ok(&s);
    assert!(
        !out.contains("Uploads to"),
        "nothing settled, no stage line: {out}"
    );
    assert_eq!(moto.objects(BUCKET).len(), 3);
}

#[test]
fn keep_local_keeps_the_archive_and_never_uploads_it_twice() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    moto.create_bucket(BUCKET);
    let s = Sandbox::new();
    let files = finished_agent(&s, false);
    config(&s, &moto.endpoint(), "keep_local = true\n");
    let out = once_ok(&s);
    assert!(out.contains("3 archive(s)"), "{out}");
    assert_eq!(moto.objects(BUCKET), expected_objects(&s, &files));
    let local: Vec<String> = files.keys().cloned().collect();
    assert_eq!(archived(&s), local, "kept local");
    for (name, bytes) in &files {
        assert_eq!(
            &fs::read(s.task(TASK).join("archive").join(name)).unwrap(),
            bytes
        );
    }
    // The ledger knows them: no second upload, no second object.
    let out = once_ok(&s);
    assert!(!out.contains("Uploads to"), "{out}");
    assert_eq!(moto.objects(BUCKET), expected_objects(&s, &files));
}

#[test]
fn a_sigkill_at_each_upload_step_loses_and_duplicates_nothing() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    for (i, point) in [
        "upload-after-begin",
        "upload-after-put",
        "upload-after-verify",
        "upload-after-unlink",
    ]
    .into_iter()
    .enumerate()
    {
        let bucket = format!("{BUCKET}-{i}");
        moto.create_bucket(&bucket);
        let s = Sandbox::new();
        let files = finished_agent(&s, false);
        s.write_config(&format!(
            "settle = \"300ms\"\narchive_url = \"s3://{bucket}/fleet\"\n\
             archive_endpoint = \"{}\"\nupload_after = \"0s\"\n",
            moto.endpoint()
        ));
        let out = once(&s, Some(point));
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: killed there: {out:?}"
        );
        // Nothing lost at the kill: each file is local, or stored, or both.
        let stored = moto.objects(&bucket);
        let expected = expected_objects(&s, &files);
        for (name, bytes) in &files {
            let key = expected
                .keys()
                .find(|k| k.ends_with(&format!("/{name}")))
                .unwrap();
            let local = fs::read(s.task(TASK).join("archive").join(name)).ok();
            assert!(
                local.as_ref() == Some(bytes) || stored.get(key) == Some(bytes),
                "{point}: {name} neither local nor stored"
            );
        }
        // The restart settles the step and finishes the rest: one object per file.
        let out = once_ok(&s);
        assert!(out.contains("Uploads to"), "{point}: {out}");
        assert_eq!(
            moto.objects(&bucket),
            expected,
            "{point}: each file once, exact bytes"
        );
        assert_no_local_copies(&s);
        assert_eq!(journal_pending(&s), 0, "{point}: journal settled");
    }
}

#[test]
fn an_unreachable_bucket_keeps_archives_local_warns_once_and_a_later_pass_uploads() {
    if !moto_or_skip() {
        return;
    }
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let s = Sandbox::new();
    let files = finished_agent(&s, false);
    config(&s, &endpoint, "");
    let out = once(&s, None);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("3 left local") && stdout.contains("bucket unreachable"),
        "{stdout}"
    );
    assert_eq!(
        stderr.matches("bucket unreachable").count(),
        1,
        "one warning for the pass, not one per file: {stderr}"
    );
    let local: Vec<String> = files.keys().cloned().collect();
    assert_eq!(archived(&s), local, "archives stay local");
    assert_eq!(journal_pending(&s), 0);

    let moto = Moto::start_on(port);
    moto.create_bucket(BUCKET);
    let out = once_ok(&s);
    assert!(out.contains("3 archive(s)"), "{out}");
    assert_eq!(moto.objects(BUCKET), expected_objects(&s, &files));
    assert_no_local_copies(&s);
}

#[test]
fn a_bad_archive_url_is_refused_naming_the_key_and_the_fix() {
    let s = Sandbox::new();
    s.write_config("archive_url = \"gs://bucket/x\"\n");
    let out = s.cmd(&["validate"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("archive_url") && err.contains("only s3://") && err.contains("s3://my-bucket"),
        "{err}"
    );
}

/// `agent-reaper run` with its stderr in a file; killed when the test ends.
struct Daemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(s: &Sandbox) -> Daemon {
        let log = s.dir.path().join("daemon.log");
        let mut cmd = s.cmd(&["run"]);
        s3_env(&mut cmd)
            .env("AGENT_REAPER_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- daemon log\n{}", self.log_text());
    }
}

const DAEMON_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

#[test]
fn the_daemon_uploads_from_its_pass_thread_and_backs_off_an_unreachable_bucket() {
    if !moto_or_skip() {
        return;
    }
    // Unreachable first: full passes every 300 ms, one warning, then the backoff (30 s)
    // keeps later passes from asking again.
    let port = free_port();
    let s = Sandbox::new();
    let files = finished_agent(&s, false);
    config(
        &s,
        &format!("http://127.0.0.1:{port}"),
        "reconcile_interval = \"300ms\"\n",
    );
    let daemon = Daemon::start(&s);
    let passes = |text: &str| text.matches("pass over").count();
    assert!(
        wait_until(DAEMON_WAIT, || {
            let t = daemon.log_text();
            t.contains("bucket unreachable") && passes(&t) >= 5
        }),
        "five passes, one of them warning"
    );
    let text = daemon.log_text();
    assert_eq!(text.matches("bucket unreachable").count(), 1, "{text}");
    let local: Vec<String> = files.keys().cloned().collect();
    assert_eq!(archived(&s), local, "archives stay local");
    drop(daemon);

    // Reachable: the first full pass uploads, on the daemon's own runtime.
    let moto = Moto::start_on(port);
    moto.create_bucket(BUCKET);
    let daemon = Daemon::start(&s);
    assert!(
        wait_until(DAEMON_WAIT, || moto.objects(BUCKET).len() == 3
            && archived(&s).is_empty()),
        "uploaded and removed locally"
    );
    assert_eq!(moto.objects(BUCKET), expected_objects(&s, &files));
    assert!(daemon.log_text().contains("uploaded archive"));
}

#[test]
fn with_compression_the_stream_log_goes_up_once_as_its_zst() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    moto.create_bucket(BUCKET);
    let s = Sandbox::new();
    let files = finished_agent(&s, false);
    config(&s, &moto.endpoint(), "compress = true\n");
    let out = once_ok(&s);
    assert!(out.contains("Uploads to"), "{out}");
    let objects = moto.objects(BUCKET);
    let names: Vec<&str> = objects
        .keys()
        .map(|k| k.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            format!("{ID}_findings.jsonl"),
            format!("{ID}_progress.jsonl"),
            format!("{ID}_stream.jsonl.zst"),
        ],
        "never the plain stream log beside its .zst"
    );
    let zst = objects
        .iter()
        .find(|(k, _)| k.ends_with(".zst"))
        .map(|(_, v)| v.clone())
        .unwrap();
    let decoded = zstd::decode_all(zst.as_slice()).unwrap();
    assert!(
        decoded == files[&format!("{ID}_stream.jsonl")],
        "decodes to the log"
    );
    assert_no_local_copies(&s);
}
