//! A repository read as a source of images (`from = { repo, name }`, `method = "image"` with
//! `repo`): its index verified against a pinned key only, and an entry's file fetched into
//! the download cache. One implementation per kind of location, as coreos-installer's
//! `ImageLocation` has one per kind of source.

use super::index::{Entry, Index};
use super::location::Location;
use super::remote::RemoteRepo;
use super::{trust, Repo};
use crate::bad_input;
use crate::base::sign;
use crate::base::ui::Ui;
use crate::download;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Where downloads go and whether the network may be used.
pub struct Io<'a> {
    pub cache: &'a Path,
    pub offline: bool,
    /// false: write nothing (a plan keeps no copy of what it reads).
    pub keep_copy: bool,
    pub ui: &'a Ui,
}

/// The index at `location`, checked against `fingerprint`, else the key recorded for the
/// repository by `repo init`. `key` names the pipeline key for messages (`FILE: from`).
pub fn verified_index(location: &Location, fingerprint: Option<&str>, key: &str, io: &Io) -> Result<Index> {
    let missing_pin = |what: String| {
        bad_input!(
            "{key}.fingerprint: no key is recorded for the repository {what}; add fingerprint = \"...\", the \
             full fingerprint of the key that signs it"
        )
    };
    match location {
        Location::ObjectStorage(l) => {
            let url = l.to_string();
            let remote = RemoteRepo::connect(&url)?;
            let pin = match fingerprint {
                Some(f) => f.to_string(),
                None => remote.pinned_key()?.ok_or_else(|| {
                    missing_pin(format!("{url} (`pipeline repo init` records it, for the user who ran it)"))
                })?,
            };
            remote.index_signed_by(&pin).with_context(|| format!("{url}: cannot read its index"))
        }
        Location::Http(url) => {
            let pin = fingerprint.ok_or_else(|| bad_input!("{key}.fingerprint: missing"))?;
            let signed = download::read_small_with(url, Path::new("/"), io.cache, io.offline, io.keep_copy, io.ui)?;
            parse_verified(url, &signed, pin, None)
        }
        Location::Local(dir) => {
            if !dir.is_dir() {
                return Err(bad_input!(
                    "{key}.repo: the repository {} does not exist (a relative repo is relative to the pipeline \
                     file's directory)",
                    dir.display()
                ));
            }
            let repo = Repo { dir: dir.clone() };
            let pin = match fingerprint {
                Some(f) => f.to_string(),
                None => trust::pinned(dir)?.ok_or_else(|| {
                    missing_pin(format!(
                        "{} (`pipeline repo init` records it, for the user who ran it, in {}; `gpg --show-keys {}` \
                         shows it)",
                        dir.display(),
                        trust::store_dir().unwrap_or_default().display(),
                        repo.public_key_path().display()
                    ))
                })?,
            };
            let index = dir.join("index.asc");
            let signed = std::fs::read(&index).with_context(|| format!("cannot read {}", index.display()))?;
            // A local repository's published key may supply the public half; it must be the pin.
            let published = std::fs::read(repo.public_key_path()).ok();
            parse_verified(&index.display().to_string(), &signed, &pin, published.as_deref())
        }
    }
}

fn parse_verified(source: &str, signed: &[u8], pin: &str, published: Option<&[u8]>) -> Result<Index> {
    let text =
        sign::verify_pinned(signed, pin, published).with_context(|| format!("{source}: signature check failed"))?;
    Index::parse(&String::from_utf8_lossy(&text)).map_err(|e| anyhow::anyhow!("{source}: {e}"))
}

/// The entry's file as a local path: the file itself in a local repository, else a copy in
/// the download cache. The caller checks it against the index's checksum, and removes a
/// copy that does not match ([`is_copy`]).
pub fn fetch(location: &Location, entry: &Entry, io: &Io) -> Result<PathBuf> {
    let file = entry.file().context("the entry has no file=")?;
    match location {
        Location::Local(dir) => Ok(dir.join(file)),
        Location::Http(url) => {
            let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or_default();
            // No more than the signed index says the file holds.
            let limit = entry.get("compressed_size").and_then(|s| s.parse().ok());
            download::fetch_limited(&format!("{base}/{file}"), io.cache, io.offline, limit, io.ui)
        }
        Location::ObjectStorage(l) => {
            let url = l.to_string();
            let local = download::cache_path(io.cache, &format!("{url}/{file}"));
            if local.exists() {
                return Ok(local);
            }
            std::fs::create_dir_all(io.cache)?;
            let temp = local.with_extension(format!("part-{}", std::process::id()));
            let result = (|| -> Result<()> {
                let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
                RemoteRepo::connect(&url)?.download(entry, &mut out, io.ui)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                std::fs::rename(&temp, &local)?;
                Ok(())
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result.map(|()| local)
        }
    }
}

/// Whether [`fetch`] made a copy (which a failed check removes) rather than naming the
/// repository's own file.
pub fn is_copy(location: &Location) -> bool {
    !matches!(location, Location::Local(_))
}

/// How an entry's file is named in messages.
pub fn describe(location: &Location, entry: &Entry) -> String {
    let file = entry.file().unwrap_or("?");
    match location {
        Location::Local(dir) => dir.join(file).display().to_string(),
        Location::Http(url) => format!("{}/{file}", url.rsplit_once('/').map(|(b, _)| b).unwrap_or_default()),
        Location::ObjectStorage(l) => format!("{l}/{file}"),
    }
}
