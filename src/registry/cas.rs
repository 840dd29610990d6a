//! Compare-and-swap for in-place registry writes: right before writing, the file's bytes are
//! compared with the bytes the edit was based on, and the edit is redone on the new bytes when
//! an unlocked writer (the orchestrator's `open('w')`) changed them meanwhile.

use super::json_file::{RegistryError, UpdateOutcome};
use super::pyjson::to_python_json;
use serde_json::Value;
use std::path::Path;

/// Edits redone on fresh bytes before the round is given up.
pub const CAS_ROUNDS: u32 = 5;

/// The locked registry as the CAS loop sees it (a fake in tests).
pub trait CasFile {
    /// Makes `text` durable where a crash can restore it from (the sidecar), before any
    /// byte of the registry changes.
    fn stage(&mut self, text: &[u8]) -> Result<(), RegistryError>;
    /// The staged text will not be written (the registry is untouched).
    fn unstage(&mut self);
    /// The registry's bytes now.
    fn reread(&mut self) -> Result<Vec<u8>, RegistryError>;
    /// The registry's bytes now, parsed (waiting out a half-written file like the first read).
    fn reread_parsed(&mut self) -> Result<(Vec<u8>, Value), RegistryError>;
    /// Writes `text` in place of the registry's content, which is `current_len` bytes long
    /// (known from the comparison, so nothing but the write follows it).
    fn write(&mut self, text: &[u8], current_len: usize) -> Result<(), RegistryError>;
}

/// The registry text for `value`, in Python's `json.dump(indent=2)` form, with a trailing
/// newline only when the bytes it replaces had one.
pub fn render(value: &Value, replaces: &[u8]) -> Vec<u8> {
    let mut text = to_python_json(value).into_bytes();
    if replaces.ends_with(b"\n") {
        text.push(b'\n');
    }
    text
}

/// Applies `edit` to the document parsed from `bytes` and writes the result through `file`,
/// redoing the edit whenever the registry changed between its read and the write. After
/// `rounds` such changes in a row the round is skipped (`Contended`), registry untouched.
pub fn edit_in_place<T>(
    file: &mut dyn CasFile,
    path: &Path,
    (mut bytes, mut value): (Vec<u8>, Value),
    rounds: u32,
    edit: &mut dyn FnMut(&mut Value) -> T,
) -> Result<(UpdateOutcome, T), RegistryError> {
    for _ in 0..rounds.max(1) {
        let before = value.clone();
        let result = edit(&mut value);
        if value == before {
            return Ok((UpdateOutcome::Unchanged, result));
        }
        let text = render(&value, &bytes);
        // Values can differ only in number spelling (`1E5` vs `100000.0`) and print the same.
        if text == bytes {
            return Ok((UpdateOutcome::Unchanged, result));
        }
        file.stage(&text)?;
        let now = match file.reread() {
            Ok(now) => now,
            Err(e) => {
                file.unstage();
                return Err(e);
            }
        };
        // Nothing but the comparison stands between this read and the write.
        if now == bytes {
            file.write(&text, now.len())?;
            return Ok((UpdateOutcome::Written, result));
        }
        file.unstage();
        (bytes, value) = file.reread_parsed()?;
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
        fn stage(&mut self, text: &[u8]) -> Result<(), RegistryError> {
            self.staged = Some(text.to_vec());
            self.log.push("stage".into());
            Ok(())
        }
        fn unstage(&mut self) {
            self.staged = None;
            self.log.push("unstage".into());
        }
        fn reread(&mut self) -> Result<Vec<u8>, RegistryError> {
            if let Some(raced) = self.races.pop() {
                self.content = raced;
            }
            self.log.push("compare".into());
            Ok(self.content.clone())
        }
        fn reread_parsed(&mut self) -> Result<(Vec<u8>, Value), RegistryError> {
            self.log.push("reread".into());
            let v = serde_json::from_slice(&self.content).unwrap();
            Ok((self.content.clone(), v))
        }
        fn write(&mut self, text: &[u8], current_len: usize) -> Result<(), RegistryError> {
            assert_eq!(current_len, self.content.len());
            assert_eq!(
                self.staged.as_deref(),
                Some(text),
                "written what was staged"
            );
            self.content = text.to_vec();
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
        let value = serde_json::from_slice(&bytes).unwrap();
        edit_in_place(
            fake,
            Path::new("/w/AGENT_REGISTRY.json"),
            (bytes, value),
            rounds,
            &mut mark_terminated,
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
