//! Layering of the settings in force: the config file, then the command line's overrides,
//! then the environment's defaults and the orchestrators' index; and the tmux client they name.

use super::{Config, ConfigError, TmuxSocketSetting};
use crate::procs::{TmuxClient, TmuxSocket};
use std::path::{Path, PathBuf};

/// `state_dir` from the config, else `$STATE_DIRECTORY` (systemd `StateDirectory=`), else
/// `$XDG_STATE_HOME/agent-reaper`, else `~/.local/state/agent-reaper` (none without HOME).
pub fn state_dir(config: &Config) -> Option<PathBuf> {
    if let Some(dir) = &config.state_dir {
        return Some(dir.clone());
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dirs) = env("STATE_DIRECTORY") {
        // systemd passes a colon-separated list when several are configured.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        return Some(PathBuf::from(first));
    }
    if let Some(xdg) = env("XDG_STATE_HOME") {
        return Some(PathBuf::from(xdg).join("agent-reaper"));
    }
    env("HOME").map(|home| PathBuf::from(home).join(".local/state/agent-reaper"))
}

/// What the command line sets over the config file; kept by the daemon so a reload layers
/// the file it re-reads the same way.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The config file named (none: defaults).
    pub config_file: Option<PathBuf>,
    /// Workspace bases given on the command line (none: the file's, else the environment's).
    pub workspace_bases: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

/// The settings in force: file (if any), then flags, then the environment's defaults.
pub fn resolve_config(overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut config = match &overrides.config_file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !overrides.workspace_bases.is_empty() {
        config.workspace_bases = overrides.workspace_bases.clone();
    }
    if config.workspace_bases.is_empty() {
        config.workspace_bases = vec![match std::env::var_os("CLAUDE_ORCHESTRATOR_WORKSPACE") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from("./.agent-workspace"),
        }];
    }
    if config.discover_workspaces
        && let Some(home) = std::env::var_os("HOME")
    {
        let index = crate::registry::sqlite::default_index_path(Path::new(&home));
        match crate::registry::sqlite::discover_bases(&index) {
            Ok(found) => {
                for base in found {
                    if !config.workspace_bases.contains(&base) {
                        config.workspace_bases.push(base);
                    }
                }
            }
            Err(e) => eprintln!("agent-reaper: warning: discover_workspaces: {e}"),
        }
    }
    if overrides.state_dir.is_some() {
        config.state_dir = overrides.state_dir.clone();
    }
    Ok(config)
}

/// The tmux client the settings name (binary, socket, timeout).
pub fn tmux_client(config: &Config) -> TmuxClient {
    TmuxClient {
        binary: config.tmux_binary.clone(),
        socket: config.tmux_socket.as_ref().map(|s| match s {
            TmuxSocketSetting::Name(n) => TmuxSocket::Name(n.clone()),
            TmuxSocketSetting::Path(p) => TmuxSocket::Path(p.clone()),
        }),
        timeout: config.tmux_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_a_reload_layers_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent-reaper.toml");
        std::fs::write(
            &file,
            "workspace_bases = [\"/from/file\"]\nstate_dir = \"/file/state\"\nsettle = \"3s\"\n",
        )
        .unwrap();
        let file_only = Overrides {
            config_file: Some(file.clone()),
            ..Overrides::default()
        };
        let c = resolve_config(&file_only).unwrap();
        assert_eq!(c.workspace_bases, [PathBuf::from("/from/file")]);
        assert_eq!(c.state_dir, Some(PathBuf::from("/file/state")));
        let flags = Overrides {
            config_file: Some(file.clone()),
            workspace_bases: vec![PathBuf::from("/from/flag")],
            state_dir: Some(PathBuf::from("/flag/state")),
        };
        let c = resolve_config(&flags).unwrap();
        assert_eq!(c.workspace_bases, [PathBuf::from("/from/flag")]);
        assert_eq!(c.state_dir, Some(PathBuf::from("/flag/state")));
        // The file's other keys still count; a changed file is read again with the same flags.
        assert_eq!(c.settle, std::time::Duration::from_secs(3));
        std::fs::write(&file, "settle = \"5s\"\n").unwrap();
        let c = resolve_config(&flags).unwrap();
        assert_eq!(c.settle, std::time::Duration::from_secs(5));
        assert_eq!(c.workspace_bases, [PathBuf::from("/from/flag")]);
        // A broken file is an error naming it, not defaults.
        std::fs::write(&file, "settle = \"soon\"\n").unwrap();
        let err = resolve_config(&flags).unwrap_err().to_string();
        assert!(
            err.contains("agent-reaper.toml") && err.contains("settle"),
            "{err}"
        );
    }
}
