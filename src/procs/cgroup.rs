//! cgroup v2: an agent pane run in its own cgroup (a systemd user scope) is stopped with `cgroup.kill`.
//!
//! Detection is conservative: a pane's cgroup is the agent's only when it is not the root,
//! holds no process outside the agent's set (in it or below it), and no other pane, tmux
//! server or the daemon lives in it or below it. Anything else falls back to the scan.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where `/proc` and the cgroup v2 hierarchy are (fake roots in tests).
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub cgroup: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// The v2 cgroup of `pid` (the `0::<path>` line of `/proc/<pid>/cgroup`), as a path
/// relative to the hierarchy root; `None` on cgroup v1-only or an unreadable file.
pub fn cgroup_of(roots: &Roots, pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(roots.proc.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// True when `inner` is `outer` or lies below it.
fn within(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Every pid in the cgroup at `dir` and its descendants; `None` if any part is unreadable.
fn members(dir: &Path) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).ok()?;
        for line in procs.lines() {
            out.push(line.trim().parse().ok()?);
        }
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            if entry.file_type().ok()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Some(out)
}

/// The cgroups that belong to the agent alone: one per pane that runs in its own.
/// `set` is the agent's process set (pids); `others` are pids that must never be in an
/// agent's cgroup (other panes, tmux servers, the daemon and its ancestors).
pub fn agent_cgroups(
    roots: &Roots,
    panes: &[i32],
    set: &HashSet<i32>,
    others: &[i32],
) -> Vec<PathBuf> {
    let other_groups: Vec<String> = others.iter().filter_map(|p| cgroup_of(roots, *p)).collect();
    let mut out: Vec<PathBuf> = Vec::new();
    for pane in panes {
        let Some(rel) = cgroup_of(roots, *pane) else {
            continue;
        };
        let rel = rel.trim_end_matches('/');
        // The root, or a path that climbs: never.
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            continue;
        }
        if other_groups.iter().any(|g| within(g, rel)) {
            continue;
        }
        let dir = roots.cgroup.join(rel.trim_start_matches('/'));
        if !dir.join("cgroup.kill").exists() {
            continue;
        }
        let Some(pids) = members(&dir) else { continue };
        if pids.is_empty() || pids.iter().any(|p| !set.contains(p)) {
            continue;
        }
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

/// Kills every process in the cgroup at `dir` and below (kernel 5.14+): SIGKILL, atomically.
pub fn kill(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.kill"), b"1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Fake {
        _dir: tempfile::TempDir,
        roots: Roots,
    }

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let roots = Roots {
                proc: dir.path().join("proc"),
                cgroup: dir.path().join("cg"),
            };
            Fake { _dir: dir, roots }
        }

        /// Puts `pids` in cgroup `rel`.
        fn group(&self, rel: &str, pids: &[i32]) {
            let d = self.roots.cgroup.join(rel.trim_start_matches('/'));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup.kill"), b"").unwrap();
            let list: String = pids.iter().map(|p| format!("{p}\n")).collect();
            fs::write(d.join("cgroup.procs"), list).unwrap();
            for p in pids {
                let pd = self.roots.proc.join(p.to_string());
                fs::create_dir_all(&pd).unwrap();
                fs::write(pd.join("cgroup"), format!("0::{rel}\n")).unwrap();
            }
        }
    }

    const SCOPE: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/agent-b.scope";

    #[test]
    fn a_scope_holding_only_the_agents_processes_is_found_and_killed() {
        let f = Fake::new();
        f.group(SCOPE, &[20, 21, 22]);
        f.group("/user.slice/tmux.scope", &[10, 30]);
        let set = HashSet::from([20, 21, 22, 23]);
        let got = agent_cgroups(&f.roots, &[20], &set, &[10, 30, 99]);
        assert_eq!(
            got,
            vec![f.roots.cgroup.join(SCOPE.trim_start_matches('/'))]
        );
        kill(&got[0]).unwrap();
        assert_eq!(fs::read(got[0].join("cgroup.kill")).unwrap(), b"1");
    }

    #[test]
    fn shared_foreign_root_and_v1_cgroups_are_not_the_agents() {
        let f = Fake::new();
        let set = HashSet::from([20, 21]);
        // A stranger in the pane's cgroup.
        f.group("/shared.scope", &[20, 21, 50]);
        assert!(agent_cgroups(&f.roots, &[20], &set, &[]).is_empty());
        // A stranger in a child cgroup below it.
        f.group("/a.scope", &[20]);
        f.group("/a.scope/sub", &[51]);
        assert!(agent_cgroups(&f.roots, &[20], &set, &[]).is_empty());
        // Another pane (or the daemon, or tmux) in it.
        f.group("/b.scope", &[20, 21]);
        f.group("/b.scope/x", &[]);
        let other = 30;
        let pd = f.roots.proc.join(other.to_string());
        fs::create_dir_all(&pd).unwrap();
        fs::write(pd.join("cgroup"), "0::/b.scope/x\n").unwrap();
        assert!(agent_cgroups(&f.roots, &[20], &set, &[other]).is_empty());
        assert_eq!(agent_cgroups(&f.roots, &[20], &set, &[]).len(), 1);
        // The root cgroup and v1-only hierarchies.
        f.group("/", &[20]);
        assert!(agent_cgroups(&f.roots, &[20], &set, &[]).is_empty());
        fs::write(f.roots.proc.join("20/cgroup"), "4:memory:/x\n").unwrap();
        assert!(agent_cgroups(&f.roots, &[20], &set, &[]).is_empty());
        // A climbing path from a hostile /proc.
        fs::write(f.roots.proc.join("20/cgroup"), "0::/b.scope/../..\n").unwrap();
        assert!(agent_cgroups(&f.roots, &[20], &set, &[]).is_empty());
        assert!(within("/a/b", "/a") && !within("/ab", "/a"));
    }
}
