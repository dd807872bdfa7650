//! Downloads, cached by URL under the work directory: resumed when interrupted (HTTP Range),
//! shown with a byte progress bar, and reused offline.

use crate::engine::ui::Ui;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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

/// The URL's content as a local file, downloading it unless it is cached already.
pub fn fetch(url: &str, cache_dir: &Path, offline: bool, ui: &Ui) -> Result<PathBuf> {
    std::fs::create_dir_all(cache_dir)?;
    let dest = cache_path(cache_dir, url);
    if dest.exists() {
        return Ok(dest);
    }
    if offline {
        bail!("{url} is not in the download cache and --offline forbids fetching it");
    }
    let part = dest.with_extension("part");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().with_context(|| format!("cannot download {url}"))?;
    let status = resp.status();
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    if !status.is_success() {
        bail!("cannot download {url}: HTTP {status}");
    }
    let mut file =
        std::fs::OpenOptions::new().create(true).append(resumed).write(true).truncate(!resumed).open(&part)?;
    let start = if resumed { have } else { 0 };
    let bar = ui.bytes("download", start + resp.content_length().unwrap_or(0));
    bar.set_position(start);
    bar.set_message(url.to_string());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // An interrupt keeps the partial file: the next run resumes from it.
        crate::interrupt::check()?;
        let n =
            resp.read(&mut buf).with_context(|| format!("download of {url} was interrupted; run again to resume"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    std::fs::rename(&part, &dest)?;
    Ok(dest)
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

/// Reads a small file from a path or URL (an index, a checksum list). Online, a URL is always
/// fetched fresh (an index changes) and the copy kept for later `--offline` runs.
pub fn read_small(source: &str, base_dir: &Path, cache_dir: &Path, offline: bool, ui: &Ui) -> Result<Vec<u8>> {
    if is_url(source) && !offline {
        let resp = reqwest::blocking::get(source).with_context(|| format!("cannot fetch {source}"))?;
        if !resp.status().is_success() {
            bail!("cannot fetch {source}: HTTP {}", resp.status());
        }
        let bytes = resp.bytes()?.to_vec();
        if std::fs::create_dir_all(cache_dir).is_ok() {
            let _ = crate::repo::write_atomic(&cache_path(cache_dir, source), &bytes);
        }
        return Ok(bytes);
    }
    let path = local_or_fetch(source, base_dir, cache_dir, offline, ui)?;
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}
