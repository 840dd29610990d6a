//! The process source seam: where a pass reads what runs (the /proc table, log writers,
//! pane environments, cgroups) and how it stops processes. `LiveProcesses` is the real
//! system; unit tests of whole passes use `procs::fakes::FakeProcesses`.

use super::cgroup;
use super::environ::{EnvCache, EnvIndex};
use super::openfiles::{self, DevIno};
use super::stop::{RealOps, Rescan, StopPolicy, StopReport, StopRequest, stop_all_with};
use super::table::ProcTable;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a pass asks the system about processes, and the one way it signals them.
pub trait ProcessSource: Send + Sync {
    /// A fresh read of the whole process table.
    fn scan(&self) -> std::io::Result<ProcTable>;
    /// For each of `candidates`, the pids that hold it open for writing.
    fn writers_of(&self, candidates: &HashSet<DevIno>) -> HashMap<DevIno, Vec<i32>>;
    /// The tmux pane tags in the environments of the processes of `table` that `wanted`
    /// accepts; with a `cache`, processes read before are not read again.
    fn environments(
        &self,
        table: &ProcTable,
        wanted: &dyn Fn(i32) -> bool,
        cache: Option<&mut EnvCache>,
    ) -> EnvIndex;
    /// The cgroups holding only the agent's processes (see [`cgroup::agent_cgroups`]).
    fn agent_cgroups(&self, panes: &[i32], set: &HashSet<i32>, others: &[i32]) -> Vec<PathBuf>;
    /// Stops every request's processes at once (see [`super::stop::stop_all_with`]).
    fn stop(
        &self,
        requests: &[StopRequest],
        table: &ProcTable,
        policy: &StopPolicy,
        rescan: &mut Rescan<'_>,
    ) -> Vec<StopReport>;
}

/// The running system: `/proc`, `/sys/fs/cgroup`, pidfd signals.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveProcesses;

impl ProcessSource for LiveProcesses {
    fn scan(&self) -> std::io::Result<ProcTable> {
        ProcTable::scan()
    }

    fn writers_of(&self, candidates: &HashSet<DevIno>) -> HashMap<DevIno, Vec<i32>> {
        openfiles::writers_of(candidates)
    }

    fn environments(
        &self,
        table: &ProcTable,
        wanted: &dyn Fn(i32) -> bool,
        cache: Option<&mut EnvCache>,
    ) -> EnvIndex {
        match cache {
            Some(cache) => EnvIndex::scan_cached(Path::new("/proc"), table, wanted, cache),
            None => EnvIndex::scan(table, wanted),
        }
    }

    fn agent_cgroups(&self, panes: &[i32], set: &HashSet<i32>, others: &[i32]) -> Vec<PathBuf> {
        cgroup::agent_cgroups(&cgroup::Roots::default(), panes, set, others)
    }

    fn stop(
        &self,
        requests: &[StopRequest],
        table: &ProcTable,
        policy: &StopPolicy,
        rescan: &mut Rescan<'_>,
    ) -> Vec<StopReport> {
        stop_all_with(&RealOps, requests, table, policy, rescan)
    }
}
