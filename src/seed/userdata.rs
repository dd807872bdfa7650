//! The user-data file, in Virtlet's order: the generated part (`mounts`, `write_files`)
//! first, then the user's document (`user_data`), then the source file
//! (`user_data_source`), merged or overwriting by `user_data_mode`; or, in script mode, the
//! user's script alone.

use super::yaml::{self, Node};
use super::{SeedConfig, UserData, UserDataMode};
use crate::bad_input;
use anyhow::Result;
use base64::Engine;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A host file a seed names, as it really is on disk: it must lie inside `dir` (the seed
/// file's directory) once every symlink is followed, as rsync sources lie inside Virter's
/// working directory. A seed may carry secrets, so nothing else on the host may reach it
/// (`/proc/self/environ`, a link to `/etc/shadow`).
fn confined(dir: &Path, name: &str) -> std::result::Result<PathBuf, String> {
    let root = std::fs::canonicalize(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let real = std::fs::canonicalize(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "{} lies outside the seed file's directory {} (it resolves to {}); files a seed reads must be inside it",
            path.display(),
            root.display(),
            real.display()
        ));
    }
    Ok(real)
}

/// The user-data text and the host files read to make it.
pub fn build(config: &SeedConfig, dir: &Path, origin: &str) -> Result<(String, Vec<PathBuf>)> {
    let mut inputs = Vec::new();
    let resolve = |p: &str| confined(dir, p);
    let read = |at: &str, file: &str, inputs: &mut Vec<PathBuf>| -> Result<(String, String)> {
        let full = resolve(file).map_err(|e| bad_input!("{origin}: {at}: {e}"))?;
        let text = std::fs::read_to_string(&full)
            .map_err(|e| bad_input!("{origin}: {at}: cannot read {}: {e}", full.display()))?;
        inputs.push(full.clone());
        Ok((text, format!("{at} ({})", full.display())))
    };
    let user = match &config.user_data {
        None => None,
        Some(UserData::Text(t)) => Some((t.clone(), "user_data".to_string())),
        Some(UserData::File { file }) => Some(read("user_data.file", file, &mut inputs)?),
    };
    let source = match &config.user_data_source {
        None => None,
        Some(file) => Some(read("user_data_source", file, &mut inputs)?),
    };

    if config.user_data_mode == UserDataMode::Script {
        let refuse = |key: &str| {
            bad_input!(
                "{origin}: {key}: in script mode user-data is your script alone, so cloud-init never sees {key}; remove it, or use user_data_mode = \"merge\""
            )
        };
        if !config.write_files.is_empty() {
            return Err(refuse("write_files"));
        }
        if !config.mounts.is_empty() {
            return Err(refuse("mounts"));
        }
        if source.is_some() {
            return Err(refuse("user_data_source"));
        }
        let Some((script, at)) = user else {
            return Err(bad_input!(
                "{origin}: user_data: script mode needs the script in user_data (text or {{ file = \"...\" }})"
            ));
        };
        if !script.starts_with("#!") {
            return Err(bad_input!(
                "{origin}: {at}: in script mode user_data is a script and must start with `#!` (e.g. #!/bin/sh)"
            ));
        }
        return Ok((script, inputs));
    }

    let mut generated = Node::map();
    if !config.mounts.is_empty() {
        generated.insert(Node::str("mounts"), mounts(config, origin)?);
    }
    if !config.write_files.is_empty() {
        generated.insert(Node::str("write_files"), write_files(config, &resolve, origin, &mut inputs)?);
    }
    let mut doc = generated;
    for (text, at) in user.into_iter().chain(source) {
        if text.starts_with("#!") {
            return Err(bad_input!(
                "{origin}: {at}: this is a script, not cloud-config; set user_data_mode = \"script\" to use it as user-data"
            ));
        }
        let parsed =
            yaml::parse_mapping(&text).map_err(|e| bad_input!("{origin}: {at}: not valid cloud-config YAML: {e}"))?;
        doc = match config.user_data_mode {
            UserDataMode::Overwrite => yaml::overwrite(doc, parsed),
            _ => yaml::merge(doc, parsed),
        };
    }
    Ok((yaml::to_cloud_config(&doc), inputs))
}

fn mounts(config: &SeedConfig, origin: &str) -> Result<Node> {
    let mut out = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let field = |key: &str, value: &str| -> Result<()> {
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(bad_input!(
                    "{origin}: mounts[{i}].{key}: `{value}` must be one word (it is an fstab field)"
                ));
            }
            Ok(())
        };
        field("device", &m.device)?;
        field("path", &m.path)?;
        if !m.path.starts_with('/') {
            return Err(bad_input!("{origin}: mounts[{i}].path: `{}` must be an absolute path in the guest", m.path));
        }
        let mut entry = vec![Node::str(&m.device), Node::str(&m.path)];
        if m.fstype.is_some() || m.options.is_some() {
            let fstype = m.fstype.as_deref().unwrap_or("auto");
            field("fstype", fstype)?;
            entry.push(Node::str(fstype));
        }
        if let Some(options) = &m.options {
            field("options", options)?;
            entry.push(Node::str(options));
        }
        out.push(Node::Seq(entry));
    }
    Ok(Node::Seq(out))
}

/// One `write_files` entry per host file; a directory gives one per file below it.
fn write_files(
    config: &SeedConfig,
    resolve: &dyn Fn(&str) -> std::result::Result<PathBuf, String>,
    origin: &str,
    inputs: &mut Vec<PathBuf>,
) -> Result<Node> {
    let mut out = Vec::new();
    for (i, wf) in config.write_files.iter().enumerate() {
        let at = format!("write_files[{i}]");
        if !wf.path.starts_with('/') || wf.path.contains(['\n', '\0']) {
            return Err(bad_input!("{origin}: {at}.path: `{}` must be an absolute path in the guest", wf.path));
        }
        let mode = match &wf.permissions {
            None => None,
            Some(p) => Some(parse_mode(p).ok_or_else(|| {
                bad_input!("{origin}: {at}.permissions: `{p}` is not an octal mode such as \"0644\" (quoted: a string)")
            })?),
        };
        if let Some(owner) = &wf.owner {
            if owner.is_empty() || owner.contains(char::is_whitespace) {
                return Err(bad_input!("{origin}: {at}.owner: `{owner}` is not `user` or `user:group`"));
            }
        }
        let source = resolve(&wf.source).map_err(|e| bad_input!("{origin}: {at}.source: {e}"))?;
        let meta = std::fs::metadata(&source)
            .map_err(|e| bad_input!("{origin}: {at}.source: cannot read {}: {e}", source.display()))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            walk(&source, "", 0, &mut files)
                .map_err(|e| bad_input!("{origin}: {at}.source: {}: {e}", source.display()))?;
            // A link below the directory may point out of it.
            for (file, _) in &mut files {
                *file = resolve(&file.to_string_lossy()).map_err(|e| bad_input!("{origin}: {at}.source: {e}"))?;
            }
            if files.is_empty() {
                return Err(bad_input!("{origin}: {at}.source: {} holds no files", source.display()));
            }
        } else if meta.is_file() {
            files.push((source.clone(), String::new()));
        } else {
            return Err(bad_input!("{origin}: {at}.source: {} is neither a file nor a directory", source.display()));
        }
        for (file, rel) in files {
            let data = std::fs::read(&file)
                .map_err(|e| bad_input!("{origin}: {at}.source: cannot read {}: {e}", file.display()))?;
            let file_mode = std::fs::metadata(&file).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
            let guest =
                if rel.is_empty() { wf.path.clone() } else { format!("{}/{rel}", wf.path.trim_end_matches('/')) };
            let mut entry = Node::map();
            entry.insert(Node::str("path"), Node::str(guest));
            entry.insert(Node::str("encoding"), Node::str("b64"));
            entry.insert(Node::str("content"), Node::str(base64::engine::general_purpose::STANDARD.encode(&data)));
            entry.insert(Node::str("permissions"), Node::str(format!("{:04o}", mode.unwrap_or(file_mode))));
            if let Some(owner) = &wf.owner {
                entry.insert(Node::str("owner"), Node::str(owner));
            }
            out.push(entry);
            inputs.push(file);
        }
    }
    Ok(Node::Seq(out))
}

/// Every file below `dir` (symlinks followed), sorted, with its path relative to the top.
fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<(PathBuf, String)>) -> std::io::Result<()> {
    if depth > 32 {
        return Err(std::io::Error::other("directories nest more than 32 deep (a symlink loop?)"));
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(&path, &child_rel, depth + 1, out)?;
        } else if meta.is_file() {
            out.push((path, child_rel));
        } else {
            return Err(std::io::Error::other(format!("{} is neither a file nor a directory", path.display())));
        }
    }
    Ok(())
}

/// "644", "0644", "0o644" → 0o644 (at most 0o7777).
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}
