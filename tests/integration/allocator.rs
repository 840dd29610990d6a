//! The binary's allocator: mimalloc with its memory handed back as soon as it is free (see
//! `tune_allocator` in `src/main.rs`), read back by option name from mimalloc itself.

use crate::common::*;

/// mimalloc's options are set by number before it starts; its verbose start-up lists them by
/// name. A mimalloc that renumbers its options, or a constructor that runs too late, shows
/// here as the defaults (2 and 1000) instead of 0 and 0.
#[test]
fn mimalloc_runs_with_the_tuned_options() {
    let s = Sandbox::new();
    let mut cmd = s.cmd(&["validate"]);
    cmd.env("MIMALLOC_VERBOSE", "1");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in ["option 'arena_eager_commit': 0", "option 'purge_delay': 5"] {
        assert!(
            stderr.lines().any(|l| l.trim_end() == line),
            "no `{line}` in mimalloc's start-up:\n{stderr}"
        );
    }
}

/// The environment still wins over the tuned defaults (a user can trade memory for speed).
#[test]
fn a_mimalloc_option_in_the_environment_overrides_the_tuned_default() {
    let s = Sandbox::new();
    let mut cmd = s.cmd(&["validate"]);
    cmd.env("MIMALLOC_VERBOSE", "1")
        .env("MIMALLOC_PURGE_DELAY", "250");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.trim_end() == "option 'purge_delay': 250"),
        "the environment's purge delay was not used:\n{stderr}"
    );
}
