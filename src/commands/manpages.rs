//! `pipeline manpages DIR` (hidden): man pages generated from the command-line definition,
//! one for the tool and one per subcommand, for the Debian package.

use crate::bad_input;
use anyhow::{Context, Result};
use std::path::Path;

pub fn manpages(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(bad_input!("manpages: {} is not a directory", dir.display()));
    }
    crate::cli::write_manpages(dir).with_context(|| format!("cannot write man pages into {}", dir.display()))
}
