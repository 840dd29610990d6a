//! Who tore a registry: the versions the orchestrator's own writers wrote (recorded by the test's
//! Python processes), against the bytes left in the file and the evidence agent-reaper keeps.
//!
//! The 2025 orchestrator tears its task registry by itself: `update_agent_progress` truncates
//! it (`open('w')`), `atomic_add_agent` (`LockedRegistryFile`, which had read it before) writes
//! its longer version in place, then `update_agent_progress` writes its shorter one from offset
//! 0 over it. What is left is one complete document and the tail of the adder's version, a
//! version agent-reaper never saw, so it cannot prove the tear (DESIGN.md §3 "Registry
//! writes") and rightly leaves it. The same happens with no agent-reaper running. The test
//! tells such tears apart from ones agent-reaper should have repaired.

use agent_reaper::registry::seen::SeenVersions;
use agent_reaper::registry::torn::{Shape, find_torn_tail, shape};
use std::fs;
use std::path::Path;

/// Python run first by the driver and the adder (`trace_writes("driver")`): every registry
/// version `json.dump`/`json.dumps(indent=2)` produces is appended to `versions-<role>.bin`
/// in the sandbox (the cwd). The file is written by the orchestrator's code exactly as before
/// (same chunks, same order): the wrapper only keeps a copy of what went through it.
pub const TRACE: &str = r#"
def trace_writes(role):
    out = open(f"versions-{role}.bin", "ab")
    def note(text):
        b = text.encode()
        out.write(f"{len(b)}\n".encode() + b + b"\n")
        out.flush()
    dump, dumps = json.dump, json.dumps
    class Copy:
        def __init__(self, f):
            self.f, self.parts = f, []
        def write(self, s):
            self.parts.append(s)
            return self.f.write(s)
    def traced_dump(obj, f, **kw):
        copy = Copy(f)
        try:
            return dump(obj, copy, **kw)
        finally:
            note("".join(copy.parts))
    def traced_dumps(obj, **kw):
        s = dumps(obj, **kw)
        if kw.get("indent") == 2:
            note(s)
        return s
    json.dump, json.dumps = traced_dump, traced_dumps
"#;

/// What a registry's bytes are at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    Parses,
    /// One document, then the tail of a version the orchestrator's `tail_by` writer wrote, and
    /// agent-reaper's own evidence (`<registry>.reaper-seen`) cannot prove it: the
    /// orchestrator tore its own registry.
    SelfTorn {
        doc_by: String,
        tail_by: String,
        extra: usize,
    },
    /// A version the `doc_by` writer wrote, cut short at the length of a version the `cut_by`
    /// writer wrote: `LockedRegistryFile`'s `truncate()` (at the end of its own write) landing
    /// after `update_agent_progress`'s `open('w')` and longer dump. agent-reaper cuts a
    /// registry only at the end of a version it saw or wrote, and none of those has this length.
    SelfCut {
        doc_by: String,
        cut_by: String,
        short: usize,
    },
    /// Anything else that does not parse: agent-reaper's to repair or to answer for.
    Unparsable(String),
}

impl Final {
    /// The orchestrator's writers broke the file by themselves (nobody can repair it).
    pub fn by_orchestrator(&self) -> bool {
        matches!(self, Final::SelfTorn { .. } | Final::SelfCut { .. })
    }
}

/// Every version the test's Python writers recorded in `sandbox`: (role, bytes).
fn recorded(sandbox: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(sandbox) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(role) = name
            .strip_prefix("versions-")
            .and_then(|r| r.strip_suffix(".bin"))
        else {
            continue;
        };
        let bytes = fs::read(entry.path()).unwrap_or_default();
        let mut rest = &bytes[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let Some(len) = std::str::from_utf8(&rest[..nl])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                break;
            };
            let body = &rest[nl + 1..];
            if body.len() < len + 1 {
                break;
            }
            out.push((role.to_owned(), body[..len].to_vec()));
            rest = &body[len + 1..];
        }
    }
    out
}

/// Classifies `registry` at the end of a run in `sandbox`.
pub fn final_state(registry: &Path, sandbox: &Path) -> Final {
    let bytes = fs::read(registry).unwrap_or_default();
    let (end, extra_at) = match shape(&bytes) {
        Shape::Whole => return Final::Parses,
        Shape::Broken => {
            return cut_short(&bytes, registry, sandbox)
                .unwrap_or_else(|| Final::Unparsable("no complete first document".into()));
        }
        Shape::Extra { end, extra_at, .. } => (end, extra_at),
    };
    let reaper = SeenVersions::with_budget(64 << 20).versions_with_persisted(registry);
    if find_torn_tail(&bytes, &reaper).is_some() {
        return Final::Unparsable(format!(
            "provably torn by agent-reaper's evidence ({} bytes after the document), not repaired",
            bytes.len() - extra_at
        ));
    }
    let versions = recorded(sandbox);
    let tail_by = versions.iter().find(|(_, v)| {
        [end, extra_at]
            .iter()
            .any(|&from| v.len() >= bytes.len() && v[from..bytes.len()] == bytes[from..])
    });
    let Some((tail_by, _)) = tail_by else {
        return Final::Unparsable(format!(
            "{} bytes after the document that no writer the test knows wrote there",
            bytes.len() - extra_at
        ));
    };
    let doc = bytes[..end].to_vec();
    let doc_by = versions
        .iter()
        .find(|(_, v)| v.trim_ascii_end() == &doc[..])
        .map_or_else(|| "unknown".to_owned(), |(role, _)| role.clone());
    Final::SelfTorn {
        doc_by,
        tail_by: tail_by.clone(),
        extra: bytes.len() - end,
    }
}

/// `bytes` as a recorded version cut at the length of another writer's version (see
/// [`Final::SelfCut`]), when no version agent-reaper saw or wrote has that length.
fn cut_short(bytes: &[u8], registry: &Path, sandbox: &Path) -> Option<Final> {
    if bytes.is_empty() {
        return None;
    }
    let versions = recorded(sandbox);
    // Any pair: versions of both writers may share the prefix.
    let (doc_by, doc, cut_by) = versions
        .iter()
        .filter(|(_, v)| v.len() > bytes.len() && v.starts_with(bytes))
        .find_map(|(doc_by, doc)| {
            versions
                .iter()
                .find(|(role, v)| role != doc_by && v.len() == bytes.len())
                .map(|(cut_by, _)| (doc_by, doc, cut_by))
        })?;
    let reaper = SeenVersions::with_budget(64 << 20).versions_with_persisted(registry);
    if reaper.iter().any(|t| t.len == bytes.len() as u64) {
        return None;
    }
    Some(Final::SelfCut {
        doc_by: doc_by.clone(),
        cut_by: cut_by.clone(),
        short: doc.len() - bytes.len(),
    })
}

/// Agents `atomic_add_agent` added (listed in `added`) that the task registry no longer
/// lists, and that no version `update_agent_progress` wrote ever held: its unlocked
/// read-modify-write, based on a read from before the add, dropped them. The global
/// registry still counts them active and no task registry lists them, so nobody (the
/// orchestrator, agent-reaper) can ever finish them. An agent the driver did write is not
/// in this list: someone else dropped it.
pub fn lost_adds(registry: &Path, added: &Path, sandbox: &Path) -> Vec<String> {
    let listed: Vec<String> = fs::read(registry)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["agents"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<String> = fs::read_to_string(added)
        .unwrap_or_default()
        .lines()
        .filter(|id| !id.is_empty() && !listed.iter().any(|l| l == id))
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        return missing;
    }
    let driver: Vec<Vec<u8>> = recorded(sandbox)
        .into_iter()
        .filter(|(role, _)| role == "driver")
        .map(|(_, v)| v)
        .collect();
    missing
        .into_iter()
        .filter(|id| {
            let quoted = format!("\"id\": \"{id}\"").into_bytes();
            !driver
                .iter()
                .any(|v| v.windows(quoted.len()).any(|w| w == &quoted[..]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `versions-<role>.bin` as `trace_writes` does.
    fn record(sandbox: &Path, role: &str, versions: &[&str]) {
        let mut out = Vec::new();
        for v in versions {
            out.extend(format!("{}\n{v}\n", v.len()).into_bytes());
        }
        fs::write(sandbox.join(format!("versions-{role}.bin")), out).unwrap();
    }

    #[test]
    fn a_dump_cut_at_the_length_of_the_adders_version_is_the_orchestrators_own_cut() {
        let sandbox = tempfile::tempdir().unwrap();
        let adder = "{\"agents\": [1, 2], \"n\": 9}";
        let driver = "{\"agents\": [1, 2], \"n\": 10}";
        record(sandbox.path(), "adder", &[adder]);
        record(sandbox.path(), "driver", &[driver]);
        let registry = sandbox.path().join("AGENT_REGISTRY.json");
        fs::write(&registry, &driver[..adder.len()]).unwrap();
        assert_eq!(
            final_state(&registry, sandbox.path()),
            Final::SelfCut {
                doc_by: "driver".into(),
                cut_by: "adder".into(),
                short: 1
            }
        );
        // Cut at a length no other writer wrote: not the orchestrator's truncate().
        fs::write(&registry, &driver[..adder.len() - 3]).unwrap();
        assert!(matches!(
            final_state(&registry, sandbox.path()),
            Final::Unparsable(_)
        ));
    }
}
