//! The AWS shared files (`~/.aws/credentials`, `~/.aws/config`): a profile's static keys
//! and region, for hosts configured with `aws configure` rather than environment variables.
//!
//! Only what `object_store` lacks: it reads the environment, web identity, ECS and EC2
//! instance credentials itself. Profiles that name SSO, `credential_process` or a role to
//! assume are not followed here (set the environment variables, or use an instance role).

use std::path::PathBuf;

/// Keys and region of one profile, as far as the files give them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

/// `$AWS_PROFILE`, else `default`.
pub(crate) fn profile_name() -> String {
    std::env::var("AWS_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Reads the profile from `$AWS_SHARED_CREDENTIALS_FILE` (else `~/.aws/credentials`) and
/// `$AWS_CONFIG_FILE` (else `~/.aws/config`). Missing files give nothing.
pub(crate) fn load(name: &str) -> Profile {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, rel: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(rel)))
    };
    let read = |p: Option<PathBuf>| p.and_then(|p| std::fs::read_to_string(p).ok());
    let credentials = read(file("AWS_SHARED_CREDENTIALS_FILE", "credentials")).unwrap_or_default();
    let config = read(file("AWS_CONFIG_FILE", "config")).unwrap_or_default();
    from_texts(name, &credentials, &config)
}

/// The profile `name` from the two files' texts: the credentials file's `[name]`, then the
/// config file's `[profile name]` (`[default]` for the default profile) for what is missing.
pub(crate) fn from_texts(name: &str, credentials: &str, config: &str) -> Profile {
    let config_section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let mut p = Profile::default();
    for (text, section) in [(credentials, name), (config, config_section.as_str())] {
        for (key, value) in section_entries(text, section) {
            let slot = match key.as_str() {
                "aws_access_key_id" => &mut p.access_key_id,
                "aws_secret_access_key" => &mut p.secret_access_key,
                "aws_session_token" => &mut p.session_token,
                "region" => &mut p.region,
                _ => continue,
            };
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value);
            }
        }
    }
    p
}

/// `key = value` lines of the INI section `[section]` (keys lowercased, values trimmed).
fn section_entries(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(head) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = head.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = secret-default

[ci]
aws_access_key_id=AKIACI
aws_secret_access_key=secret-ci
aws_session_token = tok
";
    const CONFIG: &str = "\
[default]
region = eu-west-1
[profile ci]
region = us-west-2
aws_access_key_id = AKIAIGNORED
";

    #[test]
    fn a_profile_takes_keys_from_credentials_and_region_from_config() {
        let p = from_texts("ci", CREDENTIALS, CONFIG);
        assert_eq!(p.access_key_id.as_deref(), Some("AKIACI"));
        assert_eq!(p.secret_access_key.as_deref(), Some("secret-ci"));
        assert_eq!(p.session_token.as_deref(), Some("tok"));
        assert_eq!(p.region.as_deref(), Some("us-west-2"));
        let d = from_texts("default", CREDENTIALS, CONFIG);
        assert_eq!(d.access_key_id.as_deref(), Some("AKIADEFAULT"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        assert_eq!(from_texts("nope", CREDENTIALS, CONFIG), Profile::default());
    }
}
