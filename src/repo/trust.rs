//! The key this user trusts for each local repository, recorded by `repo init` outside the
//! repository (whoever can write a repository could otherwise name their own key in it):
//! one file per repository in `$XDG_CONFIG_HOME/virt-pipeline/trusted-repositories/`
//! (`~/.config/...` without it), named by a hash of the repository's absolute path and
//! holding `FINGERPRINT PATH`.

use super::sign;
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

fn entry_path(store: &Path, repo_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let abs = std::fs::canonicalize(repo_dir).with_context(|| format!("cannot find {}", repo_dir.display()))?;
    let hash = hex::encode(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..16]);
    Ok((store.join(hash), abs))
}

/// Records `fingerprint` as the key of the repository at `repo_dir` (which must exist).
pub fn record(repo_dir: &Path, fingerprint: &str) -> Result<()> {
    let store = store_dir()
        .ok_or_else(|| anyhow!("cannot record the repository's key: neither XDG_CONFIG_HOME nor HOME is set"))?;
    std::fs::create_dir_all(&store).with_context(|| format!("cannot create {}", store.display()))?;
    let (path, abs) = entry_path(&store, repo_dir)?;
    super::write_atomic(&path, format!("{fingerprint} {}\n", abs.display()).as_bytes())
        .with_context(|| format!("cannot record the key of {}", repo_dir.display()))
}

/// The key recorded for the repository at `repo_dir`, if any.
pub fn pinned(repo_dir: &Path) -> Result<Option<String>> {
    let Some(store) = store_dir() else { return Ok(None) };
    let Ok((path, abs)) = entry_path(&store, repo_dir) else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (fpr, recorded) = text.trim_end_matches('\n').split_once(' ').unwrap_or((text.trim(), ""));
    if Path::new(recorded) != abs {
        bail!("{}: records {recorded}, not {}", path.display(), abs.display());
    }
    let fpr = sign::parse_fingerprint(fpr).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Some(fpr))
}
