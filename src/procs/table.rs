//! The /proc process table, read once per round, and an agent's process set within it.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process identity that survives pid reuse: the same pid with another start time is another process.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ProcKey {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`, clock ticks since boot.
    pub start_time: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// `R`, `S`, `Z`, ... from `stat`.
    pub state: char,
    pub start_time: u64,
    pub uid: u32,
    pub cmdline: Vec<String>,
}

impl ProcInfo {
    pub fn key(&self) -> ProcKey {
        ProcKey {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// The fields of `/proc/<pid>/stat` the reaper needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub start_time: u64,
}

/// Parses one `/proc/<pid>/stat` line. `comm` (field 2) is free text in parentheses that may
/// itself hold `) ` and spaces, so the numeric fields are read after the LAST `)`.
pub fn parse_stat(line: &str) -> Option<StatFields> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = line[..open].trim().parse().ok()?;
    // Fields from 3 (state) on; field N is rest[N - 3].
    let rest: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let mut state = rest.first()?.chars();
    let st = state.next()?;
    if state.next().is_some() {
        return None;
    }
    Some(StatFields {
        pid,
        state: st,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        start_time: rest.get(22 - 3)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process is gone or the file is unreadable.
pub fn read_stat(pid: i32) -> Option<StatFields> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Real uid from the `Uid:` line of `/proc/<pid>/status`.
fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn read_proc(dir: &Path, pid: i32) -> Option<ProcInfo> {
    let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    // The owner of /proc/<pid> is the process's uid (root for non-dumpable ones, which we
    // then leave alone): one stat instead of the kernel formatting all of `status`.
    let uid = std::fs::metadata(dir)
        .ok()
        .map(|m| m.uid())
        .or_else(|| parse_status_uid(&std::fs::read_to_string(dir.join("status")).ok()?))?;
    // Empty for kernel threads and zombies; unreadable means the process just went away,
    // but an empty cmdline is still a usable entry.
    let cmdline = std::fs::read(dir.join("cmdline"))
        .map(|raw| split_cmdline(&raw))
        .unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgid,
        sid: stat.sid,
        state: stat.state,
        start_time: stat.start_time,
        uid,
        cmdline,
    })
}

fn split_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct ProcTable {
    procs: HashMap<i32, ProcInfo>,
    children: HashMap<i32, Vec<i32>>,
    /// Members of each process group and of each session, by pgid / sid.
    by_pgid: HashMap<i32, Vec<i32>>,
    by_sid: HashMap<i32, Vec<i32>>,
    /// Processes whose cmdline could tie them to some agent by name: computed once per
    /// table, so finding thousands of agents' sets does not read every cmdline each time.
    named: Vec<i32>,
}

/// What a cmdline must contain to name an agent (older orchestrators put the prompt in argv).
pub const ID_MARKER: &str = "Agent ID: ";

impl ProcTable {
    /// Reads every process under /proc once. Processes that exit during the scan are skipped.
    pub fn scan() -> std::io::Result<Self> {
        let mut procs = Vec::with_capacity(512);
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(p) = read_proc(&entry.path(), pid) {
                procs.push(p);
            }
        }
        Ok(Self::from_procs(procs))
    }

    pub fn from_procs(procs: Vec<ProcInfo>) -> Self {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in &procs {
            if p.pid != p.ppid {
                children.entry(p.ppid).or_default().push(p.pid);
            }
        }
        for c in children.values_mut() {
            c.sort_unstable();
        }
        let mut by_pgid: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut by_sid: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in &procs {
            by_pgid.entry(p.pgid).or_default().push(p.pid);
            by_sid.entry(p.sid).or_default().push(p.pid);
        }
        let named = procs
            .iter()
            .filter(|p| p.cmdline.iter().any(|arg| arg.contains(ID_MARKER)))
            .map(|p| p.pid)
            .collect();
        ProcTable {
            procs: procs.into_iter().map(|p| (p.pid, p)).collect(),
            children,
            by_pgid,
            by_sid,
            named,
        }
    }

    /// Members of process group `pgid`.
    pub fn group_members(&self, pgid: i32) -> &[i32] {
        self.by_pgid.get(&pgid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Members of session `sid`.
    pub fn session_members(&self, sid: i32) -> &[i32] {
        self.by_sid.get(&sid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Processes whose argv holds `Agent ID: ` somewhere (to be checked exactly).
    pub fn naming_some_agent(&self) -> impl Iterator<Item = &ProcInfo> {
        self.named.iter().filter_map(|pid| self.procs.get(pid))
    }

    pub fn get(&self, pid: i32) -> Option<&ProcInfo> {
        self.procs.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn children_of(&self, pid: i32) -> &[i32] {
        self.children.get(&pid).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProcInfo> {
        self.procs.values()
    }

    /// `pid` and its ancestors up to (and including) pid 1, as far as the table knows them.
    /// Cycle-safe: stops at a pid seen before.
    pub fn ancestors_and_self(&self, pid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = pid;
        while cur > 0 && seen.insert(cur) {
            out.push(cur);
            match self.procs.get(&cur) {
                Some(p) => cur = p.ppid,
                None => break,
            }
        }
        out
    }

    /// `roots` (those present in the table) and all their descendants; cycle-safe.
    pub fn descendants_and_self(&self, roots: impl IntoIterator<Item = i32>) -> HashSet<i32> {
        let mut seen = HashSet::new();
        let mut stack: Vec<i32> = roots
            .into_iter()
            .filter(|p| self.procs.contains_key(p))
            .collect();
        while let Some(pid) = stack.pop() {
            if seen.insert(pid) {
                stack.extend(
                    self.children_of(pid)
                        .iter()
                        .copied()
                        .filter(|c| !seen.contains(c)),
                );
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(pid: i32, comm: &str, state: char, ppid: i32, start: u64) -> String {
        // 52 fields as on a current kernel; field 22 is start time.
        let mut f: Vec<String> = vec![pid.to_string(), format!("({comm})"), state.to_string()];
        f.extend([ppid, 7, 8].map(|n| n.to_string()));
        while f.len() < 21 {
            f.push("0".into());
        }
        f.push(start.to_string());
        while f.len() < 52 {
            f.push("0".into());
        }
        f.join(" ")
    }

    #[test]
    fn parse_stat_survives_hostile_comm() {
        for comm in [
            "sleep",
            "a) S 1 (b",
            "x) Z 99 99 99 99",
            ") ) )",
            "(",
            "sp ace",
        ] {
            let s = parse_stat(&stat_line(1234, comm, 'S', 42, 987654)).unwrap();
            assert_eq!(
                s,
                StatFields {
                    pid: 1234,
                    state: 'S',
                    ppid: 42,
                    pgid: 7,
                    sid: 8,
                    start_time: 987654
                },
                "{comm}"
            );
        }
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("12 x) S"), None);
    }

    #[test]
    fn parse_stat_reads_real_self() {
        let me = read_stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start_time > 0);
    }

    #[test]
    fn status_uid_and_cmdline() {
        assert_eq!(
            parse_status_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"),
            Some(1000)
        );
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
        assert_eq!(split_cmdline(b"a\0b c\0\0d\0"), vec!["a", "b c", "", "d"]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn scan_finds_self_and_parent() {
        let t = ProcTable::scan().unwrap();
        let me = t.get(std::process::id() as i32).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert!(!me.cmdline.is_empty());
        assert!(t.children_of(me.ppid).contains(&me.pid));
    }

    fn p(pid: i32, ppid: i32, cmd: &[&str]) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            state: 'S',
            start_time: 1000 + pid as u64,
            uid: 1000,
            cmdline: cmd.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn descendant_walk_is_cycle_safe() {
        // A corrupt snapshot (pid reuse mid-scan) can make a ppid loop.
        let t = ProcTable::from_procs(vec![p(5, 6, &[]), p(6, 5, &[]), p(7, 7, &[])]);
        assert_eq!(t.descendants_and_self([5]).len(), 2);
        assert_eq!(t.descendants_and_self([7]).len(), 1);
        assert_eq!(t.ancestors_and_self(5), vec![5, 6]);
    }
}
