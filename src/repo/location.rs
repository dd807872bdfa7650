//! Where a repository is, parsed once from a pipeline key or a command-line argument: a
//! directory on this machine, a prefix on S3-compatible object storage, or an index served
//! over HTTP(S) (read-only). One path rule: a relative directory in a pipeline file is
//! relative to that file's directory, like every other path in it; on the command line, to
//! the working directory.

use anyhow::Result;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory (given as the directory or as its `index`/`index.asc` file).
    Local(PathBuf),
    /// `s3://BUCKET/PREFIX`.
    ObjectStorage(crate::s3::Location),
    /// The URL of a signed index (`.../index.asc`): read-only.
    Http(String),
}

impl Location {
    /// `text` as written, relative paths resolved against `base`. A URL of another scheme is
    /// bad input for the caller to name with its key.
    pub fn parse(text: &str, base: &Path) -> Result<Location> {
        if crate::s3::is_s3(text) {
            return Ok(Location::ObjectStorage(crate::s3::Location::parse(text)?));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Location::Http(text.to_string()));
        }
        if text.contains("://") {
            anyhow::bail!("`{text}` is not a directory, an s3://BUCKET/PREFIX or an http(s):// URL of an index");
        }
        let path = normalize(&base.join(text));
        // A repository may be named by its index file; a name that does not exist is taken as
        // the directory, which reading then reports as missing.
        let is_index = path.is_file() && path.file_name().is_some_and(|n| n == "index" || n == "index.asc");
        Ok(Location::Local(if is_index { path.parent().map(Path::to_path_buf).unwrap_or(path) } else { path }))
    }

    /// Whether other builders see it (a rebuild with shards waits for entries only there).
    pub fn shared(&self) -> bool {
        matches!(self, Location::ObjectStorage(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(dir) => write!(f, "{}", dir.display()),
            Location::ObjectStorage(l) => write!(f, "{l}"),
            Location::Http(url) => write!(f, "{url}"),
        }
    }
}

/// The path with symlinks resolved where it exists; otherwise absolute with `.` and `..`
/// taken out, so that a repository not created yet still compares equal however it is named.
fn normalize(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_directories_are_relative_to_the_base_and_an_index_file_names_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("pipelines");
        std::fs::create_dir_all(tmp.path().join("repo")).unwrap();
        std::fs::write(tmp.path().join("repo/index.asc"), "x").unwrap();
        let repo = std::fs::canonicalize(tmp.path().join("repo")).unwrap();
        assert_eq!(Location::parse("../repo", &base).unwrap(), Location::Local(repo.clone()));
        assert_eq!(Location::parse("../repo/index.asc", &base).unwrap(), Location::Local(repo.clone()));
        assert_eq!(Location::parse(repo.to_str().unwrap(), &base).unwrap(), Location::Local(repo));
        // Not there yet: the directory it names, not its parent.
        let missing = Location::parse("repo-index", &base).unwrap();
        assert_eq!(missing, Location::Local(std::fs::canonicalize(tmp.path()).unwrap().join("pipelines/repo-index")));
    }

    #[test]
    fn urls_are_parsed_by_scheme() {
        let base = Path::new("/");
        let s3 = Location::parse("s3://images/nightly/", base).unwrap();
        assert_eq!(s3.to_string(), "s3://images/nightly");
        assert!(s3.shared());
        let http = Location::parse("https://example.net/repo/index.asc", base).unwrap();
        assert!(!http.shared());
        assert!(Location::parse("ftp://example.net/repo", base).is_err());
        assert!(Location::parse("s3://B/x", base).is_err(), "bucket names are lower case");
    }
}
