//! What changed in packages between two revisions of an entry, from their signed manifests:
//! `repo diff`, and the package changes a rebuild report gives for each publish.

use super::location::Location;
use super::manifest::{self, Diff, Manifest};
use super::repository::{self, Repository};
use crate::bad_input;
use anyhow::Result;
use std::path::Path;

/// Two revisions of an entry compared.
pub struct Comparison {
    pub from: u64,
    pub to: u64,
    pub diff: Diff,
}

/// Compares revisions `rev_a` and `rev_b` of `name` (default: the newest revision with a
/// manifest, and the one before it).
pub fn compare(repo: &dyn Repository, name: &str, rev_a: Option<u64>, rev_b: Option<u64>) -> Result<Comparison> {
    let known = repo.manifest_revisions(name)?;
    let shown = repo.location();
    if known.is_empty() {
        return Err(bad_input!("{shown}: no revision of `{name}` has a package manifest"));
    }
    let missing = |rev: u64| {
        bad_input!(
            "{shown}: `{name}` has no manifest for revision {rev} (revisions with one: {})",
            known.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )
    };
    let b = rev_b.unwrap_or(*known.last().expect("not empty"));
    let a = match rev_a {
        Some(a) => a,
        None => *known
            .iter()
            .rev()
            .find(|&&r| r < b)
            .ok_or_else(|| bad_input!("{shown}: `{name}` has no revision before {b} to compare with"))?,
    };
    for rev in [a, b] {
        if !known.contains(&rev) {
            return Err(missing(rev));
        }
    }
    let (old, new) = (repo.manifest(name, a)?, repo.manifest(name, b)?);
    let list = |m: &Manifest| {
        m.package_list().map(<[_]>::to_vec).ok_or_else(|| {
            anyhow::anyhow!(
                "{name} revision {}: its packages could not be read when it was published ({})",
                m.revision,
                m.packages_unreadable.as_deref().unwrap_or("")
            )
        })
    };
    Ok(Comparison { from: a, to: b, diff: manifest::diff(&list(&old)?, &list(&new)?) })
}

/// A publish record with what its revision changed in packages against the revision before
/// it (`packages`: count, previous revision, added, removed, changed), from the signed
/// manifests, in any kind of repository; unchanged when they cannot be read.
pub fn with_package_changes(mut record: serde_json::Value) -> serde_json::Value {
    let (Some(at), Some(name), Some(revision)) =
        (record["repo"].as_str(), record["name"].as_str(), record["revision"].as_u64())
    else {
        return record;
    };
    let Some(repo) = Location::parse(at, Path::new("/")).ok().and_then(|l| repository::open(&l).ok()) else {
        return record;
    };
    let Ok(new) = repo.manifest(name, revision) else { return record };
    let Some(new_list) = new.package_list() else { return record };
    let previous = repo.manifest_revisions(name).unwrap_or_default().into_iter().rfind(|&r| r < revision);
    let mut packages = serde_json::json!({ "count": new_list.len(), "previous": previous });
    let old = previous.and_then(|r| repo.manifest(name, r).ok());
    if let Some(old_list) = old.as_ref().and_then(|m| m.package_list()) {
        let d = manifest::diff(old_list, new_list);
        packages["added"] = serde_json::json!(d.added);
        packages["removed"] = serde_json::json!(d.removed);
        packages["changed"] = serde_json::json!(d.changed);
    }
    record["packages"] = packages;
    record
}
