//! Environment evidence: the tmux pane every process started in a pane carries (`TMUX`, `TMUX_PANE`).
//!
//! tmux sets `TMUX=<socket>,<server pid>,<session id>` and `TMUX_PANE=%<pane id>` in each
//! pane's environment; children inherit it through `setsid`, double forks and reparenting
//! to init, so it still names the agent's pane after the process tree is gone. A process
//! that clears its environment carries nothing, and is not found this way.

use super::table::{ProcKey, ProcTable};
use super::tmux::TmuxServer;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// At most this much of `/proc/<pid>/environ` is read (a process controls its size).
const ENVIRON_CAP: u64 = 1 << 20;

/// The pane a process's environment names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaneTag {
    pub server: TmuxServer,
    pub session: u32,
    pub pane: Option<u32>,
}

/// Reads `TMUX` and `TMUX_PANE` out of a raw environ block (NUL-separated `K=V`).
/// The socket path may itself hold commas: the pid and session are the last two fields.
pub fn parse_environ(raw: &[u8]) -> Option<PaneTag> {
    let mut tmux = None;
    let mut pane = None;
    for var in raw.split(|&b| b == 0) {
        if let Some(v) = var.strip_prefix(b"TMUX=") {
            tmux = Some(v);
        } else if let Some(v) = var.strip_prefix(b"TMUX_PANE=%") {
            pane = std::str::from_utf8(v).ok().and_then(|n| n.parse().ok());
        }
    }
    let tmux = std::str::from_utf8(tmux?).ok()?;
    let mut fields = tmux.rsplitn(3, ',');
    let session = fields.next()?.parse().ok()?;
    let pid = fields.next()?.parse().ok()?;
    let socket = fields.next().filter(|s| !s.is_empty())?;
    Some(PaneTag {
        server: TmuxServer {
            socket: PathBuf::from(socket),
            pid,
        },
        session,
        pane,
    })
}

fn read_environ(proc_root: &Path, pid: i32) -> Option<Vec<u8>> {
    let file = std::fs::File::open(proc_root.join(pid.to_string()).join("environ")).ok()?;
    let mut raw = Vec::new();
    file.take(ENVIRON_CAP).read_to_end(&mut raw).ok()?;
    Some(raw)
}

/// Environments already read, by process identity (a pid reused is read again).
#[derive(Debug, Clone, Default)]
pub struct EnvCache(HashMap<ProcKey, Option<PaneTag>>);

/// Which processes name which tmux session and pane, for the processes read.
#[derive(Debug, Clone, Default)]
pub struct EnvIndex {
    by_session: HashMap<(TmuxServer, u32), Vec<i32>>,
    by_pane: HashMap<(TmuxServer, u32), Vec<i32>>,
    /// How many environments were read (for the record and the benchmark).
    pub read: usize,
}

impl EnvIndex {
    /// Reads the environment of every process in `table` that `wanted` accepts (the caller
    /// leaves out pid 1, tmux, protected and other users' processes). Unreadable ones
    /// (exited, another user's) are skipped.
    pub fn scan(table: &ProcTable, wanted: impl Fn(i32) -> bool) -> Self {
        Self::scan_at(Path::new("/proc"), table, wanted)
    }

    /// [`EnvIndex::scan`] against another `/proc` (tests).
    pub fn scan_at(proc_root: &Path, table: &ProcTable, wanted: impl Fn(i32) -> bool) -> Self {
        Self::scan_cached(proc_root, table, wanted, &mut EnvCache::default())
    }

    /// [`EnvIndex::scan`], reading only processes `cache` has not seen: rescans during one
    /// stop read each process's environment once.
    pub fn scan_cached(
        proc_root: &Path,
        table: &ProcTable,
        wanted: impl Fn(i32) -> bool,
        cache: &mut EnvCache,
    ) -> Self {
        let mut index = EnvIndex::default();
        for p in table.iter() {
            // Zombies have no environment; kernel threads have no cmdline and none either.
            if p.state == 'Z' || p.cmdline.is_empty() || !wanted(p.pid) {
                continue;
            }
            let tag = match cache.0.get(&p.key()) {
                Some(tag) => tag.clone(),
                None => {
                    let Some(raw) = read_environ(proc_root, p.pid) else {
                        continue;
                    };
                    index.read += 1;
                    let tag = parse_environ(&raw);
                    cache.0.insert(p.key(), tag.clone());
                    tag
                }
            };
            if let Some(tag) = tag {
                index.insert(p.pid, tag);
            }
        }
        index
    }

    pub fn insert(&mut self, pid: i32, tag: PaneTag) {
        if let Some(pane) = tag.pane {
            self.by_pane
                .entry((tag.server.clone(), pane))
                .or_default()
                .push(pid);
        }
        self.by_session
            .entry((tag.server, tag.session))
            .or_default()
            .push(pid);
    }

    /// Processes whose environment names `session` of `server`, or one of `panes`.
    pub fn naming(&self, server: &TmuxServer, session: u32, panes: &[u32]) -> HashSet<i32> {
        let mut out: HashSet<i32> = HashSet::new();
        let key = (server.clone(), session);
        out.extend(self.by_session.get(&key).into_iter().flatten());
        for &pane in panes {
            let key = (server.clone(), pane);
            out.extend(self.by_pane.get(&key).into_iter().flatten());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(socket: &str, pid: i32) -> TmuxServer {
        TmuxServer {
            socket: socket.into(),
            pid,
        }
    }

    #[test]
    fn tmux_variables_are_read_from_environ() {
        let tag = parse_environ(b"A=1\0TMUX=/tmp/a,b/sock,4242,7\0TMUX_PANE=%12\0Z=2\0").unwrap();
        assert_eq!(
            tag,
            PaneTag {
                server: server("/tmp/a,b/sock", 4242),
                session: 7,
                pane: Some(12)
            }
        );
        let no_pane = parse_environ(b"TMUX=/s,1,0").unwrap();
        assert_eq!(no_pane.pane, None);
        for bad in [
            &b""[..],
            b"PATH=/bin\0",
            b"TMUX=\0",
            b"TMUX=/s,x,0\0",
            b"TMUX=/s,1,y\0",
            b"TMUX=,1,0\0",
            b"XTMUX=/s,1,0\0",
        ] {
            assert_eq!(parse_environ(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn index_answers_by_session_or_pane_of_the_same_server_only() {
        let mut idx = EnvIndex::default();
        let a = server("/s", 10);
        idx.insert(
            100,
            PaneTag {
                server: a.clone(),
                session: 1,
                pane: Some(5),
            },
        );
        idx.insert(
            101,
            PaneTag {
                server: a.clone(),
                session: 2,
                pane: Some(6),
            },
        );
        // Same session number on another server (another socket, or a restarted server).
        idx.insert(
            102,
            PaneTag {
                server: server("/s", 11),
                session: 1,
                pane: Some(5),
            },
        );
        assert_eq!(idx.naming(&a, 1, &[]), HashSet::from([100]));
        assert_eq!(idx.naming(&a, 9, &[6]), HashSet::from([101]));
        assert!(idx.naming(&server("/other", 10), 1, &[5]).is_empty());
    }

    #[test]
    fn own_environment_is_read_from_real_proc() {
        let me = std::process::id() as i32;
        let table = ProcTable::scan().unwrap();
        let idx = EnvIndex::scan(&table, |p| p == me);
        assert_eq!(idx.read, 1);
        let mut cache = EnvCache::default();
        let first = EnvIndex::scan_cached(Path::new("/proc"), &table, |p| p == me, &mut cache);
        let again = EnvIndex::scan_cached(Path::new("/proc"), &table, |p| p == me, &mut cache);
        assert_eq!((first.read, again.read), (1, 0));
        assert_eq!(first.by_session, again.by_session);
    }
}
