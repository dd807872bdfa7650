//! Scratch directories: one per stage run (or command) under the work directory, named
//! `scratch-PURPOSE-PID-RANDOM` so that a clean-up can tell one left by a killed run (its
//! process is gone) from one in use.

use anyhow::{Context, Result};
use std::path::Path;

/// A new scratch directory, removed on drop.
pub fn dir(work_dir: &Path, purpose: &str) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(work_dir)?;
    tempfile::Builder::new()
        .prefix(&format!("scratch-{purpose}-{}-", std::process::id()))
        .tempdir_in(work_dir)
        .with_context(|| format!("cannot create a scratch directory in {}", work_dir.display()))
}

/// Whether `name` is a scratch directory's name whose process is gone.
pub fn left_by_dead_run(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("scratch-") else { return false };
    rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| !pid_alive(p))
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
