//! The repository's web page, for people: `/` lists every entry and `/NAME/` one, each with
//! its long name, osinfo, notes, revisions (date, size, compressed size, package count, links
//! to its SBOMs) and
//! the package diff of each revision to the one before, and how to use the repository with
//! virt-builder. Server-rendered HTML (no JavaScript), every value HTML-escaped by minijinja
//! (entry notes are untrusted text), laid out to read on a phone.
//!
//! The page is rendered from the repository's own files on each request. Manifests are read
//! without checking their signatures here: the server shows its own directory; clients check
//! what they download (`repo verify`, virt-builder).

use super::manifest::{self, Diff};
use super::sbom;
use super::Repo;
use crate::base::ui::human_bytes;
use anyhow::Result;
use std::path::Path;

const TEMPLATE: &str = include_str!("page.html");

#[derive(serde::Serialize)]
struct Page {
    title: String,
    entries: Vec<EntryView>,
    /// Only one entry (`/NAME/`): links back to the list.
    single: bool,
    fingerprint: String,
    conf_file: String,
    source: String,
}

#[derive(serde::Serialize)]
struct EntryView {
    id: String,
    long_name: String,
    osinfo: String,
    arch: String,
    notes: String,
    revisions: Vec<RevisionView>,
}

#[derive(serde::Serialize)]
struct RevisionView {
    revision: u64,
    current: bool,
    built: String,
    size: String,
    compressed_size: String,
    packages: Option<usize>,
    /// Against the revision before it, when both have manifests.
    previous: Option<u64>,
    diff: Option<Diff>,
    /// The SBOMs beside its image, while they are there: (format, file name).
    sboms: Vec<(&'static str, String)>,
}

/// The page for every entry (`only = None`) or one; `None` when that entry does not exist.
/// `base_url` is where clients reach the repository (`http://HOST`).
pub fn render(dir: &Path, only: Option<&str>, base_url: &str) -> Result<Option<String>> {
    let repo = Repo::open(dir)?;
    let index = repo.index()?;
    let mut entries = Vec::new();
    for e in &index.entries {
        if only.is_some_and(|n| n != e.id) || (e.get("hidden") == Some("true") && only.is_none()) {
            continue;
        }
        let current = e.revision();
        let mut revs = manifest::revisions(dir, &e.id);
        if !revs.contains(&current) {
            revs.push(current);
        }
        revs.sort_unstable();
        let manifests: Vec<_> = revs.iter().map(|&r| (r, manifest::read_unverified(dir, &e.id, r))).collect();
        let mut revisions = Vec::new();
        for (i, (rev, m)) in manifests.iter().enumerate() {
            let before = i.checked_sub(1).and_then(|j| manifests.get(j));
            let list = |m: &Option<manifest::Manifest>| m.as_ref().and_then(|m| m.package_list().map(<[_]>::to_vec));
            let diff = match (before.map(|(_, old)| list(old)), list(m)) {
                (Some(Some(old)), Some(new)) => Some(manifest::diff(&old, &new)),
                _ => None,
            };
            let field = |k: &str| e.get(k).and_then(|v| v.parse::<u64>().ok()).filter(|_| *rev == current);
            let size = m.as_ref().map(|m| m.size).or_else(|| field("size"));
            let compressed = m.as_ref().map(|m| m.compressed_size).or_else(|| field("compressed_size"));
            revisions.push(RevisionView {
                revision: *rev,
                current: *rev == current,
                built: m.as_ref().map(|m| m.provenance.built.replace('T', " ")).unwrap_or_default(),
                size: size.map(human_bytes).unwrap_or_default(),
                compressed_size: compressed.map(human_bytes).unwrap_or_default(),
                packages: list(m).map(|l| l.len()),
                previous: before.map(|(r, _)| *r),
                diff,
                sboms: m
                    .as_ref()
                    .map(|m| {
                        m.documents
                            .keys()
                            .filter(|doc| dir.join(doc).is_file())
                            .map(|doc| {
                                (if doc.ends_with(sbom::SPDX_SUFFIX) { "SPDX" } else { "CycloneDX" }, doc.clone())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        revisions.reverse();
        entries.push(EntryView {
            id: e.id.clone(),
            long_name: e.get("name").unwrap_or(&e.id).to_string(),
            osinfo: e.get("osinfo").unwrap_or("").to_string(),
            arch: e.get("arch").unwrap_or("").to_string(),
            notes: e.get("notes").unwrap_or("").to_string(),
            revisions,
        });
    }
    if only.is_some() && entries.is_empty() {
        return Ok(None);
    }
    let page = Page {
        title: match only {
            Some(n) => format!("{n} — {}", repo.name()),
            None => format!("{} — image repository", repo.name()),
        },
        entries,
        single: only.is_some(),
        fingerprint: repo.configured_key()?.unwrap_or_default(),
        conf_file: repo.conf_path().file_name().unwrap_or_default().to_string_lossy().into_owned(),
        source: format!("{base_url}/index.asc"),
    };
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", TEMPLATE)?;
    Ok(Some(env.get_template("page.html")?.render(minijinja::Value::from(minijinja::value::Serde(&page)))?))
}
