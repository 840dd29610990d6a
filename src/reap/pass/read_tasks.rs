//! A pass's reads of JSON task registries, on a few threads: each a sidecar recovery, a
//! lean parse and a stat of every agent's files, independent of the others.

use super::{Mode, read, read_options};
use crate::config::Config;
use crate::model::{AgentId, Backend};
use crate::observe::{PendingAgent, TaskView, task_view};
use crate::registry::{SidecarRecovery, UpdateOptions, recover_sidecar};
use crate::workspace::TaskDir;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// One JSON task registry as read, and what the pass keeps of the read.
pub(super) struct JsonRead {
    view: TaskView,
    pending: Vec<PendingAgent>,
    /// What was read (for the steady-state cache's confirmation).
    key: Option<read::FileKey>,
    /// A crashed edit's sidecar was put back first.
    restored: bool,
    errors: Vec<String>,
}

impl JsonRead {
    /// The task's view and agents; the rest goes to the pass's `keys`, `restored`, `errors`.
    pub(super) fn take(
        self,
        (keys, restored, errors): (
            &mut HashMap<PathBuf, read::FileKey>,
            &mut HashSet<PathBuf>,
            &mut Vec<String>,
        ),
    ) -> (TaskView, Vec<PendingAgent>) {
        let dir = &self.view.task.dir;
        if let Some(key) = self.key {
            keys.insert(dir.clone(), key);
        }
        if self.restored {
            restored.insert(dir.clone());
        }
        errors.extend(self.errors);
        (self.view, self.pending)
    }
}

/// Reads every task's registry, on up to `reap::parallel::io_threads()` threads; the
/// results in `tasks`' order. `unseen`: see `observe::task_view`.
pub(super) fn read_json_tasks(
    tasks: &[TaskDir],
    config: &Config,
    mode: Mode,
    unseen: &(dyn Fn(&AgentId) -> bool + Sync),
) -> Vec<JsonRead> {
    let threads = crate::reap::parallel::io_threads();
    crate::reap::parallel::map_ordered(tasks.iter().collect(), threads, |task| {
        read_json_task(task, config, mode, unseen)
    })
}

/// Reads one JSON task registry (after restoring it from a sidecar a crashed edit left,
/// when acting).
fn read_json_task(
    task: &TaskDir,
    config: &Config,
    mode: Mode,
    unseen: &dyn Fn(&AgentId) -> bool,
) -> JsonRead {
    let mut errors = Vec::new();
    let mut restored = false;
    if let Mode::Execute { .. } = mode {
        let options = UpdateOptions {
            read: read_options(config, false),
            lock_timeout: config.lock_timeout,
        };
        match recover_sidecar(&task.registry(), &options) {
            Ok(SidecarRecovery::Restored) => restored = true,
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    let acting = matches!(mode, Mode::Execute { .. });
    let (registry, key) = match read::read_lean(&task.registry(), &read_options(config, acting)) {
        Ok((registry, key)) => (Ok(registry), key),
        Err(e) => (Err(e), None),
    };
    let (view, pending) = task_view(task, Backend::Json, registry, unseen);
    // A registry whose agents are all cleaned, with nothing of theirs left, has no writer
    // left to race (the unlocked one is an agent's progress report): the version read is
    // no evidence anyone needs, and 20,000 of them were most of a first pass's memory
    // (88 -> 65 MB peak at READY). One with an agent still to look at keeps it.
    if pending.is_empty() && view.error.is_none() && view.duplicates.is_empty() {
        crate::registry::seen::global().forget(&task.registry());
    }
    JsonRead {
        view,
        pending,
        key,
        restored,
        errors,
    }
}
