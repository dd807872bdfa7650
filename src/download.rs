//! Downloads, cached by URL under the work directory: resumed when interrupted (HTTP Range),
//! shown with a byte progress bar, and reused offline.

use crate::base::http;
use crate::base::ui::Ui;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Where a URL's download lives in the cache (the file name keeps the URL's last part, so
/// `.xz` and the like stay recognisable).
pub fn cache_path(cache_dir: &Path, url: &str) -> PathBuf {
    let hash = hex::encode(&Sha256::digest(url.as_bytes())[..8]);
    let base = url.rsplit('/').find(|s| !s.is_empty()).unwrap_or("download");
    let base: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    cache_dir.join(format!("{hash}-{base}"))
}

/// The URL's content as a local file, downloading it unless the cached copy is still the
/// server's version. Online, a cached copy is revalidated with a conditional request
/// (If-None-Match / If-Modified-Since from the validators kept beside it) and downloaded again
/// when the server has another version; offline it is used as it is. An interrupted download
/// resumes from its `.part` file only while the server still has the same version: the
/// validator (ETag, else Last-Modified) of the first response is kept beside the part, sent as
/// `If-Range`, and a 206 is taken only when it continues exactly where the part ends;
/// anything else starts again from zero, so two versions are never spliced. A body that
/// stalls or breaks off is resumed that way too, up to `http::ATTEMPTS` times.
pub fn fetch(url: &str, cache_dir: &Path, offline: bool, ui: &Ui) -> Result<PathBuf> {
    fetch_limited(url, cache_dir, offline, None, ui)
}

/// [`fetch`] of a file whose size is known beforehand (an image whose signed index gives it):
/// a server sending more than `limit` bytes is cut off and nothing is kept.
pub fn fetch_limited(url: &str, cache_dir: &Path, offline: bool, limit: Option<u64>, ui: &Ui) -> Result<PathBuf> {
    let mut pause = Duration::from_secs(2);
    for attempt in 1.. {
        match fetch_once(url, cache_dir, offline, limit, ui) {
            Err(e) if attempt < http::ATTEMPTS && e.downcast_ref::<http::BodyBroken>().is_some() => {
                ui.line(format!("{e}; resuming in {} s", pause.as_secs()));
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(e) if e.downcast_ref::<http::BodyBroken>().is_some() => {
                return Err(e.context(format!("{url}: the part downloaded is kept: run again to resume")));
            }
            done => return done,
        }
    }
    unreachable!("the last attempt returns")
}

fn fetch_once(url: &str, cache_dir: &Path, offline: bool, limit: Option<u64>, ui: &Ui) -> Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)?;
    let dest = cache_path(cache_dir, url);
    let dest_validator = PathBuf::from(format!("{}.validator", dest.display()));
    if dest.exists() && offline {
        return Ok(dest);
    }
    if offline {
        bail!("{url} is not in the download cache and --offline forbids fetching it");
    }
    let part = dest.with_extension("part");
    let validator_path = PathBuf::from(format!("{}.validator", part.display()));
    let client = http::client()?;
    let get = |from: Option<(u64, &str)>| {
        http::send(&format!("cannot download {url}"), || {
            let req = client.get(url);
            match from {
                Some((offset, if_range)) => req
                    .header(reqwest::header::RANGE, format!("bytes={offset}-"))
                    .header(reqwest::header::IF_RANGE, if_range),
                None => req,
            }
        })
    };
    let (resp, resumed, have) = if dest.exists() {
        let saved = Validator::load(&dest_validator).unwrap_or_default();
        let resp = http::send(&format!("cannot check {url} for a newer version"), || {
            let req = client.get(url);
            if let Some(etag) = &saved.etag {
                req.header(reqwest::header::IF_NONE_MATCH, etag)
            } else if let Some(modified) = &saved.last_modified {
                req.header(reqwest::header::IF_MODIFIED_SINCE, modified)
            } else {
                req
            }
        })?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            // Used now: `cache gc` keeps it.
            if let Ok(f) = std::fs::File::options().append(true).open(&dest) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(dest);
        }
        ui.line(format!("{url}: the server has another version than the cached one; downloading it again"));
        (resp, false, 0)
    } else {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        // Without a validator a part cannot be matched to a version: start again.
        let saved = if have > 0 { Validator::load(&validator_path) } else { None };
        let resume_from = saved.as_ref().and_then(|v| v.if_range().map(|r| (have, r)));
        let mut resp = get(resume_from)?;
        let resumed = match (resp.status(), &saved) {
            (reqwest::StatusCode::PARTIAL_CONTENT, Some(v)) if resume_from.is_some() && v.continues(&resp, have) => {
                true
            }
            (reqwest::StatusCode::PARTIAL_CONTENT, _) => {
                // Another version, or a range we did not ask for: the whole file again.
                drop(resp);
                resp = get(None)?;
                false
            }
            _ => false,
        };
        (resp, resumed, have)
    };
    let status = resp.status();
    if !status.is_success() || (!resumed && status == reqwest::StatusCode::PARTIAL_CONTENT) {
        bail!("cannot download {url}: HTTP {status}");
    }
    if !resumed {
        // Recorded before any byte is written, so a part always has its version beside it.
        let _ = std::fs::remove_file(&validator_path);
        let v = Validator::of(&resp);
        if v.if_range().is_some() {
            crate::base::atomic::write(&validator_path, v.render().as_bytes())?;
        }
    }
    let mut file =
        std::fs::OpenOptions::new().create(true).append(resumed).write(true).truncate(!resumed).open(&part)?;
    let start = if resumed { have } else { 0 };
    let bar = ui.bytes("download", start + resp.content_length().unwrap_or(0));
    bar.set_position(start);
    bar.set_message(url.to_string());
    // An interrupt or a stall keeps the partial file: the next attempt (or run) resumes from
    // it. Bytes beyond the limit are not the file: nothing of it is kept.
    let copied = http::copy_body(resp, url, limit.map(|l| l.saturating_sub(start)), |chunk| {
        file.write_all(chunk)?;
        bar.inc(chunk.len() as u64);
        Ok(())
    });
    if let Err(e) = copied {
        if e.downcast_ref::<http::BodyBroken>().is_none() && !crate::base::interrupt::interrupted() {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&validator_path);
        }
        return Err(e);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    // The version's validators stay beside the file, for the next run's revalidation.
    let _ = std::fs::remove_file(&dest_validator);
    std::fs::rename(&part, &dest)?;
    if validator_path.exists() {
        std::fs::rename(&validator_path, &dest_validator)?;
    }
    Ok(dest)
}

/// What identifies the version of a file being downloaded.
#[derive(Debug, Default, PartialEq)]
struct Validator {
    /// A strong ETag (weak ones may not be used with If-Range).
    etag: Option<String>,
    last_modified: Option<String>,
    /// The whole file's length, when the server said.
    length: Option<u64>,
}

impl Validator {
    fn of(resp: &reqwest::blocking::Response) -> Validator {
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Validator {
            etag: header(reqwest::header::ETAG).filter(|e| !e.starts_with("W/")),
            last_modified: header(reqwest::header::LAST_MODIFIED),
            length: resp.content_length(),
        }
    }

    fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }

    /// Whether a 206 answer continues this version exactly at `offset`: its Content-Range
    /// starts there (and the total is the length the first answer announced), and it names no
    /// other version.
    fn continues(&self, resp: &reqwest::blocking::Response, offset: u64) -> bool {
        let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let Some((first, total)) = header(reqwest::header::CONTENT_RANGE).and_then(parse_content_range) else {
            return false;
        };
        let same_total = match (total, self.length) {
            (Some(t), Some(l)) => t == l,
            _ => true,
        };
        let same_version = match (&self.etag, header(reqwest::header::ETAG)) {
            (Some(mine), Some(theirs)) => mine == theirs,
            (None, Some(_)) => false,
            _ => match (&self.last_modified, header(reqwest::header::LAST_MODIFIED)) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            },
        };
        first == offset && same_total && same_version
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in [("etag", &self.etag), ("last-modified", &self.last_modified)] {
            if let Some(v) = v {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
        if let Some(l) = self.length {
            out.push_str(&format!("length: {l}\n"));
        }
        out
    }

    fn load(path: &Path) -> Option<Validator> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut v = Validator::default();
        for line in text.lines() {
            match line.split_once(": ") {
                Some(("etag", e)) => v.etag = Some(e.to_string()),
                Some(("last-modified", m)) => v.last_modified = Some(m.to_string()),
                Some(("length", l)) => v.length = l.parse().ok(),
                _ => {}
            }
        }
        v.if_range().is_some().then_some(v)
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`): the first byte and the total if given.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > last)?),
    };
    Some((first, total))
}

/// A local path or URL as a local file; relative paths resolve against `base_dir`.
pub fn local_or_fetch(source: &str, base_dir: &Path, cache_dir: &Path, offline: bool, ui: &Ui) -> Result<PathBuf> {
    if is_url(source) {
        fetch(source, cache_dir, offline, ui)
    } else if let Some(p) = source.strip_prefix("file://") {
        Ok(PathBuf::from(p))
    } else {
        Ok(base_dir.join(source))
    }
}

/// The most a small read (an index, a checksum list) takes: anything bigger is not what it
/// claims to be, and is refused rather than read into memory.
pub const SMALL_READ_LIMIT: u64 = 16 << 20;

/// Reads a small file from a path or URL (an index, a checksum list). Online, a URL is always
/// fetched fresh (an index changes) and the copy kept for later `--offline` runs.
pub fn read_small(source: &str, base_dir: &Path, cache_dir: &Path, offline: bool, ui: &Ui) -> Result<Vec<u8>> {
    read_small_with(source, base_dir, cache_dir, offline, true, ui)
}

/// As `read_small`; `keep_copy = false` writes nothing (for `plan`): a fetched URL is not
/// copied into the download cache.
pub fn read_small_with(
    source: &str,
    base_dir: &Path,
    cache_dir: &Path,
    offline: bool,
    keep_copy: bool,
    ui: &Ui,
) -> Result<Vec<u8>> {
    if is_url(source) && !offline {
        let client = http::client()?;
        let resp = http::send(&format!("cannot fetch {source}"), || client.get(source))?;
        if !resp.status().is_success() {
            bail!("cannot fetch {source}: HTTP {}", resp.status());
        }
        if resp.content_length().is_some_and(|n| n > SMALL_READ_LIMIT) {
            bail!(
                "{source} is larger than {} MiB, more than an index or checksum list holds; refusing it",
                SMALL_READ_LIMIT >> 20
            );
        }
        let bytes = read_limited(resp, source)?;
        if keep_copy && std::fs::create_dir_all(cache_dir).is_ok() {
            let _ = crate::base::atomic::write(&cache_path(cache_dir, source), &bytes);
        }
        return Ok(bytes);
    }
    if is_url(source) {
        let cached = cache_path(cache_dir, source);
        if !cached.exists() {
            bail!("{source} is not in the download cache and --offline forbids fetching it");
        }
        return read_small_file(&cached);
    }
    let path = local_or_fetch(source, base_dir, cache_dir, offline, ui)?;
    read_small_file(&path)
}

/// Reads a local file of at most `SMALL_READ_LIMIT` bytes.
pub fn read_small_file(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    read_limited(file, &path.display().to_string())
}

fn read_limited(src: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    src.take(SMALL_READ_LIMIT + 1).read_to_end(&mut out).with_context(|| format!("cannot read {what}"))?;
    if out.len() as u64 > SMALL_READ_LIMIT {
        bail!(
            "{what} is larger than {} MiB, more than an index or checksum list holds; refusing it",
            SMALL_READ_LIMIT >> 20
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_read_is_limited() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("index");
        std::fs::write(&ok, b"[a]\n").unwrap();
        assert_eq!(read_small_file(&ok).unwrap(), b"[a]\n");
        let big = tmp.path().join("huge-index");
        std::fs::File::create(&big).unwrap().set_len(SMALL_READ_LIMIT + 1).unwrap();
        // Not unwrap_err: on failure it would print the whole file.
        let Err(err) = read_small(big.to_str().unwrap(), tmp.path(), tmp.path(), true, &Ui::new()) else {
            panic!("a file over the limit was read");
        };
        assert!(format!("{err:#}").contains("huge-index is larger than 16 MiB"), "{err:#}");
    }

    #[test]
    fn a_content_range_is_read_strictly() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("bytes 100-99/200"), None);
        assert_eq!(parse_content_range("bytes 100-199/150"), None);
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
