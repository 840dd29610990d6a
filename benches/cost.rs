//! Bench: what one `agent-reaper once` costs on large histories (issue 12), as
//! `measured X (goal Y)` lines: 40,000 finished agents in one registry (time, peak RSS),
//! two 30 MB registries of tiny entries (peak RSS), 10,000 finished agents in 100 tasks
//! (time; then the cleaned tree again, nothing to do), and a 10 MB stream result line.
//!
//! `cargo bench --bench cost` runs all; `cargo bench --bench cost -- 40k tiny 10k result`
//! picks some. The 40k and 10k figures print the disk's floor beside them: the bare renames
//! and unlinks of the same work on a second copy of the tree, written after `once` ran. Each run is capped (`REAPER_BENCH_CAP_SECS`, 60 s): "did not finish in N s".

mod common;

use common::*;
use serde_json::json;
use std::fs;
use std::time::Duration;

fn main() {
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    let cap = cap_from_env();
    if want("40k") {
        forty_thousand_in_one(cap);
    }
    if want("tiny") {
        two_tiny_registries(cap);
    }
    if want("10k") {
        ten_thousand_in_100(cap);
    }
    if want("result") {
        ten_mb_result_line(cap);
    }
}

/// 40,000 finished agents (four files each) in one task registry of about 7 MB.
fn forty_thousand_in_one(cap: Duration) {
    let tmp = tempdir();
    let task = task_name("big", 0);
    let ids: Vec<String> = (0..40_000).map(|a| format!("big-{a:06}-{a:06x}")).collect();
    // The same tree twice: for `once`, then (written after it ran, so its writeback does
    // not slow `once` down) for the disk's floor.
    let write_tree = |base: &std::path::Path| {
        // Lean compact entries: 40,000 of them come to the ~7 MB of the issue.
        let entries = ids
            .iter()
            .map(|id| {
                json!({"id": id, "tmux_session": format!("agent_{id}"), "status": "completed",
                       "last_update": "2026-11-27T10:30:00.000001",
                       "completed_at": "2026-11-27T10:30:00.000002"})
            })
            .collect();
        let size = write_registry(base, &task, entries, true);
        for id in &ids {
            write_agent_files(base, &task, id, RESULT_LINE);
        }
        size
    };
    let base = tmp.path().join("ws");
    let size = write_tree(&base);
    let run = run_capped(once(tmp.path(), &base), cap);
    let mb = size as f64 / 1e6;
    time_line(
        &format!("40,000 finished agents, one {mb:.1} MB registry, once"),
        &run,
        Duration::from_secs(2),
        cap,
    );
    let floors = floors(tmp.path(), write_tree);
    floor_line(
        "120,000 logs moved, 40,000 prompts unlinked",
        floors,
        Duration::from_secs(2),
    );
    rss_line(
        "40,000 finished agents, one registry, once",
        run.peak_rss_kib,
        3 * size / 1024 + 30 * 1024,
    );
    println!("  {}", run.summary());
}

/// Two 30 MB registries of tiny, already cleaned entries: what reading them costs.
fn two_tiny_registries(cap: Duration) {
    let tmp = tempdir();
    let base = tmp.path().join("ws");
    let mut total = 0;
    for t in 0..2 {
        // Each entry is a cleaned finished agent with nothing left: the pass only reads.
        // Written as text directly: building 350,000 `Value`s here would dwarf the run.
        let task = task_name("tiny", t);
        let dir = base.join(&task);
        fs::create_dir_all(&dir).unwrap();
        let mut text = format!("{{\"task_id\": \"{task}\", \"agents\": [");
        let mut a = 0usize;
        while text.len() < 30_000_000 {
            if a > 0 {
                text.push_str(", ");
            }
            text.push_str(&format!(
                "{{\"id\": \"t{t}-{a:07}-{a:06x}\", \"status\": \"completed\", \
                 \"auto_cleanup_result\": {{\"success\": true}}}}"
            ));
            a += 1;
        }
        text.push_str(&format!(
            "], \"total_spawned\": {a}, \"active_count\": 0, \"completed_count\": {a}}}"
        ));
        fs::write(dir.join("AGENT_REGISTRY.json"), &text).unwrap();
        total += text.len() as u64;
    }
    let run = run_capped(once(tmp.path(), &base), cap);
    rss_line(
        &format!(
            "two registries of tiny entries ({:.1} MB together), once",
            total as f64 / 1e6
        ),
        run.peak_rss_kib,
        150 * 1024,
    );
    match run.took {
        Some(t) => println!("  took {:.3} s; {}", t.as_secs_f64(), run.summary()),
        None => println!("  did not finish in {} s", cap.as_secs()),
    }
}

/// Runs of `once` on the 10,000 agents, the median taken.
const TEN_K_RUNS: usize = 3;

/// 10,000 finished agents in 100 tasks; then the same tree once more (nothing to do).
fn ten_thousand_in_100(cap: Duration) {
    // The same tree for each run of `once`, then (written after they ran, so its writeback
    // does not slow `once` down) for the disk's floor.
    let write_tree = |base: &std::path::Path| {
        for t in 0..100 {
            let ids: Vec<String> = (0..100)
                .map(|a| format!("ten-{t:03}{a:03}-{:06x}", t * 1000 + a))
                .collect();
            finished_task(base, &task_name("ten", t), &ids);
        }
    };
    // Single runs on this shared disk spread by a fifth around their median: the figure
    // is the median of `TEN_K_RUNS`, each on a fresh tree and state dir, all printed.
    let mut runs: Vec<(tempfile::TempDir, Run)> = (0..TEN_K_RUNS)
        .map(|_| {
            let tmp = tempdir();
            let base = tmp.path().join("ws");
            write_tree(&base);
            let run = run_capped(once(tmp.path(), &base), cap);
            (tmp, run)
        })
        .collect();
    let each: Vec<String> = runs
        .iter()
        .map(|(_, r)| {
            r.took
                .map_or("capped".into(), |t| format!("{:.3}", t.as_secs_f64()))
        })
        .collect();
    runs.sort_by_key(|(_, r)| r.took.unwrap_or(Duration::MAX));
    let (tmp, first) = runs.swap_remove(TEN_K_RUNS / 2);
    let base = tmp.path().join("ws");
    time_line(
        &format!(
            "10,000 finished agents in 100 tasks, once (median of {TEN_K_RUNS}: {} s)",
            each.join(", ")
        ),
        &first,
        Duration::from_secs(1),
        cap,
    );
    let floors = floors(tmp.path(), write_tree);
    floor_line(
        "30,000 logs moved, 10,000 prompts unlinked",
        floors,
        Duration::from_secs(1),
    );
    println!("  {}", first.summary());
    // The second run follows the first within moments: the clean tasks the first kept in
    // the state dir are verified by their stamps plus, for stamps that young, their
    // content (`reap::cache::stamp`). Past that window the stamps vouch alone.
    let again = run_capped(once_counting_skips(tmp.path(), &base), cap);
    time_line(
        &format!(
            "the same tree once cleaned, once (nothing to do; {})",
            skipped(&again)
        ),
        &again,
        Duration::from_millis(100),
        cap,
    );
    println!("  {}", again.summary());
    std::thread::sleep(Duration::from_millis(2100));
    let settled = run_capped(once_counting_skips(tmp.path(), &base), cap);
    time_line(
        &format!(
            "the same tree, 2 s later, once (nothing to do; {})",
            skipped(&settled)
        ),
        &settled,
        Duration::from_millis(100),
        cap,
    );
    // For comparison: what the pass costs when nothing is kept (every registry read).
    fs::remove_file(tmp.path().join("state/clean-tasks.bin")).unwrap();
    let unkept = run_capped(once_counting_skips(tmp.path(), &base), cap);
    match unkept.took {
        Some(t) => println!(
            "  without the kept clean tasks (state file removed): {:.3} s (no goal; {})",
            t.as_secs_f64(),
            skipped(&unkept)
        ),
        None => println!("  without the kept clean tasks: did not finish"),
    }
}

/// `once`, with the pass's debug line that counts the clean tasks it skipped unread.
fn once_counting_skips(root: &std::path::Path, base: &std::path::Path) -> std::process::Command {
    let mut cmd = once(root, base);
    cmd.env("AGENT_REAPER_LOG", "error,agent_reaper::reap::pass=debug");
    cmd
}

/// "N clean tasks skipped unread, M read", from that line.
fn skipped(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.split_once("steady state: "))
        .map(|(_, said)| said.replace("clean task(s) skipped", "clean tasks skipped unread"))
        .unwrap_or_else(|| "skipped tasks not reported".into())
}

/// A finished agent whose session is still up and whose stream log ends with a 10 MB
/// result line: `completed` stays (a normal finish), not `terminated`.
fn ten_mb_result_line(cap: Duration) {
    let tmp = tempdir();
    let base = tmp.path().join("ws");
    let task = task_name("res", 0);
    let id = "res-000001-00000a";
    // An active agent whose session is gone: the end of its log says how it ended.
    let mut e = finished_entry(id);
    e["status"] = json!("working");
    e.as_object_mut().unwrap().remove("completed_at");
    write_registry(&base, &task, vec![e], false);
    let mut body =
        b"{\"type\":\"system\"}\n{\"type\":\"result\",\"is_error\":false,\"result\":\"".to_vec();
    body.resize(body.len() + 10_000_000, b'x');
    body.extend_from_slice(b"\"}\n");
    write_agent_files(&base, &task, id, &body);
    let run = run_capped(once(tmp.path(), &base), cap);
    let registry = fs::read_to_string(base.join(&task).join("AGENT_REGISTRY.json")).unwrap();
    let root: serde_json::Value = serde_json::from_str(&registry).unwrap();
    let status = root["agents"][0]["status"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    println!(
        "10 MB result line, agent ends: measured {status} (goal completed){}",
        verdict(status == "completed")
    );
    match run.took {
        Some(t) => println!(
            "10 MB result line, once: measured {:.3} s (no goal; {})",
            t.as_secs_f64(),
            run.summary()
        ),
        None => println!("10 MB result line: did not finish in {} s", cap.as_secs()),
    }
}
