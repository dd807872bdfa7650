//! Secrets never reach a log. Two layers: the configuration dump and the command lines a
//! stage logs name environment variables but never their values and hide passwords
//! (`redact_config`, `describe_command`); and every text written to a stage log or the
//! terminal is scrubbed of the secret values this run registered (`register`, `scrub`): the
//! root passwords, the passwords of answers files, and the `[env]` and `[values]` entries a
//! pipeline lists under `secrets`.

use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// What a secret's value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not scrubbed: replacing every `a` or `no` would make logs
/// unreadable, and such values are no credentials.
const MIN_SECRET_LEN: usize = 4;

/// Marks a value as secret for the rest of the process.
pub fn register(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    if let Ok(mut s) = SECRETS.write() {
        if !s.iter().any(|v| v == value) {
            s.push(value.to_string());
            // Longest first, so a secret containing another is replaced whole.
            s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }
}

/// The text with every registered secret replaced by [`REDACTED`].
pub fn scrub(text: &str) -> Cow<'_, str> {
    let Ok(secrets) = SECRETS.read() else { return Cow::Borrowed(text) };
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in secrets.iter() {
        out = out.replace(s.as_str(), REDACTED);
    }
    Cow::Owned(out)
}

/// Registers the password a virt-customize style spec holds (`password:S`,
/// `locked:password:S`; `file:PATH` registers the file's first line).
pub fn register_password_spec(spec: &str, dir: &std::path::Path) {
    let spec = spec.strip_prefix("locked:").unwrap_or(spec);
    if let Some(p) = spec.strip_prefix("password:") {
        register(p);
    } else if let Some(f) = spec.strip_prefix("file:") {
        if let Ok(text) = std::fs::read_to_string(dir.join(f)) {
            register(text.lines().next().unwrap_or_default());
        }
    }
}

/// The passwords an answers file or an installer command line holds: preseed lines whose
/// type is `password` (`d-i passwd/root-password password S`), kickstart's `rootpw S` and
/// `--password=S`, and `...password=S` kernel arguments.
pub fn answers_secrets(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first().is_some_and(|w| w.starts_with('#')) {
            continue;
        }
        // preseed: owner question type value
        if words.len() >= 4 && words[2] == "password" {
            found.push(words[3..].join(" "));
        }
        // kickstart: rootpw [--plaintext|--iscrypted|--lock] VALUE
        if words.first() == Some(&"rootpw") {
            if let Some(v) = words[1..].iter().find(|w| !w.starts_with("--")) {
                found.push(v.to_string());
            }
        }
        for w in &words {
            if let Some((k, v)) = w.split_once('=') {
                if k.trim_start_matches('-').to_ascii_lowercase().contains("password") && !v.is_empty() {
                    found.push(v.to_string());
                }
            }
        }
    }
    found
}

/// A stage's configuration as its key digests it: every registered secret inside a string
/// replaced by `[secret:HMAC]`, a keyed hash under `key` (the work directory's key secret,
/// never published). A layer key, which appears in logs, object names and manifests, then
/// tells nothing about a password: a weak one cannot be tried against it offline. The same
/// secret under the same key gives the same key, so caching works as before.
pub fn keyed_config(value: &serde_json::Value, key: &[u8]) -> serde_json::Value {
    use hmac::{Hmac, Mac};
    use serde_json::Value;
    let Ok(secrets) = SECRETS.read() else { return value.clone() };
    let hide = |text: &str| -> String {
        let mut out = text.to_string();
        for s in secrets.iter().filter(|s| text.contains(s.as_str())) {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
            mac.update(s.as_bytes());
            out = out.replace(s.as_str(), &format!("[secret:{}]", hex::encode(mac.finalize().into_bytes())));
        }
        out
    };
    fn walk(value: &Value, hide: &dyn Fn(&str) -> String) -> Value {
        match value {
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), walk(v, hide))).collect()),
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, hide)).collect()),
            Value::String(s) => Value::String(hide(s)),
            other => other.clone(),
        }
    }
    walk(value, &hide)
}

/// A stage's configuration as its log shows it: environment values and passwords replaced.
pub fn redact_config(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("env", Value::Object(vars)) => {
                            Value::Object(vars.keys().map(|n| (n.clone(), Value::from(REDACTED))).collect())
                        }
                        ("root_password" | "password", Value::String(_)) => Value::from(REDACTED),
                        _ => redact_config(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_config).collect()),
        Value::String(s) => Value::String(scrub(s).into_owned()),
        other => other.clone(),
    }
}

/// A command as a log shows it: the program and its arguments, and the names (never the
/// values) of the environment variables it sets. `Command`'s own debug form prints values.
pub fn describe_command(cmd: &std::process::Command) -> String {
    let mut text = shell_quote(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    let names: Vec<String> = cmd.get_envs().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
    if !names.is_empty() {
        text.push_str(&format!("   (env: {})", names.join(", ")));
    }
    scrub(&text).into_owned()
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_config_hides_secrets_behind_a_keyed_hash() {
        register("hunter2-secret");
        let config = serde_json::json!({
            "root_password": "password:hunter2-secret",
            "steps": [{ "run": "echo hunter2-secret > /x" }],
            "hostname": "web1",
        });
        let a = keyed_config(&config, b"one key");
        let again = keyed_config(&config, b"one key");
        let b = keyed_config(&config, b"another key");
        assert_eq!(a, again, "a stable key on one machine");
        assert_ne!(a, b, "nothing to try a password against without the key");
        let text = a.to_string();
        assert!(!text.contains("hunter2") && text.contains("password:[secret:") && text.contains("\"web1\""), "{text}");
    }

    #[test]
    fn registered_values_are_scrubbed_longest_first() {
        register("hunter2-secret");
        register("hunter2-secret-longer");
        register("abc");
        assert_eq!(scrub("x hunter2-secret-longer y hunter2-secret z"), "x [redacted] y [redacted] z");
        assert_eq!(scrub("abc stays: too short to be a credential"), "abc stays: too short to be a credential");
    }

    #[test]
    fn answers_files_yield_their_passwords() {
        let preseed = "d-i passwd/root-password password r00t-Pw\n\
                       d-i passwd/root-password-again password r00t-Pw\n\
                       d-i passwd/user-password-crypted password $6$salt$hash\n\
                       # d-i passwd/x password commented\n\
                       d-i mirror/country string manual\n";
        let got = answers_secrets(preseed);
        assert!(got.contains(&"r00t-Pw".to_string()) && got.contains(&"$6$salt$hash".to_string()), "{got:?}");
        assert!(!got.iter().any(|g| g == "commented" || g == "manual"), "{got:?}");
        let ks = "rootpw --plaintext KsSecret1\nuser --name=ops --password=OpsSecret2\n";
        let got = answers_secrets(ks);
        assert!(got.contains(&"KsSecret1".to_string()) && got.contains(&"OpsSecret2".to_string()), "{got:?}");
        assert_eq!(answers_secrets("auto passwd/root-password=CmdSecret3 quiet"), vec!["CmdSecret3"]);
    }

    #[test]
    fn configuration_dumps_hide_env_values_and_passwords() {
        let config = serde_json::json!({
            "env": { "TOKEN": "t0ken-value", "LANG": "C.UTF-8" },
            "steps": [ { "root_password": "password:Sw0rdfish" }, { "run_command": "echo hi" } ],
            "config": { "root_password": "password:Sw0rdfish", "hostname": "h" },
        });
        let text = redact_config(&config).to_string();
        for hidden in ["t0ken-value", "C.UTF-8", "Sw0rdfish"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert!(text.contains("TOKEN") && text.contains("echo hi") && text.contains("\"h\""), "{text}");
    }

    #[test]
    fn command_lines_name_variables_not_values() {
        let mut cmd = std::process::Command::new("debootstrap");
        cmd.env("http_proxy", "http://user:pr0xy-pass@proxy:3128").arg("--variant=minbase").arg("a b");
        let text = describe_command(&cmd);
        assert_eq!(text, "debootstrap --variant=minbase 'a b'   (env: http_proxy)");
        assert!(format!("{cmd:?}").contains("pr0xy-pass"), "the debug form would have leaked it");
    }
}
