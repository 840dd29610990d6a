//! The pure half of watching: which workspace file a path is (base, task, kind, agent).

use crate::model::AgentId;
use crate::workspace::{LogKind, TASK_REGISTRY};
use std::path::{Component, Path, PathBuf};

/// What a watched path is, in the workspace layout (DESIGN.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// `<base>/registry/GLOBAL_REGISTRY.json`
    GlobalRegistry,
    /// `<base>/registry/state.sqlite3` or its `-wal` (`-shm` is left out: readers touch it).
    StateDb,
    /// `<base>/TASK-*` itself: a task folder appeared or went; files made before its
    /// watch existed are only found by scanning it.
    TaskDir { task: String },
    /// `<base>/TASK-*/AGENT_REGISTRY.json`
    TaskRegistry { task: String },
    /// `<base>/TASK-*/AGENT_REGISTRY.json.reaper`: our own crash-safety copy.
    Sidecar { task: String },
    /// `<base>/TASK-*/agent_prompt_<agent>.txt`
    Prompt { task: String, agent: AgentId },
    /// One of an agent's logs at its conventional place.
    Log {
        task: String,
        agent: AgentId,
        kind: LogKind,
    },
    /// `<base>/TASK-*/{logs,progress,findings}` itself: files written there before the
    /// folder's watch was added produce no event, so its appearance means "scan the task".
    LogDir { task: String },
    /// Anything under `<base>/TASK-*/archive/`: our own moves, never a reason to work.
    Archive { task: String },
}

impl PathKind {
    pub fn task(&self) -> Option<&str> {
        match self {
            PathKind::GlobalRegistry | PathKind::StateDb => None,
            PathKind::TaskDir { task }
            | PathKind::TaskRegistry { task }
            | PathKind::Sidecar { task }
            | PathKind::Prompt { task, .. }
            | PathKind::Log { task, .. }
            | PathKind::LogDir { task }
            | PathKind::Archive { task } => Some(task),
        }
    }

    pub fn agent(&self) -> Option<&AgentId> {
        match self {
            PathKind::Prompt { agent, .. } | PathKind::Log { agent, .. } => Some(agent),
            _ => None,
        }
    }

    /// Paths only the daemon itself writes (sidecar, archive): their events are echoes.
    pub fn is_own(&self) -> bool {
        matches!(self, PathKind::Sidecar { .. } | PathKind::Archive { .. })
    }
}

/// A classified path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathEvent {
    /// Index of the matching base in the slice given to `classify` (for the watcher: its
    /// list of bases, see `Watcher::bases`).
    pub base: usize,
    /// That base's path, as given.
    pub base_dir: PathBuf,
    /// The path the event was about.
    pub path: PathBuf,
    pub kind: PathKind,
}

/// What a task folder is called; the same rule as `workspace::discover_tasks`.
pub(super) fn task_id(name: &str) -> Option<String> {
    (name.starts_with("TASK-") && AgentId::parse(name).is_ok()).then(|| name.to_string())
}

/// `<prefix><id><suffix>` with a valid id in the middle.
fn agent_in(name: &str, prefix: &str, suffix: &str) -> Option<AgentId> {
    let id = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    AgentId::parse(id).ok()
}

/// Maps a path to the workspace file it is, or `None` when it is nothing we act on.
///
/// Purely lexical (no filesystem access). The longest base containing `path` wins, so
/// nested bases each keep their own tasks. Components that are not UTF-8, `..`, or names
/// that fail `AgentId::parse` give `None`: names in a workspace are written by agents.
pub fn classify(bases: &[PathBuf], path: &Path) -> Option<PathEvent> {
    let (index, base, rel) = bases
        .iter()
        .enumerate()
        .filter_map(|(i, b)| path.strip_prefix(b).ok().map(|rel| (i, b, rel)))
        // Longest base wins; among equal ones the first (max_by_key would take the last).
        .min_by_key(|(i, b, _)| (std::cmp::Reverse(b.components().count()), *i))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            // `..` could climb out of the task; a lexical mapper must not pretend otherwise.
            _ => return None,
        }
    }
    let kind = classify_rel(&parts)?;
    Some(PathEvent {
        base: index,
        base_dir: base.clone(),
        path: path.to_path_buf(),
        kind,
    })
}

fn classify_rel(parts: &[&str]) -> Option<PathKind> {
    match parts {
        ["registry", "GLOBAL_REGISTRY.json"] => Some(PathKind::GlobalRegistry),
        ["registry", "state.sqlite3" | "state.sqlite3-wal"] => Some(PathKind::StateDb),
        [task, rest @ ..] => {
            let task = task_id(task)?;
            classify_task(task, rest)
        }
        [] => None,
    }
}

fn classify_task(task: String, rest: &[&str]) -> Option<PathKind> {
    const SIDECAR: &str = "AGENT_REGISTRY.json.reaper";
    match rest {
        [] => Some(PathKind::TaskDir { task }),
        ["archive", ..] => Some(PathKind::Archive { task }),
        [name] if *name == TASK_REGISTRY => Some(PathKind::TaskRegistry { task }),
        [name] if *name == SIDECAR => Some(PathKind::Sidecar { task }),
        ["logs" | "progress" | "findings"] => Some(PathKind::LogDir { task }),
        [name] => {
            agent_in(name, "agent_prompt_", ".txt").map(|agent| PathKind::Prompt { task, agent })
        }
        [dir, name] => {
            let (agent, kind) = match *dir {
                "logs" => agent_in(name, "", "_stream.jsonl")
                    .map(|a| (a, LogKind::Stream))
                    .or_else(|| agent_in(name, "deploy_", ".json").map(|a| (a, LogKind::Deploy)))?,
                "progress" => (agent_in(name, "", "_progress.jsonl")?, LogKind::Progress),
                "findings" => (agent_in(name, "", "_findings.jsonl")?, LogKind::Findings),
                _ => return None,
            };
            Some(PathKind::Log { task, agent, kind })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "TASK-20251029-230251-1a2b3c4d";
    const A: &str = "impl-230251-abc123";

    fn bases() -> Vec<PathBuf> {
        vec![PathBuf::from("/ws/a"), PathBuf::from("/ws/b/")]
    }

    fn kind(path: &str) -> Option<PathKind> {
        classify(&bases(), Path::new(path)).map(|e| e.kind)
    }

    fn task() -> String {
        T.to_string()
    }

    fn agent() -> AgentId {
        AgentId::parse(A).unwrap()
    }

    fn log(kind: LogKind) -> Option<PathKind> {
        Some(PathKind::Log {
            task: task(),
            agent: agent(),
            kind,
        })
    }

    #[test]
    fn registries() {
        assert_eq!(
            kind("/ws/a/registry/GLOBAL_REGISTRY.json"),
            Some(PathKind::GlobalRegistry)
        );
        assert_eq!(
            kind("/ws/a/registry/state.sqlite3"),
            Some(PathKind::StateDb)
        );
        assert_eq!(
            kind("/ws/a/registry/state.sqlite3-wal"),
            Some(PathKind::StateDb)
        );
        assert_eq!(kind("/ws/a/registry/state.sqlite3-shm"), None);
        assert_eq!(kind("/ws/a/registry/GLOBAL_REGISTRY.json.tmp"), None);
        assert_eq!(kind("/ws/a/registry"), None);
        assert_eq!(
            kind(&format!("/ws/a/{T}/AGENT_REGISTRY.json")),
            Some(PathKind::TaskRegistry { task: task() })
        );
        assert_eq!(
            kind(&format!("/ws/a/{T}/AGENT_REGISTRY.json.reaper")),
            Some(PathKind::Sidecar { task: task() })
        );
        assert_eq!(kind(&format!("/ws/a/{T}/AGENT_REGISTRY.json.tmp")), None);
        assert_eq!(
            kind(&format!("/ws/a/{T}/registry/GLOBAL_REGISTRY.json")),
            None
        );
    }

    #[test]
    fn task_folders_and_their_subfolders() {
        assert_eq!(
            kind(&format!("/ws/a/{T}")),
            Some(PathKind::TaskDir { task: task() })
        );
        // A trailing slash is the same folder.
        assert_eq!(
            kind(&format!("/ws/a/{T}/")),
            Some(PathKind::TaskDir { task: task() })
        );
        for dir in ["logs", "progress", "findings"] {
            assert_eq!(
                kind(&format!("/ws/a/{T}/{dir}")),
                Some(PathKind::LogDir { task: task() }),
                "{dir}"
            );
        }
        assert_eq!(kind(&format!("/ws/a/{T}/output")), None);
        assert_eq!(kind(&format!("/ws/a/{T}/output/{A}_stream.jsonl")), None);
        assert_eq!(kind(&format!("/ws/a/{T}/notes.md")), None);
        assert_eq!(
            kind("/ws/a/TASK-"),
            Some(PathKind::TaskDir {
                task: "TASK-".into()
            })
        );
        assert_eq!(kind("/ws/a/NOT-A-TASK/AGENT_REGISTRY.json"), None);
        assert_eq!(kind("/ws/a/task-lowercase/AGENT_REGISTRY.json"), None);
    }

    #[test]
    fn agent_files() {
        assert_eq!(
            kind(&format!("/ws/a/{T}/agent_prompt_{A}.txt")),
            Some(PathKind::Prompt {
                task: task(),
                agent: agent()
            })
        );
        assert_eq!(
            kind(&format!("/ws/a/{T}/logs/{A}_stream.jsonl")),
            log(LogKind::Stream)
        );
        assert_eq!(
            kind(&format!("/ws/a/{T}/logs/deploy_{A}.json")),
            log(LogKind::Deploy)
        );
        assert_eq!(
            kind(&format!("/ws/a/{T}/progress/{A}_progress.jsonl")),
            log(LogKind::Progress)
        );
        assert_eq!(
            kind(&format!("/ws/a/{T}/findings/{A}_findings.jsonl")),
            log(LogKind::Findings)
        );
        // Right name, wrong folder.
        assert_eq!(kind(&format!("/ws/a/{T}/progress/{A}_stream.jsonl")), None);
        assert_eq!(kind(&format!("/ws/a/{T}/{A}_stream.jsonl")), None);
        assert_eq!(kind(&format!("/ws/a/{T}/logs/sub/{A}_stream.jsonl")), None);
        // Editor and temp siblings are not the log.
        assert_eq!(kind(&format!("/ws/a/{T}/logs/{A}_stream.jsonl.swp")), None);
        assert_eq!(kind(&format!("/ws/a/{T}/logs/.{A}_stream.jsonl")), None);
        assert_eq!(kind(&format!("/ws/a/{T}/agent_prompt_{A}.txt~")), None);
        // An id that itself contains a suffix-like part is still one id.
        assert_eq!(
            kind(&format!("/ws/a/{T}/logs/x_stream_stream.jsonl")),
            Some(PathKind::Log {
                task: task(),
                agent: AgentId::parse("x_stream").unwrap(),
                kind: LogKind::Stream
            })
        );
        // deploy_ prefix with a stream suffix is a stream log of agent `deploy_x`.
        assert_eq!(
            kind(&format!("/ws/a/{T}/logs/deploy_x_stream.jsonl")),
            Some(PathKind::Log {
                task: task(),
                agent: AgentId::parse("deploy_x").unwrap(),
                kind: LogKind::Stream
            })
        );
    }

    #[test]
    fn archive_is_ours() {
        for p in [
            format!("/ws/a/{T}/archive"),
            format!("/ws/a/{T}/archive/{A}_stream.jsonl"),
            format!("/ws/a/{T}/archive/{A}_stream.1.jsonl.partial"),
            format!("/ws/a/{T}/archive/deep/er/x"),
        ] {
            let k = kind(&p).unwrap();
            assert_eq!(k, PathKind::Archive { task: task() }, "{p}");
            assert!(k.is_own());
        }
        assert!(
            kind(&format!("/ws/a/{T}/AGENT_REGISTRY.json.reaper"))
                .unwrap()
                .is_own()
        );
        assert!(
            !kind(&format!("/ws/a/{T}/AGENT_REGISTRY.json"))
                .unwrap()
                .is_own()
        );
    }

    #[test]
    fn hostile_names() {
        for p in [
            // Empty id, ids starting with '.' or '-', bad characters.
            format!("/ws/a/{T}/agent_prompt_.txt"),
            format!("/ws/a/{T}/agent_prompt_..txt"),
            format!("/ws/a/{T}/agent_prompt_-rf.txt"),
            format!("/ws/a/{T}/logs/_stream.jsonl"),
            format!("/ws/a/{T}/logs/..a_stream.jsonl"),
            format!("/ws/a/{T}/logs/a b_stream.jsonl"),
            format!("/ws/a/{T}/logs/a;rm -rf ~_stream.jsonl"),
            format!("/ws/a/{T}/logs/$(id)_stream.jsonl"),
            format!("/ws/a/{T}/logs/a\nb_stream.jsonl"),
            format!("/ws/a/{T}/progress/é_progress.jsonl"),
            format!("/ws/a/{T}/logs/deploy_.json"),
            // Climbing.
            format!("/ws/a/{T}/../{T}/AGENT_REGISTRY.json"),
            format!("/ws/a/{T}/logs/../AGENT_REGISTRY.json"),
            format!("/ws/a/../a/{T}/AGENT_REGISTRY.json"),
            // Task names that are not safe.
            "/ws/a/TASK-x y/AGENT_REGISTRY.json".to_string(),
            "/ws/a/TASK-$(id)/AGENT_REGISTRY.json".to_string(),
        ] {
            assert_eq!(kind(&p), None, "{p:?}");
        }
        let long = "a".repeat(300);
        assert_eq!(kind(&format!("/ws/a/{T}/logs/{long}_stream.jsonl")), None);
        assert_eq!(kind(&format!("/ws/a/TASK-{long}")), None);
    }

    #[test]
    fn non_utf8_is_ignored() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let mut p = PathBuf::from(format!("/ws/a/{T}/logs"));
        p.push(OsStr::from_bytes(b"\xff_stream.jsonl"));
        assert_eq!(classify(&bases(), &p), None);
        let p = Path::new("/ws/a").join(OsStr::from_bytes(b"TASK-\xff"));
        assert_eq!(classify(&bases(), &p), None);
    }

    #[test]
    fn outside_and_base_itself() {
        assert_eq!(kind("/ws/a"), None);
        assert_eq!(kind("/ws/a/.daemon_health"), None);
        assert_eq!(kind(&format!("/ws/c/{T}/AGENT_REGISTRY.json")), None);
        // A sibling whose name merely starts with the base's name is not inside it.
        assert_eq!(kind(&format!("/ws/ab/{T}/AGENT_REGISTRY.json")), None);
        assert_eq!(kind(&format!("{T}/AGENT_REGISTRY.json")), None);
        assert_eq!(kind("/"), None);
        assert_eq!(classify(&[], Path::new("/ws/a/TASK-1")), None);
    }

    #[test]
    fn reports_which_base() {
        let e = classify(
            &bases(),
            Path::new(&format!("/ws/b/{T}/AGENT_REGISTRY.json")),
        )
        .unwrap();
        assert_eq!(e.base, 1);
        assert_eq!(e.base_dir, PathBuf::from("/ws/b/"));
        assert_eq!(
            e.path,
            PathBuf::from(format!("/ws/b/{T}/AGENT_REGISTRY.json"))
        );
        assert_eq!(e.kind.task(), Some(T));
        assert_eq!(e.kind.agent(), None);
        let e = classify(
            &bases(),
            Path::new(&format!("/ws/a/{T}/logs/{A}_stream.jsonl")),
        )
        .unwrap();
        assert_eq!(e.base, 0);
        assert_eq!(e.kind.agent(), Some(&agent()));
    }

    #[test]
    fn longest_base_wins() {
        // An outer base whose task folder is itself used as a base, in either order.
        let outer = PathBuf::from("/ws");
        let inner = PathBuf::from(format!("/ws/{T}"));
        let path = PathBuf::from(format!("/ws/{T}/TASK-2/AGENT_REGISTRY.json"));
        for bases in [
            vec![outer.clone(), inner.clone()],
            vec![inner.clone(), outer.clone()],
        ] {
            let e = classify(&bases, &path).unwrap();
            assert_eq!(e.base_dir, inner);
            assert_eq!(
                e.kind,
                PathKind::TaskRegistry {
                    task: "TASK-2".into()
                }
            );
        }
        // The inner base itself is the outer base's task folder, but the inner base wins
        // and a base itself is nothing.
        assert_eq!(classify(&[outer.clone(), inner.clone()], &inner), None);
        // Duplicates: the first listed.
        let e = classify(&[outer.clone(), outer.clone()], Path::new("/ws/TASK-1")).unwrap();
        assert_eq!(e.base, 0);
    }
}
