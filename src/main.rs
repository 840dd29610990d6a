//! Entry point: parse the command line and map errors to exit codes.

use clap::Parser;
use std::process::ExitCode;

/// mimalloc, not glibc's malloc. A pass over 20,000 registries leaves glibc's arenas full of
/// small free chunks that the idle daemon's next allocations sort and merge: most of its idle
/// CPU (seen with `perf record -p` on the startup bench's daemon: `_int_malloc` from a new
/// blocking thread's `tcache_init`), and the pages stay in RSS. mimalloc's size-class pages
/// carry no per-object header and go back to the kernel when empty (see `tune_allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` and `mi_option_purge_delay` in the mimalloc v3 that
/// libmimalloc-sys 0.1.49 vendors (its Rust constants follow v2's numbering; the test
/// `mimalloc_runs_with_the_tuned_options` reads the options back by name).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory is committed as it is used and handed back 5 ms after it is free, instead of a
/// whole arena committed up front and frees returned after 10 ms: a pass's peak is close to
/// what it holds at once (`once` on two 30 MB registries of tiny entries: 161 -> 149 MB peak
/// RSS when handed back at once; measured with `/usr/bin/time`). Not at once: every freed
/// page then went back with a `madvise` (and a TLB flush on every core) and faulted in again
/// on the next allocation, 7% of a pass over 100 tasks of 100 agents; with 5 ms that pass
/// took 0.98 s instead of 1.07 s (`/work/prof/ab.sh 10k 5 sync`), the tiny registries
/// 130-133 MB instead of 129-131 MB (10 ms: 0.94 s, 138-141 MB). Defaults only:
/// `MIMALLOC_*` in the environment still win.
///
/// It must run before mimalloc reads its options (its constructor, before the first
/// allocation: the first arena is reserved before `main`): the linker runs numbered
/// `.init_array` entries before the plain one mimalloc's constructor is in.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00101")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[cfg(target_os = "linux")]
extern "C" fn tune_allocator() {
    // SAFETY: mi_option_set_default only stores an integer in mimalloc's option table when
    // the option is not yet set; it runs before main, when no other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 5);
    }
}

fn main() -> ExitCode {
    let cli = agent_reaper::cli::dispatch::Cli::parse();
    match agent_reaper::cli::dispatch::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agent-reaper: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
