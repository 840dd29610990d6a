//! `[[hooks]]` tables → validated `HookSpec`s, and their argv templates (pure; run by `crate::hooks`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The statuses a transition can end in (`on` filters on these).
pub const HOOK_STATUSES: &[&str] = crate::model::TERMINAL_STATUSES;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
pub const DEFAULT_CONCURRENCY: usize = 4;

/// One `[[hooks]]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub name: Option<String>,
    pub on: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub retry_after: Option<String>,
    pub max_attempts: Option<u32>,
    pub env: Option<BTreeMap<String, String>>,
}

/// What a hook's argument may name, filled per transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    TaskId,
    AgentId,
    Status,
    Reason,
    WorkspaceBase,
}

impl Var {
    pub const ALL: [Var; 5] = [
        Var::TaskId,
        Var::AgentId,
        Var::Status,
        Var::Reason,
        Var::WorkspaceBase,
    ];

    pub fn placeholder(self) -> &'static str {
        match self {
            Var::TaskId => "task_id",
            Var::AgentId => "agent_id",
            Var::Status => "status",
            Var::Reason => "reason",
            Var::WorkspaceBase => "workspace_base",
        }
    }

    /// The same value in the hook's environment.
    pub fn env_name(self) -> &'static str {
        match self {
            Var::TaskId => "AGENT_REAPER_TASK_ID",
            Var::AgentId => "AGENT_REAPER_AGENT_ID",
            Var::Status => "AGENT_REAPER_STATUS",
            Var::Reason => "AGENT_REAPER_REASON",
            Var::WorkspaceBase => "AGENT_REAPER_WORKSPACE_BASE",
        }
    }

    fn parse(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.placeholder() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// One argv element: literal text and `{placeholders}`; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!(
                            "unclosed '{{' in {source:?}; write {{{{ for a literal brace"
                        ));
                    }
                    let var = Var::parse(&name).ok_or_else(|| {
                        format!(
                            "unknown placeholder {{{name}}} in {source:?}; use one of {} \
                             (write {{{{ and }}}} for literal braces)",
                            Var::ALL
                                .iter()
                                .map(|v| format!("{{{}}}", v.placeholder()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Var(var));
                }
                '}' => {
                    return Err(format!(
                        "lone '}}' in {source:?}; write }}}} for a literal brace"
                    ));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: source.to_string(),
            pieces,
        })
    }

    /// The argument for one transition: each placeholder replaced by its value, as one
    /// argument (no shell ever sees it, so no quoting).
    pub fn render(&self, values: &Values) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(values.get(*v)),
            }
        }
        out
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The values one transition gives its hooks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Values {
    pub task_id: String,
    pub agent_id: String,
    pub status: String,
    pub reason: String,
    pub workspace_base: String,
}

impl Values {
    pub fn get(&self, var: Var) -> &str {
        match var {
            Var::TaskId => &self.task_id,
            Var::AgentId => &self.agent_id,
            Var::Status => &self.status,
            Var::Reason => &self.reason,
            Var::WorkspaceBase => &self.workspace_base,
        }
    }
}

/// A validated hook.
#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub name: String,
    /// Statuses that fire it.
    pub on: Vec<String>,
    pub command: Vec<Template>,
    pub timeout: Duration,
    pub retry_after: Duration,
    /// 0: retried until it succeeds.
    pub max_attempts: u32,
    pub env: BTreeMap<String, String>,
}

impl HookSpec {
    pub fn fires_on(&self, status: &str) -> bool {
        self.on.iter().any(|s| s == status)
    }

    pub fn argv(&self, values: &Values) -> Vec<String> {
        self.command.iter().map(|t| t.render(values)).collect()
    }

    /// The environment it adds to the daemon's: its `env` table, then the transition's values.
    pub fn env_for(&self, values: &Values, attempt: u32) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for var in Var::ALL {
            env.push((var.env_name().to_string(), values.get(var).to_string()));
        }
        env.push(("AGENT_REAPER_HOOK".into(), self.name.clone()));
        env.push(("AGENT_REAPER_ATTEMPT".into(), attempt.to_string()));
        env
    }

    /// The program as written: an absolute path or a bare name looked up on `PATH`.
    pub fn program(&self) -> &str {
        self.command[0].source()
    }
}

/// Validates the `[[hooks]]` tables; an error names the hook (by position) and the fix.
pub fn parse_hooks(
    raw: Vec<RawHook>,
    parse_duration: fn(&str) -> Result<Duration, String>,
) -> Result<Vec<HookSpec>, String> {
    let mut specs: Vec<HookSpec> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let at = |msg: String| format!("hooks[{i}]: {msg}");
        let command = raw.command.unwrap_or_default();
        let Some(program) = command.first() else {
            return Err(at("command is missing or empty; give the program and its \
                 arguments as an array, e.g. command = [\"/usr/local/bin/on-transition\", \"{task_id}\"]"
                .into()));
        };
        if program.contains('{') {
            return Err(at(format!(
                "the program {program:?} may not contain placeholders; pass them as arguments"
            )));
        }
        if program.contains('/') && !program.starts_with('/') {
            return Err(at(format!(
                "the program {program:?} is a relative path; give an absolute path or a bare \
                 name looked up on PATH"
            )));
        }
        let command = command
            .iter()
            .map(|a| Template::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        let on = raw
            .on
            .unwrap_or_else(|| HOOK_STATUSES.iter().map(|s| s.to_string()).collect());
        if on.is_empty() {
            return Err(at(
                "on = [] never fires; list statuses, or leave on out for every terminal status"
                    .into(),
            ));
        }
        for status in &on {
            if !HOOK_STATUSES.contains(&status.as_str()) {
                return Err(at(format!(
                    "on: {status:?} is not a status agent-reaper sets; use some of {}",
                    HOOK_STATUSES.join(", ")
                )));
            }
        }
        let dur = |key: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|e| at(format!("{key} = {v:?}: {e}"))),
        };
        let timeout = dur("timeout", raw.timeout, DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(at("timeout must be longer than zero".into()));
        }
        let name = match raw.name {
            Some(n) if n.trim().is_empty() => return Err(at("name is empty".into())),
            Some(n) => n,
            None => Path::new(program)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| program.clone()),
        };
        if specs.iter().any(|s| s.name == name) {
            return Err(at(format!(
                "a second hook named {name:?}; give each hook a distinct name = \"...\""
            )));
        }
        let env = raw.env.unwrap_or_default();
        if let Some(k) = env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(at(format!("env: {k:?} is not a variable name")));
        }
        specs.push(HookSpec {
            name,
            on,
            command,
            timeout,
            retry_after: dur("retry_after", raw.retry_after, DEFAULT_RETRY_AFTER)?,
            max_attempts: raw.max_attempts.unwrap_or(0),
            env,
        });
    }
    Ok(specs)
}

/// Where `program` would be run from: itself when absolute, else the first executable
/// regular file of that name on `path` (`$PATH`). An error says what is wrong.
pub fn resolve_program(program: &str, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.starts_with('/') {
        let p = PathBuf::from(program);
        return match std::fs::metadata(&p) {
            Err(e) => Err(format!("{program}: {e}")),
            Ok(m) if !m.is_file() => Err(format!("{program}: not a regular file")),
            Ok(_) if !executable(&p) => Err(format!(
                "{program}: not executable (chmod +x, or name its interpreter as the program)"
            )),
            Ok(_) => Ok(p),
        };
    }
    let dirs = path.map(std::env::split_paths).into_iter().flatten();
    for dir in dirs {
        let candidate = dir.join(program);
        if executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{program}: not found on PATH; give an absolute path or install it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            task_id: "TASK-20260427-120000-a1b2c3d4".into(),
            agent_id: "fixer-120001-0a0b0c".into(),
            status: "failed".into(),
            reason: "session_not_found".into(),
            workspace_base: "/srv/ws with space".into(),
        }
    }

    #[test]
    fn placeholders_become_whole_arguments_without_any_shell() {
        let t = Template::parse("--task={task_id}").unwrap();
        assert_eq!(t.render(&values()), "--task=TASK-20260427-120000-a1b2c3d4");
        let t = Template::parse("{workspace_base}").unwrap();
        assert_eq!(t.render(&values()), "/srv/ws with space");
        let t = Template::parse("{agent_id}:{status}:{reason}").unwrap();
        assert_eq!(
            t.render(&values()),
            "fixer-120001-0a0b0c:failed:session_not_found"
        );
        // A value that looks like shell or a placeholder stays literal text.
        let mut v = values();
        v.reason = "$(rm -rf ~); {task_id}".into();
        let t = Template::parse("{reason}").unwrap();
        assert_eq!(t.render(&v), "$(rm -rf ~); {task_id}");
    }

    #[test]
    fn doubled_braces_are_literal_and_unknown_placeholders_are_refused() {
        let t = Template::parse("{{\"id\": \"{agent_id}\"}}").unwrap();
        assert_eq!(t.render(&values()), "{\"id\": \"fixer-120001-0a0b0c\"}");
        let e = Template::parse("{taskid}").unwrap_err();
        assert!(e.contains("{taskid}") && e.contains("{task_id}"), "{e}");
        assert!(Template::parse("a}b").unwrap_err().contains("lone"));
        assert!(Template::parse("{task_id").is_err());
    }

    fn parse(text: &str) -> Result<Vec<HookSpec>, String> {
        #[derive(Deserialize)]
        struct File {
            hooks: Vec<RawHook>,
        }
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        parse_hooks(f.hooks, super::super::parse_duration)
    }

    #[test]
    fn the_documented_example_parses() {
        // The commented `[[hooks]]` block of config/agent-reaper.toml, uncommented.
        let text = include_str!("../../config/agent-reaper.toml");
        let block: String = text
            .lines()
            .skip_while(|l| *l != "# [[hooks]]")
            .take_while(|l| *l != "#")
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let specs = parse(&block).unwrap();
        assert_eq!(specs[0].name, "orchestrator-2026");
        assert_eq!(specs[0].command.len(), 8);
        assert!(specs[0].fires_on("terminated") && !specs[0].fires_on("killed"));
        assert_eq!(specs[0].env.len(), 1);
    }

    #[test]
    fn defaults_and_filters() {
        let specs = parse("[[hooks]]\ncommand = [\"/bin/true\", \"{task_id}\"]\n").unwrap();
        let h = &specs[0];
        assert_eq!(h.name, "true");
        assert_eq!(h.timeout, DEFAULT_TIMEOUT);
        assert_eq!(h.max_attempts, 0);
        assert!(h.fires_on("failed") && h.fires_on("terminated") && h.fires_on("completed"));
        let specs = parse(
            "[[hooks]]\nname = \"o\"\non = [\"failed\", \"terminated\"]\ncommand = [\"x\"]\ntimeout = \"2s\"\n",
        )
        .unwrap();
        assert!(specs[0].fires_on("failed") && !specs[0].fires_on("completed"));
        assert_eq!(specs[0].timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_hooks_are_refused_with_the_fix() {
        for (text, needle) in [
            ("[[hooks]]\ncommand = []\n", "command is missing"),
            ("[[hooks]]\non = [\"failed\"]\n", "command is missing"),
            ("[[hooks]]\ncommand = [\"bin/x\"]\n", "relative path"),
            ("[[hooks]]\ncommand = [\"{task_id}\"]\n", "placeholders"),
            (
                "[[hooks]]\ncommand = [\"x\"]\non = [\"running\"]\n",
                "not a status",
            ),
            ("[[hooks]]\ncommand = [\"x\"]\non = []\n", "never fires"),
            (
                "[[hooks]]\ncommand = [\"x\"]\ntimeout = \"0s\"\n",
                "longer than zero",
            ),
            (
                "[[hooks]]\ncommand = [\"x\", \"{id}\"]\n",
                "unknown placeholder",
            ),
            (
                "[[hooks]]\ncommand = [\"/a/x\"]\n[[hooks]]\ncommand = [\"/b/x\"]\n",
                "distinct name",
            ),
            (
                "[[hooks]]\ncommand = [\"x\"]\nshell = true\n",
                "unknown field",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn environment_carries_the_same_values() {
        let specs = parse("[[hooks]]\ncommand = [\"x\"]\nenv = { ORCH = \"/opt/o\" }\n").unwrap();
        let env = specs[0].env_for(&values(), 3);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ORCH"), Some("/opt/o"));
        assert_eq!(
            get("AGENT_REAPER_TASK_ID"),
            Some("TASK-20260427-120000-a1b2c3d4")
        );
        assert_eq!(get("AGENT_REAPER_AGENT_ID"), Some("fixer-120001-0a0b0c"));
        assert_eq!(get("AGENT_REAPER_STATUS"), Some("failed"));
        assert_eq!(get("AGENT_REAPER_REASON"), Some("session_not_found"));
        assert_eq!(
            get("AGENT_REAPER_WORKSPACE_BASE"),
            Some("/srv/ws with space")
        );
        assert_eq!(get("AGENT_REAPER_ATTEMPT"), Some("3"));
    }

    #[test]
    fn programs_resolve_on_path_or_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("hook");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = Some(dir.path().as_os_str());
        assert_eq!(resolve_program("hook", path).unwrap(), exe);
        assert!(
            resolve_program("plain", path)
                .unwrap_err()
                .contains("not found")
        );
        assert!(
            resolve_program(plain.to_str().unwrap(), path)
                .unwrap_err()
                .contains("not executable")
        );
        assert!(resolve_program("/nonexistent/hook", path).is_err());
        assert!(resolve_program(dir.path().to_str().unwrap(), path).is_err());
    }
}
