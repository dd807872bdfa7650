//! The key this user trusts for each local repository, recorded by `repo init` outside the
//! repository (whoever can write a repository could otherwise name their own key in it):
//! one file per repository in `$XDG_CONFIG_HOME/virt-pipeline/trusted-repositories/`
//! (`~/.config/...` without it), named by a hash of the repository's absolute path and
//! holding `FINGERPRINT PATH`; a repository on object storage is named by its URL and
//! endpoint instead of a path.

use crate::base::sign;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The directory of recorded keys, or None when neither XDG_CONFIG_HOME nor HOME is set.
pub fn store_dir() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("virt-pipeline").join("trusted-repositories"))
}

fn entry_path(store: &Path, id: &str) -> PathBuf {
    store.join(hex::encode(&Sha256::digest(id.as_bytes())[..16]))
}

/// A local repository's name in the store: its absolute path.
fn local_id(repo_dir: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(repo_dir).with_context(|| format!("cannot find {}", repo_dir.display()))?;
    Ok(abs.to_string_lossy().into_owned())
}

/// Records `fingerprint` as the key of the repository at `repo_dir` (which must exist).
pub fn record(repo_dir: &Path, fingerprint: &str) -> Result<()> {
    record_id(&local_id(repo_dir)?, fingerprint)
}

/// The key recorded for the repository at `repo_dir`, if any.
pub fn pinned(repo_dir: &Path) -> Result<Option<String>> {
    match local_id(repo_dir) {
        Ok(id) => pinned_id(&id),
        Err(_) => Ok(None),
    }
}

/// Records `fingerprint` as the key of the repository named `id` (a path, or a URL).
pub fn record_id(id: &str, fingerprint: &str) -> Result<()> {
    let store = store_dir()
        .ok_or_else(|| anyhow!("cannot record the repository's key: neither XDG_CONFIG_HOME nor HOME is set"))?;
    std::fs::create_dir_all(&store).with_context(|| format!("cannot create {}", store.display()))?;
    crate::base::atomic::write(&entry_path(&store, id), format!("{fingerprint} {id}\n").as_bytes())
        .with_context(|| format!("cannot record the key of {id}"))
}

/// The key recorded for the repository named `id`, if any.
pub fn pinned_id(id: &str) -> Result<Option<String>> {
    let Some(store) = store_dir() else { return Ok(None) };
    let path = entry_path(&store, id);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (fpr, recorded) = text.trim_end_matches('\n').split_once(' ').unwrap_or((text.trim(), ""));
    if recorded != id {
        bail!("{}: records {recorded}, not {id}", path.display());
    }
    let fpr = sign::parse_fingerprint(fpr).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Some(fpr))
}
