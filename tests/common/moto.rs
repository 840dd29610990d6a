//! A local S3-compatible server for the upload tests: moto's server mode on a free port,
//! started per test, answered before use, killed at drop. Objects are read back with boto3
//! (which moto installs), so the checks do not go through the code under test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Credentials moto accepts (any will do); the binary under test gets them from the environment.
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub port: u16,
}

/// Whether moto's server mode is importable; else ONE printed skip line (a failure under
/// `CI=true`, where `.ci/run` installs it).
pub fn moto_or_skip() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let line = format!(
        "skipped: needs moto's server mode (pip install 'moto[server]'; .ci/run installs it): {test}"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{line}; CI=true: the upload tests must run in CI");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    false
}

/// A port nothing listens on right now (for an unreachable bucket, then a server on it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// Starts moto on a free port; `None` after the skip line when it is not installed.
    pub fn start_or_skip() -> Option<Moto> {
        moto_or_skip().then(|| Moto::start_on(free_port()))
    }

    /// Starts moto on `port` and waits (up to 30 s) until it answers.
    pub fn start_on(port: u16) -> Moto {
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server");
        let mut moto = Moto { child, port };
        let up = super::wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited at start: {status}");
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "moto did not answer on port {port} within 30 s");
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a boto3 snippet against this server; `s3` is a client. Returns its stdout.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json, sys\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='{REGION}', \
             aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}')\n{code}",
            self.endpoint()
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.boto3(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// Every object in `bucket`: key → bytes.
    pub fn objects(&self, bucket: &str) -> BTreeMap<String, Vec<u8>> {
        let out = self.boto3(&format!(
            "out = {{}}\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}'):\n\
             \x20   for o in page.get('Contents', []):\n\
             \x20       out[o['Key']] = s3.get_object(Bucket='{bucket}', Key=o['Key'])['Body'].read().hex()\n\
             print(json.dumps(out))"
        ));
        let map: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
        map.into_iter()
            .map(|(k, hex)| {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (k, bytes)
            })
            .collect()
    }

    /// Multipart uploads started and neither completed nor aborted (billed on real S3).
    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        self.boto3(&format!(
            "print(len(s3.list_multipart_uploads(Bucket='{bucket}').get('Uploads', [])))"
        ))
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment the binary under test needs for this server's credentials.
pub fn s3_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", REGION)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
}
