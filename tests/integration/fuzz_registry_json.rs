//! Fuzz: arbitrary JSON → `to_python_json` → read back equal; byte-identical to Python's
//! `json.dumps(indent=2)` on a sample. Cases: `PROPTEST_CASES` (default 256).

use agent_reaper::registry::pyjson::to_python_json;
use agent_reaper::registry::{ReadOptions, read_registry};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Beyond 64 bits: Python ints are unbounded, so are these.
        ("-?[1-9][0-9]{19,60}").prop_map(|s| Value::Number(s.parse::<Number>().unwrap())),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        // Float text as Python writes it, and as other writers may (`1E5`, `1.50`).
        ("-?(0|[1-9][0-9]{0,2})\\.[0-9]{1,8}([eE][-+]?[0-9]{1,2})?")
            .prop_map(|s| Value::Number(s.parse::<Number>().unwrap())),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        // Control characters, astral characters, quotes and backslashes, dense.
        proptest::collection::vec(
            prop_oneof![
                (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
                Just('"'),
                Just('\\'),
                Just('\u{7f}'),
                Just('\u{2028}'),
                Just('\u{fffd}'),
                (0x10000u32..0x10ffff).prop_filter_map("char", char::from_u32),
                any::<char>(),
            ],
            0..20
        )
        .prop_map(|v| v.into_iter().collect()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((string(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Equality with numbers compared by value (`1e-5` and `1e-05` are the same float), since
/// `arbitrary_precision` compares their text.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (xs, ys) = (x.to_string(), y.to_string());
            let float = |s: &str| s.contains(['.', 'e', 'E']);
            if float(&xs) || float(&ys) {
                xs.parse::<f64>().ok() == ys.parse::<f64>().ok()
            } else {
                xs.trim_start_matches("-0").is_empty() && ys == "0" || xs == ys
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => a == b,
    }
}

fn python_dumps(compact: &str) -> Option<String> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json,sys; sys.stdout.write(json.dumps(json.loads(sys.stdin.read()), indent=2))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(compact.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 failed on {compact}");
    Some(String::from_utf8(out.stdout).unwrap())
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::default()))]
    #[test]
    fn python_json_reads_back_equal(v in json_value()) {
        let text = to_python_json(&v);
        prop_assert!(text.is_ascii(), "ensure_ascii output: {text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert!(same(&v, &back), "{v} -> {text} -> {back}");
        // And through the registry reader, from a file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("AGENT_REGISTRY.json");
        // A registry is an object: wrap the value as a field of one.
        let root = serde_json::json!({"task_id": "TASK-x", "value": v.clone()});
        std::fs::write(&path, to_python_json(&root)).unwrap();
        let read = read_registry(&path, &ReadOptions::default()).unwrap();
        prop_assert!(same(&root, &read), "registry read {read} != {root}");
        // Idempotent: what we write is what we would write again.
        prop_assert_eq!(to_python_json(&back), text);
    }
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig {
        // One python3 per case: a sample (PROPTEST_CASES / 8, at least 16).
        cases: (ProptestConfig::default().cases / 8).max(16),
        ..ProptestConfig::default()
    }))]
    #[test]
    fn python_json_matches_python_byte_for_byte(v in json_value()) {
        let compact = serde_json::to_string(&v).unwrap();
        if let Some(py) = python_dumps(&compact) {
            prop_assert_eq!(to_python_json(&v), py, "input {}", compact);
        }
    }
}
