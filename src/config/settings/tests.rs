//! Tests of the config file: its keys, units and the errors that name the file and the fix.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn documented_example_parses_and_matches_defaults() {
    let text = include_str!("../../../config/agent-reaper.toml");
    let config = parse(text).unwrap();
    let defaults = Config::default();
    assert_eq!(config.settle, defaults.settle);
    assert_eq!(config.max_inactivity, defaults.max_inactivity);
    assert_eq!(config.term_grace, defaults.term_grace);
    assert_eq!(config.max_registry_size, defaults.max_registry_size);
}

#[test]
fn max_registry_size_takes_bytes_or_units() {
    assert_eq!(parse("").unwrap().max_registry_size, 64 << 20);
    assert_eq!(
        parse("max_registry_size = \"128MiB\"")
            .unwrap()
            .max_registry_size,
        128 << 20
    );
    assert_eq!(
        parse("max_registry_size = 5000").unwrap().max_registry_size,
        5000
    );
    let err = parse("max_registry_size = \"64 megs\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_registry_size") && err.contains("MiB"),
        "{err}"
    );
    assert!(parse("max_registry_size = 0").is_err());
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
    assert_eq!(parse_duration("110m"), Ok(Duration::from_secs(6600)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("2").unwrap_err().contains("no unit"));
    assert!(parse_duration("2x").unwrap_err().contains("unknown unit"));
    assert!(parse_duration("").is_err());
    assert!(
        parse_duration("s")
            .unwrap_err()
            .contains("expected a number")
    );
    // humantime's longer forms are taken too.
    assert_eq!(parse_duration("2 seconds"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
}

#[test]
fn errors_name_file_key_and_line() {
    let err = parse("settle = \"2 parsecs\"\n").unwrap_err().to_string();
    assert!(err.contains("test.toml") && err.contains("settle"), "{err}");
    assert!(err.contains("unknown unit \"parsecs\""), "{err}");
    let err = parse("settle = \"2s\"\nsetle = \"1s\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("setle"), "{err}");
    let err = parse("kill_orphan_sessions = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn compression_and_retention_keys_parse_with_clear_errors() {
    let c = parse("compress = true\ncompress_kinds = [\"stream\", \"progress\"]\n").unwrap();
    assert!(c.compress);
    assert_eq!(c.compress_kinds, vec![LogKind::Stream, LogKind::Progress]);
    assert_eq!(c.compress_level, 3);
    let err = parse("compress_kinds = [\"streams\"]")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compress_kinds") && err.contains("\"stream\""),
        "{err}"
    );
    assert!(
        parse("compress_level = 30")
            .unwrap_err()
            .to_string()
            .contains("1 (fastest)")
    );
    let c = parse("[retention]\nmax_age = \"30d\"\nmax_total_size = \"10GiB\"\n").unwrap();
    assert_eq!(c.retention.max_age, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(c.retention.max_total_size, Some(10 << 30));
    assert!(!parse("").unwrap().retention.is_enabled());
    let err = parse("[retention]\nmax_total_size = \"10 gigs\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.toml")
            && err.contains("retention.max_total_size")
            && err.contains("GiB"),
        "{err}"
    );
    let err = parse("[retention]\nmax_age = \"thirty days\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("retention.max_age"), "{err}");
    let err = parse("[retention]\nmaxage = \"30d\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("maxage"), "{err}");
    assert!(parse("[retention]\nmax_age = \"0s\"\n").is_err());
    assert_eq!(parse_size("2TiB"), Ok(2 << 40));
}

#[test]
fn tmux_socket_is_a_name_or_a_path() {
    let c = parse("tmux_socket = \"agents\"").unwrap();
    assert_eq!(
        c.tmux_socket,
        Some(TmuxSocketSetting::Name("agents".into()))
    );
    let c = parse("tmux_socket = \"/run/tmux/agents\"").unwrap();
    assert_eq!(
        c.tmux_socket,
        Some(TmuxSocketSetting::Path("/run/tmux/agents".into()))
    );
}

#[test]
fn term_grace_takes_one_or_many_steps() {
    let c = parse("term_grace = \"3s\"").unwrap();
    assert_eq!(c.term_grace, vec![Duration::from_secs(3)]);
    let c = parse("term_grace = [\"100ms\", \"200ms\"]").unwrap();
    assert_eq!(c.term_grace.len(), 2);
    assert!(parse("term_grace = []").is_err());
}
