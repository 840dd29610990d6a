//! Unit tests of `json_doc`: the layout and the streamed rendering against `to_python_json`.

use super::*;
use crate::registry::pyjson::to_python_json;

/// Rendering with nothing replaced writes what `to_python_json` writes for the whole value.
fn renders_as_whole(text: &str) {
    let doc = Doc::parse(text.as_bytes()).expect(text);
    let mut out = Vec::new();
    doc.render(&[], &mut |_, raw| serde_json::from_str(raw.get()), &mut out)
        .unwrap();
    let whole: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        to_python_json(&whole),
        "{text}"
    );
}

#[test]
fn any_registry_shape_renders_as_the_whole_value_does() {
    for text in [
        "{}",
        " {\"agents\": []} \n",
        r#"{"agents": {}, "x": 1}"#,
        r#"{"task_id":"T","agents":[{"id":"a","n":[1,2.50,1E5,-0],"s":"caf\u00e9 \ud83d\ude00"},7,[],{}],"active_count":1}"#,
        r#"{"active_agents":2,"agents":{"a":{"status":"working"},"b":{},"a":{"status":"completed"}}}"#,
        r#"{"agents":[1],"x":{"y":[]},"agents":[{"id":"b"}],"x":2}"#,
        r#"{"\u0061gents":[{"id":"esc"}],"k\"ey":"v"}"#,
        r#"{"agents":"not a list"}"#,
    ] {
        renders_as_whole(text);
    }
}

#[test]
fn layout_gives_the_items_and_repeated_keys_keep_their_first_place() {
    let text = r#"{"b":1,"agents":[{"id":"x"}, 2 ,"s"],"b":3}"#;
    let doc = Doc::parse(text.as_bytes()).unwrap();
    let keys: Vec<&str> = doc.members.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(keys, ["b", "agents"]);
    assert_eq!(doc.members[0].1.get(), "3");
    let list = doc.list.as_ref().unwrap();
    assert_eq!(list.member, 1);
    let items: Vec<&str> = list.items.iter().map(|(_, r)| r.get()).collect();
    assert_eq!(items, [r#"{"id":"x"}"#, "2", r#""s""#]);
}

#[test]
fn sets_replace_in_place_or_go_last() {
    let doc = Doc::parse(br#"{"active_count":1,"agents":[]}"#).unwrap();
    let mut out = Vec::new();
    let sets = [
        ("active_count".to_string(), Value::from(0)),
        ("new".to_string(), Value::from("v")),
    ];
    doc.render(
        &sets,
        &mut |_, raw| serde_json::from_str(raw.get()),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\n  \"active_count\": 0,\n  \"agents\": [],\n  \"new\": \"v\"\n}"
    );
}

#[test]
fn not_an_object_and_broken_text_are_told_apart() {
    for text in ["[1]", "3", "12345678901234567890123", "\"s\"", "null"] {
        assert!(
            matches!(Doc::parse(text.as_bytes()), Err(DocError::NotObject)),
            "{text}"
        );
        assert!(
            matches!(check_object(text.as_bytes()), Err(DocError::NotObject)),
            "{text}"
        );
    }
    for text in ["", "{", "{\"a\":1} x", "{\"agents\":[1,]}"] {
        assert!(
            matches!(Doc::parse(text.as_bytes()), Err(DocError::Json(_))),
            "{text}"
        );
        assert!(
            matches!(check_object(text.as_bytes()), Err(DocError::Json(_))),
            "{text}"
        );
    }
}

#[test]
fn string_fields_read_strings_only_and_the_last_repeat() {
    let raw = |t: &str| serde_json::from_str::<Box<RawValue>>(t).unwrap();
    assert_eq!(
        string_fields(
            &raw(r#"{"id":"a","status":1,"id":"b","x":{"id":"no"}}"#),
            &["id", "status"]
        ),
        Some(vec![Some("b".into()), None])
    );
    assert_eq!(string_fields(&raw("[1]"), &["id"]), None);
    assert_eq!(string_fields(&raw(r#""s""#), &["id"]), None);
}
