//! A task registry read for deciding only: per agent the few fields the pass looks at, the
//! rest skipped unparsed (no `Value` tree of the whole file is built or kept).

pub use crate::observe::entries::{LeanAgent, LeanRegistry, Status, from_value};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// A visitor's methods for the scalars (bool, number, null) it reads as `$none`.
macro_rules! scalars_read_as {
    ($ty:ty, $none:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$ty, E> {
            Ok($none)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$ty, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$ty, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$ty, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
            Ok($none)
        }
    };
}

/// Parses registry bytes; `Err` when they are not a JSON object (the caller then reads the
/// file the full, tolerant way, which names the problem).
pub fn parse(bytes: &[u8]) -> serde_json::Result<LeanRegistry> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let registry = RegistrySeed {
        agents_hint: agents_hint(bytes),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(registry)
}

/// [`parse`] as the bytes are read from `reader`: for a text too large to hold beside what
/// is parsed from it. Only a window of the text is held (see `windowed`); the entries'
/// vector grows as they come.
pub fn parse_reader(reader: impl std::io::Read) -> serde_json::Result<LeanRegistry> {
    windowed::parse(reader)
}

mod windowed;

/// About how many `agents` entries `bytes` holds: its `"id"` strings, at most one per 9
/// bytes (`{"id":1},`, the shortest entry with an id). The entries' vector is sized from
/// it instead of growing by doubling: 319,000 tiny entries doubled to 524,288 slots, and
/// the last doubling held 29 MB and 59 MB at once (the pass's peak over two 30 MB
/// registries); sized, it holds 36 MB. Only a hint: a wrong count costs a regrowth or
/// untouched (unresident) capacity, never an entry.
fn agents_hint(bytes: &[u8]) -> usize {
    memchr::memmem::find_iter(bytes, b"\"id\"")
        .count()
        .min(bytes.len() / 9)
}

/// An object key, matched without allocating (`Other` for every key the pass skips).
enum Key {
    ActiveCount,
    Agents,
    Id,
    Status,
    LastUpdate,
    CompletedAt,
    TerminatedAt,
    AutoCleanupResult,
    TrackedFiles,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "active_count" => Key::ActiveCount,
                    "agents" => Key::Agents,
                    "id" => Key::Id,
                    "status" => Key::Status,
                    "last_update" => Key::LastUpdate,
                    "completed_at" => Key::CompletedAt,
                    "terminated_at" => Key::TerminatedAt,
                    "auto_cleanup_result" => Key::AutoCleanupResult,
                    "tracked_files" => Key::TrackedFiles,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Any JSON value, kept only when it is a string.
struct MaybeStr(Option<Box<str>>);

impl<'de> Deserialize<'de> for MaybeStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MaybeStr, E> {
                Ok(MaybeStr(Some(s.into())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<MaybeStr, E> {
                Ok(MaybeStr(Some(s.into_boxed_str())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeStr, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeStr, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            scalars_read_as!(MaybeStr, MaybeStr(None));
        }
        d.deserialize_any(V)
    }
}

/// `auto_cleanup_result.success` when it is a bool, as `record.get("success")` on the
/// whole value reads it (the last `success` member wins), without building the record: a
/// record lists what was checked and archived, most of a cleaned registry's text.
struct CleanupSuccess(Option<bool>);

impl<'de> Deserialize<'de> for CleanupSuccess {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CleanupSuccess;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CleanupSuccess, A::Error> {
                let mut success = None;
                while let Some(key) = map.next_key::<MaybeStr>()? {
                    if key.0.as_deref() == Some("success") {
                        success = map.next_value::<Value>()?.as_bool();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(CleanupSuccess(success))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CleanupSuccess, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(CleanupSuccess(None))
            }
            scalars_read_as!(CleanupSuccess, CleanupSuccess(None));
            fn visit_str<E: de::Error>(self, _: &str) -> Result<CleanupSuccess, E> {
                Ok(CleanupSuccess(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The registry object, its `agents` vector sized for `agents_hint` entries.
struct RegistrySeed {
    agents_hint: usize,
}

impl<'de> DeserializeSeed<'de> for RegistrySeed {
    type Value = LeanRegistry;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<LeanRegistry, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = LeanRegistry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a registry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeanRegistry, A::Error> {
                let mut out = LeanRegistry::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::ActiveCount => out.active_count = map.next_value::<Value>()?.as_i64(),
                        Key::Agents => out.agents = map.next_value_seed(AgentsSeed(self.0))?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(self.agents_hint))
    }
}

/// `agents`: the entries when it is an array, `None` otherwise.
struct MaybeAgents(Option<Vec<LeanAgent>>);

/// [`MaybeAgents`], its vector sized for the hint (see [`agents_hint`]).
struct AgentsSeed(usize);

impl<'de> DeserializeSeed<'de> for AgentsSeed {
    type Value = MaybeAgents;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<MaybeAgents, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = MaybeAgents;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeAgents, A::Error> {
                let mut agents = Vec::with_capacity(seq.size_hint().unwrap_or(self.0));
                while let Some(agent) = seq.next_element::<LeanAgent>()? {
                    agents.push(agent);
                }
                Ok(MaybeAgents(Some(agents)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeAgents, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeAgents(None))
            }
            scalars_read_as!(MaybeAgents, MaybeAgents(None));
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
        }
        d.deserialize_any(V(self.0))
    }
}

impl<'de> Deserialize<'de> for LeanAgent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LeanAgent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeanAgent, A::Error> {
                let mut a = LeanAgent::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Id => a.id = map.next_value::<MaybeStr>()?.0,
                        Key::Status => a.status = map.next_value::<MaybeStr>()?.0.map(Status::new),
                        Key::LastUpdate => a.last_update = map.next_value::<MaybeStr>()?.0,
                        Key::CompletedAt => a.completed_at = map.next_value::<MaybeStr>()?.0,
                        Key::TerminatedAt => a.terminated_at = map.next_value::<MaybeStr>()?.0,
                        Key::AutoCleanupResult => {
                            a.cleanup_success = map.next_value::<CleanupSuccess>()?.0;
                        }
                        Key::TrackedFiles => {
                            let t = map.next_value::<Value>()?;
                            a.tracked_files = t.is_object().then(|| Box::new(t));
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(a)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LeanAgent, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LeanAgent::default())
            }
            scalars_read_as!(LeanAgent, LeanAgent::default());
            fn visit_str<E: de::Error>(self, _: &str) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `step` bytes per read: every boundary a window can meet.
    struct Trickle<'a> {
        text: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.text.len());
            buf[..n].copy_from_slice(&self.text[..n]);
            self.text = &self.text[n..];
            Ok(n)
        }
    }

    /// What `parse_reader` makes of `text` read `step` bytes at a time.
    fn streamed(text: &str, step: usize) -> serde_json::Result<LeanRegistry> {
        parse_reader(Trickle {
            text: text.as_bytes(),
            step,
        })
    }

    /// The lean read must see what the full read sees, whatever shape an agent wrote, and
    /// read as it streams in, in pieces of any size.
    fn same_as_full(text: &str) {
        let lean = parse(text.as_bytes()).expect("lean parse");
        for step in [1, 2, 7, 1 << 20] {
            assert_eq!(
                streamed(text, step).expect("streamed"),
                lean,
                "{step}: {text}"
            );
        }
        let full = from_value(&serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(lean, full, "{text}");
        assert_eq!(
            lean.expected_active(),
            crate::registry::edit::expected_active_count(&serde_json::from_str(text).unwrap()),
            "{text}"
        );
    }

    /// A large registry's entries are held in a vector of their size, not the next power
    /// of two (which the last doubling held beside the one before); a count that is off
    /// (entries without an id, ids nested deeper) costs no entry.
    #[test]
    fn the_entries_vector_is_sized_by_the_id_count_and_a_wrong_count_loses_nothing() {
        let entries: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"id":"a-{i}","status":"completed"}}"#))
            .collect();
        let text = format!(r#"{{"task_id":"T","agents":[{}]}}"#, entries.join(","));
        let agents = parse(text.as_bytes()).unwrap().agents.unwrap();
        assert_eq!(agents.len(), 1000);
        assert_eq!(agents.capacity(), 1000, "sized once, not grown by doubling");

        let fewer_ids = r#"{"agents":[{"status":"failed"},{"status":"completed"},{"id":"a"}]}"#;
        same_as_full(fewer_ids);
        assert_eq!(
            parse(fewer_ids.as_bytes()).unwrap().agents.unwrap().len(),
            3
        );
        let more_ids =
            r#"{"agents":[{"id":"a","tracked_files":{"x":{"id":"b"}},"note":"\"id\""}]}"#;
        same_as_full(more_ids);
        assert_eq!(parse(more_ids.as_bytes()).unwrap().agents.unwrap().len(), 1);
    }

    #[test]
    fn hostile_shapes_read_as_the_full_parse_reads_them() {
        for text in [
            r#"{"agents":[{"id":"a-1","status":"working","x":{"deep":[1,2.50,1e400]}}],"active_count":1}"#,
            r#"{"agents":{"id":"not-an-array"},"active_count":"3"}"#,
            r#"{"agents":[1, "s", null, true, [1], 12345678901234567890123]}"#,
            r#"{"agents":[{"id":7,"status":["x"],"last_update":{"a":1}}]}"#,
            r#"{"agents":[{"id":"a","id":"b","status":"completed","status":"working"}]}"#,
            r#"{"agents":[{"id":"a","auto_cleanup_result":{"success":true,"errors":[]}},
                          {"id":"b","auto_cleanup_result":"yes"},
                          {"id":"c","auto_cleanup_result":{"success":"true"}},
                          {"id":"c2","auto_cleanup_result":{"success":true,"success":null}},
                          {"id":"c3","auto_cleanup_result":{"success":false,"x":{"success":true}}},
                          {"id":"c4","auto_cleanup_result":{"checked":["a"],"success":true}},
                          {"id":"c5","auto_cleanup_result":[{"success":true}]},
                          {"id":"d","tracked_files":{"log_file":"logs/d.jsonl"}},
                          {"id":"e","tracked_files":["logs/e.jsonl"]}]}"#,
            r#"{"active_count":2.0,"agents":null}"#,
            r#"{"active_count":-4}"#,
        ] {
            same_as_full(text);
        }
    }

    #[test]
    fn a_registry_that_is_not_an_object_is_left_to_the_full_read() {
        for text in ["[]", "\"x\"", "3", "{\"agents\":[", ""] {
            assert!(parse(text.as_bytes()).is_err(), "{text}");
            assert!(streamed(text, 1).is_err(), "{text}");
        }
    }

    /// Read in pieces, a text the whole-text parse refuses is refused too (never a registry
    /// made of the pieces that parse), and one it reads is read the same.
    #[test]
    fn a_registry_streamed_in_pieces_is_read_as_the_whole_text_is() {
        let big_entry = format!(
            r#"{{"id":"big","status":"completed","note":"{}\"}}]\\","x":[{{"y":"]"}}]}}"#,
            "z".repeat(600 * 1024)
        );
        for text in [
            r#"{}"#.to_string(),
            r#" { "agents" : [ ] , "active_count" : 0 } "#.to_string(),
            r#"{"ag\u0065nts":[{"id":"esc\"aped","status":"working"}],"active_count":1}"#
                .to_string(),
            r#"{"agents":[{"id":"a"}],"agents":{"x":1},"active_count":1,"active_count":2}"#
                .to_string(),
            r#"{"agents":{"x":1},"agents":[{"id":"b","status":"failed"}]}"#.to_string(),
            format!(r#"{{"task":"T","agents":[{big_entry},{{"id":"after"}}],"n":[1,2]}}"#),
        ] {
            same_as_full(&text);
        }
        for bad in [
            r#"{"agents":[{"id":"a"}{"id":"b"}]}"#,
            r#"{"agents":[{"id":"a"},]}"#,
            r#"{"agents":[{"id":"a"}] "active_count":1}"#,
            r#"{"agents":[{"id":"a"}]} x"#,
            r#"{"agents":[{"id":"a"]}"#,
            r#"{"agents":[tru]}"#,
            r#"{"x":{"y":1},}"#,
            r#"{1:2}"#,
            "{\"agents\":[{\"id\":\"a\u{1}\"}]}",
            r#"{"agents":["open]}"#,
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
            for step in [1, 3, 1 << 20] {
                assert!(streamed(bad, step).is_err(), "{step}: {bad}");
            }
        }
        // Deeper than the pieces are parsed: refused, though the whole-text parse reads it
        // (the caller then caches nothing; it never reads a registry differently).
        let deep = format!(
            r#"{{"agents":[{{"id":"d","x":{}1{}}}]}}"#,
            "[".repeat(120),
            "]".repeat(120)
        );
        assert!(parse(deep.as_bytes()).is_ok());
        assert!(streamed(&deep, 1 << 20).is_err());
    }
}
