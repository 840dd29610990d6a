//! Fuzz: the `/proc/<pid>/stat` parser never panics and survives hostile `comm` names.

use agent_reaper::procs::table::parse_stat;
use proptest::prelude::*;

fn comm() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just(")".to_string()),
                Just("(".to_string()),
                Just(" ".to_string()),
                Just(") S 1 2 3 ".to_string()),
                Just("\n".to_string()),
                Just("Z".to_string()),
                "[0-9]{1,5}",
                any::<char>().prop_map(String::from),
            ],
            0..10,
        )
        .prop_map(|v| v.concat()),
    ]
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::default()))]
    #[test]
    fn never_panics(line in any::<String>()) {
        let _ = parse_stat(&line);
    }

    #[test]
    fn never_panics_on_stat_like_lines(pid in any::<i32>(), c in comm(), tail in "[ -~]{0,200}") {
        let _ = parse_stat(&format!("{pid} ({c}){tail}"));
        let _ = parse_stat(&format!("{pid} ({c}) {tail})"));
    }

    #[test]
    fn hostile_comm_parses_right(
        pid in 1i32..i32::MAX,
        c in comm(),
        state in proptest::sample::select(vec!['R', 'S', 'D', 'Z', 'T', 't', 'X', 'I']),
        ppid in 0i32..i32::MAX,
        pgid in 0i32..i32::MAX,
        sid in 0i32..i32::MAX,
        start in any::<u64>(),
    ) {
        // Fields 3..=52 as the kernel writes them; 22 is the start time.
        let mut fields: Vec<String> = vec![state.to_string(), ppid.to_string(), pgid.to_string(), sid.to_string()];
        while fields.len() < 22 - 3 {
            fields.push("0".into());
        }
        fields.push(start.to_string());
        while fields.len() < 52 - 2 {
            fields.push("0".into());
        }
        let line = format!("{pid} ({c}) {}\n", fields.join(" "));
        let got = parse_stat(&line);
        prop_assert!(got.is_some(), "{line:?}");
        let got = got.unwrap();
        prop_assert_eq!(got.pid, pid);
        prop_assert_eq!(got.state, state);
        prop_assert_eq!(got.ppid, ppid);
        prop_assert_eq!(got.pgid, pgid);
        prop_assert_eq!(got.sid, sid);
        prop_assert_eq!(got.start_time, start);
    }
}
