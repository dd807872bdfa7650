//! `pipeline serve`: a local repository over HTTP.

use crate::repo::Repo;
use anyhow::Result;
use std::path::Path;

pub fn serve(dir: &Path, listen: &str) -> Result<()> {
    Repo::open(dir)?;
    crate::repo::serve::serve(dir, listen)
}
