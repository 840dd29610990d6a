//! Bench: zstd at its default level against `gzip -6` on the same 100 MB of stream logs
//! (`../shared/fixtures/stream-json-example.jsonl` repeated), in the same run: ratio and
//! MB/s for each, and what the daemon's whole compression step costs (encode, fsync,
//! decode-and-compare, rename, unlink) on that file.
//!
//! `cargo bench --bench compress`; `REAPER_BENCH_MB=20` for a smaller input. Skips with one
//! line when the fixture is absent (`AGENT_REAPER_FIXTURES` points elsewhere).

use agent_reaper::archive::compress::{Compressed, compress_archived, decode_all};
use agent_reaper::fs::Dir;
use agent_reaper::journal::Journal;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn fixture() -> PathBuf {
    let dir = std::env::var_os("AGENT_REAPER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    dir.join("stream-json-example.jsonl")
}

/// `sample`'s lines repeated to `target` bytes, each line given `"seq":N,"rnd":"<hex>",`.
fn vary(sample: &[u8], target: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(target + sample.len() * 2);
    let mut seq: u64 = 0;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < target {
        for line in sample.split_inclusive(|&b| b == b'\n') {
            // xorshift64: cheap, deterministic, not compressible by a window.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seq += 1;
            match line.first() {
                Some(b'{') => {
                    out.push(b'{');
                    out.extend_from_slice(
                        format!("\"seq\":{seq},\"rnd\":\"{x:016x}\",").as_bytes(),
                    );
                    out.extend_from_slice(&line[1..]);
                }
                _ => out.extend_from_slice(line),
            }
        }
    }
    out
}

/// zstd at its default level in memory, then `gzip -6` (the binary) on the same bytes.
fn measure(label: &str, data: &[u8]) {
    let n = data.len();
    // zstd, default level, in memory.
    let level = zstd::DEFAULT_COMPRESSION_LEVEL;
    let t = Instant::now();
    let packed = zstd::stream::encode_all(data, level).unwrap();
    let enc = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let unpacked = zstd::stream::decode_all(&packed[..]).unwrap();
    let dec = t.elapsed().as_secs_f64();
    assert!(unpacked == data, "zstd round trip");
    println!(
        "{label:>8} zstd -{level}:  ratio {:>7.1}x  compress {:>7.1} MB/s  decompress {:>7.1} MB/s  ({} -> {} bytes)",
        n as f64 / packed.len() as f64,
        mb_per_s(n, enc),
        mb_per_s(n, dec),
        n,
        packed.len()
    );

    // gzip -6 (the binary), stdin to stdout, on the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    fs::write(&input, data).unwrap();
    match gzip6(&input, data) {
        Some((out_len, secs)) => println!(
            "{label:>8} gzip -6:  ratio {:>7.1}x  compress {:>7.1} MB/s  ({} -> {} bytes)",
            n as f64 / out_len as f64,
            mb_per_s(n, secs),
            n,
            out_len
        ),
        None => println!("{label:>8} gzip -6: skipped, no gzip binary on PATH"),
    }
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn main() {
    let path = fixture();
    let Ok(sample) = fs::read(&path) else {
        println!(
            "compress: skipped, {} is absent (lay shared/ beside the clone or set AGENT_REAPER_FIXTURES)",
            path.display()
        );
        return;
    };
    let target_mb: usize = std::env::var("REAPER_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let target = target_mb * 1_000_000;
    let mut data = Vec::with_capacity(target + sample.len());
    while data.len() < target {
        data.extend_from_slice(&sample);
    }
    let n = data.len();
    println!(
        "compress: {} bytes = {} copies of {} ({} bytes); one core, same bytes for each",
        n,
        n / sample.len(),
        path.file_name().unwrap().to_string_lossy(),
        sample.len()
    );

    measure("repeated", &data);
    // Literal repetition is the easy case (zstd finds the 2 KB period); real logs differ
    // line to line. The same lines, each given a sequence number and 16 random hex digits:
    let varied = vary(&sample, target);
    println!(
        "varied: the same lines, each with \"seq\" and 16 random hex digits added ({} bytes)",
        varied.len()
    );
    measure("varied", &varied);

    // The daemon's step on the varied bytes: archive/<name> -> archive/<name>.zst,
    // verified, journaled.
    let tmp = tempfile::tempdir().unwrap();
    let arch = tmp.path().join("archive");
    fs::create_dir(&arch).unwrap();
    let name = OsStr::new("bench_stream.jsonl");
    fs::write(arch.join(name), &varied).unwrap();
    let level = zstd::DEFAULT_COMPRESSION_LEVEL;
    let (mut journal, _) = Journal::open(&tmp.path().join("state")).unwrap();
    let dir = Dir::open_base(&arch).unwrap();
    let t = Instant::now();
    let out = compress_archived(&dir, name, level, &mut journal).unwrap();
    let step = t.elapsed().as_secs_f64();
    let Compressed::Done { zst, bytes_out, .. } = out else {
        panic!("{out:?}")
    };
    assert!(decode_all(&fs::File::open(&zst).unwrap()).unwrap() == varied);
    println!(
        "  varied, the daemon's step (encode + fsync + decode-and-compare + rename + unlink): {:>7.1} MB/s, {} -> {} bytes",
        mb_per_s(varied.len(), step),
        varied.len(),
        bytes_out
    );
}

/// `gzip -6 -c` reading the file holding `data`, its output counted: (compressed bytes, seconds).
fn gzip6(input: &Path, data: &[u8]) -> Option<(usize, f64)> {
    let stdin = fs::File::open(input).ok()?;
    let t = Instant::now();
    let out = Command::new("gzip")
        .args(["-6", "-c"])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    (out.status.success() && !data.is_empty()).then_some((out.stdout.len(), secs))
}
