//! A task registry read for deciding only: per agent the few fields the pass looks at, the
//! rest skipped unparsed (no `Value` tree of the whole file is built or kept).

use crate::model::{ACTIVE_STATUSES, TERMINAL_STATUSES};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The parts of a registry the pass decides on.
#[derive(Debug, Default)]
pub struct LeanRegistry {
    /// `active_count` when it is an integer.
    pub active_count: Option<i64>,
    /// `None` when `agents` is missing or not an array.
    pub agents: Option<Vec<LeanAgent>>,
}

/// One `agents` entry: its string fields (a non-string counts as absent, as the full read
/// treats it) and what `auto_cleanup_result.success` says.
#[derive(Debug, Default)]
pub struct LeanAgent {
    pub id: Option<Box<str>>,
    pub status: Option<Status>,
    pub last_update: Option<Box<str>>,
    pub completed_at: Option<Box<str>>,
    pub terminated_at: Option<Box<str>>,
    pub cleanup_success: Option<bool>,
    /// `tracked_files` when it is an object (rare, small).
    pub tracked_files: Option<Box<Value>>,
}

/// A status: the known ones shared, any other kept as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Known(&'static str),
    Other(Box<str>),
}

impl Status {
    fn new(s: Box<str>) -> Status {
        match ACTIVE_STATUSES
            .iter()
            .chain(TERMINAL_STATUSES)
            .find(|k| **k == &*s)
        {
            Some(k) => Status::Known(k),
            None => Status::Other(s),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Status::Known(s) => s,
            Status::Other(s) => s,
        }
    }
}

impl LeanRegistry {
    /// A registry object with just these fields (what `observe::task_view` reads).
    pub fn into_root(self) -> Value {
        let mut root = Map::new();
        if let Some(n) = self.active_count {
            root.insert("active_count".into(), Value::from(n));
        }
        if let Some(agents) = self.agents {
            root.insert(
                "agents".into(),
                Value::Array(agents.into_iter().map(LeanAgent::into_entry).collect()),
            );
        }
        Value::Object(root)
    }
}

impl LeanAgent {
    /// The small entry `observe` reads its fields from.
    pub fn into_entry(self) -> Value {
        let mut map = Map::new();
        for (key, value) in [
            ("id", self.id),
            ("status", self.status.map(|s| s.as_str().into())),
            ("last_update", self.last_update),
            ("completed_at", self.completed_at),
            ("terminated_at", self.terminated_at),
        ] {
            if let Some(v) = value {
                map.insert(key.into(), Value::String(v.into()));
            }
        }
        if let Some(success) = self.cleanup_success {
            let mut record = Map::new();
            record.insert("success".into(), Value::Bool(success));
            map.insert("auto_cleanup_result".into(), Value::Object(record));
        }
        if let Some(tracked) = self.tracked_files {
            map.insert("tracked_files".into(), *tracked);
        }
        Value::Object(map)
    }
}

/// Parses registry bytes; `Err` when they are not a JSON object (the caller then reads the
/// file the full, tolerant way, which names the problem).
pub fn parse(bytes: &[u8]) -> serde_json::Result<LeanRegistry> {
    serde_json::from_slice::<LeanRegistry>(bytes)
}

/// From an already parsed registry value (the tolerant read's).
pub fn from_value(value: &Value) -> LeanRegistry {
    LeanRegistry {
        active_count: value.get("active_count").and_then(Value::as_i64),
        agents: value
            .get("agents")
            .and_then(Value::as_array)
            .map(|a| lean_agents(a)),
    }
}

fn lean_agents(agents: &[Value]) -> Vec<LeanAgent> {
    agents
        .iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(Box::from);
            LeanAgent {
                id: s("id"),
                status: s("status").map(Status::new),
                last_update: s("last_update"),
                completed_at: s("completed_at"),
                terminated_at: s("terminated_at"),
                cleanup_success: e
                    .get("auto_cleanup_result")
                    .and_then(|r| r.get("success"))
                    .and_then(Value::as_bool),
                tracked_files: e
                    .get("tracked_files")
                    .filter(|t| t.is_object())
                    .map(|t| Box::new(t.clone())),
            }
        })
        .collect()
}

/// Any JSON value, kept only when it is a string.
struct MaybeStr(Option<Box<str>>);

impl<'de> Deserialize<'de> for MaybeStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(MaybeStr(match v {
            Value::String(s) => Some(s.into()),
            _ => None,
        }))
    }
}

impl<'de> Deserialize<'de> for LeanRegistry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LeanRegistry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a registry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeanRegistry, A::Error> {
                let mut out = LeanRegistry::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "active_count" => out.active_count = map.next_value::<Value>()?.as_i64(),
                        "agents" => out.agents = map.next_value::<MaybeAgents>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// `agents`: the entries when it is an array, `None` otherwise.
struct MaybeAgents(Option<Vec<LeanAgent>>);

impl<'de> Deserialize<'de> for MaybeAgents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeAgents;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeAgents, A::Error> {
                let mut agents = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(agent) = seq.next_element::<LeanAgent>()? {
                    agents.push(agent);
                }
                Ok(MaybeAgents(Some(agents)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeAgents, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeAgents(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MaybeAgents, E> {
                Ok(MaybeAgents(None))
            }
        }
        d.deserialize_any(V)
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
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "id" => a.id = map.next_value::<MaybeStr>()?.0,
                        "status" => a.status = map.next_value::<MaybeStr>()?.0.map(Status::new),
                        "last_update" => a.last_update = map.next_value::<MaybeStr>()?.0,
                        "completed_at" => a.completed_at = map.next_value::<MaybeStr>()?.0,
                        "terminated_at" => a.terminated_at = map.next_value::<MaybeStr>()?.0,
                        "auto_cleanup_result" => {
                            let record = map.next_value::<Value>()?;
                            a.cleanup_success = record.get("success").and_then(Value::as_bool);
                        }
                        "tracked_files" => {
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
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<LeanAgent, E> {
                Ok(LeanAgent::default())
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lean read must see what the full read sees, whatever shape an agent wrote.
    fn same_as_full(text: &str) {
        let lean = parse(text.as_bytes()).expect("lean parse").into_root();
        let full = from_value(&serde_json::from_str::<Value>(text).unwrap()).into_root();
        assert_eq!(lean, full, "{text}");
        assert_eq!(
            crate::registry::edit::expected_active_count(&lean),
            crate::registry::edit::expected_active_count(&serde_json::from_str(text).unwrap()),
            "{text}"
        );
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
        }
    }
}
