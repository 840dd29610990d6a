//! Configuration: TOML text → a validated `Config` (pure; `layer` puts the command line's overrides on top).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::workspace::LogKind;

/// A log kind by its config name.
fn log_kind(name: &str) -> Option<LogKind> {
    match name {
        "stream" => Some(LogKind::Stream),
        "progress" => Some(LogKind::Progress),
        "findings" => Some(LogKind::Findings),
        "deploy" => Some(LogKind::Deploy),
        _ => None,
    }
}

use super::hooks;
use super::upload;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message already names the line and column and shows the offending text.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key} = {value:?}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
    /// A `[[hooks]]` table; the reason names it (`hooks[0]: ...`).
    #[error("{path}: {reason}")]
    Hook { path: PathBuf, reason: String },
}

/// Where the tmux client connects: `-L name` or `-S path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TmuxSocketSetting {
    Name(String),
    Path(PathBuf),
}

/// Every setting, with its default; see `config/agent-reaper.toml` for what each does.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub workspace_bases: Vec<PathBuf>,
    /// Also clean the active bases listed in `~/.claude-orchestrator/global_registry.sqlite3`.
    pub discover_workspaces: bool,
    pub state_dir: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    /// Compress archived logs of `compress_kinds` into `<name>.zst` (`crate::archive::compress`).
    pub compress: bool,
    /// zstd level, 1 (fastest) to 19 (smallest); zstd's default is 3.
    pub compress_level: i32,
    /// Which archived logs are compressed; the rest stay plain (the orchestrator reads
    /// `archive/<id>_findings.jsonl` by name).
    pub compress_kinds: Vec<LogKind>,
    /// Removal of cleaned agents' archives by age and total size per base (`[retention]`).
    pub retention: Retention,
    pub settle: Duration,
    pub terminal_grace: Duration,
    pub zombie_grace: Duration,
    pub max_inactivity: Duration,
    pub reconcile_interval: Duration,
    pub session_poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub lock_timeout: Duration,
    /// Registries larger than this many bytes are reported and skipped, not read.
    pub max_registry_size: u64,
    pub kill_orphan_sessions: bool,
    pub delete_prompt_files: bool,
    pub health_file: bool,
    pub log_file: Option<PathBuf>,
    pub tmux_binary: PathBuf,
    pub tmux_socket: Option<TmuxSocketSetting>,
    pub tmux_timeout: Duration,
    /// Waits after SIGTERM before SIGKILL, one after the other.
    pub term_grace: Vec<Duration>,
    /// Commands run after transitions are committed (`[[hooks]]`).
    pub hooks: Vec<hooks::HookSpec>,
    /// Hook runs at the same time at most (runs of one task never overlap).
    pub hook_concurrency: usize,
    /// Object storage for archives (`s3://bucket/prefix`); `None`: archives stay local.
    pub archive_url: Option<upload::ArchiveUrl>,
    /// An S3-compatible server's URL instead of AWS's (also `AWS_ENDPOINT_URL`).
    pub archive_endpoint: Option<String>,
    /// Keep the local copy of an uploaded archive.
    pub keep_local: bool,
    /// How long an archive stays unchanged before it is uploaded.
    pub upload_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workspace_bases: Vec::new(),
            discover_workspaces: false,
            state_dir: None,
            archive_dir: None,
            compress: false,
            compress_level: zstd::DEFAULT_COMPRESSION_LEVEL,
            compress_kinds: vec![LogKind::Stream],
            retention: Retention::default(),
            settle: Duration::from_secs(2),
            terminal_grace: Duration::from_secs(60),
            zombie_grace: Duration::from_secs(10),
            max_inactivity: Duration::from_secs(110 * 60),
            reconcile_interval: Duration::from_secs(60),
            session_poll_interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            max_registry_size: 64 << 20,
            kill_orphan_sessions: false,
            delete_prompt_files: true,
            health_file: true,
            log_file: None,
            tmux_binary: PathBuf::from("tmux"),
            tmux_socket: None,
            tmux_timeout: Duration::from_secs(5),
            term_grace: vec![
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
            ],
            hooks: Vec::new(),
            hook_concurrency: hooks::DEFAULT_CONCURRENCY,
            archive_url: None,
            archive_endpoint: None,
            keep_local: false,
            upload_after: Duration::from_secs(5 * 60),
        }
    }
}

/// The file as written: every key optional, unknown keys refused (a typo must not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    workspace_bases: Option<Vec<PathBuf>>,
    discover_workspaces: Option<bool>,
    state_dir: Option<PathBuf>,
    archive_dir: Option<PathBuf>,
    compress: Option<bool>,
    compress_level: Option<i32>,
    compress_kinds: Option<Vec<String>>,
    retention: Option<RawRetention>,
    settle: Option<String>,
    terminal_grace: Option<String>,
    zombie_grace: Option<String>,
    max_inactivity: Option<String>,
    reconcile_interval: Option<String>,
    session_poll_interval: Option<String>,
    shutdown_timeout: Option<String>,
    lock_timeout: Option<String>,
    max_registry_size: Option<ByteSize>,
    kill_orphan_sessions: Option<bool>,
    delete_prompt_files: Option<bool>,
    health_file: Option<bool>,
    log_file: Option<PathBuf>,
    tmux_binary: Option<PathBuf>,
    tmux_socket: Option<String>,
    tmux_timeout: Option<String>,
    term_grace: Option<TermGrace>,
    hooks: Option<Vec<hooks::RawHook>>,
    hook_concurrency: Option<usize>,
    archive_url: Option<String>,
    archive_endpoint: Option<String>,
    keep_local: Option<bool>,
    upload_after: Option<String>,
}

/// `[retention]`: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age: Option<String>,
    max_total_size: Option<ByteSize>,
}

/// When archives of cleaned agents are removed; both unset (the default): never.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Archives whose last write is older than this go.
    pub max_age: Option<Duration>,
    /// Per workspace base: the oldest archives go until the base's archives fit.
    pub max_total_size: Option<u64>,
}

impl Retention {
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.max_total_size.is_some()
    }
}

/// A size as a number of bytes or a string such as `"64MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TermGrace {
    One(String),
    Steps(Vec<String>),
}

impl Config {
    /// The folders the daemon trusts as given (opened by path): the workspace bases and
    /// `archive_dir`. Everything below them is reached through `crate::fs` handles.
    pub fn trusted_roots(&self) -> Vec<PathBuf> {
        self.workspace_bases
            .iter()
            .chain(self.archive_dir.as_ref())
            .cloned()
            .collect()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates `text`; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let d = Config::default();
        let dur = |key: &'static str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|reason| ConfigError::Invalid {
                path: origin.to_path_buf(),
                key,
                value: v,
                reason,
            }),
        };
        let invalid = |key: &'static str, value: String, reason: &str| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            value,
            reason: reason.to_string(),
        };
        let term_grace = match raw.term_grace {
            None => d.term_grace.clone(),
            Some(TermGrace::One(v)) => vec![dur("term_grace", Some(v), Duration::ZERO)?],
            Some(TermGrace::Steps(vs)) => vs
                .into_iter()
                .map(|v| dur("term_grace", Some(v), Duration::ZERO))
                .collect::<Result<_, _>>()?,
        };
        if term_grace.is_empty() {
            return Err(invalid(
                "term_grace",
                "[]".into(),
                "give at least one wait before SIGKILL, e.g. [\"500ms\", \"1s\", \"2s\"]",
            ));
        }
        let tmux_socket = match raw.tmux_socket {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) if s.contains('/') => Some(TmuxSocketSetting::Path(PathBuf::from(s))),
            Some(s) => Some(TmuxSocketSetting::Name(s)),
        };
        let max_registry_size = match raw.max_registry_size {
            None => d.max_registry_size,
            Some(ByteSize::Bytes(n)) => n,
            Some(ByteSize::Text(t)) => {
                parse_size(&t).map_err(|reason| invalid("max_registry_size", t, &reason))?
            }
        };
        if max_registry_size == 0 {
            return Err(invalid(
                "max_registry_size",
                "0".into(),
                "must be larger than zero, e.g. \"64MiB\"",
            ));
        }
        let compress_kinds = match raw.compress_kinds {
            None => d.compress_kinds.clone(),
            Some(names) => names
                .iter()
                .map(|n| {
                    log_kind(n).ok_or_else(|| {
                        invalid(
                            "compress_kinds",
                            format!("{names:?}"),
                            &format!(
                                "unknown kind {n:?}; use some of \"stream\", \"progress\", \"findings\", \"deploy\""
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let compress_level = raw.compress_level.unwrap_or(d.compress_level);
        if !(1..=19).contains(&compress_level) {
            return Err(invalid(
                "compress_level",
                compress_level.to_string(),
                "must be 1 (fastest) to 19 (smallest); zstd's default is 3",
            ));
        }
        let retention = match raw.retention {
            None => Retention::default(),
            Some(r) => Retention {
                max_age: match r.max_age {
                    None => None,
                    Some(v) => Some(dur("retention.max_age", Some(v), Duration::ZERO)?),
                },
                max_total_size: match r.max_total_size {
                    None => None,
                    Some(ByteSize::Bytes(n)) => Some(n),
                    Some(ByteSize::Text(t)) => Some(
                        parse_size(&t)
                            .map_err(|reason| invalid("retention.max_total_size", t, &reason))?,
                    ),
                },
            },
        };
        if retention.max_age.is_some_and(|a| a.is_zero()) {
            return Err(invalid(
                "retention.max_age",
                "0s".into(),
                "must be longer than zero (it would remove every cleaned archive); e.g. \"30d\"",
            ));
        }
        let config = Config {
            workspace_bases: raw.workspace_bases.unwrap_or_default(),
            discover_workspaces: raw.discover_workspaces.unwrap_or(d.discover_workspaces),
            state_dir: raw.state_dir,
            archive_dir: raw.archive_dir,
            compress: raw.compress.unwrap_or(d.compress),
            compress_level,
            compress_kinds,
            retention,
            settle: dur("settle", raw.settle, d.settle)?,
            terminal_grace: dur("terminal_grace", raw.terminal_grace, d.terminal_grace)?,
            zombie_grace: dur("zombie_grace", raw.zombie_grace, d.zombie_grace)?,
            max_inactivity: dur("max_inactivity", raw.max_inactivity, d.max_inactivity)?,
            reconcile_interval: dur(
                "reconcile_interval",
                raw.reconcile_interval,
                d.reconcile_interval,
            )?,
            session_poll_interval: dur(
                "session_poll_interval",
                raw.session_poll_interval,
                d.session_poll_interval,
            )?,
            shutdown_timeout: dur("shutdown_timeout", raw.shutdown_timeout, d.shutdown_timeout)?,
            lock_timeout: dur("lock_timeout", raw.lock_timeout, d.lock_timeout)?,
            max_registry_size,
            kill_orphan_sessions: raw.kill_orphan_sessions.unwrap_or(d.kill_orphan_sessions),
            delete_prompt_files: raw.delete_prompt_files.unwrap_or(d.delete_prompt_files),
            health_file: raw.health_file.unwrap_or(d.health_file),
            log_file: raw.log_file,
            tmux_binary: raw.tmux_binary.unwrap_or(d.tmux_binary),
            tmux_socket,
            tmux_timeout: dur("tmux_timeout", raw.tmux_timeout, d.tmux_timeout)?,
            term_grace,
            hooks: hooks::parse_hooks(raw.hooks.unwrap_or_default(), parse_duration).map_err(
                |reason| ConfigError::Hook {
                    path: origin.to_path_buf(),
                    reason,
                },
            )?,
            hook_concurrency: raw.hook_concurrency.unwrap_or(d.hook_concurrency),
            archive_url: match raw.archive_url {
                None => None,
                Some(v) => Some(
                    upload::parse_archive_url(&v)
                        .map_err(|reason| invalid("archive_url", v, &reason))?,
                ),
            },
            archive_endpoint: match raw.archive_endpoint {
                None => None,
                Some(v) => Some(
                    upload::parse_endpoint(&v)
                        .map_err(|reason| invalid("archive_endpoint", v, &reason))?,
                ),
            },
            keep_local: raw.keep_local.unwrap_or(d.keep_local),
            upload_after: dur("upload_after", raw.upload_after, d.upload_after)?,
        };
        if config.hook_concurrency == 0 {
            return Err(invalid(
                "hook_concurrency",
                "0".into(),
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("reconcile_interval", config.reconcile_interval),
            ("session_poll_interval", config.session_poll_interval),
            ("tmux_timeout", config.tmux_timeout),
            ("max_inactivity", config.max_inactivity),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "0s".into(), "must be longer than zero"));
            }
        }
        Ok(config)
    }
}

/// `"64MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`, `"4096"` (bytes): a size in bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let hint = "write e.g. \"64MiB\", \"10GiB\", \"512KiB\" or a number of bytes";
    if digits == 0 {
        return Err(format!("expected a number at the start; {hint}"));
    }
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("number too large in {text:?}"))?;
    let unit: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown unit {other:?}; {hint}")),
    };
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `"200ms"`, `"2s"`, `"110m"`, `"1h"`, `"1d"`; also combined like `"1h30m"` or
/// `"1h 30m"` (humantime's syntax). The reason names what is wrong and shows the form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORM: &str = "write e.g. \"2s\", \"200ms\", \"110m\"";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {FORM}"));
    }
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            format!("{text:?} has no unit; add ms, s, m, h or d")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("unknown unit {unit:?}; use ms, s, m, h or d")
        }
        humantime::DurationError::NumberOverflow => format!("{text:?} is too large"),
        humantime::DurationError::Empty => format!("empty duration; {FORM}"),
        _ => format!("expected a number followed by a unit; {FORM}"),
    })
}

#[cfg(test)]
mod tests;
