//! The versions of each registry the daemon has itself read or written, kept as bounded tails
//! (in memory, and the written ones in `<registry>.reaper-seen` so a restart keeps them): the
//! evidence a torn-tail repair needs.

use super::torn::VersionTail;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Bytes kept from the end of each version: a torn tail longer than this is not provable
/// (it would take a writer racing us with a document shorter by more than this).
pub const TAIL_KEEP: usize = 1 << 20;
/// Versions kept per registry, newest first.
pub const VERSIONS_PER_REGISTRY: usize = 4;
/// Versions written to `<registry>.reaper-seen`.
const VERSIONS_PERSISTED: usize = 3;
/// Memory for all registries together; the least recently noted registries go first, so a
/// workspace of 20,000 tasks costs this much at most, not 20,000 registries' worth.
pub const MEMORY_BUDGET: usize = 16 << 20;

const MAGIC: &[u8] = b"agent-reaper seen versions v1\n";

#[derive(Default)]
struct Inner {
    by_path: HashMap<PathBuf, (u64, VecDeque<VersionTail>)>,
    /// Registries by when they were last noted, oldest first: eviction is O(log n).
    order: BTreeMap<u64, PathBuf>,
    bytes: usize,
    clock: u64,
}

/// Per registry path, the last few versions seen, newest first.
#[derive(Default)]
pub struct SeenVersions {
    inner: Mutex<Inner>,
    budget: usize,
}

/// The daemon's one store (reads in `observe` and writes in `act` see the same versions).
pub fn global() -> &'static SeenVersions {
    static STORE: OnceLock<SeenVersions> = OnceLock::new();
    STORE.get_or_init(|| SeenVersions::with_budget(MEMORY_BUDGET))
}

/// `<registry>.reaper-seen`: the tails of the versions the daemon wrote there last.
pub fn seen_path(registry: &Path) -> PathBuf {
    let mut name = registry.as_os_str().to_owned();
    name.push(".reaper-seen");
    PathBuf::from(name)
}

impl SeenVersions {
    pub fn with_budget(budget: usize) -> Self {
        SeenVersions {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    /// Remembers `bytes` as a version of `path` (a repeat moves to the front).
    pub fn note(&self, path: &Path, bytes: &[u8]) {
        self.note_version(path, VersionTail::of(bytes, TAIL_KEEP));
    }

    /// [`SeenVersions::note`] of a version known by its tail (a text streamed, not held).
    pub fn note_version(&self, path: &Path, tail: VersionTail) {
        let mut guard = self.inner.lock().expect("seen versions lock");
        let inner = &mut *guard;
        inner.clock += 1;
        let clock = inner.clock;
        let entry = inner
            .by_path
            .entry(path.to_path_buf())
            .or_insert_with(|| (0, VecDeque::new()));
        inner.order.remove(&entry.0);
        inner.order.insert(clock, path.to_path_buf());
        entry.0 = clock;
        let mut freed = 0;
        let mut added = tail.suffix.len();
        if let Some(i) = entry.1.iter().position(|v| *v == tail) {
            entry.1.remove(i);
            added = 0;
        }
        entry.1.push_front(tail);
        while entry.1.len() > VERSIONS_PER_REGISTRY {
            freed += entry.1.pop_back().map_or(0, |v| v.suffix.len());
        }
        inner.bytes = inner.bytes + added - freed;
        // The least recently noted registries go until within budget; never this one.
        while inner.bytes > self.budget {
            let Some((&when, oldest)) = inner.order.first_key_value() else {
                break;
            };
            if oldest == path {
                break;
            }
            let oldest = inner.order.remove(&when).expect("present");
            if let Some((_, versions)) = inner.by_path.remove(&oldest) {
                inner.bytes -= versions.iter().map(|v| v.suffix.len()).sum::<usize>();
            }
        }
    }

    /// Drops the versions of `path` kept in memory (not those in `<registry>.reaper-seen`).
    pub fn forget(&self, path: &Path) {
        let mut guard = self.inner.lock().expect("seen versions lock");
        let inner = &mut *guard;
        if let Some((when, versions)) = inner.by_path.remove(path) {
            inner.order.remove(&when);
            inner.bytes -= versions.iter().map(|v| v.suffix.len()).sum::<usize>();
        }
    }

    /// The versions of `path` in memory, newest first.
    pub fn versions(&self, path: &Path) -> Vec<VersionTail> {
        let inner = self.inner.lock().expect("seen versions lock");
        inner
            .by_path
            .get(path)
            .map(|(_, v)| v.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The versions in memory, then those in `<registry>.reaper-seen` (a restart empties
    /// memory, not that file).
    pub fn versions_with_persisted(&self, path: &Path) -> Vec<VersionTail> {
        let mut all = self.versions(path);
        for v in load(&seen_path(path)) {
            if !all.contains(&v) {
                all.push(v);
            }
        }
        all
    }

    /// Writes the newest versions of `path` to `<registry>.reaper-seen` (fresh temp name,
    /// `O_EXCL|O_NOFOLLOW`, then rename). Best effort: losing it only loses the proof for a
    /// repair after a restart, so no fsync and a warning on failure.
    pub fn persist(&self, path: &Path) {
        // Made from the versions in place, not from a copy of them: a registry's tails
        // are up to 1 MB each, and a copy beside the text stood at a large edit's peak.
        let mut text = MAGIC.to_vec();
        {
            let inner = self.inner.lock().expect("seen versions lock");
            let versions = inner.by_path.get(path).map(|(_, v)| v.iter());
            for v in versions.into_iter().flatten().take(VERSIONS_PERSISTED) {
                text.extend_from_slice(format!("{} {}\n", v.len, v.suffix.len()).as_bytes());
                text.extend_from_slice(&v.suffix);
                text.push(b'\n');
            }
        }
        if let Err(e) = replace_file(&seen_path(path), &text) {
            tracing::warn!(path = %seen_path(path).display(), error = %e,
                "could not save the registry versions used to prove torn tails");
        }
    }
}

/// How far above a registry its trusted workspace base lies (as in `json_file`).
const LEVELS_BELOW_BASE: usize = 2;

/// `dest` replaced by `bytes` through `crate::fs`: a fresh `O_CREAT|O_EXCL|O_NOFOLLOW` name
/// beneath the base, then a rename over `dest` (a symlink planted there is replaced, never
/// written through). No fsync: this is evidence, not data.
fn replace_file(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (dir, name) = crate::fs::open_parent_below(dest, LEVELS_BELOW_BASE)?;
    crate::fs::replace_file(&dir, &name, bytes, 0o600, false).map_err(Into::into)
}

/// Reads `<registry>.reaper-seen`; anything odd (missing, not a regular file, another
/// format, cut short, too large) gives what could be read, never an error: it is only evidence.
fn load(seen: &Path) -> Vec<VersionTail> {
    let limit = (VERSIONS_PERSISTED * (TAIL_KEEP + 64) + MAGIC.len()) as u64;
    let bytes = crate::fs::open_parent_below(seen, LEVELS_BELOW_BASE)
        .and_then(|(dir, name)| dir.open_file(&name, crate::fs::Purpose::Read))
        .and_then(|file| crate::fs::read_capped(&file, limit));
    match bytes {
        Ok(bytes) => parse(&bytes),
        Err(_) => Vec::new(),
    }
}

fn parse(bytes: &[u8]) -> Vec<VersionTail> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let header = std::str::from_utf8(&rest[..nl]).unwrap_or("");
        let mut parts = header.split(' ').map(str::parse::<u64>);
        let (Some(Ok(len)), Some(Ok(kept)), None) = (parts.next(), parts.next(), parts.next())
        else {
            break;
        };
        let body = &rest[nl + 1..];
        let kept = kept as usize;
        if kept as u64 > len || body.len() < kept + 1 || body[kept] != b'\n' {
            break;
        }
        out.push(VersionTail {
            len,
            suffix: body[..kept].to_vec(),
        });
        rest = &body[kept + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_repeats_move_up_and_old_ones_drop() {
        let store = SeenVersions::with_budget(1 << 20);
        let p = Path::new("/w/T/AGENT_REGISTRY.json");
        for i in 0..6 {
            store.note(p, format!("{{\"v\": {i}}}").as_bytes());
        }
        store.note(p, b"{\"v\": 3}");
        let lens: Vec<_> = store
            .versions(p)
            .iter()
            .map(|v| String::from_utf8(v.suffix.clone()).unwrap())
            .collect();
        assert_eq!(
            lens,
            ["{\"v\": 3}", "{\"v\": 5}", "{\"v\": 4}", "{\"v\": 2}"]
        );
    }

    #[test]
    fn the_budget_drops_the_least_recently_noted_registry() {
        let store = SeenVersions::with_budget(100);
        store.note(Path::new("/a"), &[b'a'; 60]);
        store.note(Path::new("/b"), &[b'b'; 60]);
        assert!(store.versions(Path::new("/a")).is_empty());
        assert_eq!(store.versions(Path::new("/b")).len(), 1);
    }

    #[test]
    fn a_forgotten_registry_frees_its_share_of_the_budget() {
        let store = SeenVersions::with_budget(100);
        store.note(Path::new("/a"), &[b'a'; 60]);
        store.forget(Path::new("/a"));
        assert!(store.versions(Path::new("/a")).is_empty());
        // What /a held no longer counts: /b and /c fit together.
        store.note(Path::new("/b"), &[b'b'; 60]);
        store.note(Path::new("/c"), &[b'c'; 40]);
        assert_eq!(store.versions(Path::new("/b")).len(), 1);
        assert_eq!(store.versions(Path::new("/c")).len(), 1);
        store.forget(Path::new("/never-noted"));
    }

    #[test]
    fn persisted_versions_survive_a_new_store_and_bad_files_give_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("AGENT_REGISTRY.json");
        let store = SeenVersions::with_budget(1 << 20);
        store.note(&reg, b"{\"a\": 1}\n");
        store.note(&reg, b"{\"a\": 22}");
        store.persist(&reg);
        let fresh = SeenVersions::with_budget(1 << 20);
        let loaded = fresh.versions_with_persisted(&reg);
        assert_eq!(loaded, store.versions(&reg));

        for junk in [
            &b"other format\n1 1\nx\n"[..],
            b"agent-reaper seen versions v1\n5 9\nab",
        ] {
            std::fs::write(seen_path(&reg), junk).unwrap();
            assert!(fresh.versions_with_persisted(&reg).is_empty());
        }
        std::fs::remove_file(seen_path(&reg)).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), seen_path(&reg)).unwrap();
        assert!(fresh.versions_with_persisted(&reg).is_empty());
        // A planted symlink is replaced by rename, never written through.
        store.persist(&reg);
        assert!(!dir.path().join("elsewhere").exists());
    }
}
