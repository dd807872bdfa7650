//! What a stage's output depends on outside the pipeline file and its files: a mirror's
//! release file, an installer's checksum list, an image server's validators, a repository
//! entry. Each is probed cheaply (one small request) and its state goes into the stage's cache
//! key, so an unchanged night rebuilds nothing and a changed upstream rebuilds exactly what
//! stands on it. The engine keeps the last state it built with, for `plan` to name a change
//! and for `--offline` runs to reuse.

use crate::base::http;
use crate::download::{self, SMALL_READ_LIMIT};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;

/// One thing upstream, named so that it can be probed again from a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Upstream {
    /// A Debian-style archive suite: the digest of `dists/SUITE/InRelease` (or `Release`
    /// where the archive has no InRelease). A suite ending in `/` is a flat repository.
    AptSuite { mirror: String, suite: String },
    /// An RPM repository: the digest of `repodata/repomd.xml`.
    RpmRepo { baseurl: String },
    /// The content digest of the first of these small files that exists (a checksum list);
    /// `absent` when none does.
    Digest { urls: Vec<String> },
    /// A large file's HTTP validators (ETag, Last-Modified, length), by a HEAD request.
    Validators { url: String },
    /// A state the stage read itself (a repository entry's checksum and revision).
    Resolved { what: String, state: String },
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Upstream::AptSuite { .. } => write!(f, "mirror {}", self.release_urls()[0]),
            Upstream::RpmRepo { .. } => write!(f, "repository {}", self.release_urls()[0]),
            Upstream::Digest { urls } => write!(f, "{}", urls.join(" or ")),
            Upstream::Validators { url } => write!(f, "{url} (ETag/Last-Modified)"),
            Upstream::Resolved { what, .. } => write!(f, "{what}"),
        }
    }
}

impl Upstream {
    /// The files whose content is the state, in the order tried (the first that exists).
    pub fn release_urls(&self) -> Vec<String> {
        let join = |base: &str, rest: &str| format!("{}/{rest}", base.trim_end_matches('/'));
        match self {
            Upstream::AptSuite { mirror, suite } if suite.ends_with('/') => {
                let dir = join(mirror, suite.trim_end_matches('/'));
                vec![join(&dir, "InRelease"), join(&dir, "Release")]
            }
            Upstream::AptSuite { mirror, suite } => {
                vec![join(mirror, &format!("dists/{suite}/InRelease")), join(mirror, &format!("dists/{suite}/Release"))]
            }
            Upstream::RpmRepo { baseurl } => vec![join(baseurl, "repodata/repomd.xml")],
            Upstream::Digest { urls } => urls.clone(),
            Upstream::Validators { url } => vec![url.clone()],
            Upstream::Resolved { .. } => vec![],
        }
    }

    /// The current state: a digest, the validators, or the resolved state. Reads at most
    /// `SMALL_READ_LIMIT` bytes of any file.
    pub fn probe(&self, client: &Client) -> Result<String> {
        match self {
            Upstream::Resolved { state, .. } => Ok(state.clone()),
            Upstream::Validators { url } => client.validators(url),
            _ => {
                let urls = self.release_urls();
                for url in &urls {
                    if let Some(body) = client.small_file(url)? {
                        let name = url.rsplit('/').next().unwrap_or(url);
                        return Ok(format!("{name} sha256:{}", hex::encode(Sha256::digest(&body))));
                    }
                }
                if matches!(self, Upstream::Digest { .. }) {
                    return Ok("absent".to_string());
                }
                bail!("{self}: none of {} exists", urls.join(", "))
            }
        }
    }
}

/// Probes over HTTP (the crate's one client, `base::http`), and `file://` or plain paths
/// read from disk.
pub struct Client(reqwest::blocking::Client);

impl Client {
    pub fn new() -> Result<Client> {
        Ok(Client(http::client()?))
    }

    /// The file's content, or None when the server says it does not exist (404/410).
    fn small_file(&self, url: &str) -> Result<Option<Vec<u8>>> {
        if !download::is_url(url) {
            let path = url.strip_prefix("file://").unwrap_or(url);
            return match std::fs::metadata(path) {
                Ok(_) => Ok(Some(download::read_small_file(std::path::Path::new(path))?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("cannot read {path}")),
            };
        }
        let resp = http::send(&format!("cannot reach {url}"), || self.0.get(url))?;
        if matches!(resp.status().as_u16(), 404 | 410) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("{url}: HTTP {}", resp.status());
        }
        let mut body = Vec::new();
        resp.take(SMALL_READ_LIMIT + 1).read_to_end(&mut body).with_context(|| format!("cannot read {url}"))?;
        if body.len() as u64 > SMALL_READ_LIMIT {
            bail!("{url} is larger than {} MiB, more than a release file holds", SMALL_READ_LIMIT >> 20);
        }
        Ok(Some(body))
    }

    /// ETag, Last-Modified and length from a HEAD request (a GET whose body is not read when
    /// the server refuses HEAD). A local file's state is its size and modification time.
    fn validators(&self, url: &str) -> Result<String> {
        if !download::is_url(url) {
            let path = url.strip_prefix("file://").unwrap_or(url);
            let meta = std::fs::metadata(path).with_context(|| format!("cannot read {path}"))?;
            let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            return Ok(format!("length={} mtime={}", meta.len(), mtime.as_nanos()));
        }
        let mut resp = http::send(&format!("cannot reach {url}"), || self.0.head(url))?;
        if matches!(resp.status().as_u16(), 405 | 501) {
            resp = http::send(&format!("cannot reach {url}"), || self.0.get(url))?;
        }
        if !resp.status().is_success() {
            bail!("{url}: HTTP {}", resp.status());
        }
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let parts: Vec<String> = [
            ("etag", header(reqwest::header::ETAG)),
            ("last-modified", header(reqwest::header::LAST_MODIFIED)),
            ("length", header(reqwest::header::CONTENT_LENGTH)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
        if parts.is_empty() {
            // Nothing to compare: such a file is fetched again by each run that builds.
            return Ok("no validators: the server cannot say when it changes".to_string());
        }
        Ok(parts.join(" "))
    }
}

/// States as the engine keys and records them: each upstream with its state, sorted.
pub type States = Vec<(Upstream, String)>;

/// What changed between the recorded states and the current ones, for `plan`.
pub fn changes(recorded: &States, current: &States) -> Vec<String> {
    let mut out = Vec::new();
    for (u, state) in current {
        match recorded.iter().find(|(r, _)| r == u) {
            Some((_, old)) if old != state => out.push(format!("{u} changed")),
            None => out.push(format!("{u} is new")),
            _ => {}
        }
    }
    for (r, _) in recorded {
        if !current.iter().any(|(u, _)| u == r) {
            out.push(format!("{r} is no longer used"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_are_where_apt_looks() {
        let suite = Upstream::AptSuite { mirror: "http://m/debian/".into(), suite: "bookworm".into() };
        assert_eq!(
            suite.release_urls(),
            ["http://m/debian/dists/bookworm/InRelease", "http://m/debian/dists/bookworm/Release"]
        );
        let flat = Upstream::AptSuite { mirror: "http://m/repo".into(), suite: "./".into() };
        assert_eq!(flat.release_urls(), ["http://m/repo/./InRelease", "http://m/repo/./Release"]);
        let rpm = Upstream::RpmRepo { baseurl: "http://m/9/BaseOS/x86_64/os/".into() };
        assert_eq!(rpm.release_urls(), ["http://m/9/BaseOS/x86_64/os/repodata/repomd.xml"]);
    }

    #[test]
    fn a_local_release_file_is_probed_and_falls_back_to_release() {
        let tmp = tempfile::tempdir().unwrap();
        let dists = tmp.path().join("dists/bookworm");
        std::fs::create_dir_all(&dists).unwrap();
        std::fs::write(dists.join("Release"), b"Suite: bookworm\n").unwrap();
        let suite = Upstream::AptSuite { mirror: tmp.path().display().to_string(), suite: "bookworm".into() };
        let client = Client::new().unwrap();
        let first = suite.probe(&client).unwrap();
        assert!(first.starts_with("Release sha256:"), "{first}");
        std::fs::write(dists.join("InRelease"), b"signed\n").unwrap();
        let second = suite.probe(&client).unwrap();
        assert!(second.starts_with("InRelease sha256:"), "{second}");
        let missing = Upstream::AptSuite { mirror: tmp.path().display().to_string(), suite: "trixie".into() };
        let err = missing.probe(&client).unwrap_err().to_string();
        assert!(err.contains("dists/trixie/InRelease") && err.contains("none of"), "{err}");
    }

    #[test]
    fn changes_name_what_differs() {
        let a = Upstream::Digest { urls: vec!["http://m/a".into()] };
        let b = Upstream::Digest { urls: vec!["http://m/b".into()] };
        let recorded = vec![(a.clone(), "1".to_string()), (b.clone(), "1".to_string())];
        assert!(changes(&recorded, &recorded).is_empty());
        let current = vec![(a, "2".to_string())];
        assert_eq!(changes(&recorded, &current), ["http://m/a changed", "http://m/b is no longer used"]);
    }
}
