//! Compare-and-swap for in-place registry writes: right before writing, the file's bytes are
//! compared with the bytes the edit was based on, and the edit is redone on the new bytes when
//! an unlocked writer (the orchestrator's `open('w')`) changed them meanwhile.

use super::error::RegistryError;
use super::pyjson::to_python_json;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Whether an edit wrote the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The edit left the value equal to what was read: nothing written.
    Unchanged,
    Written,
}

/// Edits redone on fresh bytes before the round is given up.
pub const CAS_ROUNDS: u32 = 5;

/// Writes a document's new text into a sink.
pub type Render<'r> = dyn FnMut(&mut dyn Write) -> std::io::Result<()> + 'r;

/// The locked registry as the CAS loop sees it (a fake in tests). The new text is streamed,
/// never held whole: into the sidecar, and from there into the registry.
pub trait CasFile {
    /// Streams the text `render` writes to where a crash can restore it from (the sidecar),
    /// before any byte of the registry changes. `None` when that text is `base` byte for
    /// byte (nothing staged); otherwise its length.
    fn stage(&mut self, base: &[u8], render: &mut Render<'_>)
    -> Result<Option<u64>, RegistryError>;
    /// The staged text will not be written (the registry is untouched).
    fn unstage(&mut self);
    /// Whether the registry's bytes are `base` still (compared a chunk at a time).
    fn unchanged_since(&mut self, base: &[u8]) -> Result<bool, RegistryError>;
    /// The registry's bytes now, checked to parse (waiting out a half-written file like the
    /// first read).
    fn reread_parsed(&mut self) -> Result<Vec<u8>, RegistryError>;
    /// Writes the staged text (`len` bytes) in place of the registry's content, which is
    /// `current_len` bytes long (known from the comparison, so nothing but the write follows).
    fn write(&mut self, len: u64, current_len: usize) -> Result<(), RegistryError>;
}

/// One edit of a registry document as the CAS loop drives it: on the bytes read under the
/// lock, then again on newer bytes each time an unlocked writer changed them meanwhile.
pub trait Rewrite {
    type Out;
    /// What the edit makes of `bytes` (a checked JSON object): its result, and whether the
    /// document changes at all.
    fn prepare(&mut self, bytes: &[u8]) -> Result<(Self::Out, bool), String>;
    /// Writes the edited document of the last `prepare`, as `json.dump(indent=2)` does (no
    /// trailing newline).
    fn render(&mut self, bytes: &[u8], out: &mut dyn Write) -> std::io::Result<()>;
}

/// An edit of the whole document as one `Value` (small registries, tests).
pub struct WholeValue<F> {
    edit: F,
    edited: Option<Value>,
}

impl<F> WholeValue<F> {
    pub fn new(edit: F) -> Self {
        WholeValue { edit, edited: None }
    }
}

impl<T, F: FnMut(&mut Value) -> T> Rewrite for WholeValue<F> {
    type Out = T;
    fn prepare(&mut self, bytes: &[u8]) -> Result<(T, bool), String> {
        self.edited = None;
        let mut value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let before = value.clone();
        let result = (self.edit)(&mut value);
        let changed = value != before;
        drop(before);
        self.edited = Some(value);
        Ok((result, changed))
    }
    fn render(&mut self, _: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
        let value = self.edited.as_ref().expect("render follows prepare");
        out.write_all(to_python_json(value).as_bytes())
    }
}

/// Applies `rewrite` to the document in `bytes` and writes the result through `file`,
/// redoing the edit whenever the registry changed between its read and the write. After
/// `rounds` such changes in a row the round is skipped (`Contended`), registry untouched.
pub fn edit_in_place<R: Rewrite>(
    file: &mut dyn CasFile,
    path: &Path,
    mut bytes: Vec<u8>,
    rounds: u32,
    rewrite: &mut R,
) -> Result<(UpdateOutcome, R::Out), RegistryError> {
    for _ in 0..rounds.max(1) {
        let (result, changed) =
            rewrite
                .prepare(&bytes)
                .map_err(|reason| RegistryError::Unparsable {
                    path: path.to_owned(),
                    attempts: 1,
                    reason,
                })?;
        if !changed {
            return Ok((UpdateOutcome::Unchanged, result));
        }
        let newline = bytes.ends_with(b"\n");
        let base = &bytes;
        let staged = file.stage(base, &mut |out| {
            rewrite.render(base, out)?;
            if newline {
                out.write_all(b"\n")?;
            }
            Ok(())
        })?;
        // Values can differ only in number spelling (`1E5` vs `100000.0`) and print the same.
        let Some(len) = staged else {
            return Ok((UpdateOutcome::Unchanged, result));
        };
        let unchanged = match file.unchanged_since(&bytes) {
            Ok(unchanged) => unchanged,
            Err(e) => {
                file.unstage();
                return Err(e);
            }
        };
        // Nothing but the comparison stands between that read and the write.
        if unchanged {
            file.write(len, bytes.len())?;
            return Ok((UpdateOutcome::Written, result));
        }
        file.unstage();
        drop(std::mem::take(&mut bytes));
        bytes = file.reread_parsed()?;
    }
    Err(RegistryError::Contended {
        path: path.to_owned(),
        rounds: rounds.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A registry whose bytes an "unlocked writer" replaces on the first `races` rereads.
    struct Fake {
        content: Vec<u8>,
        /// Each reread takes the next of these as the file's new content first.
        races: Vec<Vec<u8>>,
        staged: Option<Vec<u8>>,
        log: Vec<String>,
    }

    impl Fake {
        fn new(content: &Value, races: Vec<Value>) -> Fake {
            Fake {
                content: to_python_json(content).into_bytes(),
                races: races
                    .iter()
                    .rev()
                    .map(|v| to_python_json(v).into_bytes())
                    .collect(),
                staged: None,
                log: Vec::new(),
            }
        }
    }

    impl CasFile for Fake {
        fn stage(
            &mut self,
            base: &[u8],
            render: &mut Render<'_>,
        ) -> Result<Option<u64>, RegistryError> {
            let mut text = Vec::new();
            render(&mut text).unwrap();
            if text == base {
                return Ok(None);
            }
            let len = text.len() as u64;
            self.staged = Some(text);
            self.log.push("stage".into());
            Ok(Some(len))
        }
        fn unstage(&mut self) {
            self.staged = None;
            self.log.push("unstage".into());
        }
        fn unchanged_since(&mut self, base: &[u8]) -> Result<bool, RegistryError> {
            if let Some(raced) = self.races.pop() {
                self.content = raced;
            }
            self.log.push("compare".into());
            Ok(self.content == base)
        }
        fn reread_parsed(&mut self) -> Result<Vec<u8>, RegistryError> {
            self.log.push("reread".into());
            Ok(self.content.clone())
        }
        fn write(&mut self, len: u64, current_len: usize) -> Result<(), RegistryError> {
            assert_eq!(current_len, self.content.len());
            let staged = self.staged.take().expect("written what was staged");
            assert_eq!(staged.len() as u64, len);
            self.content = staged;
            self.log.push("write".into());
            Ok(())
        }
    }

    fn doc(progress: u64, status: &str) -> Value {
        json!({"agents": [{"id": "a", "status": status, "progress": progress}], "active_count": 1})
    }

    fn mark_terminated(v: &mut Value) -> u64 {
        v["agents"][0]["status"] = "terminated".into();
        v["agents"][0]["progress"].as_u64().unwrap()
    }

    fn run(fake: &mut Fake, rounds: u32) -> Result<(UpdateOutcome, u64), RegistryError> {
        let bytes = fake.content.clone();
        edit_in_place(
            fake,
            Path::new("/w/AGENT_REGISTRY.json"),
            bytes,
            rounds,
            &mut WholeValue::new(mark_terminated),
        )
    }

    #[test]
    fn an_undisturbed_edit_is_written_once() {
        let mut fake = Fake::new(&doc(10, "working"), vec![]);
        assert_eq!(run(&mut fake, 5).unwrap(), (UpdateOutcome::Written, 10));
        assert_eq!(fake.log, ["stage", "compare", "write"]);
    }

    #[test]
    fn a_change_before_the_write_redoes_the_edit_on_the_new_bytes() {
        // The orchestrator wrote progress 55 between our read and our write.
        let mut fake = Fake::new(&doc(10, "working"), vec![doc(55, "working")]);
        assert_eq!(run(&mut fake, 5).unwrap(), (UpdateOutcome::Written, 55));
        let now: Value = serde_json::from_slice(&fake.content).unwrap();
        assert_eq!(now["agents"][0]["progress"], 55, "its value kept, not ours");
        assert_eq!(now["agents"][0]["status"], "terminated", "our edit redone");
        assert_eq!(
            fake.log,
            [
                "stage", "compare", "unstage", "reread", "stage", "compare", "write"
            ]
        );
    }

    #[test]
    fn a_change_that_already_holds_the_edit_writes_nothing() {
        let mut fake = Fake::new(&doc(10, "working"), vec![doc(10, "terminated")]);
        assert_eq!(run(&mut fake, 5).unwrap(), (UpdateOutcome::Unchanged, 10));
        assert_eq!(fake.log, ["stage", "compare", "unstage", "reread"]);
    }

    #[test]
    fn endless_changes_skip_the_round_and_leave_the_registry_alone() {
        let races: Vec<Value> = (1..=3).map(|p| doc(p, "working")).collect();
        let mut fake = Fake::new(&doc(0, "working"), races);
        let err = run(&mut fake, 3).unwrap_err();
        assert!(
            matches!(err, RegistryError::Contended { rounds: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("AGENT_REGISTRY.json"), "{err}");
        let now: Value = serde_json::from_slice(&fake.content).unwrap();
        assert_eq!(now, doc(3, "working"));
        assert!(fake.staged.is_none());
        assert!(!fake.log.contains(&"write".to_string()));
    }
}
