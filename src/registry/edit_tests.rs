//! The streamed task and global registry edits write what the whole-`Value` edits write, byte
//! for byte.

use super::cas::Rewrite;
use super::edit::{
    AgentChange, Applied, CleanupRecord, GlobalChange, GlobalEdit, Record, TaskEdit,
    edit_global_registry, edit_task_registry,
};
use super::pyjson::to_python_json;
use proptest::prelude::*;
use serde_json::{Value, json};

const IDS: [&str; 4] = ["a", "b", "c", "d"];
const STATUSES: [&str; 5] = ["working", "completed", "terminated", "blocked", "odd"];

/// What the streamed edit gives: its results, whether it changes anything, and its text.
fn streamed(text: &str, changes: &[AgentChange]) -> (Vec<Applied>, bool, String) {
    let mut edit = TaskEdit::new(changes);
    let (applied, changed) = edit.prepare(text.as_bytes()).unwrap();
    let mut out = Vec::new();
    edit.render(text.as_bytes(), &mut out).unwrap();
    (applied, changed, String::from_utf8(out).unwrap())
}

/// [`streamed`], each given record made instead when its entry is written (as the pass
/// does), by a maker that knows only the change's index.
fn streamed_made(text: &str, changes: &[AgentChange]) -> (Vec<Applied>, bool, String) {
    let records: Vec<Option<CleanupRecord>> = changes
        .iter()
        .map(|c| match &c.cleanup {
            Some(Record::Given(r)) => Some((**r).clone()),
            _ => None,
        })
        .collect();
    let made: Vec<AgentChange> = changes
        .iter()
        .map(|c| AgentChange {
            cleanup: c.cleanup.as_ref().map(|_| Record::Made),
            ..c.clone()
        })
        .collect();
    let maker = |c: usize| records[c].clone().expect("made only where one was given");
    let mut edit = TaskEdit::with_records(&made, &maker);
    let (applied, changed) = edit.prepare(text.as_bytes()).unwrap();
    let mut out = Vec::new();
    edit.render(text.as_bytes(), &mut out).unwrap();
    (applied, changed, String::from_utf8(out).unwrap())
}

/// What the whole-`Value` edit gives.
fn whole(text: &str, changes: &[AgentChange]) -> (Vec<Applied>, bool, String) {
    let mut value: Value = serde_json::from_str(text).unwrap();
    let before = value.clone();
    let applied = edit_task_registry(&mut value, changes);
    let changed = value != before;
    (applied, changed, to_python_json(&value))
}

fn entry() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => (
            prop::option::of(prop::sample::select(&IDS[..])),
            prop::option::of(prop::sample::select(&STATUSES[..])),
            prop::option::of(prop_oneof![Just(json!({"success": true, "archived_files": ["x"]})), Just(json!("yes"))]),
            any::<bool>(),
        )
            .prop_map(|(id, status, record, extra)| {
                let mut m = serde_json::Map::new();
                if extra {
                    m.insert("zz".into(), serde_json::from_str(r#"{"k":[1,2.50,1E5,"\u00e9"]}"#).unwrap());
                }
                if let Some(id) = id {
                    m.insert("id".into(), json!(id));
                }
                if let Some(s) = status {
                    m.insert("status".into(), json!(s));
                }
                if let Some(r) = record {
                    m.insert("auto_cleanup_result".into(), r);
                }
                Value::Object(m)
            }),
        1 => Just(json!(7)),
        1 => Just(json!([])),
        1 => Just(json!({"id": 3, "status": "working"})),
    ]
}

fn change() -> impl Strategy<Value = AgentChange> {
    (
        prop::sample::select(&IDS[..]),
        prop::sample::select(&STATUSES[..]),
        prop::option::of(prop::sample::select(&["terminated", "completed"][..])),
        any::<bool>(),
    )
        .prop_map(|(id, expect, set, record)| AgentChange {
            id: id.into(),
            expect_status: expect.into(),
            set_status: set.map(|s| (s, (s == "terminated").then_some("session_not_found"))),
            cleanup: record.then(|| {
                CleanupRecord {
                    success: true,
                    archived_files: vec![format!("/w/archive/{id}_stream.jsonl")],
                    ..Default::default()
                }
                .into()
            }),
            now: "2026-11-27T10:00:00.000000".into(),
        })
}

/// A registry text in some writer's form: Python's, compact, or with repeated keys.
fn registry() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(entry(), 0..6),
        prop::option::of(0i64..3),
        0..3u8,
    )
        .prop_map(|(agents, active, form)| {
            let mut root = serde_json::Map::new();
            root.insert("task_id".into(), json!("TASK-1"));
            root.insert("agents".into(), Value::Array(agents));
            if let Some(n) = active {
                root.insert("active_count".into(), json!(n));
            }
            let root = Value::Object(root);
            match form {
                0 => to_python_json(&root),
                1 => root.to_string(),
                // A repeated top-level key: the last value, at the first key's place.
                _ => format!("{{\"active_count\": 9, {}", &root.to_string()[1..]),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn streamed_edit_equals_the_whole_value_edit(
        text in registry(),
        changes in prop::collection::vec(change(), 0..5),
    ) {
        let (applied, changed, out) = streamed(&text, &changes);
        let (w_applied, w_changed, w_out) = whole(&text, &changes);
        let made = streamed_made(&text, &changes);
        prop_assert_eq!(&applied, &w_applied);
        prop_assert_eq!(changed, w_changed);
        prop_assert_eq!(&out, &w_out);
        prop_assert_eq!(made, (applied, changed, out), "records made when written");
    }
}

#[test]
fn registries_without_an_agent_list_are_edited_as_before() {
    for text in [
        r#"{"agents": {"a": {"status": "working"}}, "active_count": 1}"#,
        r#"{"agents": 3}"#,
        r#"{}"#,
        r#"{"active_count": 1E2, "agents": []}"#,
        r#"{"agents": [{"id": "a", "status": "working", "st\u0061tus": "completed"}], "active_count": 1}"#,
    ] {
        let change = AgentChange {
            id: "a".into(),
            expect_status: "working".into(),
            set_status: Some(("terminated", None)),
            cleanup: None,
            now: "2026-11-27T10:00:00.000000".into(),
        };
        assert_eq!(
            streamed(text, std::slice::from_ref(&change)),
            whole(text, &[change]),
            "{text}"
        );
    }
}

/// The global registry: streamed and whole-`Value` edits give the same bytes.
fn global_both(text: &str, changes: &[GlobalChange]) -> ((bool, String), (bool, String)) {
    let mut edit = GlobalEdit::new(changes);
    let ((), changed) = edit.prepare(text.as_bytes()).unwrap();
    let mut out = Vec::new();
    edit.render(text.as_bytes(), &mut out).unwrap();
    let mut value: Value = serde_json::from_str(text).unwrap();
    let before = value.clone();
    edit_global_registry(&mut value, changes);
    (
        (changed, String::from_utf8(out).unwrap()),
        (value != before, to_python_json(&value)),
    )
}

fn global_entry() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (
            prop::option::of(prop_oneof![
                prop::sample::select(&STATUSES[..]).prop_map(|s| json!(s)),
                Just(Value::Null),
                Just(json!(3)),
            ]),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(status, last_update, done_at)| {
                let mut m = serde_json::Map::new();
                m.insert("task_id".into(), json!("T"));
                if let Some(s) = status {
                    m.insert("status".into(), s);
                }
                if last_update {
                    m.insert("last_update".into(), json!("2026-11-27T09:00:00"));
                }
                if done_at {
                    m.insert("completed_at".into(), json!("2026-11-27T09:30:00"));
                }
                Value::Object(m)
            }),
        1 => Just(json!(12345678901234567890u64)),
        1 => Just(json!("s")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn streamed_global_edit_equals_the_whole_value_edit(
        agents in prop::collection::vec((prop::sample::select(&IDS[..]), global_entry()), 0..6),
        active in prop::option::of(0i64..4),
        compact in any::<bool>(),
        changes in prop::collection::vec(
            (prop::sample::select(&IDS[..]), prop::sample::select(&["terminated", "completed"][..]))
                .prop_map(|(id, status)| GlobalChange {
                    id: id.into(),
                    status,
                    now: "2026-11-27T10:00:00.000000".into(),
                }),
            0..4,
        ),
    ) {
        // Written by hand so a repeated id stays repeated in the text.
        let list: Vec<String> = agents
            .iter()
            .map(|(id, v)| format!("{}: {}", json!(id), v))
            .collect();
        let active = active.map(|n| format!(", \"active_agents\": {n}")).unwrap_or_default();
        let text = format!("{{\"agents\": {{{}}}{active}}}", list.join(", "));
        let text = if compact {
            text
        } else {
            to_python_json(&serde_json::from_str(&text).unwrap())
        };
        let (streamed, whole) = global_both(&text, &changes);
        prop_assert_eq!(streamed, whole);
    }
}
