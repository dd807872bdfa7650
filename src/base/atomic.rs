//! The one way files are replaced: written under a unique temporary name in the same
//! directory, synced, then renamed, so a reader (or a run killed half-way) never sees half a
//! file. Imports nothing from this crate.

use anyhow::{Context, Result};
use std::path::Path;

/// Replaces `path` with `data`, mode 0644: what is written this way is served to clients
/// (repository files) or read by other tools (records, reports, known hosts). The temporary
/// name ends in the writer's pid, as the layer cache's own temporaries do, so a cache clean-up
/// removes it only once its writer is gone.
pub fn write(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(&format!("-{}", std::process::id()))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    tmp.write_all(data).with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot sync {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_world_readable_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, b"one").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("no/f"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("/no"), "{err:#}");
    }
}
