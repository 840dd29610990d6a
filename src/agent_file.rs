//! The names of an agent's own files (its logs and prompt, where the orchestrator puts
//! them), and [`TaskPath`]: a path below a task folder, kept as the agent's id and two tags
//! when it is one of those files, so a pass holds no path per file.

use crate::model::AgentId;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which of an agent's files a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    Stream,
    Deploy,
    Progress,
    Findings,
}

impl LogKind {
    /// Every kind, in the order an agent's logs are listed.
    pub const ALL: [LogKind; 4] = [
        LogKind::Stream,
        LogKind::Deploy,
        LogKind::Progress,
        LogKind::Findings,
    ];
}

/// One of an agent's files: a log, or (`None`) its prompt.
pub type FileOf = Option<LogKind>;

/// Folder, prefix and suffix of the agent's file `which` (the orchestrator's naming).
fn parts(which: FileOf) -> (&'static str, &'static str, &'static str) {
    match which {
        None => ("", "agent_prompt_", ".txt"),
        Some(LogKind::Stream) => ("logs/", "", "_stream.jsonl"),
        Some(LogKind::Deploy) => ("logs/", "deploy_", ".json"),
        Some(LogKind::Progress) => ("progress/", "", "_progress.jsonl"),
        Some(LogKind::Findings) => ("findings/", "", "_findings.jsonl"),
    }
}

/// The name of the agent's file `which` relative to its task folder, written into `buf`
/// (one buffer for many agents: no allocation per look).
pub fn agent_file_rel<'b>(buf: &'b mut String, which: FileOf, id: &AgentId) -> &'b Path {
    let (folder, before, after) = parts(which);
    buf.clear();
    for part in [folder, before, id.as_str(), after] {
        buf.push_str(part);
    }
    Path::new(buf.as_str())
}

/// The folder below a task that holds its archives (when `archive_dir` does not move them).
pub const TASK_ARCHIVE: &str = "archive";

/// Where one of an agent's files is, relative to its task folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// Where the orchestrator writes it.
    Own,
    /// Moved into the task's archive folder under its own name.
    Archived,
    /// There, compressed (`<name>.zst`).
    ArchivedZst,
}

/// One of an agent's files by its id (shared with the agent's [`AgentId`]), which file and
/// where: the path follows from these. 40,000 agents' log and archive paths kept as text
/// were 17 MB of a pass's peak.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentFile {
    id: Arc<str>,
    which: FileOf,
    place: Place,
}

impl AgentFile {
    pub fn new(id: &AgentId, which: FileOf) -> AgentFile {
        AgentFile {
            id: id.shared(),
            which,
            place: Place::Own,
        }
    }

    /// The same file's archive in the task's archive folder (`.zst` when `compressed`).
    pub fn archived(&self, compressed: bool) -> AgentFile {
        AgentFile {
            place: if compressed {
                Place::ArchivedZst
            } else {
                Place::Archived
            },
            ..self.clone()
        }
    }

    pub fn which(&self) -> FileOf {
        self.which
    }

    /// The agent's id text.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Which file and where, as one number below [`AgentFile::CODES`] (for
    /// [`crate::packed::PackedList`]).
    pub fn code(&self) -> u8 {
        let which = match self.which {
            None => 0,
            Some(kind) => 1 + LogKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u8,
        };
        let place = match self.place {
            Place::Own => 0,
            Place::Archived => 1,
            Place::ArchivedZst => 2,
        };
        which * 3 + place
    }

    /// How many codes there are.
    pub const CODES: u8 = (1 + LogKind::ALL.len() as u8) * 3;

    /// The file `code` (see [`AgentFile::code`]) of the agent `id`.
    pub fn from_code(id: &Arc<str>, code: u8) -> AgentFile {
        let which = match code / 3 {
            0 => None,
            k => Some(LogKind::ALL[usize::from(k - 1) % LogKind::ALL.len()]),
        };
        let place = match code % 3 {
            0 => Place::Own,
            1 => Place::Archived,
            _ => Place::ArchivedZst,
        };
        AgentFile {
            id: id.clone(),
            which,
            place,
        }
    }

    pub fn place(&self) -> Place {
        self.place
    }

    /// Its folder below the task folder (`""` for the task folder itself).
    pub fn folder(&self) -> &'static str {
        match self.place {
            Place::Own => parts(self.which).0.trim_end_matches('/'),
            Place::Archived | Place::ArchivedZst => TASK_ARCHIVE,
        }
    }

    /// Its file name.
    pub fn file_name(&self) -> OsString {
        let (_, before, after) = parts(self.which);
        let zst = if self.place == Place::ArchivedZst {
            ".zst"
        } else {
            ""
        };
        let mut name = String::with_capacity(before.len() + self.id.len() + after.len() + 4);
        for part in [before, &self.id, after, zst] {
            name.push_str(part);
        }
        name.into()
    }
}

impl AgentFile {
    /// Whether its file name is `name` (compared in place, nothing made).
    pub fn has_name(&self, name: &std::ffi::OsStr) -> bool {
        let (_, before, after) = parts(self.which);
        let zst = if self.place == Place::ArchivedZst {
            ".zst"
        } else {
            ""
        };
        let mut rest = name.as_encoded_bytes();
        for part in [before, &self.id, after, zst] {
            match rest.strip_prefix(part.as_bytes()) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }
}

impl fmt::Display for AgentFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, before, after) = parts(self.which);
        let folder = self.folder();
        let zst = if self.place == Place::ArchivedZst {
            ".zst"
        } else {
            ""
        };
        let sep = if folder.is_empty() { "" } else { "/" };
        write!(f, "{folder}{sep}{before}{}{after}{zst}", self.id)
    }
}

/// A path below a task folder, as a pass keeps it: one of an agent's own files (no text
/// held), or any other path, relative to the task folder when inside it, else whole.
#[derive(Clone)]
pub enum TaskPath {
    Agent(AgentFile),
    Other(Arc<Path>),
}

impl TaskPath {
    /// The path (relative to the task folder when inside it).
    pub fn to_path_buf(&self) -> PathBuf {
        match self {
            TaskPath::Agent(file) => PathBuf::from(file.to_string()),
            TaskPath::Other(path) => path.to_path_buf(),
        }
    }

    /// The whole path, `task_dir` joined where it is relative.
    pub fn whole(&self, task_dir: &Path) -> PathBuf {
        match self {
            TaskPath::Agent(file) => {
                let mut whole = task_dir.to_path_buf();
                if !file.folder().is_empty() {
                    whole.push(file.folder());
                }
                whole.push(file.file_name());
                whole
            }
            TaskPath::Other(path) => task_dir.join(path),
        }
    }

    pub fn file_name(&self) -> Option<OsString> {
        match self {
            TaskPath::Agent(file) => Some(file.file_name()),
            TaskPath::Other(path) => path.file_name().map(OsString::from),
        }
    }

    /// The plain archive a compressed one (`<name>.zst`) was made from; itself otherwise.
    pub fn uncompressed(&self) -> TaskPath {
        match self {
            TaskPath::Agent(file) if file.place == Place::ArchivedZst => {
                TaskPath::Agent(file.archived(false))
            }
            TaskPath::Other(path) if path.extension() == Some("zst".as_ref()) => {
                TaskPath::Other(Arc::from(path.with_extension("")))
            }
            plain => plain.clone(),
        }
    }

    /// Whether its file name is `name` (for an agent's file: compared in place).
    pub fn has_name(&self, name: &std::ffi::OsStr) -> bool {
        match self {
            TaskPath::Agent(file) => file.has_name(name),
            TaskPath::Other(path) => path.file_name() == Some(name),
        }
    }

    /// `path` as shown from `task_dir`: relative when inside it, else whole.
    pub fn shown_from(path: &Path, task_dir: &Path) -> TaskPath {
        TaskPath::Other(Arc::from(path.strip_prefix(task_dir).unwrap_or(path)))
    }
}

impl From<AgentFile> for TaskPath {
    fn from(file: AgentFile) -> TaskPath {
        TaskPath::Agent(file)
    }
}

impl From<&Path> for TaskPath {
    fn from(path: &Path) -> TaskPath {
        TaskPath::Other(Arc::from(path))
    }
}

impl From<&str> for TaskPath {
    fn from(path: &str) -> TaskPath {
        TaskPath::from(Path::new(path))
    }
}

/// Two are the same when they read the same.
impl PartialEq for TaskPath {
    fn eq(&self, other: &TaskPath) -> bool {
        match (self, other) {
            (TaskPath::Agent(a), TaskPath::Agent(b)) => a == b,
            (TaskPath::Other(a), TaskPath::Other(b)) => a == b,
            _ => self.to_path_buf() == other.to_path_buf(),
        }
    }
}

impl Eq for TaskPath {}

impl fmt::Display for TaskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskPath::Agent(file) => fmt::Display::fmt(file, f),
            TaskPath::Other(path) => fmt::Display::fmt(&path.display(), f),
        }
    }
}

impl fmt::Debug for TaskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_path_buf(), f)
    }
}

impl serde::Serialize for TaskPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_and_place_has_its_own_code_and_reads_back_from_it() {
        let a = AgentId::parse("agent-7").unwrap();
        let mut seen = std::collections::HashSet::new();
        for which in LogKind::ALL.map(Some).into_iter().chain([None]) {
            let own = AgentFile::new(&a, which);
            for file in [own.clone(), own.archived(false), own.archived(true)] {
                let code = file.code();
                assert!(
                    code < AgentFile::CODES && seen.insert(code),
                    "{file}: {code}"
                );
                assert_eq!(AgentFile::from_code(&a.shared(), code), file);
            }
        }
        assert_eq!(seen.len(), usize::from(AgentFile::CODES));
    }

    #[test]
    fn an_agent_file_reads_as_the_path_the_orchestrator_writes_and_holds_no_text() {
        let a = AgentId::parse("agent-7").unwrap();
        let mut buf = String::new();
        for which in LogKind::ALL.map(Some).into_iter().chain([None]) {
            let file = AgentFile::new(&a, which);
            let path = TaskPath::from(file.clone());
            assert_eq!(path.to_path_buf(), agent_file_rel(&mut buf, which, &a));
            assert_eq!(
                path.whole(Path::new("/w/T")),
                Path::new("/w/T").join(agent_file_rel(&mut buf, which, &a))
            );
            assert_eq!(
                path,
                TaskPath::from(agent_file_rel(&mut buf, which, &a)),
                "compares by what it reads"
            );
        }
        let stream = AgentFile::new(&a, Some(LogKind::Stream));
        assert_eq!(
            stream.archived(false).to_string(),
            "archive/agent-7_stream.jsonl"
        );
        assert_eq!(
            TaskPath::from(stream.archived(true)).whole(Path::new("/w/T")),
            Path::new("/w/T/archive/agent-7_stream.jsonl.zst")
        );
        assert_eq!(
            stream.archived(false).file_name(),
            OsString::from("agent-7_stream.jsonl"),
            "an archive keeps its log's name"
        );
        assert!(stream.has_name("agent-7_stream.jsonl".as_ref()));
        let zst = TaskPath::from(stream.archived(true));
        assert_eq!(zst.uncompressed(), TaskPath::from(stream.archived(false)));
        assert_eq!(
            TaskPath::from("/store/T/a.jsonl.zst").uncompressed(),
            TaskPath::from("/store/T/a.jsonl")
        );
        assert_eq!(
            TaskPath::from("archive/a.jsonl").uncompressed(),
            TaskPath::from("archive/a.jsonl")
        );
        assert!(
            stream
                .archived(true)
                .has_name("agent-7_stream.jsonl.zst".as_ref())
        );
        for other in [
            "agent-7_stream.json",
            "agent-7_stream.jsonl.zst",
            "agent-77_stream.jsonl",
            "",
        ] {
            assert!(!stream.has_name(other.as_ref()), "{other}");
        }
        // The id is the agent's own text, shared: a file costs no allocation.
        let TaskPath::Agent(file) = TaskPath::from(stream) else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(&file.id, &a.shared()));
        assert!(std::mem::size_of::<TaskPath>() <= 24);
    }

    #[test]
    fn another_path_is_kept_relative_inside_the_task_and_whole_outside() {
        let task = Path::new("/w/T");
        let inside = TaskPath::shown_from(Path::new("/w/T/archive/x.jsonl"), task);
        assert_eq!(inside.to_string(), "archive/x.jsonl");
        assert_eq!(inside.whole(task), Path::new("/w/T/archive/x.jsonl"));
        let outside = TaskPath::shown_from(Path::new("/store/T/x.jsonl"), task);
        assert_eq!(outside.to_string(), "/store/T/x.jsonl");
        assert_eq!(outside.whole(task), Path::new("/store/T/x.jsonl"));
    }
}
